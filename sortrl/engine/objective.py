"""One epoch's loss for every run of a batch: the policy term, the entropy bonus and the KL penalty.

Each term is prepared once per epoch from the epoch's responses (`prepare`)
and evaluated at every inner step on the current log-probs (`loss`), giving a
`[run]` tensor: the engine sums the runs' losses, so no run's gradient sees
another's. The engine only asks the loss mode what it declares (`LossMode`:
`linear`, `uses_ratio`, `clips`, `supervised`, `foldable`); the importance
sampling level decides where the ratio lives:

| units | shape | when |
| --- | --- | --- |
| cell | [run batch pos vocab] | token-level ratio and a foldable (or supervised) loss: responses folded into per-token weights |
| token | [run batch trial pos] | token-level ratio and a loss that is not foldable: every sampled token |
| sequence | [run batch trial] | GSPO: one length-normalised ratio per response |

Folding: a token's log-prob depends only on (prompt, position, token), so
sum_t A_t omega_t f(logp[y_t]) = f applied to per-(batch, pos, vocab) weights
(split by the sign of A for a non-linear loss); the sum over trials runs in
trial order, as autograd sums it in the lecture's code, so the lecture's
gradient is reproduced bit for bit.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sortrl.engine.losses import ClipRange, KlFn, LossMode
from sortrl.engine.rollout import Rollout, gather, with_run_axis
from sortrl.engine.task import PAD, sorted_prompts


def fold(values: Float[Tensor, "run batch trial pos"], onehot: Tensor) -> Float[Tensor, "run batch pos vocab"]:
    """sum_t values[r,b,t,p] * onehot[r,b,t,p,v] -> [run batch pos vocab], summed in trial order."""
    return (onehot * values[..., None]).sum(dim=2)


def sequence_log_ratio(
    tokens: Float[Tensor, "run batch trial pos"],
    old_tokens: Float[Tensor, "run batch trial pos"],
    action: Tensor,
    n_actions: Tensor,
) -> Float[Tensor, "run batch trial"]:
    """log s = sum_t (log pi(y_t) - log pi_old(y_t)) / n over a response's n action tokens (GSPO; TRL 1.16
    `importance_sampling_level="sequence"`, whose `log_importance_weights` this is). `action` [run batch trial pos]
    marks the action tokens, `n_actions` [run batch trial] counts them (at least 1)."""
    return ((tokens - old_tokens) * action).sum(dim=-1) / n_actions


def sft_targets(prompts: Tensor, runs: int, num_tokens: int) -> Float[Tensor, "run batch pos vocab"]:
    """Weights of the sorted answers for the `sft` loss: one-hot of sorted(prompt) / the run's number of target tokens."""
    target = sorted_prompts(with_run_axis(prompts))  # [1|run batch pos]
    valid = (target != PAD).float()
    onehot = F.one_hot(target.clamp(min=0), num_tokens).float() * valid[..., None]
    weights = onehot / valid.sum(dim=(1, 2)).clamp(min=1)[:, None, None, None]
    return weights.expand(runs, -1, -1, -1)


class Policy:
    """The policy term of one epoch: weights on the loss's units, and what TRL's clip fractions count."""

    def __init__(
        self,
        mode: LossMode,
        sequence_level: bool,
        roll: Rollout,
        deltas: Float[Tensor, "run batch trial"],
        omega: Float[Tensor, "run batch trial pos"],
        mask: Float[Tensor, "run batch trial pos"],
        old_log_probs: Float[Tensor, "run batch pos vocab"],
        targets: Tensor | None = None,
    ):
        self.mode, self.old_log_probs, self.roll = mode, old_log_probs, roll
        self.units = "sequence" if sequence_level else "cell" if mode.foldable or mode.supervised else "token"
        num_tokens = old_log_probs.shape[-1]
        onehot = F.one_hot(roll.responses, num_tokens).float() if self.units == "cell" else None
        self.weights: list[Tensor] = []
        if mode.supervised:
            self.weights = [targets]
        elif self.units == "cell":
            weights = deltas[..., None] * omega  # A_t * omega_t: [run batch trial pos]
            parts = [weights] if mode.linear else [weights.clamp(min=0), weights.clamp(max=0)]
            self.weights = [fold(w, onehot) for w in parts]
        else:
            self.old_tokens = gather(old_log_probs, roll.responses)  # [run batch trial pos]
            self.deltas, self.omega = deltas, omega
            if self.units == "sequence":
                self.n_actions = roll.action.sum(dim=-1).clamp(min=1)
                self.seq_weights = deltas * omega.sum(dim=-1)  # A_i * sum_t omega_it: [run batch trial]
        self.counts: dict[str, Tensor] = {}
        if (
            mode.uses_ratio and not mode.supervised
        ):  # loss tokens in all / with A < 0 / with A > 0, on the ratio's units
            counts = {"all": mask, "low": mask * (deltas[..., None] < 0), "high": mask * (deltas[..., None] > 0)}
            self.counts = {k: fold(v, onehot) for k, v in counts.items()} if onehot is not None else counts
            self.n_tokens = mask.sum(dim=(1, 2, 3)).clamp(min=1)

    def loss(self, log_probs: Tensor, clip: ClipRange) -> tuple[Tensor, Tensor | None]:
        """(the run's policy loss [run], the importance ratio on the clip counts' units, detached; None without one)."""
        fn = self.mode.fn
        if self.units == "cell":
            loss = sum(fn(log_probs, self.old_log_probs, w, clip) for w in self.weights).sum(dim=(1, 2, 3))
            ratio = torch.exp(log_probs.detach() - self.old_log_probs) if self.counts else None
            return loss, ratio
        tokens = gather(log_probs, self.roll.responses)
        if self.units == "token":
            per_token = fn(tokens, self.old_tokens, self.deltas[..., None].expand_as(tokens), clip)
            ratio = torch.exp(tokens.detach() - self.old_tokens) if self.counts else None
            return (self.omega * per_token).sum(dim=(1, 2, 3)), ratio
        # GSPO: s = exp(mean_t log rho_t), one clipped ratio per response
        log_ratio = sequence_log_ratio(tokens, self.old_tokens, self.roll.action, self.n_actions)
        zeros = torch.zeros_like(log_ratio)
        if self.mode.foldable:
            loss = fn(log_ratio, zeros, self.seq_weights, clip)
        else:
            loss = self.omega.sum(dim=-1) * fn(log_ratio, zeros, self.deltas, clip)
        return loss.sum(dim=(1, 2)), torch.exp(log_ratio.detach())[..., None]

    def clip_shape(self) -> int:
        """Number of axes of the loss's units (what the per-run clip ranges broadcast to)."""
        return 3 if self.units == "sequence" else 4


def ratio_stats(sums: defaultdict[str, Tensor], policy: Policy, ratio: Tensor, clip: ClipRange) -> None:
    """Accumulate the mean importance ratio and TRL's clip fractions over the loss tokens, for one inner step.

    `ratio` is on the units of `policy.counts` (per folded token, per sampled
    token, or per response broadcast over its tokens); the counts weigh it by
    the number of loss tokens it stands for (all / with A < 0 / with A > 0).
    """
    counts = policy.counts
    shape = (-1,) + (1,) * (ratio.dim() - 1)
    dims = tuple(range(1, counts["all"].dim()))

    def share(weights: Tensor) -> Tensor:
        return weights.sum(dim=dims) / policy.n_tokens

    sums["importance_ratio"] += share(counts["all"] * ratio)
    if policy.mode.clips:
        below = share(counts["low"] * (ratio < 1 - clip.low.reshape(shape)))
        above = share(counts["high"] * (ratio > 1 + clip.high.reshape(shape)))
        sums["clip_ratio/low_mean"] += below
        sums["clip_ratio/high_mean"] += above
        sums["clip_ratio"] += below + above


class Entropy(NamedTuple):
    """The entropy bonus of the runs that have one: -coeff * sum_{batch pos} Omega * H, H the per-position entropy."""

    runs: Tensor  # [k] batch positions of the runs with entropy_coeff != 0
    weights: Float[Tensor, "k batch pos"]  # Omega = sum over trials of the run's loss weights omega
    coeff: Float[Tensor, " k"]

    def value(self, log_probs: Tensor) -> Tensor:
        """The aggregated entropy [k], nats: sum_{batch pos} Omega * H (verl `agg_loss(entropy, mask, mode)`)."""
        lp = log_probs[self.runs]
        entropy = -(torch.exp(lp) * lp).sum(dim=-1)  # [k batch pos]
        return (self.weights * entropy).sum(dim=(1, 2))


class SequenceTokens(NamedTuple):
    """The sampled tokens of the KL runs that weigh their KL by GSPO's sequence ratio (TRL's bias correction at
    `importance_sampling_level="sequence"`); j = those runs."""

    index: Tensor  # [j] their positions among the `Kl`'s runs
    responses: Tensor  # [j batch trial pos] token ids
    action: Tensor  # [j batch trial pos] their action tokens
    n_actions: Tensor  # [j batch trial] how many (at least 1)
    weights: Float[Tensor, "j batch trial pos"]  # the KL's aggregation weights omega_kl, not folded


class Kl(NamedTuple):
    """The KL penalty of the runs that have one in the loss: beta * sum over loss tokens of omega_kl * k(logp, ref)."""

    runs: Tensor  # [k] batch positions of the runs with a KL term in the loss
    weights: Float[Tensor, "k batch pos vocab"]  # the KL's aggregation weights, folded over trials
    ref_log_probs: Float[Tensor, "k batch pos vocab"]
    old_log_probs: Float[Tensor, "k batch pos vocab"]
    coeff: Float[Tensor, " k"]
    bias_correction: Tensor  # [k] bool: TRL `use_bias_correction_kl`
    estimator: KlFn
    sequence: SequenceTokens | None = None  # sequence-level runs with bias correction (None: token level, or none)

    def value(self, log_probs: Tensor) -> Tensor:
        """The aggregated KL estimate [k] (TRL/verl: per-token KL aggregated like the policy loss).

        With `use_bias_correction_kl` (TRL 1.16 `GRPOTrainer._compute_loss`: `per_token_kl * coef_1`, coef_1 =
        exp(log_importance_weights)), each token's KL is multiplied by the importance ratio of the loss's level:
        rho_t = pi(y_t) / pi_old(y_t) per token, or at sequence level the response's GSPO ratio s (unclipped,
        `sequence_log_ratio`), which then multiplies every token of the response.
        """
        lp = log_probs[self.runs]
        kl = self.estimator(lp, self.ref_log_probs)
        if self.sequence is None and bool(self.bias_correction.any()):
            ratio = torch.exp(lp - self.old_log_probs)
            kl = torch.where(self.bias_correction[:, None, None, None], kl * ratio, kl)
        out = (self.weights * kl).sum(dim=(1, 2, 3))
        if self.sequence is not None:  # s depends on the whole response: per sampled token, not folded
            seq = self.sequence
            tokens, old, ref = (
                gather(x[seq.index], seq.responses) for x in (lp, self.old_log_probs, self.ref_log_probs)
            )
            s = torch.exp(sequence_log_ratio(tokens, old, seq.action, seq.n_actions))  # [j batch trial]
            corrected = (seq.weights * self.estimator(tokens, ref) * s[..., None]).sum(dim=(1, 2, 3))
            out = out.index_copy(0, seq.index, corrected)
        return out


class ValueLoss(NamedTuple):
    """The `critic`'s loss of one epoch, every run of the batch: PPO's value loss (verl 0.9.1 `compute_value_loss`).

    The value head gives one V per prompt (this policy has one state per prompt), and with gamma = lambda = 1 every
    token of a response has the return R = its reward, so each token's loss is its response's, and the token
    weights omega_v of the aggregation sum per response.
    """

    returns: Float[Tensor, "run batch trial"]  # R, what the deltas were computed from
    old_values: Float[Tensor, "run batch 1"]  # V_old: the value head when the responses were sampled
    clip: Float[Tensor, " run"] | None  # `cliprange_value` c, inf where off; None: no run of the batch clips
    weights: Float[Tensor, "run batch trial"] | None  # sum over pos of omega_v; None: every run `response-mean`
    response_mean: Tensor  # [run] bool: runs whose loss is the plain mean over responses (`response-mean`)

    def value(self, v: Float[Tensor, "run batch 1"]) -> Float[Tensor, " run"]:
        """0.5 agg(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)) per run (unclipped where c is off).

        `response-mean` runs take the mean over responses as `.mean()`, as before (bit for bit); the others
        sum omega_v-weighted losses (verl `agg_loss`). Clipping and weighting are computed only in batches
        that have a run using them, and chosen per run, so a run's numbers never depend on its batch-mates.
        """
        sq = (v - self.returns) ** 2
        if self.clip is not None:
            c = self.clip[:, None, None]
            near = torch.clamp(v, self.old_values - c, self.old_values + c)  # verl `clip_by_value`
            sq = torch.where(torch.isfinite(c), torch.maximum(sq, (near - self.returns) ** 2), sq)
        loss = 0.5 * sq.mean(dim=(1, 2))
        if self.weights is not None:
            loss = torch.where(self.response_mean, loss, 0.5 * (self.weights * sq).sum(dim=(1, 2)))
        return loss


def kl_in_loss(
    runs: Tensor,
    responses: Tensor,
    action: Tensor,
    weights: Tensor,
    ref_log_probs: Tensor,
    old_log_probs: Tensor,
    numbers: dict[str, Tensor],
    estimator: KlFn,
    sequence_level: bool,
    num_tokens: int,
) -> Kl:
    """The epoch's `Kl` term of the batch positions `runs` (those with a KL penalty in the loss), both engine paths.

    `responses` [run batch trial pos] token ids and `action` their action tokens, on the units the log-probs are
    folded to (the linear path's trials, or the autoregressive path's one row per response); `weights` the KL's
    aggregation weights omega_kl [run batch trial pos]; `ref_log_probs`, `old_log_probs` [run batch pos vocab];
    `numbers`: the batch's [run] tensors (`kl_penalty`, `kl_bias_correction`). At `sequence_level` the runs with
    TRL's bias correction weigh their KL by GSPO's sequence ratio (`SequenceTokens`).
    """
    onehot = F.one_hot(responses[runs], num_tokens).float()
    corrected = numbers["kl_bias_correction"][runs]
    sequence = None
    if sequence_level and bool(corrected.any()):  # TRL: the KL times the sequence ratio
        index = corrected.nonzero().flatten()
        chosen = runs[index]
        chosen_action = action[chosen]
        n_actions = chosen_action.sum(dim=-1).clamp(min=1)
        sequence = SequenceTokens(index, responses[chosen], chosen_action, n_actions, weights[chosen])
    return Kl(
        runs,
        fold(weights[runs], onehot),
        ref_log_probs[runs],
        old_log_probs[runs],
        numbers["kl_penalty"][runs],
        corrected,
        estimator,
        sequence,
    )
