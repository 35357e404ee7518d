"""What every training method shares: the models it talks to and one micro-step's contract.

A method turns one micro-step's prompts into gradients: `backward(batch, scale, noise_gen)` runs
the forward pass, calls backward on `scale · loss` and returns the metrics to log. Most methods
only implement `loss`; DRaFT streams candidates and overrides `backward`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from drpo.train.config import TrainConfig
from drpo.train.timing import ComponentTimer


@dataclass
class Models:
    """The generator (with LoRA), its frozen reference (same weights, adapters off), reward, features."""

    generator: Any  # drpo.models.generators.OneStepGenerator
    reward: Any | None = None  # drpo.rewards.Reward (an ensemble when several are configured)
    features: Any | None = None  # drpo.models.features.FeatureMap


def unet_cond(embeds, k: int = 1) -> dict:
    """Conditioning of the teacher-UNet feature map, repeated for k candidates per prompt."""
    e = embeds.repeat_interleave(k) if k > 1 else embeds
    cond: dict[str, Any] = {"encoder_hidden_states": e.hidden}
    if getattr(e, "pooled", None) is not None:
        cond["added_cond_kwargs"] = {"text_embeds": e.pooled, "time_ids": e.time_ids}
    return cond


class Method:
    """Base class of DrPO and the baselines."""

    name = "method"

    def __init__(self, cfg: TrainConfig, models: Models, timer: ComponentTimer):
        self.cfg = cfg
        self.models = models
        self.gen = models.generator
        self.timer = timer

    # -- state a checkpoint keeps beside the LoRA and optimizer (none by default) --------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name} keeps no state, but the checkpoint holds {sorted(state)}")

    # -- helpers shared by the methods -------------------------------------------------------
    def encode(self, batch: list[dict]):
        with self.timer("encode_prompts"):
            return self.gen.encode_prompts([row["prompt"] for row in batch])

    def generate(self, noise: Tensor, embeds, *, reference: bool = False, grad: bool = True) -> Tensor:
        with self.timer("reference" if reference else "sampling"):
            if grad and not reference:
                return self.gen.generate(noise, embeds)
            with torch.no_grad():
                return self.gen.generate(noise, embeds, reference=reference)

    @torch.no_grad()
    def rewards(self, latents: Tensor, batch: list[dict], k: int) -> Tensor:
        """Rewards of B·k candidates (k consecutive per prompt) on decoded uint8 images, no grad.

        Called once per prompt so that ensembles z-score within that prompt's candidates (§3).
        """
        # the scores only rank: inference mode skips autograd's bookkeeping in the decoder and the reward
        with torch.inference_mode():
            with self.timer("decoding"):
                images = self.gen.to_uint8(self.gen.decode(latents.detach()))
            scores = []
            with self.timer("reward"):
                for b, row in enumerate(batch):
                    meta = {key: v for key, v in row.items() if key != "prompt"}
                    scores.append(self.models.reward(images[b * k : (b + 1) * k], [row["prompt"]] * k, [meta] * k))
            scores = torch.stack([torch.as_tensor(s, dtype=torch.float32) for s in scores])  # (B, k)
        return scores.clone().to(latents.device)  # a normal tensor again, usable anywhere

    def features(self, latents: Tensor, embeds, k: int, *, grad: bool) -> dict[str, Tensor]:
        """Features (B·k, T, D) of latents: pixel maps decode first (with grad for generated)."""
        fm = self.models.features
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            x = latents
            if fm.input_kind == "pixels":
                with self.timer("decoding"):
                    x = self.gen.decode(latents)
            with self.timer("features"):
                return fm(x, cond=unet_cond(embeds, k))

    # -- the contract --------------------------------------------------------------------------
    def loss(self, batch: list[dict], noise_gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def backward(self, batch: list[dict], scale: float, noise_gen: torch.Generator) -> dict[str, float]:
        loss, metrics = self.loss(batch, noise_gen)
        with self.timer("backward"):
            (loss * scale).backward()
        metrics.setdefault("loss", loss.item())
        return metrics

    def after_update(self) -> None:
        """Hook after each optimizer step (VGGFlow updates its clipping quantile here)."""


def reward_stats(scores: Tensor, prefix: str = "reward") -> dict[str, float]:
    """Mean / best / worst / gap of candidate rewards, averaged over prompts (rows)."""
    s = scores.float()
    best, worst = s.max(dim=-1).values, s.min(dim=-1).values
    return {
        f"{prefix}/mean": s.mean().item(),
        f"{prefix}/best": best.mean().item(),
        f"{prefix}/worst": worst.mean().item(),
        f"{prefix}/gap": (best - worst).mean().item(),
    }
