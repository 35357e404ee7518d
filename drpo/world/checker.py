"""GenEval-style correctness from pixels alone: the shapes world's non-differentiable reward.

Detection: foreground = pixels far from the background colour; connected components (8-connected)
of at least `min_area` pixels. A component holding two or more palette colours with substantial
area each is split by colour (touching objects); one holding exactly two stays whole only when it
reads as a pictogram better whole than split: a single object shading from one colour to the
other. Each part's shape is its half-way contour (pixels at least half-way from the background to
the part's colour), which keeps a blurred shape's outline and separates same-colour objects that
blur joined. Colour = the palette colour nearest to the piece's median RGB (none when too far:
off-palette blobs match no colour clause).

Class = the pictogram the piece's tight crop spells on a 3 × 3 grid (`pictograms.read`: a cell is
filled where at least half its area is), with the crop's confidence as the detection score. Crops
too elongated for a pictogram's square box, spelling no class, or too close to half-filled to read
are blobs with class None, which satisfy no clause.

Rules (GenEval's, as in its evaluator): for each include clause take the `count` highest-scoring
objects of its class; fewer than `count` fails; a colour clause needs all of them in that colour;
a position clause needs every one of them in the relation to every object matched by the target
clause (GenEval's box-centre rule with threshold 0.1). An exclude clause (class, N) fails when N or
more objects of the class are found — so counting rows (include n, exclude n + 1) mean exactly n.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from drpo.world.grammar import validate_row
from drpo.world.pictograms import read
from drpo.world.render import BACKGROUND, PALETTE, SceneObject, relations

BG_DISTANCE = 60.0  # RGB distance from the background above which a pixel is foreground
CORE_DISTANCE = 60.0  # a pixel this close to a palette colour counts as that colour's core
COLOR_DISTANCE = 90.0  # a component's median RGB must be this close to a palette colour to have a colour
MIN_AREA_FRACTION = 12 / 1024  # smaller components are noise (12 px at 32 × 32)
MAX_ASPECT = 1.6  # pictograms have square boxes; longer components are blobs
POSITION_THRESHOLD = 0.1  # GenEval's

_PALETTE_NAMES = list(PALETTE)
_PALETTE_RGB = np.asarray([PALETTE[c] for c in _PALETTE_NAMES], np.float32)
_BACKGROUND = np.asarray(BACKGROUND, np.float32)
_EIGHT = np.ones((3, 3), bool)


@dataclass
class CheckResult:
    correct: bool
    fraction: float  # fraction of satisfied clauses (include and exclude), a graded reward
    reason: str
    objects: list[SceneObject] = field(default_factory=list)


def classify_shape(crop: np.ndarray) -> tuple[str | None, float]:
    """(class, score) of a tight boolean crop; class None if elongated or unreadable."""
    h, w = crop.shape
    if max(h, w) > MAX_ASPECT * min(h, w):
        return None, 0.0
    return read(crop)


def _as_hwc_uint8(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8 (or (3, H, W) or PIL), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {arr.dtype}; convert with to_uint8 first")
    return arr


def _pieces(img: np.ndarray, part: np.ndarray, ref: np.ndarray, min_area: int) -> list[np.ndarray]:
    """The part's pixels at least half-way from the background to `ref`, as connected pieces.

    The half-way contour keeps a blurred shape's outline (a loose foreground mask rounds it off)
    and separates same-colour objects that blur joined.
    """
    d = ref - _BACKGROUND
    alpha = ((img - _BACKGROUND) @ d) / max(float(d @ d), 1e-6)
    labels, n = ndimage.label(part & (alpha >= 0.5), structure=_EIGHT)
    return [m for m in (labels == j for j in range(1, n + 1)) if m.sum() >= min_area]


def _objects(sub_img: np.ndarray, parts, min_area: int, offset: tuple[int, int]) -> tuple[list[SceneObject], float]:
    """Each (part mask, reference colour)'s half-way pieces as objects in image coordinates, and
    how well they explain the parts: pixels in pieces, weighted by their reading confidence."""
    found, explained = [], 0.0
    oy, ox = offset
    for part, ref in parts:
        for piece in _pieces(sub_img, part, ref, min_area):
            ys, xs = np.nonzero(piece)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            median = np.median(sub_img[piece], axis=0)
            dist = np.sqrt(((_PALETTE_RGB - median) ** 2).sum(-1))
            color = _PALETTE_NAMES[int(dist.argmin())] if dist.min() < COLOR_DISTANCE else None
            shape, score = classify_shape(piece[y0:y1, x0:x1])
            found.append(SceneObject(shape, color, (int(ox + x0), int(oy + y0), int(ox + x1), int(oy + y1)), score))
            explained += len(ys) * score if shape else 0.0
    return found, explained


def detect(image, min_area: int | None = None) -> list[SceneObject]:
    """Objects in an image (H, W, 3) uint8, highest score first."""
    arr = _as_hwc_uint8(image)
    img = arr.astype(np.float32)
    h, w = img.shape[:2]
    min_area = max(4, round(MIN_AREA_FRACTION * h * w)) if min_area is None else min_area
    bg_dist = np.sqrt(((img - _BACKGROUND) ** 2).sum(-1))
    labels, _ = ndimage.label(bg_dist > BG_DISTANCE, structure=_EIGHT)
    d2 = ((img[:, :, None, :] - _PALETTE_RGB) ** 2).sum(-1)  # (H, W, P)
    nearest = d2.argmin(-1)
    core = d2.min(-1) < CORE_DISTANCE**2
    found: list[SceneObject] = []
    for k, sl in enumerate(ndimage.find_objects(labels), 1):
        if sl is None:
            continue
        comp = labels[sl] == k
        if comp.sum() < min_area:
            continue
        sub_img = img[sl]
        offset = (sl[0].start, sl[1].start)
        counts = np.bincount(nearest[sl][comp & core[sl]], minlength=len(_PALETTE_NAMES))
        colors = [p for p in range(len(_PALETTE_NAMES)) if counts[p] >= min_area]
        if not colors:  # off-palette: its own strongest half sets the reference colour
            strong = comp & (bg_dist[sl] >= np.median(bg_dist[sl][comp]))
            objects, _ = _objects(sub_img, [(comp, np.median(sub_img[strong], axis=0))], min_area, offset)
        else:
            objects, fit = [], -1.0
            if len(colors) <= 2:  # one object in its most common colour (or shading between two)
                objects, fit = _objects(sub_img, [(comp, _PALETTE_RGB[int(counts.argmax())])], min_area, offset)
            if len(colors) > 1:  # touching objects of different colours, unless whole explains more
                sub = np.asarray(colors)[d2[sl][..., colors].argmin(-1)]
                split, split_fit = _objects(sub_img, [(comp & (sub == p), _PALETTE_RGB[p]) for p in colors], min_area, offset)
                if split_fit >= fit:
                    objects = split
        found.extend(objects)
    found.sort(key=lambda o: -o.score)
    return found


def evaluate(objects: Sequence[SceneObject], row: dict) -> CheckResult:
    """Apply GenEval's include/exclude rules to a list of objects (detected, or drawn: ground truth)."""
    validate_row(row)
    by_class: dict[str, list[SceneObject]] = {}
    for obj in sorted(objects, key=lambda o: -o.score):
        if obj.shape is not None:
            by_class.setdefault(obj.shape, []).append(obj)
    oks: list[bool] = []
    reasons: list[str] = []
    matched: list[list[SceneObject] | None] = []
    for clause in row["include"]:
        name, n = clause["class"], int(clause["count"])
        have = by_class.get(name, [])
        group = have[:n]
        ok = True
        if len(group) < n:
            ok = False
            reasons.append(f"expected {name}>={n}, found {len(have)}")
        else:
            if "color" in clause and sum(o.color == clause["color"] for o in group) < n:
                ok = False
                reasons.append(f"expected {clause['color']} {name}, found {' '.join(str(o.color) for o in group)}")
            if ok and "position" in clause:
                rel, target = clause["position"][0], int(clause["position"][1])
                targets = matched[target]
                if targets is None:
                    ok = False
                    reasons.append(f"no target for {name} to be {rel}")
                else:
                    for o in group:
                        bad = [t for t in targets if rel not in relations(o.box, t.box, POSITION_THRESHOLD)]
                        if bad:
                            ok = False
                            got = sorted(relations(o.box, bad[0].box, POSITION_THRESHOLD)) or ["overlapping"]
                            reasons.append(f"expected {name} {rel} target, found {' and '.join(got)}")
                            break
        matched.append(group if ok else None)
        oks.append(ok)
    for clause in row.get("exclude", []):
        name, n = clause["class"], int(clause["count"])
        k = len(by_class.get(name, []))
        oks.append(k < n)
        if k >= n:
            reasons.append(f"expected {name}<{n}, found {k}")
    correct = all(oks)
    return CheckResult(correct, sum(oks) / len(oks), "; ".join(reasons) if reasons else "all clauses satisfied",
                       list(objects))


def check(image, row: dict) -> CheckResult:
    """GenEval-style verdict on an image (H, W, 3) uint8 for a metadata row, from pixels alone."""
    validate_row(row)
    return evaluate(detect(image), row)


def manifest_correctness(manifest_path: str | Path, progress: bool = False):
    """Per-image correctness of a shapes-world manifest with the world's checker (GenEval rules): a
    DataFrame of prompt_id, seed, tag, correct, fraction, reason, image_path."""
    import pandas as pd

    from drpo.contracts import read_manifest
    from drpo.eval.metrics import load_images

    rows = read_manifest(manifest_path)
    out = []
    it = rows
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(rows, desc="checking", unit="img")
    for r in it:
        meta = dict(r.metadata)
        if "tag" not in meta:
            raise ValueError(f"{manifest_path}: row prompt_id={r.prompt_id} has no metadata.tag; not a GenEval-format prompt set")
        image = load_images([r.image])[0].permute(1, 2, 0).numpy()
        res = check(image, {"prompt": r.prompt, **meta})
        out.append({"prompt_id": r.prompt_id, "seed": r.seed, "tag": meta["tag"],
                    "correct": bool(res.correct), "fraction": float(res.fraction), "reason": res.reason,
                    "image_path": r.image_path})
    return pd.DataFrame(out)
