"""`drpo collect --spec S --out results.csv`: the workflow's score and judge summaries gathered into
one tidy results file (drpo.eval.collect), and every model's held-out numbers logged to MLflow."""

from __future__ import annotations

import argparse
import logging
import os

from drpo.contracts import write_results
from drpo.eval.collect import collect, read_spec

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="JSON file: results dir, models, test sets, metrics, tables, judge "
                                                      "summaries (the workflow writes <results>/collect_spec.json)")
    parser.add_argument("--out", required=True, help="results CSV to write")
    parser.add_argument("--mlflow-uri", default=os.environ.get("DRPO_MLFLOW_URI") or None,
                        help="also log every model's held-out numbers on its MLflow run (default: $DRPO_MLFLOW_URI, "
                             "which the workflow sets; none: skip)")
    parser.add_argument("--experiment", default=os.environ.get("DRPO_MLFLOW_EXPERIMENT", "drpo"),
                        help="MLflow experiment (default: $DRPO_MLFLOW_EXPERIMENT, else drpo)")


def main(args: argparse.Namespace) -> int:
    spec = read_spec(args.spec)
    rows = collect(spec)
    if not rows:
        raise ValueError("collect: no score or judge summaries found for the configured tables")
    write_results(args.out, rows)
    log.info("wrote %d results rows to %s", len(rows), args.out)
    if args.mlflow_uri:
        from drpo.eval.study_log import log_study

        try:
            placed = log_study(spec, args.mlflow_uri, args.experiment, os.environ.get("DRPO_MLFLOW_PARENT_RUN_ID") or None, args.out)
            log.info("logged the held-out numbers of %d models to MLflow (%s, experiment %s)", len(placed), args.mlflow_uri, args.experiment)
        except Exception as err:  # noqa: BLE001 - MLflow being down must not lose the results file
            log.warning("MLflow at %s: %s: %s; results.csv is written", args.mlflow_uri, type(err).__name__, err)
    return 0
