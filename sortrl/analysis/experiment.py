"""Experiments: one grid's stored runs joined to its configurations, scored per run, and the summary table.

`load_experiment(results, name)` reads `results/runs/<name>/`: its
`grid.toml` (`sortrl.study.grid`), manifest and chunks (`sortrl.study.store`). Every
stored run is joined to its configuration by the label and seed stored with
it, and kept only if its stored config is the one `grid.toml` asks for now.
While the chunks are read, one at a time and only the columns needed, each
finished run's scores are computed (`FINAL_SCORES`, `sortrl.analysis.scores`: a run's *final*
reward is its mean reward averaged over the last 10% of its epochs,
`sortrl.analysis.stats.final_scores`), and the per-epoch curves are kept only for the
metrics asked for (`curves`, those the figures draw). So memory holds
runs x scores plus the curves, not runs x epochs x every column.

`summarize` turns an `Experiment` into the summary table (`<exp>_summary.csv`):
per configuration over seeds, mean and IQM of the final reward with bootstrap
CIs, the final score (chance-normalised), its paired comparison with its
reference (effect, Wilcoxon p, Holm within the experiment, verdict), the
probability of improvement over the reference (the unpaired view) and the
solve rate with its Wilson interval. Bootstraps use the fixed seed `SEED`, so
every number is reproducible bit for bit.

Each configuration also knows its highest possible mean reward (`max_reward`,
`sortrl.engine.task.best_mean_reward`), which grows with the prompt length, and the
uniform random policy's (`chance_reward`, `chance_eval_reward`); where
configurations' maxima differ (`Experiment.scales_differ`), figures show
rewards chance-normalised.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns

from sortrl.analysis import stats
from sortrl.analysis.scores import SCORES
from sortrl.analysis.scores import compute as compute_scores
from sortrl.analysis.scores import patterns as score_patterns
from sortrl.analysis.verdicts import (
    ALPHA,
    Interval,
    bootstrap_mean,
    chance_normalised,
    holm,
    paired_effect,
    seeds_needed,
    wilcoxon_p,
    wilson,
)
from sortrl.engine.config import RunConfig
from sortrl.engine.registry import ConfigError
from sortrl.engine.task import CHANCE_FIELDS, RewardBounds, reward_bounds
from sortrl.study.grid import DEFAULT_MARGIN, Claim, Configuration, Grid, parse_grid, varying_labels
from sortrl.study.store import (
    Chunk,
    experiment_names,
    read_chunks,
    read_history,
    read_manifest,
    read_rows,
    runs_dir,
)

SEED = 0
"""Seed of every bootstrap in the report."""

LECTURE_SEED = 5
"""The seed of the lecture's own runs (`torch.manual_seed(5)` in CS336 lecture 17)."""

SCALE_FIELDS = ("task", "prompts", "prompt_length", "reward")
"""Fields that change what a reward point is worth (the reward function, or the prompts it counts over).

Figures put configurations with different values of these on one axis only chance-normalised
(`Experiment.scales_differ`). Comparisons are stricter: a configuration's *reference* is the baseline with the
configuration's own values of every field its chance score or best reward depends on (`CHANCE_FIELDS`: these, the
vocabulary, the prompt set's fields and `eos`), so that a paired effect on the final score is a difference of
rewards of one scale and one chance, rescaled (EOS lowers chance: normalising each side by its own chance would
credit a configuration for a lower floor).
"""

PROMPT_LENGTH = "prompt_length"
EVAL_ACCURACY = "eval/greedy_accuracy"
EVAL_REWARD = "eval/mean_reward"

FINAL_SCORES = (
    "final_reward",
    "final_entropy",
    "solved",
    "final_greedy_accuracy",
    "final_response_length",
    "initial_response_length",
    f"final_{EVAL_REWARD}",
    f"final_{EVAL_ACCURACY}",
)
"""Per-run scores (`sortrl.analysis.scores.SCORES`) every experiment computes while loading; a grid's claims add theirs.

A held-out score no run has (without held-out prompts) is left out. `final_score`, the chance-normalised
final reward, is derived from `final_reward` and each configuration's chance and best mean reward.
"""

CURVES = ("mean_reward",)
"""Metrics whose per-epoch curves `load_experiment` keeps by default."""


@dataclass
class Experiment:
    """One experiment's runs, arranged for the report.

    `configs` has one row per configuration in grid order, indexed by its
    label (`"centered_rewards / clipped / kl=0.01"`), with the raw axis
    values, the `hue` key (colour), the `col` / `row` facet keys and the
    `reference` configuration its rewards are compared with (see `SCALE_FIELDS`), the `scale` label
    and `max_reward`, the highest possible mean reward (`best_mean_reward`).
    `final` has one row per finished (`ok`) run, in grid order then seed order:
    `run_id`, `configuration`, `seed`, the scores (`FINAL_SCORES`, the claims'; `final_reward`:
    mean reward over the last 10% of epochs; `final_greedy_accuracy`: greedy
    accuracy after the last epoch; held-out finals when the runs have them).
    `curves` has one row per (finished run, epoch), in no particular order:
    `configuration` (categorical, categories in grid order), `seed`, `epoch`,
    `step` and the curve metrics loaded. `diverged` has one row per
    diverged run.
    """

    name: str
    folder: Path
    """Where its runs are stored (`results/runs/<name>/`)."""
    grid: Grid
    manifest: dict[str, Any] | None
    """The latest sweep's manifest (`sortrl.study.store.read_manifest`)."""
    configs: pd.DataFrame
    final: pd.DataFrame
    curves: pd.DataFrame
    diverged: pd.DataFrame
    baseline: str
    palette: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    trained_by: dict[str, Any] | None = None
    """The manifest of the latest sweep that trained runs (from `manifests.jsonl`): whose versions trained the
    stored runs, which a later sweep that found nothing to train (e.g. to store an edited claim) does not change."""
    identical: dict[str, str] = field(default_factory=dict)
    """Configurations whose results repeat an earlier one's, bit for bit, each mapped to the first configuration it
    repeats (`identical_configurations`): `{"rloo": "centered_rewards"}`."""

    @property
    def axes(self) -> list[str]:
        return list(self.grid.axes)

    @property
    def labels(self) -> list[str]:
        return list(self.configs.index)

    def config(self, label: str) -> RunConfig:
        """The `RunConfig` of configuration `label` (with the grid's first seed)."""
        return self._configurations[label].config

    @property
    def _configurations(self) -> dict[str, Configuration]:
        return {c.label: c for c in self.grid.configurations()}

    @property
    def scale_axes(self) -> list[str]:
        """Axes whose values change the reward's scale (`SCALE_FIELDS`), bundle axes that set one of them included."""
        bundles = self.grid.bundles
        return [
            a
            for a in self.axes
            if a in SCALE_FIELDS or (a in bundles and any(set(v) & set(SCALE_FIELDS) for v in self.grid.axes[a]))
        ]

    @property
    def scales_differ(self) -> bool:
        """True when configurations have different, known maximum mean rewards (`max_reward`).

        Then a figure that puts them on one reward axis shows each one's reward
        chance-normalised, (reward - chance) / (max - chance) with its own
        chance and maximum, not in reward points (`sortrl.render.figures.reward_label`).
        """
        maxima = self.configs["max_reward"]
        return bool(maxima.notna().all()) and maxima.nunique() > 1

    @property
    def panels_share_scale(self) -> bool:
        """True unless a facet (column or row) axis changes the reward's scale in reward points.

        With `scales_differ` every panel is chance-normalised, so they share one scale.
        """
        return self.scales_differ or not set(self.axes[1:3]) & set(SCALE_FIELDS)

    @property
    def reference_axes(self) -> list[str]:
        """The axes on which some configuration's reference differs from the baseline (it keeps its own value)."""
        references = self.configs.loc[self.configs["reference"]]
        return [a for a in self.axes if any(v != self.configs.at[self.baseline, a] for v in references[a].tolist())]

    @property
    def compared_with(self) -> str:
        """What configurations are compared with: `the baseline`, or `the reference` when some have another."""
        return "the reference" if self.reference_axes else "the baseline"

    def colour(self, label: str) -> Any:
        """The colour of configuration `label` (the same in every figure of the experiment)."""
        return self.palette[self.configs.at[label, "hue"]]


def _configurations(grid: Grid, scales: dict[str, str], bounds: list[RewardBounds]) -> pd.DataFrame:
    """One row per configuration of the grid, in its order: axis values, colour and facet keys, reference, scale.

    `max_reward`, `chance_reward` and `chance_eval_reward` (NaN without held-out prompts) are the best and the
    uniform random policy's mean reward (`bounds`, per configuration in grid order); `scale` labels the
    configuration's values of `CHANCE_FIELDS` that vary in the grid (`scales`: `exact_match / eos=true`; empty when
    none vary): configurations of one scale share chance and maximum, so their rewards compare in reward points and
    their final scores alike.
    """
    axes = list(grid.axes)
    hue_axes = axes[:1] + axes[3:]
    configurations = grid.configurations()
    baseline = grid.baseline_configuration
    by_key = {c.key: c.label for c in configurations}
    rows = []
    for c, bound in zip(configurations, bounds, strict=True):
        own = [_sets_scale(grid, a, c, baseline) for a in axes]
        reference = tuple(mine if kept else base for mine, base, kept in zip(c.key, baseline.key, own))
        rows.append(
            {
                "configuration": c.label,
                **c.values,
                "hue": " / ".join(c.labels[a] for a in hue_axes) or "all runs",
                "col": c.labels[axes[1]] if len(axes) > 1 else "",
                "row": c.labels[axes[2]] if len(axes) > 2 else "",
                "reference": by_key.get(reference, c.label),
                "scale": scales[c.label],
                "max_reward": bound.best,
                "chance_reward": bound.chance,
                "chance_eval_reward": bound.chance_eval,
            }
        )
    return pd.DataFrame(rows).set_index("configuration")


def _sets_scale(grid: Grid, axis: str, c: Configuration, baseline: Configuration) -> bool:
    """Whether `c` keeps its own value of `axis` in its reference: the axis is a `CHANCE_FIELDS` field, or a bundle
    axis whose value in `c` or in the baseline sets one (`{ name = "exact_match", reward = "exact_match" }`)."""
    if axis in CHANCE_FIELDS:
        return True
    if axis not in grid.bundles:
        return False
    return any(set(side.values[axis]) & set(CHANCE_FIELDS) for side in (c, baseline))


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


def load_experiment(
    results: str | Path,
    name: str,
    curves: Iterable[str] = CURVES,
    extra_scores: Iterable[str] = (),
    claim_curves: Callable[[list[Claim]], Iterable[str]] | None = None,
    grid_file: tuple[str | Path, str] | None = None,
) -> Experiment:
    """Load experiment `name` from `results/runs/<name>/` (its `grid.toml`, manifest and chunks).

    A stored run counts for configuration L and seed s when it was stored with
    L's label and seed s and its stored config is the one `grid.toml` gives
    L and s today; other runs (left from an older grid file or an older
    `RunConfig`) and extra copies of a (configuration, seed) pair are ignored,
    with a line in `notes`. `curves`: the metrics whose per-epoch values are
    kept (`Experiment.curves`); every other metric is read only to score runs.
    The scores are `FINAL_SCORES`, those the grid's claims name, and `extra_scores`. `claim_curves`: the
    metrics the claims' figures draw per epoch, kept too (`sortrl.render.claim_figures.curves_needed`); the curves
    the claims' own tests read (`Claim.curves`, within-run correlations) are always kept.
    """
    folder = runs_dir(results, name)
    grid = parse_grid((folder / "grid.toml").read_text(), folder / "grid.toml")
    if grid_file is not None:  # the user's file: its claims and figures, on the stored runs
        path, text = grid_file
        grid = same_runs(parse_grid(text, path), grid, path)
    manifest, trained_by = sweep_records(folder)
    chunks = read_chunks(folder)
    configurations = grid.configurations()
    scales = varying_labels(configurations, CHANCE_FIELDS)
    bounds = [reward_bounds(c.config) for c in configurations]
    claim_tests_curves = [c for claim in grid.claims for c in claim.curves]  # what within-run tests read
    curves = [*curves, *claim_tests_curves, *(claim_curves(list(grid.claims)) if claim_curves is not None else ())]
    wanted = [*FINAL_SCORES, *(m for c in grid.claims for m in c.scores), *extra_scores]
    names = list(dict.fromkeys(n for n in wanted if n in SCORES))
    configs = _configurations(grid, scales, bounds)
    runs, final, curves_table, stored = _read_runs(
        chunks, grid, list(configs.index), list(dict.fromkeys(curves)), names
    )
    notes = []
    if stored > len(runs):
        notes.append(
            f"{stored - len(runs)} stored run(s) match no configuration and seed of grid.toml (or repeat one) "
            "and were ignored."
        )
    missing = len(configs) * len(grid.seeds) - len(runs)
    if missing > 0:
        notes.append(f"{missing} run(s) of the grid are not stored (the sweep is incomplete).")
    for column in names:
        if column not in final and column in CORE_SCORES:
            final[column] = np.nan
        elif column in final and column not in CORE_SCORES and not final[column].notna().any():
            final = final.drop(columns=column)
    chance = final["configuration"].map(configs["chance_reward"]).to_numpy(float)
    best = final["configuration"].map(configs["max_reward"]).to_numpy(float)
    final["final_score"] = chance_normalised(final["final_reward"].to_numpy(float), chance, best)
    tokens = {c.label: c.config.num_tokens for c in configurations}
    final["near_uniform"] = _near_uniform(final, tokens)
    diverged = runs[runs["status"] != "ok"][["configuration", "seed", "run_id", "diverged_epoch"]]
    diverged = diverged.reset_index(drop=True)
    return Experiment(
        name=name,
        folder=folder,
        grid=grid,
        manifest=manifest,
        trained_by=trained_by,
        configs=configs,
        final=final,
        curves=curves_table,
        diverged=diverged,
        baseline=grid.baseline_configuration.label,
        palette=make_palette(list(configs["hue"])),
        notes=notes,
        identical=identical_configurations(list(configs.index), final, curves_table, diverged),
    )


def identical_configurations(
    labels: list[str], final: pd.DataFrame, curves: pd.DataFrame, diverged: pd.DataFrame
) -> dict[str, str]:
    """Configurations whose results repeat an earlier configuration's, each mapped to the first one it repeats.

    Two configurations of one experiment are *identical* when their runs give the same numbers, bit for bit, on
    every seed: they finished the same seeds, diverged on the same seeds at the same epochs, and every score
    (`final`: final reward, entropy, greedy accuracy, final score, ...) and every per-epoch value of every curve
    kept (`curves`, at least the `mean_reward` the figures draw) is bit-equal seed for seed. (Equal settings give
    that, but so can different ones: with `kl_penalty = 0` the reference policy's refresh period changes nothing.)
    A curve or score not loaded is not compared. A configuration without finished runs repeats none.

    `labels`: the configurations compared, in grid order (the first of a set of identical ones is the one the others
    map to); `final`, `curves`, `diverged`: tables of `Experiment`'s columns (a `configuration` column; `seed` and `epoch`
    give the order compared). Returns `{twin: first}`, e.g. `{"rloo": "centered_rewards"}`; empty when none repeat.
    """
    tables = (
        final.drop(columns="run_id").sort_values("seed", kind="stable"),
        curves.sort_values(["seed", "epoch"], kind="stable"),  # stored in no particular order
        diverged.drop(columns="run_id").sort_values("seed", kind="stable"),
    )
    found: dict[str, list[bytes]] = {label: [b""] * len(tables) for label in labels}
    for i, table in enumerate(tables):
        for label, part in table.groupby("configuration", sort=False, observed=True):
            if label in found:
                found[label][i] = b"".join(_bits(part[c]) for c in part if c != "configuration")
    first: dict[tuple[bytes, ...], str] = {}
    twins = {}
    for label, bits in found.items():
        if bits[0]:  # it has finished runs
            earlier = first.setdefault(tuple(bits), label)
            if earlier != label:
                twins[label] = earlier
    return twins


def _bits(column: pd.Series) -> bytes:
    """A column's values as bytes: the bits of a numeric one (so `0.0` and `-0.0` differ, a NaN equals itself)."""
    values = column.to_numpy()
    if values.dtype == object:  # no raw bits to compare (they would be pointers): the values' text
        return "\0".join(map(repr, values)).encode()
    return np.ascontiguousarray(values).tobytes()


def _read_runs(
    chunks: list[Chunk], grid: Grid, labels: list[str], curves: list[str], names: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]:
    """Read the rows of `chunks` one chunk at a time: (runs, final scores, curves, number of runs stored).

    `runs`: one row per run of the grid (`RUN_COLUMNS`); `final`: one row per
    finished run with the scores `names` (`sortrl.analysis.scores`), both in grid then seed order;
    `curves`: the per-epoch `curves` of the finished runs.
    """
    expected = {(run.configuration, run.seed): run.config.run_id for run in grid.runs()}
    order = {label: i for i, label in enumerate(labels)}
    columns, patterns = ["step", *curves], score_patterns(names)
    stored, matched, scored, kept, taken = 0, [], [], [], set()
    for chunk in chunks:
        stored += len(chunk.runs)
        runs = [  # a run counts when it is the one the grid asks for today: its config and plug-ins' code (run id)
            r
            for r in chunk.runs
            if expected.get((r["configuration"], r["seed"])) == r["run_id"]
            and (r["configuration"], r["seed"]) not in taken
        ]
        taken |= {(r["configuration"], r["seed"]) for r in runs}
        matched.append(pd.DataFrame(runs, columns=list(RUN_COLUMNS)))
        ok = matched[-1][matched[-1]["status"] == "ok"].reset_index(drop=True)
        if ok.empty:
            continue
        rows = read_rows(chunk, columns, patterns)
        codes, ids = pd.factorize(rows["run_id"])
        position = pd.Series(np.arange(len(ok)), index=ok["run_id"]).reindex(ids, fill_value=-1).to_numpy()
        run = position[codes]  # each row's run, as its position in `ok` (-1: not a run of this experiment)
        rows = rows[run >= 0].assign(run=run[run >= 0])
        scored.append(ok.drop(columns=["status", "diverged_epoch"]).join(compute_scores(names, rows)))
        configuration = ok["configuration"].map(order).to_numpy()[rows["run"]]
        kept.append(
            pd.DataFrame(
                {
                    "configuration": pd.Categorical.from_codes(configuration, labels),
                    "seed": ok["seed"].to_numpy()[rows["run"]],
                    **{c: rows[c].to_numpy() for c in ("epoch", "step", *curves) if c in rows},
                }
            )
        )
    runs = _in_grid_order(pd.concat(matched, ignore_index=True) if matched else _no_runs(), order)
    final = _in_grid_order(
        pd.concat(scored) if scored else _no_runs().drop(columns=["status", "diverged_epoch"]), order
    )
    empty = {"configuration": pd.Categorical([], labels), **{c: np.zeros(0, int) for c in ("seed", "epoch", "step")}}
    return runs, final, pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(empty), stored


CORE_SCORES = ("final_reward", "final_greedy_accuracy", "final_response_length")
"""Scores every run has (always columns of `Experiment.final`, NaN without runs)."""


RUN_COLUMNS = ("run_id", "configuration", "seed", "status", "diverged_epoch")


def _no_runs() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype=object if c in ("run_id", "configuration", "status") else int) for c in RUN_COLUMNS}
    )


def _in_grid_order(table: pd.DataFrame, order: dict[str, int]) -> pd.DataFrame:
    """`table` (a `configuration` and a `seed` column) sorted by configuration in grid order, then seed."""
    rank = table["configuration"].map(order).to_numpy()
    return table.iloc[np.lexsort([table["seed"].to_numpy(), rank])].reset_index(drop=True)


def sweep_records(folder: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """An experiment folder's latest sweep manifest and the manifest of the latest sweep that trained runs
    (`Experiment.manifest`, `Experiment.trained_by`)."""
    trained_by = next((m for m in reversed(read_history(folder)) if m.get("trained")), None)
    return read_manifest(folder), trained_by


def same_runs(mine: Grid, stored: Grid, path: str | Path) -> Grid:
    """`mine` if it names the same experiment, seeds and configurations as `stored` (what the runs were trained
    from); `ConfigError` naming `path` and what differs otherwise."""
    if mine.name != stored.name:
        raise ConfigError(f"{path}: name {mine.name!r}, but it is to replace the stored grid of {stored.name!r}")

    def configurations(grid: Grid) -> dict[str, dict]:
        return {c.label: {k: v for k, v in c.config.to_dict().items() if k != "seed"} for c in grid.configurations()}

    ours, theirs = configurations(mine), configurations(stored)
    if mine.seeds != stored.seeds or ours != theirs:
        changed = sorted(k for k in ours if ours[k] != theirs.get(k))
        if mine.seeds != stored.seeds:
            what = "its seeds differ"
        elif changed:
            what = f"configuration {changed[0]!r} differs"
        else:
            what = f"configuration {sorted(set(theirs) - set(ours))[0]!r} is gone"
        raise ConfigError(
            f"{path}: {what} from the runs stored for {stored.name}; run `sortrl sweep {path}` to train them first"
        )
    return mine


def load_experiments(results: str | Path, curves: Iterable[str] = CURVES) -> list[Experiment]:
    """Every experiment under `results/runs/`, in name order."""
    return [load_experiment(results, name, curves) for name in experiment_names(results)]


NEAR_UNIFORM = 0.9
"""A run whose final entropy is at least this share of ln(vocabulary) ends near a uniform policy: it learned nothing."""


def _near_uniform(final: pd.DataFrame, tokens: dict[str, int]) -> pd.Series:
    """Per run: whether its final entropy is >= NEAR_UNIFORM x ln(its vocabulary size `tokens[label]`), the entropy of
    a uniform policy over the tokens it samples (`RunConfig.num_tokens`); False where unknown. `Experiment.final`'s
    `near_uniform` column."""
    if final.empty or "final_entropy" not in final:
        return pd.Series(False, index=final.index, dtype=bool)
    ln_v = np.log(final["configuration"].map(tokens).astype(float))
    return (final["final_entropy"] >= NEAR_UNIFORM * ln_v).fillna(False).astype(bool)


def scores(exp: Experiment, label: str, column: str = "final_reward") -> np.ndarray:
    """Final scores `[run]` of configuration `label`, in seed order."""
    return exp.final.loc[exp.final["configuration"] == label, column].to_numpy(dtype=float)


def paired(exp: Experiment, label: str, other: str, column: str = "final_score") -> tuple[np.ndarray, np.ndarray]:
    """Scores `column` of configurations `label` and `other` on the seeds both finished, aligned by seed."""
    final = exp.final[exp.final["configuration"].isin([label, other])]
    table = final.pivot_table(index="seed", columns="configuration", values=column, aggfunc="first", observed=True)
    table = table.reindex(columns=[label, other]).dropna()
    return table[label].to_numpy(dtype=float), table[other].to_numpy(dtype=float)


MARGIN = DEFAULT_MARGIN
"""Equivalence margin of the grids' comparisons, in final-score units (chance-normalised: 0.05 of the way from
the uniform random policy to the best possible reward): a paired CI inside +-MARGIN is `no difference`."""

VERDICTS = ("better", "worse", "no difference", "inconclusive")
"""A comparison's verdict, from its Holm-corrected test (`comparison_verdict`)."""


WILCOXON_EFFICIENCY = 3 / math.pi
"""Asymptotic relative efficiency of the Wilcoxon signed-rank test to the paired t-test for normal data (0.955)."""


def comparison_verdict(effect: Interval, p_holm: float, margin: float = MARGIN) -> str:
    """`better` / `worse` (corrected p < 0.05, by the sign of the paired effect), `no difference` (not significant,
    95% CI inside +-margin) or `inconclusive`. The report's descriptive reading of a comparison nobody predicted;
    the claims ledger's verdicts test predictions (`sortrl.analysis.verdicts.verdict`)."""
    if math.isnan(effect.point) or math.isnan(p_holm):
        return "inconclusive"
    if p_holm < ALPHA and effect.point != 0:
        return "better" if effect.point > 0 else "worse"
    inside = not math.isnan(effect.low) and effect.within(margin)
    return "no difference" if inside else "inconclusive"


def summarize(exp: Experiment) -> pd.DataFrame:
    """The summary table: one row per configuration, in grid order.

    Columns: `configuration`, the axis values, `baseline` (bool), `reference`
    (the configuration it is compared with: the baseline with the
    configuration's own reward, prompts and EOS, `CHANCE_FIELDS`), `scale`
    (those values, where the grid varies them), `max_reward` (highest possible mean
    reward, NaN when unknown: `best_mean_reward`) and `chance_reward` (the
    uniform random policy's), `n` (finished runs = seeds aggregated),
    `n_diverged`; the final reward in reward points: `mean`, `std` (ddof 1),
    `mean_ci_low/high`, `iqm`, `iqm_ci_low/high` (95% percentile bootstrap,
    `stats.N_RESAMPLES`); the final score (chance-normalised final reward,
    0 = chance, 1 = best): `score`, `score_ci_low/high`, `score_iqm`.

    Against the reference (NaN for a reference itself), paired by seed on
    the final score (`n_paired` seeds finished by both): `effect` = mean of the
    per-seed differences with `effect_ci_low/high` (bootstrap over seeds,
    `sortrl.analysis.verdicts.paired_effect`), `p_value` (two-sided Wilcoxon signed-rank),
    `p_holm` (Holm over the table's comparisons: one family per experiment),
    `verdict` (`comparison_verdict`, margin `MARGIN`), `seeds_needed` (for an
    inconclusive one: seeds a paired test would need to detect an effect of
    `MARGIN` at 80% power); and the unpaired view `p_improve` = P(final reward
    of this configuration > its reference's) with `p_improve_ci_low/high`.
    `n_solved` runs whose greedy policy sorts every training prompt after the
    last epoch, `solve_rate` with its Wilson 95% interval
    `solve_rate_ci_low/high`; and the mean final held-out metrics when the
    runs have them.
    """
    rows = []
    for label, config in exp.configs.iterrows():
        x = scores(exp, label)
        row: dict[str, Any] = {"configuration": label, **{a: config[a] for a in exp.axes}}
        row["baseline"] = label == exp.baseline
        row["reference"] = config["reference"]
        row["scale"] = config["scale"]
        row["max_reward"] = config["max_reward"]
        row["chance_reward"] = config["chance_reward"]
        row["n"] = len(x)
        row["n_diverged"] = int((exp.diverged["configuration"] == label).sum())
        row["mean"] = point(stats.mean, x)
        row["std"] = float(np.std(x, ddof=1)) if len(x) > 1 else math.nan
        row["mean_ci_low"], row["mean_ci_high"] = stats.bootstrap_ci([x], stats.mean, SEED)
        row["iqm"] = point(stats.iqm, x)
        row["iqm_ci_low"], row["iqm_ci_high"] = stats.bootstrap_ci([x], stats.iqm, SEED)
        score = bootstrap_mean(scores(exp, label, "final_score"), SEED)
        row["score"], row["score_ci_low"], row["score_ci_high"] = score.point, score.low, score.high
        row["score_iqm"] = point(stats.iqm, scores(exp, label, "final_score"))
        row.update(_against_reference(exp, label, config["reference"]))
        solved = scores(exp, label, "final_greedy_accuracy") >= 1 - 1e-9
        rate = wilson(int(solved.sum()), len(solved))
        row["n_solved"] = int(solved.sum())
        row["solve_rate"], row["solve_rate_ci_low"], row["solve_rate_ci_high"] = rate.point, rate.low, rate.high
        for column in (EVAL_REWARD, EVAL_ACCURACY):
            if f"final_{column}" in exp.final:
                row[column.replace("/", "_")] = point(np.nanmean, scores(exp, label, f"final_{column}"))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p_value"].to_numpy(dtype=float))
    table["verdict"] = [
        comparison_verdict(Interval(r.effect, r.effect_ci_low, r.effect_ci_high, r.n_paired), r.p_holm)
        if not math.isnan(r.p_holm)
        else ""
        for r in table.itertuples()
    ]
    table["seeds_needed"] = [
        _seeds_needed(exp, r.configuration, r.reference) if r.verdict == "inconclusive" else math.nan
        for r in table.itertuples()
    ]
    order = [c for c in table if c not in ("p_holm", "verdict", "seeds_needed")]
    at = order.index("p_value") + 1
    return table[order[:at] + ["p_holm", "verdict", "seeds_needed"] + order[at:]]


def _against_reference(exp: Experiment, label: str, reference: str) -> dict[str, Any]:
    """The paired comparison of `label` with `reference` on the final score, and P(improve) on the final reward."""
    row: dict[str, Any] = dict.fromkeys(("effect", "effect_ci_low", "effect_ci_high", "p_value"), math.nan)
    x, ref = scores(exp, label), scores(exp, reference) if reference != label else np.array([])
    row["n_paired"] = 0
    if reference != label:
        a, b = paired(exp, label, reference)
        effect = paired_effect(a, b, SEED) if len(a) else Interval(math.nan, math.nan, math.nan, 0)
        row["n_paired"] = len(a)
        row["effect"], row["effect_ci_low"], row["effect_ci_high"] = effect.point, effect.low, effect.high
        row["p_value"] = wilcoxon_p(a - b)
    row["p_improve"] = point(stats.probability_of_improvement, x, ref)
    row["p_improve_ci_low"], row["p_improve_ci_high"] = stats.bootstrap_ci(
        [x, ref], stats.probability_of_improvement, SEED
    )
    return row


def _seeds_needed(exp: Experiment, label: str, reference: str) -> float:
    a, b = paired(exp, label, reference)
    needed = seeds_needed(a - b, MARGIN, efficiency=WILCOXON_EFFICIENCY)  # the report's comparisons use Wilcoxon
    return float(needed) if needed is not None else math.nan


def point(statistic: Callable[..., Any], *samples: np.ndarray) -> float:
    """`statistic(*samples)` as a float, NaN when a sample is empty."""
    return float(statistic(*samples)) if all(len(s) for s in samples) else math.nan


def reward_ceiling(exp: Experiment) -> float | None:
    """The maximum mean reward all configurations of `exp` share (`best_mean_reward`), or None if there is none."""
    values = exp.configs["max_reward"]
    return float(values.iloc[0]) if values.notna().all() and values.nunique() == 1 else None


def reward_maxima(exp: Experiment) -> str:
    """`max 5, 7, 9 by prompt_length`: the maximum mean reward of each value of the scale axes, in grid order."""
    maxima = exp.configs.groupby([exp.configs[a].map(json.dumps) for a in exp.scale_axes], sort=False)["max_reward"]
    return f"max {', '.join(f'{m:g}' for m in maxima.first())} by {' / '.join(exp.scale_axes)}"


def is_lecture_experiment(exp: Experiment) -> bool:
    """True when every configuration has the lecture's settings except `deltas_mode` (its experiments varied only that)."""
    return all(
        c.config == RunConfig(deltas_mode=c.config.deltas_mode, seed=c.config.seed) for c in exp.grid.configurations()
    )
