"""Unit tests for broker.admission.Admission: who gets in (versions, keys
still authorized, revoked keys), and complaints about bad input answered at
a bounded rate; driven directly, with a list for a socket."""
from __future__ import annotations

import logging

import pytest

from zeropool.broker.admission import (
    MAX_COMPLAINTS_PER_INTERVAL, MAX_PEERS_ANSWERED_PER_INTERVAL, Admission,
)
from zeropool.broker.auth import KeyRing
from zeropool.broker.cancels import CancelChaser
from zeropool.broker.outbox import Outbox
from zeropool.broker.peers import Peers
from zeropool.broker.state import BrokerState
from zeropool.broker.stats import Stats
from zeropool.protocol import (
    PROTOCOL_VERSION, Error, Heartbeat, Hello, ProtocolError, Refused, Role, StatsReply, Welcome,
)
from zeropool.protocol import Stats as StatsRequest

C1 = b"client-1"
W1 = b"worker-1"
WELCOME = Welcome(PROTOCOL_VERSION, 1.0, 5, 1 << 20)


class Keys:
    """Stands for a KeyRing: the keys in it, and those a refresh removes."""

    def __init__(self, *keys: bytes) -> None:
        self.keys, self.revoked = set(keys), set()

    def __contains__(self, key: bytes) -> bool:
        return key in self.keys

    def refresh(self) -> set:
        self.keys -= self.revoked
        return self.revoked


def make(keys: KeyRing | Keys | None = None):
    state, stats, sent = BrokerState(peer_timeout=10.0, max_retries=3), Stats(), []

    def send(peer_id, message, payload=()):
        sent.append((peer_id, message))

    cancels = CancelChaser(state, stats, send, 5.0)
    peers = Peers(state, stats, Outbox(), cancels, send)
    admission = Admission(state, peers, send, WELCOME, lambda: {"queued": 0}, keys)
    return state, admission, sent


def hello(role: Role, version: int = PROTOCOL_VERSION, **fields) -> Hello:
    fields = {"pid": 7, "host": "h", **fields}
    return Hello(role, version, **fields)


def test_a_client_is_welcomed_and_told_the_workers_at_once():
    state, admission, sent = make()
    admission.on_hello(C1, hello(Role.CLIENT, versions={"python": "3.12.1"}), [], now=1.0)
    assert state.role_of(C1) == "client" and state.clients[C1].python == "3.12"
    assert [(peer, type(m)) for peer, m in sent] == [(C1, Welcome), (C1, Heartbeat)]
    assert sent[0][1] is WELCOME and sent[1][1].workers == 0


def test_a_worker_joining_tells_every_client_the_new_count():
    state, admission, sent = make()
    admission.on_hello(C1, hello(Role.CLIENT), [], now=1.0)
    sent.clear()
    admission.on_hello(W1, hello(Role.WORKER, credit=2, threads=2), [], now=2.0)
    assert [(peer, type(m)) for peer, m in sent] == [(W1, Welcome), (C1, Heartbeat)]
    assert sent[1][1].workers == 1 and state.workers[W1].threads == 2


def test_a_peer_may_not_change_its_role():
    state, admission, sent = make()
    admission.on_hello(C1, hello(Role.CLIENT), [], now=1.0)
    with pytest.raises(ProtocolError, match="now claims to be worker"):
        admission.on_hello(C1, hello(Role.WORKER, credit=1), [], now=2.0)


def test_another_protocol_version_is_refused_once_per_interval():
    state, admission, sent = make()
    for _ in range(3):
        admission.on_hello(C1, hello(Role.CLIENT, version=PROTOCOL_VERSION + 1), [], now=1.0)
    [(peer, refused)] = sent
    assert peer == C1 and isinstance(refused, Refused)
    assert f"the peer speaks {PROTOCOL_VERSION + 1}" in refused.reason
    assert state.role_of(C1) is None
    admission.new_interval()
    admission.on_stats(C1, StatsRequest(PROTOCOL_VERSION + 1))
    assert len(sent) == 2


def test_stats_are_answered_with_the_report():
    state, admission, sent = make()
    admission.on_stats(C1, StatsRequest(PROTOCOL_VERSION))
    assert sent == [(C1, StatsReply({"queued": 0}))]


def test_complaints_are_logged_at_a_bounded_rate(caplog):
    state, admission, sent = make()
    with caplog.at_level(logging.WARNING, logger="zeropool.broker"):
        for number in range(MAX_COMPLAINTS_PER_INTERVAL + 5):
            admission.complain(b"peer-%d" % number, "bad_message", "garbage")
    assert len(caplog.records) == MAX_COMPLAINTS_PER_INTERVAL + 1
    assert "not logging them" in caplog.records[-1].getMessage()
    # Each peer is still told, once.
    assert len(sent) == MAX_COMPLAINTS_PER_INTERVAL + 5
    assert all(isinstance(m, Error) and m.code == "bad_message" for _, m in sent)


def test_replies_nobody_asked_for_go_to_a_bounded_number_of_peers():
    state, admission, sent = make()
    for number in range(MAX_PEERS_ANSWERED_PER_INTERVAL + 3):
        admission.complain(b"peer-%d" % number, "bad_message", "garbage")
    assert len(sent) == MAX_PEERS_ANSWERED_PER_INTERVAL
    admission.new_interval()
    admission.complain(b"peer-0", "bad_message", "garbage")
    assert len(sent) == MAX_PEERS_ANSWERED_PER_INTERVAL + 1


def test_a_key_removed_since_the_handshake_is_refused():
    keys = Keys(b"key-1")
    state, admission, sent = make(keys)
    assert admission.key_still_valid(C1, b"key-1", "127.0.0.1")
    assert admission.peer_keys == {C1: b"key-1"}
    assert not admission.key_still_valid(W1, b"key-2", "127.0.0.1")
    [(peer, refused)] = sent
    assert peer == W1 and "no longer authorized" in refused.reason


def test_peers_whose_keys_are_revoked_are_refused_and_removed():
    keys = Keys(b"key-c", b"key-w")
    state, admission, sent = make(keys)
    for peer_id, role, key in ((C1, Role.CLIENT, b"key-c"), (W1, Role.WORKER, b"key-w")):
        assert admission.key_still_valid(peer_id, key, "here")
        admission.on_hello(peer_id, hello(role, credit=1), [], now=1.0)
    state.submit(C1, 1, [b"call"])
    state.assign()
    sent.clear()
    keys.revoked = {b"key-w"}
    admission.reload_keys(now=2.0)
    assert [(peer, type(m)) for peer, m in sent] == [(W1, Refused)]
    assert "was revoked" in sent[0][1].reason
    assert state.role_of(W1) is None and admission.peer_keys == {C1: b"key-c"}
    assert [t.task_id for t in state.queue.in_order()] == [1]  # requeued, not lost
    keys.revoked = {b"key-c"}
    admission.reload_keys(now=3.0)
    assert state.role_of(C1) is None and not admission.peer_keys


def test_a_client_is_told_once_that_no_worker_has_what_its_tasks_need():
    state, admission, sent = make()
    admission.on_hello(C1, hello(Role.CLIENT), [], now=1.0)
    sent.clear()
    needs = (("gpu", 1.0),)
    admission.warn_unsatisfiable(C1, needs)
    admission.warn_unsatisfiable(C1, needs)
    [(peer, error)] = sent
    assert error.code == "unsatisfiable" and "worker --resources gpu=1" in error.message
    # A worker joining may have it: the client would be told again.
    admission.on_hello(W1, hello(Role.WORKER, credit=1), [], now=2.0)
    assert not state.clients[C1].warned
