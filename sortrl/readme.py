"""The generated blocks of README.md: the headline figure and what the grids show, from the numbers.

The repository holds no hand-written claims about results, so the README's
results live between marker comments that `sortrl report --readme README.md`
rewrites (`write_readme`):

    <!-- BEGIN GENERATED: headline -->   the ablations reward-curve figure and a generated caption
    <!-- END GENERATED: headline -->
    <!-- BEGIN GENERATED: findings -->   per experiment, 2-4 sentences computed from the summary tables
    <!-- END GENERATED: findings -->

Only the text between the markers of `BLOCKS` changes; every other byte of the
file (hand-written text, other generated blocks such as `speed`, which the
benchmarks fill) stays as it is. The sentences reuse the numbers and verdicts
of `REPORT.md` (`sortrl.experiment.summarize`, `sortrl.report.lecture_checks`),
and the output is deterministic: the same runs give the same README.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sortrl import stats
from sortrl.experiment import (
    EVAL_ACCURACY,
    EVAL_REWARD,
    LECTURE_SEED,
    PROMPT_LENGTH,
    Experiment,
    join_labels,
    value_label,
)
from sortrl.registry import ConfigError
from sortrl.report import fmt_num, lecture_checks
from sortrl.store import atomic_write_bytes

BLOCKS = ("headline", "findings")
"""The README blocks `write_readme` fills (others, e.g. `speed`, are left alone)."""

HEADLINE_EXPERIMENT = "ablations"
"""The experiment whose reward curves head the README (else the first experiment of `ORDER`)."""

ORDER = ("lecture", "ablations", "algorithms", "difficulty")
"""Order of the experiments in the findings; experiments not listed follow, by name."""

Section = tuple[Experiment, pd.DataFrame, list[str]]
"""(experiment, its summary table, names of the figures written), as `sortrl.report.write_report` makes them."""


# --- markers -------------------------------------------------------------------
def markers(name: str) -> tuple[str, str]:
    """The BEGIN and END marker comments of block `name`."""
    return f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"


def _span(text: str, name: str, path: Path) -> tuple[int, int]:
    """Offsets of the text between block `name`'s markers; a one-line `ConfigError` naming file and marker if unusable."""
    begin, end = markers(name)
    for marker in (begin, end):
        count = text.count(marker)
        if count != 1:
            raise ConfigError(
                f"readme: {path} has {count or 'no'} '{marker}' marker{'s' if count > 1 else ''}; need one"
            )
    start, stop = text.index(begin) + len(begin), text.index(end)
    if stop < start:
        raise ConfigError(f"readme: in {path}, '{end}' comes before '{begin}'")
    return start, stop


def read_readme(path: Path) -> str:
    """The text of `path`, checked to hold the markers of every block of `BLOCKS` (else `ConfigError`)."""
    if not path.is_file():
        raise ConfigError(f"readme: no file at {path}")
    text = path.read_bytes().decode("utf-8")
    for name in BLOCKS:
        _span(text, name, path)
    return text


def replace_blocks(text: str, blocks: dict[str, str], path: Path) -> str:
    """`text` with the content between each block's markers replaced by `blocks[name]` (blank line either side)."""
    for name, content in blocks.items():
        start, stop = _span(text, name, path)
        text = text[:start] + "\n\n" + content.strip("\n") + "\n\n" + text[stop:]
    return text


def write_readme(path: Path, sections: list[Section], results: Path) -> Path:
    """Rewrite the `BLOCKS` of the Markdown file `path` from `sections`, atomically; returns `path`.

    Links (the figure, `REPORT.md`) are relative to `path`'s folder. The file is
    not touched when its blocks already say what they would say.
    """
    text = read_readme(path)
    blocks = {
        "headline": headline(sections, results, path.parent),
        "findings": findings(sections, results, path.parent),
    }
    new = replace_blocks(text, blocks, path)
    if new != text:
        atomic_write_bytes(path, new.encode("utf-8"))
    return path


# --- blocks --------------------------------------------------------------------
def _link(target: Path, folder: Path) -> str:
    return Path(os.path.relpath(target.resolve(), folder.resolve())).as_posix()


def _ordered(sections: list[Section]) -> list[Section]:
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(sections, key=lambda s: (rank.get(s[0].name, len(ORDER)), s[0].name))


def headline(sections: list[Section], results: Path, folder: Path) -> str:
    """The headline block: `HEADLINE_EXPERIMENT`'s reward-curve figure (else the first one drawn) and a caption."""
    drawn = [s for s in _ordered(sections) if "reward_curves" in s[2]]
    chosen = next((s for s in drawn if s[0].name == HEADLINE_EXPERIMENT), drawn[0] if drawn else None)
    if chosen is None:
        return f"*No figure yet: no finished runs under `{_link(results / 'runs', folder)}/`; `make ablations` trains them.*"
    exp = chosen[0]
    link = _link(results / "figures" / f"{exp.name}_reward_curves.png", folder)
    return f"![{exp.name}: mean reward during training]({link})\n\n*{_caption(exp)}*"


def _caption(exp: Experiment) -> str:
    """One generated sentence saying what the reward-curve figure of `exp` shows."""
    axes = exp.axes
    sizes = " × ".join(f"{len(values)} {axis}" for axis, values in exp.grid.axes.items())
    layout = [f"colours: {' / '.join(axes[:1] + axes[3:])}"] if axes else []
    layout += [f"columns: {axes[1]}"] if len(axes) > 1 else []
    layout += [f"rows: {axes[2]}"] if len(axes) > 2 else []
    n = exp.runs.groupby("configuration")["seed"].nunique().max()
    seed = exp.grid.highlight_seed
    dashed = ""
    if seed is not None and (exp.runs["seed"] == seed).any():
        dashed = f", seed {seed} (the lecture's seed) dashed" if seed == LECTURE_SEED else f", seed {seed} dashed"
    unit = " as a fraction of each configuration's maximum" if exp.reward_fraction else ""
    return (
        f"Mean reward{unit} per inner step of the {len(exp.configs)} configurations of the `{exp.name}` grid "
        f"({sizes}{'; ' + ', '.join(layout) if layout else ''}): the mean over {n} seeds with a 95% bootstrap "
        f"band{dashed}; drawn by `sortrl report` from the stored runs."
    )


def findings(sections: list[Section], results: Path, folder: Path) -> str:
    """The findings block: a heading, a paragraph of generated sentences per experiment, a link to REPORT.md."""
    lines = ["## What the grids show (generated by `sortrl report`)", ""]
    paragraphs = [" ".join(experiment_sentences(exp, summary)) for exp, summary, _ in _ordered(sections)]
    lines += [p for paragraph in paragraphs for p in (paragraph, "")] or ["No experiment has stored runs yet.", ""]
    report = _link(results / "REPORT.md", folder)
    lines.append(
        f"A run's final reward is its mean reward over its last {stats.FINAL_FRACTION:.0%} of epochs; IQM = "
        f"interquartile mean over seeds; brackets are {stats.CONFIDENCE:.0%} bootstrap CIs. Every table, figure and "
        f"caveat: [{report}]({report})."
    )
    return "\n".join(lines)


# --- sentences -------------------------------------------------------------------
def experiment_sentences(exp: Experiment, summary: pd.DataFrame) -> list[str]:
    """2-4 generated sentences on `exp`: best configuration, comparisons with the baseline, grid-specific ones."""
    if summary["n"].sum() == 0:
        return [f"**`{exp.name}`**: no finished runs yet."]
    out = [f"**`{exp.name}`** ({len(exp.configs)} configurations × {len(exp.grid.seeds)} seeds). {_best(exp, summary)}"]
    out += [_against_baseline(exp, summary)]
    out += _lecture(exp)
    out += _by_prompt_length(exp)
    out += _recipes(exp, summary)
    return [s for s in out if s]


def _ci(row: pd.Series, stat: str, digits: int = 2) -> str:
    return f"{fmt_num(row[stat], digits)} [{fmt_num(row[f'{stat}_ci_low'], digits)}, {fmt_num(row[f'{stat}_ci_high'], digits)}]"


def _of_max(row: pd.Series) -> str:
    return f" of a maximum {row['max_reward']:g}" if not np.isnan(row["max_reward"]) else ""


def _top(rows: pd.DataFrame, name: Any) -> str:
    """The configuration(s) of `rows` with the highest IQM, named by `name(row)`, with the IQM's CI."""
    best = rows[rows["iqm"] == rows["iqm"].max()]
    first = best.iloc[0]
    if len(best) == 1:
        return f"{name(first)} ({_ci(first, 'iqm')}{_of_max(first)})"
    names = [name(r) for _, r in best.iterrows()]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{len(best)} configurations tied at {fmt_num(first['iqm'], 2)}{_of_max(first)} ({shown})"


def _best(exp: Experiment, summary: pd.DataFrame) -> str:
    """Highest IQM of the final reward: overall, or per value of the axes that change the reward's scale."""
    rows = summary[summary["n"] > 0]
    if not exp.scale_axes:
        return f"Highest IQM of the final reward: {_top(rows, lambda r: r['configuration'])}."
    others = [a for a in exp.axes if a not in exp.scale_axes]

    def short(row: pd.Series) -> str:
        return join_labels([value_label(a, row[a]) for a in others], "all runs")

    keys = rows[exp.scale_axes].map(repr).apply(tuple, axis=1)
    clauses = [
        f"for {join_labels([value_label(a, part.iloc[0][a]) for a in exp.scale_axes])}: {_top(part, short)}"
        for _, part in rows.groupby(keys, sort=False)
    ]
    return f"Highest IQM of the final reward, {'; '.join(clauses)}."


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _names(rows: pd.DataFrame, limit: int = 3) -> str:
    """Up to `limit` configurations with their P(improve) CIs, then how many more."""
    shown = [f"{r['configuration']} ({_ci(r, 'p_improve')})" for _, r in rows.head(limit).iterrows()]
    return _and(shown + ([f"{len(rows) - limit} more"] if len(rows) > limit else []))


def _against_baseline(exp: Experiment, summary: pd.DataFrame) -> str:
    """Which configurations beat (or trail) the baseline: P(improve) CIs that exclude 0.5."""
    compared = summary[(summary["configuration"] != summary["reference"]) & summary["p_improve_ci_low"].notna()]
    m = len(compared)
    if not m:
        return ""
    better = compared[compared["p_improve_ci_low"] > 0.5].sort_values("p_improve", ascending=False, kind="stable")
    worse = compared[compared["p_improve_ci_high"] < 0.5].sort_values("p_improve", kind="stable")
    against = (
        f"its reference (the baseline's settings, {exp.baseline}, with its own {' / '.join(exp.scale_axes)})"
        if exp.scale_axes
        else f"the baseline ({exp.baseline})"
    )
    rest = m - len(better) - len(worse)
    text = (
        f"Against {against}, the P(improve) CI is above 0.5 for {len(better)} of {m} configuration{'s' * (m > 1)}"
        f"{f': {_names(better)}' if len(better) else ''}; below 0.5 for "
        f"{f'{len(worse)}: {_names(worse)}' if len(worse) else 'none'}; "
        f"{rest or 'none'} {'is' if rest == 1 else 'are'} indistinguishable at these seeds"
    )
    if m > 1:
        text += f" (uncorrected: by chance alone about {(1 - stats.CONFIDENCE) * m:.1f} of {m} would exclude 0.5)"
    return text + "."


def _lecture(exp: Experiment) -> list[str]:
    """Whether the lecture's seed-5 conclusions hold across seeds (`sortrl.report.lecture_checks`)."""
    checks = lecture_checks(exp)
    if checks is None:
        return []
    out = []
    for c, claim, p in (
        (checks["centering"], "centering helps", "P(centered_rewards > rewards)"),
        (
            checks["normalisation"],
            "std normalisation makes little difference",
            "P(normalized_rewards > centered_rewards)",
        ),
    ):
        says = c["seed_says"]
        seed = f"seed {LECTURE_SEED} alone {'' if says.startswith('shows') else 'says '}{says}; " if says else ""
        p_ci = f"{fmt_num(c['p'], 2)} [{fmt_num(c['p_low'], 2)}, {fmt_num(c['p_high'], 2)}]"
        out.append(
            f"The lecture's single-seed conclusion that {claim}: {seed}over {min(c['n_new'], c['n_old'])} seeds, "
            f"{p} = {p_ci}: {c['holds']}."
        )
    return out


def _by_prompt_length(exp: Experiment) -> list[str]:
    """How final held-out greedy accuracy and reward change with prompt length, all configurations of a length pooled."""
    final = exp.final
    if PROMPT_LENGTH not in exp.axes or f"final_{EVAL_ACCURACY}" not in final or final.empty:
        return []
    lengths = exp.configs[PROMPT_LENGTH]
    if not all(isinstance(v, (int, np.integer)) for v in lengths):
        return []
    final = final.assign(
        length=final["configuration"].map(lengths),
        scale=final["configuration"].map(exp.configs["max_reward"]),
    )
    reward = f"final_{EVAL_REWARD}" if f"final_{EVAL_REWARD}" in final else "final_reward"
    known = final["scale"].notna().all()
    final = final.assign(reward=final[reward] / final["scale"] if known else final[reward])
    table = final.groupby("length", sort=True).agg(
        runs=("run_id", "size"), accuracy=(f"final_{EVAL_ACCURACY}", "mean"), reward=("reward", "mean")
    )
    counts = sorted(set(table["runs"]))
    runs = f"{counts[0]} runs each" if len(counts) == 1 else "runs of every configuration of that length"
    unit = "of its maximum" if known else "reward points (whose maximum grows with the length)"
    where = "held-out" if reward != "final_reward" else "training"
    return [
        f"Pooling every configuration of a prompt length ({runs}), as the length goes "
        f"{_listing(table.index)}, the final held-out greedy accuracy goes {_listing(table['accuracy'])} and the "
        f"final {where} mean reward {_listing(table['reward'])} {unit}."
    ]


def _listing(values: Any) -> str:
    return ", ".join(fmt_num(float(v), 2) if not isinstance(v, (int, np.integer)) else str(v) for v in values)


def _recipes(exp: Experiment, summary: pd.DataFrame) -> list[str]:
    """How the recipes rank under each reward, and what EOS does to the response length."""
    if "recipe" not in exp.axes:
        return []
    out = []
    groups = [a for a in exp.scale_axes if a != "recipe"]
    fixed = [a for a in exp.axes if a not in ("recipe", *groups)]
    base = exp.configs.loc[exp.baseline]
    chosen = summary["n"] > 0
    for axis in fixed:
        chosen &= summary[axis] == base[axis]
    rows = summary[chosen]
    keys = rows[groups].map(repr).apply(tuple, axis=1) if groups else pd.Series(0, index=rows.index)
    clauses = []
    for _, part in rows.groupby(keys, sort=False):
        ranked = part.sort_values("iqm", ascending=False, kind="stable")
        text = ""
        for i, (_, r) in enumerate(ranked.iterrows()):
            if i:
                prev = ranked.iloc[i - 1]
                text += " > " if prev["iqm_ci_low"] > r["iqm_ci_high"] else " ≈ "
            text += f"{r['recipe']} {fmt_num(r['iqm'], 2)}"
        where = join_labels([value_label(a, part.iloc[0][a]) for a in groups])
        clauses.append(f"under {where}, {text}" if where else text)
    setting = f" with {join_labels([value_label(a, base[a]) for a in fixed])}" if fixed else ""
    out.append(
        f"Recipes ranked by IQM of the final reward{setting} (>: the 95% CIs do not overlap, ≈: they do): "
        f"{'; '.join(clauses)}."
    )
    out += _eos(exp, groups)
    return out


def _eos(exp: Experiment, groups: list[str]) -> list[str]:
    """Final response length with EOS on vs off, per value of `groups` (all other settings pooled)."""
    if "eos" not in exp.axes or "response_length" not in exp.runs or exp.runs.empty:
        return []
    length = stats.final_scores(exp.runs, "response_length")
    first = exp.runs.groupby("run_id", sort=True)[["configuration"]].first().assign(length=length)
    first = first.assign(eos=first["configuration"].map(exp.configs["eos"]).astype(bool))
    for axis in groups:
        first[axis] = first["configuration"].map(exp.configs[axis])
    if first["eos"].nunique() < 2:
        return []
    order = {label: i for i, label in enumerate(exp.labels)}  # groups in grid order
    first = first.sort_values("configuration", key=lambda c: c.map(order), kind="stable")
    keys = first[groups].map(repr).apply(tuple, axis=1) if groups else pd.Series(0, index=first.index)
    clauses = []
    for _, part in first.groupby(keys, sort=False):
        on, off = part.loc[part["eos"], "length"].mean(), part.loc[~part["eos"], "length"].mean()
        where = join_labels([value_label(a, part.iloc[0][a]) for a in groups])
        clauses.append(
            f"{fmt_num(on, 2)} tokens (vs {fmt_num(off, 2)} without EOS){' under ' + where if where else ''}"
        )
    return [
        "With EOS on, the final response length (tokens before EOS, mean over every recipe's runs) is "
        f"{'; '.join(clauses)}."
    ]
