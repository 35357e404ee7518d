"""The shapes world's GenEval-like reward: the checker's verdict on each image (METHOD §2.6).

Registered in `drpo.rewards.REWARDS` as `world_checker` (binary) and `world_checker_graded`
(fraction of satisfied clauses). Not differentiable: DrPO only needs rankings.
"""

from __future__ import annotations

import torch
from torch import Tensor

from drpo.rewards import Reward
from drpo.world.checker import check


def metadata_row(meta: dict | None, prompt: str = "") -> dict:
    """The GenEval row inside `meta` (a row itself, or a manifest row holding it under 'metadata')."""
    if isinstance(meta, dict) and "include" not in meta and isinstance(meta.get("metadata"), dict):
        meta = meta["metadata"]
    if not isinstance(meta, dict) or "include" not in meta or "tag" not in meta:
        raise ValueError(
            f"world checker: prompt {prompt!r} has no GenEval metadata (got {meta!r}); it needs rows with "
            "tag/include/exclude, i.e. a prompt file from `drpo world prompts` (JSONL), passed as metadata"
        )
    return meta


class CheckerReward(Reward):
    """1.0 if the checker finds the image correct for its row, else 0.0 (graded: clause fraction)."""

    name = "world_checker"
    differentiable = False

    def __init__(self, graded: bool = False, batch_size: int = 256, device: str | torch.device = "cpu"):
        super().__init__(batch_size, device)
        self.graded = bool(graded)
        if self.graded:
            self.name = "world_checker_graded"

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
        arrays = images.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()
        out = []
        for img, prompt, meta in zip(arrays, prompts, metadata):
            result = check(img, metadata_row(meta, prompt))
            out.append(result.fraction if self.graded else float(result.correct))
        return torch.tensor(out, dtype=torch.float32)
