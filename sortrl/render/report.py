"""`REPORT.md`: every experiment's findings, tables and figures in generated sentences.

`render_report(findings)` renders the `sortrl.analysis.findings.Findings` of every
experiment (`sortrl.render.publish.write_report` computes them and writes the file):
what was run, the summary table (also `<exp>_summary.csv`), the paired,
Holm-corrected comparisons with the baseline (or reference) and the other
findings (`sortrl.render.sentences`: the top, null results, grid-specific ones), the
declared claims, the diverged runs and the figures. Every sentence about
results is generated from the numbers; none is computed here. Mean reward is
the headline quantity; a run's *final* reward is its mean reward averaged over
the last 10% of its epochs (`sortrl.analysis.stats.final_scores`), its final score that
reward chance-normalised.
"""

from __future__ import annotations

import json
import math

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns

from sortrl.analysis import stats
from sortrl.analysis.claims import Test, bound_flag
from sortrl.analysis.experiment import MARGIN, SEED, VERDICTS, Experiment
from sortrl.analysis.findings import (
    Comparison,
    Findings,
    fmt_ci,
    fmt_effect,
    fmt_improve,
    fmt_interval,
    fmt_p,
)
from sortrl.analysis.verdicts import N_RESAMPLES
from sortrl.render.claims_md import fmt_effect as fmt_claim_effect
from sortrl.render.figures import FIGURES
from sortrl.render.sentences import experiment_sentences, identical_to, ordered, summary_sentences


def _findings(f: Findings) -> list[str]:
    exp = f.experiment
    m = len(f.tested)
    lines = [f"Baseline: **{exp.baseline}**."]
    own = exp.reference_axes
    if own:
        lines[0] += (
            f" Configurations whose {' / '.join(f'`{a}`' for a in own)} {'differs' if len(own) == 1 else 'differ'} "
            "from the baseline's (which change the reward's scale or chance) are compared with the baseline's other settings at their own value of "
            f"{'it' if len(own) == 1 else 'them'} (their *reference*, named after each number below unless it is "
            "the baseline)."
        )
    lines.append(
        f"Each comparison is paired by seed on the final score (chance-normalised): the mean of the per-seed "
        f"differences with its 95% CI, a Wilcoxon signed-rank test, and Holm's correction over the {m} "
        f"comparison{'s' * (m != 1)} of this experiment; equivalence margin ±{MARGIN:g}."
    )
    lines.append("")
    for word in VERDICTS:
        chosen = f.verdicts(word)
        items = "; ".join(_compared(exp, c) for c in chosen) if chosen else "none"
        lines.append(f"- {HEADS[word].format(versus=exp.compared_with, margin=f'{MARGIN:g}')}: {items}.")
    lines += _untested(f)
    lines += [f"- {sentence}" for sentence in experiment_sentences(f, short=False)]
    return lines


HEADS = {
    "better": "Better than {versus} (Holm-corrected p < 0.05, mean effect > 0)",
    "worse": "Worse than {versus} (Holm-corrected p < 0.05, mean effect < 0)",
    "no difference": "No difference from {versus} (not significant and the paired CI lies within ±{margin})",
    "inconclusive": (
        "Inconclusive (not significant, and the paired CI reaches beyond ±{margin}; in brackets after the p-value, "
        "the seeds a paired test would need to detect an effect of {margin} at 80% power)"
    ),
}
"""The heading of each verdict's list in REPORT.md."""


def _compared(exp: Experiment, c: Comparison) -> str:
    """`name (+0.120 [+0.080, +0.160], p = 0.003 Holm; vs reference)` for one comparison."""
    versus = "" if c.reference == exp.baseline else f"; vs {c.reference}"
    if c.identical:
        versus = f"; {identical_to(c, exp.baseline)}"
    small = f"; within ±{MARGIN:g}" if c.within_margin else ""
    needed = f", ~{c.seeds_needed:,} seeds" if c.seeds_needed is not None else ""
    p = fmt_p(c.p_holm)
    return f"{c.configuration} ({fmt_effect(c.effect)}, p {p if p.startswith('<') else '= ' + p} Holm{needed}{small}{versus})"


def _untested(f: Findings) -> list[str]:
    """Comparisons without a test, blaming the reference when it is the side with fewer than two finished runs."""
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
            f"- No test for {', '.join(configurations)}: {role} {reference} has "
            f"{_runs(finished.get(reference, 0))} finished ({_runs(diverged.get(reference, 0))} diverged), "
            "fewer than the two a paired test needs."
        )
    if short:
        lines.append(f"- No test (fewer than two seeds finished by both): {', '.join(short)}.")
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
    lines += [
        f"- {t.label}: {t.claim.statement} **{t.verdict}**{f' ({bound_flag(t)})' if bound_flag(t) else ''} "
        f"(effect {fmt_claim_effect(t.effect)})."
        for t in mine
    ]
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
    m = exp.trained_by or exp.manifest or {}
    keys = [
        ("sortrl", "sortrl"),
        ("git_commit", "git commit"),
        ("torch", "torch"),
        ("cpu_capability", "CPU kernels"),
        ("cpu", "CPU"),
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
    versus = "reference" if exp.reference_axes else "baseline"
    head = ["configuration", "n", "mean reward [95% CI]", "IQM [95% CI]", "final score [95% CI]"]
    head += [f"paired effect vs {versus} [95% CI]", "p (Holm)", "verdict", f"P(improve) over {versus} [95% CI]"]
    head += ["reference"] if versus == "reference" else []
    head += ["solved [Wilson 95% CI]", "diverged"]
    align = {"n": "---:", "p (Holm)": "---:", "diverged": "---:"}
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align.get(h, "---") for h in head) + " |"]
    for _, r in summary.iterrows():
        n = int(r["n"])
        own = r["configuration"] == r["reference"]
        cells = [
            r["configuration"],
            str(n),
            fmt_ci(r, "mean", mean_of=n),
            fmt_ci(r, "iqm"),
            fmt_ci(r, "score", mean_of=n),
        ]
        if own:
            cells += [versus, "", "", versus]
        else:
            effect = fmt_interval(r["effect"], r["effect_ci_low"], r["effect_ci_high"], 3, True, int(r["n_paired"]))
            cells += [effect, fmt_p(r["p_holm"]), r["verdict"] or "–"]
            cells += [fmt_improve(r["p_improve"], r["p_improve_ci_low"], r["p_improve_ci_high"])]
        cells += [r["reference"]] if versus == "reference" else []
        solved = fmt_interval(r["solve_rate"], r["solve_rate_ci_low"], r["solve_rate_ci_high"], 2)
        cells += [f"{int(r['n_solved'])}/{n} ({solved})" if n else "–", str(r["n_diverged"])]
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
    """REPORT.md text from the findings of every experiment (in order) and the ledger's tests (`sortrl.analysis.claims`)."""
    import scipy

    lines = [
        "# sortrl report",
        "",
        "Generated by `sortrl report` from the runs stored under `runs/`: every number and every sentence about "
        "results below is computed from them. Regenerate with `sortrl report` (in the sortrl repository, `make report`; `make ablations` to retrain).",
        "",
        "How to read it:",
        "",
        f"- A run's **final reward** is its mean reward averaged over the last {stats.FINAL_FRACTION:.0%} of its "
        "epochs. Mean reward (never loss) is the headline quantity.",
        "- A run's **final score** is its final reward chance-normalised: (final reward - chance) / (max - chance), "
        "where chance is the uniform random policy's expected mean reward on the same prompts (computed exactly by "
        "enumerating every response, or from 200,000 sampled ones for long prompts) and max the best possible: 0 = "
        "chance, 1 = every response sorted. Comparisons, rankings and null results use it, so rewards and prompt "
        "lengths with different scales (and EOS, which lowers chance) compare on one scale.",
        "- Per configuration, over seeds: mean and **IQM** (interquartile mean, `scipy.stats.trim_mean(x, 0.25)`) of "
        f"the final reward, each with a {stats.CONFIDENCE:.0%} percentile-bootstrap CI (`scipy.stats.bootstrap`, "
        f"{stats.N_RESAMPLES} resamples, seed {SEED}); the mean final score with its CI ({N_RESAMPLES:,} "
        "resamples); curve bands are the same interval at each step. A CI whose ends are equal is not printed as "
        "an interval: `(all n equal)` for a mean of n equal values, `(same in every resample)` otherwise.",
        "- A seed is the same initial model and data stream in every configuration, so each configuration is "
        "compared with its reference **paired by seed**: the **paired effect** is the mean over seeds of the "
        f"per-seed difference of the final score, with a {N_RESAMPLES:,}-resample bootstrap CI over seeds; its "
        "two-sided Wilcoxon signed-rank p-value is corrected with **Holm's method over the experiment's "
        "comparisons** (family-wise error 0.05). Verdicts: **better** / **worse** (corrected p < 0.05, by the sign "
        f"of the effect), **no difference** (not significant and the CI lies within ±{MARGIN:g}, the equivalence "
        "margin), **inconclusive** (neither; with the seeds a paired test would need to detect an effect of "
        f"{MARGIN:g} at 80% power). Overlapping CIs are never read as equality.",
        "- **P(improve)**, beside it, is the unpaired view: the probability that a random run of the configuration "
        "ends with a higher final reward than a random run of its reference (Mann-Whitney U / (n_x n_y), ties "
        "count half; Agarwal et al. 2021). Where a grid varies the reward function or the prompts (which change "
        "what a reward point is worth), a configuration's reference is the baseline's settings on its own reward "
        "and prompts.",
        "- Each CI is for one comparison, uncorrected: a CI that excludes 0 beside a corrected p above 0.05 is "
        "inconclusive, not a difference.",
        "- A single best configuration (by mean final score) is named only when it separates from every other "
        "configuration of its scale (same reward, prompts and EOS): a paired CI above 0 and a Wilcoxon test "
        "significant after Holm's correction over its comparisons with the others; otherwise the configurations it "
        "does not separate from are listed as tied with it. Recipes are ranked the same way, neighbour by neighbour.",
        "- **Solved** = runs whose greedy (argmax) policy sorts every training prompt exactly after the last epoch, "
        "with a Wilson 95% interval of the solve rate. Null results (runs and configurations at chance, no run "
        "solving) are stated with the findings.",
        "- Diverged runs are listed per experiment and excluded from every aggregate.",
        f"- Report tools: numpy `{np.__version__}`, pandas `{pd.__version__}`, scipy `{scipy.__version__}`, "
        f"seaborn `{sns.__version__}`, matplotlib `{mpl.__version__}`.",
        "",
    ]
    lines += ["## At a glance", ""]
    lines += [p for f in ordered(experiments) for p in (" ".join(summary_sentences(f)), "")]
    for f in experiments:
        exp, summary = f.experiment, f.summary
        lines += [f"## Experiment `{exp.name}`", "", "### What was run", "", *_what_was_run(exp), ""]
        lines += [
            "### Final reward and score per configuration",
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
        if exp.identical and f.figures:
            lines += [
                "Identical configurations (named in the findings above) draw the same numbers: where one would hide "
                "another in a line figure, the later one in grid order is dashed, with a marker, and the legend says "
                "which it is identical to.",
                "",
            ]
        for name in f.figures:
            lines += [f"**{FIGURES[name].caption}.**", "", f"![{exp.name} {name}](figures/{exp.name}_{name}.png)", ""]
        if len(exp.axes) < 2:
            lines += ["(No heatmap: the grid has fewer than two axes.)", ""]
    return "\n".join(lines).rstrip() + "\n"
