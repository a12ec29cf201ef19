"""Unit tests for broker.outbox: a pass's results gathered per client and cut
into RESULTS, and a worker's tasks cut into DISPATCH, each message within
the header budget a peer accepts."""
from __future__ import annotations

from zeropool.broker.outbox import (
    MAX_RESULTS_PER_MESSAGE, Outbox, Outgoing, dispatch_messages, results_messages,
)
from zeropool.broker.dispatch import Assignment
from zeropool.broker.state import BrokerState, Expired, OptionedTask, Task
from zeropool.broker.stats import Histogram
from zeropool.protocol import TaskOptions, defaults, header_budget

C1 = b"client-1"
W1 = b"worker-1"
BUDGET = header_budget(defaults.MAX_MESSAGE_SIZE)
BIG = b"x" * defaults.INLINE_MAX  # the largest inline payload


def test_results_are_gathered_per_client_until_taken():
    outbox = Outbox()
    outbox.for_client(C1).started.append(1)
    assert outbox.for_client(C1).started == [1]
    taken = outbox.take()
    assert list(taken) == [C1] and not outbox.waiting


def test_a_small_pass_goes_in_one_message_with_its_news_and_errors():
    out = Outgoing(results=[[1, 0, 0, b"r1"], [2, 0, 1, b""]], started=[3],
                   errors=[[4, "timeout", "text"]], payload=[b"frame-of-2"])
    [(message, payload)] = results_messages(out)
    assert message.results == out.results and message.started == [3]
    assert message.errors == [[4, "timeout", "text"]]
    assert payload == [b"frame-of-2"]


def test_results_are_cut_at_a_row_count():
    rows = [[task_id, 0, 0, b"r"] for task_id in range(MAX_RESULTS_PER_MESSAGE + 5)]
    messages = list(results_messages(Outgoing(results=rows, started=[7])))
    assert [len(m.results) for m, _ in messages] == [MAX_RESULTS_PER_MESSAGE, 5]
    assert messages[0][0].started == [7] and messages[1][0].started == []


def test_results_are_cut_at_the_header_budget_and_keep_their_frames():
    # Output counts four bytes a character against the budget: two such rows fill it.
    text = "x" * (BUDGET // 8)
    output = [[task_id, 1, text, "host:1"] for task_id in (1, 2, 3)]
    rows = [[1, 0, 1, b""], [2, 0, 0, b"r2"], [3, 0, 2, b""]]
    out = Outgoing(results=rows, output=output, started=[4],
                   payload=[b"frame-1", b"frame-3a", b"frame-3b"])
    messages = list(results_messages(out))
    assert [len(m.output) for m, _ in messages] == [2, 1]
    assert messages[0][0].started == [4] and not messages[0][0].results
    second, payload = messages[1]
    assert second.results == rows and payload == [b"frame-1", b"frame-3a", b"frame-3b"]


def test_output_goes_before_the_results_of_its_tasks():
    out = Outgoing(results=[[1, 0, 0, b"r"]], output=[[1, 1, "hello\n", "host:1"]])
    [(message, _)] = results_messages(out)
    assert message.output == [[1, 1, "hello\n", "host:1"]] and message.results


def test_a_workers_tasks_go_with_the_initializers_it_lacks_first():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(C1, [b"init"], now=0.0)
    state.submit(C1, 1, b"call", now=1.0)
    state.submit(C1, 2, [b"a", b"b"], now=1.0,
                 options=TaskOptions.make(priority=3, timeout=2.0))
    state.add_worker(W1, 10, now=0.0)
    [assignment] = state.assign()
    latency = Histogram()
    [(message, payload)] = dispatch_messages(assignment, 3.0, latency)
    assert message.inits == [[C1, 1]]
    assert payload == [b"init", b"a", b"b"]  # the initializer's frames first
    # Priority and timeout go to the worker; the default options do not.
    [first, second] = sorted(message.tasks, key=lambda row: row[1])
    assert first == [C1, 1, 0, b"call"]
    assert second[:4] == [C1, 2, 2, b""] and second[4].priority == 3
    assert sum(latency.counts) == 2 and latency.sum == 4.0  # two seconds queued each


def test_a_task_sent_again_is_not_counted_as_queued_again():
    task = Task(C1, 1, b"call", time=1.0)
    latency = Histogram()
    list(dispatch_messages(Assignment(W1, [task], []), 2.0, latency))
    list(dispatch_messages(Assignment(W1, [task], []), 5.0, latency))
    assert sum(latency.counts) == 1 and task.time == 5.0


def test_dispatch_is_cut_at_the_header_budget():
    per_message = BUDGET // (len(BIG) + 16) + 1
    tasks = [Task(C1, task_id, BIG) for task_id in range(per_message + 3)]
    messages = list(dispatch_messages(Assignment(W1, tasks, [(C1, [b"init"])]), 0.0,
                                      Histogram()))
    assert [len(m.tasks) for m, _ in messages] == [per_message, 3]
    assert messages[0][0].inits == [[C1, 1]] and messages[1][0].inits == []


def test_tasks_that_removing_workers_failed_become_errors_for_their_clients():
    outbox = Outbox()
    expired = Expired(workers=[W1])
    expired.timed_out.append(OptionedTask(C1, 1, b"", options=TaskOptions.make(timeout=2.0)))
    expired.stopped.append(OptionedTask(C1, 2, b"", options=TaskOptions.make(retries=0)))
    expired.poisoned.append(Task(C1, 3, b"", lost_on=(W1, b"w2")))
    outbox.fail(expired, "unreachable")
    errors = outbox.for_client(C1).errors
    assert [(task_id, code) for task_id, code, _ in errors] == [
        (1, "timeout"), (2, "worker_lost"), (3, "worker_lost")]
    assert "longer than its timeout of 2s" in errors[0][2]
    assert "(unreachable;" in errors[1][2] and "options(retries=0)" in errors[1][2]
    assert "was running on 2 workers that died" in errors[2][2]
    assert "it probably crashes them" in errors[2][2]
