"""`sortrl.engine.rollout.sample` reproduces the lecture's per-run `torch.multinomial` exactly, and drawing ahead changes nothing."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sortrl import RunConfig, train
from sortrl.engine.rollout import sample, uniforms

BATCH = sys.modules["sortrl.engine.batch"]  # where a batch draws its uniforms ahead


def _multinomial(probs: torch.Tensor, seeds: list[int], n: int) -> tuple[torch.Tensor, list[torch.Generator]]:
    """The lecture's draw: one torch.multinomial per run over its [(batch pos) vocab] rows."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    runs, batch, pos, vocab = probs.shape
    draws = [
        torch.multinomial(probs[r].reshape(-1, vocab), n, replacement=True, generator=g) for r, g in enumerate(gens)
    ]
    return torch.stack(draws).view(runs, batch, pos, n).permute(0, 1, 3, 2), gens


@settings(max_examples=60, deadline=None)
@given(
    runs=st.integers(1, 4),
    batch=st.integers(1, 3),
    pos=st.integers(1, 4),
    vocab=st.integers(2, 9),
    n=st.integers(2, 12),
    scale=st.sampled_from([0.0, 1.0, 8.0, 40.0, 200.0]),
    zeros=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_searching_uniforms_equals_torch_multinomial_per_run(runs, batch, pos, vocab, n, scale, zeros, seed):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(runs, batch, pos, vocab, generator=gen) * scale, dim=-1)
    if zeros:  # exact zeros and rows that do not sum to 1, as torch accepts them
        probs = probs * (torch.rand(probs.shape, generator=gen) > 0.5)
        probs[..., -1] += 1e-3
    seeds = [seed + r for r in range(runs)]
    expected, theirs = _multinomial(probs, seeds, n)
    ours = [torch.Generator().manual_seed(s) for s in seeds]
    assert torch.equal(sample(probs, ours, n, uniforms(ours, batch * pos * n)), expected)
    for a, b in zip(ours, theirs):  # and each generator is left where the lecture's call leaves it
        assert torch.equal(a.get_state(), b.get_state())


def test_sample_with_draws_taken_ahead_equals_drawing_each_epoch():
    probs = torch.softmax(torch.randn(3, 2, 3, 5, generator=torch.Generator().manual_seed(0)) * 4, dim=-1)
    per_epoch = 2 * 3 * 7
    ahead = uniforms([torch.Generator().manual_seed(s) for s in range(3)], 2 * per_epoch)
    step = [torch.Generator().manual_seed(s) for s in range(3)]
    for epoch in range(2):
        drawn = sample(probs, step, 7)
        assert torch.equal(sample(probs, [], 7, ahead[:, epoch * per_epoch : (epoch + 1) * per_epoch]), drawn)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5])
def test_searching_rejects_rows_torch_rejects(bad):
    probs = torch.full((2, 1, 3, 4), 0.25)
    probs[1, 0, 2, 1] = bad
    with pytest.raises(ValueError, match="probs: every row must be finite, non-negative"):
        sample(probs, [], 5, torch.rand(2, 3 * 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="sum to more than 0"):
        sample(torch.zeros(1, 1, 2, 3), [], 5, torch.rand(1, 2 * 5, dtype=torch.float64))


@pytest.mark.parametrize(
    "extra",
    [
        {},  # the lecture's settings
        {"num_responses": 1, "deltas_mode": "rewards"},  # torch's single-draw algorithm: nothing drawn ahead
        {"prompts_per_epoch": 2, "num_prompts": 4},  # minibatches draw between epochs: nothing drawn ahead
        {"max_num_gen_batches": 3, "filter_zero_std_groups": True},  # re-sampling: nothing drawn ahead
    ],
    ids=["lecture", "one-response", "minibatches", "resampling"],
)
def test_drawing_ahead_changes_no_number(monkeypatch, extra):
    # 13 epochs: blocks of 10 then 3 (or of 4, 4, 4, 1 on a small budget); the bad run diverges in epoch 0 and
    # is dropped from the block drawn ahead
    common = dict(num_epochs=13, num_steps_per_epoch=2, kl_estimator="k2", **extra)  # one batch
    configs = [RunConfig(seed=s, **common) for s in range(5)]
    configs.insert(2, RunConfig(seed=9, learning_rate=1e6, kl_penalty=1.0, **common))
    calls = []
    real = BATCH.uniforms
    monkeypatch.setattr(BATCH, "uniforms", lambda gens, count: calls.append(count) or real(gens, count))
    drawn_ahead = train(configs, workers=1)
    assert drawn_ahead.status.tolist().count("diverged") == 1
    per_epoch = 3 * 3 * common.get("num_responses", 10)
    if not extra:
        assert calls == [10 * per_epoch, 3 * per_epoch]
        monkeypatch.setattr(BATCH, "DRAW_BUDGET", 6 * 4 * per_epoch)  # 6 runs x 4 epochs fit
        calls.clear()
        pd.testing.assert_frame_equal(train(configs, workers=1), drawn_ahead, check_exact=True)
        assert calls == [4 * per_epoch] * 3 + [per_epoch]
    else:
        assert calls == []
    monkeypatch.setattr(BATCH, "DRAW_AHEAD", 1)
    pd.testing.assert_frame_equal(train(configs, workers=1), drawn_ahead, check_exact=True)
