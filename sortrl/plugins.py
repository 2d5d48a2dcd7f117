"""Your own variant, without editing sortrl: `register` adds a function to one of the variant registries.

A plug-in is a Python module that calls `register` when imported, for example

    # my_variants.py
    import torch
    from sortrl.plugins import register

    @register("deltas_mode", "rank")
    def rank(r):  # [run batch trial] -> [run batch trial]
        ranks = r.argsort(-1).argsort(-1).float()
        return ranks - ranks.mean(-1, keepdim=True)

and is named in the config's `plugins` field: `plugins = ["my_variants"]` in a
grid file, or `sortrl train --plugin my_variants --deltas-mode rank`. sortrl
imports it before checking a config and before training, in every worker
process (loky or dask), so the module must be importable there (on `sys.path`,
e.g. installed, or in the folder the command runs from).

The contract of each kind (shapes use the axes `run batch trial pos vocab`):

| kind | signature | notes |
| --- | --- | --- |
| `deltas_mode` | `fn(rewards [run batch trial], **extras) -> [run batch trial]` | extras by parameter name: `sortrl.engine.deltas.EXTRAS` |
| `loss_mode` | `fn(log_probs, old_log_probs, advantages, clip: ClipRange) -> per-token loss` | flags below |
| `reward` | `fn(prompts [batch pos] or [run batch pos], responses [run batch trial pos], content) -> [run batch trial]` | see `sortrl.engine.task`; optional flag `bounds=(low, high)` |
| `kl_estimator` | `fn(log_probs, ref_log_probs) -> per-token KL estimate (same shape)` | must be >= 0 to be a divergence |
| `loss_agg_mode` | `fn(mask [run batch trial pos], max_len) -> per-token weights omega (same shape)` | also a `kl_loss_agg_mode` and a `critic_loss_agg_mode` |

Every function receives a leading `run` axis (one row per run of the batch being
trained) and must compute each run's row from that run's inputs alone: the
runs of a batch are independent experiments, and a run's numbers must not
change with the runs trained beside it (the chunk size). The engine checks a
plug-in's results (`sortrl.engine.registry.checked`): a result that is not a
finite float tensor (float32 or float64) of the shape above, or that mixes the
runs (a run's row differs from the plug-in's result on that run alone), stops
training with one `ConfigError` line naming the plug-in and its function. A
reward may declare the range its values lie in, `bounds=(low, high)` (as
sortrl's own rewards lie in 0 .. 2L-1, 0 .. L, 0 .. 1): a value outside it is
refused the same way, in training and where the report computes the best and
the uniform random policy's mean reward (`sortrl.engine.task.reward_bounds`).
Functions are called with keyword arguments named as in the table (a reward's
`prompts`, `responses`, `content`; an aggregation's `mask`, `max_len`):
`register` refuses one whose parameters cannot take them.

A model family (`model`) is registered as a `sortrl.engine.models.ModelFamily`
of three functions, all over a leading `run` axis, each run's weights its own:

| function | signature |
| --- | --- |
| `init` | `init(generators, configs) -> params`: a dict of leaf tensors [run ...], run r's from `generators[r]` (its own `torch.Generator`, seeded with its seed) and `configs[r]` |
| `logits` | `logits(params, cfg, prompts, responses [run batch trial pos]) -> [run batch trial pos vocab]`: teacher-forced, entry t from the prompt and `responses[..., :t]` |
| `generate` | `generate(params, cfg, prompts, trials, choose) -> [run batch trial pos]`: token by token, token t = `choose(t, logits [run batch trial vocab])` |

for example

    # my_gru.py
    from sortrl.engine.models import ModelFamily
    from sortrl.plugins import register

    register("model", "gru", ModelFamily(init, logits, generate, fields=("d_model", "n_layers", "init_scale")))

and used as `model = "gru"` (with `plugins = ["my_gru"]`). `prompts` are
[batch pos] or [run batch pos] token ids (right-padded with -1 when lengths
mix); `cfg` is the batch's first config (vocab = `cfg.num_tokens`, response
length = `cfg.response_length`; the `d_model`, `n_heads`, `n_layers` fields are
shared by a batch, `init_scale` may differ per run). The engine owns every draw
after `init` (`choose` inverts the run's own uniforms, or takes the argmax) and
derives the rest from `logits`: log-probs and entropy at each sampled prefix,
the KL to a reference, greedy decoding, the `sft` loss. `logits` must compute
each run's row from its own parameters alone (a run's numbers must not change
with its batch-mates). `fields` names the model fields the family reads (the
others are reported as ignored). A plug-in family is autoregressive: the
engine's folded path (`prompt_only`) is the lecture model's own. Optional, for
speed only: `order(cfg, responses) -> [run]`, a run order that makes `logits`
on those responses cheaper (the engine reorders its batch by it before an
epoch's inner steps; the transformer puts runs of one prefix layout together).

A loss mode declares `linear` (linear in the advantage A), `uses_ratio`
(needs the old policy's log-probs), `clips` (log clip fractions) and, by
default, `foldable=True`: positively homogeneous in A, f(lp, old, c*A) =
c*f(lp, old, A) for c > 0, which lets the engine fold responses into per-token
weights (`sortrl.engine.losses`). A loss without that property registers with
`foldable=False` and is then applied to every sampled token, with that
response's advantage (slower, but exact).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from sortrl.engine.deltas import DELTA_MODES, extras
from sortrl.engine.losses import (
    CRITIC_LOSS_AGG_MODES,
    KL_ESTIMATORS,
    KL_LOSS_AGG_MODES,
    LOSS_AGG_MODES,
    LOSS_MODES,
    LossMode,
)
from sortrl.engine.models import MODELS, ModelFamily
from sortrl.engine.registry import BOUNDS, PLUGGED
from sortrl.engine.task import REWARDS

KINDS = ("deltas_mode", "loss_mode", "reward", "kl_estimator", "loss_agg_mode", "model")
"""What a plug-in can register (the `RunConfig` field that names it)."""

_REGISTRIES: dict[str, list[dict[str, Any]]] = {
    "deltas_mode": [DELTA_MODES],
    "loss_mode": [LOSS_MODES],
    "reward": [REWARDS],
    "kl_estimator": [KL_ESTIMATORS],
    "loss_agg_mode": [LOSS_AGG_MODES, KL_LOSS_AGG_MODES, CRITIC_LOSS_AGG_MODES],
    "model": [MODELS],
}
BUILT_IN: dict[str, frozenset[str]] = {kind: frozenset().union(*r) for kind, r in _REGISTRIES.items()}
"""sortrl's own variants, by kind: a plug-in cannot replace one, whatever its function's `__module__` says."""


def register(kind: str, name: str, fn: Callable[..., Any] | None = None, **flags: Any) -> Any:
    """Add `fn` to the registry of `kind` under `name`; usable as a decorator (`@register(kind, name)`).

    `flags` are the `LossMode` fields of a loss mode (`linear`, `uses_ratio`,
    `clips`, and optionally `supervised`, `foldable`), or a reward's optional
    `bounds=(low, high)` (finite, low <= high: every value it returns must lie in them); other kinds take none.
    Registering the same function again (a module imported twice, a notebook
    cell run again: same module and name) replaces it.
    Raises `ValueError` for an unknown kind, a taken name (one of sortrl's own, `BUILT_IN`, is never replaced,
    whatever the function's `__module__` claims), a delta mode asking
    for an extra the engine does not provide, a reward or aggregation whose parameters cannot take the keyword
    arguments the engine passes (`KEYWORDS`), or flags that do not fit.
    """
    if fn is None:
        return lambda f: register(kind, name, f, **flags)
    if kind not in KINDS:
        raise ValueError(f"register: unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"register: a {kind} needs a non-empty name, got {name!r}")
    bounds = None
    if kind == "reward" and "bounds" in flags:
        bounds = _bounds(name, flags.pop("bounds"))
    if kind != "loss_mode" and flags:
        allowed = " but bounds" if kind == "reward" else ""
        raise ValueError(f"register: a {kind} takes no flags{allowed}, got {', '.join(flags)}")
    entry: Any = fn
    if kind == "loss_mode":
        try:
            entry = LossMode(fn, **flags)
        except TypeError as err:
            raise ValueError(f"register: loss mode {name!r} needs flags linear, uses_ratio, clips ({err})") from None
    if kind == "deltas_mode":
        extras(fn)  # raises ValueError for a parameter the engine cannot provide
    if kind == "model" and not (isinstance(fn, ModelFamily) and not fn.prompt_only):
        raise ValueError(
            f"register: model {name!r} must be a ModelFamily(init, logits, generate) with prompt_only=False (the "
            "folded path is the lecture model's own)"
        )
    if name in BUILT_IN[kind]:
        raise ValueError(f"register: {kind} {name!r} is one of sortrl's own; choose another name")
    if kind in KEYWORDS:
        _check_keywords(kind, name, fn)
    PLUGGED.setdefault(kind, set()).add(name)
    for registry in _REGISTRIES[kind]:
        old = registry.get(name)
        if old is not None and old != entry and _origin(old) != _origin(entry):
            raise ValueError(f"register: {kind} {name!r} is already registered (by {_origin(old)})")
        registry[name] = entry  # a new definition of the same function (a notebook cell run again) replaces it
    if bounds is None:
        BOUNDS.pop((kind, name), None)
    else:
        BOUNDS[(kind, name)] = bounds
    return fn


KEYWORDS = {"reward": ("prompts", "responses", "content"), "loss_agg_mode": ("mask", "max_len")}
"""The keyword arguments the engine calls a plug-in of these kinds with (`sortrl.engine.rollout.per_run`)."""


def _check_keywords(kind: str, name: str, fn: Callable[..., Any]) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C function without a signature: the call will tell
        return
    try:
        signature.bind(**dict.fromkeys(KEYWORDS[kind]))
    except TypeError:
        raise ValueError(
            f"register: {kind} {name!r} must take the keyword arguments {', '.join(KEYWORDS[kind])}; "
            f"its parameters are {signature}"
        ) from None


def _bounds(name: str, bounds: Any) -> tuple[float, float]:
    """A reward's declared `bounds`, checked: two finite numbers, low <= high."""
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        low = high = math.nan
    if isinstance(bounds, str) or not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"register: reward {name!r}: bounds must be two finite numbers (low, high), got {bounds!r}")
    return low, high


def _origin(entry: Any) -> str:
    fn = entry.fn if isinstance(entry, LossMode) else entry.logits if isinstance(entry, ModelFamily) else entry
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
