"""Reward worker: the server side of scorers that live in their own Python environment.

HPSv2, HPSv3, ImageReward and GenEval's detector need torchvision or pin old libraries, so they run
in their own conda environments (envs/*.yaml) as a long-lived process that drpo talks to over
JSON lines. This file is self-contained (standard library, Pillow and the scorer's own package), so
the other environment needs neither drpo nor its dependencies: the client runs it by file path,
`<python> /path/to/drpo/rewards/worker.py --scorer hpsv3 --options '{"device": "cuda"}'`
(`python -m drpo.rewards.worker ...` works where drpo is installed). Python >= 3.8.

Protocol (version 1), one JSON object per line, UTF-8:

    worker → client, first line (handshake):
        {"protocol": 1, "name": "hpsv3", "version": "<scorer package version>", "ready": true, "pid": 123}
      or, when the scorer cannot start (package missing, weights missing), then exit code 3:
        {"protocol": 1, "name": "hpsv3", "ready": false, "error": "<what and how to fix it>"}
    client → worker (stdin), one line per request:
        {"id": 7, "images": [<PNG file path or base64 PNG>, ...], "prompts": [...], "metadata": [{...}, ...]}
    worker → client (stdout), one line per request, in order:
        {"id": 7, "scores": [0.12, ...]}          (one finite float per image)
      or {"id": 7, "error": "<exception type: message>"}   (the worker keeps serving)
    The client closes stdin to stop the worker (exit code 0).

An image string is a path when such a file exists, else base64 (a "data:image/png;base64," prefix
is allowed). `metadata` may be omitted (empty dicts). Everything the scorer libraries print goes to
stderr: the worker moves file descriptor 1 to stderr at start and keeps the protocol on a private
copy, so a chatty library cannot corrupt the protocol.

Scorers and their options (unknown options are an error):
    brightness   mean pixel value in [0, 1] (no dependencies; tests and smoke checks)
    hpsv2        hpsv2.score(images, prompt, cp=checkpoint, hps_version=version)  [version: v2.1]
    hpsv3        hpsv3.HPSv3RewardInferencer(config_path, checkpoint_path, device).reward(prompts=, image_paths=)
                 → first column (μ of the predicted score distribution)
    imagereward  ImageReward.load(checkpoint, device, med_config, download_root).score(prompt, image)
    geneval      GenEval's evaluation/evaluate_images.py from a checkout (`repo`), detector weights in
                 `model_path`; thresholds: detection 0.3, counting 0.9, max_overlap 1.0, position 0.1;
                 1.0 if the image is correct for its metadata row (tag/include/exclude), else 0.0
    any of the four with {"twin": "<folder>"}: its deterministic twin (`make_twin`; parameters from
                 <folder>/twin.json, written by `drpo twins`), for the test studies (config/test/*.yaml)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import importlib.util
import io
import json
import os
import sys
import tempfile
import traceback
import zlib

PROTOCOL = 1
# scorer -> conda environment file that provides its package
ENV_FILES = {"hpsv2": "imagereward.yaml", "imagereward": "imagereward.yaml", "hpsv3": "hpsv3.yaml", "geneval": "geneval.yaml"}


class ScorerUnavailable(RuntimeError):
    """The scorer cannot start here: its package or weights are missing. The message says how to fix it."""


def missing_package(package: str, scorer: str, err: BaseException) -> ScorerUnavailable:
    env = ENV_FILES.get(scorer, "core.yaml")
    return ScorerUnavailable(
        f"the {scorer} scorer needs the '{package}' package, which this python ({sys.executable}) cannot import "
        f"({type(err).__name__}: {err}); install it in its own env: conda env create -f envs/{env}, "
        f"then set the reward's options.python to that environment's bin/python"
    )


def package_version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _check_options(scorer: str, options: dict, accepted: set) -> None:
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ScorerUnavailable(f"scorer {scorer}: unknown options {unknown}; accepted: {sorted(accepted)}")


# -- one request's images --------------------------------------------------------------------------

class Batch:
    """The images of one request, as PIL images and (written on demand) PNG file paths."""

    def __init__(self, items: list, prompts: list, metadata: list):
        if not isinstance(items, list) or not isinstance(prompts, list):
            raise ValueError("images and prompts must be lists")
        if len(items) != len(prompts) or len(metadata) != len(prompts):
            raise ValueError(f"{len(items)} images, {len(prompts)} prompts and {len(metadata)} metadata rows")
        self.items, self.prompts, self.metadata = items, [str(p) for p in prompts], metadata
        self._images = None
        self._tmp = None

    @staticmethod
    def _is_path(item: str) -> bool:
        return len(item) < 4096 and os.path.isfile(item)

    @property
    def images(self) -> list:
        if self._images is None:
            from PIL import Image

            out = []
            for i, item in enumerate(self.items):
                if not isinstance(item, str):
                    raise ValueError(f"image {i}: expected a path or base64 string, got {type(item).__name__}")
                if self._is_path(item):
                    src = item
                else:
                    data = item.split(",", 1)[1] if item.startswith("data:") else item
                    try:
                        src = io.BytesIO(base64.b64decode(data, validate=True))
                    except (binascii.Error, ValueError):
                        raise ValueError(f"image {i}: neither an existing file nor base64 ({item[:60]!r})") from None
                with Image.open(src) as im:
                    out.append(im.convert("RGB"))
            self._images = out
        return self._images

    def paths(self) -> list:
        """PNG paths for scorers that read files: given paths as they are, others written to a temp dir."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="drpo-worker-")
        out = []
        for i, item in enumerate(self.items):
            if isinstance(item, str) and self._is_path(item):
                out.append(item)
            else:
                path = os.path.join(self._tmp.name, "%05d.png" % i)
                self.images[i].save(path)
                out.append(path)
        return out

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def by_prompt(prompts: list) -> dict:
    """prompt -> indices, so scorers that take one prompt and many images call once per prompt."""
    groups: dict = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    return groups


def floats(values) -> list:
    """A flat list of floats from a number, list, numpy array or tensor."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (list, tuple)):
        out = []
        for v in values:
            out.extend(floats(v))
        return out
    return [float(values)]


# -- scorer adapters: make_<name>(options) -> (score(batch) -> list[float], version) -----------------

def make_brightness(options: dict):
    _check_options("brightness", options, {"device"})

    def score(batch: Batch) -> list:
        import numpy as np

        return [float(np.asarray(im, dtype=np.float64).mean() / 255.0) for im in batch.images]

    return score, "1"


def make_hpsv2(options: dict):
    _check_options("hpsv2", options, {"device", "version", "checkpoint"})
    try:
        import hpsv2
    except Exception as err:
        raise missing_package("hpsv2", "hpsv2", err) from None
    hps_version = options.get("version", "v2.1")
    checkpoint = options.get("checkpoint")

    def score(batch: Batch) -> list:
        out = [0.0] * len(batch.prompts)
        for prompt, idx in by_prompt(batch.prompts).items():
            values = floats(hpsv2.score([batch.images[i] for i in idx], prompt, cp=checkpoint, hps_version=hps_version))
            if len(values) != len(idx):
                raise RuntimeError(f"hpsv2.score returned {len(values)} scores for {len(idx)} images")
            for i, v in zip(idx, values):
                out[i] = v
        return out

    return score, package_version("hpsv2")


def make_hpsv3(options: dict):
    _check_options("hpsv3", options, {"device", "config_path", "checkpoint_path"})
    try:
        from hpsv3 import HPSv3RewardInferencer
    except Exception as err:
        raise missing_package("hpsv3", "hpsv3", err) from None
    import torch

    inferencer = HPSv3RewardInferencer(
        config_path=options.get("config_path"), checkpoint_path=options.get("checkpoint_path"),
        device=options.get("device", "cuda"),
    )

    def score(batch: Batch) -> list:
        with torch.no_grad():
            rewards = inferencer.reward(prompts=batch.prompts, image_paths=batch.paths())
        return [floats(r)[0] for r in rewards]  # column 0: μ of the predicted score distribution

    return score, package_version("hpsv3")


def make_imagereward(options: dict):
    _check_options("imagereward", options, {"device", "checkpoint", "med_config", "download_root"})
    try:
        import ImageReward as RM
    except Exception as err:
        raise missing_package("image-reward", "imagereward", err) from None
    import torch

    kwargs = {k: options[k] for k in ("med_config", "download_root") if options.get(k)}
    model = RM.load(options.get("checkpoint", "ImageReward-v1.0"), device=options.get("device", "cpu"), **kwargs)

    def score(batch: Batch) -> list:
        with torch.no_grad():
            return [floats(model.score(p, im))[0] for p, im in zip(batch.prompts, batch.images)]

    return score, package_version("image-reward")


GENEVAL_DEFAULTS = {
    "threshold": 0.3, "counting_threshold": 0.9, "max_objects": 16, "max_overlap": 1.0,
    "position_threshold": 0.1, "clip_model": "ViT-L-14", "bgcolor": "#999", "crop": "1",
    "model": "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco",
}


def geneval_row(meta, prompt: str) -> dict:
    """The GenEval metadata row (tag/include/exclude) from `meta`, unwrapping a manifest row."""
    if isinstance(meta, dict) and "include" not in meta and isinstance(meta.get("metadata"), dict):
        meta = meta["metadata"]
    if not isinstance(meta, dict) or "tag" not in meta or "include" not in meta:
        raise ValueError(f"prompt {prompt!r}: metadata {meta!r} is not a GenEval row (needs tag, include, exclude)")
    row = dict(meta)
    row.setdefault("prompt", prompt)
    row.setdefault("exclude", [])
    return row


def make_geneval(options: dict):
    _check_options("geneval", options, {"device", "repo", "model_path", "model_config", *GENEVAL_DEFAULTS})
    repo = options.get("repo") or os.environ.get("GENEVAL_REPO") or "models/geneval"
    script = os.path.join(repo, "evaluation", "evaluate_images.py")
    if not os.path.isfile(script):
        raise ScorerUnavailable(
            f"the geneval scorer needs a GenEval checkout: {script} does not exist; clone the GenEval repository "
            f"on a machine with internet, download its detector weights (evaluation/download_models.sh), and set "
            f"options.repo (or GENEVAL_REPO) and options.model_path"
        )
    model_path = options.get("model_path") or os.path.join(repo, "models")
    settings = {k: options.get(k, v) for k, v in GENEVAL_DEFAULTS.items()}
    weights = os.path.join(model_path, settings["model"] + ".pth")
    if not os.path.isfile(weights):
        raise ScorerUnavailable(f"the geneval scorer: detector weights {weights} do not exist; set options.model_path")
    try:
        import mmdet

        spec = importlib.util.spec_from_file_location("geneval_evaluate_images", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # GenEval's evaluator (it asserts a CUDA device at import)
    except (ImportError, AssertionError) as err:
        raise missing_package("mmdet/open_clip/clip_benchmark (and a CUDA device)", "geneval", err) from None
    config = options.get("model_config") or os.path.join(
        os.path.dirname(mmdet.__file__), "../configs/mask2former/%s.py" % settings["model"]
    )
    # The evaluator reads its settings from module globals that its own main() would set.
    args = argparse.Namespace(
        model_config=config, model_path=model_path,
        options={k: str(settings[k]) for k in ("model", "clip_model", "bgcolor", "crop")},
    )
    module.args = args
    detector, (clip_model, transform, tokenizer), classnames = module.load_models(args)
    module.object_detector, module.classnames = detector, classnames
    module.clip_model, module.transform, module.tokenizer = clip_model, transform, tokenizer
    module.THRESHOLD = float(settings["threshold"])
    module.COUNTING_THRESHOLD = float(settings["counting_threshold"])
    module.MAX_OBJECTS = int(settings["max_objects"])
    module.NMS_THRESHOLD = float(settings["max_overlap"])
    module.POSITION_THRESHOLD = float(settings["position_threshold"])

    def score(batch: Batch) -> list:
        rows = [geneval_row(m, p) for m, p in zip(batch.metadata, batch.prompts)]
        return [1.0 if module.evaluate_image(path, row)["correct"] else 0.0 for path, row in zip(batch.paths(), rows)]

    return score, package_version("mmdet")


SCORERS = {
    "brightness": make_brightness, "hpsv2": make_hpsv2, "hpsv3": make_hpsv3,
    "imagereward": make_imagereward, "geneval": make_geneval,
}


# -- twins: deterministic stand-ins for the scorers above (the test studies, config/test/*.yaml) -------
#
# `--options '{"twin": "<folder>"}'` serves a twin of the named scorer instead of the scorer: the same
# process, handshake and requests, no scorer package or weights. `<folder>/twin.json` (written by
# `drpo twins`) holds its parameters. hpsv2 / hpsv3 / imagereward: bias + scale × (weights · a 4 × 4
# RGB thumbnail in [0, 1] − its mean weight / 2) + prompt_weight × a hash of the prompt in [−0.5, 0.5).
# geneval: the request's GenEval row is checked as the real scorer checks it (a row without tag and
# include is an error), then 1.0 when the tag's cell of the 4 × 4 thumbnail is brighter than the
# image's mean, else 0.0 (so candidates of one prompt both pass and fail, as binary rewards need).

def _twin_params(scorer: str, options: dict) -> dict:
    _check_options("%s twin" % scorer, options, {"device", "twin"})
    path = os.path.join(str(options["twin"]), "twin.json")
    if not os.path.isfile(path):
        raise ScorerUnavailable("the %s twin: %s does not exist; build it with `drpo twins --out <dir> %s`" % (scorer, path, scorer))
    with open(path, encoding="utf-8") as fh:
        params = json.load(fh).get("params", {})
    if params.get("scorer") != scorer:
        raise ScorerUnavailable("%s holds a twin of %r, not of %s" % (path, params.get("scorer"), scorer))
    return params


def _thumbnail(image) -> list:
    return [v / 255.0 for px in image.resize((4, 4)).getdata() for v in px]


def make_twin(scorer: str, options: dict):
    params = _twin_params(scorer, options)
    if scorer == "geneval":
        cells = params["cells"]

        def score(batch: Batch) -> list:
            rows = [geneval_row(m, p) for m, p in zip(batch.metadata, batch.prompts)]
            out = []
            for image, row in zip(batch.images, rows):
                thumb = _thumbnail(image)
                cell = int(cells.get(row["tag"], 0)) % 16  # the tag's cell of the 4 x 4 thumbnail
                out.append(1.0 if sum(thumb[3 * cell:3 * cell + 3]) > sum(thumb) / 16.0 else 0.0)
            return out

        return score, "twin"
    weights, bias, scale = [float(w) for w in params["weights"]], float(params["bias"]), float(params["scale"])
    offset, prompt_weight = sum(weights) / 2.0, float(params["prompt_weight"])

    def score(batch: Batch) -> list:
        out = []
        for image, prompt in zip(batch.images, batch.prompts):
            pixels = sum(w * v for w, v in zip(weights, _thumbnail(image))) - offset
            text = (zlib.crc32(prompt.encode("utf-8")) % 1000) / 1000.0 - 0.5
            out.append(bias + scale * (pixels + prompt_weight * text))
        return out

    return score, "twin"


def make_scorer(scorer: str, options: dict):
    """(score, version) of a scorer, or of its twin when options name one."""
    if scorer not in SCORERS:
        raise ScorerUnavailable(f"unknown scorer {scorer!r}; known: {sorted(SCORERS)}")
    if "twin" in options and scorer != "brightness":
        return make_twin(scorer, options)
    return SCORERS[scorer](options)


# -- the loop ---------------------------------------------------------------------------------------

def _protocol_stream():
    """A private copy of stdout for the protocol; fd 1 (and sys.stdout) now go to stderr."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _answer(out, obj: dict) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def handle(score, line: str) -> dict:
    """One request line → one answer dict (never raises)."""
    request_id = None
    batch = None
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("a request must be a JSON object")
        request_id = request.get("id")
        prompts = request.get("prompts")
        metadata = request.get("metadata") or [{} for _ in (prompts or [])]
        batch = Batch(request.get("images"), prompts, metadata)
        scores = floats(score(batch)) if batch.prompts else []
        if len(scores) != len(batch.prompts):
            raise RuntimeError(f"the scorer returned {len(scores)} scores for {len(batch.prompts)} images")
        return {"id": request_id, "scores": scores}
    except Exception as err:  # report and keep serving
        traceback.print_exc(file=sys.stderr)
        return {"id": request_id, "error": f"{type(err).__name__}: {err}"}
    finally:
        if batch is not None:
            batch.close()


def serve(scorer: str, options: dict, stdin=None, out=None) -> int:
    stdin = stdin if stdin is not None else sys.stdin
    out = out if out is not None else _protocol_stream()
    try:
        score, version = make_scorer(scorer, dict(options))
    except Exception as err:
        traceback.print_exc(file=sys.stderr)
        message = str(err) if isinstance(err, ScorerUnavailable) else f"{type(err).__name__}: {err}"
        _answer(out, {"protocol": PROTOCOL, "name": scorer, "ready": False, "error": message})
        return 3
    _answer(out, {"protocol": PROTOCOL, "name": scorer, "version": version, "ready": True, "pid": os.getpid()})
    for line in stdin:
        if line.strip():
            _answer(out, handle(score, line))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="drpo-reward-worker", description="Serve one reward scorer over JSON lines (see the module docstring).")
    parser.add_argument("--scorer", required=True, help="one of: " + ", ".join(sorted(SCORERS)))
    parser.add_argument("--options", default="{}", help="JSON object of scorer options (device, checkpoint, ...)")
    args = parser.parse_args(argv)
    try:
        options = json.loads(args.options)
        if not isinstance(options, dict):
            raise ValueError("not an object")
    except ValueError as err:
        parser.error(f"--options must be a JSON object ({err})")
    return serve(args.scorer, options)


if __name__ == "__main__":
    # Run by file path, this folder is sys.path[0]; drop it so our module names shadow nothing.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    raise SystemExit(main())
