"""Implementation checks at the level where their identity holds: one step's gradient (`sortrl.engine.paired`,
`Claim.check = "gradient"`), whatever whole runs do."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from sortrl.analysis import claims
from sortrl.engine.paired import Gradients, paired_gradients
from sortrl.engine.registry import ConfigError
from sortrl.study.grid import parse_grid

GRID = """
name = "hand-gradient"
seeds = 4

[base]
num_epochs = 3

[grid]
regime = [{ name = "lecture" }]
objective = [
    { name = "naive", loss_mode = "naive" },
    { name = "clipped", loss_mode = "clipped", epsilon = 0.2 },
    { name = "gspo", loss_mode = "clipped", importance_sampling_level = "sequence", epsilon = 3e-4, epsilon_high = 4e-4 },
    { name = "entropy", loss_mode = "naive", entropy_coeff = 0.01 },
]

"""


def _check(claim_id: str, new: str, old: str) -> str:
    """A `[[claim]]` table: `new` and `old` (objectives) give the same gradient by construction, checked on it."""
    return (
        f'\n[[claim]]\nid = "{claim_id}"\nstatement = "{new} is {old} at one inner step"\nsource = "a test"\n'
        f'new = {{ objective = "{new}" }}\nold = {{ objective = "{old}" }}\npredicts = "same"\nidentity = "ratio 1"\n'
        'check = "gradient"\n'
    )


# C and S hold by construction; X (an entropy bonus changes nothing) is false: the bonus adds its own gradient
GRID += _check("C", "clipped", "naive") + _check("S", "gspo", "clipped") + _check("X", "entropy", "naive")


def hand_experiment():
    """`GRID` with stored final scores whose whole runs differ (seed 1 of `clipped` ends 0.03 higher: a last-bit
    gradient difference amplified by training), so only the gradient can make the identity's check hold."""
    from types import SimpleNamespace

    grid = parse_grid(GRID)
    rows = [
        {
            "configuration": c.label,
            "seed": s,
            "final_score": 0.1 * s + (0.03 if c.label.endswith("clipped") and s == 1 else 0),
        }
        for c in grid.configurations()
        for s in grid.seeds
    ]
    return SimpleNamespace(name="hand-gradient", grid=grid, final=pd.DataFrame(rows), curves=pd.DataFrame())


def test_a_gradient_check_holds_where_the_gradients_agree_although_the_runs_differ():
    found = {t.claim.id: t for t in claims.ledger(claims.tests(hand_experiment()))}
    clip, gspo, entropy = found["C"], found["S"], found["X"]
    # whole runs: clipped differs from naive in seed 1, which a check on the runs would call 'not in every seed'
    assert np.count_nonzero(clip.differences) == 1
    assert claims.check(replace(clip, claim=replace(clip.claim, check="runs"))) == "not in every seed"
    # one step's gradient, on the same parameters and batch: within float32's bound (n eps x max |g|) in every seed
    assert clip.gradient_tolerance == 3 * 10 * 3  # 3 prompts x 10 responses x 3 positions per gradient element
    assert len(clip.gradient) == 4 and np.all(clip.gradient <= clip.gradient_tolerance)
    assert clip.verdict == gspo.verdict == "holds"
    # a real difference (the entropy bonus's own gradient) is far beyond any rounding
    assert entropy.verdict == "not in every seed" and np.all(entropy.gradient > 100 * entropy.gradient_tolerance)
    assert math.isnan(clip.p_adjusted) and clip not in claims.evidence(list(found.values()))


def test_a_gradient_perturbed_beyond_float32s_bound_fails_the_check():
    """`gradient_ulps` and `agreeing` on hand-made differences: n eps x max|g| is the bound, one eps more fails; a
    difference where the old side's gradient is 0 has no rounding to explain it."""
    eps = float(np.finfo(np.float32).eps)
    found = Gradients(np.array([0.0, 90 * eps * 2.0, 91 * eps * 2.0, 1e-12]), np.array([1.0, 2.0, 2.0, 0.0]), 90)
    ulps = claims.gradient_ulps(found)
    assert list(ulps) == pytest.approx([0.0, 90.0, 91.0, math.inf])
    test = next(t for t in claims.tests(hand_experiment()) if t.claim.id == "C")
    bound = claims.gradient_bound(found.terms)
    assert claims.check(replace(test, gradient=ulps[:2], gradient_tolerance=bound)) == "holds"
    assert claims.check(replace(test, gradient=ulps[:3], gradient_tolerance=bound)) == "not in every seed"
    assert claims.check(replace(test, gradient=ulps[[0, 3]], gradient_tolerance=bound)) == "not in every seed"
    assert claims.check(replace(test, gradient=np.zeros(0))) == "no runs yet"


def test_paired_gradients_compare_the_same_batch_and_refuse_mismatched_seeds():
    grid = parse_grid(GRID)
    naive, clipped = (grid.select({"objective": v}) for v in ("naive", "clipped"))
    found = paired_gradients([naive.config], [clipped.config], epochs=2)
    assert found.difference.shape == (1,) and found.scale[0] > 0 and found.terms == 90
    other = replace(clipped.config, seed=clipped.config.seed + 1)
    with pytest.raises(ConfigError, match="same seeds"):
        paired_gradients([naive.config], [other])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('check = "gradient"', "only an implementation check"),
        ('identity = "x"\ncheck = "trajectory"', "check: unknown value 'trajectory'; valid choices: runs, gradient"),
        ('identity = "x"\ncheck = "gradient"\ntolerance = 0.1', "float32's rounding bound, not declared"),
    ],
)
def test_a_gradient_check_is_declared_only_where_it_means_something(extra, message):
    head = GRID.split("[[claim]]")[0]
    claim = '[[claim]]\nid = "Q"\nstatement = "s"\nsource = "a"\nnew = { objective = "clipped" }\nold = { objective = "naive" }\npredicts = "same"\n'
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_grid(head + claim + extra + "\n")
