"""The broker's queue: levels of priority and resource needs, clients taking turns.

    submit ──> level (priority 5, gpu=1)  [client A: t1 t4] [client B: t2]  ─┐
           ──> level (priority 5)          [client A: t3]                   ├─> the first level
           ──> level (priority 0)          [client C: t5 t6 ...]            ─┘   a worker can run

One level per (priority, resource needs) in use, highest priority first. A
worker takes from the first level it can run (strict priority); levels of
one priority take turns, and within a level clients take turns, one task
each (fair share), each client's tasks keeping their order. A level that a
worker could run but for resources that are busy there keeps lower levels
that need the same resources off that worker, so that a task needing a whole
GPU is not starved by a stream of tasks needing half of it.

Per task the work is O(1): a level holds a deque per client and a rotation
of clients. A task is live while its client's ``waiting`` dict (the broker's
index for cancellation, kept by BrokerState) holds it; a cancelled task
stays in its deque and is skipped when it reaches the front. Per dispatch the
levels are walked, and there are only as many as distinct options in use.
Plain objects, no sockets, no clock.
"""
from __future__ import annotations

from collections import Counter, deque
from typing import TYPE_CHECKING

from zeropool.protocol import TaskOptions

if TYPE_CHECKING:
    from zeropool.broker.state import Task, Worker

DEFAULT_OPTIONS = TaskOptions.make()


class Level:
    """Queued tasks of one priority and one set of resource needs; clients
    take turns, one task each."""

    __slots__ = ("priority", "needs", "order", "queues", "rotation", "count")

    def __init__(self, priority: int, needs: tuple, order: int) -> None:
        self.priority = priority
        self.needs = needs
        # Where it goes in the queue's list of levels (see the module docstring).
        self.order = (-priority, order)
        self.queues: dict[bytes, deque] = {}
        self.rotation: deque[bytes] = deque()  # clients with tasks here, next first
        self.count = 0  # live tasks; cancelled ones wait in the deques to be skipped

    def push(self, task: Task, front: bool = False) -> None:
        queue = self.queues.get(task.client_id)
        if queue is None:
            queue = self.queues[task.client_id] = deque()
            if front:
                self.rotation.appendleft(task.client_id)
            else:
                self.rotation.append(task.client_id)
        if front:
            queue.appendleft(task)
        else:
            queue.append(task)
        self.count += 1

    def head(self, clients: dict) -> Task | None:
        """The next task to go, dropping cancelled ones (and those of gone
        clients) from the front."""
        rotation, queues = self.rotation, self.queues
        while rotation:
            client_id = rotation[0]
            queue = queues[client_id]
            client = clients.get(client_id)
            while queue:
                task = queue[0]
                if client is not None and client.waiting.get(task.task_id) is task:
                    return task
                queue.popleft()
            del queues[client_id]
            rotation.popleft()
        return None

    def pop(self) -> None:
        """Take the task ``head`` returned; the next client's turn comes."""
        client_id = self.rotation[0]
        queue = self.queues[client_id]
        queue.popleft()
        self.count -= 1
        if not queue:
            del self.queues[client_id]
            self.rotation.popleft()
        elif len(self.rotation) > 1:
            self.rotation.rotate(-1)

    def drop_client(self, client_id: bytes) -> None:
        if self.queues.pop(client_id, None) is not None:
            self.rotation.remove(client_id)


class TaskQueue:
    """The queued tasks of every client, in levels (see the module docstring).
    ``clients`` is the broker's table of clients, whose ``waiting`` dicts say
    which tasks are live."""

    def __init__(self, clients: dict) -> None:
        self.clients = clients
        self.levels: dict[tuple, Level] = {}  # (priority, needs) -> its level
        self.order: list[Level] = []  # the levels, the first served first
        self._made = 0
        self.count = 0  # live tasks in all
        # Always there: nearly every task goes here, and it would come back
        # with the next one each time the queue empties.
        self.default = self._add(DEFAULT_OPTIONS)

    def push(self, task: Task, front: bool = False) -> None:
        options = task.options
        level = self.levels.get((options.priority, options.resources))
        if level is None:
            level = self._add(options)
        level.push(task, front)
        self.count += 1

    def push_default(self, task: Task) -> None:
        """``push`` of a task with the default options, on the path of nearly every task."""
        level = self.default
        queue = level.queues.get(task.client_id)
        if queue is None:
            level.push(task)
        else:
            queue.append(task)
            level.count += 1
        self.count += 1

    def remove(self, task: Task) -> None:
        """A queued task was cancelled (it stays in its deque, to be skipped)."""
        options = task.options
        level = self.levels[options.priority, options.resources]
        level.count -= 1
        self.count -= 1
        if not level.count:
            self._drop(level)

    def drop_client(self, client_id: bytes, tasks) -> None:
        """A client has gone: its ``tasks`` (all it had queued) go with it."""
        for level in list(self.order):
            level.drop_client(client_id)
        for task in tasks:
            self.remove(task)

    def next_for(self, worker: Worker) -> tuple[Level, Task] | tuple[None, None]:
        """The level a worker takes its next task from, and that task."""
        level = self.first_for(worker)
        return (None, None) if level is None else (level, level.head(self.clients))

    def first_for(self, worker: Worker) -> Level | None:
        """The first level with tasks that ``worker`` can run now."""
        reserved: set | None = None  # resources a level before waits for on this worker
        for level in self.order:
            if not level.count:
                continue
            needs = level.needs
            if needs:
                if reserved and any(name in reserved for name, _ in needs):
                    continue
                if not worker.fits(needs):
                    if worker.could_fit(needs):
                        reserved = (reserved or set()) | {name for name, _ in needs}
                    continue
            return level
        return None

    def take(self, level: Level) -> bool:
        """Take the task ``next_for`` (or ``level.head``) found; whether the
        level is still the first of its priority (it has tasks left, and no
        other level of its priority has its turn now)."""
        level.pop()
        self.count -= 1
        if not level.count:
            self._drop(level)
            return False
        order = self.order
        index = order.index(level) if len(order) > 1 else 0
        last = index
        while last + 1 < len(order) and order[last + 1].priority == level.priority:
            last += 1
        if last == index:
            return True
        order.insert(last, order.pop(index))  # behind the others of its priority
        return False

    def top(self) -> Level | None:
        """The first level with tasks."""
        return next((level for level in self.order if level.count), None)

    def by_priority(self) -> dict[int, int]:
        counts: Counter = Counter()
        for level in self.order:
            if level.count:
                counts[level.priority] += level.count
        return dict(counts)

    def by_needs(self) -> list[tuple[tuple, int]]:
        """Resource needs of queued tasks, with how many tasks have them."""
        counts: Counter = Counter()
        for level in self.order:
            if level.needs and level.count:
                counts[level.needs] += level.count
        return list(counts.items())

    def in_order(self) -> list[Task]:
        """The live tasks in the order they would go out to one worker that
        can run them all (built on demand: for tests and tools)."""
        tasks = []
        for level in self.order:
            queues = {client_id: [t for t in queue
                                  if self.clients[client_id].waiting.get(t.task_id) is t]
                      for client_id, queue in level.queues.items()
                      if client_id in self.clients}
            rotation = [client_id for client_id in level.rotation if queues.get(client_id)]
            while rotation:
                client_id = rotation.pop(0)
                tasks.append(queues[client_id].pop(0))
                if queues[client_id]:
                    rotation.append(client_id)
        return tasks

    def _add(self, options: TaskOptions) -> Level:
        self._made += 1
        level = Level(options.priority, options.resources, self._made)
        self.levels[options.priority, options.resources] = level
        self.order.append(level)
        self.order.sort(key=_level_order)
        return level

    def _drop(self, level: Level) -> None:
        """An empty level goes, with the cancelled tasks still in its deques;
        the default one is only emptied."""
        if level is self.default:
            level.queues.clear()
            level.rotation.clear()
            return
        del self.levels[level.priority, level.needs]
        self.order.remove(level)


def _level_order(level: Level) -> tuple:
    return level.order
