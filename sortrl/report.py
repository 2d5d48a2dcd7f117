"""The report stage's text: `REPORT.md`, and `write_report`, which writes every output.

`write_report(results)` reads every experiment stored under `results/runs/`
(`sortrl.experiment.load_experiments`) and writes, per experiment `<exp>`:

    results/figures/<exp>_<figure>.png   one file per entry of `sortrl.figures.FIGURES` that applies
    results/<exp>_summary.csv            one row per configuration (see `sortrl.experiment.summarize`)

and one `results/REPORT.md` whose every sentence about results is generated
from the numbers. Mean reward is the headline quantity; a run's *final*
reward is its mean reward averaged over the last 10% of its epochs
(`sortrl.stats.final_scores`). Diverged runs are listed and left out of every
aggregate. The output is deterministic: bootstraps use fixed seeds, tables are
in grid order, and PNGs carry no timestamp or version metadata, so running the
report twice on the same runs gives byte-identical files. With `readme=`, it
also rewrites the README's generated blocks (`sortrl.readme`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import joblib
import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns

from sortrl import stats
from sortrl.experiment import (
    LECTURE_SEED,
    SEED,
    Experiment,
    compared_with,
    experiment_names,
    is_lecture_experiment,
    load_experiment,
    point,
    reward_maxima,
    scores,
    summarize,
    verdict,
)
from sortrl.figures import FIGURES, save_figure
from sortrl.store import atomic_write_text


def fmt_num(x: float, digits: int = 3) -> str:
    """`x` with `digits` decimals; an en dash for a missing value (None or NaN)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_ci(row: pd.Series, stat: str, digits: int = 3) -> str:
    """`stat [low, high]` from a summary row's `stat`, `stat_ci_low` and `stat_ci_high`."""
    return f"{fmt_num(row[stat], digits)} [{fmt_num(row[f'{stat}_ci_low'], digits)}, {fmt_num(row[f'{stat}_ci_high'], digits)}]"


def _findings(exp: Experiment, summary: pd.DataFrame) -> list[str]:
    compared = summary[summary["configuration"] != summary["reference"]]
    others = compared[compared["p_improve_ci_low"].notna()]
    groups: dict[str, list[str]] = {"better": [], "worse": [], "indistinguishable": []}
    for _, row in others.iterrows():
        versus = "" if row["reference"] == exp.baseline else f" vs {row['reference']}"
        groups[verdict(row["p_improve_ci_low"], row["p_improve_ci_high"])].append(
            f"{row['configuration']} ({fmt_ci(row, 'p_improve', 2)}{versus})"
        )
    versus = compared_with(exp)
    heads = {
        "better": f"Better than {versus} (P(improve) CI above 0.5)",
        "worse": f"Worse than {versus} (P(improve) CI below 0.5)",
        "indistinguishable": f"Indistinguishable from {versus} (P(improve) CI contains 0.5)",
    }
    lines = [f"Baseline: **{exp.baseline}**."]
    if exp.scale_axes:
        lines[0] += (
            f" The grid varies {', '.join(f'`{a}`' for a in exp.scale_axes)}, which "
            f"{'changes' if len(exp.scale_axes) == 1 else 'change'} what a reward point is worth, so each "
            "configuration is compared with its *reference*: the baseline's settings with its own "
            f"{', '.join(f'`{a}`' for a in exp.scale_axes)} (named after each number below unless it is the baseline)."
        )
        if exp.reward_fraction:
            lines[0] += (
                " Figures that put such configurations on one reward axis show each one's reward as a fraction "
                f"of its maximum ({reward_maxima(exp)}); the numbers here are in reward points."
            )
    lines += [f"- {heads[k]}: {'; '.join(v) if v else 'none'}." for k, v in groups.items()]
    missing = compared[compared["p_improve_ci_low"].isna()]["configuration"].tolist()
    if missing:
        lines.append(f"- No P(improve) interval (fewer than two finished runs): {', '.join(missing)}.")
    if len(others) > 1:
        lines.append(
            f"- Each interval is for one comparison, not corrected for the {len(others)} made here: even if no "
            f"configuration differed from its reference, about {(1 - stats.CONFIDENCE) * len(others):.1f} of them "
            "would be expected to exclude 0.5 by chance."
        )
    return lines


def _compare(exp: Experiment, new: str, old: str) -> dict[str, float]:
    """Numbers comparing configuration `new` with `old`: seed-LECTURE_SEED finals, mean difference and P(new > old)."""
    x, y = scores(exp, new), scores(exp, old)
    out = {"n_new": len(x), "n_old": len(y)}
    final = exp.final.set_index(["configuration", "seed"])["final_reward"]
    out["seed_new"] = final.get((new, LECTURE_SEED), math.nan)
    out["seed_old"] = final.get((old, LECTURE_SEED), math.nan)
    out["diff"] = point(stats.mean_difference, x, y)
    out["diff_low"], out["diff_high"] = stats.bootstrap_ci([x, y], stats.mean_difference, SEED)
    out["p"] = point(stats.probability_of_improvement, x, y)
    out["p_low"], out["p_high"] = stats.bootstrap_ci([x, y], stats.probability_of_improvement, SEED)
    # seed-to-seed spread within a configuration: the pooled standard deviation of the two
    out["std"] = math.sqrt((np.var(x, ddof=1) + np.var(y, ddof=1)) / 2) if min(len(x), len(y)) > 1 else math.nan
    return out


def lecture_checks(exp: Experiment) -> dict[str, dict[str, Any]] | None:
    """The lecture's two seed-5 conclusions, checked across seeds; None unless `exp` is the lecture's experiment.

    The lecture concluded from single curves (seed `LECTURE_SEED`) that centering
    helps and that std normalisation makes little difference. Returns
    `{"centering": ..., "normalisation": ...}`, each the numbers of `_compare`
    (new = `centered_rewards` vs old = `rewards`; `normalized_rewards` vs
    `centered_rewards`) plus `seed_says` (what seed 5 alone says, None without
    a finished seed-5 run of both), `verdict` (of the P(improve) CI) and
    `holds` (what the seeds say about the conclusion).
    """
    if not is_lecture_experiment(exp) or "deltas_mode" not in exp.axes:
        return None
    mode = {config["deltas_mode"]: label for label, config in exp.configs.iterrows()}
    if not {"rewards", "centered_rewards", "normalized_rewards"} <= set(mode):
        return None
    checks = {}
    for name, new, old in (
        ("centering", "centered_rewards", "rewards"),
        ("normalisation", "normalized_rewards", "centered_rewards"),
    ):
        c: dict[str, Any] = _compare(exp, mode[new], mode[old])
        c["verdict"] = verdict(c["p_low"], c["p_high"]) if not math.isnan(c["p_low"]) else "indistinguishable"
        c["seed_says"] = None
        if not math.isnan(c["seed_new"]) and not math.isnan(c["seed_old"]):
            d = c["seed_new"] - c["seed_old"]
            if name == "centering":
                c["seed_says"] = "centering helps" if d > 0 else "centering does not help"
            else:
                c["seed_says"] = "shows little difference" if abs(d) < c["std"] else "shows a difference"
        checks[name] = c
    c = checks["centering"]
    c["holds"] = {
        "better": "the seeds confirm that centering helps",
        "worse": "the seeds contradict it: centering does worse",
        "indistinguishable": "the seeds cannot confirm that centering helps",
    }[c["verdict"]]
    c = checks["normalisation"]
    c["holds"] = {
        "better": "the seeds find a difference: normalisation does better",
        "worse": "the seeds find a difference: normalisation does worse",
        "indistinguishable": "the seeds cannot tell the two apart, consistent with 'little difference' "
        f"(a difference of mean final reward as large as the CI's ends, {c['diff_low']:+.3f} to {c['diff_high']:+.3f}, "
        "is not ruled out)",
    }[c["verdict"]]
    return checks


def _lecture_section(exp: Experiment) -> list[str]:
    """Whether the lecture's seed-5 conclusions hold across seeds, in generated sentences (`lecture_checks`)."""
    checks = lecture_checks(exp)
    if checks is None:
        return []
    s = LECTURE_SEED
    lines = [
        "### The lecture's single-seed conclusions, across seeds",
        "",
        f"The lecture ran each deltas mode once, with seed {s}, and concluded from the curves that centering helps "
        "(`centered_rewards` beats `rewards`) and that std normalisation makes little difference "
        "(`normalized_rewards` vs `centered_rewards`). Final reward = mean reward over the last 10% of epochs.",
        "",
    ]
    c = checks["centering"]
    n = min(c["n_new"], c["n_old"])
    if c["seed_says"] is not None:
        lines.append(
            f"- Centering, seed {s} alone: final reward {fmt_num(c['seed_old'])} (`rewards`) vs "
            f"{fmt_num(c['seed_new'])} (`centered_rewards`), difference {c['seed_new'] - c['seed_old']:+.3f}: "
            f"seed {s} alone says {c['seed_says']}."
        )
    lines.append(
        f"- Centering, {n} seeds per configuration: mean difference (centered − rewards) {c['diff']:+.3f} "
        f"[{c['diff_low']:+.3f}, {c['diff_high']:+.3f}]; P(centered_rewards > rewards) = {_ci_p(c)}: {c['holds']}."
    )
    c = checks["normalisation"]
    n = min(c["n_new"], c["n_old"])
    if c["seed_says"] is not None:
        small = c["seed_says"] == "shows little difference"
        lines.append(
            f"- Std normalisation, seed {s} alone: final reward {fmt_num(c['seed_old'])} (`centered_rewards`) vs "
            f"{fmt_num(c['seed_new'])} (`normalized_rewards`), difference {c['seed_new'] - c['seed_old']:+.3f}, "
            f"{'smaller' if small else 'not smaller'} than the seed-to-seed standard deviation of the final reward "
            f"within a configuration ({fmt_num(c['std'])}): seed {s} alone {c['seed_says']}."
        )
    lines.append(
        f"- Std normalisation, {n} seeds per configuration: mean difference (normalized − centered) {c['diff']:+.3f} "
        f"[{c['diff_low']:+.3f}, {c['diff_high']:+.3f}]; P(normalized_rewards > centered_rewards) = {_ci_p(c)}: "
        f"{c['holds']}."
    )
    return lines + [""]


def _ci_p(c: dict[str, float]) -> str:
    return f"{fmt_num(c['p'], 2)} [{fmt_num(c['p_low'], 2)}, {fmt_num(c['p_high'], 2)}]"


def _what_was_run(exp: Experiment) -> list[str]:
    grid, runs = exp.grid, exp.runs
    seeds = grid.seeds
    seed_text = (
        f"{len(seeds)} ({seeds[0]}–{seeds[-1]})"
        if seeds == tuple(range(seeds[0], seeds[-1] + 1))
        else (f"{len(seeds)} ({', '.join(map(str, seeds))})")
    )
    lines = [f"- Grid file: `runs/{exp.name}/grid.toml`; {len(exp.configs)} configurations × {len(seeds)} seeds."]
    for axis, values in grid.axes.items():
        lines.append(f"- Axis `{axis}`: {', '.join(f'`{json.dumps(v)}`' for v in values)}.")
    if grid.base:
        lines.append("- Shared settings: " + ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in grid.base.items()) + ".")
    lines.append(
        f"- Seeds: {seed_text}"
        + (f"; highlighted seed {grid.highlight_seed}." if grid.highlight_seed is not None else ".")
    )
    if not runs.empty:
        epochs = sorted(runs["num_epochs"].unique())
        steps = sorted(runs["num_steps_per_epoch"].unique())
        lines.append(
            f"- Epochs: {', '.join(map(str, epochs))}, each with {', '.join(map(str, steps))} inner steps; "
            f"final reward = mean over the last {math.ceil(stats.FINAL_FRACTION * epochs[0] - 1e-9)} epochs."
        )
    lines.append(
        f"- Baseline: {exp.baseline}" + (" (the grid's first configuration)" if not grid.baseline else "") + "."
    )
    m = exp.manifest or {}
    keys = [
        ("sortrl", "sortrl"),
        ("git_commit", "git commit"),
        ("torch", "torch"),
        ("python", "python"),
        ("platform", "platform"),
    ]
    versions = [f"{name} `{m[k]}`" for k, name in keys if m.get(k)]
    lines.append(f"- Trained with: {', '.join(versions) if versions else 'no manifest found'}.")
    if m.get("status") not in (None, "complete"):
        lines.append(f"- The last sweep's status is `{m['status']}`: results may be incomplete.")
    lines += [f"- Note: {n}" for n in exp.notes]
    return lines


def _table(exp: Experiment, summary: pd.DataFrame) -> list[str]:
    versus = "reference" if exp.scale_axes else "baseline"
    head = ["configuration", "n", "mean [95% CI]", "IQM [95% CI]", f"P(improve) over {versus} [95% CI]"]
    head += ["reference"] if exp.scale_axes else []
    head += ["solve rate", "diverged"]
    lines = [
        "| " + " | ".join(head) + " |",
        "| --- | ---: | --- | --- | --- |" + (" --- |" if exp.scale_axes else "") + " ---: | ---: |",
    ]
    for _, r in summary.iterrows():
        cells = [r["configuration"], str(r["n"]), fmt_ci(r, "mean"), fmt_ci(r, "iqm")]
        cells += [versus if r["configuration"] == r["reference"] else fmt_ci(r, "p_improve", 2)]
        cells += [r["reference"]] if exp.scale_axes else []
        cells += [fmt_num(r["solve_rate"], 2), str(r["n_diverged"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _diverged(exp: Experiment) -> list[str]:
    if exp.diverged.empty:
        return ["No run diverged."]
    lines = ["Diverged runs (non-finite loss or parameters), left out of every aggregate and figure:", ""]
    for label, part in exp.diverged.groupby("configuration", sort=False):
        runs = ", ".join(f"seed {r.seed} (epoch {r.diverged_epoch})" for r in part.sort_values("seed").itertuples())
        lines.append(f"- {label}: {runs}")
    return lines


def render_report(experiments: list[tuple[Experiment, pd.DataFrame, list[str]]]) -> str:
    """REPORT.md text from (experiment, summary, figure names written) triples."""
    import scipy

    lines = [
        "# sortrl report",
        "",
        "Generated by `sortrl report` from the runs stored under `runs/`: every number and every sentence about "
        "results below is computed from them. Regenerate with `make report` (or `make ablations` to retrain).",
        "",
        "How to read it:",
        "",
        f"- A run's **final reward** is its mean reward averaged over the last {stats.FINAL_FRACTION:.0%} of its "
        "epochs. Mean reward (never loss) is the headline quantity.",
        "- Per configuration, over seeds: mean and **IQM** (interquartile mean, `scipy.stats.trim_mean(x, 0.25)`), "
        f"each with a {stats.CONFIDENCE:.0%} percentile-bootstrap CI (`scipy.stats.bootstrap`, {stats.N_RESAMPLES} "
        f"resamples, seed {SEED}); curve bands are the same interval at each step.",
        "- **P(improve)** = probability that a random run of the configuration ends with a higher final reward than a "
        "random run of the baseline (Mann-Whitney U / (n_x n_y), ties count half; Agarwal et al. 2021). A CI above "
        "0.5 means better, below 0.5 worse, containing 0.5 indistinguishable at this number of seeds. Where a grid "
        "varies the reward function or the prompts (which change what a reward point is worth), a configuration is "
        "compared with the baseline's settings on its own reward and prompts instead (its *reference*).",
        "- **Solve rate** = share of seeds whose greedy (argmax) policy sorts every training prompt exactly after "
        "the last epoch.",
        "- Diverged runs are listed per experiment and excluded from every aggregate.",
        f"- Report tools: numpy `{np.__version__}`, pandas `{pd.__version__}`, scipy `{scipy.__version__}`, "
        f"seaborn `{sns.__version__}`, matplotlib `{mpl.__version__}`.",
        "",
    ]
    for exp, summary, figures in experiments:
        lines += [f"## Experiment `{exp.name}`", "", "### What was run", "", *_what_was_run(exp), ""]
        lines += [
            "### Final reward per configuration",
            "",
            f"Also in `{exp.name}_summary.csv`.",
            "",
            *_table(exp, summary),
            "",
        ]
        lines += ["### Findings", "", *_findings(exp, summary), ""]
        lines += _lecture_section(exp)
        lines += ["### Diverged runs", "", *_diverged(exp), ""]
        lines += ["### Figures", ""]
        for name in figures:
            lines += [f"**{FIGURES[name][1]}.**", "", f"![{exp.name} {name}](figures/{exp.name}_{name}.png)", ""]
        if len(exp.axes) < 2:
            lines += ["(No heatmap: the grid has fewer than two axes.)", ""]
    return "\n".join(lines).rstrip() + "\n"


def _experiment_outputs(results: Path, name: str) -> tuple[Experiment, pd.DataFrame, list[str], list[Path]]:
    """Load one experiment, write its summary CSV and figures; return it, its summary, figure names and paths."""
    exp = load_experiment(results, name)
    summary = summarize(exp)
    path = results / f"{exp.name}_summary.csv"
    atomic_write_text(path, summary.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    written, figures = [path], []
    for figure, (draw, _) in FIGURES.items():
        fig = draw(exp, summary)
        path = results / "figures" / f"{exp.name}_{figure}.png"
        if fig is None:
            path.unlink(missing_ok=True)  # left from an earlier report, when the figure applied
            continue
        written.append(save_figure(fig, path))
        figures.append(figure)
    return exp, summary, figures, written


def write_report(results: str | Path, readme: str | Path | None = None) -> list[Path]:
    """Write figures, `<exp>_summary.csv` files and `REPORT.md` under `results`; return the paths written.

    `readme`: also rewrite the generated `headline` and `findings` blocks of
    that Markdown file (`sortrl.readme.write_readme`). Its markers are checked
    before anything is written, so a file without them fails fast with a
    `ConfigError` that names the file and the marker.
    """
    from sortrl.readme import read_readme, write_readme  # sortrl.readme builds on this module

    results = Path(results)
    readme = Path(readme) if readme is not None else None
    if readme is not None:
        read_readme(readme)
    names = experiment_names(results)
    jobs = min(len(names), os.cpu_count() or 1)
    if jobs > 1:  # one experiment per process: figures are independent and each process draws them identically
        parallel = joblib.Parallel(n_jobs=jobs, backend="loky")
        outputs = parallel(joblib.delayed(_experiment_outputs)(results, name) for name in names)
    else:
        outputs = [_experiment_outputs(results, name) for name in names]
    written = [path for _, _, _, paths in outputs for path in paths]
    sections = [(exp, summary, figures) for exp, summary, figures, _ in outputs]
    report = results / "REPORT.md"
    atomic_write_text(report, render_report(sections))
    written.append(report)
    if readme is not None:
        written.append(write_readme(readme, sections, results))
    return written
