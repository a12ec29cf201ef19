"""``Executor``: a ``concurrent.futures.Executor`` backed by a zeropool broker."""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import queue
import signal
import threading
import time
import weakref
from concurrent.futures import Executor as _BaseExecutor
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from typing import Any, Callable, Iterable, Iterator

from zeropool.client.cluster import LocalCluster
from zeropool.client.errors import ExecutorTerminated
from zeropool.client.session import Session, TaskFuture, unsendable
from zeropool.protocol import TaskOptions, context, defaults
from zeropool.protocol.payload import dumps, run_chunk
from zeropool.protocol.security import Security

log = logging.getLogger("zeropool.client")

ENV_ADDRESS = "ZEROPOOL_ADDRESS"
TASK_OUTPUT = ("plain", "prefix", None)
DEFAULT_OPTIONS = TaskOptions.make()

__all__ = ["Executor", "ExecutorView", "current_executor"]

_UNSET: Any = object()


class _Submitting(_BaseExecutor):
    """``map`` and ``map_unordered`` over ``submit``: shared by the executor and its views."""

    _session: Session

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator:
        """Like ``ProcessPoolExecutor.map``: results in order, lazily; with
        ``chunksize`` > 1 items travel and run in chunks of that size; with
        ``buffersize``, at most that many calls (or chunks) are submitted ahead
        of the results taken, so ``iterables`` may be endless (Python 3.14's)."""
        end_time = None if timeout is None else timeout + time.monotonic()
        fs, rest, chunked = _start_map(self, fn, iterables, chunksize, buffersize)
        if rest is None:
            fs = list(fs)
        else:
            fs = collections.deque(fs)
        return _results(fs, rest, end_time, chunked, self._session)

    def map_unordered(self, fn: Callable, *iterables: Iterable, chunksize: int = 1,
                      buffersize: int | None = None) -> Iterator:
        """As ``map``, but each result as soon as it is ready, in the order
        they complete; a call that raised raises here, when its turn comes
        (and the calls not yet done are cancelled, as with ``map``)."""
        done: queue.SimpleQueue = queue.SimpleQueue()
        fs, rest, chunked = _start_map(self, fn, iterables, chunksize, buffersize, done.put)
        return _unordered(set(fs), rest, done, chunked, self._session)

    def options(self, *, priority: int = _UNSET, resources: dict | None = _UNSET,
                timeout: float | None = _UNSET, retries: int | None = _UNSET) -> ExecutorView:
        """A view of this executor whose tasks have these options; it is an
        Executor itself (submit, map, map_unordered; its shutdown() leaves
        this executor running) and shares this executor's connection.

        ``priority`` (an int, default 0): the broker never starts a task
        while one of higher priority that the same worker could run waits;
        FIFO among equals, and clients take turns. ``resources`` (a dict of
        names to amounts, e.g. ``{"gpu": 1}``): the task runs only on a worker
        that offers them (``worker --resources gpu=2``), while they are free
        there. ``timeout`` (seconds): a task still running after that long
        is stopped (its worker process is replaced) and its future raises
        ``TaskTimeoutError``. ``retries`` (an int): how many times a task is
        run again after its worker died while running it (default: the
        broker's ``--max-retries``, 2 more runs); 0 never runs it again.
        Options not given keep this executor's (or view's) own.
        """
        base = getattr(self, "_options", DEFAULT_OPTIONS)
        options = TaskOptions.make(
            base.priority if priority is _UNSET else priority,
            dict(base.resources) if resources is _UNSET else resources,
            base.timeout if timeout is _UNSET else timeout,
            base.retries if retries is _UNSET else retries)
        return ExecutorView(getattr(self, "_executor", self), options)


class Executor(_Submitting):
    """Runs calls on zeropool workers; a drop-in for ``ProcessPoolExecutor``.

    With no ``address`` (and no ``$ZEROPOOL_ADDRESS``) it starts an embedded
    local cluster: a broker and ``max_workers`` worker processes (default
    ``os.cpu_count()``) on loopback, stopped on shutdown, at interpreter exit,
    or when this process dies.

    With ``address`` (a running broker; also accepted as the first argument,
    or taken from ``$ZEROPOOL_ADDRESS``) it uses every worker attached to that
    broker; ``max_workers`` then caps how many of this executor's tasks may be
    queued or running at the broker at once (default: no cap).

    ``mp_context`` is accepted for ``ProcessPoolExecutor``'s signature and
    ignored: workers are separate processes that start on their own, never
    forked from this one, so every call behaves as under the "spawn" context.

    ``max_tasks_per_child``: as ``ProcessPoolExecutor``'s, each of the
    embedded cluster's worker processes runs that many tasks, then leaves
    and is replaced by a fresh one (``worker --max-tasks-per-child``).
    Workers attached to a broker given by ``address`` are not this
    executor's to configure: it then raises ValueError; start those
    workers with ``worker --max-tasks-per-child N`` instead.

    ``security``: for a broker with CURVE on, a ``Security`` holding the
    broker's public key and this client's key pair, e.g.
    ``Security.from_files("keys/broker.key", "keys/client.key_secret")``;
    by default taken from ``$ZEROPOOL_CURVE_SERVER_KEY`` and
    ``$ZEROPOOL_CURVE_KEY`` when they are set.

    ``task_output``: what tasks print on the workers is printed here, on
    this process's stdout and stderr, before their futures complete:
    ``"plain"`` as printed, ``"prefix"`` with ``[host:pid]`` of the worker
    before each line, ``None`` not at all.

    ``initializer(*initargs)`` runs once in each worker process before that
    worker runs this executor's first task; if it raises, the executor breaks
    (``InitializerError``, a ``BrokenExecutor``), as the stdlib pools do.
    """

    def __init__(self, max_workers: int | str | None = None,
                 mp_context: BaseContext | None = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple = (), *,
                 max_tasks_per_child: int | None = None,
                 address: str | None = None,
                 connect_timeout: float = defaults.CONNECT_TIMEOUT,
                 security: Security | None = None,
                 task_output: str | None = "plain",
                 _nested: bool = False) -> None:
        if isinstance(max_workers, str) and address is None:
            address, max_workers = max_workers, None
        if address is None:
            address = os.environ.get(ENV_ADDRESS) or None
        if security is not None and not isinstance(security, Security):
            raise TypeError(f"security must be a zeropool.Security, not {type(security).__name__}")
        if address is None and security is not None:
            raise ValueError("security applies to a broker given by address; the embedded "
                             "cluster listens on loopback only and needs none")
        if max_workers is not None:
            if not isinstance(max_workers, int) or isinstance(max_workers, bool):
                raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if mp_context is not None and not isinstance(mp_context, BaseContext):
            raise TypeError("mp_context must be None or a multiprocessing context, not "
                            f"{type(mp_context).__name__}")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):  # the stdlib's checks, first
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            if address is not None:
                raise ValueError(
                    "max_tasks_per_child applies to the embedded cluster (no address); the "
                    f"workers of the broker at {address} are started on their own: give "
                    f"them `worker --max-tasks-per-child {max_tasks_per_child}` instead")
        if task_output not in TASK_OUTPUT:
            raise ValueError(f"task_output must be one of {TASK_OUTPUT}, not {task_output!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        init_frames = _initializer_frames(initializer, tuple(initargs))
        self._cluster: LocalCluster | None = None
        if address is None:
            self._cluster = LocalCluster(max_workers or os.cpu_count() or 1,
                                         max_tasks_per_child=max_tasks_per_child)
            address, cap = self._cluster.address, None
        else:
            cap = max_workers
            if security is None:
                security = Security.from_environment()
        self._cap = cap
        try:
            self._session = Session(address, init_frames=init_frames, max_in_flight=cap,
                                    connect_timeout=connect_timeout, security=security,
                                    task_output=task_output,
                                    on_close=self._cluster.close if self._cluster else None,
                                    nested=_nested)
        except BaseException:
            if self._cluster is not None:
                self._cluster.close()
            raise
        # Its workers attached (they start in parallel, in about the time the
        # first task would wait for them anyway), so that the pool is whole
        # from the start, as a process pool's is.
        if self._cluster is not None and not self._session.broker.wait_for_workers(
                self._cluster.workers, connect_timeout):
            log.warning("the embedded cluster's %d worker processes have not all attached "
                        "within %gs; going on with %d", self._cluster.workers, connect_timeout,
                        self._session.broker.workers)
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        # Dropped without shutdown(): finish the pending work, then disconnect.
        weakref.finalize(self, self._session.close, False)

    @property
    def address(self) -> str:
        """The broker's address (the embedded one's, if this executor started it)."""
        return self._session.address

    @property
    def _max_workers(self) -> int:
        """How many calls run at once, as the stdlib pools set it (libraries read it
        to size their work): the embedded cluster's workers; with an address, the
        ``max_workers`` cap, or else the number of workers the broker last reported."""
        if self._cluster is not None:
            return self._cluster.workers
        if self._cap is not None:
            return self._cap
        return max(1, self._session.broker.workers)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        return self._submit(fn, args, kwargs, None)

    submit.__doc__ = _BaseExecutor.submit.__doc__

    def _submit(self, fn: Callable, args: tuple, kwargs: dict,
                options: TaskOptions | None) -> Future:
        if self._session.nested:
            # A task that waited without its slot takes it back first, holding
            # no lock: the task whose slot it waits for may be submitting too.
            context.settle()
        with self._shutdown_lock:
            if self._session.broken is not None:
                raise self._session.broken
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            return self._session.submit(fn, args, kwargs, options)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            # As the stdlib's: calls a worker has taken (running, or waiting
            # there as in ProcessPoolExecutor's call queue) still run.
            self._session.cancel(self._session.pending_futures(), queued_only=True)
        self._session.close(wait=wait)

    shutdown.__doc__ = _BaseExecutor.shutdown.__doc__

    def terminate_workers(self) -> None:
        """Stop at once, as Python 3.14's ``ProcessPoolExecutor.terminate_workers``:
        cancel every call not started, fail those running with
        ``ExecutorTerminated``, refuse new ones, and end the embedded cluster's
        worker processes with SIGTERM. Against a shared broker (``address``) no
        process is signalled, as other clients' tasks run there too: this
        executor's running calls go on to their end on their workers, and their
        results are dropped."""
        self._force_shutdown(signal.SIGTERM)

    def kill_workers(self) -> None:
        """As ``terminate_workers()``, with SIGKILL for the embedded cluster's workers."""
        self._force_shutdown(signal.SIGKILL)

    def _force_shutdown(self, signum: int) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        session = self._session
        session.cancel(session.pending_futures())  # also what workers hold unstarted
        how = "terminate_workers()" if signum == signal.SIGTERM else "kill_workers()"
        session.abandon(ExecutorTerminated(
            f"the executor was stopped by {how} while this task ran; its result will not "
            "come. Create a new Executor to run it again."))
        if self._cluster is not None:
            self._cluster.signal_workers(signum)
        session.close(wait=False)


class ExecutorView(_Submitting):
    """An executor's tasks with options (``Executor.options()``): a
    ``concurrent.futures.Executor`` sharing that executor's connection. Its
    ``shutdown()`` refuses further calls through the view and waits for those
    it submitted; the executor itself goes on."""

    def __init__(self, executor: Executor, options: TaskOptions) -> None:
        self._executor = executor
        self._options = options
        self._sent_options = None if options.default else options
        self._session = executor._session
        self._shutdown = False
        self._futures: weakref.WeakSet = weakref.WeakSet()
        self._futures_lock = threading.Lock()  # submitting threads add while shutdown reads

    def __repr__(self) -> str:
        return f"<ExecutorView of {self._executor!r} with {self._options}>"

    @property
    def address(self) -> str:
        return self._executor.address

    @property
    def _max_workers(self) -> int:
        return self._executor._max_workers

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future = self._executor._submit(fn, args, kwargs, self._sent_options)
        with self._futures_lock:
            self._futures.add(future)
        return future

    submit.__doc__ = _BaseExecutor.submit.__doc__

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse further calls through this view (the executor takes them
        still); with ``wait``, return once the view's calls are done."""
        self._shutdown = True
        with self._futures_lock:
            pending = [future for future in self._futures if not future.done()]
        if cancel_futures:
            self._session.cancel(pending, queued_only=True)
        if wait and pending:
            concurrent.futures.wait(pending)


_nested_lock = threading.Lock()
_nested_executors: dict[str, Executor] = {}


def current_executor() -> ExecutorView:
    """Inside a task: an executor on the broker that runs it, with the
    worker's credentials, whose futures give the task's slot back while it
    waits on them (so that tasks waiting on tasks they submitted never
    deadlock the pool). Its ``shutdown()`` leaves it running for other tasks.

    Raises RuntimeError outside a task.
    """
    task = context.current()
    if task is None:
        raise RuntimeError(
            "zeropool.current_executor() is for code that runs as a task on a zeropool "
            "worker, and this thread runs none; elsewhere, create an Executor (or pass the "
            "one you have to the code that needs it)")
    with _nested_lock:
        executor = _nested_executors.get(task.address)
        if executor is None or executor._session.broken is not None:
            executor = _nested_executors[task.address] = Executor(
                task.address, security=task.security, _nested=True)
    return executor.options()


def _start_map(executor: _Submitting, fn: Callable, iterables: tuple, chunksize: int,
               buffersize: int | None, on_done: Callable | None = None) -> tuple:
    """map()'s first calls: (futures, what submits the rest or None, chunked)."""
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    chunked = chunksize > 1
    items: Iterator = zip(*iterables)
    if chunked:
        zipped = items
        items = iter(lambda: tuple(itertools.islice(zipped, chunksize)), ())

    def submit_next(ex: _Submitting, args: tuple) -> Future:
        future = ex.submit(run_chunk, fn, args) if chunked else ex.submit(fn, *args)
        if on_done is not None:
            future.add_done_callback(on_done)
        return future

    if buffersize is None:
        return [submit_next(executor, args) for args in items], None, chunked
    fs = [submit_next(executor, args) for args in itertools.islice(items, buffersize)]
    # The results may outlive the executor; it then submits no more.
    return fs, (items, weakref.ref(executor), submit_next), chunked


def _submit_more(rest: tuple) -> Future | None:
    """With buffersize: one call more, if the executor and the items last."""
    items, executor, submit_next = rest
    if (ex := executor()) is not None and (args := next(items, None)) is not None:
        return submit_next(ex, args)
    return None


def _unordered(pending: set, rest: tuple | None, done: queue.SimpleQueue, chunked: bool,
               session: Session) -> Iterator:
    """map_unordered()'s results, as their calls complete."""
    try:
        while pending:
            if done.empty():
                context.wait_begins()  # inside a task, its slot is free while it waits
                try:
                    future = done.get()
                finally:
                    context.wait_ends()
            else:
                future = done.get()
            pending.discard(future)
            if rest is not None and (more := _submit_more(rest)) is not None:
                pending.add(more)
            value = future.result()
            del future
            if chunked:
                yield from value
            else:
                yield value
            del value
    finally:
        session.cancel([f for f in pending if isinstance(f, TaskFuture)])


def _results(fs: Any, rest: tuple | None, end_time: float | None, chunked: bool,
             session: Session) -> Iterator:
    """map()'s results in order: a generator of its own, so that map() submits
    at once, as the stdlib's does; it holds no result it has yielded."""
    try:
        fs.reverse()  # the oldest last, to pop
        while fs:
            if rest is not None and (more := _submit_more(rest)) is not None:
                fs.appendleft(more)  # buffersize: one more in for each one out
                del more
            timeout = None if end_time is None else end_time - time.monotonic()
            if chunked:
                chunk = _take(fs, timeout)
                chunk.reverse()
                while chunk:
                    yield chunk.pop()
            else:
                yield _take(fs, timeout)
    finally:
        # One request for all of them, not a round trip each.
        session.cancel([f for f in fs if isinstance(f, TaskFuture)])


def _take(fs: Any, timeout: float | None) -> Any:
    """The oldest future's result; the future stays in ``fs`` if it has none yet
    (for the caller to cancel), and no frame keeps the result once returned."""
    future = fs.pop()
    try:
        return future.result(timeout)
    except BaseException:
        fs.append(future)
        raise


def _initializer_frames(initializer: Callable | None, initargs: tuple) -> list:
    if initializer is None:
        return []
    try:
        return dumps((initializer, initargs))
    except Exception as exc:
        raise unsendable(exc, [("the initializer", initializer)]
                         + [(f"initargs[{i}]", arg) for i, arg in enumerate(initargs)]) from exc
