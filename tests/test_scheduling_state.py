"""The broker's scheduling, driven directly: strict priority, resources
per worker, clients taking turns, and asking back what a higher task outranks."""
from __future__ import annotations

import pytest
from hypothesis import example, given, settings, strategies as st

from zeropool.broker.state import BrokerState
from zeropool.protocol import TaskOptions

C1, C2, C3 = b"client-1", b"client-2", b"client-3"
W1, W2 = b"worker-1", b"worker-2"


def make_state(*clients: bytes) -> BrokerState:
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    for client_id in clients or (C1,):
        state.add_client(client_id, [], now=0.0)
    return state


def options(priority: int = 0, **resources: float) -> TaskOptions:
    return TaskOptions.make(priority, resources or None)


def dispatched(state: BrokerState) -> dict[bytes, list]:
    return {a.worker_id: [t.key for t in a.tasks] for a in state.assign()}


def test_higher_priority_goes_first_and_fifo_holds_among_equals():
    state = make_state()
    for task_id, priority in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1), (6, 9)]:
        state.submit(C1, task_id, b"x", options=options(priority))
    state.add_worker(W1, 10, 0.0)
    assert dispatched(state) == {W1: [(C1, 6), (C1, 2), (C1, 4), (C1, 1), (C1, 3), (C1, 5)]}


def test_clients_take_turns_at_equal_priority():
    state = make_state(C1, C2, C3)
    for task_id in range(1, 7):
        state.submit(C1, task_id, b"x")
    state.submit(C2, 1, b"x")
    state.submit(C2, 2, b"x")
    state.submit(C3, 1, b"x")
    state.add_worker(W1, 6, 0.0)
    assert dispatched(state) == {W1: [(C1, 1), (C2, 1), (C3, 1), (C1, 2), (C2, 2), (C1, 3)]}


def test_a_late_client_waits_for_one_turn_not_for_the_backlog():
    state = make_state(C1, C2)
    for task_id in range(3000):
        state.submit(C1, task_id, b"x")
    state.add_worker(W1, 2, 0.0)
    assert dispatched(state) == {W1: [(C1, 0), (C1, 1)]}
    for task_id in range(10):
        state.submit(C2, task_id, b"x")
    sent = []
    for _ in range(10):
        state.add_credit(W1, 2)
        sent += dispatched(state)[W1]
    assert [key for key in sent if key[0] == C2] == [(C2, t) for t in range(10)]
    assert len(sent) == 20  # one of each client's in turn


def test_priority_outranks_turns():
    state = make_state(C1, C2)
    state.submit(C1, 1, b"x")
    state.submit(C2, 1, b"x", options=options(1))
    state.submit(C1, 2, b"x", options=options(1))
    state.add_worker(W1, 3, 0.0)
    assert dispatched(state) == {W1: [(C2, 1), (C1, 2), (C1, 1)]}


def test_a_task_needing_resources_goes_only_to_a_worker_that_has_them_free():
    state = make_state()
    state.submit(C1, 1, b"x", options=options(gpu=1))
    state.submit(C1, 2, b"x", options=options(gpu=1))
    state.submit(C1, 3, b"x")
    state.add_worker(W1, 4, 0.0)  # no gpu
    state.add_worker(W2, 4, 0.0, resources={"gpu": 1})
    sent = dispatched(state)
    assert sent[W2] == [(C1, 1)]  # one gpu: the second waits for it
    assert sent[W1] == [(C1, 3)]  # tasks without needs run anywhere
    assert list(state.roster.queued()) == [(C1, 2)]
    assert state.workers[W2].free == {"gpu": 0}
    state.finish(W2, (C1, 1))
    assert dispatched(state) == {W2: [(C1, 2)]}


def test_resources_are_freed_however_a_task_leaves_its_worker():
    state = make_state()
    for task_id in range(3):
        state.submit(C1, task_id, b"x", options=options(mem=10))
    state.add_worker(W1, 3, 0.0, resources={"mem": 30})
    assert dispatched(state) == {W1: [(C1, 0), (C1, 1), (C1, 2)]}
    assert state.workers[W1].free == {"mem": 0}
    state.finish(W1, (C1, 0))
    state.ask_back.withdraw(W1, [(C1, 1)], requeue=True)
    assert state.workers[W1].free == {"mem": 20}
    state.remove_client(C1)  # its last task keeps its share until it ends
    assert state.workers[W1].free == {"mem": 20}
    assert state.finish_orphan(W1, (C1, 2))
    assert state.workers[W1].free == {"mem": 30}


def test_priority_holds_among_the_tasks_a_worker_can_run():
    state = make_state()
    state.submit(C1, 1, b"x", options=options(9, gpu=1))
    state.submit(C1, 2, b"x", options=options(5))
    state.submit(C1, 3, b"x", options=options(0, gpu=1))
    state.add_worker(W1, 3, 0.0)  # no gpu: the top task is not for it
    assert dispatched(state) == {W1: [(C1, 2)]}
    state.add_worker(W2, 3, 0.0, resources={"gpu": 2})
    assert dispatched(state) == {W2: [(C1, 1), (C1, 3)]}


def test_levels_of_one_priority_take_turns_so_resources_do_not_cost_fair_share():
    """A client whose tasks ask for memory every worker has must not shut out
    another client's plain tasks of the same priority."""
    state = make_state(C1, C2)
    for task_id in range(3000):
        state.submit(C1, task_id, b"x", options=options(mem=1e6))
    for task_id in range(10):
        state.submit(C2, task_id, b"x")
    state.add_worker(W1, 20, 0.0, resources={"mem": 64e9})
    sent = dispatched(state)[W1]
    assert [key for key in sent if key[0] == C2] == [(C2, t) for t in range(10)]


def test_a_task_needing_more_of_a_busy_resource_is_not_starved_by_smaller_ones():
    state = make_state()
    state.submit(C1, 1, b"x", options=options(0, gpu=1))
    state.add_worker(W1, 10, 0.0, resources={"gpu": 2})
    assert dispatched(state) == {W1: [(C1, 1)]}
    state.submit(C1, 2, b"x", options=options(9, gpu=2))  # waits for both
    for task_id in range(3, 8):
        state.submit(C1, task_id, b"x", options=options(0, gpu=1))
    state.submit(C1, 8, b"x")  # needs no gpu: still runs
    assert dispatched(state) == {W1: [(C1, 8)]}  # not one gpu=1 task goes ahead of it
    state.finish(W1, (C1, 1))
    assert dispatched(state) == {W1: [(C1, 2)]}


def test_a_worker_is_asked_back_for_what_the_first_task_it_can_run_outranks():
    state = make_state()
    for task_id in range(3):
        state.submit(C1, task_id, b"x")
    state.add_worker(W1, 3, 0.0, threads=1)  # no gpu
    assert dispatched(state) == {W1: [(C1, 0), (C1, 1), (C1, 2)]}
    state.started(W1, (C1, 0))
    state.submit(C1, 10, b"x", options=options(9, gpu=1))  # it cannot run that one...
    state.submit(C1, 11, b"x", options=options(5))  # ...but this one
    assert state.ask_back.to_preempt() == [(W1, [(C1, 1), (C1, 2)])]


def test_unsatisfiable_needs_are_known_until_a_worker_with_them_joins():
    state = make_state()
    needs = options(tpu=1).resources
    state.submit(C1, 1, b"x", options=options(tpu=1))
    state.add_worker(W1, 1, 0.0, resources={"gpu": 4})
    assert not state.roster.satisfiable(needs)
    assert state.roster.unsatisfiable() == [(needs, 1)]
    assert dispatched(state) == {}  # it stays queued
    state.add_worker(W2, 1, 0.0, resources={"tpu": 1})
    assert state.roster.satisfiable(needs)
    assert state.roster.unsatisfiable() == []
    assert dispatched(state) == {W2: [(C1, 1)]}


def test_a_higher_task_asks_back_lower_ones_waiting_on_workers():
    state = make_state()
    for task_id in range(4):
        state.submit(C1, task_id, b"x")
    state.add_worker(W1, 2, 0.0, threads=1)
    assert dispatched(state) == {W1: [(C1, 0), (C1, 1)]}
    state.started(W1, (C1, 0))
    assert state.ask_back.to_preempt() == []  # nothing outranks them
    state.submit(C1, 10, b"x", options=options(5))
    assert dispatched(state) == {}  # no credit
    assert state.ask_back.to_preempt() == [(W1, [(C1, 1)])]  # not the one it started
    assert state.ask_back.to_preempt() == []  # asked once
    state.ask_back.withdraw(W1, [(C1, 1)], requeue=True)
    state.add_credit(W1, 1)
    assert dispatched(state) == {W1: [(C1, 10)]}
    assert [t.task_id for t in state.queue.in_order()] == [1, 2, 3]


def test_a_higher_task_does_not_ask_back_from_workers_that_could_never_run_it():
    state = make_state()
    state.submit(C1, 0, b"x")
    state.add_worker(W1, 1, 0.0)
    assert dispatched(state) == {W1: [(C1, 0)]}
    state.submit(C1, 1, b"x", options=options(5, gpu=1))
    assert state.ask_back.to_preempt() == []


def test_queued_counts_per_priority_follow_cancels_and_dispatches():
    state = make_state(C1, C2)
    state.submit(C1, 1, b"x", options=options(3))
    state.submit(C1, 2, b"x")
    state.submit(C2, 1, b"x")
    assert state.queue.by_priority() == {3: 1, 0: 2}
    state.cancel(C1, [2])
    assert state.queue.by_priority() == {3: 1, 0: 1}
    state.remove_client(C2)
    assert state.queue.by_priority() == {3: 1}
    state.add_worker(W1, 5, 0.0)
    state.assign()
    assert state.queue.by_priority() == {} and state.queue.count == 0
    assert [level.priority for level in state.queue.order] == [0]  # only the default level stays


def test_a_requeued_task_keeps_its_priority_and_needs():
    state = make_state()
    state.submit(C1, 1, b"x", options=options(7, gpu=1))
    state.add_worker(W1, 1, 0.0, resources={"gpu": 1})
    state.assign()
    state.remove_worker(W1, lost=False)
    [task] = state.queue.in_order()
    assert task.options == options(7, gpu=1)
    assert state.queue.by_priority() == {7: 1}


@pytest.mark.parametrize("bad, error", [
    (dict(priority="high"), TypeError),
    (dict(priority=True), TypeError),
    (dict(priority=1.5), TypeError),
    (dict(priority=1 << 40), ValueError),
    (dict(resources={"gpu": -1}), ValueError),
    (dict(resources={"gpu": "one"}), TypeError),
    (dict(resources={"gpu": float("nan")}), ValueError),
    (dict(resources={"gpu": float("inf")}), ValueError),
    (dict(resources={"": 1}), TypeError),
    (dict(resources={1: 1}), TypeError),
    (dict(resources=["gpu"]), TypeError),
])
def test_bad_options_are_refused_with_a_clear_error(bad, error):
    with pytest.raises(error) as info:
        TaskOptions.make(**bad)
    assert "priority" in str(info.value) or "resources" in str(info.value)


# -- invariants under any sequence of events ---------------------------------------------


CLIENTS = [C1, C2, C3]
WORKERS = {W1: {}, W2: {"gpu": 2}}
OPTIONS = [options(), options(3), options(-1), options(gpu=1), options(3, gpu=2)]

submits = st.tuples(st.just("submit"), st.sampled_from(CLIENTS), st.sampled_from(OPTIONS))
events = st.lists(st.one_of(
    submits, submits, submits,  # more often than the rest: queues must build up
    st.tuples(st.just("credit"), st.sampled_from(list(WORKERS)), st.integers(1, 3)),
    st.tuples(st.just("finish"), st.sampled_from(list(WORKERS)), st.integers(0, 5)),
    st.tuples(st.just("withdraw"), st.sampled_from(list(WORKERS)), st.integers(0, 5)),
    st.tuples(st.just("cancel"), st.sampled_from(CLIENTS), st.integers(0, 30)),
    st.tuples(st.just("lose"), st.sampled_from(list(WORKERS)), st.booleans()),
    st.tuples(st.just("leave"), st.sampled_from(CLIENTS), st.none()),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(events)
@example([("submit", C1, OPTIONS[0])] * 5 + [("submit", C2, OPTIONS[1]), ("credit", W1, 1)])
# A client leaving empties a worker's in-flight table: a suspect may go there now.
@example([("submit", C1, OPTIONS[0]), ("submit", C1, OPTIONS[0]), ("submit", C2, OPTIONS[0]),
          ("lose", W2, True), ("leave", C1, None)])
def test_scheduling_invariants_hold_whatever_happens(script):
    state = make_state(*CLIENTS)
    for worker_id, resources in WORKERS.items():
        state.add_worker(worker_id, 2, 0.0, threads=1, resources=resources)
    next_id = 0
    for event, who, arg in script:
        if event == "submit":
            if who not in state.clients:
                state.add_client(who, [], 0.0)
            next_id += 1
            state.submit(who, next_id, b"x", options=arg)
        elif event == "credit" and who in state.workers:
            state.add_credit(who, arg)
        elif event in ("finish", "withdraw") and who in state.workers:
            held = list(state.workers[who].in_flight)
            if held:
                key = held[arg % len(held)]
                if event == "finish":
                    state.finish(who, key)
                else:
                    state.ask_back.withdraw(who, [key], requeue=True)
        elif event == "cancel" and who in state.clients:
            state.cancel(who, [arg])
        elif event == "lose" and who in state.workers:
            state.remove_worker(who, lost=arg)
            state.add_worker(who, 2, 0.0, threads=1, resources=WORKERS[who])
        elif event == "leave":
            state.remove_client(who)
        for assignment in state.assign():
            check_dispatch_order(state, assignment)
        check_bookkeeping(state)
        check_nothing_left_that_could_go(state)


def check_dispatch_order(state: BrokerState, assignment) -> None:
    """No task went out while one of higher priority that any worker can run
    (it needs no resources) stayed queued."""
    sent = min(task.options.priority for task in assignment.tasks)
    for task in state.queue.in_order():
        if not task.options.resources:
            assert task.options.priority <= sent, (task, assignment.tasks)


def check_nothing_left_that_could_go(state: BrokerState) -> None:
    """After assign(), no worker with credit could take a queued task (but a
    task that must run alone, while that worker holds others)."""
    for worker in state.workers.values():
        if worker.credit <= 0 or worker.draining or worker.isolating:
            continue
        level = state.queue.first_for(worker)
        task = level.head(state.clients) if level is not None else None
        assert task is None or (task.suspect and worker.in_flight), (task, worker)


def check_bookkeeping(state: BrokerState) -> None:
    assert state.queue.count == sum(level.count for level in state.queue.order)
    assert state.queue.count == sum(len(c.waiting) for c in state.clients.values())
    for worker in state.workers.values():
        used = {}
        needs = [t.options.resources for t in worker.in_flight.values()]
        for need in needs + list(worker.orphans.values()):
            for name, amount in need:
                used[name] = used.get(name, 0) + amount
        for name, amount in worker.resources.items():
            assert worker.free[name] == amount - used.get(name, 0) >= 0
        assert worker.credit >= 0
    held = sum(1 for key, worker_id in state.in_flight.items()
               if state.workers[worker_id].in_flight[key].options.priority)
    assert held == sum(state.held_priorities.values())


def test_a_worker_that_leaves_charges_no_try_but_stops_what_must_not_run_twice():
    state = make_state()
    state.submit(C1, 1, b"x")
    state.submit(C1, 2, b"x", options=options_with(retries=0))
    state.add_worker(W1, 2, 0.0, threads=2)
    state.assign()
    state.started(W1, (C1, 1))
    state.started(W1, (C1, 2))
    expired = state.remove_worker(W1, lost=False)
    assert [t.key for t in expired.stopped] == [(C1, 2)]
    [task] = state.queue.in_order()
    assert task.key == (C1, 1) and task.lost_on == ()


def test_a_task_past_its_timeout_on_a_worker_that_died_fails_as_timed_out():
    state = make_state()
    state.submit(C1, 1, b"x", now=0.0, options=options_with(timeout=5))
    state.submit(C1, 2, b"x", now=0.0, options=options_with(timeout=50))
    state.add_worker(W1, 2, 0.0, threads=2)
    for assignment in state.assign():
        for task in assignment.tasks:
            task.dispatch(1.0)
    state.started(W1, (C1, 1))
    state.started(W1, (C1, 2))
    expired = state.remove_worker(W1, lost=True, now=8.0)
    assert [t.key for t in expired.timed_out] == [(C1, 1)]
    assert [t.key for t in state.queue.in_order()] == [(C1, 2)]


def options_with(**kwargs) -> TaskOptions:
    return TaskOptions.make(**kwargs)


def test_tasks_needing_resources_are_not_asked_back_for_a_worker_that_may_lack_them():
    state = make_state()
    state.submit(C1, 1, b"x", options=options(gpu=1))
    state.submit(C1, 2, b"x", options=options(gpu=1))
    state.submit(C1, 3, b"x")
    state.submit(C1, 4, b"x")
    state.add_worker(W1, 4, 0.0, threads=1, resources={"gpu": 2})
    state.assign()
    state.started(W1, (C1, 1))
    state.add_worker(W2, 1, 0.0, threads=1)  # idle, no gpu
    assert state.ask_back.to_steal() == [(W1, [(C1, 3), (C1, 4)])]


def test_an_idle_worker_gets_held_tasks_back_while_the_queue_waits_for_resources():
    state = make_state()
    for task_id in range(4):
        state.submit(C1, task_id, b"x")
    state.add_worker(W1, 4, 0.0, threads=1)
    state.assign()
    state.started(W1, (C1, 0))
    state.submit(C1, 9, b"x", options=options(tpu=1))  # no worker has one: it stays queued
    state.add_worker(W2, 1, 0.0, threads=1)
    assert state.assign() == []  # nothing queued that W2 can run...
    assert state.ask_back.to_steal() == [(W1, [(C1, 1), (C1, 2), (C1, 3)])]  # ...so it asks W1 back
