"""A hostile retest of sortrl's command line: the kinds of cases issue 23 lists, tried as a careless or malicious
new user would, each classified by what came out.

Every case runs `sortrl` (`python -m sortrl`, this checkout on `PYTHONPATH`, or `--sortrl PATH`) in a temporary
folder of its own, on tiny grids (a few epochs, 2 seeds), with a timeout, and is classified:

| outcome | meaning |
| --- | --- |
| clean | bad input: exit != 0 with one `error:` line (naming what the case expects) and no traceback; good input: exit 0 and the result checked; an interrupt: no traceback, at most one line saying so |
| traceback | a Python traceback on stderr |
| silent wrong | exit 0 where the input was bad, a result that fails its check, or a file written outside the results folder |
| silent exit | exit != 0 without an `error:` line (or an interrupt's line) |
| unclear | one `error:` line that does not say what the case expects (e.g. the plug-in's name) |
| noisy | more than one `error:` line |
| refused | an `error:` where success is right |
| hang | the timeout passed, or processes of the case were left running |
| loss | a chunk stored before the command is gone or changed |

Run: `python tools/hostile_retest.py` (about 10 minutes on 2 cores; `--jobs 1` if the machine is busy),
`--only plugins,claims` for some categories, `--list` to list the cases, `-k TEXT` for the cases whose name
contains TEXT. Prints a table of every case and the counts by category; exits 1 if any case is not clean.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

OUTCOMES = ("clean", "traceback", "silent wrong", "silent exit", "unclear", "noisy", "refused", "hang", "loss")

# --- grids ----------------------------------------------------------------------------------------------------------

TINY = """\
name = "{name}"
seeds = 2
{top}
[base]
num_epochs = 3
num_steps_per_epoch = 1
{base}
[grid]
{axis}
{grid}
"""
"""4 runs of 3 epochs: a sweep trains in a second or two."""

DELTAS = 'deltas_mode = ["rewards", "centered_rewards"]'
LEARNING_RATES = "learning_rate = [0.01, 0.02]"
"""The axis of a grid whose [base] sets its delta mode (a plug-in's)."""

SLOW = """\
name = "slow"
seeds = 8
[base]
num_epochs = 60
num_steps_per_epoch = 5
[grid]
deltas_mode = ["rewards", "centered_rewards"]
"""
"""16 runs in chunks of 2, about a second each: long enough to interrupt in the middle."""

CLAIM = """
[[claim]]
id = "{id}"
statement = "centering helps"
subject = "centering"
source = "the lecture"
new = {{ deltas_mode = "centered_rewards" }}
old = {{ deltas_mode = "rewards" }}
predicts = "higher"
{more}
"""


def tiny(name: str = "tiny", top: str = "", base: str = "", grid: str = "", claims: str = "") -> str:
    axis = LEARNING_RATES if re.search(r"^deltas_mode =", base, re.M) else DELTAS
    return TINY.format(name=name, top=top, base=base, grid=grid, axis=axis) + claims


def claim(claim_id: str = "C1", more: str = "") -> str:
    return CLAIM.format(id=claim_id, more=more)


# --- cases ----------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one command did."""

    code: int | None  # None: timed out
    stderr: str
    seconds: float


@dataclass
class Case:
    category: str
    name: str
    args: list[str]
    expect: str  # "error", "ok", "any" (either, cleanly), "interrupt"
    files: dict[str, str] = field(default_factory=dict)
    before: list[list[str]] = field(default_factory=list)  # commands that must succeed first (e.g. a sweep)
    between: Callable[[Path], None] | None = None  # a change after `before` (edit a plug-in, flip a bit)
    error_has: tuple[str, ...] = ()  # what the error line must say
    check: Callable[[Path, Run], str | None] | None = None  # a problem with the result, or None
    cwd: str = "."
    timeout: float = 120
    interrupt: tuple[float, int] | None = None  # (seconds after start, signal) sent to the command's group
    trained_nothing: bool = False  # bad input: refused before any chunk is stored

    @property
    def key(self) -> str:
        return f"{self.category}: {self.name}"


def chunks(work: Path) -> list[Path]:
    return sorted(work.rglob("chunk-*.parquet"))


def stored_runs(work: Path, results: str = "res") -> int:
    """Run ids stored under `work/results` (0 if none)."""
    import pyarrow.parquet as pq

    ids = set()
    for path in chunks(work / results):
        ids.update(pq.read_table(path, columns=["run_id"]).column("run_id").to_pylist())
    return len(ids)


def expect_runs(count: int, results: str = "res") -> Callable[[Path, Run], str | None]:
    def check(work: Path, run: Run) -> str | None:
        found = stored_runs(work, results)
        return None if found == count else f"{found} runs stored, expected {count}"

    return check


def sweep(grid: str = "g.toml", *more: str) -> list[str]:
    return ["sweep", grid, "--results", "res", "--n-jobs", "1", *more]


PLUGIN_HEAD = (
    "import numpy as np\nimport torch\nfrom sortrl.plugins import register\nfrom sortrl.engine.task import REWARDS\n"
)


def plugin(body: str) -> str:
    return PLUGIN_HEAD + textwrap.dedent(body)


BAD_RESULTS = {  # what a plug-in returns (from its correct result r), and how the line names it
    "shape [run batch 1]": ("r[..., :1]", "a tensor of shape"),
    "shape [run batch]": ("r[..., 0]", "a tensor of shape"),
    "a float": ("0.5", "a float"),
    "a list": ("r.tolist()", "a list"),
    "a numpy array": ("r.detach().numpy()", "a ndarray"),
    "None": ("None", "a NoneType"),
    "an integer tensor": ("r.long()", "torch.int64"),
    "a float16 tensor": ("r.half()", "torch.float16"),
    "nan": ("r * float('nan')", "inf or nan"),
    "inf": ("r + float('inf')", "inf or nan"),
}

KINDS = {  # kind: (registration of `bad_test` returning `{result}` from r, the config naming it)
    "deltas_mode": ("register('deltas_mode', 'bad_test', lambda r: {result})", {"deltas_mode": "bad_test"}),
    "reward": (
        "register('reward', 'bad_test', lambda prompts, responses, content: "
        "(lambda r: {result})(REWARDS['inclusion_ordering'](prompts, responses, content)))",
        {"reward": "bad_test"},
    ),
    "loss_mode": (
        "register('loss_mode', 'bad_test', lambda lp, old, a, clip: (lambda r: {result})(-a * lp), linear=True, "
        "uses_ratio=False, clips=False)",
        {"loss_mode": "bad_test"},
    ),
    "kl_estimator": (
        "register('kl_estimator', 'bad_test', lambda lp, ref: (lambda r: {result})((lp - ref) ** 2))",
        {"kl_estimator": "bad_test", "kl_penalty": 0.1},
    ),
    "loss_agg_mode": (
        "register('loss_agg_mode', 'bad_test', lambda mask, max_len: (lambda r: {result})(mask / max_len))",
        {"loss_agg_mode": "bad_test"},
    ),
}


def toml_value(value: object) -> str:
    return json.dumps(value)


def base_fields(fields: dict[str, object]) -> str:
    return "\n".join(f"{k} = {toml_value(v)}" for k, v in fields.items())


def train_args(fields: dict[str, object], *more: str) -> list[str]:
    args = ["train", "--plugin", "bad_plugin", "--num-epochs", "3", "--num-steps-per-epoch", "1", "--seeds", "2"]
    for k, v in fields.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return [*args, *more]


def plugin_cases() -> list[Case]:
    cases = []
    for kind, (registration, fields) in KINDS.items():
        for what, (result, says) in BAD_RESULTS.items():
            if kind in ("loss_mode", "kl_estimator") and what == "inf":
                continue  # like nan, on the first call
            files = {"bad_plugin.py": plugin(registration.format(result=result) + "\n")}
            grid = tiny(top="", base='plugins = ["bad_plugin"]\n' + base_fields(fields))
            has = (f"{kind} 'bad_test'", "bad_plugin.", says)
            where = ["train"] if kind in ("loss_mode", "kl_estimator", "loss_agg_mode") else ["train", "loky"]
            if what in ("a list", "nan") and kind in ("deltas_mode", "reward"):
                where.append("dask")
            for backend in where:
                if backend == "train":
                    args = train_args(fields)
                else:
                    args = sweep("g.toml", "--n-jobs", "2", "--chunk-size", "2", "--backend", backend)
                cases.append(
                    Case(
                        "plug-in results",
                        f"{kind} returns {what} ({backend})",
                        args,
                        "error",
                        files={**files, "g.toml": grid},
                        error_has=has,
                        trained_nothing=True,
                    )
                )
    # a reward out of its declared bounds
    for what, (low, high) in {"above": (0, 2), "below": (6, 9)}.items():
        registration = (
            "register('reward', 'bad_test', lambda prompts, responses, content: "
            f"REWARDS['inclusion_ordering'](prompts, responses, content), bounds=({low}, {high}))\n"
        )
        for backend in ("train", "loky", "dask"):
            args = train_args({"reward": "bad_test"}) if backend == "train" else sweep(
                "g.toml", "--n-jobs", "2", "--chunk-size", "2", "--backend", backend
            )  # fmt: skip
            cases.append(
                Case(
                    "plug-in results",
                    f"reward {what} its declared bounds ({backend})",
                    args,
                    "error",
                    files={
                        "bad_plugin.py": plugin(registration),
                        "g.toml": tiny(base='plugins = ["bad_plugin"]\nreward = "bad_test"'),
                    },
                    error_has=("reward 'bad_test'", "outside its declared bounds"),
                    trained_nothing=True,
                )
            )
    # a reward NaN only on the sorted response: training may never sample it, the summary's best reward must not be NaN
    cases.append(
        Case(
            "plug-in results",
            "reward nan only at the sorted response (train summary)",
            train_args({"reward": "bad_test"}),
            "error",
            files={
                "bad_plugin.py": plugin(
                    """
                    def nan_when_sorted(prompts, responses, content):
                        r = REWARDS['inclusion_ordering'](prompts, responses, content)
                        return torch.where(r == r.new_tensor(5.0), torch.full_like(r, float('nan')), r)
                    register('reward', 'bad_test', nan_when_sorted)
                    """
                )
            },
            error_has=("reward 'bad_test'", "inf or nan"),
        )
    )
    return cases


MIXING = {
    "deltas_mode": ("register('deltas_mode', 'bad_test', lambda r: r - r.mean(dim=0, keepdim=True))", "deltas_mode"),
    "reward": (
        "register('reward', 'bad_test', lambda prompts, responses, content: "
        "content.float().sum(-1) / content.float().sum())",
        "reward",
    ),
    "kl_estimator": (
        "register('kl_estimator', 'bad_test', lambda lp, ref: (lp - ref.mean(dim=0, keepdim=True)) ** 2)",
        "kl_estimator",
    ),
    "loss_agg_mode": (
        "register('loss_agg_mode', 'bad_test', lambda mask, max_len: mask / mask.sum())",
        "loss_agg_mode",
    ),
}


def plugin_behaviour_cases() -> list[Case]:
    cases = []
    for kind, (registration, field_name) in MIXING.items():
        extra = {"kl_penalty": 0.1} if kind == "kl_estimator" else {}
        grid = tiny(base='plugins = ["bad_plugin"]\n' + base_fields({field_name: "bad_test", **extra}))
        for backend in ("loky", "train"):
            args = (
                sweep("g.toml", "--n-jobs", "2", "--chunk-size", "2", "--backend", "loky")
                if backend == "loky"
                else train_args({field_name: "bad_test", **extra})
            )
            cases.append(
                Case(
                    "plug-in behaviour",
                    f"{kind} mixes the runs of a batch ({backend})",
                    args,
                    "error",
                    files={"bad_plugin.py": plugin(registration + "\n"), "g.toml": grid},
                    error_has=(f"{kind} 'bad_test'", "mixes the runs"),
                    trained_nothing=True,
                )
            )
    overrides = {
        "a built-in name": "register('deltas_mode', 'rewards', lambda r: 2 * r)\n",
        "a built-in name, __module__ spoofed": (
            "def rewards(r):\n    return 2 * r\nrewards.__module__ = 'sortrl.engine.deltas'\n"
            "register('deltas_mode', 'rewards', rewards)\n"
        ),
        "a built-in reward name": "register('reward', 'distance', lambda prompts, responses, content: "
        "responses.float().sum(-1))\n",
        "a built-in aggregation name": "register('loss_agg_mode', 'lecture', lambda mask, max_len: mask)\n",
        "an unknown kind": "register('optimizer', 'sgd', lambda: None)\n",
        "a name taken by another plug-in function": (
            "def first(r):\n    return r\ndef second(r):\n    return -r\n"
            "register('deltas_mode', 'mine', first)\nregister('deltas_mode', 'mine', second)\n"
        ),
        "a reward with other parameter names": "register('reward', 'mine', lambda p, r, c: r.float().sum(-1))\n",
        "a delta mode asking for an unknown extra": "register('deltas_mode', 'mine', lambda r, secret: r)\n",
        "a loss mode without flags": "register('loss_mode', 'mine', lambda lp, old, a, clip: -a * lp)\n",
        "reward bounds the wrong way round": (
            "register('reward', 'mine', lambda prompts, responses, content: responses.float().sum(-1), bounds=(5, 1))\n"
        ),
        "reward bounds infinite": (
            "register('reward', 'mine', lambda prompts, responses, content: responses.float().sum(-1), "
            "bounds=(0, float('inf')))\n"
        ),
    }
    for what, body in overrides.items():
        for command in ("sweep", "train"):
            args = sweep() if command == "sweep" else ["train", "--plugin", "bad_plugin", "--num-epochs", "2"]
            cases.append(
                Case(
                    "plug-in behaviour",
                    f"registers {what} ({command})",
                    args,
                    "error",
                    files={"bad_plugin.py": plugin(body), "g.toml": tiny(base='plugins = ["bad_plugin"]')},
                    error_has=("bad_plugin",),
                    trained_nothing=True,
                )
            )
    at_import = {
        "sys.exit(3)": "import sys\nsys.exit(3)\n",
        "sys.exit(0)": "import sys\nsys.exit(0)\n",
        "KeyboardInterrupt": "raise KeyboardInterrupt\n",
        "ImportError": "import no_such_module_anywhere\n",
        "SyntaxError": "def broken(:\n",
        "RuntimeError": "raise RuntimeError('boom')\n",
        "a missing module": None,
    }
    for what, body in at_import.items():
        files = {"g.toml": tiny(base='plugins = ["bad_plugin"]')}
        if body is not None:
            files["bad_plugin.py"] = body
        for command in ("sweep", "train"):
            args = sweep() if command == "sweep" else ["train", "--plugin", "bad_plugin", "--num-epochs", "2"]
            cases.append(
                Case(
                    "plug-in behaviour",
                    f"{what} at import ({command})",
                    args,
                    "error",
                    files=files,
                    error_has=("bad_plugin",),
                    trained_nothing=True,
                )
            )
    good = plugin("register('deltas_mode', 'rank_test', lambda r: r.argsort(-1).argsort(-1).float() - 4.5)\n")
    ranked = tiny(base='plugins = ["good_plugin"]', grid="").replace(
        'deltas_mode = ["rewards", "centered_rewards"]', 'deltas_mode = ["rank_test", "centered_rewards"]'
    )

    def edit(work: Path) -> None:
        path = work / "good_plugin.py"
        path.write_text(path.read_text().replace("- 4.5", "- 5.5"))

    def retrained(work: Path, run: Run) -> str | None:
        if "4 trained, 0 already stored" not in run.stderr:
            return "the edited plug-in's runs were not trained again: " + " | ".join(run.stderr.splitlines()[-1:])
        return None

    for backend in ("loky", "dask"):
        cases.append(
            Case(
                "plug-in behaviour",
                f"changed plug-in code retrains ({backend})",
                sweep("g.toml", "--backend", backend),
                "ok",
                files={"good_plugin.py": good, "g.toml": ranked},
                before=[sweep("g.toml", "--backend", backend)],
                between=edit,
                check=retrained,
            )
        )
        cases.append(
            Case(
                "plug-in behaviour",
                f"plug-in beside the grid file, run from another folder ({backend})",
                ["sweep", "../grids/g.toml", "--results", "res", "--n-jobs", "2", "--backend", backend],
                "ok",
                files={"grids/good_plugin.py": good, "grids/g.toml": ranked, "elsewhere/.keep": ""},
                cwd="elsewhere",
                check=expect_runs(4, "elsewhere/res"),
            )
        )
    cases.append(
        Case(
            "plug-in behaviour",
            "report finds the plug-in beside the grid it is given",
            ["report", "--results", "res", "--grid", "../grids/g.toml"],
            "ok",
            files={"grids/good_plugin.py": good, "grids/g.toml": ranked, "elsewhere/.keep": ""},
            cwd="elsewhere",
            before=[["sweep", "../grids/g.toml", "--results", "res", "--n-jobs", "1"]],
            check=lambda work, run: None if (work / "elsewhere/res/REPORT.md").is_file() else "no REPORT.md",
        )
    )
    cases.append(
        Case(
            "plug-in behaviour",
            "report without the plug-in leaves that experiment out",
            ["report", "--results", "grids/res"],
            "any",
            files={"grids/good_plugin.py": good, "grids/g.toml": ranked},
            before=[["sweep", "grids/g.toml", "--results", "grids/res", "--n-jobs", "1"]],
        )
    )
    return cases


def security_cases() -> list[Case]:
    cases = []
    bad_ids = {
        "../../../escaped": "../ chain",
        "../escaped": "one ../",
        "/tmp/sortrl-hostile-escape": "an absolute path",
        "A\nB | x": "a newline and a pipe",
        "a/b": "a slash",
        "a\\\\b": "a backslash",
        "": "empty",
        ".": "a dot",
        "..": "two dots",
        "with space": "a space",
        "a|b": "a pipe",
        "x" * 300: "300 characters",
        "nul\u0000x": "a NUL",
    }
    for claim_id, what in bad_ids.items():
        cases.append(
            Case(
                "security",
                f"claim id: {what}",
                sweep(),
                "error",
                files={"g.toml": tiny(claims=claim(claim_id.replace("\n", "\\n").replace("\u0000", "\\u0000")))},
                error_has=("id",),
                trained_nothing=True,
            )
        )
    bad_names = {
        "../../escaped": "../ chain",
        "/tmp/sortrl-hostile-escape": "an absolute path",
        "a/b": "a slash",
        "A\\nB": "a newline",
        "": "empty",
        ".": "a dot",
        "..": "two dots",
        "with space": "a space",
        "x" * 300: "300 characters",
    }
    for name, what in bad_names.items():
        cases.append(
            Case(
                "security",
                f"experiment name: {what}",
                sweep(),
                "error",
                files={"g.toml": tiny(name=name)},
                error_has=("name",),
                trained_nothing=True,
            )
        )
    for name, what in {"../../evil": "../ chain", "/tmp/sortrl-hostile-escape": "an absolute path"}.items():
        cases.append(
            Case(
                "security",
                f"--name of a built grid: {what}",
                ["sweep", "--axis", "deltas_mode=rewards,centered_rewards", "--set", "num_epochs=2", "--name", name,
                 "--seeds", "2", "--results", "res", "--n-jobs", "1"],
                "error",
                error_has=("name",),
                trained_nothing=True,
            )
        )  # fmt: skip
    cases += [
        Case(
            "security",
            "experiment 'claim' and claim 'final_reward' write one figure",
            sweep(),
            "error",
            files={"g.toml": tiny(name="claim", claims=claim("final_reward"))},
            error_has=("claim_final_reward",),
            trained_nothing=True,
        ),
        Case(
            "security",
            "two grid files with one name",
            ["sweep", "a.toml", "b.toml", "--results", "res", "--n-jobs", "1"],
            "error",
            files={"a.toml": tiny(name="same"), "b.toml": tiny(name="same").replace("seeds = 2", "seeds = 3")},
            error_has=("same",),
            trained_nothing=True,
        ),
        Case(
            "security",
            "one claim id in two grid files",
            ["sweep", "a.toml", "b.toml", "--results", "res", "--n-jobs", "1"],
            "error",
            files={"a.toml": tiny(name="a", claims=claim("C1")), "b.toml": tiny(name="b", claims=claim("C1"))},
            error_has=("C1",),
            trained_nothing=True,
        ),
        Case(
            "security",
            "two claims with one id in a grid file",
            sweep(),
            "error",
            files={"g.toml": tiny(claims=claim("C1") + claim("C1"))},
            error_has=("C1",),
            trained_nothing=True,
        ),
        Case(
            "security",
            "figures = ['../x']",
            sweep(),
            "error",
            files={"g.toml": tiny(top='figures = ["../x"]')},
            error_has=("figures",),
            trained_nothing=True,
        ),
        Case(
            "security",
            "figures = ['nope']",
            sweep(),
            "error",
            files={"g.toml": tiny(top='figures = ["nope"]')},
            error_has=("nope",),
            trained_nothing=True,
        ),
    ]

    def tamper(claim_id: str) -> Callable[[Path], None]:
        def change(work: Path) -> None:
            stored = work / "res" / "runs" / "tiny" / "grid.toml"
            stored.write_text(stored.read_text() + claim(claim_id))

        return change

    for claim_id in ("../../../escaped", "/tmp/sortrl-hostile-escape"):
        cases.append(
            Case(
                "security",
                f"report of a stored grid.toml edited to claim id {claim_id!r}",
                ["report", "--results", "res"],
                "any",
                files={"g.toml": tiny()},
                before=[sweep()],
                between=tamper(claim_id),
            )
        )
    return cases


def claim_cases() -> list[Case]:
    more = {
        "figure = 'nope'": ('figure = "nope"', "figure"),
        "margin = inf (predicts same)": ("margin = inf\npredicts_ = 1", "margin"),
        "margin = nan": ("margin = nan", "margin"),
        "margin = 0": ("margin = 0", "margin"),
        "margin = -1": ("margin = -1", "margin"),
        "margin = 'wide'": ('margin = "wide"', "margin"),
        "margin = true": ("margin = true", "margin"),
        "implied = nan": ("implied = nan", "implied"),
        "implied = inf": ("implied = inf", "implied"),
        "implied = -0.1": ("implied = -0.1", "implied"),
        "seed not in the grid": ("seed = 99", "seed"),
        "unknown key": ("colour = 'red'", "colour"),
        "metric = 3": ("metric = 3", "metric"),
        "metric unknown": ('metric = "no_such_metric"', "no_such_metric"),
        "kind unknown": ('kind = "vibes"', "kind"),
        "kind trend without an axis": ('kind = "trend"', "axis"),
        "across an unknown axis": ('across = "colour"', "across"),
        "within two equal values": (
            'kind = "interaction"\nwithin = { deltas_mode = ["rewards", "rewards"] }',
            "within",
        ),
        "within kl_penalty [0.0, 0.0]": (
            'kind = "interaction"\nwithin = { kl_penalty = [0.0, 0.0] }',
            "within",
        ),
    }
    cases = []
    for what, (extra, says) in more.items():
        text = claim("C1", extra)
        if "predicts_" in text:  # margin = inf with predicts = "same"
            text = text.replace('predicts = "higher"', 'predicts = "same"').replace("predicts_ = 1\n", "")
        cases.append(
            Case(
                "claims at sweep time",
                what,
                sweep(),
                "error",
                files={"g.toml": tiny(claims=text)},
                error_has=(says,),
                trained_nothing=True,
            )
        )
    replaced = {
        "predicts = 'maybe'": (('predicts = "higher"', 'predicts = "maybe"'), "predicts"),
        "no statement": (('statement = "centering helps"\n', ""), "statement"),
        "a two-line statement": (('statement = "centering helps"', 'statement = "centering\\nhelps"'), "statement"),
        "new == old": (('new = { deltas_mode = "centered_rewards" }', 'new = { deltas_mode = "rewards" }'), "same"),
        "new names no configuration": (
            ('new = { deltas_mode = "centered_rewards" }', 'new = { deltas_mode = "max_rewards" }'),
            "new",
        ),
        "new names an unknown field": (
            ('new = { deltas_mode = "centered_rewards" }', "new = { colour = 1 }"),
            "colour",
        ),
        "id is a number": (('id = "C1"', "id = 5"), "id"),
    }
    for what, ((old, new), says) in replaced.items():
        cases.append(
            Case(
                "claims at sweep time",
                what,
                sweep(),
                "error",
                files={"g.toml": tiny(claims=claim("C1").replace(old, new))},
                error_has=(says,),
                trained_nothing=True,
            )
        )
    cases.append(
        Case(
            "claims at sweep time",
            "a good claim sweeps and reports",
            ["report", "--results", "res"],
            "ok",
            files={"g.toml": tiny(claims=claim("C1"))},
            before=[sweep()],
            check=lambda work, run: None if "C1" in (work / "res" / "CLAIMS.md").read_text() else "C1 not in CLAIMS.md",
        )
    )
    return cases


def interrupt_cases() -> list[Case]:
    cases = []
    for command in ("sweep", "train", "report"):
        for seconds in (0.3, 1.0, 2.0, 3.0, 5.0):
            if command == "sweep":
                args, before = ["sweep", "s.toml", "--results", "res", "--n-jobs", "2", "--chunk-size", "2"], []
            elif command == "train":
                args, before = ["train", "--num-epochs", "3000", "--seeds", "16"], []
            else:
                args, before = ["report", "--results", "res", "--no-cache"], [sweep("g.toml")]
            cases.append(
                Case(
                    "interrupts",
                    f"Ctrl-C {seconds:g} s into {command}",
                    args,
                    "interrupt",
                    files={"s.toml": SLOW, "g.toml": tiny()},
                    before=before,
                    interrupt=(seconds, signal.SIGINT),
                )
            )
    for how, name in ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")):
        cases.append(
            Case(
                "interrupts",
                f"{name} once the sweep stored a chunk: the stored runs stay, whole",
                ["sweep", "s.toml", "--results", "res", "--n-jobs", "2", "--chunk-size", "2"],
                "interrupt",
                files={"s.toml": SLOW},
                interrupt=(-2, how),  # -2: once a chunk is stored
                check=lambda work, run: None if stored_runs(work) >= 2 else "nothing stored",
            )
        )
    for seconds in (1.0, 4.0):
        cases.append(
            Case(
                "interrupts",
                f"SIGTERM {seconds:g} s into sweep",
                ["sweep", "s.toml", "--results", "res", "--n-jobs", "2", "--chunk-size", "2"],
                "interrupt",
                files={"s.toml": SLOW},
                interrupt=(seconds, signal.SIGTERM),
            )
        )

    for command in ("sweep", "report"):
        for how, name in ((signal.SIGKILL, "kill -9"), (signal.SIGTERM, "SIGTERM")):
            args = (
                ["sweep", "s.toml", "--results", "res", "--n-jobs", "2", "--chunk-size", "2"]
                if command == "sweep"
                else ["report", "--results", "res", "--no-cache"]
            )
            cases.append(
                Case(
                    "interrupts",
                    f"{name} of {command}'s main process alone, 6 s in: no process left",
                    args,
                    "killed" if how == signal.SIGKILL else "interrupt",
                    files={"s.toml": SLOW, "g.toml": tiny(), "h.toml": tiny(name="other")},
                    before=[] if command == "sweep" else [["sweep", "g.toml", "h.toml", "--results", "res"]],
                    interrupt=(6.0, how),
                )
            )

    def resumed(work: Path, run: Run) -> str | None:
        return expect_runs(16)(work, run) or (None if "already stored" in run.stderr else "did not resume")

    cases.append(
        Case(
            "interrupts",
            "kill -9 of a sweep, then the same command",
            ["sweep", "s.toml", "--results", "res", "--n-jobs", "2", "--chunk-size", "2"],
            "ok",
            files={"s.toml": SLOW},
            before=[["@kill-after", "4", "sweep", "s.toml", "--results", "res", "--n-jobs", "2", "--chunk-size", "2"]],
            check=resumed,
        )
    )
    return cases


def resource_cases() -> list[Case]:
    cores = os.cpu_count() or 1

    def capped(work: Path, run: Run) -> str | None:
        found = re.search(r"on (\d+) workers?", run.stderr)
        if found is None:
            return "no plan line"
        return None if int(found[1]) <= cores else f"plan says {found[1]} workers on {cores} cores"

    many = tiny(name="many").replace("seeds = 2", "seeds = 32")
    cases = [
        Case(
            "resources",
            f"--n-jobs 16 --chunk-size 1 on {cores} cores ({backend})",
            ["sweep", "g.toml", "--results", "res", "--n-jobs", "16", "--chunk-size", "1", "--backend", backend],
            "ok",
            files={"g.toml": many},
            check=capped,
        )
        for backend in ("loky", "dask")
    ]
    errors = {
        "--n-jobs 0": (["--n-jobs", "0"], "n-jobs"),
        "--n-jobs -5": (["--n-jobs", "-5"], "n-jobs"),
        "--chunk-size 0": (["--chunk-size", "0"], "chunk-size"),
        "--n-jobs x": (["--n-jobs", "x"], "n-jobs"),
        "--backend spark": (["--backend", "spark"], "backend"),
        "--scheduler without dask": (["--scheduler", "tcp://127.0.0.1:9"], "scheduler"),
        "--scheduler unreachable": (["--backend", "dask", "--scheduler", "tcp://127.0.0.1:9"], "scheduler"),
    }
    for what, (more, says) in errors.items():
        cases.append(
            Case(
                "resources",
                what,
                ["sweep", "g.toml", "--results", "res", *more],
                "error",
                files={"g.toml": tiny()},
                error_has=(says,),
                trained_nothing=True,
                timeout=90,
            )
        )

    def quick(limit: float) -> Callable[[Path, Run], str | None]:
        return lambda work, run: None if run.seconds < limit else f"took {run.seconds:.1f} s"

    huge = {
        "seeds = 1000000": "seeds = 1000000",
        "seeds = 100000000000": "seeds = 100000000000",
        "seeds = -1": "seeds = -1",
        "seeds = 0": "seeds = 0",
        "seeds = 2.5": "seeds = 2.5",
        "an axis of 3000 values x 1000 seeds": "seeds = 1000",
    }
    for what, line in huge.items():
        text = tiny(name="huge").replace("seeds = 2", line)
        if "axis" in what:
            text = text.replace(
                'deltas_mode = ["rewards", "centered_rewards"]',
                f"learning_rate = {[i / 1e5 + 1e-4 for i in range(3000)]}",
            )
        cases.append(
            Case(
                "resources",
                what,
                sweep(),
                "error",
                files={"g.toml": text},
                error_has=("seeds",) if "axis" not in what else (),
                check=quick(10),
                trained_nothing=True,
                timeout=90,
            )
        )
    for what, (more, expect) in {
        "--embedding-dim 100000": (["--embedding-dim", "100000"], "error"),
        "--embedding-dim 1000000000": (["--embedding-dim", "1000000000"], "error"),
        "--num-responses 10000000": (["--num-responses", "10000000"], "any"),  # ~1 GiB: trains where that fits
    }.items():
        cases.append(
            Case(
                "resources",
                f"train {what}",
                ["train", *more, "--num-epochs", "1"],
                expect,
                error_has=("GiB",),
                timeout=150,
            )
        )
    return cases


def store_cases() -> list[Case]:
    def flip(work: Path) -> None:
        path = chunks(work / "res")[0]
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))

    def truncate(work: Path) -> None:
        path = chunks(work / "res")[0]
        path.write_bytes(path.read_bytes()[:100])

    def garbage_manifest(work: Path) -> None:
        (work / "res" / "runs" / "tiny" / "manifest.json").write_text("{not json")

    cases = []
    for what, change in {"a flipped bit": flip, "a truncated chunk": truncate}.items():
        cases.append(
            Case(
                "stored data",
                f"sweep again after {what}",
                sweep(),
                "ok",
                files={"g.toml": tiny()},
                before=[sweep()],
                between=change,
                check=expect_runs(4),
            )
        )
        cases.append(
            Case(
                "stored data",
                f"report after {what}",
                ["report", "--results", "res"],
                "any",
                files={"g.toml": tiny()},
                before=[sweep()],
                between=change,
            )
        )
    cases += [
        Case(
            "stored data",
            "sweep again after a garbage manifest.json",
            sweep(),
            "any",
            files={"g.toml": tiny()},
            before=[sweep()],
            between=garbage_manifest,
        ),
        Case(
            "stored data",
            "sweep of an edited grid keeps the old runs",
            sweep(),
            "ok",
            files={"g.toml": tiny()},
            before=[sweep()],
            between=lambda work: (work / "g.toml").write_text(tiny().replace("seeds = 2", "seeds = 3")),
            check=expect_runs(6),
        ),
        Case(
            "stored data",
            "report of an empty results folder",
            ["report", "--results", "res"],
            "error",
            files={"res/.keep": ""},
            error_has=("res",),
        ),
    ]
    return cases


def dask_cases() -> list[Case]:
    return [
        Case(
            "dask workers",
            f"a local Dask worker {what} after it joined",
            ["sweep", "s.toml", "--results", "res", "--n-jobs", "2", "--chunk-size", "2", "--backend", "dask"],
            "ok",
            files={"s.toml": SLOW},
            interrupt=(-1, how),  # -1: a Dask worker, once the first chunk is stored
            check=expect_runs(16),
            timeout=300,
        )
        for what, how in (("stopped (SIGSTOP)", signal.SIGSTOP), ("killed (SIGKILL)", signal.SIGKILL))
    ]


def all_cases() -> list[Case]:
    return [
        *security_cases(),
        *claim_cases(),
        *plugin_cases(),
        *plugin_behaviour_cases(),
        *interrupt_cases(),
        *resource_cases(),
        *store_cases(),
        *dask_cases(),
    ]


# --- running and classifying ----------------------------------------------------------------------------------------


def session(leader: int) -> list[int]:
    """Live processes of the session `leader` started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = (Path("/proc") / entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == leader and fields[0] != "Z":
            found.append(int(entry))
    return found


def dask_workers(leader: int) -> list[int]:
    pids = []
    for pid in session(leader):
        with contextlib.suppress(OSError):
            if b"spawn_main" in (Path("/proc") / str(pid) / "cmdline").read_bytes():
                pids.append(pid)
    return pids


def kill_session(leader: int) -> None:
    for pid in session(leader):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class Runner:
    def __init__(self, command: list[str], env: dict[str, str]):
        self.command, self.env = command, env

    def run(
        self, args: list[str], cwd: Path, timeout: float, interrupt: tuple[float, int] | None = None
    ) -> tuple[Run, list[int]]:
        """Run `sortrl args`; returns what it did and the processes of its session left running 10 s after."""
        start = time.monotonic()
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [*self.command, *args],
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
            stopped: list[int] = []
            try:
                if interrupt is not None:
                    self._disturb(proc, cwd, interrupt, stopped, start + timeout)
                code: int | None = proc.wait(timeout=max(1.0, start + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = None
            seconds = time.monotonic() - start
            left = [] if code is None else self._settle(proc.pid, 10)
            kill_session(proc.pid)
            for pid in stopped:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            err.seek(0)
            return Run(code, err.read().decode(errors="replace"), seconds), left

    @staticmethod
    def _disturb(proc: subprocess.Popen, cwd: Path, interrupt: tuple[float, int], stopped: list[int], end: float):
        seconds, how = interrupt
        if seconds == -2:  # the command, once the first chunk is stored
            while not chunks(cwd) and proc.poll() is None and time.monotonic() < end:
                time.sleep(0.01)
            seconds = 0.0
        elif seconds < 0:  # a Dask worker, once the first chunk is stored
            while not chunks(cwd) and proc.poll() is None and time.monotonic() < end:
                time.sleep(0.02)
            workers = dask_workers(proc.pid)
            if workers:
                os.kill(workers[0], how)
                stopped.append(workers[0])
            return
        deadline = time.monotonic() + seconds
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, how) if how == signal.SIGINT else os.kill(proc.pid, how)

    @staticmethod
    def _settle(leader: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while session(leader) and time.monotonic() < deadline:
            time.sleep(0.1)
        return session(leader)


def digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def snapshot(root: Path, work: Path) -> set[str]:
    """Files under `root` outside `work` (where a case must never write)."""
    return {str(p) for p in root.rglob("*") if not p.is_relative_to(work)}


ESCAPE = Path("/tmp/sortrl-hostile-escape")


def classify(case: Case, run: Run, left: list[int], lost: list[str], escaped: list[str], work: Path) -> tuple[str, str]:
    lines = run.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "")
    if run.code is None:
        return "hang", f"no exit within {case.timeout:g} s; last line: {last[:150]}"
    if "Traceback (most recent call last)" in run.stderr or re.search(r'^\s+File ".*", line \d+', run.stderr, re.M):
        first = next((line for line in reversed(lines) if line and not line.startswith(" ")), "")
        return "traceback", f"{len(lines)} lines; {first[:150]}"
    if left:
        return "hang", f"{len(left)} process(es) of the command still running 10 s after it exited"
    if lost:
        return "loss", f"{len(lost)} stored chunk(s) gone or changed"
    if escaped:
        return "silent wrong", f"wrote outside the results folder: {escaped[0]}"
    if case.trained_nothing and chunks(work) and case.expect == "error":
        return "silent wrong", f"trained before refusing: {len(chunks(work))} chunk(s) stored; {last[:120]}"
    problem = case.check(work, run) if case.check is not None else None
    if case.expect == "killed":  # kill -9: nothing to say, nothing may be left running or lost
        return ("silent wrong", problem) if problem else ("clean", f"exit {run.code}, nothing left running")
    if case.expect == "interrupt":
        said = [line for line in lines if re.match(r"(interrupted|stopped|aborted)\b", line)]
        if run.code == 0:
            return ("silent wrong", problem) if problem else ("clean", "finished before the signal")
        if errors:
            return "noisy", last[:150]
        if not said:
            return "silent exit", f"exit {run.code}, no line said so"
        return ("clean", said[-1][:150]) if len(said) == 1 else ("noisy", f"{len(said)} lines")
    if case.expect == "ok":
        if run.code != 0:
            return ("refused", last[:150]) if errors else ("silent exit", f"exit {run.code}: {last[:150]}")
        return ("silent wrong", problem) if problem else ("clean", "")
    if run.code == 0:
        if case.expect == "any":
            return ("silent wrong", problem) if problem else ("clean", "accepted")
        return "silent wrong", f"accepted (exit 0){'; ' + problem if problem else ''}"
    if not errors:
        return "silent exit", f"exit {run.code}: {last[:150]}"
    if len(errors) > 1:
        return "noisy", f"{len(errors)} error lines: {errors[0][:100]}"
    missing = [text for text in case.error_has if text not in errors[0]]
    if missing:
        return "unclear", f"the line does not say {missing[0]!r}: {errors[0][:150]}"
    if problem:
        return "silent wrong", problem
    return "clean", errors[0][:150]


def run_case(case: Case, runner: Runner, root: Path) -> tuple[Case, str, str, float]:
    base = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    work = base / "a" / "b" / "c" / "work"  # ../../../ from here stays in `base`: escapes are seen
    work.mkdir(parents=True)
    for name, text in case.files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    cwd = work / case.cwd
    try:
        for command in case.before:
            if command[0] == "@kill-after":
                done, _ = runner.run(command[2:], cwd, case.timeout, (float(command[1]), signal.SIGKILL))
                continue
            done, _ = runner.run(command, cwd, case.timeout)
            if done.code != 0:
                return case, "setup failed", f"{' '.join(command)}: {done.stderr.strip()[-200:]}", 0.0
        before = digest(chunks(work))
        if case.between is not None:
            case.between(work)
        outside = snapshot(base, work)
        escape_before = ESCAPE.exists()
        kept = {p: h for p, h in digest(chunks(work)).items() if before.get(p, h) == h}  # not changed on purpose
        run, left = runner.run(case.args, cwd, case.timeout, case.interrupt)
        now = digest(chunks(work))
        lost = [p for p, h in kept.items() if now.get(p) != h]
        escaped = sorted(snapshot(base, work) - outside)
        if ESCAPE.exists() and not escape_before:
            escaped.append(str(ESCAPE))
        outcome, detail = classify(case, run, left, lost, escaped, work)
        return case, outcome, detail, run.seconds
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if ESCAPE.exists():
            shutil.rmtree(ESCAPE, ignore_errors=True) if ESCAPE.is_dir() else ESCAPE.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sortrl", help="the sortrl command (default: this checkout, python -m sortrl)")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--only", help="comma-separated categories (prefixes)")
    parser.add_argument("-k", dest="keyword", help="only the cases whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--json", type=Path, help="also write the outcomes here")
    options = parser.parse_args()

    cases = all_cases()
    if options.only:
        wanted = [w.strip() for w in options.only.split(",")]
        cases = [c for c in cases if any(c.category.startswith(w) for w in wanted)]
    if options.keyword:
        cases = [c for c in cases if options.keyword in c.key]
    if options.list:
        for case in cases:
            print(f"{case.key}  [{case.expect}]")
        print(f"{len(cases)} cases")
        return

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started with `&` or nohup: the commands would inherit it,
        signal.signal(signal.SIGINT, signal.default_int_handler)  # and sortrl keeps ignoring Ctrl-C when started so
    root = Path(tempfile.mkdtemp(prefix="sortrl-hostile-"))
    env = dict(os.environ)
    env.update(
        SORTRL_PROGRESS_SECONDS="3600",  # no timed progress lines in what is classified
        XDG_CACHE_HOME=str(root / "cache"),
        MPLBACKEND="Agg",
        PYTHONDONTWRITEBYTECODE="1",
    )
    if options.sortrl:
        command = [options.sortrl]
    else:
        command = [sys.executable, "-m", "sortrl"]
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    runner = Runner(command, env)
    print(f"{len(cases)} cases, {options.jobs} at a time, in {root}", file=sys.stderr)
    rows = []
    try:
        with concurrent.futures.ThreadPoolExecutor(options.jobs) as pool:
            futures = [pool.submit(run_case, case, runner, root) for case in cases]
            for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
                case, outcome, detail, seconds = future.result()
                rows.append((case, outcome, detail, seconds))
                mark = "" if outcome == "clean" else f"  <- {outcome}: {detail}"
                print(f"[{n}/{len(cases)}] {case.key} ({seconds:.1f} s){mark}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    order = {c.key: i for i, c in enumerate(cases)}
    rows.sort(key=lambda row: order[row[0].key])
    width = max(len(row[0].key) for row in rows)
    print(f"\n{'case':<{width}}  {'expected':<9}  {'outcome':<12}  {'s':>5}  detail")
    for case, outcome, detail, seconds in rows:
        print(f"{case.key:<{width}}  {case.expect:<9}  {outcome:<12}  {seconds:5.1f}  {detail}")
    categories = list(dict.fromkeys(c.category for c in cases))
    seen = [o for o in (*OUTCOMES, "setup failed") if any(row[1] == o for row in rows)]
    counts = Counter((row[0].category, row[1]) for row in rows)
    print(f"\n{'category':<22}" + "".join(f"{o:>14}" for o in seen) + f"{'total':>8}")
    for category in categories:
        total = sum(counts[(category, o)] for o in seen)
        print(f"{category:<22}" + "".join(f"{counts[(category, o)]:>14}" for o in seen) + f"{total:>8}")
    totals = Counter(row[1] for row in rows)
    print(f"{'all':<22}" + "".join(f"{totals[o]:>14}" for o in seen) + f"{len(rows):>8}")
    if options.json:
        options.json.write_text(
            json.dumps(
                [{"case": c.key, "expected": c.expect, "outcome": o, "detail": d, "seconds": round(s, 1)}
                 for c, o, d, s in rows],
                indent=1,
            )
        )  # fmt: skip
    sys.exit(0 if totals["clean"] == len(rows) else 1)


if __name__ == "__main__":
    main()
