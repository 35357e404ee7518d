"""The shapes world's base one-step generator: a tiny SD-Turbo-class stack pre-trained on renders.

Two stages of fixed step counts (so a seed reproduces the model; about 16 minutes on 2 idle cores),
all on the same classes as SD-Turbo (UNet2DCondition, AutoencoderKL, CLIPTextModel, a CLIP
tokenizer over the world's words):

1. the VAE learns to reconstruct rendered images (MSE + a tiny KL), then its scaling factor is set
   so latents have unit variance, as SD's 0.18215 does;
2. the UNet and text encoder learn the one-step map noise → image by regression on *coupled*
   pairs: each training render draws its objects' sizes, offsets and free colours from the very
   noise it is paired with (`render(..., noise=z)`), so the map is a function, not a distribution.
   Regressing uncoupled pairs only learns the posterior mean — the average of every layout, a blur
   with no shapes (it scored 2–4 % on the checker, as did drift pre-training from it in 500 steps).
   Over random noise the coupled renders have the world's own distribution, so the generator's
   samples vary with the seed as the data does.

The result is saved as a standard diffusers pipeline folder (`model_index.json` written last, so
the folder only counts as finished when complete), with a grid of samples beside it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from drpo.io import sha256_file
from drpo.models.generators import PromptEmbeds
from drpo.models.seeds import latent_seed
from drpo.progress import rate_and_eta
from drpo.world.grammar import vocabulary_words
from drpo.world.render import render

log = logging.getLogger(__name__)


@dataclass
class BaseRecipe:
    resolution: int = 32
    vae_steps: int = 800
    regression_steps: int = 5000
    seed: int = 0
    vae_channels: tuple[int, ...] = (16, 32, 32)
    unet_channels: tuple[int, ...] = (64, 128)
    text_width: int = 64
    vae_batch: int = 32
    vae_lr: float = 3e-3
    unet_lr: float = 1e-3
    prompts_per_step: int = 16


def _images(rows: list[dict], rng: np.random.Generator, size: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Renders of `rows` in [-1, 1]; with `noise` (n, C, h, w), render i is coupled to noise[i]."""
    zs = noise.numpy() if noise is not None else [None] * len(rows)
    arr = np.stack([render(r, rng, size, noise=z) for r, z in zip(rows, zs)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


class _TagBalanced:
    """Draw prompt indices uniformly over GenEval tags, then within the tag: a prompt file may hold
    few prompts of a tag (the world's training set: 23 single-object ones), and every tag must be learnt."""

    def __init__(self, rows: list[dict], rng: np.random.Generator):
        self.rng = rng
        by_tag: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_tag.setdefault(r.get("tag", ""), []).append(i)
        self.groups = [np.asarray(v) for v in by_tag.values()]

    def __call__(self, n: int) -> np.ndarray:
        tags = self.rng.integers(0, len(self.groups), n)
        return np.asarray([g[self.rng.integers(0, len(g))] for g in (self.groups[t] for t in tags)])


def train_base(prompts_path: str | Path, out: str | Path, recipe: BaseRecipe = BaseRecipe(),
               log: Callable[[str], None] = log.info) -> Path:
    from drpo.data.prompts import load_prompts
    from drpo.models.generators import OneStepGenerator
    from drpo.models.tiny import build_tiny_sd_turbo

    out = Path(out)
    rows = load_prompts(prompts_path)
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    work = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    words = sorted(set(vocabulary_words()) | {w for r in rows for w in r["prompt"].split()})
    # v-prediction keeps the one-step jump well-conditioned (ε would amplify UNet error ×14.6 at t = 999)
    build_tiny_sd_turbo(
        work, resolution=recipe.resolution, words=words, seed=recipe.seed, unet_channels=recipe.unet_channels,
        vae_channels=recipe.vae_channels, cross_attention_dim=recipe.text_width, prediction_type="v_prediction",
    )
    gen = OneStepGenerator.from_pretrained(work)
    draw = _TagBalanced(rows, rng)
    start = time.time()

    # 1. the VAE
    vae = gen.vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr)
    # cosine decay: a constant high rate leaves the last weights wherever the last batch threw them
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.vae_steps, eta_min=recipe.vae_lr * 0.05)
    for step in range(1, recipe.vae_steps + 1):
        batch = _images([rows[i] for i in draw(recipe.vae_batch)], rng, recipe.resolution)
        post = vae.encode(batch).latent_dist
        loss = F.mse_loss(vae.decode(post.sample()).sample, batch) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == recipe.vae_steps:
            log(f"vae step {step}/{recipe.vae_steps}: reconstruction mse {loss.item():.4f} | "
                f"{rate_and_eta(step, recipe.vae_steps, time.time() - start)} (then {recipe.regression_steps} regression steps)")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        probe = _images([rows[i] for i in rng.integers(0, len(rows), 256)], rng, recipe.resolution)
        scale = 1.0 / float(vae.encode(probe).latent_dist.mode().std())
        vae.register_to_config(scaling_factor=scale)
        gen.vae_scaling_factor = scale
    log(f"vae: latent scaling factor {scale:.4f}")

    # 2. the UNet and the text encoder, on renders coupled to their noise
    unet, text = gen.unet.train().requires_grad_(True), gen.text_encoder.train().requires_grad_(True)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=1e-2)
    tokens = gen.tokenizer([r["prompt"] for r in rows], padding="max_length", max_length=gen.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(recipe.regression_steps, 1), eta_min=recipe.unet_lr * 0.05)
    regression_start = time.time()
    for step in range(1, recipe.regression_steps + 1):
        idx = draw(recipe.prompts_per_step)
        noise = gen.sample_noise(len(idx))
        with torch.no_grad():
            target = gen.encode_images(_images([rows[i] for i in idx], rng, recipe.resolution, noise.cpu()))
        latents = gen.generate(noise, PromptEmbeds(text(tokens[torch.from_numpy(idx)])[0]))
        loss = F.mse_loss(latents, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == recipe.regression_steps:
            log(f"regression step {step}/{recipe.regression_steps}: loss {loss.item():.4f} | "
                f"{rate_and_eta(step, recipe.regression_steps, time.time() - regression_start)}")
    unet.eval().requires_grad_(False)
    text.eval().requires_grad_(False)
    log(f"base model trained in {time.time() - start:.0f} s")

    # save: the pipeline in half precision (model_index.json last; the weights are rounded to what
    # is stored, so the model used from here on is exactly the one a later load gives), a sample
    # grid, the recipe. Half: the shipped copy of this model (drpo/world/shipped) is half the size.
    # the build folder's path would be written as `_name_or_path`: a stable name keeps builds byte-identical
    for part in (gen.pipe, gen.unet, gen.vae):
        part.register_to_config(_name_or_path="shapes-turbo")
    _cast(gen, torch.float16)
    gen.pipe.save_pretrained(work)
    _cast(gen, torch.float32)
    index = work / "model_index.json"
    os.replace(index, work / "model_index.json.partial")
    _sample_grid(gen, rows[:8], work / "samples.png")
    (work / "recipe.json").write_text(json.dumps({**asdict(recipe), "prompts_sha256": sha256_file(prompts_path), "words": len(words)}, indent=2))
    os.replace(work / "model_index.json.partial", index)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)
    return out


@torch.no_grad()
def _cast(gen, dtype: torch.dtype) -> None:
    """Cast the weights in place (diffusers' `.to(dtype)` warns about modules to keep in float32:
    this model has none)."""
    for module in (gen.unet, gen.vae, gen.text_encoder):
        for p in module.parameters():
            p.data = p.data.to(dtype)


@torch.no_grad()
def _sample_grid(gen, rows: list[dict], path: Path, seeds: int = 4) -> Path:
    from drpo.grid import save_grid

    prompts = [r["prompt"] for r in rows for _ in range(seeds)]
    latent_seeds = [latent_seed(s, r.get("prompt_id", i)) for i, r in enumerate(rows) for s in range(seeds)]
    images = gen.to_pil(gen.decode(gen.generate(gen.noise_for_seeds(latent_seeds), gen.encode_prompts(prompts))))
    return save_grid(path, images, prompts, ncols=seeds * 2)
