"""One epoch's responses for every run of a batch: sampling, EOS masks, rewards and their shaping.

Shapes use the axes `run batch trial pos vocab` (batch = prompt, trial = one
response of the prompt's group). Every random draw comes from the run's own
`torch.Generator`, in the order of the lecture's one `torch.multinomial` per run
and epoch (`sample` reproduces that call for all runs at once), so a run's
responses never depend on its batch-mates.

A response's score is the run's reward function (`sortrl.engine.task.REWARDS`); the
reward training uses is shaped from it, in order: minus `length_penalty` x
response length, plus DAPO's overlong penalty (`overlong_penalty`); zero-std
groups may then be sampled again (DAPO dynamic sampling, `resample_zero_std`);
finally, with `use_kl_in_reward`, minus beta x the response's summed per-token
KL (verl `apply_kl_penalty`, in `sortrl.engine.train`). Reports compare scores, which
mean the same under every shaping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sortrl.engine.registry import checked
from sortrl.engine.task import PAD, REWARDS, eos_masks


class Rollout(NamedTuple):
    """Sampled responses of one epoch and what the reward made of them."""

    responses: Int[Tensor, "run batch trial pos"]
    content: Bool[Tensor, "run batch trial pos"]
    """Tokens the reward sees (before the first EOS, within the prompt's length); their count is the length."""
    action: Bool[Tensor, "run batch trial pos"]
    """Tokens the policy chose: content plus the first EOS (what log-probs, losses, KL and entropy see)."""
    lengths: Float[Tensor, "run batch trial"]
    """Response length: content tokens."""
    scores: Float[Tensor, "run batch trial"]
    """The task's reward of each response (reward points): what `mean_reward` reports."""
    rewards: Float[Tensor, "run batch trial"]
    """Shaped rewards, what training uses: scores - length penalty + overlong penalty (reward points)."""


def uniforms(generators: Sequence[torch.Generator], count: int) -> Float[Tensor, "run count"]:
    """`count` U[0, 1) doubles per run, each from the run's own generator, as `torch.multinomial` draws them.

    Both take one 53-bit double per draw (`at::uniform_real_distribution<double>`), so
    drawing here and then searching (`sample`) consumes each run's stream exactly as the
    lecture's multinomial does, and the draws of several epochs can be taken at once.
    """
    out = torch.empty(len(generators), count, dtype=torch.float64)
    for row, g in zip(out, generators, strict=True):
        row.uniform_(generator=g)
    return out


def sample(
    probs: Float[Tensor, "run batch pos vocab"],
    generators: Sequence[torch.Generator],
    num_responses: int,
    draws: Float[Tensor, "run draw"] | None = None,
) -> Int[Tensor, "run batch trial pos"]:
    """`num_responses` responses per prompt: per run, `torch.multinomial(rows, num_responses, replacement=True)`.

    probs [run batch pos vocab] -> token ids [run batch trial pos]: the lecture's one
    multinomial per run over its [(batch pos) vocab] rows with the run's generator.
    With `draws`, the runs' next (batch pos trial) uniforms taken ahead (`uniforms`;
    more than one response), the same responses come from searching those draws as
    torch's kernel (aten/src/ATen/native/cpu/MultinomialKernel.cpp) searches its own:
    per row, the float cumulative sum in category order over its total, then per draw
    u the first category whose share is >= u; one `searchsorted` for every run (a
    tested equality). Raises ValueError for a row that is not finite, has a negative
    entry or sums to zero (as torch does).
    """
    runs, batch, _, vocab = probs.shape
    flat = probs.reshape(runs, -1, vocab)
    if draws is None:
        one = [
            torch.multinomial(flat[r], num_responses, replacement=True, generator=g) for r, g in enumerate(generators)
        ]
        index = torch.stack(one)
    else:
        cum = flat.clone()
        for v in range(1, vocab):  # float adds in category order, as the kernel's running sum
            cum[..., v] += cum[..., v - 1]
        total = cum[..., -1:]
        if not bool((torch.isfinite(total) & (total > 0)).all() & (flat >= 0).all()):
            raise ValueError("probs: every row must be finite, non-negative and sum to more than 0")
        # a slice of a block drawn ahead is strided: searchsorted wants its values contiguous
        index = torch.searchsorted((cum / total).double(), draws.reshape(runs, -1, num_responses).contiguous())
    return rearrange(index, "run (batch pos) trial -> run batch trial pos", batch=batch)


def invert(probs: Float[Tensor, "... vocab"], u: Float[Tensor, "..."]) -> Int[Tensor, "..."]:
    """One token per row of `probs`: the first category whose cumulative share is >= u (inverse-CDF sampling).

    The float cumulative sum in category order over its total, searched in float64, as `sample` searches drawn-ahead
    uniforms (and torch's multinomial kernel its own): a row's token depends on that row and its u alone. Used by
    the autoregressive path (`sortrl.engine.autoregressive`), one position at a time, u from the run's generator.
    """
    cum = probs.clone()
    for v in range(1, probs.shape[-1]):  # float adds in category order
        cum[..., v] += cum[..., v - 1]
    shares = (cum / cum[..., -1:]).double()
    return torch.searchsorted(shares, u[..., None].contiguous()).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def with_run_axis(prompts: Tensor) -> Tensor:
    """Prompts as [run batch pos] (a view with a run axis of 1 if they are shared, [batch pos])."""
    return prompts if prompts.dim() == 3 else prompts[None]


def per_run(
    names: list[str],
    registry: dict[str, Callable[..., Tensor]],
    run_args: dict[str, Tensor],
    kind: str,
    axes: int | None = None,
    **shared: Any,
) -> Tensor:
    """Call `registry[names[r]]` for run r, one call per distinct name.

    `run_args` are tensors with a leading `run` axis, sliced to the runs of
    each name; `shared` arguments are passed to every call as they are.
    A plug-in's result (`kind`: the `RunConfig` field naming it) must have the
    first `axes` axes of the first run argument (all of them when None), and
    treat each run alone: `sortrl.engine.registry.checked`.
    """
    unique = sorted(set(names))

    def call(name: str, args: dict[str, Tensor]) -> Tensor:
        return checked(kind, name, registry[name], like=next(iter(args)), axes=axes, shared=shared)(**args, **shared)

    if len(unique) == 1:
        return call(unique[0], run_args)
    out = None
    for name in unique:
        index = torch.tensor([r for r, n in enumerate(names) if n == name])
        part = call(name, {k: v[index] for k, v in run_args.items()})
        if out is None:
            out = part.new_empty((len(names), *part.shape[1:]))
        out[index] = part
    return out


def overlong_penalty(
    action_counts: Float[Tensor, "run batch trial"],
    max_len: int,
    buffer: Float[Tensor, " run"],
    factor: Float[Tensor, " run"],
) -> Float[Tensor, "run batch trial"]:
    """DAPO soft overlong punishment: min(0, -(n - (L - buffer)) / buffer * factor), 0 where buffer = 0.

    n = the response's action tokens (EOS included: verl's valid response
    length), L = `max_len`. Zero up to L - buffer, then linear down to -factor
    at L (Yu et al. 2025, DAPO, eq. 13; verl `DAPORewardManager`, reward points).
    """
    buffer, factor = buffer[:, None, None], factor[:, None, None]
    exceed = action_counts - (max_len - buffer)
    penalty = (-exceed / buffer.clamp(min=1) * factor).clamp(max=0)
    return torch.where(buffer > 0, penalty, torch.zeros_like(penalty))


class Scorer(NamedTuple):
    """What turns responses into shaped rewards for the runs of a batch (per-run settings as `[run]` tensors)."""

    rewards: list[str]
    length_penalty: Tensor
    overlong_buffer: Tensor | None  # None: no run of the batch has an overlong buffer
    overlong_factor: Tensor
    eos_id: int | None
    max_len: int

    def masks(self, prompts: Tensor, responses: Tensor) -> tuple[Tensor, Tensor]:
        """(content, action) of `responses`: EOS masks cut to each prompt's real positions."""
        content, action = eos_masks(responses, self.eos_id)
        real = (with_run_axis(prompts) != PAD)[:, :, None, :]
        return content & real, action & real

    def score(self, prompts: Tensor, responses: Tensor) -> Rollout:
        """Masks, lengths and shaped rewards of `responses` [run batch trial pos] to `prompts`."""
        content, action = self.masks(prompts, responses)
        lengths = content.sum(dim=-1).float()
        run_args = {"responses": responses, "content": content}
        if prompts.dim() == 3:  # per-run prompt minibatches
            run_args["prompts"] = prompts
        shared = {} if prompts.dim() == 3 else {"prompts": prompts}
        scores = per_run(self.rewards, REWARDS, run_args, "reward", 3, **shared)
        rewards = scores - self.length_penalty[:, None, None] * lengths
        if self.overlong_buffer is not None:
            counts = action.sum(dim=-1).float()
            rewards = rewards + overlong_penalty(counts, self.max_len, self.overlong_buffer, self.overlong_factor)
        return Rollout(responses, content, action, lengths, scores, rewards)


def zero_std(rewards: Float[Tensor, "run batch trial"]) -> Bool[Tensor, "run batch"]:
    """True for groups whose responses all got the same reward (TRL's `frac_reward_zero_std`)."""
    return (rewards == rewards[..., :1]).all(dim=-1)


def resample_zero_std(
    scorer: Scorer,
    roll: Rollout,
    prompts: Tensor,
    probs: Float[Tensor, "run batch pos vocab"],
    generators: Sequence[torch.Generator],
    max_batches: Int[Tensor, " run"],
) -> tuple[Rollout, Int[Tensor, " run"]]:
    """DAPO dynamic sampling with re-sampling: draw a new group for each zero-std prompt, up to `max_batches` in all.

    A run whose group of a prompt has one reward for every response draws a
    fresh group of `num_responses` for that prompt from its own generator
    (one multinomial per run and round, over its zero-std prompts only), and
    keeps it in place of the old one; this repeats until no group of the run
    is zero-std or it has drawn `max_batches` groups for a prompt (verl
    `algorithm.filter_groups.max_num_gen_batches`, which re-samples new
    prompts until the batch is full; here the prompt set is fixed, so the
    same prompts are sampled again). Groups still zero-std after that are
    dropped by `filter_zero_std_groups`. Returns the new rollout and the
    number of generation rounds each run drew (1 = no re-sampling).
    """
    runs, _, group, length = roll.responses.shape
    rounds = torch.ones(runs, dtype=torch.long)
    for k in range(1, int(max_batches.max())):
        again = zero_std(roll.rewards) & (max_batches > k)[:, None]  # [run batch]
        counts = again.sum(dim=1)
        todo = counts.nonzero().flatten().tolist()
        if not todo:
            break
        rows = probs[again]  # [(run, prompt) pairs, run-major: pos vocab]
        ends = counts.cumsum(dim=0).tolist()
        draws = []
        for r in todo:  # one multinomial per run, over its zero-std prompts' positions
            flat = rows[ends[r] - int(counts[r]) : ends[r]].reshape(-1, rows.shape[-1])  # [(prompt pos) vocab]
            draws.append(torch.multinomial(flat, group, replacement=True, generator=generators[r]))
        responses = roll.responses.clone()
        responses[again] = torch.cat(draws).view(-1, length, group).transpose(1, 2)  # [pair trial pos]
        rounds[todo] += 1
        roll = scorer.score(prompts, responses)
    return roll, rounds


def gather(log_probs: Float[Tensor, "run batch pos vocab"], responses: Tensor) -> Float[Tensor, "run batch trial pos"]:
    """log pi(y) per sampled token: [run batch pos vocab] x [run batch trial pos] -> [run batch trial pos]."""
    expanded = log_probs[:, :, None].expand(-1, -1, responses.shape[2], -1, -1)
    return expanded.gather(-1, responses[..., None]).squeeze(-1)


def grad_sq_norms(
    probs: Float[Tensor, "run batch pos vocab"], responses: Tensor, action: Tensor
) -> Float[Tensor, "run batch trial"]:
    """|d log pi(y | x) / d logits|^2 per response: sum over action positions of 1 - 2 pi(y_t) + sum_v pi_v^2.

    The gradient of log softmax(z)[y] with respect to z is onehot(y) - pi, whose
    squared norm is 1 - 2 pi(y) + |pi|^2 (used by the `optimal_baseline` mode).
    """
    p_y = gather(probs, responses)
    sq = (probs * probs).sum(dim=-1)[:, :, None, :]
    return ((1 - 2 * p_y + sq) * action).sum(dim=-1)


def greedy_scores(scorer: Scorer, prompts: Tensor, logits: Float[Tensor, "run batch pos vocab"]) -> Tensor:
    """Shaped reward of the greedy (argmax) response to each prompt, [run batch 1] (ReMax's baseline)."""
    return scorer.score(prompts, logits.argmax(dim=-1)[:, :, None, :]).rewards
