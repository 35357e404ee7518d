"""`drpo sample`: images of a test set for any generator, with a manifest (METHOD.md §5.1).

Layout: `<out>/seed_<s>/images/<prompt_id:06d>.png` and `<out>/manifest.jsonl`, one row per image
(prompt_id, prompt, seed, latent seed = seed·10⁶ + prompt_id, checkpoint, sampler settings, image
path relative to `<out>`, metadata of the prompt row). Finished images are skipped on a re-run, so
a killed job resumes; `<out>/sampler.json` records the settings, and a change of settings forces a
full resample rather than a mix. `--shard i/n` samples every n-th image; `drpo sample --merge` then
writes the manifest of all shards.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from drpo.contracts import ManifestRow, read_manifest, write_manifest
from drpo.io import write_json
from drpo.models.seeds import latent_seed

log = logging.getLogger(__name__)


@dataclass
class SamplerSettings:
    """Everything that changes the pixels; a change forces a resample."""

    model: str
    model_type: str = "one_step"  # one_step | multi_step
    family: str | None = None
    lora: str | None = None
    num_inference_steps: int = 1
    guidance_scale: float = 0.0
    scheduler: str = "default"
    resolution: int | None = None
    dtype: str = "float32"
    weights: str = ""  # fingerprint of the model and LoRA files: new weights, new images
    extra: dict = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"{self.model_type}:{self.scheduler}:{self.num_inference_steps}:{self.guidance_scale:g}"


def fingerprint(*paths: str | Path | None) -> str:
    """A digest of the weight files under the given paths (name, size, mtime): a retrained LoRA or
    a replaced model changes it, so `sample` redraws rather than keeping the old images."""
    import hashlib

    h = hashlib.sha256()
    for root in paths:
        if not root or not Path(root).exists():
            h.update(str(root).encode())  # a hub id: the id itself
            continue
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in (".safetensors", ".bin", ".json", ".pt"))
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(root.parent)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def image_relpath(seed: int, prompt_id: int) -> str:
    return f"seed_{seed}/images/{int(prompt_id):06d}.png"


def _rows_for(prompts: list[dict], seeds: list[int], settings: SamplerSettings, out: Path) -> list[ManifestRow]:
    return [
        ManifestRow(
            prompt_id=int(p["prompt_id"]), seed=seed, prompt=p["prompt"], image_path=image_relpath(seed, p["prompt_id"]),
            latent_seed=latent_seed(seed, p["prompt_id"]), metadata={k: v for k, v in p.items() if k not in ("prompt", "prompt_id")},
            resolution=settings.resolution, model_type=settings.model_type, sampler=settings.tag,
            num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
            checkpoint_path=settings.lora or settings.model, folder=str(out))
        for seed in seeds for p in prompts
    ]


def _readable(path: Path) -> bool:
    """An image a killed job (or a full disk) left truncated is drawn again, not kept."""
    if not path.exists():
        return False
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def _reset_if_settings_changed(out: Path, settings: SamplerSettings) -> int | None:
    """Wipe the folder when the settings differ from the recorded ones; the recorded resolution."""
    stamp = out / "sampler.json"
    recorded = json.loads(stamp.read_text()) if stamp.exists() else None
    if recorded is not None and recorded.get("settings") != asdict(settings):
        log.warning("sampler settings changed since %s was sampled: resampling everything", out)
        for d in out.glob("seed_*"):
            shutil.rmtree(d, ignore_errors=True)
        for m in out.glob("manifest*.jsonl"):
            m.unlink()
        recorded = None
    return (recorded or {}).get("resolution")


class _OneStep:
    def __init__(self, settings: SamplerSettings, device: str):
        import torch

        from drpo.models.generators import OneStepGenerator

        self.gen = OneStepGenerator.from_pretrained(
            settings.model, settings.family, resolution=settings.resolution, dtype=getattr(torch, settings.dtype), device=device
        )
        if settings.lora:
            self.gen.load_lora(settings.lora)
        self.resolution = self.gen.resolution

    def __call__(self, prompts: list[str], seeds: list[int]):
        import torch

        with torch.inference_mode():  # no autograd bookkeeping at all: these tensors never meet a backward
            latents = self.gen.generate(self.gen.noise_for_seeds(seeds), self.gen.encode_prompts(prompts))
            return self.gen.to_pil(self.gen.decode(latents))


class _MultiStep:
    """Reference rows of the paper (SD1.5, SD2.1, SDXL, LCM): a diffusers pipeline, per-image generators."""

    SCHEDULERS = {"ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler", "lcm": "LCMScheduler"}

    def __init__(self, settings: SamplerSettings, device: str):
        import diffusers
        import torch

        from drpo.hub import resolve_model

        path = resolve_model(settings.model, what="reference model")
        self.pipe = diffusers.AutoPipelineForText2Image.from_pretrained(path, torch_dtype=getattr(torch, settings.dtype))
        if settings.scheduler != "default":
            cls = getattr(diffusers, self.SCHEDULERS[settings.scheduler])
            self.pipe.scheduler = cls.from_config(self.pipe.scheduler.config)
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.device, self.settings = device, settings
        self.resolution = settings.resolution or self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def __call__(self, prompts: list[str], seeds: list[int]):
        import torch

        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        s = self.settings
        kwargs = {"height": s.resolution, "width": s.resolution} if s.resolution else {}
        return self.pipe(
            prompts, num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale, generator=gens, **kwargs
        ).images


def sample(
    prompts_path: str | Path,
    out: str | Path,
    settings: SamplerSettings,
    seeds: list[int],
    *,
    batch_size: int = 4,
    shard: tuple[int, int] = (0, 1),
    device: str = "cpu",
    progress: bool = True,
    loaded: dict | None = None,
) -> Path:
    """Sample every (seed, prompt) of this shard that is not on disk yet; write the manifest.
    `loaded`: a dict that keeps the generator once loaded, so several test sets load it once."""
    from tqdm.auto import tqdm

    from drpo.data.prompts import load_prompts
    from drpo.io import save_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if settings.model_type == "one_step" and (settings.num_inference_steps != 1 or settings.guidance_scale != 0):
        raise ValueError("one-step generators sample with num_inference_steps 1 and guidance 0 (METHOD.md §5.1)")
    prompts = load_prompts(prompts_path)
    resolution = _reset_if_settings_changed(out, settings) or settings.resolution
    index, count = shard
    rows = [r for i, r in enumerate(_rows_for(prompts, seeds, settings, out)) if i % count == index]
    todo = [r for r in rows if not _readable(out / r.image_path)]
    if todo:
        loaded = {} if loaded is None else loaded
        if "model" not in loaded:
            loaded["model"] = (_OneStep if settings.model_type == "one_step" else _MultiStep)(settings, device)
        model = loaded["model"]
        resolution = model.resolution
        write_json(out / "sampler.json", {"settings": asdict(settings), "resolution": resolution})
        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"sampling {out.name}", disable=not progress, unit="img")
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            images = model([r.prompt for r in chunk], [r.latent_seed for r in chunk])
            for row, image in zip(chunk, images):
                save_image(out / row.image_path, image)
            bar.update(len(chunk))
        bar.close()
    name = "manifest.jsonl" if count == 1 else f"manifest.shard-{index}-of-{count}.jsonl"
    return write_manifest(out / name, [replace(r, resolution=resolution) for r in rows])


def merge_shards(out: str | Path) -> Path:
    """Concatenate `manifest.shard-*.jsonl` into `manifest.jsonl` (sorted by seed, prompt_id)."""
    out = Path(out)
    shards = sorted(out.glob("manifest.shard-*-of-*.jsonl"))
    if not shards:
        raise FileNotFoundError(f"{out}: no manifest.shard-*-of-*.jsonl to merge")
    total = {int(p.name.split("-of-")[1].split(".")[0]) for p in shards}
    if len(total) != 1 or len(shards) != total.pop():
        raise ValueError(f"{out}: incomplete or mixed shard set: {[p.name for p in shards]}")
    rows = [r for p in shards for r in read_manifest(p)]
    missing = [r.image_path for r in rows if not (out / r.image_path).exists()]
    if missing:
        raise FileNotFoundError(f"{out}: {len(missing)} images listed in shard manifests are missing, e.g. {missing[0]}")
    rows.sort(key=lambda r: (r.seed, r.prompt_id))
    return write_manifest(out / "manifest.jsonl", rows)
