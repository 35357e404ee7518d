"""The shapes world's prompt grammar: GenEval's six tags over its 80 object classes and 6 colours.

Rows use GenEval's own metadata format (`tag`, `include`, optional `exclude`, `prompt`; clauses with
`class`, `count`, and `color` or `position`), plus `prompt_id`, so every tool that reads GenEval
metadata (the GenEval reward, the judge, the samplers) reads the world's prompts unchanged.
The grammar is finite (see `all_rows`), so train/test splits are disjoint by construction.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from drpo.data.geneval_format import GENEVAL_TAG_WEIGHTS, NUMBERS, TAGS, plural, prompt_text  # noqa: F401  (the world's names)
from drpo.world.pictograms import PICTOGRAMS

# Classes are GenEval's 80, each a 3 × 3 pictogram (pictograms.py); colours must stay far apart in
# RGB (see render.PALETTE). Order is part of the grammar: it fixes what a seed produces.
CLASSES: tuple[str, ...] = tuple(PICTOGRAMS)
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


def _pairs() -> list[tuple[str, str]]:
    return [(a, b) for a in CLASSES for b in CLASSES if a != b]


def _make(tag: str, include: list[dict], exclude: list[dict] | None = None) -> dict:
    row: dict = {"tag": tag, "include": include}
    if exclude is not None:
        row["exclude"] = exclude
    row["prompt"] = prompt_text(tag, include)
    return row


def all_rows(tag: str) -> list[dict]:
    """Every distinct row of one tag, in a fixed order (the grammar is finite)."""
    if tag == "single_object":
        return [_make(tag, [{"class": s, "count": 1}]) for s in CLASSES]
    if tag == "two_object":
        return [_make(tag, [{"class": a, "count": 1}, {"class": b, "count": 1}]) for a, b in _pairs()]
    if tag == "counting":
        # GenEval: "exactly n" is include count n plus exclude count n + 1 (i.e. fewer than n + 1).
        return [_make(tag, [{"class": s, "count": n}], exclude=[{"class": s, "count": n + 1}])
                for s in CLASSES for n in NUMBERS]
    if tag == "colors":
        return [_make(tag, [{"class": s, "count": 1, "color": c}]) for s in CLASSES for c in COLORS]
    if tag == "position":
        # GenEval: clause 1 is placed relative to clause 0 ("a B right of an A").
        return [_make(tag, [{"class": a, "count": 1}, {"class": b, "count": 1, "position": [rel, 0]}])
                for a, b in _pairs() for rel in RELATIONS]
    if tag == "color_attr":
        return [_make(tag, [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}])
                for a, b in _pairs() for ca in COLORS for cb in COLORS if ca != cb]
    raise ValueError(f"unknown GenEval tag {tag!r}; known tags: {', '.join(TAGS)}")


def vocabulary_words() -> list[str]:
    """Every word any world prompt uses (for a word-level tokenizer), sorted."""
    phrases = ["a an photo of and", *CLASSES, *map(plural, CLASSES), *COLORS, *RELATIONS, *NUMBERS.values()]
    return sorted({w for phrase in phrases for w in phrase.split()})


def _weights(tag_weights: Mapping[str, float] | None, tags: Iterable[str] | None) -> dict[str, float]:
    weights = dict(GENEVAL_TAG_WEIGHTS if tag_weights is None else tag_weights)
    for tag in weights:
        if tag not in TAGS:
            raise ValueError(f"tag_weights: unknown tag {tag!r}; known tags: {', '.join(TAGS)}")
    if tags is not None:
        tags = list(tags)
        for tag in tags:
            if tag not in TAGS:
                raise ValueError(f"tags: unknown tag {tag!r}; known tags: {', '.join(TAGS)}")
        weights = {t: weights.get(t, 0.0) for t in tags}
    weights = {t: float(w) for t, w in weights.items() if w > 0}
    if not weights:
        raise ValueError("tag_weights/tags select no tag with a positive weight")
    return weights


def generate_prompts(n: int, seed: int, tag_weights: Mapping[str, float] | None = None,
                     tags: Iterable[str] | None = None) -> list[dict]:
    """`n` rows drawn like GenEval's generator: a tag by weight, then its slots uniformly.

    Draws are independent, so rows may repeat; `split_prompts` gives unique, disjoint sets.
    Default weights are GenEval's tag proportions; `tags` restricts to a subset.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    weights = _weights(tag_weights, tags)
    names = [t for t in TAGS if t in weights]
    tables = {t: all_rows(t) for t in names}
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tag = rng.choices(names, weights=[weights[t] for t in names])[0]
        rows.append({**rng.choice(tables[tag]), "prompt_id": i})
    return rows


def _allocate(total: int, weights: dict[str, float], caps: dict[str, int]) -> dict[str, int]:
    """Split `total` over tags in proportion to weights without exceeding caps; a capped tag's
    share goes to the others."""
    alloc = {t: 0 for t in weights}
    left = total
    while left > 0:
        open_tags = [t for t in weights if alloc[t] < caps[t]]
        if not open_tags:
            break
        wsum = sum(weights[t] for t in open_tags)
        quota = {t: left * weights[t] / wsum for t in open_tags}
        give = {t: min(int(quota[t]), caps[t] - alloc[t]) for t in open_tags}
        if sum(give.values()) == 0:  # only fractions left: one to the tag with the fewest per weight
            give = {max(open_tags, key=lambda t: (weights[t] / (alloc[t] + 1), -TAGS.index(t))): 1}
        for t, k in give.items():
            alloc[t] += k
        left -= sum(give.values())
    return alloc


class Splits(NamedTuple):
    train: list[dict]
    test: list[dict]
    val: list[dict]


def _stratum(row: dict):
    """What a held-out set must not take all of: a counting row's number, a colour row's colour, a
    position row's relation (so the training set keeps every number word, colour and relation)."""
    clause = row["include"][-1]
    return {"counting": clause["count"], "colors": clause.get("color"), "position": (clause.get("position") or [None])[0]}.get(row["tag"])


def _interleaved(pool: list[dict]) -> list[dict]:
    """The pool reordered so that every prefix takes its strata in turn (first seen, first served)."""
    strata: dict = {}
    for row in pool:
        strata.setdefault(_stratum(row), []).append(row)
    groups = list(strata.values())
    return [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]


def split_prompts(n_train: int, n_test: int, seed: int, tag_weights: Mapping[str, float] | None = None,
                  tags: Iterable[str] | None = None, max_test_fraction: float = 0.5, n_val: int = 0,
                  train_tag_weights: Mapping[str, float] | None = None) -> Splits:
    """Disjoint (train, test, val) sets of unique prompts.

    Test and validation carry `tag_weights` (GenEval's proportions by default) where the grammar
    allows; training prompts carry `train_tag_weights` (every tag alike by default). The test set is
    drawn first, at most `max_test_fraction` of each tag's distinct prompts, then the validation set,
    at most half of what is left of each tag, then training prompts from the rest; a tag with too few
    prompts hands its share to the others. Within a tag each set takes the numbers, colours and
    relations in turn, so training keeps every one of them. `prompt_id` counts from 0 in each set.
    Too many prompts asked for is an error naming the limit.
    """
    weights = _weights(tag_weights, tags)
    names = [t for t in TAGS if t in weights]
    train_weights = _weights(train_tag_weights, names) if train_tag_weights is not None else dict.fromkeys(names, 1.0)
    rng = random.Random(seed)
    pools = {}
    for t in names:
        pool = all_rows(t)
        rng.shuffle(pool)
        pools[t] = _interleaved(pool)
    total = sum(len(p) for p in pools.values())
    if n_train + n_test + n_val > total:
        raise ValueError(f"split_prompts: asked for {n_train} train + {n_test} test + {n_val} validation prompts but the "
                         f"grammar has only {total} distinct prompts for tags {names}; lower world.train_prompts/test_prompts/val_prompts")
    test_caps = {t: int(len(pools[t]) * max_test_fraction) for t in names}
    if n_test > sum(test_caps.values()):
        raise ValueError(f"split_prompts: n_test={n_test} exceeds {sum(test_caps.values())} "
                         f"(max_test_fraction={max_test_fraction} of each tag's prompts)")
    n_test_tag = _allocate(n_test, weights, test_caps)
    n_val_tag = _allocate(n_val, weights, {t: (len(pools[t]) - n_test_tag[t]) // 2 for t in names})
    taken = {t: n_test_tag[t] + n_val_tag[t] for t in names}
    n_train_tag = _allocate(n_train, train_weights, {t: len(pools[t]) - taken[t] for t in names})
    if sum(n_val_tag.values()) < n_val or sum(n_train_tag.values()) < n_train:
        raise ValueError(f"split_prompts: {n_val} validation and {n_train} training prompts do not fit beside {n_test} test "
                         f"prompts (validation takes at most half of each tag's rest); lower world.val_prompts/train_prompts")

    def _finish(by_tag: dict[str, list[dict]]) -> list[dict]:
        rows = [r for t in names for r in by_tag[t]]
        rng.shuffle(rows)
        return [{**r, "prompt_id": i} for i, r in enumerate(rows)]

    test = _finish({t: pools[t][: n_test_tag[t]] for t in names})
    val = _finish({t: pools[t][n_test_tag[t]: taken[t]] for t in names})
    train = _finish({t: pools[t][taken[t]: taken[t] + n_train_tag[t]] for t in names})
    seen = [{r["prompt"] for r in rows} for rows in (train, test, val)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    return Splits(train, test, val)


def validate_row(row: Mapping) -> None:
    """Raise ValueError naming the problem if `row` is not a GenEval metadata row the world can check."""
    if not isinstance(row, Mapping):
        raise ValueError(f"metadata row must be a dict, got {type(row).__name__}")
    for key in ("tag", "include"):
        if key not in row:
            raise ValueError(f"metadata row {dict(row)!r} lacks {key!r}; world rows come from "
                             "`drpo world prompts` (GenEval format: tag, include, exclude, prompt)")
    if not isinstance(row["include"], list) or not row["include"]:
        raise ValueError(f"metadata row {row.get('prompt')!r}: 'include' must be a non-empty list of clauses")
    for clause in list(row["include"]) + list(row.get("exclude", [])):
        if "class" not in clause or "count" not in clause:
            raise ValueError(f"metadata row {row.get('prompt')!r}: clause {clause!r} needs 'class' and 'count'")
    for i, clause in enumerate(row["include"]):
        if "position" in clause:
            rel, target = clause["position"]
            if rel not in RELATIONS or not 0 <= int(target) < i:
                raise ValueError(f"metadata row {row.get('prompt')!r}: bad position {clause['position']!r} "
                                 f"(want [one of {RELATIONS}, index of an earlier clause])")
