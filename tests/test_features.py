"""Feature maps φ (METHOD.md §2.2): keys and shapes, checkpoint formats, gradients to the input."""

from __future__ import annotations

import pytest
import torch

from drpo.models.features import LAYER4_KEYS, build_feature_map, window_stats
from drpo.models.latent_mae import gn_groups, save_latent_mae_checkpoint


@pytest.fixture(scope="module")
def mae_path(tmp_path_factory):
    return save_latent_mae_checkpoint(tmp_path_factory.mktemp("mae") / "mae.pth", widths=(8, 16, 16, 32), seed=1)


def test_window_stats_match_a_direct_computation():
    x = torch.randn(3, 5, 8, 8)
    f = window_stats(x, "m")
    assert f["m_mean"].shape == (3, 1, 5) and f["m_mean_2"].shape == (3, 16, 5) and f["m_std_4"].shape == (3, 4, 5)
    win = x[1, :, 4:8, 0:4]  # 4×4 window at (row 1, col 0) → token 2 of the 2×2 grid
    assert torch.allclose(f["m_mean_4"][1, 2], win.mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(f["m_std_4"][1, 2], (win.var(dim=(1, 2), unbiased=False) + 1e-6).sqrt(), atol=1e-6)
    assert "m_mean_3" not in window_stats(x, "m", pools=(3,))  # 3 does not divide 8


def test_latent_mae_gives_the_canonical_six_layer4_keys(mae_path):
    fm = build_feature_map("latent_mae", path=str(mae_path))
    assert fm.keys == LAYER4_KEYS and fm.input_kind == "latents"
    x = torch.randn(2, 4, 64, 64, requires_grad=True)  # 512 px SD latents → layer4 is 8×8
    feats = fm(x)
    assert list(feats) == list(LAYER4_KEYS)
    tokens = {k: v.shape[1] for k, v in feats.items()}
    assert tokens == {"layer4_mean": 1, "layer4_std": 1, "layer4_mean_2": 16, "layer4_std_2": 16, "layer4_mean_4": 4, "layer4_std_4": 4}
    assert all(v.shape[-1] == 32 for v in feats.values())
    sum(v.sum() for v in feats.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in fm.parameters())
    assert gn_groups(48) == 24 and gn_groups(64) == 32 and gn_groups(7) == 7


def test_intermediate_block_outputs_exist(mae_path):
    fm = build_feature_map("latent_mae", path=str(mae_path), keys=["layer3_blk2_mean", "layer3_blk4_std", "layer2_blk2_mean"])
    feats = fm(torch.randn(1, 4, 32, 32))
    assert feats["layer3_blk4_std"].shape == (1, 1, 16) and feats["layer2_blk2_mean"].shape == (1, 1, 16)
    with pytest.raises(KeyError, match="layer3_blk6"):
        build_feature_map("latent_mae", path=str(mae_path), keys=["layer3_blk6_mean"])(torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize("fmt, name", [("model_state_dict", "m.pt"), ("flat", "m.safetensors"), ("jax", "m.pth")])
def test_every_checkpoint_format_loads_to_the_same_features(tmp_path, mae_path, fmt, name):
    from drpo.models.latent_mae import load_latent_mae

    ref = load_latent_mae(mae_path)
    other = save_latent_mae_checkpoint(tmp_path / name, format=fmt, model=ref)
    x = torch.randn(2, 4, 16, 16)
    a, b = ref(x), load_latent_mae(other)(x)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_feature_map("latent_mae", path=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="features.name"):
        build_feature_map("clip_vision")


def test_raw_latent_statistics():
    fm = build_feature_map("latent")
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    feats = fm(x)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "latent_mean": (3, 1, 4), "latent_std": (3, 1, 4), "latent_mean_2": (3, 16, 4),
        "latent_std_2": (3, 16, 4), "latent_mean_4": (3, 4, 4), "latent_std_4": (3, 4, 4),
    }
    assert build_feature_map("latent", keys=["latent"])(x)["latent"].shape == (3, 64, 4)


def test_vit_mae_mask_ratio_zero_is_deterministic_and_keeps_every_patch(tmp_path):
    from transformers import ViTMAEConfig, ViTMAEModel

    torch.manual_seed(0)
    cfg = ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    ViTMAEModel(cfg).save_pretrained(tmp_path / "vitmae")
    x = (torch.rand(2, 3, 24, 24) * 2 - 1).requires_grad_(True)
    fm = build_feature_map("vit_mae", path=str(tmp_path / "vitmae"), mask_ratio=0.0)
    assert fm.keys == ("layer2_patch_mean", "layer2_patch_std", "layer2_cls") and fm.input_kind == "pixels"
    a, b = fm(x), fm(x)
    assert all(torch.equal(a[k], b[k]) for k in a) and a["layer2_patch_mean"].shape == (2, 1, 32)
    sum(v.sum() for v in a.values()).backward()
    assert x.grad.abs().sum() > 0
    masked = build_feature_map("vit_mae", path=str(tmp_path / "vitmae"), mask_ratio=0.75)
    c, d = masked(x), masked(x)
    assert not torch.allclose(c["layer2_patch_mean"], d["layer2_patch_mean"])  # random masks per call


def test_dinov2_layers_and_keys(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)).save_pretrained(tmp_path / "dino")
    fm = build_feature_map("dinov2", path=str(tmp_path / "dino"), layers=[1, 3], image_size=32)
    feats = fm(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert set(feats) == {f"layer{i}_{s}" for i in (1, 3) for s in ("patch_mean", "patch_std", "cls")}
    with pytest.raises(ValueError, match="exceed"):
        build_feature_map("dinov2", path=str(tmp_path / "dino"), layers=[12])


def test_teacher_unet_hooks_pool_and_pass_gradients_to_latents(tmp_path):
    from drpo.models.generators import OneStepGenerator
    from drpo.models.tiny import build_tiny_sd_turbo

    gen = OneStepGenerator.from_pretrained(build_tiny_sd_turbo(tmp_path / "sd"))
    gen.add_lora(rank=4, alpha=4)
    fm = build_feature_map("teacher_unet", unet=gen.unet, blocks=["down_blocks.1", "mid_block", "up_blocks.0"], disable_adapter=gen.reference_mode)
    embeds = gen.encode_prompts(["a red circle", "a blue square"])
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    feats = fm(x, cond={"encoder_hidden_states": embeds.hidden}, generator=torch.Generator().manual_seed(0))
    # 64 channels at 4×4 (pooled 4 → 1×1) for down_blocks.1 and mid; up_blocks.0 upsamples to 8×8 → 2×2
    assert feats["down_blocks.1"].shape == (2, 1, 64) and feats["mid_block"].shape == (2, 1, 64)
    assert feats["up_blocks.0"].shape == (2, 1, 64 * 2 * 2)
    sum(v.sum() for v in feats.values()).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in gen.unet.parameters())  # frozen base, LoRA switched off
    with pytest.raises(KeyError, match="down_blocks.7"):
        build_feature_map("teacher_unet", unet=gen.unet, blocks=["down_blocks.7"])
