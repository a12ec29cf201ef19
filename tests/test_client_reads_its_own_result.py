"""client/lending.py: a caller waiting alone on its one task reads the socket
itself, so a lone round trip needs no wake of the client's I/O thread; every
other way of waiting gives the socket back to that thread. Real broker,
real workers."""
from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time

import pytest

import zeropool
from tests import helpers
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)


def lent_after_lone_round_trips(ex) -> object:
    """Lone round trips until the session's socket is lent; its Lending."""
    lending = ex._session.lending
    for i in range(3):
        assert ex.submit(helpers.square, i).result(timeout=30) == i * i
    wait_until(lambda: lending.lent, what="the socket lent after lone round trips")
    return lending


def io_thread_runs(ex) -> int:
    """How often the client's I/O thread has been scheduled so far."""
    tid = ex._session._thread.native_id
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[2])


def test_lone_round_trips_leave_the_io_thread_asleep(shared_cluster):
    with zeropool.Executor(shared_cluster) as ex:
        lent_after_lone_round_trips(ex)
        before = io_thread_runs(ex)
        assert [ex.submit(helpers.square, i).result(timeout=30) for i in range(200)] == [
            i * i for i in range(200)]
        # Without the lending it runs at least once per result (200 times);
        # lent, only for its timed chores.
        assert io_thread_runs(ex) - before < 50


def test_the_stdlib_waits_take_the_socket_back(shared_cluster):
    with zeropool.Executor(shared_cluster) as ex:
        lending = lent_after_lone_round_trips(ex)
        future = ex.submit(helpers.square, 3)
        done, _ = cf.wait([future], timeout=30)
        assert done == {future} and future.result() == 9
        assert not lending.wanted
        wait_until(lambda: not lending.lent, what="the loop reading again")

        lending = lent_after_lone_round_trips(ex)
        assert [f.result() for f in cf.as_completed([ex.submit(helpers.square, 4)],
                                                    timeout=30)] == [16]
        assert not lending.wanted


def test_a_done_callback_takes_the_socket_back_and_runs(shared_cluster):
    with zeropool.Executor(shared_cluster) as ex:
        lending = lent_after_lone_round_trips(ex)
        called = threading.Event()
        future = ex.submit(helpers.square, 5)
        future.add_done_callback(lambda f: called.set())
        assert not lending.wanted
        assert called.wait(30) and future.result() == 25


def test_polling_done_reads_what_waits(shared_cluster):
    with zeropool.Executor(shared_cluster) as ex:
        lent_after_lone_round_trips(ex)
        future = ex.submit(helpers.square, 6)
        wait_until(future.done, timeout=30, what="the future done by polling done()")
        assert future.result() == 36


def test_a_timeout_while_reading_holds_and_the_task_still_completes(shared_cluster, tmp_path):
    release = str(tmp_path / "release")
    with zeropool.Executor(shared_cluster) as ex:
        lending = lent_after_lone_round_trips(ex)
        future = ex.submit(helpers.wait_for_file, release)
        started = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            future.result(timeout=0.3)
        assert time.monotonic() - started >= 0.3
        assert not lending.wanted  # the loop reads for it now
        helpers.touch(release)
        assert future.result(timeout=30) != os.getpid()  # a worker's


def test_a_cancel_is_answered_while_lent(shared_cluster, tmp_path):
    release = str(tmp_path / "release")
    with zeropool.Executor(shared_cluster) as ex:
        lent_after_lone_round_trips(ex)
        # Both one-thread workers busy, so the third task stays queued.
        marks = [str(tmp_path / f"started-{i}") for i in range(2)]
        busy = [ex.submit(helpers.touch_then_wait, mark, release) for mark in marks]
        for mark in marks:
            helpers.wait_for_file(mark)
        queued = ex.submit(helpers.square, 7)
        assert queued.cancel() and queued.cancelled()
        helpers.touch(release)
        assert all(f.result(timeout=30) != os.getpid() for f in busy)


def test_threads_waiting_alone_at_once_all_get_their_results(shared_cluster):
    with zeropool.Executor(shared_cluster) as ex:
        lent_after_lone_round_trips(ex)
        results: dict[int, list] = {}

        def lone_trips(n: int) -> None:
            results[n] = [ex.submit(helpers.add, n, i).result(timeout=30) for i in range(100)]

        threads = [threading.Thread(target=lone_trips, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(50)
        assert results == {n: [n + i for i in range(100)] for n in range(4)}


def test_shutdown_takes_the_socket_back(shared_cluster):
    ex = zeropool.Executor(shared_cluster)
    lending = lent_after_lone_round_trips(ex)
    future = ex.submit(helpers.square, 8)
    ex.shutdown(wait=True)
    assert future.result() == 64 and not lending.lent


@pytest.mark.timeout(120)
def test_a_broker_killed_while_lent_is_found_and_its_tasks_run_on_the_next(programs):
    fast = ("--heartbeat-interval", "0.2")
    broker, address = programs.broker(*fast)
    programs.worker(address, "--log-level", "ERROR")
    with zeropool.Executor(address) as ex:
        lent_after_lone_round_trips(ex)
        broker.kill()
        broker.wait()
        future = ex.submit(helpers.getpid)
        programs.broker(*fast, bind=address)
        # Read by this thread while lent, or by the loop once it found the
        # broker silent and connected anew: either way, once.
        assert future.result(timeout=60) != os.getpid()


def test_ctrl_c_while_the_caller_reads_loses_nothing(shared_cluster):
    """A KeyboardInterrupt in the caller's reading, the RESULTS taken off the
    socket and lost with it: the connection is made anew and the task, still
    unanswered, is submitted again."""
    from zeropool.protocol import Op, decode
    from zeropool.protocol.sockets import readable, recv_frames

    with zeropool.Executor(shared_cluster) as ex:
        lent_after_lone_round_trips(ex)
        connection = ex._session._connection
        real, interrupted = connection.read, []

        def read(handle):
            sock = connection.socket
            if not interrupted and threading.current_thread() is threading.main_thread():
                while readable(sock):
                    frames = recv_frames(sock)
                    message, payload = decode(frames)
                    if message.op is Op.RESULTS and message.results:
                        interrupted.append(message)
                        raise KeyboardInterrupt
                    handle(message, payload)
            return real(handle)

        connection.read = read
        try:
            future = ex.submit(helpers.square, 9)
            with pytest.raises(KeyboardInterrupt):
                future.result(timeout=30)
        finally:
            del connection.read
        assert interrupted
        assert future.result(timeout=60) == 81
        assert ex.submit(helpers.square, 10).result(timeout=30) == 100


def test_a_task_reported_started_is_not_left_unread(shared_cluster):
    """A task long enough to be reported started first (a RESULTS the loop
    reads while its caller waits on the future): the socket is not lent
    then, which would leave its result unread until the loop next woke."""
    with zeropool.Executor(shared_cluster) as ex:
        for _ in range(3):
            started = time.monotonic()
            assert ex.submit(helpers.sleep_and_return, 0.05, 1).result(timeout=30) == 1
            # Unread, it would wait for LEND_IDLE (1 s).
            assert time.monotonic() - started < 0.7


def test_no_timeout_left_is_a_timeout_while_lent(shared_cluster, tmp_path):
    with zeropool.Executor(shared_cluster) as ex:
        lent_after_lone_round_trips(ex)
        future = ex.submit(helpers.wait_for_file, str(tmp_path / "release"))
        for timeout in (0, -0.5):
            with pytest.raises(cf.TimeoutError):
                future.result(timeout=timeout)
        helpers.touch(str(tmp_path / "release"))
        assert future.result(timeout=30) != os.getpid()


def test_ctrl_c_while_the_caller_completes_a_future_loses_nothing(shared_cluster, monkeypatch):
    """A KeyboardInterrupt after the task was taken from the table, before
    its future was done: it is pending again, and runs on the new connection."""
    from zeropool.client import table

    real, interrupted = table.finish, []

    def finish(future, ok, value):
        if not interrupted and threading.current_thread() is threading.main_thread():
            interrupted.append(value)
            raise KeyboardInterrupt
        return real(future, ok, value)

    with zeropool.Executor(shared_cluster) as ex:
        lent_after_lone_round_trips(ex)
        monkeypatch.setattr(table, "finish", finish)
        future = ex.submit(helpers.square, 11)
        with pytest.raises(KeyboardInterrupt):
            future.result(timeout=30)
        assert interrupted
        assert future.result(timeout=30) == 121
        assert ex.submit(helpers.square, 12).result(timeout=30) == 144
