"""sortrl: a reproducible ablation harness for GRPO-style policy gradient on CS336 lecture 17's sorting task.

`from sortrl import RunConfig, train, ConfigError` gives the API; they are imported on first use (with torch,
in `sortrl.engine`), so that `import sortrl` itself is quick: the `sortrl` command starts in `sortrl.__main__`,
which turns a Ctrl-C during those imports into one line.
"""

import importlib
import importlib.metadata
import os
from typing import Any

# MKL's batched matmul picks code paths by memory alignment, so a run's numbers could depend on its
# position in the batch (last-bit differences). Conditional numerical reproducibility makes them
# exact; it must be set before the process's first matmul, hence before torch is imported (sortrl.engine).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

# A sweep's or a report's worker process watches its parent from here, before its slow imports (torch, pandas):
# a parent killed meanwhile then leaves nothing running (sortrl.study.lifeline)
from sortrl.study.lifeline import watch_from_environment  # noqa: E402 -- after the environment it must precede

watch_from_environment()

_API = {"RunConfig": "sortrl.engine.config", "ConfigError": "sortrl.engine.registry", "train": "sortrl.engine.train"}

__all__ = ["ConfigError", "RunConfig", "train"]
__version__ = importlib.metadata.version("sortrl")


def __getattr__(name: str) -> Any:
    """The public API, imported on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'sortrl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value
