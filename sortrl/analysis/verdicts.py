"""Paired comparisons and verdicts: effects, tests, Holm's correction and the seeds a test would need.

Pure functions of score arrays, one value per seed (a seed is the same initial
model and data stream in every configuration, so comparisons are paired by
seed). The conventions (DESIGN.md, "Statistics the reports follow"):

- the effect of A over B is the mean of the per-seed differences A - B, with a
  percentile-bootstrap CI over seeds (`paired_effect`), or an exact interval
  for 0/1 outcomes (`paired_binary_interval`) and for differences that are all
  equal (`equal_share_bound`): never a degenerate `[x, x]`;
- the test matches the effect (a mean): a sign-flip permutation test of the
  per-seed differences (`signflip_p`), or McNemar's exact test for 0/1
  outcomes such as solved / not solved (`mcnemar_p`); the report's own
  comparisons (`sortrl.analysis.findings`) still use Wilcoxon (`wilcoxon_p`). A sign-flip
  p-value is exact (every sign pattern) up to 17 seeds and drawn from
  `SIGNFLIP_RESAMPLES` patterns above, so it has a floor (`signflip_floor`) and a
  Monte Carlo error, and the ledger prints it no more precisely than that;
- each prediction is tested by the hypothesis it makes (`hypothesis_p`): a
  difference two-sided, "no difference" by TOST against the margin, "not
  lower" / "not higher" by a one-sided non-inferiority test against it;
- p-values are corrected with Holm's method over their family (`holm`, via
  statsmodels); the contrary test of a verdict (equivalence for a directional
  prediction, an effect beyond the margin for the others) is Bonferroni-corrected
  over the same family;
- a verdict (`verdict`) is `supported`, `contradicted`, `no effect` or
  `inconclusive`, for which `seeds_needed` says how many seeds the test would
  need at 80% power at the corrected level; a claim tested more than once
  gets one claim-level verdict (`claim_verdict`).

Bootstraps use a fixed seed, so every number is reproducible bit for bit.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Literal, NamedTuple

import numpy as np
from scipy import stats

from sortrl.analysis.memo import by_value
from sortrl.analysis.stats import bootstrap_ci, mean

ALPHA = 0.05
"""Family-wise error rate of every corrected family of tests."""

CONFIDENCE = 0.95
"""Level of every confidence interval."""

N_RESAMPLES = 20_000
"""Bootstrap resamples per interval: enough that the ends of a CI of 128 seeds move by less than 0.005 between
bootstrap seeds (measured in `tests/test_verdicts.py`)."""

SIGNFLIP_RESAMPLES = 199_999
"""Random sign patterns of a sign-flip test (`signflip_p`) too many seeds to enumerate (n > 17): its smallest p-value
is 1 / 200,000 (two-sided 1e-5), so Holm over a family of k tests can reach 1e-5 k, below ALPHA / 10 for every
family up to 500 tests (CLAIMS.md states the floor its family reaches), and the Monte Carlo error of a p
of 0.05 is 0.0005."""

POWER = 0.8
"""Power at which `seeds_needed` sizes a paired test."""

Prediction = Literal[">", "<", "=", ">=", "<="]
"""What a claim predicts of A - B: A higher, A lower, no difference (within the margin), A not lower (non-inferior:
above -margin) or A not higher (below +margin)."""

VERDICTS = ("supported", "contradicted", "no effect", "inconclusive")

CLAIM_VERDICTS = ("supported", "supported in part", "mixed", "contradicted", "not supported")
"""A claim's verdict over all its tests (`claim_verdict`)."""


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


@by_value
def signflip_p(
    differences: np.ndarray,
    alternative: Literal["two-sided", "greater", "less"] = "two-sided",
    null: float = 0.0,
    seed: int = 0,
    n_resamples: int = SIGNFLIP_RESAMPLES,
) -> float:
    """Sign-flip permutation p-value of the mean of paired differences against `null`.

    H0: the per-seed differences are symmetric about `null` (their mean is `null`);
    `greater`: the alternative is a mean above `null`. The null distribution of
    the sum of `differences - null` is that of the sum with each sign flipped:

    - exact, over all 2^n sign patterns, when 2^n <= `n_resamples` + 1 (n <= 17
      seeds by default): p = (patterns at least as extreme) / 2^n, e.g. 1/256 for
      8 positive differences (`greater`), 2/256 two-sided;
    - else Monte Carlo, over `n_resamples` random patterns (seeded, the same for
      every test of n seeds): p = (patterns at least as extreme + 1) /
      (`n_resamples` + 1) (the observed pattern counts, as in
      `scipy.stats.permutation_test`, so p is a valid p-value), never below
      1 / (`n_resamples` + 1) (`signflip_floor`).

    Two-sided: twice the smaller one-sided p (at most 1), as scipy. Sums equal
    to the observed one up to float rounding (1e-12 of sum |d|) count as at least
    as extreme. 1.0 when every difference equals `null`; NaN with fewer than 2
    differences.
    """
    d = np.asarray(differences, dtype=float) - null
    if len(d) < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    sums, exact = _flipped_sums(d, n_resamples, seed)
    observed, tol = float(d.sum()), 1e-12 * float(np.abs(d).sum())
    extra = 0 if exact else 1  # the observed pattern, for a Monte Carlo p-value
    greater = (int(np.count_nonzero(sums >= observed - tol)) + extra) / (len(sums) + extra)
    less = (int(np.count_nonzero(sums <= observed + tol)) + extra) / (len(sums) + extra)
    if alternative == "greater":
        return greater
    if alternative == "less":
        return less
    return min(1.0, 2 * min(greater, less))


def signflip_exact(n: int, n_resamples: int = SIGNFLIP_RESAMPLES) -> bool:
    """Whether `signflip_p` of `n` differences enumerates every sign pattern (exact) rather than drawing them."""
    return n < 63 and 2**n <= n_resamples + 1


def signflip_floor(
    n: int, alternative: Literal["two-sided", "greater", "less"] = "two-sided", n_resamples: int = SIGNFLIP_RESAMPLES
) -> float:
    """The smallest p-value `signflip_p` can give for `n` differences: 1 / 2^n exact, 1 / (`n_resamples` + 1) drawn;
    twice that two-sided. Holm over k tests cannot go below k x this floor."""
    one = 0.5**n if signflip_exact(n, n_resamples) else 1 / (n_resamples + 1)
    return min(1.0, 2 * one) if alternative == "two-sided" else one


def _flipped_sums(d: np.ndarray, n_resamples: int, seed: int) -> tuple[np.ndarray, bool]:
    """The sum of `d` under each sign pattern (`[pattern]`) and whether the patterns are all 2^n of them.

    A pattern is a row of bytes, bit k of byte j the sign of `d[8j + k]` (1: +). Per byte position j a table of
    the 256 partial sums of `d[8j : 8j + 8]` is built once, so a pattern's sum is n / 8 table look-ups.
    """
    n = len(d)
    exact = signflip_exact(n, n_resamples)
    patterns = _exact_patterns(n) if exact else _random_patterns(n, n_resamples, seed)
    padded = np.zeros(8 * patterns.shape[1])
    padded[:n] = d
    tables = _BYTE_SIGNS @ padded.reshape(-1, 8).T  # [256 byte value, byte position]
    sums = np.zeros(len(patterns))
    for j in range(patterns.shape[1]):
        sums += tables[patterns[:, j], j]
    return sums, exact


_BYTE_SIGNS = np.where((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1, 1.0, -1.0)
"""`[256, 8]`: the sign (+1 / -1) bit k of a byte value gives to the difference it covers."""


@functools.lru_cache(maxsize=4)
def _exact_patterns(n: int) -> np.ndarray:
    """Every one of the 2^n sign patterns of `n` differences, as `[pattern byte]` uint8 (read-only)."""
    count = 2**n
    out = np.arange(count, dtype="<u8").view(np.uint8).reshape(count, 8)[:, : (n + 7) // 8].copy()
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=4)
def _random_patterns(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """`n_resamples` random sign patterns of `n` differences from `numpy.random.default_rng(seed)`, as `[pattern
    byte]` uint8 (each bit +/- with probability 1/2, independently; read-only; the bits past `n` are unused)."""
    out = np.random.default_rng(seed).integers(0, 256, size=(n_resamples, (n + 7) // 8), dtype=np.uint8)
    out.setflags(write=False)
    return out


def hypothesis_p(
    differences: np.ndarray, predicts: Prediction, margin: float, seed: int = 0, binary: tuple | None = None
) -> float:
    """The p-value of the test of what `predicts` says of the mean of paired differences (H1: the prediction).

    | predicts | test | its contrary (`contrary_p`) |
    | --- | --- | --- |
    | `>`, `<` | two-sided difference from 0 | equivalence: TOST against +-margin |
    | `=` | equivalence: TOST, the larger one-sided p | beyond the margin: 2 x the smaller one-sided p |
    | `>=` | non-inferiority: mean > -margin (one-sided) | inferiority: mean < -margin |
    | `<=` | mean < +margin (one-sided) | mean > +margin |

    Every one-sided test is `signflip_p` of the differences shifted by the
    margin (TOST: Schuirmann 1987). `binary`: the two 0/1 samples `(a, b)` of
    a difference, tested with McNemar's exact test (`mcnemar_p`) instead of the
    sign flip; margin tests of 0/1 outcomes stay sign flips of the differences
    (which are -1, 0 or 1). `ValueError` for an unknown `predicts`.
    """
    if predicts in (">", "<"):
        return mcnemar_p(*binary) if binary is not None else signflip_p(differences, "two-sided", 0.0, seed)
    return _margin_p(differences, predicts, margin, seed, contrary=False)


def hypothesis_resolution(n: int, predicts: Prediction, binary: bool = False) -> tuple[float, int]:
    """How finely `hypothesis_p` of `n` differences is known: `(floor, resamples)`.

    `floor`: the smallest p-value its test can give (`signflip_floor`: two-sided for `>` and `<`, one-sided for the
    margin tests; 0 for McNemar's exact test of 0/1 outcomes). `resamples`: the random sign patterns it drew, 0 when
    the p-value is exact (McNemar, or every sign pattern enumerated); a drawn p-value has a Monte Carlo standard error
    of sqrt(p (1 - p) / resamples).
    """
    if predicts in (">", "<") and binary:
        return 0.0, 0
    alternative = "two-sided" if predicts in (">", "<") else "greater"
    resamples = 0 if signflip_exact(n) else SIGNFLIP_RESAMPLES
    return signflip_floor(n, alternative), resamples  # type: ignore[arg-type]


def contrary_p(differences: np.ndarray, predicts: Prediction, margin: float, seed: int = 0) -> float:
    """The p-value of the contrary of `predicts` (H1: the contrary; see `hypothesis_p`'s table)."""
    if predicts in (">", "<"):
        return _margin_p(differences, "=", margin, seed, contrary=False)
    return _margin_p(differences, predicts, margin, seed, contrary=True)


def _margin_p(differences: np.ndarray, predicts: str, margin: float, seed: int, contrary: bool) -> float:
    def one(alternative: str, null: float) -> float:
        return signflip_p(differences, alternative, null, seed)  # type: ignore[arg-type]

    if predicts == "=":
        if contrary:
            return min(1.0, 2 * min(one("greater", margin), one("less", -margin)))
        return max(one("greater", -margin), one("less", margin))
    if predicts == ">=":
        return one("less", -margin) if contrary else one("greater", -margin)
    if predicts == "<=":
        return one("greater", margin) if contrary else one("less", margin)
    raise ValueError(f"predicts: unknown value {predicts!r}; valid choices: >, <, =, >=, <=")


def verdict(effect: Interval, p_adjusted: float, p_contrary_adjusted: float, predicts: Prediction) -> str:
    """`supported`, `contradicted`, `no effect` or `inconclusive` for an effect of A - B from its corrected tests.

    `p_adjusted`: the prediction's test (`hypothesis_p`), Holm-corrected;
    `p_contrary_adjusted`: its contrary test, corrected over the same family.
    For a directional prediction (`>`, `<`): a significant difference in the
    predicted direction is `supported`, in the other `contradicted`; a
    significant equivalence (TOST within the margin) is `no effect`. For `=`,
    `>=`, `<=`: a significant test of the prediction is `supported`; a
    significant contrary (the effect wholly beyond the margin on the wrong
    side) is `contradicted`. Anything else is `inconclusive`.
    """
    if math.isnan(effect.point) or math.isnan(p_adjusted):
        return "inconclusive"
    significant = p_adjusted < ALPHA
    contrary = not math.isnan(p_contrary_adjusted) and p_contrary_adjusted < ALPHA
    if predicts in (">", "<"):
        if significant and effect.point != 0:
            agrees = (effect.point > 0) == (predicts == ">")
            return "supported" if agrees else "contradicted"
        return "no effect" if contrary else "inconclusive"
    if significant:
        return "supported"
    return "contradicted" if contrary else "inconclusive"


def claim_verdict(verdicts: list[str]) -> str:
    """One verdict for a claim from its tests' verdicts (`CLAIM_VERDICTS`).

    `supported`: every test supports it; `supported in part`: some do and none
    contradicts it; `mixed`: some support and some contradict it;
    `contradicted`: some contradict it and none supports it; `not supported`:
    none either way (no effect or inconclusive everywhere).
    """
    if not verdicts:
        raise ValueError("a claim-level verdict needs at least one test")
    supported, contradicted = "supported" in verdicts, "contradicted" in verdicts
    if supported and contradicted:
        return "mixed"
    if supported:
        return "supported" if all(v == "supported" for v in verdicts) else "supported in part"
    return "contradicted" if contradicted else "not supported"


def seeds_needed(
    differences: np.ndarray,
    effect: float,
    predicts: Prediction = ">",
    margin: float = 0.0,
    alpha: float = ALPHA,
    power: float = POWER,
    efficiency: float = 1.0,
) -> int | None:
    """Seeds the test of `predicts` would need at `power` and level `alpha`, if the true mean difference were `effect`.

    The spread is the sample sd of `differences` (the sign-flip test of a
    mean is asymptotically the paired t-test). A difference (`>`, `<`): the
    two-sided paired t-test's size (statsmodels `TTestPower`) for d = effect /
    sd. Equivalence (`=`, TOST) and non-inferiority (`>=`, `<=`): the normal
    approximation n = ((z_{1-alpha} + z_power') sd / gap)^2, gap the distance
    from `effect` to the margin the test must clear, z_power' = z_{1-(1-power)/2}
    for TOST at an effect of 0 (both sides count) and z_power otherwise (Chow,
    Shao & Wang 2008, sections 3.2.2-3.2.3). Pass the corrected level as
    `alpha`. `efficiency`: of the test actually run relative to the t-test
    (3 / pi for Wilcoxon's signed-rank test on normal data); n is divided by it. None when the differences have no spread or no number of seeds
    could show it (effect 0 for a difference; effect beyond the margin).
    """
    from statsmodels.stats.power import TTestPower
    from statsmodels.tools import sm_exceptions  # imported first: importing it sets its warnings to "always"

    d = np.asarray(differences, dtype=float)
    spread = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
    if not (spread > 0) or math.isnan(effect):
        return None
    if predicts in (">", "<"):
        if effect == 0:
            return None
        with warnings.catch_warnings():  # its root finder gives up (NaN) when a handful of seeds would do
            warnings.simplefilter("ignore", sm_exceptions.ConvergenceWarning)
            n = TTestPower().solve_power(
                effect_size=abs(effect) / spread, alpha=alpha, power=power, alternative="two-sided"
            )
        if not math.isnan(n):
            return math.ceil(float(n) / efficiency)
        return _normal_size(spread, abs(effect), alpha / 2, 1 - power, efficiency)
    gap = {"=": margin - abs(effect), ">=": effect + margin, "<=": margin - effect}[predicts]
    if gap <= 0:
        return None
    beta = (1 - power) / 2 if predicts == "=" and effect == 0 else 1 - power
    return _normal_size(spread, gap, alpha, beta, efficiency)


def _normal_size(spread: float, gap: float, alpha: float, beta: float, efficiency: float) -> int:
    """((z_{1-alpha} + z_{1-beta}) spread / gap)^2 / efficiency, rounded up, at least 2."""
    n = ((stats.norm.ppf(1 - alpha) + stats.norm.ppf(1 - beta)) * spread / gap) ** 2
    return max(2, math.ceil(float(n) / efficiency))


def paired_binary_interval(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """The difference of two paired proportions, mean(a) - mean(b), with an exact (conservative) interval.

    With n seeds, m discordant (one outcome 1, the other 0) of which k favour
    `a`: the difference is q (2r - 1), q the share of discordant seeds and r
    the share of them that favour `a`. The interval is the range of q (2r - 1)
    over Clopper-Pearson intervals of q (m of n) and r (k of m), each
    at level 1 - (1 - confidence) / 2 (Bonferroni: coverage >= `confidence`).
    With no discordant seed r is unknown and the interval is +-q_high: for 0
    of 128 at 95%, +-0.034. `a`, `b`: 0/1 [seed].
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(a)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    m = only_a + only_b
    level = 1 - (1 - confidence) / 2
    q = stats.binomtest(m, n).proportion_ci(confidence_level=level, method="exact")
    if m == 0:
        low_r, high_r = 0.0, 1.0
    else:
        r = stats.binomtest(only_a, m).proportion_ci(confidence_level=level, method="exact")
        low_r, high_r = r.low, r.high
    corners = [qq * (2 * rr - 1) for qq in (q.low, q.high) for rr in (low_r, high_r)]
    return Interval((only_a - only_b) / n, float(min(corners)), float(max(corners)), n)


def share_level_p(successes: int, n: int, predicts: Prediction, against: float, margin: float, contrary: bool = False):
    """Exact binomial p-value (`scipy.stats.binomtest`) of what `predicts` says of a share of `n` 0/1 outcomes against
    the constant `against` (a level claim on solved seeds), H1 the prediction (`contrary`: its contrary), as
    `hypothesis_p`'s table says for a mean: `>` / `<` two-sided against `against`; `=` TOST within +-`margin`
    (contrary: beyond it, 2 x the smaller one-sided p); `>=` above `against - margin` (contrary: below it); `<=`
    below `against + margin` (contrary: above it). A one-sided null outside [0, 1] cannot hold: its p is 0 (or 1
    for its contrary's side). `ValueError` for an unknown `predicts`."""

    def one(alternative: str, null: float) -> float:
        if not 0 <= null <= 1:  # H1 "share > -0.05" holds for every share: its null is impossible
            return 0.0 if (alternative == "greater") == (null < 0) else 1.0
        return float(stats.binomtest(successes, n, null, alternative=alternative).pvalue)

    low, high = against - margin, against + margin
    if predicts in (">", "<"):
        if contrary:
            return max(one("less", high), one("greater", low))
        return float(stats.binomtest(successes, n, min(1.0, max(0.0, against))).pvalue)
    tests = {
        "=": (lambda: max(one("less", high), one("greater", low)),
              lambda: min(1.0, 2 * min(one("greater", high), one("less", low)))),
        ">=": (lambda: one("greater", low), lambda: one("less", low)),
        "<=": (lambda: one("less", high), lambda: one("greater", high)),
    }  # fmt: skip
    if predicts not in tests:
        raise ValueError(f"predicts: unknown value {predicts!r}; valid choices: >, <, =, >=, <=")
    return tests[predicts][1 if contrary else 0]()


def share_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """A share of `n` 0/1 outcomes with its exact (Clopper-Pearson) interval: never degenerate, [0, 0.028] for 0 of
    128 at 95%."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return Interval(successes / n, float(ci.low), float(ci.high), n)


def equal_share_bound(n: int, confidence: float = CONFIDENCE) -> float:
    """Upper `confidence` bound on the share of seeds that would differ when all `n` seeds gave the same value.

    Clopper-Pearson for 0 events of n, two-sided: 1 - ((1 - confidence) / 2)^(1/n); 0.028 for 128 seeds at 95%.
    """
    return float(stats.binomtest(0, n).proportion_ci(confidence_level=confidence, method="exact").high)


def wilson(successes: int, n: int) -> Interval:
    """A proportion with its 95% Wilson score interval (`scipy.stats.binomtest(...).proportion_ci`)."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high), n)


def chance_normalised(score: np.ndarray | float, chance: float, best: float) -> np.ndarray | float:
    """(score - chance) / (best - chance): 0 for a uniform random policy, 1 for the best possible score."""
    return (np.asarray(score, dtype=float) - chance) / (best - chance)
