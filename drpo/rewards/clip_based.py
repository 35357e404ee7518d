"""CLIP-based rewards through transformers: PickScore, CLIP score, LAION aesthetic (METHOD.md §3).

Scaling, one convention per path:
  * `__call__` (ranking, metrics) returns the **cosine** of the L2-normalised text and image
    embeddings for `pickscore` and `clip` — the paper's "PS" is this ×100, applied only in
    `drpo.eval.metrics.DISPLAY_SCALE`. Option `scale: logit` returns exp(logit_scale)·cos (≈100·cos)
    instead; both rank identically.
  * `score_differentiable` (DRaFT, VGGFlow) returns exp(logit_scale)·cos in fp32, as the authors'
    trainers do: tensor in [-1, 1] → [0, 1] → bicubic antialiased resize to the model's image size
    (no crop) → CLIP mean/std; text features without grad.
  The two paths preprocess differently (PIL resize + center crop on uint8 vs. a tensor resize
  without crop), so on images of the model's size they agree up to float error, and otherwise
  closely but not exactly (same ranking in practice; tests check both).
`aesthetic` is the LAION "improved aesthetic predictor": an MLP 768→1024→128→64→16→1 (dropouts
0.2/0.2/0.1, no activations) on L2-normalised CLIP ViT-L/14 image embeddings; the prompt is ignored.

Every model path goes through `drpo.hub.resolve_model` (offline; a missing model fails at once with
the command that fetches it). Weights that are not a transformers folder load only from
safetensors or `torch.load(weights_only=True)` — never arbitrary pickles.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drpo.hub import ModelNotFoundError, resolve_model
from drpo.rewards import Reward


def _features(out) -> Tensor:
    """transformers 5 may return an output object from get_*_features; older versions a tensor."""
    return out if isinstance(out, Tensor) else out.pooler_output


def _dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":  # fp16 on CUDA as the authors score; fp32 on CPU
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"reward dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return getattr(torch, dtype)


class CLIPBackbone:
    """A frozen transformers CLIPModel and its CLIPProcessor; shared by the three rewards."""

    def __init__(self, path: str, processor: str | None, device: torch.device, dtype: str = "auto"):
        from transformers import CLIPModel, CLIPProcessor

        folder = resolve_model(path, what="CLIP reward model")
        self.device = device
        self.model = CLIPModel.from_pretrained(folder, dtype=_dtype(dtype, device)).to(device).eval().requires_grad_(False)
        self.processor = CLIPProcessor.from_pretrained(resolve_model(processor, what="CLIP processor") if processor else folder)
        ip = self.processor.image_processor
        self.size = int(self.model.config.vision_config.image_size)  # the model's input size
        self.mean = torch.tensor(ip.image_mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        tok = self.processor.tokenizer
        self.max_length = int(min(tok.model_max_length, self.model.config.text_config.max_position_embeddings))
        self._text_cache: OrderedDict[str, Tensor] = OrderedDict()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.float().exp())

    def image_embeds(self, images: Tensor) -> Tensor:
        """uint8 (N, 3, H, W) → L2-normalised fp32 embeddings, through the processor (resize, crop)."""
        from PIL import Image

        pil = [Image.fromarray(img.permute(1, 2, 0).contiguous().cpu().numpy()) for img in images]
        pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
        with torch.autocast(self.device.type, enabled=False):  # the model's own dtype, not the trainer's autocast
            out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
        return F.normalize(_features(out).float(), dim=-1)

    def image_embeds_differentiable(self, images: Tensor) -> Tensor:
        """float [-1, 1] (N, 3, H, W) with grad → L2-normalised fp32 embeddings (antialiased resize, no crop).

        Outside any autocast: the model runs in its own dtype (fp32 for DRaFT and VGGFlow, see
        `drpo.rewards.fp32_specs`), not in the trainer's fp16/bf16."""
        with torch.autocast(self.device.type, enabled=False):
            x = ((images.to(self.device, torch.float32) + 1) / 2).clamp(0, 1)
            if x.shape[-2:] != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)
            x = ((x - self.mean) / self.std).to(self.model.dtype)
            return F.normalize(_features(self.model.get_image_features(pixel_values=x)).float(), dim=-1)

    TEXT_CACHE = 4096  # prompts whose embeddings are kept (4096 × 1024 fp32 = 16 MiB for CLIP-H)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> Tensor:
        """L2-normalised fp32 text embeddings; text padded/truncated to the model's length (77 for CLIP).

        The text tower is frozen, so a prompt's embedding is a function of the prompt: each distinct
        prompt is encoded once and kept (least recently used first out). The K candidates of one
        prompt, scored together or one by one, then cost one text pass, not K."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if new:
            tok = self.processor.tokenizer(new, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.autocast(self.device.type, enabled=False):
                out = self.model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
                )
            # each row its own copy: a view would keep its whole batch alive while the row is cached
            self._text_cache.update(zip(new, (e.clone() for e in F.normalize(_features(out).float(), dim=-1))))
        # a new tensor, also outside inference_mode, even where the cached rows were made inside it
        embeds = torch.stack([self._text_cache[p] for p in prompts])
        for p in dict.fromkeys(prompts):
            self._text_cache.move_to_end(p)
        while len(self._text_cache) > self.TEXT_CACHE:
            self._text_cache.popitem(last=False)
        return embeds


class PickScore(Reward):
    """PickScore (CLIP-H/14 fine-tuned on Pick-a-Pic): text–image cosine (`scale: logit` → ·exp(logit_scale))."""

    differentiable = True
    default_path = "yuvalkirstain/PickScore_v1"

    def __init__(
        self,
        path: str | None = None,
        processor: str | None = None,
        scale: str = "cosine",
        dtype: str = "auto",
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ):
        super().__init__(batch_size, device)
        if scale not in ("cosine", "logit"):
            raise ValueError(f"reward {self.name}: options.scale must be cosine or logit, got {scale!r}")
        self.scale = scale
        self.backbone = CLIPBackbone(path or self.default_path, processor, self.device, dtype)

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
        cos = (self.backbone.image_embeds(images) * self.backbone.text_embeds(prompts)).sum(-1)
        return cos * self.backbone.logit_scale if self.scale == "logit" else cos

    def score_differentiable(self, images: Tensor, prompts: list[str]) -> Tensor:
        """exp(logit_scale)·cos in fp32 with grad to `images` (whatever `scale` is)."""
        if not self.differentiable:
            return super().score_differentiable(images, prompts)
        img = self.backbone.image_embeds_differentiable(images)
        return self.backbone.logit_scale * (img * self.backbone.text_embeds(prompts)).sum(-1)


class ClipScore(PickScore):
    """CLIP score: cosine of OpenAI CLIP ViT-L/14 text and image embeddings (ranking/metric only)."""

    differentiable = False
    default_path = "openai/clip-vit-large-patch14"


class AestheticMLP(nn.Module):
    """LAION's improved aesthetic predictor head; module indices match its state dict (layers.0 … layers.7)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from .safetensors, or any other file via torch.load(weights_only=True).

    weights_only refuses pickled code, so a malicious checkpoint cannot run anything. A checkpoint
    that wraps its weights under "state_dict" is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: not loadable as plain weights with torch.load(weights_only=True) ({type(err).__name__}); "
            f"convert it to .safetensors on a trusted machine"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    return state


AESTHETIC_HINT = (
    "the LAION aesthetic head 'sac+logos+ava1-l14-linearMSE.pth' comes from the improved-aesthetic-predictor "
    "repository of christophschuhmann on GitHub; download it on a machine with internet into models/ and set "
    "options.path"
)


class Aesthetic(Reward):
    """LAION aesthetic score of the image (1–10 scale); the prompt is ignored."""

    differentiable = True

    def __init__(
        self,
        path: str = "models/sac+logos+ava1-l14-linearMSE.pth",
        clip: str = "openai/clip-vit-large-patch14",
        processor: str | None = None,
        dtype: str = "auto",
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ):
        super().__init__(batch_size, device)
        try:
            weights = resolve_model(path, what="aesthetic MLP weights")
        except ModelNotFoundError as err:
            raise ModelNotFoundError(f"{err}\n{AESTHETIC_HINT}") from None
        self.backbone = CLIPBackbone(clip, processor, self.device, dtype)
        self.mlp = AestheticMLP(self.backbone.model.config.projection_dim)
        self.mlp.load_state_dict(load_state_dict(weights))
        self.mlp.to(self.device).eval().requires_grad_(False)

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor:
        return self.mlp(self.backbone.image_embeds(images)).squeeze(-1)

    def score_differentiable(self, images: Tensor, prompts: list[str]) -> Tensor:
        embeds = self.backbone.image_embeds_differentiable(images)
        with torch.autocast(self.device.type, enabled=False):  # the head too stays in its own dtype
            return self.mlp(embeds.to(self.mlp.layers[0].weight.dtype)).squeeze(-1)
