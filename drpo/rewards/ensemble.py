"""Reward ensembles (METHOD.md §3): z-score each reward within the candidate set, weighted sum.

Scores of one call are standardised per reward (population std clamped at 1e-6), so each reward's
scale and offset drop out and only its ranking of the candidates counts; weights are normalised
to sum to 1. Call it with one prompt's K candidates (the trainers do) for the paper's behaviour.
"""

from __future__ import annotations

import torch
from torch import Tensor

from drpo.rewards import Reward

STD_MIN = 1e-6


def zscore(scores: Tensor) -> Tensor:
    return (scores - scores.mean()) / scores.std(unbiased=False).clamp_min(STD_MIN)


class Ensemble(Reward):
    name = "ensemble"

    def __init__(self, rewards: list[Reward], weights: list[float]):
        super().__init__(batch_size=10**9)
        names = [r.name for r in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward ensemble: duplicate rewards {names}")
        if any(w < 0 for w in weights):
            raise ValueError(f"reward ensemble: weights must be >= 0, got {weights}")
        total = sum(weights)
        if total <= 0:
            raise ValueError("reward ensemble: weights sum to 0")
        self.rewards = rewards
        self.weights = [w / total for w in weights]
        self.name = "+".join(names)

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
        total = torch.zeros(images.shape[0])
        for reward, w in zip(self.rewards, self.weights):
            total += w * zscore(reward(images, prompts, metadata))
        return total
