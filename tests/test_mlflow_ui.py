"""The README's MLflow recipe, followed in a real browser: `mlflow server` on a study's store, the
experiment opened on its training runs, the evaluated runs found by the search box, selected, and
compared; the Compare view then shows DrPO against each baseline on the test set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import mlflow_server

from drpo import tracking
from drpo.cli import main
from drpo.train.config import train_config_from_dict

MODELS = {"base": ("Shapes-Turbo base", 0.55), "dpo-s42": ("DPO 1step", 0.58), "drpo-s42": ("DrPO", 0.70)}


def _study_store(root: Path) -> str:
    """Two training runs and a base model's scores, logged to MLflow by `drpo collect` as the workflow does."""
    uri = f"sqlite:///{root}/results/mlflow.db"
    for model in ("dpo-s42", "drpo-s42"):
        cfg = {"method": model.split("-")[0], "output_dir": f"results/runs/{model}",
               "tracking": {"uri": uri, "experiment": "drpo-shapes", "system_metrics": 0}}
        tracker = tracking.training_tracker(train_config_from_dict(cfg))
        tracker.log_metrics({"loss": 1.0, "reward/world_checker/mean": 0.5}, step=1)
        tracker.close()
    for model, (_, mean) in MODELS.items():
        out = root / "results" / "scores" / "world_test" / model
        out.mkdir(parents=True)
        (out / "geneval.json").write_text(json.dumps({"mean": mean, "ci_low": mean - 0.04, "ci_high": mean + 0.04}))
    spec = {"results": "results", "test_sets": ["world_test"], "metrics": ["geneval"], "judged": [],
            "models": {m: {"kind": "base" if m == "base" else "run", "label": label} for m, (label, _) in MODELS.items()},
            "tables": {"main": {"builder": "main", "rows": list(MODELS)}}}
    (root / "spec.json").write_text(json.dumps(spec))
    assert main(["collect", "--spec", "spec.json", "--out", "results/results.csv", "--mlflow-uri", uri,
                 "--experiment", "drpo-shapes"]) == 0
    return uri


def test_the_readme_compare_recipe_works_in_a_real_browser(tmp_path, monkeypatch):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make test installs it)")
    if chromium is None:
        pytest.skip("no Chromium: `make test` installs Debian's chromium (apt-get install chromium)")
    monkeypatch.chdir(tmp_path)
    uri = _study_store(tmp_path)
    with mlflow_server(uri, tmp_path) as base:  # the README's command, on a free port
        experiment = tracking._client(uri).get_experiment_by_name("drpo-shapes").experiment_id
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # 1. the experiment, on its runs table (the README's link; "Model training" at the top left)
            page.goto(f"{base}/#/experiments/{experiment}?workflowType=machine_learning")
            page.get_by_text("drpo-s42").first.wait_for(timeout=60_000)
            # 2. the evaluated runs: the README's search
            search = page.get_by_placeholder('metrics.rmse < 1 and params.model = "tree"')
            search.fill("metrics.`eval/world_test/geneval` >= 0")
            search.press("Enter")
            page.get_by_text("3 matching runs").wait_for(timeout=30_000)
            # 3. select them all and compare
            page.get_by_label("Select all runs").click()
            page.get_by_role("button", name="Compare").first.click()
            page.get_by_text("Comparing 3 Runs").wait_for(timeout=60_000)
            rows = page.evaluate("""() => [...document.querySelectorAll('tr')].map(r => [...r.querySelectorAll('th,td')]
                                      .map(c => c.innerText.trim()))""")
            text = page.inner_text("body")
            browser.close()
    names = next(r for r in rows if r and r[0].startswith("Run Name"))[1:]
    # the metrics section: the metric names (a virtualized grid), then their values row by row, a run per column
    section = text[text.rindex("Metrics"):text.index("Artifacts", text.rindex("Metrics"))].split("\n")[1:]
    lines = [line.strip() for line in section if line.strip() and line.strip() != "Show diff only"]
    metrics = [line for line in lines if line[0].isalpha() and line != "NaN"]
    values = [line for line in lines if line not in metrics]
    table = {m: values[i * len(names):(i + 1) * len(names)] for i, m in enumerate(metrics)}
    shown = dict(zip(names, table["eval/world_test/geneval"]))
    assert {n: float(v) for n, v in shown.items()} == {m: mean for m, (_, mean) in MODELS.items()}, table
    assert "eval/world_test/geneval/ci_low" in table
