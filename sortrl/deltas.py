"""Delta (advantage) modes: how a group's rewards become per-response weights.

Each mode maps rewards `Float[Tensor, "run batch trial"]` to deltas of the same
shape (reward units, or unitless after std normalisation). A group is the
`trial` axis of one prompt (`batch` entry) of one run. Lecture modes follow
`compute_deltas` of CS336 lecture 17; the others name their source.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import reduce
from jaxtyping import Float
from torch import Tensor

DeltaFn = Callable[[Float[Tensor, "run batch trial"]], Float[Tensor, "run batch trial"]]

STD_EPS = 1e-5
"""Added to the std before dividing (the lecture's `+ 1e-5`)."""


def rewards(r: Float[Tensor, "run batch trial"]) -> Float[Tensor, "run batch trial"]:
    """delta_i = r_i: plain REINFORCE on raw rewards (lecture `rewards`)."""
    return r


def centered_rewards(r: Float[Tensor, "run batch trial"]) -> Float[Tensor, "run batch trial"]:
    """delta_i = r_i - mean_j r_j over the group (lecture `centered_rewards`; Dr. GRPO's advantage)."""
    return r - r.mean(dim=-1, keepdim=True)


def normalized_rewards(r: Float[Tensor, "run batch trial"]) -> Float[Tensor, "run batch trial"]:
    """delta_i = (r_i - mean r) / (std r + 1e-5), std unbiased over the group.

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
    """Leave-one-out baseline: delta_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean r).

    Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free");
    Ahmadian et al. 2024; verl `adv_estimator=rloo`. Needs G >= 2.
    """
    g = r.shape[-1]
    return (r - r.mean(dim=-1, keepdim=True)) * (g / (g - 1))


def batch_normalized(r: Float[Tensor, "run batch trial"]) -> Float[Tensor, "run batch trial"]:
    """delta_i = (r_i - group mean) / (std over the run's whole batch + 1e-5).

    TRL `scale_rewards="batch"` (std of all rewards of the run's epoch, unbiased),
    which keeps the group baseline but drops the per-prompt std weighting.
    """
    std = reduce(r, "run batch trial -> run", torch.std)
    return (r - r.mean(dim=-1, keepdim=True)) / (std[:, None, None] + STD_EPS)


DELTA_MODES: dict[str, DeltaFn] = {
    "rewards": rewards,
    "centered_rewards": centered_rewards,
    "normalized_rewards": normalized_rewards,
    "max_rewards": max_rewards,
    "rloo": rloo,
    "batch_normalized": batch_normalized,
}
