"""Frozen feature maps φ (METHOD.md §2.2), chosen by name in config.

Each map returns named keys, every value a per-image token set `(K, T, D)`; the trainer pools the
K·T tokens of one prompt into one drift set. Maps are frozen (eval, no parameter gradients) but
differentiable with respect to their input, so the drift's gradient reaches the generator.

| name | input | keys |
|---|---|---|
| latent_mae | SD latents | layer{s}[_blk{b}]_{mean,std}[_{p}] — default the six layer4 keys |
| vit_mae | pixels | layer{L}_patch_mean, layer{L}_patch_std, layer{L}_cls |
| teacher_unet | latents | one key per hooked block (4×4 average-pooled, flattened) |
| dinov2 | pixels | layer{L}_patch_mean, _patch_std, _cls (L in layers) |
| latent | latents | latent_{mean,std}[_{p}], latent (all spatial tokens) |
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STD_EPS = 1e-6
LAYER4_KEYS = ("layer4_mean", "layer4_std", "layer4_mean_2", "layer4_std_2", "layer4_mean_4", "layer4_std_4")
LATENT_KEYS = ("latent_mean", "latent_std", "latent_mean_2", "latent_std_2", "latent_mean_4", "latent_std_4")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def window_stats(fmap: Tensor, name: str, pools: Sequence[int] = (2, 4)) -> dict[str, Tensor]:
    """Mean/std of a map (K, C, H, W): global → (K, 1, C), per p×p window → (K, (H/p)(W/p), C).

    std is sqrt(var + 1e-6) in fp32; a window size that does not divide H and W is skipped.
    """
    x = fmap.float()
    k, c, h, w = x.shape
    out = {
        f"{name}_mean": x.mean(dim=(2, 3)).unsqueeze(1),
        f"{name}_std": (x.var(dim=(2, 3), unbiased=False) + STD_EPS).sqrt().unsqueeze(1),
    }
    for p in pools:
        if h % p or w % p:
            continue
        win = x.reshape(k, c, h // p, p, w // p, p)
        mean = win.mean(dim=(3, 5))
        var = win.var(dim=(3, 5), unbiased=False)
        out[f"{name}_mean_{p}"] = mean.flatten(2).transpose(1, 2)
        out[f"{name}_std_{p}"] = (var + STD_EPS).sqrt().flatten(2).transpose(1, 2)
    return out


class FeatureMap(nn.Module):
    """Base class: frozen, with named keys and an input kind ("latents" or "pixels" in [-1, 1])."""

    input_kind = "latents"

    def __init__(self, keys: Sequence[str]):
        super().__init__()
        self.keys = tuple(keys)

    def freeze(self) -> FeatureMap:
        self.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> FeatureMap:  # always eval: no dropout, fixed norms
        return super().train(False)

    def select(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        missing = [k for k in self.keys if k not in feats]
        if missing:
            raise KeyError(f"{type(self).__name__}: keys {missing} not produced; available: {sorted(feats)}")
        return {k: feats[k] for k in self.keys}


class LatentStats(FeatureMap):
    """Raw latent statistics: the paper's "Latent" ablation (which collapses on SD-Turbo)."""

    def __init__(self, keys: Sequence[str] = LATENT_KEYS):
        super().__init__(keys)

    def forward(self, x: Tensor, cond: dict | None = None) -> dict[str, Tensor]:
        feats = window_stats(x, "latent")
        feats["latent"] = x.float().flatten(2).transpose(1, 2)
        return self.select(feats)


class LatentMAEFeatures(FeatureMap):
    """The latent-MAE ResNet on SD latents (§2.2a); weights from `drpo.models.latent_mae`."""

    def __init__(self, path: str, keys: Sequence[str] = LAYER4_KEYS, pools: Sequence[int] = (2, 4)):
        super().__init__(keys)
        from drpo.models.latent_mae import load_latent_mae

        self.net = load_latent_mae(path)
        self.pools = tuple(pools)
        self.freeze()

    def forward(self, x: Tensor, cond: dict | None = None) -> dict[str, Tensor]:
        with torch.autocast(x.device.type, enabled=False):  # fp32 weights under fp16 autocast
            maps = self.net(x.float())
        feats: dict[str, Tensor] = {}
        for name, fmap in maps.items():
            if any(k.startswith(name + "_") for k in self.keys):
                feats.update(window_stats(fmap, name, self.pools))
        return self.select(feats)


def _resize_normalise(x: Tensor, size: int, mean, std) -> Tensor:
    """[-1, 1] → [0, 1] → bicubic resize (no antialias) → normalise."""
    x = ((x.float() + 1) / 2).clamp(0, 1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def _token_stats(hidden: Tensor, prefix: str) -> dict[str, Tensor]:
    patches = hidden[:, 1:].float()
    return {
        f"{prefix}_patch_mean": patches.mean(dim=1, keepdim=True),
        f"{prefix}_patch_std": (patches.var(dim=1, unbiased=False, keepdim=True) + STD_EPS).sqrt(),
        f"{prefix}_cls": hidden[:, :1].float(),
    }


def _image_stats(path) -> tuple[tuple, tuple]:
    """mean/std from a preprocessor_config.json next to the weights, ImageNet's otherwise."""
    import json
    from pathlib import Path

    cfg = Path(path) / "preprocessor_config.json"
    if cfg.exists():
        data = json.loads(cfg.read_text())
        return tuple(data.get("image_mean", IMAGENET_MEAN)), tuple(data.get("image_std", IMAGENET_STD))
    return IMAGENET_MEAN, IMAGENET_STD


class ViTMAEFeatures(FeatureMap):
    """ViT-MAE on decoded pixels (§2.2b). `mask_ratio` 0 is deterministic (all patches, fixed
    order); 0.75 is the authors' behaviour (random masking on every call)."""

    input_kind = "pixels"

    def __init__(self, path: str = "facebook/vit-mae-base", keys: Sequence[str] | None = None, mask_ratio: float = 0.0, layer: int | None = None):
        from transformers import ViTMAEModel

        from drpo.hub import resolve_model

        folder = resolve_model(path, what="ViT-MAE feature model")
        model = ViTMAEModel.from_pretrained(folder)
        layer = layer or model.config.num_hidden_layers
        super().__init__(keys or (f"layer{layer}_patch_mean", f"layer{layer}_patch_std", f"layer{layer}_cls"))
        self.layer = layer
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        model.config.mask_ratio = mask_ratio
        self.model, self.mask_ratio = model, mask_ratio
        self.size = model.config.image_size
        self.mean, self.std = _image_stats(folder)
        self.freeze()

    def forward(self, x: Tensor, cond: dict | None = None) -> dict[str, Tensor]:
        pixels = _resize_normalise(x, self.size, self.mean, self.std)
        noise = None
        if self.mask_ratio == 0.0:  # no shuffle: keep every patch in place
            n = (self.size // self.model.config.patch_size) ** 2
            noise = torch.arange(n, device=x.device, dtype=torch.float32).expand(x.shape[0], n)
        out = self.model(pixel_values=pixels, noise=noise, output_hidden_states=True)
        return self.select(_token_stats(out.hidden_states[self.layer], f"layer{self.layer}"))


class DINOv2Features(FeatureMap):
    """DINOv2 on decoded pixels (the paper's "VAE-dec.+DINOv2" ablation)."""

    input_kind = "pixels"

    def __init__(self, path: str = "facebook/dinov2-base", layers: Sequence[int] = (3, 6, 9, 12), keys: Sequence[str] | None = None, image_size: int = 224):
        from transformers import Dinov2Model

        from drpo.hub import resolve_model

        folder = resolve_model(path, what="DINOv2 feature model")
        model = Dinov2Model.from_pretrained(folder)
        too_deep = [layer for layer in layers if layer > model.config.num_hidden_layers]
        if too_deep:
            raise ValueError(f"dinov2 layers {too_deep} exceed the model's {model.config.num_hidden_layers} layers")
        default = [f"layer{layer}_{s}" for layer in layers for s in ("patch_mean", "patch_std", "cls")]
        super().__init__(keys or default)
        self.layers = tuple(layers)
        self.model = model
        self.size = image_size
        self.mean, self.std = _image_stats(folder)
        self.freeze()

    def forward(self, x: Tensor, cond: dict | None = None) -> dict[str, Tensor]:
        out = self.model(pixel_values=_resize_normalise(x, self.size, self.mean, self.std), output_hidden_states=True)
        feats: dict[str, Tensor] = {}
        for layer in self.layers:
            feats.update(_token_stats(out.hidden_states[layer], f"layer{layer}"))
        return self.select(feats)


class TeacherUNetFeatures(FeatureMap):
    """Forward hooks on the frozen base UNet (§2.2c): x + noise·N(0, I) at t = 100, the same
    conditioning as the candidate, each hooked block average-pooled `pool`×`pool` and flattened."""

    def __init__(
        self,
        unet: nn.Module,
        blocks: Sequence[str] = ("down_blocks.2", "mid_block", "up_blocks.0"),
        noise: float = 0.1,
        timestep: int = 100,
        pool: int = 4,
        disable_adapter: Callable[[], contextlib.AbstractContextManager] | None = None,
    ):
        super().__init__(tuple(blocks))
        modules = dict(unet.named_modules())
        missing = [b for b in blocks if b not in modules]
        if missing:
            raise KeyError(f"teacher_unet: blocks {missing} are not in the UNet (e.g. {[n for n in modules if n.count('.') == 1][:6]})")
        # not a submodule: the generator owns the UNet (and its LoRA); we only borrow it
        self.__dict__["unet"] = unet
        self.blocks, self.noise, self.timestep, self.pool = tuple(blocks), noise, timestep, pool
        self.disable_adapter = disable_adapter or contextlib.nullcontext

    def forward(self, x: Tensor, cond: dict | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if cond is None or "encoder_hidden_states" not in cond:
            raise ValueError("teacher_unet needs cond with encoder_hidden_states (the candidates' prompt embeddings)")
        captured: dict[str, Tensor] = {}
        modules = dict(self.unet.named_modules())

        def hook(name):
            def fn(_module, _inputs, output):
                if isinstance(output, tuple):
                    output = output[0]
                captured[name] = getattr(output, "sample", output)

            return fn

        handles = [modules[b].register_forward_hook(hook(b)) for b in self.blocks]
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if generator is not None else torch.randn_like(x)
        t = torch.full((x.shape[0],), self.timestep, device=x.device, dtype=torch.long)
        try:
            with self.disable_adapter():
                self.unet(x + self.noise * eps, t, **cond)
        finally:
            for h in handles:
                h.remove()
        out = {}
        for name in self.blocks:
            fmap = captured[name].float()
            if fmap.shape[-1] < self.pool or fmap.shape[-2] < self.pool:
                pooled = fmap.mean(dim=(2, 3), keepdim=True)
            else:
                pooled = F.avg_pool2d(fmap, self.pool, self.pool)
            out[name] = pooled.flatten(1).unsqueeze(1)
        return out


FEATURE_MAPS: dict[str, type[FeatureMap]] = {
    "latent": LatentStats,
    "latent_mae": LatentMAEFeatures,
    "vit_mae": ViTMAEFeatures,
    "dinov2": DINOv2Features,
    "teacher_unet": TeacherUNetFeatures,
}


def build_feature_map(name: str, **options) -> FeatureMap:
    """A frozen feature map by name (config `features.name`, options from `features.options`)."""
    if name not in FEATURE_MAPS:
        raise ValueError(f"features.name: {name!r} is not one of {sorted(FEATURE_MAPS)}")
    return FEATURE_MAPS[name](**options)
