"""Message kinds and their headers, validated strictly.

Every message is one msgpack header (a map with an ``"op"`` key) followed by
zero or more opaque payload frames. Batches carry, per entry, how many payload
frames belong to it; ``frames.split_frames`` cuts the payload accordingly.

    client  -> broker : HELLO SUBMIT CANCEL HEARTBEAT BYE
    broker  -> client : WELCOME REFUSED CANCEL_REPLY RESULTS(ClientResults) HEARTBEAT ERROR
    worker  -> broker : HELLO RESULTS(WorkerResults) HEARTBEAT DRAIN BYE
    broker  -> worker : WELCOME REFUSED DISPATCH HEARTBEAT DRAIN ERROR

Nothing a peer sends is trusted: ``parse`` checks every key, type and range
and raises ``ProtocolError`` instead of letting a bad value travel further.
"""
from __future__ import annotations

import enum
import reprlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from zeropool.protocol.defaults import PROTOCOL_VERSION

__all__ = [
    "Op", "Role", "Status", "ProtocolError", "Message",
    "Hello", "Welcome", "Refused", "Submit", "Cancel", "CancelReply",
    "Dispatch", "WorkerResults", "ClientResults", "Heartbeat", "Drain", "Bye", "Error",
    "Stats", "StatsReply", "Withdraw", "Withdrawn", "TaskOptions", "check_resources",
]

# Ids and counts are unsigned 64-bit on the wire.
_U64 = (1 << 64) - 1
# Routing ids are short opaque bytes chosen by the peer.
MAX_PEER_ID = 255
MAX_TEXT = 64 * 1024


class ProtocolError(ValueError):
    """Raised when a message does not follow the wire format."""


class Op(str, enum.Enum):
    HELLO = "hello"
    WELCOME = "welcome"
    REFUSED = "refused"
    SUBMIT = "submit"
    CANCEL = "cancel"
    CANCEL_REPLY = "cancel_reply"
    DISPATCH = "dispatch"
    RESULTS = "results"
    HEARTBEAT = "heartbeat"
    DRAIN = "drain"
    BYE = "bye"
    ERROR = "error"
    STATS = "stats"
    STATS_REPLY = "stats_reply"
    WITHDRAW = "withdraw"
    WITHDRAWN = "withdrawn"


class Role(str, enum.Enum):
    CLIENT = "client"
    WORKER = "worker"


class Status(enum.IntEnum):
    """How a task ended, as a worker reports it."""

    OK = 0  # payload: the pickled return value
    RAISED = 1  # payload: the pickled exception (or a RemoteError standing in for it)
    INIT_FAILED = 2  # payload: the pickled exception the client's initializer raised
    UNPICKLE_FAILED = 3  # payload: the pickled exception loading the call raised


class _ShortRepr(reprlib.Repr):
    def repr_bytes(self, value: bytes, level: int) -> str:
        if len(value) <= self.maxstring:
            return repr(value)
        return repr(value[:self.maxstring]) + "..."


_short = _ShortRepr()
_short.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr`` of a value a peer sent, bounded in depth and length.

    The builtin ``repr`` of lists nested a thousand deep (a few kilobytes of
    msgpack) raises RecursionError, and that of a megabyte string makes a
    megabyte error message; neither may come out of validating a message.
    """
    return _short.repr(value)


def _get(header: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    try:
        value = header[key]
    except KeyError:
        raise ProtocolError(f"missing key {key!r}") from None
    # bool is an int subclass; never accept it where a number is meant.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"{key!r} has type {type(value).__name__}")
    return value


def _uint(header: dict, key: str, limit: int = _U64) -> int:
    value = _get(header, key, int)
    if not 0 <= value <= limit:
        raise ProtocolError(f"{key!r} out of range: {value}")
    return value


def _text(header: dict, key: str) -> str:
    value = _get(header, key, str)
    if len(value) > MAX_TEXT:
        raise ProtocolError(f"{key!r} longer than {MAX_TEXT} characters")
    return value


def _check_uint(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _U64:
        raise ProtocolError(f"bad {what}: {short_repr(value)}")
    return value


def _check_peer_id(value: Any) -> bytes:
    if type(value) is not bytes or not 0 < len(value) <= MAX_PEER_ID:
        raise ProtocolError(f"bad peer id: {short_repr(value)}")
    return value


def _rows(header: dict, key: str, width: int, most: int | None = None) -> list:
    """Rows of ``width`` items, or up to ``most`` where optional ones may follow."""
    rows = _get(header, key, list)
    most = most or width
    for row in rows:
        if type(row) is not list or not width <= len(row) <= most:
            size = width if most == width else f"{width} to {most}"
            raise ProtocolError(f"{key!r} entries must be lists of {size}")
    return rows


# Priorities are signed 32-bit: room for any scheme, and small on the wire.
MIN_PRIORITY, MAX_PRIORITY = -(1 << 31), (1 << 31) - 1
MAX_RESOURCE_NAME = 64
MAX_RESOURCES = 64
MAX_RETRIES = 1000
# Resource amounts: any a machine has (64e9 bytes of memory, say), and exact
# as floats, which the broker adds up; msgpack cannot carry ints past 2**64.
MAX_AMOUNT = float(1 << 53)
MAX_VERSION_SETS = 256


def check_resources(value: Any, what: str) -> dict[str, float]:
    """``value`` as resource amounts (names to non-negative finite numbers);
    TypeError or ValueError naming ``what`` and the culprit otherwise."""
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict of names to amounts, e.g. {{'gpu': 1}}, "
                        f"not {type(value).__name__}")
    if len(value) > MAX_RESOURCES:
        raise ValueError(f"{what}: at most {MAX_RESOURCES} names, not {len(value)}")
    amounts = {}
    for name, amount in value.items():
        if type(name) is not str or not 0 < len(name) <= MAX_RESOURCE_NAME:
            raise TypeError(f"{what}: a resource name must be a non-empty string of at most "
                            f"{MAX_RESOURCE_NAME} characters, not {short_repr(name)}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"{what}: the amount of {name!r} must be a number, not "
                            f"{type(amount).__name__}")
        if not 0 <= amount <= MAX_AMOUNT:
            raise ValueError(f"{what}: the amount of {name!r} must be a number from 0 to "
                             f"{MAX_AMOUNT:g}, not {amount!r}")
        amounts[name] = amount
    return amounts


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a task is run: higher ``priority`` first; only on a worker that has
    ``resources`` free (sorted ``(name, amount)`` pairs, so that equal needs
    are equal keys); stopped after ``timeout`` seconds of running; retried
    ``retries`` times after its worker died (None: the broker's own limit).
    The default travels as nothing at all."""

    priority: int = 0
    resources: tuple = ()
    timeout: float | None = None
    retries: int | None = None

    @classmethod
    def make(cls, priority: Any = 0, resources: Any = None, timeout: Any = None,
             retries: Any = None) -> TaskOptions:
        """Checked options; TypeError or ValueError saying what is wrong."""
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, "
                             f"not {priority}")
        needs = () if resources is None else tuple(sorted(
            (name, amount) for name, amount in check_resources(resources, "resources").items()
            if amount))
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number of seconds or None, not "
                                f"{type(timeout).__name__}")
            if not 0 < timeout < float("inf"):
                raise ValueError(f"timeout must be a finite number of seconds > 0, not "
                                 f"{timeout!r}")
            timeout = float(timeout)
        if retries is not None:
            if isinstance(retries, bool) or not isinstance(retries, int):
                raise TypeError(f"retries must be an int or None, not {type(retries).__name__}")
            if not 0 <= retries <= MAX_RETRIES:
                raise ValueError(f"retries must be between 0 and {MAX_RETRIES}, not {retries}")
        if not priority and not needs and timeout is None and retries is None:
            return _DEFAULT_OPTIONS  # one object: the broker tells default tasks by identity
        return cls(priority, needs, timeout, retries)

    @property
    def default(self) -> bool:
        return self == _DEFAULT_OPTIONS

    def wire(self) -> dict:
        """The options as a task row carries them: only what is not default."""
        value: dict = {}
        if self.priority:
            value["priority"] = self.priority
        if self.resources:
            value["resources"] = dict(self.resources)
        if self.timeout is not None:
            value["timeout"] = self.timeout
        if self.retries is not None:
            value["retries"] = self.retries
        return value

    @classmethod
    def from_wire(cls, value: Any) -> TaskOptions:
        if type(value) is not dict or not set(value) <= _OPTION_NAMES:
            raise ProtocolError(f"bad task options: {short_repr(value)}")
        try:
            return cls.make(value.get("priority", 0), value.get("resources"),
                            value.get("timeout"), value.get("retries"))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"bad task options: {exc}") from None


_DEFAULT_OPTIONS = TaskOptions()
_OPTION_NAMES = frozenset({"priority", "resources", "timeout", "retries"})


class Message:
    """Base of all message kinds: ``header()`` to the wire, ``parse()`` from it."""

    op: ClassVar[Op]
    __slots__ = ()

    def header(self) -> dict:
        return {"op": self.op.value}

    @classmethod
    def parse(cls, header: dict) -> Message:
        return cls()


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message of every peer: who it is and which protocol it speaks.

    A worker offers ``credit`` task slots and says how many ``threads`` run
    them, and the ``resources`` each of its processes has (names to amounts,
    shared by its threads). A client with an initializer sends it pickled as
    ``init_frames`` payload frames; the broker keeps them opaque.
    """

    op: ClassVar[Op] = Op.HELLO
    role: Role
    version: int
    credit: int = 0
    init_frames: int = 0
    pid: int = 0
    host: str = ""
    threads: int = 0
    resources: dict = field(default_factory=dict)
    # What the peer runs: {"python": "3.12.1", "zeropool": ..., "cloudpickle": ...}.
    versions: dict = field(default_factory=dict)

    def header(self) -> dict:
        header = {"op": self.op.value, "role": self.role.value, "version": self.version,
                  "credit": self.credit, "init_frames": self.init_frames,
                  "pid": self.pid, "host": self.host, "threads": self.threads}
        if self.resources:
            header["resources"] = self.resources
        if self.versions:
            header["versions"] = self.versions
        return header

    @classmethod
    def parse(cls, header: dict) -> Hello:
        # The version is read first, and alone if it is not ours: another
        # version may have changed any other key, and its peer must still be
        # told which version this side speaks, not that its HELLO is bad.
        version = _uint(header, "version")
        if version != PROTOCOL_VERSION:
            role_name = header.get("role")
            known = type(role_name) is str and role_name in _ROLE_NAMES
            return cls(Role(role_name) if known else Role.CLIENT, version)
        role_name = _get(header, "role", str)
        if role_name not in _ROLE_NAMES:
            raise ProtocolError(f"unknown role {short_repr(role_name)}")
        role = Role(role_name)
        resources = {}
        if "resources" in header:
            try:
                resources = check_resources(header["resources"], "resources")
            except (TypeError, ValueError) as exc:
                raise ProtocolError(str(exc)) from None
        versions = _versions(header["versions"]) if "versions" in header else {}
        return cls(role, version, _uint(header, "credit", 1 << 20),
                   _uint(header, "init_frames", 1 << 16), _uint(header, "pid"),
                   _text(header, "host"), _uint(header, "threads", 1 << 20), resources,
                   versions)


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """The broker accepts a peer and tells it the heartbeat it expects."""

    op: ClassVar[Op] = Op.WELCOME
    version: int
    heartbeat_interval: float
    liveness: int
    # The largest frame the broker accepts; peers check theirs before sending,
    # because ZeroMQ drops an oversized message with its connection, silently.
    max_message_size: int = 1 << 30

    def header(self) -> dict:
        return {"op": self.op.value, "version": self.version,
                "heartbeat_interval": self.heartbeat_interval, "liveness": self.liveness,
                "max_message_size": self.max_message_size}

    @classmethod
    def parse(cls, header: dict) -> Welcome:
        interval = _get(header, "heartbeat_interval", (int, float))
        if not 0 < interval < 3600:
            raise ProtocolError(f"heartbeat_interval out of range: {interval}")
        return cls(_uint(header, "version"), float(interval), _uint(header, "liveness", 1000),
                   _uint(header, "max_message_size"))


@dataclass(frozen=True, slots=True)
class Refused(Message):
    """The broker refuses a peer (wrong version, wrong role); it should give up."""

    op: ClassVar[Op] = Op.REFUSED
    reason: str
    version: int

    def header(self) -> dict:
        return {"op": self.op.value, "reason": self.reason, "version": self.version}

    @classmethod
    def parse(cls, header: dict) -> Refused:
        return cls(_text(header, "reason"), _uint(header, "version"))


@dataclass(frozen=True, slots=True)
class Submit(Message):
    """A batch of calls: ``tasks`` rows are ``[task_id, nframes, inline]``,
    with a fourth item, the task's ``TaskOptions`` (a map on the wire), when
    they are not the default.

    Every row that carries a payload does so either inline (``nframes`` 0, the
    pickled bytes in ``inline``) or as its next ``nframes`` payload frames
    (``inline`` empty); see ``frames.pack_payload``.
    """

    op: ClassVar[Op] = Op.SUBMIT
    tasks: list

    def header(self) -> dict:
        return {"op": self.op.value, "tasks": self.tasks}

    @classmethod
    def parse(cls, header: dict) -> Submit:
        rows = _rows(header, "tasks", 3, 4)
        for row in rows:
            _check_uint(row[0], "task id")
            _check_payload(row[1], row[2])
            if len(row) == 4:
                row[3] = TaskOptions.from_wire(row[3])
        return cls(rows)


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """Asks the broker to drop tasks no worker has started; answered by CANCEL_REPLY.

    With ``queued_only`` (``shutdown(cancel_futures=True)``) the broker first
    hands queued tasks to workers with free slots, as a process pool's call
    queue keeps the calls it holds, then drops only what is still queued; it
    does not ask workers for tasks they hold unstarted.
    """

    op: ClassVar[Op] = Op.CANCEL
    request_id: int
    task_ids: list
    queued_only: bool = False

    def header(self) -> dict:
        header = {"op": self.op.value, "request_id": self.request_id, "task_ids": self.task_ids}
        if self.queued_only:  # absent means False
            header["queued_only"] = True
        return header

    @classmethod
    def parse(cls, header: dict) -> Cancel:
        task_ids = _get(header, "task_ids", list)
        for task_id in task_ids:
            _check_uint(task_id, "task id")
        queued_only = _get(header, "queued_only", bool) if "queued_only" in header else False
        return cls(_uint(header, "request_id"), task_ids, queued_only)


@dataclass(frozen=True, slots=True)
class CancelReply(Message):
    """The ids, among those asked, that were still queued and are now dropped."""

    op: ClassVar[Op] = Op.CANCEL_REPLY
    request_id: int
    task_ids: list

    def header(self) -> dict:
        return {"op": self.op.value, "request_id": self.request_id, "task_ids": self.task_ids}

    @classmethod
    def parse(cls, header: dict) -> CancelReply:
        task_ids = _get(header, "task_ids", list)
        for task_id in task_ids:
            _check_uint(task_id, "task id")
        return cls(_uint(header, "request_id"), task_ids)


@dataclass(frozen=True, slots=True)
class Dispatch(Message):
    """Tasks for a worker: ``tasks`` rows are ``[client_id, task_id, nframes, inline]``,
    with a fifth item, the task's options, when they are not the default
    (a worker runs what waits there highest priority first).

    ``inits`` rows ``[client_id, nframes]`` carry the initializers of clients
    whose tasks this worker has not seen before; their frames come first.
    ``pythons`` rows ``[client_id, version]`` name, once, the Python of clients
    that run another minor version than this worker (code they send by value
    must not be loaded here).
    """

    op: ClassVar[Op] = Op.DISPATCH
    tasks: list
    inits: list = field(default_factory=list)
    pythons: list = field(default_factory=list)

    def header(self) -> dict:
        header = {"op": self.op.value, "tasks": self.tasks, "inits": self.inits}
        if self.pythons:
            header["pythons"] = self.pythons
        return header

    @classmethod
    def parse(cls, header: dict) -> Dispatch:
        tasks = _rows(header, "tasks", 4, 5)
        for row in tasks:
            _check_peer_id(row[0])
            _check_uint(row[1], "task id")
            _check_payload(row[2], row[3])
            if len(row) == 5:
                row[4] = TaskOptions.from_wire(row[4])
        inits = _rows(header, "inits", 2)
        for client_id, nframes in inits:
            _check_peer_id(client_id)
            _check_uint(nframes, "frame count")
        pythons = _rows(header, "pythons", 2) if "pythons" in header else []
        for client_id, version in pythons:
            _check_peer_id(client_id)
            if type(version) is not str or len(version) > 64:
                raise ProtocolError(f"bad Python version {short_repr(version)}")
        return cls(tasks, inits, pythons)


@dataclass(frozen=True, slots=True)
class WorkerResults(Message):
    """A worker's news: finished tasks, tasks now running, and freed slots.

    ``results`` rows are ``[client_id, task_id, status, nframes, inline]``; ``started``
    rows are ``[client_id, task_id]``; ``credit`` is how many more tasks the
    worker can take now; ``output`` rows ``[client_id, task_id, stream, text]``
    are what running tasks printed (stream 1: stdout, 2: stderr), sent before
    their results.
    """

    op: ClassVar[Op] = Op.RESULTS
    results: list
    started: list = field(default_factory=list)
    credit: int = 0
    output: list = field(default_factory=list)

    def header(self) -> dict:
        header = {"op": self.op.value, "results": self.results, "started": self.started,
                  "credit": self.credit}
        if self.output:
            header["output"] = self.output
        return header

    @classmethod
    def parse(cls, header: dict) -> WorkerResults:
        results = _rows(header, "results", 5)
        for client_id, task_id, status, nframes, inline in results:
            _check_peer_id(client_id)
            _check_uint(task_id, "task id")
            _check_status(status)
            _check_payload(nframes, inline)
        started = _rows(header, "started", 2)
        for client_id, task_id in started:
            _check_peer_id(client_id)
            _check_uint(task_id, "task id")
        output = _rows(header, "output", 4) if "output" in header else []
        for client_id, task_id, stream, text in output:
            _check_peer_id(client_id)
            _check_uint(task_id, "task id")
            _check_output(stream, text)
        return cls(results, started, _uint(header, "credit", 1 << 20), output)


@dataclass(frozen=True, slots=True)
class ClientResults(Message):
    """Results for one client: ``results`` rows ``[task_id, status, nframes, inline]``,
    ``started`` task ids, ``errors`` rows ``[task_id, code, message]`` for
    tasks the broker itself had to fail, and ``output`` rows ``[task_id,
    stream, text, worker]`` (what tasks printed, and where) to show before
    the results."""

    op: ClassVar[Op] = Op.RESULTS
    results: list
    started: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    output: list = field(default_factory=list)

    def header(self) -> dict:
        header = {"op": self.op.value, "results": self.results, "started": self.started,
                  "errors": self.errors}
        if self.output:
            header["output"] = self.output
        return header

    @classmethod
    def parse(cls, header: dict) -> ClientResults:
        results = _rows(header, "results", 4)
        for task_id, status, nframes, inline in results:
            _check_uint(task_id, "task id")
            _check_status(status)
            _check_payload(nframes, inline)
        started = _get(header, "started", list)
        for task_id in started:
            _check_uint(task_id, "task id")
        errors = _rows(header, "errors", 3)
        for task_id, code, message in errors:
            _check_uint(task_id, "task id")
            if type(code) is not str or type(message) is not str:
                raise ProtocolError("error code and message must be text")
        output = _rows(header, "output", 4) if "output" in header else []
        for task_id, stream, text, worker in output:
            _check_uint(task_id, "task id")
            _check_output(stream, text)
            if type(worker) is not str:
                raise ProtocolError("an output row's worker must be text")
        return cls(results, started, errors, output)


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Sent when a peer has had nothing else to say for a heartbeat interval.

    From the broker it says how many workers are attached, so that a client
    shutting down can tell "no worker left" from "workers busy"; to a worker
    it also names the clients gone since the last one (``forget``) whose
    initializers that worker holds, so that it can drop them; to a client,
    the distinct ``versions`` the workers run (see Hello), so that it can
    warn of a Python or cloudpickle that differs from its own.
    """

    op: ClassVar[Op] = Op.HEARTBEAT
    workers: int = 0
    forget: list = field(default_factory=list)
    versions: list = field(default_factory=list)

    def header(self) -> dict:
        header = {"op": self.op.value, "workers": self.workers}
        if self.forget:
            header["forget"] = self.forget
        if self.versions:
            header["versions"] = self.versions
        return header

    @classmethod
    def parse(cls, header: dict) -> Heartbeat:
        forget = _get(header, "forget", list) if "forget" in header else []
        for client_id in forget:
            _check_peer_id(client_id)
        versions = _get(header, "versions", list) if "versions" in header else []
        if len(versions) > MAX_VERSION_SETS:
            raise ProtocolError(f"more than {MAX_VERSION_SETS} sets of versions")
        return cls(_uint(header, "workers", 1 << 32), forget, [_versions(v) for v in versions])


@dataclass(frozen=True, slots=True)
class Drain(Message):
    """A worker asks for no more tasks; the broker answers with DRAIN once it
    will send none, so the worker knows no DISPATCH is still on its way."""

    op: ClassVar[Op] = Op.DRAIN


@dataclass(frozen=True, slots=True)
class Bye(Message):
    """A peer leaves in order (or the broker tells a peer it is going away)."""

    op: ClassVar[Op] = Op.BYE
    reason: str = ""

    def header(self) -> dict:
        return {"op": self.op.value, "reason": self.reason}

    @classmethod
    def parse(cls, header: dict) -> Bye:
        return cls(_text(header, "reason"))


@dataclass(frozen=True, slots=True)
class Error(Message):
    """The broker tells a peer that a message of its was refused, and why."""

    op: ClassVar[Op] = Op.ERROR
    code: str
    message: str

    def header(self) -> dict:
        return {"op": self.op.value, "code": self.code, "message": self.message}

    @classmethod
    def parse(cls, header: dict) -> Error:
        return cls(_text(header, "code"), _text(header, "message"))


@dataclass(frozen=True, slots=True)
class Stats(Message):
    """Asks the broker for a report on itself (``broker status``); needs no HELLO."""

    op: ClassVar[Op] = Op.STATS
    version: int

    def header(self) -> dict:
        return {"op": self.op.value, "version": self.version}

    @classmethod
    def parse(cls, header: dict) -> Stats:
        return cls(_uint(header, "version"))


@dataclass(frozen=True, slots=True)
class StatsReply(Message):
    """The broker's report: a map of plain values (see broker.stats)."""

    op: ClassVar[Op] = Op.STATS_REPLY
    report: dict

    def header(self) -> dict:
        return {"op": self.op.value, "report": self.report}

    @classmethod
    def parse(cls, header: dict) -> StatsReply:
        return cls(_get(header, "report", dict))


@dataclass(frozen=True, slots=True)
class Withdraw(Message):
    """The broker asks a worker to give back tasks it holds but has not
    started (to cancel them); ``tasks`` rows are ``[client_id, task_id]``."""

    op: ClassVar[Op] = Op.WITHDRAW
    request_id: int
    tasks: list

    def header(self) -> dict:
        return {"op": self.op.value, "request_id": self.request_id, "tasks": self.tasks}

    @classmethod
    def parse(cls, header: dict) -> Withdraw:
        return cls(_uint(header, "request_id"), _task_rows(header))


@dataclass(frozen=True, slots=True)
class Withdrawn(Message):
    """A worker gives back tasks it had not started: those a WITHDRAW asked
    for (``request_id`` > 0), or, unasked (``request_id`` 0), tasks waiting
    behind long ones, for other workers to run; unasked, it also takes back
    all the credit the broker has not used. ``credit`` as in RESULTS."""

    op: ClassVar[Op] = Op.WITHDRAWN
    request_id: int
    tasks: list
    credit: int = 0

    def header(self) -> dict:
        return {"op": self.op.value, "request_id": self.request_id, "tasks": self.tasks,
                "credit": self.credit}

    @classmethod
    def parse(cls, header: dict) -> Withdrawn:
        return cls(_uint(header, "request_id"), _task_rows(header),
                   _uint(header, "credit", 1 << 20))


def _task_rows(header: dict) -> list:
    tasks = _rows(header, "tasks", 2)
    for client_id, task_id in tasks:
        _check_peer_id(client_id)
        _check_uint(task_id, "task id")
    return tasks


def _versions(value: Any) -> dict:
    if (type(value) is not dict or len(value) > 16
            or not all(type(k) is str and type(v) is str and len(k) <= 64 and len(v) <= 64
                       for k, v in value.items())):
        raise ProtocolError(f"bad versions: {short_repr(value)}")
    return value


def _check_payload(nframes: Any, inline: Any) -> None:
    _check_uint(nframes, "frame count")
    if type(inline) is not bytes:
        raise ProtocolError("a row's inline payload must be bytes")
    if (nframes == 0) != (len(inline) > 0):
        raise ProtocolError("a row carries its payload either inline or as frames, "
                            "exactly one of the two")


def _check_output(stream: Any, text: Any) -> None:
    if stream not in (1, 2) or type(stream) is not int:
        raise ProtocolError(f"bad output stream {short_repr(stream)}")
    if type(text) is not str:
        raise ProtocolError("output must be text")


def _check_status(value: Any) -> int:
    if type(value) is not int or value not in _STATUSES:
        raise ProtocolError(f"unknown status {short_repr(value)}")
    return value


_STATUSES = frozenset(int(s) for s in Status)
_ROLE_NAMES = frozenset(r.value for r in Role)
