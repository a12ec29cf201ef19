"""Workers prefetch short tasks; that must change no semantics.

A worker that has seen short tasks asks for more tasks than it has threads.
Cancelling reaches tasks waiting on a worker, and tasks stuck behind a long
one are given back for idle workers to run.
"""
from __future__ import annotations

import os

import pytest

import client
from tests import helpers
from tests.helpers import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def warm_up(ex, count: int = 300) -> None:
    """Short tasks, so that workers start prefetching."""
    assert list(ex.map(helpers.square, range(count))) == [x * x for x in range(count)]


@pytest.fixture
def cluster(programs, tmp_path):
    """Starts a broker (logging to tmp_path/broker.log) and worker processes."""
    def start(workers: int) -> str:
        with open(tmp_path / "broker.log", "w") as log:
            _, address = programs.broker("--heartbeat-interval", "0.2", "--liveness", "5",
                                         "--log-level", "DEBUG", stderr=log)
        programs.worker(address, "--processes", str(workers), "--path", REPO)
        return address
    return start


def test_cancelled_tasks_never_run_even_when_prefetched(cluster, tmp_path):
    address = cluster(1)
    runs = tmp_path / "runs"
    runs.mkdir()
    ex = client.Executor(address)
    try:
        warm_up(ex)
        futures = [ex.submit(helpers.record_run, str(runs), i) for i in range(3000)]
        wait_until(lambda: any(f.done() for f in futures), 30, what="the first task")
        # One request for all: those queued at the broker and those waiting on the worker.
        ex.shutdown(wait=False, cancel_futures=True)
        for future in futures:
            if not future.cancelled():
                future.result(timeout=60)
        cancelled = [i for i, f in enumerate(futures) if f.cancelled()]
    finally:
        ex.shutdown()
    counts = helpers.runs_per_value(str(runs))
    assert cancelled, "nothing was left to cancel"
    # Some were waiting on the worker, not at the broker, and came back from there.
    assert " to cancel" in (tmp_path / "broker.log").read_text()
    assert not set(cancelled) & set(counts), "a cancelled task ran"
    ran = [i for i, f in enumerate(futures) if not f.cancelled()]
    assert sorted(counts) == ran and all(counts[i] == 1 for i in ran)


def test_tasks_behind_a_long_one_are_given_back_to_idle_workers(cluster, tmp_path, gate):
    address = cluster(2)
    started = str(tmp_path / "started")
    with client.Executor(address) as ex:
        warm_up(ex)
        blocker = ex.submit(helpers.touch_then_wait, started, gate)
        quick = [ex.submit(helpers.square, i) for i in range(60)]
        # All of them finish while the blocker still holds its worker.
        assert [f.result(timeout=30) for f in quick] == [i * i for i in range(60)]
        assert not blocker.done()
        helpers.touch(gate)
        assert isinstance(blocker.result(timeout=30), int)


def test_prefetched_tasks_of_a_killed_worker_run_once_elsewhere(cluster, tmp_path):
    import signal
    address = cluster(2)
    runs = tmp_path / "runs"
    runs.mkdir()
    with client.Executor(address) as ex:
        warm_up(ex)
        pids = set(ex.map(helpers.getpid, range(50)))
        futures = [ex.submit(helpers.record_run, str(runs), i, 0.002) for i in range(1000)]
        wait_until(lambda: sum(f.done() for f in futures) > 100, 30, what="some progress")
        os.kill(min(pids), signal.SIGKILL)
        assert [f.result(timeout=60) for f in futures] == list(range(1000))
    # Once each, but for the task running on the killed worker and the few it
    # may have finished without sending their results yet.
    counts = helpers.runs_per_value(str(runs))
    assert sorted(counts) == list(range(1000))
    assert sum(c > 1 for c in counts.values()) <= 10
