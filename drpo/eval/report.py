"""`drpo report`: one self-contained HTML page of a study: every table, every figure, and a sample
grid per model and test set (the same prompts and seeds in every grid, so rows compare directly)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from drpo.contracts import Layout, ManifestRow, is_correct, read_manifest
from drpo.io import write_text

# fits a 1200 px window: wide tables scroll inside their own box, images never exceed the column
STYLE = """body{font-family:system-ui,sans-serif;max-width:1140px;margin:1.5em auto;padding:0 12px;color:#222}
.wrap{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:.6em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:center}th{background:#f3f3f3}td:first-child{text-align:left}
img{max-width:100%;height:auto}img.figure{max-width:760px}h2{margin-top:1.8em;border-bottom:1px solid #ddd}.better{color:#17803d}.worse{color:#b42318}
.note{color:#555;font-size:13px}"""


def _img(data: bytes, alt: str, cls: str = "") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table_order(tables: Path) -> list[str]:
    """Table names in the order `drpo tables` wrote them (its index.md), else by name."""
    index = tables / "index.md"
    names = re.findall(r"Files: `([^`]+)\.csv`", index.read_text()) if index.exists() else []
    csvs = sorted(p.stem for p in tables.glob("*.csv") if not p.name.endswith(".sources.csv"))
    figure_data = {p.stem for p in tables.glob("*.png")}  # a figure's plotted points, not a table
    return [n for n in names if n in csvs] + [n for n in csvs if n not in names and n not in figure_data]


def _title(tables: Path, name: str) -> str:
    md = tables / f"{name}.md"
    first = md.read_text().splitlines()[0] if md.exists() else ""
    return first.removeprefix("### ").strip() or name.replace("_", " ")


def _decimals(value) -> int:
    """The decimals a table cell is shown with (its interval and differences use the same)."""
    text = str(value)
    return len(text.split(".", 1)[1]) if "." in text else 0


def _cell(value, lo, hi) -> str:
    if value in ("", None) or (isinstance(value, float) and value != value):
        return "–"
    if pd.notna(lo) and pd.notna(hi):
        d = _decimals(value)
        return f"{value} <span class=note>[{lo:.{d}f}, {hi:.{d}f}]</span>"
    return str(value)


def summary(tables: Path, name: str) -> str:
    """The headline table with 95 % intervals, then DrPO against each other row, column by column:
    the difference, and whether the intervals are apart."""
    src = pd.read_csv(tables / f"{name}.sources.csv", keep_default_na=False, na_values=[""])
    src = src[~src["column"].astype(str).str.endswith("(paper)")]
    src = src[src.groupby("column")["raw"].transform(lambda v: v.notna().any())]  # no empty columns
    rows, columns = list(dict.fromkeys(src["row"])), list(dict.fromkeys(src["column"]))
    cell = {(r.row, r.column): r for r in src.itertuples()}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr><td>" + html.escape(str(r)) + "</td>" + "".join(
        f"<td>{_cell(cell[(r, c)].value, cell[(r, c)].ci_low, cell[(r, c)].ci_high) if (r, c) in cell else '–'}</td>" for c in columns)
        + "</tr>" for r in rows)
    parts = [f"<h2>Summary: {html.escape(_title(tables, name))}</h2>",
             "<p class=note>Ours, with 95 % bootstrap intervals in brackets.</p>",
             f"<div class=wrap><table><tr><th></th>{head}</tr>{body}</table></div>"]
    ours = next((r for r in rows if str(r).startswith("DrPO")), None)
    if ours is not None and len(rows) > 1:
        lines = []
        for other in (r for r in rows if r != ours):
            cells = []
            for c in columns:
                a, b = cell.get((ours, c)), cell.get((other, c))
                if a is None or b is None or pd.isna(a.raw) or pd.isna(b.raw) or not a.raw:
                    cells.append("<td>–</td>")
                    continue
                scale = float(a.value) / a.raw if a.raw else 1.0  # display units, as in the table
                diff = (a.raw - b.raw) * scale
                apart = pd.notna(a.ci_low) and pd.notna(b.ci_high) and (a.ci_low > b.ci_high or a.ci_high < b.ci_low)
                kind = " class=better" if diff > 0 else " class=worse" if diff < 0 else ""
                cells.append(f"<td{kind}>{diff:+.{_decimals(a.value)}f}{' *' if apart else ''}</td>")
            lines.append(f"<tr><td>{html.escape(str(ours))} − {html.escape(str(other))}</td>{''.join(cells)}</tr>")
        parts += [f"<h3>{html.escape(str(ours))} against each baseline</h3>",
                  "<p class=note>Difference in the table's units (higher is better unless the column says otherwise, "
                  "as FID); * the two 95 % intervals do not overlap.</p>",
                  f"<div class=wrap><table><tr><th></th>{head}</tr>{''.join(lines)}</table></div>"]
    return "\n".join(parts)


def _marks(spec: dict | None, test_set: str, model: str, rows: list[ManifestRow]) -> list[bool | None]:
    """A checker's verdict per sampled image (✓ / ✗ on the grid), when a checker metric scored it."""
    if not spec:
        return [None] * len(rows)
    from drpo.eval.collect import CHECKER_REWARDS

    for metric, mspec in (spec.get("metric_specs") or {}).items():
        path = Path(Layout(spec["results"]).score_values(test_set, model, metric))
        if mspec.get("name") in CHECKER_REWARDS and path.exists():
            scores = pd.read_parquet(path, columns=["prompt_id", "seed", "score"])
            verdict = {(int(p), int(s)): bool(is_correct(v)) for p, s, v in scores.itertuples(index=False)}
            return [verdict.get(r.key) for r in rows]
    return [None] * len(rows)


def _sample_grid(manifest: Path, n: int, marks_for=None, out: Path | None = None) -> bytes:
    from PIL import Image

    from drpo.grid import save_grid

    first_seed = None
    rows = []
    for r in read_manifest(manifest):  # the first seed's first prompts: the same in every model's grid
        first_seed = r.seed if first_seed is None else first_seed
        if r.seed == first_seed and len(rows) < n:
            rows.append(r)
    images = [Image.open(r.image) for r in rows]
    marks = marks_for(rows) if marks_for else None
    if out is not None:  # a file of its own too (Snakemake's report lists the grids)
        return save_grid(out, images, [r.prompt for r in rows], ncols=min(4, n), cell=192, marks=marks).read_bytes()
    tmp = manifest.parent / ".report_grid.png"
    save_grid(tmp, images, [r.prompt for r in rows], ncols=min(4, n), cell=192, marks=marks)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def build_report(tables: str | Path, out: str | Path, samples: str | Path | None = None, n: int = 8, title: str = "drpo study",
                 spec: dict | None = None, grids: str | Path | None = None) -> Path:
    """The page: a summary (the headline table with intervals, DrPO against each baseline), every
    table by its title, the figures, and a sample grid per test set and model (labels from the collect
    spec, ✓ / ✗ per image where a checker scored it)."""
    tables = Path(tables)
    if not tables.is_dir():
        raise FileNotFoundError(f"--tables {tables}: no such folder (write it with `drpo tables`)")
    order = _table_order(tables)
    if not order:
        raise FileNotFoundError(f"--tables {tables}: holds no table (.csv); write them with `drpo tables`")
    configured = (spec or {}).get("tables") or {}
    order = [t for t in configured if t in order] + [t for t in order if t not in configured]  # the config's order
    labels = {m: info.get("label", m) for m, info in (spec or {}).get("models", {}).items()}
    parts = [f"<!doctype html><meta charset='utf-8'><meta name=viewport content='width=device-width'>"
             f"<title>{html.escape(title)}</title><style>{STYLE}</style>", f"<h1>{html.escape(title)}</h1>"]
    # the headline: the first table of methods × metrics (not a per-task, preference or timing table)
    headline = next((t for t in order if (tables / f"{t}.sources.csv").exists()
                     and configured.get(t, {}).get("builder") not in ("geneval", "preference", "timing")), None)
    if headline:
        parts.append(summary(tables, headline))
    frames = {name: pd.read_csv(tables / f"{name}.csv", keep_default_na=False) for name in order}
    paper = any(str(c).endswith("(paper)") for frame in frames.values() for c in frame.columns)
    note = "A column marked (paper) holds the paper's value. " if paper else ""
    parts.append(f"<h2>Tables</h2><p class=note>{note}Each table's <code>.sources.csv</code> names the file behind every cell.</p>")
    for name, frame in frames.items():
        parts.append(f"<h3>{html.escape(_title(tables, name))}</h3>")
        parts.append("<div class=wrap>" + frame.to_html(index=False, escape=True, border=0) + "</div>")
    pngs = sorted(tables.glob("*.png"))
    if pngs:
        parts.append("<h2>Figures</h2>")
    for png in pngs:
        parts.append(f"<h3>{html.escape(png.stem.replace('_', ' '))}</h3>{_img(png.read_bytes(), png.stem, 'figure')}")
    if samples and Path(samples).exists():
        parts.append("<h2>Samples</h2><p class=note>The first prompts of each test set, first seed: the same prompts "
                     "and noise for every model; ✓ / ✗ is the checker's verdict where one scored the set.</p>")
        for manifest in sorted(Path(samples).glob("*/*/manifest.jsonl")):
            test_set, model = manifest.parent.parent.name, manifest.parent.name
            label = f"{labels.get(model, model)} on {test_set}"
            data = _sample_grid(manifest, n, lambda rows, ts=test_set, m=model: _marks(spec, ts, m, rows),
                                Path(grids) / test_set / f"{model}.png" if grids else None)
            parts.append(f"<h3>{html.escape(label)}</h3>{_img(data, label)}")
    return write_text(out, "\n".join(parts) + "\n")
