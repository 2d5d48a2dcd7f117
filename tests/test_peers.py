"""Where sortrl follows a peer's executed code (TRL 1.16.0, verl 0.9.1) and where it says it does not (issue 22):
hand-computed cases of the sequence-level KL bias correction, the critic's value loss, the `trl` recipe, and the
one-line warnings of the differences sortrl keeps."""

from __future__ import annotations

import math

import pytest
import torch

from sortrl.engine.losses import kl_k1
from sortrl.engine.objective import Kl, SequenceTokens

LOG = math.log


# --- use_bias_correction_kl at the sequence level (TRL: per_token_kl * coef_1, coef_1 the sequence ratio) ---------
def _kl_case(sequence: bool) -> Kl:
    """One run, one prompt of 2 positions, vocab 2, responses [0, 0] and [1, 1]; k1 KL, token-mean weights 1/4.

    pi = (0.5, 0.5) then (0.8, 0.2); pi_old = pi_ref = (0.25, 0.75) then (0.8, 0.2). Token log-ratios: response 0
    (log 2, 0), response 1 (log 2/3, 0), so the GSPO ratios are s_0 = sqrt(2), s_1 = sqrt(2/3).
    """
    old = torch.tensor([[[[LOG(0.25), LOG(0.75)], [LOG(0.8), LOG(0.2)]]]])  # [run batch pos vocab]
    responses = torch.tensor([[[[0, 0], [1, 1]]]])  # [run batch trial pos]
    action = torch.ones_like(responses, dtype=torch.bool)
    omega = torch.full((1, 1, 2, 2), 0.25)  # token-mean over 4 tokens
    folded = torch.stack([omega[0, 0, :, p] @ torch.nn.functional.one_hot(responses[0, 0, :, p], 2).float()
                          for p in range(2)])[None, None]  # fmt: skip
    seq = SequenceTokens(torch.tensor([0]), responses, action, action.sum(-1), omega) if sequence else None
    return Kl(torch.tensor([0]), folded, old, old, torch.tensor([1.0]), torch.tensor([True]), kl_k1, seq)


def test_bias_corrected_kl_takes_the_ratio_of_the_loss_level():
    current = torch.tensor([[[[LOG(0.5), LOG(0.5)], [LOG(0.8), LOG(0.2)]]]])
    by_hand_sequence = 0.25 * (math.sqrt(2) * LOG(2) + math.sqrt(2 / 3) * LOG(2 / 3))  # 0.162299
    by_hand_token = 0.25 * (2 * LOG(2) + 2 / 3 * LOG(2 / 3))  # each token times its own rho: 0.278996
    assert _kl_case(sequence=True).value(current).item() == pytest.approx(by_hand_sequence, rel=1e-6)
    assert _kl_case(sequence=False).value(current).item() == pytest.approx(by_hand_token, rel=1e-6)


# --- the trl recipe: TRL 1.16.0's GRPOConfig defaults, where sortrl has the knob ---------------------------------------
TRL_DEFAULTS = {  # GRPOConfig(output_dir=..., use_cpu=True) of trl 1.16.0, executed
    "scale_rewards": "group",
    "loss_type": "dapo",
    "epsilon": 0.2,
    "epsilon_high": None,
    "importance_sampling_level": "token",
    "beta": 0.0,
    "use_bias_correction_kl": True,
    "sync_ref_model": False,
    "temperature": 1.0,
    "entropy_coef": 0.0,
}
AS_SORTRL = {  # each TRL option's value above, in sortrl's field and value
    "scale_rewards": ("deltas_mode", "normalized_rewards"),
    "loss_type": (
        "loss_agg_mode",
        "token-mean",
    ),  # 'dapo': the clipped loss summed over the batch's tokens / their count
    "epsilon": ("epsilon", 0.2),
    "epsilon_high": ("epsilon_high", None),
    "importance_sampling_level": ("importance_sampling_level", "token"),
    "beta": ("kl_penalty", 0.0),
    "use_bias_correction_kl": ("use_bias_correction_kl", True),
    "sync_ref_model": ("compute_ref_model_period", 0),  # the reference stays the initial model
    "temperature": ("temperature", 1.0),
    "entropy_coef": ("entropy_coeff", 0.0),
}


def test_trl_recipe_is_trls_defaults():
    from sortrl.engine.config import make_config

    cfg = make_config("trl")
    assert set(AS_SORTRL) == set(TRL_DEFAULTS)
    for option, (field, value) in AS_SORTRL.items():
        assert getattr(cfg, field) == value, (option, field)
    assert cfg.loss_mode == "clipped" and cfg.kl_estimator == "k3"  # TRL's only loss form and KL estimator here


def test_recipes_say_whose_units_beta_is_in():
    from sortrl.engine.config import make_config
    from sortrl.engine.recipes import RECIPES

    grpo = make_config("grpo").kl_description
    assert "in verl, and in TRL with use_bias_correction_kl=False" in grpo
    assert "use_bias_correction_kl=True" in RECIPES["grpo"].peers  # where grpo differs from TRL's trainer
    trl = make_config("trl", kl_penalty=0.04).kl_description
    assert "times pi/pi_old, so beta means what it means in TRL" in trl
    in_reward = make_config("grpo", use_kl_in_reward=True).kl_description
    assert "subtracted from its reward" in in_reward and "k1 with beta 0.001" in in_reward
