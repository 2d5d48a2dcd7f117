"""Results on disk: atomic Parquet chunks, manifests, and loading that skips (and names) what it cannot trust.

Layout under a results folder (default `results/`):

    runs/<experiment>/grid.toml           the grid file the sweep ran
    runs/<experiment>/manifest.json       the latest sweep: versions, status, times and wall time
    runs/<experiment>/manifests.jsonl     every sweep's manifest, one JSON object per line (start and end)
    runs/<experiment>/chunk-<runs>-<sum>.parquet  one chunk of runs (schema below)
    runs/<experiment>/report-cache.pkl    the report's analysis and figures of it (`sortrl.render.cache`)

A chunk (schema version 3) is one Parquet file. Its rows are the per-epoch
metrics, one row per (run, epoch): `run_id`, `epoch`, `step` and the metric
columns of `sortrl.engine.train.train`. Its key-value metadata holds `SCHEMA_KEY`
and, under `RUNS_KEY`, the per-run table as JSON:
`{"configs": [config, ...], "runs": [run, ...]}`, where each run has
`run_id`, `configuration` (its label in its grid), `seed`, `status` (`ok` or
`diverged`), `diverged_epoch` (-1 if none) and `config`, the position in
`configs` of its `RunConfig.to_dict()` without the seed (the runs of one
configuration share it). So each run's config is stored once, not on every
row, and a reader learns which runs a file holds, with their configurations,
from its footer alone, then reads only the row columns it needs. `Chunk.runs`
gives each run's record with its whole config (`RUN_KEYS`).

Every file is written to a hidden temporary name in the same folder
(`.<name>.tmp-<host>-<pid>-<random>`) and renamed into place (`os.replace`,
atomic on POSIX), so a kill at any moment leaves either the old file, the new
file, or a hidden temporary that is never read as a result and that the next
sweep removes (`remove_stale_temporaries`). A chunk's name is
`chunk-<runs>-<sum>.parquet`: `<runs>` hashes its run ids and `<sum>` is its
checksum, the first 16 hex digits of the SHA-256 of the file's bytes. A chunk's
bytes depend only on its runs (batch invariance), so two sweeps that train the
same chunk write the same file; loading also drops duplicate runs, so
concurrent sweeps never make a run appear twice.

Every chunk is checked against its checksum before anything in it is read, so
a flipped bit anywhere in the file (rows, footer, per-run table) is caught. A
chunk whose bytes do not match its name, a chunk of another schema version
(version 2 had no checksum, version 1 repeated every config field on every
row), a truncated or otherwise unreadable chunk, or any other file in an
experiment folder is skipped with a one-line `StoreWarning` naming it: never a
crash, never a silent mix. A skipped chunk's runs do not count as done, so the
next sweep trains them again. Nothing is ever unpickled or evaluated: chunks
are Parquet, manifests JSON, grids TOML.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import signal
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "3"
"""Version of the chunk layout; bump it when columns, the per-run table or the file name change meaning."""

SCHEMA_KEY = b"sortrl_schema"
RUNS_KEY = b"sortrl_runs"
"""Metadata key of a chunk's per-run table (JSON)."""

RUN_KEYS = ("run_id", "configuration", "seed", "status", "diverged_epoch", "config")
"""What the per-run table says about every run."""

REQUIRED_COLUMNS = ("run_id", "epoch")
"""Row columns every chunk must have to count as results."""

MANIFEST = "manifest.json"
HISTORY = "manifests.jsonl"
REPORT_CACHE = "report-cache.pkl"
"""The report's cache of an experiment's outputs (`sortrl.render.cache`), beside its runs."""

KNOWN_FILES = ("grid.toml", MANIFEST, HISTORY, "chunk-*.parquet", REPORT_CACHE)
"""Names a sweep or the report writes into an experiment folder; anything else there is foreign (hidden files
aside)."""

CHUNK_NAME = re.compile(r"^chunk-(?P<runs>[0-9a-f]{16})-(?P<sum>[0-9a-f]{16})\.parquet$")
"""A chunk's file name: a hash of its run ids and the checksum of its bytes (`checksum`)."""

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
    """Write `data` to `path` via a hidden temporary file in the same folder and an atomic rename.

    An `OSError` (a full disk, a lost permission) names `path`, so the one-line
    error at the command line says where the write failed.
    """
    tmp = _stage(path, data)
    try:
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise


def _stage(path: Path, data: bytes) -> Path:
    """`data` written and flushed to disk in a hidden temporary beside `path` (not yet renamed to it): its path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name))
    except OSError as err:
        raise _naming(err, path) from err
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from the rest of a group
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise
    return Path(tmp)


def _naming(err: OSError, path: Path) -> OSError:
    """`err` with `path` as its file name (a write error such as ENOSPC names no file by itself)."""
    return OSError(err.errno, err.strerror or str(err), str(path))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_files(files: dict[Path, bytes], stale: Iterable[Path] = ()) -> list[Path]:
    """Replace `files` as a set, then remove the `stale` paths that exist; returns the paths of `files`, in order.

    Every file is first written in full beside its path as a hidden temporary
    (flushed to disk); only then are they all renamed into place and the stale
    ones removed, with Ctrl-C and SIGTERM held back meanwhile (they take effect
    right after). So a failure (a full disk: the error names the path) or an
    interrupt while the files are written leaves every old file as it was and
    no temporary behind; only a kill -9 or a power cut during the renames
    (microseconds per file) could leave a mix of old and new files.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            staged.append((_stage(path, data), path))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    with _signals_held():
        for tmp, path in staged:
            os.replace(tmp, path)
        for path in stale:
            path.unlink(missing_ok=True)
    return list(files)


HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""What `write_files` holds back while it renames a set of files into place."""


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Block `HELD_SIGNALS` in this thread meanwhile (when it is the main thread); one that arrives is delivered after."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(HELD_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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


def write_chunk(folder: Path, table: pd.DataFrame, runs: Iterable[dict[str, Any]]) -> Path:
    """Store one chunk of finished runs atomically (`encode_chunk`, then `store_chunk`); returns its path."""
    name, data = encode_chunk(table, runs)
    return store_chunk(folder, name, data)


def encode_chunk(table: pd.DataFrame, runs: Iterable[dict[str, Any]]) -> tuple[str, bytes]:
    """One chunk of finished runs as (file name, Parquet bytes); a sweep's workers call it, the client stores it.

    `table`: a `sortrl.engine.train.train(..., with_config=False)` table (`run_id`,
    `status`, `diverged_epoch`, `epoch`, `step`, metrics). `runs`: one dict per
    run of `table` with its `run_id`, `configuration` (label), `seed` and
    `config` (`RunConfig.to_dict()`). The rows keep `run_id`, `epoch`, `step`
    and the metrics, sorted by run and epoch; the per-run table goes into the
    file's metadata (see the module docstring). The name carries the checksum
    of the bytes (`chunk_name`).
    """
    first = table.groupby("run_id", sort=True)[["status", "diverged_epoch"]].first()
    records = {r["run_id"]: r for r in runs}
    if set(records) != set(first.index):
        raise ValueError("encode_chunk: `runs` must describe exactly the runs of `table`")
    configs: dict[str, int] = {}  # a config without its seed (JSON) -> its position in the chunk's list
    texts: dict[int, str] = {}  # id of a config dict -> its JSON (the runs of one configuration often share one)
    per_run = []
    for run_id, status, died in zip(first.index, first["status"], first["diverged_epoch"]):
        record = records[run_id]
        config = texts.get(id(record["config"]))
        if config is None:
            config = json.dumps({k: v for k, v in record["config"].items() if k != "seed"}, sort_keys=True)
            texts[id(record["config"])] = config
        per_run.append(
            {
                "run_id": run_id,
                "configuration": record["configuration"],
                "seed": record["seed"],
                "status": str(status),
                "diverged_epoch": int(died),
                "config": configs.setdefault(config, len(configs)),
            }
        )
    stored = {"configs": [json.loads(c) for c in configs], "runs": per_run}
    rows = table.drop(columns=["status", "diverged_epoch"]).sort_values(["run_id", "epoch"], kind="stable")
    arrow = pa.Table.from_pandas(rows, preserve_index=False)
    text = json.dumps(stored, sort_keys=True, separators=(",", ":"))
    metadata = {**(arrow.schema.metadata or {}), SCHEMA_KEY: SCHEMA_VERSION.encode(), RUNS_KEY: text.encode()}
    sink = pa.BufferOutputStream()
    pq.write_table(arrow.replace_schema_metadata(metadata), sink)
    data = sink.getvalue().to_pybytes()
    return chunk_name(list(first.index), data), data


def checksum(data: bytes) -> str:
    """A chunk's checksum: the first 16 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def chunk_name(run_ids: list[str], data: bytes) -> str:
    """`chunk-<runs>-<sum>.parquet`: a hash of the sorted run ids and the checksum of the file's bytes."""
    runs = hashlib.sha256(",".join(sorted(run_ids)).encode()).hexdigest()[:16]
    return f"chunk-{runs}-{checksum(data)}.parquet"


def store_chunk(folder: Path, name: str, data: bytes) -> Path:
    """Write an `encode_chunk` result into `folder` atomically; returns its path."""
    if CHUNK_NAME.match(name) is None:
        raise ValueError(f"store_chunk: {name!r} is not a chunk name")
    path = folder / name
    atomic_write_bytes(path, data)
    return path


class Chunk(NamedTuple):
    """A readable chunk file: its path, its per-run table (`RUN_KEYS`, one dict per run) and its row columns."""

    path: Path
    runs: list[dict[str, Any]]
    columns: list[str]


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


def _open_chunk(path: Path) -> Chunk | None:
    """A chunk's footer (schema, per-run table), or None with a warning naming the file if it cannot be trusted.

    The file's bytes are checked against the checksum in its name first, so
    nothing of a corrupt file is ever read as a result.
    """
    try:
        data = path.read_bytes()
        source = pa.BufferReader(data)
        named = CHUNK_NAME.match(path.name)
        if named is not None and checksum(data) != named["sum"]:
            _warn(
                f"skipping {path}: its bytes do not match the checksum in its name (corrupt: bit rot, a bad copy "
                "or an edit); re-run the sweep to train its runs again"
            )
            return None
        schema = pq.read_schema(source)
        metadata = schema.metadata or {}
        version = metadata.get(SCHEMA_KEY)
        if version != SCHEMA_VERSION.encode():
            found = version.decode(errors="replace") if version else "none (not written by sortrl)"
            _warn(
                f"skipping {path}: schema version {found}, this sortrl reads version {SCHEMA_VERSION}; "
                "re-run the sweep to train its runs again (then delete the file)"
            )
            return None
        if named is None:
            _warn(f"skipping {path}: no checksum in its name (expected chunk-<runs>-<sum>.parquet); renamed?")
            return None
        missing = [f"column {c!r}" for c in REQUIRED_COLUMNS if c not in schema.names]
        if missing or RUNS_KEY not in metadata:
            _warn(f"skipping {path}: schema version {SCHEMA_VERSION} but no {(missing or ['per-run table'])[0]}")
            return None
        stored = json.loads(metadata[RUNS_KEY])
        configs = stored["configs"]
        runs = [{**r, "config": {**configs[r["config"]], "seed": r["seed"]}} for r in stored["runs"]]
        if not all(set(RUN_KEYS) <= set(r) for r in runs):
            raise ValueError("a run misses one of " + ", ".join(RUN_KEYS))
    except Exception as err:  # noqa: BLE001 -- any decoding failure of a file on disk means: skip it
        reason = " ".join(str(err).split())[:200]
        _warn(f"skipping {path}: not a readable sortrl results file ({err.__class__.__name__}: {reason})")
        return None
    return Chunk(path, runs, [c for c in schema.names if c not in REQUIRED_COLUMNS])


def _read_rows(chunk: Chunk, columns: Iterable[str] | None = None) -> pd.DataFrame | None:
    """The rows of `chunk` (`run_id`, `epoch` and `columns`, or every column), or None with a warning if unreadable."""
    wanted = None if columns is None else [*REQUIRED_COLUMNS, *(c for c in columns if c in chunk.columns)]
    try:
        return pq.read_table(chunk.path, columns=wanted).to_pandas()
    except Exception as err:  # noqa: BLE001 -- a footer that reads but rows that do not: skip the file
        reason = " ".join(str(err).split())[:200]
        _warn(f"skipping {chunk.path}: not a readable sortrl results file ({err.__class__.__name__}: {reason})")
        return None


def read_chunks(folder: Path) -> list[Chunk]:
    """The readable chunks of `folder`, in file-name order, each run only in the first chunk that holds it.

    Corrupt, foreign or other-schema files are skipped with a `StoreWarning`
    naming them (their runs do not count as stored).
    """
    out, seen = [], set()
    for path in _chunk_files(folder):
        chunk = _open_chunk(path)
        if chunk is None:
            continue
        runs = [r for r in chunk.runs if r["run_id"] not in seen]
        seen.update(r["run_id"] for r in runs)
        if runs:  # a chunk whose runs all came earlier adds nothing
            out.append(chunk._replace(runs=runs))
    return out


def read_rows(chunk: Chunk, columns: Iterable[str] | None = None, patterns: Iterable[str] = ()) -> pd.DataFrame:
    """The rows of `chunk`'s runs (as `read_chunks` kept them): `run_id`, `epoch` and `columns` (default: all).

    `patterns`: glob patterns (`per_prompt/*`) adding the chunk's columns that match any of them, in the
    chunk's column order. Only the named columns are read from disk (Parquet column projection);
    columns the chunk does not have are left out. A file whose rows cannot be
    decoded gives an empty table, with a `StoreWarning`.
    """
    patterns = list(patterns)
    if patterns:
        matching = (c for c in chunk.columns if any(fnmatch.fnmatchcase(c, p) for p in patterns))
        columns = list(dict.fromkeys([*(columns or []), *matching]))
    rows = _read_rows(chunk, columns)
    if rows is None:
        return pd.DataFrame(columns=[*REQUIRED_COLUMNS, *(columns or [])])
    if len(chunk.runs) != rows["run_id"].nunique():  # some runs are also in an earlier chunk
        rows = rows[rows["run_id"].isin({r["run_id"] for r in chunk.runs})]
    return rows


def completed_run_ids(folder: Path) -> set[str]:
    """Run ids stored in readable chunks of `folder` (unreadable chunks are skipped with a warning).

    Every chunk is decoded whole, so a chunk whose runs count as done here
    also loads in `load_runs` (its runs are then safe to skip when resuming).
    """
    done: set[str] = set()
    for path in _chunk_files(folder):
        chunk = _open_chunk(path)
        if chunk is not None and _read_rows(chunk) is not None:
            done.update(r["run_id"] for r in chunk.runs)
    return done


def experiment_folders(results: str | Path) -> list[Path]:
    """The experiment folders under `results/runs/`, sorted; warns about (and skips) any file there."""
    root = Path(results) / "runs"
    folders = []
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.is_dir():
                folders.append(path)
            elif not path.name.startswith("."):
                _warn(f"skipping {path}: not an experiment folder (runs/ holds one folder per experiment)")
    return folders


def experiment_names(results: str | Path) -> list[str]:
    """Experiments stored under `results/runs/` (folders holding a `grid.toml`), sorted."""
    root = Path(results) / "runs"
    return sorted(p.name for p in root.iterdir() if (p / "grid.toml").is_file()) if root.is_dir() else []


def load_runs(
    results: str | Path = "results", experiments: Iterable[str] | None = None, fields: Iterable[str] = ()
) -> pd.DataFrame:
    """Every stored run as one tidy table: one row per (run, epoch), sorted by experiment, run and epoch.

    Columns: `experiment`, `run_id`, `configuration` (its label in the grid),
    `seed`, `status`, `diverged_epoch`, the `fields` of each run's stored
    config asked for (e.g. `fields=["learning_rate"]`), then `epoch`, `step`
    and the metrics. Duplicated runs (the same `run_id` in two chunks, e.g. from
    concurrent sweeps with different chunk sizes) appear once, from the first
    chunk in file-name order. Corrupt, foreign or other-schema files in
    `runs/<experiment>/` are skipped with a `StoreWarning` naming them.
    """
    fields = list(fields)
    wanted = None if experiments is None else set(experiments)
    frames = []
    for folder in experiment_folders(results):
        if wanted is not None and folder.name not in wanted:
            continue
        for chunk in read_chunks(folder):
            per_run = pd.DataFrame(
                [
                    {
                        "experiment": folder.name,
                        **{k: r[k] for k in RUN_KEYS if k != "config"},
                        **{f: r["config"].get(f) for f in fields},
                    }
                    for r in chunk.runs
                ],
                columns=["experiment", *(k for k in RUN_KEYS if k != "config"), *fields],
            )
            frames.append(per_run.merge(read_rows(chunk), on="run_id", how="inner", validate="one_to_many"))
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
