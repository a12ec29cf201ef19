"""How many tasks a worker asks the broker for: its credit and prefetch.

No sockets, no threads of its own: what depends on time takes ``now`` (a
``time.monotonic()`` value; ``grant`` reads the clock itself, and only when
it needs it, if not given), and the start times of the running tasks come
from a function given at construction, so this is tested directly
(tests/test_worker_credit.py). The agent (worker/agent.py) says what
happened (tasks dispatched, given back, finished) and asks what to offer.

While tasks are short (a few milliseconds), a broker round trip between two
tasks would leave the threads idle most of the time, so the worker asks for
more tasks than it has threads, enough for a couple of milliseconds of work
each. Longer tasks still lose a round trip each (about 1 ms on a loaded
machine: 10% of a 10 ms task), so the worker then holds one task waiting, as
ProcessPoolExecutor keeps one call queued, and once tasks are long for sure
gives back the spare credit and the tasks it took on while they were short.
"""
from __future__ import annotations

import collections
import math
import time
from typing import Callable, Sized

# Prefetch while the average task takes less than this...
PREFETCH_BELOW = 0.005
# ...about this much work per thread, in tasks at most PREFETCH_MAX per thread.
PREFETCH_SPAN = 0.002
PREFETCH_MAX = 32
# Tasks held waiting on the worker (not per thread) while tasks are longer.
PREFETCH_LONG = 1
# Spare credit goes back only once each of this many tasks in a row was long:
# one task preempted for 30 ms among 50 us ones must not make the worker shed
# its prefetch, nor tasks alternating short and long make it churn.
TASK_TIME_SAMPLES = 5
# Tasks waiting behind threads that have all been busy this long go back to the broker.
GIVE_BACK_AFTER = 0.02


class Credit:
    """A worker's credit: what the broker may still send, what it was given,
    and how long its tasks take (which sets the prefetch)."""

    def __init__(self, threads: int, max_tasks: int | None,
                 started_times: Callable[[], list[float]], running: Sized) -> None:
        self.threads = threads
        # Recycling: tasks this process may be given in all (None: no limit).
        self.max_tasks = max_tasks
        self._started_times = started_times  # of the tasks holding a thread
        # The tasks running, holding a thread or not (seceded): while fewer
        # than the threads, started_times (a lock, a list) is not asked.
        self._running = running
        self.taken = 0  # tasks given to this process and not given back
        self.outstanding = 0  # credit the broker has not used yet
        self.task_time: float | None = None  # moving average of task run times
        self.task_times: collections.deque = collections.deque(maxlen=TASK_TIME_SAMPLES)
        self.long_for_sure = False  # each of the last TASK_TIME_SAMPLES tasks was long

    def grant(self, holding: int, seceded: int, draining: bool, now: float | None = None) -> int:
        """Credit to offer now, counted as outstanding: room up to the target,
        counting the ``holding`` tasks here and what the broker may still send.
        Tasks waiting on their own futures (``seceded``) gave their slots back."""
        if draining:
            return 0
        grant = max(0, self.threads + seceded + self.prefetch(now) - holding - self.outstanding)
        if self.max_tasks is not None:  # never more than this process has left to run
            grant = min(grant, max(0, self.max_tasks - self.taken - self.outstanding))
        self.outstanding += grant
        return grant

    def dispatched(self, count: int) -> None:
        """The broker sent ``count`` tasks, out of the credit offered."""
        self.taken += count
        self.outstanding = max(0, self.outstanding - count)

    def given_back(self, count: int, asked: bool) -> None:
        """``count`` tasks went back to the broker. Unasked, all unused credit
        goes with them, or the broker would send the same tasks straight back."""
        self.taken -= count
        if not asked:
            self.outstanding = 0

    def observe(self, seconds: list[float]) -> None:
        """Tasks finished, having run this long each."""
        times = self.task_times
        times.extend(seconds)
        average = self.task_time
        for value in seconds:
            average = value if average is None else average * 0.8 + value * 0.2
        self.task_time = average
        self.long_for_sure = len(times) >= TASK_TIME_SAMPLES and min(times) > PREFETCH_BELOW

    def short_tasks(self) -> bool:
        return self.task_time is not None and self.task_time <= PREFETCH_BELOW

    def all_taken(self) -> bool:
        """Whether this process has been given every task it may run."""
        return self.max_tasks is not None and self.taken >= self.max_tasks

    def prefetch(self, now: float | None = None) -> int:
        """Tasks to hold beyond one per thread."""
        task_time = self.task_time  # (short_tasks(), inline: this runs per RESULTS)
        if task_time is None:
            return 0
        if task_time > PREFETCH_BELOW:
            return PREFETCH_LONG
        if len(self._running) >= self.threads and self.all_busy_since(
                time.monotonic() if now is None else now) is not None:
            return 0  # long tasks occupy every thread now: short ones would be stuck here
        per_thread = min(PREFETCH_MAX, math.ceil(PREFETCH_SPAN / max(task_time, 1e-6)))
        return self.threads * per_thread

    def all_busy_since(self, now: float) -> float | None:
        """If every thread has been running its task for GIVE_BACK_AFTER, the
        start time of the youngest; else None."""
        starts = self._started_times()
        if len(starts) < self.threads:
            return None
        youngest = max(starts)
        return youngest if now - youngest >= GIVE_BACK_AFTER else None

    def stuck(self, waiting: int, now: float) -> bool:
        """Whether the ``waiting`` tasks are short ones stuck behind long ones,
        for other workers to run. (The one held while tasks are long waits to
        be asked: it would only come straight back, and the broker asks when
        another worker idles.)"""
        return bool(waiting) and self.short_tasks() and self.all_busy_since(now) is not None

    def surplus(self, holding: int, waiting, draining: bool) -> list | None:
        """Once tasks are long for sure (each of the last few), the credit and
        the tasks that a short tasks' prefetch took on (up to PREFETCH_MAX a
        thread) are more than long tasks want: of the ``waiting`` tasks, those
        to give back with the unused credit; None if nothing is to go."""
        if draining or not self.long_for_sure:
            return None
        # Held beyond a thread each and PREFETCH_LONG: of those not started.
        # (Tasks just read for free threads are waiting too, for a moment.)
        excess = holding - self.threads - PREFETCH_LONG
        surplus = list(waiting)[:excess] if excess > 0 else []
        if self.outstanding > max(0, -excess) or surplus:
            return surplus
        return None
