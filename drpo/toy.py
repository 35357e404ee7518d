"""`drpo toy`: DrPO in two dimensions, the picture that explains the method.

A small noise-to-point generator is first trained to a ring of eight modes (with the same drift
field, as a drifting model: positives = data, negatives = its own samples). It is then fine-tuned
online with DrPO on a reward that is used only through its *ranking* of the generator's own
candidates ("be close to the target region"), once without and once with the reference drift
toward the frozen base. The figure shows the samples before and after, the preference drift as
arrows on a grid, and the reward curve.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from drpo.drift import preference_drift, reference_drift


@dataclass
class ToyConfig:
    seed: int = 0
    pretrain_steps: int = 400
    steps: int = 150
    candidates: int = 64  # K per step
    top: int = 16  # P positives
    bottom: int = 16  # M negatives
    lr: float = 2e-3
    lambda_ref: float = 1.5  # each field is RMS-normalised, so λ_ref sets the tug-of-war directly
    target: tuple[float, float] = (2.0, 1.0)
    out: str = "results/toy/drpo_toy.png"


PRETRAIN_RADII = (0.2, 0.5, 1.0)


class PointGenerator(nn.Module):
    """z ∈ R² ~ N(0, I) → x ∈ R²."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def ring_data(n: int, generator: torch.Generator, modes: int = 8, radius: float = 2.0) -> torch.Tensor:
    k = torch.randint(modes, (n,), generator=generator)
    angle = 2 * math.pi * k / modes
    centers = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
    return centers + 0.12 * torch.randn(n, 2, generator=generator)


def reward(x: torch.Tensor, target: tuple[float, float]) -> torch.Tensor:
    """Higher is better; DrPO only sees the order of these numbers."""
    return -(x - torch.tensor(target)).norm(dim=-1)


def pretrain(cfg: ToyConfig, g: torch.Generator) -> PointGenerator:
    model = PointGenerator()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for _ in range(cfg.pretrain_steps):
        x = model(torch.randn(256, 2, generator=g))
        data = ring_data(256, g)
        # a drifting model: attract to data, repel from its own samples. In 2-D, from a
        # near-point initialisation, sharp radii collapse; wide ones spread the samples out.
        loss = reference_drift(x[None], data[None], radii=PRETRAIN_RADII).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def finetune(base: PointGenerator, cfg: ToyConfig, lambda_ref: float, g: torch.Generator) -> tuple[PointGenerator, list[float]]:
    model = copy.deepcopy(base)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    curve = []
    for _ in range(cfg.steps):
        z = torch.randn(cfg.candidates, 2, generator=g)
        x = model(z)
        with torch.no_grad():
            x_ref = base(z)  # frozen base, same noise
            r = reward(x, cfg.target)  # no gradient: a black box that ranks
        order = r.argsort(descending=True)
        pos, neg = x.detach()[order[: cfg.top]], x.detach()[order[-cfg.bottom :]]
        loss = preference_drift(x[None], pos[None], neg[None]).loss.mean()
        if lambda_ref > 0:
            loss = loss + lambda_ref * reference_drift(x[None], x_ref[None]).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(r.mean().item())
    return model, curve


def grid_field(base: PointGenerator, cfg: ToyConfig, g: torch.Generator, n: int = 15, lim: float = 3.2):
    """The preference drift felt by particles on a grid, for anchors ranked from base samples."""
    with torch.no_grad():
        cand = base(torch.randn(cfg.candidates, 2, generator=g))
        order = reward(cand, cfg.target).argsort(descending=True)
    axis = torch.linspace(-lim, lim, n)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    res = preference_drift(pts[None], cand[order[: cfg.top]][None], cand[order[-cfg.bottom :]][None])
    return pts, res.force[0], cand, order


def plot(path: Path, cfg: ToyConfig, base, tuned_noref, tuned_ref, curves, field, g) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from drpo.io import atomic_path

    z = torch.randn(2000, 2, generator=g)
    with torch.no_grad():
        samples = {"base": base(z), "DrPO, λ_ref = 0": tuned_noref(z), f"DrPO, λ_ref = {cfg.lambda_ref:g}": tuned_ref(z)}
    lim = 3.4
    xs = torch.linspace(-lim, lim, 200)
    gx, gy = torch.meshgrid(xs, xs, indexing="xy")
    rr = reward(torch.stack([gx, gy], -1).reshape(-1, 2), cfg.target).reshape(200, 200)

    fig, axes = plt.subplots(1, 5, figsize=(22, 4.6))
    for ax, (title, pts) in zip(axes[:3], samples.items()):
        ax.contourf(gx, gy, rr, levels=20, cmap="Greens", alpha=0.5)
        ax.plot(*cfg.target, marker="*", color="gold", markersize=18, markeredgecolor="k", zorder=1)
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, color="tab:blue", zorder=2)
        ax.set_title(title)
    pts, force, cand, order = field
    ax = axes[3]
    ax.contourf(gx, gy, rr, levels=20, cmap="Greens", alpha=0.5)
    ax.scatter(cand[:, 0], cand[:, 1], s=8, color="0.6", label="candidates")
    ax.scatter(*cand[order[: cfg.top]].T, s=18, color="tab:green", label=f"top {cfg.top} (attract)")
    ax.scatter(*cand[order[-cfg.bottom :]].T, s=18, color="tab:red", label=f"bottom {cfg.bottom} (repel)")
    ax.quiver(pts[:, 0], pts[:, 1], force[:, 0], force[:, 1], color="k", alpha=0.7, angles="xy")
    ax.set_title("preference drift on a grid")
    ax.legend(loc="lower left", fontsize=7)
    for ax in axes[:4]:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    ax = axes[4]
    for label, curve in curves.items():
        ax.plot(curve, label=label)
    ax.set_xlabel("update")
    ax.set_ylabel("mean reward of candidates")
    ax.set_title("reward (used only to rank)")
    ax.legend()
    fig.suptitle("DrPO in 2-D: the reward only ranks on-policy samples; top ones attract, bottom ones repel")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def run(cfg: ToyConfig) -> dict:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    base = pretrain(cfg, g)
    tuned_noref, curve_noref = finetune(base, cfg, 0.0, torch.Generator().manual_seed(cfg.seed + 1))
    tuned_ref, curve_ref = finetune(base, cfg, cfg.lambda_ref, torch.Generator().manual_seed(cfg.seed + 1))
    field = grid_field(base, cfg, g)
    curves = {"λ_ref = 0": curve_noref, f"λ_ref = {cfg.lambda_ref:g}": curve_ref}
    path = Path(cfg.out)
    plot(path, cfg, base, tuned_noref, tuned_ref, curves, field, g)
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(cfg.seed + 2))
    with torch.no_grad():
        x_base = base(z)
        summary = {
            "reward_base": reward(x_base, cfg.target).mean().item(),
            "reward_noref": reward(tuned_noref(z), cfg.target).mean().item(),
            "reward_ref": reward(tuned_ref(z), cfg.target).mean().item(),
            # how far each fine-tuned model moved its samples from the base's, for the same noise
            "shift_noref": (tuned_noref(z) - x_base).norm(dim=1).mean().item(),
            "shift_ref": (tuned_ref(z) - x_base).norm(dim=1).mean().item(),
            "figure": str(path),
        }
    return summary
