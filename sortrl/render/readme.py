"""The generated block of README.md: the headline figure and the claims ledger's table, from the findings.

The repository holds no hand-written claims about results, so the README's
results live between marker comments that `sortrl report --readme README.md`
rewrites (`write_readme`):

    <!-- BEGIN GENERATED: headline -->   the trap figure (solve rate by choice, the SFT reference) and the
    <!-- END GENERATED: headline -->     claims ledger's verdict table (`sortrl.render.claims_md.readme_block`)

(The per-experiment findings are in REPORT.md, which the README links: `sortrl.render.report`.)

Only the text between the markers of `BLOCKS` changes; every other byte of the
file (hand-written text, other generated blocks such as `speed`, which the
benchmarks fill) stays as it is. The output is deterministic: the same runs give the same README.
"""

from __future__ import annotations

import os
from pathlib import Path

from sortrl.analysis.claims import Test
from sortrl.analysis.experiment import LECTURE_SEED, Experiment
from sortrl.analysis.findings import Findings
from sortrl.engine.registry import ConfigError
from sortrl.render.claims_md import readme_block, trap_caption
from sortrl.render.sentences import ordered
from sortrl.study.store import atomic_write_bytes

BLOCKS = ("headline",)
"""The README blocks `write_readme` fills (others, e.g. `speed`, are left alone)."""

HEADLINE_EXPERIMENT = "ablations"
"""The experiment whose reward curves head the README (else the first experiment of `ORDER`)."""


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

    `tests`: the claims ledger (`sortrl.analysis.claims.ledger`); `trap`: the figure of
    solve rate by choice. With neither, the headline is the first experiment's
    reward curves. Links (the figure, `REPORT.md`, `CLAIMS.md`) are relative to
    `path`'s folder. The file is not touched when its blocks already say what
    they would say.
    """
    text = read_readme(path)
    new = readme_text(text, path, sections, results, tests, trap)
    if new != text:
        atomic_write_bytes(path, new.encode("utf-8"))
    return path


def readme_text(
    text: str, path: Path, sections: list[Findings], results: Path, tests: list[Test] = (), trap: Path | None = None
) -> str:
    """`text` (the Markdown file `path`, `read_readme`) with its `BLOCKS` generated anew (see `write_readme`)."""
    if tests:
        figure = Path(_link(trap, path.parent)) if trap is not None else None
        caption = trap_caption(list(tests))
        top = readme_block(list(tests), figure, _link(results / "CLAIMS.md", path.parent), caption)
    else:
        top = headline(sections, results, path.parent)
    blocks = {"headline": top}
    return replace_blocks(text, blocks, path)


# --- blocks --------------------------------------------------------------------
def _link(target: Path, folder: Path) -> str:
    return Path(os.path.relpath(target.resolve(), folder.resolve())).as_posix()


def headline(sections: list[Findings], results: Path, folder: Path) -> str:
    """The headline block: `HEADLINE_EXPERIMENT`'s reward-curve figure (else the first one drawn) and a caption."""
    drawn = [f for f in ordered(sections) if "reward_curves" in f.figures]
    chosen = next((f for f in drawn if f.experiment.name == HEADLINE_EXPERIMENT), drawn[0] if drawn else None)
    if chosen is None:
        return (
            f"*No figure yet: no finished runs under `{_link(results / 'runs', folder)}/`; `sortrl sweep` trains them.*"
        )
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
    unit = " chance-normalised per configuration" if exp.scales_differ else ""
    return (
        f"Mean reward{unit} per inner step of the {len(exp.configs)} configurations of the `{exp.name}` grid "
        f"({sizes}{'; ' + ', '.join(layout) if layout else ''}): the mean over {n} seeds with a 95% bootstrap "
        f"band{dashed}; drawn by `sortrl report` from the stored runs."
    )
