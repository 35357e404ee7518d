"""Render images that satisfy a world metadata row: the shapes world's real data.

Flat shapes on a light grey background with slight pixel noise; objects never overlap and keep a
gap, so the checker can segment them; position relations hold with a margin (and are stable under
small box changes), so a rendered image is unambiguous for GenEval's rules. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from drpo.world.grammar import COLORS, SHAPES, validate_row

BACKGROUND: tuple[int, int, int] = (232, 232, 232)
# Pairwise RGB distances >= 98 (yellow-orange the closest); all >= 190 from the background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 170),
    "orange": (245, 125, 15),
}
assert tuple(PALETTE) == COLORS

SIZE_RANGE = (0.25, 0.375)  # object side as a fraction of the image side (8..12 px at 32)
COLOR_JITTER = 10  # per-object uniform jitter of each channel
NOISE = 3  # per-pixel uniform noise amplitude


@dataclass(frozen=True)
class SceneObject:
    """One drawn (or detected) object; box is (x0, y0, x1, y1) in pixels, end-exclusive."""

    shape: str | None
    color: str | None
    box: tuple[int, int, int, int]
    score: float = 1.0


@lru_cache(maxsize=None)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean (side, side) mask of a shape whose tight bounding box is the full square."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; world shapes: {', '.join(SHAPES)}")
    s = side
    yy, xx = np.mgrid[0:s, 0:s] + 0.5  # pixel centres
    c = s / 2
    if shape == "circle":
        m = (xx - c) ** 2 + (yy - c) ** 2 <= (s / 2) ** 2 + 0.25
    elif shape == "square":
        m = np.ones((s, s), bool)
    elif shape == "triangle":  # apex up, base on the bottom row
        m = np.abs(xx - c) <= (yy + 0.5) / 2
    elif shape == "diamond":
        m = np.abs(xx - c) + np.abs(yy - c) <= s / 2
    else:  # cross: two centred bars about a third of the side thick
        w = s // 3 + ((s - s // 3) % 2)
        lo, hi = (s - w) // 2, (s + w) // 2
        m = np.zeros((s, s), bool)
        m[lo:hi, :] = True
        m[:, lo:hi] = True
    m.setflags(write=False)
    return m


def relations(box_a, box_b, threshold: float = 0.1, cut: float = 0.5) -> set[str]:
    """Where A is relative to B under GenEval's rule (y grows downwards).

    The centre offset is shrunk per axis by `threshold` × (sum of the two box sizes) and the
    relation holds where the shrunk offset, divided by the full offset's length, passes ±`cut`.
    GenEval uses threshold 0.1 and cut 0.5. Plain floats: this runs in the renderer's inner loop.
    """
    ax0, ay0, ax1, ay1 = box_a
    bx0, by0, bx1, by1 = box_b
    ox = (ax0 + ax1 - bx0 - bx1) / 2
    oy = (ay0 + ay1 - by0 - by1) / 2
    rx = math.copysign(max(abs(ox) - threshold * (ax1 - ax0 + bx1 - bx0), 0.0), ox)
    ry = math.copysign(max(abs(oy) - threshold * (ay1 - ay0 + by1 - by0), 0.0), oy)
    if abs(rx) < 1e-3 and abs(ry) < 1e-3:
        return set()
    norm = math.hypot(ox, oy)
    dx, dy = rx / norm, ry / norm
    out = set()
    if dx < -cut:
        out.add("left of")
    if dx > cut:
        out.add("right of")
    if dy < -cut:
        out.add("above")
    if dy > cut:
        out.add("below")
    return out


def stable_relations(box_a, box_b) -> set[str] | None:
    """GenEval's relations if a looser and a stricter rule agree on them, else None (borderline)."""
    loose = relations(box_a, box_b, threshold=0.0, cut=0.35)
    strict = relations(box_a, box_b, threshold=0.2, cut=0.65)
    return strict if loose == strict else None


def _objects_for(row: dict, rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """(shape, colour, clause index) of every object the row asks for; free colours at random."""
    out = []
    for i, clause in enumerate(row["include"]):
        for _ in range(int(clause["count"])):
            color = clause.get("color") or COLORS[int(rng.integers(len(COLORS)))]
            if color not in PALETTE:
                raise ValueError(f"row {row.get('prompt')!r}: colour {color!r} is not a world colour ({', '.join(COLORS)})")
            out.append((clause["class"], color, i))
    return out


def _free(box, boxes, gap: int) -> bool:
    return all(box[0] >= b[2] + gap or b[0] >= box[2] + gap or box[1] >= b[3] + gap or b[1] >= box[3] + gap
               for b in boxes)


def _place(sides: list[int], size: int, rng: np.random.Generator, gap: int, tries: int) -> list[tuple] | None:
    """Non-overlapping boxes (with `gap` pixels between them and 1 from the border), or None."""
    boxes: list[tuple[int, int, int, int]] = []
    for s in sides:
        for x, y in rng.integers(1, size - s, size=(tries, 2)).tolist():
            box = (x, y, x + s, y + s)
            if _free(box, boxes, gap):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _place_related(sides: list[int], size: int, rng: np.random.Generator, gap: int, rel: str) -> list[tuple] | None:
    """Two boxes, the second `rel` of the first: the second is drawn beyond the first's edge."""
    sa, sb = sides
    ax, ay = rng.integers(1, size - sa, size=2).tolist()
    a = (ax, ay, ax + sa, ay + sa)
    lo, hi = 1, size - sb - 1  # inclusive range of the second box's start on each axis
    axis = 0 if rel in ("left of", "right of") else 1
    if rel in ("right of", "below"):
        lo = a[axis + 2] + gap
    else:
        hi = a[axis] - gap - sb
    if lo > hi:
        return None
    along = int(rng.integers(lo, hi + 1))
    across = int(rng.integers(1, size - sb))
    bx, by = (along, across) if axis == 0 else (across, along)
    return [a, (bx, by, bx + sb, by + sb)]


def render_scene(row: dict, rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, list[SceneObject]]:
    """An image (size, size, 3) uint8 satisfying `row`, and the objects drawn in it."""
    validate_row(row)
    if size < 16:
        raise ValueError(f"render: size {size} is too small for the world's shapes; use 16 or more")
    specs = _objects_for(row, rng)
    gap = max(2, size // 16)
    lo, hi = (max(5, round(f * size)) for f in SIZE_RANGE)
    position = [(i, c["position"]) for i, c in enumerate(row["include"]) if "position" in c]
    first_of = {}
    for k, (_, _, i) in enumerate(specs):
        first_of.setdefault(i, k)
    related = len(specs) == 2 and len(position) == 1 and position[0][1][1] == 0  # GenEval's position rows
    boxes = None
    for attempt in range(400):
        top = max(lo, hi - attempt // 50)  # crowded rows: shrink the largest size after failures
        sides = [int(v) for v in rng.integers(lo, top + 1, size=len(specs))]
        if related:
            boxes = _place_related(sides, size, rng, gap, position[0][1][0])
        else:
            boxes = _place(sides, size, rng, gap, tries=30)
        if boxes is None:
            continue
        if all((rels := stable_relations(boxes[first_of[i]], boxes[first_of[int(t)]])) is not None and rel in rels
               for i, (rel, t) in position):
            break
        boxes = None
    if boxes is None:
        raise ValueError(f"could not place the objects of {row.get('prompt')!r} in a {size}px image; use a larger size")

    image = np.empty((size, size, 3), np.int16)
    image[:] = BACKGROUND
    objects = []
    for (shape, color, _), box in zip(specs, boxes):
        rgb = np.asarray(PALETTE[color], np.int16) + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
        mask = shape_mask(shape, box[2] - box[0])
        image[box[1]:box[3], box[0]:box[2]][mask] = rgb
        objects.append(SceneObject(shape, color, box))
    image += rng.integers(-NOISE, NOISE + 1, size=image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8), objects


def render(row: dict, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """An image (size, size, 3) uint8 that satisfies the GenEval-format `row`."""
    return render_scene(row, rng, size)[0]
