"""Policy losses, loss aggregation weights and KL estimators (sortrl.engine.losses), on hand values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sortrl.engine.losses import (
    IMPORTANCE_SAMPLING_LEVELS,
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    LOSS_MODES,
    ClipRange,
    clipped_loss,
    kl_k1,
    kl_k2,
    kl_k3,
    naive_loss,
    unclipped_loss,
)

INF = math.inf


def clip_range(low=0.2, high=None, dual=INF, dtype=torch.float64) -> ClipRange:
    high = low if high is None else high
    return ClipRange(*(torch.tensor(x, dtype=dtype) for x in (low, high, dual)))


def loss_and_grad(fn, ratio, advantage, clip):
    """Per-token loss and d loss / d log_prob at importance ratio `ratio` (old log-prob 0, so log_prob = log ratio)."""
    lp = torch.log(torch.tensor(ratio, dtype=torch.float64)).requires_grad_()
    old = torch.zeros_like(lp)
    loss = fn(lp, old, torch.tensor(advantage, dtype=torch.float64), clip)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    return loss.detach(), grad


def test_registries():
    assert LOSS_MODES["naive"].fn is naive_loss and LOSS_MODES["naive"].linear
    assert LOSS_MODES["unclipped"].fn is unclipped_loss and LOSS_MODES["unclipped"].linear
    assert LOSS_MODES["clipped"].fn is clipped_loss and not LOSS_MODES["clipped"].linear
    assert set(IMPORTANCE_SAMPLING_LEVELS) == {"token", "sequence"}
    assert set(LOSS_AGG_MODES) == {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"}
    assert dict(KL_ESTIMATORS) == {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# --- ratio 1: every mode has the naive gradient -----------------------------
@pytest.mark.parametrize("mode", ["unclipped", "clipped"])
def test_same_gradient_as_naive_at_ratio_one(mode):
    lp = torch.log(torch.tensor([0.5, 0.2, 0.1, 0.7], dtype=torch.float64)).requires_grad_()
    adv = torch.tensor([1.5, -2.0, 0.5, -0.3], dtype=torch.float64)
    clip = clip_range(0.2, 0.28, dual=3.0)
    (g_naive,) = torch.autograd.grad(naive_loss(lp, lp.detach(), adv, clip).sum(), lp)
    (g_mode,) = torch.autograd.grad(LOSS_MODES[mode].fn(lp, lp.detach(), adv, clip).sum(), lp)
    # naive: d(-A log pi)/d log pi = -A; ratio modes: d(-A rho)/d log pi = -A rho = -A at rho = 1
    torch.testing.assert_close(g_naive, -adv, rtol=0, atol=0)
    torch.testing.assert_close(g_mode, -adv, rtol=1e-12, atol=0)


def test_unclipped_uses_exp_of_log_ratio():
    # rho = exp(log 0.3 - log 0.6) = 0.5, so loss = -A * 0.5 (the lecture's bug, log/log = 2.357, would give -4.714)
    lp, old = torch.log(torch.tensor([0.3])), torch.log(torch.tensor([0.6]))
    out = unclipped_loss(lp, old, torch.tensor([2.0]), clip_range(dtype=torch.float32))
    assert out.item() == pytest.approx(-1.0, rel=1e-6)


# --- PPO clipping ------------------------------------------------------------
@pytest.mark.parametrize(
    ("advantage", "ratio", "loss", "grad"),
    [
        # eps 0.2: clip(rho) in [0.8, 1.2]; loss = -min(rho A, clip(rho) A); grad wrt log pi = -A rho when unclipped
        (2.0, 1.5, -2.4, 0.0),  # A > 0, rho > 1+eps: -min(3.0, 2.4) = -2.4, clipped -> no gradient
        (2.0, 0.5, -1.0, -1.0),  # A > 0, rho < 1-eps: -min(1.0, 1.6) = -1.0, still pushed up: -A rho = -1
        (-1.0, 0.5, 0.8, 0.0),  # A < 0, rho < 1-eps: -min(-0.5, -0.8) = 0.8, clipped -> no gradient
        (-1.0, 1.5, 1.5, 1.5),  # A < 0, rho > 1+eps: -min(-1.5, -1.2) = 1.5, still pushed down: -A rho = 1.5
        (1.0, 1.1, -1.1, -1.1),  # inside the range: -A rho
        (-1.0, 0.9, 0.9, 0.9),  # inside the range: -A rho
    ],
)
def test_clipped_loss_and_gradient(advantage, ratio, loss, grad):
    value, g = loss_and_grad(clipped_loss, ratio, advantage, clip_range(0.2))
    assert value.item() == pytest.approx(loss, abs=1e-12)
    assert g.item() == pytest.approx(grad, abs=1e-12)


def test_clip_higher_widens_only_the_upper_side():
    # eps_low 0.2, eps_high 0.28: range [0.8, 1.28]
    asym, sym = clip_range(0.2, 0.28), clip_range(0.2)
    # A=2, rho=1.25: inside [0.8, 1.28] -> loss -2.5, grad -2.5; with the symmetric 0.2 it is clipped (-2.4, grad 0)
    assert loss_and_grad(clipped_loss, 1.25, 2.0, asym)[1].item() == pytest.approx(-2.5, abs=1e-12)
    assert loss_and_grad(clipped_loss, 1.25, 2.0, asym)[0].item() == pytest.approx(-2.5, abs=1e-12)
    assert loss_and_grad(clipped_loss, 1.25, 2.0, sym)[1].item() == 0.0
    # A=2, rho=1.3 > 1.28: -min(2.6, 2.56) = -2.56, grad 0
    value, g = loss_and_grad(clipped_loss, 1.3, 2.0, asym)
    assert value.item() == pytest.approx(-2.56, abs=1e-12) and g.item() == 0.0
    # lower side unchanged: A=-1, rho=0.75 < 0.8: -min(-0.75, -0.8) = 0.8, grad 0
    value, g = loss_and_grad(clipped_loss, 0.75, -1.0, asym)
    assert value.item() == pytest.approx(0.8, abs=1e-12) and g.item() == 0.0


@pytest.mark.parametrize(
    ("advantage", "ratio", "loss", "grad"),
    [
        # c = 3: for A < 0 the loss is min(PPO loss, -A c)
        (-1.0, 5.0, 3.0, 0.0),  # PPO: -min(-5, -1.2) = 5 > -A c = 3 -> bounded at 3, no gradient
        (-2.0, 4.0, 6.0, 0.0),  # PPO: 8 > -A c = 6 -> 6
        (-1.0, 2.0, 2.0, 2.0),  # PPO: 2 < 3 -> unchanged, grad -A rho = 2
        (-1.0, 0.5, 0.8, 0.0),  # lower clip unchanged
        (1.0, 5.0, -1.2, 0.0),  # A > 0: dual-clip does not apply
    ],
)
def test_dual_clip_bounds_negative_advantage_loss(advantage, ratio, loss, grad):
    value, g = loss_and_grad(clipped_loss, ratio, advantage, clip_range(0.2, dual=3.0))
    assert value.item() == pytest.approx(loss, abs=1e-12)
    assert g.item() == pytest.approx(grad, abs=1e-12)
    # without dual-clip (c = inf) the first case is the plain PPO loss 5
    assert loss_and_grad(clipped_loss, 5.0, -1.0, clip_range(0.2))[0].item() == pytest.approx(5.0, abs=1e-12)


def test_zero_advantage_gives_zero_loss_and_gradient_even_with_infinite_dual_bound():
    # the engine feeds A = 0 for every vocabulary entry nobody sampled; -0 * inf must not leak a NaN
    for mode in LOSS_MODES.values():
        value, g = loss_and_grad(mode.fn, [0.5, 1.0, 3.0], [0.0, 0.0, 0.0], clip_range(0.2))
        assert value.tolist() == [0.0, 0.0, 0.0] and g.tolist() == [0.0, 0.0, 0.0]


# --- properties the engine's folding relies on -------------------------------
log_prob = st.floats(min_value=-4.0, max_value=0.0)
advantage = st.floats(min_value=-5.0, max_value=5.0)
clip_params = st.tuples(
    st.floats(min_value=0.0, max_value=0.9),
    st.floats(min_value=0.0, max_value=2.0),
    st.one_of(st.just(INF), st.floats(min_value=1.01, max_value=10.0)),
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(LOSS_MODES)),
    st.lists(st.tuples(log_prob, log_prob, advantage), min_size=1, max_size=6),
    st.floats(min_value=1e-3, max_value=1e3),
    clip_params,
)
def test_positive_homogeneity_in_the_advantage(mode, rows, c, clip):
    lp, old, adv = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows))
    fn, cr = LOSS_MODES[mode].fn, clip_range(*clip)
    torch.testing.assert_close(fn(lp, old, c * adv, cr), c * fn(lp, old, adv, cr), rtol=1e-9, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(LOSS_MODES)), log_prob, log_prob, advantage, advantage, clip_params)
def test_additive_in_same_sign_advantages_and_linear_modes_in_any(mode, lp, old, a1, a2, clip):
    fn, cr = LOSS_MODES[mode].fn, clip_range(*clip)
    lp, old = torch.tensor([lp], dtype=torch.float64), torch.tensor([old], dtype=torch.float64)
    if not LOSS_MODES[mode].linear:
        a2 = math.copysign(a2, a1)  # the engine sums only same-sign advantages for non-linear modes
    a1, a2 = torch.tensor([a1], dtype=torch.float64), torch.tensor([a2], dtype=torch.float64)
    torch.testing.assert_close(
        fn(lp, old, a1 + a2, cr), fn(lp, old, a1, cr) + fn(lp, old, a2, cr), rtol=1e-9, atol=1e-9
    )


def test_clipped_is_rightly_flagged_non_linear():
    # rho = 1.5, eps 0.2: f(+1) = -min(1.5, 1.2) = -1.2; f(-1) = -min(-1.5, -1.2) = 1.5; f(0) = 0 != 0.3
    clip = clip_range(0.2)
    lp, old = torch.log(torch.tensor([1.5], dtype=torch.float64)), torch.zeros(1, dtype=torch.float64)
    f = lambda a: clipped_loss(lp, old, torch.tensor([a], dtype=torch.float64), clip).item()  # noqa: E731
    assert f(1.0) + f(-1.0) == pytest.approx(0.3, abs=1e-12)
    assert f(0.0) == 0.0


# --- KL estimators -------------------------------------------------------------
def test_kl_estimators_hand_values():
    lp, ref = torch.log(torch.tensor([0.5, 0.25], dtype=torch.float64)), torch.log(torch.tensor([0.25, 0.5]))
    ref = ref.double()
    ln2 = math.log(2)
    # pi = 0.5, ref = 0.25: k1 = log 2; k2 = (log 2)^2 / 2; k3 = ref/pi - log(ref/pi) - 1 = 0.5 + log 2 - 1
    # pi = 0.25, ref = 0.5: k1 = -log 2; k2 = (log 2)^2 / 2; k3 = 2 - log 2 - 1
    torch.testing.assert_close(kl_k1(lp, ref), torch.tensor([ln2, -ln2], dtype=torch.float64))
    torch.testing.assert_close(kl_k2(lp, ref), torch.tensor([ln2**2 / 2, ln2**2 / 2], dtype=torch.float64))
    torch.testing.assert_close(kl_k3(lp, ref), torch.tensor([0.5 + ln2 - 1, 1 - ln2], dtype=torch.float64))


@settings(max_examples=200, deadline=None)
@given(log_prob, log_prob)
def test_k3_zero_iff_policies_agree(lp, ref):
    lp_t, ref_t = torch.tensor(lp, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)
    assert kl_k3(lp_t, lp_t).item() == 0.0
    assert kl_k1(lp_t, lp_t).item() == 0.0 and kl_k2(lp_t, lp_t).item() == 0.0
    if abs(lp - ref) > 1e-6:
        assert kl_k3(lp_t, ref_t).item() > 0.0
        assert kl_k2(lp_t, ref_t).item() > 0.0


# --- loss aggregation weights (verl loss_agg_mode names) ----------------------
# One run: prompt 0 has responses of 3 and 1 loss tokens, prompt 1 of 2 and 0 (e.g. a filtered or empty response);
# max response length 3. Run 1: every token in the loss (2 prompts x 2 responses x 3 = 12 tokens).
MASK = torch.tensor(
    [
        [[[1, 1, 1], [1, 0, 0]], [[1, 1, 0], [0, 0, 0]]],
        [[[1, 1, 1], [1, 1, 1]], [[1, 1, 1], [1, 1, 1]]],
    ],
    dtype=torch.float32,
)
LOSS = torch.tensor(  # per-token losses; masked entries are 100 so a leak would show
    [
        [[[1, 2, 3], [4, 100, 100]], [[5, 6, 100], [100, 100, 100]]],
        [[[1, 1, 1], [1, 1, 1]], [[1, 1, 1], [2, 2, 2]]],
    ],
    dtype=torch.float32,
)


@pytest.mark.parametrize(
    ("mode", "run0_weights", "run0_loss", "run1_weight", "run1_loss"),
    [
        # token-mean: 1 / (number of loss tokens) = 1/6; loss (1+2+3+4+5+6)/6 = 3.5. Run 1: 1/12; 15/12
        ("token-mean", [[[1 / 6] * 3, [1 / 6, 0, 0]], [[1 / 6, 1 / 6, 0], [0, 0, 0]]], 3.5, 1 / 12, 15 / 12),
        # seq-mean-token-mean: 1 / (response's tokens * responses with tokens (3));
        #   loss mean(2, 4, 5.5) = 11.5/3. Run 1: 1/(3*4); mean(1, 1, 1, 2) = 1.25
        (
            "seq-mean-token-mean",
            [[[1 / 9] * 3, [1 / 3, 0, 0]], [[1 / 6, 1 / 6, 0], [0, 0, 0]]],
            11.5 / 3,
            1 / 12,
            1.25,
        ),
        # seq-mean-token-sum: 1 / responses (3); loss mean(6, 4, 11) = 7. Run 1: 1/4; mean(3,3,3,6) = 3.75
        ("seq-mean-token-sum", [[[1 / 3] * 3, [1 / 3, 0, 0]], [[1 / 3, 1 / 3, 0], [0, 0, 0]]], 7.0, 1 / 4, 3.75),
        # seq-mean-token-sum-norm: 1 / (responses (3) * max length (3)) = 1/9; loss 21/9. Run 1: 1/12; 15/12
        (
            "seq-mean-token-sum-norm",
            [[[1 / 9] * 3, [1 / 9, 0, 0]], [[1 / 9, 1 / 9, 0], [0, 0, 0]]],
            21 / 9,
            1 / 12,
            15 / 12,
        ),
    ],
)
def test_loss_agg_weights_hand(mode, run0_weights, run0_loss, run1_weight, run1_loss):
    omega = LOSS_AGG_MODES[mode](MASK, 3)
    assert omega.shape == MASK.shape
    torch.testing.assert_close(omega[0], torch.tensor(run0_weights), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(omega[1], torch.full((2, 2, 3), run1_weight), rtol=1e-6, atol=1e-7)
    per_run = (omega * LOSS).sum(dim=(1, 2, 3))
    torch.testing.assert_close(per_run, torch.tensor([run0_loss, run1_loss]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", sorted(LOSS_AGG_MODES))
def test_zero_weight_prompt_leaves_the_normaliser(mode):
    # Dynamic sampling: dropping prompt 1 (mask 0) must give prompt 0 the weights it would have alone.
    full = torch.ones(1, 2, 2, 3)
    dropped = full.clone()
    dropped[:, 1] = 0
    alone = LOSS_AGG_MODES[mode](full[:, :1], 3)
    omega = LOSS_AGG_MODES[mode](dropped, 3)
    assert torch.equal(omega[:, 1], torch.zeros(1, 2, 3))
    torch.testing.assert_close(omega[:, :1], alone, rtol=0, atol=0)
    # ... and not the weights it had with prompt 1 in (which are half as large)
    torch.testing.assert_close(LOSS_AGG_MODES[mode](full, 3)[:, :1], alone / 2, rtol=1e-6, atol=0)
