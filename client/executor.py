"""``Executor``: a ``concurrent.futures.Executor`` backed by a zeropool broker."""
from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from concurrent.futures import Executor as _BaseExecutor
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator

from client.cluster import LocalCluster
from client.session import Session, TaskFuture
from protocol import defaults
from protocol.payload import dumps, run_chunk
from protocol.security import Security

ENV_ADDRESS = "ZEROPOOL_ADDRESS"
TASK_OUTPUT = ("plain", "prefix", None)

__all__ = ["Executor"]


class Executor(_BaseExecutor):
    """Runs calls on zeropool workers; a drop-in for ``ProcessPoolExecutor``.

    With no ``address`` (and no ``$ZEROPOOL_ADDRESS``) it starts an embedded
    local cluster: a broker and ``max_workers`` worker processes (default
    ``os.cpu_count()``) on loopback, stopped on shutdown, at interpreter exit,
    or when this process dies.

    With ``address`` (a running broker; also accepted as the first argument,
    or taken from ``$ZEROPOOL_ADDRESS``) it uses every worker attached to that
    broker; ``max_workers`` then caps how many of this executor's tasks may be
    queued or running at the broker at once (default: no cap).

    ``security``: for a broker with CURVE on, a ``Security`` holding the
    broker's public key and this client's key pair, e.g.
    ``Security.from_files("keys/broker.key", "keys/client.key_secret")``;
    by default taken from ``$ZEROPOOL_CURVE_SERVER_KEY`` and
    ``$ZEROPOOL_CURVE_KEY`` when they are set.

    ``task_output``: what tasks print on the workers is printed here, on
    this process's stdout and stderr, before their futures complete:
    ``"plain"`` as printed, ``"prefix"`` with ``[host:pid]`` of the worker
    before each line, ``None`` not at all.

    ``initializer(*initargs)`` runs once in each worker process before that
    worker runs this executor's first task; if it raises, the executor breaks
    (``InitializerError``, a ``BrokenExecutor``), as the stdlib pools do.
    """

    def __init__(self, max_workers: int | str | None = None, *, address: str | None = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple = (),
                 connect_timeout: float = defaults.CONNECT_TIMEOUT,
                 security: Security | None = None,
                 task_output: str | None = "plain") -> None:
        if isinstance(max_workers, str) and address is None:
            address, max_workers = max_workers, None
        if address is None:
            address = os.environ.get(ENV_ADDRESS) or None
        if security is not None and not isinstance(security, Security):
            raise TypeError(f"security must be a client.Security, not {type(security).__name__}")
        if address is None and security is not None:
            raise ValueError("security applies to a broker given by address; the embedded "
                             "cluster listens on loopback only and needs none")
        if max_workers is not None:
            if not isinstance(max_workers, int) or isinstance(max_workers, bool):
                raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if task_output not in TASK_OUTPUT:
            raise ValueError(f"task_output must be one of {TASK_OUTPUT}, not {task_output!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        init_frames = dumps((initializer, tuple(initargs))) if initializer is not None else []
        self._cluster: LocalCluster | None = None
        if address is None:
            self._cluster = LocalCluster(max_workers or os.cpu_count() or 1)
            address, cap = self._cluster.address, None
        else:
            cap = max_workers
            if security is None:
                security = Security.from_environment()
        try:
            self._session = Session(address, init_frames=init_frames, max_in_flight=cap,
                                    connect_timeout=connect_timeout, security=security,
                                    task_output=task_output,
                                    on_close=self._cluster.close if self._cluster else None)
        except BaseException:
            if self._cluster is not None:
                self._cluster.close()
            raise
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        # Dropped without shutdown(): finish the pending work, then disconnect.
        weakref.finalize(self, self._session.close, False)

    @property
    def address(self) -> str:
        """The broker's address (the embedded one's, if this executor started it)."""
        return self._session.address

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        with self._shutdown_lock:
            if self._session.broken is not None:
                raise self._session.broken
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            return self._session.submit(fn, args, kwargs)

    submit.__doc__ = _BaseExecutor.submit.__doc__

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:
        """Like ``ProcessPoolExecutor.map``: results in order, lazily; with
        ``chunksize`` > 1 items travel and run in chunks of that size."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        if chunksize == 1:
            fs = [self.submit(fn, *args) for args in zip(*iterables)]
            return self._results(fs, end_time, chunked=False)
        items = zip(*iterables)
        fs = [self.submit(run_chunk, fn, chunk)
              for chunk in iter(lambda: tuple(itertools.islice(items, chunksize)), ())]
        return self._results(fs, end_time, chunked=True)

    def _results(self, fs: list, end_time: float | None, chunked: bool) -> Iterator:
        # A generator of its own, so that map() submits at once, as the stdlib's does.
        try:
            fs.reverse()
            while fs:
                future = fs[-1]
                timeout = None if end_time is None else end_time - time.monotonic()
                value = future.result(timeout)
                fs.pop()
                if chunked:
                    yield from value
                else:
                    yield value
        finally:
            # One request for all of them, not a round trip each.
            self._session.cancel([f for f in fs if isinstance(f, TaskFuture)])

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            self._session.cancel(self._session.pending_futures())
        self._session.close(wait=wait)

    shutdown.__doc__ = _BaseExecutor.shutdown.__doc__
