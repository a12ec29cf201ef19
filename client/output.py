"""What remote tasks print, shown here: whole lines, never two tasks' mixed."""
from __future__ import annotations

import os
import sys
from typing import Container


class TaskOutput:
    """Shows task output rows ``(task_id, stream, text, worker)`` on this
    process's stdout (stream 1) and stderr, whole lines at a time: print()
    writes a line and its newline apart, and they may arrive in two messages,
    with other tasks' lines between. ``mode``: "plain", or "prefix" to begin
    each line with its worker's name."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        # (task, stream) -> (the start of a line it is still printing, its worker): held
        # until the line ends or the task does, so that lines of tasks never mix.
        self.partial: dict[tuple[int, int], tuple[str, str]] = {}

    def show(self, rows: list, pending: Container[int]) -> None:
        """Write the whole lines of ``rows``, of tasks still ``pending``."""
        runs: list[tuple[int, list[str]]] = []  # consecutive rows of one stream, joined
        for task_id, stream, text, worker in rows:
            if task_id not in pending:
                continue  # a copy from a run whose result already arrived
            stream = 1 if stream == 1 else 2
            key = (task_id, stream)
            held = self.partial.pop(key, None)
            if held is not None:
                text = held[0] + text
            end = max(text.rfind("\n"), text.rfind("\r")) + 1
            if end < len(text):
                self.partial[key] = (text[end:], worker)
                text = text[:end]
            if not text:
                continue
            text = self._prefixed(text, worker)
            if runs and runs[-1][0] == stream:
                runs[-1][1].append(text)
            else:
                runs.append((stream, [text]))
        for stream, pieces in runs:
            write_output(stream, "".join(pieces))

    def flush(self, task_id: int) -> None:
        """A task ended: the line it left open is shown as it is."""
        for stream in (1, 2):
            held = self.partial.pop((task_id, stream), None)
            if held is not None:
                write_output(stream, self._prefixed(*held))

    def _prefixed(self, text: str, worker: str) -> str:
        if self.mode != "prefix":
            return text
        return "".join(f"[{worker}] {line}" for line in text.splitlines(keepends=True))


def write_output(stream: int, text: str) -> None:
    """Write task output as a process pool's children do: straight to the file
    descriptor. Through ``sys.stdout`` it could land between a line that this
    process prints and its newline, which ``print`` writes separately. A
    replaced ``sys.stdout`` (a notebook, a redirect, a test's capture) is
    written to instead. Closed or missing streams drop the output."""
    out = sys.stdout if stream == 1 else sys.stderr
    fd = None
    if out is not None and out is (sys.__stdout__ if stream == 1 else sys.__stderr__):
        try:
            fd = out.fileno()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        if fd is not None:
            data = memoryview(text.encode(out.encoding or "utf-8", "backslashreplace"))
            while data:
                data = data[os.write(fd, data):]
        else:
            out.write(text)
            out.flush()
    except (OSError, ValueError, AttributeError):
        pass
