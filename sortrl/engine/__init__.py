"""The engine: what one run is and how many runs train at once.

A run is a `RunConfig` (`config`, presets in `recipes`); the task's prompts and
rewards (`task`), the lecture's policy (`model`), sampling and rewarding
(`rollout`), delta modes (`deltas`), policy losses and KL estimators
(`losses`), the objective they make (`objective`), the optimiser (`optim`),
per-epoch metrics (`metrics`), the trainer (`train`) and the lecture's own loop
for parity checks (`reference`). Variants live in registries (`registry`).

May import: `sortrl.engine` only. Nothing here knows about grids, the results
folder or reports.
"""

import gc

# Importing torch and pandas makes hundreds of thousands of objects, and the cyclic garbage collector
# would scan them over and over meanwhile: without it these imports take ~0.3 s less (of ~1.9 s),
# which every sweep worker pays at start-up. Nothing made here is garbage; collection resumes after.
_collecting = gc.isenabled()
gc.disable()
try:
    import pandas  # noqa: F401
    import torch  # noqa: F401
finally:
    if _collecting:
        gc.enable()
    del _collecting
