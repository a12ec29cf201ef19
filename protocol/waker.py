"""A wake-up that any thread can raise and a poll loop can wait on.

Threads may not touch another thread's ZeroMQ socket, so they put work on a
queue and raise this; the socket's owner polls the read end next to its
socket. Repeated wakes before the owner reads cost one write.
"""
from __future__ import annotations

import os


class Waker:
    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)
        self._raised = False

    def wake(self) -> None:
        if not self._raised:
            self._raised = True
            try:
                os.write(self._write_fd, b"!")
            except (BlockingIOError, OSError):
                pass  # full (already raised) or closed (owner is gone)

    def clear(self) -> None:
        """Called by the owner before it drains its queue, so no wake is missed."""
        self._raised = False
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._write_fd)
