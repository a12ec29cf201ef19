"""Many calls queued at once, measured in a fresh interpreter (``python -m bench.queued``).

    python -m bench.queued POOL N [--skip S] [--slice K] [--slices M] [--drain]

Holds every worker with a blocker, submits N + S + M×K no-op calls, waits until
the pool has taken them all in (the broker's CPU falls quiet), then releases
the blockers and times M slices of K calls in a row after the first S: the
per-call cost of dispatching from a queue that stays at least N long is the
median slice's (one slice alone swings with whatever else the machine does
meanwhile). With ``--drain`` it then collects all of them, for the total time
and the peak memory of a queue of N. Prints one JSON line.

A process of its own, so the peak RSS (VmHWM) of the client is this workload's
alone. For zeropool the broker's cost is read from its own CPU time, so what
the client spends on its side does not count as dispatch.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
import traceback

from bench import tasks

# Quiet means less CPU than this fraction of the window: heartbeats cost a
# few hundred µs a second, reading queued calls costs all of a core.
QUIET_WINDOW = 0.3
QUIET_SHARE = 0.02
# Nothing here should take this long; a blocker gives up after it, so a
# failed run can never leave a worker held.
TIMEOUT = 1800.0


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) of a process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def cpu_seconds(pid: int | str) -> float:
    """CPU time of all of a process's threads, in ns precision (schedstat) where
    /proc/PID/stat's clock ticks (10 ms) would be too coarse for a short slice."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


def wait_quiet(pids: list, timeout: float) -> float:
    """Wait until none of ``pids`` has used the CPU for a window; return when that began."""
    deadline = time.monotonic() + timeout
    samples = [(time.perf_counter(), [cpu_seconds(p) for p in pids])]
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = time.perf_counter()
        samples.append((now, [cpu_seconds(p) for p in pids]))
        old = [s for s in samples if now - s[0] >= QUIET_WINDOW]
        if old:
            start, before = old[-1]
            if all(b - a < QUIET_SHARE * (now - start) for a, b in zip(before, samples[-1][1])):
                return start
            samples = samples[len(old) - 1:]
    raise TimeoutError(f"processes {pids} still busy after {timeout:.0f}s")


def cluster_pids(ex) -> list[int]:
    """The embedded cluster's broker (first) and worker processes, if ``ex`` has one."""
    cluster = getattr(ex, "_cluster", None)
    pids = [p.pid for p in getattr(cluster, "_processes", ())]
    for pid in pids[1:]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                pids.extend(int(child) for child in f.read().split())
        except OSError:
            pass
    return pids


def run(pool: str, n: int, skip: int, slice_: int, slices: int, drain: bool) -> dict:
    from bench.run import WORKERS, pools

    directory = tempfile.mkdtemp(prefix="zeropool-bench-")
    ex = pools()[pool]()
    try:
        ex.submit(tasks.noop).result()
        pids = cluster_pids(ex)
        broker = pids[0] if pids else None
        blockers = [ex.submit(tasks.blocker, directory, TIMEOUT) for _ in range(WORKERS)]
        deadline = time.monotonic() + 60
        while len(glob.glob(os.path.join(directory, "started-*"))) < WORKERS:
            if time.monotonic() > deadline:
                raise TimeoutError("the blockers did not start within 60 s")
            time.sleep(0.01)

        start = time.perf_counter()
        futures = [ex.submit(tasks.noop) for _ in range(n + skip + slices * slice_)]
        submitted = time.perf_counter()
        # The client's own CPU too: its I/O thread may still be sending.
        taken_in = wait_quiet([broker, "self"], TIMEOUT) if broker else submitted
        result = {"pids": pids, "queued": n, "submit_s": submitted - start}

        with open(os.path.join(directory, "release"), "w"):
            pass
        released = time.perf_counter()
        marks = []  # (wall, broker CPU) as each slice begins, and after the last
        for i in range(slices + 1):
            futures[skip + i * slice_].result()
            marks.append((time.perf_counter(), cpu_seconds(broker) if broker else 0.0))
        spans = list(zip(marks, marks[1:]))
        result["dispatch_us"] = statistics.median(
            (b[0] - a[0]) / slice_ * 1e6 for a, b in spans)
        if broker:
            result["broker_cpu_us"] = statistics.median(
                (b[1] - a[1]) / slice_ * 1e6 for a, b in spans)
        if drain:
            for future in futures:
                future.result()
            # Leaves out the time spent making sure the queue was full.
            result["total_s"] = (taken_in - start) + (time.perf_counter() - released)
            result["client_rss_mb"] = peak_rss_mb()
            if broker:
                result["broker_rss_mb"] = peak_rss_mb(broker)
            for future in blockers:
                future.result()
            ex.shutdown()
        else:
            _abandon(ex)
        return result
    except BaseException:
        _abandon(ex)
        raise
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _abandon(ex) -> None:
    """Stop a pool's processes without running what is still queued; the caller
    then exits at once (zeropool's embedded cluster stops when it does)."""
    for pid in list(getattr(ex, "_processes", None) or {}):  # ProcessPoolExecutor, loky
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.queued",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("pool")
    parser.add_argument("n", type=int, help="calls that stay queued while the slice runs")
    parser.add_argument("--skip", type=int, default=200,
                        help="calls run before the slice (default: 200)")
    parser.add_argument("--slice", type=int, default=4000,
                        help="calls timed in each slice (default: 4000)")
    parser.add_argument("--slices", type=int, default=5,
                        help="slices timed; the median counts (default: 5)")
    parser.add_argument("--drain", action="store_true",
                        help="collect every call, for total time and peak RSS (default: off)")
    args = parser.parse_args(argv)
    try:
        result = run(args.pool, args.n, args.skip, args.slice, args.slices, args.drain)
    except BaseException:
        traceback.print_exc()
        os._exit(1)  # not sys.exit: the pools' exit hooks would run every queued call
    print(json.dumps(result), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
