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

from sortrl.analysis.memo import by_value

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


@by_value
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
    `random_state=seed`. A sample with fewer than two runs, or undefined (NaN) for
    every run (a score without one maximum), gives NaN; a sample whose values
    are all equal gives the degenerate interval of its statistic.
    `probability_of_improvement` is computed from each resample's counts of
    runs (`_counted_improvement`: the same resamples and, as its U statistic
    is a sum of halves, exactly the same numbers, at a fraction of the cost).
    """
    samples = [np.asarray(s, dtype=float) for s in samples]
    if min(s.shape[-1] for s in samples) < 2 or any(np.isnan(s).all() for s in samples):  # nothing to resample
        nan = np.full(samples[0].shape[:-1], math.nan)
        return (nan, nan) if nan.ndim else (math.nan, math.nan)
    if statistic is probability_of_improvement and all(s.ndim == 1 for s in samples):
        low, high = _counted_bootstrap(samples, statistic, seed, confidence, n_resamples)
        return _unwrap(low), _unwrap(high)
    low, high = _percentile_bootstrap(samples, statistic, seed, confidence, n_resamples)
    return _unwrap(low), _unwrap(high)


def _percentile_bootstrap(
    samples: list[np.ndarray],
    statistic: Callable[..., np.ndarray | float],
    seed: int,
    confidence: float,
    n_resamples: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`scipy.stats.bootstrap` as every interval here uses it: percentile method, vectorised, seeded."""
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
    return result.confidence_interval


@by_value
def curve_ci(
    values: np.ndarray, statistic: Callable[..., np.ndarray | float], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`bootstrap_ci([values], statistic, seed)` for a curve `values` `[point run]` (`statistic`: `mean` or `iqm`).

    The same resamples of runs, shared by every point, and the same interval up
    to float rounding (~1e-13; exactly the same for means of 0/1 indicators),
    without building the `[point resample run]` array of resampled values that
    makes `bootstrap_ci` cost memory and time in points x resamples x runs
    (`_counted_bootstrap`). Returns `(low [point], high [point])`, NaN with
    fewer than two runs.
    """
    values = np.asarray(values, dtype=float)
    if values.shape[-1] < 2:
        nan = np.full(values.shape[0], math.nan)
        return nan, nan
    low, high = _counted_bootstrap([values], statistic, seed, CONFIDENCE, N_RESAMPLES)
    return np.asarray(low, dtype=float), np.asarray(high, dtype=float)


def _counted_bootstrap(
    samples: list[np.ndarray],
    statistic: Callable[..., np.ndarray | float],
    seed: int,
    confidence: float,
    n_resamples: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`scipy.stats.bootstrap` of the run *indices* of each sample, the statistic computed from counts.

    scipy draws the resamples exactly as it does for the samples' values (same
    generator, same draws), so the resamples are those of `bootstrap_ci`. Each
    resample is summarised by how often it drew each run (`_counts`, `[resample
    run]`), and `_COUNTED[statistic]` computes the statistic of every resample
    from the counts, never materialising the resampled values.
    """
    counted = _COUNTED[statistic]
    sizes = [s.shape[-1] for s in samples]

    def from_indices(*indices: np.ndarray, axis: int = -1) -> np.ndarray:  # [resample run] each -> [... resample]
        return counted(*samples, *(_counts(index, n) for index, n in zip(indices, sizes)))

    return _percentile_bootstrap([np.arange(n) for n in sizes], from_indices, seed, confidence, n_resamples)


def _counts(index: np.ndarray, n: int) -> np.ndarray:
    """How often each of `n` runs appears in each resample: `[resample draw]` run indices -> `[resample run]` counts."""
    flat = np.array(index, dtype=np.int64).reshape(-1, n)  # a copy, numbered in place below
    flat += n * np.arange(flat.shape[0])[:, None]  # resample b's runs become b*n .. b*n + n-1
    return np.bincount(flat.ravel(), minlength=flat.size).astype(np.int32).reshape(flat.shape)


def _counted_mean(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of each resample at each point: sum_r counts[b, r] * values[p, r] / n -> `[point resample]`."""
    return values @ counts.T.astype(float) / values.shape[-1]


def _counted_iqm(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`iqm` of each resample at each point, from the counts -> `[point resample]`.

    Sort a point's values, x_0 <= ... <= x_{n-1}, and let C_j be how many draws
    of a resample are among the j+1 smallest values (the cumulative count in
    sorted order). `scipy.stats.trim_mean(., 0.25)` averages the sorted draws at
    positions lo..hi-1 (lo = int(n/4), hi = n - lo); by summation by parts their
    sum is sum_j (clip(C_j, lo, hi) - lo) * (x_j - x_{j+1}), with x_n = 0. Only
    the j where x changes (x_j != x_{j+1}) contribute, so runs of tied values
    are added up first (`_group_counts`).
    """
    n = values.shape[-1]
    lo = int(0.25 * n)
    hi = n - lo
    out = np.empty((values.shape[0], counts.shape[0]))
    for p, row in enumerate(values):
        distinct, group = np.unique(row, return_inverse=True)
        cumulative = np.cumsum(_group_counts(counts, group, len(distinct)), axis=1)  # [resample distinct value]
        np.clip(cumulative, lo, hi, out=cumulative)
        out[p] = ((cumulative - lo) @ (distinct - np.append(distinct[1:], 0.0))) / (hi - lo)
    return out


def _counted_improvement(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """`probability_of_improvement` of each pair of resamples, from their counts -> `[resample]`.

    U = sum_i sum_j cx_i cy_j ([x_i > y_j] + [x_i = y_j] / 2), with the runs of
    equal values added up first: per distinct value v, (draws of x at v) x
    (draws of y below v + half the draws of y at v). Every term is a multiple
    of 1/2 far below 2^53, so U is exact, as the rank sums of
    `scipy.stats.mannwhitneyu` are: the same numbers to the last bit.
    """
    distinct, group = np.unique(np.concatenate([x, y]), return_inverse=True)
    gx = _group_counts(cx, group[: len(x)], len(distinct))
    gy = _group_counts(cy, group[len(x) :], len(distinct))
    below = np.cumsum(gy, axis=1) - gy
    return (gx * (below + 0.5 * gy)).sum(axis=1) / (len(x) * len(y))


def _group_counts(counts: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """Counts `[resample run]` added up by the runs' groups (`group[run]` in 0..groups-1) -> `[resample group]`."""
    order = np.argsort(group, kind="stable")
    ordered = group[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    out = np.zeros((counts.shape[0], groups), dtype=np.int64)
    out[:, ordered[starts]] = np.add.reduceat(np.take(counts, order, axis=1), starts, axis=1)
    return out


_COUNTED: dict[Callable[..., np.ndarray | float], Callable[..., np.ndarray]] = {
    mean: _counted_mean,
    iqm: _counted_iqm,
    probability_of_improvement: _counted_improvement,
}
"""Statistics computed from resample counts: the statistic -> (*samples, *counts) -> `[... resample]`."""


def _unwrap(value: np.ndarray | float) -> np.ndarray | float:
    array = np.asarray(value, dtype=float)
    return float(array) if array.ndim == 0 else array


def performance_profile(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Fraction of runs whose score is strictly above tau, for each tau: the run-score distribution.

    rliable's convention (`rliable.library.run_score_deviation`:
    `np.mean(scores > tau)`; Agarwal et al. 2021, section 4.2): a run counts at
    tau when its score is strictly above tau, so the profile at the lowest
    possible score is the share of runs that rose above it. `scores`: `[run]`; `taus`: thresholds `[tau]`. Returns `[tau]`,
    non-increasing in tau.
    """
    return _above(scores, taus).mean(axis=-1)


def performance_profile_ci(scores: np.ndarray, taus: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap CI `(low [tau], high [tau])` of `performance_profile(scores, taus)`."""
    return curve_ci(_above(scores, taus), mean, seed)


def _above(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Indicator `[tau run]`: 1 where the run's score is > tau."""
    scores, taus = np.asarray(scores, dtype=float), np.asarray(taus, dtype=float)
    return (scores[None, :] > taus[:, None]).astype(float)


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
    rows = runs.loc[runs[metric].notna(), [by, "epoch", metric]]
    rows = rows.iloc[np.lexsort((rows["epoch"].to_numpy(), rows[by].to_numpy()))]  # by run, then epoch (stable)
    count = rows.groupby(by, sort=True)["epoch"].transform("size")
    rank_from_end = rows.groupby(by, sort=True).cumcount(ascending=False)
    keep = np.maximum(1, np.ceil(fraction * count - 1e-9))  # -1e-9: 0.1 * 30 is 3.0000000000000004
    return rows[rank_from_end < keep].groupby(by, sort=True)[metric].mean().rename(metric)
