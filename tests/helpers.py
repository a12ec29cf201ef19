"""Functions that tests run as tasks, and small waiting helpers.

Tasks here take a path and wait on files rather than sleeping, so tests wait
on events. They are used with every executor under test.
"""
from __future__ import annotations

import os
import time


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "") -> None:
    """Wait until ``predicate()`` is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def square(x):
    return x * x


def add(x, y):
    return x + y


def identity(x):
    return x


def getpid(_=None):
    return os.getpid()


def raise_value_error(message):
    raise ValueError(message)


def wait_for_file(path, timeout=30.0):
    """Block (inside a task) until ``path`` exists; returns the worker's pid."""
    wait_until(lambda: os.path.exists(path), timeout, what=path)
    return os.getpid()


def touch(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    return path


def touch_then_wait(mark, release, timeout=30.0):
    """Say that the task started (``mark``), then wait for ``release``."""
    touch(mark)
    return wait_for_file(release, timeout)


def print_then_wait(text, release, timeout=30.0):
    """Print a line, then wait for ``release``."""
    print(text, flush=True)
    return wait_for_file(release, timeout)


def pid_when_all_present(directory, count, timeout=30.0):
    """Drop a file named by this process, then wait until ``count`` such files exist."""
    touch(os.path.join(directory, f"{os.getpid()}"))
    wait_until(lambda: len(os.listdir(directory)) >= count, timeout, what="peers")
    return os.getpid()


def sleep_and_return(seconds, value):
    time.sleep(seconds)  # a task that takes time on purpose
    return value


def raise_value_error_if(x, bad):
    if x == bad:
        raise ValueError(str(x))
    return x


def wait_for_file_if(path):
    return None if path is None else wait_for_file(path)


_state = None


def set_state(value):
    global _state
    _state = value


def get_state(_=None):
    return _state


def count_run_then_sleep(directory, seconds, value):
    """Record one run of this task (a file per run), then take ``seconds``."""
    touch(os.path.join(directory, f"{os.getpid()}-{time.monotonic_ns()}"))
    time.sleep(seconds)  # the point of the task is to take long
    return value


def record_run(directory, value, seconds=0.0):
    """Leave one file per execution (named by value), then return ``value``."""
    touch(os.path.join(directory, f"{value}-{os.getpid()}-{time.monotonic_ns()}"))
    if seconds:
        time.sleep(seconds)  # stands for work, so that faults hit tasks in flight
    return value


def runs_per_value(directory):
    counts = {}
    for name in os.listdir(directory):
        value = int(name.split("-")[0])
        counts[value] = counts.get(value, 0) + 1
    return counts


def exit_process():
    os._exit(1)


def touch_wait_mark(started, gate, finished):
    """Mark the start, wait for ``gate``, mark the end; returns the pid."""
    touch(started)
    wait_for_file(gate)
    touch(finished)
    return os.getpid()


def make_bytes(n):
    return b"x" * n


def timed_sleep(seconds):
    """Returns the (start, end) of its run in system-wide monotonic nanoseconds."""
    start = time.monotonic_ns()
    time.sleep(seconds)
    return start, time.monotonic_ns()


def _load_only_in(pid):
    if os.getpid() != pid:
        raise LookupError("this object loads only in the process that made it")
    return "loaded"


class LoadsOnlyWhereMade:
    def __reduce__(self):
        return _load_only_in, (os.getpid(),)


def make_unloadable():
    return LoadsOnlyWhereMade()


def record_run_padded(directory, value, padding):
    """record_run with a bulky argument, to make a queued task weigh something."""
    return record_run(directory, value)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError(pid)


class NeedsMissingModule:
    """Unpickles by importing a module that exists nowhere."""

    def __reduce__(self):
        import importlib
        return importlib.import_module, ("zeropool_test_no_such_module",)


class Unpicklable:
    def __reduce__(self):
        raise TypeError("Unpicklable objects refuse to be pickled")


def make_unpicklable():
    return Unpicklable()


def chatty(n):
    """Prints several lines to both streams, some in pieces, then returns."""
    import sys
    for i in range(3):
        print(f"task {n} line {i}")
    print(f"task {n} ", end="")
    print("joined", flush=True)
    print(f"task {n} warning", file=sys.stderr)
    return n


def fail_if_negative(x):
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x


def print_lots(megabytes):
    """Prints ``megabytes`` MB of numbered lines, then returns how many lines."""
    line = "x" * 99
    count = megabytes * 10_000
    for i in range(count):
        print(line)
    return count


# -- for the Executor contract (tests/test_contract.py), after CPython's own
# Lib/test/test_concurrent_futures: module-level, so that every pool can import them.

def capture(*args, **kwargs):
    return args, kwargs


class MyObject:
    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


class FalseyBoolError(Exception):
    def __bool__(self):
        return False


class FalseyLenError(Exception):
    def __len__(self):
        return 0


def raiser(exception_type, message):
    raise exception_type(message)


def raise_when_file(path, message):
    """Wait for ``path`` (inside a task), then raise ValueError(message)."""
    wait_for_file(path)
    raise ValueError(message)


def wait_then_print(path, text):
    """Wait for ``path``, then print ``text``: a task still running when its
    process's interpreter begins to exit."""
    wait_for_file(path)
    print(text, flush=True)


def type_name(obj):
    return type(obj).__name__


def state_type_name(_=None):
    """The type of what the initializer stored (see set_state)."""
    return type(_state).__name__


class MarkWhenFreed:
    """Leaves a file, named by the process, in each process where a copy of
    it is freed."""

    def __init__(self, directory):
        self.directory = directory

    def __del__(self):
        try:
            touch(os.path.join(self.directory, str(os.getpid())))
        except Exception:
            pass  # at interpreter exit, or the directory is gone


_held = []  # what hold_memory keeps, for as long as its process lives


def hold_memory(megabytes):
    """Allocate ``megabytes`` MB, touching every page, keep it; returns the pid."""
    _held.append(b"\x01" * (megabytes * 10**6))
    return os.getpid()


def pids_of_runs(directory):
    """The pids that record_run's files name, one per run."""
    return [int(name.split("-")[1]) for name in os.listdir(directory)]


def record_start(log, label, seconds=0.0):
    """Append ``label`` to ``log`` as the task starts, then take ``seconds``."""
    with open(log, "a") as f:
        f.write(f"{label}\n")
    if seconds:
        time.sleep(seconds)  # stands for work
    return label


def wait_for_file_then(path, value):
    wait_for_file(path)
    return value


def touch_then(path, value):
    touch(path)
    return value


def cuda_devices_when_all_present(directory, count):
    pid_when_all_present(directory, count)
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def fib(n):
    """Fibonacci by nested submission: each call waits on the two it submits."""
    if n < 2:
        return n
    from zeropool import current_executor
    ex = current_executor()
    a, b = ex.submit(fib, n - 1), ex.submit(fib, n - 2)
    return a.result() + b.result()


def fib_by_wait(n):
    """As ``fib``, waiting with concurrent.futures.wait and as_completed."""
    import concurrent.futures
    if n < 2:
        return n
    from zeropool import current_executor
    ex = current_executor()
    fs = [ex.submit(fib_by_wait, n - 1), ex.submit(fib_by_wait, n - 2)]
    if n % 2:
        concurrent.futures.wait(fs)
        return sum(f.result() for f in fs)
    return sum(f.result() for f in concurrent.futures.as_completed(fs))


def sum_of_squares_nested(n):
    """Waits on tasks it submits through map_unordered."""
    from zeropool import current_executor
    return sum(current_executor().map_unordered(square, range(n)))


def current_executor_here():
    from zeropool import current_executor
    try:
        current_executor()
    except RuntimeError as exc:
        return str(exc)
    return "no error"


def wait_for_file_then_or_touch(path, which):
    """Call 0 waits for ``path``; call 1 makes it."""
    if which == 0:
        wait_for_file(path)
    else:
        touch(path)
    return which


def spin():
    """Never returns, and keeps the GIL busy: only stopping its process ends it."""
    while True:
        pass


def touch_then_spin(path):
    touch(path)
    spin()


def record_then_exit(directory):
    """Leave a file for this run, then kill the worker process."""
    touch(os.path.join(directory, f"{os.getpid()}-{time.monotonic_ns()}"))
    os._exit(1)


def nested_waits_then_submits(directory):
    """Submits, waits with concurrent.futures.wait (giving its slot back), then,
    once the task that took its slot runs, submits again (taking it back)."""
    import concurrent.futures
    from zeropool import current_executor
    ex = current_executor()
    concurrent.futures.wait([ex.submit(identity, 1)])
    touch(os.path.join(directory, "waited"))
    wait_for_file(os.path.join(directory, "stand-in-started"))
    touch(os.path.join(directory, "waiter-submits"))
    return ex.submit(identity, 2).result()


def nested_stand_in(directory):
    """Runs in the slot the task above gave back, and submits while that task
    waits for its slot again."""
    from zeropool import current_executor
    touch(os.path.join(directory, "stand-in-started"))
    wait_for_file(os.path.join(directory, "waiter-submits"))
    time.sleep(0.2)  # lets the other task reach its submit first: the case that deadlocked
    return current_executor().submit(identity, 3).result()


def hold_the_gil():
    """Runs for hours without ever letting the GIL go: a catastrophic regex
    backtracks (2**40 ways) inside one C call, which checks for nothing."""
    import re
    return re.match(r"(a+)+$", "a" * 40 + "b")


def spin_if(spin_now):
    if spin_now:
        spin()
    return spin_now
