"""What the engine measures: the per-epoch metrics of every run (names and definitions) and the output table.

`sortrl.engine.train` records, per run and epoch, the metrics of the epoch's sampled
responses (`sampled`), of what training made of them (`signal`), of the greedy
policy after the epoch (`greedy`) and the step means of the inner steps; the
table of `train` is built by `to_frame`. Every function is vectorised over a
leading `run` axis; see `sortrl.engine.train.train` for what each column means.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from einops import rearrange
from torch import Tensor

from sortrl.engine.config import FIELD_NAMES, RunConfig, plain
from sortrl.engine.rollout import Rollout, zero_std
from sortrl.engine.task import PAD, REWARDS, PromptSet, is_sorted_exactly

METRICS = (
    "mean_reward",
    "shaped_reward",
    "reward_std",
    "frac_reward_zero_std",
    "response_length",
    "response_length/above_mean",
    "response_length/below_mean",
    "response_length/loss_weighted",
    "exact_rate",
    "entropy",
    "greedy_accuracy",
    "solve_rate",
    "loss",
    "grad_norm",
    "kl",
    "clip_ratio",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "importance_ratio",
)
"""Per-epoch metrics of every run (TRL names where TRL has one); see `train` for their definitions."""

EVAL_METRICS = ["eval/mean_reward", "eval/greedy_accuracy"]
"""Held-out metrics, present when the task has held-out prompts (NaN between evaluations)."""

PER_PROMPT_LIMIT = 8
"""Tasks with at most this many training prompts get a `mean_reward/prompt=<i>` column per prompt."""


def names(c0: RunConfig, task: PromptSet, resample: bool, critic: bool) -> list[str]:
    """The metric columns of a batch: `METRICS`, per prompt (small tasks), per length, held-out, DAPO and critic ones."""
    names = list(METRICS)
    if len(task.train) <= PER_PROMPT_LIMIT:
        names += [f"mean_reward/prompt={i}" for i in range(len(task.train))]
        if c0.num_responses > 1:
            names += [f"{m}/prompt={i}" for m in ("reward_std", "abs_delta") for i in range(len(task.train))]
    if len(c0.lengths) > 1:
        names += [f"greedy_accuracy/len={n}" for n in c0.lengths]
    if len(task.eval):
        names += EVAL_METRICS + ([f"eval/greedy_accuracy/len={n}" for n in c0.lengths] if len(c0.lengths) > 1 else [])
    if resample:
        names.append("num_gen_batches")
    if critic:
        names.append("critic/vf_loss")
    return names


def greedy(lengths: tuple[int, ...], prompts: Tensor, logits: Tensor, prefix: str) -> dict[str, Tensor]:
    """Share of `prompts` the argmax policy (of `logits` [run batch pos vocab]) sorts exactly, overall and per length.

    `lengths`: the task's prompt lengths (per-length columns when there are several). Without a `prefix`
    (the training prompts) also `solve_rate`: 1 when every prompt is sorted.
    """
    return greedy_of(lengths, prompts, logits.argmax(dim=-1), prefix)


def greedy_of(lengths: tuple[int, ...], prompts: Tensor, responses: Tensor, prefix: str) -> dict[str, Tensor]:
    """`greedy` of given greedy responses [run batch pos] (an autoregressive model's, decoded token by token)."""
    solved = is_sorted_exactly(prompts, responses).float()  # [run batch]
    out = {f"{prefix}greedy_accuracy": solved.mean(dim=-1)}
    if len(lengths) > 1:
        size = (prompts != PAD).sum(dim=-1)
        for n in lengths:
            out[f"{prefix}greedy_accuracy/len={n}"] = solved[:, size == n].mean(dim=-1)
    if not prefix:
        out["solve_rate"] = solved.min(dim=-1).values
    return out


def _per_prompt(values: Tensor, picks: Tensor | None, num_prompts: int) -> Tensor:
    """[run batch] values of the epoch's prompts as [run prompt] over every training prompt (NaN where not drawn)."""
    if picks is None:
        return values
    return torch.full((len(values), num_prompts), math.nan).scatter(1, picks, values)


def sampled(
    first: Rollout,
    prompts: Tensor,
    picks: Tensor | None,
    old_log_probs: Tensor,
    num_prompts: int,
    per_response: bool = False,
) -> dict[str, Tensor]:
    """Metrics of the epoch's sampled responses (the first draw, before any re-sampling) and of the sampling policy.

    `num_prompts`: training prompts of the task. `mean_reward` (and per prompt) report the task's reward; the spread, zero-std
    and length-by-sign metrics describe the shaped reward training sees. `old_log_probs` are [run batch pos vocab]
    (one policy per prompt position), or with `per_response` [run batch trial pos vocab], the policy at each sampled
    prefix (an autoregressive model): `entropy` is then the mean over the action tokens of the entropy there.
    """
    rewards, lengths = first.rewards, first.lengths
    probs = torch.exp(old_log_probs)
    entropy = -(probs * old_log_probs).sum(dim=-1)  # [run batch pos] (or [run batch trial pos]), nats
    # share of responses that act at each position, or per response whether it acts there
    reach = first.action.float() if per_response else first.action.float().mean(dim=2)
    sum_dims = (1, 2, 3) if per_response else (1, 2)
    centre = rewards.mean(dim=-1, keepdim=True)
    above, below = (rewards > centre).float(), (rewards < centre).float()
    out = {
        "mean_reward": first.scores.mean(dim=(1, 2)),
        "shaped_reward": rewards.mean(dim=(1, 2)),
        "reward_std": rewards.std(dim=-1).mean(dim=-1)
        if rewards.shape[-1] > 1
        else torch.full_like(centre[:, 0, 0], math.nan),
        "frac_reward_zero_std": zero_std(rewards).float().mean(dim=-1),
        "response_length": lengths.mean(dim=(1, 2)),
        "response_length/above_mean": (lengths * above).sum(dim=(1, 2)) / above.sum(dim=(1, 2)),
        "response_length/below_mean": (lengths * below).sum(dim=(1, 2)) / below.sum(dim=(1, 2)),
        "entropy": (entropy * reach).sum(dim=sum_dims) / reach.sum(dim=sum_dims),
        # a common scale for every reward: the share of sampled responses that are exactly sorted(prompt)
        "exact_rate": REWARDS["exact_match"](prompts, first.responses, first.content).mean(dim=(1, 2)),
    }
    if num_prompts <= PER_PROMPT_LIMIT:
        per_prompt = _per_prompt(first.scores.mean(dim=-1), picks, num_prompts)  # [run prompt]
        out.update({f"mean_reward/prompt={i}": per_prompt[:, i] for i in range(per_prompt.shape[1])})
    return out


def signal(roll: Rollout, deltas: Tensor, omega: Tensor, picks: Tensor | None, num_prompts: int) -> dict[str, Tensor]:
    """What training made of the responses it used: loss-weighted length, and per prompt reward spread and |delta|."""
    weight = omega.sum(dim=-1)  # [run batch trial]: each response's share of the loss
    out = {"response_length/loss_weighted": (weight * roll.lengths).sum(dim=(1, 2)) / weight.sum(dim=(1, 2))}
    if num_prompts <= PER_PROMPT_LIMIT and roll.rewards.shape[-1] > 1:
        spread = _per_prompt(roll.rewards.std(dim=-1), picks, num_prompts)
        size = _per_prompt(deltas.abs().mean(dim=-1), picks, num_prompts)
        out.update({f"reward_std/prompt={i}": spread[:, i] for i in range(spread.shape[1])})
        out.update({f"abs_delta/prompt={i}": size[:, i] for i in range(size.shape[1])})
    return out


def to_frame(
    configs: list[RunConfig], names: list[str], history: Tensor, diverged_epoch: Tensor, steps: int, with_config: bool
) -> pd.DataFrame:
    """Tidy table from history [epoch metric run]: one row per (run, epoch) the run lived through."""
    num_epochs, _, num_runs = history.shape
    values = rearrange(history, "epoch metric run -> (run epoch) metric").numpy().astype(np.float64)
    run = np.repeat(np.arange(num_runs), num_epochs)
    epoch = np.tile(np.arange(num_epochs), num_runs)
    per_run: dict[str, list[Any]] = {"run_id": [c.run_id for c in configs]}
    for name in FIELD_NAMES if with_config else ():
        per_run[name] = [cell(getattr(c, name)) for c in configs]
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


def cell(value: Any) -> Any:
    """A config value as a table cell: lists (prompts, mixed prompt lengths, plugins) as compact JSON text."""
    value = plain(value)
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list) else value
