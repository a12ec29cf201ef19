"""zeropool: ``concurrent.futures`` whose pool spans processes and machines.

    from zeropool import Executor      # was: concurrent.futures.ProcessPoolExecutor

The programs and their parts live at ``zeropool.broker``, ``zeropool.worker``,
``zeropool.client`` and ``zeropool.protocol``. The client's names load on first
use (as ``concurrent.futures`` loads ``ProcessPoolExecutor``), so that
``import zeropool.broker`` loads no unpickler.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["BrokerUnreachable", "Executor", "ExecutorTerminated", "ExecutorView",
           "InitializerError", "RemoteError", "RemoteTraceback", "Security",
           "TaskTimeoutError", "UnsatisfiableWarning", "VersionMismatchError",
           "VersionMismatchWarning", "WorkerLostError", "current_executor"]

if TYPE_CHECKING:
    from zeropool.client import (
        BrokerUnreachable, Executor, ExecutorTerminated, ExecutorView, InitializerError,
        RemoteError, RemoteTraceback, Security, TaskTimeoutError, UnsatisfiableWarning,
        VersionMismatchError, VersionMismatchWarning, WorkerLostError,
        current_executor,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from zeropool import client
        value = getattr(client, name)
        globals()[name] = value  # once: later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
