"""Engine and sweep benchmark (issue #4, "a thousand seeds in seconds"); run by `make bench`, not in CI.

Measures, each as the median of `--repeats` repetitions:

- run-steps/s of `sortrl.train.train` (a run-step is one inner Adam step of one
  run; a default run is 100 epochs x 10 steps = 1,000) on the `ablations` grid
  (all 1,152 configs in one process) and on batches of 1 ... 4,096 default
  configs (seeds 0..n-1);
- the same default configs trained one run at a time (`--alone` runs, each its
  own `train([cfg])` call), and the ratio batched / one at a time;
- wall time of `sortrl sweep experiments/ablations.toml` (a subprocess, into
  an empty temporary results folder) and its peak memory: RSS summed over the
  process tree, sampled every 20 ms with psutil (shared pages count once per
  process, so this overstates);
- peak memory of training 4,096 default runs in one batch: `ru_maxrss` of a
  fresh child process that does only that (kernel high-water mark, exact).

Every engine row is measured with the torch thread counts of `--threads`
(default: 1, what `train` uses by default and each sweep worker runs with, one worker per
core; `--threads 1,2` adds a 2-thread pass, which is faster but not bit-exact).
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

from sortrl.config import RunConfig
from sortrl.grid import load_grid, parse_grid
from sortrl.store import atomic_write_bytes, atomic_write_text
from sortrl.sweep import environment
from sortrl.train import train

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "experiments" / "ablations.toml"
SORTRL = Path(sys.executable).parent / "sortrl"
BATCHES = (1, 32, 256, 1024, 4096)
TARGET_STEPS_PER_S = 300_000  # for batches of >= 1,024 runs
NO_DROP_TOLERANCE = 0.05  # "does not fall from 1,024 to 4,096 runs", within this much timing noise
TARGET_SWEEP_S = 15.0
TARGET_PEAK_MB = 2048.0
SWEEP_THREADS = 1  # `train` pins one intra-op thread (exact batch invariance); sweeps run one worker per core
LECTURE_STEPS_PER_S = 770  # the lecture's own single-run loop, for scale


def run_steps(configs: list[RunConfig]) -> int:
    return sum(c.num_epochs * c.num_steps_per_epoch for c in configs)


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


def engine_rows(args: argparse.Namespace, threads: int, epochs: int) -> list[dict]:
    """Throughput of `train` on the ablations grid, on default batches, and one run at a time."""
    train(defaults(4, 2), workers=threads)  # warm-up: first-call costs (allocator, MKL) are not the engine's
    rows = []

    def measure(name: str, configs: list[RunConfig], fn=None) -> dict:
        seconds, cpu = timed(fn or (lambda: train(configs, workers=threads)), args.repeats)
        row = {"benchmark": name, "runs": len(configs), "threads": threads, "run_steps": run_steps(configs)}
        row |= {"seconds": seconds, "run_steps_per_s": row["run_steps"] / seconds, "cpu_seconds": cpu}
        rows.append(row)
        print(f"  {name:<24} {len(configs):>5} runs  {threads} thr  {row['run_steps_per_s']:>12,.0f} run-steps/s")
        return row

    grid = [dataclasses.replace(run.config, num_epochs=epochs) for run in load_grid(GRID).runs()]
    measure("ablations grid", grid)
    batched = {n: measure("default batch", defaults(n, epochs)) for n in args.batches}
    alone = defaults(args.alone, epochs)
    one = measure("one at a time", alone, lambda: [train([c], workers=threads) for c in alone])
    for row in batched.values():
        row["vs_one_at_a_time"] = row["run_steps_per_s"] / one["run_steps_per_s"]
    big = [n for n in batched if n >= 1024]
    for n in big:
        batched[n]["target"] = f">= {TARGET_STEPS_PER_S // 1000}k run-steps/s"
        batched[n]["meets_target"] = batched[n]["run_steps_per_s"] >= TARGET_STEPS_PER_S
    if 1024 in batched and 4096 in batched:
        r = batched[4096]
        r["target"] += f", no drop vs 1,024 ({NO_DROP_TOLERANCE:.0%} slack)"
        r["meets_target"] &= r["run_steps_per_s"] >= (1 - NO_DROP_TOLERANCE) * batched[1024]["run_steps_per_s"]
    return rows


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
    """Wall time, peak tree RSS and CPU time of the `sortrl sweep` CLI into an empty results folder."""
    times, peaks, cpus = [], [], []
    grid_text = GRID.read_text()
    if quick:  # smoke test: 6 seeds x 36 configurations, 10 epochs
        grid_text = grid_text.replace("seeds = 32", "seeds = 6").replace("num_epochs = 100", "num_epochs = 10")
    for _ in range(args.repeats):
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
        "benchmark": "sortrl sweep (CLI)",
        "runs": len(configs),
        "threads": "1 per worker",
        "run_steps": run_steps(configs),
        "seconds": seconds,
        "run_steps_per_s": run_steps(configs) / seconds,
        "cpu_seconds": statistics.median(cpus),
        "peak_rss_mb": max(peaks) / 2**20,
        "target": f"<= {TARGET_SWEEP_S:g} s (full grid)",
        "meets_target": None if quick else seconds <= TARGET_SWEEP_S,
    }


def memory_row(threads: int, epochs: int, runs: int = 4096) -> dict:
    """Peak RSS of a fresh process that trains `runs` default configs in one batch."""
    out = subprocess.run(
        [sys.executable, __file__, "--child-memory", str(runs), "--threads", str(threads), "--epochs", str(epochs)],
        capture_output=True,
        text=True,
        check=True,
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "benchmark": "peak memory, one batch",
        "runs": runs,
        "threads": threads,
        "run_steps": runs * epochs * 10,
        "seconds": child["seconds"],
        "run_steps_per_s": runs * epochs * 10 / child["seconds"],
        "cpu_seconds": child["cpu_seconds"],
        "peak_rss_mb": child["peak_rss_mb"],
        "target": f"<= {TARGET_PEAK_MB:g} MB",
        "meets_target": child["peak_rss_mb"] <= TARGET_PEAK_MB,
    }


def child_memory(runs: int, threads: int, epochs: int) -> None:
    start, start_cpu = time.perf_counter(), time.process_time()
    train(defaults(runs, epochs), workers=threads)
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
    columns = ("benchmark", "runs", "threads", "run-steps/s", "seconds", "CPU s", "x one-at-a-time", "peak MB")
    for name in (*columns, "target", "ok"):
        table.add_column(name, justify="left" if name in ("benchmark", "target") else "right")

    def number(value, fmt: str) -> str:
        return "" if value is None or pd.isna(value) else format(value, fmt)

    for r in rows:
        table.add_row(
            r["benchmark"],
            f"{r['runs']:,}",
            str(r["threads"]),
            number(r["run_steps_per_s"], ",.0f"),
            number(r["seconds"], ".2f"),
            number(r.get("cpu_seconds"), ".2f"),
            number(r.get("vs_one_at_a_time"), ".1f"),
            number(r.get("peak_rss_mb"), ",.0f"),
            r.get("target") or "",
            {True: "yes", False: "NO"}.get(r.get("meets_target"), ""),
        )
    console = Console(width=160)
    console.print(table)
    console.print(
        "machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + f". The lecture's own loop: "
        f"~{LECTURE_STEPS_PER_S} run-steps/s. Engine rows: one process, `threads` torch threads (the sweep "
        "runs one worker per core, one thread each). Sweep: wall time of the CLI, CPU and peak "
        "RSS summed over its process tree (sampled every 20 ms). CPU s is a check on a shared machine: "
        "wall >> CPU means other load."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="folder for bench.csv")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per measurement (median reported)")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 10 epochs, 1 repeat, 6-seed sweep")
    parser.add_argument(
        "--threads", default=str(SWEEP_THREADS), help="comma-separated torch thread counts (default: the sweep's)"
    )
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    parser.add_argument("--alone", type=int, default=32, help="runs trained one at a time")
    parser.add_argument("--readme", type=Path, default=None, help="also rewrite this Markdown file's `speed` block")
    parser.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = sorted({int(t) for t in args.threads.split(",")})
    if args.child_memory is not None:
        return child_memory(args.child_memory, threads[0], args.epochs or 100)
    if args.quick:
        args.repeats, args.alone = 1, min(args.alone, 4)
    args.batches = [int(b) for b in args.batches.split(",")]
    epochs = args.epochs or (10 if args.quick else 100)
    facts = machine()

    rows = []
    for t in threads:
        print(f"engine, {t} torch thread(s):")
        rows += engine_rows(args, t, epochs)
    print("peak memory of one 4,096-run batch (child process) ...")
    rows.append(memory_row(threads[0], epochs))
    print("sortrl sweep experiments/ablations.toml ...")
    rows.append(sweep_row(args, args.quick))

    show(rows, facts, args, epochs)
    table = pd.DataFrame(rows).assign(epochs=epochs, repeats=args.repeats, quick=args.quick, **facts)
    out = args.results / "bench.csv"
    atomic_write_text(out, table.to_csv(index=False))  # readers see the old file or the new one, never half
    print(f"wrote {out}")
    if args.readme is not None and not args.quick:
        write_speed_block(args.readme, rows, facts, args.repeats)
        print(f"wrote the speed block of {args.readme}")


def write_speed_block(path: Path, rows: list[dict], facts: dict, repeats: int) -> None:
    """Rewrite the README's generated `speed` block from this benchmark's rows (nothing in it is typed by hand)."""
    from sortrl.readme import replace_blocks

    lines = [
        f"Measured by `make bench` (medians of {repeats}; {facts['cpu_count']} cores, torch {facts['torch']}, "
        "one torch thread per process; the lecture's own loop trains about 770 run-steps/s):",
        "",
        "| benchmark | runs | run-steps/s | seconds | x one at a time | peak MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = r.get("vs_one_at_a_time")
        peak = r.get("peak_rss_mb")
        lines.append(
            f"| {r['benchmark']} | {r['runs']:,} | {r['run_steps_per_s']:,.0f} | {r['seconds']:.2f} | "
            f"{'' if ratio is None else f'{ratio:.0f}'} | {'' if peak is None else f'{peak:,.0f}'} |"
        )
    lines += ["", "Reproduce with `make bench` (writes `results/bench.csv`; about 10 minutes)."]
    text = path.read_text()
    atomic_write_bytes(path, replace_blocks(text, {"speed": "\n".join(lines)}, path).encode())


if __name__ == "__main__":
    main()
