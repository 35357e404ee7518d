"""`drpo bench update|memory|timing|sample|drift`: the benchmarks of drpo.bench (the paper's speed
claim and the drift field's cost); results go to `--out`."""

from __future__ import annotations

import argparse
import logging

from drpo.bench import bench_drift, bench_memory, bench_sample, bench_timing, bench_update

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    u = sub.add_parser("update", help="seconds per update, DrPO vs DRaFT at matched effective batch",
                       description="DrPO and DRaFT updates on the same generator, reward and prompts, interleaved A B A B after "
                                   "a warm-up; prints the median pairwise speed-up with its range and DrPO's time beyond its "
                                   "irreducible parts (sampling, reward forward, features forward, backward, optimizer).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    u.add_argument("--reward-ratio", type=float, nargs="+", default=[1, 4, 9], help="reward parameters ÷ generator UNet parameters")
    u.add_argument("--candidates", type=int, default=8, help="K per prompt")
    u.add_argument("--prompts-per-update", type=int, default=2)
    u.add_argument("--repeats", type=int, default=9, help="timed DrPO/DRaFT pairs, interleaved (after the warm-up)")
    u.add_argument("--warmup", type=int, default=2, help="untimed updates of each method first")
    u.add_argument("--generator", choices=["tiny", "sd-turbo"], default="tiny",
                   help="tiny: a 64/128-channel SD-Turbo-class UNet (CPU); sd-turbo: SD-Turbo's full-size UNet and VAE, "
                        "random weights (use on a GPU)")
    u.add_argument("--resolution", type=int, default=None, help="image side (default 32 for tiny, 512 for sd-turbo)")
    u.add_argument("--threads", type=int, default=None)
    u.add_argument("--out", default="results/bench")
    m = sub.add_parser("memory", help="peak memory of one full-size SD-Turbo DrPO update, with and without gradient checkpointing",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--resolution", type=int, default=None, help="image side (None: 512 on CUDA, 128 on CPU)")
    m.add_argument("--candidates", type=int, default=None, help="K per prompt (None: 24 on CUDA, 4 on CPU)")
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    m.add_argument("--out", default="results/bench", help="folder for memory.json")
    t = sub.add_parser("timing", help="the study's DrPO vs DRaFT timing from two train configs (the workflow's timing rule)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--drpo", required=True, help="DrPO's train config (drpo.workflow.timing_config)")
    t.add_argument("--draft", required=True, help="DRaFT's train config")
    t.add_argument("--repeats", type=int, default=3, help="timed pairs, interleaved")
    t.add_argument("--warmup", type=int, default=1, help="untimed updates of each method first")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--out", required=True, help="the JSON file to write")
    sp = sub.add_parser("sample", help="drpo sample's images/s against a plain diffusers pipeline loop on the same model",
                        description="drpo sample and a loop of diffusers pipeline calls (same model, prompts, seeds, batch size, "
                                    "PNGs written) alternate after a warm-up; prints both throughputs and their ratio.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sp.add_argument("--model", default=None, help="a one-step diffusers folder (default: a tiny SD-Turbo twin at 64 px)")
    sp.add_argument("--images", type=int, default=64, help="images per repeat")
    sp.add_argument("--batch-size", type=int, default=8)
    sp.add_argument("--repeats", type=int, default=6, help="timed pairs, interleaved")
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--out", default="results/bench")
    d = sub.add_parser("drift", help="time of the drift field across N, D, radii and batched prompts",
                       description="Time and peak memory of one drift field (forward + backward) as N, P, M, D, the radii "
                                   "and the number of batched prompt sets vary.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--out", default="results/bench")


def main(args: argparse.Namespace) -> int:
    {"update": bench_update, "memory": bench_memory, "timing": bench_timing, "drift": bench_drift,
     "sample": bench_sample}[args.bench](args)
    log.info("wrote %s", args.out)
    return 0
