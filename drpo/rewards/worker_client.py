"""Client side of the reward worker protocol (the server and the protocol are in `worker.py`).

    {name: hpsv3, options: {python: envs/hpsv3/bin/python, device: cuda, timeout: 600}}

The worker is started once, from an argv list (no shell): `<python> <drpo>/rewards/worker.py
--scorer <scorer> --options <json>`, where `python` (default: this interpreter) is the scorer's
own environment. It stays up between calls; `close()` (or garbage collection) stops it.
A worker that dies or does not answer within `timeout` is restarted and the request re-sent, at
most `retries` times, then a RewardError names the scorer, the python and the worker's stderr tail.
An error the scorer reports for a request is raised at once (retrying would give the same error).

Options: scorer, python, timeout (s per request), start_timeout (s for the model to load), retries,
backoff (s), image_transport ("base64" or "path": PNG files in a temporary folder, cheaper for
large images on one machine), env (extra environment variables), batch_size, device; any other
option goes to the scorer (checkpoint, version, repo, ...; see worker.py). `twin: <folder>` makes the
worker serve the scorer's deterministic twin (`drpo twins`), through the same process and protocol.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from drpo.rewards import Reward, RewardError, check_scores
from drpo.rewards.transport import IMAGE_TRANSPORTS, HoldsProcess, ImagePayload, LineProcess, Transient, child_env, dumps, retry
from drpo.rewards.worker import ENV_FILES, PROTOCOL

WORKER_SCRIPT = Path(__file__).with_name("worker.py")


class WorkerReward(HoldsProcess, Reward):
    """A reward computed by a long-lived worker process, usually in another Python environment."""

    name = "worker"

    def __init__(
        self,
        scorer: str,
        python: str | None = None,
        timeout: float = 600.0,
        start_timeout: float = 900.0,
        retries: int = 1,
        backoff: float = 1.0,
        image_transport: str = "base64",
        env: dict[str, str] | None = None,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        **scorer_options,
    ):
        super().__init__(batch_size, device)
        self.name = scorer
        if image_transport not in IMAGE_TRANSPORTS:
            raise ValueError(f"reward {scorer}: image_transport must be one of {IMAGE_TRANSPORTS}, got {image_transport!r}")
        self.scorer, self.image_transport = scorer, image_transport
        self.timeout, self.start_timeout = float(timeout), float(start_timeout)
        self.retries, self.backoff = int(retries), float(backoff)
        self.python = str(python or sys.executable)
        if not Path(self.python).is_file():
            raise FileNotFoundError(
                f"reward {scorer}: options.python {self.python} does not exist; create the scorer's environment "
                f"(conda env create -f envs/{ENV_FILES.get(scorer, 'core.yaml')} -p envs/{scorer}) and point "
                f"options.python at its bin/python"
            )
        self.scorer_options = {"device": str(self.device), **scorer_options}
        self.argv = [self.python, str(WORKER_SCRIPT), "--scorer", scorer, "--options", json.dumps(self.scorer_options)]
        self.env = child_env(env)
        self.handshake: dict = {}
        self._proc: LineProcess | None = None
        self._next_id = 0
        self._start()

    # -- process management -------------------------------------------------------------------------

    def _where(self) -> str:
        return f"reward {self.scorer} (worker {self.python})"

    def _start(self) -> None:
        self._proc = LineProcess(self.argv, env=self.env)
        try:
            line = self._proc.readline(time.monotonic() + self.start_timeout, "the handshake")
        except Transient as err:
            self._proc.kill()
            raise RewardError(f"{self._where()}: did not start: {err}") from None
        try:
            hello = json.loads(line)
        except json.JSONDecodeError:
            hello = None
        if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL:
            self._proc.kill()
            raise RewardError(f"{self._where()}: bad handshake {line.strip()[:200]!r} (expected protocol {PROTOCOL}); stderr: {self._proc.stderr_tail()}")
        if not hello.get("ready"):
            self._proc.close()
            raise RewardError(f"{self._where()}: cannot start: {hello.get('error')}")
        self.handshake = hello

    def _restart(self, _err: Transient | None = None) -> None:
        if self._proc is not None:
            self._proc.kill()
        self._start()


    # -- scoring -----------------------------------------------------------------------------------

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
        if self._proc is None:
            raise RewardError(f"{self._where()}: the worker was closed")
        with ImagePayload(images, self.image_transport) as items:
            self._next_id += 1
            request_id = self._next_id
            line = dumps({"id": request_id, "images": items, "prompts": list(prompts), "metadata": list(metadata)}) + "\n"

            def attempt() -> dict:
                proc = self._proc
                if proc is None or not proc.alive:
                    self._restart()
                    proc = self._proc
                deadline = time.monotonic() + self.timeout
                proc.send(line, deadline, f"request {request_id}")
                raw = proc.readline(deadline, f"request {request_id} ({len(prompts)} images, timeout {self.timeout:g} s)")
                try:
                    return json.loads(raw)
                except json.JSONDecodeError:
                    raise RewardError(f"{self._where()}: not a protocol line: {raw.strip()[:200]!r}") from None

            def on_failure(err: Transient) -> None:
                if self._proc is not None:
                    self._proc.kill()  # restarted by the next attempt
                    stderr_tails.append(self._proc.stderr_tail())

            stderr_tails: list[str] = []
            try:
                answer = retry(attempt, self.retries, self.backoff, on_failure)
            except Transient as err:
                message = f"{self._where()}: {err}"
                if "stderr:" not in message and stderr_tails:
                    message += f"; worker stderr: {stderr_tails[-1]}"
                raise RewardError(message) from None
        if not isinstance(answer, dict) or answer.get("id") != request_id:
            raise RewardError(f"{self._where()}: answer {str(answer)[:200]} does not match request id {request_id}")
        if "error" in answer:
            raise RewardError(f"{self._where()}: the scorer failed: {answer['error']}")
        return check_scores(answer.get("scores"), len(prompts), self.scorer, f" (worker {self.python})")
