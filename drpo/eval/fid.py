"""FID between two sampled sets, with clean-fid's Inception or any feature extractor.

Real FID (METHOD.md §5.2: a method's samples against the base model's) uses clean-fid's "clean"
mode: PIL bicubic resize to 299 × 299 in float (`cleanfid.resize.build_resizer("clean")`) and the
InceptionV3 TorchScript file `inception-2015-12-05.pt` through `cleanfid.inception_torchscript.
InceptionV3W` (2048-d pool features). `cleanfid.fid`, `cleanfid.features` and `cleanfid.utils`
import torchvision at import time and torchvision is not installed (it breaks the CPU torch pin),
so only those two torchvision-free modules are used; feature statistics and the Fréchet distance are
computed here (`frechet_distance`), the same quantity clean-fid computes with scipy.linalg.sqrtm. The
Inception file is never downloaded: `InceptionExtractor(path)` names it and how to fetch it.

Any callable `images uint8 (N,3,H,W) -> (N, D)` with a `name` is a `FeatureExtractor`. Built in:
`inception`, `random_conv` (a fixed, seeded random conv net: runs anywhere, for the shapes world and
tests), `clip` and `dinov2` (image towers of local transformers checkpoints; also used for the
diversity metric). Features of a manifest are cached next to it, keyed by extractor name and the
image files' stamps, so the base model's features are computed once for many comparisons.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from drpo.models.features import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


@runtime_checkable
class FeatureExtractor(Protocol):
    """images uint8 (N, 3, H, W) → float features (N, D). `name` identifies the extractor and its
    settings (it keys the feature cache: two extractors with one name must give the same features)."""

    name: str

    def __call__(self, images: Tensor) -> Tensor | np.ndarray: ...


def _to_unit(images: Tensor) -> Tensor:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"feature extractor: images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images.float() / 255.0


class RandomConvExtractor:
    """A fixed random conv net (weights from a seeded generator): deterministic features anywhere.

    Resize to `size`, three strided 3×3/5×5 conv + ReLU layers, global mean pool to `dim` features.
    Not a perceptual metric; it measures distribution shift in the shapes world and in tests.
    """

    def __init__(self, dim: int = 64, size: int = 64, seed: int = 0, device: str | torch.device = "cpu"):
        self.dim, self.size, self.seed = int(dim), int(size), int(seed)
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(self.seed)
        shapes = [(16, 3, 5, 5), (32, 16, 3, 3), (self.dim, 32, 3, 3)]
        self.weights = [(torch.randn(s, generator=g) * (2.0 / (s[1] * s[2] * s[3])) ** 0.5).to(self.device) for s in shapes]
        self.name = f"random_conv-d{self.dim}-s{self.size}-seed{self.seed}"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        x = _to_unit(images).to(self.device) * 2 - 1
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        for w in self.weights:
            x = F.relu(F.conv2d(x, w, stride=2, padding=w.shape[-1] // 2))
        return x.mean(dim=(2, 3)).float().cpu()


def inception_file(path: str | os.PathLike) -> Path:
    """The Inception TorchScript file (a file or a folder holding it), or a clear error."""
    p = Path(os.path.expanduser(str(path)))
    f = p / INCEPTION_FILE if p.is_dir() else p
    if not f.exists():
        raise FileNotFoundError(
            f"Inception weights {f} not found (clean-fid's InceptionV3 TorchScript file {INCEPTION_FILE}). "
            f"On a machine with internet fetch it with\n    curl -L -o {INCEPTION_FILE} {INCEPTION_URL}\n"
            f"copy it here and set the extractor option path to the file or its folder."
        )
    if f.name != INCEPTION_FILE:
        raise ValueError(f"Inception weights {f}: clean-fid loads the file by its name; rename it to {INCEPTION_FILE}")
    return f


class InceptionExtractor:
    """clean-fid "clean" mode features: PIL bicubic resize to 299 (float) + InceptionV3 pool3 (2048-d)."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 32):
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        f = inception_file(path)
        self.device = torch.device(device)
        self.model = InceptionV3W(str(f.parent), download=False).to(self.device).eval()
        self.resize = build_resizer("clean")
        self.batch_size = int(batch_size)
        self.name = "inception-clean"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        _to_unit(images)  # validates
        hwc = images.permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for s in range(0, len(hwc), self.batch_size):
            batch = np.stack([self.resize(im) for im in hwc[s : s + self.batch_size]])  # float32 (b,299,299,3) in [0,255]
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)
            out.append(self.model(x).float().cpu())
        return torch.cat(out)


class HFImageExtractor:
    """Image embeddings of a local transformers checkpoint: CLIP (projected image embedding) or
    DINOv2 (CLS token). Images are resized (bicubic, antialiased; no crop — test images are square)
    to the model's input size and normalised with the checkpoint's processor mean/std."""

    def __init__(self, path: str | os.PathLike, kind: str = "clip", size: int | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 32):
        import json

        from drpo.hub import resolve_model

        folder = resolve_model(path, what=f"{kind} feature extractor")
        self.device = torch.device(device)
        self.kind, self.batch_size = kind, int(batch_size)
        if kind == "clip":
            from transformers import CLIPModel

            self.model = CLIPModel.from_pretrained(folder)
            default_size = self.model.config.vision_config.image_size
            mean, std = CLIP_MEAN, CLIP_STD
        elif kind == "dinov2":
            from transformers import Dinov2Model

            self.model = Dinov2Model.from_pretrained(folder)
            default_size = 224 if self.model.config.image_size >= 224 else self.model.config.image_size
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            raise ValueError(f"HFImageExtractor: kind must be clip or dinov2, got {kind!r}")
        pre = Path(folder) / "preprocessor_config.json"
        if pre.exists():
            cfg = json.loads(pre.read_text())
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        self.model.to(self.device).eval().requires_grad_(False)
        self.size = int(size or default_size)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.name = f"{kind}-{Path(str(path)).name}-{self.size}"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        x = _to_unit(images)
        out = []
        for s in range(0, len(x), self.batch_size):
            b = x[s : s + self.batch_size].to(self.device)
            b = F.interpolate(b, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
            b = (b.clamp(0, 1) - self.mean) / self.std
            if self.kind == "clip":
                f = self.model.get_image_features(pixel_values=b)
                f = f if isinstance(f, Tensor) else f.pooler_output
            else:
                f = self.model(pixel_values=b).last_hidden_state[:, 0]
            out.append(f.float().cpu())
        return torch.cat(out)


EXTRACTORS = {"inception": InceptionExtractor, "random_conv": RandomConvExtractor}


def build_extractor(name: str, device: str | torch.device = "cpu", **options) -> FeatureExtractor:
    """inception (path=…), random_conv (dim, size, seed), clip (path=…), dinov2 (path=…)."""
    if name in ("clip", "dinov2"):
        return HFImageExtractor(kind=name, device=device, **options)
    if name not in EXTRACTORS:
        raise ValueError(f"feature extractor {name!r} unknown; choose one of inception, random_conv, clip, dinov2")
    return EXTRACTORS[name](device=device, **options)


# -- features of a manifest ---------------------------------------------------------------------


def manifest_features(
    manifest_path: str | os.PathLike, extractor: FeatureExtractor, *, batch_size: int = 32, cache: bool = True
) -> tuple[np.ndarray, list[dict]]:
    """Features (N, D) float64 of every image of a manifest (manifest order) and the rows.

    Cached in `<manifest folder>/features/<extractor.name>.npz`; the cache is used only when it
    lists the same images with the same file stamps.
    """
    from drpo.contracts import read_manifest
    from drpo.eval.metrics import image_stamp, iter_image_batches
    from drpo.io import atomic_path

    rows = read_manifest(manifest_path)
    if not rows:
        raise ValueError(f"manifest {manifest_path} has no rows")
    stamps = np.asarray([f"{r.image_path}|{image_stamp(r.image)}" for r in rows])
    name = getattr(extractor, "name", None)
    cache_file = Path(manifest_path).parent / "features" / f"{name}.npz" if (cache and name) else None
    if cache_file is not None and cache_file.exists():
        with np.load(cache_file, allow_pickle=False) as z:
            if z["stamps"].shape == stamps.shape and (z["stamps"] == stamps).all():
                return z["features"].astype(np.float64), rows
    feats: list[np.ndarray] = []
    order: list[int] = []
    index = {id(r): i for i, r in enumerate(rows)}
    for chunk, images in iter_image_batches(rows, batch_size):
        f = extractor(images)
        f = np.asarray(f.detach().cpu() if hasattr(f, "detach") else f, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] != len(chunk):
            raise ValueError(f"feature extractor {name}: returned shape {f.shape} for {len(chunk)} images; expected (N, D)")
        feats.append(f)
        order.extend(index[id(r)] for r in chunk)
    features = np.empty((len(rows), feats[0].shape[1]))
    features[np.asarray(order)] = np.concatenate(feats)
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, features=features.astype(np.float32), stamps=stamps)
        features = features.astype(np.float32).astype(np.float64)  # identical to what the cache returns
    return features, rows


# -- Fréchet distance ---------------------------------------------------------------------------


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N−1) covariance of features (N, D), as clean-fid and the TF reference."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats: need features (N ≥ 2, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((Σ1Σ2)^½) for PSD Σ1, Σ2: the eigenvalues of Σ1Σ2 are those of the symmetric Σ1^½ Σ2 Σ1^½,
    so two symmetric eigendecompositions replace scipy's Schur sqrtm of the product (the same value,
    about 20× faster at D = 2048; round-off negatives are clipped to 0)."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    return float(np.sqrt(np.clip(inner, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1−μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½), the Fréchet distance of two Gaussians (the quantity
    clean-fid computes with scipy.linalg.sqrtm)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance: shape mismatch mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * _trace_sqrt_product(s1, s2))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two feature sets. With fewer images than dimensions the covariances have low rank, and
    Tr((Σ1Σ2)^½) is exactly the nuclear norm of A·Bᵀ / √((N1−1)(N2−1)) for the centred features A, B
    (the nonzero eigenvalues of Σ1Σ2 are the squared singular values of A·Bᵀ): an N1 × N2 SVD instead
    of D × D work."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"fid_from_features: need features (N ≥ 2, D) of one size, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) >= a.shape[1]:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    ca, cb = a - a.mean(axis=0), b - b.mean(axis=0)
    scale = (len(a) - 1) * (len(b) - 1)
    cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(scale)
    diff = a.mean(axis=0) - b.mean(axis=0)
    return float(diff @ diff + (ca * ca).sum() / (len(a) - 1) + (cb * cb).sum() / (len(b) - 1) - 2.0 * cross)


def fid_between(
    manifest_a: str | os.PathLike, manifest_b: str | os.PathLike, extractor: FeatureExtractor,
    *, batch_size: int = 32, cache: bool = True,
) -> float:
    """FID between all images of two manifests (e.g. a method's samples vs the base model's)."""
    fa, _ = manifest_features(manifest_a, extractor, batch_size=batch_size, cache=cache)
    fb, _ = manifest_features(manifest_b, extractor, batch_size=batch_size, cache=cache)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"fid_between: feature sizes differ ({fa.shape[1]} vs {fb.shape[1]})")
    return fid_from_features(fa, fb)


def paired_distance(
    manifest_a: str | os.PathLike, manifest_b: str | os.PathLike, extractor: FeatureExtractor,
    *, batch_size: int = 32, cache: bool = True,
) -> dict:
    """Mean feature distance between the images of two manifests drawn for the same prompt and
    seed (e.g. a fine-tuned model's samples vs the base model's): how far fine-tuning moved them.

    Returns the mean L2 and cosine distance over the pairs and their count; only (prompt_id, seed)
    pairs present in both manifests count, and there must be at least one.
    """
    fa, ra = manifest_features(manifest_a, extractor, batch_size=batch_size, cache=cache)
    fb, rb = manifest_features(manifest_b, extractor, batch_size=batch_size, cache=cache)
    index = {r.key: i for i, r in enumerate(rb)}
    pairs = [(i, index[r.key]) for i, r in enumerate(ra) if r.key in index]
    if not pairs:
        raise ValueError(f"paired_distance: {manifest_a} and {manifest_b} share no (prompt_id, seed) pair")
    a, b = fa[[i for i, _ in pairs]].astype(np.float64), fb[[j for _, j in pairs]].astype(np.float64)
    l2 = np.linalg.norm(a - b, axis=1)
    cos = 1.0 - (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"l2": float(l2.mean()), "cosine": float(cos.mean()), "n_pairs": len(pairs)}
