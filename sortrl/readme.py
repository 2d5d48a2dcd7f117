"""The generated blocks of README.md: the headline figure and what the grids show, from the findings.

The repository holds no hand-written claims about results, so the README's
results live between marker comments that `sortrl report --readme README.md`
rewrites (`write_readme`):

    <!-- BEGIN GENERATED: headline -->   the trap figure (solve rate by choice, the SFT reference) and the
    <!-- END GENERATED: headline -->     claims ledger's verdict table (`sortrl.claims_md.readme_block`)
    <!-- BEGIN GENERATED: findings -->   per experiment, 2-4 sentences from its findings
    <!-- END GENERATED: findings -->

Only the text between the markers of `BLOCKS` changes; every other byte of the
file (hand-written text, other generated blocks such as `speed`, which the
benchmarks fill) stays as it is. The sentences render the same
`sortrl.findings.Findings` as `REPORT.md` (`sortrl.report`), in fewer words,
and the output is deterministic: the same runs give the same README.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sortrl import stats
from sortrl.claims import Test
from sortrl.claims_md import readme_block, trap_caption
from sortrl.experiment import LECTURE_SEED, Experiment
from sortrl.findings import Best, Comparison, Findings, fmt_interval, fmt_num
from sortrl.registry import ConfigError
from sortrl.store import atomic_write_bytes

BLOCKS = ("headline", "findings")
"""The README blocks `write_readme` fills (others, e.g. `speed`, are left alone)."""

HEADLINE_EXPERIMENT = "ablations"
"""The experiment whose reward curves head the README (else the first experiment of `ORDER`)."""

ORDER = ("lecture", "ablations", "algorithms", "difficulty")
"""Order of the experiments in the findings; experiments not listed follow, by name."""


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
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"readme: {path} is not UTF-8 text (byte {err.start}); give a Markdown file") from None
    for name in BLOCKS:
        _span(text, name, path)
    return text


def replace_blocks(text: str, blocks: dict[str, str], path: Path) -> str:
    """`text` with the content between each block's markers replaced by `blocks[name]` (blank line either side)."""
    for name, content in blocks.items():
        start, stop = _span(text, name, path)
        text = text[:start] + "\n\n" + content.strip("\n") + "\n\n" + text[stop:]
    return text


def write_readme(
    path: Path, sections: list[Findings], results: Path, tests: list[Test] = (), trap: Path | None = None
) -> Path:
    """Rewrite the `BLOCKS` of the Markdown file `path` from `sections` and the ledger, atomically; returns `path`.

    `tests`: the claims ledger (`sortrl.claims.ledger`); `trap`: the figure of
    solve rate by choice. With neither, the headline is the first experiment's
    reward curves. Links (the figure, `REPORT.md`, `CLAIMS.md`) are relative to
    `path`'s folder. The file is not touched when its blocks already say what
    they would say.
    """
    text = read_readme(path)
    if tests:
        figure = Path(_link(trap, path.parent)) if trap is not None else None
        caption = trap_caption(list(tests))
        top = readme_block(list(tests), figure, _link(results / "CLAIMS.md", path.parent), caption)
    else:
        top = headline(sections, results, path.parent)
    blocks = {"headline": top, "findings": findings(sections, results, path.parent)}
    new = replace_blocks(text, blocks, path)
    if new != text:
        atomic_write_bytes(path, new.encode("utf-8"))
    return path


# --- blocks --------------------------------------------------------------------
def _link(target: Path, folder: Path) -> str:
    return Path(os.path.relpath(target.resolve(), folder.resolve())).as_posix()


def _ordered(sections: list[Findings]) -> list[Findings]:
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(sections, key=lambda f: (rank.get(f.experiment.name, len(ORDER)), f.experiment.name))


def headline(sections: list[Findings], results: Path, folder: Path) -> str:
    """The headline block: `HEADLINE_EXPERIMENT`'s reward-curve figure (else the first one drawn) and a caption."""
    drawn = [f for f in _ordered(sections) if "reward_curves" in f.figures]
    chosen = next((f for f in drawn if f.experiment.name == HEADLINE_EXPERIMENT), drawn[0] if drawn else None)
    if chosen is None:
        return f"*No figure yet: no finished runs under `{_link(results / 'runs', folder)}/`; `make ablations` trains them.*"
    exp = chosen.experiment
    link = _link(results / "figures" / f"{exp.name}_reward_curves.png", folder)
    return f"![{exp.name}: mean reward during training]({link})\n\n*{_caption(exp)}*"


def _caption(exp: Experiment) -> str:
    """One generated sentence saying what the reward-curve figure of `exp` shows."""
    axes = exp.axes
    sizes = " × ".join(f"{len(values)} {axis}" for axis, values in exp.grid.axes.items())
    layout = [f"colours: {' / '.join(axes[:1] + axes[3:])}"] if axes else []
    layout += [f"columns: {axes[1]}"] if len(axes) > 1 else []
    layout += [f"rows: {axes[2]}"] if len(axes) > 2 else []
    n = exp.final.groupby("configuration")["seed"].nunique().max()
    seed = exp.grid.highlight_seed
    dashed = ""
    if seed is not None and (exp.final["seed"] == seed).any():
        dashed = f", seed {seed} (the lecture's seed) dashed" if seed == LECTURE_SEED else f", seed {seed} dashed"
    unit = " as a fraction of each configuration's maximum" if exp.reward_fraction else ""
    return (
        f"Mean reward{unit} per inner step of the {len(exp.configs)} configurations of the `{exp.name}` grid "
        f"({sizes}{'; ' + ', '.join(layout) if layout else ''}): the mean over {n} seeds with a 95% bootstrap "
        f"band{dashed}; drawn by `sortrl report` from the stored runs."
    )


def findings(sections: list[Findings], results: Path, folder: Path) -> str:
    """The findings block: a heading, a paragraph of generated sentences per experiment, a link to REPORT.md."""
    lines = ["## What the grids show (generated by `sortrl report`)", ""]
    paragraphs = [" ".join(experiment_sentences(f)) for f in _ordered(sections)]
    lines += [p for paragraph in paragraphs for p in (paragraph, "")] or ["No experiment has stored runs yet.", ""]
    report = _link(results / "REPORT.md", folder)
    lines.append(
        f"A run's final reward is its mean reward over its last {stats.FINAL_FRACTION:.0%} of epochs; IQM = "
        f"interquartile mean over seeds; brackets are {stats.CONFIDENCE:.0%} bootstrap CIs. Every table, figure and "
        f"caveat: [{report}]({report})."
    )
    return "\n".join(lines)


# --- sentences -------------------------------------------------------------------
def experiment_sentences(f: Findings) -> list[str]:
    """2-4 generated sentences on one experiment: best configuration, comparisons with the baseline, the rest."""
    exp = f.experiment
    if f.summary["n"].sum() == 0:
        return [f"**`{exp.name}`**: no finished runs yet."]
    out = [f"**`{exp.name}`** ({len(exp.configs)} configurations × {len(exp.grid.seeds)} seeds). {_best(f)}"]
    out += [_against_baseline(f)]
    out += _by_prompt_length(f)
    out += _recipes(f)
    return [s for s in out if s]


def _of_max(best: Best) -> str:
    return f" of a maximum {best.max_reward:g}" if not np.isnan(best.max_reward) else ""


def _top(best: Best) -> str:
    """The configuration(s) with the highest IQM, with the IQM's CI (or the tie)."""
    if len(best.names) == 1:
        return f"{best.names[0]} ({fmt_interval(best.iqm, best.low, best.high, 2)}{_of_max(best)})"
    shown = ", ".join(best.names[:3]) + (f" and {len(best.names) - 3} more" if len(best.names) > 3 else "")
    return f"{len(best.names)} configurations tied at {fmt_num(best.iqm, 2)}{_of_max(best)} ({shown})"


def _best(f: Findings) -> str:
    """Highest IQM of the final reward: overall, or per value of the axes that change the reward's scale."""
    if not f.experiment.scale_axes:
        return f"Highest IQM of the final reward: {_top(f.best[0])}."
    return f"Highest IQM of the final reward, {'; '.join(f'for {b.scale}: {_top(b)}' for b in f.best)}."


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _names(comparisons: list[Comparison], limit: int = 3) -> str:
    """Up to `limit` configurations with their P(improve) CIs, then how many more."""
    shown = [f"{c.configuration} ({c.interval})" for c in comparisons[:limit]]
    return _and(shown + ([f"{len(comparisons) - limit} more"] if len(comparisons) > limit else []))


def _against_baseline(f: Findings) -> str:
    """Which configurations beat (or trail) the baseline: P(improve) CIs that exclude 0.5."""
    exp = f.experiment
    m = len(f.with_interval)
    if not m:
        finished = int(f.summary.set_index("configuration")["n"].get(exp.baseline, 0))
        if f.comparisons and finished < 2:  # say whose runs are missing, not the others'
            return (
                f"Nothing is compared with the baseline ({exp.baseline}): it has {finished} finished "
                f"run{'' if finished == 1 else 's'}, fewer than the two a comparison needs."
            )
        return ""
    better = sorted(f.verdicts("better"), key=lambda c: -c.p)
    worse = sorted(f.verdicts("worse"), key=lambda c: c.p)
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
        text += f" (uncorrected: by chance alone about {f.chance:.1f} of {m} would exclude 0.5)"
    return text + "."


def _by_prompt_length(f: Findings) -> list[str]:
    """How final held-out greedy accuracy and reward change with prompt length, all configurations of a length pooled."""
    table = f.by_prompt_length
    if table is None:
        return []
    counts = sorted(set(table["runs"]))
    runs = f"{counts[0]} runs each" if len(counts) == 1 else "runs of every configuration of that length"
    return [
        f"Pooling every configuration of a prompt length ({runs}), as the length goes "
        f"{_listing(table.index)}, the final held-out greedy accuracy goes {_listing(table['accuracy'])} and the "
        f"final {f.length_reward} mean reward {_listing(table['reward'])} {f.length_unit}."
    ]


def _listing(values: object) -> str:
    return ", ".join(fmt_num(float(v), 2) if not isinstance(v, (int, np.integer)) else str(v) for v in values)


def _recipes(f: Findings) -> list[str]:
    """How the recipes rank under each reward, and what EOS does to the response length."""
    if not f.rankings:
        return []
    clauses = []
    for ranking in f.rankings:
        text = "".join(
            f"{' > ' if below else ' ≈ ' if i else ''}{recipe} {fmt_num(iqm, 2)}"
            for i, (recipe, iqm, below) in enumerate(ranking.entries)
        )
        clauses.append(f"under {ranking.where}, {text}" if ranking.where else text)
    setting = f" with {f.ranking_setting}" if f.ranking_setting else ""
    out = [
        f"Recipes ranked by IQM of the final reward{setting} (>: the 95% CIs do not overlap, ≈: they do): "
        f"{'; '.join(clauses)}."
    ]
    if f.eos:
        lengths = "; ".join(
            f"{fmt_num(on, 2)} tokens (vs {fmt_num(off, 2)} without EOS){' under ' + where if where else ''}"
            for where, on, off in f.eos
        )
        out.append(
            f"With EOS on, the final response length (tokens before EOS, mean over every recipe's runs) is {lengths}."
        )
    return out
