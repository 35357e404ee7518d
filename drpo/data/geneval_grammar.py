"""GenEval-format *training* prompts over GenEval's own vocabulary (METHOD.md §2.6, §5.3).

GenEval as a training reward needs training prompts from GenEval's grammar under another seed, and
never its 553 test prompts. Rows use the metadata format of `geneval_evaluation_metadata.jsonl`
(tag, include, exclude) and GenEval's phrasing (`drpo.data.geneval_format.prompt_text` reproduces all 553
real prompts from their clauses); the classes are GenEval's 80 COCO names, the colours its ten.
Prompts that also appear in an `exclude` file (the test set) are dropped while drawing.
"""

from __future__ import annotations

import random
from pathlib import Path

from drpo.data.geneval_format import GENEVAL_TAG_WEIGHTS, prompt_text
from drpo.io import read_text

GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
COUNTS = (2, 3, 4)


def _row(tag: str, rng: random.Random, classes: list[str]) -> dict:
    a, b = rng.sample(classes, 2)
    if tag == "single_object":
        include, exclude = [{"class": a, "count": 1}], None
    elif tag == "two_object":
        include, exclude = [{"class": a, "count": 1}, {"class": b, "count": 1}], None
    elif tag == "counting":
        n = rng.choice(COUNTS)
        include, exclude = [{"class": a, "count": n}], [{"class": a, "count": n + 1}]
    elif tag == "colors":
        include, exclude = [{"class": a, "count": 1, "color": rng.choice(GENEVAL_COLORS)}], None
    elif tag == "position":
        include, exclude = [{"class": a, "count": 1}, {"class": b, "count": 1, "position": [rng.choice(RELATIONS), 0]}], None
    elif tag == "color_attr":
        ca, cb = rng.sample(GENEVAL_COLORS, 2)
        include, exclude = [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}], None
    else:
        raise ValueError(f"unknown GenEval tag {tag!r}")
    row = {"tag": tag, "include": include}
    if exclude:
        row["exclude"] = exclude
    row["prompt"] = prompt_text(tag, include)
    return row


def generate(n: int, seed: int, classes: list[str], exclude_prompts: set[str] = frozenset()) -> list[dict]:
    """`n` distinct rows, tags in GenEval's proportions, none of whose prompts is excluded."""
    if len(classes) < 2:
        raise ValueError("geneval grammar: need at least two object classes")
    rng = random.Random(seed)
    tags, weights = list(GENEVAL_TAG_WEIGHTS), list(GENEVAL_TAG_WEIGHTS.values())
    seen = {p.strip().lower() for p in exclude_prompts}
    rows: list[dict] = []
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > 100 * n:
            raise ValueError(f"geneval grammar: only {len(rows)} distinct prompts found for n={n}; ask for fewer")
        row = _row(rng.choices(tags, weights)[0], rng, classes)
        key = row["prompt"].strip().lower()
        if key in seen:
            continue
        seen.add(key)
        rows.append({**row, "prompt_id": len(rows)})
    return rows


def read_object_names(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: GenEval's object names (geneval_object_names.txt, one class per line) not found")
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]
