"""The client's I/O thread: one loop that owns the connection to the broker.

    submit() --pickle, TaskTable.add--> outbox --waker--> loop --SUBMIT---------> broker
             (alone, loop asleep: Connection.borrow, SUBMIT itself) ------------>
    cancel() --CancelRequest--> outbox --> loop --CANCEL--> broker --CANCEL_REPLY--> loop
    Future   <--TaskTable.deliver: set_result / set_exception--  loop <--RESULTS-- broker
             <--TaskOutput: what the tasks printed------------------------------'
    result() <--(alone, socket lent: client/lending.py) reads RESULTS itself----------

The loop (``Session._serve``) sleeps in ``Connection.poll``, hands each
message to ``_on_message``, sends what callers queued since its last pass as
one SUBMIT per batch, then runs its timed chores: a heartbeat, or after a
silent broker a new connection that submits every unanswered task again (the
broker drops ids it already has). It alone sends, with one exception below.

The task table (client/table.py) holds every unanswered task's future and
pickled call, the order in which to submit them, and the ``max_in_flight``
count; it completes the futures from RESULTS and keeps nothing of sockets.
Callers pickle their call themselves, so a pickling error raises from
``submit``, and record it there.

The hand-over: a task submitted with nothing else in flight is sent by its
caller, while the loop sleeps (``Connection.borrow``, ``_send_alone``),
saving a thread hand-off on a lone round trip. Everything else a caller
wants sent goes through the outbox and the waker. The answer to such a lone
task is read by its caller too, in result(), once the loop has lent it the
socket (client/lending.py): the loop then polls without it.

Cancel requests (client/table.py) are decided by the broker: ``cancel()``
asks it and returns True only if no worker has been given the task, so a
cancelled task never runs. What the broker says about itself and its
workers (connected, limits, workers attached, their versions) is kept in a
BrokerView (client/broker_view.py); task output in a TaskOutput
(client/output.py); the futures themselves are in client/futures.py.
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import pickle
import socket as socketlib
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterable

from zeropool.client.broker_view import BrokerView
from zeropool.client.errors import (
    BrokerUnreachable, UnsatisfiableWarning, VersionMismatchWarning, WorkerLostError,
)
from zeropool.client.futures import NestedFuture, TaskFuture, finish, stored
from zeropool.client.lending import LEND_IDLE, Lending
from zeropool.client.output import TaskOutput
from zeropool.client.table import CancelRequests, TaskTable, initializer_error
from zeropool.protocol import (
    PROTOCOL_VERSION, Bye, Cancel, Hello, Op, Role, Submit, TaskOptions, header_budget,
)
from zeropool.protocol import defaults
from zeropool.protocol.connection import Connection
from zeropool.protocol.payload import dumps, dumps_call
from zeropool.protocol.security import Security

log = logging.getLogger("zeropool.client")


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
        host = socketlib.gethostname()[:64]
        self.client_id = f"c-{host}-{os.getpid()}-{os.urandom(3).hex()}".encode()
        init_frames = list(init_frames)
        self._hello = (Hello(Role.CLIENT, PROTOCOL_VERSION, init_frames=len(init_frames),
                             pid=os.getpid(), host=host, versions=defaults.versions()),
                       init_frames)
        self._connect_timeout = connect_timeout
        self._on_close = on_close
        self._table = TaskTable(max_in_flight,
                                TaskOutput(task_output) if task_output is not None else None)
        self._cancels = CancelRequests()
        # Task ids and cancel requests from callers, for the loop, in order.
        self._outbox: collections.deque = collections.deque()
        self._connection = Connection(address, log, security=security)
        # A caller waiting alone on its one task reads the socket itself.
        self.lending = Lending(self._connection, self._table, self._on_message)
        self.broker = BrokerView(address, defaults.versions())
        self._welcomed = threading.Event()  # the first WELCOME, for the constructor
        self._closing = False
        self.broken: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="zeropool-client-io", daemon=True)
        self._thread.start()
        _live_sessions.add(self)
        if not self._welcomed.wait(connect_timeout) or not self.broker.connected:
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
        check_size(frames, self.broker.max_message_size)
        table = self._table
        future = (NestedFuture if self.nested else TaskFuture)(
            self, next(table.task_ids), stored(frames))
        if options:
            future.options = options
        sent = False
        connection = self._connection
        try:
            # Not from the I/O thread (a done-callback), which holds the turn.
            if (table.add(future) and threading.get_ident() != self._thread.ident
                    and connection.borrow()):
                try:
                    sent = self._send_alone(future)
                finally:
                    connection.give_back(not self.lending.lent)
        finally:
            if not sent:  # also if interrupted (Ctrl-C): the I/O thread sends it
                self._outbox.append(future.task_id)
                connection.waker.wake()
        return future

    def _send_alone(self, task: TaskFuture) -> bool:
        """The hand-over: a caller holding the borrowed socket sends its lone
        task; False leaves it to the I/O thread (not connected, others queued
        first, or already failed or cancelled)."""
        connection, table = self._connection, self._table
        if (connection.socket is None or not self.broker.connected or self._closing
                or self.broken is not None or self._outbox or table.unsent
                or not table.claim(task)):
            return False
        row, frames = task.row()
        sent = False
        try:
            sent = connection.send(Submit([row]), frames)
        except BaseException:
            # Perhaps half a message went: start over on a new connection,
            # which resubmits what is pending (the broker drops duplicates).
            connection.broker_seen = 0.0
            raise
        finally:
            if not sent:
                table.unclaim(task)
        return sent

    def cancel(self, futures: Iterable[TaskFuture], queued_only: bool = False) -> None:
        """Cancel those of ``futures`` that no worker has started; with
        ``queued_only``, only those that no worker has been given."""
        task_ids = [f.task_id for f in futures if not (f.running() or f.done())]
        if not task_ids or not self._thread.is_alive():
            return
        if (threading.current_thread() is self._thread
                or self.lending.reader == threading.get_ident()):
            # From a done-callback (run by the I/O thread, or by a caller
            # reading for it): the loop cannot answer meanwhile, so only
            # tasks still here are cancelled.
            self._table.cancel_unsent(task_ids)
            return
        self.lending.take_back()  # the reply is the loop's to read
        request = self._cancels.new(task_ids, queued_only)
        self._outbox.append(request)
        self._connection.waker.wake()
        # The I/O thread answers every request, at the latest when it gives up
        # on the broker; the timeout only guards against it having died.
        while not request.done.wait(1.0):
            if not self._thread.is_alive():
                return

    def abandon(self, exc: BaseException) -> None:
        """Fail every pending future with ``exc`` now; results that come later are dropped."""
        self._table.fail_all(exc)
        self._connection.waker.wake()

    def pending_futures(self) -> list[TaskFuture]:
        """The futures of the tasks not answered yet."""
        return self._table.futures()

    def close(self, wait: bool = True, force: bool = False) -> None:
        """Finish pending tasks (or, with ``force``, abandon them), then disconnect."""
        self._closing = True
        if force:
            self._table.fail_all(
                BrokerUnreachable("the executor was shut down before this task ran"))
        self._connection.waker.wake()
        if (wait and threading.current_thread() is not self._thread
                and self.lending.reader != threading.get_ident()):  # a done-callback
            self._thread.join()

    # -- the I/O thread -----------------------------------------------------

    def _run(self) -> None:
        connection = self._connection
        self.lending.loop_ident = threading.get_ident()
        try:
            with connection.turn:  # this thread's, except while it sleeps in poll
                try:
                    self._serve()
                    if self.broker.refused is not None:
                        self.broken = BrokerUnreachable(
                            f"the broker at {self.address} refused this client: "
                            f"{self.broker.refused}")
                except BaseException as exc:
                    log.exception("zeropool client I/O thread failed")
                    self.broken = BrokerUnreachable(f"the client's I/O thread failed: {exc!r}")
                    self.broken.__cause__ = exc
                finally:
                    # Nothing serves this session any more: fail what is pending, refuse the rest.
                    if self.broken is None:
                        self.broken = RuntimeError("cannot schedule new futures after shutdown")
                    self._welcomed.set()  # a constructor still waiting learns at once
                    self.lending.settle(False, 0.0)  # a reader falls back on the future
                    self._table.fail_all(self.broken)
                    self._cancels.release_all()
                    connection.end()
                    _live_sessions.discard(self)
        finally:
            if self._on_close is not None:
                self._on_close()

    def _serve(self) -> None:
        """The loop: wait, read, send what callers queued, then the timed chores."""
        connection, table, on_message = self._connection, self._table, self._on_message
        connection.connect(self.client_id, *self._hello)
        lending = self.lending
        while True:
            lent = lending.lent
            events = connection.poll(LEND_IDLE if lent else None, with_socket=not lent)
            refusal = connection.handshake.failure(events)
            if refusal is not None:
                # Keys do not mend themselves: waiting would only turn this
                # into a timeout that hides the reason.
                log.error("cannot connect to the broker at %s: %s", self.address, refusal)
                self.broker.refused = refusal
                return
            if connection.read(on_message) is not None or self.broker.refused is not None:
                return  # refused (perhaps read by a caller: client/lending.py)
            connection.waker.clear(connection.waker.fd in events)
            if connection.broker_seen:  # else the chores below connect anew first
                self._drain_outbox()
            if self._closing and not table.pending and not self._outbox:
                if self.broker.connected:
                    connection.send(Bye("client shut down"))
                return
            now = time.monotonic()
            if not self._chores(now):
                return
            lending.settle(not (self.nested or self._closing or self._cancels.waiting)
                           and self.broker.connected, now)

    def _chores(self, now: float) -> bool:
        """A heartbeat, or a new connection to a silent broker; while shutting
        down, giving up on tasks that cannot finish. False: the loop ends."""
        connection, table, broker = self._connection, self._table, self.broker
        if (self._closing and table.pending
                and broker.without_workers(now) > self._connect_timeout):
            table.fail_all(WorkerLostError(
                f"no worker has been attached to the broker at {self.address} for "
                f"{broker.without_workers(now):.0f}s while the executor was shutting down; "
                "this task did not run. Start workers (worker ADDRESS) before shutting down."))
        elif connection.heartbeat(now):
            if broker.connected:
                broker.silent_since = None
        else:
            broker.silent_since = broker.silent_since or now
            if self._closing and now - broker.silent_since > self._connect_timeout:
                table.fail_all(BrokerUnreachable(
                    f"the broker at {self.address} has not answered for "
                    f"{now - broker.silent_since:.0f}s and the executor is shutting down; this "
                    "task did not complete"))
                return False
            self._reconnect()
        return True

    def _reconnect(self) -> None:
        """A new connection, on which every unanswered task goes again."""
        connection = self._connection
        self.lending.take_back()  # a reader polls the old socket
        log.warning("broker %s silent for %.1fs; reconnecting and resubmitting %d task(s)",
                    self.address, connection.heartbeat_interval * connection.liveness,
                    len(self._table.pending))
        connection.close()
        self.broker.connected = False
        # Unanswered cancels: nothing was cancelled as far as we know; the
        # tasks are resubmitted and run.
        self._cancels.release_all()
        self._table.resubmit_all()
        connection.connect(self.client_id, *self._hello)

    def _on_message(self, message: Any, payload: list) -> bool | None:
        """One message from the broker; True stops reading (refused)."""
        op = message.op
        if op is Op.RESULTS:
            self.broker.no_workers_since = None
            failed = self._table.deliver(message, payload)
            if failed is not None:
                self._break(*failed)
            self._send_unsent()
        elif op is Op.CANCEL_REPLY:
            request = self._cancels.answered(message.request_id)
            self._table.cancelled(message.task_ids)
            if request is not None:
                request.done.set()
            self._send_unsent()
        elif op is Op.WELCOME:
            self._connection.welcome(message)
            self.broker.welcome(message)
            self._welcomed.set()
        elif op is Op.REFUSED:
            log.error("the broker refused this client: %s", message.reason)
            self.broker.refused = message.reason
            return True
        elif op is Op.HEARTBEAT:
            for text in self.broker.heard(message, self._connection.broker_seen):
                log.warning("%s", text)
                warnings.warn(VersionMismatchWarning(text), stacklevel=1)
        elif op is Op.ERROR:
            if message.code == "unsatisfiable":
                log.warning("%s", message.message)
                warnings.warn(UnsatisfiableWarning(message.message), stacklevel=1)
            elif message.code == "unknown_peer":
                log.warning("the broker at %s no longer knows this client; reconnecting and "
                            "resubmitting", self.address)
                self._connection.broker_seen = 0.0
            else:
                log.error("the broker refused a message of this client: %s: %s", message.code,
                          message.message)
        elif op is Op.BYE:
            log.warning("the broker at %s is going away (%s); will reconnect",
                        self.address, message.reason)
            self._connection.broker_seen = 0.0
        return None

    def _break(self, task: TaskFuture, frames: list) -> None:
        """The initializer failed: fail everything, as the stdlib pools do."""
        self.broken = broken = initializer_error(frames)
        sent = self._table.sent_ids()
        if sent:
            self._connection.send(Cancel(0, sent))  # fire and forget: stop wasting workers' time
        finish(task, False, broken)
        self._table.fail_all(broken)

    def _drain_outbox(self) -> None:
        outbox, unsent = self._outbox, self._table.unsent
        while outbox:
            item = outbox.popleft()
            if type(item) is int:
                unsent.append(item)
                continue
            self._send_unsent()  # keep the broker's view in submission order
            ask = self._table.cancel_unsent(item.task_ids)
            if ask and self.broker.connected:
                self._cancels.asked(item)
                self._connection.send(Cancel(item.request_id, ask, queued_only=item.queued_only))
            else:
                item.done.set()
        self._send_unsent()

    def _send_unsent(self) -> None:
        table = self._table
        if not self._connection.broker_seen:
            # To be replaced (perhaps with half a message on it, from an
            # interrupted caller): what is unsent goes on the new connection.
            return
        while table.unsent:
            batch = table.batch(header_budget(self.broker.max_message_size))
            if batch is None:
                return  # max_in_flight tasks are out
            if batch[0]:
                self._connection.send(Submit(batch[0]), batch[1])


def check_size(frames: list, limit: int) -> None:
    """Refuse a call whose frames the broker would refuse."""
    if len(frames) == 1 and len(frames[0]) <= limit:
        return
    largest = max(memoryview(frame).nbytes for frame in frames)
    if largest > limit:
        raise ValueError(
            f"this call pickles to a frame of {largest:,} bytes, more than the broker "
            f"accepts ({limit:,} bytes, broker --max-message-size); "
            "nothing was sent. Pass large data another way (a shared file or store), or "
            "raise the broker's limit.")


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


_live_sessions: weakref.WeakSet[Session] = weakref.WeakSet()


@atexit.register
def _finish_at_exit() -> None:
    """Let pending work finish at interpreter exit, as the stdlib pools do."""
    for session in list(_live_sessions):
        # A worker's own executor (current_executor()) does not hold its exit:
        # the tasks that waited on its futures are gone.
        session.close(wait=not session.nested)
