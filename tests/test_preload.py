"""`drpo preload`: a warm server runs `drpo` commands in forked children. A command gets its own
arguments, working folder, environment and streams and returns its own exit code; the same images as
a fresh process; signals reach it; anything unusual (no server, another environment) runs as usual."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from drpo import preload


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A server that imports numpy only (fast); yields its socket path, announced in the environment."""
    path = str(tmp_path / "s")
    proc = subprocess.Popen([sys.executable, "-m", "drpo.cli", "preload", "serve", "--socket", path, "--modules", "numpy"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(200):
        if os.path.exists(path):
            break
        time.sleep(0.05)
    assert os.path.exists(path), proc.communicate(timeout=5)[0]
    monkeypatch.setenv(preload.SOCKET_ENV, path)
    monkeypatch.setenv(preload.HOST_ENV, socket.gethostname())
    yield path, proc
    proc.terminate()
    proc.wait(timeout=10)
    assert not os.path.exists(path)  # the server removes its socket when it stops


def _client(*argv: str, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drpo.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def test_a_served_command_gets_its_streams_cwd_and_exit_code(server, tmp_path, capfd):
    assert preload.try_run(["--version"]) == 0  # served: try_run answers instead of returning None
    assert capfd.readouterr().out.strip().startswith("drpo ")
    (tmp_path / "spec.json").write_text("{not json")
    proc = _client("collect", "--spec", "spec.json", "--out", "results.csv", cwd=tmp_path)  # a path relative to its cwd
    assert proc.returncode == 2 and "--spec spec.json: not JSON" in proc.stderr and proc.stdout == ""


def test_another_import_time_environment_or_no_server_runs_the_command_itself(server, monkeypatch, tmp_path):
    path, proc = server
    monkeypatch.setenv("HF_HUB_OFFLINE", "0" if os.environ.get("HF_HUB_OFFLINE") == "1" else "1")
    assert preload.try_run(["--version"]) is None
    monkeypatch.undo()
    monkeypatch.setenv(preload.SOCKET_ENV, str(tmp_path / "nothing-here"))
    monkeypatch.setenv(preload.HOST_ENV, socket.gethostname())
    assert preload.try_run(["--version"]) is None
    monkeypatch.setenv(preload.SOCKET_ENV, path)
    monkeypatch.setenv(preload.HOST_ENV, "another-host")  # a job on another node of a cluster
    assert preload.try_run(["--version"]) is None
    assert _client("--version").returncode == 0  # and the command still runs


def _served_sleeper(tmp_path) -> tuple[subprocess.Popen, int]:
    """A client whose served command (`drpo job -- sleep 60`) has started, and the sleep's pid."""
    marker = tmp_path / "started"
    client = subprocess.Popen([sys.executable, "-m", "drpo.cli", "job", "--rule", "r", "--",
                               "sh", "-c", f"echo $$ > {marker}.tmp; mv {marker}.tmp {marker}; exec sleep 60"],
                              env=dict(os.environ))
    for _ in range(200):
        if marker.exists():
            break
        time.sleep(0.05)
    return client, int(marker.read_text())


def _gone(pid: int, seconds: float = 10) -> bool:
    for _ in range(int(seconds * 10)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_signal_to_the_client_reaches_the_served_command(server, tmp_path):
    path, _ = server
    client, sleeper = _served_sleeper(tmp_path)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=20) == 128 + signal.SIGTERM  # the served `drpo job` ended by the signal
    assert _gone(sleeper)  # and so did the command it ran: the signal reached the job's process group


def test_a_client_that_dies_takes_its_command_with_it(server, tmp_path):
    path, proc = server
    client, sleeper = _served_sleeper(tmp_path)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 1
    client.kill()  # SIGKILL: nothing forwarded, the server sees the closed connection
    client.wait(timeout=10)
    for _ in range(100):
        if not subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
            break
        time.sleep(0.1)
    assert not subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert _gone(sleeper)


def test_a_served_sample_draws_the_same_images_as_a_fresh_process(tmp_path):
    """The real case: a warm server with torch and diffusers imported, `drpo sample` on a tiny
    SD-Turbo twin, byte-identical PNGs to a process started from nothing."""
    from drpo.models import twins

    twins.build(["sd-turbo"], tmp_path / "twins")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na photo of two cats\n")
    args = ["sample", "--model", str(tmp_path / "twins" / "sd-turbo"), "--prompts", str(prompts), "--seeds", "3",
            "--threads", "1", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k not in (preload.SOCKET_ENV, preload.HOST_ENV)}
    fresh = subprocess.run([sys.executable, "-m", "drpo.cli", *args, "--out", str(tmp_path / "fresh")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    path = str(tmp_path / "s")
    server = subprocess.Popen([sys.executable, "-m", "drpo.cli", "preload", "serve", "--socket", path,
                               "--modules", "torch,diffusers,transformers,drpo.models.generators"], env=env)
    try:
        for _ in range(1200):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        served_env = {**env, preload.SOCKET_ENV: path, preload.HOST_ENV: socket.gethostname()}
        t0 = time.time()
        served = subprocess.run([sys.executable, "-m", "drpo.cli", *args, "--out", str(tmp_path / "served")], env=served_env,
                                capture_output=True, text=True, timeout=300)
        assert served.returncode == 0, served.stderr[-2000:]
        print(f"served sample: {time.time() - t0:.1f} s")
    finally:
        server.terminate()
        server.wait(timeout=10)
    images = sorted(p.relative_to(tmp_path / "fresh") for p in (tmp_path / "fresh").rglob("*.png"))
    assert len(images) == 2
    for rel in images:
        assert (tmp_path / "fresh" / rel).read_bytes() == (tmp_path / "served" / rel).read_bytes(), rel


def test_a_served_commands_log_lines_reach_its_own_stderr_once(server, tmp_path):
    """Logging is configured in the server before the fork; a served command's status and error lines
    go to the client's stderr (resolved when written), once, and none to the server's."""
    path, proc = server
    served = _client("world", "prompts", "--n", "3", "--out", str(tmp_path / "p.jsonl"))
    assert served.returncode == 0 and served.stdout == "", served.stderr
    assert served.stderr.count("drpo: wrote 3 prompts") == 1 and served.stderr.rstrip().endswith(f"to {tmp_path / 'p.jsonl'}")
    failed = _client("world", "prompts", "--out", str(tmp_path / "p.jsonl"))
    assert failed.returncode == 2 and failed.stderr.count("drpo world: error:") == 1, failed.stderr
    proc.terminate()
    server_log = proc.communicate(timeout=10)[0]
    assert "runs on its own" not in server_log, server_log  # served, not run by the client itself
    assert "wrote" not in server_log and "error" not in server_log, server_log
