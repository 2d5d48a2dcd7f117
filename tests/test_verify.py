"""`sortrl verify` (sortrl.study.verify): stored runs retrained and compared bit for bit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_cli import assert_one_line_error, invoke

from sortrl.study.store import encode_chunk, read_chunks, read_rows, runs_dir, store_chunk
from sortrl.study.verify import sample, verify


def test_the_sample_is_seeded_and_spans_the_experiments(results):
    first, again = sample(results, 5, seed=3), sample(results, 5, seed=3)
    ids = [run["run_id"] for runs in first.values() for _, run in runs]
    assert ids == [run["run_id"] for runs in again.values() for _, run in runs] and len(ids) == 5
    other = [run["run_id"] for runs in sample(results, 5, seed=4).values() for _, run in runs]
    assert other != ids
    everything = sample(results, None)
    stored = sum(len(c.runs) for name in ("tiny", "lengths") for c in read_chunks(runs_dir(results, name)))
    assert set(everything) == {"tiny", "lengths"} and sum(map(len, everything.values())) == stored


def test_verify_passes_on_runs_this_sortrl_trained(results):
    result = invoke("verify", results, "--sample", "6")
    assert result.exit_code == 0, result.output
    assert "retraining 6 stored run(s)" in result.output
    assert "all 6 retrained runs are identical to the stored ones, bit for bit" in result.output


def test_verify_fails_and_names_a_run_whose_chunk_a_changed_engine_wrote(results, tmp_path):
    """One stored chunk is rewritten (valid checksum, readable) with one value of one run moved by 1e-6, as a
    changed engine would have written it: every run is retrained, that one is named, the exit code is 1."""
    copy = tmp_path / "results"
    shutil.copytree(results / "runs", copy / "runs")
    folder = runs_dir(copy, "tiny")
    chunk = read_chunks(folder)[0]
    rows = read_rows(chunk)
    victim = chunk.runs[0]
    at = np.flatnonzero(rows["run_id"].to_numpy() == victim["run_id"])[1]
    rows.loc[at, "loss"] = rows.loc[at, "loss"] + 1e-6
    first = {r["run_id"]: r for r in chunk.runs}
    rows["status"] = rows["run_id"].map(lambda r: first[r]["status"])
    rows["diverged_epoch"] = rows["run_id"].map(lambda r: first[r]["diverged_epoch"])
    name, data = encode_chunk(rows, chunk.runs)
    chunk.path.unlink()
    store_chunk(folder, name, data)

    checks = verify(copy, None)
    bad = [m for c in checks for m in c.mismatches]
    assert [m.run_id for m in bad] == [victim["run_id"]]
    assert bad[0].what.startswith("column loss: max |difference| 1e-06")
    result = invoke("verify", copy, "--sample", "0")
    assert result.exit_code == 1
    assert f"{victim['run_id']} ({victim['configuration']}, seed {victim['seed']}): column loss" in result.output
    stored = sum(len(c.runs) for name in ("tiny", "lengths") for c in read_chunks(runs_dir(copy, name)))
    assert f"1 of {stored} retrained runs differ from the stored ones" in result.output


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--sample", "-1"), ("sample: must be >= 0",)),
        ((), ("results: no runs folder",)),
    ],
)
def test_verify_bad_input_is_one_line(tmp_path, args, needles):
    assert_one_line_error(invoke("verify", tmp_path / "nowhere" if not args else tmp_path, *args), *needles)
