"""Tiny twins of SD-Turbo and SDXL-Turbo: the same diffusers/transformers classes, random weights.

They are saved as ordinary diffusers pipeline folders, so every code path that loads a real model
(`OneStepGenerator.from_pretrained`, `AutoPipelineForText2Image`) loads them the same way. Tests
use them; the shapes world trains one (with a tokenizer over its own words) into its base model.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

DEFAULT_WORDS = (
    "a photo of and the an in on with left right above below two three four "
    "red green blue yellow purple orange cat dog circle square triangle"
).split()


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: characters (the last with </w>), then merge the best-ranked pair."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def build_clip_tokenizer(words: Sequence[str] | None = None, max_length: int = 20):
    """A CLIP BPE tokenizer in which every given word is one token (unknown words fall back to letters).

    Merges are added until BPE turns each word into a single token: a word whose pieces were merged
    differently by another word's merges (an "an" inside "orange") gets extra, lowest-priority
    merges that join its pieces. Built from vocab/merges objects: transformers 5 ignores
    `vocab_file=` for CLIPTokenizer.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    unique = list(dict.fromkeys(w.lower() for w in (words or DEFAULT_WORDS)))
    changed = True
    while changed:  # every added merge has the lowest priority, so finished words stay finished
        changed = False
        for word in unique:
            parts = _bpe(word, ranks)
            while len(parts) > 1:
                pair = (parts[0], parts[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
                parts = _bpe(word, ranks)
                changed = True
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _text_encoder_config(vocab_size: int, hidden: int, max_length: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_length, projection_dim=projection or hidden,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )


def _vae(resolution: int, channels: Sequence[int], latent_channels: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * len(channels), up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels), layers_per_block=1, norm_num_groups=min(8, channels[0]),
        sample_size=resolution, scaling_factor=scaling_factor, mid_block_add_attention=False,
    )


def _save_sd_pipeline(folder, vae, text_encoder, tokenizer, unet, prediction_type: str) -> Path:
    """A StableDiffusionPipeline folder with SD-Turbo's scheduler (trailing spacing, one step)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, timestep_spacing="trailing", steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sd_turbo(
    folder: str | Path,
    *,
    resolution: int = 32,
    words: Sequence[str] | None = None,
    seed: int = 0,
    unet_channels: Sequence[int] = (32, 64),
    vae_channels: Sequence[int] = (16, 32, 32),
    latent_channels: int = 4,
    cross_attention_dim: int = 32,
    prediction_type: str = "epsilon",
    max_length: int = 20,
) -> Path:
    """A StableDiffusionPipeline folder with SD-Turbo's classes and scheduler, tiny and random."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(words, max_length)
    text_encoder = CLIPTextModel(_text_encoder_config(len(tokenizer), cross_attention_dim, max_length))
    vae = _vae(resolution, vae_channels, latent_channels, 0.18215)
    down = 2 ** (len(vae_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=resolution // down, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=tuple(unet_channels), layers_per_block=1, norm_num_groups=min(16, unet_channels[0]),
        down_block_types=("CrossAttnDownBlock2D",) * len(unet_channels),
        up_block_types=("CrossAttnUpBlock2D",) * len(unet_channels),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8,
    )
    return _save_sd_pipeline(folder, vae, text_encoder, tokenizer, unet, prediction_type)


def build_sd_turbo_sized(folder: str | Path, *, resolution: int = 512, seed: int = 0, text_layers: int = 2) -> Path:
    """SD-Turbo's architecture at full size with random weights, for timing without the download.

    The UNet (≈0.87B parameters) and the VAE follow SD 2.1 / SD-Turbo's configs; the text encoder is
    a shallow CLIP of the right width (1024), since prompt encoding is not what a benchmark times.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    if resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 (the VAE downsamples ×8), got {resolution}")
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(None, 77)
    config = _text_encoder_config(len(tokenizer), 1024, 77)
    config.num_hidden_layers, config.intermediate_size = text_layers, 4096
    text_encoder = CLIPTextModel(config)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        sample_size=resolution, scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(
        sample_size=resolution // 8, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    )
    return _save_sd_pipeline(folder, vae, text_encoder, tokenizer, unet, "epsilon")


def build_tiny_sdxl_turbo(
    folder: str | Path,
    *,
    resolution: int = 32,
    words: Sequence[str] | None = None,
    seed: int = 0,
    max_length: int = 20,
) -> Path:
    """A StableDiffusionXLPipeline folder with SDXL-Turbo's classes and scheduler, tiny and random."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(words, max_length)
    tokenizer_2 = build_clip_tokenizer(words, max_length)
    hidden, hidden_2 = 16, 32
    text_encoder = CLIPTextModel(_text_encoder_config(len(tokenizer), hidden, max_length))
    text_encoder_2 = CLIPTextModelWithProjection(_text_encoder_config(len(tokenizer_2), hidden_2, max_length, projection=hidden_2))
    vae = _vae(resolution, (16, 32, 32), 4, 0.13025)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=resolution // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=hidden + hidden_2,
        attention_head_dim=8, transformer_layers_per_block=1, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=hidden_2 + 6 * time_dim,
    )
    scheduler = EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_clip(
    folder: str | Path | None = None,
    *,
    words: Sequence[str] | None = None,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    projection: int = 32,
    layers: int = 2,
    seed: int = 0,
    max_length: int = 20,
):
    """A CLIPModel + CLIPProcessor pair (the class of PickScore and CLIP-L), tiny and random.

    Returns (model, processor); saves both to `folder` when given. The shapes world trains one
    contrastively into its PickScore.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(words, max_length)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
        image_size=image_size, patch_size=patch_size,
    )
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection))
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    if folder is not None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    return model, processor
