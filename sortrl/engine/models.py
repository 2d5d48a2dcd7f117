"""Model families (the `model` field): a registry of policies the engine can train, each a small interface.

A family is a `ModelFamily` of three functions (and an optional fourth) over a
leading `run` axis (one row per run of the batch, each run's weights its own):

| function | signature | what |
| --- | --- | --- |
| `init` | `init(generators, configs) -> Params` | each run's parameters from its own `torch.Generator` (and its config), stacked on a leading `run` axis: a dict of leaf tensors |
| `logits` | `logits(params, cfg, prompts, responses) -> [run batch trial pos vocab]` | teacher-forced: the logits of response token t given the prompt and tokens < t, for every t, in one pass |
| `generate` | `generate(params, cfg, prompts, trials, choose) -> [run batch trial pos]` | token by token: token t = `choose(t, logits [run batch trial vocab])` given the prompt and the tokens before t |
| `order` (optional) | `order(cfg, responses) -> [run]` | a run order that makes `logits` on these responses cheaper (the engine reorders its batch by it; speed only) |

`prompts` are `[batch pos]` (shared by the runs) or `[run batch pos]` token ids,
right-padded with `PAD` (-1) when prompt lengths are mixed; `cfg` is the
batch's first `RunConfig` (its shape fields are shared by the batch: `BATCH_KEY`);
vocab is `cfg.num_tokens` (EOS included when `eos` is on). The engine owns every
random draw: `choose` samples by inverting each run's own uniforms
(`sortrl.engine.rollout.invert`) or takes the argmax, so a family never touches
a generator after `init`. The engine derives everything else from these: the
sampling policy's log-probs and entropy at each sampled prefix (log-softmax of
`logits`, tempered), greedy decoding (`generate` with argmax), the KL to a
reference (the reference's `logits` on the same responses), the `sft` loss
(`logits` on the sorted answers). Parameters are trained by one Adam over the
stacked tensors (torch's fused kernel, run by run: `sortrl.engine.optim.RunFusedAdam`);
the loss is a sum over runs, so `logits` must compute each run's row from that
run's parameters and inputs alone (the batch-invariance tests check sortrl's own
families bit for bit).

`prompt_only` families (the lecture's `linear`: every response position is
decoded from the prompt alone) are trained by the engine's folded path
(`sortrl.engine.train`), which is written for the lecture's model; a plug-in
family is autoregressive and trained by `sortrl.engine.autoregressive`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sortrl.engine import model as linear_model
from sortrl.engine import transformer

Params = dict[str, Tensor]


class ModelFamily(NamedTuple):
    """A policy family: `init`, teacher-forced `logits` and token-by-token `generate` (the module docstring)."""

    init: Callable[[Sequence[torch.Generator], Sequence[Any]], Params]
    logits: Callable[[Params, Any, Tensor, Tensor], Tensor]
    generate: Callable[[Params, Any, Tensor, int, transformer.Choose], Tensor]
    prompt_only: bool = False
    """The policy at a response position depends on the prompt only (the lecture's model): the engine's folded path."""
    order: Callable[[Any, Tensor], Tensor] | None = None
    """Optional, for speed only: `order(cfg, responses) -> [run]`, a permutation of the batch's runs that makes
    `logits` on these responses cheaper; the engine reorders its batch by it before an epoch's inner steps (a run's
    numbers do not depend on where it sits, so the results are the same)."""
    fields: tuple[str, ...] = ()
    """The `RunConfig` fields of the model section it reads (the others are reported as ignored)."""
    doc: str = ""
    """One line for `--help`: what the family is and its source."""


def _linear_init(generators: Sequence[torch.Generator], configs: Sequence[Any]) -> Params:
    c0 = configs[0]
    w = c0.response_length
    return linear_model.init_params(generators, c0.num_tokens, c0.embedding_dim, w, w)


def _linear_logits(params: Params, cfg: Any, prompts: Tensor, responses: Tensor) -> Tensor:
    """The lecture model's logits do not depend on the response: the same for every trial."""
    out = linear_model.forward(params, prompts, len(cfg.lengths) > 1)
    return out[:, :, None].expand(-1, -1, responses.shape[2], -1, -1)


def _linear_generate(params: Params, cfg: Any, prompts: Tensor, trials: int, choose: transformer.Choose) -> Tensor:
    out = linear_model.forward(params, prompts, len(cfg.lengths) > 1)  # [run batch pos vocab]
    steps = [choose(t, out[:, :, None, t].expand(-1, -1, trials, -1)) for t in range(out.shape[2])]
    return torch.stack(steps, dim=-1)


MODELS: dict[str, ModelFamily] = {
    "linear": ModelFamily(
        _linear_init,
        _linear_logits,
        _linear_generate,
        prompt_only=True,
        fields=("embedding_dim",),
        doc="the lecture's non-autoregressive model: each response position decoded from the prompt's encoding "
        "(CS336 lecture 17 `Model`)",
    ),
    "transformer": ModelFamily(
        transformer.init,
        transformer.logits,
        transformer.generate,
        order=transformer.order,
        fields=("d_model", "n_heads", "n_layers", "init_scale"),
        doc="a tiny causal transformer over [prompt, SEP, response so far], pre-LayerNorm GPT blocks "
        "(sortrl.engine.transformer)",
    ),
}
"""The model families, by `model` value. The docstring's first line of each is what `--help` shows."""

MODEL_FIELDS = ("embedding_dim", "d_model", "n_heads", "n_layers", "init_scale")
"""The model section's size fields: each family reads some of them (`ModelFamily.fields`)."""
