"""One-step generators on tiny twins of SD-Turbo and SDXL-Turbo (same classes, random weights)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from drpo.hub import ModelNotFoundError
from drpo.models.generators import SQRT_ALPHA_0, SQRT_ALPHA_T, SQRT_ONE_MINUS_ALPHA_0, SQRT_ONE_MINUS_ALPHA_T, OneStepGenerator
from drpo.models.tiny import build_clip_tokenizer, build_tiny_sd_turbo, build_tiny_sdxl_turbo

PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"sd-turbo": build_tiny_sd_turbo(root / "sd"), "sdxl-turbo": build_tiny_sdxl_turbo(root / "sdxl")}


def perturb_lora(gen: OneStepGenerator, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gen.trainable_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def test_tokenizer_keeps_each_world_word_whole():
    tok = build_clip_tokenizer(["red", "circle", "photo"])
    tokens = tok.convert_ids_to_tokens(tok("a photo of a red circle").input_ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert "photo</w>" in tokens and "red</w>" in tokens and "circle</w>" in tokens
    assert "".join(t.replace("</w>", " ") for t in tokens[1:-1]).split() == "a photo of a red circle".split()


@pytest.mark.parametrize("family", ["sd-turbo", "sdxl-turbo"])
def test_generate_decode_shapes_seeds_and_family(folders, family):
    gen = OneStepGenerator.from_pretrained(folders[family])
    assert gen.family == family and gen.resolution == 32 and gen.latent_shape == (4, 8, 8)
    embeds = gen.encode_prompts(PROMPTS)
    x = gen.generate(gen.noise_for_seeds([7, 8]), embeds)
    assert x.shape == (2, 4, 8, 8) and torch.isfinite(x).all()
    images = gen.decode(x)
    assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    same = gen.generate(gen.noise_for_seeds([7, 8]), embeds)
    assert torch.equal(x, same)  # a seed is a sample
    other = gen.generate(gen.noise_for_seeds([9, 8]), embeds)
    assert not torch.allclose(other[0], x[0]) and torch.allclose(other[1], x[1])
    uint8 = gen.to_uint8(images)
    assert uint8.dtype == torch.uint8 and uint8.shape == (2, 3, 32, 32)
    assert gen.to_pil(images)[0].size == (32, 32)
    with pytest.raises(ValueError, match="repeat_interleave"):
        gen.generate(gen.noise_for_seeds([1, 2, 3]), embeds)


def test_sd_turbo_step_is_the_constant_projection(folders):
    gen = OneStepGenerator.from_pretrained(folders["sd-turbo"])
    embeds = gen.encode_prompts(PROMPTS[:1])
    z = gen.noise_for_seeds([3])
    with torch.no_grad():
        eps = gen.unet(z, 999, encoder_hidden_states=embeds.hidden).sample
        expected = ((z - 0.9977 * eps) / 0.0683) * 0.9996 + 0.0292 * eps
    assert torch.allclose(gen.generate(z, embeds), expected, atol=1e-5)
    # the constants are SD-2.1's schedule at t = 999 and t = 0
    assert abs(SQRT_ALPHA_T**2 + SQRT_ONE_MINUS_ALPHA_T**2 - 1) < 1e-3
    assert abs(SQRT_ALPHA_0**2 + SQRT_ONE_MINUS_ALPHA_0**2 - 1) < 1e-3


def test_v_prediction_takes_the_same_jump(tmp_path):
    gen = OneStepGenerator.from_pretrained(build_tiny_sd_turbo(tmp_path / "v", prediction_type="v_prediction"))
    embeds = gen.encode_prompts(PROMPTS[:1])
    z = gen.noise_for_seeds([3])
    with torch.no_grad():
        v = gen.unet(z, 999, encoder_hidden_states=embeds.hidden).sample
    x0, eps = 0.0683 * z - 0.9977 * v, 0.9977 * z + 0.0683 * v
    assert torch.allclose(gen.generate(z, embeds), 0.9996 * x0 + 0.0292 * eps, atol=1e-5)


@pytest.mark.parametrize("family", ["sd-turbo", "sdxl-turbo"])
def test_lora_starts_at_base_reference_is_base_and_round_trips(folders, family, tmp_path):
    gen = OneStepGenerator.from_pretrained(folders[family])
    params_before = sum(p.numel() for p in gen.unet.parameters())
    embeds = gen.encode_prompts(PROMPTS)
    z = gen.noise_for_seeds([1, 2])
    base = gen.generate(z, embeds)
    gen.add_lora(rank=4, alpha=4)
    assert torch.equal(gen.generate(z, embeds), base)  # B = 0 at init
    perturb_lora(gen)
    tuned = gen.generate(z, embeds)
    assert (tuned - base).abs().max() > 1e-3
    assert torch.equal(gen.generate(z, embeds, reference=True), base)  # adapters off = the frozen base
    lora_params = sum(p.numel() for p in gen.trainable_parameters())
    assert sum(p.numel() for p in gen.unet.parameters()) == params_before + lora_params  # no second UNet
    # gradients reach the LoRA through generate + decode; the base stays frozen
    gen.decode(gen.generate(z, embeds)).mean().backward()
    assert all(p.grad is not None for p in gen.trainable_parameters())
    assert all(p.grad is None for n, p in gen.unet.named_parameters() if "lora_" not in n)
    saved = gen.save_lora(tmp_path / "ckpt")
    assert (saved / "adapter_model.safetensors").exists() and (saved / "adapter_config.json").exists()
    again = OneStepGenerator.from_pretrained(folders[family])
    again.load_lora(tmp_path / "ckpt")
    assert torch.equal(again.generate(z, embeds), tuned)


@pytest.mark.parametrize("family", ["sd-turbo", "sdxl-turbo"])
def test_export_is_a_standard_pipeline_with_the_lora_fused(folders, family, tmp_path):
    from diffusers import AutoPipelineForText2Image

    gen = OneStepGenerator.from_pretrained(folders[family])
    gen.add_lora(rank=4, alpha=4)
    perturb_lora(gen, seed=1)
    embeds = gen.encode_prompts(PROMPTS)
    z = gen.noise_for_seeds([5, 6])
    tuned = gen.generate(z, embeds)
    out = gen.export_pipeline(tmp_path / "export")
    assert gen.has_lora and torch.equal(gen.generate(z, embeds), tuned)  # the generator is untouched
    exported = OneStepGenerator.from_pretrained(out)
    assert not exported.has_lora
    assert torch.allclose(exported.generate(z, embeds), tuned, atol=1e-4)
    pipe = AutoPipelineForText2Image.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPTS[0], num_inference_steps=1, guidance_scale=0.0, height=32, width=32).images[0]
    assert image.size == (32, 32)


def test_encode_images_round_trips_through_the_vae_shapes(folders):
    gen = OneStepGenerator.from_pretrained(folders["sd-turbo"])
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = gen.encode_images(images)
    assert latents.shape == (2, 4, 8, 8) and gen.decode(latents).shape == (2, 3, 32, 32)


def test_missing_model_fails_fast_with_the_fetch_command(tmp_path):
    # a fresh interpreter with an empty cache: no network, no hang
    code = (
        "import time; t=time.time()\n"
        "from drpo.models.generators import OneStepGenerator\n"
        "try:\n    OneStepGenerator.from_pretrained('stabilityai/sd-turbo')\n"
        "except Exception as e:\n    print(type(e).__name__); print(e); print('SECONDS', time.time()-t)\n"
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env).stdout
    assert "ModelNotFoundError" in out and "stabilityai/sd-turbo" in out and "hf download stabilityai/sd-turbo" in out
    assert time.time() - start < 30
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        OneStepGenerator.from_pretrained(tmp_path / "nowhere")
