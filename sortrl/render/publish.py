"""The report stage's outputs: `write_report` loads every experiment and writes its files.

`write_report(results)` reads every experiment stored under `results/runs/`
(`sortrl.analysis.experiment.load_experiment`, keeping only the curves the figures
draw) and writes, per experiment `<exp>`:

    results/figures/<exp>_<figure>.png   one file per entry of `sortrl.render.figures.FIGURES` that applies
    results/<exp>_summary.csv            one row per configuration (see `sortrl.analysis.experiment.summarize`)

    results/figures/claim_<id>.png       one figure per declared claim (`sortrl.render.claim_figures`)

and one `results/REPORT.md` (`sortrl.render.report`), every sentence of which is
generated from the experiments' findings (`sortrl.analysis.findings`), and
`results/CLAIMS.md` (`sortrl.render.claims_md`): every claim the grids declare,
tested on their runs, Holm-corrected over the whole ledger (`sortrl.analysis.claims`),
with the same numbers in `results/claims.csv` (one row per test).
With `readme=`, also the README's generated blocks (`sortrl.render.readme`): the
trap figure and the ledger's verdict table, and the findings.
Diverged runs are listed and left out of every aggregate. The output is
deterministic: bootstraps use fixed seeds, tables are in grid order, and PNGs
carry no timestamp or version metadata, so running the report twice on the
same runs gives byte-identical files.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import joblib

from sortrl.analysis.claims import Test, ledger
from sortrl.analysis.claims import table as claims_table
from sortrl.analysis.claims import tests as claim_tests
from sortrl.analysis.experiment import experiment_names, load_experiment, stored_grid, summarize
from sortrl.analysis.findings import Findings, findings, link_shared
from sortrl.analysis.scores import DERIVED, SCORES
from sortrl.engine.registry import ConfigError
from sortrl.render.claim_figures import FIGURES as CLAIM_FIGURES
from sortrl.render.claim_figures import curves_needed
from sortrl.render.claim_figures import draw as draw_claim
from sortrl.render.claims_md import headline_claim
from sortrl.render.claims_md import render as render_claims
from sortrl.render.figures import FIGURES, curve_metrics, save_figure
from sortrl.render.readme import read_readme, write_readme
from sortrl.render.report import render_report
from sortrl.study.grid import Grid
from sortrl.study.store import atomic_write_text, runs_dir

Outputs = tuple[Findings, list[Test], dict[str, Path], list[Path], list[warnings.WarningMessage]]
"""What one experiment gives: findings, claim tests (uncorrected), claim figures by id, paths written, warnings."""


def _experiment_outputs(results: Path, name: str) -> Outputs:
    """Load one experiment, write its summary CSV and figures; return its findings, claim tests, paths and warnings.

    Warnings (e.g. a skipped chunk) are returned, not shown, so that a worker process's reach the caller.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found, tests, claim_figures, written = _outputs(results, name)
    return found, tests, claim_figures, written, caught


def _outputs(results: Path, name: str) -> tuple[Findings, list[Test], dict[str, Path], list[Path]]:
    grid = stored_grid(results, name)
    check_names(grid, runs_dir(results, name) / "grid.toml")
    exp = load_experiment(results, name, [*curve_metrics(), *curves_needed(list(grid.claims))], grid=grid)
    summary = summarize(exp)
    path = results / f"{exp.name}_summary.csv"
    atomic_write_text(path, summary.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    written, drawn = [path], []
    chosen = exp.grid.figures
    for figure, spec in FIGURES.items():
        fig = spec.draw(exp, summary) if chosen is None or figure in chosen else None
        path = results / "figures" / f"{exp.name}_{figure}.png"
        if fig is None:
            path.unlink(missing_ok=True)  # left from an earlier report, when the figure applied
            continue
        written.append(save_figure(fig, path))
        drawn.append(figure)
    tests = claim_tests(exp)
    figures = {}
    for claim in exp.grid.claims:
        path = results / "figures" / f"claim_{claim.id}.png"
        figures[claim.id] = save_figure(draw_claim(exp, claim, [t for t in tests if t.claim.id == claim.id]), path)
        written.append(path)
    return findings(exp, summary, drawn), tests, figures, written


def check_names(grid: Grid, path: str | Path) -> None:
    """The names `grid` gives the results side exist: its `figures`, each claim's `metric`, `x` and `figure`.

    `sortrl sweep` calls it before any training (a grid names them as strings; their registries live here, above
    the grid's own checks). Raises `ConfigError` naming the file, the field and the valid choices.
    """
    if grid.figures:
        unknown = sorted(set(grid.figures) - set(FIGURES))
        if unknown:
            raise ConfigError(f"{path}: figures: unknown figure {unknown[0]!r}; valid figures: {', '.join(FIGURES)}")
    metrics = [*SCORES, *DERIVED]
    for claim in grid.claims:
        for key in ("metric", "x"):
            value = getattr(claim, key)
            if value is not None and value not in metrics:
                raise ConfigError(
                    f"{path}: [[claim]] {claim.id}: {key}: unknown value {value!r}; valid choices: {', '.join(metrics)}"
                )
        figure = claim.figure
        if figure is not None and figure not in CLAIM_FIGURES and not figure.startswith("curves:"):
            choices = ", ".join([*CLAIM_FIGURES, "curves:<metric>"])
            raise ConfigError(
                f"{path}: [[claim]] {claim.id}: figure: unknown value {figure!r}; valid choices: {choices}"
            )


def write_report(results: str | Path, readme: str | Path | None = None) -> list[Path]:
    """Write figures, `<exp>_summary.csv` files and `REPORT.md` under `results`; return the paths written.

    `readme`: also rewrite the generated `headline` and `findings` blocks of
    that Markdown file (`sortrl.render.readme.write_readme`). Its markers are checked
    before anything is written, so a file without them fails fast with a
    `ConfigError` that names the file and the marker.
    """
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
    for *_, caught in outputs:
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    written = [path for *_, paths, _ in outputs for path in paths]
    sections = link_shared([found for found, *_ in outputs])  # the one finding across experiments
    tests = ledger([t for _, mine, *_ in outputs for t in mine])  # Holm over every claim of every grid
    figures = {claim_id: path for _, _, mine, *_ in outputs for claim_id, path in mine.items()}
    _check_claim_ids(tests)
    claims_md, claims_csv = results / "CLAIMS.md", results / "claims.csv"
    if tests:
        links = {k: Path(os.path.relpath(v, results)).as_posix() for k, v in figures.items()}
        atomic_write_text(claims_md, render_claims(tests, links))
        atomic_write_text(claims_csv, claims_table(tests).to_csv(index=False, float_format="%.6g", lineterminator="\n"))
        written += [claims_md, claims_csv]
    else:
        for path in (claims_md, claims_csv):
            path.unlink(missing_ok=True)  # left from an earlier report
    report = results / "REPORT.md"
    atomic_write_text(report, render_report(sections, tests))
    written.append(report)
    if readme is not None:
        headline = headline_claim(tests)
        trap = figures.get(headline) if headline is not None else None
        written.append(write_readme(readme, sections, results, tests, trap))
    return written


def _check_claim_ids(tests: list[Test]) -> None:
    """Claim ids name one claim across the whole ledger (its figure, its section): `ConfigError` otherwise."""
    where: dict[str, str] = {}
    for t in tests:
        if where.setdefault(t.claim.id, t.experiment) != t.experiment:
            raise ConfigError(
                f"claim: id {t.claim.id!r} is declared by grids {where[t.claim.id]!r} and {t.experiment!r}"
            )
