"""Tests of the drift field's math (METHOD.md §1.2–1.4).

Each test would catch a wrong sign, a wrong axis or a wrong normalisation: the reference below is a
plain float64 numpy transcription of §1.3 written independently of drpo.drift (loops, no tricks).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from drpo.drift import (
    KERNEL_IDS,
    drift_loss,
    kernel_logits,
    mean_distance,
    pairwise_distance,
    preference_drift,
    reference_drift,
    to_particles,
)

RADII = (0.02, 0.05, 0.2)
KERNELS = ["laplacian", "exponential", "rbf", "cosine"]


def reference_field(x, pos, neg, w_pos, w_neg, radii, kernel, mask_neg_self=False):
    """§1.3 for ONE set, in float64 numpy. Returns (force F, scale s, per-radius raw fields)."""
    x, pos, neg = (np.asarray(a, dtype=np.float64) for a in (x, pos, neg))
    n, d = x.shape
    m, p = len(neg), len(pos)
    t = np.concatenate([x, neg, pos])
    w = np.concatenate([np.ones(n), np.broadcast_to(w_neg, (m,)), np.broadcast_to(w_pos, (p,))])
    dist = np.array([[math.sqrt(max(x[i] @ x[i] + t[j] @ t[j] - 2 * x[i] @ t[j], 1e-8)) for j in range(len(t))] for i in range(n)])
    big_s = max((dist * w[None, :]).mean() / max(w.mean(), 1e-8), 1e-3)
    s = max(big_s / math.sqrt(d), 1e-3)
    xs, ts = x / s, t / s
    mask = np.zeros((n, len(t)))
    for i in range(n):
        mask[i, i] = 1
        if mask_neg_self:
            mask[i, n + i] = 1
    force = np.zeros_like(xs)
    raw = []
    for r in radii:
        if kernel in ("laplacian", "exponential"):
            logit = -(dist / big_s) / r
        elif kernel == "rbf":
            logit = -0.5 * (dist / (big_s * r)) ** 2
        else:
            xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
            tn = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-8)
            logit = xn @ tn.T / r
        logit = logit - (100.0 / r) * mask
        row = np.exp(logit - logit.max(1, keepdims=True))
        row /= row.sum(1, keepdims=True)
        col = np.exp(logit - logit.max(0, keepdims=True))
        col /= col.sum(0, keepdims=True)
        a = np.sqrt(np.maximum(row * col, 1e-6)) * w[None, :]
        f = np.zeros_like(xs)
        for i in range(n):
            m_pos = a[i, n + m :].sum()
            m_neg = a[i, : n + m].sum()
            for j in range(len(t)):
                c = a[i, j] * m_neg if j >= n + m else -a[i, j] * m_pos
                f[i] += c * (ts[j] - xs[i])
        raw.append(f)
        force += f / max(math.sqrt((f**2).mean()), 1e-8)
    return force, s, raw


def _sets(seed=0, b=1, n=6, p=3, m=3, d=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n, d, generator=g), torch.randn(b, p, d, generator=g) + 0.5, torch.randn(b, m, d, generator=g) - 0.5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mask_neg_self", [False, True])
def test_matches_independent_reference(kernel, mask_neg_self):
    x, pos, neg = _sets(seed=1, n=5, p=4, m=5)
    w_pos = torch.tensor([3000.0, 1000.0, 2000.0, 500.0])
    res = drift_loss(x, pos, neg, w_pos, 2500.0, RADII, kernel, mask_negative_self=mask_neg_self)
    f_ref, s_ref, _ = reference_field(x[0], pos[0], neg[0], w_pos.numpy(), 2500.0, RADII, kernel, mask_neg_self)
    assert res.scale_per_dim.item() == pytest.approx(s_ref, rel=1e-5)
    np.testing.assert_allclose(res.force[0].numpy(), f_ref, rtol=2e-4, atol=2e-4)
    # loss at the current parameters is mean(F²)
    assert res.loss.item() == pytest.approx((f_ref**2).mean(), rel=1e-4)


def test_dipole_identity():
    """F^r_i = m⁺_i·m⁻_i·(μ⁺_i − μ⁻_i): the x̃ terms cancel (§1.3)."""
    x, pos, neg = _sets(seed=2, n=7, p=3, m=4, d=6)
    r = 0.05
    res = drift_loss(x, pos, neg, 3000.0, 3000.0, radii=(r,), return_affinity=True)
    a = res.extra[f"affinity_{r:g}"][0].double()
    s = res.scale_per_dim[0].double()
    t = torch.cat([x[0], neg[0], pos[0]]).double() / s
    n, m = 7, 4
    a_pos, a_neg = a[:, n + m :], a[:, : n + m]
    m_pos, m_neg = a_pos.sum(1, keepdim=True), a_neg.sum(1, keepdim=True)
    mu_pos = a_pos @ t[n + m :] / m_pos
    mu_neg = a_neg @ t[: n + m] / m_neg
    dipole = m_pos * m_neg * (mu_pos - mu_neg)
    dipole = dipole / dipole.pow(2).mean().sqrt()  # the single radius field is RMS-normalised
    np.testing.assert_allclose(res.force[0].double().numpy(), dipole.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ["laplacian", "rbf"])
def test_translation_invariance(kernel):
    x, pos, neg = _sets(seed=3)
    shift = torch.randn(1, 1, x.shape[-1]) * 5
    a = drift_loss(x, pos, neg, 3000.0, 3000.0, RADII, kernel)
    b = drift_loss(x + shift, pos + shift, neg + shift, 3000.0, 3000.0, RADII, kernel)
    torch.testing.assert_close(a.force, b.force, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_global_weight_rescaling_has_no_effect(kernel):
    x, pos, neg = _sets(seed=4)
    a = drift_loss(x, pos, neg, 3000.0, 2000.0, RADII, kernel)
    b = drift_loss(x, pos, neg, 3000.0 * 7.5, 2000.0 * 7.5, RADII, kernel, weight_gen=7.5)
    torch.testing.assert_close(a.force, b.force, rtol=1e-4, atol=1e-4)
    # ...but the ratio to the generated block does matter
    c = drift_loss(x, pos, neg, 3.0, 2.0, RADII, kernel)
    assert not torch.allclose(a.force, c.force, atol=1e-2)


@pytest.mark.parametrize("kernel", ["laplacian", "exponential", "rbf"])
def test_point_between_positive_and_negative_moves_to_positive(kernel):
    x = torch.tensor([[[0.0, 0.0], [0.0, 3.0]]])
    pos = torch.tensor([[[1.0, 0.0]]])
    neg = torch.tensor([[[-1.0, 0.0]]])
    res = drift_loss(x, pos, neg, 3000.0, 3000.0, RADII, kernel)
    f = res.force[0, 0]
    assert f[0] > 0 and abs(f[1]) < f[0]  # along +x toward the positive
    # and a gradient step on the loss moves the particle that way
    x = x.clone().requires_grad_(True)
    drift_loss(x, pos, neg, 3000.0, 3000.0, RADII, kernel).loss.sum().backward()
    assert x.grad[0, 0, 0] < 0


def test_masked_self_copy_adds_no_displacement():
    x, pos, _ = _sets(seed=5, n=4, p=2, d=3)
    res = drift_loss(x, pos, x, 3000.0, 3000.0, radii=(0.05,), mask_negative_self=True, return_affinity=True)
    a = res.extra["affinity_0.05"][0]
    n = 4
    idx = torch.arange(n)
    # masked entries sit exactly at the floor 1e-3·ω, unmasked copies of other particles do not
    torch.testing.assert_close(a[idx, n + idx], torch.full((n,), 3.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[idx, idx], torch.full((n,), 1e-3), rtol=1e-5, atol=1e-8)
    # the masked copy's own term c_ij·(t̃_j − x̃_i) is zero: dropping it from the sum leaves F unchanged
    s = res.scale_per_dim[0]
    t = torch.cat([x[0], x[0], pos[0]]) / s
    xs = x[0] / s
    a_pos, a_neg = a[:, 2 * n :], a[:, : 2 * n]
    coeff = torch.cat([-a_neg * a_pos.sum(1, keepdim=True), a_pos * a_neg.sum(1, keepdim=True)], dim=1)
    full = (coeff.unsqueeze(-1) * (t.unsqueeze(0) - xs.unsqueeze(1))).sum(1)
    coeff_wo = coeff.clone()
    coeff_wo[idx, n + idx] = 0
    without = (coeff_wo.unsqueeze(-1) * (t.unsqueeze(0) - xs.unsqueeze(1))).sum(1)
    torch.testing.assert_close(full, without, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full / full.pow(2).mean().sqrt(), res.force[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_batched_sets_equal_single_calls(kernel):
    x, pos, neg = _sets(seed=6, b=3, n=5, p=2, m=3)
    x = x * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1)  # very different scales per set
    w_pos = torch.rand(3, 2) * 3000 + 100
    batched = drift_loss(x, pos, neg, w_pos, 3000.0, RADII, kernel)
    for b in range(3):
        single = drift_loss(x[b : b + 1], pos[b : b + 1], neg[b : b + 1], w_pos[b], 3000.0, RADII, kernel)
        torch.testing.assert_close(batched.force[b], single.force[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batched.loss[b], single.loss[0])
        torch.testing.assert_close(batched.scale[b], single.scale[0])
        for r in RADII:
            torch.testing.assert_close(batched.rms[r][b], single.rms[r][0])


def test_large_batches_run_in_chunks_with_identical_results(monkeypatch):
    import drpo.drift as drift

    x, pos, neg = _sets(seed=7, b=5, n=6, p=3, m=6)
    w_pos = torch.rand(5, 3) * 3000 + 100
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    whole = drift.drift_loss(xa, pos, neg, w_pos, 3000.0, RADII, mask_negative_self=True, return_affinity=True)
    calls = []
    inner = drift.drift_loss
    monkeypatch.setattr(drift, "drift_loss", lambda x, *a, **k: calls.append(x.shape[0]) or inner(x, *a, **k))
    monkeypatch.setattr(drift, "BATCH_PAIRS", 2 * 6 * (6 + 6 + 3))  # two sets per chunk
    chunked = inner(xb, pos, neg, w_pos, 3000.0, RADII, mask_negative_self=True, return_affinity=True)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(chunked.force, whole.force)
    torch.testing.assert_close(chunked.loss, whole.loss)
    torch.testing.assert_close(chunked.extra["affinity_0.05"], whole.extra["affinity_0.05"])
    for r in RADII:
        torch.testing.assert_close(chunked.rms[r], whole.rms[r])
    whole.loss.sum().backward()
    chunked.loss.sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)


@pytest.mark.parametrize("kernel", KERNELS)
def test_loss_gradient_is_scaled_force(kernel):
    x, pos, neg = _sets(seed=7, n=6, d=4)
    x = x.double().requires_grad_(True)
    res = drift_loss(x, pos, neg, 3000.0, 3000.0, RADII, kernel)
    res.loss.sum().backward()
    n, d = x.shape[1:]
    expected = -2.0 / (n * d * res.scale_per_dim[0]) * res.force[0]
    torch.testing.assert_close(x.grad[0], expected, rtol=1e-6, atol=1e-9)
    assert x.grad.abs().sum() > 0


def test_identical_points_are_finite():
    x = torch.ones(1, 4, 8)
    res = drift_loss(x, torch.ones(1, 2, 8), torch.ones(1, 2, 8), 3000.0, 3000.0)
    assert torch.isfinite(res.loss).all() and torch.isfinite(res.force).all()
    x = torch.zeros(1, 4, 8, requires_grad=True)
    drift_loss(x, torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), 3000.0, 3000.0).loss.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_very_large_dimension_is_finite():
    g = torch.Generator().manual_seed(0)
    d = 81_920  # the teacher-UNet up_blocks.0 key
    x = torch.randn(1, 16, d, generator=g, requires_grad=True)
    res = drift_loss(x, torch.randn(1, 8, d, generator=g), torch.randn(1, 8, d, generator=g), 3000.0, 3000.0)
    res.loss.sum().backward()
    assert torch.isfinite(res.loss).all() and torch.isfinite(x.grad).all()
    assert res.scale_per_dim.item() == pytest.approx(res.scale.item() / math.sqrt(d), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_fp32(dtype):
    x, pos, neg = _sets(seed=8)
    full = drift_loss(x, pos, neg, 3000.0, 3000.0)
    half = drift_loss(x.to(dtype), pos.to(dtype), neg.to(dtype), 3000.0, 3000.0)
    assert half.loss.dtype == torch.float32 and half.force.dtype == torch.float32
    torch.testing.assert_close(half.force, full.force, rtol=0.1, atol=0.1)  # only input rounding differs
    xh = x.to(dtype).requires_grad_(True)
    drift_loss(xh, pos.to(dtype), neg.to(dtype), 3000.0, 3000.0).loss.sum().backward()
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_is_differentiable(kernel):
    x, pos, neg = _sets(seed=9)
    # the logits are smooth in both arguments (finite differences agree with autograd)...
    torch.autograd.gradcheck(
        lambda a, b: kernel_logits(a, b, 0.05, kernel, scale=torch.tensor([2.0], dtype=torch.float64)),
        (x.double().requires_grad_(True), pos.double().requires_grad_(True)),
    )
    # ...and the loss backpropagates finite, non-zero gradients (the target itself is detached,
    # so the loss is deliberately not the function finite differences would see)
    x.requires_grad_(True)
    drift_loss(x, pos, neg, 3000.0, 3000.0, RADII, kernel).loss.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_reference_field_pulls_toward_reference():
    g = torch.Generator().manual_seed(10)
    ref = torch.randn(1, 8, 4, generator=g)
    x = (ref + 2.0).requires_grad_(True)  # the model drifted away by +2 in every dim
    res = reference_drift(x, ref)
    assert (res.force.mean(dim=1) < 0).all()  # the field points back toward the reference
    assert res.loss.item() > 0
    with pytest.raises(ValueError, match="same shape"):
        reference_drift(x, ref[:, :4])


def test_preference_field_defaults_and_stats():
    x, pos, neg = _sets(seed=11)
    res = preference_drift(x, pos, neg)
    stats = res.stats(prefix="pref/")
    assert set(stats) == {"pref/feature_scale", "pref/feature_scale_per_dim", "pref/drift_kernel"} | {
        f"pref/drift_rms_{r:g}" for r in RADII
    }
    assert stats["pref/drift_kernel"] == KERNEL_IDS["laplacian"]
    # each radius field is RMS-normalised, so F's RMS is at most the number of radii
    assert 0 < res.force.pow(2).mean().sqrt().item() <= len(RADII) + 1e-4
    assert drift_loss(x, pos, neg, 1, 1, kernel="exponential").kernel == "laplacian"


def test_argument_errors_name_the_argument():
    x, pos, neg = _sets(seed=12)
    with pytest.raises(ValueError, match="x must have shape"):
        drift_loss(x[0], pos, neg, 1.0, 1.0)
    with pytest.raises(ValueError, match="batch sizes differ"):
        drift_loss(x, pos.expand(2, -1, -1), neg, 1.0, 1.0)
    with pytest.raises(ValueError, match="P=0"):
        drift_loss(x, pos[:, :0], neg, 1.0, 1.0)
    with pytest.raises(ValueError, match="mask_negative_self"):
        drift_loss(x, pos, neg, 1.0, 1.0, mask_negative_self=True)
    with pytest.raises(ValueError, match="weight_pos must be"):
        drift_loss(x, pos, neg, torch.ones(5), 1.0)
    with pytest.raises(ValueError, match="radius"):
        drift_loss(x, pos, neg, 1.0, 1.0, radii=(0.05, 0.0))
    with pytest.raises(ValueError, match="kernel"):
        drift_loss(x, pos, neg, 1.0, 1.0, kernel="gaussian")
    with pytest.raises(ValueError, match="feature dims differ"):
        drift_loss(x, pos[..., :2], neg, 1.0, 1.0)


def test_distances_and_particles():
    x = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])
    d = pairwise_distance(x, x)
    assert d[0, 0, 1].item() == pytest.approx(5.0)
    assert d[0, 0, 0].item() == pytest.approx(1e-4)  # the clamp keeps sqrt differentiable
    assert mean_distance(x, x).item() == pytest.approx((5.0 * 2 + 2e-4) / 4, rel=1e-4)
    feats = torch.arange(4 * 3 * 5, dtype=torch.float32).view(4, 3, 5)  # K=4 images, T=3 tokens
    assert to_particles(feats).shape == (1, 12, 5)
    two = to_particles(feats, sets=2)
    assert two.shape == (2, 6, 5) and torch.equal(two[1, 0], feats[2, 0])
    with pytest.raises(ValueError, match="sets=3"):
        to_particles(feats, sets=3)
