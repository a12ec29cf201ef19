"""Serialization of calls and results: cloudpickle, protocol 5, out-of-band buffers.

Used by clients and workers only. The broker never imports this module: it
forwards payload frames without looking inside them.

A payload is a list of frames: the pickle stream first, then one frame per
large buffer that supports out-of-band pickling (NumPy arrays,
``pickle.PickleBuffer``), so that ZeroMQ sends them without copying them into
the stream. The pickler has no hook for ``bytes``, and copies them into the
stream; so a large one that is an argument or a result itself (not inside a
container) is wrapped to travel out of band too (_LargeBytes). A ``bytearray``
is still copied: it is mutable, and the caller may change or resize it while
the call waits to be sent.

Two shortcuts keep a small call cheap to send, each exact (what arrives is what
cloudpickle alone would have sent):

- A function that cloudpickle pickles by reference (a module-level function of
  an importable module) is pickled once per function object; the call carries
  those bytes, and each worker unpickles them once.
- Arguments and results made only of builtin values (numbers, strings, bytes,
  builtin containers) are pickled by the stdlib's C pickler without
  cloudpickle's per-pickle set-up; anything else goes to cloudpickle.
"""
from __future__ import annotations

import io
import pickle
import sys
import traceback
import types
import weakref
from typing import Any, Callable, Sequence

import cloudpickle

from zeropool.protocol.errors import RemoteError, RemoteTraceback
from zeropool.protocol.messages import Status

__all__ = ["dumps", "loads", "dumps_call", "loads_call", "dumps_result",
           "dumps_exception", "loads_result", "run_chunk", "send_module_by_value"]

# Buffers smaller than this stay inside the pickle stream: a frame of its own
# costs more than copying a few kilobytes.
OUT_OF_BAND_MIN = 64 * 1024

_OUR_PACKAGES = frozenset({"zeropool"})

# Values the C pickler writes without ever asking reducer_override: for these
# the stdlib's pickle.dumps is the plain pickler, without its set-up.
_ATOMS = frozenset({type(None), bool, int, float, str})

# Function -> (its by-reference pickle, the module it was found in, the names
# leading to it there), or None where cloudpickle sends it by value. Weak, so
# that a lambda made per call does not pile up here.
_function_pickles: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_generation = 0  # bumped when the pickles above are forgotten
# Which modules cloudpickle sends by value changes what a function pickles to.
_by_value_modules = getattr(getattr(cloudpickle, "cloudpickle", None),
                            "_PICKLE_BY_VALUE_MODULES", None)
_by_value_seen: frozenset = frozenset()

# Worker side: a function's by-reference pickle -> the function.
_loaded_functions: dict[bytes, Callable] = {}
_LOADED_FUNCTIONS_MAX = 4096


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
    _forget_function_pickles()
    return True


def _forget_function_pickles() -> None:
    global _generation
    _generation += 1
    _function_pickles.clear()


def dumps(obj: Any) -> list:
    """Pickle ``obj`` into frames: the stream, then its large buffers."""
    if type(obj) in _ATOMS:
        return [pickle.dumps(obj, protocol=5)]
    obj = _apart(obj)
    if type(obj) in _PLAIN:
        return _plain_or_cloudpickle(obj)
    return _dumps(obj, cloudpickle.dumps)


class _LargeBytes:
    """A large ``bytes`` that travels as a frame of its own and arrives as
    ``bytes`` (one copy, out of the received frame)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: int) -> tuple:
        return bytes, (pickle.PickleBuffer(self.data),)


def _is_large_bytes(value: Any) -> bool:
    return type(value) is bytes and len(value) >= OUT_OF_BAND_MIN


def _apart(value: Any) -> Any:
    """``value`` wrapped to travel out of band if it is large bytes, else itself."""
    return _LargeBytes(value) if _is_large_bytes(value) else value


def _args_apart(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Large bytes among the arguments wrapped, each object once, so that one
    passed twice still travels once and arrives as one object."""
    for value in (*args, *kwargs.values()) if kwargs else args:
        if type(value) is bytes and len(value) >= OUT_OF_BAND_MIN:
            break
    else:
        return args, kwargs
    wrapped: dict[int, _LargeBytes] = {}

    def apart(value: Any) -> Any:
        if not _is_large_bytes(value):
            return value
        if id(value) not in wrapped:
            wrapped[id(value)] = _LargeBytes(value)
        return wrapped[id(value)]

    return tuple(map(apart, args)), {key: apart(value) for key, value in kwargs.items()}


# Types the C pickler pickles itself (and _LargeBytes, which _PlainPickler
# reduces); containers may still hold anything else, which it refuses.
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, bytearray,
                    tuple, list, dict, set, frozenset, _LargeBytes})


class _NotPlain(Exception):
    pass


class _PlainPickler(pickle.Pickler):
    """The C pickler, refusing anything that is not a builtin value.

    The C pickler handles None, bools, numbers, strings, bytes and the builtin
    containers itself and asks ``reducer_override`` about everything else
    (functions, classes, instances): such a stream holds only builtin values,
    which cloudpickle would have pickled the same way.
    """

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is _LargeBytes:
            return obj.__reduce_ex__(5)
        if obj is bytes:  # _LargeBytes' reconstructor, as a global
            return NotImplemented
        raise _NotPlain


def _plain_or_cloudpickle(obj: Any) -> list:
    """``obj`` by the C pickler if it holds only builtin values, else by cloudpickle."""
    try:
        return _dumps(obj, _plain_pickle)
    except Exception:  # cloudpickle may manage it, or raises the error to report
        return _dumps(obj, cloudpickle.dumps)


def _plain_pickle(obj: Any, protocol: int, buffer_callback: Callable) -> bytes:
    file = io.BytesIO()
    _PlainPickler(file, protocol, buffer_callback=buffer_callback).dump(obj)
    return file.getvalue()


def _dumps(obj: Any, pickler: Callable) -> list:
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

    stream = pickler(obj, protocol=5, buffer_callback=out_of_band)
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
    args, kwargs = _args_apart(args, kwargs)
    reference = _function_pickle(fn)
    if reference is None:
        return _dumps((fn, args, kwargs), cloudpickle.dumps)
    if not kwargs and all(type(arg) in _ATOMS for arg in args):
        return [pickle.dumps((reference, args, kwargs), protocol=5)]
    return _plain_or_cloudpickle((reference, args, kwargs))


def _function_pickle(fn: Any) -> bytes | None:
    """``fn``'s pickle if cloudpickle sends it by reference; None otherwise."""
    global _by_value_seen
    if type(fn) is not types.FunctionType or _by_value_modules is None:
        return None
    if _by_value_modules != _by_value_seen:  # someone called register_pickle_by_value
        _forget_function_pickles()
        _by_value_seen = frozenset(_by_value_modules)
    entry = _function_pickles.get(fn, ())
    if entry is None:
        return None
    if entry:
        # Still where it was found? After a reload or a monkeypatch of its
        # module, cloudpickle would send it by value.
        reference, module, names = entry
        if sys.modules.get(fn.__module__) is module:
            found = module
            for name in names:
                found = getattr(found, name, None)
            if found is fn:
                return reference
    generation = _generation
    entry = None
    try:
        reference = pickle.dumps(fn, protocol=5)
        # Equal only if cloudpickle also pickles it by reference, not by value
        # (a function of __main__, a closure, a module sent by value).
        if reference == cloudpickle.dumps(fn, protocol=5):
            entry = (reference, sys.modules[fn.__module__], tuple(fn.__qualname__.split(".")))
    except Exception:
        pass
    if generation == _generation:  # not forgotten meanwhile by another thread
        _function_pickles[fn] = entry
    return entry[0] if entry else None


def loads_call(frames: Sequence) -> tuple[Callable, tuple, dict]:
    fn, args, kwargs = loads(frames)
    if type(fn) is bytes:  # a function sent by reference (dumps_call)
        reference = fn
        fn = _loaded_functions.get(reference)
        if fn is None:
            fn = pickle.loads(reference)
            if len(_loaded_functions) >= _LOADED_FUNCTIONS_MAX:
                _loaded_functions.clear()
            _loaded_functions[reference] = fn
    return fn, args, kwargs


# The user's code runs inside pickling (``__reduce__``, ``__getstate__``, ``__str__``)
# and may raise anything, SystemExit and KeyboardInterrupt included: dumps_result
# and dumps_exception catch BaseException, so that every task still gets an answer.

def dumps_result(value: Any) -> tuple[Status, list]:
    """Frames for a return value, or for the error saying why it would not pickle."""
    try:
        return Status.OK, dumps(value)
    except BaseException as exc:
        error = pickle.PicklingError(
            f"the task's result of type {type(value).__name__} could not be pickled: "
            f"{type(exc).__name__}: {_safe_str(exc)}")
        error.__cause__ = exc
        return dumps_exception(error)


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except BaseException:
        return f"<str() of the {type(value).__name__} failed>"


def _format(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:
        return f"{type(exc).__qualname__} (its traceback could not be formatted)\n"


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
    except BaseException:
        substitute = RemoteError(type(exc).__qualname__, _safe_str(exc), tb)
        return status, dumps(substitute)


def loads_result(status: int, frames: Sequence) -> tuple[bool, Any]:
    """``(True, value)`` for a result, ``(False, exception)`` for a failure."""
    value = loads(frames)
    return status == Status.OK, value


def run_chunk(fn: Callable, chunk: Sequence[tuple]) -> list:
    """Runs one ``map(..., chunksize=n)`` chunk on a worker."""
    return [fn(*args) for args in chunk]
