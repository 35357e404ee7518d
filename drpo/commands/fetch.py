"""`drpo fetch --config FILE [--dry-run]`: the plan of every model, weight file, dataset and scorer
environment a config needs (drpo.fetch), then the download of what is missing."""

from __future__ import annotations

import argparse
import json
import logging

# first, before anything imports drpo.hub: drpo.fetch reads the user's HF_HUB_OFFLINE on import
from drpo.fetch import PICKAPIC_REPO, build_plan, fetch_missing, format_missing, format_plan, offline_requested

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "List every model, weight file, dataset and scorer environment a workflow config needs, with its\n"
        "approximate size, whether it is already here (a local path or the Hugging Face cache) and where it\n"
        "goes; then download the missing ones (Hugging Face repos: only the files the loaders read; single\n"
        "files: resumable, sha256-checked where a hash is published). Conda environments, the GenEval checkout\n"
        "and prompt files are listed with the command that makes them; drpo does not create them."
    )
    parser.epilog = (
        "exit status: 0 everything is present (or --dry-run printed the plan); 1 something is still missing\n"
        "(offline, a failed download, or an item to make by hand): every one is named with how to get it;\n"
        "2 a bad config.\n\n"
        "offline: with HF_HUB_OFFLINE=1 (set before drpo starts) or --offline nothing is downloaded; a host\n"
        "that does not answer within the timeout counts as offline for its items.\n\n"
        "examples:\n"
        "  drpo fetch --config config/paper/sd-turbo.yaml --dry-run\n"
        "  drpo fetch --config config/paper/sdxl-turbo.yaml\n"
        "  drpo fetch --config config/paper/sd-turbo.yaml --models-dir models   # folders instead of the HF cache"
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="workflow config (YAML), e.g. config/paper/sd-turbo.yaml (required)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (item, kind, source, size, present/missing, destination) and exit 0; no network (default: off)")
    parser.add_argument("--models-dir", default=None, metavar="DIR",
                        help="download Hugging Face repos as plain folders DIR/<name> (then point the config at them) and look "
                             "for them there too (default: none: the Hugging Face cache, $HF_HUB_CACHE, so the config's ids "
                             "resolve as they are)")
    parser.add_argument("--offline", action="store_true",
                        help="never touch the network: report what is missing and exit 1 (default: off; on when HF_HUB_OFFLINE=1)")
    parser.add_argument("--pickapic-repo", default=PICKAPIC_REPO, metavar="REPO",
                        help=f"Hugging Face dataset repo the Pick-a-Pic v2 parquet files come from, e.g. a mirror (default: {PICKAPIC_REPO})")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds to wait to connect and for each read before a download fails (default: 30)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of text (default: off)")


def main(args: argparse.Namespace) -> int:
    from drpo.workflow import load_config

    config = load_config(args.config)
    items = build_plan(config, models_dir=args.models_dir, pickapic_repo=args.pickapic_repo, config_path=args.config)
    if args.json:
        print(json.dumps([i.to_json() for i in items], indent=2))
    else:
        print(format_plan(items))
    if args.dry_run or all(i.present for i in items):
        return 0
    reason = offline_requested(args.offline)
    if reason is None:
        fetch_missing(items, models_dir=args.models_dir, timeout=args.timeout)
        reason = "after downloading what could be"
    else:
        reason = f"offline: {reason}; nothing was downloaded"
    if all(i.present for i in items):
        log.info("fetch: everything is present")
        return 0
    log.error("%s", format_missing(items, reason))
    return 1
