"""What a worker tells the broker of its tasks: the parts of one RESULTS
message, taken from the runner's events, and the answers of tasks that ran
past their timeouts. No sockets (tested in tests/test_worker_results_batching.py).
"""
from __future__ import annotations

from zeropool.protocol import TaskRow, WorkerOutputRow, WorkerResultRow, pack_payload, text_size
from zeropool.protocol.errors import TaskTimeoutError
from zeropool.protocol.payload import dumps_exception

# Results sent per message at most; more wait for the next pass, so that one
# huge message cannot hold the loop.
MAX_RESULTS_PER_MESSAGE = 1000


def take_batch(events, budget: int, running: set, unreported: set,
               seconds: list) -> tuple[list, list, list, list]:
    """Take events (the runner's, oldest first) for one RESULTS message:
    returns its results, started keys, payload frames and printed output.

    Stops at MAX_RESULTS_PER_MESSAGE results or once inline results and
    output (which travel in the header) reach ``budget`` bytes. A task
    answered leaves ``running`` and ``unreported`` and adds its run time to
    ``seconds``; a start reported leaves ``unreported``. "seceded" events
    need nothing here: the slot is offered with the credit.
    """
    started, results, payload, printed = {}, [], [], []
    size = 0
    popleft, took = events.popleft, seconds.append
    while events and len(results) < MAX_RESULTS_PER_MESSAGE and size < budget:
        event = popleft()
        if event[0] == "started":
            started[event[1]] = None
        elif event[0] == "seceded":
            pass
        elif event[0] == "output":
            _, key, stream, text = event
            size += text_size(text)
            last = printed[-1] if printed else None
            if last and last[0] == key[0] and last[1] == key[1] and last[2] == stream:
                last[WorkerOutputRow.text].append(text)  # print() writes the text and its newline apart
            else:
                printed.append(WorkerOutputRow(key[0], key[1], stream, [text]))  # joined below
        else:
            _, key, status, frames, run_time = event
            took(run_time)
            started.pop(key, None)  # its result says it started
            running.discard(key)
            unreported.discard(key)
            nframes, inline, frames = pack_payload(frames)
            results.append(WorkerResultRow(key[0], key[1], int(status), nframes, inline))
            payload.extend(frames)
            size += len(inline) + 16
    if printed:
        text = WorkerOutputRow.text
        for row in printed:
            row[text] = "".join(row[text])
    if not started:  # (a lone task's start goes with its result)
        return results, [], payload, printed
    unreported.difference_update(started)
    return results, [TaskRow(*k) for k in started], payload, printed


def timed_out(overdue: list, where: str) -> list:
    """The answers ("done" events) of tasks that ran past their timeouts:
    ``overdue`` as Runner.overdue gives it, ``where`` names this process."""
    events = []
    for key, timeout, stack in overdue:
        text = (f"the task ran longer than its timeout of {timeout:g}s, so it was stopped: "
                f"its worker process ({where}) was replaced, since a running thread cannot "
                "be stopped otherwise")
        if stack:
            text += f". It was here:\n{stack.rstrip()}"
        status, frames = dumps_exception(TaskTimeoutError(text))
        events.append(("done", key, status, frames, timeout))
    return events
