"""Execute the analysis notebooks on a results folder and write the executed copies, byte for byte reproducibly.

`make ablations` and `make report` run this after the report, so `results/notebooks/<name>.ipynb` holds each
notebook of `notebooks/` with its outputs (figures, tables, printed numbers) for the committed results. GitHub
renders them, so a reader sees what the notebooks show without running anything; the sources in `notebooks/` stay
output-free and diffable.

    python tools/execute_notebooks.py --results results            # writes results/notebooks/*.ipynb

A script here rather than a `sortrl` module: it works on the repository's `notebooks/` folder, which an installed
sortrl does not have, and needs the `dev` extra's nbclient, as `benchmarks/bench.py` needs the repository.

What makes two executions on the same stored runs give the same bytes:

- the kernel's working directory is the notebooks' folder and `SORTRL_RESULTS` is relative to it when the results
  lie inside the repository (`../results`, the notebooks' own default), so no checkout path is printed;
  `SORTRL_EXPERIMENT` is unset (each notebook's default experiment), `PYTHONHASHSEED=0`, IPython gets an empty
  configuration folder and matplotlib its own default matplotlibrc, so a user's profile or rc cannot change an output;
- nbclient runs with `record_timing=False` (no execution timestamps) and `coalesce_streams=True` (one output per
  cell and stream, however the kernel happened to flush its prints);
- the notebook keeps the kernel's `language_info` without the Python patch `version`;
- memory addresses in text outputs (`<object at 0x7f...>`) become `0x...` (the notebooks avoid such reprs anyway);
- inline PNGs are deterministic with the pinned matplotlib (no timestamp in PNG metadata).

The kernel talks over IPC sockets in a temporary folder (no TCP port to race for); the notebooks run side by side,
one kernel each (as many at once as there are cores). Every notebook runs before any
file is written, and each file is written atomically, so a failing cell leaves the previous copies whole.
Exit codes: 0 done, 1 a notebook failed (its cell and traceback are printed), 2 bad input.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from traitlets.config import Config

from sortrl.study.store import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 600  # seconds per cell; the full results load in a few
ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")  # id()-style addresses in default reprs
ADDRESS_MASK = "0x..."
TEXT_MIMES = ("text/plain", "text/html")
# matplotlib's defaults, found before a user's ~/.config/matplotlib/matplotlibrc (its font cache is still reused)
DEFAULT_MATPLOTLIBRC = Path(importlib.util.find_spec("matplotlib").origin).parent / "mpl-data" / "matplotlibrc"


class NotebookError(RuntimeError):
    """A cell of a notebook failed; the message names the notebook and holds the cell and its traceback."""


def kernel_results_path(results: Path, workdir: Path) -> str:
    """`SORTRL_RESULTS` for a kernel started in `workdir`: relative when `results` is in the repository."""
    results = results.resolve()
    return os.path.relpath(results, workdir) if results.is_relative_to(ROOT) else str(results)


def normalise(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop what differs between two executions of `notebook` (in place; returned for chaining).

    Removes `metadata.language_info.version` (the Python patch release) and masks memory addresses in
    stream text and in the text/plain and text/html of displayed values.
    """
    notebook.metadata.get("language_info", {}).pop("version", None)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = ADDRESS.sub(ADDRESS_MASK, output["text"])
            data = output.get("data", {})
            for mime in TEXT_MIMES:
                if mime in data:
                    data[mime] = ADDRESS.sub(ADDRESS_MASK, data[mime])
    return notebook


def render(notebook: nbformat.NotebookNode) -> str:
    """The text an executed copy is written as: `nbformat.write`'s layout (sorted keys, indent 1, final newline)."""
    return nbformat.writes(notebook) + "\n"


def execute(source: Path, results: Path, scratch: Path) -> nbformat.NotebookNode:
    """Run notebook `source` top to bottom on `results` in a fresh python3 kernel; return it with outputs.

    `scratch` is an empty folder for the kernel's IPython configuration. Raises `NotebookError` if a cell fails.
    """
    notebook = nbformat.read(source, as_version=4)
    env = {key: value for key, value in os.environ.items() if key != "SORTRL_EXPERIMENT"}
    env.update(
        SORTRL_RESULTS=kernel_results_path(results, source.parent),
        PYTHONHASHSEED="0",
        IPYTHONDIR=str(scratch / "ipython"),
        MATPLOTLIBRC=str(DEFAULT_MATPLOTLIBRC),
    )
    with tempfile.TemporaryDirectory(prefix="sortrl-kernel-") as sockets:  # short path: socket names are capped
        config = Config()  # for the kernel manager nbclient creates (and shuts down: it owns it)
        config.KernelManager.update(transport="ipc", ip=f"{sockets}/ipc", connection_file=f"{sockets}/kernel.json")
        client = NotebookClient(
            notebook,
            kernel_name="python3",
            config=config,
            timeout=CELL_TIMEOUT,
            record_timing=False,
            coalesce_streams=True,
            resources={"metadata": {"path": str(source.parent)}},  # the kernel's working directory
        )
        try:
            client.execute(env=env)
        except CellExecutionError as error:
            raise NotebookError(f"{source}: a cell failed\n{error}") from error
    return normalise(notebook)


def execute_all(results: Path, out: Path, notebooks: Path = NOTEBOOKS, say=lambda line: None) -> list[Path]:
    """Execute every `notebooks/*.ipynb` on `results`, then write each to `out/<name>.ipynb`; return the paths.

    Executed copies in `out` whose source notebook no longer exists are removed. Raises `NotebookError`
    (before writing anything) if a cell of any notebook fails. `say(line)`: what is being done, a line at the start
    and one per notebook executed (with its time).
    """
    sources = sorted(notebooks.glob("*.ipynb"))
    kernels = min(len(sources), os.cpu_count() or 1)
    say(f"notebooks: executing {len(sources)} notebooks of {notebooks} on {results}, {kernels} kernels at a time")
    done = []

    def timed(source: Path, folder: Path) -> dict:
        start = time.perf_counter()
        notebook = execute(source, results, folder)
        done.append(source)
        say(f"notebooks: {len(done)}/{len(sources)} {source.name} executed in {time.perf_counter() - start:.1f} s")
        return notebook

    with (
        tempfile.TemporaryDirectory(prefix="sortrl-notebooks-") as scratch,
        # one kernel process per notebook, run side by side (a thread here only waits on its kernel)
        concurrent.futures.ThreadPoolExecutor(max_workers=kernels) as pool,
    ):
        folders = [Path(scratch) / source.stem for source in sources]  # IPython configs of their own: no race
        for folder in folders:
            folder.mkdir()  # IPYTHONDIR's parent must exist, or IPython warns and falls back to a temp folder
        runs = pool.map(timed, sources, folders)
        executed = dict(zip((source.name for source in sources), runs, strict=True))  # raises the first failure
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, notebook in executed.items():
        atomic_write_text(out / name, render(notebook))
        written.append(out / name)
    for orphan in sorted(set(out.glob("*.ipynb")) - set(written)):
        orphan.unlink()
        print(f"removed {orphan} (no notebooks/{orphan.name})")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="results folder (with runs/)")
    parser.add_argument("--out", type=Path, help="where the executed copies go (default: RESULTS/notebooks)")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="folder of the source notebooks")
    args = parser.parse_args(argv)
    if not (args.results / "runs").is_dir():
        print(f"error: results: no runs folder at {args.results / 'runs'}; run `make ablations` first", file=sys.stderr)
        return 2
    if not any(args.notebooks.glob("*.ipynb")):
        print(f"error: notebooks: no .ipynb files in {args.notebooks}", file=sys.stderr)
        return 2
    try:
        written = execute_all(
            args.results, args.out or args.results / "notebooks", args.notebooks, lambda line: print(line, flush=True)
        )
    except NotebookError as error:
        print(f"{error}\nerror: {str(error).splitlines()[0]}; no executed notebook was written", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
