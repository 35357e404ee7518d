"""Rewards without models, for smoke tests and demonstrations of black-box training."""

from __future__ import annotations

from torch import Tensor

from drpo.rewards import Reward


class Brightness(Reward):
    """Mean pixel value in [0, 1] (`target` set: closeness to that brightness instead)."""

    name = "brightness"

    def __init__(self, target: float | None = None, batch_size: int = 256, device="cpu"):
        super().__init__(batch_size, device)
        self.target = target

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
        mean = images.float().mean(dim=(1, 2, 3)) / 255.0
        return mean if self.target is None else -(mean - self.target).abs()
