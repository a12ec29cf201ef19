"""Tasks handed to a worker's runner and not started yet, in the order its
threads take them: highest priority first, then as they came. No sockets;
tested directly in tests/test_worker_waiting_queue.py.
"""
from __future__ import annotations

import collections
import queue
import threading


class Waiting:
    """A queue of ``(key, frames)`` for the runner's threads to ``get``, with
    ``waiting``, the tasks in it: key -> (frames, priority, timeout). Tasks
    not started can be withdrawn.

    The threads block on a SimpleQueue (the fastest queue to wait on); a
    task with a priority goes ahead of those with a lower one by taking them
    out (their entries are skipped, counted in ``_withdrawn``) and queueing
    them again behind it. ``lock`` is the runner's start lock, which ``take``
    is called under.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._entries: queue.SimpleQueue = queue.SimpleQueue()
        self.get = self._entries.get  # (block) -> (key, frames), or None: stop
        # Submitted, not started, in queue order: key -> (frames, priority, timeout).
        self.waiting: dict[tuple, tuple] = {}
        self._prioritized = 0  # of those, how many have a priority other than 0
        # Queue entries to skip, counted: a task given back, sent here again and
        # given back again has two stale entries.
        self._withdrawn: collections.Counter = collections.Counter()

    def put(self, key: tuple, frames: list, priority: int = 0,
            timeout: float | None = None) -> None:
        with self._lock:
            if priority or self._prioritized:
                self._put_by_priority(key, (frames, priority, timeout))
                return
            self.waiting[key] = (frames, 0, timeout)
        self._entries.put((key, frames))

    def _put_by_priority(self, key: tuple, entry: tuple) -> None:
        """Queue a task ahead of those waiting with a lower priority: they are
        taken out of the queue (their entries skipped) and queued again behind
        it, in their order. Holds the lock."""
        priority = entry[1]
        behind = [(other, old) for other, old in self.waiting.items() if old[1] < priority]
        for other, _ in behind:
            del self.waiting[other]
            self._withdrawn[other] += 1
        for other, old in [(key, entry), *behind]:
            self.waiting[other] = old
            self._entries.put((other, old[0]))
        if priority:
            self._prioritized += 1

    def take(self, key: tuple) -> tuple | None:
        """Holds the lock: a thread got ``key``'s entry; its (frames,
        priority, timeout), or None if the entry is stale (skip it)."""
        withdrawn = self._withdrawn
        if withdrawn and withdrawn[key]:
            withdrawn[key] -= 1
            if not withdrawn[key]:
                del withdrawn[key]
            return None
        entry = self.waiting.pop(key)
        if entry[1]:
            self._prioritized -= 1
        return entry

    def withdraw(self, keys) -> list:
        """Of ``keys``, take back those not started."""
        taken = []
        with self._lock:
            for key in keys:
                entry = self.waiting.pop(key, None)
                if entry is not None:
                    if entry[1]:
                        self._prioritized -= 1
                    self._withdrawn[key] += 1
                    taken.append(key)
        return taken

    def stop(self, threads: int) -> None:
        """Tell ``threads`` threads to stop, once they get here."""
        for _ in range(threads):
            self._entries.put(None)
