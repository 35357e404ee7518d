"""`drpo report`: one self-contained HTML page of a study: every table, every figure, and a sample
grid per model and test set (the same prompts and seeds in every grid, so rows compare directly)."""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
from pathlib import Path

import pandas as pd

from drpo.io import read_jsonl, write_text

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:center}
th{background:#f3f3f3}img{max-width:100%}h2{margin-top:2em;border-bottom:1px solid #ddd}"""


def _png(path_or_image) -> str:
    if isinstance(path_or_image, (str, Path)):
        data = Path(path_or_image).read_bytes()
    else:
        buf = io.BytesIO()
        path_or_image.save(buf, format="PNG")
        data = buf.getvalue()
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _sample_grid(manifest: Path, n: int):
    from PIL import Image

    from drpo.grid import save_grid

    rows = [r for r in read_jsonl(manifest)][:n]
    images = [Image.open(manifest.parent / r["image_path"]) for r in rows]
    tmp = manifest.parent / ".report_grid.png"
    save_grid(tmp, images, [r["prompt"] for r in rows], ncols=min(8, n), cell=96)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def build_report(tables: str | Path, out: str | Path, samples: str | Path | None = None, n: int = 8, title: str = "drpo study") -> Path:
    tables = Path(tables)
    if not tables.is_dir():
        raise FileNotFoundError(f"--tables {tables}: no such folder (write it with `drpo tables`)")
    if not any(tables.glob("*.csv")):
        raise FileNotFoundError(f"--tables {tables}: holds no table (.csv); write them with `drpo tables`")
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>", f"<h1>{html.escape(title)}</h1>"]
    frames = {csv: pd.read_csv(csv, keep_default_na=False) for csv in sorted(tables.glob("*.csv"))
              if not csv.name.endswith(".sources.csv")}
    paper = any(str(c).endswith("(paper)") for frame in frames.values() for c in frame.columns)
    note = "Cells: ours; a column marked (paper) holds the paper's value. " if paper else ""
    parts.append(f"<p>{note}Each table's <code>.sources.csv</code> names the file behind every cell.</p>")
    for csv, frame in frames.items():
        parts.append(f"<h2>{html.escape(csv.stem.replace('_', ' '))}</h2>")
        parts.append(frame.to_html(index=False, escape=True, border=0))
    for png in sorted(tables.glob("*.png")):
        parts.append(f"<h2>{html.escape(png.stem.replace('_', ' '))}</h2>{_png(png)}")
    if samples and Path(samples).exists():
        parts.append("<h2>Samples</h2><p>The first prompts of each test set, first seed; the same prompts and noise for every model.</p>")
        for manifest in sorted(Path(samples).glob("*/*/manifest.jsonl")):
            label = f"{manifest.parent.parent.name} / {manifest.parent.name}"
            data = _sample_grid(manifest, n)
            parts.append(f"<h3>{html.escape(label)}</h3><img src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    return write_text(out, "\n".join(parts) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tables", required=True, help="folder written by `drpo tables`")
    parser.add_argument("--samples", default=None, help="samples folder (<test set>/<model>/manifest.jsonl)")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--n", type=int, default=8, help="images per sample grid")
    parser.add_argument("--title", default="drpo study")
    parser.add_argument("--mlflow-run", default=os.environ.get("DRPO_MLFLOW_PARENT_RUN_ID") or None,
                        help="also attach the report and the tables to this MLflow run (default: the workflow's "
                             "parent run, $DRPO_MLFLOW_PARENT_RUN_ID)")
    parser.add_argument("--mlflow-uri", default=os.environ.get("DRPO_MLFLOW_URI") or None,
                        help="the MLflow store of --mlflow-run (default: $DRPO_MLFLOW_URI)")


def main(args: argparse.Namespace) -> int:
    path = build_report(args.tables, args.out, args.samples, args.n, args.title)
    print(f"wrote {path}")
    if args.mlflow_run and args.mlflow_uri:
        from drpo.tracking import open_run

        tracker = open_run(args.mlflow_uri, "", existing_run_id=args.mlflow_run)  # warns and goes on if MLflow is down
        tracker.log_artifact(path)
        tracker.log_artifact(args.tables, "tables")
    return 0
