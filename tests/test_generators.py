"""One-step generators on tiny twins of SD-Turbo and SDXL-Turbo (same classes, random weights)."""

from __future__ import annotations

import json
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


def test_tokenizer_keeps_each_world_word_whole(folders):
    tok = build_clip_tokenizer(["red", "circle", "photo"])
    tokens = tok.convert_ids_to_tokens(tok("a photo of a red circle").input_ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert "photo</w>" in tokens and "red</w>" in tokens and "circle</w>" in tokens
    assert "".join(t.replace("</w>", " ") for t in tokens[1:-1]).split() == "a photo of a red circle".split()
    # words sharing pieces ("an" inside "orange", "and") still come out whole: BPE applies merges
    # by rank across words, so the builder adds merges until every word is one token
    words = ["a", "an", "and", "orange", "banana", "ran", "range", "arrange", "photo", "of"]
    tok2 = build_clip_tokenizer(words)
    assert all(tok2.tokenize(w) == [w + "</w>"] for w in words)
    assert len(tok2("a photo of an orange and a banana").input_ids) == 2 + 8
    # words outside the list fall back to letters; decoding gives the text back
    ids = tok("a zebra in 3 boxes").input_ids
    assert len(ids) > 2 + 5 and tok.decode(ids, skip_special_tokens=True) == "a zebra in 3 boxes"
    # the tokenizer saved in a pipeline folder loads back identical (transformers 5 file handling)
    gen = OneStepGenerator.from_pretrained(folders["sd-turbo"])
    default = build_clip_tokenizer()
    for text in PROMPTS + ["three green triangles above a cat"]:
        assert gen.tokenizer(text).input_ids == default(text).input_ids
    assert len(default("two blue square").input_ids) == 2 + 3  # default words are single tokens


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
    # last hidden state of the prompt padded / truncated to the tokenizer's max length (20 here)
    ids = gen.tokenizer(PROMPTS[:1], padding="max_length", max_length=20, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(embeds.hidden, gen.text_encoder(ids)[0])
    assert embeds.hidden.shape == (1, 20, 32) and embeds.pooled is None
    assert gen.encode_prompts(["red " * 40]).hidden.shape == (1, 20, 32)  # long prompts truncate
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


def test_sdxl_turbo_is_one_scheduler_step_with_dual_encoders(folders):
    gen = OneStepGenerator.from_pretrained(folders["sdxl-turbo"])
    embeds = gen.encode_prompts(PROMPTS)
    # penultimate states of both encoders (16 + 32 wide), pooled from text_encoder_2, time ids of 32 px
    assert embeds.hidden.shape == (2, 20, 48) and embeds.pooled.shape == (2, 32)
    assert embeds.time_ids.tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    z = gen.noise_for_seeds([4, 5])
    sched = type(gen.scheduler).from_config(gen.scheduler.config)
    sched.set_timesteps(1)
    assert sched.timesteps.tolist() == [999]
    sigma = float(sched.sigmas[0])
    assert abs(sigma - 14.6146) < 1e-3 and float(sched.init_noise_sigma) == sigma
    with torch.no_grad():
        cond = {"text_embeds": embeds.pooled, "time_ids": embeds.time_ids}
        x = z * sigma  # init_noise_sigma = σ_max for trailing spacing; scale_model_input divides by √(σ²+1)
        eps = gen.unet(x / (sigma**2 + 1) ** 0.5, 999, encoder_hidden_states=embeds.hidden, added_cond_kwargs=cond).sample
    assert torch.allclose(gen.generate(z, embeds), x - sigma * eps, atol=1e-4)
    assert gen.vae.use_slicing and gen.vae.use_tiling  # METHOD.md §2.1
    # PromptEmbeds rows move together
    picked = embeds.select([1]).repeat_interleave(3)
    assert len(picked) == 3 and torch.equal(picked.pooled[2], embeds.pooled[1]) and torch.equal(picked.time_ids, embeds.time_ids[[1, 1, 1]])


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
    assert torch.equal(again.generate(z, embeds, reference=True), base)
    # loading into a generator that already has the same adapter (resume) also restores it
    resumed = OneStepGenerator.from_pretrained(folders[family])
    resumed.add_lora(rank=4, alpha=4)
    resumed.load_lora(tmp_path / "ckpt")
    assert torch.equal(resumed.generate(z, embeds), tuned)
    other = OneStepGenerator.from_pretrained(folders[family])
    other.add_lora(rank=8, alpha=8)
    with pytest.raises(ValueError, match="r=4"):
        other.load_lora(tmp_path / "ckpt")


def test_lora_file_is_peft_format(folders, tmp_path):
    """peft itself (PeftModel.from_pretrained) loads what save_lora writes, with the same result."""
    from diffusers import UNet2DConditionModel
    from peft import PeftModel

    gen = OneStepGenerator.from_pretrained(folders["sd-turbo"])
    gen.add_lora(rank=4, alpha=8)
    perturb_lora(gen, seed=3)
    saved = gen.save_lora(tmp_path / "ckpt")
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["to_k", "to_out.0", "to_q", "to_v"]
    peft_unet = PeftModel.from_pretrained(UNet2DConditionModel.from_pretrained(folders["sd-turbo"] / "unet"), str(saved)).eval()
    z = gen.noise_for_seeds([2])
    hidden = gen.encode_prompts(PROMPTS[:1]).hidden
    with torch.no_grad():
        ours = gen.unet(z, 999, encoder_hidden_states=hidden).sample
        theirs = peft_unet(z, 999, encoder_hidden_states=hidden).sample
    assert torch.allclose(ours, theirs, atol=1e-5)
    with torch.no_grad(), gen.reference_mode():
        base = gen.unet(z, 999, encoder_hidden_states=hidden).sample
    assert (theirs - base).abs().max() > 1e-3  # peft really applied the (perturbed) LoRA
    # keys without peft's prefix (older drpo files) or with diffusers' "unet." prefix load the same
    from safetensors.torch import load_file, save_file

    state = load_file(str(saved / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") for k in state)
    for i, prefix in enumerate(["", "unet."]):
        alt = tmp_path / f"alt{i}"
        alt.mkdir()
        save_file({prefix + k.removeprefix("base_model.model."): v for k, v in state.items()}, str(alt / "adapter_model.safetensors"))
        (alt / "adapter_config.json").write_text((saved / "adapter_config.json").read_text())
        again = OneStepGenerator.from_pretrained(folders["sd-turbo"])
        again.load_lora(alt)
        with torch.no_grad():
            assert torch.equal(again.unet(z, 999, encoder_hidden_states=hidden).sample, ours)
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        gen.load_lora(tmp_path / "nothing")


def test_reference_mode_nests_and_restores_training(folders):
    gen = OneStepGenerator.from_pretrained(folders["sd-turbo"])
    embeds = gen.encode_prompts(PROMPTS[:1])
    z = gen.noise_for_seeds([11])
    base = gen.generate(z, embeds)
    gen.add_lora(rank=4, alpha=4)
    perturb_lora(gen)
    tuned = gen.generate(z, embeds)
    with gen.reference_mode():
        with gen.reference_mode():
            pass
        assert torch.equal(gen.generate(z, embeds), base)  # still the base after the inner exit
    assert torch.equal(gen.generate(z, embeds), tuned)
    assert all(p.requires_grad for p in gen.trainable_parameters())


def test_lora_dropout_only_while_training(folders):
    gen = OneStepGenerator.from_pretrained(folders["sd-turbo"])
    gen.add_lora(rank=4, alpha=4, dropout=0.5)
    perturb_lora(gen)
    embeds = gen.encode_prompts(PROMPTS[:1])
    z = gen.noise_for_seeds([1])
    with torch.no_grad():
        a, b = gen.generate(z, embeds), gen.generate(z, embeds)
    assert torch.equal(a, b)  # sampling is deterministic
    torch.manual_seed(0)
    c = gen.generate(z, embeds)
    assert c.requires_grad and (c.detach() - a).abs().max() > 1e-4  # dropout acts with gradients on


def test_low_precision_keeps_lora_fp32_and_trains(folders):
    gen = OneStepGenerator.from_pretrained(folders["sd-turbo"], dtype=torch.bfloat16)
    assert gen.unet.dtype == torch.bfloat16 and gen.dtype == torch.bfloat16
    gen.add_lora(rank=4, alpha=4)
    assert all(p.dtype == torch.float32 for p in gen.trainable_parameters())
    z = gen.noise_for_seeds([1, 2])
    assert z.dtype == torch.bfloat16
    x = gen.generate(z, gen.encode_prompts(PROMPTS))
    assert x.dtype == torch.bfloat16
    gen.decode(x).float().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gen.trainable_parameters())


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
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == {"sd-turbo": "StableDiffusionPipeline", "sdxl-turbo": "StableDiffusionXLPipeline"}[family]
    assert index.get("requires_safety_checker", False) is False
    pipe = AutoPipelineForText2Image.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPTS[0], num_inference_steps=1, guidance_scale=0.0, height=32, width=32).images[0]
    assert image.size == (32, 32)
    # exporting again replaces the folder; fusing in place drops the adapter and keeps the output
    gen.export_pipeline(out)
    gen.fuse_lora()
    assert not gen.has_lora and gen.trainable_parameters() == []
    assert torch.allclose(gen.generate(z, embeds), tuned, atol=1e-4)


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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env).stdout
    assert "ModelNotFoundError" in out and "stabilityai/sd-turbo" in out and "hf download stabilityai/sd-turbo" in out
    seconds = float(out.split("SECONDS")[-1])
    assert seconds < 10, out
    start = time.time()
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        OneStepGenerator.from_pretrained(tmp_path / "nowhere")
    assert time.time() - start < 1


def test_grid_png_has_one_cell_per_image_with_captions(tmp_path):
    from PIL import Image

    from drpo.grid import save_grid

    images = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue", "white", "black")]
    captions = ["a photo of a red circle", "two green squares and a very long caption that must wrap", "", "x", "y"]
    path = save_grid(tmp_path / "sub" / "grid.png", images, captions, ncols=3, cell=64)
    grid = Image.open(path)
    assert path.exists() and grid.format == "PNG" and not list(path.parent.glob(".grid.png*"))
    width, height = grid.size
    gap = 4  # white space between cells
    assert width == 3 * (64 + gap) and height % 2 == 0 and height > 2 * (64 + gap)  # 2 rows, text under each
    row_h = height // 2
    assert grid.getpixel((32, 32)) == (255, 0, 0) and grid.getpixel((64 + gap + 32, 32)) == (0, 128, 0)
    assert grid.getpixel((32, row_h + 32)) == (255, 255, 255) and grid.getpixel((64 + gap + 32, row_h + 32)) == (0, 0, 0)
    dark = sum(1 for x in range(64) for y in range(64, row_h) if grid.getpixel((x, y))[0] < 128)
    assert dark > 20  # the caption was drawn
    assert Image.open(save_grid(tmp_path / "g2.png", images[:2], captions[:2])).size[0] == 2 * (160 + gap)
    with pytest.raises(ValueError, match="captions"):
        save_grid(tmp_path / "bad.png", images, captions[:2])
