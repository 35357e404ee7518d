"""Feature maps φ (METHOD.md §2.2): keys and shapes, the latent-MAE architecture and checkpoint
formats, preprocessing, masking, hooks, and gradients that reach the input but no parameter."""

from __future__ import annotations

import contextlib
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from drpo.hub import ModelNotFoundError
from drpo.models.features import LATENT_KEYS, LAYER4_KEYS, _pool_flat, build_feature_map, window_stats
from drpo.models.latent_mae import FORMATS, gn_groups, load_latent_mae, random_latent_mae, save_latent_mae_checkpoint

ODD_LAYERS = (3, 2, 3, 1)  # not the default: exercises stage-length inference, blk outputs, projections


def _sum(feats: dict) -> torch.Tensor:
    return sum(v.sum() for v in feats.values())


@pytest.fixture(scope="module")
def mae_path(tmp_path_factory):
    return save_latent_mae_checkpoint(tmp_path_factory.mktemp("mae") / "mae.pth", widths=(8, 16, 16, 32), seed=1)


# -- statistics -----------------------------------------------------------------------------------


def test_window_stats_match_a_direct_computation():
    x = torch.randn(3, 5, 8, 8)
    f = window_stats(x, "m")
    assert {k: tuple(v.shape) for k, v in f.items()} == {
        "m_mean": (3, 1, 5), "m_std": (3, 1, 5), "m_mean_2": (3, 16, 5), "m_std_2": (3, 16, 5), "m_mean_4": (3, 4, 5), "m_std_4": (3, 4, 5),
    }
    win = x[1, :, 4:8, 0:4]  # 4×4 window at (row 1, col 0) → token 2 of the row-major 2×2 grid
    assert torch.allclose(f["m_mean_4"][1, 2], win.mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(f["m_std_4"][1, 2], (win.var(dim=(1, 2), unbiased=False) + 1e-6).sqrt(), atol=1e-6)
    assert torch.allclose(f["m_std"][0, 0], (x[0].var(dim=(1, 2), unbiased=False) + 1e-6).sqrt(), atol=1e-6)
    assert set(window_stats(x, "m", pools=(3,))) == {"m_mean", "m_std"}  # 3 does not divide 8
    constant = window_stats(torch.ones(1, 2, 4, 4, dtype=torch.float16), "c")
    assert constant["c_std"].dtype == torch.float32 and torch.allclose(constant["c_std"], torch.full((1, 1, 2), 1e-3))


def test_gn_groups_is_the_largest_divisor_up_to_32():
    assert [gn_groups(c) for c in (7, 8, 40, 48, 64, 96, 2048)] == [7, 8, 20, 24, 32, 32, 32]
    model = random_latent_mae(widths=(40, 48, 64, 96), layers=(1, 1, 1, 1))
    assert model.encoder.gn1.num_groups == 20 and model.encoder.layer2_norm.num_groups == 24
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.GroupNorm))


# -- latent-MAE -----------------------------------------------------------------------------------


def test_latent_mae_gives_the_canonical_six_layer4_keys(mae_path):
    fm = build_feature_map("latent_mae", path=str(mae_path))
    assert fm.keys == LAYER4_KEYS and fm.input_kind == "latents" and not fm.training
    x = torch.randn(2, 4, 64, 64, requires_grad=True)  # 512 px SD latents → layer4 is 8×8
    feats = fm(x)
    assert list(feats) == list(LAYER4_KEYS)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "layer4_mean": (2, 1, 32), "layer4_std": (2, 1, 32), "layer4_mean_2": (2, 16, 32),
        "layer4_std_2": (2, 16, 32), "layer4_mean_4": (2, 4, 32), "layer4_std_4": (2, 4, 32),
    }
    _sum(feats).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in fm.parameters())


def test_latent_mae_stays_fp32_under_autocast(mae_path):
    fm = build_feature_map("latent_mae", path=str(mae_path))
    x = torch.randn(1, 4, 32, 32)  # layer4 4×4
    ref = fm(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fm(x.bfloat16())
    assert all(p.dtype == torch.float32 for p in fm.parameters())
    assert all(out[k].dtype == torch.float32 for k in out)
    x_bf = x.bfloat16().float()  # the only difference is the input's rounding
    assert all(torch.allclose(out[k], fm(x_bf)[k], atol=1e-5) for k in out) and ref.keys() == out.keys()


def _reference_encoder(state: dict, x: torch.Tensor, layers) -> dict:
    """METHOD §2.2(a) written out with functional ops on the canonical state dict."""
    def gn(h, p):
        return F.group_norm(h, gn_groups(h.shape[1]), state[p + ".weight"], state[p + ".bias"], eps=1e-5)

    h = F.relu(gn(F.conv2d(x, state["encoder.conv1.weight"], padding=1), "encoder.gn1"))
    out = {}
    for i, n in enumerate(layers):
        for j in range(n):
            p, stride = f"encoder.stages_{i}.layers_{j}", 2 if (i > 0 and j == 0) else 1
            y = F.relu(gn(F.conv2d(h, state[p + ".conv1.weight"], stride=stride, padding=1), p + ".gn1"))
            y = gn(F.conv2d(y, state[p + ".conv2.weight"], padding=1), p + ".gn2")
            res = h if y.shape == h.shape else gn(F.conv2d(h, state[p + ".proj_conv.weight"], stride=stride), p + ".proj_gn")
            h = F.relu(res + y)
            if (j + 1) % 2 == 0 and j + 1 < n:
                out[f"layer{i + 1}_blk{j + 1}"] = h
        h = out[f"layer{i + 1}"] = gn(h, f"encoder.layer{i + 1}_norm")  # stage norm in the main path
    return out


def test_latent_mae_architecture_matches_the_written_out_method():
    model = random_latent_mae(widths=(8, 8, 16, 16), layers=ODD_LAYERS, seed=3)  # stage 2 keeps width: stride alone forces a projection
    state = model.state_dict()
    assert "encoder.stages_0.layers_0.proj_conv.weight" not in state and "encoder.stages_1.layers_0.proj_conv.weight" in state
    x = torch.randn(2, 4, 32, 32)
    got, want = model(x), _reference_encoder(state, x, ODD_LAYERS)
    assert set(got) == set(want) | {"conv1"} == set(model.map_names)
    assert set(want) == {"layer1_blk2", "layer1", "layer2", "layer3_blk2", "layer3", "layer4"}
    assert [tuple(got[f"layer{s}"].shape[-2:]) for s in (1, 2, 3, 4)] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)
    assert set(model(x, until="layer2")) == {"conv1", "layer1_blk2", "layer1", "layer2"}


def _jax_reference_maps(raw: dict, x: torch.Tensor, layers, *, stage_norm_in_main_path: bool = True) -> dict:
    """METHOD §2.2(a) in float64 straight from a raw JAX-layout encoder dict (HWIO `*.kernel`, GN
    `*.scale`/`*.bias`), sharing no code with LatentMAE or its checkpoint reader. With
    `stage_norm_in_main_path=False` it is the side-branch misreading (layer{s} = GN(h), the next
    stage runs on h), kept only to show that the comparison tells the two apart."""
    def kernel(name):  # HWIO → OIHW
        return raw[name + ".kernel"].double().permute(3, 2, 0, 1)

    def gn(h, name):
        c = h.shape[1]
        groups = max(g for g in range(1, 33) if c % g == 0)
        return F.group_norm(h, groups, raw[name + ".scale"].double(), raw[name + ".bias"].double(), eps=1e-5)

    h = F.relu(gn(F.conv2d(x.double(), kernel("encoder.conv1"), stride=1, padding=1), "encoder.gn1"))
    maps = {"conv1": h}
    for i, n in enumerate(layers):
        s = i + 1
        for j in range(n):
            blk, stride = f"encoder.stages_{i}.layers_{j}", 2 if (s > 1 and j == 0) else 1
            y = F.relu(gn(F.conv2d(h, kernel(blk + ".conv1"), stride=stride, padding=1), blk + ".gn1"))
            y = gn(F.conv2d(y, kernel(blk + ".conv2"), stride=1, padding=1), blk + ".gn2")
            if blk + ".proj_conv.kernel" in raw:
                res = gn(F.conv2d(h, kernel(blk + ".proj_conv"), stride=stride), blk + ".proj_gn")
            else:
                assert y.shape == h.shape, f"{blk} changes the shape but has no projection"
                res = h
            h = F.relu(res + y)
            if (j + 1) % 2 == 0 and j + 1 < n:
                maps[f"layer{s}_blk{j + 1}"] = h
        maps[f"layer{s}"] = gn(h, f"encoder.layer{s}_norm")
        if stage_norm_in_main_path:
            h = maps[f"layer{s}"]
    return maps


def _reference_window_stats(fmap: torch.Tensor, name: str) -> dict:
    """{name}_mean/_std over the whole map and over 2×2 / 4×4 windows (row-major), std = sqrt(var + 1e-6)."""
    out = {}
    for p, suffix in ((fmap.shape[-1], ""), (2, "_2"), (4, "_4")):
        mean = F.avg_pool2d(fmap, p)
        var = F.avg_pool2d(fmap.square(), p) - mean.square()
        out[f"{name}_mean{suffix}"] = mean.flatten(2).transpose(1, 2)
        out[f"{name}_std{suffix}"] = (var + 1e-6).sqrt().flatten(2).transpose(1, 2)
    return out


def test_latent_mae_matches_an_independent_float64_reference_read_from_a_jax_checkpoint(tmp_path):
    """Every map and the six layer4 features against the spec written out over the raw JAX
    tensors, the stage norm in the main path (stage s+1 runs on the normalised `layer{s}`)."""
    layers = (3, 4, 6, 3)
    path = save_latent_mae_checkpoint(tmp_path / "jax.pth", widths=(8, 16, 16, 32), seed=7, format="jax")
    raw = {k: v for k, v in torch.load(path, map_location="cpu", weights_only=True)["state_dict"].items() if k.startswith("encoder.")}
    assert raw["encoder.conv1.kernel"].shape == (3, 3, 4, 8) and "encoder.layer2_norm.scale" in raw
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    want = _jax_reference_maps(raw, x, layers)
    assert list(want) == [
        "conv1", "layer1_blk2", "layer1", "layer2_blk2", "layer2", "layer3_blk2", "layer3_blk4", "layer3", "layer4_blk2", "layer4",
    ]

    net = load_latent_mae(path)
    got = net(x)
    assert list(got) == list(want) == list(net.map_names)
    for name, ref in want.items():
        assert got[name].dtype == torch.float32 and got[name].shape == ref.shape, name
        torch.testing.assert_close(got[name].double(), ref, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")

    fm = build_feature_map("latent_mae", path=str(path))
    feats, want_feats = fm(x), _reference_window_stats(want["layer4"], "layer4")
    assert list(feats) == list(LAYER4_KEYS) and set(want_feats) == set(LAYER4_KEYS)
    for key in LAYER4_KEYS:
        torch.testing.assert_close(feats[key].double(), want_feats[key], rtol=1e-4, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")

    # the comparison discriminates: the side-branch reading agrees up to layer1 and then departs
    side = _jax_reference_maps(raw, x, layers, stage_norm_in_main_path=False)
    assert all(torch.equal(side[k], want[k]) for k in ("conv1", "layer1_blk2", "layer1"))
    for name in list(want)[3:]:
        assert (side[name] - want[name]).abs().max() > 1e-2, name
    side_feats = _reference_window_stats(side["layer4"], "layer4")
    assert any((side_feats[k] - want_feats[k]).abs().max() > 1e-2 for k in LAYER4_KEYS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_checkpoint_format_loads_to_the_same_weights_and_features(tmp_path, fmt):
    ref = random_latent_mae(widths=(8, 16, 16, 24), layers=ODD_LAYERS, in_channels=4, seed=5)
    path = save_latent_mae_checkpoint(tmp_path / ("m.safetensors" if fmt == "flat" else "m.pth"), format=fmt, model=ref)
    loaded = load_latent_mae(path)
    assert loaded.layers == ODD_LAYERS and loaded.widths == (8, 16, 16, 24)  # layers inferred when metadata is absent
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ref.state_dict().items())
    x = torch.randn(2, 4, 16, 16)
    a, b = ref(x), loaded(x)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_jax_checkpoints_really_hold_hwio_kernels_and_gn_scales(tmp_path):
    ref = random_latent_mae(widths=(8, 16, 16, 24), layers=(1, 1, 1, 1), seed=2)
    path = save_latent_mae_checkpoint(tmp_path / "jax.pth", format="jax", model=ref)
    raw = torch.load(path, weights_only=True)["state_dict"]
    assert raw["encoder.conv1.kernel"].shape == (3, 3, 4, 8) and raw["encoder.stages_1.layers_0.proj_conv.kernel"].shape == (1, 1, 8, 16)
    assert "encoder.gn1.scale" in raw and "encoder.gn1.weight" not in raw
    loaded = load_latent_mae(path)
    assert torch.equal(loaded.encoder.conv1.weight, raw["encoder.conv1.kernel"].permute(3, 2, 0, 1))
    assert torch.equal(loaded.encoder.gn1.weight, raw["encoder.gn1.scale"])
    assert loaded.encoder.conv1.weight.shape == (8, 4, 3, 3)


def test_checkpoint_mismatches_fail_with_the_reason(tmp_path):
    ref = random_latent_mae(widths=(8, 8, 8, 8), layers=(1, 1, 1, 1))
    state = ref.state_dict()
    torch.save({"state_dict": state, "metadata": {"model_config": {"layers": [3, 4, 6, 3]}}}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match=r"\[3, 4, 6, 3\].*\[1, 1, 1, 1\]"):
        load_latent_mae(tmp_path / "meta.pth")
    broken = {k: v for k, v in state.items() if "stages_2.layers_0.gn2" not in k}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="stages_2.layers_0.gn2"):
        load_latent_mae(tmp_path / "broken.pt")
    torch.save({"state_dict": {"decoder.x": torch.zeros(1)}}, tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="encoder.conv1"):
        load_latent_mae(tmp_path / "nope.pt")


def test_latent_mae_keys_for_other_maps_and_early_key_errors(mae_path):
    keys = ["layer3_blk2_mean", "layer3_blk4_std", "layer2_blk2_mean", "conv1_std_4", "layer1", "norm_x", "input_x2_mean"]
    fm = build_feature_map("latent_mae", path=str(mae_path), keys=keys)
    assert fm.deepest == "layer3_blk4"  # layer4 is never computed for these keys
    x = torch.randn(1, 4, 32, 32)
    feats = fm(x)
    assert list(feats) == keys
    assert feats["layer3_blk4_std"].shape == (1, 1, 16) and feats["conv1_std_4"].shape == (1, 64, 8)
    assert feats["layer1"].shape == (1, 32 * 32, 8)
    assert torch.allclose(feats["norm_x"], x.square().mean(dim=(2, 3)).sqrt().unsqueeze(1))
    with pytest.raises(ValueError, match="layer3_blk6"):  # stage 3 has 6 blocks: blk6 is its end, not an intermediate
        build_feature_map("latent_mae", path=str(mae_path), keys=["layer3_blk6_mean"])
    with pytest.raises(KeyError, match="layer4_mean_3"):  # 3 does not divide the 2×2 layer4 map
        build_feature_map("latent_mae", path=str(mae_path), keys=["layer4_mean_3"])(x)


def test_missing_checkpoints_and_bad_options_name_the_problem(tmp_path, mae_path):
    with pytest.raises(ModelNotFoundError, match=r"nope\.pth.*ModelScope"):
        build_feature_map("latent_mae", path=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):  # ModelNotFoundError is one
        load_latent_mae(tmp_path / "nope.pth")
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "mae_latent_256_torch.pth").write_bytes(mae_path.read_bytes())
    assert build_feature_map("latent_mae", path=str(folder)).net.widths == (8, 16, 16, 32)
    with pytest.raises(ValueError, match="features.name"):
        build_feature_map("clip_vision")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['pth'\]"):
        build_feature_map("latent_mae", pth=str(mae_path))
    with pytest.raises(ModelNotFoundError, match="vit-mae-nowhere"):
        build_feature_map("vit_mae", path=str(tmp_path / "vit-mae-nowhere"))


# -- raw latents ----------------------------------------------------------------------------------


def test_raw_latent_statistics():
    fm = build_feature_map("latent")
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    feats = fm(x)
    # the authors' default keys: the raw spatial tokens with the six statistics
    assert fm.keys == ("latent", *LATENT_KEYS) and {k: tuple(v.shape) for k, v in feats.items()} == {
        "latent": (3, 64, 4), "latent_mean": (3, 1, 4), "latent_std": (3, 1, 4), "latent_mean_2": (3, 16, 4),
        "latent_std_2": (3, 16, 4), "latent_mean_4": (3, 4, 4), "latent_std_4": (3, 4, 4),
    }
    assert torch.allclose(feats["latent_mean_4"][2, 1], x[2, :, 0:4, 4:8].mean(dim=(1, 2)))
    _sum(feats).backward()
    assert x.grad.abs().sum() > 0
    spatial = build_feature_map("latent", keys=["latent", "latent_norm"])(x)
    assert spatial["latent"].shape == (3, 64, 4) and torch.equal(spatial["latent"][1, 8 * 2 + 5], x[1, :, 2, 5])
    assert spatial["latent_norm"].shape == (3, 1, 4)
    assert build_feature_map("latent", keys=["latent"], spatial_stride=2)(x)["latent"].shape == (3, 16, 4)
    with pytest.raises(ValueError, match="latent_max"):
        build_feature_map("latent", keys=["latent_max"])


# -- ViT-MAE --------------------------------------------------------------------------------------

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def vit_path(tmp_path_factory):
    from transformers import ViTMAEConfig, ViTMAEModel

    torch.manual_seed(0)
    cfg = ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    folder = tmp_path_factory.mktemp("vitmae") / "vitmae"
    ViTMAEModel(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD, "size": {"height": 32, "width": 32}}))
    return folder


def test_vit_mae_mask_ratio_zero_keeps_every_patch_in_order_and_is_deterministic(vit_path):
    from transformers import ViTMAEModel

    x = (torch.rand(2, 3, 24, 24) * 2.4 - 1.2).requires_grad_(True)  # out of range on purpose: clamped
    fm = build_feature_map("vit_mae", path=str(vit_path), mask_ratio=0.0)
    assert fm.keys == ("layer2_patch_mean", "layer2_patch_std", "layer2_cls") and fm.input_kind == "pixels"
    assert fm.hidden_states(x)[2].shape == (2, 1 + 16, 32)
    a, b = fm(x), fm(x)
    assert all(torch.equal(a[k], b[k]) for k in a) and all(v.shape == (2, 1, 32) for v in a.values())
    # the same numbers by hand: clamp, [0,1], bicubic to 32 (no antialias), processor mean/std, no shuffle
    pixels = F.interpolate((x.detach().clamp(-1, 1) + 1) / 2, size=(32, 32), mode="bicubic", align_corners=False)
    pixels = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    plain = ViTMAEModel.from_pretrained(vit_path, mask_ratio=0.0).eval()
    h = plain(pixel_values=pixels, output_hidden_states=True, noise=torch.arange(16.0).expand(2, 16)).hidden_states[2]
    assert torch.allclose(a["layer2_cls"][:, 0], h[:, 0], atol=1e-5)
    assert torch.allclose(a["layer2_patch_mean"][:, 0], h[:, 1:].mean(1), atol=1e-5)
    assert torch.allclose(a["layer2_patch_std"][:, 0], (h[:, 1:].var(1, unbiased=False) + 1e-6).sqrt(), atol=1e-5)
    _sum(a).backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None and not p.requires_grad for p in fm.parameters())
    both = build_feature_map("vit_mae", path=str(vit_path), keys=["layer1_cls", "layer2_concat"])(x)
    assert both["layer1_cls"].shape == (2, 1, 32) and both["layer2_concat"].shape == (2, 1, 96)
    assert torch.allclose(both["layer2_concat"][..., 64:], a["layer2_cls"], atol=1e-6)


def test_vit_mae_mask_ratio_075_masks_randomly_on_every_call(vit_path):
    fm = build_feature_map("vit_mae", path=str(vit_path), mask_ratio=0.75)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert fm.hidden_states(x)[-1].shape == (2, 1 + 4, 32)  # 4 of 16 patches kept
    c, d = fm(x), fm(x)
    assert not torch.allclose(c["layer2_patch_mean"], d["layer2_patch_mean"])
    with pytest.raises(ValueError, match="mask_ratio"):
        build_feature_map("vit_mae", path=str(vit_path), mask_ratio=1.0)
    with pytest.raises(ValueError, match="layers"):
        build_feature_map("vit_mae", path=str(vit_path), keys=["layer5_cls"])


# -- DINOv2 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dino_path(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dino") / "dino"
    config = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    Dinov2Model(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 36}}))
    return folder


def test_clip_image_embeds_match_the_models_own_and_carry_gradients(tmp_path):
    from transformers import CLIPModel

    from drpo.models.tiny import build_tiny_clip

    build_tiny_clip(tmp_path / "clip", image_size=32, patch_size=8, hidden=32, projection=16, layers=2)
    fm = build_feature_map("clip", path=str(tmp_path / "clip"))
    assert fm.input_kind == "pixels" and list(fm.keys) == ["image_embeds", "layer2_patch_mean", "layer2_patch_std"]
    x = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_(True)
    feats = fm(x)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "image_embeds": (3, 1, 16), "layer2_patch_mean": (3, 1, 32), "layer2_patch_std": (3, 1, 32)}
    model = CLIPModel.from_pretrained(tmp_path / "clip").eval()
    pixels = ((x.detach() + 1) / 2 - torch.tensor(fm.mean).view(1, 3, 1, 1)) / torch.tensor(fm.std).view(1, 3, 1, 1)
    own = model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(feats["image_embeds"][:, 0], torch.nn.functional.normalize(own, dim=-1), rtol=1e-4, atol=1e-5)
    _sum(feats).backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in fm.parameters())
    with pytest.raises(ValueError, match="outside"):
        build_feature_map("clip", path=str(tmp_path / "clip"), keys=["layer5_patch_mean"])
    tokens = build_feature_map("clip", path=str(tmp_path / "clip"), keys=["layer1_patch", "layer1_cls"])(x.detach())
    hidden = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[1]
    assert tokens["layer1_patch"].shape == (3, 16, 32)  # a 4×4 grid of 8 px patches, one token each
    torch.testing.assert_close(tokens["layer1_patch"], hidden[:, 1:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens["layer1_cls"], hidden[:, :1], rtol=1e-4, atol=1e-5)


def test_dinov2_layers_keys_pooled_windows_and_gradients(dino_path):
    fm = build_feature_map("dinov2", path=str(dino_path), layers=[1, 3])
    assert fm.size == 32 and fm.input_kind == "pixels"  # the processor's crop size
    x = (torch.rand(2, 3, 40, 40) * 2 - 1).requires_grad_(True)
    feats = fm(x)
    assert list(feats) == [f"layer{i}_{s}" for i in (1, 3) for s in ("patch_mean", "patch_std", "cls")]
    assert all(v.shape == (2, 1, 32) for v in feats.values())
    _sum(feats).backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in fm.parameters())
    keys = ["layer2_patch", "layer2_patch_mean", "layer2_patch_mean_2", "layer2_patch_std_2", "layer2_patch_std_4"]
    pooled = build_feature_map("dinov2", path=str(dino_path), keys=keys)(x.detach())
    assert {k: tuple(v.shape) for k, v in pooled.items()} == {
        "layer2_patch": (2, 16, 32), "layer2_patch_mean": (2, 1, 32), "layer2_patch_mean_2": (2, 4, 32),
        "layer2_patch_std_2": (2, 4, 32), "layer2_patch_std_4": (2, 1, 32),
    }
    grid = pooled["layer2_patch"].reshape(2, 4, 4, 32)  # row-major patch grid
    assert torch.allclose(pooled["layer2_patch_mean_2"][:, 1], grid[:, 0:2, 2:4].mean(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(pooled["layer2_patch_mean"][:, 0], pooled["layer2_patch"].mean(1), atol=1e-5)
    with pytest.raises(ValueError, match="exceed"):
        build_feature_map("dinov2", path=str(dino_path), layers=[12])


# -- teacher UNet ---------------------------------------------------------------------------------


def _tiny_unet(sdxl: bool = False):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=8 + 6 * 4) if sdxl else {}
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8, **extra,
    ).eval()


def _adapters_off(unet):
    @contextlib.contextmanager
    def ctx():
        unet.disable_adapters()
        try:
            yield
        finally:
            unet.enable_adapters()

    return ctx


BLOCKS = ["down_blocks.0", "mid_block", "up_blocks.0"]


def test_teacher_unet_hooks_noise_timestep_pooling_and_gradients():
    from peft import LoraConfig

    unet = _tiny_unet()
    base = copy.deepcopy(unet)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained LoRA: its UNet differs from the base
    lora = [p for n, p in unet.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)
    fm = build_feature_map("teacher_unet", unet=unet, blocks=BLOCKS, disable_adapter=_adapters_off(unet))
    assert fm.keys == tuple(BLOCKS) and fm.input_kind == "latents" and list(fm.parameters()) == []

    seen: dict = {}
    hooks = [unet.conv_in.register_forward_pre_hook(lambda m, a: seen.__setitem__("sample", a[0].detach().clone())),
             unet.time_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("t", a[0].detach().clone()))]
    hooks.append(unet.get_submodule("up_blocks.1").register_forward_hook(lambda m, a, out: seen.__setitem__("after", True)))
    for b in BLOCKS:
        hooks.append(unet.get_submodule(b).register_forward_hook(
            lambda m, a, out, b=b: seen.__setitem__(b, (out[0] if isinstance(out, tuple) else out).detach().clone())))
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    cond = {"encoder_hidden_states": torch.randn(1, 5, 16)}  # one prompt for both candidates
    feats = fm(x, cond=cond, generator=torch.Generator().manual_seed(7))
    for h in hooks:
        h.remove()
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(seen["sample"], x.detach() + 0.1 * eps) and seen["t"].tolist() == [100, 100]
    assert "after" not in seen  # early exit: blocks after the last hooked one never run
    # down_blocks.0: 16 ch, 8×8 after its downsampler → 2×2; mid 32 ch 8×8 → 2×2; up_blocks.0 32 ch 16×16 → 4×4
    assert [seen[b].shape[1:] for b in BLOCKS] == [(16, 8, 8), (32, 8, 8), (32, 16, 16)]
    assert {b: tuple(v.shape) for b, v in feats.items()} == {"down_blocks.0": (2, 1, 64), "mid_block": (2, 1, 128), "up_blocks.0": (2, 1, 512)}
    for b in BLOCKS:
        assert torch.allclose(feats[b].detach(), F.avg_pool2d(seen[b], 4).flatten(1).unsqueeze(1), atol=1e-6)

    _sum(feats).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in unet.parameters())  # neither the base nor the LoRA
    assert all(p.requires_grad for p in lora)  # the generator's trainable flags are restored

    with torch.no_grad():  # adapters off = the base UNet; on = the fine-tuned one
        off = fm(x, cond=cond, generator=torch.Generator().manual_seed(1))
        ref = build_feature_map("teacher_unet", unet=base, blocks=BLOCKS)(x, cond=cond, generator=torch.Generator().manual_seed(1))
        on = build_feature_map("teacher_unet", unet=unet, blocks=BLOCKS)(x, cond=cond, generator=torch.Generator().manual_seed(1))
        fresh = fm(x, cond=cond)
        full = build_feature_map("teacher_unet", unet=unet, blocks=BLOCKS, disable_adapter=_adapters_off(unet), early_exit=False)(
            x, cond=cond, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(full[b], off[b]) for b in BLOCKS)
    assert all(torch.allclose(off[b], ref[b], atol=1e-5) for b in BLOCKS)
    assert not torch.allclose(on["mid_block"], ref["mid_block"], atol=1e-3)
    assert not torch.allclose(fresh["mid_block"], off["mid_block"])  # fresh noise per call


def test_teacher_unet_plain_unet_gets_no_grads_and_sdxl_conditioning_reaches_it():
    unet = _tiny_unet(sdxl=True)
    assert all(p.requires_grad for p in unet.parameters())
    fm = build_feature_map("teacher_unet", unet=unet, blocks=["mid_block", "up_blocks.1"], pool=4)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    added = {"text_embeds": torch.randn(2, 8), "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)}
    cond = {"encoder_hidden_states": torch.randn(2, 5, 16), "added_cond_kwargs": added}
    feats = fm(x, cond=cond, generator=torch.Generator().manual_seed(0))
    assert feats["mid_block"].shape == (2, 1, 32 * 1 * 1) and feats["up_blocks.1"].shape == (2, 1, 16 * 2 * 2)
    _sum(feats).backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None and p.requires_grad for p in unet.parameters())
    other = dict(cond, added_cond_kwargs={**added, "text_embeds": added["text_embeds"] + 1})
    with torch.no_grad():
        moved = fm(x, cond=other, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(moved["mid_block"], feats["mid_block"].detach())
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        fm(x)
    with pytest.raises(KeyError, match="down_blocks.7"):
        build_feature_map("teacher_unet", unet=unet, blocks=["down_blocks.7"])


def test_pool_flat_falls_back_to_the_global_average_for_small_maps():
    small = torch.randn(2, 3, 3, 3)
    assert torch.allclose(_pool_flat(small, 4), small.mean(dim=(2, 3)).unsqueeze(1))
    assert _pool_flat(torch.randn(2, 3, 8, 8), 4).shape == (2, 1, 12)


def test_teacher_unet_features_under_the_generators_gradient_checkpointing():
    """The SDXL recipe trains with gradient checkpointing on the UNet the teacher borrows: backward
    must not recompute the teacher's blocks with the adapter back on (it used to fail with
    torch's CheckpointError); its gradient is the one without checkpointing."""
    from peft import LoraConfig

    unet = _tiny_unet()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    fm = build_feature_map("teacher_unet", unet=unet, blocks=BLOCKS, disable_adapter=_adapters_off(unet))
    cond = {"encoder_hidden_states": torch.randn(1, 5, 16)}
    x0 = torch.randn(2, 4, 16, 16)
    grads = []
    for checkpointing in (False, True):
        unet.train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        x = x0.clone().requires_grad_(True)
        _sum(fm(x, cond=cond, generator=torch.Generator().manual_seed(3))).backward()
        grads.append(x.grad)
    assert unet.is_gradient_checkpointing  # given back to the generator as it was
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0
