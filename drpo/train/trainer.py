"""The training loop shared by every method: accelerate, accumulation, clipping, checkpoints, resume,
MLflow tracking and a progress bar.

Gradients are averaged across processes explicitly once per update (what DDP does with no_sync
during accumulation): the frozen reference shares the student's weights with its LoRA adapters
switched off, and a DDP wrapper would hide that switch.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from drpo.config import config_hash, to_dict
from drpo.data.prompts import load_prompts
from drpo.devices import resolve_device
from drpo.errors import UserError, corrupt_file
from drpo.io import atomic_path, write_json
from drpo.models.seeds import latent_seed
from drpo.train.base import Method, Models
from drpo.train.config import TrainConfig
from drpo.train.data import PromptSchedule, micro_seed, torch_generator
from drpo.train.registry import method_spec
from drpo.train.timing import ComponentTimer

log = logging.getLogger(__name__)
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
METRICS_LOG = "metrics.jsonl"  # the tracker's local log; a checkpoint keeps a copy of it
PREVIOUS_RUN_FILES = ("config.json", METRICS_LOG, "final", "samples")  # with checkpoint-*: one run's files


class TrainingDiverged(ValueError):
    """Non-finite loss or gradients that loss scaling cannot explain: the run stops before the update
    reaches the weights, so its last checkpoint stays the last good model and no final/ is written."""


def build_models(cfg: TrainConfig, device: torch.device) -> Models:
    from drpo.models.generators import OneStepGenerator

    dtype = getattr(torch, cfg.model.dtype)
    gen = OneStepGenerator.from_pretrained(
        cfg.model.path, cfg.model.family, resolution=cfg.model.resolution, dtype=dtype, device=device, timestep=cfg.model.timestep
    )
    gen.add_lora(rank=cfg.lora.rank, alpha=cfg.lora.alpha, targets=tuple(cfg.lora.targets), dropout=cfg.lora.dropout)
    if cfg.gradient_checkpointing:
        gen.enable_gradient_checkpointing()
    reward = features = None
    needs = method_spec(cfg.method)
    if needs.reward:
        from drpo.rewards import build_reward_ensemble, fp32_specs

        specs = [to_dict(r) for r in cfg.reward]
        if needs.reward_gradient:
            specs = fp32_specs(specs)
        reward = build_reward_ensemble(specs, device=device)
    if needs.features:
        from drpo.models.features import build_feature_map

        options = dict(cfg.features.options)
        if cfg.features.name == "teacher_unet":
            options.setdefault("unet", gen.unet)
            options.setdefault("disable_adapter", gen.reference_mode)
        features = build_feature_map(cfg.features.name, **options).to(device)
    return Models(generator=gen, reward=reward, features=features)


def build_method(cfg: TrainConfig, models: Models, timer: ComponentTimer) -> Method:
    return method_spec(cfg.method).load()(cfg, models, timer)


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with training_state.json), oldest first."""
    out = []
    root = Path(output_dir)
    if root.exists():
        for p in root.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and (p / "training_state.json").exists():
                out.append((int(m.group(1)), p))
    return sorted(out)


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """A checkpoint's training_state.json and training_state.pt, after checking that its LoRA reads.
    A truncated or corrupt file is a UserError naming it."""
    from safetensors.torch import load_file

    fix = f"delete {path} to resume from the checkpoint before it"
    state_json, state_pt = path / "training_state.json", path / "training_state.pt"
    lora = path / "unet_lora" / "adapter_model.safetensors"
    try:
        info = json.loads(state_json.read_text())
    except (OSError, ValueError) as err:
        raise corrupt_file(state_json, err, fix) from None
    try:
        state = torch.load(state_pt, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated zip, pickle or tensor: torch raises several types
        raise corrupt_file(state_pt, err, fix) from None
    try:
        load_file(str(lora))
    except Exception as err:  # safetensors raises its own error type for a bad header
        raise corrupt_file(lora, err, fix) from None
    return info, state


def resume_hash(cfg: TrainConfig) -> str:
    """What a checkpoint must share with the config to be resumed: everything that changes the
    updates (not the step budget, checkpointing or tracking, which a resumed run may extend)."""
    data = to_dict(cfg)
    for key in ("steps", "checkpoint", "tracking", "output_dir"):
        data.pop(key, None)
    return config_hash(data)


def _logged_step(line: str) -> float:
    """The step of one metrics.jsonl line; infinity for a line a kill cut short."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _rng_state() -> dict:
    # numpy's state as plain lists, so the checkpoint loads with torch.load(weights_only=True)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, cfg: TrainConfig, *, resume: bool | str = False, tracker=None, progress: bool = True):
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers.optimization import get_scheduler

        self.cfg = cfg
        device = resolve_device(cfg.model.device)
        # mixed precision is ours (self.autocast, self.scaler), not accelerate's: the same on CPU and GPU,
        # and accelerate's process-wide state would refuse a second trainer of another precision
        self.accelerator = Accelerator(cpu=device.type == "cpu")
        acc = self.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes
        self.device = acc.device
        self.out = Path(cfg.output_dir)
        self.timer = ComponentTimer(self.device)
        set_seed(cfg.seed)  # the same LoRA init on every process
        self.models = build_models(cfg, self.device)
        self.gen = self.models.generator
        set_seed(cfg.seed + self.rank)  # then each process its own stream (as the authors' trainers)
        # fp16 needs dynamic loss scaling (METHOD §2.7): the DrPO loss is a mean over 1e4-1e5 elements
        # divided by the accumulation, so unscaled per-element gradients underflow fp16. bf16 needs none.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.mixed_precision == "fp16")

        self.start_step = 0
        self.resumed_from: Path | None = None
        self._resume_state: dict = {}
        ckpt = self._find_resume(resume)
        if ckpt is not None:
            self.gen.load_lora(ckpt)  # before the optimizer is built, so it holds these parameters
        self.params = [p for p in self.gen.trainable_parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
        # warmup/total are counted in optimizer steps ×num_processes, as accelerate-prepared schedulers step
        self.scheduler = get_scheduler(
            o.scheduler, self.optimizer, num_warmup_steps=o.warmup_steps * self.world, num_training_steps=cfg.steps * self.world
        )
        self.method = build_method(cfg, self.models, self.timer)
        if method_spec(cfg.method).dataset:  # its prompts are its pairs'
            rows = self.method.pairs.prompt_rows()
        else:
            rows = load_prompts(cfg.prompts.path, cfg.prompts.max_prompts, key="prompts.path")
        self.schedule = PromptSchedule(rows, cfg.prompts.shuffle_seed, cfg.grad_accum * self.world, cfg.prompts_per_micro_step,
                                       balance=cfg.prompts.balance)
        self.prompt_rows = rows
        self.sample_rows = rows[: cfg.tracking.sample_prompts]
        if ckpt is not None:
            self._load_state(ckpt)
        self.tracker = tracker
        self.progress = progress and acc.is_main_process

    # -- checkpoints -----------------------------------------------------------------------------
    def _find_resume(self, resume: bool | str) -> Path | None:
        """The checkpoint to continue from: the given one, or the newest readable one of this config.
        A corrupt checkpoint (a truncated file from a crash or a full disk) is skipped with a warning
        naming the file, so the previous one is used; a given corrupt checkpoint is an error."""
        if not resume:
            return None
        if isinstance(resume, str) and resume not in ("auto", "latest"):
            path = Path(resume)
            if not (path / "training_state.json").exists():
                raise FileNotFoundError(f"--resume {path}: not a complete checkpoint (no training_state.json)")
            self._resume_state = read_checkpoint(path)[1]
            return path
        found = list_checkpoints(self.out)
        want = resume_hash(self.cfg)
        readable = 0
        for _, path in reversed(found):
            try:
                info, state = read_checkpoint(path)
            except UserError as err:
                log.warning("skipping a corrupt checkpoint: %s", err)
                continue
            readable += 1
            if info.get("resume_hash") == want:
                self._resume_state = state
                return path
        if readable and self.accelerator.is_main_process:
            log.warning("--resume: the checkpoints in %s were trained with another config; starting from scratch "
                        "(they are moved to %s/replaced/)", self.out, self.out)
        return None

    def _metrics_log(self) -> Path | None:
        return getattr(self.tracker, "metrics_path", None) if self.tracker is not None else None

    def _start_metrics_log(self) -> None:
        """The local log holds exactly updates 1..start_step before the loop appends: empty for a fresh
        run (not the lines of an earlier run in the same folder), the resumed checkpoint's copy on resume
        (Snakemake deletes a job's outputs before rerunning it; a killed run logged past its checkpoint)."""
        log = self._metrics_log()
        if log is None:
            return
        kept = []
        if self.resumed_from is not None:
            saved = self.resumed_from / METRICS_LOG
            source = saved if saved.exists() else log  # a checkpoint without a copy: trim the live log
            lines = source.read_text().splitlines() if source.exists() else []
            kept = [line for line in lines if _logged_step(line) <= self.start_step]
        with atomic_path(log) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def _set_aside_previous_run(self) -> Path | None:
        """A fresh run in a folder that holds another run (a finished one, or checkpoints of another
        config) moves that run's files to `replaced/<time>/` first: a fresh run that then fails erases
        nothing, and `--resume` never overwrites another config's checkpoints."""
        previous = [p for p in self.out.iterdir() if p.name in PREVIOUS_RUN_FILES or p.name.startswith("checkpoint-")]
        if not previous:
            return None
        kept = self.out / "replaced" / time.strftime("%Y%m%d-%H%M%S")
        while kept.exists():
            kept = kept.with_name(kept.name + "+")
        kept.mkdir(parents=True)
        for path in previous:
            os.replace(path, kept / path.name)
        log.info("%s held an earlier run (%s); starting from scratch, the earlier run is kept in %s",
                 self.out, ", ".join(sorted(p.name for p in previous)), kept)
        return kept

    def _load_state(self, ckpt: Path) -> None:
        state = self._resume_state  # read (and checked) by _find_resume
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"][min(self.rank, len(state["rng"]) - 1)])
        self.method.load_state_dict(state.get("method", {}))
        self.start_step = int(state["step"])
        self.resumed_from = ckpt
        if self.accelerator.is_main_process:
            log.info("resumed from %s at update %d", ckpt, self.start_step)

    def save_checkpoint(self, step: int) -> Path | None:
        """checkpoint-{step}/: unet_lora/ (PEFT), training_state.pt and .json; written atomically."""
        acc = self.accelerator
        rng = acc.gather_for_metrics([_rng_state()], use_gather_object=True) if self.world > 1 else [_rng_state()]
        final = self.out / f"checkpoint-{step}"
        if acc.is_main_process:
            tmp = self.out / f".checkpoint-{step}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self.gen.save_lora(tmp)
            state = {"step": step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng}
            if self.scaler.is_enabled():
                state["scaler"] = self.scaler.state_dict()
            if self.method.state_dict():  # a method's own running state (VGGFlow's clipping threshold)
                state["method"] = self.method.state_dict()
            torch.save(state, tmp / "training_state.pt")
            write_json(tmp / "training_state.json",
                       {"step": step, "config_hash": config_hash(self.cfg), "resume_hash": resume_hash(self.cfg), "time": time.time()})
            log = self._metrics_log()
            if log is not None and log.exists():  # the log so far travels with the state it describes
                shutil.copyfile(log, tmp / METRICS_LOG)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            limit = self.cfg.checkpoint.total_limit
            if limit:
                for _, old in list_checkpoints(self.out)[:-limit]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    # -- the loop --------------------------------------------------------------------------------
    def _sync_gradients(self) -> None:
        if self.world == 1:
            return
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= self.world

    def autocast(self):
        """Mixed precision of the forward passes (also on CPU, where accelerate's autocast is a no-op for fp16)."""
        mp = self.cfg.mixed_precision
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES.get(mp, torch.float32), enabled=mp in AUTOCAST_DTYPES)

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        sums: dict[str, float] = defaultdict(float)
        # methods run their own backward passes (DRaFT one per chunk): each multiplies its loss by
        # `scale`, so the loss scale travels in it; scaler.scale(1) is that factor (and starts the scaler)
        loss_scale = float(self.scaler.scale(torch.ones((), device=self.device))) if self.scaler.is_enabled() else 1.0
        for micro in range(cfg.grad_accum):
            global_micro = micro * self.world + self.rank
            batch = self.schedule.batch(step, global_micro)
            noise_gen = torch_generator(micro_seed(cfg.seed, step, global_micro), self.device)
            with self.autocast():
                metrics = self.method.backward(batch, loss_scale / cfg.grad_accum, noise_gen)
            for k, v in metrics.items():
                sums[k] += v / cfg.grad_accum
        with self.timer("optimizer"):
            self._sync_gradients()  # before unscaling: every process then sees the same inf/NaN and skips alike
            self.scaler.unscale_(self.optimizer)  # no-op unless fp16
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip)
            skipped = self.scaler.is_enabled() and not torch.isfinite(grad_norm)
            loss = sums.get("loss", 0.0)
            # fp16 overflow is skipped and the scale lowered; anything else non-finite is divergence
            finite = bool(torch.isfinite(grad_norm)) and loss == loss and abs(loss) != float("inf")
            if (not skipped and not finite) or (skipped and self.scaler.get_scale() < 1.0):
                self._diverged(step, f"loss {loss:.4g}, gradient norm {float(grad_norm):.4g}")
            self.scaler.step(self.optimizer)  # skips the step when a gradient is inf/NaN (fp16 overflow)
            self.scaler.update()
            if not skipped:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if not bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all()):  # one sync, not one per tensor
            self._diverged(step, "the update made LoRA weights non-finite")
        if skipped:
            log.warning("update %d: inf/NaN gradient at fp16 loss scale %g; step skipped, scale now %g",
                        step + 1, loss_scale, self.scaler.get_scale())
        self.method.after_update()
        out = dict(sums)
        out["grad_norm"] = float(grad_norm)
        out["lr"] = self.scheduler.get_last_lr()[0]
        if self.scaler.is_enabled():
            out["amp/loss_scale"] = loss_scale
            out["amp/skipped"] = float(skipped)
        timings = self.timer.pop()
        out.update(timings)
        out["time/update"] = sum(timings.values())
        return out

    def _diverged(self, step: int, what: str) -> None:
        last = list_checkpoints(self.out)
        kept = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training diverged at update {step + 1} ({what}); {kept}, and no final/ was written. "
            f"Lower optim.lr (now {self.cfg.optim.lr:g}) or the drift/loss weights, then run again"
        )

    def sample_grid(self, step: int) -> Path | None:
        """A grid of the current model's samples for a few fixed prompts and seeds."""
        from drpo.grid import save_grid

        rows = self.sample_rows
        if not rows:
            return None
        with torch.no_grad():
            embeds = self.gen.encode_prompts([r["prompt"] for r in rows])
            noise = self.gen.noise_for_seeds([latent_seed(self.cfg.seed, i) for i in range(len(rows))])
            images = self.gen.to_pil(self.gen.decode(self.gen.generate(noise, embeds)))
        path = self.out / "samples" / f"step_{step:06d}.png"
        save_grid(path, images, [r["prompt"] for r in rows])
        return path

    def train(self) -> Path:
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.resumed_from is None:
                self._set_aside_previous_run()
            write_json(self.out / "config.json", to_dict(cfg))
            self._start_metrics_log()
            if self.tracker and not method_spec(cfg.method).dataset:  # the offline variant's prompts are its pairs'
                self.tracker.log_prompt_set(cfg.prompts.path, self.prompt_rows)
        bar = tqdm(total=cfg.steps, initial=self.start_step, desc=f"{cfg.method} updates", disable=not self.progress, dynamic_ncols=True)
        # without the bar (a workflow job's log file): a line every ~5 % of the run, with its ETA
        line_every = max(1, (cfg.steps - self.start_step) // 20)
        started = time.perf_counter()
        for step in range(self.start_step, cfg.steps):
            metrics = self.train_step(step)
            done = step + 1
            if acc.is_main_process:
                if self.tracker and done % cfg.tracking.log_every == 0:
                    self.tracker.log_metrics(namespace_rewards(metrics, reward_name(cfg)), step=done)
                loss, reward = metrics.get("loss", float("nan")), metrics.get("reward/mean", float("nan"))
                bar.set_postfix(loss=f"{loss:.3g}", reward=f"{reward:.3g}")
                if not self.progress and acc.is_main_process and ((done - self.start_step) % line_every == 0 or done == cfg.steps):
                    log.info("%s", progress_line(cfg.method, done, cfg.steps, done - self.start_step, time.perf_counter() - started,
                                                 loss, reward))
            bar.update(1)
            if cfg.tracking.sample_grid_every and done % cfg.tracking.sample_grid_every == 0 and acc.is_main_process:
                grid = self.sample_grid(done)
                if grid and self.tracker:
                    self.tracker.log_image(grid, "samples", step=done)
            if cfg.checkpoint.every and done % cfg.checkpoint.every == 0 and done < cfg.steps:
                self.save_checkpoint(done)
        bar.close()
        final = self.out / "final"
        if acc.is_main_process:
            tmp = self.out / ".final.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self.gen.save_lora(tmp)
            write_json(tmp / "training_state.json", {"step": cfg.steps, "config_hash": config_hash(cfg), "time": time.time()})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            if self.tracker:
                self.tracker.log_artifact(final, "final")
        acc.wait_for_everyone()
        return final


def reward_name(cfg: TrainConfig) -> str:
    """The name a run's reward metrics are logged under: `pickscore`, or `pickscore+hpsv2` for an ensemble."""
    return "+".join(r.name for r in cfg.reward)


def namespace_rewards(metrics: dict[str, float], name: str) -> dict[str, float]:
    """`reward/mean` -> `reward/<name>/mean`: runs of different rewards never share a chart (0-1
    checker scores beside PickScore's ~0.22 or an aesthetic score's ~6)."""
    return {f"reward/{name}/{k[len('reward/'):]}" if k.startswith("reward/") else k: v for k, v in metrics.items()}


def progress_line(method: str, done: int, total: int, done_here: int, seconds: float, loss: float, reward: float) -> str:
    """`drpo updates 40/200 (20%) loss 0.0213 reward 0.412 | 12.5 s/update, ETA 33m20s`."""
    from drpo.progress import duration

    per = seconds / max(done_here, 1)
    return (f"{method} updates {done}/{total} ({100 * done // max(total, 1)}%) loss {loss:.4g} reward {reward:.4g} | "
            f"{per:.3g} s/update, ETA {duration(per * (total - done))}")


def read_final_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """The LoRA tensors a run saved (for tests and comparisons)."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "unet_lora" / "adapter_model.safetensors"))
