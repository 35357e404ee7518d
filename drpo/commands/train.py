"""`drpo train --config run.yaml`: one entry point for DrPO, its offline variant and the baselines.

Multi-process: `accelerate launch --num_processes N -m drpo.cli train --config run.yaml`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from drpo.train.config import METHODS

log = logging.getLogger(__name__)


def parse_overrides(items: list[str]) -> dict:
    """["drpo.candidates=16", "method=dpo"] → nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set drpo.candidates=16")
        key, value = item.split("=", 1)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def config_keys_help() -> str:
    """Every TrainConfig key with its default (the epilog of `drpo train --help`)."""
    from drpo.config import flatten, to_dict
    from drpo.train.config import TrainConfig

    lines = ["config keys (YAML, or --set KEY.PATH=VALUE) and their defaults (the paper's SD-Turbo recipe):"]
    lines += [f"  {k} = {v}" for k, v in flatten(to_dict(TrainConfig())).items()]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = config_keys_help()
    parser.add_argument("--config", required=True, help="training YAML: the keys below; the workflow writes one per run to <results>/runs/<run>/train.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value, e.g. --set steps=10 --set drpo.candidates=16")
    parser.add_argument("--method", choices=METHODS, help="shortcut for --set method=...")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue from the latest checkpoint in output_dir (or the given checkpoint folder)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def main(args: argparse.Namespace) -> int:
    from drpo.train.config import load_train_config
    from drpo.train.trainer import Trainer

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.overrides)
    if args.method:
        overrides["method"] = args.method
    cfg = load_train_config(args.config, overrides)
    from drpo.tracking import training_tracker

    # models and checkpoint first: a missing model or a bad checkpoint leaves no MLflow store or run behind
    trainer = Trainer(cfg, resume=args.resume or False, progress=not args.no_progress)
    tracker = training_tracker(cfg)  # with tracking off, a local metrics.jsonl only
    trainer.tracker = tracker
    status = "FAILED"  # what MLflow shows unless the run gets to its end
    try:
        final = trainer.train()
        if trainer.accelerator.is_main_process and tracker.enabled:
            name = f"{cfg.tracking.experiment}-{cfg.tracking.run_name or Path(cfg.output_dir).name}"
            tracker.log_lora_model(final, cfg.model.path, registered_name=name, resolution=trainer.gen.resolution)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracker is not None:
            tracker.close(status)
    if trainer.accelerator.is_main_process:
        log.info("wrote %s", final)
    return 0
