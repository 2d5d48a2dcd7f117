"""Small, pure metric functions for comparing configurations over seeds (rliable style).

Every function takes plain arrays (one value per run, i.e. per seed) or a tidy
run table and returns numbers; nothing here draws or writes. The aggregate
metrics follow Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge
of the Statistical Precipice" (the `rliable` library): the interquartile mean
(IQM), percentile-bootstrap confidence intervals, performance profiles and the
probability of improvement. Bootstraps are `scipy.stats.bootstrap` with a
fixed seed, so every interval is reproducible bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
"""Level of every confidence interval."""

N_RESAMPLES = 2000
"""Bootstrap resamples per interval."""

FINAL_FRACTION = 0.1
"""A run's final score is its metric averaged over this share of its last epochs."""


def iqm(scores: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle 50% of `scores` along `axis`.

    `scipy.stats.trim_mean(scores, 0.25)`: drops the lowest and highest 25% of
    values (rounded down) and averages the rest. Robust to outlier seeds, less
    noisy than the median (Agarwal et al. 2021, section 4).
    """
    return stats.trim_mean(scores, 0.25, axis=axis)


def mean(scores: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Arithmetic mean along `axis` (a named statistic for `bootstrap_ci`)."""
    return np.mean(scores, axis=axis)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """P(X > Y): the chance that a random run of X scores higher than a random run of Y.

    Mann-Whitney U of `x` against `y` divided by `n_x * n_y`; ties count one
    half (Agarwal et al. 2021, section 4.3). 1 when every x beats every y, 0
    when every y beats every x, 0.5 for identical samples. `x`, `y`: scores,
    runs along `axis` (other axes are batched, as `scipy.stats.bootstrap` needs).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    u = stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic
    return u / (x.shape[axis] * y.shape[axis])


def mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """mean(x) - mean(y) along `axis` (same units as the scores)."""
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def bootstrap_ci(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray | float],
    seed: int = 0,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Percentile-bootstrap confidence interval `(low, high)` of `statistic(*samples)`.

    `samples`: one or more arrays, runs along the last axis (leading axes are
    batched, e.g. `[step run]` gives one interval per step); each sample is
    resampled independently with replacement. `statistic(*samples, axis=-1)`
    must be vectorised, like `iqm`, `mean` or `probability_of_improvement`.
    Uses `scipy.stats.bootstrap(method="percentile")` (as rliable) with
    `random_state=seed`. A sample with fewer than two runs gives NaN; a sample
    whose values are all equal gives the degenerate interval of its statistic.
    """
    samples = [np.asarray(s, dtype=float) for s in samples]
    if min(s.shape[-1] for s in samples) < 2:
        nan = np.full(samples[0].shape[:-1], math.nan)
        return (nan, nan) if nan.ndim else (math.nan, math.nan)
    result = stats.bootstrap(
        samples,
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        axis=-1,
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return _unwrap(low), _unwrap(high)


def _unwrap(value: np.ndarray | float) -> np.ndarray | float:
    array = np.asarray(value, dtype=float)
    return float(array) if array.ndim == 0 else array


def performance_profile(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Fraction of runs whose score is >= tau, for each tau: the run-score distribution.

    `scores`: `[run]`; `taus`: thresholds `[tau]`. Returns `[tau]`, non-increasing
    in tau (Agarwal et al. 2021, section 4.2).
    """
    return _at_least(scores, taus).mean(axis=-1)


def performance_profile_ci(scores: np.ndarray, taus: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap CI `(low [tau], high [tau])` of `performance_profile(scores, taus)`."""
    low, high = bootstrap_ci([_at_least(scores, taus)], mean, seed)
    return np.asarray(low), np.asarray(high)


def _at_least(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Indicator `[tau run]`: 1 where the run's score is >= tau."""
    scores, taus = np.asarray(scores, dtype=float), np.asarray(taus, dtype=float)
    return (scores[None, :] >= taus[:, None]).astype(float)


def final_scores(
    runs: pd.DataFrame, metric: str = "mean_reward", fraction: float = FINAL_FRACTION, by: str = "run_id"
) -> pd.Series:
    """Each run's final score: `metric` averaged over the last `fraction` of its epochs.

    `runs`: tidy table, one row per (run, epoch), with columns `by`, `epoch`
    and `metric`. Epochs where `metric` is NaN (e.g. no held-out evaluation
    that epoch) are skipped; of the remaining `n` epochs the last
    `max(1, ceil(fraction * n))` are averaged (10 of 100 by default). Returns a
    Series indexed by `by` (sorted), in the metric's units.
    """
    rows = runs.loc[runs[metric].notna(), [by, "epoch", metric]].sort_values([by, "epoch"], kind="stable")
    count = rows.groupby(by, sort=True)["epoch"].transform("size")
    rank_from_end = rows.groupby(by, sort=True).cumcount(ascending=False)
    keep = np.maximum(1, np.ceil(fraction * count - 1e-9))  # -1e-9: 0.1 * 30 is 3.0000000000000004
    return rows[rank_from_end < keep].groupby(by, sort=True)[metric].mean().rename(metric)
