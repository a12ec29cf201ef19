"""The Executor contract, written once and run against the stdlib pools and ours.

Where zeropool differs from the stdlib, the test says so.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import threading

import pytest

import client
from tests import helpers
from tests.helpers import wait_until

KINDS = ["thread", "process", "zeropool"]


def make(kind: str, workers: int = 2, **kwargs) -> cf.Executor:
    if kind == "thread":
        return cf.ThreadPoolExecutor(workers, **kwargs)
    if kind == "process":
        return cf.ProcessPoolExecutor(workers, **kwargs)
    return client.Executor(workers, **kwargs)


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def executor(kind):
    ex = make(kind)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def test_is_an_executor_and_futures_are_futures(executor):
    assert isinstance(executor, cf.Executor)
    future = executor.submit(helpers.square, 7)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 49


def test_submit_passes_args_and_kwargs(executor):
    assert executor.submit(helpers.add, 1, y=41).result(timeout=30) == 42


# ProcessPoolExecutor cannot pickle lambdas or closures; zeropool can.
@pytest.mark.parametrize("kind", ["thread", "zeropool"])
def test_functions_travel_by_value(executor):
    offset = 10
    assert executor.submit(lambda x: x + offset, 5).result(timeout=30) == 15

    def closure(x):
        return x * offset

    assert executor.submit(closure, 3).result(timeout=30) == 30


def test_exception_keeps_type_and_remote_traceback(executor, kind):
    future = executor.submit(helpers.raise_value_error, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        future.result(timeout=30)
    assert isinstance(future.exception(), ValueError)
    if kind != "thread":  # threads share the traceback itself
        assert "raise_value_error" in str(info.value.__cause__)


def test_map_returns_results_in_order(executor):
    assert list(executor.map(helpers.square, range(100), timeout=60)) == [i * i for i in range(100)]


def test_map_zips_several_iterables(executor):
    assert list(executor.map(helpers.add, [1, 2, 3], [10, 20, 30, 40])) == [11, 22, 33]


@pytest.mark.parametrize("chunksize", [1, 7, 64, 5000])
def test_map_chunksize(executor, chunksize):
    result = executor.map(helpers.square, range(1000), chunksize=chunksize, timeout=60)
    assert list(result) == [i * i for i in range(1000)]


# ThreadPoolExecutor ignores chunksize.
@pytest.mark.parametrize("kind", ["process", "zeropool"])
def test_map_rejects_bad_chunksize(executor):
    with pytest.raises(ValueError):
        executor.map(helpers.square, range(3), chunksize=0)


def test_map_raises_when_the_failing_position_is_reached(executor):
    results = executor.map(helpers.raise_value_error_if, range(10), [5] * 10)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="5"):
        next(results)


def test_map_timeout(executor, gate):
    results = executor.map(helpers.wait_for_file, [gate], timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        next(results)


def test_map_is_lazy(executor, gate):
    results = executor.map(helpers.wait_for_file_if, [None, gate], timeout=30)
    assert next(results) is None  # the second item is still blocked
    helpers.touch(gate)
    assert isinstance(next(results), int)


def test_result_and_exception_timeout(executor, gate):
    future = executor.submit(helpers.wait_for_file, gate)
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0.05)
    with pytest.raises(cf.TimeoutError):
        future.exception(timeout=0.05)
    helpers.touch(gate)
    assert future.exception(timeout=30) is None


def test_as_completed_with_timeout(executor, gate):
    fast = executor.submit(helpers.square, 2)
    slow = executor.submit(helpers.wait_for_file, gate)
    seen = []
    with pytest.raises(cf.TimeoutError):
        for future in cf.as_completed([fast, slow], timeout=3):
            seen.append(future)
    assert seen == [fast]


def test_as_completed_yields_duplicates_once(executor):
    a = executor.submit(helpers.square, 2)
    b = executor.submit(helpers.square, 3)
    done = list(cf.as_completed([a, a, b, b, a], timeout=30))
    assert sorted(f.result() for f in done) == [4, 9]


def test_as_completed_many(executor):
    futures = {executor.submit(helpers.square, i): i for i in range(200)}
    for future in cf.as_completed(futures, timeout=60):
        assert future.result() == futures[future] ** 2


def test_wait_first_completed(executor, gate):
    slow = executor.submit(helpers.wait_for_file, gate)
    fast = executor.submit(helpers.square, 3)
    done, not_done = cf.wait([slow, fast], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert fast in done and slow in not_done


def test_wait_first_exception(executor, gate):
    slow = executor.submit(helpers.wait_for_file, gate)
    bad = executor.submit(helpers.raise_value_error, "x")
    done, not_done = cf.wait([slow, bad], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert done == {bad} and not_done == {slow}


def test_wait_all_completed(executor):
    futures = [executor.submit(helpers.square, i) for i in range(20)]
    done, not_done = cf.wait(futures, timeout=30, return_when=cf.ALL_COMPLETED)
    assert done == set(futures) and not not_done


def test_wait_timeout_returns_what_is_done(executor, gate):
    slow = executor.submit(helpers.wait_for_file, gate)
    done, not_done = cf.wait([slow], timeout=0.1)
    assert not done and not_done == {slow}


def test_callbacks_before_and_after_completion(executor):
    called = []
    event = threading.Event()
    future = executor.submit(helpers.square, 4)
    future.add_done_callback(lambda f: (called.append(("before", f.result())), event.set()))
    assert event.wait(30)
    future.add_done_callback(lambda f: called.append(("after", f.result())))
    assert called == [("before", 16), ("after", 16)]


def test_cancel_before_start_never_runs(kind, tmp_path, gate):
    ex = make(kind, workers=1)
    try:
        marks = [str(tmp_path / f"ran-{i}") for i in range(5)]
        started = str(tmp_path / "started")
        blocker = ex.submit(helpers.touch_then_wait, started, gate)
        queued = [ex.submit(helpers.touch, m) for m in marks]
        wait_until(lambda: os.path.exists(started), 30, what="the blocker to start")
        assert queued[-1].cancel() is True
        assert queued[-1].cancelled() and queued[-1].done()
        with pytest.raises(cf.CancelledError):
            queued[-1].result(timeout=1)
        helpers.touch(gate)
        assert blocker.result(timeout=30)
        for future in queued[:-1]:
            assert future.result(timeout=30)
    finally:
        helpers.touch(gate)
        ex.shutdown(wait=True)
    assert not os.path.exists(marks[-1])


def test_cancel_running_or_finished_returns_false(kind, tmp_path, gate):
    ex = make(kind, workers=1)
    try:
        started = str(tmp_path / "started")
        running = ex.submit(helpers.touch_then_wait, started, gate)
        wait_until(lambda: os.path.exists(started), 30, what="the task to start")
        wait_until(running.running, 30, what="running() to turn true")
        assert running.cancel() is False
        assert running.running() and not running.done()
        helpers.touch(gate)
        assert running.result(timeout=30)
        assert not running.running()
        assert running.cancel() is False and not running.cancelled()
    finally:
        helpers.touch(gate)
        ex.shutdown(wait=True)


# ProcessPoolExecutor marks calls as running once they are in its call queue,
# before a process takes them; zeropool says running only once a worker runs it.
@pytest.mark.parametrize("kind", ["thread", "zeropool"])
def test_running_is_false_while_queued(kind, tmp_path, gate):
    ex = make(kind, workers=1)
    try:
        started = str(tmp_path / "started")
        blocker = ex.submit(helpers.touch_then_wait, started, gate)
        queued = ex.submit(helpers.square, 2)
        wait_until(lambda: os.path.exists(started), 30, what="the blocker to start")
        assert not queued.running() and not queued.done()
        helpers.touch(gate)
        assert queued.result(timeout=30) == 4 and not queued.running()
        assert blocker.result(timeout=30)
    finally:
        helpers.touch(gate)
        ex.shutdown(wait=True)


def test_shutdown_waits_for_pending_work(kind):
    ex = make(kind)
    futures = [ex.submit(helpers.sleep_and_return, 0.05, i) for i in range(10)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(10))


def test_shutdown_without_wait_still_completes_work(kind, gate):
    ex = make(kind)
    future = ex.submit(helpers.wait_for_file, gate)
    ex.shutdown(wait=False)
    assert not future.done()
    helpers.touch(gate)
    assert isinstance(future.result(timeout=30), int)


def test_shutdown_cancel_futures(kind, tmp_path, gate):
    ex = make(kind, workers=1)
    started = str(tmp_path / "started")
    blocker = ex.submit(helpers.touch_then_wait, started, gate)
    queued = [ex.submit(helpers.touch, str(tmp_path / f"ran-{i}")) for i in range(5)]
    wait_until(lambda: os.path.exists(started), 30, what="the blocker to start")
    ex.shutdown(wait=False, cancel_futures=True)
    helpers.touch(gate)
    assert blocker.result(timeout=30)
    cancelled = [f for f in queued if f.cancelled()]
    # The stdlib process pool may already have moved up to two more calls
    # into its call queue (EXTRA_QUEUED_CALLS); zeropool's single worker holds
    # only the running task, so everything queued is cancelled.
    assert len(cancelled) >= (3 if kind == "process" else 5)
    ran = [f for f in queued if not f.cancelled()]
    cf.wait(ran, timeout=30)
    assert sum(os.path.exists(str(tmp_path / f"ran-{i}")) for i in range(5)) == len(ran)


def test_submit_after_shutdown_raises(kind):
    ex = make(kind)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(helpers.square, 2)


def test_context_manager_shuts_down(kind):
    with make(kind) as ex:
        future = ex.submit(helpers.square, 5)
    assert future.done() and future.result() == 25
    with pytest.raises(RuntimeError):
        ex.submit(helpers.square, 2)


@pytest.mark.parametrize("bad", [0, -1])
def test_invalid_max_workers(kind, bad):
    with pytest.raises(ValueError):
        make(kind, workers=bad)


def test_initializer_runs_before_tasks(kind):
    ex = make(kind, initializer=helpers.set_state, initargs=("ready",))
    try:
        assert set(ex.map(helpers.get_state, range(20))) == {"ready"}
    finally:
        ex.shutdown()


def test_failing_initializer_breaks_the_executor(kind):
    ex = make(kind, initializer=helpers.raise_value_error, initargs=("init failed",))
    try:
        futures = []
        try:
            for i in range(5):
                futures.append(ex.submit(helpers.square, i))
        except cf.BrokenExecutor:
            pass  # any pool may see the failure before the loop ends; the rest must hold
        assert futures
        for future in futures:
            with pytest.raises(cf.BrokenExecutor):
                future.result(timeout=30)
        with pytest.raises(cf.BrokenExecutor):
            ex.submit(helpers.square, 1)
    finally:
        ex.shutdown()


# ProcessPoolExecutor checks this only from Python 3.12 on.
@pytest.mark.parametrize("kind", ["thread", "zeropool"])
def test_initializer_must_be_callable(kind):
    with pytest.raises(TypeError):
        make(kind, initializer=42)


def test_cancelled_futures_count_as_done_for_wait(tmp_path, gate):
    """Unlike the stdlib pools, whose cancelled calls count as done for wait()
    only once a worker dequeues them, zeropool notifies waiters at once."""
    ex = make("zeropool", workers=1)
    try:
        started = str(tmp_path / "started")
        ex.submit(helpers.touch_then_wait, started, gate)
        queued = [ex.submit(helpers.square, i) for i in range(3)]
        wait_until(lambda: os.path.exists(started), 30, what="the blocker to start")
        assert all(f.cancel() for f in queued)
        done, not_done = cf.wait(queued, timeout=5)
        assert done == set(queued) and not not_done
        assert list(cf.as_completed(queued, timeout=5))
    finally:
        helpers.touch(gate)
        ex.shutdown(wait=True)


def test_zeropool_futures_use_the_lean_condition_here():
    # TaskFuture sets Future's and Condition's private attributes itself when
    # they are the ones it knows; on this interpreter that path must be the one
    # the contract tests above exercise.
    from client import session
    assert session._LEAN_FUTURES
    future = session.TaskFuture(None, 1, b"")
    assert type(future._condition) is session._Condition
    assert set(vars(future)) >= set(vars(cf.Future()))


def test_the_lean_condition_waits_notifies_and_reenters():
    from client.session import _Condition
    condition = _Condition()
    with condition:
        with condition:  # an RLock, as Future's is
            assert not condition.wait(0.01)
    woken = threading.Event()

    def waiter():
        with condition:
            if condition.wait(30):
                woken.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: condition._waiters, 30, what="the waiter to wait")
    with condition:
        condition.notify_all()
    thread.join(30)
    assert woken.is_set()
