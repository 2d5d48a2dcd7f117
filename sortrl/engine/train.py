"""The population trainer: many runs of policy-gradient training in one tensor program.

`train(configs)` groups the configs into batches that share shapes and the
per-step code path (see `BATCH_KEY`), and trains each batch as one program:
every tensor has a leading `run` axis, the loss is the *sum* over runs of each
run's loss (so no run's gradient sees another's), and Adam is element-wise.
Numbers that differ between runs (learning rate, KL coefficient, clip ranges,
temperature, ...) are `[run]` tensors; per-epoch choices (reward, deltas mode,
loss aggregation, zero-std filtering) are applied per run. Each run draws from
its own `torch.Generator` in the lecture's order, so a run's trajectory does
not depend on its batch-mates and the lecture's settings reproduce the
lecture's numbers exactly. A feature costs only in batches that use it (the
entropy bonus, temperature, KL, the critic, re-sampling).

One epoch (lecture 17 `run_policy_gradient`): sample `num_responses`
responses per prompt from the current policy (`sortrl.engine.rollout`), score them,
turn rewards into deltas (`sortrl.engine.deltas`), then take `num_steps_per_epoch`
Adam steps on those same responses (`sortrl.engine.objective` holds the loss).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from sortrl.engine import fast, metrics
from sortrl.engine.autoregressive import greedy, train_batch
from sortrl.engine.batch import (  # noqa: F401 -- the warnings and EVAL_SEED_OFFSET are part of the engine's interface
    EVAL_SEED_OFFSET,
    Batch,
    EmptyEpochWarning,
    History,
    PeerDifferenceWarning,
    Progress,
    epoch_metrics,
    memory_rows,
    run_deltas,
    warn_empty_epoch,
)
from sortrl.engine.config import FIELD_NAMES, RunConfig, load_plugins, peer_differences, physical_memory
from sortrl.engine.losses import (
    CRITIC_LOSS_AGG_MODES,
    KL_ESTIMATORS,
    KL_LOSS_AGG_MODES,
    LOSS_AGG_MODES,
    LOSS_MODES,
    ClipRange,
)
from sortrl.engine.metrics import METRICS  # noqa: F401 -- part of the engine's interface (sortrl.engine.train.METRICS)
from sortrl.engine.model import decode, encode, forward, value
from sortrl.engine.objective import (
    Entropy,
    Kl,
    Policy,
    ValueLoss,
    kl_in_loss,
    ratio_stats,
    sft_targets,
)
from sortrl.engine.registry import ConfigError, checked
from sortrl.engine.rollout import (
    gather,
    grad_sq_norms,
    greedy_scores,
    per_run,
    resample_zero_std,
    sample,
    zero_std,
)
from sortrl.engine.task import PAD

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
    "model",
    "embedding_dim",
    "d_model",
    "n_heads",
    "n_layers",
    "num_epochs",
    "num_steps_per_epoch",
    "num_responses",
    "compute_ref_model_period",
    "loss_mode",
    "importance_sampling_level",
    "kl_estimator",
    "engine",
)
"""Fields a batch must share: they fix tensor shapes or the per-step code path."""

MIN_SHARD = 64
"""`train` splits a batch over workers only into shards of at least this many runs (smaller ones gain nothing)."""


def batch_key(cfg: RunConfig) -> tuple[Any, ...]:
    return tuple(getattr(cfg, name) for name in BATCH_KEY)


def default_workers() -> int:
    """The cores this process may use (`os.sched_getaffinity`, else `os.cpu_count()`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def train(
    configs: Sequence[RunConfig],
    progress: Progress | None = None,
    workers: int | None = None,
    with_config: bool = True,
) -> pd.DataFrame:
    """Train every config; return a tidy table with one row per (run, epoch).

    Columns: `run_id`, `status` (`ok` or `diverged`), `diverged_epoch`, every
    `RunConfig` field (lists such as `prompts` as JSON text; left out with
    `with_config=False`, for callers that keep each run's config once, such as
    `sortrl.study.store`), `epoch`, `step` (global inner step at the start of the
    epoch), and the metrics (NaN where a metric does not apply):

    | column | meaning (per run and epoch) |
    | --- | --- |
    | `mean_reward` | mean task reward (the reward function alone) of the epoch's sampled responses over prompts and trials (the lecture's; first draw) |
    | `shaped_reward` | the same for the reward training uses: minus length penalty, plus overlong penalty (before a KL in the reward) |
    | `mean_reward/prompt=<i>` | the same for training prompt i alone (tasks of at most 8 training prompts; NaN when not drawn) |
    | `reward_std` | mean over prompts of the within-group (unbiased) reward std (TRL) |
    | `frac_reward_zero_std` | share of prompts whose responses all got the same reward (TRL) |
    | `response_length` | mean number of tokens before EOS (= prompt length without EOS) |
    | `response_length/above_mean`, `.../below_mean` | the same over responses whose reward is above / below their group's mean |
    | `response_length/loss_weighted` | mean length weighted by each response's share of the loss (`loss_agg_mode`'s weights) |
    | `exact_rate` | share of sampled responses that are exactly sorted(prompt): one scale for every reward |
    | `reward_std/prompt=<i>`, `abs_delta/prompt=<i>` | per training prompt: its group's reward std and mean absolute delta (tasks of at most 8 prompts) |
    | `entropy` | mean per-position entropy of the sampling policy, nats |
    | `greedy_accuracy` | share of training prompts the argmax policy sorts exactly, *after* the epoch's updates |
    | `solve_rate` | 1 if the argmax policy sorts every training prompt after the epoch's updates, else 0 |
    | `loss` | the run's loss (policy + KL - entropy bonus) averaged over the epoch's inner steps |
    | `grad_norm` | L2 norm of the run's loss gradient (all parameters) before each update, step mean (TRL/verl) |
    | `kl` | the KL estimate to the reference, aggregated by `kl_loss_agg_mode`, step mean (at sampling time with `use_kl_in_reward`); NaN when `kl_penalty == 0` |
    | `clip_ratio`, `clip_ratio/low_mean`, `clip_ratio/high_mean` | share of loss tokens clipped (both / below 1 - eps with A < 0 / above 1 + eps_high with A > 0), step mean; NaN unless the loss clips |
    | `importance_ratio` | mean importance ratio over loss tokens, step mean; NaN for losses without a ratio |
    | `num_gen_batches` | groups drawn per prompt at most (DAPO re-sampling: runs with `max_num_gen_batches > 1`) |
    | `critic/vf_loss` | the value head's loss 0.5 (V - r)^2, clipped and aggregated as `cliprange_value` and `critic_loss_agg_mode` say, step mean (`critic` runs) |

    A run whose loss or parameters become non-finite (e.g. `learning_rate=100` with a KL penalty)
    is removed from its batch at the next epoch boundary (the other runs go on
    bit for bit as if it were not there); its rows up to that epoch are kept
    with `status="diverged"`. `progress`, if given, is called with the number
    of run-steps just completed (from worker threads: it must be thread-safe).

    `workers`: threads that train shards of a batch at once (default: the
    cores this process may use), each with one torch intra-op thread. A run's
    numbers do not depend on its batch-mates, so the table is the same for any
    number of workers (a tested property); within one torch op, more threads
    would split a run's matmuls by batch size and break that, so they are
    never used. The caller's torch thread count is restored afterwards.
    """
    return _train(configs, progress, workers, with_config, None)


def train_with_greedy(
    configs: Sequence[RunConfig], progress: Progress | None = None, workers: int | None = None
) -> tuple[pd.DataFrame, list[Int[Tensor, "batch pos"]]]:
    """`train(configs)`'s table, and each run's greedy responses to its training prompts after the last epoch.

    The responses are the argmax policy's (the policy `greedy_accuracy` and `solve_rate` measure at the last
    epoch): for the lecture's `linear` model the argmax of each position's logits, for an autoregressive family
    decoded token by token. One `[batch pos]` tensor per config, in `configs`' order: row i is the response to
    training prompt i (`TASKS[cfg.task](cfg).train[i]`), pos runs over `response_length` (EOS included when
    `eos` is on); a run that diverged gets `PAD` (-1) throughout. Training is `train`'s, bit for bit (the
    responses are read off the final parameters, after the table's last row), so the table is `train`'s too.
    """
    configs = list(configs)
    finals: list[Tensor | None] = [None] * len(configs)
    table = _train(configs, progress, workers, True, finals)
    return table, finals


def _train(
    configs: Sequence[RunConfig],
    progress: Progress | None,
    workers: int | None,
    with_config: bool,
    finals: list[Tensor | None] | None,
) -> pd.DataFrame:
    """`train`; with `finals` (one slot per config), also store each run's final greedy responses there."""
    configs = list(configs)
    load_plugins(sorted({m for c in configs for m in c.plugins}))
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    for note in sorted({f"{k}: {v}" for cfg in configs for k, v in peer_differences(cfg).items()}):
        warnings.warn(f"{note} (docs/variants.md)", PeerDifferenceWarning, stacklevel=2)
    seen: set[str] = set()
    for cfg in configs:
        if cfg.run_id in seen:
            raise ConfigError(f"configs: run {cfg.run_id} (seed {cfg.seed}) is given twice; each run once")
        seen.add(cfg.run_id)
    if not configs:
        fields = FIELD_NAMES if with_config else ()
        return pd.DataFrame(columns=["run_id", "status", "diverged_epoch", *fields, "epoch", "step", *metrics.METRICS])
    batches: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, cfg in enumerate(configs):
        batches[batch_key(cfg)].append(i)
    shards = [part for indices in batches.values() for part in _shards(indices, workers)]
    check_memory(configs, shards, min(workers, len(shards)))
    callers = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers == 1 or len(shards) == 1:
            tables = [_train_shard(configs, indices, progress, with_config, finals) for indices in shards]
        else:
            with ThreadPoolExecutor(min(workers, len(shards)), thread_name_prefix="sortrl-train") as pool:
                tables = list(pool.map(lambda ix: _train_shard(configs, ix, progress, with_config, finals), shards))
    finally:
        torch.set_num_threads(callers)
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    if not table["_run"].is_monotonic_increasing:  # rows of one run stay in epoch order (stable sort)
        table = table.iloc[np.argsort(table["_run"].to_numpy(), kind="stable")]
    return table.drop(columns="_run").reset_index(drop=True)


def check_memory(configs: list[RunConfig], shards: list[list[int]], parallel: int) -> None:
    """Refuse (`ConfigError`) before allocating when the largest `parallel` of `shards` (lists of indices into
    `configs`) trained at once would not fit in this machine's memory (`RunConfig.memory_bytes`, estimated).
    `train` checks its thread shards; `sortrl sweep` the chunks its workers train side by side."""
    sizes = sorted((sum(configs[i].memory_bytes for i in shard) for shard in shards), reverse=True)
    need, have = sum(sizes[:parallel]), physical_memory()
    if need > have:
        raise ConfigError(
            f"configs: training these {len(configs):,} runs needs about {need / 2**30:,.1f} GiB at once (estimated), "
            f"more than this machine's {have / 2**30:,.0f} GiB; train fewer runs per call (sortrl sweep trains "
            "chunks of --chunk-size runs)"
        )


def _shards(indices: list[int], workers: int) -> list[list[int]]:
    """Split one batch's runs into at most `workers` contiguous shards of at least `MIN_SHARD` runs."""
    parts = max(1, min(workers, len(indices) // MIN_SHARD))
    return [list(part) for part in np.array_split(np.asarray(indices), parts)]


def _train_shard(
    configs: list[RunConfig],
    indices: list[int],
    progress: Progress | None,
    with_config: bool,
    finals: list[Tensor | None] | None = None,
):
    done = None
    if finals is not None:

        def done(state: Batch) -> None:
            """Store the batch's final greedy responses in `finals` (PAD for runs that diverged)."""
            out = torch.full((len(indices), len(state.task.train), state.c0.response_length), PAD)
            if len(state.runs):
                out[state.runs] = greedy_responses(state)
            for i, responses in zip(indices, out, strict=True):
                finals[i] = responses

    table = _train_batch([configs[i] for i in indices], progress, with_config, done)
    table["_run"] = np.asarray(indices)[table["_run"].to_numpy()]  # batch position -> config index
    return table


def _evaluate(state: Batch) -> dict[str, Tensor]:
    """Held-out metrics: sampled mean reward (own generator, so training's stream is untouched) and greedy accuracy."""
    prompts = state.task.eval
    logits = forward(state.params, prompts, state.padded)
    probs = torch.softmax(state.temper(logits), dim=-1)
    roll = state.scorer().score(prompts, sample(probs, state.eval_generators, state.c0.num_responses))
    out = {"eval/mean_reward": roll.scores.mean(dim=(1, 2))}
    out.update(metrics.greedy(state.c0.lengths, prompts, logits, "eval/"))
    return out


class Epoch(NamedTuple):
    """One epoch's prompts, responses, deltas and loss terms (`setup_epoch` makes it)."""

    prompts: Tensor  # [batch pos] shared, or [run batch pos] per-run minibatches
    policy: Policy
    entropy: Entropy | None
    kl: Kl | None
    value_loss: ValueLoss | None  # the critic's, in batches with one
    metrics: dict[str, Tensor]


def setup_epoch(state: Batch, epoch: int, logits: Tensor) -> Epoch:
    """Sample and score the epoch's responses, turn rewards into deltas, and prepare every loss term."""
    c0, n = state.c0, state.numbers
    prompts, picks = state.task.train, None
    if c0.prompts_per_epoch is not None and c0.prompts_per_epoch < len(prompts):
        # per-run prompt minibatch, drawn before the epoch's responses
        size, k = len(prompts), c0.prompts_per_epoch
        picks = torch.stack([torch.randperm(size, generator=g)[:k] for g in state.generators])
        prompts = prompts[picks]  # [run batch pos]
        logits = logits[torch.arange(len(picks))[:, None], picks]
    logits = state.temper(logits)
    old_log_probs = torch.log_softmax(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)

    scorer = state.scorer()
    responses = sample(probs, state.generators, c0.num_responses, state.sampling_draws(epoch))
    first = roll = scorer.score(prompts, responses)
    rounds = None
    if state.resample:
        roll, rounds = resample_zero_std(scorer, roll, prompts, probs, state.generators, n["max_gen_batches"])
    kept = ~(zero_std(roll.rewards) & n["filter"][:, None])  # [run batch]
    if state.filtering:
        warn_empty_epoch(state, kept, epoch)
    mask = (roll.action & kept[:, :, None, None]).float()  # tokens in the loss
    omega = per_run(
        state.names["loss_agg_mode"], LOSS_AGG_MODES, {"mask": mask}, kind="loss_agg_mode", max_len=c0.response_length
    )

    rewards, kl, kl_metric = roll.rewards, None, None
    if state.use_kl:
        period = c0.compute_ref_model_period
        if (epoch == 0) if period == 0 else (epoch % period == 0):
            state.ref = {k: v.detach().clone() for k, v in state.params.items()}
        ref_log_probs = torch.log_softmax(state.temper(forward(state.ref, prompts, state.padded)), dim=-1)
        kl_omega = per_run(
            state.names["kl_loss_agg_mode"],
            KL_LOSS_AGG_MODES,
            {"mask": mask},
            kind="loss_agg_mode",
            max_len=c0.response_length,
        )
        estimator = checked("kl_estimator", c0.kl_estimator, KL_ESTIMATORS[c0.kl_estimator])
        in_reward = (n["kl_penalty"] != 0) & n["kl_in_reward"]
        if bool(in_reward.any()):  # verl apply_kl_penalty: r -= beta * sum_t k(pi_old, pi_ref) over the response
            per_token = estimator(gather(old_log_probs, roll.responses), gather(ref_log_probs, roll.responses))
            rewards = rewards - torch.where(in_reward, n["kl_penalty"], 0.0)[:, None, None] * (
                per_token * roll.action
            ).sum(-1)
            kl_metric = torch.where(in_reward, (kl_omega * per_token).sum(dim=(1, 2, 3)), math.nan)
        in_loss = ((n["kl_penalty"] != 0) & ~n["kl_in_reward"]).nonzero().flatten()
        if len(in_loss):  # only these runs: 0 * an infinite KL would make another run's loss NaN
            sequence_level = c0.importance_sampling_level == "sequence"
            kl = kl_in_loss(
                in_loss, roll.responses, roll.action, kl_omega, ref_log_probs, old_log_probs, n, estimator,
                sequence_level, c0.num_tokens,
            )  # fmt: skip

    available: dict[str, Tensor] = {}  # what the batch's delta modes ask for besides the rewards
    if "values" in state.extras:
        available["values"] = value(state.critic, encode(state.params, prompts, state.padded))[..., None]
    if "greedy_rewards" in state.extras:
        available["greedy_rewards"] = greedy_scores(scorer, prompts, logits)
    if "grad_sq_norms" in state.extras:
        available["grad_sq_norms"] = grad_sq_norms(probs, roll.responses, roll.action)
    if "action_counts" in state.extras:
        available["action_counts"] = mask.sum(dim=-1)
    deltas = run_deltas(state.names["deltas_mode"], rewards, available)
    value_loss = None
    if state.critic is not None:
        weights = None
        if not bool(n["critic_response_mean"].all()):  # verl: agg_loss over the loss tokens
            names = state.names["critic_loss_agg_mode"]
            omega_v = per_run(
                names, CRITIC_LOSS_AGG_MODES, {"mask": mask}, kind="loss_agg_mode", max_len=c0.response_length
            )
            weights = omega_v.sum(dim=-1)
        clip = n["cliprange_value"] if bool(torch.isfinite(n["cliprange_value"]).any()) else None
        value_loss = ValueLoss(rewards, available["values"], clip, weights, n["critic_response_mean"])

    mode = LOSS_MODES[c0.loss_mode]
    mode = mode._replace(fn=checked("loss_mode", c0.loss_mode, mode.fn))
    targets = sft_targets(prompts, len(state.runs), c0.num_tokens) if mode.supervised else None
    sequence_level = c0.importance_sampling_level == "sequence"
    policy = Policy(mode, sequence_level, roll, deltas, omega, mask, old_log_probs, targets)
    entropy = None
    if state.use_entropy:
        runs = (n["entropy_coeff"] != 0).nonzero().flatten()
        entropy = Entropy(runs, omega[runs].sum(dim=2), n["entropy_coeff"][runs])
    sampled = metrics.sampled(first, prompts, picks, old_log_probs, len(state.task.train))
    found = epoch_metrics(state, sampled, roll, deltas, omega, picks, kl_metric, rounds)
    return Epoch(prompts, policy, entropy, kl, value_loss, found)


def _inner_steps(state: Batch, ep: Epoch) -> dict[str, Tensor]:
    """`num_steps_per_epoch` Adam steps on the epoch's responses; returns each metric's sum over the steps."""
    c0 = state.c0
    clip = state.clip(ep.policy.clip_shape())
    sums: defaultdict[str, Tensor] = defaultdict(lambda: torch.zeros(len(state.runs)))
    params = list(state.params.values())
    for _ in range(c0.num_steps_per_epoch):
        encoded, run_loss, ratio, kl = step_loss(state, ep, clip)
        if kl is not None:
            sums["kl"] = sums["kl"].index_add(0, ep.kl.runs, kl.detach())  # read only for ep.kl.runs
        grads = torch.autograd.grad(run_loss.sum(), params)
        # per run, the sum of squares along the run's own row: batch-invariant (a fused norm kernel and a
        # [1 n] @ [n 1] bmm both change their summation order with the batch size; the tests caught both)
        sums["grad_norm"] += torch.stack([(r * r).sum(dim=1) for r in map(memory_rows, grads)]).sum(dim=0).sqrt()
        state.optimizer.step(list(grads))
        sums["loss"] += run_loss.detach()
        if ratio is not None:
            ratio_stats(sums, ep.policy, ratio, clip)
        if state.critic is not None:
            loss = _critic_step(state, encoded.detach(), ep.value_loss)
            sums["critic/vf_loss"] += loss.where(state.numbers["uses_critic"], math.nan)
    return sums


def step_loss(state: Batch, ep: Epoch, clip: ClipRange) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """One inner step's loss on the current parameters: (the encoded prompts, the run's loss [run] = policy term
    - entropy bonus + KL term, the importance ratio or None, the KL of `ep.kl.runs` or None). The one construction
    of the loss that training (`_inner_steps`) and the implementation checks (`sortrl.engine.paired`) share."""
    encoded = encode(state.params, ep.prompts, state.padded)
    log_probs = fast.log_probs(state.temper(decode(state.params, encoded)), state.fast)
    run_loss, ratio = ep.policy.loss(log_probs, clip)
    if ep.entropy is not None:
        bonus = ep.entropy.value(log_probs)
        run_loss = run_loss.index_add(0, ep.entropy.runs, -ep.entropy.coeff * bonus)
    kl = None
    if ep.kl is not None:
        kl = ep.kl.value(log_probs)
        run_loss = run_loss.index_add(0, ep.kl.runs, ep.kl.coeff * kl)
    return encoded, run_loss, ratio, kl


def _critic_step(state: Batch, encoded: Tensor, target: ValueLoss) -> Tensor:
    """One Adam step of the value head on its value loss (`ValueLoss`: 0.5 (V(prompt) - r)^2, clipped and aggregated
    as the run says); returns that loss [run]."""
    with torch.enable_grad():
        v = value(state.critic, encoded)[..., None]  # [run batch 1]
        loss = target.value(v)
        grads = torch.autograd.grad(loss.sum(), list(state.critic.values()))
    state.critic_optimizer.step(list(grads))
    return loss.detach()


def greedy_responses(state: Batch) -> Int[Tensor, "run batch pos"]:
    """The argmax policy's response to each training prompt, for each live run of `state` (either path)."""
    with torch.no_grad():
        if state.family.prompt_only:
            return forward(state.params, state.task.train, state.padded).argmax(dim=-1)
        return greedy(state, state.task.train)


def _train_batch(
    configs: list[RunConfig], progress: Progress | None, with_config: bool, done: Callable[[Batch], None] | None = None
) -> pd.DataFrame:
    """Train one batch; `done(state)`, if given, is called with the trained batch before its table is built."""
    c0 = configs[0]
    state = Batch(configs)
    if not state.family.prompt_only:  # the engine's second path: a policy over the response so far
        return train_batch(state, configs, progress, with_config, done)
    num_epochs, steps = c0.num_epochs, c0.num_steps_per_epoch
    train_prompts = state.task.train
    history = History(state, metrics.names(c0, state.task, state.resample, state.critic is not None), num_epochs)
    record = history.record
    step_losses = torch.zeros(len(configs))

    for epoch in range(num_epochs + 1):
        with torch.no_grad():
            # the policy the last epoch left: drop runs that went non-finite, then measure it
            logits = forward(state.params, train_prompts, state.padded)  # [run batch pos vocab]
            tensors = (logits, *state.params.values(), *(state.critic or {}).values())
            finite = [torch.isfinite(t).reshape(len(t), -1).all(dim=1) for t in tensors]
            alive = torch.stack(finite).all(dim=0) & torch.isfinite(step_losses)
            if not bool(alive.all()):
                history.drop_diverged(alive, epoch)
                logits = logits[alive]
                if len(state.runs) == 0:
                    break
            if epoch > 0:
                record(epoch - 1, metrics.greedy(c0.lengths, train_prompts, logits, ""))
                if len(state.task.eval) and (epoch % c0.eval_every == 0 or epoch == num_epochs):
                    record(epoch - 1, _evaluate(state))
            if epoch == num_epochs:
                break
            ep = setup_epoch(state, epoch, logits)
            record(epoch, ep.metrics)
        sums = _inner_steps(state, ep)
        step_losses = sums["loss"]
        if progress is not None:
            progress(len(state.runs) * steps)
        with torch.no_grad():
            if ep.kl is not None:  # the step-mean KL of the runs with a KL term in the loss
                record(epoch, {"kl": sums.pop("kl") / steps}, runs=ep.kl.runs)
            record(epoch, {name: value_ / steps for name, value_ in sums.items()})

    if done is not None:
        done(state)
    return history.frame(configs, steps, with_config)
