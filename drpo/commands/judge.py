"""`drpo judge`: pairwise preference of method A over method B by a judge model (METHOD.md §5.4).

    drpo judge --a runs/drpo/samples --b runs/base/samples --backend qwen --out j.jsonl --summary s.json
    drpo judge --a ... --b ... --backend openai --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen3-VL-8B-Instruct ...
    drpo judge --merge j.shard0.jsonl j.shard1.jsonl --summary s.json      # shards -> one summary

Resumable: pairs already in --out are skipped. Wins are counted for --a ("left") against --b.
"""

from __future__ import annotations

import argparse

from drpo.contracts import JudgeSummary, write_judge_summary
from drpo.shards import shard_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--a", help="manifest (or sample folder) of the method under test ('left')")
    parser.add_argument("--b", help="manifest (or sample folder) of the baseline ('right')")
    parser.add_argument("--label-a", help="method label for --a (default: its folder name)")
    parser.add_argument("--label-b", help="method label for --b (default: its folder name)")
    parser.add_argument("--backend", choices=["qwen", "openai", "world"], default="qwen")
    parser.add_argument("--model", help="qwen: local folder or HF id (offline cache; default Qwen/Qwen3-VL-8B-Instruct); openai: served model name")
    parser.add_argument("--base-url", help="openai: server root including /v1, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key-env", help="openai: name of the environment variable holding the API key")
    parser.add_argument("--timeout", type=float, default=60.0, help="openai: seconds per request")
    parser.add_argument("--retries", type=int, default=3, help="openai: retries on connection errors / 5xx")
    parser.add_argument("--device", default="auto", help="qwen: auto (cuda if available, device_map=auto) or cpu / cuda:N")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="qwen")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", help="judgements JSON lines (appended; resumed)")
    parser.add_argument("--summary", help="summary JSON (win rates, bootstrap CIs)")
    parser.add_argument("--order", choices=["hashed", "both"], default="hashed",
                        help="hashed: one judgement, order from a hash of the pair; both: two, a win only when both agree")
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--shuffle-seed", type=int, default=123)
    parser.add_argument("--shard", type=shard_arg, default=None, metavar="I/N", help="judge every N-th pair starting at I")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    parser.add_argument("--merge", nargs="+", metavar="JSONL", help="only summarize these judgement files (shards) into --summary")
    parser.add_argument("--no-progress", action="store_true")


def _judge_from_args(args: argparse.Namespace):
    from drpo.eval.judge_backends import DEFAULT_QWEN, build_judge

    if args.backend == "qwen":
        return build_judge("qwen", path=args.model or DEFAULT_QWEN, device=args.device, dtype=args.dtype,
                           max_new_tokens=args.max_new_tokens)
    if args.backend == "openai":
        if not args.base_url or not args.model:
            raise ValueError("--backend openai needs --base-url and --model (the served model name)")
        return build_judge("openai", base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                           timeout=args.timeout, retries=args.retries, max_tokens=args.max_new_tokens)
    return build_judge("world")


def _print_summary(s: JudgeSummary) -> None:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def ci(c):
        return "" if c is None else f" [{100 * c[0]:.1f}, {100 * c[1]:.1f}]"

    print(f"{s.left_label} vs {s.right_label}: n={s.n} wins={s.wins} losses={s.losses} ties={s.ties} invalid={s.invalid}")
    print(f"  preference share {pct(s.preference_share)}{ci(s.preference_share_ci95)}; "
          f"win rate excl. ties {pct(s.win_rate_excluding_ties)}{ci(s.win_rate_excluding_ties_ci95)}"
          + ("" if s.order_consistency is None else f"; order consistency {pct(s.order_consistency)}"))


def main(args: argparse.Namespace) -> int:
    from drpo.eval.judge import image_pairs, judge_image_pairs, read_judgements, summarize

    if args.merge:
        if not args.summary:
            raise ValueError("--merge needs --summary")
        summary = summarize(read_judgements(*args.merge), n_boot=args.n_boot).with_details(sources=list(args.merge))
        write_judge_summary(args.summary, summary)
        _print_summary(summary)
        return 0
    if not (args.a and args.b and args.out):
        raise ValueError("--a, --b and --out are required (or --merge FILES --summary S)")
    pairs = image_pairs(args.a, args.b, max_pairs=args.max_pairs, shuffle_seed=args.shuffle_seed, shard=args.shard,
                           label_a=args.label_a, label_b=args.label_b)
    judge = _judge_from_args(args)
    records = judge_image_pairs(pairs, judge, args.out, order=args.order, progress=not args.no_progress)
    summary = summarize(records, n_boot=args.n_boot).with_details(
        manifest_a=str(args.a), manifest_b=str(args.b), order=args.order, backend=args.backend,
        shard=None if args.shard is None else f"{args.shard[0]}/{args.shard[1]}", out=str(args.out))
    if args.summary:
        write_judge_summary(args.summary, summary)
    _print_summary(summary)
    return 0
