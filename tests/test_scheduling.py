"""Scheduling on a shared cluster, with real brokers and workers: strict
priority, resources, clients taking turns, nested tasks, and the API
(``options()``, ``map_unordered``, ``current_executor``) that asks for them."""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import subprocess

import pytest

import zeropool
from tests import helpers
from tests.conftest import command
from tests.helpers import wait_until
from zeropool.broker.status import query, render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(programs, *workers: tuple[str, ...]) -> str:
    """A broker and one worker per argument tuple; returns the address once
    they have all attached."""
    _, address = programs.broker("--log-level", "WARNING")
    for args in workers:
        programs.worker(address, "--path", REPO, "--log-level", "WARNING", *args)
    wait_until(lambda: len(query(address, None, 5)["workers"]) == len(workers), 30,
               what="workers to attach")
    return address


def lines(path) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split()


# -- priorities ------------------------------------------------------------------------

def test_higher_priority_tasks_overtake_those_queued_and_held_on_the_worker(programs, tmp_path):
    """The issue's goal: one worker, one thread, 40 tasks of 20 ms at priority 0,
    then 5 at priority 10: all 5 run before at most 3 more of the 40."""
    address = start(programs, ("--threads", "1"))
    log = str(tmp_path / "log")
    with zeropool.Executor(address) as ex:
        low = [ex.submit(helpers.record_start, log, f"low{i}", 0.02) for i in range(40)]
        wait_until(lambda: len(lines(log)) >= 2, 30, what="the first tasks to run")
        before = len(lines(log))
        high = [ex.options(priority=10).submit(helpers.record_start, log, f"high{i}", 0.02)
                for i in range(5)]
        cf.wait(high + low, timeout=60)
    order = lines(log)
    assert sorted(order) == sorted([f"low{i}" for i in range(40)] + [f"high{i}" for i in range(5)])
    last_high = max(order.index(f"high{i}") for i in range(5))
    overtaken = [label for label in order[before:last_high] if label.startswith("low")]
    assert len(overtaken) <= 3, order
    assert [label for label in order if label.startswith("high")] == [f"high{i}" for i in range(5)]


def test_a_second_client_is_served_in_turn_not_after_the_first_ones_backlog(shared_cluster):
    with zeropool.Executor(shared_cluster) as first, zeropool.Executor(shared_cluster) as second:
        backlog = [first.submit(helpers.sleep_and_return, 0.001, i) for i in range(3000)]
        wait_until(lambda: any(f.done() for f in backlog), 30, what="the backlog to start")
        mine = [second.submit(helpers.sleep_and_return, 0.001, i) for i in range(10)]
        assert [f.result(timeout=60) for f in mine] == list(range(10))
        done_meanwhile = sum(f.done() for f in backlog)
        first.shutdown(cancel_futures=True)
    # Behind one queue it would wait for all 3000; taking turns, for about 10 of them.
    assert done_meanwhile < 1000


def test_status_shows_queued_tasks_per_priority_and_per_client(programs, gate, tmp_path):
    address = start(programs, ("--threads", "1"))
    with zeropool.Executor(address) as ex:
        mark = str(tmp_path / "started")
        blocker = ex.submit(helpers.touch_then_wait, mark, gate)
        wait_until(lambda: os.path.exists(mark), 30, what="the blocker to start")
        futures = [ex.submit(helpers.identity, i) for i in range(3)]
        futures += [ex.options(priority=7).submit(helpers.identity, i) for i in range(2)]
        futures += [ex.options(priority=-1).submit(helpers.identity, i) for i in range(1)]
        # The worker holds the blocker (it knows no task's length yet, so it
        # takes one at a time); the rest waits at the broker.
        wait_until(lambda: query(address, None, 5)["queued"] == 6, 30, what="six queued")
        report = query(address, None, 5)
        assert report["queued_by_priority"] == {"7": 2, "0": 3, "-1": 1}
        [client] = report["clients"]
        assert client["queued"] == 6
        table = render(report)
        assert "PRIORITY" in table and "QUEUED" in table
        open(gate, "w").close()
        assert blocker.result(timeout=30)
        cf.wait(futures, timeout=30)


# -- resources ---------------------------------------------------------------------------

def test_tasks_needing_a_resource_run_only_where_it_is_free(programs, tmp_path, gate):
    address = start(programs, ("--threads", "2", "--resources", "gpu=1"), ("--threads", "1"))
    gpu_worker = next(w for w in query(address, None, 5)["workers"] if w["resources"])
    assert gpu_worker["resources"] == {"gpu": 1}
    with zeropool.Executor(address) as ex:
        on_gpu = ex.options(resources={"gpu": 1})
        pids = set(on_gpu.map(helpers.getpid, range(6)))
        assert pids == {gpu_worker["pid"]}
        mark = str(tmp_path / "first")
        first = on_gpu.submit(helpers.touch_then_wait, mark, gate)
        wait_until(lambda: os.path.exists(mark), 30, what="the first gpu task to start")
        second = on_gpu.submit(helpers.touch, str(tmp_path / "second"))
        # Its worker has a free thread, but not a free gpu: it waits at the broker...
        wait_until(lambda: query(address, None, 5)["queued"] == 1, 30, what="one queued")
        assert not os.path.exists(tmp_path / "second")
        # ...while tasks without needs still run anywhere.
        assert list(ex.map(helpers.square, range(8))) == [x * x for x in range(8)]
        open(gate, "w").close()
        assert first.result(timeout=30) == gpu_worker["pid"]
        assert second.result(timeout=30) == str(tmp_path / "second")


def test_unsatisfiable_needs_warn_the_client_and_wait_for_a_worker_that_has_them(programs):
    address = start(programs, ("--threads", "1"))
    with zeropool.Executor(address) as ex:
        with pytest.warns(zeropool.UnsatisfiableWarning, match="tpu=2") as warned:
            future = ex.options(resources={"tpu": 2}).submit(helpers.square, 7)
            wait_until(lambda: len(warned) > 0, 30, what="the warning")
        report = query(address, None, 5)
        assert report["unsatisfiable"] == [{"resources": {"tpu": 2}, "queued": 1}]
        assert "tpu=2" in render(report)
        assert not future.done()
        programs.worker(address, "--resources", "tpu=4,mem=1e9", "--log-level", "WARNING")
        assert future.result(timeout=30) == 49


def test_gpus_are_shared_out_between_worker_processes(programs, tmp_path):
    _, address = programs.broker("--log-level", "WARNING")
    programs.worker(address, "--gpus", "0,1", "--path", REPO, "--log-level", "WARNING")
    wait_until(lambda: len(query(address, None, 5)["workers"]) == 2, 30, what="two processes")
    assert [w["resources"] for w in query(address, None, 5)["workers"]] == [{"gpu": 1}] * 2
    with zeropool.Executor(address) as ex:
        both = ex.options(resources={"gpu": 1})
        devices = list(both.map(helpers.cuda_devices_when_all_present,
                                [str(tmp_path)] * 2, [2] * 2, timeout=60))
    assert sorted(devices) == ["0", "1"]


@pytest.mark.parametrize("args, message", [
    (["--resources", "gpu=-1"], "gpu"),
    (["--resources", "gpu"], "NAME=AMOUNT"),
    (["--resources", "gpu=lots"], "number"),
    (["--gpus", "0,1,2", "--processes", "2"], "evenly"),
    (["--gpus", "0,0"], "twice"),
    (["--gpus", "0", "--resources", "gpu=1"], "not both"),
])
def test_bad_resource_options_are_usage_errors(args, message):
    run = subprocess.run([*command("worker"), "tcp://127.0.0.1:9", *args],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert message in run.stderr


# -- nested tasks --------------------------------------------------------------------------

@pytest.mark.parametrize("fib", [helpers.fib, helpers.fib_by_wait])
def test_nested_tasks_deeper_than_the_pool_complete(shared_cluster, fib):
    """Two workers of one thread each, recursion nine deep: each waiting task
    gives its slot back while it waits."""
    with zeropool.Executor(shared_cluster) as ex:
        assert ex.submit(fib, 9).result(timeout=120) == 34


def test_map_unordered_inside_a_task_gives_the_slot_back(shared_cluster):
    with zeropool.Executor(shared_cluster) as ex:
        sums = list(ex.map(helpers.sum_of_squares_nested, [10, 20, 30], timeout=60))
    assert sums == [sum(x * x for x in range(n)) for n in (10, 20, 30)]


def test_current_executor_outside_a_task_is_a_clear_error(shared_cluster):
    with pytest.raises(RuntimeError, match="runs as a task"):
        zeropool.current_executor()
    with zeropool.Executor(shared_cluster) as ex:
        # A thread of the worker's that runs no task is outside one too.
        assert ex.submit(helpers.current_executor_here).result(timeout=30) == "no error"


# -- the API ---------------------------------------------------------------------------------

def test_options_returns_an_executor_whose_shutdown_leaves_the_executor_running(shared_cluster):
    with zeropool.Executor(shared_cluster) as ex:
        view = ex.options(priority=3)
        assert isinstance(view, cf.Executor)
        with view as same:
            assert same.submit(helpers.square, 4).result(timeout=30) == 16
            assert list(same.map(helpers.square, range(3))) == [0, 1, 4]
        with pytest.raises(RuntimeError, match="after shutdown"):
            view.submit(helpers.square, 2)
        assert ex.submit(helpers.square, 5).result(timeout=30) == 25
        # Options given again replace those of the view they are taken from; the rest stay.
        narrower = ex.options(priority=2, resources={"gpu": 1}).options(resources=None)
        assert narrower.submit(helpers.square, 6).result(timeout=30) == 36
        assert (narrower._options.priority, narrower._options.resources) == (2, ())


@pytest.mark.parametrize("kwargs, error", [
    (dict(priority="high"), TypeError),
    (dict(priority=2.0), TypeError),
    (dict(resources={"gpu": -1}), ValueError),
    (dict(resources={"gpu": "1"}), TypeError),
    (dict(resources="gpu=1"), TypeError),
    (dict(priorty=1), TypeError),
])
def test_bad_options_fail_at_the_call(shared_cluster, kwargs, error):
    with zeropool.Executor(shared_cluster) as ex:
        with pytest.raises(error):
            ex.options(**kwargs)
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9  # nothing else lost


def test_map_unordered_yields_results_as_they_complete(shared_cluster, tmp_path):
    flag, other = str(tmp_path / "second-seen"), str(tmp_path / "unused")
    with zeropool.Executor(shared_cluster) as ex:
        # The first call waits until this test has the second's result: only
        # unordered can yield it first. (Had the second call made the file, the
        # first's result could arrive first.)
        results = ex.map_unordered(helpers.wait_for_file_then_or_touch, [flag, other], [0, 1])
        assert next(results) == 1
        open(flag, "w").close()
        assert list(results) == [0]
        assert sorted(ex.map_unordered(helpers.add, range(50), range(50), chunksize=7)) == [
            2 * x for x in range(50)]
        endless = ex.map_unordered(helpers.square, itertools.count(), buffersize=4)
        assert len([next(endless) for _ in range(20)]) == 20
        endless.close()
        with pytest.raises(ValueError, match="3"):
            list(ex.map_unordered(helpers.raise_value_error_if, range(6), [3] * 6))


def test_a_worker_starts_what_waits_there_highest_priority_first(programs, tmp_path, gate):
    """The worker side, against a raw broker: tasks dispatched behind a running
    one start by priority, FIFO among equals."""
    import zmq
    from tests.peer import Peer
    from zeropool.protocol import (
        PROTOCOL_VERSION, Dispatch, Op, TaskOptions, Welcome, pack_payload)
    from zeropool.protocol.payload import dumps_call
    broker = Peer(zmq.ROUTER)
    try:
        port = broker.socket.bind_to_random_port("tcp://127.0.0.1")
        programs.worker(f"tcp://127.0.0.1:{port}", "--path", REPO)
        _, _, worker_id = broker.expect(Op.HELLO)
        broker.send(Welcome(PROTOCOL_VERSION, 1.0, 120, 1 << 30), to=worker_id)
        log, started = str(tmp_path / "log"), str(tmp_path / "started")
        calls = [(0, dumps_call(helpers.touch_then_wait, (started, gate), {}))]
        calls += [(priority, dumps_call(helpers.record_start, (log, label), {}))
                  for priority, label in [(0, "a"), (-2, "z"), (5, "high"), (0, "b"), (5, "h2")]]
        rows, payload = [], []
        for task_id, (priority, frames) in enumerate(calls):
            nframes, inline, frames = pack_payload(frames)
            row = [b"c-test", task_id, nframes, inline]
            rows.append(row + [TaskOptions.make(priority)] if priority else row)
            payload += frames
        broker.send(Dispatch(rows), payload, to=worker_id)
        wait_until(lambda: os.path.exists(started), 30, what="the first task to start")
        helpers.touch(gate)
        wait_until(lambda: len(lines(log)) == 5, 30, what="the waiting tasks to run")
        assert lines(log) == ["high", "h2", "a", "b", "z"]
    finally:
        broker.close()


def test_a_task_taking_its_slot_back_does_not_block_the_one_in_it_from_submitting(programs,
                                                                                  tmp_path):
    """One thread: a task that waited with wait() takes its slot back at its
    next submit, while the task that ran in that slot submits too."""
    address = start(programs, ("--threads", "1"))
    with zeropool.Executor(address) as ex:
        waiter = ex.submit(helpers.nested_waits_then_submits, str(tmp_path))
        wait_until(lambda: os.path.exists(tmp_path / "waited"), 30, what="the waiter's wait")
        stand_in = ex.submit(helpers.nested_stand_in, str(tmp_path))
        assert stand_in.result(timeout=60) == 3
        assert waiter.result(timeout=60) == 2


def test_a_higher_task_asks_back_lower_ones_a_worker_holds_unstarted(programs):
    """Against a real broker, a raw worker that holds three tasks and has
    started one: a task of higher priority makes the broker ask for the two
    it has not started, and it goes out first once they are back."""
    from tests.peer import Peer
    from zeropool.protocol import Op, Withdrawn, WorkerResults
    _, address = programs.broker("--log-level", "WARNING")
    ex = zeropool.Executor(address)
    with Peer() as worker:
        worker.join_as_worker(address, credit=3, threads=1)
        low = [ex.submit(helpers.identity, i) for i in range(3)]
        held = worker.dispatched(3)
        worker.send(WorkerResults([], started=[held[0]]))
        # The client hears of the start from the broker: once it has, the
        # broker knows which of the three runs when the high one arrives.
        first = next(f for f in low if f.task_id == held[0][1])
        wait_until(first.running, 30, what="the broker to note the start")
        high = ex.options(priority=5).submit(helpers.identity, 99)
        ask, _, _ = worker.expect(Op.WITHDRAW)
        assert sorted(map(tuple, ask.tasks)) == sorted(map(tuple, held[1:]))
        worker.send(Withdrawn(ask.request_id, ask.tasks, credit=1))
        dispatch, _, _ = worker.expect(Op.DISPATCH)
        assert [row[1] for row in dispatch.tasks][0] == held[-1][1] + 1  # the high one first
    ex.kill_workers()  # the raw worker runs nothing: let go of its tasks (no process signalled)
    assert all(f.done() for f in low + [high])


def test_priorities_hold_among_tasks_waiting_for_a_busy_resource(programs, tmp_path, gate):
    address = start(programs, ("--threads", "2", "--resources", "gpu=1"))
    log, mark = str(tmp_path / "log"), str(tmp_path / "blocker")
    with zeropool.Executor(address) as ex:
        gpu = ex.options(resources={"gpu": 1})
        blocker = gpu.submit(helpers.touch_then_wait, mark, gate)
        wait_until(lambda: os.path.exists(mark), 30, what="the gpu to be taken")
        low = gpu.submit(helpers.record_start, log, "low-gpu")
        high = gpu.options(priority=9).submit(helpers.record_start, log, "high-gpu")
        # The worker's other thread is free: work that needs no gpu goes on.
        assert ex.options(priority=5).submit(helpers.record_start, log, "plain").result(
            timeout=30) == "plain"
        assert lines(log) == ["plain"]
        open(gate, "w").close()
        assert blocker.result(timeout=30) and high.result(timeout=30) and low.result(timeout=30)
    assert lines(log) == ["plain", "high-gpu", "low-gpu"]
