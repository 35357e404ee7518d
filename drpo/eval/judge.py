"""Pairwise judging of two methods' images of the same prompts (METHOD.md §5.4).

Two sample manifests are matched on (prompt_id, seed); a judge (Qwen3-VL, an OpenAI-compatible
server, or the shapes world's checker) is shown both images and names the better one. Which
method is shown first is decided by a hash of the pair (`order="hashed"`, the authors' protocol)
or both orders are judged and only an agreeing verdict counts as a win (`order="both"`). Every
verdict, raw model text included, is appended to a JSON-lines file so that a killed run resumes;
`summarize` turns the verdicts into win rates with bootstrap confidence intervals.

Vocabulary: the *methods* are "left" (manifest --a, the method under test) and "right" (manifest
--b, the baseline); the *positions* in the judge's message are "A" (shown first) and "B".
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from drpo.contracts import Judge, Judgement, JudgeSummary, ManifestRow, read_manifest  # noqa: F401  (the judge interface, re-exported)
from drpo.shards import parse_shard  # noqa: F401  (drpo.eval.judge.parse_shard)

ORDER_SALT = "qwen3vl_pairwise_v1"
WINNERS = ("A", "B", "tie", "invalid")
METHOD_WINNERS = ("left", "right", "tie", "invalid")


# -- the judge interface ------------------------------------------------------------------------




# -- the message ----------------------------------------------------------------------------------

ORDER_LINE = "Image A is the first image above and image B is the second image."

INSTRUCTIONS = """\
You are an expert judge of text-to-image generation. Both images above were generated for the \
same text prompt. Choose the image that satisfies the prompt better while also being of high quality.

Prompt: {prompt}

Judge with these criteria, in order of priority:
1. Prompt alignment: the requested objects, attributes, relations, style, counts and composition are all present and correct.
2. Visual quality: few artifacts; clean anatomy, geometry and textures; coherent lighting; a consistent rendering.
3. Overall appeal, weighed only after criteria 1 and 2.

Do not prefer an image because of its position or its label. Penalise obvious artifacts, broken \
shapes, missing or extra key objects, text the prompt asks for that is unreadable, and content \
unrelated to the prompt. Answer "tie" only when the two images are genuinely comparable.

Reply with a JSON object only, no other text:
{{"winner": "A" or "B" or "tie", "confidence": a number from 0 to 1, "reason": "fewer than 25 words"}}"""


def judge_instructions(prompt: str) -> str:
    """The text of the user turn after the two images: the order line, then the instructions."""
    return ORDER_LINE + "\n\n" + INSTRUCTIONS.format(prompt=json.dumps(prompt, ensure_ascii=False))


def build_messages(prompt: str, image_a: Any = None, image_b: Any = None) -> list[dict]:
    """One user turn: image A, image B, then the text. Image parts carry `image` only when given
    (transformers chat templates need just the placeholder; the pixels go to the processor)."""

    def part(img: Any) -> dict:
        return {"type": "image"} if img is None else {"type": "image", "image": img}

    text = judge_instructions(prompt)
    return [{"role": "user", "content": [part(image_a), part(image_b), {"type": "text", "text": text}]}]


# -- parsing --------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*")
_NAMED_A = re.compile(r"\b(?:image|picture|option|img|candidate)\s*(?:a|1)\b|\bfirst\s+(?:image|picture|one)\b", re.I)
_NAMED_B = re.compile(r"\b(?:image|picture|option|img|candidate)\s*(?:b|2)\b|\bsecond\s+(?:image|picture|one)\b", re.I)
# a bare capital letter counts when it stands alone or is followed by a verdict-like word
# ("A.", "A is better"), not when it is an article ("A cat sits ...").
_VERDICT_WORDS = r"is|was|wins|won|has|looks|seems|shows|appears|better|clearly|matches|follows|scores"
_BARE_A = re.compile(rf"(?<![\w'])A(?![\w'])(?=\s*(?:$|[^\w\s]|(?:{_VERDICT_WORDS})\b))")
_BARE_B = re.compile(rf"(?<![\w'])B(?![\w'])(?=\s*(?:$|[^\w\s]|(?:{_VERDICT_WORDS})\b))")
_TIE = re.compile(r"\b(?:tie|tied|draw|equal(?:ly)?|comparable|no clear winner|neither)\b", re.I)
_WINNER_FIELD = re.compile(
    r"""winner["']?\s*[:=]\s*["']?\s*(?:image\s*)?(a|b|tie)\b""", re.I
)
_CONFIDENCE_FIELD = re.compile(r"""confidence["']?\s*[:=]\s*["']?\s*(-?\d+(?:\.\d+)?)""", re.I)
_REASON_FIELD = re.compile(r"""reason["']?\s*[:=]\s*["']([^"'\n]*)""", re.I)

_A_WORDS = {"a", "image a", "picture a", "option a", "1", "image 1", "first", "first image", "the first image", "left"}
_B_WORDS = {"b", "image b", "picture b", "option b", "2", "image 2", "second", "second image", "the second image", "right"}
_TIE_WORDS = {"tie", "tied", "draw", "equal", "both", "neither", "same", "none", "comparable"}


def _strip_fences(text: str) -> str:
    return _FENCE.sub("", text).replace("```", "")


def _first_brace_block(text: str) -> str | None:
    """The first balanced {...} (quote-aware); an unclosed one runs to the last '}'."""
    start = text.find("{")
    if start < 0:
        return None
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    end = text.rfind("}")
    return text[start : end + 1] if end > start else None


def _loads_lenient(block: str) -> dict | None:
    """json.loads, then cheap repairs: curly quotes, trailing commas, bare keys, Python-style quotes."""
    if len(block) > 20_000:
        return None
    candidates = [block]
    fixed = block.translate({0x201C: '"', 0x201D: '"', 0x2018: "'", 0x2019: "'"})
    fixed = re.sub(r",\s*([}\]])", r"\1", fixed)
    candidates.append(fixed)
    candidates.append(re.sub(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:", r'\1"\2":', fixed))
    for c in candidates:
        try:
            obj = json.loads(c)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    python_like = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", fixed)))
    try:
        obj = ast.literal_eval(python_like)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def classify_text(text: str) -> str | None:
    """Keyword heuristic: "A" if only A is named, "B" if only B, "tie" if a tie word, else None."""
    has_a = bool(_NAMED_A.search(text) or _BARE_A.search(text))
    has_b = bool(_NAMED_B.search(text) or _BARE_B.search(text))
    if has_a and not has_b:
        return "A"
    if has_b and not has_a:
        return "B"
    if _TIE.search(text):
        return "tie"
    return None


def _winner_value(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    norm = " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())
    if norm in _A_WORDS:
        return "A"
    if norm in _B_WORDS:
        return "B"
    if norm in _TIE_WORDS:
        return "tie"
    if re.search(r"\ba\b", norm) and re.search(r"\bb\b", norm):  # "A or B", "A and B"
        return None
    return classify_text(text)


def clamp_confidence(value: Any) -> float | None:
    """A float in [0, 1], or None for anything that is not a finite number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(str(value).strip().rstrip("%")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return min(1.0, max(0.0, x))


def _get(obj: dict, *names: str) -> Any:
    lower = {str(k).strip().lower(): v for k, v in obj.items()}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def parse_judgement(raw: str | None) -> Judgement:
    """Turn a judge's reply into a Judgement; never raises (unusable text gives `invalid`)."""
    raw = "" if raw is None else str(raw)
    text = _strip_fences(raw).strip()
    if not text:
        return Judgement("invalid", None, "empty reply", raw)
    block = _first_brace_block(text)
    obj = _loads_lenient(block) if block else None
    if obj is not None:
        value = _get(obj, "winner", "better", "preferred", "choice", "answer")
        if value is not None:  # a parsed verdict field decides alone: unusable means invalid
            winner = _winner_value(value)
            if winner is None:
                return Judgement("invalid", None, f"unrecognised winner {str(value)[:100]!r}", raw)
            reason = _get(obj, "reason", "rationale", "explanation")
            return Judgement(winner, clamp_confidence(_get(obj, "confidence")), "" if reason is None else str(reason)[:500], raw)
    conf_match = _CONFIDENCE_FIELD.search(text)
    confidence = clamp_confidence(conf_match.group(1)) if conf_match else None
    reason_match = _REASON_FIELD.search(text)
    field_match = _WINNER_FIELD.search(text)
    if field_match:
        w = field_match.group(1).lower()
        winner = {"a": "A", "b": "B"}.get(w, "tie")
        return Judgement(winner, confidence, reason_match.group(1)[:500] if reason_match else "", raw)
    winner = classify_text(text)
    if winner is None:
        return Judgement("invalid", None, "no verdict found in reply", raw)
    return Judgement(winner, confidence, "keyword heuristic: " + " ".join(text.split())[:200], raw)


# -- pairing --------------------------------------------------------------------------------------


@dataclass
class ImagePair:
    """The two methods' images of one (prompt_id, seed)."""

    prompt_id: int
    seed: int
    prompt: str
    left_image: str
    right_image: str
    left_label: str = "left"
    right_label: str = "right"
    metadata: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return (self.prompt_id, self.seed)


def manifest_file(path: str | os.PathLike) -> Path:
    """A manifest path: the file itself, or `<folder>/manifest.jsonl`."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist (give a manifest.jsonl or the sample folder holding it)")
    return path


def default_label(manifest: Path) -> str:
    """A method label from the manifest's location: its folder name."""
    return manifest.resolve().parent.name or str(manifest)


def image_pairs(
    manifest_a: str | os.PathLike,
    manifest_b: str | os.PathLike,
    max_pairs: int | None = None,
    shuffle_seed: int = 123,
    shard: str | Sequence[int] | None = None,
    label_a: str | None = None,
    label_b: str | None = None,
) -> list[ImagePair]:
    """Pairs of images with the same (prompt_id, seed) in both manifests, in a seeded shuffled order.

    The shuffle is over the sorted common keys with random.Random(shuffle_seed); `max_pairs` keeps
    the first N, and `shard=(i, n)` then takes every n-th of those starting at i, so the shards of a
    run partition exactly the pairs of the unsharded run. Manifest A is the "left" method.
    """
    pa, pb = manifest_file(manifest_a), manifest_file(manifest_b)
    rows_a, rows_b = ({r.key: r for r in read_manifest(p)} for p in (pa, pb))
    keys = sorted(set(rows_a) & set(rows_b))
    if not keys:
        raise ValueError(f"manifests {pa} and {pb} share no (prompt_id, seed); were they sampled from the same prompts and seeds?")
    for key in keys:
        if rows_a[key].prompt != rows_b[key].prompt:
            raise ValueError(
                f"prompt text differs for prompt_id {key[0]} (seed {key[1]}) between {pa} "
                f"({rows_a[key].prompt!r}) and {pb} ({rows_b[key].prompt!r}); "
                f"both manifests must come from the same prompt file"
            )
    random.Random(shuffle_seed).shuffle(keys)
    if max_pairs is not None:
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
        keys = keys[:max_pairs]
    sh = parse_shard(shard)
    if sh is not None:
        keys = keys[sh[0] :: sh[1]]
    la, lb = label_a or default_label(pa), label_b or default_label(pb)
    if la == lb:
        la, lb = f"{la} (a)", f"{lb} (b)"
    pairs = []
    for key in keys:
        ra, rb = rows_a[key], rows_b[key]
        meta = ra.metadata or rb.metadata or {}
        pairs.append(ImagePair(key[0], key[1], ra.prompt, ra.image, rb.image, la, lb, dict(meta)))
    return pairs


# -- position order -------------------------------------------------------------------------------


def left_shown_first(prompt_id: int, seed: int, salt: str = ORDER_SALT) -> bool:
    """Hashed order: the left method is image A when the first 8 hex digits of
    sha256("{salt}:{prompt_id}:{seed}") are even (an arbitrary but fixed convention)."""
    digest = hashlib.sha256(f"{salt}:{prompt_id}:{seed}".encode()).hexdigest()
    return int(digest[:8], 16) % 2 == 0


def to_method(winner: str, first: str) -> str:
    """Map a positional verdict (A/B/tie/invalid) to a method verdict given who was shown first."""
    if winner not in WINNERS:
        raise ValueError(f"winner {winner!r} is not one of {WINNERS}")
    if winner in ("tie", "invalid"):
        return winner
    second = "right" if first == "left" else "left"
    return first if winner == "A" else second


def combine_orders(first_verdict: str, second_verdict: str) -> str:
    """Both orders judged: a win only when both agree; disagreement is a tie; any invalid is invalid."""
    if "invalid" in (first_verdict, second_verdict):
        return "invalid"
    return first_verdict if first_verdict == second_verdict else "tie"


# -- running the judge ----------------------------------------------------------------------------


def _judge_name(judge: Any) -> str:
    name = getattr(judge, "name", type(judge).__name__)
    model = getattr(judge, "model_id", None)
    return f"{name}:{model}" if model else str(name)


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def judge_one(pair: ImagePair, judge: Judge, order: str = "hashed", salt: str = ORDER_SALT) -> dict:
    """Judge one pair and return its record (see judge_image_pairs)."""
    if order not in ("hashed", "both"):
        raise ValueError(f"order must be 'hashed' or 'both', got {order!r}")
    left, right = _open_rgb(pair.left_image), _open_rgb(pair.right_image)
    images = {"left": left, "right": right}
    if order == "hashed":
        firsts = ["left" if left_shown_first(pair.prompt_id, pair.seed, salt) else "right"]
    else:
        firsts = ["left", "right"]
    shown = []
    for first in firsts:
        second = "right" if first == "left" else "left"
        t0 = time.perf_counter()
        j = judge.judge(pair.prompt, images[first], images[second], pair.metadata)
        if not isinstance(j, Judgement) and not hasattr(j, "winner"):
            raise TypeError(f"{_judge_name(judge)}.judge returned {type(j).__name__}, not a Judgement")
        d = asdict(j) if isinstance(j, Judgement) else {k: getattr(j, k) for k in ("winner", "confidence", "reason", "raw")}
        d.update(first=first, verdict=to_method(d["winner"], first), seconds=round(time.perf_counter() - t0, 3))
        shown.append(d)
    if order == "hashed":
        winner, consistent = shown[0]["verdict"], None
    else:
        v1, v2 = shown[0]["verdict"], shown[1]["verdict"]
        winner = combine_orders(v1, v2)
        consistent = None if "invalid" in (v1, v2) else v1 == v2
    label = {"left": pair.left_label, "right": pair.right_label}.get(winner, winner)
    return {
        "prompt_id": pair.prompt_id,
        "seed": pair.seed,
        "prompt": pair.prompt,
        "left_label": pair.left_label,
        "right_label": pair.right_label,
        "left_image": pair.left_image,
        "right_image": pair.right_image,
        "order": order,
        "salt": salt,
        "judge": _judge_name(judge),
        "judgements": shown,
        "winner": winner,
        "winner_label": label,
        "consistent": consistent,
    }


def read_judgements(*paths: str | os.PathLike, ignore_partial_last_line: bool = True) -> list[dict]:
    """Records of one or more judgement files (shards), concatenated; the first record of a
    (prompt_id, seed) wins. A last line without its newline (a killed writer) is ignored."""
    out: list[dict] = []
    seen: set[tuple[int, int]] = set()
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"judgement file {path} does not exist")
        text = path.read_text()
        lines = text.split("\n")
        if ignore_partial_last_line and not text.endswith("\n"):
            lines = lines[:-1]
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg}); the file is corrupted in the middle") from None
            key = (int(r["prompt_id"]), int(r["seed"]))
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


def _truncate_partial_tail(path: Path) -> None:
    """Cut a last line that lacks its newline (left by a killed writer) so appends start clean."""
    with open(path, "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


def judge_image_pairs(
    pairs: Sequence[ImagePair],
    judge: Judge,
    out_jsonl: str | os.PathLike,
    order: str = "hashed",
    salt: str = ORDER_SALT,
    progress: bool = True,
) -> list[dict]:
    """Judge every pair not yet in `out_jsonl`, appending one JSON line per pair (flushed and
    fsynced), and return the records of `pairs` in their order.

    A record holds the pair, who was shown first, each Judgement (raw text included), the method
    verdict `winner` ("left" | "right" | "tie" | "invalid") and, for order="both", whether the two
    orders agreed. Re-running resumes; a crash loses at most the line being written.
    """
    from tqdm import tqdm

    if order not in ("hashed", "both"):
        raise ValueError(f"order must be 'hashed' or 'both', got {order!r}")
    out = Path(out_jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[int, int], dict] = {}
    if out.exists():
        _truncate_partial_tail(out)
        for r in read_judgements(out):
            done[(int(r["prompt_id"]), int(r["seed"]))] = r
    for p in pairs:
        r = done.get(p.key)
        if r is None:
            continue
        if r.get("order") != order or (r.get("left_label"), r.get("right_label")) != (p.left_label, p.right_label):
            raise ValueError(
                f"{out} already holds prompt_id {p.prompt_id} seed {p.seed} judged with order={r.get('order')} "
                f"for {r.get('left_label')} vs {r.get('right_label')}; this run is order={order} for "
                f"{p.left_label} vs {p.right_label}. Use another --out (or the same settings) to resume."
            )
    todo = [p for p in pairs if p.key not in done]
    bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="judge", unit="pair", disable=not progress, dynamic_ncols=True)
    with open(out, "a", encoding="utf-8") as fh:
        for p in todo:
            rec = judge_one(p, judge, order=order, salt=salt)
            fh.write(json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            done[p.key] = rec
            bar.update(1)
    bar.close()
    return [done[p.key] for p in pairs]


# -- summary --------------------------------------------------------------------------------------


def _rates(w: Any, losses: Any, t: Any, inv: Any, n: Any) -> tuple[Any, Any]:
    import numpy as np

    w, losses, t, inv = (np.asarray(x, dtype=float) for x in (w, losses, t, inv))
    valid = np.asarray(n, dtype=float) - inv
    with np.errstate(invalid="ignore", divide="ignore"):
        wr = np.where(w + losses > 0, w / (w + losses), np.nan)
        ps = np.where(valid > 0, (w + 0.5 * t) / valid, np.nan)
    return wr, ps


def summarize(judgements: Iterable[dict], n_boot: int = 1000, seed: int = 0) -> JudgeSummary:
    """Win counts and rates of the left method against the right one.

    win_rate_excluding_ties = wins / (valid - ties); preference_share = (wins + ties/2) / valid;
    95 % percentile-bootstrap intervals resample pairs (multinomial over the four outcomes, which
    is the same as resampling records). order_consistency: among pairs judged in both orders with
    two valid verdicts, the fraction whose verdicts agree.
    """
    import numpy as np

    records = list(judgements)
    counts = {k: 0 for k in METHOD_WINNERS}
    for r in records:
        w = r.get("winner")
        if w not in counts:
            raise ValueError(f"record prompt_id={r.get('prompt_id')} seed={r.get('seed')}: winner {w!r} is not one of {METHOD_WINNERS}")
        counts[w] += 1
    n = len(records)
    wins, losses, ties, invalid = (counts[k] for k in METHOD_WINNERS)
    valid = n - invalid
    wr, ps = _rates(wins, losses, ties, invalid, n)
    both = [r["consistent"] for r in records if r.get("order") == "both" and r.get("consistent") is not None]
    labels = sorted({(r.get("left_label"), r.get("right_label")) for r in records})

    def num(x: Any) -> float | None:
        x = float(x)
        return None if math.isnan(x) else x

    summary: dict[str, Any] = {
        "n": n,
        "valid": valid,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "invalid": invalid,
        "win_rate_excluding_ties": num(wr),
        "preference_share": num(ps),
        "order_consistency": (sum(bool(c) for c in both) / len(both)) if both else None,
        "n_both_orders": len(both),
        "left_label": labels[0][0] if len(labels) == 1 else None,
        "right_label": labels[0][1] if len(labels) == 1 else None,
        "n_boot": n_boot,
        "bootstrap_seed": seed,
        "win_rate_excluding_ties_ci95": None,
        "preference_share_ci95": None,
    }
    if n > 0 and n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(n, np.array([wins, losses, ties, invalid], dtype=float) / n, size=n_boot)
        bwr, bps = _rates(draws[:, 0], draws[:, 1], draws[:, 2], draws[:, 3], n)
        for name, arr in (("win_rate_excluding_ties_ci95", bwr), ("preference_share_ci95", bps)):
            arr = arr[~np.isnan(arr)]
            if arr.size:
                summary[name] = [float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))]
    return JudgeSummary.from_json(summary)
