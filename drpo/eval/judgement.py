"""The judge interface: a `Judge` turns (prompt, image A, image B) into a `Judgement`.

Dependency-free, so every backend imports it and nothing else: the Qwen3-VL and OpenAI-compatible
judges (drpo.eval.judge_backends), the shapes world's checker judge (drpo.world.judge), a user's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from PIL import Image


@dataclass
class Judgement:
    """One verdict on a pair shown as (A first, B second)."""

    winner: str  # "A" | "B" | "tie" | "invalid"
    confidence: float | None
    reason: str
    raw: str


@runtime_checkable
class Judge(Protocol):
    def judge(
        self, prompt: str, image_a: Image.Image, image_b: Image.Image, metadata: dict | None = None
    ) -> Judgement: ...
