"""Where `make ablations`' time goes: its three phases from scratch, per grid, per experiment and per notebook.

Runs what `make ablations` runs, into an empty temporary results folder (a fresh clone's case: nothing stored,
no report cache), each phase a subprocess timed by its wall clock:

1. `sortrl sweep` of every grid file of `experiments/` (the Makefile's `GRIDS`, in its order), in one queue; per grid, the
   workers' time on its chunks (`worker_seconds` of its manifest), its runs and run-steps;
2. `sortrl report` (with a copy of the README for its generated block); per experiment, the seconds it reports;
3. the notebooks' execution (`tools/execute_notebooks.py`); per notebook, its seconds;

then `sortrl report` again with nothing changed (every experiment from its report cache). Prints a table and,
with `--readme docs/engine.md`, rewrites that file's generated `ablations-time` block (nothing in it is typed by
hand). `make bench` runs it last; alone: `python benchmarks/ablations_time.py --readme docs/engine.md` (~6 min
on 2 cores). Nothing else should run meanwhile: the numbers are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def grids() -> list[Path]:
    """The grid files `make ablations` sweeps, in its order (the Makefile's `GRIDS`, from `make grids`)."""
    listed = subprocess.run(["make", "-s", "grids"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in listed.stdout.split()]


def timed(command: list[str | Path], log: Path) -> tuple[float, str]:
    """Run `command` from the repository's root, its output into `log`; (wall seconds, output). Raises on failure."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    done = subprocess.run([str(c) for c in command], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(map(str, command))} failed (exit {done.returncode}); see {log}")
    return seconds, done.stdout + done.stderr


def measure(work: Path) -> dict:
    """Every phase's wall time and its parts (see the module docstring), from an empty `work/results`."""
    results, readme = work / "results", work / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    sweep, _ = timed([BIN / "sortrl", "sweep", *grids(), "--results", results], work / "sweep.log")
    per_grid = []
    for manifest in sorted((results / "runs").glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        per_grid.append({"grid": m["experiment"], "runs": m["runs"], "worker_seconds": m.get("worker_seconds")})
    report_command = [BIN / "sortrl", "report", "--results", results, "--readme", readme]
    report, out = timed(report_command, work / "report.log")
    per_experiment = {
        m[1]: float(m[2]) for m in re.finditer(r"report: \d+/\d+ (\S+): analysed and drawn in ([\d.]+) s", out)
    }
    notebook_command = [BIN / "python", "tools/execute_notebooks.py", "--results", results]
    notebooks, out = timed([*notebook_command, "--out", work / "notebooks"], work / "notebooks.log")
    per_notebook = {m[1]: float(m[2]) for m in re.finditer(r"notebooks: \d+/\d+ (\S+) executed in ([\d.]+) s", out)}
    again, _ = timed(report_command, work / "report-again.log")
    return {
        "sweep": sweep,
        "report": report,
        "notebooks": notebooks,
        "report_again": again,
        "per_grid": per_grid,
        "per_experiment": per_experiment,
        "per_notebook": per_notebook,
        "cores": os.cpu_count(),
    }


def block(m: dict) -> str:
    """The generated Markdown block: phases, then their parts, biggest first."""
    total = m["sweep"] + m["report"] + m["notebooks"]
    lines = [
        f"Measured by `benchmarks/ablations_time.py` (run by `make bench`) on {m['cores']} cores: `make ablations`' "
        "three phases from an empty results folder (a fresh clone's case; the install excluded), each a wall time:",
        "",
        "| phase | seconds |",
        "| --- | ---: |",
        f"| training: `sortrl sweep` of every grid, one queue | {m['sweep']:.1f} |",
        f"| report: `sortrl report` (nothing cached) | {m['report']:.1f} |",
        f"| notebooks: executed into `results/notebooks/` | {m['notebooks']:.1f} |",
        f"| **make ablations** | **{total:.1f}** |",
        f"| a second `sortrl report`, nothing changed (every experiment from its cache) | {m['report_again']:.1f} |",
        "",
        "Per grid, the workers' seconds on its chunks (they sum to about the cores times the training phase); per "
        "experiment, the seconds its report took on one process (two run at once); per notebook, its execution "
        "(two kernels at once):",
        "",
        "| grid | runs | worker s | experiment's report s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for g in sorted(m["per_grid"], key=lambda g: -(g["worker_seconds"] or 0)):
        report = m["per_experiment"].get(g["grid"])
        lines.append(
            f"| {g['grid']} | {g['runs']:,} | {g['worker_seconds'] or 0:.1f} | "
            f"{'' if report is None else f'{report:.1f}'} |"
        )
    lines += ["", "| notebook | s |", "| --- | ---: |"]
    lines += [f"| {name} | {s:.1f} |" for name, s in sorted(m["per_notebook"].items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="rewrite this file's generated ablations-time block")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sortrl-ablations-time-") as work:
        measured = measure(Path(work))
    text = block(measured)
    print(text)
    if args.readme is not None:
        sys.path.insert(0, str(ROOT))
        from sortrl.render.readme import replace_blocks
        from sortrl.study.store import atomic_write_text

        atomic_write_text(args.readme, replace_blocks(args.readme.read_text(), {"ablations-time": text}, args.readme))
        print(f"wrote the ablations-time block of {args.readme}")


if __name__ == "__main__":
    main()
