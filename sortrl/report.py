"""`REPORT.md`: every experiment's findings, tables and figures in generated sentences.

`render_report(findings)` renders the `sortrl.findings.Findings` of every
experiment (`sortrl.publish.write_report` computes them and writes the file):
what was run, the summary table (also `<exp>_summary.csv`), the comparisons
with the baseline and the declared claims, the diverged runs and the figures.
Every sentence about results is generated from the numbers; none is computed
here. Mean reward is the headline quantity; a run's *final* reward is its mean
reward averaged over the last 10% of its epochs (`sortrl.stats.final_scores`).
"""

from __future__ import annotations

import json
import math

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns

from sortrl import stats
from sortrl.claims import Test
from sortrl.claims_md import fmt_effect
from sortrl.experiment import SEED, Experiment, compared_with, reward_maxima
from sortrl.figures import FIGURES
from sortrl.findings import Findings, fmt_ci, fmt_num


def _findings(f: Findings) -> list[str]:
    exp = f.experiment
    groups: dict[str, list[str]] = {"better": [], "worse": [], "indistinguishable": []}
    for c in f.with_interval:
        versus = "" if c.reference == exp.baseline else f" vs {c.reference}"
        groups[c.verdict].append(f"{c.configuration} ({c.interval}{versus})")
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
    lines += _without_interval(f)
    m = len(f.with_interval)
    if m > 1:
        lines.append(
            f"- Each interval is for one comparison, not corrected for the {m} made here: even if no "
            f"configuration differed from its reference, about {f.chance:.1f} of them "
            "would be expected to exclude 0.5 by chance."
        )
    return lines


def _without_interval(f: Findings) -> list[str]:
    """Comparisons without a P(improve) interval, blaming the side with fewer than two finished runs."""
    summary = f.summary.set_index("configuration")
    finished, diverged = summary["n"], summary["n_diverged"]
    lines, short = [], []
    by_reference: dict[str, list[str]] = {}
    for c in f.comparisons:
        if c.verdict:
            continue
        if finished.get(c.reference, 0) < 2:
            by_reference.setdefault(c.reference, []).append(c.configuration)
        else:
            short.append(c.configuration)
    for reference, configurations in by_reference.items():
        role = "the baseline" if reference == f.experiment.baseline else "the reference"
        lines.append(
            f"- No P(improve) interval for {', '.join(configurations)}: {role} {reference} has "
            f"{_runs(finished.get(reference, 0))} finished ({_runs(diverged.get(reference, 0))} diverged), "
            "fewer than the two a comparison needs."
        )
    if short:
        lines.append(f"- No P(improve) interval (fewer than two finished runs): {', '.join(short)}.")
    return lines


def _runs(n: int) -> str:
    return f"{int(n)} run{'' if n == 1 else 's'}"


def _claims(f: Findings, tests: list[Test]) -> list[str]:
    """The ledger's verdicts on the claims this grid tests (the evidence is in CLAIMS.md)."""
    mine = [t for t in tests if t.experiment == f.experiment.name]
    if not mine:
        return []
    lines = [
        "### Claims this grid tests",
        "",
        "Tested with paired, Holm-corrected statistics in [CLAIMS.md](CLAIMS.md):",
        "",
    ]
    lines += [f"- {t.label}: {t.claim.statement} **{t.verdict}** (effect {fmt_effect(t.effect)})." for t in mine]
    return lines + [""]


def _what_was_run(exp: Experiment) -> list[str]:
    grid = exp.grid
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
    if not exp.final.empty:
        trained = [exp.config(label) for label in exp.final["configuration"].unique()]
        epochs = sorted({c.num_epochs for c in trained})
        steps = sorted({c.num_steps_per_epoch for c in trained})
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


def render_report(experiments: list[Findings], tests: list[Test] = ()) -> str:
    """REPORT.md text from the findings of every experiment (in order) and the ledger's tests (`sortrl.claims`)."""
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
    for f in experiments:
        exp, summary = f.experiment, f.summary
        lines += [f"## Experiment `{exp.name}`", "", "### What was run", "", *_what_was_run(exp), ""]
        lines += [
            "### Final reward per configuration",
            "",
            f"Also in `{exp.name}_summary.csv`.",
            "",
            *_table(exp, summary),
            "",
        ]
        lines += ["### Findings", "", *_findings(f), ""]
        lines += _claims(f, list(tests))
        lines += ["### Diverged runs", "", *_diverged(exp), ""]
        lines += ["### Figures", ""]
        for name in f.figures:
            lines += [f"**{FIGURES[name].caption}.**", "", f"![{exp.name} {name}](figures/{exp.name}_{name}.png)", ""]
        if len(exp.axes) < 2:
            lines += ["(No heatmap: the grid has fewer than two axes.)", ""]
    return "\n".join(lines).rstrip() + "\n"
