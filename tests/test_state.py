"""Unit tests for broker.state.BrokerState: queueing, credit, cancellation,
peer loss and liveness, all driven directly with explicit ``now`` values."""
from __future__ import annotations

from zeropool.broker.state import Assignment, BrokerState

C1 = b"client-1"
C2 = b"client-2"
W1 = b"worker-1"
W2 = b"worker-2"
W3 = b"worker-3"


def make_state(*clients: bytes, timeout: float = 10.0, max_retries: int = 3) -> BrokerState:
    state = BrokerState(peer_timeout=timeout, max_retries=max_retries)
    for client_id in clients or (C1,):
        state.add_client(client_id, [], now=0.0)
    return state


def submit_all(state: BrokerState, client_id: bytes, task_ids) -> None:
    for task_id in task_ids:
        assert state.submit(client_id, task_id, [f"call-{task_id}".encode()])


def ids(assignment: Assignment) -> list:
    return [task.task_id for task in assignment.tasks]


def keys(assignment: Assignment) -> list:
    return [task.key for task in assignment.tasks]


def queue_order(state: BrokerState) -> list:
    """The tasks still queued, front first."""
    return state.queue.in_order()


def by_worker(assignments: list[Assignment]) -> dict:
    tasks: dict = {}
    for assignment in assignments:
        tasks.setdefault(assignment.worker_id, []).extend(ids(assignment))
    return tasks


# -- dispatch order and credit --------------------------------------------------

def test_tasks_are_dispatched_in_submission_order():
    state = make_state()
    submit_all(state, C1, [5, 3, 9, 1])
    state.add_worker(W1, 10, now=0.0)
    [assignment] = state.assign()
    assert assignment.worker_id == W1
    assert ids(assignment) == [5, 3, 9, 1]
    assert [t.frames for t in assignment.tasks] == [[b"call-5"], [b"call-3"], [b"call-9"],
                                                   [b"call-1"]]


def test_fifo_order_holds_across_assign_rounds():
    state = make_state()
    submit_all(state, C1, range(6))
    state.add_worker(W1, 2, now=0.0)
    assert [ids(a) for a in state.assign()] == [[0, 1]]
    state.add_credit(W1, 2)
    assert [ids(a) for a in state.assign()] == [[2, 3]]
    state.add_credit(W1, 5)
    assert [ids(a) for a in state.assign()] == [[4, 5]]


def test_fifo_order_holds_across_clients():
    state = make_state(C1, C2)
    state.submit(C1, 1, [])
    state.submit(C2, 1, [])
    state.submit(C1, 2, [])
    state.add_worker(W1, 3, now=0.0)
    [assignment] = state.assign()
    assert keys(assignment) == [(C1, 1), (C2, 1), (C1, 2)]


def test_worker_never_gets_more_tasks_than_its_credit():
    state = make_state()
    submit_all(state, C1, range(5))
    worker, _ = state.add_worker(W1, 2, now=0.0)
    [assignment] = state.assign()
    assert len(assignment.tasks) == 2
    assert worker.credit == 0
    assert state.assign() == []
    assert len(state.roster.queued()) == 3


def test_worker_without_credit_gets_nothing():
    state = make_state()
    submit_all(state, C1, [1])
    state.add_worker(W1, 0, now=0.0)
    assert state.assign() == []
    assert list(state.roster.queued()) == [(C1, 1)]


def test_add_credit_makes_worker_ready_again():
    state = make_state()
    submit_all(state, C1, range(3))
    state.add_worker(W1, 1, now=0.0)
    assert [ids(a) for a in state.assign()] == [[0]]
    assert W1 not in state.ready
    state.add_credit(W1, 1)
    assert W1 in state.ready
    assert [ids(a) for a in state.assign()] == [[1]]


def test_credit_left_over_keeps_worker_ready():
    state = make_state()
    submit_all(state, C1, [1])
    worker, _ = state.add_worker(W1, 3, now=0.0)
    state.assign()
    assert worker.credit == 2
    assert W1 in state.ready
    submit_all(state, C1, [2])
    assert [ids(a) for a in state.assign()] == [[2]]


def test_assign_with_an_empty_queue_returns_nothing():
    state = make_state()
    worker, _ = state.add_worker(W1, 4, now=0.0)
    assert state.assign() == []
    assert worker.credit == 4


def test_two_idle_workers_each_get_one_of_two_tasks():
    state = make_state()
    state.add_worker(W1, 4, now=0.0)
    state.add_worker(W2, 4, now=0.0)
    submit_all(state, C1, [1, 2])
    assignments = state.assign()
    assert len(assignments) == 2
    assert by_worker(assignments) == {W1: [1], W2: [2]}


def test_more_tasks_than_total_credit_fills_every_worker():
    state = make_state()
    state.add_worker(W1, 2, now=0.0)
    state.add_worker(W2, 1, now=0.0)
    submit_all(state, C1, range(5))
    assignments = state.assign()
    assert sorted(len(a.tasks) for a in assignments) == [1, 2]
    assert state.ready == {}
    assert len(state.roster.queued()) == 2


# -- cancel and duplicates -------------------------------------------------------

def test_cancel_of_queued_tasks_returns_their_ids():
    state = make_state()
    submit_all(state, C1, [1, 2, 3])
    assert state.cancel(C1, [1, 3]) == [1, 3]
    assert state.clients[C1].queued == 1


def test_cancelled_tasks_are_never_assigned():
    state = make_state()
    submit_all(state, C1, [1, 2, 3])
    state.cancel(C1, [1, 3])
    state.add_worker(W1, 10, now=0.0)
    assert [ids(a) for a in state.assign()] == [[2]]
    state.add_credit(W1, 10)
    assert state.assign() == []


def test_cancelled_tasks_do_not_use_up_credit():
    state = make_state()
    submit_all(state, C1, [1, 2])
    state.cancel(C1, [1])
    state.add_worker(W1, 1, now=0.0)
    assert [ids(a) for a in state.assign()] == [[2]]


def test_cancel_of_an_assigned_task_returns_nothing():
    state = make_state()
    submit_all(state, C1, [1])
    state.add_worker(W1, 1, now=0.0)
    state.assign()
    assert state.cancel(C1, [1]) == []
    assert state.in_flight == {(C1, 1): W1}


def test_cancel_of_an_unknown_task_returns_nothing():
    state = make_state()
    submit_all(state, C1, [1])
    assert state.cancel(C1, [2]) == []
    assert list(state.roster.queued()) == [(C1, 1)]


def test_cancel_twice_returns_the_id_once():
    state = make_state()
    submit_all(state, C1, [1])
    assert state.cancel(C1, [1]) == [1]
    assert state.cancel(C1, [1]) == []
    assert state.clients[C1].queued == 0


def test_cancel_only_touches_the_asking_clients_tasks():
    state = make_state(C1, C2)
    submit_all(state, C1, [1])
    submit_all(state, C2, [1])
    assert state.cancel(C2, [1]) == [1]
    assert list(state.roster.queued()) == [(C1, 1)]


def test_duplicate_submit_of_a_queued_task_is_refused():
    state = make_state()
    assert state.submit(C1, 1, [b"first"]) is True
    assert state.submit(C1, 1, [b"second"]) is False
    state.add_worker(W1, 10, now=0.0)
    [assignment] = state.assign()
    assert [t.frames for t in assignment.tasks] == [[b"first"]]


def test_duplicate_submit_of_an_in_flight_task_is_refused():
    state = make_state()
    submit_all(state, C1, [1])
    state.add_worker(W1, 10, now=0.0)
    state.assign()
    assert state.submit(C1, 1, [b"again"]) is False
    assert state.roster.queued() == {}


def test_same_task_id_from_another_client_is_accepted():
    state = make_state(C1, C2)
    assert state.submit(C1, 1, []) is True
    assert state.submit(C2, 1, []) is True
    assert len(state.roster.queued()) == 2


def test_resubmit_after_cancel_is_assigned_once_with_new_frames():
    state = make_state()
    state.submit(C1, 1, [b"old"])
    state.cancel(C1, [1])
    assert state.submit(C1, 1, [b"new"]) is True
    state.add_worker(W1, 10, now=0.0)
    [assignment] = state.assign()
    assert [t.frames for t in assignment.tasks] == [[b"new"]]


# -- finish and started --------------------------------------------------------

def test_finish_from_the_holding_worker_returns_the_task():
    state = make_state()
    submit_all(state, C1, [1])
    worker, _ = state.add_worker(W1, 1, now=0.0)
    state.assign()
    task = state.finish(W1, (C1, 1))
    assert task is not None
    assert (task.client_id, task.task_id, task.frames) == (C1, 1, [b"call-1"])
    assert state.in_flight == {}
    assert worker.in_flight == {}
    assert worker.done == 1
    assert (state.clients[C1].in_flight, state.clients[C1].done) == (0, 1)


def test_finish_from_the_wrong_worker_returns_none():
    state = make_state()
    submit_all(state, C1, [1])
    state.add_worker(W1, 1, now=0.0)
    state.add_worker(W2, 0, now=0.0)
    state.assign()
    assert state.finish(W2, (C1, 1)) is None
    assert state.in_flight == {(C1, 1): W1}
    assert state.finish(W1, (C1, 1)).task_id == 1


def test_finish_twice_returns_none_the_second_time():
    state = make_state()
    submit_all(state, C1, [1])
    state.add_worker(W1, 1, now=0.0)
    state.assign()
    assert state.finish(W1, (C1, 1)) is not None
    assert state.finish(W1, (C1, 1)) is None


def test_finish_of_a_queued_task_returns_none():
    state = make_state()
    submit_all(state, C1, [1])
    state.add_worker(W1, 0, now=0.0)
    assert state.finish(W1, (C1, 1)) is None
    assert list(state.roster.queued()) == [(C1, 1)]


def test_started_is_true_only_for_the_holding_worker():
    state = make_state()
    submit_all(state, C1, [1, 2])
    state.add_worker(W1, 1, now=0.0)
    state.add_worker(W2, 0, now=0.0)
    state.assign()
    assert state.started(W1, (C1, 1)) is True
    assert state.started(W2, (C1, 1)) is False
    assert state.started(W1, (C1, 2)) is False  # still queued
    assert state.started(W1, (C2, 1)) is False  # unknown


def test_started_is_false_after_finish():
    state = make_state()
    submit_all(state, C1, [1])
    state.add_worker(W1, 1, now=0.0)
    state.assign()
    state.finish(W1, (C1, 1))
    assert state.started(W1, (C1, 1)) is False


# -- losing workers --------------------------------------------------------------

def test_lost_worker_tasks_are_requeued_at_the_front_in_order():
    state = make_state()
    submit_all(state, C1, range(5))
    state.add_worker(W1, 3, now=0.0)
    state.assign()
    expired = state.remove_worker(W1, lost=True)
    assert expired.workers == [W1]
    assert expired.requeued == 3
    assert expired.poisoned == []
    assert [t.task_id for t in queue_order(state)] == [0, 1, 2, 3, 4]


def test_lost_worker_counts_a_try_against_its_tasks():
    state = make_state()
    submit_all(state, C1, [1, 2])
    state.add_worker(W1, 1, now=0.0)
    state.assign()
    state.remove_worker(W1, lost=True)
    assert [t.lost_on for t in queue_order(state)] == [(W1,), ()]


def test_worker_leaving_in_order_requeues_without_counting_a_try():
    state = make_state()
    submit_all(state, C1, [1, 2, 3])
    state.add_worker(W1, 2, now=0.0)
    state.assign()
    expired = state.remove_worker(W1, lost=False)
    assert expired.workers == [W1]
    assert expired.requeued == 2
    state.add_worker(W2, 10, now=0.0)
    [assignment] = state.assign()
    assert ids(assignment) == [1, 2, 3]
    assert [t.lost_on for t in assignment.tasks] == [(), (), ()]


def test_removed_worker_is_forgotten():
    state = make_state()
    state.add_worker(W1, 2, now=0.0)
    state.remove_worker(W1, lost=False)
    assert state.role_of(W1) is None
    assert W1 not in state.ready
    submit_all(state, C1, [1])
    assert state.assign() == []


def test_requeued_tasks_update_client_counts():
    state = make_state()
    submit_all(state, C1, [1, 2])
    state.add_worker(W1, 2, now=0.0)
    state.assign()
    assert (state.clients[C1].queued, state.clients[C1].in_flight) == (0, 2)
    state.remove_worker(W1, lost=True)
    assert (state.clients[C1].queued, state.clients[C1].in_flight) == (2, 0)
    assert state.in_flight == {}


def test_task_lost_on_max_retries_workers_is_poisoned():
    state = make_state(max_retries=2)
    submit_all(state, C1, [1])
    for worker_id in (W1, W2):
        state.add_worker(worker_id, 1, now=0.0)
        [assignment] = state.assign()
        assert assignment.worker_id == worker_id
        expired = state.remove_worker(worker_id, lost=True)
    assert expired.requeued == 0
    assert [(t.key, t.lost_on) for t in expired.poisoned] == [((C1, 1), (W1, W2))]
    assert state.roster.queued() == {}
    assert state.in_flight == {}
    assert state.clients[C1].in_flight == 0
    state.add_worker(W3, 10, now=0.0)
    assert state.assign() == []


def test_task_is_requeued_until_max_retries_is_reached():
    state = make_state(max_retries=3)
    submit_all(state, C1, [1])
    for worker_id in (W1, W2):
        state.add_worker(worker_id, 1, now=0.0)
        state.assign()
        expired = state.remove_worker(worker_id, lost=True)
        assert expired.poisoned == []
        assert expired.requeued == 1
    assert list(state.roster.queued()) == [(C1, 1)]


def test_orderly_leaves_never_poison_a_task():
    state = make_state(max_retries=1)
    submit_all(state, C1, [1])
    for worker_id in (W1, W2, W3):
        state.add_worker(worker_id, 1, now=0.0)
        state.assign()
        assert state.remove_worker(worker_id, lost=False).poisoned == []
    assert list(state.roster.queued()) == [(C1, 1)]


def test_re_registered_worker_requeues_its_old_in_flight_tasks():
    state = make_state()
    submit_all(state, C1, [1, 2, 3])
    state.add_worker(W1, 2, now=0.0)
    state.assign()
    worker, expired = state.add_worker(W1, 5, now=1.0)
    assert expired.workers == [W1]
    assert expired.requeued == 2
    assert worker.in_flight == {}
    assert worker.credit == 5
    assert state.in_flight == {}
    assert [t.task_id for t in queue_order(state)] == [1, 2, 3]


def test_first_registration_expires_nothing():
    state = make_state()
    _, expired = state.add_worker(W1, 1, now=0.0)
    assert (expired.workers, expired.requeued, expired.poisoned) == ([], 0, [])
    assert state.role_of(W1) == "worker"


# -- liveness --------------------------------------------------------------------

def test_silent_names_peers_quiet_past_the_timeout_and_removes_none():
    state = make_state(C1, C2, timeout=10.0)
    submit_all(state, C1, [1])
    state.add_worker(W1, 1, now=0.0)
    state.add_worker(W2, 1, now=0.0)
    state.assign()
    state.roster.seen(W2, now=5.0)
    state.roster.seen(C2, now=5.0)
    assert sorted(state.roster.silent(now=12.0)) == sorted([W1, C1])
    # A silent peer may be a live one held up by the GIL: it keeps its tasks.
    assert state.role_of(W1) == "worker" and state.role_of(C1) == "client"
    assert state.in_flight == {(C1, 1): W1}


def test_silent_keeps_peers_seen_within_the_timeout():
    state = make_state(C1, timeout=10.0)
    state.add_worker(W1, 1, now=0.0)
    assert state.roster.silent(now=10.0) == []


def test_a_silent_peer_is_named_once_until_it_speaks_again():
    state = make_state(C1, timeout=10.0)
    state.add_worker(W1, 1, now=0.0)
    state.roster.seen(C1, now=100.0)
    assert state.roster.silent(now=12.0) == [W1]
    assert state.roster.silent(now=13.0) == []
    state.roster.seen(W1, now=14.0)
    assert state.roster.silent(now=20.0) == []
    assert state.roster.silent(now=25.0) == [W1]


def test_re_adding_a_client_refreshes_it():
    state = make_state(C1, timeout=10.0)
    state.add_client(C1, [b"init"], now=8.0)
    assert state.roster.silent(now=15.0) == []
    assert state.clients[C1].init_frames == [b"init"]


# -- losing clients --------------------------------------------------------------

def test_remove_client_drops_only_its_queued_tasks():
    state = make_state(C1, C2)
    state.submit(C1, 1, [])
    state.submit(C2, 1, [])
    state.submit(C1, 2, [])
    state.submit(C2, 2, [])
    state.remove_client(C1)
    assert state.role_of(C1) is None
    assert list(state.roster.queued()) == [(C2, 1), (C2, 2)]
    state.add_worker(W1, 10, now=0.0)
    [assignment] = state.assign()
    assert keys(assignment) == [(C2, 1), (C2, 2)]


def test_results_of_a_removed_client_are_dropped():
    state = make_state()
    submit_all(state, C1, [1])
    worker, _ = state.add_worker(W1, 1, now=0.0)
    state.assign()
    state.remove_client(C1)
    assert state.started(W1, (C1, 1)) is False
    assert state.finish(W1, (C1, 1)) is None
    assert state.in_flight == {}
    assert worker.in_flight == {}


def test_removed_clients_in_flight_tasks_are_not_requeued_when_worker_dies():
    state = make_state()
    submit_all(state, C1, [1])
    state.add_worker(W1, 1, now=0.0)
    state.assign()
    state.remove_client(C1)
    expired = state.remove_worker(W1, lost=True)
    assert (expired.requeued, expired.poisoned) == (0, [])
    assert state.roster.queued() == {}
    assert state.in_flight == {}


def test_remove_unknown_client_does_nothing():
    state = make_state()
    submit_all(state, C1, [1])
    state.remove_client(C2)
    assert list(state.roster.queued()) == [(C1, 1)]


# -- initializers --------------------------------------------------------------

def test_initializer_is_sent_once_per_worker_and_client():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(C1, [b"init-1"], now=0.0)
    submit_all(state, C1, [1, 2])
    state.add_worker(W1, 1, now=0.0)
    [first] = state.assign()
    assert first.inits == [(C1, [b"init-1"])]
    state.add_credit(W1, 1)
    [second] = state.assign()
    assert ids(second) == [2]
    assert second.inits == []


def test_initializer_is_sent_to_each_worker():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(C1, [b"init-1"], now=0.0)
    state.add_worker(W1, 4, now=0.0)
    state.add_worker(W2, 4, now=0.0)
    submit_all(state, C1, [1, 2])
    assignments = state.assign()
    assert {a.worker_id: a.inits for a in assignments} == {
        W1: [(C1, [b"init-1"])], W2: [(C1, [b"init-1"])]}


def test_initializers_of_several_clients_go_in_one_assignment():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(C1, [b"init-1"], now=0.0)
    state.add_client(C2, [b"init-2a", b"init-2b"], now=0.0)
    state.submit(C1, 1, [])
    state.submit(C2, 1, [])
    state.submit(C1, 2, [])
    state.add_worker(W1, 10, now=0.0)
    [assignment] = state.assign()
    assert assignment.inits == [(C1, [b"init-1"]), (C2, [b"init-2a", b"init-2b"])]


def test_client_without_initializer_sends_no_inits():
    state = make_state()
    submit_all(state, C1, [1])
    state.add_worker(W1, 1, now=0.0)
    [assignment] = state.assign()
    assert assignment.inits == []


def test_initializer_is_sent_again_to_a_re_registered_worker():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(C1, [b"init-1"], now=0.0)
    submit_all(state, C1, [1])
    state.add_worker(W1, 1, now=0.0)
    state.assign()
    state.add_worker(W1, 1, now=1.0)
    [assignment] = state.assign()
    assert ids(assignment) == [1]
    assert assignment.inits == [(C1, [b"init-1"])]


def test_initializer_is_sent_again_after_the_client_is_removed_and_returns():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(C1, [b"old"], now=0.0)
    submit_all(state, C1, [1])
    state.add_worker(W1, 2, now=0.0)
    state.assign()
    state.finish(W1, (C1, 1))
    state.remove_client(C1)
    state.add_client(C1, [b"new"], now=1.0)
    submit_all(state, C1, [2])
    state.add_credit(W1, 1)
    [assignment] = state.assign()
    assert assignment.inits == [(C1, [b"new"])]


def test_spreading_is_even_with_one_assignment_per_worker():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(b"c", [], 0.0)
    for worker in (b"w0", b"w1", b"w2"):
        state.add_worker(worker, 10, 0.0)
    for task_id in range(6):
        state.submit(b"c", task_id, [b"x"])
    assignments = state.assign()
    assert sorted(a.worker_id for a in assignments) == [b"w0", b"w1", b"w2"]
    assert [len(a.tasks) for a in assignments] == [2, 2, 2]


def test_a_client_that_returns_under_its_id_starts_afresh():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(b"c", [], 0.0)
    state.add_worker(b"w", 1, 0.0)
    state.submit(b"c", 1, [b"old"])
    state.assign()
    state.remove_client(b"c")
    state.add_client(b"c", [], 1.0)
    assert state.finish(b"w", (b"c", 1)) is None  # the old session's result is dropped
    assert state.submit(b"c", 1, [b"new"])  # and its id is free again
    assert state.clients[b"c"].in_flight == 0


def test_cancelled_tasks_release_their_payload_at_once():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(b"c", [], 0.0)
    for task_id in range(3):
        state.submit(b"c", task_id, [b"x" * 1000])
    held = state.queue.in_order()
    assert state.cancel(b"c", [0, 1, 2]) == [0, 1, 2]
    assert all(task.frames == [] for task in held)
    # Nothing left queued: the deques that held them are emptied too.
    assert all(not level.queues and not level.rotation for level in state.queue.order)


# -- prefetched tasks ---------------------------------------------------------------

def test_lost_worker_counts_a_try_only_against_tasks_it_may_have_started():
    state = make_state()
    submit_all(state, C1, range(6))
    state.add_worker(W1, 5, now=0.0, threads=2)  # 3 of them prefetched
    state.assign()
    assert state.started(W1, (C1, 3))  # said started: it ran out of order? count it
    state.remove_worker(W1, lost=True)
    tasks = queue_order(state)
    assert [t.lost_on for t in tasks] == [(W1,), (W1,), (), (W1,), (), ()]
    assert not any(t.started for t in tasks)


def test_tasks_of_a_dead_worker_run_alone_then_the_queue_flows_again():
    state = make_state()
    submit_all(state, C1, range(4))
    state.add_worker(W1, 2, now=0.0)
    state.assign()  # 0 and 1 on W1
    state.remove_worker(W1, lost=True)
    state.add_worker(W2, 10, now=0.0)
    state.add_worker(W3, 10, now=0.0)
    # The two suspects go one to a worker; task 2 waits behind them.
    assert sorted(ids(a) for a in state.assign()) == [[0], [1]]
    assert state.assign() == []
    state.finish(W2, (C1, 0)) or state.finish(W3, (C1, 0))
    state.add_credit(W2, 1)
    state.add_credit(W3, 1)
    assert sorted(t for a in state.assign() for t in ids(a)) == [2, 3]


def test_the_task_that_kills_workers_is_found_even_when_a_neighbour_is_blamed_first():
    state = make_state(max_retries=3)
    submit_all(state, C1, ["quick", "killer", "later"])
    state.add_worker(b"w0", 3, now=0.0, threads=1)
    state.assign()
    # "quick" finished but its result was still on its way when "killer" struck.
    expired = state.remove_worker(b"w0", lost=True)
    assert [t.lost_on for t in queue_order(state)] == [(b"w0",), (), ()]
    poisoned = []
    for n in range(1, 10):
        worker = f"w{n}".encode()
        state.add_worker(worker, 3, now=0.0, threads=1)
        [assignment] = state.assign()
        [task] = assignment.tasks  # a suspect runs alone
        if task.task_id == "killer":
            expired = state.remove_worker(worker, lost=True)
            poisoned += [t.task_id for t in expired.poisoned]
            if poisoned:
                break
        else:
            assert state.finish(worker, task.key) is task
            state.remove_worker(worker, lost=False)
    assert poisoned == ["killer"]
    assert [(t.task_id, t.lost_on) for t in queue_order(state)] == [("later", ())]


def test_unstarted_lists_tasks_held_by_workers_not_yet_started():
    state = make_state()
    submit_all(state, C1, range(5))
    state.add_worker(W1, 2, now=0.0)
    state.add_worker(W2, 2, now=0.0)
    state.assign()
    state.started(W1, (C1, 0))
    held = state.ask_back.unstarted(C1, [0, 1, 2, 3, 4])
    # 0 is started; 4 is still queued at the broker.
    assert held == {W1: [1], W2: [2, 3]}


def test_withdrawn_tasks_requeue_at_the_front_in_order():
    state = make_state()
    submit_all(state, C1, range(6))
    state.add_worker(W1, 4, now=0.0)
    state.assign()
    taken = state.ask_back.withdraw(W1, [[C1, 2], [C1, 3], [C1, 99]], requeue=True)
    assert taken == [(C1, 2), (C1, 3)]
    assert state.clients[C1].queued == 4 and state.clients[C1].in_flight == 2
    state.add_worker(W2, 10, now=0.0)
    [assignment] = state.assign()
    assert ids(assignment) == [2, 3, 4, 5]


def test_withdrawn_tasks_for_a_cancel_are_dropped():
    state = make_state()
    submit_all(state, C1, range(3))
    state.add_worker(W1, 3, now=0.0)
    state.assign()
    assert state.ask_back.withdraw(W1, [[C1, 1]], requeue=False) == [(C1, 1)]
    assert state.ask_back.withdraw(W1, [[C1, 1]], requeue=False) == []  # taken already
    assert state.finish(W1, (C1, 1)) is None  # its late result, if any, is dropped
    assert state.clients[C1].in_flight == 2 and state.clients[C1].queued == 0
    assert not state.roster.queued()


def test_workers_holding_a_gone_clients_initializer_are_told_to_forget_it():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(C1, [b"init-1"], now=0.0)
    state.add_client(C2, [], now=0.0)
    state.add_worker(W1, 1, now=0.0)
    state.add_worker(W2, 1, now=0.0)
    submit_all(state, C1, [1])
    submit_all(state, C2, [1])
    holders = {a.worker_id for a in state.assign() if a.inits}
    assert len(holders) == 1
    state.remove_client(C1)
    state.remove_client(C2)  # no initializer: nothing to forget
    assert {w.worker_id: w.forget for w in state.workers.values()} == {
        W1: [C1] if W1 in holders else [], W2: [C1] if W2 in holders else []}


# -- asking back tasks that wait on busy workers -----------------------------------

def test_a_task_waiting_on_a_busy_worker_is_asked_back_when_another_runs_dry():
    state = make_state()
    submit_all(state, C1, range(2))
    state.add_worker(W1, 2, now=0.0, threads=1)  # one thread, one task held waiting
    state.assign()
    state.started(W1, (C1, 0))
    assert state.ask_back.to_steal() == []  # nobody else wants work
    state.add_worker(W2, 1, now=0.0, threads=1)
    assert state.assign() == []
    assert state.ask_back.to_steal() == [(W1, [(C1, 1)])]
    assert state.ask_back.to_steal() == []  # asked once, until it is given more again
    assert state.ask_back.withdraw(W1, [[C1, 1]], requeue=True) == [(C1, 1)]
    [assignment] = state.assign()
    assert assignment.worker_id == W2 and ids(assignment) == [1]


def test_nothing_is_asked_back_while_tasks_are_queued():
    state = make_state()
    submit_all(state, C1, range(4))
    state.add_worker(W1, 2, now=0.0, threads=1)
    state.assign()
    state.add_worker(W2, 1, now=0.0, threads=1)  # the queue still has work for it
    assert state.ask_back.to_steal() == []


def test_nothing_is_asked_back_for_a_worker_whose_threads_are_all_busy():
    state = make_state()
    submit_all(state, C1, range(3))
    state.add_worker(W1, 2, now=0.0, threads=1)
    state.add_worker(W2, 1, now=0.0, threads=1)
    state.assign()
    state.add_credit(W2, 1)  # credit for a task to wait there: not a free thread
    assert state.clients[C1].queued == 0
    assert state.ask_back.to_steal() == []


def test_a_holder_whose_tasks_all_run_is_not_asked():
    state = make_state()
    submit_all(state, C1, range(2))
    state.add_worker(W1, 2, now=0.0, threads=1)
    state.assign()
    state.finish(W1, (C1, 0))  # the waiting one runs now
    state.add_worker(W2, 1, now=0.0, threads=1)
    assert state.ask_back.to_steal() == []
    assert not state.holders


def test_only_as_many_holders_are_asked_as_threads_are_free():
    state = make_state()
    submit_all(state, C1, range(4))
    state.add_worker(W1, 2, now=0.0, threads=1)
    state.add_worker(W2, 2, now=0.0, threads=1)
    assert by_worker(state.assign()) == {W1: [0, 1], W2: [2, 3]}
    state.add_worker(W3, 1, now=0.0, threads=1)
    assert state.ask_back.to_steal() == [(W1, [(C1, 0), (C1, 1)])]  # it gives back what still waits
    state.add_credit(W3, 1)  # a second free thread asks the other holder
    state.workers[W3].threads = 2
    assert state.ask_back.to_steal() == [(W2, [(C1, 2), (C1, 3)])]


def test_a_thread_freed_by_a_result_without_credit_still_gets_waiting_tasks():
    state = make_state()
    submit_all(state, C1, range(3))
    state.add_worker(W1, 2, now=0.0, threads=1)
    state.add_worker(W2, 2, now=0.0, threads=1)
    assert by_worker(state.assign()) == {W1: [0, 1], W2: [2]}
    assert state.ask_back.to_steal() == []  # W2's thread is busy: it only has credit to spare
    state.finish(W2, (C1, 2))  # its result came with no new credit: it had enough
    assert state.ask_back.to_steal() == [(W1, [(C1, 0), (C1, 1)])]


def test_a_task_asked_back_goes_to_the_idle_worker_not_back_to_the_busy_one():
    state = make_state()
    submit_all(state, C1, range(2))
    state.add_worker(W1, 3, now=0.0, threads=1)  # credit to spare, from shorter tasks
    state.assign()
    state.add_worker(W2, 1, now=0.0, threads=1)
    assert state.ask_back.to_steal() == [(W1, [(C1, 0), (C1, 1)])]
    state.ask_back.withdraw(W1, [[C1, 1]], requeue=True)  # 0 runs there already
    state.add_credit(W1, 1)
    [assignment] = state.assign()
    assert assignment.worker_id == W2 and ids(assignment) == [1]


def test_a_gone_clients_task_still_takes_its_workers_thread():
    state = make_state(C1, C2)
    submit_all(state, C2, [7])
    state.add_worker(W1, 2, now=0.0, threads=1)
    state.assign()
    state.remove_client(C2)  # its task runs on, orphaned
    submit_all(state, C1, [0])
    assert by_worker(state.assign()) == {W1: [0]}  # the only worker with credit
    state.add_worker(W2, 1, now=0.0, threads=1)
    assert state.ask_back.to_steal() == [(W1, [(C1, 0)])]  # it waits behind the orphan
    assert state.finish_orphan(W1, (C2, 7))
    assert not state.finish_orphan(W1, (C2, 7))
    assert state.workers[W1].occupied == 1
