"""Results on disk: atomic Parquet chunks, manifests, and tidy loading.

Layout under a results folder (default `results/`):

    runs/<experiment>/grid.toml          the grid file the sweep ran
    runs/<experiment>/manifest.json      versions, times and wall time of the last sweep
    runs/<experiment>/chunk-<id>.parquet  one chunk of runs, one row per (run, epoch)

Every file is written to a temporary name in the same folder and renamed into
place (`os.replace`, atomic on POSIX), so an interrupt never leaves a
half-written file. A chunk's name is a hash of its run ids, so two sweeps that
train the same chunk write the same file; `load_runs` also drops duplicate
runs, so concurrent sweeps never make a run appear twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"
"""Version of the run-table layout; bump it when columns change meaning."""

SCHEMA_KEY = b"sortrl_schema"


def runs_dir(results: str | Path, experiment: str) -> Path:
    return Path(results) / "runs" / experiment


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_chunk(folder: Path, table: pd.DataFrame) -> Path:
    """Store one chunk of finished runs (a `train` table) atomically; returns its path."""
    run_ids = sorted(table["run_id"].unique())
    name = hashlib.sha256(",".join(run_ids).encode()).hexdigest()[:16]
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), SCHEMA_KEY: SCHEMA_VERSION.encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(arrow, sink)
    path = folder / f"chunk-{name}.parquet"
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def _chunk_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("chunk-*.parquet")) if folder.is_dir() else []


def _read_chunk(path: Path, columns: list[str] | None = None) -> pd.DataFrame | None:
    """One chunk, or None with a warning naming the file if it is corrupt, foreign or of another schema."""
    try:
        version = (pq.read_schema(path).metadata or {}).get(SCHEMA_KEY)
        if version != SCHEMA_VERSION.encode():
            found = version.decode() if version else "none"
            warnings.warn(f"skipping {path}: schema version {found}, expected {SCHEMA_VERSION}", stacklevel=3)
            return None
        return pq.read_table(path, columns=columns).to_pandas()
    except (OSError, pa.ArrowException, ValueError) as err:
        warnings.warn(f"skipping {path}: not a readable sortrl results file ({err})", stacklevel=3)
        return None


def completed_run_ids(folder: Path) -> set[str]:
    """Run ids already stored in `folder` (unreadable chunks are skipped with a warning)."""
    done: set[str] = set()
    for path in _chunk_files(folder):
        part = _read_chunk(path, columns=["run_id"])
        if part is not None:
            done.update(part["run_id"].unique())
    return done


def load_runs(results: str | Path = "results", experiments: Iterable[str] | None = None) -> pd.DataFrame:
    """Every stored run as one tidy table, with an `experiment` column.

    Duplicated runs (the same `run_id` in two chunks, e.g. from concurrent
    sweeps) appear once. Corrupt, foreign or other-schema files in
    `runs/<experiment>/` are skipped with a warning naming them.
    """
    root = Path(results) / "runs"
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if experiments is not None:
        names = [n for n in names if n in set(experiments)]
    frames = []
    for name in names:
        seen: set[str] = set()
        for path in _chunk_files(root / name):
            part = _read_chunk(path)
            if part is None:
                continue
            part = part[~part["run_id"].isin(seen)]
            seen.update(part["run_id"].unique())
            frames.append(part.assign(experiment=name))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values(["experiment", "run_id", "epoch"], kind="stable").reset_index(drop=True)


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(folder: Path) -> dict | None:
    path = folder / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
