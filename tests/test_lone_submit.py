"""A lone call (one row, default options, the last message of its pass, with
nothing queued) skips the queue: BrokerState.submit_lone. It must end as
submit() then assign() end: the same worker, the same DISPATCH, the same
tables, flags and counters."""
from __future__ import annotations

import zmq
from hypothesis import given, settings, strategies as st

from zeropool.broker.state import BrokerState
from zeropool.protocol import (
    PROTOCOL_VERSION, Op, Role, Stats, Submit, SubmitRow, TaskOptions, WorkerResultRow,
    WorkerResults,
)
from tests.peer import Peer

C1, C2 = b"client-1", b"client-2"
WORKERS = [b"worker-1", b"worker-2", b"worker-3"]


def setting_up(state: BrokerState, workers: list, earlier: list, isolating: list,
               init: bool) -> None:
    """Workers (credit, threads, Python), tasks given out before (their
    priorities), and the lone caller C2 (with an initializer, or not)."""
    state.add_client(C1, [], 0.0)
    state.add_client(C2, [b"init"] if init else [], 0.0).python = "3.12"
    state.clients[C2].versions = {"python": "3.12.1"}
    for worker_id, (credit, threads, python) in zip(WORKERS, workers):
        worker, _ = state.add_worker(worker_id, credit, 0.0, threads=threads)
        worker.python = python
    for task_id, priority in enumerate(earlier):
        state.submit(C1, task_id, b"earlier", 0.0, TaskOptions.make(priority))
    state.assign()
    for worker_id, flag in zip(WORKERS, isolating):
        if worker_id in state.workers:
            state.workers[worker_id].isolating = flag


def snapshot(state: BrokerState) -> tuple:
    workers = {w: (x.credit, x.isolating, sorted(x.in_flight), sorted(x.inits_sent),
                   sorted(x.pythons_sent)) for w, x in state.workers.items()}
    clients = {c: (sorted(x.waiting), x.in_flight) for c, x in state.clients.items()}
    return (list(state.ready), list(state.holders), state.steal_due, state.preempt_due,
            state.dispatch_due, dict(state.in_flight), dict(state.held_priorities),
            [t.key for t in state.queue.in_order()], state.queue.count, workers, clients)


def sent(assignments: list) -> list:
    return [(a.worker_id, [(t.key, t.frames, t.time, t.flags) for t in a.tasks], a.inits,
             a.pythons) for a in assignments]


@settings(max_examples=300, deadline=None)
@given(workers=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 2),
                                  st.sampled_from(["", "3.11", "3.12"])), min_size=0, max_size=3),
       earlier=st.lists(st.sampled_from([0, 0, 2]), max_size=6),
       isolating=st.lists(st.booleans(), min_size=3, max_size=3),
       init=st.booleans(), replay=st.booleans())
def test_a_lone_call_ends_as_submit_then_assign_end(workers, earlier, isolating, init, replay):
    fast, slow = BrokerState(10.0, 3), BrokerState(10.0, 3)
    for state in (fast, slow):
        setting_up(state, workers, earlier, isolating, init)
    task_id = 0 if replay and earlier else 100  # 0: C1's; C2's own replay below
    client = C1 if replay and earlier else C2
    before = snapshot(fast)
    lone = fast.submit_lone(client, task_id, b"call", 1.0)
    if lone is None:  # the server submits it as any other
        assert snapshot(fast) == before or fast.held_priorities
        fast.submit(client, task_id, b"call", 1.0)
    # The server's _dispatch follows either way.
    got = ([lone] if lone is not None else []) + fast.assign()
    slow.submit(client, task_id, b"call", 1.0)
    assert sent(got) == sent(slow.assign())
    assert snapshot(fast) == snapshot(slow)


def test_a_replay_is_not_taken_alone():
    state = BrokerState(10.0, 3)
    state.add_client(C1, [], 0.0)
    state.add_worker(WORKERS[0], 2, 0.0)
    [assignment] = [state.submit_lone(C1, 7, b"call", 0.0)]
    assert [t.key for t in assignment.tasks] == [(C1, 7)]
    assert state.submit_lone(C1, 7, b"again", 0.0) is None  # in flight: dropped by submit()
    assert not state.submit(C1, 7, b"again", 0.0)


def status_after_calls(programs, lone: bool, calls: int = 4) -> dict:
    """A raw client's calls through a real broker to two raw workers, each
    answered before the next is sent; the broker's report after."""
    _, address = programs.broker("--log-level", "WARNING")
    context = zmq.Context()
    try:
        workers = [Peer(identity=w, context=context).connect(address) for w in WORKERS[:2]]
        for worker in workers:
            worker.join_as_worker(credit=1)
        client = Peer(identity=C1, context=context).connect(address)
        client.join_as_client()
        for task_id in range(1, calls + 1):
            call = f"call {task_id}".encode()
            # Inline, the call may go out alone; as a payload frame it is queued first.
            if lone:
                client.send(Submit([SubmitRow(task_id, 0, call)]))
            else:
                client.send(Submit([SubmitRow(task_id, 1, b"")]), [call])
            dispatch = None
            while dispatch is None:
                for worker in workers:
                    got = worker.receive(0.05)
                    if got is not None and got.message.op is Op.DISPATCH:
                        dispatch, payload, taker = got.message, got.payload, worker
            [row] = dispatch.tasks
            assert row[:2] == [C1, task_id]
            assert (row[3] or bytes(payload[0])) == call
            taker.send(WorkerResults([WorkerResultRow(C1, task_id, 0, 0, b"done")], credit=1))
            answer = client.expect(lambda m: m.op is Op.RESULTS and m.results, Role.CLIENT)
            assert [r[0] for r in answer.message.results] == [task_id]
        client.send(Stats(PROTOCOL_VERSION))
        report = client.expect(Op.STATS_REPLY).message.report
    finally:
        context.destroy(linger=0)
    for volatile in ("address", "pid", "uptime", "tasks_per_second"):
        del report[volatile]
    for peer in report["workers"] + report["clients"]:
        for volatile in ("pid", "last_heartbeat"):
            peer.pop(volatile, None)
    return report


def test_lone_calls_and_queued_ones_leave_the_same_status(programs):
    lone, queued = status_after_calls(programs, True), status_after_calls(programs, False)
    assert lone == queued
    assert lone["completed"] == 4 and lone["queued"] == lone["in_flight"] == 0
    # The two workers took turns, the same way both times.
    assert [w["done"] for w in lone["workers"]] == [2, 2]
