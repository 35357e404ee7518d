"""Black-box rewards — the point of DrPO: any executable, any HTTP endpoint.

DrPO only needs a ranking of each prompt's candidates, so the reward may be a program we know
nothing about. Both kinds fail loudly: a crash (non-zero exit, with the stderr tail), a hang
(timeout), a wrong number of scores, NaN/inf or unparseable output raise a `RewardError` naming the
reward, the command or URL, and what went wrong. Crashes, hangs, 5xx answers and refused
connections are retried `retries` times with exponential backoff (backoff·2^i seconds) first;
wrong counts, NaN and garbage are not (a deterministic program would give them again).

`command` — options: command (argv list, e.g. [python, score.py, --fast]; a string is split with
shlex, never given to a shell), mode (per_call | persistent), timeout (s per batch), retries,
backoff, image_transport (base64 | path), env (extra environment variables), cwd, batch_size.
The program runs in a session of its own: a hang, a retry or the end of the run kills it with
everything it started (a wrapper script's model server too). The program reads one JSON line per image on stdin:

    {"prompt": "a red cube", "image": "<base64 PNG, or a PNG path with image_transport: path>", "metadata": {...}}

and writes scores on stdout: one line per image holding a number or {"score": x}, or one line
{"scores": [x, ...]} for the batch. Logs belong on stderr.
  per_call:   the program runs once per batch; stdin is closed after the last line.
  persistent: one long-lived process; each batch's lines are written and the program must answer
              (and flush) its scores for them before the next batch — start-up cost is paid once.
              A process that dies or hangs is restarted for the retry.

`http` — options: url, protocol (drpo | flow_grpo), timeout, retries, backoff, headers, verify
(TLS), batch_size. With protocol `drpo` (the default) it POSTs
    {"prompts": [...], "images": [<base64 PNG>, ...], "metadata": [{...}, ...]}
to exactly `url` and expects 200 with {"scores": [...]}. With protocol `flow_grpo` it speaks the
reward servers of flow_grpo (and those that follow it, e.g. verl-omni's): the body is a pickled
dict {"images": [<JPEG bytes>, ...], "prompts": [...], "meta_datas": [{...}, ...], "only_strict":
bool} and the answer a pickled dict whose `score_key` list holds the scores (default: "scores",
else "outputs"; GenEval's server also answers "rewards", "strict_rewards"). The answer is unpickled
with numbers, strings, lists, dicts and numpy arrays only: a server cannot make drpo run code.
Redirects are not followed (a 3xx is an error naming its Location), and proxy settings / .netrc
credentials from the environment are not used, so the images go to the configured URL only.
"""

from __future__ import annotations

import io
import json
import pickle
import shlex
import subprocess
import time

import torch
from torch import Tensor

from drpo.rewards import Reward, RewardError, check_scores
from drpo.rewards.transport import (
    IMAGE_TRANSPORTS,
    HoldsProcess,
    ImagePayload,
    LineProcess,
    Transient,
    child_env,
    dumps,
    parse_score_line,
    parse_scores,
    retry,
    run_group,
    tail,
)

MODES = ("per_call", "persistent")
HTTP_PROTOCOLS = ("drpo", "flow_grpo")


class _BlackBox(Reward):
    def __init__(self, timeout: float, retries: int, backoff: float, batch_size: int, device):
        super().__init__(batch_size, device)
        if float(timeout) <= 0 or int(retries) < 0 or float(backoff) < 0:
            raise ValueError(f"reward {self.name}: need timeout > 0, retries >= 0, backoff >= 0; got {timeout}, {retries}, {backoff}")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)

    def _where(self) -> str:
        raise NotImplementedError

    def _fail(self, what: str) -> RewardError:
        return RewardError(f"reward {self.name} ({self._where()}): {what}")


class CommandReward(HoldsProcess, _BlackBox):
    """Scores from any executable speaking JSON lines (see the module docstring)."""

    name = "command"

    def __init__(
        self,
        command: list[str] | str,
        mode: str = "per_call",
        timeout: float = 60.0,
        retries: int = 2,
        backoff: float = 0.5,
        image_transport: str = "base64",
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ):
        super().__init__(timeout, retries, backoff, batch_size, device)
        self.argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
        if not self.argv:
            raise ValueError("reward command: options.command must name an executable (an argv list)")
        if mode not in MODES:
            raise ValueError(f"reward command: options.mode must be one of {MODES}, got {mode!r}")
        if image_transport not in IMAGE_TRANSPORTS:
            raise ValueError(f"reward command: options.image_transport must be one of {IMAGE_TRANSPORTS}, got {image_transport!r}")
        self.mode, self.image_transport, self.cwd = mode, image_transport, cwd
        self.env = child_env(env)
        self._proc: LineProcess | None = None

    def _where(self) -> str:
        return shlex.join(self.argv)

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
        with ImagePayload(images, self.image_transport) as items:
            payload = "".join(
                dumps({"prompt": p, "image": item, "metadata": m}) + "\n" for item, p, m in zip(items, prompts, metadata)
            )
            attempt = self._per_call(payload) if self.mode == "per_call" else self._persistent(payload, len(prompts))
            try:
                scores = retry(attempt, self.retries, self.backoff, self._on_failure)
            except Transient as err:
                raise self._fail(str(err)) from None
        return check_scores(scores, len(prompts), self.name, f" ({self._where()})")

    def _parse(self, text: str) -> list[float]:
        try:
            return parse_scores(text)
        except ValueError as err:
            raise self._fail(f"cannot parse its output: {err}; output starts {text[:200]!r}") from None

    def _per_call(self, payload: str):
        def attempt() -> list[float]:
            try:
                proc = run_group(self.argv, payload.encode("utf-8"), self.timeout, env=self.env, cwd=self.cwd)  # no shell
            except subprocess.TimeoutExpired:
                raise Transient(f"no answer within {self.timeout:g} s (hung?); killed") from None
            except OSError as err:
                raise self._fail(f"cannot run it: {err}") from None
            stderr = proc.stderr.decode("utf-8", errors="replace")
            if proc.returncode != 0:
                raise Transient(f"exited with code {proc.returncode}; stderr: {tail(stderr, 500)}")
            return self._parse(proc.stdout.decode("utf-8", errors="replace"))

        return attempt

    def _persistent(self, payload: str, count: int):
        def attempt() -> list[float]:
            if self._proc is None or not self._proc.alive:
                try:
                    self._proc = LineProcess(self.argv, env=self.env, cwd=self.cwd)
                except OSError as err:
                    raise self._fail(f"cannot run it: {err}") from None
            deadline = time.monotonic() + self.timeout
            self._proc.send(payload, deadline, f"{count} input lines")
            scores: list[float] = []
            while len(scores) < count:
                try:
                    line = self._proc.readline(deadline, f"{count} images")
                except Transient as err:
                    raise Transient(f"{err} (timeout {self.timeout:g} s; got {len(scores)} of {count} scores)") from None
                if line.strip():
                    try:
                        scores.extend(parse_score_line(line))
                    except ValueError as err:
                        self._proc.kill()  # its output is out of step with ours now
                        raise self._fail(f"cannot parse its output: {err}") from None
            return scores  # more than count: check_scores reports the wrong count

        return attempt

    def _on_failure(self, err: Transient) -> None:
        if self._proc is not None:
            self._proc.kill()  # a fresh process for the retry



class HTTPReward(_BlackBox):
    """Scores from an HTTP endpoint (see the module docstring)."""

    name = "http"

    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        headers: dict[str, str] | None = None,
        verify: bool = True,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        protocol: str = "drpo",
        score_key: str | None = None,
        only_strict: bool = True,
    ):
        super().__init__(timeout, retries, backoff, batch_size, device)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"reward http: options.url must be an http(s) URL, got {url!r}")
        if protocol not in HTTP_PROTOCOLS:
            raise ValueError(f"reward http: options.protocol must be one of {HTTP_PROTOCOLS}, got {protocol!r}")
        self.url, self.headers, self.verify = url, dict(headers or {}), bool(verify)
        self.protocol, self.score_key, self.only_strict = protocol, score_key, bool(only_strict)
        self._session = None

    def _where(self) -> str:
        return self.url

    def _client(self):
        if self._session is None:
            import requests

            self._session = requests.Session()
            self._session.trust_env = False  # no proxies or .netrc from the environment: this URL only
        return self._session

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
        import requests

        if self.protocol == "flow_grpo":
            body = pickle.dumps({"images": [_jpeg(img) for img in images], "prompts": list(prompts),
                                 "meta_datas": list(metadata), "only_strict": self.only_strict}, protocol=4)
            headers = {"Content-Type": "application/octet-stream", **self.headers}
        else:
            with ImagePayload(images, "base64") as items:
                body = dumps({"prompts": list(prompts), "images": items, "metadata": list(metadata)}).encode("utf-8")
            headers = {"Content-Type": "application/json", **self.headers}

        def attempt():
            try:
                resp = self._client().post(self.url, data=body, headers=headers, timeout=self.timeout,
                                           allow_redirects=False, verify=self.verify)
            except requests.Timeout:
                raise Transient(f"no answer within {self.timeout:g} s (timeout)") from None
            except requests.ConnectionError as err:
                raise Transient(f"cannot connect: {type(err).__name__}: {tail(str(err), 200)}") from None
            if 300 <= resp.status_code < 400:
                raise self._fail(
                    f"HTTP {resp.status_code} redirect to {resp.headers.get('Location')!r} refused; "
                    f"redirects are not followed — configure the final URL"
                )
            if resp.status_code >= 500:
                raise Transient(f"HTTP {resp.status_code}: {tail(resp.text, 200)}")
            if resp.status_code != 200:
                raise self._fail(f"HTTP {resp.status_code}: {tail(resp.text, 200)}")
            return resp

        try:
            resp = retry(attempt, self.retries, self.backoff)
        except Transient as err:
            raise self._fail(str(err)) from None
        scores = self._flow_grpo_scores(resp.content) if self.protocol == "flow_grpo" else self._json_scores(resp.text)
        return check_scores(scores, len(prompts), self.name, f" ({self.url})")

    def _json_scores(self, text: str) -> list:
        try:
            data = json.loads(text)
            scores = data["scores"] if isinstance(data, dict) else None
            if not isinstance(scores, list):
                raise ValueError("no 'scores' list")
        except (ValueError, KeyError) as err:
            raise self._fail(f'expected JSON {{"scores": [...]}}, got {text[:200]!r} ({err})') from None
        return scores

    def _flow_grpo_scores(self, content: bytes) -> list:
        import numpy as np

        try:
            data = _PlainUnpickler(io.BytesIO(content)).load()
        except Exception as err:  # a truncated or foreign answer: pickle raises many types
            raise self._fail(f"expected a pickled dict (flow_grpo protocol), got {content[:60]!r} ({err})") from None
        keys = [self.score_key] if self.score_key else ["scores", "outputs"]
        key = next((k for k in keys if isinstance(data, dict) and k in data), None)
        if key is None:
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise self._fail(f"the answer has no {' or '.join(map(repr, keys))} (it has {found}); set options.score_key")
        try:
            return np.asarray(data[key], dtype=np.float64).reshape(-1).tolist()
        except (TypeError, ValueError) as err:
            raise self._fail(f"answer[{key!r}] is not a list of numbers ({err})") from None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def _jpeg(image: Tensor) -> bytes:
    """One uint8 (3, H, W) image as JPEG bytes, as flow_grpo's reward clients send (PIL's default quality)."""
    from PIL import Image

    array = image.permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only (numbers, strings, lists, dicts, numpy arrays and scalars): a reward
    server's answer must not be able to run code here."""

    BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "float", "int", "str", "bool", "complex", "bytes"}
    NUMPY = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str):
        if (module == "builtins" and name in self.BUILTINS) or (module.split(".")[0] == "numpy" and name in self.NUMPY):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused {module}.{name}: a reward server's answer may hold only plain data")
