"""Experiments: one grid's stored runs, arranged per configuration, and the summary table.

`load_experiment(results, name)` reads `results/runs/<name>/` (its `grid.toml`,
manifest and runs) into an `Experiment`: the configurations in grid order with
their labels, colours, facets and reference configuration, the finished runs,
each run's final scores and the diverged runs. `summarize` turns it into the
summary table (`<exp>_summary.csv`): per configuration over seeds, mean and IQM
of the final reward with bootstrap CIs and the probability of improvement over
its reference. A run's *final* reward is its mean reward averaged over the last
10% of its epochs (`sortrl.stats.final_scores`). Bootstraps use the fixed seed
`SEED`, so every number is reproducible bit for bit.

Each configuration also knows its highest possible mean reward (`max_reward`,
`max_mean_reward`), which grows with the prompt length; where configurations'
maxima differ (`Experiment.reward_fraction`), figures compare rewards as
fractions of them. Figures are drawn by `sortrl.figures`, `REPORT.md` by
`sortrl.report`, the README's generated blocks by `sortrl.readme`.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns

from sortrl import stats
from sortrl.config import RunConfig, make_config
from sortrl.store import load_runs, read_manifest, runs_dir
from sortrl.sweep import Grid, parse_grid

SEED = 0
"""Seed of every bootstrap in the report."""

LECTURE_SEED = 5
"""The seed of the lecture's own runs (`torch.manual_seed(5)` in CS336 lecture 17)."""

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


@dataclass
class Experiment:
    """One experiment's runs, arranged for the report.

    `configs` has one row per configuration in grid order, indexed by its
    label (`"centered_rewards / clipped / kl=0.01"`), with the raw axis
    values, the `hue` key (colour), the `col` / `row` facet keys and the
    `reference` configuration its rewards are compared with (see `SCALE_FIELDS`)
    and `max_reward`, the highest possible mean reward (`max_mean_reward`).
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
    def reward_fraction(self) -> bool:
        """True when configurations have different, known maximum mean rewards (`max_reward`).

        Then a figure that puts them on one reward axis shows each one's reward
        as a fraction of its own maximum (`reward_scale`), not in reward points.
        """
        maxima = self.configs["max_reward"]
        return bool(maxima.notna().all()) and maxima.nunique() > 1

    def reward_scale(self, label: str) -> float:
        """What figures divide configuration `label`'s rewards by: its maximum if `reward_fraction`, else 1."""
        return float(self.configs.at[label, "max_reward"]) if self.reward_fraction else 1.0

    @property
    def panels_share_scale(self) -> bool:
        """True unless a facet (column or row) axis changes the reward's scale in reward points.

        With `reward_fraction` every panel is in fractions of the maximum, so they share one scale.
        """
        return self.reward_fraction or not set(self.axes[1:3]) & set(SCALE_FIELDS)

    def colour(self, label: str) -> Any:
        """The colour of configuration `label` (the same in every figure of the experiment)."""
        return self.palette[self.configs.at[label, "hue"]]


def value_label(axis: str, value: Any) -> str:
    """How one axis value reads in a label: strings as they are, others as `name=value` (`kl=0.01`)."""
    if isinstance(value, np.generic):  # a value read back from a table: numpy bool, int or float
        value = value.item()
    if isinstance(value, str):
        return value
    name = SHORT_NAMES.get(axis, axis)
    if isinstance(value, bool):
        return f"{name}={str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{name}={value:g}"
    return f"{name}={json.dumps(value, separators=(',', ':'))}"


def join_labels(parts: list[str], empty: str = "") -> str:
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
                "configuration": join_labels(list(labels.values()), "all runs"),
                **dict(zip(axes, values)),
                "hue": join_labels([labels[a] for a in hue_axes], "all runs"),
                "col": labels[axes[1]] if len(axes) > 1 else "",
                "row": labels[axes[2]] if len(axes) > 2 else "",
            }
        )
    return pd.DataFrame(rows).set_index("configuration")


def make_palette(keys: list[str], name: str = "colorblind") -> dict[str, Any]:
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
    configs["max_reward"] = [
        max_mean_reward(make_config(**grid.base, **dict(zip(grid.axes, values)), seed=grid.seeds[0]))
        for values in itertools.product(*grid.axes.values())
    ]
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
        palette=make_palette(list(configs["hue"])),
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


def summarize(exp: Experiment) -> pd.DataFrame:
    """The summary table: one row per configuration, in grid order.

    Columns: `configuration`, the axis values, `baseline` (bool), `reference`
    (the configuration it is compared with; the baseline unless the grid varies
    a `SCALE_FIELDS` axis), `max_reward` (highest possible mean reward, NaN
    when unknown: `max_mean_reward`), `n` (finished runs = seeds aggregated),
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
        row["max_reward"] = config["max_reward"]
        row["n"] = len(x)
        row["n_diverged"] = int((exp.diverged["configuration"] == label).sum())
        row["mean"] = point(stats.mean, x)
        row["std"] = float(np.std(x, ddof=1)) if len(x) > 1 else math.nan
        row["mean_ci_low"], row["mean_ci_high"] = stats.bootstrap_ci([x], stats.mean, SEED)
        row["iqm"] = point(stats.iqm, x)
        row["iqm_ci_low"], row["iqm_ci_high"] = stats.bootstrap_ci([x], stats.iqm, SEED)
        ref = scores(exp, config["reference"]) if config["reference"] != label else np.array([])
        row["p_improve"] = point(stats.probability_of_improvement, x, ref)
        row["p_improve_ci_low"], row["p_improve_ci_high"] = stats.bootstrap_ci(
            [x, ref], stats.probability_of_improvement, SEED
        )
        row["solve_rate"] = point(lambda a: np.mean(a >= 1 - 1e-9), scores(exp, label, "final_greedy_accuracy"))
        for column in (EVAL_REWARD, EVAL_ACCURACY):
            if f"final_{column}" in exp.final:
                row[column.replace("/", "_")] = point(np.nanmean, scores(exp, label, f"final_{column}"))
        rows.append(row)
    return pd.DataFrame(rows)


def point(statistic: Callable[..., Any], *samples: np.ndarray) -> float:
    """`statistic(*samples)` as a float, NaN when a sample is empty."""
    return float(statistic(*samples)) if all(len(s) for s in samples) else math.nan


def verdict(low: float, high: float) -> str:
    """`better`, `worse` or `indistinguishable`: where a P(improve) CI lies relative to 0.5."""
    if low > 0.5:
        return "better"
    if high < 0.5:
        return "worse"
    return "indistinguishable"


def max_mean_reward(cfg: RunConfig) -> float:
    """Highest possible mean reward of a run with `cfg` (reward points), or NaN when it is not one known number.

    A prompt's best response is the sorted prompt, which no response beats
    under the sorting rewards of `sortrl.task`: 2L-1 points for
    `inclusion_ordering` (L inclusion + L-1 ordering), L for `distance`, 1 for
    `exact_match`, for a prompt of length L. The mean reward's maximum is that
    value when every prompt (training and held-out) shares it, or, when each
    epoch sees every training prompt and there are no held-out prompts, its
    mean over the prompts. NaN with a length penalty (a shorter response may
    then score more) or when minibatches of prompts with different maxima make
    the maximum change from epoch to epoch.
    """
    import torch

    from sortrl.task import PAD, REWARDS, TASKS, sorted_prompts

    if cfg.length_penalty != 0:
        return math.nan
    task = TASKS[cfg.task](cfg)
    prompts = torch.cat([task.train, task.eval])
    best = sorted_prompts(prompts)[None, :, None, :]  # [run batch trial pos]
    per_prompt = REWARDS[cfg.reward](prompts, best, best != PAD)[0, :, 0]  # [batch]
    if bool((per_prompt == per_prompt[0]).all()):
        return float(per_prompt[0])
    whole_batch = cfg.prompts_per_epoch is None or cfg.prompts_per_epoch >= len(task.train)
    return float(per_prompt.mean()) if whole_batch and not len(task.eval) else math.nan


def reward_ceiling(exp: Experiment) -> float | None:
    """The maximum mean reward all configurations of `exp` share (`max_mean_reward`), or None if there is none."""
    values = exp.configs["max_reward"]
    return float(values.iloc[0]) if values.notna().all() and values.nunique() == 1 else None


def reward_maxima(exp: Experiment) -> str:
    """`max 5, 7, 9 by prompt_length`: the maximum mean reward of each value of the scale axes, in grid order."""
    maxima = exp.configs.groupby([exp.configs[a].map(json.dumps) for a in exp.scale_axes], sort=False)["max_reward"]
    return f"max {', '.join(f'{m:g}' for m in maxima.first())} by {' / '.join(exp.scale_axes)}"


def is_lecture_experiment(exp: Experiment) -> bool:
    """True when every run has the lecture's settings except `deltas_mode` (its experiments varied only that)."""
    return all(cfg == RunConfig(deltas_mode=cfg.deltas_mode, seed=cfg.seed) for cfg in exp.grid.configs())


def compared_with(exp: Experiment) -> str:
    """What configurations are compared with: `the baseline`, or `the reference` when scale axes vary."""
    return "the reference" if exp.scale_axes else "the baseline"
