"""The report stage's outputs: `write_report` loads every experiment and writes its files.

`write_report(results)` reads every experiment stored under `results/runs/`
(`sortrl.experiment.load_experiment`, keeping only the curves the figures
draw) and writes, per experiment `<exp>`:

    results/figures/<exp>_<figure>.png   one file per entry of `sortrl.figures.FIGURES` that applies
    results/<exp>_summary.csv            one row per configuration (see `sortrl.experiment.summarize`)

and one `results/REPORT.md` (`sortrl.report`), every sentence of which is
generated from the experiments' findings (`sortrl.findings`); with `readme=`,
also the README's generated blocks (`sortrl.readme`), from the same findings.
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

from sortrl.experiment import experiment_names, load_experiment, summarize
from sortrl.figures import FIGURES, curve_metrics, save_figure
from sortrl.findings import Findings, findings
from sortrl.readme import read_readme, write_readme
from sortrl.report import render_report
from sortrl.store import atomic_write_text


def _experiment_outputs(results: Path, name: str) -> tuple[Findings, list[Path], list[warnings.WarningMessage]]:
    """Load one experiment, write its summary CSV and figures; return its findings, the paths and the warnings.

    Warnings (e.g. a skipped chunk) are returned, not shown, so that a worker process's reach the caller.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found, written = _outputs(results, name)
    return found, written, caught


def _outputs(results: Path, name: str) -> tuple[Findings, list[Path]]:
    exp = load_experiment(results, name, curve_metrics())
    summary = summarize(exp)
    path = results / f"{exp.name}_summary.csv"
    atomic_write_text(path, summary.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    written, drawn = [path], []
    for figure, spec in FIGURES.items():
        fig = spec.draw(exp, summary)
        path = results / "figures" / f"{exp.name}_{figure}.png"
        if fig is None:
            path.unlink(missing_ok=True)  # left from an earlier report, when the figure applied
            continue
        written.append(save_figure(fig, path))
        drawn.append(figure)
    return findings(exp, summary, drawn), written


def write_report(results: str | Path, readme: str | Path | None = None) -> list[Path]:
    """Write figures, `<exp>_summary.csv` files and `REPORT.md` under `results`; return the paths written.

    `readme`: also rewrite the generated `headline` and `findings` blocks of
    that Markdown file (`sortrl.readme.write_readme`). Its markers are checked
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
    for _, _, caught in outputs:
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    written = [path for _, paths, _ in outputs for path in paths]
    sections = [found for found, _, _ in outputs]
    report = results / "REPORT.md"
    atomic_write_text(report, render_report(sections))
    written.append(report)
    if readme is not None:
        written.append(write_readme(readme, sections, results))
    return written
