"""Unit tests for the wire (protocol.messages, protocol.frames) and the payload
pickling (protocol.payload): round trips, strict header validation, frames."""
from __future__ import annotations

import math
import operator
import pickle
import sys
import textwrap
import threading
import types
import weakref

import cloudpickle
import hypothesis
import msgpack
import pytest
from hypothesis import strategies
import zmq

from zeropool import protocol
from zeropool.protocol import payload
from tests import helpers
from zeropool.protocol.errors import RemoteError, RemoteTraceback
from zeropool.protocol.defaults import PROTOCOL_VERSION
from zeropool.protocol.frames import MAX_HEADER_SIZE
from zeropool.protocol.messages import MAX_PEER_ID, MAX_TEXT
from zeropool.protocol import (
    Bye, Cancel, CancelReply, ClientResults, Dispatch, Error, Heartbeat, Hello,
    ProtocolError, Refused, Role, Status, Submit, TaskOptions, Welcome, WorkerResults,
)

U64_MAX = (1 << 64) - 1
PEER = b"\x00peer-1"


def pack(header) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


# -- round trips -------------------------------------------------------------

ROUND_TRIPS = [
    pytest.param(Hello(Role.CLIENT, PROTOCOL_VERSION, init_frames=2, pid=1234, host="h.example"),
                 [b"init-a", b"init-b"], None, id="hello-client"),
    pytest.param(Hello(Role.WORKER, PROTOCOL_VERSION, credit=8, pid=U64_MAX, host="w", threads=2), [], None,
                 id="hello-worker"),
    pytest.param(Welcome(1, 0.25, 5), [], None, id="welcome"),
    pytest.param(Refused("wrong version", 7), [], None, id="refused"),
    pytest.param(Submit([[0, 1, b""], [U64_MAX, 2, b""], [5, 0, b"inline"]]), [b"a", b"b", b"c"], None,
                 id="submit"),
    pytest.param(Submit([[1, 0, b"x", TaskOptions.make(-3)], [2, 1, b"", TaskOptions.make(
        7, {"gpu": 1, "mem": 2.5e9})]]), [b"a"], None, id="submit-with-options"),
    pytest.param(Hello(Role.WORKER, PROTOCOL_VERSION, credit=1, threads=1,
                       resources={"gpu": 2, "mem": 6.4e10}), [], None, id="hello-with-resources"),
    pytest.param(Dispatch([[PEER, 1, 0, b"call", TaskOptions.make(5)], [PEER, 2, 0, b"call"]]),
                 [], None, id="dispatch-with-options"),
    pytest.param(Cancel(3, [1, 2, U64_MAX]), [], None, id="cancel"),
    pytest.param(Cancel(3, [1], queued_only=True), [], None, id="cancel-queued-only"),
    pytest.param(CancelReply(3, [2]), [], None, id="cancel-reply"),
    pytest.param(Dispatch([[PEER, 1, 1, b""], [b"c" * MAX_PEER_ID, 2, 0, b"call-2"]], [[PEER, 1]]),
                 [b"init", b"call"], None, id="dispatch"),
    pytest.param(WorkerResults([[PEER, 1, int(Status.OK), 1, b""], [PEER, 2, int(Status.RAISED), 2, b""]],
                               [[PEER, 3]], 4),
                 [b"r1", b"r2a", b"r2b"], Role.WORKER, id="results-from-worker"),
    pytest.param(ClientResults([[1, int(Status.OK), 1, b""], [2, int(Status.UNPICKLE_FAILED), 0, b"x"]],
                               [3, 4], [[5, "poisoned", "lost on 3 workers"]]),
                 [b"r1"], None, id="results-to-client"),
    pytest.param(ClientResults([[1, int(Status.INIT_FAILED), 1, b""]]), [b"x"], Role.CLIENT,
                 id="results-to-client-sender-client"),
    pytest.param(Heartbeat(), [], None, id="heartbeat"),
    pytest.param(Heartbeat(workers=3), [], None, id="heartbeat-with-workers"),
    pytest.param(Heartbeat(2, [b"c-1", b"c-2"]), [], None, id="heartbeat-with-clients-to-forget"),
    pytest.param(Bye("shutting down"), [], None, id="bye"),
    pytest.param(Bye(), [], None, id="bye-empty"),
    pytest.param(Error("bad_message", "x" * MAX_TEXT), [], None, id="error-longest-text"),
]


@pytest.mark.parametrize("message, frames, sender", ROUND_TRIPS)
def test_every_message_kind_round_trips(message, frames, sender):
    decoded, rest = protocol.decode(protocol.encode(message, frames), sender)
    assert type(decoded) is type(message)
    assert decoded == message
    assert rest == frames


def test_encode_puts_the_header_first_and_payload_unchanged():
    payload_frames = [b"a", memoryview(b"b")]
    frames = protocol.encode(Submit([[1, 2]]), payload_frames)
    assert msgpack.unpackb(frames[0]) == {"op": "submit", "tasks": [[1, 2]]}
    assert frames[1:] == payload_frames
    assert frames[2] is payload_frames[1]


def test_results_header_decodes_by_sender():
    frames = protocol.encode(WorkerResults([], [], 1))
    assert type(protocol.decode(frames, Role.WORKER)[0]) is WorkerResults
    # The same header read as broker->client news lacks "errors".
    with pytest.raises(ProtocolError):
        protocol.decode(frames, None)


def test_decode_accepts_zmq_frames():
    message = Submit([[7, 1, b""]])
    frames = [zmq.Frame(f) for f in protocol.encode(message, [b"call"])]
    decoded, rest = protocol.decode(frames, None)
    assert decoded == message
    assert [f.bytes for f in rest] == [b"call"]


def test_decode_accepts_a_memoryview_header():
    decoded, _ = protocol.decode([memoryview(pack({"op": "heartbeat", "workers": 0}))])
    assert decoded == Heartbeat()


def test_welcome_accepts_an_integer_interval_as_float():
    decoded, _ = protocol.decode([pack({"op": "welcome", "version": 1,
                                        "heartbeat_interval": 2, "liveness": 3,
                                        "max_message_size": 1 << 30})])
    assert decoded == Welcome(1, 2.0, 3)
    assert type(decoded.heartbeat_interval) is float


def test_a_cancel_says_queued_only_only_when_it_is():
    """Absent means False, so a plain cancel's header is as it always was."""
    assert "queued_only" not in Cancel(1, [2]).header()
    assert Cancel(1, [2], queued_only=True).header()["queued_only"] is True
    decoded, _ = protocol.decode([pack(with_(CANCEL, queued_only=False))])
    assert decoded == Cancel(1, [1]) and decoded.queued_only is False
    decoded, _ = protocol.decode([pack(CANCEL)])
    assert decoded.queued_only is False


def test_hello_role_decodes_as_enum():
    decoded, _ = protocol.decode(protocol.encode(Hello(Role.WORKER, PROTOCOL_VERSION, credit=1)))
    assert decoded.role is Role.WORKER


# -- strict validation ---------------------------------------------------------

HELLO = {"op": "hello", "role": "worker", "version": PROTOCOL_VERSION, "credit": 1, "init_frames": 0,
         "pid": 1, "host": "", "threads": 1}
WELCOME = {"op": "welcome", "version": 1, "heartbeat_interval": 1.0, "liveness": 5,
           "max_message_size": 1 << 20}
REFUSED = {"op": "refused", "reason": "no", "version": 1}
SUBMIT = {"op": "submit", "tasks": [[1, 1, b""]]}
CANCEL = {"op": "cancel", "request_id": 1, "task_ids": [1]}
CANCEL_REPLY = {"op": "cancel_reply", "request_id": 1, "task_ids": [1]}
DISPATCH = {"op": "dispatch", "tasks": [[PEER, 1, 1, b""]], "inits": [[PEER, 1]]}
W_RESULTS = {"op": "results", "results": [[PEER, 1, 0, 1, b""]], "started": [[PEER, 2]],
             "credit": 1}
C_RESULTS = {"op": "results", "results": [[1, 0, 1, b""]], "started": [2],
             "errors": [[3, "code", "text"]]}
BYE = {"op": "bye", "reason": ""}
ERROR = {"op": "error", "code": "c", "message": "m"}


def with_(base: dict, **changes) -> dict:
    return {**base, **changes}


def without(base: dict, key: str) -> dict:
    return {k: v for k, v in base.items() if k != key}


@pytest.mark.parametrize("base, sender", [
    (HELLO, None), (WELCOME, None), (REFUSED, None), (SUBMIT, None), (CANCEL, None),
    (CANCEL_REPLY, None), (DISPATCH, None), (W_RESULTS, Role.WORKER), (C_RESULTS, None),
    (BYE, None), (ERROR, None), ({"op": "heartbeat", "workers": 2}, None),
])
def test_valid_base_headers_are_accepted(base, sender):
    """The bases the bad cases below are built from are themselves valid."""
    message, _ = protocol.decode([pack(base)], sender)
    assert message.header() == base


BAD_HEADERS = [
    # Not msgpack at all, or truncated, or trailing bytes.
    pytest.param(b"\xc1", None, id="not-msgpack-reserved-byte"),
    pytest.param(b"\x82\xa2op", None, id="not-msgpack-truncated"),
    pytest.param(b"", None, id="not-msgpack-empty"),
    pytest.param(pack({"op": "heartbeat"}) + b"\x00", None, id="not-msgpack-trailing-data"),
    # Not a map.
    pytest.param(pack(["op", "heartbeat"]), None, id="not-a-map-list"),
    pytest.param(pack("heartbeat"), None, id="not-a-map-str"),
    pytest.param(pack(None), None, id="not-a-map-nil"),
    pytest.param(pack({1: "heartbeat"}), None, id="map-with-int-key"),
    # Unknown op.
    pytest.param(pack({"op": "nope"}), None, id="unknown-op"),
    pytest.param(pack({"op": 5}), None, id="op-is-int"),
    pytest.param(pack({"op": b"heartbeat"}), None, id="op-is-bytes"),
    pytest.param(pack({"op": ["heartbeat"]}), None, id="op-is-list"),
    pytest.param(pack({"op": "heartbeat", "workers": 1, "forget": b"c"}), None,
                 id="heartbeat-forget-not-a-list"),
    pytest.param(pack({"op": "heartbeat", "workers": 1, "forget": ["c"]}), None,
                 id="heartbeat-forget-text-id"),
    pytest.param(pack({"op": "heartbeat", "workers": 1, "forget": [b""]}), None,
                 id="heartbeat-forget-empty-id"),
    pytest.param(pack({}), None, id="missing-op"),
    # Missing keys.
    pytest.param(pack(without(HELLO, "version")), None, id="hello-missing-version"),
    pytest.param(pack(without(HELLO, "host")), None, id="hello-missing-host"),
    pytest.param(pack(without(WELCOME, "liveness")), None, id="welcome-missing-liveness"),
    pytest.param(pack(without(WELCOME, "heartbeat_interval")), None,
                 id="welcome-missing-interval"),
    pytest.param(pack(without(REFUSED, "reason")), None, id="refused-missing-reason"),
    pytest.param(pack(without(SUBMIT, "tasks")), None, id="submit-missing-tasks"),
    pytest.param(pack(without(CANCEL, "request_id")), None, id="cancel-missing-request-id"),
    pytest.param(pack(without(CANCEL_REPLY, "task_ids")), None, id="cancel-reply-missing-ids"),
    pytest.param(pack(without(DISPATCH, "inits")), None, id="dispatch-missing-inits"),
    pytest.param(pack(without(W_RESULTS, "credit")), Role.WORKER, id="w-results-missing-credit"),
    pytest.param(pack(without(W_RESULTS, "started")), Role.WORKER,
                 id="w-results-missing-started"),
    pytest.param(pack(without(C_RESULTS, "errors")), None, id="c-results-missing-errors"),
    pytest.param(pack(without(BYE, "reason")), None, id="bye-missing-reason"),
    pytest.param(pack(without(ERROR, "message")), None, id="error-missing-message"),
    # Wrong types where a number is meant.
    pytest.param(pack(with_(HELLO, version="1")), None, id="version-is-str"),
    pytest.param(pack(with_(HELLO, version=True)), None, id="version-is-bool"),
    pytest.param(pack(with_(HELLO, version=1.0)), None, id="version-is-float"),
    pytest.param(pack(with_(HELLO, credit=True)), None, id="credit-is-bool"),
    pytest.param(pack(with_(HELLO, pid=None)), None, id="pid-is-nil"),
    pytest.param(pack(with_(CANCEL, request_id="3")), None, id="request-id-is-str"),
    pytest.param(pack(with_(CANCEL, task_ids=["1"])), None, id="cancel-id-is-str"),
    pytest.param(pack(with_(CANCEL, task_ids=[False])), None, id="cancel-id-is-bool"),
    pytest.param(pack(with_(CANCEL, task_ids=1)), None, id="cancel-ids-not-a-list"),
    pytest.param(pack(with_(CANCEL, queued_only=1)), None, id="cancel-queued-only-is-int"),
    pytest.param(pack(with_(CANCEL, queued_only="true")), None, id="cancel-queued-only-is-str"),
    pytest.param(pack(with_(CANCEL, queued_only=None)), None, id="cancel-queued-only-is-nil"),
    pytest.param(pack(with_(SUBMIT, tasks=[["1", 1, b""]])), None, id="submit-id-is-str"),
    pytest.param(pack(with_(SUBMIT, tasks=[[True, 1, b""]])), None, id="submit-id-is-bool"),
    pytest.param(pack(with_(SUBMIT, tasks=[[1, 1.0, b""]])), None, id="submit-nframes-is-float"),
    pytest.param(pack(with_(SUBMIT, tasks={"1": 1})), None, id="submit-tasks-is-map"),
    pytest.param(pack(with_(SUBMIT, tasks=[[2.0 ** 64, 1, b""]])), None,
                 id="submit-id-2-pow-64-as-float"),
    pytest.param(pack(with_(W_RESULTS, credit="1")), Role.WORKER, id="w-results-credit-is-str"),
    pytest.param(pack(with_(C_RESULTS, started=["2"])), None, id="c-results-started-is-str"),
    pytest.param(pack(with_(C_RESULTS, errors=[[3, 1, "text"]])), None,
                 id="c-results-error-code-is-int"),
    pytest.param(pack(with_(C_RESULTS, errors=[[3, "code", b"text"]])), None,
                 id="c-results-error-message-is-bytes"),
    pytest.param(pack(with_(BYE, reason=b"bytes")), None, id="bye-reason-is-bytes"),
    pytest.param(pack(with_(HELLO, host=None)), None, id="host-is-nil"),
    # Out of range.
    pytest.param(pack(with_(HELLO, version=-1)), None, id="version-negative"),
    pytest.param(pack(with_(HELLO, credit=(1 << 20) + 1)), None, id="credit-too-large"),
    pytest.param(pack(with_(HELLO, init_frames=(1 << 16) + 1)), None,
                 id="init-frames-too-large"),
    pytest.param(pack(with_(CANCEL, request_id=-1)), None, id="request-id-negative"),
    pytest.param(pack(with_(CANCEL, task_ids=[1, -1])), None, id="cancel-id-negative"),
    pytest.param(pack(with_(CANCEL_REPLY, task_ids=[-(1 << 63)])), None,
                 id="cancel-reply-id-most-negative"),
    pytest.param(pack(with_(SUBMIT, tasks=[[-1, 1, b""]])), None, id="submit-id-negative"),
    pytest.param(pack(with_(SUBMIT, tasks=[[1, -1, b""]])), None, id="submit-nframes-negative"),
    pytest.param(pack(with_(DISPATCH, tasks=[[PEER, -1, 1, b""]])), None, id="dispatch-id-negative"),
    pytest.param(pack(with_(W_RESULTS, credit=(1 << 20) + 1)), Role.WORKER,
                 id="w-results-credit-too-large"),
    pytest.param(pack(with_(C_RESULTS, results=[[-5, 0, 1, b""]])), None,
                 id="c-results-id-negative"),
    pytest.param(pack(with_(WELCOME, liveness=1001)), None, id="liveness-too-large"),
    pytest.param(pack(with_(WELCOME, heartbeat_interval=0)), None, id="interval-zero"),
    pytest.param(pack(with_(WELCOME, heartbeat_interval=-1.0)), None, id="interval-negative"),
    pytest.param(pack(with_(WELCOME, heartbeat_interval=3600)), None, id="interval-too-large"),
    pytest.param(pack(with_(WELCOME, heartbeat_interval=math.nan)), None, id="interval-nan"),
    pytest.param(pack(with_(WELCOME, heartbeat_interval=math.inf)), None, id="interval-inf"),
    pytest.param(pack(with_(WELCOME, heartbeat_interval=True)), None, id="interval-is-bool"),
    pytest.param(pack(with_(WELCOME, heartbeat_interval="1")), None, id="interval-is-str"),
    # Bad peer ids.
    pytest.param(pack(with_(DISPATCH, tasks=[[b"", 1, 1, b""]])), None, id="dispatch-peer-empty"),
    pytest.param(pack(with_(DISPATCH, tasks=[[b"p" * (MAX_PEER_ID + 1), 1, 1, b""]])), None,
                 id="dispatch-peer-too-long"),
    pytest.param(pack(with_(DISPATCH, tasks=[["peer", 1, 1, b""]])), None, id="dispatch-peer-is-str"),
    pytest.param(pack(with_(DISPATCH, inits=[[b"", 1]])), None, id="dispatch-init-peer-empty"),
    pytest.param(pack(with_(DISPATCH, inits=[["peer", 1]])), None,
                 id="dispatch-init-peer-is-str"),
    pytest.param(pack(with_(W_RESULTS, results=[[b"", 1, 0, 1, b""]])), Role.WORKER,
                 id="w-results-peer-empty"),
    pytest.param(pack(with_(W_RESULTS, results=[[b"p" * 256, 1, 0, 1, b""]])), Role.WORKER,
                 id="w-results-peer-too-long"),
    pytest.param(pack(with_(W_RESULTS, started=[["peer", 2]])), Role.WORKER,
                 id="w-results-started-peer-is-str"),
    # Wrong row widths.
    pytest.param(pack(with_(SUBMIT, tasks=[[1]])), None, id="submit-row-too-short"),
    pytest.param(pack(with_(SUBMIT, tasks=[[1, 1, b"", 1]])), None, id="submit-row-too-long"),
    pytest.param(pack(with_(SUBMIT, tasks=[1])), None, id="submit-row-not-a-list"),
    pytest.param(pack(with_(SUBMIT, tasks=[[1, 1, b""], {"a": 1}])), None, id="submit-row-is-map"),
    pytest.param(pack(with_(DISPATCH, tasks=[[PEER, 1]])), None, id="dispatch-row-too-short"),
    pytest.param(pack(with_(DISPATCH, inits=[[PEER, 1, 1]])), None, id="dispatch-init-too-long"),
    pytest.param(pack(with_(W_RESULTS, results=[[PEER, 1, 0, 1]])), Role.WORKER,
                 id="w-results-row-too-short"),
    pytest.param(pack(with_(W_RESULTS, started=[[PEER]])), Role.WORKER,
                 id="w-results-started-row-too-short"),
    pytest.param(pack(with_(C_RESULTS, results=[[1, 0, 1]])), None, id="c-results-row-too-short"),
    pytest.param(pack(with_(C_RESULTS, results=[[PEER, 1, 0, 1, b""]])), None,
                 id="c-results-given-worker-rows"),
    pytest.param(pack(with_(C_RESULTS, errors=[[3, "code"]])), None, id="c-errors-row-too-short"),
    # Unknown role.
    pytest.param(pack(with_(HELLO, role="broker")), None, id="role-unknown"),
    pytest.param(pack(with_(HELLO, role="WORKER")), None, id="role-wrong-case"),
    pytest.param(pack(with_(HELLO, role=1)), None, id="role-is-int"),
    pytest.param(pack(with_(HELLO, role=b"worker")), None, id="role-is-bytes"),
    # Unknown status.
    pytest.param(pack(with_(W_RESULTS, results=[[PEER, 1, 4, 1, b""]])), Role.WORKER,
                 id="w-status-unknown"),
    pytest.param(pack(with_(W_RESULTS, results=[[PEER, 1, -1, 1, b""]])), Role.WORKER,
                 id="w-status-negative"),
    pytest.param(pack(with_(W_RESULTS, results=[[PEER, 1, True, 1, b""]])), Role.WORKER,
                 id="w-status-is-bool"),
    pytest.param(pack(with_(C_RESULTS, results=[[1, 99, 1, b""]])), None, id="c-status-unknown"),
    pytest.param(pack(with_(C_RESULTS, results=[[1, "0", 1, b""]])), None, id="c-status-is-str"),
    # Text longer than the limit.
    pytest.param(pack(with_(BYE, reason="x" * (MAX_TEXT + 1))), None, id="bye-reason-too-long"),
    pytest.param(pack(with_(ERROR, message="x" * (MAX_TEXT + 1))), None,
                 id="error-message-too-long"),
    pytest.param(pack(with_(ERROR, code="x" * (MAX_TEXT + 1))), None, id="error-code-too-long"),
    pytest.param(pack(with_(REFUSED, reason="x" * (MAX_TEXT + 1))), None,
                 id="refused-reason-too-long"),
    pytest.param(pack(with_(HELLO, host="h" * (MAX_TEXT + 1))), None, id="hello-host-too-long"),
]


@pytest.mark.parametrize("raw, sender", BAD_HEADERS)
def test_bad_header_raises_protocol_error(raw, sender):
    with pytest.raises(ProtocolError):
        protocol.decode([raw, b"payload"], sender)


def test_protocol_error_is_a_value_error():
    assert issubclass(ProtocolError, ValueError)


def test_decode_of_no_frames_raises_protocol_error():
    with pytest.raises(ProtocolError, match="empty"):
        protocol.decode([])


def test_header_larger_than_the_limit_is_refused_before_unpacking():
    raw = pack({"op": "bye", "reason": "x" * MAX_HEADER_SIZE})
    assert len(raw) > MAX_HEADER_SIZE
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.decode([raw])


@pytest.mark.parametrize("parse, header", [
    pytest.param(Submit.parse, with_(SUBMIT, tasks=[[1 << 64, 1, b""]]), id="submit-id"),
    pytest.param(Submit.parse, with_(SUBMIT, tasks=[[1, 1 << 64, b""]]), id="submit-nframes"),
    pytest.param(Cancel.parse, with_(CANCEL, task_ids=[1 << 64]), id="cancel-id"),
    pytest.param(Cancel.parse, with_(CANCEL, request_id=1 << 64), id="cancel-request-id"),
    pytest.param(CancelReply.parse, with_(CANCEL_REPLY, task_ids=[1 << 70]), id="reply-id"),
    pytest.param(Dispatch.parse, with_(DISPATCH, tasks=[[PEER, 1 << 64, 1, b""]]), id="dispatch-id"),
    pytest.param(WorkerResults.parse, with_(W_RESULTS, results=[[PEER, 1 << 64, 0, 1, b""]]),
                 id="worker-results-id"),
    pytest.param(ClientResults.parse, with_(C_RESULTS, started=[1 << 64]),
                 id="client-results-started"),
    pytest.param(Hello.parse, with_(HELLO, pid=1 << 64), id="hello-pid"),
    pytest.param(Refused.parse, with_(REFUSED, version=1 << 64), id="refused-version"),
])
def test_ids_of_2_pow_64_or_more_are_refused(parse, header):
    """msgpack cannot carry such ints, but parse must still not accept them."""
    with pytest.raises(ProtocolError):
        parse(header)


def test_largest_u64_id_is_accepted():
    assert Submit.parse(with_(SUBMIT, tasks=[[U64_MAX, U64_MAX, b""]])).tasks == [[U64_MAX, U64_MAX, b""]]


def test_peer_id_of_exactly_255_bytes_is_accepted():
    peer = b"p" * MAX_PEER_ID
    message, _ = protocol.decode([pack(with_(DISPATCH, tasks=[[peer, 1, 1, b""]]))])
    assert message.tasks == [[peer, 1, 1, b""]]


def test_unknown_keys_are_ignored():
    message, _ = protocol.decode([pack(with_(BYE, extra=[1, 2, 3]))])
    assert message == Bye("")


# -- split_frames --------------------------------------------------------------

def test_split_frames_cuts_payload_by_counts():
    assert protocol.split_frames([1, 0, 2], [b"a", b"b", b"c"]) == [[b"a"], [], [b"b", b"c"]]


def test_split_frames_of_nothing_is_empty():
    assert protocol.split_frames([], []) == []


@pytest.mark.parametrize("counts, payload_frames", [
    pytest.param([1, 2], [b"a", b"b"], id="too-few-frames"),
    pytest.param([1], [b"a", b"b"], id="too-many-frames"),
    pytest.param([], [b"a"], id="frames-but-no-counts"),
    pytest.param([0, 1], [], id="counts-but-no-frames"),
])
def test_split_frames_refuses_a_frame_count_mismatch(counts, payload_frames):
    with pytest.raises(ProtocolError, match="payload frames"):
        protocol.split_frames(counts, payload_frames)


def test_submit_announcing_more_frames_than_sent_is_refused():
    message, rest = protocol.decode(protocol.encode(Submit([[1, 2, b""], [2, 1, b""]]),
                                                    [b"a", b"b"]))
    with pytest.raises(ProtocolError):
        protocol.unpack_payloads(message.tasks, 1, rest)


def test_payloads_travel_inline_when_small_and_as_frames_otherwise():
    from zeropool.protocol.defaults import INLINE_MAX
    small, big = b"s" * INLINE_MAX, b"b" * (INLINE_MAX + 1)
    assert protocol.pack_payload([small]) == (0, small, [])
    assert protocol.pack_payload([big]) == (1, b"", [big])
    assert protocol.pack_payload([small, small]) == (2, b"", [small, small])
    view = memoryview(small)  # a buffer, not bytes: kept as a frame (zero-copy)
    assert protocol.pack_payload([view]) == (1, b"", [view])
    rows = [[1, 0, small], [2, 1, b""], [3, 2, b""]]
    assert protocol.unpack_payloads(rows, 1, [big, b"x", b"y"]) == [[small], [big], [b"x", b"y"]]


@pytest.mark.parametrize("row", [[1, 0, b""], [1, 1, b"both"], [1, 0, "text"]])
def test_a_row_carries_its_payload_one_way_exactly(row):
    with pytest.raises(ProtocolError):
        protocol.decode([pack(with_(SUBMIT, tasks=[row]))])


# -- payload -----------------------------------------------------------------

class Bad(Exception):
    """Pickles, but cannot be rebuilt from its args."""

    def __init__(self, a, b):
        super().__init__(a)


def _raise_value_error_in_named_function():
    raise ValueError("boom")


def _raise_bad_in_named_function():
    raise Bad("half", "other")


@pytest.mark.parametrize("obj", [
    None, 0, -1, U64_MAX * 3, 1.5, "text", b"bytes", [1, [2, 3]], (1, "a"),
    {"k": {1, 2}, "v": frozenset()}, bytearray(b"ba"), Status.RAISED, operator.add,
])
def test_dumps_loads_round_trips_plain_objects(obj):
    assert payload.loads(payload.dumps(obj)) == obj


def test_dumps_of_a_lambda_round_trips_by_value():
    fn = payload.loads(payload.dumps(lambda x: x * 3))
    assert fn(4) == 12


def test_large_bytes_round_trip():
    data = bytes(range(256)) * 400  # 100 KiB
    assert payload.loads(payload.dumps(data)) == data


def test_small_bytes_stay_in_band():
    frames = payload.dumps(b"x" * 1000)
    assert len(frames) == 1


def test_large_buffer_travels_out_of_band():
    data = bytearray(range(256)) * 400  # 100 KiB
    frames = payload.dumps(pickle.PickleBuffer(data))
    assert len(frames) == 2
    assert bytes(frames[1]) == data
    assert bytes(payload.loads(frames)) == data


def test_buffer_just_below_the_threshold_stays_in_band():
    frames = payload.dumps(pickle.PickleBuffer(bytearray(payload.OUT_OF_BAND_MIN - 1)))
    assert len(frames) == 1


def test_buffer_at_the_threshold_travels_out_of_band():
    frames = payload.dumps(pickle.PickleBuffer(bytearray(payload.OUT_OF_BAND_MIN)))
    assert len(frames) == 2


def test_loads_accepts_zmq_frames():
    data = bytearray(b"z" * payload.OUT_OF_BAND_MIN)
    frames = payload.dumps({"buf": pickle.PickleBuffer(data), "n": 3})
    loaded = payload.loads([zmq.Frame(bytes(f)) for f in frames])
    assert loaded["n"] == 3
    assert bytes(loaded["buf"]) == data


def test_loads_of_no_frames_raises_unpickling_error():
    with pytest.raises(pickle.UnpicklingError):
        payload.loads([])


def test_dumps_call_round_trips():
    fn, args, kwargs = payload.loads_call(payload.dumps_call(operator.add, (1, 2), {"k": 3}))
    assert fn is operator.add
    assert args == (1, 2)
    assert kwargs == {"k": 3}


def test_dumps_call_raises_when_an_argument_cannot_pickle():
    with pytest.raises(TypeError):
        payload.dumps_call(operator.add, (threading.Lock(),), {})


# textwrap, not tests.helpers: other tests may have made the client send that by value.
def test_a_function_of_an_importable_module_travels_as_its_reference():
    frames = payload.dumps_call(textwrap.indent, ("a", "> "), {})
    reference = pickle.loads(frames[0])[0]
    assert reference == pickle.dumps(textwrap.indent, protocol=5)
    fn, args, kwargs = payload.loads_call(frames)
    assert fn is textwrap.indent
    assert fn(*args, **kwargs) == "> a"


def test_a_module_sent_by_value_later_is_not_sent_by_its_old_reference():
    assert payload.loads_call(payload.dumps_call(textwrap.indent, ("a", "> "), {}))[0] \
        is textwrap.indent
    cloudpickle.register_pickle_by_value(textwrap)
    try:
        fn, args, kwargs = payload.loads_call(payload.dumps_call(textwrap.indent, ("a", "> "), {}))
    finally:
        cloudpickle.unregister_pickle_by_value(textwrap)
    assert fn is not textwrap.indent  # a copy, made from its code
    assert fn(*args) == "> a"
    assert payload.loads_call(payload.dumps_call(textwrap.indent, ("a", "> "), {}))[0] \
        is textwrap.indent


def test_a_function_is_pickled_by_cloudpickle_once(monkeypatch):
    calls = []
    real = payload.cloudpickle.dumps
    monkeypatch.setattr(payload.cloudpickle, "dumps", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(payload, "_function_pickles", weakref.WeakKeyDictionary())
    for i in range(3):
        payload.dumps_call(textwrap.dedent, (str(i),), {})
    assert calls == [(textwrap.dedent,)]


def test_a_function_replaced_in_its_module_travels_by_value(monkeypatch):
    original = textwrap.dedent
    payload.dumps_call(original, ("a",), {})  # cached by reference
    monkeypatch.setattr(textwrap, "dedent", lambda text: "replaced")
    fn, args, _ = payload.loads_call(payload.dumps_call(original, ("  a",), {}))
    assert fn is not textwrap.dedent and fn is not original  # a copy, made from its code
    assert fn(*args) == "a"


def test_an_instance_of_a_class_sent_by_value_is_not_sent_by_reference():
    module = types.ModuleType("zeropool_test_by_value")
    exec("class Point:\n    def __init__(self, x):\n        self.x = x\n", module.__dict__)
    sys.modules[module.__name__] = module
    cloudpickle.register_pickle_by_value(module)
    try:
        frames = payload.dumps_call(helpers.identity, ([module.Point(3)],), {})
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[module.__name__]
    # Unimportable now: it loads only if the class was sent by value.
    assert payload.loads_call(frames)[1][0][0].x == 3


def test_a_closure_travels_by_value_with_its_state_at_each_call():
    state = {"n": 1}

    def read():
        return state["n"]

    first = payload.loads_call(payload.dumps_call(read, (), {}))[0]
    state["n"] = 2
    second = payload.loads_call(payload.dumps_call(read, (), {}))[0]
    assert (first(), second()) == (1, 2)


def test_arguments_holding_objects_go_through_cloudpickle():
    fn, args, kwargs = payload.loads_call(
        payload.dumps_call(helpers.identity, ([1, lambda x: x + 1],), {"k": {2: Bad}}))
    assert args[0][1](1) == 2
    assert kwargs == {"k": {2: Bad}}


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True)
@hypothesis.given(strategies.recursive(
    strategies.none() | strategies.booleans() | strategies.integers() | strategies.text()
    | strategies.binary() | strategies.floats(allow_nan=False),
    lambda children: strategies.lists(children) | strategies.tuples(children, children)
    | strategies.dictionaries(strategies.text(), children)))
def test_builtin_values_round_trip(value):
    fn, args, kwargs = payload.loads_call(payload.dumps_call(helpers.identity, (value,), {}))
    assert fn(*args) == value
    status, frames = payload.dumps_result(value)
    assert payload.loads_result(status, frames) == (True, value)


def test_a_large_bytes_argument_travels_out_of_band_and_arrives_as_bytes():
    data = b"z" * payload.OUT_OF_BAND_MIN
    frames = payload.dumps_call(helpers.identity, (1, data), {"k": data})
    assert len(frames) == 2  # passed twice, sent once
    assert len(frames[0]) < 1000
    _, args, kwargs = payload.loads_call([zmq.Frame(bytes(f)) for f in frames])
    assert type(args[1]) is bytes and args[1] == data
    assert kwargs["k"] is args[1]  # one object, as cloudpickle alone delivers it


def test_a_large_bytes_result_travels_out_of_band_and_arrives_as_bytes():
    data = b"z" * payload.OUT_OF_BAND_MIN
    status, frames = payload.dumps_result(data)
    assert len(frames) == 2
    ok, value = payload.loads_result(status, [zmq.Frame(bytes(f)) for f in frames])
    assert ok and type(value) is bytes and value == data


def test_a_bytearray_is_copied_so_the_caller_may_change_it_at_once():
    data = bytearray(payload.OUT_OF_BAND_MIN)
    frames = payload.dumps_call(helpers.identity, (data,), {})
    data.clear()  # would raise BufferError if the call still exported it
    assert len(frames) == 1
    assert payload.loads_call(frames)[1] == (bytearray(payload.OUT_OF_BAND_MIN),)


def test_bytes_inside_a_container_or_small_stay_in_the_stream():
    small = b"z" * (payload.OUT_OF_BAND_MIN - 1)
    large = b"z" * payload.OUT_OF_BAND_MIN
    assert len(payload.dumps_call(helpers.identity, (small, [large]), {})) == 1


def test_dumps_result_of_a_value_is_ok():
    status, frames = payload.dumps_result({"answer": 42})
    assert status is Status.OK
    assert payload.loads_result(status, frames) == (True, {"answer": 42})


def test_exception_round_trips_with_its_type_and_remote_traceback():
    try:
        _raise_value_error_in_named_function()
    except ValueError as exc:
        status, frames = payload.dumps_exception(exc)
    assert status is Status.RAISED
    ok, value = payload.loads_result(status, frames)
    assert ok is False
    assert type(value) is ValueError
    assert value.args == ("boom",)
    assert isinstance(value.__cause__, RemoteTraceback)
    assert "_raise_value_error_in_named_function" in str(value.__cause__)
    assert "ValueError: boom" in value.__cause__.tb


def test_dumps_exception_keeps_the_status_given():
    status, frames = payload.dumps_exception(RuntimeError("init"), Status.INIT_FAILED)
    assert status is Status.INIT_FAILED
    ok, value = payload.loads_result(status, frames)
    assert ok is False
    assert type(value) is RuntimeError


def test_exception_that_cannot_unpickle_comes_back_as_remote_error():
    try:
        _raise_bad_in_named_function()
    except Bad as exc:
        status, frames = payload.dumps_exception(exc)
    assert status is Status.RAISED
    ok, value = payload.loads_result(status, frames)
    assert ok is False
    assert type(value) is RemoteError
    assert value.type_name == "Bad"
    assert value.message == "half"
    assert "Bad: half" in str(value)
    assert "_raise_bad_in_named_function" in value.tb


def test_unpicklable_result_is_reported_as_pickling_error():
    lock = threading.Lock()
    status, frames = payload.dumps_result(lock)
    assert status is Status.RAISED
    ok, value = payload.loads_result(status, frames)
    assert ok is False
    assert type(value) is pickle.PicklingError
    assert f"of type {type(lock).__name__} could not be pickled" in str(value)
    assert isinstance(value.__cause__, RemoteTraceback)


def test_run_chunk_applies_the_function_to_each_argument_tuple():
    assert payload.run_chunk(operator.add, [(1, 2), (3, 4), ("a", "b")]) == [3, 7, "ab"]


def test_run_chunk_of_an_empty_chunk_is_empty():
    assert payload.run_chunk(operator.add, []) == []


def test_run_chunk_lets_the_first_exception_propagate():
    with pytest.raises(ZeroDivisionError):
        payload.run_chunk(operator.truediv, [(1, 1), (1, 0), (2, 1)])


def test_run_chunk_travels_as_a_call():
    fn, args, kwargs = payload.loads_call(
        payload.dumps_call(payload.run_chunk, (operator.mul, [(2, 3), (4, 5)]), {}))
    assert fn(*args, **kwargs) == [6, 20]


def test_hello_without_a_role_is_a_protocol_error():
    header = {"op": "hello", "version": PROTOCOL_VERSION, "credit": 0, "init_frames": 0,
              "pid": 0, "host": ""}
    with pytest.raises(ProtocolError, match="role"):
        protocol.decode([msgpack.packb(header)])


# -- hostile values ------------------------------------------------------------

def nested(depth: int, maps: bool = False) -> bytes:
    """msgpack of a value nested ``depth`` deep (packb itself stops at 512)."""
    return (b"\x81\xa1k" if maps else b"\x91") * depth + b"\xc0"


def with_nested(header: dict, depth: int, maps: bool = False) -> bytes:
    """``header`` packed with the value "NESTED" replaced by a nested one."""
    return pack(header).replace(pack("NESTED"), nested(depth, maps))


@pytest.mark.parametrize("depth", [900, 1000, 1022])
@pytest.mark.parametrize("raw, sender", [
    pytest.param({"op": "NESTED"}, None, id="op"),
    pytest.param(with_(SUBMIT, tasks=[["NESTED", 1, b""]]), None, id="task-id"),
    pytest.param(with_(CANCEL, task_ids=["NESTED"]), None, id="cancel-id"),
    pytest.param(with_(W_RESULTS, results=[["NESTED", 1, 0, 1, b""]]), Role.WORKER, id="peer-id"),
    pytest.param(with_(W_RESULTS, results=[[PEER, 1, "NESTED", 1, b""]]), Role.WORKER, id="status"),
    pytest.param(with_(HELLO, role="NESTED"), None, id="role"),
])
@pytest.mark.parametrize("maps", [False, True], ids=["lists", "maps"])
def test_deeply_nested_value_is_a_protocol_error_not_a_recursion_error(raw, sender, depth, maps):
    """The builtin repr of such a value raises RecursionError; once, that
    escaped the broker's loop and stopped it."""
    with pytest.raises(ProtocolError) as info:
        protocol.decode([with_nested(raw, depth, maps)], sender)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("raw", [
    pytest.param({"op": "x" * 1_000_000}, id="op"),
    pytest.param(with_(SUBMIT, tasks=[["x" * 1_000_000, 1, b""]]), id="task-id"),
    pytest.param(with_(DISPATCH, tasks=[[b"p" * 1_000_000, 1, 1, b""]]), id="peer-id"),
    pytest.param(with_(SUBMIT, tasks=[[list(range(100_000)), 1, b""]]), id="long-list"),
])
def test_error_text_about_a_huge_value_stays_short(raw):
    with pytest.raises(ProtocolError) as info:
        protocol.decode([pack(raw)])
    assert len(str(info.value)) < 200


OTHER = PROTOCOL_VERSION + 1


@pytest.mark.parametrize("header", [
    pytest.param(with_(HELLO, version=OTHER), id="all-keys"),
    pytest.param(with_(HELLO, version=OTHER, pid=-1, credit="many"), id="bad-other-keys"),
    pytest.param({"op": "hello", "version": OTHER}, id="only-the-version"),
    pytest.param(with_(HELLO, version=OTHER, role=["worker"]), id="role-is-a-list"),
])
def test_another_versions_hello_parses_to_its_version(header):
    """So that the broker can refuse it with its own version, however the
    rest of that version's HELLO differs."""
    message, _ = protocol.decode([pack(header)])
    assert type(message) is Hello
    assert message.version == OTHER


def test_another_versions_hello_keeps_a_known_role():
    message, _ = protocol.decode([pack({"op": "hello", "version": 0, "role": "worker"})])
    assert message.role is Role.WORKER


def test_this_versions_hello_is_still_strict():
    with pytest.raises(ProtocolError):
        protocol.decode([pack(with_(HELLO, pid=-1))])


def test_short_repr_bounds_depth_and_length():
    from zeropool.protocol.messages import short_repr
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert len(short_repr(deep)) < 100
    assert len(short_repr("x" * 10**6)) < 100
    assert len(short_repr(b"x" * 10**6)) < 100
    assert short_repr(7) == "7"
    assert short_repr(b"ab") == "b'ab'"


@pytest.mark.parametrize("options", [
    "high", [1], {"priority": "1"}, {"priority": True}, {"priority": 1 << 40},
    {"resources": {"gpu": -1}}, {"resources": {"gpu": "1"}}, {"resources": [1]},
    {"resources": {"": 1}}, {"nice": 1},
], ids=repr)
def test_bad_task_options_are_protocol_errors(options):
    for header in ({"op": "submit", "tasks": [[1, 0, b"x", options]]},
                   {"op": "dispatch", "tasks": [[b"c", 1, 0, b"x", options]], "inits": []}):
        with pytest.raises(ProtocolError, match="task options"):
            protocol.decode([pack(header)])


def test_bad_worker_resources_are_a_protocol_error():
    header = {**Hello(Role.WORKER, PROTOCOL_VERSION).header(), "resources": {"gpu": -1}}
    with pytest.raises(ProtocolError, match="gpu"):
        protocol.decode([pack(header)])
