"""The baselines of METHOD.md §4, one-step, on the same generator, LoRA, data and tracking.

DRaFT and VGGFlow need a differentiable reward (they backpropagate through it); DPO-1step,
GRPO-1step and PSO only use rewards to rank or sign, like DrPO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from drpo.train.base import Method, reward_stats


def _differentiable_reward(method: Method):
    reward = method.models.reward
    if not getattr(reward, "differentiable", False):
        names = [r.name for r in method.cfg.reward]
        raise ValueError(
            f"method '{method.name}' backpropagates through the reward, but reward {names} is not "
            f"differentiable; set `reward:` to one differentiable reward (e.g. pickscore, aesthetic)"
        )
    return reward


def _prompts(batch: list[dict], k: int) -> list[str]:
    return [row["prompt"] for row in batch for _ in range(k)]


class DRaFT(Method):
    """L = −(1/K) Σ_k R(D(x_θ(z_k)), c) (+ λ_ref·MSE to the reference); candidates are streamed
    in chunks with a backward per chunk, so memory holds one chunk's graph at a time."""

    name = "draft"

    def backward(self, batch: list[dict], scale: float, noise_gen: torch.Generator) -> dict[str, float]:
        c = self.cfg.draft
        reward = _differentiable_reward(self)
        b, k = len(batch), c.candidates
        embeds_k = self.encode(batch).repeat_interleave(k)
        noise = self.gen.sample_noise(b * k, generator=noise_gen)
        prompts = _prompts(batch, k)
        scores, total = [], 0.0
        for start in range(0, b * k, c.chunk):
            sl = slice(start, min(start + c.chunk, b * k))
            e = embeds_k.select(list(range(sl.start, sl.stop)))
            x = self.generate(noise[sl], e)
            with self.timer("decoding"):
                img = self.gen.decode(x)
            with self.timer("reward"):
                r = reward.score_differentiable(img, prompts[sl])
            loss = -r.sum() / (b * k)
            if c.std_weight > 0:  # −λ_std·std_k R: one chunk holds every candidate (checked in the config)
                loss = loss - c.std_weight * r.float().view(b, k).std(dim=1, unbiased=False).mean()
            if c.ref_l2_weight > 0:
                x_ref = self.generate(noise[sl], e, reference=True)
                loss = loss + c.ref_l2_weight * (x.float() - x_ref.float()).pow(2).mean() * (sl.stop - sl.start) / (b * k)
            with self.timer("backward"):
                (loss * scale).backward()
            scores.append(r.detach().float())
            total += loss.item()
        s = torch.cat(scores).view(b, k)
        return {"loss": total, **reward_stats(s)}


class DPOOneStep(Method):
    """Online DPO with a latent-distance 'likelihood' (§4): sim(X,Y) = −mean_{i,j} mean_d (x_i−y_j)²,
    C/J = top/bottom candidates by reward, L = −log σ(β((sim(X_θ,C)−sim(X_θ,J)) − (same for X_ref)))."""

    name = "dpo"

    @staticmethod
    def sim(x: Tensor, y: Tensor) -> Tensor:
        """(B,n,d), (B,m,d) → (B,): minus the mean squared distance over all pairs."""
        return -(x.unsqueeze(2) - y.unsqueeze(1)).pow(2).mean(dim=(1, 2, 3))

    def loss(self, batch: list[dict], noise_gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg.dpo
        b, k = len(batch), c.candidates
        embeds_k = self.encode(batch).repeat_interleave(k)
        noise = self.gen.sample_noise(b * k, generator=noise_gen)
        x = self.generate(noise, embeds_k)
        x_ref = self.generate(noise, embeds_k, reference=True)
        scores = self.rewards(x, batch, k)
        order = scores.argsort(dim=1, descending=True)
        flat = x.float().flatten(1).view(b, k, -1)
        flat_ref = x_ref.float().flatten(1).view(b, k, -1)
        gather = lambda t, idx: torch.gather(t, 1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # noqa: E731
        chosen = gather(flat.detach(), order[:, : c.chosen])
        rejected = gather(flat.detach(), order[:, -c.rejected :])
        g_theta = self.sim(flat, chosen) - self.sim(flat, rejected)
        g_ref = torch.zeros_like(g_theta) if c.reference_free else self.sim(flat_ref, chosen) - self.sim(flat_ref, rejected)
        margin = c.beta * (g_theta - g_ref)
        loss = -F.logsigmoid(margin).mean()
        return loss, {"dpo/margin": margin.mean().item(), **reward_stats(scores)}


class GRPOOneStep(Method):
    """Neighbour-GRPO (§4): K neighbours of one base noise, group advantages, a PPO-shaped surrogate
    over a softmax of distances from a few re-run anchors, plus a small MSE to the reference."""

    name = "grpo"

    def loss(self, batch: list[dict], noise_gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg.grpo
        b, k = len(batch), c.candidates
        embeds = self.encode(batch)
        base = self.gen.sample_noise(b, generator=noise_gen)
        delta = self.gen.sample_noise(b * k, generator=noise_gen)
        noise = (1 - c.sigma**2) ** 0.5 * base.repeat_interleave(k, dim=0) + c.sigma * delta
        embeds_k = embeds.repeat_interleave(k)
        x_hat = self.generate(noise, embeds_k, grad=False)  # rollouts, no grad
        r = self.rewards(x_hat, batch, k)  # (B, K)
        if c.zscore:
            r = (r - r.mean(1, keepdim=True)) / r.std(1, unbiased=False, keepdim=True).clamp_min(1e-6)
        centred = r - r.mean(1, keepdim=True)
        pnorm = centred.abs().pow(c.p_norm).sum(1, keepdim=True).pow(1 / c.p_norm)
        adv = torch.where(pnorm > 1e-6, (k**0.5) * centred / pnorm.clamp_min(1e-6), torch.zeros_like(centred))
        adv = adv.clamp(-c.adv_clip, c.adv_clip)
        anchors = torch.stack([torch.randperm(k, generator=noise_gen, device=noise_gen.device)[: c.anchors].cpu() for _ in range(b)])  # (B, A)
        a_idx = (anchors + torch.arange(b).unsqueeze(1) * k).flatten()
        x_a = self.generate(noise[a_idx], embeds_k.select(a_idx.tolist()))  # anchors re-run with grad
        xh = x_hat.float().flatten(1).view(b, k, -1)
        xa = x_a.float().flatten(1).view(b, c.anchors, -1)
        xa_old = torch.gather(xh, 1, anchors.to(xh.device).unsqueeze(-1).expand(-1, -1, xh.shape[-1]))
        logits = lambda anchor: -(xh.unsqueeze(1) - anchor.unsqueeze(2)).pow(2).mean(-1) / c.tau  # noqa: E731  (B, A, K)
        logp = logits(xa).log_softmax(-1)
        logp_old = logits(xa_old).log_softmax(-1).detach()
        ratio = (logp - logp_old).clamp(-10, 10).exp()
        a = adv.unsqueeze(1)
        surrogate = torch.minimum(ratio * a, ratio.clamp(1 - c.ratio_clip, 1 + c.ratio_clip) * a)
        loss = -surrogate.mean()
        if c.ref_l2_weight > 0:
            x_ref = self.generate(noise[a_idx], embeds_k.select(a_idx.tolist()), reference=True)
            loss = loss + c.ref_l2_weight * (x_a.float() - x_ref.float()).pow(2).mean()
        return loss, {"grpo/adv_abs": adv.abs().mean().item(), **reward_stats(r)}


class PSOOneStep(Method):
    """Pairwise sample optimisation (§4): Gaussian 'actions' around the detached sample, clipped
    log-ratios to the reference, a Bradley–Terry loss on pairs ordered by reward."""

    name = "pso"

    def loss(self, batch: list[dict], noise_gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg.pso
        b, k = len(batch), c.candidates - c.candidates % 2
        embeds_k = self.encode(batch).repeat_interleave(k)
        noise = self.gen.sample_noise(b * k, generator=noise_gen)
        x = self.generate(noise, embeds_k)
        x_ref = self.generate(noise, embeds_k, reference=True)
        flat_z = noise.flatten(1)
        stdz = ((flat_z - flat_z.mean(1, keepdim=True)) / flat_z.std(1, keepdim=True).clamp_min(1e-6)).view_as(noise)
        action = x.detach() + c.action_std * stdz
        scores = self.rewards(action, batch, k)  # (B, K): rewards of the decoded actions
        logp = -0.5 * ((action - x) / c.action_std).float().pow(2).flatten(1).mean(1)
        logp_ref = -0.5 * ((action - x_ref) / c.action_std).float().pow(2).flatten(1).mean(1)
        ell = (logp - logp_ref).clamp(-10, 10)
        ell = ell.exp().clamp(1 - c.ratio_clip, 1 + c.ratio_clip).log().view(b, k // 2, 2)
        s = scores.view(b, k // 2, 2)
        sign = torch.where(s[..., 0] > s[..., 1], 1.0, -1.0)
        valid = s[..., 0] != s[..., 1]  # ties dropped
        margin = c.beta * sign * (ell[..., 0] - ell[..., 1])
        if valid.any():
            loss = -F.logsigmoid(margin[valid]).mean()
        else:
            loss = (x.float() * 0).sum()
        return loss, {"pso/pairs": valid.float().sum().item(), **reward_stats(scores)}


class VGGFlowOneStep(Method):
    """Value-gradient target (§4): regress x_θ onto x_ref + η·λ·clip(∇_x R(D(x))), with the clip
    threshold τ set after each update to the q-quantile of the gradient norms (gathered over ranks)."""

    name = "vggflow"

    def __init__(self, cfg, models, timer):
        super().__init__(cfg, models, timer)
        self.tau = cfg.vggflow.tau_init
        self._norms: list[Tensor] = []

    def loss(self, batch: list[dict], noise_gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg.vggflow
        reward = _differentiable_reward(self)
        b, k = len(batch), c.candidates
        embeds_k = self.encode(batch).repeat_interleave(k)
        noise = self.gen.sample_noise(b * k, generator=noise_gen)
        x = self.generate(noise, embeds_k)
        x_ref = self.generate(noise, embeds_k, reference=True)
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            with self.timer("decoding"):
                img = self.gen.decode(xd)
            with self.timer("reward"):
                r = reward.score_differentiable(img, _prompts(batch, k))
            (grad,) = torch.autograd.grad(r.sum(), xd)
        norms = grad.flatten(1).norm(dim=1)
        self._norms.append(norms.detach())
        grad = grad * (self.tau / norms.clamp_min(1e-12)).clamp(max=1.0).view(-1, *[1] * (grad.dim() - 1))
        target = (x_ref + c.scale * grad).detach()
        loss = (x.float() - target.float()).pow(2).mean()
        return loss, {"vggflow/tau": self.tau, "vggflow/grad_norm": norms.mean().item(), **reward_stats(r.detach().view(b, k))}

    def state_dict(self) -> dict:
        return {"tau": self.tau}  # the clip threshold set after the last update: a resumed run goes on with it

    def load_state_dict(self, state: dict) -> None:
        self.tau = float(state.get("tau", self.tau))

    def after_update(self) -> None:
        if not self._norms:
            return
        norms = torch.cat(self._norms)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [torch.zeros_like(norms) for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather(gathered, norms)
            norms = torch.cat(gathered)
        self.tau = torch.quantile(norms.float(), self.cfg.vggflow.quantile).item()
        self._norms.clear()


