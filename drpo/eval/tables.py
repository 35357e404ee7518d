"""The paper's tables and figures (METHOD.md §6) from a tidy results frame, with the paper beside us.

Input: one row per number, columns `table, method, test_set, metric, value` and optionally
`ci_low, ci_high, source` (the score file, summary or run the number comes from) and `judged` (a
preference row's judged model; its `method` is the opponent, the table's row). Values are
**raw** (PickScore 0.2349, accuracy 0.465, share 0.698, seconds); the display scaling
(`drpo.eval.metrics.to_display`) is applied here and nowhere else.

A table is drawn by a **builder** (`BUILDERS`: main, timing, geneval, reference, ablation,
preference, generic) and compared with one of **the paper's tables** (`drpo.eval.paper.TABLES`:
sd_turbo_main, sdxl_turbo_main, hpsv3_efficiency, geneval, reference_objective, ablation_k /
ablation_feature_map / ablation_kernel / ablation_eta, qwen3vl_preference) only when its spec
says so (`{builder: main, paper: sd_turbo_main}`); the table's own name chooses nothing. Compared
with a paper table, method and test-set names are matched to the paper's rows leniently
(`drpo.eval.paper.canonical_row`: "DPO 1step", "dpo" and "dpo_1step" are one row); unknown methods
become extra rows after the paper's. Without a paper table, rows are our methods as named, and no
cell has a paper value. Figures: each preference table's bar chart with CIs, each timing table's
breakdown, training curves.

The paper column scheme (one, everywhere): each number of ours has the published number beside
it. In `<name>.csv` every value column `C` is followed by `C (paper)` (numbers as displayed);
Markdown and LaTeX cells read `23.49 (paper 23.49)`, `– (paper 23.49)` where we have no number and
just `23.49` where the paper has none. `<name>.sources.csv` lists every cell: row, column, our
display value, raw value, CI, the paper's value and where each comes from.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from drpo.contracts import RESULT_COLUMNS, JudgeSummary, ResultRow, read_judge_summary, read_results
from drpo.eval import paper as P
from drpo.eval.metrics import (
    GENEVAL_TAG_LABELS,
    GENEVAL_TAGS,
    canonical_metric,
    check_raw,
    display_decimals,
    to_display,
)

DASH = "–"
TEXT_METRICS = ("steps", "reward_grad")  # method properties, not numbers on a test set


@dataclass
class Cell:
    value: float | str | None = None  # ours, display units
    paper: float | str | None = None  # published, display units
    decimals: int = 2
    ci: tuple[float, float] | None = None  # ours, display units
    raw: float | None = None
    source: str = ""
    paper_source: str = ""


@dataclass
class Table:
    name: str
    title: str
    row_header: str
    rows: list[str]
    columns: list[str]
    cells: list[list[Cell]]
    groups: list[str] = field(default_factory=list)  # a column-group label per column ("" for none)
    notes: str = ""

    def header(self, j: int) -> str:
        g = self.groups[j] if self.groups else ""
        return f"{g} {self.columns[j]}".strip()

    def cell(self, row: str, column: str) -> Cell:
        """The cell at a row label and a full column header (group + column)."""
        i = self.rows.index(row)
        j = [self.header(k) for k in range(len(self.columns))].index(column)
        return self.cells[i][j]

    @property
    def has_paper(self) -> bool:
        return any(c.paper is not None for row in self.cells for c in row)


# -- results ------------------------------------------------------------------------------------


def load_results(results: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """A validated results frame (csv, parquet or DataFrame), with canonical names in `_ts`, `_metric`."""
    if not isinstance(results, pd.DataFrame):
        path = Path(results)
        if not path.exists():
            raise FileNotFoundError(f"results file {path} does not exist")
        results = pd.read_parquet(path) if path.suffix == ".parquet" else pd.DataFrame(
            [r.to_json() for r in read_results(path)], columns=RESULT_COLUMNS)
        where = str(path)
    else:
        where = "results frame"
    df = results.copy()
    missing = [c for c in ("table", "method", "metric", "value") if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}; need {RESULT_COLUMNS} (ci_low, ci_high, source, test_set, judged optional)")
    for c in ("test_set", "source", "judged"):
        if c not in df.columns:
            df[c] = ""
        df[c] = df[c].fillna("").astype(str)
    for c in ("ci_low", "ci_high"):
        if c not in df.columns:
            df[c] = np.nan
    df["table"] = df["table"].astype(str).str.strip()
    df["_ts"] = [P.canonical_test_set(t) for t in df["test_set"]]
    df["_metric"] = [canonical_metric(m) for m in df["metric"]]
    for i, r in df.iterrows():
        v = _num(r["value"])
        if v is not None:
            check_raw(v, r["_metric"], where=f"{where} row {i} ({r['table']}/{r['method']}/{r['test_set']}): ")
    return df


def _results(results) -> pd.DataFrame:
    return results if isinstance(results, pd.DataFrame) and "_metric" in results.columns else load_results(results)


def table_rows(res: pd.DataFrame, name: str, paper: str | None) -> pd.DataFrame:
    """The results rows of table `name`, with `_row` = the paper table's row key of each method
    (when compared with `paper`) or the method as named."""
    sub = res[res["table"] == name].copy()
    sub["_row"] = [P.canonical_row(paper, m) if paper else str(m) for m in sub["method"]]
    return sub


def _lookup(sub: pd.DataFrame, table: str, row: str, metric: str, test_set: str | None) -> pd.Series | None:
    m = (sub["_row"] == row) & (sub["_metric"] == metric)
    if test_set is not None:
        m &= sub["_ts"] == test_set
    hit = sub[m]
    if len(hit) > 1:
        raise ValueError(
            f"results: {len(hit)} rows for table={table} method={row} test_set={test_set} metric={metric} "
            f"(sources: {list(hit['source'])}); keep one"
        )
    return None if hit.empty else hit.iloc[0]


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _paper_value(paper: str | None, key: tuple[str, str, str]):
    return P.PAPER.get(paper, {}).get(key) if paper else None


def _metric_cell(sub, table, paper, row, metric, test_set, *, paper_key=None) -> Cell:
    """Ours (display units, with CI) and the paper's number (when compared with `paper`) for one
    (row, test set, metric); test_set None: the row's only value of the metric, on any test set."""
    hit = _lookup(sub, table, row, metric, test_set)
    cell = Cell(decimals=display_decimals(metric), paper=_paper_value(paper, paper_key or (row, test_set or "", metric)))
    if cell.paper is not None:
        cell.paper_source = P.SECTIONS.get(paper, "paper")
    if hit is not None:
        raw = _num(hit["value"])
        cell.raw = raw
        cell.value = to_display(raw, metric)
        lo, hi = _num(hit["ci_low"]), _num(hit["ci_high"])
        if lo is not None and hi is not None:
            cell.ci = (to_display(lo, metric), to_display(hi, metric))
        cell.source = hit["source"]
    return cell


def _row_keys(sub: pd.DataFrame, paper: str | None) -> list[str]:
    """The paper's rows (when compared with one), then rows only our results have (in order of appearance)."""
    keys = [r.key for r in P.ROWS.get(paper, [])] if paper else []
    for k in sub["_row"]:
        if k not in keys:
            keys.append(k)
    return keys


def _our_columns(sub: pd.DataFrame, metrics: list[str] | None = None) -> list[tuple[str, str]]:
    """(test set, metric) of our numbers in order of appearance (method properties left out)."""
    cols = [(ts, m) for ts, m in zip(sub["_ts"], sub["_metric"]) if m not in TEXT_METRICS and (metrics is None or m in metrics)]
    return list(dict.fromkeys(cols))


def _check_paper(builder: str, paper: str | None) -> None:
    if paper is not None and P.TABLES.get(paper) != builder:
        raise ValueError(f"the paper's table {paper!r} is drawn by builder {P.TABLES.get(paper)!r}, not {builder!r}"
                         if paper in P.TABLES else f"{paper!r} is not one of the paper's tables ({', '.join(P.TABLES)})")


# -- table builders -----------------------------------------------------------------------------
#
# Each builder is `build(results, name, paper=None, spec=None) -> Table`: `name` is the results'
# table (and the files' name), `paper` the paper table it is compared with (None: none), `spec` the
# config's table spec (rows, metrics, test sets, ablation).

_MAIN_HEADERS = {"pickscore": "PS", "aesthetic": "AES", "imagereward": "IR"}
_PAPER_TITLES = {"sd_turbo_main": "SD-Turbo", "sdxl_turbo_main": "SDXL-Turbo"}


def _title(name: str) -> str:
    return name.replace("_", " ")


def main_table(results, name: str, paper: str | None = None, spec: dict | None = None) -> Table:
    """§6.1/§6.2: rows = methods; Steps, Reward grad, then PS/AES/IR on Pick-a-Pic v2 and Parti (with
    the paper's table), then any other test set × metric of ours."""
    _check_paper("main", paper)
    sub = table_rows(_results(results), name, paper)
    cols = [(ts, m) for ts in ("pickapic_v2", "parti") for m in P.MAIN_METRICS] if paper else []
    cols += [c for c in _our_columns(sub) if c not in cols]
    keys = _row_keys(sub, paper)
    cells = []
    for k in keys:
        info = P.row_info(paper, k) if paper else None
        steps = _text_cell(sub, name, paper, k, "steps", info.steps if info else None, "number of sampling steps")
        grad = _text_cell(sub, name, paper, k, "reward_grad", info.reward_grad if info else None, "uses reward gradients")
        cells.append([steps, grad] + [_metric_cell(sub, name, paper, k, m, ts) for ts, m in cols])
    title = _PAPER_TITLES[paper] if paper else _title(name)
    # the note says only what the columns use (a world table has neither PickScore nor ImageReward)
    notes = [note for metric, note in (("pickscore", "PS = PickScore×100"), ("imagereward", "IR = ImageReward×10"))
             if any(m == metric for _, m in cols)]
    return Table(
        name=name, title=f"{title} ({', '.join(notes)})" if notes else title, row_header="Method",
        rows=[P.row_label(paper, k) for k in keys],
        columns=["Steps", "Reward grad"] + [_MAIN_HEADERS.get(m, m) for _, m in cols],
        groups=["", ""] + [P.TEST_SETS.get(ts, ts) for ts, _ in cols], cells=cells,
    )


def _text_cell(sub, table, paper, row, metric, paper_value, what: str) -> Cell:
    """A method property (steps, reward grad): from our results when given there, else the paper's."""
    hits = sub[(sub["_row"] == row) & (sub["_metric"] == metric)]
    if hits["value"].astype(str).nunique() > 1:
        raise ValueError(f"results: conflicting {metric} values {sorted(hits['value'].astype(str).unique())} "
                         f"for table={table} method={row} (sources: {list(hits['source'])})")
    if len(hits):
        hit = hits.iloc[0]
        v = hit["value"]
        if metric == "reward_grad" and _num(v) is not None:
            v = "Yes" if _num(v) else "No"
        elif _num(v) is not None:
            v = int(_num(v))
        return Cell(value=v, decimals=0, raw=_num(hit["value"]), source=hit["source"])
    if paper_value is None:
        return Cell(decimals=0)
    return Cell(value=paper_value, decimals=0, source=f"{P.SECTIONS.get(paper, 'paper')} ({what}, a property of the method)")


_EFFICIENCY_LINES = [("reward_grad", "Reward gradient"), ("effective_batch", "Effective batch"),
                     ("update_s", "Update time (s)"), ("speedup", "Speed-up (×)"), ("backward_s", "Backward (s)")]


def efficiency_table(results, name: str, paper: str | None = None, spec: dict | None = None) -> Table:
    """§6.3: rows = the table's lines plus the timing breakdown (`time:<component>`), columns =
    methods. Speed-up: against DRaFT with the paper's table, else against the first method."""
    _check_paper("timing", paper)
    sub = table_rows(_results(results), name, paper)
    keys = _row_keys(sub, paper)
    breakdown = list(dict.fromkeys(m for m in sub["_metric"] if m.startswith("time:")))
    lines = _EFFICIENCY_LINES + [(m, f"↳ {m.split(':', 1)[1].replace('_', ' ')} (s)") for m in breakdown]
    ref_key = "draft" if paper else (keys[0] if keys else None)
    ref = _lookup(sub, name, ref_key, "update_s", None) if ref_key is not None else None
    grid: list[list[Cell]] = []
    for metric, _ in lines:
        row_cells = []
        for k in keys:
            paper_v = _paper_value(paper, (k, "", metric))
            src = P.SECTIONS[paper] if paper_v is not None else ""
            if metric == "reward_grad":
                info = P.row_info(paper, k) if paper else None
                c = _text_cell(sub, name, paper, k, metric, info.reward_grad if info else None, "uses reward gradients")
            elif metric == "speedup":
                c = Cell(decimals=2)
                mine_t = _lookup(sub, name, k, "update_s", None)
                if ref is not None and mine_t is not None and _num(mine_t["value"]):
                    c.raw = c.value = _num(ref["value"]) / _num(mine_t["value"])
                    c.source = (f"computed: update_s({P.row_label(paper, ref_key)}) / update_s({P.row_label(paper, k)}) "
                                f"from {ref['source']} ; {mine_t['source']}")
            else:
                hit = _lookup(sub, name, k, metric, None)
                c = Cell(decimals=0 if metric == "effective_batch" else 2)
                if hit is not None:
                    c.raw = c.value = _num(hit["value"])
                    lo, hi = _num(hit["ci_low"]), _num(hit["ci_high"])
                    c.ci = (lo, hi) if lo is not None and hi is not None else None
                    c.source = hit["source"]
                elif metric.startswith("time:") and (timed := _lookup(sub, name, k, "update_s", None)) is not None:
                    # a component of another method's update (DrPO's drift for DRaFT): not a gap, not applicable
                    c.value, c.source = "–", f"{timed['source']}: not a step of this method's update"
            c.paper, c.paper_source = paper_v, src
            row_cells.append(c)
        grid.append(row_cells)
    title = ("Efficiency with HPSv3 (SD-Turbo): seconds per update at effective batch 192" if paper
             else f"{_title(name)}: seconds per update")
    return Table(name=name, title=title, row_header="Metric", rows=[label for _, label in lines],
                 columns=[P.row_label(paper, k) for k in keys], cells=grid)


def geneval_table(results, name: str, paper: str | None = None, spec: dict | None = None) -> Table:
    """§6.4: rows = GenEval tasks + overall (mean of the six task accuracies), columns = methods, %."""
    _check_paper("geneval", paper)
    sub = table_rows(_results(results), name, paper)
    keys = _row_keys(sub, paper)
    grid = [[_metric_cell(sub, name, paper, k, f"geneval:{t}", None, paper_key=(k, "geneval", f"geneval:{t}")) for k in keys]
            for t in GENEVAL_TAGS]
    overall = []
    for j, k in enumerate(keys):
        c = _metric_cell(sub, name, paper, k, "geneval:overall", None)
        if c.value is None and all(grid[i][j].raw is not None for i in range(len(GENEVAL_TAGS))):
            c.raw = float(np.mean([grid[i][j].raw for i in range(len(GENEVAL_TAGS))]))
            c.value = to_display(c.raw, "geneval")
            c.source = "computed: mean of the six task accuracies (GenEval's overall score)"
        overall.append(c)
    grid.append(overall)
    return Table(name=name, title="GenEval task accuracy (%)",
                 row_header="Task", rows=[GENEVAL_TAG_LABELS[t] for t in GENEVAL_TAGS] + ["Overall (mean of tasks)"],
                 columns=[P.row_label(paper, k) for k in keys], cells=grid,
                 notes="The paper prints no overall GenEval score." if paper else "")


_REFERENCE_METRICS = [("pickscore", "PickScore"), ("clip", "CLIP"), ("aesthetic", "AES"), ("hpsv2", "HPSv2")]


def _metric_columns(sub, paper_metrics: list[tuple[str, str]] | None,
                    spec: dict | None = None) -> tuple[list[tuple[str | None, str]], list[str], list[str]]:
    """(lookups, column labels, groups): with the paper's table its metrics on their one test set
    (any test set of ours), else our test set × metric in order of appearance, a checker's GenEval
    overall first and every metric by its config label (as the generic builder)."""
    if paper_metrics is not None:
        return [(None, m) for m, _ in paper_metrics], [h for _, h in paper_metrics], []
    cols = _overall_first(_our_columns(sub))
    labels = {**dict(_REFERENCE_METRICS), **((spec or {}).get("metric_labels") or {})}
    groups = [P.TEST_SETS.get(ts, ts) for ts, _ in cols] if len({ts for ts, _ in cols}) > 1 else []
    return cols, [_column_label(m, labels, {m for _, m in cols}) for _, m in cols], groups


def reference_objective_table(results, name: str, paper: str | None = None, spec: dict | None = None) -> Table:
    """§6.5: rows = reference objectives; PickScore, CLIP, HPSv2 (×100) and AES on Pick-a-Pic v2."""
    _check_paper("reference", paper)
    sub = table_rows(_results(results), name, paper)
    keys = _row_keys(sub, paper)
    cols, labels, groups = _metric_columns(sub, _REFERENCE_METRICS if paper else None, spec)
    title = ("Reference objective (SD-Turbo, Pick-a-Pic v2; PickScore, CLIP, HPSv2 ×100)" if paper
             else f"{_title(name)}: reference objective")
    return Table(name=name, title=title, row_header="Objective", rows=[P.row_label(paper, k) for k in keys],
                 columns=labels, groups=groups,
                 cells=[[_metric_cell(sub, name, paper, k, m, ts, paper_key=(k, ts or "pickapic_v2", m)) for ts, m in cols]
                        for k in keys])


ABLATIONS = {"ablation_k": "Candidates per prompt K", "ablation_feature_map": "Feature map",
             "ablation_kernel": "Kernel", "ablation_eta": "Velocity scale η"}


def ablation_table(results, name: str, paper: str | None = None, spec: dict | None = None) -> Table:
    """§6.6: one ablation (K, feature map, kernel, η); PS and AES on Pick-a-Pic v2, base row first
    (with the paper's table); without it, the grid's rows and our test set × metric."""
    _check_paper("ablation", paper)
    sub = table_rows(_results(results), name, paper)
    keys = _row_keys(sub, paper)
    cols, labels, groups = _metric_columns(sub, [("pickscore", "PS"), ("aesthetic", "AES")] if paper else None, spec)
    what = ABLATIONS[paper] if paper else str((spec or {}).get("ablation") or _title(name))
    title = f"Ablation: {what} (SD-Turbo, Pick-a-Pic v2)" if paper else f"Ablation: {what}"
    return Table(name=name, title=title, row_header=what, rows=[P.row_label(paper, k) for k in keys],
                 columns=labels, groups=groups,
                 cells=[[_metric_cell(sub, name, paper, k, m, ts, paper_key=(k, ts or "pickapic_v2", m)) for ts, m in cols]
                        for k in keys])


def judged_model(sub: pd.DataFrame, table: str) -> str:
    """The one model a preference table's shares are of (results column `judged`; "" if unnamed)."""
    judged = sorted({j for j in sub["judged"] if j})
    if len(judged) > 1:
        raise ValueError(f"results: table {table} holds preference shares of several judged models {judged}; "
                         f"a preference table is one model against each opponent")
    return judged[0] if judged else ""


def preference_table(results, name: str, paper: str | None = None, spec: dict | None = None) -> Table:
    """§6.7: the judged model's (DrPO's) pairwise preference share (%) against each opponent (a
    row), per test set (a column): Pick-a-Pic v2 and Parti with the paper's table."""
    _check_paper("preference", paper)
    sub = table_rows(_results(results), name, paper)
    sub = sub[sub["_metric"] == "preference"]
    judged = judged_model(sub, name)
    if paper and judged and P.canonical_row(paper, judged) != "drpo":
        raise ValueError(f"table {name} is compared with the paper's {paper}, DrPO's shares; its results judge {judged!r}")
    keys = _row_keys(sub, paper)
    test_sets = ["pickapic_v2", "parti"] if paper else []
    test_sets += [ts for ts in dict.fromkeys(sub["_ts"]) if ts not in test_sets]
    who = judged or "DrPO"
    title = (f"Qwen3-VL pairwise preference for {who} (%), SDXL-Turbo" if paper
             else f"{_title(name)}: pairwise preference for {who} (%)")
    return Table(name=name, title=title, row_header=f"{who} vs.",
                 rows=[P.row_label(paper, k) for k in keys], columns=[P.TEST_SETS.get(t, t) for t in test_sets],
                 cells=[[_metric_cell(sub, name, paper, k, "preference", t) for t in test_sets] for k in keys])


def _overall_first(cols: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A checker metric `m` with GenEval tags becomes: `m:overall` (GenEval's score, the mean of the
    tag accuracies), then each tag, then `m` itself (the image-level accuracy, a secondary column)."""
    have = set(cols)
    out: list[tuple[str, str]] = []
    for ts, m in cols:
        if (ts, m) in out:
            continue
        base = m.split(":", 1)[0]
        if (ts, f"{base}:overall") in have and (ts, base) in have:
            tags = [(t, x) for t, x in cols if t == ts and x.startswith(f"{base}:") and x != f"{base}:overall"]
            out += [c for c in [(ts, f"{base}:overall"), *tags, (ts, base)] if c not in out]
        else:
            out.append((ts, m))
    return out


def _column_label(metric: str, labels: dict[str, str], have: set[str]) -> str:
    base, _, part = metric.partition(":")
    name = labels.get(base, base)
    if part == "overall":
        return f"{name} overall"
    if part:
        return GENEVAL_TAG_LABELS.get(part, part)
    return f"{name} image accuracy" if f"{base}:overall" in have else name


def generic_table(results, name: str, paper: str | None = None, spec: dict | None = None) -> Table:
    """Any other table of a config (the shapes world's, a user's): rows = methods in order of
    appearance, columns = test set × metric (a checker's GenEval overall first, then its tags, then
    its image accuracy), metrics by their config `label`, display scaling as everywhere, no paper
    column. One test set is named in the title, several head column groups."""
    if paper is not None:
        raise ValueError(f"builder generic draws none of the paper's tables (got paper {paper!r})")
    sub = table_rows(_results(results), name, None)
    keys = list(dict.fromkeys(sub["_row"]))
    cols = _overall_first(list(dict.fromkeys(zip(sub["_ts"], sub["_metric"]))))
    cells = [[_metric_cell(sub, name, None, k, m, ts) for ts, m in cols] for k in keys]
    labels, have = (spec or {}).get("metric_labels") or {}, {m for _, m in cols}
    test_sets = list(dict.fromkeys(ts for ts, _ in cols))
    title = _title(name) + (f" (test set {test_sets[0]})" if len(test_sets) == 1 else "")
    return Table(name=name, title=title, row_header="Method", rows=keys, columns=[_column_label(m, labels, have) for _, m in cols],
                 cells=cells, groups=[ts for ts, _ in cols] if len(test_sets) > 1 else [])


BUILDERS = {
    "main": main_table, "timing": efficiency_table, "geneval": geneval_table, "reference": reference_objective_table,
    "ablation": ablation_table, "preference": preference_table, "generic": generic_table,
}


def paper_tables() -> dict[str, dict]:
    """A table spec of every paper table under its own name, compared with it: for a results file
    whose `table` column names the paper's tables (`drpo tables --paper`)."""
    return {name: {"builder": builder, "paper": name} for name, builder in P.TABLES.items()}


def build_table(results, name: str, spec: dict) -> Table:
    """Table `name` drawn by its spec's builder, compared with its spec's paper table (if any)."""
    builder = spec.get("builder")
    if builder not in BUILDERS:
        raise ValueError(f"table {name}: builder {builder!r} is not one of {', '.join(BUILDERS)}")
    return BUILDERS[builder](results, name, spec.get("paper"), spec)
# -- writers ------------------------------------------------------------------------------------


def _fmt(v, decimals: int) -> str:
    if v is None:
        return DASH
    if isinstance(v, str):
        return v
    return f"{float(v):.{decimals}f}"


def cell_text(c: Cell) -> str:
    """The Markdown/LaTeX cell: 'ours (paper p)', '– (paper p)', 'ours' or '–'."""
    ours = _fmt(c.value, c.decimals)
    if c.paper is None:
        return ours
    return f"{ours} (paper {_fmt(c.paper, c.decimals)})"


def _csv_value(v, decimals: int):
    if v is None or isinstance(v, str):
        return v
    return int(round(float(v))) if decimals == 0 else round(float(v), decimals)


def _csv_column(values: list) -> pd.Series:
    """Integers stay integers next to blanks (Steps: 50, 1, blank), not 50.0."""
    if all(v is None or isinstance(v, int) for v in values):
        return pd.Series(values, dtype="Int64")
    return pd.Series(values, dtype=object if any(isinstance(v, str) for v in values) else float)


def table_frame(t: Table) -> pd.DataFrame:
    """The CSV layout: row header column, then each column followed by its '(paper)' column when the paper has one."""
    data: dict[str, pd.Series] = {t.row_header: pd.Series(list(t.rows), dtype=object)}
    for j in range(len(t.columns)):
        h = t.header(j)
        data[h] = _csv_column([_csv_value(t.cells[i][j].value, t.cells[i][j].decimals) for i in range(len(t.rows))])
        if any(t.cells[i][j].paper is not None for i in range(len(t.rows))):
            data[f"{h} (paper)"] = _csv_column([_csv_value(t.cells[i][j].paper, t.cells[i][j].decimals) for i in range(len(t.rows))])
    return pd.DataFrame(data)


def sources_frame(t: Table) -> pd.DataFrame:
    out = []
    for i, r in enumerate(t.rows):
        for j in range(len(t.columns)):
            c = t.cells[i][j]
            out.append({
                "table": t.name, "row": r, "column": t.header(j), "value": _csv_value(c.value, c.decimals), "raw": c.raw,
                "ci_low": c.ci[0] if c.ci else None, "ci_high": c.ci[1] if c.ci else None,
                "paper": c.paper, "source": c.source, "paper_source": c.paper_source,
            })
    return pd.DataFrame(out)


def markdown(t: Table) -> str:
    """A GitHub Markdown table (own formatter: `tabulate` is not a dependency)."""
    header = [t.row_header] + [t.header(j) for j in range(len(t.columns))]
    body = [[r] + [cell_text(c) for c in row] for r, row in zip(t.rows, t.cells)]
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [f"### {t.title}", "", "| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join(["---"] + [":---:"] * len(t.columns)) + "|"]
    lines += ["| " + " | ".join(esc(x) for x in row) + " |" for row in body]
    caption = "Cells: ours (paper value). " if t.has_paper else ""
    lines += ["", f"{caption}Every cell's source: `{t.name}.sources.csv`." + (f" {t.notes}" if t.notes else "")]
    return "\n".join(lines) + "\n"


_TEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_UNICODE = {"η": r"$\eta$", "×": r"$\times$", "–": "--", "↳": r"\quad ", "−": "-", "≈": r"$\approx$"}


def tex_escape(s: str) -> str:
    s = "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(s))
    for k, v in _TEX_UNICODE.items():
        s = s.replace(k, v)
    return s


def latex(t: Table) -> str:
    """A booktabs table; column groups become \\multicolumn headers. Cells: ours {\\scriptsize(paper p)}."""
    n = len(t.columns)

    def cell(c: Cell) -> str:
        ours = tex_escape(_fmt(c.value, c.decimals))
        return ours if c.paper is None else f"{ours}~{{\\scriptsize(paper {tex_escape(_fmt(c.paper, c.decimals))})}}"

    cell_note = "ours (paper value)" if t.has_paper else "ours"
    lines = [f"% generated by `drpo tables`; cells: {cell_note}; sources: {t.name}.sources.csv",
             r"\begin{table}[t]", r"\centering", f"\\caption{{{tex_escape(t.title)}}}", f"\\label{{tab:{t.name}}}",
             f"\\begin{{tabular}}{{l{'c' * n}}}", r"\toprule"]
    if t.groups and any(t.groups):
        spans, rules, j = [""], [], 0
        while j < n:
            k = j
            while k + 1 < n and t.groups[k + 1] == t.groups[j]:
                k += 1
            g = t.groups[j]
            spans.append(f"\\multicolumn{{{k - j + 1}}}{{c}}{{{tex_escape(g)}}}" if g and k > j else tex_escape(g))
            if g:
                rules.append(f"\\cmidrule(lr){{{j + 2}-{k + 2}}}")
            j = k + 1
        lines.append(" & ".join(spans) + r" \\")
        lines.append("".join(rules))
        heads = t.columns
    else:
        heads = [t.header(j) for j in range(n)]
    lines.append(" & ".join([tex_escape(t.row_header)] + [tex_escape(h) for h in heads]) + r" \\")
    lines.append(r"\midrule")
    for r, row in zip(t.rows, t.cells):
        lines.append(" & ".join([tex_escape(r)] + [cell(c) for c in row]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(t: Table, out_dir: str | os.PathLike) -> dict[str, Path]:
    """`<name>.csv`, `.md`, `.tex` and `<name>.sources.csv` in out_dir (atomic writes)."""
    from drpo.io import atomic_path, write_text

    out = Path(out_dir)
    paths = {"csv": out / f"{t.name}.csv", "md": out / f"{t.name}.md", "tex": out / f"{t.name}.tex",
             "sources": out / f"{t.name}.sources.csv"}
    for key, frame in (("csv", table_frame(t)), ("sources", sources_frame(t))):
        with atomic_path(paths[key]) as tmp:
            frame.to_csv(tmp, index=False)
    write_text(paths["md"], markdown(t))
    write_text(paths["tex"], latex(t))
    return paths


# -- figures ------------------------------------------------------------------------------------
# -- figures ------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from drpo.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    _plt().close(fig)
    return path


def preference_chart(t: Table, out_png: str | os.PathLike) -> Path | None:
    """§6.7 bar chart of a preference table: the judged model's share (%) vs each opponent, a bar
    per test set, bootstrap CIs as error bars, the paper's (chart-read) values as black ticks when
    the table has them, 50 % dashed. None without our numbers."""
    if all(c.value is None for row in t.cells for c in row):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.4 * len(t.rows) + 2, 3.6))
    n = max(len(t.columns), 1)
    width = 0.76 / n
    x = np.arange(len(t.rows))
    for j, label in enumerate(t.columns):
        col = [row[j] for row in t.cells]
        vals = np.array([c.value if c.value is not None else np.nan for c in col], float)
        lo = np.array([vals[i] - c.ci[0] if c.ci else 0.0 for i, c in enumerate(col)])
        hi = np.array([c.ci[1] - vals[i] if c.ci else 0.0 for i, c in enumerate(col)])
        pos = x + (j - (n - 1) / 2) * width
        ax.bar(pos, vals, width, label=f"{label} (ours)", yerr=np.nan_to_num(np.vstack([lo, hi])), capsize=3)
        if t.has_paper:
            paper = np.array([c.paper if c.paper is not None else np.nan for c in col], float)
            ax.scatter(pos, paper, marker="_", s=300, color="black", zorder=3, label="paper" if j == 0 else None)
        for p, v, up in zip(pos, vals, hi):
            if not np.isnan(v):
                ax.text(p, v + up + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(50, ls="--", color="grey", lw=1)
    ax.set_xticks(x, t.rows)
    ax.set_ylabel(f"{t.row_header.removesuffix(' vs.')} preference [%]")
    ax.set_ylim(0, 100)
    ax.set_title(t.title)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, Path(out_png))


def efficiency_chart(t: Table, out_png: str | os.PathLike) -> Path | None:
    """Stacked per-update time breakdown (the `time:<component>` lines of a timing table) per
    method; None without any."""
    lines = [i for i, r in enumerate(t.rows) if r.startswith("↳ ")]
    if not any(t.cells[i][j].value is not None for i in lines for j in range(len(t.columns))):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.8 * len(t.columns) + 1.5))
    left = np.zeros(len(t.columns))
    for i in lines:
        vals = np.array([t.cells[i][j].raw or 0.0 for j in range(len(t.columns))], float)  # "–": not a step of it
        ax.barh(t.columns, vals, left=left, label=t.rows[i].removeprefix("↳ ").removesuffix(" (s)"))
        left += vals
    ax.set_xlabel("seconds per update")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    ax.set_title(f"{t.title.split(':')[0]}: update time breakdown")
    return _save(fig, Path(out_png))


# a run's curve: an evaluation column when the run logged one, else the reward it trained on
# (`reward/<name>/mean`, drpo.train.trainer.namespace_rewards), else an older log's `reward/mean`
CURVE_KEYS = ("eval/{metric}", "eval/{metric}_mean", "eval/reward", "eval/reward_mean", "{metric}")
TRAINED_REWARD = re.compile(r"^reward/([^/]+)/mean$")


def curve_column(log: pd.DataFrame, metric: str, y_key: str | None = None) -> tuple[str | None, str]:
    """(column, reward it shows) of one run's training curve in a metrics log."""
    if y_key:
        return (y_key if y_key in log.columns else None), metric
    for k in CURVE_KEYS:
        if k.format(metric=metric) in log.columns:
            return k.format(metric=metric), metric
    trained = sorted(c for c in log.columns if TRAINED_REWARD.match(c))
    if trained:
        return trained[0], TRAINED_REWARD.match(trained[0]).group(1)
    return ("reward/mean" if "reward/mean" in log.columns else None), metric


def read_metrics_log(path: str | os.PathLike) -> pd.DataFrame:
    """A run's metrics: JSONL (the trainer's metrics.jsonl) or CSV; one row per logged step.

    Rows of one step merge, the later value of a metric winning (a log that re-ran some updates).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"metrics file {path} does not exist")
    if path.suffix == ".jsonl":
        from drpo.io import read_jsonl

        log = pd.DataFrame(read_jsonl(path))
    else:
        log = pd.read_csv(path)
    if "step" in log.columns and log["step"].notna().all():
        log = log.groupby("step", sort=True).last().reset_index()  # sparse rows of one step merge too
    return log


def training_curves(
    runs: dict[str, str | os.PathLike], out_png: str | os.PathLike, *, metric: str = "pickscore",
    y_key: str | None = None, x_key: str = "step", paper: bool = False,
) -> Path:
    """Reward vs step (or hours when x_key='time') of several runs, one panel per reward (a checker's
    0-100 never shares an axis with PickScore's ~22), each in its display units; with `paper`
    (SD-Turbo PickScore runs only), the paper's approximate curves (§6.8) dotted for runs named like
    a paper method. Also writes the plotted points to `<png stem>.csv` and their sources to
    `<png stem>.sources.csv`."""
    from drpo.io import atomic_path

    if not runs:
        raise ValueError("training_curves: no runs")
    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}  # reward -> (label, x, y) per run
    points, sources = [], []
    for label, path in runs.items():
        log = read_metrics_log(path)
        key, reward = curve_column(log, metric, y_key)
        if key is None:
            tried = [y_key] if y_key else [k.format(metric=metric) for k in CURVE_KEYS] + ["reward/<name>/mean", "reward/mean"]
            raise ValueError(f"metrics file {path}: no column for the curve (tried {tried}); columns: {sorted(log.columns)}; pass y_key")
        if x_key not in log.columns:
            raise ValueError(f"metrics file {path}: no x column {x_key!r}; columns: {sorted(log.columns)}")
        d = log[[x_key, key]].dropna().sort_values(x_key)
        x = d[x_key].to_numpy(float)
        if x_key == "time":
            x = (x - x[0]) / 3600.0
        y = np.array([to_display(v, reward) for v in d[key].to_numpy(float)])
        curves.setdefault(reward, []).append((label, x, y))
        points += [{"run": label, "reward": reward, "x": xi, "y": yi} for xi, yi in zip(x, y)]
        sources.append({"run": label, "path": str(path), "column": key, "reward": reward, "x": x_key, "points": len(x)})
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.8), squeeze=False)
    for ax, (reward, lines) in zip(axes[0], sorted(curves.items())):
        for label, x, y in lines:
            line, = ax.plot(x, y, label=label)
            pk = P.canonical_row("sd_turbo_main", label)
            if paper and pk in P.PAPER_CURVES and canonical_metric(reward) == "pickscore" and x_key == "step":
                px, py = zip(*P.PAPER_CURVES[pk])
                ax.plot(px, py, ls=":", marker="o", ms=3, color=line.get_color(), label=f"{label} (paper, approx.)")
        ax.set_xlabel("hours" if x_key == "time" else x_key)
        ax.set_ylabel(f"{reward} (display units)")
        ax.set_title(f"trained on {reward}" if len(curves) > 1 else reward)
        ax.legend(fontsize=7)
    out = Path(out_png)
    for suffix, frame in ((".csv", pd.DataFrame(points)), (".sources.csv", pd.DataFrame(sources))):
        with atomic_path(out.with_suffix(suffix)) as tmp:
            frame.to_csv(tmp, index=False)
    return _save(fig, out)



# -- everything ---------------------------------------------------------------------------------


def build_all(
    results, out_dir: str | os.PathLike, *, tables: dict[str, dict] | None = None,
    curves: dict[str, str | os.PathLike] | None = None, curve_metric: str = "pickscore", curve_key: str | None = None,
    curves_paper: bool = False, include_empty: bool = False,
) -> dict[str, dict[str, Path]]:
    """Every table of `tables` (name -> spec: `builder`, optional `paper`) that has results (all
    with include_empty), every other table of the results with the generic builder, the figures,
    and `index.md` linking them."""
    from drpo.io import write_text

    res = load_results(results)
    out = Path(out_dir)
    written: dict[str, dict[str, Path]] = {}
    specs = dict(tables or {})
    for name in dict.fromkeys(res["table"]):
        specs.setdefault(name, {"builder": "generic"})
    built: list[Table] = []
    for name, spec in specs.items():
        if not include_empty and not (res["table"] == name).any():
            continue
        t = build_table(res, name, spec)
        built.append(t)
        written[name] = write_table(t, out)
    paper = any(t.has_paper for t in built)
    index = ["# Tables and figures", "",
             ("Cells: ours (paper value); each" if paper else "Each") + " table's `<name>.sources.csv` traces every cell.", ""]
    for t in built:
        index += [markdown(t), f"Files: `{t.name}.csv`, `{t.name}.md`, `{t.name}.tex`, `{t.name}.sources.csv`", ""]
    figures: dict[str, Path | None] = {}
    for t in built:
        builder = specs[t.name]["builder"]
        if builder == "preference":
            figures[f"{t.name}_chart"] = preference_chart(t, out / f"{t.name}.png")
        elif builder == "timing":
            figures[f"{t.name}_breakdown_chart"] = efficiency_chart(t, out / f"{t.name}_breakdown.png")
    if curves:
        figures["training_curves"] = training_curves(curves, out / "training_curves.png", metric=curve_metric,
                                                     y_key=curve_key, paper=curves_paper)
    for name, path in figures.items():
        if path is not None:
            written[name] = {"png": path}
            index += [f"### {name}", "", f"![{name}]({path.name})", ""]
    write_text(out / "index.md", "\n".join(index) + "\n")
    return written


# -- results rows from other outputs ------------------------------------------------------------


def preference_row(*, table: str, judged: str, opponent: str, test_set: str, share: float | None,
                   ci: tuple[float | None, float | None] = (None, None), source: str = "") -> ResultRow:
    """The one record of a judge result: in table `table` (a preference table), `judged`'s (DrPO's)
    preference share in [0, 1] against `opponent` (the table's row, the record's `method`) on
    `test_set`, with its CI. `drpo collect` and `drpo tables --judge` both write it."""
    return ResultRow(table=table, method=opponent, test_set=test_set, metric="preference", value=share,
                     ci_low=ci[0], ci_high=ci[1], source=source, judged=judged)


def result_from_judge_summary(summary: JudgeSummary | str | os.PathLike, *, table: str, opponent: str | None = None,
                              test_set: str | None = None, judged: str = "DrPO") -> ResultRow:
    """A preference record (`preference_row`) from a `drpo judge --summary` file: the preference
    share in [0, 1] of `judged` (the left method) and its CI; the opponent is the file's
    `right_label` unless given; the test set must be given unless the file has `test_set`."""
    src = "(summary)"
    if not isinstance(summary, JudgeSummary):
        src = str(summary)
        read = read_judge_summary(summary)
        if read is None:
            raise FileNotFoundError(f"judge summary {src} does not exist (write it with `drpo judge --summary`)")
        summary = read
    opponent = opponent or summary.right_label
    test_set = test_set or summary.details.get("test_set")
    if not opponent or not test_set:
        raise ValueError(f"judge summary {src}: name the opponent and test set (OPPONENT:TEST_SET=path), the file has neither")
    return preference_row(table=table, judged=judged, opponent=opponent, test_set=test_set, share=summary.preference_share,
                          ci=summary.preference_share_ci95 or (None, None), source=src)
