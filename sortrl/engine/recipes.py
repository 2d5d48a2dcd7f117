"""Recipes: named presets that set several `RunConfig` fields at once (data only).

`sortrl.engine.config.make_config(recipe="dapo", num_epochs=50)` applies the recipe's
fields first and the explicit ones after, so explicit options always win. Each
recipe cites the paper (and the TRL/verl option names) it follows.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Recipe(NamedTuple):
    fields: dict[str, Any]
    source: str


RECIPES: dict[str, Recipe] = {
    "lecture": Recipe(
        {"deltas_mode": "rewards", "loss_mode": "naive", "kl_penalty": 0.0, "kl_loss_agg_mode": "lecture"},
        "CS336 lecture 17 `run_policy_gradient` defaults (its KL, when set, summed over positions)",
    ),
    "grpo": Recipe(
        {
            "deltas_mode": "normalized_rewards",
            "loss_mode": "clipped",
            "epsilon": 0.2,
            "loss_agg_mode": "seq-mean-token-mean",
            "kl_penalty": 0.04,
            "kl_estimator": "k3",
            "compute_ref_model_period": 0,
        },
        "Shao et al. 2024 (DeepSeekMath): group-normalised advantages, PPO clip, per-sequence mean, "
        "k3 KL (beta 0.04) to the frozen initial policy",
    ),
    "dr_grpo": Recipe(
        {
            "deltas_mode": "centered_rewards",
            "loss_mode": "clipped",
            "epsilon": 0.2,
            "loss_agg_mode": "seq-mean-token-sum-norm",
            "kl_penalty": 0.0,
        },
        "Liu et al. 2025 (Dr. GRPO): no std normalisation, constant length normaliser "
        "(TRL loss_type='dr_grpo', scale_rewards='none')",
    ),
    "dapo": Recipe(
        {
            "deltas_mode": "normalized_rewards",
            "loss_mode": "clipped",
            "epsilon": 0.2,
            "epsilon_high": 0.28,
            "loss_agg_mode": "token-mean",
            "filter_zero_std_groups": True,
            "max_num_gen_batches": 10,
            "overlong_buffer_len": 1,
            "overlong_penalty_factor": 1.0,
            "kl_penalty": 0.0,
        },
        "Yu et al. 2025 (DAPO): clip-higher 0.2/0.28, token-level mean, dynamic sampling re-sampling zero-std groups "
        "up to 10 batches (verl max_num_gen_batches), soft overlong punishment (buffer 1 of 3 tokens, factor 1), no KL; "
        "the sorted answer has the maximum length, so the overlong penalty falls on it too",
    ),
    "gspo": Recipe(
        {
            "deltas_mode": "normalized_rewards",
            "loss_mode": "clipped",
            "importance_sampling_level": "sequence",
            "epsilon": 3e-4,
            "epsilon_high": 4e-4,
            "loss_agg_mode": "seq-mean-token-mean",
            "kl_penalty": 0.0,
        },
        "Zheng et al. 2025 (GSPO): sequence-level ratio, clip 3e-4/4e-4 (TRL importance_sampling_level='sequence')",
    ),
    "rloo": Recipe(
        {
            "deltas_mode": "rloo",
            "loss_mode": "clipped",
            "epsilon": 0.2,
            "loss_agg_mode": "seq-mean-token-mean",
            "kl_penalty": 0.0,
        },
        "Ahmadian et al. 2024 (Back to Basics): leave-one-out baseline (verl adv_estimator='rloo')",
    ),
}
