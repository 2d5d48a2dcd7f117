"""Paired statistics and verdicts (sortrl.analysis.verdicts) on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sortrl.analysis.verdicts import (
    ALPHA,
    N_RESAMPLES,
    SIGNFLIP_RESAMPLES,
    Interval,
    bootstrap_mean,
    chance_normalised,
    claim_verdict,
    contrary_p,
    equal_share_bound,
    holm,
    hypothesis_p,
    mcnemar_p,
    paired_binary_interval,
    paired_effect,
    seeds_needed,
    signflip_exact,
    signflip_floor,
    signflip_p,
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


def test_signflip_test_of_the_mean_by_hand():
    # 6 seeds: 2^6 = 64 sign patterns, enumerated exactly. Differences 1, 2, 3, 4, 5, 6 (sum 21): only the all-plus
    # pattern reaches a sum of 21 and the next largest sums are 21 - 2 = 19 (flip 1), 17 (flip 2), 15 (flip 3 or 1+2)
    d = np.arange(1.0, 7.0)
    assert signflip_p(d, "greater") == pytest.approx(1 / 64)
    assert signflip_p(d, "two-sided") == pytest.approx(2 / 64)
    assert signflip_p(d, "less") == pytest.approx(1.0)
    # against a null of 3.5 the differences are -2.5 .. 2.5, symmetric: the mean 0 is in the middle of its null
    assert signflip_p(d, "greater", null=3.5) > 0.5
    assert signflip_p(np.zeros(20)) == 1.0 and math.isnan(signflip_p(np.ones(1)))


def test_signflip_p_is_exact_where_the_seeds_allow_and_its_floor_lets_holm_reach_alpha():
    # 8 positive differences: of the 2^8 = 256 sign patterns only the all-plus one reaches the observed sum
    assert signflip_p(np.ones(8), "greater") == 1 / 256 and signflip_p(np.ones(8)) == 2 / 256
    assert signflip_p(-np.arange(1.0, 9.0), "less") == 1 / 256 and signflip_p(np.ones(8), "less") == 1.0
    # 17 seeds are still enumerated (2^17 = 131,072 patterns): exact, far below a drawn test's floor of 20,000 patterns
    assert signflip_exact(17) and signflip_p(np.ones(17)) == 2 / 2**17 == signflip_floor(17)
    # 128 seeds are drawn: no pattern beats all-plus, so p is the floor 2 / (B + 1), and Holm over a family of 132
    # tests (the ledger's) at that floor is still well below alpha, where 20,000 patterns gave 0.0132
    assert not signflip_exact(128)
    floor = signflip_floor(128)
    assert floor == 2 / (SIGNFLIP_RESAMPLES + 1) == signflip_p(np.ones(128))
    assert signflip_floor(128, "greater") == 1 / (SIGNFLIP_RESAMPLES + 1) == signflip_p(np.ones(128), "greater")
    assert holm([floor] * 132).max() < ALPHA / 10
    # a drawn p-value is reproducible: every test of 128 seeds uses one seeded set of patterns
    d = np.random.default_rng(5).normal(0.1, 1.0, 128)
    assert signflip_p(d) == signflip_p(d.copy()) and 0 < signflip_p(d) < 1


def test_the_test_matches_the_mean_not_the_median():
    # 80 of 128 differences are 0 and the rest are +1 or -2 in equal numbers: the median is 0 but the mean is -0.1875.
    # Wilcoxon (a test of the pseudo-median) and the sign-flip test of the mean need not agree; the mean's test is the
    # one the ledger reports beside the mean
    d = np.array([0.0] * 80 + [1.0] * 24 + [-2.0] * 24)
    assert d.mean() == pytest.approx(-0.1875)
    assert signflip_p(d, "less") < 0.05


@pytest.mark.parametrize(
    ("d", "predicts", "significant", "contrary"),
    [
        (np.full(64, 0.3) + np.tile([-0.01, 0.01], 32), ">", True, False),  # a difference of 0.3, not equivalent
        (np.tile([-0.01, 0.01], 32), ">", False, True),  # no difference: TOST within 0.05 is the contrary
        (np.tile([-0.01, 0.01], 32), "=", True, False),  # equivalence: TOST within 0.05
        (np.full(64, 0.3) + np.tile([-0.01, 0.01], 32), "=", False, True),  # beyond the margin: contrary
        (np.full(64, 0.04) + np.tile([-0.1, 0.1], 32), "=", False, False),  # 0.04, spread 0.1: not provably inside
        (np.full(64, -0.03) + np.tile([-0.01, 0.01], 32), ">=", True, False),  # -0.03 > -0.05: non-inferior
        (np.full(64, -0.3) + np.tile([-0.01, 0.01], 32), ">=", False, True),  # -0.3 < -0.05: inferior
        (np.full(64, 0.3) + np.tile([-0.01, 0.01], 32), ">=", True, False),  # better is not inferior
        (np.full(64, 0.3) + np.tile([-0.01, 0.01], 32), "<=", False, True),
    ],
)
def test_each_prediction_is_tested_by_its_own_hypothesis(d, predicts, significant, contrary):
    p, p_contrary = hypothesis_p(d, predicts, margin=0.05), contrary_p(d, predicts, margin=0.05)
    assert (p < 0.05) == significant and (p_contrary < 0.05) == contrary


def test_tost_is_the_larger_of_the_two_one_sided_tests():
    d = np.random.default_rng(3).normal(0.02, 0.1, 40)
    p = hypothesis_p(d, "=", margin=0.05)
    assert p == max(signflip_p(d, "greater", -0.05), signflip_p(d, "less", 0.05))


@pytest.mark.parametrize(
    ("effect", "p", "p_contrary", "predicts", "expected"),
    [
        (Interval(0.3, 0.1, 0.5, 32), 0.001, 1.0, ">", "supported"),
        (Interval(-0.3, -0.5, -0.1, 32), 0.001, 1.0, ">", "contradicted"),
        (Interval(-0.3, -0.5, -0.1, 32), 0.001, 1.0, "<", "supported"),
        (Interval(0.01, -0.02, 0.04, 32), 0.6, 0.01, ">", "no effect"),  # significantly equivalent
        (Interval(0.01, -0.02, 0.04, 32), 0.6, 0.2, ">", "inconclusive"),  # CI inside, equivalence not significant
        (Interval(0.02, -0.1, 0.14, 32), 0.6, 1.0, ">", "inconclusive"),  # neither
        (Interval(0.01, -0.02, 0.04, 32), 0.01, 1.0, "=", "supported"),  # the predicted equivalence (TOST)
        (Interval(0.3, 0.1, 0.5, 32), 1.0, 0.001, "=", "contradicted"),  # beyond the margin
        # G3's old case: a real difference (p < 0.05) whose CI [-0.108, -0.045] overlaps the margin 0.05: not
        # contradicted, since the contrary (beyond the margin) is not significant
        (Interval(-0.075, -0.108, -0.045, 128), 1.0, 0.3, "=", "inconclusive"),
        (Interval(0.02, -0.1, 0.14, 32), 0.6, 1.0, "=", "inconclusive"),
        (
            Interval(0.3, 0.1, 0.5, 32),
            0.2,
            1.0,
            ">",
            "inconclusive",
        ),  # uncorrected it looked significant; corrected not
        (Interval(0.077, 0.046, 0.109, 128), 0.001, 1.0, ">=", "supported"),  # G3: group - critic non-inferior
        (Interval(-0.3, -0.4, -0.2, 128), 1.0, 0.001, ">=", "contradicted"),  # inferior beyond the margin
        (Interval(-0.04, -0.08, 0.0, 128), 0.3, 0.4, ">=", "inconclusive"),
    ],
)
def test_verdicts(effect, p, p_contrary, predicts, expected):
    assert verdict(effect, p, p_contrary, predicts) == expected


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        (["supported", "supported"], "supported"),
        (["supported", "inconclusive", "no effect"], "supported in part"),
        (["supported", "contradicted"], "mixed"),
        (["contradicted", "inconclusive"], "contradicted"),
        (["no effect", "inconclusive"], "not supported"),
    ],
)
def test_claim_level_verdict(verdicts, expected):
    assert claim_verdict(verdicts) == expected


def test_exact_interval_for_0_of_128_discordant_pairs():
    # nothing solved on either side: the difference of proportions is bounded by the discordant share's exact upper
    # bound, at 97.5% (Bonferroni with the split, which is unknown here): 1 - 0.0125^(1/128)
    none = np.zeros(128)
    got = paired_binary_interval(none, none)
    assert got.point == 0 and not got.degenerate
    assert got.high == pytest.approx(1 - 0.0125 ** (1 / 128)) and got.low == -got.high
    assert 0.028 < got.high < 0.034
    # Clopper-Pearson's 95% bound on 0 of 128: 1 - 0.025^(1/128), the share of seeds that could differ
    assert equal_share_bound(128) == pytest.approx(1 - 0.025 ** (1 / 128))
    # 10 seeds solved by A only: an interval around 10/128 that excludes 0 and covers the bootstrap's
    a = np.r_[np.ones(10), np.zeros(118)]
    ten = paired_binary_interval(a, none)
    assert ten.point == pytest.approx(10 / 128) and 0 < ten.low < 10 / 128 < ten.high < 0.2


def test_degenerate_interval_is_flagged():
    same = bootstrap_mean(np.ones(32))
    assert same.degenerate and (same.low, same.high) == (1.0, 1.0)
    assert not bootstrap_mean(np.array([0.0, 1.0, 1.0])).degenerate


def test_seeds_needed_at_the_corrected_level():
    # differences with sd 1: a two-sided paired t-test at alpha 0.05 needs 33.37 seeds for d = 0.5; at alpha 0.05 / 86
    # (the ledger's Bonferroni level) many more
    d = np.array([-1.0, 1.0] * 8)
    d = d / d.std(ddof=1)
    assert seeds_needed(d, 0.5) == 34
    assert seeds_needed(d, 0.5, alpha=0.05 / 86) > 2.3 * 34
    assert seeds_needed(np.zeros(8), 0.5) is None
    # TOST at a true effect of 0, margin 0.5, sd 1, alpha 0.05: ((1.645 + 1.282) / 0.5)^2 = 34.3 (power 0.8 needs
    # z_{0.9} = 1.282 since both one-sided tests must pass)
    assert seeds_needed(d, 0.0, "=", margin=0.5) == 35
    assert seeds_needed(d, 0.6, "=", margin=0.5) is None  # an effect beyond the margin is never equivalent
    # non-inferiority at a true effect of 0, margin 0.5: ((1.645 + 0.842) / 0.5)^2 = 24.7
    assert seeds_needed(d, 0.0, ">=", margin=0.5) == 25


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
