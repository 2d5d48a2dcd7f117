"""The population trainer (sortrl.engine.train): folded loss vs a direct computation, batch invariance,
determinism, the KL path, and that training learns."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

from sortrl import RunConfig, train
from sortrl.engine.deltas import DELTA_MODES
from sortrl.engine.losses import KL_ESTIMATORS, KL_LOSS_AGG_MODES, LOSS_AGG_MODES, LOSS_MODES, ClipRange
from sortrl.engine.model import forward
from sortrl.engine.task import REWARDS, eos_masks

NAMES = ("embedding", "encode", "decode")


# --- the straightforward computation the engine folds --------------------------------------
def log_softmax_of(params, prompts, cfg: RunConfig):
    """log pi of every (batch, pos, vocab), [run batch pos vocab], of the policy tempered by `cfg.temperature`."""
    return torch.log_softmax(forward(params, prompts) / cfg.temperature, dim=-1)


def gathered_log_probs(params, prompts, responses, cfg: RunConfig):
    """log pi(y) of every sampled token, [run batch trial pos], gathered per response (no folding)."""
    lp = log_softmax_of(params, prompts, cfg)
    lp = lp[:, :, None].expand(-1, -1, responses.shape[2], -1, -1)
    return lp.gather(-1, responses[..., None]).squeeze(-1)


def shaped_rewards(cfg: RunConfig, prompts, responses):
    """Rewards as the formulas define them: reward - length_penalty * length + DAPO's overlong penalty."""
    content, action = eos_masks(responses, cfg.num_values if cfg.eos else None)
    rewards = REWARDS[cfg.reward](prompts, responses, content) - cfg.length_penalty * content.sum(-1)
    if cfg.overlong_buffer_len:
        n, top, buf = action.sum(-1).float(), cfg.response_length, cfg.overlong_buffer_len
        rewards = rewards + (-(n - (top - buf)) / buf * cfg.overlong_penalty_factor).clamp(max=0)
    return rewards, content, action


def direct_loss(cfg: RunConfig, params, old_params, ref_params, responses):
    """One run's loss written per token, as TRL and verl write it: gather log-probs per [run batch trial pos],
    apply the loss per token with that response's advantage, add beta * KL per token (TRL) and aggregate
    both with the loss_agg_mode weights (verl `agg_loss`; the KL with `kl_loss_agg_mode` if set), minus
    entropy_coeff * the entropy aggregated the same way (verl). Log-probs are those of the tempered policy.
    Returns (loss, kl)."""
    prompts = torch.tensor(cfg.prompts)
    lp = gathered_log_probs(params, prompts, responses, cfg)
    with torch.no_grad():
        old = gathered_log_probs(old_params, prompts, responses, cfg)
        ref = gathered_log_probs(ref_params, prompts, responses, cfg) if cfg.kl_penalty else None
    rewards, content, action = shaped_rewards(cfg, prompts, responses)
    zero_std = rewards.max(dim=-1).values == rewards.min(dim=-1).values
    kept = ~(zero_std & cfg.filter_zero_std_groups)
    mask = (action & kept[..., None, None]).float()
    if cfg.kl_penalty and cfg.use_kl_in_reward:  # verl: r -= beta * sum_t k(pi_old, pi_ref)
        rewards = rewards - cfg.kl_penalty * (KL_ESTIMATORS[cfg.kl_estimator](old, ref) * action).sum(-1)
    adv = DELTA_MODES[cfg.deltas_mode](rewards, **direct_extras(cfg, old_params, prompts, responses, mask))
    omega = LOSS_AGG_MODES[cfg.loss_agg_mode](mask, cfg.response_length)
    number = lambda x: torch.tensor([math.inf if x is None else x])  # noqa: E731
    fn = LOSS_MODES[cfg.loss_mode].fn
    if LOSS_MODES[cfg.loss_mode].supervised:  # cross-entropy on sorted(prompt), mean over prompts and positions
        target = prompts.sort(dim=-1).values
        all_lp = log_softmax_of(params, prompts, cfg)[0]
        loss = -all_lp.gather(-1, target[..., None]).mean()
    elif cfg.importance_sampling_level == "token":
        clip = ClipRange(*(number(x).view(-1, 1, 1, 1) for x in (cfg.epsilon, cfg.clip_high, cfg.clip_ratio_c)))
        loss = (omega * fn(lp, old, adv[..., None].expand_as(lp), clip)).sum()
    else:  # GSPO as TRL writes it: the response's length-normalised log-ratio broadcast to its tokens
        clip = ClipRange(*(number(x).view(-1, 1, 1) for x in (cfg.epsilon, cfg.clip_high, cfg.clip_ratio_c)))
        log_s = ((lp - old) * action).sum(-1) / action.sum(-1).clamp(min=1)
        loss = (omega * fn(log_s, torch.zeros_like(log_s), adv, clip)[..., None].expand_as(lp)).sum()
    if cfg.entropy_coeff:
        all_lp = log_softmax_of(params, prompts, cfg)  # [run batch pos vocab]
        entropy = -(all_lp.exp() * all_lp).sum(-1)[:, :, None, :].expand_as(lp)  # each token's position entropy
        loss = loss - cfg.entropy_coeff * (omega * entropy).sum()
    kl = torch.tensor(0.0)
    if cfg.kl_penalty:
        kl_omega = KL_LOSS_AGG_MODES[cfg.kl_loss_agg_mode or cfg.loss_agg_mode](mask, cfg.response_length)
        # in the reward, the KL is the sampling policy's (the `kl` column then reports that); in the loss, the current
        per_token = KL_ESTIMATORS[cfg.kl_estimator](old if cfg.use_kl_in_reward else lp, ref)
        if cfg.use_bias_correction_kl:  # TRL: per_token_kl * coef_1, the ratio of the loss's level
            log_ratio = lp - old
            if cfg.importance_sampling_level == "sequence":  # the response's s, broadcast to its tokens
                log_ratio = ((log_ratio * action).sum(-1) / action.sum(-1).clamp(min=1))[..., None]
            per_token = per_token * torch.exp(log_ratio)
        kl = (kl_omega * per_token).sum()
        if not cfg.use_kl_in_reward:
            loss = loss + cfg.kl_penalty * kl
    return loss, kl


def direct_extras(cfg: RunConfig, old_params, prompts, responses, mask):
    """What the delta modes that need more than the rewards get, computed from their definitions."""
    with torch.no_grad():
        logits = forward(old_params, prompts) / cfg.temperature
    if cfg.deltas_mode == "remax":  # the greedy response's shaped reward
        greedy = logits.argmax(-1)[:, :, None, :]
        return {"greedy_rewards": shaped_rewards(cfg, prompts, greedy)[0]}
    if cfg.deltas_mode == "optimal_baseline":  # |onehot(y) - pi|^2 summed over action positions
        probs = torch.softmax(logits, -1)[:, :, None].expand(-1, -1, responses.shape[2], -1, -1)
        diff = torch.nn.functional.one_hot(responses, probs.shape[-1]).float() - probs
        action = eos_masks(responses, cfg.num_values if cfg.eos else None)[1]
        return {"grad_sq_norms": ((diff**2).sum(-1) * action).sum(-1)}
    if cfg.deltas_mode == "reinforce_plus_plus":
        return {"action_counts": mask.sum(-1)}
    return {}


def check_against_direct(configs, spy, rtol=2e-5):
    """Train `configs` as one batch; for every run and inner step compare the engine's gradient
    with the direct per-token gradient at the same parameters. Returns the engine's table."""
    out = train(configs)
    steps = configs[0].num_steps_per_epoch
    assert len(spy.steps) == configs[0].num_epochs * steps
    for r, cfg in enumerate(configs):
        run = lambda d, r=r: {k: v[r : r + 1] for k, v in d.items()}  # noqa: E731
        losses, kls, moving = [], [], 0
        for i, (params, grads) in enumerate(spy.steps):
            epoch = i // steps
            old = run(spy.steps[epoch * steps][0])
            period = cfg.compute_ref_model_period
            ref_epoch = 0 if period == 0 else (epoch // period) * period
            ref = run(spy.steps[ref_epoch * steps][0])
            leaves = {k: v.clone().requires_grad_() for k, v in run(params).items()}
            loss, kl = direct_loss(cfg, leaves, old, ref, spy.responses[epoch][r : r + 1])
            expected = torch.autograd.grad(loss, [leaves[k] for k in NAMES])
            for name, g in zip(NAMES, expected, strict=True):
                scale = g.abs().max().item()
                moving += scale > 0
                # A zero direct gradient (all clipped / filtered) must be ~0 too, to float32's resolution: terms of
                # order 1 are summed, so an entry can be a few 1e-8 off zero by rounding alone, and where depends on
                # the CPU's kernels (seen: 2.2e-8 on an AVX-512 Xeon, within 2e-8 on an AVX2 EPYC).
                atol = max(rtol * scale, 2 * torch.finfo(torch.float32).eps)
                torch.testing.assert_close(grads[name][r : r + 1], g, rtol=0, atol=atol, msg=f"run {r} step {i}")
            losses.append(loss.item())
            kls.append(kl.item())
        assert moving > 0, f"run {r}: every direct gradient was zero, the comparison would be vacuous"
        rows = out[out.run_id == cfg.run_id].sort_values("epoch")
        per_epoch = torch.tensor(losses).view(-1, steps).mean(dim=1)
        torch.testing.assert_close(torch.tensor(rows["loss"].to_numpy()).float(), per_epoch, rtol=1e-5, atol=1e-6)
        if cfg.kl_penalty:
            per_epoch_kl = torch.tensor(kls).view(-1, steps).mean(dim=1)
            torch.testing.assert_close(torch.tensor(rows["kl"].to_numpy()).float(), per_epoch_kl, rtol=1e-4, atol=1e-7)
    return out


FAST = dict(num_epochs=2, num_steps_per_epoch=3, learning_rate=0.05, seed=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kl_penalty=0.3, compute_ref_model_period=1),
        dict(loss_mode="unclipped", loss_agg_mode="seq-mean-token-sum", kl_penalty=0.2, kl_estimator="k1"),
        dict(
            loss_mode="clipped",
            deltas_mode="normalized_rewards",
            epsilon=0.1,
            epsilon_high=0.15,
            clip_ratio_c=1.5,
            eos=True,
            length_penalty=0.1,
            filter_zero_std_groups=True,
        ),
        dict(
            loss_mode="clipped",
            deltas_mode="rloo",
            loss_agg_mode="seq-mean-token-mean",
            kl_penalty=0.5,
            kl_estimator="k2",
        ),
        dict(loss_mode="clipped", deltas_mode="batch_normalized", loss_agg_mode="seq-mean-token-sum-norm", eos=True),
        dict(loss_mode="clipped", importance_sampling_level="sequence", loss_agg_mode="seq-mean-token-mean", eos=True),
        dict(loss_mode="unclipped", importance_sampling_level="sequence", deltas_mode="centered_rewards"),
        dict(loss_mode="clipped", reward="distance", num_responses=3, filter_zero_std_groups=True),
        dict(deltas_mode="max_rewards", reward="distance", loss_agg_mode="seq-mean-token-mean", eos=True),
        # issue 10: exploration variants, each against the per-token formula of its source
        dict(loss_mode="clipped", deltas_mode="centered_rewards", entropy_coeff=0.2),
        dict(entropy_coeff=0.5, loss_agg_mode="seq-mean-token-mean", eos=True, deltas_mode="centered_rewards"),
        dict(temperature=1.7, loss_mode="clipped", kl_penalty=0.3, compute_ref_model_period=1),
        dict(temperature=0.6, entropy_coeff=0.1, deltas_mode="normalized_rewards"),
        dict(kl_penalty=0.3, kl_loss_agg_mode="lecture", loss_agg_mode="seq-mean-token-mean", eos=True),
        dict(
            kl_penalty=0.4,
            kl_estimator="k1",
            loss_agg_mode="seq-mean-token-sum-norm",
            filter_zero_std_groups=True,
            reward="distance",
            num_responses=3,
            deltas_mode="centered_rewards",
        ),  # fmt: skip
        dict(
            kl_penalty=0.5,
            use_kl_in_reward=True,
            compute_ref_model_period=0,
            deltas_mode="centered_rewards",
            num_epochs=3,
        ),  # fmt: skip
        dict(
            kl_penalty=0.3, use_bias_correction_kl=True, loss_mode="clipped", compute_ref_model_period=0, num_epochs=3
        ),
        dict(
            kl_penalty=0.3,
            use_bias_correction_kl=True,
            loss_mode="clipped",
            importance_sampling_level="sequence",
            epsilon=0.05,
            eos=True,
            compute_ref_model_period=0,
            num_epochs=3,
        ),  # fmt: skip
        dict(loss_mode="sft"),
        dict(loss_mode="sft", entropy_coeff=0.1),
        dict(deltas_mode="remax", loss_mode="clipped", eos=True),
        dict(deltas_mode="optimal_baseline", eos=True, loss_agg_mode="seq-mean-token-mean"),
        dict(deltas_mode="reinforce_plus_plus", eos=True, filter_zero_std_groups=True, reward="distance"),
        dict(eos=True, overlong_buffer_len=2, overlong_penalty_factor=0.5, deltas_mode="centered_rewards"),
        dict(
            loss_mode="clipped",
            filter_zero_std_groups=True,
            max_num_gen_batches=4,
            reward="distance",
            num_responses=3,
            deltas_mode="normalized_rewards",
        ),  # fmt: skip
    ],
    ids=[
        "naive-kl",
        "unclipped-k1",
        "clipped-dapo-eos",
        "rloo-k2",
        "batchnorm-sumnorm",
        "gspo",
        "gspo-unclipped",
        "distance-filter-raw-rewards",
        "max-distance-eos",
        "entropy",
        "entropy-seqmean-eos",
        "temperature-kl",
        "cold-temperature-entropy",
        "kl-lecture-agg",
        "kl-follows-sumnorm-filtered",
        "kl-in-reward",
        "kl-bias-correction",
        "kl-bias-correction-sequence",
        "sft",
        "sft-entropy",
        "remax",
        "optimal-baseline",
        "reinforce-plus-plus",
        "overlong",
        "dapo-resampling",
    ],
)
def test_folded_engine_gradient_equals_direct_per_token_computation(kwargs, engine_spy):
    cfg = RunConfig(**{**FAST, **kwargs})
    out = check_against_direct([cfg], engine_spy)
    if cfg.loss_mode == "clipped" and cfg.importance_sampling_level == "token":
        assert out["clip_ratio"].max() > 0, "the case should exercise the clipped branch"
    if cfg.filter_zero_std_groups:
        assert out["frac_reward_zero_std"].max() > 0, "the case should filter some prompt"
    if cfg.max_num_gen_batches > 1:
        assert out["num_gen_batches"].max() > 1, "the case should re-sample some group"
    if cfg.use_kl_in_reward:
        assert out["kl"].iloc[1:].gt(0).all(), "the case should move the rewards by a KL"
    if cfg.overlong_buffer_len:
        assert out["response_length"].max() > cfg.response_length - cfg.overlong_buffer_len - 1


def test_folded_gradient_in_a_mixed_batch(engine_spy):
    # runs that share BATCH_KEY but differ in every per-run choice, each checked against its own direct loss
    base = RunConfig(loss_mode="clipped", **FAST)
    configs = [
        dataclasses.replace(base, seed=5, deltas_mode="centered_rewards", kl_penalty=0.1),
        dataclasses.replace(base, seed=6, loss_agg_mode="seq-mean-token-sum", epsilon=0.05, clip_ratio_c=2.0),
        dataclasses.replace(
            base, seed=7, deltas_mode="normalized_rewards", epsilon_high=0.4, filter_zero_std_groups=True
        ),
        dataclasses.replace(base, seed=8, reward="distance", length_penalty=0.2, learning_rate=0.01),
    ]
    check_against_direct(configs, engine_spy)


def test_dual_clip_binds_in_the_engine(engine_spy):
    # clip_ratio_c = 1.3 with a large step: some negative-advantage token's ratio passes 1.3, where the
    # dual bound -A*c replaces the PPO loss; the engine must follow the direct computation there too
    cfg = RunConfig(**{**FAST, "loss_mode": "clipped", "clip_ratio_c": 1.3, "deltas_mode": "centered_rewards"})
    check_against_direct([cfg], engine_spy)
    without = dataclasses.replace(cfg, clip_ratio_c=None)
    steps, bound = cfg.num_steps_per_epoch, 0
    for i, (params, _) in enumerate(engine_spy.steps):
        old, responses = engine_spy.steps[i // steps * steps][0], engine_spy.responses[i // steps]
        grads = []
        for c in (cfg, without):
            leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
            grads.append(torch.autograd.grad(direct_loss(c, leaves, old, old, responses)[0], list(leaves.values())))
        bound += any(not torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(*grads, strict=True))
    assert bound > 0, "the dual bound never mattered: the check would be vacuous"


def test_sample_metrics_by_hand(engine_spy):
    # TRL meanings, recomputed in plain Python from the sampled responses and the recorded parameters
    # two-number prompts over {0, 1}: the argmax policy sorts some of them, so greedy_accuracy is informative
    cfg = RunConfig(
        prompts=((1, 0), (0, 1), (1, 1)),
        seed=4,
        num_epochs=3,
        num_steps_per_epoch=2,
        learning_rate=0.05,
        num_responses=4,
    )
    out = train([cfg])
    prompts, steps = cfg.prompts, cfg.num_steps_per_epoch
    final = dict(zip(NAMES, (p.detach() for p in engine_spy.optimizers[0].params), strict=True))
    for epoch, responses in enumerate(engine_spy.responses):
        groups = [
            [sum(x in r for x in p) + sum(a <= b for a, b in zip(r, r[1:])) for r in group]
            for p, group in zip(prompts, responses[0].tolist(), strict=True)
        ]
        flat = [x for g in groups for x in g]
        std = [math.sqrt(sum((x - sum(g) / 4) ** 2 for x in g) / 3) for g in groups]  # unbiased, G = 4
        row = out.iloc[epoch]
        assert row.mean_reward == pytest.approx(sum(flat) / len(flat), abs=1e-6)
        assert row.reward_std == pytest.approx(sum(std) / 3, abs=1e-6)
        assert row.frac_reward_zero_std == pytest.approx(sum(len(set(g)) == 1 for g in groups) / 3, abs=1e-7)
        before = engine_spy.steps[epoch * steps][0]
        probs = torch.softmax(forward(before, torch.tensor(prompts)), dim=-1)[0]  # [batch pos vocab]
        entropy = -(probs * probs.log()).sum(-1).mean().item()  # mean over prompts and positions, nats
        assert row.entropy == pytest.approx(entropy, rel=1e-5)
        after = engine_spy.steps[(epoch + 1) * steps][0] if epoch + 1 < cfg.num_epochs else final
        greedy = forward(after, torch.tensor(prompts))[0].argmax(-1).tolist()
        assert row.greedy_accuracy == pytest.approx(
            sum(g == sorted(p) for g, p in zip(greedy, prompts, strict=True)) / 3, abs=1e-7
        )
    assert out.reward_std.gt(0).all() and out.entropy.gt(0).all()
    assert out.greedy_accuracy.gt(0).any() and out.frac_reward_zero_std.gt(0).any()


# --- KL -------------------------------------------------------------------------------
def test_kl_path_runs_and_reports_kl(tiny):
    on, off = RunConfig(kl_penalty=0.5, **tiny), RunConfig(seed=1, **tiny)
    out = train([on, off])
    with_kl, without = out[out.run_id == on.run_id], out[out.run_id == off.run_id]
    assert len(with_kl) == tiny["num_epochs"] and len(without) == tiny["num_epochs"]
    assert with_kl["kl"].notna().all() and (with_kl["kl"] >= 0).all()  # k3 >= 0
    assert with_kl["kl"].iloc[1:].gt(0).all()  # the policy moved away from the epoch-0 reference
    assert without["kl"].isna().all()
    assert with_kl["loss"].notna().all()


# --- population properties ------------------------------------------------------------------
def _mates(n: int, **common) -> list[RunConfig]:
    modes = ["rewards", "centered_rewards", "normalized_rewards", "max_rewards", "rloo", "batch_normalized"]
    kls = [0.0, 0.1, 0.5]
    return [RunConfig(seed=100 + i, deltas_mode=modes[i % 6], kl_penalty=kls[i % 3], **common) for i in range(n)]


def test_forward_does_not_depend_on_batch_position():
    """A run at batch index 1 gets the same bits as the same run alone.

    Seen failing with torch 2.13 + MKL on AVX-512 CPUs unless MKL_CBWR (conditional numerical reproducibility)
    is set before the first BLAS call (sortrl/__init__.py sets it): bmm results then depend on each batch
    entry's memory alignment.
    """
    from sortrl.engine.model import init_params

    prompts = torch.tensor(RunConfig().prompts)
    pair = init_params([torch.Generator().manual_seed(s) for s in (100, 3)], 5, 10, 3, 3)
    alone = init_params([torch.Generator().manual_seed(3)], 5, 10, 3, 3)
    with torch.no_grad():
        assert torch.equal(forward(pair, prompts)[1], forward(alone, prompts)[0])


BATCH_CASES = [
    dict(num_epochs=8, num_steps_per_epoch=3),
    dict(num_epochs=6, num_steps_per_epoch=3, loss_mode="clipped", learning_rate=0.02, eos=True),
]


def _seed3_alone_and_in_64(common):
    """Seed 3 (two variants) alone, and at batch positions 21 (odd) and 42 (even) among 62 mixed mates."""
    targets = [
        RunConfig(seed=3, **common),
        RunConfig(seed=3, kl_penalty=0.1, deltas_mode="centered_rewards", epsilon=0.1, **common),
    ]
    mates = _mates(62, **common)
    together = train(mates[:21] + [targets[0]] + mates[21:41] + [targets[1]] + mates[41:])
    assert len(together) == 64 * common["num_epochs"]
    assert list(dict.fromkeys(together.run_id)).index(targets[0].run_id) == 21
    for target in targets:
        inside = together[together.run_id == target.run_id].reset_index(drop=True)
        yield train([target]), inside


@pytest.mark.parametrize("common", BATCH_CASES, ids=["naive", "clipped-eos"])
def test_batch_invariance_exact(common):
    for alone, inside in _seed3_alone_and_in_64(common):
        pd.testing.assert_frame_equal(alone, inside, check_exact=True)


@pytest.mark.parametrize("common", BATCH_CASES, ids=["naive", "clipped-eos"])
def test_batch_invariance_to_rounding(common):
    # platform-independent part: no run's numbers leak into another's (gross mixing would move these by >> 1e-4)
    for alone, inside in _seed3_alone_and_in_64(common):
        pd.testing.assert_frame_equal(alone, inside, check_exact=False, rtol=1e-4, atol=1e-5)


def test_diverged_run_is_dropped_and_the_others_go_on_unchanged():
    # lr 1e6 with the lecture's k2 KL (summed over positions) overflows within the first epoch; the run at
    # batch index 0 must be untouched
    common = dict(num_epochs=5, num_steps_per_epoch=3, kl_penalty=1.0, kl_estimator="k2", kl_loss_agg_mode="lecture")
    good, bad = RunConfig(seed=3, **common), RunConfig(seed=0, learning_rate=1e6, **common)
    together = train([good, bad])
    lost = together[together.run_id == bad.run_id]
    assert lost.status.tolist() == ["diverged"] and lost.diverged_epoch.tolist() == [0]
    kept = together[together.run_id == good.run_id].reset_index(drop=True)
    assert (kept.status == "ok").all() and (kept.diverged_epoch == -1).all()
    pd.testing.assert_frame_equal(train([good]), kept, check_exact=True)


def test_mixed_rewards_in_one_batch_score_each_run_against_its_prompts():
    common = dict(num_epochs=3, num_steps_per_epoch=2)
    configs = [RunConfig(seed=s, reward=r, **common) for s, r in ((1, "inclusion_ordering"), (2, "distance"))]
    configs.append(RunConfig(seed=4, reward="exact_match", **common))  # 3 runs = 3 prompts
    together = train(configs)
    for cfg in configs:
        inside = together[together.run_id == cfg.run_id].mean_reward.to_numpy()
        alone = train([cfg]).mean_reward.to_numpy()
        assert abs(inside - alone).max() < 1e-4, cfg.reward


def test_determinism_same_configs_same_table(tiny):
    configs = _mates(6, **tiny) + [RunConfig(loss_mode="clipped", seed=9, **tiny)]
    first, second = train(configs), train(configs)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    assert first.mean_reward.notna().all()


def test_table_has_one_row_per_run_and_epoch_in_input_order(tiny):
    configs = [RunConfig(seed=s, **tiny) for s in (4, 1, 3)] + [RunConfig(loss_mode="clipped", seed=2, **tiny)]
    out = train(configs)
    assert list(dict.fromkeys(out.run_id)) == [c.run_id for c in configs]
    assert out.groupby("run_id").epoch.apply(list).to_dict() == {c.run_id: list(range(6)) for c in configs}
    assert (out.step == out.epoch * tiny["num_steps_per_epoch"]).all()
    assert (out.status == "ok").all()


def test_centered_rewards_learns_over_eight_seeds():
    # the lecture's settings (100 epochs x 10 steps, lr 1e-3) with centered rewards
    out = train([RunConfig(seed=s, deltas_mode="centered_rewards") for s in range(8)])
    by_epoch = out.groupby("epoch").mean_reward.mean()
    assert len(by_epoch) == 100
    assert by_epoch.iloc[-1] - by_epoch.iloc[0] >= 0.5, (by_epoch.iloc[0], by_epoch.iloc[-1])


def test_batch_invariance_does_not_depend_on_the_callers_thread_count():
    """`train` pins one intra-op thread: with two, MKL would split a run's matmuls by batch size."""
    common = dict(num_epochs=4, num_steps_per_epoch=3)
    target = RunConfig(seed=3, deltas_mode="centered_rewards", **common)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone = train([target])
        mates = _mates(63, **common)
        inside = train(mates[:21] + [target] + mates[21:])
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    inside = inside[inside.run_id == target.run_id].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, inside, check_exact=True)


def test_with_config_false_leaves_out_only_the_config_columns():
    from sortrl.engine.config import FIELD_NAMES

    configs = [RunConfig(num_epochs=3, num_steps_per_epoch=2, seed=s) for s in range(2)]
    wide, narrow = train(configs), train(configs, with_config=False)
    assert not set(FIELD_NAMES) & set(narrow.columns)
    assert narrow.equals(wide[list(narrow.columns)])


@pytest.mark.parametrize("model", ["linear", "transformer"])
def test_train_with_greedy_returns_trains_table_and_the_final_argmax_responses(model):
    """The table is `train`'s bit for bit; the responses are the policy the last row's `greedy_accuracy` measured
    (an sft run sorts every prompt, so its responses are sorted(prompt)); a diverged run's are all PAD."""
    from sortrl.engine.task import PAD, TASKS
    from sortrl.engine.train import train_with_greedy

    common = dict(model=model, num_epochs=6, num_steps_per_epoch=3)
    sft = dict(model=model, num_epochs=30, loss_mode="sft", learning_rate=1e-2)
    diverging = dict(**common, learning_rate=1e6, kl_penalty=1.0, kl_estimator="k2", kl_loss_agg_mode="lecture")
    configs = [RunConfig(seed=s, **common) for s in range(3)] + [RunConfig(seed=0, **diverging)]
    configs += [RunConfig(seed=5, **sft)]
    table, responses = train_with_greedy(configs)
    pd.testing.assert_frame_equal(table, train(configs), check_exact=True)
    prompts = TASKS[configs[0].task](configs[0]).train  # [batch pos]
    assert [tuple(r.shape) for r in responses] == [tuple(prompts.shape)] * len(configs)
    last = table[table.epoch == table.groupby("run_id").epoch.transform("max")].set_index("run_id")
    for cfg, got in zip(configs, responses, strict=True):
        if last.loc[cfg.run_id, "status"] == "diverged":
            assert (got == PAD).all()
            continue
        exact = (got == prompts.sort(dim=-1).values).all(dim=-1).float().mean().item()
        assert exact == pytest.approx(last.loc[cfg.run_id, "greedy_accuracy"])
    assert last.loc[configs[3].run_id, "status"] == "diverged"
    assert last.loc[configs[-1].run_id, "solve_rate"] == 1 and torch.equal(responses[-1], prompts.sort(dim=-1).values)
