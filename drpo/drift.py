"""The drift field of DrPO (METHOD.md §1.2–1.4), in pure torch.

A *feature set* has shape (B, n, D): B independent sets (one per prompt), n particles, D dims.
Generated particles X attract toward positive anchors Y⁺ and are repelled by negative anchors Y⁻
and by each other; the generator then regresses onto the detached target `x̃ + F`.

Everything runs in float32 whatever the input dtype. Unlike the authors' code, the distance scale
S and the per-radius RMS ρ_r are computed **per set** (per b), so a batch of B prompts gives
exactly the B separate results; with B = 1 (the paper's trainers) the two are identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

KERNEL_IDS = {"laplacian": 0, "exponential": 1, "rbf": 2, "cosine": 3}
DEFAULT_RADII = (0.02, 0.05, 0.2)

# Clamps of §1.3, named so the numerics are visible at a glance.
_DIST_EPS = 1e-8  # inside the sqrt of squared distances -> min distance 1e-4
_SCALE_MIN = 1e-3  # floor of S and of s
_WEIGHT_MEAN_EPS = 1e-8
_AFFINITY_EPS = 1e-6  # floor of Row·Col -> affinity floor 1e-3·ω
_RMS_EPS = 1e-8
_MASK_PENALTY = 100.0  # masked logits get −100/r
# Sets batched along B are evaluated in chunks of at most this many particle-target pairs
# (B·N·T): past it the (B, N, T) intermediates fall out of cache and one big batch costs more per
# set than a loop (measured by `drpo bench drift`). Chunks give exactly the per-set results.
BATCH_PAIRS = 1 << 17


@dataclass
class DriftResult:
    """What one drift evaluation returns.

    loss:   (B,) mean squared distance of X/s to the detached target (carries grad to X).
    force:  (B, N, D) the drift F = Σ_r F^r/ρ_r in scaled units (detached).
    target: (B, N, D) the detached goal x̃ + F in scaled units.
    scale, scale_per_dim: (B,) the distance scale S and the per-dimension scale s of each set.
    rms:    radius -> (B,) RMS of that radius' raw field ρ_r.
    """

    loss: Tensor
    force: Tensor
    target: Tensor
    scale: Tensor
    scale_per_dim: Tensor
    rms: dict[float, Tensor]
    kernel: str
    extra: dict[str, Tensor] = field(default_factory=dict)

    def stats(self, prefix: str = "") -> dict[str, float]:
        """Scalars to log (averaged over sets), named as in the authors' logs."""
        out = {
            f"{prefix}feature_scale": self.scale.mean().item(),
            f"{prefix}feature_scale_per_dim": self.scale_per_dim.mean().item(),
            f"{prefix}drift_kernel": float(KERNEL_IDS[self.kernel]),
        }
        for r, rho in self.rms.items():
            out[f"{prefix}drift_rms_{r:g}"] = rho.mean().item()
        return out


def _normalize_kernel(kernel: str) -> str:
    kernel = kernel.lower()
    if kernel not in KERNEL_IDS:
        raise ValueError(f"kernel={kernel!r} is not one of {sorted(KERNEL_IDS)}")
    return "laplacian" if kernel == "exponential" else kernel


def _fp32(t: Tensor) -> Tensor:
    """Up-cast half/bfloat16/integer inputs to float32 (float64 stays float64, for gradchecks)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def pairwise_distance(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean distances (B,n,D) × (B,m,D) → (B,n,m) via the memory-friendly expansion."""
    x, y = _fp32(x), _fp32(y)
    sq = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(-2) - 2.0 * x @ y.transpose(-1, -2)
    return sq.clamp_min(_DIST_EPS).sqrt()


def kernel_logits(
    x: Tensor,
    t: Tensor,
    radius: float,
    kernel: str = "laplacian",
    scale: Tensor | float | None = None,
    distances: Tensor | None = None,
) -> Tensor:
    """Kernel logits ℓ_ij between particles x (B,n,D) and targets t (B,m,D) at one radius.

    `scale` is S, a scalar or one value per set (B,); it is ignored by the cosine kernel.
    Pass precomputed `distances` to avoid recomputing them for every radius.
    """
    kernel = _normalize_kernel(kernel)
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if kernel == "cosine":
        xn = torch.nn.functional.normalize(_fp32(x), dim=-1, eps=1e-8)
        tn = torch.nn.functional.normalize(_fp32(t), dim=-1, eps=1e-8)
        return (xn @ tn.transpose(-1, -2)) / radius
    d = pairwise_distance(x, t) if distances is None else distances
    if scale is not None:
        s = torch.as_tensor(scale, dtype=d.dtype, device=d.device).clamp_min(1e-8)
        d = d / (s.view(-1, 1, 1) if s.dim() == 1 else s)
    if kernel == "laplacian":
        return -d / radius
    return -0.5 * (d / radius) ** 2  # rbf


def _anchor_weights(w: Tensor | float, batch: int, count: int, name: str, like: Tensor) -> Tensor:
    """Broadcast per-anchor weights given as a scalar, (count,) or (B, count) to (B, count)."""
    w = torch.as_tensor(w, dtype=torch.float32, device=like.device)
    if w.dim() == 0:
        return w.expand(batch, count)
    if w.dim() == 1 and w.shape[0] == count:
        return w.unsqueeze(0).expand(batch, count)
    if w.dim() == 2 and tuple(w.shape) == (batch, count):
        return w
    raise ValueError(
        f"{name} must be a scalar, shape ({count},) or ({batch}, {count}); got shape {tuple(w.shape)}"
    )


def _check_set(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(f"{name} must have shape (B, n, D); got rank {t.dim()} shape {tuple(t.shape)}")


def drift_loss(
    x: Tensor,
    positives: Tensor,
    negatives: Tensor,
    weight_pos: Tensor | float,
    weight_neg: Tensor | float,
    radii: Sequence[float] = DEFAULT_RADII,
    kernel: str = "laplacian",
    mask_negative_self: bool = False,
    weight_gen: float = 1.0,
    return_affinity: bool = False,
) -> DriftResult:
    """Binary drift (§1.3): generated x (B,N,D) toward positives (B,P,D), away from negatives (B,M,D).

    The target set is [x̄; Y⁻; Y⁺] with weights [1; w⁻; w⁺]; the generated block repels itself
    (its own diagonal masked). With `mask_negative_self`, negative i is masked for particle i too
    (requires M == N; the reference field uses it). Returns a DriftResult whose `loss` (B,) has
    gradient −2/(N·D·s)·F with respect to x.

    `weight_gen` is the weight of the generated block (1 in the paper; only the ratios of the
    three weights matter). `return_affinity` keeps each radius' affinity A (B,N,N+M+P) in `extra`.
    """
    for name, t in (("x", x), ("positives", positives), ("negatives", negatives)):
        _check_set(name, t)
    b, n, dim = x.shape
    if positives.shape[0] != b or negatives.shape[0] != b:
        raise ValueError(
            f"batch sizes differ: x has B={b}, positives B={positives.shape[0]}, negatives B={negatives.shape[0]}"
        )
    if positives.shape[2] != dim or negatives.shape[2] != dim:
        raise ValueError(
            f"feature dims differ: x D={dim}, positives D={positives.shape[2]}, negatives D={negatives.shape[2]}"
        )
    p, m = positives.shape[1], negatives.shape[1]
    if p == 0 or m == 0:
        raise ValueError(f"need at least one positive and one negative anchor (got P={p}, M={m})")
    if mask_negative_self and m != n:
        raise ValueError(f"mask_negative_self requires as many negatives as particles (M={m}, N={n})")
    if not radii:
        raise ValueError("radii must name at least one radius")
    if any(r <= 0 for r in radii):
        raise ValueError(f"every radius must be > 0, got {tuple(radii)}")
    kernel = _normalize_kernel(kernel)
    per_set = n * (n + m + p)
    if b > 1 and b * per_set > BATCH_PAIRS:
        return _chunked(x, positives, negatives, weight_pos, weight_neg, max(1, BATCH_PAIRS // per_set),
                        radii=radii, kernel=kernel, mask_negative_self=mask_negative_self,
                        weight_gen=weight_gen, return_affinity=return_affinity)

    xf = _fp32(x)
    x_bar = xf.detach()
    targets = torch.cat([x_bar, _fp32(negatives.detach()).to(xf.dtype), _fp32(positives.detach()).to(xf.dtype)], dim=1)
    weights = torch.cat(
        [
            torch.full((b, n), float(weight_gen), device=x.device),
            _anchor_weights(weight_neg, b, m, "weight_neg", x),
            _anchor_weights(weight_pos, b, p, "weight_pos", x),
        ],
        dim=1,
    )  # (B, T)

    # Global (per set) weighted mean distance S and per-dimension scale s.
    dist = pairwise_distance(x_bar, targets)  # (B, N, T)
    weighted = (dist * weights.unsqueeze(1)).mean(dim=(1, 2))
    scale = (weighted / weights.mean(dim=1).clamp_min(_WEIGHT_MEAN_EPS)).clamp_min(_SCALE_MIN)
    scale_dim = (scale / dim**0.5).clamp_min(_SCALE_MIN)
    x_scaled = x_bar / scale_dim.view(b, 1, 1)
    t_scaled = targets / scale_dim.view(b, 1, 1)

    # Self mask: a particle never interacts with its own generated copy (nor its negative copy).
    total = targets.shape[1]
    mask = torch.zeros(n, total, device=x.device)
    idx = torch.arange(n, device=x.device)
    mask[idx, idx] = 1.0
    if mask_negative_self:
        mask[idx, n + idx] = 1.0

    is_pos = torch.zeros(total, dtype=torch.bool, device=x.device)
    is_pos[n + m :] = True
    force = torch.zeros_like(x_scaled)
    rms: dict[float, Tensor] = {}
    extra: dict[str, Tensor] = {}
    for r in radii:
        logits = kernel_logits(x_bar, targets, r, kernel, scale, distances=dist) - (_MASK_PENALTY / r) * mask
        row = logits.softmax(dim=2)  # over targets
        col = logits.softmax(dim=1)  # over generated particles
        affinity = (row * col).clamp_min(_AFFINITY_EPS).sqrt() * weights.unsqueeze(1)
        a_pos = affinity.masked_fill(~is_pos, 0.0)
        a_neg = affinity.masked_fill(is_pos, 0.0)
        mass_pos = a_pos.sum(dim=2, keepdim=True)  # m⁺_i
        mass_neg = a_neg.sum(dim=2, keepdim=True)  # m⁻_i
        coeff = a_pos * mass_neg - a_neg * mass_pos  # c_ij
        f_r = coeff @ t_scaled - coeff.sum(dim=2, keepdim=True) * x_scaled
        rho = f_r.pow(2).mean(dim=(1, 2)).clamp_min(_RMS_EPS).sqrt()  # (B,)
        force = force + f_r / rho.view(b, 1, 1)
        rms[float(r)] = rho
        if return_affinity:
            extra[f"affinity_{r:g}"] = affinity

    target = (x_scaled + force).detach()
    loss = (xf / scale_dim.view(b, 1, 1) - target).pow(2).mean(dim=(1, 2))
    return DriftResult(
        loss=loss,
        force=force.detach(),
        target=target,
        scale=scale.detach(),
        scale_per_dim=scale_dim.detach(),
        rms=rms,
        kernel=kernel,
        extra=extra,
    )


def _chunked(x, positives, negatives, weight_pos, weight_neg, chunk: int, **kw) -> DriftResult:
    """drift_loss over consecutive chunks of sets along B, concatenated (sets are independent)."""
    b = x.shape[0]

    def rows(w, sl):  # per-set weights (B, count) follow their sets; shared ones stay as given
        return w[sl] if isinstance(w, Tensor) and w.dim() == 2 and w.shape[0] == b else w

    # torch.split, not indexing: its backward writes each chunk's gradient into x's once
    pieces = zip(torch.split(x, chunk), torch.split(positives, chunk), torch.split(negatives, chunk))
    parts = []
    for i, (xc, pc, nc) in enumerate(pieces):
        sl = slice(i * chunk, (i + 1) * chunk)
        parts.append(drift_loss(xc, pc, nc, rows(weight_pos, sl), rows(weight_neg, sl), **kw))
    first = parts[0]
    return DriftResult(
        loss=torch.cat([r.loss for r in parts]),
        force=torch.cat([r.force for r in parts]),
        target=torch.cat([r.target for r in parts]),
        scale=torch.cat([r.scale for r in parts]),
        scale_per_dim=torch.cat([r.scale_per_dim for r in parts]),
        rms={k: torch.cat([r.rms[k] for r in parts]) for k in first.rms},
        kernel=first.kernel,
        extra={k: torch.cat([r.extra[k] for r in parts]) for k in first.extra},
    )


def preference_drift(
    x: Tensor,
    positives: Tensor,
    negatives: Tensor,
    eta_pos: Tensor | float = 3000.0,
    eta_neg: Tensor | float = 3000.0,
    radii: Sequence[float] = DEFAULT_RADII,
    kernel: str = "laplacian",
) -> DriftResult:
    """Preference field L_pref (§1.4): toward the top-ranked, away from the bottom-ranked anchors."""
    return drift_loss(x, positives, negatives, eta_pos, eta_neg, radii, kernel, mask_negative_self=False)


def reference_drift(
    x: Tensor,
    reference: Tensor,
    eta_ref: Tensor | float = 3000.0,
    eta_refneg: Tensor | float = 3000.0,
    radii: Sequence[float] = DEFAULT_RADII,
    kernel: str = "laplacian",
) -> DriftResult:
    """Reference field L_ref (§1.4): the generated set drifts toward the frozen base's samples.

    Positives are the reference features (same noises, same prompt); negatives are the generated
    set itself (detached), each particle's own copy masked.
    """
    if reference.shape != x.shape:
        raise ValueError(
            f"reference must have the same shape as x (same noises, same prompt): "
            f"x {tuple(x.shape)} vs reference {tuple(reference.shape)}"
        )
    return drift_loss(x, reference, x.detach(), eta_ref, eta_refneg, radii, kernel, mask_negative_self=True)


def to_particles(features: Tensor, sets: int = 1) -> Tensor:
    """Per-image features (K, T, D) → particles (sets, K/sets·T, D).

    Tokens of different images and positions are pooled into one unordered set (§1.1); with
    `sets` > 1 consecutive groups of K/sets images form separate sets (batched prompts).
    """
    if features.dim() != 3:
        raise ValueError(f"features must have shape (K, T, D); got {tuple(features.shape)}")
    k, t, d = features.shape
    if k % sets:
        raise ValueError(f"K={k} images cannot be split into sets={sets} equal sets")
    return features.reshape(sets, (k // sets) * t, d)


def mean_distance(x: Tensor, y: Tensor) -> Tensor:
    """Mean pairwise L2 distance per set (the logged d_pos / d_neg / d_ref)."""
    return pairwise_distance(x.detach(), y.detach()).mean(dim=(1, 2))
