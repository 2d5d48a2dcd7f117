"""The report stage on tiny real sweeps: numbers, generated text, figures, determinism."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from sortrl import experiment, figures, report, stats
from sortrl.store import load_runs, runs_dir
from sortrl.sweep import parse_grid, run_sweep

TINY = """
name = "tiny"
seeds = 6
highlight_seed = 5
baseline = { deltas_mode = "rewards" }

[base]
num_epochs = 5
num_steps_per_epoch = 2

[grid]
deltas_mode = ["rewards", "centered_rewards", "normalized_rewards"]
"""

LENGTHS = """
name = "lengths"
seeds = 3
baseline = { deltas_mode = "rewards", prompt_length = 3 }

[base]
task = "random"
num_prompts = 4
num_eval_prompts = 4
num_epochs = 5
num_steps_per_epoch = 2

[grid]
prompt_length = [3, 4]
deltas_mode = ["rewards", "centered_rewards"]
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results folder with two tiny experiments (a seconds-long sweep each)."""
    root = tmp_path_factory.mktemp("results")
    for text in (TINY, LENGTHS):
        run_sweep(parse_grid(text), root, n_jobs=1)
    return root


@pytest.fixture(scope="module")
def written(results):
    return report.write_report(results)


def _snapshot(results):
    return {p.relative_to(results): p.read_bytes() for p in sorted(results.rglob("*")) if p.is_file()}


def test_report_writes_every_output_and_is_byte_identical_when_rerun(results, written):
    names = {p.relative_to(results).as_posix() for p in written}
    for exp in ("tiny", "lengths"):
        assert f"{exp}_summary.csv" in names
        for figure in (
            "reward_curves",
            "final_reward",
            "interval_estimates",
            "performance_profile",
            "improvement",
            "sample_efficiency",
        ):
            assert f"figures/{exp}_{figure}.png" in names
    assert "figures/lengths_heatmap.png" in names and "figures/tiny_heatmap.png" not in names  # 2 axes vs 1
    assert "figures/lengths_prompt_length.png" in names and "figures/tiny_prompt_length.png" not in names
    assert not any("response_length" in n for n in names)  # no EOS runs
    assert names >= {"REPORT.md"}
    assert all(p.stat().st_size > 0 for p in written)

    before = _snapshot(results)
    again = report.write_report(results)
    assert again == written
    after = _snapshot(results)
    assert before.keys() == after.keys()
    changed = [str(p) for p in before if before[p] != after[p]]
    assert changed == []


def test_pngs_carry_no_software_or_time_metadata(results, written):
    png = (results / "figures" / "tiny_reward_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert b"Software" not in png and b"matplotlib" not in png.lower() and b"tIME" not in png


def test_summary_matches_the_stats_functions(results, written):
    summary = pd.read_csv(results / "tiny_summary.csv")
    assert summary["configuration"].tolist() == ["rewards", "centered_rewards", "normalized_rewards"]
    assert summary["n"].tolist() == [6, 6, 6] and summary["n_diverged"].tolist() == [0, 0, 0]
    assert summary["baseline"].tolist() == [True, False, False]

    runs = load_runs(results, ["tiny"])
    final = stats.final_scores(runs)  # indexed by run_id
    seeds_of = runs.groupby("run_id")["deltas_mode"].first()
    x = final[seeds_of == "centered_rewards"].to_numpy()
    base = final[seeds_of == "rewards"].to_numpy()
    row = summary.set_index("configuration").loc["centered_rewards"]
    assert row["mean"] == pytest.approx(x.mean(), abs=1e-5)
    assert row["iqm"] == pytest.approx(stats.iqm(x), abs=1e-5)
    assert row["p_improve"] == pytest.approx(stats.probability_of_improvement(x, base), abs=1e-5)
    assert row["p_improve_ci_low"] <= row["p_improve"] <= row["p_improve_ci_high"]
    assert row["mean_ci_low"] <= row["mean"] <= row["mean_ci_high"]
    assert math.isnan(summary.set_index("configuration").loc["rewards", "p_improve"])  # the baseline itself
    assert summary["solve_rate"].between(0, 1).all()


def test_final_reward_uses_the_last_tenth_of_epochs(results):
    exp = experiment.load_experiment(results, "tiny")
    run = exp.runs[exp.runs["run_id"] == exp.runs["run_id"].iloc[0]]
    # 5 epochs -> ceil(0.5) = the last one
    last = run.sort_values("epoch")["mean_reward"].iloc[-1]
    assert exp.final.set_index("run_id").loc[run["run_id"].iloc[0], "final_reward"] == pytest.approx(last)


def test_report_md_is_generated_from_the_numbers(results, written):
    text = (results / "REPORT.md").read_text()
    manifest = experiment.load_experiment(results, "tiny").manifest
    assert "## Experiment `tiny`" in text and "## Experiment `lengths`" in text
    for link in re.findall(r"\]\((figures/[^)]+)\)", text):
        assert (results / link).is_file(), link
    assert manifest["torch"] in text
    assert manifest["finished"] not in text and manifest["started"] not in text  # no wall-clock times
    assert "last 10%" in text and "No run diverged." in text
    summary = pd.read_csv(results / "tiny_summary.csv").set_index("configuration")
    row = summary.loc["centered_rewards"]
    assert f"{row['mean']:.3f} [{row['mean_ci_low']:.3f}, {row['mean_ci_high']:.3f}]" in text
    verdict = experiment.verdict(row["p_improve_ci_low"], row["p_improve_ci_high"])
    heading = {"better": "Better than", "worse": "Worse than", "indistinguishable": "Indistinguishable from"}[verdict]
    line = next(s for s in text.splitlines() if s.startswith(f"- {heading}"))
    assert "centered_rewards (" in line


def test_scale_axes_compare_within_the_same_prompt_length(results, written):
    exp = experiment.load_experiment(results, "lengths")
    assert exp.scale_axes == ["prompt_length"]
    assert exp.baseline == "prompt_length=3 / rewards"
    assert exp.configs["reference"].to_dict() == {
        "prompt_length=3 / rewards": "prompt_length=3 / rewards",
        "prompt_length=3 / centered_rewards": "prompt_length=3 / rewards",
        "prompt_length=4 / rewards": "prompt_length=4 / rewards",
        "prompt_length=4 / centered_rewards": "prompt_length=4 / rewards",
    }
    summary = pd.read_csv(results / "lengths_summary.csv").set_index("configuration")
    assert summary["p_improve"].isna().tolist() == [True, False, True, False]
    assert {"eval_mean_reward", "eval_greedy_accuracy"} <= set(summary.columns)


def test_runs_are_matched_by_values_so_old_run_ids_still_count(results):
    runs = load_runs(results, ["tiny"])
    renamed = runs.assign(run_id="old-" + runs["run_id"])  # as if RunConfig had gained a field since
    exp = experiment.load_experiment(results, "tiny", renamed)
    assert exp.final.groupby("configuration").size().to_dict() == {
        "rewards": 6,
        "centered_rewards": 6,
        "normalized_rewards": 6,
    }
    # a run of a seed or value outside the grid is ignored, with a note
    stray = runs[runs["seed"] == 0].assign(run_id="stray", seed=99)
    exp = experiment.load_experiment(results, "tiny", pd.concat([runs, stray]))
    assert "stray" not in set(exp.runs["run_id"])
    assert any("ignored" in note for note in exp.notes)


def test_diverged_runs_are_listed_and_left_out(results):
    runs = load_runs(results, ["tiny"])
    victim = runs[(runs["deltas_mode"] == "centered_rewards") & (runs["seed"] == 3)]["run_id"].iloc[0]
    mine = runs["run_id"] == victim
    runs.loc[mine, "status"] = "diverged"
    runs.loc[mine, "diverged_epoch"] = 2
    runs = runs[~mine | (runs["epoch"] <= 2)]
    exp = experiment.load_experiment(results, "tiny", runs)
    summary = experiment.summarize(exp).set_index("configuration")
    assert summary.loc["centered_rewards", "n"] == 5 and summary.loc["centered_rewards", "n_diverged"] == 1
    assert victim not in set(exp.runs["run_id"]) and victim not in set(exp.final["run_id"])
    text = report.render_report([(exp, summary.reset_index(), [])])
    assert "- centered_rewards: seed 3 (epoch 2)" in text


def test_lecture_section_states_seed_5_and_all_seeds(results, monkeypatch):
    exp = experiment.load_experiment(results, "tiny")
    assert not experiment.is_lecture_experiment(exp)  # 5 epochs are not the lecture's 100
    monkeypatch.setattr(report, "is_lecture_experiment", lambda e: True)
    text = report.render_report([(exp, experiment.summarize(exp), [])])
    assert "### The lecture's single-seed conclusions, across seeds" in text
    assert "Centering, seed 5 alone: final reward" in text
    assert "Centering, 6 seeds per configuration: mean difference" in text
    assert "Std normalisation, seed 5 alone" in text and "Std normalisation, 6 seeds per configuration" in text
    seed5 = exp.final.set_index(["configuration", "seed"])["final_reward"]
    assert f"{seed5[('rewards', 5)]:.3f} (`rewards`) vs {seed5[('centered_rewards', 5)]:.3f}" in text


def test_labels_palette_and_facets_follow_the_grid(results):
    exp = experiment.load_experiment(results, "lengths")
    assert exp.labels == [
        "prompt_length=3 / rewards",
        "prompt_length=3 / centered_rewards",
        "prompt_length=4 / rewards",
        "prompt_length=4 / centered_rewards",
    ]
    assert set(exp.palette) == {"prompt_length=3", "prompt_length=4"}  # colour = the first axis
    assert exp.colour("prompt_length=3 / rewards") == exp.colour("prompt_length=3 / centered_rewards")
    assert exp.configs["col"].tolist() == ["rewards", "centered_rewards"] * 2
    assert experiment.value_label("kl_penalty", 0.01) == "kl=0.01"
    assert experiment.value_label("eos", True) == "eos=true"


def test_reward_ceiling_is_the_sorted_prompts_reward(results):
    tiny = experiment.load_experiment(results, "tiny")
    assert experiment.reward_ceiling(tiny.runs) == 5.0  # lecture prompts of length 3: 3 inclusion + 2 ordering
    assert figures.reward_label(tiny) == "mean reward (max 5)"
    lengths = experiment.load_experiment(results, "lengths")
    assert experiment.reward_ceiling(lengths.runs) is None  # random prompts of two lengths: no single maximum


def test_cli_report_command(results, written):
    from typer.testing import CliRunner

    from sortrl.cli import app

    outcome = CliRunner().invoke(app, ["report", "--results", str(results)])
    assert outcome.exit_code == 0, outcome.output
    assert (runs_dir(results, "tiny") / "grid.toml").is_file()
    assert np.isfinite(pd.read_csv(results / "tiny_summary.csv")["mean"]).all()
