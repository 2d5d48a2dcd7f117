"""The sorting task: prompt sets (`TASKS`), rewards (`REWARDS`) and response masks.

Every reward is vectorised over `[run batch trial pos]`: it takes the prompts
`Int[Tensor, "batch pos"]` or `Int[Tensor, "run batch pos"]` (shorter prompts
right-padded with `PAD`), the responses `Int[Tensor, "run batch trial pos"]`
and `content`, a `Bool[Tensor, "run batch trial pos"]` that is True for the
tokens the reward may see (those before the first EOS and within the prompt's
length), and returns `Float[Tensor, "run batch trial"]` (float32, in reward
points). The lecture's Python versions are `sort_distance_reward` and
`sort_inclusion_ordering_reward` in CS336 (spring 2025) lecture 17.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

PAD = -1
"""Fills the positions of a prompt beyond its length (never equal to a token)."""


def _run_axis(prompts: Tensor) -> Tensor:
    """Prompts as [run batch pos] (a view with a run axis of 1 if they had none)."""
    return prompts if prompts.dim() == 3 else prompts[None]


def sorted_prompts(prompts: Int[Tensor, "... pos"]) -> Int[Tensor, "... pos"]:
    """sorted(prompt) for every prompt, padding kept at the end."""
    big = torch.iinfo(prompts.dtype).max
    ordered = torch.where(prompts == PAD, big, prompts).sort(dim=-1).values
    return torch.where(ordered == big, PAD, ordered)


RewardFn = Callable[
    [Int[Tensor, "batch pos"], Int[Tensor, "run batch trial pos"], Bool[Tensor, "run batch trial pos"]],
    Float[Tensor, "run batch trial"],
]


def inclusion_ordering_reward(
    prompts: Int[Tensor, "batch pos"],
    responses: Int[Tensor, "run batch trial pos"],
    content: Bool[Tensor, "run batch trial pos"],
) -> Float[Tensor, "run batch trial"]:
    """#prompt numbers included + #sorted adjacent pairs, 0 .. 2L-1 (lecture 17 `sort_inclusion_ordering_reward`).

    reward = #{i : prompt[i] appears among the response's tokens}
           + #{j : response[j] <= response[j+1], both tokens content}

    Range 0 .. 2L-1 for length-L prompts (5 for the lecture's). With EOS a short
    response can still collect ordering points by repeating a number: that is
    the reward's known loophole, visible through `response_length`.
    """
    # [run batch trial prompt_pos response_pos]: is prompt token i equal to content token j?
    match = (_run_axis(prompts)[:, :, None, :, None] == responses[:, :, :, None, :]) & content[:, :, :, None, :]
    inclusion = match.any(dim=-1).sum(dim=-1)
    ordered = (responses[..., :-1] <= responses[..., 1:]) & content[..., 1:]
    return (inclusion + ordered.sum(dim=-1)).float()


def distance_reward(
    prompts: Int[Tensor, "batch pos"],
    responses: Int[Tensor, "run batch trial pos"],
    content: Bool[Tensor, "run batch trial pos"],
) -> Float[Tensor, "run batch trial"]:
    """#positions where response == sorted(prompt), 0 .. L (lecture 17 `sort_distance_reward`).

    reward = #{j : response[j] == sorted(prompt)[j], token j content}; range 0 .. L.
    """
    target = sorted_prompts(_run_axis(prompts))[:, :, None, :]
    return ((responses == target) & content).sum(dim=-1).float()


def exact_match_reward(
    prompts: Int[Tensor, "batch pos"],
    responses: Int[Tensor, "run batch trial pos"],
    content: Bool[Tensor, "run batch trial pos"],
) -> Float[Tensor, "run batch trial"]:
    """1 if the response is exactly sorted(prompt) (full length, no early EOS), else 0 (binary; Dr. GRPO's case).

    The 0/1 case in which, per Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like
    Training"), std normalisation changes the weighting of prompts the most.
    """
    target = sorted_prompts(_run_axis(prompts))[:, :, None, :]
    real = target != PAD
    return (((responses == target) & content) | ~real).all(dim=-1).float()


REWARDS: dict[str, RewardFn] = {
    "inclusion_ordering": inclusion_ordering_reward,
    "distance": distance_reward,
    "exact_match": exact_match_reward,
}


def eos_masks(
    responses: Int[Tensor, "run batch trial pos"], eos_id: int | None
) -> tuple[Bool[Tensor, "run batch trial pos"], Bool[Tensor, "run batch trial pos"]]:
    """Split a response at its first EOS.

    Returns `(content, action)`: `content` marks the tokens before the first EOS
    (what the reward sees; their count is the response length); `action` marks
    the tokens the policy chose, i.e. `content` plus the first EOS itself (what
    log-probs, losses, KL and entropy see). Without EOS (`eos_id=None`) both are
    all True.
    """
    if eos_id is None:
        full = torch.ones_like(responses, dtype=torch.bool)
        return full, full
    is_eos = responses == eos_id
    seen = is_eos.cumsum(dim=-1)
    content = seen == 0
    action = content | (is_eos & (seen == 1))
    return content, action


def is_sorted_exactly(
    prompts: Int[Tensor, "batch pos"], responses: Int[Tensor, "run batch pos"]
) -> Bool[Tensor, "run batch"]:
    """True where a (greedy) response equals sorted(prompt) at every position of the prompt."""
    target = sorted_prompts(_run_axis(prompts))
    return ((responses == target) | (target == PAD)).all(dim=-1)


# --- the uniform random policy: what chance scores ------------------------
CHANCE_EXACT_LIMIT = 200_000
"""Chance scores are exact (every response enumerated) up to this many responses per prompt, else sampled."""

CHANCE_SAMPLES = 200_000
"""Responses per prompt drawn (generator seed 0) when there are too many to enumerate."""

CHANCE_CHUNK_BYTES = 1 << 26
"""About the bytes of one [prompt response pos pos] comparison `chance_scores` lets a reward make per call."""


def chance_scores(
    prompts: Int[Tensor, "batch pos"], reward: RewardFn, num_tokens: int, eos_id: int | None
) -> Float[Tensor, " batch"]:
    """Expected score of each prompt's response under the uniform random policy (every token equally likely).

    The policy picks each of the L positions uniformly from the model's
    `num_tokens` tokens (EOS included when `eos_id` is set; the response ends
    at its first EOS). Exact, by enumerating all num_tokens^L responses, when
    there are at most `CHANCE_EXACT_LIMIT`; otherwise the mean over
    `CHANCE_SAMPLES` uniform responses drawn from a generator seeded 0 (a
    Monte Carlo error of about 1e-3 reward points). `reward` is any function
    of `REWARDS` (e.g. `exact_match_reward` gives the chance of an exactly
    sorted response). Reward points.
    """
    length = prompts.shape[1]
    if num_tokens**length <= CHANCE_EXACT_LIMIT:
        grid = torch.cartesian_prod(*[torch.arange(num_tokens)] * length).view(-1, length)
    else:
        grid = torch.randint(num_tokens, (CHANCE_SAMPLES, length), generator=torch.Generator().manual_seed(0))
    out = torch.empty(len(prompts))
    reals, which = torch.unique(prompts != PAD, dim=0, return_inverse=True)
    for i, real in enumerate(reals):  # the responses and their masks are shared by the prompts of one padding
        index = (which == i).nonzero().flatten()
        n = int(real.sum())
        responses = torch.nn.functional.pad(grid[:, :n], (0, length - n), value=0)[None, None]  # [1 1 trial pos]
        content = eos_masks(responses, eos_id)[0] & real
        # a few prompts per call bounds memory (a reward may compare every position pair: [1 k trial pos pos])
        k = max(1, CHANCE_CHUNK_BYTES // (grid.shape[0] * length * length))
        for part in index.split(k):
            shape = (1, len(part), -1, -1)
            out[part] = reward(prompts[part], responses.expand(shape), content.expand(shape))[0].mean(dim=-1)
    return out


# --- prompt sets ---------------------------------------------------------
class TaskFields(Protocol):
    """The `RunConfig` fields (and derived properties) a prompt set is built from."""

    prompts: tuple[tuple[int, ...], ...]
    num_prompts: int
    num_eval_prompts: int
    allow_repeats: bool
    task_seed: int

    @property
    def num_values(self) -> int: ...
    @property
    def lengths(self) -> tuple[int, ...]: ...
    @property
    def response_length(self) -> int: ...


class PromptSet(NamedTuple):
    """A task's prompts: `train` [batch pos] and `eval` [batch pos] (held out), right-padded with `PAD`."""

    train: Tensor
    eval: Tensor


def _pad(rows: list[tuple[int, ...]], width: int) -> Tensor:
    return torch.tensor([list(r) + [PAD] * (width - len(r)) for r in rows], dtype=torch.long).view(-1, width)


def lecture_prompts(cfg: TaskFields) -> PromptSet:
    """The `prompts` field as the training set (lecture 17's three by default); no held-out set."""
    return PromptSet(_pad(list(cfg.prompts), cfg.response_length), _pad([], cfg.response_length))


def random_prompts(cfg: TaskFields) -> PromptSet:
    """`num_prompts` training and `num_eval_prompts` held-out prompts drawn from `task_seed`.

    Numbers are drawn uniformly from range(vocab_size) (without repeats when
    `allow_repeats` is off); prompts are split evenly over the lengths of
    `prompt_length`; a held-out prompt is never equal to a training prompt.
    Deterministic given the task fields; independent of the run's `seed`.
    Raises `ConfigError` when there are not enough distinct prompts.
    """
    from sortrl.engine.registry import ConfigError

    lengths, values = cfg.lengths, cfg.num_values
    train: list[tuple[int, ...]] = []
    held: list[tuple[int, ...]] = []
    for i, length in enumerate(lengths):
        n_train = cfg.num_prompts // len(lengths) + (i < cfg.num_prompts % len(lengths))
        n_eval = cfg.num_eval_prompts // len(lengths) + (i < cfg.num_eval_prompts % len(lengths))
        space = values**length if cfg.allow_repeats else math.perm(values, length)
        if n_train + n_eval > space:
            raise ConfigError(
                f"num_prompts: {n_train} + {n_eval} held-out prompts of length {length} exceed the "
                f"{space} distinct prompts of vocab_size={values}"
            )
        # one stream per length, so the training prompts of a length do not depend on the other lengths
        g = torch.Generator().manual_seed(cfg.task_seed * 1000 + length)
        seen: dict[tuple[int, ...], None] = {}
        while len(seen) < n_train + n_eval:
            if cfg.allow_repeats:
                row = torch.randint(values, (length,), generator=g)
            else:
                row = torch.randperm(values, generator=g)[:length]
            seen.setdefault(tuple(row.tolist()), None)
        unique = list(seen)
        train += unique[:n_train]
        held += unique[n_train:]
    width = max(lengths)
    return PromptSet(_pad(train, width), _pad(held, width))


TASKS: dict[str, Callable[[TaskFields], PromptSet]] = {"lecture": lecture_prompts, "random": random_prompts}


class RewardFields(TaskFields, Protocol):
    """The fields a task's best achievable mean reward depends on (besides the prompt set's)."""

    task: str
    reward: str
    prompts_per_epoch: int | None
    eos: bool

    @property
    def num_tokens(self) -> int: ...


def best_mean_reward(cfg: RewardFields) -> float:
    """Highest possible mean reward of a run with `cfg` (reward points), or NaN when it is not one known number.

    A prompt's best response is the sorted prompt, which no response beats
    under the sorting rewards of `REWARDS`: 2L-1 points for
    `inclusion_ordering` (L inclusion + L-1 ordering), L for `distance`, 1 for
    `exact_match`, for a prompt of length L. The mean reward's maximum is that
    value when every prompt (training and held-out) shares it, or, when each
    epoch sees every training prompt and there are no held-out prompts, its
    mean over the prompts. NaN when minibatches of prompts with different
    maxima make the maximum change from epoch to epoch. (`mean_reward` is the
    task's reward, before any length or overlong penalty, so they do not
    change it.)
    """
    task = TASKS[cfg.task](cfg)
    prompts = torch.cat([task.train, task.eval])
    best = sorted_prompts(prompts)[None, :, None, :]  # [run batch trial pos]
    per_prompt = _checked_reward(cfg.reward)(prompts, best, best != PAD)[0, :, 0]  # [batch]
    if bool((per_prompt == per_prompt[0]).all()):
        return float(per_prompt[0])
    whole_batch = cfg.prompts_per_epoch is None or cfg.prompts_per_epoch >= len(task.train)
    return float(per_prompt.mean()) if whole_batch and not len(task.eval) else math.nan


CHANCE_FIELDS = ("task", "prompts", "vocab_size", "prompt_length", "num_prompts", "num_eval_prompts",
                 "allow_repeats", "task_seed", "reward", "eos")  # fmt: skip
"""The fields a configuration's chance score depends on (its prompt sets, reward and EOS)."""


class RewardBounds(NamedTuple):
    """A configuration's reward scale, in reward points (`reward_bounds`)."""

    best: float
    """`best_mean_reward`: the highest possible mean reward (NaN when not one known number)."""
    chance: float
    """`chance_mean_reward` on the training prompts."""
    chance_eval: float
    """`chance_mean_reward` on the held-out prompts (NaN without them)."""


_CHANCES: dict[str, tuple[float, float]] = {}


def reward_bounds(cfg: RewardFields) -> RewardBounds:
    """The best and the uniform random policy's mean rewards of `cfg`, the chances cached by their `CHANCE_FIELDS`.

    (Counting chance can take a fraction of a second per prompt set; a grid's configurations share a few.)
    """
    key = json.dumps([getattr(cfg, f) for f in CHANCE_FIELDS])
    if key not in _CHANCES:
        _CHANCES[key] = (chance_mean_reward(cfg), chance_mean_reward(cfg, "eval"))
    return RewardBounds(best_mean_reward(cfg), *_CHANCES[key])


def chance_mean_reward(cfg: RewardFields, split: str = "train") -> float:
    """Expected mean reward of the uniform random policy on the `split` prompts (`chance_scores`), reward points.

    What a policy that has learned nothing scores: the floor of chance-normalised
    scores, (score - chance) / (best - chance). `split`: `"train"` (the training
    prompts: the floor of `mean_reward`) or `"eval"` (the held-out prompts: the
    floor of `eval/mean_reward`, NaN without held-out prompts); the mean is over
    the split's prompts, each weighted equally, as the metrics weight them.
    Raises `ValueError` for another `split`.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split: {split!r} is not one of 'train', 'eval'")
    prompts = getattr(TASKS[cfg.task](cfg), split)
    if not len(prompts):
        return math.nan
    eos_id = cfg.num_values if cfg.eos else None
    return float(chance_scores(prompts, _checked_reward(cfg.reward), cfg.num_tokens, eos_id).mean())


def _checked_reward(name: str) -> RewardFn:
    """`REWARDS[name]`, its results checked if it is a plug-in's (`sortrl.engine.registry.checked`), as in training:
    the best and chance scores of a report or a run's summary come from it too."""
    from sortrl.engine.registry import checked

    return checked("reward", name, REWARDS[name], like=1, axes=3)
