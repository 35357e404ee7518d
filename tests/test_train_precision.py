"""Mixed precision (METHOD §2.7): fp16 training scales the loss dynamically, skips an update whose
gradients overflow, and keeps the trainable LoRA weights in fp32 whatever the base weights' dtype."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import link

from drpo.train.base import Method
from drpo.train.config import train_config_from_dict
from drpo.train.trainer import Trainer


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_sd_turbo):
    root = tmp_path_factory.mktemp("precision")
    link(tiny_sd_turbo, root / "model")
    (root / "prompts.txt").write_text("a photo of a cat\na photo of a dog\n")
    return root


def make_trainer(assets, out, *, mixed_precision="no", dtype="float32", steps=2, checkpoint_every=0, resume=False):
    cfg = train_config_from_dict({
        "method": "drpo", "steps": steps, "grad_accum": 2, "output_dir": str(out), "mixed_precision": mixed_precision,
        "model": {"path": str(assets / "model"), "dtype": dtype}, "prompts": {"path": str(assets / "prompts.txt")},
        "reward": "brightness", "features": {"name": "latent"}, "lora": {"rank": 4, "alpha": 4},
        "checkpoint": {"every": checkpoint_every}, "tracking": {"enabled": False, "sample_grid_every": 0},
        "drpo": {"candidates": 6, "positives": 2, "negatives": 2},
    })
    return Trainer(cfg, progress=False, resume=resume)


class MeanLatent(Method):
    """A loss of the size of DrPO's per-element gradients at 512 px: a mean over many elements, times
    a small factor. `inf_at` makes one update's loss infinite, as an fp16 overflow would."""

    def __init__(self, cfg, models, timer, factor=1e-6, inf_at=None):
        super().__init__(cfg, models, timer)
        self.factor, self.inf_at, self.calls = factor, inf_at, 0

    def loss(self, batch, noise_gen):
        embeds = self.encode(batch).repeat_interleave(6)
        x = self.generate(self.gen.sample_noise(6, generator=noise_gen), embeds)
        update = self.calls // self.cfg.grad_accum
        self.calls += 1
        factor = float("inf") if update == self.inf_at else self.factor
        return x.float().mean() * factor, {}


def gradients_at_step(trainer) -> torch.Tensor:
    """The (unscaled) gradients the optimizer steps with, flattened."""
    seen = []
    trainer.optimizer.register_step_pre_hook(lambda opt, *_: seen.append(torch.cat([p.grad.flatten().clone() for p in trainer.params])))
    trainer.train_step(0)
    return seen[0]


def test_fp16_scales_the_loss_so_gradients_near_fp16s_smallest_normal_survive(assets, tmp_path):
    exact = make_trainer(assets, tmp_path / "fp32")
    exact.method = MeanLatent(exact.cfg, exact.models, exact.timer)
    g32 = gradients_at_step(exact)
    half = make_trainer(assets, tmp_path / "fp16", mixed_precision="fp16", dtype="float16")
    half.method = MeanLatent(half.cfg, half.models, half.timer)
    g16 = gradients_at_step(half)
    assert (g32 != 0).float().mean() > 0.3
    # unscaled, every one of these gradients underflows to 0 in the fp16 backward
    assert (g16 != 0).float().mean() > 0.9 * (g32 != 0).float().mean()
    assert (g16 - g32).norm() / g32.norm() < 0.02


def test_an_fp16_update_with_inf_gradients_is_skipped_and_logged(assets, tmp_path, caplog):
    trainer = make_trainer(assets, tmp_path / "skip", mixed_precision="fp16", dtype="float16")
    trainer.method = MeanLatent(trainer.cfg, trainer.models, trainer.timer, factor=1e-3, inf_at=0)
    before = [p.detach().clone() for p in trainer.params]
    with caplog.at_level(logging.WARNING, logger="drpo.train.trainer"):
        first = trainer.train_step(0)
    assert first["amp/skipped"] == 1.0 and first["amp/loss_scale"] == 65536.0
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.params)), "a skipped update changed the LoRA"
    assert trainer.scaler.get_scale() == 32768.0
    assert trainer.scheduler.last_epoch == 0
    assert any("step skipped" in r.getMessage() for r in caplog.records)
    second = trainer.train_step(1)
    assert second["amp/skipped"] == 0.0 and second["amp/loss_scale"] == 32768.0
    assert all(torch.isfinite(p).all() for p in trainer.params)
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.params))


def test_fp32_and_bf16_runs_have_no_loss_scale(assets, tmp_path):
    metrics = make_trainer(assets, tmp_path / "bf16", mixed_precision="bf16", dtype="bfloat16").train_step(0)
    assert "amp/loss_scale" not in metrics and torch.isfinite(torch.tensor(metrics["loss"]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_lora_weights_stay_fp32_over_half_precision_base_weights(assets, tmp_path, dtype):
    trainer = make_trainer(assets, tmp_path / dtype, dtype=dtype)
    assert trainer.gen.unet.dtype == getattr(torch, dtype)
    assert trainer.params and all(p.dtype == torch.float32 for p in trainer.params)
    trainer.gen.save_lora(tmp_path / dtype / "lora")
    trainer.gen.load_lora(tmp_path / dtype / "lora")
    assert all(p.dtype == torch.float32 for p in trainer.gen.trainable_parameters())


def test_the_loss_scale_is_checkpointed_and_resumed(assets, tmp_path):
    out = tmp_path / "resume"
    trainer = make_trainer(assets, out, mixed_precision="fp16", dtype="float16")
    trainer.method = MeanLatent(trainer.cfg, trainer.models, trainer.timer, inf_at=0)
    trainer.train_step(0)  # skipped: the scale halves
    trainer.save_checkpoint(1)
    resumed = make_trainer(assets, out, mixed_precision="fp16", dtype="float16", resume=True)
    assert resumed.start_step == 1 and resumed.scaler.get_scale() == 32768.0


# -- divergence: fail loudly, keep the last good checkpoint ---------------------------------------


def test_a_diverged_run_stops_keeps_its_last_checkpoint_and_writes_no_final(assets, tmp_path):
    from drpo.train.trainer import TrainingDiverged, list_checkpoints

    out = tmp_path / "diverged"
    trainer = make_trainer(assets, out, steps=6, checkpoint_every=1)
    trainer.cfg.optim.lr = 1e30  # the first update is finite but enormous; a later one overflows
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e30
    with pytest.raises(TrainingDiverged, match=r"diverged at update \d.*last good checkpoint is .*checkpoint-\d.*Lower optim.lr"):
        trainer.train()
    assert not (out / "final").exists()
    kept = list_checkpoints(out)
    assert kept, "no checkpoint survived"
    from drpo.train.trainer import read_final_lora

    assert all(torch.isfinite(t).all() for t in read_final_lora(kept[-1][1]).values())


def test_drpo_train_marks_a_failed_run_failed_in_mlflow_and_says_why_in_one_line(assets, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import mlflow
    import yaml

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {
        "method": "drpo", "steps": 4, "grad_accum": 1, "output_dir": str(tmp_path / "run"), "model": {"path": str(assets / "model")},
        "prompts": {"path": str(assets / "prompts.txt")}, "reward": "brightness", "features": {"name": "latent"},
        "lora": {"rank": 4, "alpha": 4}, "checkpoint": {"every": 0}, "optim": {"lr": 1e30},
        "tracking": {"uri": uri, "experiment": "diverge", "sample_grid_every": 0},
        "drpo": {"candidates": 6, "positives": 2, "negatives": 2},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([str(Path(sys.executable).with_name("drpo")), "train", "--config", str(tmp_path / "run.yaml"), "--no-progress"],
                          capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "drpo train: error: training diverged at update" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "final").exists()
    runs = mlflow.MlflowClient(uri).search_runs(mlflow.MlflowClient(uri).get_experiment_by_name("diverge").experiment_id)
    assert [r.info.status for r in runs] == ["FAILED"]
