"""The twin studies (config/test/*.yaml): the paper configs with every model a tiny twin of its class,
built by the workflow itself (rule `twins`, `drpo twins`). Their DAGs plan in seconds; each study runs
for real, end to end, and every table its config names comes out with a number in every cell of a
model that ran."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from drpo import workflow as wf
from drpo.models import twins

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT / "config" / "test"
PAPER = ROOT / "config" / "paper"
STUDIES = ["sd-turbo", "sdxl-turbo"]


def _config(name: str, results: str | None = None) -> dict:
    raw = yaml.safe_load((TEST / f"{name}.yaml").read_text())
    if results:
        raw = {**raw, "results": results}  # its `{results}/twins/...` paths move along
    return wf.validate_config(raw, source=f"config/test/{name}.yaml")


def _snakemake(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _job_counts(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}


# -- the configs are the paper's, on twins ------------------------------------------------------------


@pytest.mark.parametrize("name", STUDIES)
def test_twin_config_is_the_paper_config_on_twins(name):
    ours, paper = _config(name), wf.validate_config(yaml.safe_load((PAPER / f"{name}.yaml").read_text()))
    assert set(ours["training"]["runs"]) == set(paper["training"]["runs"])
    assert set(ours["training"].get("ablations", {})) == set(paper["training"].get("ablations", {}))
    for grid, spec in paper["training"].get("ablations", {}).items():
        assert ours["training"]["ablations"][grid]["key"] == spec["key"]
        assert len(ours["training"]["ablations"][grid]["values"]) == len(spec["values"])
    for run, spec in paper["training"]["runs"].items():
        mine = ours["training"]["runs"][run]
        assert {k: mine.get(k) for k in ("method", "model", "reward", "prompts", "dataset", "label")} == \
            {k: spec.get(k) for k in ("method", "model", "reward", "prompts", "dataset", "label")}, run
    ev, pev = ours["evaluation"], paper["evaluation"]
    assert ev["test_sets"] == pev["test_sets"] and set(ev["base_models"]) == set(pev["base_models"])
    assert set(pev["metrics"]) <= set(ev["metrics"])
    assert {k: v["name"] for k, v in pev["metrics"].items()} == {k: ev["metrics"][k]["name"] for k in pev["metrics"]}
    for block in ("fid", "timing"):
        assert (block in ev) == (block in pev), block
    if "judge" in pev:
        assert ev["judge"]["backend"] == pev["judge"]["backend"] and ev["judge"]["against"] == pev["judge"]["against"]
    assert ours["tables"] == paper["tables"]
    # every model is a twin the workflow builds, of the class of the model it stands for
    root = twins.twins_dir(ours)
    refs = twins.referenced(ours, root)
    assert all(m["path"].startswith(root + "/") for m in ours["models"].values())
    assert set(refs) >= set(ours["models"])
    # no weight of the paper config is left: neither its Hugging Face ids nor its local files
    paper_weights = {s for s in twins._strings(paper) if s.startswith(("models/", "envs/", "data/")) or
                     (s.count("/") == 1 and not s.startswith(("results", "sqlite")))}
    assert paper_weights and not paper_weights & set(twins._strings(ours))


def test_twins_output_every_marker_the_rules_ask_for(tmp_path):
    config = _config("sd-turbo", str(tmp_path / "r"))
    root = twins.twins_dir(config)
    out = set(twins.outputs(config, root))
    assert f"{root}/twins.json" in out
    for name in config["models"]:
        assert f"{config['models'][name]['path']}/model_index.json" in out
    assert f"{root}/aesthetic/{twins.AESTHETIC_FILE}" in out and f"{root}/latent-mae/config.json" in out
    bad = {**config, "models": {"x": {"path": f"{root}/not-a-twin"}}}
    with pytest.raises(ValueError, match="not-a-twin"):
        twins.referenced(bad, root)


def test_worker_twins_speak_the_real_protocol(tmp_path):
    """HPSv2's and GenEval's twins through WorkerReward: a worker process started with options.python,
    JSON lines, deterministic scores; GenEval's twin checks the metadata row as the real scorer does."""
    import torch

    from drpo.rewards import RewardError, build_reward

    twins.build(["hpsv2", "geneval"], tmp_path)
    images = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    images[1] = 255
    images[2, :, :16] = 255
    prompts = ["a photo of a bench", "a photo of two clocks", "a photo of a bench"]
    hps = build_reward({"name": "hpsv2", "options": {"python": sys.executable, "twin": str(tmp_path / "hpsv2")}})
    try:
        first, again = hps(images, prompts), hps(images, prompts)
        assert hps.handshake["ready"] and hps.handshake["version"] == "twin"
        assert torch.equal(first, again) and len(set(first.tolist())) == 3
    finally:
        hps.close()
    rows = [{"tag": "single_object", "include": [{"class": "bench", "count": 1}]},
            {"tag": "counting", "include": [{"class": "clock", "count": 2}]},
            {"tag": "single_object", "include": [{"class": "bench", "count": 1}]}]
    cells = json.loads((tmp_path / "geneval" / "twin.json").read_text())["params"]["cells"]
    images = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)  # 0: dark everywhere; 1, 2: bright in the tag's cell only
    for i, tag in ((1, "counting"), (2, "two_object")):
        r, c = divmod(cells[tag], 4)
        images[i, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = 255
    gen = build_reward({"name": "geneval", "options": {"python": sys.executable, "twin": str(tmp_path / "geneval")}})
    try:
        assert gen(images, prompts, rows).tolist() == [0.0, 1.0, 0.0]  # image 2 is bright in another tag's cell
        with pytest.raises(RewardError, match="not a GenEval row"):
            gen(images[:1], prompts[:1], [{}])
    finally:
        gen.close()
    with pytest.raises(RewardError, match="twin of 'hpsv2', not of hpsv3"):
        build_reward({"name": "hpsv3", "options": {"python": sys.executable, "twin": str(tmp_path / "hpsv2")}})


# -- the DAGs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STUDIES)
def test_dry_run_of_a_twin_study_builds_the_twins_first(name, tmp_path):
    results = str(tmp_path / "r")
    config = _config(name, results)
    out = _snakemake("-n", "--quiet", "rules", "--configfile", f"config/test/{name}.yaml", "--config", f"results={results}")
    counts = _job_counts(out.stdout + out.stderr)
    models = len(wf.runs(config)) + len(config["evaluation"]["base_models"])
    assert counts["twins"] == 1 and counts["train"] == len(wf.runs(config)) and counts["tables"] == 1
    assert counts["sample"] == counts["score"] == models  # one job per model: every test set, every metric
    assert counts.get("judge", 0) == len(wf.judge_summaries(config))
    assert counts.get("pickapic_pairs", 0) == (1 if "datasets" in config else 0)
    # the twins are built before anything that loads a model: the one job whose inputs nothing else makes
    target = f"{results}/samples/{config['evaluation']['test_sets'][0]}/base/manifest.jsonl"  # sampled with the others
    plan = _snakemake(target, "-n", "--quiet", "rules", "--configfile", f"config/test/{name}.yaml", "--config", f"results={results}")
    assert _job_counts(plan.stdout + plan.stderr).get("twins") == 1


def test_a_config_without_twins_has_no_twin_rules():
    out = _snakemake("-n", "--quiet", "rules", "--configfile", str(PAPER / "sd-turbo.yaml"))
    counts = _job_counts(out.stdout + out.stderr)
    assert "twins" not in counts and counts["pickapic_pairs"] == 1


# -- the studies, for real ---------------------------------------------------------------------------------


def _numeric(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _check_tables(config: dict) -> dict[str, pd.DataFrame]:
    """Every configured table's files exist, every configured row is there, and every cell of a
    model that ran (all of them here) is a finite number."""
    out = Path(wf.results_dir(config)) / "tables"
    frames = {}
    for name, spec in config["tables"].items():
        for ext in ("csv", "md", "tex", "sources.csv"):
            assert (out / f"{name}.{ext}").is_file(), f"{name}.{ext}"
        frame = pd.read_csv(out / f"{name}.csv", keep_default_na=False, na_values=[""])
        sources = pd.read_csv(out / f"{name}.sources.csv", keep_default_na=False, na_values=[""])
        labels = {r: (config["evaluation"]["base_models"].get(r) or {}).get("label") or
                  wf._named_runs(config).get(r, ({}, {}))[0].get("label") or r for r in wf.table_rows(config, name)}
        if spec["builder"] in ("main", "reference", "ablation", "preference"):  # one row per configured row
            # (printed with the paper's label where it has one); an ablation table also shows the
            # paper's own rows that no run of ours stands for (its base), with the paper's value only
            ours = sources.groupby("row")["value"].apply(lambda v: v.notna().any() and (v.astype(str) != "–").any())
            extra = [r for r in frame.iloc[:, 0] if not ours.get(r, False)]
            assert len(frame) - len(extra) == len(labels), (name, list(frame.iloc[:, 0]), labels)
            assert not extra or spec["builder"] == "ablation", (name, extra)
            assert sources[sources["row"].isin(extra)]["paper"].notna().all(), (name, extra)
            sources = sources[~sources["row"].isin(extra)]
        else:  # geneval, timing: one column per configured row
            assert len([c for c in frame.columns[1:] if not c.endswith("(paper)")]) == len(labels), (name, list(frame.columns))
        # a cell read from a results file is a number; a property of a method (Steps, Reward grad,
        # cited from METHOD.md) is text, but never empty
        empty = [(r["row"], r["column"]) for _, r in sources.iterrows() if pd.isna(r["value"]) or pd.isna(r["source"])]
        assert not empty, f"{name}: empty cells: {empty}"
        # a step another method's update has and this one's lacks (DrPO's drift for DRaFT) is "–", and says so
        measured = sources[~sources["source"].astype(str).str.startswith("METHOD.md")
                           & ~sources["source"].astype(str).str.endswith("not a step of this method's update")]
        bad = [(r["row"], r["column"], r["value"]) for _, r in measured.iterrows() if not _numeric(r["raw"])]
        assert not bad, f"{name}: cells without a number: {bad}"
        assert len(measured), f"{name}: no measured cell"
        frames[name] = frame
    return frames


# Each study runs as a user runs it on a workstation, with DRPO_PRELOAD=1 (one warm interpreter for
# the jobs): about 4.5 min (SD-Turbo, 142 jobs) and 1.5 min (SDXL-Turbo, 63 jobs) on 2 cores.
@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_twin_study_runs_end_to_end(name, tmp_path):
    results = str(tmp_path / "results")
    config = _config(name, results)
    t0 = time.time()
    env = {**os.environ, "DRPO_PRELOAD": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile",
                           f"config/test/{name}.yaml", "--config", f"results={results}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    print(f"twin study {name}: {time.time() - t0:.0f} s")
    frames = _check_tables(config)
    assert set(frames) == set(config["tables"])
    assert (Path(results) / "report.html").is_file()
    built = json.loads((Path(results) / "twins" / "twins.json").read_text())["twins"]
    assert set(built) == set(twins.referenced(config))
    # the jobs ran in the warm interpreter (its log names no job that had to run on its own)
    assert "runs on its own" not in (Path(results) / "logs" / "preload.log").read_text()
    # a trained run is not its base: DrPO's LoRA reached its samples (they moved in the reward's eyes)
    scores = Path(results) / "scores" / config["evaluation"]["test_sets"][0]
    drpo, base = (json.loads((scores / m / "pickscore.json").read_text())["mean"] for m in ("drpo-s42", "base"))
    assert abs(drpo - base) > 1e-5, (drpo, base)  # one update on random weights: small, far above round-off
    if name == "sd-turbo":  # FID against the base: the base has none, DrPO's is positive
        assert not (scores / "base" / "fid.json").exists()
        assert json.loads((scores / "drpo-s42" / "fid.json").read_text())["fid"] > 1e-4
    if name == "sdxl-turbo":  # the Qwen3-VL twin's verdicts reached the preference table, one per pair and test set
        judged = pd.read_csv(Path(results) / "tables" / "qwen3vl_preference.csv")
        assert len(judged) == len(config["evaluation"]["judge"]["against"])
    _check_mlflow(config, results)
    if name == "sdxl-turbo":  # Snakemake's own report: every table, figure, grid and report.html, by category
        report = Path(results) / "snakemake-report.html"
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--report", str(report), "--configfile",
                               f"config/test/{name}.yaml", "--config", f"results={results}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        page = report.read_text()
        for category in ("Tables", "Figures", "Samples", "Report"):
            assert f'"{category}"' in page or f"{category}" in page, category
        assert "report.html" in page and "training_curves.png" in page


def _check_mlflow(config: dict, results: str) -> None:
    """The store answers "DrPO vs each baseline on each test set": every evaluated model's held-out
    numbers on one run (a trained run's on its training run, whose final LoRA is a registered model)."""
    from mlflow.tracking import MlflowClient

    from drpo.tracking import resolve_uri

    client = MlflowClient(resolve_uri(config["tracking"]["uri"]))
    exp = client.get_experiment_by_name(config["experiment"])
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_model = {}
    for run in runs:
        for key in ("drpo.model", "output_dir"):
            if key in run.data.tags and any(k.startswith("eval/") for k in run.data.metrics):
                by_model[Path(run.data.tags[key]).name] = run
    assert set(by_model) == set(wf.eval_models(config)), sorted(by_model)
    drpo = by_model["drpo-s42"]
    assert drpo.data.tags["method"] == "drpo" and drpo.data.params["drpo.candidates"]
    assert not [k for k in drpo.data.params if k.startswith(("dpo.", "grpo.", "pso.", "draft.", "vggflow."))]
    for ts in config["evaluation"]["test_sets"]:
        assert f"eval/{ts}/pickscore" in drpo.data.metrics and f"eval/{ts}/pickscore/ci_low" in drpo.data.metrics
    assert client.search_model_versions(f"name='{config['experiment']}-drpo-s42'")
    parent = [r for r in runs if r.data.tags.get("drpo.kind") == "workflow"]
    artifacts = {f.path for r in parent for f in client.list_artifacts(r.info.run_id)}
    assert {"results.csv", "report.html", "tables"} <= artifacts, artifacts
