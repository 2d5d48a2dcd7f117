"""The report stage on tiny real sweeps: numbers, generated text, figures, determinism."""

from __future__ import annotations

import math
import re
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from scipy.stats import wilcoxon

from sortrl.analysis import claims, experiment, findings, stats, verdicts
from sortrl.engine.config import make_config
from sortrl.engine.registry import ConfigError
from sortrl.engine.task import best_mean_reward, chance_mean_reward
from sortrl.render import claim_figures, figures, readme, report, sentences
from sortrl.render.publish import write_report
from sortrl.study import grid
from sortrl.study.grid import parse_grid
from sortrl.study.store import load_runs, read_chunks, read_rows, runs_dir, write_chunk
from sortrl.study.sweep import run_sweep


@pytest.fixture
def copy(results, tmp_path):
    """A copy of the results folder that a test may change."""
    target = tmp_path / "results"
    shutil.copytree(results / "runs", target / "runs")
    return target


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
            "effects",
            "sample_efficiency",
        ):
            assert f"figures/{exp}_{figure}.png" in names
    assert "figures/lengths_heatmap.png" in names and "figures/tiny_heatmap.png" not in names  # 2 axes vs 1
    assert "figures/lengths_prompt_length.png" in names and "figures/tiny_prompt_length.png" not in names
    assert not any("response_length" in n for n in names)  # no EOS runs
    assert names >= {"REPORT.md"}
    assert all(p.stat().st_size > 0 for p in written)

    before = _snapshot(results)
    again = write_report(results)
    assert again == written
    after = _snapshot(results)
    assert before.keys() == after.keys()
    changed = [str(p) for p in before if before[p] != after[p]]
    assert changed == []


def test_a_report_that_fails_writes_nothing(results, tmp_path):
    """Every output is made before any is written: a claim id declared by two grids refuses the whole report."""
    copy = tmp_path / "r"
    shutil.copytree(results / "runs" / "tiny", copy / "runs" / "tiny")
    shutil.copytree(results / "runs" / "tiny", copy / "runs" / "tiny2")  # a second grid declaring C1 and C2
    with pytest.raises(
        ConfigError, match=r"runs/tiny2/grid.toml: \[\[claim\]\] C1: id: also declared by .*runs/tiny/grid"
    ):
        write_report(copy)
    assert sorted(p.name for p in copy.iterdir()) == ["runs"]


def test_a_report_refuses_two_outputs_with_one_file_name_and_writes_nothing(results, tmp_path):
    """A stored experiment `claim` with a claim `final_reward`: its figure and the claim's share one file name."""
    copy = tmp_path / "r"
    shutil.copytree(results / "runs" / "tiny", copy / "runs" / "claim")
    stored = copy / "runs" / "claim" / "grid.toml"
    stored.write_text(stored.read_text().replace('id = "C1"', 'id = "final_reward"'))
    with pytest.raises(ConfigError, match="figures/claim_final_reward.png: would be written for both"):
        write_report(copy)
    assert sorted(p.name for p in copy.iterdir()) == ["runs"]


def test_pngs_carry_no_software_or_time_metadata(results, written):
    png = (results / "figures" / "tiny_reward_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert b"Software" not in png and b"matplotlib" not in png.lower() and b"tIME" not in png


def test_summary_matches_the_stats_functions(results, written):
    summary = pd.read_csv(results / "tiny_summary.csv")
    assert summary["configuration"].tolist() == ["rewards", "centered_rewards", "normalized_rewards"]
    assert summary["n"].tolist() == [6, 6, 6] and summary["n_diverged"].tolist() == [0, 0, 0]
    assert summary["baseline"].tolist() == [True, False, False]
    assert summary["max_reward"].tolist() == [5.0, 5.0, 5.0]

    runs = load_runs(results, ["tiny"], fields=["deltas_mode"])
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


def test_summary_compares_paired_by_seed_on_the_chance_normalised_score(results, written):
    """The paired effect, Wilcoxon p, Holm within the experiment and the verdict, recomputed from the stored runs."""
    summary = pd.read_csv(results / "tiny_summary.csv", keep_default_na=False, na_values=[""]).set_index(
        "configuration"
    )
    runs = load_runs(results, ["tiny"], fields=["deltas_mode"])
    final = pd.DataFrame({"reward": stats.final_scores(runs)})
    final = final.join(runs.groupby("run_id")[["deltas_mode", "seed"]].first())
    chance = chance_mean_reward(make_config())  # the lecture's prompts: 2.664 reward points by enumeration
    assert summary["chance_reward"].tolist() == pytest.approx([chance] * 3, abs=1e-6)
    final["score"] = (final["reward"] - chance) / (5.0 - chance)
    wide = final.pivot(index="seed", columns="deltas_mode", values="score")  # [seed configuration]
    p_values = []
    for name in ("centered_rewards", "normalized_rewards"):
        d = (wide[name] - wide["rewards"]).to_numpy()
        row = summary.loc[name]
        assert row["n_paired"] == 6
        assert row["effect"] == pytest.approx(d.mean(), abs=1e-5)  # mean of per-seed differences
        assert row["effect_ci_low"] <= row["effect"] <= row["effect_ci_high"]
        p = wilcoxon(d, zero_method="zsplit").pvalue
        assert row["p_value"] == pytest.approx(p, rel=1e-4)
        p_values.append(p)
        assert row["score"] == pytest.approx(wide[name].mean(), abs=1e-5)
    # Holm over the two comparisons by hand: the smaller p doubled, the larger at least that, capped at 1
    small, large = sorted(p_values)
    holm = {small: min(1.0, 2 * small), large: min(1.0, max(2 * small, large))}
    for name, p in zip(("centered_rewards", "normalized_rewards"), p_values):
        row = summary.loc[name]
        assert row["p_holm"] == pytest.approx(holm[p], rel=1e-4)
        effect = verdicts.Interval(row["effect"], row["effect_ci_low"], row["effect_ci_high"], 6)
        assert row["verdict"] == experiment.comparison_verdict(effect, row["p_holm"])
    assert math.isnan(summary.loc["rewards", "p_holm"]) and math.isnan(summary.loc["rewards", "effect"])
    # solve rate with its Wilson interval
    for _, row in summary.iterrows():
        wilson = verdicts.wilson(int(row["n_solved"]), int(row["n"]))
        assert (row["solve_rate"], row["solve_rate_ci_low"], row["solve_rate_ci_high"]) == pytest.approx(
            (wilson.point, wilson.low, wilson.high), abs=1e-5
        )


def test_final_reward_uses_the_last_tenth_of_epochs(results):
    exp = experiment.load_experiment(results, "tiny")
    first = exp.final.iloc[0]
    run = exp.curves[(exp.curves["configuration"] == first["configuration"]) & (exp.curves["seed"] == first["seed"])]
    assert run["epoch"].tolist() == [0, 1, 2, 3, 4]
    # 5 epochs -> ceil(0.5) = the last one
    assert first["final_reward"] == run["mean_reward"].iloc[-1]
    stored = load_runs(results, ["tiny"])
    assert stored.loc[stored["run_id"] == first["run_id"], "mean_reward"].iloc[-1] == first["final_reward"]


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
    head = {
        "better": "- Better than",
        "worse": "- Worse than",
        "no difference": "- No difference from",
        "inconclusive": "- Inconclusive",
    }[row["verdict"]]
    section = text[text.index("## Experiment `tiny`") :]
    line = next(s for s in section.splitlines() if s.startswith(head))
    assert f"centered_rewards ({row['effect']:+.3f} [" in line
    assert "P(improve) CI above 0.5" not in text and "by chance alone" not in text  # no uncorrected verdicts
    assert "Holm's correction over the 2 comparisons of this experiment" in text


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
    assert summary["scale"].tolist() == ["prompt_length=3"] * 2 + ["prompt_length=4"] * 2
    assert exp.reference_axes == ["prompt_length"]


def test_runs_are_joined_by_label_and_seed_and_stale_runs_ignored(copy, report_grids):
    """A stored run counts only for the configuration and seed stored with it, with the config grid.toml asks for."""
    grid_file = runs_dir(copy, "tiny") / "grid.toml"
    text = grid_file.read_text()
    exp = experiment.load_experiment(copy, "tiny")
    assert exp.notes == [] and exp.final.groupby("configuration").size().to_dict() == dict.fromkeys(exp.labels, 6)
    # seeds the grid no longer lists, and runs trained with other settings, are ignored with a note
    run_sweep(parse_grid(text.replace("seeds = 6", "seeds = [5, 6, 7]")), copy, n_jobs=1)  # trains 6 and 7
    run_sweep(parse_grid(text.replace("num_epochs = 5", "num_epochs = 4")), copy, n_jobs=1)
    grid_file.write_text(text)
    exp = experiment.load_experiment(copy, "tiny")
    assert exp.final.groupby("configuration").size().to_dict() == dict.fromkeys(exp.labels, 6)
    assert exp.notes == [
        f"{6 + 18} stored run(s) match no configuration and seed of grid.toml (or repeat one) and were ignored."
    ]
    assert set(exp.curves.groupby(["configuration", "seed"])["epoch"].max()) == {4}  # the 5-epoch runs
    # a grid whose runs are not all stored says so (seeds 6 and 7 now count; 8 and 9 are missing)
    grid_file.write_text(text.replace("seeds = 6", "seeds = 10"))
    assert experiment.load_experiment(copy, "tiny").notes == [
        "18 stored run(s) match no configuration and seed of grid.toml (or repeat one) and were ignored.",
        "6 run(s) of the grid are not stored (the sweep is incomplete).",
    ]


def _mark_diverged(folder, configuration, seed, epoch):
    """Rewrite the chunk holding (configuration, seed) as if that run had diverged at `epoch`."""
    for chunk in read_chunks(folder):
        victim = next((r for r in chunk.runs if (r["configuration"], r["seed"]) == (configuration, seed)), None)
        if victim is None:
            continue
        rows = read_rows(chunk)
        mine = rows["run_id"] == victim["run_id"]
        rows = rows[~mine | (rows["epoch"] <= epoch)]
        diverged = rows["run_id"] == victim["run_id"]
        table = rows.assign(status=np.where(diverged, "diverged", "ok"), diverged_epoch=np.where(diverged, epoch, -1))
        if write_chunk(folder, table, chunk.runs) != chunk.path:  # the name carries the checksum of the bytes
            chunk.path.unlink()
        return victim["run_id"]
    raise AssertionError("no such run")


def test_diverged_runs_are_listed_and_left_out(copy):
    victim = _mark_diverged(runs_dir(copy, "tiny"), "centered_rewards", 3, 2)
    exp = experiment.load_experiment(copy, "tiny")
    summary = experiment.summarize(exp).set_index("configuration")
    assert summary.loc["centered_rewards", "n"] == 5 and summary.loc["centered_rewards", "n_diverged"] == 1
    assert victim not in set(exp.final["run_id"]) and 3 not in set(
        exp.curves.loc[exp.curves.configuration == "centered_rewards", "seed"]
    )
    assert exp.diverged.to_dict("records") == [
        {"configuration": "centered_rewards", "seed": 3, "run_id": victim, "diverged_epoch": 2}
    ]
    text = report.render_report([findings.findings(exp, summary.reset_index())])
    assert "- centered_rewards: seed 3 (epoch 2)" in text
    # a curve figure's title counts the seeds each configuration finished: 5 of centered_rewards', 6 of the others'
    assert "5–6 seeds per configuration" in figures.plot_reward_curves(exp)._suptitle.get_text()


def test_a_fully_diverged_baseline_is_named_as_the_reason(tmp_path):
    """Issue 13, defect 9: when every baseline run diverged, the text blames the baseline, not the others."""
    text = 'name = "d"\nseeds = 2\nbaseline = { learning_rate = 1e10 }\n[base]\nnum_epochs = 2\n'
    text += "num_steps_per_epoch = 2\n[grid]\nlearning_rate = [1e10, 1e-2]\n"
    run_sweep(parse_grid(text), tmp_path, n_jobs=1)  # the lecture's loss at lr 1e10 diverges in the first epochs
    exp = experiment.load_experiment(tmp_path, "d")
    summary = experiment.summarize(exp)
    assert summary.set_index("configuration")["n"].to_dict() == {"lr=1e+10": 0, "lr=0.01": 2}
    found = findings.findings(exp, summary)
    markdown = report.render_report([found])
    assert (
        "- No test for lr=0.01: the baseline lr=1e+10 has 0 runs finished (2 runs diverged), "
        "fewer than the two a paired test needs." in markdown
    )
    assert "(fewer than two seeds finished by both): lr=0.01" not in markdown
    assert "Nothing is compared with the baseline (lr=1e+10): it has 0 finished runs" in " ".join(
        sentences.summary_sentences(found)
    )


def test_an_experiment_without_readable_runs_still_reports(copy):
    """A folder with a grid but no readable chunk (a sweep killed before its first chunk) reports as empty."""
    for path in runs_dir(copy, "lengths").glob("chunk-*.parquet"):
        path.write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="do not match the checksum"):
        written = write_report(copy)
    assert (copy / "REPORT.md").is_file() and "## Experiment `lengths`" in (copy / "REPORT.md").read_text()
    summary = pd.read_csv(copy / "lengths_summary.csv")
    assert summary["n"].tolist() == [0, 0, 0, 0]
    assert not any("lengths_reward_curves" in p.name for p in written)
    assert (copy / "figures" / "tiny_reward_curves.png").is_file()  # the other experiment is unaffected


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
    assert grid.value_label("kl_penalty", 0.01) == "kl=0.01"
    assert grid.value_label("eos", True) == "eos=true"


def test_reward_ceiling_is_the_sorted_prompts_reward(results):
    tiny = experiment.load_experiment(results, "tiny")
    assert experiment.reward_ceiling(tiny) == 5.0  # lecture prompts of length 3: 3 inclusion + 2 ordering
    assert not tiny.scales_differ
    assert figures.reward_label(tiny) == "mean reward (max 5)"
    lengths = experiment.load_experiment(results, "lengths")
    assert experiment.reward_ceiling(lengths) is None  # two prompt lengths: no single maximum
    assert lengths.configs["max_reward"].tolist() == [5.0, 5.0, 7.0, 7.0]  # 2L-1
    assert lengths.scales_differ and lengths.panels_share_scale
    assert figures.reward_label(lengths, "r", configuration="prompt_length=4 / rewards") == "r (max 7)"  # points


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, 5.0),  # the lecture's prompts, inclusion_ordering
        ({"reward": "distance"}, 3.0),
        ({"task": "random", "prompt_length": 6, "vocab_size": 10, "allow_repeats": True}, 11.0),  # repeats: still 2L-1
        ({"task": "random", "prompt_length": 4, "reward": "exact_match", "num_eval_prompts": 4}, 1.0),
        ({"task": "random", "prompt_length": (3, 5), "num_prompts": 4, "num_eval_prompts": 4}, math.nan),
        ({"task": "random", "prompt_length": (3, 5), "num_prompts": 4, "num_eval_prompts": 0}, 7.0),  # 2 x 5 + 2 x 9
        ({"length_penalty": 0.1}, 5.0),  # mean_reward is the task's reward, before the penalty
    ],
)
def test_best_mean_reward_by_hand(fields, expected):
    value = best_mean_reward(make_config(**fields))
    assert value == pytest.approx(expected, nan_ok=True)


def test_figures_across_prompt_lengths_show_reward_chance_normalised(results):
    exp = experiment.load_experiment(results, "lengths")
    summary = experiment.summarize(exp)
    label = figures.reward_label(exp)
    assert label == "mean reward, chance-normalised\n(reward − chance) / (max − chance)\n(max 5, 7 by prompt_length)"
    maxima, chance = exp.configs["max_reward"], exp.configs["chance_reward"]
    held_out = exp.configs["chance_eval_reward"]
    for label in exp.labels:  # the uniform random policy's reward, from the task module, on each prompt set
        config = exp.config(label)
        assert chance[label] == pytest.approx(chance_mean_reward(config))
        assert held_out[label] == pytest.approx(chance_mean_reward(config, "eval"))

    fig = figures.plot_final_reward(exp, summary)
    ax = fig.axes[0]
    assert "chance-normalised" in ax.get_xlabel()
    dots = [c.get_offsets()[:, 0] for c in ax.collections if isinstance(c, PathCollection)]  # one per configuration
    assert len(dots) == len(exp.labels)
    for label, x in zip(exp.labels, dots):
        expected = (experiment.scores(exp, label) - chance[label]) / (maxima[label] - chance[label])
        assert np.allclose(np.sort(x), np.sort(expected))
        assert np.allclose(np.sort(x), np.sort(experiment.scores(exp, label, "final_score")))  # the final score

    fig = figures.plot_prompt_length(exp)
    reward_panel = fig.axes[1]
    assert "chance-normalised" in reward_panel.get_ylabel()
    final = exp.final.assign(length=exp.final["configuration"].map(exp.configs["prompt_length"]))
    first_line = exp.configs["deltas_mode"].iloc[0]  # lines = deltas modes, x = prompt length
    part = final[final["configuration"].map(exp.configs["deltas_mode"]) == first_line]
    floor = part["configuration"].map(held_out)  # the held-out prompts' chance, not the training prompts'
    part = part.assign(score=(part["final_eval/mean_reward"] - floor) / (part["configuration"].map(maxima) - floor))
    expected = part.groupby("length")["score"].mean()
    assert np.allclose(reward_panel.lines[0].get_ydata(), expected.to_numpy())

    heat = figures.plot_heatmap(exp, summary)
    shown = sorted(float(t.get_text()) for t in heat.axes[0].texts)
    by_hand = (summary["iqm"] - summary["chance_reward"]) / (summary["max_reward"] - summary["chance_reward"])
    assert shown == pytest.approx(sorted(np.round(by_hand, 2)), abs=1e-9)


HAND_README = """# a project

Hand-written text stays byte for byte: ünïcödé, trailing spaces   \n\n<!-- BEGIN GENERATED: headline -->
stale headline
<!-- END GENERATED: headline -->

Between the blocks.
<!-- BEGIN GENERATED: speed -->
benchmark numbers, not ours to touch
<!-- END GENERATED: speed -->
<!-- BEGIN GENERATED: findings -->
<!-- END GENERATED: findings -->
the end, no final newline"""


def _outside_blocks(text: str, names=readme.BLOCKS) -> list[str]:
    """The text outside the given generated blocks (markers included), in order."""
    pattern = "|".join(f"(?<={re.escape(b)}).*?(?={re.escape(e)})" for b, e in map(readme.markers, names))
    return re.split(pattern, text, flags=re.S)


def test_readme_blocks_are_generated_and_hand_text_is_kept(results, sections, tmp_path):
    path = tmp_path / "docs" / "README.md"
    path.parent.mkdir()
    path.write_bytes(HAND_README.encode())
    readme.write_readme(path, sections, results)
    text = path.read_bytes().decode()
    assert _outside_blocks(text) == _outside_blocks(HAND_README)  # hand text and the speed block, byte for byte
    assert "stale headline" not in text and "benchmark numbers, not ours to touch" in text

    # headline: the first experiment's reward curves (no `ablations` here), linked relative to the README
    link = re.search(r"!\[[^]]*\]\(([^)]+)\)", text).group(1)
    assert link.endswith("figures/lengths_reward_curves.png") and (path.parent / link).is_file()
    assert "configurations of the `lengths` grid" in text
    assert "**`tiny`**" not in text  # the per-experiment paragraphs are REPORT.md's (At a glance)

    # deterministic and idempotent: the same runs give the same bytes
    path.write_bytes(HAND_README.encode())
    readme.write_readme(path, sections, results)
    assert path.read_bytes().decode() == text
    readme.write_readme(path, sections, results)
    assert path.read_bytes().decode() == text


def test_report_opens_with_a_paragraph_per_experiment(results, sections):
    """REPORT.md's "At a glance": one paragraph per experiment with the summary's numbers (once the README's)."""
    text = report.render_report(sections)
    assert "## At a glance" in text and text.index("## At a glance") < text.index("## Experiment `")
    tiny = next(f for f in sections if f.experiment.name == "tiny")
    paragraph = next(line for line in text.splitlines() if line.startswith("**`tiny`** (3 configurations × 6 seeds)."))
    top = tiny.tops[0]  # a tie or a single best, whichever the paired, corrected tests say
    if top.single:
        assert f"Highest mean final score: {top.leader} (" in paragraph
    else:
        assert f"No single best configuration: {len(top.tied)} configurations are tied at the top" in paragraph
    assert "Against the baseline (rewards), paired by seed on the final score with Holm's correction" in paragraph
    counts = {v: len(tiny.verdicts(v)) for v in experiment.VERDICTS}
    assert f"better for {counts['better']}" in paragraph and f"inconclusive for {counts['inconclusive']}." in paragraph
    assert "Highest IQM" not in paragraph
    glance = text[text.index("## At a glance") : text.index("## Experiment `")]
    assert "as the length goes 3, 4: the final held-out greedy accuracy is" in glance  # lengths: held-out vs length
    assert "the chance-normalised held-out score, (reward − chance) / (max − chance), is" in glance


def test_readme_headline_prefers_the_ablations_experiment(results, sections, tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "HEADLINE_EXPERIMENT", "tiny")
    block = readme.headline(sections, results, tmp_path)
    assert "tiny_reward_curves.png" in block and "seed 5 (the lecture's seed) dashed" in block
    assert block.count("\n\n") == 1  # the figure, then one caption paragraph


@pytest.mark.parametrize("missing", ["<!-- BEGIN GENERATED: headline -->", "<!-- END GENERATED: headline -->"])
def test_readme_without_a_marker_is_an_error_naming_file_and_marker(results, sections, tmp_path, missing):
    path = tmp_path / "README.md"
    path.write_text(HAND_README.replace(missing, ""))
    with pytest.raises(ConfigError) as error:
        readme.write_readme(path, sections, results)
    message = str(error.value)
    assert str(path) in message and missing in message and "\n" not in message
    assert path.read_text() == HAND_README.replace(missing, "")  # untouched


def test_cli_report_command(copy, tmp_path):
    """The command's plumbing (on an experiment with no runs yet: quick): a bad README fails first, with exit 2."""
    from typer.testing import CliRunner

    from sortrl.cli import app

    shutil.rmtree(runs_dir(copy, "lengths"))
    for chunk in runs_dir(copy, "tiny").glob("chunk-*.parquet"):
        chunk.unlink()
    path = tmp_path / "README.md"
    path.write_text(HAND_README.replace("<!-- END GENERATED: headline -->", ""))
    outcome = CliRunner().invoke(app, ["report", "--results", str(copy), "--readme", str(path)])
    assert outcome.exit_code == 2
    assert "<!-- END GENERATED: headline -->" in outcome.output and str(path) in outcome.output
    assert not (copy / "REPORT.md").exists()  # nothing written before the README was checked

    path.write_text(HAND_README)
    outcome = CliRunner().invoke(app, ["report", "--results", str(copy), "--readme", str(path)])
    assert outcome.exit_code == 0, outcome.output
    assert f"wrote {path}" in " ".join(outcome.output.split())
    assert "**`tiny`**: no finished runs yet." in (copy / "REPORT.md").read_text()  # at a glance
    assert pd.read_csv(copy / "tiny_summary.csv")["n"].tolist() == [0, 0, 0]


def test_held_out_score_by_prompt_length_subtracts_the_held_out_prompts_chance(results, sections):
    """(held-out reward - the uniform policy's on the held-out prompts) / (max - that), every configuration pooled."""
    found = next(f for f in sections if f.experiment.name == "lengths")
    exp = found.experiment
    assert [row.length for row in found.by_prompt_length] == [3, 4] and found.length_reward == "held-out"
    for row in found.by_prompt_length:
        values, floors = [], set()
        for label in exp.labels:
            config = exp.config(label)
            if config.prompt_length != row.length:
                continue
            chance, best = chance_mean_reward(config, "eval"), best_mean_reward(config)
            floors.add(chance / best)
            values += list((experiment.scores(exp, label, "final_eval/mean_reward") - chance) / (best - chance))
        assert row.score.point == pytest.approx(np.mean(values)) and row.runs == len(values)
        assert [row.chance] == pytest.approx(sorted(floors))
    last, first = found.by_prompt_length[-1].score.point, found.by_prompt_length[0].score.point
    assert found.length_change.point == pytest.approx(last - first)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reads(pid: int, *names: str) -> bool:
    """Whether process `pid`'s command line holds all of `names` (from /proc)."""
    try:
        command = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return all(name in command for name in names)


def _imported_torch(pid: int) -> bool:
    """Whether process `pid` has torch's library mapped (it is past its imports: drawing)."""
    try:
        return "libtorch" in (Path("/proc") / str(pid) / "maps").read_text()
    except OSError:
        return False


WORKERS_GONE_SECONDS = 2.0
"""How soon after `sortrl report` is killed its worker processes (and their resource trackers) must be gone.
Measured: 0.5-1.0 s with the machine's load at 5-8 on 2 cores, 1.7 s at load 8-9 (another test run beside); before
the workers watched their parent from their first `import sortrl`, 2.2-2.4 s unloaded and 7-9 s at load 8-9."""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")
@pytest.mark.parametrize(
    "how, moment",
    [(signal.SIGKILL, "starting"), (signal.SIGKILL, "drawing"), (signal.SIGTERM, "starting")],
    ids=["kill-9-while-starting", "kill-9-while-drawing", "sigterm-while-starting"],
)
def test_killing_the_report_stops_its_workers(results, tmp_path, how, moment):
    """Issue 23: `sortrl report`'s main process killed (kill -9, or SIGTERM) while its loky workers start or draw:
    every process it started is gone within `WORKERS_GONE_SECONDS`, polled from /proc. A worker killed while it
    starts never gets as far as importing torch (a property the machine's load does not change): it watches its
    parent from its first `import sortrl`. Before, they drew on for minutes; then, killed while they started, they
    imported torch and pandas to the end first (2-3 s unloaded)."""
    import os
    import subprocess
    import sys
    import time

    copy = tmp_path / "r"
    shutil.copytree(results / "runs", copy / "runs")
    report = subprocess.Popen(
        [sys.executable, "-m", "sortrl", "report", "--results", copy, "--no-cache"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    ready = _imported_torch if moment == "drawing" else _running
    deadline, workers, started = time.monotonic() + 120, [], []
    while time.monotonic() < deadline and report.poll() is None:
        started = _children(report.pid)
        workers = [pid for pid in started if _reads(pid, "popen_loky_posix")]
        if len(workers) >= 2 and all(ready(pid) for pid in workers):
            break
        time.sleep(0.005)
    assert len(workers) >= 2, "the report started no worker processes"
    assert report.poll() is None, "the report ended before it could be killed: the test would prove nothing"
    imported = {pid for pid in workers if _imported_torch(pid)}
    assert moment == "drawing" or not imported, "the workers were up already: the test would prove nothing"
    os.kill(report.pid, how)
    killed = time.monotonic()
    while time.monotonic() < killed + 30 and [pid for pid in started if _running(pid)]:
        imported |= {pid for pid in workers if _imported_torch(pid)}
        time.sleep(0.005)
    gone = time.monotonic() - killed
    report.wait(timeout=30)
    assert not [pid for pid in started if _running(pid)], "its processes outlived the report by 30 s"
    assert moment == "drawing" or not imported, "a worker imported torch after its parent was killed"
    assert gone < WORKERS_GONE_SECONDS, f"its processes outlived the report by {gone:.2f} s"


def test_a_report_before_any_run_of_a_claims_grid_says_no_runs_yet(tmp_path):
    """A sweep stopped before its first chunk leaves grid.toml alone: the report still exits 0, and a claim whose
    score no run has yet (`length_gap`) says "no runs yet" (it was a KeyError traceback)."""
    from typer.testing import CliRunner

    from sortrl.cli import app

    grid = Path(__file__).resolve().parents[1] / "experiments" / "claims" / "length.toml"
    assert 'metric = "length_gap"' in grid.read_text()
    folder = tmp_path / "runs" / "claims-length"
    folder.mkdir(parents=True)
    shutil.copy(grid, folder / "grid.toml")
    outcome = CliRunner().invoke(app, ["report", "--results", str(tmp_path)])
    assert outcome.exit_code == 0, outcome.output
    claims = (tmp_path / "CLAIMS.md").read_text()
    assert "no runs yet: no seed finished every configuration this test compares" in claims
    assert "no number of seeds would make it conclusive" not in claims


def test_generated_text_names_no_repository_folder_and_gets_plurals_right(results, tmp_path):
    """A user's results elsewhere: no "`experiments/`" or "make report" as if it were this repository's, and
    one claim, one test (not "1 claims, 1 tests")."""
    copy = tmp_path / "mine"
    shutil.copytree(results / "runs" / "tiny", copy / "runs" / "tiny")
    stored = copy / "runs" / "tiny" / "grid.toml"
    stored.write_text(stored.read_text().split('[[claim]]\nid = "C2"')[0])  # keep C1 only
    write_report(copy)
    claims, report_text = (copy / "CLAIMS.md").read_text(), (copy / "REPORT.md").read_text()
    assert "1 claim, 1 test:" in claims and "Tested in grid `tiny`" in claims
    assert "`experiments/`" not in claims and "Regenerate with `sortrl report`" in report_text


def test_report_uses_a_grid_file_given_and_warns_about_one_that_differs(results, tmp_path, monkeypatch):
    """A claim added to the grid file after its sweep: the report warns (naming both files) and keeps the stored
    copy; with --grid it reports the claim on the same runs. A grid whose configurations differ is refused."""
    import shutil
    import warnings

    from conftest import TINY
    from test_cli import assert_one_line_error, invoke

    from sortrl.render.publish import StaleGridWarning, write_report

    copy = tmp_path / "results"
    shutil.copytree(results / "runs", copy / "runs")
    extra = '\n[[claim]]\nid = "C3"\nstatement = "normalising beats raw"\nsource = "a test"\n'
    extra += 'new = { deltas_mode = "normalized_rewards" }\nold = { deltas_mode = "rewards" }\npredicts = "higher"\n'
    (tmp_path / "experiments").mkdir()
    mine = tmp_path / "experiments" / "tiny.toml"
    mine.write_text(TINY + extra)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_report(copy)
    stale = [str(w.message) for w in caught if issubclass(w.category, StaleGridWarning)]
    assert len(stale) == 1 and "experiments/tiny.toml differs from the copy its sweep stored" in stale[0]
    assert "C3" not in (copy / "CLAIMS.md").read_text()

    result = invoke("report", "--results", copy, "--grid", mine)
    assert result.exit_code == 0, result.output
    assert "| [C3](#claim-c3) | normalising beats raw |" in (copy / "CLAIMS.md").read_text()
    assert (copy / "runs" / "tiny" / "grid.toml").read_text() == TINY  # the stored copy is the sweep's

    changed = tmp_path / "changed.toml"
    changed.write_text(TINY.replace("num_epochs = 5", "num_epochs = 6"))
    assert_one_line_error(
        invoke("report", "--results", copy, "--grid", changed), "changed.toml", "differs from the runs stored"
    )
    other = tmp_path / "other.toml"
    other.write_text(TINY.replace('name = "tiny"', 'name = "nope"'))
    assert_one_line_error(invoke("report", "--results", copy, "--grid", other), "which has no stored runs")


TWINS = """
name = "twins"
seeds = 4
highlight_seed = 3
baseline = { kl_estimator = "k3", deltas_mode = "rewards" }

[base]
num_epochs = 30
num_steps_per_epoch = 1

[grid]
kl_estimator = ["k3", "k1"]  # no KL penalty (kl_penalty = 0): the estimator changes nothing, bit for bit
deltas_mode = ["rewards", "centered_rewards"]

[[claim]]
id = "T1"
statement = "without a KL penalty the estimator changes nothing"
subject = "the KL estimator"
source = "by construction"
new = { kl_estimator = "k1" }
old = { kl_estimator = "k3" }
predicts = "same"
figure = "curves:mean_reward"
"""
"""A grid whose configurations come in identical pairs (k1 repeats k3), on the same panel of every line figure."""


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The `TWINS` grid swept and reported: its results folder."""
    root = tmp_path_factory.mktemp("twins")
    run_sweep(parse_grid(TWINS), root, n_jobs=1)
    write_report(root)
    return root


def _mean_lines(ax, exp, label):
    """The lines of configuration `label` on `ax` drawn as wide as a mean curve (1.6: not the highlight seed's)."""
    return [line for line in ax.get_lines() if line.get_color() == exp.colour(label) and line.get_linewidth() == 1.6]


def test_identical_configurations_are_drawn_apart_and_named(twins):
    exp = experiment.load_experiment(twins, "twins", figures.curve_metrics())
    assert exp.identical == {"k1 / rewards": "k3 / rewards", "k1 / centered_rewards": "k3 / centered_rewards"}
    drawn = {
        "reward_curves": figures.plot_reward_curves(exp),
        "sample_efficiency": figures.plot_sample_efficiency(exp),
        "performance_profile": figures.plot_performance_profile(exp),
    }
    for name, fig in drawn.items():
        for ax, mode in zip(fig.axes, ["rewards", "centered_rewards"]):
            (first,), (twin,) = _mean_lines(ax, exp, f"k3 / {mode}"), _mean_lines(ax, exp, f"k1 / {mode}")
            assert np.array_equal(first.get_ydata(), twin.get_ydata()), name  # the same numbers ...
            assert (first.get_linestyle(), first.get_marker()) == ("-", "None"), name  # ... the first as before,
            assert (twin.get_linestyle(), twin.get_marker()) == ("--", "o"), name  # the other dashed, with a marker
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "k1 / rewards: identical to k3 / rewards" in legend, name
        assert "k1 / centered_rewards: identical to k3 / centered_rewards" in legend, name
    # the sample-efficiency title says at how many of the epochs its IQMs are: 26 of the grid's 30
    title = drawn["sample_efficiency"]._suptitle.get_text()
    assert "IQM over seeds of the mean reward at 26 of the 30 epochs, 4 seeds per configuration" in title
    assert len(_mean_lines(drawn["sample_efficiency"].axes[0], exp, "k3 / rewards")[0].get_xdata()) == 26

    # a claim's curves (new, then old, at the baseline's deltas_mode): the one drawn second is dashed, with a marker
    fig = claim_figures.draw(exp, exp.grid.claims[0], claims.tests(exp))
    first, twin = fig.axes[0].get_lines()
    assert np.array_equal(first.get_ydata(), twin.get_ydata())
    assert (first.get_linestyle(), first.get_marker(), twin.get_linestyle(), twin.get_marker()) == (
        "-",
        "None",
        "--",
        "o",
    )
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["k1 / rewards", "k3 / rewards", "k3 / rewards: identical to k1 / rewards"]

    text = (twins / "REPORT.md").read_text()
    assert "k1 / rewards (+0.000 (all 4 equal), p = 1 Holm; identical to the baseline)" in text
    assert (
        "Identical results (every final score and per-epoch curve equal on every seed, bit for bit): k1 / rewards is "
        "identical to k3 / rewards; k1 / centered_rewards is identical to k3 / centered_rewards." in text
    )
    assert "where one would hide another in a line figure, the later one in grid order is dashed" in text
    assert "k1 / centered_rewards is identical to it" in text  # at the top, with k3 / centered_rewards


@pytest.mark.parametrize("count", [2, 3, 4])
def test_lines_with_the_same_numbers_show_in_turn(count):
    """Of `count` lines with the same numbers, the first is solid; each other one's dash starts where it alone
    shows: at place x the dash length along a period of count dashes (the first line shows in the first gap)."""
    period = count * figures.TWIN_DASH
    starts = []
    for place in range(1, count):
        offset, (on, off) = figures.twin_style(figures.Twin("first", place, count))["ls"]
        assert (on, on + off) == (figures.TWIN_DASH, period)
        starts.append((period - offset) % period)  # matplotlib starts the pattern `offset` into it
    assert starts == [place * figures.TWIN_DASH for place in range(1, count)]
    markers = [figures.twin_style(figures.Twin("first", place, count))["marker"] for place in range(1, count)]
    assert len(set(markers)) == count - 1


def test_a_line_repeats_another_when_each_of_its_configurations_does():
    """A line that pools configurations (one per prompt length) repeats another only if they do, one for one."""
    exp = SimpleNamespace(identical={"b / L=3": "a / L=3", "b / L=4": "a / L=4", "c / L=4": "a / L=4"})
    lines = {"a": ["a / L=3", "a / L=4"], "b": ["b / L=3", "b / L=4"], "c": ["c / L=3", "c / L=4"]}
    assert figures.twin_lines(exp, lines) == {"b": figures.Twin("a", 1, 2)}  # c repeats a at L=4 only
    exp.identical["c / L=3"] = "a / L=3"
    assert figures.twin_lines(exp, lines) == {"b": figures.Twin("a", 1, 3), "c": figures.Twin("a", 2, 3)}


def test_distinct_configurations_are_drawn_as_before(results):
    exp = experiment.load_experiment(results, "tiny")
    assert exp.identical == {}
    fig = figures.plot_sample_efficiency(exp)
    for label in exp.labels:
        (line,) = _mean_lines(fig.axes[0], exp, label)
        assert (line.get_linestyle(), line.get_marker()) == ("-", "None")
    assert not any("identical" in t.get_text() for t in fig.legends[0].get_texts())
    # 5 epochs: the IQMs are at every one of them, and the title says no more
    assert (
        fig._suptitle.get_text()
        == "tiny: sample efficiency, IQM over seeds of the mean reward, 6 seeds per configuration"
    )


TREND = """
name = "trendy"
seeds = 4
baseline = { num_responses = 2 }

[base]
num_epochs = 4
num_steps_per_epoch = 2
deltas_mode = "centered_rewards"

[grid]
num_responses = [2, 4, 8]

[[claim]]
id = "TR"
statement = "larger groups help"
subject = "group size"
source = "a test"
kind = "trend"
axis = "num_responses"
new = {}
predicts = "higher"
"""


def test_a_trend_figure_is_drawn_from_the_ledgers_verdicts(tmp_path, monkeypatch):
    """A trend figure marks each step's verdict, which the ledger's Holm correction over every grid decides: it is
    drawn once the ledger has run, with every test's verdict (it was drawn with the experiment's uncorrected tests,
    so every step printed '?' and the rank correlation '()'); its ticks are the axis's values."""
    from sortrl.study.sweep import run_sweep

    run_sweep(parse_grid(TREND), tmp_path, n_jobs=1)
    seen = []
    drawn = claim_figures.FIGURES["trend"]

    def spy(exp, claim, tests):
        seen.append([t.verdict for t in tests])
        fig = drawn(exp, claim, tests)
        seen.append([tick.get_text() for tick in fig.axes[0].get_xticklabels()])
        return fig

    monkeypatch.setitem(claim_figures.FIGURES, "trend", spy)
    write_report(tmp_path, use_cache=False)
    assert len(seen) == 2 and seen[0] and all(v in verdicts.VERDICTS for v in seen[0]), seen
    assert seen[1] == ["2", "4", "8"]
    assert (tmp_path / "figures" / "claim_TR.png").is_file()
