"""Training on tiny twins: every method updates its LoRA; 2 processes equal 1 process with twice
the accumulation; a run killed after a checkpoint resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import link

from drpo.rewards import RewardError
from drpo.train.config import train_config_from_dict
from drpo.train.trainer import Trainer, read_final_lora

PROMPTS = ["a photo of a red circle", "a photo of a blue square", "a photo of two triangles", "a photo of a cat", "a photo of a dog"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_sd_turbo, tiny_clip):
    root = tmp_path_factory.mktemp("train")
    link(tiny_sd_turbo, root / "model")
    link(tiny_clip, root / "clip")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


def config(assets: Path, out: Path, **overrides) -> dict:
    data = {
        "method": "drpo", "steps": 2, "grad_accum": 2, "prompts_per_micro_step": 1, "output_dir": str(out),
        "model": {"path": str(assets / "model")}, "prompts": {"path": str(assets / "prompts.txt")},
        "reward": "brightness", "features": {"name": "latent"}, "lora": {"rank": 4, "alpha": 4},
        "optim": {"lr": 1e-2}, "checkpoint": {"every": 0}, "tracking": {"enabled": False, "sample_grid_every": 0},
        "drpo": {"candidates": 6, "positives": 2, "negatives": 2},
    }
    for key, value in overrides.items():
        node = data
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return data


PIXEL_REWARD = {"name": "pickscore", "options": {}}


@pytest.mark.parametrize(
    "method, extra",
    [
        ("drpo", {}),
        ("drpo", {"prompts_per_micro_step": 2}),  # two prompts batched along B
        ("dpo", {"dpo__candidates": 6, "dpo__chosen": 2, "dpo__rejected": 2}),
        ("grpo", {"grpo__candidates": 6, "grpo__anchors": 2}),
        ("pso", {"pso__candidates": 6}),
        ("draft", {"draft__candidates": 2, "draft__chunk": 1, "reward": "pickscore"}),
        ("vggflow", {"vggflow__candidates": 2, "reward": "pickscore"}),
    ],
)
def test_every_method_updates_its_lora_and_logs_its_terms(assets, tmp_path, method, extra):
    extra = dict(extra)
    if extra.get("reward") == "pickscore":
        extra["reward"] = {"name": "pickscore", "options": {"path": str(assets / "clip")}}
    cfg = train_config_from_dict(config(assets, tmp_path / method, method=method, **extra))
    trainer = Trainer(cfg, progress=False)
    metrics = trainer.train_step(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    assert metrics["grad_norm"] > 0 and "time/update" in metrics and "lr" in metrics
    if method == "drpo":
        for key in ("loss/pref", "loss/ref", "dist/d_pos", "dist/d_neg", "dist/d_ref", "reward/gap", "time/drift", "time/features", "time/reward"):
            assert key in metrics, key
        assert any(k.startswith("drift/") and "drift_rms_0.02" in k for k in metrics)
    final = trainer.train()
    lora = read_final_lora(final)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B moved away from 0


def test_binary_rewards_use_rollout_rounds(assets, tmp_path):
    # the binary path counts a score > 0.5 as a pass (brightness is about 0.5 on random weights)
    cfg = train_config_from_dict(config(assets, tmp_path / "bin", reward={"name": "brightness"}, drpo__binary_reward=True, drpo__rollout_rounds=2))
    trainer = Trainer(cfg, progress=False)
    metrics = trainer.train_step(0)
    assert metrics["rollout/candidates"] >= 6 and "rollout/skipped" in metrics


def _lora_equal(a: dict, b: dict, atol: float) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol) for k in a)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_two_processes_equal_one_process_with_twice_the_accumulation(assets, tmp_path):
    one = tmp_path / "one.yaml"
    two = tmp_path / "two.yaml"
    one.write_text(yaml.safe_dump(config(assets, tmp_path / "one", grad_accum=2)))
    two.write_text(yaml.safe_dump(config(assets, tmp_path / "two", grad_accum=1)))
    subprocess.run([sys.executable, "-m", "drpo.cli", "train", "--config", str(one), "--no-progress"], check=True, env=_env(), timeout=300)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "-m", "drpo.cli"]
    proc = subprocess.run([*launch, "train", "--config", str(two), "--no-progress"], env=_env(), timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_final_lora(tmp_path / "one" / "final"), read_final_lora(tmp_path / "two" / "final")
    assert _lora_equal(a, b, atol=1e-5)
    assert not _lora_equal(a, {k: torch.zeros_like(v) for k, v in a.items()}, atol=1e-6)


def test_a_killed_run_resumes_exactly(assets, tmp_path):
    data = config(assets, tmp_path / "killed", steps=8, checkpoint__every=2, checkpoint__total_limit=2, method="grpo", grpo__candidates=6, grpo__anchors=2)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "drpo.cli", "train", "--config", str(cfg), "--no-progress", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (tmp_path / "killed" / "checkpoint-2" / "training_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final").exists()  # really interrupted
    (tmp_path / "killed" / "metrics.jsonl").unlink()  # as Snakemake does to a rerun job's outputs
    subprocess.run([*cmd, "--resume"], env=_env(), check=True, timeout=300)
    straight = tmp_path / "straight.yaml"
    straight.write_text(yaml.safe_dump({**data, "output_dir": str(tmp_path / "straight")}))
    subprocess.run([sys.executable, "-m", "drpo.cli", "train", "--config", str(straight), "--no-progress", "--threads", "1"],
                   env=_env(), check=True, timeout=300)
    resumed, uninterrupted = read_final_lora(tmp_path / "killed" / "final"), read_final_lora(tmp_path / "straight" / "final")
    assert _lora_equal(resumed, uninterrupted, atol=0)
    kept = sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*"))
    assert len(kept) <= 2  # total_limit
    # MLflow is off here, yet both runs logged every update locally; the resumed run's log starts
    # from its checkpoint's copy, so it reads as one run
    from drpo.eval.tables import read_metrics_log

    resumed_log = read_metrics_log(tmp_path / "killed" / "metrics.jsonl")
    straight_log = read_metrics_log(tmp_path / "straight" / "metrics.jsonl")
    assert list(resumed_log["step"]) == list(straight_log["step"]) == list(range(1, 9))
    assert resumed_log["loss"].tolist() == straight_log["loss"].tolist()


def test_a_fresh_run_in_a_used_folder_starts_its_own_metrics_log(assets, tmp_path):
    from drpo.tracking import training_tracker

    cfg = train_config_from_dict(config(assets, tmp_path / "run", steps=2, method="pso", pso__candidates=6))
    for _ in range(2):
        Trainer(cfg, tracker=training_tracker(cfg), progress=False).train()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_resume_ignores_checkpoints_of_another_config(assets, tmp_path, caplog):
    first = train_config_from_dict(config(assets, tmp_path / "run", steps=2, checkpoint__every=1, method="pso", pso__candidates=6))
    Trainer(first, progress=False).train()
    changed = train_config_from_dict(config(assets, tmp_path / "run", steps=2, checkpoint__every=1, method="pso", pso__candidates=6, optim__lr=5e-3))
    resumed = Trainer(changed, resume=True, progress=False)
    assert resumed.start_step == 0 and "another config" in caplog.text  # a warning (drpo: warning: on stderr)
    extended = train_config_from_dict(config(assets, tmp_path / "run", steps=3, checkpoint__every=1, method="pso", pso__candidates=6))
    assert Trainer(extended, resume=True, progress=False).start_step == 1  # more steps, same updates: resumes


def test_a_fresh_run_that_fails_erases_nothing_of_the_run_before_it(assets, tmp_path, caplog):
    """Re-running a finished folder with a config whose reward crashes used to truncate the old
    metrics log and rewrite its config.json; --resume with another config used to overwrite its
    checkpoints. Both now move the earlier run to replaced/<time>/ before anything is written."""
    from drpo.tracking import training_tracker

    out = tmp_path / "run"
    first = train_config_from_dict(config(assets, out, steps=2, checkpoint__every=1, method="pso", pso__candidates=6))
    Trainer(first, tracker=training_tracker(first), progress=False).train()
    before = {name: (out / name).read_bytes() for name in ("config.json", "metrics.jsonl", "final/training_state.json",
                                                          "checkpoint-1/training_state.json")}
    crashing = config(assets, out, steps=2, method="pso", pso__candidates=6, optim__lr=5e-3,
                      reward={"name": "command", "options": {"command": [str(tmp_path / "no-such-scorer")], "retries": 0}})
    cfg = train_config_from_dict(crashing)
    with pytest.raises(RewardError):
        Trainer(cfg, resume=True, tracker=training_tracker(cfg), progress=False).train()
    (kept,) = (out / "replaced").iterdir()
    assert {name: (kept / name).read_bytes() for name in before} == before
    assert "another config" in caplog.text
