"""What code running as a task can learn of the worker that runs it.

A worker's task threads carry a ``TaskContext``: the broker's address and
credentials (for ``zeropool.current_executor()``), and how to give the
task's slot back while it waits on tasks it submitted, so that nested
submission never deadlocks a bounded pool.

    task thread                         worker (runner)
    -----------                         ---------------
    wait_begins()  --secede()-->        one more task may run in its place,
                                        and the broker is offered the slot
    ...waits on its futures...
    wait_ends() / settle() --rejoin()-> waits until a slot is free again

The client and the worker both use this module; it holds no socket.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

_local = threading.local()


@dataclass(frozen=True, slots=True)
class TaskContext:
    address: str
    security: Any  # a protocol.security.Security, or None
    secede: Callable[[], None]  # the calling task gives its slot back
    rejoin: Callable[[], None]  # it takes a slot again, waiting for one if need be


def current() -> TaskContext | None:
    """The context of the task running on this thread; None outside a task."""
    return getattr(_local, "context", None)


def enter(context: TaskContext | None) -> None:
    """Called by a worker's task thread once, before it runs tasks."""
    _local.context = context
    _local.seceded = False
    _local.waits = 0


def wait_begins() -> None:
    """This thread begins to wait on futures: its task gives its slot back
    (once, however many waits nest)."""
    context = current()
    if context is None:
        return
    _local.waits += 1
    if not _local.seceded:
        _local.seceded = True
        context.secede()


def wait_ends(rejoin: bool = True) -> None:
    """A wait of this thread is over. With ``rejoin``, the task takes a slot
    back now (blocking until one is free); without, at its next
    ``settle()`` (for waits that end where blocking is not safe, such as
    under a future's lock)."""
    context = current()
    if context is None:
        return
    _local.waits = max(0, _local.waits - 1)
    if rejoin:
        settle()


def settle() -> None:
    """Take back the slot this thread's task gave up, if its waits are over."""
    context = current()
    if context is not None and _local.seceded and not _local.waits:
        _local.seceded = False
        context.rejoin()


def task_ended() -> bool:
    """Called by the worker after each task: whether the task ended without
    its slot (it gave it back and never waited for it again)."""
    if current() is None:
        return False
    seceded, _local.seceded, _local.waits = _local.seceded, False, 0
    return seceded
