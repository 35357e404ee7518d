"""Rewards: one call shape for every scorer; heavy imports only when a reward is built.

    reward = build_reward({"name": "pickscore", "options": {"path": "yuvalkirstain/PickScore_v1"}})
    scores = reward(images_uint8, prompts, metadata)     # (N, 3, H, W) uint8 → float32 (N,), CPU

DrPO only *ranks* candidates, so any scorer works: transformers models (PickScore, CLIP, the LAION
aesthetic MLP), scorers that need their own environment behind a worker process (HPSv2, HPSv3,
ImageReward, GenEval), any executable, any HTTP endpoint. DRaFT and VGGFlow backpropagate through
the reward and need a `differentiable` one (`score_differentiable(images in [-1, 1] with grad)`).

Spec: `{"name": str, "weight": float (ensembles only), "options": {...}}` or just the name.
Options every reward accepts: `batch_size` (images per internal call) and `device` (overrides the
device given to `build_reward`); the rest are the reward class's keyword arguments.

The registry (`REWARDS`) maps a name to a `RewardEntry`: a target and default options. A target is
a class (added at run time with `@register_reward(name)`) or a lazy "module:attr" string, imported
only when that name is built — this is how names defined in other packages resolve without this
package importing them:

    name                   target                                   default options
    pickscore              drpo.rewards.clip_based:PickScore        path=yuvalkirstain/PickScore_v1
    clip                   drpo.rewards.clip_based:ClipScore        path=openai/clip-vit-large-patch14
    aesthetic              drpo.rewards.clip_based:Aesthetic        LAION MLP + CLIP-L/14
    hpsv2|hpsv3|imagereward|geneval
                           drpo.rewards.worker_client:WorkerReward  scorer=<name> (own environment)
    worker                 drpo.rewards.worker_client:WorkerReward  (give options.scorer)
    brightness             drpo.rewards.simple:Brightness           in-process mean pixel value
    command                drpo.rewards.blackbox:CommandReward      any executable (argv list)
    http                   drpo.rewards.blackbox:HTTPReward         any endpoint (options.url)
    world_checker          drpo.world.rewards:CheckerReward         graded=False
    world_checker_graded   drpo.world.rewards:CheckerReward         graded=True
    world_pickscore        drpo.rewards.clip_based:PickScore        path=results/world/reward_model

Spec options override the defaults. A class registered with `register_reward` under an existing
name replaces the lazy entry (keeping its default options unless new ones are given).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from drpo.errors import UserError


class RewardError(UserError, RuntimeError):
    """A reward failed: crashed, hung, returned the wrong count, NaN/inf or garbage.

    The message names the reward, the command/URL/worker, and what went wrong.
    """


class Reward:
    """Base class. Subclasses implement `score(images, prompts, metadata)` on one batch.

    `__call__` validates the input, splits it into `batch_size` chunks, runs without grad and
    checks the output (float32, one finite score per image, on CPU).
    """

    name: str = "reward"
    differentiable: bool = False

    def __init__(self, batch_size: int = 32, device: str | torch.device = "cpu"):
        if int(batch_size) < 1:
            raise ValueError(f"reward {self.name}: batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"reward {self.name}: images must be a uint8 tensor (N, 3, H, W), got {got}")
        n = images.shape[0]
        prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
        metadata = list(metadata) if metadata is not None else [{} for _ in range(n)]
        if len(prompts) != n or len(metadata) != n:
            raise ValueError(f"reward {self.name}: {n} images but {len(prompts)} prompts and {len(metadata)} metadata rows")
        out = []
        for s in range(0, n, self.batch_size):
            sl = slice(s, s + self.batch_size)
            scores = self.score(images[sl], prompts[sl], metadata[sl])
            out.append(check_scores(scores, len(prompts[sl]), self.name))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float32)

    def score_differentiable(self, images: Tensor, prompts: list[str]) -> Tensor:
        """Scores (N,) with grad w.r.t. `images` (float, [-1, 1]); only for differentiable rewards."""
        raise NotImplementedError(
            f"reward {self.name} is not differentiable; DRaFT and VGGFlow need pickscore or aesthetic"
        )

    def close(self) -> None:
        """Release processes or connections (no-op for in-process rewards)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} on {self.device}>"


def check_scores(scores: Any, count: int, name: str, where: str = "") -> Tensor:
    """Scores as float32 (count,) on CPU, or a RewardError naming the reward and what is wrong."""
    try:
        if isinstance(scores, Tensor):
            t = scores.detach().to("cpu", torch.float32).reshape(-1)
        else:
            if isinstance(scores, (list, tuple)) and any(isinstance(s, (bool, str, bytes)) or s is None for s in scores):
                raise TypeError(f"non-numeric entries in {list(scores)[:8]}")
            t = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise RewardError(f"reward {name}{where}: scores are not numbers ({err})") from None
    if t.numel() != count:
        raise RewardError(f"reward {name}{where}: returned {t.numel()} scores for {count} images")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise RewardError(f"reward {name}{where}: {bad} of {count} scores are NaN or infinite: {t[:8].tolist()}")
    return t


@dataclass
class RewardEntry:
    """Where a reward name points: a class or a lazy "module:attr", plus default options."""

    target: str | type
    defaults: dict[str, Any] = field(default_factory=dict)


_WORKER = "drpo.rewards.worker_client:WorkerReward"
REWARDS: dict[str, RewardEntry] = {
    "pickscore": RewardEntry("drpo.rewards.clip_based:PickScore"),
    "clip": RewardEntry("drpo.rewards.clip_based:ClipScore"),
    "aesthetic": RewardEntry("drpo.rewards.clip_based:Aesthetic"),
    "hpsv2": RewardEntry(_WORKER, {"scorer": "hpsv2"}),
    "hpsv3": RewardEntry(_WORKER, {"scorer": "hpsv3"}),
    "imagereward": RewardEntry(_WORKER, {"scorer": "imagereward"}),
    "geneval": RewardEntry(_WORKER, {"scorer": "geneval"}),
    "worker": RewardEntry(_WORKER),
    "brightness": RewardEntry("drpo.rewards.simple:Brightness"),
    "command": RewardEntry("drpo.rewards.blackbox:CommandReward"),
    "http": RewardEntry("drpo.rewards.blackbox:HTTPReward"),
    "world_checker": RewardEntry("drpo.world.rewards:CheckerReward", {"graded": False}),
    "world_checker_graded": RewardEntry("drpo.world.rewards:CheckerReward", {"graded": True}),
    "world_pickscore": RewardEntry("drpo.rewards.clip_based:PickScore", {"path": "results/world/reward_model"}),
}


def register_reward(name: str, **defaults: Any) -> Callable[[type], type]:
    """Class decorator adding (or replacing) a reward under `name`, with optional default options."""

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Reward)):
            raise TypeError(f"register_reward({name!r}): {cls!r} is not a subclass of drpo.rewards.Reward")
        old = REWARDS.get(name)
        REWARDS[name] = RewardEntry(cls, dict(defaults) if defaults or old is None else dict(old.defaults))
        return cls

    return deco


def available_rewards() -> list[str]:
    return sorted(REWARDS)


def _resolve(name: str) -> type:
    if name not in REWARDS:
        raise ValueError(f"reward {name!r} is not registered; known rewards: {', '.join(available_rewards())}")
    target = REWARDS[name].target
    if isinstance(target, type):
        return target
    module, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reward {name!r}: cannot load {target} ({type(err).__name__}: {err})") from err
    return obj


SPEC_KEYS = {"name", "weight", "options"}


def _spec(spec: dict | str | Any) -> dict:
    if isinstance(spec, str):
        return {"name": spec}
    if not isinstance(spec, dict):  # a dataclass such as drpo.train.config.RewardSpec
        spec = {k: getattr(spec, k) for k in SPEC_KEYS if hasattr(spec, k)}
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(f"reward spec {spec}: unknown keys {sorted(unknown)}; a spec has name, weight, options")
    if "name" not in spec:
        raise ValueError(f"reward spec {spec}: missing 'name'; known rewards: {', '.join(available_rewards())}")
    return spec


def _check_options(name: str, cls: type, options: dict) -> None:
    """Unknown options are an error naming the accepted ones (typos must not pass silently)."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"reward {name!r}: unknown options {unknown}; {cls.__name__} accepts {sorted(accepted - {'device'})} (and device)"
        )


def fp32_specs(specs: list[dict]) -> list[dict]:
    """Specs with `dtype: float32` for every differentiable reward that takes a dtype and names none:
    DRaFT and VGGFlow back-propagate through the reward in fp32, as the authors' trainers do (its
    "auto" dtype is fp16 on CUDA, which is right for ranking and metrics but not for gradients)."""
    out = []
    for spec in specs:
        spec = _spec(spec)
        cls = _resolve(spec["name"])
        options = dict(spec.get("options") or {})
        if getattr(cls, "differentiable", False) and "dtype" in inspect.signature(cls).parameters:
            options.setdefault("dtype", "float32")
        out.append({**spec, "options": options})
    return out


def build_reward(spec: dict | str, device: str | torch.device = "cpu") -> Reward:
    """A reward from a spec {"name", "weight", "options"} (weight only matters in ensembles)."""
    spec = _spec(spec)
    name = spec["name"]
    cls = _resolve(name)
    options = {**REWARDS[name].defaults, **dict(spec.get("options") or {})}
    device = options.pop("device", device)
    _check_options(name, cls, options)
    reward = cls(device=device, **options)
    reward.name = name
    return reward


def build_reward_ensemble(specs: list[dict] | dict | str, device: str | torch.device = "cpu") -> Reward:
    """One spec → that reward itself; several → z-scored within each call's candidates, weighted."""
    if isinstance(specs, (dict, str)):
        specs = [specs]
    specs = [_spec(s) for s in specs]
    if not specs:
        raise ValueError("reward: give at least one reward spec")
    if len(specs) == 1:
        return build_reward(specs[0], device)
    from drpo.rewards.ensemble import Ensemble

    names = [s["name"] for s in specs]
    weights = [float(s.get("weight", 1.0)) for s in specs]
    Ensemble.validate(names, weights)  # before loading any model
    return Ensemble([build_reward(s, device) for s in specs], weights)


__all__ = [
    "REWARDS", "Reward", "RewardEntry", "RewardError", "available_rewards", "build_reward",
    "build_reward_ensemble", "check_scores", "fp32_specs", "register_reward",
]
