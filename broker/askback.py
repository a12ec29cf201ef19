"""Asking workers back for tasks they hold unstarted (prefetched), and
taking them back. Part of BrokerState (``state.ask_back``), over the same
tables.

    to_steal()   tasks waiting on busy workers while others are idle
    to_preempt() tasks waiting on workers that a queued task outranks
    unstarted()  a cancel's tasks that workers hold
    withdraw()   what a worker gave back: requeued at the front, or dropped

Each finder costs nothing per task: it looks only when a flag on the state
says something it depends on changed (``steal_due``, ``preempt_due``).
Plain objects, no sockets, no clock.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from zeropool.broker.queue import DEFAULT_OPTIONS

if TYPE_CHECKING:
    from zeropool.broker.state import BrokerState, Task, TaskKey, Worker


class AskBack:
    """Finds tasks to ask back from workers, and takes back what they give."""

    def __init__(self, state: BrokerState) -> None:
        self.state = state

    def to_steal(self) -> list[tuple[bytes, list]]:
        """With threads free on workers with credit that nothing queued can
        use (after assign(): the queue is empty, or holds only tasks those
        workers cannot run, such as tasks waiting for resources), the tasks
        that other workers may hold waiting: (worker id, keys) to ask back,
        from as many workers as it takes to cover the free threads.

        Keys are those the worker has not said it started; it gives back only
        those still waiting. Costs nothing per task: it looks only when some
        worker was given more tasks than threads, and credit, holders or tasks
        on workers changed since it last looked.
        """
        state = self.state
        holders, ready, workers = state.holders, state.ready, state.workers
        if not holders or not ready or not state.steal_due:
            return []
        if state.queue.count and any(state.queue.first_for(workers[worker_id]) is not None
                                     for worker_id in ready):
            return []  # the queue has work for them: assign() gives it
        state.steal_due = False
        free = 0
        for worker_id in ready:
            worker = workers[worker_id]
            if not worker.isolating:
                free += max(0, worker.threads - worker.occupied)
        found = []
        while free > 0 and holders:
            worker_id = next(iter(holders))
            del holders[worker_id]
            worker = workers[worker_id]
            waiting = worker.occupied - worker.threads
            if waiting <= 0 or worker.draining:
                continue  # its tasks run now; a draining worker gives them back itself
            # Not those that need resources: the idle worker may lack them, and
            # they would only go out again to where they were.
            keys = [key for key, task in worker.in_flight.items()
                    if not task.started and not task.options.resources]
            if keys:
                found.append((worker_id, keys))
                free -= waiting
        return found

    def to_preempt(self) -> list[tuple[bytes, list]]:
        """Tasks waiting on workers (not started) that a queued task outranks:
        (worker id, keys) to ask back, so that the higher one runs first there.

        Costs nothing per task: it looks only after a task was queued above
        the lowest priority on workers. Each worker is compared with the
        first level it can run now.
        """
        state = self.state
        if not state.preempt_due:
            return []
        state.preempt_due = False
        found = []
        for worker_id, worker in state.workers.items():
            if worker.draining or not worker.in_flight:
                continue
            top = state.queue.first_for(worker)  # what it would run next
            if top is None:
                continue
            keys = [key for key, task in worker.in_flight.items()
                    if not task.started and task.options.priority < top.priority]
            if keys:
                found.append((worker_id, keys))
        return found

    def note_outranking(self, priority: int) -> None:
        """A task of ``priority`` is queued: ask back lower ones waiting on workers."""
        lowest = self._lowest_held()
        if lowest is not None and priority > lowest:
            self.state.preempt_due = True

    def unstarted(self, client_id: bytes, task_ids: list,
                  since: float | None = None) -> dict[bytes, list]:
        """Of these tasks, those on workers not known to have started them,
        by worker: a worker may hold tasks it has not started (prefetched).
        With ``since``, only those sent to their worker at or after it."""
        in_flight, workers = self.state.in_flight, self.state.workers
        found: dict[bytes, list] = {}
        for task_id in task_ids:
            key = (client_id, task_id)
            worker_id = in_flight.get(key)
            if worker_id is None:
                continue
            task = workers[worker_id].in_flight[key]
            if not task.started and (since is None or task.time >= since):
                found.setdefault(worker_id, []).append(task_id)
        return found

    def withdraw(self, worker_id: bytes, keys: list, requeue: bool) -> list[TaskKey]:
        """A worker gave back tasks it had not started: requeue them at the front
        (in their order) or, for a cancel, drop them. Returns the keys taken."""
        state = self.state
        worker = state.workers[worker_id]
        taken = []
        for key in keys:
            key = tuple(key)
            if state.in_flight.get(key) != worker_id:
                if key in worker.orphans:  # it will not run it now
                    worker.give(worker.orphans.pop(key))
                continue
            del state.in_flight[key]
            task = worker.in_flight.pop(key)
            release(task, state.held_priorities, worker)
            worker.isolating = False
            state.steal_due = state.dispatch_due = True
            client = state.clients.get(task.client_id)
            if client is None:
                continue
            client.in_flight -= 1
            taken.append(task)
        if requeue:
            for task in reversed(taken):
                state.requeue(task, front=True)
        return [task.key for task in taken]

    def given_back(self, worker_id: bytes, keys: list) -> list[TaskKey]:
        """A worker busy with long tasks takes back the credit it offered (and
        the broker has not used) and gives back tasks waiting behind them,
        unasked: they are requeued."""
        state = self.state
        state.workers[worker_id].credit = 0
        state.ready.pop(worker_id, None)
        return self.withdraw(worker_id, keys, requeue=True)

    def _lowest_held(self) -> int | None:
        """The lowest priority of the tasks on workers (None: there are none)."""
        held = self.state.held_priorities
        if not held:
            return 0 if self.state.in_flight else None
        lowest = min(held)
        if lowest > 0 and len(self.state.in_flight) > sum(held.values()):
            return 0  # default tasks are on workers too
        return lowest


def release(task: Task, held_priorities: Counter, worker: Worker | None = None) -> None:
    """A task is no longer on a worker (``worker``: whose resources it frees)."""
    options = task.options
    if options is DEFAULT_OPTIONS:
        return
    if worker is not None:
        worker.give(options.resources)
    if options.priority:
        held_priorities[options.priority] -= 1
        if not held_priorities[options.priority]:
            del held_priorities[options.priority]
