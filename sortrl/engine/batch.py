"""One batch of runs trained as one tensor program: the state it carries from epoch to epoch, shared by both paths.

`Batch` holds what every run of a batch (configs sharing `sortrl.engine.train.BATCH_KEY`) carries between epochs:
the stacked parameters of its model family (leading `run` axis), its optimiser, each run's own generators, the
per-run numbers ([run] tensors) and per-run registry names. The linear model's epoch (`sortrl.engine.train`) and the
autoregressive one (`sortrl.engine.autoregressive`) both train a `Batch`, with the helpers below that they share:
each run's deltas from its own mode (`run_deltas`), the empty-epoch warning, and a gradient's rows in memory order.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sortrl.engine import metrics
from sortrl.engine.config import RunConfig
from sortrl.engine.deltas import DELTA_MODES, extras
from sortrl.engine.fast import FusedAdam
from sortrl.engine.losses import ClipRange
from sortrl.engine.model import Params, init_params, init_value_head
from sortrl.engine.models import MODELS
from sortrl.engine.optim import Adam, RunFusedAdam
from sortrl.engine.registry import checked
from sortrl.engine.rollout import Rollout, Scorer, uniforms
from sortrl.engine.task import TASKS

if TYPE_CHECKING:
    import pandas as pd

EVAL_SEED_OFFSET = 1 << 40
"""Held-out sampling uses a generator seeded `seed + EVAL_SEED_OFFSET`, never the training stream."""


DRAW_AHEAD = 10
"""Epochs of sampling draws taken from the runs' generators at once (`Batch.sampling_draws`)."""

DRAW_BUDGET = 1 << 21
"""Most doubles a batch holds drawn ahead (16 MiB): fewer epochs ahead for big batches."""

Progress = Callable[[int], None]


class Batch:
    """Everything one batch of runs (sharing `BATCH_KEY`) carries from epoch to epoch."""

    def __init__(self, configs: list[RunConfig]):
        c0 = configs[0]
        self.c0 = c0
        self.runs = torch.arange(len(configs))  # original index of each live run
        self.task = TASKS[c0.task](c0)
        self.padded = len(c0.lengths) > 1
        self.generators = [torch.Generator().manual_seed(c.seed) for c in configs]
        self.eval_generators = [torch.Generator().manual_seed(c.seed + EVAL_SEED_OFFSET) for c in configs]
        width = c0.response_length
        self.family = MODELS[c0.model]
        if self.family.prompt_only:
            self.params: Params = init_params(self.generators, c0.num_tokens, c0.embedding_dim, width, width)
        else:  # an autoregressive family (`sortrl.engine.autoregressive` trains it)
            self.params = self.family.init(self.generators, configs)
        self.fast = c0.engine == "fast"
        # the autoregressive families step with torch's fused kernel on both engines (no lecture bits to keep there)
        optimizer = (FusedAdam if self.fast else Adam) if self.family.prompt_only else RunFusedAdam
        self.optimizer = optimizer(
            list(self.params.values()), torch.tensor([c.learning_rate for c in configs], dtype=torch.float64)
        )

        def numbers(values: list[float | None]) -> Tensor:
            return torch.tensor([math.inf if v is None else v for v in values], dtype=torch.float32)

        self.numbers = {
            "kl_penalty": numbers([c.kl_penalty for c in configs]),
            "length_penalty": numbers([c.length_penalty for c in configs]),
            "eps_low": numbers([c.epsilon for c in configs]),
            "eps_high": numbers([c.clip_high for c in configs]),
            "dual": numbers([c.clip_ratio_c for c in configs]),
            "temperature": numbers([c.temperature for c in configs]),
            "entropy_coeff": numbers([c.entropy_coeff for c in configs]),
            "overlong_buffer": numbers([c.overlong_buffer_len for c in configs]),
            "overlong_factor": numbers([c.overlong_penalty_factor for c in configs]),
            "filter": torch.tensor([c.filter_zero_std_groups for c in configs]),
            "kl_in_reward": torch.tensor([c.use_kl_in_reward for c in configs]),
            "kl_bias_correction": torch.tensor([c.use_bias_correction_kl for c in configs]),
            # re-sampling is part of dynamic sampling: without the filter a run draws one group per prompt
            "max_gen_batches": torch.tensor(
                [c.max_num_gen_batches if c.filter_zero_std_groups else 1 for c in configs]
            ),
        }
        self.filtering = any(c.filter_zero_std_groups for c in configs)
        self.seeds = [c.seed for c in configs]
        self.warned_empty: set[int] = set()  # runs already warned that an epoch kept no prompt
        self.names = {
            "reward": [c.reward for c in configs],
            "deltas_mode": [c.deltas_mode for c in configs],
            "loss_agg_mode": [c.loss_agg_mode for c in configs],
            "kl_loss_agg_mode": [c.kl_loss_agg_mode or c.loss_agg_mode for c in configs],
        }
        # features, decided once per batch: a batch pays only for what some run of it uses
        self.tempered = any(c.temperature != 1 for c in configs)
        self.use_kl = any(c.kl_penalty != 0 for c in configs)
        self.use_entropy = any(c.entropy_coeff != 0 for c in configs)
        self.resample = bool((self.numbers["max_gen_batches"] > 1).any())
        self.extras = sorted({e for c in configs for e in extras(DELTA_MODES[c.deltas_mode])})
        self.critic = None
        if "values" in self.extras:
            self.critic = init_value_head(len(configs), c0.embedding_dim)
            # every run has a head (one tensor program), but only critic runs train theirs or report its loss:
            # a run's numbers must not depend on whether a critic run shares its batch
            uses = ["values" in extras(DELTA_MODES[c.deltas_mode]) for c in configs]
            self.numbers["uses_critic"] = torch.tensor(uses)
            lr = torch.tensor([c.critic_learning_rate * u for c, u in zip(configs, uses)], dtype=torch.float64)
            self.critic_optimizer = Adam(list(self.critic.values()), lr)
            self.numbers["cliprange_value"] = numbers([c.cliprange_value for c in configs])
            # `actor`: the run's own loss_agg_mode (verl's default)
            agg = [c.loss_agg_mode if c.critic_loss_agg_mode == "actor" else c.critic_loss_agg_mode for c in configs]
            self.names["critic_loss_agg_mode"] = agg
            self.numbers["critic_response_mean"] = torch.tensor([a == "response-mean" for a in agg])
        self.ref: Params | None = None
        # The uniforms `sample` searches, drawn several epochs ahead when the runs' generators feed nothing else in
        # between (no prompt minibatches, no re-sampling, no single-response draws): the same numbers in the same
        # order as epoch by epoch, with a tenth of the per-run calls (which cost the most with threads: the GIL).
        self.per_epoch = len(self.task.train) * width * c0.num_responses
        subsample = c0.prompts_per_epoch is not None and c0.prompts_per_epoch < len(self.task.train)
        fits = DRAW_BUDGET // (len(configs) * self.per_epoch)
        epoch_by_epoch = subsample or self.resample or c0.num_responses == 1
        self.draw_ahead = 1 if epoch_by_epoch else max(1, min(DRAW_AHEAD, fits))
        self.draws: Tensor | None = None

    def sampling_draws(self, epoch: int) -> Tensor | None:
        """The training uniforms of `epoch`, [run (batch pos trial)], from the block drawn ahead (None: none drawn ahead)."""
        if self.draw_ahead == 1:
            return None
        offset = epoch % self.draw_ahead
        if offset == 0:
            self.draws = uniforms(self.generators, min(self.draw_ahead, self.c0.num_epochs - epoch) * self.per_epoch)
        return self.draws[:, offset * self.per_epoch : (offset + 1) * self.per_epoch]

    def keep(self, alive: Tensor) -> None:
        """Drop the runs where `alive` is False (they diverged)."""
        self.reorder(alive.nonzero().flatten())

    def reorder(self, index: Tensor) -> None:
        """Keep the runs at positions `index`, in that order (a subset drops runs; a permutation reorders them). Every
        per-run state follows (`index_select`, twice as fast as indexing here); `runs` maps each position to its run,
        so the history stays in the configs' order."""
        pick = index.tolist()
        self.runs = self.runs.index_select(0, index)
        self.generators = [self.generators[i] for i in pick]
        self.eval_generators = [self.eval_generators[i] for i in pick]
        self.params = {k: v.detach().index_select(0, index).requires_grad_() for k, v in self.params.items()}
        self.optimizer.keep(index, list(self.params.values()))
        if self.critic is not None:
            self.critic = {k: v.detach().index_select(0, index).requires_grad_() for k, v in self.critic.items()}
            self.critic_optimizer.keep(index, list(self.critic.values()))
        self.numbers = {k: v.index_select(0, index) for k, v in self.numbers.items()}
        self.names = {k: [v[i] for i in pick] for k, v in self.names.items()}
        if self.ref is not None:
            self.ref = {k: v.index_select(0, index) for k, v in self.ref.items()}
        if self.draws is not None:
            self.draws = self.draws.index_select(0, index)

    def clip(self, ndim: int) -> ClipRange:
        shape = (-1,) + (1,) * (ndim - 1)
        n = self.numbers
        return ClipRange(n["eps_low"].view(shape), n["eps_high"].view(shape), n["dual"].view(shape))

    def scorer(self) -> Scorer:
        n, c0 = self.numbers, self.c0
        overlong = n["overlong_buffer"] if bool((n["overlong_buffer"] > 0).any()) else None
        eos_id = c0.num_values if c0.eos else None
        return Scorer(
            self.names["reward"], n["length_penalty"], overlong, n["overlong_factor"], eos_id, c0.response_length
        )

    def temper(self, logits: Tensor) -> Tensor:
        """Logits / T per run (TRL `temperature`); untouched when every run has T = 1 (bit-exact lecture path)."""
        return logits / self.numbers["temperature"][:, None, None, None] if self.tempered else logits


class History:
    """A batch's per-run metrics as training records them: `values` [epoch metric run], NaN where not recorded, and
    `diverged_epoch` [run] (-1 for a run that stayed finite), both over the batch's configs (not only the live runs).

    Both training paths (`sortrl.engine.train`, `sortrl.engine.autoregressive`) fill one and turn it into the tidy
    table `sortrl.engine.metrics.to_frame` builds.
    """

    def __init__(self, state: Batch, names: list[str], num_epochs: int) -> None:
        self.state, self.names = state, names
        self.col = {name: i for i, name in enumerate(names)}
        self.values = torch.full((num_epochs, len(names), len(state.runs)), math.nan)
        self.diverged_epoch = torch.full((len(state.runs),), -1)

    def record(self, epoch: int, values: dict[str, Tensor], runs: Tensor | None = None) -> None:
        """Store each metric [live run] (or only at live-batch positions `runs`) as the value of `epoch`."""
        where = self.state.runs if runs is None else self.state.runs[runs]
        for name, value_ in values.items():
            self.values[epoch, self.col[name], where] = (value_ if runs is None else value_[runs]).float()

    def drop_diverged(self, alive: Tensor, epoch: int) -> None:
        """Mark the live runs not `alive` [live run] as diverged in the epoch before `epoch`, and drop them."""
        self.diverged_epoch[self.state.runs[~alive]] = epoch - 1
        self.state.keep(alive)

    def frame(self, configs: list[RunConfig], steps: int, with_config: bool) -> pd.DataFrame:
        """The tidy table (`sortrl.engine.metrics.to_frame`): one row per (run, epoch) the run lived through."""
        return metrics.to_frame(configs, self.names, self.values, self.diverged_epoch, steps, with_config)


def epoch_metrics(
    state: Batch,
    sampled: dict[str, Tensor],
    roll: Rollout,
    deltas: Tensor,
    omega: Tensor,
    picks: Tensor,
    kl_metric: Tensor | None,
    rounds: Tensor | None,
) -> dict[str, Tensor]:
    """An epoch's per-run metrics [run], both paths: the sampled responses' (`sampled`, `metrics.sampled`), the
    learning signal's (`metrics.signal`), the in-reward KL (`kl_metric`) and DAPO's generation rounds (`rounds`)."""
    found = {**sampled, **metrics.signal(roll, deltas, omega, picks, len(state.task.train))}
    if kl_metric is not None:
        found["kl"] = kl_metric
    if rounds is not None:
        # only runs that re-sample report it (as alone; a batch-mate's re-sampling says nothing of this run)
        found["num_gen_batches"] = rounds.float().where(state.numbers["max_gen_batches"] > 1, math.nan)
    return found


class PeerDifferenceWarning(UserWarning):
    """A config computes otherwise than the peer code its option is named after (`peer_differences`)."""


class EmptyEpochWarning(UserWarning):
    """An epoch of a run kept no prompt (DAPO's filter dropped them all): it trained on nothing."""


def warn_empty_epoch(state: Batch, kept: Tensor, epoch: int) -> None:
    """Warn, once per run, when the zero-std filter left a run's epoch without a prompt (verl's DAPO trainer
    would draw more prompts; here the epoch trains on nothing, its loss is 0 and `frac_reward_zero_std` 1)."""
    for r in (~kept.any(dim=1) & state.numbers["filter"]).nonzero().flatten().tolist():
        run = int(state.runs[r])
        if run not in state.warned_empty:
            state.warned_empty.add(run)
            warnings.warn(
                f"seed {state.seeds[run]}: epoch {epoch} kept no prompt (every group's rewards were equal, even after "
                "max_num_gen_batches draws), so it trained on nothing; warned once per run",
                EmptyEpochWarning,
                stacklevel=2,
            )


def run_deltas(names: list[str], rewards: Tensor, available: dict[str, Tensor]) -> Tensor:
    """Each run's deltas from its mode, passing each mode the extras it asks for (sliced to its runs)."""
    out = None
    for name in sorted(set(names)):
        fn = DELTA_MODES[name]
        index = torch.tensor([r for r, m in enumerate(names) if m == name])
        whole = len(index) == len(names)
        args = {k: available[k] if whole else available[k][index] for k in extras(fn)}
        part = checked("deltas_mode", name, fn)(rewards if whole else rewards[index], **args)
        if whole:
            return part
        if out is None:
            out = part.new_empty(rewards.shape)
        out[index] = part
    return out


def memory_rows(t: Tensor) -> Tensor:
    """[run ...] -> [run n]: each run's elements in memory order, a view (no copy) of a dense tensor.

    `decode` is a permuted view (see `sortrl.engine.model.init_params`), so its gradient is too; flattening it in
    logical order would copy it at every step.
    """
    strides = t.stride()
    order = sorted(range(1, len(strides)), key=lambda d: -strides[d])
    return t.permute(0, *order).flatten(1)
