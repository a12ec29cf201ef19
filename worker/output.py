"""What tasks print goes back to the client that submitted them.

``sys.stdout`` and ``sys.stderr`` are replaced by routers: text written by a
thread while it runs a task is handed to ``sink`` with that task's key (the
I/O loop sends it ahead of the task's result, so a client prints a task's
output before its future completes); anything else reaches the worker's own
stream as before. Output written below Python (``os.write``, C libraries,
child processes) is not captured.
"""
from __future__ import annotations

import io
import sys
import threading
from typing import Callable

STDOUT, STDERR = 1, 2

# Per thread: ``key``, the task it runs (None or unset: none); the runner sets it.
current_task = threading.local()


class _Router(io.TextIOBase):
    def __init__(self, stream_no: int, real, sink: Callable[[tuple, int, str], None]) -> None:
        self._stream_no = stream_no
        self._real = real
        self._sink = sink

    def write(self, text: str) -> int:
        key = getattr(current_task, "key", None)
        if key is None:
            return self._real.write(text)
        if text:
            self._sink(key, self._stream_no, str(text))
        return len(text)

    def flush(self) -> None:
        self._real.flush()

    def writable(self) -> bool:
        return True

    # Code that asks the stream about itself (isatty, fileno, encoding) gets the real one's answer.
    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def fileno(self) -> int:
        return self._real.fileno()

    def isatty(self) -> bool:
        return self._real.isatty()

    @property
    def encoding(self) -> str:
        return self._real.encoding


def capture(sink: Callable[[tuple, int, str], None]) -> None:
    """Route tasks' prints in this process to ``sink(key, stream, text)``."""
    for name, stream_no in (("stdout", STDOUT), ("stderr", STDERR)):
        stream = getattr(sys, name)
        real = stream._real if isinstance(stream, _Router) else stream
        setattr(sys, name, _Router(stream_no, real, sink))


def current() -> tuple | None:
    """The key of the task the calling thread runs (None: no task)."""
    return getattr(current_task, "key", None)
