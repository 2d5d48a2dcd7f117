"""Sweeps survive: resume after a kill, concurrent sweeps, bad chunks retrained, manifests, the dask backend."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import pytest

import sortrl.study.sweep as sweep_module
from sortrl.engine.config import RunConfig
from sortrl.engine.registry import ConfigError
from sortrl.engine.train import batch_key
from sortrl.study.grid import load_grid, parse_grid
from sortrl.study.store import (
    StoreWarning,
    _host,
    completed_run_ids,
    load_runs,
    read_history,
    read_manifest,
    runs_dir,
)
from sortrl.study.sweep import DASK_MISSING, _dask_client, plan_chunks, run_sweep

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


def test_plan_chunks_split_a_batch_key_that_holds_most_of_the_work():
    # 8 runs of 1,000 epochs (one batch key) among 24 runs of 10: 8,000 of 8,240 epochs. By runs alone
    # (16 per chunk) they were one chunk, trained by one worker while the other finished the rest and waited.
    long = [RunConfig(seed=s, num_epochs=1000) for s in range(8)]
    short = [RunConfig(seed=s, num_epochs=10, deltas_mode=m) for s in range(8) for m in ("rewards", "rloo", "remax")]
    chunks = plan_chunks(long + short, chunk_size=1024, n_jobs=2)
    work = sorted((sum(c.num_epochs for c in chunk) for chunk in chunks), reverse=True)
    assert work[0] <= 8240 / 2 and sorted(c.run_id for chunk in chunks for c in chunk) == sorted(
        c.run_id for c in long + short
    )
    assert len(plan_chunks(long[:1] + short, chunk_size=1024, n_jobs=2)) == 3  # one long run cannot be split


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

    def flaky(chunk, labels, threads, report=None):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real(chunk, labels, threads, report)

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

    def old_worker(chunk, labels, threads, report=None):
        trained = real(chunk, labels, threads, report)
        return trained._replace(versions={**trained.versions, "sortrl": "0.0.1", "host": "node7"})

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
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0", silence_logs=logging.ERROR
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


def start_sweep(grid_file: Path, results: Path, chunk_size: int, *options: str) -> subprocess.Popen:
    command = [str(SORTRL), "sweep", str(grid_file), "--results", str(results), "--chunk-size", str(chunk_size)]
    return subprocess.Popen(
        [*command, *(options or ("--n-jobs", "1"))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, killed as a whole
        cwd=grid_file.parent,
        env=os.environ,  # SORTRL_PROGRESS_SECONDS is 3600 (conftest): stderr is read line by line
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


# --- issue 13: lost workers, interrupts, a dead client, a stopped worker, too many workers -----------------

WORKER_GRID = """
name = "workers"
seeds = 8
[base]
num_epochs = 60
num_steps_per_epoch = 5
[grid]
deltas_mode = ["rewards", "centered_rewards"]
"""
"""16 runs in 8 chunks of 2 (about a second each): long enough to kill or interrupt a sweep in the middle."""


def session(leader: int) -> list[tuple[int, str]]:
    """The live processes (pid, command line) of the session `leader` started (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = (Path("/proc") / entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (Path("/proc") / entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[3]) == leader and fields[0] != "Z":
            found.append((int(entry), command))
    return found


def settles(leader: int, timeout: float) -> list[tuple[int, str]]:
    """Wait until no process of the session is left (or `timeout` s); return what is left."""
    deadline = time.time() + timeout
    while session(leader) and time.time() < deadline:
        time.sleep(0.1)
    return session(leader)


def chunk_count(folder: Path) -> int:
    return len(list(folder.glob("chunk-*.parquet"))) if folder.is_dir() else 0


def wait_for_chunk(proc: subprocess.Popen, folder: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while chunk_count(folder) == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep finished before it could be disturbed"


def complete(results: Path, name: str, runs: int, epochs: int) -> None:
    """Every run of the grid is stored whole, and the folder loads without a warning."""
    stored = quiet_load(results)
    assert stored.run_id.nunique() == runs and (stored.groupby("run_id").size() == epochs).all()
    assert read_manifest(runs_dir(results, name))["status"] == "complete"


def workers_of(proc: subprocess.Popen) -> list[int]:
    return [pid for pid, command in session(proc.pid) if "LokyProcess" in command]


def interrupted_line(folder: Path) -> str:
    stored = len(completed_run_ids(folder))
    return f"interrupted: workers: {stored} of 16 runs stored in {folder}; run the same command again to resume"


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_ctrl_c_is_one_line(tmp_path):
    """Defects 4 and 7 (loky): kill -9 of a worker (as the OOM killer does) costs its chunk a retry and one warning
    line; then Ctrl-C (SIGINT to the whole foreground group) is one line, no worker traceback, and stops every worker.
    """
    grid_file = tmp_path / "workers.toml"
    grid_file.write_text(WORKER_GRID)
    results = tmp_path / "results"
    folder = runs_dir(results, "workers")
    proc = start_sweep(grid_file, results, 2, "--n-jobs", "2")
    wait_for_chunk(proc, folder)
    first = workers_of(proc)
    assert len(first) == 2, session(proc.pid)
    os.kill(first[0], signal.SIGKILL)
    deadline = time.time() + 90  # new workers (started after the warning) exist and store a chunk: then interrupt
    while not set(workers_of(proc)) - set(first) and time.time() < deadline:
        time.sleep(0.01)
    stored = chunk_count(folder)
    while chunk_count(folder) == stored and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = err.decode().splitlines()
    assert proc.returncode == 130, err.decode()
    assert lines[0].startswith("workers: 16 runs, 0 already stored, 16 to train"), err.decode()
    assert lines[1].startswith("warning: workers: a worker was lost (a worker process died, exit codes SIGKILL(-9))")
    assert lines[2:] == [interrupted_line(folder)]
    assert settles(proc.pid, 15) == []
    assert read_manifest(folder)["status"] == "interrupted"
    assert quiet_load(results).groupby("run_id").size().eq(60).all()  # whatever is stored is whole


@pytest.mark.slow
def test_kill_9_of_the_sweep_leaves_no_worker_running(tmp_path):
    """Defect 7: loky workers (and their resource tracker) go within seconds of the client's kill -9, not 30 s+."""
    grid_file = tmp_path / "workers.toml"
    grid_file.write_text(WORKER_GRID)
    results = tmp_path / "results"
    proc = start_sweep(grid_file, results, 2, "--n-jobs", "2")
    wait_for_chunk(proc, runs_dir(results, "workers"))
    assert len(workers_of(proc)) == 2
    proc.kill()
    proc.wait()
    assert settles(proc.pid, 10) == []


@pytest.mark.slow
def test_ctrl_c_of_a_dask_sweep_is_one_line(tmp_path):
    """Defect 7 (a local Dask cluster): one line, no traceback from the cluster's processes, nothing left running.

    Dask's default dashboard port is held meanwhile (as another cluster or a concurrent test would hold it):
    the sweep must not print distributed's "Port 8787 is already in use" warning.
    """
    grid_file = tmp_path / "workers.toml"
    grid_file.write_text(WORKER_GRID)
    results = tmp_path / "results"
    folder = runs_dir(results, "workers")
    with socket.socket() as port:
        with contextlib.suppress(OSError):  # already taken by someone else: held either way
            port.bind(("", 8787))
            port.listen()
        proc = start_sweep(grid_file, results, 2, "--n-jobs", "2", "--backend", "dask")
        wait_for_chunk(proc, folder)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    lines = err.decode().splitlines()
    assert proc.returncode == 130, err.decode()
    assert lines[1:] == [interrupted_line(folder)], err.decode()
    assert settles(proc.pid, 15) == []


START_A_CLUSTER = """
import sys
from sortrl.engine.registry import ConfigError
from sortrl.study.sweep import _dask_client
try:
    with _dask_client(None, 2, timeout=5):
        print("started")
except ConfigError as err:
    sys.exit(f"error: {err}")
"""
"""A local Dask cluster of two workers, given 5 s to start (the command gives it 30 s): `error: ...` otherwise."""


def signal_a_starting_worker(proc: subprocess.Popen, how: int) -> int:
    """Send `how` to the first Dask worker process of `proc`'s session as soon as it exists; return its pid."""
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        started = [pid for pid, command in session(proc.pid) if "spawn_main" in command]
        if started:
            os.kill(started[0], how)
            return started[0]
        time.sleep(0.005)
    raise AssertionError("no worker process started")


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_dask_worker_lost_while_the_local_cluster_starts_is_one_line(tmp_path, how):
    """A worker process killed, or stopped, while a local Dask cluster starts: one line within the start timeout
    (it was distributed's 92-line 'Nanny failed to start' traceback, or a wait for ever), no process left behind.
    Killed: through `sortrl sweep`; stopped: a cluster with a 5 s timeout (the command's 30 s, in a test)."""
    grid_file = tmp_path / "workers.toml"
    grid_file.write_text(WORKER_GRID)
    with (tmp_path / "stderr").open("w") as stderr:
        if how == signal.SIGKILL:
            command = [SORTRL, "sweep", grid_file, "--results", tmp_path / "results", "--backend", "dask"]
        else:
            command = [sys.executable, "-c", START_A_CLUSTER]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        started = time.time()
        worker = signal_a_starting_worker(proc, how)
    try:
        proc.wait(timeout=90)
        lines = [line for line in (tmp_path / "stderr").read_text().splitlines() if not line.startswith("workers:")]
        assert len(lines) == 1 and lines[0].startswith("error: backend: the local Dask cluster did not start"), lines
        bound = 30 + 30 if how == signal.SIGKILL else 5 + 15  # the start-up timeout, and slack for a busy machine
        assert proc.returncode in (1, 2) and time.time() - started < bound
        assert settles(proc.pid, 10) == []
    finally:  # a failed test leaves no process behind, stopped or waiting for a stopped one
        for kill, pid in [(os.kill, worker), (os.killpg, proc.pid)]:
            with contextlib.suppress(OSError):
                kill(pid, signal.SIGKILL)


class _ThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """Stands in for loky's executor: threads (cheap to start), with loky's `_flags` and `shutdown(kill_workers=)`."""

    def __init__(self, max_workers: int, **_):
        super().__init__(max_workers)
        self._flags = types.SimpleNamespace(broken=False)

    def shutdown(self, wait=True, kill_workers=False):
        super().shutdown(wait=wait)


def test_n_jobs_is_capped_at_the_chunks_and_at_the_cores_with_a_warning(tmp_path, monkeypatch):
    """Defect 5: --n-jobs 16 for cores + 1 chunks asks loky for one worker per core (not 16, not cores + 1),
    with a warning that says so."""
    import joblib.externals.loky

    asked = []
    monkeypatch.setattr(
        joblib.externals.loky,
        "get_reusable_executor",
        lambda max_workers, **kw: asked.append(max_workers) or _ThreadExecutor(max_workers),
    )
    cores = os.cpu_count() or 1
    chunks = cores + 1
    grid = parse_grid(f'name = "few"\nseeds = {chunks}\n[base]\nnum_epochs = 1\nnum_steps_per_epoch = 1\n')
    with pytest.warns(sweep_module.SweepWarning, match=f"n_jobs: {chunks} worker processes on {cores} cores.*using"):
        outcome = run_sweep(grid, tmp_path, n_jobs=16, chunk_size=1)
    assert outcome.trained == chunks and asked == ([cores] if cores > 1 else [])  # one core: trained here
    assert read_manifest(runs_dir(tmp_path, "few"))["n_jobs"] == cores


def test_a_chunk_that_never_ends_is_named_in_the_heartbeat(tmp_path, monkeypatch):
    """Issue 23: a worker that answers but never finishes its chunk (a plug-in stuck in a loop) got only "no chunk
    finished in the last 60 s"; now each heartbeat names the chunk that has run longest, its size, how long it
    should take and how long it has run, so a stuck chunk is told from a slow one. Worker threads stand in for loky's
    processes; chunk 1 (the first handed out) waits until the warning has been given."""
    import threading

    import joblib.externals.loky

    monkeypatch.setattr(joblib.externals.loky, "get_reusable_executor", lambda max_workers, **kw: _ThreadExecutor(2))
    monkeypatch.setattr(sweep_module.os, "cpu_count", lambda: 2)
    heard, real_chunk, real_warn = threading.Event(), sweep_module._train_chunk, warnings.warn

    def stuck(configs, labels, threads, report=None):
        if configs[0].seed == 0:
            heard.wait(60)  # released by the warning, not by time
        return real_chunk(configs, labels, threads, report)

    def warn(message, *args, **kwargs):
        if "no chunk finished" in str(message):
            heard.set()
        real_warn(message, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "_train_chunk", stuck)
    monkeypatch.setattr(sweep_module.warnings, "warn", warn)
    grid = parse_grid('name = "stuck"\nseeds = 4\n[base]\nnum_epochs = 2\nnum_steps_per_epoch = 1\n')
    with pytest.warns(sweep_module.SweepWarning, match="no chunk finished") as caught:
        outcome = run_sweep(grid, tmp_path, n_jobs=2, chunk_size=2, heartbeat=0.2)
    assert outcome.trained == 4 and heard.is_set()
    (line,) = [str(w.message) for w in caught if "no chunk finished" in str(w.message)][:1]
    assert re.search(
        r"^stuck: no chunk finished in the last \d+ s \([12] running\); the longest running, chunk 1 of 2 \(2 runs, "
        r"4 run-steps: under a second at 100,000 run-steps/s\), has run \d+ s; a worker may be stopped, overloaded "
        r"or stuck \(in a plug-in\?\); still waiting \(stop and rerun: the stored chunks stay\)$",
        line,
    ), line


def test_a_local_dask_cluster_has_at_most_one_worker_per_core(monkeypatch):
    """--n-jobs 16 --backend dask on 2 cores: 2 local workers, with the warning loky's cap gives (it started 16)."""
    import distributed

    started = []

    class Cluster(contextlib.nullcontext):
        def __init__(self, n_workers, **_):
            super().__init__()
            started.append(n_workers)

    monkeypatch.setattr(distributed, "LocalCluster", Cluster)
    monkeypatch.setattr(distributed, "Client", lambda cluster: contextlib.nullcontext())
    monkeypatch.setattr(sweep_module.os, "cpu_count", lambda: 2)
    with (
        pytest.warns(sweep_module.SweepWarning, match="^n_jobs: 16 worker processes on 2 cores .*; using 2$"),
        _dask_client(None, 16),
    ):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _dask_client(None, 2):
            pass
    assert started == [2, 2]


def test_chunks_trained_side_by_side_must_fit_in_memory_together(tmp_path, monkeypatch):
    """Each of two chunks fits in memory alone, both at once do not: refused before training, in one line."""
    import sortrl.engine.train as engine

    grid = parse_grid('name = "mem"\nseeds = 4\n[base]\nnum_epochs = 1\nnum_steps_per_epoch = 1\n')
    chunk = 2 * grid.runs()[0].config.memory_bytes
    monkeypatch.setattr(engine, "physical_memory", lambda: int(1.5 * chunk))
    monkeypatch.setattr(sweep_module.os, "cpu_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"^configs: training these 4 runs needs about .* GiB at once"):
        run_sweep(grid, tmp_path, n_jobs=2, chunk_size=2)
    assert not list(tmp_path.rglob("chunk-*"))
    outcome = run_sweep(grid, tmp_path, n_jobs=1, chunk_size=2)  # one chunk at a time fits
    assert outcome.trained == 4


def test_lost_chunks_are_retried_a_bounded_number_of_times(tmp_path, monkeypatch):
    """Defect 4: a chunk whose worker is lost every time is given up after MAX_ATTEMPTS, in one line; the rest trains.

    A loky pool breaks as a whole, so the chunk running beside the culprit is lost too and retried.
    """
    import joblib.externals.loky
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    attempts: dict[int, int] = {}
    real = sweep_module._train_chunk

    def chunk(configs, labels, threads, report=None):
        seed = configs[0].seed
        attempts[seed] = attempts.get(seed, 0) + 1
        if seed == 1 or (seed == 0 and attempts[seed] == 1):  # seed 1: lost every time; seed 0: lost once
            raise TerminatedWorkerError("The exit codes of the workers are {SIGKILL(-9)}")
        return real(configs, labels, threads, report)

    monkeypatch.setattr(joblib.externals.loky, "get_reusable_executor", lambda max_workers, **kw: _ThreadExecutor(2))
    monkeypatch.setattr(sweep_module, "_train_chunk", chunk)
    grid = parse_grid('name = "lost"\nseeds = 3\n[base]\nnum_epochs = 2\nnum_steps_per_epoch = 1\n')
    with pytest.warns(sweep_module.SweepWarning, match="a worker was lost") as caught:
        outcome = run_sweep(grid, tmp_path, n_jobs=2, chunk_size=1)
    assert attempts == {0: 2, 1: sweep_module.MAX_ATTEMPTS, 2: 1}
    assert (outcome.trained, outcome.failed) == (2, 1)
    assert outcome.problem == (
        "lost: 1 runs in 1 chunk(s) not trained: their worker was lost 3 times (last: a worker process died, "
        "exit codes SIGKILL(-9)); run the same command again to train them"
    )
    # one warning per round of losses: 2, or 3 when the threads report round 1's two losses one at a time
    assert len(caught) in (2, 3) and all("\n" not in str(w.message) for w in caught)
    manifest = read_manifest(runs_dir(tmp_path, "lost"))
    assert manifest["status"] == "incomplete" and manifest["missing"] == 1 and manifest["error"] == outcome.problem


def test_a_stopped_dask_worker_is_reported_while_the_sweep_waits(tmp_path):
    """Defect 9: a Dask worker stopped with SIGSTOP hangs the sweep; a heartbeat warning says what is running."""
    import threading

    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
        ) as cluster,
        Client(cluster) as client,
    ):
        ((address, worker),) = client.run(os.getpid).items()
        folder = runs_dir(tmp_path, "workers")

        def stop_then_continue():
            deadline = time.time() + 60
            while chunk_count(folder) == 0 and time.time() < deadline:
                time.sleep(0.01)
            os.kill(worker, signal.SIGSTOP)
            time.sleep(4)
            os.kill(worker, signal.SIGCONT)

        thread = threading.Thread(target=stop_then_continue)
        thread.start()
        try:
            with pytest.warns(
                sweep_module.SweepWarning, match=r"workers: no chunk finished in the last \d+ s"
            ) as caught:
                outcome = run_sweep(
                    parse_grid(WORKER_GRID.replace("num_epochs = 60", "num_epochs = 20")),
                    tmp_path,
                    n_jobs=1,
                    chunk_size=4,
                    backend="dask",
                    scheduler=cluster.scheduler_address,
                    heartbeat=1.5,
                )
        finally:
            thread.join()
    assert outcome.trained == 16
    assert any(f"1 running on {address}" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_grids_swept_together_share_one_queue_and_store_the_same_chunks(clean, slow_clean, tmp_path, monkeypatch):
    """`run_sweeps` hands out every grid's chunks from one queue, longest first (grid by grid, the short grid
    listed first went first and a worker idled at each grid's end); each grid stores the chunks a sweep of it alone
    stores, byte for byte (same names: run ids and checksums), and its manifest is complete as soon as it is."""
    import joblib.externals.loky

    handed: list[tuple[str, int]] = []  # (first label, run-steps) of each chunk in the order workers got them
    real = sweep_module._train_chunk

    def chunk(configs, labels, threads, report=None):
        handed.append((configs[0].deltas_mode, sum(c.run_steps for c in configs)))
        return real(configs, labels, threads, report)

    monkeypatch.setattr(joblib.externals.loky, "get_reusable_executor", lambda max_workers, **kw: _ThreadExecutor(1))
    monkeypatch.setattr(sweep_module, "_train_chunk", chunk)
    alone = tmp_path / "alone"
    run_sweep(parse_grid(SLOW_GRID), alone, n_jobs=2, chunk_size=2)
    run_sweep(parse_grid(GRID), alone, n_jobs=2, chunk_size=2)
    handed.clear()
    together, done = tmp_path / "together", []
    outcomes = sweep_module.run_sweeps(
        [parse_grid(GRID), parse_grid(SLOW_GRID)], together, n_jobs=2, chunk_size=2, on_done=done.append
    )
    steps = [s for _, s in handed]
    assert steps == sorted(steps, reverse=True) and steps[0] > steps[-1]  # slow's chunks first, though listed second
    assert [o.name for o in outcomes] == ["tiny", "slow"] and [o.trained for o in outcomes] == [12, 16]
    assert sorted(o.name for o in done) == ["slow", "tiny"]
    for name in ("tiny", "slow"):
        assert sorted(p.name for p in runs_dir(together, name).glob("chunk-*.parquet")) == sorted(
            p.name for p in runs_dir(alone, name).glob("chunk-*.parquet")
        )
        manifest = read_manifest(runs_dir(together, name))
        assert manifest["status"] == "complete" and manifest["queue"] == ["tiny", "slow"]
    again = sweep_module.run_sweeps([parse_grid(GRID), parse_grid(SLOW_GRID)], together, n_jobs=2, chunk_size=2)
    assert [(o.trained, o.skipped) for o in again] == [(0, 12), (0, 16)]


# --- issue 24, item 7: progress in run-steps, as the workers train -------------------------------------------------

PROGRESS_GRID = """
name = "progress"
seeds = 2
[base]
num_epochs = 200
num_steps_per_epoch = 5
[grid]
deltas_mode = ["rewards", "centered_rewards"]
"""
"""4 runs of 1,000 run-steps in 2 chunks of 2: a chunk trains for a second or so, 200 epochs each reported."""


@pytest.mark.slow
def test_workers_report_run_steps_while_they_train_and_change_nothing_trained(tmp_path, monkeypatch):
    """loky workers send their chunk's run-steps as they train (here every epoch), so the count moves between
    chunks; it ends at the plan's run-steps, never passes it, and the chunks stored are the bytes a sweep without
    progress stores."""
    monkeypatch.setattr(sweep_module, "REPORT_SECONDS", 0.0)  # read here, sent with each chunk to its worker
    seen, plans, stored = [], {}, []
    (outcome,) = sweep_module.run_sweeps(
        [parse_grid(PROGRESS_GRID)],
        tmp_path / "with",
        n_jobs=2,
        chunk_size=2,
        on_plan=lambda name, plan: plans.setdefault(name, plan),
        on_chunk=lambda name, runs, steps: stored.append(steps),
        on_steps=lambda name, steps: seen.append((name, steps)),
    )
    sweep_module.release_workers()
    total = plans["progress"].run_steps
    assert outcome.trained == 4 and total == 4_000 and stored == [2_000, 2_000]
    steps = [s for name, s in seen if name == "progress"]
    assert steps[-1] == total and max(steps) == total
    between = [s for s in steps if s % 2_000]  # counts no sum of whole chunks can make: chunks part-way trained
    assert len(between) >= 10, steps
    import joblib.externals.loky

    monkeypatch.setattr(joblib.externals.loky, "get_reusable_executor", lambda max_workers, **kw: _ThreadExecutor(2))
    run_sweep(parse_grid(PROGRESS_GRID), tmp_path / "without", n_jobs=2, chunk_size=2)
    files = {}
    for name in ("with", "without"):
        folder = runs_dir(tmp_path / name, "progress")
        files[name] = {p.name: p.read_bytes() for p in folder.glob("chunk-*.parquet")}
    assert files["with"] == files["without"] and len(files["with"]) == 2


def test_a_lost_chunks_progress_is_not_counted_twice(tmp_path, monkeypatch):
    """A chunk whose worker is lost after reporting all its run-steps: they are taken back, and what its retry
    reports counts once; the count ends at the plan's run-steps, never above."""
    import joblib.externals.loky
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    real, reports, seen = sweep_module._train_chunk, [], []

    def chunk(configs, labels, threads, report=None):
        if configs[0].seed == 0 and not reports:  # the first attempt at seed 0: reports all of it, then is lost
            reports.append(report.tag)
            report.counter()(sum(c.run_steps for c in configs))
            deadline = time.monotonic() + 10
            while 20 not in seen and time.monotonic() < deadline:  # that report reaches the sweep before the loss
                time.sleep(0.01)
            report.send((report.tag, 1))  # late news from the lost attempt arrives after the retry started
            raise TerminatedWorkerError("The exit codes of the workers are {SIGKILL(-9)}")
        return real(configs, labels, threads, report)

    monkeypatch.setattr(sweep_module, "REPORT_SECONDS", 0.0)
    monkeypatch.setattr(joblib.externals.loky, "get_reusable_executor", lambda max_workers, **kw: _ThreadExecutor(1))
    monkeypatch.setattr(sweep_module, "_train_chunk", chunk)
    grid = parse_grid('name = "lost"\nseeds = 2\n[base]\nnum_epochs = 20\nnum_steps_per_epoch = 1\n')
    with pytest.warns(sweep_module.SweepWarning, match="a worker was lost"):
        (outcome,) = sweep_module.run_sweeps(
            [grid], tmp_path, n_jobs=2, chunk_size=1, on_steps=lambda name, steps: seen.append(steps)
        )
    assert outcome.trained == 2 and reports == [(0, 1)]
    assert max(seen) == seen[-1] == 40, seen
    lost = seen.index(20)  # seed 0's first attempt reported its 20 run-steps, which were taken back later: the
    # count falls at least once. Where it falls and to what is a race (seed 1's reports, the lost attempt's late
    # news and the loss reach the main thread in any order); `_Steps` by hand, below, pins the exact sequence
    after = seen[lost:]
    assert any(now < before for before, now in zip(after, after[1:])), seen


def test_steps_drop_a_lost_attempt_and_its_late_reports():
    """`_Steps` by hand: two grids, chunk 0 of grid a lost and retried; each call tells its grid's count."""
    told = []
    steps = sweep_module._Steps([0, 0, 1], ["a", "b"], [100, 50, 30], lambda name, n: told.append((name, n)))
    first = steps.start(0)
    steps.start(2)
    steps.report((first, 60))
    steps.report(((2, 1), 10))
    steps.report((first, 500))  # capped at the chunk's cost
    steps.lose(0)
    retry = steps.start(0)
    steps.report((first, 80))  # the lost attempt, late: ignored
    steps.report((retry, 20))
    steps.store(0)
    steps.store(2)
    steps.report((retry, 90))  # after the chunk is stored: ignored
    assert told == [("a", 60), ("b", 10), ("a", 100), ("a", 0), ("a", 20), ("a", 100), ("b", 30)]


# --- issue 23: a Dask worker stopped after it joined; the local plan counts the workers that run ------------------


def new_dask_workers(before: set[int]) -> list[int]:
    """This process's Dask worker processes (a local cluster's, spawned) started since `before` was listed."""
    import psutil

    return [
        p.pid
        for p in psutil.Process().children()
        if p.pid not in before and "spawn_main" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE
    ]


def stop_when_stored(folder: Path, pids, done, stopped: list[int], give_up: float = 120) -> None:
    """Once `folder` holds a chunk, SIGSTOP the processes `pids()` lists; if the sweep is not `done` within
    `give_up` s, SIGCONT them (a sweep that never notices would wait for ever: it then ends, and the test fails)."""
    deadline = time.time() + 60
    while chunk_count(folder) == 0 and time.time() < deadline:
        time.sleep(0.01)
    for pid in pids():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
    if not done.wait(give_up):
        for pid in stopped:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)


@pytest.mark.slow
def test_stopped_workers_of_a_local_dask_cluster_are_restarted_and_the_sweep_completes(tmp_path):
    """A local cluster's workers all stopped (SIGSTOP) after they joined: the sweep waited for ever (it warned every
    minute). Now each worker not heard from for `worker_timeout` s is killed, its nanny starts a new one, and the
    chunks train again: every run is stored, once."""
    import threading

    before = {p.pid for p in __import__("psutil").Process().children()}
    folder, done, stopped = runs_dir(tmp_path, "workers"), threading.Event(), []
    helper = threading.Thread(
        target=stop_when_stored, args=(folder, lambda: new_dask_workers(before), done, stopped), daemon=True
    )
    helper.start()
    try:
        with pytest.warns(sweep_module.SweepWarning) as caught:
            outcome = run_sweep(
                # chunks of about a second each: the workers are stopped while most are still to train (with
                # 60 epochs a loaded machine finished them all before the stop, and nothing was left to notice)
                parse_grid(WORKER_GRID.replace("num_epochs = 60", "num_epochs = 400")),
                tmp_path,
                n_jobs=2,
                chunk_size=2,
                backend="dask",
                worker_timeout=8,
            )
    finally:
        done.set()
        helper.join()
        for pid in stopped:  # killed by the sweep; a failed test leaves none behind either
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    messages = [str(w.message) for w in caught]
    assert stopped and outcome.trained == 16 and outcome.problem is None, messages
    assert any("has not answered for" in m and "killed it" in m for m in messages), messages
    complete(tmp_path, "workers", 16, 400)


@pytest.mark.slow
def test_a_cluster_whose_only_worker_stopped_ends_the_sweep_in_one_line_keeping_what_is_stored(tmp_path):
    """A scheduler's only worker stopped after it joined: the sweep waited for ever. Now the worker is removed from
    the cluster once it has not answered for `worker_timeout` s, and with no worker left for as long the sweep
    ends with one line (a `ConfigError`); the chunks stored before stay, whole, and the manifest says `failed`."""
    import threading

    from distributed import Client, LocalCluster

    folder, done, stopped = runs_dir(tmp_path, "workers"), threading.Event(), []
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.CRITICAL
        ) as cluster,
        Client(cluster) as client,
    ):
        ((_, worker),) = client.run(os.getpid).items()
        helper = threading.Thread(target=stop_when_stored, args=(folder, lambda: [worker], done, stopped))
        helper.start()
        started = time.time()
        try:
            with pytest.raises(ConfigError) as err, pytest.warns(sweep_module.SweepWarning) as caught:
                run_sweep(
                    parse_grid(WORKER_GRID),
                    tmp_path,
                    n_jobs=1,
                    chunk_size=2,
                    backend="dask",
                    scheduler=cluster.scheduler_address,
                    worker_timeout=6,
                )
        finally:
            done.set()
            helper.join()
            with contextlib.suppress(OSError):
                os.kill(worker, signal.SIGKILL)  # removed from the cluster already: closing it waits for no one
    assert stopped == [worker]
    assert str(err.value).startswith("scheduler: no Dask worker has answered for 6 s or more (")
    assert "\n" not in str(err.value) and time.time() - started < 110
    assert any("removed it from the cluster" in str(w.message) for w in caught)
    stored = quiet_load(tmp_path)
    assert stored.run_id.nunique() >= 2 and (stored.groupby("run_id").size() == 60).all()
    manifest = read_manifest(folder)
    assert manifest["status"] == "failed" and "no Dask worker has answered" in manifest["error"]


@pytest.mark.slow
def test_the_plan_of_a_local_dask_cluster_counts_the_workers_it_has(tmp_path, monkeypatch, capfd):
    """--n-jobs 2 on one core: the local cluster has one worker (with the cap's warning), and the plan says 1 worker
    (it said 2, handed out 2 chunks at once and estimated the time for 2); the manifest too."""
    monkeypatch.setattr(sweep_module.os, "cpu_count", lambda: 1)
    plans = []
    grid = parse_grid('name = "one"\nseeds = 4\n[base]\nnum_epochs = 2\nnum_steps_per_epoch = 1\n')
    with pytest.warns(sweep_module.SweepWarning, match="^n_jobs: 2 worker processes on 1 cores"):
        outcome = run_sweep(grid, tmp_path, n_jobs=2, chunk_size=1, backend="dask", on_plan=plans.append)
    assert [p.workers for p in plans] == [1] and outcome.trained == 4
    assert read_manifest(runs_dir(tmp_path, "one"))["n_jobs"] == 1


def test_the_plan_of_a_scheduler_counts_its_workers_not_n_jobs(tmp_path, monkeypatch):
    """Issue 23: a sweep on a Dask scheduler's cluster (a LocalCluster stands in) with 3 worker threads and
    --n-jobs 1 said "on 1 worker" and handed out one chunk at a time; now it counts the cluster's 3 threads (the
    plan, the chunks handed out at once, the manifest), while the chunk plan (which sets the bytes) still follows
    --n-jobs. A scheduler that does not say how many workers it has: the plan says so, and chunks go out --n-jobs at
    a time."""
    from distributed import Client, LocalCluster

    grid = parse_grid('name = "far"\nseeds = 6\n[base]\nnum_epochs = 2\nnum_steps_per_epoch = 1\n')
    plans = []
    with LocalCluster(
        n_workers=1, threads_per_worker=3, processes=False, dashboard_address=":0", silence_logs=logging.ERROR
    ) as cluster:
        address = cluster.scheduler_address
        outcome = run_sweep(grid, tmp_path / "a", n_jobs=1, chunk_size=2, backend="dask", scheduler=address,
                            on_plan=plans.append)  # fmt: skip
        monkeypatch.setattr(Client, "nthreads", lambda self: (_ for _ in ()).throw(OSError("no answer")))
        silent = run_sweep(grid, tmp_path / "b", n_jobs=1, chunk_size=2, backend="dask", scheduler=address,
                           on_plan=plans.append)  # fmt: skip
    assert [p.workers for p in plans] == [3, None] and outcome.trained == silent.trained == 6
    assert read_manifest(runs_dir(tmp_path / "a", "far"))["n_jobs"] == 3
    assert quiet_load(tmp_path / "a").equals(quiet_load(tmp_path / "b"))  # 3 chunks of 2 either way
    from sortrl.cli import _plan_line

    assert _plan_line(plans[0]) == "6 runs, 0 already stored, 6 to train (12 run-steps) on 3 workers"
    assert _plan_line(plans[1]).endswith("on the Dask scheduler's workers (it did not say how many)")


def test_sigterm_is_held_while_worker_processes_start():
    """`sortrl sweep` raises on SIGTERM (to unwind); raised in the middle of starting a worker process (loky's, the
    progress manager's) it left a half-started child the sweep then waited for at exit, for ever (2 of 16 SIGTERMs
    sent just after the plan line hung, as a batch system's time limit or `kill` would). Now the signal is held
    while processes start and handled at the end."""
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append("handled"))
    try:
        with sweep_module._sigint_blocked():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # a handler that ran at once would have run by now
            calls.append("started")
        assert calls == ["started", "handled"]
        assert signal.getsignal(signal.SIGTERM) is not None and calls.count("handled") == 1
    finally:
        signal.signal(signal.SIGTERM, previous)
