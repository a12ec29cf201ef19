"""The client's futures: a task table entry each, and the only ways they complete.

``TaskFuture`` is a real ``concurrent.futures.Future`` (the stdlib's
``wait``, ``as_completed`` and callbacks hold) whose ``cancel()`` asks the
broker first; ``NestedFuture`` is one submitted from inside a task, which
frees that task's worker slot while it waits. ``finish``, ``cancel_now`` and
``start`` move them on through the Future's public methods only.
"""
from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import PENDING as _PENDING, RUNNING as _RUNNING
from typing import Any, Callable

from zeropool.client.lending import lent_sessions, take_back_all
from zeropool.protocol import SubmitRow, TaskOptions, context, pack_payload

_WAITING = (_PENDING, _RUNNING)


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
    tasks are in flight. ``session`` is what asks the broker (its ``cancel``).
    """

    def __init__(self, session: Any, task_id: int, frames: Any) -> None:
        if _LEAN_FUTURES:  # Future.__init__, with a leaner condition
            self._condition = _Condition()
            self._state = _PENDING
            self._result = None
            self._exception = None
            self._waiters = _Waiters()
            self._done_callbacks = []
        else:
            super().__init__()
            self._waiters = _Waiters()
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

    # Waiting on it: a caller waiting alone may read the socket itself
    # (client/lending.py); any other way of waiting needs the I/O thread.

    def result(self, timeout: float | None = None) -> Any:
        if self._state in _WAITING:
            timeout = self._session.lending.wait(self, timeout)
        return Future.result(self, timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state in _WAITING:
            timeout = self._session.lending.wait(self, timeout)
        return Future.exception(self, timeout)

    def done(self) -> bool:
        if self._state in _WAITING and self._session.lending.lent:
            self._session.lending.peek()
        return Future.done(self)

    def running(self) -> bool:
        if self._state is _PENDING and self._session.lending.lent:
            self._session.lending.peek()
        return Future.running(self)

    def add_done_callback(self, fn: Callable[[Future], object]) -> None:
        if self._state in _WAITING:
            self._session.lending.take_back()
        Future.add_done_callback(self, fn)

    def row(self) -> tuple[list, list]:
        """Its SUBMIT row and payload frames."""
        nframes, inline, frames = pack_payload(self.frames)
        return SubmitRow(self.task_id, nframes, inline, self.options), frames


class _Waiters(list):
    """A future's waiters (``Future._waiters``): ``concurrent.futures.wait``
    and ``as_completed`` add theirs here before they block, and then the I/O
    thread must be the one reading (client/lending.py)."""

    __slots__ = ()

    def append(self, waiter: Any) -> None:
        if lent_sessions:
            take_back_all()
        super().append(waiter)


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

    def __init__(self, session: Any, task_id: int, frames: Any) -> None:
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


def stored(frames: list) -> Any:
    """A call's frames as a task keeps them: one bytes object alone, without a
    list around it (one object less per task in flight; pack_payload takes
    either)."""
    return frames[0] if len(frames) == 1 else frames


def start(future: Future) -> bool:
    """Move a future to RUNNING if it is not yet; False if it was cancelled or is done."""
    if future.running():
        return True
    if future.done():
        return False
    return future.set_running_or_notify_cancel()


def finish(future: TaskFuture, ok: bool, value: Any) -> None:
    """Complete a future taken from the task table.

    No future there is cancelled or done (only the client cancels them, and
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


def cancel_now(future: TaskFuture) -> None:
    """Cancel and notify at once, so that wait() and as_completed() count it as done
    (the stdlib pools notify only when a worker later dequeues the call)."""
    future.frames = None
    if Future.cancel(future):
        future.set_running_or_notify_cancel()
