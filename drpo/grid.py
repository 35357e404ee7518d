"""Sample grids: images with their prompt under each, for a person to look at."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from drpo.io import save_image


def save_grid(path: str | Path, images: list, captions: list[str] | None = None, ncols: int | None = None, cell: int = 128) -> Path:
    """Write a grid PNG: each image scaled to `cell` px (nearest, so small images stay crisp),
    its caption wrapped underneath. Atomic (temp file, then rename)."""
    if not images:
        raise ValueError("save_grid: no images")
    captions = list(captions or [""] * len(images))
    if len(captions) != len(images):
        raise ValueError(f"save_grid: {len(images)} images but {len(captions)} captions")
    ncols = ncols or min(len(images), 8)
    nrows = math.ceil(len(images) / ncols)
    font = ImageFont.load_default()
    chars = max(8, cell // 6)
    wrapped = [textwrap.wrap(c, chars)[:4] for c in captions]
    text_h = 11 * max((len(w) for w in wrapped), default=0) + (4 if any(wrapped) else 0)
    grid = Image.new("RGB", (ncols * cell, nrows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (img, lines) in enumerate(zip(images, wrapped)):
        r, c = divmod(i, ncols)
        x, y = c * cell, r * (cell + text_h)
        img = img.convert("RGB")
        resample = Image.NEAREST if img.width <= cell else Image.LANCZOS
        grid.paste(img.resize((cell, cell), resample), (x, y))
        for j, line in enumerate(lines):
            draw.text((x + 2, y + cell + 2 + 11 * j), line, fill="black", font=font)
    return save_image(path, grid)
