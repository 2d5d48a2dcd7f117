"""The claims ledger: each declared claim tested on the stored runs, paired by seed, Holm-corrected, with a verdict.

A grid file declares the claims it tests (`sortrl.study.grid.Claim`, `[[claim]]`
tables); `tests(exp)` computes every test of every claim of one experiment
(one test per value of the claim's `across` axis, e.g. per regime) from its
per-run scores, and `ledger(tests)` corrects all p-values of the whole ledger
together (Holm) and gives each test its verdict (`sortrl.analysis.verdicts`). Pure:
no files, no figures; `sortrl.render.claims_md` renders the results.

Per kind (effects per seed, averaged over the seeds that finished every
configuration involved; CI: percentile bootstrap over seeds):

| kind | effect per seed | test |
| --- | --- | --- |
| `pair` | score(new) - score(old) | Wilcoxon signed-rank (McNemar's exact test for the 0/1 `solved`) |
| `each` | as `pair`, for every value of `axis` against `old`'s | as `pair` |
| `trend` | least-squares slope of the score along `axis` (per step) | Wilcoxon on the slopes |
| `interaction` | (new - old) at `within`'s first value minus at its second | Wilcoxon |
| `correlation` | Spearman rho over configurations of `x` and the score (no pairing) | `scipy.stats.spearmanr` |
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from sortrl.analysis.experiment import SEED, Experiment  # one bootstrap seed for the report and the ledger
from sortrl.analysis.scores import DERIVED, SCORES
from sortrl.analysis.verdicts import (
    Interval,
    bootstrap_mean,
    holm,
    mcnemar_p,
    paired_effect,
    seeds_needed,
    verdict,
    wilcoxon_p,
    wilson,
)
from sortrl.engine.registry import ConfigError
from sortrl.study.grid import Claim, Configuration, Grid, value_label

BINARY = ("solved", "stuck")
"""Scores that are 0/1 per run: tested with McNemar's exact test, summarised with Wilson intervals."""


@dataclass(frozen=True)
class Side:
    """One configuration a test compares: its label and its score over the paired seeds."""

    label: str
    mean: float
    interval: Interval
    """The score's mean with its CI over seeds (Wilson for a 0/1 score)."""


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
    """Two-sided p-value of the test, uncorrected."""
    differences: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))
    """The per-seed effects (per configuration pair for a correlation: empty)."""
    seeds: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0, int))
    seed_effect: float = math.nan
    """The effect on the claim's own `seed` alone (what the source's single run showed), NaN without one."""
    p_adjusted: float = math.nan
    """Holm-corrected over the ledger (`ledger`)."""
    verdict: str = ""
    needed: int | None = None
    """For an inconclusive test: seeds a paired test would need to detect the implied effect at 80% power."""
    setting: dict = field(compare=False, default_factory=dict)
    """The `across` axis value of this test as `Grid.select` takes it (`{"regime": "explore"}`)."""

    @property
    def label(self) -> str:
        """`L1 (regime=explore)`, `G2 (regime=lecture: kl=0.1)`: the claim and where this test of it was made."""
        inside = ": ".join(x for x in (self.where, self.case) if x)
        return f"{self.claim.id}" + (f" ({inside})" if inside else "")


def check_metrics(grid: Grid, path: str | Path) -> None:
    """Every claim of `grid` names known scores (`metric`, `x`: `SCORES` or `DERIVED`); `ConfigError` otherwise,
    naming the file `path`, the claim, the field and the valid choices."""
    metrics = [*SCORES, *DERIVED]
    for claim in grid.claims:
        for key in ("metric", "x"):
            value = getattr(claim, key)
            if value is not None and value not in metrics:
                raise ConfigError(
                    f"{path}: [[claim]] {claim.id}: {key}: unknown value {value!r}; valid choices: {', '.join(metrics)}"
                )


def tests(exp: Experiment) -> list[Test]:
    """Every test of every claim of `exp`, uncorrected (`p_adjusted` and `verdict` unset)."""
    out = []
    for claim in exp.grid.claims:
        for setting in exp.grid.tests(claim):
            where = ", ".join(f"{k}={v}" for k, v in setting.items())
            out += [replace(t, setting=setting) for t in _tests(exp, claim, setting, where)]
    return out


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
    if claim.kind == "trend":
        along = [grid.select({**claim.new, claim.axis: v, **setting}) for v in grid.axis_values(claim.axis)]
        return [_trend(exp, claim, along, where)]
    if claim.kind == "interaction":
        axis, (first, second) = next(iter(claim.within.items()))
        four = [grid.select({**side, axis: v, **setting}) for v in (first, second) for side in (claim.new, claim.old)]
        return [_interaction(exp, claim, four, where)]
    return [_correlation(exp, claim, setting, where)]


def _matrix(exp: Experiment, labels: list[str], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores [seed configuration] of the seeds that finished every configuration of `labels`, and those seeds."""
    if metric not in exp.final:  # no run has this score (none stored yet): no seed to compare
        return np.zeros((0, len(labels))), np.zeros(0, dtype=int)
    final = exp.final[exp.final["configuration"].isin(labels)]
    table = final.pivot_table(index="seed", columns="configuration", values=metric, aggfunc="first", observed=True)
    table = table.reindex(columns=labels).dropna()
    return table.to_numpy(dtype=float), table.index.to_numpy()


def _side(label: str, values: np.ndarray, metric: str) -> Side:
    if metric in BINARY:
        return Side(label, float(values.mean()) if len(values) else math.nan, wilson(int(values.sum()), len(values)))
    interval = bootstrap_mean(values, SEED)
    return Side(label, interval.point, interval)


def _seed_effect(claim: Claim, seeds: np.ndarray, d: np.ndarray) -> float:
    if claim.seed is None or claim.seed not in seeds:
        return math.nan
    return float(d[list(seeds).index(claim.seed)])


def _pair(exp: Experiment, claim: Claim, new: Configuration, old: Configuration, where: str, case: str = "") -> Test:
    scores, seeds = _matrix(exp, [new.label, old.label], claim.metric)
    a, b = scores[:, 0], scores[:, 1]
    d = a - b
    p = mcnemar_p(a, b) if claim.metric in BINARY else wilcoxon_p(d)
    return Test(
        claim, exp.name, where, case,
        (_side(new.label, a, claim.metric), _side(old.label, b, claim.metric)),
        len(d), paired_effect(a, b, SEED), p, d, seeds, _seed_effect(claim, seeds, d),
    )  # fmt: skip


def _trend(exp: Experiment, claim: Claim, along: list[Configuration], where: str) -> Test:
    # along the values where the metric is defined (the KL of a run without a KL penalty is not)
    defined = exp.final.groupby("configuration", observed=True)[claim.metric].apply(lambda v: v.notna().any())
    labels = [c.label for c in along if defined.get(c.label, False)]
    scores, seeds = _matrix(exp, labels, claim.metric)
    steps = np.arange(len(labels), dtype=float)
    centred = steps - steps.mean()
    slopes = (
        (scores - scores.mean(axis=1, keepdims=True)) @ centred / (centred @ centred) if len(scores) else np.zeros(0)
    )
    sides = tuple(_side(label, scores[:, i], claim.metric) for i, label in enumerate(labels))
    return Test(
        claim, exp.name, where, "", sides, len(slopes), bootstrap_mean(slopes, SEED), wilcoxon_p(slopes),
        slopes, seeds, _seed_effect(claim, seeds, slopes),
    )  # fmt: skip


def _interaction(exp: Experiment, claim: Claim, four: list[Configuration], where: str) -> Test:
    labels = [c.label for c in four]
    scores, seeds = _matrix(exp, labels, claim.metric)
    d = (scores[:, 0] - scores[:, 1]) - (scores[:, 2] - scores[:, 3]) if len(scores) else np.zeros(0)
    sides = tuple(_side(label, scores[:, i], claim.metric) for i, label in enumerate(labels))
    return Test(
        claim, exp.name, where, "", sides, len(d), bootstrap_mean(d, SEED), wilcoxon_p(d), d, seeds,
        _seed_effect(claim, seeds, d),
    )  # fmt: skip


def _correlation(exp: Experiment, claim: Claim, setting: dict, where: str) -> Test:
    """Spearman rho over the test's configurations between the mean `x` and the mean metric (bootstrap over them)."""
    grid = exp.grid
    labels = [c.label for c in grid.matching(setting)]
    final = exp.final[exp.final["configuration"].isin(labels)]
    means = final.groupby("configuration", observed=True)[[claim.x, claim.metric]].mean().dropna()
    x, y = means[claim.x].to_numpy(float), means[claim.metric].to_numpy(float)
    if len(x) < 3:
        return Test(claim, exp.name, where, "", (), len(x), Interval(math.nan, math.nan, math.nan, len(x)), math.nan)
    rho = scipy_stats.spearmanr(x, y)
    rng = np.random.default_rng(SEED)
    picks = rng.integers(0, len(x), size=(2000, len(x)))
    boots = np.array([scipy_stats.spearmanr(x[i], y[i]).statistic for i in picks])
    boots = boots[np.isfinite(boots)]
    low, high = np.percentile(boots, [2.5, 97.5]) if len(boots) else (math.nan, math.nan)
    effect = Interval(float(rho.statistic), float(low), float(high), len(x))
    return Test(claim, exp.name, where, "", (), len(x), effect, float(rho.pvalue))


SOURCE_ORDER = "LDGRE"
"""Claims are listed by the first letter of their id in this order (lecture, Dr. GRPO, GRPO, the rest, the trap)."""


def _order(test: Test) -> tuple:
    first = test.claim.id[:1]
    return (SOURCE_ORDER.find(first) % (len(SOURCE_ORDER) + 1), test.claim.id)


def ledger(all_tests: list[Test]) -> list[Test]:
    """`all_tests` with Holm-corrected p-values over the whole ledger, verdicts, and seeds needed where inconclusive.

    The tests come back in ledger order: by claim (`SOURCE_ORDER`, then id), each claim's tests as they were.
    """
    all_tests = sorted(all_tests, key=_order)  # stable: a claim's tests keep their order
    adjusted = holm([t.p for t in all_tests])
    out = []
    for test, p in zip(all_tests, adjusted, strict=True):
        found = verdict(test.effect, float(p), test.claim.prediction, test.claim.margin)
        needed = None
        if found == "inconclusive" and len(test.differences) > 1:
            needed = seeds_needed(test.differences, test.claim.implied or test.claim.margin)
        out.append(replace(test, p_adjusted=float(p), verdict=found, needed=needed))
    return out


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
            "metric": t.claim.metric,
            "predicts": t.claim.predicts,
            "margin": t.claim.margin,
            "n": t.n,
            "effect": t.effect.point,
            "effect_ci_low": t.effect.low,
            "effect_ci_high": t.effect.high,
            "p": t.p,
            "p_holm": t.p_adjusted,
            "verdict": t.verdict,
            "seeds_needed": t.needed,
            "seed_effect": t.seed_effect,
            "compared": " | ".join(side.label for side in t.sides),
        }
        for t in all_tests
    ]
    return pd.DataFrame(rows)
