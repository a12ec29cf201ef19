"""Unit tests for worker.deadlines.Deadlines: which running tasks are past
their timeouts, and the watchdog (faulthandler's, here a recorder) armed for
the earliest deadline plus BACKSTOP_GRACE, driven with explicit times."""
from __future__ import annotations

import threading

import pytest

from zeropool.worker.deadlines import BACKSTOP_GRACE, Deadlines

C = b"client"


@pytest.fixture
def armed():
    return []


@pytest.fixture
def deadlines(armed):
    return Deadlines(threading.Lock(), stack_fd=2, watchdog=armed.append)


def test_the_watchdog_follows_the_earliest_deadline(deadlines, armed):
    deadlines.start((C, 1), start=10.0, timeout=5.0, thread=0)
    deadlines.start((C, 2), start=11.0, timeout=1.0, thread=0)
    deadlines.start((C, 3), start=11.0, timeout=9.0, thread=0)  # later: no change
    assert armed == [pytest.approx(5.0 + BACKSTOP_GRACE), pytest.approx(1.0 + BACKSTOP_GRACE)]
    assert deadlines.deadlines == {(C, 1): 15.0, (C, 2): 12.0, (C, 3): 20.0}
    assert not deadlines.end((C, 3), now=11.5)  # not the one armed for
    assert not deadlines.end((C, 2), now=11.5)  # re-armed for the next
    assert armed[-1] == pytest.approx(15.0 + BACKSTOP_GRACE - 11.5)
    assert not deadlines.end((C, 1), now=12.0)
    assert armed[-1] is None  # no deadline left: disarmed
    assert not deadlines.deadlines


def test_a_task_without_a_deadline_ends_without_touching_the_watchdog(deadlines, armed):
    assert not deadlines.end((C, 1), now=1.0)
    assert armed == []


def test_tasks_past_their_deadlines_are_reported_once_with_where_they_were(deadlines):
    here = threading.get_ident()
    deadlines.start((C, 1), start=0.0, timeout=1.0, thread=here)
    deadlines.start((C, 2), start=0.0, timeout=3.0, thread=here)
    running = {(C, 1): 0.0, (C, 2): 0.0}
    assert deadlines.overdue(0.5, running) == []
    [(key, timeout, stack)] = deadlines.overdue(1.0, running)
    assert (key, timeout) == ((C, 1), 1.0)
    assert "test_worker_deadlines.py" in stack  # this thread's stack
    assert deadlines.overdue(2.0, running) == []  # reported already
    assert deadlines.end((C, 1), now=2.5)  # its own result is dropped
    assert not deadlines.end((C, 2), now=2.5)


def test_a_task_no_longer_running_is_not_overdue(deadlines):
    deadlines.start((C, 1), start=0.0, timeout=1.0, thread=0)
    assert deadlines.overdue(5.0, running={}) == []


def test_once_leaving_the_watchdog_is_the_process_exit_s(deadlines, armed):
    deadlines.start((C, 1), start=0.0, timeout=60.0, thread=0)
    deadlines.leave_within(3.0)
    deadlines.start((C, 2), start=0.0, timeout=1.0, thread=0)
    deadlines.end((C, 1), now=0.0)
    assert armed == [pytest.approx(60.0 + BACKSTOP_GRACE), 3.0]
