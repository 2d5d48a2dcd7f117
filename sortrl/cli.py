"""The `sortrl` command line: thin commands that build `RunConfig`s and call the library.

`sortrl train` takes one option per `RunConfig` field (same names, kebab-case),
generated from the dataclass so the two never drift apart. Bad input of any
kind ends with one line on stderr (`error: <field>: <what is allowed>`) and
exit code 2, never a traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import inspect
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import warnings
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer vendors click
from typer.core import TyperGroup

from sortrl.engine.config import CHOICES, RunConfig, choice_docs, field_docs, ignored_fields, make_config
from sortrl.engine.recipes import RECIPES
from sortrl.engine.registry import ConfigError

if TYPE_CHECKING:
    from sortrl.study.sweep import Plan


class _OneLineErrors(TyperGroup):
    """Click group whose bad-input errors are one line on stderr with exit code 2 (no usage box, no traceback)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        with warnings.catch_warnings(), _terminate_as_exit():
            warnings.showwarning = _one_line_warning
            self._run(*args, **kwargs)

    def _run(self, *args: Any, **kwargs: Any) -> None:
        try:
            code = super().main(*args, **kwargs)
        except NoArgsIsHelpError as err:
            err.show()
            sys.exit(0)
        except typer.Abort:
            print("aborted", file=sys.stderr)
            sys.exit(130)
        except (ClickException, ConfigError) as err:
            message = err.format_message() if isinstance(err, ClickException) else str(err)
            print(f"error: {' '.join(message.split())}", file=sys.stderr)
            sys.exit(err.exit_code if isinstance(err, ClickException) else 2)
        except OSError as err:  # a file or folder the command could not use: one line, not a traceback
            where = err.filename2 or err.filename
            print(f"error: {err.strerror or err}" + (f": {where}" if where else ""), file=sys.stderr)
            sys.exit(1)
        except _Terminated:  # SIGTERM (`kill`, a batch system's limit): unwound like Ctrl-C, one line
            print("stopped", file=sys.stderr)
            sys.exit(143)
        if code == 130:  # typer turns a Ctrl-C (KeyboardInterrupt) into exit code 130, without a word
            print("interrupted", file=sys.stderr)
        sys.exit(code if isinstance(code, int) else 0)


class _Terminated(SystemExit):
    """SIGTERM arrived: unwinds like Ctrl-C (finally blocks and atomic writes run), then one line and exit 143."""


@contextlib.contextmanager
def _terminate_as_exit() -> Any:
    """Meanwhile SIGTERM raises `_Terminated` (where it still has the default action, in the main thread): a command
    killed by `kill` says so in one line instead of vanishing (`sortrl sweep` has its own handler, and line)."""

    def terminated(signum: int, frame: Any) -> None:
        raise _Terminated(143)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    if previous is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Show a warning (e.g. a skipped results file) as one `warning: ...` line on stderr."""
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


app = typer.Typer(
    cls=_OneLineErrors,
    rich_markup_mode=None,
    help="sortrl: which GRPO design choices matter, on CS336 lecture 17's sorting task, over many seeds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
ResultsOption = Annotated[Path, typer.Option("--results", help="Results folder (runs/ inside it, figures/ beside).")]


def _progress(count: ProgressColumn | None = None) -> Progress:
    """Bars on stderr: description, bar, `count` (default: done/total), elapsed time and time left (measured speed)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        count or MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,  # no bar in logs and pipes
    )


# --- sortrl train ------------------------------------------------------
def _train_parameters() -> list[inspect.Parameter]:
    """One keyword option per RunConfig field (default None = not given), plus the command's own options."""
    docs = field_docs()
    params = []
    for f in dataclasses.fields(RunConfig):
        if f.name in ("seed", "recipe", "plugins"):
            continue
        kind: Any = _OPTION_TYPES.get(f.type, str)  # prompts, prompt_length: JSON text, parsed below
        help_text = docs.get(f.name, "") + f" [default: {_show_default(f.default)}]"
        if f.name in CHOICES:  # one value per line ("\b": click keeps the lines), as TRL's GRPOConfig documents them
            # wrapped by hand to the help column's width (the options take ~34 columns of the terminal's)
            width = max(30, shutil.get_terminal_size().columns - 34)
            lines = [
                line
                for name, doc in choice_docs(f.name).items()
                for line in textwrap.wrap(f"{name}: {doc}", width, initial_indent="  ", subsequent_indent="    ")
            ]
            help_text += "\n\n\b\nChoices:\n" + "\n".join(lines)
        if f.name == "prompts":
            help_text = "Prompts as JSON, e.g. '[[1,0,2],[3,2,4]]'. " + help_text
        if f.name == "prompt_length":
            help_text = "An integer, or a JSON list to mix lengths, e.g. '[3,5]'. " + help_text
        option = typer.Option(help=help_text, show_default=False)
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
            )
        )
    return params


_OPTION_TYPES = {"int": int, "int | None": int, "float": float, "float | None": float, "str": str, "bool": bool}


def _show_default(value: Any) -> str:
    if isinstance(value, tuple):
        return json.dumps([list(v) for v in value]).replace(" ", "")
    return "off" if value is None else str(value)


def train_command(
    seed: Annotated[
        list[str] | None,
        typer.Option(
            "--seed",
            metavar="SEEDS",
            help="Seeds of the runs: 3, a list 0,1,5 or a range 0-31 (both ends included); repeatable (default 0).",
        ),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option("--seeds", metavar="N", help="N runs, seeds 0 to N-1 (instead of --seed).")
    ] = None,
    recipe: Annotated[
        str | None, typer.Option(help=f"Named preset ({', '.join(RECIPES)}); explicit options win.")
    ] = None,
    plugin: Annotated[
        list[str] | None,
        typer.Option(
            "--plugin",
            help="A Python module to import first, whose registered variants can then be named (repeatable); "
            "see sortrl.plugins.",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the per-epoch metrics table here (.parquet or .csv).")] = None,
    **fields: Any,
) -> None:
    """Train one configuration over one or more seeds and print each seed's final mean reward."""
    from sortrl.engine.train import train

    given = {k: v for k, v in fields.items() if v is not None}
    if plugin:
        given["plugins"] = plugin
    if "prompts" in given:
        given["prompts"] = _parse_prompts(given["prompts"])
    if "prompt_length" in given:
        given["prompt_length"] = _parse_prompt_length(given["prompt_length"])
    if out is not None:
        _check_out(out)
    seeds = _parse_seeds(seed, seeds)
    configs = [make_config(recipe=recipe, **given, seed=s) for s in seeds]
    for name, why in ignored_fields(configs[0]).items():
        if name in given:
            warnings.warn(f"{name}: has no effect here ({why})", stacklevel=1)
    total = sum(c.run_steps for c in configs)
    with _progress() as bar:
        task = bar.add_task("training", total=total)
        table = train(configs, progress=lambda n: bar.advance(task, n))
    Console().print(_summary(table, configs[0]))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        from sortrl.study.store import atomic_write_bytes

        data = table.to_csv(index=False).encode() if out.suffix == ".csv" else table.to_parquet(index=False)
        atomic_write_bytes(out, data)
        console.print(f"wrote {len(table)} rows to {out}")


def _parse_seeds(given: list[str] | None, count: int | None) -> list[int]:
    """The seeds of `--seed` (each `3`, `0,1,5` or `0-31`) or `--seeds N` (0 .. N-1); `ConfigError` if bad."""
    if count is not None:
        if given:
            raise ConfigError("seeds: give --seed or --seeds, not both")
        if count < 1:
            raise ConfigError(f"seeds: must be >= 1, got {count}")
        return list(range(count))
    seeds: list[int] = []
    for text in given or ["0"]:
        for part in text.split(","):
            found = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)  # a negative seed is RunConfig's to refuse
            if found is None:
                raise ConfigError(f"seed: {text!r} is not a seed, a list (0,1,5) or a range (0-31)")
            first = int(found[1])
            last = int(found[2]) if found[2] is not None else first
            if last < first:
                raise ConfigError(f"seed: the range {part.strip()!r} is empty (write the smaller seed first)")
            seeds += range(first, last + 1)
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigError(f"seed: {twice[0]} is given twice; each seed names one run")
    return seeds


def _summary(table: Any, cfg: RunConfig) -> Table:
    """Each seed's final reward as the report defines it (mean reward over the last 10% of epochs), against the best
    possible mean reward and the uniform random policy's, and its greedy accuracy after the last epoch."""
    from sortrl.analysis.stats import FINAL_FRACTION, final_scores
    from sortrl.engine.task import reward_bounds

    final = final_scores(table, by="seed")
    last = table.sort_values("epoch").groupby("seed", sort=True).tail(1).set_index("seed")
    bounds = reward_bounds(cfg)
    epochs = max(1, math.ceil(FINAL_FRACTION * cfg.num_epochs - 1e-9))
    summary = Table(
        title=f"final reward: mean reward of the last {epochs} of {cfg.num_epochs} epochs "
        f"(best possible {bounds.best:.3g}, uniform random policy {bounds.chance:.3g})"
    )
    for name in ("seed", "final reward", "greedy accuracy", "status"):
        summary.add_column(name)
    for seed in final.index:
        row = last.loc[seed]
        summary.add_row(str(seed), f"{final[seed]:.3f}", f"{row['greedy_accuracy']:.2f}", row["status"])
    return summary


def _check_out(out: Path) -> None:
    """Fail before training, not after, if the metrics table cannot be written to `out`."""
    if out.suffix not in (".parquet", ".csv"):
        raise ConfigError(f"out: must end in .parquet or .csv, got {out.name!r}")
    if out.is_dir():
        raise ConfigError(f"out: {out} is a folder; give a file name ending in .parquet or .csv")
    parent = out.parent if str(out.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"out: cannot write under {existing}")


def _parse_prompt_length(text: str) -> int | list[int]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, int) or (isinstance(value, list) and value and all(isinstance(v, int) for v in value)):
        return value
    raise ConfigError(f"prompt_length: expected an integer or a JSON list like '[3,5]', got {text!r}")


def _parse_prompts(text: str) -> list[list[int]]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not (isinstance(value, list) and value and all(isinstance(p, list) for p in value)):
        raise ConfigError(f"prompts: expected JSON like '[[1,0,2],[3,2,4]]', got {text!r}")
    return value


train_command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [p for p in inspect.signature(train_command, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    + _train_parameters()
)
app.command("train")(train_command)


# --- sortrl sweep --------------------------------------------------------
@app.command()
def sweep(
    grid_files: Annotated[
        list[Path] | None,
        typer.Argument(help="Grid files (TOML), e.g. experiments/ablations.toml; or build one with --axis/--set."),
    ] = None,
    results: ResultsOption = Path("results"),
    n_jobs: Annotated[
        int, typer.Option(help="Worker processes (loky) or planned parallel chunks (dask); -1 = all.")
    ] = -1,
    chunk_size: Annotated[
        int, typer.Option(help="Most runs trained as one tensor program by one worker.")
    ] = 1024,  # sweep.CHUNK_SIZE
    backend: Annotated[
        str, typer.Option(help="Where chunks train: loky (processes here) or dask (a Dask cluster).")
    ] = "loky",
    scheduler: Annotated[
        str | None,
        typer.Option(help="Dask scheduler address (tcp://host:8786) for --backend dask; none: a local cluster."),
    ] = None,
    axis: Annotated[
        list[str] | None,
        typer.Option(
            metavar="FIELD=V1,V2",
            help="A grid built here: an axis (a RunConfig field and its values, or a JSON list); repeatable.",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="FIELD=VALUE", help="A grid built here: a field every run shares; repeatable."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A grid built here: its experiment name (default adhoc).")] = None,
    seeds: Annotated[int | None, typer.Option(help="A grid built here: seeds 0 .. N-1 (default 1).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List each grid's configurations and run counts; train nothing.")
    ] = False,
) -> None:
    """Train every configuration x seed of each grid file; runs already stored are skipped (resume).

    Every grid file is checked before any training starts. Without a grid file, --axis, --set, --name and --seeds
    build one (written to RESULTS/NAME.toml, so the same grid resumes and reports like any other). Progress counts
    run-steps (epochs x steps per epoch) as the workers train; outside a terminal, a line every 10 s says it
    (SORTRL_PROGRESS_SECONDS=seconds to change that).
    """
    from sortrl.study.grid import check_claim_ids, load_grid
    from sortrl.study.sweep import BACKENDS, check_scheduler, release_workers, run_sweeps

    if chunk_size < 1:
        raise ConfigError(f"chunk-size: must be >= 1, got {chunk_size}")
    if n_jobs == 0 or n_jobs < -1:
        raise ConfigError(f"n-jobs: must be -1 (all cores) or >= 1, got {n_jobs}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend: unknown value {backend!r}; valid choices: {', '.join(BACKENDS)}")
    if scheduler is not None:
        check_scheduler(scheduler, backend)
    every = _progress_seconds()
    grid_files = list(grid_files or [])
    built = _built_grid(axis, set_, name, seeds)
    if built is not None:
        if grid_files:
            raise ConfigError("sweep: give grid files or --axis/--set/--name/--seeds, not both")
        from sortrl.study.grid import parse_grid

        path = results / f"{parse_grid(built, '<command line>').name}.toml"  # checked before it is written
        grid_files = [path]
    elif not grid_files:
        raise ConfigError("sweep: give one or more grid files, or build a grid with --axis and --set")
    grids = [load_grid(path) if built is None else parse_grid(built, path) for path in grid_files]
    check_claim_ids(list(zip(grid_files, grids, strict=True)))
    if len(grids) > 1 or any(grid.figures or grid.claims for grid in grids):  # else nothing can collide or be unknown
        from sortrl.render.publish import check_names, check_outputs  # scipy, seaborn, matplotlib: only when needed

        for path, grid in zip(grid_files, grids, strict=True):
            check_names(grid, path)
        check_outputs([(grid.name, grid) for grid in grids])
    names = [grid.name for grid in grids]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"name: two grid files are both named {twice[0]!r}; each experiment needs its own name")
    for grid in grids:
        _check_results(results, grid.name)
    for path, grid in zip(grid_files, grids):  # once per grid file, not once per run
        for field_name, why in grid.ignored_fields().items():
            warnings.warn(f"{path}: {field_name}: has no effect here ({why})", stacklevel=1)
        for field_name, what in grid.peer_differences().items():
            warnings.warn(f"{path}: {field_name}: {what} (docs/variants.md)", stacklevel=1)
    if dry_run:
        for grid in grids:
            _dry_run(grid, results)
        return
    if built is not None:
        from sortrl.study.store import atomic_write_text

        atomic_write_text(grid_files[0], built)
        print(f"wrote {grid_files[0]}: run it again with `sortrl sweep {grid_files[0]}`", file=sys.stderr)
    # SIGTERM (a batch system's time limit, `kill`): unwind like Ctrl-C, so the manifest says "interrupted"
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    shown: _SweepProgress | None = None
    try:
        for grid in grids:
            if grid.num_runs >= BIG_GRID:  # planning takes ~25 us a run: say what is happening first
                print(f"{grid.name}: {grid.num_runs:,} runs: planning them", file=sys.stderr)
        with _progress(TextColumn("{task.fields[count]}")) as bar, _SweepProgress(grids, results, bar, every) as shown:
            outcomes = run_sweeps(
                grids,
                results,
                n_jobs=n_jobs,
                chunk_size=chunk_size,
                on_chunk=shown.stored_chunk,
                on_plan=shown.planned,
                on_done=shown.done,
                on_steps=shown.trained,
                backend=backend,
                scheduler=scheduler,
            )
        release_workers()
    except (KeyboardInterrupt, SystemExit) as err:  # one line: what is stored, how to resume (no traceback)
        code = err.code if isinstance(err, SystemExit) else 130
        what = "interrupted" if isinstance(err, KeyboardInterrupt) else "stopped"
        print(
            f"{what}: {shown.held() if shown else 'sweep: nothing trained yet'}; run the same command again to resume",
            file=sys.stderr,
        )
        sys.exit(code)
    finally:
        signal.signal(signal.SIGTERM, previous)
    problems = [outcome.problem for outcome in outcomes if outcome.problem is not None]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)


PROGRESS_SECONDS = 10.0
"""How often `sortrl sweep` prints a progress line when its output is not a terminal (a log, a pipe), where rich
shows no bars; the environment variable SORTRL_PROGRESS_SECONDS overrides it."""


def _progress_seconds() -> float:
    """`PROGRESS_SECONDS`, or SORTRL_PROGRESS_SECONDS when set; `ConfigError` unless that is a positive number."""
    text = os.environ.get("SORTRL_PROGRESS_SECONDS")
    if text is None:
        return PROGRESS_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:
        raise ConfigError(f"SORTRL_PROGRESS_SECONDS: expected a number of seconds > 0, got {text!r}")
    return seconds


class _SweepProgress:
    """The grids being swept together: a bar per grid (and one for all of them), in run-steps as the workers report
    them, each grid's plan line as it is planned and its outcome line as soon as its last chunk is stored, and how
    many runs are stored. Outside a terminal (no bars) a thread prints the overall progress every
    `PROGRESS_SECONDS` instead, until the `with` block ends."""

    def __init__(self, grids: list[Any], results: Path, bar: Progress, every: float = PROGRESS_SECONDS):
        self.results, self.bar, self.every = results, bar, every
        self.total = {grid.name: grid.num_runs for grid in grids}
        self.stored: dict[str, int] = {}  # grid name -> runs stored, once the grid is planned
        self.steps_done: dict[str, int] = {}  # grid name -> run-steps trained (of its plan's)
        self.tasks = {grid.name: bar.add_task(f"sweep {grid.name}", total=None, count="") for grid in grids}
        self.steps = 0
        self.overall = bar.add_task("all grids", total=None, count="", visible=len(grids) > 1)
        self.who = grids[0].name if len(grids) == 1 else "sweep"
        self.stop = threading.Event()
        self.log = None if console.is_terminal else threading.Thread(target=self._log, daemon=True)
        self.printing = threading.Lock()  # the log thread's lines fall between the plan lines and the outcome lines
        self.finished: set[str] = set()

    def __enter__(self) -> _SweepProgress:
        if self.log is not None:
            self.log.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.log is not None:
            self.log.join()

    def planned(self, name: str, plan: Plan) -> None:
        with self.printing:
            self.stored[name] = plan.stored
            self.steps_done[name] = 0
            self.bar.reset(self.tasks[name], total=plan.run_steps, count=self._runs(name))
            self.steps += plan.run_steps
            self.bar.reset(self.overall, total=self.steps, count=f"0/{self.steps:,} run-steps")
            console.print(f"{name}: {_plan_line(plan)}", soft_wrap=True)

    def trained(self, name: str, steps: int) -> None:
        """`run_sweeps`' `on_steps`: the grid's run-steps trained so far (from its listening thread)."""
        self.steps_done[name] = steps
        done = sum(self.steps_done.values())
        self.bar.update(self.tasks[name], completed=steps)
        self.bar.update(self.overall, completed=done, count=f"{done:,}/{self.steps:,} run-steps")

    def stored_chunk(self, name: str, runs: int, steps: int) -> None:
        self.stored[name] += runs
        self.bar.update(self.tasks[name], count=self._runs(name))

    def _runs(self, name: str) -> str:
        return f"{self.stored[name]:,}/{self.total[name]:,} runs"

    def _log(self) -> None:
        while not self.stop.wait(self.every):
            with self.printing:
                if len(self.stored) < len(self.total) or len(self.finished) == len(self.total):
                    continue  # not every grid planned yet (the total would be short), or every grid has said its end
                line = self.line()
                if line is not None:
                    console.print(line, soft_wrap=True)

    def line(self) -> str | None:
        """The overall progress in a line, e.g. `sweep: 1,234,000 of 30,512,000 run-steps (4%), 0:00:21 elapsed,
        about 0:05:40 left` (left: at the speed of the last 30 s, once there is one); None before training."""
        (task,) = (task for task in self.bar.tasks if task.id == self.overall)
        if not task.total:
            return None
        done, total = int(task.completed), int(task.total)
        line = f"{self.who}: {done:,} of {total:,} run-steps ({100 * done // total}%), "
        line += f"{timedelta(seconds=int(task.elapsed or 0))} elapsed"
        left = task.time_remaining
        return line if left is None else f"{line}, about {timedelta(seconds=int(left))} left"

    def done(self, outcome: Any) -> None:
        with self.printing:
            self.finished.add(outcome.name)
            console.print(
                f"{outcome.name}: {outcome.total} runs, {outcome.trained} trained, {outcome.skipped} already stored, "
                f"{outcome.wall_seconds:.1f} s{self._cost(outcome)} -> {Path(self.results) / 'runs' / outcome.name}",
                soft_wrap=True,
            )

    def _cost(self, outcome: Any) -> str:
        """The grid's own cost, when it was swept with others (its wall time is then the queue's, up to its end)."""
        if len(self.total) == 1 or not outcome.trained:
            return ""
        return f" (done then; its chunks took {outcome.worker_seconds:.1f} s of worker time)"

    def held(self) -> str:
        """What an interrupted sweep leaves stored, for its one line."""
        folder = Path(self.results) / "runs"
        if len(self.total) == 1:
            ((name, total),) = self.total.items()
            if name not in self.stored:
                return f"{name}: nothing trained yet"
            return f"{name}: {self.stored[name]:,} of {total:,} runs stored in {folder / name}"
        if not self.stored:
            return "sweep: nothing trained yet"
        complete = sum(self.stored.get(name) == total for name, total in self.total.items())
        return (
            f"sweep: {sum(self.stored.values()):,} of {sum(self.total.values()):,} runs stored in "
            f"{folder} ({complete} of {len(self.total)} grids complete)"
        )


def _built_grid(axis: list[str] | None, sets: list[str] | None, name: str | None, seeds: int | None) -> str | None:
    """The grid file text that --axis, --set, --name and --seeds describe, or None when none is given."""
    if axis is None and sets is None and name is None and seeds is None:
        return None
    from sortrl.study.grid import grid_text

    axes = {field: values for field, values in map(_assignment, axis or [])}
    base = {field: values[0] if len(values) == 1 else values for field, values in map(_assignment, sets or [])}
    return grid_text(name or "adhoc", 1 if seeds is None else seeds, base, axes)


def _assignment(text: str) -> tuple[str, list[Any]]:
    """`field=v1,v2` (or `field=[...]`, JSON) as (field, values): numbers, booleans and JSON lists as such, the rest
    as strings; `ConfigError` without a field."""
    field, equals, values = text.partition("=")
    if not equals or not field.strip():
        raise ConfigError(f"axis/set: {text!r} is not FIELD=VALUE or FIELD=V1,V2")
    field = field.strip().replace("-", "_")
    if values.strip().startswith("[["):  # one list-valued value (prompts): its JSON
        return field, [_value(values)]
    if values.strip().startswith("["):
        try:
            return field, list(json.loads(values))
        except ValueError:
            raise ConfigError(f"{field}: {values!r} is not a JSON list") from None
    return field, [_value(v) for v in values.split(",")]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def _dry_run(grid: Any, results: Path) -> None:
    """What `sortrl sweep` would do with `grid`: its configurations and how many of its runs are stored already."""
    from sortrl.study.store import completed_run_ids, runs_dir

    folder = runs_dir(results, grid.name)
    done = completed_run_ids(folder) if folder.is_dir() else set()
    runs = grid.runs()
    stored = {run.config.run_id for run in runs} & done
    steps = sum(run.config.run_steps for run in runs if run.config.run_id not in stored)
    configurations = grid.configurations()
    print(
        f"{grid.name}: {len(configurations):,} configurations x {len(grid.seeds):,} seeds = {len(runs):,} runs, "
        f"{len(stored):,} already stored, {len(runs) - len(stored):,} to train ({steps:,} run-steps)"
    )
    for c in configurations:
        print(f"  {c.label}")


BIG_GRID = 50_000
"""Runs from which `sortrl sweep` announces a grid's size before planning it (a second or more)."""


def _plan_line(plan: Plan) -> str:
    """What a sweep is about to do and roughly how long it takes (`sortrl.study.sweep.ASSUMED_RUN_STEPS_PER_S`)."""
    from sortrl.study.sweep import ASSUMED_RUN_STEPS_PER_S

    line = f"{plan.total:,} runs, {plan.stored:,} already stored, {plan.to_train:,} to train"
    if not plan.to_train:
        return line
    if plan.workers is None:  # a Dask scheduler that did not say how many workers it has
        return f"{line} ({plan.run_steps:,} run-steps) on the Dask scheduler's workers (it did not say how many)"
    workers = f"{plan.workers} worker{'s' if plan.workers > 1 else ''}"
    line += f" ({plan.run_steps:,} run-steps) on {workers}"
    seconds = plan.run_steps / (ASSUMED_RUN_STEPS_PER_S * plan.workers)
    if seconds < 60:  # small sweeps: start-up dominates, an estimate would mislead
        return line
    return (
        f"{line}: about {_duration(seconds)} at {ASSUMED_RUN_STEPS_PER_S:,} run-steps/s per worker (the default model)"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _check_results(results: Path, experiment: str | None = None) -> None:
    """Fail early, with one line, if the results folder cannot be used (not a folder, not writable, unreadable)."""
    from sortrl.study.store import temporary_prefix

    if results.exists() and not results.is_dir():
        raise ConfigError(f"results: {results} exists and is not a folder")
    folders = [results / "runs"] + ([results / "runs" / experiment] if experiment else [])
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"results: {folder} exists and is not a folder")
    try:
        folders[-1].mkdir(parents=True, exist_ok=True)
        for folder in folders:
            os.listdir(folder)
        fd, probe = tempfile.mkstemp(dir=folders[-1], prefix=temporary_prefix("probe"))
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        where = err.filename or folders[-1]
        raise ConfigError(
            f"results: cannot use {where} ({err.strerror or err}); need a readable, writable folder"
        ) from None


# --- sortrl report -------------------------------------------------------
@app.command()
def report(
    results: ResultsOption = Path("results"),
    readme: Annotated[
        Path | None,
        typer.Option(
            "--readme",
            help="Also rewrite the generated headline block of this Markdown file (e.g. README.md).",
        ),
    ] = None,
    grid: Annotated[
        list[Path] | None,
        typer.Option(
            "--grid",
            help="A grid file to report its experiment with instead of the copy its sweep stored (its claims and "
            "figures, on the same runs); repeatable.",
        ),
    ] = None,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache",
            help="Reuse an experiment's analysis and figures from its report cache (RESULTS/runs/<name>/) while "
            "nothing they depend on changed: its runs, grid, sortrl's code, the libraries. Same bytes either way.",
        ),
    ] = True,
) -> None:
    """Figures, summary tables and REPORT.md from the runs stored under RESULTS/runs/.

    The report reads each experiment's grid from the copy its sweep stored; a grid file under experiments/ that
    differs from it is warned about (use --grid to report with yours).
    """
    from sortrl.render.publish import write_report

    if not (results / "runs").is_dir():
        raise ConfigError(f"results: no runs folder at {results / 'runs'}; run `sortrl sweep` first")
    from sortrl.render.sentences import plural
    from sortrl.study.store import experiment_names

    names = experiment_names(results)
    done: list[Any] = []

    def planned(cached: list[str], todo: list[str]) -> None:
        line = f"report: {plural(len(names), 'experiment')} of {results / 'runs'}"
        if cached:
            line += f", {len(cached)} unchanged since the last report (from their report caches)"
        if todo:
            line += f", {len(todo)} to analyse and draw"
        console.print(line, soft_wrap=True)

    def finished(experiment: Any) -> None:
        done.append(experiment)
        how = "from its report cache" if experiment.cached else "analysed and drawn"
        console.print(f"report: {len(done)}/{len(names)} {experiment.name}: {how} in {experiment.seconds:.1f} s")

    written = write_report(
        results, readme=readme, grids=grid or [], use_cache=cache, on_experiment=finished, on_plan=planned
    )
    for path in written:
        console.print(f"wrote {path}")


# --- sortrl verify -------------------------------------------------------
@app.command()
def verify(
    results: Annotated[Path, typer.Argument(help="Results folder whose runs/ to check.")] = Path("results"),
    sample: Annotated[
        int,
        typer.Option("--sample", help="Runs to retrain, drawn at random (seeded) over every experiment; 0: all."),
    ] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample (the same runs every time).")] = 0,
) -> None:
    """Retrain a seeded sample of the stored runs and check they are what this sortrl trains, bit for bit.

    Exit code 1 if any retrained run differs from its stored rows (the runs are named, with the column of the
    largest difference); checksums only guard against bit rot, this checks the engine, torch and CPU kernels.
    """
    from sortrl.render.sentences import plural
    from sortrl.study.verify import sample as draw
    from sortrl.study.verify import verify as run_verify

    if sample < 0:
        raise ConfigError(f"sample: must be >= 0 (0: every stored run), got {sample}")
    if not (results / "runs").is_dir():
        raise ConfigError(f"results: no runs folder at {results / 'runs'}; nothing to verify")
    size = sample or None
    picked = sum(len(v) for v in draw(results, size, seed).values())
    if not picked:
        raise ConfigError(f"results: no stored runs under {results / 'runs'}; nothing to verify")
    import torch

    console.print(
        f"retraining {picked:,} stored run(s) of {results / 'runs'} "
        f"({'every run' if size is None else f'a random sample, seed {seed}'}; torch {torch.__version__}, CPU "
        f"capability {torch.backends.cpu.get_cpu_capability()})"
    )

    def show(check: Any) -> None:
        if check.identical:
            console.print(f"{check.experiment}: {plural(check.runs, 'run')}, identical to the stored ones")
            return
        console.print(f"{check.experiment}: {len(check.mismatches)} of {plural(check.runs, 'run')} differ:")
        for m in check.mismatches:
            console.print(f"  {m.run_id} ({m.configuration}, seed {m.seed}): {m.what}", highlight=False)

    checks = run_verify(results, size, seed, on_experiment=show)
    bad = sum(len(c.mismatches) for c in checks)
    if bad:
        console.print(f"{bad} of {picked:,} retrained runs differ from the stored ones")
        raise typer.Exit(1)
    console.print(f"all {picked:,} retrained runs are identical to the stored ones, bit for bit")


# --- sortrl recipes ------------------------------------------------------
@app.command()
def recipes() -> None:
    """List the named presets and the fields each one sets."""
    table = Table(title="recipes (explicit options override them)")
    for column in ("recipe", "sets", "KL coefficient", "source"):
        table.add_column(column, overflow="fold")  # a long field=value wraps, it is not cut
    for name, recipe in RECIPES.items():
        fields = ", ".join(f"{k}={v}" for k, v in recipe.fields.items())
        table.add_row(name, fields, make_config(recipe=name).kl_description, recipe.source)
    out = Console()
    out.print(table)  # the terminal's width (80 columns when not a terminal): rich wraps the cells
    out.print("\nWhere a recipe differs from the peers' trainers (TRL 1.16.0, verl 0.9.1):")
    for name, recipe in RECIPES.items():
        if recipe.peers:
            out.print(f"- {name}: {recipe.peers}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    # Exiting collects every object torch and pandas made at import, about 0.5 s of a short command;
    # frozen at exit (after the handlers of what the command imported: everything is written), it skips them.
    atexit.register(gc.freeze)
    app()
