"""The report stage's outputs: `write_report` loads every experiment and writes its files.

One straight path: per experiment (one process each), its stored runs are loaded
and scored once (`sortrl.analysis.experiment.load_experiment`, keeping only the
curves the figures draw), analysed (summary, claim tests, findings) and drawn;
then, across experiments, the shared runs and the ledger; then the Markdown;
and only then is anything written (`sortrl.study.store.write_files`), so a
report that fails leaves the results folder as it was. Per experiment `<exp>`:

    results/figures/<exp>_<figure>.png   one file per entry of `sortrl.render.figures.FIGURES` that applies
    results/<exp>_summary.csv            one row per configuration (see `sortrl.analysis.experiment.summarize`)

    results/figures/claim_<id>.png       one figure per declared claim (`sortrl.render.claim_figures`)

and one `results/REPORT.md` (`sortrl.render.report`), every sentence of which is
generated from the experiments' findings (`sortrl.analysis.findings`), and
`results/CLAIMS.md` (`sortrl.render.claims_md`): every claim the grids declare,
tested on their runs, Holm-corrected over the whole ledger (`sortrl.analysis.claims`),
with the same numbers in `results/claims.csv` (one row per test), and, when pilot
grids are stored, `results/PILOT.md` (`sortrl.render.pilot_md`): what they tried and chose.
With `readme=`, also the README's generated blocks (`sortrl.render.readme`): the
trap figure and the ledger's verdict table, and the findings.
Diverged runs are listed and left out of every aggregate. The output is
deterministic: bootstraps use fixed seeds, tables are in grid order, and PNGs
carry no timestamp or version metadata, so running the report twice on the
same runs gives byte-identical files.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from sortrl.analysis.claims import Test, check_metrics, ledger
from sortrl.analysis.claims import table as claims_table
from sortrl.analysis.claims import tests as claim_tests
from sortrl.analysis.experiment import load_experiment, same_runs, summarize, sweep_records
from sortrl.analysis.findings import Findings, findings, link_shared
from sortrl.analysis.pilot import outcome as pilot_outcome
from sortrl.engine.registry import ConfigError, PluginImportError
from sortrl.render import cache
from sortrl.render.claim_figures import AFTER_LEDGER, curves_needed, figure_name
from sortrl.render.claim_figures import FIGURES as CLAIM_FIGURES
from sortrl.render.claim_figures import draw as draw_claim
from sortrl.render.claims_md import headline_claim
from sortrl.render.claims_md import render as render_claims
from sortrl.render.figures import FIGURES, curve_metrics, png_bytes
from sortrl.render.pilot_md import render as render_pilots
from sortrl.render.readme import read_readme, readme_text
from sortrl.render.report import render_report
from sortrl.study.grid import Grid, check_claim_ids, parse_grid, search_for_plugins
from sortrl.study.store import experiment_names, runs_dir, write_files
from sortrl.study.sweep import _sigint_blocked, worker_executor


class Outputs(NamedTuple):
    """What one experiment gives the report: its analysis, its files' bytes, and what it saw."""

    findings: Findings | None
    """None: the experiment is left out (a plug-in of its grid cannot be imported; a warning says so)."""
    tests: list[Test]
    """Its claims' tests, uncorrected (`ledger` corrects them over every grid)."""
    claim_figures: dict[str, Path]
    """Where each claim's figure goes, by claim id."""
    files: dict[Path, bytes]
    """Every file to write, in the order `sortrl report` lists them."""
    stale: list[Path]
    """Figures of an earlier report that no longer apply."""
    warnings: list[warnings.WarningMessage]


def _experiment_outputs(results: Path, name: str, grid_file: tuple[Path, str] | None = None) -> Outputs:
    """Load, analyse and draw one experiment, in that order; nothing is written here (`write_report` does it).

    `grid_file`: (path, text) of the user's grid file to use instead of the stored copy (same runs, its claims).
    Warnings (e.g. a skipped chunk) are returned, not shown, so that a worker process's reach the caller.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exp = load_experiment(results, name, curve_metrics(), claim_curves=curves_needed, grid_file=grid_file)
        except PluginImportError as err:  # its runs cannot be matched (their ids hash the plug-in's code): the
            # other experiments are still reported
            warnings.warn(
                f"{name}: left out of the report, {err}; make the plug-in importable here (on PYTHONPATH, or beside "
                "a grid file given with --grid) to report it",
                LeftOutWarning,
                stacklevel=2,
            )
            return Outputs(None, [], {}, {}, [], caught)
        source = grid_file[0] if grid_file is not None else exp.folder / "grid.toml"
        check_metrics(exp.grid, source)  # before the claims' tests read them
        summary = summarize(exp)
        tests = claim_tests(exp)
        found = findings(exp, summary)
        check_figures(exp.grid, source)
        files = {results / summary_file(name): _csv(summary)}
        stale, drawn = [], []
        chosen = exp.grid.figures
        for figure, spec in FIGURES.items():
            fig = spec.draw(exp, summary) if chosen is None or figure in chosen else None
            path = results / figure_file(name, figure)
            if fig is None:
                stale.append(path)  # left from an earlier report, when the figure applied
                continue
            files[path] = png_bytes(fig)
            drawn.append(figure)
        claim_figures = {}
        for claim in exp.grid.claims:
            path = claim_figures[claim.id] = results / claim_figure_file(claim.id)
            if figure_name(claim) not in AFTER_LEDGER:  # the others print verdicts: `_after_ledger` draws them
                files[path] = png_bytes(draw_claim(exp, claim, [t for t in tests if t.claim.id == claim.id]))
    return Outputs(replace(found, figures=drawn), tests, claim_figures, files, stale, caught)


def _after_ledger(outputs: list[Outputs], tests: list[Test]) -> dict[Path, bytes]:
    """The claim figures that print their tests' verdicts (`AFTER_LEDGER`), from the ledger's corrected `tests`: a
    step's verdict depends on every grid's tests (Holm), so no experiment can draw it alone."""
    files = {}
    for out in outputs:
        exp = out.findings.experiment
        for claim in exp.grid.claims:
            if figure_name(claim) in AFTER_LEDGER:
                mine = [t for t in tests if t.claim.id == claim.id]
                files[out.claim_figures[claim.id]] = png_bytes(draw_claim(exp, claim, mine))
    return files


class Done(NamedTuple):
    """One experiment's part of the report, as `write_report`'s `on_experiment` hears of it."""

    name: str
    cached: bool
    """Whether its outputs came from its report cache (`sortrl.render.cache`)."""
    seconds: float
    """How long it took (loading, analysing and drawing; or reading the cache)."""


def _outputs(results: Path, name: str, grid_file: tuple[Path, str] | None, key: bytes | None) -> tuple[Outputs, Done]:
    """`_experiment_outputs`, then stored in the experiment's report cache under `key` (`sortrl.render.cache`)."""
    start = time.perf_counter()
    out = _experiment_outputs(results, name, grid_file)
    if out.findings is not None:  # a left-out experiment (its plug-in missing here) is tried again next time
        cache.store(results, name, key, out)
    return out, Done(name, False, time.perf_counter() - start)


def _cached(results: Path, name: str, grid_file: tuple[Path, str] | None, use_cache: bool) -> tuple[Any, Any]:
    """(key, cached `Outputs` or None) of one experiment: None and None without the cache."""
    if not use_cache:
        return None, None
    if grid_file is not None:
        grid = f"{grid_file[0]}\n{grid_file[1]}"
    else:
        try:
            grid = (runs_dir(results, name) / "grid.toml").read_text()
        except OSError:  # the uncached path says what is wrong
            return None, None
    if "plugins" in grid:  # its runs depend on plug-in code the key does not cover: always computed afresh
        return None, None
    key = cache.key(results, name, grid)
    out = cache.load(results, name, key)
    if out is None:
        return key, None
    exp = out.findings.experiment  # the sweep records of now (a sweep that trained nothing rewrote them)
    manifest, trained_by = sweep_records(exp.folder)
    findings = replace(out.findings, experiment=replace(exp, manifest=manifest, trained_by=trained_by))
    return key, out._replace(findings=findings)


def _in_workers(
    jobs: int,
    results: Path,
    names: list[str],
    files: list,
    keys: list,
    cost: list[float],
    heard: Callable[[int, Outputs, Done], None],
) -> None:
    """`_outputs` of each experiment in `jobs` loky processes, which ignore Ctrl-C and exit within a second of this
    process's death, also while they start (`sortrl.study.sweep.worker_executor`); stopped at once if this process is interrupted or fails.
    `heard(i, outputs, done)` as experiment i is ready. The costliest experiments (`cost`, e.g. their stored bytes)
    are handed out first, so no process is left with a long one at the end."""
    order = sorted(range(len(names)), key=lambda i: -cost[i])
    executor = None
    try:
        # the processes start with Ctrl-C blocked, and a SIGTERM (`sortrl report`'s handler unwinds) meanwhile is
        # handled once they are up: raised while one starts, it left a half-started process to wait for
        with _sigint_blocked():
            executor = worker_executor(jobs, idle_seconds=30)
            futures = {executor.submit(_outputs, results, names[i], files[i], keys[i]): i for i in order}
        for future in concurrent.futures.as_completed(futures):
            heard(futures[future], *future.result())
    except BaseException:
        if executor is not None:
            executor.shutdown(wait=False, kill_workers=True)
        raise


def _all_outputs(
    results: Path,
    names: list[str],
    files: list,
    use_cache: bool,
    on_experiment: Callable[[Done], None] | None,
    on_plan: Callable[[list[str], list[str]], None] | None,
) -> list[Outputs]:
    """Every experiment's `Outputs`: from its report cache when unchanged (read here: no process to start), else
    computed, by `_in_workers` when more than one is, and cached."""
    found: dict[int, Outputs] = {}
    keys = []

    def heard(i: int, out: Outputs, done: Done) -> None:
        found[i] = out
        if on_experiment is not None:
            on_experiment(done)

    cached: dict[int, tuple[Outputs, Done]] = {}
    for i, name in enumerate(names):
        start = time.perf_counter()
        key, out = _cached(results, name, files[i], use_cache)
        keys.append(key)
        if out is not None:
            cached[i] = out, Done(name, True, time.perf_counter() - start)
    todo = [i for i in range(len(names)) if i not in cached]
    if on_plan is not None:
        on_plan([names[i] for i in cached], [names[i] for i in todo])
    for i, (out, done) in cached.items():
        heard(i, out, done)
    jobs = min(len(todo), os.cpu_count() or 1)
    if jobs > 1:  # one experiment per process: figures are independent and each process draws them identically
        cost = [_stored_bytes(results, names[i]) for i in todo]
        picked = [names[i] for i in todo], [files[i] for i in todo], [keys[i] for i in todo]
        _in_workers(jobs, results, *picked, cost, lambda j, out, done: heard(todo[j], out, done))
    else:
        for i in todo:
            heard(i, *_outputs(results, names[i], files[i], keys[i]))
    return [found[i] for i in range(len(names))]


def _stored_bytes(results: Path, name: str) -> float:
    """The size of an experiment's stored chunks: how long its report takes, roughly."""
    return float(sum(p.stat().st_size for p in runs_dir(results, name).glob("chunk-*.parquet")))


class StaleGridWarning(UserWarning):
    """A grid file differs from the copy its sweep stored, which the report reads."""


class LeftOutWarning(UserWarning):
    """An experiment is left out of the report: a plug-in its grid names cannot be imported."""


def _grid_name(text: str) -> str | None:
    try:
        name = tomllib.loads(text).get("name")
    except tomllib.TOMLDecodeError:
        return None
    return name if isinstance(name, str) else None


def _given_grids(results: Path, grids: list[str | Path], names: list[str]) -> dict[str, tuple[Path, str]]:
    """The grid files the user gave, by experiment name: (path, text); `ConfigError` for one not stored or whose
    seeds or configurations are not the stored runs' (`sortrl.analysis.experiment.same_runs`)."""
    out = {}
    for path in map(Path, grids):
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"grid: cannot read {path} ({err.strerror or err})") from None
        name = _grid_name(text)
        if name not in names:
            stored = ", ".join(names) or "none"
            raise ConfigError(f"grid: {path} names experiment {name!r}, which has no stored runs (stored: {stored})")
        search_for_plugins(path, text)
        copy = runs_dir(results, name) / "grid.toml"
        same_runs(parse_grid(text, path), parse_grid(copy.read_text(), copy), path)  # before any work
        out[name] = (path, text)
    return out


def _warn_stale(results: Path, names: list[str], given: dict, experiments: str | Path | None) -> None:
    """Warn, per experiment, when a grid file of that name under `experiments` differs from the stored copy; the
    plug-ins those files name are found beside them."""
    if experiments is None or not Path(experiments).is_dir():
        return
    for path in sorted(Path(experiments).rglob("*.toml")):
        try:
            text = path.read_text()
        except OSError:
            continue
        name = _grid_name(text)
        if name not in names or name in given:
            continue
        search_for_plugins(path, text)
        stored = runs_dir(results, name) / "grid.toml"
        if stored.is_file() and stored.read_text() != text:
            warnings.warn(
                f"{name}: {path} differs from the copy its sweep stored ({stored}), which the report uses; "
                f"`sortrl report --grid {path}` uses yours on the same runs (or re-run its sweep)",
                StaleGridWarning,
                stacklevel=3,
            )


def _csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False, float_format="%.6g", lineterminator="\n").encode("utf-8")


def summary_file(experiment: str) -> str:
    """Where an experiment's summary table goes, relative to the results folder."""
    return f"{experiment}_summary.csv"


def figure_file(experiment: str, figure: str) -> str:
    """Where an experiment's report figure goes, relative to the results folder."""
    return f"figures/{experiment}_{figure}.png"


def claim_figure_file(claim_id: str) -> str:
    """Where a claim's figure goes, relative to the results folder."""
    return f"figures/claim_{claim_id}.png"


def check_outputs(grids: list[tuple[str, Grid]]) -> None:
    """No two experiments' outputs share a file (experiment `claim`'s figure `final_reward` and a claim with id
    `final_reward` would both be `figures/claim_final_reward.png`): `ConfigError` naming the file and both owners.

    `grids`: (experiment name, grid) pairs; every figure that might apply counts.
    """
    owner: dict[str, str] = {}
    for name, grid in grids:
        mine = [
            (summary_file(name), f"experiment {name!r}"),
            *(
                (figure_file(name, f), f"experiment {name!r}")
                for f in FIGURES
                if grid.figures is None or f in grid.figures
            ),
            *((claim_figure_file(c.id), f"claim {c.id!r} of experiment {name!r}") for c in grid.claims),
        ]
        for path, who in mine:
            first = owner.setdefault(path, who)
            if first != who:
                raise ConfigError(f"{path}: would be written for both {first} and {who}; rename one of them")


def check_names(grid: Grid, path: str | Path) -> None:
    """The names `grid` gives the results side exist: its `figures`, each claim's `metric`, `x` and `figure`.

    `sortrl sweep` calls it before any training (a grid names them as strings; their registries live here, above
    the grid's own checks). Raises `ConfigError` naming the file, the field and the valid choices.
    """
    check_metrics(grid, path)
    check_figures(grid, path)


def check_figures(grid: Grid, path: str | Path) -> None:
    """The figures `grid` names exist: its `figures` (`FIGURES`) and each claim's `figure` (`CLAIM_FIGURES`)."""
    if grid.figures:
        unknown = sorted(set(grid.figures) - set(FIGURES))
        if unknown:
            raise ConfigError(f"{path}: figures: unknown figure {unknown[0]!r}; valid figures: {', '.join(FIGURES)}")
    for claim in grid.claims:
        figure = claim.figure
        if figure is not None and figure not in CLAIM_FIGURES and not figure.startswith("curves:"):
            choices = ", ".join([*CLAIM_FIGURES, "curves:<metric>"])
            raise ConfigError(
                f"{path}: [[claim]] {claim.id}: figure: unknown value {figure!r}; valid choices: {choices}"
            )


def write_report(
    results: str | Path,
    readme: str | Path | None = None,
    grids: list[str | Path] = (),
    experiments: str | Path | None = "experiments",
    use_cache: bool = True,
    on_experiment: Callable[[Done], None] | None = None,
    on_plan: Callable[[list[str], list[str]], None] | None = None,
) -> list[Path]:
    """Write figures, `<exp>_summary.csv` files and `REPORT.md` under `results`; return the paths written.

    `readme`: also rewrite the generated `headline` block of
    that Markdown file (`sortrl.render.readme.write_readme`). Its markers are checked
    before anything is written, so a file without them fails fast with a
    `ConfigError` that names the file and the marker.
    `grids`: grid files to use instead of the copies their sweeps stored (their claims and figures, on the
    stored runs: the seeds and configurations must be the same); `ConfigError` for one whose experiment is
    not stored. Any other experiment whose grid file under `experiments` (a folder, searched recursively)
    differs from its stored copy is warned about, naming both (`StaleGridWarning`). The plug-ins of those grid
    files are found beside them; an experiment whose plug-in cannot be imported is left out (`LeftOutWarning`).
    `use_cache`: reuse each experiment's outputs from its report cache while nothing they depend on changed
    (`sortrl.render.cache`; the files are the same bytes either way). `on_plan(cached, to_compute)` is called with
    the experiments' names once the caches are read, `on_experiment` with each experiment's `Done` as it is ready.
    """
    results = Path(results)
    readme = Path(readme) if readme is not None else None
    readme_before = read_readme(readme) if readme is not None else None
    names = experiment_names(results)
    given = _given_grids(results, grids, names)
    _warn_stale(results, names, given, experiments)
    files = [given.get(name) for name in names]
    outputs = _all_outputs(results, names, files, use_cache, on_experiment, on_plan)
    for out in outputs:
        for warning in out.warnings:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    kept = [i for i, out in enumerate(outputs) if out.findings is not None]  # the others are left out (warned)
    names, outputs = [names[i] for i in kept], [outputs[i] for i in kept]
    # across experiments: the runs they share and the ledger (Holm over every claim of every grid)
    sections = link_shared([out.findings for out in outputs])
    tests = ledger([t for out in outputs for t in out.tests])
    check_claim_ids([(out.findings.experiment.folder / "grid.toml", out.findings.experiment.grid) for out in outputs])
    check_outputs([(name, out.findings.experiment.grid) for name, out in zip(names, outputs)])
    figures = {claim_id: path for out in outputs for claim_id, path in out.claim_figures.items()}
    files = {path: data for out in outputs for path, data in out.files.items()}
    files.update(_after_ledger(outputs, tests))
    stale = [path for out in outputs for path in out.stale]
    pilots = [out.findings.experiment for out in outputs if out.findings.experiment.grid.pilot is not None]
    ledger_grids = [out.findings.experiment.grid for out in outputs if out.findings.experiment.grid.claims]
    if pilots:
        files[results / "PILOT.md"] = render_pilots([pilot_outcome(e, ledger_grids) for e in pilots]).encode("utf-8")
    else:
        stale.append(results / "PILOT.md")  # left from an earlier report
    claims_md, claims_csv = results / "CLAIMS.md", results / "claims.csv"
    if tests:
        links = {k: Path(os.path.relpath(v, results)).as_posix() for k, v in figures.items()}
        files[claims_md] = render_claims(tests, links).encode("utf-8")
        files[claims_csv] = _csv(claims_table(tests))
    else:
        stale += [claims_md, claims_csv]  # left from an earlier report
    files[results / "REPORT.md"] = render_report(sections, tests).encode("utf-8")
    if readme is not None:
        headline = headline_claim(tests)
        trap = figures.get(headline) if headline is not None else None
        text = readme_text(readme_before, readme, sections, results, tests, trap)
        if text != readme_before:  # a README whose blocks already say this is not touched
            files[readme] = text.encode("utf-8")
    written = write_files(files, stale)
    return written if readme is None or readme in files else [*written, readme]
