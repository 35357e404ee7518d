"""`drpo report`: one self-contained HTML page of a study (drpo.eval.report), attached to the
workflow's MLflow run when there is one."""

from __future__ import annotations

import argparse
import logging
import os

from drpo.eval.report import build_report

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tables", required=True, help="folder written by `drpo tables`")
    parser.add_argument("--samples", default=None, help="samples folder (<test set>/<model>/manifest.jsonl)")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--n", type=int, default=8, help="images per sample grid")
    parser.add_argument("--title", default="drpo study")
    parser.add_argument("--spec", default=None, help="the collect spec (<results>/collect_spec.json): model labels, and "
                                                   "the checker metrics whose verdicts mark the sample grids")
    parser.add_argument("--grids", default=None, help="also write each sample grid to GRIDS/<test set>/<model>.png")
    parser.add_argument("--mlflow-run", default=os.environ.get("DRPO_MLFLOW_PARENT_RUN_ID") or None,
                        help="also attach the report and the tables to this MLflow run (default: the workflow's "
                             "parent run, $DRPO_MLFLOW_PARENT_RUN_ID)")
    parser.add_argument("--mlflow-uri", default=os.environ.get("DRPO_MLFLOW_URI") or None,
                        help="the MLflow store of --mlflow-run (default: $DRPO_MLFLOW_URI)")


def main(args: argparse.Namespace) -> int:
    spec = None
    if args.spec:
        from drpo.eval.collect import read_spec

        spec = read_spec(args.spec)
    path = build_report(args.tables, args.out, args.samples, args.n, args.title, spec, args.grids)
    log.info("wrote %s", path)
    if args.mlflow_run and args.mlflow_uri:
        from drpo.tracking import open_run

        tracker = open_run(args.mlflow_uri, "", existing_run_id=args.mlflow_run)  # warns and goes on if MLflow is down
        tracker.log_artifact(path)
        tracker.log_artifact(args.tables, "tables")
    return 0
