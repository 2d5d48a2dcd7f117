"""sortrl.analysis.stats on cases small enough to compute by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sortrl.analysis import stats


def test_iqm_averages_the_middle_half():
    # 8 values: the lowest 2 and highest 2 are dropped, the mean of 2, 3, 4, 5 is 3.5
    assert stats.iqm(np.array([0.0, 1, 2, 3, 4, 5, 6, 100])) == pytest.approx(3.5)
    # an outlier seed moves the mean but not the IQM
    assert stats.iqm(np.array([1.0, 1, 1, 1, 1, 1, 1, -50])) == pytest.approx(1.0)


def test_iqm_is_batched_over_leading_axes():
    scores = np.array([[0.0, 1, 2, 3], [10, 11, 12, 13]])  # [step run]: middle two of each row
    assert np.allclose(stats.iqm(scores), [1.5, 11.5])


def test_probability_of_improvement_disjoint_and_identical():
    low, high = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0])
    assert stats.probability_of_improvement(high, low) == 1.0
    assert stats.probability_of_improvement(low, high) == 0.0
    same = np.array([1.0, 2.0, 3.0])
    assert stats.probability_of_improvement(same, same) == 0.5


def test_probability_of_improvement_counts_ties_half():
    # pairs (x, y): (1,1) tie -> 0.5, (1,2) loss, (3,1) win, (3,2) win -> 2.5 / 4
    assert stats.probability_of_improvement(np.array([1.0, 3.0]), np.array([1.0, 2.0])) == pytest.approx(0.625)


def test_bootstrap_ci_brackets_the_estimate_and_is_reproducible():
    x = np.array([3.1, 2.7, 3.9, 3.3, 2.2, 3.6, 3.0, 4.1, 2.9, 3.4])
    for statistic in (stats.mean, stats.iqm):
        low, high = stats.bootstrap_ci([x], statistic, seed=0)
        assert low < statistic(x) < high
        assert (low, high) == stats.bootstrap_ci([x], statistic, seed=0)
    assert stats.bootstrap_ci([x], stats.mean, seed=0) != stats.bootstrap_ci([x], stats.mean, seed=1)


def test_bootstrap_ci_two_samples_and_degenerate_cases():
    x, y = np.array([5.0, 6, 7, 8]), np.array([1.0, 2, 3, 4])
    low, high = stats.bootstrap_ci([x, y], stats.probability_of_improvement, seed=0)
    assert low == high == 1.0  # every resample keeps x above y
    low, high = stats.bootstrap_ci([x, y], stats.mean_difference, seed=0)
    assert low < 4.0 < high
    assert stats.bootstrap_ci([np.full(5, 2.0)], stats.mean) == (2.0, 2.0)
    low, high = stats.bootstrap_ci([np.array([1.0])], stats.mean)
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_ci_batched_over_steps():
    scores = np.array([[1.0, 2, 3, 4, 5], [10, 10, 10, 10, 10]])  # [step run]
    low, high = stats.bootstrap_ci([scores], stats.mean, seed=0)
    assert low.shape == high.shape == (2,)
    assert low[0] < 3 < high[0] and low[1] == high[1] == 10


def test_performance_profile_counts_scores_strictly_above_tau():
    """rliable's convention: score > tau. At a tau equal to a score, that run no longer counts."""
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    taus = np.array([0.0, 2.0, 2.5, 4.0, 5.0])
    # tau 2: runs 3 and 4 (not 2) -> 0.5; tau 4: none (>= would count run 4: 0.25)
    assert stats.performance_profile(scores, taus).tolist() == [1.0, 0.5, 0.5, 0.0, 0.0]
    low, high = stats.performance_profile_ci(scores, taus, seed=0)
    assert low.shape == (5,) and np.all(low <= stats.performance_profile(scores, taus))
    assert low[0] == high[0] == 1.0 and low[-1] == high[-1] == 0.0
    # the profile at the lowest score is the share of runs above it: here 2 of 4 runs sit at the floor 0
    floor = np.array([0.0, 0.0, 0.5, 1.0])
    assert stats.performance_profile(floor, np.array([0.0]))[0] == 0.5


def _runs(epochs: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"run_id": run, "epoch": epoch, "mean_reward": value}
        for run, values in epochs.items()
        for epoch, value in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_final_scores_average_the_last_tenth_of_epochs():
    # 100 epochs: the last 10 (values 90..99) average to 94.5; 30 epochs: the last 3 (27, 28, 29) -> 28
    runs = _runs({"a": list(range(100)), "b": list(range(30)), "c": [7.0, 1.0, 2.0, 3.0, 9.0]})
    final = stats.final_scores(runs)
    assert final["a"] == pytest.approx(94.5)
    assert final["b"] == pytest.approx(28.0)
    assert final["c"] == pytest.approx(9.0)  # 5 epochs: at least the last one


def test_final_scores_skip_epochs_without_a_value():
    # held-out metrics are NaN between evaluations: the last 10% of the evaluated epochs count
    values = [math.nan if epoch % 5 else float(epoch) for epoch in range(100)]  # evaluated at 0, 5, ..., 95
    final = stats.final_scores(_runs({"a": values}))
    assert final["a"] == pytest.approx(np.mean([90.0, 95.0]))  # 20 evaluations -> the last 2
    assert stats.final_scores(_runs({"a": [1.0, 2.0, 3.0]}), fraction=0)["a"] == 3.0  # the last value


def test_counted_iqm_by_hand():
    """IQM of a resample from its counts: values 0, 1, 2, 3 (n = 4: the middle two of the four draws)."""
    values = np.array([[0.0, 1.0, 2.0, 3.0], [3.0, 3.0, 1.0, 1.0]])  # [point run]
    counts = np.array([[4, 0, 0, 0], [1, 1, 1, 1], [0, 2, 0, 2], [0, 1, 3, 0]])  # [resample run]
    # point 0 draws: 0000 -> 0; 0123 -> 1.5; 1133 -> 2; 1222 -> 2.  point 1: 3333 -> 3; 1133 -> 2; 3311 -> 2; 3111 -> 1
    assert stats._counted_iqm(values, counts).tolist() == [[0.0, 1.5, 2.0, 2.0], [3.0, 2.0, 2.0, 1.0]]
    assert stats._counted_mean(values, counts).tolist() == [[0.0, 1.5, 2.0, 1.75], [3.0, 2.0, 2.0, 1.5]]


@pytest.mark.parametrize("runs", [2, 3, 7, 40])
@pytest.mark.parametrize("statistic", [stats.mean, stats.iqm])
def test_curve_ci_equals_the_direct_bootstrap(runs, statistic):
    """Same resamples as `bootstrap_ci` on the [point run] array; equal up to float rounding, ties included."""
    rng = np.random.default_rng(runs)
    values = np.vstack([rng.normal(size=runs), np.round(rng.uniform(0, 5, runs) * 3) / 3, np.full(runs, 2.0)])
    low, high = stats.curve_ci(values, statistic, seed=4)
    direct_low, direct_high = stats.bootstrap_ci([values], statistic, seed=4)
    assert low.shape == high.shape == (3,)
    np.testing.assert_allclose(low, direct_low, rtol=0, atol=1e-12)
    np.testing.assert_allclose(high, direct_high, rtol=0, atol=1e-12)
    assert low[2] == high[2] == 2.0  # every run equal: the degenerate interval
    if runs > 3:  # with 2 or 3 runs the 2.5% point is the smallest value whatever the seed
        assert not np.allclose(stats.curve_ci(values, statistic, seed=5)[0][:2], low[:2])


def test_curve_ci_needs_two_runs():
    low, high = stats.curve_ci(np.ones((3, 1)), stats.mean)
    assert np.isnan(low).all() and np.isnan(high).all() and low.shape == (3,)


def test_an_undefined_sample_gives_nan_without_a_warning():
    """A score that is NaN for every run (no one maximum to normalise by) has no interval, and scipy is not asked
    (its percentile bootstrap of NaNs warns about BCa, a method sortrl does not use)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = stats.bootstrap_ci([np.full(8, np.nan)], stats.mean)
    assert np.isnan(low) and np.isnan(high)
