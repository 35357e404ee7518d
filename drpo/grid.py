"""Sample grids: images with their prompt under each, for a person to look at."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from drpo.io import save_image


def _wrap(words: list[str], font, width: float, space: float) -> list[list[str]]:
    """Words into lines that fit `width` pixels (a word longer than a line gets a line of its own)."""
    lines: list[list[str]] = []
    line, used = [], 0.0
    for word in words:
        w = font.getlength(word)
        if line and used + space + w > width:
            lines.append(line)
            line, used = [], 0.0
        used += (space if line else 0.0) + w
        line.append(word)
    if line:
        lines.append(line)
    return lines


def save_grid(path: str | Path, images: list, captions: list[str] | None = None, ncols: int | None = None, cell: int = 160,
              marks: list[bool | None] | None = None) -> Path:
    """Write a grid PNG: each image scaled to `cell` px (nearest, so small images stay crisp), its
    caption wrapped underneath, and, with `marks`, a green ✓ or red ✗ in its corner (a checker's
    verdict). Atomic (temp file, then rename)."""
    if not images:
        raise ValueError("save_grid: no images")
    captions = list(captions or [""] * len(images))
    if len(captions) != len(images):
        raise ValueError(f"save_grid: {len(images)} images but {len(captions)} captions")
    marks = list(marks or [None] * len(images))
    ncols = ncols or min(len(images), 8)
    nrows = math.ceil(len(images) / ncols)
    size = max(11, cell // 12)
    font = ImageFont.load_default(size=size)
    # the default font's space is a sliver (words ran together): words are placed with a space of our own
    space = max(font.getlength(" "), size * 0.4)
    line_h = int(size * 1.25)
    wrapped = [_wrap(c.split(), font, cell - 6, space)[:5] for c in captions]
    text_h = line_h * max((len(w) for w in wrapped), default=0) + (6 if any(wrapped) else 0)
    gap = 4
    grid = Image.new("RGB", (ncols * (cell + gap), nrows * (cell + text_h + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (img, lines, mark) in enumerate(zip(images, wrapped, marks)):
        r, c = divmod(i, ncols)
        x, y = c * (cell + gap), r * (cell + text_h + gap)
        img = img.convert("RGB")
        resample = Image.NEAREST if img.width <= cell else Image.LANCZOS
        grid.paste(img.resize((cell, cell), resample), (x, y))
        for j, line in enumerate(lines):
            cx = x + 3
            for word in line:
                draw.text((cx, y + cell + 3 + line_h * j), word, fill="black", font=font)
                cx += font.getlength(word) + space
        if mark is not None:  # a filled badge, legible on any image
            badge = max(14, cell // 7)
            colour = (22, 150, 60) if mark else (200, 30, 30)
            draw.ellipse((x + cell - badge - 3, y + 3, x + cell - 3, y + 3 + badge), fill=colour)
            bx, by = x + cell - badge - 3, y + 3
            if mark:  # a tick
                draw.line([(bx + badge * 0.25, by + badge * 0.55), (bx + badge * 0.45, by + badge * 0.75),
                           (bx + badge * 0.78, by + badge * 0.3)], fill="white", width=max(2, badge // 7))
            else:  # a cross
                for a, b in (((0.3, 0.3), (0.7, 0.7)), ((0.7, 0.3), (0.3, 0.7))):
                    draw.line([(bx + badge * a[0], by + badge * a[1]), (bx + badge * b[0], by + badge * b[1])],
                              fill="white", width=max(2, badge // 7))
    return save_image(path, grid)
