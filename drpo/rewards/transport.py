"""Talking to scorers outside this process: PNG encoding, line-based subprocesses, retries.

Shared by the worker client (`worker_client.py`) and the black boxes (`blackbox.py`). Processes are
always started from an argv list, never through a shell; their stderr goes to a temporary file so
a crash can be reported with its last lines, and their stdout is read by a thread so every read
has a timeout (a hung scorer never hangs training).
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor

T = TypeVar("T")
IMAGE_TRANSPORTS = ("base64", "path")


def png_bytes(image: Tensor) -> bytes:
    """uint8 (3, H, W) → PNG bytes (lossless: the scorer sees exactly our pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def png_base64(image: Tensor) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


class ImagePayload:
    """Images as strings for a scorer: base64 PNGs, or PNG files in a temporary folder (`path`).

    Use as a context manager; the folder is removed on exit.
    """

    def __init__(self, images: Tensor, transport: str = "base64"):
        if transport not in IMAGE_TRANSPORTS:
            raise ValueError(f"image transport must be one of {IMAGE_TRANSPORTS}, got {transport!r}")
        self.images, self.transport = images, transport
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> list[str]:
        if self.transport == "base64":
            return [png_base64(img) for img in self.images]
        self._tmp = tempfile.TemporaryDirectory(prefix="drpo-reward-")
        paths = []
        for i, img in enumerate(self.images):
            path = Path(self._tmp.name) / f"{i:05d}.png"
            path.write_bytes(png_bytes(img))
            paths.append(str(path))
        return paths

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def jsonable(obj: Any) -> Any:
    """json.dumps default: numpy scalars/arrays, tensors, paths → plain JSON values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=jsonable)


def parse_scores(text: str) -> list[float]:
    """Scores from a scorer's output: one per line as a number or {"score": x}, or {"scores": [...]}.

    Raises ValueError naming the first line that is none of these.
    """
    scores: list[float] = []
    for line in text.splitlines():
        if line.strip():
            scores.extend(parse_score_line(line))
    return scores


def parse_score_line(line: str) -> list[float]:
    line = line.strip()
    try:
        value = json.loads(line)  # a bare number is valid JSON; so are NaN and Infinity
    except json.JSONDecodeError:
        raise ValueError(f"unparseable line {line[:120]!r}") from None
    if isinstance(value, dict) and isinstance(value.get("scores"), list):
        values = value["scores"]
    elif isinstance(value, dict) and "score" in value:
        values = [value["score"]]
    else:
        values = [value]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"not a score: {v!r} in line {line[:120]!r}")
        out.append(float(v))
    return out


def tail(text: str, n: int = 800) -> str:
    text = text.strip()
    return ("…" + text[-n:]) if len(text) > n else (text or "(empty)")


class Transient(Exception):
    """A failure worth retrying: a crash, a timeout, a 5xx answer, a refused connection."""


def retry(attempt: Callable[[], T], retries: int, backoff: float, on_failure: Callable[[Transient], None] | None = None) -> T:
    """Call `attempt` up to 1 + retries times, sleeping backoff·2^i between tries.

    Only `Transient` errors are retried; the last one is re-raised with the attempt count added.
    `on_failure` runs after each transient failure (e.g. to restart a process).
    """
    last: Transient | None = None
    for i in range(retries + 1):
        try:
            return attempt()
        except Transient as err:
            last = err
            if on_failure is not None:
                on_failure(err)
            if i < retries:
                time.sleep(backoff * 2**i)
    raise Transient(f"{last} (after {retries + 1} attempt{'s' if retries else ''})")


class LineProcess:
    """A long-lived subprocess spoken to in lines: write to stdin, read stdout lines with a timeout."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None):
        self.argv = [str(a) for a in argv]
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(  # argv list, no shell; a session of its own, killed as a group
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            env=env, cwd=cwd, bufsize=0, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode("utf-8", errors="replace"))
        self._lines.put(None)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, text: str, deadline: float, what: str) -> None:
        """Write text to stdin before `deadline`; a dead process or a full, unread pipe is Transient.

        The write runs in a thread: a child that stops reading (hung) would otherwise block us
        forever once the pipe buffer is full.
        """
        error: list[BaseException] = []

        def write() -> None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(text.encode("utf-8"))
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as err:
                error.append(err)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(max(0.0, deadline - time.monotonic()))
        if writer.is_alive():
            raise Transient(f"it did not read {what} within the timeout (hung?)")
        if error:
            raise Transient(self.exit_message(f"while reading {what}"))

    def readline(self, deadline: float, what: str) -> str:
        """The next stdout line before time.monotonic() reaches `deadline`; Transient otherwise."""
        timeout = max(0.0, deadline - time.monotonic())
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise Transient(f"no answer to {what} within the timeout (hung?)") from None
        if line is None:
            raise Transient(self.exit_message(f"during {what}"))
        return line

    def exit_message(self, when: str) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        return f"exited with code {code} {when}; stderr: {self.stderr_tail()}"

    def stderr_tail(self, n: int = 800) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return tail(self._stderr.read().decode("utf-8", errors="replace"), n)

    def close(self, timeout: float = 5.0) -> None:
        """Close stdin (a polite stop), then kill if it does not exit within `timeout`."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        kill_group(self.proc)


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a process started with `start_new_session=True` and everything it started (a wrapper
    script's model server would otherwise live on, holding its memory)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def run_group(argv: Sequence[str], payload: bytes, timeout: float, env=None, cwd=None) -> subprocess.CompletedProcess:
    """subprocess.run for a command reward: its own session, and on a timeout the whole group is
    killed (subprocess.run kills only the first process)."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.communicate()
        raise
    except BaseException:
        kill_group(proc)
        raise
    kill_group(proc)  # what it left running in the background goes with it
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment (offline Hugging Face, unbuffered Python) plus `extra`."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env


class HoldsProcess:
    """Mixin of rewards that keep a `LineProcess` in `self._proc`: close it, and kill it when the
    reward is garbage-collected so no scorer outlives the run."""

    _proc: LineProcess | None = None

    def close(self) -> None:
        if self._proc is not None:
            self._proc.close()
            self._proc = None

    def __del__(self):
        try:
            if self._proc is not None:
                self._proc.kill()
        except Exception:
            pass
