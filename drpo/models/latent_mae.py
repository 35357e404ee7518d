"""The latent-MAE ResNet encoder of METHOD.md §2.2(a): frozen, on 4-channel SD latents.

The SD-Turbo DrPO runs measure their drift in this encoder's feature space. Its weights come from
the Drifting authors' JAX model (exported to `mae_latent_256_torch.pth`), so the loader accepts the
JAX layout as well as PyTorch's and several container formats.

Containers: `{"state_dict": ..., "metadata": {"model_config": {"layers", "in_channels"}}}`,
`{"model_state_dict": ...}`, or a flat tensor dict (torch or `.safetensors`). Prefixes `module.`
and `_orig_mod.` are stripped; keys outside `encoder.` (the MAE decoder) are ignored.

Canonical key names (those of the exported JAX model; stages `i` and blocks `j` are 0-based, the
`layer{s}` names 1-based):

    encoder.conv1.weight                         stem conv 3×3, stride 1, no bias
    encoder.gn1.{weight,bias}                    GN after the stem (then ReLU)
    encoder.stages_{i}.layers_{j}.conv1.weight   block conv 3×3 (stride 2 for j=0, i>0)
    encoder.stages_{i}.layers_{j}.gn1.*          → ReLU
    encoder.stages_{i}.layers_{j}.conv2.weight   block conv 3×3, stride 1
    encoder.stages_{i}.layers_{j}.gn2.*
    encoder.stages_{i}.layers_{j}.proj_conv.weight / proj_gn.*   1×1 projection when the shape changes
    encoder.layer{i+1}_norm.{weight,bias}        the extra GN after stage i → map `layer{i+1}`

The stage norm is in the main path, not a side branch: `layer{s}` = GN(stage s output) is both a
returned map and the input of stage s+1, so the `layer{s+1}_blk{b}` maps and `layer{s+1}` come
after it. Intermediate maps `layer{s}_blk{b}` (b = 2, 4, … < blocks in the stage) are the raw
block outputs inside a stage.

Also accepted: conv kernels `*.kernel` in JAX HWIO (permuted to OIHW; the layout is read from the
shape, the suffix breaks ties), GN `*.scale` for `*.weight`, and PyTorch-style names
`encoder.layer{s}.{j}.` (s 1-based) for `encoder.stages_{s-1}.layers_{j}.`, `norm1`/`norm2` for
`gn1`/`gn2`, `proj.conv`/`proj.norm`/`proj.gn` for `proj_conv`/`proj_gn`, `encoder.norm1` for
`encoder.gn1`. Blocks per stage come from `metadata.model_config.layers`, else are counted in the
weights ([3, 4, 6, 3] for the real model); widths always come from the weights.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_LAYERS = (3, 4, 6, 3)
GN_EPS = 1e-5
BLOCK_STRIDE = 2  # intermediate outputs layer{s}_blk{b} every 2 blocks inside a stage
CHECKPOINT_HINT = (
    "The authors' weights (mae_latent_256_torch.pth) are on ModelScope as jiangzhou130v1/drpo-mae-latent-256; "
    "copy the file there or set features.options.path to it."
)
FORMATS = ("state_dict", "model_state_dict", "flat", "flat_torch", "jax", "pytorch_names")


def gn_groups(channels: int) -> int:
    """GroupNorm groups: the largest divisor of C that is ≤ 32."""
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


# ----------------------------------------------------------------------------------------------
# the network


class _Block(nn.Module):
    """Basic block: conv3×3(stride)→GN→ReLU→conv3×3→GN, + residual (projected when the shape
    changes), → ReLU. Attribute names give the canonical state-dict keys."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.gn1 = nn.GroupNorm(gn_groups(cout), cout, eps=GN_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.gn2 = nn.GroupNorm(gn_groups(cout), cout, eps=GN_EPS)
        self.has_proj = stride != 1 or cin != cout
        if self.has_proj:
            self.proj_conv = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
            self.proj_gn = nn.GroupNorm(gn_groups(cout), cout, eps=GN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.gn1(self.conv1(x)))
        y = self.gn2(self.conv2(y))
        res = self.proj_gn(self.proj_conv(x)) if self.has_proj else x
        return F.relu(res + y)


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int, stride: int):
        super().__init__()
        for j in range(blocks):
            self.add_module(f"layers_{j}", _Block(cin if j == 0 else cout, cout, stride if j == 0 else 1))

    def __iter__(self):
        return iter(self._modules.values())


class _Encoder(nn.Module):
    def __init__(self, in_channels: int, stem_width: int, widths: Sequence[int], layers: Sequence[int]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
        self.gn1 = nn.GroupNorm(gn_groups(stem_width), stem_width, eps=GN_EPS)
        cin = stem_width
        for i, (w, n) in enumerate(zip(widths, layers)):
            self.add_module(f"stages_{i}", _Stage(cin, w, n, 1 if i == 0 else 2))
            self.add_module(f"layer{i + 1}_norm", nn.GroupNorm(gn_groups(w), w, eps=GN_EPS))
            cin = w


class LatentMAE(nn.Module):
    """The encoder; forward returns every named map: `conv1`, `layer{s}_blk{b}`, `layer{s}`.

    Each `layer{s}` is the stage-s output after its extra GN, and stage s+1 runs on it (stage norm
    in the main path).

    Frozen after loading (eval, requires_grad False); gradients still reach the input.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], layers: Sequence[int] = DEFAULT_LAYERS, stem_width: int | None = None):
        super().__init__()
        if len(widths) != len(layers):
            raise ValueError(f"latent-MAE: {len(widths)} stage widths but {len(layers)} stage lengths {list(layers)}")
        self.in_channels = in_channels
        self.widths, self.layers = tuple(int(w) for w in widths), tuple(int(n) for n in layers)
        self.encoder = _Encoder(in_channels, stem_width or self.widths[0], self.widths, self.layers)

    @property
    def map_names(self) -> tuple[str, ...]:
        """Names of the maps forward returns, in order."""
        names = ["conv1"]
        for s, n in enumerate(self.layers, start=1):
            names += [f"layer{s}_blk{b}" for b in range(BLOCK_STRIDE, n, BLOCK_STRIDE)]
            names.append(f"layer{s}")
        return tuple(names)

    def forward(self, x: Tensor, until: str | None = None) -> dict[str, Tensor]:
        """All maps (K, C, H, W); stops after map `until` when given (saves the deeper stages)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"latent-MAE expects latents (K, {self.in_channels}, h, w); got {tuple(x.shape)}")
        enc = self.encoder
        h = F.relu(enc.gn1(enc.conv1(x)))
        out: dict[str, Tensor] = {"conv1": h}
        if until == "conv1":
            return out
        for i, n in enumerate(self.layers):
            s = i + 1
            for j, block in enumerate(getattr(enc, f"stages_{i}")):
                h = block(h)
                b = j + 1
                if b % BLOCK_STRIDE == 0 and b < n:
                    out[f"layer{s}_blk{b}"] = h
                    if until == f"layer{s}_blk{b}":
                        return out
            h = getattr(enc, f"layer{s}_norm")(h)  # stage norm in the main path: stage s+1 runs on layer{s}
            out[f"layer{s}"] = h
            if until == f"layer{s}":
                return out
        return out


# ----------------------------------------------------------------------------------------------
# checkpoints

_ALIASES = (  # PyTorch-style names → canonical
    (re.compile(r"^encoder\.layer(\d+)\.(\d+)\."), lambda m: f"encoder.stages_{int(m[1]) - 1}.layers_{m[2]}."),
    (re.compile(r"\.norm([12])\."), lambda m: f".gn{m[1]}."),
    (re.compile(r"\.proj\.conv\."), lambda m: ".proj_conv."),
    (re.compile(r"\.proj\.(?:norm|gn)\."), lambda m: ".proj_gn."),
    (re.compile(r"^encoder\.norm1\."), lambda m: "encoder.gn1."),
)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key.replace("._orig_mod.", ".")


def _spatial(n: int) -> bool:
    return n in (1, 3)


def _to_oihw(key: str, t: Tensor, jax_suffix: bool) -> Tensor:
    """A conv kernel in OIHW; HWIO (JAX) kernels are recognised by shape, the suffix breaks ties."""
    hwio = _spatial(t.shape[0]) and t.shape[0] == t.shape[1]
    oihw = _spatial(t.shape[2]) and t.shape[2] == t.shape[3]
    if hwio and (jax_suffix or not oihw):
        return t.permute(3, 2, 0, 1).contiguous()
    if oihw:
        return t
    raise ValueError(f"latent-MAE weight {key}: shape {tuple(t.shape)} is neither a 1×1/3×3 OIHW nor an HWIO kernel")


def canonical_state_dict(raw: dict[str, Tensor]) -> dict[str, Tensor]:
    """Encoder weights under canonical names, OIHW, fp32 (see the module docstring)."""
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        key = _strip(key)
        if not key.startswith("encoder."):
            continue  # the MAE decoder, optimiser state, ...
        for pattern, repl in _ALIASES:
            key = pattern.sub(repl, key)
        jax = key.endswith(".kernel")
        if jax or key.endswith(".scale"):
            key = key.rsplit(".", 1)[0] + ".weight"
        value = value.float()
        if value.dim() == 4:
            value = _to_oihw(key, value, jax)
        if key in state:
            raise ValueError(f"latent-MAE checkpoint: two tensors map to {key} (e.g. both .kernel and .weight)")
        state[key] = value
    return state


def _checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file for `path` (a file, or a folder holding exactly one checkpoint)."""
    from drpo.hub import ModelNotFoundError, resolve_model

    try:
        found = resolve_model(path, what="latent-MAE checkpoint")
    except ModelNotFoundError as err:
        raise ModelNotFoundError(f"latent-MAE checkpoint '{path}' does not exist. {CHECKPOINT_HINT}") from err
    if found.is_dir():
        files = sorted(p for ext in ("*.pth", "*.pt", "*.safetensors") for p in found.glob(ext))
        if len(files) != 1:
            raise ModelNotFoundError(
                f"latent-MAE checkpoint folder {found} holds {len(files)} checkpoint files ({[p.name for p in files]}); "
                f"point features.options.path at one file. {CHECKPOINT_HINT}"
            )
        found = files[0]
    return found


def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> tuple[dict[str, Tensor], dict]:
    """(canonical encoder state dict, model_config) from any accepted checkpoint format.

    torch files load with weights_only=True; `trust_pickle=True` allows arbitrary pickles (only for
    files you trust, e.g. checkpoints whose metadata holds numpy objects).
    """
    file = _checkpoint_file(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: object = load_file(str(file))
    else:
        try:
            raw = torch.load(file, map_location="cpu", weights_only=not trust_pickle)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{file}: torch.load(weights_only=True) refused a non-tensor object ({err}). If you trust the file, "
                f"pass features.options.trust_pickle: true."
            ) from err
    meta: dict = {}
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        meta, raw = raw.get("metadata") or {}, raw["state_dict"]
    elif isinstance(raw, dict) and isinstance(raw.get("model_state_dict"), dict):
        meta, raw = raw.get("metadata") or {}, raw["model_state_dict"]
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ValueError(f"{file}: not a latent-MAE checkpoint (expected a tensor dict, or a dict with state_dict / model_state_dict)")
    state = canonical_state_dict(raw)
    if "encoder.conv1.weight" not in state:
        raise ValueError(f"{file}: no encoder.conv1 weight (kernel); keys start with {sorted(raw)[:4]}")
    config = meta.get("model_config", {}) if isinstance(meta, dict) else {}
    return state, dict(config or {})


def _stage_lengths(state: dict[str, Tensor]) -> tuple[int, ...]:
    """Blocks per stage counted in the weights."""
    counts: dict[int, int] = {}
    for key in state:
        m = re.match(r"^encoder\.stages_(\d+)\.layers_(\d+)\.", key)
        if m:
            i, j = int(m[1]), int(m[2])
            counts[i] = max(counts.get(i, 0), j + 1)
    return tuple(counts[i] for i in range(len(counts))) if counts and sorted(counts) == list(range(len(counts))) else ()


def latent_mae_from_state(state: dict[str, Tensor], model_config: dict | None = None, *, source: str = "state dict") -> LatentMAE:
    """Build the frozen encoder from a canonical state dict; every weight must be used."""
    model_config = model_config or {}
    counted = _stage_lengths(state)
    layers = tuple(int(n) for n in model_config.get("layers", counted or DEFAULT_LAYERS))
    if counted and counted != layers:
        raise ValueError(f"{source}: metadata.model_config.layers = {list(layers)} but the weights hold {list(counted)} blocks per stage")
    conv1 = state["encoder.conv1.weight"]
    in_channels = int(model_config.get("in_channels", conv1.shape[1]))
    if in_channels != conv1.shape[1]:
        raise ValueError(f"{source}: in_channels = {in_channels} in metadata but encoder.conv1 takes {conv1.shape[1]}")
    try:
        widths = [state[f"encoder.stages_{i}.layers_0.conv1.weight"].shape[0] for i in range(len(layers))]
    except KeyError as err:
        raise ValueError(f"{source}: missing latent-MAE weight {err.args[0]}") from err
    model = LatentMAE(in_channels, widths, layers, stem_width=conv1.shape[0])
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source}: weights do not match a latent-MAE with layers {list(layers)} and widths {widths}: "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shapes {wrong[:4]}"
        )
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False).eval()
    return model


def load_latent_mae(path: str | os.PathLike, *, trust_pickle: bool = False) -> LatentMAE:
    """The frozen latent-MAE encoder from a checkpoint in any accepted format."""
    state, model_config = read_checkpoint(path, trust_pickle=trust_pickle)
    return latent_mae_from_state(state, model_config, source=str(path))


def random_latent_mae(
    widths: Sequence[int] = (8, 16, 16, 32), layers: Sequence[int] = DEFAULT_LAYERS, in_channels: int = 4, seed: int = 0
) -> LatentMAE:
    """A latent-MAE with seeded random weights (GN scales/biases random too, so a mix-up shows)."""
    model = LatentMAE(in_channels, widths, layers)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.requires_grad_(False).eval()


def save_latent_mae_checkpoint(
    path: str | os.PathLike,
    widths: Sequence[int] = (8, 16, 16, 32),
    layers: Sequence[int] = DEFAULT_LAYERS,
    in_channels: int = 4,
    seed: int = 0,
    format: str = "state_dict",
    *,
    model: LatentMAE | None = None,
) -> Path:
    """Write a latent-MAE checkpoint (seeded random weights unless `model` is given), atomically.

    Formats, all accepted by `load_latent_mae`:
      state_dict       torch {"state_dict": canonical OIHW, "metadata": {"model_config": {layers, in_channels}}}
      model_state_dict torch {"model_state_dict": {"module." + key}}
      flat             safetensors flat dict, keys prefixed `_orig_mod.`
      flat_torch       torch flat tensor dict
      jax              torch {"state_dict": HWIO `*.kernel`, GN `*.scale`, plus a decoder tensor to ignore}
      pytorch_names    torch {"state_dict": `encoder.layer{s}.{j}.norm1`, `proj.conv`, ... aliases}
    """
    from drpo.io import atomic_path

    if format not in FORMATS:
        raise ValueError(f"latent-MAE checkpoint format {format!r} is not one of {FORMATS}")
    model = model or random_latent_mae(widths, layers, in_channels, seed)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    config = {"layers": list(model.layers), "in_channels": model.in_channels}
    path = Path(path)
    with atomic_path(path) as tmp:
        if format == "state_dict":
            torch.save({"state_dict": state, "metadata": {"model_config": config}}, tmp)
        elif format == "model_state_dict":
            torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp)
        elif format == "flat":
            from safetensors.torch import save_file

            save_file({f"_orig_mod.{k}": v for k, v in state.items()}, str(tmp))
        elif format == "flat_torch":
            torch.save(state, tmp)
        elif format == "jax":
            jax: dict[str, Tensor] = {}
            for k, v in state.items():
                stem = k.rsplit(".", 1)[0]
                if v.dim() == 4:
                    jax[f"{stem}.kernel"] = v.permute(2, 3, 1, 0).contiguous()
                elif k.endswith(".weight"):
                    jax[f"{stem}.scale"] = v
                else:
                    jax[k] = v
            jax["decoder.pred.kernel"] = torch.zeros(3, 3, 8, 4)  # the MAE decoder: must be ignored
            torch.save({"state_dict": jax, "metadata": {"model_config": config}}, tmp)
        else:  # pytorch_names
            renamed = {}
            for k, v in state.items():
                k = re.sub(r"^encoder\.stages_(\d+)\.layers_(\d+)\.", lambda m: f"encoder.layer{int(m[1]) + 1}.{m[2]}.", k)
                k = re.sub(r"\.gn([12])\.", r".norm\1.", k).replace("encoder.gn1.", "encoder.norm1.")
                renamed[k.replace(".proj_conv.", ".proj.conv.").replace(".proj_gn.", ".proj.norm.")] = v
            torch.save({"state_dict": renamed}, tmp)
    return path
