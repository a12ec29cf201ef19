"""Unit tests for broker.cancels.CancelChaser: a cancel answered at once for
queued tasks, and followed to the workers that hold its tasks unstarted,
driven directly with explicit ``now`` values and a list for a socket."""
from __future__ import annotations

from zeropool.broker.cancels import MAX_CANCEL_CHASES, CancelChaser
from zeropool.broker.state import BrokerState
from zeropool.broker.stats import Stats
from zeropool.protocol import Cancel, CancelReply, Withdraw, Withdrawn

C1 = b"client-1"
W1 = b"worker-1"
W2 = b"worker-2"
PATIENCE = 5.0


def make(*task_ids, credit: int = 4, threads: int = 1):
    """A client whose tasks sit on W1 (one thread, so all but the first wait
    there unstarted), and a chaser that records what it sends."""
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(C1, [], now=0.0)
    for task_id in task_ids:
        state.submit(C1, task_id, [b"call"])
    state.add_worker(W1, credit, now=0.0, threads=threads)
    state.assign()
    sent = []
    chaser = CancelChaser(state, Stats(), lambda peer, message, payload=(): sent.append(
        (peer, message)), PATIENCE)
    return state, chaser, sent


def replies(sent: list) -> list:
    return [(peer, m.request_id, sorted(m.task_ids)) for peer, m in sent
            if isinstance(m, CancelReply)]


def withdraws(sent: list) -> list:
    return [(peer, m) for peer, m in sent if isinstance(m, Withdraw)]


def test_a_cancel_of_queued_tasks_is_answered_at_once():
    state, chaser, sent = make(credit=0)
    for task_id in (1, 2, 3):
        state.submit(C1, task_id, [b"call"])
    chaser.cancel(C1, Cancel(7, [1, 3]), now=1.0)
    assert replies(sent) == [(C1, 7, [1, 3])]
    assert not chaser.pending and chaser.stats.cancelled == 2
    assert [t.task_id for t in state.queue.in_order()] == [2]


def test_queued_only_does_not_ask_workers_back():
    state, chaser, sent = make(1, 2)
    chaser.cancel(C1, Cancel(7, [1, 2], queued_only=True), now=1.0)
    assert replies(sent) == [(C1, 7, [])]
    assert not withdraws(sent)


def test_tasks_held_unstarted_are_asked_back_and_dropped_when_given():
    state, chaser, sent = make(1, 2, 3)
    state.started(W1, (C1, 1))
    chaser.cancel(C1, Cancel(7, [1, 2, 3]), now=1.0)
    [(worker_id, withdraw)] = withdraws(sent)
    assert worker_id == W1 and withdraw.tasks == [[C1, 2], [C1, 3]]  # not the running one
    assert not replies(sent)  # it waits for the worker's answer
    chaser.on_withdrawn(W1, Withdrawn(withdraw.request_id, [[C1, 2], [C1, 3]]), [], now=1.1)
    assert replies(sent) == [(C1, 7, [2, 3])]
    assert set(state.in_flight) == {(C1, 1)} and not state.queue.count  # dropped, not requeued
    assert chaser.stats.cancelled == 2 and not chaser.pending


def test_what_the_worker_started_meanwhile_is_not_cancelled():
    state, chaser, sent = make(1, 2)
    chaser.cancel(C1, Cancel(7, [2]), now=1.0)
    [(_, withdraw)] = withdraws(sent)
    chaser.on_withdrawn(W1, Withdrawn(withdraw.request_id, []), [], now=1.1)
    assert replies(sent) == [(C1, 7, [])]
    assert (C1, 2) in state.in_flight


def test_a_task_that_moved_to_another_worker_is_followed_there():
    state, chaser, sent = make(1, 2)
    chaser.cancel(C1, Cancel(7, [2]), now=1.0)
    [(_, first)] = withdraws(sent)
    # Meanwhile W1 gave task 2 back for an idle worker, and it went to W2.
    state.ask_back.withdraw(W1, [[C1, 2]], requeue=True)
    state.add_worker(W2, 1, now=2.0)
    [assignment] = state.assign()
    assignment.tasks[0].dispatch(2.0)
    chaser.on_withdrawn(W1, Withdrawn(first.request_id, []), [], now=2.5)
    assert not replies(sent)
    [_, (worker_id, second)] = withdraws(sent)
    assert worker_id == W2 and second.tasks == [[C1, 2]]
    chaser.on_withdrawn(W2, Withdrawn(second.request_id, [[C1, 2]]), [], now=2.6)
    assert replies(sent) == [(C1, 7, [2])]


def test_the_chase_stops_after_a_few_moves():
    state, chaser, sent = make(1, 2)
    chaser.cancel(C1, Cancel(7, [2]), now=1.0)
    holder, now = W1, 1.0
    for chase in range(MAX_CANCEL_CHASES + 1):
        _, withdraw = withdraws(sent)[-1]
        other = b"worker-%d" % (chase + 10)
        state.ask_back.withdraw(holder, [[C1, 2]], requeue=True)
        now += 1.0
        state.add_worker(other, 1, now=now)
        for assignment in state.assign():
            for task in assignment.tasks:
                task.dispatch(now)
        chaser.on_withdrawn(holder, Withdrawn(withdraw.request_id, []), [], now=now)
        holder = other
    assert len(withdraws(sent)) == 1 + MAX_CANCEL_CHASES
    assert replies(sent) == [(C1, 7, [])]


def test_a_task_requeued_meanwhile_is_cancelled_in_the_queue():
    state, chaser, sent = make(1, 2)
    chaser.cancel(C1, Cancel(7, [2]), now=1.0)
    [(_, withdraw)] = withdraws(sent)
    state.ask_back.withdraw(W1, [[C1, 2]], requeue=True)  # for an idle worker, unasked for
    chaser.on_withdrawn(W1, Withdrawn(withdraw.request_id, []), [], now=1.5)
    assert replies(sent) == [(C1, 7, [2])]
    assert not state.queue.count


def test_a_worker_that_does_not_answer_in_time_is_given_up_on():
    state, chaser, sent = make(1, 2)
    chaser.cancel(C1, Cancel(7, [2]), now=1.0)
    [(_, withdraw)] = withdraws(sent)
    chaser.give_up(now=1.0 + PATIENCE)
    assert not replies(sent)
    chaser.give_up(now=1.1 + PATIENCE)
    assert replies(sent) == [(C1, 7, [])]
    # Its late answer requeues what it gives back: the cancel was answered without it.
    chaser.on_withdrawn(W1, Withdrawn(withdraw.request_id, [[C1, 2]]), [], now=9.0)
    assert [t.task_id for t in state.queue.in_order()] == [2]


def test_a_cancel_waiting_on_a_worker_that_died_is_answered_for_it():
    state, chaser, sent = make(1, 2)
    chaser.cancel(C1, Cancel(7, [2]), now=1.0)
    expired = state.remove_worker(W1, lost=True, now=2.0)
    chaser.workers_gone(expired.workers, now=2.0)
    assert replies(sent) == [(C1, 7, [2])]  # requeued with it, then cancelled in the queue
    assert [t.task_id for t in state.queue.in_order()] == [1]


def test_a_gone_clients_cancels_are_forgotten():
    state, chaser, sent = make(1, 2)
    chaser.cancel(C1, Cancel(7, [2]), now=1.0)
    [(_, withdraw)] = withdraws(sent)
    state.remove_client(C1)
    chaser.drop_client(C1)
    assert not chaser.pending
    chaser.on_withdrawn(W1, Withdrawn(withdraw.request_id, [[C1, 2]]), [], now=1.5)
    assert not replies(sent)


def test_an_unasked_give_back_requeues_at_the_front_and_takes_back_credit():
    state, chaser, sent = make(1, 2, 3, credit=5)
    state.submit(C1, 4, [b"call"])
    assert W1 in state.ready
    chaser.on_withdrawn(W1, Withdrawn(0, [[C1, 2], [C1, 3]]), [], now=1.0)
    assert [t.task_id for t in state.queue.in_order()] == [2, 3, 4]
    assert state.workers[W1].credit == 0 and W1 not in state.ready
    chaser.on_withdrawn(W1, Withdrawn(0, [], credit=2), [], now=1.1)
    assert state.workers[W1].credit == 2 and W1 in state.ready


def test_withdraw_ids_of_the_loops_own_asking_back_match_no_cancel():
    state, chaser, sent = make(1, 2)
    chaser.cancel(C1, Cancel(7, [2]), now=1.0)
    other = chaser.next_id()
    assert other not in chaser.pending
    chaser.on_withdrawn(W1, Withdrawn(other, [[C1, 2]]), [], now=1.1)
    assert [t.task_id for t in state.queue.in_order()] == [2]  # requeued, not cancelled
    assert not replies(sent)
