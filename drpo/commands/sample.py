"""`drpo sample`: images of one or more test sets for any generator, with a manifest each
(drpo.eval.sample; `--merge` joins the manifests of `--shard` runs)."""

from __future__ import annotations

import argparse
import logging

from drpo.devices import resolve_device
from drpo.eval.sample import SamplerSettings, fingerprint, merge_shards, sample
from drpo.shards import shard_arg

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="generator: local diffusers folder or Hugging Face id (offline cache)")
    parser.add_argument("--family", choices=["sd-turbo", "sdxl-turbo"], help="default: from model_index.json")
    parser.add_argument("--lora", help="a training checkpoint folder (holding unet_lora/) to apply")
    parser.add_argument("--prompts", nargs="+", help="prompt file(s): .txt (one per line) or .jsonl (prompt, prompt_id, "
                                                     "metadata); several test sets load the model once, one --out each")
    parser.add_argument("--seeds", default="42", help="comma-separated image seeds (default 42; the paper uses 42,43,44,45,46)")
    parser.add_argument("--out", nargs="+", help="output folder (images + manifest.jsonl), one per --prompts file")
    parser.add_argument("--multi-step", action="store_true", help="a multi-step reference model through its diffusers pipeline")
    parser.add_argument("--steps", type=int, default=None, help="multi-step only (default 50)")
    parser.add_argument("--guidance", type=float, default=None, help="multi-step only (default 7.5)")
    parser.add_argument("--scheduler", default="default", choices=["default", "ddim", "dpmpp_2m", "lcm"],
                        help="multi-step only: replace the pipeline's scheduler")
    parser.add_argument("--resolution", type=int, default=None, help="default: the model's native size")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights' dtype")
    parser.add_argument("--device", default="auto", help="auto: cuda if available, else cpu")
    parser.add_argument("--batch-size", type=int, default=4, help="images per generator call")
    parser.add_argument("--shard", type=shard_arg, default=(0, 1), metavar="I/N", help="sample every N-th image starting at I (default: all, 0/1)")
    parser.add_argument("--merge", action="store_true", help="only merge shard manifests in --out into manifest.jsonl")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    needed = (("--out", args.out),) if args.merge else (("--model", args.model), ("--prompts", args.prompts), ("--out", args.out))
    missing = [flag for flag, value in needed if not value]
    if missing:
        raise ValueError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required"
                         + ("" if args.merge else " (or --merge --out DIR to merge shard manifests)"))
    if args.merge:
        for out in args.out:
            log.info("wrote %s", merge_shards(out))
        return 0
    if len(args.prompts) != len(args.out):
        raise ValueError(f"drpo sample: {len(args.prompts)} --prompts files but {len(args.out)} --out folders; give one --out per prompt file")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    if args.multi_step:
        settings = SamplerSettings(
            model=args.model, model_type="multi_step", num_inference_steps=args.steps or 50,
            guidance_scale=7.5 if args.guidance is None else args.guidance, scheduler=args.scheduler,
            resolution=args.resolution, dtype=args.dtype, weights=fingerprint(args.model),
        )
    else:
        if (args.steps not in (None, 1)) or (args.guidance not in (None, 0.0)):
            raise ValueError("one-step generators take --steps 1 and --guidance 0; use --multi-step for reference models")
        settings = SamplerSettings(model=args.model, family=args.family, lora=args.lora, resolution=args.resolution, dtype=args.dtype,
                                   weights=fingerprint(args.model, args.lora))
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    loaded: dict = {}  # the generator, loaded by the first set that has images to draw
    for prompts, out in zip(args.prompts, args.out):
        path = sample(prompts, out, settings, seeds, batch_size=args.batch_size, shard=args.shard, device=device,
                      progress=not args.no_progress, loaded=loaded)
        log.info("wrote %s", path)
    return 0
