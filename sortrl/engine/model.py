"""The lecture's non-autoregressive sorting policy, batched over a leading `run` axis.

Lecture 17's `Model`: embed the prompt, contract it with one encode matrix per
prompt position into a single vector (`encode`), expand that with one decode
matrix per response position, and read logits off the (tied) embedding
(`decode`). Every position of the response is decoded independently of the
others. The `critic` delta mode adds a linear value head on the encoding
(`init_value_head`, `value`).

Parameters (a `Params` dict of leaf tensors):

| name        | shape                      |
| ----------- | -------------------------- |
| `embedding` | [run vocab dim]            |
| `encode`    | [run pos dim dim]  (prompt positions)   |
| `decode`    | [run pos dim dim]  (response positions) |
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from sortrl.engine.task import PAD

Params = dict[str, Tensor]


def init_params(
    generators: Sequence[torch.Generator], vocab: int, dim: int, prompt_length: int, response_length: int
) -> Params:
    """Initialise one model per generator, in the lecture's order.

    Per run, from its own generator: embedding ~ N(0, 1) [vocab dim] (as
    `nn.Embedding`), then encode ~ N(0, 1)/sqrt(dim) [pos dim dim], then
    decode ~ N(0, 1)/sqrt(dim) [pos dim dim]. Drawing from the run's generator
    alone makes a run independent of its batch-mates and equal to the
    lecture's `torch.manual_seed(seed)` model.
    """
    scale = math.sqrt(dim)
    embedding, encode, decode = [], [], []
    for g in generators:
        embedding.append(torch.randn(vocab, dim, generator=g))
        encode.append(torch.randn(prompt_length, dim, dim, generator=g) / scale)
        decode.append(torch.randn(response_length, dim, dim, generator=g) / scale)
    return {
        "embedding": torch.stack(embedding).requires_grad_(),
        "encode": torch.stack(encode).requires_grad_(),
        # stored as [run d2 pos d1] in memory (same values and shape), so `forward` needs no copy to contract it
        "decode": rearrange(torch.stack(decode), "run pos d2 d1 -> run d2 pos d1")
        .contiguous()
        .permute(0, 2, 1, 3)
        .requires_grad_(),
    }


def encode(
    params: Params, prompts: Int[Tensor, "batch pos"] | Int[Tensor, "run batch pos"], padded: bool = False
) -> Float[Tensor, "run batch dim"]:
    """The prompt's encoding, one vector per (run, prompt): sum over prompt positions of embedding @ encode[pos].

    prompts [batch pos] (shared by all runs) or [run batch pos] (token ids). With
    `padded`, prompt positions holding `PAD` (-1) contribute nothing, so a short
    prompt is encoded as if the model had only its own positions.
    """
    emb = params["embedding"]
    runs, dim = emb.shape[0], emb.shape[-1]
    ids = prompts.clamp(min=0) if padded else prompts
    if prompts.dim() == 2:
        embedded = emb.index_select(1, ids.flatten()).view(runs, *ids.shape, dim)  # [run batch pos dim]
    else:
        embedded = emb[torch.arange(runs)[:, None, None], ids]
    if padded:
        embedded = embedded * (prompts != PAD)[..., None]
    # The lecture's einsum as the batched matmul einsum itself dispatches to: [run batch (pos d1)] @ [run (pos d1) d2]
    return torch.bmm(embedded.reshape(runs, embedded.shape[1], -1), params["encode"].reshape(runs, -1, dim))


def decode(params: Params, encoded: Float[Tensor, "run batch dim"]) -> Float[Tensor, "run batch pos vocab"]:
    """Logits of every response position from the encoding: (encoded @ decode[pos]) @ embedding^T (tied)."""
    emb = params["embedding"]
    runs, batch, dim = encoded.shape
    pos = params["decode"].shape[1]
    decoded = torch.bmm(encoded, rearrange(params["decode"], "run pos d2 d1 -> run d2 (pos d1)"))
    logits = torch.bmm(decoded.view(runs, batch * pos, dim), emb.transpose(1, 2))
    return logits.view(runs, batch, pos, -1)


def forward(
    params: Params, prompts: Int[Tensor, "batch pos"] | Int[Tensor, "run batch pos"], padded: bool = False
) -> Float[Tensor, "run batch pos vocab"]:
    """Logits of every response position, for every run: `decode(encode(prompts))`.

    prompts [batch pos] (shared by all runs) or [run batch pos] (token ids) ->
    logits [run batch pos vocab] (pos = response position). See `encode` for `padded`.
    """
    return decode(params, encode(params, prompts, padded))


# --- the critic's value head ---------------------------------------------
def init_value_head(runs: int, dim: int) -> Params:
    """A linear value head per run, zero at the start (so V = 0 until it learns): `weight` [run dim], `bias` [run]."""
    return {"weight": torch.zeros(runs, dim, requires_grad=True), "bias": torch.zeros(runs, requires_grad=True)}


def value(head: Params, encoded: Float[Tensor, "run batch dim"]) -> Float[Tensor, "run batch"]:
    """V(prompt) = encoding . weight + bias, in reward units (the `critic` delta mode's baseline)."""
    return torch.einsum("rbd,rd->rb", encoded, head["weight"]) + head["bias"][:, None]
