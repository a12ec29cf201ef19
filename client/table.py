"""The client's task table and its cancel requests: socket-free, shared by
callers' threads and the I/O thread, which alone sends what they decide."""
from __future__ import annotations

import collections
import itertools
import logging
import pickle
import threading
from concurrent.futures import CancelledError

from zeropool.client.errors import (
    BrokerUnreachable, InitializerError, TaskTimeoutError, WorkerLostError,
)
from zeropool.client.futures import TaskFuture, cancel_now, finish, start, stored
from zeropool.client.output import TaskOutput
from zeropool.protocol import ClientResultRow, ClientResults, Status, unpack_payloads
from zeropool.protocol.payload import dumps_call, loads_call, loads_result, send_module_by_value

log = logging.getLogger("zeropool.client")

# Tasks per SUBMIT message at most: big enough to amortize the per-message
# cost, small enough that the broker can interleave other peers' messages.
MAX_SUBMIT_BATCH = 1000

# The errors the broker reports for a task, by code; any other code: BrokerUnreachable.
BROKER_ERRORS = {"worker_lost": WorkerLostError, "timeout": TaskTimeoutError}


class TaskTable:
    """Every task not yet answered, by id: its future holds its pickled call
    until then, so that a new connection can submit it again (the broker
    drops ids it already has). ``unsent`` lists, in order, the ids to submit
    next; ``open`` counts those sent and not answered, for ``max_in_flight``.

    Callers add tasks under ``lock``; everything else is the I/O thread's,
    or that of a caller holding the socket's turn (``claim``)."""

    def __init__(self, max_in_flight: int | None = None,
                 output: TaskOutput | None = None) -> None:
        self.lock = threading.Lock()  # guards pending across caller threads and the I/O thread
        self.pending: dict[int, TaskFuture] = {}
        self.task_ids = itertools.count(1)
        self.unsent: collections.deque[int] = collections.deque()
        self.open = 0
        self.max_in_flight = max_in_flight
        self.output = output  # None: task output is dropped

    def add(self, task: TaskFuture) -> bool:
        """Record a new task; True if no other was pending (it may go alone)."""
        with self.lock:
            alone = not self.pending
            self.pending[task.task_id] = task
        return alone

    def claim(self, task: TaskFuture) -> bool:
        """Mark a task sent, unless it was sent, failed or cancelled meanwhile."""
        with self.lock:
            if self.pending.get(task.task_id) is not task or task.sent:
                return False
            task.sent = True
        self.open += 1
        return True

    def unclaim(self, task: TaskFuture) -> None:
        """Its send failed: the task is unsent again."""
        task.sent = False
        self.open -= 1

    def batch(self, budget: int) -> tuple[list, list] | None:
        """The next SUBMIT's rows and payload, from ``unsent`` (marked sent):
        at most MAX_SUBMIT_BATCH, about ``budget`` bytes of header and what
        ``max_in_flight`` leaves room for; None when it leaves none."""
        room = MAX_SUBMIT_BATCH
        if self.max_in_flight is not None:
            room = min(room, self.max_in_flight - self.open)
            if room <= 0:
                return None
        unsent, pending = self.unsent, self.pending
        rows, payload, size = [], [], 0
        with self.lock:
            while unsent and len(rows) < room and size < budget:
                task = pending.get(unsent.popleft())
                if task is None or task.sent:
                    continue  # cancelled or failed meanwhile
                task.sent = True
                row, frames = task.row()
                rows.append(row)
                payload.extend(frames)
                size += len(row[2]) + 16
        self.open += len(rows)
        return rows, payload

    def deliver(self, message: ClientResults, payload: list) -> tuple[TaskFuture, list] | None:
        """Complete the futures that RESULTS answers. A task whose initializer
        failed stops it: returns that task and its frames (see ``initializer_error``)."""
        pending, lock, output = self.pending, self.lock, self.output
        for task_id in message.started:
            task = pending.get(task_id)
            if task is not None:
                start(task)
        if message.output and output is not None:
            output.show(message.output, pending)  # before the results: output precedes the end
        partial = output.partial if output is not None else None
        groups = unpack_payloads(message.results, ClientResultRow.nframes, payload)
        for (task_id, status, _, _), frames in zip(message.results, groups):
            # One at a time: a task stays in the table (where a failure of this
            # loop, or a broken initializer, still finds it) until it is answered.
            with lock:
                task = pending.pop(task_id, None)
            if task is None:
                continue  # a duplicate after a reconnect, or already failed
            self.open -= 1
            try:
                if partial:
                    output.flush(task_id)
                if status == Status.INIT_FAILED:
                    return task, frames
                try:
                    ok, value = loads_result(status, frames)
                except BaseException as exc:  # also what a result's own unpickling raises
                    what = "result" if status == Status.OK else "exception"
                    ok, value = False, pickle.UnpicklingError(
                        f"the task's {what} could not be unpickled here: "
                        f"{type(exc).__name__}: {exc} (is every module it needs importable "
                        "in this process?)")
                    value.__cause__ = exc
                if status == Status.UNPICKLE_FAILED and self.resend_by_value(task, value):
                    continue
                finish(task, ok, value)
            except KeyboardInterrupt:  # in a caller reading (client/lending.py)
                self._unanswered(task)
                raise
        for task_id, code, text in message.errors:
            with lock:
                task = pending.pop(task_id, None)
            if task is not None:
                self.open -= 1
                if partial:
                    output.flush(task_id)
                finish(task, False, BROKER_ERRORS.get(code, BrokerUnreachable)(text))
        return None

    def _unanswered(self, task: TaskFuture) -> None:
        """Ctrl-C while ``task``'s result was being handled: unless it got
        done, it is pending again, for the new connection to submit."""
        if not task.done():
            with self.lock:
                if self.pending.setdefault(task.task_id, task) is task:
                    self.open += 1

    def resend_by_value(self, task: TaskFuture, exc: BaseException) -> bool:
        """A worker could not import the module of a call: queue it again,
        under a new id, with that module's functions by value; once."""
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
        task_id = next(self.task_ids)
        task.task_id = task_id
        task.frames = stored(frames)
        task.sent, task.resent_by_value = False, True
        with self.lock:
            self.pending[task_id] = task
        self.unsent.append(task_id)
        return True

    def cancel_unsent(self, task_ids: list[int]) -> list[int]:
        """Cancel here the tasks not yet sent; returns the ids still to ask the broker about."""
        ask, cancelled = [], []
        with self.lock:
            for task_id in task_ids:
                task = self.pending.get(task_id)
                if task is None:
                    continue
                if task.sent:
                    ask.append(task_id)
                else:
                    del self.pending[task_id]
                    cancelled.append(task)
        for future in cancelled:
            cancel_now(future)
        return ask

    def cancelled(self, task_ids: list[int]) -> None:
        """The broker cancelled these (no worker has started them)."""
        futures = []
        with self.lock:
            for task_id in task_ids:
                task = self.pending.pop(task_id, None)
                if task is not None:
                    self.open -= 1
                    futures.append(task)
        for future in futures:
            if future.running():
                # Shown running, then requeued when its worker died: it will not run now.
                finish(future, False, CancelledError(
                    "cancelled after its worker was lost, before it ran again"))
            else:
                cancel_now(future)

    def resubmit_all(self) -> int:
        """A new connection: every pending task is to be sent again, in
        submission order. Returns how many tasks are pending."""
        with self.lock:
            tasks = sorted(self.pending.items())
        for task_id, task in tasks:
            if task.sent:
                task.sent = False
                self.unsent.append(task_id)
        ordered = sorted(self.unsent)
        self.unsent.clear()
        self.unsent.extend(ordered)
        self.open = 0
        return len(tasks)

    def sent_ids(self) -> list[int]:
        """The tasks sent and not answered."""
        with self.lock:
            return [task.task_id for task in self.pending.values() if task.sent]

    def futures(self) -> list[TaskFuture]:
        """A snapshot of the pending futures."""
        with self.lock:
            return list(self.pending.values())

    def fail_all(self, exc: BaseException) -> None:
        """Fail every pending task with ``exc``; results that come later are dropped."""
        with self.lock:
            tasks = list(self.pending.values())
            self.pending.clear()
        for task in tasks:
            finish(task, False, exc)


class CancelRequest:
    """A caller's ``cancel()``, waiting for the I/O thread (and the broker) to answer."""

    __slots__ = ("task_ids", "request_id", "queued_only", "done")

    def __init__(self, task_ids: list[int], request_id: int, queued_only: bool) -> None:
        self.task_ids = task_ids
        self.request_id = request_id
        self.queued_only = queued_only  # leave what workers hold
        self.done = threading.Event()


class CancelRequests:
    """Cancel requests by id: made in callers' threads, asked and answered in
    the I/O thread, which answers every one (also when a connection, with
    the broker's replies on it, is lost: nothing was cancelled then)."""

    def __init__(self) -> None:
        self._request_ids = itertools.count(1)
        self._asked: dict[int, CancelRequest] = {}

    def new(self, task_ids: list[int], queued_only: bool) -> CancelRequest:
        """A request under a new id (from any thread: the counter is atomic)."""
        return CancelRequest(task_ids, next(self._request_ids), queued_only)

    def asked(self, request: CancelRequest) -> None:
        """Sent to the broker: answered by ``answered`` or ``release_all``."""
        self._asked[request.request_id] = request

    def answered(self, request_id: int) -> CancelRequest | None:
        """The request a CANCEL_REPLY answers (None: released already)."""
        return self._asked.pop(request_id, None)

    @property
    def waiting(self) -> bool:
        """Whether a request waits for the broker's reply."""
        return bool(self._asked)

    def release_all(self) -> None:
        """No reply is coming: let every waiting caller go."""
        for request in self._asked.values():
            request.done.set()
        self._asked.clear()


def initializer_error(cause_frames: list) -> InitializerError:
    """The error that breaks the executor when its initializer failed on a
    worker (``cause_frames``: that failure, pickled)."""
    try:
        _, cause = loads_result(Status.RAISED, cause_frames)
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
    return broken
