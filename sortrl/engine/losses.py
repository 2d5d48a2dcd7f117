"""Policy losses, loss aggregation and KL estimators (registries).

Per-token policy losses take `log_probs`, `old_log_probs` (same shape, any
shape, nats) and `advantages` (broadcastable to it) and return the per-token
loss (to be minimised) of the same shape. Each is positively homogeneous in the
advantage (`f(lp, old, c*A) = c*f(lp, old, A)` for c > 0, a tested property):
that lets the engine fold the `trial` axis into per-token weights, summing the
positive and the negative advantages of a token separately. A loss that is not
positively homogeneous opts out with `foldable=False`: the engine then applies
it to every sampled token with that response's advantage and aggregates with
the run's weights (slower: the `trial` axis stays in every inner step).

Notation: rho = exp(log_probs - old_log_probs) (the importance ratio), A the
advantage (the lecture's delta), eps_low = `epsilon`, eps_high = `epsilon_high`,
c = `clip_ratio_c`. Checked against verl 0.9.1 (`verl/trainer/ppo/core_algos.py`)
and TRL 1.16.0 (`GRPOTrainer._compute_loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor


class ClipRange(NamedTuple):
    """Per-run clip parameters, each `Float[Tensor, " run"]` broadcast to the token shape by the caller.

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
    """loss = -A * rho, rho = exp(log pi - log pi_old): importance-weighted policy gradient (lecture `unclipped`).

    The lecture's `unclipped` mode with its bug fixed (it used `log_probs / old_log_probs`).
    At rho = 1 the gradient equals `naive`'s.
    """
    return -advantages * torch.exp(log_probs - old_log_probs)


def clipped_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: ClipRange) -> Tensor:
    """loss = -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A); for A < 0 at most -A c (PPO/GRPO, DAPO, dual-clip).

    PPO's clipped surrogate (Schulman et al. 2017) and, for A < 0 only,
    loss = min(loss, -A c) (dual-clip, Ye et al. 2020; verl `clip_ratio_c`).
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
    """A policy loss and what the engine needs to know about it (it never compares loss names)."""

    fn: PolicyLossFn
    linear: bool
    """Linear in A: advantages of both signs may be summed into one weight per token before the call."""
    uses_ratio: bool
    """Needs the old policy's log-probs (an importance ratio); False: a function of log pi alone."""
    clips: bool
    """Clips the ratio: the engine logs TRL's clip fractions for it."""
    supervised: bool = False
    """Trained on the sorted answers of the prompts (their one-hot targets), not on sampled responses and advantages."""
    foldable: bool = True
    """Positively homogeneous in A, so responses fold into per-token weights; False: computed per sampled token."""


def sft_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: ClipRange) -> Tensor:
    """loss = -w * log pi(y*_t): supervised cross-entropy on the sorted answer y* = sorted(prompt) (a reference).

    Supervised fine-tuning as a reference for what the model can learn: the
    engine passes the targets' weights (1 / number of target tokens, i.e. the
    mean over prompts and positions) as `advantages`; samples and rewards are
    not used (the sampled responses are still drawn and scored, for `mean_reward`).
    """
    return -advantages * log_probs


LOSS_MODES: dict[str, LossMode] = {
    "naive": LossMode(naive_loss, linear=True, uses_ratio=False, clips=False),
    "unclipped": LossMode(unclipped_loss, linear=True, uses_ratio=True, clips=False),
    "clipped": LossMode(clipped_loss, linear=False, uses_ratio=True, clips=True),
    "sft": LossMode(sft_loss, linear=True, uses_ratio=False, clips=False, supervised=True),
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
    """omega = mask / #tokens: sum over all tokens / number of tokens (verl `token-mean`; DAPO).

    The lecture's `.mean()` over (batch, trial, pos) at fixed length.
    """
    return mask * (1 / mask.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1))


def seq_mean_token_mean(mask: Tensor, max_len: int) -> Tensor:
    """omega = mask / (#tokens of the response * #responses): mean of token means (verl; GRPO paper).

    verl `seq-mean-token-mean`; the GRPO paper's 1/G sum_i 1/|o_i| sum_t.
    """
    return mask / mask.sum(dim=-1, keepdim=True).clamp(min=1) / _num_seqs(mask)


def seq_mean_token_sum(mask: Tensor, max_len: int) -> Tensor:
    """omega = mask / #responses: mean over responses of the response's token sum (verl `seq-mean-token-sum`)."""
    return mask / _num_seqs(mask)


def seq_mean_token_sum_norm(mask: Tensor, max_len: int) -> Tensor:
    """omega = mask / (#responses * max response length) (Dr. GRPO; verl `seq-mean-token-sum-norm`).

    Equal to verl 0.9.1's `agg_loss` (the token sums averaged over responses,
    then divided by the horizon, the max response length) and to TRL's
    `loss_type="dr_grpo"` (sum / (batch size * max_completion_length)).
    Filtered prompts (`filter_zero_std_groups`) leave the response count as they
    leave every normaliser, as in verl, where they leave the batch. A
    response's weight does not depend on its own length: Dr. GRPO's fix of the
    length bias.
    """
    return mask / (_num_seqs(mask) * max_len)


LOSS_AGG_MODES: dict[str, AggFn] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


def lecture_kl_agg(mask: Tensor, max_len: int) -> Tensor:
    """omega = mask / #responses: the lecture's KL, summed over positions and averaged over responses.

    CS336 lecture 17 `compute_kl_penalty` (`.sum(dim=-1).mean()`); the same
    weights as `seq-mean-token-sum`. At fixed length L it is L times verl's and
    TRL's `token-mean` KL, so a coefficient means L times as much as theirs.
    """
    return seq_mean_token_sum(mask, max_len)


KL_LOSS_AGG_MODES: dict[str, AggFn] = {**LOSS_AGG_MODES, "lecture": lecture_kl_agg}
"""How the KL term is aggregated (`kl_loss_agg_mode`): a loss aggregation mode, or the lecture's."""


def response_mean(mask: Tensor, max_len: int) -> Tensor:
    """omega = 1 / (#responses x L) everywhere: the mean over every sampled response of the epoch (sortrl's critic).

    The `critic`'s value loss as sortrl computed it before issue 22: every response of the epoch counts once,
    whatever its length and whether the zero-std filter dropped its prompt (the mask is not read). verl's critic
    aggregates over the loss tokens instead (`actor`).
    """
    _, batch, trial, pos = mask.shape
    return torch.full_like(mask, 1 / (batch * trial * pos))


CRITIC_LOSS_AGG_MODES: dict[str, AggFn | str] = {
    "response-mean": response_mean,
    "actor": "the run's `loss_agg_mode` over the loss tokens, as verl 0.9.1's critic by default "
    "(`critic.loss_agg_mode: ${actor.loss_agg_mode}`); filtered prompts leave it",
    **LOSS_AGG_MODES,
}
"""How the critic's per-token value loss is aggregated (`critic_loss_agg_mode`): sortrl's response mean, the actor's
mode, or a loss aggregation mode (verl `critic.loss_agg_mode`, over the loss tokens)."""


# --- KL estimators (Schulman 2020, "Approximating KL divergence") ---------
KlFn = Callable[[Float[Tensor, "..."], Float[Tensor, "..."]], Float[Tensor, "..."]]

LOG_RATIO_CLAMP = 20.0
"""verl clamps k3's log-ratio to [-20, 20] before exponentiating."""

K3_CLAMP = 10.0
"""verl clamps k3 to at most 10."""


def kl_k1(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref (unbiased, high variance, can be negative; verl `kl`/`k1`)."""
    return log_probs - ref_log_probs


def kl_k2(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2 (biased, low variance, >= 0; verl `mse`/`k2`)."""
    return 0.5 * (log_probs - ref_log_probs) ** 2


def kl_k3(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """k3 = exp(d) - d - 1, d = log pi_ref - log pi (unbiased, >= 0; verl `low_var_kl`/`k3`; TRL's GRPO KL).

    Computed as expm1(d) - d, which is never negative in floating point
    (exp(d) - d - 1 rounds to small negatives near d = 0); zero iff the two
    log-probs agree. Clamped as verl 0.9.1 does: d to [-20, 20], k3 to at most
    10 (no gradient beyond); TRL 1.16 does not clamp, so the two differ exactly
    where k3 > 10, i.e. d > 2.61 or d < -11.
    The lecture's `compute_kl_penalty` estimator.
    """
    diff = (ref_log_probs - log_probs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.expm1(diff) - diff).clamp(0, K3_CLAMP)


KL_ESTIMATORS: dict[str, KlFn] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
