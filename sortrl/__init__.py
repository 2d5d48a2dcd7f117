"""sortrl: a reproducible ablation harness for GRPO-style policy gradient on CS336 lecture 17's sorting task."""

import gc
import importlib.metadata
import os

# MKL's batched matmul picks code paths by memory alignment, so a run's numbers could depend on its
# position in the batch (last-bit differences). Conditional numerical reproducibility makes them
# exact; it must be set before the process's first matmul, hence before torch is imported here.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

# Importing torch and pandas makes hundreds of thousands of objects, and the cyclic garbage collector
# would scan them over and over meanwhile: without it `import sortrl` takes ~0.3 s less (of ~1.9 s),
# which every sweep worker pays at start-up. Nothing made here is garbage; collection resumes after.
_collecting = gc.isenabled()
gc.disable()
try:
    from sortrl.engine.config import RunConfig
    from sortrl.engine.registry import ConfigError
    from sortrl.engine.train import train
finally:
    if _collecting:
        gc.enable()
    del _collecting

__all__ = ["ConfigError", "RunConfig", "train"]
__version__ = importlib.metadata.version("sortrl")
