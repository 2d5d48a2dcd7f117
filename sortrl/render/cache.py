"""The report's cache: one experiment's analysed and drawn outputs, kept beside its runs, reused while nothing changed.

`sortrl report` spends nearly all of its time per experiment (load and score
the runs, bootstrap every interval, run the claims' tests, draw the figures),
and after a sweep of one grid the other experiments are unchanged. So each
experiment's outputs (`sortrl.render.publish.Outputs`) are stored in
`results/runs/<name>/report-cache.pkl` under a key that covers everything
they are computed from:

- the experiment's stored files (every file of its folder but the sweep
  manifests), by the SHA-256 of their bytes (a chunk whose bytes do not match
  the checksum in its name is never cached: the uncached path warns about it);
  the manifests change at every sweep, even one that trains nothing, and only
  REPORT.md's "Trained with" line reads them, so the report refreshes them in
  a cached experiment instead (`sortrl.render.publish`);
- the grid file the report uses (the stored copy or `--grid FILE`), and the
  results folder's path as given (the outputs name their files by it);
- the source of every module of the installed `sortrl` package (not only its
  version: a changed line of code is a changed report) and the versions of
  Python and of the libraries that compute or draw (numpy, pandas, scipy,
  statsmodels, matplotlib, seaborn, pyarrow, Pillow).

The cache holds a pickle, and unpickling runs code, so a cache file is
signed (HMAC-SHA256) with a key private to this user
(`$XDG_CACHE_HOME/sortrl/report-cache.key`, else `~/.cache/...`, created
mode 0600): a results folder from someone else (downloaded, shared) has
caches signed with another key, which are ignored and recomputed, never
loaded. When the key cannot be read or created, nothing is cached. A cache
that is missing, stale, unsigned or unreadable is recomputed and rewritten;
`sortrl report --no-cache` ignores them all. An experiment whose grid uses
plug-ins is never cached (its runs depend on the plug-ins' code, which the key
does not cover), nor one left out of a report. A cached report is byte for
byte the report computed afresh (a test compares them).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import os
import pickle
import platform
import secrets
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from sortrl.study.store import HISTORY, MANIFEST, REPORT_CACHE, atomic_write_bytes, checksum, runs_dir

CACHE_FILE = REPORT_CACHE
"""The cache's file name in `results/runs/<name>/`."""

SWEEP_RECORDS = (MANIFEST, HISTORY)
"""The files of an experiment folder the key leaves out (the module docstring says why)."""

FORMAT = b"sortrl report cache 2\n"
"""The file's first line: a changed layout changes it, and older caches are recomputed."""

LIBRARIES = ("numpy", "pandas", "scipy", "statsmodels", "matplotlib", "seaborn", "pyarrow", "pillow")
"""The libraries whose versions are part of the key (they compute the numbers or draw the figures)."""


def key(results: Path, name: str, grid_text: str) -> bytes | None:
    """The cache key of experiment `name`'s outputs (`grid_text`: the grid the report uses for it), or None when they
    cannot be cached: no signing key (`key_file`), or a chunk that does not match its checksum."""
    return _key(results, name, grid_text) if _secret() is not None else None


def load(results: Path, name: str, key: bytes | None) -> Any | None:
    """The value cached for experiment `name` under `key`, if there is one signed by this user; else None."""
    secret = _secret()
    if key is None or secret is None:
        return None
    return _read(runs_dir(results, name) / CACHE_FILE, key, secret)


def store(results: Path, name: str, key: bytes | None, value: Any) -> None:
    """Cache `value` for experiment `name` under `key` (nothing when `key` is None or the folder is read-only)."""
    secret = _secret()
    if key is None or secret is None:
        return
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    signature = hmac.new(secret, key + payload, hashlib.sha256).digest()
    with contextlib.suppress(OSError):  # a read-only results folder reports all the same, uncached
        atomic_write_bytes(runs_dir(results, name) / CACHE_FILE, FORMAT + key + signature + payload)


def _read(path: Path, key: bytes, secret: bytes) -> Any | None:
    """The cached value at `path` if its key is `key` and its signature is ours, else None (a stale cache is told
    by its first bytes: the rest, up to tens of MB, is read only when the key matches)."""
    head = len(FORMAT)
    try:
        with path.open("rb") as handle:
            header = handle.read(head + 64)
            if header[:head] != FORMAT or header[head : head + 32] != key:
                return None
            payload = handle.read()
    except OSError:
        return None
    signature = header[head + 32 :]
    if not hmac.compare_digest(signature, hmac.new(secret, key + payload, hashlib.sha256).digest()):
        return None  # not signed by this user: never unpickled
    try:
        return pickle.loads(payload)
    except Exception:  # noqa: BLE001 -- a cache that cannot be read is recomputed
        return None


def _key(results: Path, name: str, grid_text: str) -> bytes | None:
    """SHA-256 of everything the experiment's outputs are computed from (the module docstring), or None when one of
    its chunks does not match its checksum (the uncached path says so)."""
    digest = hashlib.sha256(FORMAT)
    for part in (_environment(), str(results), name, grid_text):
        digest.update(part.encode() + b"\0")
    folder = runs_dir(results, name)
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != CACHE_FILE)
        for path in files:
            if path.name.startswith(".") or path.name in SWEEP_RECORDS:  # temporaries; manifests (docstring)
                continue
            data = path.read_bytes()
            chunk = path.name.startswith("chunk-") and path.suffix == ".parquet"
            if chunk and not path.stem.endswith(checksum(data)):
                return None
            digest.update(path.name.encode() + b"\0" + hashlib.sha256(data).digest())
    except OSError:
        return None
    return digest.digest()


@functools.cache
def _environment() -> str:
    """The code that computes a report: sortrl's modules (their source) and the libraries' and Python's versions."""
    package = Path(__file__).resolve().parent.parent
    source = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        source.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    versions = []
    for library in LIBRARIES:
        try:
            versions.append(f"{library} {version(library)}")
        except PackageNotFoundError:
            versions.append(f"{library} -")
    return f"sortrl {source.hexdigest()}; python {platform.python_version()}; {'; '.join(versions)}"


def key_file() -> Path:
    """Where this user's signing key lives (`$XDG_CACHE_HOME/sortrl/report-cache.key`, else under ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sortrl" / "report-cache.key"


@functools.cache
def _secret() -> bytes | None:
    """This user's signing key, created on first use (mode 0600); None when it can be neither read nor created."""
    path = key_file()
    try:
        secret = path.read_bytes()
        if len(secret) == 32:
            return secret
    except OSError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
        return path.read_bytes()
    except FileExistsError:  # another report created it meanwhile
        try:
            secret = path.read_bytes()
        except OSError:
            return None
        return secret if len(secret) == 32 else None
    except OSError:
        return None
