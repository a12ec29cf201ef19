"""Exceptions that a worker builds and a client raises. No pickling here."""
from __future__ import annotations

__all__ = ["RemoteError", "RemoteTraceback", "TaskTimeoutError", "VersionMismatchError"]


class RemoteTraceback(Exception):
    """Carries a worker's traceback text; attached as ``__cause__`` of a task's exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RemoteError(Exception):
    """Raised when a task's exception could not be sent back as itself.

    It keeps the original type's name, its message and the worker's traceback
    text, so the failure is still readable.
    """

    def __init__(self, type_name: str, message: str, tb: str) -> None:
        super().__init__(type_name, message, tb)
        self.type_name = type_name
        self.message = message
        self.tb = tb

    def __str__(self) -> str:
        return (f"{self.type_name}: {self.message} (the exception could not be pickled, "
                f"so it is reported as text; the worker's traceback follows)\n{self.tb}")


class TaskTimeoutError(Exception):
    """Raised for a task that ran longer than its ``options(timeout=...)``: it
    was stopped by replacing its worker process (a thread cannot be stopped).
    Not a ``TimeoutError``, which ``Future.result(timeout)`` raises for a task
    not done yet."""


class VersionMismatchError(Exception):
    """Raised for a task whose call carries code (a function sent by value)
    made by another Python minor version than its worker runs: such code is
    for one Python version only, so the worker does not load it."""
