"""Unit tests for worker.results: how the runner's events become one RESULTS
message (results, starts, printed output, within a count and a size), and
the answer of a task that ran past its timeout."""
from __future__ import annotations

import collections

from zeropool.protocol import Status
from zeropool.protocol.errors import TaskTimeoutError
from zeropool.protocol.payload import loads_result
from zeropool.worker.results import MAX_RESULTS_PER_MESSAGE, take_batch, timed_out

C = b"client"
BIG = 1 << 20


def done(task_id: int, value: bytes = b"ok", seconds: float = 0.001) -> tuple:
    return ("done", (C, task_id), Status.OK, [value], seconds)


def batch(events, budget: int = BIG, running=None, unreported=None):
    running = set(running or ())
    unreported = set(unreported or ())
    seconds: list = []
    parts = take_batch(events, budget, running, unreported, seconds)
    return parts, running, unreported, seconds


def test_a_result_says_its_task_started_and_leaves_the_tasks_held():
    events = collections.deque([("started", (C, 1)), ("started", (C, 2)), done(1, seconds=0.5)])
    (results, started, payload, printed), running, unreported, seconds = batch(
        events, running={(C, 1), (C, 2), (C, 3)}, unreported={(C, 1), (C, 2), (C, 3)})
    assert results == [[C, 1, int(Status.OK), 0, b"ok"]]  # small: inline
    assert started == [[C, 2]]
    assert payload == [] and printed == []
    assert running == {(C, 2), (C, 3)}
    assert unreported == {(C, 3)}  # 2's start is told now
    assert seconds == [0.5]
    assert not events


def test_large_results_travel_as_frames():
    big = b"x" * 100_000
    (results, _, payload, _), *_ = batch(collections.deque([done(1, big)]))
    assert results == [[C, 1, int(Status.OK), 1, b""]]
    assert payload == [big]


def test_output_written_in_pieces_goes_as_one_text_per_task_and_stream():
    events = collections.deque([
        ("output", (C, 1), 1, "hello"), ("output", (C, 1), 1, "\n"),
        ("output", (C, 1), 2, "oops\n"), ("output", (C, 2), 1, "other\n"),
        ("output", (C, 1), 1, "again\n"),
    ])
    (_, _, _, printed), *_ = batch(events)
    assert printed == [[C, 1, 1, "hello\n"], [C, 1, 2, "oops\n"], [C, 2, 1, "other\n"],
                       [C, 1, 1, "again\n"]]


def test_a_seceded_event_adds_nothing_to_the_message():
    (results, started, payload, printed), *_ = batch(collections.deque([("seceded", (C, 1))]))
    assert (results, started, payload, printed) == ([], [], [], [])


def test_one_message_holds_at_most_so_many_results():
    events = collections.deque(done(i) for i in range(MAX_RESULTS_PER_MESSAGE + 1))
    (results, *_), *_ = batch(events)
    assert len(results) == MAX_RESULTS_PER_MESSAGE
    assert len(events) == 1
    (results, *_), *_ = batch(events)
    assert [row[1] for row in results] == [MAX_RESULTS_PER_MESSAGE]


def test_inline_results_and_output_stop_at_the_header_budget():
    events = collections.deque([("output", (C, 1), 1, "x" * 100), done(1, b"y" * 100), done(2)])
    (results, _, _, printed), *_ = batch(events, budget=400)  # 4 bytes a character, at most
    assert printed == [[C, 1, 1, "x" * 100]]
    assert results == []
    (results, *_), *_ = batch(events, budget=400)
    assert [row[1] for row in results] == [1, 2]


def test_a_task_past_its_timeout_is_answered_with_a_timeout_error_saying_where_it_was():
    [event] = timed_out([((C, 7), 2.5, "  File 'task.py', line 3\n")], "host:123")
    kind, key, status, frames, seconds = event
    assert (kind, key, seconds) == ("done", (C, 7), 2.5)
    ok, error = loads_result(status, frames)
    assert not ok and isinstance(error, TaskTimeoutError)
    text = str(error)
    assert "timeout of 2.5s" in text and "(host:123)" in text
    assert text.endswith("It was here:\n  File 'task.py', line 3")
