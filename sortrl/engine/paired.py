"""Two configurations' loss gradients on the same parameters and the same sampled batch, seed by seed.

An implementation check whose identity is about one step's gradient (on-policy, every importance ratio is exactly
1, so GSPO's sequence ratio and clipping leave the gradient unchanged) is checked where it holds: for each seed,
the `old` configuration's first epochs are trained by the engine, and at each of them both configurations' losses
are built by the engine's own code (`sortrl.engine.train.setup_epoch`, `step_loss`) on `old`'s parameters and the
batch both sample (the draws depend only on the seed; the responses are compared to be sure), and their
gradients compared. Whole trajectories are no place for such a check: a 1-ulp difference in one gradient (another
float order computing the same maths) can change a later sample, and training amplifies it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from sortrl.engine.batch import Batch
from sortrl.engine.config import RunConfig
from sortrl.engine.model import forward
from sortrl.engine.registry import ConfigError
from sortrl.engine.train import setup_epoch, step_loss

EPOCHS = 10
"""Epochs of `old`'s trajectory at which the gradients are compared (the first ones: milliseconds per seed)."""


class Gradients(NamedTuple):
    """Per run ([run] arrays over the compared epochs): the largest |g_new - g_old| over every parameter element,
    the largest |g_old|, and `terms`, the most sampled tokens one gradient element sums over (prompts x responses x
    positions: the length of the longest float32 sum, for the rounding bound)."""

    difference: np.ndarray
    scale: np.ndarray
    terms: int


def paired_gradients(new: list[RunConfig], old: list[RunConfig], epochs: int = EPOCHS) -> Gradients:
    """Compare the loss gradients of `new[i]` and `old[i]` (same seed, same shapes) on `old[i]`'s parameters and
    sampled batch at each of `old`'s first `epochs` epochs (see the module's docstring).

    `ConfigError` when the lists differ in length or seeds, when a configuration is not of a prompt-only family (the
    lecture's `linear`), or when the two sample different responses (they would not be compared on one batch).
    """
    if len(new) != len(old) or [c.seed for c in new] != [c.seed for c in old]:
        raise ConfigError("paired_gradients: new and old must list the same seeds in the same order")
    callers = torch.get_num_threads()
    torch.set_num_threads(1)  # as `train`: one intra-op thread, so a run's sums do not depend on its batch-mates
    try:
        return _paired(new, old, epochs)
    finally:
        torch.set_num_threads(callers)


def _paired(new: list[RunConfig], old: list[RunConfig], epochs: int) -> Gradients:
    a, b = Batch(new), Batch(old)
    if not (a.family.prompt_only and b.family.prompt_only):
        raise ConfigError("paired_gradients: model: only a prompt-only family (linear) is supported")
    difference, scale = torch.zeros(len(new)), torch.zeros(len(new))
    for epoch in range(min(epochs, b.c0.num_epochs)):
        with torch.no_grad():
            for name, tensor in a.params.items():
                tensor.copy_(b.params[name])
        found_a, found_b = _gradients(a, epoch), _gradients(b, epoch)
        (responses_a, grads_a), (responses_b, grads_b) = found_a, found_b
        if not torch.equal(responses_a, responses_b):
            raise ConfigError(f"paired_gradients: epoch {epoch}: the two configurations sampled different responses")
        for g_a, g_b in zip(grads_a, grads_b, strict=True):
            difference = torch.maximum(difference, (g_a - g_b).abs().reshape(len(g_a), -1).amax(dim=1))
            scale = torch.maximum(scale, g_b.abs().reshape(len(g_b), -1).amax(dim=1))
        b.optimizer.step(list(grads_b))
    c0 = b.c0
    terms = len(b.task.train) * c0.num_responses * c0.response_length
    return Gradients(difference.numpy().astype(float), scale.numpy().astype(float), terms)


def _gradients(state: Batch, epoch: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The epoch's sampled responses and the gradient of one inner step's loss (summed over runs: each run's
    gradient is its own), without the update."""
    with torch.no_grad():
        ep = setup_epoch(state, epoch, forward(state.params, state.task.train, state.padded))
    _, run_loss, _, _ = step_loss(state, ep, state.clip(ep.policy.clip_shape()))
    return ep.policy.roll.responses, torch.autograd.grad(run_loss.sum(), list(state.params.values()))
