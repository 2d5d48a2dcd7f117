"""The opt-in fast path (`engine = "fast"`, `sortrl.engine.fast`): equivalent in distribution, not in bits."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from sortrl.analysis.stats import final_scores
from sortrl.analysis.verdicts import ALPHA, hypothesis_p
from sortrl.engine.config import RunConfig
from sortrl.engine.fast import FusedAdam, log_probs
from sortrl.engine.optim import Adam
from sortrl.engine.task import reward_bounds
from sortrl.engine.train import train

EQUIVALENCE_SEEDS = 256
MARGIN_SHARE = 0.05
"""Declared before the test was first run: the ledger's unit of a difference that matters, 5% of the range from the
uniform random policy's mean reward to the best one."""


@pytest.mark.parametrize(
    "setting",
    [{}, {"deltas_mode": "centered_rewards", "loss_mode": "clipped", "temperature": 2.0, "num_epochs": 60}],
    ids=["lecture", "centered-clipped-T2"],
)
def test_fast_trains_the_same_policies_as_exact(setting):
    """TOST over 256 seeds, paired by seed: the mean difference of the final reward (fast - exact) lies within
    +-5% of the chance-to-best range, at the ledger's alpha; and the two paths do differ in their bits."""
    exact = [RunConfig(seed=s, **setting) for s in range(EQUIVALENCE_SEEDS)]
    fast = [dataclasses.replace(c, engine="fast") for c in exact]
    scores, entropy = {}, {}
    for name, configs in (("exact", exact), ("fast", fast)):
        table = train(configs, with_config=False)
        entropy[name] = table["entropy"].to_numpy()
        by_seed = dict(zip((c.run_id for c in configs), (c.seed for c in configs)))
        final = final_scores(table)
        scores[name] = pd.Series(final.to_numpy(), index=final.index.map(by_seed)).sort_index().to_numpy()
    bounds = reward_bounds(exact[0])
    margin = MARGIN_SHARE * (bounds.best - bounds.chance)
    differences = scores["fast"] - scores["exact"]
    # not the exact path under another name: the policies' probabilities differ in their last bits (the sampled
    # rewards, a step function of them, mostly do not)
    assert not np.array_equal(entropy["fast"], entropy["exact"])
    assert hypothesis_p(differences, "=", margin) < ALPHA, (differences.mean(), margin)


def test_fast_runs_do_not_depend_on_their_batch_mates():
    alone = train([RunConfig(seed=3, engine="fast", num_epochs=20)], with_config=False)
    batch = train([RunConfig(seed=s, engine="fast", num_epochs=20) for s in range(6)], with_config=False)
    together = batch[batch["run_id"] == alone["run_id"].iloc[0]].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, together)


def test_fused_adam_is_adam_to_float_rounding_and_exact_with_per_run_rates():
    torch.manual_seed(0)
    start = [torch.randn(4, 3, 2), torch.randn(4, 5)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]

    def run(cls, lr):
        params = [p.clone() for p in start]
        opt = cls(params, lr)
        for g in grads:
            opt.step(g)
        return params

    same = torch.full((4,), 1e-2, dtype=torch.float64)
    for a, b in zip(run(Adam, same), run(FusedAdam, same)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    mixed = torch.tensor([1e-2, 1e-3, 1e-2, 5e-3], dtype=torch.float64)  # per-run rates: the exact step
    for a, b in zip(run(Adam, mixed), run(FusedAdam, mixed)):
        assert torch.equal(a, b)


def test_fast_log_probs_are_log_softmax():
    logits = torch.randn(2, 3, 4, 5) * 10
    torch.testing.assert_close(log_probs(logits, True), torch.log_softmax(logits, -1), rtol=0, atol=1e-5)
    assert torch.equal(log_probs(logits, False), torch.log_softmax(logits, -1))


def test_claims_md_says_which_path_trained_each_claims_runs():
    from types import SimpleNamespace

    from sortrl.render.claims_md import engine_line

    def test(claim, *engines):
        return SimpleNamespace(claim=SimpleNamespace(id=claim), engines=engines)

    assert "every run was trained on the exact path" in engine_line([test("L1", "exact"), test("G3", "exact")])
    line = engine_line([test("L1", "exact"), test("G3", "fast"), test("G3", "exact", "fast")])
    assert "the runs of G3 were trained on the opt-in fast path" in line and "L1" not in line
