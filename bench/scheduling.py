"""Scheduling on a shared cluster, measured: what priorities, fair share and
options cost, and the goals they are for.

    python -m bench.scheduling            # prints a table, writes bench/results/scheduling.*
    python -m bench.scheduling --quick

Every figure comes from one embedded cluster of 2 workers × 1 thread, beside
ProcessPoolExecutor's no-op throughput in the same run (the machine is shared
and noisy: compare ratios, not figures across runs):

- no-op submit + as_completed: plain; with priorities (tasks cycling through
  four of them, through ``ex.options(priority=...)``); and two clients at once
  (the sum of both, taking turns at the broker);
- round trip p50 of a plain submit;
- fair share: a second client's 10 tasks of 5 ms submitted behind a first
  client's 3,000: seconds until the second client has all its results
  (issue 16's goal: under 1.5 s);
- strict priority: one worker, one thread, 40 tasks of 20 ms at priority 0,
  then 5 at priority 10: how many of the 40 started after the 5 were submitted
  and before the last of them (goal: at most 3).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import sys
import tempfile
import threading
import time

from bench import tasks
from bench.run import HERE, WORKERS, latency, noop_throughput

FULL = dict(noop=20_000, latency=2_000, backlog=3_000, repeats=3)
QUICK = dict(noop=2_000, latency=200, backlog=600, repeats=1)


def noop_with_priorities(ex, n: int) -> float:
    views = [ex.options(priority=p) for p in range(4)]
    start = time.perf_counter()
    futures = [views[i % 4].submit(tasks.noop, i) for i in range(n)]
    for future in cf.as_completed(futures):
        future.result()
    return n / (time.perf_counter() - start)


def noop_two_clients(address: str, n: int) -> float:
    """Two executors (two clients of the broker) submitting at once: tasks/s in all."""
    from zeropool import Executor
    executors = [Executor(address) for _ in range(2)]
    try:
        for ex in executors:
            ex.submit(tasks.noop).result()
        barrier = threading.Barrier(3)

        def run(ex) -> None:
            barrier.wait()
            futures = [ex.submit(tasks.noop, i) for i in range(n // 2)]
            for future in cf.as_completed(futures):
                future.result()

        threads = [threading.Thread(target=run, args=(ex,)) for ex in executors]
        for thread in threads:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        return n / (time.perf_counter() - start)
    finally:
        for ex in executors:
            ex.shutdown()


def second_client_wait(address: str, backlog: int) -> float:
    """Seconds for a second client's 10 tasks of 5 ms behind a first one's backlog."""
    from zeropool import Executor
    with Executor(address) as first, Executor(address) as second:
        second.submit(tasks.noop).result()
        futures = [first.submit(tasks.sleep, 0.005) for _ in range(backlog)]
        next(cf.as_completed(futures)).result()  # the backlog is running
        start = time.perf_counter()
        for future in [second.submit(tasks.sleep, 0.005) for _ in range(10)]:
            future.result()
        took = time.perf_counter() - start
        first.shutdown(cancel_futures=True)
    return took


def low_tasks_overtaking() -> int:
    """Issue 16's priority goal on one worker with one thread (see the docstring)."""
    from zeropool import Executor
    with tempfile.TemporaryDirectory() as directory, Executor(max_workers=1) as ex:
        log = os.path.join(directory, "log")
        low = [ex.submit(tasks.log_start, log, f"low{i}", 0.02) for i in range(40)]
        while len(_lines(log)) < 2:
            time.sleep(0.005)  # polls a file the tasks write; nothing to wait on here
        before = len(_lines(log))
        high = [ex.options(priority=10).submit(tasks.log_start, log, f"high{i}", 0.02)
                for i in range(5)]
        cf.wait(low + high)
        order = _lines(log)
    last_high = max(order.index(f"high{i}") for i in range(5))
    return sum(label.startswith("low") for label in order[before:last_high])


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def measure(sizes: dict) -> dict:
    from zeropool import Executor
    repeats = sizes["repeats"]
    result: dict = {}
    with cf.ProcessPoolExecutor(WORKERS) as ppe:
        ppe.submit(tasks.noop).result()
        result["ppe_noop_tasks_per_s"] = statistics.median(
            noop_throughput(ppe, sizes["noop"]) for _ in range(repeats))
    with Executor(max_workers=WORKERS) as ex:
        ex.submit(tasks.noop).result()
        result["noop_tasks_per_s"] = statistics.median(
            noop_throughput(ex, sizes["noop"]) for _ in range(repeats))
        result["noop_priorities_tasks_per_s"] = statistics.median(
            noop_with_priorities(ex, sizes["noop"]) for _ in range(repeats))
        result["noop_two_clients_tasks_per_s"] = statistics.median(
            noop_two_clients(ex.address, sizes["noop"]) for _ in range(repeats))
        result["p50_us"] = statistics.median(
            latency(ex, sizes["latency"])[0] for _ in range(repeats))
        result["second_client_s"] = statistics.median(
            second_client_wait(ex.address, sizes["backlog"]) for _ in range(repeats))
    result["low_overtaking_high"] = max(low_tasks_overtaking() for _ in range(repeats))
    return result


ROWS = [
    ("ppe_noop_tasks_per_s", "↑ ProcessPoolExecutor no-op (tasks/s), the reference", "{:,.0f}"),
    ("noop_tasks_per_s", "↑ no-op submit+as_completed (tasks/s)", "{:,.0f}"),
    ("noop_priorities_tasks_per_s", "↑ no-op, four priorities through options() (tasks/s)",
     "{:,.0f}"),
    ("noop_two_clients_tasks_per_s", "↑ no-op, two clients at once, in all (tasks/s)",
     "{:,.0f}"),
    ("p50_us", "↓ round trip p50 (µs)", "{:,.0f}"),
    ("second_client_s", "↓ a 2nd client's 10 × 5 ms behind 3,000 (s); goal < 1.5",
     "{:.2f}"),
    ("low_overtaking_high", "↓ priority-0 tasks started before the last of 5 at priority 10; "
     "goal ≤ 3", "{:.0f}"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduling",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (default: off)")
    parser.add_argument("--output", metavar="PREFIX",
                        default=os.path.join(HERE, "results", "scheduling"),
                        help="write PREFIX.json and PREFIX.md (default: "
                        "bench/results/scheduling)")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    result = measure(sizes)
    ppe = result["ppe_noop_tasks_per_s"]
    lines = ["| measure | zeropool | ÷ PPE no-op |", "| --- | --- | --- |"]
    for key, label, fmt in ROWS:
        ratio = f"{result[key] / ppe:.2f}×" if key.endswith("tasks_per_s") else ""
        lines.append(f"| {label} | {fmt.format(result[key])} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".json", "w") as f:
        json.dump({"sizes": sizes, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "load_average": os.getloadavg(), "results": result}, f, indent=2)
    with open(args.output + ".md", "w") as f:
        f.write(f"Measured {time.strftime('%Y-%m-%d %H:%M:%S')}, {WORKERS} workers × 1 thread, "
                f"medians of {sizes['repeats']} runs (the priority row: the worst of them).\n\n"
                + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
