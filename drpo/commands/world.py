"""`drpo world`: the shapes world's tools: prompts, pictures, its base model, reward model and pairs.

    drpo world prompts --n 200 --seed 0 --out prompts.jsonl          # GenEval-format rows, may repeat
    drpo world prompts --split test --n-train 400 --n-test 120 --seed 0 --out test.jsonl
    drpo world prompts --split both --n-train 400 --n-test 120 --out world.jsonl   # world_{train,test}.jsonl
    drpo world prompts --split val --n-train 400 --n-test 120 --n-val 100 --out val.jsonl   # give --n-val to every split
    drpo world render --prompts test.jsonl --out grid.png
    drpo world train-base --prompts world_train.jsonl --out results/world/base     # ~8 min on 2 cores
    drpo world train-reward --prompts world_train.jsonl --out results/world/reward_model
    drpo world train-base --shipped ...     # copy the shipped model if it has this recipe, else train
    drpo world ship --config config/config.yaml           # rebuild drpo/world/shipped (make world-models)
    drpo world ship --config config/config.yaml --check   # a rebuild gives the shipped bytes?
    drpo world pairs --prompts world_train.jsonl --out results/world/pairs/pairs.jsonl
    drpo world diagnose --config results/runs/drpo-s42/train.yaml --prompts results/prompts/world_train.jsonl
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from drpo.io import read_jsonl, write_jsonl

log = logging.getLogger(__name__)


def _tags(value: str | None) -> list[str] | None:
    return [t.strip() for t in value.split(",") if t.strip()] if value else None


def _summary(rows: list[dict]) -> str:
    counts = Counter(r["tag"] for r in rows)
    return ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))


def _add_prompts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="JSONL file to write (with --split both: its stem gets _train/_test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, help="number of rows drawn independently (GenEval's generator; may repeat)")
    p.add_argument("--split", choices=["train", "val", "test", "both"],
                   help="write disjoint unique sets instead: one of them, or both train and test")
    p.add_argument("--n-train", type=int, help="with --split: training prompts")
    p.add_argument("--n-test", type=int, help="with --split: test prompts")
    p.add_argument("--n-val", type=int, default=0, help="with --split: validation prompts (drawn after test, before train: every split depends on it)")
    p.add_argument("--tags", help="comma-separated subset of tags (default: all six)")
    p.add_argument("--max-test-fraction", type=float, default=0.5,
                   help="with --split: at most this fraction of each tag's distinct prompts go to the test set")


def _run_prompts(args: argparse.Namespace) -> int:
    from drpo.world.grammar import generate_prompts, split_prompts

    out = Path(args.out)
    if args.split is None:
        if args.n is None:
            raise ValueError("drpo world prompts: give --n N (or --split with --n-train/--n-test)")
        rows = generate_prompts(args.n, args.seed, tags=_tags(args.tags))
        write_jsonl(out, rows)
        log.info("wrote %d prompts (%s) to %s", len(rows), _summary(rows), out)
        return 0
    if args.n_train is None or args.n_test is None:
        raise ValueError("drpo world prompts --split: give both --n-train and --n-test (the split depends on both)")
    splits = split_prompts(args.n_train, args.n_test, args.seed, tags=_tags(args.tags),
                           max_test_fraction=args.max_test_fraction, n_val=args.n_val)
    if args.split == "val" and not args.n_val:
        raise ValueError("drpo world prompts --split val: give --n-val N (world.val_prompts in a config)")
    if args.split == "both":
        targets = {"train": out.with_name(f"{out.stem}_train{out.suffix}"), "test": out.with_name(f"{out.stem}_test{out.suffix}")}
    else:
        targets = {args.split: out}
    for name, path in targets.items():
        rows = getattr(splits, name)
        write_jsonl(path, rows)
        log.info("wrote %d %s prompts (%s) to %s", len(rows), name, _summary(rows), path)
    return 0


def _add_render(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", required=True, help="JSONL prompt file from `drpo world prompts`")
    p.add_argument("--out", required=True, help="PNG grid to write")
    p.add_argument("--n", type=int, default=16, help="first N rows (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--ncols", type=int, default=None)


def _run_render(args: argparse.Namespace) -> int:
    from drpo.world.pictures import render_grid

    path = Path(args.prompts)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist (write one with `drpo world prompts`)")
    rows = read_jsonl(path)[: args.n]
    if not rows:
        raise ValueError(f"prompt file {path} holds no rows")
    out = render_grid(rows, args.seed, args.out, size=args.size, ncols=args.ncols)
    log.info("wrote %d rendered prompts to %s", len(rows), out)
    return 0


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _add_train_base(p: argparse.ArgumentParser) -> None:
    from drpo.world.base import BaseRecipe

    d = BaseRecipe()
    p.add_argument("--prompts", required=True, help="training prompts (JSONL from `drpo world prompts`)")
    p.add_argument("--out", required=True, help="pipeline folder to write (a standard diffusers folder)")
    p.add_argument("--resolution", type=int, default=d.resolution)
    p.add_argument("--vae-steps", type=int, default=d.vae_steps, help="VAE reconstruction steps")
    p.add_argument("--regression-steps", type=int, default=d.regression_steps,
                   help="UNet + text encoder steps on noise-coupled renders")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    _add_shipped(p)


def _add_shipped(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shipped", action="store_true",
                   help="copy the model shipped in drpo/world/shipped when it was built from this very recipe "
                        "(settings, thread count, prompt bytes); train it otherwise")


def _run_train_base(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import torch

    from drpo.world import shipped
    from drpo.world.base import BaseRecipe, train_base

    _threads(args)
    recipe = BaseRecipe(resolution=args.resolution, vae_steps=args.vae_steps, regression_steps=args.regression_steps,
                        seed=args.seed)
    if args.shipped and shipped.install("base", shipped.recipe_of("base", args.prompts, torch.get_num_threads(), **asdict(recipe)),
                                        args.out):
        return 0
    out = train_base(args.prompts, args.out, recipe)
    log.info("wrote %s (samples: %s)", out, out / "samples.png")
    return 0


def _add_train_reward(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", required=True, help="training prompts (JSONL from `drpo world prompts`)")
    p.add_argument("--out", required=True, help="folder for the CLIP model + processor (the world's PickScore)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    _add_shipped(p)


def _run_train_reward(args: argparse.Namespace) -> int:
    import torch

    from drpo.world import shipped
    from drpo.world.reward_model import train_reward_model

    _threads(args)
    recipe = shipped.recipe_of("reward_model", args.prompts, torch.get_num_threads(), steps=args.steps, resolution=args.resolution,
                               seed=args.seed)
    if args.shipped and shipped.install("reward_model", recipe, args.out):
        return 0
    out = train_reward_model(args.prompts, args.out, steps=args.steps, resolution=args.resolution, seed=args.seed)
    log.info("wrote %s", out)
    return 0


def _add_pairs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", required=True, help="training prompts (JSONL from `drpo world prompts`)")
    p.add_argument("--out", required=True, help="pairs.jsonl to write (images go beside it)")
    p.add_argument("--n", type=int, default=200, help="number of pairs")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)


def _run_pairs(args: argparse.Namespace) -> int:
    from drpo.world.pairs import build_world_pairs

    out = build_world_pairs(args.prompts, args.out, n=args.n, resolution=args.resolution, seed=args.seed)
    log.info("wrote %s", out)
    return 0


def _add_ship(p: argparse.ArgumentParser) -> None:
    from drpo.world.shipped import SHIPPED

    p.add_argument("--config", default="config/config.yaml", help="workflow config whose world: block is built")
    p.add_argument("--out", default=str(SHIPPED), help="folder of the shipped models and their manifest.json")
    p.add_argument("--check", action="store_true",
                   help="rebuild into a temporary folder and compare every file's sha256 with --out's (exit 1 if any differs)")
    p.add_argument("--work", default=None, help="folder for the build's prompts, models and logs (default: a temporary one)")


def _run_ship(args: argparse.Namespace) -> int:
    import tempfile

    from drpo.world.ship import build

    with tempfile.TemporaryDirectory(prefix="drpo-ship-") as tmp:
        work = Path(args.work or tmp)
        if not args.check:
            build(args.config, work, args.out)
            log.info("wrote %s (manifest.json: each model's recipe and every file's sha256)", args.out)
            return 0
        from drpo.world.shipped import compare

        build(args.config, work, work / "shipped")
        diff = compare(args.out, work / "shipped")
        for line in diff:  # the check's answer, on stdout
            print(f"differs: {line}")
        print(f"{'the rebuild differs from' if diff else 'the rebuild is byte-identical to'} {args.out}")
        return 1 if diff else 0


def _add_diagnose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a run's train config (results/runs/<run>/train.yaml): model, reward, features, K")
    p.add_argument("--prompts", required=True, help="prompt rows (JSONL) to draw candidates for")
    p.add_argument("--by", choices=["tag", "number"], default="tag", help="group prompts by tag, or counting prompts by their number")
    p.add_argument("--per-group", type=int, default=24, help="at most this many prompts per group (at least 1)")
    p.add_argument("--lora", help="a LoRA folder to load first (a checkpoint or final/); default: the base model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a train config value, as `drpo train --set` does: another feature space, e.g. "
                        "--set 'features.options.keys=[image_embeds]'")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the candidates' noise (one stream in group order: a prompt's candidates also depend on --by and --per-group)")
    p.add_argument("--json", help="also write the rows as JSON here")


def _run_diagnose(args: argparse.Namespace) -> int:
    from drpo.commands.train import parse_overrides
    from drpo.io import write_json
    from drpo.world.diagnose import format_rows, ranking_signal

    rows = ranking_signal(args.config, args.prompts, by=args.by, per_group=args.per_group, seed=args.seed, lora=args.lora,
                          overrides=parse_overrides(args.overrides))
    print(format_rows(rows))
    if args.json:
        write_json(args.json, rows)
    return 0


# subcommand -> (add_arguments, run, help)
SUBCOMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "prompts": (_add_prompts, _run_prompts, "GenEval-format prompts from the world's grammar (or a disjoint train/test split)"),
    "render": (_add_render, _run_render, "render prompt rows into a captioned grid PNG"),
    "train-base": (_add_train_base, _run_train_base, "pre-train the world's base one-step generator (VAE, then UNet by regression on noise-coupled renders)"),
    "train-reward": (_add_train_reward, _run_train_reward, "train the world's PickScore: a tiny CLIP on rendered pairs"),
    "pairs": (_add_pairs, _run_pairs, "preference pairs (rendered correct vs. incorrect) for the offline variant"),
    "diagnose": (_add_diagnose, _run_diagnose, "per tag: does the training reward rank a run's candidates, and does its feature space set correct ones apart"),
    "ship": (_add_ship, _run_ship, "build the shipped base and reward model (drpo/world/shipped) from a config's world: block"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="world_command", metavar="SUBCOMMAND", required=True)
    for name, (add, _, help_text) in SUBCOMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))


def main(args: argparse.Namespace) -> int:
    return SUBCOMMANDS[args.world_command][1](args)
