"""The opt-in fast path (`RunConfig.engine = "fast"`): the same math as the exact path in another float order.

The exact path follows the lecture's arithmetic operation for operation, so the
lecture's numbers come out bit for bit (`tests/test_parity.py`). The fast path
changes two things where the engine spends its time (profile of 1,024 default
runs on one core: Adam's seven element-wise passes 19%, log-softmax forward and
backward 12%; the batched matmuls, 27%, are the same on both paths):

| piece | exact | fast |
| --- | --- | --- |
| Adam | torch's single-tensor `Adam`, one pass per operation (`sortrl.engine.optim`) | torch's fused CPU kernel (`torch.optim.adam.adam(fused=True)`), one pass |
| log-softmax | `torch.log_softmax` and its backward | logits - logsumexp(logits), differentiated by autograd |

Both are element-wise or per row, so a run's numbers should not depend on its
batch-mates, and `tests/test_fast.py` checks one batch. Two cases break it, known
and not fixed yet: with per-run learning rates `FusedAdam` takes the exact step
for the whole batch, and the fused kernel rounds its scalar tail (the last
`numel % 8` floats of a tensor, AVX2) otherwise than its vector loop, so the
batch's last run rounds otherwise than the same run placed earlier (the
transformer's `sortrl.engine.optim.RunFusedAdam` avoids both). Fast runs differ
from the exact path's in the last bits, and training amplifies that: a fast run is not the exact run, only a
run from the same distribution. `tests/test_fast.py` checks that with a
pre-declared equivalence test (TOST over 256 seeds); `make bench` measures the
gain. The ledger's grids use the exact path (the gain is below the 1.5x the
ledger asked before adopting it; docs/engine.md).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adam import adam

from sortrl.engine.optim import Adam

ENGINES: dict[str, str] = {
    "exact": "The lecture's arithmetic, operation for operation: its numbers bit for bit (the default).",
    "fast": "Fused Adam and a log-sum-exp log-softmax: the same math in another float order, statistically "
    "equivalent to exact (tests/test_fast.py), not bit-identical, about 1.2-1.3x faster (make bench).",
}
"""Training paths (`RunConfig.engine`): name -> what it is."""


def log_probs(logits: Tensor, fast: bool) -> Tensor:
    """log softmax over the last axis (vocab), nats: `torch.log_softmax` (exact) or logits - logsumexp (fast)."""
    if not fast:
        return torch.log_softmax(logits, dim=-1)
    return logits - torch.logsumexp(logits, dim=-1, keepdim=True)


class FusedAdam(Adam):
    """`sortrl.engine.optim.Adam` whose step is torch's fused CPU Adam kernel when every run has the same learning
    rate (Kingma & Ba 2015, torch's defaults; the same formula, one pass over memory, other rounding); with per-run
    learning rates it takes the exact step."""

    def _set(self, params: list[Tensor], lr: Tensor) -> None:
        super()._set(params, lr)
        self.state_steps = [torch.tensor(float(self.step_count)) for _ in params]

    @torch.no_grad()
    def step(self, grads: list[Tensor]) -> None:
        if self.uniform_lr is None:
            super().step(grads)
            for s in self.state_steps:
                s.fill_(self.step_count)
            return
        self.step_count += 1
        grads = [
            g if g.stride() == s else torch.empty_like(p).copy_(g) for p, s, g in zip(self.params, self.strides, grads)
        ]
        adam(
            self.params, grads, self.exp_avg, self.exp_avg_sq, [], self.state_steps, fused=True,
            amsgrad=False, beta1=self.beta1, beta2=self.beta2, lr=self.uniform_lr, weight_decay=0.0, eps=self.eps,
            maximize=False,
        )  # fmt: skip
