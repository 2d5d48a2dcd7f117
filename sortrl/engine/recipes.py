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
    peers: str = ""
    """Where the recipe still differs from the peer trainer of the same name (TRL 1.16.0, verl 0.9.1), checked
    against their executed code; `sortrl recipes` shows it."""


STD_EPS_NOTE = "std epsilon 1e-5 here (the lecture's), 1e-4 in TRL, 1e-6 in verl"
K3_NOTE = "k3 clamped at 10 as verl does (TRL does not: they differ where k3 > 10)"


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
        "equals verl's GRPO (adv_estimator=grpo, use_kl_loss, kl_loss_type=low_var_kl, kl_loss_coef=0.04, "
        "loss_agg_mode=seq-mean-token-mean) but for the std epsilon; TRL's GRPOTrainer (loss_type='grpo', beta=0.04) "
        "also multiplies the KL by pi/pi_old (use_bias_correction_kl=True, its default: add "
        "use_bias_correction_kl=true here, or pass False there) and does not clamp k3; " + STD_EPS_NOTE,
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
        "verl's DAPO trainer fills its batch with groups of new prompts and raises after max_num_gen_batches; here "
        "a zero-std prompt is drawn again and, after the cap, left out of the epoch; " + STD_EPS_NOTE,
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
    "trl": Recipe(
        {
            "deltas_mode": "normalized_rewards",
            "loss_mode": "clipped",
            "epsilon": 0.2,
            "epsilon_high": None,
            "importance_sampling_level": "token",
            "loss_agg_mode": "token-mean",
            "kl_penalty": 0.0,
            "kl_estimator": "k3",
            "use_bias_correction_kl": True,
            "compute_ref_model_period": 0,
            "temperature": 1.0,
            "entropy_coeff": 0.0,
        },
        "TRL 1.16.0 GRPOConfig defaults, every one that changes the objective: scale_rewards='group', "
        "loss_type='dapo' (PPO clip, token mean over the batch), epsilon 0.2 (epsilon_high unset), token-level ratio, "
        "beta 0 (when set: k3 KL x pi/pi_old, use_bias_correction_kl=True, to the initial model, sync_ref_model=False), "
        "temperature 1, entropy_coef 0. Not set, as in every recipe (a budget for LLMs, not the algorithm): "
        "learning_rate 1e-6, num_generations 8, num_iterations 1 (num_steps_per_epoch), max_grad_norm 1, linear decay",
        "TRL also clips the gradient norm at 1 and decays the learning rate linearly (no such knob here); "
        + K3_NOTE
        + "; "
        + STD_EPS_NOTE,
    ),
}
