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

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor

from sortrl.config import FIELD_NAMES, RunConfig
from sortrl.deltas import DELTA_MODES
from sortrl.losses import KL_ESTIMATORS, LOSS_AGG_MODES, LOSS_MODES, ClipRange
from sortrl.model import Params, forward, init_params
from sortrl.optim import Adam
from sortrl.task import REWARDS, eos_masks, is_sorted_exactly

BATCH_KEY = (
    "prompts",
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

Progress = Callable[[int], None]


def batch_key(cfg: RunConfig) -> tuple[Any, ...]:
    return tuple(getattr(cfg, name) for name in BATCH_KEY)


def train(configs: Sequence[RunConfig], progress: Progress | None = None) -> pd.DataFrame:
    """Train every config; return a tidy table with one row per (run, epoch).

    Columns: `run_id`, `status` (`ok` or `diverged`), `diverged_epoch`, every
    `RunConfig` field (`prompts` as JSON text), `epoch`, `step` (global inner
    step at the start of the epoch), and `METRICS`:

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

    A run whose loss or parameters become non-finite (e.g. `learning_rate=1e4`)
    is removed from its batch at the next epoch boundary (the other runs go on
    bit for bit as if it were not there); its rows up to that epoch are kept
    with `status="diverged"`. `progress`, if given, is called with the number
    of run-steps just completed.
    """
    configs = list(configs)
    batches: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, cfg in enumerate(configs):
        batches[batch_key(cfg)].append(i)
    frames: list[pd.DataFrame | None] = [None] * len(configs)
    for indices in batches.values():
        table = _train_batch([configs[i] for i in indices], progress)
        for i, (_, part) in zip(indices, table.groupby("_run", sort=True)):
            frames[i] = part.drop(columns="_run")
    if not frames:
        return pd.DataFrame(columns=["run_id", "status", "diverged_epoch", *FIELD_NAMES, "epoch", "step", *METRICS])
    return pd.concat(frames, ignore_index=True)


def _per_run(names: list[str], registry: dict[str, Callable[..., Tensor]], **kwargs: Any) -> Tensor:
    """Call `registry[names[r]]` for run r, one call per distinct name.

    Tensor keyword arguments have a leading `run` axis and are sliced to the
    runs of each name; other arguments are passed as they are.
    """
    unique = sorted(set(names))
    sliced = {k for k, v in kwargs.items() if isinstance(v, Tensor) and k != "prompts"}
    if len(unique) == 1:
        return registry[unique[0]](**kwargs)
    out = None
    for name in unique:
        index = torch.tensor([r for r, n in enumerate(names) if n == name])
        part = registry[name](**{k: v[index] if k in sliced else v for k, v in kwargs.items()})
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


class _Batch:
    """State of one batch of runs that share `BATCH_KEY`."""

    def __init__(self, configs: list[RunConfig]):
        c0 = configs[0]
        self.configs = configs
        self.runs = torch.arange(len(configs))  # original index of each live run
        self.prompts = torch.tensor(c0.prompts)
        self.eos_id = c0.vocab_size if c0.eos else None
        self.generators = [torch.Generator().manual_seed(c.seed) for c in configs]
        self.params: Params = init_params(
            self.generators, c0.num_tokens, c0.embedding_dim, c0.prompt_length, c0.response_length
        )
        self.optimizer = Adam(list(self.params.values()), torch.tensor([c.learning_rate for c in configs]))

        def per_run(values: list[float | None], default: float = math.inf) -> Tensor:
            return torch.tensor([default if v is None else v for v in values], dtype=torch.float32)

        self.numbers = {
            "kl_penalty": per_run([c.kl_penalty for c in configs]),
            "length_penalty": per_run([c.length_penalty for c in configs]),
            "eps_low": per_run([c.epsilon for c in configs]),
            "eps_high": per_run([c.clip_high for c in configs]),
            "dual": per_run([c.clip_ratio_c for c in configs]),
            "filter": per_run([float(c.filter_zero_std_groups) for c in configs]).bool(),
        }
        self.names = {
            key: [getattr(c, key) for c in configs] for key in ("reward", "deltas_mode", "loss_agg_mode")
        }
        self.use_kl = any(c.kl_penalty != 0 for c in configs)
        self.ref: Params | None = None

    def keep(self, alive: Tensor) -> None:
        """Drop the runs where `alive` is False (they diverged)."""
        index = alive.nonzero().flatten()
        self.runs = self.runs[index]
        self.generators = [self.generators[i] for i in index.tolist()]
        self.params = {k: v.detach()[index].requires_grad_() for k, v in self.params.items()}
        self.optimizer.keep(index, list(self.params.values()))
        self.numbers = {k: v[index] for k, v in self.numbers.items()}
        self.names = {k: [v[i] for i in index.tolist()] for k, v in self.names.items()}
        if self.ref is not None:
            self.ref = {k: v[index] for k, v in self.ref.items()}

    def clip(self, ndim: int) -> ClipRange:
        shape = (-1,) + (1,) * (ndim - 1)
        n = self.numbers
        return ClipRange(n["eps_low"].view(shape), n["eps_high"].view(shape), n["dual"].view(shape))


def _train_batch(configs: list[RunConfig], progress: Progress | None) -> pd.DataFrame:
    c0 = configs[0]
    state = _Batch(configs)
    num_runs, num_epochs, steps = len(configs), c0.num_epochs, c0.num_steps_per_epoch
    prompts, vocab = state.prompts, c0.num_tokens
    loss_mode = LOSS_MODES[c0.loss_mode]
    kl_fn = KL_ESTIMATORS[c0.kl_estimator]
    sequence_level = c0.importance_sampling_level == "sequence"
    ratio_based = c0.loss_mode != "naive"

    history = torch.full((num_epochs, len(METRICS), num_runs), math.nan)
    diverged_epoch = torch.full((num_runs,), -1)
    step_losses = torch.zeros(len(configs))
    col = {name: i for i, name in enumerate(METRICS)}

    for epoch in range(num_epochs + 1):
        with torch.no_grad():
            logits = forward(state.params, prompts)  # [run batch pos vocab]
            alive = torch.isfinite(logits).all(dim=(1, 2, 3)) & torch.isfinite(step_losses)
            if not bool(alive.all()):
                diverged_epoch[state.runs[~alive]] = epoch - 1
                state.keep(alive)
                logits = logits[alive]
            greedy = is_sorted_exactly(prompts, logits.argmax(dim=-1)).float().mean(dim=-1)
            if epoch > 0:
                history[epoch - 1, col["greedy_accuracy"], state.runs] = greedy
            if epoch == num_epochs or len(state.runs) == 0:
                break
            if state.use_kl:
                period = configs[0].compute_ref_model_period
                if (epoch == 0) if period == 0 else (epoch % period == 0):
                    state.ref = {k: v.detach().clone() for k, v in state.params.items()}
                ref_log_probs = torch.log_softmax(forward(state.ref, prompts), dim=-1)

            # sample, score, and turn rewards into per-token weights
            responses = _sample(torch.softmax(logits, dim=-1), state.generators, c0.num_responses)
            content, action = eos_masks(responses, state.eos_id)
            lengths = content.sum(dim=-1).float()  # [run batch trial]
            rewards = _per_run(state.names["reward"], REWARDS, prompts=prompts, responses=responses, content=content)
            rewards = rewards - state.numbers["length_penalty"][:, None, None] * lengths
            deltas = _per_run(state.names["deltas_mode"], DELTA_MODES, r=rewards)
            zero_std = (rewards == rewards[..., :1]).all(dim=-1)  # [run batch]
            kept = ~(zero_std & state.numbers["filter"][:, None])
            mask = (action & kept[:, :, None, None]).float()
            omega = _per_run(state.names["loss_agg_mode"], LOSS_AGG_MODES, mask=mask, max_len=c0.response_length)
            weights = deltas[..., None] * omega  # A_t * omega_t, [run batch trial pos]
            onehot = F.one_hot(responses, vocab).float()  # [run batch trial pos vocab]
            old_log_probs = torch.log_softmax(logits, dim=-1)
            n_tokens = mask.sum(dim=(1, 2, 3))
            if sequence_level:
                old_tok = old_log_probs[:, :, None].expand(-1, -1, c0.num_responses, -1, -1)
                old_tok = old_tok.gather(-1, responses[..., None]).squeeze(-1)
                seq_weights = deltas * omega.sum(dim=-1)  # [run batch trial]
                n_actions = action.sum(dim=-1).clamp(min=1)
                seq_tokens = mask.sum(dim=-1)  # tokens of each response in the loss
            elif loss_mode.linear:
                folded = (_fold(weights, onehot),)
            else:
                folded = (_fold(weights.clamp(min=0), onehot), _fold(weights.clamp(max=0), onehot))
            if ratio_based and not sequence_level:
                count_pos = _fold(mask * (deltas[..., None] > 0), onehot)
                count_neg = _fold(mask * (deltas[..., None] < 0), onehot)
                count_all = _fold(mask, onehot)
            if state.use_kl:
                kl_weights = _fold(action.float() / (prompts.shape[0] * c0.num_responses), onehot)

            # epoch metrics from the sample
            probs = torch.exp(old_log_probs)
            entropy = -(probs * old_log_probs).sum(dim=-1)  # [run batch pos]
            position_weight = action.float().mean(dim=2)  # share of responses that reach each position
            sample_metrics = {
                "mean_reward": rewards.mean(dim=(1, 2)),
                "reward_std": rewards.std(dim=-1).mean(dim=-1),
                "frac_reward_zero_std": zero_std.float().mean(dim=-1),
                "response_length": lengths.mean(dim=(1, 2)),
                "entropy": (entropy * position_weight).sum(dim=(1, 2)) / position_weight.sum(dim=(1, 2)),
            }

        clip = state.clip(4 if not sequence_level else 3)
        sums = defaultdict(lambda: torch.zeros(len(state.runs)))
        for _ in range(steps):
            log_probs = torch.log_softmax(forward(state.params, prompts), dim=-1)
            if sequence_level:
                tok = log_probs[:, :, None].expand(-1, -1, c0.num_responses, -1, -1)
                tok = tok.gather(-1, responses[..., None]).squeeze(-1)
                seq_log_ratio = ((tok - old_tok) * action).sum(dim=-1) / n_actions  # [run batch trial]
                zeros = torch.zeros_like(seq_log_ratio)
                run_loss = loss_mode.fn(seq_log_ratio, zeros, seq_weights, clip).sum(dim=(1, 2))
            else:
                per_token = sum(loss_mode.fn(log_probs, old_log_probs, w, clip) for w in folded)
                run_loss = per_token.sum(dim=(1, 2, 3))
            if state.use_kl:
                kl = (kl_weights * kl_fn(log_probs, ref_log_probs)).sum(dim=(1, 2, 3))
                run_loss = run_loss + state.numbers["kl_penalty"] * kl
                sums["kl"] += kl.detach()
            grads = torch.autograd.grad(run_loss.sum(), list(state.params.values()))
            state.optimizer.step(list(grads))
            sums["loss"] += run_loss.detach()
            if ratio_based:
                with torch.no_grad():
                    _clip_stats(sums, log_probs, state, locals())
        step_losses = sums["loss"]
        if progress is not None:
            progress(len(state.runs) * steps)

        with torch.no_grad():
            row = history[epoch]
            for name, value in sample_metrics.items():
                row[col[name], state.runs] = value
            for name, value in sums.items():
                row[col[name], state.runs] = value / steps
            row[col["kl"], state.runs] = torch.where(
                state.numbers["kl_penalty"] != 0, row[col["kl"], state.runs], math.nan
            )

    return _to_frame(configs, history, diverged_epoch, steps)


def _clip_stats(sums: dict[str, Tensor], log_probs: Tensor, state: _Batch, scope: dict[str, Any]) -> None:
    """Accumulate TRL's clip fractions and the mean importance ratio for one inner step."""
    eps_low, eps_high = state.numbers["eps_low"], state.numbers["eps_high"]
    if "seq_log_ratio" in scope:  # one ratio per response, counted once per loss token
        ratio, tokens, deltas = torch.exp(scope["seq_log_ratio"]), scope["seq_tokens"], scope["deltas"]
        low = (ratio < 1 - eps_low[:, None, None]) & (deltas < 0)
        high = (ratio > 1 + eps_high[:, None, None]) & (deltas > 0)
        dims: tuple[int, ...] = (1, 2)
        total = (tokens * ratio, tokens * low, tokens * high)
    else:
        ratio = torch.exp(log_probs - scope["old_log_probs"])
        low = ratio < 1 - eps_low[:, None, None, None]
        high = ratio > 1 + eps_high[:, None, None, None]
        dims = (1, 2, 3)
        total = (scope["count_all"] * ratio, scope["count_neg"] * low, scope["count_pos"] * high)
    n_tokens = scope["n_tokens"].clamp(min=1)
    ratio_sum, low_sum, high_sum = (t.sum(dim=dims) / n_tokens for t in total)
    sums["importance_ratio"] += ratio_sum
    if scope["c0"].loss_mode == "clipped":
        sums["clip_ratio/low_mean"] += low_sum
        sums["clip_ratio/high_mean"] += high_sum
        sums["clip_ratio"] += low_sum + high_sum


def _to_frame(configs: list[RunConfig], history: Tensor, diverged_epoch: Tensor, steps: int) -> pd.DataFrame:
    """Tidy table from history [epoch metric run]: one row per (run, epoch) the run lived through."""
    num_epochs, _, num_runs = history.shape
    values = rearrange(history, "epoch metric run -> (run epoch) metric").numpy()
    table = pd.DataFrame(values.astype(np.float64), columns=list(METRICS))
    run = np.repeat(np.arange(num_runs), num_epochs)
    epoch = np.tile(np.arange(num_epochs), num_runs)
    config_cols: dict[str, list[Any]] = {name: [] for name in ("run_id", *FIELD_NAMES)}
    for cfg in configs:
        data = cfg.to_dict()
        data["prompts"] = _prompts_text(cfg)
        config_cols["run_id"].append(cfg.run_id)
        for name in FIELD_NAMES:
            config_cols[name].append(data[name])
    head = pd.DataFrame({name: [vals[r] for r in run] for name, vals in config_cols.items()})
    died = diverged_epoch.numpy()[run]
    head.insert(1, "status", np.where(died >= 0, "diverged", "ok"))
    head.insert(2, "diverged_epoch", died)
    head["epoch"] = epoch
    head["step"] = epoch * steps
    table = pd.concat([head, table], axis=1)
    table.insert(0, "_run", run)
    lived = (died < 0) | (epoch <= died)
    return table[lived].reset_index(drop=True)


def _prompts_text(cfg: RunConfig) -> str:
    return str([list(p) for p in cfg.prompts]).replace(" ", "")
