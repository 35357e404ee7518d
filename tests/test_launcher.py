"""Per-run launchers (issue 18, point 5): every paper run trains with the authors' prompts per
optimizer update (processes x grad_accum x prompts per micro-step), and the train rule launches
and asks for the GPUs of the run's own launcher."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drpo import workflow as wf
from drpo.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "config" / "paper"

# run -> (processes, grad_accum, prompts per update), the authors' recipes
RECIPES = {
    "sd-turbo": {
        "drpo": (4, 8, 32), "draft": (4, 8, 32), "dpo": (4, 8, 32), "pso": (4, 8, 32), "vggflow": (4, 8, 32),
        "grpo": (8, 4, 32),
    },
    "sdxl-turbo": {
        "drpo": (8, 8, 64), "drpo-teacher": (4, 8, 32), "draft": (4, 8, 32), "grpo": (4, 8, 32),
        "dpo": (4, 8, 32), "pso": (4, 8, 32), "vggflow": (4, 8, 32),
    },
}


def paper(name: str) -> dict:
    return wf.validate_config(yaml.safe_load((PAPER / f"{name}.yaml").read_text()), source=f"{name}.yaml")


def world() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_paper_runs_train_with_the_authors_prompts_per_update(name):
    config = paper(name)
    for run, (processes, grad_accum, prompts) in RECIPES[name].items():
        cfg = wf.train_config(config, f"{run}-s42")
        launch = wf.launcher(config, run)
        assert (launch["num_processes"], cfg["grad_accum"], cfg["prompts_per_micro_step"]) == (processes, grad_accum, 1), run
        assert launch["gpus"] == processes, run  # one GPU per process
        assert wf.prompts_per_update(config, run) == wf.prompts_per_update(config, f"{run}-s42") == prompts, run
    if name == "sd-turbo":
        # every other run and ablation point of the SD-Turbo study also updates on 32 prompts
        assert {wf.prompts_per_update(config, rid) for rid in wf.runs(config)} == {32}
        grpo = wf.train_config(config, "grpo-s42")
        assert (grpo["steps"], grpo["mixed_precision"], grpo["optim"]["lr"]) == (5000, "bf16", 1e-5)
    assert wf.launch_command(config, "drpo-s42") == (
        "accelerate launch --num_processes 4 -m drpo.cli" if name == "sd-turbo" else "accelerate launch --num_processes 8 -m drpo.cli")
    assert wf.launch_command(config, "grpo-s42") == (
        "accelerate launch --num_processes 8 -m drpo.cli" if name == "sd-turbo" else "accelerate launch --num_processes 4 -m drpo.cli")


def test_a_run_launcher_falls_back_key_by_key_and_ablation_points_inherit_it():
    config = wf.validate_config(world())
    assert wf.launcher(config) == wf.launcher(config, "drpo-s42") == {"num_processes": 1, "gpus": 0}
    assert wf.launch_command(config, "drpo-s42") == "drpo"
    raw = world()
    raw["training"]["launcher"] = {"num_processes": 2}
    raw["training"]["runs"]["drpo"]["launcher"] = {"num_processes": 3}
    raw["training"]["runs"]["dpo"]["launcher"] = {"gpus": 4}
    raw["training"]["ablations"] = {"kernel": {"run": "drpo", "key": "drpo.kernel", "values": ["rbf"]}}
    config = wf.validate_config(raw)
    assert wf.launcher(config) == {"num_processes": 2, "gpus": 0}
    assert wf.launcher(config, "drpo-s42") == wf.launcher(config, "drpo") == {"num_processes": 3, "gpus": 0}
    assert wf.launcher(config, "drpo-kernel-rbf-s42") == wf.launcher(config, "drpo-kernel-rbf") == {"num_processes": 3, "gpus": 0}
    assert wf.launcher(config, "dpo-s42") == {"num_processes": 2, "gpus": 4}
    assert wf.launch_command(config, "drpo-kernel-rbf-s42") == "accelerate launch --num_processes 3 -m drpo.cli"
    assert wf.uses_gpu(config, "dpo-s42") and not wf.uses_gpu(config, "drpo-s42")
    cfg = wf.train_config(config, "drpo-kernel-rbf-s42")
    assert wf.prompts_per_update(config, "drpo-kernel-rbf-s42") == 3 * cfg["grad_accum"] * cfg["prompts_per_micro_step"]
    with pytest.raises(ConfigError, match=r"'nope' is neither a run id nor a run name"):
        wf.launcher(config, "nope")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["training"]["runs"]["drpo"].update(launcher={"num_processes": 0}),
         r"training\.runs\.drpo\.launcher\.num_processes: 0 is less than the minimum of 1"),
        (lambda c: c["training"]["runs"]["drpo"].update(launcher={"gpu": 1}),
         r"unknown key training\.runs\.drpo\.launcher\.gpu \(allowed: gpus, num_processes\)"),
        (lambda c: c["training"]["runs"]["drpo"].update(launcher={"num_processes": 8, "gpus": 4}),
         r"training\.runs\.drpo\.launcher\.num_processes: 8 processes on 4 GPUs"),
        (lambda c: c["training"].update(launcher={"num_processes": 4, "gpus": 2}),
         r"training\.launcher\.num_processes: 4 processes on 2 GPUs"),
        # a run's gpus below the config's processes: the run's launcher is named
        (lambda c: (c["training"].update(launcher={"num_processes": 4, "gpus": 4}),
                    c["training"]["runs"]["dpo"].update(launcher={"gpus": 2})),
         r"training\.runs\.dpo\.launcher\.num_processes: 4 processes on 2 GPUs"),
    ],
)
def test_bad_launchers_name_the_key(edit, message):
    config = world()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        wf.validate_config(config, source="config.yaml")


def _train_jobs(configfile: Path, results: str, run_ids: list[str]) -> dict[str, dict]:
    """run id -> the resources and shell command `snakemake -n -p` plans for its train job."""
    targets = [f"{results}/runs/{rid}/final/training_state.json" for rid in run_ids]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", *targets, "-n", "-p", "--configfile", str(configfile)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out)[1:]:
        if not block.startswith("rule train:"):
            continue
        rid = re.search(r"^\s+wildcards: run=(\S+)$", block, re.M).group(1)
        resources = dict(kv.split("=", 1) for kv in re.search(r"^\s+resources: (.*)$", block, re.M).group(1).split(", "))
        jobs[rid] = {"resources": resources, "shell": re.search(r"^Shell command: (.*)$", block, re.M).group(1)}
    assert sorted(jobs) == sorted(run_ids), out[-3000:]
    return jobs


@pytest.mark.parametrize("name, expected", [
    ("sd-turbo", {"grpo-s42": 8, "drpo-s42": 4, "drpo-K-16-s42": 4}),
    ("sdxl-turbo", {"drpo-s42": 8, "drpo-teacher-s42": 4, "grpo-s42": 4}),
])
def test_the_train_rule_launches_and_asks_for_the_runs_gpus(name, expected):
    config = paper(name)
    jobs = _train_jobs(PAPER / f"{name}.yaml", config["results"], list(expected))
    for rid, n in expected.items():
        assert f"--gpus {n} -- accelerate launch --num_processes {n} -m drpo.cli train " in jobs[rid]["shell"], rid
        # sbatch --gpus (the plugin's `gpu`) and the GPUs `drpo job` pins (`gpus`) follow the run
        assert (jobs[rid]["resources"]["gpu"], jobs[rid]["resources"]["gpus"]) == (str(n), str(n)), rid
