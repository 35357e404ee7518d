"""Frozen feature maps φ (METHOD.md §2.2), chosen by name in config (`features.name/options`).

Each map returns named keys, every value a per-image token set `(K, T, D)`; the trainer pools the
K·T tokens of one prompt into one drift set (one drift per key). Maps are frozen (eval, no
parameter gradients) but differentiable with respect to their input, so the drift's gradient
reaches the generator.

| name | input | keys (default first) |
|---|---|---|
| latent_mae | SD latents | the six layer4_{mean,std}[_{2,4}]; any `{map}_{mean,std}[_{p}]`, `{map}` (spatial tokens) |
|            |            | for map in conv1, layer{s}, layer{s}_blk{b}; `norm_x`, `input_x2_mean` |
| vit_mae | pixels | layer{L}_patch_mean, layer{L}_patch_std, layer{L}_cls (L = last layer); layer{L}_concat |
| teacher_unet | latents | one key per hooked block (pool×pool average-pooled, flattened) |
| dinov2 | pixels | layer{3,6,9,12}_{patch_mean,patch_std,cls}; layer{L}_patch_{mean,std}_{p}, layer{L}_patch |
| latent | latents | latent_{mean,std}[_{2,4}]; `latent` (spatial tokens), `latent_norm` |
| clip | pixels | image_embeds, layer{L}_patch_mean, layer{L}_patch_std (L = last layer); layer{L}_cls, layer{L}_patch |

Statistics: mean and `sqrt(var + 1e-6)` (population variance, fp32), globally `(K, 1, C)` or in
non-overlapping p×p windows `(K, (H/p)(W/p), C)` — `window_stats`, shared by every map.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STD_EPS = 1e-6
POOLS = (2, 4)
LAYER4_KEYS = ("layer4_mean", "layer4_std", "layer4_mean_2", "layer4_std_2", "layer4_mean_4", "layer4_std_4")
LATENT_KEYS = ("latent_mean", "latent_std", "latent_mean_2", "latent_std_2", "latent_mean_4", "latent_std_4")
LATENT_DEFAULT_KEYS = ("latent", *LATENT_KEYS)  # the authors' default: raw spatial tokens with the statistics
TEACHER_BLOCKS = ("down_blocks.2", "mid_block", "up_blocks.0")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------
# statistics (the one place they are computed)


def mean_std(x: Tensor, dim: int | tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and std = sqrt(population var + 1e-6) over `dim`, in fp32 (fp16 var underflows)."""
    x = x.float()
    return x.mean(dim=dim), (x.var(dim=dim, unbiased=False) + STD_EPS).sqrt()


def window_stats(fmap: Tensor, name: str, pools: Sequence[int] = POOLS) -> dict[str, Tensor]:
    """Statistics of a map (K, C, H, W): `{name}_mean`/`_std` (K, 1, C) and, per p in pools,
    `{name}_mean_{p}`/`_std_{p}` over non-overlapping p×p windows, (K, (H/p)(W/p), C), windows in
    row-major order. A p that does not divide H and W is skipped (METHOD §2.2a)."""
    if fmap.dim() != 4:
        raise ValueError(f"window_stats({name!r}) needs a map (K, C, H, W); got {tuple(fmap.shape)}")
    k, c, h, w = fmap.shape
    mean, std = mean_std(fmap, (2, 3))
    out = {f"{name}_mean": mean.unsqueeze(1), f"{name}_std": std.unsqueeze(1)}
    for p in pools:
        if p < 1 or h % p or w % p:
            continue
        mean, std = mean_std(fmap.reshape(k, c, h // p, p, w // p, p), (3, 5))
        out[f"{name}_mean_{p}"] = mean.flatten(2).transpose(1, 2)
        out[f"{name}_std_{p}"] = std.flatten(2).transpose(1, 2)
    return out


def spatial_tokens(fmap: Tensor, stride: int = 1) -> Tensor:
    """All positions of a map (K, C, H, W) as tokens (K, H·W, C) (every `stride`-th row/column)."""
    return fmap[:, :, ::stride, ::stride].float().flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# base class


class FeatureMap(nn.Module):
    """Base class: frozen, with named keys and an input kind ("latents" or "pixels" in [-1, 1])."""

    input_kind = "latents"
    # True when two calls on the same input differ (a random mask, input noise): anchors then need
    # calls of their own rather than detached copies of the generated features
    stochastic = False

    def __init__(self, keys: Sequence[str]):
        super().__init__()
        if isinstance(keys, str) or not keys:
            raise ValueError(f"{type(self).__name__}: keys must be a non-empty list of names; got {keys!r}")
        self.keys = tuple(keys)
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"{type(self).__name__}: duplicate keys in {list(self.keys)}")

    def freeze(self) -> FeatureMap:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FeatureMap:  # always eval: no dropout, fixed norms
        return super().train(False)

    def select(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        missing = [k for k in self.keys if k not in feats]
        if missing:
            raise KeyError(f"{type(self).__name__}: keys {missing} not produced for this input; available: {sorted(feats)}")
        return {k: feats[k] for k in self.keys}

    def forward(self, x: Tensor, cond: dict | None = None) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError


_STAT = re.compile(r"^(?P<map>.+?)_(?:mean|std)(?:_(?P<p>\d+))?$")


def _stat_pools(keys: Sequence[str]) -> tuple[int, ...]:
    """Window sizes the keys ask for (e.g. layer4_mean_2 → 2)."""
    return tuple(sorted({int(m["p"]) for k in keys if (m := _STAT.match(k)) and m["p"]}))


# ----------------------------------------------------------------------------------------------
# raw latents


class LatentStats(FeatureMap):
    """Raw latents: the paper's "Latent" ablation (which collapses on SD-Turbo).

    Default keys are the authors': the spatial tokens `latent` with the six statistics. At 64×64
    `latent` is 4096 tokens per image (a 98k × 164k distance matrix for K = 24 at stride 1), so
    `spatial_stride` (default $DRPO_LATENT_SPATIAL_STRIDE, else 1) keeps every stride-th row and
    column; the SD-Turbo paper config sets 4 (256 tokens per image).
    """

    def __init__(self, keys: Sequence[str] = LATENT_DEFAULT_KEYS, spatial_stride: int | None = None):
        super().__init__(keys)
        bad = [k for k in self.keys if k not in ("latent", "latent_norm", "latent_flat") and not ((m := _STAT.match(k)) and m["map"] == "latent")]
        if bad:
            raise ValueError(f"latent features: unknown keys {bad}; use latent, latent_flat, latent_norm, latent_{{mean,std}}[_{{p}}]")
        self.pools = _stat_pools(self.keys)
        if spatial_stride is None:
            spatial_stride = int(os.environ.get("DRPO_LATENT_SPATIAL_STRIDE", "1"))
        if spatial_stride < 1:
            raise ValueError(f"latent features: spatial_stride must be ≥ 1, got {spatial_stride}")
        self.spatial_stride = spatial_stride

    def forward(self, x: Tensor, cond: dict | None = None) -> dict[str, Tensor]:
        feats = window_stats(x, "latent", self.pools)
        if "latent" in self.keys:
            feats["latent"] = spatial_tokens(x, self.spatial_stride)
        if "latent_norm" in self.keys:
            feats["latent_norm"] = x.float().square().mean(dim=(2, 3)).sqrt().unsqueeze(1)
        if "latent_flat" in self.keys:  # the whole latent as one vector per image: placement matters
            feats["latent_flat"] = x.float().flatten(1).unsqueeze(1)
        return self.select(feats)


# ----------------------------------------------------------------------------------------------
# latent-MAE


INPUT_KEYS = ("norm_x", "input_x2_mean")  # per-channel RMS and mean square of the input latent, (K, 1, C)


class LatentMAEFeatures(FeatureMap):
    """The latent-MAE ResNet on SD latents (§2.2a), weights from `drpo.models.latent_mae`.

    Runs in fp32 with autocast switched off: the weights stay fp32 and the statistics are fp32
    whatever the trainer's mixed precision (cheap next to the UNet; avoids fp16 var underflow).
    """

    def __init__(self, path: str | os.PathLike, keys: Sequence[str] = LAYER4_KEYS, trust_pickle: bool = False):
        super().__init__(keys)
        from drpo.models.latent_mae import load_latent_mae

        self.net = load_latent_mae(path, trust_pickle=trust_pickle)
        maps = self.net.map_names
        wanted: list[str] = []
        for key in self.keys:
            if key in INPUT_KEYS:
                continue
            m = _STAT.match(key)
            name = key if key in maps else (m["map"] if m else None)
            if name not in maps:
                raise ValueError(
                    f"latent_mae: key {key!r} names no map of this checkpoint; maps are {list(maps)} "
                    f"(keys: MAP_mean, MAP_std, MAP_mean_P, MAP_std_P, MAP, norm_x, input_x2_mean)"
                )
            wanted.append(name)
        self.maps = tuple(dict.fromkeys(wanted))
        self.deepest = max(self.maps, key=maps.index) if self.maps else None
        self.pools = _stat_pools(self.keys)
        self.freeze()

    def forward(self, x: Tensor, cond: dict | None = None) -> dict[str, Tensor]:
        feats: dict[str, Tensor] = {}
        if any(k in INPUT_KEYS for k in self.keys):
            sq = x.float().square().mean(dim=(2, 3)).unsqueeze(1)
            feats["input_x2_mean"], feats["norm_x"] = sq, sq.sqrt()
        if self.deepest is not None:
            with torch.autocast(x.device.type, enabled=False):
                maps = self.net(x.float(), until=self.deepest)
            for name in self.maps:
                feats.update(window_stats(maps[name], name, self.pools))
                if name in self.keys:
                    feats[name] = spatial_tokens(maps[name])
        return self.select(feats)


# ----------------------------------------------------------------------------------------------
# pixel maps (ViT-MAE, DINOv2)


def preprocess_pixels(x: Tensor, size: int, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32) -> Tensor:
    """[-1, 1] → clamp → [0, 1] → bicubic resize to size×size (no antialias) → (x − mean) / std."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"pixel feature maps expect images (K, 3, H, W) in [-1, 1]; got {tuple(x.shape)}")
    x = (x.float().clamp(-1, 1) + 1) / 2
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - m) / s).to(dtype)


def processor_config(folder: Path) -> dict:
    """preprocessor_config.json next to the weights ({} when absent)."""
    cfg = Path(folder) / "preprocessor_config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else {}


def _processor_size(cfg: dict) -> int | None:
    """The square input size of an image processor config (crop size first, then size)."""
    for entry in (cfg.get("crop_size"), cfg.get("size")):
        if isinstance(entry, int):
            return entry
        if isinstance(entry, dict):
            for k in ("height", "shortest_edge"):
                if k in entry:
                    return int(entry[k])
    return None


def _token_stats(hidden: Tensor, prefix: str) -> dict[str, Tensor]:
    """patch mean/std over the patch tokens, and the CLS token, of one hidden state (K, 1+N, D)."""
    mean, std = mean_std(hidden[:, 1:], 1)
    return {f"{prefix}_patch_mean": mean.unsqueeze(1), f"{prefix}_patch_std": std.unsqueeze(1), f"{prefix}_cls": hidden[:, :1].float()}


_LAYER = re.compile(r"^layer(\d+)_")


def _key_layers(keys: Sequence[str], what: str, allowed: re.Pattern) -> tuple[int, ...]:
    bad = [k for k in keys if not allowed.match(k)]
    if bad:
        raise ValueError(f"{what}: unknown keys {bad}")
    return tuple(sorted({int(_LAYER.match(k)[1]) for k in keys}))


class ViTMAEFeatures(FeatureMap):
    """ViT-MAE encoder on decoded pixels (§2.2b); statistics of hidden state L (before the final
    LayerNorm). `mask_ratio` 0.0 is deterministic: every patch, in order (noise = arange, so no
    shuffle). 0.75 is the authors' behaviour: a fresh random 75 % mask on every call."""

    input_kind = "pixels"

    def __init__(self, path: str | os.PathLike = "facebook/vit-mae-base", keys: Sequence[str] | None = None, mask_ratio: float = 0.0, layer: int | None = None):
        from transformers import ViTMAEModel

        from drpo.hub import resolve_model

        if not 0.0 <= float(mask_ratio) < 1.0:
            raise ValueError(f"vit_mae: mask_ratio must be in [0, 1), got {mask_ratio}")
        folder = resolve_model(path, what="ViT-MAE feature model")
        model = ViTMAEModel.from_pretrained(folder)
        depth = model.config.num_hidden_layers
        layer = layer or depth
        super().__init__(keys or (f"layer{layer}_patch_mean", f"layer{layer}_patch_std", f"layer{layer}_cls"))
        self.layers = _key_layers(self.keys, "vit_mae", re.compile(r"^layer\d+_(patch_mean|patch_std|cls|concat)$"))
        if max(self.layers) > depth or min(self.layers) < 1:
            raise ValueError(f"vit_mae: layers {list(self.layers)} outside 1..{depth} of {folder}")
        model.config.mask_ratio = float(mask_ratio)  # the embeddings read it on every call
        self.model, self.mask_ratio = model.float(), float(mask_ratio)  # fp32, as the authors' features
        self.stochastic = self.mask_ratio > 0
        self.size = int(model.config.image_size)
        self.patches = (self.size // model.config.patch_size) ** 2
        proc = processor_config(folder)
        self.mean = tuple(proc.get("image_mean", IMAGENET_MEAN))
        self.std = tuple(proc.get("image_std", IMAGENET_STD))
        self.freeze()

    def hidden_states(self, x: Tensor) -> tuple[Tensor, ...]:
        """Hidden states 0..depth, each (K, 1 + kept patches, D), in fp32 outside any autocast
        (the trainer's fp16/bf16 autocast would otherwise run the ViT in half precision)."""
        noise = None
        if self.mask_ratio == 0.0:
            noise = torch.arange(self.patches, device=x.device, dtype=torch.float32).expand(x.shape[0], -1)
        with torch.autocast(x.device.type, enabled=False):
            pixels = preprocess_pixels(x, self.size, self.mean, self.std, torch.float32)
            out = self.model(pixel_values=pixels, noise=noise, output_hidden_states=True)
        kept = int(self.patches * (1 - self.mask_ratio))
        if out.hidden_states[-1].shape[1] != 1 + kept:
            raise RuntimeError(f"vit_mae: expected 1 + {kept} tokens at mask_ratio {self.mask_ratio}, got {out.hidden_states[-1].shape[1]}")
        return out.hidden_states

    def forward(self, x: Tensor, cond: dict | None = None) -> dict[str, Tensor]:
        hidden = self.hidden_states(x)
        feats: dict[str, Tensor] = {}
        for layer in self.layers:
            stats = _token_stats(hidden[layer], f"layer{layer}")
            stats[f"layer{layer}_concat"] = torch.cat(list(stats.values()), dim=-1)
            feats.update(stats)
        return self.select(feats)


class DINOv2Features(FeatureMap):
    """DINOv2 on decoded pixels (the paper's "VAE-dec.+DINOv2" ablation); statistics of hidden
    states L (before the final LayerNorm). Pooled variants `layer{L}_patch_{mean,std}_{p}` come
    from p×p windows of the patch grid (window_stats); `layer{L}_patch` is every patch token."""

    input_kind = "pixels"

    def __init__(self, path: str | os.PathLike = "facebook/dinov2-base", layers: Sequence[int] = (3, 6, 9, 12),
                 keys: Sequence[str] | None = None, image_size: int | None = None):
        from transformers import Dinov2Model

        from drpo.hub import resolve_model

        folder = resolve_model(path, what="DINOv2 feature model")
        model = Dinov2Model.from_pretrained(folder)
        depth = model.config.num_hidden_layers
        default = [f"layer{layer}_{s}" for layer in layers for s in ("patch_mean", "patch_std", "cls")]
        super().__init__(keys or default)
        self.layers = _key_layers(self.keys, "dinov2", re.compile(r"^layer\d+_(patch|patch_mean|patch_std|patch_mean_\d+|patch_std_\d+|cls)$"))
        too_deep = [layer for layer in self.layers if not 1 <= layer <= depth]
        if too_deep:
            raise ValueError(f"dinov2: layers {too_deep} exceed the model's {depth} layers ({folder})")
        proc = processor_config(folder)
        self.size = int(image_size or _processor_size(proc) or 224)
        self.mean = tuple(proc.get("image_mean", IMAGENET_MEAN))
        self.std = tuple(proc.get("image_std", IMAGENET_STD))
        self.pools = _stat_pools(self.keys)
        self.model = model
        self.freeze()

    def forward(self, x: Tensor, cond: dict | None = None) -> dict[str, Tensor]:
        pixels = preprocess_pixels(x, self.size, self.mean, self.std, self.model.dtype)
        hidden = self.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        grid = self.size // self.model.config.patch_size
        feats: dict[str, Tensor] = {}
        for layer in self.layers:
            h, name = hidden[layer], f"layer{layer}_patch"
            patches = h[:, 1:]
            if patches.shape[1] != grid * grid:
                raise RuntimeError(f"dinov2: {patches.shape[1]} patch tokens, expected {grid}×{grid}")
            fmap = patches.transpose(1, 2).reshape(h.shape[0], h.shape[2], grid, grid)
            feats.update(window_stats(fmap, name, self.pools))
            feats[name] = patches.float()
            feats[f"layer{layer}_cls"] = h[:, :1].float()
        return self.select(feats)


class CLIPFeatures(FeatureMap):
    """A CLIP image tower on decoded pixels (PickScore's, or the shapes world's reward model):
    statistics of hidden state L as for ViT-MAE (`layer{L}_patch_mean`, `_patch_std`, `_cls`), its patch
    tokens (`layer{L}_patch`), and
    `image_embeds`, the projected, L2-normalised image embedding the reward itself compares with text.
    Only the features are used, never the reward's score: the reward stays a black box."""

    input_kind = "pixels"

    def __init__(self, path: str | os.PathLike = "yuvalkirstain/PickScore_v1", keys: Sequence[str] | None = None):
        from transformers import CLIPModel

        from drpo.hub import resolve_model

        folder = resolve_model(path, what="CLIP feature model")
        model = CLIPModel.from_pretrained(folder)
        depth = model.config.vision_config.num_hidden_layers
        super().__init__(keys or ("image_embeds", f"layer{depth}_patch_mean", f"layer{depth}_patch_std"))
        layer_keys = [k for k in self.keys if k != "image_embeds"]
        self.layers = _key_layers(layer_keys, "clip", re.compile(r"^layer\d+_(patch|patch_mean|patch_std|cls)$"))
        if self.layers and not 1 <= min(self.layers) <= max(self.layers) <= depth:
            raise ValueError(f"clip: layers {list(self.layers)} outside 1..{depth} of {folder}")
        proc = processor_config(folder)
        self.size = int(_processor_size(proc) or model.config.vision_config.image_size)
        self.mean = tuple(proc.get("image_mean", CLIP_MEAN))
        self.std = tuple(proc.get("image_std", CLIP_STD))
        self.vision, self.projection = model.vision_model, model.visual_projection
        self.freeze()

    def forward(self, x: Tensor, cond: dict | None = None) -> dict[str, Tensor]:
        pixels = preprocess_pixels(x, self.size, self.mean, self.std, self.projection.weight.dtype)
        out = self.vision(pixel_values=pixels, output_hidden_states=True)
        feats: dict[str, Tensor] = {}
        for layer in self.layers:
            feats.update(_token_stats(out.hidden_states[layer], f"layer{layer}"))
            if f"layer{layer}_patch" in self.keys:
                feats[f"layer{layer}_patch"] = out.hidden_states[layer][:, 1:].float()
        if "image_embeds" in self.keys:
            feats["image_embeds"] = F.normalize(self.projection(out.pooler_output).float(), dim=-1).unsqueeze(1)
        return self.select(feats)


# ----------------------------------------------------------------------------------------------
# teacher UNet


def _pool_flat(fmap: Tensor, pool: int) -> Tensor:
    """Average-pool kernel=stride=pool (global average when the map is smaller), → (K, 1, C·h·w)."""
    fmap = fmap.float()
    if pool > 1:
        if fmap.shape[-1] < pool or fmap.shape[-2] < pool:
            fmap = fmap.mean(dim=(2, 3), keepdim=True)
        else:
            fmap = F.avg_pool2d(fmap, pool, pool)
    return fmap.flatten(1).unsqueeze(1)


class _Captured(Exception):
    """Raised by the last teacher hook: the rest of the UNet is not needed."""


class TeacherUNetFeatures(FeatureMap):
    """Forward hooks on the frozen base UNet (§2.2c): x + noise·N(0, I) at t = timestep, the
    candidates' own conditioning, each hooked block average-pooled pool×pool and flattened.

    The UNet is borrowed, not owned (not a submodule: the generator holds it and its LoRA).
    `disable_adapter()` switches LoRA off during the call so features come from the base; the
    UNet's parameters are additionally set requires_grad False for the call, so the backward pass
    reaches the latents but never the UNet. With `early_exit` the forward stops once every hooked
    block has run (the later up-blocks, the most expensive part at full resolution, are skipped).
    """

    def __init__(
        self,
        unet: nn.Module,
        blocks: Sequence[str] = TEACHER_BLOCKS,
        noise: float = 0.1,
        timestep: int = 100,
        pool: int = 4,
        disable_adapter: Callable[[], contextlib.AbstractContextManager] | None = None,
        early_exit: bool = True,
    ):
        super().__init__(tuple(blocks))
        modules = dict(unet.named_modules())
        self.paths: dict[str, str] = {}
        for b in self.keys:
            hits = [b] if b in modules else [n for n in modules if n.endswith("." + b)]  # peft wrappers prefix names
            if len(hits) != 1:
                top = [n for n in modules if re.search(r"(^|\.)((down|up)_blocks\.\d+|mid_block)$", n)]
                raise KeyError(f"teacher_unet: block {b!r} is {'ambiguous' if hits else 'not in the UNet'}; blocks include {top[:12]}")
            self.paths[b] = hits[0]
        self.__dict__["unet"] = unet
        self.noise, self.timestep, self.pool, self.early_exit = float(noise), int(timestep), int(pool), bool(early_exit)
        self.stochastic = self.noise > 0  # fresh N(0, I) input noise on every call
        self.disable_adapter = disable_adapter or contextlib.nullcontext

    def _cond(self, cond: dict | None, k: int) -> dict:
        if not cond or cond.get("encoder_hidden_states") is None:
            raise ValueError("teacher_unet needs cond={'encoder_hidden_states': ..., ['added_cond_kwargs': ...]} (the candidates' prompt embeddings)")
        dtype = self._dtype()

        def fit(t: Tensor) -> Tensor:  # one prompt's embeddings serve all K candidates
            t = t.to(dtype)
            return t.expand(k, *t.shape[1:]) if t.shape[0] == 1 and k > 1 else t

        out = {"encoder_hidden_states": fit(cond["encoder_hidden_states"])}
        added = cond.get("added_cond_kwargs")
        if added is None and cond.get("text_embeds") is not None:
            added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
        if added is not None:
            out["added_cond_kwargs"] = {name: fit(v) for name, v in added.items()}
        return out

    def _dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def forward(self, x: Tensor, cond: dict | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        kwargs = self._cond(cond, x.shape[0])
        if generator is not None:
            eps = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32).to(x.device)
        else:
            eps = torch.randn(x.shape, device=x.device, dtype=torch.float32)
        sample = (x.float() + self.noise * eps).to(self._dtype())
        t = torch.full((x.shape[0],), self.timestep, device=x.device, dtype=torch.long)

        captured: dict[str, Tensor] = {}
        modules = dict(self.unet.named_modules())

        def hook(name: str):
            def fn(_module, _inputs, output):
                if isinstance(output, (tuple, list)):
                    output = output[0]
                captured[name] = getattr(output, "sample", output)
                if self.early_exit and len(captured) == len(self.paths):
                    raise _Captured

            return fn

        handles = [modules[path].register_forward_hook(hook(b)) for b, path in self.paths.items()]
        trainable = [p for p in self.unet.parameters() if p.requires_grad]
        # the generator's gradient checkpointing would recompute these blocks in backward, after the
        # adapter is back on and the hooks are gone (a different graph): the teacher keeps its activations
        checkpointing = bool(getattr(self.unet, "is_gradient_checkpointing", False))
        try:
            for p in trainable:
                p.requires_grad_(False)
            if checkpointing:
                self.unet.disable_gradient_checkpointing()
            with self.disable_adapter():
                self.unet(sample, t, **kwargs)
        except _Captured:
            pass
        finally:
            for h in handles:
                h.remove()
            for p in trainable:
                p.requires_grad_(True)
            if checkpointing:
                self.unet.enable_gradient_checkpointing()
        missing = [b for b in self.keys if b not in captured]
        if missing:
            raise RuntimeError(f"teacher_unet: blocks {missing} did not run in the UNet's forward")
        return {b: _pool_flat(captured[b], self.pool) for b in self.keys}


# ----------------------------------------------------------------------------------------------
# registry


FEATURE_MAPS: dict[str, type[FeatureMap]] = {
    "latent": LatentStats,
    "latent_mae": LatentMAEFeatures,
    "vit_mae": ViTMAEFeatures,
    "dinov2": DINOv2Features,
    "clip": CLIPFeatures,
    "teacher_unet": TeacherUNetFeatures,
}


def build_feature_map(name: str, **options) -> FeatureMap:
    """A frozen feature map by name (config `features.name`, options from `features.options`)."""
    if name not in FEATURE_MAPS:
        raise ValueError(f"features.name: {name!r} is not one of {sorted(FEATURE_MAPS)}")
    cls = FEATURE_MAPS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"features.options for {name!r}: unknown option(s) {unknown}; accepted: {accepted}")
    return cls(**options)
