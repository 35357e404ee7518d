"""The world's 80 object classes: GenEval's own (COCO's) names, each drawn as a 3 × 3 pictogram.

A pictogram is a pattern of filled cells on a 3 × 3 grid that is one 4-connected piece and touches
all four sides of the grid, so its box is square and it reads as one object. There are 111 such
patterns; these 80 were picked most-distinct-first (most differ from their nearest neighbour in one
cell, as a cat and a dog differ in a detail). The renderer scales a pattern to the object's side;
the checker reads a piece back by averaging its tight crop over the 3 × 3 grid (`read`).

With GenEval's 80 classes the world's prompts read as GenEval's do ("a photo of a giraffe and a
toaster"), and every tag has enough distinct prompts for GenEval's proportions: 80 single-object
prompts, 240 counting, 480 colour prompts.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

# name -> rows of the 3 × 3 grid, top first ("#" filled)
PICTOGRAMS: dict[str, str] = {
    "person": "###/###/###",
    "bicycle": "###/#../#..",
    "car": "#../###/#..",
    "motorcycle": "###/.#./.#.",
    "airplane": ".#./###/.#.",
    "bus": "..#/.##/##.",
    "train": "###/..#/..#",
    "truck": "..#/###/..#",
    "boat": "#../##./.##",
    "traffic light": ".#./.#./###",
    "fire hydrant": ".##/###/#..",
    "stop sign": "#.#/###/.#.",
    "parking meter": "##./.##/##.",
    "bench": "##./###/..#",
    "bird": ".##/##./.##",
    "cat": "##./#../###",
    "dog": ".##/..#/###",
    "horse": ".##/##./##.",
    "sheep": ".#./###/#.#",
    "cow": "##./.##/.##",
    "elephant": "#../#.#/###",
    "bear": "..#/#.#/###",
    "zebra": "###/#.#/##.",
    "giraffe": "###/#.#/#.#",
    "backpack": "#.#/###/#.#",
    "umbrella": "###/#.#/.##",
    "handbag": "###/.#./###",
    "tie": "###/##./#..",
    "suitcase": "###/#.#/#..",
    "frisbee": "##./###/#..",
    "skis": "#.#/###/#..",
    "snowboard": "###/##./.#.",
    "sports ball": "###/.##/.#.",
    "kite": "##./###/.#.",
    "baseball bat": ".##/###/.#.",
    "baseball glove": "###/#../##.",
    "skateboard": "###/.#./##.",
    "surfboard": ".##/.##/##.",
    "tennis racket": "#../###/##.",
    "bottle": ".#./###/##.",
    "wine glass": "..#/###/##.",
    "cup": "###/#.#/..#",
    "fork": "###/.##/..#",
    "knife": "#.#/###/..#",
    "spoon": ".##/###/..#",
    "bowl": "#../###/#.#",
    "banana": "..#/###/#.#",
    "apple": "###/.#./.##",
    "sandwich": "##./##./.##",
    "orange": "###/..#/.##",
    "broccoli": "#../###/.##",
    "carrot": ".#./###/.##",
    "hot dog": "..#/###/.##",
    "pizza": "##./.#./###",
    "donut": ".##/.#./###",
    "cake": "#../##./###",
    "chair": ".#./##./###",
    "couch": ".#./.##/###",
    "potted plant": "..#/.##/###",
    "bed": ".##/##./#..",
    "dining table": ".#./###/#..",
    "toilet": "..#/###/#..",
    "tv": "###/###/#..",
    "laptop": ".##/##./.#.",
    "computer mouse": "##./.##/.#.",
    "remote": "#../###/.#.",
    "keyboard": "..#/###/.#.",
    "cell phone": "###/###/.#.",
    "microwave": ".##/.#./##.",
    "oven": "###/##./##.",
    "toaster": ".#./.##/##.",
    "sink": "###/.##/##.",
    "refrigerator": "##./###/##.",
    "book": "#.#/###/##.",
    "clock": ".##/###/##.",
    "vase": "##./.##/..#",
    "scissors": "#../###/..#",
    "teddy bear": ".#./###/..#",
    "hair drier": "###/###/..#",
    "toothbrush": "##./###/#.#",
}
SIDE_CELLS = 3
MIN_CONFIDENCE = 0.5  # how far, on average, a crop's cells sit from half-filled (0: all ambiguous, 1: crisp)


def _code(pattern: str) -> int:
    return sum(1 << i for i, ch in enumerate(pattern.replace("/", "")) if ch == "#")


_CODES = {name: _code(p) for name, p in PICTOGRAMS.items()}
_BY_CODE = {code: name for name, code in _CODES.items()}
assert len(_BY_CODE) == len(PICTOGRAMS) == 80


@lru_cache(maxsize=None)
def mask(name: str, side: int) -> np.ndarray:
    """Boolean (side, side) mask of a class's pictogram scaled to `side` pixels (read-only)."""
    if name not in _CODES:
        raise ValueError(f"unknown object class {name!r}; the world's classes are GenEval's 80 (drpo.world.pictograms)")
    code, edges = _CODES[name], np.round(np.linspace(0, side, SIDE_CELLS + 1)).astype(int)
    m = np.zeros((side, side), bool)
    for i in range(SIDE_CELLS * SIDE_CELLS):
        if code >> i & 1:
            r, c = divmod(i, SIDE_CELLS)
            m[edges[r]:edges[r + 1], edges[c]:edges[c + 1]] = True
    m.setflags(write=False)
    return m


def read(crop: np.ndarray) -> tuple[str | None, float]:
    """(class, confidence) of a tight boolean crop: each cell is filled where at least half its area
    is; None where the cells spell no class or sit too close to half-filled to read."""
    cells = np.asarray(Image.fromarray(crop.astype(np.float32)).resize((SIDE_CELLS, SIDE_CELLS), Image.Resampling.BOX),
                       np.float32).ravel()
    confidence = float(1 - 2 * np.minimum(cells, 1 - cells).mean())
    name = _BY_CODE.get(sum(1 << i for i, v in enumerate(cells) if v >= 0.5))
    return (name, confidence) if name is not None and confidence >= MIN_CONFIDENCE else (None, confidence)
