"""GenEval-format training prompts: GenEval's grammar and vocabulary, distinct, never a test prompt."""

from __future__ import annotations

from collections import Counter

import pytest

from drpo.data.geneval_grammar import GENEVAL_COLORS, generate

CLASSES = ["person", "bicycle", "car", "dog", "wine glass", "bus", "toothbrush"]


def test_rows_follow_genevals_format_and_proportions():
    rows = generate(600, seed=1, classes=CLASSES)
    assert len({r["prompt"] for r in rows}) == 600 and [r["prompt_id"] for r in rows] == list(range(600))
    tags = Counter(r["tag"] for r in rows)
    assert set(tags) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert tags["single_object"] == len(CLASSES)  # only 7 distinct single-object prompts exist
    for r in rows:
        if r["tag"] == "counting":
            n = r["include"][0]["count"]
            assert r["exclude"] == [{"class": r["include"][0]["class"], "count": n + 1}]
        if r["tag"] == "color_attr":
            assert {c["color"] for c in r["include"]} <= set(GENEVAL_COLORS)
    position = next(r for r in rows if r["tag"] == "position")
    a, b = position["include"]
    assert position["prompt"].endswith(f"{b['position'][0]} a {a['class']}") or position["prompt"].endswith(f"{b['position'][0]} an {a['class']}")
    assert generate(50, 1, CLASSES) == rows[:50]  # a seed is a prompt list


def test_excluded_prompts_never_appear_and_impossible_sizes_fail():
    test = {r["prompt"] for r in generate(100, seed=0, classes=CLASSES)}
    rows = generate(300, seed=1, classes=CLASSES, exclude_prompts=test)
    assert not test & {r["prompt"] for r in rows}
    with pytest.raises(ValueError, match="ask for fewer"):
        generate(100_000, seed=1, classes=CLASSES[:2])
