"""Results of the costly statistics kept by the *values* of their arguments, within one process.

A report asks for the same bootstrap interval or permutation p-value more than
once: the findings and the claims ledger compare the same pairs of
configurations, a claim tested against several margins flips the same
differences, and the trap's 0/1 outcomes are often identical across tests
(measured on the committed runs: 43% of the bootstraps and 54 of the 56
sign-flip tests of `claims-trap`, `difficulty` and `ablations` repeated one
already computed). These functions are pure and seeded, so a repeat can take
the stored result: the same numbers, bit for bit, without the resampling.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

MAX_ENTRIES = 4096
"""Results kept per function; the store is emptied when it is full (a report needs a few hundred)."""

F = TypeVar("F", bound=Callable[..., Any])


def _key(value: Any) -> Any:
    """A hashable stand-in for an argument: arrays by dtype, shape and a digest of their bytes."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return ("array", data.dtype.str, data.shape, hashlib.blake2b(data.tobytes(), digest_size=16).digest())
    if isinstance(value, list | tuple):
        return (type(value).__name__, *(_key(v) for v in value))
    if isinstance(value, np.generic):
        return ("scalar", value.dtype.str, value.item())
    return value  # numbers, strings, None and functions (by identity) hash as they are


def _copy(value: Any) -> Any:
    """A caller may write into an array it got back: give each caller its own."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_copy(v) for v in value)
    return value


def by_value(fn: F) -> F:
    """Decorate a pure, seeded function of arrays and plain values: a call with equal arguments (same dtypes,
    shapes and bytes) returns the stored result of the first. `fn.cache_clear()` empties its store."""
    store: dict[Any, Any] = {}
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)  # a default given or left out, by position or by name: one key
        bound.apply_defaults()
        key = _key(tuple(bound.arguments.values()))
        if key not in store:
            if len(store) >= MAX_ENTRIES:
                store.clear()
            store[key] = fn(*args, **kwargs)
        return _copy(store[key])

    wrapper.cache_clear = store.clear  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
