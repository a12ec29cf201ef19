"""Unit tests for worker.credit.Credit: what a worker offers the broker, the
prefetch that follows its task times, and the tasks it gives back, driven
with explicit ``now`` values and start times."""
from __future__ import annotations

import time

import pytest

from zeropool.worker.credit import (
    GIVE_BACK_AFTER, PREFETCH_LONG, PREFETCH_MAX, TASK_TIME_SAMPLES, Credit,
)

SHORT = 0.0001  # 100 us: 20 tasks make PREFETCH_SPAN
LONG = 0.05


def make_credit(threads: int = 2, max_tasks: int | None = None, starts=()) -> Credit:
    return Credit(threads, max_tasks, lambda: list(starts), starts)


def test_before_any_task_ran_it_offers_one_task_per_thread():
    credit = make_credit(threads=3)
    assert credit.grant(holding=0, seceded=0, draining=False, now=0.0) == 3
    # What it offered and the broker has not used counts: nothing more yet.
    assert credit.grant(holding=0, seceded=0, draining=False, now=0.0) == 0
    credit.dispatched(2)
    assert (credit.taken, credit.outstanding) == (2, 1)
    # Two done: their slots are free again.
    assert credit.grant(holding=0, seceded=0, draining=False, now=0.0) == 2


def test_short_tasks_are_prefetched_for_a_couple_of_milliseconds_per_thread():
    credit = make_credit(threads=2)
    credit.observe([SHORT])
    assert credit.short_tasks()
    assert credit.prefetch(now=0.0) == 2 * 20
    assert credit.grant(holding=0, seceded=0, draining=False, now=0.0) == 2 + 40


def test_the_prefetch_per_thread_is_capped():
    credit = make_credit(threads=1)
    credit.observe([1e-9])
    assert credit.prefetch(now=0.0) == PREFETCH_MAX


def test_longer_tasks_hold_one_task_waiting():
    credit = make_credit(threads=2)
    credit.observe([LONG])
    assert not credit.short_tasks()
    assert credit.grant(holding=0, seceded=0, draining=False, now=0.0) == 2 + PREFETCH_LONG


def test_task_times_are_a_moving_average():
    credit = make_credit()
    credit.observe([0.010, 0.0])
    assert credit.task_time == pytest.approx(0.008)
    assert list(credit.task_times) == [0.010, 0.0]


def test_a_draining_worker_offers_nothing():
    credit = make_credit()
    assert credit.grant(holding=0, seceded=0, draining=True, now=0.0) == 0
    assert credit.outstanding == 0


def test_slots_given_back_by_nested_tasks_are_offered():
    credit = make_credit(threads=1)
    assert credit.grant(holding=2, seceded=2, draining=False, now=0.0) == 1


def test_a_recycled_process_is_offered_no_more_than_it_has_left_to_run():
    credit = make_credit(threads=4, max_tasks=3)
    assert credit.grant(holding=0, seceded=0, draining=False, now=0.0) == 3
    credit.dispatched(3)
    assert credit.all_taken()
    assert credit.grant(holding=0, seceded=0, draining=False, now=0.0) == 0
    credit.given_back(1, asked=True)  # it may be sent one more
    assert not credit.all_taken()
    assert credit.grant(holding=2, seceded=0, draining=False, now=0.0) == 1


def test_tasks_given_back_unasked_take_the_unused_credit_with_them():
    credit = make_credit(threads=2)
    credit.grant(holding=0, seceded=0, draining=False, now=0.0)
    credit.dispatched(1)
    credit.given_back(1, asked=True)
    assert credit.outstanding == 1
    credit.given_back(0, asked=False)
    assert credit.outstanding == 0


def test_short_tasks_behind_threads_all_busy_with_long_ones_are_stuck():
    starts = [0.0, 0.0]
    credit = make_credit(threads=2, starts=starts)
    credit.observe([SHORT])
    assert not credit.stuck(waiting=5, now=GIVE_BACK_AFTER / 2)  # busy, not for long yet
    assert credit.stuck(waiting=5, now=GIVE_BACK_AFTER)
    assert not credit.stuck(waiting=0, now=GIVE_BACK_AFTER)
    # Meanwhile it prefetches none: more would be stuck too.
    assert credit.prefetch(now=GIVE_BACK_AFTER) == 0
    starts.pop()  # a thread is free
    assert not credit.stuck(waiting=5, now=1.0)
    assert credit.prefetch(now=1.0) == 2 * 20


def test_waiting_tasks_are_not_stuck_while_tasks_are_long():
    credit = make_credit(threads=1, starts=[0.0])
    credit.observe([LONG])
    assert not credit.stuck(waiting=1, now=1.0)


def test_once_tasks_are_long_for_sure_the_prefetch_goes_back():
    credit = make_credit(threads=1)
    credit.observe([SHORT])
    credit.grant(holding=0, seceded=0, draining=False, now=0.0)  # 1 + 20
    credit.dispatched(11)
    waiting = {("c", i): None for i in range(1, 11)}  # task 0 runs
    credit.observe([LONG] * (TASK_TIME_SAMPLES - 1))
    assert credit.surplus(holding=11, waiting=waiting, draining=False) is None
    credit.observe([LONG])
    # All but one thread's and PREFETCH_LONG's worth, with the unused credit.
    assert credit.surplus(holding=11, waiting=waiting, draining=False) == [
        ("c", i) for i in range(1, 10)]
    assert credit.surplus(holding=11, waiting=waiting, draining=True) is None


def test_one_short_task_among_the_last_few_keeps_the_prefetch():
    credit = make_credit(threads=1)
    credit.observe([LONG] * (TASK_TIME_SAMPLES - 1) + [SHORT])
    credit.outstanding = 10
    assert credit.surplus(holding=1, waiting={}, draining=False) is None


def test_unused_credit_alone_goes_back_once_tasks_are_long():
    credit = make_credit(threads=2)
    credit.observe([LONG] * TASK_TIME_SAMPLES)
    credit.outstanding = 2 + PREFETCH_LONG  # a thread each and PREFETCH_LONG: kept
    assert credit.surplus(holding=0, waiting={}, draining=False) is None
    credit.outstanding += 1
    assert credit.surplus(holding=0, waiting={}, draining=False) == []


def test_long_for_sure_follows_the_last_few_tasks_one_observe_at_a_time():
    credit = make_credit(threads=1)
    for _ in range(TASK_TIME_SAMPLES - 1):
        credit.observe([LONG])
        assert not credit.long_for_sure
    credit.observe([LONG])
    assert credit.long_for_sure
    credit.observe([SHORT])  # one short among the last few
    assert not credit.long_for_sure
    credit.observe([LONG] * (TASK_TIME_SAMPLES - 1))
    assert not credit.long_for_sure
    credit.observe([LONG])
    assert credit.long_for_sure


def test_the_prefetch_asks_no_start_times_while_a_thread_is_free():
    def started_times():
        raise AssertionError("asked for start times with a thread free")

    running: dict = {}
    credit = Credit(2, None, started_times, running)
    credit.observe([SHORT])
    assert credit.grant(holding=0, seceded=0, draining=False) == 2 + 40
    running[("c", 1)] = 0.0
    assert credit.prefetch() == 2 * 20


def test_without_now_the_prefetch_reads_the_clock_once_every_thread_is_busy():
    # Start times on the monotonic clock: busy for long (an hour ago), or not yet.
    starts = [time.monotonic() - 3600.0]
    credit = make_credit(threads=1, starts=starts)
    credit.observe([SHORT])
    assert credit.prefetch() == 0  # stuck behind a long one: no prefetch
    starts[0] = time.monotonic() + 3600.0
    assert credit.prefetch() == 20
    assert credit.grant(holding=1, seceded=0, draining=False) == 20
