"""Pre-registration: seed ranges, pilot grids and PILOT.md (sortrl.study.grid, sortrl.analysis.pilot,
sortrl.render.pilot_md), and the repository's own grids keeping their seeds apart."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sortrl.analysis import pilot
from sortrl.engine.registry import ConfigError
from sortrl.study.grid import parse_grid

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _grids(folder: str) -> list:
    return [parse_grid(p.read_text(), p) for p in sorted((EXPERIMENTS / folder).glob("*.toml"))]


def test_a_seed_range_is_start_and_count():
    grid = parse_grid('name = "r"\nseeds = { start = 1000, count = 3 }\n')
    assert grid.seeds == (1000, 1001, 1002)
    for bad in ("{ start = -1, count = 3 }", "{ start = 5, count = 0 }", "{ start = 5 }", "{ count = 2, end = 9 }"):
        with pytest.raises(ConfigError, match="seeds: a range is"):
            parse_grid(f'name = "r"\nseeds = {bad}\n')


def test_no_two_ledger_or_pilot_grids_share_a_seed():
    """Every claim grid has its own seeds and no pilot uses a seed of the ledger: a choice made on a pilot's runs is
    judged on runs it never saw, and two claims' tests do not share their seeds' luck."""
    grids = _grids("claims") + _grids("pilot")
    assert len(_grids("pilot")) >= 2 and len(_grids("claims")) >= 10
    for a, b in itertools.combinations(grids, 2):
        shared = set(a.seeds) & set(b.seeds)
        assert not shared, f"{a.name} and {b.name} share {len(shared)} seeds, e.g. {min(shared)}"


def test_every_pilot_candidate_is_in_its_ledger_family():
    ledger = {g.name: g for g in _grids("claims")}
    for grid in _grids("pilot"):
        if grid.pilot.family is None:
            continue
        name, axis = grid.pilot.family
        have = [pilot._fields(v) for v in ledger[name].axes[axis]]
        missing = [v["name"] for v in grid.axes[axis] if pilot._fields(v) not in have]
        assert not missing, f"{grid.name}: candidates tested nowhere in {name}: {missing}"


def test_the_ledger_tests_in_the_regime_the_pilot_declares_it_chooses():
    (regime,) = [g for g in _grids("pilot") if g.pilot.choose == "regime"]
    candidates = [pilot._fields(v) for v in regime.axes["regime"]]
    for grid in _grids("claims"):
        if grid.name == "claims-trap":  # its regimes are epochs (100, 200), not exploration
            continue
        if _transfer(grid):  # tested in the lecture's regime only, once per model family (issue 25's time budget)
            continue
        explore = [pilot._fields(v) for v in grid.axes["regime"] if v["name"] == "explore"]
        assert explore and explore[0] in candidates, f"{grid.name}: its explore regime is no pilot candidate"
        assert "entropy_coeff" not in explore[0], "no unscaled entropy bonus in the second regime"


def test_pilot_table_errors_are_one_line():
    base = 'name = "p"\nseeds = 2\n[grid]\nlearning_rate = [0.1, 0.2]\n'
    with pytest.raises(ConfigError, match="pilot: purpose: required"):
        parse_grid(base + "[pilot]\nchoose = 'learning_rate'\n")
    with pytest.raises(ConfigError, match="pilot: choose: one of the grid's axes"):
        parse_grid(base + "[pilot]\npurpose = 'x'\nchoose = 'regime'\n")
    with pytest.raises(ConfigError, match="pilot: unknown key 'pick'"):
        parse_grid(base + "[pilot]\npurpose = 'x'\npick = 1\n")
    assert parse_grid(base + "[pilot]\npurpose = 'x'\nchoose = 'learning_rate'\n").pilot.choose == "learning_rate"


PILOT = """
name = "p"
seeds = { start = 500, count = 4 }
[pilot]
purpose = "Pick a regime."
choose = "regime"
[grid]
regime = [{ name = "hot", temperature = 3.0 }, { name = "warm", temperature = 1.5 }, { name = "cold", temperature = 1.0 }]
deltas_mode = ["rewards", "centered_rewards"]
"""


def _pilot_experiment(score, entropy) -> SimpleNamespace:
    grid = parse_grid(PILOT)
    rows = [
        {
            "configuration": c.label,
            "seed": s,
            "final_score": score(c.labels["regime"], s),
            "final_entropy": entropy(c.labels["regime"], c.config.deltas_mode, s),
            "solved": 0,
        }
        for c in grid.configurations()
        for s in grid.seeds
    ]
    final = pd.DataFrame(rows)
    final["near_uniform"] = final["final_entropy"] >= 0.9 * np.log(5)
    return SimpleNamespace(name="p", grid=grid, final=final, labels=[c.label for c in grid.configurations()])


def test_the_pilot_picks_the_best_value_among_those_that_learned():
    """`hot` scores highest but one of its configurations ends near uniform in 3 of 4 seeds: it is left out, and
    `warm` (0.6) beats `cold` (0.4). A ledger grid without a `warm` value is listed as not using the pick."""

    def score(regime, seed):
        return {"hot": 0.9, "warm": 0.6, "cold": 0.4}[regime]

    def entropy(regime, deltas, seed):
        return 1.6 if (regime == "hot" and deltas == "rewards" and seed != 500) else 0.1

    exp = _pilot_experiment(score, entropy)
    users = parse_grid('name = "a"\n[grid]\nregime = [{ name = "lecture" }, { name = "x", temperature = 1.5 }]\n')
    other = parse_grid('name = "b"\n[grid]\nregime = [{ name = "lecture" }, { name = "x", temperature = 2.0 }]\n')
    found = pilot.outcome(exp, [users, other])
    assert found.excluded == ["hot"] and found.pick == "warm"
    assert found.using == ["a"] and found.not_using == ["b"]
    row = found.table.set_index("configuration").loc["hot / rewards"]
    assert row["uniform"] == 3 and row["n"] == 4 and row["score"] == pytest.approx(0.9)


def test_a_candidate_missing_from_the_ledger_family_is_named(tmp_path):
    from sortrl.render import pilot_md

    text = PILOT.replace('choose = "regime"', 'family = { grid = "ledger", axis = "regime" }')
    exp = _pilot_experiment(lambda r, s: 0.5, lambda r, d, s: 0.1)
    exp.grid = parse_grid(text)
    ledger = parse_grid('name = "ledger"\n[grid]\nregime = [{ name = "hot", temperature = 3.0 }, { name = "c" }]\n')
    found = pilot.outcome(exp, [ledger])
    assert found.missing == ["warm", "cold"]
    page = pilot_md.render([found])
    assert "**Candidates missing from `ledger`'s `regime` axis**" in page and "`warm`, `cold`" in page
    assert "Seeds: 4 seeds, 500–503." in page
    absent = pilot.outcome(exp, [])
    assert not absent.family_found and "tested nowhere" in pilot_md.render([absent])


def test_report_writes_pilot_md_and_flags_runs_that_learned_nothing(tmp_path):
    """A stored pilot grid gives PILOT.md; a claim whose side ends near uniform (a temperature so high the policy
    stays uniform) says so in CLAIMS.md."""
    from sortrl.render.publish import write_report
    from sortrl.study.sweep import run_sweep

    pilot_grid = PILOT.replace("temperature = 3.0", "temperature = 50.0")  # hot: sampling is uniform; it learns nothing
    ledger = (
        'name = "ledger"\nseeds = { start = 0, count = 4 }\n[base]\nnum_epochs = 8\n[grid]\n'
        'setting = [{ name = "lecture" }, { name = "hot", temperature = 50.0, entropy_coeff = 1.0 }]\n'
        '[[claim]]\nid = "C"\nstatement = "s"\nsource = "a test"\nkind = "pair"\nnew = { setting = "hot" }\n'
        'old = { setting = "lecture" }\npredicts = "higher"\n'
    )
    for text in (pilot_grid.replace("[grid]", "[base]\nnum_epochs = 8\n[grid]"), ledger):
        run_sweep(parse_grid(text), tmp_path, n_jobs=1)
    write_report(tmp_path)
    page = (tmp_path / "PILOT.md").read_text()
    assert "## `p`" in page and "Picked: **`" in page and "hot" in page
    claims = (tmp_path / "CLAIMS.md").read_text()
    assert "end near a uniform policy (learned nothing): `hot` in 4 of 4 seeds" in claims


def test_every_ledger_claim_says_why_its_test_and_its_margin():
    """A reviewer reads, per claim, why the test measures what the source claims and why the margin has its value
    (or, for an implementation check, why it holds by construction)."""
    for grid in _grids("claims"):
        for claim in grid.claims:
            if claim.identity:
                continue
            assert claim.rationale, f"{grid.name}: {claim.id} has no rationale"
            assert claim.margin_reason, f"{grid.name}: {claim.id} has no margin_reason"


def _transfer(grid) -> bool:
    """Whether `grid` is a transfer grid: a `model` axis, no `regime` axis, every claim tested across `model`."""
    return (
        "model" in grid.axes
        and "regime" not in grid.axes
        and all(c.across == "model" or not c.across for c in grid.claims)
    )


def test_the_transfer_grids_repeat_the_pilots_pick_and_match_the_initial_entropy():
    """The transfer grids test their claims on both families, with the trap pilot's pick as E1's escape (not picked
    again on ledger seeds) and a check that the families start at the same entropy."""
    transfer = [g for g in _grids("claims") if _transfer(g)]
    assert {g.name for g in transfer} == {"claims-transfer", "claims-transfer-groups"}
    for grid in transfer:
        assert grid.axes["model"] == ["linear", "transformer"]
        assert all(c.across == "model" for c in grid.claims if c.id != "T0")
    (main,) = [g for g in transfer if g.name == "claims-transfer"]
    (trap,) = [g for g in _grids("pilot") if g.name == "pilot-trap"]
    escape = next(v for v in main.axes["arm"] if v["name"] == "escape")
    # the pilot's candidate with the highest mean final score (PILOT.md's pilot-trap table: 0.829, 10 of 16 solved)
    picked = next(v for v in trap.axes["choice"] if v["name"] == "centered, T 2, entropy 0.3")
    assert pilot._fields(escape) == pilot._fields(picked)
    (t0,) = [c for c in main.claims if c.id == "T0"]
    assert (t0.metric, t0.predicts, t0.new["model"], t0.old["model"]) == (
        "initial_entropy",
        "same",
        "transformer",
        "linear",
    )
