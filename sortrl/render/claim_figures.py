"""One figure per claim of the ledger, designed for what the claim says.

`FIGURES` maps a figure name (a claim's `figure`, or its kind's default in
`DEFAULTS`) to a function `(experiment, claim, tests) -> Figure`, with the
per-epoch curves it needs (`curves_needed`). Every figure has one panel per
test of the claim (one per regime), shares the report's style and writes
byte-identical PNGs (`sortrl.render.figures.png_bytes`).

| figure | shows |
| --- | --- |
| `paired` | each seed's effect (dots), the mean effect with its 95% CI, 0, and the equivalence margin (band) |
| `trend` | the score along the claim's axis: mean over seeds with its 95% CI, each step's verdict marked |
| `solve_bars` | solve rate with its Wilson 95% CI per configuration of the claim's axis, the `sft` reference dashed |
| `curves:<metric>` | the metric per epoch of the compared configurations, mean over seeds with a 95% CI band |
| `length_by_sign` | response length of responses below (solid) and above (dashed) their group's mean reward, per epoch |

A panel whose tests compare configurations that all sit at a bound of the metric (`Test.bound`: the floor-effect
rule of `sortrl.analysis.claims.at_bound`) says so in a red box (`bound_note`), and where the metric is on an axis
(`trend`, `solve_bars`) the bound is drawn as a dotted line: a tie at the floor is not evidence of no difference.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sortrl.analysis import stats
from sortrl.analysis.claims import MONOTONE, SEED, Test
from sortrl.analysis.experiment import Experiment, make_palette
from sortrl.analysis.scores import DERIVED, SCORES, bounds
from sortrl.analysis.verdicts import wilson
from sortrl.render.figures import Twin, style, subplots, twin_handles, twin_lines, twin_style
from sortrl.study.grid import Claim

DEFAULTS = {
    "pair": "paired", "each": "paired", "interaction": "paired", "magnitude": "paired", "trend": "trend",
    "within-run": "paired", "level": "paired",
}  # fmt: skip
"""The figure of a claim that names none, by its kind."""

MIN_HEIGHT = 2.6
"""Inches a `paired` figure needs for its title, x label and legend around one row (at 1.65 the layout collapsed)."""

XLABEL_CHARS = 60
"""Characters per line of a `paired` panel's x label (a panel is 4.6 inches wide: longer lines ran into the next)."""

REFERENCE = "sft"
"""The label part that marks the supervised reference configuration in a claim's figures."""


def figure_name(claim: Claim) -> str:
    return claim.figure or DEFAULTS[claim.kind]


def curves_needed(claims: list[Claim]) -> list[str]:
    """The per-epoch metrics the figures of `claims` draw (what `load_experiment` must keep besides its own)."""
    out = []
    for claim in claims:
        name = figure_name(claim)
        if name.startswith("curves:"):
            out.append(name.split(":", 1)[1])
        if name == "length_by_sign":
            out += ["response_length/below_mean", "response_length/above_mean"]
    return list(dict.fromkeys(out))


def metric_label(metric: str) -> str:
    """An axis label for a score: its name and unit."""
    if metric in DERIVED:
        return "final score (0 = uniform random policy, 1 = best)"
    if metric not in SCORES:  # a per-epoch curve (a within-run claim's)
        return f"{metric.replace('_', ' ')} per epoch"
    return f"{metric.replace('_', ' ')} ({SCORES[metric].unit})"


def _title(claim: Claim) -> str:
    return "\n".join(textwrap.wrap(f"{claim.id}: {claim.statement}", 90))


def bound_note(claim: Claim, tests: list[Test]) -> str:
    """What a panel says of its tests' bound flags (`Test.bound`, `sortrl.analysis.claims.at_bound`): `at the floor:
    every mean within ±0.05 of 0` when all of them sit at one bound of the metric, `2 of 3 tests at the floor` when
    some do, empty when none does. Drawn on the panel so that a reader of the figure alone does not take a tie at a
    bound (sides that cannot differ by more than the margin) for evidence of no difference."""
    flagged = [t.bound for t in tests if t.bound]
    if not flagged:
        return ""
    places = sorted(set(flagged))
    if len(flagged) == len(tests) and len(places) == 1:
        low, high = bounds(claim.metric)
        value = low if places[0] == "floor" else high
        return f"at the {places[0]}: every mean within ±{claim.margin:g} of {value:g}"
    return "; ".join(f"{flagged.count(p)} of {len(tests)} tests at the {p}" for p in places)


def _mark_bound(ax, claim: Claim, tests: list[Test], axis: str = "") -> None:
    """`bound_note` in a box on the panel, and with `axis` (`x` or `y`: the one the metric is drawn on) the bound
    itself as a dotted line; nothing when no test of the panel is flagged."""
    note = bound_note(claim, tests)
    if not note:
        return
    if axis:
        low, high = bounds(claim.metric)
        for place, value in (("floor", low), ("ceiling", high)):
            if value is not None and any(t.bound == place for t in tests):
                (ax.axhline if axis == "y" else ax.axvline)(value, color="tab:red", ls=":", lw=1.2)
    ax.text(
        0.02, 0.97, note, transform=ax.transAxes, ha="left", va="top", fontsize=7, color="tab:red",
        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "tab:red", "alpha": 0.85},
    )  # fmt: skip


def _panels(tests: list[Test], width: float = 4.6, height: float = 3.4) -> tuple[Figure, list]:

    wheres = list(dict.fromkeys(t.where for t in tests)) or [""]
    fig, axes = subplots(1, len(wheres), (0.8 + width * len(wheres), height))
    return fig, list(zip(wheres, axes[0], strict=True))


def paired(exp: Experiment, claim: Claim, tests: list[Test]) -> Figure:
    """Per-seed effects, their mean and 95% CI, zero and the margin band; one row per test, one panel per regime."""

    with style():
        fig, panels = _panels(tests, height=max(MIN_HEIGHT, 1.2 + 0.45 * _rows(tests)) + 0.2)
        for where, ax in panels:
            mine = [t for t in tests if _in(t, where)]
            rng = np.random.default_rng(SEED)
            for y, test in enumerate(mine):
                d = test.differences
                ax.scatter(d, y + rng.uniform(-0.18, 0.18, len(d)), s=6, alpha=0.35, color="tab:blue", lw=0)
                e = test.effect
                if not math.isnan(e.low):
                    ax.plot([e.low, e.high], [y, y], color="black", lw=2.2)
                ax.plot([e.point], [y], "o", color="black", ms=5)
                if not math.isnan(test.seed_effect):
                    ax.plot([test.seed_effect], [y], "*", color="tab:red", ms=10)
            ax.axvspan(-claim.margin, claim.margin, color="grey", alpha=0.15, lw=0)
            ax.axvline(0, color="grey", lw=1)
            ax.set_yticks(range(len(mine)), [_row_label(t, where) for t in mine])
            ax.set_ylim(-0.6, len(mine) - 0.4)
            ax.set_title(where or exp.name)
            _mark_bound(ax, claim, mine)
            words = textwrap.fill(f"effect per seed: {_effect_words(claim)}", XLABEL_CHARS)  # panels side by side
            ax.set_xlabel(f"{words}\n{metric_label(claim.metric)}")
        handles = [
            Line2D([], [], marker="o", color="tab:blue", ls="", alpha=0.5, label="one seed"),
            Line2D([], [], marker="o", color="black", lw=2.2, label="mean, 95% CI"),
            Line2D([], [], color="grey", lw=6, alpha=0.3, label=f"equivalence margin ±{claim.margin:g}"),
        ]
        if any(not math.isnan(t.seed_effect) for t in tests):
            handles.append(Line2D([], [], marker="*", color="tab:red", ls="", ms=10, label=f"seed {claim.seed} alone"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
        fig.suptitle(_title(claim))
    return fig


def _rows(tests: list[Test]) -> int:
    counts: dict[str, int] = {}
    for t in tests:
        counts[t.where] = counts.get(t.where, 0) + 1
    return max(counts.values()) if counts else 1


def _in(test: Test, where: str) -> bool:
    return test.where == where


def _row_label(test: Test, where: str) -> str:
    label = test.case or f"{test.n} seeds"
    if any(side.uniform > test.n / 2 for side in test.sides):  # most of a side's runs end near uniform
        label += "\n(learned nothing)"
    if test.bound:
        label += f"\n(at the {test.bound})"
    return label


def _effect_words(claim: Claim) -> str:
    new = ", ".join(f"{v}" for v in claim.new.values())
    old = ", ".join(f"{v}" for v in claim.old.values())
    if claim.versus:
        versus = [", ".join(f"{v}" for v in claim.versus[k].values()) for k in ("new", "old")]
        return f"|{new} - {old}| minus |{versus[0]} - {versus[1]}|"
    if claim.kind in ("interaction", "magnitude"):
        axis, (a, b) = next(iter(claim.within.items()))
        bars = "|" if claim.kind == "magnitude" else ""
        return f"{bars or '('}{new} - {old}{bars or ')'} at {a} minus at {b}"
    if claim.kind == "within-run":
        return f"Spearman rho of {claim.x} and {claim.metric} over a run's epochs"
    if claim.kind == "each":
        return f"each {claim.axis} minus {old}"
    if claim.kind == "level":
        return f"{new} minus the constant {claim.against:g}"
    return f"{new} minus {old}"


def trend(exp: Experiment, claim: Claim, tests: list[Test]) -> Figure:
    """The score along the claim's axis, mean with its 95% CI, from its steps' tests; one panel per setting."""

    with style():
        fig, panels = _panels(tests)
        by_label = {c.label: c for c in exp.grid.configurations()}
        for where, ax in panels:
            mine = [t for t in tests if _in(t, where)]
            steps = [t for t in mine if t.case != MONOTONE]
            sides = [steps[0].sides[1], *(t.sides[0] for t in steps)] if steps else []
            whole = next((t for t in mine if t.case == MONOTONE), None)
            x = np.arange(len(sides))
            ax.plot(x, [s.mean for s in sides], "o-", color="tab:blue")
            ax.fill_between(
                x, [s.interval.low for s in sides], [s.interval.high for s in sides], color="tab:blue", alpha=0.2, lw=0
            )
            ticks = [by_label[side.label].labels[claim.axis] for side in sides]  # the value: the x label names the axis
            ax.set_xticks(x, [t.removeprefix(f"{claim.axis}=") for t in ticks])
            for i, step in enumerate(steps):  # each step's verdict between its two points
                ax.annotate(
                    _STEP_MARK.get(step.verdict, "?"), (i + 0.5, np.mean([sides[i].mean, sides[i + 1].mean])),
                    ha="center", va="bottom", fontsize=8, color="tab:red" if step.verdict == "contradicted" else "black",
                )  # fmt: skip
            rho = f": rank correlation {whole.effect.point:+.2f} ({whole.verdict})" if whole is not None else ""
            ax.set_title(f"{where or exp.name}{rho}")
            ax.set_xlabel(claim.axis)
            ax.set_ylabel(metric_label(claim.metric))
            _mark_bound(ax, claim, mine, axis="y")
        fig.suptitle(_title(claim))
        # below the axes' labels (the PNG's tight bounding box takes it in)
        fig.text(0.5, -0.01, "step verdicts: + supported, x contradicted, = no effect, ? inconclusive", ha="center",
                 va="top", fontsize=8)  # fmt: skip
    return fig


_STEP_MARK = {"supported": "+", "contradicted": "x", "no effect": "=", "inconclusive": "?"}


def solve_bars(exp: Experiment, claim: Claim, tests: list[Test]) -> Figure:
    """Solve rate (Wilson 95% CI) of every configuration along the claim's axis, the `sft` reference dashed."""

    grid = exp.grid
    axis = claim.axis or next(iter(grid.axes))
    values = grid.axis_values(axis)
    with style():
        fig, panels = _panels(tests, width=5.2, height=0.9 + 0.32 * len(values))
        for where, ax in panels:
            setting = next((t.setting for t in tests if t.where == where), {})
            # the configurations whose test (this claim's, on solved seeds) sits at a bound: marked on their bar
            at = {t.sides[0].label: t.bound for t in tests if t.where == where and t.bound and claim.metric == "solved"}
            rows = []
            for v in values:
                found = grid.select({**claim.new, **setting, axis: v})
                solved = exp.final.loc[exp.final["configuration"] == found.label, "solved"].to_numpy(float)
                rows.append(
                    (str(v), wilson(int(np.nansum(solved)), int(np.isfinite(solved).sum())), at.get(found.label))
                )
            y = np.arange(len(rows))[::-1]
            for yi, (name, ci, bound) in zip(y, rows, strict=True):
                colour = "tab:green" if name == REFERENCE else "tab:blue"
                ax.barh(yi, ci.point, color=colour, alpha=0.6)
                ax.plot([ci.low, ci.high], [yi, yi], color="black", lw=1.2)
                count = f"{round(ci.point * ci.n)}/{ci.n}" + (f" ({bound})" if bound else "")
                ax.text(1.04, yi, count, va="center", fontsize=7, color="tab:red" if bound else "black")
            reference = next((ci for name, ci, _ in rows if name == REFERENCE), None)
            if reference is not None:
                ax.axvline(reference.point, color="tab:green", ls="--", lw=1)
            ax.set_yticks(y, [name for name, _, _ in rows])
            ax.set_xlim(0, 1.02)
            ax.set_xlabel("solve rate: share of seeds whose greedy policy sorts every prompt (Wilson 95% CI)")
            if reference is not None:
                ax.text(
                    reference.point, len(rows) - 0.3, " supervised (sft)", color="tab:green", fontsize=7, ha="right"
                )
            ax.set_title(where or exp.name)
            if claim.metric == "solved":  # the panel's tests compare these bars (a level or reference claim: none)
                _mark_bound(ax, claim, [t for t in tests if t.where == where], axis="x")
        fig.suptitle(_title(claim))
    return fig


def curves(metric: str) -> Callable[[Experiment, Claim, list[Test]], Figure]:
    """`metric` per epoch of the configurations each test compares: mean over seeds with a 95% CI band."""

    def draw(exp: Experiment, claim: Claim, tests: list[Test]) -> Figure:
        return _curve_panels(exp, claim, tests, [(metric, "-")], metric)

    return draw


def length_by_sign(exp: Experiment, claim: Claim, tests: list[Test]) -> Figure:
    """Response length of below-mean (solid) and above-mean (dashed) responses per epoch."""
    metrics = [("response_length/below_mean", "-"), ("response_length/above_mean", "--")]
    return _curve_panels(exp, claim, tests, metrics, "response length (tokens before EOS)")


def _curve_panels(
    exp: Experiment, claim: Claim, tests: list[Test], metrics: list[tuple[str, str]], ylabel: str
) -> Figure:
    """Per test (panel): each compared configuration's curve of each metric, mean over seeds with a 95% CI band.

    Epochs where some seed has no value (e.g. no response below its group's mean) are averaged over the seeds
    that have one, and drawn without a band. A configuration identical to an earlier one of its panel is drawn
    dashed, with a marker (`sortrl.render.figures.twin_style`), and the legend says which it is identical to.
    """
    names = list(dict.fromkeys(_short(s.label, t) for t in tests for s in t.sides))
    palette = make_palette(names)
    twins: dict[str, Twin] = {}
    short = {s.label: _short(s.label, t) for t in tests for s in t.sides}
    with style():
        fig, panels = _panels(tests)
        for where, ax in panels:
            mine = [t for t in tests if _in(t, where)]
            repeats = twin_lines(exp, {s.label: [s.label] for t in mine for s in t.sides})
            twins |= repeats
            for test in mine:
                for side in test.sides:
                    part = exp.curves[exp.curves["configuration"] == side.label]
                    colour = palette[_short(side.label, test)]
                    for metric, line in metrics:
                        if metric not in part or part.empty:
                            continue
                        wide = part.pivot(index="epoch", columns="seed", values=metric)
                        values = wide.to_numpy(dtype=float)
                        over = twin_style(repeats[side.label]) if side.label in repeats else {"ls": line}
                        with np.errstate(all="ignore"):
                            ax.plot(wide.index, np.nanmean(values, axis=1), color=colour, lw=1.4, **over)
                        complete = ~np.isnan(values).any(axis=1)
                        if complete.any():
                            low, high = stats.curve_ci(values[complete], stats.mean, SEED)
                            ax.fill_between(wide.index[complete], low, high, color=colour, alpha=0.15, lw=0)
            ax.set_title(where or exp.name)
            _mark_bound(ax, claim, mine)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
        handles = [Line2D([], [], color=c, lw=1.4, label=name) for name, c in palette.items()]
        handles += [
            Line2D([], [], color="grey", ls=line, label=m.split("/")[-1]) for m, line in metrics if len(metrics) > 1
        ]
        handles += twin_handles(twins, lambda label: palette[short[label]], short.get)
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)
        fig.suptitle(_title(claim))
    return fig


def _short(label: str, test: Test) -> str:
    """A configuration's label without the value of the test's own setting (its panel says it: the regime)."""
    drop = {str(v) for v in test.setting.values()}
    return " / ".join(p for p in label.split(" / ") if p not in drop) or label


AFTER_LEDGER = ("trend",)
"""Claim figures that print their tests' verdicts: drawn once the ledger has corrected every test (`sortrl report`
draws them in its main process), not with an experiment's other figures."""

FIGURES: dict[str, Callable[[Experiment, Claim, list[Test]], Figure]] = {
    "paired": paired,
    "trend": trend,
    "solve_bars": solve_bars,
    "length_by_sign": length_by_sign,
}
"""Claim figures by name; `curves:<metric>` names are made by `curves`."""


def draw(exp: Experiment, claim: Claim, tests: list[Test]) -> Figure:
    """The figure of `claim` (its `figure`, or its kind's default) from its tests on `exp`."""
    name = figure_name(claim)
    fn = curves(name.split(":", 1)[1]) if name.startswith("curves:") else FIGURES[name]
    return fn(exp, claim, tests)
