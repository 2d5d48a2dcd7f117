"""Adam over stacked per-run parameters, with a per-run learning rate.

Adam is element-wise, so one update over tensors with a leading `run` axis is
exactly each run's own update. This follows torch's single-tensor
`torch.optim.Adam` (the path torch takes on CPU) operation for operation, so a
run matches the lecture's `torch.optim.Adam(model.parameters(), lr)` bit for
bit; the only change is that the step size is a `[run]` tensor (torch's
`addcdiv_` takes one Python number).

`RunFusedAdam` is the same Adam stepped by torch's fused CPU kernel, kept
independent of a run's batch-mates; the autoregressive model families use it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Adam:
    """Adam (Kingma & Ba 2015) with torch's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.

    `params`: leaf tensors whose first axis is `run`; `lr`: `[run]` learning
    rates (any float dtype; the step size is formed in float64, as torch forms
    it from a Python float).
    """

    def __init__(self, params: list[Tensor], lr: Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self._set(params, lr.to(torch.float64))

    def _set(self, params: list[Tensor], lr: Tensor) -> None:
        self.params, self.lr = params, lr
        self.strides = [p.stride() for p in params]
        # one lr for every run (the usual batch): torch's own scalar step, a Python float (no [run] tensor pass)
        self.uniform_lr = float(lr[0]) if len(lr) and bool((lr == lr[0]).all()) else None

    @torch.no_grad()
    def step(self, grads: list[Tensor]) -> None:
        """Apply one update given each parameter's gradient (same shapes as the params; any strides)."""
        self.step_count += 1
        self._update(range(len(self.params)), grads)

    def _update(self, which: range | list[int], grads: list[Tensor]) -> None:
        """torch's single-tensor step on the tensors at `which` (this step's `step_count`)."""
        t = self.step_count
        bias_correction1 = 1 - self.beta1**t
        bias_correction2_sqrt = (1 - self.beta2**t) ** 0.5
        if self.uniform_lr is not None:  # torch: param.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))
            neg_step_size, value = None, -(self.uniform_lr / bias_correction1)
        else:
            neg_step_size, value = (-(self.lr / bias_correction1)).to(torch.float32), 1.0
        for i in which:
            p, stride, g, m, v = self.params[i], self.strides[i], grads[i], self.exp_avg[i], self.exp_avg_sq[i]
            if g.stride() != stride:  # element-wise ops over mixed layouts are several times slower
                g = torch.empty_like(p).copy_(g)
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v.sqrt() / bias_correction2_sqrt).add_(self.eps)
            # addcdiv_(m * s, d) == addcdiv_(m, d, value=s) bit for bit (value * t1 / t2)
            step = m if neg_step_size is None else m * neg_step_size.view(-1, *[1] * (p.dim() - 1))
            p.addcdiv_(step, denom, value=value)

    def keep(self, index: Tensor, params: list[Tensor]) -> None:
        """Restrict the state to the runs at `index`, in that order (to drop diverged runs, or reorder the batch);
        `params` are the new leaves."""
        self._set(params, self.lr[index])
        self.exp_avg = [m.index_select(0, index) for m in self.exp_avg]
        self.exp_avg_sq = [v.index_select(0, index) for v in self.exp_avg_sq]


ALIGN = 16
"""Floats: the widest vector of torch's CPU kernels (AVX-512's 16; a multiple of AVX2's 8)."""


class RunFusedAdam(Adam):
    """The same Adam, stepped by torch's fused CPU kernel (`torch.optim.Adam(fused=True)`'s `torch._fused_adam_`, one
    pass over memory instead of seven): the per-element formula of Kingma & Ba (2015) in torch's fused rounding, not
    the single-tensor path's bits. The autoregressive families train with it (no lecture number to match there).

    A run's update never depends on its batch-mates, as the engine requires. The kernel rounds its vector loop and its
    scalar tail differently, and its tail is the last `numel % vector` elements of the tensor it is given, so:

    - it steps a tensor only when each run's slice holds a multiple of `ALIGN` floats (then every element takes the
      vector loop, wherever its run sits); other tensors take the single-tensor step (`Adam`);
    - with per-run learning rates it steps each maximal block of adjacent runs sharing one (a contiguous slice),
      as the kernel takes one learning rate.

    Tested (tests/test_transformer.py): each run's steps equal torch's own `Adam(fused=True)` on that run alone, bit
    for bit, whatever its mates' learning rates; a transformer run trains bit-identically alone and among mates.
    """

    def _set(self, params: list[Tensor], lr: Tensor) -> None:
        super()._set(params, lr)
        starts = [0, *((lr[1:] != lr[:-1]).nonzero().flatten() + 1).tolist(), len(lr)]
        self.blocks = [(a, b, float(lr[a])) for a, b in zip(starts[:-1], starts[1:], strict=True) if b > a]
        self.fused = [i for i, p in enumerate(params) if math.prod(p.shape[1:]) % ALIGN == 0 and p.is_contiguous()]
        self.rest = [i for i in range(len(params)) if i not in self.fused]

    @torch.no_grad()
    def step(self, grads: list[Tensor]) -> None:
        self.step_count += 1
        self._update(self.rest, grads)
        steps = [torch.tensor(float(self.step_count))] * len(self.fused)
        params, moments = [self.params[i] for i in self.fused], [self.exp_avg[i] for i in self.fused]
        squares, fused_grads = [self.exp_avg_sq[i] for i in self.fused], [grads[i] for i in self.fused]
        for a, b, lr in self.blocks:
            torch._fused_adam_(
                [p[a:b] for p in params], [g[a:b] for g in fused_grads], [m[a:b] for m in moments],
                [v[a:b] for v in squares], [], steps, lr=lr, beta1=self.beta1, beta2=self.beta2, weight_decay=0.0,
                eps=self.eps, amsgrad=False, maximize=False,
            )  # fmt: skip
