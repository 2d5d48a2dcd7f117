"""`sortrl verify`: retrain a seeded sample of stored runs and compare them with what is stored, bit for bit.

Checksums guard a results folder against bit rot; they cannot tell whether its
runs are what *this* sortrl (its engine, torch, CPU kernels) would train. This
module can: it draws a random sample of the stored runs (seeded, so the same
sample every time), rebuilds each run's `RunConfig` from the config its chunk
stores, trains the sample again (`sortrl.engine.train.train`, whose numbers do
not depend on which runs share a batch), and compares every stored row and
column with the new one. A run is *identical* when every value is equal (NaN
equal to NaN) and its status matches; otherwise its largest difference and the
column it is in are reported.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sortrl.engine.config import RunConfig, run_id_of
from sortrl.engine.registry import ConfigError
from sortrl.study.store import Chunk, experiment_names, read_chunks, read_rows, runs_dir

SAMPLE_SEED = 0
"""Seed of the sample `sortrl verify` draws unless told another."""


@dataclass(frozen=True)
class Mismatch:
    """A retrained run that is not what its chunk stores."""

    run_id: str
    configuration: str
    seed: int
    what: str
    """Where it differs: `column loss: max |difference| 3.1e-07`, `status`, `rows`, `run id`, or why it cannot
    be retrained."""


@dataclass
class Check:
    """One experiment's verification: how many runs were retrained, and those that differ."""

    experiment: str
    runs: int
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.mismatches


def sample(results: str | Path, size: int | None, seed: int = SAMPLE_SEED) -> dict[str, list[tuple[Chunk, dict]]]:
    """A seeded random sample of `size` stored runs over every experiment of `results` (all of them for None):
    experiment -> [(its chunk, its per-run record)], in store order. The draw is over the runs sorted by
    (experiment, run id), so it depends only on what is stored and on `seed`."""
    stored = [
        (name, chunk, run)
        for name in experiment_names(results)
        for chunk in read_chunks(runs_dir(results, name))
        for run in chunk.runs
    ]
    stored.sort(key=lambda item: (item[0], item[2]["run_id"]))
    if size is not None and size < len(stored):
        picks = np.sort(np.random.default_rng(seed).choice(len(stored), size=size, replace=False))
        stored = [stored[i] for i in picks]
    out: dict[str, list[tuple[Chunk, dict]]] = {}
    for name, chunk, run in stored:
        out.setdefault(name, []).append((chunk, run))
    return out


def verify(
    results: str | Path,
    size: int | None = 64,
    seed: int = SAMPLE_SEED,
    workers: int | None = None,
    on_experiment: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Retrain a sample of `size` stored runs of `results` (every run for None) and compare them with the store.

    Returns one `Check` per experiment sampled (`on_experiment` is called with each as it finishes). A run whose
    stored config cannot be rebuilt (e.g. a plug-in this process has not registered) is a mismatch that says
    why. `workers`: training processes (`sortrl.engine.train.train`).
    """
    from sortrl.engine.train import EmptyEpochWarning, PeerDifferenceWarning, train  # torch: imported when training

    checks = []
    for name, picked in sample(results, size, seed).items():
        check = Check(name, len(picked))
        configs, kept = [], []
        for chunk, run in picked:
            try:
                config = RunConfig.from_dict(run["config"])
            except (ConfigError, TypeError, ValueError) as err:
                check.mismatches.append(_mismatch(run, f"cannot be rebuilt: {' '.join(str(err).split())}"))
                continue
            if run_id_of(config.to_dict()) != run["run_id"]:
                check.mismatches.append(_mismatch(run, "run id: its stored config hashes to another run id"))
                continue
            configs.append(config)
            kept.append((chunk, run))
        if configs:
            with warnings.catch_warnings():  # the sweep that stored them warned already
                warnings.simplefilter("ignore", EmptyEpochWarning)
                warnings.simplefilter("ignore", PeerDifferenceWarning)
                table = train(configs, workers=workers, with_config=False)
            stored: dict[Path, pd.DataFrame] = {}  # each chunk read once, however many of its runs were drawn
            for chunk, run in kept:
                if chunk.path not in stored:
                    stored[chunk.path] = read_rows(chunk)
                problem = _compare(stored[chunk.path], run, table[table["run_id"] == run["run_id"]])
                if problem:
                    check.mismatches.append(_mismatch(run, problem))
        checks.append(check)
        if on_experiment is not None:
            on_experiment(check)
    return checks


def _mismatch(run: dict, what: str) -> Mismatch:
    return Mismatch(run["run_id"], run["configuration"], int(run["seed"]), what)


def _column(table: pd.DataFrame, column: str) -> np.ndarray:
    return table[column].to_numpy() if column in table else np.full(len(table), np.nan)


def _compare(rows: pd.DataFrame, run: dict, new: pd.DataFrame) -> str:
    """'' when the retrained rows `new` equal the stored ones (`rows`: the run's chunk's) bit for bit; else where
    they differ first and most."""
    status = str(new["status"].iloc[0]) if len(new) else "missing"
    if status != run["status"] or (len(new) and int(new["diverged_epoch"].iloc[0]) != int(run["diverged_epoch"])):
        return f"status: stored {run['status']} (epoch {run['diverged_epoch']}), retrained {status}"
    stored = rows[rows["run_id"] == run["run_id"]].sort_values("epoch", kind="stable").reset_index(drop=True)
    new = new.drop(columns=["status", "diverged_epoch"]).sort_values("epoch", kind="stable").reset_index(drop=True)
    if len(stored) != len(new):
        return f"rows: {len(stored)} stored, {len(new)} retrained"
    # a chunk's columns are its runs' union (`critic/vf_loss` is NaN for a run without a critic), and the sample
    # is batched otherwise: a column one side lacks counts as NaN there
    columns = sorted((set(stored.columns) | set(new.columns)) - {"run_id"})
    worst, where = 0.0, ""
    for column in columns:
        a, b = (_column(t, column) for t in (stored, new))
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            a, b = a.astype(float), b.astype(float)
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            if not same.all():
                gap = np.abs(a - b)[~same]
                size = float(np.nanmax(gap)) if np.isfinite(gap).any() else math.inf
                if size > worst or not where:
                    worst, where = size, column
        elif not np.array_equal(a, b):
            return f"column {column}: values differ"
    return f"column {where}: max |difference| {worst:.3g}" if where else ""
