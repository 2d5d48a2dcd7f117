"""The sorting task: rewards (a registry) and the end-of-sequence mask.

Every reward is vectorised over `[run batch trial pos]`: it takes the prompts
`Int[Tensor, "batch pos"]`, the responses `Int[Tensor, "run batch trial pos"]`
and `content`, a `Bool[Tensor, "run batch trial pos"]` that is True for the
tokens the reward may see (all of them without EOS; those before the first EOS
with it), and returns `Float[Tensor, "run batch trial"]` (float32, in reward
points). The lecture's Python versions are `sort_distance_reward` and
`sort_inclusion_ordering_reward` in CS336 (spring 2025) lecture 17.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

RewardFn = Callable[
    [Int[Tensor, "batch pos"], Int[Tensor, "run batch trial pos"], Bool[Tensor, "run batch trial pos"]],
    Float[Tensor, "run batch trial"],
]


def inclusion_ordering_reward(
    prompts: Int[Tensor, "batch pos"],
    responses: Int[Tensor, "run batch trial pos"],
    content: Bool[Tensor, "run batch trial pos"],
) -> Float[Tensor, "run batch trial"]:
    """Lecture 17 `sort_inclusion_ordering_reward`: inclusion + ordering points.

    reward = #{i : prompt[i] appears among the response's tokens}
           + #{j : response[j] <= response[j+1], both tokens content}

    Range 0 .. 2L-1 for length-L prompts (5 for the lecture's). With EOS a short
    response can still collect ordering points by repeating a number: that is
    the reward's known loophole, visible through `response_length`.
    """
    # [run batch trial prompt_pos response_pos]: is prompt token i equal to content token j?
    match = (prompts[None, :, None, :, None] == responses[:, :, :, None, :]) & content[:, :, :, None, :]
    inclusion = match.any(dim=-1).sum(dim=-1)
    ordered = (responses[..., :-1] <= responses[..., 1:]) & content[..., 1:]
    return (inclusion + ordered.sum(dim=-1)).float()


def distance_reward(
    prompts: Int[Tensor, "batch pos"],
    responses: Int[Tensor, "run batch trial pos"],
    content: Bool[Tensor, "run batch trial pos"],
) -> Float[Tensor, "run batch trial"]:
    """Lecture 17 `sort_distance_reward`: positions where response == sorted(prompt).

    reward = #{j : response[j] == sorted(prompt)[j], token j content}; range 0 .. L.
    """
    target = prompts.sort(dim=-1).values[None, :, None, :]
    return ((responses == target) & content).sum(dim=-1).float()


def exact_match_reward(
    prompts: Int[Tensor, "batch pos"],
    responses: Int[Tensor, "run batch trial pos"],
    content: Bool[Tensor, "run batch trial pos"],
) -> Float[Tensor, "run batch trial"]:
    """Binary reward: 1 if the response is exactly sorted(prompt) (full length, no early EOS), else 0.

    The 0/1 case in which, per Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like
    Training"), std normalisation changes the weighting of prompts the most.
    """
    target = prompts.sort(dim=-1).values[None, :, None, :]
    return ((responses == target) & content).all(dim=-1).float()


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
    """True where a (greedy) response equals sorted(prompt) at every position."""
    return (responses == prompts.sort(dim=-1).values[None]).all(dim=-1)
