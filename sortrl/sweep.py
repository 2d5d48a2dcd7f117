"""Sweeps: a grid's runs trained in chunks by a pool of workers, stored as they arrive, resumable.

`run_sweep(grid, results)` trains every run of a `sortrl.grid.Grid` (the grid
file format and its expansion live there) that `results/runs/<name>/` does not
hold yet: `plan_chunks` splits the runs into chunks that share a batch key,
joblib workers (loky processes here, or a Dask cluster) train the chunks, and
this process stores each chunk (`sortrl.store.write_chunk`, with each run's
configuration label and config) and the sweep's manifests.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sortrl import __version__
from sortrl.config import RunConfig
from sortrl.grid import Grid, Run
from sortrl.registry import ConfigError, check_choice
from sortrl.store import (
    atomic_write_text,
    completed_run_ids,
    remove_stale_temporaries,
    runs_dir,
    write_chunk,
    write_manifest,
)
from sortrl.train import batch_key, train


def plan_chunks(configs: list[RunConfig], chunk_size: int, n_jobs: int) -> list[list[RunConfig]]:
    """Split configs into chunks that share a batch key, at most `chunk_size` runs each.

    Chunks are as even as the batch keys allow (sizes within a batch key
    differ by at most one) and at least `n_jobs` in number when there are
    enough runs, so every worker gets work. The plan depends only on its
    arguments, which is what lets a resumed sweep retrain a lost chunk whole.
    """
    groups: dict[tuple, list[RunConfig]] = {}
    for cfg in configs:
        groups.setdefault(batch_key(cfg), []).append(cfg)
    total = len(configs)
    target = max(1, min(chunk_size, math.ceil(total / max(1, n_jobs)))) if total else chunk_size
    chunks = []
    for members in groups.values():
        pieces = math.ceil(len(members) / target)
        small, extra = divmod(len(members), pieces)  # sizes differ by at most one: 16 runs by 3 -> 3,3,3,3,2,2
        start = 0
        for i in range(pieces):
            size = small + (i < extra)
            chunks.append(members[start : start + size])
            start += size
    return chunks


def _train_chunk(configs: list[RunConfig], threads: int) -> tuple[pd.DataFrame, dict[str, str]]:
    """Worker entry point: train one chunk with `threads` torch threads.

    Returns the chunk's table and the worker's versions, so the client can
    refuse results from a worker whose sortrl or torch differs from its own.
    """
    return train(configs, workers=threads, with_config=False), _versions()


def _versions() -> dict[str, str]:
    """What must match between the client and every worker for their results to mix (plus the worker's host)."""
    import torch

    return {
        "sortrl": __version__,
        "torch": torch.__version__,
        "MKL_CBWR": os.environ.get("MKL_CBWR", ""),  # MKL's reproducibility mode (set by `import sortrl`)
        "host": socket.gethostname(),
    }


MUST_MATCH = ("sortrl", "torch", "MKL_CBWR")


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
        "sortrl": __version__,
        "git_commit": _git_commit(),
        "git_dirty": _git_dirty(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


@dataclass
class SweepResult:
    name: str
    total: int
    skipped: int
    trained: int
    wall_seconds: float


BACKENDS = ("loky", "dask")
"""joblib backends a sweep can run on: `loky` (processes on this machine) or `dask` (a Dask cluster)."""


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def run_sweep(
    grid: Grid,
    results: str | Path = "results",
    n_jobs: int = -1,
    chunk_size: int = 256,
    on_chunk: Callable[[int], None] | None = None,
    backend: str = "loky",
    scheduler: str | None = None,
    threads: int = 1,
) -> SweepResult:
    """Train every run of `grid` not already stored under `results/runs/<name>/`.

    The grid's runs are split into chunks by `plan_chunks` (the plan depends
    only on the grid, `chunk_size` and the number of workers, not on what is
    stored, so a resumed sweep trains each missing run with the batch-mates it
    would have had). Chunks are trained by joblib workers: `backend="loky"`
    uses `n_jobs` processes here (-1: one per core); `backend="dask"` uses
    the Dask cluster at `scheduler` (an address such as ``tcp://host:8786``),
    or a `LocalCluster` of `n_jobs` one-thread workers on this machine if none
    is given. Each chunk trains with `threads` torch threads (default 1: the
    tensors are too small for intra-op threads to pay, and on a busy machine
    they cost several times over; parallelism comes from chunks).

    Workers return their tables to this process, which writes each chunk
    atomically as it arrives (workers need no access to `results`), so a sweep
    killed at any moment resumes where it stopped. `manifest.json` says
    `running` while the sweep runs and `complete` (or `interrupted`/`failed`)
    at its end; every state is also appended to `manifests.jsonl`.
    `on_chunk` is called with the number of runs in each stored chunk.
    """
    check_choice("backend", backend, dict.fromkeys(BACKENDS))
    if scheduler is not None:
        check_scheduler(scheduler, backend)
    start = time.time()
    folder = runs_dir(results, grid.name)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    runs = {run.config.run_id: run for run in grid.runs()}  # distinct configurations have distinct runs (parse_grid)
    configs = [run.config for run in runs.values()]
    done = completed_run_ids(folder)
    missing = [c for c in configs if c.run_id not in done]
    stored = {c.run_id for c in configs} & done
    manifest: dict[str, Any] = {
        **environment(),
        "experiment": grid.name,
        "grid": grid.text,
        "runs": len(configs),
        "skipped": len(configs) - len(missing),
        "to_train": len(missing),
        "trained": 0,
        "chunk_size": chunk_size,
        "threads": threads,
        "backend": backend,
        "scheduler": scheduler,
        "sweep_id": uuid.uuid4().hex[:12],
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": sys.argv,
        "status": "running",
        "started": _stamp(start),
        "finished": None,
        "wall_seconds": None,
    }
    trained, announced = 0, False
    try:
        with _pool(backend, scheduler, n_jobs, threads, bool(missing)) as pool:
            chunks = [
                [c for c in chunk if c.run_id not in done] for chunk in plan_chunks(configs, chunk_size, pool.workers)
            ]
            chunks = [chunk for chunk in chunks if chunk]
            manifest["n_jobs"] = pool.workers
            atomic_write_text(folder / "grid.toml", grid.text)
            write_manifest(folder, manifest)
            announced = True
            local = _versions()
            for table, versions in pool.map(chunks):
                differ = [key for key in MUST_MATCH if versions.get(key) != local[key]]
                if differ:
                    theirs = ", ".join(f"{key} {versions.get(key)}" for key in differ)
                    ours = ", ".join(f"{key} {local[key]}" for key in differ)
                    raise ConfigError(
                        f"scheduler: worker on {versions.get('host')} runs {theirs}, this machine {ours}; "
                        "results would not be comparable: install the same versions on every worker"
                    )
                ids = set(table["run_id"].unique())
                write_chunk(folder, table, [_stored(runs[i]) for i in sorted(ids)])
                stored |= ids
                trained += len(ids)
                if on_chunk is not None:
                    on_chunk(len(ids))
    except BaseException as err:
        if announced:  # the `running` manifest is on disk: replace it with what happened
            end = time.time()
            status = "interrupted" if isinstance(err, KeyboardInterrupt | SystemExit) else "failed"
            message = " ".join(str(err).split())[:300]
            error = f"{err.__class__.__name__}: {message}" if message else err.__class__.__name__
            manifest.update(status=status, error=error, trained=trained, missing=len(configs) - len(stored))
            manifest.update(finished=_stamp(end), wall_seconds=round(end - start, 3))
            with contextlib.suppress(OSError):
                write_manifest(folder, manifest)
        raise
    end = time.time()
    manifest.update(trained=trained, missing=len(configs) - len(stored), finished=_stamp(end))
    manifest.update(status="complete" if len(stored) == len(configs) else "incomplete")
    manifest["wall_seconds"] = round(end - start, 3)
    write_manifest(folder, manifest)
    remove_stale_temporaries(folder)
    return SweepResult(grid.name, len(configs), len(configs) - len(missing), trained, end - start)


def _stored(run: Run) -> dict[str, Any]:
    """What a chunk stores about `run` besides its rows (see `sortrl.store.RUN_KEYS`)."""
    return {
        "run_id": run.config.run_id,
        "configuration": run.configuration,
        "seed": run.seed,
        "config": run.config.to_dict(),
    }


@dataclass
class _Pool:
    """Where chunks are trained: `workers` parallel slots and a `map` yielding (table, versions) per chunk."""

    workers: int
    map: Callable[[list[list[RunConfig]]], Iterator[tuple[pd.DataFrame, dict[str, str]]]]


@contextlib.contextmanager
def _pool(backend: str, scheduler: str | None, n_jobs: int, threads: int, needed: bool) -> Iterator[_Pool]:
    cores = os.cpu_count() or 1
    if backend == "loky" or not needed:
        workers = cores if n_jobs < 1 else n_jobs
        yield _Pool(workers, lambda chunks: _map_loky(chunks, workers, threads))
        return
    with _dask_client(scheduler, cores if n_jobs < 1 else n_jobs) as client:
        workers = n_jobs if n_jobs >= 1 else max(1, sum(client.nthreads().values()))
        yield _Pool(workers, lambda chunks: _map_dask(chunks, client, threads))


def _map_loky(chunks: list[list[RunConfig]], workers: int, threads: int) -> Iterator[tuple[pd.DataFrame, dict]]:
    import joblib

    if workers == 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield _train_chunk(chunk, threads)
        return
    parallel = joblib.Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered")
    yield from parallel(joblib.delayed(_train_chunk)(chunk, threads) for chunk in chunks)


def _map_dask(chunks: list[list[RunConfig]], client: Any, threads: int) -> Iterator[tuple[pd.DataFrame, dict]]:
    import joblib

    if not chunks:
        return
    with joblib.parallel_config(backend="dask", client=client):
        parallel = joblib.Parallel(return_as="generator_unordered")
        yield from parallel(joblib.delayed(_train_chunk)(chunk, threads) for chunk in chunks)


def check_scheduler(scheduler: str, backend: str = "dask") -> None:
    """Raise `ConfigError` unless `scheduler` looks like a Dask scheduler address and the backend is dask."""
    if backend != "dask":
        raise ConfigError(f"scheduler: only used with backend 'dask', not {backend!r}")
    if not re.fullmatch(r"((\w+://)?[\w.\-\[\]:]+:\d+|inproc://\S+)", scheduler):
        raise ConfigError(f"scheduler: expected a Dask scheduler address such as tcp://host:8786, got {scheduler!r}")


DASK_MISSING = "backend: 'dask' needs the optional extra dask[distributed] (pip install 'sortrl[dask]')"


@contextlib.contextmanager
def _dask_client(scheduler: str | None, local_workers: int, timeout: float = 30) -> Iterator[Any]:
    """A `distributed.Client` of the cluster at `scheduler`, or of a new `LocalCluster` (closed on exit)."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(DASK_MISSING) from None
    if scheduler is None:
        cluster = distributed.LocalCluster(
            n_workers=local_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
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
