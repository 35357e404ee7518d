"""Reward ensembles (METHOD.md §3): z-score each reward within the candidate set, weighted sum.

Each call's scores are standardised per reward, (s − mean) / max(population std, 1e-6), so each
reward's scale and offset drop out and only its ordering of the candidates (and relative gaps)
counts; the weighted sum uses weights normalised to sum to 1. Negative weights, weights summing
to 0 and duplicate reward names are rejected. Call it with one prompt's K candidates (the trainers
do) for the paper's behaviour: the whole call is one candidate set (it is never split in batches).
"""

from __future__ import annotations

import torch
from torch import Tensor

from drpo.rewards import Reward

STD_MIN = 1e-6


def zscore(scores: Tensor) -> Tensor:
    """(s − mean) / population std, the std clamped at 1e-6 (a constant reward gives zeros)."""
    scores = scores.double()
    return ((scores - scores.mean()) / scores.std(unbiased=False).clamp_min(STD_MIN)).float()


class Ensemble(Reward):
    """Weighted sum of z-scored rewards; `last_components` keeps the raw scores of the last call."""

    name = "ensemble"

    @staticmethod
    def validate(names: list[str], weights: list[float]) -> list[float]:
        """Normalised weights, or a ValueError naming the offending reward."""
        if len(names) != len(weights):
            raise ValueError(f"reward ensemble: {len(names)} rewards but {len(weights)} weights")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"reward ensemble: duplicate rewards {dupes} in {names}; list each reward once")
        for n, w in zip(names, weights):
            if not w >= 0:  # also catches NaN
                raise ValueError(f"reward ensemble: reward {n!r} has weight {w}; weights must be >= 0")
        total = sum(weights)
        if total <= 0:
            raise ValueError(f"reward ensemble: weights {weights} sum to 0; give at least one positive weight")
        return [w / total for w in weights]

    def __init__(self, rewards: list[Reward], weights: list[float] | None = None):
        super().__init__(batch_size=2**62)
        names = [r.name for r in rewards]
        weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
        self.weights = self.validate(names, weights)
        self.rewards = list(rewards)
        self.name = "+".join(names)
        self.last_components: dict[str, Tensor] = {}

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
        total = torch.zeros(images.shape[0], dtype=torch.float32)
        components = {}
        for reward, w in zip(self.rewards, self.weights):
            raw = reward(images, prompts, metadata)
            components[reward.name] = raw
            total += w * zscore(raw)
        self.last_components = components
        return total

    def close(self) -> None:
        for reward in self.rewards:
            reward.close()
