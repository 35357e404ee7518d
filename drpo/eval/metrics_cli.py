"""`drpo score`: a metric on a sampled test set (a manifest from `drpo sample`).

    drpo score --manifest M --reward pickscore [--options JSON] --out scores.parquet --summary s.json
    drpo score --manifest M --fid-ref BASE_MANIFEST --extractor inception --extractor-options '{"path": "..."}' --summary s.json
    drpo score --manifest M --distance-ref BASE_MANIFEST --extractor clip --extractor-options '{"path": "..."}' --summary s.json
    drpo score --manifest M --diversity --extractor clip --extractor-options '{"path": "..."}' --summary s.json
    drpo score --geneval-results results.jsonl --summary s.json         # GenEval's own evaluator output
    drpo score --manifest M --world-geneval --summary s.json             # the shapes world's checker

Reward scores are resumable (see `drpo.eval.metrics.score_manifest`); summaries hold raw values,
the bootstrap CI, the display-unit values and what was scored (manifest sha256, sampler settings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", help="manifest.jsonl written by `drpo sample`")
    mode = parser.add_mutually_exclusive_group()
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
    parser.add_argument("--out", help="per-image score parquet (--reward; default <manifest folder>/scores.parquet)")
    parser.add_argument("--summary", help="summary JSON to write (printed either way)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto: cuda if available, else cpu")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CI")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--no-cache", action="store_true", help="do not cache features next to the manifests")
    parser.add_argument("--no-progress", action="store_true")


def _json_arg(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag}: not valid JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag}: expected a JSON object, got {text!r}")
    return value


def _provenance(manifest: str) -> dict:
    from drpo.eval.metrics import file_sha256

    path = Path(manifest)
    out = {"manifest": str(path.resolve()), "manifest_sha256": file_sha256(path)}
    stamp = path.parent / "sampler.json"
    if stamp.exists():
        out["sampler"] = json.loads(stamp.read_text())
    return out


def main(args: argparse.Namespace) -> int:
    from drpo.eval import metrics as M
    from drpo.io import write_json

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not (args.geneval_results or args.manifest):
        raise ValueError("--manifest is required (or --geneval-results)")

    if args.geneval_results:
        summary = {"kind": "geneval", "results": str(Path(args.geneval_results).resolve()),
                   **M.geneval_summary(M.read_geneval_results(args.geneval_results))}
    elif args.world_geneval:
        df = M.world_correctness(args.manifest, progress=not args.no_progress)
        summary = {"kind": "geneval", **_provenance(args.manifest), **M.geneval_summary(df)}
    elif args.fid_ref or args.diversity or args.distance_ref:
        from drpo.eval.fid import build_extractor

        extractor = build_extractor(args.extractor, device=device, **_json_arg(args.extractor_options, "--extractor-options"))
        if args.fid_ref:
            from drpo.eval.fid import fid_between

            value = fid_between(args.manifest, args.fid_ref, extractor, batch_size=args.batch_size, cache=not args.no_cache)
            summary = {"kind": "fid", "metric": "fid", "fid": value, "mean": value, "extractor": extractor.name,
                       "reference": _provenance(args.fid_ref), **_provenance(args.manifest)}
        elif args.distance_ref:
            from drpo.eval.fid import paired_distance

            d = paired_distance(args.manifest, args.distance_ref, extractor, batch_size=args.batch_size, cache=not args.no_cache)
            summary = {"kind": "distance", "metric": "distance", "mean": d["l2"], **d, "extractor": extractor.name,
                       "reference": _provenance(args.distance_ref), **_provenance(args.manifest)}
        else:
            from drpo.eval.diversity import manifest_diversity

            d = manifest_diversity(args.manifest, extractor, batch_size=args.batch_size, cache=not args.no_cache)
            summary = {"kind": "diversity", "metric": "diversity", "mean": d["overall"], **d, **_provenance(args.manifest)}
    elif args.reward:
        from drpo.rewards import build_reward

        spec = {"name": args.reward, "options": _json_arg(args.options, "--options")}
        reward = build_reward(spec, device=device)
        out = Path(args.out) if args.out else Path(args.manifest).parent / "scores.parquet"
        df = M.score_manifest(args.manifest, reward, out, args.batch_size, metric=args.metric or args.reward,
                              progress=not args.no_progress)
        summary = {"kind": "reward", "reward": spec, "scores": str(out.resolve()), **_provenance(args.manifest),
                   **M.summarize_scores(df, n_boot=args.bootstrap, seed=args.seed)}
        if df["tag"].notna().all() and set(df["score"].unique()) <= {0.0, 1.0}:
            summary["geneval"] = M.geneval_summary(M.correctness_from_scores(df))
    else:
        raise ValueError("choose what to compute: --reward, --fid-ref, --distance-ref, --diversity, --geneval-results or --world-geneval")

    text = json.dumps(summary, indent=2, sort_keys=True, default=str)
    if args.summary:
        write_json(args.summary, summary)
        print(f"wrote {args.summary}")
    print(text)
    return 0
