"""sortrl: a reproducible ablation harness for GRPO-style policy gradient on CS336 lecture 17's sorting task."""

import os

# MKL's batched matmul picks code paths by memory alignment, so a run's numbers could depend on its
# position in the batch (last-bit differences). Conditional numerical reproducibility makes them
# exact; it must be set before the process's first matmul, hence before torch is imported here.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from sortrl.config import RunConfig  # noqa: E402
from sortrl.registry import ConfigError  # noqa: E402
from sortrl.train import train  # noqa: E402

__all__ = ["ConfigError", "RunConfig", "train"]
__version__ = "0.1.0"
