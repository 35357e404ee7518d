"""`drpo twins`: build the tiny random-weight twins of drpo.models.twins, by name or every twin a
config references (the test studies, config/test/*.yaml)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from drpo.models.twins import TWINS, build, check_built, config_twins, twins_dir

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"twins to build: {', '.join(TWINS)}")
    parser.add_argument("--config", help="a workflow config: build every twin it references under <results>/twins "
                                         "(into --out instead when given)")
    parser.add_argument("--out", help="the twins folder (default with --config: <results>/twins)")
    parser.add_argument("--seed", type=int, default=None, help="base seed of the random weights (default: the config's twins.seed, else 0)")
    parser.add_argument("--list", action="store_true", help="list the twins that can be built and what each stands for")


def main(args: argparse.Namespace) -> int:
    if args.list:
        for name, twin in TWINS.items():
            print(f"{name:12s} {twin.stands_for}  (marker: {twin.marker})")  # the listing asked for
        return 0
    names, seed, config = list(args.names), args.seed, None
    if args.config:
        config, named = config_twins(args.config)
        names += [n for n in named if n not in names]  # what the config names under <results>/twins
        if seed is None:
            seed = int((config.get("twins") or {}).get("seed", 0))
    if not args.out and not config:
        raise ValueError("drpo twins: give --out DIR with twin names, or --config FILE")
    if not names:
        raise ValueError("drpo twins: nothing to build (no names given and the config references no twin)")
    out = Path(args.out or twins_dir(config))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    path = build(names, out, seed=seed or 0, log=log.info)
    if config is not None and out == Path(twins_dir(config)):
        missing = check_built(config)
        if missing:
            raise FileNotFoundError(f"the config references twin paths the build did not write: {missing}")
    log.info("wrote %s", path)
    return 0
