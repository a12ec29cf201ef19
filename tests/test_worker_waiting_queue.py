"""Unit tests for worker.waiting.Waiting, the tasks a worker holds and has not
started: the order its threads take them in (priority, then arrival), and
tasks withdrawn before they start (their stale queue entries skipped)."""
from __future__ import annotations

import queue
import threading

from zeropool.worker.waiting import Waiting

C = b"client"


def make() -> Waiting:
    return Waiting(threading.Lock())


def started(waiting: Waiting) -> list:
    """Task ids in the order threads would start them now, with their timeouts."""
    order = []
    while True:
        try:
            item = waiting.get(False)
        except queue.Empty:
            return order
        key, frames = item
        with waiting._lock:
            entry = waiting.take(key)
        if entry is not None:
            assert entry[0] is frames
            order.append((key[1], entry[2]))


def test_tasks_start_in_the_order_they_came():
    waiting = make()
    for task_id in range(3):
        waiting.put((C, task_id), [b"call"])
    assert list(waiting.waiting) == [(C, 0), (C, 1), (C, 2)]
    assert started(waiting) == [(0, None), (1, None), (2, None)]
    assert not waiting.waiting


def test_higher_priorities_start_first_and_equal_ones_in_order():
    waiting = make()
    waiting.put((C, 0), [b""])
    waiting.put((C, 1), [b""], priority=5)
    waiting.put((C, 2), [b""], priority=1)
    waiting.put((C, 3), [b""], priority=5)
    waiting.put((C, 4), [b""])
    assert [task_id for task_id, _ in started(waiting)] == [1, 3, 2, 0, 4]
    # No priority left waiting: plain submissions need no reordering again.
    assert waiting._prioritized == 0


def test_a_timeout_travels_with_its_task_until_it_starts():
    waiting = make()
    waiting.put((C, 0), [b""], timeout=2.0)
    waiting.put((C, 1), [b""], priority=3, timeout=1.0)
    assert started(waiting) == [(1, 1.0), (0, 2.0)]


def test_withdrawn_tasks_never_start():
    waiting = make()
    for task_id in range(4):
        waiting.put((C, task_id), [b""], priority=task_id % 2)
    assert waiting.withdraw([(C, 1), (C, 2), (C, 9)]) == [(C, 1), (C, 2)]
    assert started(waiting) == [(3, None), (0, None)]


def test_a_task_given_back_twice_and_sent_again_starts_once():
    waiting = make()
    key = (C, 0)
    for _ in range(2):
        waiting.put(key, [b""])
        assert waiting.withdraw([key]) == [key]
    waiting.put(key, [b""])
    assert started(waiting) == [(0, None)]
    assert not waiting._withdrawn


def test_stop_reaches_each_thread_once():
    waiting = make()
    waiting.put((C, 0), [b""])
    waiting.stop(2)
    assert waiting.get(False) == ((C, 0), [b""])
    assert waiting.get(False) is None and waiting.get(False) is None
