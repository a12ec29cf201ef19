"""Task functions for the benchmarks (importable, so every pool pickles them by reference)."""
from __future__ import annotations

import os
import time


def noop(x=None):
    return x


def burn(n: int, call: int = 0) -> int:
    """Pure-Python CPU work: about 50 ms for n=1_000_000 on a typical core.
    ``call`` only tells calls apart."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def burn_timed(n: int, call: int = 0) -> float:
    """burn(n); returns the CPU time it took on this thread, in seconds.

    The sum over calls is the serial time of exactly the work the pool ran, on
    the cores that ran it, timed while it ran."""
    start = time.thread_time()
    burn(n, call)
    return time.thread_time() - start


def echo(payload):
    return payload


def size_of(payload) -> int:
    return len(payload)


def make_bytes(n: int) -> bytes:
    return b"x" * n


def nbytes(array) -> int:
    return array.nbytes


def make_array(n: int):
    """A float64 NumPy array of ``n`` bytes."""
    import numpy
    return numpy.ones(n // 8)


def blocker(directory: str, timeout: float) -> None:
    """Hold a worker until ``directory``/release exists, so calls queue up behind it.

    Announces itself with a file of its own, so the caller knows it is running
    (a pool's ``running()`` may say so before any worker has the call). Polls
    rather than blocking on a pipe so that it can never outlive ``timeout``.
    """
    with open(os.path.join(directory, f"started-{os.getpid()}-{time.monotonic_ns()}"), "w"):
        pass
    deadline = time.monotonic() + timeout
    release = os.path.join(directory, "release")
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.001)


def sleep(seconds: float) -> None:
    time.sleep(seconds)  # stands for a task of that length


def log_start(log: str, label: str, seconds: float) -> str:
    """Append ``label`` to ``log`` as the task starts, then take ``seconds``."""
    with open(log, "a") as f:
        f.write(f"{label}\n")
    time.sleep(seconds)  # stands for a task of that length
    return label
