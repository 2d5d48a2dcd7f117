"""The report stage: per-experiment statistics, figures, summary tables and `REPORT.md`.

`write_report(results)` reads every experiment stored under `results/runs/`
and writes, per experiment `<exp>`:

    results/figures/<exp>_<figure>.png   one file per entry of `FIGURES` that applies
    results/<exp>_summary.csv            one row per configuration (see `summarize`)

and one `results/REPORT.md` whose every sentence about results is generated
from the numbers. Mean reward is the headline quantity; a run's *final*
reward is its mean reward averaged over the last 10% of its epochs
(`sortrl.stats.final_scores`). Diverged runs are listed and left out of every
aggregate. The output is deterministic: bootstraps use fixed seeds, tables are
in grid order, and PNGs carry no timestamp or version metadata, so running the
report twice on the same runs gives byte-identical files.

The pieces are public so the notebooks can reuse them: `load_experiment`
builds an `Experiment` (runs, configurations, baseline, palette, final
scores), `summarize` makes the summary table, and each `plot_*` function
returns one matplotlib figure.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sortrl import stats
from sortrl.config import RunConfig
from sortrl.recipes import make_config
from sortrl.store import atomic_write_bytes, atomic_write_text, load_runs, read_manifest, runs_dir
from sortrl.sweep import Grid, parse_grid

SEED = 0
"""Seed of every bootstrap in the report."""

LECTURE_SEED = 5
"""The seed of the lecture's own runs (`torch.manual_seed(5)` in CS336 lecture 17)."""

CURVE_POINTS = 26
"""Epochs (evenly spaced, last included) at which IQM-over-steps curves are bootstrapped."""

SHORT_NAMES = {"kl_penalty": "kl", "learning_rate": "lr"}
"""Abbreviations of numeric axes in configuration labels (`kl=0.01`)."""

SCALE_FIELDS = ("task", "prompts", "prompt_length", "reward", "length_penalty")
"""Fields that change what a reward point is worth (the reward function, or the prompts it counts over).

Rewards are compared only between configurations with equal values of these: a
configuration's *reference* is the baseline with the configuration's own values
of the scale axes (the baseline itself when the grid varies none of them).
"""

PROMPT_LENGTH = "prompt_length"
EVAL_ACCURACY = "eval/greedy_accuracy"
EVAL_REWARD = "eval/mean_reward"

PNG_OPTIONS = {"dpi": 110, "bbox_inches": "tight", "metadata": {"Software": None}}
"""`savefig` options: no Software/date metadata, so equal figures give equal bytes."""


# --- experiments -----------------------------------------------------------
@dataclass
class Experiment:
    """One experiment's runs, arranged for the report.

    `configs` has one row per configuration in grid order, indexed by its
    label (`"centered_rewards / clipped / kl=0.01"`), with the raw axis
    values, the `hue` key (colour), the `col` / `row` facet keys and the
    `reference` configuration its rewards are compared with (see `SCALE_FIELDS`).
    `runs` holds the rows of finished (`ok`) runs, one per (run, epoch), with a
    `configuration` column; `final` one row per ok run (`final_reward`: mean
    reward over the last 10% of epochs; `final_greedy_accuracy`: greedy accuracy
    after the last epoch; held-out finals when the runs have them).
    """

    name: str
    grid: Grid
    manifest: dict[str, Any] | None
    configs: pd.DataFrame
    runs: pd.DataFrame
    final: pd.DataFrame
    diverged: pd.DataFrame
    baseline: str
    palette: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def axes(self) -> list[str]:
        return list(self.grid.axes)

    @property
    def labels(self) -> list[str]:
        return list(self.configs.index)

    @property
    def scale_axes(self) -> list[str]:
        """Axes whose values change the reward's scale (`SCALE_FIELDS`)."""
        return [a for a in self.axes if a in SCALE_FIELDS]

    @property
    def panels_share_scale(self) -> bool:
        """True unless a facet (column or row) axis changes the reward's scale: then panels get their own."""
        return not set(self.axes[1:3]) & set(SCALE_FIELDS)

    def colour(self, label: str) -> Any:
        """The colour of configuration `label` (the same in every figure of the experiment)."""
        return self.palette[self.configs.at[label, "hue"]]


def value_label(axis: str, value: Any) -> str:
    """How one axis value reads in a label: strings as they are, others as `name=value` (`kl=0.01`)."""
    if isinstance(value, str):
        return value
    name = SHORT_NAMES.get(axis, axis)
    if isinstance(value, bool):
        return f"{name}={str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{name}={value:g}"
    return f"{name}={json.dumps(value, separators=(',', ':'))}"


def _join(parts: list[str], empty: str = "") -> str:
    return " / ".join(parts) if parts else empty


def _configurations(grid: Grid) -> pd.DataFrame:
    """One row per combination of the grid's axis values, in the grid's (product) order."""
    axes = list(grid.axes)
    hue_axes = axes[:1] + axes[3:]
    rows = []
    for values in itertools.product(*grid.axes.values()):
        labels = dict(zip(axes, (value_label(a, v) for a, v in zip(axes, values))))
        rows.append(
            {
                "configuration": _join(list(labels.values()), "all runs"),
                **dict(zip(axes, values)),
                "hue": _join([labels[a] for a in hue_axes], "all runs"),
                "col": labels[axes[1]] if len(axes) > 1 else "",
                "row": labels[axes[2]] if len(axes) > 2 else "",
            }
        )
    return pd.DataFrame(rows).set_index("configuration")


def _palette(keys: list[str], name: str = "colorblind") -> dict[str, Any]:
    """A colour per distinct key, in order (colorblind-safe up to 10 keys, then evenly spaced hues)."""
    keys = list(dict.fromkeys(keys))
    if name != "colorblind" and len(keys) <= 10:
        colours = sns.color_palette(name, len(keys))
    elif len(keys) <= 10:  # colorblind-safe; pink before vermillion, which is hard to tell from orange
        colours = [sns.color_palette("colorblind")[i] for i in (0, 1, 2, 4, 3, 5, 6, 7, 8, 9)[: len(keys)]]
    else:
        colours = sns.color_palette("husl", len(keys))
    return dict(zip(keys, colours))


def experiment_names(results: str | Path) -> list[str]:
    """Experiments stored under `results/runs/` (folders holding a `grid.toml`), sorted."""
    root = Path(results) / "runs"
    return sorted(p.name for p in root.iterdir() if (p / "grid.toml").is_file()) if root.is_dir() else []


def load_experiment(results: str | Path, name: str, runs: pd.DataFrame | None = None) -> Experiment:
    """Load experiment `name` from `results/runs/<name>/` (its `grid.toml`, manifest and runs).

    Each stored run is assigned the configuration whose axis values (and
    `[base]` fields) it has; runs of no configuration or of a seed outside the
    grid (left from an older grid file) are ignored, and so are extra copies of
    a (configuration, seed) pair, with a line in `notes`. Matching by values,
    not `run_id`, keeps runs stored before a new `RunConfig` field was added.
    `runs`: the experiment's rows of `sortrl.store.load_runs`, if already loaded.
    """
    folder = runs_dir(results, name)
    grid = parse_grid((folder / "grid.toml").read_text(), folder / "grid.toml")
    configs = _configurations(grid)
    table = load_runs(results, [name]) if runs is None else runs
    notes: list[str] = []
    if table.empty:
        table = pd.DataFrame(columns=["run_id", "status", "diverged_epoch", "seed", "epoch", "step", "mean_reward"])
    table = table.assign(configuration=table["run_id"].map(_match_runs(table, grid, configs, notes)))
    table = table[table["configuration"].notna()]
    order = {label: i for i, label in enumerate(configs.index)}
    table = table.sort_values(
        ["configuration", "seed", "epoch"], key=lambda c: c.map(order) if c.name == "configuration" else c
    ).reset_index(drop=True)
    missing = len(configs) * len(grid.seeds) - table["run_id"].nunique()
    if missing > 0:
        notes.append(f"{missing} run(s) of the grid are not stored (the sweep is incomplete).")

    baseline = _find_baseline(grid, configs, notes)
    configs["reference"] = _references(configs, list(grid.axes), baseline)
    ok = table[table["status"] == "ok"].reset_index(drop=True)
    diverged = table[table["status"] != "ok"].groupby("run_id", sort=False).first().reset_index()
    return Experiment(
        name=name,
        grid=grid,
        manifest=read_manifest(folder),
        configs=configs,
        runs=ok,
        final=_final_table(ok),
        diverged=diverged[["configuration", "seed", "run_id", "diverged_epoch"]],
        baseline=baseline,
        palette=_palette(list(configs["hue"])),
        notes=notes,
    )


def _references(configs: pd.DataFrame, axes: list[str], baseline: str) -> list[str]:
    """Each configuration's reference: the baseline's values on the axes not in `SCALE_FIELDS`, its own on those."""
    base = configs.loc[baseline]
    by_values = {tuple(_key(row[a]) for a in axes): label for label, row in configs.iterrows()}
    return [
        by_values[tuple(_key(row[a] if a in SCALE_FIELDS else base[a]) for a in axes)] for _, row in configs.iterrows()
    ]


def _key(value: Any) -> Any:
    """A comparable form of a config value from TOML or from the run table (`1` == `1.0`, JSON text == list)."""
    if isinstance(value, str):
        return _key(json.loads(value)) if value.startswith("[") else value
    if isinstance(value, (list, tuple, np.ndarray)):
        return json.dumps([_key(v) for v in value])
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return float(value)


def _match_runs(table: pd.DataFrame, grid: Grid, configs: pd.DataFrame, notes: list[str]) -> pd.Series:
    """Configuration label of each stored run (by `run_id`); runs outside the grid are left out."""
    current = {cfg.run_id for cfg in grid.configs()}
    first = table.groupby("run_id", sort=True).first()
    first = first[first["seed"].isin(grid.seeds)]
    fields = [f for f in (*grid.axes, *grid.base) if f in first.columns]
    wanted = {}
    for label, values in zip(configs.index, itertools.product(*grid.axes.values())):
        cfg = make_config(**grid.base, **dict(zip(grid.axes, values)), seed=grid.seeds[0]).to_dict()
        wanted[tuple(_key(cfg[f]) for f in fields)] = label
    keys = first[fields].map(_key) if len(fields) else pd.DataFrame(index=first.index)
    labels = pd.Series([wanted.get(tuple(k)) for k in keys.itertuples(index=False)], index=first.index, dtype=object)
    if not fields:
        labels[:] = configs.index[0]
    labels = labels.dropna()
    # one run per (configuration, seed): prefer the run this code would make (same run_id), then the lowest id
    frame = labels.rename("configuration").to_frame().assign(seed=first["seed"], old=~labels.index.isin(current))
    frame = frame.sort_values(["old"], kind="stable")
    kept = frame[~frame.duplicated(["configuration", "seed"])]["configuration"]
    ignored = table["run_id"].nunique() - len(kept)
    if ignored:
        notes.append(
            f"{ignored} stored run(s) match no configuration and seed of grid.toml (or repeat one) and were ignored."
        )
    return kept


def load_experiments(results: str | Path) -> list[Experiment]:
    """Every experiment under `results/runs/`, in name order (runs loaded once)."""
    names = experiment_names(results)
    table = load_runs(results, names)
    by_name = dict(iter(table.groupby("experiment", sort=True))) if not table.empty else {}
    return [load_experiment(results, n, by_name.get(n, pd.DataFrame())) for n in names]


def _find_baseline(grid: Grid, configs: pd.DataFrame, notes: list[str]) -> str:
    """The configuration the grid's `baseline` names (fields not on an axis must match `[base]`)."""
    labels = list(configs.index)
    wanted = {k: v for k, v in grid.baseline.items() if k != "seed"}
    if not wanted:
        return labels[0]
    seed = grid.seeds[0]
    for label, values in zip(labels, itertools.product(*grid.axes.values())):
        fields = {**grid.base, **dict(zip(grid.axes, values))}
        if make_config(**{**fields, **wanted}, seed=seed).run_id == make_config(**fields, seed=seed).run_id:
            return label
    notes.append(f"The grid's baseline {wanted} matches no configuration; the first one ({labels[0]}) is used.")
    return labels[0]


def _final_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: configuration, seed and final scores (see `Experiment`)."""
    first = runs.groupby("run_id", sort=False)[["configuration", "seed"]].first()
    final = first.assign(
        final_reward=stats.final_scores(runs, "mean_reward"),
        final_greedy_accuracy=stats.final_scores(runs, "greedy_accuracy", fraction=0),
    )
    for column in (EVAL_REWARD, EVAL_ACCURACY):
        if column in runs and runs[column].notna().any():
            fraction = stats.FINAL_FRACTION if column == EVAL_REWARD else 0
            final[f"final_{column}"] = stats.final_scores(runs, column, fraction=fraction)
    return final.reset_index()


def scores(exp: Experiment, label: str, column: str = "final_reward") -> np.ndarray:
    """Final scores `[run]` of configuration `label`, in seed order."""
    return exp.final.loc[exp.final["configuration"] == label, column].to_numpy(dtype=float)


# --- statistics --------------------------------------------------------------
def summarize(exp: Experiment) -> pd.DataFrame:
    """The summary table: one row per configuration, in grid order.

    Columns: `configuration`, the axis values, `baseline` (bool), `reference`
    (the configuration it is compared with; the baseline unless the grid varies
    a `SCALE_FIELDS` axis), `n` (finished runs = seeds aggregated),
    `n_diverged`, final reward `mean`, `std` (ddof 1), `mean_ci_low/high`,
    `iqm`, `iqm_ci_low/high` (95% percentile bootstrap), `p_improve` =
    P(final reward of this configuration > its reference's) with
    `p_improve_ci_low/high` (NaN for a reference itself), `solve_rate` (share
    of runs whose greedy policy sorts every training prompt after the last
    epoch), and the mean final held-out metrics when the runs have them.
    Rewards in reward points.
    """
    rows = []
    for label, config in exp.configs.iterrows():
        x = scores(exp, label)
        row: dict[str, Any] = {"configuration": label, **{a: config[a] for a in exp.axes}}
        row["baseline"] = label == exp.baseline
        row["reference"] = config["reference"]
        row["n"] = len(x)
        row["n_diverged"] = int((exp.diverged["configuration"] == label).sum())
        row["mean"] = _point(stats.mean, x)
        row["std"] = float(np.std(x, ddof=1)) if len(x) > 1 else math.nan
        row["mean_ci_low"], row["mean_ci_high"] = stats.bootstrap_ci([x], stats.mean, SEED)
        row["iqm"] = _point(stats.iqm, x)
        row["iqm_ci_low"], row["iqm_ci_high"] = stats.bootstrap_ci([x], stats.iqm, SEED)
        ref = scores(exp, config["reference"]) if config["reference"] != label else np.array([])
        row["p_improve"] = _point(stats.probability_of_improvement, x, ref)
        row["p_improve_ci_low"], row["p_improve_ci_high"] = stats.bootstrap_ci(
            [x, ref], stats.probability_of_improvement, SEED
        )
        row["solve_rate"] = _point(lambda a: np.mean(a >= 1 - 1e-9), scores(exp, label, "final_greedy_accuracy"))
        for column in (EVAL_REWARD, EVAL_ACCURACY):
            if f"final_{column}" in exp.final:
                row[column.replace("/", "_")] = _point(np.nanmean, scores(exp, label, f"final_{column}"))
        rows.append(row)
    return pd.DataFrame(rows)


def _point(statistic: Callable[..., Any], *samples: np.ndarray) -> float:
    """`statistic(*samples)` as a float, NaN when a sample is empty."""
    return float(statistic(*samples)) if all(len(s) for s in samples) else math.nan


def verdict(low: float, high: float) -> str:
    """`better`, `worse` or `indistinguishable`: where a P(improve) CI lies relative to 0.5."""
    if low > 0.5:
        return "better"
    if high < 0.5:
        return "worse"
    return "indistinguishable"


def reward_ceiling(runs: pd.DataFrame) -> float | None:
    """Highest possible mean reward of the runs, or None when it is not one known number.

    Known when all runs use the lecture's prompt set with one reward, no length
    penalty: the reward of the sorted prompts (which no response beats for the
    sorting rewards of `sortrl.task`), averaged over prompts.
    """
    import torch

    from sortrl.task import REWARDS

    keys = ["reward", "prompts", "length_penalty"] + (["task"] if "task" in runs else [])
    distinct = runs[keys].drop_duplicates()
    if len(distinct) != 1 or distinct["length_penalty"].iloc[0] != 0:
        return None
    if "task" in distinct and distinct["task"].iloc[0] != "lecture":
        return None
    prompts = torch.tensor(json.loads(distinct["prompts"].iloc[0]))
    best = prompts.sort(dim=-1).values[None, :, None, :]
    value = REWARDS[distinct["reward"].iloc[0]](prompts, best, torch.ones_like(best, dtype=torch.bool))
    return float(value.mean())


def reward_label(exp: Experiment, what: str = "mean reward", note: str = "") -> str:
    """Axis label for a reward axis, with the maximum when it is known: `mean reward (max 5)`, then `note`."""
    ceiling = reward_ceiling(exp.runs) if not exp.runs.empty else None
    label = f"{what} (max {ceiling:g})" if ceiling is not None else what
    return f"{label}\n{note}" if note else label


# --- figures -------------------------------------------------------------------
@contextlib.contextmanager
def _style() -> Iterator[None]:
    """Matplotlib's own defaults (not the user's matplotlibrc or a notebook's) plus seaborn's whitegrid, for a while."""
    with mpl.rc_context():
        mpl.rcdefaults()
        mpl.rcParams.update({**sns.axes_style("whitegrid"), "axes.titlesize": 10, "axes.labelsize": 9, "font.size": 9})
        yield


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, np.ndarray]:
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
    fig, grid = _subplots(len(rows), len(cols), size, sharex=sharex, sharey=sharey)
    panels = []
    for (i, row), (j, col) in itertools.product(enumerate(rows), enumerate(cols)):
        ax = grid[i][j]
        ax.set_title(_join([v for v in (col, row) if v]))
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


def _highlight_seed(exp: Experiment) -> int | None:
    seed = exp.grid.highlight_seed
    return seed if seed is not None and (exp.runs["seed"] == seed).any() else None


def is_lecture_experiment(exp: Experiment) -> bool:
    """True when every run has the lecture's settings except `deltas_mode` (its experiments varied only that)."""
    return all(cfg == RunConfig(deltas_mode=cfg.deltas_mode, seed=cfg.seed) for cfg in exp.grid.configs())


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
) -> Figure:
    """`statistic` over seeds of `metric` vs step per configuration, 95% bootstrap CI band, faceted.

    `points`: bootstrap at that many evenly spaced epochs (last included) instead of every epoch.
    With `highlight`, the grid's highlight seed's own curve is drawn on top, dashed. `labels`: only
    these configurations.
    """
    epochs = np.sort(exp.runs["epoch"].unique())
    if points is not None:
        epochs = epochs[np.unique(np.linspace(0, len(epochs) - 1, points).round().astype(int))]
    runs = exp.runs[exp.runs["epoch"].isin(epochs)]
    seed = _highlight_seed(exp) if highlight else None
    with _style():
        fig, panels = _facets(exp, sharey=exp.panels_share_scale, labels=labels)
        for ax, labels in panels:
            for label in labels:
                part = runs[runs["configuration"] == label]
                wide = part.pivot(index="step", columns="seed", values=metric).dropna()  # [step run]
                if wide.empty:
                    continue
                low, high = stats.bootstrap_ci([wide.to_numpy()], statistic, SEED)
                colour = exp.colour(label)
                ax.plot(wide.index, statistic(wide.to_numpy()), color=colour, lw=1.6)
                ax.fill_between(wide.index, low, high, color=colour, alpha=0.2, lw=0)
                if seed is not None and seed in wide:
                    ax.plot(wide.index, wide[seed], ls="--", lw=0.9, color=colour)
            ax.set_xlabel("step (inner optimiser steps)")
            ax.set_ylabel(ylabel)
        name = "mean" if statistic is stats.mean else "IQM"
        extra = [Line2D([], [], color="grey", lw=1.6, label=f"{name} over seeds, band = 95% CI")]
        if seed is not None:
            extra.append(Line2D([], [], color="grey", ls="--", lw=0.9, label=f"{_seed_note(exp, seed)} (one run)"))
        _finish_facets(fig, exp, extra)
        n = exp.runs.groupby("configuration")["seed"].nunique().max()
        fig.suptitle(f"{exp.name}: {title}, {n} seeds per configuration{_facet_note(exp)}")
    return fig


def plot_reward_curves(exp: Experiment) -> Figure | None:
    """Mean reward vs step: mean over seeds with a 95% bootstrap CI band, the highlight seed dashed."""
    if exp.runs.empty:
        return None
    return _curves(exp, "mean_reward", stats.mean, reward_label(exp), "mean reward during training")


def plot_sample_efficiency(exp: Experiment) -> Figure | None:
    """IQM over seeds of the mean reward vs step, 95% bootstrap CI band, at `CURVE_POINTS` epochs."""
    if exp.runs.empty:
        return None
    return _curves(
        exp,
        "mean_reward",
        stats.iqm,
        reward_label(exp, "IQM over seeds of mean reward"),
        f"sample efficiency, IQM of mean reward at {CURVE_POINTS} epochs",
        points=CURVE_POINTS,
        highlight=False,
    )


def plot_response_length(exp: Experiment) -> Figure | None:
    """Mean response length (tokens before EOS) vs step, for the configurations with EOS on (if any)."""
    if exp.runs.empty or not exp.runs["eos"].astype(bool).any():
        return None
    with_eos = [
        label for label, part in exp.runs.groupby("configuration", sort=False) if part["eos"].astype(bool).all()
    ]
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
    fig, axes = _subplots(1, ncols, (1.5 + width * ncols, 1.6 + (0.3 if n > 12 else 0.5) * n), sharey=True)
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
    with _style():
        fig, (ax,), y = _per_config_axes(exp, exp.labels, width=6.0)
        for yi, (label, row) in zip(y, summary.set_index("configuration").iterrows()):
            part = exp.final[exp.final["configuration"] == label]
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
    with _style():
        fig, axes, y = _per_config_axes(exp, exp.labels, ncols=2, width=3.6)
        table = summary.set_index("configuration")
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
    with _style():
        fig, (ax,), y = _per_config_axes(exp, names, width=5.5)
        for yi, (_, row) in zip(y, table.iterrows()):
            colour = exp.colour(row["configuration"])
            _hbar(ax, row["p_improve"], row["p_improve_ci_low"], row["p_improve_ci_high"], yi, colour)
        ax.axvline(0.5, color="black", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"P(final reward of configuration > final reward of {_versus(exp)})\nbaseline: {exp.baseline}")
        ax.set_title(f"{exp.name}: probability of improvement over {_versus(exp)} (95% bootstrap CIs)")
    return fig


def _versus(exp: Experiment) -> str:
    """What configurations are compared with: `the baseline`, or `the reference` when scale axes vary."""
    return "the reference" if exp.scale_axes else "the baseline"


def plot_performance_profile(exp: Experiment) -> Figure | None:
    """Fraction of runs with final reward >= tau, over tau, per configuration, 95% bootstrap CI band."""
    if exp.final.empty:
        return None
    with _style():
        fig, panels = _facets(exp, sharex=exp.panels_share_scale)
        for ax, labels in panels:
            values = exp.final.loc[exp.final["configuration"].isin(labels), "final_reward"].to_numpy()
            if exp.panels_share_scale:
                values = exp.final["final_reward"].to_numpy()
            if not len(values):
                continue
            taus = np.linspace(values.min(), values.max(), 101)
            for label in labels:
                x = scores(exp, label)
                if not len(x):
                    continue
                low, high = stats.performance_profile_ci(x, taus, SEED)
                colour = exp.colour(label)
                ax.plot(taus, stats.performance_profile(x, taus), color=colour, lw=1.6)
                ax.fill_between(taus, low, high, color=colour, alpha=0.15, lw=0)
            ax.set_xlabel(reward_label(exp, "final mean reward threshold τ"))
            ax.set_ylabel("fraction of runs with final reward ≥ τ")
        _finish_facets(fig, exp)
        fig.suptitle(f"{exp.name}: performance profiles of the final reward (band = 95% CI){_facet_note(exp)}")
    return fig


def plot_heatmap(exp: Experiment, summary: pd.DataFrame) -> Figure | None:
    """IQM of the final reward over the grid's first two axes, one panel per value of the others."""
    axes = exp.axes
    if len(axes) < 2:
        return None
    table = summary.assign(
        x=[value_label(axes[0], v) for v in summary[axes[0]]],
        y=[value_label(axes[1], v) for v in summary[axes[1]]],
        panel=[_join([value_label(a, r[a]) for a in axes[2:]]) for _, r in summary.iterrows()],
    )
    panels = list(dict.fromkeys(table["panel"]))
    xs, ys = list(dict.fromkeys(table["x"])), list(dict.fromkeys(table["y"]))
    vmin, vmax = table["iqm"].min(), table["iqm"].max()
    with _style():
        fig, grid = _subplots(1, len(panels), (0.8 + (1.1 * len(xs) + 1.2) * len(panels), 1.4 + 0.6 * len(ys)))
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


def _length_axes(exp: Experiment) -> list[str]:
    """Axes that decide the prompt length: grouping runs by the other axes leaves several lengths together."""
    per_config = exp.runs.groupby("configuration")[PROMPT_LENGTH].agg(lambda s: tuple(sorted(set(s))))
    configs = exp.configs.assign(lengths=per_config)
    found = []
    for axis in exp.axes:
        others = [a for a in exp.axes if a != axis]
        groups = configs.groupby([configs[a].map(repr) for a in others]) if others else [(None, configs)]
        if any(part["lengths"].nunique() > 1 for _, part in groups):
            found.append(axis)
    return found


def plot_prompt_length(exp: Experiment) -> Figure | None:
    """Final held-out greedy accuracy, mean reward and train - held-out accuracy gap vs prompt length.

    Drawn only when the runs have `eval/greedy_accuracy` and a scalar
    `prompt_length` that varies. One line per configuration of the axes that
    do not set the prompt length; mean over runs with a 95% bootstrap CI.
    """
    runs = exp.runs
    if runs.empty or EVAL_ACCURACY not in runs or PROMPT_LENGTH not in runs:
        return None
    if not all(isinstance(v, (int, np.integer)) for v in runs[PROMPT_LENGTH]) or runs[PROMPT_LENGTH].nunique() < 2:
        return None
    length_axes = _length_axes(exp)
    line_axes = [a for a in exp.axes if a not in length_axes]
    lines = {label: _join([value_label(a, c[a]) for a in line_axes], "all runs") for label, c in exp.configs.iterrows()}
    final = exp.final.merge(runs.groupby("run_id")[PROMPT_LENGTH].first(), left_on="run_id", right_index=True)
    final = final.assign(
        line=final["configuration"].map(lines), gap=final["final_greedy_accuracy"] - final[f"final_{EVAL_ACCURACY}"]
    )
    # lines that are not the palette's keys get colours of their own, so none is mistaken for a configuration
    palette = exp.palette if set(lines.values()) <= set(exp.palette) else _palette(list(lines.values()), "dark")
    reward = f"final_{EVAL_REWARD}" if f"final_{EVAL_REWARD}" in final else "final_reward"
    panels = [
        (f"final_{EVAL_ACCURACY}", "held-out greedy accuracy (share sorted exactly)"),
        (reward, reward_label(exp, "held-out mean reward" if reward != "final_reward" else "training mean reward")),
        ("gap", "train - held-out greedy accuracy"),
    ]
    with _style():
        fig, axes = _subplots(1, 3, (14, 4))
        for ax, (column, ylabel) in zip(axes[0], panels):
            for line, part in final.groupby("line", sort=False):
                values = part.dropna(subset=[column]).groupby(PROMPT_LENGTH, sort=True)[column].agg(list)
                means = np.array([np.mean(v) for v in values])
                cis = np.array([stats.bootstrap_ci([v], stats.mean, SEED) for v in values]).reshape(-1, 2)
                ax.plot(values.index, means, marker="o", color=palette[line], lw=1.6)
                ax.fill_between(values.index, cis[:, 0], cis[:, 1], color=palette[line], alpha=0.2, lw=0)
            ax.set_xlabel("prompt length (numbers per prompt)")
            ax.set_ylabel(ylabel)
            ax.set_xticks(sorted(final[PROMPT_LENGTH].unique()))
        axes[0][2].axhline(0, color="black", lw=0.8)
        handles = [Line2D([], [], color=palette[k], lw=2, label=k) for k in dict.fromkeys(final["line"])]
        fig.legend(handles=handles, loc="outside right center", frameon=False)
        fig.suptitle(f"{exp.name}: final held-out performance vs prompt length (mean over runs, 95% CI)")
    return fig


FigureFn = Callable[[Experiment, pd.DataFrame], Figure | None]

FIGURES: dict[str, tuple[FigureFn, str]] = {
    "reward_curves": (
        lambda e, s: plot_reward_curves(e),
        "Mean reward vs step, one line per configuration: mean over seeds with a 95% bootstrap CI band",
    ),
    "final_reward": (plot_final_reward, "Final mean reward of every seed, and the mean over seeds with its 95% CI"),
    "interval_estimates": (plot_interval_estimates, "Mean and IQM of the final reward with 95% bootstrap CIs"),
    "performance_profile": (
        lambda e, s: plot_performance_profile(e),
        "Performance profiles: fraction of runs whose final reward is at least τ",
    ),
    "improvement": (plot_improvement, "Probability of improvement over the baseline, with 95% bootstrap CIs"),
    "sample_efficiency": (
        lambda e, s: plot_sample_efficiency(e),
        "Sample efficiency: IQM over seeds of the mean reward vs step, 95% bootstrap CI band",
    ),
    "heatmap": (plot_heatmap, "IQM of the final reward over the grid's first two axes"),
    "response_length": (
        lambda e, s: plot_response_length(e),
        "Response length (tokens before EOS) during training",
    ),
    "prompt_length": (
        lambda e, s: plot_prompt_length(e),
        "Final held-out greedy accuracy, mean reward and train/held-out gap vs prompt length",
    ),
}
"""Report figures: name -> (function(experiment, summary) -> figure or None when it does not apply, caption)."""


def png_bytes(fig: Figure) -> bytes:
    """`fig` as PNG, rendered with the report's style and without metadata that changes between runs."""
    buffer = io.BytesIO()
    with _style():
        fig.savefig(buffer, format="png", **PNG_OPTIONS)
    return buffer.getvalue()


def save_figure(fig: Figure, path: Path) -> Path:
    """Write `fig` as PNG (`png_bytes`) atomically; returns `path`."""
    atomic_write_bytes(path, png_bytes(fig))
    return path


# --- REPORT.md -------------------------------------------------------------------
def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(row: pd.Series, stat: str, digits: int = 3) -> str:
    return f"{_num(row[stat], digits)} [{_num(row[f'{stat}_ci_low'], digits)}, {_num(row[f'{stat}_ci_high'], digits)}]"


def _findings(exp: Experiment, summary: pd.DataFrame) -> list[str]:
    compared = summary[summary["configuration"] != summary["reference"]]
    others = compared[compared["p_improve_ci_low"].notna()]
    groups: dict[str, list[str]] = {"better": [], "worse": [], "indistinguishable": []}
    for _, row in others.iterrows():
        versus = "" if row["reference"] == exp.baseline else f" vs {row['reference']}"
        groups[verdict(row["p_improve_ci_low"], row["p_improve_ci_high"])].append(
            f"{row['configuration']} ({_ci(row, 'p_improve', 2)}{versus})"
        )
    versus = _versus(exp)
    heads = {
        "better": f"Better than {versus} (P(improve) CI above 0.5)",
        "worse": f"Worse than {versus} (P(improve) CI below 0.5)",
        "indistinguishable": f"Indistinguishable from {versus} (P(improve) CI contains 0.5)",
    }
    lines = [f"Baseline: **{exp.baseline}**."]
    if exp.scale_axes:
        lines[0] += (
            f" The grid varies {', '.join(f'`{a}`' for a in exp.scale_axes)}, which "
            f"{'changes' if len(exp.scale_axes) == 1 else 'change'} what a reward point is worth, so each "
            "configuration is compared with its *reference*: the baseline's settings with its own "
            f"{', '.join(f'`{a}`' for a in exp.scale_axes)} (named after each number below unless it is the baseline)."
        )
    lines += [f"- {heads[k]}: {'; '.join(v) if v else 'none'}." for k, v in groups.items()]
    missing = compared[compared["p_improve_ci_low"].isna()]["configuration"].tolist()
    if missing:
        lines.append(f"- No P(improve) interval (fewer than two finished runs): {', '.join(missing)}.")
    if len(others) > 1:
        lines.append(
            f"- Each interval is for one comparison, not corrected for the {len(others)} made here: even if no "
            f"configuration differed from its reference, about {(1 - stats.CONFIDENCE) * len(others):.1f} of them "
            "would be expected to exclude 0.5 by chance."
        )
    return lines


def _compare(exp: Experiment, new: str, old: str) -> dict[str, float]:
    """Numbers comparing configuration `new` with `old`: seed-LECTURE_SEED finals, mean difference and P(new > old)."""
    x, y = scores(exp, new), scores(exp, old)
    out = {"n_new": len(x), "n_old": len(y)}
    final = exp.final.set_index(["configuration", "seed"])["final_reward"]
    out["seed_new"] = final.get((new, LECTURE_SEED), math.nan)
    out["seed_old"] = final.get((old, LECTURE_SEED), math.nan)
    out["diff"] = _point(stats.mean_difference, x, y)
    out["diff_low"], out["diff_high"] = stats.bootstrap_ci([x, y], stats.mean_difference, SEED)
    out["p"] = _point(stats.probability_of_improvement, x, y)
    out["p_low"], out["p_high"] = stats.bootstrap_ci([x, y], stats.probability_of_improvement, SEED)
    # seed-to-seed spread within a configuration: the pooled standard deviation of the two
    out["std"] = math.sqrt((np.var(x, ddof=1) + np.var(y, ddof=1)) / 2) if min(len(x), len(y)) > 1 else math.nan
    return out


def _lecture_section(exp: Experiment) -> list[str]:
    """Whether the lecture's seed-5 conclusions hold across seeds, in generated sentences."""
    if not is_lecture_experiment(exp) or "deltas_mode" not in exp.axes:
        return []
    mode = {config["deltas_mode"]: label for label, config in exp.configs.iterrows()}
    if not {"rewards", "centered_rewards", "normalized_rewards"} <= set(mode):
        return []
    s = LECTURE_SEED
    lines = [
        "### The lecture's single-seed conclusions, across seeds",
        "",
        f"The lecture ran each deltas mode once, with seed {s}, and concluded from the curves that centering helps "
        "(`centered_rewards` beats `rewards`) and that std normalisation makes little difference "
        "(`normalized_rewards` vs `centered_rewards`). Final reward = mean reward over the last 10% of epochs.",
        "",
    ]
    c = _compare(exp, mode["centered_rewards"], mode["rewards"])
    n = min(c["n_new"], c["n_old"])
    if not math.isnan(c["seed_new"]) and not math.isnan(c["seed_old"]):
        d = c["seed_new"] - c["seed_old"]
        says = "centering helps" if d > 0 else "centering does not help"
        lines.append(
            f"- Centering, seed {s} alone: final reward {_num(c['seed_old'])} (`rewards`) vs "
            f"{_num(c['seed_new'])} (`centered_rewards`), difference {d:+.3f}: seed {s} alone says {says}."
        )
    v = verdict(c["p_low"], c["p_high"]) if not math.isnan(c["p_low"]) else "indistinguishable"
    holds = {
        "better": "the seeds confirm that centering helps",
        "worse": "the seeds contradict it: centering does worse",
        "indistinguishable": "the seeds cannot confirm that centering helps",
    }[v]
    lines.append(
        f"- Centering, {n} seeds per configuration: mean difference (centered − rewards) {c['diff']:+.3f} "
        f"[{c['diff_low']:+.3f}, {c['diff_high']:+.3f}]; P(centered_rewards > rewards) = {_ci_p(c)}: {holds}."
    )
    c = _compare(exp, mode["normalized_rewards"], mode["centered_rewards"])
    n = min(c["n_new"], c["n_old"])
    if not math.isnan(c["seed_new"]) and not math.isnan(c["seed_old"]):
        d = c["seed_new"] - c["seed_old"]
        small = abs(d) < c["std"]
        lines.append(
            f"- Std normalisation, seed {s} alone: final reward {_num(c['seed_old'])} (`centered_rewards`) vs "
            f"{_num(c['seed_new'])} (`normalized_rewards`), difference {d:+.3f}, "
            f"{'smaller' if small else 'not smaller'} than the seed-to-seed standard deviation of the final reward "
            f"within a configuration ({_num(c['std'])}): seed {s} alone "
            f"{'shows little difference' if small else 'shows a difference'}."
        )
    v = verdict(c["p_low"], c["p_high"]) if not math.isnan(c["p_low"]) else "indistinguishable"
    holds = {
        "better": "the seeds find a difference: normalisation does better",
        "worse": "the seeds find a difference: normalisation does worse",
        "indistinguishable": "the seeds cannot tell the two apart, consistent with 'little difference' "
        f"(a difference of mean final reward as large as the CI's ends, {c['diff_low']:+.3f} to {c['diff_high']:+.3f}, "
        "is not ruled out)",
    }[v]
    lines.append(
        f"- Std normalisation, {n} seeds per configuration: mean difference (normalized − centered) {c['diff']:+.3f} "
        f"[{c['diff_low']:+.3f}, {c['diff_high']:+.3f}]; P(normalized_rewards > centered_rewards) = {_ci_p(c)}: {holds}."
    )
    return lines + [""]


def _ci_p(c: dict[str, float]) -> str:
    return f"{_num(c['p'], 2)} [{_num(c['p_low'], 2)}, {_num(c['p_high'], 2)}]"


def _what_was_run(exp: Experiment) -> list[str]:
    grid, runs = exp.grid, exp.runs
    seeds = grid.seeds
    seed_text = (
        f"{len(seeds)} ({seeds[0]}–{seeds[-1]})"
        if seeds == tuple(range(seeds[0], seeds[-1] + 1))
        else (f"{len(seeds)} ({', '.join(map(str, seeds))})")
    )
    lines = [f"- Grid file: `runs/{exp.name}/grid.toml`; {len(exp.configs)} configurations × {len(seeds)} seeds."]
    for axis, values in grid.axes.items():
        lines.append(f"- Axis `{axis}`: {', '.join(f'`{json.dumps(v)}`' for v in values)}.")
    if grid.base:
        lines.append("- Shared settings: " + ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in grid.base.items()) + ".")
    lines.append(
        f"- Seeds: {seed_text}"
        + (f"; highlighted seed {grid.highlight_seed}." if grid.highlight_seed is not None else ".")
    )
    if not runs.empty:
        epochs = sorted(runs["num_epochs"].unique())
        steps = sorted(runs["num_steps_per_epoch"].unique())
        lines.append(
            f"- Epochs: {', '.join(map(str, epochs))}, each with {', '.join(map(str, steps))} inner steps; "
            f"final reward = mean over the last {math.ceil(stats.FINAL_FRACTION * epochs[0] - 1e-9)} epochs."
        )
    lines.append(
        f"- Baseline: {exp.baseline}" + (" (the grid's first configuration)" if not grid.baseline else "") + "."
    )
    m = exp.manifest or {}
    keys = [
        ("sortrl", "sortrl"),
        ("git_commit", "git commit"),
        ("torch", "torch"),
        ("python", "python"),
        ("platform", "platform"),
    ]
    versions = [f"{name} `{m[k]}`" for k, name in keys if m.get(k)]
    lines.append(f"- Trained with: {', '.join(versions) if versions else 'no manifest found'}.")
    if m.get("status") not in (None, "complete"):
        lines.append(f"- The last sweep's status is `{m['status']}`: results may be incomplete.")
    lines += [f"- Note: {n}" for n in exp.notes]
    return lines


def _table(exp: Experiment, summary: pd.DataFrame) -> list[str]:
    versus = "reference" if exp.scale_axes else "baseline"
    head = ["configuration", "n", "mean [95% CI]", "IQM [95% CI]", f"P(improve) over {versus} [95% CI]"]
    head += ["reference"] if exp.scale_axes else []
    head += ["solve rate", "diverged"]
    lines = [
        "| " + " | ".join(head) + " |",
        "| --- | ---: | --- | --- | --- |" + (" --- |" if exp.scale_axes else "") + " ---: | ---: |",
    ]
    for _, r in summary.iterrows():
        cells = [r["configuration"], str(r["n"]), _ci(r, "mean"), _ci(r, "iqm")]
        cells += [versus if r["configuration"] == r["reference"] else _ci(r, "p_improve", 2)]
        cells += [r["reference"]] if exp.scale_axes else []
        cells += [_num(r["solve_rate"], 2), str(r["n_diverged"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _diverged(exp: Experiment) -> list[str]:
    if exp.diverged.empty:
        return ["No run diverged."]
    lines = ["Diverged runs (non-finite loss or parameters), left out of every aggregate and figure:", ""]
    for label, part in exp.diverged.groupby("configuration", sort=False):
        runs = ", ".join(f"seed {r.seed} (epoch {r.diverged_epoch})" for r in part.sort_values("seed").itertuples())
        lines.append(f"- {label}: {runs}")
    return lines


def render_report(experiments: list[tuple[Experiment, pd.DataFrame, list[str]]]) -> str:
    """REPORT.md text from (experiment, summary, figure names written) triples."""
    import scipy

    lines = [
        "# sortrl report",
        "",
        "Generated by `sortrl report` from the runs stored under `runs/`: every number and every sentence about "
        "results below is computed from them. Regenerate with `make report` (or `make ablations` to retrain).",
        "",
        "How to read it:",
        "",
        f"- A run's **final reward** is its mean reward averaged over the last {stats.FINAL_FRACTION:.0%} of its "
        "epochs. Mean reward (never loss) is the headline quantity.",
        "- Per configuration, over seeds: mean and **IQM** (interquartile mean, `scipy.stats.trim_mean(x, 0.25)`), "
        f"each with a {stats.CONFIDENCE:.0%} percentile-bootstrap CI (`scipy.stats.bootstrap`, {stats.N_RESAMPLES} "
        f"resamples, seed {SEED}); curve bands are the same interval at each step.",
        "- **P(improve)** = probability that a random run of the configuration ends with a higher final reward than a "
        "random run of the baseline (Mann-Whitney U / (n_x n_y), ties count half; Agarwal et al. 2021). A CI above "
        "0.5 means better, below 0.5 worse, containing 0.5 indistinguishable at this number of seeds. Where a grid "
        "varies the reward function or the prompts (which change what a reward point is worth), a configuration is "
        "compared with the baseline's settings on its own reward and prompts instead (its *reference*).",
        "- **Solve rate** = share of seeds whose greedy (argmax) policy sorts every training prompt exactly after "
        "the last epoch.",
        "- Diverged runs are listed per experiment and excluded from every aggregate.",
        f"- Report tools: numpy `{np.__version__}`, pandas `{pd.__version__}`, scipy `{scipy.__version__}`, "
        f"seaborn `{sns.__version__}`, matplotlib `{mpl.__version__}`.",
        "",
    ]
    for exp, summary, figures in experiments:
        lines += [f"## Experiment `{exp.name}`", "", "### What was run", "", *_what_was_run(exp), ""]
        lines += [
            "### Final reward per configuration",
            "",
            f"Also in `{exp.name}_summary.csv`.",
            "",
            *_table(exp, summary),
            "",
        ]
        lines += ["### Findings", "", *_findings(exp, summary), ""]
        lines += _lecture_section(exp)
        lines += ["### Diverged runs", "", *_diverged(exp), ""]
        lines += ["### Figures", ""]
        for name in figures:
            lines += [f"**{FIGURES[name][1]}.**", "", f"![{exp.name} {name}](figures/{exp.name}_{name}.png)", ""]
        if len(exp.axes) < 2:
            lines += ["(No heatmap: the grid has fewer than two axes.)", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: str | Path) -> list[Path]:
    """Write figures, `<exp>_summary.csv` files and `REPORT.md` under `results`; return the paths written."""
    results = Path(results)
    written: list[Path] = []
    sections = []
    for exp in load_experiments(results):
        summary = summarize(exp)
        path = results / f"{exp.name}_summary.csv"
        atomic_write_text(path, summary.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
        written.append(path)
        names = []
        for name, (draw, _) in FIGURES.items():
            fig = draw(exp, summary)
            path = results / "figures" / f"{exp.name}_{name}.png"
            if fig is None:
                path.unlink(missing_ok=True)  # left from an earlier report, when the figure applied
                continue
            written.append(save_figure(fig, path))
            names.append(name)
        sections.append((exp, summary, names))
    report = results / "REPORT.md"
    atomic_write_text(report, render_report(sections))
    return [*written, report]
