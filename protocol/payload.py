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

Three shortcuts keep a small call cheap to send, each exact (what arrives is what
cloudpickle alone would have sent):

- A function that cloudpickle pickles by reference (a module-level function of
  an importable module) is pickled once per function object; the call carries
  those bytes, and each worker unpickles them once.
- A function that cloudpickle pickles by value (defined in ``__main__``, a
  lambda, a closure) is pickled again only when what its pickle is made of has
  changed; the call carries those bytes, and each worker unpickles them again
  only when they differ or the copy it kept has changed. See "By-value
  functions" below for what counts as a change.
  A ``map(chunksize=n)`` chunk carries its function the same way, once per
  chunk as its pickle, not pickled into the chunk.
- Arguments and results made only of builtin values (numbers, strings, bytes,
  builtin containers) are pickled by the stdlib's C pickler without
  cloudpickle's per-pickle set-up; anything else goes to cloudpickle.

By-value functions
------------------

cloudpickle pickles such a function as its code and its state: name,
qualname, module, doc, defaults, keyword defaults, annotations, ``__dict__``,
closure cells, the globals its code names (and the module attributes that
relative imports need), and in turn the state of each of those values. The
client keeps the pickle per code object, with a snapshot of that state taken
by identity (``_Snapshot``), and reuses it only while every object of the
state is still the same object, holding the same objects. So the next call
is pickled afresh after:

- the function redefined (a new code object), or its ``__code__``,
  ``__defaults__``, ``__name__``, ``__doc__``... reassigned;
- a global its code names rebound, deleted or newly defined, at any depth (a
  helper function of ``__main__`` that it calls, and that helper's globals);
- a closure cell, a default, ``__dict__`` or the annotations changed, or a
  list, dict or set among all these values changed in place (items compared
  by identity and in order: an equal but new object counts as a change);
- a function or class that travels by reference no longer found under its
  name in its module (cloudpickle would then send it by value), or a module
  newly sent by value (``register_pickle_by_value``);
- a change in the number of ``sys.modules`` entries, where the state holds
  a package (cloudpickle lists the package's loaded submodules that the code
  names).

State that a snapshot cannot check cheaply is not cached, and the call is
pickled whole by cloudpickle each time, as it would be without the cache: an
instance of any class (of ``__main__`` or not), a class defined in
``__main__``, a ``bytearray``, a subclass of a builtin container, a bound
method, a module sent by value, or more than ``_SNAPSHOT_MAX`` objects to
compare; and a function once found with such state stays pickled whole, as
does a function's code once its state has changed before each of
``_VALUE_MISSES_MAX`` calls in a row (a global the script sets per call). A call whose arguments share an object with the function's state
(the function itself, a global list it reads, a function with the same
globals) is also pickled whole, so that the worker gets one object, as
cloudpickle would send it.

A worker keeps each function it unpickles, per pickle, from the second call
that brings that pickle, with a snapshot of its own. When a call has changed
that copy's state (a global rebound, a list appended to), it unpickles that
function per call from then on, so each call starts from the state the
client sent.

Not detected: a removal from ``sys.modules`` together with an addition
between two calls (only the count is compared); and, on a worker, a call
that changes its function's state while another call of that function runs
on another thread of the same worker (``--threads``): the two calls share
the change, as calls of an importable function share its module.
"""
from __future__ import annotations

import io
import operator
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

# Worker side: a function's pickle -> (the function, its _Snapshot if it came
# by value, else None).
_loaded_functions: dict[bytes, tuple] = {}
_LOADED_FUNCTIONS_MAX = 4096
# Bytes of pickles kept above: the client sends by-value pickles of up to
# _VALUE_PICKLE_MAX, so a client that keeps redefining functions could
# otherwise make a worker keep 4096 of them.
_LOADED_BYTES_MAX = 32 << 20
_loaded_bytes = 0


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
    _value_pickles.clear()
    _not_cacheable.clear()


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
    stream = pickler(obj, protocol=5, buffer_callback=_out_of_band(buffers))
    return [stream, *buffers]


def _out_of_band(buffers: list) -> Callable[[pickle.PickleBuffer], bool]:
    """A buffer_callback that keeps large contiguous buffers out of the stream."""

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        if view.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(view)
        return False

    return out_of_band


def _view(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def loads(frames: Sequence) -> Any:
    """The inverse of ``dumps``; frames may be bytes or ``zmq.Frame``."""
    if not frames:
        raise pickle.UnpicklingError("empty payload")
    return pickle.loads(_view(frames[0]), buffers=[_view(f) for f in frames[1:]])


def dumps_call(fn: Callable, args: tuple, kwargs: dict) -> list:
    """Frames for one call; raises what pickling raises (nothing is sent then)."""
    if fn is run_chunk and len(args) == 2 and not kwargs:
        frames = _dumps_chunk(*args)
        if frames is not None:
            return frames
    args, kwargs = _args_apart(args, kwargs)
    reference = _function_pickle(fn)
    if reference is not None:
        if not kwargs and all(type(arg) in _ATOMS for arg in args):
            return [pickle.dumps((reference, args, kwargs), protocol=5)]
        return _plain_or_cloudpickle((reference, args, kwargs))
    entry = _value_pickle(fn)
    if entry is not None:
        value, snapshot = entry
        if not kwargs and all(type(arg) in _ATOMS for arg in args):
            return [pickle.dumps((value, args, kwargs), protocol=5)]
        frames = _dumps_apart((value, args, kwargs), fn, snapshot)
        if frames is not None:
            return frames
    return _dumps((fn, args, kwargs), cloudpickle.dumps)


def _dumps_chunk(fn: Callable, chunk: Sequence[tuple]) -> list | None:
    """A ``map(chunksize=n)`` chunk with its function as that function's own
    pickle, kept as for a call (loads_call restores it), rather than pickled
    into each chunk; None where it must be pickled whole with the chunk."""
    reference = _function_pickle(fn)
    if reference is not None:
        return _plain_or_cloudpickle((_run_chunk_pickle(), (reference, chunk), {}))
    entry = _value_pickle(fn)
    if entry is None:
        return None
    value, snapshot = entry
    return _dumps_apart((_run_chunk_pickle(), (value, chunk), {}), fn, snapshot)


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


# -- by-value functions (see the module docstring) -----------------------------

_cloudpickle = getattr(cloudpickle, "cloudpickle", None)
# cloudpickle's own rules for what a function's pickle holds; without them
# (another cloudpickle) by-value functions are pickled per call.
_code_globals = getattr(_cloudpickle, "_extract_code_globals", None)
_should_pickle_by_reference = getattr(_cloudpickle, "_should_pickle_by_reference", None)
_VALUE_CACHE = (_code_globals is not None and _should_pickle_by_reference is not None
                and _by_value_modules is not None)

# id(code object) -> (the code object, [(pickle or None, _Snapshot)], newest
# first, misses in a row). Keyed by code, so that a lambda made anew per call
# with the same state still hits; by id, as code objects compare by content.
# The entry holds its code, so the id is not reused while it is here. A pickle
# of None is too large to keep: the call is pickled whole, its buffers out of band.
_value_pickles: dict[int, tuple] = {}
# A function whose state changes before every call (a global set per call)
# would pay for a snapshot and two pickles per call (one of them on the
# worker): after this many misses in a row, its code is pickled whole.
_VALUE_MISSES_MAX = 8
# Functions whose state a snapshot could not vouch for, once: pickled whole
# from then on, without looking again (looking costs up to a snapshot's walk).
_not_cacheable: weakref.WeakSet = weakref.WeakSet()
_VALUE_CODES_MAX = 1024
_VALUE_PICKLES_PER_CODE = 4  # closures of one factory, submitted in turn
_VALUE_PICKLE_MAX = OUT_OF_BAND_MIN
# Objects a snapshot may read per call (each costs about 0.05 µs); a larger
# state is pickled per call, where pickling costs more but holding it would
# make every call pay to check it.
_SNAPSHOT_MAX = 512

# Values whose pickle is fixed by their identity and that hold nothing else.
_IMMUTABLE = frozenset({type(None), bool, int, float, complex, str, bytes, range,
                        type(...), type(NotImplemented), types.CodeType})
# Module attributes cloudpickle copies into a by-value function's globals.
_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")
_MISSING = object()  # a global the code names, not defined; an empty cell
_SELF = object()  # in a snapshot: the function it is checked against
_END = object()  # in a snapshot: where a dict's items end


class _NotCacheable(Exception):
    """The state holds an object a snapshot cannot vouch for."""


def _cell_contents(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # empty
        return _MISSING


def _items(mapping: dict) -> tuple:
    return (*mapping, *mapping.values())


def _function_reader(fn: types.FunctionType) -> Callable[[types.FunctionType], tuple]:
    """Reads what cloudpickle pickles of a function like ``fn``: its code and
    attributes, the items of its dicts, its cells, the globals its code names.
    Which of those globals ``fn`` has is looked up once, here: another code,
    another namespace or a global deleted reads as a change."""
    names = (*_code_globals(fn.__code__), *_BASE_GLOBALS)
    present = tuple(name for name in names if name in fn.__globals__)
    absent = frozenset(names).difference(present)
    fetch = (operator.itemgetter(*present) if len(present) > 1
             else lambda namespace: tuple(namespace[name] for name in present))

    def read(fn: types.FunctionType) -> tuple:
        namespace = fn.__globals__
        cells = fn.__closure__
        annotations = fn.__annotations__
        attributes = fn.__dict__
        keywords = fn.__kwdefaults__
        try:
            found = fetch(namespace)
        except KeyError:
            return (_MISSING,)
        # The function's own dicts by their items only: a lambda made anew
        # has new ones, and the same pickle.
        return (fn.__code__, namespace, fn.__name__, fn.__qualname__, fn.__module__,
                fn.__doc__, fn.__defaults__, keywords is None,
                *((*keywords, *keywords.values()) if keywords else ()), _END,
                *((*annotations, *annotations.values()) if annotations else ()), _END,
                *((*attributes, *attributes.values()) if attributes else ()), _END,
                *(map(_cell_contents, cells) if cells else ()),
                *found, namespace.keys().isdisjoint(absent))

    return read


def _found_at(place: tuple) -> tuple:
    """Whether an object that travels by reference is still where it was found."""
    obj, module_name, module, names = place
    found = sys.modules.get(module_name)
    if found is not module:
        return (False,)
    for name in names:
        found = getattr(found, name, None)
    return (found is obj,)


def _modules_loaded(count: int) -> tuple:
    return (len(sys.modules) == count,)


class _Snapshot:
    """A by-value function's state, by identity: each probe reads some objects
    of it afresh, to compare with those it read when the pickle was made."""

    __slots__ = ("probes", "shared", "namespaces")

    def __init__(self, probes: list, shared: frozenset, namespaces: frozenset) -> None:
        self.probes = probes  # [(read, object or _SELF, objects it read)]
        self.shared = shared  # ids of the state's containers and functions
        self.namespaces = namespaces  # ids of its functions' __globals__

    def holds(self, fn: types.FunctionType) -> bool:
        """Whether ``fn`` (of the code snapshotted) pickles as it did then."""
        for read, obj, then in self.probes:
            now = read(fn if obj is _SELF else obj)
            if not (len(now) == len(then) and all(map(operator.is_, now, then))
                    or _same_but_self(now, then, fn)):
                return False
        return True


def _same_but_self(now: tuple, then: tuple, fn: types.FunctionType) -> bool:
    """``now`` is ``then``, item by item, ``fn`` standing for _SELF (the slow
    way: only a function that refers to itself needs it)."""
    return len(now) == len(then) and all(
        a is b or (b is _SELF and a is fn) for a, b in zip(now, then))


def _snapshot(fn: types.FunctionType, client: bool) -> _Snapshot | None:
    """``fn``'s state, or None if it holds something a snapshot cannot vouch for.

    On the client (``client``), objects that travel by reference are checked to
    be still where they were found, as cloudpickle checks them; on a worker they
    are its own modules' objects, the same whatever the client does.
    """
    probes: list = []
    seen: dict[int, Any] = {}  # id -> object, kept so that no id is reused
    namespaces: set[int] = set()
    packages = False
    size = 0  # objects the probes read

    def probe(read: Callable, obj: Any) -> tuple:
        nonlocal size
        then = read(obj)
        size += len(then)
        if size > _SNAPSHOT_MAX:
            raise _NotCacheable
        probes.append((read, _SELF if obj is fn else obj,
                       tuple(_SELF if value is fn else value for value in then)))
        return then

    def by_reference(obj: Any) -> None:
        if not _should_pickle_by_reference(obj):
            raise _NotCacheable  # a class of __main__, say
        if client:
            module_name = obj.__module__
            place = (obj, module_name, sys.modules.get(module_name),
                     tuple(obj.__qualname__.split(".")))
            if place[2] is None or _found_at(place) != (True,):
                raise _NotCacheable
            probe(_found_at, place)

    def visit(value: Any) -> None:
        nonlocal packages
        kind = type(value)
        if (kind in _IMMUTABLE or value is fn or value is _MISSING or value is _END
                or id(value) in seen):
            return
        # Objects that travel by reference unpickle as the worker's own.
        if kind is types.ModuleType:
            if not _should_pickle_by_reference(value):
                raise _NotCacheable  # sent by value
            packages = packages or bool(getattr(value, "__package__", None))
            return
        if kind is types.BuiltinFunctionType:
            if not (value.__self__ is None or type(value.__self__) is types.ModuleType):
                raise _NotCacheable  # a bound method: pickles its object
            return
        if issubclass(kind, type) or (kind is types.FunctionType
                                      and _should_pickle_by_reference(value)):
            by_reference(value)
            return
        seen[id(value)] = value
        if kind is tuple or kind is frozenset:
            for item in value:
                visit(item)
        elif kind is list or kind is set:
            for item in probe(tuple, value):
                visit(item)
        elif kind is dict:
            for item in probe(_items, value):
                visit(item)
        elif kind is types.FunctionType:
            function(value)
        elif kind is types.GenericAlias:  # list[int], in annotations
            visit(value.__origin__)
            visit(value.__args__)
        elif kind is types.UnionType:  # int | None
            visit(value.__args__)
        else:
            raise _NotCacheable

    def function(value: types.FunctionType) -> None:
        state = probe(_function_reader(value), value)
        namespaces.add(id(state[1]))
        for mapping in (value.__kwdefaults__, value.__annotations__, value.__dict__):
            if mapping is not None:  # read with the function, by their items
                seen[id(mapping)] = mapping
        for item in state[2:]:
            visit(item)

    try:
        function(fn)
        if client and packages:
            probe(_modules_loaded, len(sys.modules))
    except Exception:  # _NotCacheable, or an object that would not be looked at
        return None
    return _Snapshot(probes, frozenset(seen), frozenset(namespaces))


def _by_value(fn: types.FunctionType) -> bool:
    # Without cloudpickle's rules, as if by value: such a function is then not
    # kept, since its state cannot be checked either.
    return not _VALUE_CACHE or not _should_pickle_by_reference(fn)


def _value_pickle(fn: Any) -> tuple[bytes, _Snapshot] | None:
    """``fn``'s by-value pickle with the snapshot it holds for; None where the
    call must be pickled whole (see the module docstring)."""
    if type(fn) is not types.FunctionType or not _VALUE_CACHE:
        return None
    code = fn.__code__
    kept = _value_pickles.get(id(code))
    entries = ()
    if kept is not None:
        _, entries, misses = kept
        if misses >= _VALUE_MISSES_MAX:  # its state changes call after call
            return None
        for entry in entries:
            if entry[1].holds(fn):
                if misses:
                    _value_pickles[id(code)] = (code, entries, 0)
                return None if entry[0] is None else entry
    if fn in _not_cacheable:
        return None
    generation = _generation
    try:
        snapshot = _snapshot(fn, client=True)
        if snapshot is None:
            _not_cacheable.add(fn)
            return None
        value = cloudpickle.dumps(fn, protocol=5)
    except Exception:  # the whole call is pickled, and raises what it raises
        return None
    if not snapshot.holds(fn):  # changed while it was pickled (another thread)
        return None
    if len(value) > _VALUE_PICKLE_MAX:
        value = None
    if generation == _generation:  # not forgotten meanwhile by another thread
        if kept is None and len(_value_pickles) >= _VALUE_CODES_MAX:
            _value_pickles.clear()
        misses = kept[2] + 1 if kept is not None else 0
        if misses >= _VALUE_MISSES_MAX:
            entries = []  # not looked at again
        else:
            entries = [(value, snapshot), *entries][:_VALUE_PICKLES_PER_CODE]
        _value_pickles[id(code)] = (code, entries, misses)
    return None if value is None else (value, snapshot)


def _dumps_apart(call: tuple, fn: types.FunctionType, snapshot: _Snapshot) -> list | None:
    """``call`` (its function as its pickle) pickled; None if the arguments
    share an object with the function's state, or a function its globals:
    cloudpickle, pickling them together, would send one object."""
    try:
        frames, pickler = _dump(_PlainPickler, call)
    except Exception:  # not builtin values only: cloudpickle, which raises what it raises
        frames, pickler = _dump(cloudpickle.Pickler, call)
    memo = pickler.memo.copy()  # id -> object, for each object pickled
    namespaces = getattr(pickler, "globals_ref", {})  # id(__globals__) of each function
    if (id(fn) in memo or not snapshot.shared.isdisjoint(memo)
            or not snapshot.namespaces.isdisjoint(namespaces)):
        return None
    return frames


def _dump(pickler_class: type, obj: Any) -> tuple[list, pickle.Pickler]:
    file = io.BytesIO()
    buffers: list = []
    pickler = pickler_class(file, 5, buffer_callback=_out_of_band(buffers))
    pickler.dump(obj)
    return [file.getvalue(), *buffers], pickler


def loads_call(frames: Sequence) -> tuple[Callable, tuple, dict]:
    fn, args, kwargs = loads(frames)
    if type(fn) is bytes:  # the function's own pickle (dumps_call)
        fn = _load_function(fn)
        if fn is run_chunk and type(args[0]) is bytes:  # and its chunk's (_dumps_chunk)
            args = (_load_function(args[0]), args[1])
    return fn, args, kwargs


def _load_function(data: bytes) -> Callable:
    """The function pickled in ``data``: the one kept for it if its state is
    still what it was unpickled with, else unpickled again."""
    global _loaded_bytes
    # (function, None): kept, by reference; (function, _Snapshot): kept, by
    # value; (None, None): seen once; (None, False): not to be kept.
    entry = _loaded_functions.get(data)
    if entry is not None:
        fn, snapshot = entry
        if fn is not None and (snapshot is None or snapshot.holds(fn)):
            return fn
    fn = pickle.loads(data)
    if type(fn) is not types.FunctionType or not _by_value(fn):
        kept = (fn, None)
    elif entry is None:
        kept = (None, None)  # a pickle sent once (state set per call) is not worth a snapshot
    elif entry[1] is None:
        snapshot = _snapshot(fn, client=False)
        kept = (fn, snapshot) if snapshot is not None else (None, False)
    else:  # its calls change its state (a list it appends to): unpickled per call
        kept = (None, False)
    if kept == entry:
        return fn
    if (len(_loaded_functions) >= _LOADED_FUNCTIONS_MAX
            or _loaded_bytes + len(data) > _LOADED_BYTES_MAX):
        _loaded_functions.clear()
        _loaded_bytes = 0
    if data not in _loaded_functions:
        _loaded_bytes += len(data)
    _loaded_functions[data] = kept
    return fn


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


def _run_chunk_pickle() -> bytes:
    return _function_pickle(run_chunk) or pickle.dumps(run_chunk, protocol=5)
