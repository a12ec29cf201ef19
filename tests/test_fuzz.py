"""Hostile input against a live broker.

Raw DEALER sockets send a real broker thousands of random and mutated
multipart messages, as a peer that never said HELLO, as a registered client
and as a registered worker, while a real client runs 1,000 tasks through real
workers. The broker must stay up, answer whom it can with a clear error, lose
none of the real client's tasks and keep its memory bounded.

    hypothesis -> RawPeer (DEALER) x3 --+
                                        +--> broker (ROUTER, 1 MiB limit) <--> 2 workers
    zeropool.Executor (1,000 tasks) ------+

Each batch a raw peer sends ends with a round trip the broker must answer (a
CANCEL whose request id comes back in CANCEL_REPLY); replies on one connection
keep their order, so after it the broker has read the whole batch. Raw workers
never offer credit (``defang``), so no real task is ever handed to one: every
result they send is forged, and must be dropped.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import random
import struct
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from zmq.utils.monitor import recv_monitor_message

import zeropool
from zeropool import protocol
from zeropool.protocol import (
    PROTOCOL_VERSION, Bye, Cancel, CancelReply, ClientResults, Dispatch, Drain, Error, Heartbeat,
    Hello, Op, ProtocolError, Refused, Role, Status, Submit, Welcome, WorkerResults,
)
from zeropool.protocol.payload import dumps, dumps_call, loads
from tests import helpers
from tests.conftest import Programs, alive, descendants
from tests.helpers import wait_until
from tests.peer import Peer, Received

MAX_MESSAGE_SIZE = 1 << 20  # small, so that frames near the limit are cheap to send
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
U64 = (1 << 64) - 1
I64_MIN = -(1 << 63)
REAL_TASKS = 1000
# Examples per role (unknown peer, client, worker); each sends 1 to 6 messages.
EXAMPLES = 500
# Per role: a frame over the limit costs a reconnect, one near it a megabyte.
OVER_LIMIT_BUDGET = 6
NEAR_LIMIT_BUDGET = 20
# Well above what fuzzing costs the broker (a few MiB), well below what keeping
# the near-limit frames it was sent would (NEAR_LIMIT_BUDGET x 3 roles x 1 MiB).
MAX_GROWTH_KIB = 40 * 1024
# Every payload frame a raw peer sends starts with a byte that no pickle starts
# with: a worker handed one fails to load it at once, and never runs junk.
JUNK = b"\xff"

_nonces = itertools.count(random.getrandbits(60) + (1 << 61))
_names = itertools.count()


# -- the cluster and raw peers -------------------------------------------------

@dataclasses.dataclass
class Cluster:
    address: str
    broker: subprocess.Popen
    log_path: Path

    def check(self) -> None:
        """Fail at once, with the broker's last words, if it is gone."""
        if self.broker.poll() is not None or not alive(self.broker.pid):
            raise AssertionError(f"the broker died (exit code {self.broker.poll()}); "
                                 f"its log ends:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One broker (1 MiB message limit) and two one-thread workers for the module."""
    log_path = tmp_path_factory.mktemp("fuzz") / "broker.log"
    programs = Programs(None)
    with open(log_path, "w") as log:
        broker, address = programs.broker("--max-message-size", str(MAX_MESSAGE_SIZE),
                                          "--log-level", "WARNING", stderr=log)
    # With the tests on their path, calls built here run whether or not the
    # real client has already made tests.helpers travel by value.
    supervisor = programs.worker(address, "--processes", "2", "--threads", "1",
                                 "--log-level", "ERROR", "--path", REPO)
    # Counted as already there by the tests' no-process-left-behind check.
    wait_until(lambda: len(descendants(supervisor.pid)) >= 2, 30, what="worker processes")
    yield Cluster(address, broker, log_path)
    programs.stop_all()


class RawPeer(Peer):
    """A raw peer (tests.peer) with what fuzzing needs.

    Its routing id is fixed, so after an oversized frame makes the broker drop
    the connection, the reconnected socket is still the same peer to it. Tasks
    dispatched to it go straight back, and a wait fails at once if the broker
    is gone.
    """

    def __init__(self, context: zmq.Context, cluster: Cluster, name: bytes) -> None:
        super().__init__(zmq.DEALER, name, context)
        self.name = name
        self.cluster = cluster
        self.socket.setsockopt(zmq.RECONNECT_IVL, 10)  # back at once after a dropped connection
        self.monitor = self.socket.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.connect(cluster.address)
        self.dispatches = 0  # DISPATCH messages received; a peer without credit gets none

    def close(self, linger: float = 0) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        super().close(linger)

    def send_frames(self, frames: list, to: bytes | None = None) -> None:
        if any(len(frame) > MAX_MESSAGE_SIZE for frame in frames):
            self._send_over_limit(frames)
        else:
            super().send_frames(frames, to)

    def _send_over_limit(self, frames: list) -> None:
        """ZeroMQ drops the connection of a peer that sends a frame over the
        broker's MAXMSGSIZE; wait until it is back, or what follows is lost too."""
        while self.monitor.poll(0):
            recv_monitor_message(self.monitor)
        self.socket.send_multipart(frames)
        for wanted in (zmq.EVENT_DISCONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
            while True:
                assert self.monitor.poll(10_000), "the broker kept an over-limit connection"
                if recv_monitor_message(self.monitor)["event"] == wanted:
                    break

    def receive(self, timeout: float, sender: Role | None = None) -> Received | None:
        """As Peer.receive, in slices short enough to notice a dead broker."""
        got = super().receive(min(timeout, 0.25), sender)
        if got is None:
            self.cluster.check()
        elif got.message.op is Op.DISPATCH:
            # Hand real tasks straight back (an orderly BYE requeues them
            # without counting a try), so the real client loses nothing.
            self.dispatches += 1
            self.send(Bye("a raw test peer takes no tasks"))
        return got

    def reply(self, timeout: float = 15.0):
        """The broker's answer to a request: skips heartbeats and result news."""
        return self.expect(lambda m: m.op not in (Op.HEARTBEAT, Op.RESULTS),
                           timeout=timeout).message

    def hello(self, role: Role, **fields) -> None:
        self.send(Hello(role, PROTOCOL_VERSION, **fields))
        welcome = self.reply()
        assert isinstance(welcome, Welcome), welcome
        assert welcome.max_message_size == MAX_MESSAGE_SIZE

    def round_trip(self, timeout: float = 15.0) -> None:
        """As a registered client: the broker has read all sent before."""
        nonce = next(_nonces)
        self.send(Cancel(nonce, []))
        self.expect(lambda m: m.op is Op.CANCEL_REPLY and m.request_id == nonce,
                    timeout=timeout)

    def was_a_client(self) -> bool:
        """For a peer that is unknown or a client: was it a registered client?
        Leaves it one. (Asks nothing that a broker answering only some errors
        could leave unanswered.)"""
        asked, nonce = next(_nonces), next(_nonces)
        self.send(Cancel(asked, []))
        self.send(Hello(Role.CLIENT, PROTOCOL_VERSION))
        self.send(Cancel(nonce, []))
        answered = set()

        def wanted(message) -> bool:
            if message.op is Op.CANCEL_REPLY:
                answered.add(message.request_id)
            return nonce in answered

        self.expect(wanted)
        return asked in answered

    def sync(self, then: Role | None) -> None:
        """Whatever this peer now is to the broker: wait until the broker has
        read all sent before, then leave the peer registered as ``then``
        (None: unknown to the broker)."""
        self.send(Bye())
        self.send(Hello(Role.CLIENT, PROTOCOL_VERSION))
        self.round_trip()
        if then is not Role.CLIENT:
            self.send(Bye())
        if then is Role.WORKER:
            self.send(Hello(Role.WORKER, PROTOCOL_VERSION, credit=0))


@pytest.fixture
def connect(cluster):
    context = zmq.Context()
    peers = []

    def connect(name: bytes | None = None) -> RawPeer:
        peer = RawPeer(context, cluster, name or f"raw-{next(_names)}".encode())
        peers.append(peer)
        return peer

    yield connect
    for peer in peers:
        peer.close()
    context.term()


def defang(frames: list) -> list:
    """Zero the credit a worker's HELLO or RESULTS would offer: a raw peer that
    takes real tasks and sits on them would stall the real client by design."""
    try:
        message, payload = protocol.decode(frames, Role.WORKER)
    except ProtocolError:
        return frames
    if isinstance(message, (Hello, WorkerResults)) and message.credit:
        return protocol.encode(dataclasses.replace(message, credit=0), payload)
    return frames


def junk(n: int) -> list:
    return [JUNK + b"junk"] * n


def error_code(message) -> str:
    assert isinstance(message, Error), message
    assert message.message, "an error must say what was wrong"
    return message.code


# -- strategies ------------------------------------------------------------------

# Deep nesting cannot be built with msgpack.packb (it stops at 512 levels): a
# Deep value is packed as a placeholder string, then replaced by raw bytes.
@dataclasses.dataclass(frozen=True)
class Deep:
    depth: int
    maps: bool = False

    def raw(self) -> bytes:
        level = b"\x81\xa1k" if self.maps else b"\x91"  # {"k": ...} or [...]
        return level * self.depth + b"\xc0"


def pack(header) -> bytes:
    deep: dict[bytes, bytes] = {}

    def swap(value):
        if isinstance(value, Deep):
            placeholder = f"\x00deep-{len(deep)}\x00"
            deep[msgpack.packb(placeholder)] = value.raw()
            return placeholder
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        return value

    raw = msgpack.packb(swap(header), use_bin_type=True)
    for placeholder, replacement in deep.items():
        raw = raw.replace(placeholder, replacement)
    return raw


DEPTHS = [2, 100, 500, 990, 1000, 1010, 1022, 1023, 1024, 1025, 5000, 100_000]
deep_values = st.builds(Deep, st.sampled_from(DEPTHS), st.booleans())

# Headers that attack the decoder itself: deep nesting, lengths announced and
# never sent, a decoder's preallocation bomb, reserved and odd extension codes.
BOMBS = [
    *(Deep(depth).raw() for depth in DEPTHS),
    *(Deep(depth, maps=True).raw() for depth in DEPTHS),
    b"\xdd\xff\xff\xff\xff",  # array of 2**32-1 entries, none sent
    b"\xdf\xff\xff\xff\xff",  # map of 2**32-1 entries
    b"\xdb\xff\xff\xff\xff",  # str of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin of 4 GiB
    b"\x81\xa2op\xdd\x7f\xff\xff\xff",  # {"op": [2**31-1 entries...
    (b"\xdd" + struct.pack(">I", 1000)) * 1000,  # arrays of 1,000 nested 1,000 deep
    b"\xd4\xff\x00",  # a timestamp extension of the wrong length
    b"\x81\xa2op\xd7\xff" + b"\xff" * 8,  # {"op": a timestamp with nanoseconds out of range}
    b"\xc1",  # the one byte msgpack never uses
    b"\x81\xa2op\xa9heartbeat\x00",  # a valid header with trailing data
    b"\x82\xa2op\xa9heartbeat\xa2op\xa5hello",  # a duplicate key
]
# A megabyte of array headers each announcing a megabyte of entries: the decoder
# allocates before it reads. Sent only within the near-limit budget.
BIG_BOMB = (b"\xdd" + struct.pack(">I", MAX_MESSAGE_SIZE - 16)) * (MAX_MESSAGE_SIZE // 5)

scalars = (st.none() | st.booleans() | st.integers(I64_MIN, U64) | st.floats()
           | st.text(max_size=12) | st.binary(max_size=12)
           | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)))
any_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
bad_values = st.one_of(
    any_values, deep_values, st.builds(list), st.builds(dict),  # fresh: mutations change them
    st.sampled_from([-1, I64_MIN, U64, 1 << 32, 1 << 20, (1 << 20) + 1, (1 << 16) + 1, True,
                     1.0, "1", b"1", None, "x" * (64 * 1024 + 1)]))
op_values = st.one_of(st.sampled_from([op.value for op in Op]), st.text(max_size=12),
                      bad_values)

# Small ranges, so that replayed and forged ids hit live ones.
task_ids = st.integers(0, REAL_TASKS + 100) | st.sampled_from([0, U64])
counts = st.integers(0, 2)
texts = st.text(max_size=20)
FORGED = dumps("forged")  # a result that would show if it reached the real client


@st.composite
def valid_messages(draw, client_ids):
    """A well-formed message of any kind, with payload frames to match."""
    ids = st.sampled_from(client_ids)
    kind = draw(st.sampled_from([*Op, "results-to-client"]))
    if kind is Op.HELLO:
        n = draw(counts)
        version = draw(st.sampled_from([PROTOCOL_VERSION] * 4 + [0, PROTOCOL_VERSION + 1, U64]))
        return Hello(draw(st.sampled_from(Role)), version, draw(st.integers(0, 8)), n,
                     draw(st.integers(0, U64)), draw(texts)), junk(n)
    if kind is Op.SUBMIT:
        rows = draw(st.lists(st.tuples(task_ids, counts).map(list), max_size=4))
        # A row with no frames carries its payload inline.
        rows = [[t, n, b"" if n else FORGED[0]] for t, n in rows]
        return Submit(rows), junk(sum(n for _, n, _ in rows))
    if kind is Op.CANCEL:
        return Cancel(draw(st.integers(0, U64)), draw(st.lists(task_ids, max_size=4)),
                      draw(st.booleans())), []
    if kind is Op.CANCEL_REPLY:
        return CancelReply(draw(st.integers(0, U64)), draw(st.lists(task_ids, max_size=4))), []
    if kind is Op.RESULTS:
        rows = draw(st.lists(st.tuples(ids, task_ids, st.sampled_from(Status)), max_size=3))
        started = draw(st.lists(st.tuples(ids, task_ids).map(list), max_size=3))
        news = WorkerResults([[c, t, int(s), len(FORGED), b""] for c, t, s in rows], started,
                             draw(st.integers(0, 8)))
        if "output" in WorkerResults.__dataclass_fields__:  # what tasks printed, if carried
            news = dataclasses.replace(news, output=[[c, t, 1, "forged"] for c, t in started])
        return news, FORGED * len(rows)
    if kind == "results-to-client":
        rows = draw(st.lists(st.tuples(task_ids, st.sampled_from(Status)), max_size=3))
        return (ClientResults([[t, int(s), len(FORGED), b""] for t, s in rows],
                              draw(st.lists(task_ids, max_size=3)),
                              [[t, "worker_lost", "forged"] for t in
                               draw(st.lists(task_ids, max_size=2))]),
                FORGED * len(rows))
    if kind is Op.DISPATCH:
        rows = draw(st.lists(st.tuples(ids, task_ids, counts).map(list), max_size=3))
        rows = [[c, t, n, b"" if n else FORGED[0]] for c, t, n in rows]
        inits = draw(st.lists(st.tuples(ids, counts).map(list), max_size=2))
        return Dispatch(rows, inits), junk(sum(r[2] for r in rows) + sum(n for _, n in inits))
    if kind is Op.WELCOME:
        return Welcome(PROTOCOL_VERSION, 1.0, 5, MAX_MESSAGE_SIZE), []
    if kind is Op.REFUSED:
        return Refused(draw(texts), draw(st.integers(0, U64))), []
    if kind is Op.HEARTBEAT:
        return Heartbeat(draw(st.integers(0, 100))), []
    if kind is Op.DRAIN:
        return Drain(), []
    if kind is Op.BYE:
        return Bye(draw(texts)), []
    if kind is Op.STATS:  # a request for the broker's report, which needs no HELLO
        return protocol.Stats(draw(st.sampled_from([PROTOCOL_VERSION, 0, U64]))), []
    if kind is Op.STATS_REPLY:
        return protocol.StatsReply({"workers": []}), []
    if kind in (Op.WITHDRAW, Op.WITHDRAWN):
        rows = draw(st.lists(st.tuples(ids, task_ids).map(list), max_size=3))
        request_id = draw(st.sampled_from([0, 1, U64]))
        if kind is Op.WITHDRAW:
            return protocol.Withdraw(request_id, rows), []
        return protocol.Withdrawn(request_id, rows, draw(st.integers(0, 8))), []
    return Error(draw(texts), draw(texts)), []


# Header mutations: each takes (draw, header dict, payload) and returns them changed.
def set_field(draw, header, payload):
    if header:
        header[draw(st.sampled_from(sorted(header)))] = draw(bad_values)
    return header, payload


def drop_field(draw, header, payload):
    if header:
        del header[draw(st.sampled_from(sorted(header)))]
    return header, payload


def add_field(draw, header, payload):
    header[draw(st.text(max_size=8))] = draw(any_values)
    return header, payload


def set_op(draw, header, payload):
    header["op"] = draw(op_values)
    return header, payload


def mutate_row(draw, header, payload):
    """Wrong widths, types and ranges inside batch rows."""
    lists = sorted(key for key, value in header.items() if isinstance(value, list))
    if not lists:
        return header, payload
    rows = header[draw(st.sampled_from(lists))]
    if not rows:
        rows.append(draw(bad_values))
        return header, payload
    i = draw(st.integers(0, len(rows) - 1))
    row = rows[i]
    how = draw(st.sampled_from(["item", "longer", "shorter", "whole"]))
    if how == "item" and isinstance(row, list) and row:
        row[draw(st.integers(0, len(row) - 1))] = draw(bad_values)
    elif how == "longer" and isinstance(row, list):
        row.append(draw(any_values))
    elif how == "shorter" and isinstance(row, list) and row:
        del row[-1]
    else:
        rows[i] = draw(bad_values)
    return header, payload


HEADER_MUTATIONS = [set_field, drop_field, add_field, set_op, mutate_row]


# Frame mutations: each takes (draw, raw header, payload) and returns them changed.
def drop_frame(draw, raw, payload):
    return raw, payload[:-1]


def add_frame(draw, raw, payload):
    return raw, [*payload, JUNK + draw(st.binary(max_size=16))]


def truncate(draw, raw, payload):
    return raw[:draw(st.integers(0, max(0, len(raw) - 1)))], payload


def flip_byte(draw, raw, payload):
    if not raw:
        return raw, payload
    i = draw(st.integers(0, len(raw) - 1))
    return raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:], payload


def append_bytes(draw, raw, payload):
    return raw + draw(st.binary(min_size=1, max_size=8)), payload


def bomb(draw, raw, payload):
    return draw(st.sampled_from(BOMBS)), payload


def empty(draw, raw, payload):
    return b"", []


def header_twice(draw, raw, payload):
    return raw, [raw, *payload]


def near_limit(draw, raw, payload):
    """A frame just under, at or just over the limit (or a decoder bomb at it)."""
    size = MAX_MESSAGE_SIZE + draw(st.sampled_from([-1, 0, 1]))
    if draw(st.booleans()):
        return raw, [*payload, JUNK * size]
    return (BIG_BOMB if size <= MAX_MESSAGE_SIZE else JUNK * size), payload


FRAME_MUTATIONS = [drop_frame, add_frame, truncate, flip_byte, append_bytes, bomb, empty,
                   header_twice, near_limit]


@st.composite
def mutated_messages(draw, client_ids):
    """A valid message built with protocol's own classes and encode, then broken."""
    message, payload = draw(valid_messages(client_ids))
    frames = protocol.encode(message, payload)
    raw, payload = frames[0], frames[1:]
    header_mutations = draw(st.lists(st.sampled_from(HEADER_MUTATIONS), max_size=3))
    if header_mutations:
        header = msgpack.unpackb(raw)
        for mutation in header_mutations:
            header, payload = mutation(draw, header, payload)
        raw = pack(header)
    for mutation in draw(st.lists(st.sampled_from(FRAME_MUTATIONS), max_size=2)):
        raw, payload = mutation(draw, raw, payload)
    return [raw, *payload]


class Frames(list):
    """A message's frames, shown briefly when hypothesis reports an example."""

    def __repr__(self) -> str:
        return "[" + ", ".join(repr(f[:60]) + (f"...({len(f)} bytes)" if len(f) > 60 else "")
                               for f in self) + "]"


def fuzz_messages(client_ids) -> st.SearchStrategy:
    return st.one_of(
        st.lists(st.binary(max_size=64), min_size=1, max_size=4),  # wholly random
        st.builds(lambda header: [pack(header)], any_values),  # random msgpack
        valid_messages(client_ids).map(lambda m: protocol.encode(*m)),
        mutated_messages(client_ids),
        mutated_messages(client_ids),
    ).map(Frames)


class Budget:
    """Caps the megabyte frames a run sends, whatever hypothesis draws."""

    def __init__(self) -> None:
        self.over = OVER_LIMIT_BUDGET
        self.near = NEAR_LIMIT_BUDGET

    def apply(self, frames: list) -> list:
        out = []
        for frame in frames:
            if len(frame) > MAX_MESSAGE_SIZE:
                self.over -= 1
                if self.over < 0:
                    frame = frame[:64]
            elif len(frame) > 64 * 1024:
                self.near -= 1
                if self.near < 0:
                    frame = frame[:64]
            out.append(frame)
        return out


# -- the fuzz run ------------------------------------------------------------------

def fuzz_as(role: Role | None, peer: RawPeer, client_ids: list, on_example) -> int:
    """Send EXAMPLES batches drawn by hypothesis as ``peer``, registered as
    ``role`` at the start of each; returns how many messages it sent."""
    budget = Budget()
    sent = 0

    # derandomize: the same examples every run, so that a failure can be replayed.
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              derandomize=True, print_blob=False, suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(fuzz_messages(client_ids), min_size=1, max_size=6))
    def fuzz(batch):
        nonlocal sent
        for frames in batch:
            peer.send_frames(defang(budget.apply(frames)))
            sent += 1
        peer.sync(role)
        on_example()

    fuzz()
    return sent


@pytest.mark.timeout(240)
def test_fuzzed_peers_cost_a_real_client_nothing(cluster, connect):
    peers = {None: connect(b"fuzz-unknown"), Role.CLIENT: connect(b"fuzz-client"),
             Role.WORKER: connect(b"fuzz-worker")}
    with zeropool.Executor(address=cluster.address) as ex:
        # Warm up the broker's allocator and caches before taking its baseline.
        assert list(ex.map(helpers.square, range(200))) == [i * i for i in range(200)]
        for role, peer in peers.items():
            peer.sync(role)
        baseline = helpers.rss_kib(cluster.broker.pid)

        futures: list = []
        completions: dict = {}
        lock = threading.Lock()
        examples = 0

        def done(future):
            with lock:
                completions[future] = completions.get(future, 0) + 1

        def feed() -> None:
            """Keep the real client's submissions in step with the fuzzing."""
            nonlocal examples
            examples += 1
            target = min(REAL_TASKS, 50 + examples * REAL_TASKS // (len(peers) * EXAMPLES))
            while len(futures) < target:
                future = ex.submit(helpers.square, len(futures))
                future.add_done_callback(done)
                futures.append(future)

        # The real client's id lets raw workers forge results for its very tasks.
        client_ids = [ex._session.client_id, b"fuzz-client", b"fuzz-worker", b"c" * 255]
        sent = sum(fuzz_as(role, peer, client_ids, feed) for role, peer in peers.items())
        examples = len(peers) * EXAMPLES
        feed()
        results = [f.result(timeout=60) for f in futures]

    assert sent >= 3000
    assert results == [i * i for i in range(REAL_TASKS)]
    assert sorted(completions.values()) == [1] * REAL_TASKS, "a future completed twice"
    assert all(peer.dispatches == 0 for peer in peers.values()), \
        "the broker handed a task to a peer that offered no credit"
    cluster.check()
    connect(b"after-the-fuzz").hello(Role.CLIENT)
    grown = helpers.rss_kib(cluster.broker.pid) - baseline
    assert grown < MAX_GROWTH_KIB, f"the broker grew by {grown} KiB while fuzzed"


# -- one rule at a time ----------------------------------------------------------------

def hello_frames(**changes) -> list:
    header = {**Hello(Role.CLIENT, PROTOCOL_VERSION).header(), **changes}
    return [pack(header)]


MALFORMED = [
    pytest.param([b"\xc1"], id="not-msgpack"),
    pytest.param([b"\x82\xa2op"], id="truncated"),
    pytest.param([b""], id="empty-frame"),
    pytest.param([pack(["op", "heartbeat"])], id="not-a-map"),
    pytest.param([pack({"op": "nope"})], id="unknown-op"),
    pytest.param([pack({"op": 5})], id="op-is-int"),
    pytest.param([pack({"op": "submit", "tasks": [[-1, 1, b""]]}), JUNK], id="negative-task-id"),
    pytest.param([pack({"op": "submit", "tasks": [["1", 1, b""]]}), JUNK], id="task-id-is-str"),
    pytest.param([pack({"op": "submit", "tasks": [[True, 1, b""]]}), JUNK],
                 id="task-id-is-bool"),
    pytest.param([pack({"op": "submit", "tasks": [[1, U64, b""]]}), JUNK], id="huge-frame-count"),
    pytest.param([pack({"op": "submit", "tasks": [[1, 0, b""]]})], id="no-payload-either-way"),
    pytest.param([pack({"op": "submit", "tasks": [[1, 1, b"x"]]}), JUNK],
                 id="payload-both-ways"),
    pytest.param(protocol.encode(Submit([[1, 2, b""]]), junk(1)), id="fewer-frames-than-announced"),
    pytest.param(protocol.encode(Submit([[1, 1, b""]]), junk(2)), id="more-frames-than-announced"),
    pytest.param([pack({"op": "cancel", "request_id": 1, "task_ids": 7})], id="ids-not-a-list"),
    pytest.param([pack({"op": "bye", "reason": "x" * (64 * 1024 + 1)})], id="text-too-long"),
    pytest.param([pack({"op": Deep(1000)})], id="op-nested-1000-deep"),
    pytest.param([pack({"op": Deep(1010, maps=True)})], id="op-nested-maps-1010-deep"),
    pytest.param([pack({"op": "submit", "tasks": [[Deep(1000), 1, b""]]}), JUNK],
                 id="task-id-nested-1000-deep"),
    pytest.param([pack({"op": "cancel", "request_id": 1, "task_ids": [Deep(1000)]})],
                 id="cancel-id-nested-1000-deep"),
    pytest.param([Deep(100_000).raw()], id="nested-100000-deep"),
    pytest.param([b"\xdd\xff\xff\xff\xff"], id="array-of-2**32-announced"),
    pytest.param([BIG_BOMB], id="preallocation-bomb-at-the-limit"),
    pytest.param([b"\x81\xa2op\xd7\xff" + b"\xff" * 8], id="bad-timestamp-extension"),
]


@pytest.mark.parametrize("frames", MALFORMED)
@pytest.mark.parametrize("role", [Role.CLIENT, Role.WORKER])
def test_malformed_message_gets_bad_message_and_the_peer_stays(connect, role, frames):
    peer = connect()
    peer.hello(role)
    peer.send_frames(frames)
    assert error_code(peer.reply()) == "bad_message"
    if role is Role.CLIENT:
        peer.round_trip()
    else:
        peer.send(Drain())
        assert isinstance(peer.reply(), Drain)


@pytest.mark.parametrize("frames", [
    pytest.param(protocol.encode(Heartbeat()), id="heartbeat"),
    pytest.param(protocol.encode(Submit([[1, 1, b""]]), junk(1)), id="submit"),
    pytest.param(protocol.encode(Cancel(1, [1])), id="cancel"),
    pytest.param(protocol.encode(WorkerResults([[b"c", 1, 0, 1, b""]], [], 1), junk(1)),
                 id="results"),
    pytest.param(protocol.encode(Drain()), id="drain"),
    *MALFORMED,
])
def test_message_before_hello_gets_unknown_peer(connect, frames):
    peer = connect()
    peer.send_frames(frames)
    assert error_code(peer.reply()) == "unknown_peer"
    peer.hello(Role.CLIENT)  # the broker serves on, and this peer may still join


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, U64])
@pytest.mark.parametrize("role", [Role.CLIENT, Role.WORKER])
def test_wrong_version_is_refused_with_the_brokers_version(connect, role, version):
    peer = connect()
    peer.send(Hello(role, version, credit=1))
    refused = peer.reply()
    assert isinstance(refused, Refused), refused
    assert refused.version == PROTOCOL_VERSION
    assert f"protocol {PROTOCOL_VERSION}" in refused.reason and str(version) in refused.reason
    assert not peer.was_a_client(), "a refused peer was registered"


@pytest.mark.parametrize("frames", [
    pytest.param(hello_frames(version=PROTOCOL_VERSION + 1, pid=-1), id="bad-pid"),
    pytest.param(hello_frames(version=PROTOCOL_VERSION + 1, role="observer"), id="unknown-role"),
    pytest.param([pack({"op": "hello", "version": PROTOCOL_VERSION + 1})],
                 id="only-op-and-version"),
])
def test_another_versions_hello_is_refused_even_if_the_rest_differs(connect, frames):
    """A later protocol may change HELLO's other keys; its peer must still be
    told which version this broker speaks, not that its message is bad."""
    peer = connect()
    peer.send_frames(frames)
    refused = peer.reply()
    assert isinstance(refused, Refused), refused
    assert refused.version == PROTOCOL_VERSION


@pytest.mark.parametrize("role, message, payload", [
    pytest.param(Role.WORKER, Submit([[1, 1, b""]]), junk(1), id="worker-submit"),
    pytest.param(Role.WORKER, Cancel(1, [1]), [], id="worker-cancel"),
    pytest.param(Role.WORKER, Dispatch([[b"c", 1, 1, b""]]), junk(1), id="worker-dispatch"),
    pytest.param(Role.WORKER, Welcome(PROTOCOL_VERSION, 1.0, 5), [], id="worker-welcome"),
    pytest.param(Role.CLIENT, ClientResults([[1, 0, 1, b""]]), [b"x"], id="client-results"),
    pytest.param(Role.CLIENT, WorkerResults([[b"c", 1, 0, 1, b""]], [], 1), [b"x"],
                 id="client-results-as-a-worker-would"),
    pytest.param(Role.CLIENT, Dispatch([[b"c", 1, 1, b""]]), junk(1), id="client-dispatch"),
    pytest.param(Role.CLIENT, Drain(), [], id="client-drain"),
    pytest.param(Role.CLIENT, CancelReply(1, [1]), [], id="client-cancel-reply"),
    pytest.param(Role.CLIENT, Error("x", "y"), [], id="client-error"),
    pytest.param(Role.CLIENT, Refused("x", 1), [], id="client-refused"),
])
def test_op_not_allowed_for_the_role_gets_bad_message(connect, role, message, payload):
    peer = connect()
    peer.hello(role)
    peer.send(message, payload)
    assert error_code(peer.reply()) == "bad_message"


@pytest.mark.parametrize("message, payload", [
    pytest.param(Hello(Role.CLIENT, PROTOCOL_VERSION, init_frames=2), junk(1),
                 id="client-fewer-init-frames"),
    pytest.param(Hello(Role.CLIENT, PROTOCOL_VERSION, init_frames=1 << 16), junk(1),
                 id="client-huge-init-frames"),
    pytest.param(Hello(Role.CLIENT, PROTOCOL_VERSION), junk(1), id="client-unannounced-frame"),
    pytest.param(Hello(Role.WORKER, PROTOCOL_VERSION), junk(1), id="worker-with-payload"),
])
def test_hello_with_other_frames_than_announced_is_refused(connect, message, payload):
    peer = connect()
    peer.send(message, payload)
    assert error_code(peer.reply()) == "bad_message"
    assert not peer.was_a_client(), "the peer was registered"


def test_a_client_cannot_become_a_worker(connect):
    peer = connect()
    peer.hello(Role.CLIENT)
    peer.send(Hello(Role.WORKER, PROTOCOL_VERSION, credit=4))
    assert error_code(peer.reply()) == "bad_message"
    peer.round_trip()  # still a client


def test_a_worker_claiming_to_be_a_client_runs_nothing(connect, cluster, tmp_path):
    peer = connect()
    peer.hello(Role.WORKER)
    peer.send(Hello(Role.CLIENT, PROTOCOL_VERSION))
    assert error_code(peer.reply()) == "bad_message"
    ran = tmp_path / "ran"
    call = dumps_call(helpers.touch, (str(ran),), {})
    peer.send(Submit([[1, len(call), b""]]), call)
    peer.send(Drain())
    peer.expect(lambda m: m.op is Op.DRAIN)  # still a worker, and the SUBMIT was read
    # Had the call been queued, the FIFO queue would have run it before these.
    with zeropool.Executor(address=cluster.address) as ex:
        assert list(ex.map(helpers.square, range(10))) == [i * i for i in range(10)]
    assert not ran.exists()


def test_forged_results_do_not_complete_a_real_future(connect, cluster, tmp_path):
    mark, gate = str(tmp_path / "mark"), str(tmp_path / "gate")
    with zeropool.Executor(address=cluster.address) as ex:
        future = ex.submit(helpers.touch_then_wait, mark, gate)
        wait_until(lambda: os.path.exists(mark), 30, what="the real task to start")
        real_id, task_id = ex._session.client_id, future.task_id
        forger = connect()
        forger.hello(Role.WORKER)
        # Results for a task given to another worker, and for one not yet submitted.
        rows = [[real_id, task_id, int(Status.OK), len(FORGED), b""],
                [real_id, task_id + 1, int(Status.OK), len(FORGED), b""]]
        forger.send(WorkerResults(rows, [[real_id, task_id]], 0), FORGED * 2)
        forger.send(Drain())
        forger.expect(lambda m: m.op is Op.DRAIN)
        # A client may not send results at all.
        client_forger = connect()
        client_forger.hello(Role.CLIENT)
        client_forger.send(ClientResults([[task_id, int(Status.OK), 1, b""]]), FORGED)
        assert error_code(client_forger.reply()) == "bad_message"
        assert not future.done()
        next_one = ex.submit(helpers.square, 7)
        helpers.touch(gate)
        assert isinstance(future.result(timeout=30), int)  # the real worker's pid
        assert next_one.result(timeout=30) == 49


def test_replayed_task_id_from_a_client_is_dropped(connect, tmp_path):
    peer = connect()
    peer.hello(Role.CLIENT)
    gate = str(tmp_path / "gate")
    marks = [str(tmp_path / f"mark-{i}") for i in range(2)]
    # Fill both worker slots, so that a replay the broker wrongly queued would
    # still be in its queue, where CANCEL finds it.
    calls = [dumps_call(helpers.touch_then_wait, (mark, gate), {}) for mark in marks]
    peer.send(Submit([[7, len(calls[0]), b""], [8, len(calls[1]), b""]]),
                      calls[0] + calls[1])
    wait_until(lambda: all(os.path.exists(m) for m in marks), 30, what="both tasks to start")
    replayed = str(tmp_path / "replayed")
    replay = dumps_call(helpers.touch, (replayed,), {})
    peer.send(Submit([[7, len(replay), b""], [8, len(replay), b""]]), replay + replay)
    peer.send(Cancel(99, [7, 8]))
    reply, _, _ = peer.expect(lambda m: m.op is Op.CANCEL_REPLY)
    assert reply == CancelReply(99, []), "a replayed task id was queued"
    helpers.touch(gate)
    finished = {}
    while len(finished) < 2:
        news, payload, _ = peer.expect(lambda m: m.op is Op.RESULTS)
        for (task_id, status, _, _), frames in zip(
                news.results, protocol.unpack_payloads(news.results, 2, payload)):
            assert task_id not in finished, f"task {task_id} finished twice"
            assert status == Status.OK
            finished[task_id] = loads(frames)
    assert set(finished) == {7, 8}
    peer.round_trip()
    assert not os.path.exists(replayed)


def test_frames_at_the_limit_pass_and_over_it_cost_only_the_sender(connect, cluster):
    peer = connect()
    peer.hello(Role.CLIENT)
    peer.send(Submit([[1, 1, b""]]), [JUNK * MAX_MESSAGE_SIZE])
    news, _, _ = peer.expect(lambda m: m.op is Op.RESULTS and m.results)
    assert news.results[0][:2] == [1, int(Status.UNPICKLE_FAILED)]  # a worker got it whole
    peer.send(Submit([[2, 1, b""]]), [JUNK * (MAX_MESSAGE_SIZE + 1)])
    # The broker drops the connection; a message already queued behind the
    # oversized one may go down with it, so ask again until the same peer, on
    # its next connection, is answered.
    deadline = time.monotonic() + 30
    while True:
        try:
            peer.round_trip(timeout=2.0)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "the peer was not served again after reconnecting"
            # A heartbeat that the broker sent between the two connections
            # found the peer gone, and it was forgotten (a peer is gone when its
            # connection is): as a client does when told so, it says HELLO again.
            peer.send(Hello(Role.CLIENT, PROTOCOL_VERSION))
    peer.send(Cancel(5, [2]))
    # Matched by id: the answer to a round trip above that gave up may come late.
    answer, _, _ = peer.expect(lambda m: m.op is Op.CANCEL_REPLY and m.request_id == 5)
    assert answer == CancelReply(5, []), "the over-limit task was queued"
    with zeropool.Executor(address=cluster.address) as ex:
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9


# The broker answers bad messages with an ERROR; with SNDHWM 0, answers to a
# peer that never reads them would queue in the broker without limit (about
# 200 bytes per one-byte message), so it answers each peer once per interval.
@pytest.mark.timeout(120)
def test_a_peer_that_never_reads_its_errors_cannot_grow_the_broker(programs, tmp_path):
    from zeropool.broker.status import query
    with open(tmp_path / "broker.log", "w") as log:  # read by whoever debugs a failure
        broker, address = programs.broker("--log-level", "INFO", stderr=log)
    flooder = Peer(identity=b"flooder")
    flooder.socket.setsockopt(zmq.RCVHWM, 1)  # reads nothing, so replies back up to the broker
    flooder.socket.setsockopt(zmq.RCVBUF, 4096)
    flooder.socket.setsockopt(zmq.SNDHWM, 0)
    try:
        flooder.connect(address)
        flooder.send(Heartbeat())
        # Connected and answered once (the answer is left unread).
        assert flooder.socket.poll(30_000), "no answer to a message before HELLO"
        before = helpers.rss_kib(broker.pid)
        for _ in range(200_000):
            flooder.send_frames([b"\xc1"])
        # Its HELLO, registered once the broker has read every garbage byte before it.
        flooder.send(Hello(Role.CLIENT, PROTOCOL_VERSION))
        wait_until(lambda: "flooder" in [c["id"] for c in query(address, None, 30)["clients"]],
                   60, what="the broker to read the flood")
        grown = helpers.rss_kib(broker.pid) - before
        assert grown < 16 * 1024, (
            f"the broker grew by {grown} KiB holding errors for a peer that never reads them")
    finally:
        flooder.close()
