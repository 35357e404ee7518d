"""`drpo toy`: the 2-D demonstration runs, improves the ranked reward, and the reference drift holds."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from drpo.toy import ToyConfig, run


def test_toy_improves_reward_and_reference_drift_stays_closer(tmp_path):
    out = tmp_path / "toy.png"
    s = run(ToyConfig(pretrain_steps=300, steps=100, out=str(out)))
    assert s["reward_noref"] > s["reward_base"] + 1.0  # the ranking alone moves samples to the target
    assert s["reward_ref"] > s["reward_base"] + 0.5
    assert s["shift_ref"] < s["shift_noref"]  # the reference drift keeps samples nearer the base
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] > 1000


def test_toy_cli_prints_where_it_wrote(tmp_path):
    out = tmp_path / "fig.png"
    proc = subprocess.run(
        [sys.executable, "-m", "drpo.cli", "toy", "--steps", "20", "--pretrain-steps", "50", "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "mean reward: base" in proc.stdout and out.exists()  # the result on stdout, the status on stderr
    assert f"drpo: wrote {out}" in proc.stderr and "wrote" not in proc.stdout
    help_text = subprocess.run([sys.executable, "-m", "drpo.cli", "toy", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--lambda-ref" in help_text
