"""Delta (advantage) modes on hand-computed groups; rewards and deltas are [run batch trial]."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sortrl.engine.deltas import (
    DELTA_MODES,
    STD_EPS,
    batch_normalized,
    centered_rewards,
    max_rewards,
    normalized_rewards,
    rewards,
    rloo,
)

# One run, three prompts (groups) of four responses each.
R = torch.tensor([[[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]])


def _close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-6)


def test_registry_has_lecture_and_variant_modes():
    assert DELTA_MODES["rewards"] is rewards
    assert DELTA_MODES["centered_rewards"] is centered_rewards
    assert DELTA_MODES["normalized_rewards"] is normalized_rewards
    assert DELTA_MODES["max_rewards"] is max_rewards
    assert DELTA_MODES["rloo"] is rloo
    assert DELTA_MODES["batch_normalized"] is batch_normalized


def test_rewards_mode_is_identity():
    assert torch.equal(rewards(R), R)


def test_centered_rewards_hand():
    # group means: (1+2+3+6)/4 = 3; (5+5+1+1)/4 = 3; 2
    _close(centered_rewards(R), [[[-2, -1, 0, 3], [2, 2, -2, -2], [0, 0, 0, 0]]])


def test_normalized_rewards_unbiased_std_plus_eps():
    # group 0: centered [-2,-1,0,3], unbiased var (4+1+0+9)/3 = 14/3 -> std sqrt(14/3) = 2.1602469
    # group 1: centered [2,2,-2,-2], unbiased var 16/3 -> std 2.3094011
    # group 2: all equal -> 0 / (0 + 1e-5) = 0
    s0, s1 = math.sqrt(14 / 3) + 1e-5, math.sqrt(16 / 3) + 1e-5
    expected = [[[-2 / s0, -1 / s0, 0, 3 / s0], [2 / s1, 2 / s1, -2 / s1, -2 / s1], [0, 0, 0, 0]]]
    _close(normalized_rewards(R), expected)
    assert STD_EPS == 1e-5
    # the biased std (divide by 4) would give -2 / sqrt(14/4) = -1.069 instead of -0.926
    assert abs(normalized_rewards(R)[0, 0, 0].item() - (-2 / (math.sqrt(14 / 4) + 1e-5))) > 0.1


def test_normalized_rewards_eps_matters_for_tiny_spread():
    # rewards [0, 1e-5]: centered [-5e-6, 5e-6], unbiased std = 1e-5/sqrt(2) = 7.0711e-6
    # delta_1 = 5e-6 / (7.0711e-6 + 1e-5) = 0.29289 (without the eps it would be 0.70711)
    out = normalized_rewards(torch.tensor([[[0.0, 1e-5]]], dtype=torch.float64))
    expected = 5e-6 / (1e-5 / math.sqrt(2) + 1e-5)
    assert out[0, 0, 1].item() == pytest.approx(expected, rel=1e-9)
    assert out[0, 0, 0].item() == pytest.approx(-expected, rel=1e-9)


def test_max_rewards_keeps_only_the_max():
    # group 0: max 6 -> [0,0,0,6]; group 1: tie at 5 -> both kept; group 2: every response is the max
    _close(max_rewards(R), [[[0, 0, 0, 6], [5, 5, 0, 0], [2, 2, 2, 2]]])


def test_rloo_hand():
    # A_i = r_i - mean_{j != i} r_j
    # group 0 (sum 12): 1 - 11/3 = -8/3; 2 - 10/3 = -4/3; 3 - 9/3 = 0; 6 - 6/3 = 4
    # group 1 (sum 12): 5 - 7/3 = 8/3 (twice); 1 - 11/3 = -8/3 (twice)
    _close(rloo(R), [[[-8 / 3, -4 / 3, 0, 4], [8 / 3, 8 / 3, -8 / 3, -8 / 3], [0, 0, 0, 0]]])


def test_batch_normalized_hand_per_run():
    r = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 4.0, 7.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    # run 0: group means 2 and 5 -> centered [-1,0,1], [-1,-1,2]
    #        std over the run's six rewards: mean 3.5, squared deviations 6.25+2.25+.25+.25+.25+12.25 = 21.5,
    #        unbiased var 21.5/5 = 4.3 -> std 2.0736441
    # run 1: group means 0 and 1 -> centered [0,0,0], [-1,-1,2]
    #        six rewards: mean 0.5, squared deviations 5*0.25 + 6.25 = 7.5, var 7.5/5 = 1.5 -> std 1.2247449
    s0, s1 = math.sqrt(4.3) + 1e-5, math.sqrt(1.5) + 1e-5
    expected = [[[-1 / s0, 0, 1 / s0], [-1 / s0, -1 / s0, 2 / s0]], [[0, 0, 0], [-1 / s1, -1 / s1, 2 / s1]]]
    _close(batch_normalized(r), expected)
    # each run uses its own std: run 1 alone gives the same deltas
    _close(batch_normalized(r[1:]), expected[1:])


@pytest.mark.parametrize("mode", ["centered_rewards", "normalized_rewards", "rloo", "batch_normalized"])
def test_identical_rewards_give_zero_deltas(mode):
    r = torch.full((2, 3, 5), 4.0)
    assert torch.equal(DELTA_MODES[mode](r), torch.zeros_like(r))


group_rewards = st.lists(st.integers(min_value=0, max_value=7), min_size=2, max_size=8).map(
    lambda xs: torch.tensor(xs, dtype=torch.float32)
)


@settings(max_examples=50, deadline=None)
@given(st.lists(group_rewards, min_size=1, max_size=4).filter(lambda gs: len({len(g) for g in gs}) == 1))
def test_baseline_modes_sum_to_zero_per_prompt(groups):
    r = torch.stack(groups)[None]  # [1 batch trial]
    for mode in ("centered_rewards", "normalized_rewards", "rloo", "batch_normalized"):
        sums = DELTA_MODES[mode](r).sum(dim=-1)
        torch.testing.assert_close(sums, torch.zeros_like(sums), atol=1e-4, rtol=0)


@settings(max_examples=50, deadline=None)
@given(group_rewards, st.integers(min_value=-5, max_value=5))
def test_centered_and_normalized_ignore_a_shift(group, shift):
    r = group[None, None]
    torch.testing.assert_close(centered_rewards(r + shift), centered_rewards(r), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized_rewards(r + shift), normalized_rewards(r), atol=1e-4, rtol=0)
