"""Preference-pair datasets for the offline variant (METHOD.md §2.5).

`pairs.jsonl` rows: {"prompt": str, "chosen": path | [paths], "rejected": path | [paths]}, paths
relative to the JSONL's folder. Images are resized (shorter side, bilinear), centre-cropped and
scaled to [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from drpo.io import read_jsonl


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """(3, R, R) in [-1, 1]: shorter side to R (bilinear), centre crop."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = resolution / min(w, h)
    img = img.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    return arr / 127.5 - 1.0


@dataclass
class PairDataset:
    root: Path
    rows: list[dict]

    def prompt_rows(self) -> list[dict]:
        """Training rows for the prompt schedule: one per pair, pointing back at it."""
        return [{"prompt": r["prompt"], "prompt_id": i, "pair_index": i} for i, r in enumerate(self.rows)]

    def images(self, index: int, side: str, resolution: int) -> torch.Tensor:
        paths = self.rows[index][side]
        paths = [paths] if isinstance(paths, str) else paths
        return torch.stack([load_image(self.root / p, resolution) for p in paths])


def load_pairs(path: str | Path) -> PairDataset:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pair dataset {path} does not exist (config key offline.dataset)")
    rows = read_jsonl(path)
    for i, r in enumerate(rows):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in r]
        if missing:
            raise ValueError(f"{path}: row {i + 1} lacks {missing} (rows need prompt, chosen, rejected)")
        for side in ("chosen", "rejected"):
            for p in [r[side]] if isinstance(r[side], str) else r[side]:
                if not (path.parent / p).exists():
                    raise FileNotFoundError(f"{path}: row {i + 1}: {side} image {p} not found next to the JSONL")
    if not rows:
        raise ValueError(f"pair dataset {path} is empty")
    return PairDataset(path.parent, rows)
