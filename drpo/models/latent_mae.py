"""The latent-MAE ResNet encoder of METHOD.md §2.2(a), on 4-channel SD latents, frozen.

Checkpoints come in three shapes: `{"state_dict": ..., "metadata": {"model_config": ...}}`,
`{"model_state_dict": ...}`, or a flat tensor dict (safetensors or torch). Prefixes `module.` and
`_orig_mod.` are stripped. Convolutions are PyTorch OIHW `*.weight` or JAX HWIO `*.kernel`;
GroupNorms carry `*.weight`/`*.scale` and `*.bias`. Key names (after stripping):

    encoder.conv1.{weight|kernel}                      3×3, stride 1, no bias
    encoder.norm1.{weight|scale,bias}                  GN after conv1 (then ReLU)
    encoder.layer{s}.{i}.conv1 / norm1 / conv2 / norm2 basic block i of stage s (1-based stages)
    encoder.layer{s}.{i}.proj.conv / proj.norm         1×1 projection when the shape changes
    encoder.layer{s}_norm.{weight|scale,bias}          the extra GN after stage s → output `layer{s}`

Stages have `layers` blocks ([3, 4, 6, 3] by default, or `metadata.model_config.layers`); the first
block of stages 2–4 has stride 2. Outputs: `layer{s}` and, every 2 blocks inside a stage,
`layer{s}_blk{b}` (b < stage length). Widths are read from the weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_LAYERS = (3, 4, 6, 3)
GN_EPS = 1e-5
BLOCK_STRIDE = 2


def gn_groups(channels: int) -> int:
    """The largest divisor of C that is ≤ 32."""
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


def _strip(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key.replace("._orig_mod.", ".")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """(state dict with canonical keys, model_config) from any accepted checkpoint format."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"latent-MAE checkpoint {path} does not exist. The authors' weights (mae_latent_256_torch.pth) are on "
            f"ModelScope as jiangzhou130v1/drpo-mae-latent-256; put the file there or set features.options.path."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: dict = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    meta: dict = {}
    if isinstance(raw, dict) and "state_dict" in raw:
        meta = raw.get("metadata") or {}
        raw = raw["state_dict"]
    elif isinstance(raw, dict) and "model_state_dict" in raw:
        raw = raw["model_state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ValueError(f"{path}: not a latent-MAE checkpoint (expected a tensor dict, state_dict or model_state_dict)")
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        key = _strip(key)
        if key.endswith(".kernel"):  # JAX HWIO → OIHW
            key, value = key[: -len(".kernel")] + ".weight", value.permute(3, 2, 0, 1).contiguous()
        elif key.endswith(".scale"):
            key = key[: -len(".scale")] + ".weight"
        state[key] = value.float()
    return state, dict(meta.get("model_config", {}))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(gn_groups(cout), cout, eps=GN_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(gn_groups(cout), cout, eps=GN_EPS)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential()
            self.proj.add_module("conv", nn.Conv2d(cin, cout, 1, stride, 0, bias=False))
            self.proj.add_module("norm", nn.GroupNorm(gn_groups(cout), cout, eps=GN_EPS))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        res = x if self.proj is None else self.proj(x)
        return F.relu(res + y)


class _Encoder(nn.Module):
    def __init__(self, in_channels: int, widths: Sequence[int], layers: Sequence[int]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.norm1 = nn.GroupNorm(gn_groups(widths[0]), widths[0], eps=GN_EPS)
        cin = widths[0]
        self.layers = list(layers)
        for s, (w, n) in enumerate(zip(widths, layers), start=1):
            stage = nn.Sequential(*[_Block(cin if i == 0 else w, w, 2 if (i == 0 and s > 1) else 1) for i in range(n)])
            self.add_module(f"layer{s}", stage)
            self.add_module(f"layer{s}_norm", nn.GroupNorm(gn_groups(w), w, eps=GN_EPS))
            cin = w


class LatentMAE(nn.Module):
    """The frozen encoder; forward returns {"layer{s}": map, "layer{s}_blk{b}": map}."""

    def __init__(self, in_channels: int, widths: Sequence[int], layers: Sequence[int] = DEFAULT_LAYERS):
        super().__init__()
        self.encoder = _Encoder(in_channels, widths, layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        enc = self.encoder
        h = F.relu(enc.norm1(enc.conv1(x)))
        out: dict[str, Tensor] = {}
        for s, n in enumerate(enc.layers, start=1):
            stage = getattr(enc, f"layer{s}")
            for i, block in enumerate(stage, start=1):
                h = block(h)
                if i % BLOCK_STRIDE == 0 and i < n:
                    out[f"layer{s}_blk{i}"] = h
            out[f"layer{s}"] = getattr(enc, f"layer{s}_norm")(h)
        return out


def _widths(state: dict[str, Tensor], n_stages: int) -> list[int]:
    return [state[f"encoder.layer{s}.0.conv1.weight"].shape[0] for s in range(1, n_stages + 1)]


def load_latent_mae(path: str | os.PathLike) -> LatentMAE:
    state, model_config = read_checkpoint(path)
    layers = tuple(model_config.get("layers", DEFAULT_LAYERS))
    if "encoder.conv1.weight" not in state:
        raise ValueError(f"{path}: no encoder.conv1 weight; keys start with {sorted(state)[:3]}")
    in_channels = int(model_config.get("in_channels", state["encoder.conv1.weight"].shape[1]))
    model = LatentMAE(in_channels, _widths(state, len(layers)), layers)
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k.startswith("encoder.")}, strict=False)
    if missing:
        raise ValueError(f"{path}: missing latent-MAE weights, e.g. {missing[:3]}")
    model.requires_grad_(False).eval()
    return model


def save_latent_mae_checkpoint(
    path: str | os.PathLike,
    *,
    widths: Sequence[int] = (8, 16, 16, 32),
    layers: Sequence[int] = DEFAULT_LAYERS,
    in_channels: int = 4,
    seed: int = 0,
    format: str = "state_dict",
    model: LatentMAE | None = None,
) -> Path:
    """Write a latent-MAE checkpoint (random weights unless `model` is given) in one of the formats
    the loader accepts: "state_dict" (+metadata), "model_state_dict", "flat" (safetensors),
    "jax" (HWIO `*.kernel`, GN `*.scale`, `module.` prefix)."""
    from drpo.io import atomic_path

    if model is None:
        torch.manual_seed(seed)
        model = LatentMAE(in_channels, widths, layers)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        if format == "state_dict":
            torch.save({"state_dict": state, "metadata": {"model_config": {"layers": list(layers), "in_channels": in_channels}}}, tmp)
        elif format == "model_state_dict":
            torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp)
        elif format == "flat":
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        elif format == "jax":
            jax = {}
            for k, v in state.items():
                if v.dim() == 4:
                    jax["module." + k[: -len(".weight")] + ".kernel"] = v.permute(2, 3, 1, 0).contiguous()
                elif k.endswith(".weight"):
                    jax["module." + k[: -len(".weight")] + ".scale"] = v
                else:
                    jax["module." + k] = v
            torch.save({"state_dict": jax, "metadata": {"model_config": {"layers": list(layers)}}}, tmp)
        else:
            raise ValueError(f"format {format!r} is not one of state_dict, model_state_dict, flat, jax")
    return path
