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
gave): the logits of response token t depend only on the prompt and the prefix
y_1..y_{t-1}, so the teacher-forced pass (`logits`, what training runs)
computes each distinct prefix of a prompt's G responses once (`fold`, a trie:
late in training a group's responses are mostly one, and its 1 + G (W-1)
prefixes fold to W rows), with the prompt's positions in the same sequence (the
mask keeps their states independent of the rows) and, in the last block,
queries, the MLP and the logits at the rows only. Row counts differ by run, so
runs are computed in groups of equal count, each set by the run's own responses
(a run's numbers never depend on its batch-mates). `response_logits` (the
prompt shared, response positions only, no fold) and `full_logits` (every
position of [prompt SEP response] per response) are the earlier ways, kept as
the benchmark's levers and the tests' reference.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

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


def fold_size(rows: Tensor, least: int, most: int) -> Tensor:
    """The padded row count of each run whose prompts need at most `rows` [run] rows: `least` (every prompt's
    responses one response: W rows), half of `most`, or `most` (no two sampled prefixes alike). Three sizes at most,
    so a batch splits into at most three groups: each group pays the pass's fixed cost (about 300 small kernels per
    forward and backward), which outweighs finer padding at the batch sizes sweeps train (16-1,024 runs; measured on
    the lecture's runs, the transfer grids and the generalisation grid)."""
    half = max(least, -(-most // 2))
    return torch.where(rows <= least, least, torch.where(rows <= half, half, most))


class Fold(NamedTuple):
    """Each prompt's distinct response prefixes, one row each (a trie), for the teacher-forced pass.

    A prefix y_1..y_s (depth s; depth 0 is SEP alone) is coded offset_s + sum_j y_j V^(s-j), offset_s = sum_{t<s}
    V^t, so codes of different depths differ and a prefix's ancestors are found by integer division. Rows are in
    code order (SEP first), then padding (code -1).
    """

    code: Int[Tensor, "run batch row"]  # the prefix of each row, -1 for padding (up to the batch's widest run)
    node_of: Int[Tensor, "run batch trial pos"]  # the row holding response position t's prefix y_1..y_{t-1}
    size: Int[Tensor, " run"]  # each run's row count: its own prompts' widest, padded (`fold_size`)


def _offsets(vocab: int, steps: int) -> Tensor:
    return torch.tensor([sum(vocab**t for t in range(s)) for s in range(steps)])


def fold(responses: Int[Tensor, "run batch trial pos"], vocab: int) -> Fold:
    """The distinct prefixes of each prompt's responses (`Fold`). A run's row count depends on its own responses
    alone: it is the padded maximum over its own prompts, never over its batch-mates'."""
    runs, batch, trials, steps = responses.shape
    offsets = _offsets(vocab, steps)
    code, codes = torch.zeros(runs, batch, trials, dtype=torch.long), []
    for s in range(steps):
        if s:
            code = code * vocab + responses[..., s - 1]
        codes.append(offsets[s] + code)
    flat = torch.stack(codes, dim=-1).flatten(2)  # [run batch (trial pos)]
    ordered, order = flat.sort(dim=-1)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    rank = first.cumsum(dim=-1) - 1  # the row of each sorted entry
    node_of = torch.empty_like(rank).scatter_(-1, order, rank).view(runs, batch, trials, steps)
    most = 1 + sum(min(trials, vocab**s) for s in range(1, steps))
    size = fold_size((rank[..., -1] + 1).amax(dim=1), steps, most)
    row_code = torch.full((runs, batch, int(size.max())), -1, dtype=torch.long)
    row_code.scatter_(-1, rank, ordered)  # every entry of a row writes the same code
    return Fold(row_code, node_of, size)


class Group(NamedTuple):
    """The runs of one row count and what their pass reads (`_layout`)."""

    runs: Int[Tensor, " run"]  # their places in the batch
    token: Int[Tensor, "run batch row"]  # each row's input: its prefix's last token (SEP at depth 0 and for padding)
    position: Int[Tensor, "run batch row"]  # W + the prefix's depth
    bias: Float[Tensor, "run batch query 1 key"]  # 0 where a position attends, -inf elsewhere (`_attention_bias`)
    at: Int[Tensor, "run batch tokens vocab"]  # the row of each response position (trial, pos), for `gather`


def _depth(code: Int[Tensor, "run batch row"], offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's prefix depth (0 for SEP and for padding) and its code within that depth (`Fold`)."""
    depth = torch.where(code >= 0, torch.searchsorted(offsets, code.clamp(min=0), right=True) - 1, 0)
    return depth, code.clamp(min=0) - offsets[depth]


def _attention_bias(vocab: int, offsets: Tensor, prompts: Tensor, code: Int[Tensor, "run batch row"]) -> Tensor:
    """The additive mask [run batch query 1 key] (0 / -inf) over the prompt's W positions then the rows, as queries
    and as keys: a prompt position attends to the real prompt tokens up to itself (causal); a row to every real
    prompt token, its own ancestors and itself (padding rows to themselves, so no softmax is empty)."""
    width = prompts.shape[-1]
    runs, batch, rows = code.shape
    real = code >= 0
    depth, last = _depth(code, offsets)
    gap = (depth[..., :, None] - depth[..., None, :]).clamp(min=0)  # query's depth - key's
    ancestor = offsets[depth][..., None, :] + last[..., :, None] // vocab**gap  # query's ancestor at key's depth
    sees = (depth[..., None, :] <= depth[..., :, None]) & (ancestor == code[..., None, :]) & real[..., None, :]
    sees = sees | torch.eye(rows, dtype=torch.bool)  # [run batch row row]: query, key
    token = (prompts != PAD)[:, :, None, :]  # [run batch 1 pos]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    on_prompt = torch.cat([token & causal, torch.zeros(runs, batch, width, rows, dtype=torch.bool)], dim=-1)
    on_rows = torch.cat([token.expand(-1, -1, rows, -1), sees], dim=-1)
    attends = torch.cat([on_prompt, on_rows], dim=2)  # [run batch (W + row) (W + row)]
    return torch.zeros(attends.shape).masked_fill(~attends, -math.inf)[:, :, :, None]


_CACHE = threading.local()


def _layout(cfg: Any, given: Tensor, prompts: Tensor, responses: Tensor) -> list[Group]:
    """The groups of a teacher-forced pass (`logits`): runs of equal row count, each with its rows' tokens,
    positions, attention mask and read-back index. Kept per thread for the last (prompts, responses) seen, as the
    inner steps of an epoch read the same responses again and again (`given`: the prompts as the caller passed
    them, `prompts` with their run axis)."""
    key = (given, given._version, responses, responses._version, cfg.num_tokens)
    last = getattr(_CACHE, "last", None)
    if last is not None and all(a is b if isinstance(a, Tensor) else a == b for a, b in zip(last[0], key)):
        return last[1]
    runs, batch, trials, steps = responses.shape
    vocab, width = cfg.num_tokens, prompts.shape[-1]
    folded = fold(responses, vocab)
    offsets = _offsets(vocab, steps)
    groups = []
    for size in folded.size.unique().tolist():
        idx = (folded.size == size).nonzero().flatten()
        code = folded.code[idx, :, :size]
        depth, last = _depth(code, offsets)
        token = torch.where((depth > 0) & (code >= 0), last % vocab, vocab)
        at = folded.node_of[idx].reshape(len(idx), batch, trials * steps, 1).expand(-1, -1, -1, vocab)
        groups.append(Group(idx, token, width + depth, _attention_bias(vocab, offsets, prompts[idx], code), at))
    _CACHE.last = (key, groups)
    return groups


def _folded_logits(p: Params, cfg: Any, prompts: Tensor, group: Group) -> Float[Tensor, "run batch row vocab"]:
    """The next-token logits at every row of one group (its runs' parameters `p`, prompts [run batch pos]).

    The prompt's positions and the rows are one sequence axis (prompt first): the prompt's states never depend on
    the rows (the mask), and the last block computes queries, the MLP and the logits at the rows only."""
    runs, width = group.token.shape[0], prompts.shape[-1]
    h, d = cfg.n_heads, cfg.d_model
    at = torch.arange(runs)[:, None, None]
    tokens = torch.cat([prompts.clamp(min=0), group.token], dim=-1)  # [run batch (W + row)]
    positions = torch.cat([torch.arange(width).expand_as(prompts), group.position], dim=-1)
    x = p["wte"][at, tokens] + p["wpe"][at, positions]  # [run batch (W + row) dim]
    bias, scale = group.bias, 1 / math.sqrt(d // h)
    for i in range(cfg.n_layers):
        qkv = _linear(_norm(x, p[f"h{i}.ln1_w"], p[f"h{i}.ln1_b"]), p[f"h{i}.qkv"])
        # splits, not slices: a split's backward is one concatenation, a slice's a zero-filled copy of the whole
        q, k, v = (_heads(t, h) for t in qkv.split(d, dim=-1))
        if i == cfg.n_layers - 1:  # the last block: the rows' queries only
            rows = [width, x.shape[2] - width]
            x, bias, q = x.split(rows, dim=2)[1], bias[:, :, width:], q.split(rows, dim=2)[1]
        scores = torch.einsum("rbnhe,rbjhe->rbnhj", q, k) * scale + bias  # [run batch query head key]
        att = torch.einsum("rbnhj,rbjhe->rbnhe", torch.softmax(scores, dim=-1), v)
        x = x + _linear(att.flatten(-2), p[f"h{i}.proj"])
        x = x + _mlp(p, i, x)
    return _linear(_norm(x, p["lnf_w"], p["lnf_b"]), p["head"])


def _in_order(groups: list[Tensor]) -> bool:
    """Whether the groups are adjacent blocks of the batch, in order (the engine orders its runs so: `order`)."""
    return torch.equal(torch.cat(groups), torch.arange(sum(len(idx) for idx in groups)))


class _Split(torch.autograd.Function):
    """Each group's rows of every parameter, and back: the groups partition the runs, so a run's gradient is the
    one its group computed, copied, never added to zeros (an indexing's own backward would add it, turning -0.0 into
    +0.0, and index element by element, several times slower). Groups in batch order (`_in_order`) are views
    forward and one concatenation back; others are copied (`index_select`) and copied back into place."""

    @staticmethod
    def forward(ctx, groups: list[Tensor], in_order: bool, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.groups, ctx.n, ctx.in_order = groups, len(tensors), in_order
        if ctx.in_order:
            starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor([len(i) for i in groups]).cumsum(0)])
            return tuple(t.narrow(0, int(a), len(idx)) for a, idx in zip(starts, groups) for t in tensors)
        return tuple(t.index_select(0, idx) for idx in groups for t in tensors)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        n, runs = ctx.n, sum(len(idx) for idx in ctx.groups)
        out = []
        for i in range(n):
            parts = [grads[g * n + i] for g in range(len(ctx.groups))]
            shape = next(t for t in parts if t is not None).shape[1:]
            if ctx.in_order:
                parts = [t if t is not None else torch.zeros(len(idx), *shape) for t, idx in zip(parts, ctx.groups)]
                out.append(torch.cat(parts))
                continue
            full = torch.empty(runs, *shape)
            for idx, part in zip(ctx.groups, parts, strict=True):  # one copy per group, into place
                if part is None:
                    full.index_fill_(0, idx, 0.0)
                else:
                    full.index_copy_(0, idx, part)
            out.append(full)
        return (None, None, *out)


class _Merge(torch.autograd.Function):
    """The groups' outputs put back in the batch's run order (the inverse of `_Split`), exactly both ways."""

    @staticmethod
    def forward(ctx, groups: list[Tensor], in_order: bool, *parts: Tensor) -> Tensor:
        ctx.groups, ctx.in_order = groups, in_order
        return torch.cat(parts) if ctx.in_order else torch.cat(parts).index_select(0, _unsort(groups))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        ordered = grad if ctx.in_order else grad.index_select(0, torch.cat(ctx.groups))
        return (None, None, *ordered.split([len(idx) for idx in ctx.groups]))


def _unsort(groups: list[Tensor]) -> Tensor:
    """Where each run of the batch sits in the groups' concatenation."""
    order = torch.cat(groups)
    return torch.empty_like(order).scatter_(0, order, torch.arange(len(order)))


def order(cfg: Any, responses: Int[Tensor, "run batch trial pos"]) -> Int[Tensor, " run"]:
    """A run order that puts runs of one row count (`Fold.size`) next to each other, smallest first (stable): the
    engine orders its batch so before an epoch's inner steps, and `logits` then takes each group as a view of the
    parameters instead of a copy (measured: 6-10 ms of a 1,024-run forward+backward's 60-70 with two groups)."""
    return fold(responses, cfg.num_tokens).size.argsort(stable=True)


def logits(
    p: Params, cfg: Any, prompts: Tensor, responses: Int[Tensor, "run batch trial pos"]
) -> Float[Tensor, "run batch trial pos vocab"]:
    """Teacher-forced logits of every response token, one pass: position t from the prompt and tokens before t.

    The logits of token t depend only on the prompt and the prefix y_1..y_{t-1}, so each distinct prefix of a
    prompt's responses is computed once (`fold`: late in training a group's G responses are mostly one, and its
    1 + G (W-1) prefixes fold to W rows) and each response position reads its prefix's row. A row attends to the
    prompt's keys (computed once per prompt) and to its own ancestors' and its own keys (a mask).

    Runs are computed in groups of equal row count (`Fold.size`, set by each run's own responses), so a run's
    numbers never depend on its batch-mates: each group is an ordinary batch of runs, and every op here is
    batch-invariant along the run axis (tested bit for bit). Equal to `full_logits` up to rounding (tested).
    """
    runs, batch, trials, steps = responses.shape
    given, prompts = prompts, _with_run_axis(prompts, runs)
    groups = _layout(cfg, given, prompts, responses)
    if len(groups) == 1:
        out = _folded_logits(p, cfg, prompts, groups[0]).gather(2, groups[0].at)
    else:
        runs_of = [g.runs for g in groups]
        in_order = _in_order(runs_of)  # one check for the split and the merge
        split, n = _Split.apply(runs_of, in_order, *p.values()), len(p)
        parts = []
        for k, group in enumerate(groups):
            sub = dict(zip(p, split[k * n : (k + 1) * n], strict=True))
            parts.append(_folded_logits(sub, cfg, prompts.index_select(0, group.runs), group).gather(2, group.at))
        out = _Merge.apply(runs_of, in_order, *parts)
    return out.view(runs, batch, trials, steps, -1)


def generate(p: Params, cfg: Any, prompts: Tensor, trials: int, choose: Choose) -> Int[Tensor, "run batch trial pos"]:
    """`trials` responses per prompt, token by token: token t = choose(t, logits given the prompt and tokens < t).

    Step t runs the teacher-forced pass (`logits`) on the first t+1 positions (the last one's token is not read),
    so each distinct prefix is computed once per prompt here too (`fold`: at most 1 + 5 + 10 rows per prompt at the
    default G = 10, W rows for a converged policy, against 10 + 20 + 30 re-running every trial's prefix).
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
