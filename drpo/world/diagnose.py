"""`drpo world diagnose`: what a ranking method can learn from its generator, group by group.

For each prompt, K candidates are drawn as a DrPO update draws them (the run's train config: its
model, LoRA if given, training reward and feature space). Per group of prompts (a GenEval tag, or a
counting prompt's number):

  * ranked: share of prompts whose K candidates the training reward does not all score alike.
    Where it is 0, a method that only ranks has nothing to learn from.
  * correct: share of candidates the world checker calls correct; top / bottom: that share among
    the `positives` best and the `negatives` worst by the training reward.
  * separation: mean feature distance correct→wrong ÷ correct→correct (1: the drift's feature space
    does not tell them apart), and how often a correct candidate's nearest neighbour is correct
    against the share of correct among the others (chance).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import torch

from drpo.contracts import is_correct
from drpo.errors import UserError

NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}


KEYS = ("ranked", "correct", "top", "bottom", "separation", "nearest_correct", "nearest_chance")


def group_of(row: dict, by: str) -> str:
    if by == "tag":
        return row["tag"]
    if by == "number":  # counting prompts by their number word; the other tags as they are
        return f"counting: {NUMBER_WORDS.get(row['include'][0]['count'], row['include'][0]['count'])}" \
            if row["tag"] == "counting" else row["tag"]
    raise ValueError(f"drpo world diagnose: --by must be tag or number, got {by!r}")


def _separation(feats: torch.Tensor, ok: torch.Tensor) -> tuple[float, float, float] | None:
    """(correct→wrong ÷ correct→correct distance, nearest-neighbour correct share, its chance)."""
    n_ok = int(ok.sum())
    if n_ok < 2 or n_ok == len(ok):
        return None
    d = torch.cdist(feats, feats)
    same = d[ok][:, ok]
    within = same[~torch.eye(n_ok, dtype=torch.bool)].mean()
    across = d[ok][:, ~ok].mean()
    nearest = (d + torch.eye(len(ok)) * torch.finfo(d.dtype).max).argmin(1)
    return float(across / within), float(ok[nearest[ok]].float().mean()), (n_ok - 1) / (len(ok) - 1)


def ranking_signal(train_config: str | Path, prompts: str | Path, *, by: str = "tag", per_group: int = 24,
                   seed: int = 0, lora: str | None = None, overrides: dict | None = None) -> list[dict]:
    """One row per group: its prompts and the shares above (means over its prompts; None where a
    group has no prompt with both correct and wrong candidates). The candidates' noise is one stream
    in group order, so a prompt's candidates depend on `seed`, `by` and `per_group`. `overrides`
    (nested, as `drpo train --set` gives) change the train config first: another feature space."""
    from drpo.data.prompts import load_prompts
    from drpo.rewards import build_reward
    from drpo.train.config import load_train_config
    from drpo.train.timing import ComponentTimer
    from drpo.train.trainer import build_method, build_models

    if per_group < 1:
        raise ValueError(f"drpo world diagnose: --per-group must be at least 1, got {per_group}")
    cfg = load_train_config(train_config, overrides)
    if cfg.method != "drpo":  # the question is what DrPO's ranking and feature space see
        raise UserError(f"{train_config}: method is {cfg.method!r}; drpo world diagnose reads a DrPO run's train config "
                        "(results/runs/drpo-s42/train.yaml)")
    rows = load_prompts(prompts)
    bad = next((i for i, r in enumerate(rows) if not (isinstance(r.get("tag"), str) and r.get("include"))), None)
    if bad is not None:
        raise UserError(f"{prompts}: row {bad + 1} is not a GenEval row (it needs tag and include, as `drpo world prompts` writes)")
    torch.manual_seed(seed)  # stochastic feature maps (a MAE's mask, a teacher UNet's noise) draw from the global stream
    models = build_models(cfg, torch.device("cpu"))
    if lora:
        models.generator.load_lora(lora)
    method = build_method(cfg, models, ComponentTimer(torch.device("cpu")))
    checker = build_reward({"name": "world_checker"})
    k, top, bottom = cfg.drpo.candidates, cfg.drpo.positives, cfg.drpo.negatives
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        group = groups[group_of(row, by)]
        if len(group) < per_group:
            group.append(row)
    noise_gen = torch.Generator().manual_seed(seed)
    gen = method.gen
    out = []
    for name in sorted(groups):
        shares: dict[str, list[float]] = defaultdict(list)
        for row in groups[name]:
            prompts_k, meta_k = [row["prompt"]] * k, [{key: v for key, v in row.items() if key != "prompt"}] * k
            with torch.no_grad():
                embeds = gen.encode_prompts([row["prompt"]])
                latents = gen.generate(gen.sample_noise(k, generator=noise_gen), embeds.repeat_interleave(k))
                images = gen.to_uint8(gen.decode(latents))  # decoded once for the training reward and the checker
                scores = models.reward(images, prompts_k, meta_k)  # what method.rewards scores, for one prompt
                ok = is_correct(checker(images, prompts_k, meta_k))
                feats = method.features(latents, embeds, k, grad=False)
                flat = torch.cat([v.reshape(k, -1).float() for v in feats.values()], dim=1)
            order = torch.argsort(scores, descending=True, stable=True)
            shares["ranked"].append(float(scores.max() > scores.min()))
            shares["correct"].append(float(ok.float().mean()))
            shares["top"].append(float(ok[order[:top]].float().mean()))
            shares["bottom"].append(float(ok[order[-bottom:]].float().mean()))
            sep = _separation(flat, ok)
            if sep is not None:
                for key, value in zip(("separation", "nearest_correct", "nearest_chance"), sep):
                    shares[key].append(value)
        out.append({"group": name, "prompts": len(groups[name]), "separated_prompts": len(shares.get("separation", [])),
                    **{key: (statistics.fmean(shares[key]) if shares.get(key) else None) for key in KEYS}})
    return out


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of `ranking_signal`'s rows."""
    head = "| group | prompts | ranked | correct | top | bottom | separation | nearest correct (chance) |"
    lines = [head, "|" + "---|" * 8]

    def pct(v):
        return "–" if v is None else f"{100 * v:.0f} %"

    for r in rows:
        sep = "–" if r.get("separation") is None else f"{r['separation']:.3f}"
        near = "–" if r.get("nearest_correct") is None else f"{pct(r['nearest_correct'])} ({pct(r['nearest_chance'])})"
        lines.append(f"| {r['group']} | {r['prompts']} | {pct(r['ranked'])} | {pct(r['correct'])} | {pct(r['top'])} | "
                     f"{pct(r['bottom'])} | {sep} | {near} |")
    return "\n".join(lines)
