"""Grid files: a study's TOML, validated, and its expansion into configurations and runs.

A grid file is TOML:

    name = "ablations"          # names the outputs (results/runs/<name>/, figures)
    seeds = 32                  # seeds 0..31; or a range: seeds = { start = 1000, count = 128 }; or a list: [5]
    highlight_seed = 5          # optional: the report draws this seed's curve on top
    figures = ["reward_curves"] # optional: only these report figures (default: every one that applies)
    baseline = { deltas_mode = "rewards", loss_mode = "naive" }  # optional: the reference configuration

    [base]                      # RunConfig fields shared by every run
    num_epochs = 100

    [grid]                      # RunConfig fields whose lists are crossed
    deltas_mode = ["rewards", "centered_rewards"]
    loss_mode = ["naive", "clipped"]

    [[claim]]                   # optional, repeated: a claim the grid tests (see `Claim`)
    id = "L1"
    statement = "Centering the rewards helps compared with raw rewards."
    source = "CS336 lecture 17"
    new = { deltas_mode = "centered_rewards" }
    old = { deltas_mode = "rewards" }
    predicts = "higher"

Any `RunConfig` field may be a base value or an axis, and so may `recipe`
(a named preset, `sortrl.engine.recipes`): a recipe's fields come first and explicit
fields override them. An axis that is not a field is a *bundle* axis: each of
its values is a table of fields with a `name` (which labels it), e.g. two
regimes a claim is tested in:

    regime = [{ name = "lecture" }, { name = "explore", temperature = 2.0, entropy_coeff = 0.3 }]

Grid files are only ever parsed as TOML.

A *configuration* is one combination of axis values, named by its label
(`"centered_rewards / clipped / kl=0.01"`); its seeds are its replicates, a
*run* is one (configuration, seed). `Grid.configurations()` is the one place
the axes are crossed. Values are compared in one form, `normal` (so `0` and
`0.0` are one value of `kl_penalty`).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sortrl.engine.config import (
    FIELD_NAMES,
    MAX_SEED,
    RunConfig,
    ignored_fields,
    make_config,
    peer_differences,
    plain,
    run_id_of,
)
from sortrl.engine.registry import ConfigError, check_choice
from sortrl.engine.task import TASKS

GRID_KEYS = ("name", "seeds", "highlight_seed", "baseline", "figures", "base", "grid", "claim", "pilot")
PILOT_KEYS = ("purpose", "choose", "family")
"""A pilot grid's `[pilot]` table (`Pilot`)."""
MAX_RUNS = 1_000_000
"""Most runs one grid file may expand to (axis values x seeds)."""

SHORT_NAMES = {"kl_penalty": "kl", "learning_rate": "lr"}
"""Abbreviations of numeric axes in configuration labels (`kl=0.01`)."""

CLAIM_KEYS = (
    "id", "statement", "subject", "source", "kind", "metric", "new", "old", "predicts", "margin",
    "axis", "within", "across", "seed", "implied", "figure", "x", "skip", "margin_reason", "identity", "tolerance",
    "rationale", "against", "versus", "check",
)  # fmt: skip
CHECK_LEVELS = ("runs", "gradient")
"""Where an implementation check is checked (`Claim.check`): on the stored runs' metric, or on one step's gradient."""
KINDS = ("pair", "each", "trend", "interaction", "magnitude", "within-run", "level")
"""How a claim compares configurations (see `Claim`)."""
PREDICTIONS = {"higher": ">", "lower": "<", "same": "=", "not lower": ">=", "not higher": "<="}
"""What a claim predicts of its effect (as `sortrl.analysis.verdicts` spells it): above 0, below 0, 0 within its
margin, above -margin (non-inferior), below +margin."""
DEFAULT_METRIC = "final_score"
"""A claim's metric unless it names one: the chance-normalised final reward."""
DEFAULT_MARGIN = 0.05
"""A claim's equivalence margin unless it gives one (in the metric's units: 5% of the range above chance)."""
DEFAULT_MARGIN_REASON = "5% of the range from chance to the best score: the ledger's rule, 5% of the metric's range."
"""Why `DEFAULT_MARGIN` (for the default metric, the chance-normalised final score)."""


# --- values and labels ----------------------------------------------------------
def normal(value: Any) -> str:
    """One comparable, hashable form of a config value: JSON of `config.plain(value)`, numbers compared as numbers.

    `0`, `0.0` and `np.float64(0)` give `"0.0"`; `[3, 4]` and `(3, 4)` give `"[3.0, 4.0]"`;
    strings and booleans stay themselves (`true` is not `1`).
    """

    def numbers(v: Any) -> Any:
        if isinstance(v, list):
            return [numbers(x) for x in v]
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, int) and not isinstance(v, bool) and float(v) == v:
            return float(v)
        return v

    return json.dumps(numbers(plain(value)))


def value_label(axis: str, value: Any) -> str:
    """How one axis value reads in a label: strings as they are, a bundle by its name, others as `name=value`."""
    if isinstance(value, np.generic):  # a value read back from a table: numpy bool, int or float
        value = value.item()
    if isinstance(value, dict):
        return str(value["name"])
    if isinstance(value, str):
        return value
    name = SHORT_NAMES.get(axis, axis)
    if isinstance(value, bool):
        return f"{name}={str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{name}={value:g}"
    return f"{name}={json.dumps(value, separators=(',', ':'))}"


def varying_labels(configurations: list[Configuration], fields: tuple[str, ...]) -> dict[str, str]:
    """Per configuration (by label), its values of those `fields` that differ between `configurations`, as one
    label (`exact_match / eos=true`; empty when none differ)."""

    def text(value: Any) -> Any:  # prompts and mixed prompt lengths as compact JSON (tuples dump as lists)
        return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, tuple)) else value

    varying = [f for f in fields if len({json.dumps(getattr(c.config, f)) for c in configurations}) > 1]
    return {c.label: " / ".join(value_label(f, text(getattr(c.config, f))) for f in varying) for c in configurations}


def join_labels(parts: list[str], empty: str = "") -> str:
    return " / ".join(parts) if parts else empty


# --- the parsed grid ---------------------------------------------------------------
class Configuration(NamedTuple):
    """One combination of the grid's axis values (its runs differ only in their seed)."""

    label: str
    """`value_label`s of the axis values joined by ` / ` (`"all runs"` for a grid without axes)."""
    values: dict[str, Any]
    """Axis -> value as written in the grid file, in axis order."""
    labels: dict[str, str]
    """Axis -> `value_label` of its value."""
    fields: dict[str, Any]
    """`[base]` plus the axis values: `make_config(**fields, seed=s)` is the run with seed `s`."""
    config: RunConfig
    """The run with the grid's first seed."""

    @property
    def key(self) -> tuple[str, ...]:
        """The axis values in `normal` form: equal keys, equal configurations."""
        return tuple(normal(v) for v in self.values.values())


class Run(NamedTuple):
    """One run of a grid: its configuration's label, its seed and its `RunConfig`."""

    configuration: str
    seed: int
    config: RunConfig


@dataclass(frozen=True)
class Claim:
    """A claim a grid tests, declared in its file as a `[[claim]]` table; the report tests it on the stored runs.

    Every effect is computed per seed (a seed is the same initial model and
    data stream in every configuration) on the per-run score `metric`
    (`sortrl.analysis.scores.SCORES`, or `final_score`), then averaged over seeds:

    | kind | effect per seed |
    | --- | --- |
    | `pair` | metric of `new` minus metric of `old` |
    | `each` | as `pair`, for every value of `axis` (at `new`'s other values) against `old` |
    | `trend` | each step along `axis` (a value minus the one before it, in file order), others at `new` |
    | `interaction` | (`new` - `old`) at the first value of `within`'s axis minus at its second |
    | `magnitude` | abs(`new` - `old`) at the first value of `within`'s axis minus at its second; or, with `versus`, |
    | | abs(`new` - `old`) minus abs(`versus.new` - `versus.old`): which of two contrasts is larger |
    | `within-run` | Spearman rho over a run's epochs between the curves `x` and `metric`, mean over configurations |
    | `level` | metric of `new` minus the constant `against` (a one-sample test: "the bias is gone" is a gap of 0) |

    Configurations are chosen by `new` / `old` (axis or field values); the
    axes they leave open take the baseline's values. With `across` (an axis,
    by default `regime` when the grid has one) the claim is tested once at each
    of that axis's values. `predicts`: `higher` (effect > 0), `lower`, `same`
    (|effect| within `margin`), `not lower` (effect > -margin: non-inferiority)
    or `not higher` (effect < margin).
    """

    id: str
    """Short, unique in the grid (`L1`)."""
    statement: str
    """The claim in one sentence, as its source makes it."""
    subject: str
    """What changes from `old` to `new`, as a noun (`centering`), for generated sentences."""
    source: str
    """Where the claim is made (paper or lecture section)."""
    new: dict[str, Any]
    old: dict[str, Any]
    predicts: str
    """`higher`, `lower`, `same`, `not lower` or `not higher`: what the source predicts of the effect."""
    seed: int | None = None
    """The seed of the single run the source drew the claim from, if it did (the lecture's: 5)."""
    kind: str = "pair"
    metric: str = DEFAULT_METRIC
    margin: float = DEFAULT_MARGIN
    """Equivalence margin, in the metric's units: the smallest effect that matters (`margin_reason` says why)."""
    margin_reason: str = ""
    """Why `margin` has its value, from the source or a stated unit (never from the data it judges)."""
    rationale: str = ""
    """Why the test measures what the source claims (its kind, metric and arms), in one line."""
    identity: str = ""
    """Why the claim holds by construction, if it does: then it is an implementation check (every seed must agree
    with the prediction, within `tolerance`), outside the ledger's tests and counts."""
    tolerance: float = 0.0
    """An implementation check's allowance per seed (metric units): float rounding of two orders of summation."""
    check: str = "runs"
    """Where an implementation check is checked: `runs` (the stored runs' `metric`, seed by seed) or `gradient`
    (for an identity about one step's gradient: both configurations' loss gradients on the same parameters and
    sampled batch, `sortrl.engine.paired`, within float32's rounding bound; the runs' metric stays as context)."""
    axis: str | None = None
    """`trend`: the axis along which each step is tested."""
    within: dict[str, list[Any]] = field(default_factory=dict)
    """`interaction`, `magnitude`: one axis and two of its values, where the `new` - `old` contrast is compared."""
    across: str | None = None
    """The axis whose every value gets its own test (`regime`); None: one test."""
    implied: float | None = None
    """The effect size the source implies (metric units), for the seeds a test would need; None: `margin`."""
    figure: str | None = None
    """The figure drawn for the claim (`sortrl.render.claim_figures.FIGURES`); None: the kind's default."""
    x: str | None = None
    """`within-run`: the curve on the other axis (a per-epoch metric, like `metric` for this kind)."""
    skip: tuple[Any, ...] = ()
    """`each`: values of `axis` not compared with `old` (a reference drawn beside them, such as `sft`)."""
    against: float = 0.0
    """`level`: the constant the metric of `new` is compared with (metric units): what it is without the effect."""
    versus: dict[str, dict[str, Any]] = field(default_factory=dict)
    """`magnitude` without `within`: the second contrast, `{ new = {...}, old = {...} }` (as `new` / `old`), whose
    size the first one's is compared with (e.g. a change of reward against a change of algorithm)."""

    @property
    def contrasts(self) -> list[dict[str, Any]]:
        """The four configurations an `interaction` or `magnitude` claim compares, as `Grid.select` takes them:
        `new`, `old` at `within`'s first value, then at its second; or `new`, `old`, `versus.new`, `versus.old`."""
        if self.versus:
            return [self.new, self.old, self.versus["new"], self.versus["old"]]
        axis, (first, second) = next(iter(self.within.items()))
        return [{**side, axis: v} for v in (first, second) for side in (self.new, self.old)]

    @property
    def scores(self) -> tuple[str, ...]:
        """The per-run scores this claim needs (none for `within-run`: it reads curves, `curves`)."""
        return () if self.kind == "within-run" else tuple(m for m in (self.metric, self.x) if m)

    @property
    def curves(self) -> tuple[str, ...]:
        """The per-epoch curves this claim's test reads (`within-run`: `x` and `metric`)."""
        return (self.x, self.metric) if self.kind == "within-run" and self.x else ()

    @property
    def prediction(self) -> str:
        """The prediction as `sortrl.analysis.verdicts` spells it: `>`, `<`, `=`, `>=` or `<=`."""
        return PREDICTIONS[self.predicts]


@dataclass(frozen=True)
class Pilot:
    """A pilot grid's declaration (`[pilot]`): a grid run on seeds no ledger grid uses, whose outcomes `sortrl report`
    writes to PILOT.md, so the choices the ledger makes are recorded before the data that judges them.

    `choose`: the axis whose value the pilot picks for the ledger (the value whose configurations score highest on
    the final score, among values none of whose configurations ends near a uniform policy); `family`: the ledger
    grid and axis that must hold every configuration the pilot tried (so the correction pays for the search).
    """

    purpose: str
    choose: str | None = None
    family: tuple[str, str] | None = None
    """`(grid name, axis)`."""


@dataclass(frozen=True)
class Grid:
    """A parsed grid file: the experiment's name, seeds, shared fields, crossed axes and claims."""

    name: str
    seeds: tuple[int, ...]
    base: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    highlight_seed: int | None = None
    text: str = ""
    claims: tuple[Claim, ...] = ()
    figures: tuple[str, ...] | None = None
    """The report's figures to draw for the grid (`sortrl.render.figures.FIGURES` names); None: every one that applies."""
    pilot: Pilot | None = None
    """Set for a pilot grid (`[pilot]`)."""

    @cached_property
    def _configurations(self) -> tuple[Configuration, ...]:
        names = list(self.axes)
        out = []
        for values in itertools.product(*self.axes.values()):  # the one expansion of the axes
            chosen = dict(zip(names, values))
            labels = {axis: value_label(axis, value) for axis, value in chosen.items()}
            fields = dict(self.base)
            for axis, value in chosen.items():  # a bundle axis's value is a table of fields
                fields.update(bundle_fields(value) if isinstance(value, dict) else {axis: value})
            label = join_labels(list(labels.values()), "all runs")
            out.append(Configuration(label, chosen, labels, fields, make_config(**fields, seed=self.seeds[0])))
        return tuple(out)

    def configurations(self) -> list[Configuration]:
        """Every combination of axis values, in the file's (product) order; `ConfigError` for a bad value."""
        return list(self._configurations)

    def runs(self) -> list[Run]:
        """Every run: each configuration with each seed, in that order."""
        runs = []
        for c in self._configurations:
            fields = c.config.to_dict()
            runs += [Run(c.label, seed, with_seed(c.config, seed, fields)) for seed in self.seeds]
        return runs

    def ignored_fields(self) -> dict[str, str]:
        """Fields the file sets (in `[base]` or as an axis) that no configuration reads, each with why.

        For a warning once per grid file (`sortrl sweep`), not once per run: a
        field counts only if every configuration ignores it (an `epsilon_high`
        axis crossed with `loss_mode = ["naive", "clipped"]` is read by the
        clipped ones).
        """
        unread = [ignored_fields(c.config) for c in self._configurations]
        return {
            name: unread[0][name]
            for name in (*self.base, *self.axes)
            if unread and all(name in fields for fields in unread)
        }

    def peer_differences(self) -> dict[str, str]:
        """Where some configuration computes otherwise than the peer code its option is named after: {field: what
        differs} (`sortrl.engine.config.peer_differences`), for a warning once per grid file."""
        return {k: v for c in self._configurations for k, v in peer_differences(c.config).items()}

    @property
    def num_runs(self) -> int:
        return len(self.seeds) * math.prod(len(v) for v in self.axes.values())

    def find(self, values: dict[str, Any]) -> Configuration | None:
        """The first configuration with every one of `values`, or None.

        A key is a `RunConfig` field (compared in `normal` form) or a bundle
        axis (compared by its value's `name`).
        """
        found = self.matching(values)
        return found[0] if found else None

    def matching(self, values: dict[str, Any]) -> list[Configuration]:
        """Every configuration with every one of `values` (as `find` compares them), in grid order."""
        wanted = {k: v if k in self.bundles else normal(v) for k, v in values.items() if k != "seed"}
        return [
            c
            for c in self._configurations
            if all(
                (c.labels.get(k) == v) if k in self.bundles else normal(getattr(c.config, k)) == v
                for k, v in wanted.items()
            )
        ]

    @property
    def bundles(self) -> list[str]:
        """The bundle axes (values are tables of fields, named by `name`)."""
        return [a for a, values in self.axes.items() if all(isinstance(v, dict) for v in values)]

    def select(self, values: dict[str, Any]) -> Configuration | None:
        """The configuration with `values` on top of the baseline's axis values (`find`), or None."""
        base = {a: self.baseline_configuration.labels[a] if a in self.bundles else v
                for a, v in self.baseline_configuration.values.items()}  # fmt: skip
        return self.find({**base, **values})

    def axis_values(self, axis: str) -> list[Any]:
        """The values of `axis` as `select` takes them (a bundle's by name)."""
        return [v["name"] if axis in self.bundles else v for v in self.axes[axis]]

    @cached_property
    def baseline_configuration(self) -> Configuration:
        """The configuration `baseline` names (the first one when the file names none)."""
        found = self.find(self.baseline)
        return found if found is not None else self._configurations[0]

    def tests(self, claim: Claim) -> list[dict[str, Any]]:
        """The settings of each test of `claim`: one per value of its `across` axis (`{}` without one)."""
        if claim.across is None:
            return [{}]
        return [{claim.across: v} for v in self.axis_values(claim.across)]


def with_seed(config: RunConfig, seed: int, fields: dict[str, Any] | None = None) -> RunConfig:
    """`config` with `seed` (checked against `sortrl.engine.config.MAX_SEED`), without checking its other fields again.

    Equal to `make_config(**fields, seed=seed)` for the fields `config` was made
    from (a tested property): no check of `RunConfig` depends on the seed but
    its range, so a grid validates each configuration once, not once per seed
    (a 100,000-run grid plans in seconds, not a minute). `fields`, if given, is
    `config.to_dict()`, from which the new run id is hashed directly.
    """
    if seed == config.seed:
        return config
    if not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        raise ConfigError(f"seed: must be an integer from 0 to {MAX_SEED:,}, got {seed!r}")
    out = copy.copy(config)
    vars(out).pop("run_id", None)  # a cached hash of every field, the seed's included
    object.__setattr__(out, "seed", seed)
    if fields is not None:
        vars(out)["run_id"] = run_id_of({**fields, "seed": seed})
    return out


# --- parsing ----------------------------------------------------------------------------
def _fail(path: str | Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def parse_grid(text: str, path: str | Path = "<grid>") -> Grid:
    """Parse and validate grid TOML; raise `ConfigError` (one line, naming the field) on bad input."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _fail(path, _toml_problem(text, str(err))) from None
    except RecursionError:
        raise _fail(path, "not valid for sortrl: arrays or tables nested too deeply") from None
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise _fail(path, f"unknown key {unknown[0]!r}; valid keys: {', '.join(GRID_KEYS)}")
    name = data.get("name")
    if not is_safe_name(name):
        raise _fail(path, f"name: required, a non-empty string of at most {MAX_NAME} letters, digits, '-' or '_'")
    seeds = _parse_seeds(data.get("seeds", 1), path)
    tables = {}
    for key in ("base", "grid", "baseline"):
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise _fail(path, f"{key}: must be a table of RunConfig fields")
        valid = (*FIELD_NAMES, "recipe")
        # a bundle axis (values are tables) is not a field: the grid may cross it and the baseline may name it
        table = value if key == "grid" else tables.get("grid", {})
        bundles = {a for a, v in table.items() if isinstance(v, list) and any(isinstance(x, dict) for x in v)}
        extra = bundles if key in ("grid", "baseline") else set()
        bad = sorted(set(value) - set(valid) - ({"seed"} if key != "baseline" else set()) - extra)
        if bad:
            raise _fail(path, f"[{key}] unknown field {bad[0]!r}; valid fields: {', '.join(FIELD_NAMES)}")
        if "seed" in value and key != "baseline":
            raise _fail(path, f"[{key}] seed: set seeds with the top-level 'seeds' key, not as a field")
        tables[key] = value
    axes = tables["grid"]
    for axis, values in axes.items():
        if not isinstance(values, list) or not values:
            raise _fail(path, f"[grid] {axis}: must be a non-empty list of values")
        if axis not in (*FIELD_NAMES, "recipe"):
            _check_bundle(axis, values, axes, path)
        _check_distinct(axis, values, path)
    both = sorted(set(axes) & set(tables["base"]))
    if both:
        raise _fail(path, f"{both[0]}: set in both [base] and [grid]; keep one")
    highlight = data.get("highlight_seed")
    if highlight is not None and (
        not isinstance(highlight, int) or isinstance(highlight, bool) or highlight not in seeds
    ):
        raise _fail(path, f"highlight_seed: must be one of the grid's seeds, got {highlight!r}")
    total = len(seeds) * math.prod(len(v) for v in axes.values())
    if total > MAX_RUNS:
        raise _fail(path, f"grid: {total:,} runs (axis values x seeds); at most {MAX_RUNS:,} per grid file")
    grid = Grid(name, seeds, tables["base"], axes, tables["baseline"], highlight, text)
    try:  # validate every value now, so a bad grid fails before any training
        configurations = grid.configurations()
    except ConfigError as err:  # of its class (a `PluginImportError` stays one: a report leaves its experiment out)
        raise type(err)(f"{path}: {err}") from None
    except TypeError as err:
        raise _fail(path, f"bad field value ({err})") from None
    _check_configurations(configurations, path)
    _check_tasks(configurations, path)
    _check_baseline(grid, path)
    claims = _parse_claims(data.get("claim", []), grid, path)
    figures = data.get("figures")
    if figures is not None:
        if not isinstance(figures, list) or not all(isinstance(f, str) for f in figures):
            raise _fail(path, f"figures: a list of figure names (sortrl.render.figures.FIGURES), got {figures!r}")
        figures = tuple(figures)
    pilot = _parse_pilot(data.get("pilot"), axes, path)
    return Grid(name, seeds, tables["base"], axes, tables["baseline"], highlight, text, claims, figures, pilot)


def _parse_pilot(value: Any, axes: dict[str, list[Any]], path: str | Path) -> Pilot | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(path, "pilot: a table: purpose (text), and choose (an axis) or family = { grid, axis }")
    unknown = sorted(set(value) - set(PILOT_KEYS))
    if unknown:
        raise _fail(path, f"pilot: unknown key {unknown[0]!r}; valid keys: {', '.join(PILOT_KEYS)}")
    purpose = value.get("purpose")
    if not isinstance(purpose, str) or not purpose.strip() or "\n" in purpose:
        raise _fail(path, "pilot: purpose: required, one line of text")
    choose = value.get("choose")
    if choose is not None and choose not in axes:
        raise _fail(path, f"pilot: choose: one of the grid's axes ({', '.join(axes) or 'none'}), got {choose!r}")
    family = value.get("family")
    if family is not None:
        ok = (
            isinstance(family, dict)
            and set(family) == {"grid", "axis"}
            and all(isinstance(v, str) and v for v in family.values())
        )
        if not ok or not is_safe_name(family["grid"]):
            raise _fail(path, 'pilot: family: { grid = "<ledger grid name>", axis = "<its axis>" }')
        family = (family["grid"], family["axis"])
    return Pilot(purpose, choose, family)


def bundle_fields(value: dict[str, Any]) -> dict[str, Any]:
    """The fields a bundle axis's value sets (all of its table but its `name`)."""
    return {k: v for k, v in value.items() if k != "name"}


RESERVED_AXES = ("configuration", "seed", "baseline", "reference", "max_reward", "chance_reward", "hue", "col", "row")
"""Names a bundle axis cannot take: the report's tables already have columns of these names."""


def _check_bundle(axis: str, values: list[Any], axes: dict[str, list[Any]], path: str | Path) -> None:
    """A bundle axis: tables, each with a distinct non-empty `name` and only fields no other axis sets."""
    if axis in RESERVED_AXES:
        raise _fail(path, f"[grid] {axis}: is a name the report's tables use; call the axis something else")
    for value in values:
        if not isinstance(value, dict):
            raise _fail(path, f"[grid] {axis}: is not a RunConfig field, so its values must be tables with a name")
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise _fail(path, f'[grid] {axis}: each value needs a name, e.g. {{ name = "explore", temperature = 2.0 }}')
        bad = sorted(set(bundle_fields(value)) - {*FIELD_NAMES, "recipe"})
        if bad:
            raise _fail(path, f"[grid] {axis} {name}: unknown field {bad[0]!r}; valid fields: {', '.join(FIELD_NAMES)}")
        both = sorted(set(bundle_fields(value)) & set(axes))
        if both:
            raise _fail(path, f"[grid] {axis} {name}: sets {both[0]!r}, which is an axis too; keep one")
    names = [v["name"] for v in values]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _fail(path, f"[grid] {axis}: two values are named {twice[0]!r}")


def _check_distinct(axis: str, values: list[Any], path: str | Path) -> None:
    """An axis lists each value once, in `normal` form (`[0, 0.0]` lists one value twice)."""
    seen: dict[str, Any] = {}
    for value in values:
        form = normal(value)
        if form in seen:
            same = "" if repr(seen[form]) == repr(value) else f" ({seen[form]!r} and {value!r} are one value)"
            raise _fail(path, f"[grid] {axis}: lists a value twice{same}")
        seen[form] = value


def _check_configurations(configurations: list[Configuration], path: str | Path) -> None:
    """Distinct configurations have distinct runs and distinct labels (runs are joined to them by label)."""
    by_run: dict[str, Configuration] = {}
    by_label: dict[str, Configuration] = {}
    for c in configurations:
        for seen, key, what in ((by_run, c.config.run_id, "the same runs"), (by_label, c.label, "the same label")):
            other = seen.setdefault(key, c)
            if other is not c:
                axis = next(a for a in c.values if repr(c.values[a]) != repr(other.values[a]))
                raise _fail(
                    path,
                    f"[grid] {axis}: values {other.values[axis]!r} and {c.values[axis]!r} give {what} "
                    f"({c.label!r}); list one of them",
                )


def _check_tasks(configurations: list[Configuration], path: str | Path) -> None:
    """Every distinct prompt set can be drawn (a random task may ask for more distinct prompts than there are).

    Checked here so that a bad grid fails before any grid trains, naming its file.
    """
    seen: set[str] = set()
    for c in configurations:
        config = c.config
        key = normal([config.task, config.prompts, config.num_values, config.lengths, config.num_prompts])
        key += normal([config.num_eval_prompts, config.allow_repeats, config.task_seed])
        if key in seen:
            continue
        seen.add(key)
        try:
            TASKS[config.task](config)
        except ConfigError as err:
            raise _fail(path, f"{err} ({c.label})") from None


def _check_baseline(grid: Grid, path: str | Path) -> None:
    """The baseline must name a configuration the grid trains."""
    baseline = grid.baseline
    if "seed" in baseline and baseline["seed"] not in grid.seeds:
        raise _fail(path, f"baseline: seed {baseline['seed']!r} is not one of the grid's seeds")
    for key, value in baseline.items():
        if key != "seed" and grid.find({key: value}) is None:
            if key in grid.bundles:
                allowed = ", ".join(repr(v) for v in grid.axis_values(key))
            else:
                values = {normal(getattr(c.config, key)): getattr(c.config, key) for c in grid.configurations()}
                allowed = ", ".join(sorted(repr(plain(v)) for v in values.values()))
            raise _fail(path, f"baseline: {key} = {value!r} is not in the grid; the grid has {allowed}")
    if grid.find(baseline) is None:
        raise _fail(path, "baseline: no configuration of the grid has all of these values together")


MAX_NAME = 64
"""Most characters in an experiment name or a claim id: they become parts of file names (`figures/<name>_<figure>.png`,
`figures/claim_<id>.png`), which most file systems cap at 255 bytes (a 300-character claim id trained, then its
figure could not be written)."""


def is_safe_name(name: Any) -> bool:
    """Whether `name` may become part of a file name: a non-empty string of at most `MAX_NAME` letters, digits, '-'
    and '_' (no path separator, no dot, no newline). Experiment names and claim ids must be."""
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME and all(ch.isalnum() or ch in "-_" for ch in name)


def check_claim_ids(grids: list[tuple[str | Path, Grid]]) -> None:
    """A claim id names one claim across every grid given (its figure file, its CLAIMS.md section): `ConfigError`
    naming both grid files otherwise."""
    where: dict[str, str | Path] = {}
    for path, grid in grids:
        for claim in grid.claims:
            first = where.setdefault(claim.id, path)
            if first != path:
                raise ConfigError(f"{path}: [[claim]] {claim.id}: id: also declared by {first}; claim ids are unique")


def _parse_claims(tables: Any, grid: Grid, path: str | Path) -> tuple[Claim, ...]:
    """The `[[claim]]` tables: each complete, and every configuration it compares in the grid."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise _fail(path, "claim: declare each claim as a [[claim]] table")
    claims: list[Claim] = []
    for i, table in enumerate(tables):
        where = f"[[claim]] {table['id'] if is_safe_name(table.get('id')) else i + 1}"

        def fail(message: str, where: str = where) -> ConfigError:
            return _fail(path, f"{where}: {message}")

        unknown = sorted(set(table) - set(CLAIM_KEYS))
        if unknown:
            raise fail(f"unknown key {unknown[0]!r}; valid keys: {', '.join(CLAIM_KEYS)}")
        for key in ("id", "statement", "source"):
            if not isinstance(table.get(key), str) or not table[key].strip():
                raise fail(f"{key}: required, a non-empty string")
        if not is_safe_name(table["id"]):
            raise fail(
                f"id: at most {MAX_NAME} letters, digits, '-' or '_' (it names the claim's figure file), "
                f"got {table['id'][:80]!r}"
            )
        for key in (
            "statement",
            "subject",
            "source",
            "margin_reason",
            "identity",
            "rationale",
        ):  # CLAIMS.md cells: one line each
            if key in table and (not isinstance(table[key], str) or "\n" in table[key] or "\r" in table[key]):
                raise fail(f"{key}: one line of text, got {table[key]!r}")
        if table["id"] in {c.id for c in claims}:
            raise fail("id: two claims have this id")
        values = dict(table)
        values.setdefault("subject", table["statement"])
        values.setdefault("kind", "pair")
        values.setdefault("old", {})
        values.setdefault("new", {})
        values.setdefault("across", "regime" if "regime" in grid.axes else None)
        if "margin" not in values and values.get("metric", DEFAULT_METRIC) == DEFAULT_METRIC:
            values.setdefault("margin_reason", DEFAULT_MARGIN_REASON)
        for key, choices in (("kind", KINDS), ("predicts", PREDICTIONS)):
            try:
                check_choice(key, values.get(key), dict.fromkeys(choices))
            except ConfigError as err:
                raise fail(str(err)) from None
        for key in ("metric", "x", "figure"):  # names the results side defines: it checks them (`check_names`)
            if key in values and (not isinstance(values[key], str) or not values[key]):
                raise fail(f"{key}: a non-empty string, got {values[key]!r}")
        for key in ("margin", "implied"):  # in the metric's units; an infinite margin would call anything "no effect"
            value = values.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf
            ):
                raise fail(f"{key}: must be a finite number > 0, got {value!r}")
        tolerance = values.get("tolerance", 0.0)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
            raise fail(f"tolerance: must be a finite number >= 0, got {tolerance!r}")
        if "tolerance" in values and not values.get("identity"):
            raise fail("tolerance: only an implementation check (a claim with `identity`) has one")
        if "check" in values:
            try:
                check_choice("check", values["check"], dict.fromkeys(CHECK_LEVELS))
            except ConfigError as err:
                raise fail(str(err)) from None
            if not values.get("identity"):
                raise fail("check: only an implementation check (a claim with `identity`) has one")
        if values.get("check") == "gradient":
            if values["kind"] != "pair" or values.get("predicts") != "same":
                raise fail(
                    'check: "gradient" checks that two configurations\' gradients agree: a pair claim, predicts "same"'
                )
            if "tolerance" in values:
                raise fail("tolerance: a \"gradient\" check's allowance is float32's rounding bound, not declared")
        seed = values.get("seed")
        if seed is not None and seed not in grid.seeds:
            raise fail(f"seed: must be one of the grid's seeds, got {seed!r}")
        versus = values.get("versus", {})
        if "versus" in values and (
            values.get("kind") != "magnitude"
            or "within" in values
            or not isinstance(versus, dict)
            or sorted(versus) != ["new", "old"]
            or not all(isinstance(v, dict) and v for v in versus.values())
        ):
            raise fail(
                "versus: a magnitude claim's second contrast (instead of within), "
                'e.g. { new = { deltas_mode = "normalized_rewards" }, old = { deltas_mode = "centered_rewards" } }'
            )
        for side, chosen in (
            ("new", values["new"]),
            ("old", values["old"]),
            *((f"versus.{k}", v) for k, v in versus.items()),
        ):
            if not isinstance(chosen, dict):
                raise fail(f"{side}: a table of axis or RunConfig values")
            bad = sorted(set(chosen) - {*FIELD_NAMES, "recipe", *grid.axes} | ({"seed"} & set(chosen)))
            if bad:
                raise fail(f"{side}: {bad[0]!r} is not an axis or a RunConfig field a configuration can set")
        kind = values["kind"]
        if kind in ("pair", "interaction", "magnitude") and (not values["new"] or not values["old"]):
            raise fail(f"new, old: a {kind} claim compares two configurations; give both")
        if kind == "level" and (not values["new"] or values["old"]):
            raise fail("new, old: a level claim compares one configuration (new) with a constant (against); no old")
        if "against" in values:
            against = values["against"]
            if kind != "level" or isinstance(against, bool) or not isinstance(against, (int, float)):
                raise fail(f"against: a level claim's constant, a number, got {against!r}")
            if not math.isfinite(against):
                raise fail(f"against: must be finite, got {against!r}")
        if kind in ("trend", "each") and values.get("axis") not in grid.axes:
            raise fail(
                f"axis: a {kind} claim needs one of the grid's axes ({', '.join(grid.axes)}), got {values.get('axis')!r}"
            )
        if kind == "each" and not values["old"]:
            raise fail("old: an each claim compares every value of its axis with one configuration; give it")
        within = values.get("within", {})
        if kind == "interaction" or (kind == "magnitude" and not versus):
            ok = (
                isinstance(within, dict)
                and len(within) == 1
                and all(isinstance(v, list) and len(v) == 2 for v in within.values())
            )
            if not ok or next(iter(within)) not in grid.axes:
                raise fail(
                    f'within: an {kind} claim needs one grid axis and two of its values, e.g. {{ reward = ["exact_match", "distance"] }}'
                )
            first, second = next(iter(within.values()))
            if normal(first) == normal(second):  # the interaction would be 0 by construction
                raise fail(f"within: two different values of its axis, got {first!r} twice")
        if kind == "within-run" and "x" not in values:
            raise fail("x: a within-run claim needs the curve of its other axis (e.g. loss)")
        if kind == "within-run" and "metric" not in values:
            raise fail("metric: a within-run claim names its curve (a per-epoch metric, e.g. mean_reward)")
        if values["across"] is not None and values["across"] not in grid.axes:
            raise fail(
                f"across: must be one of the grid's axes ({', '.join(grid.axes) or 'none'}), got {values['across']!r}"
            )
        if "skip" in values:
            skip = values["skip"]
            if (
                not isinstance(skip, list)
                or kind != "each"
                or any(v not in grid.axis_values(values["axis"]) for v in skip)
            ):
                raise fail(f"skip: an each claim's list of values of its axis not to compare, got {skip!r}")
            values["skip"] = tuple(skip)
        claim = Claim(**{k: values[k] for k in CLAIM_KEYS if k in values})
        _check_claim_configurations(claim, grid, fail)
        claims.append(claim)
    return tuple(claims)


def _check_claim_configurations(claim: Claim, grid: Grid, fail: Any) -> None:
    """Every configuration `claim` compares exists, in every one of its tests."""
    for test in grid.tests(claim):
        sides = [claim.new, claim.old] if claim.kind == "pair" else [claim.new]
        if claim.kind in ("interaction", "magnitude"):
            sides = claim.contrasts
        if claim.kind in ("trend", "each"):
            sides = [{**claim.new, claim.axis: v} for v in grid.axis_values(claim.axis)]
            sides += [claim.old] if claim.kind == "each" else []
        chosen = [grid.select({**side, **test}) for side in sides]
        for side, found in zip(sides, chosen):
            if found is None:
                which = "" if len(sides) > 2 or claim.kind != "pair" else ("new: " if side is sides[0] else "old: ")
                raise fail(
                    f"{which}no configuration of the grid has {side} with {test or 'the baseline'} "
                    "(other axes: baseline)"
                )
        if claim.kind == "pair" and chosen[0] is chosen[1]:
            raise fail(f"new and old are the same configuration ({chosen[0].label!r})")


def _toml_problem(text: str, message: str) -> str:
    """One line naming what is wrong in a TOML file (tomllib's messages name no key)."""
    where = re.search(r"\(at line (\d+), column \d+\)", message)
    line_no = int(where[1]) if where else None
    if "Cannot overwrite a value" in message:
        lines = text.splitlines()
        key = lines[line_no - 1].split("=")[0].strip() if line_no and line_no <= len(lines) else None
        what = f"key {key!r}" if key else "a key"
        at = f"line {line_no}: " if line_no else ""
        return (
            f"{at}{what} is set twice; TOML allows each key once per table (list all of an axis's values in one list)"
        )
    declared = re.match(r"Cannot declare \((.*)\) twice", message)
    if declared:
        table = ".".join(part.strip().strip("'\"") for part in declared[1].split(",") if part.strip())
        return f"line {line_no}: table [{table}] is declared twice; TOML allows each table once"
    return f"not valid TOML ({message})"


def _parse_seeds(value: Any, path: str | Path) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise _fail(path, f"seeds: a count must be >= 1, got {value}")
        if value > MAX_RUNS:  # before building the tuple: seeds = 100000000000 must not exhaust memory
            raise _fail(path, f"seeds: {value:,} seeds; at most {MAX_RUNS:,} runs per grid file")
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if min(value) < 0 or len(set(value)) != len(value):
            raise _fail(path, "seeds: a list must hold distinct integers >= 0")
        if max(value) > MAX_SEED:
            raise _fail(path, f"seeds: at most {MAX_SEED:,} (generator seeds are 64-bit), got {max(value)}")
        return tuple(value)
    if isinstance(value, dict):
        start, count = value.get("start", 0), value.get("count")
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, count))
        if set(value) - {"start", "count"} or not ints or start < 0 or count < 1:
            raise _fail(
                path, f"seeds: a range is {{ start = 1000, count = 128 }} (start >= 0, count >= 1), got {value!r}"
            )
        if count > MAX_RUNS:
            raise _fail(path, f"seeds: {count:,} seeds; at most {MAX_RUNS:,} runs per grid file")
        if start + count - 1 > MAX_SEED:
            raise _fail(path, f"seeds: at most {MAX_SEED:,} (generator seeds are 64-bit), got {start + count - 1}")
        return tuple(range(start, start + count))
    raise _fail(
        path,
        "seeds: a count (seeds = 32), a range (seeds = { start = 1000, count = 128 }) or a non-empty list of "
        f"integers (seeds = [5]), got {value!r}",
    )


def grid_text(name: str, seeds: int, base: dict[str, Any], axes: dict[str, list[Any]]) -> str:
    """The grid file (TOML) of an experiment `name` with `seeds` seeds (0 .. seeds-1), the fields `base` every run
    shares and the crossed `axes`; what `sortrl sweep --axis/--set` writes. Values are strings, numbers, booleans or
    lists of them (their JSON is their TOML)."""
    lines = [f"name = {json.dumps(name)}", f"seeds = {seeds}", "", "[base]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in base.items()]
    lines += ["", "[grid]", *(f"{key} = {json.dumps(values)}" for key, values in axes.items())]
    return "\n".join(lines) + "\n"


def load_grid(path: str | Path) -> Grid:
    """Read a grid file; a missing or unreadable file raises `ConfigError`.

    A grid that names plug-ins finds them next to itself: its folder is searched for them (after the installed
    packages) here and in the worker processes this process starts (`PYTHONPATH`), from whatever folder
    `sortrl sweep` runs.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(
            path, f"cannot read grid file ({err.__class__.__name__}: {getattr(err, 'strerror', err)})"
        ) from None
    search_for_plugins(path, text)
    return parse_grid(text, path)


def search_for_plugins(path: str | Path, text: str) -> None:
    """If grid file `path` (whose content is `text`) names plug-ins, let this process and the ones it starts import
    modules from its folder (searched last, after the installed packages)."""
    if "plugins" not in text:
        return
    folder = Path(path).resolve().parent
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(folder) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, str(folder)])
