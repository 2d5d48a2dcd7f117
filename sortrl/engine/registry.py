"""Shared helpers for the variant registries (rewards, deltas, losses, KL, recipes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A field has a bad value; the message is one line naming the field and what is allowed."""


def check_choice(field: str, value: Any, registry: Mapping[str, Any]) -> None:
    """Raise `ConfigError` unless `value` is a key of `registry`, listing the valid keys."""
    if value not in registry:
        raise ConfigError(f"{field}: unknown value {value!r}; valid choices: {', '.join(registry)}")


def lookup(field: str, value: str, registry: Mapping[str, Any]) -> Any:
    """`registry[value]`, or a `ConfigError` that lists the valid keys."""
    check_choice(field, value, registry)
    return registry[value]
