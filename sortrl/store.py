"""Results on disk: atomic Parquet chunks, manifests, and tidy loading.

Layout under a results folder (default `results/`):

    runs/<experiment>/grid.toml           the grid file the sweep ran
    runs/<experiment>/manifest.json       the latest sweep: versions, status, times and wall time
    runs/<experiment>/manifests.jsonl     every sweep's manifest, one JSON object per line (start and end)
    runs/<experiment>/chunk-<id>.parquet  one chunk of runs, one row per (run, epoch)

Every file is written to a hidden temporary name in the same folder
(`.<name>.tmp-<host>-<pid>-<random>`) and renamed into place (`os.replace`,
atomic on POSIX), so a kill at any moment leaves either the old file, the new
file, or a hidden temporary that is never read as a result and that the next
sweep removes (`remove_stale_temporaries`). A chunk's name is a hash of its
run ids, so two sweeps that train the same chunk write the same file;
`load_runs` also drops duplicate runs, so concurrent sweeps never make a run
appear twice.

Every chunk carries `SCHEMA_VERSION` in its Parquet metadata. A chunk of
another version, a corrupt or truncated chunk, or any other file in an
experiment folder is skipped with a `StoreWarning` naming it: never a crash,
never a silent mix. A skipped chunk's runs do not count as done, so the next
sweep trains them again. Nothing is ever unpickled or evaluated: chunks are
Parquet, manifests JSON, grids TOML.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import socket
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"
"""Version of the run-table layout; bump it when columns change meaning."""

SCHEMA_KEY = b"sortrl_schema"

REQUIRED_COLUMNS = ("run_id", "status", "epoch")
"""Columns every chunk must have to count as results."""

MANIFEST = "manifest.json"
HISTORY = "manifests.jsonl"
KNOWN_FILES = ("grid.toml", MANIFEST, HISTORY, "chunk-*.parquet")
"""Names a sweep writes into an experiment folder; anything else there is foreign (hidden files aside)."""

STALE_SECONDS = 24 * 3600
"""A temporary file older than this is removed even if its writer's liveness cannot be checked."""

_TMP = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[^/]*$")


class StoreWarning(UserWarning):
    """A file under `runs/` was skipped: corrupt, truncated, foreign, or of another schema version."""


def _warn(message: str) -> None:
    warnings.warn(message, StoreWarning, stacklevel=3)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def runs_dir(results: str | Path, experiment: str) -> Path:
    return Path(results) / "runs" / experiment


def temporary_prefix(name: str) -> str:
    """Prefix of a temporary for `name`: hidden, and naming this host and process (see `remove_stale_temporaries`)."""
    return f".{name}.tmp-{_host()}-{os.getpid()}-"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a hidden temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name))
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from the rest of a group
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path, max_age: float = STALE_SECONDS) -> list[Path]:
    """Delete temporaries left by killed writers: this host's dead processes, or anything older than `max_age` s.

    A temporary of a live process (e.g. a concurrent sweep) is left alone.
    Returns the removed paths.
    """
    removed = []
    if not folder.is_dir():
        return removed
    host, now = _host(), time.time()
    for path in folder.iterdir():
        match = _TMP.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            old = now - path.stat().st_mtime > max_age
        except FileNotFoundError:  # renamed into place meanwhile
            continue
        if old or (match["host"] == host and not _pid_alive(int(match["pid"]))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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
    """The chunk files of an experiment folder, sorted; warns about (and skips) any foreign file."""
    if not folder.is_dir():
        return []
    chunks = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith("."):  # temporaries of atomic writes, editor and OS files: never results
            continue
        known = any(fnmatch.fnmatchcase(name, pattern) for pattern in KNOWN_FILES)
        if known and path.is_file():
            if name.startswith("chunk-"):
                chunks.append(path)
        else:
            _warn(f"skipping {path}: not a sortrl results file (expected {', '.join(KNOWN_FILES)})")
    return chunks


def _read_chunk(path: Path) -> pd.DataFrame | None:
    """One chunk, or None with a warning naming the file if it is corrupt, foreign or of another schema.

    The whole file is read and decoded, so a chunk that loads here loads in
    `load_runs` too (its runs are then safe to skip when resuming).
    """
    try:
        version = (pq.read_schema(path).metadata or {}).get(SCHEMA_KEY)
        if version != SCHEMA_VERSION.encode():
            found = version.decode(errors="replace") if version else "none (not written by sortrl)"
            _warn(f"skipping {path}: schema version {found}, this sortrl reads version {SCHEMA_VERSION}")
            return None
        table = pq.read_table(path).to_pandas()
    except Exception as err:  # noqa: BLE001 -- any decoding failure of a file on disk means: skip it
        reason = " ".join(str(err).split())[:200]
        _warn(f"skipping {path}: not a readable sortrl results file ({err.__class__.__name__}: {reason})")
        return None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        _warn(f"skipping {path}: schema version {SCHEMA_VERSION} but no column {missing[0]!r}")
        return None
    return table


def completed_run_ids(folder: Path) -> set[str]:
    """Run ids stored in readable chunks of `folder` (unreadable chunks are skipped with a warning)."""
    done: set[str] = set()
    for path in _chunk_files(folder):
        part = _read_chunk(path)
        if part is not None:
            done.update(part["run_id"].unique())
    return done


def load_runs(results: str | Path = "results", experiments: Iterable[str] | None = None) -> pd.DataFrame:
    """Every stored run as one tidy table, with an `experiment` column.

    Duplicated runs (the same `run_id` in two chunks, e.g. from concurrent
    sweeps with different chunk sizes) appear once, from the first chunk in
    file-name order. Corrupt, foreign or other-schema files in
    `runs/<experiment>/` are skipped with a `StoreWarning` naming them.
    """
    root = Path(results) / "runs"
    names = []
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.is_dir():
                names.append(path.name)
            elif not path.name.startswith("."):
                _warn(f"skipping {path}: not an experiment folder (runs/ holds one folder per experiment)")
    if experiments is not None:
        wanted = set(experiments)
        names = [n for n in names if n in wanted]
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
    """Write `manifest.json` (the latest sweep) atomically and append the manifest to `manifests.jsonl`."""
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    append_history(folder, manifest)


def append_history(folder: Path, manifest: dict) -> None:
    """Append one line to `manifests.jsonl` with a single `write` (O_APPEND: concurrent sweeps do not interleave)."""
    line = (json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(folder / HISTORY, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a writer was killed mid-line: start a fresh one
            line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)


def read_manifest(folder: Path) -> dict | None:
    """The latest sweep's manifest, or None. A `running` sweep of this host whose process is gone reads `interrupted`."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if manifest.get("status") == "running" and manifest.get("host") == _host():
        pid = manifest.get("pid")
        if isinstance(pid, int) and not _pid_alive(pid):
            manifest["status"] = "interrupted"
    return manifest


def read_history(folder: Path) -> list[dict]:
    """Every manifest in `manifests.jsonl`, oldest first (lines that do not parse are skipped)."""
    try:
        lines = (folder / HISTORY).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out
