"""Seconds per update, split by component (sampling, decoding, reward, features, drift, ...)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch


class ComponentTimer:
    """Accumulates wall time per named component; CUDA work is synchronised at the boundaries."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.totals[name] += time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        """The totals since the last pop, as `time/<component>` metrics."""
        out = {f"time/{k}": v for k, v in self.totals.items()}
        self.totals.clear()
        return out
