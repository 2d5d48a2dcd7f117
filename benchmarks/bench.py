"""Engine and sweep benchmark (issue #4, "a thousand seeds in seconds"); run by `make bench`, not in CI.

Measures, each as the median of `--repeats` repetitions:

- run-steps/s of `sortrl.engine.train.train` (a run-step is one inner Adam step of one
  run; a default run is 100 epochs x 10 steps = 1,000) on the `ablations` grid
  (all 1,152 configs in one call) and on batches of 1 ... 4,096 default
  configs (seeds 0..n-1), with each number of `--workers` (train's threads);
- the same algorithm written plainly and trained one run at a time
  (`sortrl.engine.reference.lecture_loop`, `--alone` runs), measured in the same run,
  and each engine row's ratio to it ("x plain loop");
- what each new option costs when a batch uses it (1,024 default runs with one
  option on), and the default batch before (the last `bench.csv`) and now;
- the opt-in fast path (`engine = "fast"`, `sortrl.engine.fast`) against the
  exact one on 1,024 default runs, one worker, timed alternately, and the ratio;
- wall time of `sortrl sweep experiments/ablations.toml` (a subprocess, into
  an empty temporary results folder) and its peak memory: RSS summed over the
  process tree, sampled every 20 ms with psutil (shared pages count once per
  process, so this overstates);
- the sweep's parallel speed-up: `sortrl sweep` of the 8,192-run grid
  `SCALE_GRID` (4 delta modes x 2 loss modes x 1,024 seeds, 100 epochs) on
  every core, against one `train()` call of 1,024 of its runs on one core
  (issue #14's target: at least 1.8x on 2 cores), the two timed alternately and
  the speed-up the median of each pair's ratio;
- the `transformer` model family (issue 25): run-steps/s of 1,024 lecture runs on one core
  and of the linear engine's default batch of the same size, timed alternately, and their
  ratio, the median of each pair's (target: at least 1/10); and what each speed lever of its teacher-forced pass
  gives (`transformer_lever_rows`: CPU seconds per forward+backward of 1,024 runs' log-probs,
  plain, prompt shared, prefixes folded on random and on converged responses; one and two intra-op threads);
- peak memory of training 4,096 default runs in one batch: `ru_maxrss` of a
  fresh child process that does only that (kernel high-water mark, exact);
- last, where `make ablations`' time goes (`benchmarks/ablations_time.py`: its
  phases from an empty results folder, per grid, experiment and notebook).

Engine rows run with each `--workers` count (default: 1 and every core): `train`
shards a batch over that many threads, one torch intra-op thread each (exact:
the table does not depend on the number of workers).
`--quick` is a smoke test: 10 epochs instead of 100, 1 repeat, a 6-seed sweep grid.
Writes `<results>/bench.csv` (one row per measurement, machine facts on every
row) atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import torch
from rich.console import Console
from rich.table import Table

from sortrl.engine.config import RunConfig
from sortrl.engine.reference import lecture_loop
from sortrl.engine.train import default_workers, train
from sortrl.study.grid import load_grid, parse_grid
from sortrl.study.store import atomic_write_bytes, atomic_write_text
from sortrl.study.sweep import environment

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "experiments" / "ablations.toml"
SORTRL = Path(sys.executable).parent / "sortrl"
BATCHES = (1, 32, 256, 1024, 4096)
TARGET_STEPS_PER_S = 300_000  # for batches of >= 1,024 runs
NO_DROP_TOLERANCE = 0.05  # "does not fall from 1,024 to 4,096 runs", within this much timing noise
TARGET_SWEEP_S = 15.0
TARGET_PEAK_MB = 2048.0
TARGET_SWEEP_SPEEDUP = 1.8  # sweep run-steps/s over one core's train() on the same kind of runs (2 cores)
SCALE_GRID = """
name = "scale"
seeds = 1024
[base]
num_epochs = 100
[grid]
deltas_mode = ["rewards", "centered_rewards", "normalized_rewards", "max_rewards"]
loss_mode = ["naive", "clipped"]
"""
"""The sweep speed-up's grid: 8,192 mixed runs (issue #14)."""
FEATURES = {
    "entropy bonus": {"entropy_coeff": 0.1},
    "temperature": {"temperature": 1.5},
    "KL in the loss": {"kl_penalty": 0.1},
    "critic": {"deltas_mode": "critic"},
    "DAPO re-sampling": {"filter_zero_std_groups": True, "max_num_gen_batches": 10},
}
"""Options whose cost `make bench` measures: a default batch with one of them on."""


def run_steps(configs: list[RunConfig]) -> int:
    return sum(c.run_steps for c in configs)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (this process) of `repeats` calls of `fn`."""
    wall, cpu = [], []
    for _ in range(repeats):
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def defaults(n: int, epochs: int) -> list[RunConfig]:
    return [RunConfig(seed=s, num_epochs=epochs) for s in range(n)]


def plain_row(args: argparse.Namespace, epochs: int) -> dict:
    """The lecture's algorithm written plainly, one run at a time (`sortrl.engine.reference.lecture_loop`)."""
    lecture_loop(0, "centered_rewards", 2)  # warm-up
    seeds = range(args.alone)
    seconds, cpu = timed(lambda: [lecture_loop(s, "centered_rewards", epochs) for s in seeds], args.repeats)
    steps = args.alone * epochs * 10
    print(f"  {'plain loop, one at a time':<26} {args.alone:>5} runs  {steps / seconds:>12,.0f} run-steps/s")
    return {"benchmark": "plain loop, one at a time", "runs": args.alone, "workers": 1, "run_steps": steps,
            "seconds": seconds, "run_steps_per_s": steps / seconds, "cpu_seconds": cpu}  # fmt: skip


def engine_rows(args: argparse.Namespace, workers: int, epochs: int, plain: dict) -> list[dict]:
    """Throughput of `train` with `workers` threads on the ablations grid and on default batches."""
    train(defaults(4, 2), workers=workers)  # warm-up: first-call costs (allocator, MKL) are not the engine's
    rows = []

    def measure(name: str, configs: list[RunConfig]) -> dict:
        seconds, cpu = timed(lambda: train(configs, workers=workers), args.repeats)
        row = {"benchmark": name, "runs": len(configs), "workers": workers, "run_steps": run_steps(configs)}
        row |= {"seconds": seconds, "run_steps_per_s": row["run_steps"] / seconds, "cpu_seconds": cpu}
        row["vs_plain_loop"] = row["run_steps_per_s"] / plain["run_steps_per_s"]
        rows.append(row)
        print(f"  {name:<26} {len(configs):>5} runs  {workers} wkr  {row['run_steps_per_s']:>12,.0f} run-steps/s")
        return row

    grid = [dataclasses.replace(run.config, num_epochs=epochs) for run in load_grid(GRID).runs()]
    measure("ablations grid", grid)
    batched = {n: measure("default batch", defaults(n, epochs)) for n in args.batches}
    big = [n for n in batched if n >= 1024]
    for n in big:
        batched[n]["target"] = f">= {TARGET_STEPS_PER_S // 1000}k run-steps/s"
        batched[n]["meets_target"] = batched[n]["run_steps_per_s"] >= TARGET_STEPS_PER_S
    if 1024 in batched and 4096 in batched:
        r = batched[4096]
        r["target"] += f", no drop vs 1,024 ({NO_DROP_TOLERANCE:.0%} slack)"
        r["meets_target"] &= r["run_steps_per_s"] >= (1 - NO_DROP_TOLERANCE) * batched[1024]["run_steps_per_s"]
    return rows


def feature_rows(args: argparse.Namespace, epochs: int, runs: int = 1024) -> list[dict]:
    """1,024 default runs with one option on, one worker: what a batch pays for using it."""
    rows = []
    for name, fields in FEATURES.items():
        configs = [dataclasses.replace(c, **fields) for c in defaults(runs, epochs)]
        seconds, cpu = timed(lambda configs=configs: train(configs, workers=1), args.repeats)
        row = {"benchmark": f"default batch + {name}", "runs": runs, "workers": 1, "run_steps": run_steps(configs)}
        row |= {"seconds": seconds, "run_steps_per_s": row["run_steps"] / seconds, "cpu_seconds": cpu}
        rows.append(row)
        print(f"  {row['benchmark']:<26} {runs:>5} runs  1 wkr  {row['run_steps_per_s']:>12,.0f} run-steps/s")
    return rows


def alternating(batches: dict[str, list[RunConfig]], repeats: int, runs: int) -> tuple[list[dict], dict, dict]:
    """Each batch (name -> configs) trained on one worker, the batches in turn for `repeats` rounds, so a change in the
    machine's speed hits all of them: one row per batch (median wall and CPU seconds; `benchmark` is its name), and
    each batch's wall and CPU seconds round by round, for ratios taken pair by pair."""
    seconds: dict[str, list[float]] = {name: [] for name in batches}
    cpu: dict[str, list[float]] = {name: [] for name in batches}
    for _ in range(repeats):
        for name, configs in batches.items():
            wall, used = timed(lambda configs=configs: train(configs, workers=1), 1)
            seconds[name].append(wall)
            cpu[name].append(used)
    rows = []
    for name, configs in batches.items():
        wall = statistics.median(seconds[name])
        row = {"benchmark": name, "runs": runs, "workers": 1, "run_steps": run_steps(configs), "seconds": wall}
        row |= {"run_steps_per_s": row["run_steps"] / wall, "cpu_seconds": statistics.median(cpu[name])}
        rows.append(row)
    for row in rows:
        print(f"  {row['benchmark']:<26} {runs:>5} runs  1 wkr  {row['run_steps_per_s']:>12,.0f} run-steps/s")
    return rows, seconds, cpu


def engine_path_rows(args: argparse.Namespace, epochs: int, runs: int = 1024) -> list[dict]:
    """1,024 default runs on one worker, on the exact and the fast path (`engine`), timed alternately (so a change in
    the machine's load hits both), and the fast path's speed-up over the exact one (issue 26: adopted by the ledger
    only at 1.5x or more)."""
    configs = defaults(runs, epochs)
    batches = {f"engine = {name}": [dataclasses.replace(c, engine=name) for c in configs] for name in ("exact", "fast")}
    train(batches["engine = fast"][:4], workers=1)  # warm-up of the fused kernel
    rows, seconds, _ = alternating(batches, args.repeats, runs)
    ratios = [e / f for e, f in zip(seconds["engine = exact"], seconds["engine = fast"], strict=True)]
    rows[1]["vs_exact"] = statistics.median(ratios)
    rows[1]["target"] = ">= 1.5x the exact path (for the ledger to adopt it)"
    rows[1]["meets_target"] = rows[1]["vs_exact"] >= 1.5
    print(f"  fast / exact: {rows[1]['vs_exact']:.2f}x (median of {len(ratios)} alternating pairs)")
    return rows


TARGET_TRANSFORMER_RATIO = 0.1
"""The transformer's run-steps/s over the linear engine's, 1,024 lecture runs on one core (issue 25)."""


def transformer_rows(args: argparse.Namespace, epochs: int, runs: int = 1024) -> list[dict]:
    """1,024 lecture runs of the `transformer` family on one worker against the linear engine's default batch of the
    same size, timed alternately (linear, then transformer, `--repeats` pairs: a change in the machine's speed hits
    both; on the 2-core machine the linear batch's rate moved between 105k and 136k run-steps/s from one bench run to
    the next in one day), and their ratio the median of each pair's (issue 25's target: at least 1/10)."""
    linear, transformer = "linear batch (paired)", "transformer batch"
    batches = {linear: defaults(runs, epochs)}
    batches[transformer] = [dataclasses.replace(c, model="transformer") for c in batches[linear]]
    train(batches[transformer][:4], workers=1)  # warm-up
    rows, seconds, cpu = alternating(batches, args.repeats, runs)
    row = rows[1]
    # the same run-steps on both sides: the rate ratio is the inverse time ratio, pair by pair
    pairs = [lin / tf for lin, tf in zip(seconds[linear], seconds[transformer], strict=True)]
    row["vs_linear"] = statistics.median(pairs)
    row["target"] = f">= {TARGET_TRANSFORMER_RATIO:g} x the linear engine's (1,024 runs, 1 worker)"
    row["meets_target"] = row["vs_linear"] >= TARGET_TRANSFORMER_RATIO
    cpu_ratio = statistics.median(lin / tf for lin, tf in zip(cpu[linear], cpu[transformer], strict=True))
    print(
        f"  transformer / linear: {row['vs_linear']:.3f} (median of {len(pairs)} alternating pairs: "
        f"{', '.join(f'{p:.3f}' for p in pairs)}; CPU time {cpu_ratio:.3f})"
    )
    return rows


def transformer_lever_rows(args: argparse.Namespace, runs: int = 1024) -> list[dict]:
    """What each lever of the teacher-forced pass gives: CPU seconds per forward+backward of the log-probs of `runs`
    lecture runs' responses (10 per prompt), each way (`sortrl.engine.transformer`), and the same with two threads.

    plain: every position of [prompt SEP response] per response (`full_logits`); prompt shared: the prompt's keys
    and values once per prompt, queries and the MLP at response positions only (`response_logits`); folded: each
    distinct prefix once per prompt (`logits`, what training runs), on random responses (every sampled prefix
    differs: the fold's worst case, 16 rows per prompt at G = 10) and on a converged policy's (a group's 10 responses
    all one: 3 rows); the fold's layout is computed on the first call and reused, as in an epoch's inner steps.
    """
    from sortrl.engine import transformer

    cfg = RunConfig(model="transformer")
    generators = [torch.Generator().manual_seed(s) for s in range(runs)]
    params = transformer.init(generators, [cfg] * runs)
    prompts = torch.tensor(cfg.prompts)
    shape = (runs, len(prompts), cfg.num_responses, cfg.response_length)
    responses = torch.randint(cfg.num_tokens, shape, generator=torch.Generator().manual_seed(0))
    converged = responses[:, :, :1].expand(shape).clone()
    ways = {
        "plain (every position, per response)": lambda: transformer.full_logits(params, cfg, prompts, responses),
        "prompt shared, response positions only": lambda: transformer.response_logits(
            params, cfg, prompts, transformer.sep_inputs(cfg, responses)
        ),
        "+ prefixes folded, random responses (trained)": lambda: transformer.logits(params, cfg, prompts, responses),
        "+ prefixes folded, a converged policy's (trained)": lambda: transformer.logits(
            params, cfg, prompts, converged
        ),
    }
    rows, before = [], torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            for name, fn in ways.items():
                if threads == 2 and not name.startswith("+"):
                    continue

                def step(fn=fn) -> None:
                    out = torch.log_softmax(fn(), dim=-1)
                    torch.autograd.grad(out.sum(), list(params.values()))

                step()
                _, cpu = timed(step, max(3, args.repeats))
                wall, _ = timed(step, max(3, args.repeats))
                label = f"transformer log-probs: {name}" + (", 2 threads" if threads == 2 else "")
                row = {"benchmark": label, "runs": runs, "workers": threads, "run_steps": runs}
                row |= {"seconds": wall, "cpu_seconds": cpu, "run_steps_per_s": runs / wall}
                rows.append(row)
                print(f"  {label:<72} {wall * 1000:7.1f} ms wall, {cpu * 1000:7.1f} ms CPU per step")
        finally:
            torch.set_num_threads(before)
    return rows


def before(path: Path, epochs: int) -> dict | None:
    """The default 1,024-run batch on one worker from the last `bench.csv` (the same epochs), if there is one."""
    try:
        old = pd.read_csv(path, dtype={"git_commit": str})  # a hash like 8e123456 would parse as a float
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None
    key = "workers" if "workers" in old else "threads"
    match = old[(old["benchmark"] == "default batch") & (old["runs"] == 1024) & (old[key].astype(str) == "1")]
    match = match[match["epochs"] == epochs] if "epochs" in match else match
    if match.empty:
        return None
    commit = str(match["git_commit"].iloc[0]) if "git_commit" in match else ""
    return {"run_steps_per_s": float(match["run_steps_per_s"].iloc[0]), "git_commit": commit}


def watch(proc: psutil.Popen) -> tuple[int, float]:
    """Until `proc` exits: peak resident bytes summed over its process tree, and the tree's CPU seconds.

    Sampled every 20 ms (a process's CPU time is its last sample, so up to 20 ms of each is missed).
    """
    peak, cpu = 0, {}
    while proc.poll() is None:
        rss = 0
        with contextlib.suppress(psutil.Error):
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
        peak = max(peak, rss)
        time.sleep(0.02)
    return peak, sum(cpu.values())


def sweep_row(args: argparse.Namespace, quick: bool) -> dict:
    """Wall time, peak tree RSS and CPU time of `sortrl sweep experiments/ablations.toml` (the CLI)."""
    grid_text = GRID.read_text()
    if quick:  # smoke test: 6 seeds x 36 configurations, 10 epochs
        grid_text = grid_text.replace("seeds = 32", "seeds = 6").replace("num_epochs = 100", "num_epochs = 10")
    row = timed_sweep(grid_text, args.repeats)
    target = {"target": f"<= {TARGET_SWEEP_S:g} s (full grid)", "meets_target": None}
    if not quick:
        target["meets_target"] = row["seconds"] <= TARGET_SWEEP_S
    return {"benchmark": "sortrl sweep (CLI)", **row, **target}


def scale_rows(args: argparse.Namespace, quick: bool) -> list[dict]:
    """`sortrl sweep` of `SCALE_GRID` on every core against one `train()` call of 1,024 of its runs on one core.

    The two alternate (one reference call, one sweep, `--repeats` times) and the
    speed-up is the median of each pair's ratio: a shared machine's speed drifts
    by 15-25% within minutes, so a reference timed minutes before the sweeps
    would measure the drift as much as the sweep.
    """
    grid_text = SCALE_GRID.replace("seeds = 1024", "seeds = 16") if quick else SCALE_GRID
    if quick:
        grid_text = grid_text.replace("num_epochs = 100", "num_epochs = 10")
    runs = [run.config for run in parse_grid(grid_text).runs()]
    one = runs[:: max(1, len(runs) // 1024)][:1024]  # every configuration, as in the grid
    pairs = [(timed(lambda: train(one, workers=1), 1), timed_sweep(grid_text, 1)) for _ in range(args.repeats)]
    core = {"benchmark": "train(), 1 core, scale grid's runs", "runs": len(one), "workers": 1}
    core |= {"run_steps": run_steps(one), "seconds": statistics.median(wall for (wall, _), _ in pairs)}
    core["cpu_seconds"] = statistics.median(cpu for (_, cpu), _ in pairs)
    core["run_steps_per_s"] = core["run_steps"] / core["seconds"]
    print(f"  {core['benchmark']:<26} {len(one):>5} runs  {core['run_steps_per_s']:>12,.0f} run-steps/s")
    sweep = {"benchmark": "sortrl sweep, scale grid", **pairs[0][1]}
    for key in ("seconds", "cpu_seconds"):
        sweep[key] = statistics.median(row[key] for _, row in pairs)
    sweep["peak_rss_mb"] = max(row["peak_rss_mb"] for _, row in pairs)
    sweep["run_steps_per_s"] = sweep["run_steps"] / sweep["seconds"]
    ratios = [row["run_steps_per_s"] / (core["run_steps"] / wall) for (wall, _), row in pairs]  # each pair's own
    sweep["speedup_vs_one_core"] = statistics.median(ratios)
    sweep["target"] = f">= {TARGET_SWEEP_SPEEDUP:g}x train() on 1 core"
    sweep["meets_target"] = None if quick else sweep["speedup_vs_one_core"] >= TARGET_SWEEP_SPEEDUP
    print(
        f"  {sweep['benchmark']:<26} {sweep['runs']:>5} runs  {sweep['run_steps_per_s']:>12,.0f} run-steps/s "
        f"({sweep['speedup_vs_one_core']:.2f}x one core's train(), median of "
        f"{', '.join(f'{r:.2f}' for r in ratios)})"
    )
    return [core, sweep]


def timed_sweep(grid_text: str, repeats: int) -> dict:
    """Median wall time, CPU time and peak tree RSS of the `sortrl sweep` CLI on `grid_text`, into an empty folder."""
    times, peaks, cpus = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="sortrl-bench-") as tmp:
            grid, log = Path(tmp) / "ablations.toml", Path(tmp) / "stderr.txt"
            grid.write_text(grid_text)
            with log.open("w") as stderr:
                start = time.perf_counter()
                proc = psutil.Popen(
                    [str(SORTRL), "sweep", str(grid), "--results", str(Path(tmp) / "results")],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
                peak, cpu = watch(proc)
                times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                sys.exit(f"sortrl sweep failed:\n{log.read_text()}")
            peaks.append(peak)
            cpus.append(cpu)
    configs = [run.config for run in parse_grid(grid_text).runs()]
    seconds = statistics.median(times)
    return {
        "runs": len(configs),
        "workers": "1 thread per process",
        "run_steps": run_steps(configs),
        "seconds": seconds,
        "run_steps_per_s": run_steps(configs) / seconds,
        "cpu_seconds": statistics.median(cpus),
        "peak_rss_mb": max(peaks) / 2**20,
    }


def memory_row(workers: int, epochs: int, runs: int = 4096) -> dict:
    """Peak RSS of a fresh process that trains `runs` default configs in one batch."""
    out = subprocess.run(
        [sys.executable, __file__, "--child-memory", str(runs), "--workers", str(workers), "--epochs", str(epochs)],
        capture_output=True,
        text=True,
        check=True,
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "benchmark": "peak memory, one batch",
        "runs": runs,
        "workers": workers,
        "run_steps": runs * epochs * 10,
        "seconds": child["seconds"],
        "run_steps_per_s": runs * epochs * 10 / child["seconds"],
        "cpu_seconds": child["cpu_seconds"],
        "peak_rss_mb": child["peak_rss_mb"],
        "target": f"<= {TARGET_PEAK_MB:g} MB",
        "meets_target": child["peak_rss_mb"] <= TARGET_PEAK_MB,
    }


def child_memory(runs: int, workers: int, epochs: int) -> None:
    start, start_cpu = time.perf_counter(), time.process_time()
    train(defaults(runs, epochs), workers=workers)
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak_kb / 1024}))


def machine() -> dict:
    """The sweep manifest's versions and machine facts, plus torch's default thread count and the date."""
    return {
        **environment(),
        "torch_default_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def show(rows: list[dict], facts: dict, args: argparse.Namespace, epochs: int) -> None:
    table = Table(title=f"sortrl bench: medians of {args.repeats}, {epochs} epochs x 10 steps per run")
    columns = ("benchmark", "runs", "workers", "run-steps/s", "seconds", "CPU s", "x plain loop", "x linear", "peak MB")
    for name in (*columns, "target", "ok"):
        table.add_column(name, justify="left" if name in ("benchmark", "target") else "right")

    def number(value, fmt: str) -> str:
        return "" if value is None or pd.isna(value) else format(value, fmt)

    for r in rows:
        table.add_row(
            r["benchmark"],
            f"{r['runs']:,}",
            str(r["workers"]),
            number(r["run_steps_per_s"], ",.0f"),
            number(r["seconds"], ".2f"),
            number(r.get("cpu_seconds"), ".2f"),
            number(r.get("vs_plain_loop"), ".0f"),
            number(r.get("vs_linear"), ".3f"),
            number(r.get("peak_rss_mb"), ",.0f"),
            r.get("target") or "",
            {True: "yes", False: "NO"}.get(r.get("meets_target"), ""),
        )
    console = Console(width=160)
    console.print(table)
    console.print(
        "machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ". Engine rows: one `train` call, "
        "`workers` threads of one torch thread each. x plain loop: run-steps/s over the plain one-run loop's, "
        "measured in this run. Sweep: wall time of the CLI, CPU and peak RSS summed over its process tree "
        "(sampled every 20 ms). CPU s is a check on a shared machine: wall >> CPU means other load."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="folder for bench.csv")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per measurement (median reported)")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 10 epochs, 1 repeat, 6-seed sweep")
    parser.add_argument(
        "--workers", default=None, help="comma-separated numbers of train() workers (default: 1 and every core)"
    )
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    parser.add_argument("--alone", type=int, default=16, help="runs of the plain one-at-a-time loop")
    parser.add_argument("--readme", type=Path, default=None, help="also rewrite this Markdown file's `speed` block")
    parser.add_argument(
        "--transformer-only",
        action="store_true",
        help="only the transformer rows and the linear default batch they are compared with (writes "
        "<results>/bench-transformer.csv, not bench.csv)",
    )
    parser.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workers = sorted({int(w) for w in (args.workers or f"1,{default_workers()}").split(",")})
    if args.child_memory is not None:
        return child_memory(args.child_memory, workers[0], args.epochs or 100)
    if args.quick:
        args.repeats, args.alone = 1, min(args.alone, 4)
    args.batches = [int(b) for b in args.batches.split(",")]
    epochs = args.epochs or (10 if args.quick else 100)
    facts = machine()

    if args.transformer_only:
        return transformer_only(args, epochs, facts)
    previous = before(args.results / "bench.csv", epochs)
    print("the plain loop, one run at a time:")
    plain = plain_row(args, epochs)
    rows = [plain]
    for w in workers:
        print(f"engine, {w} worker(s):")
        rows += engine_rows(args, w, epochs, plain)
    print("options, each on in a default batch:")
    rows += feature_rows(args, epochs)
    print("the exact and the fast training path (engine), alternately:")
    rows += engine_path_rows(args, epochs)
    print("the transformer family against the linear engine, 1,024 runs, one core:")
    rows += transformer_rows(args, epochs)
    rows += transformer_lever_rows(args)
    print("peak memory of one 4,096-run batch (child process) ...")
    rows.append(memory_row(workers[-1], epochs))
    print("sortrl sweep experiments/ablations.toml ...")
    rows.append(sweep_row(args, args.quick))
    print("the sweep's speed-up: an 8,192-run grid against one core's train() ...")
    rows += scale_rows(args, args.quick)

    show(rows, facts, args, epochs)
    now = [r for r in rows if r["benchmark"] == "default batch" and r["runs"] == 1024 and r["workers"] == 1]
    if previous is not None and now:
        change = now[0]["run_steps_per_s"] / previous["run_steps_per_s"] - 1
        print(
            f"default batch of 1,024 runs, 1 worker: before {previous['run_steps_per_s']:,.0f} run-steps/s "
            f"(bench.csv of {previous['git_commit'][:8]}), now {now[0]['run_steps_per_s']:,.0f} ({change:+.1%})"
        )
    table = pd.DataFrame(rows).assign(epochs=epochs, repeats=args.repeats, quick=args.quick, **facts)
    out = args.results / "bench.csv"
    atomic_write_text(out, table.to_csv(index=False))  # readers see the old file or the new one, never half
    print(f"wrote {out}")
    if args.readme is not None and not args.quick:
        write_speed_block(args.readme, rows, facts, args.repeats)
        print(f"wrote the speed block of {args.readme}")
    if not args.quick:  # last: where `make ablations`' time goes (benchmarks/ablations_time.py; ~6 min)
        command = [sys.executable, str(Path(__file__).with_name("ablations_time.py"))]
        subprocess.run([*command, *(["--readme", str(args.readme)] if args.readme is not None else [])], check=True)


def transformer_only(args: argparse.Namespace, epochs: int, facts: dict) -> None:
    """`--transformer-only`: the linear default batch of 1,024 runs on one worker, the transformer's, their ratio and
    the levers, into `<results>/bench-transformer.csv`."""
    print("the transformer family against the linear engine, 1,024 runs, one core:")
    rows = transformer_rows(args, epochs)
    rows += transformer_lever_rows(args)
    show(rows, facts, args, epochs)
    table = pd.DataFrame(rows).assign(epochs=epochs, repeats=args.repeats, quick=args.quick, **facts)
    out = args.results / "bench-transformer.csv"
    atomic_write_text(out, table.to_csv(index=False))
    print(f"wrote {out}")


def write_speed_block(path: Path, rows: list[dict], facts: dict, repeats: int) -> None:
    """Rewrite the generated `speed` block (docs/engine.md) from this benchmark's rows (nothing in it is typed by hand)."""
    from sortrl.render.readme import replace_blocks

    lines = [
        f"Measured by `make bench` (medians of {repeats}) on {facts['cpu_count']} cores, torch {facts['torch']}: "
        "engine rows are one `train` call with `workers` threads (one torch thread each); x plain loop is the "
        "ratio to the lecture's algorithm written plainly and trained one run at a time (`sortrl.engine.reference`), "
        "measured in the same run:",
        "",
        "| benchmark | runs | workers | run-steps/s | seconds | x plain loop | peak MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio, peak = r.get("vs_plain_loop"), r.get("peak_rss_mb")
        ratio = "" if ratio is None or pd.isna(ratio) else f"{ratio:.0f}"
        peak = "" if peak is None or pd.isna(peak) else f"{peak:,.0f}"
        lines.append(
            f"| {r['benchmark']} | {r['runs']:,} | {r['workers']} | {r['run_steps_per_s']:,.0f} | "
            f"{r['seconds']:.2f} | {ratio} | {peak} |"
        )
    lines += [
        f"\n`sortrl sweep` of {r['runs']:,} runs reaches {r['speedup_vs_one_core']:.2f}x the run-steps/s of one "
        "`train()` call on one core (1,024 of the same runs; the two timed alternately, the median of "
        f"{repeats} pairs' ratios)."
        for r in rows
        if r.get("speedup_vs_one_core") is not None
    ]
    lines += ["", "Reproduce with `make bench` (writes `results/bench.csv`; about 20 minutes)."]
    text = path.read_text()
    atomic_write_bytes(path, replace_blocks(text, {"speed": "\n".join(lines)}, path).encode())


if __name__ == "__main__":
    main()
