"""`drpo job -- CMD ...`: run one workflow job as an MLflow child run, on its own GPUs.

The Snakefile prefixes each heavy rule's command with this wrapper. It

* opens a child run under the workflow invocation's parent run (`DRPO_MLFLOW_PARENT_RUN_ID`, set
  by the Snakefile's `onstart`), tagged with the rule, its wildcards, the config hash, the git
  commit and the SLURM job id when there is one; the command sees `DRPO_MLFLOW_RUN_ID`, so a
  training job logs its metrics into that same run;
* on a multi-GPU workstation (`--cores` runs, no SLURM), gives the job `--gpus` GPUs of its own
  by holding a lock file per GPU and setting `CUDA_VISIBLE_DEVICES`; under SLURM the scheduler
  already did that;
* runs the command without a shell and exits with its exit code. Outside a workflow (no parent
  run in the environment) it only runs the command.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

GPU_LOCK_DIR = Path(os.environ.get("DRPO_GPU_LOCK_DIR", "/tmp/drpo-gpu-locks"))


def parse_wildcards(text: str) -> dict[str, str]:
    out = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--wildcards {text!r}: expected KEY=VALUE pairs separated by spaces")
        out[key] = value
    return out


def visible_gpu_count() -> int:
    """GPUs on this machine, without importing torch (nvidia-smi -L), 0 when there are none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


@contextlib.contextmanager
def gpu_slots(count: int, total: int | None = None, poll: float = 2.0) -> Iterator[list[int]]:
    """Hold `count` free GPUs (an exclusive lock file each) until the block ends.

    Locks die with the process, so a killed job frees its GPUs. Waits while all are taken.
    """
    total = visible_gpu_count() if total is None else total
    if count <= 0 or total == 0:
        yield []
        return
    if count > total:
        raise ValueError(f"the job asks for {count} GPUs but this machine has {total}")
    GPU_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    held: list[tuple[int, object]] = []
    try:
        while len(held) < count:
            for gpu in range(total):
                if len(held) == count or any(g == gpu for g, _ in held):
                    continue
                fh = open(GPU_LOCK_DIR / f"gpu{gpu}.lock", "w")
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append((gpu, fh))
                except BlockingIOError:
                    fh.close()
            if len(held) < count:
                time.sleep(poll)
        yield sorted(g for g, _ in held)
    finally:
        for _, fh in held:
            fh.close()


def run_job(command: list[str], rule: str, wildcards: dict[str, str], config_hash: str, gpus: int = 0) -> int:
    if not command:
        raise ValueError("drpo job: give the command after --, e.g. drpo job --rule train -- drpo train --config x.yaml")
    env = dict(os.environ)
    parent = env.get("DRPO_MLFLOW_PARENT_RUN_ID")
    slurm_job = env.get("SLURM_JOB_ID")
    with contextlib.ExitStack() as stack:
        if gpus and not slurm_job and "CUDA_VISIBLE_DEVICES" not in env:
            slots = stack.enter_context(gpu_slots(gpus))
            if slots:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slots))
        tracker = None
        if parent:
            from drpo.tracking import job_run

            tags = {"slurm_job_id": slurm_job} if slurm_job else {}
            if env.get("CUDA_VISIBLE_DEVICES"):
                tags["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]
            tracker = stack.enter_context(
                job_run(env["DRPO_MLFLOW_URI"], env["DRPO_MLFLOW_EXPERIMENT"], parent, rule, wildcards, config_hash, tags=tags)
            )
            if getattr(tracker, "run_id", None):
                env["DRPO_MLFLOW_RUN_ID"] = tracker.run_id
        t0 = time.time()
        code = subprocess.call(command, env=env)
        if tracker is not None:
            tracker.log_metrics({"job/seconds": time.time() - t0, "job/exit_code": float(code)}, step=0)
            if code != 0:
                tracker.close("FAILED")
        return code
