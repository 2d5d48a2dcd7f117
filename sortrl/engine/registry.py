"""Shared helpers for the variant registries (rewards, deltas, losses, KL, recipes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


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


PLUGGED: dict[str, set[str]] = {}
"""Names registered by plug-ins (`sortrl.plugins.register`), by kind: the engine checks what these return."""


def check_plugin_result(kind: str, name: str, fn: Any, value: Any, shape: tuple[int, ...]) -> Any:
    """`value`, what plug-in `name` of `kind` returned, if it is a finite float tensor of `shape`; else `ConfigError`.

    One line naming the plug-in, its function and what came back, so that a worker process's failure reads as
    one line too (a wrong shape would otherwise broadcast and train silently, or fail deep inside the engine).
    Built-in variants are not checked (`PLUGGED` names the plug-ins').
    """
    if name not in PLUGGED.get(kind, ()):
        return value
    if not isinstance(value, torch.Tensor):
        problem = f"a {type(value).__name__}"
    elif not value.is_floating_point():
        problem = f"a tensor of {value.dtype}"
    elif tuple(value.shape) != tuple(shape):
        problem = f"a tensor of shape {list(value.shape)}"
    elif not bool(torch.isfinite(value).all()):
        problem = "a tensor with inf or nan values"
    else:
        return value
    origin = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
    raise ConfigError(
        f"{kind} {name!r} ({origin}) returned {problem}; it must return a finite float tensor of shape {list(shape)}"
    )
