"""What a worker knows of each client beyond its tasks: its initializer (run
once, before its first task here) and its Python version, and when to forget
them (the client has gone and none of its tasks is here any more).
"""
from __future__ import annotations

import logging
import platform
import threading

from zeropool.protocol import Status
from zeropool.protocol.errors import VersionMismatchError
from zeropool.protocol.payload import dumps_exception, loads

log = logging.getLogger("zeropool.worker")


class Initializers:
    """Clients' initializers and Python versions, for the runner's threads."""

    def __init__(self) -> None:
        # Clients that run another Python minor version than this worker: code
        # they send by value is not loaded here (see before).
        self.client_pythons: dict[bytes, str] = {}
        self.frames: dict[bytes, list] = {}  # the runner skips before() while empty
        self._results: dict[bytes, tuple | None] = {}
        self._lock = threading.Lock()
        # Clients gone whose initializers go once their tasks here are done.
        self.forgetting: set[bytes] = set()

    def add(self, client_id: bytes, frames: list) -> None:
        self.frames[client_id] = frames
        self.forgetting.discard(client_id)  # back under the same id: keep this one

    def before(self, client_id: bytes, frames: list) -> tuple | None:
        """From a task's thread, before its call is loaded: the outcome that
        answers the task instead (its client's initializer failed, or the call
        carries code of another Python), or None to go on."""
        if client_id in self.frames:
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
        return None

    def _initialize(self, client_id: bytes) -> tuple | None:
        """Run a client's initializer once; its failure answers all its tasks."""
        try:
            return self._results[client_id]
        except KeyError:
            pass
        with self._lock:
            if client_id not in self._results:
                result = None
                try:
                    initializer, initargs = loads(self.frames[client_id])
                    initializer(*initargs)
                except BaseException as exc:
                    log.warning("initializer of client %s failed: %r", client_id.hex(), exc)
                    result = dumps_exception(exc, Status.INIT_FAILED)
                self._results[client_id] = result
            return self._results[client_id]

    def clients_gone(self, client_ids: list, running) -> None:
        """The broker says these clients have gone: forget them once none of
        their tasks is among ``running`` (keys) any more."""
        self.forgetting.update(client_ids)
        self.forget_idle(running, client_ids)

    def forget_idle(self, running, news: list = ()) -> None:
        """Drop what is known of gone clients that have no task among
        ``running`` any more (``news``: clients just reported gone)."""
        busy = {client_id for client_id, _ in running}
        for client_id in news:
            if client_id in busy:
                log.debug("client %s has gone; its initializer goes when its tasks here end",
                          client_id.decode(errors="replace"))
        for client_id in self.forgetting - busy:
            self.forgetting.discard(client_id)
            # Also whether it ran: a client the broker let back in under the
            # same id sends it again.
            with self._lock:
                self.frames.pop(client_id, None)
                self._results.pop(client_id, None)
            self.client_pythons.pop(client_id, None)
            log.debug("dropped the initializer of client %s, which has gone",
                      client_id.decode(errors="replace"))


def _carries_code(frames: list) -> bool:
    """Whether a call's pickle rebuilds a code object (cloudpickle sends
    functions by value so), which only the Python minor version that made
    it can load safely: loading another's may even crash the interpreter."""
    stream = frames[0]
    return b"CodeType" in (stream if type(stream) is bytes else memoryview(stream).tobytes())
