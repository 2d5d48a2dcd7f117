"""One bad run does not take the rest down: a diverging run is dropped from its batch and marked.

Which learning rates really go non-finite on the lecture task (5 epochs x 2 steps, seeds 0-3, measured):
the lecture's own loss (`naive`, `rewards`) saturates instead (softmax turns one-hot, gradients
vanish) for every learning rate up to 1e8 and goes non-finite in its first epoch from about 1e10;
ratio-based losses (`clipped` + `normalized_rewards`, GRPO-style) overflow exp(log-ratio) and
diverge mid-run for some seeds at rates as low as 10 (e.g. seed 2 at 1e6, seed 0 at 1e4).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from sortrl.config import RunConfig
from sortrl.store import load_runs, read_manifest, runs_dir
from sortrl.sweep import parse_grid, run_sweep
from sortrl.train import METRICS, batch_key, train

GRPO = {"num_epochs": 5, "num_steps_per_epoch": 2, "loss_mode": "clipped", "deltas_mode": "normalized_rewards"}
GOOD = [RunConfig(**GRPO, seed=s, learning_rate=lr) for s, lr in [(0, 1e-3), (1, 1e-2), (3, 1e-3)]]
BAD = RunConfig(**GRPO, seed=2, learning_rate=1e6)

LECTURE = {"num_epochs": 5, "num_steps_per_epoch": 2}  # the lecture's loss and deltas
LECTURE_GOOD = [RunConfig(**LECTURE, seed=s) for s in range(3)]
LECTURE_BAD = RunConfig(**LECTURE, seed=0, learning_rate=1e10)

ULP_PRONE = ["entropy", "loss", "importance_ratio"]
"""Per-run metric sums that today differ by ~1 float32 ulp with a run's position in its batch (engine issue)."""


@pytest.fixture(autouse=True)
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def rows(table: pd.DataFrame, cfg: RunConfig) -> pd.DataFrame:
    return table[table.run_id == cfg.run_id].reset_index(drop=True)


def without(table: pd.DataFrame, cfg: RunConfig) -> pd.DataFrame:
    return table[table.run_id != cfg.run_id].reset_index(drop=True)


@pytest.fixture(scope="module")
def grpo_batch():
    return train([GOOD[0], BAD, GOOD[1], GOOD[2]]), train(GOOD)


@pytest.fixture(scope="module")
def lecture_batch():
    return train([LECTURE_BAD, *LECTURE_GOOD]), train(LECTURE_GOOD)


@pytest.mark.parametrize(("which", "bad", "goods"), [("grpo", BAD, GOOD), ("lecture", LECTURE_BAD, LECTURE_GOOD)])
def test_diverging_run_is_marked_and_its_batch_finishes(request, which, bad, goods):
    mixed, _ = request.getfixturevalue(f"{which}_batch")
    assert len({batch_key(c) for c in [bad, *goods]}) == 1  # really one batch
    lost = rows(mixed, bad)
    died = int(lost.diverged_epoch.iloc[0])
    assert 0 <= died < bad.num_epochs - 1  # it diverged early, and the others went on
    assert (lost.status == "diverged").all() and (lost.diverged_epoch == died).all()
    assert lost.epoch.tolist() == list(range(died + 1))  # rows up to the epoch it diverged in
    assert not math.isfinite(lost.loss.iloc[-1])  # it really went non-finite
    for cfg in goods:
        kept = rows(mixed, cfg)
        assert (kept.status == "ok").all() and (kept.diverged_epoch == -1).all()
        assert kept.epoch.tolist() == list(range(cfg.num_epochs))
        assert np.isfinite(kept[["mean_reward", "loss", "entropy", "greedy_accuracy"]].to_numpy()).all()


@pytest.mark.parametrize("which", ["grpo", "lecture"])
def test_batch_mates_train_as_if_the_diverging_run_were_absent(request, which):
    mixed, alone = request.getfixturevalue(f"{which}_batch")
    bad = BAD if which == "grpo" else LECTURE_BAD
    kept = without(mixed, bad)
    assert kept.drop(columns=ULP_PRONE).equals(alone.drop(columns=ULP_PRONE))  # same samples, rewards, policy
    pd.testing.assert_frame_equal(kept[ULP_PRONE], alone[ULP_PRONE], check_exact=False, rtol=0, atol=1e-6)


@pytest.mark.xfail(
    strict=True,
    reason="engine (sortrl/train.py): per-run sums such as entropy and loss differ by ~1 float32 ulp with a run's "
    "position in its batch, so batch-mates' metrics are not bit-identical without the diverged run",
)
@pytest.mark.parametrize("which", ["grpo", "lecture"])
def test_batch_mates_metrics_are_bit_identical(request, which):
    mixed, alone = request.getfixturevalue(f"{which}_batch")
    kept = without(mixed, BAD if which == "grpo" else LECTURE_BAD)
    assert kept[list(METRICS)].equals(alone[list(METRICS)])


@pytest.mark.xfail(
    strict=True,
    reason="engine: the epoch a run is found non-finite depends on its place in the batch (BAD alone or first: "
    "epoch 2; second: epoch 1, where its epoch-1 loss is NaN instead of 0.0)",
)
def test_divergence_epoch_does_not_depend_on_batch_mates(grpo_batch):
    assert rows(train([BAD]), BAD).equals(rows(grpo_batch[0], BAD))


@pytest.mark.xfail(
    strict=True,
    raises=RuntimeError,
    reason="engine: parameters stay finite while logits overflow to inf, softmax gives NaN and torch.multinomial "
    "raises 'invalid multinomial distribution', crashing the whole batch; the alive check should test logits too",
)
def test_overflowing_logits_do_not_crash_the_batch():
    crash = RunConfig(**GRPO, seed=1, learning_rate=1e9)
    table = train([GOOD[0], crash])
    assert (rows(table, crash).status == "diverged").all()
    assert without(table, crash).drop(columns=ULP_PRONE).equals(train([GOOD[0]]).drop(columns=ULP_PRONE))


def test_a_sweep_with_a_diverging_run_finishes(tmp_path):
    grid = parse_grid(
        'name = "div"\nseeds = 2\n[base]\nnum_epochs = 4\nnum_steps_per_epoch = 2\n'
        "[grid]\nlearning_rate = [1e-3, 1e10]\n"
    )
    outcome = run_sweep(grid, tmp_path, n_jobs=1, chunk_size=4)
    assert outcome.trained == 4
    table = load_runs(tmp_path)
    status = table.groupby("run_id").agg(lr=("learning_rate", "first"), status=("status", "first"))
    assert (status.status == np.where(status.lr > 1, "diverged", "ok")).all()
    assert (table[table.status == "ok"].groupby("run_id").size() == 4).all()
    assert read_manifest(runs_dir(tmp_path, "div"))["status"] == "complete"
    again = run_sweep(grid, tmp_path, n_jobs=1, chunk_size=4)
    assert again.trained == 0  # a diverged run is a result, not a hole to retrain
