"""client.table: the task table completes each future once and, on a new
connection, submits again in submission order what was not answered; no
sockets, no processes."""
from __future__ import annotations

import concurrent.futures as cf

import pytest

from zeropool.client.errors import InitializerError, WorkerLostError
from zeropool.client.futures import TaskFuture
from zeropool.client.table import CancelRequests, TaskTable, initializer_error
from zeropool.protocol import ClientResults, Status, decode, encode, header_budget, pack_payload
from zeropool.protocol.payload import dumps_call, dumps_exception, dumps_result

pytestmark = pytest.mark.timeout(30)


class _NotLent:
    """A session's Lending whose socket is never lent (client/lending.py)."""
    lent = False

    def wait(self, future, timeout):
        return timeout

    def take_back(self) -> None:
        pass


class _NoBroker:
    lending = _NotLent()

    def cancel(self, futures) -> None:  # TaskFuture.cancel() asks its session first
        pass


def _table(count: int, **kwargs) -> tuple[TaskTable, list[TaskFuture]]:
    table = TaskTable(**kwargs)
    tasks = []
    for _ in range(count):
        task = TaskFuture(_NoBroker(), next(table.task_ids), dumps_call(abs, (-1,), {})[0])
        table.add(task)
        table.unsent.append(task.task_id)
        tasks.append(task)
    return table, tasks


def _results(rows: list, **fields) -> tuple[ClientResults, list]:
    """RESULTS as the client receives it: ``rows`` of (task_id, status, frames)."""
    results, payload = [], []
    for task_id, status, frames in rows:
        nframes, inline, out = pack_payload(frames)
        results.append([task_id, int(status), nframes, inline])
        payload.extend(out)
    return decode(encode(ClientResults(results, **fields), payload))


def _ids(rows: list) -> list[int]:
    return [row[0] for row in rows]


def test_only_the_first_of_tasks_in_flight_may_go_alone():
    table = TaskTable()
    first, second = (TaskFuture(_NoBroker(), i, b"") for i in (1, 2))
    assert table.add(first) and not table.add(second)


def test_batches_stop_at_max_in_flight_and_go_on_as_results_come():
    table, tasks = _table(3, max_in_flight=2)
    rows, _ = table.batch(header_budget(1 << 20))
    assert _ids(rows) == [1, 2] and table.open == 2
    assert table.batch(header_budget(1 << 20)) is None  # no room
    status, frames = dumps_result(1)
    assert table.deliver(*_results([(1, status, frames)])) is None
    assert tasks[0].result(0) == 1 and table.open == 1
    rows, _ = table.batch(header_budget(1 << 20))
    assert _ids(rows) == [3]


def test_a_batch_stops_once_past_its_header_budget():
    table, _ = _table(3)
    assert [_ids(table.batch(1)[0]) for _ in range(3)] == [[1], [2], [3]]


def test_a_new_connection_submits_again_every_unanswered_task_in_order():
    table, tasks = _table(4)
    table.batch(header_budget(1 << 20))  # all four sent
    status, frames = dumps_result(None)
    table.deliver(*_results([(2, status, frames)]))
    table.unsent.append(99)  # queued meanwhile; no longer pending by then
    assert table.resubmit_all() == 3
    assert list(table.unsent) == [1, 3, 4, 99] and table.open == 0
    rows, _ = table.batch(header_budget(1 << 20))
    assert _ids(rows) == [1, 3, 4]  # 99 is skipped: not pending


def test_a_result_after_a_resubmission_completes_its_future_once():
    table, tasks = _table(1)
    table.batch(header_budget(1 << 20))
    table.resubmit_all()
    table.batch(header_budget(1 << 20))
    status, frames = dumps_result("first")
    table.deliver(*_results([(1, status, frames)]))
    status, frames = dumps_result("second")
    table.deliver(*_results([(1, status, frames)]))  # the duplicate is dropped
    assert tasks[0].result(0) == "first" and table.open == 0 and not table.pending


def test_cancel_cancels_unsent_tasks_here_and_asks_about_sent_ones():
    table, tasks = _table(3)
    table.unsent.remove(2)
    table.batch(header_budget(1 << 20))  # tasks 1 and 3 sent; 2 not
    assert table.cancel_unsent([1, 2]) == [1]
    assert tasks[1].cancelled() and not tasks[0].done()
    tasks[0].set_running_or_notify_cancel()  # reported started, then its worker died
    table.cancelled([1, 3])  # the broker's reply: neither had started
    with pytest.raises(cf.CancelledError, match="worker was lost"):
        tasks[0].result(0)
    assert tasks[2].cancelled() and not table.pending and table.open == 0


def test_a_claim_fails_for_a_task_sent_or_gone_and_unclaiming_puts_it_back():
    table, (task,) = _table(1)
    assert table.claim(task) and table.open == 1
    assert not table.claim(task)
    table.unclaim(task)
    assert not task.sent and table.open == 0
    table.fail_all(RuntimeError("gone"))
    assert not table.claim(task)
    with pytest.raises(RuntimeError, match="gone"):
        task.result(0)


def test_broker_errors_and_starts_reach_the_futures():
    table, tasks = _table(2)
    table.batch(header_budget(1 << 20))
    table.deliver(*_results([], started=[1], errors=[[2, "worker_lost", "lost twice"]]))
    assert tasks[0].running()
    with pytest.raises(WorkerLostError, match="lost twice"):
        tasks[1].result(0)


def test_a_failed_initializer_stops_delivery_and_says_why():
    table, tasks = _table(2)
    status, frames = dumps_exception(ModuleNotFoundError("no module named 'm'", name="m"))
    failed = table.deliver(*_results([(1, Status.INIT_FAILED, frames)]))
    assert failed is not None and failed[0] is tasks[0]
    error = initializer_error(failed[1])
    assert isinstance(error, InitializerError) and "cannot import module 'm'" in str(error)


def test_every_cancel_request_is_answered_once_its_connection_is_lost():
    requests = CancelRequests()
    first, second = requests.new([1], False), requests.new([2], True)
    assert first.request_id != second.request_id
    requests.asked(first)
    requests.asked(second)
    assert requests.answered(first.request_id) is first
    assert requests.answered(first.request_id) is None
    requests.release_all()
    assert second.done.is_set() and not first.done.is_set()
