"""Message kinds and their headers, validated strictly.

Every message is one msgpack header (a map with an ``"op"`` key) followed by
zero or more opaque payload frames. Batches carry, per entry, how many payload
frames belong to it; ``frames.split_frames`` cuts the payload accordingly.

    client  -> broker : HELLO SUBMIT CANCEL HEARTBEAT BYE
    broker  -> client : WELCOME REFUSED CANCEL_REPLY RESULTS(ClientResults) HEARTBEAT ERROR
    worker  -> broker : HELLO RESULTS(WorkerResults) HEARTBEAT DRAIN BYE
    broker  -> worker : WELCOME REFUSED DISPATCH HEARTBEAT DRAIN ERROR

Each kind and each row layout is declared here once, with the wire type of
every field (``protocol.wire``); its ``header()`` and ``parse()`` follow from
that declaration. Nothing a peer sends is trusted: ``parse`` checks every
key, type and range and raises ``ProtocolError`` instead of letting a bad
value travel further. Code outside ``protocol/`` builds rows by name
(``SubmitRow(task_id, nframes, inline)``), never as lists by hand.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

from zeropool.protocol.defaults import PROTOCOL_VERSION
from zeropool.protocol.wire import (
    ProtocolError, Type, kind, list_of, optional, row, rows, short_repr,
)

__all__ = [
    "Op", "Role", "Status", "ProtocolError", "Message",
    "Hello", "Welcome", "Refused", "Submit", "Cancel", "CancelReply",
    "Dispatch", "WorkerResults", "ClientResults", "Heartbeat", "Drain", "Bye", "Error",
    "Stats", "StatsReply", "Withdraw", "Withdrawn", "TaskOptions", "check_resources",
    "SubmitRow", "DispatchRow", "InitRow", "PythonRow", "TaskRow", "WorkerResultRow",
    "ClientResultRow", "ErrorRow", "WorkerOutputRow", "ClientOutputRow",
]

# Ids and counts are unsigned 64-bit on the wire.
_U64 = (1 << 64) - 1
# Routing ids are short opaque bytes chosen by the peer.
MAX_PEER_ID = 255
MAX_TEXT = 64 * 1024


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
    """Base of all message kinds: ``header()`` to the wire, ``parse()`` from
    it, both made by ``@kind`` from the kind's declaration."""

    op: ClassVar[Op]
    __slots__ = ()


# -- the types of values on the wire (see protocol.wire) ----------------------

def uint(what: str, limit: int = _U64) -> Type:
    return Type(what, f"type(v) is not int or not 0 <= v <= {limit}", rule=f"an int from 0 to {limit}")


U64 = uint("unsigned 64-bit int")
TASK_ID = uint("task id")
FRAME_COUNT = uint("frame count")
CREDIT = uint("credit", 1 << 20)
PEER_ID = Type("peer id", f"type(v) is not bytes or not 0 < len(v) <= {MAX_PEER_ID}")
INLINE = Type("inline payload", "type(v) is not bytes", rule="bytes")
STATUS = Type("status", "type(v) is not int or v not in _STATUSES",
              names={"_STATUSES": frozenset(int(s) for s in Status)},
              rule="one of " + ", ".join(str(int(s)) for s in Status))
STREAM = Type("output stream", "type(v) is not int or v not in (1, 2)", rule="1 or 2")
STR = Type("text", "type(v) is not str", rule="text")
TEXT = Type("text", f"type(v) is not str or len(v) > {MAX_TEXT}",
            rule=f"text of at most {MAX_TEXT} characters")
PYTHON_VERSION = Type("Python version", "type(v) is not str or len(v) > 64",
                      rule="text of at most 64 characters")
BOOL = Type("flag", "type(v) is not bool", rule="true or false")
MAP = Type("report", "type(v) is not dict", rule="a map")
INTERVAL = Type("interval", "type(v) not in (int, float) or not 0 < v < 3600",
                then="float(v)", rule="seconds, more than 0 and less than 3600")
ROLE = Type("role", "type(v) is not str or v not in _ROLE_NAMES", then="Role(v)",
            rule="'client' or 'worker'",
            send="{}.value", names={"_ROLE_NAMES": frozenset(r.value for r in Role), "Role": Role})


def _resources(value: Any) -> dict:
    try:
        return check_resources(value, "resources")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(str(exc)) from None


def _versions(value: Any) -> dict:
    if (type(value) is not dict or len(value) > 16
            or not all(type(k) is str and type(v) is str and len(k) <= 64 and len(v) <= 64
                       for k, v in value.items())):
        raise ProtocolError(f"bad versions: {short_repr(value)}")
    return value


RESOURCES = Type("resources", then="_resources(v)", names={"_resources": _resources})
# What a peer runs: {"python": "3.12.1", "zeropool": ..., "cloudpickle": ...}.
VERSIONS = Type("versions", then="_versions(v)", names={"_versions": _versions})
OPTIONS = Type("task options", then="_options(v)",
               names={"_options": TaskOptions.from_wire})


def _one_payload(nframes: Any, inline: Any) -> None:
    if (nframes == 0) != (len(inline) > 0):
        raise ProtocolError("a row carries its payload either inline or as frames, "
                            "exactly one of the two")


def _payload_row(name: str, **columns: Type) -> Any:
    """A row that carries a task's payload: inline (``nframes`` 0, the
    pickled bytes in ``inline``) or as its next ``nframes`` payload frames
    (``inline`` empty); see ``frames.pack_payload``."""
    return row(name, extra=_one_payload, extra_columns=("nframes", "inline"), **columns)


# -- rows: the entries of batches ---------------------------------------------

# A call submitted; its options travel only when they are not the default.
SubmitRow = _payload_row("SubmitRow", task_id=TASK_ID, nframes=FRAME_COUNT, inline=INLINE,
                         options=optional(OPTIONS))
# A call given to a worker.
DispatchRow = _payload_row("DispatchRow", client_id=PEER_ID, task_id=TASK_ID,
                           nframes=FRAME_COUNT, inline=INLINE, options=optional(OPTIONS))
# A client's initializer, in the ``nframes`` frames before the tasks'.
InitRow = row("InitRow", client_id=PEER_ID, nframes=FRAME_COUNT)
# A client that runs another Python minor version than the worker.
PythonRow = row("PythonRow", client_id=PEER_ID, version=PYTHON_VERSION)
# A task of a client, as workers name it.
TaskRow = row("TaskRow", client_id=PEER_ID, task_id=TASK_ID)
# How a task ended, from a worker; and to its client.
WorkerResultRow = _payload_row("WorkerResultRow", client_id=PEER_ID, task_id=TASK_ID,
                               status=STATUS, nframes=FRAME_COUNT, inline=INLINE)
ClientResultRow = _payload_row("ClientResultRow", task_id=TASK_ID, status=STATUS,
                               nframes=FRAME_COUNT, inline=INLINE)
# A task the broker itself failed: code and text.
ErrorRow = row("ErrorRow", task_id=TASK_ID, code=STR, message=STR)
# What a task printed (stream 1: stdout, 2: stderr); to a client, also where.
WorkerOutputRow = row("WorkerOutputRow", client_id=PEER_ID, task_id=TASK_ID, stream=STREAM,
                      text=STR)
ClientOutputRow = row("ClientOutputRow", task_id=TASK_ID, stream=STREAM, text=STR, worker=STR)


# -- the message kinds --------------------------------------------------------

@kind(Op.HELLO, role=ROLE, version=U64, credit=CREDIT, init_frames=uint("frame count", 1 << 16),
      pid=U64, host=TEXT, threads=uint("thread count", 1 << 20),
      resources=optional(RESOURCES), versions=optional(VERSIONS))
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message of every peer: who it is and which protocol it speaks.

    A worker offers ``credit`` task slots and says how many ``threads`` run
    them, and the ``resources`` each of its processes has (names to amounts,
    shared by its threads). A client with an initializer sends it pickled as
    ``init_frames`` payload frames; the broker keeps them opaque.
    """

    role: Role
    version: int
    credit: int = 0
    init_frames: int = 0
    pid: int = 0
    host: str = ""
    threads: int = 0
    resources: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, header: dict) -> Hello:
        # The version is read first, and alone if it is not ours: another
        # version may have changed any other key, and its peer must still be
        # told which version this side speaks, not that its HELLO is bad.
        version = header.get("version")
        if type(version) is int and 0 <= version <= _U64 and version != PROTOCOL_VERSION:
            role_name = header.get("role")
            known = type(role_name) is str and role_name in _ROLE_NAMES
            return cls(Role(role_name) if known else Role.CLIENT, version)
        return cls._parse(header)


@kind(Op.WELCOME, version=U64, heartbeat_interval=INTERVAL, liveness=uint("liveness", 1000),
      max_message_size=U64)
@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """The broker accepts a peer and tells it the heartbeat it expects."""

    version: int
    heartbeat_interval: float
    liveness: int
    # The largest frame the broker accepts; peers check theirs before sending,
    # because ZeroMQ drops an oversized message with its connection, silently.
    max_message_size: int = 1 << 30


@kind(Op.REFUSED, reason=TEXT, version=U64)
@dataclass(frozen=True, slots=True)
class Refused(Message):
    """The broker refuses a peer (wrong version, wrong role); it should give up."""

    reason: str
    version: int


@kind(Op.SUBMIT, tasks=rows(SubmitRow, "tasks"))
@dataclass(frozen=True, slots=True)
class Submit(Message):
    """A batch of calls: ``tasks`` are SubmitRows."""

    tasks: list


@kind(Op.CANCEL, request_id=U64, task_ids=list_of(TASK_ID, "task ids"),
      queued_only=optional(BOOL))
@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """Asks the broker to drop tasks no worker has started; answered by CANCEL_REPLY.

    With ``queued_only`` (``shutdown(cancel_futures=True)``) the broker first
    hands queued tasks to workers with free slots, as a process pool's call
    queue keeps the calls it holds, then drops only what is still queued; it
    does not ask workers for tasks they hold unstarted.
    """

    request_id: int
    task_ids: list
    queued_only: bool = False


@kind(Op.CANCEL_REPLY, request_id=U64, task_ids=list_of(TASK_ID, "task ids"))
@dataclass(frozen=True, slots=True)
class CancelReply(Message):
    """The ids, among those asked, that were still queued and are now dropped."""

    request_id: int
    task_ids: list


@kind(Op.DISPATCH, tasks=rows(DispatchRow, "tasks"), inits=rows(InitRow, "inits"),
      pythons=optional(rows(PythonRow, "pythons")))
@dataclass(frozen=True, slots=True)
class Dispatch(Message):
    """Tasks for a worker (DispatchRows; it runs what waits there highest
    priority first), after the initializers (InitRows) of clients whose tasks
    it has not seen before, whose frames come first. ``pythons`` name, once,
    the Python of clients that run another minor version than this worker
    (code they send by value must not be loaded here).
    """

    tasks: list
    inits: list = field(default_factory=list)
    pythons: list = field(default_factory=list)


@kind(Op.RESULTS, side=Role.WORKER, results=rows(WorkerResultRow, "results"),
      started=rows(TaskRow, "started"), credit=CREDIT,
      output=optional(rows(WorkerOutputRow, "output")))
@dataclass(frozen=True, slots=True)
class WorkerResults(Message):
    """A worker's news: finished tasks (WorkerResultRows), tasks now running
    (TaskRows), how many more tasks it can take now (``credit``), and what
    running tasks printed (WorkerOutputRows), sent before their results.
    """

    results: list
    started: list = field(default_factory=list)
    credit: int = 0
    output: list = field(default_factory=list)


@kind(Op.RESULTS, side=Role.CLIENT, results=rows(ClientResultRow, "results"),
      started=list_of(TASK_ID, "task ids"), errors=rows(ErrorRow, "errors"),
      output=optional(rows(ClientOutputRow, "output")))
@dataclass(frozen=True, slots=True)
class ClientResults(Message):
    """Results for one client (ClientResultRows), the ids of its tasks now
    started, tasks the broker itself had to fail (ErrorRows), and what tasks
    printed, and where (ClientOutputRows), to show before the results."""

    results: list
    started: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    output: list = field(default_factory=list)


@kind(Op.HEARTBEAT, workers=uint("worker count", 1 << 32),
      forget=optional(list_of(PEER_ID, "peer ids")),
      versions=optional(list_of(VERSIONS, "sets of versions", MAX_VERSION_SETS)))
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

    workers: int = 0
    forget: list = field(default_factory=list)
    versions: list = field(default_factory=list)


@kind(Op.DRAIN)
@dataclass(frozen=True, slots=True)
class Drain(Message):
    """A worker asks for no more tasks; the broker answers with DRAIN once it
    will send none, so the worker knows no DISPATCH is still on its way."""


@kind(Op.BYE, reason=TEXT)
@dataclass(frozen=True, slots=True)
class Bye(Message):
    """A peer leaves in order (or the broker tells a peer it is going away)."""

    reason: str = ""


@kind(Op.ERROR, code=TEXT, message=TEXT)
@dataclass(frozen=True, slots=True)
class Error(Message):
    """The broker tells a peer that a message of its was refused, and why."""

    code: str
    message: str


@kind(Op.STATS, version=U64)
@dataclass(frozen=True, slots=True)
class Stats(Message):
    """Asks the broker for a report on itself (``broker status``); needs no HELLO."""

    version: int


@kind(Op.STATS_REPLY, report=MAP)
@dataclass(frozen=True, slots=True)
class StatsReply(Message):
    """The broker's report: a map of plain values (see broker.stats)."""

    report: dict


@kind(Op.WITHDRAW, request_id=U64, tasks=rows(TaskRow, "tasks"))
@dataclass(frozen=True, slots=True)
class Withdraw(Message):
    """The broker asks a worker to give back tasks (TaskRows) it holds but
    has not started (to cancel them)."""

    request_id: int
    tasks: list


@kind(Op.WITHDRAWN, request_id=U64, tasks=rows(TaskRow, "tasks"), credit=CREDIT)
@dataclass(frozen=True, slots=True)
class Withdrawn(Message):
    """A worker gives back tasks (TaskRows) it had not started: those a
    WITHDRAW asked for (``request_id`` > 0), or, unasked (``request_id`` 0),
    tasks waiting behind long ones, for other workers to run; unasked, it
    also takes back all the credit the broker has not used. ``credit`` as in
    RESULTS."""

    request_id: int
    tasks: list
    credit: int = 0


_ROLE_NAMES = frozenset(r.value for r in Role)
