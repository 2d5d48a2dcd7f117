"""What a reader sees of the notebooks (#15): the executed copies in results/notebooks/, their byte-for-byte
regeneration by tools/execute_notebooks.py, and `make notebooks` serving JupyterLab.

A reader must see every figure: a code cell that calls `plt.show()` or a `sortrl.render.figures.plot_*` function has to
show at least one PNG, and no cell may show an error or stderr (a warning would also print a checkout's path).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXECUTED = ROOT / "results" / "notebooks"
TOOL = ROOT / "tools" / "execute_notebooks.py"
FIGURE_CALL = re.compile(r"plt\.show\(\)|\bfigures\.plot_\w+\(")
URL = re.compile(r"http://(?:localhost|127\.0\.0\.1):(\d+)/lab\?token=(\w+)")

spec = importlib.util.spec_from_file_location("execute_notebooks", TOOL)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def problems(notebook: nbformat.NotebookNode) -> list[str]:
    """What a reader of executed `notebook` would miss or should not see; empty when it is fine."""
    found = []
    for cell in (c for c in notebook.cells if c.cell_type == "code"):
        outputs = cell.get("outputs", [])
        if cell.get("execution_count") is None:
            found.append(f"{cell.id}: not executed")
        for output in outputs:
            if output.output_type == "error":
                found.append(f"{cell.id}: {output.ename}: {output.evalue}")
            if output.output_type == "stream" and output.name == "stderr":
                found.append(f"{cell.id}: stderr {output.text[:300]!r}")
        if FIGURE_CALL.search(cell.source) and not any("image/png" in o.get("data", {}) for o in outputs):
            found.append(f"{cell.id}: draws a figure but shows no image")
    if not any("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", [])):
        found.append("no figure at all")
    return found


def _cells(notebook: nbformat.NotebookNode) -> list[tuple[str, str, str]]:
    return [(cell.id, cell.cell_type, cell.source) for cell in notebook.cells]


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_committed_executed_notebook_shows_its_figures_and_no_errors(source):
    path = EXECUTED / source.name
    assert path.exists(), f"{path} missing: run `make report` (or `make ablations`)"
    executed = nbformat.read(path, as_version=4)
    assert problems(executed) == []
    assert _cells(executed) == _cells(nbformat.read(source, as_version=4)), (
        f"{path} is stale (its cells differ from {source}): run `make report` to execute the current notebook"
    )
    assert path.read_text() == tool.render(tool.normalise(copy.deepcopy(executed))), (
        f"{path} was not written by tools/execute_notebooks.py"
    )


def test_every_executed_copy_has_a_source():
    assert sorted(p.name for p in EXECUTED.glob("*.ipynb")) == [p.name for p in SOURCES]


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_source_notebooks_are_output_free(source):
    notebook = nbformat.read(source, as_version=4)
    dirty = [c.id for c in notebook.cells if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, (
        f"{source.name}: cells {dirty} have outputs; clear them (`.venv/bin/jupyter nbconvert --clear-output "
        f"--inplace notebooks/*.ipynb`): executed copies live in results/notebooks/"
    )


def test_normalise_masks_addresses_and_the_python_version():
    notebook = nbformat.v4.new_notebook(metadata={"language_info": {"name": "python", "version": "3.11.7"}})
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            outputs=[
                nbformat.v4.new_output("stream", name="stdout", text="<object object at 0x7f3a2c1b9e40>\n"),
                nbformat.v4.new_output(
                    "execute_result", {"text/plain": "[<Line2D at 0x7F00AA11>]", "image/png": "0x7f3a2c1b9e40"}
                ),
            ]
        )
    )
    tool.normalise(notebook)
    stream, result = notebook.cells[0].outputs
    assert notebook.metadata.language_info == {"name": "python"}
    assert stream.text == "<object object at 0x...>\n"
    assert result.data["text/plain"] == "[<Line2D at 0x...>]"
    assert result.data["image/png"] == "0x7f3a2c1b9e40"  # binary payloads are left alone


def test_kernel_results_path_is_relative_inside_the_repository(tmp_path):
    assert tool.kernel_results_path(ROOT / "results", ROOT / "notebooks") == "../results"
    assert tool.kernel_results_path(tmp_path, ROOT / "notebooks") == str(tmp_path)


def test_bad_results_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert tool.main(["--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no runs folder at {tmp_path / 'runs'}" in err
    assert not (tmp_path / "notebooks").exists()


@pytest.mark.slow
def test_a_failing_cell_writes_nothing_and_keeps_the_old_copies(tmp_path, capsys):
    sources, out = tmp_path / "sources", tmp_path / "out"
    sources.mkdir()
    out.mkdir()
    (tmp_path / "runs").mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")]), sources / "a.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")]), sources / "b.ipynb")
    (out / "a.ipynb").write_text("previous copy")
    assert tool.main(["--results", str(tmp_path), "--out", str(out), "--notebooks", str(sources)]) == 1
    assert (out / "a.ipynb").read_text() == "previous copy" and not (out / "b.ipynb").exists()
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in err and err.splitlines()[-1].startswith(
        f"error: {sources / 'b.ipynb'}: a cell failed"
    )


@pytest.mark.slow
def test_kernels_start_without_warnings(tmp_path, capfd):
    """Each kernel gets an IPython folder that can be created (its parent exists): no fallback warning on stderr."""
    sources = tmp_path / "sources"
    sources.mkdir()
    (tmp_path / "runs").mkdir()
    for name in ("a", "b"):
        nbformat.write(
            nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")]), sources / f"{name}.ipynb"
        )
    assert tool.main(["--results", str(tmp_path), "--out", str(tmp_path / "out"), "--notebooks", str(sources)]) == 0
    assert "not a writable location" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def tiny_runs(report_results):
    return report_results[0]  # the report tests' sweep and report (tests/conftest.py), not a sweep of its own


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)  # one test each: xdist can run them at once
def test_regenerating_on_the_same_runs_gives_identical_bytes(source, tiny_runs, tmp_path):
    first, second = (tool.render(tool.execute(source, tiny_runs, tmp_path)) for _ in range(2))
    assert first == second
    assert problems(nbformat.reads(first, as_version=4)) == []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_when_listening(url: str, seconds: float = 30) -> bytes:
    """GET `url`, retrying while the server refuses connections (it logs its URL just before it listens)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=seconds) as response:
                return response.read()
        except urllib.error.URLError as error:
            if not isinstance(error.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def _cmdline(process: psutil.Process) -> str:
    """A process's command line, or "" for one that exited (a short-lived helper can turn zombie mid-listing)."""
    try:
        return " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return ""


@pytest.mark.slow
def test_make_notebooks_serves_the_notebooks_over_http(tmp_path):
    """`make notebooks` starts JupyterLab on notebooks/ and prints its URL; the token guards it; it stops cleanly."""
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    stamps = ["-o", ".venv/.installed", "-o", ".venv/.notebooks-installed"]  # installed by `make test`: no pip here
    command = ["make", "--no-print-directory", "-C", str(ROOT), *stamps, "notebooks"]
    command.append(f"JUPYTER_ARGS=--no-browser --port={_free_port()}")  # jupyter moves on if the port got taken
    make = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(make.stdout, lines), daemon=True).start()
    printed, match, deadline = [], None, time.monotonic() + 120
    try:
        while match is None and time.monotonic() < deadline and make.poll() is None:
            with contextlib.suppress(queue.Empty):
                printed.append(lines.get(timeout=1))
                match = URL.search(printed[-1])
        assert match, "no JupyterLab URL printed:\n" + "".join(printed)
        port, token = match.groups()
        base = f"http://127.0.0.1:{port}"
        names = {
            item["name"] for item in json.loads(_get_when_listening(f"{base}/api/contents?token={token}"))["content"]
        }
        assert {p.name for p in SOURCES} <= names
        with urllib.request.urlopen(f"{base}/lab?token={token}", timeout=30) as response:
            assert response.status == 200 and "JupyterLab" in response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/contents", timeout=30)
        assert refused.value.code == 403
        server = [p for p in psutil.Process(make.pid).children(recursive=True) if "jupyter-lab" in _cmdline(p)]
        assert [p.environ()["SORTRL_RESULTS"] for p in server] == [str(ROOT / "results")]
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST"), timeout=30)
        assert make.wait(timeout=60) == 0
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGTERM)  # the session this test started (make, its shell, jupyter)
            make.wait(timeout=30)
