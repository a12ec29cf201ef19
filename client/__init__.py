"""zeropool's client: a ``concurrent.futures.Executor`` whose workers may be anywhere."""
from __future__ import annotations

from zeropool.client.errors import (
    BrokerUnreachable, ExecutorTerminated, InitializerError, RemoteError, RemoteTraceback,
    TaskTimeoutError, UnsatisfiableWarning, VersionMismatchError, VersionMismatchWarning,
    WorkerLostError,
)
from zeropool.client.executor import Executor, ExecutorView, current_executor
from zeropool.protocol.security import Security

__all__ = ["BrokerUnreachable", "Executor", "ExecutorTerminated", "ExecutorView",
           "InitializerError", "RemoteError", "RemoteTraceback", "Security",
           "TaskTimeoutError", "UnsatisfiableWarning", "VersionMismatchError",
           "VersionMismatchWarning", "WorkerLostError", "current_executor"]
