"""Results on disk: atomic chunks, schema versions, and loading that skips (and names) anything it cannot trust."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sortrl.engine.config import RunConfig
from sortrl.engine.train import train
from sortrl.study import store
from sortrl.study.store import (
    CHUNK_NAME,
    HISTORY,
    RUNS_KEY,
    SCHEMA_KEY,
    SCHEMA_VERSION,
    StoreWarning,
    _host,
    append_history,
    atomic_write_bytes,
    checksum,
    completed_run_ids,
    load_runs,
    read_chunks,
    read_history,
    read_manifest,
    read_rows,
    remove_stale_temporaries,
    runs_dir,
    write_chunk,
    write_manifest,
)

CONFIGS = [RunConfig(num_epochs=4, num_steps_per_epoch=2, seed=s, kl_penalty=0.1 * (s % 2)) for s in range(4)]


def described(table: pd.DataFrame) -> list[dict]:
    """What a sweep tells `write_chunk` about the runs of `table` (here: label = the KL coefficient)."""
    ids = set(table.run_id)
    return [
        {"run_id": c.run_id, "configuration": f"kl={c.kl_penalty:g}", "seed": c.seed, "config": c.to_dict()}
        for c in CONFIGS
        if c.run_id in ids
    ]


def write(folder, table: pd.DataFrame):
    return write_chunk(folder, table, described(table))


@pytest.fixture(scope="module")
def tables():
    """Two real `train` tables (without config columns) of two runs each (4 epochs)."""
    table = train(CONFIGS, with_config=False)
    ids = [c.run_id for c in CONFIGS]
    first, second = table[table.run_id.isin(ids[:2])], table[table.run_id.isin(ids[2:])]
    return first.reset_index(drop=True), second.reset_index(drop=True)


@pytest.fixture
def folder(tmp_path):
    out = runs_dir(tmp_path, "exp")
    out.mkdir(parents=True)
    return out


def no_warnings():
    """Context in which any warning fails the test (a clean folder must load silently)."""
    manager = warnings.catch_warnings()
    manager.__enter__()
    warnings.simplefilter("error")
    return manager


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_round_trip_carries_the_schema_version(folder, tables):
    first, second = tables
    path = write(folder, first)
    write(folder, second)
    assert path.name.startswith("chunk-") and path.suffix == ".parquet"
    assert pq.read_schema(path).metadata[SCHEMA_KEY] == SCHEMA_VERSION.encode()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_runs(folder.parent.parent, fields=["kl_penalty", "prompts"])
        done = completed_run_ids(folder)
    expected = pd.concat(tables).sort_values(["run_id", "epoch"]).reset_index(drop=True)
    per_run = ["configuration", "seed", "kl_penalty", "prompts"]
    assert loaded.drop(columns=["experiment", *per_run]).equals(expected)
    by_id = {c.run_id: c for c in CONFIGS}
    for row in loaded.drop_duplicates("run_id").itertuples():
        cfg = by_id[row.run_id]
        assert (row.configuration, row.seed, row.kl_penalty) == (f"kl={cfg.kl_penalty:g}", cfg.seed, cfg.kl_penalty)
        assert row.prompts == [list(p) for p in cfg.prompts]
    assert set(loaded.experiment) == {"exp"}
    assert done == set(expected.run_id)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_same_runs_give_the_same_file_and_bytes(folder, tables):
    path = write(folder, tables[0])
    data = path.read_bytes()
    assert write(folder, tables[0].iloc[::-1]) == path and path.read_bytes() == data  # row order does not matter
    assert len(list(folder.glob("chunk-*.parquet"))) == 1


def test_each_config_is_stored_once_per_run_not_per_row(folder, tables):
    """Rows carry run_id, epoch, step and metrics; each run's label, seed, status and config sit in the footer."""
    path = write(folder, pd.concat(tables))
    columns = pq.read_schema(path).names
    assert columns[:3] == ["run_id", "epoch", "step"] and not set(columns) & set(CONFIGS[0].to_dict())
    stored = json.loads(pq.read_schema(path).metadata[RUNS_KEY])
    assert len(stored["runs"]) == 4 and len(stored["configs"]) == 2  # two configurations (kl 0 and 0.1)
    (chunk,) = read_chunks(folder)
    assert [r["config"] for r in chunk.runs] == [c.to_dict() for c in sorted(CONFIGS, key=lambda c: c.run_id)]
    assert {(r["status"], r["diverged_epoch"]) for r in chunk.runs} == {("ok", -1)}
    assert list(read_rows(chunk, ["mean_reward", "no_such_column"]).columns) == ["run_id", "epoch", "mean_reward"]
    # glob patterns add the chunk's matching columns, in the chunk's order, after the named ones
    matching = [c for c in chunk.columns if c.startswith("clip_ratio/") or c.startswith("response_length/")]
    assert len(matching) >= 4
    got = read_rows(chunk, ["mean_reward"], ["response_length/*", "clip_ratio/*", "no_such_*"]).columns
    assert list(got) == ["run_id", "epoch", "mean_reward", *matching]


def test_write_chunk_needs_every_run_described(folder, tables):
    with pytest.raises(ValueError, match="exactly the runs"):
        write_chunk(folder, pd.concat(tables), described(tables[0]))


def test_duplicate_runs_in_two_chunks_load_once(folder, tables):
    first, second = tables
    write(folder, first)
    write(folder, pd.concat([first, second]))  # another chunking of overlapping runs
    loaded = load_runs(folder.parent.parent)
    assert not loaded.duplicated(["run_id", "epoch"]).any()
    assert set(loaded.run_id) == set(first.run_id) | set(second.run_id)
    assert len(loaded) == len(first) + len(second)


def _other_schema(path, table, version, name: str = "checksum") -> Path:
    """Write `table` as a Parquet file of schema `version` in place of `path`, under the name a sortrl would give it.

    `name`: "checksum" (this sortrl's `chunk-<runs>-<sum>.parquet`, the sum matching the new bytes) or "legacy"
    (`chunk-<runs>.parquet`, as sortrl wrote chunks before checksums). Returns the new path.
    """
    arrow = pa.Table.from_pandas(table, preserve_index=False)  # status, diverged_epoch on every row; no RUNS_KEY
    metadata = dict(arrow.schema.metadata or {})
    if version is None:
        metadata.pop(SCHEMA_KEY, None)
    else:
        metadata[SCHEMA_KEY] = version.encode()
    sink = pa.BufferOutputStream()
    pq.write_table(arrow.replace_schema_metadata(metadata), sink)
    return _replace(path, sink.getvalue().to_pybytes(), name)


def _replace(path, data: bytes, name: str = "checksum") -> Path:
    """Put `data` in place of the chunk at `path`, named as `_other_schema` says."""
    runs = CHUNK_NAME.match(path.name)["runs"]
    new = path.parent / (f"chunk-{runs}-{checksum(data)}.parquet" if name == "checksum" else f"chunk-{runs}.parquet")
    path.unlink()
    new.write_bytes(data)
    return new


BAD_FILES = {
    "version 1 (config on every row)": lambda path, table: _other_schema(path, table, "1", "legacy"),
    "version 2 (no checksum)": lambda path, table: _replace(path, _version_2(table), "legacy"),
    "other schema version": lambda path, table: _other_schema(path, table, "4"),
    "foreign parquet (no schema key)": lambda path, table: _other_schema(path, table, None),
    "truncated": lambda path, table: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]),
    "garbage bytes": lambda path, table: path.write_bytes(b"PAR1 this is not parquet at all PAR1"),
    "empty file": lambda path, table: path.write_bytes(b""),
    "no run_id column": lambda path, table: _replace(path, _parquet(pa.table({"epoch": [0, 1]}))),
    "no per-run table": lambda path, table: _other_schema(path, table, SCHEMA_VERSION),
    "a checksummed chunk renamed": lambda path, table: path.rename(path.parent / f"chunk-{'0' * 16}.parquet"),
}


def _version_2(table: pd.DataFrame) -> bytes:
    """A chunk as sortrl wrote it before checksums: this layout with schema version 2."""
    with mock.patch.object(store, "SCHEMA_VERSION", "2"):
        return store.encode_chunk(table, described(table))[1]


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata({SCHEMA_KEY: SCHEMA_VERSION.encode()}), sink)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_chunk_is_named_skipped_and_not_counted_as_done(folder, tables, kind):
    good, bad = tables
    write(folder, good)
    path = write(folder, bad)
    changed = BAD_FILES[kind](path, bad)
    path = changed if isinstance(changed, Path) else path
    with pytest.warns(StoreWarning, match=path.name) as caught:
        loaded = load_runs(folder.parent.parent)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    message = str(caught[0].message)
    if kind.startswith("version"):
        assert f"schema version {kind[8]}" in message and "re-run the sweep" in message
    if kind in ("truncated", "garbage bytes", "empty file"):
        assert "do not match the checksum" in message
    with pytest.warns(StoreWarning, match=path.name):
        done = completed_run_ids(folder)
    assert set(loaded.run_id) == set(good.run_id)  # never a crash, never a silent mix
    assert done == set(good.run_id)  # so a sweep trains the bad chunk's runs again


def test_every_flipped_bit_is_caught(folder, tables):
    """Issue 13, defect 3: a single flipped bit anywhere in a chunk (rows, footer, per-run table) is never read.

    Before checksums, about a third of such flips loaded silently with changed values.
    """
    good, bad = tables
    write(folder, good)
    path = write(folder, bad)
    data = path.read_bytes()
    offsets = sorted(random.Random(13).sample(range(len(data)), 60))
    for offset in offsets:
        flipped = bytearray(data)
        flipped[offset] ^= 1 << (offset % 8)
        path.write_bytes(bytes(flipped))
        with pytest.warns(StoreWarning, match=path.name) as caught:
            loaded = load_runs(folder.parent.parent)
        assert len(caught) == 1, offset
        assert set(loaded.run_id) == set(good.run_id), f"a flip at byte {offset} of {len(data)} loaded"


@pytest.mark.parametrize("name", ["notes.txt", "results.parquet", "chunk-1234.csv", "chunk-dir.parquet"])
def test_foreign_files_are_named_and_skipped(folder, tables, name):
    write(folder, tables[0])
    path = folder / name
    if name == "chunk-dir.parquet":
        path.mkdir()
    else:
        write(folder, tables[1]).rename(path)  # even a valid table under a foreign name is not a result
    with pytest.warns(StoreWarning, match=name):
        loaded = load_runs(folder.parent.parent)
    assert set(loaded.run_id) == set(tables[0].run_id)


def test_stray_file_in_runs_root_is_named(tmp_path, folder, tables):
    write(folder, tables[0])
    (tmp_path / "runs" / "stray.parquet").write_bytes(b"x")
    with pytest.warns(StoreWarning, match="stray.parquet"):
        loaded = load_runs(tmp_path)
    assert set(loaded.run_id) == set(tables[0].run_id)


def test_temporaries_are_never_results(folder, tables):
    """A complete chunk under a temporary name (a writer killed before its rename) is ignored, silently."""
    write(folder, tables[0])
    leftover = write(folder, tables[1])
    leftover.rename(folder / f".{leftover.name}.tmp-{_host()}-{dead_pid()}-abc123")
    (folder / ".DS_Store").write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_runs(folder.parent.parent)
        done = completed_run_ids(folder)
    assert set(loaded.run_id) == done == set(tables[0].run_id)


def test_failed_write_leaves_no_temporary(folder, monkeypatch):
    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(folder / "chunk-x.parquet", b"data")
    assert list(folder.iterdir()) == []


def test_remove_stale_temporaries(folder):
    host = _host()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = folder / f".chunk-a.parquet.tmp-{host}-{dead_pid()}-x1"
        alive = folder / f".chunk-b.parquet.tmp-{host}-{live.pid}-x2"
        other_host_new = folder / ".chunk-c.parquet.tmp-elsewhere-1-x3"
        other_host_old = folder / ".chunk-d.parquet.tmp-elsewhere-1-x4"
        not_ours = folder / ".hidden-user-file"
        for path in (dead, alive, other_host_new, other_host_old, not_ours):
            path.write_bytes(b"partial")
        day_ago = time.time() - 2 * 24 * 3600
        os.utime(other_host_old, (day_ago, day_ago))
        removed = remove_stale_temporaries(folder)
    finally:
        live.kill()
        live.wait()
    assert sorted(removed) == sorted([dead, other_host_old])
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (alive, other_host_new, not_ours))


def test_manifest_is_latest_and_history_keeps_every_sweep(folder):
    write_manifest(folder, {"sweep_id": "a", "status": "running", "host": _host(), "pid": os.getpid()})
    assert read_manifest(folder)["status"] == "running"  # this process is alive
    write_manifest(folder, {"sweep_id": "a", "status": "complete"})
    write_manifest(folder, {"sweep_id": "b", "status": "running", "host": _host(), "pid": dead_pid()})
    assert read_manifest(folder)["status"] == "interrupted"  # its process is gone: not a misleading "running"
    assert json.loads((folder / "manifest.json").read_text())["sweep_id"] == "b"
    with open(folder / HISTORY, "a") as handle:
        handle.write('{"sweep_id": "c", "stat')  # a torn last line is skipped
    append_history(folder, {"sweep_id": "d"})
    assert [m["sweep_id"] for m in read_history(folder)] == ["a", "a", "b", "d"]


def test_missing_or_corrupt_manifest_reads_none(folder):
    assert read_manifest(folder) is None
    (folder / "manifest.json").write_text("{not json")
    assert read_manifest(folder) is None
    assert read_history(folder) == []


def test_write_files_replaces_a_set_or_nothing(tmp_path, monkeypatch):
    """The report's outputs are replaced as a set: an interrupt (or a full disk) while the new files are written
    leaves every old file as it was and no temporary; a Ctrl-C during the renames waits until all are in place."""
    import signal

    from sortrl.study import store

    paths = [tmp_path / "a.md", tmp_path / "figures" / "b.png", tmp_path / "c.csv"]
    for path in paths:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"old")
    real, calls = store._stage, []

    def interrupted(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(store, "_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.write_files(dict.fromkeys(paths, b"new"))
    assert [p.read_bytes() for p in paths] == [b"old"] * 3
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.md", "b.png", "c.csv", "figures"]  # no temporary
    monkeypatch.setattr(store, "_stage", real)

    renamed, replace = [], store.os.replace

    def replace_then_ctrl_c(src, dst):
        replace(src, dst)
        renamed.append(dst)
        if len(renamed) == 1:
            signal.raise_signal(signal.SIGINT)  # held back until every file is in place

    monkeypatch.setattr(store.os, "replace", replace_then_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a test runner's worker may ignore it
    try:
        with pytest.raises(KeyboardInterrupt):
            store.write_files(dict.fromkeys(paths, b"new"), stale=[])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert [p.read_bytes() for p in paths] == [b"new"] * 3 and len(renamed) == 3
