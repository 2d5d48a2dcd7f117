"""The population trainer: many runs of policy-gradient training in one tensor program.

`train(configs)` groups the configs into batches that share shapes and the
per-step code path (see `BATCH_KEY`), and trains each batch as one program:
every tensor has a leading `run` axis, the loss is the *sum* over runs of each
run's loss (so no run's gradient sees another's), and Adam is element-wise.
Numbers that differ between runs (learning rate, KL coefficient, clip ranges,
length penalty) are `[run]` tensors; per-epoch choices (reward, deltas mode,
loss aggregation, zero-std filtering) are applied per run. Each run draws from
its own `torch.Generator` in the lecture's order, so a run's trajectory does
not depend on its batch-mates and the lecture's settings reproduce the
lecture's numbers exactly.

One epoch (lecture 17 `run_policy_gradient`): sample `num_responses`
responses per prompt from the current policy, score them, turn rewards into
deltas, then take `num_steps_per_epoch` Adam steps on those same responses.

Because the model is non-autoregressive, a token's log-prob depends only on
(prompt, position, token), not on the rest of its response. Token-level losses
therefore fold the `trial` axis into per-(batch, pos, vocab) weights once per
epoch: sum_t A_t omega_t f(logp[y_t]) = f-weighted sums over the vocabulary
(split by the sign of A for the non-linear clipped loss). The sum over trials
is done in trial order, as autograd does it in the lecture's code, so the
gradient is the lecture's bit for bit.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from sortrl.config import FIELD_NAMES, RunConfig, plain
from sortrl.deltas import DELTA_MODES
from sortrl.losses import KL_ESTIMATORS, LOSS_AGG_MODES, LOSS_MODES, ClipRange
from sortrl.model import Params, forward, init_params
from sortrl.optim import Adam
from sortrl.task import PAD, REWARDS, TASKS, PromptSet, eos_masks, is_sorted_exactly

BATCH_KEY = (
    "task",
    "prompts",
    "vocab_size",
    "prompt_length",
    "num_prompts",
    "num_eval_prompts",
    "allow_repeats",
    "task_seed",
    "prompts_per_epoch",
    "eval_every",
    "eos",
    "embedding_dim",
    "num_epochs",
    "num_steps_per_epoch",
    "num_responses",
    "compute_ref_model_period",
    "loss_mode",
    "importance_sampling_level",
    "kl_estimator",
)
"""Fields a batch must share: they fix tensor shapes or the per-step code path."""

METRICS = (
    "mean_reward",
    "reward_std",
    "frac_reward_zero_std",
    "response_length",
    "entropy",
    "greedy_accuracy",
    "loss",
    "kl",
    "clip_ratio",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "importance_ratio",
)
"""Per-epoch metrics (TRL names where TRL has one); see `train` for their definitions."""

EVAL_METRICS = ["eval/mean_reward", "eval/greedy_accuracy"]
"""Held-out metrics, present when the task has held-out prompts (NaN between evaluations)."""

Progress = Callable[[int], None]


def batch_key(cfg: RunConfig) -> tuple[Any, ...]:
    return tuple(getattr(cfg, name) for name in BATCH_KEY)


def train(
    configs: Sequence[RunConfig], progress: Progress | None = None, threads: int = 1, with_config: bool = True
) -> pd.DataFrame:
    """Train every config; return a tidy table with one row per (run, epoch).

    Columns: `run_id`, `status` (`ok` or `diverged`), `diverged_epoch`, every
    `RunConfig` field (`prompts` as JSON text; left out with `with_config=False`,
    for callers that keep each run's config once, such as `sortrl.store`),
    `epoch`, `step` (global inner step at the start of the epoch), and `METRICS`:

    | column | meaning (per run and epoch) |
    | --- | --- |
    | `mean_reward` | mean reward of the epoch's sampled responses over prompts and trials (the lecture's) |
    | `reward_std` | mean over prompts of the within-group (unbiased) reward std (TRL) |
    | `frac_reward_zero_std` | share of prompts whose responses all got the same reward (TRL) |
    | `response_length` | mean number of tokens before EOS (= prompt length without EOS) |
    | `entropy` | mean per-position entropy of the sampling policy, nats |
    | `greedy_accuracy` | share of prompts the argmax policy sorts exactly, *after* the epoch's updates |
    | `loss` | the run's loss (policy + KL term) averaged over the epoch's inner steps |
    | `kl` | the KL estimate to the reference policy, step mean (NaN when `kl_penalty == 0`) |
    | `clip_ratio`, `clip_ratio/low_mean`, `clip_ratio/high_mean` | share of loss tokens clipped (both / below 1 - eps with A < 0 / above 1 + eps_high with A > 0), step mean; NaN unless `clipped` |
    | `importance_ratio` | mean importance ratio over loss tokens, step mean; NaN for `naive` |

    A run whose loss or parameters become non-finite (e.g. `learning_rate=100` with a KL penalty)
    is removed from its batch at the next epoch boundary (the other runs go on
    bit for bit as if it were not there); its rows up to that epoch are kept
    with `status="diverged"`. `progress`, if given, is called with the number
    of run-steps just completed.

    `threads`: torch intra-op threads while training (the caller's setting is
    restored afterwards). Keep the default 1 for exact results: with more,
    MKL splits a run's matmuls differently for different batch sizes, and a
    run's numbers would depend on its batch-mates in the last bit (faster on
    an idle machine, not bit-exact). Parallelism comes from processes
    (`sortrl sweep`).
    """
    configs = list(configs)
    batches: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, cfg in enumerate(configs):
        batches[batch_key(cfg)].append(i)
    if not configs:
        fields = FIELD_NAMES if with_config else ()
        return pd.DataFrame(columns=["run_id", "status", "diverged_epoch", *fields, "epoch", "step", *METRICS])
    tables = []
    callers = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for indices in batches.values():  # in order of first appearance, so columns unite as in config order
            table = _train_batch([configs[i] for i in indices], progress, with_config)
            table["_run"] = np.asarray(indices)[table["_run"].to_numpy()]  # batch position -> config index
            tables.append(table)
    finally:
        torch.set_num_threads(callers)
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    if not table["_run"].is_monotonic_increasing:  # rows of one run stay in epoch order (stable sort)
        table = table.iloc[np.argsort(table["_run"].to_numpy(), kind="stable")]
    return table.drop(columns="_run").reset_index(drop=True)


def _per_run(
    names: list[str], registry: dict[str, Callable[..., Tensor]], run_args: dict[str, Tensor], **shared: Any
) -> Tensor:
    """Call `registry[names[r]]` for run r, one call per distinct name.

    `run_args` are tensors with a leading `run` axis, sliced to the runs of
    each name; `shared` arguments are passed to every call as they are.
    """
    unique = sorted(set(names))
    if len(unique) == 1:
        return registry[unique[0]](**run_args, **shared)
    out = None
    for name in unique:
        index = torch.tensor([r for r, n in enumerate(names) if n == name])
        part = registry[name](**{k: v[index] for k, v in run_args.items()}, **shared)
        if out is None:
            out = part.new_empty((len(names), *part.shape[1:]))
        out[index] = part
    return out


def _sample(probs: Tensor, generators: list[torch.Generator], num_responses: int) -> Tensor:
    """Responses [run batch trial pos] from probs [run batch pos vocab]: one multinomial per run, as the lecture."""
    _, batch, _, vocab = probs.shape
    flat = probs.reshape(len(generators), -1, vocab)
    draws = [torch.multinomial(flat[r], num_responses, replacement=True, generator=g) for r, g in enumerate(generators)]
    return rearrange(torch.stack(draws), "run (batch pos) trial -> run batch trial pos", batch=batch)


def _fold(values: Tensor, onehot: Tensor) -> Tensor:
    """sum_t values[r,b,t,p] * onehot[r,b,t,p,v] -> [run batch pos vocab], summed in trial order."""
    return (onehot * values[..., None]).sum(dim=2)


EVAL_SEED_OFFSET = 1 << 40
"""Held-out sampling uses a generator seeded `seed + EVAL_SEED_OFFSET`, never the training stream."""


class Rollout(NamedTuple):
    """Sampled responses of one epoch and what the reward made of them (shapes [run batch trial (pos)])."""

    responses: Tensor
    content: Tensor  # tokens the reward sees
    action: Tensor  # tokens the policy chose (content + first EOS)
    lengths: Tensor
    rewards: Tensor


class _Batch:
    """Everything one batch of runs (sharing `BATCH_KEY`) carries from epoch to epoch."""

    def __init__(self, configs: list[RunConfig]):
        c0 = configs[0]
        self.c0 = c0
        self.runs = torch.arange(len(configs))  # original index of each live run
        self.task = TASKS[c0.task](c0)
        self.padded = len(c0.lengths) > 1
        self.eos_id = c0.num_values if c0.eos else None
        self.generators = [torch.Generator().manual_seed(c.seed) for c in configs]
        self.eval_generators = [torch.Generator().manual_seed(c.seed + EVAL_SEED_OFFSET) for c in configs]
        width = c0.response_length
        self.params: Params = init_params(self.generators, c0.num_tokens, c0.embedding_dim, width, width)
        self.optimizer = Adam(
            list(self.params.values()), torch.tensor([c.learning_rate for c in configs], dtype=torch.float64)
        )

        def per_run(values: list[float | None]) -> Tensor:
            return torch.tensor([math.inf if v is None else v for v in values], dtype=torch.float32)

        self.numbers = {
            "kl_penalty": per_run([c.kl_penalty for c in configs]),
            "length_penalty": per_run([c.length_penalty for c in configs]),
            "eps_low": per_run([c.epsilon for c in configs]),
            "eps_high": per_run([c.clip_high for c in configs]),
            "dual": per_run([c.clip_ratio_c for c in configs]),
            "filter": torch.tensor([c.filter_zero_std_groups for c in configs]),
        }
        self.names = {key: [getattr(c, key) for c in configs] for key in ("reward", "deltas_mode", "loss_agg_mode")}
        self.use_kl = any(c.kl_penalty != 0 for c in configs)
        self.ref: Params | None = None

    def keep(self, alive: Tensor) -> None:
        """Drop the runs where `alive` is False (they diverged)."""
        index = alive.nonzero().flatten()
        pick = index.tolist()
        self.runs = self.runs[index]
        self.generators = [self.generators[i] for i in pick]
        self.eval_generators = [self.eval_generators[i] for i in pick]
        self.params = {k: v.detach()[index].requires_grad_() for k, v in self.params.items()}
        self.optimizer.keep(index, list(self.params.values()))
        self.numbers = {k: v[index] for k, v in self.numbers.items()}
        self.names = {k: [v[i] for i in pick] for k, v in self.names.items()}
        if self.ref is not None:
            self.ref = {k: v[index] for k, v in self.ref.items()}

    def clip(self, ndim: int) -> ClipRange:
        shape = (-1,) + (1,) * (ndim - 1)
        n = self.numbers
        return ClipRange(n["eps_low"].view(shape), n["eps_high"].view(shape), n["dual"].view(shape))

    def rollout(self, prompts: Tensor, probs: Tensor, generators: list[torch.Generator]) -> Rollout:
        """Sample `num_responses` per prompt and score them with each run's reward (minus its length penalty)."""
        responses = _sample(probs, generators, self.c0.num_responses)
        content, action = eos_masks(responses, self.eos_id)
        real = (_with_run_axis(prompts) != PAD)[:, :, None, :]  # positions within the prompt's length
        content, action = content & real, action & real
        lengths = content.sum(dim=-1).float()
        run_args = {"responses": responses, "content": content}
        if prompts.dim() == 3:  # per-run prompt minibatches
            run_args["prompts"] = prompts
        shared = {} if prompts.dim() == 3 else {"prompts": prompts}
        rewards = _per_run(self.names["reward"], REWARDS, run_args, **shared)
        rewards = rewards - self.numbers["length_penalty"][:, None, None] * lengths
        return Rollout(responses, content, action, lengths, rewards)


def _with_run_axis(prompts: Tensor) -> Tensor:
    return prompts if prompts.dim() == 3 else prompts[None]


def _metric_names(c0: RunConfig, task: PromptSet) -> list[str]:
    names = list(METRICS)
    if len(c0.lengths) > 1:
        names += [f"greedy_accuracy/len={n}" for n in c0.lengths]
    if len(task.eval):
        names += EVAL_METRICS + ([f"eval/greedy_accuracy/len={n}" for n in c0.lengths] if len(c0.lengths) > 1 else [])
    return names


def _greedy(state: _Batch, prompts: Tensor, logits: Tensor, prefix: str) -> dict[str, Tensor]:
    """Share of `prompts` the argmax policy (of `logits` [run batch pos vocab]) sorts exactly, overall and per length."""
    lengths = state.c0.lengths
    solved = is_sorted_exactly(prompts, logits.argmax(dim=-1)).float()  # [run batch]
    out = {f"{prefix}greedy_accuracy": solved.mean(dim=-1)}
    if len(lengths) > 1:
        size = (prompts != PAD).sum(dim=-1)
        for n in lengths:
            out[f"{prefix}greedy_accuracy/len={n}"] = solved[:, size == n].mean(dim=-1)
    return out


def _train_batch(configs: list[RunConfig], progress: Progress | None, with_config: bool) -> pd.DataFrame:
    c0 = configs[0]
    state = _Batch(configs)
    num_epochs, steps, group = c0.num_epochs, c0.num_steps_per_epoch, c0.num_responses
    train_prompts = state.task.train
    minibatch = c0.prompts_per_epoch is not None and c0.prompts_per_epoch < len(train_prompts)
    loss_mode = LOSS_MODES[c0.loss_mode]
    kl_fn = KL_ESTIMATORS[c0.kl_estimator]
    sequence_level = c0.importance_sampling_level == "sequence"
    ratio_based = c0.loss_mode != "naive"

    names = _metric_names(c0, state.task)
    col = {name: i for i, name in enumerate(names)}
    history = torch.full((num_epochs, len(names), len(configs)), math.nan)
    diverged_epoch = torch.full((len(configs),), -1)
    step_losses = torch.zeros(len(configs))

    def record(epoch: int, values: dict[str, Tensor]) -> None:
        for name, value in values.items():
            history[epoch, col[name], state.runs] = value.float()

    for epoch in range(num_epochs + 1):
        with torch.no_grad():
            # the policy the last epoch left: drop runs that went non-finite, then measure it
            logits = forward(state.params, train_prompts, state.padded)  # [run batch pos vocab]
            finite = [torch.isfinite(t).flatten(1).all(dim=1) for t in (logits, *state.params.values())]
            alive = torch.stack(finite).all(dim=0) & torch.isfinite(step_losses)
            if not bool(alive.all()):
                diverged_epoch[state.runs[~alive]] = epoch - 1
                state.keep(alive)
                logits = logits[alive]
                if len(state.runs) == 0:
                    break
            if epoch > 0:
                record(epoch - 1, _greedy(state, train_prompts, logits, ""))
                if len(state.task.eval) and (epoch % c0.eval_every == 0 or epoch == num_epochs):
                    record(epoch - 1, _evaluate(state))
            if epoch == num_epochs:
                break

            if minibatch:  # per-run prompt minibatch, drawn before the epoch's responses
                size, k = len(train_prompts), c0.prompts_per_epoch
                picks = torch.stack([torch.randperm(size, generator=g)[:k] for g in state.generators])
                prompts = train_prompts[picks]  # [run batch pos]
                logits = logits[torch.arange(len(picks))[:, None], picks]
            else:
                prompts = train_prompts  # [batch pos], shared by every run
            if state.use_kl:
                period = c0.compute_ref_model_period
                if (epoch == 0) if period == 0 else (epoch % period == 0):
                    state.ref = {k: v.detach().clone() for k, v in state.params.items()}
                ref_log_probs = torch.log_softmax(forward(state.ref, prompts, state.padded), dim=-1)

            # sample and score, then fold each token's weight into [run batch pos vocab]
            roll = state.rollout(prompts, torch.softmax(logits, dim=-1), state.generators)
            old_log_probs = torch.log_softmax(logits, dim=-1)
            deltas = _per_run(state.names["deltas_mode"], DELTA_MODES, {"r": roll.rewards})
            zero_std = (roll.rewards == roll.rewards[..., :1]).all(dim=-1)  # [run batch]
            kept = ~(zero_std & state.numbers["filter"][:, None])
            mask = (roll.action & kept[:, :, None, None]).float()  # tokens in the loss
            omega = _per_run(state.names["loss_agg_mode"], LOSS_AGG_MODES, {"mask": mask}, max_len=c0.response_length)
            weights = deltas[..., None] * omega  # A_t * omega_t: [run batch trial pos]
            onehot = F.one_hot(roll.responses, c0.num_tokens).float()  # [run batch trial pos vocab]
            n_tokens = mask.sum(dim=(1, 2, 3)).clamp(min=1)
            if sequence_level:
                old_tok = _gather(old_log_probs, roll.responses)
                seq_weights = deltas * omega.sum(dim=-1)  # [run batch trial]
                n_actions = roll.action.sum(dim=-1).clamp(min=1)
            elif loss_mode.linear:
                folded = [_fold(weights, onehot)]
            else:
                folded = [_fold(weights.clamp(min=0), onehot), _fold(weights.clamp(max=0), onehot)]
            if ratio_based:  # per-token counts for TRL's clip fractions
                counts = {
                    "all": mask,
                    "low": mask * (deltas[..., None] < 0),
                    "high": mask * (deltas[..., None] > 0),
                }
                if not sequence_level:
                    counts = {k: _fold(v, onehot) for k, v in counts.items()}
            if state.use_kl:  # the lecture's KL: sum over positions, mean over prompts and responses
                # only for the runs that have a KL term: 0 * an infinite KL would make another run's loss NaN
                kl_runs = (state.numbers["kl_penalty"] != 0).nonzero().flatten()
                kl_weights = _fold(roll.action.float() / (roll.action.shape[1] * group), onehot)[kl_runs]
                ref_log_probs = ref_log_probs[kl_runs]

            probs = torch.exp(old_log_probs)
            entropy = -(probs * old_log_probs).sum(dim=-1)  # [run batch pos], nats
            reach = roll.action.float().mean(dim=2)  # share of responses that act at each position
            record(
                epoch,
                {
                    "mean_reward": roll.rewards.mean(dim=(1, 2)),
                    "reward_std": roll.rewards.std(dim=-1).mean(dim=-1),
                    "frac_reward_zero_std": zero_std.float().mean(dim=-1),
                    "response_length": roll.lengths.mean(dim=(1, 2)),
                    "entropy": (entropy * reach).sum(dim=(1, 2)) / reach.sum(dim=(1, 2)),
                },
            )

        clip = state.clip(3 if sequence_level else 4)
        sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros(len(state.runs)))
        for _ in range(steps):
            log_probs = torch.log_softmax(forward(state.params, prompts, state.padded), dim=-1)
            if sequence_level:  # GSPO: s = exp(mean_t log rho_t), one clipped ratio per response
                log_ratio = ((_gather(log_probs, roll.responses) - old_tok) * roll.action).sum(dim=-1) / n_actions
                run_loss = loss_mode.fn(log_ratio, torch.zeros_like(log_ratio), seq_weights, clip).sum(dim=(1, 2))
                ratio = torch.exp(log_ratio.detach())[..., None]  # [run batch trial 1]
            else:
                run_loss = sum(loss_mode.fn(log_probs, old_log_probs, w, clip) for w in folded).sum(dim=(1, 2, 3))
                ratio = torch.exp(log_probs.detach() - old_log_probs)  # [run batch pos vocab]
            if state.use_kl:
                kl = (kl_weights * kl_fn(log_probs[kl_runs], ref_log_probs)).sum(dim=(1, 2, 3))
                run_loss = run_loss.index_add(0, kl_runs, state.numbers["kl_penalty"][kl_runs] * kl)
                sums["kl"] = sums["kl"].index_add(0, kl_runs, kl.detach())
            grads = torch.autograd.grad(run_loss.sum(), list(state.params.values()))
            state.optimizer.step(list(grads))
            sums["loss"] += run_loss.detach()
            if ratio_based:
                _ratio_stats(sums, ratio, counts, n_tokens, clip, c0.loss_mode == "clipped")
        step_losses = sums["loss"]
        if progress is not None:
            progress(len(state.runs) * steps)
        with torch.no_grad():
            kl_on = state.numbers["kl_penalty"] != 0
            if "kl" in sums:
                sums["kl"] = torch.where(kl_on, sums["kl"], math.nan)
            record(epoch, {name: value / steps for name, value in sums.items()})

    return _to_frame(configs, names, history, diverged_epoch, steps, with_config)


def _gather(log_probs: Tensor, responses: Tensor) -> Tensor:
    """log pi(y) per sampled token: [run batch pos vocab] x [run batch trial pos] -> [run batch trial pos]."""
    expanded = log_probs[:, :, None].expand(-1, -1, responses.shape[2], -1, -1)
    return expanded.gather(-1, responses[..., None]).squeeze(-1)


def _evaluate(state: _Batch) -> dict[str, Tensor]:
    """Held-out metrics: sampled mean reward (own generator, so training's stream is untouched) and greedy accuracy."""
    prompts = state.task.eval
    logits = forward(state.params, prompts, state.padded)
    roll = state.rollout(prompts, torch.softmax(logits, dim=-1), state.eval_generators)
    out = {"eval/mean_reward": roll.rewards.mean(dim=(1, 2))}
    out.update(_greedy(state, prompts, logits, "eval/"))
    return out


def _ratio_stats(
    sums: dict[str, Tensor], ratio: Tensor, counts: dict[str, Tensor], n_tokens: Tensor, clip: ClipRange, clipped: bool
) -> None:
    """Accumulate the mean importance ratio and TRL's clip fractions over the loss tokens, for one inner step.

    `ratio` is per folded token [run batch pos vocab] or per response [run batch trial 1];
    `counts` weigh it by the number of loss tokens it stands for (all / with A < 0 / with A > 0).
    """
    dims = tuple(range(1, counts["all"].dim()))
    shape = (-1,) + (1,) * (ratio.dim() - 1)

    def share(weights: Tensor) -> Tensor:
        return weights.sum(dim=dims) / n_tokens

    sums["importance_ratio"] += share(counts["all"] * ratio)
    if clipped:
        low = share(counts["low"] * (ratio < 1 - clip.low.reshape(shape)))
        high = share(counts["high"] * (ratio > 1 + clip.high.reshape(shape)))
        sums["clip_ratio/low_mean"] += low
        sums["clip_ratio/high_mean"] += high
        sums["clip_ratio"] += low + high


def _to_frame(
    configs: list[RunConfig], names: list[str], history: Tensor, diverged_epoch: Tensor, steps: int, with_config: bool
) -> pd.DataFrame:
    """Tidy table from history [epoch metric run]: one row per (run, epoch) the run lived through."""
    num_epochs, _, num_runs = history.shape
    values = rearrange(history, "epoch metric run -> (run epoch) metric").numpy().astype(np.float64)
    run = np.repeat(np.arange(num_runs), num_epochs)
    epoch = np.tile(np.arange(num_epochs), num_runs)
    per_run: dict[str, list[Any]] = {"run_id": [c.run_id for c in configs]}
    for name in FIELD_NAMES if with_config else ():
        per_run[name] = [_cell(getattr(c, name)) for c in configs]
    died = diverged_epoch.numpy()[run]
    table = pd.DataFrame(per_run).take(run).reset_index(drop=True)  # one row per config, repeated per epoch
    table.insert(1, "status", np.where(died >= 0, "diverged", "ok"))
    table.insert(2, "diverged_epoch", died)
    table["epoch"] = epoch
    table["step"] = epoch * steps
    table = pd.concat([table, pd.DataFrame(values, columns=names)], axis=1)
    table.insert(0, "_run", run)
    lived = (died < 0) | (epoch <= died)
    return table[lived].reset_index(drop=True)


def _cell(value: Any) -> Any:
    """A config value as a table cell: lists (prompts, mixed prompt lengths) as compact JSON text."""
    value = plain(value)
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list) else value
