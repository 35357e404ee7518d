"""The shapes world's pairwise judge: the checker stands in for the Qwen3-VL judge (METHOD §5.4).

Order of evidence: a correct image beats an incorrect one; otherwise the higher fraction of
satisfied clauses wins; otherwise an optional secondary score (e.g. the world's reward model)
decides when the two scores differ by at least `margin`; otherwise a tie. Deterministic and
symmetric: swapping A and B swaps the winner.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from drpo.contracts import Judgement
from drpo.world.checker import CheckResult, check
from drpo.world.rewards import metadata_row

Secondary = Callable[[Image.Image, str], float]


def reward_secondary(reward, metadata: dict | None = None) -> Secondary:
    """Adapt a drpo reward (uint8 (N, 3, H, W) → (N,)) into a secondary score for one PIL image."""
    import torch

    def score(image: Image.Image, prompt: str) -> float:
        arr = torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1)[None].contiguous()
        return float(reward(arr, [prompt], [metadata or {}])[0])

    return score


def _brief(r: CheckResult) -> dict:
    return {"correct": r.correct, "fraction": round(r.fraction, 4), "reason": r.reason}


class WorldJudge:
    """Judge pairs of images of a world prompt from the checker's verdicts (see module doc)."""

    name = "world"

    def __init__(self, secondary: Secondary | None = None, margin: float = 0.0, secondary_scale: float = 1.0):
        self.secondary = secondary
        self.margin = float(margin)
        self.secondary_scale = float(secondary_scale)

    def judge(self, prompt: str, image_a: Image.Image, image_b: Image.Image, metadata: dict | None = None) -> Judgement:
        try:
            row = metadata_row(metadata, prompt)
            ra = check(np.asarray(image_a.convert("RGB")), row)
            rb = check(np.asarray(image_b.convert("RGB")), row)
        except ValueError as err:
            return Judgement("invalid", None, f"cannot check: {err}"[:200], "")
        raw: dict = {"A": _brief(ra), "B": _brief(rb)}
        df = ra.fraction - rb.fraction
        if ra.correct != rb.correct:
            winner, loser = ("A", rb) if ra.correct else ("B", ra)
            conf = 0.9 + 0.1 * abs(df)
            reason = f"{winner} is correct, {'B' if winner == 'A' else 'A'} is not ({loser.reason})"
        elif abs(df) > 1e-9:
            winner = "A" if df > 0 else "B"
            conf = 0.6 + 0.3 * abs(df)
            state = "correct" if ra.correct else "incorrect"
            hi, lo = max(ra.fraction, rb.fraction), min(ra.fraction, rb.fraction)
            reason = f"both {state}; {winner} satisfies more clauses ({hi:.2f} vs {lo:.2f})"
        elif self.secondary is not None:
            sa, sb = float(self.secondary(image_a, prompt)), float(self.secondary(image_b, prompt))
            raw["secondary"] = [sa, sb]
            d = sa - sb
            state = "correct" if ra.correct else "incorrect"
            if abs(d) < self.margin or d == 0:
                winner, conf = "tie", 0.5
                reason = f"both {state}; secondary scores within {self.margin:g}"
            else:
                winner = "A" if d > 0 else "B"
                conf = 0.5 + 0.4 * math.tanh(abs(d) / self.secondary_scale)
                reason = f"both {state}; {winner} has the higher secondary score ({max(sa, sb):.3g} vs {min(sa, sb):.3g})"
        else:
            winner, conf = "tie", 0.5
            reason = f"both {'correct' if ra.correct else 'incorrect'} with the same clause fraction {ra.fraction:.2f}"
        return Judgement(winner, round(conf, 4), reason[:200], json.dumps(raw, sort_keys=True))
