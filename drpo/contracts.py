"""The contract between the workflow's steps: where each step writes (`Layout`) and what it writes
(typed records, each with exactly one writer and one reader here).

    prompts ─► train ─► sample ──► ManifestRow ─► score ──► ScoreSummary ─┐
                           └─────────────────────► judge ──► JudgeSummary ─┴► collect ─► ResultRow ─► tables

Standard library only (and `drpo.io`, whose atomic writes are themselves standard library): the
Snakefile, every step and the shapes world import it, and it imports none of them. A step that wants more (a DataFrame, an image) converts after reading.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from drpo.io import write_text

if TYPE_CHECKING:
    from PIL import Image

# -- where: every path under a results folder -----------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Every path under one results folder. Arguments may be Snakemake wildcards (`"{model}"`), so
    the rules and the code that reads their outputs spell each path once, here."""

    root: str = "results"

    def _p(self, *parts: str) -> str:
        return "/".join([str(self.root).rstrip("/") or "/", *parts])

    # prompts and training data
    def prompts(self, name: str) -> str:
        return self._p("prompts", f"{name}.jsonl")

    def dataset(self, name: str) -> str:
        return self._p("datasets", name)

    def dataset_pairs(self, name: str) -> str:
        return self._p("datasets", name, "pairs.jsonl")

    # models the workflow builds: the tiny twins (config/test/), the shapes world
    def twins(self) -> str:
        return self._p("twins")

    def world_base(self) -> str:
        return self._p("world", "base")

    def world_reward_model(self) -> str:
        return self._p("world", "reward_model")

    def world_pairs(self) -> str:
        return self._p("world", "pairs", "pairs.jsonl")

    # training
    def run(self, run: str) -> str:
        return self._p("runs", run)

    def train_config(self, run: str) -> str:
        return self._p("runs", run, "train.yaml")

    def final(self, run: str) -> str:
        """The run's final LoRA folder (what sampling loads)."""
        return self._p("runs", run, "final")

    def final_state(self, run: str) -> str:
        """Written last by a finished run: the DAG's marker that training is done."""
        return self._p("runs", run, "final", "training_state.json")

    def run_metrics(self, run: str) -> str:
        return self._p("runs", run, "metrics.jsonl")

    def timing_config(self, method: str) -> str:
        return self._p("timing", f"{method}.yaml")

    def timing_run(self, method: str) -> str:
        return self._p("timing", method)

    def timing(self) -> str:
        return self._p("timing", "timing.json")

    # sampling
    def samples(self) -> str:
        return self._p("samples")

    def sample_set(self, test_set: str, model: str) -> str:
        return self._p("samples", test_set, model)

    def manifest(self, test_set: str, model: str) -> str:
        return self._p("samples", test_set, model, "manifest.jsonl")

    # scoring
    def score_plan(self, model: str) -> str:
        return self._p("scores", "_plans", f"{model}.json")

    def score_done(self, model: str) -> str:
        return self._p("scores", "_done", f"{model}.json")

    def score_summary(self, test_set: str, model: str, metric: str) -> str:
        return self._p("scores", test_set, model, f"{metric}.json")

    def score_values(self, test_set: str, model: str, metric: str) -> str:
        """The per-image scores behind a summary (parquet; a checker's rows carry GenEval tags)."""
        return self._p("scores", test_set, model, f"{metric}.parquet")

    # judging
    def judgements(self, test_set: str, a: str, b: str) -> str:
        return self._p("judge", test_set, f"{a}__vs__{b}.jsonl")

    def judge_summary(self, test_set: str, a: str, b: str) -> str:
        return self._p("judge", test_set, f"{a}__vs__{b}.json")

    # collecting, tables, report
    def collect_spec(self) -> str:
        return self._p("collect_spec.json")

    def results_csv(self) -> str:
        return self._p("results.csv")

    def tables(self) -> str:
        return self._p("tables")

    def table(self, name: str, ext: str) -> str:
        return self._p("tables", f"{name}.{ext}")

    def grids(self) -> str:
        return self._p("grids")

    def grid(self, test_set: str, model: str) -> str:
        return self._p("grids", test_set, f"{model}.png")

    def report(self) -> str:
        return self._p("report.html")

    def log(self, *parts: str) -> str:
        """A job's log: logs/<step>/<...>.log."""
        return self._p("logs", *parts[:-1], f"{parts[-1]}.log")


# -- reading and writing (every write atomic: drpo.io) ------------------------------------------


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def _load_json(path: str | os.PathLike, what: str) -> dict | None:
    """A JSON object from `path`; None if there is no such file; an error naming the file otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a {what} ({err.msg}); delete it and re-run the step that writes it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {what} is a JSON object; delete it and re-run the step that writes it")
    return data


def _float(x: Any) -> float | None:
    if x is None or x == "":
        return None
    x = float(x)
    return None if math.isnan(x) else x


# -- sample → score, judge: one row per image ------------------------------------------------------


@dataclass(frozen=True)
class ManifestRow:
    """One image `drpo sample` drew: which prompt, which noise, which sampler, where the PNG is."""

    prompt_id: int
    seed: int
    prompt: str
    image_path: str  # relative to the manifest's folder: seed_<s>/images/<prompt_id:06d>.png
    latent_seed: int
    metadata: dict  # the prompt row's other keys (GenEval: tag, include, exclude)
    resolution: int | None
    model_type: str
    sampler: str
    num_inference_steps: int
    guidance_scale: float
    checkpoint_path: str
    folder: str = field(default="", compare=False, repr=False)  # the manifest's folder (set on reading; not written)

    @property
    def key(self) -> tuple[int, int]:
        return self.prompt_id, self.seed

    @property
    def image(self) -> str:
        """The image's absolute path."""
        return str((Path(self.folder) / self.image_path).resolve())

    @property
    def tag(self) -> str | None:
        return (self.metadata or {}).get("tag")

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("folder")
        return out


_MANIFEST_KEYS = [f.name for f in fields(ManifestRow) if f.name != "folder"]


def write_manifest(path: str | os.PathLike, rows: Iterable[ManifestRow]) -> Path:
    return write_text(path, "".join(json.dumps(r.to_json(), sort_keys=True, default=str) + "\n" for r in rows))


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """The rows of a manifest (a file, or the sample folder holding manifest.jsonl), each knowing its
    folder (`row.image`). A row without a key or a (prompt_id, seed) seen twice is an error naming the line."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist (write it with `drpo sample`)")
    parsed = []  # every line is JSON first: a torn last line is reported as such
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if line.strip():
            try:
                parsed.append((lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    rows, seen = [], set()
    folder = str(path.parent)
    for lineno, r in parsed:
        missing = [k for k in ("prompt_id", "seed", "prompt", "image_path") if k not in r]
        if missing:
            raise ValueError(f"{path}:{lineno}: manifest row has no {missing}; is this a `drpo sample` manifest?")
        row = ManifestRow(
            prompt_id=int(r["prompt_id"]), seed=int(r["seed"]), prompt=r["prompt"], image_path=r["image_path"],
            latent_seed=int(r.get("latent_seed", 0)), metadata=r.get("metadata") or {}, resolution=r.get("resolution"),
            model_type=r.get("model_type", ""), sampler=r.get("sampler", ""),
            num_inference_steps=int(r.get("num_inference_steps", 1)), guidance_scale=float(r.get("guidance_scale", 0.0)),
            checkpoint_path=r.get("checkpoint_path", ""), folder=folder)
        if row.key in seen:
            raise ValueError(f"{path}:{lineno}: (prompt_id, seed) = {row.key} appears twice; merge shards with `drpo sample --merge`")
        seen.add(row.key)
        rows.append(row)
    return rows


# -- score → collect: one summary per (test set, model, metric) ------------------------------------


@dataclass(frozen=True)
class ScoreSummary:
    """What `drpo score` says of one metric on one sample set. `mean` is the metric's value (a
    reward's mean, FID, the paired distance); `details` holds the rest (kind-specific: the GenEval
    summary of a checker, provenance, display scale, ...)."""

    kind: str  # reward | fid | distance | geneval | diversity
    mean: float | None
    metric: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def geneval(self) -> dict:
        """GenEval's summary (`overall`, `tags`, `ci95`) of a checker metric, or of GenEval's own run; {} otherwise."""
        if self.kind == "geneval":
            return dict(self.details)
        return dict(self.details.get("geneval") or {})

    def to_json(self) -> dict:
        core = {"kind": self.kind, "mean": self.mean, "metric": self.metric, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "n": self.n}
        return {**self.details, **{k: v for k, v in core.items() if v is not None or k == "kind"}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreSummary:
        rest = dict(data)
        core = {k: rest.pop(k, None) for k in ("kind", "mean", "metric", "ci_low", "ci_high", "n")}
        return cls(kind=core["kind"] or "", mean=_float(core["mean"]), metric=core["metric"], ci_low=_float(core["ci_low"]),
                   ci_high=_float(core["ci_high"]), n=None if core["n"] is None else int(core["n"]), details=rest)


def write_score_summary(path: str | os.PathLike, summary: ScoreSummary) -> Path:
    return write_text(path, _dump(summary.to_json()))


def read_score_summary(path: str | os.PathLike) -> ScoreSummary | None:
    """The summary at `path`, or None when the metric was not scored there."""
    data = _load_json(path, "score summary (drpo score)")
    return None if data is None else ScoreSummary.from_json(data)


# -- judge → collect: one summary per judged pair of sample sets -----------------------------------


@dataclass(frozen=True)
class JudgeSummary:
    """What `drpo judge` says of the left model (A) against the right one (B): counts, the preference
    share (wins + ties/2) / valid and the win rate without ties, each with a bootstrap 95 % interval."""

    n: int
    valid: int
    wins: int
    losses: int
    ties: int
    invalid: int
    preference_share: float | None
    preference_share_ci95: tuple[float, float] | None = None
    win_rate_excluding_ties: float | None = None
    win_rate_excluding_ties_ci95: tuple[float, float] | None = None
    order_consistency: float | None = None
    n_both_orders: int = 0
    left_label: str | None = None
    right_label: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # provenance: manifests, backend, order, bootstrap, ...

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"}
        for k in ("preference_share_ci95", "win_rate_excluding_ties_ci95"):
            out[k] = None if out[k] is None else list(out[k])
        return {**self.details, **out}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JudgeSummary:
        rest = dict(data)
        names = [f.name for f in fields(cls) if f.name != "details"]
        core = {k: rest.pop(k) for k in names if k in rest}
        missing = [k for k in ("n", "valid", "wins", "losses", "ties", "invalid", "preference_share") if k not in core]
        if missing:
            raise ValueError(f"a judge summary needs {missing} (have {sorted(data)})")
        for k in ("preference_share_ci95", "win_rate_excluding_ties_ci95"):
            if core.get(k) is not None:
                core[k] = tuple(float(v) for v in core[k])
        for k in ("preference_share", "win_rate_excluding_ties", "order_consistency"):
            if k in core:
                core[k] = _float(core[k])
        return cls(**core, details=rest)

    def with_details(self, **details: Any) -> JudgeSummary:
        return JudgeSummary(**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"},
                            details={**self.details, **details})


def write_judge_summary(path: str | os.PathLike, summary: JudgeSummary) -> Path:
    return write_text(path, _dump(summary.to_json()))


def read_judge_summary(path: str | os.PathLike) -> JudgeSummary | None:
    """The summary at `path`, or None when that pair was not judged."""
    data = _load_json(path, "judge summary (drpo judge)")
    if data is None:
        return None
    try:
        return JudgeSummary.from_json(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}; is this a `drpo judge --summary` file?") from None


# -- collect → tables: the results file ------------------------------------------------------------


@dataclass(frozen=True)
class ResultRow:
    """One number of the study: `metric` of `method` (a table row's label) on `test_set`, in table
    `table`, with its interval and the summary file(s) behind it. A preference row also names the
    `judged` model (DrPO), whose share against `method` `value` is."""

    table: str
    method: str
    test_set: str
    metric: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    source: str = ""
    judged: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


RESULT_COLUMNS = [f.name for f in fields(ResultRow)]
_RESULT_REQUIRED = ("table", "method", "metric", "value")


def write_results(path: str | os.PathLike, rows: Iterable[ResultRow]) -> Path:
    """The results CSV (`RESULT_COLUMNS`; an empty cell is no value)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for r in rows:
        writer.writerow(["" if v is None else repr(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                         for v in (getattr(r, c) for c in RESULT_COLUMNS)])
    return write_text(path, buf.getvalue())


def read_results(path: str | os.PathLike) -> list[ResultRow]:
    """The rows of a results CSV. `ci_low`, `ci_high`, `source`, `test_set` and `judged` may be absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist (write it with `drpo collect`)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _RESULT_REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; need {RESULT_COLUMNS} "
                             f"(ci_low, ci_high, source, test_set, judged optional)")
        rows = []
        for lineno, r in enumerate(reader, 2):
            try:
                rows.append(ResultRow(table=r["table"], method=r["method"], test_set=r.get("test_set") or "",
                                      metric=r["metric"], value=_float(r["value"]), ci_low=_float(r.get("ci_low")),
                                      ci_high=_float(r.get("ci_high")), source=r.get("source") or "",
                                      judged=r.get("judged") or None))
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: {err}") from None
    return rows


# -- a checker's verdict --------------------------------------------------------------------------

CORRECT_ABOVE = 0.5  # a binary (checker) reward scores 1 for a correct image, 0 for a wrong one


def is_correct(score: Any) -> Any:
    """A checker score's verdict (a float, or elementwise for an array, tensor or Series)."""
    return score > CORRECT_ABOVE


# -- the judge interface ---------------------------------------------------------------------------


@dataclass
class Judgement:
    """One verdict on a pair shown as (A first, B second)."""

    winner: str  # "A" | "B" | "tie" | "invalid"
    confidence: float | None
    reason: str
    raw: str


@runtime_checkable
class Judge(Protocol):
    """Turns (prompt, image A, image B) into a `Judgement`: the Qwen3-VL and OpenAI-compatible
    judges (drpo.eval.judge_backends), the shapes world's checker judge (drpo.world.judge), a user's own."""

    def judge(self, prompt: str, image_a: Image.Image, image_b: Image.Image, metadata: dict | None = None) -> Judgement: ...
