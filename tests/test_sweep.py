"""Sweeps survive: resume after a kill, concurrent sweeps, bad chunks retrained, manifests, the dask backend."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import sortrl.sweep as sweep_module
from sortrl.grid import load_grid, parse_grid
from sortrl.registry import ConfigError
from sortrl.store import (
    StoreWarning,
    _host,
    completed_run_ids,
    load_runs,
    read_history,
    read_manifest,
    runs_dir,
)
from sortrl.sweep import DASK_MISSING, _dask_client, plan_chunks, run_sweep
from sortrl.train import batch_key

SORTRL = Path(sys.executable).parent / "sortrl"

GRID = """
name = "tiny"
seeds = 3
[base]
num_epochs = 3
num_steps_per_epoch = 2
[grid]
deltas_mode = ["rewards", "centered_rewards"]
loss_mode = ["naive", "clipped"]
"""

SLOW_GRID = """
name = "slow"
seeds = 8
[base]
num_epochs = 20
num_steps_per_epoch = 3
[grid]
deltas_mode = ["rewards", "centered_rewards"]
"""


def quiet_load(results) -> object:
    """`load_runs`, failing the test on any warning (a healthy folder loads silently)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_runs(results)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """An uninterrupted sweep of GRID (n_jobs=1, chunk_size=2): (results folder, loaded table)."""
    results = tmp_path_factory.mktemp("clean")
    run_sweep(parse_grid(GRID), results, n_jobs=1, chunk_size=2)
    return results, quiet_load(results)


def copy_of(clean, tmp_path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    shutil.copytree(clean[0], results)
    return results, runs_dir(results, "tiny")


def test_plan_chunks_share_batch_keys_and_cover_the_grid():
    configs = [run.config for run in parse_grid(GRID).runs()]
    chunks = plan_chunks(configs, chunk_size=4, n_jobs=2)
    assert sorted(c.run_id for chunk in chunks for c in chunk) == sorted(c.run_id for c in configs)
    assert all(len({batch_key(c) for c in chunk}) == 1 and len(chunk) <= 4 for chunk in chunks)
    assert len(plan_chunks(configs, chunk_size=100, n_jobs=4)) >= 4


def test_rerun_skips_everything_and_records_each_sweep(clean, tmp_path):
    results, folder = copy_of(clean, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk-*.parquet")}
    outcome = run_sweep(parse_grid(GRID), results, n_jobs=1, chunk_size=2)
    assert (outcome.total, outcome.skipped, outcome.trained) == (12, 12, 0)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk-*.parquet")} == before
    manifest = read_manifest(folder)
    assert manifest["status"] == "complete" and manifest["missing"] == 0 and manifest["trained"] == 0
    for key in (
        "grid",
        "sortrl",
        "git_commit",
        "git_dirty",
        "python",
        "torch",
        "platform",
        "started",
        "finished",
        "wall_seconds",
    ):
        assert key in manifest
    history = read_history(folder)
    assert [m["status"] for m in history] == ["running", "complete", "running", "complete"]
    assert history[0]["sweep_id"] == history[1]["sweep_id"] != history[2]["sweep_id"]
    assert quiet_load(results).equals(clean[1])


def test_lost_chunks_are_retrained_and_nothing_else(clean, tmp_path):
    results, folder = copy_of(clean, tmp_path)
    lost = sorted(folder.glob("chunk-*.parquet"))[:2]
    lost_ids = set(load_runs(results)[lambda t: t.run_id.isin(completed_run_ids(folder))].run_id)
    for path in lost:
        path.unlink()
    lost_ids -= completed_run_ids(folder)
    outcome = run_sweep(parse_grid(GRID), results, n_jobs=1, chunk_size=2)
    assert outcome.trained == len(lost_ids) == 4 and outcome.skipped == 8
    assert quiet_load(results).equals(clean[1])


def test_bad_chunks_are_named_and_their_runs_retrained(clean, tmp_path):
    results, folder = copy_of(clean, tmp_path)
    truncated, foreign = sorted(folder.glob("chunk-*.parquet"))[:2]
    truncated.write_bytes(truncated.read_bytes()[:100])
    foreign.write_bytes(b"not parquet")
    with pytest.warns(StoreWarning) as caught:
        outcome = run_sweep(parse_grid(GRID), results, n_jobs=1, chunk_size=2)
    named = " ".join(str(w.message) for w in caught)
    assert truncated.name in named and foreign.name in named
    assert outcome.trained == 4
    assert quiet_load(results).equals(clean[1])  # same chunk names: the bad files were replaced


def test_sweep_removes_its_leftover_temporaries_only(clean, tmp_path):
    results, folder = copy_of(clean, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        leftover = folder / f".chunk-0.parquet.tmp-{_host()}-{dead.pid}-abc"
        concurrent = folder / f".chunk-1.parquet.tmp-{_host()}-{live.pid}-def"
        leftover.write_bytes(b"half a chunk")
        concurrent.write_bytes(b"half a chunk")
        run_sweep(parse_grid(GRID), results, n_jobs=1, chunk_size=2)
        assert not leftover.exists() and concurrent.exists()
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("error", [RuntimeError("worker lost"), KeyboardInterrupt()])
def test_a_failed_sweep_says_so_in_its_manifest(tmp_path, monkeypatch, error):
    real, calls = sweep_module._train_chunk, []

    def flaky(chunk, threads):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real(chunk, threads)

    monkeypatch.setattr(sweep_module, "_train_chunk", flaky)
    with pytest.raises(type(error)):
        run_sweep(parse_grid(GRID), tmp_path, n_jobs=1, chunk_size=2)
    folder = runs_dir(tmp_path, "tiny")
    manifest = read_manifest(folder)
    expected = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    assert manifest["status"] == expected and manifest["trained"] == 2 and manifest["missing"] == 10
    assert manifest["finished"] is not None
    assert manifest["error"] == ("RuntimeError: worker lost" if expected == "failed" else "KeyboardInterrupt")
    assert [m["status"] for m in read_history(folder)] == ["running", expected]
    assert len(completed_run_ids(folder)) == 2


def test_results_from_a_worker_with_other_versions_are_refused(tmp_path, monkeypatch):
    real = sweep_module._train_chunk

    def old_worker(chunk, threads):
        table, versions = real(chunk, threads)
        return table, {**versions, "sortrl": "0.0.1", "host": "node7"}

    monkeypatch.setattr(sweep_module, "_train_chunk", old_worker)
    with pytest.raises(ConfigError, match=r"^scheduler: worker on node7 runs sortrl 0\.0\.1, this machine sortrl "):
        run_sweep(parse_grid(GRID), tmp_path, n_jobs=1, chunk_size=2)
    assert completed_run_ids(runs_dir(tmp_path, "tiny")) == set()


def test_dask_backend_gives_the_loky_results(clean, tmp_path):
    """Same grid, same plan: loky processes and a Dask cluster store identical tables (and equal the clean sweep)."""
    from distributed import LocalCluster

    grid = parse_grid(GRID)
    run_sweep(grid, tmp_path / "loky", n_jobs=2, chunk_size=2, backend="loky")
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster:
        outcome = run_sweep(
            grid, tmp_path / "dask", n_jobs=2, chunk_size=2, backend="dask", scheduler=cluster.scheduler_address
        )
    assert outcome.trained == 12
    manifest = read_manifest(runs_dir(tmp_path / "dask", "tiny"))
    assert manifest["backend"] == "dask" and manifest["scheduler"] == cluster.scheduler_address
    loky, dask = quiet_load(tmp_path / "loky"), quiet_load(tmp_path / "dask")
    assert loky.equals(dask)
    assert loky.equals(clean[1])


def test_dask_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ConfigError) as err:
        run_sweep(parse_grid(GRID), tmp_path, backend="dask")
    assert str(err.value) == DASK_MISSING and "pip install 'sortrl[dask]'" in DASK_MISSING


def test_unreachable_scheduler_is_one_line():
    with (
        pytest.raises(ConfigError, match=r"^scheduler: cannot connect to tcp://127\.0\.0\.1:9 "),
        _dask_client("tcp://127.0.0.1:9", 1, timeout=1),
    ):
        pass


def test_bad_backend_arguments():
    grid = parse_grid(GRID)
    with pytest.raises(ConfigError, match="^backend: unknown value 'spark'; valid choices: loky, dask$"):
        run_sweep(grid, backend="spark")
    with pytest.raises(ConfigError, match="^scheduler: only used with backend 'dask'"):
        run_sweep(grid, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(ConfigError, match="^scheduler: expected a Dask scheduler address"):
        run_sweep(grid, backend="dask", scheduler="my laptop")


# --- subprocesses: SIGKILL and concurrency ------------------------------------------------


def start_sweep(grid_file: Path, results: Path, chunk_size: int) -> subprocess.Popen:
    command = [str(SORTRL), "sweep", str(grid_file), "--results", str(results), "--chunk-size", str(chunk_size)]
    return subprocess.Popen(
        [*command, "--n-jobs", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, killed as a whole
    )


def kill_when(proc: subprocess.Popen, ready, how: int = signal.SIGKILL, timeout: float = 60) -> bool:
    """SIGKILL `proc`'s process group (or send `how` to `proc`) once `ready()` holds; False if it finished first."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    finished = proc.poll() is not None
    if not finished:
        if how == signal.SIGKILL:
            os.killpg(proc.pid, how)
        else:
            proc.send_signal(how)
    proc.wait(timeout=timeout)
    return not finished


@pytest.fixture(scope="module")
def slow_clean(tmp_path_factory):
    results = tmp_path_factory.mktemp("slow_clean")
    run_sweep(parse_grid(SLOW_GRID), results, n_jobs=1, chunk_size=2)
    return quiet_load(results)


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_equals_a_clean_sweep(tmp_path, slow_clean):
    grid_file = tmp_path / "slow.toml"
    grid_file.write_text(SLOW_GRID)
    results = tmp_path / "results"
    folder = runs_dir(results, "slow")
    total = load_grid(grid_file).num_runs

    def chunks() -> int:
        return len(list(folder.glob("chunk-*.parquet"))) if folder.is_dir() else 0

    points = [  # (when, new chunk files to wait for, signal); None: 1 s into start-up, before any training
        ("while starting up", None, signal.SIGKILL),
        ("after its first chunk", 1, signal.SIGKILL),
        ("after two chunks, by SIGTERM", 2, signal.SIGTERM),
        ("after two chunks", 2, signal.SIGKILL),
    ]
    killed = 0
    for _, new, how in points:
        before = chunks()
        target = before + (new or 0)
        ready = (lambda: time.sleep(1.0) is None) if new is None else (lambda target=target: chunks() >= target)
        proc = start_sweep(grid_file, results, chunk_size=2)
        if kill_when(proc, ready, how):
            killed += 1
            if how == signal.SIGTERM:  # unwound like Ctrl-C: exit 143, and its manifest says so (no pid check)
                assert proc.returncode == 143
                assert json.loads((folder / "manifest.json").read_text())["status"] == "interrupted"
        stored = quiet_load(results)  # whatever survived is whole: no warnings, whole runs only
        if len(stored):
            assert (stored.groupby("run_id").size() == 20).all()
            assert set(stored.run_id) == completed_run_ids(folder)
        assert not [p for p in folder.glob("*") if p.name.startswith("chunk-") and not p.name.endswith(".parquet")]
        manifest = read_manifest(folder)
        assert manifest is None or manifest["status"] in ("interrupted", "complete")
    assert killed >= 3, "the sweep finished before it could be killed: make SLOW_GRID slower"
    done = completed_run_ids(folder)
    assert len(done) < total
    outcome = run_sweep(load_grid(grid_file), results, n_jobs=1, chunk_size=2)
    assert (outcome.skipped, outcome.trained) == (len(done), total - len(done))  # only the missing runs
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # leftovers removed
    resumed = quiet_load(results)
    assert resumed.equals(slow_clean)
    assert read_manifest(folder)["status"] == "complete"
    statuses = [m["status"] for m in read_history(folder)]
    assert statuses[-2:] == ["running", "complete"] and "complete" not in statuses[:-1]


@pytest.mark.slow
def test_two_concurrent_sweeps_of_one_grid(tmp_path, slow_clean):
    grid_file = tmp_path / "slow.toml"
    grid_file.write_text(SLOW_GRID)
    results = tmp_path / "results"
    procs = [start_sweep(grid_file, results, chunk_size=size) for size in (2, 3)]  # overlapping chunkings
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        assert b"warning" not in err and b"Traceback" not in err
    folder = runs_dir(results, "slow")
    loaded = quiet_load(results)  # no corrupt or partial files
    assert not loaded.duplicated(["run_id", "epoch"]).any()
    assert len(loaded) == len(slow_clean)
    assert loaded.equals(slow_clean)  # batch invariance: other batch-mates (chunks of 3), same bits
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert [m["status"] for m in read_history(folder)].count("complete") == 2
