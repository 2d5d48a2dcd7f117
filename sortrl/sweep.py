"""Sweeps: grid files, expansion into `RunConfig`s, chunking and joblib fan-out.

A grid file is TOML:

    name = "ablations"          # names the outputs (results/runs/<name>/, figures)
    seeds = 32                  # seeds 0..31, or an explicit list: seeds = [5]
    highlight_seed = 5          # optional: the report draws this seed's curve on top
    baseline = { deltas_mode = "rewards", loss_mode = "naive" }  # optional: the reference configuration

    [base]                      # RunConfig fields shared by every run
    num_epochs = 100

    [grid]                      # RunConfig fields whose lists are crossed
    deltas_mode = ["rewards", "centered_rewards"]
    loss_mode = ["naive", "clipped"]

Any `RunConfig` field may be a base value or an axis, and so may `recipe`
(a named preset, `sortrl.recipes`): a recipe's fields come first and explicit
fields override them. Grid files are only ever parsed as TOML.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sortrl import __version__
from sortrl.config import FIELD_NAMES, RunConfig
from sortrl.recipes import make_config
from sortrl.registry import ConfigError
from sortrl.store import atomic_write_text, completed_run_ids, runs_dir, write_chunk, write_manifest
from sortrl.train import batch_key, train

GRID_KEYS = ("name", "seeds", "highlight_seed", "baseline", "base", "grid")


@dataclass(frozen=True)
class Grid:
    """A parsed grid file: the experiment's name, seeds, shared fields and crossed axes."""

    name: str
    seeds: tuple[int, ...]
    base: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    highlight_seed: int | None = None
    text: str = ""

    def configs(self) -> list[RunConfig]:
        """Every run of the grid: the product of the axes (in file order) times the seeds."""
        names = list(self.axes)
        out = []
        for values in itertools.product(*self.axes.values()):
            fields = {**self.base, **dict(zip(names, values))}
            for seed in self.seeds:
                out.append(make_config(**fields, seed=seed))
        return out


def _fail(path: str | Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def parse_grid(text: str, path: str | Path = "<grid>") -> Grid:
    """Parse and validate grid TOML; raise `ConfigError` (one line, naming the field) on bad input."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _fail(path, f"not valid TOML ({err})") from None
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise _fail(path, f"unknown key {unknown[0]!r}; valid keys: {', '.join(GRID_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise _fail(path, "name: required, a non-empty string of letters, digits, '-' or '_'")
    seeds = _parse_seeds(data.get("seeds", 1), path)
    tables = {}
    for key in ("base", "grid", "baseline"):
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise _fail(path, f"{key}: must be a table of RunConfig fields")
        valid = (*FIELD_NAMES, "recipe")
        bad = sorted(set(value) - set(valid) - ({"seed"} if key != "baseline" else set()))
        if bad:
            raise _fail(path, f"[{key}] unknown field {bad[0]!r}; valid fields: {', '.join(FIELD_NAMES)}")
        if "seed" in value and key != "baseline":
            raise _fail(path, f"[{key}] seed: set seeds with the top-level 'seeds' key, not as a field")
        tables[key] = value
    axes = tables["grid"]
    for axis, values in axes.items():
        if not isinstance(values, list) or not values:
            raise _fail(path, f"[grid] {axis}: must be a non-empty list of values")
        if len({repr(v) for v in values}) != len(values):
            raise _fail(path, f"[grid] {axis}: lists a value twice")
    both = sorted(set(axes) & set(tables["base"]))
    if both:
        raise _fail(path, f"{both[0]}: set in both [base] and [grid]; keep one")
    highlight = data.get("highlight_seed")
    if highlight is not None and (not isinstance(highlight, int) or isinstance(highlight, bool) or highlight not in seeds):
        raise _fail(path, f"highlight_seed: must be one of the grid's seeds, got {highlight!r}")
    grid = Grid(name, seeds, tables["base"], axes, tables["baseline"], highlight, text)
    try:  # validate every value now, so a bad grid fails before any training
        for values in itertools.product(*axes.values()):
            make_config(**tables["base"], **dict(zip(axes, values)), seed=seeds[0])
    except ConfigError as err:
        raise _fail(path, str(err)) from None
    except TypeError as err:
        raise _fail(path, f"bad field value ({err})") from None
    return grid


def _parse_seeds(value: Any, path: str | Path) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise _fail(path, f"seeds: a count must be >= 1, got {value}")
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if min(value) < 0 or len(set(value)) != len(value):
            raise _fail(path, "seeds: a list must hold distinct integers >= 0")
        return tuple(value)
    raise _fail(path, f"seeds: a count (seeds = 32) or a non-empty list of integers (seeds = [5]), got {value!r}")


def load_grid(path: str | Path) -> Grid:
    """Read a grid file; a missing or unreadable file raises `ConfigError`."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(path, f"cannot read grid file ({err.__class__.__name__}: {getattr(err, 'strerror', err)})") from None
    return parse_grid(text, path)


def plan_chunks(configs: list[RunConfig], chunk_size: int, n_jobs: int) -> list[list[RunConfig]]:
    """Split configs into chunks that share a batch key, at most `chunk_size` runs each.

    Chunks are as even as the batch keys allow and at least `n_jobs` in number
    when there are enough runs, so every worker gets work.
    """
    groups: dict[tuple, list[RunConfig]] = {}
    for cfg in configs:
        groups.setdefault(batch_key(cfg), []).append(cfg)
    total = len(configs)
    target = max(1, min(chunk_size, math.ceil(total / max(1, n_jobs)))) if total else chunk_size
    chunks = []
    for members in groups.values():
        pieces = math.ceil(len(members) / target)
        size = math.ceil(len(members) / pieces)
        chunks.extend(members[i : i + size] for i in range(0, len(members), size))
    return chunks


def _train_chunk(configs: list[RunConfig], threads: int) -> pd.DataFrame:
    """Worker entry point: train one chunk with a bounded number of torch threads."""
    import torch

    torch.set_num_threads(threads)
    return train(configs)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Versions and machine facts for manifests and benchmarks."""
    import torch

    return {
        "sortrl": __version__,
        "git_commit": _git_commit(),
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


def run_sweep(
    grid: Grid,
    results: str | Path = "results",
    n_jobs: int = -1,
    chunk_size: int = 256,
    on_chunk: Callable[[int], None] | None = None,
    backend: str = "loky",
) -> SweepResult:
    """Train every run of `grid` not already stored under `results/runs/<name>/`.

    Chunks are trained by `n_jobs` joblib workers (-1: one per core), each
    with `cores // n_jobs` torch threads; each finished chunk is written
    atomically as it arrives, so an interrupted sweep resumes where it
    stopped. `on_chunk` is called with the number of runs in each stored chunk.
    """
    import joblib

    start = time.time()
    folder = runs_dir(results, grid.name)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "grid.toml", grid.text)
    configs = grid.configs()
    done = completed_run_ids(folder)
    todo = list({c.run_id: c for c in configs if c.run_id not in done}.values())
    cores = os.cpu_count() or 1
    workers = cores if n_jobs < 1 else n_jobs
    chunks = plan_chunks(todo, chunk_size, workers)
    threads = max(1, cores // max(1, min(workers, len(chunks) or 1)))
    for table in _map_chunks(chunks, workers, threads, backend):
        write_chunk(folder, table)
        if on_chunk is not None:
            on_chunk(table["run_id"].nunique())
    end = time.time()
    write_manifest(
        folder,
        {
            **environment(),
            "experiment": grid.name,
            "grid": grid.text,
            "runs": len(configs),
            "trained": len(todo),
            "skipped": len(configs) - len(todo),
            "n_jobs": workers,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end)),
            "wall_seconds": round(end - start, 3),
            "argv": sys.argv,
        },
    )
    return SweepResult(grid.name, len(configs), len(configs) - len(todo), len(todo), end - start)


def _map_chunks(chunks: list[list[RunConfig]], workers: int, threads: int, backend: str) -> Iterator[pd.DataFrame]:
    import joblib

    if workers == 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield _train_chunk(chunk, threads)
        return
    parallel = joblib.Parallel(n_jobs=workers, backend=backend, return_as="generator_unordered")
    yield from parallel(joblib.delayed(_train_chunk)(chunk, threads) for chunk in chunks)
