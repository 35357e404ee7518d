"""`drpo tables`: the paper's tables and figures from a results file (see drpo.eval.tables).

    drpo tables --results results.csv --out results/tables/ \\
        [--judge dpo:pickapic_v2=judge/dpo_pap/summary.json ...] [--curves DrPO=runs/drpo/metrics.jsonl ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", help="tidy results CSV/parquet: table, method, test_set, metric, value[, ci_low, ci_high, source]")
    parser.add_argument("--out", required=False, help="output folder (tables as CSV/MD/TeX + sources, PNG figures, index.md)")
    parser.add_argument("--judge", nargs="*", default=[], metavar="OPPONENT:TEST_SET=SUMMARY",
                        help="Qwen3-VL judge summary JSONs (preference_share, ci) added to the qwen3vl_preference table; "
                             "OPPONENT:TEST_SET= may be left out when the file names them")
    parser.add_argument("--curves", nargs="*", default=[], metavar="LABEL=METRICS", help="training curves: run label = metrics.jsonl/csv")
    parser.add_argument("--curve-metric", default="pickscore", help="metric of the curves (sets the display scale)")
    parser.add_argument("--curve-key", help="column of the metrics file to plot (default: first of eval/<metric>, eval/reward, reward/mean)")
    parser.add_argument("--all", action="store_true", help="also write tables with no results of ours (paper numbers only)")


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.rpartition("=")
        if not value:
            raise ValueError(f"{flag} {item!r}: expected NAME=PATH")
        out.append((key if sep else "", value))
    return out


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from drpo.eval.tables import build_all, load_results, result_from_judge_summary

    if not args.out:
        raise ValueError("--out is required")
    frames = []
    if args.results:
        frames.append(load_results(args.results))
    rows = []
    for key, path in _pairs(args.judge, "--judge"):
        opponent, _, test_set = key.partition(":")
        rows.append(result_from_judge_summary(path, opponent=opponent or None, test_set=test_set or None))
    if rows:
        frames.append(pd.DataFrame(rows))
    if not frames and not args.curves:
        raise ValueError("nothing to tabulate: give --results, --judge or --curves")
    results = pd.concat([f[[c for c in f.columns if not c.startswith("_")]] for f in frames], ignore_index=True) if frames \
        else pd.DataFrame(columns=["table", "method", "test_set", "metric", "value"])
    curves = {label or Path(p).parent.name: p for label, p in _pairs(args.curves, "--curves")}
    written = build_all(results, args.out, curves=curves or None, curve_metric=args.curve_metric,
                        curve_key=args.curve_key, include_empty=args.all)
    for name, paths in written.items():
        print(f"{name}: " + ", ".join(str(p) for p in paths.values()))
    print(f"wrote {Path(args.out) / 'index.md'}")
    return 0
