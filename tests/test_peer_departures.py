"""Unit tests for broker.peers.Peers: drains, departures and lost workers
(tasks requeued or failed back to their clients), and the heartbeats each
peer is sent; driven directly, with a list for a socket."""
from __future__ import annotations

import logging

from zeropool.broker.cancels import CancelChaser
from zeropool.broker.outbox import Outbox
from zeropool.broker.peers import Peers
from zeropool.broker.state import BrokerState
from zeropool.broker.stats import Stats
from zeropool.protocol import Bye, Cancel, Drain, Heartbeat

C1 = b"client-1"
C2 = b"client-2"
W1 = b"worker-1"
W2 = b"worker-2"
TIMEOUT = 10.0


def make(max_retries: int = 3):
    state, stats, sent = BrokerState(peer_timeout=TIMEOUT, max_retries=max_retries), Stats(), []

    def send(peer_id, message, payload=()):
        sent.append((peer_id, message))

    outbox = Outbox()
    cancels = CancelChaser(state, stats, send, 5.0)
    return state, Peers(state, stats, outbox, cancels, send), sent


def test_a_worker_found_unreachable_has_its_tasks_requeued(caplog):
    state, peers, sent = make()
    state.add_client(C1, [], now=0.0)
    state.submit(C1, 1, [b"call"])
    state.add_worker(W1, 1, now=0.0)
    state.assign()
    with caplog.at_level(logging.WARNING, logger="zeropool.broker"):
        peers.unreachable(W1, now=1.0)
    assert state.role_of(W1) is None
    assert [t.task_id for t in state.queue.in_order()] == [1] and peers.stats.requeued == 1
    assert "worker(s) 776f726b65722d31 unreachable; 1 task(s) requeued" in caplog.text


def test_a_long_silence_is_named_as_the_cause(caplog):
    state, peers, sent = make()
    state.add_worker(W1, 1, now=0.0)
    with caplog.at_level(logging.WARNING, logger="zeropool.broker"):
        peers.unreachable(W1, now=TIMEOUT)
    assert f"silent for {TIMEOUT:.1f}s" in caplog.text


def test_a_task_that_took_down_too_many_workers_fails_back_to_its_client():
    state, peers, sent = make(max_retries=1)
    state.add_client(C1, [], now=0.0)
    state.submit(C1, 1, [b"call"])
    state.add_worker(W1, 1, now=0.0)
    state.assign()
    state.started(W1, (C1, 1))
    peers.unreachable(W1, now=1.0)
    [(task_id, code, text)] = peers.outbox.for_client(C1).errors
    assert (task_id, code) == (1, "worker_lost") and "that died" in text
    assert peers.stats.failed == 1 and not state.queue.count


def test_a_gone_client_is_forgotten_with_its_queue_and_its_cancels():
    state, peers, sent = make()
    state.add_client(C1, [], now=0.0)
    for task_id in (1, 2, 3):
        state.submit(C1, task_id, [b"call"])
    state.add_worker(W1, 2, now=0.0, threads=1)
    state.assign()
    peers.cancels.cancel(C1, Cancel(9, [2]), now=1.0)
    assert peers.cancels.pending
    peers.unreachable(C1, now=2.0)
    assert state.role_of(C1) is None and not state.queue.count and not peers.cancels.pending


def test_a_draining_worker_is_told_so_and_given_nothing_more():
    state, peers, sent = make()
    state.add_worker(W1, 3, now=0.0)
    peers.on_drain(W1, Drain(), [], now=1.0)
    assert sent == [(W1, Drain())]
    assert state.workers[W1].draining and W1 not in state.ready


def test_a_worker_that_leaves_costs_its_tasks_no_try():
    state, peers, sent = make()
    state.add_client(C1, [], now=0.0)
    state.submit(C1, 1, [b"call"])
    state.add_worker(W1, 1, now=0.0)
    state.assign()
    state.started(W1, (C1, 1))
    peers.on_worker_bye(W1, Bye("done"), [], now=1.0)
    [task] = state.queue.in_order()
    assert task.lost_on == () and not task.suspect


def test_heartbeats_tell_workers_of_gone_clients_once_and_clients_the_versions():
    state, peers, sent = make()
    state.add_client(C1, [b"init"], now=0.0)
    state.add_client(C2, [], now=0.0)
    state.submit(C1, 1, [b"call"])
    state.add_worker(W1, 1, now=0.0)
    state.workers[W1].versions = {"python": "3.12.1", "zeropool": "1.0", "other": "x"}
    state.add_worker(W2, 1, now=0.0)
    state.assign()
    state.remove_client(C1)
    peers.heartbeats()
    beats = dict(sent)
    assert beats[W1].forget == [C1] and beats[W2].forget == []
    assert beats[C2] == Heartbeat(2, versions=[{"python": "3.12.1", "zeropool": "1.0"}])
    sent.clear()
    peers.heartbeats()
    assert dict(sent)[W1].forget == []


def test_a_silent_peer_that_stays_connected_is_kept_and_noted_once(caplog):
    state, peers, sent = make()
    state.add_worker(W1, 1, now=0.0)
    with caplog.at_level(logging.INFO, logger="zeropool.broker"):
        peers.note_silent(TIMEOUT + 1, unreachable=set())
        peers.note_silent(TIMEOUT + 2, unreachable=set())
    assert caplog.text.count("but still connected") == 1
    assert state.role_of(W1) == "worker"


def test_the_broker_says_goodbye_to_everyone():
    state, peers, sent = make()
    state.add_client(C1, [], now=0.0)
    state.add_worker(W1, 1, now=0.0)
    peers.goodbye()
    assert sent == [(W1, Bye("broker stopping")), (C1, Bye("broker stopping"))]
