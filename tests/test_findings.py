"""Findings and their sentences (sortrl.analysis.findings, sortrl.render.sentences) on hand-made cases."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sortrl.analysis import experiment, findings, scores
from sortrl.analysis.experiment import MARGIN, comparison_verdict
from sortrl.analysis.findings import Eos, Findings, Floor, Ranking, Top
from sortrl.analysis.verdicts import Interval
from sortrl.engine.task import CHANCE_FIELDS, chance_mean_reward, reward_bounds
from sortrl.render import report, sentences
from sortrl.study.grid import parse_grid, varying_labels


def _experiment(
    table: dict[str, list[float]],
    accuracy: dict[str, list[float]] | None = None,
    identical: dict[str, str] | None = None,
) -> SimpleNamespace:
    """A stand-in for `Experiment` with only `final` (per configuration, its final score for seeds 0, 1, ...) and
    `identical` (which configurations repeat which: `Experiment.identical`)."""
    rows = [
        {"configuration": label, "seed": seed, "final_score": value, "run_id": f"{label}-{seed}"}
        for label, values in table.items()
        for seed, value in enumerate(values)
    ]
    final = pd.DataFrame(rows)
    solved = accuracy or {}
    final["final_greedy_accuracy"] = [
        solved.get(r["configuration"], [0.0] * 99)[r["seed"]] for r in rows
    ]  # 0: no prompt sorted
    return SimpleNamespace(final=final, identical=identical or {})


@pytest.mark.parametrize(
    ("effect", "p_holm", "expected"),
    [
        (Interval(0.2, 0.1, 0.3, 32), 0.01, "better"),
        (Interval(-0.2, -0.3, -0.1, 32), 0.01, "worse"),
        (Interval(0.01, -0.02, 0.03, 32), 0.5, "no difference"),  # inside +-0.05, not significant
        (Interval(0.04, -0.02, 0.10, 32), 0.5, "inconclusive"),  # reaches beyond the margin
        (Interval(0.04, 0.01, 0.07, 32), 0.2, "inconclusive"),  # CI above 0, but the corrected test is not
        (Interval(0.0, 0.0, 0.0, 32), 1.0, "no difference"),  # every seed equal
    ],
)
def test_comparison_verdicts_come_from_the_corrected_test(effect, p_holm, expected):
    assert comparison_verdict(effect, p_holm) == expected


def test_a_significant_effect_inside_the_margin_is_flagged():
    small = findings.Comparison(
        "a", "b", Interval(0.02, 0.01, 0.03, 32), 0.001, 0.002, "better", None, Interval(0.6, 0.5, 0.7, 32)
    )
    assert small.within_margin
    big = findings.Comparison(
        "a", "b", Interval(0.2, 0.1, 0.3, 32), 0.001, 0.002, "better", None, Interval(0.8, 0.7, 0.9, 32)
    )
    assert not big.within_margin


def test_separation_needs_a_paired_ci_above_zero_and_a_holm_corrected_test():
    base = np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.3])
    exp = _experiment(
        {
            "lead": base + np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]),  # above `base` on every seed
            "base": base,
            "twin": base,
            "noisy": base + np.array([0.02, -0.02, 0.03, -0.03, 0.01, -0.01]),  # differs both ways
        }
    )
    # alone: 6 positive differences, exact Wilcoxon p = 2 / 2^6 = 0.03125 < 0.05, CI above 0: separated
    apart, effects = findings.separated(exp, [("lead", "base")])
    assert apart == [True] and effects[0].point == pytest.approx(0.035) and effects[0].low > 0
    # the same comparison twice in one family: Holm doubles the smaller p to 0.0625, so neither separates
    apart, _ = findings.separated(exp, [("lead", "base"), ("lead", "twin")])
    assert apart == [False, False]
    # a comparison whose differences change sign is never separated, whatever its mean
    apart, _ = findings.separated(exp, [("noisy", "base")])
    assert apart == [False]


def _part(scores_by_label: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"configuration": k, "score": v, "score_ci_low": v - 0.1, "score_ci_high": v + 0.1, "n": 6}
            for k, v in scores_by_label.items()
        ]
    )


def test_the_top_names_a_best_only_when_it_separates_from_every_other():
    ones = np.ones(8)  # 8 seeds: all-positive differences give p = 2 / 2^8, below 0.05 after Holm over 2 tests
    steps = np.arange(8) / 100
    clear = _experiment({"a": 0.2 + steps, "b": 0.1 * ones + steps / 2, "c": 0.0 * ones})
    top = findings._top(clear, "", _part({"b": 0.12, "a": 0.22, "c": 0.0}))
    assert top.leader == "a" and top.runner_up == "b" and top.single and top.tied == ["a"]
    # the runner-up separates, but a third configuration does not (its differences change sign): a tie
    mixed = _experiment({"a": 0.2 + steps, "b": 0.1 * ones, "c": 0.2 + steps[::-1]})
    top = findings._top(mixed, "", _part({"a": 0.22, "b": 0.1, "c": 0.22}))
    assert not top.single and top.tied == ["a", "c"]
    text = sentences._top(top, short=False, several=False)
    assert text.startswith("No single best configuration: 2 configurations are tied at the top")
    assert text.endswith(": c.")


def test_floor_counts_runs_and_configurations_at_chance_and_solved_runs():
    exp = _experiment(
        {"flat": [0.0, 0.01, -0.01, 0.0, 0.0, 0.0], "some": [0.0, 0.0, 0.0, 0.6, 0.6, 0.9]},
        accuracy={"some": [0.0, 0.0, 0.0, 1 / 3, 1.0, 1.0]},
    )
    floor = findings._floor(exp, "", ["flat", "some"])
    assert floor.at_chance == ["flat"]  # its mean's CI lies within +-0.05; `some`'s does not
    assert floor.iqm_at_chance == ["flat"]  # `some`: IQM of 0, 0, 0.6, 0.6 (middle four of six) = 0.3
    assert (floor.runs, floor.runs_at_chance) == (12, 9) and floor.mostly_at_chance and not floor.nothing_learns
    assert (floor.solved, floor.solving) == (2, ["some"])
    text = sentences.floor_sentences(Findings(experiment=None, summary=None, floors=[floor]), short=False)
    assert text == [
        f"Most runs learn nothing: 9 of 12 runs end with a final score within ±{MARGIN:g} of chance, and the IQM of "
        "the final score is at chance in 1 of 2 configurations.",
        f"1 of 2 configurations does not rise above chance (mean final score within ±{MARGIN:g}, CI included): flat.",
        "2 of 12 runs solve the task (greedy policy sorts every training prompt), in 1 configuration: some.",
    ]


def test_nothing_learns_and_nothing_solves_are_stated():
    exp = _experiment({"a": [0.0] * 6, "b": [0.02, -0.01, 0.0, 0.01, 0.0, -0.02]})
    floor = findings._floor(exp, "reward=exact_match", ["a", "b"])
    assert floor.nothing_learns and floor.solved == 0
    text = sentences.floor_sentences(Findings(experiment=None, summary=None, floors=[floor]))
    assert text == [
        f"Nothing learns under reward=exact_match: every configuration's mean final score lies within ±{MARGIN:g} "
        "of chance, 95% CI included (0 = the uniform random policy).",
        "No run solves the task: none of the 12 runs ends with a greedy policy that sorts every training prompt.",
    ]


def test_intervals_are_never_printed_degenerate():
    assert findings.fmt_interval(1.0, 1.0, 1.0, 2, n=32) == "1.00 (all 32 equal)"
    assert findings.fmt_interval(0.0, 0.0, 0.0, 3) == "0.000 (same in every resample)"
    assert findings.fmt_effect(Interval(0.0, 0.0, 0.0, 128)) == "+0.000 (all 128 equal)"
    # ends that differ but round alike get more decimals, never `1.00 [1.00, 1.00]`
    assert findings.fmt_interval(0.99912, 0.99843, 0.99968, 2) == "0.999 [0.998, 1.000]"
    assert findings.fmt_interval(0.99912, 0.99903, 0.99948, 2) == "0.9991 [0.9990, 0.9995]"
    assert findings.fmt_interval(0.5, 0.4, 0.6, 2) == "0.50 [0.40, 0.60]"
    # a spread of float rounding (R3's seq-mean-token-mean side, ~1e-9) printed alike even at 6 decimals:
    # `-0.000000 [-0.000000, -0.000000]`; in significant digits its ends differ
    assert findings.fmt_interval(-3.1e-9, -4.2e-9, -2.0e-9, 3, n=128) == "-3.1e-09 [-4.2e-09, -2.0e-09]"
    assert findings.fmt_effect(Interval(1.5e-9, 1.21e-9, 1.24e-9, 128)) == "+1.50e-09 [+1.21e-09, +1.24e-09]"
    assert findings.fmt_improve(1.0, 1.0, 1.0) == "1.00 (every run above every reference run)"
    assert findings.fmt_improve(0.0, 0.0, 0.0) == "0.00 (every run below every reference run)"


def test_recipes_are_separated_only_where_the_paired_test_says_so():
    gap = Interval(0.2, 0.1, 0.3, 32)
    ranking = Ranking(
        "exact_match", [("dapo", 0.18, None, False), ("gspo", 0.10, gap, True), ("grpo", 0.09, gap, False)]
    )
    found = Findings(experiment=None, summary=None, rankings=[ranking], ranking_setting="eos=false")
    text = sentences.recipe_sentences(found)[0]
    assert text.endswith("under exact_match, dapo 0.18 > gspo 0.10, grpo 0.09.")
    assert "which is no evidence that they are equal" in text


def test_eos_length_is_compared_with_the_untrained_policy_paired_by_run():
    labels = ["a / eos=false", "a / eos=true", "b / eos=false", "b / eos=true"]
    final = pd.DataFrame(
        {
            "configuration": [label for label in labels for _ in range(4)],
            "final_response_length": [3.0] * 4 + [2.9, 3.0, 2.8, 2.9] + [3.0] * 4 + [2.0, 2.1, 1.9, 2.0],
            "initial_response_length": [3.0] * 4 + [2.0, 2.1, 1.9, 2.0] + [3.0] * 4 + [2.0, 2.0, 2.0, 2.0],
        }
    )
    configs = pd.DataFrame({"eos": [False, True, False, True]}, index=labels)
    exp = SimpleNamespace(
        final=final, configs=configs, axes=["recipe", "eos"], config=lambda label: SimpleNamespace(response_length=3)
    )
    (eos,) = findings._eos(exp, [])
    assert (eos.runs, eos.maximum) == (8, 3)
    assert eos.final == pytest.approx((2.9 + 3.0 + 2.8 + 2.9 + 2.0 + 2.1 + 1.9 + 2.0) / 8)
    assert eos.initial == pytest.approx((2.0 + 2.1 + 1.9 + 2.0 + 8.0) / 8)
    assert eos.change.point == pytest.approx(eos.final - eos.initial)  # mean of per-run differences
    still = Eos("exact_match", 8, 2.0, 2.0, Interval(0.0, -0.05, 0.04, 8), 3)
    found = Findings(experiment=None, summary=None, rankings=[Ranking("", [("a", 0.5, None, False)])], eos=[eos, still])
    text = sentences.recipe_sentences(found)[1]
    assert f"against {eos.initial:.2f} for the untrained policy (first epoch): longer by +0.45 [" in text
    assert text.endswith(
        "2.00 tokens of at most 3 under exact_match, against 2.00 for the untrained policy (first epoch): a change "
        "of +0.00 [-0.05, +0.04], not separated from 0."
    )


def test_initial_response_length_is_the_first_measured_epoch():
    rows = pd.DataFrame(
        {
            "run": [0, 0, 0, 1, 1, 1],
            "epoch": [0, 1, 2, 0, 1, 2],
            "response_length": [2.0, 2.5, 3.0, math.nan, 1.5, 1.0],
        }
    )
    got = scores.compute(["initial_response_length"], rows)["initial_response_length"]
    assert got.tolist() == [2.0, 1.5]


def test_greedy_volatility_and_gradient_norm_scores_by_hand():
    # 10 epochs: the late 20% are epochs >= 7.2, i.e. 8 and 9; run 0's greedy accuracy flips 0 -> 1 there (std of
    # [0, 1] = 0.7071), run 1's stays 1 (std 0). Gradient norms 1 and 3 in turn: mean square 5, log 5
    rows = pd.DataFrame(
        {
            "run": [0] * 10 + [1] * 10,
            "epoch": list(range(10)) * 2,
            "greedy_accuracy": [1.0] * 8 + [0.0, 1.0] + [1.0] * 10,
            "grad_norm": [1.0, 3.0] * 10,
        }
    )
    got = scores.compute(["greedy_volatility", "grad_norm_log"], rows)
    assert got["greedy_volatility"].tolist() == pytest.approx([math.sqrt(0.5), 0.0])
    assert got["grad_norm_log"].tolist() == pytest.approx([math.log(5.0)] * 2)


def test_reward_per_sample_is_at_the_budget_of_one_group_per_epoch():
    # 4 epochs each: run 0 draws 1 group an epoch (its mean reward over the 4 epochs, 2.5); run 1 draws 3, 2, ...:
    # its first 4 groups are epoch 0's 3 (reward 1) and 1 of epoch 1's 2 (reward 5): (3 x 1 + 1 x 5) / 4 = 2
    rows = pd.DataFrame(
        {
            "run": [0] * 4 + [1] * 4,
            "epoch": list(range(4)) * 2,
            "mean_reward": [1.0, 2.0, 3.0, 4.0, 1.0, 5.0, 9.0, 9.0],
            "num_gen_batches": [math.nan] * 4 + [3.0, 2.0, 1.0, 1.0],
        }
    )
    got = scores.compute(["reward_per_sample"], rows)["reward_per_sample"]
    assert got.tolist() == pytest.approx([2.5, 2.0])
    without = scores.compute(["reward_per_sample"], rows.drop(columns="num_gen_batches").iloc[:4])
    assert without["reward_per_sample"].tolist() == pytest.approx([2.5])  # no re-sampling column: one group an epoch


def test_easy_minus_hard_accuracy_is_the_last_epochs_short_minus_long_greedy_accuracy():
    # run 0 ends sorting 3 of 4 short prompts (0.75) and 1 of 4 long ones (0.25): gap 0.5; run 1 ends 0.5 and 1.0: -0.5.
    # Lengths sort as numbers (len=10 is the longest, not len=3); a run with one length has no gap (NaN)
    rows = pd.DataFrame(
        {
            "run": [0, 0, 1, 1],
            "epoch": [0, 1, 0, 1],
            "greedy_accuracy/len=3": [0.0, 0.75, 1.0, 0.5],
            "greedy_accuracy/len=10": [0.0, 0.25, 0.0, 1.0],
        }
    )
    got = scores.compute(["easy_minus_hard_accuracy"], rows)["easy_minus_hard_accuracy"]
    assert got.tolist() == pytest.approx([0.5, -0.5])
    one_length = pd.DataFrame({"run": [0], "epoch": [0], "greedy_accuracy/len=3": [1.0]})
    assert scores.compute(["easy_minus_hard_accuracy"], one_length)["easy_minus_hard_accuracy"].isna().all()


def test_shared_runs_are_named():
    def section(name, ids):
        return Findings(experiment=SimpleNamespace(name=name, final=pd.DataFrame({"run_id": ids})), summary=None)

    sections = [section("small", ["a", "b"]), section("big", ["a", "b", "c"]), section("x", ["c"])]
    shared = findings.shared_runs(sections)
    assert shared == {"small": [("big", 2)], "big": [], "x": [("big", 1)]}
    small, big, _ = findings.link_shared(sections)
    assert (small.shared, big.shared) == ([("big", 2)], []) and sentences.shared_sentence(big) == ""
    assert sentences.shared_sentence(small) == (
        "Every one of this grid's 2 finished runs is also a run of `big` (same configuration and seed): its numbers "
        "repeat those runs', not independent evidence."
    )


BUNDLES = """
name = "bundles"
seeds = 2
baseline = { regime = "short", choice = "default", eos = false }

[grid]
regime = [{ name = "short" }, { name = "long", num_epochs = 200 }]
choice = [{ name = "default" }, { name = "binary", reward = "exact_match" }, { name = "hot", temperature = 2.0 }]
eos = [false, true]
"""


def test_references_keep_the_fields_that_set_chance_bundles_included():
    """A configuration's reference has its own reward (set by a bundle) and EOS, the baseline's everything else."""
    grid = parse_grid(BUNDLES)
    scales = varying_labels(grid.configurations(), CHANCE_FIELDS)  # as load_experiment passes them
    configs = experiment._configurations(grid, scales, [reward_bounds(c.config) for c in grid.configurations()])
    ref = configs["reference"].to_dict()
    assert ref["long / hot / eos=false"] == "short / default / eos=false"  # temperature: not a scale
    assert ref["long / binary / eos=false"] == "short / binary / eos=false"  # its own reward
    assert ref["long / hot / eos=true"] == "short / default / eos=true"  # its own EOS (a different chance)
    assert ref["short / binary / eos=true"] == "short / binary / eos=true"  # its own reference
    assert configs.at["long / binary / eos=true", "scale"] == "exact_match / eos=true"
    assert configs.at["long / hot / eos=false", "scale"] == "inclusion_ordering / eos=false"
    # chance with EOS (6 tokens, a response may end early) is below chance without it
    with_eos = configs.at["short / default / eos=true", "chance_reward"]
    assert with_eos < configs.at["short / default / eos=false", "chance_reward"]
    assert with_eos == pytest.approx(chance_mean_reward(parse_grid(BUNDLES).select({"eos": True}).config))
    assert math.isnan(configs.at["short / default / eos=true", "chance_eval_reward"])  # no held-out prompts


def test_a_top_with_one_configuration_says_so():
    top = Top("exact_match", Interval(0.1, 0.0, 0.2, 6), ["only"], None, None)
    assert (
        sentences._top(top, short=True, several=True)
        == "For exact_match: only (0.10 [0.00, 0.20]) is the only configuration."
    )
    assert isinstance(Floor("", [], [], [], 0, 0, 0, []).nothing_learns, bool)


def _runs(spec: dict[str, dict]) -> tuple[list[str], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Hand-made tables of `Experiment`'s columns: per configuration, its final rewards and reward curves by seed
    (`{"seeds": [0, 1], "final": [...], "curve": [[epoch 0, epoch 1], ...], "diverged": {seed: epoch}}`)."""
    final, curves, diverged = [], [], []
    for label, runs in spec.items():
        for seed, reward, curve in zip(runs.get("seeds", [0, 1]), runs.get("final", []), runs.get("curve", [])):
            final.append({"run_id": f"{label}-{seed}", "configuration": label, "seed": seed, "final_reward": reward})
            curves += [
                {"configuration": label, "seed": seed, "epoch": e, "step": e, "mean_reward": r}
                for e, r in reversed(list(enumerate(curve)))  # curves are stored in no particular order
            ]
        for seed, epoch in runs.get("diverged", {}).items():
            diverged.append(
                {"configuration": label, "seed": seed, "run_id": f"{label}-{seed}", "diverged_epoch": epoch}
            )
    columns = ["configuration", "seed", "run_id", "diverged_epoch"]
    return list(spec), pd.DataFrame(final), pd.DataFrame(curves), pd.DataFrame(diverged, columns=columns)


def test_identical_configurations_repeat_every_number_bit_for_bit_on_every_seed():
    same = {"final": [3.5, 4.25], "curve": [[1.0, 3.5], [2.0, 4.25]]}
    ulp = float(np.nextafter(4.25, 5.0))  # the next float after 4.25: equal to 15 digits, not bit for bit
    labels, final, curves, diverged = _runs(
        {
            "centered_rewards": same,
            "rloo": same,  # every number equal: identical
            "rewards": {"final": [3.5, 4.25], "curve": [[1.0, 3.5], [2.0, ulp]]},  # one curve value one ulp off
            "max_rewards": {**same, "seeds": [0, 2]},  # the same numbers, on another seed
            "one_seed": {"final": [3.5], "curve": [[1.0, 3.5]]},  # seed 1 missing
            "diverging": {**same, "diverged": {2: 7}},  # also diverged, on seed 2
            "again": same,  # a third copy: mapped to the first, not to rloo
            "signed": {"final": [0.0, 4.25], "curve": [[1.0, -0.0], [2.0, 4.25]]},
            "unsigned": {"final": [0.0, 4.25], "curve": [[1.0, 0.0], [2.0, 4.25]]},  # 0.0 == -0.0, but not its bits
            "nothing": {},  # no finished run: repeats nothing, though it "equals" the next
            "nothing either": {},
            "nan": {"final": [math.nan, 1.0], "curve": [[0.0, math.nan], [0.0, 1.0]]},
            "nan twin": {"final": [math.nan, 1.0], "curve": [[0.0, math.nan], [0.0, 1.0]]},  # a NaN equals itself
        }
    )
    twins = experiment.identical_configurations(labels, final, curves, diverged)
    assert twins == {"rloo": "centered_rewards", "again": "centered_rewards", "nan twin": "nan"}
    # the first in grid order is the one the others repeat
    assert experiment.identical_configurations(["rloo", "centered_rewards"], final, curves, diverged) == {
        "centered_rewards": "rloo"
    }
    # a score differs, the curves do not
    final.loc[(final["configuration"] == "rloo") & (final["seed"] == 1), "final_reward"] = ulp
    assert experiment.identical_configurations(labels, final, curves, diverged) == {
        "again": "centered_rewards",
        "nan twin": "nan",
    }


def test_the_top_says_identical_where_configurations_repeat_each_other_not_tied():
    steps = np.arange(8) / 100
    ones = np.ones(8)
    # a2 repeats a, c2 repeats c (`identical`); a separates from b on every seed, not from c
    table = {"a": 0.2 + steps, "a2": 0.2 + steps, "b": 0.1 * ones, "c": 0.2 + steps[::-1], "c2": 0.2 + steps[::-1]}
    identical = {"a2": "a", "c2": "c"}
    exp = _experiment(table, identical=identical)
    part = _part({"a": 0.235, "a2": 0.235, "b": 0.1, "c": 0.235, "c2": 0.235})
    top = findings._top(exp, "", part)
    assert top.tied == ["a", "c"] and top.identical == {"a": ["a2"], "c": ["c2"]}
    assert top.runner_up == "c" and not top.single  # not the leader's own twin
    text = sentences._top(top, short=False, several=False)
    assert text == (
        "No single best configuration: 2 configurations are tied at the top (not separated from the leader, a "
        "(0.23 [0.13, 0.33]; a2 is identical to it), by a paired CI above 0 and a Holm-corrected Wilcoxon test): "
        "c (c2 is identical to it)."
    )
    # without c, a separates from every configuration but its own twin: a single best, ahead of b
    exp = _experiment({k: table[k] for k in ("a", "a2", "b")}, identical={"a2": "a"})
    top = findings._top(exp, "", _part({"a": 0.235, "a2": 0.235, "b": 0.1}))
    assert top.single and top.tied == ["a"] and top.runner_up == "b" and top.lead.point > 0
    assert sentences._top(top, short=False, several=False).startswith(
        "Highest mean final score: a (0.23 [0.13, 0.33]; a2 is identical to it), ahead of the runner-up, b, by +"
    )
    # a scale of twins alone
    top = findings._top(
        _experiment({"a": table["a"], "a2": table["a2"]}, identical={"a2": "a"}), "", _part({"a": 0.2, "a2": 0.2})
    )
    assert (top.tied, top.runner_up) == (["a"], None)
    assert sentences._top(top, short=False, several=False) == (
        "A (0.20 [0.10, 0.30]) and a2, identical to it, are the only configurations."
    )


def test_identical_configurations_are_named_in_the_findings_and_their_comparisons():
    identical = {"rloo": "centered_rewards", "again": "centered_rewards", "k1": "rewards"}
    exp = SimpleNamespace(identical=identical, baseline="rewards", reference_axes=[])
    assert findings.same_results(exp, "again", "rloo") and findings.same_results(exp, "k1", "rewards")
    assert not findings.same_results(exp, "rloo", "rewards")
    found = Findings(experiment=exp, summary=None)
    assert sentences.identical_sentence(found) == (
        "Identical results (every final score and per-epoch curve equal on every seed, bit for bit): rloo and again "
        "are identical to centered_rewards; k1 is identical to rewards."
    )
    assert sentences.identical_sentence(Findings(experiment=SimpleNamespace(identical={}), summary=None)) == ""
    zero, improve = Interval(0.0, 0.0, 0.0, 6), Interval(0.5, 0.5, 0.5, 6)
    twin = findings.Comparison("k1", "rewards", zero, 1.0, 1.0, "no difference", None, improve, identical=True)
    other = findings.Comparison("x", "rewards", Interval(0.01, 0.0, 0.02, 6), 0.5, 1.0, "no difference", None, improve)
    found = Findings(experiment=exp, summary=None, comparisons=[twin, other])
    assert "no difference (paired CI within ±0.05) for 2 (k1 (identical to the baseline) and x +0.010 [" in (
        sentences.comparisons_sentence(found)
    )
    assert report._compared(exp, twin) == "k1 (+0.000 (all 6 equal), p = 1 Holm; identical to the baseline)"
