"""Where sortrl follows a peer's executed code (TRL 1.16.0, verl 0.9.1) and where it says it does not (issue 22):
hand-computed cases of the sequence-level KL bias correction, the critic's value loss, the `trl` recipe, and the
one-line warnings of the differences sortrl keeps."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sortrl import RunConfig, train
from sortrl.engine.losses import LOSS_AGG_MODES, kl_k1
from sortrl.engine.model import encode, value
from sortrl.engine.objective import Kl, SequenceTokens, ValueLoss
from sortrl.engine.task import REWARDS, eos_masks

LOG = math.log


# --- use_bias_correction_kl at the sequence level (TRL: per_token_kl * coef_1, coef_1 the sequence ratio) ---------
def _kl_case(sequence: bool) -> Kl:
    """One run, one prompt of 2 positions, vocab 2, responses [0, 0] and [1, 1]; k1 KL, token-mean weights 1/4.

    pi = (0.5, 0.5) then (0.8, 0.2); pi_old = pi_ref = (0.25, 0.75) then (0.8, 0.2). Token log-ratios: response 0
    (log 2, 0), response 1 (log 2/3, 0), so the GSPO ratios are s_0 = sqrt(2), s_1 = sqrt(2/3).
    """
    old = torch.tensor([[[[LOG(0.25), LOG(0.75)], [LOG(0.8), LOG(0.2)]]]])  # [run batch pos vocab]
    responses = torch.tensor([[[[0, 0], [1, 1]]]])  # [run batch trial pos]
    action = torch.ones_like(responses, dtype=torch.bool)
    omega = torch.full((1, 1, 2, 2), 0.25)  # token-mean over 4 tokens
    folded = torch.stack([omega[0, 0, :, p] @ torch.nn.functional.one_hot(responses[0, 0, :, p], 2).float()
                          for p in range(2)])[None, None]  # fmt: skip
    seq = SequenceTokens(torch.tensor([0]), responses, action, action.sum(-1), omega) if sequence else None
    return Kl(torch.tensor([0]), folded, old, old, torch.tensor([1.0]), torch.tensor([True]), kl_k1, seq)


def test_bias_corrected_kl_takes_the_ratio_of_the_loss_level():
    current = torch.tensor([[[[LOG(0.5), LOG(0.5)], [LOG(0.8), LOG(0.2)]]]])
    by_hand_sequence = 0.25 * (math.sqrt(2) * LOG(2) + math.sqrt(2 / 3) * LOG(2 / 3))  # 0.162299
    by_hand_token = 0.25 * (2 * LOG(2) + 2 / 3 * LOG(2 / 3))  # each token times its own rho: 0.278996
    assert _kl_case(sequence=True).value(current).item() == pytest.approx(by_hand_sequence, rel=1e-6)
    assert _kl_case(sequence=False).value(current).item() == pytest.approx(by_hand_token, rel=1e-6)


# --- the trl recipe: TRL 1.16.0's GRPOConfig defaults, where sortrl has the knob ---------------------------------------
TRL_DEFAULTS = {  # GRPOConfig(output_dir=..., use_cpu=True) of trl 1.16.0, executed
    "scale_rewards": "group",
    "loss_type": "dapo",
    "epsilon": 0.2,
    "epsilon_high": None,
    "importance_sampling_level": "token",
    "beta": 0.0,
    "use_bias_correction_kl": True,
    "sync_ref_model": False,
    "temperature": 1.0,
    "entropy_coef": 0.0,
}
AS_SORTRL = {  # each TRL option's value above, in sortrl's field and value
    "scale_rewards": ("deltas_mode", "normalized_rewards"),
    "loss_type": (
        "loss_agg_mode",
        "token-mean",
    ),  # 'dapo': the clipped loss summed over the batch's tokens / their count
    "epsilon": ("epsilon", 0.2),
    "epsilon_high": ("epsilon_high", None),
    "importance_sampling_level": ("importance_sampling_level", "token"),
    "beta": ("kl_penalty", 0.0),
    "use_bias_correction_kl": ("use_bias_correction_kl", True),
    "sync_ref_model": ("compute_ref_model_period", 0),  # the reference stays the initial model
    "temperature": ("temperature", 1.0),
    "entropy_coef": ("entropy_coeff", 0.0),
}


def test_trl_recipe_is_trls_defaults():
    from sortrl.engine.config import make_config

    cfg = make_config("trl")
    assert set(AS_SORTRL) == set(TRL_DEFAULTS)
    for option, (field, wanted) in AS_SORTRL.items():
        assert getattr(cfg, field) == wanted, (option, field)
    assert cfg.loss_mode == "clipped" and cfg.kl_estimator == "k3"  # TRL's only loss form and KL estimator here


def test_recipes_say_whose_units_beta_is_in():
    from sortrl.engine.config import make_config
    from sortrl.engine.recipes import RECIPES

    grpo = make_config("grpo").kl_description
    assert "in verl, and in TRL with use_bias_correction_kl=False" in grpo
    assert "use_bias_correction_kl=True" in RECIPES["grpo"].peers  # where grpo differs from TRL's trainer
    trl = make_config("trl", kl_penalty=0.04).kl_description
    assert "times pi/pi_old, so beta means what it means in TRL" in trl
    in_reward = make_config("grpo", use_kl_in_reward=True).kl_description
    assert "subtracted from its reward" in in_reward and "k1 with beta 0.001" in in_reward


# --- the critic's value loss (verl 0.9.1 compute_value_loss, agg_loss) --------------------------------------------
def _value_case(clip: float | None, weights=None) -> tuple[float, float]:
    """One prompt, V = 1 now and V_old = 0 at sampling, returns 2 and -1: (loss, d loss / d V)."""
    v = torch.tensor([[[1.0]]], requires_grad=True)
    target = ValueLoss(
        torch.tensor([[[2.0, -1.0]]]),
        torch.zeros(1, 1, 1),
        None if clip is None else torch.tensor([clip]),
        None if weights is None else torch.tensor([[weights]]),
        torch.tensor([weights is None]),
    )
    loss = target.value(v)
    (grad,) = torch.autograd.grad(loss.sum(), v)
    return loss.item(), grad.item()


def test_value_loss_by_hand():
    # unclipped mean: 0.5 * ((1-2)^2 + (1+1)^2) / 2 = 1.25; dV = 0.5 * (2(V-2) + 2(V+1)) / 2 = 0.5
    assert _value_case(None) == _value_case(math.inf) == pytest.approx((1.25, 0.5))  # c off: no run, or this run
    # c = 0.5: clip(V) = 0.5, clipped losses (0.5-2)^2 = 2.25 and (0.5+1)^2 = 2.25; max with 1 and 4 -> 2.25 and 4:
    # 0.5 * 3.125 = 1.5625; the first response's max is the clipped branch, flat in V: dV = 0.5 * 2(V+1) / 2 = 1
    assert _value_case(0.5) == pytest.approx((1.5625, 1.0))
    # verl agg_loss with token weights summing to 1/4 and 3/4 per response: 0.5 * (2.25/4 + 4 * 3/4) = 1.78125
    assert _value_case(0.5, weights=[0.25, 0.75]) == pytest.approx((1.78125, 1.5))


def _verl_value_loss(cfg, head, old_head, params, old_params, responses):
    """One run's critic loss as verl writes it, per token: vpreds, values and returns [batch trial pos] (V per prompt,
    R = the shaped reward at every token), `agg_loss` over the loss tokens (the zero-std filter's prompts left out).
    With `response-mean`, sortrl's own form: the mean over every response."""
    prompts = torch.tensor(cfg.prompts)
    v = value(head, encode(params, prompts, False))[0][:, None, None].expand(-1, *responses.shape[2:])
    v_old = value(old_head, encode(old_params, prompts, False))[0][:, None, None].expand_as(v)
    content, action = eos_masks(responses, cfg.num_values if cfg.eos else None)
    rewards = REWARDS[cfg.reward](prompts, responses, content)[0]  # [batch trial]
    returns = rewards[..., None].expand_as(v)
    kept = rewards.max(-1).values != rewards.min(-1).values if cfg.filter_zero_std_groups else torch.ones(len(prompts))
    mask = (action[0] & kept.bool()[:, None, None]).float()
    sq = (v - returns) ** 2
    if cfg.cliprange_value is not None:
        c = cfg.cliprange_value
        sq = torch.maximum(sq, (torch.clamp(v, v_old - c, v_old + c) - returns) ** 2)
    if cfg.critic_loss_agg_mode == "response-mean":
        return 0.5 * sq[..., 0].mean()
    mode = cfg.loss_agg_mode if cfg.critic_loss_agg_mode == "actor" else cfg.critic_loss_agg_mode
    return 0.5 * (LOSS_AGG_MODES[mode](mask[None], cfg.response_length)[0] * sq).sum()


CRITIC_CASE = dict(deltas_mode="critic", eos=True, filter_zero_std_groups=True, reward="distance", num_responses=3)
CRITIC_CASE.update(num_epochs=3, num_steps_per_epoch=3, learning_rate=0.05, critic_learning_rate=0.3, seed=2)
"""EOS and DAPO's filter (3 responses, distance reward: some prompt is dropped), a head that moves fast enough to clip."""


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),  # sortrl's form: the mean over every response, filtered prompts included, unclipped
        dict(critic_loss_agg_mode="actor", loss_agg_mode="token-mean", cliprange_value=0.05),
        dict(critic_loss_agg_mode="seq-mean-token-sum-norm", cliprange_value=0.02),
    ],
    ids=["response-mean", "actor-token-mean-clipped", "sum-norm-clipped"],
)
def test_critic_gradient_equals_verls_value_loss(kwargs, engine_spy):
    cfg = RunConfig(**CRITIC_CASE, **kwargs)
    out = train([cfg])
    assert out["frac_reward_zero_std"].max() > 0, "the case should filter some prompt"
    steps, binds = cfg.num_steps_per_epoch, 0
    for i, ((head, grads), (params, _)) in enumerate(zip(engine_spy.critic_steps, engine_spy.steps, strict=True)):
        start = i // steps * steps
        old_head, old_params = engine_spy.critic_steps[start][0], engine_spy.steps[start][0]
        leaves = {k: v.clone().requires_grad_() for k, v in head.items()}
        args = (old_head, params, old_params, engine_spy.responses[i // steps])
        expected = torch.autograd.grad(_verl_value_loss(cfg, leaves, *args), list(leaves.values()))
        for name, g in zip(("weight", "bias"), expected, strict=True):
            torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=f"step {i} {name}")
        if cfg.cliprange_value is not None:
            unclipped = dataclasses.replace(cfg, cliprange_value=None)
            other = torch.autograd.grad(_verl_value_loss(unclipped, leaves, *args), list(leaves.values()))
            binds += not torch.allclose(expected[1], other[1])
    assert cfg.cliprange_value is None or binds > 0, "the clip never bound: the check would be vacuous"


# --- what sortrl keeps otherwise than verl: one line, once per train call or grid file ------------------------------
@pytest.mark.parametrize(
    ("fields", "warned"),
    [
        (dict(deltas_mode="remax", kl_penalty=0.1, use_kl_in_reward=True), ["use_kl_in_reward"]),
        (dict(deltas_mode="critic", kl_penalty=0.1, use_kl_in_reward=True), ["use_kl_in_reward"]),
        (dict(deltas_mode="reinforce_plus_plus", kl_penalty=0.1, use_kl_in_reward=True), ["use_kl_in_reward"]),
        (dict(deltas_mode="normalized_rewards", kl_penalty=0.1, use_kl_in_reward=True), []),  # verl's grpo: whole KL
        (dict(deltas_mode="remax", kl_penalty=0.1), []),  # the KL in the loss
        (dict(filter_zero_std_groups=True), ["filter_zero_std_groups"]),
        (dict(filter_zero_std_groups=True, loss_mode="sft"), []),  # sft reads no rewards
        (dict(), []),
    ],
)
def test_peer_differences(fields, warned):
    from sortrl.engine.config import peer_differences

    assert sorted(peer_differences(RunConfig(**fields))) == warned


def test_train_warns_a_peer_difference_once_per_call():
    from sortrl.engine.train import PeerDifferenceWarning

    base = dict(num_epochs=2, num_steps_per_epoch=1, kl_penalty=0.1, use_kl_in_reward=True)
    configs = [RunConfig(deltas_mode="remax", seed=s, **base) for s in (0, 1)] + [RunConfig(**base, seed=2)]
    with pytest.warns(PeerDifferenceWarning) as caught:
        train(configs)
    lines = [str(w.message) for w in caught if issubclass(w.category, PeerDifferenceWarning)]
    assert len(lines) == 1 and lines[0].startswith("use_kl_in_reward: with deltas_mode critic, remax"), lines
    assert "\n" not in lines[0] and "later ones" in lines[0]


def test_sweep_warns_a_peer_difference_once_per_grid_file(tmp_path):
    from typer.testing import CliRunner

    from sortrl.cli import app

    path = tmp_path / "g.toml"
    path.write_text(
        'name = "g"\nseeds = 2\n[base]\nnum_epochs = 2\nnum_steps_per_epoch = 1\nnum_responses = 3\n'
        "[grid]\nfilter_zero_std_groups = [true, false]\nmax_num_gen_batches = [1, 3]\n"
    )
    result = CliRunner().invoke(app, ["sweep", str(path), "--results", str(tmp_path / "r"), "--n-jobs", "1"])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and warned[0].startswith(f"warning: {path}: filter_zero_std_groups: a zero-std prompt")
    assert "verl's DAPO trainer fills its batch with new prompts and raises" in warned[0]


def test_k3_differs_from_trls_only_beyond_verls_clamp():
    # TRL computes exp(d) - d - 1 unclamped; sortrl clamps at 10 as verl: equal at d = 2.6 (9.86), not at d = 2.62
    from sortrl.engine.losses import kl_k3

    for d, trl in ((2.6, math.exp(2.6) - 3.6), (-10.9, math.exp(-10.9) + 9.9), (2.62, math.exp(2.62) - 3.62)):
        ours = kl_k3(torch.tensor([0.0], dtype=torch.float64), torch.tensor([d], dtype=torch.float64)).item()
        assert ours == pytest.approx(min(trl, 10.0), rel=1e-12)
        assert (ours == pytest.approx(trl, rel=1e-12)) == (trl <= 10)
