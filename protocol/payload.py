"""Serialization of calls and results: cloudpickle, protocol 5, out-of-band buffers.

Used by clients and workers only. The broker never imports this module: it
forwards payload frames without looking inside them.

A payload is a list of frames: the pickle stream first, then one frame per
large buffer that supports out-of-band pickling (NumPy arrays,
``pickle.PickleBuffer``), so that ZeroMQ sends them without copying them into
the stream. Plain ``bytes`` are always copied in band: the pickler gives no
hook for them.
"""
from __future__ import annotations

import pickle
import sys
import traceback
from typing import Any, Callable, Sequence

import cloudpickle

from protocol.errors import RemoteError, RemoteTraceback
from protocol.messages import Status

__all__ = ["dumps", "loads", "dumps_call", "loads_call", "dumps_result",
           "dumps_exception", "loads_result", "run_chunk", "send_module_by_value"]

# Buffers smaller than this stay inside the pickle stream: a frame of its own
# costs more than copying a few kilobytes.
OUT_OF_BAND_MIN = 64 * 1024

_OUR_PACKAGES = frozenset({"protocol", "client", "worker", "broker"})


def send_module_by_value(name: str) -> bool:
    """Make functions and classes of module ``name`` travel by value from now on.

    cloudpickle sends functions of importable modules by reference, which
    keeps module state shared, as with ProcessPoolExecutor. When a worker
    cannot import such a module (a test module, a script's sibling file), the
    client calls this and sends the call again. Returns False if ``name`` is
    not a module of the user's that this process has loaded.
    """
    module = sys.modules.get(name)
    if module is None or getattr(module, "__file__", None) is None or name == "__main__":
        return False
    if name.partition(".")[0] in _OUR_PACKAGES:
        return False
    cloudpickle.register_pickle_by_value(module)
    return True


def dumps(obj: Any) -> list:
    """Pickle ``obj`` into frames: the stream, then its large buffers."""
    buffers: list = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        if view.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(view)
        return False

    stream = cloudpickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
    return [stream, *buffers]


def _view(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def loads(frames: Sequence) -> Any:
    """The inverse of ``dumps``; frames may be bytes or ``zmq.Frame``."""
    if not frames:
        raise pickle.UnpicklingError("empty payload")
    return pickle.loads(_view(frames[0]), buffers=[_view(f) for f in frames[1:]])


def dumps_call(fn: Callable, args: tuple, kwargs: dict) -> list:
    """Frames for one call; raises what pickling raises (nothing is sent then)."""
    return dumps((fn, args, kwargs))


def loads_call(frames: Sequence) -> tuple[Callable, tuple, dict]:
    fn, args, kwargs = loads(frames)
    return fn, args, kwargs


def dumps_result(value: Any) -> tuple[Status, list]:
    """Frames for a return value, or for the error saying why it would not pickle."""
    try:
        return Status.OK, dumps(value)
    except Exception as exc:
        error = pickle.PicklingError(
            f"the task's result of type {type(value).__name__} could not be pickled: "
            f"{type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return dumps_exception(error)


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class _ExceptionWithTraceback:
    """Pickles an exception with its traceback text, as ProcessPoolExecutor does."""

    def __init__(self, exc: BaseException, tb: str) -> None:
        self.exc = exc
        self.tb = tb

    def __reduce__(self) -> tuple:
        return _rebuild_exception, (self.exc, self.tb)


def dumps_exception(exc: BaseException, status: Status = Status.RAISED) -> tuple[Status, list]:
    """Frames for an exception; a RemoteError stands in if it cannot round-trip."""
    tb = f'\n"""\n{_format(exc)}"""'
    exc.__traceback__ = None
    try:
        frames = dumps(_ExceptionWithTraceback(exc, tb))
        loads(frames)  # an exception may pickle and still fail to unpickle
        return status, frames
    except Exception:
        substitute = RemoteError(type(exc).__qualname__, str(exc), tb)
        return status, dumps(substitute)


def loads_result(status: int, frames: Sequence) -> tuple[bool, Any]:
    """``(True, value)`` for a result, ``(False, exception)`` for a failure."""
    value = loads(frames)
    return status == Status.OK, value


def run_chunk(fn: Callable, chunk: Sequence[tuple]) -> list:
    """Runs one ``map(..., chunksize=n)`` chunk on a worker."""
    return [fn(*args) for args in chunk]
