"""Shared test fixtures: one torch thread per test process, a spy on the engine, and one report on tiny sweeps.

The expensive report fixture is built once per test run and shared by the
xdist workers through the run's temporary folder (`report_results`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# the report cache's signing key (sortrl.render.cache.key_file) lives under the temporary folder, not the user's
# home; one folder for every test process of a run (and the CLI's subprocesses), so they read each other's caches
# tests read the CLI's output line by line: no timed progress lines, which would come or not with the machine's load
# (the test of those lines sets its own interval)
os.environ["SORTRL_PROGRESS_SECONDS"] = "3600"
os.environ["XDG_CACHE_HOME"] = os.path.join(tempfile.gettempdir(), f"sortrl-tests-{os.getuid()}", "cache")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny():
    """Keyword overrides for a fast run (lecture task, few epochs)."""
    return {"num_epochs": 6, "num_steps_per_epoch": 3}


@pytest.fixture
def engine_spy(monkeypatch):
    """Record what `sortrl.engine.train` (with `sortrl.engine.batch`) feeds its optimizer and samples, without changing either.

    Returns a namespace with `steps` (one `(params_before, grads)` pair of
    `{"embedding","encode","decode"}` dicts per inner step), `responses` (each
    `sample` result, [run batch trial pos], replaced by the re-sampled responses
    when DAPO re-sampling ran), `optimizers` (the policy's Adam objects) and
    `critic_steps` (the value head's `(params_before, grads)`, `{"weight","bias"}`, per inner step).
    """
    import importlib
    from types import SimpleNamespace

    engine = importlib.import_module("sortrl.engine.train")  # the module (`sortrl.train` is the function)
    log = SimpleNamespace(steps=[], responses=[], optimizers=[], critic_steps=[])
    names = ("embedding", "encode", "decode")

    class SpyAdam(importlib.import_module("sortrl.engine.optim").Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.policy = len(self.params) == len(names)  # not the critic's value head
            if self.policy:
                log.optimizers.append(self)

        def step(self, grads):
            if not self.policy:
                head = ("weight", "bias")
                before = {n: p.detach().clone() for n, p in zip(head, self.params)}
                log.critic_steps.append((before, {n: g.detach().clone() for n, g in zip(head, grads)}))
                return super().step(grads)
            before = {n: p.detach().clone() for n, p in zip(names, self.params)}
            log.steps.append((before, {n: g.detach().clone() for n, g in zip(names, grads)}))
            super().step(grads)

    real_sample = engine.sample

    def spy_sample(*args, **kwargs):
        out = real_sample(*args, **kwargs)
        log.responses.append(out.clone())
        return out

    real_resample = engine.resample_zero_std

    def spy_resample(*args, **kwargs):  # DAPO re-sampling: the epoch trains on the re-sampled responses
        roll, rounds = real_resample(*args, **kwargs)
        log.responses[-1] = roll.responses.clone()
        return roll, rounds

    monkeypatch.setattr(importlib.import_module("sortrl.engine.batch"), "Adam", SpyAdam)  # a batch makes its optimisers
    monkeypatch.setattr(engine, "sample", spy_sample)
    monkeypatch.setattr(engine, "resample_zero_std", spy_resample)
    return log


TINY = """
name = "tiny"
seeds = 6
highlight_seed = 5
baseline = { deltas_mode = "rewards" }

[base]
num_epochs = 5
num_steps_per_epoch = 2

[grid]
deltas_mode = ["rewards", "centered_rewards", "normalized_rewards"]

[[claim]]
id = "C1"
statement = "centering helps"
subject = "centering"
source = "the lecture"
new = { deltas_mode = "centered_rewards" }
old = { deltas_mode = "rewards" }
predicts = "higher"
seed = 5

[[claim]]
id = "C2"
statement = "std normalisation makes little difference"
subject = "std normalisation"
source = "the lecture"
new = { deltas_mode = "normalized_rewards" }
old = { deltas_mode = "centered_rewards" }
predicts = "same"
seed = 5
"""
"""A lecture-like grid (3 deltas modes x 6 seeds, 5 epochs) that declares the lecture's two claims."""

LENGTHS = """
name = "lengths"
seeds = 3
baseline = { deltas_mode = "rewards", prompt_length = 3 }

[base]
task = "random"
num_prompts = 4
num_eval_prompts = 4
num_epochs = 5
num_steps_per_epoch = 2

[grid]
prompt_length = [3, 4]
deltas_mode = ["rewards", "centered_rewards"]
"""
"""Two prompt lengths (a reward-scale axis) with held-out prompts."""


@pytest.fixture(scope="session")
def report_grids():
    return {"tiny": TINY, "lengths": LENGTHS}


@pytest.fixture(scope="session")
def report_results(tmp_path_factory, worker_id, report_grids):
    """A results folder with the two tiny experiments swept and reported: (folder, paths `write_report` wrote).

    Built once per test run, whichever xdist workers use it (the report and the notebook tests): the first
    one builds it under a file lock in the run's shared temporary folder, the others reuse it (pytest-xdist's
    recipe for session fixtures; `--dist loadgroup` cannot keep them on one worker under pytest 9.2,
    pytest-xdist issue #1386). Tests must not change what it holds (`write_report` again rewrites the same bytes).
    """
    from filelock import FileLock

    from sortrl.render.publish import write_report
    from sortrl.study.grid import parse_grid
    from sortrl.study.sweep import run_sweep

    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if worker_id != "master" else shared
    root, listing = shared / "report-results", shared / "report-results.json"
    with FileLock(str(shared / "report-results.lock")):
        if not listing.is_file():
            for text in report_grids.values():
                run_sweep(parse_grid(text), root, n_jobs=1)
            listing.write_text(json.dumps([str(p) for p in write_report(root)]))
    return root, [Path(p) for p in json.loads(listing.read_text())]


@pytest.fixture(scope="module")
def results(report_results):
    """The shared tiny results folder (`report_results`)."""
    return report_results[0]


@pytest.fixture(scope="module")
def written(report_results):
    """The paths `write_report` wrote into it."""
    return report_results[1]


@pytest.fixture(scope="module")
def sections(results, written):
    """The findings of each experiment, as `write_report` passes them to the README."""
    from sortrl.analysis import experiment, findings
    from sortrl.render import figures

    out = []
    for exp in experiment.load_experiments(results, figures.curve_metrics()):
        names = [n for n in figures.FIGURES if (results / "figures" / f"{exp.name}_{n}.png").is_file()]
        out.append(findings.findings(exp, experiment.summarize(exp), names))
    return findings.link_shared(out)
