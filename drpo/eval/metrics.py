"""Metrics on sampled test sets (METHOD.md §5.2): any drpo reward as a per-image metric, summaries
with bootstrap confidence intervals, GenEval accuracies, and the paper's display scaling.

Units, stated once: score files, summaries and the tidy results frame hold **raw** metric values
(PickScore cosine 0.2349, ImageReward 0.954, accuracy 0.465, preference share 0.698). The paper's
display units (PS = PickScore×100, IR = ImageReward×10, CLIP and HPSv2 ×100, GenEval and preference
in %, AES raw) are applied only by `to_display`, from the `DISPLAY_SCALE` table below; the table
builders call it and nothing else scales.

Score files (`score_manifest`) are parquet, one row per (image, metric): prompt_id, seed, prompt,
image_path (as written in the manifest, relative to its folder), metric, score, plus `tag` (the
GenEval tag when the manifest's metadata has one) and `image_stamp` (file size and mtime: an image
that was resampled after scoring is scored again on the next run).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drpo.contracts import ManifestRow, ScoreSummary, is_correct, read_manifest, write_score_summary

# -- display scaling (the one place) ------------------------------------------------------------

# metric -> factor from raw values to the paper's display units.
DISPLAY_SCALE: dict[str, float] = {
    "pickscore": 100.0,  # PS
    "world_pickscore": 100.0,
    "clip": 100.0,  # reference-objective table
    "hpsv2": 100.0,  # reference-objective table
    "hpsv3": 1.0,
    "aesthetic": 1.0,  # AES raw
    "imagereward": 10.0,  # IR
    "geneval": 100.0,  # accuracies in %
    "world_checker": 100.0,
    "world_checker_graded": 100.0,
    "preference": 100.0,  # Qwen3-VL preference share in %
    "fid": 1.0,
    "distance": 1.0,  # mean feature distance to the reference model's sample
    "diversity": 1.0,
}
# metric -> decimals the paper prints (and the tables print).
DISPLAY_DECIMALS: dict[str, int] = {
    "pickscore": 2, "world_pickscore": 2, "clip": 2, "hpsv2": 2, "hpsv3": 2, "aesthetic": 3,
    "imagereward": 2, "geneval": 1, "world_checker": 1, "world_checker_graded": 1, "preference": 1,
    "fid": 2, "distance": 2, "diversity": 4,
}
# Raw values of these metrics lie in [-1, 1] (cosines, accuracies, shares): a larger one in a results
# frame was scaled already, and scaling it again would print 2349 instead of 23.49.
RAW_AT_MOST_ONE = {"pickscore", "world_pickscore", "clip", "hpsv2", "geneval", "world_checker", "preference"}

METRIC_ALIASES: dict[str, str] = {
    "ps": "pickscore", "pick": "pickscore", "pickscore_v1": "pickscore",
    "aes": "aesthetic", "laion_aesthetic": "aesthetic", "aesthetics": "aesthetic",
    "ir": "imagereward", "image_reward": "imagereward",
    "hps": "hpsv2", "hpsv2.1": "hpsv2", "hps_v2": "hpsv2", "hps_v3": "hpsv3",
    "clipscore": "clip", "clip_score": "clip",
    "preference_share": "preference",
}


def canonical_metric(metric: str) -> str:
    """Lower-case name with aliases resolved ('PS' → 'pickscore'; 'geneval:Counting' → 'geneval:counting')."""
    m = str(metric).strip().lower()
    head, sep, tail = m.partition(":")
    return METRIC_ALIASES.get(head, head) + sep + tail


def display_scale(metric: str) -> float:
    """Factor from raw to display units; 'family:detail' metrics use the family's (geneval:counting → 100).

    Metrics not in DISPLAY_SCALE (timings, counts) are shown raw.
    """
    m = canonical_metric(metric)
    if m in DISPLAY_SCALE:
        return DISPLAY_SCALE[m]
    return DISPLAY_SCALE.get(m.partition(":")[0], 1.0)


def display_decimals(metric: str) -> int:
    m = canonical_metric(metric)
    return DISPLAY_DECIMALS.get(m, DISPLAY_DECIMALS.get(m.partition(":")[0], 2))


def to_display(value: float | None, metric: str) -> float | None:
    """Raw value → the paper's display units (None and NaN stay None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value) * display_scale(metric)


def check_raw(value: float, metric: str, where: str = "") -> None:
    """Refuse values that were visibly scaled already (a PickScore of 23.49 in a results file)."""
    family = canonical_metric(metric).partition(":")[0]
    if family in RAW_AT_MOST_ONE and abs(float(value)) > 1.0 + 1e-9:
        raise ValueError(
            f"{where}metric {metric!r} has value {value}, but raw {family} values lie in [-1, 1]: results hold raw "
            f"values and the tables apply the display scale ×{display_scale(metric):g} themselves; divide it out"
        )


# -- manifests and images -----------------------------------------------------------------------


def image_stamp(path: str | os.PathLike) -> str:
    """Size and mtime of an image file: changes when the image is rewritten."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} listed in the manifest is missing (re-run `drpo sample`)") from None
    return f"{st.st_size}:{st.st_mtime_ns}"


def load_images(paths: Sequence[str | os.PathLike]):
    """uint8 tensors (3, H, W), one per path (RGB)."""
    import torch
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError:
            raise FileNotFoundError(f"image {p} listed in the manifest is missing (re-run `drpo sample`)") from None
        except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated or not an image at all
            raise ValueError(f"image {p} cannot be read ({err}); delete it and re-run `drpo sample`, which redraws it") from None
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    return out


def iter_image_batches(rows: Sequence[ManifestRow], batch_size: int) -> Iterator[tuple[list[ManifestRow], Any]]:
    """(rows, uint8 (N,3,H,W)) batches of manifest rows; a batch mixing image sizes is split by size."""
    import torch

    for start in range(0, len(rows), batch_size):
        chunk = list(rows[start : start + batch_size])
        images = load_images([r.image for r in chunk])
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(tuple(im.shape), []).append(i)
        for idx in by_shape.values():
            yield [chunk[i] for i in idx], torch.stack([images[i] for i in idx])


# -- per-image scores ---------------------------------------------------------------------------

SCORE_COLUMNS = ["prompt_id", "seed", "prompt", "image_path", "metric", "score", "tag", "image_stamp"]


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    from drpo.io import atomic_path

    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    df = pd.read_parquet(path)
    missing = [c for c in ("prompt_id", "seed", "metric", "score") if c not in df.columns]
    if missing:
        raise ValueError(f"score file {path} lacks columns {missing}; it was not written by `drpo score`")
    return df


def score_manifest(
    manifest_path: str | os.PathLike,
    reward: Callable,
    out_parquet: str | os.PathLike,
    batch_size: int = 32,
    *,
    metric: str | None = None,
    flush_every: int = 512,
    progress: bool = False,
) -> pd.DataFrame:
    """Score every image of a manifest with `reward`; returns this metric's rows.

    `reward(images uint8 (N,3,H,W), prompts, metadata) -> (N,)` is any drpo reward (or any callable
    of that shape). Resumable: images already in `out_parquet` for this metric with an unchanged
    file are not scored again; the file is rewritten atomically every `flush_every` new scores, so a
    killed job loses at most that many. Rows of other metrics in the file are kept.
    """
    out = Path(out_parquet)
    metric = canonical_metric(metric or getattr(reward, "name", "") or "")
    if not metric:
        raise ValueError("score_manifest: the reward has no `name`; pass metric=")
    rows = read_manifest(manifest_path)
    stamps = {r.key: image_stamp(r.image) for r in rows}

    old = read_scores(out) if out.exists() else pd.DataFrame(columns=SCORE_COLUMNS)
    if "image_stamp" not in old.columns:
        old["image_stamp"] = None
    others = old[old["metric"] != metric]
    mine = old[old["metric"] == metric]
    wanted = stamps
    valid = [wanted.get((int(p), int(s))) == st for p, s, st in zip(mine["prompt_id"], mine["seed"], mine["image_stamp"])]
    kept = mine[np.asarray(valid, dtype=bool)] if len(mine) else mine
    done = {(int(p), int(s)) for p, s in zip(kept["prompt_id"], kept["seed"])}
    todo = [r for r in rows if r.key not in done]
    changed = len(kept) != len(mine)

    new: list[dict] = []
    pending = 0

    def frame() -> pd.DataFrame:
        parts = [f for f in (others, kept, pd.DataFrame(new, columns=SCORE_COLUMNS)) if len(f)]
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SCORE_COLUMNS)
        return df.sort_values(["metric", "seed", "prompt_id"], kind="stable").reset_index(drop=True)

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"{metric} {Path(manifest_path).parent.name}", unit="img")
    for chunk, images in iter_image_batches(todo, batch_size):
        scores = reward(images, [r.prompt for r in chunk], [dict(r.metadata) for r in chunk])
        scores = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(chunk) or not np.isfinite(scores).all():
            raise ValueError(f"metric {metric}: reward returned {scores.shape[0]} scores (finite: {bool(np.isfinite(scores).all())}) for {len(chunk)} images")
        for r, s in zip(chunk, scores):
            new.append({
                "prompt_id": r.prompt_id, "seed": r.seed, "prompt": r.prompt,
                "image_path": r.image_path, "metric": metric, "score": float(s),
                "tag": r.tag, "image_stamp": stamps[r.key],
            })
        pending += len(chunk)
        if bar is not None:
            bar.update(len(chunk))
        if pending >= flush_every:
            _write_parquet(frame(), out)
            pending = 0
    if bar is not None:
        bar.close()
    if new or changed or not out.exists():
        _write_parquet(frame(), out)
    df = frame()
    return df[df["metric"] == metric].reset_index(drop=True)


# -- summaries ----------------------------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling the values (images) with replacement."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_ci: no values")
    if x.size == 1 or n_boot <= 0:
        return float(x.mean()), float(x.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // x.size)  # bounded memory for 10⁴-image test sets
    for s in range(0, n_boot, step):
        b = min(step, n_boot - s)
        means[s : s + b] = x[rng.integers(0, x.size, size=(b, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarize_scores(
    df: pd.DataFrame, metric: str | None = None, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
    """Mean over all images, population std, n and a bootstrap CI (raw units), plus the display units.

    `df` is a score frame (columns metric, score); `metric` None works when it holds one metric.
    """
    metrics = sorted({canonical_metric(m) for m in df["metric"]}) if "metric" in df.columns else []
    if metric is None:
        if len(metrics) != 1:
            raise ValueError(f"summarize_scores: the frame holds metrics {metrics}; pass metric=")
        metric = metrics[0]
    metric = canonical_metric(metric)
    sel = df[[canonical_metric(m) == metric for m in df["metric"]]] if "metric" in df.columns else df
    x = sel["score"].to_numpy(dtype=np.float64)
    if x.size == 0:
        raise ValueError(f"summarize_scores: no scores for metric {metric!r} (have {metrics})")
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed, level=level)
    out = {
        "metric": metric, "n": int(x.size), "mean": float(x.mean()), "std": float(x.std(ddof=0)),
        "ci_low": lo, "ci_high": hi, "level": level, "n_boot": n_boot, "bootstrap_seed": seed,
        "display_scale": display_scale(metric),
    }
    out["display"] = {k: to_display(out[k], metric) for k in ("mean", "std", "ci_low", "ci_high")}
    return out


# -- GenEval ------------------------------------------------------------------------------------

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_TAG_LABELS = {
    "single_object": "Single object", "two_object": "Two objects", "counting": "Counting",
    "colors": "Colors", "position": "Position", "color_attr": "Color attribution",
}


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, (float, np.floating)) and value in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"{where}: `correct` must be a boolean (or 0/1), got {value!r}")


def geneval_summary(df: pd.DataFrame) -> dict:
    """GenEval's scores from a per-image table with columns `tag` and `correct`.

    Per-tag accuracy = mean of `correct` over that tag's images; `overall` is GenEval's overall
    score, the **mean of the per-tag accuracies** over the tags present (all six in a full run),
    not the image-level mean (reported separately as `image_accuracy`).
    """
    for col in ("tag", "correct"):
        if col not in df.columns:
            raise ValueError(f"geneval_summary: the table needs columns tag and correct, has {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("geneval_summary: empty table")
    correct = np.asarray([_as_bool(v, f"geneval row {i}") for i, v in enumerate(df["correct"])], dtype=bool)
    tags = df["tag"].astype(str).to_numpy()
    order = [t for t in GENEVAL_TAGS if t in set(tags)] + sorted(set(tags) - set(GENEVAL_TAGS))
    per_tag = {}
    for t in order:
        m = tags == t
        per_tag[t] = {"accuracy": float(correct[m].mean()), "n": int(m.sum()), "correct": int(correct[m].sum())}
    ci = geneval_bootstrap(pd.DataFrame({"tag": tags, "correct": correct}))
    return {
        "tags": per_tag,
        "overall": float(np.mean([v["accuracy"] for v in per_tag.values()])),
        "ci95": {k: list(v) for k, v in ci.items()},  # stratified bootstrap: each tag, and the overall
        "image_accuracy": float(correct.mean()),
        "n": int(correct.size),
        "missing_tags": [t for t in GENEVAL_TAGS if t not in per_tag],
    }


def geneval_bootstrap(df: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of each tag's accuracy and of the overall score (the mean of the
    tag accuracies), resampling images within each tag (a tag keeps its image count, as GenEval's
    prompt mix is fixed): {tag: (lo, hi), ..., "overall": (lo, hi)}."""
    correct = np.asarray([_as_bool(v, f"geneval row {i}") for i, v in enumerate(df["correct"])], dtype=np.float64)
    tags = df["tag"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    alpha = (1.0 - level) / 2
    per_tag = {}
    for t in [t for t in GENEVAL_TAGS if t in set(tags)] + sorted(set(tags) - set(GENEVAL_TAGS)):
        x = correct[tags == t]
        per_tag[t] = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    out = {t: tuple(float(q) for q in np.quantile(v, [alpha, 1 - alpha])) for t, v in per_tag.items()}
    overall = np.mean(np.stack(list(per_tag.values())), axis=0)
    out["overall"] = tuple(float(q) for q in np.quantile(overall, [alpha, 1 - alpha]))
    return out


def read_geneval_results(path: str | os.PathLike) -> pd.DataFrame:
    """GenEval's official evaluator output (results JSONL: one row per image with `tag`, `correct`)."""
    from drpo.io import read_jsonl

    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    for i, r in enumerate(rows, 1):
        if "tag" not in r and isinstance(r.get("metadata"), (dict, str)):
            meta = r["metadata"] if isinstance(r["metadata"], dict) else json.loads(r["metadata"])
            r["tag"] = meta.get("tag")
        if r.get("tag") is None or "correct" not in r:
            raise ValueError(f"{path}:{i}: a GenEval result row needs `tag` and `correct`")
    return pd.DataFrame(rows)


def correctness_from_scores(df: pd.DataFrame) -> pd.DataFrame:
    """A score frame of a binary GenEval-style reward (1 correct, 0 wrong) as (tag, correct) rows."""
    if "tag" not in df.columns or df["tag"].isna().any():
        raise ValueError("correctness_from_scores: every score row needs a GenEval `tag` (from the manifest's metadata)")
    return pd.DataFrame({"tag": df["tag"].astype(str), "correct": is_correct(df["score"].to_numpy())})


# -- summaries and score plans (`drpo score`) -------------------------------------------------------


def manifest_provenance(manifest: str) -> dict:
    """What a summary was computed from: the manifest's path and sha256, and the sampler settings beside it."""
    from drpo.io import sha256_file

    path = Path(manifest)
    out = {"manifest": str(path.resolve()), "manifest_sha256": sha256_file(path)}
    stamp = path.parent / "sampler.json"
    if stamp.exists():
        out["sampler"] = json.loads(stamp.read_text())
    return out


def reward_summary(manifest: str, reward, spec: dict, out: str | Path, metric: str, *, batch_size: int = 32,
                   bootstrap: int = 1000, seed: int = 0, progress: bool = True) -> ScoreSummary:
    """Score a manifest with a reward (per-image scores in `out`, resumable) and summarise it."""
    out = Path(out)
    df = score_manifest(manifest, reward, out, batch_size, metric=metric, progress=progress)
    summary = {"kind": "reward", "reward": spec, "scores": str(out.resolve()), **manifest_provenance(manifest),
               **summarize_scores(df, n_boot=bootstrap, seed=seed)}
    if df["tag"].notna().all() and set(df["score"].unique()) <= {0.0, 1.0}:
        summary["geneval"] = geneval_summary(correctness_from_scores(df))
    return ScoreSummary.from_json(summary)


def comparison_summary(kind: str, manifest: str, reference: str, extractor, *, batch_size: int = 32, cache: bool = True) -> ScoreSummary:
    """FID (`kind` fid) or the paired feature distance (`distance`) of a manifest against a reference's."""
    if kind == "fid":
        from drpo.eval.fid import fid_between

        value = fid_between(manifest, reference, extractor, batch_size=batch_size, cache=cache)
        return ScoreSummary.from_json({"kind": "fid", "metric": "fid", "fid": value, "mean": value, "extractor": extractor.name,
                                       "reference": manifest_provenance(reference), **manifest_provenance(manifest)})
    from drpo.eval.fid import paired_distance

    d = paired_distance(manifest, reference, extractor, batch_size=batch_size, cache=cache)
    return ScoreSummary.from_json({"kind": "distance", "metric": "distance", "mean": d["l2"], **d, "extractor": extractor.name,
                                   "reference": manifest_provenance(reference), **manifest_provenance(manifest)})


def run_plan(path: str, *, device: str = "cpu", batch_size: int = 32, bootstrap: int = 1000, seed: int = 0,
             progress: bool = True, cache: bool = True, echo: Callable[[str], None] | None = None) -> list[str]:
    """Every task of a score plan (`drpo.workflow.score_plan`): each metric on each test set and each
    reference comparison of one model; each reward (by metric) and extractor is built once. Returns the
    summaries written; `echo` gets one line per summary (`drpo score --plan` prints them)."""
    from drpo.rewards import build_reward

    try:
        plan = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--plan {path}: no such file (the workflow writes <results>/scores/_plans/<model>.json)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--plan {path}: not JSON ({err})") from None
    rewards: dict[str, object] = {}
    extractors: dict[str, object] = {}
    written = []
    try:
        for task in plan["tasks"]:
            if "comparison" in task:
                from drpo.eval.fid import build_extractor

                key = json.dumps([task["extractor"], task["extractor_options"]], sort_keys=True)
                if key not in extractors:
                    extractors[key] = build_extractor(task["extractor"], device=device, **task["extractor_options"])
                summary = comparison_summary(task["comparison"], task["manifest"], task["reference"], extractors[key],
                                             batch_size=batch_size, cache=cache)
            else:
                if task["metric"] not in rewards:
                    rewards[task["metric"]] = build_reward(task["reward"], device=device)
                summary = reward_summary(task["manifest"], rewards[task["metric"]], task["reward"], task["scores"],
                                         task["metric"], batch_size=batch_size, bootstrap=bootstrap, seed=seed,
                                         progress=progress)
            written.append(str(write_score_summary(task["summary"], summary)))
            if echo is not None:
                echo(f"{task['test_set']}: {task['metric']} = {summary.mean:.4g}  ({task['summary']})")
    finally:
        for reward in rewards.values():  # worker rewards hold a process
            close = getattr(reward, "close", None)
            if close is not None:
                close()
    return written
