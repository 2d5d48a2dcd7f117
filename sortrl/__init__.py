"""sortrl: a reproducible ablation harness for GRPO-style policy gradient on CS336 lecture 17's sorting task."""

from sortrl.config import RunConfig
from sortrl.registry import ConfigError
from sortrl.train import train

__all__ = ["ConfigError", "RunConfig", "train"]
__version__ = "0.1.0"
