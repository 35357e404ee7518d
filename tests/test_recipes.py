"""The SD-Turbo and SDXL-Turbo recipes compute what the authors' trainers compute (METHOD §2.2b,
§2.4, §2.6, §4, §6.5, §2.1): anchors of stochastic feature maps come from calls of their own, the
GenEval-reward generated set, fp32 reward gradients, the perceptual-loss row and other timesteps."""

from __future__ import annotations

import json

import pytest
import torch

from drpo.rewards import Reward, register_reward
from drpo.train.config import train_config_from_dict
from drpo.train.trainer import Trainer

PROMPTS = ["a photo of a red circle", "a photo of a blue square", "a photo of two triangles", "a photo of a cat"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from transformers import ViTMAEConfig, ViTMAEModel

    from drpo.models.tiny import build_tiny_clip, build_tiny_sd_turbo, build_tiny_sdxl_turbo

    root = tmp_path_factory.mktemp("recipes")
    build_tiny_sd_turbo(root / "sd")
    build_tiny_sdxl_turbo(root / "sdxl")
    build_tiny_clip(root / "clip")
    torch.manual_seed(0)
    vit = ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    ViTMAEModel(vit).save_pretrained(root / "vitmae")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


def trainer_for(assets, out, model="sd", **drpo_and_more) -> Trainer:
    data = {
        "method": "drpo", "steps": 1, "grad_accum": 1, "output_dir": str(out),
        "model": {"path": str(assets / model)}, "prompts": {"path": str(assets / "prompts.txt")},
        "reward": "brightness", "features": {"name": "latent"}, "lora": {"rank": 4, "alpha": 4},
        "checkpoint": {"every": 0}, "tracking": {"enabled": False, "sample_grid_every": 0},
        "drpo": {"candidates": 6, "positives": 2, "negatives": 2},
    }
    for key, value in drpo_and_more.items():
        if isinstance(data.get(key), dict) and isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Trainer(train_config_from_dict(data), progress=False)


def record_drift_inputs(trainer) -> list[dict]:
    """Every call of drift_terms: the generated, reference, positive and negative feature sets."""
    calls = []
    inner = trainer.method.drift_terms

    def spy(feats, feats_ref, pos, neg, sets):
        calls.append({"feats": {k: v.detach() for k, v in feats.items()}, "pos": pos, "neg": neg, "sets": sets})
        return inner(feats, feats_ref, pos, neg, sets)

    trainer.method.drift_terms = spy
    return calls


def nearest_generated(anchor: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Distance of each anchor particle (n, T, D) to its nearest generated particle."""
    a, g = anchor.reshape(-1, anchor.shape[-1]).float(), generated.reshape(-1, generated.shape[-1]).float()
    return torch.cdist(a, g, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values


# -- §2.2b / §2.4: anchors of stochastic feature maps ------------------------------------------


@pytest.mark.parametrize("mask_ratio", [0.75, 0.0])
def test_vit_mae_anchors_are_features_of_their_own_masked_calls(assets, tmp_path, mask_ratio):
    trainer = trainer_for(assets, tmp_path / "vit", features={"name": "vit_mae", "options": {"path": str(assets / "vitmae"), "mask_ratio": mask_ratio}})
    calls = record_drift_inputs(trainer)
    trainer.train_step(0)
    (call,) = calls
    for key, gen in call["feats"].items():
        spread = torch.cdist(gen.reshape(-1, gen.shape[-1]), gen.reshape(-1, gen.shape[-1])).max()
        for side in ("pos", "neg"):
            gap = nearest_generated(call[side][key], gen)
            if mask_ratio > 0:  # a fresh 75 % mask: not the generated particle's own copy
                assert gap.min() > 1e-2 * spread, (key, side, gap)
            else:  # deterministic: the anchor is exactly the candidate's feature
                assert gap.max() < 1e-5, (key, side, gap)


@pytest.mark.parametrize("noise", [0.1, 0.0])
def test_teacher_unet_anchors_get_fresh_input_noise(assets, tmp_path, noise):
    blocks = ["down_blocks.1", "mid_block", "up_blocks.0"]
    features = {"name": "teacher_unet", "options": {"blocks": blocks, "noise": noise, "pool": 1}}
    trainer = trainer_for(assets, tmp_path / "teacher", model="sdxl", features=features)
    assert trainer.models.features.stochastic is (noise > 0)
    calls = record_drift_inputs(trainer)
    trainer.train_step(0)
    (call,) = calls
    for key, gen in call["feats"].items():
        spread = torch.cdist(gen.reshape(-1, gen.shape[-1]), gen.reshape(-1, gen.shape[-1])).max()
        gap = nearest_generated(call["pos"][key], gen)
        if noise > 0:
            assert gap.min() > 1e-3 * spread, (key, gap)
        else:
            assert gap.max() < 1e-5 * max(1.0, float(spread)), (key, gap)


# -- §2.6: the GenEval-reward generated set ----------------------------------------------------


@register_reward("brighter_than")
class BrighterThan(Reward):
    """A pass/fail reward, as GenEval's: 1 when the image's mean brightness exceeds `threshold`."""

    def __init__(self, threshold: float = 0.5, batch_size: int = 64, device="cpu"):
        super().__init__(batch_size, device)
        self.threshold = threshold

    def score(self, images, prompts, metadata):
        return (images.float().mean(dim=(1, 2, 3)) / 255.0 > self.threshold).float()


def test_binary_reward_generated_set_is_every_collected_sample_but_the_negatives(assets, tmp_path):
    k, p, m = 6, 2, 2
    # the tiny twin's images have mean brightness 0.536-0.557: this threshold passes about half
    trainer = trainer_for(assets, tmp_path / "bin", grad_accum=1, prompts_per_micro_step=4,
                          reward={"name": "brighter_than", "options": {"threshold": 0.548}},
                          drpo={"candidates": k, "positives": p, "negatives": m, "binary_reward": True, "rollout_rounds": 3})
    rounds: list[torch.Tensor] = []
    inner = trainer.method.rewards
    trainer.method.rewards = lambda x, batch, kk: rounds.append(inner(x, batch, kk)[0].clone()) or rounds[-1][None]
    calls = record_drift_inputs(trainer)
    trainer.train_step(0)
    # replay the rollout loop: per prompt, rounds until P passing and M failing were seen
    expected, i = [], 0
    for _ in PROMPTS:
        passing = failing = 0
        for _ in range(3):
            s = rounds[i]
            i += 1
            passing, failing = passing + int((s > 0.5).sum()), failing + int((s <= 0.5).sum())
            if passing >= p and failing >= m:
                break
        if passing >= p and failing >= m:
            failing_kept = min(failing, m + k - p)  # pools capped at P passing and M + (K − P) failing
            expected.append(p + failing_kept - m)
    assert i == len(rounds) and expected, "no prompt collected enough passing and failing samples"
    tokens = lambda feats: next(iter(feats.values())).shape[0]  # noqa: E731  images in the set
    assert [tokens(c["feats"]) for c in calls] == expected
    assert any(n != p + m for n in expected), "this seed never exercises the surplus; pick another"
    for c in calls:
        assert all(c["sets"] == 1 and v.shape[0] == p for v in c["pos"].values())
        assert all(v.shape[0] == m for v in c["neg"].values())
        for key, gen in c["feats"].items():  # negatives are not part of the generated set
            assert nearest_generated(c["neg"][key], gen).min() > 0
            assert nearest_generated(c["pos"][key], gen).max() < 1e-6  # positives are


# -- §4: DRaFT / VGGFlow gradients through the reward in fp32; ViT-MAE in fp32 -------------------


def test_differentiable_rewards_run_in_fp32_outside_autocast(assets):
    from drpo.rewards import build_reward, fp32_specs

    specs = fp32_specs([{"name": "pickscore", "options": {"path": str(assets / "clip")}}, {"name": "brightness"},
                        {"name": "pickscore", "options": {"dtype": "bfloat16"}}])
    assert specs[0]["options"]["dtype"] == "float32" and "dtype" not in specs[1]["options"]
    assert specs[2]["options"]["dtype"] == "bfloat16"  # a dtype the user names is kept
    reward = build_reward(specs[0])
    images = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    exact = reward.score_differentiable(images, PROMPTS[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = reward.score_differentiable(images, PROMPTS[:2])
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, exact, atol=1e-5)
    (grad,) = torch.autograd.grad(mixed.sum(), images)
    assert grad.abs().sum() > 0


def test_vit_mae_features_are_fp32_under_the_trainers_autocast(assets):
    from drpo.models.features import build_feature_map

    fm = build_feature_map("vit_mae", path=str(assets / "vitmae"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    exact = fm(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fm(x)
    assert all(mixed[k].dtype == torch.float32 and torch.allclose(mixed[k], exact[k], atol=1e-5) for k in exact)


# -- §6.5: the perceptual-loss row, on latents or on features ----------------------------------


def test_perceptual_loss_is_latent_or_feature_mse_to_the_reference(assets, tmp_path):
    losses = {}
    for space in ("latent", "features"):
        trainer = trainer_for(assets, tmp_path / space, drpo={"lambda_ref": 0.0, "ref_l2_weight": 0.2, "ref_l2_space": space})
        # give the LoRA a non-zero B so the student differs from the reference
        with torch.no_grad():
            for name, prm in trainer.gen.unet.named_parameters():
                if "lora_B" in name:
                    prm.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
        seen = {}
        inner = trainer.method.ref_l2
        trainer.method.ref_l2 = lambda x, xr, f, fr: seen.update(x=x.detach(), xr=xr, f={k: v.detach() for k, v in f.items()}, fr=fr) or inner(x, xr, f, fr)
        metrics = trainer.train_step(0)
        if space == "latent":
            want = (seen["x"].float() - seen["xr"].float()).pow(2).mean()
        else:
            assert set(seen["fr"]) == set(seen["f"]) == set(trainer.models.features.keys)
            want = torch.stack([(seen["f"][k] - seen["fr"][k]).pow(2).mean() for k in seen["f"]]).mean()
        assert metrics["loss/ref_l2"] == pytest.approx(float(want), rel=1e-5) and want > 0
        assert "loss/ref" not in metrics  # λ_ref = 0: no reference drift
        losses[space] = metrics["loss/ref_l2"]
    assert losses["latent"] != pytest.approx(losses["features"])
    with pytest.raises(Exception, match="ref_l2_space"):
        train_config_from_dict({"drpo": {"ref_l2_space": "pixels"}})


# -- §2.1: a timestep other than 999 ------------------------------------------------------------


def test_another_timestep_uses_the_general_projection_with_rescaled_alphas(assets, tmp_path):
    from diffusers import DDPMScheduler

    from drpo.models.generators import OneStepGenerator

    gen = OneStepGenerator.from_pretrained(assets / "sd", timestep=500)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          rescale_betas_zero_snr=True)
    a_t, a_0 = float(sched.alphas_cumprod[500]), float(sched.alphas_cumprod[0])
    assert gen.projection_alphas() == pytest.approx((a_t**0.5, (1 - a_t) ** 0.5, a_0**0.5, (1 - a_0) ** 0.5))
    noise = gen.noise_for_seeds([1, 2])
    embeds = gen.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        eps = gen.unet(noise, torch.full((2,), 500), encoder_hidden_states=embeds.hidden).sample
        x = gen.generate(noise, embeds)
        x999 = OneStepGenerator.from_pretrained(assets / "sd").generate(noise, embeds)
    x0 = (noise - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    assert torch.allclose(x, a_0**0.5 * x0 + (1 - a_0) ** 0.5 * eps, atol=1e-5)
    assert not torch.allclose(x, x999, atol=1e-3)
    # the LoRA remembers its timestep, so sampling a checkpoint uses the one it was trained at
    gen.add_lora(rank=4, alpha=4)
    gen.save_lora(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "one_step.json").read_text()) == {"timestep": 500}
    fresh = OneStepGenerator.from_pretrained(assets / "sd")
    fresh.load_lora(tmp_path / "ckpt")
    assert fresh.timestep == 500
    with pytest.raises(ValueError, match="timestep 1000"):
        OneStepGenerator.from_pretrained(assets / "sd", timestep=1000)
    assert train_config_from_dict({"model": {"timestep": 500}}).model.timestep == 500


# -- memory: gradient checkpointing and VAE slicing change no number ---------------------------


def test_gradient_checkpointing_gives_the_same_update(assets, tmp_path):
    grads = {}
    for on in (False, True):
        trainer = trainer_for(assets, tmp_path / str(on), gradient_checkpointing=on)
        assert trainer.gen.unet.is_gradient_checkpointing is on
        seen = []
        trainer.optimizer.register_step_pre_hook(lambda opt, *_: seen.append(torch.cat([p.grad.flatten() for p in trainer.params])))
        trainer.train_step(0)
        grads[on] = seen[0]
    assert grads[False].abs().sum() > 0 and torch.allclose(grads[True], grads[False], rtol=1e-4, atol=1e-7)


def test_decoding_with_gradient_is_sliced_image_by_image_and_gives_the_same_images(assets):
    from drpo.models.generators import OneStepGenerator

    gen = OneStepGenerator.from_pretrained(assets / "sd")
    latents = torch.randn(3, *gen.latent_shape)
    calls = []
    hook = gen.vae.decoder.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    with torch.no_grad():
        whole = gen.decode(latents)
    assert calls == [3]  # no gradient: one batched decode
    calls.clear()
    sliced = gen.decode(latents.requires_grad_(True))
    hook.remove()
    assert calls == [1, 1, 1] and torch.allclose(sliced, whole, atol=1e-5)
