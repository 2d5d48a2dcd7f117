"""Findings: what an experiment's numbers say, as data, for the renderers to put into words.

`findings(exp, summary)` turns a loaded experiment (`sortrl.experiment`) and
its summary table into a `Findings`: every configuration compared with its
reference (P(improve) with its CI and a verdict), the best configurations and who is
tied with them, and the grid-specific findings (held-out performance by prompt
length, recipes ranked, response length with EOS), with the caveats that go
with them (how many intervals would exclude 0.5 by chance). `REPORT.md`
(`sortrl.report`) and the README's generated blocks (`sortrl.readme`) are two
renderings of the same findings; neither computes a number of its own.
Numbers are formatted here too (`fmt_num`, `fmt_interval`), so both say them
alike. Everything is pure: no files, no figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sortrl import stats
from sortrl.experiment import (
    EVAL_ACCURACY,
    EVAL_REWARD,
    PROMPT_LENGTH,
    Experiment,
)
from sortrl.grid import join_labels, value_label

VERDICTS = ("better", "worse", "indistinguishable")
"""Where a P(improve) CI lies relative to 0.5: above, below, or containing it."""


# --- numbers as text -------------------------------------------------------------
def fmt_num(x: float | None, digits: int = 3) -> str:
    """`x` with `digits` decimals; an en dash for a missing value (None or NaN)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_interval(x: float, low: float, high: float, digits: int = 3, sign: bool = False) -> str:
    """`x [low, high]`, each with `digits` decimals (and a sign with `sign`)."""
    if sign:
        return f"{x:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
    return f"{fmt_num(x, digits)} [{fmt_num(low, digits)}, {fmt_num(high, digits)}]"


def fmt_ci(row: pd.Series, stat: str, digits: int = 3) -> str:
    """`stat [low, high]` from a summary row's `stat`, `stat_ci_low` and `stat_ci_high`."""
    return fmt_interval(row[stat], row[f"{stat}_ci_low"], row[f"{stat}_ci_high"], digits)


def verdict(low: float, high: float) -> str:
    """`better`, `worse` or `indistinguishable`: where a P(improve) CI lies relative to 0.5."""
    if low > 0.5:
        return "better"
    if high < 0.5:
        return "worse"
    return "indistinguishable"


# --- findings ----------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """A configuration against its reference: P(final reward > the reference's) with its 95% CI."""

    configuration: str
    reference: str
    p: float
    low: float
    high: float
    verdict: str
    """One of `VERDICTS`, or `""` when there is no interval (fewer than two finished runs on a side)."""

    @property
    def interval(self) -> str:
        return fmt_interval(self.p, self.low, self.high, 2)


@dataclass(frozen=True)
class Best:
    """The highest IQM of the final reward among the configurations of one reward scale, and who shares it."""

    scale: str
    """Labels of the scale axes' values (`prompt_length=4`), `""` when the grid varies none."""
    names: list[str]
    """The configurations at the top (several when tied), without the scale axes' labels."""
    iqm: float
    low: float
    high: float
    max_reward: float


@dataclass(frozen=True)
class Ranking:
    """Recipes ranked by IQM of the final reward under one value of the other scale axes (`where`)."""

    where: str
    entries: list[tuple[str, float, bool]]
    """(recipe, IQM, whether its CI lies wholly below the previous recipe's), best first."""


@dataclass
class Findings:
    """Everything `REPORT.md` and the README say about one experiment (see the module docstring)."""

    experiment: Experiment
    summary: pd.DataFrame
    figures: list[str] = field(default_factory=list)
    """Names of the figures drawn (`sortrl.figures.FIGURES`)."""
    comparisons: list[Comparison] = field(default_factory=list)
    """Every configuration that has a reference other than itself, in grid order."""
    chance: float = 0.0
    """How many of the comparisons with an interval would exclude 0.5 by chance alone (uncorrected)."""
    best: list[Best] = field(default_factory=list)
    by_prompt_length: pd.DataFrame | None = None
    """Per prompt length (index): `runs`, final held-out greedy `accuracy`, final `reward` (see `prompt_lengths`)."""
    length_reward: str = ""
    """What `by_prompt_length`'s reward is: `held-out` or `training` mean reward."""
    length_unit: str = ""
    """Its unit: a fraction `of its maximum`, or reward points."""
    rankings: list[Ranking] = field(default_factory=list)
    ranking_setting: str = ""
    """The labels of the axes held at the baseline's values while recipes are ranked."""
    eos: list[tuple[str, float, float]] = field(default_factory=list)
    """(where, final response length with EOS, without) per value of the other scale axes."""

    @property
    def with_interval(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict]

    def verdicts(self, which: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == which]


def findings(exp: Experiment, summary: pd.DataFrame, figures: list[str] | None = None) -> Findings:
    """The findings of `exp` (its summary table from `sortrl.experiment.summarize`)."""
    comparisons = _comparisons(summary)
    with_interval = sum(1 for c in comparisons if c.verdict)
    out = Findings(
        experiment=exp,
        summary=summary,
        figures=list(figures or []),
        comparisons=comparisons,
        chance=(1 - stats.CONFIDENCE) * with_interval,
        best=_best(exp, summary),
    )
    _prompt_lengths(exp, out)
    _recipes(exp, summary, out)
    return out


def _comparisons(summary: pd.DataFrame) -> list[Comparison]:
    rows = summary[summary["configuration"] != summary["reference"]]
    return [
        Comparison(
            r["configuration"],
            r["reference"],
            r["p_improve"],
            r["p_improve_ci_low"],
            r["p_improve_ci_high"],
            "" if math.isnan(r["p_improve_ci_low"]) else verdict(r["p_improve_ci_low"], r["p_improve_ci_high"]),
        )
        for _, r in rows.iterrows()
    ]


def _best(exp: Experiment, summary: pd.DataFrame) -> list[Best]:
    """Highest IQM of the final reward: overall, or per value of the axes that change the reward's scale."""
    rows = summary[summary["n"] > 0]
    if rows.empty:
        return []
    others = [a for a in exp.axes if a not in exp.scale_axes]
    out = []
    for _, part in rows.groupby(_keys(rows, exp.scale_axes), sort=False):
        top = part[part["iqm"] == part["iqm"].max()]
        first = top.iloc[0]
        names = [
            r["configuration"]
            if not exp.scale_axes
            else join_labels([value_label(a, r[a]) for a in others], "all runs")
            for _, r in top.iterrows()
        ]
        scale = join_labels([value_label(a, first[a]) for a in exp.scale_axes])
        out.append(Best(scale, names, first["iqm"], first["iqm_ci_low"], first["iqm_ci_high"], first["max_reward"]))
    return out


def _keys(rows: pd.DataFrame, axes: list[str]) -> pd.Series:
    """A hashable group key per row from the values of `axes` (one group when there are none)."""
    return rows[axes].map(repr).apply(tuple, axis=1) if axes else pd.Series(0, index=rows.index)


def _prompt_lengths(exp: Experiment, out: Findings) -> None:
    """Final held-out greedy accuracy and reward per prompt length, every configuration of a length pooled."""
    final = exp.final
    if PROMPT_LENGTH not in exp.axes or f"final_{EVAL_ACCURACY}" not in final or final.empty:
        return
    lengths = exp.configs[PROMPT_LENGTH]
    if not all(isinstance(v, (int, np.integer)) for v in lengths):
        return
    final = final.assign(
        length=final["configuration"].map(lengths),
        scale=final["configuration"].map(exp.configs["max_reward"]),
    )
    reward = f"final_{EVAL_REWARD}" if f"final_{EVAL_REWARD}" in final else "final_reward"
    known = final["scale"].notna().all()
    final = final.assign(reward=final[reward] / final["scale"] if known else final[reward])
    out.by_prompt_length = final.groupby("length", sort=True).agg(
        runs=("run_id", "size"), accuracy=(f"final_{EVAL_ACCURACY}", "mean"), reward=("reward", "mean")
    )
    out.length_unit = "of its maximum" if known else "reward points (whose maximum grows with the length)"
    out.length_reward = "held-out" if reward != "final_reward" else "training"


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
        ranked = part.sort_values("iqm", ascending=False, kind="stable")
        entries = [
            (r["recipe"], r["iqm"], i > 0 and ranked.iloc[i - 1]["iqm_ci_low"] > r["iqm_ci_high"])
            for i, (_, r) in enumerate(ranked.iterrows())
        ]
        out.rankings.append(Ranking(join_labels([value_label(a, part.iloc[0][a]) for a in groups]), entries))
    out.ranking_setting = join_labels([value_label(a, base[a]) for a in fixed])
    out.eos = _eos(exp, groups)


def _eos(exp: Experiment, groups: list[str]) -> list[tuple[str, float, float]]:
    """Final response length with EOS on vs off, per value of `groups` (all other settings pooled)."""
    final = exp.final
    if "eos" not in exp.axes or final.empty:
        return []
    final = final.assign(eos=final["configuration"].map(exp.configs["eos"]).astype(bool))
    if final["eos"].nunique() < 2:
        return []
    for axis in groups:
        final[axis] = final["configuration"].map(exp.configs[axis])
    out = []
    for _, part in final.groupby(_keys(final, groups), sort=False):
        lengths = part["final_response_length"]
        where = join_labels([value_label(a, part.iloc[0][a]) for a in groups])
        out.append((where, lengths[part["eos"]].mean(), lengths[~part["eos"]].mean()))
    return out
