"""Preference pairs of the shapes world for the offline variant (METHOD.md §2.5).

For a training prompt, `chosen` is a render of it and `rejected` a render of another prompt of the
same tag that the checker confirms does *not* satisfy the first (a wrong colour, count, shape or
position). Written as the offline dataset format: `pairs.jsonl` with paths relative to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from drpo.io import save_image, write_jsonl
from drpo.world.checker import check
from drpo.world.render import render


def build_world_pairs(prompts_path: str | Path, out: str | Path, *, n: int = 200, resolution: int = 32, seed: int = 0) -> Path:
    from drpo.data.prompts import load_prompts

    rows = load_prompts(prompts_path)
    by_tag: dict[str, list[dict]] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(r)
    rng = np.random.default_rng(seed)
    out = Path(out)
    pairs = []
    for i in range(n):
        row = rows[i % len(rows)]
        chosen = render(row, rng, resolution)
        for _ in range(50):
            other = by_tag[row["tag"]][rng.integers(len(by_tag[row["tag"]]))]
            rejected = render(other, rng, resolution)
            if other["prompt"] != row["prompt"] and not check(rejected, row).correct:
                break
        else:
            continue  # no clean negative for this prompt (a one-prompt tag): skip it
        stem = f"images/{i:05d}"
        save_image(out.parent / f"{stem}_chosen.png", Image.fromarray(chosen))
        save_image(out.parent / f"{stem}_rejected.png", Image.fromarray(rejected))
        pairs.append({"prompt": row["prompt"], "prompt_id": row.get("prompt_id", i), "chosen": f"{stem}_chosen.png",
                      "rejected": f"{stem}_rejected.png", "tag": row["tag"]})
    if not pairs:
        raise ValueError(f"{prompts_path}: no preference pairs could be built")
    return write_jsonl(out, pairs)
