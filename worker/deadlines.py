"""Per-task timeouts on a worker: the deadlines of the running tasks, and the
backstop for a task that keeps the GIL. No sockets; times are passed in
(tested in tests/test_worker_deadlines.py).

The I/O loop enforces timeouts, but only while it gets the GIL: a task that
keeps it (a C call, a catastrophic regex) would overstay for ever. So while
tasks with deadlines run, faulthandler's watchdog thread, which needs no
GIL, is armed for the earliest deadline plus BACKSTOP_GRACE: it then prints
every thread's stack on stderr and ends the process (exit code 1).
"""
from __future__ import annotations

import faulthandler
import sys
import threading
import traceback
from typing import Callable

# Long enough that the loop, if it runs at all, reports the timeout first and
# leaves cleanly; the longer, the longer a task holding the GIL overstays.
BACKSTOP_GRACE = 2.0


class Deadlines:
    """The running tasks' deadlines (monotonic), ``deadlines``, and the
    watchdog armed for the earliest. Its methods but ``leave_within`` and
    ``overdue`` are called holding ``lock`` (the runner's start lock)."""

    def __init__(self, lock: threading.Lock, stack_fd: int,
                 watchdog: Callable[[float | None], None] | None = None) -> None:
        self._lock = lock
        # Arms the process-wide watchdog to end the process in so many
        # seconds (None: disarm); only this class sets it.
        self._watchdog = watchdog or _faulthandler_watchdog(stack_fd)
        self.deadlines: dict[tuple, float] = {}
        self._threads: dict[tuple, int] = {}  # key -> thread ident, for its stack
        self.timed_out: set[tuple] = set()  # their results are the loop's to send
        self._backstop: float | None = None  # the deadline the watchdog is armed for
        self._leaving = False  # see leave_within: the watchdog is not the tasks' any more

    def start(self, key: tuple, start: float, timeout: float, thread: int) -> None:
        """A task with a timeout started at ``start`` on ``thread``."""
        deadline = self.deadlines[key] = start + timeout
        self._threads[key] = thread
        if self._backstop is None or deadline < self._backstop:
            self._arm(deadline, start)

    def end(self, key: tuple, now: float) -> bool:
        """A task ended: whether its timeout was reported instead of its result."""
        deadline = self.deadlines.pop(key, None)
        self._threads.pop(key, None)
        if deadline is not None and deadline == self._backstop:  # the next one, if any
            self._arm(min(self.deadlines.values(), default=None), now)
        return key in self.timed_out

    def _arm(self, deadline: float | None, now: float) -> None:
        """End the process at ``deadline`` plus BACKSTOP_GRACE, even if a task
        holds the GIL (None: don't)."""
        if self._leaving:
            return
        self._backstop = deadline
        self._watchdog(None if deadline is None
                       else max(deadline + BACKSTOP_GRACE - now, 0.001))

    def leave_within(self, seconds: float) -> None:
        """The process is leaving (a task timed out): end it in ``seconds`` at
        the latest, even if a task holds the GIL meanwhile."""
        with self._lock:
            self._leaving = True
            self._watchdog(seconds)

    def overdue(self, now: float, running: dict) -> list[tuple[tuple, float, str]]:
        """Tasks of ``running`` (key -> start) past their deadlines, as (key,
        timeout, where it was), marked timed out: their own results, should
        they come, are dropped."""
        found = []
        with self._lock:
            for key, deadline in list(self.deadlines.items()):
                if deadline <= now and key in running and key not in self.timed_out:
                    self.timed_out.add(key)
                    found.append((key, deadline - running[key], _stack(self._threads.get(key))))
        return found


def _faulthandler_watchdog(stack_fd: int) -> Callable[[float | None], None]:
    def watchdog(seconds: float | None) -> None:
        if seconds is None:
            faulthandler.cancel_dump_traceback_later()
        else:
            faulthandler.dump_traceback_later(seconds, exit=True, file=stack_fd)
    return watchdog


def _stack(thread_id: int | None) -> str:
    """Where a thread is now, as traceback text ("" if it is gone)."""
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    return "".join(traceback.format_stack(frame)) if frame is not None else ""
