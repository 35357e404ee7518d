"""`drpo fetch --config FILE`: every model, weight file, dataset and environment a study needs.

    drpo fetch --config config/paper/sd-turbo.yaml --dry-run     # the plan; touches no network
    drpo fetch --config config/paper/sd-turbo.yaml               # download what is missing
    drpo fetch --config config/paper/sdxl-turbo.yaml --models-dir models

The plan is read from the config the way the jobs read it: `models.*.path` (generators and the
multi-step reference models), every reward and metric spec (`options.path`, `.processor`, `.clip`;
worker-based scorers are conda *environments*), each training run's effective `features` (defaults,
run overrides and ablation points), `evaluation.fid` / `distance` extractors, the Qwen3-VL judge
(`backend: qwen`) and the Pick-a-Pic parquet files of `datasets:`. Packaged prompt sets are not
listed; a `source: file` prompt set is (drpo cannot download it).

An item is present when the project would find it: an existing path, or a Hugging Face cache entry
(`drpo.hub.resolve_model`, offline) whose folder holds what the loaders read. Downloads: Hugging Face
repos through `huggingface_hub.snapshot_download` with `allow_patterns` for the files the code loads
(into the cache, or `--models-dir DIR/<name>`); single files (LAION aesthetic MLP, clean-fid's
Inception, the latent-MAE checkpoint on ModelScope) through `download_url`: resumable (`<dest>.part`
and a Range header), sha256-checked where a hash is published, renamed onto `<dest>` only after the
check. Offline (`HF_HUB_OFFLINE=1`, `--offline`, or a host that does not answer) nothing is tried
and the command exits 1 naming every missing item and how to get it.
"""

from __future__ import annotations

import os
import sys

# drpo.hub sets HF_HUB_OFFLINE=1 by default when imported, so what the user asked for is read before
# it (`drpo fetch`, drpo/commands/fetch.py, imports this module first). Imported after drpo.hub, the
# current value counts.
_UNKNOWN = object()
_HF_OFFLINE_AT_IMPORT = _UNKNOWN if "drpo.hub" in sys.modules else os.environ.get("HF_HUB_OFFLINE")

import contextlib  # noqa: E402
import fnmatch  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from drpo.config import merge_overrides  # noqa: E402
from drpo.errors import UserError  # noqa: E402
from drpo.io import sha256_file  # noqa: E402  (re-exported: drpo.fetch.sha256_file)
from drpo.train.registry import method_spec  # noqa: E402

log = logging.getLogger(__name__)

# -- what is known about each item ----------------------------------------------------------------

GB, MB = 1e9, 1e6
# Approximate download sizes (bytes) of what `drpo fetch` downloads (the allow_patterns below), from
# parameter counts x bytes per parameter; None = not known here. Keyed by id (and variant).
APPROX_SIZES: dict[str, float | None] = {
    "stabilityai/sd-turbo": 5.2 * GB,  # fp32 components: UNet 3.5 GB, OpenCLIP-H text encoder 1.4 GB, VAE 0.3 GB
    "stabilityai/sdxl-turbo:fp16": 6.9 * GB,  # fp16 variant: UNet 5.1 GB, text encoders 0.25 + 1.4 GB, VAE 0.2 GB
    "stable-diffusion-v1-5/stable-diffusion-v1-5": 5.5 * GB,  # fp32, with the 1.2 GB safety checker
    "stabilityai/stable-diffusion-2-1": 5.2 * GB,  # fp32, SD-Turbo's architecture
    "stabilityai/stable-diffusion-xl-base-1.0": 13.9 * GB,  # fp32: UNet 10.3 GB, text encoders 0.5 + 2.8 GB
    "SimianLuo/LCM_Dreamshaper_v7": None,
    "mhdang/dpo-sdxl-text2image-v1": None,
    "yuvalkirstain/PickScore_v1": 3.9 * GB,  # CLIP ViT-H/14, fp32
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K:processor": 4 * MB,  # tokenizer + processor files only
    "openai/clip-vit-large-patch14": 1.7 * GB,
    "facebook/vit-mae-base": 0.45 * GB,  # encoder + decoder, fp32
    "facebook/dinov2-base": 0.35 * GB,
    "Qwen/Qwen3-VL-8B-Instruct": 17.5 * GB,  # bf16
    "sac+logos+ava1-l14-linearMSE.pth": 3.7 * MB,  # a 5-layer MLP on CLIP-L embeddings
    "inception-2015-12-05.pt": 0.1 * GB,
    "mae_latent_256_torch.pth": None,
}

# Published sha256 of single-file downloads. None: no hash is published that can be checked here;
# the sha256 of what was downloaded is printed instead, to be recorded.
SHA256: dict[str, str | None] = {
    "sac+logos+ava1-l14-linearMSE.pth": None,
    "inception-2015-12-05.pt": None,
    "mae_latent_256_torch.pth": None,
}

AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = f"https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/{AESTHETIC_FILE}"
INCEPTION_FILE = "inception-2015-12-05.pt"
# clean-fid's own URL (cleanfid/downloads_helper.py; also drpo.eval.fid.INCEPTION_URL)
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
LATENT_MAE_FILE = "mae_latent_256_torch.pth"
LATENT_MAE_REPO = "jiangzhou130v1/drpo-mae-latent-256"
# ModelScope's public file endpoint (plain HTTP GET, no account)
MODELSCOPE_FILE_URL = "https://www.modelscope.cn/api/v1/models/{repo}/repo?Revision=master&FilePath={file}"
PICKAPIC_REPO = "yuvalkirstain/pickapic_v2"
GENEVAL_GIT = "https://github.com/djghosh13/geneval"

# name of a single file -> (url, what it is)
KNOWN_FILES: dict[str, tuple[str, str]] = {
    AESTHETIC_FILE: (AESTHETIC_URL, "LAION aesthetic MLP (improved-aesthetic-predictor, GitHub)"),
    INCEPTION_FILE: (INCEPTION_URL, "clean-fid's TorchScript InceptionV3"),
    LATENT_MAE_FILE: (MODELSCOPE_FILE_URL.format(repo=LATENT_MAE_REPO, file=LATENT_MAE_FILE),
                      f"latent-MAE checkpoint (ModelScope {LATENT_MAE_REPO})"),
}

# Defaults of the loaders (tests check these against the classes).
PICKSCORE_DEFAULT = "yuvalkirstain/PickScore_v1"
CLIP_DEFAULT = "openai/clip-vit-large-patch14"
AESTHETIC_DEFAULT = f"models/{AESTHETIC_FILE}"
QWEN_DEFAULT = "Qwen/Qwen3-VL-8B-Instruct"
FEATURE_DEFAULT_PATHS = {"vit_mae": "facebook/vit-mae-base", "dinov2": "facebook/dinov2-base", "clip": PICKSCORE_DEFAULT}
FEATURES_WITHOUT_WEIGHTS = {"latent", "teacher_unet"}  # raw latents; the generator's own UNet
WORKER_SCORERS = {"hpsv2": "hpsv2", "hpsv3": "hpsv3", "imagereward": "imagereward", "geneval": "geneval"}
SCORER_PACKAGES = {"hpsv2": "hpsv2", "hpsv3": "hpsv3", "imagereward": "ImageReward", "geneval": "mmdet"}

# -- which files of a Hugging Face repo the loaders read -------------------------------------------

DIFFUSERS_FILES = ["model_index.json", "*/*.json", "*/*.txt"]  # component configs, scheduler, tokenizers
DIFFUSERS_WEIGHTS = {
    None: ["*/diffusion_pytorch_model.safetensors", "*/model.safetensors",
           "*/diffusion_pytorch_model-*-of-*.safetensors", "*/model-*-of-*.safetensors"],
    "fp16": ["*/diffusion_pytorch_model.fp16.safetensors", "*/model.fp16.safetensors",
             "*/diffusion_pytorch_model.fp16-*-of-*.safetensors", "*/model.fp16-*-of-*.safetensors"],
}
TRANSFORMERS_FILES = ["*.json", "*.txt", "*.model", "*.jinja", "model.safetensors", "model-*-of-*.safetensors"]
PROCESSOR_FILES = ["*.json", "*.txt", "*.model"]
KIND_ORDER = ("model", "processor", "weights", "dataset", "prompts", "environment", "checkout")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pkl", ".parquet", ".txt", ".jsonl", ".json", ".tsv", ".npz")


def hub_patterns(layout: str, variant: str | None = None) -> list[str]:
    """allow_patterns for a repo loaded as `layout` (diffusers | transformers | processor): the
    configs and the weights the loader picks (no single-file checkpoints, no .ckpt/.bin duplicates,
    no TF/Flax/ONNX files; the fp16 files only for the fp16 variant)."""
    if layout == "diffusers":
        return DIFFUSERS_FILES + DIFFUSERS_WEIGHTS[variant]
    if layout == "transformers":
        return list(TRANSFORMERS_FILES)
    if layout == "processor":
        return list(PROCESSOR_FILES)
    raise ValueError(f"unknown layout {layout!r}")


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def _is_variant(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return ".fp16." in name or ".fp16-" in name


def refine_patterns(files: Iterable[str], patterns: list[str], layout: str, variant: str | None = None) -> list[str]:
    """`patterns` plus fallbacks for a repo's real file list: a model folder whose preferred weights
    are absent gets what the loader falls back to (the plain safetensors when a component lacks the
    variant, else .bin), as diffusers and transformers do."""
    files = list(files)
    if layout == "processor":
        return list(patterns)
    folders = {p.rsplit("/", 1)[0] if "/" in p else "" for p in files if p.endswith("config.json")}
    if layout == "diffusers":
        folders.discard("")
    else:
        folders = {""}
    out = list(patterns)
    for folder in sorted(folders):
        inside = [f for f in files if (f.rsplit("/", 1)[0] if "/" in f else "") == folder]
        weights = [f for f in inside if f.endswith(WEIGHT_SUFFIXES)]
        if not weights or any(_matches(f, out) for f in weights):
            continue
        plain = [f for f in weights if not _is_variant(f)]
        out.extend([f for f in plain if f.endswith(".safetensors")] or plain or weights)
    return out


def check_folder(folder: str | os.PathLike, layout: str | None) -> str | None:
    """None when `folder` holds what the loader reads for `layout`, else what is missing."""
    folder = Path(folder)
    if layout is None:
        return None
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if layout == "processor":
        if not any((folder / f).is_file() for f in ("preprocessor_config.json", "tokenizer_config.json")):
            return "no preprocessor_config.json or tokenizer_config.json"
        return None
    if layout == "transformers":
        if not (folder / "config.json").is_file():
            return "no config.json"
        if not any(f.name.endswith(WEIGHT_SUFFIXES) or f.name.endswith(".index.json") for f in folder.iterdir()):
            return "no weights (model*.safetensors or pytorch_model*.bin)"
        return None
    index = folder / "model_index.json"
    if not index.is_file():
        return "no model_index.json (not a diffusers pipeline folder)"
    try:
        components = json.loads(index.read_text())
    except (OSError, ValueError) as err:
        return f"model_index.json unreadable ({err})"
    for name, value in components.items():
        if name.startswith("_") or not isinstance(value, list) or not value or value[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            return f"component folder {name}/ missing"
        if (sub / "config.json").is_file() and not any(f.name.endswith(WEIGHT_SUFFIXES) for f in sub.iterdir()):
            return f"no weights in {name}/"
    return None


# -- the plan --------------------------------------------------------------------------------------


@dataclass
class Item:
    """One thing the study needs."""

    name: str  # what the config names: a hub id, a path, an environment prefix
    kind: str  # model | processor | weights | dataset | environment | checkout | prompts
    source: str  # where it comes from, in words
    used_by: list[str] = field(default_factory=list)  # config keys naming it
    size: float | None = None  # approximate bytes
    dest: str = ""  # where it is looked for / goes
    fetch: str = "manual"  # hf | hf-dataset | url | manual
    repo_id: str | None = None
    repo_type: str = "model"
    layout: str | None = None  # diffusers | transformers | processor (hub and local folders)
    variant: str | None = None
    patterns: list[str] | None = None
    url: str | None = None
    sha256: str | None = None
    how: str = ""  # how to get it by hand
    present: bool = False
    location: str | None = None  # where it was found
    problem: str | None = None  # why it is missing
    note: str | None = None  # what else to do (a --models-dir folder the config does not name yet)

    def to_json(self) -> dict:
        return asdict(self)


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_file(path: str) -> bool:
    return Path(path).suffix.lower() in FILE_SUFFIXES


def looks_like_hub_id(path: str) -> bool:
    """drpo.hub.resolve_model's rule (owner/name, not a path), minus names with a file suffix."""
    return path.count("/") == 1 and not path.startswith((".", "/", "~")) and not _looks_like_file(path)


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


class Plan:
    """Items by key, merged when two config keys name the same thing."""

    def __init__(self, config: dict, models_dir: str | None = None, pickapic_repo: str = PICKAPIC_REPO,
                 config_path: str = "<config>"):
        self.config, self.models_dir, self.pickapic_repo = config, models_dir, pickapic_repo
        self.config_path = config_path
        self.results = str(config.get("results", "results")).rstrip("/")
        self.items: dict[str, Item] = {}

    def built_by_workflow(self, path: str) -> bool:
        return path == self.results or path.startswith(self.results + "/")

    def _add(self, key: str, item: Item) -> Item:
        old = self.items.get(key)
        if old is None:
            self.items[key] = item
            return item
        for where in item.used_by:
            if where not in old.used_by:
                old.used_by.append(where)
        if old.kind == "processor" and item.kind == "model":  # the full model covers the processor files
            old.kind, old.layout, old.size, old.source = item.kind, item.layout, item.size, item.source
            old.patterns = sorted(set(old.patterns or []) | set(item.patterns or []))
        return old

    # a model folder: a local path or a hub id
    def model(self, path: str, where: str, layout: str, variant: str | None = None, what: str = "model") -> None:
        path = str(path)
        if self.built_by_workflow(path):
            return
        kind = "processor" if layout == "processor" else "model"
        if looks_like_hub_id(path) and not Path(path).expanduser().exists():
            size_key = f"{path}:{variant}" if variant else (f"{path}:processor" if layout == "processor" else path)
            name = path.split("/")[-1]
            dest = str(Path(self.models_dir) / name) if self.models_dir else f"Hugging Face cache ({hf_cache_dir()})"
            what_files = {"diffusers": "diffusers pipeline", "transformers": "transformers model",
                          "processor": "tokenizer and processor files only"}[layout]
            extra = f", {variant} variant" if variant else ""
            patterns = hub_patterns(layout, variant)
            self._add(f"hf:{path}", Item(
                name=path, kind=kind, source=f"Hugging Face {path} ({what_files}{extra})", used_by=[where],
                size=APPROX_SIZES.get(size_key, APPROX_SIZES.get(path)), dest=dest, fetch="hf", repo_id=path,
                layout=layout, variant=variant, patterns=patterns,
                how=(f"on a machine with internet run `drpo fetch --config {self.config_path}` (only the files the "
                     f"loaders read), then copy its {hf_cache_dir()}/models--{path.replace('/', '--')} into this "
                     f"machine's Hugging Face cache; or download a folder (`--models-dir DIR`) and set {where} to it"),
            ))
            return
        self._add(f"path:{Path(path).expanduser()}", Item(
            name=path, kind=kind, source=f"local folder ({what})", used_by=[where], dest=path, layout=layout,
            how=f"{where} names a local path that does not exist: put the {what} there, or use a Hugging Face id",
        ))

    # a single weight file: a path the config names
    def weights(self, path: str, where: str, what: str, default_name: str | None = None, hub_layout: str | None = None) -> None:
        path = str(path)
        if self.built_by_workflow(path):
            return
        p = Path(path).expanduser()
        if default_name and (p.is_dir() or path.endswith("/")):
            p = p / default_name  # a folder holding the file (clean-fid's Inception)
        if hub_layout and looks_like_hub_id(path) and not p.exists():
            self.model(path, where, hub_layout, what=what)
            return
        url, desc = KNOWN_FILES.get(p.name, (None, what))
        item = Item(name=str(p), kind="weights", source=desc, used_by=[where], dest=str(p), size=APPROX_SIZES.get(p.name),
                    sha256=SHA256.get(p.name))
        if url:
            item.fetch, item.url = "url", url
            item.source = f"{desc}: {url}"
            item.how = f"curl -L --fail -o '{p}' '{url}'" + (f" and check sha256 {item.sha256}" if item.sha256 else "")
        else:
            item.how = f"{where}: put the {what} at {p} (no known download for a file named {p.name})"
        self._add(f"path:{p}", item)

    def reward(self, spec, where: str) -> None:
        if isinstance(spec, str):
            spec = {"name": spec}
        name, options = spec.get("name"), dict(spec.get("options") or {})
        if name in ("pickscore", "world_pickscore", "clip"):
            default = {"pickscore": PICKSCORE_DEFAULT, "clip": CLIP_DEFAULT, "world_pickscore": f"{self.results}/world/reward_model"}[name]
            self.model(options.get("path", default), f"{where}.options.path", "transformers", what=f"{name} CLIP model")
            if options.get("processor"):
                self.model(options["processor"], f"{where}.options.processor", "processor", what="CLIP processor")
        elif name == "aesthetic":
            self.weights(options.get("path", AESTHETIC_DEFAULT), f"{where}.options.path", "aesthetic MLP weights")
            self.model(options.get("clip", CLIP_DEFAULT), f"{where}.options.clip", "transformers", what="aesthetic CLIP backbone")
            if options.get("processor"):
                self.model(options["processor"], f"{where}.options.processor", "processor", what="CLIP processor")
        elif name in WORKER_SCORERS or (name == "worker" and options.get("scorer") in WORKER_SCORERS):
            scorer = WORKER_SCORERS.get(name) or options["scorer"]
            self.environment(scorer, options.get("python"), f"{where}.options.python")
            if scorer == "geneval":
                self.geneval_checkout(options, where)

    def environment(self, scorer: str, python: str | None, where: str) -> None:
        from drpo.rewards.worker import ENV_FILES

        env_file = f"envs/{ENV_FILES.get(scorer, 'core.yaml')}"
        if python is None:  # the scorer runs in this interpreter: its package must import here
            package = SCORER_PACKAGES[scorer]
            self._add(f"env:{sys.executable}:{scorer}", Item(
                name=f"{scorer} in this Python", kind="environment", source=f"package {package} ({env_file})",
                used_by=[where], dest=sys.executable, patterns=[package],
                how=f"create its environment (conda env create -f {env_file} -p envs/{scorer}) and set {where} to envs/{scorer}/bin/python",
            ))
            return
        prefix = str(Path(python).parent.parent) if Path(python).parent.name == "bin" else None
        create = f"conda env create -f {env_file} -p {prefix}" if prefix else f"conda env create -f {env_file}"
        self._add(f"env:{Path(python).expanduser()}", Item(
            name=prefix or python, kind="environment", source=f"conda environment from {env_file}", used_by=[where],
            dest=python,
            how=(f"{create} (not a download drpo does: it needs conda and the network); its scorer package may fetch its "
                 f"own checkpoint on first use" + ("" if prefix else f", then set {where} to its bin/python")),
        ))

    def geneval_checkout(self, options: dict, where: str) -> None:
        from drpo.rewards.worker import GENEVAL_DEFAULTS

        repo = options.get("repo") or os.environ.get("GENEVAL_REPO") or "models/geneval"
        model_path = options.get("model_path") or os.path.join(repo, "models")
        model = options.get("model", GENEVAL_DEFAULTS["model"])
        self._add(f"checkout:{repo}", Item(
            name=repo, kind="checkout", source=f"git {GENEVAL_GIT} + its detector weights ({model}.pth)",
            used_by=[f"{where}.options.repo"], dest=repo, size=None,
            how=(f"git clone {GENEVAL_GIT} {repo} && (cd {repo} && bash evaluation/download_models.sh {os.path.relpath(model_path, repo)})"
                 f" — the detector weights go to {model_path}/{model}.pth"),
            patterns=[os.path.join(repo, "evaluation", "evaluate_images.py"), os.path.join(model_path, f"{model}.pth")],
        ))

    def features(self, spec: dict | None, where: str) -> None:
        spec = spec or {"name": "latent_mae"}  # TrainConfig's default feature map
        name, options = spec.get("name", "latent_mae"), dict(spec.get("options") or {})
        if name in FEATURES_WITHOUT_WEIGHTS:
            return
        if name == "latent_mae":
            if not options.get("path"):
                self._add(f"unset:{where}", Item(
                    name=f"{where}.options.path", kind="weights", source="latent-MAE checkpoint: not set in the config",
                    used_by=[where], how=f"set {where}.options.path to {LATENT_MAE_FILE} (ModelScope {LATENT_MAE_REPO})"))
                return
            self.weights(options["path"], f"{where}.options.path", "latent-MAE checkpoint", hub_layout="transformers")
            return
        default = FEATURE_DEFAULT_PATHS.get(name)
        if default is None:
            return
        self.model(options.get("path", default), f"{where}.options.path", "transformers", what=f"{name} feature model")

    def extractor(self, spec: dict, where: str) -> None:
        extractor = spec.get("extractor", "inception")
        options = dict(spec.get("options") or {})
        if extractor == "inception":
            path = options.get("path") or spec.get("inception")
            key = f"{where}.options.path" if options.get("path") else f"{where}.inception"
            if path:
                self.weights(path, key, "Inception weights", default_name=INCEPTION_FILE)
        elif extractor in ("clip", "dinov2") and options.get("path"):
            self.model(options["path"], f"{where}.options.path", "transformers", what=f"{extractor} extractor")

    def dataset(self, name: str, spec: dict) -> None:
        if spec.get("source") != "pickapic_v2":
            return
        for i, f in enumerate(spec.get("parquet") or []):
            p = Path(f).expanduser()
            pattern = f"*{p.stem}*.parquet"
            self._add(f"path:{p}", Item(
                name=str(f), kind="dataset", source=f"Hugging Face dataset {self.pickapic_repo}, file {pattern}",
                used_by=[f"datasets.{name}.parquet[{i}]"], dest=str(f), fetch="hf-dataset", repo_id=self.pickapic_repo,
                repo_type="dataset", patterns=[pattern], size=None,
                how=(f"hf download {self.pickapic_repo} --repo-type dataset --include '{pattern}' on a machine with internet "
                     f"and copy that file to {f} (the original {PICKAPIC_REPO} has been unavailable since 2025: give a "
                     f"mirror with --pickapic-repo)"),
            ))

    def prompt_file(self, name: str, spec: dict) -> None:
        path = spec.get("path")
        if spec.get("source") != "file" or not path or self.built_by_workflow(path):
            return
        self._add(f"path:{Path(path).expanduser()}", Item(
            name=path, kind="prompts", source="a prompt file the config names (not downloadable)",
            used_by=[f"prompt_sets.{name}.path"], dest=path,
            how=f"put the prompt file at {path} (one prompt per line, or jsonl), or use a packaged prompt set",
        ))


def build_plan(config: dict, *, models_dir: str | None = None, pickapic_repo: str = PICKAPIC_REPO,
               config_path: str = "<config>") -> list[Item]:
    """Every item a (validated) workflow config needs, with where it is looked for and whether it
    is there (`locate`)."""
    from drpo import workflow as wf

    plan = Plan(config, models_dir=models_dir, pickapic_repo=pickapic_repo, config_path=config_path)
    for name, model in config.get("models", {}).items():
        one_step = model.get("kind", "one_step") == "one_step"
        variant = "fp16" if one_step and model.get("family") == "sdxl-turbo" else None  # generators.py loads it
        plan.model(model["path"], f"models.{name}.path", "diffusers", variant=variant, what="diffusers pipeline")
    for name, specs in config.get("rewards", {}).items():
        for i, spec in enumerate(specs):
            plan.reward(spec, f"rewards.{name}[{i}]")
    defaults = config["training"].get("defaults", {})
    for run in wf.runs(config).values():
        if not method_spec(run.spec["method"]).features:
            continue
        features = merge_overrides(dict(defaults), run.overrides).get("features")
        where = "training.defaults.features"
        if "features" in run.overrides:
            ablation = run.spec.get("ablation")
            where = f"training.ablations.{ablation}.values" if ablation else f"training.runs.{run.name}.set.features"
        plan.features(features, where)
    evaluation = config.get("evaluation", {})
    for name, spec in evaluation.get("metrics", {}).items():
        plan.reward(spec, f"evaluation.metrics.{name}")
    for name in ("fid", "distance"):
        if evaluation.get(name):
            plan.extractor(evaluation[name], f"evaluation.{name}")
    judge = evaluation.get("judge") or {}
    if judge.get("backend") == "qwen":
        plan.model(judge.get("model") or QWEN_DEFAULT, "evaluation.judge.model", "transformers", what="Qwen3-VL judge")
    for name, spec in config.get("datasets", {}).items():
        plan.dataset(name, spec)
    for name, spec in config.get("prompt_sets", {}).items():
        plan.prompt_file(name, spec)
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    items = sorted(plan.items.values(), key=lambda i: order.get(i.kind, len(order)))  # stable: config order within a kind
    for item in items:
        locate(item, models_dir)
    return items


def locate(item: Item, models_dir: str | None = None) -> Item:
    """Set item.present / location / problem: where the project would find it, offline."""
    item.present, item.location, item.problem, item.note = False, None, None, None
    if item.kind == "environment" and item.dest == sys.executable and item.patterns:
        import importlib.util

        package = item.patterns[0]
        item.present = importlib.util.find_spec(package) is not None
        item.location = item.dest if item.present else None
        item.problem = None if item.present else f"{package} does not import in {item.dest}"
        return item
    if item.kind == "environment":
        if Path(item.dest).expanduser().is_file():
            item.present, item.location = True, item.dest
        else:
            item.problem = f"{item.dest} does not exist"
        return item
    if item.kind == "checkout":
        missing = [p for p in item.patterns or [] if not Path(p).is_file()]
        item.present = not missing
        item.location = item.dest if item.present else None
        item.problem = f"missing {', '.join(missing)}" if missing else None
        return item
    if item.fetch == "hf":
        from drpo.hub import ModelNotFoundError, resolve_model

        try:
            folder = resolve_model(item.repo_id, what=item.kind, allow_patterns=item.patterns)
        except ModelNotFoundError:
            folder = None
        if folder is not None:
            problem = check_folder(folder, item.layout)
            if problem is None:
                item.present, item.location = True, str(folder)
                return item
            item.problem = f"Hugging Face cache entry {folder} is incomplete: {problem}"
        else:
            item.problem = "not in the Hugging Face cache"
        if models_dir:
            local = Path(models_dir) / item.repo_id.split("/")[-1]
            if local.exists() and check_folder(local, item.layout) is None:
                item.present, item.location, item.problem = True, str(local), None
                item.note = f"a folder, not the id: point {', '.join(item.used_by)} at it"
                return item
        return item
    p = Path(item.dest).expanduser()
    if item.kind in ("model", "processor"):
        if p.exists():
            problem = check_folder(p, item.layout) if p.is_dir() else None
            if problem is None:
                item.present, item.location = True, str(p)
            else:
                item.problem = f"{p} is incomplete: {problem}"
        else:
            item.problem = f"{p} does not exist"
        return item
    if p.is_file() or (item.kind == "weights" and p.is_dir()):
        item.present, item.location = True, str(p)
        return item
    part = p.with_name(p.name + ".part")
    item.problem = f"{p} does not exist" + (f" (a partial download of {part.stat().st_size} bytes will resume)" if part.is_file() else "")
    return item


# -- printing --------------------------------------------------------------------------------------


def human_size(size: float | None, kind: str | None = None) -> str:
    if kind in ("environment", "prompts"):
        return "n/a"
    if size is None:
        return "unknown"
    for unit, scale in (("GB", GB), ("MB", MB), ("kB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"~{value:.1f} {unit}" if value < 10 else f"~{value:.0f} {unit}"
    return f"~{size:.0f} B"


def format_plan(items: list[Item]) -> str:
    lines = []
    for item in items:
        status = f"present ({item.location})" if item.present else f"MISSING ({item.problem})"
        if item.note:
            status += f"; {item.note}"
        lines.append(f"{item.name}")
        lines.append(f"    kind {item.kind}, size {human_size(item.size, item.kind)}; {status}")
        lines.append(f"    source:      {item.source}")
        lines.append(f"    destination: {item.dest}")
        lines.append(f"    used by:     {', '.join(item.used_by)}")
    missing = [i for i in items if not i.present]
    known = sum(i.size for i in missing if i.size is not None)
    unknown = sum(1 for i in missing if i.size is None and i.fetch != "manual")
    lines.append(
        f"{len(items)} items: {len(items) - len(missing)} present, {len(missing)} missing"
        + (f" (~{known / GB:.1f} GB of known size to download, plus {unknown} of unknown size; sizes are approximate)" if missing else "")
    )
    return "\n".join(lines)


def format_missing(items: list[Item], reason: str) -> str:
    missing = [i for i in items if not i.present]
    lines = [f"{len(missing)} item(s) missing ({reason}); how to get each:"]
    for item in missing:
        lines.append(f"  - {item.name} [{item.kind}, {human_size(item.size, item.kind)}]: {item.problem}")
        lines.append(f"      {item.how}")
    return "\n".join(lines)


# -- downloading -----------------------------------------------------------------------------------


class DownloadError(UserError, RuntimeError):
    """A download that did not complete (network, HTTP status, size)."""


class HTTPStatusError(DownloadError):
    """The server answered with an error status (retrying would give the same answer)."""


class ChecksumMismatch(DownloadError):
    """A downloaded file whose sha256 is not the published one (nothing is left behind)."""


def download_url(
    url: str, dest: str | os.PathLike, *, sha256: str | None = None, timeout: float = 30.0,
    chunk_size: int = 1 << 16, max_resumes: int = 20, session=None, progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """GET `url` into `dest`, resumable: bytes go to `<dest>.part` (a later call, or a retry after a
    cut connection, continues it with a Range header); when complete the sha256 is checked (if
    given) and only then is the .part renamed onto `dest`. A mismatch deletes the .part and raises
    ChecksumMismatch. A request that gets no answer raises at once (no retry), so offline never hangs
    longer than `timeout` (connect, and each read); an answer cut short is resumed."""
    import requests

    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with contextlib.ExitStack() as stack:
        http = session or stack.enter_context(requests.Session())
        _get_into_part(http, url, part, timeout, chunk_size, max_resumes, progress)
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise ChecksumMismatch(f"{url}: sha256 {actual} is not the published {sha256}; the download was deleted")
    os.replace(part, dest)
    return dest


def _get_into_part(http, url: str, part: Path, timeout: float, chunk_size: int, max_resumes: int, progress) -> None:
    """GET `url` until `part` holds the whole body (resuming with Range after a cut connection)."""
    import requests

    resumes = stalls = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        received, total, answered = 0, None, False
        try:
            with http.get(url, headers=headers, stream=True, timeout=(timeout, timeout), allow_redirects=True) as resp:
                answered = True
                if resp.status_code == 416 and offset:  # the .part is already whole (or longer than the file)
                    total = _content_range_total(resp.headers.get("Content-Range"))
                    if total is not None and total == offset:
                        break
                    part.unlink()
                    continue
                if resp.status_code not in (200, 206):
                    raise HTTPStatusError(f"GET {url}: HTTP {resp.status_code}")
                if resp.status_code == 206 and not str(resp.headers.get("Content-Range", "")).startswith(f"bytes {offset}-"):
                    part.unlink(missing_ok=True)  # the server answered another range: start over
                    continue
                mode = "ab" if resp.status_code == 206 else "wb"  # 200: the server ignored the range
                start = offset if mode == "ab" else 0
                length = resp.headers.get("Content-Length")
                total = start + int(length) if length is not None and length.isdigit() else None
                if resp.status_code == 206:
                    total = _content_range_total(resp.headers.get("Content-Range")) or total
                with open(part, mode) as f:
                    for block in resp.iter_content(chunk_size):
                        f.write(block)
                        received += len(block)
                        if progress:
                            progress(start + received, total)
                    f.flush()
                    os.fsync(f.fileno())
                size = part.stat().st_size
                if total is not None and size < total:
                    raise DownloadError(f"GET {url}: connection closed at {size} of {total} bytes")
                if total is not None and size > total:
                    part.unlink()
                    raise DownloadError(f"GET {url}: got {size} bytes, more than the announced {total}")
                break
        except HTTPStatusError:
            raise
        except (requests.RequestException, DownloadError, OSError) as err:
            # No answer (offline, refused, connect timeout): fail at once. An answer cut short: resume
            # from the .part, at most `max_resumes` times, and at most twice in a row without new bytes.
            stalls = 0 if received else stalls + 1
            if not answered or resumes >= max_resumes or stalls > 2:
                raise DownloadError(f"GET {url}: {type(err).__name__}: {err}" + (
                    f" ({part} keeps {part.stat().st_size} bytes; run again to resume)" if part.exists() else "")) from None
            resumes += 1


def _content_range_total(value: str | None) -> int | None:
    """The total of a Content-Range header ('bytes 0-9/100' or 'bytes */100')."""
    if not value or "/" not in value:
        return None
    tail = value.rsplit("/", 1)[1].strip()
    return int(tail) if tail.isdigit() else None


@contextlib.contextmanager
def hub_online():
    """Let huggingface_hub reach the network inside the block (drpo.hub switches it off)."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def download_hub(item: Item, models_dir: str | None = None) -> str:
    """snapshot_download of the files the loader reads (patterns refined by the repo's file list)."""
    from huggingface_hub import HfApi, snapshot_download

    with hub_online():
        files = HfApi().list_repo_files(item.repo_id, repo_type=item.repo_type)
        patterns = refine_patterns(files, item.patterns or [], item.layout or "transformers", item.variant)
        kwargs = {"local_dir": str(Path(models_dir) / item.repo_id.split("/")[-1])} if models_dir else {}
        folder = snapshot_download(item.repo_id, repo_type=item.repo_type, allow_patterns=patterns, **kwargs)
    problem = check_folder(folder, item.layout)
    if problem:
        raise DownloadError(f"{item.repo_id}: downloaded to {folder} but {problem}")
    return str(folder)


def download_hub_file(item: Item) -> str:
    """One file of a hub dataset (matched by pattern), copied atomically to item.dest."""
    from huggingface_hub import HfApi, hf_hub_download

    with hub_online():
        files = HfApi().list_repo_files(item.repo_id, repo_type=item.repo_type)
        hits = [f for f in files if _matches(f, item.patterns or [])]
        if len(hits) != 1:
            raise DownloadError(f"{item.repo_id}: {len(hits)} files match {item.patterns} ({hits[:5]}); expected one")
        cached = hf_hub_download(item.repo_id, hits[0], repo_type=item.repo_type)
    dest = Path(item.dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    shutil.copyfile(cached, part)
    os.replace(part, dest)
    return str(dest)


def unreachable(url: str, timeout: float = 10.0, _cache: dict | None = None) -> str | None:
    """None when the host of `url` answers at all (any HTTP status), else why not."""
    import requests

    parts = urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}/"
    cache = _cache if _cache is not None else {}
    if root not in cache:
        try:
            requests.head(root, timeout=(timeout, timeout), allow_redirects=False)
            cache[root] = None
        except requests.RequestException as err:
            cache[root] = f"{parts.netloc} unreachable ({type(err).__name__})"
    return cache[root]


def _item_url(item: Item) -> str | None:
    if item.fetch == "url":
        return item.url
    if item.fetch in ("hf", "hf-dataset"):
        from huggingface_hub import constants

        return constants.ENDPOINT
    return None


def fetch_missing(items: list[Item], *, models_dir: str | None = None, timeout: float = 30.0,
                  log: Callable[[str], None] = log.info) -> None:
    """Download every missing downloadable item; failures are recorded in item.problem."""
    probes: dict = {}
    for item in items:
        if item.present or item.fetch == "manual":
            continue
        url = _item_url(item)
        why = unreachable(url, timeout=min(timeout, 10.0), _cache=probes) if url else None
        if why:
            item.problem = f"{item.problem}; {why}"
            continue
        log(f"fetch: downloading {item.name} ({human_size(item.size)}) from {item.source}")
        try:
            if item.fetch == "url":
                download_url(item.url, item.dest, sha256=item.sha256, timeout=timeout)
                digest = item.sha256 or sha256_file(item.dest)
                log(f"fetch: {item.dest} sha256 {digest}" + ("" if item.sha256 else " (no published hash to check; record it)"))
            elif item.fetch == "hf":
                log(f"fetch: {item.name} in {download_hub(item, models_dir)}")
            elif item.fetch == "hf-dataset":
                log(f"fetch: {item.name} written to {download_hub_file(item)}")
        except Exception as err:  # one failure must not stop the others; all are reported at the end
            item.problem = f"download failed: {type(err).__name__}: {err}"
            continue
        locate(item, models_dir)


def offline_requested(flag: bool = False) -> str | None:
    """Why the network is off (None: it may be used)."""
    if flag:
        return "--offline"
    value = os.environ.get("HF_HUB_OFFLINE") if _HF_OFFLINE_AT_IMPORT is _UNKNOWN else _HF_OFFLINE_AT_IMPORT
    return f"HF_HUB_OFFLINE={value}" if _truthy(value) else None
