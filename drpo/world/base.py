"""The shapes world's base one-step generator: a tiny SD-Turbo-class stack pre-trained on renders.

Three stages of fixed step counts (so a seed reproduces the model; about 4 minutes on 2 idle
cores), all on the same classes as SD-Turbo (UNet2DCondition,
AutoencoderKL, CLIPTextModel, a CLIP tokenizer over the world's words):

1. the VAE learns to reconstruct rendered images (MSE + a tiny KL), then its scaling factor is set
   so latents have unit variance, as SD's 0.18215 does;
2. the UNet and text encoder regress v at t = 999 (v-prediction keeps the one-step jump
   well-conditioned from scratch; ε-prediction amplifies UNet error ×14.6 at t = 999), which gives
   the posterior mean: blurry, prompt-aware;
3. the drifting objective that DrPO builds on turns it into a sharp one-step generator: positives
   are latents of renders of the same prompt, negatives the model's own samples (`drpo.drift`,
   weights 3000 as in §1.4), on the raw latent and its 2×2-window means.

The result is saved as a standard diffusers pipeline folder (`model_index.json` written last, so
the folder only counts as finished when complete), with a grid of samples beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from drpo.drift import drift_loss
from drpo.models.generators import PromptEmbeds
from drpo.world.grammar import vocabulary_words
from drpo.world.render import render

V_T, V_S = 0.0683, 0.9977  # √ᾱ and √(1−ᾱ) at t = 999 (drpo.models.generators)


@dataclass
class BaseRecipe:
    resolution: int = 32
    vae_steps: int = 1000
    regression_steps: int = 300
    drift_steps: int = 600
    seed: int = 0
    vae_channels: tuple[int, ...] = (16, 32, 32)
    unet_channels: tuple[int, ...] = (64, 128)
    text_width: int = 64
    vae_batch: int = 32
    vae_lr: float = 3e-3
    unet_lr: float = 3e-4
    prompts_per_step: int = 8
    candidates: int = 8  # generated samples per prompt in the drift stage
    renders_per_prompt: int = 16  # positives per prompt
    eta: float = 3000.0


def _images(rows: list[dict], rng: np.random.Generator, size: int) -> torch.Tensor:
    arr = np.stack([render(r, rng, size) for r in rows])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


class _TagBalanced:
    """Draw prompt indices uniformly over GenEval tags, then within the tag: the grammar has 5
    single-object prompts and hundreds of colour-attribute ones, and the easy tags must be learnt too."""

    def __init__(self, rows: list[dict], rng: np.random.Generator):
        self.rng = rng
        by_tag: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_tag.setdefault(r.get("tag", ""), []).append(i)
        self.groups = [np.asarray(v) for v in by_tag.values()]

    def __call__(self, n: int) -> np.ndarray:
        tags = self.rng.integers(0, len(self.groups), n)
        return np.asarray([g[self.rng.integers(0, len(g))] for g in (self.groups[t] for t in tags)])


def _window_means(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2).flatten(2).transpose(1, 2)  # (n, h/2·w/2, C)


def train_base(prompts_path: str | Path, out: str | Path, recipe: BaseRecipe = BaseRecipe(), log=print) -> Path:
    from drpo.models.generators import OneStepGenerator
    from drpo.models.tiny import build_tiny_sd_turbo
    from drpo.train.data import load_prompt_rows

    out = Path(out)
    rows = load_prompt_rows(prompts_path)
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    work = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    words = sorted(set(vocabulary_words()) | {w for r in rows for w in r["prompt"].split()})
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
        if step % 100 == 0:
            log(f"vae step {step}: reconstruction mse {loss.item():.4f} ({time.time() - start:.0f} s)")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        probe = _images([rows[i] for i in rng.integers(0, len(rows), 256)], rng, recipe.resolution)
        scale = 1.0 / float(vae.encode(probe).latent_dist.mode().std())
        vae.register_to_config(scaling_factor=scale)
        gen.vae_scaling_factor = scale
        # positives: latents of renders of every training prompt
        data = torch.stack([gen.encode_images(_images([r] * recipe.renders_per_prompt, rng, recipe.resolution)) for r in rows])
    log(f"vae: latent scaling factor {scale:.4f}, {len(rows)} prompts × {recipe.renders_per_prompt} renders encoded")

    # 2 + 3. the UNet and the text encoder
    unet, text = gen.unet.train().requires_grad_(True), gen.text_encoder.train().requires_grad_(True)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=1e-2)
    tokens = gen.tokenizer([r["prompt"] for r in rows], padding="max_length", max_length=gen.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    b, k, p = recipe.prompts_per_step, recipe.candidates, recipe.renders_per_prompt
    total = recipe.regression_steps + recipe.drift_steps
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1), eta_min=recipe.unet_lr * 0.1)
    for step in range(1, total + 1):
        idx = torch.from_numpy(draw(b))
        hidden = text(tokens[idx])[0]
        if step <= recipe.regression_steps:
            x0 = data[idx, torch.from_numpy(rng.integers(0, p, b))]
            noise = torch.randn_like(x0)
            v = unet(V_T * x0 + V_S * noise, 999, encoder_hidden_states=hidden).sample
            loss, stage = F.mse_loss(v, V_T * noise - V_S * x0), "regression"
        else:
            x = gen.generate(gen.sample_noise(b * k), PromptEmbeds(hidden).repeat_interleave(k))
            y = data[idx]  # (b, p, C, h, w)
            flat_x, flat_y = x.reshape(b, k, -1), y.reshape(b, p, -1)
            win_x = _window_means(x).reshape(b, -1, x.shape[1])
            win_y = _window_means(y.flatten(0, 1)).reshape(b, -1, x.shape[1])
            loss = (
                drift_loss(flat_x, flat_y, flat_x.detach(), recipe.eta, recipe.eta, mask_negative_self=True).loss.mean()
                + drift_loss(win_x, win_y, win_x.detach(), recipe.eta, recipe.eta, mask_negative_self=True).loss.mean()
            )
            stage = "drift"
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            log(f"{stage} step {step}/{total}: loss {loss.item():.4f} ({time.time() - start:.0f} s)")
    unet.eval().requires_grad_(False)
    text.eval().requires_grad_(False)
    log(f"base model trained in {time.time() - start:.0f} s")

    # save: the pipeline (model_index.json last), a sample grid, the recipe
    gen.pipe.save_pretrained(work)
    index = work / "model_index.json"
    os.replace(index, work / "model_index.json.partial")
    _sample_grid(gen, rows[:8], work / "samples.png")
    (work / "recipe.json").write_text(json.dumps({**asdict(recipe), "prompts": str(prompts_path), "words": len(words)}, indent=2))
    os.replace(work / "model_index.json.partial", index)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)
    return out


@torch.no_grad()
def _sample_grid(gen, rows: list[dict], path: Path, seeds: int = 4) -> Path:
    from drpo.grid import save_grid

    prompts = [r["prompt"] for r in rows for _ in range(seeds)]
    latent_seeds = [s * 1_000_000 + int(r.get("prompt_id", i)) for i, r in enumerate(rows) for s in range(seeds)]
    images = gen.to_pil(gen.decode(gen.generate(gen.noise_for_seeds(latent_seeds), gen.encode_prompts(prompts))))
    return save_grid(path, images, prompts, ncols=seeds * 2)
