"""Runs tasks on a worker's threads. ``run`` never raises: every outcome,
including a broken payload or an unpicklable result, becomes a status and
frames to send back. User code runs at every hop (unpickling the call, the
call, pickling its result or exception) and may raise any BaseException,
SystemExit and KeyboardInterrupt included: each becomes the task's error."""
from __future__ import annotations

import collections
import faulthandler
import logging
import os
import platform
import queue
import sys
import threading
import time
import traceback
from typing import Any, Callable

from zeropool.protocol import Status, context
from zeropool.protocol.errors import VersionMismatchError
from zeropool.protocol.payload import dumps_exception, dumps_result, loads, loads_call
from zeropool.worker import output

log = logging.getLogger("zeropool.worker")

# Characters of task output per event: one event always fits a message.
OUTPUT_CHUNK = 1 << 13
_STOP = object()  # Runner._next: the threads are told to stop
# The I/O loop enforces timeouts, but only while it gets the GIL: a task that
# keeps it (a C call, a catastrophic regex) would overstay for ever. So while
# tasks with deadlines run, faulthandler's watchdog thread, which needs no
# GIL, is armed for the earliest deadline plus this: it then prints every
# thread's stack on stderr and ends the process (exit code 1). Long enough
# that the loop, if it runs at all, reports the timeout first and leaves
# cleanly; the longer, the longer a task holding the GIL overstays.
BACKSTOP_GRACE = 2.0


class Runner:
    """Threads taking ``(key, frames)`` from a queue, ``threads`` tasks at once.

    Each thread reports ``("started", key)``, ``("output", key, stream,
    text)`` for what the task prints, and ``("done", key, status, frames,
    seconds)`` on ``events``, and calls ``notify`` after output and
    ``finished`` (from the thread that ran the task) after a result, so the
    I/O loop wakes or the result is sent at once.
    Tasks not yet started can be withdrawn (``withdraw``). Waiting tasks
    start highest priority first.

    Nested tasks: a task that waits on futures of tasks it submitted gives
    its slot back (``seceded`` counts them, and ``("seceded", key)`` on
    ``events`` tells the I/O loop to offer the slot to the broker); another
    thread starts if none is free to take its place. Before it goes on, it
    waits for a slot, ahead of tasks that have not started.
    """

    def __init__(self, threads: int, notify: Callable[[], None],
                 finished: Callable[[], None] | None = None, *,
                 address: str = "", security: Any = None) -> None:
        self.threads = threads
        self.events: collections.deque = collections.deque()
        self._notify = notify
        self._finished = finished or notify
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        # The broker's limit (from its WELCOME): a larger result becomes an error.
        self.max_message_size = 1 << 30
        # Clients that run another Python minor version than this worker: code
        # they send by value is not loaded here (see _run).
        self.client_pythons: dict[bytes, str] = {}
        self._init_frames: dict[bytes, list] = {}
        self._init_results: dict[bytes, tuple | None] = {}
        self._init_lock = threading.Lock()
        # Guards the moment a task starts against its withdrawal.
        self._start_lock = threading.Lock()
        self.running: dict[tuple, float] = {}  # key -> monotonic start time
        # Submitted, not started, in queue order: key -> (frames, priority).
        self.waiting: dict[tuple, tuple] = {}
        self._prioritized = 0  # of those, how many have a priority other than 0
        # Queue entries to skip, counted: a task given back, sent here again and
        # given back again has two stale entries.
        self._withdrawn: collections.Counter = collections.Counter()
        # Nested tasks (see above): those waiting on their own futures, without a slot.
        self.seceded: set[tuple] = set()
        self._rejoining = 0  # tasks waiting to take a slot again
        self._slot_free = threading.Condition(self._start_lock)
        self._nested = False  # a task has seceded: threads may have to wait for a slot
        self._idle = 0  # threads waiting for a task
        self._context = context.TaskContext(address, security, self._secede, self._rejoin)
        # Per-task timeouts: seconds, for tasks that have one; once started,
        # their deadlines (monotonic) and threads. The I/O loop enforces them.
        self._timeouts: dict[tuple, float] = {}
        self.deadlines: dict[tuple, float] = {}
        self._task_threads: dict[tuple, int] = {}
        self.timed_out: set[tuple] = set()  # their results are the loop's to send
        # The deadline faulthandler's watchdog is armed for (see BACKSTOP_GRACE);
        # its timer is process-wide, and only the runner sets it.
        self._backstop: float | None = None
        self._leaving = False  # see leave_within: the watchdog is not the tasks' any more
        self._stack_fd = _stderr_fd()
        output.capture(self._on_output)
        self._threads = []
        for _ in range(threads):
            self._add_thread()

    def add_initializer(self, client_id: bytes, frames: list) -> None:
        self._init_frames[client_id] = frames

    def forget_initializer(self, client_id: bytes) -> None:
        """Its client has gone: drop its initializer and whether it ran (a
        client the broker let back in under the same id sends it again)."""
        with self._init_lock:
            self._init_frames.pop(client_id, None)
            self._init_results.pop(client_id, None)
        self.client_pythons.pop(client_id, None)

    def _add_thread(self) -> None:
        thread = threading.Thread(target=self._loop, name=f"zeropool-task-{len(self._threads)}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def submit(self, key: tuple, frames: list, priority: int = 0,
               timeout: float | None = None) -> None:
        if timeout is not None:
            self._timeouts[key] = timeout
        with self._start_lock:
            if priority or self._prioritized:
                self._submit_by_priority(key, frames, priority)
                return
            self.waiting[key] = (frames, 0)
        self._tasks.put((key, frames))

    def _submit_by_priority(self, key: tuple, frames: list, priority: int) -> None:
        """Queue a task ahead of those waiting with a lower priority: they are
        taken out of the queue (their entries skipped) and queued again behind
        it, in their order. Holds the start lock."""
        behind = [(other, entry) for other, entry in self.waiting.items() if entry[1] < priority]
        for other, _ in behind:
            del self.waiting[other]
            self._withdrawn[other] += 1
        for other, entry in [(key, (frames, priority)), *behind]:
            self.waiting[other] = entry
            self._tasks.put((other, entry[0]))
        if priority:
            self._prioritized += 1

    def _unwait(self, key: tuple) -> None:
        """Holds the start lock."""
        if self.waiting.pop(key)[1]:
            self._prioritized -= 1

    def stop(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)

    def join(self, timeout: float | None = None) -> None:
        for thread in list(self._threads):
            thread.join(timeout)

    def _loop(self) -> None:
        context.enter(self._context)
        task = self._next(block=True)
        while task is not _STOP:
            self._execute(*task)
            # The next task, if one waits, starts before this result is told:
            # a result sent at once then says so too, and the I/O loop need
            # not wake to report that start on its own. (Not once tasks nest:
            # this thread might wait for a slot first, holding the result back.)
            task = None if self._nested else self._next(block=False)
            try:
                self._finished()
            except Exception:  # this thread must live on: the loop sends it instead
                log.exception("sending a result from its thread failed")
                self._notify()
            if task is None:
                if self._nested and self._retire():
                    return
                task = self._next(block=True)

    def _next(self, block: bool):
        """The next task as (key, frames, start), marked started; None if none
        waits (not blocking), _STOP when told to stop."""
        while True:
            # Idle threads are counted once tasks nest (see _secede), not before:
            # two more lock round trips per task otherwise.
            counted = block and self._nested
            if counted:
                with self._start_lock:
                    self._idle += 1
            try:
                item = self._tasks.get(block)
            except queue.Empty:
                return None
            finally:
                if counted:
                    with self._start_lock:
                        self._idle -= 1
            if item is None:
                return _STOP
            key, frames = item
            with self._start_lock:
                if self._nested:
                    # Tasks taking a slot back go first; then one slot per task.
                    while self._rejoining or len(self.running) - len(self.seceded) >= self.threads:
                        self._slot_free.wait()
                if self._withdrawn[key]:
                    self._withdrawn[key] -= 1
                    if not self._withdrawn[key]:
                        del self._withdrawn[key]
                    continue
                self._unwait(key)
                start = self.running[key] = time.monotonic()
                if self._timeouts:
                    self._set_deadline(key, start)
            # No wake for this: the I/O loop reports starts on its own
            # schedule (worker.agent.START_REPORT_AFTER), or with a result.
            self.events.append(("started", key))
            return key, frames, start

    def run_here(self, key: tuple, frames: list) -> None:
        """Run a task on the calling thread (one of ours, lent the socket by
        the I/O loop), with the events a queued task makes; never raises."""
        with self._start_lock:
            start = self.running[key] = time.monotonic()
            if self._timeouts:
                self._set_deadline(key, start)
        self.events.append(("started", key))
        self._execute(key, frames, start)

    def _set_deadline(self, key: tuple, start: float) -> None:
        """Holds the start lock; the I/O loop wakes to look at the new deadline."""
        timeout = self._timeouts.pop(key, None)
        if timeout is not None:
            deadline = self.deadlines[key] = start + timeout
            self._task_threads[key] = threading.get_ident()
            if self._backstop is None or deadline < self._backstop:
                self._arm_backstop(deadline)
            self._notify()

    def _arm_backstop(self, deadline: float | None) -> None:
        """Holds the start lock: end the process at ``deadline`` plus
        BACKSTOP_GRACE, even if a task holds the GIL (None: don't)."""
        if self._leaving:
            return
        self._backstop = deadline
        if deadline is None:
            faulthandler.cancel_dump_traceback_later()
        else:
            seconds = max(deadline + BACKSTOP_GRACE - time.monotonic(), 0.001)
            faulthandler.dump_traceback_later(seconds, exit=True, file=self._stack_fd)

    def leave_within(self, seconds: float) -> None:
        """The process is leaving (a task timed out): end it in ``seconds`` at
        the latest, even if a task holds the GIL meanwhile."""
        with self._start_lock:
            self._leaving = True
            faulthandler.dump_traceback_later(seconds, exit=True, file=self._stack_fd)

    def overdue(self, now: float) -> list[tuple[tuple, float, str]]:
        """Running tasks past their deadlines, as (key, timeout, where it was),
        marked timed out: their own results, should they come, are dropped."""
        found = []
        with self._start_lock:
            for key, deadline in list(self.deadlines.items()):
                if deadline <= now and key in self.running and key not in self.timed_out:
                    self.timed_out.add(key)
                    found.append((key, deadline - self.running[key],
                                  _stack(self._task_threads.get(key))))
        return found

    def _execute(self, key: tuple, frames: list, start: float) -> None:
        output.running(key)
        try:
            status, out = self.run(key[0], frames)
        finally:
            output.running(None)
            if self._nested:  # only a task that gave its slot back has anything to end
                context.task_ended()
        with self._start_lock:
            del self.running[key]
            self.seceded.discard(key)  # it ended without taking its slot back
            if self._nested:
                self._slot_free.notify_all()
            if self.deadlines:
                deadline = self.deadlines.pop(key, None)
                self._task_threads.pop(key, None)
                if deadline is not None and deadline == self._backstop:  # the next one, if any
                    self._arm_backstop(min(self.deadlines.values(), default=None))
            if key in self.timed_out:
                return  # its timeout was reported instead
        self.events.append(("done", key, status, out, time.monotonic() - start))

    def started_times(self) -> list[float]:
        """When the tasks that hold a slot started."""
        with self._start_lock:
            return [start for key, start in self.running.items() if key not in self.seceded]

    def _running_key(self) -> tuple | None:
        """The key of the task this thread runs (output capture knows it)."""
        return output.current()

    def _secede(self) -> None:
        """From a task's thread: it waits on its own futures; free its slot."""
        key = self._running_key()
        with self._start_lock:
            if key not in self.running or key in self.seceded:
                return
            self.seceded.add(key)
            self._slot_free.notify_all()
            # Nobody to take a task in its place? (Before the first secession
            # idle threads are not counted: one too many may start, and retires.)
            if not self._idle or not self._nested:
                self._add_thread()
            self._nested = True
        self.events.append(("seceded", key))
        self._notify()

    def _rejoin(self) -> None:
        """From a task's thread: take a slot again before going on."""
        key = self._running_key()
        with self._start_lock:
            if key not in self.seceded:
                return
            self._rejoining += 1
            try:
                while len(self.running) - len(self.seceded) >= self.threads:
                    self._slot_free.wait()
            finally:
                self._rejoining -= 1
                self._slot_free.notify_all()
            self.seceded.discard(key)

    def _retire(self) -> bool:
        """After a task: whether this thread is one too many now that the
        tasks it stood in for are back (then it ends)."""
        with self._start_lock:
            if len(self._threads) <= self.threads + len(self.seceded):
                return False
            self._threads.remove(threading.current_thread())
            return True

    def withdraw(self, keys) -> list:
        """Of ``keys`` (tasks submitted here), take back those not started."""
        taken = []
        with self._start_lock:
            for key in keys:
                if key in self.waiting:
                    self._unwait(key)
                    self._withdrawn[key] += 1
                    self._timeouts.pop(key, None)
                    taken.append(key)
        return taken

    def _on_output(self, key: tuple, stream: int, text: str) -> None:
        for start in range(0, len(text), OUTPUT_CHUNK):  # one huge write stays sendable
            self.events.append(("output", key, stream, text[start:start + OUTPUT_CHUNK]))
        self._notify()

    def run(self, client_id: bytes, frames: list) -> tuple[Status, list]:
        try:
            return self._run(client_id, frames)
        except BaseException as exc:
            # Reporting the outcome failed, though every hop in _run catches
            # what user code raises: a task thread that died here would leave
            # the task unanswered for ever, so this still answers, if only
            # with a name.
            log.exception("could not report the outcome of a task")
            return dumps_exception(RuntimeError(
                f"the worker could not report this task's outcome: {type(exc).__qualname__}"))

    def _run(self, client_id: bytes, frames: list) -> tuple[Status, list]:
        failed = self._initialize(client_id)
        if failed is not None:
            return failed
        if self.client_pythons and client_id in self.client_pythons and _carries_code(frames):
            return dumps_exception(VersionMismatchError(
                f"the call carries code (a function sent by value: defined in __main__, a "
                f"lambda or a closure) made by Python {self.client_pythons[client_id]}, and "
                f"this worker runs Python {platform.python_version()}: such code is for one "
                "Python version only, so it was not loaded. Run the workers on the client's "
                "Python version, or make the function importable on them, so that it "
                "travels by reference"))
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
                f"broker accepts ({self.max_message_size:,} bytes, broker --max-message-size)"))
        return status, frames

    def _initialize(self, client_id: bytes) -> tuple | None:
        """Run a client's initializer once; its failure answers all its tasks."""
        if client_id not in self._init_frames:
            return None
        try:
            return self._init_results[client_id]
        except KeyError:
            pass
        with self._init_lock:
            if client_id not in self._init_results:
                result = None
                try:
                    initializer, initargs = loads(self._init_frames[client_id])
                    initializer(*initargs)
                except BaseException as exc:
                    log.warning("initializer of client %s failed: %r", client_id.hex(), exc)
                    result = dumps_exception(exc, Status.INIT_FAILED)
                self._init_results[client_id] = result
            return self._init_results[client_id]


def _stack(thread_id: int | None) -> str:
    """Where a thread is now, as traceback text ("" if it is gone)."""
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    return "".join(traceback.format_stack(frame)) if frame is not None else ""


def _stderr_fd() -> int:
    """Where the backstop prints stacks: the real stderr (tasks' prints are
    routed), or nowhere if there is none; it stops the process all the same."""
    try:
        return sys.__stderr__.fileno()
    except (AttributeError, ValueError, OSError):
        return os.open(os.devnull, os.O_WRONLY)


def _carries_code(frames: list) -> bool:
    """Whether a call's pickle rebuilds a code object (cloudpickle sends
    functions by value so), which only the Python minor version that made
    it can load safely: loading another's may even crash the interpreter."""
    stream = frames[0]
    return b"CodeType" in (stream if type(stream) is bytes else memoryview(stream).tobytes())
