"""CANCEL at the broker, with raw peers on both sides so that nothing but the broker decides.

With ``queued_only`` (for ``shutdown(cancel_futures=True)``): ProcessPoolExecutor
cancels only the calls that no worker process has taken (those in its call
queue still run), so the broker first hands workers with free slots what they
can take, then drops only what is still queued, and asks no worker back for
the tasks it holds. Without it, a worker is asked back for the tasks it holds
unstarted; one that lives but does not answer (a task holding its GIL) is not
waited for longer than it takes to find a dead worker.
"""
from __future__ import annotations

import time

import pytest
import zmq

from zeropool.protocol import Cancel, CancelReply, Drain, Op, Submit, Withdrawn
from zeropool.protocol.payload import dumps_call
from tests import helpers
from tests.peer import Peer, packed_rows


@pytest.fixture
def peers(programs):
    # A dead worker is found within the liveness window (0.6 s) and two intervals.
    _, address = programs.broker("--heartbeat-interval", "0.2", "--liveness", "3",
                                 "--log-level", "WARNING")
    context = zmq.Context()
    # Raw peers send no heartbeats: their connections keep them alive.
    yield lambda name: Peer(identity=name, context=context).connect(address)
    context.destroy(linger=0)


def submit(client: Peer, task_ids) -> None:
    task_ids = list(task_ids)
    rows, payload = packed_rows([[i] for i in task_ids],
                                [dumps_call(helpers.square, (i,), {}) for i in task_ids])
    client.send(Submit(rows), payload)


def test_a_queued_only_cancel_drops_what_no_free_slot_takes_and_withdraws_nothing(peers):
    worker, client = peers(b"raw-worker"), peers(b"raw-client")
    worker.join_as_worker(credit=2)
    client.join_as_client()
    # Back to back: the broker may read both in one pass, before it has
    # dispatched anything. The worker's two free slots take the first two all the same.
    submit(client, range(1, 6))
    client.send(Cancel(7, [1, 2, 3, 4, 5], queued_only=True))
    assert client.receive_until(Op.CANCEL_REPLY)[-1] == CancelReply(7, [3, 4, 5])
    # The worker holds its two unstarted, and is not asked for them: anything
    # the cancel sent it comes before the broker's answer to its DRAIN.
    worker.send(Drain())
    news = worker.receive_until(Op.DRAIN)
    assert not [m for m in news if m.op is Op.WITHDRAW], news
    dispatched = [row[:2] for m in news if m.op is Op.DISPATCH for row in m.tasks]
    assert dispatched == [[b"raw-client", 1], [b"raw-client", 2]]


def test_a_cancel_waits_for_a_held_up_worker_no_longer_than_for_a_dead_one(peers):
    """The worker is asked back for the tasks it holds and never answers, but
    stays connected: the cancel is answered without them; their late return
    requeues them (a second cancel then finds them queued)."""
    worker, client = peers(b"raw-worker"), peers(b"raw-client")
    worker.join_as_worker(credit=2)
    client.join_as_client()
    submit(client, [1, 2])
    worker.receive_until(Op.DISPATCH)
    asked_at = time.monotonic()
    client.send(Cancel(8, [1, 2]))
    withdraw = worker.receive_until(Op.WITHDRAW)[-1]
    assert sorted(withdraw.tasks) == [[b"raw-client", 1], [b"raw-client", 2]]
    assert client.receive_until(Op.CANCEL_REPLY)[-1] == CancelReply(8, [])
    waited = time.monotonic() - asked_at
    assert 0.6 < waited < 10, waited  # a liveness window at least; far less than forever
    worker.send(Withdrawn(withdraw.request_id, withdraw.tasks))
    client.send(Cancel(9, [1, 2]))
    assert client.receive_until(Op.CANCEL_REPLY)[-1] == CancelReply(9, [1, 2])
