"""The report's figures: one function per figure, each returning a matplotlib `Figure`.

`FIGURES` maps a figure's name to a `FigureSpec`: its function `(experiment,
summary) -> Figure or None` (None when the figure does not apply to the
experiment), its caption and the metrics whose per-epoch curves it draws
(which `sortrl.render.publish.write_report` asks `load_experiment` to keep); the
report saves each as `results/figures/<exp>_<name>.png`. Figures are made without pyplot (no global
state) and drawn in one fixed style (`style`: matplotlib's defaults plus
seaborn's whitegrid, whatever the user's matplotlibrc), and `png_bytes` writes
no timestamp or version metadata, so equal runs give byte-identical PNGs.
Mean reward, never loss, is on every reward axis; bands and error bars are 95%
percentile-bootstrap CIs over seeds (`sortrl.analysis.stats.bootstrap_ci`).
A line that would hide another drawing the same numbers (identical
configurations, `sortrl.analysis.experiment.identical_configurations`) is
dashed, with a marker, so that both show, and the legend says which it is
identical to (`twin_lines`, `twin_style`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sortrl.analysis import stats
from sortrl.analysis.experiment import (
    EVAL_ACCURACY,
    EVAL_REWARD,
    LECTURE_SEED,
    MARGIN,
    PROMPT_LENGTH,
    SEED,
    VERDICTS,
    Experiment,
    is_lecture_experiment,
    make_palette,
    reward_ceiling,
    reward_maxima,
)
from sortrl.study.grid import join_labels, value_label

CURVE_POINTS = 26
"""Epochs (evenly spaced, last included) at which IQM-over-steps curves are bootstrapped."""

TWIN_MARKERS = ("o", "s", "^", "D", "v", "P")
"""Markers of the lines drawn over lines with the same numbers: the first such line's, the second's, ..."""

TWIN_DASH = 4.0
"""Length of the dashes of a line drawn over lines with the same numbers (points, times the line width)."""

PNG_OPTIONS = {"dpi": 110, "bbox_inches": "tight", "metadata": {"Software": None}}
"""`savefig` options: no Software/date metadata, so equal figures give equal bytes."""


def reward_label(exp: Experiment, what: str = "mean reward", note: str = "", configuration: str | None = None) -> str:
    """Axis label for a reward axis: `mean reward (max 5)` when all configurations share a known maximum.

    With `exp.scales_differ` (maxima differ, e.g. 2L-1 for prompts of length
    L, or rewards differ), the axis shows each configuration's reward
    chance-normalised, (reward - chance) / (max - chance) with its own chance
    and maximum (`_scaled`), and says so in short lines (faceted figures stack
    them): `mean reward, chance-normalised`, `(reward − chance) / (max − chance)`,
    `(max 5, 7, 9 by prompt_length)`. `configuration`: the axis shows only that
    configuration (and ones of the same scale, such as its reference) in
    reward points, labelled with its own maximum. `note`, if given, goes on a
    line of its own.
    """
    if configuration is not None:
        ceiling = exp.configs.at[configuration, "max_reward"]
        label = f"{what} (max {ceiling:g})" if not math.isnan(ceiling) else what
    elif exp.scales_differ:
        label = f"{what}, chance-normalised\n(reward − chance) / (max − chance)\n({reward_maxima(exp)})"
    else:
        ceiling = reward_ceiling(exp)
        label = f"{what} (max {ceiling:g})" if ceiling is not None else what
    return f"{label}\n{note}" if note else label


def _scaled(exp: Experiment, label: str, values: Any, chance: str = "chance_reward") -> Any:
    """Rewards of configuration `label` in the units of `reward_label`: chance-normalised if `scales_differ`.

    `chance`: the `configs` column of the chance score (`chance_eval_reward` for held-out rewards).
    """
    if not exp.scales_differ:
        return values
    floor, best = exp.configs.at[label, chance], exp.configs.at[label, "max_reward"]
    return (values - floor) / (best - floor)


SUMMARY_REWARDS = ("mean", "mean_ci_low", "mean_ci_high", "iqm", "iqm_ci_low", "iqm_ci_high")
"""Summary columns in reward points (rescaled by `_in_units`)."""


def _in_units(
    exp: Experiment, table: pd.DataFrame, columns: tuple[str, ...], chance: str = "chance_reward"
) -> pd.DataFrame:
    """`table` (one row per run or configuration, a `configuration` column) with `columns` in `reward_label` units.

    Chance-normalisation is linear, so it maps means, IQMs and CI ends alike.
    """
    if not exp.scales_differ:
        return table
    best = table["configuration"].map(exp.configs["max_reward"]).to_numpy(dtype=float)
    floor = table["configuration"].map(exp.configs[chance]).to_numpy(dtype=float)
    return table.assign(**{c: (table[c].to_numpy(dtype=float) - floor) / (best - floor) for c in columns if c in table})


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Matplotlib's own defaults (not the user's matplotlibrc or a notebook's) plus seaborn's whitegrid, for a while."""
    with mpl.rc_context():
        mpl.rcdefaults()
        mpl.rcParams.update({**sns.axes_style("whitegrid"), "axes.titlesize": 10, "axes.labelsize": 9, "font.size": 9})
        yield


def subplots(nrows: int, ncols: int, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, np.ndarray]:
    """A figure with axes `[row col]`, made without pyplot: no global state, nothing to close; a notebook shows it."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _facets(
    exp: Experiment, sharex: bool = True, sharey: bool = True, labels: list[str] | None = None
) -> tuple[Figure, list[tuple[Any, list[str]]]]:
    """Subplots with columns = the grid's 2nd axis and rows = its 3rd; each with its configurations.

    `labels`: draw only these configurations (and only the panels that hold some).
    """
    configs = exp.configs if labels is None else exp.configs.loc[labels]
    cols = list(dict.fromkeys(configs["col"]))
    rows = list(dict.fromkeys(configs["row"]))
    size = (3.2 + 4.2 * len(cols), 0.6 + 3.0 * len(rows))
    fig, grid = subplots(len(rows), len(cols), size, sharex=sharex, sharey=sharey)
    panels = []
    for (i, row), (j, col) in itertools.product(enumerate(rows), enumerate(cols)):
        ax = grid[i][j]
        ax.set_title(join_labels([v for v in (col, row) if v]))
        chosen = configs[(configs["col"] == col) & (configs["row"] == row)]
        panels.append((ax, list(chosen.index)))
    return fig, panels


def _facet_note(exp: Experiment) -> str:
    axes = exp.axes
    parts = [f"columns: {axes[1]}"] if len(axes) > 1 else []
    parts += [f"rows: {axes[2]}"] if len(axes) > 2 else []
    return f" ({', '.join(parts)})" if parts else ""


def _finish_facets(fig: Figure, exp: Experiment, extra: list[Line2D] | None = None) -> None:
    """Axis labels on the outer panels only, and one legend of the colours (plus `extra` entries) at the right."""
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        if not spec.is_first_col():
            ax.set_ylabel("")
        if not spec.is_last_row():
            ax.set_xlabel("")
    hue_axes = exp.axes[:1] + exp.axes[3:]
    handles = [Line2D([], [], color=c, lw=2, label=k) for k, c in exp.palette.items()] + (extra or [])
    fig.legend(handles=handles, loc="outside right center", frameon=False, title=" / ".join(hue_axes) or None)


class Twin(NamedTuple):
    """A line that draws the same numbers as an earlier line of its panel (identical configurations)."""

    first: str
    """The first line (in drawing order) with those numbers: drawn as usual."""
    place: int
    """Its place among the lines with those numbers (1 for the first drawn over `first`, ...)."""
    count: int
    """How many lines draw those numbers, `first` included."""


def twin_lines(exp: Experiment, lines: dict[str, list[str]]) -> dict[str, Twin]:
    """The lines of one panel that would hide an earlier one: each line's configurations are identical to the
    earlier line's, one for one (`Experiment.identical`).

    `lines`: each line's name -> the configurations it draws (one, or one per x value, in the same order for every
    line), in drawing order. Returns the name of each line that repeats an earlier one -> `Twin`.
    """
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, labels in lines.items():
        groups.setdefault(tuple(exp.identical.get(label, label) for label in labels), []).append(name)
    return {name: Twin(names[0], k, len(names)) for names in groups.values() for k, name in enumerate(names) if k}


def twin_style(twin: Twin) -> dict[str, Any]:
    """Line options of a `Twin`: dashes that leave the lines with the same numbers showing in turn (each one's dash
    at its own place along the line), and a marker of its own, at its own places."""
    dashes = (TWIN_DASH, (twin.count - 1) * TWIN_DASH)
    return {
        "ls": ((twin.count - twin.place) * TWIN_DASH, dashes),  # "on" from place x TWIN_DASH, every count x TWIN_DASH
        "marker": TWIN_MARKERS[(twin.place - 1) % len(TWIN_MARKERS)],
        "markevery": (0.1 * (twin.place - 1) / (twin.count - 1), 0.1),  # every tenth of the axes' diagonal
        "ms": 4,
    }


def twin_handles(
    twins: dict[str, Twin], colour: Callable[[str], Any], name: Callable[[str], str] = str
) -> list[Line2D]:
    """Legend entries of the lines drawn over identical ones: `rloo: identical to centered_rewards`, dashed, with the
    line's marker. `colour`: a line's colour by name; `name`: what the legend calls a line."""
    labels = {f"{name(line)}: identical to {name(twin.first)}": (line, twin) for line, twin in twins.items()}
    return [  # one entry per text: a claim figure shows one pair, under the same short names, in each panel
        Line2D([], [], color=colour(line), lw=1.6, ls="--", marker=twin_style(twin)["marker"], ms=4, label=label)
        for label, (line, twin) in labels.items()
    ]


def _highlight_seed(exp: Experiment) -> int | None:
    seed = exp.grid.highlight_seed
    return seed if seed is not None and (exp.final["seed"] == seed).any() else None


def _seed_note(exp: Experiment, seed: int) -> str:
    if seed == LECTURE_SEED:
        return f"seed {seed} = the lecture's run" if is_lecture_experiment(exp) else f"seed {seed} = the lecture's seed"
    return f"seed {seed}"


def _curves(
    exp: Experiment,
    metric: str,
    statistic: Callable[..., Any],
    ylabel: str,
    title: str,
    points: int | None = None,
    highlight: bool = True,
    labels: list[str] | None = None,
    reward: bool = False,
) -> Figure:
    """`statistic` over seeds of `metric` vs step per configuration, 95% bootstrap CI band, faceted.

    `points`: bootstrap at that many evenly spaced epochs (last included) instead of every epoch.
    The title says at how many of the epochs (`title`, then `at 26 of the 100 epochs`, when not
    all). With `highlight`, the grid's highlight seed's own curve is drawn on top, dashed. `labels`: only
    these configurations. `reward`: `metric` is a reward, drawn in the units of `reward_label`.
    """
    every = np.sort(exp.curves["epoch"].unique())
    epochs = every
    if points is not None:
        epochs = every[np.unique(np.linspace(0, len(every) - 1, points).round().astype(int))]
        title += f" at {len(epochs)} of the {len(every)} epochs" if len(epochs) < len(every) else ""
    runs = exp.curves[exp.curves["epoch"].isin(epochs)]
    seed = _highlight_seed(exp) if highlight else None
    twins: dict[str, Twin] = {}
    with style():
        fig, panels = _facets(exp, sharey=exp.panels_share_scale, labels=labels)
        for ax, shown in panels:
            mine = twin_lines(exp, {label: [label] for label in shown})
            twins |= mine
            for label in shown:
                part = runs[runs["configuration"] == label]
                wide = part.pivot(index="step", columns="seed", values=metric).dropna()  # [step run]
                if wide.empty:
                    continue
                if reward:
                    wide = _scaled(exp, label, wide)
                low, high = stats.curve_ci(wide.to_numpy(), statistic, SEED)
                colour = exp.colour(label)
                over = twin_style(mine[label]) if label in mine else {}
                ax.plot(wide.index, statistic(wide.to_numpy()), color=colour, lw=1.6, **over)
                ax.fill_between(wide.index, low, high, color=colour, alpha=0.2, lw=0)
                if seed is not None and seed in wide:
                    ax.plot(wide.index, wide[seed], ls=over.get("ls", "--"), lw=0.9, color=colour)
            ax.set_xlabel("step (inner optimiser steps)")
            ax.set_ylabel(ylabel)
        name = "mean" if statistic is stats.mean else "IQM"
        extra = [Line2D([], [], color="grey", lw=1.6, label=f"{name} over seeds, band = 95% CI")]
        if seed is not None:
            extra.append(Line2D([], [], color="grey", ls="--", lw=0.9, label=f"{_seed_note(exp, seed)} (one run)"))
        _finish_facets(fig, exp, extra + twin_handles(twins, exp.colour))
        fig.suptitle(f"{exp.name}: {title}, {_seeds_per_configuration(exp, labels)}{_facet_note(exp)}")
    return fig


def _seeds_per_configuration(exp: Experiment, labels: list[str] | None) -> str:
    """`32 seeds per configuration`, or `30–32 seeds per configuration` when the configurations drawn (`labels`, or
    every one) finished different numbers of seeds."""
    final = exp.final if labels is None else exp.final[exp.final["configuration"].isin(labels)]
    counts = final.groupby("configuration")["seed"].nunique()
    low, high = (counts.min(), counts.max()) if len(counts) else (0, 0)
    return f"{low if low == high else f'{low}–{high}'} seeds per configuration"


def plot_reward_curves(exp: Experiment) -> Figure | None:
    """Mean reward vs step: mean over seeds with a 95% bootstrap CI band, the highlight seed dashed."""
    if exp.curves.empty:
        return None
    return _curves(exp, "mean_reward", stats.mean, reward_label(exp), "mean reward during training", reward=True)


def plot_sample_efficiency(exp: Experiment) -> Figure | None:
    """IQM over seeds of the mean reward vs step, 95% bootstrap CI band, at `CURVE_POINTS` epochs."""
    if exp.curves.empty:
        return None
    return _curves(
        exp,
        "mean_reward",
        stats.iqm,
        reward_label(exp, "IQM over seeds of mean reward"),
        "sample efficiency, IQM over seeds of the mean reward",
        points=CURVE_POINTS,
        highlight=False,
        reward=True,
    )


def plot_response_length(exp: Experiment) -> Figure | None:
    """Mean response length (tokens before EOS) vs step, for the configurations with EOS on (if any)."""
    trained = set(exp.final["configuration"])
    with_eos = [label for label in exp.labels if label in trained and exp.config(label).eos]
    if exp.curves.empty or not with_eos:
        return None
    return _curves(
        exp,
        "response_length",
        stats.mean,
        "response length (tokens before EOS)",
        "response length during training, runs with EOS",
        labels=with_eos,
    )


def _per_config_axes(
    exp: Experiment, names: list[str], ncols: int = 1, width: float = 5.0
) -> tuple[Figure, Any, np.ndarray]:
    """A figure with one row per name (first at the top) in each of `ncols` panels; returns the row positions."""
    n = len(names)
    fig, axes = subplots(1, ncols, (1.5 + width * ncols, 1.6 + (0.3 if n > 12 else 0.5) * n), sharey=True)
    y = np.arange(n)[::-1].astype(float)
    for ax in axes[0]:
        ax.set_yticks(y, names)
        ax.set_ylim(-0.7, n - 0.3)
    return fig, axes[0], y


def _hbar(ax: Any, x: float, low: float, high: float, y: float, colour: Any, **kw: Any) -> None:
    if not math.isnan(x):
        ax.errorbar(
            [x],
            [y],
            xerr=[[x - low], [high - x]] if not math.isnan(low) else None,
            fmt="o",
            color=colour,
            ecolor=colour,
            elinewidth=2,
            capsize=3,
            **kw,
        )


def plot_final_reward(exp: Experiment, summary: pd.DataFrame) -> Figure:
    """Final reward of every seed (dots) and the mean over seeds with its 95% bootstrap CI (black)."""
    rng = np.random.default_rng(SEED)
    seed = _highlight_seed(exp)
    final = _in_units(exp, exp.final, ("final_reward",))
    with style():
        fig, (ax,), y = _per_config_axes(exp, exp.labels, width=6.0)
        for yi, (label, row) in zip(y, _in_units(exp, summary, SUMMARY_REWARDS).set_index("configuration").iterrows()):
            part = final[final["configuration"] == label]
            jitter = rng.uniform(-0.18, 0.18, len(part))
            ax.scatter(part["final_reward"], yi + jitter, s=12, alpha=0.6, color=exp.colour(label), lw=0)
            if seed is not None:
                mine = part["seed"] == seed
                ax.scatter(
                    part.loc[mine, "final_reward"],
                    yi + jitter[mine.to_numpy()],
                    s=70,
                    marker="*",
                    color=exp.colour(label),
                    edgecolor="black",
                    lw=0.6,
                    zorder=3,
                )
            _hbar(ax, row["mean"], row["mean_ci_low"], row["mean_ci_high"], yi + 0.32, "black", ms=4)
        ax.set_xlabel(reward_label(exp, "final mean reward", "mean over each run's last 10% of epochs"))
        handles = [
            Line2D([], [], color="grey", marker="o", ls="", ms=4, label="one seed"),
            Line2D([], [], color="black", marker="o", ls="-", ms=4, label="mean, 95% bootstrap CI"),
        ]
        if seed is not None:
            handles.append(
                Line2D(
                    [], [], color="grey", marker="*", ls="", ms=10, markeredgecolor="black", label=_seed_note(exp, seed)
                )
            )
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax.set_title(f"{exp.name}: final mean reward per configuration, every seed")
    return fig


def plot_interval_estimates(exp: Experiment, summary: pd.DataFrame) -> Figure:
    """Mean and IQM of the final reward per configuration with 95% bootstrap CIs; dotted = baseline."""
    with style():
        fig, axes, y = _per_config_axes(exp, exp.labels, ncols=2, width=3.6)
        table = _in_units(exp, summary, SUMMARY_REWARDS).set_index("configuration")
        for ax, stat, name in zip(axes, ("mean", "iqm"), ("mean", "IQM (interquartile mean)")):
            for yi, (label, row) in zip(y, table.iterrows()):
                _hbar(ax, row[stat], row[f"{stat}_ci_low"], row[f"{stat}_ci_high"], yi, exp.colour(label))
            if not exp.scale_axes:
                ax.axvline(table.at[exp.baseline, stat], color="grey", ls=":", lw=1)
            ax.set_xlabel(reward_label(exp, f"final reward, {name}"))
        dotted = "" if exp.scale_axes else "; dotted = baseline"
        fig.suptitle(f"{exp.name}: interval estimates of the final reward (95% bootstrap CIs{dotted})")
    return fig


def plot_improvement(exp: Experiment, summary: pd.DataFrame) -> Figure | None:
    """P(final reward of a configuration > its reference's) with a 95% bootstrap CI; line at 0.5."""
    table = summary[summary["configuration"] != summary["reference"]]
    if table.empty:
        return None
    names = [c if r == exp.baseline else f"{c}  (vs {r})" for c, r in zip(table["configuration"], table["reference"])]
    with style():
        fig, (ax,), y = _per_config_axes(exp, names, width=5.5)
        for yi, (_, row) in zip(y, table.iterrows()):
            colour = exp.colour(row["configuration"])
            _hbar(ax, row["p_improve"], row["p_improve_ci_low"], row["p_improve_ci_high"], yi, colour)
        ax.axvline(0.5, color="black", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel(
            f"P(final reward of configuration > final reward of {exp.compared_with})\nbaseline: {exp.baseline}"
        )
        ax.set_title(f"{exp.name}: probability of improvement over {exp.compared_with} (95% bootstrap CIs)")
    return fig


VERDICT_COLOURS = dict(zip(VERDICTS, (sns.color_palette("colorblind")[i] for i in (2, 3, 7, 1))))
"""Colour of each comparison verdict (colorblind-safe: green, vermillion, grey, orange)."""


def plot_effects(exp: Experiment, summary: pd.DataFrame) -> Figure | None:
    """Paired effect on the final score of each configuration over its reference, 95% CI, coloured by verdict.

    The effect is the mean over seeds of the per-seed difference of the final
    score (chance-normalised); the shaded band is the equivalence margin
    +-`MARGIN`; the colour is the Holm-corrected verdict (`summarize`).
    """
    table = summary[(summary["configuration"] != summary["reference"]) & (summary["verdict"] != "")]
    if table.empty:
        return None
    names = [c if r == exp.baseline else f"{c}  (vs {r})" for c, r in zip(table["configuration"], table["reference"])]
    with style():
        fig, (ax,), y = _per_config_axes(exp, names, width=7.0)
        ax.axvspan(-MARGIN, MARGIN, color="grey", alpha=0.15, lw=0)
        ax.axvline(0, color="black", lw=1)
        for yi, (_, row) in zip(y, table.iterrows()):
            _hbar(ax, row["effect"], row["effect_ci_low"], row["effect_ci_high"], yi, VERDICT_COLOURS[row["verdict"]])
        handles = [Line2D([], [], color=c, marker="o", lw=2, label=v) for v, c in VERDICT_COLOURS.items()]
        handles.append(Line2D([], [], color="grey", alpha=0.3, lw=8, label=f"margin ±{MARGIN:g}"))
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, title="Holm verdict")
        ax.set_xlabel(
            f"final score minus {exp.compared_with}'s, mean over seeds of the per-seed difference\n"
            f"(final score = (reward − chance) / (max − chance)); baseline: {exp.baseline}"
        )
        ax.set_title(f"{exp.name}: paired effects on the final score (95% bootstrap CIs)")
    return fig


def plot_performance_profile(exp: Experiment) -> Figure | None:
    """Fraction of runs with final reward > tau (rliable's convention), over tau, per configuration, 95% CI band."""
    if exp.final.empty:
        return None
    final = _in_units(exp, exp.final, ("final_reward",))
    twins: dict[str, Twin] = {}
    with style():
        fig, panels = _facets(exp, sharex=exp.panels_share_scale)
        for ax, labels in panels:
            mine = twin_lines(exp, {label: [label] for label in labels})
            twins |= mine
            values = final.loc[final["configuration"].isin(labels), "final_reward"].to_numpy()
            if exp.panels_share_scale:
                values = final["final_reward"].to_numpy()
            if not len(values):
                continue
            taus = np.linspace(values.min(), values.max(), 101)
            for label in labels:
                x = final.loc[final["configuration"] == label, "final_reward"].to_numpy(dtype=float)
                if not len(x):
                    continue
                low, high = stats.performance_profile_ci(x, taus, SEED)
                colour = exp.colour(label)
                over = twin_style(mine[label]) if label in mine else {}
                ax.plot(taus, stats.performance_profile(x, taus), color=colour, lw=1.6, **over)
                ax.fill_between(taus, low, high, color=colour, alpha=0.15, lw=0)
            ax.set_xlabel(reward_label(exp, "final mean reward threshold τ"))
            ax.set_ylabel("fraction of runs with final reward > τ")
        _finish_facets(fig, exp, twin_handles(twins, exp.colour))
        fig.suptitle(f"{exp.name}: performance profiles of the final reward (band = 95% CI){_facet_note(exp)}")
    return fig


def plot_heatmap(exp: Experiment, summary: pd.DataFrame) -> Figure | None:
    """IQM of the final reward over the grid's first two axes, one panel per value of the others."""
    axes = exp.axes
    if len(axes) < 2:
        return None
    table = _in_units(exp, summary, SUMMARY_REWARDS).assign(
        x=[value_label(axes[0], v) for v in summary[axes[0]]],
        y=[value_label(axes[1], v) for v in summary[axes[1]]],
        panel=[join_labels([value_label(a, r[a]) for a in axes[2:]]) for _, r in summary.iterrows()],
    )
    panels = list(dict.fromkeys(table["panel"]))
    xs, ys = list(dict.fromkeys(table["x"])), list(dict.fromkeys(table["y"]))
    vmin, vmax = table["iqm"].min(), table["iqm"].max()
    with style():
        fig, grid = subplots(1, len(panels), (0.8 + (1.1 * len(xs) + 1.2) * len(panels), 1.4 + 0.6 * len(ys)))
        for k, (ax, panel) in enumerate(zip(grid[0], panels)):
            part = (
                table[table["panel"] == panel].pivot(index="y", columns="x", values="iqm").reindex(index=ys, columns=xs)
            )
            sns.heatmap(
                part,
                ax=ax,
                vmin=vmin,
                vmax=vmax,
                cmap="viridis",
                annot=True,
                fmt=".2f",
                square=False,
                cbar=k == len(panels) - 1,
                cbar_kws={"label": reward_label(exp, "final reward IQM")},
                linewidths=0.5,
            )
            ax.set_title(panel)
            ax.set_xlabel(axes[0])
            ax.set_ylabel(axes[1] if k == 0 else "")
            ax.tick_params(axis="x", rotation=30)
            ax.tick_params(axis="y", rotation=0)
        fig.suptitle(
            f"{exp.name}: IQM over seeds of the final mean reward"
            + (f" (panels: {' / '.join(axes[2:])})" if len(axes) > 2 else "")
        )
    return fig


def _setting_axes(exp: Experiment, field: str = PROMPT_LENGTH) -> list[str]:
    """Axes that decide the RunConfig `field` (the prompt length): grouping runs by the other axes leaves several of
    its values together."""
    configs = exp.configs.assign(lengths=[repr(getattr(exp.config(label), field)) for label in exp.labels])
    found = []
    for axis in exp.axes:
        others = [a for a in exp.axes if a != axis]
        groups = configs.groupby([configs[a].map(repr) for a in others]) if others else [(None, configs)]
        if any(part["lengths"].nunique() > 1 for _, part in groups):
            found.append(axis)
    return found


def _lines_along(ax: Any, final: pd.DataFrame, x: str, column: str, palette: Any, twins: dict[str, Twin]) -> None:
    """One line per `line` of `final` (a run per row): the mean of `column` at each value of `x` with its 95%
    bootstrap CI band."""
    for line, part in final.groupby("line", sort=False):
        values = part.dropna(subset=[column]).groupby(x, sort=True)[column].agg(list)
        means = np.array([np.mean(v) for v in values])
        cis = np.array([stats.bootstrap_ci([v], stats.mean, SEED) for v in values]).reshape(-1, 2)
        over = {**twin_style(twins[line]), "markevery": None} if line in twins else {"marker": "o"}
        ax.plot(values.index, means, color=palette[line], lw=1.6, **over)
        ax.fill_between(values.index, cis[:, 0], cis[:, 1], color=palette[line], alpha=0.2, lw=0)


def plot_prompt_length(exp: Experiment) -> Figure | None:
    """Final held-out greedy accuracy, mean reward and train - held-out accuracy gap vs prompt length.

    Drawn only when the runs have `eval/greedy_accuracy` and a scalar
    `prompt_length` that varies. One line per configuration of the axes that
    do not set the prompt length; mean over runs with a 95% bootstrap CI. The
    reward's maximum grows with the prompt length (2L-1 for
    `inclusion_ordering`), and so does chance's share of it, so the reward
    panel shows it chance-normalised, (reward - chance) / (max - chance), with
    the held-out prompts' chance for the held-out reward, when the maxima are
    known (`reward_label`).
    """
    lengths = pd.Series({label: exp.config(label).prompt_length for label in exp.labels}, dtype=object)
    trained = lengths[lengths.index.isin(exp.final["configuration"])]
    if trained.empty or f"final_{EVAL_ACCURACY}" not in exp.final:
        return None
    if not all(isinstance(v, int) for v in trained) or trained.nunique() < 2:
        return None
    length_axes = _setting_axes(exp)
    line_axes = [a for a in exp.axes if a not in length_axes]
    lines = {
        label: join_labels([value_label(a, c[a]) for a in line_axes], "all runs") for label, c in exp.configs.iterrows()
    }
    final = exp.final.assign(
        **{PROMPT_LENGTH: exp.final["configuration"].map(lengths).astype(int)},
        line=exp.final["configuration"].map(lines),
        gap=exp.final["final_greedy_accuracy"] - exp.final[f"final_{EVAL_ACCURACY}"],
    )
    # lines that are not the palette's keys get colours of their own, so none is mistaken for a configuration
    palette = exp.palette if set(lines.values()) <= set(exp.palette) else make_palette(list(lines.values()), "dark")
    held_out = f"final_{EVAL_REWARD}" in final
    reward = f"final_{EVAL_REWARD}" if held_out else "final_reward"
    final = _in_units(exp, final, (reward,), "chance_eval_reward" if held_out else "chance_reward")
    what = "held-out mean reward" if reward != "final_reward" else "training mean reward"
    note = "" if exp.scales_differ else "reward points: the maximum differs between prompt lengths"
    panels = [
        (f"final_{EVAL_ACCURACY}", "held-out greedy accuracy (share sorted exactly)"),
        (reward, reward_label(exp, what, note)),
        ("gap", "train - held-out greedy accuracy"),
    ]
    drawn = final.drop_duplicates("configuration").sort_values(PROMPT_LENGTH, kind="stable")
    twins = twin_lines(exp, drawn.groupby("line", sort=False)["configuration"].agg(list).to_dict())
    with style():
        fig, axes = subplots(1, 3, (14, 4))
        for ax, (column, ylabel) in zip(axes[0], panels):
            _lines_along(ax, final, PROMPT_LENGTH, column, palette, twins)
            ax.set_xlabel("prompt length (numbers per prompt)")
            ax.set_ylabel(ylabel)
            ax.set_xticks(sorted(final[PROMPT_LENGTH].unique()))
        axes[0][2].axhline(0, color="black", lw=0.8)
        handles = [Line2D([], [], color=palette[k], lw=2, label=k) for k in dict.fromkeys(final["line"])]
        handles += twin_handles(twins, palette.get)
        fig.legend(handles=handles, loc="outside right center", frameon=False)
        fig.suptitle(f"{exp.name}: final held-out performance vs prompt length (mean over runs, 95% CI)")
    return fig


def chance_accuracy(exp: Experiment, label: str) -> float | None:
    """Greedy accuracy of a policy that guesses: the probability that a uniformly random response (every token of
    the model's vocabulary equally likely at each of the L positions) is the sorted prompt, 1 / V^L; None with EOS or
    mixed prompt lengths (no one L)."""
    cfg = exp.config(label)
    if cfg.eos or len(cfg.lengths) > 1:
        return None
    return float(cfg.num_tokens) ** -cfg.response_length


NUM_PROMPTS = "num_prompts"


def plot_generalisation(exp: Experiment) -> Figure | None:
    """Final greedy accuracy on the training prompts and on held-out prompts vs the number of training prompts.

    Drawn only when the runs have `eval/greedy_accuracy` (held-out prompts,
    `task = "random"`) and `num_prompts` takes at least two values. One line
    per configuration of the axes that do not set `num_prompts` (model family x
    method, say), mean over seeds with a 95% bootstrap CI band; the x axis is
    logarithmic. Chance (`chance_accuracy`, 1 / V^L) is drawn as a dotted line.
    """
    sizes = pd.Series({label: exp.config(label).num_prompts for label in exp.labels})
    trained = sizes[sizes.index.isin(exp.final["configuration"])]
    if trained.nunique() < 2 or f"final_{EVAL_ACCURACY}" not in exp.final:
        return None
    line_axes = [a for a in exp.axes if a not in _setting_axes(exp, NUM_PROMPTS)]
    lines = {
        label: join_labels([value_label(a, c[a]) for a in line_axes], "all runs") for label, c in exp.configs.iterrows()
    }
    final = exp.final.assign(
        **{NUM_PROMPTS: exp.final["configuration"].map(sizes).astype(int)},
        line=exp.final["configuration"].map(lines),
    )
    palette = exp.palette if set(lines.values()) <= set(exp.palette) else make_palette(list(lines.values()), "dark")
    drawn = final.drop_duplicates("configuration").sort_values(NUM_PROMPTS, kind="stable")
    twins = twin_lines(exp, drawn.groupby("line", sort=False)["configuration"].agg(list).to_dict())
    chances = {chance_accuracy(exp, label) for label in trained.index}
    panels = [("final_greedy_accuracy", "training prompts"), (f"final_{EVAL_ACCURACY}", "held-out prompts")]
    with style():
        fig, axes = subplots(1, 2, (11, 4), sharey=True)
        for ax, (column, title) in zip(axes[0], panels):
            _lines_along(ax, final, NUM_PROMPTS, column, palette, twins)
            ax.set_title(title)
            if len(chances) == 1 and None not in chances:
                ax.axhline(next(iter(chances)), color="black", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.set_xticks(sorted(final[NUM_PROMPTS].unique()), [str(n) for n in sorted(final[NUM_PROMPTS].unique())])
            ax.minorticks_off()
            ax.set_xlabel("training prompts (log scale)")
        axes[0][0].set_ylabel("greedy accuracy (share of prompts sorted exactly)")
        handles = [Line2D([], [], color=palette[k], lw=2, label=k) for k in dict.fromkeys(final["line"])]
        if len(chances) == 1 and None not in chances:
            handles.append(Line2D([], [], color="black", lw=0.8, ls=":", label=f"chance: {next(iter(chances)):.2g}"))
        handles += twin_handles(twins, palette.get)
        fig.legend(handles=handles, loc="outside right center", frameon=False)
        fig.suptitle(f"{exp.name}: final greedy accuracy vs training prompts (mean over seeds, 95% CI)")
    return fig


FigureFn = Callable[[Experiment, pd.DataFrame], Figure | None]


class FigureSpec(NamedTuple):
    """A report figure: how to draw it, its caption, and the metrics whose per-epoch curves it needs."""

    draw: FigureFn
    caption: str
    curves: tuple[str, ...] = ()


FIGURES: dict[str, FigureSpec] = {
    "reward_curves": FigureSpec(
        lambda e, s: plot_reward_curves(e),
        "Mean reward vs step, one line per configuration: mean over seeds with a 95% bootstrap CI band",
        ("mean_reward",),
    ),
    "final_reward": FigureSpec(
        plot_final_reward, "Final mean reward of every seed, and the mean over seeds with its 95% CI"
    ),
    "interval_estimates": FigureSpec(
        plot_interval_estimates, "Mean and IQM of the final reward with 95% bootstrap CIs"
    ),
    "performance_profile": FigureSpec(
        lambda e, s: plot_performance_profile(e),
        "Performance profiles: fraction of runs whose final reward is above τ",
    ),
    "effects": FigureSpec(
        plot_effects,
        "Paired effect on the final score over the baseline (or reference), 95% bootstrap CIs, coloured by the "
        "Holm-corrected verdict; the band is the equivalence margin",
    ),
    "improvement": FigureSpec(
        plot_improvement, "Probability of improvement over the baseline (the unpaired view), with 95% bootstrap CIs"
    ),
    "sample_efficiency": FigureSpec(
        lambda e, s: plot_sample_efficiency(e),
        "Sample efficiency: IQM over seeds of the mean reward vs step, 95% bootstrap CI band",
        ("mean_reward",),
    ),
    "heatmap": FigureSpec(plot_heatmap, "IQM of the final reward over the grid's first two axes"),
    "response_length": FigureSpec(
        lambda e, s: plot_response_length(e),
        "Response length (tokens before EOS) during training",
        ("response_length",),
    ),
    "prompt_length": FigureSpec(
        lambda e, s: plot_prompt_length(e),
        "Final held-out greedy accuracy, mean reward and train/held-out gap vs prompt length",
    ),
    "generalisation": FigureSpec(
        lambda e, s: plot_generalisation(e),
        "Final greedy accuracy on the training and on held-out prompts vs the number of training prompts; dotted: "
        "chance (a uniformly random response is sorted)",
    ),
}
"""Report figures: name -> how to draw it (None when it does not apply), its caption, the curves it draws."""


def curve_metrics() -> tuple[str, ...]:
    """Every metric some figure draws per epoch (what `load_experiment` must keep as curves)."""
    return tuple(dict.fromkeys(m for spec in FIGURES.values() for m in spec.curves))


def png_bytes(fig: Figure) -> bytes:
    """`fig` as PNG, rendered with the report's style and without metadata that changes between runs."""
    buffer = io.BytesIO()
    with style():
        fig.savefig(buffer, format="png", **PNG_OPTIONS)
    return buffer.getvalue()
