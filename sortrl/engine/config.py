"""`RunConfig`: everything that defines one training run, defaults = the lecture.

One frozen dataclass; variants by `dataclasses.replace`. Every field that
changes the math has a docstring (the string literal under it), in the style of
TRL's `GRPOConfig`. `RunConfig.run_id` is a stable hash of all fields, used as
the run's key on disk.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib
import inspect
import json
import math
import numbers
import os
import pathlib
import sys
from dataclasses import dataclass
from typing import Any

from sortrl.engine.deltas import DELTA_MODES, REWARD_TO_GO_MODES, extras
from sortrl.engine.fast import ENGINES
from sortrl.engine.losses import (
    CRITIC_LOSS_AGG_MODES,
    IMPORTANCE_SAMPLING_LEVELS,
    KL_ESTIMATORS,
    KL_LOSS_AGG_MODES,
    LOSS_AGG_MODES,
    LOSS_MODES,
)
from sortrl.engine.models import MODEL_FIELDS, MODELS
from sortrl.engine.recipes import RECIPES
from sortrl.engine.registry import ConfigError, PluginImportError, check_choice, lookup
from sortrl.engine.task import REWARDS, TASKS

LECTURE_PROMPTS: tuple[tuple[int, ...], ...] = ((1, 0, 2), (3, 2, 4), (1, 2, 3))


@dataclass(frozen=True)
class RunConfig:
    """One run of policy-gradient training on the sorting task (CS336 lecture 17)."""

    # --- task -----------------------------------------------------------
    task: str = "lecture"
    """Prompt set: `lecture` uses `prompts`; `random` draws prompts from `task_seed`."""
    prompts: tuple[tuple[int, ...], ...] = LECTURE_PROMPTS
    """Training prompts of the `lecture` task, [batch pos]; each row is a list of numbers to sort."""
    vocab_size: int | None = None
    """Numbers are 0 .. vocab_size-1. None: max prompt value + 1 (`lecture`, the lecture's rule) or 10 (`random`)."""
    prompt_length: int | tuple[int, ...] = 3
    """`random` task: numbers per prompt; a list mixes lengths in one set (shorter prompts padded and masked)."""
    num_prompts: int = 32
    """`random` task: training prompts (split evenly over the lengths of `prompt_length`)."""
    num_eval_prompts: int = 16
    """`random` task: held-out prompts, never in the training set (exact duplicates removed)."""
    allow_repeats: bool = True
    """`random` task: may a prompt repeat a number?"""
    task_seed: int = 0
    """`random` task: seeds the prompt draw, separate from `seed`, so every run of a grid sees the same prompts."""
    prompts_per_epoch: int | None = None
    """Prompts sampled (without replacement, from the run's generator) per epoch; None: all training prompts."""
    eval_every: int = 1
    """Held-out evaluation every this many epochs (and after the last); only when there are held-out prompts."""
    reward: str = "inclusion_ordering"
    """Reward function of a response (reward points)."""
    length_penalty: float = 0.0
    """Reward minus `length_penalty * response_length` (Dr. GRPO notes' remedy for length bias)."""
    eos: bool = False
    """Add an end-of-sequence token (id = vocab_size): a response ends at its first EOS."""
    overlong_buffer_len: int = 0
    """DAPO soft overlong punishment (verl `overlong_buffer.len`): a response of n action tokens (EOS included) gets
    min(0, -(n - (L - buffer)) / buffer * `overlong_penalty_factor`) added to its reward, L = max response length; 0 turns
    it off. On this task the sorted answer has the maximum length; without EOS every response does (a constant shift)."""
    overlong_penalty_factor: float = 1.0
    """DAPO overlong penalty at the maximum length (verl `overlong_buffer.penalty_factor`)."""

    # --- model ----------------------------------------------------------
    model: str = "linear"
    """Policy family (`sortrl.engine.models.MODELS`): `linear`, the lecture's non-autoregressive model (every response
    position decoded from the prompt alone); `transformer`, a tiny causal transformer that reads the prompt, a
    separator and the response so far, so each token is drawn conditioned on the tokens before it."""
    embedding_dim: int = 10
    """`linear` model: width of the token embedding and of the per-position encode/decode matrices."""
    d_model: int = 16
    """`transformer`: width of the residual stream (token and position embeddings, attention; the MLP is 4x)."""
    n_heads: int = 2
    """`transformer`: attention heads per layer (each d_model / n_heads wide; must divide d_model)."""
    n_layers: int = 1
    """`transformer`: pre-LayerNorm blocks (attention then MLP, each added to the residual stream)."""
    init_scale: float = 4.75
    """`transformer`: std of the initial logits (output layer ~ N(0, init_scale^2 / d_model) on a LayerNorm'd stream).
    It sets the initial policy's entropy, a confounder of trap results: the default 4.75 gives 0.42 nats per action
    token at the start (mean over seeds 0-255, lecture prompts), matching the linear model's 0.42; 1.0 gives 1.31."""

    # --- sampling and optimisation --------------------------------------
    num_epochs: int = 100
    """Outer iterations; each samples fresh responses once."""
    num_steps_per_epoch: int = 10
    """Inner Adam steps on the same responses (off-policy after the first)."""
    num_responses: int = 10
    """Responses sampled per prompt (the group size G; axis `trial`)."""
    learning_rate: float = 1e-3
    """Adam learning rate (betas 0.9/0.999, eps 1e-8, as torch's defaults)."""
    seed: int = 0
    """Seeds the run's own `torch.Generator` (weights, then one multinomial per epoch)."""
    temperature: float = 1.0
    """Sampling temperature T (TRL `temperature`): responses from softmax(logits / T), and the log-probs of the loss,
    the ratio, the KL and the entropy are those of that tempered policy, as in TRL. The greedy policy is unchanged."""

    # --- advantages -------------------------------------------------------
    deltas_mode: str = "rewards"
    """How a group's rewards become deltas (advantages)."""
    filter_zero_std_groups: bool = False
    """DAPO dynamic sampling: prompts whose responses all got one reward leave the loss (policy, KL and entropy
    terms) and its normaliser."""
    max_num_gen_batches: int = 1
    """DAPO dynamic sampling (verl `filter_groups.max_num_gen_batches`), with `filter_zero_std_groups`: a prompt whose
    responses all got one reward is sampled again (a new group, from the run's generator), up to this many groups
    in all, until one has a reward spread; 1 only drops such prompts. No effect without `filter_zero_std_groups`.
    verl's DAPO trainer instead fills its batch with groups of new prompts and raises after this many generation
    batches; here the epoch trains on the prompts kept (warned; an epoch that keeps none is warned per run)."""
    critic_learning_rate: float = 1e-2
    """Adam learning rate of the value head of the `critic` delta mode (PPO's critic; verl `critic.optim.lr`)."""
    critic_loss_agg_mode: str = "response-mean"
    """How the `critic`'s value loss is aggregated: `response-mean` (sortrl's form) averages it over every response
    of the epoch, prompts the zero-std filter dropped included; `actor` aggregates the per-token loss over the loss
    tokens with `loss_agg_mode`, as verl's critic does by default; a `loss_agg_mode` value, that way (verl
    `critic.loss_agg_mode`)."""
    cliprange_value: float | None = None
    """Value clipping of the `critic` (verl `critic.cliprange_value`, whose default is 0.5): loss 0.5 max((V - R)^2,
    (clip(V, V_old - c, V_old + c) - R)^2), V_old the value when the epoch's responses were sampled (verl
    `compute_value_loss`). None: unclipped, sortrl's form."""

    # --- policy loss ----------------------------------------------------
    loss_mode: str = "naive"
    """Policy loss per token (or the supervised `sft` reference)."""
    epsilon: float = 0.2
    """Clip range below 1 (`clipped`): ratio clipped to [1 - epsilon, 1 + epsilon_high]. The lecture used 0.01."""
    epsilon_high: float | None = None
    """Clip range above 1 (DAPO clip-higher); None means equal to `epsilon`."""
    clip_ratio_c: float | None = None
    """Dual-clip PPO bound (verl `clip_ratio_c`, > 1): loss of a negative-advantage term at most -A * c. None: off."""
    importance_sampling_level: str = "token"
    """Where the importance ratio lives: per token (PPO/GRPO) or per response (GSPO)."""
    loss_agg_mode: str = "token-mean"
    """How per-token losses are averaged (verl names); `token-mean` at fixed length is the lecture's mean."""
    entropy_coeff: float = 0.0
    """Entropy bonus (verl `actor.entropy_coeff`): loss = policy loss - entropy_coeff * entropy, the per-token entropy
    of the (tempered) policy aggregated with `loss_agg_mode` over the loss tokens, as verl does; 0 turns it off.
    TRL's `entropy_coef` always takes the token mean (the same at `token-mean`)."""

    # --- KL penalty -----------------------------------------------------
    kl_penalty: float = 0.0
    """Coefficient beta of the KL(policy || reference) penalty (TRL `beta`, verl `kl_loss_coef`); 0 turns it off."""
    kl_estimator: str = "k3"
    """Per-token KL estimator (Schulman): `k1`, `k2`, `k3` (the lecture's, TRL's and verl's `low_var_kl`)."""
    kl_loss_agg_mode: str | None = None
    """How the per-token KL is aggregated: None follows `loss_agg_mode` (verl's `agg_loss`; TRL adds beta * KL per token
    before aggregating), so beta means what it means there; `lecture` sums over positions and averages over responses
    (L times the token mean at length L)."""
    use_kl_in_reward: bool = False
    """verl `algorithm.use_kl_in_reward`: subtract beta * (the response's summed per-token KL at sampling time) from its
    reward before deltas, instead of adding the KL to the loss. The estimator is `kl_estimator` and beta `kl_penalty`
    (verl's own defaults there are k1, `algorithm.kl_penalty: kl`, and 0.001). With `critic`, `remax` or
    `reinforce_plus_plus` verl's return at token t holds only the KL of tokens >= t (warned; docs/variants.md)."""
    use_bias_correction_kl: bool = False
    """TRL `use_bias_correction_kl`: multiply the per-token KL in the loss by the importance ratio of the loss's level,
    pi / pi_old per token, or the response's GSPO ratio s at `importance_sampling_level = "sequence"`, as TRL does.
    TRL 1.16's default is True; False is verl's form and DeepSeekMath's (the `grpo` recipe's)."""
    compute_ref_model_period: int = 10
    """Epochs between reference-policy refreshes; 0 keeps the initial policy as the reference."""

    # --- the training path ------------------------------------------------
    engine: str = "exact"
    """`exact`: the lecture's arithmetic, bit for bit. `fast`: fused Adam and a log-sum-exp log-softmax, the same math
    in another float order (statistically equivalent, not bit-identical; `sortrl.engine.fast`). Opt-in, never for
    lecture parity; the ledger's grids use `exact`. The linear model's choice: an autoregressive family has no lecture
    number to match and always steps with torch's fused Adam (`sortrl.engine.optim.RunFusedAdam`)."""

    # --- bookkeeping ----------------------------------------------------
    recipe: str | None = None
    """Name of the preset (`sortrl.engine.recipes`) this config was built from, a label only."""
    plugins: tuple[str, ...] = ()
    """Python modules imported before the config is checked and before training (in every worker), so a delta mode,
    loss, reward or KL estimator they register (`sortrl.engine.registry.register`) can be used by name."""

    def __post_init__(self) -> None:
        _normalise(self)
        load_plugins(self.plugins)
        validate(self)

    # --- derived quantities -------------------------------------------
    @property
    def num_values(self) -> int:
        """Number of number tokens (the resolved `vocab_size`); EOS excluded."""
        if self.vocab_size is not None:
            return self.vocab_size
        return max(max(p) for p in self.prompts) + 1 if self.task == "lecture" else 10

    @property
    def num_tokens(self) -> int:
        """Size of the model's vocabulary: `num_values`, plus one id (the EOS, = num_values) when `eos` is on."""
        return self.num_values + int(self.eos)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Prompt lengths of the task (one entry unless lengths are mixed)."""
        if self.task == "lecture":
            return (len(self.prompts[0]),)
        return self.prompt_length if isinstance(self.prompt_length, tuple) else (self.prompt_length,)

    @property
    def response_length(self) -> int:
        """Maximum response length = longest prompt (the model decodes one token per prompt position)."""
        return max(self.lengths)

    @property
    def clip_high(self) -> float:
        """The upper clip range actually used: `epsilon_high`, else `epsilon`."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def run_steps(self) -> int:
        """Inner Adam steps this run trains: `num_epochs` x `num_steps_per_epoch` (the unit of every speed figure)."""
        return self.num_epochs * self.num_steps_per_epoch

    @property
    def memory_bytes(self) -> int:
        """Estimated peak memory of training this run in a batch, bytes: what it adds to the process's resident size.

        Calibrated against measurements (the peak resident size `train` adds, `tests/test_config.py` keeps three
        within 1.5x), in float32 (4 B) copies of
        - the parameters (vocab x dim + 2 x length x dim^2): 10, for the tensors themselves, their gradients, Adam's
          two moments and the update's temporaries, and the allocator's freed but kept blocks (large models: 7.5 to
          13 copies measured; above 32 MB per tensor the allocator returns them, and 6 copies are measured);
        - each sampled response (prompts x responses): 2 x length x vocab (its one-hot rows), 3 x length (tokens,
          masks, weights) and 30 (rewards, deltas, lengths and their like);
        - the epoch's log-probabilities (prompts x length x vocab): 7;
        plus the reward's comparisons of a response's tokens with its prompt's (length^2 B each, for a moment) and
        1,100 B per epoch (the per-epoch history and the returned table's row). An estimate to refuse impossible
        configs before allocating, not a promise. An autoregressive model (`transformer`) counts its own parameters
        (5 copies) and per-token activations instead, each fitted by least squares to the peak resident memory of five
        trainings (1,024, 256 and 512 default runs, 64 runs of d_model 64 x 2 layers, one of d_model 128 x 4 layers:
        both factors came out at 0.51 of the former guess, which was 1.5-2x high); `tests/test_config.py` keeps three
        within 1.5x.
        """
        vocab, dim, length = self.num_tokens, self.embedding_dim, self.response_length
        prompts = _prompts_per_epoch(self) + (self.num_eval_prompts if self.task == "random" else 0)
        responses = prompts * self.num_responses
        if not MODELS[self.model].prompt_only:  # 5 copies of the parameters (tensors, gradients, Adam's moments, a
            # temporary), per response token the activations autograd keeps (~10 d + 4 heads x W floats per block, 3
            # copies) and ~5 log-prob rows: fitted to five measurements (see the docstring)
            d, blocks = self.d_model, self.n_layers
            params = (vocab + 1) * d + 2 * length * d + blocks * (12 * d * d + 4 * d) + 2 * d + d * vocab
            per_token = 3 * blocks * (10 * d + 4 * self.n_heads * length) + 5 * vocab
            floats = 5 * params + responses * (length * per_token + 3 * length + 30)
            return 4 * floats + responses * length * length + 1_100 * self.num_epochs
        floats = 10 * (vocab * dim + 2 * length * dim * dim) + responses * (2 * length * vocab + 3 * length + 30)
        floats += 7 * prompts * length * vocab
        return 4 * floats + responses * length * length + 1_100 * self.num_epochs

    @property
    def kl_description(self) -> str:
        """What the KL coefficient means for this config, in words, and in whose units (`sortrl recipes` shows it)."""
        if not self.kl_penalty:
            return "no KL"
        ref = (
            "the initial policy"
            if self.compute_ref_model_period == 0
            else (f"the policy of every {self.compute_ref_model_period}th epoch")
        )
        head = f"beta {self.kl_penalty:g} x {self.kl_estimator} KL to {ref}"
        if self.use_kl_in_reward:
            return (
                f"{head}, summed over the response's tokens and subtracted from its reward (verl use_kl_in_reward, "
                "whose own default is k1 with beta 0.001)"
            )
        agg = self.kl_loss_agg_mode or self.loss_agg_mode
        if agg == "lecture":
            return f"{head}, added to the loss summed over positions (the lecture's: L times the TRL/verl token mean)"
        peer = (
            "times pi/pi_old, so beta means what it means in TRL (use_bias_correction_kl=True, its default); verl has "
            "no such factor"
            if self.use_bias_correction_kl
            else "so beta means what it means in verl, and in TRL with use_bias_correction_kl=False (TRL's default, "
            "True, multiplies the KL by pi/pi_old)"
        )
        return f"{head}, added to the loss aggregated like it ({agg}), {peer}"

    @functools.cached_property
    def run_id(self) -> str:
        """Stable 16-hex-digit hash of every field (same config -> same id, on any machine), and of the source code of
        its plug-ins (`plugin_digest`): a changed plug-in makes new runs, it does not resume the old ones."""
        return run_id_of(self.to_dict())

    # --- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-ready dict (`plain` values: prompts as lists; None values kept)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of `to_dict`; unknown keys raise `ConfigError` listing the valid ones."""
        check_fields(data)
        return cls(**data)


ADDED_FIELDS: dict[str, Any] = {
    "critic_loss_agg_mode": "response-mean",
    "cliprange_value": None,
    "model": "linear",
    "d_model": 16,
    "n_heads": 2,
    "n_layers": 1,
    "init_scale": 4.75,
    "engine": "exact",
}
"""Fields added after results were stored, each with the value that keeps the behaviour from before it. At that value
a field is left out of the run id, so every stored run keeps its id; at any other value it is hashed like the rest.
A new field goes here with its default (which must keep the old behaviour); this value never changes."""


def run_id_of(fields: dict[str, Any]) -> str:
    """The `RunConfig.run_id` of the config whose `to_dict()` is `fields` (so a grid hashes seeds without configs).

    With plug-ins, the hash covers their modules' source too (`plugin_digest`); without, it is the fields' alone.
    A field of `ADDED_FIELDS` at its listed value is left out.
    """
    fields = {k: v for k, v in fields.items() if k not in ADDED_FIELDS or v != ADDED_FIELDS[k]}
    if fields.get("plugins"):
        fields = {**fields, "plugin_sources": plugin_digest(tuple(fields["plugins"]))}
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.cache
def plugin_digest(modules: tuple[str, ...]) -> str:
    """SHA-256 of the source files of plug-in `modules` (imported by `load_plugins`), read once per process.

    Part of a run's identity: editing a plug-in changes the run ids of the runs that use it, so a sweep
    retrains them and a report does not count the old ones. A module without a source file counts by name.
    """
    load_plugins(modules)
    digest = hashlib.sha256()
    for name in sorted(modules):
        path = getattr(sys.modules[name], "__file__", None)
        digest.update(name.encode() + b"\0" + (pathlib.Path(path).read_bytes() if path else b"") + b"\0")
    return digest.hexdigest()[:16]


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunConfig))

CHOICES: dict[str, dict[str, Any]] = {
    "task": TASKS,
    "reward": REWARDS,
    "deltas_mode": DELTA_MODES,
    "loss_mode": LOSS_MODES,
    "loss_agg_mode": LOSS_AGG_MODES,
    "kl_estimator": KL_ESTIMATORS,
    "kl_loss_agg_mode": KL_LOSS_AGG_MODES,
    "critic_loss_agg_mode": CRITIC_LOSS_AGG_MODES,
    "importance_sampling_level": IMPORTANCE_SAMPLING_LEVELS,
    "engine": ENGINES,
    "model": MODELS,
}
"""Fields whose value is a key of a registry, and that registry."""


def choice_docs(field: str) -> dict[str, str]:
    """Each value of choice field `field` with the first line of its registry entry's docstring (formula and source)."""
    out = {}
    for name, entry in CHOICES[field].items():
        if isinstance(entry, str):
            doc = entry
        elif getattr(entry, "doc", ""):  # a model family
            doc = entry.doc
        else:
            doc = inspect.getdoc(getattr(entry, "fn", entry)) or ""
        out[name] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def field_docs() -> dict[str, str]:
    """Each `RunConfig` field's docstring (the string literal under it), for `--help` and the docs."""
    tree = ast.parse(inspect.getsource(RunConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    return docs


def plain(value: Any) -> Any:
    """A config value in its JSON/TOML form: tuples (prompts, mixed prompt lengths) as lists, recursively.

    The one normalisation of config values for storage and display; `RunConfig`
    turns such values back into its declared types (`_normalise`).
    """
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_fields(data: dict[str, Any]) -> None:
    """Raise `ConfigError` if `data` has a key that is not a `RunConfig` field."""
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r}; valid fields: {', '.join(FIELD_NAMES)}")


def _normalise(cfg: RunConfig) -> None:
    """Coerce TOML/JSON-friendly types (lists, ints for floats) to the declared ones."""
    set_ = object.__setattr__
    try:
        set_(cfg, "prompts", tuple(tuple(_integer(x) for x in p) for p in cfg.prompts))
    except (TypeError, ValueError):
        raise ConfigError("prompts: must be a list of lists of integers, e.g. [[1, 0, 2], [3, 2, 4]]") from None
    if isinstance(cfg.prompt_length, (list, tuple)):
        try:
            lengths = tuple(_integer(x) for x in cfg.prompt_length)
        except (TypeError, ValueError):
            raise ConfigError("prompt_length: must be an integer or a list of integers, e.g. [3, 4]") from None
        if not lengths:
            raise ConfigError("prompt_length: an empty list; give an integer or a list of integers, e.g. [3, 4]")
        set_(cfg, "prompt_length", lengths[0] if len(lengths) == 1 else lengths)
    if not isinstance(cfg.plugins, (list, tuple)) or not all(isinstance(m, str) and m for m in cfg.plugins):
        raise ConfigError(f"plugins: must be a list of importable module names, got {cfg.plugins!r}")
    set_(cfg, "plugins", tuple(cfg.plugins))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if f.type.startswith("float"):
            set_(cfg, f.name, float(value))
        elif f.type.startswith("int") and isinstance(value, numbers.Integral):
            set_(cfg, f.name, int(value))


def _integer(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(x)
    return int(x)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}

MAX_SEED = 2**64 - 2**40 - 1
"""Largest `seed`: held-out sampling seeds a generator with seed + 2^40, and torch seeds are 64-bit."""

MAX_TASK_SEED = 10**15
"""Largest `task_seed`: a prompt length's stream is seeded task_seed * 1000 + length, within 64 bits."""


def _prompts_per_epoch(cfg: RunConfig) -> int:
    total = len(cfg.prompts) if cfg.task == "lecture" else cfg.num_prompts
    return total if cfg.prompts_per_epoch is None else min(total, cfg.prompts_per_epoch)


def physical_memory() -> int:
    """This machine's physical memory, bytes (`os.sysconf`; 2^40 where it cannot say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**40


def _largest_cost(cfg: RunConfig) -> str:
    """The size field that most exceeds its default, to name in a memory error."""
    sizes = ("num_epochs", "num_responses", "vocab_size", "embedding_dim", "prompt_length", "num_prompts")
    defaults = RunConfig.__dataclass_fields__
    ratio = {}
    for name in sizes:
        value, default = getattr(cfg, name), defaults[name].default
        value = max(value) if isinstance(value, tuple) else value
        default = 5 if default is None else default
        ratio[name] = (value or 0) / default
    return max(ratio, key=ratio.get)


def validate(cfg: RunConfig) -> None:
    """Check every field; raise `ConfigError` with one line naming the bad field."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        base = f.type.split(" |")[0]
        if f.name == "prompt_length":
            continue  # int or a list of ints, checked below
        if base in _TYPES and not (value is None and "None" in f.type):
            ok = isinstance(value, _TYPES[base]) and not (base != "bool" and isinstance(value, bool))
            if not ok:
                raise ConfigError(f"{f.name}: expected {base}, got {value!r}")
    if not cfg.prompts or not all(cfg.prompts):
        raise ConfigError("prompts: need at least one non-empty prompt")
    if len({len(p) for p in cfg.prompts}) != 1:
        raise ConfigError("prompts: all prompts must have the same length")
    if cfg.task == "lecture" and len(cfg.prompts[0]) < 2:
        raise ConfigError(f"prompts: a prompt needs at least 2 numbers to sort, got {list(cfg.prompts[0])}")
    if cfg.task == "lecture" and cfg.vocab_size is None and cfg.num_values < 2:
        raise ConfigError(
            f"prompts: their numbers span a vocabulary of {cfg.num_values} (largest + 1); set vocab_size >= 2"
        )
    if min(min(p) for p in cfg.prompts) < 0:
        raise ConfigError("prompts: numbers must be >= 0")
    if cfg.vocab_size is not None and cfg.vocab_size < 2:
        raise ConfigError(f"vocab_size: must be >= 2 (or unset), got {cfg.vocab_size}")
    if cfg.task == "lecture" and cfg.num_values <= max(max(p) for p in cfg.prompts):
        raise ConfigError(f"vocab_size: must exceed the largest prompt number, got {cfg.vocab_size}")
    if not isinstance(cfg.prompt_length, (int, tuple)) or min(cfg.lengths) < 2:
        raise ConfigError(f"prompt_length: must be an integer >= 2 or a list of them, got {cfg.prompt_length!r}")
    if not cfg.allow_repeats and cfg.task == "random" and max(cfg.lengths) > cfg.num_values:
        raise ConfigError(f"prompt_length: without repeats a prompt needs at most vocab_size={cfg.num_values} numbers")
    if cfg.prompts_per_epoch is not None and cfg.prompts_per_epoch < 1:
        raise ConfigError(f"prompts_per_epoch: must be >= 1 (or unset for all), got {cfg.prompts_per_epoch}")
    for name, registry in CHOICES.items():
        if not (name == "kl_loss_agg_mode" and cfg.kl_loss_agg_mode is None):
            check_choice(name, getattr(cfg, name), registry)
    positive = {
        "num_prompts": cfg.num_prompts,
        "eval_every": cfg.eval_every,
        "embedding_dim": cfg.embedding_dim,
        "num_epochs": cfg.num_epochs,
        "num_steps_per_epoch": cfg.num_steps_per_epoch,
        "num_responses": cfg.num_responses,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "n_layers": cfg.n_layers,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    if not (math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0):
        raise ConfigError(f"learning_rate: must be a finite number > 0, got {cfg.learning_rate}")
    if "n_heads" in MODELS[cfg.model].fields and cfg.d_model % cfg.n_heads:
        raise ConfigError(
            f"n_heads: must divide d_model={cfg.d_model} (each head d_model / n_heads wide), got {cfg.n_heads}"
        )
    for name in (
        "epsilon",
        "epsilon_high",
        "kl_penalty",
        "length_penalty",
        "entropy_coeff",
        "overlong_penalty_factor",
        "init_scale",
    ):
        value = getattr(cfg, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name}: must be a finite number >= 0, got {value}")
    if cfg.cliprange_value is not None and not (math.isfinite(cfg.cliprange_value) and cfg.cliprange_value > 0):
        raise ConfigError(f"cliprange_value: must be a finite number > 0 (or unset), got {cfg.cliprange_value}")
    if cfg.clip_ratio_c is not None and not (math.isfinite(cfg.clip_ratio_c) and cfg.clip_ratio_c > 1):
        raise ConfigError(f"clip_ratio_c: must be a finite number > 1 (or unset), got {cfg.clip_ratio_c}")
    for name in ("temperature", "critic_learning_rate"):
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) > 0):
            raise ConfigError(f"{name}: must be a finite number > 0, got {getattr(cfg, name)}")
    if not 0 <= cfg.overlong_buffer_len <= cfg.response_length:
        raise ConfigError(
            f"overlong_buffer_len: must be between 0 (off) and the max response length {cfg.response_length}, "
            f"got {cfg.overlong_buffer_len}"
        )
    if cfg.max_num_gen_batches < 1:
        raise ConfigError(f"max_num_gen_batches: must be >= 1, got {cfg.max_num_gen_batches}")
    if cfg.compute_ref_model_period < 0:
        raise ConfigError(f"compute_ref_model_period: must be >= 0, got {cfg.compute_ref_model_period}")
    for name in ("seed", "task_seed", "num_eval_prompts"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}: must be >= 0, got {getattr(cfg, name)}")
    for name, top in (("seed", MAX_SEED), ("task_seed", MAX_TASK_SEED)):
        if getattr(cfg, name) > top:
            raise ConfigError(f"{name}: must be at most {top:,} (generator seeds are 64-bit), got {getattr(cfg, name)}")
    need = cfg.memory_bytes
    if need > physical_memory():
        raise ConfigError(
            f"{_largest_cost(cfg)}: one run of this config needs about {need / 2**30:,.0f} GiB (estimated), more "
            f"than this machine's {physical_memory() / 2**30:,.0f} GiB"
        )
    if cfg.deltas_mode == "batch_normalized" and cfg.num_responses * _prompts_per_epoch(cfg) < 2:
        raise ConfigError("num_responses: batch_normalized needs at least 2 rewards per epoch (prompts x responses)")
    if cfg.deltas_mode in ("normalized_rewards", "rloo", "optimal_baseline") and cfg.num_responses < 2:  # 0 deltas
        raise ConfigError(
            f"num_responses: {cfg.deltas_mode} needs at least 2 responses per prompt, got {cfg.num_responses}"
        )
    if cfg.filter_zero_std_groups and cfg.num_responses < 2 and not LOSS_MODES[cfg.loss_mode].supervised:
        raise ConfigError(
            "num_responses: filter_zero_std_groups drops every group of 1 response (no reward spread), so nothing "
            "would train; use at least 2 responses per prompt"
        )
    if cfg.recipe is not None:
        check_choice("recipe", cfg.recipe, RECIPES)
    if not MODELS[cfg.model].prompt_only:
        _check_autoregressive(cfg)
    if cfg.importance_sampling_level == "sequence" and not LOSS_MODES[cfg.loss_mode].uses_ratio:
        with_ratio = ", ".join(name for name, mode in LOSS_MODES.items() if mode.uses_ratio)
        raise ConfigError(
            f"importance_sampling_level: 'sequence' needs a loss mode with a ratio ({with_ratio}), not {cfg.loss_mode!r}"
        )


def _check_autoregressive(cfg: RunConfig) -> None:
    """The variants an autoregressive model family (`transformer`, a plug-in's) cannot train yet: one line each."""
    if "values" in extras(DELTA_MODES[cfg.deltas_mode]):
        raise ConfigError(
            f"deltas_mode: {cfg.deltas_mode!r} needs a value head on the prompt's encoding, which only the linear "
            f"model has; model {cfg.model!r} has no single encoding (a per-token critic is not defined yet)"
        )
    supervised = LOSS_MODES[cfg.loss_mode].supervised
    if supervised and cfg.kl_penalty != 0:
        raise ConfigError(
            f"kl_penalty: with loss_mode {cfg.loss_mode!r} model {cfg.model!r} is trained on the sorted answers, not "
            "on sampled responses, so there is no sampled prefix to take a KL on; use kl_penalty 0"
        )
    if supervised and cfg.entropy_coeff != 0:
        raise ConfigError(
            f"entropy_coeff: with loss_mode {cfg.loss_mode!r} model {cfg.model!r} is trained on the sorted answers, "
            "not on sampled responses, so there is no sampled prefix for the entropy bonus; use entropy_coeff 0"
        )


def ignored_fields(cfg: RunConfig) -> dict[str, str]:
    """Fields set away from their default that `cfg` never reads, each with why (for warnings): {field: reason}."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    rules: list[tuple[tuple[str, ...], bool, str]] = [
        (
            ("prompt_length", "num_prompts", "num_eval_prompts", "allow_repeats", "task_seed"),
            cfg.task == "lecture",
            "only the random task reads it",
        ),
        (("prompts",), cfg.task != "lecture", "only the lecture task reads it"),
        (("eval_every",), cfg.task == "lecture" or cfg.num_eval_prompts == 0, "there are no held-out prompts"),
        (
            ("epsilon", "epsilon_high", "clip_ratio_c"),
            not LOSS_MODES[cfg.loss_mode].clips,
            f"loss_mode {cfg.loss_mode!r} does not clip",
        ),
        (
            (
                "kl_estimator",
                "kl_loss_agg_mode",
                "use_kl_in_reward",
                "use_bias_correction_kl",
                "compute_ref_model_period",
            ),
            cfg.kl_penalty == 0,
            "kl_penalty is 0",
        ),
        (("max_num_gen_batches",), not cfg.filter_zero_std_groups, "filter_zero_std_groups is off"),
        (
            ("critic_learning_rate", "critic_loss_agg_mode", "cliprange_value"),
            "values" not in extras(DELTA_MODES[cfg.deltas_mode]),
            "no critic is trained",
        ),
        (("overlong_penalty_factor",), cfg.overlong_buffer_len == 0, "overlong_buffer_len is 0"),
        *[
            ((name,), name not in MODELS[cfg.model].fields, f"model {cfg.model!r} does not read it")
            for name in MODEL_FIELDS
        ],
        (("deltas_mode", "filter_zero_std_groups"), LOSS_MODES[cfg.loss_mode].supervised, "sft ignores rewards"),
        (
            ("engine",),
            not MODELS[cfg.model].prompt_only,
            f"model {cfg.model!r} steps with torch's fused Adam on either engine (sortrl.engine.optim.RunFusedAdam)",
        ),
    ]
    out = {}
    for names, unused, why in rules:
        for name in names:
            if unused and getattr(cfg, name) != defaults[name]:
                out[name] = why
    return out


PEER_DIFFERENCES: dict[str, str] = {
    "use_kl_in_reward": "with deltas_mode critic, remax or reinforce_plus_plus the response's whole KL is in its "
    "return; verl's per-token return holds only the KL of that token and the later ones",
    "filter_zero_std_groups": "a zero-std prompt is drawn again, up to max_num_gen_batches groups, then left out, and "
    "the epoch trains on the prompts kept; verl's DAPO trainer fills its batch with new prompts and raises after "
    "max_num_gen_batches",
}
"""What sortrl computes otherwise than the peer code an option is named after (verl 0.9.1), one line each."""


def peer_differences(cfg: RunConfig) -> dict[str, str]:
    """The fields whose value makes `cfg` compute otherwise than the peer code of the same name: {field: what differs},
    for a warning once per `train` call or grid file (docs/variants.md says the same)."""
    applies = {
        "use_kl_in_reward": cfg.use_kl_in_reward and cfg.kl_penalty != 0 and cfg.deltas_mode in REWARD_TO_GO_MODES,
        "filter_zero_std_groups": cfg.filter_zero_std_groups and not LOSS_MODES[cfg.loss_mode].supervised,
    }
    return {name: PEER_DIFFERENCES[name] for name, yes in applies.items() if yes}


def load_plugins(modules: tuple[str, ...] | list[str]) -> None:
    """Import each plugin module (once per process), so the variants it registers exist; `ConfigError` if one fails.

    The working folder is searched last (as `python -m` would search it first;
    a console script such as `sortrl` does not), so a plug-in next to a grid
    file is found by `sortrl sweep` and by the local worker processes it starts.
    """
    if modules and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    for name in modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except (Exception, SystemExit, KeyboardInterrupt) as err:  # noqa: BLE001 -- a user's module failing to import
            # (even by sys.exit or KeyboardInterrupt) is a bad `plugins` value: one line, not a silent exit
            raise PluginImportError(f"plugins: cannot import {name!r} ({err.__class__.__name__}: {err})") from None


def make_config(recipe: str | None = None, **fields: Any) -> RunConfig:
    """A `RunConfig` from an optional recipe (`sortrl.engine.recipes.RECIPES`) plus explicit fields (explicit ones win).

    Raises `ConfigError` for an unknown recipe (listing the valid ones) or a bad field.
    """
    base = dict(lookup("recipe", recipe, RECIPES).fields) if recipe is not None else {}
    check_fields(fields)
    return RunConfig(**{**base, **fields, "recipe": recipe})
