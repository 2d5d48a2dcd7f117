"""Paired comparisons and verdicts: effects, tests, Holm's correction and the seeds a test would need.

Pure functions of score arrays, one value per seed (a seed is the same initial
model and data stream in every configuration, so comparisons are paired by
seed). The conventions (DESIGN.md, "Statistics the reports follow"):

- the effect of A over B is the mean of the per-seed differences A - B, with a
  percentile-bootstrap CI over seeds (`paired_effect`);
- its test is the Wilcoxon signed-rank test of the differences (zeros split,
  `scipy.stats.wilcoxon`), or McNemar's exact test for 0/1 outcomes such as
  solved / not solved (`mcnemar_p`);
- p-values are corrected with Holm's method over their family (`holm`, via
  statsmodels);
- a verdict (`verdict`) is `supported`, `contradicted`, `no effect` (the CI
  lies inside the declared equivalence margin) or `inconclusive`, for which
  `seeds_needed` says how many seeds a paired test would need at 80% power.

Bootstraps use a fixed seed, so every number is reproducible bit for bit.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
from scipy import stats

from sortrl.analysis.stats import bootstrap_ci, mean

ALPHA = 0.05
"""Family-wise error rate of every corrected family of tests."""

CONFIDENCE = 0.95
"""Level of every confidence interval."""

N_RESAMPLES = 20_000
"""Bootstrap resamples per interval: enough that the ends of a CI of 128 seeds move by less than 0.005 between
bootstrap seeds (measured in `tests/test_verdicts.py`)."""

POWER = 0.8
"""Power at which `seeds_needed` sizes a paired test."""

WILCOXON_EFFICIENCY = 3 / math.pi
"""Asymptotic relative efficiency of the Wilcoxon signed-rank test to the paired t-test for normal data (0.955)."""

Prediction = Literal[">", "<", "="]
"""What a claim predicts of A - B: A higher, A lower, or no difference (within the margin)."""

VERDICTS = ("supported", "contradicted", "no effect", "inconclusive")


class Interval(NamedTuple):
    """A point estimate with its CI; `degenerate` when every resampled value is the same (all seeds equal)."""

    point: float
    low: float
    high: float
    n: int

    @property
    def degenerate(self) -> bool:
        return self.n > 0 and self.low == self.high

    def within(self, margin: float) -> bool:
        """True when the whole CI lies inside [-margin, margin]."""
        return -margin <= self.low and self.high <= margin


def bootstrap_mean(values: np.ndarray, seed: int = 0, n_resamples: int = N_RESAMPLES) -> Interval:
    """Mean of `values` [seed] with its percentile-bootstrap CI (`sortrl.analysis.stats.bootstrap_ci`); NaN CI below 2 values."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if len(values) > 1 and np.all(values == values[0]):  # scipy warns on a degenerate sample; its CI is the value
        return Interval(float(values[0]), float(values[0]), float(values[0]), len(values))
    low, high = bootstrap_ci([values], mean, seed, CONFIDENCE, n_resamples)
    return Interval(float(values.mean()), float(low), float(high), len(values))


def paired_effect(a: np.ndarray, b: np.ndarray, seed: int = 0) -> Interval:
    """Mean of the per-seed differences a - b with its bootstrap CI over seeds; `a`, `b` aligned by seed."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must align by seed, got {a.shape} and {b.shape}")
    return bootstrap_mean(a - b, seed)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; 1.0 when every difference is 0.

    Zero differences are split between the signs (`zero_method="zsplit"`), so
    seeds on which both configurations end equal count as evidence of no
    difference instead of being dropped. NaN with fewer than 2 differences.
    """
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="zsplit", alternative="two-sided").pvalue)


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar test of paired 0/1 outcomes: a binomial test of the discordant seeds at 1/2.

    1.0 when no seed differs.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels `multipletests(method="holm")`); NaN entries stay NaN and are not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, math.nan)
    known = ~np.isnan(p)
    if known.any():
        out[known] = multipletests(p[known], alpha=ALPHA, method="holm")[1]
    return out


def verdict(effect: Interval, p_adjusted: float, predicts: Prediction, margin: float) -> str:
    """`supported`, `contradicted`, `no effect` or `inconclusive` for an effect of A - B and its corrected p-value.

    For a directional prediction (`>`: A higher; `<`: A lower): significant
    (p_adjusted < ALPHA) in the predicted direction is `supported`, in the other
    `contradicted`; otherwise a CI inside [-margin, margin] is `no effect`, and
    anything else `inconclusive`. For `=` (no difference predicted): a CI inside
    the margin is `supported`, a significant effect whose CI leaves the margin
    `contradicted`, anything else `inconclusive`.
    """
    if math.isnan(effect.point) or math.isnan(p_adjusted):
        return "inconclusive"
    significant = p_adjusted < ALPHA
    inside = not math.isnan(effect.low) and effect.within(margin)
    if predicts == "=":
        if inside:
            return "supported"
        return "contradicted" if significant else "inconclusive"
    if significant and effect.point != 0:
        agrees = (effect.point > 0) == (predicts == ">")
        return "supported" if agrees else "contradicted"
    return "no effect" if inside else "inconclusive"


def seeds_needed(differences: np.ndarray, effect: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Seeds a paired Wilcoxon test would need to detect a mean difference `effect` at `power` (two-sided).

    The paired t-test's sample size (statsmodels `TTestPower`) for the
    standardised effect d = effect / sd(differences), divided by the Wilcoxon
    test's asymptotic efficiency 3/pi. None when the differences have no spread
    or `effect` is 0 (no finite number of seeds).
    """
    from statsmodels.stats.power import TTestPower

    d = np.asarray(differences, dtype=float)
    spread = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
    if not (spread > 0) or effect == 0 or math.isnan(effect):
        return None
    n = TTestPower().solve_power(effect_size=abs(effect) / spread, alpha=alpha, power=power, alternative="two-sided")
    return math.ceil(float(n) / WILCOXON_EFFICIENCY)


def wilson(successes: int, n: int) -> Interval:
    """A proportion with its 95% Wilson score interval (`scipy.stats.binomtest(...).proportion_ci`)."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high), n)


def chance_normalised(score: np.ndarray | float, chance: float, best: float) -> np.ndarray | float:
    """(score - chance) / (best - chance): 0 for a uniform random policy, 1 for the best possible score."""
    return (np.asarray(score, dtype=float) - chance) / (best - chance)
