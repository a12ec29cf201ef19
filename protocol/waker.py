"""A wake-up that any thread can raise and a poll loop can wait on.

Threads may not touch another thread's ZeroMQ socket, so they put work on a
queue and raise this; the socket's owner polls the read end next to its
socket. Repeated wakes before the owner reads cost one write.

The pipe is closed only when the Waker is garbage collected: a thread that
still holds it may wake it after its owner has stopped, and writing to a
closed, reused descriptor number would corrupt someone else's file.
"""
from __future__ import annotations

import os
import weakref


def _close_pipe(read_fd: int, write_fd: int) -> None:
    os.close(read_fd)
    os.close(write_fd)


class Waker:
    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)
        self._raised = False
        # Not at interpreter exit: I/O threads may still be finishing then.
        weakref.finalize(self, _close_pipe, self.fd, self._write_fd).atexit = False

    def wake(self) -> None:
        if not self._raised:
            self._raised = True
            try:
                os.write(self._write_fd, b"!")
            except BlockingIOError:
                pass  # full: it is raised already

    def clear(self, signalled: bool = True) -> None:
        """Called by the owner before it drains its queue, so no wake is missed.
        ``signalled=False`` (its poll did not report the pipe) skips the reads
        when no wake is raised: pipe reads cost several µs each here.

        The pipe is emptied before the flag drops: a wake() in between then
        finds the flag still up and its item is drained with the queue; the
        other order could leave the flag up over an empty pipe for good.
        """
        if not signalled and not self._raised:
            return
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass
        self._raised = False
