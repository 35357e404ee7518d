"""DrPO: online (METHOD.md §1.6, §2.3, §2.6) and offline (§2.5).

Per prompt: K candidates from fresh noise, the frozen base on the same noise, rewards on the
decoded uint8 images with no gradient, disjoint top-P / bottom-M selection, then per feature key a
preference drift (toward the top, away from the bottom) plus λ_ref times a reference drift (toward
the base's samples). Several prompts per micro-step are batched along B: the drift computes its
scale and RMS per set, so this equals looping over prompts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from drpo.contracts import is_correct
from drpo.drift import mean_distance, preference_drift, reference_drift
from drpo.train.base import Method, reward_stats


def _particles(feat: Tensor, sets: int) -> Tensor:
    """(B·n, T, D) per-image features → (B, n·T, D) particles, one set per prompt."""
    return feat.reshape(sets, -1, feat.shape[-1])


def _take(feat: Tensor, index: Tensor, k: int) -> Tensor:
    """Rows `index` (B, c) of each prompt's k consecutive images: (B·k, T, D) → (B·c, T, D)."""
    b = index.shape[0]
    per_prompt = feat.reshape(b, k, *feat.shape[1:])
    picked = torch.gather(per_prompt, 1, index.view(b, -1, 1, 1).expand(-1, -1, *feat.shape[1:]))
    return picked.reshape(-1, *feat.shape[1:])


def _permutation(n: int, generator: torch.Generator) -> list[int]:
    """A random permutation from the micro-step's generator (on its device: CUDA generators too)."""
    return torch.randperm(n, generator=generator, device=generator.device).tolist()


class DrPO(Method):
    name = "drpo"

    def drift_terms(self, feats: dict[str, Tensor], feats_ref: dict[str, Tensor], pos: dict[str, Tensor], neg: dict[str, Tensor],
                    sets: int) -> tuple[Tensor, dict[str, float]]:
        """§1.4: L = Agg_k L_pref(k) + λ_ref · Agg_k L_ref(k), averaged over the B prompt sets."""
        d = self.cfg.drpo
        pref_terms, ref_terms, metrics = [], [], {}
        with self.timer("drift"):
            for key, f in feats.items():
                x = _particles(f, sets)
                yp, yn = _particles(pos[key], sets), _particles(neg[key], sets)
                pref = preference_drift(x, yp, yn, d.eta_pos, d.eta_neg, d.radii, d.kernel)
                pref_terms.append(pref.loss)
                metrics.update({f"drift/{key}/{k}": v for k, v in pref.stats().items() if k.startswith("drift_rms")})
                metrics[f"loss/pref/{key}"] = pref.loss.mean().item()
                metrics[f"dist/{key}/d_pos"] = mean_distance(x, yp).mean().item()
                metrics[f"dist/{key}/d_neg"] = mean_distance(x, yn).mean().item()
                if d.lambda_ref > 0 and feats_ref:
                    xr = _particles(feats_ref[key], sets)
                    ref = reference_drift(x, xr, d.eta_ref, d.eta_refneg, d.ref_radii, d.kernel)
                    ref_terms.append(ref.loss)
                    metrics[f"loss/ref/{key}"] = ref.loss.mean().item()
                    metrics[f"dist/{key}/d_ref"] = mean_distance(x, xr).mean().item()
        def reduce(terms: list[Tensor]) -> Tensor:  # Agg over feature keys: sum (SD-Turbo) or mean (SDXL)
            stacked = torch.stack(terms)
            return stacked.sum(0) if d.aggregation == "sum" else stacked.mean(0)

        loss_pref = reduce(pref_terms)  # (B,)
        loss = loss_pref
        metrics["loss/pref"] = loss_pref.mean().item()
        if ref_terms:
            loss_ref = reduce(ref_terms)
            loss = loss + d.lambda_ref * loss_ref
            metrics["loss/ref"] = loss_ref.mean().item()
        # the headline distances, averaged over keys
        for name in ("d_pos", "d_neg", "d_ref"):
            vals = [v for k, v in metrics.items() if k.endswith(f"/{name}")]
            if vals:
                metrics[f"dist/{name}"] = sum(vals) / len(vals)
        return loss.mean(), metrics

    def select(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Disjoint top-P / bottom-M indices per prompt (B, P), (B, M)."""
        d = self.cfg.drpo
        order = scores.argsort(dim=1, descending=True)
        return order[:, : d.positives], order[:, -d.negatives :]

    def anchor_features(self, x: Tensor, feats: dict[str, Tensor], index: Tensor, embeds, k: int) -> dict[str, Tensor]:
        """Y = φ(sg(x[index])) for rows `index` (B, c) of each prompt's k candidates (§1.6).

        A stochastic map (ViT-MAE's random mask, the teacher UNet's input noise) gets a call of its
        own, with a fresh mask or noise, as the authors' trainers do (§2.2b, §2.4): a detached copy
        of the generated feature would sit at distance 1e-4 from its own particle. For a
        deterministic map that call equals the copy, so the copy is taken.
        """
        if not getattr(self.models.features, "stochastic", False):
            return {key: _take(f.detach(), index, k) for key, f in feats.items()}
        rows = (index + torch.arange(index.shape[0], device=index.device).unsqueeze(1) * k).flatten()
        return self.features(x.detach().index_select(0, rows.to(x.device)), embeds, index.shape[1], grad=False)

    def ref_l2(self, x: Tensor, x_ref: Tensor, feats: dict[str, Tensor], feats_ref: dict[str, Tensor]) -> Tensor:
        """The "perceptual loss" reference (§6.5): MSE to the frozen base's samples, on latents or on
        the drift's features (mean over keys), as `drpo.ref_l2_space` says."""
        if self.cfg.drpo.ref_l2_space == "latent":
            return (x.float() - x_ref.float()).pow(2).mean()
        return torch.stack([(feats[key].float() - feats_ref[key].float()).pow(2).mean() for key in feats]).mean()

    def loss(self, batch: list[dict], noise_gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        if self.cfg.drpo.binary_reward and self.cfg.drpo.rollout_rounds > 0:
            return self._loss_binary(batch, noise_gen)
        d = self.cfg.drpo
        b, k = len(batch), d.candidates
        embeds = self.encode(batch)
        embeds_k = embeds.repeat_interleave(k)
        noise = self.gen.sample_noise(b * k, generator=noise_gen)
        x = self.generate(noise, embeds_k)
        scores = self.rewards(x, batch, k)  # (B, K), no grad: the reward only ranks
        with self.timer("rank_select"):
            pos_idx, neg_idx = self.select(scores)
        feats = self.features(x, embeds, k, grad=True)
        x_ref, feats_ref = None, {}
        if d.lambda_ref > 0 or d.ref_l2_weight > 0:
            x_ref = self.generate(noise, embeds_k, reference=True)
        if d.lambda_ref > 0 or (d.ref_l2_weight > 0 and d.ref_l2_space == "features"):
            feats_ref = self.features(x_ref, embeds, k, grad=False)
        pos = self.anchor_features(x, feats, pos_idx, embeds, k)
        neg = self.anchor_features(x, feats, neg_idx, embeds, k)
        loss, metrics = self.drift_terms(feats, feats_ref if d.lambda_ref > 0 else {}, pos, neg, b)
        if d.ref_l2_weight > 0:
            l2 = self.ref_l2(x, x_ref, feats, feats_ref)
            loss = loss + d.ref_l2_weight * l2
            metrics["loss/ref_l2"] = l2.item()
        metrics.update(reward_stats(scores))
        metrics["reward/selected_gap"] = (
            torch.gather(scores, 1, pos_idx).mean() - torch.gather(scores, 1, neg_idx).mean()
        ).item()
        return loss, metrics

    def _loss_binary(self, batch: list[dict], noise_gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """§2.6: rounds of K no-grad candidates until P passing and M failing ones are found.

        Pools are capped (random subsets when over): P passing, M + (K − P) failing. Positives are
        the passing pool, negatives M random failing samples, and the generated set that carries
        gradient is every collected sample except the negatives: the positives plus the surplus
        failing samples, at most K like the online recipe. The chosen noises are re-run through the
        student (with gradient for the generated set) and the reference. Prompts that stay all-pass
        or all-fail after the last round are skipped; they contribute zero to the micro-step's mean.
        """
        d = self.cfg.drpo
        k, p_cap, f_cap = d.candidates, d.positives, d.negatives + d.candidates - d.positives
        embeds = self.encode(batch)
        tried, all_scores, losses, sizes = 0, [], [], []
        drift_metrics: dict[str, list[float]] = {}
        for b, row in enumerate(batch):
            e = embeds.select([b])
            e_k = e.repeat_interleave(k)
            passing, failing = [], []
            for _ in range(d.rollout_rounds):
                noise = self.gen.sample_noise(k, generator=noise_gen)
                s = self.rewards(self.generate(noise, e_k, grad=False), [row], k)[0]
                all_scores.append(s)
                tried += k
                passing += [noise[i] for i in range(k) if is_correct(s[i])]
                failing += [noise[i] for i in range(k) if not is_correct(s[i])]
                if len(passing) >= d.positives and len(failing) >= d.negatives:
                    break
            if len(passing) < d.positives or len(failing) < d.negatives:
                continue
            passing = [passing[i] for i in _permutation(len(passing), noise_gen)[:p_cap]]
            failing = [failing[i] for i in _permutation(len(failing), noise_gen)[:f_cap]]
            negatives, surplus = failing[: d.negatives], failing[d.negatives :]
            gen_noise = torch.stack(passing + surplus)  # the generated set: positives first
            n = gen_noise.shape[0]
            x = self.generate(gen_noise, e.repeat_interleave(n))
            feats = self.features(x, e, n, grad=True)
            pos = self.anchor_features(x, feats, torch.arange(d.positives, device=x.device)[None], e, n)
            x_neg = self.generate(torch.stack(negatives), e.repeat_interleave(d.negatives), grad=False)
            neg = self.features(x_neg, e, d.negatives, grad=False)
            feats_ref = {}
            if d.lambda_ref > 0:
                feats_ref = self.features(self.generate(gen_noise, e.repeat_interleave(n), reference=True), e, n, grad=False)
            loss, m = self.drift_terms(feats, feats_ref, pos, neg, 1)
            losses.append(loss)
            sizes.append(n)
            for key, v in m.items():
                drift_metrics.setdefault(key, []).append(v)
        scores = torch.cat(all_scores)
        metrics = {"reward/mean": scores.mean().item(), "rollout/skipped": float(len(batch) - len(losses)), "rollout/candidates": float(tried)}
        if not losses:
            # nothing to learn from this micro-step: a zero loss that still touches the graph
            zero = sum(p.sum() for p in self.gen.trainable_parameters()) * 0.0
            return zero, metrics
        metrics["rollout/generated"] = sum(sizes) / len(sizes)
        metrics.update({key: sum(v) / len(v) for key, v in drift_metrics.items()})
        return torch.stack(losses).sum() / len(batch), metrics


class OfflineDrPO(DrPO):
    """§2.5. `anchors`: positives/negatives are the VAE-encoded chosen/rejected dataset images.
    `ranked`: dataset pairs only rank on-policy candidates by feature distance, then online DrPO."""

    name = "drpo_offline"

    def __init__(self, cfg, models, timer):
        super().__init__(cfg, models, timer)
        from drpo.data.pairs import load_pairs

        self.pairs = load_pairs(cfg.offline.dataset)
        self._anchor_cache: dict[tuple[str, int], dict[str, Tensor]] = {}

    def _anchor_features(self, row: dict, side: str) -> dict[str, Tensor]:
        """Features of a prompt's chosen or rejected images (VAE-encoded, posterior mode), cached."""
        key = (side, row["pair_index"])
        if key not in self._anchor_cache:
            images = self.pairs.images(row["pair_index"], side, self.gen.resolution).to(self.gen.device, self.gen.dtype)
            with torch.no_grad():
                latents = self.gen.encode_images(images)
                embeds = self.gen.encode_prompts([row["prompt"]])
                self._anchor_cache[key] = self.features(latents, embeds, latents.shape[0], grad=False)
        return self._anchor_cache[key]

    def loss(self, batch: list[dict], noise_gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        o, d = self.cfg.offline, self.cfg.drpo
        if len(batch) != 1:
            raise ValueError("the offline variant uses prompts_per_micro_step: 1 (anchor sets differ in size)")
        row = batch[0]
        k = d.candidates
        embeds = self.encode(batch)
        embeds_k = embeds.repeat_interleave(k)
        noise = self.gen.sample_noise(k, generator=noise_gen)
        x = self.generate(noise, embeds_k)
        feats = self.features(x, embeds, k, grad=True)
        chosen, rejected = self._anchor_features(row, "chosen"), self._anchor_features(row, "rejected")
        x_ref = self.generate(noise, embeds_k, reference=True) if d.lambda_ref > 0 else None
        feats_ref = self.features(x_ref, embeds, k, grad=False) if x_ref is not None else {}
        if o.mode == "anchors":
            loss, metrics = self.drift_terms(feats, feats_ref, chosen, rejected, 1)
            return loss, metrics
        # ranked: pseudo-scores from feature distances to the chosen / rejected sets
        with self.timer("rank_select"):
            scores = torch.zeros(k, device=x.device)
            for key, f in feats.items():
                flat = f.detach().flatten(1).float()
                dp = torch.cdist(flat, chosen[key].flatten(1).float())
                dn = torch.cdist(flat, rejected[key].flatten(1).float())
                dp, dn = (dp.mean(1), dn.mean(1)) if o.distance == "mean" else (dp.min(1).values, dn.min(1).values)
                z = lambda v: (v - v.mean()) / v.std(unbiased=False).clamp_min(1e-6)  # noqa: E731
                scores += z(dn - dp) if o.score == "margin" else z(dn) - z(dp)
            scores = scores / len(feats)
            pos_idx, neg_idx = self.select(scores[None])
        # gradient set: the top fraction minus the negatives (fallback: the best one)
        top = scores.argsort(descending=True)[: max(1, int(round(k * o.top_fraction)))]
        gen_idx = [i for i in top.tolist() if i not in set(neg_idx[0].tolist())] or [int(top[0])]
        gi = torch.tensor(gen_idx, device=x.device)[None]
        pos = self.anchor_features(x, feats, pos_idx, embeds, k)
        neg = self.anchor_features(x, feats, neg_idx, embeds, k)
        if o.use_data_anchors:
            pos = {key: torch.cat([v, chosen[key]]) for key, v in pos.items()}
            neg = {key: torch.cat([v, rejected[key]]) for key, v in neg.items()}
        gen_feats = {key: _take(f, gi, k) for key, f in feats.items()}
        ref_feats = {key: _take(f, gi, k) for key, f in feats_ref.items()}
        loss, metrics = self.drift_terms(gen_feats, ref_feats, pos, neg, 1)
        metrics.update(reward_stats(scores[None], prefix="pseudo_score"))
        return loss, metrics
