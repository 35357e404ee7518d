"""`drpo collect`: the workflow's score and judge summaries → one tidy results file for `drpo tables`.

For every table of the config (`tables:` in config.yaml) and every row it names, each metric on
each test set becomes one results row (`table, method, test_set, metric, value, ci_low, ci_high,
source`), `source` being the summary file behind the number. A run trained with several seeds
gives the mean over seeds (CI: the seeds' min and max). Metrics scored by a GenEval-style checker
also give per-tag rows (`geneval:<tag>`, `geneval:overall`) for the GenEval table, and the judge
summaries a `preference` row per pair (DrPO's share against each opponent, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from drpo.io import atomic_path

CHECKER_REWARDS = {"world_checker", "geneval"}


def _rows_for(name: str, models: dict) -> list[str]:
    """Model ids behind a table row: a base model itself, or a run's ids (one per seed)."""
    if name in models:
        return [name]
    return [m for m, info in models.items() if info.get("run") == name]


def _over_seeds(per_seed: list[tuple[float | None, tuple | list | None]]) -> tuple[float | None, float | None, float | None]:
    """(mean, ci_low, ci_high) over a run's (value, ci) per seed: one seed keeps its own CI, several
    span their min to max. Seeds without a value (a judge with no valid verdicts) are left out."""
    per_seed = [(v, ci) for v, ci in per_seed if v is not None]
    if len(per_seed) == 1:
        value, ci = per_seed[0]
        return value, *(ci or (None, None))
    values = [v for v, _ in per_seed]
    return (sum(values) / len(values), min(values), max(values)) if values else (None, None, None)


def _summary(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _geneval_rows(scores: Path) -> dict[str, float]:
    from drpo.eval.metrics import geneval_summary

    df = pd.read_parquet(scores)
    if "tag" not in df.columns:
        return {}
    summary = geneval_summary(pd.DataFrame({"tag": df["tag"], "correct": df["score"] > 0.5}))
    out = {f"geneval:{t}": v["accuracy"] for t, v in summary["tags"].items()}
    if summary.get("overall") is not None:
        out["geneval:overall"] = summary["overall"]
    return out


def collect(spec: dict) -> pd.DataFrame:
    results, models = spec["results"], spec["models"]
    metric_specs = spec.get("metric_specs", {})
    rows = []
    for table, tspec in spec.get("tables", {}).items():
        for name in tspec["rows"]:
            ids = _rows_for(name, models)
            if not ids:
                continue
            label = models[ids[0]].get("label", name)
            for ts in tspec.get("test_sets") or spec["test_sets"]:
                for metric in tspec.get("metrics") or spec["metrics"]:
                    per_seed = []
                    for mid in ids:
                        path = Path(results) / "scores" / ts / mid / f"{metric}.json"
                        s = _summary(path)
                        if s is None:
                            continue
                        per_seed.append((s, path))
                    if not per_seed:
                        continue
                    value, lo, hi = _over_seeds([(s["mean"], (s.get("ci_low"), s.get("ci_high"))) for s, _ in per_seed])
                    rows.append({"table": table, "method": label, "test_set": ts, "metric": metric,
                                 "value": value, "ci_low": lo, "ci_high": hi,
                                 "source": ";".join(str(p) for _, p in per_seed)})
                    if metric_specs.get(metric, {}).get("name") in CHECKER_REWARDS:
                        tags: dict[str, list[float]] = {}
                        for _, path in per_seed:
                            for k, v in _geneval_rows(path.with_suffix(".parquet")).items():
                                tags.setdefault(k, []).append(v)
                        for k, v in tags.items():
                            rows.append({"table": table, "method": label, "test_set": ts, "metric": k,
                                         "value": sum(v) / len(v), "ci_low": None, "ci_high": None,
                                         "source": ";".join(str(p.with_suffix(".parquet")) for _, p in per_seed)})
    judged: dict[tuple[str, str], list[tuple[dict, Path]]] = {}  # (test set, pair label) -> one per seed
    for path in map(Path, spec.get("judged", [])):
        s = _summary(path)
        if s is None:
            continue
        a, b = path.stem.split("__vs__")
        pair = f"{models.get(a, {}).get('label', a)} vs {models.get(b, {}).get('label', b)}"
        judged.setdefault((path.parent.name, pair), []).append((s, path))
    for (ts, pair), per_seed in judged.items():
        value, lo, hi = _over_seeds([(s.get("preference_share"), s.get("preference_share_ci95")) for s, _ in per_seed])
        rows.append({"table": "judge_preference", "method": pair, "test_set": ts, "metric": "preference",
                     "value": value, "ci_low": lo, "ci_high": hi, "source": ";".join(str(p) for _, p in per_seed)})
    return pd.DataFrame(rows, columns=["table", "method", "test_set", "metric", "value", "ci_low", "ci_high", "source"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="JSON: results dir, models, test sets, metrics, tables, judged summaries (the Snakefile writes it)")
    parser.add_argument("--out", required=True, help="results CSV to write")


def main(args: argparse.Namespace) -> int:
    spec = json.loads(Path(args.spec).read_text()) if Path(args.spec).exists() else json.loads(args.spec)
    df = collect(spec)
    if df.empty:
        raise ValueError("collect: no score or judge summaries found for the configured tables")
    with atomic_path(args.out) as tmp:
        df.to_csv(tmp, index=False)
    print(f"wrote {len(df)} results rows to {args.out}")
    return 0
