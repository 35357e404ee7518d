"""Diversity: mean pairwise cosine distance of image features (METHOD.md §5.2), with any extractor.

Reported three ways: `overall` (all image pairs of the test set), `per_prompt` (pairs of one
prompt's images across seeds, averaged over prompts: does the model still vary for a fixed
prompt — mode collapse shows here first) and `per_seed` (pairs across prompts within one seed).
The mean over pairs is computed in closed form from the sum of unit vectors, so 10⁴ images need no
10⁸-entry Gram matrix: mean_{i≠j} cos(u_i, u_j) = (‖Σ u_i‖² − N) / (N(N−1)).
"""

from __future__ import annotations

import os

import numpy as np


def mean_pairwise_cosine_distance(features: np.ndarray) -> float:
    """1 − mean cosine similarity over unordered pairs of distinct rows; needs N ≥ 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"diversity: need features (N ≥ 2, D), got shape {f.shape}")
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("diversity: a feature vector is all zeros; cosine distance is undefined")
    u = f / norms
    n = u.shape[0]
    total = u.sum(axis=0)
    mean_cos = (float(total @ total) - n) / (n * (n - 1))
    return max(0.0, 1.0 - mean_cos)  # round-off can push identical images a hair below 0


def diversity(features: np.ndarray, prompt_ids, seeds) -> dict:
    """Overall, per-prompt (across seeds, mean over prompts with ≥ 2 images) and per-seed diversity."""
    f = np.asarray(features, dtype=np.float64)
    pids, sds = np.asarray(prompt_ids), np.asarray(seeds)
    if not (len(f) == len(pids) == len(sds)):
        raise ValueError(f"diversity: {len(f)} features, {len(pids)} prompt ids, {len(sds)} seeds")
    per_prompt = [mean_pairwise_cosine_distance(f[pids == p]) for p in np.unique(pids) if (pids == p).sum() >= 2]
    per_seed = {int(s): mean_pairwise_cosine_distance(f[sds == s]) for s in np.unique(sds) if (sds == s).sum() >= 2}
    return {
        "overall": mean_pairwise_cosine_distance(f),
        "per_prompt": float(np.mean(per_prompt)) if per_prompt else None,
        "per_seed": per_seed,
        "n_images": int(len(f)),
        "n_prompts": int(len(np.unique(pids))),
        "n_prompts_with_seeds": len(per_prompt),
    }


def manifest_diversity(manifest_path: str | os.PathLike, extractor, *, batch_size: int = 32, cache: bool = True) -> dict:
    """`diversity` of a manifest's images under `extractor` (any FeatureExtractor)."""
    from drpo.eval.fid import manifest_features

    feats, rows = manifest_features(manifest_path, extractor, batch_size=batch_size, cache=cache)
    out = diversity(feats, [r.prompt_id for r in rows], [r.seed for r in rows])
    out["extractor"] = getattr(extractor, "name", type(extractor).__name__)
    return out
