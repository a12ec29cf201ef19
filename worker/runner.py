"""Runs tasks on a worker's threads. ``run`` never raises: every outcome,
including a broken payload or an unpicklable result, becomes a status and
frames to send back. User code runs at every hop (unpickling the call, the
call, pickling its result or exception) and may raise any BaseException,
SystemExit and KeyboardInterrupt included: each becomes the task's error."""
from __future__ import annotations

import collections
import logging
import os
import queue
import sys
import threading
import time
from typing import Any, Callable

from zeropool.protocol import Status, context
from zeropool.protocol.payload import dumps_exception, dumps_result, loads_call
from zeropool.worker import output
from zeropool.worker.deadlines import BACKSTOP_GRACE, Deadlines
from zeropool.worker.initializers import Initializers
from zeropool.worker.waiting import Waiting

__all__ = ["BACKSTOP_GRACE", "Runner", "Slots"]

log = logging.getLogger("zeropool.worker")

# Characters of task output per event: one event always fits a message.
OUTPUT_CHUNK = 1 << 13
_STOP = object()  # Runner._next: the threads are told to stop


class Runner:
    """Threads taking ``(key, frames)`` from a queue, ``threads`` tasks at once.

    Each thread reports ``("started", key)``, ``("output", key, stream,
    text)`` for what the task prints, and ``("done", key, status, frames,
    seconds)`` on ``events``, and calls ``notify`` after output and
    ``finished`` (from the thread that ran the task) after a result, so the
    I/O loop wakes or the result is sent at once.

    Its parts: ``Waiting`` (worker/waiting.py), the tasks not started, which
    start highest priority first and can be withdrawn; ``Deadlines``
    (worker/deadlines.py), the timeouts of those running (``timers``);
    ``Slots`` (below), nested tasks; ``Initializers`` (worker/initializers.py).
    All but the last share the start lock, which guards the moment a task
    starts against its withdrawal.
    """

    def __init__(self, threads: int, notify: Callable[[], None],
                 finished: Callable[[], None] | None = None, *,
                 address: str = "", security: Any = None) -> None:
        self.events: collections.deque = collections.deque()
        self._notify = notify
        self._finished = finished or notify
        # The broker's limit (from its WELCOME): a larger result becomes an error.
        self.max_message_size = 1 << 30
        self.initializers = Initializers()
        self._start_lock = threading.Lock()
        self.running: dict[tuple, float] = {}  # key -> monotonic start time
        self._queue = Waiting(self._start_lock)
        self.submit = self._queue.put  # (key, frames, priority=0, timeout=None)
        self.waiting = self._queue.waiting
        self._slots = Slots(threads, self._start_lock, self.running)
        self.seceded = self._slots.seceded  # tasks waiting on their own futures
        self.timers = Deadlines(self._start_lock, _stderr_fd())
        self.deadlines = self.timers.deadlines
        self._context = context.TaskContext(address, security, self._secede, self._rejoin)
        output.capture(self._on_output)
        self._threads: list[threading.Thread] = []
        for _ in range(threads):
            self._add_thread()

    def _add_thread(self) -> None:
        thread = threading.Thread(target=self._loop, name=f"zeropool-task-{len(self._threads)}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def withdraw(self, keys) -> list:
        """Of ``keys`` (tasks submitted here), take back those not started."""
        return self._queue.withdraw(keys)

    def stop(self) -> None:
        self._queue.stop(len(self._threads))

    def join(self, timeout: float | None = None) -> None:
        for thread in list(self._threads):
            thread.join(timeout)

    def _loop(self) -> None:
        context.enter(self._context)
        slots = self._slots
        task = self._next(block=True)
        while task is not _STOP:
            self.run_here(*task)
            # The next task, if one waits, starts before this result is told:
            # a result sent at once then says so too, and the I/O loop need
            # not wake to report that start on its own. (Not once tasks nest:
            # this thread might wait for a slot first, holding the result back.)
            task = None if slots.nested else self._next(block=False)
            try:
                self._finished()
            except Exception:  # this thread must live on: the loop sends it instead
                log.exception("sending a result from its thread failed")
                self._notify()
            if task is None:
                if slots.nested and slots.retire(self._threads):
                    return
                task = self._next(block=True)

    def _next(self, block: bool):
        """The next task as (key, frames, start), marked started; None if none
        waits (not blocking), _STOP when told to stop."""
        slots, get, take = self._slots, self._queue.get, self._queue.take
        # Idle threads are counted once tasks nest (see Slots.secede), not
        # before: two more lock round trips per task otherwise.
        while True:
            counted = block and slots.nested
            if counted:
                with self._start_lock:
                    slots.idle += 1
            try:
                item = get(block)
            except queue.Empty:
                return None
            finally:
                if counted:
                    with self._start_lock:
                        slots.idle -= 1
            if item is None:
                return _STOP
            key, frames = item
            with self._start_lock:
                if slots.nested:
                    slots.wait_for_one()
                entry = take(key)
                if entry is None:  # withdrawn
                    continue
                start = self.running[key] = time.monotonic()
                if entry[2] is not None:
                    self._start_timer(key, start, entry[2])
            # No wake for this: the I/O loop reports starts on its own
            # schedule (worker.agent.START_REPORT_AFTER), or with a result.
            self.events.append(("started", key))
            return key, frames, start

    def _start_timer(self, key: tuple, start: float, timeout: float) -> None:
        """Holds the start lock; the I/O loop wakes to look at the new deadline."""
        self.timers.start(key, start, timeout, threading.get_ident())
        self._notify()

    def run_here(self, key: tuple, frames: list, start: float | None = None) -> None:
        """Run a task on the calling thread (one of ours); never raises. With
        ``start``: one _next took and started. Without: a lone task without
        options that this thread read itself, lent the socket by the I/O loop
        (worker/handover.py), started here with the events a queued task makes."""
        if start is None:
            with self._start_lock:
                start = self.running[key] = time.monotonic()
            self.events.append(("started", key))
        slots, task = self._slots, output.current_task
        task.key = key
        try:
            status, out = self.run(key[0], frames)
        finally:
            task.key = None
            if slots.nested:  # only a task that gave its slot back has anything to end
                context.task_ended()
        with self._start_lock:
            del self.running[key]
            if slots.nested:
                slots.ended(key)
            if self.deadlines and self.timers.end(key, time.monotonic()):
                return  # its timeout was reported instead
        self.events.append(("done", key, status, out, time.monotonic() - start))

    def started_times(self) -> list[float]:
        """When the tasks that hold a slot started."""
        with self._start_lock:
            seceded = self._slots.seceded
            return [start for key, start in self.running.items() if key not in seceded]

    def _secede(self) -> None:
        """From a task's thread: it waits on its own futures; free its slot."""
        key = output.current()
        with self._start_lock:
            add = self._slots.secede(key)
            if add is None:
                return
            if add:
                self._add_thread()
        self.events.append(("seceded", key))
        self._notify()

    def _rejoin(self) -> None:
        """From a task's thread: take a slot again before going on."""
        key = output.current()
        with self._start_lock:
            self._slots.rejoin(key)

    def _on_output(self, key: tuple, stream: int, text: str) -> None:
        for start in range(0, len(text), OUTPUT_CHUNK):  # one huge write stays sendable
            self.events.append(("output", key, stream, text[start:start + OUTPUT_CHUNK]))
        self._notify()

    def run(self, client_id: bytes, frames: list) -> tuple[Status, list]:
        try:
            initializers = self.initializers
            # (Most workers know no initializer and no other Python: no call then.)
            if initializers.frames or initializers.client_pythons:
                failed = initializers.before(client_id, frames)
                if failed is not None:
                    return failed
            try:
                fn, args, kwargs = loads_call(frames)
            except BaseException as exc:  # the call itself would not unpickle here
                return dumps_exception(exc, Status.UNPICKLE_FAILED)
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:
                return dumps_exception(exc)
            del fn, args, kwargs
            status, frames = dumps_result(value)
            if len(frames) == 1 and len(frames[0]) <= self.max_message_size:
                return status, frames
            largest = max(memoryview(frame).nbytes for frame in frames)
            if largest > self.max_message_size:
                return dumps_exception(ValueError(
                    f"the task's result pickles to a frame of {largest:,} bytes, more than the "
                    f"broker accepts ({self.max_message_size:,} bytes, broker "
                    "--max-message-size)"))
            return status, frames
        except BaseException as exc:
            # Reporting the outcome failed, though every hop above catches
            # what user code raises: a task thread that died here would leave
            # the task unanswered for ever, so this still answers, if only
            # with a name.
            log.exception("could not report the outcome of a task")
            return dumps_exception(RuntimeError(
                f"the worker could not report this task's outcome: {type(exc).__qualname__}"))


def _stderr_fd() -> int:
    """Where the backstop prints stacks: the real stderr (tasks' prints are
    routed), or nowhere if there is none; it stops the process all the same."""
    try:
        return sys.__stderr__.fileno()
    except (AttributeError, ValueError, OSError):
        return os.open(os.devnull, os.O_WRONLY)


class Slots:
    """The threads' slots: one per thread, held by the running tasks. A task
    that waits on futures of tasks it submitted gives its slot back
    (``seceded``; the runner reports ``("seceded", key)`` so the I/O loop
    offers the slot to the broker), and another thread starts if none is
    free to take its place. Before it goes on, it waits for a slot, ahead of
    tasks that have not started. Until a first task does so (``nested``),
    none of this costs the threads anything. Called holding the start lock.
    """

    def __init__(self, threads: int, lock: threading.Lock, running: dict) -> None:
        self.threads = threads
        self._running = running  # the runner's: key -> start
        self.seceded: set[tuple] = set()
        self.nested = False  # a task has seceded: threads may have to wait for a slot
        self.idle = 0  # threads waiting for a task, counted once nested
        self._rejoining = 0  # tasks waiting to take a slot again
        self._free = threading.Condition(lock)

    def secede(self, key: tuple) -> bool | None:
        """``key``'s task gives its slot back: whether a thread must be added
        to take its place (None: it holds none)."""
        if key not in self._running or key in self.seceded:
            return None
        self.seceded.add(key)
        self._free.notify_all()
        # Nobody to take a task in its place? (Before the first secession
        # idle threads are not counted: one too many may start, and retires.)
        add = not self.idle or not self.nested
        self.nested = True
        return add

    def rejoin(self, key: tuple) -> None:
        """Wait for a slot for ``key``'s task, which gave its own back."""
        if key not in self.seceded:
            return
        self._rejoining += 1
        try:
            while len(self._running) - len(self.seceded) >= self.threads:
                self._free.wait()
        finally:
            self._rejoining -= 1
            self._free.notify_all()
        self.seceded.discard(key)

    def wait_for_one(self) -> None:
        """Before a task starts: tasks taking a slot back go first; then one
        slot per task."""
        while self._rejoining or len(self._running) - len(self.seceded) >= self.threads:
            self._free.wait()

    def ended(self, key: tuple) -> None:
        self.seceded.discard(key)  # it ended without taking its slot back
        self._free.notify_all()

    def retire(self, threads: list) -> bool:
        """After a task (without the lock): whether the calling thread is one
        too many now that the tasks it stood in for are back (then it ends,
        and is removed from ``threads``)."""
        with self._free:
            if len(threads) <= self.threads + len(self.seceded):
                return False
            threads.remove(threading.current_thread())
            return True
