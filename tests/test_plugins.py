"""Your own variant without editing sortrl: plug-in modules register variants that configs, the CLI, grids
and every worker (loky and dask) can then use by name."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from sortrl import RunConfig, train
from sortrl.engine.deltas import DELTA_MODES
from sortrl.engine.losses import KL_ESTIMATORS, KL_LOSS_AGG_MODES, LOSS_AGG_MODES, LOSS_MODES
from sortrl.engine.registry import ConfigError
from sortrl.engine.task import REWARDS
from sortrl.plugins import BUILT_IN, register

SORTRL = Path(sys.executable).parent / "sortrl"

PLUGIN = textwrap.dedent(
    '''
    """A test plug-in: a rank-based delta mode and a non-foldable loss."""
    import torch
    from sortrl.plugins import register


    @register("deltas_mode", "rank_test")
    def rank_test(r):
        """delta_i = rank of r_i in its group, centered (ties broken by position)."""
        ranks = r.argsort(-1).argsort(-1).float()
        return ranks - ranks.mean(-1, keepdim=True)


    def squared_advantage(log_probs, old_log_probs, advantages, clip):
        """loss = -sign(A) A^2 * log pi: not positively homogeneous in A (c A gives c^2 the loss)."""
        return -advantages * advantages.abs() * log_probs


    register("loss_mode", "squared_test", squared_advantage, linear=False, uses_ratio=False, clips=False,
             foldable=False)
    '''
)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The test plug-in as module `plugin_for_tests` in the working folder; registries restored afterwards."""
    registries = [DELTA_MODES, LOSS_MODES, REWARDS, KL_ESTIMATORS, LOSS_AGG_MODES, KL_LOSS_AGG_MODES]
    saved = [dict(r) for r in registries]
    (tmp_path / "plugin_for_tests.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "plugin_for_tests"
    sys.modules.pop("plugin_for_tests", None)
    for registry, before in zip(registries, saved, strict=True):
        registry.clear()
        registry.update(before)


def test_a_config_names_a_plugin_variant(plugin):
    with pytest.raises(ConfigError, match="deltas_mode: unknown value 'rank_test'"):
        RunConfig(deltas_mode="rank_test")
    cfg = RunConfig(deltas_mode="rank_test", plugins=[plugin], num_epochs=3, num_steps_per_epoch=2)
    out = train([cfg])
    assert out["mean_reward"].notna().all() and len(out) == 3
    assert DELTA_MODES["rank_test"](torch.tensor([[[3.0, 1.0, 2.0]]])).tolist() == [[[1.0, -1.0, 0.0]]]


def test_a_non_foldable_loss_is_computed_per_token(plugin, engine_spy):
    from test_train import FAST, check_against_direct  # the per-token reference computation

    cfg = RunConfig(**{**FAST, "loss_mode": "squared_test", "deltas_mode": "centered_rewards"}, plugins=[plugin])
    check_against_direct([cfg], engine_spy)


def test_register_refuses_what_the_engine_cannot_use():
    with pytest.raises(ValueError, match="unknown kind"):
        register("optimizer", "sgd", lambda: None)
    with pytest.raises(ValueError, match="'rewards' is one of sortrl's own"):
        register("deltas_mode", "rewards", lambda r: r)
    spoof = lambda r: r  # noqa: E731 -- claims to be sortrl's own function: still refused
    spoof.__module__, spoof.__qualname__ = "sortrl.engine.deltas", "rewards"
    with pytest.raises(ValueError, match="'rewards' is one of sortrl's own"):
        register("deltas_mode", "rewards", spoof)
    with pytest.raises(ValueError, match="'lecture' is one of sortrl's own"):
        register("loss_agg_mode", "lecture", lambda x, m: x)  # the KL's own aggregation

    def first(r):
        return r

    def second(r):
        return -r

    register("deltas_mode", "taken_test", first)
    with pytest.raises(ValueError, match="already registered"):  # another plug-in's function under that name
        register("deltas_mode", "taken_test", second)
    with pytest.raises(ValueError, match="not one the engine provides"):
        register("deltas_mode", "needs_more", lambda r, secret: r)
    with pytest.raises(ValueError, match="needs flags linear, uses_ratio, clips"):
        register("loss_mode", "flagless", lambda lp, old, a, clip: -a * lp)
    assert "needs_more" not in DELTA_MODES and "flagless" not in LOSS_MODES


@pytest.mark.parametrize(
    ("body", "name"), [("import sys\nsys.exit(3)\n", "SystemExit"), ("raise KeyboardInterrupt\n", "KeyboardInterrupt")]
)
def test_a_plugin_that_exits_at_import_is_one_line(tmp_path, monkeypatch, body, name):
    module = f"exits_at_import_{name.lower()}"
    (tmp_path / f"{module}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"^plugins: cannot import '{module}' \({name}"):
        RunConfig(plugins=[module])


def test_a_missing_plugin_is_one_line():
    with pytest.raises(ConfigError, match=r"^plugins: cannot import 'no_such_plugin_xyz' \(ModuleNotFoundError"):
        RunConfig(plugins=["no_such_plugin_xyz"])
    with pytest.raises(ConfigError, match="^plugins: must be a list"):
        RunConfig(plugins="rank")


def test_cli_train_with_a_plugin(plugin, tmp_path):
    from test_cli import assert_one_line_error, invoke

    assert_one_line_error(invoke("train", "--deltas-mode", "rank_test"), "deltas_mode", "rank_test")
    out = tmp_path / "rank.csv"
    done = invoke("train", "--plugin", plugin, "--deltas-mode", "rank_test", "--num-epochs", "3", "--out", out)
    assert done.exit_code == 0, done.output
    table = pd.read_csv(out)
    assert table["deltas_mode"].eq("rank_test").all() and table["plugins"].eq(f'["{plugin}"]').all()


GRID = """
name = "ranked"
seeds = 4
[base]
plugins = ["plugin_for_tests"]
num_epochs = 3
num_steps_per_epoch = 2
[grid]
deltas_mode = ["rank_test", "centered_rewards"]
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["loky", "dask"])
def test_sweep_workers_import_the_plugin(plugin, tmp_path, backend):
    """Two worker processes (loky) or a local Dask cluster import the plug-in before training their chunks."""
    (tmp_path / "ranked.toml").write_text(GRID)
    done = subprocess.run(
        [SORTRL, "sweep", "ranked.toml", "--results", "res", "--n-jobs", "2", "--chunk-size", "2",
         "--backend", backend],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "8 trained" in done.stderr, done.stderr


BAD_RESULTS = {
    "a [run batch 1] tensor": (lambda r: r[..., :1], "a tensor of shape [1, 3, 1]"),
    "a float": (lambda r: 0.5, "a float"),
    "a list": (lambda r: r.tolist(), "a list"),
    "a numpy array": (lambda r: r.detach().numpy(), "a ndarray"),
    "None": (lambda r: None, "a NoneType"),
    "an integer tensor": (lambda r: r.long(), "a tensor of torch.int64"),
    "nan": (lambda r: r * float("nan"), "a tensor with inf or nan values"),
}


@pytest.fixture
def registries():
    """The registries as they were, restored after the test (it registers plug-ins of its own)."""
    kept = [DELTA_MODES, LOSS_MODES, REWARDS, KL_ESTIMATORS, LOSS_AGG_MODES, KL_LOSS_AGG_MODES]
    saved = [dict(r) for r in kept]
    yield
    for registry, before in zip(kept, saved, strict=True):
        registry.clear()
        registry.update(before)


@pytest.mark.parametrize("case", BAD_RESULTS, ids=str)
def test_a_plugin_returning_the_wrong_thing_is_one_line_naming_it(registries, case):
    fn, what = BAD_RESULTS[case]
    register("deltas_mode", "bad_test", fn)
    with pytest.raises(ConfigError) as error:
        train([RunConfig(deltas_mode="bad_test", num_epochs=1, num_steps_per_epoch=1)])
    message = str(error.value)
    assert message.startswith("deltas_mode 'bad_test' (") and f"returned {what};" in message, message
    assert "float tensor of shape [1, 3, 10]" in message and "\n" not in message


def test_a_plugin_reward_and_aggregation_are_checked_too(registries):
    register("reward", "bad_reward_test", lambda prompts, responses, content: responses.float())
    with pytest.raises(ConfigError, match=r"^reward 'bad_reward_test' .* returned a tensor of shape \[1, 3, 10, 3\]"):
        train([RunConfig(reward="bad_reward_test", num_epochs=1, num_steps_per_epoch=1)])
    register("loss_agg_mode", "bad_agg_test", lambda mask, max_len: mask.sum(dim=-1))
    with pytest.raises(ConfigError, match=r"^loss_agg_mode 'bad_agg_test' .* returned a tensor of shape \[1, 3, 10\]"):
        train([RunConfig(loss_agg_mode="bad_agg_test", num_epochs=1, num_steps_per_epoch=1)])


def _inclusion_ordering(prompts, responses, content):
    return REWARDS["inclusion_ordering"](prompts, responses, content)


BAD_REWARDS = {  # a plug-in reward (sortrl's own, through a change) and what the line says it returned
    "nan": (lambda r: r * float("nan"), "a tensor with inf or nan values"),
    "inf": (lambda r: r + float("inf"), "a tensor with inf or nan values"),
    "nan at the sorted response": (lambda r: torch.where(r == 5, float("nan"), r), "a tensor with inf or nan values"),
    "a [run batch] tensor": (lambda r: r[..., 0], "a tensor of shape"),
    "a float": (lambda r: 0.5, "a float"),
    "a list": (lambda r: r.tolist(), "a list"),
    "a numpy array": (lambda r: r.numpy(), "a ndarray"),
    "None": (lambda r: None, "a NoneType"),
    "an integer tensor": (lambda r: r.long(), "a tensor of torch.int64"),
    "a float16 tensor": (lambda r: r.half(), "a tensor of torch.float16"),
    "above its bounds": (lambda r: r, "a tensor with values outside its declared bounds [0, 2] (from "),
    "below its bounds": (lambda r: r - 10, "a tensor with values outside its declared bounds [0, 2] (from -"),
}


@pytest.mark.parametrize("case", BAD_REWARDS, ids=str)
def test_a_plugin_rewards_results_are_checked_where_the_best_and_chance_rewards_come_from(registries, case):
    """The report's and `sortrl train`'s summary's best and chance rewards (`reward_bounds`) called a plug-in reward
    unchecked: NaN became a 'best possible nan' (or a chance of nan), a wrong type a traceback, a [run batch] result
    broadcast silently, out-of-bounds values went unseen. Now one line naming the plug-in and what it returned."""
    from sortrl.engine.task import reward_bounds

    change, what = BAD_REWARDS[case]
    register("reward", "bad_test", lambda prompts, responses, content: change(_inclusion_ordering(prompts, responses, content)),
             bounds=(0, 2))  # fmt: skip
    with pytest.raises(ConfigError) as error:
        reward_bounds(RunConfig(reward="bad_test", prompts=[[1, 2, 3]]))  # no name in the cache of chances
    message = str(error.value)
    assert message.startswith("reward 'bad_test' (test_plugins.") and f"returned {what}" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("case", ["a float16 tensor", "above its bounds", "below its bounds"])
def test_a_plugin_reward_out_of_its_bounds_or_half_precision_stops_training_in_one_line(registries, case):
    """In training too: a value outside the reward's declared bounds, or a half-precision result (which rounded the
    rewards silently: 2.3 became 2.30078), is one line naming the plug-in."""
    change, what = BAD_REWARDS[case]
    register("reward", "bad_test", lambda prompts, responses, content: change(_inclusion_ordering(prompts, responses, content)),
             bounds=(0, 2))  # fmt: skip
    with pytest.raises(ConfigError) as error:
        train([RunConfig(reward="bad_test", num_epochs=1, num_steps_per_epoch=1)])
    message = str(error.value)
    assert message.startswith("reward 'bad_test' (") and f"returned {what}" in message, message
    assert "float tensor of shape [1, 3, 10] (float32 or float64)" in message and "\n" not in message


def test_a_plugin_reward_within_its_bounds_trains_as_sortrls_own(registries):
    register("reward", "same_test", _inclusion_ordering, bounds=(0, 5))
    fields = {"num_epochs": 3, "num_steps_per_epoch": 2}
    pd.testing.assert_frame_equal(
        train([RunConfig(reward="same_test", **fields)]).drop(columns=["run_id", "reward"]),
        train([RunConfig(**fields)]).drop(columns=["run_id", "reward"]),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "fn", "flags", "message"),
    [
        (
            "reward",
            lambda p, r, c: r.float().sum(-1),
            {},
            "must take the keyword arguments prompts, responses, content",
        ),
        ("loss_agg_mode", lambda m, n: m, {}, "must take the keyword arguments mask, max_len"),
        (
            "reward",
            _inclusion_ordering,
            {"bounds": (2, 1)},
            "bounds must be two finite numbers (low, high), got (2, 1)",
        ),
        ("reward", _inclusion_ordering, {"bounds": (0, float("inf"))}, "bounds must be two finite numbers"),
        ("reward", _inclusion_ordering, {"bounds": "01"}, "bounds must be two finite numbers"),
    ],
)
def test_register_refuses_a_reward_the_engine_cannot_call_or_bound(registries, kind, fn, flags, message):
    """The engine passes a reward and an aggregation keyword arguments: other names were a TypeError traceback at the
    first call; bounds must be a real range."""
    with pytest.raises(ValueError, match="^register: ") as error:
        register(kind, "odd_test", fn, **flags)
    assert message in str(error.value)


def _loss_returning(change, loss=lambda lp, old, a: -a * lp, **flags):
    """Register loss mode `bad_test`: `loss` (the lecture's naive -A log pi), through `change`."""
    flags = {"linear": True, "uses_ratio": False, "clips": False, **flags}
    register("loss_mode", "bad_test", lambda lp, old, a, clip: change(loss(lp, old, a)), **flags)


INNER = {  # a loss mode or KL estimator (what it returns goes through `change`), its config, the shape it must return
    "loss_mode": (_loss_returning, {"loss_mode": "bad_test"}, [1, 3, 3, 5]),  # [run batch pos vocab]: folded
    "loss_mode, per sampled token": (
        lambda change: _loss_returning(change, foldable=False),
        {"loss_mode": "bad_test"},
        [1, 3, 10, 3],  # [run batch trial pos]
    ),
    "loss_mode, per sequence": (
        lambda change: _loss_returning(change, lambda lp, old, a: -a * torch.exp(lp - old), uses_ratio=True),
        {"loss_mode": "bad_test", "importance_sampling_level": "sequence"},
        [1, 3, 10],  # [run batch trial]: GSPO's one ratio per response
    ),
    "kl_estimator": (
        lambda change: register("kl_estimator", "bad_test", lambda lp, ref: change((lp - ref) ** 2)),
        {"kl_estimator": "bad_test", "kl_penalty": 0.1},
        [1, 3, 3, 5],
    ),
    "kl_estimator, in the reward": (
        lambda change: register("kl_estimator", "bad_test", lambda lp, ref: change((lp - ref) ** 2)),
        {"kl_estimator": "bad_test", "kl_penalty": 0.1, "use_kl_in_reward": True},
        [1, 3, 10, 3],  # the sampled tokens' log-probs
    ),
}


@pytest.mark.parametrize("case", BAD_RESULTS, ids=str)
@pytest.mark.parametrize("where", INNER, ids=str)
def test_a_plugin_loss_or_kl_estimator_returning_the_wrong_thing_is_one_line(registries, where, case):
    make, fields, shape = INNER[where]
    change, what = BAD_RESULTS[case]
    make(change)
    if case == "a [run batch 1] tensor":
        what = f"a tensor of shape {[*shape[:-1], 1]}"
    with pytest.raises(ConfigError) as error:
        train([RunConfig(**fields, num_epochs=2, num_steps_per_epoch=2)])
    message, kind = str(error.value), where.split(",")[0]
    assert message.startswith(f"{kind} 'bad_test' (") and f"returned {what};" in message, message
    assert f"float tensor of shape {shape}" in message and "\n" not in message


def test_a_plugin_loss_that_goes_non_finite_later_is_a_diverged_run(registries):
    """Non-finite values are refused on a loss plug-in's first call (the initial policy); later, they are the run's
    divergence, as with sortrl's own losses (a ratio overflowing at `learning_rate=1e4`), not the plug-in's fault."""
    register("loss_mode", "unclipped_test", LOSS_MODES["unclipped"].fn, linear=True, uses_ratio=True, clips=False)
    fields = {"deltas_mode": "normalized_rewards", "num_epochs": 5, "num_steps_per_epoch": 2, "learning_rate": 1e4}
    out = train([RunConfig(**fields, loss_mode="unclipped_test", seed=s) for s in range(4)])
    builtin = train([RunConfig(**fields, loss_mode="unclipped", seed=s) for s in range(4)])
    assert out["status"].tolist() == builtin["status"].tolist() and "diverged" in set(out["status"])


MIXING = {  # kind: (a plug-in that mixes the runs of a batch, one that does not), and the config naming them
    "deltas_mode": (
        lambda r: r - r.mean(dim=0, keepdim=True),  # centred over the runs, not the group
        lambda r: r - r.mean(dim=-1, keepdim=True),
        {},
    ),
    "reward": (
        lambda prompts, responses, content: content.float().sum(-1) / content.float().sum(),  # a share of the batch's
        lambda prompts, responses, content: content.float().sum(-1) / content[0].numel(),
        {},
    ),
    "loss_agg_mode": (
        lambda mask, max_len: mask / mask.sum(),  # one mean over every run's tokens
        lambda mask, max_len: mask / mask.sum(dim=(1, 2, 3), keepdim=True),
        {},
    ),
    "loss_mode": (
        lambda lp, old, a, clip: -a * lp / lp.shape[0],  # scaled by the number of runs
        lambda lp, old, a, clip: -a * lp,
        {"linear": True, "uses_ratio": False, "clips": False},
    ),
    "kl_estimator": (
        lambda lp, ref: (lp - ref.mean(dim=0, keepdim=True)) ** 2,  # to the runs' mean reference
        lambda lp, ref: (lp - ref) ** 2,
        {},
    ),
}


def _mixing_configs(kind: str, name: str, seeds: list[int], **more):
    fields = {kind: name, **({"kl_penalty": 0.1} if kind == "kl_estimator" else {})}
    return [RunConfig(**fields, num_epochs=3, num_steps_per_epoch=2, seed=s, **more) for s in seeds]


@pytest.mark.parametrize("kind", MIXING)
def test_a_plugin_that_mixes_the_runs_of_a_batch_is_refused(registries, kind):
    """A plug-in whose result for one run depends on the other runs' inputs would change with the chunk size: refused
    on its first call in a batch of several runs, naming it. One that treats each run alone trains, and its runs'
    numbers do not depend on their batch-mates."""
    mixing, alone, flags = MIXING[kind]
    register(kind, "mixing_test", mixing, **flags)
    with pytest.raises(ConfigError) as error:
        train(_mixing_configs(kind, "mixing_test", [0, 1, 2]))
    message = str(error.value)
    assert message.startswith(f"{kind} 'mixing_test' (") and "mixes the runs of a batch" in message, message
    assert "\n" not in message
    train(_mixing_configs(kind, "mixing_test", [0]))  # alone, nothing to mix: not refused
    register(kind, "alone_test", alone, **flags)
    together = train(_mixing_configs(kind, "alone_test", [0, 1, 2]))
    apart = pd.concat([train(_mixing_configs(kind, "alone_test", [s])) for s in range(3)], ignore_index=True)
    pd.testing.assert_frame_equal(together, apart)


def test_a_mixing_plugin_is_found_when_the_runs_start_alike(registries):
    """Runs that start alike (one seed, two learning rates: the same first responses and rewards) cannot show a
    mixing plug-in on its first call; it is checked on a later call, once their inputs differ."""
    register("deltas_mode", "mixing_test", lambda r: 2 * r - r.mean(dim=-1, keepdim=True) - r.mean(dim=0, keepdim=True))
    configs = [RunConfig(deltas_mode="mixing_test", learning_rate=lr, num_epochs=3) for lr in (0.01, 0.1)]
    with pytest.raises(ConfigError, match="mixes the runs of a batch"):
        train(configs)


def test_sortrls_own_variants_are_called_unchecked():
    """No cost for sortrl's own variants: the engine calls the registered function itself."""
    from sortrl.engine.registry import checked

    for kind, registry in [("deltas_mode", DELTA_MODES), ("kl_estimator", KL_ESTIMATORS)]:
        for name in BUILT_IN[kind]:
            assert checked(kind, name, registry[name]) is registry[name]
    assert checked("loss_mode", "clipped", LOSS_MODES["clipped"].fn) is LOSS_MODES["clipped"].fn


WORKER_CASES = {  # what a grid's worker trains, and the line it ends with
    "deltas_mode": (
        "register('deltas_mode', 'bad_test', lambda r: r[..., :1])",
        'deltas_mode = ["bad_test"]',
        "deltas_mode 'bad_test' (",
        "returned a tensor of shape [2, 3, 1]",  # a chunk of 2 runs
    ),
    "loss_mode": (
        "register('loss_mode', 'bad_test', lambda lp, old, a, clip: 0.5, linear=True, uses_ratio=False, clips=False)",
        'loss_mode = ["bad_test"]',
        "loss_mode 'bad_test' (",
        "returned a float",
    ),
    "reward": (
        "register('reward', 'bad_test', lambda prompts, responses, content: content.float().sum(-1), bounds=(0, 1))",
        'reward = ["bad_test"]',
        "reward 'bad_test' (",
        "returned a tensor with values outside its declared bounds [0, 1] (from ",
    ),
    "mixing": (
        "register('kl_estimator', 'bad_test', lambda lp, ref: (lp - ref.mean(dim=0, keepdim=True)) ** 2)",
        'kl_estimator = ["bad_test"]\nkl_penalty = [0.1]',
        "kl_estimator 'bad_test' (",
        "mixes the runs of a batch",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "case"),
    [
        ("loky", "deltas_mode"),
        ("dask", "deltas_mode"),
        ("loky", "loss_mode"),
        ("loky", "mixing"),
        ("loky", "reward"),
        ("dask", "reward"),
    ],
)
def test_a_plugin_returning_the_wrong_thing_in_a_sweep_worker_is_one_line(tmp_path, backend, case):
    """The same one line from loky worker processes or a local Dask cluster, not a remote traceback or worker logs."""
    registration, axis, start, what = WORKER_CASES[case]
    (tmp_path / "bad_plugin_for_tests.py").write_text(f"from sortrl.plugins import register\n{registration}\n")
    grid = GRID.replace("plugin_for_tests", "bad_plugin_for_tests")
    (tmp_path / "bad.toml").write_text(grid.replace('deltas_mode = ["rank_test", "centered_rewards"]', axis))
    done = subprocess.run(
        [SORTRL, "sweep", "bad.toml", "--results", "res", "--n-jobs", "2", "--chunk-size", "2", "--backend", backend],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr  # the plan line, then the error
    assert done.returncode == 2 and lines[-1].startswith(f"error: {start}"), done.stderr
    assert "Traceback" not in done.stderr and what in lines[-1]


def test_a_plugins_code_is_part_of_its_runs_identity(plugin, tmp_path):
    """Editing a plug-in changes the run ids of the runs using it; runs without plug-ins keep theirs."""
    from sortrl.engine import config as config_module

    before = RunConfig(deltas_mode="rank_test", plugins=[plugin]).run_id
    assert RunConfig().run_id == config_module.run_id_of(RunConfig().to_dict())  # no plug-in: the fields alone
    (tmp_path / f"{plugin}.py").write_text(PLUGIN + "\n# edited\n")
    sys.modules.pop(plugin)
    config_module.plugin_digest.cache_clear()
    after = RunConfig(deltas_mode="rank_test", plugins=[plugin]).run_id
    assert after != before


@pytest.mark.slow
def test_a_changed_plugin_retrains_its_runs(plugin, tmp_path):
    """A sweep after the plug-in's code changed trains its runs anew (the old ones were another code's), and the
    report counts only the new ones."""
    from sortrl.analysis.experiment import load_experiment

    (tmp_path / "ranked.toml").write_text(GRID)
    sweep = [SORTRL, "sweep", "ranked.toml", "--results", "res", "--n-jobs", "1"]
    first = subprocess.run(sweep, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "8 trained, 0 already stored" in first.stderr, first.stderr
    again = subprocess.run(sweep, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "0 trained, 8 already stored" in again.stderr, again.stderr  # unchanged code: resumed
    (tmp_path / f"{plugin}.py").write_text(PLUGIN.replace("ranks - ranks.mean", "2 * ranks - 2 * ranks.mean"))
    edited = subprocess.run(sweep, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "8 trained, 0 already stored" in edited.stderr, edited.stderr  # every run loads the plug-in
    sys.modules.pop(plugin, None)
    from sortrl.engine import config as config_module

    config_module.plugin_digest.cache_clear()
    exp = load_experiment(tmp_path / "res", "ranked")
    assert len(exp.final) == 8 and "8 stored run(s) match no configuration" in " ".join(exp.notes)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["loky", "dask"])
def test_a_plugin_next_to_its_grid_file_is_found_from_another_folder(tmp_path, backend):
    """`sortrl sweep grids/ranked.toml` from elsewhere: the plug-in beside the grid file is imported here and in
    the loky workers or the local Dask cluster's."""
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "plugin_beside_grid.py").write_text(PLUGIN)
    (grids / "ranked.toml").write_text(GRID.replace("plugin_for_tests", "plugin_beside_grid"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [SORTRL, "sweep", grids / "ranked.toml", "--results", "res", "--n-jobs", "2", "--chunk-size", "2",
         "--backend", backend],
        cwd=elsewhere, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and "8 trained" in done.stderr, done.stderr


@pytest.mark.slow
def test_a_report_leaves_out_only_the_experiment_whose_plugin_is_missing(tmp_path):
    """`sortrl report` where one experiment's plug-in cannot be imported (the sweep found it beside its grid file,
    the report runs elsewhere): that experiment is left out with one warning naming it and the plug-in, the others
    are reported; given the grid file (`--grid`), the report finds the plug-in beside it and reports both."""
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "plugin_beside_grid.py").write_text(PLUGIN)
    (grids / "ranked.toml").write_text(GRID.replace("plugin_for_tests", "plugin_beside_grid"))
    (grids / "plain.toml").write_text(
        GRID.replace("ranked", "plain").replace('plugins = ["plugin_for_tests"]\n', "").replace("rank_test", "rewards")
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def sortrl(*args):
        return subprocess.run([SORTRL, *args], cwd=elsewhere, capture_output=True, text=True, timeout=300)

    for grid in ("ranked", "plain"):
        assert sortrl("sweep", grids / f"{grid}.toml", "--results", "res", "--n-jobs", "1").returncode == 0
    done = sortrl("report", "--results", "res")
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "Traceback" not in done.stderr, done.stderr
    assert warned[0].startswith("warning: ranked: left out of the report") and "'plugin_beside_grid'" in warned[0]
    report = (elsewhere / "res" / "REPORT.md").read_text()
    assert "figures/plain_" in report and "figures/ranked_" not in report
    done = sortrl("report", "--results", "res", "--grid", grids / "ranked.toml")
    assert done.returncode == 0 and "warning:" not in done.stderr, done.stderr
    assert "figures/ranked_" in (elsewhere / "res" / "REPORT.md").read_text()
