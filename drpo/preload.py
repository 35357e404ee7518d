"""A warm interpreter for the workflow's jobs on one machine: `drpo` commands start in ~0.1 s.

Every `drpo sample`, `score`, `train` or `judge` job spends 6–10 s importing torch, diffusers,
transformers and MLflow before it does any work; on a CPU the twin studies and the shapes world are
mostly that. With `DRPO_PRELOAD=1 snakemake ...` the Snakefile starts one server that imports them
once (`drpo preload serve`), and each `drpo` command of the run becomes a thin client: it hands its
arguments, working folder, environment and standard streams to the server, which forks a child that
runs the command with everything already imported, and the client exits with the child's code.

* Same results: the child is a fresh process image of the server (nothing ran in it but imports) and
  runs the ordinary `drpo.cli.main`; numpy's global generator is reseeded as in a new process.
* Opt-in and local only: without the variable, under SLURM (another host) or when the server is not
  there (stopped, still importing), a command runs as it always does. A request whose environment
  differs from the server's in a variable that libraries read at import time (HF_*, CUDA_*, OMP_*,
  ...) also runs on its own.
* Signals: Ctrl-C or a kill of the client is passed to the child; a client that dies outright
  closes its connection and the server ends the child.

    drpo preload serve --socket /tmp/drpo.sock          # what the Snakefile's onstart runs
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path

SOCKET_ENV = "DRPO_PRELOAD_SOCKET"
HOST_ENV = "DRPO_PRELOAD_HOST"
PID_ENV = "DRPO_PRELOAD_PID"
MODULES = ("torch", "numpy", "pandas", "PIL.Image", "diffusers", "transformers", "peft", "accelerate", "mlflow",
           "drpo.models.generators", "drpo.rewards.clip_based", "drpo.train.trainer", "drpo.eval.metrics")
# read by libraries when they are imported: a child must see the values the server imported with
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DIFFUSERS_", "TORCH", "PYTORCH_", "CUDA_", "OMP_",
                        "MKL_", "OPENBLAS_", "MLFLOW_", "PYTHON")
MAX_REQUEST = 1 << 20
MAX_CHILDREN = 64  # more at once is a runaway, not a workflow: the rest run on their own
IN_CHILD = False  # set in a served child: its own `drpo.cli.main` must run the command, not ask the server again

log = logging.getLogger(__name__)
SERVER = {"command": "preload"}  # the server's own lines read `drpo preload: ...`


def _import_env(env: dict) -> dict:
    """The variables a child must share with the server; thread counts (Snakemake sets them per job)
    are applied in the child instead."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) and not k.endswith("_NUM_THREADS")}


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.send(json.dumps(message).encode())
    except OSError:
        pass  # the client is gone; its child is ended when the server sees the closed connection


# -- the client: what `drpo` does first when a server is announced ---------------------------------


def try_run(argv: list[str]) -> int | None:
    """Run `drpo argv` in the announced server's warm child; None when there is no usable server
    (the caller then runs the command itself)."""
    path = os.environ.get(SOCKET_ENV)
    if not path or os.environ.get(HOST_ENV) != socket.gethostname():
        return None
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(path)
    except OSError:
        return None
    with conn:
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
        try:
            socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
            reply = json.loads(conn.recv(MAX_REQUEST) or b"{}")
        except (OSError, ValueError):
            return None
        if "pid" not in reply:
            return None  # the server declined (reply["fallback"] says why): run it here
        pid = reply["pid"]

        def forward(signum, _frame):  # to the command's whole process group: its own subprocesses too
            try:
                os.killpg(pid, signum)
            except ProcessLookupError:
                pass

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, forward)
        while True:
            try:
                data = conn.recv(MAX_REQUEST)
            except InterruptedError:
                continue
            if not data:  # the server died: the child went with it
                log.error("the preload server stopped while running this command")
                return 1
            message = json.loads(data)
            if "exit" in message:
                return int(message["exit"])


# -- the server ---------------------------------------------------------------------------------------


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the client's command, then exit with its code."""
    global IN_CHILD
    IN_CHILD = True
    code = 1
    import atexit

    atexit._clear()  # the server's import-time exit handlers are not this command's; its own run at the end
    try:
        os.setpgid(0, 0)  # a group of its own, as a shell job: signals reach its subprocesses too
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import numpy as np

        np.random.seed(int.from_bytes(os.urandom(4), "little"))  # a new process would draw a new seed
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:  # what OMP_NUM_THREADS does at start
            sys.modules["torch"].set_num_threads(int(threads))
        sys.argv = ["drpo", *request["argv"]]
        from drpo.cli import main

        code = int(main(request["argv"]) or 0)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - a crash is printed like an uncaught exception, then the code
        import traceback

        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # what the command registered (an MLflow run to end, ...), as at a normal exit
        except Exception:  # noqa: BLE001
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def serve(path: str, modules: tuple[str, ...] = MODULES, idle_timeout: float | None = None) -> None:
    """Import `modules`, then serve requests on the Unix socket `path` until SIGTERM/SIGINT, the end
    of the process that started it, or `idle_timeout` seconds without a request or a running child. The socket appears only once the
    imports are done, so early clients run on their own instead of waiting."""
    import importlib

    own_env = _import_env(dict(os.environ))  # before the imports, some of which set variables of their own
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            log.warning("%s not imported (%s)", name, err, extra=SERVER)
    Path(path).unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path + ".tmp")
    os.replace(path + ".tmp", path)  # clients see a socket that is already listening
    listener.listen(64)
    sys.stdout.flush()
    sys.stderr.flush()
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    last, parent = time.monotonic(), os.getppid()
    try:
        while not stop and os.getppid() == parent:  # the workflow that started it is gone: so is its server
            for key, _ in selector.select(timeout=0.05):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    _accept(conn, own_env, children, selector, listener)
                    last = time.monotonic()
                else:  # a client's connection is readable: it closed (died), so end its command
                    pid = key.data
                    selector.unregister(key.fileobj)
                    try:
                        os.killpg(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            while children:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if conn is not None:
                    code = os.waitstatus_to_exitcode(status)
                    _send(conn, {"exit": code if code >= 0 else 128 - code})
                    try:
                        selector.unregister(conn)
                    except (KeyError, ValueError):
                        pass
                    conn.close()
                last = time.monotonic()
            if idle_timeout is not None and not children and time.monotonic() - last > idle_timeout:
                break
    finally:
        listener.close()
        Path(path).unlink(missing_ok=True)
        for pid in children:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _accept(conn, own_env: dict, children: dict, selector, listener) -> None:
    try:
        data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
        request = json.loads(data)
    except (OSError, ValueError):
        conn.close()
        return
    differs = sorted(k for k in set(own_env) | set(_import_env(request["env"]))
                     if own_env.get(k) != request["env"].get(k))
    if len(fds) != 3 or differs or len(children) >= MAX_CHILDREN:
        for fd in fds:
            os.close(fd)
        log.info("runs on its own (environment differs in %s): drpo %s", differs, " ".join(request["argv"][:2]), extra=SERVER)
        _send(conn, {"fallback": f"environment differs: {', '.join(differs)}" if differs else "no streams, or too many commands"})
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        selector.close()
        listener.close()
        for other in children.values():
            other.close()
        conn.close()
        _child(request, fds)
    try:
        os.setpgid(pid, pid)  # also here, so a signal forwarded before the child ran finds the group
    except OSError:
        pass  # the child got there first (or is gone)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    _send(conn, {"pid": pid})
    selector.register(conn, selectors.EVENT_READ, pid)


# -- starting and stopping it from the Snakefile --------------------------------------------------------


def start(log: str | None = None) -> int:
    """Start `drpo preload serve` in the background (its own session, so a Ctrl-C of Snakemake
    reaches the jobs, not the server) and announce it to this process's jobs through the environment."""
    import subprocess
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="drpo-preload-"), "socket")  # short: socket paths max 107 bytes
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "drpo.cli", "preload", "serve", "--socket", path],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    os.environ.update({SOCKET_ENV: path, HOST_ENV: socket.gethostname(), PID_ENV: str(proc.pid)})
    return proc.pid


def stop() -> None:
    """Stop the server `start` announced (nothing when there is none)."""
    pid, path = os.environ.pop(PID_ENV, None), os.environ.pop(SOCKET_ENV, None)
    if pid:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
    if path:
        Path(path).unlink(missing_ok=True)
        try:
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass
