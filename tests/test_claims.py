"""The claims ledger (sortrl.analysis.claims, claims_md, claim_figures): every kind of claim on hand-made scores,
paired by seed and Holm-corrected, and the files `sortrl report` writes for the tiny grid's two claims."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sortrl.analysis import claims, experiment
from sortrl.analysis.verdicts import holm, paired_effect, verdict, wilcoxon_p
from sortrl.render import readme
from sortrl.study.grid import parse_grid

GRID = """
name = "hand"
seeds = 6
baseline = { regime = "lecture", deltas_mode = "rewards", num_responses = 10 }

[base]
num_epochs = 2

[grid]
regime = [{ name = "lecture" }, { name = "explore", temperature = 2.0 }]
deltas_mode = ["rewards", "centered_rewards"]
num_responses = [2, 10, 50]
"""

CLAIMS = {
    "pair": 'new = { deltas_mode = "centered_rewards" }\nold = { deltas_mode = "rewards" }\npredicts = "higher"',
    "trend": 'kind = "trend"\naxis = "num_responses"\npredicts = "higher"',
    "interaction": 'kind = "interaction"\nnew = { deltas_mode = "centered_rewards" }\nold = { deltas_mode = "rewards" }\n'
    'within = { num_responses = [50, 2] }\npredicts = "higher"',
    "each": 'kind = "each"\naxis = "num_responses"\nold = { num_responses = 10 }\npredicts = "higher"',
    "correlation": 'kind = "correlation"\nx = "final_loss"\npredicts = "same"\nmargin = 0.3',
}


def hand_experiment(kind: str, score) -> SimpleNamespace:
    """An experiment of `GRID` with one claim of `kind`, whose runs score `score(regime, deltas, G, seed)`."""
    text = GRID + f'\n[[claim]]\nid = "H"\nstatement = "s"\nsource = "a test"\n{CLAIMS[kind]}\n'
    grid = parse_grid(text)
    rows = []
    for c in grid.configurations():
        regime, deltas, group = c.labels["regime"], c.config.deltas_mode, c.config.num_responses
        for seed in grid.seeds:
            value = score(regime, deltas, group, seed)
            rows.append({"configuration": c.label, "seed": seed, "final_score": value, "final_loss": -value})
    return SimpleNamespace(name="hand", grid=grid, final=pd.DataFrame(rows))


def noise(seed: int) -> float:
    return [0.03, -0.02, 0.05, 0.0, -0.04, 0.01][seed]


def test_pair_is_the_mean_of_per_seed_differences_tested_in_each_regime():
    # centering adds 0.2 in the lecture regime and nothing while exploring; seeds share a level (pairing removes it)
    def score(regime, deltas, group, seed):
        gain = 0.2 if (deltas == "centered_rewards" and regime == "lecture") else 0.0
        return seed * 0.1 + gain + (noise(seed) if deltas == "centered_rewards" else 0)

    found = claims.tests(hand_experiment("pair", score))
    assert [t.where for t in found] == ["regime=lecture", "regime=explore"]
    lecture = found[0]
    d = np.array([0.2 + noise(s) for s in range(6)])
    assert lecture.n == 6 and lecture.differences == pytest.approx(d)
    assert lecture.effect.point == pytest.approx(d.mean())
    assert lecture.effect == paired_effect(d + np.arange(6) * 0.1, np.arange(6) * 0.1)
    assert lecture.p == pytest.approx(wilcoxon_p(d))
    assert [s.label for s in lecture.sides] == [
        "lecture / centered_rewards / num_responses=10",
        "lecture / rewards / num_responses=10",
    ]
    assert found[1].effect.point == pytest.approx(np.mean([noise(s) for s in range(6)]))


def test_trend_is_the_per_seed_slope_along_the_axis():
    # the score rises by 0.1 per step of num_responses (2 -> 10 -> 50), seed 3 by 0.3
    def score(regime, deltas, group, seed):
        step = [2, 10, 50].index(group)
        return 0.5 + step * (0.3 if seed == 3 else 0.1)

    lecture, _ = claims.tests(hand_experiment("trend", score))
    assert lecture.differences == pytest.approx([0.1, 0.1, 0.1, 0.3, 0.1, 0.1])
    assert lecture.effect.point == pytest.approx(0.6 / 6 + 0.2 / 6)
    assert len(lecture.sides) == 3


def test_interaction_is_the_difference_of_differences():
    # centering gains 0.375 at G = 50 and 0.125 at G = 2: the interaction is 0.25 on every seed (exact in binary)
    def score(regime, deltas, group, seed):
        return seed * 0.0625 + ({50: 0.375, 2: 0.125}.get(group, 0) if deltas == "centered_rewards" else 0)

    lecture, _ = claims.tests(hand_experiment("interaction", score))
    assert lecture.differences.tolist() == [0.25] * 6
    assert lecture.effect.degenerate and lecture.effect.point == 0.25


def test_each_compares_every_value_of_the_axis_with_the_reference():
    def score(regime, deltas, group, seed):
        return {2: -0.1, 10: 0.0, 50: 0.15}[group] + noise(seed) * (group != 10)

    found = claims.tests(hand_experiment("each", score))
    assert [t.label for t in found] == [
        "H (regime=lecture: num_responses=2)",
        "H (regime=lecture: num_responses=50)",
        "H (regime=explore: num_responses=2)",
        "H (regime=explore: num_responses=50)",
    ]
    assert found[1].effect.point == pytest.approx(0.15 + np.mean([noise(s) for s in range(6)]))


def test_correlation_over_configurations():
    # final loss is minus the score: a perfect negative rank correlation over the 6 configurations of a regime
    def score(regime, deltas, group, seed):
        return [2, 10, 50].index(group) + (deltas == "centered_rewards") * 5

    lecture, _ = claims.tests(hand_experiment("correlation", score))
    assert lecture.n == 6 and lecture.effect.point == pytest.approx(-1.0)


def test_ledger_corrects_every_test_together_and_gives_verdicts():
    def score(regime, deltas, group, seed):
        return seed * 0.1 + (0.2 + noise(seed) if deltas == "centered_rewards" and regime == "lecture" else 0.0)

    raw = claims.tests(hand_experiment("pair", score))
    final = claims.ledger(raw)
    assert [t.p_adjusted for t in final] == pytest.approx(list(holm([t.p for t in raw])))
    for t in final:
        assert t.verdict == verdict(t.effect, t.p_adjusted, ">", t.claim.margin)
    # explore: every difference is 0 (degenerate CI inside the margin): no effect
    assert final[1].verdict == "no effect"


def test_inconclusive_tests_say_how_many_seeds_they_would_need():
    def score(regime, deltas, group, seed):
        return 0.04 * seed * (deltas == "centered_rewards") * (-1) ** seed

    final = claims.ledger(claims.tests(hand_experiment("pair", score)))
    assert final[0].verdict == "inconclusive" and final[0].needed is not None and final[0].needed > 6


# --- what `sortrl report` writes for the tiny grid's claims (C1: centering helps; C2: normalising is the same) ---
def test_claims_md_and_figures_for_the_tiny_grid(results, written):
    exp = experiment.load_experiment(results, "tiny")
    ledger = claims.ledger(claims.tests(exp))
    assert [t.claim.id for t in ledger] == ["C1", "C2"]
    c1 = ledger[0]
    final = exp.final.set_index(["configuration", "seed"])["final_score"]
    d = np.array([final["centered_rewards", s] - final["rewards", s] for s in range(6)])
    assert c1.effect.point == pytest.approx(d.mean()) and c1.seed_effect == pytest.approx(d[5])
    text = (results / "CLAIMS.md").read_text()
    for t in ledger:
        assert f"| [{t.claim.id}](#claim-{t.claim.id.lower()}) | {t.claim.statement} |" in text
        assert f"**{t.verdict}** | 6 |" in text
        assert (results / "figures" / f"claim_{t.claim.id}.png") in written
    assert "2 claims, 2 tests:" in text and "The source's single run (seed 5) alone shows" in text
    report = (results / "REPORT.md").read_text()
    tiny = report.split("## Experiment `tiny`")[1]
    assert "### Claims this grid tests" in tiny and f"- C1: centering helps **{c1.verdict}**" in tiny
    assert (
        "### Claims this grid tests" not in report.split("## Experiment `lengths`")[1].split("## Experiment `tiny`")[0]
    )


def test_readme_headline_is_the_ledger(results, sections, tmp_path):
    from test_report import HAND_README

    path = tmp_path / "README.md"
    path.write_text(HAND_README)
    exp = experiment.load_experiment(results, "tiny")
    ledger = claims.ledger(claims.tests(exp))
    readme.write_readme(path, sections, results, ledger)
    text = path.read_text()
    assert "**The claims ledger**" in text and "| claim | statement | source |" in text
    assert "centering helps" in text and not math.isnan(ledger[0].p_adjusted)


def test_trap_caption_quotes_the_reference_solve_rate_of_the_trap_metric_only():
    """The sft reference solves every seed; another claim scores sft on another metric ("stuck", 0) in the same grid."""
    from sortrl.render import claims_md

    def side(label, mean):
        return SimpleNamespace(label=label, mean=mean)

    def test(claim_id, metric, figure, sides):
        claim = SimpleNamespace(id=claim_id, metric=metric, figure=figure)
        return SimpleNamespace(claim=claim, experiment="trap", n=128, sides=sides)

    ledger = [
        test("L3", "solved", "solve_bars", [side("lecture / sft", 1.0), side("lecture / lecture default", 0.0)]),
        test("L3b", "stuck", None, [side("lecture / lecture default", 1.0), side("lecture / sft", 0.0)]),
        test("E1", "solved", "solve_bars", [side("lecture / sft", 1.0), side("lecture / entropy 0.3", 0.25)]),
        test("E1", "solved", "solve_bars", [side("lecture / lecture default", 0.0), side("lecture / temp 2", 0.0)]),
    ]
    caption = claims_md.trap_caption(ledger)
    assert "supervised learning (`sft`) solves 1.00 of seeds" in caption
    assert "over 128 seeds" in caption and "1 of 3 policy-gradient configurations" in caption  # sft is not one


def test_a_bar_in_a_statement_does_not_split_the_ledger_tables_cells():
    """D1's statement says "mean |advantage|": in a Markdown table row the bars are escaped, one cell each."""
    from sortrl.render import claims_md

    claim = SimpleNamespace(id="D1", statement="weight (mean |advantage|) drifts", source="a | paper")
    effect = SimpleNamespace(point=0.5, low=0.4, high=0.6)
    t = SimpleNamespace(claim=claim, where="", verdict="supported", effect=effect)
    (row,) = claims_md.compact_table([t], "CLAIMS.md")[2:]
    assert "mean \\|advantage\\|" in row and "a \\| paper" in row
    assert len(re.findall(r"(?<!\\)\|", row)) == 5  # the row's own separators: 4 cells
