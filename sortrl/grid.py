"""Grid files: a study's TOML, validated, and its expansion into configurations and runs.

A grid file is TOML:

    name = "ablations"          # names the outputs (results/runs/<name>/, figures)
    seeds = 32                  # seeds 0..31, or an explicit list: seeds = [5]
    highlight_seed = 5          # optional: the report draws this seed's curve on top
    baseline = { deltas_mode = "rewards", loss_mode = "naive" }  # optional: the reference configuration

    [base]                      # RunConfig fields shared by every run
    num_epochs = 100

    [grid]                      # RunConfig fields whose lists are crossed
    deltas_mode = ["rewards", "centered_rewards"]
    loss_mode = ["naive", "clipped"]

    [[claim]]                   # optional, repeated: a claim the grid tests (see `Claim`)
    id = "L1"
    statement = "centering helps"
    subject = "centering"
    source = "CS336 lecture 17"
    new = { deltas_mode = "centered_rewards" }
    old = { deltas_mode = "rewards" }
    predicts = "better"

Any `RunConfig` field may be a base value or an axis, and so may `recipe`
(a named preset, `sortrl.recipes`): a recipe's fields come first and explicit
fields override them. Grid files are only ever parsed as TOML.

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
import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sortrl.config import FIELD_NAMES, MAX_SEED, RunConfig, ignored_fields, make_config, plain, run_id_of
from sortrl.registry import ConfigError, check_choice
from sortrl.task import TASKS

GRID_KEYS = ("name", "seeds", "highlight_seed", "baseline", "base", "grid", "claim")
MAX_RUNS = 1_000_000
"""Most runs one grid file may expand to (axis values x seeds)."""

SHORT_NAMES = {"kl_penalty": "kl", "learning_rate": "lr"}
"""Abbreviations of numeric axes in configuration labels (`kl=0.01`)."""

CLAIM_KEYS = ("id", "statement", "subject", "source", "new", "old", "predicts", "seed")
PREDICTIONS = ("better", "worse", "same")
"""What a claim may say its `new` configuration does compared with its `old` one."""


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
    """A claim a grid tests, declared in its file as a `[[claim]]` table; the report checks it on the stored runs.

    The claim compares configuration `new` with `old` on the final reward, over
    the grid's seeds. `new` and `old` give the axis values that differ from the
    baseline's (the other axes take the baseline's values).
    """

    id: str
    """Short, unique in the grid (`L1`)."""
    statement: str
    """The claim as its source makes it, completing 'concluded that ...' (`centering helps`)."""
    subject: str
    """What changes from `old` to `new`, as a noun (`centering`), for sentences such as 'centering does worse'."""
    source: str
    """Where the claim is made (paper or lecture)."""
    new: dict[str, Any]
    old: dict[str, Any]
    predicts: str
    """`better`, `worse` (what `new` does compared with `old`) or `same` (no difference)."""
    seed: int | None = None
    """The seed of the single run the source drew the claim from, if it did (the lecture's: 5)."""


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

    @cached_property
    def _configurations(self) -> tuple[Configuration, ...]:
        names = list(self.axes)
        out = []
        for values in itertools.product(*self.axes.values()):  # the one expansion of the axes
            chosen = dict(zip(names, values))
            labels = {axis: value_label(axis, value) for axis, value in chosen.items()}
            fields = {**self.base, **chosen}
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

    @property
    def num_runs(self) -> int:
        return len(self.seeds) * math.prod(len(v) for v in self.axes.values())

    def find(self, values: dict[str, Any]) -> Configuration | None:
        """The first configuration whose config has every one of `values` (compared in `normal` form), or None."""
        wanted = {k: normal(v) for k, v in values.items() if k != "seed"}
        for c in self._configurations:
            if all(normal(getattr(c.config, k)) == v for k, v in wanted.items()):
                return c
        return None

    @cached_property
    def baseline_configuration(self) -> Configuration:
        """The configuration `baseline` names (the first one when the file names none)."""
        found = self.find(self.baseline)
        return found if found is not None else self._configurations[0]

    def compared(self, claim: Claim) -> tuple[Configuration, Configuration]:
        """The (new, old) configurations of `claim`: the baseline's axis values with the claim's on top."""
        base = self.baseline_configuration.values
        new, old = self.find({**base, **claim.new}), self.find({**base, **claim.old})
        assert new is not None and old is not None  # checked by `parse_grid`
        return new, old


def with_seed(config: RunConfig, seed: int, fields: dict[str, Any] | None = None) -> RunConfig:
    """`config` with `seed` (checked against `sortrl.config.MAX_SEED`), without checking its other fields again.

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
    if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise _fail(path, "name: required, a non-empty string of letters, digits, '-' or '_'")
    seeds = _parse_seeds(data.get("seeds", 1), path)
    tables = {}
    for key in ("base", "grid", "baseline"):
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise _fail(path, f"{key}: must be a table of RunConfig fields")
        valid = (*FIELD_NAMES, "recipe")
        bad = sorted(set(value) - set(valid) - ({"seed"} if key != "baseline" else set()))
        if bad:
            raise _fail(path, f"[{key}] unknown field {bad[0]!r}; valid fields: {', '.join(FIELD_NAMES)}")
        if "seed" in value and key != "baseline":
            raise _fail(path, f"[{key}] seed: set seeds with the top-level 'seeds' key, not as a field")
        tables[key] = value
    axes = tables["grid"]
    for axis, values in axes.items():
        if not isinstance(values, list) or not values:
            raise _fail(path, f"[grid] {axis}: must be a non-empty list of values")
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
    except ConfigError as err:
        raise _fail(path, str(err)) from None
    except TypeError as err:
        raise _fail(path, f"bad field value ({err})") from None
    _check_configurations(configurations, path)
    _check_tasks(configurations, path)
    _check_baseline(grid, path)
    claims = _parse_claims(data.get("claim", []), grid, path)
    return Grid(name, seeds, tables["base"], axes, tables["baseline"], highlight, text, claims)


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
            values = {normal(getattr(c.config, key)): getattr(c.config, key) for c in grid.configurations()}
            allowed = ", ".join(sorted(repr(plain(v)) for v in values.values()))
            raise _fail(path, f"baseline: {key} = {value!r} is not in the grid; the grid has {allowed}")
    if grid.find(baseline) is None:
        raise _fail(path, "baseline: no configuration of the grid has all of these values together")


def _parse_claims(tables: Any, grid: Grid, path: str | Path) -> tuple[Claim, ...]:
    """The `[[claim]]` tables: each complete, its `new` and `old` configurations in the grid."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise _fail(path, "claim: declare each claim as a [[claim]] table")
    claims: list[Claim] = []
    for i, table in enumerate(tables):
        where = f"[[claim]] {table.get('id', i + 1)!s}"
        unknown = sorted(set(table) - set(CLAIM_KEYS))
        if unknown:
            raise _fail(path, f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(CLAIM_KEYS)}")
        for key in ("id", "statement", "subject", "source"):
            if not isinstance(table.get(key), str) or not table[key].strip():
                raise _fail(path, f"{where}: {key}: required, a non-empty string")
        if table["id"] in {c.id for c in claims}:
            raise _fail(path, f"{where}: id: two claims have this id")
        check = table.get("predicts")
        try:
            check_choice("predicts", check, dict.fromkeys(PREDICTIONS))
        except ConfigError as err:
            raise _fail(path, f"{where}: {err}") from None
        seed = table.get("seed")
        if seed is not None and seed not in grid.seeds:
            raise _fail(path, f"{where}: seed: must be one of the grid's seeds, got {seed!r}")
        for side in ("new", "old"):
            values = table.get(side)
            if not isinstance(values, dict) or not values:
                raise _fail(path, f"{where}: {side}: required, a table of RunConfig fields")
            bad = sorted(set(values) - {*FIELD_NAMES, "recipe"} - {"seed"})
            if bad or "seed" in values:
                name = bad[0] if bad else "seed"
                raise _fail(path, f"{where}: {side}: {name!r} is not a RunConfig field a configuration can set")
            if grid.find({**grid.baseline_configuration.values, **values}) is None:
                raise _fail(path, f"{where}: {side}: no configuration of the grid has {values} (other axes: baseline)")
        claim = Claim(**{k: table[k] for k in CLAIM_KEYS if k in table})
        new, old = grid.compared(claim)
        if new is old:
            raise _fail(path, f"{where}: new and old are the same configuration ({new.label!r})")
        claims.append(claim)
    return tuple(claims)


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
    raise _fail(path, f"seeds: a count (seeds = 32) or a non-empty list of integers (seeds = [5]), got {value!r}")


def load_grid(path: str | Path) -> Grid:
    """Read a grid file; a missing or unreadable file raises `ConfigError`."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(
            path, f"cannot read grid file ({err.__class__.__name__}: {getattr(err, 'strerror', err)})"
        ) from None
    return parse_grid(text, path)
