"""Tasks and objects that fail at one hop of a task's life, or hold the GIL.

Workers import them (tests start them with ``--path`` at the repository), as
do ProcessPoolExecutor's children, so that the same case runs on both.
Raising, exiting or crashing is chosen by name: ``fail(how, where)``.
"""
from __future__ import annotations

import ctypes
import os
import time

from tests.helpers import wait_for_file


def fail(how: str, where: str) -> None:
    """Fail ``how`` (an exception class name, ``exit`` or ``segfault``)."""
    if how == "exit":
        os._exit(3)
    if how == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV, for real
    raise {"ValueError": ValueError, "SystemExit": SystemExit,
           "KeyboardInterrupt": KeyboardInterrupt}[how](f"{how} {where}")


def call(how: str) -> None:
    fail(how, "in the call")


class AtUnpickle:
    """Pickles fine; unpickling it fails."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self):
        return fail, (self.how, "at unpickling")


class AtPickle:
    """Pickling it fails."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self):
        fail(self.how, "at pickling")


def take(value) -> str:
    return "taken"


def return_at_pickle(how: str) -> AtPickle:
    return AtPickle(how)


class RaisesAtPickle(Exception):
    """An exception that fails to pickle."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how

    def __reduce__(self):
        fail(self.how, "at pickling the exception")


def raise_at_pickle(how: str) -> None:
    raise RaisesAtPickle(how)


class RaisesUnloadable(Exception):
    """An exception that pickles, and fails to unpickle."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how

    def __reduce__(self):
        return fail, (self.how, "at unpickling the exception")


def raise_unloadable(how: str) -> None:
    raise RaisesUnloadable(how)


def return_unloadable(how: str) -> AtUnpickle:
    """A result that unpickles nowhere (the worker pickles it, the client fails to load it)."""
    return AtUnpickle(how)


# -- holding the GIL ---------------------------------------------------------------

def hold_gil(seconds: float) -> None:
    """Sleep in one C call that keeps the GIL (ctypes.PyDLL does not release
    it), as a long C extension call does: no other thread of this process
    runs Python meanwhile. One call: between two, the GIL would change hands."""
    whole = int(seconds)
    timespec = (ctypes.c_long * 2)(whole, int((seconds - whole) * 1e9))  # tv_sec, tv_nsec
    # Made here, not at import: this module may travel by value, and ctypes
    # types do not pickle.
    libc = ctypes.PyDLL(None, use_errno=True)
    if libc.nanosleep(timespec, None):
        raise OSError(ctypes.get_errno(), "nanosleep failed")


def hold_gil_and_record(path: str, seconds: float, value):
    """Append this run to ``path`` (one line per execution), hold the GIL, return ``value``."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    hold_gil(seconds)
    return value


# Syscall numbers as /proc/PID/task/TID/syscall shows them: poll and ppoll, futex
# (where a thread waits for the GIL).
POLL_SYSCALLS = {"x86_64": {"7", "271"}, "aarch64": {"73"}}
FUTEX_SYSCALLS = {"x86_64": {"202"}, "aarch64": {"98"}}


def main_thread_syscall(pid: int) -> str:
    """What the main thread of process ``pid`` is doing: a syscall number, or ``running``."""
    try:
        with open(f"/proc/{pid}/task/{pid}/syscall") as f:
            return f.read().split()[0]
    except (OSError, IndexError):
        return ""


def stall_main_loop_until_told(fifo: str, mark: str) -> str:
    """In a worker whose I/O loop is its main thread: once that loop sleeps
    in poll, keep the GIL (a blocking read via PyDLL) until a byte comes
    through ``fifo``. The loop's poll returns during the stall and waits for
    the GIL, holding what it found then: nothing new. ``mark`` says the stall
    began."""
    polls = POLL_SYSCALLS[os.uname().machine]
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the test holds the write end open
    os.set_blocking(fd, True)
    with open(mark, "w"):
        pass
    while main_thread_syscall(os.getpid()) not in polls:
        pass  # spinning keeps the GIL but for the reads; the loop needs it only after poll
    libc = ctypes.PyDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(1)
    libc.read(fd, buffer, 1)
    os.close(fd)
    return "released"


def record_then_wait(directory: str, value, gate: str):
    """Leave one file per execution (named by value), wait for ``gate``, return ``value``."""
    with open(os.path.join(directory, f"{value}-{os.getpid()}-{time.monotonic_ns()}"), "w"):
        pass
    wait_for_file(gate)
    return value
