"""The Executor contract, written once and run against the stdlib pools and ours.

What it checks follows CPython's own tests of ``concurrent.futures``
(``Lib/test/test_concurrent_futures``: executor.py, test_shutdown.py,
test_wait.py, test_as_completed.py, test_init.py, test_process_pool.py,
test_thread_pool.py); a test's docstring names the one it mirrors. Each runs
against ThreadPoolExecutor, ProcessPoolExecutor and zeropool's Executor (its
embedded local cluster), so that a difference shows as a failure. Where
zeropool differs from the stdlib, the test says so, and where a stdlib pool
lacks a feature on the running Python (buffersize, terminate_workers() are
3.14's), the list of kinds it runs against is built without that pool.
The reference is Python 3.14's behaviour: where CPython's main branch goes
further (map() going on past a failed call, per-call outcomes inside a
chunk), a test says what it pins.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import gc
import inspect
import io
import itertools
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import types
import weakref
from concurrent.futures.process import BrokenProcessPool

import pytest

import zeropool
from tests import helpers
from tests.conftest import alive
from tests.helpers import wait_until

TYPES = {
    "thread": cf.ThreadPoolExecutor,
    "process": cf.ProcessPoolExecutor,
    "zeropool": zeropool.Executor,
}
KINDS = list(TYPES)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _takes(function, name: str) -> bool:
    return name in inspect.signature(function).parameters


# The stdlib pools' map() takes buffersize from Python 3.14 on; zeropool's always.
BUFFERSIZE_KINDS = [k for k in ("thread", "process") if _takes(TYPES[k].map, "buffersize")]
BUFFERSIZE_KINDS.append("zeropool")
# ProcessPoolExecutor.terminate_workers() and kill_workers() are 3.14's.
FORCE_KINDS = ["process"] if hasattr(cf.ProcessPoolExecutor, "terminate_workers") else []
FORCE_KINDS.append("zeropool")
FORCE_OPERATIONS = ["terminate_workers", "kill_workers"]


def _future_raises_falsey_exceptions() -> bool:
    future = cf.Future()
    future.set_exception(helpers.FalseyBoolError())
    try:
        future.result()
    except helpers.FalseyBoolError:
        return True
    return False


# gh-132063 (3.14, and 3.13 from some release on) made Future.result() and
# ProcessPoolExecutor raise an exception that is false as a truth value; before
# it, ProcessPoolExecutor took one for a result (None).
FALSEY_KINDS = KINDS if _future_raises_falsey_exceptions() else ["thread", "zeropool"]
# ProcessPoolExecutor's max_tasks_per_child is 3.11's.
MAX_TASKS_KINDS = ["process"] if _takes(cf.ProcessPoolExecutor, "max_tasks_per_child") else []
MAX_TASKS_KINDS.append("zeropool")


# As CPython's tests: the stdlib process pool forks (before 3.14) while this
# process has threads, zeropool's among them.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")


def make(kind: str, workers: int | None = 2, **kwargs) -> cf.Executor:
    return TYPES[kind](workers, **kwargs)


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module", params=KINDS)
def executor(request, tmp_path_factory):
    """One executor of each kind, shared by the tests that leave it as they
    found it: no shutdown, nothing still running once their gate opens. Its
    processes are all started here, before any test counts what it left: a
    call on each worker at once (ProcessPoolExecutor starts them as calls
    need them; zeropool's workers may still be starting as it returns)."""
    ex = make(request.param)
    if request.param != "thread":
        peers = str(tmp_path_factory.mktemp("warm-up"))
        assert len(set(ex.map(helpers.pid_when_all_present, [peers] * 2, [2] * 2,
                              timeout=30))) == 2
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def kind_of(executor: cf.Executor) -> str:
    return next(kind for kind, cls in TYPES.items() if type(executor) is cls)


def premade() -> types.SimpleNamespace:
    """Futures in each state, made by the public API (as CPython's util.py
    makes them by setting ``_state``), to mix with an executor's in wait() and
    as_completed(). A cancelled future counts as done there only once it has
    been notified (set_running_or_notify_cancel), as an executor does."""
    successful, exception = cf.Future(), cf.Future()
    successful.set_result(42)
    exception.set_exception(OSError())
    cancelled, cancelled_and_notified = cf.Future(), cf.Future()
    cancelled.cancel()
    cancelled_and_notified.cancel()
    assert not cancelled_and_notified.set_running_or_notify_cancel()
    return types.SimpleNamespace(successful=successful, exception=exception,
                                 cancelled=cancelled,
                                 cancelled_and_notified=cancelled_and_notified)


def freed(ref: weakref.ref) -> bool:
    gc.collect()  # for what only a cycle holds
    return ref() is None


class Counting:
    """An iterator that counts how many items were taken from it."""

    def __init__(self, iterable) -> None:
        self._items = iter(iterable)
        self.taken = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._items)
        self.taken += 1
        return item


# -- submit ------------------------------------------------------------------

def test_is_an_executor_and_futures_are_futures(executor):
    """CPython: test_submit."""
    assert isinstance(executor, cf.Executor)
    future = executor.submit(pow, 2, 8)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 256


def test_submit_keyword(executor):
    """CPython: test_submit_keyword. ``fn`` and ``self`` are the callable's own
    keywords, never the executor's; the callable cannot be given by keyword."""
    assert executor.submit(helpers.add, 1, y=41).result(timeout=30) == 42
    future = executor.submit(helpers.capture, 1, self=2, fn=3)
    assert future.result(timeout=30) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=helpers.capture, arg=1)
    with pytest.raises(TypeError):
        executor.submit(arg=1)


# ProcessPoolExecutor cannot pickle lambdas or closures; zeropool can.
@pytest.mark.parametrize("executor", ["thread", "zeropool"], indirect=True)
def test_functions_travel_by_value(executor):
    offset = 10
    assert executor.submit(lambda x: x + offset, 5).result(timeout=30) == 15

    def closure(x):
        return x * offset

    assert executor.submit(closure, 3).result(timeout=30) == 30


def test_exception_keeps_type_and_remote_traceback(executor):
    """CPython: test_traceback (test_process_pool.py): the same type and args,
    and the worker's traceback, source line included, is printed with it."""
    future = executor.submit(helpers.raise_value_error, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        future.result(timeout=30)
    exc = info.value
    assert type(exc) is ValueError and exc.args == ("boom",)
    assert isinstance(future.exception(), ValueError)
    if kind_of(executor) != "thread":  # threads share the traceback itself
        assert "raise ValueError(message)" in str(exc.__cause__)
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert "raise ValueError(message)" in printed.getvalue()


@pytest.mark.parametrize("executor", FALSEY_KINDS, indirect=True)
@pytest.mark.parametrize("exception_type", [helpers.FalseyBoolError, helpers.FalseyLenError])
def test_falsey_exceptions_are_raised(executor, exception_type):
    """CPython: test_swallows_falsey_exceptions: an exception that is false as
    a truth value is still the call's outcome. Future.result() itself raises
    it only from gh-132063's fix on: result() must do what the stdlib's own
    Future does with it on this Python."""
    future = executor.submit(helpers.raiser, exception_type, "falsey")
    exc = future.exception(timeout=30)
    assert type(exc) is exception_type and exc.args == ("falsey",)
    reference = cf.Future()
    reference.set_exception(exception_type("falsey"))

    def outcome(f):
        try:
            return "returned", f.result(timeout=30)
        except exception_type as raised:
            return "raised", raised.args

    assert outcome(future) == outcome(reference)


def test_no_stale_references(executor):
    """CPython: test_no_stale_references: a discarded future's call does not
    keep its arguments (here the bound method's object) alive."""
    obj = helpers.MyObject()
    ref = weakref.ref(obj)
    executor.submit(obj.my_method)
    del obj
    wait_until(lambda: freed(ref), 10, what="the object to be collected")


@pytest.mark.parametrize("executor", ["process", "zeropool"], indirect=True)
def test_arguments_are_freed_in_workers(executor, tmp_path):
    """CPython: test_ressources_gced_in_workers (test_process_pool.py): once a
    call is done, its worker keeps no reference to its arguments. (A thread
    shares the caller's object.)"""
    marker = helpers.MarkWhenFreed(str(tmp_path))
    assert executor.submit(id, marker).result(timeout=30)
    ours = str(os.getpid())
    wait_until(lambda: [name for name in os.listdir(tmp_path) if name != ours], 10,
               what="the worker to free its copy of the argument")


# -- map -----------------------------------------------------------------------

def test_map_returns_results_in_order(executor):
    assert list(executor.map(helpers.square, range(100), timeout=60)) == [i * i for i in range(100)]


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_zips_several_iterables(executor, chunksize):
    """CPython: test_map: as map(), the shortest iterable ends it."""
    assert (list(executor.map(pow, range(10), range(10), chunksize=chunksize))
            == list(map(pow, range(10), range(10))))
    assert list(executor.map(helpers.add, [1, 2, 3], [10, 20, 30, 40],
                             chunksize=chunksize)) == [11, 22, 33]


@pytest.mark.parametrize("chunksize", [1, 6, 40, 50, 5000])
def test_map_chunksize(executor, chunksize):
    """CPython: test_map_chunksize (test_process_pool.py)."""
    result = executor.map(helpers.square, range(1000), chunksize=chunksize, timeout=60)
    assert list(result) == [i * i for i in range(1000)]


# ThreadPoolExecutor ignores chunksize.
@pytest.mark.parametrize("executor", ["process", "zeropool"], indirect=True)
@pytest.mark.parametrize("chunksize", [0, -1])
def test_map_rejects_bad_chunksize(executor, chunksize):
    with pytest.raises(ValueError, match="chunksize must be >= 1"):
        executor.map(helpers.square, range(3), chunksize=chunksize)


def test_map_exception(executor):
    """CPython: test_map_exception: the results before the failing call come,
    then its exception."""
    results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_exception_at_its_position(executor, chunksize):
    """With chunks (ProcessPoolExecutor up to Python 3.14, zeropool) a chunk's
    results come together, so those of the failing call's chunk before it do
    not come; ThreadPoolExecutor ignores chunksize. (CPython's main branch
    yields them: this then fails for ProcessPoolExecutor, and zeropool
    should follow.)"""
    results = executor.map(helpers.raise_value_error_if, range(10), [5] * 10, chunksize=chunksize)
    before = []
    with pytest.raises(ValueError, match="5"):
        for result in results:
            before.append(result)
    chunked = chunksize > 1 and kind_of(executor) != "thread"
    assert before == ([0, 1, 2] if chunked else [0, 1, 2, 3, 4])


def test_map_timeout(executor, gate):
    """CPython: test_map_timeout: the calls done in time come, then
    TimeoutError, and the iterator has ended."""
    results = executor.map(helpers.wait_for_file_if, [None, None, gate], timeout=1)
    taken = []
    with pytest.raises(cf.TimeoutError):
        for result in results:
            taken.append(result)
    assert taken == [None, None]
    with pytest.raises(StopIteration):
        next(results)


# ProcessPoolExecutor may already have moved the calls into its call queue,
# where they count as running, so that cancelling them fails and they run.
@pytest.mark.parametrize("kind", ["thread", "zeropool"])
def test_map_timeout_cancels_the_calls_not_started(kind, tmp_path, gate):
    """CPython: test_executor_map_current_future_cancel (test_thread_pool.py):
    on its timeout, map() cancels the call it waited for and those after it."""
    ex = make(kind, workers=1)
    runs = tmp_path / "runs"
    runs.mkdir()
    try:
        started = str(tmp_path / "started")
        blocker = ex.submit(helpers.touch_then_wait, started, gate)
        wait_until(lambda: os.path.exists(started), 30, what="the blocker to start")
        results = ex.map(helpers.record_run, [str(runs)] * 2, [1, 2], timeout=0)
        with contextlib.closing(results):
            with pytest.raises(cf.TimeoutError):
                next(results)
        helpers.touch(gate)
        assert blocker.result(timeout=30)
    finally:
        helpers.touch(gate)
        ex.shutdown(wait=True)
    assert os.listdir(runs) == []


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_close(executor, chunksize):
    """CPython: test_map_close: a closed result iterator has ended."""
    results = executor.map(divmod, [5, 5, 5, 5], [2, 3, 4, 5], chunksize=chunksize)
    assert next(results) == (2, 1)
    results.close()
    with pytest.raises(StopIteration):
        next(results)
    with pytest.raises(StopIteration):
        next(results)


def test_map_is_lazy(executor, gate):
    results = executor.map(helpers.wait_for_file_if, [None, gate], timeout=30)
    assert next(results) is None  # the second item is still blocked
    helpers.touch(gate)
    assert isinstance(next(results), int)


def test_map_submits_without_iteration(kind, tmp_path):
    """CPython: test_map_submits_without_iteration (test_thread_pool.py) and
    test_shutdown_race_issue12456: map() submits every call at once, and a
    shutdown right after it waits for them all."""
    ex = make(kind)
    try:
        ex.map(helpers.record_run, [str(tmp_path)] * 10, range(10))
        ex.map(str, [2] * 3)  # more calls than workers, never read
    finally:
        ex.shutdown(wait=True)
    assert helpers.runs_per_value(str(tmp_path)) == {i: 1 for i in range(10)}


def test_map_frees_each_result(executor):
    """CPython: test_free_reference: the result iterator keeps no reference to
    a result it has yielded."""
    for obj in executor.map(helpers.make_dummy_object, range(10)):
        ref = weakref.ref(obj)
        del obj
        wait_until(lambda: freed(ref), 10, what="the yielded result to be freed")


# -- map(buffersize=) --------------------------------------------------------

@pytest.mark.parametrize("executor", BUFFERSIZE_KINDS, indirect=True)
def test_map_buffersize_validation(executor):
    """CPython: test_map_buffersize_type_validation, _value_validation."""
    for buffersize in ("foo", 2.0):
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            executor.map(str, range(4), buffersize=buffersize)
    for buffersize in (0, -1):
        with pytest.raises(ValueError, match=r"buffersize must be None or > 0"):
            executor.map(str, range(4), buffersize=buffersize)


@pytest.mark.parametrize("executor", BUFFERSIZE_KINDS, indirect=True)
def test_map_buffersize(executor):
    """CPython: test_map_buffersize, _on_multiple_iterables, _on_empty_iterable,
    _without_iterable; with chunksize too (test_process_pool.py's)."""
    ints = range(4)
    for buffersize in (1, 2, len(ints), len(ints) * 2):
        assert list(executor.map(str, ints, buffersize=buffersize)) == ["0", "1", "2", "3"]
        assert list(executor.map(helpers.add, ints, ints, buffersize=buffersize)) == [0, 2, 4, 6]
    for buffersize, chunksize in itertools.product((1, 2, 9, 10, 11), (1, 2, 9, 10, 11)):
        results = executor.map(pow, range(10), range(10), chunksize=chunksize,
                               buffersize=buffersize)
        assert list(results) == list(map(pow, range(10), range(10))), (buffersize, chunksize)
    assert next(executor.map(str, [], buffersize=2), None) is None
    assert next(executor.map(str, buffersize=2), None) is None


@pytest.mark.parametrize("executor", BUFFERSIZE_KINDS, indirect=True)
def test_map_buffersize_on_infinite_iterables(executor):
    """CPython: test_map_buffersize_on_infinite_iterable, _on_multiple_infinite_iterables."""
    results = executor.map(str, itertools.count(), buffersize=2)
    assert [next(results, None) for _ in range(3)] == ["0", "1", "2"]
    results = executor.map(helpers.add, itertools.count(), itertools.count(), buffersize=2)
    assert [next(results, None) for _ in range(3)] == [0, 2, 4]


@pytest.mark.parametrize("kind", BUFFERSIZE_KINDS)
def test_map_buffersize_when_buffer_is_full(kind):
    """CPython: test_map_buffersize_when_buffer_is_full: unread, map() takes
    only buffersize items."""
    ex = make(kind)
    ints = iter(range(4))
    try:
        ex.map(str, ints, buffersize=2)
    finally:
        ex.shutdown(wait=True)
    assert next(ints) == 2


@pytest.mark.parametrize("executor", BUFFERSIZE_KINDS, indirect=True)
def test_map_buffersize_submits_one_more_per_result_taken(executor):
    """At most buffersize calls are submitted ahead of the results read: one
    more each time one is read (3.14's Executor.map)."""
    items = Counting(range(10))
    results = executor.map(helpers.square, items, buffersize=3)
    assert items.taken == 3
    for taken in range(1, 8):
        assert next(results) == (taken - 1) ** 2
        assert items.taken == taken + 3
    assert list(results) == [49, 64, 81] and items.taken == 10


# ThreadPoolExecutor ignores chunksize, and so takes items one by one.
@pytest.mark.parametrize("executor", [k for k in BUFFERSIZE_KINDS if k != "thread"], indirect=True)
def test_map_buffersize_counts_chunks(executor):
    """With chunksize, buffersize counts chunks: buffersize × chunksize items are
    taken at first, and one more chunk as the first result of a chunk is read."""
    items = Counting(range(20))
    results = executor.map(helpers.square, items, chunksize=3, buffersize=2)
    assert items.taken == 6
    assert next(results) == 0
    assert items.taken == 9
    assert [next(results), next(results)] == [1, 4] and items.taken == 9
    assert next(results) == 9 and items.taken == 12
    assert list(results) == [i * i for i in range(4, 20)] and items.taken == 20


# -- shutdown ----------------------------------------------------------------

def test_shutdown_waits_for_pending_work(kind):
    """CPython: test_hang_issue12364."""
    ex = make(kind)
    futures = [ex.submit(helpers.sleep_and_return, 0.01, i) for i in range(50)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(50))


def test_shutdown_without_wait_still_completes_work(kind, gate):
    """CPython: test_shutdown_no_wait."""
    ex = make(kind)
    results = ex.map(abs, range(-5, 5))
    future = ex.submit(helpers.wait_for_file, gate)
    ex.shutdown(wait=False)
    assert not future.done()
    assert list(results) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
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


def test_cancel_futures(kind):
    """CPython: test_cancel_futures: with few workers, most of many queued
    calls are cancelled; those that started finish, at least one of them."""
    ex = make(kind)
    futures = [ex.submit(time.sleep, 0.1) for _ in range(50)]
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in futures if not f.cancelled()]
    for future in others:
        assert future.done() and future.exception() is None
    assert others


def test_submit_after_shutdown_raises(kind):
    """CPython: test_run_after_shutdown."""
    ex = make(kind)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(helpers.square, 2)


def test_shutdown_twice(kind):
    """Executor.shutdown: "It is safe to call this method several times"."""
    ex = make(kind)
    try:
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9
    finally:
        ex.shutdown()
    ex.shutdown()
    ex.shutdown(wait=False, cancel_futures=True)


def test_shutdown_after_a_cancelled_submit(kind):
    """CPython: test_hang_gh94440: shutdown(wait=True) returns when the last
    call submitted was cancelled at once."""
    ex = make(kind, workers=1)
    assert ex.submit(int).result(timeout=30) == 0
    ex.submit(int).cancel()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (ex.shutdown(wait=True), done.set()), daemon=True)
    thread.start()
    assert done.wait(30), "shutdown(wait=True) hangs"


def test_context_manager_shuts_down(kind):
    """CPython: test_context_manager_shutdown; __exit__ waits, and lets an
    exception through."""
    executor = make(kind)
    with pytest.raises(LookupError):
        with executor as ex:
            assert ex is executor
            assert list(ex.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
            future = ex.submit(helpers.sleep_and_return, 0.05, 25)
            raise LookupError
    assert future.done() and future.result() == 25
    with pytest.raises(RuntimeError):
        ex.submit(helpers.square, 2)


def test_dropped_executor_finishes_its_work(kind):
    """CPython: test_del_shutdown: an executor dropped without shutdown()
    still computes what it was given, then ends its workers."""
    ex = make(kind)
    results = ex.map(abs, range(-5, 5))
    del ex
    gc.collect()
    assert list(results) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]


INTERPRETER_EXIT = """\
import atexit, sys
KIND, MODE, PATH = sys.argv[1:]
if MODE == "submit-at-exit":
    @atexit.register
    def run_last():  # registered first, so it runs after the pools' own hooks
        try:
            t.submit(id, None)
        except RuntimeError as exc:
            print("runtime-error:", exc)
import concurrent.futures as cf
import zeropool
from tests import helpers
if __name__ == "__main__":
    make = {"thread": cf.ThreadPoolExecutor, "process": cf.ProcessPoolExecutor,
            "zeropool": zeropool.Executor}[KIND]
    t = make(2)
    if MODE == "submit-at-exit":
        t.submit(id, 42).result()
    else:
        t.submit(helpers.wait_then_print, PATH, "apple")
        if MODE == "shutdown-no-wait":
            t.shutdown(wait=False)
        elif MODE == "shutdown-no-wait-cancel":
            t.shutdown(wait=False, cancel_futures=True)
        helpers.touch(PATH)  # the call goes on as the interpreter exits
"""


@pytest.mark.parametrize("kind, mode", [
    *((kind, "exit") for kind in KINDS),
    # ProcessPoolExecutor hangs there (CPython skips it: gh-83386).
    ("thread", "shutdown-no-wait"), ("zeropool", "shutdown-no-wait"),
    ("thread", "shutdown-no-wait-cancel"), ("zeropool", "shutdown-no-wait-cancel"),
    *((kind, "submit-at-exit") for kind in KINDS),
])
def test_interpreter_exit(kind, mode, tmp_path):
    """CPython: test_interpreter_shutdown (at exit, the interpreter waits for a
    call still running), test_hang_gh83386 (also after shutdown(wait=False)),
    test_cancel_futures_wait_false (test_shutdown.py's, for threads: the call
    runs or was cancelled before it started), test_submit_after_interpreter_shutdown
    (an atexit hook cannot submit)."""
    run = subprocess.run([sys.executable, "-c", INTERPRETER_EXIT, kind, mode,
                          str(tmp_path / "exiting")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    if mode == "submit-at-exit":
        assert run.stdout.startswith("runtime-error: cannot schedule new futures"), run
        return
    assert run.stderr == ""
    if mode == "shutdown-no-wait-cancel":
        assert run.stdout.strip() in ("apple", "")
    else:
        assert run.stdout.strip() == "apple"


# -- terminate_workers(), kill_workers() ---------------------------------------

@pytest.mark.parametrize("kind", FORCE_KINDS)
@pytest.mark.parametrize("operation", FORCE_OPERATIONS)
def test_force_shutdown_workers(kind, operation, tmp_path, gate):
    """CPython: test_force_shutdown_workers, _stops_pool (test_process_pool.py):
    the running call's worker ends before the call does, its future fails
    with a BrokenExecutor, the calls not started are cancelled, and the
    executor takes no more."""
    ex = make(kind, workers=1)
    try:
        started, finished = str(tmp_path / "started"), str(tmp_path / "finished")
        assert ex.submit(time.sleep, 0).result(timeout=30) is None
        running = ex.submit(helpers.touch_wait_mark, started, gate, finished)
        queued = [ex.submit(helpers.touch, str(tmp_path / f"ran-{i}")) for i in range(3)]
        wait_until(lambda: os.path.exists(started) and os.path.getsize(started), 30,
                   what="the call to start")
        with open(started) as f:
            pid = int(f.read())
        getattr(ex, operation)()
        with pytest.raises(cf.BrokenExecutor) as info:
            running.result(timeout=30)
        if kind == "zeropool":
            assert isinstance(info.value, zeropool.ExecutorTerminated)
            assert all(f.cancelled() for f in queued)
        else:  # what its call queue held counts as running, and breaks too
            for future in queued:
                assert future.cancelled() or isinstance(future.exception(30), cf.BrokenExecutor)
        with pytest.raises(RuntimeError):
            ex.submit(time.sleep, 0)
        wait_until(lambda: not alive(pid), 10, what="the worker to end")
        helpers.touch(gate)
        assert not os.path.exists(finished)
        assert not any(os.path.exists(str(tmp_path / f"ran-{i}")) for i in range(3))
    finally:
        helpers.touch(gate)
        ex.shutdown(wait=True)


@pytest.mark.parametrize("kind", FORCE_KINDS)
@pytest.mark.parametrize("operation", FORCE_OPERATIONS)
def test_force_shutdown_workers_dead_workers(kind, operation):
    """CPython: test_force_shutdown_workers_dead_workers: on a pool whose
    worker died, it does not raise."""
    ex = make(kind, workers=1)
    try:
        pid = ex.submit(helpers.getpid).result(timeout=30)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid), 10, what="the worker to die")
        getattr(ex, operation)()
        with pytest.raises(RuntimeError):
            ex.submit(helpers.square, 2)
    finally:
        ex.shutdown(wait=True)


@pytest.mark.parametrize("kind", FORCE_KINDS)
@pytest.mark.parametrize("operation", FORCE_OPERATIONS)
def test_force_shutdown_workers_twice_idle_and_after_shutdown(kind, operation):
    """CPython: test_force_shutdown_workers_not_started_yet: before any call
    it does not raise; nor twice, nor after shutdown()."""
    ex = make(kind, workers=1)
    try:
        getattr(ex, operation)()
        getattr(ex, operation)()
    finally:
        ex.shutdown(wait=True)
    getattr(ex, operation)()
    with pytest.raises(RuntimeError):
        ex.submit(helpers.square, 2)


# -- a worker that dies ------------------------------------------------------

@pytest.mark.parametrize("kind", ["process", "zeropool"])
def test_killed_worker(kind, tmp_path, gate):
    """CPython: test_killed_child (test_process_pool.py). ProcessPoolExecutor
    breaks: the call fails and so does every submit after. zeropool differs
    on purpose: a dead worker's calls run again on a worker that replaces it,
    and the executor goes on."""
    ex = make(kind, workers=1)
    try:
        started = str(tmp_path / "started")
        future = ex.submit(helpers.touch_then_wait, started, gate)
        wait_until(lambda: os.path.exists(started) and os.path.getsize(started), 30,
                   what="the call to start")
        with open(started) as f:
            pid = int(f.read())
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid), 10, what="the worker to die")
        helpers.touch(gate)
        if kind == "process":
            with pytest.raises(BrokenProcessPool):
                future.result(timeout=30)
            with pytest.raises(BrokenProcessPool):
                ex.submit(pow, 2, 8)
        else:
            assert future.result(timeout=10) != pid
            assert ex.submit(pow, 2, 8).result(timeout=10) == 256
    finally:
        helpers.touch(gate)
        ex.shutdown(wait=True)


# -- result(), cancel(), running() ---------------------------------------------

def test_result_and_exception_timeout(executor, gate):
    future = executor.submit(helpers.wait_for_file, gate)
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0.05)
    with pytest.raises(cf.TimeoutError):
        future.exception(timeout=0.05)
    helpers.touch(gate)
    assert future.exception(timeout=30) is None


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


# -- wait() --------------------------------------------------------------------

def test_wait_duplicates(executor):
    """CPython: test_20369: a future given twice is returned once."""
    future = executor.submit(helpers.square, 3)
    done, not_done = cf.wait([future, future], timeout=30, return_when=cf.ALL_COMPLETED)
    assert done == {future} and not_done == set()


def test_wait_first_completed(executor, gate):
    """CPython: test_first_completed: a cancelled future not yet notified is
    not done."""
    made = premade()
    fast = executor.submit(helpers.square, 3)
    slow = executor.submit(helpers.wait_for_file, gate)
    done, not_done = cf.wait([made.cancelled, fast, slow], timeout=30,
                             return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and not_done == {made.cancelled, slow}


def test_wait_first_completed_some_already_completed(executor, gate):
    """CPython: test_first_completed_some_already_completed."""
    made = premade()
    slow = executor.submit(helpers.wait_for_file, gate)
    done, not_done = cf.wait([made.cancelled_and_notified, made.successful, slow],
                             timeout=30, return_when=cf.FIRST_COMPLETED)
    assert done == {made.cancelled_and_notified, made.successful} and not_done == {slow}


def test_wait_first_exception(executor, tmp_path, gate):
    """CPython: test_first_exception: it returns at the first exception, with
    what completed before it."""
    fails = str(tmp_path / "fail now")
    fine = executor.submit(helpers.square, 2)
    bad = executor.submit(helpers.raise_when_file, fails, "x")
    slow = executor.submit(helpers.wait_for_file, gate)
    assert fine.result(timeout=30) == 4
    helpers.touch(fails)
    done, not_done = cf.wait([fine, bad, slow], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert done == {fine, bad} and not_done == {slow}


def test_wait_first_exception_some_already_complete(executor, gate):
    """CPython: test_first_exception_some_already_complete."""
    made = premade()
    bad = executor.submit(divmod, 21, 0)
    slow = executor.submit(helpers.wait_for_file, gate)
    done, not_done = cf.wait([made.successful, made.cancelled, made.cancelled_and_notified,
                              bad, slow], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert done == {made.successful, made.cancelled_and_notified, bad}
    assert not_done == {made.cancelled, slow}


def test_wait_first_exception_one_already_failed(executor, gate):
    """CPython: test_first_exception_one_already_failed."""
    made = premade()
    slow = executor.submit(helpers.wait_for_file, gate)
    done, not_done = cf.wait([made.exception, slow], timeout=30,
                             return_when=cf.FIRST_EXCEPTION)
    assert done == {made.exception} and not_done == {slow}


def test_wait_all_completed(executor):
    """CPython: test_all_completed."""
    made = premade()
    futures = [executor.submit(helpers.square, i) for i in range(20)]
    futures += [executor.submit(divmod, 2, 0), executor.submit(helpers.add, 2, 40),
                made.successful, made.cancelled_and_notified, made.exception]
    done, not_done = cf.wait(futures, timeout=30, return_when=cf.ALL_COMPLETED)
    assert done == set(futures) and not not_done


@pytest.mark.parametrize("timeout", [0, 0.05])
def test_wait_timeout(executor, gate, timeout):
    """CPython: test_timeout: on timeout, what is done and what is not."""
    made = premade()
    slow = executor.submit(helpers.wait_for_file, gate)
    done, not_done = cf.wait([made.cancelled_and_notified, made.exception, made.successful, slow],
                             timeout=timeout, return_when=cf.ALL_COMPLETED)
    assert done == {made.cancelled_and_notified, made.exception, made.successful}
    assert not_done == {slow}


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


# -- as_completed() ------------------------------------------------------------

def test_as_completed_no_timeout(executor):
    """CPython: test_no_timeout."""
    made = premade()
    futures = [made.cancelled_and_notified, made.exception, made.successful,
               executor.submit(helpers.add, 2, 40), executor.submit(pow, 7, 2)]
    assert set(cf.as_completed(futures)) == set(futures)


def test_as_completed_zero_timeout(executor, gate):
    """CPython: test_zero_timeout, test_correct_timeout_exception_msg: what is
    done comes, then TimeoutError saying how many are not."""
    made = premade()
    slow = [executor.submit(helpers.wait_for_file, gate) for _ in range(2)]
    yielded = set()
    with pytest.raises(cf.TimeoutError) as info:
        for future in cf.as_completed([made.cancelled_and_notified, made.exception,
                                       made.successful, *slow], timeout=0):
            yielded.add(future)
    assert yielded == {made.cancelled_and_notified, made.exception, made.successful}
    assert str(info.value) == "2 (of 5) futures unfinished"


def test_as_completed_with_timeout(executor, gate):
    fast = executor.submit(helpers.square, 2)
    slow = executor.submit(helpers.wait_for_file, gate)
    seen = []
    with pytest.raises(cf.TimeoutError, match=r"1 \(of 2\) futures unfinished"):
        for future in cf.as_completed([slow, fast], timeout=1):
            seen.append(future)
    assert seen == [fast]


def test_as_completed_yields_duplicates_once(executor):
    """CPython: test_duplicate_futures, from any iterable."""
    a = executor.submit(helpers.square, 2)
    b = executor.submit(helpers.square, 3)
    done = list(cf.as_completed([a, a, b, b, a], timeout=30))
    assert sorted(f.result() for f in done) == [4, 9]
    assert list(cf.as_completed(itertools.repeat(a, 3), timeout=30)) == [a]


def test_as_completed_frees_each_future(executor):
    """CPython: test_free_reference_yielded_future: neither as_completed() nor
    the executor keeps a future once it is done and yielded."""
    futures = [executor.submit(helpers.square, i) for i in range(10)]
    for future in cf.as_completed(futures, timeout=30):
        futures.remove(future)
        ref = weakref.ref(future)
        del future
        wait_until(lambda: freed(ref), 10, what="the yielded future to be freed")


def test_as_completed_many(executor):
    futures = {executor.submit(helpers.square, i): i for i in range(200)}
    for future in cf.as_completed(futures, timeout=60):
        assert future.result() == futures[future] ** 2


# -- initializer ---------------------------------------------------------------

def test_initializer_runs_before_tasks(kind):
    """CPython: test_init.py's InitializerMixin."""
    ex = make(kind, initializer=helpers.set_state, initargs=("ready",))
    try:
        assert set(ex.map(helpers.get_state, range(20))) == {"ready"}
    finally:
        ex.shutdown()


def test_failing_initializer_breaks_the_executor(kind):
    """CPython: test_init.py's FailingInitializerMixin (not its check of the
    log, which each pool writes where its workers are)."""
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


def test_initializer_must_be_callable(kind):
    with pytest.raises(TypeError, match="initializer must be a callable"):
        make(kind, initializer=42)


# -- the constructor -----------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -1])
def test_invalid_max_workers(kind, bad):
    """CPython: test_max_workers_negative."""
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        make(kind, workers=bad)


def test_max_workers(kind):
    """Both stdlib pools set _max_workers, and libraries read it to size
    their work: zeropool's embedded cluster says how many workers it started."""
    ex = make(kind, workers=3)
    try:
        assert ex._max_workers == 3
    finally:
        ex.shutdown()


def test_default_max_workers(kind):
    """CPython: test_default_workers (test_thread_pool.py). zeropool's embedded
    cluster starts a worker per CPU, os.cpu_count() (ProcessPoolExecutor
    counts, from 3.13 on, only the CPUs this process may run on)."""
    cpus = getattr(os, "process_cpu_count", os.cpu_count)() or 1  # 3.13's, where there
    expected = {"thread": min(32, cpus + 4), "process": cpus, "zeropool": os.cpu_count()}
    ex = make(kind, workers=None)
    try:
        assert ex._max_workers == expected[kind]
    finally:
        ex.shutdown()


def test_signature_begins_as_process_pool_executors():
    """zeropool's Executor takes ProcessPoolExecutor's parameters, in the same
    order, of the same kinds and with the same defaults, then its own."""
    theirs = list(inspect.signature(cf.ProcessPoolExecutor).parameters.values())
    ours = inspect.signature(zeropool.Executor).parameters
    positional = [p for p in theirs if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert list(ours)[:len(positional)] == [p.name for p in positional]
    for parameter in theirs:
        assert parameter.name in ours
        assert ours[parameter.name].kind is parameter.kind, parameter.name
        assert ours[parameter.name].default == parameter.default, parameter.name


@pytest.mark.parametrize("kind", ["process", "zeropool"])
def test_process_pool_arguments_positionally_and_by_keyword(kind):
    """ProcessPoolExecutor(max_workers=None, mp_context=None, initializer=None,
    initargs=(), *, max_tasks_per_child=None), given either way."""
    by_keyword = {"max_tasks_per_child": None} if kind in MAX_TASKS_KINDS else {}
    executor_type = TYPES[kind]
    ways = {
        "positional": lambda: executor_type(1, multiprocessing.get_context(),
                                            helpers.set_state, ("positional",)),
        "keyword": lambda: executor_type(max_workers=1, mp_context=None,
                                         initializer=helpers.set_state, initargs=("keyword",),
                                         **by_keyword),
    }
    for way, create in ways.items():
        ex = create()
        try:
            assert ex.submit(helpers.get_state).result(timeout=30) == way
        finally:
            ex.shutdown()


def test_mp_context_is_accepted_and_ignored():
    """zeropool's workers are separate processes that start on their own,
    never children of this one: any multiprocessing context does, and only a
    context (or None) is accepted."""
    ex = make("zeropool", workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9
    finally:
        ex.shutdown()
    for bad in ("spawn", 42):
        with pytest.raises(TypeError, match="mp_context"):
            make("zeropool", workers=1, mp_context=bad)


@pytest.mark.parametrize("kind", MAX_TASKS_KINDS)
@pytest.mark.parametrize("bad, error, message", [
    ("3", TypeError, "max_tasks_per_child must be an integer"),
    (0, ValueError, "max_tasks_per_child must be >= 1"),
    (-1, ValueError, "max_tasks_per_child must be >= 1"),
])
def test_max_tasks_per_child_validation(kind, bad, error, message):
    """ProcessPoolExecutor's checks of max_tasks_per_child (3.11+), made first."""
    with pytest.raises(error, match=message):
        make(kind, workers=1, max_tasks_per_child=bad)


@pytest.mark.parametrize("kind", MAX_TASKS_KINDS)
@pytest.mark.parametrize("workers", [1, 2])
def test_max_tasks_per_child_replaces_worker_processes(kind, workers):
    """As test_process_pool.py's test_max_tasks_per_child: each worker process
    runs at most that many calls, then a fresh one takes its place. One call
    at a time, as CPython's test does: ProcessPoolExecutor (3.11, 3.13.0 here)
    can hang when calls are queued while a worker exits for this limit.
    (tests/test_recycling.py sends zeropool's in a burst.)"""
    ex = make(kind, workers=workers, max_tasks_per_child=2)
    try:
        pids = [ex.submit(helpers.getpid).result(timeout=60) for _ in range(10)]
    finally:
        ex.shutdown()
        if kind == "process":
            # With this limit it spawns its workers, which starts the resource
            # tracker: a process of this one's, which no test may leave.
            from multiprocessing import resource_tracker
            resource_tracker._resource_tracker._stop()
    assert len(pids) == 10 and all(isinstance(pid, int) for pid in pids)
    assert os.getpid() not in pids
    assert len(set(pids)) >= 5, pids


def test_max_tasks_per_child_with_an_address_is_refused():
    """zeropool: the workers of a broker given by address are not this
    executor's to start, so it says where the setting belongs instead."""
    with pytest.raises(ValueError, match="worker --max-tasks-per-child 3"):
        make("zeropool", workers=1, max_tasks_per_child=3, address="tcp://127.0.0.1:9")


# -- what cannot be pickled ------------------------------------------------------

@pytest.mark.parametrize("given", ["positional", "keyword"])
def test_argument_that_only_a_child_can_inherit(kind, given):
    """A multiprocessing.Lock() as an argument. A thread shares it. The stdlib
    process pool fails the call's future when its feeder thread cannot pickle
    it (or, on some versions, raises at submit). zeropool raises
    PicklingError at submit, naming the argument and saying why (its workers
    are separate processes, never children that could inherit it); nothing
    is sent, and the executor goes on."""
    lock = multiprocessing.Lock()
    args, kwargs = ((lock,), {}) if given == "positional" else ((), {"obj": lock})
    name = "argument 1" if given == "positional" else "keyword argument 'obj'"
    ex = make(kind, workers=1)
    try:
        if kind == "thread":
            assert ex.submit(helpers.type_name, *args, **kwargs).result(timeout=30) == "Lock"
        elif kind == "process":
            try:
                future = ex.submit(helpers.type_name, *args, **kwargs)
            except RuntimeError as exc:
                assert "inheritance" in str(exc)
            else:
                with pytest.raises(RuntimeError, match="inheritance"):
                    future.result(timeout=30)
        else:
            with pytest.raises(pickle.PicklingError) as info:
                ex.submit(helpers.type_name, *args, **kwargs)
            message = str(info.value)
            assert name in message and "separate processes" in message, message
            assert "inherit" in message, message
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9
    finally:
        ex.shutdown()


def test_initargs_that_only_a_child_can_inherit(kind):
    """A multiprocessing.Lock() in initargs. The stdlib pools hand initargs
    to their workers as they create them, so a thread shares it and a child
    process inherits it. zeropool's constructor raises PicklingError naming
    it, before it starts anything."""
    initargs = (multiprocessing.Lock(),)
    if kind == "zeropool":
        with pytest.raises(pickle.PicklingError) as info:
            make(kind, workers=1, initializer=helpers.set_state, initargs=initargs)
        message = str(info.value)
        assert "initargs[0]" in message and "separate processes" in message, message
        return
    ex = make(kind, workers=1, initializer=helpers.set_state, initargs=initargs)
    try:
        assert ex.submit(helpers.state_type_name).result(timeout=30) == "Lock"
    finally:
        ex.shutdown()


# -- zeropool's own ------------------------------------------------------------

def test_zeropool_futures_use_the_lean_condition_here():
    # TaskFuture sets Future's and Condition's private attributes itself when
    # they are the ones it knows; on this interpreter that path must be the one
    # the contract tests above exercise.
    from zeropool.client import futures
    assert futures._LEAN_FUTURES
    future = futures.TaskFuture(None, 1, b"")
    assert type(future._condition) is futures._Condition
    assert set(vars(future)) >= set(vars(cf.Future()))


def test_the_lean_condition_waits_notifies_and_reenters():
    from zeropool.client.futures import _Condition
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
