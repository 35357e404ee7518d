"""The study's timing run (METHOD §6.3): the paper config's DrPO and DRaFT timing configs, and the
chain timing configs → `drpo bench timing` → `drpo collect` → the timing table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drpo import workflow as wf
from drpo.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DRPO = str(Path(sys.executable).with_name("drpo"))


def paper() -> dict:
    return wf.validate_config(yaml.safe_load((ROOT / "config/paper/sd-turbo.yaml").read_text()))


def test_the_paper_timing_run_is_the_drpo_and_draft_recipes_at_effective_batch_192():
    config = paper()
    drpo, draft = wf.timing_config(config, "drpo"), wf.timing_config(config, "draft")
    # 192 candidate images per update: 8 prompts × K = 24, all in one process
    assert drpo["grad_accum"] * drpo["drpo"]["candidates"] == draft["grad_accum"] * draft["draft"]["candidates"] == 192
    assert (drpo["drpo"]["positives"], drpo["drpo"]["negatives"], drpo["drpo"]["lambda_ref"]) == (12, 12, 0.0)  # §6.3
    assert draft["draft"]["chunk"] == 1 and draft["optim"]["lr"] == 1e-5  # DRaFT's own run: streamed, its lr
    assert drpo["features"]["name"] == "latent_mae" and drpo["gradient_checkpointing"] is True
    assert drpo["reward"] == draft["reward"] == [{**config["rewards"]["pickscore"][0], "weight": 1.0}]
    assert drpo["steps"] == 4 and not drpo["tracking"]["enabled"] and drpo["checkpoint"]["every"] == 0
    assert drpo["output_dir"].endswith("/timing/drpo")


def test_the_timing_reward_must_be_differentiable_and_the_timing_table_needs_timing():
    config = yaml.safe_load((ROOT / "config/paper/sd-turbo.yaml").read_text())
    config["evaluation"]["timing"]["reward"] = "hpsv3"
    with pytest.raises(ConfigError, match="evaluation.timing.reward: 'hpsv3' must be one differentiable reward"):
        wf.validate_config(config)
    del config["evaluation"]["timing"]
    with pytest.raises(ConfigError, match="builder timing needs evaluation.timing"):
        wf.validate_config(config)


def test_timing_chain_from_train_configs_to_the_efficiency_table(tmp_path):
    from drpo.models.tiny import build_tiny_clip, build_tiny_sd_turbo

    build_tiny_sd_turbo(tmp_path / "model")
    build_tiny_clip(tmp_path / "clip")
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    common = {"seed": 42, "steps": 3, "grad_accum": 2, "model": {"path": str(tmp_path / "model")},
              "prompts": {"path": str(tmp_path / "prompts.txt")}, "lora": {"rank": 4, "alpha": 4},
              "reward": {"name": "pickscore", "options": {"path": str(tmp_path / "clip")}},
              "checkpoint": {"every": 0}, "tracking": {"enabled": False, "sample_grid_every": 0}}
    cfgs = {"drpo": {**common, "method": "drpo", "output_dir": str(tmp_path / "t/drpo"), "features": {"name": "latent"},
                     "drpo": {"candidates": 4, "positives": 2, "negatives": 2, "lambda_ref": 0.0}},
            "draft": {**common, "method": "draft", "output_dir": str(tmp_path / "t/draft"), "draft": {"candidates": 4, "chunk": 1}}}
    for m, c in cfgs.items():
        (tmp_path / f"{m}.yaml").write_text(yaml.safe_dump(c))
    timing = tmp_path / "timing.json"
    proc = subprocess.run([DRPO, "bench", "timing", "--drpo", str(tmp_path / "drpo.yaml"), "--draft", str(tmp_path / "draft.yaml"),
                           "--repeats", "2", "--warmup", "1", "--threads", "1", "--out", str(timing)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(timing.read_text())
    assert result["effective_batch"] == 8 and len(result["ratios"]) == 2
    spec = {"results": str(tmp_path), "test_sets": [], "metrics": [], "judged": [],
            "models": {"draft-s42": {"run": "draft", "label": "DRaFT"}, "drpo-s42": {"run": "drpo", "label": "DrPO"}},
            "tables": {"hpsv3_efficiency": {"builder": "timing", "paper": "hpsv3_efficiency", "rows": ["draft", "drpo"]}},
            "timing": {"path": str(timing), "runs": {"drpo": "drpo", "draft": "draft"}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    for cmd in ([DRPO, "collect", "--spec", str(tmp_path / "spec.json"), "--out", str(tmp_path / "results.csv")],
                [DRPO, "tables", "--results", str(tmp_path / "results.csv"), "--spec", str(tmp_path / "spec.json"), "--out", str(tmp_path / "tables")]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "tables" / "hpsv3_efficiency.md").read_text()
    update = next(line for line in table.splitlines() if line.startswith("| Update time"))
    cells = [c.strip() for c in update.strip("|").split("|")][1:]
    assert f"{result['draft']['median_s']:.2f}" in cells[0] and f"{result['drpo']['median_s']:.2f}" in cells[1]
    assert "paper 21.62" in cells[0] and "paper 6.17" in cells[1]
    speed = next(line for line in table.splitlines() if line.startswith("| Speed-up"))
    assert f"{result['draft']['median_s'] / result['drpo']['median_s']:.2f}" in speed
