"""Render images that satisfy a world metadata row: the shapes world's real data.

Flat pictograms (pictograms.py: each class a 3 × 3 pattern) on a light grey background with slight
pixel noise; objects never overlap and keep a
gap, so the checker can segment them; position relations hold with a margin (and are stable under
small box changes), so a rendered image is unambiguous for GenEval's rules. Pure numpy.

Two layouts. `slots` (the world's data): objects sit in a fixed arrangement per object count (a
relation puts the related object on its side), each with its own size, a ±1 px offset and, where
the prompt names none, a colour. `free`: anywhere, rejection-sampled (the checker is tested on both).

In the slot layout these per-object draws can be read from a latent noise tensor instead of the
rng (`noise=`): the uniforms of object k are Φ of the noise's channel means over the latent cells
around its slot. Pairing each render with the noise it was drawn from makes noise → image a
function a one-step generator can regress (drpo.world.base), while over random noise the renders
keep the same distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drpo.world.grammar import COLORS, validate_row
from drpo.world.pictograms import mask as shape_mask

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
LAYOUTS = ("slots", "free")
# Slot centres (x, y) as fractions of the side, by object count: 16 px apart at 32, so two 12 px
# objects offset by 1 px toward each other still keep a 2 px gap.
SLOTS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.5, 0.5),),
    2: ((0.25, 0.5), (0.75, 0.5)),
    3: ((0.25, 0.25), (0.75, 0.25), (0.5, 0.75)),
    4: ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)),
}
# GenEval's position rows: (first object's slot, related object's slot) for "related <rel> first".
RELATION_SLOTS: dict[str, tuple[tuple[float, float], ...]] = {
    "left of": ((0.75, 0.5), (0.25, 0.5)),
    "right of": ((0.25, 0.5), (0.75, 0.5)),
    "above": ((0.5, 0.75), (0.5, 0.25)),
    "below": ((0.5, 0.25), (0.5, 0.75)),
}
COLOR_JITTER = 10  # per-object uniform jitter of each channel
NOISE = 3  # per-pixel uniform noise amplitude


@dataclass(frozen=True)
class SceneObject:
    """One drawn (or detected) object: its class (None: unreadable), colour and box (x0, y0, x1, y1)
    in pixels, end-exclusive."""

    shape: str | None
    color: str | None
    box: tuple[int, int, int, int]
    score: float = 1.0


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


def _clauses(row: dict) -> list[tuple[str, str | None, int]]:
    """(shape, colour or None, clause index) of every object the row asks for."""
    out = []
    for i, clause in enumerate(row["include"]):
        color = clause.get("color")
        if color is not None and color not in PALETTE:
            raise ValueError(f"row {row.get('prompt')!r}: colour {color!r} is not a world colour ({', '.join(COLORS)})")
        out += [(clause["class"], color, i)] * int(clause["count"])
    return out


def _objects_for(row: dict, rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """(shape, colour, clause index) of every object the row asks for; free colours at random."""
    return [(cls, col or COLORS[int(rng.integers(len(COLORS)))], i) for cls, col, i in _clauses(row)]


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


def noise_uniforms(noise: np.ndarray, slots: Sequence[tuple[float, float]]) -> np.ndarray:
    """(len(slots), 4) uniforms in [0, 1) read from latent noise (C >= 4, h, w >= 3) around each slot.

    The mean of 3 × 3 standard-normal cells has standard deviation 1/3, so Φ(3·mean) is uniform;
    slots of one layout read disjoint cells, so their draws are independent.
    """
    noise = np.asarray(noise, np.float64)
    if noise.ndim != 3 or noise.shape[0] < 4 or min(noise.shape[1:]) < 3:
        raise ValueError(f"noise must have shape (C >= 4, h >= 3, w >= 3) like a latent; got {noise.shape}")
    _, h, w = noise.shape
    out = np.empty((len(slots), 4))
    for k, (fx, fy) in enumerate(slots):
        cy, cx = min(max(int(fy * h), 1), h - 2), min(max(int(fx * w), 1), w - 2)
        means = noise[:4, cy - 1:cy + 2, cx - 1:cx + 2].mean(axis=(1, 2))
        out[k] = [0.5 * (1.0 + math.erf(3.0 * m / math.sqrt(2.0))) for m in means]
    return np.minimum(out, np.nextafter(1.0, 0.0))


def _slot_layout(row: dict, n: int) -> tuple[tuple[float, float], ...]:
    position = [c["position"] for c in row["include"] if "position" in c]
    if position:
        if n != 2 or position[0][1] != 0:
            raise ValueError(f"row {row.get('prompt')!r}: the slot layout places a relation between exactly two "
                             f"objects, the second relative to the first; use layout='free'")
        return RELATION_SLOTS[position[0][0]]
    if n not in SLOTS:
        raise ValueError(f"row {row.get('prompt')!r}: the slot layout holds 1 to {max(SLOTS)} objects, not {n}")
    return SLOTS[n]


def _slot_boxes(slots, uniforms: np.ndarray, size: int, lo: int, hi: int) -> list[tuple[int, int, int, int]]:
    """Boxes from per-object uniforms (colour, side, x offset, y offset): side lo..hi, offset ±jitter."""
    jitter = max(1, size // 32)
    boxes = []
    for (fx, fy), u in zip(slots, uniforms):
        side = lo + int(u[1] * (hi - lo + 1))
        dx, dy = (int(v * (2 * jitter + 1)) - jitter for v in u[2:4])
        x0 = min(max(round(fx * size + dx - side / 2), 1), size - 1 - side)
        y0 = min(max(round(fy * size + dy - side / 2), 1), size - 1 - side)
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def render_scene(row: dict, rng: np.random.Generator, size: int = 32, layout: str = "slots",
                 noise: np.ndarray | None = None) -> tuple[np.ndarray, list[SceneObject]]:
    """An image (size, size, 3) uint8 satisfying `row`, and the objects drawn in it.

    `noise` (slot layout only): read each object's size, offset and free colour from this latent
    noise instead of `rng` (see the module docstring); colour jitter and pixel noise stay random.
    """
    validate_row(row)
    if size < 16:
        raise ValueError(f"render: size {size} is too small for the world's pictograms; use 16 or more")
    if layout not in LAYOUTS:
        raise ValueError(f"render: unknown layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
    if noise is not None and layout != "slots":
        raise ValueError("render: noise= reads the slot layout's draws; it needs layout='slots'")
    lo, hi = (max(5, round(f * size)) for f in SIZE_RANGE)
    if layout == "slots":
        clauses = _clauses(row)
        slots = _slot_layout(row, len(clauses))
        uniforms = noise_uniforms(noise, slots) if noise is not None else rng.random((len(slots), 4))
        specs = [(cls, col or COLORS[int(u[0] * len(COLORS))], i) for (cls, col, i), u in zip(clauses, uniforms)]
        return _draw(specs, _slot_boxes(slots, uniforms, size, lo, hi), rng, size)
    specs = _objects_for(row, rng)
    gap = max(2, size // 16)
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
    return _draw(specs, boxes, rng, size)


def _draw(specs, boxes, rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[SceneObject]]:
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


def render(row: dict, rng: np.random.Generator, size: int = 32, layout: str = "slots",
           noise: np.ndarray | None = None) -> np.ndarray:
    """An image (size, size, 3) uint8 that satisfies the GenEval-format `row`."""
    return render_scene(row, rng, size, layout, noise)[0]
