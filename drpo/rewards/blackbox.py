"""Black-box rewards — the point of DrPO: any executable, any HTTP endpoint.

`command`: runs an executable (an argv list; never a shell) once per batch. It reads one JSON line
per image on stdin, `{"prompt": str, "image": <base64 PNG>, "metadata": {...}}`, and writes one
score per image: a line holding a number or `{"score": x}`, or one line `{"scores": [...]}`.

`http`: POSTs `{"prompts": [...], "images": [<base64 PNG>...], "metadata": [...]}` to the configured
URL only (redirects are refused) and expects `{"scores": [...]}`.

Both retry crashes, timeouts and 5xx answers a bounded number of times with backoff, then raise a
`RewardError` naming the reward, the command or URL, and what went wrong; a wrong count, NaN or an
unparseable answer is an error at once.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shlex
import subprocess
import time

from torch import Tensor

from drpo.rewards import Reward, RewardError, check_scores


def png_base64(image: Tensor) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def parse_score_lines(text: str) -> list[float]:
    """One number per line, `{"score": x}` per line, or one `{"scores": [...]}` line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    scores: list[float] = []
    for line in lines:
        value = json.loads(line)  # a bare number is valid JSON
        if isinstance(value, dict) and "scores" in value:
            scores.extend(float(v) for v in value["scores"])
        elif isinstance(value, dict) and "score" in value:
            scores.append(float(value["score"]))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scores.append(float(value))
        else:
            raise ValueError(f"unexpected line {line[:80]!r}")
    return scores


class _Retrying(Reward):
    def __init__(self, timeout: float, retries: int, backoff: float, batch_size: int, device):
        super().__init__(batch_size, device)
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)

    def _retry(self, attempt, what: str):
        """Call attempt() up to 1 + retries times; `_Transient` errors are retried with backoff."""
        last = None
        for i in range(self.retries + 1):
            try:
                return attempt()
            except _Transient as err:
                last = err
                if i < self.retries:
                    time.sleep(self.backoff * 2**i)
        raise RewardError(f"reward {self.name} ({what}): {last} (after {self.retries + 1} attempts)")


class _Transient(Exception):
    """A failure worth retrying: a crash, a timeout, a 5xx, a refused connection."""


class CommandReward(_Retrying):
    name = "command"

    def __init__(self, command: list[str] | str, timeout: float = 60.0, retries: int = 2, backoff: float = 0.5, batch_size: int = 64, device="cpu", env: dict | None = None):
        super().__init__(timeout, retries, backoff, batch_size, device)
        self.argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
        if not self.argv:
            raise ValueError("reward command: options.command must name an executable")
        self.env = env

    def score(self, images, prompts, metadata):
        payload = "".join(
            json.dumps({"prompt": p, "image": png_base64(img), "metadata": m}) + "\n" for img, p, m in zip(images, prompts, metadata)
        )
        what = " ".join(self.argv)

        def attempt():
            try:
                proc = subprocess.run(self.argv, input=payload, capture_output=True, text=True, timeout=self.timeout, env=self.env)
            except subprocess.TimeoutExpired:
                raise _Transient(f"no answer within {self.timeout:g} s (hung?)") from None
            except OSError as err:
                raise RewardError(f"reward {self.name} ({what}): cannot run it: {err}") from None
            if proc.returncode != 0:
                tail = proc.stderr.strip()[-500:] or "(no stderr)"
                raise _Transient(f"exited with code {proc.returncode}; stderr: {tail}")
            return proc.stdout

        out = self._retry(attempt, what)
        try:
            scores = parse_score_lines(out)
        except (ValueError, TypeError) as err:
            raise RewardError(f"reward {self.name} ({what}): cannot parse its output: {err}; output starts {out[:200]!r}") from None
        return check_scores(scores, len(prompts), self.name, f" ({what})")


class HTTPReward(_Retrying):
    name = "http"

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, batch_size: int = 32, device="cpu", headers: dict | None = None):
        super().__init__(timeout, retries, backoff, batch_size, device)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"reward http: options.url must be an http(s) URL, got {url!r}")
        self.url, self.headers = url, dict(headers or {})

    def score(self, images, prompts, metadata):
        import requests

        body = {"prompts": list(prompts), "images": [png_base64(img) for img in images], "metadata": list(metadata)}

        def attempt():
            try:
                resp = requests.post(self.url, json=body, timeout=self.timeout, headers=self.headers, allow_redirects=False)
            except requests.Timeout:
                raise _Transient(f"no answer within {self.timeout:g} s") from None
            except requests.ConnectionError as err:
                raise _Transient(f"cannot connect: {err.__class__.__name__}") from None
            if resp.status_code >= 500:
                raise _Transient(f"HTTP {resp.status_code}: {resp.text[:200]}")
            if resp.status_code != 200:
                raise RewardError(f"reward {self.name} ({self.url}): HTTP {resp.status_code}: {resp.text[:200]}")
            return resp

        resp = self._retry(attempt, self.url)
        try:
            scores = resp.json()["scores"]
            scores = [float(s) for s in scores]
        except (ValueError, KeyError, TypeError) as err:
            raise RewardError(f"reward {self.name} ({self.url}): expected JSON {{\"scores\": [...]}}, got {resp.text[:200]!r} ({err})") from None
        if any(math.isnan(s) or math.isinf(s) for s in scores):
            raise RewardError(f"reward {self.name} ({self.url}): NaN or infinite scores {scores[:8]}")
        return check_scores(scores, len(prompts), self.name, f" ({self.url})")
