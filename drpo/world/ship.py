"""`drpo world ship`: build the world's base and reward model exactly as the workflow's rules do
(same prompts, settings and thread counts) and record them as the shipped files."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from drpo.world import shipped

log = logging.getLogger(__name__)

# the workflow's rules run them with these torch thread counts (Snakefile: world.smk); a model is
# a function of its thread count, so the shipped ones are built with the same
BASE_THREADS = 2
REWARD_THREADS = 1


def _drpo(*argv: str) -> list[str]:
    return [sys.executable, "-m", "drpo.cli", *argv]


def commands(config: dict, prompts: Path, base_out: Path, reward_out: Path) -> dict[str, list[str]]:
    """The two training commands of the workflow's world_base and world_reward_model rules."""
    w = config["world"]
    return {
        "base": _drpo("world", "train-base", "--prompts", str(prompts), "--out", str(base_out), "--resolution", str(w["resolution"]),
                      "--vae-steps", str(w["base"]["vae_steps"]), "--regression-steps", str(w["base"]["regression_steps"]),
                      "--seed", str(w["seed"]), "--threads", str(BASE_THREADS)),
        "reward_model": _drpo("world", "train-reward", "--prompts", str(prompts), "--out", str(reward_out),
                              "--resolution", str(w["resolution"]), "--steps", str(w["reward_model_steps"]), "--seed", str(w["seed"]),
                              "--threads", str(REWARD_THREADS)),
    }


def build(config_path: str | Path, work: str | Path, out: str | Path, log: Callable[[str], None] = log.info) -> Path:
    """Train both models under `work` (the two side by side) and record them in `out`."""
    from drpo.workflow import load_config, prompt_set_argv
    from drpo.world.base import BaseRecipe

    config = load_config(config_path)
    if "world" not in config or "world_train" not in config.get("prompt_sets", {}):
        raise ValueError(f"{config_path}: no world: block with a world_train prompt set to build the world's models from")
    work = Path(work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    prompts = work / "prompts" / "world_train.jsonl"
    made = subprocess.run(_drpo(*prompt_set_argv(config, "world_train"), "--out", str(prompts)), capture_output=True, text=True)
    if made.returncode != 0:  # its "wrote ..." line is not the build's; its error is
        raise RuntimeError(f"writing the world's training prompts failed (exit {made.returncode}):\n{made.stderr[-2000:]}")
    outs = {"base": work / "base", "reward_model": work / "reward_model"}
    start = time.time()
    running = {}
    for kind, argv in commands(config, prompts, outs["base"], outs["reward_model"]).items():
        log_path = work / "logs" / f"{kind}.log"
        log(f"training the world {kind} (log: {log_path})")
        with open(log_path, "w") as sink:  # the child keeps its own copy of the descriptor
            running[kind] = (subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT), log_path)
    for kind, (proc, log_path) in running.items():
        if proc.wait() != 0:
            for other, _ in running.values():
                other.kill()
            raise RuntimeError(f"training the world {kind} failed (exit {proc.returncode}); its log: {log_path}\n"
                               + log_path.read_text()[-2000:])
        log(f"trained the world {kind} in {time.time() - start:.0f} s")
    w = config["world"]
    base = BaseRecipe(resolution=w["resolution"], vae_steps=w["base"]["vae_steps"], regression_steps=w["base"]["regression_steps"],
                      seed=w["seed"])
    shipped.record("base", shipped.recipe_of("base", prompts, BASE_THREADS, **asdict(base)), outs["base"], out)
    shipped.record("reward_model", shipped.recipe_of("reward_model", prompts, REWARD_THREADS, steps=w["reward_model_steps"],
                                                     resolution=w["resolution"], seed=w["seed"]), outs["reward_model"], out)
    return Path(out)
