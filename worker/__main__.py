"""Command line: ``worker ADDRESS --threads 4`` (also ``python -m zeropool.worker``)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from zeropool.protocol import check_resources, defaults
from zeropool.protocol.security import add_key_options, security_from_options
from zeropool.worker.memory import parse_size

log = logging.getLogger("zeropool.worker")

RET_OK = 0  # drained and left, or stopped by a signal
RET_USAGE = 2  # bad command line (argparse's own code)
# Other codes are those of worker.agent.Exit (4: refused by the broker, 5: parent gone;
# 6, 7 and 8, recycled, only pass between a worker process and its supervisor). 1 is also
# how faulthandler ends a process whose task held the GIL past its timeout (worker.deadlines.
# BACKSTOP_GRACE): after its stacks on stderr, so a supervisor restarts it as after a crash.


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _resources(text: str) -> dict[str, float]:
    """``gpu=1,mem=64e9`` -> {"gpu": 1, "mem": 64e9}."""
    amounts: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT, e.g. gpu=1, not {item!r}")
        try:
            amount = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"the amount of {name.strip()!r} must be a number, not {value!r}") from None
        amounts[name.strip()] = int(amount) if amount.is_integer() else amount
    try:
        return check_resources(amounts, "--resources")
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _devices(text: str) -> list[str]:
    devices = [part.strip() for part in text.split(",") if part.strip()]
    if not devices:
        raise argparse.ArgumentTypeError("give device ids, e.g. --gpus 0,1")
    if len(set(devices)) != len(devices):
        raise argparse.ArgumentTypeError(f"a device is listed twice: {text!r}")
    return devices


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="worker", description="A zeropool worker: connects to a broker and runs the "
        "calls it is given on a pool of threads, in one or several processes.")
    p.add_argument("address", nargs="?", default=os.environ.get("ZEROPOOL_ADDRESS"),
                   help="the broker's address, e.g. tcp://127.0.0.1:5555 "
                   "(default: $ZEROPOOL_ADDRESS)")
    p.add_argument("--threads", type=_positive, default=_env_int("ZEROPOOL_THREADS", 1),
                   help="tasks each process runs at once (default: $ZEROPOOL_THREADS or 1)")
    p.add_argument("--processes", type=_positive, default=_env_int("ZEROPOOL_PROCESSES", None),
                   help="worker processes to start, for CPU-bound work; when given (even 1), "
                   "a supervisor starts them and restarts one that dies (default: "
                   "$ZEROPOOL_PROCESSES, else this one process, unsupervised)")
    # String defaults go through ``type`` too: a bad $ZEROPOOL_... is a usage error.
    p.add_argument("--max-tasks-per-child", type=_positive, metavar="N",
                   default=os.environ.get("ZEROPOOL_MAX_TASKS_PER_CHILD") or None,
                   help="a worker process that has started N tasks finishes them and is "
                   "replaced by a fresh one, as ProcessPoolExecutor's max_tasks_per_child; "
                   "implies a supervisor (default: $ZEROPOOL_MAX_TASKS_PER_CHILD, else no "
                   "limit)")
    p.add_argument("--max-memory", type=_size, metavar="SIZE",
                   default=os.environ.get("ZEROPOOL_MAX_MEMORY") or None,
                   help="a worker process whose resident memory exceeds SIZE after a task "
                   "(e.g. 300MB, 2GiB, or bytes) finishes its running tasks and is replaced "
                   "by a fresh one; implies a supervisor (default: $ZEROPOOL_MAX_MEMORY, "
                   "else no limit)")
    p.add_argument("--resources", type=_resources, metavar="NAME=AMOUNT,...",
                   default=os.environ.get("ZEROPOOL_RESOURCES") or {},
                   help="what each worker process offers to tasks that ask for resources "
                   "(ex.options(resources={...})), shared by its threads, e.g. "
                   "gpu=1,mem=64e9; any names, numeric amounts (default: "
                   "$ZEROPOOL_RESOURCES, else none: only tasks without needs run here)")
    p.add_argument("--gpus", type=_devices, metavar="ID,...",
                   default=os.environ.get("ZEROPOOL_GPUS") or None,
                   help="GPU device ids to share out between the worker processes: each gets "
                   "its own (CUDA_VISIBLE_DEVICES) and offers gpu=<how many it got>; "
                   "--processes defaults to one per device and must divide their number "
                   "(default: $ZEROPOOL_GPUS, else none)")
    p.add_argument("--heartbeat-interval", type=float, default=defaults.HEARTBEAT_INTERVAL,
                   metavar="SECONDS",
                   help=f"seconds between heartbeats (default: {defaults.HEARTBEAT_INTERVAL})")
    p.add_argument("--liveness", type=int, default=defaults.HEARTBEAT_LIVENESS,
                   help="heartbeats the broker may miss before the worker reconnects "
                   f"(default: {defaults.HEARTBEAT_LIVENESS})")
    p.add_argument("--path", action="append", default=[], metavar="DIR",
                   help="a directory to import task code from, searched after the worker's "
                   "own paths; repeatable; $ZEROPOOL_PATH adds more (default: none)")
    add_key_options(p, "this worker")
    p.add_argument("--log-level", default=os.environ.get("ZEROPOOL_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="logging level (default: $ZEROPOOL_LOG_LEVEL or INFO)")
    p.add_argument("--watch-fd", type=int, metavar="FD",
                   help="for programs that start workers: exit when this file descriptor "
                   "becomes readable, i.e. when the parent holding its other end exits "
                   "(default: none)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.address:
        p.error("give the broker's address, e.g. worker tcp://127.0.0.1:5555")
    security = security_from_options(p, args)
    if args.gpus is not None:
        if args.processes is None:
            args.processes = len(args.gpus)
        if len(args.gpus) % args.processes:
            p.error(f"--gpus lists {len(args.gpus)} devices, which {args.processes} worker "
                    "processes cannot share evenly; list a multiple of --processes")
        if "gpu" in args.resources:
            p.error("give either --gpus or gpu= in --resources, not both")
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Tasks' prints reach the terminal (or the embedding client's) line by
    # line, as they happen, and whole lines do not interleave.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=False)
    extra = args.path + [d for d in os.environ.get("ZEROPOOL_PATH", "").split(os.pathsep) if d]
    sys.path.extend(d for d in extra if d not in sys.path)  # after our own, never before

    from zeropool.worker.agent import Agent, Exit

    def run_agent(supervisor_fd: int | None = None, slot: int = 0) -> int:
        watch = tuple(fd for fd in (args.watch_fd, supervisor_fd) if fd is not None)
        resources = dict(args.resources)
        if args.gpus is not None:  # this process's share of the devices
            share = len(args.gpus) // args.processes
            devices = args.gpus[slot * share:(slot + 1) * share]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
            resources["gpu"] = len(devices)
        agent = Agent(args.address, args.threads, heartbeat_interval=args.heartbeat_interval,
                      liveness=args.liveness, watch_fds=watch, security=security,
                      max_tasks=args.max_tasks_per_child, max_memory=args.max_memory,
                      resources=resources)

        def on_signal(signum: int, frame: object) -> None:
            if agent.draining:
                agent.stop_now()
            else:
                agent.drain()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # A supervised child starts with them blocked (see supervisor.start).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        return int(agent.run())

    # Exit codes of a worker process that left to be replaced.
    recycled = {int(Exit.TIMEOUT): "stopped a task that ran past its timeout"}
    if args.max_tasks_per_child is not None:
        recycled[int(Exit.RECYCLE)] = f"ran {args.max_tasks_per_child} tasks"
    if args.max_memory is not None:
        recycled[int(Exit.RECYCLE_MEMORY)] = f"went over --max-memory {args.max_memory:,} bytes"
    if args.processes is None and len(recycled) == 1:
        code = run_agent()
        if code == Exit.TIMEOUT:
            _start_again()  # alone, it replaces itself: the task's thread ends with it
        return code
    from zeropool.worker.supervisor import supervise
    # Recycling needs a supervisor, even for one process: someone must start the next.
    return supervise(args.processes or 1, run_agent, watch_fd=args.watch_fd, recycled=recycled)


def _start_again() -> None:
    """Replace this process with a fresh run of the same command line (same
    pid, so whoever started it still watches it)."""
    log.info("stopped a task that ran past its timeout; starting again")
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, sys.orig_argv)


if __name__ == "__main__":
    sys.exit(main())
