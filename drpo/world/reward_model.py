"""The world's PickScore: a tiny CLIP trained contrastively on rendered image–prompt pairs.

Same classes as PickScore (transformers CLIPModel + CLIPProcessor), so the `pickscore` reward loads
it unchanged (`{name: pickscore, options: {path: results/world/reward_model}}`), including its
differentiable path — which is what DRaFT and VGGFlow need and the checker cannot give.
Each batch holds distinct prompts of every tag, so telling them apart needs shapes, colours,
counts and positions; half of the batch also brings a hard negative image (a render of another
prompt of the same tag) that only its attributes separate from the positive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from drpo.io import fresh_dir
from drpo.progress import rate_and_eta
from drpo.world.grammar import vocabulary_words
from drpo.world.render import render

log = logging.getLogger(__name__)


def _pixels(images: list[np.ndarray], processor) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    return (x - mean) / std  # the world's images already have the model's size: no resize, no crop


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def train_reward_model(prompts_path: str | Path, out: str | Path, *, steps: int = 300, batch: int = 64, resolution: int = 32,
                       seed: int = 0, lr: float = 1e-3,
                       log: Callable[[str], None] = log.info) -> Path:
    from drpo.data.prompts import load_prompts
    from drpo.models.tiny import build_tiny_clip

    rows = load_prompts(prompts_path)
    by_tag: dict[str, list[dict]] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(r)
    rng = np.random.default_rng(seed)
    words = sorted(set(vocabulary_words()) | {w for r in rows for w in r["prompt"].split()})
    model, processor = build_tiny_clip(words=words, image_size=resolution, patch_size=4, hidden=64, projection=64, layers=3, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    tokenizer = processor.tokenizer
    start = time.time()
    model.train()
    for step in range(1, steps + 1):
        picked = [rows[i] for i in rng.choice(len(rows), size=min(batch, len(rows)), replace=False)]
        hard = [by_tag[r["tag"]][rng.integers(len(by_tag[r["tag"]]))] for r in picked[: batch // 2]]
        hard = [h for h, r in zip(hard, picked) if h["prompt"] != r["prompt"]]
        images = [render(r, rng, resolution) for r in picked] + [render(h, rng, resolution) for h in hard]
        ids = tokenizer([r["prompt"] for r in picked], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
        img = F.normalize(_features(model.get_image_features(pixel_values=_pixels(images, processor))), dim=-1)
        txt = F.normalize(_features(model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * txt @ img.T  # (prompts, prompts + hard negatives)
        target = torch.arange(len(picked))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(picked)].T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            acc = (logits.argmax(1) == target).float().mean().item()
            log(f"reward model step {step}/{steps}: loss {loss.item():.3f}, prompt→image accuracy {acc:.2f} | "
                f"{rate_and_eta(step, steps, time.time() - start)}")
    model.eval()
    with fresh_dir(out) as work:
        processor.save_pretrained(work)
        model.save_pretrained(work)  # config.json (the workflow's marker) lands with the weights
    return Path(out)
