"""GenEval's prompt format: its six tags, their proportions and its phrasing of a row's clauses.

Shared by the GenEval training-prompt grammar (drpo.data.geneval_grammar) and the shapes world's
grammar (drpo.world.grammar), which both write rows in `geneval_evaluation_metadata.jsonl`'s
format (tag, include, optional exclude, prompt).
"""

from __future__ import annotations

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# GenEval's own tag proportions (80, 99, 80, 94, 100, 100 of its 553 prompts).
GENEVAL_TAG_WEIGHTS: dict[str, float] = {"single_object": 80, "two_object": 99, "counting": 80,
                                         "colors": 94, "position": 100, "color_attr": 100}
NUMBERS: dict[int, str] = {2: "two", 3: "three", 4: "four"}


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def plural(name: str) -> str:
    # GenEval's own rule: "es" after an s ("buses", "wine glasses"), else "s" (even "toothbrushs").
    return name + ("es" if name.endswith("s") else "s")


def prompt_text(tag: str, include: list[dict]) -> str:
    """GenEval's phrasing of a row (reproduces its 553 evaluation prompts from their clauses)."""
    a = include[0]
    if tag == "single_object":
        return f"a photo of {_a(a['class'])}"
    if tag == "counting":
        return f"a photo of {NUMBERS[a['count']]} {plural(a['class'])}"
    if tag == "colors":
        return f"a photo of {_a(a['color'])} {a['class']}"
    b = include[1]
    if tag == "two_object":
        return f"a photo of {_a(a['class'])} and {_a(b['class'])}"
    if tag == "position":
        return f"a photo of {_a(b['class'])} {b['position'][0]} {_a(a['class'])}"
    if tag == "color_attr":
        return f"a photo of {_a(a['color'])} {a['class']} and {_a(b['color'])} {b['class']}"
    raise ValueError(f"unknown GenEval tag {tag!r}; known tags: {', '.join(TAGS)}")
