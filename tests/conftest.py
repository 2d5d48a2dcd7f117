"""Shared test fixtures: small, fast configs and a tiny results set."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny():
    """Keyword overrides for a fast run (lecture task, few epochs)."""
    return {"num_epochs": 6, "num_steps_per_epoch": 3}
