"""zeropool's benchmark suite: zeropool beside the stdlib ProcessPoolExecutor (and
loky and Dask distributed when installed), same workloads, same run; and beside
two references that are not pools of processes: bare pyzmq through the same hops
(bench/relay.py) and an in-process ThreadPoolExecutor.

    python -m bench.run            # the issue's sizes (a million queued calls: minutes)
    python -m bench.run --quick    # smaller sizes, for a smoke test

Writes bench/results/latest.json and latest.md (or --output PREFIX.json and
.md). Every comparison is a ratio measured in the same run, because shared
machines are noisy; the table marks each of issues 5's and 19's targets as met or not.

The workloads with many queued calls (a million queued, dispatch cost by
queue length) run each in a fresh interpreter (bench/queued.py), so that one
workload's memory does not count in another's peak, and only for zeropool and
ProcessPoolExecutor: draining a million calls through loky or Dask would take
longer than the rest of the suite together.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

from bench import relay, tasks
from bench.queued import TIMEOUT

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = 2
PPE = "ProcessPoolExecutor"
# Not a pool: the transport alone (bench/relay.py), for the round trip and bandwidth rows.
RELAY = "pyzmq relay"
# Not a peer either: threads in this process, no pickling, no sockets. What
# concurrent.futures itself costs, for the rows where per-task overhead rules.
THREADS = "ThreadPoolExecutor"
# Pools that run the queued workloads (see the module docstring).
QUEUED_POOLS = ("zeropool", PPE)

FULL = dict(noop=20_000, map=100_000, map_unchunked=10_000, latency=2_000, cpu_tasks=40,
            cpu_n=1_000_000, payload=10_000_000, payload_repeat=10,
            dispatch=[1_000, 100_000], queued=1_000_000, skip=200, slice=4_000, slices=5,
            rounds=5)
QUICK = dict(noop=2_000, map=10_000, map_unchunked=1_000, latency=200, cpu_tasks=8,
             cpu_n=300_000, payload=10_000_000, payload_repeat=2,
             dispatch=[1_000, 5_000], queued=20_000, skip=100, slice=300, slices=3,
             rounds=1)


class _DaskExecutor(cf.Executor):
    """Dask's executor, whose shutdown also stops the LocalCluster it started."""

    def __init__(self) -> None:
        import distributed
        self._client = distributed.Client(n_workers=WORKERS, threads_per_worker=1,
                                          processes=True)
        self._executor = self._client.get_executor()

    def submit(self, fn, /, *args, **kwargs):
        return self._executor.submit(fn, *args, **kwargs)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return self._executor.map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._executor.shutdown(wait=wait)
        self._client.shutdown()


def pools() -> dict[str, Callable[[], cf.Executor]]:
    import zeropool
    found: dict[str, Callable[[], cf.Executor]] = {
        "zeropool": lambda: zeropool.Executor(WORKERS),
        PPE: lambda: cf.ProcessPoolExecutor(WORKERS),
    }
    # Found, not imported: importing distributed changes how this process
    # pickles exceptions, which must not leak into runs that leave it out.
    if importlib.util.find_spec("loky") is not None:
        found["loky"] = _loky_executor
    if importlib.util.find_spec("distributed") is not None:
        found["dask"] = _DaskExecutor
    return found


def _loky_executor() -> cf.Executor:
    import loky
    return loky.get_reusable_executor(WORKERS)


def noop_in_main() -> Callable:
    """``tasks.noop`` as a script defines it: cloudpickle sends functions of
    ``__main__`` by value, where it sends importable ones by reference."""
    namespace = {"__name__": "__main__"}
    exec("def noop(x=None):\n    return x\n", namespace)
    return namespace["noop"]


def noop_throughput(ex: cf.Executor, n: int, fn: Callable = tasks.noop) -> float:
    start = time.perf_counter()
    futures = [ex.submit(fn, i) for i in range(n)]
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


def cpu_efficiency(ex: cf.Executor, count: int, n: int) -> tuple[float, float]:
    """The work's serial time ÷ (workers × wall time on the pool), with the
    serial time taken two ways: the tasks' own CPU time, summed (the target's
    measure), and the same work timed once in this process beforehand.

    The second swings with whatever else the machine does at the two moments,
    and with this process's own threads: runs of it put loky at 1.32, more
    than the two cores can give. The first is timed by the tasks on the
    workers' cores as they run, so what it leaves out of the wall time is the
    pool's overhead: idle gaps between tasks, and CPU taken from the tasks by
    the pool's own processes.
    """
    singles = []
    for _ in range(3):  # one timing alone swings with the machine's load
        start = time.perf_counter()
        tasks.burn(n)
        singles.append(time.perf_counter() - start)
    one = statistics.median(singles)
    start = time.perf_counter()
    # Each call distinct: Dask runs calls with equal arguments once.
    work = sum(ex.map(tasks.burn_timed, [n] * count, range(count)))
    wall = time.perf_counter() - start
    return work / WORKERS / wall, (one * count / WORKERS) / wall


def bandwidth(ex: cf.Executor, payload, measure: Callable, make: Callable,
              size: int, repeat: int) -> tuple[float, float]:
    """GB/s of ``payload`` as an argument, then of ``make(size)`` as a result."""
    # Warm up every worker both ways (its first call may import NumPy, and its
    # allocator grow for 10 MB buffers): calls in flight together reach all.
    warm = [ex.submit(measure, payload) for _ in range(2 * WORKERS)]
    warm += [ex.submit(make, size) for _ in range(2 * WORKERS)]
    assert [f.result() for f in warm[:2 * WORKERS]] == [size] * 2 * WORKERS
    assert all(measure(f.result()) == size for f in warm[2 * WORKERS:])
    start = time.perf_counter()
    for _ in range(repeat):
        assert ex.submit(measure, payload).result() == size
    up = size * repeat / (time.perf_counter() - start) / 1e9
    start = time.perf_counter()
    for _ in range(repeat):
        assert measure(ex.submit(make, size).result()) == size
    down = size * repeat / (time.perf_counter() - start) / 1e9
    return up, down


def medians(repeats: int, run: Callable[[], tuple]) -> tuple:
    """Each value's median over ``repeats`` runs: one run of a 0.1 s workload
    swings with whatever else this shared machine is doing."""
    runs = [run() for _ in range(repeats)]
    return tuple(statistics.median(values) for values in zip(*runs))


def startup(factory: Callable[[], cf.Executor]) -> float:
    start = time.perf_counter()
    ex = factory()
    ex.submit(tasks.noop, 1).result()
    elapsed = time.perf_counter() - start
    ex.shutdown()
    return elapsed


def measure(factory: Callable[[], cf.Executor], sizes: dict, repeats: int,
            by_value: bool = False) -> dict:
    """The workloads that run in this process, on one pool; with ``by_value``,
    no-op throughput with a function of ``__main__`` too."""
    result: dict = {"startup_s": statistics.median(startup(factory) for _ in range(repeats))}
    ex = factory()
    try:
        ex.submit(tasks.noop).result()
        if by_value:
            # In turns, so that each ratio compares the same minute.
            noop = noop_in_main()
            ex.submit(noop).result()
            turns = [(noop_throughput(ex, sizes["noop"]),
                      noop_throughput(ex, sizes["noop"], noop)) for _ in range(repeats)]
            result["noop_tasks_per_s"] = statistics.median(t[0] for t in turns)
            result["noop_main_tasks_per_s"] = statistics.median(t[1] for t in turns)
            result["noop_main_ratio"] = statistics.median(t[1] / t[0] for t in turns)
        else:
            result["noop_tasks_per_s"] = statistics.median(
                noop_throughput(ex, sizes["noop"]) for _ in range(repeats))
        result["map_items_per_s"] = statistics.median(
            map_throughput(ex, sizes["map_unchunked"], 1) for _ in range(repeats))
        result["map_chunk1000_items_per_s"] = statistics.median(
            map_throughput(ex, sizes["map"], 1000) for _ in range(repeats))
        result["p50_us"], result["p99_us"] = medians(
            repeats, lambda: latency(ex, sizes["latency"]))
        result["cpu_efficiency"], result["cpu_efficiency_serial"] = medians(
            repeats, lambda: cpu_efficiency(ex, sizes["cpu_tasks"], sizes["cpu_n"]))
        size, repeat = sizes["payload"], sizes["payload_repeat"]
        result["payload_up_GBps"], result["payload_down_GBps"] = medians(repeats, lambda: bandwidth(
            ex, b"x" * size, tasks.size_of, tasks.make_bytes, size, repeat))
        try:
            import numpy
        except ImportError:
            pass
        else:
            array = numpy.ones(size // 8)
            result["array_up_GBps"], result["array_down_GBps"] = medians(repeats, lambda: bandwidth(
                ex, array, tasks.nbytes, tasks.make_array, size, repeat))
    finally:
        ex.shutdown()
    return result


def measure_threads(sizes: dict, repeats: int) -> dict:
    """The per-task rows on an in-process ThreadPoolExecutor of as many threads."""
    result: dict = {}
    with cf.ThreadPoolExecutor(WORKERS) as ex:
        ex.submit(tasks.noop).result()
        result["noop_tasks_per_s"] = statistics.median(
            noop_throughput(ex, sizes["noop"]) for _ in range(repeats))
        result["map_items_per_s"] = statistics.median(
            map_throughput(ex, sizes["map_unchunked"], 1) for _ in range(repeats))
        result["p50_us"], result["p99_us"] = medians(
            repeats, lambda: latency(ex, sizes["latency"]))
    return result


def queued(pool: str, n: int, sizes: dict, drain: bool) -> dict:
    """One run of bench/queued.py in a fresh interpreter; its JSON result."""
    argv = [sys.executable, "-m", "bench.queued", pool, str(n), "--skip", str(sizes["skip"]),
            "--slice", str(sizes["slice"]), "--slices", str(sizes["slices"])]
    argv += ["--drain"] if drain else []
    env = dict(os.environ)
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} failed (exit {done.returncode}):\n"
                           f"{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    _wait_gone(result.pop("pids"))
    return result


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    """Wait for an abandoned cluster to stop, so it does not load the next measure."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.05)


def measure_queued(pool: str, sizes: dict) -> dict:
    """Dispatch cost with few and many queued, then a full queue drained.

    The few and the many are measured in turns (``rounds`` of each, in fresh
    interpreters), each figure the median of its turns: on this shared machine
    the same run swings between about 7 and 10 µs of broker CPU a task, from
    one minute to the next.
    """
    small_n, mid_n = sizes["dispatch"]
    big_n = sizes["queued"]
    samples: dict[str, list[float]] = {}

    def sample(name: str, n: int, drain: bool = False) -> dict:
        print(f"  {pool}: dispatch with {n:,} queued{', then drained' if drain else ''} ...",
              file=sys.stderr, flush=True)
        run = queued(pool, n, sizes, drain=drain)
        samples.setdefault(f"dispatch_{name}_us", []).append(run["dispatch_us"])
        if "broker_cpu_us" in run:
            samples.setdefault(f"broker_cpu_{name}_us", []).append(run["broker_cpu_us"])
        return run

    for _ in range(sizes["rounds"] - 1):
        sample("small", small_n)
        sample("large", big_n)
    sample("small", small_n)
    sample("mid", mid_n)
    drained = sample("large", big_n, drain=True)  # the last turn's many
    result: dict = {key: statistics.median(values) for key, values in samples.items()}
    for measure in ("dispatch", "broker_cpu"):
        if f"{measure}_small_us" in result:
            result[f"{measure}_growth"] = (result[f"{measure}_large_us"]
                                           / result[f"{measure}_small_us"])
    result["queued_submit_s"] = drained["submit_s"]
    result["queued_total_s"] = drained["total_s"]
    result["client_rss_mb"] = drained["client_rss_mb"]
    if "broker_rss_mb" in drained:
        result["broker_rss_mb"] = drained["broker_rss_mb"]
    return result


def rows(sizes: dict) -> list[tuple[str, str, str]]:
    """(key, label, format) of each line of the table; ↑ higher is better, ↓ lower."""
    small, mid = sizes["dispatch"]
    big = sizes["queued"]
    mb = sizes["payload"] / 1e6
    return [
        ("startup_s", "↓ startup to 1st result (s)", "{:.2f}"),
        ("noop_tasks_per_s", f"↑ no-op submit+as_completed, {sizes['noop']:,} (tasks/s)",
         "{:,.0f}"),
        ("noop_main_tasks_per_s", f"↑ no-op submit+as_completed, {sizes['noop']:,}, function "
         "defined in __main__, sent by value (tasks/s)", "{:,.0f}"),
        ("noop_main_ratio", "↑ no-op, function in __main__ ÷ importable function, same turns",
         "{:.2f}"),
        ("map_items_per_s", f"↑ map {sizes['map_unchunked']:,} items, chunksize=1 (items/s)",
         "{:,.0f}"),
        ("map_chunk1000_items_per_s", f"↑ map {sizes['map']:,} items, chunksize=1000 (items/s)",
         "{:,.0f}"),
        ("p50_us", "↓ round trip p50 (µs)", "{:,.0f}"),
        ("p99_us", "↓ round trip p99 (µs)", "{:,.0f}"),
        ("cpu_efficiency", f"↑ CPU scaling efficiency, {sizes['cpu_tasks']} tasks: "
         "tasks' CPU time ÷ (workers × wall)", "{:.2f}"),
        ("cpu_efficiency_serial", f"↑ CPU scaling efficiency, {sizes['cpu_tasks']} tasks: "
         "serial time in the client ÷ (workers × wall)", "{:.2f}"),
        ("payload_up_GBps", f"↑ {mb:g} MB bytes argument (GB/s)", "{:.2f}"),
        ("payload_down_GBps", f"↑ {mb:g} MB bytes result (GB/s)", "{:.2f}"),
        ("array_up_GBps", f"↑ {mb:g} MB NumPy argument (GB/s)", "{:.2f}"),
        ("array_down_GBps", f"↑ {mb:g} MB NumPy result (GB/s)", "{:.2f}"),
        ("queued_total_s", f"↓ {big:,} queued, then collected: total (s)", "{:,.1f}"),
        ("client_rss_mb", f"↓ {big:,} queued: client peak RSS (MB)", "{:,.0f}"),
        ("broker_rss_mb", f"↓ {big:,} queued: broker peak RSS (MB)", "{:,.0f}"),
        ("dispatch_small_us", f"↓ dispatch per task, {small:,} queued (µs)", "{:,.1f}"),
        ("dispatch_mid_us", f"↓ dispatch per task, {mid:,} queued (µs)", "{:,.1f}"),
        ("dispatch_large_us", f"↓ dispatch per task, {big:,} queued (µs)", "{:,.1f}"),
        ("dispatch_growth", f"↓ dispatch per task, {big:,} ÷ {small:,} queued", "{:.2f}"),
        ("broker_cpu_small_us", f"↓ broker CPU per task, {small:,} queued (µs)", "{:,.1f}"),
        ("broker_cpu_mid_us", f"↓ broker CPU per task, {mid:,} queued (µs)", "{:,.1f}"),
        ("broker_cpu_large_us", f"↓ broker CPU per task, {big:,} queued (µs)", "{:,.1f}"),
        ("broker_cpu_growth", f"↓ broker CPU per task, {big:,} ÷ {small:,} queued", "{:.2f}"),
    ]


# Issue 5's targets, and issue 19's for a function of __main__: key -> [(text,
# peer or None, test of zeropool's value (and the peer's), and the peer's key
# if not the same)]. A target whose peer did not run is left out.
TARGETS: dict[str, list[tuple]] = {
    "startup_s": [("≤ 1 s", None, lambda z: z <= 1.0)],
    "noop_tasks_per_s": [("≥ 5× PPE", PPE, lambda z, p: z >= 5 * p),
                         ("≥ 10× loky", "loky", lambda z, p: z >= 10 * p),
                         ("≥ 50× Dask", "dask", lambda z, p: z >= 50 * p)],
    # PPE cannot pickle a function of __main__ that it did not fork with.
    "noop_main_tasks_per_s": [("≥ 5× PPE's importable", PPE, lambda z, p: z >= 5 * p,
                               "noop_tasks_per_s")],
    "noop_main_ratio": [("≥ 0.9", None, lambda z: z >= 0.9)],
    "map_chunk1000_items_per_s": [("≥ 1× PPE", PPE, lambda z, p: z >= p)],
    "p50_us": [("≤ PPE", PPE, lambda z, p: z <= p),
               ("≤ 1/20 Dask", "dask", lambda z, p: z <= p / 20)],
    "p99_us": [("< 2 ms", None, lambda z: z < 2000)],
    "cpu_efficiency": [("≥ 0.95", None, lambda z: z >= 0.95)],
    "payload_up_GBps": [("≥ 1 GB/s", None, lambda z: z >= 1.0)],
    "payload_down_GBps": [("≥ 1 GB/s", None, lambda z: z >= 1.0)],
    "array_up_GBps": [("≥ 1 GB/s", None, lambda z: z >= 1.0)],
    "array_down_GBps": [("≥ 1 GB/s", None, lambda z: z >= 1.0)],
    "client_rss_mb": [("≤ 1.5× PPE", PPE, lambda z, p: z <= 1.5 * p)],
    "broker_rss_mb": [("≤ 300 MB", None, lambda z: z <= 300)],
    "dispatch_growth": [("≤ 1.2", None, lambda z: z <= 1.2)],
    "broker_cpu_growth": [("≤ 1.2", None, lambda z: z <= 1.2)],
}


def verdicts(results: dict) -> dict[str, list[dict]]:
    """Each target of each measure: its text and whether zeropool met it (None: not measured)."""
    ours = results.get("zeropool", {})
    found: dict[str, list[dict]] = {}
    for key, targets in TARGETS.items():
        for text, peer, test, *peer_key in targets:
            theirs = peer_key[0] if peer_key else key
            if peer is not None and theirs not in results.get(peer, {}):
                continue
            if key not in ours:
                met = None
            elif peer is None:
                met = bool(test(ours[key]))
            else:
                met = bool(test(ours[key], results[peer][theirs]))
            found.setdefault(key, []).append({"target": text, "met": met})
    return found


def markdown(results: dict, sizes: dict, targets: dict) -> str:
    names = list(results)
    others = [n for n in names if n != "zeropool"] if "zeropool" in results else []
    header = ["measure", *names, *(f"zeropool ÷ {n}" for n in others), "target: met?"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for key, label, fmt in rows(sizes):
        if not any(key in results[n] for n in names):
            continue
        cells = [fmt.format(results[n][key]) if key in results[n] else "—" for n in names]
        ours = results.get("zeropool", {}).get(key)
        if key.endswith(("_growth", "_ratio")):
            ours = None  # a ratio of ratios says nothing
        for n in others:
            theirs = results[n].get(key)
            cells.append(f"{ours / theirs:.2f}×" if ours is not None and theirs else "—")
        met = {True: "yes", False: "**no**", None: "not measured"}
        cells.append("; ".join(f"{t['target']}: {met[t['met']]}" for t in targets.get(key, [])))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(sizes: dict) -> dict:
    """Where and with what this run was measured."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for package in ("zeropool", "pyzmq", "msgpack", "cloudpickle", "numpy", "loky",
                    "distributed"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        import zmq
        versions["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu,
            "cpus": os.cpu_count(), "workers": WORKERS, "threads_per_worker": 1,
            "load_average": os.getloadavg(), "versions": versions, "sizes": sizes,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (default: off)")
    parser.add_argument("--only", action="append", help="run only these pools (default: all)")
    parser.add_argument("--output", metavar="PREFIX",
                        default=os.path.join(HERE, "results", "latest"),
                        help="write PREFIX.json and PREFIX.md (default: bench/results/latest)")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    repeats = 1 if args.quick else 3
    about = machine(sizes)  # the load average before this run adds its own
    results = {}
    # The references first: after Dask has run in this process, whatever it
    # leaves running here cut the relay's bandwidth from about 2 to 0.7 GB/s,
    # and its threads would compete with the thread pool's.
    if not args.only or RELAY in args.only:
        print(f"measuring {RELAY} ...", file=sys.stderr, flush=True)
        runs = [relay.measure(sizes["latency"], sizes["payload"], sizes["payload_repeat"])
                for _ in range(repeats)]
        relay_result = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    if not args.only or THREADS in args.only:
        print(f"measuring {THREADS} ...", file=sys.stderr, flush=True)
        threads_result = measure_threads(sizes, repeats)
    for name, factory in pools().items():
        if args.only and name not in args.only:
            continue
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results[name] = measure(factory, sizes, repeats, by_value=name == "zeropool")
        if name in QUEUED_POOLS:
            results[name].update(measure_queued(name, sizes))
    # The references' columns last.
    if not args.only or THREADS in args.only:
        results[THREADS] = threads_result
    if not args.only or RELAY in args.only:
        results[RELAY] = relay_result
    targets = verdicts(results)
    table = markdown(results, sizes, targets)
    print(table)
    directory = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(directory, exist_ok=True)
    with open(args.output + ".json", "w") as f:
        json.dump({"machine": about, "results": results, "targets": targets}, f, indent=2)
    versions = ", ".join(f"{k} {v}" for k, v in about["versions"].items())
    with open(args.output + ".md", "w") as f:
        f.write(f"Measured {about['date']} on {about['platform']} ({about['cpu']}), "
                f"{about['cpus']} CPUs, load average {about['load_average'][0]:.2f} at the "
                f"start; Python {about['python']}, {versions}; {WORKERS} workers × 1 thread. "
                "↑: higher is better, ↓: lower. Each throughput, round-trip and bandwidth "
                f"figure is the median of {repeats} runs. The no-op rows with a function "
                "defined in __main__ (which cloudpickle sends by value) run for zeropool "
                "only, in turns with the importable function's; the ratio is the median "
                "of the turns' ratios. Dispatch per task: wall time to run "
                f"{sizes['slice']:,} no-op calls from the head of a queue that stays at least "
                "N long (all queued behind blockers first), the median of "
                f"{sizes['slices']} such slices in a row; broker CPU per task: the "
                "broker's own CPU time over the same calls. Few and many queued are "
                f"measured in {sizes['rounds']} alternating turns, each in a fresh "
                "interpreter: each figure is the median of its turns. The queued workloads run for "
                f"zeropool and ProcessPoolExecutor only. {RELAY}: not a pool, the floor "
                "under zeropool's round trip and bandwidth: bare pyzmq messages through "
                "the same four hops and three processes, nothing else (bench/relay.py). "
                f"{THREADS}: not a peer, threads in this process with no pickling and "
                "no sockets: what concurrent.futures itself costs per call, measured "
                "on the per-task rows only.\n\n"
                + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
