"""The claims ledger: each declared claim tested on the stored runs, paired by seed, Holm-corrected, with a verdict.

A grid file declares the claims it tests (`sortrl.study.grid.Claim`, `[[claim]]`
tables); `tests(exp)` computes every test of every claim of one experiment
(one test per value of the claim's `across` axis, e.g. per regime) from its
per-run scores, and `ledger(tests)` corrects all p-values of the whole ledger
together (Holm) and gives each test its verdict (`sortrl.analysis.verdicts`). Pure:
no files, no figures; `sortrl.render.claims_md` renders the results.

Every kind gives one effect per seed (seeds that finished every configuration
involved), averaged over the seeds, tested by the hypothesis its prediction
makes (`test_kind`; `sortrl.analysis.verdicts.hypothesis_p`):

| kind | effect per seed |
| --- | --- |
| `pair` | score(new) - score(old) |
| `each` | as `pair`, for every value of `axis` against `old`'s |
| `trend` | as `pair`, for each step between neighbouring values of `axis` (in file order): a trend is its steps |
| `interaction` | (new - old) at `within`'s first value minus at its second |
| `magnitude` | abs(new - old) at `within`'s first value minus at its second (or minus abs(versus.new - versus.old)): each contrast oriented by the sign of its mean |
| `within-run` | Spearman rho over a run's epochs between the curves `x` and `metric`, averaged over the test's configurations |

The CI is a percentile bootstrap over seeds, or exact for 0/1 scores.

Floor effects (`at_bound`, `bound_flag`, `claim_bound_flags`): a verdict of no
difference is flagged *at the floor* (or *at the ceiling*) when every
configuration it compares has a mean within the claim's margin of the same
bound of the metric (`sortrl.analysis.scores.bounds`: 0 for a share, a spread,
an entropy, a length or solved seeds; 1 for a share; chance for the final
score). Such sides cannot differ by more than the margin whatever the
configurations do, so "no effect", a supported equivalence or non-inferiority,
or a claim "not supported" there cannot tell an absent effect from one the
bound hides (a policy stuck in the trap, one that stopped moving, an exact
rate near 0). The rule reads only what the report has (the sides' means, the
declared margin, the metric's declared bounds); the verdict stands, flagged,
and a claim-level verdict is flagged when every one of its tests sits at the
same bound.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from sortrl.analysis.experiment import SEED, Experiment  # one bootstrap seed for the report and the ledger
from sortrl.analysis.scores import DERIVED, SCORES, bounds
from sortrl.analysis.verdicts import (
    ALPHA,
    Interval,
    bootstrap_mean,
    claim_verdict,
    contrary_p,
    holm,
    hypothesis_p,
    paired_binary_interval,
    paired_effect,
    seeds_needed,
    share_interval,
    share_level_p,
    verdict,
    wilson,
)
from sortrl.engine.metrics import METRICS as CURVE_METRICS
from sortrl.engine.paired import Gradients, paired_gradients
from sortrl.engine.registry import ConfigError
from sortrl.study.grid import SHORT_NAMES, Claim, Configuration, Grid, value_label, with_seed

MONOTONE = "monotone (rank correlation)"
"""The `case` of a trend's test as a whole (its other tests are its steps)."""

TREND_MARGIN = 0.1
"""Margin of a trend's test as a whole, in Spearman rho units: |rho| < 0.1 is negligible (Cohen 1988's 'small')."""

BINARY = ("solved", "stuck")
"""Scores that are 0/1 per run: tested with McNemar's exact test, summarised with Wilson intervals."""


@dataclass(frozen=True)
class Side:
    """One configuration a test compares: its label and its score over the paired seeds."""

    label: str
    mean: float
    interval: Interval
    """The score's mean with its CI over seeds (Wilson for a 0/1 score)."""
    uniform: int = 0
    """How many of its paired seeds' runs end near a uniform policy: they learned nothing."""


@dataclass(frozen=True)
class Test:
    """One test of a claim: its effect, p-values, verdict and what it compared."""

    claim: Claim
    experiment: str
    where: str
    """The test's setting on the claim's `across` axis, e.g. `regime=explore` (empty without one)."""
    case: str
    """For an `each` claim: the value of its axis this test compares with `old` (`kl=0.1`); else empty."""
    sides: tuple[Side, ...]
    """The configurations compared (new then old; or along the axis for a trend)."""
    n: int
    """Seeds paired (finished in every configuration of the test); configurations for a correlation."""
    effect: Interval
    p: float
    """p-value of the test of the claim's prediction (`hypothesis_p`), uncorrected."""
    p_contrary: float = math.nan
    """p-value of its contrary (equivalence for a difference; beyond the margin for the others), uncorrected."""
    differences: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))
    """The per-seed effects (per configuration pair for a correlation: empty)."""
    seeds: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0, int))
    seed_effect: float = math.nan
    """The effect on the claim's own `seed` alone (what the source's single run showed), NaN without one."""
    p_adjusted: float = math.nan
    """Holm-corrected over the ledger (`ledger`)."""
    p_contrary_adjusted: float = math.nan
    """Bonferroni-corrected over the ledger (`ledger`)."""
    verdict: str = ""
    needed: int | None = None
    """For an inconclusive test: seeds its test would need at 80% power at the corrected level (`ledger`)."""
    needed_for: str = ""
    """The effect `needed` assumes: `implied` (the claim's) or `observed` (this test's)."""
    setting: dict = field(compare=False, default_factory=dict)
    """The `across` axis value of this test as `Grid.select` takes it (`{"regime": "explore"}`)."""
    bound: str = ""
    """`floor` or `ceiling` when every side's mean sits within the claim's margin of that bound of its metric
    (`at_bound`), else empty: a verdict of no difference here could be the bound's, not the configurations'."""
    engines: tuple[str, ...] = ("exact",)
    """The training paths (`RunConfig.engine`) of its experiment's runs."""
    gradient: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))
    """A `gradient` check's per-seed result (`gradient_ulps`): the largest difference between the two sides'
    gradients, in units of float32's eps times the run's largest gradient element; empty for other tests."""
    gradient_tolerance: float = math.nan
    """A `gradient` check's bound in the same units (`gradient_bound`): float32's rounding of its longest sum."""

    @property
    def label(self) -> str:
        """`L1 (regime=explore)`, `G2 (regime=lecture: kl=0.1)`: the claim and where this test of it was made."""
        inside = ": ".join(x for x in (self.where, self.case) if x)
        return f"{self.claim.id}" + (f" ({inside})" if inside else "")


def check_metrics(grid: Grid, path: str | Path) -> None:
    """Every claim of `grid` names known scores (`metric`, `x`: `SCORES` or `DERIVED`; a `within-run` claim's are
    per-epoch curves, `sortrl.engine.metrics.METRICS`); `ConfigError` otherwise, naming the file `path`, the claim,
    the field and the valid choices."""
    for claim in grid.claims:
        metrics = list(CURVE_METRICS) if claim.kind == "within-run" else [*SCORES, *DERIVED]
        for key in ("metric", "x"):
            value = getattr(claim, key)
            if value is not None and value not in metrics:
                raise ConfigError(
                    f"{path}: [[claim]] {claim.id}: {key}: unknown value {value!r}; valid choices: {', '.join(metrics)}"
                )


def test_kind(claim: Claim) -> str:
    """What a claim's tests test: `implementation check` (a claim that holds by construction), `difference`,
    `equivalence`, `non-inferiority`, `trend`, `magnitude`, `level (one sample)` or `within-run correlation`."""
    if claim.identity:
        return "implementation check"
    if claim.kind in ("trend", "magnitude"):
        return claim.kind
    if claim.kind == "level":
        return "level (one sample)"
    if claim.kind == "within-run":
        return "within-run correlation"
    return {"same": "equivalence", "not lower": "non-inferiority", "not higher": "non-inferiority"}.get(
        claim.predicts, "difference"
    )


def tests(exp: Experiment) -> list[Test]:
    """Every test of every claim of `exp`, uncorrected (`p_adjusted` and `verdict` unset).

    The contrary's p-value is computed here wherever the verdict will need it whatever the correction (`_with_contrary`
    computes the rest, in `ledger`): here it runs in the report's worker processes, one experiment each, and is
    cached with its experiment.
    """
    out = []
    for claim in exp.grid.claims:
        for setting in exp.grid.tests(claim):
            where = ", ".join(f"{k}={v}" for k, v in setting.items())
            out += [replace(t, setting=setting) for t in _tests(exp, claim, setting, where)]
    _warn_undefined(exp, out)
    out = [_with_gradients(exp, t) if t.claim.check == "gradient" else t for t in out]
    return [_with_contrary(t, t.p) if not t.claim.identity else t for t in out]  # corrected p >= p


EPS32 = float(np.finfo(np.float32).eps)
"""float32's machine epsilon, 2^-23: the gap between 1 and the next float32 (twice the unit roundoff u)."""


def _with_gradients(exp: Experiment, test: Test) -> Test:
    """`test` (a `gradient` check) with both sides' gradients compared on each of its seeds
    (`sortrl.engine.paired.paired_gradients`: the old side's parameters and batch at its first epochs)."""
    new, old = (exp.grid.select({**side, **test.setting}) for side in (test.claim.new, test.claim.old))
    if len(test.seeds) == 0:
        return test

    def runs(c: Configuration) -> list:
        fields = c.config.to_dict()
        return [with_seed(c.config, int(s), fields) for s in test.seeds]

    found = paired_gradients(runs(new), runs(old))
    return replace(test, gradient=gradient_ulps(found), gradient_tolerance=gradient_bound(found.terms))


def gradient_ulps(found: Gradients) -> np.ndarray:
    """Per run: max |g_new - g_old| / (eps * max |g_old|) (float32's eps, `EPS32`) -> `[run]`; 0 where the gradients
    are equal, inf where they differ but the old side's gradient is 0 (no rounding explains that)."""
    difference, scale = found.difference, found.scale
    with np.errstate(divide="ignore", invalid="ignore"):
        ulps = difference / (EPS32 * scale)
    return np.where(difference == 0, 0.0, np.where(scale > 0, ulps, math.inf))


def gradient_bound(terms: int) -> float:
    """The largest difference float rounding explains between two float32 computations of one gradient that sum its
    `terms` contributions in different orders, in units of eps x the gradient's largest element: `terms`.

    Recursive summation of n float32 terms errs by at most gamma_(n-1) sum|x_i| ~ (n - 1) u sum|x_i|, u = eps / 2
    (Higham 2002, Accuracy and Stability of Numerical Algorithms, section 4.2); two orders differ by at most twice
    that, n eps, taken here normwise against the run's largest gradient element. Not a tuned number: a gradient
    that differs by more than this is a different gradient."""
    return float(terms)


class UndefinedScoreWarning(UserWarning):
    """A claim's score is undefined (NaN) for every stored run of a configuration it compares: no seed to test."""


def _warn_undefined(exp: Experiment, found: list[Test]) -> None:
    """One warning per claim whose tests have no seed although their configurations have runs: the score is NaN
    there (e.g. a chance-normalised score without one maximum), not 'no runs yet'."""
    for claim_id in dict.fromkeys(t.claim.id for t in found if t.n == 0):
        test = next(t for t in found if t.claim.id == claim_id and t.n == 0)
        metric = test.claim.metric
        for side in test.sides:
            runs = exp.final[exp.final["configuration"] == side.label]
            if len(runs) and (metric not in runs or runs[metric].isna().all()):
                warnings.warn(
                    f"{exp.name}: claim {claim_id}: {metric} is undefined (NaN) for every run of {side.label!r}, "
                    "so its tests have no seed; choose a metric defined for these runs",
                    UndefinedScoreWarning,
                    stacklevel=2,
                )
                break


def _tests(exp: Experiment, claim: Claim, setting: dict, where: str) -> list[Test]:
    grid = exp.grid
    if claim.kind == "each":
        reference = grid.select({**claim.old, **setting})
        values = [v for v in grid.axis_values(claim.axis) if v not in claim.skip]
        chosen = [(grid.select({**claim.new, claim.axis: v, **setting}), v) for v in values]
        return [
            _pair(exp, claim, new, reference, where, value_label(claim.axis, v))
            for new, v in chosen
            if new is not reference
        ]
    if claim.kind == "pair":
        return [_pair(exp, claim, grid.select({**claim.new, **setting}), grid.select({**claim.old, **setting}), where)]
    if claim.kind == "level":
        return [_level(exp, claim, grid.select({**claim.new, **setting}), where)]
    if claim.kind == "trend" and claim.identity:  # checked over the whole axis: last value against the first
        ends = [grid.select({**claim.new, claim.axis: v, **setting}) for v in _defined(exp, claim, setting)]
        return [
            _pair(exp, claim, ends[-1], ends[0], where, f"{ends[0].labels[claim.axis]} → {ends[-1].labels[claim.axis]}")
        ]
    if claim.kind == "trend":
        return _steps(exp, claim, setting, where)
    if claim.kind in ("interaction", "magnitude"):
        return [_interaction(exp, claim, [grid.select({**side, **setting}) for side in claim.contrasts], where)]
    return [_within_run(exp, claim, setting, where)]


def _matrix(exp: Experiment, labels: list[str], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores [seed configuration] of the seeds that finished every configuration of `labels`, and those seeds."""
    if metric not in exp.final:  # no run has this score (none stored yet): no seed to compare
        return np.zeros((0, len(labels))), np.zeros(0, dtype=int)
    final = exp.final[exp.final["configuration"].isin(labels)]
    table = final.pivot_table(index="seed", columns="configuration", values=metric, aggfunc="first", observed=True)
    table = table.reindex(columns=labels).dropna()
    return table.to_numpy(dtype=float), table.index.to_numpy()


def _side(exp: Experiment, label: str, values: np.ndarray, metric: str, seeds: np.ndarray) -> Side:
    uniform = _uniform(exp, label, seeds)
    if metric in BINARY:
        mean = float(values.mean()) if len(values) else math.nan
        return Side(label, mean, wilson(int(values.sum()), len(values)), uniform)
    interval = bootstrap_mean(values, SEED)
    return Side(label, interval.point, interval, uniform)


def _uniform(exp: Experiment, label: str, seeds: np.ndarray) -> int:
    """How many of `seeds`' runs of `label` end near a uniform policy (`Experiment.final`'s `near_uniform`)."""
    if "near_uniform" not in exp.final:
        return 0
    final = exp.final
    mine = final[(final["configuration"] == label) & final["seed"].isin(seeds)]
    return int(mine["near_uniform"].sum())


def _seed_effect(claim: Claim, seeds: np.ndarray, d: np.ndarray) -> float:
    if claim.seed is None or claim.seed not in seeds:
        return math.nan
    return float(d[list(seeds).index(claim.seed)])


def _test(
    exp: Experiment, claim: Claim, where: str, case: str, sides: tuple[Side, ...], d: np.ndarray, seeds: np.ndarray,
    effect: Interval | None = None, binary: tuple | None = None, margin: float | None = None,
) -> Test:  # fmt: skip
    """A test of the per-seed effects `d`: their mean with its CI (or `effect`), and the prediction's p-values.
    `margin`: the claim's margin in the sides' units, for `at_bound` (default: `claim.margin`)."""
    p = hypothesis_p(d, claim.prediction, claim.margin, SEED, binary)
    effect = effect if effect is not None else bootstrap_mean(d, SEED)
    bound = at_bound(sides, claim.metric, claim.margin if margin is None else margin) if len(d) else ""
    engines = tuple(sorted({c.config.engine for c in exp.grid.configurations()}))
    return Test(
        claim, exp.name, where, case, sides, len(d), effect, p, math.nan, d, seeds, _seed_effect(claim, seeds, d),
        bound=bound, engines=engines,
    )  # fmt: skip


def at_bound(sides: tuple[Side, ...], metric: str, margin: float) -> str:
    """`floor` when the mean of every side lies within `margin` of the lowest value `metric` can take, `ceiling` when
    within `margin` of its highest (`sortrl.analysis.scores.bounds`), else empty.

    The floor-effect rule: sides that all sit within one margin of the same bound of a metric cannot differ by more
    than the margin however different the configurations are (a metric cannot go below its floor), so a verdict of
    no difference between them (`no effect`, or a supported equivalence or non-inferiority: `bound_flag`) may be
    the bound's doing: the score cannot register the effect, absent or not. Examples: a greedy policy's volatility
    of 0.004 against 0.000 (margin 0.05; floor 0, a policy that stopped moving), exact rates of 0.02 (margin 0.05;
    floor 0), 0 of 128 seeds solved on both sides (the trap). Uses only what the report has: the sides' means, the
    claim's declared margin and the metric's declared bounds; a metric without a bound (a loss, a slope) or a side
    without a mean (a within-run correlation's sides are correlations, not the metric) is never flagged.
    """
    low, high = bounds(metric)
    means = [side.mean for side in sides]
    if not means or any(math.isnan(m) for m in means) or not margin > 0:
        return ""
    if low is not None and all(abs(m - low) <= margin for m in means):
        return "floor"
    if high is not None and all(abs(high - m) <= margin for m in means):
        return "ceiling"
    return ""


def bound_flag(test: Test) -> str:
    """`at the floor` (or `at the ceiling`) for a verdict of no difference whose sides all sit at a bound of the
    metric (`Test.bound`, `at_bound`): `no effect`, or `supported` for an equivalence or a non-inferiority
    prediction; else empty. The verdict stands, with the flag: it cannot tell an absent effect from a hidden one."""
    if not test.bound:
        return ""
    absent = test.verdict == "no effect" or (test.verdict == "supported" and test.claim.prediction in ("=", ">=", "<="))
    return f"at the {test.bound}" if absent else ""


def claim_bound_flags(all_tests: list[Test]) -> dict[str, str]:
    """Per claim (ledger order): `at the floor` / `at the ceiling` when its claim-level verdict says no difference
    (`not supported`; `supported` for an equivalence or non-inferiority claim) and every one of its tests has its
    sides at that same bound (`Test.bound`), else empty."""
    by_claim: dict[str, list[Test]] = {}
    for t in all_tests:
        by_claim.setdefault(t.claim.id, []).append(t)
    verdicts = claim_verdicts(all_tests)
    out = {}
    for claim_id, mine in by_claim.items():
        places = {t.bound for t in mine}
        if len(places) != 1 or "" in places:
            out[claim_id] = ""
            continue
        found, prediction = verdicts[claim_id], mine[0].claim.prediction
        absent = found == "not supported" or (found == "supported" and prediction in ("=", ">=", "<="))
        out[claim_id] = f"at the {places.pop()}" if absent else ""
    return out


def _pair(exp: Experiment, claim: Claim, new: Configuration, old: Configuration, where: str, case: str = "") -> Test:
    scores, seeds = _matrix(exp, [new.label, old.label], claim.metric)
    a, b = scores[:, 0], scores[:, 1]
    sides = (_side(exp, new.label, a, claim.metric, seeds), _side(exp, old.label, b, claim.metric, seeds))
    if claim.metric in BINARY:  # exact interval and McNemar's exact test for 0/1 outcomes
        return _test(exp, claim, where, case, sides, a - b, seeds, paired_binary_interval(a, b), binary=(a, b))
    return _test(exp, claim, where, case, sides, a - b, seeds, paired_effect(a, b, SEED))


def _level(exp: Experiment, claim: Claim, new: Configuration, where: str) -> Test:
    """A one-sample test: per seed, the metric of `new` minus the constant `claim.against`."""
    scores, seeds = _matrix(exp, [new.label], claim.metric)
    a = scores[:, 0]
    side = _side(exp, new.label, a, claim.metric, seeds)
    found = _test(exp, claim, where, "", (side,), a - claim.against, seeds)
    # a level is not two sides that a bound could hide a difference between: the bound is part of what it states
    found = replace(found, bound="")
    if claim.metric not in BINARY or len(a) == 0:
        return found
    # a share of 0/1 outcomes: an exact binomial test and a Clopper-Pearson interval, not a sign flip of 0/1 values
    k, n = int(a.sum()), len(a)
    share = share_interval(k, n)
    p, contrary = (share_level_p(k, n, claim.prediction, claim.against, claim.margin, c) for c in (False, True))
    effect = Interval(share.point - claim.against, share.low - claim.against, share.high - claim.against, n)
    return replace(found, effect=effect, p=p, p_contrary=contrary)


def _steps(exp: Experiment, claim: Claim, setting: dict, where: str) -> list[Test]:
    """A trend as its steps: each value of the axis against the one before it (values where the metric is defined:
    the KL of a run without a KL penalty is not)."""
    grid = exp.grid
    along = [(grid.select({**claim.new, claim.axis: v, **setting}), v) for v in _defined(exp, claim, setting)]
    steps = [
        _pair(exp, claim, new, old, where, f"{_value(claim.axis, v)} → {_value(claim.axis, w)}")
        for (old, v), (new, w) in zip(along, along[1:])
    ]
    return [_monotone(exp, claim, [c for c, _ in along], where), *steps] if len(along) > 2 else steps


def _monotone(exp: Experiment, claim: Claim, along: list[Configuration], where: str) -> Test:
    """The trend as a whole: per seed, Spearman rho between the position along the axis and the score (0 for a
    seed that scores alike everywhere); their mean is tested like any mean (Page's L test is a rank statistic of the
    same kind: it grows with the average of these per-seed correlations). Margin `TREND_MARGIN` (rho units)."""
    labels = [c.label for c in along]
    scores, seeds = _matrix(exp, labels, claim.metric)
    position = np.arange(len(labels), dtype=float)
    rho = np.array([_rank_correlation(position, row) for row in scores])
    sides = tuple(_side(exp, label, scores[:, i], claim.metric, seeds) for i, label in enumerate(labels))
    return _test(exp, replace(claim, margin=TREND_MARGIN), where, MONOTONE, sides, rho, seeds, margin=claim.margin)


def _rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    if np.all(y == y[0]):
        return 0.0
    return float(scipy_stats.spearmanr(x, y).statistic)


def _defined(exp: Experiment, claim: Claim, setting: dict) -> list:
    """The values of the claim's axis whose configuration has the metric (all, before any run is stored)."""
    grid = exp.grid
    values = grid.axis_values(claim.axis)
    if claim.metric not in exp.final:
        return values
    defined = exp.final.groupby("configuration", observed=True)[claim.metric].apply(lambda v: v.notna().any())
    return [v for v in values if defined.get(grid.select({**claim.new, claim.axis: v, **setting}).label, False)]


def _value(axis: str, value: object) -> str:
    """A value of `axis` as its label shows it, without the axis name (`0.01` for `kl=0.01`; a bundle's own name)."""
    label = value_label(axis, value)
    prefix = f"{SHORT_NAMES.get(axis, axis)}="
    return label[len(prefix) :] if label.startswith(prefix) else label


def _interaction(exp: Experiment, claim: Claim, four: list[Configuration], where: str) -> Test:
    labels = [c.label for c in four]
    scores, seeds = _matrix(exp, labels, claim.metric)
    first, second = scores[:, 0] - scores[:, 1], scores[:, 2] - scores[:, 3]
    if claim.kind == "magnitude":  # |mean(first)| - |mean(second)|: each contrast oriented by its mean's sign
        first, second = first * _sign(first), second * _sign(second)
    sides = tuple(_side(exp, label, scores[:, i], claim.metric, seeds) for i, label in enumerate(labels))
    return _test(exp, claim, where, "", sides, first - second, seeds)


def _sign(values: np.ndarray) -> float:
    return -1.0 if len(values) and values.mean() < 0 else 1.0


def _within_run(exp: Experiment, claim: Claim, setting: dict, where: str) -> Test:
    """Per seed: the mean over the test's configurations of Spearman rho between the curves `x` and `metric`."""
    labels = [c.label for c in exp.grid.matching(setting)]
    rho = within_run_rho(exp, claim)
    table = rho[rho["configuration"].isin(labels)].pivot_table(
        index="seed", columns="configuration", values="rho", aggfunc="first", observed=True
    )
    table = table.reindex(columns=labels).dropna()
    d, seeds = table.to_numpy(float).mean(axis=1), table.index.to_numpy()
    sides = tuple(_side(exp, label, table[label].to_numpy(float), claim.metric, seeds) for label in labels)
    return replace(_test(exp, claim, where, "", sides, d, seeds), bound="")  # its sides are correlations


def within_run_rho(exp: Experiment, claim: Claim) -> pd.DataFrame:
    """Spearman rho over each run's epochs between its curves `claim.x` and `claim.metric`: one row per run
    (`configuration`, `seed`, `rho`; NaN where a curve is constant or has fewer than 3 epochs).

    Spearman's rho is Pearson's correlation of the average ranks (as `scipy.stats.spearmanr`), computed for every
    run at once from grouped sums (a run's epochs with a missing value in either curve are left out).
    """
    columns = [claim.x, claim.metric]
    curves = exp.curves
    if curves.empty or any(c not in curves for c in columns):
        return pd.DataFrame({"configuration": pd.Series(dtype=object), "seed": pd.Series(dtype=int), "rho": []})
    keys = ["configuration", "seed"]
    rows = curves[[*keys, *columns]].dropna()
    ranks = rows.groupby(keys, observed=True)[columns].rank(method="average")
    x, y = ranks[claim.x], ranks[claim.metric]
    sums = (
        pd.DataFrame({"n": 1.0, "x": x, "y": y, "xx": x * x, "yy": y * y, "xy": x * y})
        .groupby([rows[k] for k in keys], observed=True)
        .sum()
    )
    n = sums["n"]
    cov = sums["xy"] - sums["x"] * sums["y"] / n
    var_x, var_y = sums["xx"] - sums["x"] ** 2 / n, sums["yy"] - sums["y"] ** 2 / n
    spread = (var_x > 1e-12) & (var_y > 1e-12) & (n >= 3)
    rho = (cov / np.sqrt(var_x * var_y)).where(spread).clip(-1.0, 1.0)
    return rho.rename("rho").reset_index()


SOURCE_ORDER = "LDGRE"
"""Claims are listed by the first letter of their id in this order (lecture, Dr. GRPO, GRPO, the rest, the trap)."""


def _order(test: Test) -> tuple:
    first = test.claim.id[:1]
    return (SOURCE_ORDER.find(first) % (len(SOURCE_ORDER) + 1), test.claim.id)


def ledger(all_tests: list[Test]) -> list[Test]:
    """`all_tests` with corrected p-values over the whole ledger, verdicts, and seeds needed where inconclusive.

    The tests of predictions are Holm-corrected together; their contraries
    Bonferroni-corrected over the same family (`p x k`, k tests). An
    inconclusive test's `needed` is sized at level alpha / k (Holm's strictest
    step) for the claim's `implied` effect when it declares one, else the
    observed effect. Implementation checks (claims with `identity`) are outside
    the family: each gets `check`'s result. The tests come back in ledger order:
    by claim (`SOURCE_ORDER`, then id), each claim's tests as they were.
    """
    all_tests = sorted(all_tests, key=_order)  # stable: a claim's tests keep their order
    weighed = evidence(all_tests)
    adjusted = holm([t.p for t in weighed])
    family = max(1, sum(not math.isnan(t.p) for t in weighed))
    out = [replace(t, verdict=check(t)) for t in checks(all_tests)]
    for test, p in zip(weighed, adjusted, strict=True):
        test = _with_contrary(test, float(p))
        contrary = min(1.0, test.p_contrary * family) if not math.isnan(test.p_contrary) else math.nan
        found = verdict(test.effect, float(p), contrary, test.claim.prediction)
        needed, needed_for = None, ""
        if found == "inconclusive" and len(test.differences) > 1:
            needed_for = "implied" if test.claim.implied is not None else "observed"
            size = test.claim.implied if test.claim.implied is not None else test.effect.point
            needed = seeds_needed(test.differences, size, test.claim.prediction, test.claim.margin, ALPHA / family)
        out.append(
            replace(
                test, p_adjusted=float(p), p_contrary_adjusted=contrary, verdict=found, needed=needed,
                needed_for=needed_for,
            )
        )  # fmt: skip
    return sorted(out, key=_order)


CHECKS = ("holds", "not in every seed", "no runs yet")
"""An implementation check's result (`check`)."""


def check(test: Test) -> str:
    """An implementation check (a claim with `identity`): `holds` when every seed's effect agrees with the prediction
    within the claim's `tolerance` (`same`: |effect| <= tolerance; `higher`: effect > -tolerance ... and so on, 0
    itself agreeing with `not lower` / `not higher` only), `not in every seed` otherwise; a `gradient` check holds
    when every seed's two gradients agree within float32's rounding bound (`gradient_bound`), whatever the runs'
    metric does. No statistics: a construction holds in every seed or it does not."""
    if len(test.differences) == 0 or (test.claim.check == "gradient" and len(test.gradient) == 0):
        return "no runs yet"
    return "holds" if bool(np.all(agreeing(test))) else "not in every seed"


def agreeing(test: Test) -> np.ndarray:
    """Per seed of an implementation check: whether its effect agrees with the prediction within the tolerance
    (`check`'s rule; for a `gradient` check, its gradients' difference within `gradient_bound`) -> `[seed]` bool."""
    if test.claim.check == "gradient":
        return test.gradient <= test.gradient_tolerance
    d, tol = test.differences, test.claim.tolerance
    return {
        "same": np.abs(d) <= tol,
        "higher": d > -tol if tol else d > 0,
        "lower": d < tol if tol else d < 0,
        "not lower": d >= -tol,
        "not higher": d <= tol,
    }[test.claim.predicts]


def evidence(all_tests: list[Test]) -> list[Test]:
    """The tests that weigh evidence (Holm family, verdict counts): every test but the implementation checks."""
    return [t for t in all_tests if not t.claim.identity]


def checks(all_tests: list[Test]) -> list[Test]:
    """The implementation checks: tests of claims that hold by construction (`Claim.identity`)."""
    return [t for t in all_tests if t.claim.identity]


def _with_contrary(test: Test, p_adjusted: float) -> Test:
    """`test` with the p-value of its contrary (`contrary_p`), computed only where a verdict can turn on it: a
    significant difference is decided by its sign (the sign-flip tests cost ~0.1 s each)."""
    if len(test.differences) < 2 or (test.claim.prediction in (">", "<") and p_adjusted < ALPHA):
        return test
    if not math.isnan(test.p_contrary):  # computed already (`tests`)
        return test
    return replace(test, p_contrary=contrary_p(test.differences, test.claim.prediction, test.claim.margin, SEED))


def claim_verdicts(all_tests: list[Test]) -> dict[str, str]:
    """Each claim's verdict over all its tests (`sortrl.analysis.verdicts.claim_verdict`), in ledger order."""
    by_claim: dict[str, list[str]] = {}
    for t in all_tests:
        by_claim.setdefault(t.claim.id, []).append(t.verdict)
    return {claim_id: claim_verdict(found) for claim_id, found in by_claim.items()}


def per_run(exp: Experiment, labels: list[str], metric: str) -> pd.DataFrame:
    """The per-seed scores of `labels` as a [seed] x [configuration] table (for figures and notebooks)."""
    scores, seeds = _matrix(exp, labels, metric)
    return pd.DataFrame(scores, index=pd.Index(seeds, name="seed"), columns=labels)


def table(all_tests: list[Test]) -> pd.DataFrame:
    """The ledger as a table, one row per test (`results/claims.csv`): what CLAIMS.md says, as numbers."""
    rows = [
        {
            "claim": t.claim.id,
            "experiment": t.experiment,
            "where": t.where,
            "case": t.case,
            "kind": t.claim.kind,
            "test": test_kind(t.claim),
            "metric": t.claim.metric,
            "predicts": t.claim.predicts,
            "margin": t.claim.margin,
            "n": t.n,
            "effect": t.effect.point,
            "effect_ci_low": t.effect.low,
            "effect_ci_high": t.effect.high,
            "p": t.p,
            "p_holm": t.p_adjusted,
            "p_contrary": t.p_contrary,
            "p_contrary_bonferroni": t.p_contrary_adjusted,
            "verdict": t.verdict,
            "at_bound": t.bound,
            "verdict_flag": bound_flag(t),
            "seeds_needed": t.needed,
            "seeds_needed_for": t.needed_for,
            "seed_effect": t.seed_effect,
            "compared": " | ".join(side.label for side in t.sides),
        }
        for t in all_tests
    ]
    return pd.DataFrame(rows)
