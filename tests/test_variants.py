"""GRPO-family variants through the engine: dynamic sampling, GSPO, KL reference refresh, EOS and
length penalty, TRL clip metrics, recipes. (Hand cases of the formulas are in test_deltas.py and
test_losses.py; the folded-vs-direct gradient matrix is in test_train.py.)"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sortrl import RunConfig, train
from sortrl.engine.config import make_config
from sortrl.engine.recipes import RECIPES
from sortrl.engine.registry import ConfigError

LECTURE = [[1, 0, 2], [3, 2, 4], [1, 2, 3]]


def py_inclusion_ordering(prompt, response):
    """The lecture's reward, in plain Python, on a (truncated) response list."""
    return sum(1 for x in prompt if x in response) + sum(1 for a, b in zip(response, response[1:]) if a <= b)


def truncate(response, eos):
    return response[: response.index(eos)] if eos in response else response


# --- dynamic sampling (filter_zero_std_groups) ----------------------------------------------
def _first_step_grads(cfg, spy):
    spy.steps.clear()
    spy.responses.clear()
    out = train([cfg])
    return out, spy.steps[0][1]


def test_filter_rescales_centered_gradient_by_kept_share(engine_spy):
    # centered_rewards gives a zero-std prompt zero deltas, so with token-mean the only effect of the filter
    # is the normaliser: total tokens B*G*L -> kept tokens (1 - f)*B*G*L, i.e. grad_on = grad_off / (1 - f).
    for seed in range(40):
        cfg = RunConfig(seed=seed, num_epochs=1, num_steps_per_epoch=1, num_responses=2, deltas_mode="centered_rewards")
        off_table, off = _first_step_grads(cfg, engine_spy)
        f = off_table.frac_reward_zero_std.iloc[0]
        if 0 < f < 1:
            break
    else:
        pytest.fail("no seed with a mix of zero-std and varied prompts")
    on_table, on = _first_step_grads(RunConfig(**{**cfg.to_dict(), "filter_zero_std_groups": True}), engine_spy)
    assert on_table.frac_reward_zero_std.iloc[0] == f
    assert f == pytest.approx(1 / 3) or f == pytest.approx(2 / 3)
    for name in off:
        torch.testing.assert_close(on[name], off[name] / (1 - f), rtol=1e-5, atol=1e-7)
        assert not torch.allclose(on[name], off[name])


def test_filter_drops_always_constant_prompts(engine_spy):
    # exact_match over 50 numbers is never earned by a random policy, and with a length penalty of 0.1 every
    # full-length response gets 0 - 0.1 * 3 = -0.3: each prompt always has one reward (zero std), and the raw
    # `rewards` deltas (-0.3 each) would still push the policy. With the filter every prompt leaves the loss.
    common = dict(vocab_size=50, reward="exact_match", length_penalty=0.1, num_epochs=3, num_steps_per_epoch=2)
    kept = train([RunConfig(**common)])
    assert kept.mean_reward.tolist() == [0.0] * 3  # the task's reward
    assert kept.shaped_reward.tolist() == pytest.approx([-0.3] * 3, abs=1e-6)  # what training sees
    assert kept.frac_reward_zero_std.tolist() == [1.0, 1.0, 1.0]
    assert any(g.abs().max() > 0 for _, grads in engine_spy.steps for g in grads.values())
    engine_spy.steps.clear()
    filtered = train([RunConfig(filter_zero_std_groups=True, **common)])
    assert filtered.shaped_reward.tolist() == pytest.approx([-0.3] * 3, abs=1e-6)
    assert all(torch.equal(g, torch.zeros_like(g)) for _, grads in engine_spy.steps for g in grads.values())
    assert filtered.entropy.nunique() == 1  # the policy never moved
    assert kept.entropy.nunique() > 1


# --- GSPO -------------------------------------------------------------------------------------
@pytest.mark.parametrize("eos", [False, True])
def test_gspo_on_policy_equals_token_level_clipped_seq_mean_token_mean(eos, engine_spy):
    common = dict(
        seed=6, num_epochs=1, num_steps_per_epoch=2, loss_mode="clipped", deltas_mode="normalized_rewards",
        loss_agg_mode="seq-mean-token-mean", eos=eos, learning_rate=0.05,
    )  # fmt: skip
    train([RunConfig(importance_sampling_level="sequence", **common)])
    seq_steps, seq_opt = list(engine_spy.steps), engine_spy.optimizers[-1]
    engine_spy.steps.clear()
    train([RunConfig(importance_sampling_level="token", **common)])
    tok_steps, tok_opt = list(engine_spy.steps), engine_spy.optimizers[-1]
    # step 1 is on-policy (ratio 1): d/dθ s_i = mean_t d log pi(y_t), so the gradients agree
    for name in seq_steps[0][1]:
        torch.testing.assert_close(seq_steps[0][1][name], tok_steps[0][1][name], rtol=1e-5, atol=1e-8)
    # step 2 is off-policy: sequence and token ratios differ, and so must the gradients (the check is not vacuous)
    differs = [
        not torch.allclose(seq_steps[1][1][n], tok_steps[1][1][n], rtol=1e-3, atol=1e-6) for n in seq_steps[1][1]
    ]
    assert any(differs)
    assert not all(torch.equal(a, b) for a, b in zip(seq_opt.params, tok_opt.params, strict=True))


def test_gspo_trains_two_runs_in_one_batch():
    cfgs = [
        RunConfig(seed=s, num_epochs=2, num_steps_per_epoch=2, recipe="gspo", **RECIPES["gspo"].fields) for s in (0, 1)
    ]
    out = train(cfgs)
    assert len(out) == 4


def test_gspo_clip_metrics_are_batch_invariant():
    common = dict(num_epochs=3, num_steps_per_epoch=4, loss_mode="clipped", importance_sampling_level="sequence",
                  deltas_mode="centered_rewards", learning_rate=0.05)  # fmt: skip
    target = RunConfig(seed=3, epsilon=0.2, **common)
    mates = [RunConfig(seed=10, epsilon=1e-4, **common), RunConfig(seed=11, epsilon=0.9, epsilon_high=1e-4, **common)]
    alone = train([target])
    inside = train([mates[0], target, mates[1]])
    inside = inside[inside.run_id == target.run_id].reset_index(drop=True)
    for col in ("clip_ratio", "clip_ratio/low_mean", "clip_ratio/high_mean"):
        # one token in 120 is 0.008: a misread epsilon moves these by far more than rounding could
        assert alone[col].to_numpy() == pytest.approx(inside[col].to_numpy(), abs=1e-3), col


# --- TRL clip metrics ---------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_clip_ratio_metrics_follow_trl(level, engine_spy):
    # TRL: low = mean over loss tokens of [ratio < 1 - eps_low and A < 0]; high = [ratio > 1 + eps_high and A > 0];
    # clip_ratio = low + high (TRL's region_mean); each averaged over the inner steps.
    from sortrl.engine.model import forward
    from sortrl.engine.task import eos_masks

    cfg = RunConfig(
        seed=1, num_epochs=2, num_steps_per_epoch=4, loss_mode="clipped", importance_sampling_level=level,
        deltas_mode="centered_rewards", epsilon=0.05, epsilon_high=0.08, learning_rate=0.05, eos=True,
    )  # fmt: skip
    out = train([cfg])
    prompts, steps = torch.tensor(cfg.prompts), cfg.num_steps_per_epoch

    def token_log_probs(params, responses):
        lp = torch.log_softmax(forward(params, prompts), dim=-1)[:, :, None].expand(-1, -1, responses.shape[2], -1, -1)
        return lp.gather(-1, responses[..., None]).squeeze(-1)

    for epoch in range(cfg.num_epochs):
        responses = engine_spy.responses[epoch]
        content, action = eos_masks(responses, cfg.num_values)
        rewards = torch.tensor(
            [[[py_inclusion_ordering(p, truncate(r, cfg.num_values)) for r in group] for p, group in
              zip(LECTURE, responses[0].tolist(), strict=True)]]
        ).float()  # fmt: skip
        adv = (rewards - rewards.mean(dim=-1, keepdim=True))[..., None].expand_as(responses)
        old = token_log_probs(engine_spy.steps[epoch * steps][0], responses)
        low = high = ratio_mean = 0.0
        for i in range(epoch * steps, (epoch + 1) * steps):
            log_ratio = token_log_probs(engine_spy.steps[i][0], responses) - old
            if level == "sequence":
                log_ratio = ((log_ratio * action).sum(-1, keepdim=True) / action.sum(-1, keepdim=True)).expand_as(old)
            ratio = log_ratio.exp()[action]
            a = adv[action]
            low += ((ratio < 1 - 0.05) & (a < 0)).float().mean().item() / steps
            high += ((ratio > 1 + 0.08) & (a > 0)).float().mean().item() / steps
            ratio_mean += ratio.mean().item() / steps
        row = out.iloc[epoch]
        assert row["clip_ratio/low_mean"] == pytest.approx(low, abs=1e-6)
        assert row["clip_ratio/high_mean"] == pytest.approx(high, abs=1e-6)
        assert row["clip_ratio"] == pytest.approx(low + high, abs=1e-6)
        assert row["importance_ratio"] == pytest.approx(ratio_mean, abs=1e-5)
    assert out["clip_ratio/low_mean"].max() > 0 and out["clip_ratio/high_mean"].max() > 0  # both sides exercised


def test_clip_metrics_nan_without_clipping(tiny):
    naive, unclipped = RunConfig(**tiny), RunConfig(loss_mode="unclipped", **tiny)
    out = train([naive, unclipped])
    a, b = out[out.run_id == naive.run_id], out[out.run_id == unclipped.run_id]
    for col in ("clip_ratio", "clip_ratio/low_mean", "clip_ratio/high_mean", "importance_ratio"):
        assert a[col].isna().all(), col
    assert b["clip_ratio"].isna().all() and b["importance_ratio"].notna().all()
    assert b["importance_ratio"].iloc[0] == pytest.approx(1.0, abs=0.05)


# --- KL reference ------------------------------------------------------------------------------
def test_reference_frozen_vs_refreshed():
    # one inner step per epoch, so an epoch's kl is the KL at its first step: 0 right after a refresh
    common = dict(seed=0, num_epochs=5, num_steps_per_epoch=1, kl_penalty=0.5, learning_rate=0.05)
    frozen, every, second = (RunConfig(compute_ref_model_period=p, **common) for p in (0, 1, 2))
    out = train([frozen, every, second])
    kl = {c.compute_ref_model_period: out[out.run_id == c.run_id].kl.tolist() for c in (frozen, every, second)}
    assert kl[0][0] == 0.0 and all(x > 0 for x in kl[0][1:])  # initial policy kept as the reference
    assert kl[1] == [0.0] * 5  # refreshed before every epoch's only step
    assert [x == 0.0 for x in kl[2]] == [True, False, True, False, True]
    assert kl[2][1] == kl[0][1]  # same reference (initial policy) and same parameters at epoch 1
    assert kl[2][3] != kl[0][3]


# --- EOS, response length, length penalty, exact match ----------------------------------------
def test_eos_adds_a_token_and_response_length_is_measured(engine_spy):
    cfg = RunConfig(eos=True, seed=0, num_epochs=3, num_steps_per_epoch=2)
    assert (cfg.num_values, cfg.num_tokens) == (5, 6)  # EOS id 5
    out = train([cfg])
    assert engine_spy.optimizers[0].params[0].shape == (1, 6, 10)  # embedding [run vocab+EOS dim]
    eos = cfg.num_values
    saw_eos = False
    for epoch, responses in enumerate(engine_spy.responses):
        rows = responses[0].tolist()  # [batch trial pos]
        cut = [[truncate(r, eos) for r in group] for group in rows]
        saw_eos |= any(eos in r for group in rows for r in group)
        lengths = [len(r) for group in cut for r in group]
        rewards = [py_inclusion_ordering(p, r) for p, group in zip(LECTURE, cut, strict=True) for r in group]
        assert out.response_length.iloc[epoch] == pytest.approx(sum(lengths) / len(lengths), abs=1e-6)
        assert out.mean_reward.iloc[epoch] == pytest.approx(sum(rewards) / len(rewards), abs=1e-6)
    assert saw_eos and out.response_length.min() < 3


def test_without_eos_response_length_is_the_prompt_length(tiny):
    out = train([RunConfig(**tiny)])
    assert out.response_length.tolist() == [3.0] * tiny["num_epochs"]


def test_length_penalty_subtracts_penalty_times_length():
    # same seed -> same initial policy and same epoch-0 sample; training sees reward - 0.5 * length
    plain, penalised = (
        RunConfig(eos=True, seed=2, num_epochs=1),
        RunConfig(eos=True, seed=2, num_epochs=1, length_penalty=0.5),
    )
    out = train([plain, penalised])
    a, b = out.iloc[0], out.iloc[1]
    assert a.response_length == b.response_length and a.response_length < 3
    assert b.mean_reward == a.mean_reward  # the task's reward: comparable across shaping
    assert b.shaped_reward == pytest.approx(a.mean_reward - 0.5 * a.response_length, abs=1e-6)
    assert a.shaped_reward == a.mean_reward


def test_exact_match_reward_in_training(engine_spy):
    # two-number prompts over {0, 1}, so a random policy sorts some of them by chance
    prompts = [[1, 0], [0, 1], [1, 1]]
    cfg = RunConfig(prompts=prompts, reward="exact_match", seed=1, num_epochs=3, num_steps_per_epoch=2,
                    learning_rate=0.05, deltas_mode="centered_rewards")  # fmt: skip
    out = train([cfg])
    for epoch, responses in enumerate(engine_spy.responses):
        hits = [r == sorted(p) for p, group in zip(prompts, responses[0].tolist(), strict=True) for r in group]
        assert out.mean_reward.iloc[epoch] == pytest.approx(sum(hits) / len(hits), abs=1e-6)
    assert out.mean_reward.min() > 0 and out.mean_reward.max() < 1  # hits and misses: the check is not vacuous


def test_loophole_visible_through_length_and_exact_match(engine_spy):
    # A response that repeats a small number then stops early still earns inclusion_ordering points;
    # response_length and the exact_match reward (same seed -> same epoch-0 sample) expose it.
    scored = RunConfig(eos=True, seed=0, num_epochs=1, num_steps_per_epoch=1)
    exact = RunConfig(eos=True, seed=0, num_epochs=1, num_steps_per_epoch=1, reward="exact_match")
    out = train([scored, exact])
    responses = engine_spy.responses[0]  # one batch: [run=2 batch trial pos]
    assert torch.equal(responses[0], responses[1])
    pairs = [(p, truncate(r, 5)) for p, group in zip(LECTURE, responses[0].tolist(), strict=True) for r in group]
    short = [(p, c) for p, c in pairs if len(c) < 3]
    assert short and max(py_inclusion_ordering(p, c) for p, c in short) > 0  # short responses still score
    a, b = out.iloc[0], out.iloc[1]
    assert a.response_length == b.response_length == pytest.approx(sum(len(c) for _, c in pairs) / 30, abs=1e-6)
    assert a.response_length < 3
    assert b.mean_reward == pytest.approx(sum(c == sorted(p) for p, c in pairs) / 30, abs=1e-6)
    assert not any(c == sorted(p) for p, c in short)


# --- recipes -------------------------------------------------------------------------------------
EXPECTED_RECIPES = {
    "lecture": dict(deltas_mode="rewards", loss_mode="naive", kl_penalty=0.0),
    "grpo": dict(deltas_mode="normalized_rewards", loss_mode="clipped", epsilon=0.2, loss_agg_mode="seq-mean-token-mean",
                 kl_penalty=0.04, kl_estimator="k3", compute_ref_model_period=0),
    "dr_grpo": dict(deltas_mode="centered_rewards", loss_mode="clipped", loss_agg_mode="seq-mean-token-sum-norm",
                    kl_penalty=0.0),
    "dapo": dict(deltas_mode="normalized_rewards", loss_mode="clipped", epsilon=0.2, epsilon_high=0.28,
                 loss_agg_mode="token-mean", filter_zero_std_groups=True, kl_penalty=0.0),
    "gspo": dict(loss_mode="clipped", importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4,
                 loss_agg_mode="seq-mean-token-mean"),
    "rloo": dict(deltas_mode="rloo", loss_mode="clipped"),
    "trl": dict(deltas_mode="normalized_rewards", loss_mode="clipped", epsilon=0.2, epsilon_high=None,
                loss_agg_mode="token-mean", kl_penalty=0.0, use_bias_correction_kl=True, compute_ref_model_period=0),
}  # fmt: skip


def test_every_recipe_is_covered():
    assert set(RECIPES) == set(EXPECTED_RECIPES)


@pytest.mark.parametrize("name", sorted(EXPECTED_RECIPES))
def test_recipe_sets_its_fields(name):
    cfg = make_config(name)
    for field, value in EXPECTED_RECIPES[name].items():
        assert getattr(cfg, field) == value, field
    assert cfg.recipe == name
    assert cfg.num_epochs == 100 and cfg.learning_rate == 1e-3  # untouched fields keep the lecture defaults
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_explicit_options_override_the_recipe():
    cfg = make_config("dapo", epsilon_high=0.3, filter_zero_std_groups=False, num_epochs=7)
    assert (cfg.epsilon_high, cfg.filter_zero_std_groups, cfg.num_epochs) == (0.3, False, 7)
    assert cfg.deltas_mode == "normalized_rewards" and cfg.epsilon == 0.2  # the rest of the recipe stays
    assert make_config(None, seed=3) == RunConfig(seed=3)


def test_unknown_recipe_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        make_config("ppo2")
    assert str(info.value).startswith("recipe:")
    for name in RECIPES:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match=r"unknown field 'epsilom'"):
        make_config("grpo", epsilom=0.1)


def test_recipe_runs_train(tiny):
    configs = [make_config(name, seed=1, **tiny) for name in ("grpo", "dr_grpo", "dapo", "rloo")]
    out = train(configs)
    assert len(out) == 4 * tiny["num_epochs"] and out.mean_reward.notna().all()
    grpo = out[out.recipe == "grpo"]
    assert grpo.kl.notna().all() and not math.isnan(grpo.kl.iloc[-1])
