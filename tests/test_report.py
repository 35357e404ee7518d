"""`results/report.html`: summary first, tables by title, figures, sample grids with a checker's ✓ / ✗;
rendered in headless Chromium at 1200 px: nothing overflows and every image loads."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from PIL import Image

from drpo.eval import tables as T
from drpo.eval.report import build_report
from drpo.io import write_jsonl

MODELS = {"base": {"kind": "base", "label": "Shapes-Turbo base"}, "drpo-s42": {"kind": "run", "label": "DrPO"},
          "dpo-s42": {"kind": "run", "label": "DPO 1step"}}


def row(table, method, test_set, metric, value, ci=(None, None)):
    return {"table": table, "method": method, "test_set": test_set, "metric": metric, "value": value,
            "ci_low": ci[0], "ci_high": ci[1], "source": f"scores/{test_set}/{method}/{metric}.json"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A small results tree as the workflow leaves it: tables (one very wide), a curve, samples, checker scores."""
    root = tmp_path_factory.mktemp("report")
    results = [row("main", "Shapes-Turbo base", "world_test", "world_checker", 0.55, (0.5, 0.6)),
               row("main", "DrPO", "world_test", "world_checker", 0.70, (0.66, 0.74)),
               row("main", "DPO 1step", "world_test", "world_checker", 0.58, (0.50, 0.67))]
    # 24 test sets: a table far wider than a page
    results += [row("wide", "DrPO", f"test_set_number_{i:02d}", "world_checker", 0.5 + i / 100, (0.4, 0.6)) for i in range(24)]
    log = root / "drpo.jsonl"
    write_jsonl(log, [{"step": s, "reward/world_checker/mean": 0.5 + s / 100} for s in range(1, 11)])
    T.build_all(pd.DataFrame(results), root / "tables", tables={"main": {"builder": "main"}, "wide": {"builder": "generic"}},
                curves={"DrPO": log})
    for model in MODELS:
        out = root / "samples" / "world_test" / model
        (out / "images").mkdir(parents=True)
        rows = []
        for i in range(4):
            Image.new("RGB", (32, 32), (40 * i, 100, 200)).save(out / "images" / f"{i:06d}.png")
            rows.append({"prompt_id": i, "seed": 42, "prompt": f"a photo of {i} red circles", "image_path": f"images/{i:06d}.png"})
        write_jsonl(out / "manifest.jsonl", rows)
        scores = root / "scores" / "world_test" / model
        scores.mkdir(parents=True)
        pd.DataFrame({"prompt_id": range(4), "seed": 42, "score": [1.0, 0.0, 1.0, 1.0]}).to_parquet(scores / "checker.parquet")
    spec = {"results": str(root), "models": MODELS, "metric_specs": {"checker": {"name": "world_checker"}}}
    (root / "spec.json").write_text(json.dumps({**spec, "tables": {}}))
    return root, spec


def test_the_summary_comes_first_with_intervals_and_drpo_against_each_baseline(study):
    root, spec = study
    page = build_report(root / "tables", root / "report.html", root / "samples", spec=spec, n=4).read_text()
    headings = [h.split(">", 1)[1].split("<", 1)[0] for h in page.split("<h2")[1:]]
    assert headings[0].startswith("Summary") and headings[1:] == ["Tables", "Figures", "Samples"]
    summary = page[page.index("Summary"):page.index(">Tables<")]
    assert "70.0 <span class=note>[66.0, 74.0]</span>" in summary  # display units, with the 95 % interval in the cell's decimals
    assert "DrPO − Shapes-Turbo base" in summary and "DrPO − DPO 1step" in summary
    assert "<td class=better>+15.0 *</td>" in summary  # intervals apart from the base's
    assert "<td class=better>+12.0</td>" in summary  # DPO's overlap DrPO's: no star
    assert "Steps" not in summary  # a column without numbers stays out of the summary
    assert "training_curves" not in page.split(">Figures<")[0]  # the curve's points are a figure, not a table
    assert "DrPO on world_test" in page and "drpo-s42 on" not in page  # labels, not ids


def test_the_report_fits_1200_px_and_every_image_loads_in_chromium(study):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make test installs it)")
    if chromium is None:
        pytest.skip("no Chromium: `make test` installs Debian's chromium (apt-get install chromium)")
    root, spec = study
    page_path = build_report(root / "tables", root / "report.html", root / "samples", spec=spec, n=4)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        width = page.evaluate("document.documentElement.scrollWidth")
        images = page.evaluate("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0, i.getBoundingClientRect().right])")
        wide = page.evaluate("[...document.querySelectorAll('.wrap')].map(w => [w.scrollWidth > w.clientWidth, w.getBoundingClientRect().right])")
        browser.close()
    assert width <= 1200, f"the page is {width} px wide"
    assert len(images) == 1 + len(MODELS) and all(ok for _, ok, _ in images), images  # the curve and one grid per model
    assert all(right <= 1200 for _, _, right in images)
    assert any(scrolls for scrolls, _ in wide) and all(right <= 1200 for _, right in wide)  # the wide table scrolls in its box
