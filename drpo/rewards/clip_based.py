"""CLIP-based rewards through transformers: PickScore, CLIP score, LAION aesthetic (METHOD.md §3).

Scaling (one convention, documented once): `__call__` returns the **cosine** of text and image
embeddings for PickScore and CLIP (the paper's "PS" metric is this ×100, applied in
`drpo.eval.metrics.DISPLAY_SCALE`); `scale: logit` gives exp(logit_scale)·cos instead (≈100·cos).
The differentiable path (DRaFT, VGGFlow) returns exp(logit_scale)·cos, as the authors' trainers do,
from a tensor in [-1, 1] resized with antialiasing to the model's size (no crop). Both conventions
rank images identically; the two preprocessings (PIL resize + crop vs. tensor resize) differ
slightly, so the scores agree closely but not exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drpo.hub import resolve_model
from drpo.rewards import Reward


def _features(out) -> Tensor:
    """transformers 5 returns an output object from get_*_features; older versions a tensor."""
    return out if isinstance(out, Tensor) else out.pooler_output


class _CLIPBackbone:
    """A CLIPModel and its processor, frozen; shared by the three rewards."""

    def __init__(self, path: str, processor: str | None, device: torch.device, dtype: str):
        from transformers import CLIPModel, CLIPProcessor

        folder = resolve_model(path, what="CLIP reward model")
        self.model = CLIPModel.from_pretrained(folder, dtype=getattr(torch, dtype)).to(device).eval().requires_grad_(False)
        self.processor = CLIPProcessor.from_pretrained(resolve_model(processor, what="CLIP processor") if processor else folder)
        self.device = device
        ip = self.processor.image_processor
        self.size = (ip.crop_size["height"], ip.crop_size["width"]) if ip.crop_size else (ip.size["shortest_edge"],) * 2
        self.mean = torch.tensor(ip.image_mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std, device=device).view(1, 3, 1, 1)

    def image_embeds(self, images: Tensor) -> Tensor:
        """uint8 (N,3,H,W) → L2-normalised embeddings, through the processor (resize, crop)."""
        pil = [self._pil(img) for img in images]
        pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    def image_embeds_differentiable(self, images: Tensor) -> Tensor:
        """[-1, 1] float (N,3,H,W) with grad → L2-normalised embeddings (antialiased resize, no crop)."""
        x = ((images.float() + 1) / 2).clamp(0, 1)
        x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=True)
        x = ((x - self.mean) / self.std).to(self.model.dtype)
        return F.normalize(_features(self.model.get_image_features(pixel_values=x)).float(), dim=-1)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> Tensor:
        tok = self.processor.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.processor.tokenizer.model_max_length, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device))
        return F.normalize(_features(out).float(), dim=-1)

    @staticmethod
    def _pil(img: Tensor):
        from PIL import Image

        return Image.fromarray(img.permute(1, 2, 0).cpu().numpy())

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())


class PickScore(Reward):
    """PickScore (CLIP-H/14 fine-tuned on Pick-a-Pic): text–image cosine."""

    differentiable = True
    default_path = "yuvalkirstain/PickScore_v1"

    def __init__(self, path: str | None = None, processor: str | None = None, scale: str = "cosine", batch_size: int = 32, device="cpu", dtype: str = "float32"):
        super().__init__(batch_size, device)
        if scale not in ("cosine", "logit"):
            raise ValueError(f"reward {self.name}: scale must be cosine or logit, got {scale!r}")
        self.backbone = _CLIPBackbone(path or self.default_path, processor, self.device, dtype)
        self.scale = scale

    def score(self, images, prompts, metadata):
        cos = (self.backbone.image_embeds(images) * self.backbone.text_embeds(prompts)).sum(-1)
        return cos * (self.backbone.logit_scale if self.scale == "logit" else 1.0)

    def score_differentiable(self, images: Tensor, prompts: list[str]) -> Tensor:
        img = self.backbone.image_embeds_differentiable(images.to(self.device))
        return self.backbone.logit_scale * (img * self.backbone.text_embeds(prompts)).sum(-1)


class ClipScore(PickScore):
    """CLIP score: cosine of OpenAI CLIP ViT-L/14 text and image embeddings."""

    differentiable = False
    default_path = "openai/clip-vit-large-patch14"


class AestheticMLP(nn.Module):
    """LAION's improved aesthetic predictor head: 768→1024→128→64→16→1, dropouts, no activations."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def load_state(path) -> dict:
    """Weights from safetensors or `torch.load(weights_only=True)`; never arbitrary pickles."""
    from pathlib import Path

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class Aesthetic(Reward):
    """LAION aesthetic score: the MLP on L2-normalised CLIP-L/14 image embeddings; the prompt is ignored."""

    differentiable = True

    def __init__(self, path: str = "sac+logos+ava1-l14-linearMSE.pth", clip: str = "openai/clip-vit-large-patch14", processor: str | None = None, batch_size: int = 32, device="cpu", dtype: str = "float32"):
        super().__init__(batch_size, device)
        weights = resolve_model(path, what="aesthetic MLP weights")
        self.backbone = _CLIPBackbone(clip, processor, self.device, dtype)
        self.mlp = AestheticMLP(self.backbone.model.config.projection_dim)
        self.mlp.load_state_dict(load_state(weights))
        self.mlp.to(self.device).eval().requires_grad_(False)

    def score(self, images, prompts, metadata):
        return self.mlp(self.backbone.image_embeds(images)).squeeze(-1)

    def score_differentiable(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.mlp(self.backbone.image_embeds_differentiable(images.to(self.device))).squeeze(-1)
