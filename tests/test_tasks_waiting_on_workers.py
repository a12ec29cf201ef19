"""Tasks waiting on a worker (dispatched, not started) keep every promise.

A worker that has seen short tasks asks for more tasks than it has threads
(it prefetches), so tasks wait on it behind a running one. Cancelling reaches
them and they never run; those stuck behind a long one are given back for
idle workers to run; those of a killed worker run once elsewhere.
"""
from __future__ import annotations

import os
import threading

import pytest
import zmq

import zeropool
from zeropool.protocol import (
    PROTOCOL_VERSION, Cancel, Dispatch, Heartbeat, Op, Role, Status, Submit, Welcome, Withdraw,
    Withdrawn, WorkerResults,
)
from zeropool.protocol.payload import dumps_call, dumps_result
from tests import helpers
from tests.conftest import command
from tests.helpers import wait_until
from tests.peer import Peer, packed_rows

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
    ex = zeropool.Executor(address)
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
    assert not set(cancelled) & set(counts), "a cancelled task ran"
    ran = [i for i, f in enumerate(futures) if not f.cancelled()]
    assert sorted(counts) == ran and all(counts[i] == 1 for i in ran)


def test_tasks_behind_a_long_one_are_given_back_to_idle_workers(cluster, tmp_path, gate):
    address = cluster(2)
    started = str(tmp_path / "started")
    with zeropool.Executor(address) as ex:
        warm_up(ex)
        blocker = ex.submit(helpers.touch_then_wait, started, gate)
        quick = [ex.submit(helpers.square, i) for i in range(60)]
        # All of them finish while the blocker still holds its worker.
        assert [f.result(timeout=30) for f in quick] == [i * i for i in range(60)]
        assert not blocker.done()
        helpers.touch(gate)
        assert isinstance(blocker.result(timeout=30), int)


def test_a_task_held_behind_a_long_one_goes_to_a_worker_with_nothing_to_do(
        programs, cluster, tmp_path, gate):
    """Once tasks take more than a few ms, a worker holds one waiting behind its
    running one (as ProcessPoolExecutor keeps a call queued); the broker asks
    for it back when its queue is empty and another worker has nothing to do."""
    from zeropool.broker.status import query
    address = cluster(1)
    marks = [str(tmp_path / f"started-{i}") for i in (1, 2)]
    with zeropool.Executor(address) as ex:
        # Five long ones in a row: it gives its spare credit back, before the last two end.
        assert list(ex.map(helpers.sleep_and_return, [0.02] * 7, range(7))) == list(range(7))
        first = ex.submit(helpers.touch_then_wait, marks[0], gate)
        second = ex.submit(helpers.touch_then_wait, marks[1], gate)
        wait_until(lambda: [w["held"] for w in query(address, None, 5)["workers"]] == [2], 30,
                   what="the worker to hold both tasks")
        programs.worker(address, "--path", REPO)
        # Left where it was, it would wait for the first one to end.
        wait_until(lambda: all(os.path.exists(m) and os.path.getsize(m) for m in marks), 30,
                   what="the second task to start")
        assert not first.done()
        with open(marks[0]) as a, open(marks[1]) as b:
            assert a.read() != b.read(), "both ran on the same worker"
        helpers.touch(gate)
        first.result(timeout=30)
        second.result(timeout=30)


def test_a_worker_whose_tasks_turn_long_holds_one_task_not_a_short_tasks_prefetch(
        cluster, tmp_path, gate):
    from zeropool.broker.status import query
    address = cluster(1)
    with zeropool.Executor(address) as ex:
        warm_up(ex)  # it offers credit for dozens of short tasks
        # Five long ones in a row: it gives its spare credit back, before the last two end.
        assert list(ex.map(helpers.sleep_and_return, [0.02] * 7, range(7))) == list(range(7))
        futures = [ex.submit(helpers.touch_then_wait, str(tmp_path / f"started-{i}"), gate)
                   for i in range(10)]
        try:
            wait_until(lambda: os.path.exists(tmp_path / "started-0"), 30,
                       what="the first task")
            # Its spare credit taken back, one runs, one waits there, the rest at the broker.
            wait_until(lambda: query(address, None, 5)["queued"] == 8, 30,
                       what="eight tasks queued at the broker")
            assert [w["held"] for w in query(address, None, 5)["workers"]] == [2]
        finally:
            helpers.touch(gate)  # a failure above ends quickly
        for future in futures:
            future.result(timeout=30)


def test_tasks_prefetched_while_short_go_back_once_they_turn_long(cluster):
    from zeropool.broker.status import query
    address = cluster(1)
    with zeropool.Executor(address) as ex:
        warm_up(ex)  # it offers credit for dozens of short tasks: all thirty go there
        # Too short to count as stuck behind a long one (GIVE_BACK_AFTER)...
        futures = [ex.submit(helpers.sleep_and_return, 0.015, i) for i in range(30)]
        # ...but after five of them it gives back those waiting behind the sixth.
        wait_until(lambda: query(address, None, 5)["queued"] >= 5, 30,
                   what="tasks given back to the broker's queue")
        assert [f.result(timeout=30) for f in futures] == list(range(30))


def test_prefetched_tasks_of_a_killed_worker_run_once_elsewhere(cluster, tmp_path):
    import signal
    address = cluster(2)
    runs = tmp_path / "runs"
    runs.mkdir()
    with zeropool.Executor(address) as ex:
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


def test_broker_cancels_tasks_a_worker_holds_unstarted(programs):
    """The broker side: a worker holding tasks it has not started is asked for
    them back, and cancel() answers once it has replied."""
    # The raw worker sends no heartbeats: a liveness window longer than the test.
    _, address = programs.broker("--liveness", "120")
    worker = Peer(identity=b"raw-worker")
    try:
        worker.join_as_worker(address, credit=3)
        with zeropool.Executor(address) as ex:
            futures = [ex.submit(helpers.square, i) for i in range(3)]
            keys = worker.dispatched(3)
            worker.send(WorkerResults([], [keys[0]], 0))  # the first has started
            wait_until(futures[0].running, 30, what="the start to reach the client")
            assert futures[0].cancel() is False  # started: the worker is not even asked

            def cancel_in_thread(future, answers):
                thread = threading.Thread(target=lambda: answers.append(future.cancel()))
                thread.start()
                return thread

            answers: list = []
            thread = cancel_in_thread(futures[1], answers)
            withdraw, _, _ = worker.expect(Op.WITHDRAW)
            assert withdraw.tasks == [keys[1]]
            assert not answers, "cancel() answered before the worker did"
            worker.send(Withdrawn(withdraw.request_id, withdraw.tasks))
            thread.join(30)
            assert answers == [True] and futures[1].cancelled()

            thread = cancel_in_thread(futures[2], answers)  # it starts meanwhile: not given back
            withdraw, _, _ = worker.expect(Op.WITHDRAW)
            worker.send(Withdrawn(withdraw.request_id, []))
            thread.join(30)
            assert answers == [True, False] and not futures[2].cancelled()

            (ok0, frames0), (ok4, frames4) = dumps_result(0), dumps_result(4)
            results, payload = packed_rows([[*keys[0], int(ok0)], [*keys[2], int(ok4)]],
                                           [frames0, frames4])
            worker.send(WorkerResults(results, [], 0), payload)
            assert futures[0].result(timeout=30) == 0 and futures[2].result(timeout=30) == 4
    finally:
        worker.close()


def test_a_cancel_follows_a_task_asked_back_for_an_idle_worker(programs):
    """A task waiting on a busy worker is asked back for an idle one; a cancel
    for it reaches the busy worker after it has given the task back, and the
    idle one has it unstarted by then: the cancel asks there too, and
    cancel() is True."""
    _, address = programs.broker("--liveness", "120")  # raw workers send no heartbeats
    busy, idle = Peer(identity=b"raw-busy"), Peer(identity=b"raw-idle")
    try:
        busy.join_as_worker(address, credit=2)
        with zeropool.Executor(address) as ex:
            futures = [ex.submit(helpers.square, i) for i in range(2)]
            keys = busy.dispatched(2)
            busy.send(WorkerResults([], [keys[0]], 0))  # runs the first, holds the second
            wait_until(futures[0].running, 30, what="the start to reach the client")

            idle.join_as_worker(address, credit=1)
            steal, _, _ = busy.expect(Op.WITHDRAW)  # for the idle worker
            assert steal.tasks == [keys[1]]

            answers: list = []
            thread = threading.Thread(target=lambda: answers.append(futures[1].cancel()))
            thread.start()
            ask, _, _ = busy.expect(Op.WITHDRAW)  # the cancel's
            assert ask.request_id != steal.request_id and ask.tasks == [keys[1]]
            busy.send(Withdrawn(steal.request_id, [keys[1]]))
            dispatch, _, _ = idle.expect(Op.DISPATCH)
            assert [row[:2] for row in dispatch.tasks] == [keys[1]]
            busy.send(Withdrawn(ask.request_id, []))  # it has none of them now
            follow, _, _ = idle.expect(Op.WITHDRAW)
            assert follow.tasks == [keys[1]]
            assert not answers, "cancel() answered before the idle worker did"
            idle.send(Withdrawn(follow.request_id, [keys[1]]))
            thread.join(30)
            assert answers == [True] and futures[1].cancelled()

            status, frames = dumps_result(0)
            results, payload = packed_rows([[*keys[0], int(status)]], [frames])
            busy.send(WorkerResults(results, [], 0), payload)
            assert futures[0].result(timeout=30) == 0
    finally:
        busy.close()
        idle.close()


def test_a_client_gone_while_its_cancel_waits_on_a_worker_costs_the_broker_nothing(programs):
    """The client of a cancel that waits on a worker's answer goes away (its
    connection closes) and is dropped; the answer then comes, and the broker
    carries on."""
    from zeropool.broker.status import query
    broker, address = programs.broker("--heartbeat-interval", "0.2", "--liveness", "5")
    worker, raw_client = Peer(identity=b"raw-worker"), Peer(identity=b"raw-client")
    try:
        worker.join_as_worker(address, credit=2)
        raw_client.join_as_client(address)
        rows, payload = packed_rows([[1], [2]],
                                    [dumps_call(helpers.square, (i,), {}) for i in (1, 2)])
        raw_client.send(Submit(rows), payload)
        held = worker.dispatched(2)
        worker.send(WorkerResults([], [held[0]], 0))  # runs the first, holds the second
        raw_client.send(Cancel(1, [2]))
        ask, _, _ = worker.expect(Op.WITHDRAW)
        assert ask.tasks == [[b"raw-client", 2]]

        def report() -> dict:
            worker.send(Heartbeat())  # the worker stays
            return query(address, None, 5)

        raw_client.close()  # silent alone, it would stay: it could be a live one held up
        wait_until(lambda: not report()["clients"], 30, what="the gone client to be dropped")
        worker.send(Withdrawn(ask.request_id, ask.tasks))
        # Still serving, and the worker holds only the task it runs.
        wait_until(lambda: [w["held"] for w in report()["workers"]] == [1], 30,
                   what="the given-back task to leave the worker")
        assert broker.poll() is None
    finally:
        worker.close()
        raw_client.close()


def test_worker_gives_back_tasks_it_has_not_started(programs, tmp_path, gate):
    """The worker side, against a raw broker: asked for tasks it holds behind a
    running one, it gives them back (or already has, on its own), and never
    runs them."""
    import subprocess
    broker = Peer(zmq.ROUTER)
    try:
        process = subprocess.Popen([*command("worker"), broker.bind(), "--path", REPO],
                                   stdin=subprocess.DEVNULL)
        programs.processes.append(process)
        hello, _, worker_id = broker.expect(Op.HELLO)
        assert hello.threads == 1
        # The raw broker sends no heartbeats: a liveness window longer than the test.
        broker.send(Welcome(PROTOCOL_VERSION, 1.0, 120, 1 << 30), to=worker_id)
        started, markers = str(tmp_path / "started"), [str(tmp_path / f"ran-{i}") for i in (1, 2)]
        calls = [dumps_call(helpers.touch_then_wait, (started, gate), {})]
        calls += [dumps_call(helpers.touch, (marker,), {}) for marker in markers]
        rows, payload = packed_rows([[b"c-test", i] for i in range(3)], calls)
        broker.send(Dispatch(rows), payload, to=worker_id)
        wait_until(lambda: os.path.exists(started), 30, what="the first task to start")
        broker.send(Withdraw(7, [[b"c-test", 1], [b"c-test", 2]]), to=worker_id)
        given_back = []
        while len(given_back) < 2:
            withdrawn, _, _ = broker.expect(Op.WITHDRAWN, Role.WORKER)
            assert withdrawn.request_id in (7, 0)  # 0: given back unasked, behind a long task
            given_back += [tuple(row) for row in withdrawn.tasks]
        assert sorted(given_back) == [(b"c-test", 1), (b"c-test", 2)]
        helpers.touch(gate)
        news, _, _ = broker.expect(Op.RESULTS, Role.WORKER)
        while not news.results:
            news, _, _ = broker.expect(Op.RESULTS, Role.WORKER)
        assert [row[:3] for row in news.results] == [[b"c-test", 0, int(Status.OK)]]
        # One thread runs tasks in order: had they stayed, they would run before this one.
        rows, payload = packed_rows([[b"c-test", 3]], [dumps_call(helpers.square, (3,), {})])
        broker.send(Dispatch(rows), payload, to=worker_id)
        news, _, _ = broker.expect(Op.RESULTS, Role.WORKER)
        while not news.results:
            news, _, _ = broker.expect(Op.RESULTS, Role.WORKER)
        assert [row[:3] for row in news.results] == [[b"c-test", 3, int(Status.OK)]]
        assert not any(os.path.exists(m) for m in markers)
    finally:
        broker.close()


@pytest.mark.timeout(120)
def test_only_the_task_that_kills_workers_fails_not_its_neighbours(cluster):
    address = cluster(2)
    with zeropool.Executor(address) as ex:
        warm_up(ex)  # prefetching: the killer's neighbours wait on the same worker
        futures = [ex.submit(helpers.square, i) for i in range(20)]
        killer = ex.submit(helpers.exit_process)
        futures += [ex.submit(helpers.square, i) for i in range(20, 40)]
        with pytest.raises(zeropool.WorkerLostError):
            killer.result(timeout=90)
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(40)]
