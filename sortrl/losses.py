"""Policy losses, loss aggregation and KL estimators (registries).

Per-token policy losses take `log_probs`, `old_log_probs` (same shape, any
shape, nats) and `advantages` (broadcastable to it) and return the per-token
loss (to be minimised) of the same shape. Each is positively homogeneous in the
advantage (`f(lp, old, c*A) = c*f(lp, old, A)` for c > 0, a tested property):
that lets the engine fold the `trial` axis into per-token weights, summing the
positive and the negative advantages of a token separately.

Notation: rho = exp(log_probs - old_log_probs) (the importance ratio), A the
advantage (the lecture's delta), eps_low = `epsilon`, eps_high = `epsilon_high`,
c = `clip_ratio_c`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor


class ClipRange(NamedTuple):
    """Per-run clip parameters, each `Float[Tensor, "run"]` broadcast to the token shape by the caller.

    `low`/`high` are eps_low/eps_high; `dual` is verl's `clip_ratio_c` (inf when off).
    """

    low: Tensor
    high: Tensor
    dual: Tensor


PolicyLossFn = Callable[[Tensor, Tensor, Tensor, ClipRange], Tensor]


def naive_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: ClipRange) -> Tensor:
    """loss = -A * log pi(y_t): REINFORCE / the lecture's `naive` mode (no ratio, no clipping)."""
    return -advantages * log_probs


def unclipped_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: ClipRange) -> Tensor:
    """loss = -A * rho, rho = exp(log pi - log pi_old): importance-weighted policy gradient.

    The lecture's `unclipped` mode with its bug fixed (it used `log_probs / old_log_probs`).
    At rho = 1 the gradient equals `naive`'s.
    """
    return -advantages * torch.exp(log_probs - old_log_probs)


def clipped_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: ClipRange) -> Tensor:
    """PPO/GRPO clipped surrogate, with DAPO clip-higher and verl dual-clip.

    loss = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)          (Schulman et al. 2017)
    and, for A < 0 only, loss = min(loss, -A c)                         (dual-clip, Ye et al. 2020;
                                                                          verl `clip_ratio_c`)
    eps_high != eps_low is DAPO's clip-higher (Yu et al. 2025). The lecture's
    `clipped` mode with its ratio bug fixed. The gradient is zero where the
    clipped branch is active: rho > 1 + eps_high with A > 0, rho < 1 - eps_low
    with A < 0 (and rho > c with A < 0 under dual-clip).
    """
    rho = torch.exp(log_probs - old_log_probs)
    clipped = torch.clamp(rho, 1 - clip.low, 1 + clip.high)
    loss = -torch.minimum(rho * advantages, clipped * advantages)
    return torch.where(advantages < 0, torch.minimum(loss, -advantages * clip.dual), loss)


class LossMode(NamedTuple):
    fn: PolicyLossFn
    linear: bool
    """True if the loss is linear in A, so advantages of both signs may be summed before the call."""


LOSS_MODES: dict[str, LossMode] = {
    "naive": LossMode(naive_loss, linear=True),
    "unclipped": LossMode(unclipped_loss, linear=True),
    "clipped": LossMode(clipped_loss, linear=False),
}

IMPORTANCE_SAMPLING_LEVELS: dict[str, str] = {
    "token": "one ratio per token, rho_t = pi(y_t) / pi_old(y_t) (PPO, GRPO)",
    "sequence": "one ratio per response, s = exp(mean_t log rho_t), clipped per response "
    "(GSPO, Zheng et al. 2025; TRL `importance_sampling_level='sequence'`)",
}


# --- loss aggregation: per-token weights --------------------------------
# Each mode returns omega, `Float[Tensor, "run batch trial pos"]`, the weight of
# every token in the run's loss: loss_run = sum_{batch trial pos} omega * loss_token.
# `mask` is 1 for tokens in the loss (the policy's actions, on kept prompts).
AggFn = Callable[[Tensor, int], Tensor]


def _num_seqs(mask: Tensor) -> Tensor:
    """Number of responses with at least one token in the loss, per run: [run 1 1 1]."""
    return (mask.sum(dim=-1) > 0).sum(dim=(1, 2)).clamp(min=1)[:, None, None, None]


def token_mean(mask: Tensor, max_len: int) -> Tensor:
    """sum over all tokens / number of tokens (verl `token-mean`; DAPO). The lecture's `.mean()` at fixed length."""
    return mask * (1 / mask.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1))


def seq_mean_token_mean(mask: Tensor, max_len: int) -> Tensor:
    """mean over responses of (mean over the response's tokens) (verl `seq-mean-token-mean`; GRPO paper)."""
    return mask / mask.sum(dim=-1, keepdim=True).clamp(min=1) / _num_seqs(mask)


def seq_mean_token_sum(mask: Tensor, max_len: int) -> Tensor:
    """mean over responses of (sum over the response's tokens) (verl `seq-mean-token-sum`)."""
    return mask / _num_seqs(mask)


def seq_mean_token_sum_norm(mask: Tensor, max_len: int) -> Tensor:
    """sum over tokens / (number of responses * max response length) (Dr. GRPO; TRL `loss_type="dr_grpo"`).

    verl's `seq-mean-token-sum-norm` divides the token sum by the max length
    only; dividing by the number of responses as well (a constant per run
    unless `filter_zero_std_groups` drops prompts, which leave the count as
    they leave every normaliser) only rescales it. A response's weight does
    not depend on its own length: that is Dr. GRPO's fix of the length bias.
    """
    return mask / (_num_seqs(mask) * max_len)


LOSS_AGG_MODES: dict[str, AggFn] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


# --- KL estimators (Schulman 2020, "Approximating KL divergence") ---------
KlFn = Callable[[Float[Tensor, "..."], Float[Tensor, "..."]], Float[Tensor, "..."]]


def kl_k1(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref (unbiased, high variance, can be negative; verl `kl`)."""
    return log_probs - ref_log_probs


def kl_k2(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2 (biased, low variance, >= 0; verl `mse`)."""
    return 0.5 * (log_probs - ref_log_probs) ** 2


def kl_k3(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1 (unbiased, >= 0; verl `low_var_kl`).

    The lecture's `compute_kl_penalty` estimator; zero iff the two log-probs agree.
    """
    diff = ref_log_probs - log_probs
    return torch.exp(diff) - diff - 1


KL_ESTIMATORS: dict[str, KlFn] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
