"""The analysis notebooks run top to bottom on a small results set and agree with the report."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(name: str, results: Path, monkeypatch) -> str:
    """Execute notebook `name` in a fresh python3 kernel; return its printed text."""
    monkeypatch.setenv("SORTRL_RESULTS", str(results))
    monkeypatch.setenv("SORTRL_EXPERIMENT", "tiny")  # the shared results also hold `lengths`
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was shown"
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def test_explore_notebook_rebuilds_a_report_figure(results, monkeypatch):
    text = _run("01-explore-results.ipynb", results, monkeypatch)
    assert "this notebook: tiny" in text
    assert "18 runs" in text and "diverged runs: 0" in text
    assert f"same bytes as {results / 'figures' / 'tiny_reward_curves.png'}: True" in text


def test_statistics_notebook_uses_the_report_numbers(results, monkeypatch):
    text = _run("02-statistics.ipynb", results, monkeypatch)
    assert "comparing 'centered_rewards' (n=6) with 'rewards' (n=6)" in text
    assert "P(centered_rewards > rewards) = " in text and "95% CI [" in text


def test_your_own_variant_notebook_trains_a_registered_delta_mode():
    notebook = nbformat.read(NOTEBOOKS / "03-your-own-variant.ipynb", as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2, "both figures are shown"
    assert "128 runs x 100 epochs" in text
    assert "paired difference (rank - centered): " in text and "Wilcoxon p = " in text
    assert "rewards [[[3.0, 1.0, 3.0, 0.0]]] -> deltas [[[1.0, -0.5, 1.0, -1.5]]]" in text


def test_check_a_claim_notebook_recomputes_a_verdict(results, monkeypatch):
    text = _run("04-check-a-claim.ipynb", results, monkeypatch)
    assert "this notebook: C1 (tiny)" in text  # the tiny grid declares C1 and C2; no L1 there
    assert "test: C1; 6 seeds paired" in text
    assert "effect (mean over 6 seeds): " in text and "p-values in the family" in text
    assert "same bytes as " in text and ": True" in text.split("same bytes as ")[1]


def test_two_model_families_notebook_shows_both_families_greedy_outputs():
    """Trains both families itself (no stored runs): greedy responses per prompt side by side, the ledger's scores
    per family and setting, and the prose's numbers printed from them."""
    notebook = nbformat.read(NOTEBOOKS / "05-two-model-families.ipynb", as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1, "the reward curves are shown"
    assert "training prompts: ['102', '324', '123']" in text
    assert "96 runs x 100 epochs = 9600 rows; diverged runs: 0" in text
    for setting in ("lecture", "centered", "explore"):
        assert f"setting '{setting}', seeds 0-7: greedy response per prompt" in text
    assert "model  linear transformer linear transformer linear transformer" in text  # side by side, per prompt
    lecture = re.search(r"at the lecture's settings (\d+) of 32 runs solve and (\d+) end stuck", text)
    explore = re.search(r"exploring \(.*\): (\d+) of 32 runs solve", text)
    assert lecture and explore, text[-2000:]
    assert int(explore[1]) > int(lecture[1])  # exploring escapes the trap the lecture's settings fall into
    assert int(lecture[2]) > 0
