"""`drpo job --rule R [--wildcards W] [--gpus N] -- CMD ...`: run one workflow job as an MLflow child
run, on its own GPUs (drpo.job); the Snakefile prefixes each heavy rule's command with it."""

from __future__ import annotations

import argparse
import os
import sys

from drpo.job import parse_wildcards, run_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rule", required=True, help="the Snakemake rule this job belongs to")
    parser.add_argument("--wildcards", default="", help="the job's wildcards as 'KEY=VALUE KEY=VALUE'")
    parser.add_argument("--config-hash", default=os.environ.get("DRPO_CONFIG_HASH", ""),
                        help="hash of the workflow config (default: $DRPO_CONFIG_HASH, which the Snakefile sets)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs this job needs (workstations: each job gets its own)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command to run")


def main(args: argparse.Namespace) -> int:
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if command and command[0] == "drpo":
        command = [sys.executable, "-m", "drpo.cli", *command[1:]]  # the same environment as this wrapper
    return run_job(command, args.rule, parse_wildcards(args.wildcards), args.config_hash, args.gpus)
