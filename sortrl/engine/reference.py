"""The lecture's algorithm written plainly, one run at a time: a correctness oracle and a speed baseline.

`lecture_loop` is CS336 lecture 17's `run_policy_gradient` with the lecture's
settings (three prompts, vocab 5, dim 10, 10 responses, Adam lr 1e-3, the naive
loss `-(log_probs * deltas).mean()`), one model with `torch.optim.Adam`, no
batching over runs. The parity tests check the engine against it bit for bit;
`make bench` times it beside the engine (the "x plain loop" column).
"""

from __future__ import annotations

import math

import torch
from einops import einsum, rearrange, repeat
from torch import Tensor

from sortrl.engine.deltas import DELTA_MODES
from sortrl.engine.task import inclusion_ordering_reward

LECTURE_PROMPTS = [[1, 0, 2], [3, 2, 4], [1, 2, 3]]


def lecture_loop(
    seed: int, deltas_mode: str, num_epochs: int, steps: int = 10, lr: float = 1e-3
) -> tuple[list[float], list[Tensor]]:
    """Train one run the lecture's way; returns (per-epoch mean rewards, final [embedding, encode, decode])."""
    prompts = torch.tensor(LECTURE_PROMPTS)
    vocab, length, dim, group = 5, 3, 10, 10
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(vocab, dim, generator=gen).requires_grad_()
    enc = (torch.randn(length, dim, dim, generator=gen) / math.sqrt(dim)).requires_grad_()
    dec = (torch.randn(length, dim, dim, generator=gen) / math.sqrt(dim)).requires_grad_()
    opt = torch.optim.Adam([emb, enc, dec], lr=lr)

    def logits() -> Tensor:
        h = einsum(emb[prompts], enc, "b p d1, p d1 d2 -> b d2")
        return einsum(einsum(h, dec, "b d2, p d2 d1 -> b p d1"), emb, "b p d1, v d1 -> b p v")

    rewards_per_epoch = []
    for _ in range(num_epochs):
        with torch.no_grad():
            flat = rearrange(torch.softmax(logits(), dim=-1), "b p v -> (b p) v")
            draws = torch.multinomial(flat, group, replacement=True, generator=gen)
            responses = rearrange(draws, "(b p) t -> b t p", b=len(prompts))
            rewards = inclusion_ordering_reward(prompts, responses[None], torch.ones_like(responses[None]).bool())[0]
            deltas = DELTA_MODES[deltas_mode](rewards[None])[0]
        rewards_per_epoch.append(rewards.mean().item())
        for _ in range(steps):
            log_probs = repeat(torch.log_softmax(logits(), dim=-1), "b p v -> b t p v", t=group)
            log_probs = log_probs.gather(-1, responses[..., None]).squeeze(-1)
            loss = -(log_probs * deltas[..., None]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return rewards_per_epoch, [emb.detach(), enc.detach(), dec.detach()]
