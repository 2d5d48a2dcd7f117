"""A tiny causal transformer policy, batched over a leading `run` axis (the `transformer` model family).

The input is the prompt, a separator token (SEP, id = `num_tokens`), then the
response so far; the logits at SEP and at each response token give the next
response token, so every token is drawn conditioned on the prompt and on the
tokens before it (an autoregressive policy, unlike the lecture's `linear` one).
A pre-LayerNorm GPT block (Radford et al. 2019, GPT-2; the layout of nanoGPT's
`Block`, written here for a `run` axis): x += attn(ln1(x)); x += mlp(ln2(x)),
then logits = ln_f(x) @ head. Linear layers have no bias; LayerNorms have a
gain and a bias; the MLP is 4 x d_model wide with GELU (the erf form, torch's default).

Parameters (a `Params` dict of leaf tensors; W = prompt width, V = `num_tokens`,
d = `d_model`, one block's names prefixed `h<i>.`):

| name | shape | init (from the run's generator, in this order) |
| --- | --- | --- |
| `wte` | [run V+1 dim] | N(0, 1) (SEP is the last row) |
| `wpe` | [run 2W dim] | N(0, 1) |
| `h<i>.ln1_w`, `h<i>.ln1_b` | [run dim] | 1, 0 |
| `h<i>.qkv` | [run dim 3dim] | N(0, 1/d) |
| `h<i>.proj` | [run dim dim] | N(0, 1/(2 n_layers d)) (GPT-2's residual scaling) |
| `h<i>.ln2_w`, `h<i>.ln2_b` | [run dim] | 1, 0 |
| `h<i>.fc` | [run dim 4dim] | N(0, 1/d) |
| `h<i>.fc2` | [run 4dim dim] | N(0, 1/(2 n_layers 4d)) |
| `lnf_w`, `lnf_b` | [run dim] | 1, 0 |
| `head` | [run dim V] | N(0, init_scale^2 / d): logits of std ~ init_scale at the start |

Positions: prompt 0 .. W-1, SEP W, response token j (1-based) W + j. Right-
padded prompts (`PAD`) are masked as attention keys, so a short prompt is read
as if the model had only its own positions before SEP.

Speed (the `make bench` transformer rows; docs/engine.md gives what each
gave): the prompt's hidden states do not depend on the response (causal
attention), so the prompt stream is computed once per prompt and its keys and
values are shared by the prompt's G responses (`trial` axis), and in the last
block queries, the MLP and the logits are computed at response positions only
(`response_logits`); and the teacher-forced pass (`logits`, what training runs)
computes each response prefix once per prompt where that is fewer rows
(`prefix_tree`), its keys shared in one matmul. `full_logits` is the plain
computation (every position of [prompt SEP response] per response), kept as the
reference that tests and the benchmark compare against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from sortrl.engine.task import PAD

Params = dict[str, Tensor]

Choose = Callable[[int, Tensor], Tensor]
"""`choose(t, logits [run batch trial vocab]) -> token ids [run batch trial]`: the engine's pick of response token t
(sampling from the run's own uniforms, or argmax)."""


def init(generators: Sequence[torch.Generator], configs: Sequence[Any]) -> Params:
    """One transformer per generator: each run's weights from its own generator, in the table's order.

    `configs[r]` gives run r's `init_scale`; the shapes come from `configs[0]` (`num_tokens`, `response_length`,
    `d_model`, `n_layers`, shared by a batch). Drawing from the run's generator alone makes a run independent of
    its batch-mates.
    """
    c0 = configs[0]
    vocab, width, d, layers = c0.num_tokens, c0.response_length, c0.d_model, c0.n_layers
    per_run: list[Params] = []
    for g, cfg in zip(generators, configs, strict=True):
        p: Params = {"wte": torch.randn(vocab + 1, d, generator=g), "wpe": torch.randn(2 * width, d, generator=g)}
        for i in range(layers):
            p[f"h{i}.ln1_w"], p[f"h{i}.ln1_b"] = torch.ones(d), torch.zeros(d)
            p[f"h{i}.qkv"] = torch.randn(d, 3 * d, generator=g) / math.sqrt(d)
            p[f"h{i}.proj"] = torch.randn(d, d, generator=g) / math.sqrt(2 * layers * d)
            p[f"h{i}.ln2_w"], p[f"h{i}.ln2_b"] = torch.ones(d), torch.zeros(d)
            p[f"h{i}.fc"] = torch.randn(d, 4 * d, generator=g) / math.sqrt(d)
            p[f"h{i}.fc2"] = torch.randn(4 * d, d, generator=g) / math.sqrt(2 * layers * 4 * d)
        p["lnf_w"], p["lnf_b"] = torch.ones(d), torch.zeros(d)
        p["head"] = torch.randn(d, vocab, generator=g) * (cfg.init_scale / math.sqrt(d))
        per_run.append(p)
    return {name: torch.stack([p[name] for p in per_run]).requires_grad_() for name in per_run[0]}


def _norm(x: Tensor, w: Float[Tensor, "run dim"], b: Float[Tensor, "run dim"]) -> Tensor:
    """LayerNorm over the last axis (eps 1e-5) with a per-run gain and bias; x [run ... dim]."""
    shape = (w.shape[0],) + (1,) * (x.dim() - 2) + (w.shape[1],)
    return F.layer_norm(x, x.shape[-1:]) * w.view(shape) + b.view(shape)


def _linear(x: Tensor, w: Float[Tensor, "run din dout"]) -> Tensor:
    """x [run ... din] @ w[run] -> [run ... dout], one batched matmul over the run axis."""
    return torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[-1])


def _mlp(p: Params, i: int, x: Tensor) -> Tensor:
    return _linear(F.gelu(_linear(_norm(x, p[f"h{i}.ln2_w"], p[f"h{i}.ln2_b"]), p[f"h{i}.fc"])), p[f"h{i}.fc2"])


def _embed(p: Params, ids: Tensor, first: int) -> Tensor:
    """Token + position embeddings of ids [run n pos] at positions first .. first+pos-1 -> [run n pos dim]."""
    runs = ids.shape[0]
    tok = p["wte"][torch.arange(runs)[:, None, None], ids.clamp(min=0)]
    return tok + p["wpe"][:, None, first : first + ids.shape[-1]]


def _with_run_axis(prompts: Tensor, runs: int) -> Int[Tensor, "run batch pos"]:
    return prompts.expand(runs, -1, -1) if prompts.dim() == 3 else prompts[None].expand(runs, -1, -1)


def _heads(x: Tensor, h: int) -> Tensor:
    return x.unflatten(-1, (h, x.shape[-1] // h))


def _prompt_keys(p: Params, cfg: Any, prompts: Int[Tensor, "run batch pos"]) -> list[tuple[Tensor, Tensor]]:
    """Each block's keys and values at the prompt positions, [run batch pos head e] each (e = d_model / n_heads).

    The prompt positions attend only to themselves (causal), so their states do not depend on the response: one
    pass per prompt, shared by all of its responses. The last block needs only their keys and values.
    """
    h, d = cfg.n_heads, cfg.d_model
    x = _embed(p, prompts, 0)  # [run batch pos dim]
    width = prompts.shape[-1]
    bias = _prompt_bias(prompts)  # [run batch 1 1 pos]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    out = []
    for i in range(cfg.n_layers):
        qkv = _linear(_norm(x, p[f"h{i}.ln1_w"], p[f"h{i}.ln1_b"]), p[f"h{i}.qkv"])
        q, k, v = (_heads(t, h) for t in qkv.split(d, dim=-1))
        out.append((k, v))
        if i == cfg.n_layers - 1:
            break
        scores = torch.einsum("rbqhe,rbkhe->rbhqk", q, k) / math.sqrt(d // h)
        scores = scores.masked_fill(~causal, -math.inf) + bias
        att = torch.einsum("rbhqk,rbkhe->rbqhe", torch.softmax(scores, dim=-1), v).flatten(-2)
        x = x + _linear(att, p[f"h{i}.proj"])
        x = x + _mlp(p, i, x)
    return out


def _prompt_bias(prompts: Int[Tensor, "run batch pos"]) -> Float[Tensor, "run batch 1 1 pos"]:
    """0 for a real prompt token, -inf for padding: added to attention scores on the prompt's keys."""
    return torch.zeros(prompts.shape).masked_fill(prompts == PAD, -math.inf)[:, :, None, None, :]


def response_logits(
    p: Params, cfg: Any, prompts: Int[Tensor, "batch pos"] | Int[Tensor, "run batch pos"], inputs: Tensor
) -> Float[Tensor, "run batch trial pos vocab"]:
    """Logits of the next token at every input position of the response part, sharing the prompt's keys/values
    (one row per trial and position: the benchmark's middle lever; `logits` also shares prefixes).

    inputs [run batch trial S]: SEP then the response's first S-1 tokens (S <= W); returns [run batch trial S vocab],
    entry s the logits of response token s+1 given the prompt and tokens 1..s (positions W .. W+S-1).
    """
    runs, batch, trial, steps = inputs.shape
    h, d = cfg.n_heads, cfg.d_model
    prompts = _with_run_axis(prompts, runs)
    keys = _prompt_keys(p, cfg, prompts)
    bias = _prompt_bias(prompts)[:, :, None]  # [run batch 1 1 1 pos]
    causal = torch.ones(steps, steps, dtype=torch.bool).tril()
    x = _embed(p, inputs.reshape(runs, batch * trial, steps), prompts.shape[-1]).view(runs, batch, trial, steps, d)
    for i, (kp, vp) in enumerate(keys):
        qkv = _linear(_norm(x, p[f"h{i}.ln1_w"], p[f"h{i}.ln1_b"]), p[f"h{i}.qkv"])
        q, k, v = (_heads(t, h) for t in qkv.split(d, dim=-1))  # [run batch trial S head e]
        scale = 1 / math.sqrt(d // h)
        on_prompt = torch.einsum("rbtshe,rbkhe->rbthsk", q, kp) * scale + bias  # the prompt's keys, shared
        on_self = torch.einsum("rbtshe,rbtuhe->rbthsu", q, k) * scale
        on_self = on_self.masked_fill(~causal, -math.inf)
        weights = torch.softmax(torch.cat([on_prompt, on_self], dim=-1), dim=-1)
        w_prompt, w_self = weights.split([kp.shape[2], steps], dim=-1)
        att = torch.einsum("rbthsk,rbkhe->rbtshe", w_prompt, vp) + torch.einsum("rbthsu,rbtuhe->rbtshe", w_self, v)
        x = x + _linear(att.flatten(-2), p[f"h{i}.proj"])
        x = x + _mlp(p, i, x)
    return _linear(_norm(x, p["lnf_w"], p["lnf_b"]), p["head"])


def sep_inputs(cfg: Any, responses: Int[Tensor, "run batch trial pos"]) -> Int[Tensor, "run batch trial pos"]:
    """The teacher-forced inputs of `responses`: SEP, then every response token but the last."""
    sep = torch.full_like(responses[..., :1], cfg.num_tokens)
    return torch.cat([sep, responses[..., :-1]], dim=-1)


def prefix_tree(vocab: int, trials: int, steps: int) -> list[int | None]:
    """How the teacher-forced pass lays out each input depth s = 0 .. steps-1 per prompt: V^s nodes when V^s is at
    most the number of trials (every prefix y_1..y_s enumerated once, shared by the trials that sampled it), None
    for one node per trial (deeper depths too). Depth 0 (SEP) is one node per prompt. Fixed by the config, so
    shapes never depend on what was sampled."""
    out: list[int | None] = []
    count = 1
    for _ in range(steps):
        out.append(count if count is not None and count <= trials else None)
        count = count * vocab if out[-1] is not None else None
    return out


def logits(
    p: Params, cfg: Any, prompts: Tensor, responses: Int[Tensor, "run batch trial pos"]
) -> Float[Tensor, "run batch trial pos vocab"]:
    """Teacher-forced logits of every response token, one pass: position t from the prompt and tokens before t.

    The logits of token t depend only on the prompt and the prefix y_1..y_{t-1}, so prefixes are computed once
    per prompt where that is fewer rows (`prefix_tree`: SEP once instead of once per trial; at the default G = 10
    and 5 tokens every first token once: 16 rows per prompt instead of 30), and each trial reads its prefix's row.
    The enumerated prefixes' keys join the prompt's as keys shared by the prompt's rows (one batched matmul; a
    mask keeps each row to its own ancestors), and a per-trial row adds its own trial's per-trial rows. Equal to
    `full_logits` up to rounding (tested).
    """
    runs, batch, trials, steps = responses.shape
    h, d, vocab, width = cfg.n_heads, cfg.d_model, cfg.num_tokens, prompts.shape[-1]
    e = d // h
    prompts = _with_run_axis(prompts, runs)
    layout = prefix_tree(vocab, trials, steps)
    shared = [n for n in layout if n is not None]  # enumerated depths 0 .. k-1 (depth 0 always)
    k, m, own = len(shared), sum(shared), steps - len(shared)  # own: per-trial depths k .. steps-1
    offsets = [sum(shared[:s]) for s in range(k)]
    # each trial's row at each depth [run batch trial steps]: an enumerated prefix's, or its own
    code = torch.zeros(runs, batch, trials, dtype=torch.long)
    node_of = []
    for s in range(steps):
        if s:
            code = code * vocab + responses[..., s - 1]
        node_of.append(offsets[s] + code if s < k else m + torch.arange(trials) * own + (s - k))
    node_of = torch.stack(torch.broadcast_tensors(*node_of), dim=-1)
    # rows: the enumerated prefixes (static tokens), then each trial's own (its sampled tokens)
    index = torch.arange(m)
    depth = torch.cat([torch.full((n,), s) for s, n in enumerate(shared)] + [torch.arange(k, steps).repeat(trials)])
    last = index - torch.tensor([offsets[s] for s in depth[:m].tolist()])  # code of the prefix within its depth
    tokens = torch.where(depth[:m] == 0, vocab, last % vocab).expand(runs, batch, -1)
    if own:
        tokens = torch.cat([tokens, responses[..., k - 1 : steps - 1].flatten(2)], dim=-1)
    x = p["wte"][torch.arange(runs)[:, None, None], tokens] + p["wpe"][:, None, width + depth]
    # which shared keys each row sees: the prompt's real tokens, and its enumerated ancestors
    # prefix i (depth s_i, code c_i) has ancestor j at depth s_j <= s_i iff c_j = c_i // V^(s_i - s_j)
    ancestor = last[:, None] // vocab ** (depth[:m, None] - depth[None, :m]).clamp(min=0)
    sees = (depth[None, :m] <= depth[:m, None]) & (ancestor == last[None, :])  # [m m]: query, key
    sees = sees.expand(runs, batch, -1, -1)
    if own:  # a trial's rows see the enumerated rows on its path
        path = (node_of[..., :k, None] == index).any(dim=-2)  # [run batch trial m]
        sees = torch.cat([sees, path[:, :, :, None].expand(-1, -1, -1, own, -1).flatten(2, 3)], dim=2)
    bias = torch.cat([_prompt_bias(prompts)[:, :, 0].expand(-1, -1, m + own * trials, -1),
                      torch.zeros(sees.shape).masked_fill(~sees, -math.inf)], dim=-1)[:, :, :, None]  # fmt: skip
    causal = torch.ones(own, own, dtype=torch.bool).tril()
    keys = _prompt_keys(p, cfg, prompts)
    scale = 1 / math.sqrt(e)
    for i, (kp, vp) in enumerate(keys):
        q, kn, vn = (
            _heads(t, h) for t in _linear(_norm(x, p[f"h{i}.ln1_w"], p[f"h{i}.ln1_b"]), p[f"h{i}.qkv"]).split(d, -1)
        )
        k_shared, v_shared = torch.cat([kp, kn[:, :, :m]], dim=2), torch.cat([vp, vn[:, :, :m]], dim=2)
        scores = torch.einsum("rbnhe,rbjhe->rbnhj", q, k_shared) * scale + bias  # [run batch rows head key]
        if own:  # a per-trial row also sees its own trial's per-trial rows up to itself
            q_own, k_own, v_own = (t[:, :, m:].unflatten(2, (trials, own)) for t in (q, kn, vn))
            mine = (q_own[:, :, :, :, None] * k_own[:, :, :, None]).sum(-1) * scale  # [run batch trial s u head]
            mine = mine.masked_fill(~causal[:, :, None], -math.inf).transpose(-1, -2).flatten(2, 3)
            mine = torch.cat([torch.full((runs, batch, m, h, own), -math.inf), mine], dim=2)
            scores = torch.cat([scores, mine], dim=-1)
        weights = torch.softmax(scores, dim=-1)
        att = torch.einsum("rbnhj,rbjhe->rbnhe", weights[..., : width + m], v_shared)
        if own:
            w_own = weights[:, :, m:, :, width + m :].unflatten(2, (trials, own))  # [run batch trial s head u]
            from_own = (w_own.transpose(-1, -2)[..., None] * v_own[:, :, :, None]).sum(dim=4)  # [run batch trial s h e]
            att = torch.cat([att[:, :, :m], att[:, :, m:] + from_own.flatten(2, 3)], dim=2)
        x = x + _linear(att.flatten(-2), p[f"h{i}.proj"])
        x = x + _mlp(p, i, x)
    out = _linear(_norm(x, p["lnf_w"], p["lnf_b"]), p["head"])  # [run batch rows vocab]
    index = node_of.reshape(runs, batch, trials * steps, 1).expand(-1, -1, -1, vocab)
    return out.gather(2, index).view(runs, batch, trials, steps, vocab)


def generate(p: Params, cfg: Any, prompts: Tensor, trials: int, choose: Choose) -> Int[Tensor, "run batch trial pos"]:
    """`trials` responses per prompt, token by token: token t = choose(t, logits given the prompt and tokens < t).

    Step t runs the teacher-forced pass (`logits`) on the first t+1 positions (the last one's token is not read),
    so shared prefixes are computed once per prompt here too: 1 + 6 + 16 rows per prompt at the default G = 10
    against 10 + 20 + 30 re-running every trial's prefix (`response_logits`).
    """
    runs = p["wte"].shape[0]
    prompts = _with_run_axis(prompts, runs)
    out = torch.zeros(runs, prompts.shape[1], trials, cfg.response_length, dtype=torch.long)
    for t in range(cfg.response_length):
        step = logits(p, cfg, prompts, out[..., : t + 1].clone())[..., t, :]  # [run batch trial vocab]
        out[..., t] = choose(t, step)
    return out


def full_logits(
    p: Params, cfg: Any, prompts: Tensor, responses: Int[Tensor, "run batch trial pos"]
) -> Float[Tensor, "run batch trial pos vocab"]:
    """The same logits as `logits`, computed plainly: every position of [prompt SEP response[:-1]] for every response
    (the prompt repeated per trial, queries and MLP everywhere, one causal mask over 2W positions). The reference."""
    runs, batch, trial, width = responses.shape
    h, d = cfg.n_heads, cfg.d_model
    prompts = _with_run_axis(prompts, runs)
    seq = torch.cat([prompts[:, :, None].expand(-1, -1, trial, -1), sep_inputs(cfg, responses)], dim=-1)
    seq = rearrange(seq, "run batch trial n -> run (batch trial) n")
    x = _embed(p, seq, 0)  # [run n 2W dim]
    n = seq.shape[-1]
    pad = torch.zeros(seq.shape).masked_fill(seq == PAD, -math.inf)[:, :, None, None, :]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for i in range(cfg.n_layers):
        q, k, v = (
            _heads(t, h) for t in _linear(_norm(x, p[f"h{i}.ln1_w"], p[f"h{i}.ln1_b"]), p[f"h{i}.qkv"]).split(d, -1)
        )
        scores = torch.einsum("rnqhe,rnkhe->rnhqk", q, k) / math.sqrt(d // h)
        scores = scores.masked_fill(~causal, -math.inf) + pad
        att = torch.einsum("rnhqk,rnkhe->rnqhe", torch.softmax(scores, dim=-1), v).flatten(-2)
        x = x + _linear(att, p[f"h{i}.proj"])
        x = x + _mlp(p, i, x)
    out = _linear(_norm(x[:, :, prompts.shape[-1] :], p["lnf_w"], p["lnf_b"]), p["head"])
    return rearrange(out, "run (batch trial) pos vocab -> run batch trial pos vocab", batch=batch)
