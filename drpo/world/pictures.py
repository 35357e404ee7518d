"""Pictures of the world for people: rendered rows in a captioned grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from drpo.grid import save_grid
from drpo.world.render import render


def render_images(rows: list[dict], seed: int, size: int = 32) -> list[Image.Image]:
    """One rendered image per row, from one seeded generator (same rows + seed → same pixels)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(render(row, rng, size)) for row in rows]


def render_grid(rows: list[dict], seed: int, path: str | Path, size: int = 32, ncols: int | None = None) -> Path:
    """Render each row once and save a grid with the prompts as captions."""
    return save_grid(path, render_images(rows, seed, size), [r["prompt"] for r in rows], ncols=ncols)
