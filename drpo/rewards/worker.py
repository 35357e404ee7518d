"""Scorers that live in their own environment, behind a long-lived worker process.

HPSv2, HPSv3, ImageReward and GenEval's detector need torchvision or pin old libraries, so they run
in their own conda environments (envs/*.yaml) and talk to drpo over a small protocol:

    client → worker (stdin), one JSON line per request:
        {"id": 3, "images": ["<base64 PNG>", ...], "prompts": [...], "metadata": [{...}, ...]}
    worker → client (stdout), one JSON line per answer:
        {"id": 3, "scores": [0.12, ...]}            or      {"id": 3, "error": "message"}
    the worker's first line is a handshake: {"protocol": 1, "scorer": "hpsv3", "ready": true}

Start one by hand: `python -m drpo.rewards.worker --scorer hpsv3 --options '{"device": "cuda"}'`.
In a config: `{name: hpsv3, options: {python: /path/to/envs/hpsv3/bin/python}}`. Logs go to stderr.
`brightness` (mean pixel value) is a scorer without dependencies, for tests and smoke checks.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PROTOCOL = 1


# -- client --------------------------------------------------------------------------------------

def _reward_base():
    from drpo.rewards import Reward

    return Reward


class WorkerReward(_reward_base()):
    """A reward computed by `python -m drpo.rewards.worker` in another (or this) environment."""

    name = "worker"

    def __init__(self, scorer: str, python: str | None = None, timeout: float = 600.0, start_timeout: float = 600.0, batch_size: int = 8, device="cpu", **options):
        super().__init__(batch_size, device)
        self.scorer, self.timeout = scorer, float(timeout)
        self.python = python or sys.executable
        if not Path(self.python).exists():
            raise FileNotFoundError(
                f"reward {scorer}: python {self.python} does not exist; create the scorer's environment "
                f"(conda env create -f envs/{ENV_FILES.get(scorer, 'core.yaml')}) and point options.python at its python"
            )
        self.options = {"device": str(device), **options}
        self._stderr = tempfile.TemporaryFile(mode="w+")
        argv = [self.python, "-m", "drpo.rewards.worker", "--scorer", scorer, "--options", json.dumps(self.options)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._next_id = 0
        hello = self._receive(start_timeout, "start")
        if not hello.get("ready") or hello.get("protocol") != PROTOCOL:
            raise self._error(f"bad handshake {hello}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-800:].strip() or "(no stderr)"

    def _error(self, message: str):
        from drpo.rewards import RewardError

        return RewardError(f"reward {self.scorer} (worker {self.python}): {message}; worker stderr: {self._stderr_tail()}")

    def _receive(self, timeout: float, what: str) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise self._error(f"no answer to {what} within {timeout:g} s") from None
        if line is None:
            raise self._error(f"the worker exited (code {self.proc.poll()}) during {what}")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise self._error(f"not a protocol line: {line[:200]!r}") from None

    def score(self, images, prompts, metadata):
        from drpo.rewards import check_scores
        from drpo.rewards.blackbox import png_base64

        self._next_id += 1
        request = {"id": self._next_id, "images": [png_base64(i) for i in images], "prompts": list(prompts), "metadata": list(metadata)}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._error("the worker is not running") from None
        answer = self._receive(self.timeout, f"request {self._next_id}")
        if answer.get("id") != self._next_id:
            raise self._error(f"answer id {answer.get('id')} for request {self._next_id}")
        if "error" in answer:
            raise self._error(answer["error"])
        return check_scores(answer.get("scores"), len(prompts), self.scorer, " (worker)")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


ENV_FILES = {"hpsv2": "imagereward.yaml", "imagereward": "imagereward.yaml", "hpsv3": "hpsv3.yaml", "geneval": "geneval.yaml"}


# -- worker side -----------------------------------------------------------------------------------

def _missing(package: str, scorer: str) -> ImportError:
    return ImportError(
        f"the {scorer} scorer needs the '{package}' package, which lives in its own environment: "
        f"conda env create -f envs/{ENV_FILES.get(scorer, 'core.yaml')} and run the worker with that python"
    )


def _pil(images_b64: list[str]):
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB") for s in images_b64]


def scorer_brightness(options: dict):
    import numpy as np

    return lambda images, prompts, metadata: [float(np.asarray(im, dtype=np.float32).mean() / 255.0) for im in images]


def scorer_hpsv2(options: dict):
    try:
        import hpsv2
    except ImportError:
        raise _missing("hpsv2", "hpsv2") from None
    version = options.get("version", "v2.1")
    return lambda images, prompts, metadata: [float(hpsv2.score(im, p, hps_version=version)[0]) for im, p in zip(images, prompts)]


def scorer_imagereward(options: dict):
    try:
        import ImageReward as RM
    except ImportError:
        raise _missing("image-reward", "imagereward") from None
    model = RM.load(options.get("checkpoint", "ImageReward-v1.0"), device=options.get("device", "cpu"))
    return lambda images, prompts, metadata: [float(model.score(p, [im])) for im, p in zip(images, prompts)]


def scorer_hpsv3(options: dict):
    try:
        from hpsv3 import HPSv3RewardInferencer
    except ImportError:
        raise _missing("hpsv3", "hpsv3") from None
    inferencer = HPSv3RewardInferencer(device=options.get("device", "cuda"))

    def score(images, prompts, metadata):
        with tempfile.TemporaryDirectory() as tmp:  # the selector takes image paths
            paths = []
            for i, im in enumerate(images):
                paths.append(os.path.join(tmp, f"{i}.png"))
                im.save(paths[-1])
            rewards = inferencer.reward(paths, prompts)
        return [float(r[0]) for r in rewards]  # μ of the predicted score distribution

    return score


def scorer_geneval(options: dict):
    """GenEval's detector evaluator: `options.geneval_repo` is a checkout of the GenEval repository
    with its detector weights downloaded (their download script); its evaluation module is used as is."""
    repo = options.get("geneval_repo")
    if not repo or not Path(repo).exists():
        raise FileNotFoundError("the geneval scorer needs options.geneval_repo: a GenEval checkout with its detector weights")
    sys.path.insert(0, str(Path(repo) / "evaluation"))
    try:
        import evaluate_images as geneval  # noqa: F401  (GenEval's own module)
    except ImportError as err:
        raise _missing(f"mmdet ({err})", "geneval") from None

    def score(images, prompts, metadata):
        out = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, (im, meta) in enumerate(zip(images, metadata)):
                path = os.path.join(tmp, f"{i}.png")
                im.save(path)
                out.append(1.0 if geneval.evaluate_image(path, meta)["correct"] else 0.0)
        return out

    return score


SCORERS = {"brightness": scorer_brightness, "hpsv2": scorer_hpsv2, "hpsv3": scorer_hpsv3, "imagereward": scorer_imagereward, "geneval": scorer_geneval}


def serve(scorer: str, options: dict, stdin=None, stdout=None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if scorer not in SCORERS:
        print(f"unknown scorer {scorer!r}; known: {sorted(SCORERS)}", file=sys.stderr)
        return 2
    fn = SCORERS[scorer](options)
    stdout.write(json.dumps({"protocol": PROTOCOL, "scorer": scorer, "ready": True}) + "\n")
    stdout.flush()
    for line in stdin:
        if not line.strip():
            continue
        request_id = None
        try:
            request = json.loads(line)
            request_id = request.get("id")
            scores = fn(_pil(request["images"]), request["prompts"], request.get("metadata") or [{}] * len(request["prompts"]))
            answer = {"id": request_id, "scores": [float(s) for s in scores]}
        except Exception as err:  # report, keep serving
            answer = {"id": request_id, "error": f"{type(err).__name__}: {err}"}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drpo.rewards.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorer", required=True, choices=sorted(SCORERS))
    parser.add_argument("--options", default="{}", help="JSON options for the scorer (device, checkpoint, ...)")
    args = parser.parse_args(argv)
    return serve(args.scorer, json.loads(args.options))


if __name__ == "__main__":
    raise SystemExit(main())
