"""`drpo tables`: the paper's tables and figures from a results file (see drpo.eval.tables).

    drpo tables --results results.csv --spec results/collect_spec.json --out results/tables/ \\
        [--curves DrPO=runs/drpo/metrics.jsonl ...]
    drpo tables --results mine.csv --paper --out tables/ [--judge dpo:pickapic_v2=judge/dpo_pap/summary.json ...]

Which builder draws a table, and which of the paper's tables it is compared with, come from
`--spec` (a file with `tables: {name: {builder, paper}}`: the workflow's collect spec, or a config)
or, with `--paper`, from the results' table names being the paper's own (sd_turbo_main, ...,
qwen3vl_preference). Any other table is drawn by the generic builder, without paper values.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", help="tidy results CSV/parquet: table, method, test_set, metric, value[, ci_low, ci_high, source, judged]")
    parser.add_argument("--out", required=False, help="output folder (tables as CSV/MD/TeX + sources, PNG figures, index.md)")
    parser.add_argument("--spec", help="JSON/YAML file whose `tables:` names each table's builder and paper table "
                                       "(the workflow's collect_spec.json, or a config); every table in it is written")
    parser.add_argument("--paper", action="store_true",
                        help="the results' tables named like the paper's (sd_turbo_main, ..., qwen3vl_preference) are those "
                             "tables, drawn beside the paper's numbers")
    parser.add_argument("--judge", nargs="*", default=[], metavar="OPPONENT:TEST_SET=SUMMARY",
                        help="judge summaries written by `drpo judge --summary` (DrPO = the left method) added to the preference "
                             "table (the one table of builder preference); OPPONENT:TEST_SET= may be left out when the file names them")
    parser.add_argument("--curves", nargs="*", default=[], metavar="LABEL=METRICS", help="training curves: run label = metrics.jsonl/csv")
    parser.add_argument("--curve-metric", default="pickscore", help="metric of the curves (sets the display scale)")
    parser.add_argument("--curve-key", help="column of the metrics file to plot (default: first of eval/<metric>, eval/reward, reward/mean)")
    parser.add_argument("--curves-paper", action="store_true",
                        help="draw the paper's approximate SD-Turbo PickScore curves (§6.8) beside runs labelled like a paper method")
    parser.add_argument("--all", action="store_true", help="also write --paper tables with no results of ours (paper numbers only)")


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.rpartition("=")
        if not value:
            raise ValueError(f"{flag} {item!r}: expected NAME=PATH")
        out.append((key if sep else "", value))
    return out


def read_table_specs(path: str | Path) -> dict[str, dict]:
    """`tables:` of a JSON or YAML file: table name -> {builder, paper, ...}; each must name its builder."""
    import yaml

    from drpo.eval.tables import BUILDERS
    from drpo.io import read_text

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--spec {path}: no such file")
    data = yaml.safe_load(read_text(path))  # JSON is YAML
    tables = data.get("tables") if isinstance(data, dict) else None
    if not isinstance(tables, dict):
        raise ValueError(f"--spec {path}: no `tables:` mapping (table name -> {{builder, paper}})")
    for name, spec in tables.items():
        if not isinstance(spec, dict) or spec.get("builder") not in BUILDERS:
            got = spec.get("builder") if isinstance(spec, dict) else spec
            raise ValueError(f"--spec {path}: tables.{name}.builder: {got!r} is not one of {', '.join(BUILDERS)}")
    return tables


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from drpo.contracts import RESULT_COLUMNS
    from drpo.eval.tables import build_all, load_results, paper_tables, result_from_judge_summary

    if not args.out:
        raise ValueError("--out is required")
    if args.spec and args.paper:
        raise ValueError("give --spec or --paper, not both")
    tables = read_table_specs(args.spec) if args.spec else paper_tables() if args.paper else {}
    frames = []
    if args.results:
        frames.append(load_results(args.results))
    rows = []
    if args.judge:
        preference = [name for name, spec in tables.items() if spec["builder"] == "preference"]
        if len(preference) != 1:
            raise ValueError(f"--judge: the summaries go to the preference table, and there are {len(preference)} "
                             f"({', '.join(preference) or 'none: give --spec with one table of builder preference, or --paper'})")
        for key, path in _pairs(args.judge, "--judge"):
            opponent, _, test_set = key.partition(":")
            rows.append(result_from_judge_summary(path, table=preference[0], opponent=opponent or None, test_set=test_set or None))
    if rows:
        frames.append(pd.DataFrame([r.to_json() for r in rows]))
    if not frames and not args.curves:
        raise ValueError("nothing to tabulate: give --results, --judge or --curves")
    results = pd.concat([f[[c for c in f.columns if not c.startswith("_")]] for f in frames], ignore_index=True) if frames \
        else pd.DataFrame(columns=RESULT_COLUMNS)
    curves = {label or Path(p).parent.name: p for label, p in _pairs(args.curves, "--curves")}
    # a spec names what to write: each of its tables, with results or not; --paper only those with results
    written = build_all(results, args.out, tables=tables, curves=curves or None, curve_metric=args.curve_metric,
                        curve_key=args.curve_key, curves_paper=args.curves_paper, include_empty=bool(args.spec) or args.all)
    for name, paths in written.items():
        print(f"{name}: " + ", ".join(str(p) for p in paths.values()))
    log.info("wrote %s", Path(args.out) / "index.md")
    return 0
