"""Findings: what an experiment's numbers say, as data, for the renderers to put into words.

`findings(exp, summary)` turns a loaded experiment (`sortrl.analysis.experiment`) and
its summary table into a `Findings`, following the statistics of DESIGN.md
("Statistics the reports follow"):

- every configuration against its reference, **paired by seed** on the final
  score (the chance-normalised final reward): the mean of per-seed
  differences with its bootstrap CI, a Wilcoxon signed-rank test, Holm's
  correction over the experiment's comparisons and a verdict from the
  corrected test (`better`, `worse`, `no difference` within the margin,
  `inconclusive`), with P(improve) beside it as the unpaired view
  (`Comparison`; the numbers are the summary's, `sortrl.analysis.experiment.summarize`);
- the top of each reward scale: a single best configuration only when it
  separates from every other configuration (paired CI above 0 and a
  Holm-corrected Wilcoxon test), else who is tied with it (`Top`); a
  configuration whose results repeat another's bit for bit is *identical* to
  it, never "tied" (`sortrl.analysis.experiment.identical_configurations`);
- the null results of each scale: configurations and runs that end within the
  margin of chance, and how many runs solve (`Floor`);
- the grid-specific findings: held-out score by prompt length (chance-normalised
  with the held-out prompts' chance), recipes ranked with paired comparisons
  of neighbours, and what EOS does to the response length against the
  untrained policy's.

`REPORT.md` (`sortrl.render.report`) and the README's findings block
(`sortrl.render.readme`) are two renderings of the same findings; neither computes a
number of its own. Numbers are formatted here too (`fmt_num`, `fmt_interval`,
`fmt_estimate`, `fmt_effect`), so both say them alike, and a degenerate
interval (every resample the same) is flagged, never printed as `[x, x]`.
Everything is pure: no files, no figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from sortrl.analysis import stats
from sortrl.analysis.experiment import (
    EVAL_ACCURACY,
    EVAL_REWARD,
    MARGIN,
    PROMPT_LENGTH,
    SEED,
    Experiment,
    paired,
    scores,
)
from sortrl.analysis.verdicts import ALPHA, Interval, bootstrap_mean, holm, paired_effect, wilcoxon_p
from sortrl.study.grid import join_labels, value_label


# --- numbers as text -------------------------------------------------------------
def fmt_num(x: float | None, digits: int = 3, sign: bool = False) -> str:
    """`x` with `digits` decimals (and a sign with `sign`); an en dash for a missing value (None or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def fmt_interval(x: float, low: float, high: float, digits: int = 3, sign: bool = False, n: int = 0) -> str:
    """`x [low, high]`; a degenerate interval (low == high) is flagged instead: `x (all n equal)` for a mean of
    `n` values (the only way its bootstrap does not vary), `x (same in every resample)` without `n`.

    An interval whose ends differ but would print alike gets up to 3 more decimals, so that it never reads
    as degenerate (`0.9991 [0.9990, 0.9995]`, not `1.00 [1.00, 1.00]`); ends that still print alike (a spread of
    float rounding, ~1e-9) print in significant digits, as many as tell them apart (`-3.1e-09 [-4.2e-09, -2.0e-09]`).
    """
    if not math.isnan(low) and low == high:
        return f"{fmt_num(x, digits, sign)} ({f'all {n} equal' if n else 'same in every resample'})"
    for more in range(4):
        if fmt_num(low, digits + more) != fmt_num(high, digits + more):
            break
    else:
        if not math.isnan(low):
            return _fmt_significant(x, low, high, sign)
    digits += more if not math.isnan(low) else 0
    return f"{fmt_num(x, digits, sign)} [{fmt_num(low, digits, sign)}, {fmt_num(high, digits, sign)}]"


def _fmt_significant(x: float, low: float, high: float, sign: bool) -> str:
    """`x [low, high]` in scientific notation with the fewest significant digits (2 to 17) that tell the ends apart."""
    plus = "+" if sign else ""
    for places in range(1, 17):
        ends = [f"{v:{plus}.{places}e}" for v in (low, high)]
        if ends[0] != ends[1]:
            break
    return f"{x:{plus}.{places}e} [{ends[0]}, {ends[1]}]"


def fmt_estimate(interval: Interval, digits: int = 3) -> str:
    """A mean over `interval.n` values with its CI (`fmt_interval`)."""
    return fmt_interval(interval.point, interval.low, interval.high, digits, n=interval.n)


def fmt_effect(interval: Interval, digits: int = 3) -> str:
    """A signed paired effect with its CI (`+0.120 [+0.080, +0.160]`; degenerate ones flagged)."""
    return fmt_interval(interval.point, interval.low, interval.high, digits, sign=True, n=interval.n)


def fmt_ci(row: pd.Series, stat: str, digits: int = 3, mean_of: int = 0) -> str:
    """`stat [low, high]` from a summary row's `stat`, `stat_ci_low` and `stat_ci_high` (`fmt_interval`).

    `mean_of`: the statistic is a mean of that many values (a degenerate CI then means they are all equal).
    """
    return fmt_interval(row[stat], row[f"{stat}_ci_low"], row[f"{stat}_ci_high"], digits, n=mean_of)


def fmt_improve(p: float, low: float, high: float) -> str:
    """P(improve) with its CI; at 0 or 1 with no spread, what that means (every run above / below every other)."""
    if not math.isnan(low) and low == high:
        if p in (0.0, 1.0):
            return f"{p:.2f} (every run {'above' if p == 1 else 'below'} every reference run)"
        return f"{p:.2f} (same in every resample)"
    return fmt_interval(p, low, high, 2)


def fmt_p(p: float) -> str:
    """A p-value: 2 significant digits, `<0.001` below that; an en dash for NaN."""
    if math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def verdict(low: float, high: float) -> str:
    """Where a P(improve) CI lies relative to 0.5: `above 0.5`, `below 0.5` or `contains 0.5`.

    The unpaired view only: the report's verdicts come from the paired, Holm-corrected test
    (`sortrl.analysis.experiment.comparison_verdict`); a CI containing 0.5 is no evidence of equality.
    """
    if low > 0.5:
        return "above 0.5"
    if high < 0.5:
        return "below 0.5"
    return "contains 0.5"


# --- findings ----------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """A configuration against its reference, paired by seed on the final score (the summary's numbers)."""

    configuration: str
    reference: str
    effect: Interval
    """Mean over seeds of (its final score - the reference's), with its 95% bootstrap CI; n = seeds paired."""
    p: float
    """Two-sided Wilcoxon signed-rank p-value, uncorrected."""
    p_holm: float
    """Holm-corrected over the experiment's comparisons."""
    verdict: str
    """`better`, `worse`, `no difference`, `inconclusive` (`sortrl.analysis.experiment.VERDICTS`); `""` without a test."""
    seeds_needed: int | None
    """For an inconclusive comparison: seeds a paired test would need to detect an effect of the margin."""
    improve: Interval
    """P(its final reward > the reference's) with its CI: the unpaired view."""
    identical: bool = False
    """Whether its results repeat the reference's bit for bit (`Experiment.identical`)."""

    @property
    def within_margin(self) -> bool:
        """Significant, but the whole CI lies inside the margin: a real difference smaller than it."""
        return self.verdict in ("better", "worse") and self.effect.within(MARGIN)


@dataclass(frozen=True)
class Top:
    """The top of one reward scale by mean final score, and whether it separates from the rest (paired)."""

    scale: str
    """The scale's label (`reward=exact_match`), `""` when the grid has one scale."""
    score: Interval
    """The leader's mean final score with its CI."""
    tied: list[str]
    """The leader, then every configuration it does not separate from (`separated`), by mean score; one of each
    set of identical configurations (the first in grid order: the others are in `identical`)."""
    runner_up: str | None
    """The configuration with the second highest mean final score, the leader's identical ones left out (None when
    there is no other)."""
    lead: Interval | None
    """Paired effect of the leader over the runner-up."""
    identical: dict[str, list[str]] = field(default_factory=dict)
    """Configurations of `tied` -> the ones of the scale identical to it (`Experiment.identical`), in grid order."""

    @property
    def leader(self) -> str:
        return self.tied[0]

    @property
    def single(self) -> bool:
        """True when the leader separates from every other configuration of its scale (`separated`) but its
        identical ones."""
        return len(self.tied) == 1 and self.runner_up is not None


@dataclass(frozen=True)
class Floor:
    """The null results of one reward scale: who stays at chance, who solves."""

    scale: str
    configurations: list[str]
    at_chance: list[str]
    """Configurations whose mean final score has a CI inside +-`MARGIN` of chance (0)."""
    iqm_at_chance: list[str]
    """Configurations whose IQM of the final score lies inside +-`MARGIN` of chance."""
    runs: int
    runs_at_chance: int
    """Runs whose final score lies inside +-`MARGIN` of chance."""
    solved: int
    """Runs whose greedy policy sorts every training prompt after the last epoch."""
    solving: list[str]
    """Configurations with at least one solved run."""

    @property
    def nothing_learns(self) -> bool:
        return bool(self.configurations) and len(self.at_chance) == len(self.configurations)

    @property
    def mostly_at_chance(self) -> bool:
        return 2 * self.runs_at_chance > self.runs


@dataclass(frozen=True)
class LengthRow:
    """Every configuration of one prompt length pooled: final held-out (or training) performance."""

    length: int
    runs: int
    accuracy: float
    """Mean final greedy accuracy on the held-out prompts (share sorted exactly)."""
    reward: float
    """Mean final reward as a fraction of its maximum."""
    chance: float
    """The uniform random policy's mean reward as a fraction of the same maximum."""
    score: Interval
    """Mean chance-normalised final score, (reward - chance) / (max - chance), with its CI."""


@dataclass(frozen=True)
class Ranking:
    """Recipes ranked by mean final score under one value of the other scale axes (`where`)."""

    where: str
    entries: list[tuple[str, float, Interval | None, bool]]
    """(recipe, mean final score, paired effect of the recipe before it over this one, whether that one separates
    from it: `separated`, Holm over the ranking's neighbours), highest first."""


@dataclass(frozen=True)
class Eos:
    """Response length with EOS on, under one value of the other scale axes, against the untrained policy's."""

    where: str
    runs: int
    final: float
    """Mean final response length (tokens before EOS)."""
    initial: float
    """Mean response length at the first epoch: the untrained policy's."""
    change: Interval
    """Paired by run: final - initial, with its CI."""
    maximum: int
    """The longest possible response (the prompt length): every response's length without EOS."""


@dataclass
class Findings:
    """Everything `REPORT.md` and the README say about one experiment (see the module docstring)."""

    experiment: Experiment
    summary: pd.DataFrame
    figures: list[str] = field(default_factory=list)
    """Names of the figures drawn (`sortrl.render.figures.FIGURES`)."""
    comparisons: list[Comparison] = field(default_factory=list)
    """Every configuration that has a reference other than itself, in grid order."""
    tops: list[Top] = field(default_factory=list)
    floors: list[Floor] = field(default_factory=list)
    by_prompt_length: list[LengthRow] = field(default_factory=list)
    length_reward: str = ""
    """What `by_prompt_length`'s reward is: `held-out` or `training` mean reward."""
    length_change: Interval | None = None
    """Mean final score at the longest prompts minus at the shortest (unpaired bootstrap: no shared seeds' models)."""
    rankings: list[Ranking] = field(default_factory=list)
    ranking_setting: str = ""
    """The labels of the axes held at the baseline's values while recipes are ranked."""
    eos: list[Eos] = field(default_factory=list)
    shared: list[tuple[str, int]] = field(default_factory=list)
    """The other experiments holding every one of this one's finished runs, and how many (`link_shared`)."""

    @property
    def tested(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict]

    def verdicts(self, which: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == which]


def findings(exp: Experiment, summary: pd.DataFrame, figures: list[str] | None = None) -> Findings:
    """The findings of `exp` (its summary table from `sortrl.analysis.experiment.summarize`)."""
    comparisons = [replace(c, identical=same_results(exp, c.configuration, c.reference)) for c in _comparisons(summary)]
    out = Findings(experiment=exp, summary=summary, figures=list(figures or []), comparisons=comparisons)
    for scale, part in _by_scale(summary):
        labels = list(part["configuration"])
        out.tops.append(_top(exp, scale, part))
        out.floors.append(_floor(exp, scale, labels))
    _prompt_lengths(exp, out)
    _recipes(exp, summary, out)
    return out


def _comparisons(summary: pd.DataFrame) -> list[Comparison]:
    rows = summary[summary["configuration"] != summary["reference"]]
    return [
        Comparison(
            r["configuration"],
            r["reference"],
            Interval(r["effect"], r["effect_ci_low"], r["effect_ci_high"], int(r["n_paired"])),
            r["p_value"],
            r["p_holm"],
            r["verdict"] if isinstance(r["verdict"], str) else "",
            None if math.isnan(r["seeds_needed"]) else int(r["seeds_needed"]),
            Interval(r["p_improve"], r["p_improve_ci_low"], r["p_improve_ci_high"], int(r["n"])),
        )
        for _, r in rows.iterrows()
    ]


def _by_scale(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The configurations with finished runs, grouped by reward scale (`scale`), in grid order."""
    rows = summary[summary["n"] > 0]
    return [(scale, rows[rows["scale"] == scale]) for scale in dict.fromkeys(rows["scale"])]


def _top(exp: Experiment, scale: str, part: pd.DataFrame) -> Top:
    """The leader by mean final score, the runner-up, and who the leader does not separate from (`separated`).

    Identical configurations (`Experiment.identical`) have equal scores, so the first of them in grid order ranks
    first; the others are listed as identical to it, not as tied, and none of the leader's is its runner-up.
    """
    ranked = part.sort_values("score", ascending=False, kind="stable")
    labels = list(ranked["configuration"])
    first = ranked.iloc[0]
    score = Interval(first["score"], first["score_ci_low"], first["score_ci_high"], int(first["n"]))
    apart, effects = separated(exp, [(labels[0], other) for other in labels[1:]])
    tied = [labels[0]] + [label for label, ok in zip(labels[1:], apart) if not ok]
    twins = {label: exp.identical[label] for label in labels if exp.identical.get(label) in labels}
    identical: dict[str, list[str]] = {}
    for twin, original in twins.items():
        if twin in tied:
            identical.setdefault(original, []).append(twin)
    others = [(label, effect) for label, effect in zip(labels[1:], effects) if twins.get(label) != labels[0]]
    runner_up, lead = others[0] if others else (None, None)
    return Top(scale, score, [label for label in tied if label not in twins], runner_up, lead, identical)


def same_results(exp: Experiment, a: str, b: str) -> bool:
    """Whether configurations `a` and `b` of `exp` are one and the same or identical (`Experiment.identical`)."""
    return exp.identical.get(a, a) == exp.identical.get(b, b)


def separated(exp: Experiment, pairs: list[tuple[str, str]]) -> tuple[list[bool], list[Interval]]:
    """For each (higher, lower) pair: whether `higher` separates from `lower`, and the paired effect higher - lower.

    Separated means the paired 95% CI of the final-score effect lies above 0 and its Wilcoxon signed-rank test,
    Holm-corrected over `pairs` (one family), is significant: the same standard as the comparisons' verdicts.
    """
    effects, ps = [], []
    for higher, lower in pairs:
        a, b = paired(exp, higher, lower)
        effects.append(paired_effect(a, b, SEED) if len(a) else Interval(math.nan, math.nan, math.nan, 0))
        ps.append(wilcoxon_p(a - b))
    adjusted = holm(ps) if ps else np.zeros(0)
    return [bool(e.low > 0 and p < ALPHA) for e, p in zip(effects, adjusted)], effects


def _floor(exp: Experiment, scale: str, labels: list[str]) -> Floor:
    """Who stays within the margin of chance, and who solves, among the configurations `labels` of one scale."""
    at_chance, iqm_at_chance, solving = [], [], []
    runs = runs_at_chance = solved = 0
    for label in labels:
        score = scores(exp, label, "final_score")
        interval = bootstrap_mean(score, SEED)
        if interval.n > 1 and interval.within(MARGIN):
            at_chance.append(label)
        if len(score) and abs(stats.iqm(score)) <= MARGIN:
            iqm_at_chance.append(label)
        runs += len(score)
        runs_at_chance += int((np.abs(score) <= MARGIN).sum())
        wins = int((scores(exp, label, "final_greedy_accuracy") >= 1 - 1e-9).sum())
        solved += wins
        if wins:
            solving.append(label)
    return Floor(scale, labels, at_chance, iqm_at_chance, runs, runs_at_chance, solved, solving)


def _keys(rows: pd.DataFrame, axes: list[str]) -> pd.Series:
    """A hashable group key per row from the values of `axes` (one group when there are none)."""
    return rows[axes].map(repr).apply(tuple, axis=1) if axes else pd.Series(0, index=rows.index)


def _prompt_lengths(exp: Experiment, out: Findings) -> None:
    """Final held-out greedy accuracy and chance-normalised score per prompt length, every configuration pooled.

    The held-out score is (held-out reward - the uniform random policy's on the held-out prompts) / (max - that):
    a reward's share of its maximum rises with the prompt length through chance alone, this does not.
    """
    final = exp.final
    if PROMPT_LENGTH not in exp.axes or f"final_{EVAL_ACCURACY}" not in final or final.empty:
        return
    lengths = exp.configs[PROMPT_LENGTH]
    if not all(isinstance(v, (int, np.integer)) for v in lengths):
        return
    held_out = f"final_{EVAL_REWARD}" in final
    reward = f"final_{EVAL_REWARD}" if held_out else "final_reward"
    chance = exp.configs["chance_eval_reward" if held_out else "chance_reward"]
    best = exp.configs["max_reward"]
    if best.isna().any() or chance.isna().any():
        return
    final = final.assign(
        length=final["configuration"].map(lengths),
        best=final["configuration"].map(best),
        chance=final["configuration"].map(chance),
    )
    final = final.assign(score=(final[reward] - final["chance"]) / (final["best"] - final["chance"]))
    rows = []
    for length, part in final.groupby("length", sort=True):
        rows.append(
            LengthRow(
                int(length),
                len(part),
                float(part[f"final_{EVAL_ACCURACY}"].mean()),
                float((part[reward] / part["best"]).mean()),
                float((part["chance"] / part["best"]).mean()),
                bootstrap_mean(part["score"].to_numpy(float), SEED),
            )
        )
    out.by_prompt_length = rows
    out.length_reward = "held-out" if held_out else "training"
    if len(rows) > 1:
        last = final.loc[final["length"] == rows[-1].length, "score"].to_numpy(float)
        first = final.loc[final["length"] == rows[0].length, "score"].to_numpy(float)
        low, high = stats.bootstrap_ci([last, first], stats.mean_difference, SEED)
        out.length_change = Interval(float(last.mean() - first.mean()), low, high, len(last) + len(first))


def _recipes(exp: Experiment, summary: pd.DataFrame, out: Findings) -> None:
    """Recipes ranked under each value of the other scale axes (other axes at the baseline's), and EOS lengths."""
    if "recipe" not in exp.axes:
        return
    groups = [a for a in exp.scale_axes if a != "recipe"]
    fixed = [a for a in exp.axes if a not in ("recipe", *groups)]
    base = exp.configs.loc[exp.baseline]
    chosen = summary["n"] > 0
    for axis in fixed:
        chosen &= summary[axis] == base[axis]
    rows = summary[chosen]
    for _, part in rows.groupby(_keys(rows, groups), sort=False):
        ranked = part.sort_values("score", ascending=False, kind="stable")
        labels = list(ranked["configuration"])
        apart, effects = separated(exp, list(zip(labels, labels[1:])))
        entries = [(ranked.iloc[0]["recipe"], ranked.iloc[0]["score"], None, False)]
        entries += [
            (r["recipe"], r["score"], effect, ok)
            for (_, r), effect, ok in zip(ranked.iloc[1:].iterrows(), effects, apart)
        ]
        out.rankings.append(Ranking(join_labels([value_label(a, part.iloc[0][a]) for a in groups]), entries))
    out.ranking_setting = join_labels([value_label(a, base[a]) for a in fixed])
    out.eos = _eos(exp, groups)


def _eos(exp: Experiment, groups: list[str]) -> list[Eos]:
    """Final response length with EOS on against the untrained policy's, per value of `groups` (runs pooled)."""
    final = exp.final
    if "eos" not in exp.axes or final.empty or "initial_response_length" not in final:
        return []
    final = final.assign(eos=final["configuration"].map(exp.configs["eos"]).astype(bool))
    if final["eos"].nunique() < 2:
        return []
    for axis in groups:
        final[axis] = final["configuration"].map(exp.configs[axis])
    out = []
    for _, part in final[final["eos"]].groupby(_keys(final[final["eos"]], groups), sort=False):
        where = join_labels([value_label(a, part.iloc[0][a]) for a in groups])
        now, before = part["final_response_length"].to_numpy(float), part["initial_response_length"].to_numpy(float)
        longest = max(exp.config(label).response_length for label in part["configuration"].unique())
        out.append(Eos(where, len(part), now.mean(), before.mean(), paired_effect(now, before, SEED), longest))
    return out


def link_shared(sections: list[Findings]) -> list[Findings]:
    """`sections` with each one's `shared` filled in (`shared_runs`): the one finding that spans experiments."""
    shared = shared_runs(sections)
    return [replace(f, shared=shared.get(f.experiment.name, [])) for f in sections]


def shared_runs(sections: list[Findings]) -> dict[str, list[tuple[str, int]]]:
    """Per experiment, the other experiments that hold its runs (same configuration and seed, hence the same
    `run_id`) and how many: `{"lecture": [("ablations", 96)]}` when every one of lecture's 96 runs is also an
    ablations run. Only experiments holding every one of its finished runs are listed (its numbers repeat theirs).
    """
    ids = {f.experiment.name: set(f.experiment.final["run_id"]) for f in sections}
    return {
        name: [(other, len(mine)) for other, theirs in ids.items() if other != name and mine <= theirs]
        for name, mine in ids.items()
        if mine
    }
