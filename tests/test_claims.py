"""The claims ledger (sortrl.analysis.claims, claims_md, claim_figures): every kind of claim on hand-made scores,
paired by seed and Holm-corrected, and the files `sortrl report` writes for the tiny grid's two claims."""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sortrl.analysis import claims, experiment
from sortrl.analysis.verdicts import SIGNFLIP_RESAMPLES, holm, paired_effect, signflip_p, verdict
from sortrl.engine.registry import ConfigError
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
    "magnitude": 'kind = "magnitude"\nnew = { deltas_mode = "centered_rewards" }\nold = { deltas_mode = "rewards" }\n'
    'within = { num_responses = [50, 2] }\npredicts = "higher"',
    "versus": 'kind = "magnitude"\nnew = { deltas_mode = "centered_rewards", num_responses = 50 }\n'
    'old = { deltas_mode = "rewards", num_responses = 50 }\nversus = { new = { num_responses = 2 }, old = { num_responses = 50 } }\n'
    'predicts = "higher"',
    "within-run": 'kind = "within-run"\nx = "loss"\nmetric = "mean_reward"\npredicts = "higher"\nmargin = 0.1',
    "level": 'kind = "level"\nnew = { deltas_mode = "centered_rewards", num_responses = 50 }\nagainst = 0.4\n'
    'predicts = "same"',
}


def hand_experiment(kind: str, score, curve=None) -> SimpleNamespace:
    """An experiment of `GRID` with one claim of `kind`, whose runs score `score(regime, deltas, G, seed)` and whose
    curves are `curve(regime, deltas, G, seed)` -> (loss [epoch], mean_reward [epoch]) when given."""
    text = GRID + f'\n[[claim]]\nid = "H"\nstatement = "s"\nsource = "a test"\n{CLAIMS[kind]}\n'
    grid = parse_grid(text)
    rows, epochs = [], []
    for c in grid.configurations():
        regime, deltas, group = c.labels["regime"], c.config.deltas_mode, c.config.num_responses
        for seed in grid.seeds:
            value = score(regime, deltas, group, seed)
            rows.append({"configuration": c.label, "seed": seed, "final_score": value, "final_loss": -value})
            if curve is not None:
                loss, reward = curve(regime, deltas, group, seed)
                epochs += [
                    {"configuration": c.label, "seed": seed, "epoch": e, "loss": x, "mean_reward": y}
                    for e, (x, y) in enumerate(zip(loss, reward))
                ]
    return SimpleNamespace(name="hand", grid=grid, final=pd.DataFrame(rows), curves=pd.DataFrame(epochs))


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
    assert lecture.p == signflip_p(d, "two-sided", 0.0, claims.SEED)  # the test of the mean it reports
    assert [s.label for s in lecture.sides] == [
        "lecture / centered_rewards / num_responses=10",
        "lecture / rewards / num_responses=10",
    ]
    assert found[1].effect.point == pytest.approx(np.mean([noise(s) for s in range(6)]))


def test_level_is_a_one_sample_test_of_one_configuration_against_a_constant():
    # under centering with G = 50 the score sits at 0.4 (plus noise) while exploring and at 0.7 in the lecture regime
    def score(regime, deltas, group, seed):
        return (0.7 if regime == "lecture" else 0.4) + noise(seed)

    lecture, explore = claims.tests(hand_experiment("level", score))
    d = np.array([noise(s) for s in range(6)])
    assert explore.differences == pytest.approx(d) and lecture.differences == pytest.approx(d + 0.3)
    assert [s.label for s in explore.sides] == ["explore / centered_rewards / num_responses=50"]
    assert explore.effect.point == pytest.approx(d.mean())
    assert explore.p == pytest.approx(
        max(signflip_p(d, "greater", -0.05, claims.SEED), signflip_p(d, "less", 0.05, claims.SEED))
    )  # TOST within the margin, as for any "same"
    assert claims.test_kind(explore.claim) == "level (one sample)"


def test_trend_is_its_steps_between_neighbouring_values():
    # the score rises by 0.1 from G = 2 to 10 (seed 3 by 0.3), then falls by 0.05 from 10 to 50: not monotone
    def score(regime, deltas, group, seed):
        return 0.5 + {2: 0.0, 10: 0.3 if seed == 3 else 0.1, 50: 0.05 if seed != 3 else 0.25}[group]

    found = claims.tests(hand_experiment("trend", score))
    assert [t.label for t in found] == [
        "H (regime=lecture: monotone (rank correlation))",
        "H (regime=lecture: 2 → 10)",
        "H (regime=lecture: 10 → 50)",
        "H (regime=explore: monotone (rank correlation))",
        "H (regime=explore: 2 → 10)",
        "H (regime=explore: 10 → 50)",
    ]
    whole, up, down = found[:3]
    # per seed, Spearman rho of (0, 1, 2) and the scores: 0.5 (up, then part of the way down), except seed 3 (0.5 too)
    assert whole.differences == pytest.approx([0.5] * 6) and len(whole.sides) == 3
    assert up.differences == pytest.approx([0.1, 0.1, 0.1, 0.3, 0.1, 0.1])
    assert down.differences == pytest.approx([-0.05] * 6)
    assert [s.label.split(" / ")[-1] for s in up.sides] == ["num_responses=10", "num_responses=2"]


def test_a_trend_section_states_the_claims_margin_not_the_rank_correlations():
    """A trend's monotone row tests rho against TREND_MARGIN; the section's prediction line states the margin the
    grid declared for the steps, with its reason (it printed the rank correlation's 0.1 beside the steps' reason)."""
    from sortrl.render import claims_md

    def score(regime, deltas, group, seed):
        return 0.01 * group + noise(seed)

    found = claims.ledger(claims.tests(hand_experiment("trend", score)))
    assert found[0].case == claims.MONOTONE and found[0].claim.margin == claims.TREND_MARGIN != 0.05
    text = "\n".join(claims_md._section(found, None))
    assert "; margin ±0.05 (" in text and "; margin ±0.1 (" not in text
    assert "as a trend, on" in text and claims_md._article("implementation check") == "an implementation check"


def test_a_non_monotone_trend_is_not_supported():
    """Up from G = 2 to 10, down from 10 to 50 on every one of 64 seeds: the claim "higher along G" is mixed, where a
    slope over the axis index, or a rank trend test alone, would have called it supported (0.4 up, 0.1 down)."""

    def score(regime, deltas, group, seed):
        return {2: 0.0, 10: 0.4, 50: 0.3}[group] + 0.01 * ((seed * 7) % 5)

    grid = GRID.replace("seeds = 6", "seeds = 64")
    exp = hand_experiment("trend", score)
    exp.grid = parse_grid(grid + '\n[[claim]]\nid = "H"\nstatement = "s"\nsource = "a test"\n' + CLAIMS["trend"])
    exp.final = pd.DataFrame(
        [
            {"configuration": c.label, "seed": s, "final_score": score(None, None, c.config.num_responses, s)}
            for c in exp.grid.configurations()
            for s in exp.grid.seeds
        ]
    )
    final = claims.ledger(claims.tests(exp))
    assert [t.verdict for t in final] == ["supported", "supported", "contradicted"] * 2
    assert claims.claim_verdicts(final) == {"H": "mixed"}


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


def test_magnitude_compares_the_sizes_of_two_contrasts():
    # centering changes the score by -0.3 at G = 50 and by +0.1 at G = 2: sizes 0.3 and 0.1, so the magnitude is 0.2
    def score(regime, deltas, group, seed):
        return seed * 0.0625 + ({50: -0.3, 2: 0.1}.get(group, 0) if deltas == "centered_rewards" else 0)

    lecture, _ = claims.tests(hand_experiment("magnitude", score))
    assert lecture.effect.point == pytest.approx(0.2)
    assert lecture.differences == pytest.approx([0.2] * 6)


def test_magnitude_versus_compares_the_sizes_of_two_different_contrasts():
    # at G = 50 centering adds 0.1; with raw rewards, G = 2 scores 0.4 less than G = 50 (plus a seed's noise): sizes
    # 0.1 and 0.4 + noise, so the magnitude is 0.1 - (0.4 - noise) per seed (the second contrast's mean is negative,
    # so it is oriented by minus one: its size is 0.4 - noise)
    def score(regime, deltas, group, seed):
        base = seed * 0.0625 + (0.1 if deltas == "centered_rewards" and group == 50 else 0.0)
        return base - (0.4 + noise(seed) if group == 2 else 0.0)

    exp = hand_experiment("versus", score)
    (claim,) = exp.grid.claims
    assert claim.contrasts[2:] == [{"num_responses": 2}, {"num_responses": 50}]
    lecture, explore = claims.tests(exp)
    expected = [0.1 - (0.4 + noise(s)) for s in range(6)]
    assert lecture.differences == pytest.approx(expected) and explore.differences == pytest.approx(expected)
    assert [s.label for s in lecture.sides] == [
        "lecture / centered_rewards / num_responses=50",
        "lecture / rewards / num_responses=50",
        "lecture / rewards / num_responses=2",
        "lecture / rewards / num_responses=50",
    ]
    assert lecture.effect.point == pytest.approx(float(np.mean(expected)))


@pytest.mark.parametrize(
    "versus",
    [
        "{ new = { num_responses = 2 } }",  # no old
        "{ new = { num_responses = 2 }, old = { num_responses = 50 }, other = {} }",
        "{ new = { num_responses = 2 }, old = {} }",  # an empty side
        "{ new = { num_responses = 2 }, old = { num_responses = 50 } }\nwithin = { num_responses = [50, 2] }",  # both
    ],
)
def test_a_bad_versus_is_one_error_naming_the_field(versus):
    claim = (
        'kind = "magnitude"\nnew = { deltas_mode = "centered_rewards" }\nold = { deltas_mode = "rewards" }\n'
        f'versus = {versus}\npredicts = "higher"'
    )
    with pytest.raises(ConfigError, match="versus: a magnitude claim's second contrast"):
        parse_grid(GRID + f'\n[[claim]]\nid = "H"\nstatement = "s"\nsource = "a test"\n{claim}\n')
    with pytest.raises(ConfigError, match=r"versus\.new: .* is not an axis"):
        parse_grid(
            GRID + '\n[[claim]]\nid = "H"\nstatement = "s"\nsource = "a test"\nkind = "magnitude"\n'
            'new = { deltas_mode = "centered_rewards" }\nold = { deltas_mode = "rewards" }\n'
            'versus = { new = { colour = 2 }, old = { num_responses = 50 } }\npredicts = "higher"\n'
        )


def test_within_run_correlation_of_loss_and_reward_over_epochs():
    # the loss rises with the reward in every run (rho +1) while centering; it falls (rho -1) otherwise
    def curve(regime, deltas, group, seed):
        reward = np.linspace(0, 1, 10) + 0.01 * seed
        return (reward if deltas == "centered_rewards" else -reward), reward

    lecture, explore = claims.tests(hand_experiment("within-run", lambda *_: 0.0, curve))
    # per seed: the mean over the regime's 6 configurations (3 centering, 3 not) of rho: (3 - 3) / 6 = 0
    assert lecture.differences == pytest.approx([0.0] * 6) and lecture.n == 6
    assert len(lecture.sides) == 6 and [round(s.mean, 9) for s in lecture.sides] == [-1] * 3 + [1] * 3


def test_within_run_correlation_supports_a_loss_that_rises_with_the_reward():
    def curve(regime, deltas, group, seed):
        reward = np.linspace(0, 1, 10) ** (1 + seed)
        return reward + 0.05 * np.sin(np.arange(10) * (seed + 1)), reward

    exp = hand_experiment("within-run", lambda *_: 0.0, curve)
    final = claims.ledger(claims.tests(exp))
    assert all(t.effect.point > 0.8 for t in final)  # (6 seeds: 2/64 is the smallest two-sided p, too few to decide)
    # each run's rho is scipy's Spearman rho of its two curves
    from scipy.stats import spearmanr

    rho = claims.within_run_rho(exp, exp.grid.claims[0]).set_index(["configuration", "seed"])["rho"]
    for seed in range(6):
        loss, reward = curve(None, None, None, seed)
        assert rho.xs(seed, level="seed").to_numpy() == pytest.approx([spearmanr(loss, reward).statistic] * 12)


def test_ledger_corrects_every_test_together_and_gives_verdicts():
    def score(regime, deltas, group, seed):
        return seed * 0.1 + (0.2 + noise(seed) if deltas == "centered_rewards" and regime == "lecture" else 0.0)

    raw = claims.tests(hand_experiment("pair", score))
    final = claims.ledger(raw)
    assert [t.p_adjusted for t in final] == pytest.approx(list(holm([t.p for t in raw])))
    for t in final:
        assert t.verdict == verdict(t.effect, t.p_adjusted, min(1.0, t.p_contrary * 2), ">")
    # explore: every difference is 0 (significantly equivalent: TOST within the margin 0.05): no effect
    assert final[1].verdict == "no effect"


def test_inconclusive_tests_say_how_many_seeds_they_would_need():
    def score(regime, deltas, group, seed):
        return 0.04 * seed * (deltas == "centered_rewards") * (-1) ** seed

    final = claims.ledger(claims.tests(hand_experiment("pair", score)))
    assert final[0].verdict == "inconclusive" and final[0].needed is not None and final[0].needed > 6


# --- what `sortrl report` writes for the tiny grid's claims (C1: centering helps; C2: normalising is the same) ---
def test_claims_md_and_figures_for_the_tiny_grid(results, written):
    from sortrl.render import claims_md

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
        assert f"{claims_md.fmt_verdict(t)} | 6 |" in text  # with its flag where the sides sit at a bound
        assert (results / "figures" / f"claim_{t.claim.id}.png") in written
    assert "2 claims, 2 tests:" in text and "The source's single run (seed 5) alone shows" in text
    report = (results / "REPORT.md").read_text()
    tiny = report.split("## Experiment `tiny`")[1]
    assert "### Claims this grid tests" in tiny and f"- C1: centering helps **{c1.verdict}**" in tiny
    # C2 (normalising is the same) on two epochs near chance: its supported equivalence is the floor's, and says so
    c2 = ledger[1]
    assert c2.claim.predicts == "same" and claims.bound_flag(c2) == "at the floor"
    assert f"**{c2.verdict}** (at the floor) (effect" in tiny
    assert (
        "### Claims this grid tests" not in report.split("## Experiment `lengths`")[1].split("## Experiment `tiny`")[0]
    )


def test_a_one_row_paired_figure_has_room_for_its_title_label_and_legend(results):
    """A claim tested once per regime draws one row per panel: at 1.65 inches matplotlib's constrained layout
    collapsed ('axes sizes collapsed to zero', D2's figure). Every tiny-grid claim figure lays out without it."""
    from sortrl.render import claim_figures
    from sortrl.render.figures import png_bytes

    exp = experiment.load_experiment(results, "tiny")
    ledger = claims.ledger(claims.tests(exp))
    for claim in exp.grid.claims:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fig = claim_figures.draw(exp, claim, [t for t in ledger if t.claim.id == claim.id])
            png_bytes(fig)
        assert fig.get_size_inches()[1] >= claim_figures.MIN_HEIGHT


def test_readme_headline_is_the_ledger(results, sections, tmp_path):
    from test_report import HAND_README

    path = tmp_path / "README.md"
    path.write_text(HAND_README)
    exp = experiment.load_experiment(results, "tiny")
    ledger = claims.ledger(claims.tests(exp))
    readme.write_readme(path, sections, results, ledger)
    text = path.read_text()
    assert "**The claims ledger**" in text and "| claim | statement | verdict | tests |" in text
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
    t = SimpleNamespace(claim=claim, where="", verdict="supported", effect=effect, bound="")
    (row,) = claims_md.compact_table([t], "CLAIMS.md")[2:]
    assert "mean \\|advantage\\|" in row and "paper" not in row  # the source is in the claim's section
    assert len(re.findall(r"(?<!\\)\|", row)) == 5  # the row's own separators: 4 cells


def test_an_identity_is_an_implementation_check_outside_the_family_and_the_counts():
    """A claim that holds by construction is checked seed by seed (no statistics), within its tolerance; it is not in
    the Holm family, the verdict counts or the claim-level verdicts, and CLAIMS.md lists it in its own section."""
    from sortrl.render import claims_md

    def score(regime, deltas, group, seed):  # centering changes nothing but float rounding in seed 2 (lecture: 2e-7)
        return seed * 0.1 + (2e-7 if deltas == "centered_rewards" and seed == 2 and regime == "lecture" else 0.0)

    exp = hand_experiment("pair", score)
    same = 'new = { deltas_mode = "centered_rewards" }\nold = { deltas_mode = "rewards" }\npredicts = "same"\n'
    text = GRID + '\n[[claim]]\nid = "H"\nstatement = "s"\nsource = "a test"\n' + CLAIMS["pair"] + "\n"
    checks = {"K": 'identity = "ratio 1"\ntolerance = 1e-6', "K0": 'identity = "ratio 1"'}  # K0: to the last bit
    for claim_id, extra in checks.items():
        text += f'\n[[claim]]\nid = "{claim_id}"\nstatement = "same"\nsource = "a test"\n{same}{extra}\n'
    exp.grid = parse_grid(text)
    final = claims.ledger(claims.tests(exp))
    by_id = {t.label: t for t in final}
    assert by_id["K (regime=lecture)"].verdict == "holds" and math.isnan(by_id["K (regime=lecture)"].p_adjusted)
    assert by_id["K0 (regime=lecture)"].verdict == "not in every seed"  # 2e-7 is not the last bit
    assert by_id["K0 (regime=explore)"].verdict == "holds"  # identical in every seed
    evidence = claims.evidence(final)
    assert [t.claim.id for t in evidence] == ["H", "H"]
    assert [t.p_adjusted for t in evidence] == pytest.approx(list(holm([t.p for t in evidence])))  # a family of 2
    text = claims_md.render(final, {})
    assert "1 claim, 2 tests:" in text and "## Implementation checks" in text
    assert "| [K0](#claim-k0) | same | ratio 1 | regime=lecture | **not in every seed**: 5 of 6 seeds identical" in text
    with pytest.raises(ValueError, match="tolerance: only an implementation check"):
        parse_grid(GRID + '\n[[claim]]\nid = "T"\nstatement = "s"\nsource = "a"\n' + same + "tolerance = 0.1\n")


def test_a_within_run_claim_reads_its_curves_from_the_stored_runs(tmp_path):
    """`load_experiment` keeps the curves a within-run claim's test reads, whoever loads it (a notebook passes no
    `claim_curves`): the test pairs every seed."""
    from sortrl.study.sweep import run_sweep

    text = (
        'name = "w"\nseeds = 3\n[base]\nnum_epochs = 6\n[grid]\ndeltas_mode = ["rewards", "centered_rewards"]\n'
        '[[claim]]\nid = "W"\nstatement = "s"\nsource = "a test"\nkind = "within-run"\nx = "loss"\n'
        'metric = "mean_reward"\npredicts = "higher"\nmargin = 0.1\n'
    )
    run_sweep(parse_grid(text), tmp_path, n_jobs=1)
    (test,) = claims.tests(experiment.load_experiment(tmp_path, "w", curves=()))
    assert test.n == 3 and not np.isnan(test.effect.point) and len(test.sides) == 2


def test_a_constant_side_of_a_0_1_score_is_said_to_make_a_one_sample_result_and_counts_read_by_metric():
    """L3: `sft` solves every seed by construction, so the paired test is in effect one-sample; L3b counts seeds
    that end stuck ('ends stuck in 128/128'), not seeds that 'solve'."""
    from sortrl.render import claims_md

    def side(label, mean, n=128):
        return SimpleNamespace(label=label, mean=mean, interval=SimpleNamespace(point=mean, low=0.0, high=1.0, n=n))

    def test(metric, sides):
        claim = SimpleNamespace(metric=metric)
        return SimpleNamespace(claim=claim, n=128, sides=sides)

    one = test("solved", [side("sft", 1.0), side("entropy 0.3", 0.25)])
    assert "`sft` is 1 in every seed, so this is in effect a one-sample result: `entropy 0.3`'s rate" in (
        claims_md._one_sample(one)
    )
    both = test("solved", [side("sft", 1.0), side("lecture default", 0.0)])
    assert "Both sides are the same in every seed (1 and 0)" in claims_md._one_sample(both)
    assert claims_md._one_sample(test("solved", [side("a", 0.0), side("b", 0.0)])) == ""  # nothing to test
    assert claims_md._one_sample(test("solved", [side("a", 0.5), side("b", 0.25)])) == ""
    assert claims_md._one_sample(test("final_score", [side("a", 1.0), side("b", 0.25)])) == ""  # not a 0/1 score
    stuck = test("stuck", [side("lecture default", 1.0), side("sft", 0.0)])
    assert claims_md.fmt_side(stuck, 0).startswith("`lecture default` ends stuck in 128/128")
    assert claims_md.fmt_side(one, 1).startswith("`entropy 0.3` solves 32/128")


def test_a_score_undefined_for_every_run_of_a_configuration_is_warned_not_called_no_runs_yet():
    def score(regime, deltas, group, seed):
        return math.nan if deltas == "centered_rewards" else 0.1 * seed

    with pytest.warns(claims.UndefinedScoreWarning, match=r"claim H: final_score is undefined \(NaN\) for every run"):
        found = claims.tests(hand_experiment("pair", score))
    assert [t.n for t in found] == [0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a defined score warns nothing
        claims.tests(hand_experiment("pair", lambda regime, deltas, group, seed: 0.1 * seed))


def test_p_values_print_no_more_precisely_than_their_test_resolves_them():
    from sortrl.render.claims_md import fmt_p

    drawn = SIGNFLIP_RESAMPLES
    floor = 2 / (drawn + 1)  # two-sided, 128 seeds: 1e-5
    assert fmt_p(floor, floor, drawn) == "≤1e-5"  # at the floor: a bound, not an estimate
    assert fmt_p(119 * floor, floor, drawn, raw=floor) == "≤0.002"  # corrected from a p at the floor: rounded up
    assert fmt_p(0.48, floor, drawn) == "0.48"  # Monte Carlo error 0.001: 3 digits, trailing zero dropped
    assert fmt_p(3.1e-4, floor, drawn) == "0.00031"  # error 4e-5: 2 digits
    assert fmt_p(2.2e-5, floor, drawn) == "2e-5"  # error 1e-5: 1 digit
    assert fmt_p(0.0123, floor, drawn, raw=0.0123 / 50) == "0.012"  # corrected x50: its error (0.002) is x50 too
    assert fmt_p(2 / 256) == "0.00781" and fmt_p(1e-9) == "<1e-6"  # exact (enumerated, McNemar)
    assert fmt_p(1.0, floor, drawn) == "1" and fmt_p(math.nan) == "–"


def test_a_no_difference_verdict_at_the_metrics_floor_is_flagged_and_one_above_it_is_not():
    """Both sides within one margin (0.05) of the final score's floor (chance, 0): the equivalence that makes 'no effect'
    is the floor's, flagged in the test's row, its section, the counts and the claim-level verdict. The same null
    difference at 0.5, far from either bound, is a plain 'no effect'."""
    from sortrl.render import claims_md

    def floor(regime, deltas, group, seed):  # both deltas modes near chance, every seed alike
        return 0.01 + 0.002 * seed

    def middle(regime, deltas, group, seed):
        return 0.5 + 0.002 * seed

    flagged, plain = (claims.ledger(claims.tests(hand_experiment("pair", score))) for score in (floor, middle))
    assert [t.verdict for t in flagged] == [t.verdict for t in plain] == ["no effect", "no effect"]
    assert [t.bound for t in flagged] == ["floor", "floor"] and [t.bound for t in plain] == ["", ""]
    assert [claims.bound_flag(t) for t in flagged] == ["at the floor"] * 2
    assert [claims.bound_flag(t) for t in plain] == ["", ""]
    assert claims.claim_bound_flags(flagged) == {"H": "at the floor"} and claims.claim_bound_flags(plain) == {"H": ""}
    text = claims_md.render(flagged, {})
    assert "2 no effect (2 at the floor)" in text and "1 not supported (1 at the floor)" in text
    assert "| **no effect** (at the floor) |" in text
    assert "cannot tell an absent effect from one the floor hides" in text
    assert "**not supported** (at the floor: so is every one of its tests)" in text
    plain_text = claims_md.render(plain, {})
    assert "at the floor" not in plain_text.split("## Verdicts")[1] and "2 no effect," in plain_text


@pytest.mark.parametrize(
    ("metric", "means", "margin", "expected"),
    [
        ("final_exact_rate", [0.023, 0.021], 0.05, "floor"),  # D6: exact rates near 0
        ("final_exact_rate", [0.023, 0.061], 0.05, ""),  # one side above floor + margin: it could show a difference
        ("solved", [0.0, 0.0], 0.05, "floor"),  # 0 of 128 solved on both sides: the trap
        ("solved", [1.0, 0.97], 0.05, "ceiling"),  # both solve nearly every seed
        ("greedy_volatility", [0.0, 0.004], 0.05, "floor"),  # G4: policies that stopped moving
        ("final_loss", [0.0, 0.001], 0.05, ""),  # a loss has no bound
        ("final_score", [-0.01, 0.02], 0.05, "floor"),  # near chance (a score may dip below it)
    ],
)
def test_at_bound_needs_every_side_within_one_margin_of_the_same_bound(metric, means, margin, expected):
    sides = tuple(claims.Side(str(i), m, None) for i, m in enumerate(means))
    assert claims.at_bound(sides, metric, margin) == expected


# --- the committed ledger as a reader sees it (results/CLAIMS.md and the README headline, regenerated by the report)
ROOT = Path(__file__).resolve().parents[1]
KINDS = (
    "difference", "equivalence", "non-inferiority", "trend", "magnitude", "within-run correlation",
    "level (one sample)", "implementation check",
)  # fmt: skip


def test_the_committed_ledger_names_each_sections_test_kind_and_prints_no_degenerate_interval():
    text = (ROOT / "results" / "CLAIMS.md").read_text()
    sections = re.findall(r'<a id="claim-[^"]+"></a>\n### .*\n\n(Source: .*)', text)
    assert len(sections) == text.count('<a id="claim-') > 0
    for line in sections:
        kind = re.search(r"Tested in grid `[^`]+`, as an? (.+?), on ", line)
        assert kind is not None and kind.group(1) in KINDS, line[:200]
    verdicts = text.split("## Verdicts", 1)[1].split("\n## ", 1)[0]  # the verdict table's section only
    table = [row for row in verdicts.splitlines() if row.startswith("| [")]
    assert table and all(row.split(" | ")[3] in KINDS[:-1] for row in table)  # the verdict table's column *test*
    # no interval whose two ends print alike, anywhere (effects, sides, checks)
    same_ends = re.findall(r"\[([+-]?[0-9.e+-]+), \1\]", text)
    assert same_ends == [], same_ends[:5]
    # an effect equal in every seed prints the exact bound on the share of seeds that would differ, not "all n equal"
    assert all("(all" not in row.split(" | ")[5] or "would differ" in row.split(" | ")[5] for row in table)


def test_the_committed_readme_headline_counts_implementation_checks_apart():
    ledger = (ROOT / "results" / "CLAIMS.md").read_text()
    readme = (ROOT / "README.md").read_text()
    checks = set(
        re.findall(r"^\| \[([\w-]+)\]\(#claim-[\w-]+\) \| [^\n]*\*\*(?:holds|not in every seed)\*\*", ledger, re.M)
    )
    assert checks  # R3, R4, R5, G2b, D1 hold by construction
    counts = re.search(r"^(\d+) claims, (\d+) tests: (.*)\. Claims: (.*)\.$", ledger, re.M)
    headline = re.search(r"\*\*The claims ledger\*\* \(claims: (.*?); tests: (.*?); paired by seed", readme)
    assert counts and headline
    assert headline.group(1) == counts.group(4) and headline.group(2) == counts.group(3)  # the same counts
    rows = re.findall(r"^\| \[([\w-]+)\]\(results/CLAIMS\.md#claim-[\w-]+\) \|", readme, re.M)
    assert len(rows) == int(counts.group(1)) and not checks & set(rows)  # one row per claim, no check among them
    cells = [re.split(r"(?<!\\)\|", row) for row in readme.splitlines() if row.startswith("| [")]
    claim_level = [re.match(r" \*\*([a-z ]+)\*\*", row[3])[1] for row in cells]  # claim | statement | verdict
    tally = Counter(claim_level)
    assert sum(tally.values()) == len(rows)
    for found, n in tally.items():  # the headline's claim counts are the rows' claim-level verdicts
        assert re.search(rf"\b{n} {found}\b", headline.group(1)), (found, n, headline.group(1))
    assert (
        f"Implementation checks (claims that hold by construction, so not evidence: {', '.join(sorted(checks))})"
        in readme
    )


def test_a_level_claim_on_solved_seeds_is_an_exact_binomial_test_of_the_share():
    """L3 as a one-sample result: 0 of 128 seeds solved is a share whose exact interval is [0, 0.028] (Clopper-Pearson,
    1 - 0.025^(1/128)), and 'not above 0 + 0.05' has the exact binomial p 0.95^128 (no sign flip of 0/1 values,
    whose floor would be the resampling's); 128 of 128 stuck against 1 - 0.05 mirrors it. A level is not two sides a
    bound could hide a difference between, so it is never flagged at the floor."""
    from sortrl.analysis.verdicts import share_interval, share_level_p

    assert share_level_p(0, 128, "<=", 0.0, 0.05) == pytest.approx(0.95**128)
    assert share_level_p(128, 128, ">=", 1.0, 0.05) == pytest.approx(0.95**128)
    assert share_level_p(0, 128, "<=", 0.0, 0.05, contrary=True) == 1.0  # 'above 0.05' is as far from 0/128 as can be
    # TOST of 3/10 within 0.3 +- 0.5: the null 'share <= -0.2' cannot hold (p 0), so p is P(X <= 3 | 0.8)
    by_hand = sum(math.comb(10, k) * 0.8**k * 0.2 ** (10 - k) for k in range(4))
    assert share_level_p(3, 10, "=", 0.3, 0.5) == pytest.approx(by_hand)
    interval = share_interval(0, 128)
    assert (interval.low, interval.point) == (0.0, 0.0) and interval.high == pytest.approx(1 - 0.025 ** (1 / 128))
    text = GRID.replace("seeds = 6", "seeds = 128") + (
        '\n[[claim]]\nid = "T"\nstatement = "s"\nsource = "a test"\nkind = "level"\nmetric = "solved"\n'
        'new = { deltas_mode = "rewards", num_responses = 10 }\nagainst = 0.0\npredicts = "not higher"\n'
    )
    grid = parse_grid(text)
    rows = [{"configuration": c.label, "seed": s, "solved": 0.0} for c in grid.configurations() for s in grid.seeds]
    exp = SimpleNamespace(name="hand", grid=grid, final=pd.DataFrame(rows), curves=pd.DataFrame())
    lecture, explore = claims.ledger(claims.tests(exp))
    assert lecture.p == pytest.approx(0.95**128) and lecture.effect.high == pytest.approx(interval.high)
    assert lecture.verdict == "supported" and lecture.bound == "" and claims.bound_flag(lecture) == ""


def test_a_figure_marks_the_panels_whose_tests_sit_at_the_floor():
    """The floor flag on a claim's figure: a panel whose compared means all sit within the margin of the metric's
    bound says so in a box (and the row label), and the PNG differs from the same figure without the flag; drawing
    it twice gives the same bytes."""
    from sortrl.render import claim_figures
    from sortrl.render.figures import png_bytes

    def floor(regime, deltas, group, seed):
        return 0.01 + 0.002 * seed

    exp = hand_experiment("pair", floor)
    found = claims.ledger(claims.tests(exp))
    assert [t.bound for t in found] == ["floor", "floor"]
    claim = found[0].claim
    assert claim_figures.bound_note(claim, found[:1]) == "at the floor: every mean within ±0.05 of 0"
    assert claim_figures.bound_note(claim, [found[0], replace(found[1], bound="")]) == "1 of 2 tests at the floor"
    assert claim_figures.bound_note(claim, [replace(t, bound="") for t in found]) == ""
    flagged = png_bytes(claim_figures.draw(exp, claim, found))
    assert flagged == png_bytes(claim_figures.draw(exp, claim, found))  # byte-reproducible
    assert flagged != png_bytes(claim_figures.draw(exp, claim, [replace(t, bound="") for t in found]))
    assert claim_figures._row_label(found[0], "regime=lecture") == "6 seeds\n(at the floor)"
