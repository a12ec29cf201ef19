"""Counters behind ``broker status`` and the Prometheus endpoint.

Kept by the broker's loop as plain numbers (no locks on the hot path); the
metrics endpoint's thread only reads them.
"""
from __future__ import annotations

import bisect
import collections
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zeropool.broker.state import BrokerState

# Seconds; the last bucket catches everything.
TIME_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, math.inf)
RATE_WINDOW = 60.0


class Histogram:
    def __init__(self, bounds: tuple = TIME_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        total, out = 0, []
        for bound, count in zip(self.bounds, list(self.counts)):
            total += count
            out.append((bound, total))
        return out


class Stats:
    def __init__(self) -> None:
        self.submitted = 0
        self.completed = 0  # returned a value
        self.failed = 0  # raised, or failed by the broker (poison tasks)
        self.requeued = 0  # put back in the queue after their worker died
        self.cancelled = 0
        # Calls a worker could not unpickle (a module it lacks); clients resend
        # these by value, as new submissions.
        self.unloadable = 0
        self.task_duration = Histogram()  # dispatch to result, as the broker sees it
        self.dispatch_latency = Histogram()  # submit to dispatch: time in the queue
        self._samples: collections.deque = collections.deque()  # (time, finished so far)

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    def sample(self, now: float) -> None:
        """Called once per heartbeat interval; feeds ``rate``."""
        self._samples.append((now, self.finished))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()

    def rate(self, now: float) -> float:
        """Tasks finished per second over about the last minute."""
        if not self._samples:
            return 0.0
        then, finished = self._samples[0]
        return (self.finished - finished) / (now - then) if now > then else 0.0


@dataclass(frozen=True, slots=True)
class Slots:
    """Demand and capacity in worker slots (one slot runs one task at a time),
    for autoscaling: ``demand / capacity`` above 1 means tasks wait for a slot."""

    queued: int  # tasks in the broker's queue
    # Tasks on workers: running, or held there waiting behind others
    # (prefetched), including those of gone clients a worker still runs.
    on_workers: int
    capacity: int  # threads of the connected workers that take tasks (not draining)

    @property
    def demand(self) -> int:
        return self.queued + self.on_workers


def slots(state: BrokerState) -> Slots:
    """Demand and capacity from a ``BrokerState``.

    Safe from a thread other than the loop's, as the metrics endpoint's is:
    it copies the workers (one C-level call, atomic under the GIL) before
    iterating, and reads only sizes. A reading taken while the loop moves a
    task from the queue to a worker may be off by that task.
    """
    workers = list(state.workers.values())
    return Slots(queued=state.queue.count,
                 on_workers=sum(worker.occupied for worker in workers),
                 capacity=sum(worker.threads for worker in workers if not worker.draining))
