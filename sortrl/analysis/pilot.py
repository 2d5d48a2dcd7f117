"""Pilots: what a pilot grid tried on its own seeds, what its rule picks, and whether the ledger honours both.

A pilot grid (`sortrl.study.grid.Pilot`, a `[pilot]` table) runs before the
ledger, on seeds no ledger grid uses, to make a choice the ledger then tests
(its second regime, the trap's candidate escapes). Recording it is what makes
the ledger pre-registered: `outcome` computes, from the pilot's stored runs,

- every configuration's final score (mean with its bootstrap CI) and final
  entropy, and how many of its runs end near a uniform policy
  (`Experiment.final`'s `near_uniform`: they learned nothing);
- for `choose = <axis>`: the value the rule picks, the one whose configurations
  have the highest mean final score among values none of whose configurations
  ends near uniform in most of its runs; and which ledger grids with that axis
  lack a value with the pick's fields;
- for `family = { grid, axis }`: which of the pilot's candidates (values of the
  same axis) the ledger grid's axis lacks. A candidate the ledger leaves out
  would be a search whose cost its multiple-testing correction does not pay.

Pure: no files; `sortrl.render.pilot_md` writes PILOT.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from sortrl.analysis.experiment import SEED, Experiment
from sortrl.analysis.verdicts import bootstrap_mean
from sortrl.study.grid import Grid, bundle_fields


@dataclass(frozen=True)
class Outcome:
    """What a pilot grid found (`outcome`)."""

    experiment: Experiment
    table: pd.DataFrame
    """One row per configuration: `configuration`, `n`, `score`, `score_low`, `score_high`, `entropy`, `uniform` (runs
    ending near a uniform policy), `solved` (runs whose greedy policy sorts every training prompt)."""
    pick: str | None = None
    """The value of `choose` the rule picks (its label), None without `choose` or when every value is excluded."""
    excluded: list[str] = field(default_factory=list)
    """Values of `choose` left out because a configuration ends near uniform in most of its runs."""
    using: list[str] = field(default_factory=list)
    """Ledger grids with a value of the `choose` axis that has the pick's fields."""
    not_using: list[str] = field(default_factory=list)
    """Ledger grids with the `choose` axis that have no value with the pick's fields."""
    missing: list[str] = field(default_factory=list)
    """Candidates (values of the family's axis) the ledger grid's axis lacks."""
    family_found: bool = True
    """Whether the ledger grid the family names was among the grids given."""


def outcome(exp: Experiment, ledger: list[Grid]) -> Outcome:
    """The outcome of pilot experiment `exp` (its grid has a `pilot`), checked against the `ledger` grids."""
    pilot = exp.grid.pilot
    if pilot is None:
        raise ValueError(f"{exp.name}: not a pilot grid (no [pilot] table)")
    table = _table(exp)
    out = Outcome(exp, table)
    if pilot.choose is not None:
        out = _choose(out, pilot.choose, ledger)
    if pilot.family is not None:
        name, axis = pilot.family
        grid = next((g for g in ledger if g.name == name), None)
        if grid is None or axis not in grid.axes:
            return replace(out, family_found=False, missing=[_name(v) for v in exp.grid.axes.get(axis, [])])
        have = [_fields(v) for v in grid.axes[axis]]
        missing = [_name(v) for v in exp.grid.axes.get(axis, []) if _fields(v) not in have]
        out = replace(out, missing=missing)
    return out


def _table(exp: Experiment) -> pd.DataFrame:
    final = exp.final.assign(uniform=exp.final["near_uniform"])
    rows = []
    for label in exp.labels:
        runs = final[final["configuration"] == label]
        score = bootstrap_mean(runs["final_score"].to_numpy(float), SEED)
        rows.append(
            {
                "configuration": label,
                "n": len(runs),
                "score": score.point,
                "score_low": score.low,
                "score_high": score.high,
                "entropy": float(runs["final_entropy"].mean()) if len(runs) else math.nan,
                "uniform": int(runs["uniform"].sum()),
                "solved": int(runs["solved"].sum()) if "solved" in runs else 0,
            }
        )
    return pd.DataFrame(rows)


def _choose(out: Outcome, axis: str, ledger: list[Grid]) -> Outcome:
    exp, table = out.experiment, out.table.set_index("configuration")
    by_value: dict[str, list[str]] = {}
    for c in exp.grid.configurations():
        by_value.setdefault(c.labels[axis], []).append(c.label)
    excluded, means = [], {}
    for value, labels in by_value.items():
        rows = table.loc[labels]
        if ((rows["uniform"] > rows["n"] / 2) & (rows["n"] > 0)).any():
            excluded.append(value)
        elif rows["n"].sum():
            means[value] = float((rows["score"] * rows["n"]).sum() / rows["n"].sum())  # mean over every run
    pick = max(means, key=lambda v: means[v]) if means else None
    using, not_using = [], []
    if pick is not None:
        picked = _fields(next(v for v in exp.grid.axes[axis] if _name(v) == pick))
        for grid in (g for g in ledger if axis in g.axes):
            (using if picked in [_fields(v) for v in grid.axes[axis]] else not_using).append(grid.name)
    return replace(out, pick=pick, excluded=excluded, using=using, not_using=not_using)


def _fields(value: Any) -> Any:
    """An axis value as what it sets: a bundle's fields (`bundle_fields`); a plain value as itself."""
    return bundle_fields(value) if isinstance(value, dict) else value


def _name(value: Any) -> str:
    return str(value["name"]) if isinstance(value, dict) else str(value)
