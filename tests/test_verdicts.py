"""Paired statistics and verdicts (sortrl.analysis.verdicts) on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sortrl.analysis.verdicts import (
    N_RESAMPLES,
    Interval,
    bootstrap_mean,
    chance_normalised,
    holm,
    mcnemar_p,
    paired_effect,
    seeds_needed,
    verdict,
    wilcoxon_p,
    wilson,
)


def test_paired_effect_is_the_mean_of_per_seed_differences():
    a, b = np.array([3.0, 4.0, 5.0, 6.0, 7.0]), np.array([1.0, 3.0, 3.0, 5.0, 6.0])  # differences 2, 1, 2, 1, 1
    effect = paired_effect(a, b)
    assert effect.point == pytest.approx(1.4)
    assert 1.0 <= effect.low <= 1.4 <= effect.high <= 2.0  # a bootstrap mean of values in {1, 2}
    with pytest.raises(ValueError, match="align by seed"):
        paired_effect(a, b[:3])


def test_pairing_narrows_the_interval_when_seeds_share_their_level():
    # seed effects dominate (level 0..9), the treatment adds 0.125 to every seed: the paired CI is exactly 0.125
    level = np.arange(10.0)
    a, b = level + 0.125, level
    paired = paired_effect(a, b)
    assert paired.point == 0.125 and paired.degenerate  # every difference is 0.125
    unpaired = bootstrap_mean(a).high - bootstrap_mean(b).low
    assert unpaired > 3  # the unpaired view cannot see a 0.125 difference


def test_holm_on_known_p_values():
    # sorted 0.01, 0.03, 0.04, 0.2: x4 = 0.04, x3 = 0.09, x2 = 0.08 -> 0.09 (monotone), x1 = 0.2
    assert holm([0.01, 0.04, 0.03, 0.2]).tolist() == pytest.approx([0.04, 0.09, 0.09, 0.2])
    out = holm([0.01, math.nan, 0.5])  # NaN (no test) is not counted in the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)


def test_wilcoxon_and_mcnemar_by_hand():
    assert wilcoxon_p(np.zeros(20)) == 1.0
    assert wilcoxon_p(np.ones(10)) < 0.01
    # 10 seeds solved by A only, none by B only: 2 * 0.5^10
    assert mcnemar_p(np.ones(10), np.zeros(10)) == pytest.approx(2 * 0.5**10)
    assert mcnemar_p(np.array([1, 0, 1]), np.array([1, 0, 1])) == 1.0


@pytest.mark.parametrize(
    ("effect", "p", "predicts", "expected"),
    [
        (Interval(0.3, 0.1, 0.5, 32), 0.001, ">", "supported"),
        (Interval(-0.3, -0.5, -0.1, 32), 0.001, ">", "contradicted"),
        (Interval(-0.3, -0.5, -0.1, 32), 0.001, "<", "supported"),
        (Interval(0.01, -0.02, 0.04, 32), 0.6, ">", "no effect"),  # CI inside the margin 0.05
        (Interval(0.02, -0.1, 0.14, 32), 0.6, ">", "inconclusive"),  # neither
        (Interval(0.01, -0.02, 0.04, 32), 0.6, "=", "supported"),  # the predicted equivalence
        (Interval(0.3, 0.1, 0.5, 32), 0.001, "=", "contradicted"),
        (Interval(0.02, -0.1, 0.14, 32), 0.6, "=", "inconclusive"),
        (Interval(0.3, 0.1, 0.5, 32), 0.2, ">", "inconclusive"),  # uncorrected it looked significant; corrected not
    ],
)
def test_verdicts(effect, p, predicts, expected):
    assert verdict(effect, p, predicts, margin=0.05) == expected


def test_degenerate_interval_is_flagged():
    same = bootstrap_mean(np.ones(32))
    assert same.degenerate and (same.low, same.high) == (1.0, 1.0)
    assert not bootstrap_mean(np.array([0.0, 1.0, 1.0])).degenerate


def test_seeds_needed_at_80_percent_power():
    # differences with sd 1: a paired t-test needs 33.37 seeds for a mean difference 0.5 (d = 0.5), Wilcoxon / 0.955
    d = np.array([-1.0, 1.0] * 8)
    d = d / d.std(ddof=1)
    assert seeds_needed(d, 0.5) == math.ceil(33.367 / (3 / math.pi))
    assert seeds_needed(np.zeros(8), 0.5) is None


def test_wilson_interval():
    got = wilson(3, 10)
    assert (
        got.point == 0.3
        and got.low == pytest.approx(0.10779, abs=1e-5)
        and got.high == pytest.approx(0.60322, abs=1e-5)
    )
    zero = wilson(0, 128)
    assert zero.low == 0 and 0 < zero.high < 0.03  # an honest upper bound when nothing was solved


def test_chance_normalised():
    assert chance_normalised(np.array([2.0, 5.0, 3.5]), chance=2.0, best=5.0).tolist() == [0.0, 1.0, 0.5]


def test_bootstrap_ends_are_stable_to_0005_between_bootstrap_seeds():
    # 128 seeds of paired differences with sd 1 (reward points; the ledger's chance-normalised scores spread less)
    d = np.random.default_rng(7).normal(0.2, 1.0, 128)
    ends = np.array([[*bootstrap_mean(d, seed=s)[1:3]] for s in range(8)])
    spread = ends.max(axis=0) - ends.min(axis=0)
    assert spread.max() < 0.005, (spread, N_RESAMPLES)
