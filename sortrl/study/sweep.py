"""Sweeps: a grid's runs trained in chunks by a pool of workers, stored as they arrive, resumable.

`run_sweep(grid, results)` trains every run of a `sortrl.study.grid.Grid` (the grid
file format and its expansion live there) that `results/runs/<name>/` does not
hold yet: `plan_chunks` splits the runs into chunks that share a batch key,
workers (loky processes here, or a Dask cluster) train each chunk and encode
it as a Parquet file (`sortrl.study.store.encode_chunk`, with each run's
configuration label and config), and this process writes each file as it
arrives (`sortrl.study.store.store_chunk`) and the sweep's manifests.

What can go wrong, and what happens (each is a tested property):

- a worker process dies (the OOM killer, `kill -9`): its chunk is trained
  again, at most `MAX_ATTEMPTS` times; chunks that still fail are left out and
  named in one line (`SweepResult.problem`), the manifest says `incomplete`;
- a worker stops answering (a stopped Dask worker), or a chunk never ends
  (a plug-in stuck in a loop): every `heartbeat` seconds without a finished
  chunk, a `SweepWarning` says what is running, and which chunk has run
  longest, for how long, where, and how long it should take;
  a Dask worker the scheduler has not heard from for `worker_timeout` seconds
  is restarted (a local cluster's) or removed from the cluster (another's),
  with a `SweepWarning`, and its chunks train again on the other workers; a
  cluster left with no worker that answers (or a scheduler that does not) for
  `worker_timeout` seconds ends the sweep with one line, the stored chunks kept;
- Ctrl-C, SIGTERM, an error: the workers are stopped (they ignore Ctrl-C
  themselves, so they print nothing), the stored chunks stay, and the manifest
  says `interrupted` or `failed`; the same command resumes;
- this process is killed (`kill -9`): loky workers notice within a second,
  also while they start (`sortrl.study.lifeline`), and exit, so nothing keeps running.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import gc
import logging
import math
import os
import platform
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

from sortrl.engine.config import RunConfig
from sortrl.engine.registry import ConfigError, check_choice
from sortrl.engine.train import EmptyEpochWarning, PeerDifferenceWarning, batch_key, check_memory, train
from sortrl.study import lifeline
from sortrl.study.grid import Grid
from sortrl.study.store import (
    atomic_write_text,
    completed_run_ids,
    encode_chunk,
    remove_stale_temporaries,
    runs_dir,
    store_chunk,
    write_manifest,
)

MAX_ATTEMPTS = 3
"""Most times a chunk is trained when its worker keeps getting lost (killed, crashed)."""

HEARTBEAT_SECONDS = 60.0
"""A `SweepWarning` is issued after this long without a finished chunk (and again after each such stretch)."""

WORKER_TIMEOUT_SECONDS = 60.0
"""A Dask worker whose scheduler has not heard from it for this long is stopped or gone (its heartbeats come every
0.5-5 s whatever it trains, from a thread of its own): it is restarted or removed and its chunks train elsewhere; a
cluster with no worker that answers for this long ends the sweep (Dask's own limit is 5 minutes, then it waits on)."""

ASSUMED_RUN_STEPS_PER_S = 100_000
"""Run-steps per second one worker trains, for the estimate `sortrl sweep` prints before training: about what one
core of a 2020s machine does on the default model (`make bench`); bigger models are slower."""

REPORT_SECONDS = 0.5
"""Most often a worker tells the client how far its chunk is (`train` counts run-steps once per epoch): two
messages a second per worker, which cost nothing measurable, and a bar that moves while a chunk trains."""


class SweepWarning(UserWarning):
    """Something a sweep survived or is waiting on: a lost worker retried, no chunk finished for a while."""


CHUNK_SIZE = 1024
"""Default most runs per chunk: 8,192 runs of 100 epochs sweep in 61 s at 1,024 and 69 s at 256 (2 cores);
bigger batches amortise the engine's per-step overhead, and a chunk still takes only seconds to redo."""


def plan_chunks(configs: list[RunConfig], chunk_size: int, n_jobs: int) -> list[list[RunConfig]]:
    """Split configs into chunks that share a batch key, at most `chunk_size` runs each.

    Chunks are as even as the batch keys allow (sizes within a batch key
    differ by at most one) and at least `n_jobs` in number when there are
    enough runs, so every worker gets work. No chunk holds more than a
    worker's share (1 / `n_jobs`) of the grid's run-steps when its batch key
    can be split: a key of few but long runs (1,000 epochs among runs of 100)
    would otherwise train on one worker while the others wait. The plan
    depends only on its arguments, which is what lets a resumed sweep
    retrain a lost chunk whole.
    """
    groups: dict[tuple, list[RunConfig]] = {}
    for cfg in configs:
        groups.setdefault(batch_key(cfg), []).append(cfg)
    total = len(configs)
    jobs = max(1, n_jobs)
    target = max(1, min(chunk_size, math.ceil(total / jobs))) if total else chunk_size
    share = sum(c.run_steps for c in configs) / jobs
    chunks = []
    for members in groups.values():
        by_work = math.ceil(sum(c.run_steps for c in members) / share - 1e-9)
        pieces = min(len(members), max(math.ceil(len(members) / target), by_work))
        small, extra = divmod(len(members), pieces)  # sizes differ by at most one: 16 runs by 3 -> 3,3,3,3,2,2
        start = 0
        for i in range(pieces):
            size = small + (i < extra)
            chunks.append(members[start : start + size])
            start += size
    return chunks


class Trained(NamedTuple):
    """What a worker sends back for one chunk: its file (name and bytes), its run ids, the worker's versions and how
    long the chunk took it."""

    name: str
    data: bytes
    run_ids: list[str]
    versions: dict[str, str]
    seconds: float = 0.0
    """Wall time of training and encoding the chunk, on its worker."""


class _Report(NamedTuple):
    """Where a chunk's worker sends its progress: `send((tag, run-steps so far))`, at most every `every` seconds."""

    send: Callable[[Any], Any]
    tag: Any
    """Names the chunk and its attempt, so the client can drop what a lost attempt sent (`_Steps`)."""
    every: float

    def counter(self) -> Callable[[int], None]:
        """The `progress` callback for `train` (called with each epoch's run-steps, from its threads).

        It sends running totals, so a message that is late or lost costs
        nothing. Progress never fails a chunk: once `send` raises (the client
        is gone or stopping), it stops sending.
        """
        lock, steps, due, send = threading.Lock(), 0, time.monotonic() + self.every, self.send

        def count(run_steps: int) -> None:
            nonlocal steps, due, send
            with lock:
                steps += run_steps
                now = time.monotonic()
                if send is None or now < due:
                    return
                due = now + self.every
                try:
                    send((self.tag, steps))
                except Exception:  # noqa: BLE001 -- see above: a bar is not worth a chunk
                    send = None

        return count


def _train_chunk(configs: list[RunConfig], labels: list[str], threads: int, report: _Report | None = None) -> Trained:
    """Worker entry point: train one chunk with `threads` torch threads and encode it (`sortrl.study.store.encode_chunk`).

    `labels[i]` is the configuration label of `configs[i]`. Encoding here, not
    in the client, keeps the client (which shares the machine's cores with the
    workers) nearly idle. The worker's versions let the client refuse results
    from a worker whose sortrl or torch differs from its own. `report`, if
    given, receives the chunk's progress while it trains (it changes nothing
    that is trained).
    """
    start = time.perf_counter()
    progress = None if report is None else report.counter()
    with warnings.catch_warnings():  # a sweep's runs record an empty epoch in their data (frac_reward_zero_std = 1);
        warnings.simplefilter("ignore", EmptyEpochWarning)  # a line per run of a 10,000-run grid would drown the rest
        warnings.simplefilter("ignore", PeerDifferenceWarning)  # `sortrl sweep` warns once per grid file instead
        table = train(configs, progress=progress, workers=threads, with_config=False)
    shared: dict[str, dict[str, Any]] = {}  # one config dict per configuration; only the seed differs
    runs = []
    for cfg, label in zip(configs, labels):
        if label not in shared:
            shared[label] = cfg.to_dict()
        config = shared[label]
        runs.append({"run_id": cfg.run_id, "configuration": label, "seed": cfg.seed, "config": config})
    name, data = encode_chunk(table, runs)
    return Trained(name, data, sorted(cfg.run_id for cfg in configs), _versions(), time.perf_counter() - start)


SORTRL_VERSION = version("sortrl")
"""The installed sortrl's version (its package metadata), read once per process."""


def _versions() -> dict[str, str]:
    """What must match between the client and every worker for their results to mix (plus the worker's host)."""
    import torch

    return {
        "sortrl": SORTRL_VERSION,
        "torch": torch.__version__,
        "MKL_CBWR": os.environ.get("MKL_CBWR", ""),  # MKL's reproducibility mode (set by `import sortrl`)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch runs (pinned by sortrl)
        "host": socket.gethostname(),
    }


MUST_MATCH = ("sortrl", "torch", "MKL_CBWR", "cpu_capability")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_commit() -> str | None:
    return _git("rev-parse", "HEAD") or None


def _git_dirty() -> bool | None:
    """True if sortrl's checkout has uncommitted changes to tracked files (the commit alone does not say what ran)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def environment() -> dict[str, Any]:
    """Versions and machine facts for manifests and benchmarks."""
    import torch

    return {
        "sortrl": SORTRL_VERSION,
        "git_commit": _git_commit(),
        "git_dirty": _git_dirty(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the CPU kernels (sortrl pins AVX2 on x86-64)
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def _cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform.processor()` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class SweepResult:
    name: str
    total: int
    skipped: int
    trained: int
    wall_seconds: float
    """From the start of the sweep to this grid's last stored chunk (grids swept together share one queue)."""
    failed: int = 0
    """Runs left untrained because their chunk's worker was lost `MAX_ATTEMPTS` times."""
    problem: str | None = None
    """One line saying what could not be done (None when every run is stored)."""
    worker_seconds: float = 0.0
    """The workers' time on this grid's chunks (summed over chunks: the grid's own cost, whatever ran beside it)."""


class Plan(NamedTuple):
    """What a sweep is about to do, for the caller's progress line (`run_sweep`'s `on_plan`)."""

    total: int
    stored: int
    to_train: int
    run_steps: int
    """Inner steps summed over the runs to train (one run's: num_epochs x num_steps_per_epoch)."""
    workers: int | None
    """Chunks that train at once: loky processes, or a Dask cluster's worker threads (None: its scheduler did not
    say how many)."""


BACKENDS = ("loky", "dask")
"""Where a sweep's chunks train: `loky` (processes on this machine) or `dask` (a Dask cluster)."""


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class _GridSweep:
    """One grid's part of a sweep: its runs, what is stored, its manifest, and what its chunks bring back."""

    def __init__(
        self, grid: Grid, results: str | Path, start: float, machine: dict[str, Any], settings: dict[str, Any]
    ):
        self.grid, self.start = grid, start
        self.folder = runs_dir(results, grid.name)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)
        self.runs = {run.config.run_id: run for run in grid.runs()}  # distinct configurations: distinct runs
        self.configs = [run.config for run in self.runs.values()]
        done = completed_run_ids(self.folder)
        self.missing = [c for c in self.configs if c.run_id not in done]
        self.stored = {c.run_id for c in self.configs} & done
        self.trained, self.failed, self.gave_up, self.open = 0, 0, 0, 0
        self.worker_seconds = 0.0
        self.problem: str | None = None
        self.announced = False
        self.manifest: dict[str, Any] = {
            **machine,  # `environment()`, read once per sweep (it asks git twice)
            "experiment": grid.name,
            "grid": grid.text,
            "runs": len(self.configs),
            "skipped": len(self.configs) - len(self.missing),
            "to_train": len(self.missing),
            "trained": 0,
            **settings,
            "sweep_id": uuid.uuid4().hex[:12],
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "argv": sys.argv,
            "status": "running",
            "started": _stamp(start),
            "finished": None,
            "wall_seconds": None,
        }

    def chunks(self, chunk_size: int, parallel: int) -> list[list[RunConfig]]:
        """This grid's chunks still to train: its whole plan (`plan_chunks`, which depends only on the grid,
        `chunk_size` and `parallel`), less the runs stored, so a resumed run has the batch-mates it would have had."""
        missing = {c.run_id for c in self.missing}
        planned = plan_chunks(self.configs, chunk_size, parallel)
        return [chunk for chunk in ([c for c in chunk if c.run_id in missing] for chunk in planned) if chunk]

    def announce(self, workers: int | None, chunks: int, grids: list[str]) -> Plan:
        """Write the grid file's copy and the `running` manifest; the `Plan` for the caller's progress line."""
        self.open = chunks
        self.manifest.update(n_jobs=workers, queue=grids)
        atomic_write_text(self.folder / "grid.toml", self.grid.text)
        write_manifest(self.folder, self.manifest)
        self.announced = True
        steps = sum(c.run_steps for c in self.missing)
        return Plan(len(self.configs), len(self.stored), len(self.missing), steps, workers)

    def labels(self, chunk: list[RunConfig]) -> list[str]:
        return [self.runs[c.run_id].configuration for c in chunk]

    def store(self, result: Trained) -> None:
        store_chunk(self.folder, result.name, result.data)
        self.stored.update(result.run_ids)
        self.trained += len(result.run_ids)
        self.worker_seconds += result.seconds
        self.open -= 1

    def give_up(self, lost: _GaveUp) -> None:
        """A chunk whose worker was lost `MAX_ATTEMPTS` times: its runs stay untrained, said in one line."""
        self.gave_up, self.failed, self.open = self.gave_up + 1, self.failed + lost.runs, self.open - 1
        self.problem = (
            f"{self.grid.name}: {self.failed:,} runs in {self.gave_up} chunk(s) not trained: their worker was lost "
            f"{MAX_ATTEMPTS} times (last: {lost.reason}); run the same command again to train them"
        )

    def finish(self) -> SweepResult:
        """The final manifest (`complete` or `incomplete`) and the grid's `SweepResult`."""
        end = time.time()
        configs = self.configs
        self.manifest.update(trained=self.trained, missing=len(configs) - len(self.stored), finished=_stamp(end))
        self.manifest.update(status="complete" if len(self.stored) == len(configs) else "incomplete")
        if self.problem is not None:
            self.manifest["error"] = self.problem
        self.manifest["wall_seconds"] = round(end - self.start, 3)
        self.manifest["worker_seconds"] = round(self.worker_seconds, 3)
        write_manifest(self.folder, self.manifest)
        remove_stale_temporaries(self.folder)
        skipped = len(configs) - len(self.missing)
        return SweepResult(
            self.grid.name,
            len(configs),
            skipped,
            self.trained,
            end - self.start,
            self.failed,
            self.problem,
            self.worker_seconds,
        )

    def abort(self, err: BaseException) -> None:
        """Replace the `running` manifest on disk (if any) by what happened: `interrupted` or `failed`."""
        if not self.announced:
            return
        end = time.time()
        status = "interrupted" if isinstance(err, KeyboardInterrupt | SystemExit) else "failed"
        message = " ".join(str(err).split())[:300]
        error = f"{err.__class__.__name__}: {message}" if message else err.__class__.__name__
        missing = len(self.configs) - len(self.stored)
        self.manifest.update(status=status, error=error, trained=self.trained, missing=missing)
        self.manifest.update(finished=_stamp(end), wall_seconds=round(end - self.start, 3))
        with contextlib.suppress(OSError):
            write_manifest(self.folder, self.manifest)


def run_sweep(
    grid: Grid,
    results: str | Path = "results",
    n_jobs: int = -1,
    chunk_size: int = CHUNK_SIZE,
    on_chunk: Callable[[int], None] | None = None,
    backend: str = "loky",
    scheduler: str | None = None,
    threads: int = 1,
    on_plan: Callable[[Plan], None] | None = None,
    heartbeat: float = HEARTBEAT_SECONDS,
    worker_timeout: float = WORKER_TIMEOUT_SECONDS,
) -> SweepResult:
    """Train every run of `grid` not already stored under `results/runs/<name>/`: `run_sweeps` of one grid.

    `on_plan` is called once with the `Plan` before training starts, `on_chunk` with the number of runs in each
    stored chunk.
    """
    (outcome,) = run_sweeps(
        [grid],
        results,
        n_jobs,
        chunk_size,
        on_chunk=None if on_chunk is None else lambda _, runs, steps: on_chunk(runs),
        backend=backend,
        scheduler=scheduler,
        threads=threads,
        on_plan=None if on_plan is None else lambda _, plan: on_plan(plan),
        heartbeat=heartbeat,
        worker_timeout=worker_timeout,
    )
    return outcome


def run_sweeps(
    grids: list[Grid],
    results: str | Path = "results",
    n_jobs: int = -1,
    chunk_size: int = CHUNK_SIZE,
    on_chunk: Callable[[str, int, int], None] | None = None,
    backend: str = "loky",
    scheduler: str | None = None,
    threads: int = 1,
    on_plan: Callable[[str, Plan], None] | None = None,
    heartbeat: float = HEARTBEAT_SECONDS,
    on_done: Callable[[SweepResult], None] | None = None,
    on_steps: Callable[[str, int], None] | None = None,
    worker_timeout: float = WORKER_TIMEOUT_SECONDS,
) -> list[SweepResult]:
    """Train every run of each of `grids` not already stored under `results/runs/<name>/`, in one queue.

    Each grid's runs are split into chunks by `plan_chunks` (the plan depends
    only on the grid, `chunk_size` and `n_jobs`, not on what is stored, on the
    other grids or on the machine, so a resumed sweep trains each missing run
    with the batch-mates it would have had, and sweeping grids together or one
    by one stores the same bytes). Every grid's chunks then join one queue,
    longest first, so the workers stay busy until the last chunk of the last
    grid (one grid at a time left a worker idle at each grid's end). Chunks are
    trained by workers: `backend="loky"` uses up to `n_jobs` processes here
    (-1: one per core; never more than there are chunks; a `SweepWarning` when
    more than the cores); `backend="dask"` uses the Dask cluster at
    `scheduler` (an address such as ``tcp://host:8786``), or a `LocalCluster`
    of `n_jobs` one-thread workers on this machine if none is given (at most one
    per core); the plan's `workers` counts the cluster's worker threads (with a
    `scheduler`, those that joined it, whatever `n_jobs`, which shapes only the
    chunk plan; None if it does not say). A Dask worker not
    heard from for `worker_timeout` seconds (stopped, or its machine gone) is
    restarted (a local cluster's) or removed from the cluster, and its chunks
    train on the others; no worker answering for that long is a `ConfigError`. Each
    chunk trains with `threads` torch threads (default 1: the tensors are too
    small for intra-op threads to pay, and two levels of threads would
    oversubscribe the cores; parallelism comes from chunks).

    Workers send each chunk back as a Parquet file, which this process writes
    atomically as it arrives (workers need no access to `results`), so a
    sweep killed at any moment resumes where it stopped. Each grid's
    `manifest.json` says `running` while the sweep runs and `complete`,
    `incomplete` (some chunk lost its worker `MAX_ATTEMPTS` times),
    `interrupted` or `failed` at its end; every state is also appended to
    `manifests.jsonl`. Callbacks, each given the grid's name first:
    `on_plan(name, Plan)` once per grid before training starts,
    `on_chunk(name, runs, run_steps)` for each stored chunk, `on_done(SweepResult)` as
    soon as a grid's last chunk is stored, and `on_steps(name, run_steps)` with
    the grid's run-steps trained so far (of its `Plan.run_steps`) as the
    workers train, a few times a second (`REPORT_SECONDS` per worker; from
    another thread). Those count the stored chunks whole plus what running
    chunks reported, so they can go down when a worker is lost (its chunk
    starts again). With `backend="dask"` they move only as chunks are stored.
    Returns one `SweepResult` per grid, in the order of `grids`.
    """
    check_choice("backend", backend, dict.fromkeys(BACKENDS))
    if scheduler is not None:
        check_scheduler(scheduler, backend)
    start = time.time()
    settings = {"chunk_size": chunk_size, "threads": threads, "backend": backend, "scheduler": scheduler}
    machine = environment()
    sweeps = [_GridSweep(grid, results, start, machine, settings) for grid in grids]
    outcomes: dict[int, SweepResult] = {}

    def done(g: int) -> None:
        outcomes[g] = sweeps[g].finish()
        if on_done is not None:
            on_done(outcomes[g])

    try:
        needed = any(s.missing for s in sweeps)
        with _pool(backend, scheduler, n_jobs, threads, needed, worker_timeout) as pool:
            planned = [s.chunks(chunk_size, pool.parallel) for s in sweeps]
            owner = [g for g, chunks in enumerate(planned) for _ in chunks]
            chunks = [chunk for grid_chunks in planned for chunk in grid_chunks]
            pool.start(len(chunks))
            if scheduler is None:  # chunks train side by side on this machine: together they must fit its memory
                configs = [c for chunk in chunks for c in chunk]
                shards, at = [], 0
                for chunk in chunks:
                    shards.append(list(range(at, at + len(chunk))))
                    at += len(chunk)
                check_memory(configs, shards, pool.workers)
            names = [s.grid.name for s in sweeps]
            for g, s in enumerate(sweeps):
                plan = s.announce(pool.workers if pool.counted else None, len(planned[g]), names)
                if on_plan is not None:
                    on_plan(s.grid.name, plan)
            for g, s in enumerate(sweeps):
                if not s.open:  # nothing to train: finished before the queue starts
                    done(g)
            local = _versions()
            labels = [sweeps[owner[i]].labels(chunk) for i, chunk in enumerate(chunks)]
            cost = [sum(c.run_steps for c in chunk) for chunk in chunks]
            steps = None if on_steps is None else _Steps(owner, names, cost, on_steps)
            trained = _train_all(pool, chunks, labels, threads, [names[g] for g in owner], heartbeat, steps)
            with pool.listen(None if steps is None else steps.report):
                for i, result in trained:
                    g = owner[i]
                    if isinstance(result, _GaveUp):
                        sweeps[g].give_up(result)
                    else:
                        _check_versions(result.versions, local)
                        sweeps[g].store(result)
                        if steps is not None:
                            steps.store(i)
                        if on_chunk is not None:
                            on_chunk(names[g], len(result.run_ids), cost[i])
                    if not sweeps[g].open:
                        done(g)
    except BaseException as err:
        for g, s in enumerate(sweeps):
            if g not in outcomes:
                s.abort(err)
        raise
    return [outcomes[g] for g in range(len(sweeps))]


def _check_versions(versions: dict[str, str], local: dict[str, str]) -> None:
    differ = [key for key in MUST_MATCH if versions.get(key) != local[key]]
    if differ:
        theirs = ", ".join(f"{key} {versions.get(key)}" for key in differ)
        ours = ", ".join(f"{key} {local[key]}" for key in differ)
        raise ConfigError(
            f"scheduler: worker on {versions.get('host')} runs {theirs}, this machine {ours}; "
            "results would not be comparable: install the same versions on every worker"
        )


class _GaveUp(NamedTuple):
    """Yielded by `_train_all`, after every other chunk, for a chunk that lost its worker `MAX_ATTEMPTS` times."""

    runs: int
    reason: str
    """Why the last attempt was lost (`_why_lost`)."""


def _train_all(
    pool: _Pool,
    chunks: list[list[RunConfig]],
    labels: list[list[str]],
    threads: int,
    names: list[str],
    heartbeat: float,
    steps: _Steps | None = None,
) -> Iterator[tuple[int, Trained | _GaveUp]]:
    """Train `chunks` on `pool`, yielding (chunk index, `Trained`) as each arrives, then (index, `_GaveUp`) for each
    chunk given up. `names[i]`: the experiment chunk i belongs to (for the warnings). `steps`, if given, learns of
    each chunk handed out and lost, and gives each attempt its tag for the progress it reports.

    At most `pool.workers` chunks are handed out at once, longest first, so a
    chunk that was handed out was running when its worker was lost: only
    those chunks count an attempt. A lost chunk goes back to the front of the
    queue. Any other error in a chunk (a bug, a bad plug-in) ends the sweep.
    """
    cost = [sum(c.run_steps for c in chunk) for chunk in chunks]
    todo = collections.deque(sorted(range(len(chunks)), key=lambda i: -cost[i]))
    attempts: collections.Counter[int] = collections.Counter()
    given_up: dict[int, str] = {}
    running: dict[Any, int] = {}
    since: dict[Any, float] = {}  # when each running chunk was handed out
    quiet_since = time.monotonic()

    def which(indices: Iterable[int]) -> str:
        return ", ".join(dict.fromkeys(names[i] for i in sorted(indices)))

    def hand_out() -> None:
        while todo and len(running) < pool.workers:
            i = todo.popleft()
            report = None if steps is None else pool.report(steps.start(i))
            future = pool.submit(chunks[i], labels[i], threads, report)
            running[future], since[future] = i, time.monotonic()

    next_check = time.monotonic() + pool.poll
    while todo or running:
        hand_out()
        now = time.monotonic()
        if now >= next_check:  # workers that stopped answering: restarted or removed (their chunks train elsewhere)
            for event in pool.check(len(running) + len(todo)):
                warnings.warn(f"{which(running.values())}: {event}", SweepWarning, stacklevel=2)
            next_check = time.monotonic() + pool.poll
        wake = min(quiet_since + heartbeat, next_check)
        finished = pool.wait(list(running), max(0.0, wake - time.monotonic()))
        if not finished and time.monotonic() < quiet_since + heartbeat:
            continue  # time to check the workers, not yet to say so
        if not finished:
            waiting = f", {len(todo)} waiting" if todo else ""
            oldest = min(running, key=since.__getitem__)
            warnings.warn(
                f"{which(running.values())}: no chunk finished in the last {time.monotonic() - quiet_since:.0f} s "
                f"({len(running)} running{pool.where(list(running))}{waiting}); "
                f"{_overdue(running[oldest], len(chunks), len(chunks[running[oldest]]), cost[running[oldest]])} has "
                f"run {time.monotonic() - since[oldest]:.0f} s{pool.where([oldest])}; a worker may be stopped, "
                "overloaded or stuck (in a plug-in?); still waiting (stop and rerun: the stored chunks stay)",
                SweepWarning,
                stacklevel=2,
            )
            quiet_since = time.monotonic()
            continue
        arrived: list[tuple[int, Trained]] = []
        lost: dict[int, str] = {}
        while finished:
            for future in finished:
                i = running.pop(future)
                since.pop(future, None)
                try:
                    arrived.append((i, pool.result(future)))
                except Exception as err:  # noqa: BLE001 -- a lost worker is retried; anything else is re-raised
                    if not pool.is_lost(err):
                        raise
                    lost[i] = _why_lost(err)
            # a broken pool fails every running chunk: collect them now, so one loss is one retry
            finished = pool.wait_all(list(running)) if lost and running and pool.broken() else []
        if lost:
            for i in lost:
                attempts[i] += 1
                if steps is not None:
                    steps.lose(i)
            retry = [i for i in lost if attempts[i] < MAX_ATTEMPTS]
            given_up.update((i, lost[i]) for i in lost if attempts[i] >= MAX_ATTEMPTS)
            todo.extendleft(sorted(retry, key=lambda i: cost[i]))  # back in front, longest first
            pool.renew()
            if retry:
                runs = sum(len(chunks[i]) for i in retry)
                warnings.warn(
                    f"{which(retry)}: a worker was lost ({next(iter(lost.values()))}); training its {len(retry)} "
                    f"chunk(s) of {runs:,} runs again (attempt {max(attempts[i] for i in retry) + 1} of "
                    f"{MAX_ATTEMPTS})",
                    SweepWarning,
                    stacklevel=2,
                )
        if arrived:
            quiet_since = time.monotonic()
            if pool.background:  # the idle workers get their next chunk before this process stores these
                hand_out()
            yield from arrived
    for i, reason in given_up.items():
        yield i, _GaveUp(len(chunks[i]), reason)


def _overdue(i: int, chunks: int, runs: int, run_steps: int) -> str:
    """The chunk that has run longest, named for a heartbeat warning, with the time it should take (at
    `ASSUMED_RUN_STEPS_PER_S`), so that a user can tell a stuck chunk from a slow one."""
    expected = run_steps / ASSUMED_RUN_STEPS_PER_S
    about = "under a second" if expected < 1 else f"about {round(expected):,} s"
    return (
        f"the longest running, chunk {i + 1} of {chunks} ({runs:,} runs, {run_steps:,} run-steps: {about} at "
        f"{ASSUMED_RUN_STEPS_PER_S:,} run-steps/s),"
    )


class _Steps:
    """Run-steps trained so far, per grid: each stored chunk's whole cost plus what the running chunks reported.

    Each attempt at a chunk has its own tag: when a worker is lost, its
    chunk's reported steps are dropped, and so are any late messages of that
    attempt, so the retry counts from zero and no step counts twice. A stored
    chunk counts its whole cost (a run that diverges stops early, so what a
    chunk reports can fall short of it). Thread-safe: reports arrive on the
    pool's listening thread, the rest on the sweep's.
    """

    def __init__(self, owner: list[int], names: list[str], cost: list[int], on_steps: Callable[[str, int], None]):
        self.owner, self.names, self.cost, self.on_steps = owner, names, cost, on_steps
        self.lock = threading.Lock()
        self.stored = [0] * len(names)
        self.attempts: collections.Counter[int] = collections.Counter()
        self.running: dict[int, tuple[int, int]] = {}  # chunk -> (attempt, run-steps it reported)

    def start(self, i: int) -> tuple[int, int]:
        """Chunk `i` is handed out: the tag its reports carry."""
        with self.lock:
            self.attempts[i] += 1
            self.running[i] = (self.attempts[i], 0)
            return i, self.attempts[i]

    def report(self, message: tuple[tuple[int, int], int]) -> None:
        """A worker's `(tag, run-steps so far)`; ignored when that attempt is over (stored or lost)."""
        (i, attempt), steps = message
        with self.lock:
            if self.running.get(i, (None,))[0] != attempt:
                return
            self.running[i] = (attempt, min(steps, self.cost[i]))
            self._tell(self.owner[i])

    def lose(self, i: int) -> None:
        with self.lock:
            self.running.pop(i, None)
            self._tell(self.owner[i])

    def store(self, i: int) -> None:
        with self.lock:
            self.running.pop(i, None)
            self.stored[self.owner[i]] += self.cost[i]
            self._tell(self.owner[i])

    def _tell(self, g: int) -> None:
        running = sum(steps for i, (_, steps) in self.running.items() if self.owner[i] == g)
        self.on_steps(self.names[g], self.stored[g] + running)


def _why_lost(err: BaseException) -> str:
    """A few words on a lost worker: loky's exit codes (`SIGKILL(-9)`: killed, e.g. by the OOM killer) or the error."""
    codes = re.search(r"exit codes of the workers are \{(.*?)\}", str(err))
    if codes:
        return f"a worker process died, exit codes {codes[1]}"
    return f"{err.__class__.__name__}: {' '.join(str(err).split())[:160]}"


class _Pool:
    """Where chunks are trained: in this process (`workers` = 1, no processes to lose)."""

    parallel = 1
    """Parallel slots the chunk plan is made for (`plan_chunks`'s `n_jobs`)."""
    workers = 1
    """Chunks handed out at once (`parallel`, capped at the number of chunks)."""
    counted = True
    """Whether `workers` counts the workers that train (False: a Dask scheduler did not say how many it has)."""
    background = False
    """Whether chunks train elsewhere while this process stores results (else `submit` trains them here)."""

    receive: Callable[[Any], None] | None = None
    """Where chunks' progress reports go while `listen` is on (None: chunks report nothing)."""

    def start(self, chunks: int) -> None:
        """Get ready to train `chunks` chunks (processes start lazily, at the first `submit`)."""
        self.workers = max(1, min(self.parallel, chunks))

    @contextlib.contextmanager
    def listen(self, receive: Callable[[Any], None] | None) -> Iterator[None]:
        """Meanwhile, what chunks submitted with a `report` send arrives at `receive` (here: straight from `train`)."""
        self.receive = receive
        try:
            yield
        finally:
            self.receive = None

    def report(self, tag: Any) -> _Report | None:
        """What a chunk submitted now needs to report its progress under `tag` (None: not listening)."""
        return None if self.receive is None else _Report(self.receive, tag, REPORT_SECONDS)

    def submit(self, configs: list[RunConfig], labels: list[str], threads: int, report: _Report | None = None) -> Any:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(_train_chunk(configs, labels, threads, report))
        except Exception as err:  # noqa: BLE001 -- handed to `result`, as a worker's error would be
            future.set_exception(err)
        return future

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        """The futures that finished within `timeout` seconds (at least one, unless none did)."""
        finished, _ = concurrent.futures.wait(futures, timeout, return_when=concurrent.futures.FIRST_COMPLETED)
        return list(finished)

    def wait_all(self, futures: list[Any], timeout: float = 30) -> list[Any]:
        """The futures that finished within `timeout` seconds, waiting for all of them."""
        finished, _ = concurrent.futures.wait(futures, timeout)
        return list(finished)

    def result(self, future: Any) -> Trained:
        return future.result()

    def is_lost(self, err: BaseException) -> bool:
        """Whether `err` means the chunk's worker was lost (rather than the chunk failing)."""
        return False

    def renew(self) -> None:
        """Replace workers lost since the last call."""

    def broken(self) -> bool:
        """Whether every chunk still running is lost too (a loky pool breaks as a whole when one worker dies)."""
        return False

    def where(self, futures: list[Any]) -> str:
        """Where `futures` run, for a heartbeat message (empty when there is nothing useful to say)."""
        return ""

    poll = math.inf
    """Seconds between two `check`s while chunks are out."""

    def check(self, pending: int) -> list[str]:
        """Deal with workers that stopped answering, `pending` chunks not yet trained; what was done, a line each.

        Raises `ConfigError` when no worker is left to train them.
        """
        return []

    def stop(self) -> None:
        """Stop every worker now (an interrupt or an error): nothing keeps training."""


class _LokyPool(_Pool):
    """loky worker processes on this machine (joblib's executor): they ignore Ctrl-C and exit when we die."""

    def __init__(self, parallel: int):
        self.parallel = parallel
        self.executor: Any = None

    def start(self, chunks: int) -> None:
        super().start(chunks)
        if self.workers == 1:  # one chunk at a time: train here, no process to start (or to lose)
            return
        self.background = True
        cores = os.cpu_count() or 1
        if self.workers > cores:
            warnings.warn(
                f"n_jobs: {self.workers} worker processes on {cores} cores would compete for them (and for memory); "
                f"using {cores}",
                SweepWarning,
                stacklevel=3,
            )
            self.workers = cores
        self.renew()

    def renew(self) -> None:
        with _sigint_blocked():  # workers start with SIGINT blocked (inherited): Ctrl-C is ours to handle
            self.executor = worker_executor(self.workers, idle_seconds=300)
        _EXECUTORS.append(self.executor)

    @contextlib.contextmanager
    def listen(self, receive: Callable[[Any], None] | None) -> Iterator[None]:
        """Workers report through a queue held by a `multiprocessing` manager process (a proxy survives being sent to
        a worker, and a worker killed mid-message harms no one else), drained here by a thread that calls `receive`.
        The manager, like the workers, ignores Ctrl-C and exits once this process is gone."""
        if self.executor is None or receive is None:  # chunks train here: they report straight to `receive`
            with super().listen(receive):
                yield
            return
        import multiprocessing
        from multiprocessing.managers import SyncManager

        # fork: the manager starts in ~30 ms (a spawned one would import sortrl again, ~2 s)
        manager = SyncManager(ctx=multiprocessing.get_context("fork" if sys.platform == "linux" else None))
        with _sigint_blocked():
            manager.start(initializer=worker_init, initargs=(os.getpid(),))
        reports = manager.Queue()
        thread = threading.Thread(target=_drain, args=(reports.get, receive), daemon=True, name="sortrl-progress")
        thread.start()
        try:
            with super().listen(reports.put):
                yield
        finally:
            with contextlib.suppress(Exception):  # the manager is gone already: so is what it held
                reports.put(None)
            thread.join(timeout=5)
            manager.shutdown()

    def submit(self, configs: list[RunConfig], labels: list[str], threads: int, report: _Report | None = None) -> Any:
        if self.executor is None:
            return super().submit(configs, labels, threads, report)
        with _sigint_blocked():  # loky starts (or restarts) worker processes from here
            return self.executor.submit(_train_chunk, configs, labels, threads, report)

    def is_lost(self, err: BaseException) -> bool:
        return isinstance(err, concurrent.futures.BrokenExecutor)

    def broken(self) -> bool:
        return self.executor is not None and bool(self.executor._flags.broken)

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, kill_workers=True)


def _drain(get: Callable[[], Any], receive: Callable[[Any], None]) -> None:
    """Pass what `get` returns to `receive` until it returns None (or fails: the queue's manager is gone)."""
    try:
        while (message := get()) is not None:
            receive(message)
    except (EOFError, OSError):
        return


_EXECUTORS: list[Any] = []
"""The loky executors sweeps used (one, reused by the sweeps of one process, unless a worker was lost)."""


def release_workers() -> None:
    """Stop the worker processes sweeps left idle for the next sweep (else they wait until this process exits).

    `sortrl sweep` calls it after its last grid, so that exiting does not wait
    on them (and a Ctrl-C then has nothing left to interrupt).
    """
    while _EXECUTORS:
        _EXECUTORS.pop().shutdown(wait=True)


class _DaskPool(_Pool):
    """The workers of a Dask cluster (`client`); Dask itself reschedules the tasks of a worker that dies."""

    background = True

    def __init__(self, client: Any, parallel: int, local: bool = False, timeout: float = WORKER_TIMEOUT_SECONDS):
        self.client, self.parallel, self.local, self.timeout = client, parallel, local, timeout
        self.finished: queue.SimpleQueue = queue.SimpleQueue()  # futures as they finish (their callbacks put them)
        self.poll = max(0.2, min(5.0, timeout / 4))
        self.alone_since: float | None = None  # since when no worker has answered
        self.deaf_since: float | None = None  # since when the scheduler has not answered
        self.handled: set[str] = set()  # workers killed or removed (one warning each, whatever the scheduler lists)

    def start(self, chunks: int) -> None:
        """At most as many chunks at once as the cluster has worker threads now (a local cluster: one a core; another:
        whatever joined its scheduler, more or fewer than `--n-jobs`, which only shapes the chunk plan), which the
        plan says. A scheduler that does not say how many: `parallel` at a time, and the plan says it does not know."""
        super().start(chunks)
        try:
            slots = sum(self.client.nthreads().values())
        except Exception:  # noqa: BLE001 -- a count for the plan only: never fail a sweep over it
            slots = 0
        self.counted = slots > 0
        if self.counted:
            self.workers = max(1, min(chunks, slots))

    def check(self, pending: int) -> list[str]:
        """Workers the scheduler has not heard from for `timeout` s: a local one is killed (its nanny starts a new
        one), another is removed from the cluster (Dask retries its chunk elsewhere, or reports it lost after
        `distributed.scheduler.allowed-failures`). `ConfigError` once no worker (or the scheduler) has answered for
        `timeout` s."""

        def heard(dask_scheduler: Any = None) -> dict[str, tuple[float, int]]:  # runs on the scheduler: pickled
            from distributed.metrics import time as now  # by value (a nested function), it needs no sortrl there

            return {a: (now() - ws.last_seen, ws.pid) for a, ws in dask_scheduler.workers.items()}

        async def remove(addresses: list[str], dask_scheduler: Any = None) -> None:
            for address in addresses:
                await dask_scheduler.remove_worker(address=address, stimulus_id="sortrl-silent-worker", close=True)

        now = time.monotonic()
        try:
            workers = self.client.run_on_scheduler(heard, callback_timeout=min(self.timeout, 10.0))
        except Exception:  # noqa: BLE001 -- not answering, or gone: either way it trains nothing
            self.deaf_since = self.deaf_since or now
            if now - self.deaf_since >= self.timeout:
                raise ConfigError(
                    f"{'backend' if self.local else 'scheduler'}: the Dask scheduler has not answered for "
                    f"{now - self.deaf_since:.0f} s ({pending} chunk(s) not trained); the stored chunks are kept: "
                    "run the same command again once it is back"
                ) from None
            return []
        self.deaf_since = None
        self.handled &= set(workers)  # gone from the scheduler's list: an address that joins again is a new worker
        silent = {a: (age, pid) for a, (age, pid) in workers.items() if age >= self.timeout and a not in self.handled}
        alive = [a for a in workers if a not in silent and a not in self.handled]
        self.handled.update(silent)
        events = []
        if silent:
            if self.local:
                events = [self._restart(a, age, pid) for a, (age, pid) in silent.items()]
            else:
                with contextlib.suppress(Exception):
                    self.client.run_on_scheduler(remove, list(silent), callback_timeout=min(self.timeout, 10.0))
                events = [
                    f"Dask worker {a} has not answered for {age:.0f} s (stopped, or its machine is gone): removed it "
                    "from the cluster; its chunks train on the other workers"
                    for a, (age, _) in silent.items()
                ]
        if alive or self.local and silent:  # a local worker killed now starts again
            self.alone_since = None
        else:
            self.alone_since = self.alone_since or now
            if now - self.alone_since >= self.timeout:
                raise ConfigError(
                    f"{'backend' if self.local else 'scheduler'}: no Dask worker has answered for "
                    f"{self.timeout:g} s or more ({pending} chunk(s) not trained); the stored chunks are kept: run the "
                    "same command again once the cluster has workers"
                )
        return events

    def _restart(self, address: str, age: float, pid: int) -> str:
        """Kill the local worker `address` (process `pid`, one of ours) that stopped answering: its nanny starts a
        new one."""
        import psutil  # a requirement of distributed's

        try:
            process = psutil.Process(pid)
            if process.ppid() != os.getpid():
                raise psutil.NoSuchProcess(pid)
            process.kill()
        except psutil.Error:
            return f"Dask worker {address} has not answered for {age:.0f} s; its process is gone"
        return (
            f"Dask worker {address} has not answered for {age:.0f} s (stopped?): killed it (process {pid}), a new "
            "one starts; its chunks train again"
        )

    def submit(self, configs: list[RunConfig], labels: list[str], threads: int, report: _Report | None = None) -> Any:
        future = self.client.submit(_train_chunk, configs, labels, threads, report, pure=False)
        future.add_done_callback(self.finished.put)
        return future

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        try:
            finished = [self.finished.get(timeout=timeout)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                finished.append(self.finished.get_nowait())
        return finished

    def report(self, tag: Any) -> _Report | None:
        """None: chunks on a cluster report nothing while they train (progress moves as each chunk is stored)."""
        return None

    def is_lost(self, err: BaseException) -> bool:
        import distributed

        return isinstance(err, distributed.KilledWorker)

    def where(self, futures: list[Any]) -> str:
        with contextlib.suppress(Exception):  # a diagnostic only: never fail a sweep over it
            keys = {f.key for f in futures}
            busy = sorted(worker for worker, tasks in self.client.processing().items() if keys & set(tasks))
            return f" on {', '.join(busy)}" if busy else ""
        return ""

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.cancel(list(self.client.futures), force=True)


@contextlib.contextmanager
def _pool(
    backend: str,
    scheduler: str | None,
    n_jobs: int,
    threads: int,
    needed: bool,
    timeout: float = WORKER_TIMEOUT_SECONDS,
) -> Iterator[_Pool]:
    """The pool a sweep trains on; stopped (workers killed) if the sweep ends by an exception or an interrupt."""
    cores = os.cpu_count() or 1
    parallel = cores if n_jobs < 1 else n_jobs
    with contextlib.ExitStack() as stack:
        if not needed or backend == "loky":
            pool = _LokyPool(parallel)
        else:
            with _sigint_blocked():  # a local cluster's processes start with SIGINT blocked: Ctrl-C is ours
                client = stack.enter_context(_dask_client(scheduler, parallel))
            planned = n_jobs if n_jobs >= 1 else max(1, sum(client.nthreads().values()))
            pool = _DaskPool(client, planned, local=scheduler is None, timeout=timeout)
        try:
            yield pool
        except BaseException:
            pool.stop()
            raise


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread meanwhile, so that the processes (and threads) started here inherit it blocked;
    hold a SIGTERM that a Python handler would raise on, until the end.

    A Ctrl-C at the terminal goes to every process of the foreground group;
    workers that never see it print nothing, and only this process reacts
    (one line, then it stops the workers). A Ctrl-C meanwhile is not lost:
    another thread of this process, or this one once unblocked, takes it.
    Python's resource trackers are started first, because starting one
    unblocks SIGINT in the thread that starts it (bpo-33613's code).
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    from multiprocessing import resource_tracker

    from joblib.externals.loky.backend import resource_tracker as loky_tracker

    resource_tracker.ensure_running()
    loky_tracker.ensure_running()
    # SIGTERM is held too, by its Python handler (a mask would be inherited: Dask's nanny stops its workers by it):
    # raised in the middle of starting a process, it left a half-started one that this process then waited for at
    # exit, for ever (or a worker's traceback); it is raised here once they are up
    handler, held = signal.getsignal(signal.SIGTERM), []
    if callable(handler):
        signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if callable(handler):
            signal.signal(signal.SIGTERM, handler)
            if held:
                handler(signal.SIGTERM, None)


def worker_executor(workers: int, idle_seconds: float) -> Any:
    """loky's reusable executor of `workers` processes (a sweep's, a report's), which exit after `idle_seconds` idle.

    Each worker runs `worker_init` and watches this process from its first
    `import sortrl` (`sortrl.study.lifeline`), so that it exits within a
    second of this process's death even while it imports torch. Call it
    within `_sigint_blocked`: loky may start processes here.
    """
    from joblib.externals.loky import get_reusable_executor

    return get_reusable_executor(
        max_workers=workers,
        timeout=idle_seconds,
        initializer=worker_init,
        initargs=(os.getpid(),),
        env=lifeline.child_environment(),
    )


def worker_init(parent: int) -> None:
    """Set up a loky worker (a sweep's, a report's) or a forked helper process: ignore Ctrl-C (the client handles it)
    and exit soon after `parent` dies (`sortrl.study.lifeline`), so that a killed client leaves no process behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the imports' objects (torch's, pandas') live as long as the worker: out of every collection,
    # including the one at exit, which took ~0.5 s of each worker's shutdown at the end of a sweep
    gc.freeze()
    lifeline.watch_parent(parent)  # a loky worker watches it already; a forked process starts here


def check_scheduler(scheduler: str, backend: str = "dask") -> None:
    """Raise `ConfigError` unless `scheduler` looks like a Dask scheduler address and the backend is dask."""
    if backend != "dask":
        raise ConfigError(f"scheduler: only used with backend 'dask', not {backend!r}")
    if not re.fullmatch(r"((\w+://)?[\w.\-\[\]:]+:\d+|inproc://\S+)", scheduler):
        raise ConfigError(f"scheduler: expected a Dask scheduler address such as tcp://host:8786, got {scheduler!r}")


DASK_MISSING = "backend: 'dask' needs the optional extra dask[distributed] (pip install 'sortrl[dask]')"


@contextlib.contextmanager
def _dask_client(scheduler: str | None, local_workers: int, timeout: float = 30) -> Iterator[Any]:
    """A `distributed.Client` of the cluster at `scheduler`, or of a new `LocalCluster` (closed on exit).

    A new cluster has `local_workers` workers, at most one per core (a `SweepWarning` says when fewer). Within
    `timeout` seconds a new cluster's workers are up, or a worker has joined `scheduler`; else, or when a
    local worker process dies (or is stopped) while it starts, a `ConfigError` (one line), and no local worker
    process is left behind.
    """
    try:
        import distributed
    except ImportError:
        raise ConfigError(DASK_MISSING) from None
    if scheduler is None:
        import multiprocessing

        cores = os.cpu_count() or 1
        if local_workers > cores:  # as the loky pool caps its workers
            warnings.warn(
                f"n_jobs: {local_workers} worker processes on {cores} cores would compete for them (and for memory); "
                f"using {cores}",
                SweepWarning,
                stacklevel=4,
            )
        before = set(multiprocessing.active_children())
        try:
            cluster = distributed.LocalCluster(
                n_workers=min(local_workers, cores),
                threads_per_worker=1,
                processes=True,
                # any free port: with None this distributed still tries :8787 and warns when another cluster has it
                dashboard_address=":0",
                # a task's failure reaches us as its exception (one line); what the workers log at ERROR is their
                # side of it ("Compute Failed") or comm noise, e.g. a heartbeat lost when Ctrl-C stops the scheduler
                silence_logs=logging.CRITICAL,
                death_timeout=timeout,  # how long a worker may take to start (a stopped one: for ever)
            )
        except Exception as err:  # noqa: BLE001 -- whatever stopped the start (distributed's own clean-up may
            # fail too, e.g. an AssertionError closing a worker that is still starting): one line
            _end_workers(set(multiprocessing.active_children()) - before)
            raise ConfigError(
                f"backend: the local Dask cluster did not start: a worker process died, or did not start within "
                f"{timeout:g} s ({_start_fault(err)}); run the sweep again, or use --backend loky"
            ) from None
        with cluster, distributed.Client(cluster) as client:
            yield client
        return
    try:
        client = distributed.Client(scheduler, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as err:
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(f"scheduler: cannot connect to {scheduler} ({err.__class__.__name__}: {reason})") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, OSError):
            raise ConfigError(f"scheduler: no Dask worker joined {scheduler} within {timeout:g} s") from None
        yield client


def _end_workers(processes: set[Any]) -> None:
    """Kill the stopped ones (SIGSTOP) of `processes`, the workers a local Dask cluster started before it failed.

    distributed asked them all to close; a stopped one cannot, and this process's exit would wait for it for ever.
    distributed reaps them at exit: its log of that ("reaping stray process") is silenced, like its workers' logs.
    """
    import psutil  # a requirement of distributed's

    for process in processes:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(process.pid).status() == psutil.STATUS_STOPPED:
                process.kill()
    logging.getLogger("distributed.process").setLevel(logging.CRITICAL)


def _start_fault(err: BaseException) -> str:
    """What stopped a local Dask cluster's start, in a few words: its error and the one that caused it."""
    causes = [err, *([err.__cause__] if err.__cause__ is not None else [])]
    return "; ".join(" ".join(f"{e.__class__.__name__}: {e}".split())[:160] for e in causes)
