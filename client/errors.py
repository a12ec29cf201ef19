"""Errors a zeropool user can see.

    concurrent.futures.BrokenExecutor
     ├── InitializerError      the executor's initializer raised on a worker
     ├── BrokerUnreachable     no broker answered in time
     └── ExecutorTerminated    terminate_workers() or kill_workers() stopped a running task
    Exception
     ├── WorkerLostError       a task kept killing its workers, or none was left
     ├── RemoteError           a task's exception that could not be pickled (text only)
     ├── TaskTimeoutError      a task ran past its options(timeout=...) and was stopped
     └── VersionMismatchError  a call could not load on a worker of another Python version
    UserWarning
     ├── UnsatisfiableWarning    tasks need resources that no connected worker has
     └── VersionMismatchWarning  workers run another Python minor version or cloudpickle

A task's own exception is re-raised as itself, with the worker's traceback as
its ``__cause__`` (a ``RemoteTraceback``), as with ProcessPoolExecutor.
"""
from __future__ import annotations

from concurrent.futures import BrokenExecutor

from zeropool.protocol.errors import (
    RemoteError, RemoteTraceback, TaskTimeoutError, VersionMismatchError,
)

__all__ = ["BrokerUnreachable", "ExecutorTerminated", "InitializerError", "RemoteError",
           "RemoteTraceback", "TaskTimeoutError", "UnsatisfiableWarning", "VersionMismatchError",
           "VersionMismatchWarning", "WorkerLostError"]


class InitializerError(BrokenExecutor):
    """Raised when the executor's initializer failed on a worker; the executor is broken."""


class BrokerUnreachable(BrokenExecutor):
    """Raised when no broker answered at the executor's address within the connect timeout."""


class ExecutorTerminated(BrokenExecutor):
    """Raised for a task that was running when ``terminate_workers()`` or
    ``kill_workers()`` stopped its executor."""


class WorkerLostError(Exception):
    """Raised when no worker could finish a task: it was running on too many workers
    that died (a poison task), or no worker was attached while the executor shut down."""


class UnsatisfiableWarning(UserWarning):
    """Warned when tasks need resources that no worker connected to the broker
    has: they stay queued until such a worker joins."""


class VersionMismatchWarning(UserWarning):
    """Warned when workers run another Python minor version or another
    cloudpickle than this client: calls sent by value may not load there."""
