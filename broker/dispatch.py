"""Handing queued tasks to workers with credit. Part of BrokerState
(``state.assign()``), over the same tables.

    queue ──> assign(): rounds over the ready workers, free threads first,
              an equal share each ──> _fill ──> _hand ──> Assignment per worker

The speed tricks, here alone: ``_fill_plain`` takes the default level's
head inline while only default tasks are queued (nearly always), where
``_fill_levels`` would ask the queue which level comes first for each task.
Both end in ``_hand``; they must choose the same tasks. ``assign_lone`` is
the round of a queue of one new task, which it never enters (a lone call):
it must choose the same worker, and shares the round's order and end.

Plain objects, no sockets, no clock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zeropool.broker.queue import DEFAULT_OPTIONS
from zeropool.protocol import PythonRow

if TYPE_CHECKING:
    from zeropool.broker.state import BrokerState, Task, Worker


@dataclass(slots=True)
class Assignment:
    """Tasks to send to one worker, with the initializers it still needs."""

    worker_id: bytes
    tasks: list
    inits: list  # [(client_id, frames)]
    # [[client_id, Python version]] of clients whose Python differs from the worker's
    pythons: list = field(default_factory=list)


class Dispatcher:
    """Fills Assignments from the queue; the tables are BrokerState's."""

    def __init__(self, state: BrokerState) -> None:
        # The same objects as the state's (never replaced), bound here so
        # that the per-task path costs no extra lookups.
        self.state = state
        self.queue = state.queue
        self.workers = state.workers
        self.clients = state.clients
        self.in_flight = state.in_flight
        self.ready = state.ready
        self.holders = state.holders
        self.held_priorities = state.held_priorities

    def assign(self) -> list[Assignment]:
        """Hand queued tasks to workers with credit, spreading them evenly.

        Each round gives every ready worker an equal share of the queue (up to
        its credit), so one worker does not take a small queue whole while
        another idles; rounds repeat while tasks and credit remain.
        """
        state = self.state
        if not state.dispatch_due:
            return []
        state.dispatch_due = False
        assignments: dict[bytes, Assignment] = {}
        queue, ready, all_workers = self.queue, self.ready, self.workers
        while queue.count and ready:
            before = queue.count
            workers = self._in_turn()
            share = math.ceil(queue.count / len(workers))
            for worker_id in workers:
                worker = all_workers[worker_id]
                assignment = assignments.get(worker_id)
                if assignment is None:
                    assignment = assignments[worker_id] = Assignment(worker_id, [], [])
                self._fill(worker, assignment, min(worker.credit, share))
            self._after_round(workers)
            if queue.count == before:
                break  # a suspect at the front waits for a worker with nothing to do
        return [a for a in assignments.values() if a.tasks]

    def assign_lone(self, task: Task) -> Assignment | None:
        """``assign()`` of a queue of ``task`` alone (a new default task; the
        caller checks that nothing is queued), without the queue: the worker
        assign() would choose takes it, the first in turn that is not
        isolating, and ready and holders end as assign() leaves them. None,
        with nothing changed, if no worker would take it."""
        workers = self._in_turn()
        for worker_id in workers:
            worker = self.workers[worker_id]
            if worker.credit > 0 and not worker.isolating:  # else _fill takes nothing
                break
        else:
            return None
        assignment = Assignment(worker_id, [], [])
        self.clients[task.client_id].waiting[task.task_id] = task  # where _hand takes it from
        self._hand(task, worker, assignment)
        worker.credit -= 1
        self._after_round(workers)
        return assignment

    def _in_turn(self) -> list[bytes]:
        """The ready workers in the order a round fills them: those with a
        free thread first, since a task given to a busy one would wait there
        (and be asked back for the idle one)."""
        ready = self.ready
        if len(ready) == 1:
            return list(ready)
        free, busy = [], []
        all_workers = self.workers
        for worker_id in ready:
            worker = all_workers[worker_id]
            (free if worker.occupied < worker.threads else busy).append(worker_id)
        return free + busy if busy else free

    def _after_round(self, workers: list[bytes]) -> None:
        """After a round over ``workers``: those given more tasks than they
        have threads hold some waiting; those with credit left stay ready,
        in the round's order."""
        all_workers, ready, holders = self.workers, self.ready, self.holders
        ready.clear()
        for worker_id in workers:
            worker = all_workers[worker_id]
            if worker.occupied > worker.threads:
                holders[worker_id] = None
                self.state.steal_due = True
            if worker.credit > 0:
                ready[worker_id] = None

    def _fill(self, worker: Worker, assignment: Assignment, count: int) -> None:
        if len(self.queue.order) == 1 and not worker.isolating:
            taken = self._fill_plain(worker, assignment, count)
        else:
            taken = self._fill_levels(worker, assignment, count)
        worker.credit -= taken

    def _fill_plain(self, worker: Worker, assignment: Assignment, count: int) -> int:
        """``_fill`` while only default tasks are queued (nearly always): the
        default level alone, its head taken and handed out inline."""
        level = self.queue.default
        clients = self.clients
        taken = 0
        while taken < count and level.count:
            task = level.head(clients)
            if task.suspect:
                if worker.in_flight:
                    break  # it must run alone, and order holds behind it
                worker.isolating = True
            self.queue.take(level)
            self._hand(task, worker, assignment)
            taken += 1
            if worker.isolating:
                break
        return taken

    def _fill_levels(self, worker: Worker, assignment: Assignment, count: int) -> int:
        taken = 0
        level, task = None, None
        while taken < count and not worker.isolating:
            if task is None:
                level, task = self.queue.next_for(worker)
                if task is None:
                    break  # nothing it can run
            if task.suspect:
                if worker.in_flight:
                    break  # it must run alone, and order holds behind it
                worker.isolating = True
            more = self.queue.take(level)
            self._hand(task, worker, assignment)
            taken += 1
            # The same level stays first for this worker until it runs dry, its
            # resources do, or another level of its priority has its turn:
            # levels before it were empty or did not fit, and resources only
            # get scarcer here.
            if not more or (level.needs and not worker.fits(level.needs)):
                task = None
            else:
                task = level.head(self.clients)
        return taken

    def _hand(self, task: Task, worker: Worker, assignment: Assignment) -> None:
        """A task taken from its level goes to ``worker``, in ``assignment``."""
        client = self.clients[task.client_id]
        del client.waiting[task.task_id]
        options = task.options
        if options is not DEFAULT_OPTIONS:
            worker.take(options.resources)
            if options.priority:
                self.held_priorities[options.priority] += 1
        key = (task.client_id, task.task_id)
        self.in_flight[key] = worker.worker_id
        worker.in_flight[key] = task
        client.in_flight += 1
        if client.init_frames and task.client_id not in worker.inits_sent:
            worker.inits_sent.add(task.client_id)
            assignment.inits.append((task.client_id, client.init_frames))
        if client.python != worker.python and task.client_id not in worker.pythons_sent:
            worker.pythons_sent.add(task.client_id)
            if client.python and worker.python:
                assignment.pythons.append(PythonRow(task.client_id, client.versions["python"]))
        assignment.tasks.append(task)
