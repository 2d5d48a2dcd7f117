"""The report cache (`sortrl.render.cache`): same bytes as a fresh report, recomputed when anything it covers changes,
and never unpickled unless this user signed it."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from sortrl.render import cache
from sortrl.render.publish import write_report
from sortrl.study.grid import parse_grid
from sortrl.study.store import runs_dir
from sortrl.study.sweep import run_sweep


def _outputs(results: Path) -> dict[str, bytes]:
    """Every file the report wrote (everything but the runs), by relative path."""
    return {
        p.relative_to(results).as_posix(): p.read_bytes()
        for p in sorted(results.rglob("*"))
        if p.is_file() and "runs" not in p.relative_to(results).parts
    }


def _report(results: Path, **kw) -> tuple[dict[str, bytes], dict[str, bool]]:
    heard: dict[str, bool] = {}
    write_report(results, on_experiment=lambda done: heard.__setitem__(done.name, done.cached), **kw)
    return _outputs(results), heard


@pytest.fixture
def copy(results, tmp_path):
    """A copy of the shared tiny results' runs (its experiments `tiny` and `lengths`), without report caches."""
    target = tmp_path / "results"
    shutil.copytree(results / "runs", target / "runs", ignore=shutil.ignore_patterns(cache.CACHE_FILE))
    return target


def test_a_cached_report_is_the_uncached_report_byte_for_byte(copy, report_grids):
    fresh, heard = _report(copy, use_cache=False)
    assert heard == {"tiny": False, "lengths": False} and not list(copy.rglob(cache.CACHE_FILE))
    first, heard = _report(copy)  # computes and caches
    assert heard == {"tiny": False, "lengths": False} and len(list(copy.rglob(cache.CACHE_FILE))) == 2
    second, heard = _report(copy)
    assert heard == {"tiny": True, "lengths": True}
    assert first == fresh and second == fresh
    # a sweep that trains nothing (make ablations sweeps every grid) rewrites the manifests: still cached, same bytes
    run_sweep(parse_grid(report_grids["tiny"]), copy, n_jobs=1)
    again, heard = _report(copy)
    assert heard == {"tiny": True, "lengths": True} and again == fresh
    # a sweep that changes one experiment's runs recomputes that one only
    run_sweep(parse_grid(report_grids["tiny"].replace("seeds = 6", "seeds = 7")), copy, n_jobs=1)
    third, heard = _report(copy)
    assert heard == {"tiny": False, "lengths": True}
    assert third != fresh and third == _report(copy, use_cache=False)[0]


def test_the_cache_is_recomputed_when_code_or_libraries_change(copy, monkeypatch):
    _report(copy)
    monkeypatch.setattr(cache, "_environment", lambda: "sortrl <another source>; numpy 0")
    assert _report(copy)[1] == {"tiny": False, "lengths": False}


def test_a_cache_signed_by_someone_else_is_never_unpickled(copy, tmp_path, monkeypatch):
    """A results folder from elsewhere may carry a crafted pickle under the right key: without this user's
    signature it is ignored (recomputed), never loaded."""
    fresh, _ = _report(copy)
    path = runs_dir(copy, "tiny") / cache.CACHE_FILE
    data = path.read_bytes()
    head = len(cache.FORMAT)
    key = data[head : head + 32]
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    forged = cache.FORMAT + key + b"\0" * 32 + pickle.dumps(Payload())
    path.write_bytes(forged)
    again, heard = _report(copy)
    assert not marker.exists() and heard["tiny"] is False and again == fresh
    assert path.read_bytes() != forged  # replaced by this user's signed cache
    # another user's key (a folder someone shared): not ours, so recomputed
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-user"))
    monkeypatch.setattr(cache, "_secret", cache._secret.__wrapped__)
    assert _report(copy)[1] == {"tiny": False, "lengths": False}


def test_a_chunk_that_fails_its_checksum_is_never_cached(copy):
    _report(copy)
    chunk = next(runs_dir(copy, "tiny").glob("chunk-*.parquet"))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="do not match the checksum"):
        heard = _report(copy)[1]
    assert heard["tiny"] is False
    with pytest.warns(UserWarning, match="do not match the checksum"):
        assert _report(copy)[1]["tiny"] is False  # still recomputed: the uncached path warns every time


def test_an_experiment_with_plug_ins_or_left_out_is_never_cached(copy, monkeypatch):
    """A grid with plug-ins: its runs depend on the plug-ins' code, which the key does not cover. A left-out
    experiment (its plug-in missing here) must be tried again next time, not served from a cache."""
    from sortrl.render import publish

    grid = (runs_dir(copy, "tiny") / "grid.toml").read_text()
    assert publish._cached(copy, "tiny", (copy / "mine.toml", grid), True)[0] is not None
    assert publish._cached(copy, "tiny", (copy / "mine.toml", grid + 'plugins = ["mine"]\n'), True) == (None, None)
    left_out = publish.Outputs(None, [], {}, {}, [], [])
    monkeypatch.setattr(publish, "_experiment_outputs", lambda *args: left_out)
    key, _ = publish._cached(copy, "tiny", None, True)
    publish._outputs(copy, "tiny", None, key)
    assert not (runs_dir(copy, "tiny") / cache.CACHE_FILE).exists()
