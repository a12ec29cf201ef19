"""zeropool's benchmark suite: zeropool beside the stdlib ProcessPoolExecutor (and
loky and Dask distributed when installed), same workloads, same run.

    python -m bench.run            # the default sizes (a few minutes on 2 cores)
    python -m bench.run --quick    # smaller sizes, for a smoke test

Writes bench/results/latest.json and latest.md. Every comparison is a ratio
measured in the same run, because shared machines are noisy.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

from bench import tasks

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = 2


def pools() -> dict[str, Callable[[], cf.Executor]]:
    import client
    found: dict[str, Callable[[], cf.Executor]] = {
        "zeropool": lambda: client.Executor(WORKERS),
        "ProcessPoolExecutor": lambda: cf.ProcessPoolExecutor(WORKERS),
    }
    try:
        import loky
        found["loky"] = lambda: loky.get_reusable_executor(WORKERS)
    except ImportError:
        pass
    try:
        import distributed
        found["dask"] = lambda: distributed.Client(
            n_workers=WORKERS, threads_per_worker=1, processes=True).get_executor()
    except ImportError:
        pass
    return found


def noop_throughput(ex: cf.Executor, n: int) -> float:
    start = time.perf_counter()
    futures = [ex.submit(tasks.noop, i) for i in range(n)]
    for future in cf.as_completed(futures):
        future.result()
    return n / (time.perf_counter() - start)


def map_throughput(ex: cf.Executor, n: int, chunksize: int) -> float:
    start = time.perf_counter()
    count = sum(1 for _ in ex.map(tasks.noop, range(n), chunksize=chunksize))
    assert count == n
    return n / (time.perf_counter() - start)


def latency(ex: cf.Executor, n: int) -> tuple[float, float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        ex.submit(tasks.noop, i).result()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def cpu_efficiency(ex: cf.Executor, count: int, n: int) -> float:
    start = time.perf_counter()
    tasks.burn(n)
    one = time.perf_counter() - start
    start = time.perf_counter()
    list(ex.map(tasks.burn, [n] * count))
    wall = time.perf_counter() - start
    return (one * count / WORKERS) / wall


def bandwidth(ex: cf.Executor, size: int, repeat: int) -> tuple[float, float]:
    payload = b"x" * size
    ex.submit(tasks.size_of, payload).result()  # warm up
    start = time.perf_counter()
    for _ in range(repeat):
        assert ex.submit(tasks.size_of, payload).result() == size
    up = size * repeat / (time.perf_counter() - start) / 1e9
    start = time.perf_counter()
    for _ in range(repeat):
        assert len(ex.submit(tasks.make_bytes, size).result()) == size
    down = size * repeat / (time.perf_counter() - start) / 1e9
    return up, down


def startup(factory: Callable[[], cf.Executor]) -> float:
    start = time.perf_counter()
    ex = factory()
    ex.submit(tasks.noop, 1).result()
    elapsed = time.perf_counter() - start
    ex.shutdown()
    return elapsed


def measure(name: str, factory: Callable[[], cf.Executor], sizes: dict, repeats: int) -> dict:
    result: dict = {"startup_s": startup(factory)}
    ex = factory()
    try:
        ex.submit(tasks.noop).result()
        runs = [noop_throughput(ex, sizes["noop"]) for _ in range(repeats)]
        result["noop_tasks_per_s"] = statistics.median(runs)
        result["map_items_per_s"] = statistics.median(
            map_throughput(ex, sizes["map"] // 10, 1) for _ in range(repeats))
        result["map_chunk1000_items_per_s"] = statistics.median(
            map_throughput(ex, sizes["map"], 1000) for _ in range(repeats))
        p50, p99 = latency(ex, sizes["latency"])
        result["p50_us"], result["p99_us"] = p50, p99
        result["cpu_efficiency"] = cpu_efficiency(ex, sizes["cpu_tasks"], sizes["cpu_n"])
        up, down = bandwidth(ex, sizes["payload"], sizes["payload_repeat"])
        result["payload_up_GBps"], result["payload_down_GBps"] = up, down
    finally:
        ex.shutdown()
    return result


COLUMNS = [
    ("startup_s", "startup to 1st result (s)", "{:.2f}"),
    ("noop_tasks_per_s", "no-op submit+as_completed (tasks/s)", "{:,.0f}"),
    ("map_items_per_s", "map chunksize=1 (items/s)", "{:,.0f}"),
    ("map_chunk1000_items_per_s", "map chunksize=1000 (items/s)", "{:,.0f}"),
    ("p50_us", "round trip p50 (µs)", "{:,.0f}"),
    ("p99_us", "round trip p99 (µs)", "{:,.0f}"),
    ("cpu_efficiency", "CPU scaling efficiency", "{:.2f}"),
    ("payload_up_GBps", "10 MB argument (GB/s)", "{:.2f}"),
    ("payload_down_GBps", "10 MB result (GB/s)", "{:.2f}"),
]


def markdown(results: dict) -> str:
    names = list(results)
    lines = ["| measure | " + " | ".join(names) + " | zeropool ÷ " + " | zeropool ÷ ".join(
        n for n in names if n != "zeropool") + " |"]
    lines.append("|" + " --- |" * (1 + 2 * len(names) - 1))
    for key, label, fmt in COLUMNS:
        cells = [fmt.format(results[n][key]) for n in names]
        ratios = [f"{results['zeropool'][key] / results[n][key]:.2f}×" for n in names
                  if n != "zeropool" and results[n][key]]
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (default: off)")
    parser.add_argument("--only", action="append", help="run only these pools (default: all)")
    args = parser.parse_args(argv)
    sizes = dict(noop=20_000, map=100_000, latency=2_000, cpu_tasks=40, cpu_n=1_000_000,
                 payload=10_000_000, payload_repeat=10)
    repeats = 3
    if args.quick:
        sizes = dict(noop=2_000, map=10_000, latency=200, cpu_tasks=8, cpu_n=300_000,
                     payload=10_000_000, payload_repeat=2)
        repeats = 1
    results = {}
    for name, factory in pools().items():
        if args.only and name not in args.only:
            continue
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results[name] = measure(name, factory, sizes, repeats)
    machine = {"python": sys.version.split()[0], "platform": platform.platform(),
               "cpus": os.cpu_count(), "workers": WORKERS, "sizes": sizes,
               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    table = markdown(results)
    print(table)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "latest.json"), "w") as f:
        json.dump({"machine": machine, "results": results}, f, indent=2)
    with open(os.path.join(HERE, "results", "latest.md"), "w") as f:
        f.write(f"Measured {machine['date']} on {machine['platform']}, Python "
                f"{machine['python']}, {machine['cpus']} CPUs, {WORKERS} workers × 1 thread.\n\n"
                + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
