"""Lecture parity: the engine reproduces CS336 lecture 17's `run_policy_gradient` numbers.

Reference: `shared/reference/lecture_parity.csv` beside the repository (per-epoch mean_reward of
the unmodified lecture code, seeds 0 and 5, four delta modes), or the path in `SORTRL_REFERENCE`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from einops import einsum, repeat

from sortrl import RunConfig, train
from sortrl.engine.deltas import DELTA_MODES
from sortrl.engine.optim import Adam
from sortrl.engine.reference import lecture_loop
from sortrl.engine.task import inclusion_ordering_reward

LECTURE_MODES = ["rewards", "centered_rewards", "normalized_rewards", "max_rewards"]


def reference_csv() -> Path:
    beside_repo = Path(__file__).resolve().parents[1].parent / "shared/reference/lecture_parity.csv"
    if beside_repo.is_file():
        return beside_repo
    env = os.environ.get("SORTRL_REFERENCE")
    if env:
        path = Path(env)
        path = path / "lecture_parity.csv" if path.is_dir() else path
        if path.is_file():
            return path
    pytest.fail(f"lecture_parity.csv not found at {beside_repo} nor through SORTRL_REFERENCE={env!r}")


def test_lecture_parity_per_epoch_mean_reward():
    ref = pd.read_csv(reference_csv())
    assert set(ref.deltas_mode) == set(LECTURE_MODES) and set(ref.seed) == {0, 5}
    configs = [RunConfig(deltas_mode=mode, seed=seed) for mode in LECTURE_MODES for seed in (0, 5)]
    out = train(configs)
    merged = out.merge(ref, on=["deltas_mode", "seed", "epoch"], how="outer", suffixes=("", "_lecture"))
    assert len(merged) == 8 * 100  # every (mode, seed, epoch) on both sides, nothing extra
    assert merged.mean_reward.notna().all() and merged.mean_reward_lecture.notna().all()
    gap = (merged.mean_reward - merged.mean_reward_lecture).abs()
    worst = merged.loc[gap.idxmax(), ["deltas_mode", "seed", "epoch"]].tolist()
    assert gap.max() <= 1e-6, f"first divergence at (deltas_mode, seed, epoch) = {worst}: {gap.max()}"


def test_reference_implementation_matches_the_csv():
    # validates sortrl.engine.reference.lecture_loop against the lecture's own numbers (seed 5, centered, first 30 epochs)
    ref = pd.read_csv(reference_csv())
    ref = ref[(ref.deltas_mode == "centered_rewards") & (ref.seed == 5)].sort_values("epoch")
    mine, _ = lecture_loop(5, "centered_rewards", num_epochs=30)
    assert max(abs(a - b) for a, b in zip(mine, ref.mean_reward.iloc[:30], strict=True)) <= 1e-6


@pytest.mark.parametrize("seed", [1, 2, 11])
def test_other_seeds_match_the_lecture_algorithm(seed):
    out = train([RunConfig(deltas_mode="normalized_rewards", seed=seed, num_epochs=40)])
    mine, _ = lecture_loop(seed, "normalized_rewards", num_epochs=40)
    assert max(abs(a - b) for a, b in zip(out.mean_reward, mine, strict=True)) <= 1e-6


@pytest.mark.parametrize(
    "lrs",
    [(1e-3, 1e-3), (3e-3, 3e-3), (7e-4, 7e-4), (0.1, 0.1), (1e-3, 3e-3), (0.1, 7e-4)],
    ids=["1e-3", "3e-3", "7e-4", "0.1", "two-lrs", "two-lrs-far"],
)
@pytest.mark.parametrize("layout", ["dense", "transposed"])
def test_adam_matches_torch_adam_bit_for_bit(lrs, layout):
    # sortrl.engine.optim.Adam over two stacked runs == torch.optim.Adam on each run, when lr is given exactly (float64):
    # one lr for both runs (torch's `value=` step), a lr per run (a [run] step size), and gradients of another
    # layout than the parameter (the embedding's, from the tied decode)
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(2, 6, 10, generator=gen)
    grads = [torch.randn(2, 6, 10, generator=gen) for _ in range(25)]
    if layout == "transposed":
        grads = [g.transpose(1, 2).contiguous().transpose(1, 2) for g in grads]
        assert grads[0].stride() != start.stride()
    stacked = start.clone().requires_grad_()
    ours = Adam([stacked], torch.tensor(lrs, dtype=torch.float64))
    singles = [start[r].clone().requires_grad_() for r in range(2)]
    theirs = [torch.optim.Adam([p], lr=lr) for p, lr in zip(singles, lrs)]
    for g in grads:
        ours.step([g])
        for r in range(2):
            singles[r].grad = g[r].clone()
            theirs[r].step()
        for r in range(2):
            assert torch.equal(stacked.detach()[r], singles[r].detach())


def test_engine_parameters_equal_the_lecture_bit_for_bit(engine_spy):
    out = train([RunConfig(deltas_mode="centered_rewards", seed=0, num_epochs=3)])
    assert len(out) == 3
    _, expected = lecture_loop(0, "centered_rewards", num_epochs=3)
    (opt,) = engine_spy.optimizers
    for ours, theirs in zip(opt.params, expected, strict=True):
        assert torch.equal(ours.detach()[0], theirs)


def test_engine_gradient_equals_the_lecture_bit_for_bit(engine_spy):
    # the folded gradient of the first step (same parameters on both sides) is the lecture's, exactly
    train([RunConfig(deltas_mode="normalized_rewards", seed=4, num_epochs=1, num_steps_per_epoch=1)])
    (params, grads), responses = engine_spy.steps[0], engine_spy.responses[0][0]
    prompts = torch.tensor([[1, 0, 2], [3, 2, 4], [1, 2, 3]])
    leaves = {k: v[0].clone().requires_grad_() for k, v in params.items()}
    h = einsum(leaves["embedding"][prompts], leaves["encode"], "b p d1, p d1 d2 -> b d2")
    logits = einsum(
        einsum(h, leaves["decode"], "b d2, p d2 d1 -> b p d1"), leaves["embedding"], "b p d1, v d1 -> b p v"
    )
    log_probs = repeat(torch.log_softmax(logits, dim=-1), "b p v -> b t p v", t=10)
    log_probs = log_probs.gather(-1, responses[..., None]).squeeze(-1)
    rewards = inclusion_ordering_reward(prompts, responses[None], torch.ones_like(responses[None]).bool())[0]
    deltas = DELTA_MODES["normalized_rewards"](rewards[None])[0]
    (-(log_probs * deltas[..., None]).mean()).backward()
    for name in ("embedding", "encode", "decode"):
        assert torch.equal(grads[name][0], leaves[name].grad), name
