"""zeropool's client: a ``concurrent.futures.Executor`` whose workers may be anywhere."""
from __future__ import annotations

from zeropool.client.errors import (
    BrokerUnreachable, ExecutorTerminated, InitializerError, RemoteError, RemoteTraceback, WorkerLostError,
)
from zeropool.client.executor import Executor
from zeropool.protocol.security import Security

__all__ = ["BrokerUnreachable", "Executor", "ExecutorTerminated", "InitializerError", "RemoteError",
           "RemoteTraceback", "Security", "WorkerLostError"]
