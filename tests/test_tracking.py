"""MLflow tracking against real stores: SQLite in tmp, concurrent jobs, a dead URI, a real server."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import mlflow_server

from drpo import tracking
from drpo.train.config import train_config_from_dict

ENV_KEYS = (tracking.PARENT_ENV, tracking.RUN_ENV, tracking.URI_ENV, tracking.EXPERIMENT_ENV, "RANK",
            *tracking.HTTP_ENV_DEFAULTS)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metric_names_and_truncation():
    assert tracking.sanitize_metric_name("reward/mean") == "reward/mean"
    assert tracking.sanitize_metric_name("loss[pos]@k=3") == "loss_pos__k_3"
    assert tracking.sanitize_metric_name("/a//../b/") == "a/_/b"
    long = tracking.truncate("x" * 7000, 6000)
    assert len(long) == 6000 and long.endswith("[truncated]")
    assert tracking.truncate([1, 2], 6000) == "[1, 2]"
    assert tracking.resolve_uri(None) == f"sqlite:///{Path.cwd()}/results/mlflow.db"
    assert tracking.resolve_uri("http://h:5000") == "http://h:5000"


def test_training_run_params_tags_metrics_artifacts(tmp_path):
    cfg = train_config_from_dict({
        "output_dir": "runs/a", "seed": 7, "method": "dpo",
        "lora": {"targets": [f"module_{i:03d}_" + "x" * 60 for i in range(100)]},  # > 6000 chars as JSON
        "tracking": {"experiment": "exp-a", "tags": {"label": "DPO 1step"}},
    })
    tr = tracking.training_tracker(cfg)
    assert tr.enabled, "the default relative SQLite URI should work"
    tr.log_metrics({"loss": 0.5, "reward/mean": 1.25, "odd name!": 2, "note": "text"}, step=3)
    tr.log_metrics({"loss": 0.25}, step=4)
    (tmp_path / "grid.png").write_bytes(b"png")
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "w.bin").write_bytes(b"w")
    tr.log_artifact(tmp_path / "grid.png", "samples")
    tr.log_artifact(tmp_path / "final", "final")
    tr.close()
    tr.close()  # idempotent

    assert (tmp_path / "results" / "mlflow.db").exists()
    assert not (tmp_path / "mlruns").exists(), "artifacts must live next to the database, not in ./mlruns"
    c = client(tr.uri)
    run = c.get_run(tr.run_id)
    assert run.info.status == "FINISHED"
    experiment = c.get_experiment(run.info.experiment_id)
    assert experiment.name == "exp-a"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens the training runs
    assert run.data.metrics == {"loss": 0.25, "reward/mean": 1.25, "odd name_": 2.0}
    assert [(m.step, m.value) for m in c.get_metric_history(tr.run_id, "loss")] == [(3, 0.5), (4, 0.25)]
    p = run.data.params
    assert p["method"] == "dpo" and p["seed"] == "7" and p["dpo.candidates"] == "24" and p["optim.lr"] == "0.0001"
    assert not [k for k in p if k.split(".")[0] in ("drpo", "grpo", "pso", "draft", "vggflow", "offline")]  # only DPO's own
    assert len(p["lora.targets"]) == 6000 and p["lora.targets"].endswith("[truncated]")
    t = run.data.tags
    assert (t["method"], t["model"], t["reward"], t["seed"], t["label"]) == ("dpo", "stabilityai/sd-turbo", "pickscore", "7", "DPO 1step")
    assert t["config_hash"] == __import__("drpo.config").config.config_hash(cfg)
    assert t["git_commit"] == "unknown" or len(t["git_commit"].split("+")[0]) == 40
    assert t["mlflow.runName"] == "a" and "mlflow.parentRunId" not in t
    assert {f.path for f in c.list_artifacts(tr.run_id, "samples")} == {"samples/grid.png"}
    assert {f.path for f in c.list_artifacts(tr.run_id, "final")} == {"final/w.bin"}
    lines = [json.loads(x) for x in (tmp_path / "runs" / "a" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 3 and lines[0]["odd name!"] == 2.0 and "note" not in lines[0]
    assert lines[1]["loss"] == 0.25


def test_training_under_parent_and_inside_job_run(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/wf/mlflow.db"
    parent = tracking.start_workflow_run(uri, "wf", "cfghash", run_name="workflow-cfghash")
    assert parent
    cfg = train_config_from_dict({"output_dir": "runs/b", "tracking": {"uri": uri, "experiment": "wf"}})
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    monkeypatch.setenv(tracking.URI_ENV, uri)
    child = tracking.training_tracker(cfg)
    child.close()
    c = client(uri)
    assert c.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent

    # `drpo job` made the run: training logs into it and leaves ending it to the job
    with tracking.job_run(uri, "wf", parent, "train", {"run": "b"}, "cfghash") as job:
        monkeypatch.setenv(tracking.RUN_ENV, job.run_id)
        inner = tracking.training_tracker(cfg)
        assert inner.run_id == job.run_id
        inner.log_metrics({"loss": 1.0}, step=1)
        inner.close()
        assert c.get_run(job.run_id).info.status == "RUNNING"
    run = c.get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["loss"] == 1.0
    assert run.data.params["method"] == "drpo" and run.data.tags["rule"] == "train"
    assert run.data.tags["wildcard.run"] == "b" and json.loads(run.data.tags["wildcards"]) == {"run": "b"}
    assert run.info.run_name == "b"  # the run's own name in the UI, not the job's "train[run=b]"
    with pytest.raises(RuntimeError):
        with tracking.job_run(uri, "wf", parent, "evaluate", {}, "cfghash") as failing:
            raise RuntimeError("job failed")
    assert c.get_run(failing.run_id).info.status == "FAILED"
    tracking.end_workflow_run(parent, "FINISHED")
    assert c.get_run(parent).info.status == "FINISHED"
    tracking.end_workflow_run("", "FINISHED")  # no parent (MLflow was down at onstart): nothing to do


WORKER = """
import json, sys, time
from pathlib import Path
import mlflow  # the slow import happens before the start signal
from drpo import tracking
tmp, i, fresh_uri, parent = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
(tmp / f"ready{i}").touch()
while not (tmp / "go").exists():
    time.sleep(0.005)
eid = tracking.ensure_experiment(fresh_uri, "fresh")
with tracking.job_run(fresh_uri, "fresh", parent, "train", {"run": f"r{i}"}, "h") as t:
    t.log_metrics({"job/i": i}, step=0)
print(json.dumps({"eid": eid, "run_id": t.run_id, "enabled": t.enabled}))
"""


def test_concurrent_jobs_one_experiment_four_children(tmp_path):
    """4 processes on a store that does not exist yet: schema, experiment and runs created at once."""
    fresh_uri = f"sqlite:///{tmp_path}/race/mlflow.db"
    parent = "0123456789abcdef0123456789abcdef"  # ids come from onstart; the tag is what links them
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path), str(i), fresh_uri, parent],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        for i in range(4)
    ]
    try:
        deadline = time.time() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
            assert time.time() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs if p.poll() is not None]
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "warning" not in err, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert all(r["enabled"] for r in results)
    assert len({r["eid"] for r in results}) == 1
    c = client(fresh_uri)
    exps = [e for e in c.search_experiments() if e.name == "fresh"]
    assert len(exps) == 1 and exps[0].experiment_id == results[0]["eid"]
    runs = c.search_runs([exps[0].experiment_id])
    assert len(runs) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent}
    assert sorted(r.data.tags["wildcard.run"] for r in runs) == ["r0", "r1", "r2", "r3"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_unreachable_server_warns_once_and_keeps_metrics(tmp_path, caplog):
    uri = f"http://127.0.0.1:{free_port()}"  # bound then released: nothing listens there
    cfg = train_config_from_dict({"output_dir": "runs/c", "tracking": {"uri": uri}})
    t0 = time.time()
    tr = tracking.training_tracker(cfg)
    for step in range(1, 6):
        tr.log_metrics({"loss": 1.0 / step}, step=step)
    (tmp_path / "g.png").write_bytes(b"x")
    tr.log_artifact(tmp_path / "g.png", "samples")
    tr.close("FINISHED")
    assert time.time() - t0 < 5
    assert not tr.enabled
    err = "\n".join(caplog.messages)  # a warning: `drpo: warning: MLflow at ...` on the command's stderr
    assert err.count("unreachable") == 1, err
    assert f"MLflow at {uri} unreachable" in err and "runs/c/metrics.jsonl" in err
    rows = [json.loads(x) for x in (tmp_path / "runs" / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["loss"] == pytest.approx(0.2)
    assert tracking.start_workflow_run(uri, "wf", "h") is None  # onstart gets no parent and goes on
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"  # short HTTP retries were configured


def test_other_ranks_do_not_track(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    cfg = train_config_from_dict({"output_dir": "runs/d", "tracking": {"uri": f"sqlite:///{tmp_path}/x.db"}})
    tr = tracking.training_tracker(cfg)
    tr.log_metrics({"loss": 1.0}, step=1)
    tr.close()
    assert tr.run_id is None and not (tmp_path / "x.db").exists() and not (tmp_path / "runs").exists()


def test_real_mlflow_server_over_http(tmp_path):
    if not (Path(sys.executable).parent / "mlflow").exists():
        pytest.skip("no mlflow command beside this interpreter")
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path, "--artifacts-destination", str(tmp_path / "art")) as uri:
        cfg = train_config_from_dict({"output_dir": "runs/e", "tracking": {"uri": uri, "experiment": "remote"}})
        tr = tracking.training_tracker(cfg)
        assert tr.enabled
        tr.log_metrics({"loss": 0.75, "reward/mean": 2.0}, step=1)
        (tmp_path / "grid.png").write_bytes(b"png")
        tr.log_artifact(tmp_path / "grid.png", "samples")
        tr.close()
        c = client(uri)
        run = c.get_run(tr.run_id)
        assert run.info.status == "FINISHED"
        assert {k: v for k, v in run.data.metrics.items() if not k.startswith("system/")} == {"loss": 0.75, "reward/mean": 2.0}
        assert run.data.params["method"] == "drpo" and run.data.tags["seed"] == "42"
        assert [f.path for f in c.list_artifacts(tr.run_id, "samples")] == ["samples/grid.png"]
        assert list((tmp_path / "art").rglob("grid.png")), "the server stores proxied artifacts"


def test_a_trained_lora_is_a_registered_mlflow_diffusers_model_and_grids_are_images(tmp_path, monkeypatch, capsys):
    """`drpo train` with tracking: sample grids through log_image with their step, and the final LoRA
    as an `mlflow.diffusers` model, registered, that `mlflow.pyfunc.load_model` turns prompts into
    PNGs with — carrying exactly the trained LoRA weights at the trained scale."""
    import io

    import mlflow
    import torch
    import yaml
    from peft.utils import get_peft_model_state_dict
    from PIL import Image

    from drpo.cli import main
    from drpo.models.tiny import build_tiny_sd_turbo
    from drpo.train.trainer import read_final_lora

    monkeypatch.chdir(tmp_path)
    build_tiny_sd_turbo(tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "method": "drpo", "steps": 2, "grad_accum": 1, "output_dir": "runs/lora", "model": {"path": "model"},
        "prompts": {"path": "prompts.txt"}, "reward": "brightness", "features": {"name": "latent"},
        "lora": {"rank": 4, "alpha": 8}, "optim": {"lr": 1e-2}, "checkpoint": {"every": 0},
        "drpo": {"candidates": 4, "positives": 1, "negatives": 1},
        "tracking": {"uri": uri, "experiment": "exp", "sample_grid_every": 1, "sample_prompts": 2, "system_metrics": 0.2},
    }))
    assert main(["train", "--config", "run.yaml", "--no-progress"]) == 0
    # without the bar (a workflow job's log) a line per ~5 % of the run, with its ETA
    # progress is logged: `drpo: ` lines on stderr, nothing on stdout
    out, err = capsys.readouterr()
    assert "drpo updates" not in out
    lines = [line.removeprefix("drpo: ") for line in err.splitlines() if line.startswith("drpo: drpo updates")]
    assert [line.split(" loss ")[0] for line in lines] == ["drpo updates 1/2 (50%)", "drpo updates 2/2 (100%)"]
    assert all(re.search(r"reward [-\d.e]+ \| [\d.e]+ s/update, ETA \d+s$", line) for line in lines), lines
    c = client(uri)
    (run,) = c.search_runs([c.get_experiment_by_name("exp").experiment_id])
    assert run.info.status == "FINISHED"
    assert not [k for k in run.data.params if k.startswith(("dpo.", "grpo.", "pso.", "draft.", "vggflow."))]
    assert "reward/brightness/mean" in run.data.metrics and "reward/mean" not in run.data.metrics
    assert [k for k in run.data.metrics if k.startswith("system/")], sorted(run.data.metrics)  # system metrics on
    (prompts,) = run.inputs.dataset_inputs  # the prompt set, as an MLflow dataset input
    assert prompts.dataset.name == "prompts" and prompts.dataset.source.endswith("prompts.txt") or "prompts.txt" in prompts.dataset.source
    assert json.loads(prompts.dataset.profile)["num_rows"] == 2
    images = sorted(f.path for f in c.list_artifacts(run.info.run_id, "images") if f.path.endswith(".png"))
    assert [p.split("+")[:3] for p in images] == [["images/samples", "step", "1"], ["images/samples", "step", "2"]], images

    (version,) = c.search_model_versions("name='exp-lora'")
    assert version.run_id == run.info.run_id
    model = mlflow.pyfunc.load_model("models:/exp-lora/1")
    torch.manual_seed(0)
    (png,) = model.predict({"prompt": ["a red circle"]})  # the signature's defaults: 1 step, no guidance, 32 px
    assert Image.open(io.BytesIO(png)).size == (32, 32)
    pipe = model.get_raw_model()  # the diffusers pipeline with the adapter loaded
    (adapter,) = pipe.unet.peft_config.values()
    assert (adapter.r, adapter.lora_alpha) == (4, 8)
    loaded = {k.replace(".default_0", ""): v for k, v in get_peft_model_state_dict(pipe.unet, adapter_name=next(iter(pipe.unet.peft_config))).items()}
    trained = {k.removeprefix("base_model.model."): v for k, v in read_final_lora("runs/lora/final").items()}
    assert loaded.keys() == trained.keys() and all(torch.equal(loaded[k], trained[k]) for k in trained)


def test_the_studys_held_out_numbers_land_on_each_models_run(tmp_path, monkeypatch):
    """drpo collect logs every model's numbers (means, intervals, GenEval overall and tags, judge
    shares, FID) on the model's run: a trained run's on its training run, a base model's on a run of
    its own, reused by the next workflow run; results.csv goes to the workflow's parent run."""
    from drpo.cli import main
    from drpo.eval.study_log import model_metrics

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train = tracking.training_tracker(train_config_from_dict(
        {"output_dir": "results/runs/drpo-s42", "tracking": {"uri": uri, "experiment": "study"}}))
    train.close()
    parent = tracking.start_workflow_run(uri, "study", "h")
    scores = tmp_path / "results" / "scores" / "test"
    for model, mean, overall in (("base", 0.4, 0.5), ("drpo-s42", 0.6, 0.75)):
        (scores / model).mkdir(parents=True)
        (scores / model / "checker.json").write_text(json.dumps({
            "mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1,
            "geneval": {"overall": overall, "tags": {"counting": {"accuracy": overall - 0.25}, "colors": {"accuracy": 1.0}},
                        "ci95": {"overall": [overall - 0.2, overall + 0.1], "counting": [0.25, 0.75], "colors": [1.0, 1.0]}}}))
    (scores / "drpo-s42" / "fid.json").write_text(json.dumps({"mean": 12.5, "fid": 12.5}))
    judge = tmp_path / "results" / "judge" / "j.json"
    judge.parent.mkdir(parents=True)
    judge.write_text(json.dumps({"n": 10, "valid": 10, "wins": 7, "losses": 3, "ties": 0, "invalid": 0,
                                 "preference_share": 0.7, "preference_share_ci95": [0.6, 0.8]}))
    spec = {"results": "results", "test_sets": ["test"], "metrics": ["checker", "fid"],
            "models": {"base": {"kind": "base", "label": "Base"}, "drpo-s42": {"kind": "run", "label": "DrPO"}},
            "judged": [{"test_set": "test", "judged": "drpo-s42", "opponent": "base", "path": str(judge)}],
            "tables": {"main": {"builder": "main", "metrics": ["checker"], "rows": ["base", "drpo-s42"]}}}
    assert model_metrics(spec, "drpo-s42") == {
        "eval/test/checker": 0.6, "eval/test/checker/ci_low": pytest.approx(0.5), "eval/test/checker/ci_high": 0.7,
        "eval/test/checker/geneval_overall": 0.75, "eval/test/checker/geneval_overall/ci_low": pytest.approx(0.55),
        "eval/test/checker/geneval_overall/ci_high": 0.85, "eval/test/checker/geneval/counting": 0.5,
        "eval/test/checker/geneval/counting/ci_low": 0.25, "eval/test/checker/geneval/counting/ci_high": 0.75,
        "eval/test/checker/geneval/colors": 1.0, "eval/test/checker/geneval/colors/ci_low": 1.0,
        "eval/test/checker/geneval/colors/ci_high": 1.0, "eval/test/fid": 12.5,
        "judge/test/vs_base": 0.7, "judge/test/vs_base/ci_low": 0.6, "judge/test/vs_base/ci_high": 0.8}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setenv("DRPO_MLFLOW_PARENT_RUN_ID", parent)
    for _ in range(2):  # a second workflow run reuses the base model's run
        assert main(["collect", "--spec", "spec.json", "--out", "results/results.csv", "--mlflow-uri", uri,
                     "--experiment", "study"]) == 0
    c = client(uri)
    runs = c.search_runs([c.get_experiment_by_name("study").experiment_id])
    trained = c.get_run(train.run_id)
    assert trained.data.metrics["eval/test/checker/geneval_overall"] == 0.75 and trained.data.tags["label"] == "DrPO"
    (base,) = [r for r in runs if r.data.tags.get("drpo.kind") == "model"]
    assert base.info.run_name == "base" and base.data.metrics["eval/test/checker"] == 0.4
    assert "judge/test/vs_base" not in base.data.metrics
    assert {f.path for f in c.list_artifacts(parent)} == {"results.csv"}


def test_progress_durations_and_eta():
    from drpo.progress import duration, rate_and_eta

    assert [duration(s) for s in (0, 12.4, 245, 3723)] == ["0s", "12s", "4m05s", "1h02m03s"]
    assert rate_and_eta(40, 200, 100.0) == "2.5 s/step, ETA 6m40s"


def test_a_moved_results_folder_keeps_its_artifacts(tmp_path, monkeypatch):
    """Artifacts live beside the SQLite database; after the folder moves (another disk, a rename)
    every artifact location follows it, so files, images and registered models open again."""
    old = tmp_path / "old" / "results"
    uri = f"sqlite:///{old}/mlflow.db"
    cfg = train_config_from_dict({"output_dir": str(tmp_path / "run"), "tracking": {"uri": uri, "experiment": "moves", "system_metrics": 0}})
    tr = tracking.training_tracker(cfg)
    (tmp_path / "note.txt").write_text("kept")
    tr.log_artifact(tmp_path / "note.txt", "notes")
    tr.close()
    c = client(uri)
    c.create_registered_model("moved-model")
    c.create_model_version("moved-model", f"{c.get_run(tr.run_id).info.artifact_uri}/notes", run_id=tr.run_id)
    new = tmp_path / "elsewhere" / "results"
    new.parent.mkdir()
    old.rename(new)
    moved = f"sqlite:///{new}/mlflow.db"
    c = tracking._client(moved)  # how every drpo command opens a store
    run = c.get_run(tr.run_id)
    assert run.info.artifact_uri.startswith((new / "mlartifacts").resolve().as_uri())
    assert Path(c.download_artifacts(tr.run_id, "notes/note.txt", str(tmp_path))).read_text() == "kept"
    assert c.get_model_version("moved-model", "1").source.startswith((new / "mlartifacts").resolve().as_uri())
    assert tracking.follow_moved_store(new / "mlflow.db") == 0  # once is enough
