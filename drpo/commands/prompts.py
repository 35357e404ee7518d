"""`drpo prompts ...`: prepare public prompt sets, build Pick-a-Pic pairs, check train/test disjointness.

    drpo prompts prepare partiprompts --out results/prompts/parti.jsonl      # the packaged copy (drpo/data/public/)
    drpo prompts prepare pickapic_train_25432 --out results/prompts/train.jsonl --exclude results/prompts/pickapic_test.jsonl
    drpo prompts prepare file --path data/train.txt --out results/prompts/train.jsonl --exclude results/prompts/test.jsonl
    drpo prompts pickapic-pairs --parquet train-0000.parquet --out results/datasets/pickapic --max-pairs 20000 \\
        --exclude-prompts results/prompts/pickapic_test.jsonl
    drpo prompts check-disjoint results/prompts/train.jsonl results/prompts/test.jsonl
    drpo prompts geneval-grammar --n 2000 --seed 1 --exclude results/prompts/geneval_test.jsonl --out train.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from drpo.data.prompts import PROMPT_SETS

    sub = parser.add_subparsers(dest="prompts_command", metavar="ACTION", required=True)
    p = sub.add_parser("prepare", help="verified, normalised JSONL of a public prompt set (or of a file)",
                       description="Write a prompt set as JSONL (prompt_id, prompt, metadata) plus <out>.sha256.json.")
    p.add_argument("name", choices=[*PROMPT_SETS, "file"], help="a public prompt set, or 'file' with --path")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--local-dir", help="read the verbatim copy from this folder instead of the packaged one "
                                       "(drpo/data/public/); sha256-checked either way")
    p.add_argument("--download", action="store_true",
                   help="fetch from the public source when neither --local-dir nor the package holds a copy")
    p.add_argument("--path", help="name 'file': the prompt file (txt one per line, jsonl, or tsv)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="FILE",
                   help="prompt files this set must not share a prompt with: a public set drops them (recorded "
                        "in the sidecar), a 'file' set is an error")

    p = sub.add_parser("pickapic-pairs", help="preference pairs (pairs.jsonl + images) from Pick-a-Pic v2 parquet files",
                       description="Build pairs.jsonl for the offline variant; ties are dropped by default.")
    p.add_argument("--parquet", nargs="+", required=True, metavar="FILE", help="parquet files with the v2 schema")
    p.add_argument("--out", required=True, help="output folder (pairs.jsonl, images/, pairs.meta.json)")
    p.add_argument("--max-pairs", type=int, default=None, help="stop after this many pairs")
    p.add_argument("--exclude-prompts", nargs="+", default=[], metavar="FILE",
                   help="prompt files (e.g. the test set) whose prompts are left out")
    p.add_argument("--ties", choices=("drop", "error"), default="drop", help="label 0.5/0.5 rows: skip (default) or stop")

    p = sub.add_parser("geneval-grammar", help="GenEval-format training prompts over GenEval's 80 classes (test prompts left out)",
                       description="Training prompts for GenEval as a reward: GenEval's grammar under another seed.")
    p.add_argument("--n", type=int, required=True, help="number of distinct prompts")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--local-dir", help="folder with geneval_object_names.txt instead of the packaged copy (sha256-checked)")
    p.add_argument("--download", action="store_true", help="fetch the object names from GenEval's repository")
    p.add_argument("--exclude", nargs="+", default=[], metavar="FILE", help="prompt files to stay disjoint from (the test set)")
    p.add_argument("--out", required=True, help="output JSONL")

    p = sub.add_parser("check-disjoint", help="fail when two prompt files share a prompt (lowercased, whitespace collapsed)")
    p.add_argument("train", help="training prompt file (txt, jsonl or tsv)")
    p.add_argument("test", help="test prompt file")


def main(args: argparse.Namespace) -> int:
    from drpo.data import prompts as P

    if args.prompts_command == "prepare":
        if args.name == "file":
            if not args.path:
                raise ValueError("drpo prompts prepare file: give the prompt file with --path")
            out = P.prepare_prompt_file(args.path, args.out, exclude=args.exclude)
        else:
            out = P.prepare_prompt_set(args.name, args.out, local_dir=args.local_dir,
                                       allow_download=args.download, exclude=args.exclude)
        info = P.read_sidecar(out)
        dropped = [f"{n} {what}" for n, what in ((info.get("duplicates_dropped", 0), "repeats"),
                                                  (len(info.get("excluded_dropped", [])), "excluded prompts")) if n]
        log.info("wrote %s: %d prompts%s, source sha256 %s", out, info["count"],
                 f" (dropped: {', '.join(dropped)})" if dropped else "", info["source_sha256"])
        return 0
    if args.prompts_command == "pickapic-pairs":
        from drpo.data.pickapic import build_pickapic_pairs

        excluded = [r["prompt"] for f in args.exclude_prompts for r in P.load_prompts(f)]
        stats = build_pickapic_pairs(args.parquet, args.out, max_pairs=args.max_pairs,
                                     exclude_prompts=excluded, ties=args.ties)
        log.info("wrote %s/pairs.jsonl: %s", args.out, json.dumps(stats.__dict__))
        return 0
    if args.prompts_command == "geneval-grammar":
        from drpo.data.geneval_grammar import generate, read_object_names
        from drpo.io import write_jsonl

        names_file, _ = P.fetch_source("geneval_object_names", local_dir=args.local_dir, allow_download=args.download)
        excluded = {r["prompt"] for f in args.exclude for r in P.load_prompts(f)}
        rows = generate(args.n, args.seed, read_object_names(names_file), excluded)
        for f in args.exclude:
            P.check_disjoint(rows, P.load_prompts(f), train_name=args.out, test_name=f)
        write_jsonl(args.out, rows)
        log.info("wrote %s: %d GenEval-grammar prompts (seed %d), disjoint from %s", args.out, len(rows), args.seed,
                 args.exclude or "nothing")
        return 0
    train, test = P.load_prompts(args.train), P.load_prompts(args.test)
    P.check_disjoint(train, test, train_name=args.train, test_name=args.test)
    print(f"disjoint: {len(train)} prompts in {args.train}, {len(test)} in {args.test}")  # the check's answer
    return 0
