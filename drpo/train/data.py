"""Training prompts and the deterministic schedule of who sees which prompt and noise.

Every micro-step of every process is identified by (update, global micro index), where the global
index is `micro * world_size + rank`. Prompts and noise seeds are pure functions of it, so a run is
reproduced exactly across process counts (2 processes × GA 1 = 1 process × GA 2) and resumes.
"""

from __future__ import annotations

import random

import torch


class PromptSchedule:
    """Shuffled once with a seed (as the authors' trainers do), then read in order, cyclically.

    `balance` names a metadata key (e.g. GenEval's `tag`): each of its values is then seen equally
    often, smaller groups cycling through their prompts, so a training set that is mostly one tag
    still trains every tag as often as a near-balanced test set asks.
    """

    def __init__(self, rows: list[dict], shuffle_seed: int, micro_steps_per_update: int, prompts_per_micro: int,
                 balance: str | None = None):
        rng = random.Random(shuffle_seed)
        if balance:
            self.rows = balanced_order(rows, balance, rng)
        else:
            self.rows = list(rows)
            rng.shuffle(self.rows)
        self.per_update = micro_steps_per_update  # grad_accum × world size
        self.per_micro = prompts_per_micro

    def batch(self, update: int, global_micro: int) -> list[dict]:
        start = (update * self.per_update + global_micro) * self.per_micro
        return [self.rows[(start + j) % len(self.rows)] for j in range(self.per_micro)]


def balanced_order(rows: list[dict], key: str, rng: random.Random) -> list[dict]:
    """One cycle in which every value of `key` fills as many places as the largest group.

    Each group is shuffled and repeated to that length; the cycle is then shuffled as a whole.
    """
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if key not in row:
            raise ValueError(
                f"prompts.balance: {key!r} but the prompt {row['prompt']!r} (prompt_id {row.get('prompt_id')}) "
                f"has no {key!r}; balance needs JSONL rows that carry it, or leave prompts.balance unset"
            )
        groups.setdefault(str(row[key]), []).append(row)
    size = max(len(g) for g in groups.values())
    order = []
    for name in sorted(groups):
        group = groups[name]
        rng.shuffle(group)
        order += [group[i % len(group)] for i in range(size)]
    rng.shuffle(order)
    return order


def micro_seed(seed: int, update: int, global_micro: int) -> int:
    """Seed of the noise drawn at one micro-step (independent of process count)."""
    return (seed * 1_000_003 + update * 10_007 + global_micro) % (2**63 - 1)


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
