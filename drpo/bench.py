"""`drpo bench`: the paper's speed claim and the drift's cost, measured (benchmarks, not tests).

    drpo bench update   # seconds per update, DrPO vs DRaFT at matched effective batch (METHOD.md §6.3)
    drpo bench memory   # peak memory of one full-size SD-Turbo DrPO update, gradient checkpointing off/on
    drpo bench drift    # time and peak memory of the drift field across N, D, radii and batched B

`update` builds a tiny SD-Turbo twin and a CLIP reward whose parameter count is `--reward-ratio`
times the generator UNet's (the paper's regime: HPSv3 ≈ 8B vs the SD-Turbo UNet ≈ 0.87B, about 9×).
DrPO scores candidates without gradient and backpropagates only through the generator and the
feature map; DRaFT backpropagates every candidate through the decoder and the reward. Both run the
same trainer, candidates and prompts per update; the first update is a warm-up and not counted.
Results (JSON + PNG) go to `results/bench/`.
"""

from __future__ import annotations

import functools
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from drpo.io import write_json


def _reward_clip(folder: Path, target_params: int, image_size: int) -> int:
    """A tiny CLIP (PickScore's class) whose size is close to `target_params`; its parameter count."""
    from drpo.models.tiny import build_tiny_clip

    hidden, best = 32, None
    for layers in range(1, 25):
        for hidden in (32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096):
            model, _ = build_tiny_clip(None, image_size=image_size, patch_size=4, hidden=hidden, projection=hidden, layers=layers)
            n = sum(p.numel() for p in model.parameters())
            if best is None or abs(n - target_params) < abs(best[0] - target_params):
                best = (n, hidden, layers)
            if n > target_params * 1.5:
                break
    n, hidden, layers = best
    build_tiny_clip(folder, image_size=image_size, patch_size=4, hidden=hidden, projection=hidden, layers=layers)
    return n


def _trainer(method: str, model: Path, reward: Path, prompts: Path, out: Path, *, candidates: int, prompts_per_update: int,
             dtype: str = "float32"):
    from drpo.train.config import train_config_from_dict
    from drpo.train.trainer import Trainer

    common = {
        "seed": 42, "steps": 10_000, "grad_accum": prompts_per_update, "prompts_per_micro_step": 1,
        "output_dir": str(out / method), "model": {"path": str(model), "dtype": dtype}, "prompts": {"path": str(prompts)},
        "reward": {"name": "pickscore", "options": {"path": str(reward)}}, "lora": {"rank": 16, "alpha": 16},
        "checkpoint": {"every": 0}, "tracking": {"enabled": False, "sample_grid_every": 0},
    }
    if method == "drpo":  # the paper's timing run: reference drift off, top/bottom half as anchors
        cfg = {**common, "method": "drpo", "features": {"name": "latent", "options": {"keys": ["latent_flat", "latent_mean_2"]}},
               "drpo": {"candidates": candidates, "positives": candidates // 2, "negatives": candidates // 2, "lambda_ref": 0.0}}
    else:  # DRaFT streams candidates one at a time, a backward per candidate
        cfg = {**common, "method": "draft", "draft": {"candidates": candidates, "chunk": 1}}
    return Trainer(train_config_from_dict(cfg), progress=False)


def _timed_update(trainer, step: int) -> dict[str, float]:
    """One update: its wall time and the trainer's per-component times."""
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    metrics = trainer.train_step(step)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return {"wall": time.perf_counter() - start, **{k[5:]: v for k, v in metrics.items() if k.startswith("time/") and k != "time/update"}}


# DrPO's irreducible parts (§6.3): sampling the K candidates (prompt encoding included), the reward's
# forward (decoding to images included), the features' forward, one backward through the features
# and the generator, and the optimizer step. The rest is drift, selection, data movement and Python.
FLOOR = {"sampling": ("encode_prompts", "sampling"), "reward forward": ("decoding", "reward"), "features forward": ("features",),
         "backward (features + generator)": ("backward",), "optimizer": ("optimizer",)}
MAX_SPREAD = 0.25  # relative interquartile range of the pairwise ratios above which no headline is printed


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q[0], q[1], q[2]


def _time_pair(drpo, draft, repeats: int, warmup: int) -> dict:
    """DrPO and DRaFT updates interleaved (A B A B ...) after warm-up, so a change in the machine's
    load hits both alike; the speed-up is computed pair by pair, reported as median, min and max."""
    for step in range(warmup):
        _timed_update(drpo, step)
        _timed_update(draft, step)
    pairs = []
    for i in range(repeats):
        if i % 2 == 0:  # alternate which goes first, so neither always follows the other
            a = _timed_update(drpo, warmup + i)
            b = _timed_update(draft, warmup + i)
        else:
            b = _timed_update(draft, warmup + i)
            a = _timed_update(drpo, warmup + i)
        pairs.append((a, b))
    ratios = [b["wall"] / a["wall"] for a, b in pairs]
    q1, median, q3 = _quartiles(ratios)

    def method(updates: list[dict]) -> dict:
        walls = [u["wall"] for u in updates]
        parts = {k: statistics.median(u.get(k, 0.0) for u in updates) for k in sorted({k for u in updates for k in u} - {"wall"})}
        return {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls), "components": parts}

    drpo_stats, draft_stats = method([a for a, _ in pairs]), method([b for _, b in pairs])
    floor = {name: statistics.median(sum(a.get(k, 0.0) for k in keys) for a, _ in pairs) for name, keys in FLOOR.items()}
    # what is left beyond the floor, update by update (the timers run inside the wall time)
    left_each = [a["wall"] - sum(a.get(k, 0.0) for keys in FLOOR.values() for k in keys) for a, _ in pairs]
    left = statistics.median(left_each)
    return {
        "drpo": drpo_stats, "draft": draft_stats, "ratios": ratios,
        "speedup": {"median": median, "min": min(ratios), "max": max(ratios), "q1": q1, "q3": q3},
        "spread": (q3 - q1) / median, "stable": (q3 - q1) / median <= MAX_SPREAD,
        "drpo_floor": {**floor, "left over": left, "left over share": left / drpo_stats["median_s"], "left over each": left_each,
                       "drift": drpo_stats["components"].get("drift", 0.0), "rank_select": drpo_stats["components"].get("rank_select", 0.0)},
    }


def bench_update(args) -> dict:
    from drpo.models.generators import OneStepGenerator
    from drpo.models.tiny import build_sd_turbo_sized, build_tiny_sd_turbo

    torch.set_num_threads(args.threads) if args.threads else None
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        resolution = args.resolution or (512 if args.generator == "sd-turbo" else 32)
        if args.generator == "sd-turbo":  # the real architecture, random weights: the paper's regime on a GPU
            model = build_sd_turbo_sized(tmp / "model", resolution=resolution)
        else:
            model = build_tiny_sd_turbo(tmp / "model", resolution=resolution, unet_channels=(64, 128), cross_attention_dim=64)
        unet_params = sum(p.numel() for p in OneStepGenerator.from_pretrained(model).unet.parameters())
        (tmp / "prompts.txt").write_text("\n".join(f"a photo of a red circle number {i}" for i in range(64)) + "\n")
        dtype = "bfloat16" if args.generator == "sd-turbo" and torch.cuda.is_available() else "float32"
        rows = []
        for ratio in args.reward_ratio:
            reward = tmp / f"reward_{ratio:g}"
            # the reward sees the generated images, at most at CLIP's 224 px
            reward_params = _reward_clip(reward, int(ratio * unet_params), min(resolution, 224))
            trainers = [_trainer(m, model, reward, tmp / "prompts.txt", tmp / "runs", candidates=args.candidates,
                                 prompts_per_update=args.prompts_per_update, dtype=dtype) for m in ("drpo", "draft")]
            row = {"reward_ratio_target": ratio, "reward_params": reward_params, "unet_params": unet_params,
                   "reward_ratio": reward_params / unet_params, **_time_pair(*trainers, args.repeats, args.warmup)}
            del trainers
            rows.append(row)
            sp, fl = row["speedup"], row["drpo_floor"]
            head = (f"{sp['median']:.2f}× (pairs {sp['min']:.2f}–{sp['max']:.2f}; paper: 3.51× at ≈9×)" if row["stable"] else
                    f"no headline: the pairwise ratios spread {100 * row['spread']:.0f} % (IQR/median > {100 * MAX_SPREAD:.0f} %); "
                    f"the machine is too busy, run again")
            print(f"reward/generator {row['reward_ratio']:.1f}×: DRaFT {row['draft']['median_s']:.3f} s, DrPO {row['drpo']['median_s']:.3f} s "
                  f"per update (medians of {args.repeats} interleaved pairs) → {head}; DrPO left over beyond its floor "
                  f"{1000 * fl['left over']:.1f} ms ({100 * fl['left over share']:.1f} %)", flush=True)
    result = {"benchmark": "update", "generator": args.generator, "candidates": args.candidates, "prompts_per_update": args.prompts_per_update,
              "effective_batch": args.candidates * args.prompts_per_update, "repeats": args.repeats, "warmup": args.warmup,
              "rows": rows, **_machine()}
    write_json(out / "update.json", result)
    _plot_update(rows, out / "update.png")
    return result


def bench_timing(args) -> dict:
    """The study's timing run (the workflow's `timing` rule, METHOD §6.3): DrPO and DRaFT from their
    train configs, interleaved, medians and pairwise speed-up, to one JSON file for `drpo collect`."""
    from drpo.train.config import load_train_config
    from drpo.train.trainer import Trainer

    torch.set_num_threads(args.threads) if args.threads else None
    cfgs = {m: load_train_config(path) for m, path in (("drpo", args.drpo), ("draft", args.draft))}
    trainers = {m: Trainer(cfg, progress=False) for m, cfg in cfgs.items()}
    result = _time_pair(trainers["drpo"], trainers["draft"], args.repeats, args.warmup)
    k = cfgs["drpo"].drpo.candidates
    result.update(benchmark="timing", effective_batch=k * cfgs["drpo"].grad_accum * trainers["drpo"].world,
                  repeats=args.repeats, warmup=args.warmup, reward=[r.name for r in cfgs["drpo"].reward], **_machine())
    sp = result["speedup"]
    print(f"DRaFT {result['draft']['median_s']:.3f} s, DrPO {result['drpo']['median_s']:.3f} s per update → "
          f"{sp['median']:.2f}× (pairs {sp['min']:.2f}–{sp['max']:.2f})", flush=True)
    write_json(args.out, result)
    return result


def bench_memory(args) -> dict:
    """Peak memory of one DrPO update of SD-Turbo's full-size architecture (random weights), with and
    without gradient checkpointing. The SD-Turbo recipe (§2.3): K candidates all carry gradient
    through the UNet, latent-MAE features of layer4, sum over keys, the reference drift on; the
    reward (no gradient) is not part of the update's backward, so a cheap one ranks here."""
    from drpo.models.features import LAYER4_KEYS
    from drpo.models.latent_mae import save_latent_mae_checkpoint
    from drpo.models.tiny import build_sd_turbo_sized
    from drpo.train.config import train_config_from_dict
    from drpo.train.trainer import Trainer

    torch.set_num_threads(args.threads) if args.threads else None
    cuda = torch.cuda.is_available()
    resolution = args.resolution or (512 if cuda else 128)
    candidates = args.candidates or (24 if cuda else 4)
    out = Path(args.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_sd_turbo_sized(tmp / "model", resolution=resolution)
        # latent-MAE of ResNet-34 depth; widths are our assumption (the checkpoint sets them)
        mae = save_latent_mae_checkpoint(tmp / "mae.pth", widths=(64, 128, 256, 512))
        (tmp / "prompts.txt").write_text("a photo of a red circle\n")
        side = resolution // 64  # layer4 is 1/8 of the 1/8 latent: 8×8 at 512 px
        keys = [k for k in LAYER4_KEYS if not k[-2:-1] == "_" or side % int(k[-1]) == 0]  # windows that fit
        for checkpointing in (False, True):
            cfg = train_config_from_dict({
                "method": "drpo", "seed": 42, "steps": 1, "grad_accum": 1, "output_dir": str(tmp / "run"),
                "mixed_precision": "fp16" if cuda else "no", "gradient_checkpointing": checkpointing,
                "model": {"path": str(model), "dtype": "float16" if cuda else "float32", "resolution": resolution},
                "prompts": {"path": str(tmp / "prompts.txt")}, "reward": "brightness",
                "features": {"name": "latent_mae", "options": {"path": str(mae), "keys": keys}}, "lora": {"rank": 16, "alpha": 16},
                "checkpoint": {"every": 0}, "tracking": {"enabled": False, "sample_grid_every": 0},
                "drpo": {"candidates": candidates, "positives": candidates // 3, "negatives": candidates // 3},
            })
            trainer = Trainer(cfg, progress=False)
            trainer.train_step(0)  # warm-up: optimizer state and allocator caches exist before measuring
            start = time.perf_counter()
            peak = _peak_mib(functools.partial(trainer.train_step, 1), trainer.device)
            rows.append({"gradient_checkpointing": checkpointing, "keys": keys, "peak_mib": peak, "seconds": time.perf_counter() - start})
            print(f"gradient checkpointing {'on ' if checkpointing else 'off'}: peak {peak:.0f} MiB above the loaded models, "
                  f"{rows[-1]['seconds']:.1f} s per update", flush=True)
            del trainer
    plain, ckpt = rows[0]["peak_mib"], rows[1]["peak_mib"]
    result = {"benchmark": "memory", "resolution": resolution, "candidates": candidates, "device": "cuda" if cuda else "cpu",
              "rows": rows, "checkpointing_saves": None if not plain or ckpt is None else 1 - ckpt / plain, **_machine()}
    if cuda:
        result["fits_80gb"] = {str(r["gradient_checkpointing"]): r["peak_mib"] + torch.cuda.memory_allocated() / 2**20 < 80 * 1024 for r in rows}
    if result["checkpointing_saves"] is not None:
        print(f"checkpointing saves {100 * result['checkpointing_saves']:.0f} % of the update's peak at {resolution} px, K = {candidates}")
    write_json(out / "memory.json", result)
    return result


def bench_sample(args) -> dict:
    """`drpo sample`'s images per second against a plain diffusers loop (the pipeline called on the
    same batches, each image saved as PNG), on the same model, prompts, seeds and batch size; the two
    alternate A B A B after a warm-up, each repeat drawing every image afresh."""
    import shutil as _shutil

    from diffusers import AutoPipelineForText2Image

    from drpo.eval.sample import SamplerSettings, latent_seed, sample
    from drpo.models.tiny import build_tiny_sd_turbo

    torch.set_num_threads(args.threads) if args.threads else None
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else build_tiny_sd_turbo(tmp / "model", resolution=64)
        prompts = [f"a photo of {i % 4 + 1} red circles left of a blue square" for i in range(args.images)]
        (tmp / "prompts.txt").write_text("\n".join(prompts) + "\n")
        loaded: dict = {}
        pipe = AutoPipelineForText2Image.from_pretrained(str(model))
        pipe.set_progress_bar_config(disable=True)

        def ours(i: int) -> float:
            target = tmp / f"ours{i}"
            start = time.perf_counter()
            sample(tmp / "prompts.txt", target, SamplerSettings(model=str(model)), [42], batch_size=args.batch_size,
                   progress=False, loaded=loaded)
            seconds = time.perf_counter() - start
            _shutil.rmtree(target)
            return seconds

        def plain(i: int) -> float:
            target = tmp / f"plain{i}"
            target.mkdir()
            start = time.perf_counter()
            for b in range(0, len(prompts), args.batch_size):
                batch = prompts[b:b + args.batch_size]
                gens = [torch.Generator("cpu").manual_seed(latent_seed(42, b + j)) for j in range(len(batch))]
                images = pipe(batch, num_inference_steps=1, guidance_scale=0.0, generator=gens).images
                for j, image in enumerate(images):
                    image.save(target / f"{b + j:06d}.png")
            seconds = time.perf_counter() - start
            _shutil.rmtree(target)
            return seconds

        ours(-1), plain(-1)  # warm-up: the model loaded, allocator caches filled
        pairs = []
        for i in range(args.repeats):
            a, b = (ours(i), plain(i)) if i % 2 == 0 else tuple(reversed((plain(i), ours(i))))
            pairs.append((a, b))
    ratio = sorted(b / a for a, b in pairs)  # > 1: drpo sample is faster
    med = statistics.median
    result = {"benchmark": "sample", "images": args.images, "batch_size": args.batch_size, "repeats": args.repeats,
              "drpo_sample_s": med(a for a, _ in pairs), "diffusers_loop_s": med(b for _, b in pairs),
              "drpo_images_per_s": args.images / med(a for a, _ in pairs), "diffusers_images_per_s": args.images / med(b for _, b in pairs),
              "speed_ratio": {"median": med(ratio), "min": ratio[0], "max": ratio[-1]}, **_machine()}
    print(f"drpo sample {result['drpo_images_per_s']:.1f} images/s, diffusers pipeline loop {result['diffusers_images_per_s']:.1f} "
          f"images/s ({args.images} images, batch {args.batch_size}, medians of {args.repeats} interleaved pairs): drpo sample is "
          f"{med(ratio):.2f}× the loop's speed (pairs {ratio[0]:.2f}–{ratio[-1]:.2f})", flush=True)
    write_json(out / "sample.json", result)
    return result


def _plot_update(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["reward_ratio"] for r in rows]
    med = [r["speedup"]["median"] for r in rows]
    a.errorbar(x, med, yerr=[[m - r["speedup"]["min"] for m, r in zip(med, rows)], [r["speedup"]["max"] - m for m, r in zip(med, rows)]],
               fmt="o-", capsize=4, label="ours (median, pairwise min–max)")
    a.axhline(3.51, color="gray", ls="--", label="paper (HPSv3, ≈9×)")
    a.set_xlabel("reward / generator parameters")
    a.set_ylabel("DRaFT seconds ÷ DrPO seconds per update")
    a.legend()
    last = rows[-1]
    comps = sorted(set(last["drpo"]["components"]) | set(last["draft"]["components"]))
    for i, m in enumerate(("draft", "drpo")):
        bottom = 0.0
        for c in comps:
            v = last[m]["components"].get(c, 0.0)
            b.bar(i, v, bottom=bottom, label=c if i == 0 else None)
            bottom += v
    b.set_xticks([0, 1], ["DRaFT", "DrPO"])
    b.set_ylabel(f"seconds per update (reward {last['reward_ratio']:.1f}× generator)")
    b.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bench_drift(args) -> dict:
    from drpo.drift import drift_loss

    torch.set_num_threads(args.threads) if args.threads else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def timed(fn, reps: int = 5) -> float:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    def case(b, n, p, m, d, radii, separate: bool = False) -> tuple[float, float | None]:
        """(seconds, peak MiB) of one forward + backward over b sets: in one call, or one call per set."""
        x = torch.randn(b, n, d, device=device, requires_grad=True)
        yp, yn = torch.randn(b, p, d, device=device), torch.randn(b, m, d, device=device)

        def run():
            if separate:  # the same b distinct sets, one call each
                for i in range(b):
                    drift_loss(x[i:i + 1], yp[i:i + 1], yn[i:i + 1], 3000.0, 3000.0, radii).loss.sum().backward()
            else:
                drift_loss(x, yp, yn, 3000.0, 3000.0, radii).loss.sum().backward()

        return timed(run), _peak_mib(run, device)

    rows = []
    base = dict(b=1, n=24, p=8, m=8, d=512, radii=(0.02, 0.05, 0.2))
    grid = [("n", [24, 96, 384]), ("p", [4, 32, 128]), ("m", [4, 32, 128]), ("d", [64, 512, 4096, 81920]),
            ("radii", [(0.2,), (0.05, 0.2), (0.02, 0.05, 0.2)]), ("b", [1, 8, 32])]
    for name, values in grid:
        for v in values:
            params = {**base, name: v}
            if name == "n":
                params.update(p=v // 3, m=v // 3)
            sec, peak_mib = case(params["b"], params["n"], params["p"], params["m"], params["d"], params["radii"])
            rows.append({"vary": name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
                         "seconds": sec, "seconds_per_set": sec / params["b"], "peak_mib": peak_mib})
            peak = f", peak {peak_mib:.1f} MiB" if peak_mib is not None else ""
            print(f"{name}={v}: {sec * 1e3:.2f} ms ({sec / params['b'] * 1e3:.2f} ms per set{peak})", flush=True)
    # B prompts batched along B against B separate calls, small sets to large
    batching = []
    for n in (24, 96, 384):
        separate, separate_peak = case(8, n, n // 3, n // 3, 512, base["radii"], separate=True)
        batched, batched_peak = case(8, n, n // 3, n // 3, 512, base["radii"])
        batching.append({"B": 8, "n": n, "batched_s": batched, "separate_s": separate, "ratio": batched / separate,
                         "batched_peak_mib": batched_peak, "separate_peak_mib": separate_peak})
        print(f"N={n}: 8 prompts batched along B {batched * 1e3:.1f} ms vs 8 separate calls {separate * 1e3:.1f} ms", flush=True)
    result = {"benchmark": "drift", "device": str(device), "rows": rows, "batched_vs_separate": batching, **_machine()}
    write_json(Path(args.out) / "drift.json", result)
    _plot_drift(result, Path(args.out) / "drift.png")
    return result


def _plot_drift(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    varied = [v for v in dict.fromkeys(r["vary"] for r in result["rows"]) if v != "radii"]
    fig, axes = plt.subplots(1, len(varied) + 1, figsize=(3.2 * (len(varied) + 1), 3.2))
    for ax, name in zip(axes, varied):
        rows = [r for r in result["rows"] if r["vary"] == name]
        ax.loglog([r[name] for r in rows], [r["seconds_per_set"] * 1e3 for r in rows], "o-")
        ax.set_xlabel(name)
        ax.set_ylabel("ms per set (fwd + bwd)" if ax is axes[0] else "")
    ax = axes[-1]
    batching = result["batched_vs_separate"]
    xs = range(len(batching))
    ax.bar([i - 0.2 for i in xs], [b["separate_s"] * 1e3 / b["B"] for b in batching], 0.4, label="separate calls")
    ax.bar([i + 0.2 for i in xs], [b["batched_s"] * 1e3 / b["B"] for b in batching], 0.4, label="batched along B")
    ax.set_xticks(list(xs), [f"N={b['n']}" for b in batching])
    ax.set_yscale("log")
    ax.set_ylabel("ms per prompt (B = 8)")
    ax.legend(fontsize=7)
    fig.suptitle(f"drift field on {result['device']}, {result['threads']} threads")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _peak_mib(fn, device: torch.device) -> float | None:
    """Peak memory one call of `fn` adds above what was held before it, in MiB.

    CUDA: the caching allocator's peak. CPU: the kernel's resident high-water mark (VmHWM), reset
    through /proc/self/clear_refs after glibc has returned its free pages; None where Linux's
    /proc is not available.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # high-water mark := current resident size
        fn()
        return max(0.0, (_status_kib("VmHWM") - before) / 1024)
    except OSError:
        return None


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _machine() -> dict:
    import diffusers
    import transformers

    return {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}}
