"""The broker's outgoing batching: what one pass gathers, cut into messages.

    on_results ──> Outbox: per client, results / started / errors / output
    _flush     ──> results_messages(out)  ──> RESULTS, each within its budget
    _dispatch  ──> dispatch_messages(assignment, now, latency) ──> DISPATCH

Plain objects, no sockets: the loop sends what these build. Results are
gathered for a whole pass, so that one RESULTS to a client carries every
result a pass read; tasks go out to a worker in as few DISPATCH as the
header budget allows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from zeropool.broker.dispatch import Assignment
from zeropool.broker.state import Expired
from zeropool.broker.stats import Histogram
from zeropool.protocol import (
    ClientResults, Dispatch, DispatchRow, ErrorRow, InitRow, header_budget, pack_payload,
    text_size,
)
from zeropool.protocol import defaults

# Result rows per RESULTS message to a client (rows may carry 4 KiB inline).
MAX_RESULTS_PER_MESSAGE = 1000
# What a client or a worker accepts in a header.
_BUDGET = header_budget(defaults.MAX_MESSAGE_SIZE)


@dataclass(slots=True)
class Outgoing:
    """Results gathered for one client during a pass."""

    results: list = field(default_factory=list)
    started: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    payload: list = field(default_factory=list)
    output: list = field(default_factory=list)


class Outbox:
    """What the clients are sent at the end of a pass, by client id."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, Outgoing] = {}

    def for_client(self, client_id: bytes) -> Outgoing:
        out = self.waiting.get(client_id)
        if out is None:
            out = self.waiting[client_id] = Outgoing()
        return out

    def take(self) -> dict[bytes, Outgoing]:
        """All that was gathered, which the outbox forgets."""
        waiting, self.waiting = self.waiting, {}
        return waiting

    def fail(self, expired: Expired, why: str) -> None:
        """Errors for the tasks that removing workers failed (see Expired)."""
        for task in expired.timed_out:
            self.for_client(task.client_id).errors.append(ErrorRow(task.task_id, "timeout", (
                f"the task ran longer than its timeout of {task.options.timeout:g}s and its "
                "worker process died meanwhile (a task that holds the GIL is stopped by the "
                "worker's watchdog, which ends the process); it is not run again")))
        for task in expired.stopped:
            self.for_client(task.client_id).errors.append(ErrorRow(task.task_id, "worker_lost", (
                f"task {task.task_id} may have been running when its worker process left "
                f"or was replaced ({why}; another task there may have run past its timeout), "
                "and options(retries=0) forbids running it again")))
        for task in expired.poisoned:
            workers = ", ".join(w.hex() for w in task.lost_on)
            lost = (f"task {task.task_id} was running on {len(task.lost_on)} worker"
                    f"{'s' if len(task.lost_on) > 1 else ''} that died ({workers})")
            retries = task.options.retries
            if retries is None:
                reason = ("; it probably crashes them (os._exit, a segfault, running out of "
                          "memory), so it is not retried again")
            else:
                reason = (f", and may be retried {retries} time{'s' if retries != 1 else ''} "
                          "(options(retries=...)), so it is not retried again")
            self.for_client(task.client_id).errors.append(ErrorRow(task.task_id, "worker_lost",
                                                                   lost + reason))


def results_messages(out: Outgoing) -> Iterator[tuple[ClientResults, list]]:
    """As many RESULTS as it takes to keep each header within its budget
    (inline results and output travel in it): output first, since it
    precedes the results of its tasks; news and errors with the first."""
    budget = _BUDGET
    message = ClientResults([], out.started, out.errors)
    payload, size, frame = [], 0, 0
    for row in out.output:
        if size >= budget:
            yield message, payload
            message, payload, size = ClientResults([]), [], 0
        message.output.append(row)
        size += text_size(row[2])
    for row in out.results:
        if size >= budget or len(message.results) >= MAX_RESULTS_PER_MESSAGE:
            yield message, payload
            message, payload, size = ClientResults([]), [], 0
        message.results.append(row)
        payload.extend(out.payload[frame:frame + row[2]])
        frame += row[2]
        size += len(row[3]) + 16
    yield message, payload


def dispatch_messages(assignment: Assignment, now: float,
                      latency: Histogram) -> Iterator[tuple[Dispatch, list]]:
    """One worker's tasks as DISPATCH messages within a worker's header
    budget, the initializers and Python versions it needs with the first;
    notes each task's time in the queue in ``latency``."""
    budget = _BUDGET
    rows, payload, size, inits = [], [], 0, []
    for client_id, frames in assignment.inits:
        payload.extend(frames)
        inits.append(InitRow(client_id, len(frames)))
    pythons = assignment.pythons
    for task in assignment.tasks:
        if size >= budget:
            yield Dispatch(rows, inits, pythons), payload
            rows, payload, size, inits, pythons = [], [], 0, [], []
        nframes, inline, frames = pack_payload(task.frames)
        options = task.options
        # The options travel where the worker needs them: priority, timeout.
        rows.append(DispatchRow(task.client_id, task.task_id, nframes, inline,
                                options if options.priority or options.timeout else None))
        payload.extend(frames)
        size += len(inline) + 16
        queued = task.dispatch(now)
        if queued is not None:
            latency.observe(queued)
    yield Dispatch(rows, inits, pythons), payload
