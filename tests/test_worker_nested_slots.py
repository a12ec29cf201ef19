"""Unit tests for worker.runner.Slots: a task waiting on its own futures gives
its thread's slot back, and takes one again, ahead of tasks not started,
before it goes on. Real threads; every wait has a timeout."""
from __future__ import annotations

import threading

from zeropool.worker.runner import Slots
from tests.helpers import wait_until

C = b"client"


def test_nothing_is_nested_until_a_running_task_gives_its_slot_back():
    lock = threading.Lock()
    slots = Slots(1, lock, {(C, 1): 0.0})
    with lock:
        assert slots.secede((C, 2)) is None  # not running here
        assert not slots.nested
        assert slots.secede((C, 1)) is True  # a thread must take its place
        assert slots.secede((C, 1)) is None  # it has none left to give
    assert slots.nested and slots.seceded == {(C, 1)}


def test_a_thread_stands_in_only_when_none_is_idle():
    lock = threading.Lock()
    slots = Slots(2, lock, {(C, 1): 0.0, (C, 2): 0.0})
    with lock:
        slots.secede((C, 1))
        slots.idle = 1
        assert slots.secede((C, 2)) is False


def test_a_task_taking_its_slot_back_waits_for_one_and_goes_first():
    lock = threading.Lock()
    running = {(C, 1): 0.0}
    slots = Slots(1, lock, running)
    with lock:
        slots.secede((C, 1))
        running[(C, 2)] = 0.0  # another task has its slot
    back = threading.Event()

    def rejoin():
        with lock:
            slots.rejoin((C, 1))
        back.set()

    thread = threading.Thread(target=rejoin, daemon=True)
    thread.start()
    wait_until(lambda: slots._rejoining == 1, 10, what="the task to wait for a slot")
    assert not back.is_set()
    with lock:
        del running[(C, 2)]
        slots.ended((C, 2))
    assert back.wait(10)
    thread.join(10)
    assert slots.seceded == set() and not slots._rejoining


def test_a_thread_retires_once_the_tasks_it_stood_in_for_are_back():
    lock = threading.Lock()
    slots = Slots(1, lock, {})
    me = threading.current_thread()
    threads = [object(), me]
    slots.seceded.add((C, 1))
    assert not slots.retire(threads)  # still needed
    slots.seceded.clear()
    assert slots.retire(threads)
    assert threads == [threads[0]]
