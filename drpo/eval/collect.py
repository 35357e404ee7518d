"""`drpo collect`: the workflow's score and judge summaries → one tidy results file for `drpo tables`.

The spec is a JSON file (the workflow writes `<results>/collect_spec.json`, `drpo.workflow.collect_spec`):
results dir, models, test sets, metrics, the config's tables (each with its `builder`, optional
`paper`, and rows) and the judge summaries (`judged`: test set, judged model, opponent, path).

For every table and every row it names, each metric on each test set becomes one results row
(`table, method, test_set, metric, value, ci_low, ci_high, source, judged`), `source` being the
summary file behind the number. A run trained with several seeds gives the mean over seeds (CI: the
seeds' min and max). Metrics scored by a GenEval-style checker also give per-tag rows
(`geneval:<tag>`, `geneval:overall`) for the GenEval table. A table drawn by the `preference`
builder gets, instead, one preference record per row and test set
(`drpo.eval.tables.preference_row`): the judged model's (DrPO's) share against that row's model,
the mean over seeds, from the judge summaries.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from drpo.contracts import Layout, ResultRow, read_judge_summary, read_score_summary

CHECKER_REWARDS = {"world_checker", "geneval"}


def _rows_for(name: str, models: dict) -> list[str]:
    """Model ids behind a table row: a base model itself, or a run's ids (one per seed)."""
    if name in models:
        return [name]
    return [m for m, info in models.items() if info.get("run") == name]


def _over_seeds(per_seed: list[tuple[float | None, tuple | list | None]]) -> tuple[float | None, float | None, float | None]:
    """(mean, ci_low, ci_high) over a run's (value, ci) per seed: one seed keeps its own CI, several
    span their min to max. Seeds without a value (a judge with no valid verdicts) are left out."""
    per_seed = [(v, ci) for v, ci in per_seed if v is not None]
    if len(per_seed) == 1:
        value, ci = per_seed[0]
        return value, *(ci or (None, None))
    values = [v for v, _ in per_seed]
    return (sum(values) / len(values), min(values), max(values)) if values else (None, None, None)


def _geneval_rows(scores: Path) -> dict[str, tuple[float, tuple[float, float]]]:
    """`geneval:<tag>` and `geneval:overall` (the mean of the tag accuracies) of a checker's per-image
    scores, each with its stratified bootstrap 95 % interval."""
    from drpo.eval.metrics import correctness_from_scores, geneval_bootstrap, geneval_summary

    df = pd.read_parquet(scores)
    if "tag" not in df.columns:
        return {}
    frame = correctness_from_scores(df)
    summary, ci = geneval_summary(frame), geneval_bootstrap(frame)
    out = {f"geneval:{t}": (v["accuracy"], ci[t]) for t, v in summary["tags"].items()}
    out["geneval:overall"] = (summary["overall"], ci["overall"])
    return out


def _row_test_sets(tspec: dict, spec: dict):
    """(model ids, label, test set) for every row of a table that names a model, on each of its test sets."""
    for name in tspec["rows"]:
        ids = _rows_for(name, spec["models"])
        if ids:
            for ts in tspec.get("test_sets") or spec["test_sets"]:
                yield ids, spec["models"][ids[0]].get("label", name), ts


def _metric_rows(table: str, tspec: dict, spec: dict) -> list[ResultRow]:
    layout = Layout(spec["results"])
    metric_specs = spec.get("metric_specs", {})
    rows = []
    for ids, label, ts in _row_test_sets(tspec, spec):
        for metric in tspec.get("metrics") or spec["metrics"]:
            per_seed = []  # (summary, its file, the per-image scores behind it)
            for mid in ids:
                path = layout.score_summary(ts, mid, metric)
                s = read_score_summary(path)
                if s is not None:
                    per_seed.append((s, path, layout.score_values(ts, mid, metric)))
            if not per_seed:
                continue
            value, lo, hi = _over_seeds([(s.mean, (s.ci_low, s.ci_high)) for s, _, _ in per_seed])
            rows.append(ResultRow(table=table, method=label, test_set=ts, metric=metric, value=value, ci_low=lo, ci_high=hi,
                                  source=";".join(p for _, p, _ in per_seed)))
            if metric_specs.get(metric, {}).get("name") in CHECKER_REWARDS:
                tags: dict[str, list[tuple]] = {}
                for _, _, values in per_seed:
                    for k, v in _geneval_rows(Path(values)).items():
                        tags.setdefault(k, []).append(v)
                for k, v in tags.items():
                    value, lo, hi = _over_seeds(v)
                    rows.append(ResultRow(table=table, method=label, test_set=ts, metric=k, value=value, ci_low=lo,
                                          ci_high=hi, source=";".join(v for _, _, v in per_seed)))
    return rows


def _preference_rows(table: str, tspec: dict, spec: dict) -> list[ResultRow]:
    """One preference record per row (an opponent) and test set: the judged model's share against it."""
    from drpo.eval.tables import preference_row

    models = spec["models"]
    rows = []
    for ids, label, ts in _row_test_sets(tspec, spec):
        per_seed, judged = [], set()
        for j in spec.get("judged", []):
            if j["test_set"] != ts or j["opponent"] not in ids:
                continue
            s = read_judge_summary(j["path"])
            if s is None:
                continue
            per_seed.append((s, j["path"]))
            judged.add(models.get(j["judged"], {}).get("label", j["judged"]))
        if not per_seed:
            continue
        if len(judged) > 1:
            raise ValueError(f"collect: table {table} row {label} on {ts}: judge summaries of several judged models {sorted(judged)}")
        value, lo, hi = _over_seeds([(s.preference_share, s.preference_share_ci95) for s, _ in per_seed])
        rows.append(preference_row(table=table, judged=judged.pop(), opponent=label, test_set=ts, share=value,
                                   ci=(lo, hi), source=";".join(str(p) for _, p in per_seed)))
    return rows


def _timing_rows(table: str, tspec: dict, spec: dict) -> list[ResultRow]:
    """A `timing` table's rows (§6.3) from `drpo bench timing`'s file: per timed run, the median
    seconds per update (CI: min and max), the backward's seconds, the effective batch, whether it
    uses reward gradients, and each component (`time:<component>`)."""
    timing = spec.get("timing")
    if not timing:
        raise ValueError(f"collect: table {table} is drawn by the timing builder but the config has no evaluation.timing")
    path = Path(timing["path"])
    if not path.exists():
        return []
    result = json.loads(path.read_text())
    by_run = {run: method for method, run in timing["runs"].items()}
    rows = []
    for name in tspec["rows"]:
        method = by_run.get(name)
        if method is None:
            raise ValueError(f"collect: table {table} row {name!r} is not one of the timed runs {sorted(by_run)} (evaluation.timing.runs)")
        ids = _rows_for(name, spec["models"])
        label = spec["models"][ids[0]].get("label", name) if ids else name
        m = result[method]

        def row(metric, value, lo=None, hi=None):
            return ResultRow(table=table, method=label, test_set="", metric=metric, value=value, ci_low=lo, ci_high=hi,
                             source=str(path))

        rows += [row("update_s", m["median_s"], m["min_s"], m["max_s"]), row("backward_s", m["components"].get("backward", 0.0)),
                 row("effective_batch", result["effective_batch"]), row("reward_grad", 1.0 if method == "draft" else 0.0)]
        rows += [row(f"time:{k}", v) for k, v in sorted(m["components"].items())]
    return rows


def collect(spec: dict) -> list[ResultRow]:
    rows = []
    for table, tspec in spec.get("tables", {}).items():
        if tspec.get("builder") == "preference":
            rows += _preference_rows(table, tspec, spec)
        elif tspec.get("builder") == "timing":
            rows += _timing_rows(table, tspec, spec)
        else:
            rows += _metric_rows(table, tspec, spec)
    return rows


def read_spec(path: str) -> dict:
    """The collect spec: a JSON file (never JSON on the command line)."""
    shown = path if len(path) <= 80 else path[:77] + "..."
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"--spec {shown}: no such file (the workflow writes <results>/collect_spec.json)") from None
    except OSError as err:
        raise ValueError(f"--spec {shown}: cannot read it ({err.strerror}); --spec takes the path of a JSON file") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--spec {shown}: not JSON ({err})") from None
    if not isinstance(spec, dict) or "tables" not in spec:
        raise ValueError(f"--spec {shown}: a collect spec is a JSON object with results, models, test_sets, metrics, tables")
    return spec
