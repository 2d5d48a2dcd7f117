"""Shared test fixtures: one torch thread per test process, and a spy on the engine's optimiser and sampler."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny():
    """Keyword overrides for a fast run (lecture task, few epochs)."""
    return {"num_epochs": 6, "num_steps_per_epoch": 3}


@pytest.fixture
def engine_spy(monkeypatch):
    """Record what `sortrl.train` feeds its optimizer and samples, without changing either.

    Returns a namespace with `steps` (one `(params_before, grads)` pair of
    `{"embedding","encode","decode"}` dicts per inner step), `responses` (each
    `sample` result, [run batch trial pos], replaced by the re-sampled responses
    when DAPO re-sampling ran) and `optimizers` (the policy's Adam objects).
    """
    import importlib
    from types import SimpleNamespace

    engine = importlib.import_module("sortrl.train")  # `sortrl.train` the attribute is the function
    log = SimpleNamespace(steps=[], responses=[], optimizers=[])
    names = ("embedding", "encode", "decode")

    class SpyAdam(engine.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.policy = len(self.params) == len(names)  # not the critic's value head
            if self.policy:
                log.optimizers.append(self)

        def step(self, grads):
            if not self.policy:
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

    monkeypatch.setattr(engine, "Adam", SpyAdam)
    monkeypatch.setattr(engine, "sample", spy_sample)
    monkeypatch.setattr(engine, "resample_zero_std", spy_resample)
    return log
