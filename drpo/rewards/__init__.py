"""Rewards: one call shape for every scorer, heavy imports only when a reward is built.

    reward = build_reward({"name": "pickscore", "options": {"path": "yuvalkirstain/PickScore_v1"}})
    scores = reward(images_uint8, prompts, metadata)     # (N, 3, H, W) uint8 → float32 (N,)

DrPO only ranks candidates, so any scorer works: transformers models (PickScore, CLIP, the LAION
aesthetic MLP), scorers that need their own environment behind a worker process (HPSv2, HPSv3,
ImageReward, GenEval), any executable, any HTTP endpoint. DRaFT and VGGFlow backpropagate through
the reward and need `differentiable` ones (`score_differentiable(images in [-1, 1])`).

Registry: `REWARDS` maps a name to "module:Class"; the module is imported when the reward is built.
Other packages (the shapes world) add names with `register_reward`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import Tensor


class RewardError(RuntimeError):
    """A reward failed: crashed, hung, returned the wrong count, NaN or garbage."""


class Reward:
    """Base class. Subclasses implement `score(images, prompts, metadata)` on one batch."""

    name = "reward"
    differentiable = False

    def __init__(self, batch_size: int = 32, device: str | torch.device = "cpu"):
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        n = images.shape[0]
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"reward {self.name}: images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        prompts = list(prompts)
        metadata = list(metadata) if metadata is not None else [{} for _ in range(n)]
        if len(prompts) != n or len(metadata) != n:
            raise ValueError(f"reward {self.name}: {n} images but {len(prompts)} prompts and {len(metadata)} metadata rows")
        out = []
        for s in range(0, n, self.batch_size):
            sl = slice(s, s + self.batch_size)
            out.append(self.score(images[sl], prompts[sl], metadata[sl]).detach().float().cpu().reshape(-1))
        scores = torch.cat(out) if out else torch.zeros(0)
        return check_scores(scores, n, self.name)

    def score_differentiable(self, images: Tensor, prompts: list[str]) -> Tensor:
        raise NotImplementedError(f"reward {self.name} is not differentiable; DRaFT and VGGFlow need pickscore or aesthetic")


def check_scores(scores, count: int, name: str, where: str = "") -> Tensor:
    """Scores as float32 (count,), or a RewardError naming the reward and what is wrong."""
    try:
        t = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError) as err:
        raise RewardError(f"reward {name}{where}: scores are not numbers ({err})") from None
    if t.numel() != count:
        raise RewardError(f"reward {name}{where}: returned {t.numel()} scores for {count} images")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise RewardError(f"reward {name}{where}: {bad} of {count} scores are NaN or infinite")
    return t


# name -> "module:Class" (imported lazily when built) or a class registered at run time.
REWARDS: dict[str, str | type] = {
    "pickscore": "drpo.rewards.clip_based:PickScore",
    "clip": "drpo.rewards.clip_based:ClipScore",
    "aesthetic": "drpo.rewards.clip_based:Aesthetic",
    "hpsv2": "drpo.rewards.worker:WorkerReward",
    "hpsv3": "drpo.rewards.worker:WorkerReward",
    "imagereward": "drpo.rewards.worker:WorkerReward",
    "geneval": "drpo.rewards.worker:WorkerReward",
    "worker": "drpo.rewards.worker:WorkerReward",
    "brightness": "drpo.rewards.simple:Brightness",
    "command": "drpo.rewards.blackbox:CommandReward",
    "http": "drpo.rewards.blackbox:HTTPReward",
    "world_checker": "drpo.world.rewards:CheckerReward",
    "world_checker_graded": "drpo.world.rewards:GradedCheckerReward",
}
WORKER_SCORERS = {"hpsv2", "hpsv3", "imagereward", "geneval"}


def register_reward(name: str) -> Callable[[type], type]:
    """Class decorator adding a reward under `name` (for rewards defined outside this package)."""

    def deco(cls: type) -> type:
        REWARDS[name] = cls
        return cls

    return deco


def _resolve(name: str) -> type:
    if name not in REWARDS:
        raise ValueError(f"reward {name!r} is not registered; known rewards: {', '.join(sorted(REWARDS))}")
    target = REWARDS[name]
    if isinstance(target, type):
        return target
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def build_reward(spec: dict | str, device: str | torch.device = "cpu") -> Reward:
    """A reward from a spec {"name", "weight", "options"} (weight is for ensembles)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    name = spec["name"]
    options = dict(spec.get("options") or {})
    device = options.pop("device", device)
    if name in WORKER_SCORERS:
        options.setdefault("scorer", name)
    reward = _resolve(name)(device=device, **options)
    reward.name = name
    return reward


def build_reward_ensemble(specs: list[dict], device: str | torch.device = "cpu") -> Reward:
    """One spec → that reward; several → z-scored within each call's candidates, weights normalised."""
    if not specs:
        raise ValueError("reward: give at least one reward spec")
    if len(specs) == 1:
        return build_reward(specs[0], device)
    from drpo.rewards.ensemble import Ensemble

    return Ensemble([build_reward(s, device) for s in specs], [float(s.get("weight", 1.0)) for s in specs])
