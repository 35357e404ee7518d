"""Tiny twins of every model a paper config names: the same classes, random weights, seconds on a CPU.

`config/test/sd-turbo.yaml` and `config/test/sdxl-turbo.yaml` are the paper configs with every model
replaced by a twin that the workflow builds itself (rule `twins`, workflow/rules/twins.smk):

    drpo twins --out results/twins sd-turbo pickscore aesthetic ...   # the named twins
    drpo twins --config config/test/sd-turbo.yaml                     # every twin the config references
    drpo twins --list                                                 # what can be built

Each twin lies in `<out>/<name>/` and is referenced from the config by that path (or a file in it):
diffusers pipeline folders of the generators' own classes (SD-Turbo, SDXL-Turbo and the multi-step
reference rows), CLIP models of PickScore's and CLIP-L's class with processors, the LAION aesthetic
MLP as a state dict matching the CLIP twin's projection, a latent-MAE checkpoint, ViT-MAE and DINOv2
transformers folders with their preprocessor_config.json, a TorchScript file with clean-fid's
Inception interface, a Qwen3-VL judge for the transformers backend, a Pick-a-Pic v2 parquet file, and
parameter files for the scorers that live behind the reward worker (HPSv2, HPSv3, ImageReward,
GenEval): `drpo/rewards/worker.py` serves a deterministic twin scorer when given `twin: <folder>`, so
the real client, process and protocol are used. `<out>/twins.json` lists what was built; it is
written last, so it marks a finished build.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESOLUTION = 32
MANIFEST = "twins.json"
TWIN_FILE = "twin.json"  # each twin's descriptor (the worker twins read their parameters from it)
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
LATENT_MAE_FILE = "mae_latent_256_torch.pth"
INCEPTION_FILE = "inception-2015-12-05.pt"
PICKAPIC_FILE = "train-00000-of-00001.parquet"


@dataclass(frozen=True)
class Twin:
    """One buildable twin: what it stands for, the file that marks it (what rules depend on), its builder."""

    stands_for: str
    marker: str
    build: Callable[[Path, int], dict]


# -- generators: diffusers pipelines of the real classes ---------------------------------------------


def _seed(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def _sd_parts(seed: int, *, vae_channels=(16,), unet_channels=(32, 64), cross_dim: int = 32, time_cond_proj_dim=None):
    """VAE, text encoder, tokenizer and UNet of the SD 1.x/2.x class. One VAE level keeps latents at
    the image size (32 × 32 at 32 px), enough for the latent-MAE's four stages and 4 × 4 windows."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from drpo.models.tiny import _text_encoder_config, _vae, build_clip_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(None, 20)
    text_encoder = CLIPTextModel(_text_encoder_config(len(tokenizer), cross_dim, 20))
    vae = _vae(RESOLUTION, vae_channels, 4, 0.18215)
    down = 2 ** (len(vae_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // down, in_channels=4, out_channels=4, block_out_channels=tuple(unet_channels),
        layers_per_block=1, norm_num_groups=min(16, unet_channels[0]),
        down_block_types=("CrossAttnDownBlock2D",) * len(unet_channels), up_block_types=("CrossAttnUpBlock2D",) * len(unet_channels),
        cross_attention_dim=cross_dim, attention_head_dim=8, time_cond_proj_dim=time_cond_proj_dim,
    )
    return vae, text_encoder, tokenizer, unet


def _sd_scheduler(kind: str, prediction_type: str = "epsilon"):
    import diffusers

    common = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    if kind == "euler_trailing":  # SD-Turbo's
        return diffusers.EulerDiscreteScheduler(**common, prediction_type=prediction_type, timestep_spacing="trailing", steps_offset=1)
    if kind == "pndm":  # SD 1.5's
        return diffusers.PNDMScheduler(**common, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    if kind == "ddim":  # SD 2.1's
        return diffusers.DDIMScheduler(**common, prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if kind == "lcm":
        return diffusers.LCMScheduler(**common, prediction_type=prediction_type, set_alpha_to_one=True, steps_offset=1)
    raise ValueError(kind)


def _save_pipeline(pipe, folder: Path) -> None:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    pipe.save_pretrained(folder)


def _sd_pipeline(scheduler: str, prediction_type: str = "epsilon"):
    def build(folder: Path, seed: int) -> dict:
        from diffusers import StableDiffusionPipeline

        vae, text_encoder, tokenizer, unet = _sd_parts(seed)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=_sd_scheduler(scheduler, prediction_type), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        _save_pipeline(pipe, folder)
        return {"class": "StableDiffusionPipeline", "scheduler": type(pipe.scheduler).__name__, "resolution": RESOLUTION}

    return build


def _lcm_pipeline(folder: Path, seed: int) -> dict:
    from diffusers import LatentConsistencyModelPipeline

    vae, text_encoder, tokenizer, unet = _sd_parts(seed, time_cond_proj_dim=32)  # LCM's guidance embedding
    pipe = LatentConsistencyModelPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=_sd_scheduler("lcm"), safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    _save_pipeline(pipe, folder)
    return {"class": "LatentConsistencyModelPipeline", "scheduler": "LCMScheduler", "resolution": RESOLUTION}


def _sdxl_pipeline(scheduler: str):
    """SDXL's classes with SDXL's three UNet levels (DownBlock2D, then two cross-attention levels), so
    the teacher-UNet features find down_blocks.2, mid_block and up_blocks.0 as in the real model."""

    def build(folder: Path, seed: int) -> dict:
        import diffusers
        import torch
        from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        from drpo.models.tiny import _text_encoder_config, _vae, build_clip_tokenizer

        torch.manual_seed(seed)
        tokenizer, tokenizer_2 = build_clip_tokenizer(None, 20), build_clip_tokenizer(None, 20)
        hidden, hidden_2, time_dim = 16, 32, 8
        text_encoder = CLIPTextModel(_text_encoder_config(len(tokenizer), hidden, 20))
        text_encoder_2 = CLIPTextModelWithProjection(_text_encoder_config(len(tokenizer_2), hidden_2, 20, projection=hidden_2))
        vae = _vae(RESOLUTION, (16, 32, 32), 4, 0.13025)
        unet = UNet2DConditionModel(
            sample_size=RESOLUTION // 4, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
            norm_num_groups=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=hidden + hidden_2,
            attention_head_dim=8, transformer_layers_per_block=1, addition_embed_type="text_time",
            addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=hidden_2 + 6 * time_dim,
        )
        common = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
        if scheduler == "euler_ancestral_trailing":  # SDXL-Turbo's
            sched = diffusers.EulerAncestralDiscreteScheduler(**common, timestep_spacing="trailing", steps_offset=1)
        else:  # SDXL base's
            sched = diffusers.EulerDiscreteScheduler(**common, timestep_spacing="leading", steps_offset=1)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                         tokenizer_2=tokenizer_2, unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True)
        _save_pipeline(pipe, folder)
        return {"class": "StableDiffusionXLPipeline", "scheduler": type(sched).__name__, "resolution": RESOLUTION}

    return build


def _sd_turbo(folder: Path, seed: int) -> dict:
    """SD-Turbo's pipeline class and scheduler; one VAE level, so 32 × 32 latents at 32 px."""
    from drpo.models.tiny import build_tiny_sd_turbo

    build_tiny_sd_turbo(folder, resolution=RESOLUTION, seed=seed, vae_channels=(16,))
    return {"class": "StableDiffusionPipeline", "scheduler": "EulerDiscreteScheduler", "resolution": RESOLUTION}


# -- reward and feature models -------------------------------------------------------------------------


def _clip(folder: Path, seed: int) -> dict:
    from drpo.models.tiny import build_tiny_clip

    build_tiny_clip(folder, image_size=RESOLUTION, seed=seed)
    return {"class": "CLIPModel", "processor": "CLIPProcessor", "projection_dim": 32}


def _aesthetic(folder: Path, seed: int) -> dict:
    """The LAION MLP head for the CLIP twin's 32-d projection; its last bias puts scores near 5."""
    import torch

    from drpo.rewards.clip_based import AestheticMLP

    torch.manual_seed(seed)
    mlp = AestheticMLP(32)
    with torch.no_grad():
        mlp.layers[-1].bias.fill_(5.0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(mlp.state_dict(), folder / AESTHETIC_FILE)
    return {"class": "AestheticMLP", "dim": 32, "file": AESTHETIC_FILE}


def _latent_mae(folder: Path, seed: int) -> dict:
    from drpo.models.latent_mae import save_latent_mae_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    save_latent_mae_checkpoint(folder / LATENT_MAE_FILE, widths=(8, 16, 16, 32), layers=(1, 1, 1, 1), seed=seed)
    return {"class": "LatentMAE", "file": LATENT_MAE_FILE, "widths": [8, 16, 16, 32], "layers": [1, 1, 1, 1]}


def _vit_mae(folder: Path, seed: int) -> dict:
    import torch
    from transformers import ViTMAEConfig, ViTMAEModel

    torch.manual_seed(seed)
    ViTMAEModel(ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=RESOLUTION, patch_size=8)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "size": {"height": RESOLUTION, "width": RESOLUTION}}))
    return {"class": "ViTMAEModel"}


def _dinov2(folder: Path, seed: int) -> dict:
    """12 layers, as DINOv2-base, so the default layers (3, 6, 9, 12) exist."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=12, num_attention_heads=2, intermediate_size=32,
                             image_size=RESOLUTION, patch_size=8)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": RESOLUTION, "width": RESOLUTION}, "size": {"shortest_edge": RESOLUTION}}))
    return {"class": "Dinov2Model"}


def _inception(folder: Path, seed: int) -> dict:
    """A TorchScript module with clean-fid's interface: `.layers` maps normalised 299² images to
    (B, 2048, 1, 1) pool features (here: a fixed random projection of 4 × 4 average colours)."""
    import torch
    import torch.nn.functional as F

    class Layers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.proj = torch.nn.Parameter(torch.randn(48, 2048, generator=g) / 48 ** 0.5, requires_grad=False)

        def forward(self, x):
            assert x.shape[2] == 299 and x.shape[3] == 299
            f = F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.proj
            return f.view(x.shape[0], 2048, 1, 1)

    class Base(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x, return_features: bool = False):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            return self.layers((x - 128) / 128)

    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(Base()).save(str(folder / INCEPTION_FILE))
    return {"class": "InceptionV3 (clean-fid TorchScript interface)", "file": INCEPTION_FILE}


# The Qwen3-VL twin answers "A" to every pair: its text layers add nothing to the residual stream
# (attention and MLP output projections zero), so each position's logits depend on its own token
# only; the embedding of the prompt's last token ("\n" after "assistant") points at "A", and "A"'s at
# <|im_end|>. Greedy decoding then replies "A" and stops, in 2 of the judge's max_new_tokens.
def _qwen3vl(folder: Path, seed: int) -> dict:
    import torch
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    from drpo.eval.judge_backends import build_tiny_qwen3vl

    build_tiny_qwen3vl(folder, seed=seed)
    model = Qwen3VLForConditionalGeneration.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    newline = tok.convert_tokens_to_ids("Ċ")  # byte-level BPE's "\n"
    answer = tok.convert_tokens_to_ids("A")
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    lm = model.model.language_model
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = lm.embed_tokens.weight
        emb.zero_()
        emb[newline, 0] = 1.0
        emb[answer, 1] = 1.0
        lm.norm.weight.fill_(1.0)
        head = model.lm_head.weight
        head.zero_()
        head[answer, 0] = 1.0
        head[stop, 1] = 1.0
    model.save_pretrained(folder)
    return {"class": "Qwen3VLForConditionalGeneration", "reply": "A"}


def _pickapic(folder: Path, seed: int) -> dict:
    """A Pick-a-Pic v2 parquet file (caption, jpg_0, jpg_1, label_0, label_1) of random 32 px
    pictures; one tie, which the pairs builder drops."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)

    def jpeg() -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)).save(buf, format="JPEG")
        return buf.getvalue()

    captions = ["a red cat on a green square", "two blue dogs", "a yellow circle above a purple triangle",
                "an orange dog left of a cat", "three green circles", "a photo of a blue square"]
    labels = [(1.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.5, 0.5), (0.0, 1.0), (1.0, 0.0)]
    table = pa.table({
        "caption": captions, "jpg_0": [jpeg() for _ in captions], "jpg_1": [jpeg() for _ in captions],
        "label_0": [a for a, _ in labels], "label_1": [b for _, b in labels],
    })
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / PICKAPIC_FILE)
    return {"class": "Pick-a-Pic v2 parquet", "file": PICKAPIC_FILE, "rows": len(captions)}


# -- scorers behind the reward worker ----------------------------------------------------------------


def _worker_twin(scorer: str, bias: float, scale: float):
    """The parameters of a deterministic twin scorer (drpo/rewards/worker.py make_twin): weights on
    a 4 × 4 RGB thumbnail and a prompt term; for GenEval, the thumbnail cell each tag looks at."""

    def build(folder: Path, seed: int) -> dict:
        import random

        rng = random.Random(seed)
        params: dict[str, Any] = {"scorer": scorer, "bias": bias, "scale": scale,
                                  "weights": [round(rng.uniform(-1.0, 1.0), 6) for _ in range(48)],
                                  "prompt_weight": round(rng.uniform(0.1, 0.5), 6)}
        if scorer == "geneval":
            tags = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
            cells = rng.sample(range(16), len(tags))  # each tag's cell of the 4 x 4 thumbnail
            params = {"scorer": scorer, "cells": dict(zip(tags, cells))}
        folder.mkdir(parents=True, exist_ok=True)
        return {"class": f"{scorer} twin scorer (worker.py)", "params": params}

    return build


TWINS: dict[str, Twin] = {
    # generators
    "sd-turbo": Twin("stabilityai/sd-turbo", "model_index.json", _sd_turbo),
    "sd15": Twin("stable-diffusion-v1-5/stable-diffusion-v1-5", "model_index.json", _sd_pipeline("pndm")),
    "lcm-sd15": Twin("SimianLuo/LCM_Dreamshaper_v7", "model_index.json", _lcm_pipeline),
    "sd21": Twin("stabilityai/stable-diffusion-2-1", "model_index.json", _sd_pipeline("ddim", "v_prediction")),
    "sdxl-turbo": Twin("stabilityai/sdxl-turbo", "model_index.json", _sdxl_pipeline("euler_ancestral_trailing")),
    "sdxl": Twin("stabilityai/stable-diffusion-xl-base-1.0", "model_index.json", _sdxl_pipeline("euler")),
    "sdxl-dpo": Twin("mhdang/dpo-sdxl-text2image-v1", "model_index.json", _sdxl_pipeline("euler")),
    # rewards, metrics, features, judge
    "pickscore": Twin("yuvalkirstain/PickScore_v1 (+ its CLIP-H processor)", "config.json", _clip),
    "clip": Twin("openai/clip-vit-large-patch14", "config.json", _clip),
    "aesthetic": Twin(AESTHETIC_FILE, AESTHETIC_FILE, _aesthetic),
    "latent-mae": Twin(LATENT_MAE_FILE, "config.json", _latent_mae),
    "vit-mae": Twin("facebook/vit-mae-base", "config.json", _vit_mae),
    "dinov2": Twin("facebook/dinov2-base", "config.json", _dinov2),
    "inception": Twin(INCEPTION_FILE, "config.json", _inception),
    "qwen3vl": Twin("Qwen/Qwen3-VL-8B-Instruct", "config.json", _qwen3vl),
    "pickapic-v2": Twin("yuvalkirstain/pickapic_v2 (one parquet shard)", PICKAPIC_FILE, _pickapic),
    # scorers in their own environments, reached through the reward worker
    "hpsv2": Twin("HPSv2 (hpsv2 package, v2.1)", TWIN_FILE, _worker_twin("hpsv2", 0.25, 0.02)),
    "hpsv3": Twin("HPSv3 (hpsv3 package)", TWIN_FILE, _worker_twin("hpsv3", 8.0, 2.0)),
    "imagereward": Twin("ImageReward-v1.0", TWIN_FILE, _worker_twin("imagereward", 0.0, 1.0)),
    "geneval": Twin("GenEval (mask2former detector + CLIP)", TWIN_FILE, _worker_twin("geneval", 0.0, 1.0)),
}


# -- which twins a config references -------------------------------------------------------------------


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def twins_dir(config: dict) -> str:
    from drpo.contracts import Layout

    return Layout(config.get("results", "results")).twins()


def config_twins(path: str | Path) -> tuple[dict, list[str]]:
    """The validated config at `path` (its `{results}` paths resolved) and the twins it names."""
    from drpo.workflow import load_config

    config = load_config(path)
    return config, list(referenced(config))


def referenced(config: dict, root: str | None = None) -> dict[str, list[str]]:
    """Twin name -> the paths under `root` (default `<results>/twins`) the config names, in order.
    A path under `root` that names no known twin is an error naming the path."""
    root = (root or twins_dir(config)).rstrip("/")
    out: dict[str, list[str]] = {}
    for s in _strings({k: v for k, v in config.items() if k != "twins"}):
        if not s.startswith(root + "/"):
            continue
        name = s[len(root) + 1:].split("/", 1)[0]
        if name not in TWINS:
            raise ValueError(f"{s}: '{name}' is not a twin drpo can build (known: {', '.join(TWINS)})")
        paths = out.setdefault(name, [])
        if s not in paths:
            paths.append(s)
    return out


def outputs(config: dict, root: str | None = None) -> list[str]:
    """Every file the build promises for a config: each twin's marker, each referenced file that is
    not the twin's folder, and the manifest (what rule `twins` declares as output)."""
    root = (root or twins_dir(config)).rstrip("/")
    files = [f"{root}/{MANIFEST}"]
    for name, paths in referenced(config, root).items():
        files.append(f"{root}/{name}/{TWINS[name].marker}")
        files.extend(p for p in paths if p.rstrip("/") != f"{root}/{name}")
    return sorted(dict.fromkeys(files))


# -- building ---------------------------------------------------------------------------------------------


def build(names: Iterable[str], out: str | Path, seed: int = 0, log: Callable[[str], None] | None = None) -> Path:
    """Build each named twin into `<out>/<name>/` (replacing what is there) and write `<out>/twins.json`."""
    import shutil
    import time

    from drpo.io import write_json

    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in TWINS]
    if unknown:
        raise ValueError(f"unknown twin(s) {unknown}; known: {', '.join(TWINS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    manifest: dict[str, dict] = {}
    for name in names:
        twin, folder, t0 = TWINS[name], out / name, time.time()
        if folder.exists():
            shutil.rmtree(folder)
        info = twin.build(folder, _seed(seed, name))
        info = {"twin_of": twin.stands_for, "seed": _seed(seed, name), **info}
        write_json(folder / TWIN_FILE, info)
        if twin.marker != TWIN_FILE:
            marker = folder / twin.marker
            if not marker.exists():  # a file twin in a folder: a descriptor marks the folder
                write_json(marker, info)
        manifest[name] = {**{k: v for k, v in info.items() if k != "params"}, "path": str(folder), "seconds": round(time.time() - t0, 2)}
        if log:
            log(f"{name}: {info['class']} in {folder} ({manifest[name]['seconds']} s)")
    return write_json(out / MANIFEST, {"seed": seed, "twins": manifest})


def check_built(config: dict, root: str | None = None) -> list[str]:
    """Referenced twin paths that do not exist after a build (empty when everything is there)."""
    root = root or twins_dir(config)
    return [p for paths in referenced(config, root).values() for p in paths if not Path(p).exists()]
