"""Shared helpers for the variant registries (rewards, deltas, losses, KL, recipes)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar, cast

import torch

F = TypeVar("F", bound=Callable[..., Any])


class ConfigError(ValueError):
    """A field has a bad value; the message is one line naming the field and what is allowed."""


class PluginImportError(ConfigError):
    """A plug-in module a config names cannot be imported (missing, or failing at import)."""


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

BOUNDS: dict[tuple[str, str], tuple[float, float]] = {}
"""The (lowest, highest) value a plug-in declared its results lie in, by (kind, name): a plug-in reward's
`bounds` (`sortrl.plugins.register`); `checked` refuses a result outside them."""

FLOATS = (torch.float32, torch.float64)
"""The dtypes a plug-in may return: sortrl computes in float32 (float64 is exact there too); a half-precision result
(float16, bfloat16) would round the numbers silently (2.3 became 2.30078)."""

FINITE_ONCE = frozenset({"loss_mode", "kl_estimator"})
"""Kinds whose values are checked finite on their first call in a process only: they read the current policy's
log-probs, and once a run diverges those are non-finite (or huge) and so are sortrl's own losses' values; the engine
then drops the run (`status="diverged"`). On the first call the policy is the initial one, so a non-finite value is
the plug-in's."""

_CALLED: set[tuple[str, Any]] = set()
"""(kind, function) of every plug-in called in this process."""

_ALONE: set[tuple[str, Any]] = set()
"""(kind, function) of the plug-ins seen to compute a run alone: a run's row equal to its result on that run alone."""

MIXING_RTOL = 1e-5
"""Differences up to this share of a row's largest value are rounding (a kernel's order of summation), not mixing."""


def checked(
    kind: str, name: str, fn: F, like: int | str = 0, axes: int | None = None, shared: Collection[str] = ()
) -> F:
    """`fn`, the variant `name` of `kind`, itself if it is sortrl's own; if a plug-in's, `fn` with its result checked.

    The result must be a float tensor (`FLOATS`) whose shape is that of the argument `like` (a position or a keyword),
    cut to its first `axes` axes (all when None), finite (on the first call in a process for `FINITE_ONCE` kinds) and
    within the plug-in's declared `BOUNDS`, if any;
    otherwise a `ConfigError`, one line naming the plug-in, its function and what came back (a worker process's
    failure reads as one line too; a wrong shape would otherwise broadcast and train silently, or fail deep
    inside the engine). Every argument but `shared` ones and non-tensors has a leading `run` axis: on calls with
    several runs, until one whose first and last runs' inputs differ, the plug-in is called again on the last run
    alone, and a result that differs from that run's row (by more than `MIXING_RTOL`) is a `ConfigError` too: the
    plug-in mixes the runs of a batch, so a run's numbers would change with its batch-mates (the chunk size).
    sortrl's own variants are not checked (`PLUGGED` names the plug-ins'), at no cost.
    """
    if name not in PLUGGED.get(kind, ()):
        return fn
    bounds = BOUNDS.get((kind, name))

    def call(*args: Any, **kwargs: Any) -> Any:
        value = fn(*args, **kwargs)
        first = (kind, fn) not in _CALLED
        _CALLED.add((kind, fn))
        template = args[like] if isinstance(like, int) else kwargs[like]
        shape = tuple(template.shape[:axes])
        _check_result(kind, name, fn, value, shape, finite=first or kind not in FINITE_ONCE, bounds=bounds)
        if (kind, fn) not in _ALONE and len(template) > 1:
            with torch.no_grad():
                alone = fn(*_last_run(args, ()), **_last_run(kwargs, shared))
            _check_result(kind, name, fn, alone, (1, *shape[1:]), finite=False)
            row, alone = value[-1:].detach(), alone.to(value.dtype)
            scale = float(row.abs().nan_to_num(0, 0, 0).max())
            far = ~torch.isclose(alone, row, rtol=0, atol=MIXING_RTOL * scale, equal_nan=True)
            if bool(far.any()):
                raise ConfigError(
                    f"{kind} {name!r} ({_origin(fn)}) mixes the runs of a batch: its result for a run differs by up "
                    f"to {float((alone - row).abs()[far].max()):.3g} when called on that run alone; it must compute "
                    "each run (the first axis) from that run's inputs only, or a run's numbers change with the runs "
                    "trained beside it"
                )
            if _runs_differ(args, kwargs, shared):  # else alike runs hid mixing (a mean over them): check again
                _ALONE.add((kind, fn))
        return value

    return cast(F, call)


def _check_result(
    kind: str,
    name: str,
    fn: Any,
    value: Any,
    shape: tuple[int, ...],
    finite: bool,
    bounds: tuple[float, float] | None = None,
) -> None:
    within = "" if bounds is None else f" with values in its declared bounds [{bounds[0]:g}, {bounds[1]:g}]"
    if not isinstance(value, torch.Tensor):
        problem = f"a {type(value).__name__}"
    elif value.dtype not in FLOATS:
        problem = f"a tensor of {value.dtype}"
    elif tuple(value.shape) != tuple(shape):
        problem = f"a tensor of shape {list(value.shape)}"
    elif finite and not bool(torch.isfinite(value).all()):
        problem = "a tensor with inf or nan values"
    elif bounds is not None and value.numel() and not bool(((value >= bounds[0]) & (value <= bounds[1])).all()):
        seen = value.detach()[torch.isfinite(value.detach())]
        span = f" (from {float(seen.min()):.4g} to {float(seen.max()):.4g})" if seen.numel() else ""
        problem = f"a tensor with values outside its declared bounds [{bounds[0]:g}, {bounds[1]:g}]{span}"
    else:
        return
    raise ConfigError(
        f"{kind} {name!r} ({_origin(fn)}) returned {problem}; it must return a finite float tensor of shape "
        f"{list(shape)} (float32 or float64){within}"
    )


def _origin(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"


def _runs_differ(args: tuple[Any, ...], kwargs: dict[str, Any], shared: Collection[str]) -> bool:
    """Whether the last run's inputs differ from the first run's (else a run alone shows nothing of mixing)."""
    values = [*args, *(v for k, v in kwargs.items() if k not in shared)]
    parts = [t for v in values for t in (v if _is_named_tuple(v) else (v,))]
    return any(isinstance(t, torch.Tensor) and not torch.equal(t[0], t[-1]) for t in parts)


def _is_named_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _last_run(args: Any, shared: Collection[str]) -> Any:
    """`args` (a tuple or a dict of arguments) cut to the last run: tensors and tuples of tensors but `shared`."""

    def cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value[-1:]
        if _is_named_tuple(value):  # of per-run tensors (a ClipRange)
            return type(value)(*map(cut, value))
        return value

    if isinstance(args, Mapping):
        return {k: v if k in shared else cut(v) for k, v in args.items()}
    return tuple(map(cut, args))
