"""The SLURM profile against a real SLURM: start a one-node cluster on localhost, run part of the DAG
through `--profile workflow/profiles/slurm`, and prove every job went through sbatch.

The targets are `train_config` outputs of the embedded default config: they need nothing else to
exist, and the rule is a `run:` block, so each SLURM job runs drpo's own Python (TrainConfig
validation) inside `srun` on the node. Needs root on Linux and ../shared/tools/local-slurm (the
script installs slurm-wlm and munge from Debian on first use); skips otherwise. It only ever talks
to the cluster it starts: it skips when another SLURM config or daemon is present, and its
`finally` stops the daemons it started.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from drpo import workflow as wf
from drpo.config import deep_merge, load_yaml
from drpo.train.config import train_config_from_dict

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(__file__).resolve().parents[2] / "shared" / "tools" / "local-slurm"
START = TOOLS / "start-local-slurm.sh"
STOP = TOOLS / "stop-local-slurm.sh"
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
ETC_CONF = Path("/etc/slurm/slurm.conf")
TMP_PREFIX = "drpo-slurm-test-"

RUNS = ["drpo-s42", "dpo-s42", "drpo-offline-s42"]  # three methods; the offline one adds a dataset path
INIT_SECONDS = 3  # --slurm-init-seconds-before-status-checks: MinJobAge must be >= 3x this for squeue
SNAKEMAKE_LIMIT_S = 150  # timeout -s INT; the run itself takes 30-45 s on 2 shared cores
SLURM_PORTS = (6817, 6818)  # slurmctld, slurmd of the local cluster


def _listening(port: int) -> bool:
    """Something listens on TCP `port` (reads /proc/net/tcp*, sends nothing)."""
    needle = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(needle) and fields[3] == "0A":
                return True
    return False


def _clear_stale_link() -> None:
    """Remove /etc/slurm/slurm.conf when it is a dangling link left by an earlier run of this test."""
    if ETC_CONF.is_symlink():
        target = os.readlink(ETC_CONF)
        if target.startswith(f"/tmp/{TMP_PREFIX}") and not Path(target).exists():
            ETC_CONF.unlink()


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (starts slurmctld, slurmd and munged, may apt-get install slurm-wlm)"
    if not START.is_file() or not STOP.is_file():
        return f"{START} is absent (../shared/tools/local-slurm is needed)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed"
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return "neither SLURM nor apt-get to install it"
    _clear_stale_link()
    if ETC_CONF.exists() or ETC_CONF.is_symlink():
        return (f"{ETC_CONF} exists ({os.path.realpath(ETC_CONF)}): this test only runs against a cluster it "
                "starts itself; stop that one first (stop-local-slurm.sh --unlink with its LOCAL_SLURM_DIR)")
    busy = [p for p in SLURM_PORTS if _listening(p)]
    if busy:
        return f"TCP port(s) {busy} are in use: another SLURM is running here"
    return None


def _env(slurm_dir: Path) -> dict[str, str]:
    """The environment for every SLURM command: only our cluster, never one inherited from outside."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_", "SALLOC_")) and k != "SNAKEMAKE_PROFILE"}
    env["LOCAL_SLURM_DIR"] = str(slurm_dir)
    env["SLURM_CONF"] = str(slurm_dir / "etc" / "slurm.conf")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _daemon_pids(slurm_dir: Path) -> dict[str, int]:
    files = {"slurmctld": slurm_dir / "state/run/slurmctld.pid", "slurmd": slurm_dir / "state/run/slurmd.pid",
             "munged": slurm_dir / "state/munge-run/munged.pid"}
    return {name: int(f.read_text().strip()) for name, f in files.items() if f.is_file() and f.read_text().strip()}


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


@pytest.fixture
def local_slurm():
    """A running one-node SLURM under /tmp/drpo-slurm-test-*/slurm; always stopped afterwards."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir="/tmp"))
    base.chmod(0o755)  # munged runs as user munge and must reach its key under here
    slurm_dir = base / "slurm"
    env = _env(slurm_dir)
    timings: dict[str, float] = {}
    pids: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        start = subprocess.run(["timeout", "-k", "10", "300", str(START)], env=env, capture_output=True, text=True)
        timings["start_s"] = time.monotonic() - t0
        pids = _daemon_pids(slurm_dir)
        assert start.returncode == 0, f"start-local-slurm.sh failed ({start.returncode}):\n{start.stdout}\n{start.stderr}"
        assert ETC_CONF.is_symlink() and os.readlink(ETC_CONF) == env["SLURM_CONF"], "the start script did not link /etc/slurm/slurm.conf"
        yield {"base": base, "env": env, "conf": Path(env["SLURM_CONF"]), "timings": timings}
    finally:
        pids = pids or _daemon_pids(slurm_dir)
        t1 = time.monotonic()
        stop = subprocess.run(["timeout", "-k", "10", "90", str(STOP), "--unlink"], env=env, capture_output=True, text=True)
        timings["stop_s"] = time.monotonic() - t1
        print(f"local SLURM timings: {', '.join(f'{k}={v:.1f}' for k, v in timings.items())}")
        left = {name: pid for name, pid in pids.items() if _alive(pid)}
        shutil.rmtree(base, ignore_errors=True)
        assert stop.returncode == 0 and not left, f"stop-local-slurm.sh left {left} running:\n{stop.stdout}\n{stop.stderr}"
        assert not ETC_CONF.is_symlink(), "stop-local-slurm.sh --unlink left /etc/slurm/slurm.conf"


def _snakemake() -> list[str]:
    exe = Path(sys.executable).with_name("snakemake")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "snakemake"]


def _run_limited(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run under `timeout -s INT` (snakemake cancels its SLURM jobs on SIGINT); our own group as a backstop."""
    limited = ["timeout", "-s", "INT", "-k", "15", str(SNAKEMAKE_LIMIT_S), *cmd]
    proc = subprocess.Popen(limited, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=SNAKEMAKE_LIMIT_S + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    return proc.returncode, out


@pytest.mark.slurm
@pytest.mark.slow  # 35-50 s on 2 cores (+ ~15 s apt the first time)
def test_profile_runs_train_config_jobs_through_slurm(local_slurm):
    env, conf, base, timings = local_slurm["env"], local_slurm["conf"], local_slurm["base"], local_slurm["timings"]
    results, logdir = base / "results", base / "slurm_logs"

    # The plugin reads job states with squeue only while MinJobAge >= 3 x init seconds (else it
    # switches to sacct, which has no slurmdbd here).
    min_job_age = int(re.search(r"^MinJobAge=(\d+)", conf.read_text(), re.M).group(1))
    assert min_job_age >= 3 * INIT_SECONDS, f"{conf}: MinJobAge={min_job_age} < 3 x {INIT_SECONDS}"

    overrides = {
        "results": str(results),
        "models": {"shapes-turbo": {"path": f"{results}/world/base"}},
        "tracking": {"uri": f"sqlite:///{base}/mlflow.db"},
    }
    targets = [f"{results}/runs/{run}/train.yaml" for run in RUNS]
    cmd = [
        *_snakemake(), "--profile", str(PROFILE.relative_to(ROOT)),
        # the local cluster: one partition, no accounts, no slurmdbd (these replace the profile's keys;
        # its set-resources only concern GPU rules, which are not targets here)
        "--default-resources", "slurm_partition=debug", "runtime=5", "mem_mb=500", "cpus_per_task=1",
        "--slurm-init-seconds-before-status-checks", str(INIT_SECONDS),  # the profile's squeue reads states
        "--retries", "0", "--jobs", str(len(RUNS)),
        "--slurm-keep-successful-logs", "--slurm-logdir", str(logdir), "--drop-metadata",
        "--config", f"results={results}",
        f"models={{shapes-turbo: {{path: {overrides['models']['shapes-turbo']['path']}}}}}",
        f"tracking={{uri: \"{overrides['tracking']['uri']}\"}}",
        "--", *targets,
    ]
    t0 = time.monotonic()
    code, out = _run_limited(cmd, env)
    timings["snakemake_s"] = time.monotonic() - t0
    for log in re.findall(r"Complete log\(s\): (\S+)", out):  # .snakemake/log/ of this run in the repo
        Path(log).unlink(missing_ok=True)
    ctld_log = _tail(base / "slurm" / "logs" / "slurmctld.log")
    assert code == 0, f"snakemake exited {code}:\n{out[-6000:]}\n--- slurmctld.log ---\n{ctld_log}"

    # 1. the plugin submitted one sbatch job per run: its log names the SLURM job id and log file
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out)
    by_run = {Path(log).parent.name: (jobid, Path(log)) for jobid, log in submitted}
    assert sorted(by_run) == sorted(RUNS), f"submissions: {submitted}\n{out[-3000:]}"
    assert len({jobid for jobid, _ in by_run.values()}) == len(RUNS)

    # 2. SLURM itself knows those jobs: completed, named by the profile's prefix, run in the repo
    queue = subprocess.run(["squeue", "-t", "all", "-h", "-o", "%i|%j|%T|%Z|%k"], env=env, capture_output=True,
                           text=True, timeout=30)
    assert queue.returncode == 0, queue.stderr
    rows = {r.split("|")[0]: r.split("|") for r in queue.stdout.splitlines() if r.strip()}
    for run, (jobid, log) in by_run.items():
        assert jobid in rows, f"SLURM job {jobid} ({run}) not in squeue -t all:\n{queue.stdout}"
        _, name, state, workdir, comment = rows[jobid]
        assert state == "COMPLETED" and name.startswith("drpo_"), rows[jobid]
        assert Path(workdir) == ROOT and comment.strip() == f"rule_train_config_wildcards_{run}", rows[jobid]
        # the job's own log: snakemake ran the rule's `run:` block inside the allocation
        text = log.read_text()
        assert "--executor slurm-jobstep" in text and "localrule train_config:" in text, text[-2000:]
        assert f"wildcards: run={run}" in text, text[-2000:]

    # 3. the outputs are the TrainConfigs the workflow defines for these runs
    # as the Snakefile does: `results=` moves the default's `{results}/...` paths (the feature model's)
    default = deep_merge(load_yaml(ROOT / "config" / "config.yaml"), {"results": str(results)})
    config = wf.validate_config(deep_merge(default, overrides))
    for run in RUNS:
        written = yaml.safe_load((results / "runs" / run / "train.yaml").read_text())
        train_config_from_dict(written, source=f"{run}/train.yaml")  # raises on any invalid key or value
        assert written == wf.train_config(config, run)
        assert written["output_dir"] == f"{results}/runs/{run}" and written["seed"] == 42
    print(f"SLURM job ids: { {run: jobid for run, (jobid, _) in by_run.items()} }")


# -- the profiles' resources, from a dry run (no SLURM needed) -----------------------------------


def _dry_run_resources(profile: str, configfile: str) -> dict[str, list[dict[str, str]]]:
    """rule -> the resources of each of its jobs, as `snakemake -n --verbose` prints them."""
    out = subprocess.run([*_snakemake(), "--profile", profile, "-n", "--verbose", "--configfile", configfile],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out.stdout + out.stderr):
        name = re.match(r"(?:local)?rule (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if name and res:
            jobs.setdefault(name.group(1), []).append(dict(kv.split("=", 1) for kv in res.group(1).split(", ")))
    return jobs


def _only(jobs: list[dict[str, str]], *keys: str) -> tuple:
    values = {tuple(j.get(k) for k in keys) for j in jobs}
    assert len(values) == 1, f"jobs of one rule differ in {keys}: {values}"
    return values.pop()


def test_profiles_give_gpu_rules_their_gpus_and_the_rest_cpu_defaults():
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    slurm = _dry_run_resources("workflow/profiles/slurm", "config/paper/sd-turbo.yaml")
    paper = wf.validate_config(yaml.safe_load((ROOT / "config/paper/sd-turbo.yaml").read_text()))
    run_gpus = {str(wf.launcher(paper, rid)["gpus"]) for rid in wf.runs(paper)}  # each run's launcher: {"4", "8"}
    # train: sbatch --gpus (plugin resource `gpu`) must equal what accelerate launches (rule resource `gpus`)
    assert {(j["gpu"], j["gpus"]) for j in slurm["train"]} == {(g, g) for g in run_gpus}
    keys = ("slurm_partition", "cpus_per_task", "cpus_per_gpu", "runtime")
    assert _only(slurm["train"], *keys) == ("gpu", "0", "8", "1440")
    for rule in ("sample", "score"):
        assert _only(slurm[rule], "slurm_partition", "gpu", "cpus_per_task") == ("gpu", "1", "0"), rule
    for rule in ("prompt_set", "train_config", "collect", "tables", "report_html"):
        assert _only(slurm[rule], "slurm_partition", "gpu", "cpus_per_task", "slurm_account") == ("cpu", None, "2", "my-account"), rule

    local = _dry_run_resources("workflow/profiles/local", "config/paper/sd-turbo.yaml")
    # Snakemake lowers a job's gpus to the profile's `resources: gpus` (4): GRPO's 8 become 4 there
    assert {j["gpus"] for j in local["train"]} == {str(min(int(g), 4)) for g in run_gpus}
    assert _only(local["sample"], "gpus") == _only(local["score"], "gpus") == ("1",)
    assert _only(local["prompt_set"], "gpus", "slurm_partition") == ("0", None)
