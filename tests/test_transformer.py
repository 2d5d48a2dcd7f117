"""The `transformer` model family (issue 25): its logits against a plain implementation, the log-prob gradient of a
2-token case by hand, autoregressive sampling from each run's own generator, batch invariance of the engine's second
path, that it learns, and the variants it refuses (one line each)."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest
import torch

from sortrl import RunConfig, train
from sortrl.engine import autoregressive, transformer
from sortrl.engine.losses import LOSS_MODES, ClipRange
from sortrl.engine.objective import Policy
from sortrl.engine.optim import ALIGN, RunFusedAdam
from sortrl.engine.registry import ConfigError
from sortrl.engine.rollout import Rollout, invert, sample, uniforms

TF = dict(model="transformer")


def params_of(cfg: RunConfig, seeds: list[int]) -> dict[str, torch.Tensor]:
    return transformer.init([torch.Generator().manual_seed(s) for s in seeds], [cfg] * len(seeds))


# --- the model --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        dict(),
        dict(n_layers=2, n_heads=4, d_model=8, eos=True),
        dict(prompts=((1, 0, 1, 0),), num_responses=9),  # a binary vocabulary: depths 1-3 fold to 2, 4, 8 prefixes
        dict(task="random", prompt_length=(2, 4), num_prompts=6, n_layers=2),  # padded prompts
    ],
    ids=["default", "two-layers-eos", "binary", "padded"],
)
@pytest.mark.parametrize("distinct", [None, 1, 3], ids=["random", "one-response", "three-responses"])
def test_teacher_forced_logits_equal_the_plain_computation(fields, distinct):
    """The folded pass (each distinct prefix once, runs grouped by row count) equals every position of
    [prompt SEP response] per response; with random responses, a group's G responses all one (the fold's best
    case), or each run with its own number of distinct responses (several groups in one batch)."""
    cfg = RunConfig(**TF, **fields)
    from sortrl.engine.task import TASKS

    prompts = TASKS[cfg.task](cfg).train
    runs = 4
    p = params_of(cfg, list(range(runs)))
    g = torch.Generator().manual_seed(5)
    trials = cfg.num_responses if not fields or "num_responses" in fields else 4
    responses = torch.randint(cfg.num_tokens, (runs, len(prompts), trials, cfg.response_length), generator=g)
    if distinct is not None:  # run r draws from min(distinct + r, trials) responses per prompt
        pick = torch.stack([torch.arange(trials) % min(distinct + r, trials) for r in range(runs)])
        responses = torch.stack([responses[r][:, pick[r]] for r in range(runs)])
    with torch.no_grad():
        fast = transformer.logits(p, cfg, prompts, responses)
        plain = transformer.full_logits(p, cfg, prompts, responses)
    assert fast.shape == (runs, len(prompts), trials, cfg.response_length, cfg.num_tokens)
    assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-5)


def test_the_fold_keeps_each_distinct_prefix_once_and_sizes_a_run_by_its_own_responses():
    """Three responses of 3 tokens, (0 1 x), (0 1 y), (2 0 z): prefixes SEP, 0, 2, 01, 20 (5 rows, SEP first, codes
    in order). A run's row count is its own prompts' widest (padded per `fold_size`), whatever its batch-mates."""
    responses = torch.tensor([[0, 1, 4], [0, 1, 3], [2, 0, 0]])[None, None]  # [run batch trial pos]
    folded = transformer.fold(responses, 5)
    # codes: SEP 0; depth 1: 1 + y1 (0 -> 1, 2 -> 3); depth 2: 6 + 5 y1 + y2 (01 -> 7, 20 -> 16)
    assert folded.code.tolist() == [[[0, 1, 3, 7, 16, -1, -1]]]  # padding rows: code -1
    assert folded.node_of.tolist() == [[[[0, 1, 3], [0, 1, 3], [0, 2, 4]]]]
    assert folded.size.tolist() == [7]  # 5 rows padded to 7: sizes 3 (one response), 4 (half of 7), 7 (the most)
    same = responses[:, :, :1].expand(-1, -1, 3, -1)  # one response three times: 3 rows (SEP, 0, 01)
    together = transformer.fold(torch.cat([same, responses, same]), 5)
    assert together.size.tolist() == [3, 7, 3]
    assert transformer.fold_size(torch.tensor([3, 4, 8, 9, 16, 1]), 3, 16).tolist() == [3, 8, 8, 16, 16, 3]


def test_a_runs_logits_and_gradient_do_not_depend_on_its_batch_mates_rows():
    """Run 0 alone (one group) and beside mates that need more rows (three groups: split, computed, merged back):
    the same logits and the same gradient, bit for bit (the sign of a zero included)."""
    cfg = RunConfig(**TF)
    prompts = torch.tensor(cfg.prompts)
    p = params_of(cfg, [0, 1, 2])
    g = torch.Generator().manual_seed(1)
    responses = torch.randint(cfg.num_tokens, (3, 3, cfg.num_responses, cfg.response_length), generator=g)
    responses[0] = responses[0, :, :1]  # run 0: one response per prompt (3 rows); runs 1, 2: more
    responses[1, :, 2:] = responses[1, :, :1]  # run 1: at most two responses per prompt (8 rows, half of 16)
    assert len(transformer.fold(responses, cfg.num_tokens).size.unique()) == 3

    def logits_and_grads(params, resp):
        out = transformer.logits(params, cfg, prompts, resp)
        weights = torch.linspace(-1, 1, out[0].numel()).view_as(out[0])
        return out[0].detach(), torch.autograd.grad((out[0] * weights).sum(), list(params.values()))

    alone = logits_and_grads({k: v[:1].detach().clone().requires_grad_() for k, v in p.items()}, responses[:1])
    mixed = logits_and_grads(p, responses)
    assert torch.equal(alone[0].view(torch.int32), mixed[0].view(torch.int32))
    for name, a, m in zip(p, alone[1], mixed[1], strict=True):
        assert torch.equal(a[0].view(torch.int32), m[0].view(torch.int32)), name
        assert not m[1:].any(), name  # the mates' rows get nothing from run 0's logits


def test_runs_in_layout_order_give_the_same_logits_and_gradients_as_scattered():
    """`order` puts runs of one row count next to each other; `logits` then takes each group as a view of the
    parameters (`_in_order`) instead of a copy. The logits and gradients are the scattered batch's, permuted, bit for
    bit."""
    cfg = RunConfig(**TF)
    prompts = torch.tensor(cfg.prompts)
    p = params_of(cfg, list(range(6)))
    g = torch.Generator().manual_seed(2)
    responses = torch.randint(cfg.num_tokens, (6, 3, cfg.num_responses, cfg.response_length), generator=g)
    responses[::2] = responses[::2, :, :1]  # runs 0, 2, 4: one response per prompt (3 rows); 1, 3, 5: 16 rows
    index = transformer.order(cfg, responses)
    assert index.tolist() == [0, 2, 4, 1, 3, 5]

    def logits_and_grads(params, resp, weights):
        out = transformer.logits(params, cfg, prompts, resp)
        return out.detach(), torch.autograd.grad((out * weights).sum(), list(params.values()))

    weights = torch.linspace(-1, 1, 6 * 3 * cfg.num_responses * cfg.response_length * cfg.num_tokens)
    weights = weights.view(6, 3, cfg.num_responses, cfg.response_length, cfg.num_tokens)
    scattered = logits_and_grads(p, responses, weights)
    ordered_p = {k: v.detach()[index].requires_grad_() for k, v in p.items()}
    layout = transformer._layout(cfg, prompts, prompts[None].expand(6, -1, -1), responses[index])
    groups = [group.runs for group in layout]
    assert transformer._in_order(groups) and not transformer._in_order([gr.flip(0) for gr in groups])
    ordered = logits_and_grads(ordered_p, responses[index], weights[index])
    assert torch.equal(scattered[0][index].view(torch.int32), ordered[0].view(torch.int32))
    for name, a, b in zip(p, scattered[1], ordered[1], strict=True):
        assert torch.equal(a[index].view(torch.int32), b.view(torch.int32)), name


def test_the_engine_reordering_its_runs_changes_no_number(monkeypatch):
    """Before an epoch's inner steps the engine reorders its batch by the family's `order` (speed only): the table
    is the one trained without reordering, bit for bit, with KL, entropy, temperature, per-run learning rates and
    DAPO re-sampling in the batch."""
    from sortrl.engine import models

    common = {**TF, "num_epochs": 4, "num_steps_per_epoch": 2, "loss_mode": "clipped"}
    configs = [
        RunConfig(
            seed=s,
            kl_penalty=(0, 0.1)[s % 2],
            entropy_coeff=0.05 * (s % 3),
            temperature=(1, 1.5)[s % 2],
            learning_rate=(0.01, 0.02, 0.005)[s % 3],
            filter_zero_std_groups=s % 4 == 0,
            max_num_gen_batches=2,
            **common,
        )  # fmt: skip
        for s in range(8)
    ]
    calls = []
    real = models.MODELS["transformer"].order
    monkeypatch.setitem(models.MODELS, "transformer", models.MODELS["transformer"]._replace(
        order=lambda cfg, responses: calls.append(1) or real(cfg, responses)[torch.randperm(len(responses))]
    ))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reordered = train(configs)
        assert len(calls) == common["num_epochs"]
        monkeypatch.setitem(models.MODELS, "transformer", models.MODELS["transformer"]._replace(order=None))
        plain = train(configs)
    pd.testing.assert_frame_equal(plain, reordered, check_exact=True)


def test_the_layout_is_reused_only_for_the_same_unchanged_responses():
    """The inner steps reuse the fold of the same responses tensor; a response changed in place is folded again."""
    cfg = RunConfig(**TF)
    prompts = torch.tensor(cfg.prompts)
    p = params_of(cfg, [0, 1])
    responses = torch.zeros(2, 3, cfg.num_responses, cfg.response_length, dtype=torch.long)
    with torch.no_grad():
        transformer.logits(p, cfg, prompts, responses)
        responses[:, :, 0] = torch.tensor([3, 1, 2])  # in place: a new prefix to fold
        fast = transformer.logits(p, cfg, prompts, responses)
        plain = transformer.full_logits(p, cfg, prompts, responses)
    assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-5)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _norm(v, w, b):
    mu = v.mean()
    return (v - mu) / torch.sqrt(((v - mu) ** 2).mean() + 1e-5) * w + b


def tiny_log_prob(p, r: int, cfg: RunConfig, prompt: list[int], response: list[int]):
    """log pi(response | prompt) of run r written plainly (one sequence; loops over positions, heads and tokens),
    and the final features h_t each response token is read from. Independent of sortrl.engine.transformer."""
    d, heads = cfg.d_model, cfg.n_heads
    e = d // heads
    seq = prompt + [cfg.num_tokens] + response[:-1]  # prompt, SEP, the response but its last token
    xs = [p["wte"][r, tok] + p["wpe"][r, i] for i, tok in enumerate(seq)]
    for layer in range(cfg.n_layers):
        pre = f"h{layer}."
        qkv = [_norm(x, p[pre + "ln1_w"][r], p[pre + "ln1_b"][r]) @ p[pre + "qkv"][r] for x in xs]
        new = []
        for i, x in enumerate(xs):
            outs = []
            for k in range(heads):
                q = qkv[i][k * e : (k + 1) * e]
                scores = torch.stack([q @ qkv[j][d + k * e : d + (k + 1) * e] for j in range(i + 1)]) / math.sqrt(e)
                weights = torch.softmax(scores, dim=0)
                outs.append(sum(weights[j] * qkv[j][2 * d + k * e : 2 * d + (k + 1) * e] for j in range(i + 1)))
            x = x + torch.cat(outs) @ p[pre + "proj"][r]
            hidden = _norm(x, p[pre + "ln2_w"][r], p[pre + "ln2_b"][r]) @ p[pre + "fc"][r]
            new.append(x + _gelu(hidden) @ p[pre + "fc2"][r])
        xs = new
    total, features = 0.0, []
    for t, y in enumerate(response):
        h = _norm(xs[len(prompt) + t], p["lnf_w"][r], p["lnf_b"][r])
        features.append(h)
        total = total + torch.log_softmax(h @ p["head"][r], dim=0)[y]
    return total, features


def test_log_prob_gradient_of_a_two_token_case_by_hand():
    """Prompt (1, 0), vocab {0, 1}: the response (y1, y2) = (0, 1) has log pi = log pi(y1 | x) + log pi(y2 | x, y1).

    Its gradient, by hand for the output layer (d log softmax(W^T h)[y] / dW = h (e_y - pi)^T, summed over the two
    tokens), and for every parameter against the plain implementation above; and the engine's naive loss on the
    autoregressive layout (every response its own row, `Policy`) gives -A * omega * that gradient.
    """
    cfg = RunConfig(**TF, prompts=((1, 0),), n_heads=2, d_model=8, init_scale=1.0)
    assert cfg.num_tokens == 2 and cfg.response_length == 2
    p = params_of(cfg, [11, 12])  # run 1 is the one we check; run 0 must not leak into it
    prompt, response = [1, 0], [0, 1]
    responses = torch.tensor(response).expand(2, 1, 1, 2)  # [run batch trial pos]

    lp = torch.log_softmax(transformer.logits(p, cfg, torch.tensor([prompt]), responses), dim=-1)
    engine = lp[1, 0, 0, 0, 0] + lp[1, 0, 0, 1, 1]
    grads = torch.autograd.grad(engine, list(p.values()), retain_graph=True)

    plain, features = tiny_log_prob(p, 1, cfg, prompt, response)
    assert torch.allclose(engine, plain, atol=1e-5)
    expected = torch.autograd.grad(plain, list(p.values()))
    for name, got, want in zip(p, grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5), name
        assert not got[0].any(), f"{name}: run 0 got a gradient from run 1's log-prob"

    with torch.no_grad():  # the output layer by hand: sum_t h_t (e_{y_t} - pi_t)^T
        by_hand = torch.zeros(cfg.d_model, cfg.num_tokens)
        for h, y in zip(features, response, strict=True):
            pi = torch.softmax(h @ p["head"][1], dim=0)
            by_hand += torch.outer(h, torch.nn.functional.one_hot(torch.tensor(y), 2).float() - pi)
    assert torch.allclose(grads[list(p).index("head")][1], by_hand, atol=1e-5)

    # the engine's objective on the autoregressive layout: loss = -A * sum_t omega_t log pi(y_t | prefix)
    advantage, omega = 1.5, 0.5  # token-mean over the response's 2 tokens
    ones = torch.ones(2, 1, 1, 2, dtype=torch.bool)
    roll = Rollout(responses, ones, ones, torch.full((2, 1, 1), 2.0), torch.zeros(2, 1, 1), torch.zeros(2, 1, 1))
    rows = Rollout(*map(autoregressive._rows, roll))
    deltas = torch.full((2, 1, 1), advantage)
    weights = torch.full((2, 1, 1, 2), omega)
    old = lp.detach().flatten(1, 2)
    policy = Policy(LOSS_MODES["naive"], False, rows, deltas, weights, ones.float(), old)
    inf = torch.tensor([math.inf, math.inf]).view(-1, 1, 1, 1)
    loss, _ = policy.loss(lp.flatten(1, 2), ClipRange(inf, inf, inf))
    loss_grads = torch.autograd.grad(loss[1], list(p.values()))
    for name, got, want in zip(p, loss_grads, expected, strict=True):
        assert torch.allclose(got, -advantage * omega * want, atol=1e-5), name


def test_each_token_is_conditioned_on_the_tokens_before_it():
    """Greedy decoding token by token equals the argmax of the teacher-forced logits on its own output, and the
    logits of token 2 change with token 1 (a prompt-only policy's would not)."""
    cfg = RunConfig(**TF, init_scale=1.0)
    p = params_of(cfg, [0, 1, 2, 3])
    prompts = torch.tensor(cfg.prompts)
    with torch.no_grad():
        decoded = transformer.generate(p, cfg, prompts, 1, lambda t, z: z.argmax(dim=-1))  # [run batch 1 pos]
        forced = transformer.logits(p, cfg, prompts, decoded).argmax(dim=-1)
        assert torch.equal(decoded, forced)
        ones, twos = (torch.full((4, 3, 1, 3), v) for v in (1, 2))
        a, b = (transformer.logits(p, cfg, prompts, r) for r in (ones, twos))
    assert torch.equal(a[..., 0, :], b[..., 0, :])  # token 1 sees only the prompt
    assert not torch.allclose(a[..., 1, :], b[..., 1, :])  # token 2 sees token 1


# --- sampling from each run's own generator ---------------------------------------------------
def test_invert_is_the_folded_paths_search():
    """`invert` picks the token `sample` picks from the same drawn-ahead uniforms (one inverse-CDF search)."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 2, 4, 5, generator=g) * 3, dim=-1)  # [run batch pos vocab]
    draws = uniforms([torch.Generator().manual_seed(s) for s in range(3)], 2 * 4 * 6)  # [run (batch pos trial)]
    expected = sample(probs, [], 6, draws)  # [run batch trial pos]
    u = draws.reshape(3, 2, 4, 6).permute(0, 1, 3, 2)  # [run batch trial pos]
    got = invert(probs[:, :, None].expand(-1, -1, 6, -1, -1), u)
    assert torch.equal(got, expected)


def test_a_runs_responses_come_from_its_own_generator_alone():
    """Run A's responses are the same alone, beside run B, or beside another B; and each run's generator advances by
    exactly its own (batch x pos x trial) draws, whatever its mates."""
    cfg = RunConfig(**TF, init_scale=1.0)
    prompts = torch.tensor(cfg.prompts)
    per_epoch = len(prompts) * cfg.response_length * cfg.num_responses
    temperature = torch.ones(2)

    def responses(seeds: list[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        p = transformer.init(generators, [cfg] * len(seeds))
        u = uniforms(generators, per_epoch).reshape(len(seeds), 3, cfg.response_length, cfg.num_responses)
        choose = autoregressive._sampler(temperature[: len(seeds)], u.transpose(2, 3))
        with torch.no_grad():
            return transformer.generate(p, cfg, prompts, cfg.num_responses, choose), generators

    alone, (g_alone,) = responses([7])
    pair, gens = responses([7, 8])
    other, _ = responses([7, 9])
    assert torch.equal(alone[0], pair[0]) and torch.equal(alone[0], other[0])
    assert not torch.equal(pair[1], other[1])
    fresh = torch.Generator().manual_seed(7)
    transformer.init([fresh], [cfg])
    uniforms([fresh], per_epoch)
    assert torch.equal(gens[0].get_state(), fresh.get_state()) and torch.equal(g_alone.get_state(), fresh.get_state())


def _mates(n: int, **common) -> list[RunConfig]:
    modes = ("rewards", "centered_rewards", "remax", "optimal_baseline")
    return [
        RunConfig(
            seed=100 + i,
            deltas_mode=modes[i % 4],
            kl_penalty=(0, 0.1, 0.2)[i % 3],
            entropy_coeff=(0, 0.05)[i % 2],
            **common,
        )  # fmt: skip
        for i in range(n)
    ]


INVARIANCE_CASES = {
    "naive": dict(num_epochs=4, num_steps_per_epoch=3),
    "clipped-eos-tempered-resampled": dict(
        num_epochs=4,
        num_steps_per_epoch=3,
        loss_mode="clipped",
        eos=True,
        learning_rate=0.02,
        temperature=1.5,
        filter_zero_std_groups=True,
        max_num_gen_batches=3,
    ),
    "random-mixed-lengths-minibatch": dict(
        num_epochs=4,
        num_steps_per_epoch=2,
        task="random",
        prompt_length=(3, 4),
        num_prompts=6,
        num_eval_prompts=4,
        prompts_per_epoch=4,
        importance_sampling_level="sequence",
        loss_mode="clipped",
    ),
}


@pytest.mark.parametrize("case", list(INVARIANCE_CASES))
def test_batch_invariance_exact(case):
    """A transformer run trained alone equals the same run trained among 40 mixed batch-mates, bit for bit."""
    common = {**TF, **INVARIANCE_CASES[case]}
    target = RunConfig(seed=3, **common)
    mates = _mates(40, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        together = train(mates[:17] + [target] + mates[17:])
        alone = train([target])
    inside = together[together.run_id == target.run_id].reset_index(drop=True)
    assert len(inside) == common["num_epochs"]
    pd.testing.assert_frame_equal(alone, inside, check_exact=True)


def test_a_runs_training_does_not_depend_on_its_mates_learning_rates():
    """The fused Adam steps each block of runs sharing a learning rate: a run alone equals the same run among mates
    of other learning rates (before and after it), bit for bit."""
    common = {**TF, "num_epochs": 3, "num_steps_per_epoch": 2}
    target = RunConfig(seed=3, learning_rate=0.01, **common)
    mates = [RunConfig(seed=100 + i, learning_rate=(0.02, 0.01, 0.005)[i % 3], **common) for i in range(7)]
    together = train(mates[:4] + [target] + mates[4:])
    inside = together[together.run_id == target.run_id].reset_index(drop=True)
    pd.testing.assert_frame_equal(train([target]), inside, check_exact=True)


def test_run_fused_adam_is_torchs_fused_adam_on_each_run_alone():
    """`RunFusedAdam` over 5 stacked runs with three learning rates equals `torch.optim.Adam(fused=True)` on each run
    alone, bit for bit, for a tensor whose per-run size is a multiple of `ALIGN`; a tensor whose size is not takes
    torch's single-tensor step (the fused kernel's scalar tail rounds otherwise), equal to `Adam(foreach=False)`."""
    gen = torch.Generator().manual_seed(0)
    lrs = [1e-2, 1e-2, 3e-3, 1e-2, 5e-4]
    aligned, odd = torch.randn(5, 2, ALIGN, generator=gen), torch.randn(5, 7, generator=gen)
    assert odd[0].numel() % ALIGN
    grads = [
        [torch.randn(5, 2, ALIGN, generator=gen) * 10.0**k, torch.randn(5, 7, generator=gen)] for k in range(-4, 3)
    ]
    stacked = [aligned.clone(), odd.clone()]
    ours = RunFusedAdam(stacked, torch.tensor(lrs, dtype=torch.float64))
    singles = [[aligned[r].clone().requires_grad_(), odd[r].clone().requires_grad_()] for r in range(5)]
    theirs = [
        (torch.optim.Adam([a], lr=lr, fused=True), torch.optim.Adam([o], lr=lr, foreach=False))
        for (a, o), lr in zip(singles, lrs, strict=True)
    ]
    for g in grads:
        ours.step(g)
        for r in range(5):
            for p, grad in zip(singles[r], g, strict=True):
                p.grad = grad[r].clone()
            for opt in theirs[r]:
                opt.step()
    for r in range(5):
        for mine, single in zip(stacked, singles[r], strict=True):
            assert torch.equal(mine[r].view(torch.int32), single.detach().view(torch.int32))


# --- the engine's second path -----------------------------------------------------------------
def test_first_inner_step_has_ratio_exactly_one():
    """The old log-probs come from the same teacher-forced pass as the loss's: at the first step rho = 1 exactly,
    nothing is clipped (and the KL to a reference equal to the policy is 0)."""
    cfgs = [
        RunConfig(
            **TF,
            seed=s,
            num_epochs=3,
            num_steps_per_epoch=1,
            loss_mode="clipped",
            epsilon=1e-6,
            kl_penalty=0.1,
            compute_ref_model_period=1,
        )  # fmt: skip
        for s in range(4)
    ]
    out = train(cfgs)
    assert (out.importance_ratio == 1.0).all() and (out.clip_ratio == 0.0).all()
    assert (out.kl == 0.0).all()


def test_a_diverged_transformer_run_is_dropped_and_its_mate_goes_on_unchanged():
    common = dict(
        **TF, num_epochs=5, num_steps_per_epoch=3, kl_penalty=1.0, kl_estimator="k2", kl_loss_agg_mode="lecture"
    )
    good, bad = RunConfig(seed=3, **common), RunConfig(seed=0, learning_rate=1e6, **common)
    together = train([good, bad])
    lost = together[together.run_id == bad.run_id]
    assert lost.status.tolist() == ["diverged"] and lost.diverged_epoch.tolist() == [0]
    kept = together[together.run_id == good.run_id].reset_index(drop=True)
    assert (kept.status == "ok").all()
    pd.testing.assert_frame_equal(train([good]), kept, check_exact=True)


def test_dapo_resampling_draws_again_for_zero_std_groups():
    common = dict(**TF, num_epochs=4, num_steps_per_epoch=2, reward="exact_match", filter_zero_std_groups=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the DAPO peer note; epochs that kept no prompt
        out = train([RunConfig(seed=s, max_num_gen_batches=4, **common) for s in range(4)])
    assert (out.num_gen_batches > 1).any() and (out.num_gen_batches <= 4).all()


def test_training_improves_reward_and_sft_solves():
    """The lecture's prompts, 8 seeds: centered rewards raise the mean reward; SFT teaches the greedy policy (decoded
    token by token) to sort every prompt."""
    rl = train([RunConfig(**TF, seed=s, deltas_mode="centered_rewards", num_epochs=30) for s in range(8)])
    by_epoch = rl.groupby("epoch").mean_reward.mean()
    assert by_epoch.iloc[-1] - by_epoch.iloc[0] >= 0.5, (by_epoch.iloc[0], by_epoch.iloc[-1])
    sft = train([RunConfig(**TF, seed=s, loss_mode="sft", learning_rate=1e-2, num_epochs=30) for s in range(8)])
    last = sft[sft.epoch == 29]
    assert (last.greedy_accuracy == 1.0).all() and (last.solve_rate == 1.0).all()
    assert last.mean_reward.mean() >= 4.9


VARIANTS = {
    "normalized_rewards": dict(deltas_mode="normalized_rewards"),
    "max_rewards": dict(deltas_mode="max_rewards"),
    "rloo": dict(deltas_mode="rloo"),
    "batch_normalized": dict(deltas_mode="batch_normalized"),
    "optimal_baseline": dict(deltas_mode="optimal_baseline"),
    "remax": dict(deltas_mode="remax"),
    "reinforce_plus_plus": dict(deltas_mode="reinforce_plus_plus"),
    "unclipped": dict(loss_mode="unclipped"),
    "dual-clip, clip-higher": dict(loss_mode="clipped", clip_ratio_c=3.0, epsilon_high=0.28),
    "seq-mean-token-sum-norm": dict(loss_agg_mode="seq-mean-token-sum-norm", eos=True),
    "gspo + corrected kl": dict(
        loss_mode="clipped", importance_sampling_level="sequence", kl_penalty=0.1, use_bias_correction_kl=True
    ),
    "kl in reward k1": dict(kl_penalty=0.1, use_kl_in_reward=True, kl_estimator="k1"),
    "lecture kl k2": dict(kl_penalty=0.1, kl_loss_agg_mode="lecture", kl_estimator="k2"),
    "entropy + temperature": dict(entropy_coeff=0.1, temperature=2.0),
    "eos + overlong + length penalty": dict(eos=True, overlong_buffer_len=1, length_penalty=0.1),
    "one response": dict(num_responses=1),
    "two layers": dict(n_layers=2, n_heads=4, d_model=8),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains(name):
    """Every variant the transformer takes trains: finite losses, metrics in range, a KL where there is one."""
    cfgs = [RunConfig(**TF, seed=s, num_epochs=3, num_steps_per_epoch=2, **VARIANTS[name]) for s in range(3)]
    out = train(cfgs)
    assert (out.status == "ok").all() and out.loss.notna().all() and out.grad_norm.gt(0).all()
    assert out.entropy.between(0, math.log(cfgs[0].num_tokens) + 1e-6).all()
    assert out.greedy_accuracy.between(0, 1).all()
    assert out.kl.notna().all() == bool(cfgs[0].kl_penalty)


REFUSED = {
    "critic": (dict(deltas_mode="critic"), "deltas_mode:"),
    "sft with a KL": (dict(loss_mode="sft", kl_penalty=0.1), "kl_penalty:"),
    "sft with an entropy bonus": (dict(loss_mode="sft", entropy_coeff=0.1), "entropy_coeff:"),
    "heads that do not divide d_model": (dict(n_heads=3), "n_heads:"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_variant_says_one_line(name):
    fields, start = REFUSED[name]
    with pytest.raises(ConfigError) as err:
        RunConfig(**TF, **fields)
    message = str(err.value)
    assert message.startswith(start) and "\n" not in message, message
    assert "transformer" in message or start == "n_heads:", message
    RunConfig(**fields)  # the linear model takes it


# --- the command line -------------------------------------------------------------------------
def test_cli_trains_the_transformer_with_a_recipe(tmp_path):
    from typer.testing import CliRunner

    from sortrl.cli import app

    out = tmp_path / "t.csv"
    args = ["train", "--model", "transformer", "--recipe", "grpo", "--seed", "0", "--num-epochs", "3", "--out", out]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert (table.model == "transformer").all() and (table.recipe == "grpo").all() and len(table) == 3
    assert table.kl.notna().all()  # grpo's KL to the initial policy, on the transformer's prefixes
    refused = CliRunner().invoke(app, ["train", "--model", "transformer", "--deltas-mode", "critic"])
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert refused.stderr.startswith("error: deltas_mode: 'critic' needs a value head")


def test_cli_help_documents_the_model_fields():
    from typer.testing import CliRunner

    from sortrl.cli import app

    shown = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    text = " ".join(shown.output.split())
    for option, words in (
        ("--model", "transformer: a tiny causal transformer"),
        ("--d-model", "width of the residual stream"),
        ("--n-heads", "attention heads per layer"),
        ("--n-layers", "pre-LayerNorm blocks"),
        ("--init-scale", "std of the initial logits"),
    ):
        assert option in text and words in text, option


# --- a third family, from a plug-in -----------------------------------------------------------
BAG_PLUGIN = '''
"""A third model family for the tests: logits of token t = head . tanh(sum of the embeddings of the prompt and of
the response tokens before t, plus position t's), autoregressive and tiny."""
import torch

from sortrl.engine.models import ModelFamily
from sortrl.plugins import register


def init(generators, configs):
    c0 = configs[0]
    d, v = c0.d_model, c0.num_tokens
    rows = [(torch.randn(v, d, generator=g), torch.randn(c0.response_length, d, generator=g),
             torch.randn(d, v, generator=g) * c.init_scale / d**0.5) for g, c in zip(generators, configs)]
    return {name: torch.stack([r[i] for r in rows]).requires_grad_() for i, name in enumerate(("emb", "pos", "head"))}


def logits(p, cfg, prompts, responses):
    runs = p["emb"].shape[0]
    prompts = prompts.expand(runs, -1, -1) if prompts.dim() == 3 else prompts[None].expand(runs, -1, -1)
    index = torch.arange(runs)[:, None, None]
    bag = (p["emb"][index, prompts.clamp(min=0)] * (prompts >= 0)[..., None]).sum(dim=2)  # [run batch d]
    seen = p["emb"][index[..., None], responses].cumsum(dim=3) - p["emb"][index[..., None], responses]  # tokens < t
    x = torch.tanh(bag[:, :, None, None] + seen + p["pos"][:, None, None])  # [run batch trial pos d]
    return torch.einsum("rbtpd,rdv->rbtpv", x, p["head"])


def generate(p, cfg, prompts, trials, choose):
    runs, batch = p["emb"].shape[0], prompts.shape[-2]
    out = torch.zeros(runs, batch, trials, cfg.response_length, dtype=torch.long)
    for t in range(cfg.response_length):
        out[..., t] = choose(t, logits(p, cfg, prompts, out)[..., t, :])
    return out


register("model", "bag_for_tests", ModelFamily(init, logits, generate, fields=("d_model", "init_scale")))
'''


@pytest.fixture
def bag_plugin(tmp_path, monkeypatch):
    """The plug-in family as module `bag_for_tests`; the registry restored afterwards."""
    import sys

    from sortrl.engine.models import MODELS

    (tmp_path / "bag_for_tests.py").write_text(BAG_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("bag_for_tests", None)
    MODELS.pop("bag_for_tests", None)


def test_a_plugin_adds_a_third_family(bag_plugin):
    common = dict(model="bag_for_tests", plugins=("bag_for_tests",), num_epochs=20, deltas_mode="centered_rewards",
                  learning_rate=1e-2, init_scale=1.0)  # fmt: skip
    target = RunConfig(seed=3, **common)
    together = train([RunConfig(seed=s, **common) for s in range(10, 18)] + [target])
    alone = train([target])
    inside = together[together.run_id == target.run_id].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, inside, check_exact=True)
    by_epoch = together.groupby("epoch").mean_reward.mean()
    assert by_epoch.iloc[-1] - by_epoch.iloc[0] >= 0.3, (by_epoch.iloc[0], by_epoch.iloc[-1])
    from sortrl.engine.config import ignored_fields

    assert set(ignored_fields(RunConfig(**{**common, "n_heads": 4}))) == {"n_heads"}
    with pytest.raises(ConfigError, match="^deltas_mode: 'critic' needs a value head"):
        RunConfig(**{**common, "deltas_mode": "critic"})


def test_a_plugin_family_must_be_autoregressive():
    from sortrl.engine.models import MODELS
    from sortrl.plugins import register

    with pytest.raises(ValueError, match="prompt_only=False"):
        register("model", "not_a_family", MODELS["transformer"].logits)
    with pytest.raises(ValueError, match="prompt_only=False"):
        register("model", "folded_family", MODELS["transformer"]._replace(prompt_only=True))
