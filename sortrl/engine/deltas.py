"""Delta (advantage) modes: how a group's rewards become per-response weights.

Each mode maps rewards `Float[Tensor, "run batch trial"]` to deltas of the same
shape (reward units, or unitless after std normalisation). A group is the
`trial` axis of one prompt (`batch` entry) of one run. Lecture modes follow
`compute_deltas` of CS336 lecture 17; the others name their source.

The contract (also for a plug-in's own mode, `sortrl.engine.registry.register`): a
function whose first parameter is the rewards; any further parameters must be
names of `EXTRAS`, which the engine computes (only in batches that have a run
whose mode asks for them) and passes by keyword. It must treat every run (and
every group, unless it is a batch-level mode) on its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from einops import reduce
from jaxtyping import Float
from torch import Tensor

DeltaFn = Callable[..., Float[Tensor, "run batch trial"]]
"""`fn(rewards [run batch trial], **extras) -> deltas [run batch trial]` (see the module docstring)."""

STD_EPS = 1e-5
"""Added to the std before dividing (the lecture's `+ 1e-5`)."""


def rewards(r: Float[Tensor, "run batch trial"]) -> Float[Tensor, "run batch trial"]:
    """delta_i = r_i: plain REINFORCE on raw rewards (lecture `rewards`)."""
    return r


def centered_rewards(r: Float[Tensor, "run batch trial"]) -> Float[Tensor, "run batch trial"]:
    """delta_i = r_i - mean_j r_j over the group (lecture `centered_rewards`; Dr. GRPO's advantage)."""
    return r - r.mean(dim=-1, keepdim=True)


def normalized_rewards(r: Float[Tensor, "run batch trial"]) -> Float[Tensor, "run batch trial"]:
    """delta_i = (r_i - mean r) / (std r + 1e-5), std unbiased over the group (lecture; GRPO; TRL scale_rewards="group").

    Lecture `normalized_rewards`; GRPO (Shao et al. 2024, DeepSeekMath) and TRL
    `scale_rewards="group"`. Needs a group of at least 2 (the std of one
    response is NaN): `RunConfig` rejects `num_responses < 2` for this mode.
    """
    centered = r - r.mean(dim=-1, keepdim=True)
    return centered / (r.std(dim=-1, keepdim=True) + STD_EPS)


def max_rewards(r: Float[Tensor, "run batch trial"]) -> Float[Tensor, "run batch trial"]:
    """delta_i = r_i if r_i is the group's maximum, else 0 (lecture `max_rewards`)."""
    top = r.max(dim=-1, keepdim=True).values
    return torch.where(r == top, r, torch.zeros_like(r))


def rloo(r: Float[Tensor, "run batch trial"]) -> Float[Tensor, "run batch trial"]:
    """delta_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean r): leave-one-out baseline (RLOO; verl `rloo`).

    Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free");
    Ahmadian et al. 2024; verl `adv_estimator=rloo`. Needs G >= 2.
    """
    g = r.shape[-1]
    return (r - r.mean(dim=-1, keepdim=True)) * (g / (g - 1))


def batch_normalized(r: Float[Tensor, "run batch trial"]) -> Float[Tensor, "run batch trial"]:
    """delta_i = (r_i - group mean) / (std over the run's whole batch + 1e-5) (TRL scale_rewards="batch").

    TRL `scale_rewards="batch"` (std of all rewards of the run's epoch, unbiased),
    which keeps the group baseline but drops the per-prompt std weighting.
    """
    std = reduce(r, "run batch trial -> run", torch.std)
    return (r - r.mean(dim=-1, keepdim=True)) / (std[:, None, None] + STD_EPS)


def critic(
    r: Float[Tensor, "run batch trial"], values: Float[Tensor, "run batch 1"]
) -> Float[Tensor, "run batch trial"]:
    """delta_i = r_i - V(prompt): a learned value baseline (PPO's critic; Schulman et al. 2017).

    V is a linear value head on the policy's prompt encoding (its input
    detached, so the critic never moves the policy), zero at the start and
    trained by Adam (`critic_learning_rate`) on 0.5 * (V - r)^2, one step per
    inner step (`sortrl.engine.model.value`): averaged over the epoch's
    responses by default, or as verl 0.9.1's critic does it
    (`critic_loss_agg_mode`, `cliprange_value`; `sortrl.engine.objective.ValueLoss`).
    verl's `gae` with gamma = lambda = 1 gives A_t = r - V(s_t) for one
    sequence-level reward, which for this non-autoregressive policy (one state
    per prompt) is this delta; verl then also whitens the advantages over the
    batch, which this mode does not, and with `use_kl_in_reward` its return at
    token t holds only the KL of tokens >= t, where r here holds the
    response's whole KL (`REWARD_TO_GO_MODES`). Works with `num_responses = 1`.
    """
    return r - values


def optimal_baseline(
    r: Float[Tensor, "run batch trial"], grad_sq_norms: Float[Tensor, "run batch trial"]
) -> Float[Tensor, "run batch trial"]:
    """delta_i = r_i - sum_j |g_j|^2 r_j / sum_j |g_j|^2: variance-minimising baseline (lecture 17; Greensmith 2004).

    The constant baseline that minimises the variance of the policy-gradient
    estimate, b* = E[|grad log pi(y)|^2 R] / E[|grad log pi(y)|^2] (lecture 17,
    "optimal baseline"; Greensmith et al. 2004), estimated per group from its
    own responses. |g_j|^2 is the squared norm of the gradient of
    log pi(y_j | x) with respect to the logits, sum over the response's action
    positions of |onehot(y_t) - pi_t|^2 (exact for the last layer's input, a
    cheap proxy for the full parameter gradient). These are the weights of
    verl's `optimal_token_baseline` estimator (which forms a baseline per token;
    the two agree at a response's last token), not OPO's (verl `opo`), which
    weights by response length. Falls back to the group mean where every
    weight is 0 (a fully deterministic policy). Needs 2 or more responses per
    prompt (with one, every delta is 0: refused by `RunConfig`).
    """
    total = grad_sq_norms.sum(dim=-1, keepdim=True)
    weighted = (grad_sq_norms * r).sum(dim=-1, keepdim=True)
    baseline = torch.where(total > 0, weighted / total.clamp(min=torch.finfo(r.dtype).tiny), r.mean(-1, keepdim=True))
    return r - baseline


def remax(
    r: Float[Tensor, "run batch trial"], greedy_rewards: Float[Tensor, "run batch 1"]
) -> Float[Tensor, "run batch trial"]:
    """delta_i = r_i - r(greedy response): the ReMax baseline (Li et al. 2023; verl `remax`).

    The greedy response takes the argmax token at every position (it ends at
    its first EOS, as a sampled one does) and is scored by the run's reward,
    length penalty and overlong penalty (not by a KL-in-reward penalty). With
    `use_kl_in_reward`, verl's `compute_remax_outcome_advantage` gives token t
    the return of tokens >= t (the KL of earlier tokens left out); here the
    response's whole KL is in r (`REWARD_TO_GO_MODES`).
    """
    return r - greedy_rewards


WHITEN_EPS = 1e-8
"""verl's `masked_whiten`/`masked_mean` epsilon."""


def reinforce_plus_plus(
    r: Float[Tensor, "run batch trial"], action_counts: Float[Tensor, "run batch trial"]
) -> Float[Tensor, "run batch trial"]:
    """delta = (R - mean) / sqrt(var + 1e-8) over the loss tokens of the run's batch (verl `reinforce_plus_plus`).

    verl `reinforce_plus_plus` (Hu 2025, REINFORCE++) with gamma = 1 and one
    sequence-level reward: every token of a response has the return R, and
    verl whitens the returns over all loss tokens of the batch
    (`masked_whiten`), so a response weighs as many times as it has tokens
    (`action_counts`; filtered prompts have none). With `use_kl_in_reward`
    verl's return at token t includes only the KL of tokens >= t; here the
    response's whole KL is in R (the return at its first token). No group
    baseline: the batch mean is the baseline.
    """
    counts = action_counts.flatten(1)
    values = r.flatten(1)
    n = counts.sum(dim=1, keepdim=True)
    mean = (counts * values).sum(dim=1, keepdim=True) / (n + WHITEN_EPS)
    var = (counts * (values - mean) ** 2).sum(dim=1, keepdim=True) / (n + WHITEN_EPS) * (n / (n - 1).clamp(min=1))
    return ((values - mean) * torch.rsqrt(var + WHITEN_EPS)).view_as(r)


DELTA_MODES: dict[str, DeltaFn] = {
    "rewards": rewards,
    "centered_rewards": centered_rewards,
    "normalized_rewards": normalized_rewards,
    "max_rewards": max_rewards,
    "rloo": rloo,
    "batch_normalized": batch_normalized,
    "critic": critic,
    "optimal_baseline": optimal_baseline,
    "remax": remax,
    "reinforce_plus_plus": reinforce_plus_plus,
}

REWARD_TO_GO_MODES = frozenset({"critic", "remax", "reinforce_plus_plus"})
"""Modes whose verl 0.9.1 estimator (`gae`, `remax`, `reinforce_plus_plus`) gives each token the return of that token
and the later ones. With `use_kl_in_reward` verl's return at token t holds only the KL of tokens >= t; here a delta is
one number per response, whose return holds the response's whole KL (the return at its first token). verl's
outcome estimators (`grpo`, `rloo`) sum the token rewards, whole KL included, as sortrl does."""

EXTRAS: dict[str, str] = {
    "values": "[run batch 1] the critic's V(prompt) when the responses were sampled (`critic`)",
    "greedy_rewards": "[run batch 1] the reward of the greedy (argmax) response to the prompt (`remax`)",
    "grad_sq_norms": "[run batch trial] |d log pi(y | x) / d logits|^2 summed over the response's action positions",
    "action_counts": "[run batch trial] tokens of the response in the loss (actions, including EOS; 0 if filtered)",
}
"""What the engine can pass a delta mode besides the rewards (by parameter name)."""


def extras(fn: Callable[..., Tensor]) -> tuple[str, ...]:
    """The `EXTRAS` a delta mode asks for: its parameters after the first. Raises `ValueError` for another name."""
    names = list(inspect.signature(fn).parameters)[1:]
    unknown = [n for n in names if n not in EXTRAS]
    if unknown:
        raise ValueError(f"delta mode parameter {unknown[0]!r} is not one the engine provides: {', '.join(EXTRAS)}")
    return tuple(names)
