"""One-step generators (METHOD.md §2.1) behind one small interface: SD-Turbo and SDXL-Turbo.

A generator encodes prompts, maps noise to clean latents in one UNet call (with or without
gradient), decodes latents to images in [-1, 1], and carries a peft LoRA. Its frozen reference is
the same UNet with the adapters switched off, so the base weights are never duplicated.

SD-Turbo: the UNet at t = 999 followed by the DDIM jump to t = 0 with SD-2.1's schedule constants;
for ε-prediction this is exactly the paper's constant projection
`x = ((z − 0.9977·ε̂)/0.0683)·0.9996 + 0.0292·ε̂`. A model whose scheduler predicts v or the sample
(the shapes world's base, trained from scratch, uses v: the ε form amplifies UNet error ×14.6)
goes through the same jump with x̂₀ and ε̂ derived from its prediction.
SDXL-Turbo: the pipeline's own scheduler (Euler ancestral, trailing) for one step.
Another timestep (an ablation, `model.timestep`) takes the general one-step projection of either
family: the same jump with ᾱ from a DDPM schedule rescaled to zero terminal SNR (METHOD §2.1).

LoRA checkpoints are `<folder>/unet_lora/` in peft's own format, so `PeftModel.from_pretrained`
reads them too; `export_pipeline` writes a plain diffusers folder with the LoRA merged.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from drpo.hub import resolve_model
from drpo.io import fresh_dir

# √ᾱ and √(1−ᾱ) of SD-2.1's scaled-linear schedule at t = 999 and t = 0 (METHOD.md §2.1).
SQRT_ALPHA_T, SQRT_ONE_MINUS_ALPHA_T = 0.0683, 0.9977
SQRT_ALPHA_0, SQRT_ONE_MINUS_ALPHA_0 = 0.9996, 0.0292
TIMESTEP = 999

ONE_STEP_FILE = "one_step.json"  # beside unet_lora/ when a LoRA was trained at another timestep
PIPELINE_FAMILIES = {"StableDiffusionPipeline": "sd-turbo", "StableDiffusionXLPipeline": "sdxl-turbo"}
LORA_DIR = "unet_lora"
# PeftModel.save_pretrained prefixes every key with this; diffusers' LoRA files use "unet."
PEFT_PREFIX = "base_model.model."


@dataclass
class PromptEmbeds:
    """Text conditioning, one row per prompt."""

    hidden: Tensor  # (B, L, C) encoder_hidden_states
    pooled: Tensor | None = None  # (B, C2) SDXL text_embeds
    time_ids: Tensor | None = None  # (B, 6) SDXL added time ids

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def _map(self, fn) -> PromptEmbeds:
        return PromptEmbeds(*(None if t is None else fn(t) for t in (self.hidden, self.pooled, self.time_ids)))

    def repeat_interleave(self, k: int) -> PromptEmbeds:
        """Each row k times, consecutively (k candidates per prompt)."""
        return self._map(lambda t: t.repeat_interleave(k, dim=0))

    def select(self, index: Sequence[int] | Tensor) -> PromptEmbeds:
        idx = torch.as_tensor(list(index) if not isinstance(index, Tensor) else index, dtype=torch.long, device=self.hidden.device)
        return self._map(lambda t: t.index_select(0, idx))

    def to(self, *args, **kwargs) -> PromptEmbeds:
        return self._map(lambda t: t.to(*args, **kwargs))


def read_family(folder: Path) -> str:
    index = folder / "model_index.json"
    if not index.exists():
        raise FileNotFoundError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    name = json.loads(index.read_text()).get("_class_name", "")
    if name not in PIPELINE_FAMILIES:
        raise ValueError(f"{index}: pipeline {name!r} is not a one-step family we know ({', '.join(PIPELINE_FAMILIES)}); set model.family")
    return PIPELINE_FAMILIES[name]


class OneStepGenerator:
    """A one-step text-to-image generator with an optional LoRA (see the module docstring)."""

    def __init__(self, pipe, family: str, *, resolution: int | None = None, dtype: torch.dtype = torch.float32, device="cpu",
                 timestep: int = TIMESTEP):
        self.pipe = pipe
        self.family = family
        self.timestep = int(timestep)
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet, self.vae, self.scheduler = pipe.unet, pipe.vae, pipe.scheduler
        self.text_encoder, self.tokenizer = pipe.text_encoder, pipe.tokenizer
        self.text_encoder_2 = getattr(pipe, "text_encoder_2", None)
        self.tokenizer_2 = getattr(pipe, "tokenizer_2", None)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.vae_scaling_factor = float(self.vae.config.scaling_factor)
        self.resolution = int(resolution or self.unet.config.sample_size * self.vae_scale_factor)
        if self.resolution % self.vae_scale_factor:
            raise ValueError(f"resolution {self.resolution} is not a multiple of the VAE factor {self.vae_scale_factor}")
        side = self.resolution // self.vae_scale_factor
        self.latent_shape = (int(self.unet.config.in_channels), side, side)
        self.prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if not 0 < self.timestep <= int(self.scheduler.config.get("num_train_timesteps", 1000)) - 1:
            raise ValueError(f"model.timestep {self.timestep} is outside 1..{self.scheduler.config.get('num_train_timesteps', 1000) - 1}")
        for module in (self.unet, self.vae, self.text_encoder, self.text_encoder_2):
            if module is not None:
                module.requires_grad_(False).eval()
        # fp16 VAEs overflow in decode unless upcast (SD's VAE says so in its config)
        self.vae_dtype = torch.float32 if dtype == torch.float16 and self.vae.config.get("force_upcast", False) else dtype
        pipe.to(self.device)  # weights already carry `dtype` (from_pretrained's dtype)
        if self.vae_dtype != dtype:
            self.vae.to(dtype=self.vae_dtype)
        # METHOD.md §2.1: SDXL decodes with slicing and tiling (tiles only start above the VAE's sample
        # size); SD-Turbo slices only decodes with gradient (see decode)
        self.always_slice = family == "sdxl-turbo"
        self.vae.use_slicing = self.always_slice
        if family == "sdxl-turbo":
            self.vae.use_tiling = True
        self._reference_depth = 0  # reference_mode nests: only the outermost exit re-enables adapters
        self._lora_dropouts: list[torch.nn.Module] = []  # active only while gradients are on

    def enable_gradient_checkpointing(self) -> None:
        """Recompute UNet and VAE activations in the backward pass instead of holding them (METHOD
        §2.3: the authors' SD-Turbo recipe only fits 24 candidates at 512 px with it). Forwards
        without gradient (sampling, reference, rewards) are unaffected."""
        self.unet.enable_gradient_checkpointing()
        self.vae.enable_gradient_checkpointing()

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, family: str | None = None, *, resolution: int | None = None,
        dtype: torch.dtype = torch.float32, device="cpu", timestep: int = TIMESTEP,
    ) -> OneStepGenerator:
        """Load from a local pipeline folder or the Hugging Face cache; never downloads."""
        folder = resolve_model(path, what="generator")
        family = family or read_family(folder)
        if family == "sd-turbo":
            from diffusers import StableDiffusionPipeline as Pipeline
        elif family == "sdxl-turbo":
            from diffusers import StableDiffusionXLPipeline as Pipeline
        else:
            raise ValueError(f"family {family!r} is not one of sd-turbo, sdxl-turbo")
        kwargs = {"dtype": dtype}
        if family == "sd-turbo":
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        if family == "sdxl-turbo" and (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists():
            kwargs["variant"] = "fp16"  # SDXL-Turbo ships fp16 weights (METHOD.md §2.1)
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # our own bars carry ETAs; loading bars are noise
        transformers_logging.disable_progress_bar()
        pipe = Pipeline.from_pretrained(folder, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, family, resolution=resolution, dtype=dtype, device=device, timestep=timestep)

    # -- prompts and noise ----------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        """The pipeline's own prompt encoding without guidance, so export and sampling agree.

        SD: last hidden state of the prompt padded/truncated to the tokenizer's max length.
        SDXL: both encoders' penultimate states concatenated, text_encoder_2's pooled output as
        text_embeds, time_ids = [res, res, 0, 0, res, res].
        """
        prompts = list(prompts)
        if not prompts:
            raise ValueError("encode_prompts: no prompts")
        out = self.pipe.encode_prompt(prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        if self.family == "sdxl-turbo":
            hidden, _, pooled, _ = out
            r = self.resolution
            time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=self.dtype, device=self.device).expand(len(prompts), -1)
            return PromptEmbeds(hidden.to(self.dtype), pooled.to(self.dtype), time_ids.contiguous())
        return PromptEmbeds(out[0].to(self.dtype))

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, I) of shape (n, C, h, w); no sigma scaling (METHOD.md §2.1)."""
        device = generator.device if generator is not None else self.device
        return torch.randn((n, *self.latent_shape), generator=generator, device=device).to(self.device, self.dtype)

    def noise_for_seeds(self, seeds: Sequence[int]) -> Tensor:
        """One CPU generator per seed, so a seed gives the same noise on every device."""
        noise = [torch.randn(self.latent_shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
        return torch.stack(noise).to(self.device, self.dtype)

    # -- the one step ---------------------------------------------------------------------------
    def _unet(self, sample: Tensor, t, embeds: PromptEmbeds) -> Tensor:
        kwargs = {}
        if embeds.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": embeds.pooled, "time_ids": embeds.time_ids}
        return self.unet(sample, t, encoder_hidden_states=embeds.hidden, **kwargs).sample

    def _jump(self, noise: Tensor, out: Tensor, alphas: tuple[float, float, float, float]) -> Tensor:
        """DDIM jump from the UNet's timestep to the target: x̂₀ and ε̂ from the prediction, then
        √ᾱ₀·x̂₀ + √(1−ᾱ₀)·ε̂. `alphas` = (√ᾱ_t, √(1−ᾱ_t), √ᾱ₀, √(1−ᾱ₀))."""
        sa_t, s1a_t, sa_0, s1a_0 = alphas
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (noise - s1a_t * eps) / sa_t
        elif self.prediction_type == "v_prediction":
            x0 = sa_t * noise - s1a_t * out
            eps = s1a_t * noise + sa_t * out
        elif self.prediction_type == "sample":
            x0 = out
            eps = (noise - sa_t * x0) / s1a_t
        else:
            raise ValueError(f"scheduler prediction_type {self.prediction_type!r} is not epsilon, v_prediction or sample")
        return sa_0 * x0 + s1a_0 * eps

    def projection_alphas(self) -> tuple[float, float, float, float]:
        """(√ᾱ_t, √(1−ᾱ_t), √ᾱ₀, √(1−ᾱ₀)) of the general projection: a DDPM schedule from the model's
        scheduler config rescaled to zero terminal SNR, ᾱ and 1−ᾱ clamped at 1e-6 (METHOD §2.1)."""
        from diffusers import DDPMScheduler

        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
        config = {k: self.scheduler.config[k] for k in keys if self.scheduler.config.get(k) is not None}
        alphas = DDPMScheduler(**config, rescale_betas_zero_snr=True).alphas_cumprod.double()

        def pair(a: float) -> tuple[float, float]:
            return max(a, 1e-6) ** 0.5, max(1.0 - a, 1e-6) ** 0.5

        return (*pair(float(alphas[self.timestep])), *pair(float(alphas[0])))

    def _sd_turbo(self, noise: Tensor, embeds: PromptEmbeds) -> Tensor:
        t = torch.full((noise.shape[0],), TIMESTEP, device=self.device, dtype=torch.long)
        return self._jump(noise, self._unet(noise, t, embeds), (SQRT_ALPHA_T, SQRT_ONE_MINUS_ALPHA_T, SQRT_ALPHA_0, SQRT_ONE_MINUS_ALPHA_0))

    def _general(self, noise: Tensor, embeds: PromptEmbeds) -> Tensor:
        t = torch.full((noise.shape[0],), self.timestep, device=self.device, dtype=torch.long)
        return self._jump(noise, self._unet(noise, t, embeds), self.projection_alphas())

    def _sdxl_turbo(self, noise: Tensor, embeds: PromptEmbeds) -> Tensor:
        scheduler = copy.deepcopy(self.scheduler)  # stateful (step index): one fresh copy per call
        scheduler.set_timesteps(1, device=self.device)
        t = scheduler.timesteps[0]
        sample = noise * scheduler.init_noise_sigma
        out = self._unet(scheduler.scale_model_input(sample, t), t, embeds)
        # the final ancestral step has zero noise scale; a fixed generator keeps the global RNG untouched
        return scheduler.step(out, t, sample, generator=torch.Generator(noise.device).manual_seed(0)).prev_sample

    def generate(self, noise: Tensor, embeds: PromptEmbeds, *, reference: bool = False) -> Tensor:
        """Clean latents (n, C, h, w) from noise in one step; `reference` = the frozen base, no grad."""
        if len(embeds) != noise.shape[0]:
            raise ValueError(f"{noise.shape[0]} noises but {len(embeds)} prompt embeddings; use embeds.repeat_interleave(k)")
        if self.timestep != TIMESTEP:
            step = self._general
        else:
            step = self._sdxl_turbo if self.family == "sdxl-turbo" else self._sd_turbo
        noise = noise.to(self.device, self.dtype)
        if reference:
            with self.reference_mode(), torch.no_grad():
                return step(noise, embeds)
        for module in self._lora_dropouts:  # LoRA dropout trains, sampling (no grad) is deterministic
            module.train(torch.is_grad_enabled())
        return step(noise, embeds)

    # -- pixels ---------------------------------------------------------------------------------
    def decode(self, latents: Tensor) -> Tensor:
        """Latents → images in [-1, 1] (differentiable).

        With gradient (DRaFT, VGGFlow, pixel feature maps) the batch is decoded one image at a time
        (same numbers), so the activations of K images are never held at once; without gradient
        (rewards, sampling) it decodes whole, which is faster."""
        self.vae.use_slicing = self.always_slice or torch.is_grad_enabled()
        x = latents.to(self.vae_dtype) / self.vae_scaling_factor
        return self.vae.decode(x).sample.clamp(-1, 1)

    def encode_images(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] → latents (posterior mode × scaling factor), as the offline variant needs."""
        post = self.vae.encode(images.to(self.device, self.vae_dtype)).latent_dist
        return (post.mode() * self.vae_scaling_factor).to(self.dtype)

    @staticmethod
    def to_uint8(images: Tensor) -> Tensor:
        return ((images.detach().float() + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()

    @staticmethod
    def to_pil(images: Tensor) -> list:
        from PIL import Image

        arr = OneStepGenerator.to_uint8(images).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(a) for a in arr]

    # -- LoRA -----------------------------------------------------------------------------------
    @property
    def has_lora(self) -> bool:
        return bool(getattr(self.unet, "peft_config", None))

    def add_lora(self, rank: int = 16, alpha: int = 16, targets: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0"), dropout: float = 0.0) -> None:
        """Attach a peft LoRA (B = 0 at init, so the model starts exactly at the base)."""
        from peft import LoraConfig

        if self.has_lora:
            raise ValueError("this generator already has a LoRA (add_lora once; load_lora restores a saved one)")
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=dropout, init_lora_weights=True)
        self.unet.add_adapter(config)
        self._after_adapter()

    def _after_adapter(self) -> None:
        # trainable LoRA weights stay fp32 under fp16/bf16 models (mixed-precision training)
        for name, p in self.unet.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()
                p.requires_grad_(True)
        # the UNet stays in eval mode; only LoRA dropout (when > 0) follows torch.is_grad_enabled()
        self._lora_dropouts = [
            m for name, m in self.unet.named_modules()
            if ".lora_dropout." in name and isinstance(m, torch.nn.Dropout) and m.p > 0
        ]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for name, p in self.unet.named_parameters() if "lora_" in name]

    @contextlib.contextmanager
    def reference_mode(self) -> Iterator[None]:
        """The frozen base: the same UNet with its adapters switched off (no weight copy)."""
        if not self.has_lora:
            yield
            return
        if self._reference_depth == 0:
            self.unet.disable_adapters()
        self._reference_depth += 1
        try:
            yield
        finally:
            self._reference_depth -= 1
            if self._reference_depth == 0:
                self.unet.enable_adapters()

    def save_lora(self, folder: str | os.PathLike) -> Path:
        """`folder/unet_lora/` in peft's format (what `PeftModel.save_pretrained` writes):
        adapter_model.safetensors with `base_model.model.` keys + adapter_config.json."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        from drpo.io import atomic_path, write_text

        if not self.has_lora:
            raise ValueError("this generator has no LoRA to save (call add_lora first)")
        out = Path(folder) / LORA_DIR
        state = {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(self.unet).items()}
        with atomic_path(out / "adapter_model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        config = self.unet.peft_config["default"].to_dict()
        config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
        config.update(base_model_name_or_path=None, inference_mode=True)
        write_text(out / "adapter_config.json", json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        if self.timestep != TIMESTEP:  # the LoRA is only right at the timestep it was trained at
            write_text(Path(folder) / ONE_STEP_FILE, json.dumps({"timestep": self.timestep}) + "\n")
        return out

    def load_lora(self, folder: str | os.PathLike) -> None:
        """Load `folder/unet_lora/` (or a folder that is itself the adapter), adding the adapter if absent.

        Accepts peft keys with or without `base_model.model.` and diffusers' `unet.` prefix.
        """
        from peft import LoraConfig
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        from drpo.errors import corrupt_file

        folder = Path(folder)
        src = folder / LORA_DIR if (folder / LORA_DIR).is_dir() else folder
        weights, config_file = src / "adapter_model.safetensors", src / "adapter_config.json"
        one_step = src.parent / ONE_STEP_FILE
        if one_step.is_file():
            self.timestep = int(json.loads(one_step.read_text())["timestep"])
        if not weights.exists() or not config_file.exists():
            raise FileNotFoundError(f"no LoRA at {src} (expected adapter_model.safetensors and adapter_config.json)")
        try:
            config = LoraConfig.from_pretrained(str(src))
        except Exception as err:  # peft raises several types for a truncated or foreign JSON
            raise corrupt_file(config_file, err, "copy the LoRA folder again, or train it again") from None
        if self.has_lora:
            mine = self.unet.peft_config["default"]
            if (mine.r, mine.lora_alpha, set(mine.target_modules)) != (config.r, config.lora_alpha, set(config.target_modules)):
                raise ValueError(
                    f"{config_file}: r={config.r} alpha={config.lora_alpha} targets={sorted(config.target_modules)} but this "
                    f"generator's LoRA has r={mine.r} alpha={mine.lora_alpha} targets={sorted(mine.target_modules)}; "
                    "make the lora config match the checkpoint (or load into a generator without add_lora)"
                )
        else:
            config.inference_mode = False
            self.unet.add_adapter(config)
        try:
            loaded = load_file(str(weights))
        except Exception as err:  # safetensors raises its own type for a bad header
            raise corrupt_file(weights, err, "copy the LoRA folder again, or train it again") from None
        state = {}
        for key, value in loaded.items():
            for prefix in (PEFT_PREFIX, "unet."):
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    break
            state[key] = value
        result = set_peft_model_state_dict(self.unet, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ValueError(f"{weights}: keys that do not match this UNet, e.g. {unexpected[:3]}")
        missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k]
        if missing:
            raise ValueError(f"{weights}: LoRA weights missing for this UNet, e.g. {missing[:3]}")
        self._after_adapter()

    def fuse_lora(self) -> None:
        """Merge the LoRA into the base weights and drop the adapter (for export and fast sampling)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if not self.has_lora:
            return
        for module in self.unet.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
        self.unet.unload_lora()
        self._lora_dropouts = []

    def export_pipeline(self, folder: str | os.PathLike) -> Path:
        """A standard diffusers pipeline folder with the LoRA fused; the generator itself is unchanged.

        `AutoPipelineForText2Image.from_pretrained(folder)` loads it and samples in one step.
        """
        folder = Path(folder)
        unet = copy.deepcopy(self.unet)
        clone = replace_unet(self, unet)
        clone.fuse_lora()
        # keep the pipeline's own settings (requires_safety_checker, force_zeros_for_empty_prompt, ...)
        accepted = inspect.signature(type(self.pipe).__init__).parameters
        components = self.pipe.components
        settings = {k: v for k, v in self.pipe.config.items() if k in accepted and k not in components}
        pipe = type(self.pipe)(**{**components, "unet": clone.unet}, **settings)
        with fresh_dir(folder) as tmp:
            pipe.save_pretrained(tmp)
        return folder


def replace_unet(gen: OneStepGenerator, unet) -> OneStepGenerator:
    """A shallow copy of `gen` that uses another UNet (export fuses a copy, not the original)."""
    clone = copy.copy(gen)
    clone.unet = unet
    return clone

