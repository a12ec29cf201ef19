"""The client's I/O thread and task table.

    submit()  --pickle in caller's thread-->  outbox --Waker-->  I/O thread --SUBMIT--> broker
    Future    <--set_result / set_exception--  I/O thread  <--RESULTS-- broker
    cancel()  --request--> outbox ... I/O thread --CANCEL--> broker --CANCEL_REPLY--> verdict

One thread owns the DEALER socket. Callers pickle their call themselves (so a
pickling error raises from ``submit``), record it in the task table and wake
the I/O thread, which sends everything queued since its last pass as one
SUBMIT; only a task submitted with nothing else in flight is sent by its
caller, while the I/O thread sleeps (protocol.sockets.SocketTurn). Each
task's serialized call stays in the table until its result arrives, so a
reconnect can resubmit it (the broker drops ids it already has).

The broker decides cancellation: ``cancel()`` asks it and returns True only if
no worker has been given the task, so a cancelled task never runs.
"""
from __future__ import annotations

import atexit
import collections
import itertools
import logging
import os
import pickle
import select
import socket as socketlib
import sys
import threading
import time
import warnings
import weakref
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures._base import PENDING as _PENDING
from typing import Any, Callable, Iterable

import zmq

from zeropool.client.errors import (
    BrokerUnreachable, InitializerError, TaskTimeoutError, UnsatisfiableWarning,
    VersionMismatchWarning, WorkerLostError,
)
from zeropool.protocol import (
    PROTOCOL_VERSION, Bye, Cancel, CancelReply, ClientResults, Error, Heartbeat, Hello, Op,
    ProtocolError, Role, Status, Submit, TaskOptions, decode, encode, header_budget, pack_payload,
    unpack_payloads,
)
from zeropool.protocol import context, defaults
from zeropool.protocol.defaults import python_minor
from zeropool.protocol.payload import (
    dumps, dumps_call, loads_call, loads_result, send_module_by_value,
)
from zeropool.protocol.security import HandshakeWatch, Security, close_watched
from zeropool.protocol.sockets import NOBLOCK, SocketTurn, keep_alive, readable, recv_frames, send_frames
from zeropool.protocol.waker import Waker

log = logging.getLogger("zeropool.client")

# Tasks per SUBMIT message at most: big enough to amortize the per-message
# cost, small enough that the broker can interleave other peers' messages.
MAX_SUBMIT_BATCH = 1000


class _Condition(threading.Condition):
    """A ``threading.Condition`` over its own RLock, made without binding five
    of the lock's methods to itself: a future is made per task, and while tasks
    are in flight each object they hold costs every garbage collection."""

    def __init__(self) -> None:  # noqa: the base __init__ is what this replaces
        self._lock = threading.RLock()
        self._waiters = collections.deque()

    def acquire(self, *args: Any) -> bool:
        return self._lock.acquire(*args)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)

    def _is_owned(self) -> bool:
        return self._lock._is_owned()


def _lean_futures_fit() -> bool:
    """Whether Future and Condition keep the attributes that TaskFuture and
    _Condition set themselves (private to the stdlib, so checked, not assumed)."""
    return (set(vars(Future())) == {"_condition", "_state", "_result", "_exception",
                                    "_waiters", "_done_callbacks"}
            and set(vars(threading.Condition(threading.RLock()))) == {
                "_lock", "acquire", "release", "_release_save", "_acquire_restore",
                "_is_owned", "_waiters"})


_LEAN_FUTURES = _lean_futures_fit()


class TaskFuture(Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` asks the broker first.

    It is also the task table's entry: one object per task, not two, because
    each object a task keeps alive costs every full garbage collection while
    tasks are in flight.
    """

    def __init__(self, session: Session, task_id: int, frames: Any) -> None:
        if _LEAN_FUTURES:  # Future.__init__, with a leaner condition
            self._condition = _Condition()
            self._state = _PENDING
            self._result = None
            self._exception = None
            self._waiters = []
            self._done_callbacks = []
        else:
            super().__init__()
        self.task_id = task_id
        self._session = session
        self.frames = frames  # the pickled call, kept for a resubmission
        self.sent = False
        self.resent_by_value = False

    # Its TaskOptions, set only when not the default.
    options: TaskOptions | None = None

    def cancel(self) -> bool:
        if self.running() or self.done():
            return super().cancel()
        self._session.cancel([self])
        return self.cancelled()

    def row(self) -> tuple[list, list]:
        """Its SUBMIT row and payload frames."""
        nframes, inline, frames = pack_payload(self.frames)
        if self.options is None:
            return [self.task_id, nframes, inline], frames
        return [self.task_id, nframes, inline, self.options], frames


class _NestedWaiters(list):
    """A nested future's waiters (``Future._waiters``): ``concurrent.futures.wait``
    and ``as_completed`` add theirs before they block and remove them after,
    which tells the task running on this thread to give its slot back
    meanwhile. The slot is taken back at the task's next submit, result() or
    exception(), not here: this runs under the future's lock, where blocking
    is unsafe."""

    __slots__ = ()

    def append(self, waiter: Any) -> None:
        context.wait_begins()
        super().append(waiter)

    def remove(self, waiter: Any) -> None:
        super().remove(waiter)
        context.wait_ends(rejoin=False)


class NestedFuture(TaskFuture):
    """The future of a task submitted from inside a task (``current_executor()``):
    while the submitting task waits on it, that task's worker slot is free for
    other tasks, so that tasks waiting on tasks never deadlock a bounded pool."""

    def __init__(self, session: Session, task_id: int, frames: Any) -> None:
        super().__init__(session, task_id, frames)
        self._waiters = _NestedWaiters()

    def result(self, timeout: float | None = None) -> Any:
        return self._wait(Future.result, timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._wait(Future.exception, timeout)

    def _wait(self, wait: Callable, timeout: float | None) -> Any:
        if self.done():
            context.settle()  # after wait() or as_completed(): the slot first
            return wait(self, timeout)
        context.wait_begins()
        try:
            return wait(self, timeout)
        finally:
            context.wait_ends()


class _CancelRequest:
    __slots__ = ("task_ids", "request_id", "queued_only", "done")

    def __init__(self, task_ids: list[int], request_id: int, queued_only: bool) -> None:
        self.task_ids = task_ids
        self.request_id = request_id
        self.queued_only = queued_only  # leave what workers hold
        self.done = threading.Event()


class Session:
    """A connection to one broker, served by one I/O thread."""

    def __init__(self, address: str, *, init_frames: list = (),
                 max_in_flight: int | None = None,
                 connect_timeout: float = defaults.CONNECT_TIMEOUT,
                 security: Security | None = None,
                 task_output: str | None = "plain",
                 on_close: Callable[[], None] | None = None,
                 nested: bool = False) -> None:
        self.address = address
        # Inside a task (current_executor()): futures that free the task's slot while waited on.
        self.nested = nested
        self._future_class = NestedFuture if nested else TaskFuture
        self._security = security
        self._task_output = task_output
        # (task, stream) -> (the start of a line it is still printing, its worker): held
        # until the line ends or the task does, so that lines of tasks never mix.
        self._partial: dict[tuple[int, int], tuple[str, str]] = {}
        host = socketlib.gethostname()[:64]
        self.client_id = f"c-{host}-{os.getpid()}-{os.urandom(3).hex()}".encode()
        self._host = host
        self._init_frames = list(init_frames)
        self._max_in_flight = max_in_flight
        self._connect_timeout = connect_timeout
        self._on_close = on_close
        self._heartbeat_interval = defaults.HEARTBEAT_INTERVAL
        self._liveness = defaults.HEARTBEAT_LIVENESS
        self._max_message_size = defaults.MAX_MESSAGE_SIZE

        self._lock = threading.Lock()  # guards _pending across caller threads and the I/O thread
        self._pending: dict[int, TaskFuture] = {}
        self._task_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._outbox: collections.deque = collections.deque()
        self._unsent: collections.deque[int] = collections.deque()
        self._cancels: dict[int, _CancelRequest] = {}
        self._open = 0  # tasks sent and not finished, for max_in_flight
        self._waker = Waker()
        # The I/O thread's, except while it sleeps: then a submit with nothing
        # else in flight sends its task itself, saving a thread hand-off.
        self._turn = SocketTurn(self._waker)
        self._welcomed = threading.Event()  # the first WELCOME, for the constructor
        self._connected = False  # WELCOMEd on the current socket
        self._refused: str | None = None
        self._closing = False
        self.broken: BaseException | None = None

        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._handshake: HandshakeWatch | None = None
        self._broker_seen = 0.0
        self._last_send = 0.0
        self.workers = 0  # attached to the broker, as it last said
        self._versions_seen: set[tuple] = set()  # the workers' versions, compared already
        self._workers_changed = threading.Condition()
        # Since when the broker has said it has no worker at all (None: it has some).
        self._no_workers_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="zeropool-client-io", daemon=True)
        self._thread.start()
        _live_sessions.add(self)
        if not self._welcomed.wait(connect_timeout) or not self._connected:
            failure = self.broken  # before close(), which sets its own once the thread ends
            self.close(wait=False, force=True)
            if failure is not None:
                raise failure
            raise BrokerUnreachable(
                f"no broker answered at {address} within {connect_timeout:g}s; check that "
                "a broker is running there (broker --bind ...) and reachable from this host, "
                "or pass a longer connect_timeout")

    # -- called from user threads -------------------------------------------

    def submit(self, fn: Callable, args: tuple, kwargs: dict,
               options: TaskOptions | None = None) -> TaskFuture:
        """Send a call; ``options``: its TaskOptions, if not the default."""
        try:
            frames = dumps_call(fn, args, kwargs)  # raises before anything is recorded
        except Exception as exc:
            raise unsendable(exc, [("the function", fn)]
                             + [(f"argument {i}", arg) for i, arg in enumerate(args, 1)]
                             + [(f"keyword argument {key!r}", value)
                                for key, value in kwargs.items()]) from exc
        self._check_size(frames)
        task_id = next(self._task_ids)
        future = self._future_class(self, task_id, _stored(frames))
        if options:
            future.options = options
        with self._lock:
            alone = not self._pending
            self._pending[task_id] = future
        sent = False
        try:
            # Not from the I/O thread (a done-callback), which holds the turn.
            if alone and threading.get_ident() != self._thread.ident and self._turn.try_take():
                try:
                    sent = self._send_alone(future)
                finally:
                    self._turn.give_back(self._socket)
        finally:
            if not sent:  # also if interrupted (Ctrl-C): the I/O thread sends it
                self._outbox.append(task_id)
                self._waker.wake()
        return future

    def _send_alone(self, task: TaskFuture) -> bool:
        """Send a task from the caller's thread, which holds the turn; False
        leaves it to the I/O thread (not connected, others queued first, or
        already failed or cancelled)."""
        if (self._socket is None or not self._connected or self._closing
                or self.broken is not None or self._outbox or self._unsent):
            return False
        with self._lock:
            if self._pending.get(task.task_id) is not task or task.sent:
                return False
            task.sent = True
        self._open += 1
        row, frames = task.row()
        sent = False
        try:
            sent = self._send(Submit([row]), frames)
        except BaseException:
            # Perhaps half a message went: start over on a new connection,
            # which resubmits what is pending (the broker drops duplicates).
            self._broker_seen = 0.0
            raise
        finally:
            if not sent:
                task.sent = False
                self._open -= 1
        return sent

    def _check_size(self, frames: list) -> None:
        if len(frames) == 1 and len(frames[0]) <= self._max_message_size:
            return
        largest = max(memoryview(frame).nbytes for frame in frames)
        if largest > self._max_message_size:
            raise ValueError(
                f"this call pickles to a frame of {largest:,} bytes, more than the broker "
                f"accepts ({self._max_message_size:,} bytes, broker --max-message-size); "
                "nothing was sent. Pass large data another way (a shared file or store), or "
                "raise the broker's limit.")

    def cancel(self, futures: Iterable[TaskFuture], queued_only: bool = False) -> None:
        """Cancel those of ``futures`` that no worker has started; with
        ``queued_only``, only those that no worker has been given."""
        task_ids = [f.task_id for f in futures if not (f.running() or f.done())]
        if not task_ids or not self._thread.is_alive():
            return
        request = _CancelRequest(task_ids, next(self._request_ids), queued_only)
        if threading.current_thread() is self._thread:
            # From a done-callback: the I/O thread cannot wait for itself, so
            # only tasks still here are cancelled.
            self._cancel_unsent(request)
            return
        self._outbox.append(request)
        self._waker.wake()
        # The I/O thread answers every request, at the latest when it gives up
        # on the broker; the timeout only guards against it having died.
        while not request.done.wait(1.0):
            if not self._thread.is_alive():
                return

    def abandon(self, exc: BaseException) -> None:
        """Fail every pending future with ``exc`` now; results that come later are dropped."""
        self._fail_all(exc)
        self._waker.wake()

    def wait_for_workers(self, count: int, timeout: float) -> bool:
        """Wait until the broker reports at least ``count`` workers attached."""
        with self._workers_changed:
            return self._workers_changed.wait_for(lambda: self.workers >= count, timeout)

    def pending_futures(self) -> list[TaskFuture]:
        with self._lock:
            return list(self._pending.values())

    def close(self, wait: bool = True, force: bool = False) -> None:
        """Finish pending tasks (or, with ``force``, abandon them), then disconnect."""
        self._closing = True
        if force:
            self._fail_all(BrokerUnreachable("the executor was shut down before this task ran"))
        self._waker.wake()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    # -- the I/O thread -----------------------------------------------------

    def _run(self) -> None:
        try:
            with self._turn:  # this thread's, except while it sleeps in poll
                self._run_session()
        finally:
            if self._on_close is not None:
                self._on_close()

    def _run_session(self) -> None:
        try:
            self._serve()
            if self._refused is not None:
                self.broken = BrokerUnreachable(
                    f"the broker at {self.address} refused this client: {self._refused}")
        except BaseException as exc:
            log.exception("zeropool client I/O thread failed")
            self.broken = BrokerUnreachable(f"the client's I/O thread failed: {exc!r}")
            self.broken.__cause__ = exc
        finally:
            # Nothing serves this session any more: fail what is pending, refuse the rest.
            if self.broken is None:
                self.broken = RuntimeError("cannot schedule new futures after shutdown")
            self._welcomed.set()  # a constructor still waiting learns at once
            self._fail_all(self.broken)
            for request in list(self._cancels.values()):
                request.done.set()
            self._close_socket()
            self._context.destroy(linger=0)  # also closes a socket left half-made
            _live_sessions.discard(self)

    def _serve(self) -> None:
        self._connect()
        poller = select.poll()  # over descriptors only: see SocketTurn
        poller.register(self._waker.fd, select.POLLIN)
        lost_since: float | None = None
        polled = None
        while True:
            if polled is not self._socket:  # a new connection
                socket_fd = self._socket.getsockopt(zmq.FD)
                poller.register(socket_fd, select.POLLIN)
                poller.register(self._handshake.fd, select.POLLIN)
                polled = self._socket
            deadline = min(self._last_send + self._heartbeat_interval,
                           self._broker_seen + self._heartbeat_interval * self._liveness)
            events = self._turn.poll(poller, self._socket,
                                     max(0.0, deadline - time.monotonic()) * 1000)
            failure = self._handshake.failure(events)
            if failure is not None:
                # Keys do not mend themselves: waiting would only turn this
                # into a timeout that hides the reason.
                self._refused = failure
                log.error("cannot connect to the broker at %s: %s", self.address, failure)
                return
            self._read_all()
            if self._refused is not None:
                return
            self._waker.clear(self._waker.fd in events)
            self._drain_outbox()
            if self._closing and not self._pending and not self._outbox:
                if self._connected:
                    self._send(Bye("client shut down"))
                return
            if self._handshake.handshakes > 1:
                # libzmq connected again by itself: what was on its way over
                # the old connection may be lost, so start over and resubmit.
                self._broker_seen = 0.0
            now = time.monotonic()
            if (self._closing and self._pending and self._no_workers_since is not None
                    and now - self._no_workers_since > self._connect_timeout):
                self._fail_all(WorkerLostError(
                    f"no worker has been attached to the broker at {self.address} for "
                    f"{now - self._no_workers_since:.0f}s while the executor was shutting down; "
                    "this task did not run. Start workers (worker ADDRESS) before shutting down."))
                continue
            if now - self._broker_seen > self._heartbeat_interval * self._liveness:
                lost_since = lost_since or now
                if self._closing and now - lost_since > self._connect_timeout:
                    self._fail_all(BrokerUnreachable(
                        f"the broker at {self.address} has not answered for "
                        f"{now - lost_since:.0f}s and the executor is shutting down; this "
                        "task did not complete"))
                    return
                poller.unregister(socket_fd)
                poller.unregister(self._handshake.fd)
                self._reconnect()
            else:
                if self._connected:
                    lost_since = None
                if now - self._last_send >= self._heartbeat_interval:
                    self._send(Heartbeat())

    def _connect(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, self.client_id)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.copy_threshold = defaults.COPY_THRESHOLD
        # The broker tells a client that is busy (its threads held up by the
        # GIL) from a gone one by whether libzmq's heartbeats keep it connected.
        keep_alive(sock, self._heartbeat_interval, self._liveness)
        if self._security is not None:
            self._security.apply(sock)
        self._socket = sock
        self._handshake = HandshakeWatch(sock, self._security)
        sock.connect(self.address)
        self._broker_seen = time.monotonic()
        self._send(Hello(Role.CLIENT, PROTOCOL_VERSION, init_frames=len(self._init_frames),
                         pid=os.getpid(), host=self._host, versions=defaults.versions()),
                   self._init_frames)

    def _reconnect(self) -> None:
        log.warning("broker %s silent for %.1fs; reconnecting and resubmitting %d task(s)",
                    self.address, self._heartbeat_interval * self._liveness, len(self._pending))
        self._close_socket()
        self._connected = False
        # Unanswered cancels: nothing was cancelled as far as we know; the
        # tasks are resubmitted and run.
        for request in self._cancels.values():
            request.done.set()
        self._cancels.clear()
        with self._lock:
            tasks = sorted(self._pending.items())
        for task_id, task in tasks:
            if task.sent:
                task.sent = False
                self._unsent.appendleft(task_id)
        self._unsent = collections.deque(sorted(self._unsent))
        self._open = 0
        self._connect()

    def _close_socket(self) -> None:
        close_watched(self._socket, self._handshake)
        self._socket = self._handshake = None

    def _read_all(self) -> None:
        while readable(self._socket):
            frames = recv_frames(self._socket)
            self._broker_seen = time.monotonic()
            try:
                message, payload = decode(frames)
                if message.op is Op.RESULTS:
                    self._on_results(message, payload)
                elif message.op is Op.CANCEL_REPLY:
                    self._on_cancel_reply(message)
                elif message.op is Op.WELCOME:
                    self._heartbeat_interval = message.heartbeat_interval
                    self._liveness = message.liveness
                    self._max_message_size = message.max_message_size
                    self._connected = True
                    self._welcomed.set()
                elif message.op is Op.REFUSED:
                    log.error("the broker refused this client: %s", message.reason)
                    self._refused = message.reason
                    return
                elif message.op is Op.HEARTBEAT:
                    with self._workers_changed:
                        self.workers = message.workers
                        self._workers_changed.notify_all()
                    if message.workers:
                        self._no_workers_since = None
                    elif self._no_workers_since is None:
                        self._no_workers_since = self._broker_seen
                    if message.versions:
                        self._compare_versions(message.versions)
                elif message.op is Op.ERROR:
                    self._on_error(message)
                elif message.op is Op.BYE:
                    log.warning("the broker at %s is going away (%s); will reconnect",
                                self.address, message.reason)
                    self._broker_seen = 0.0
            except ProtocolError as exc:
                log.error("bad message from the broker: %s", exc)

    def _drain_outbox(self) -> None:
        outbox = self._outbox
        while outbox:
            item = outbox.popleft()
            if type(item) is int:
                self._unsent.append(item)
            else:
                self._send_unsent()  # keep the broker's view in submission order
                self._send_cancel(item)
        self._send_unsent()

    def _send_unsent(self) -> None:
        unsent = self._unsent
        while unsent:
            room = MAX_SUBMIT_BATCH
            if self._max_in_flight is not None:
                room = min(room, self._max_in_flight - self._open)
                if room <= 0:
                    return
            rows, payload = [], []
            budget, size = header_budget(self._max_message_size), 0
            with self._lock:
                while unsent and len(rows) < room and size < budget:
                    task = self._pending.get(unsent.popleft())
                    if task is None or task.sent:
                        continue  # cancelled or failed meanwhile
                    task.sent = True
                    row, frames = task.row()
                    rows.append(row)
                    payload.extend(frames)
                    size += len(row[2]) + 16
            if rows:
                self._open += len(rows)
                self._send(Submit(rows), payload)

    def _cancel_unsent(self, request: _CancelRequest) -> list[int]:
        """Cancel here the tasks not yet sent; returns the ids still to ask about."""
        ask = []
        cancelled = []
        with self._lock:
            for task_id in request.task_ids:
                task = self._pending.get(task_id)
                if task is None:
                    continue
                if task.sent:
                    ask.append(task_id)
                else:
                    del self._pending[task_id]
                    cancelled.append(task)
        for future in cancelled:
            _cancel(future)
        return ask

    def _send_cancel(self, request: _CancelRequest) -> None:
        ask = self._cancel_unsent(request)
        if not ask or not self._connected:
            request.done.set()
            return
        self._cancels[request.request_id] = request
        self._send(Cancel(request.request_id, ask, queued_only=request.queued_only))

    def _on_cancel_reply(self, reply: CancelReply) -> None:
        request = self._cancels.pop(reply.request_id, None)
        futures = []
        with self._lock:
            for task_id in reply.task_ids:
                task = self._pending.pop(task_id, None)
                if task is not None:
                    self._open -= 1
                    futures.append(task)
        for future in futures:
            if future.running():
                # Shown running, then requeued when its worker died: it will not run now.
                _finish(future, False, CancelledError(
                    "cancelled after its worker was lost, before it ran again"))
            else:
                _cancel(future)
        if request is not None:
            request.done.set()
        self._send_unsent()

    def _on_results(self, message: ClientResults, payload: list) -> None:
        self._no_workers_since = None
        pending = self._pending
        for task_id in message.started:
            task = pending.get(task_id)
            if task is not None:
                _start(task)
        if message.output and self._task_output is not None:
            self._print(message.output)  # before the results: a task's output precedes its end
        groups = unpack_payloads(message.results, 2, payload)
        for (task_id, status, _, _), frames in zip(message.results, groups):
            # One at a time: a task stays in the table (where a failure of this
            # loop, or a broken initializer, still finds it) until it is answered.
            with self._lock:
                task = pending.pop(task_id, None)
            if task is None:
                continue  # a duplicate after a reconnect, or already failed
            self._open -= 1
            if self._partial:
                self._flush_partial(task_id)
            if status == Status.INIT_FAILED:
                self._break(task, frames)
                continue
            try:
                ok, value = loads_result(status, frames)
            except BaseException as exc:
                ok, value = False, pickle.UnpicklingError(
                    f"the task's {'result' if status == Status.OK else 'exception'} could not "
                    f"be unpickled here: {type(exc).__name__}: {exc} (is every module it "
                    "needs importable in this process?)")
                value.__cause__ = exc
            if status == Status.UNPICKLE_FAILED and self._resend_by_value(task, value):
                continue
            _finish(task, ok, value)
        for task_id, code, text in message.errors:
            with self._lock:
                task = pending.pop(task_id, None)
            if task is not None:
                self._open -= 1
                if self._partial:
                    self._flush_partial(task_id)
                _finish(task, False, _BROKER_ERRORS.get(code, BrokerUnreachable)(text))
        self._send_unsent()

    def _print(self, rows: list) -> None:
        """Show what remote tasks printed on this process's stdout and stderr,
        whole lines at a time (print() writes a line and its newline apart, and
        they may arrive in two messages, with other tasks' lines between)."""
        runs: list[tuple[int, list[str]]] = []  # consecutive rows of one stream, joined
        for task_id, stream, text, worker in rows:
            if task_id not in self._pending:
                continue  # a copy from a run whose result already arrived
            stream = 1 if stream == 1 else 2
            key = (task_id, stream)
            held = self._partial.pop(key, None)
            if held is not None:
                text = held[0] + text
            end = max(text.rfind("\n"), text.rfind("\r")) + 1
            if end < len(text):
                self._partial[key] = (text[end:], worker)
                text = text[:end]
            if not text:
                continue
            text = self._prefixed(text, worker)
            if runs and runs[-1][0] == stream:
                runs[-1][1].append(text)
            else:
                runs.append((stream, [text]))
        for stream, pieces in runs:
            _write_output(stream, "".join(pieces))

    def _flush_partial(self, task_id: int) -> None:
        """A task ended: the line it left open is shown as it is."""
        for stream in (1, 2):
            held = self._partial.pop((task_id, stream), None)
            if held is not None:
                _write_output(stream, self._prefixed(*held))

    def _prefixed(self, text: str, worker: str) -> str:
        if self._task_output != "prefix":
            return text
        return "".join(f"[{worker}] {line}" for line in text.splitlines(keepends=True))

    def _resend_by_value(self, task: TaskFuture, exc: BaseException) -> bool:
        """A worker could not import the module of a call: send it by value, once."""
        name = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if task.resent_by_value or not name or not send_module_by_value(name):
            return False
        log.info("workers cannot import module %r; sending its functions by value", name)
        try:
            # This process has the module: the call unpickles here, to pickle again by value.
            frames = dumps_call(*loads_call(task.frames if type(task.frames) is list
                                            else [task.frames]))
        except BaseException:  # the I/O thread must live on
            return False
        task_id = next(self._task_ids)
        task.task_id = task_id
        task.frames = _stored(frames)
        task.sent, task.resent_by_value = False, True
        with self._lock:
            self._pending[task_id] = task
        self._unsent.append(task_id)
        return True

    def _compare_versions(self, workers: list[dict]) -> None:
        """Warn once for each set of versions that workers run whose Python
        minor version or cloudpickle differs from this client's."""
        mine = defaults.versions()
        for theirs in workers:
            key = tuple(sorted(theirs.items()))
            if key in self._versions_seen:
                continue
            self._versions_seen.add(key)
            python, cloudpickle = theirs.get("python", ""), theirs.get("cloudpickle", "")
            if (python_minor(python) == python_minor(mine["python"])
                    and cloudpickle == mine["cloudpickle"]):
                continue
            text = (f"workers of the broker at {self.address} run Python {python} with "
                    f"cloudpickle {cloudpickle}, this client Python {mine['python']} with "
                    f"cloudpickle {mine['cloudpickle']}: functions sent by value (defined in "
                    "__main__, lambdas, closures) may not load there. Install the same "
                    "versions on both sides")
            log.warning("%s", text)
            warnings.warn(VersionMismatchWarning(text), stacklevel=1)

    def _on_error(self, error: Error) -> None:
        if error.code == "unsatisfiable":
            log.warning("%s", error.message)
            warnings.warn(UnsatisfiableWarning(error.message), stacklevel=1)
            return
        if error.code == "unknown_peer":
            log.warning("the broker at %s no longer knows this client; reconnecting and "
                        "resubmitting", self.address)
            self._broker_seen = 0.0
            return
        log.error("the broker refused a message of this client: %s: %s", error.code,
                  error.message)

    def _break(self, future: TaskFuture, frames: list) -> None:
        """The initializer failed: fail everything, as the stdlib pools do."""
        try:
            _, cause = loads_result(Status.RAISED, frames)
        except BaseException as exc:
            cause = exc
        if isinstance(cause, ModuleNotFoundError) and cause.name:
            # Unlike a task, it is not sent again by value: the module state it
            # sets up would then be a copy that the tasks never see.
            advice = (f"The workers cannot import module {cause.name!r}: make it importable "
                      "there (install it, or start them with worker --path DIR or "
                      "$ZEROPOOL_PATH), then create a new Executor.")
        else:
            advice = "Fix the initializer and create a new Executor."
        broken = InitializerError(
            f"the executor's initializer raised {type(cause).__name__}: {cause} on a worker; "
            f"the executor cannot run tasks any more. {advice}")
        broken.__cause__ = cause
        self.broken = broken
        with self._lock:
            tasks = list(self._pending.values())
            sent = [task.task_id for task in tasks if task.sent]
        if sent:
            self._send(Cancel(0, sent))  # fire and forget: stop wasting workers' time
        _finish(future, False, broken)
        self._fail_all(broken)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            tasks = list(self._pending.values())
            self._pending.clear()
        for task in tasks:
            _finish(task, False, exc)

    def _send(self, message: Any, payload: list = ()) -> bool:
        try:
            send_frames(self._socket, encode(message, payload), NOBLOCK)
        except zmq.Again:
            # No high-water mark, so only a connection ZeroMQ gave up on (a
            # refused handshake) lands here; blocking would hang this thread
            # and a submitting caller. Start over on a new connection, which
            # resubmits whatever is pending.
            self._broker_seen = 0.0
            return False
        self._last_send = time.monotonic()
        return True


def unsendable(exc: Exception, parts: list[tuple[str, Any]]) -> pickle.PicklingError:
    """A clear error for a call (or an initializer) that cannot be pickled:
    which of its ``parts`` (name, value) pickle refused, and why."""
    culprit = "the call"
    for name, value in parts:
        try:
            dumps(value)
        except Exception:
            culprit = f"{name} ({type(value).__module__}.{type(value).__qualname__})"
            break
    if "inherit" in str(exc):
        advice = ("Workers are separate processes, started on their own and never forked "
                  "from this one, so what only a child process can inherit (a "
                  "multiprocessing lock, queue or pipe) never reaches them. Create it in the "
                  "task or the initializer, or use a multiprocessing.Manager() proxy.")
    else:
        advice = ("Workers are separate processes: everything a call needs travels by "
                  "pickle. Make it picklable, or create it in the task or the initializer.")
    return pickle.PicklingError(f"cannot send {culprit} to the workers: "
                                f"{type(exc).__name__}: {exc}. {advice} Nothing was sent.")


def _start(future: Future) -> bool:
    """Move a future to RUNNING if it is not yet; False if it was cancelled or is done."""
    if future.running():
        return True
    if future.done():
        return False
    return future.set_running_or_notify_cancel()


def _stored(frames: list) -> Any:
    """A call's frames as a task keeps them: one bytes object alone, without a
    list around it (one object less per task in flight; pack_payload takes
    either)."""
    return frames[0] if len(frames) == 1 else frames


def _write_output(stream: int, text: str) -> None:
    """Write task output as a process pool's children do: straight to the file
    descriptor. Through ``sys.stdout`` it could land between a line that this
    process prints and its newline, which ``print`` writes separately. A
    replaced ``sys.stdout`` (a notebook, a redirect, a test's capture) is
    written to instead. Closed or missing streams drop the output."""
    out = sys.stdout if stream == 1 else sys.stderr
    fd = None
    if out is not None and out is (sys.__stdout__ if stream == 1 else sys.__stderr__):
        try:
            fd = out.fileno()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        if fd is not None:
            data = memoryview(text.encode(out.encoding or "utf-8", "backslashreplace"))
            while data:
                data = data[os.write(fd, data):]
        else:
            out.write(text)
            out.flush()
    except (OSError, ValueError, AttributeError):
        pass


def _finish(future: TaskFuture, ok: bool, value: Any) -> None:
    """Complete a future taken from the task table.

    No future there is cancelled or done (only this module cancels them, and
    takes them out of the table first), and ``set_result`` also accepts a
    PENDING one: a task that finished before its start was reported needs no
    RUNNING step, which would cost three more lock round trips.
    """
    future.frames = None  # the user may keep the future; the call is not needed now
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except InvalidStateError:
        # Cancelled by Future.cancel, bypassing ours: notify its waiters now.
        try:
            future.set_running_or_notify_cancel()
        except RuntimeError:  # done, or notified already
            pass


def _cancel(future: TaskFuture) -> None:
    """Cancel and notify at once, so that wait() and as_completed() count it as done
    (the stdlib pools notify only when a worker later dequeues the call)."""
    future.frames = None
    if Future.cancel(future):
        future.set_running_or_notify_cancel()


# The errors the broker reports for a task, by code; any other code: BrokerUnreachable.
_BROKER_ERRORS = {"worker_lost": WorkerLostError, "timeout": TaskTimeoutError}

_live_sessions: weakref.WeakSet[Session] = weakref.WeakSet()


@atexit.register
def _finish_at_exit() -> None:
    """Let pending work finish at interpreter exit, as the stdlib pools do."""
    for session in list(_live_sessions):
        # A worker's own executor (current_executor()) does not hold its exit:
        # the tasks that waited on its futures are gone.
        session.close(wait=not session.nested)
