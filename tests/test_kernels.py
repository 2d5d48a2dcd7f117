"""The CPU kernels sortrl pins (`sortrl.engine.CPU_CAPABILITY`): same bytes whether the pin or the user sets AVX2, a
warning when torch runs other kernels, and the capability recorded in every manifest."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the pin applies to x86-64 CPUs"
)

TRAIN = """
import json, sortrl
from sortrl.engine import cpu_capability
from sortrl.engine.train import train
from sortrl.engine.config import make_config
configs = [make_config(task="random", prompt_length=5, num_prompts=8, num_epochs=15, loss_mode="clipped", seed=s)
           for s in range(16)]
table = train(configs, workers=1, with_config=False)
print(json.dumps({"capability": cpu_capability(), "loss": table["loss"].tolist(),
                  "reward": table["mean_reward"].tolist()}))
"""


def _run(code: str, capability: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_the_pin_gives_the_bytes_an_explicit_avx2_gives():
    """Unset, sortrl sets AVX2 before torch loads: the same numbers as a user who sets it, whatever the CPU's best."""
    pinned, explicit = (json.loads(_run(TRAIN, c).stdout) for c in (None, "avx2"))
    assert pinned["capability"] == explicit["capability"] == "AVX2"
    assert pinned == explicit


def test_other_kernels_are_warned_once():
    result = _run("import warnings; warnings.simplefilter('always'); import sortrl.engine", "default")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("torch runs DEFAULT CPU kernels, not the AVX2 sortrl declares") == 1


def test_manifests_record_the_kernels():
    from sortrl.study.sweep import MUST_MATCH, _versions, environment

    assert environment()["cpu_capability"] == "AVX2" and environment()["cpu"]
    assert "cpu_capability" in MUST_MATCH and _versions()["cpu_capability"] == "AVX2"
