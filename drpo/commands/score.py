"""`drpo score`: a metric on a sampled test set (a manifest from `drpo sample`).

    drpo score --manifest M --reward pickscore [--options JSON] --out scores.parquet --summary s.json
    drpo score --manifest M --fid-ref BASE_MANIFEST --extractor inception --extractor-options '{"path": "..."}' --summary s.json
    drpo score --manifest M --distance-ref BASE_MANIFEST --extractor clip --extractor-options '{"path": "..."}' --summary s.json
    drpo score --manifest M --diversity --extractor clip --extractor-options '{"path": "..."}' --summary s.json
    drpo score --geneval-results results.jsonl --summary s.json         # GenEval's own evaluator output
    drpo score --manifest M --world-geneval --summary s.json             # the shapes world's checker
    drpo score --plan results/scores/_plans/drpo-s42.json                # every metric of one model (the workflow)

A plan (`drpo.workflow.score_plan`, written by the workflow) lists one model's tasks: each metric on
each of its test sets and each reference comparison; every reward and extractor is loaded once
(`drpo.eval.metrics.run_plan`).

Reward scores are resumable (see `drpo.eval.metrics.score_manifest`); summaries hold raw values,
the bootstrap CI, the display-unit values and what was scored (manifest sha256, sampler settings).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from drpo.contracts import ScoreSummary, write_score_summary
from drpo.devices import resolve_device

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", help="manifest.jsonl written by `drpo sample`")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plan", help="a score plan JSON (the workflow writes <results>/scores/_plans/<model>.json): "
                                     "every metric and comparison of one model, each model loaded once")
    mode.add_argument("--reward", help="any drpo reward name (pickscore, aesthetic, imagereward, hpsv2, clip, world_checker, ...)")
    mode.add_argument("--fid-ref", help="FID of --manifest against this manifest (e.g. the base model's samples)")
    mode.add_argument("--diversity", action="store_true", help="mean pairwise cosine distance of image features")
    mode.add_argument("--distance-ref", help="mean feature distance to this manifest's image of the same prompt and seed "
                                             "(how far fine-tuning moved the samples from, e.g., the base model's)")
    mode.add_argument("--geneval-results", help="GenEval's evaluator results JSONL (rows with tag, correct) → GenEval summary")
    mode.add_argument("--world-geneval", action="store_true", help="GenEval summary of a shapes-world manifest with the world's checker")
    parser.add_argument("--options", default="{}", help="reward options as JSON (e.g. '{\"path\": \"models/PickScore_v1\"}')")
    parser.add_argument("--metric", help="metric name in the score file (default: the reward name)")
    parser.add_argument("--extractor", default="inception", help="features for --fid-ref/--distance-ref/--diversity: inception, random_conv, clip, dinov2")
    parser.add_argument("--extractor-options", default="{}", help="extractor options as JSON (inception/clip/dinov2 need path)")
    parser.add_argument("--out", help="per-image score parquet (--reward, --world-geneval; default <manifest folder>/scores.parquet)")
    parser.add_argument("--summary", help="summary JSON to write (printed either way)")
    parser.add_argument("--done", help="with --plan: JSON listing every summary written, written last (the workflow's output)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto: cuda if available, else cpu")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CI")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--no-cache", action="store_true", help="do not cache features next to the manifests")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--no-progress", action="store_true")


def _json_arg(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag}: not valid JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag}: expected a JSON object, got {text!r}")
    return value


def main(args: argparse.Namespace) -> int:
    from drpo.eval import metrics as M
    from drpo.io import write_json

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    if args.plan:
        written = M.run_plan(args.plan, device=device, batch_size=args.batch_size, bootstrap=args.bootstrap, seed=args.seed,
                             progress=not args.no_progress, cache=not args.no_cache, echo=print)
        if args.done:
            write_json(args.done, {"plan": str(Path(args.plan).resolve()), "summaries": written})
        log.info("wrote %d summaries", len(written))
        return 0
    if not (args.geneval_results or args.manifest):
        raise ValueError("--manifest is required (or --geneval-results, or --plan)")

    if args.geneval_results:
        summary = ScoreSummary.from_json({"kind": "geneval", "results": str(Path(args.geneval_results).resolve()),
                                          **M.geneval_summary(M.read_geneval_results(args.geneval_results))})
    elif args.world_geneval:  # the world's binary checker, by its registry name like any other reward
        from drpo.rewards import build_reward

        out = Path(args.out) if args.out else Path(args.manifest).parent / "scores.parquet"
        scores = M.score_manifest(args.manifest, build_reward({"name": "world_checker"}, device=device), out, args.batch_size,
                                  metric="world_checker", progress=not args.no_progress)
        summary = ScoreSummary.from_json({"kind": "geneval", **M.manifest_provenance(args.manifest),
                                          **M.geneval_summary(M.correctness_from_scores(scores))})
    elif args.fid_ref or args.diversity or args.distance_ref:
        from drpo.eval.fid import build_extractor

        extractor = build_extractor(args.extractor, device=device, **_json_arg(args.extractor_options, "--extractor-options"))
        if args.fid_ref or args.distance_ref:
            kind, reference = ("fid", args.fid_ref) if args.fid_ref else ("distance", args.distance_ref)
            summary = M.comparison_summary(kind, args.manifest, reference, extractor, batch_size=args.batch_size,
                                           cache=not args.no_cache)
        else:
            from drpo.eval.diversity import manifest_diversity

            d = manifest_diversity(args.manifest, extractor, batch_size=args.batch_size, cache=not args.no_cache)
            summary = ScoreSummary.from_json({"kind": "diversity", "metric": "diversity", "mean": d["overall"], **d,
                                              **M.manifest_provenance(args.manifest)})
    elif args.reward:
        from drpo.rewards import build_reward

        spec = {"name": args.reward, "options": _json_arg(args.options, "--options")}
        reward = build_reward(spec, device=device)
        out = Path(args.out) if args.out else Path(args.manifest).parent / "scores.parquet"
        try:
            summary = M.reward_summary(args.manifest, reward, spec, out, args.metric or args.reward, batch_size=args.batch_size,
                                       bootstrap=args.bootstrap, seed=args.seed, progress=not args.no_progress)
        finally:
            close = getattr(reward, "close", None)
            if close is not None:
                close()
    else:
        raise ValueError("choose what to compute: --plan, --reward, --fid-ref, --distance-ref, --diversity, --geneval-results or --world-geneval")

    if args.summary:
        write_score_summary(args.summary, summary)
        log.info("wrote %s", args.summary)
    print(summary_line(summary))
    if not args.summary:  # nowhere else to find it
        print(json.dumps(summary.to_json(), indent=2, sort_keys=True, default=str))
    return 0


def summary_line(summary: ScoreSummary) -> str:
    """One line for the terminal: what was scored, its mean, the 95 % interval and the count."""
    what = summary.metric or summary.kind or "score"
    line = f"{what}: {summary.mean:.4g}" if summary.mean is not None else f"{what}: no value"
    if summary.ci_low is not None and summary.ci_high is not None:
        line += f" (95% CI {summary.ci_low:.4g} to {summary.ci_high:.4g})"
    if summary.n is not None:
        line += f", n = {summary.n}"
    if summary.geneval.get("overall") is not None:
        line += f"; GenEval overall {summary.geneval['overall']:.4g}"
    return line
