"""The lecture's non-autoregressive sorting policy, batched over a leading `run` axis.

Lecture 17's `Model`: embed the prompt, contract it with one encode matrix per
prompt position into a single vector, expand that with one decode matrix per
response position, and read logits off the (tied) embedding. Every position of
the response is decoded independently of the others.

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
from einops import einsum
from jaxtyping import Float, Int
from torch import Tensor

from sortrl.task import PAD

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
        "decode": torch.stack(decode).requires_grad_(),
    }


def forward(
    params: Params, prompts: Int[Tensor, "batch pos"] | Int[Tensor, "run batch pos"], padded: bool = False
) -> Float[Tensor, "run batch pos vocab"]:
    """Logits of every response position, for every run.

    prompts [batch pos] (shared by all runs) or [run batch pos] (token ids) ->
    logits [run batch pos vocab] (pos = response position). With `padded`,
    prompt positions holding `PAD` (-1) contribute nothing to the encoding, so
    a short prompt is encoded as if the model had only its own positions.
    """
    emb = params["embedding"]
    ids = prompts.clamp(min=0) if padded else prompts
    if prompts.dim() == 2:
        embedded = emb[:, ids]  # [run batch pos dim]
    else:
        embedded = emb[torch.arange(emb.shape[0])[:, None, None], ids]
    if padded:
        embedded = embedded * (prompts != PAD)[..., None]
    encoded = einsum(embedded, params["encode"], "run batch pos d1, run pos d1 d2 -> run batch d2")
    decoded = einsum(encoded, params["decode"], "run batch d2, run pos d2 d1 -> run batch pos d1")
    return einsum(decoded, emb, "run batch pos d1, run vocab d1 -> run batch pos vocab")
