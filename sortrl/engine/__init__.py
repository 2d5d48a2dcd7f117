"""The engine: what one run is and how many runs train at once.

A run is a `RunConfig` (`config`, presets in `recipes`); the task's prompts and
rewards (`task`), the lecture's policy (`model`), the model families
(`models`: the lecture's `linear` and a tiny causal `transformer`), sampling and
rewarding (`rollout`), delta modes (`deltas`), policy losses and KL estimators
(`losses`), the objective they make (`objective`), the optimiser (`optim`),
per-epoch metrics (`metrics`), the trainer (`train`; `autoregressive` is its
second path, for families whose tokens depend on the tokens before them), two
configurations' gradients on one batch for the implementation checks (`paired`) and the
lecture's own loop for parity checks (`reference`). Variants live in registries (`registry`).

May import: `sortrl.engine` only. Nothing here knows about grids, the results
folder or reports.
"""

import gc
import os
import platform

# torch picks its vectorised CPU kernels by the CPU's best instruction set, and AVX-512, AVX2 and the plain
# kernels give different last bits (the same 256 runs end 76192.75 / 76179.21 / 76187.65 in summed reward),
# so results would depend on the machine. sortrl declares one: AVX2, which x86-64 CPUs of the last decade have.
# It must be set before torch is imported (here, the one place sortrl imports it); an explicit
# ATEN_CPU_CAPABILITY wins, and manifests record what torch runs.
CPU_CAPABILITY = "avx2"
_X86 = platform.machine().lower() in ("x86_64", "amd64")
if _X86 and not os.environ.get("ATEN_CPU_CAPABILITY"):
    os.environ["ATEN_CPU_CAPABILITY"] = CPU_CAPABILITY

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


def cpu_capability() -> str:
    """The CPU kernels torch runs in this process (`AVX2`, `AVX512`, `DEFAULT`, ...), as manifests record it."""
    return torch.backends.cpu.get_cpu_capability()


def _check_capability() -> None:
    """Warn once when torch's kernels are not the ones sortrl declares (`CPU_CAPABILITY`, on x86-64): torch was
    imported before sortrl, the CPU lacks them, or ATEN_CPU_CAPABILITY says otherwise."""
    import warnings

    if not _X86:
        return
    found = cpu_capability()
    if found.lower() != CPU_CAPABILITY:
        warnings.warn(
            f"torch runs {found} CPU kernels, not the {CPU_CAPABILITY.upper()} sortrl declares: results may differ "
            f"from other machines' in the last bits (set ATEN_CPU_CAPABILITY={CPU_CAPABILITY} before importing "
            "torch, or import sortrl first)",
            stacklevel=2,
        )


_check_capability()
