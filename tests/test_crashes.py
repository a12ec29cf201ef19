"""Every failure anywhere in a task's life reaches its future as an error.

A table, as loky's ``crash_cases``: for each hop a task crosses and each way
to fail there (an Exception, SystemExit, KeyboardInterrupt, os._exit, a real
segfault), the error its future gets, and then a normal task, which must still
run. The same case runs side by side on ``ProcessPoolExecutor(2)``:

    hop (where)                 zeropool's future gets            ProcessPoolExecutor's
    --------------------------  --------------------------------  ---------------------------
    unpickling the call (w)     what the unpickler raised         BrokenProcessPool, pool broken
    the call (w)                what the call raised              the same
    pickling the result (w)     PicklingError naming the error    the error itself
    pickling the exception (w)  RemoteError naming its type       the pickling error itself
    unpickling the exception    RemoteError (the worker tries     BrokenProcessPool, pool broken
      (w, then the client)        loading it before it sends it)
    unpickling the result (c)   UnpicklingError naming the error  BrokenProcessPool, pool broken
    os._exit or a segfault,     WorkerLostError once it has       BrokenProcessPool, pool broken
      at any worker hop           killed 3 workers; others go on
    pickling the call (c)       submit() raises it, nothing sent  the future gets an Exception;
                                                                  SystemExit or KeyboardInterrupt
                                                                  kill its feeder thread: the
                                                                  future and the pool hang (not run)

(w: on the worker, c: at the client.) Where zeropool differs, it keeps the
pool: one bad task costs nothing to the others.
"""
from __future__ import annotations

import concurrent.futures as cf
import faulthandler
import os
import pickle
from concurrent.futures.process import BrokenProcessPool

import pytest

import zeropool
from zeropool.protocol.errors import RemoteError
from tests import crash_tasks as tasks
from tests.conftest import descendants
from tests.helpers import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# As CPython's own tests: the stdlib process pool forks (before 3.14) while this
# process has threads, zeropool's among them.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
RAISES = ("ValueError", "SystemExit", "KeyboardInterrupt")
ERRORS = {"ValueError": ValueError, "SystemExit": SystemExit,
          "KeyboardInterrupt": KeyboardInterrupt}
BROKEN = (BrokenProcessPool, "terminated abruptly")
LOST = (zeropool.WorkerLostError, "was running on 3 workers that died")


def _raising_cases():
    """(id, fn, args, ours: (type, fragment), ProcessPoolExecutor's: (type, fragment))."""
    for how in RAISES:
        error = ERRORS[how]
        yield (f"unpickle-call-{how}", tasks.take, (tasks.AtUnpickle(how),),
               (error, f"{how} at unpickling"), BROKEN)
        yield (f"call-{how}", tasks.call, (how,),
               (error, f"{how} in the call"), (error, f"{how} in the call"))
        yield (f"pickle-result-{how}", tasks.return_at_pickle, (how,),
               (pickle.PicklingError, f"could not be pickled: {how}: {how} at pickling"),
               (error, f"{how} at pickling"))
        yield (f"pickle-exception-{how}", tasks.raise_at_pickle, (how,),
               (RemoteError, f"RaisesAtPickle: {how}"),
               (error, f"{how} at pickling the exception"))
        yield (f"unpickle-exception-{how}", tasks.raise_unloadable, (how,),
               (RemoteError, f"RaisesUnloadable: {how}"), BROKEN)
        yield (f"unpickle-result-{how}", tasks.return_unloadable, (how,),
               (pickle.UnpicklingError, f"could not be unpickled here: {how}: {how} at unpickling"),
               BROKEN)


RAISING = [pytest.param(*case[1:], id=case[0]) for case in _raising_cases()]
CRASHING = [
    pytest.param(tasks.take, (tasks.AtUnpickle("exit"),), id="unpickle-call-exit"),
    pytest.param(tasks.call, ("exit",), id="call-exit"),
    pytest.param(tasks.call, ("segfault",), id="call-segfault"),
    pytest.param(tasks.return_at_pickle, ("segfault",), id="pickle-result-segfault"),
]


def assert_fails_with(future, expected) -> None:
    error, fragment = expected
    with pytest.raises(BaseException) as raised:
        future.result(timeout=60)
    assert type(raised.value) is error, repr(raised.value)
    assert fragment in str(raised.value), str(raised.value)


def on_process_pool(fn, args, expected) -> None:
    """The case on a ProcessPoolExecutor(2); a broken pool stays broken."""
    # Children forked from pytest inherit its faulthandler, which would print
    # a segfaulting one's stack.
    with cf.ProcessPoolExecutor(2, initializer=faulthandler.disable) as pool:
        assert_fails_with(pool.submit(fn, *args), expected)
        if expected is BROKEN:
            with pytest.raises(BrokenProcessPool):
                pool.submit(tasks.take, 1)
        else:
            assert pool.submit(tasks.take, 1).result(timeout=30) == "taken"


@pytest.fixture(scope="module")
def executor():
    """An embedded cluster of two workers, shared by the cases that kill none."""
    before = descendants(os.getpid())
    with zeropool.Executor(2) as ex:
        # Broker, supervisor and its two workers: all there before the first
        # test counts the processes it must leave behind.
        wait_until(lambda: len(descendants(os.getpid()) - before) >= 4, 30,
                   what="the embedded cluster's processes")
        yield ex


@pytest.mark.parametrize("fn, args, ours, process_pool", RAISING)
def test_an_error_at_any_hop_reaches_the_future_and_the_pool_goes_on(
        executor, fn, args, ours, process_pool):
    assert_fails_with(executor.submit(fn, *args), ours)
    assert executor.submit(tasks.take, 1).result(timeout=30) == "taken"
    on_process_pool(fn, args, process_pool)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fn, args", CRASHING)
def test_a_task_that_kills_its_workers_fails_alone(programs, tmp_path, fn, args):
    _, address = programs.broker("--heartbeat-interval", "0.1", "--liveness", "5",
                                 "--log-level", "ERROR")
    # Separate processes, not a supervisor: none is restarted (with a back-off)
    # while the task kills three, and the fourth runs the next task.
    with open(tmp_path / "workers.log", "w") as log:
        for _ in range(4):
            programs.worker(address, "--path", REPO, "--log-level", "ERROR", stderr=log)
    with zeropool.Executor(address) as ex:
        assert_fails_with(ex.submit(fn, *args), LOST)
        assert ex.submit(tasks.take, 1).result(timeout=30) == "taken"
    on_process_pool(fn, args, BROKEN)


@pytest.mark.parametrize("how", RAISES)
def test_a_call_that_fails_to_pickle_raises_from_submit(executor, how):
    # An Exception is wrapped to say which argument failed; SystemExit and
    # KeyboardInterrupt, raised in the caller's own thread, go up as they are.
    error = pickle.PicklingError if how == "ValueError" else ERRORS[how]
    with pytest.raises(error, match=f"{how}: {how} at pickling" if how == "ValueError"
                       else f"{how} at pickling"):
        executor.submit(tasks.take, tasks.AtPickle(how))
    assert executor.submit(tasks.take, 1).result(timeout=30) == "taken"
    if how == "ValueError":  # SystemExit and KeyboardInterrupt hang it (see the table)
        with cf.ProcessPoolExecutor(2) as pool:
            future = pool.submit(tasks.take, tasks.AtPickle(how))
            with pytest.raises(ValueError, match="ValueError at pickling"):
                future.result(timeout=30)
            assert pool.submit(tasks.take, 1).result(timeout=30) == "taken"
