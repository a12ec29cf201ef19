"""The broker's bookkeeping: queue, in-flight tables, credit and liveness.

Plain objects with no sockets; every method that depends on time takes
``now`` (a ``time.monotonic()`` value), so this module is tested directly.

The queue (levels of priority and resource needs, clients taking turns) is
broker.queue's; here each client's queued tasks are indexed by id beside it,
for cancellation and replays, and in-flight tasks by key, globally and per
worker. Per-task work is O(1).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from zeropool.broker.queue import DEFAULT_OPTIONS, TaskQueue
from zeropool.protocol import TaskOptions

TaskKey = tuple  # (client_id: bytes, task_id: int)


_STARTED, _SUSPECT, _DISPATCHED = 1, 2, 4  # Task.flags
# Relative error allowed when free amounts (float sums) are compared with needs:
# 0.1 + 0.2 taken and given back must leave room for 0.3 again.
_ROUNDING = 1e-9


@dataclass(slots=True, eq=False)
class Task:
    """A task in the broker. Six slots, not eight: a million of them are
    queued at once in the benchmark, and each slot costs 8 MB there (two,
    16 MB, once the allocator rounds the object up to 16 bytes)."""

    client_id: bytes
    task_id: int
    # Its payload: one bytes object (small, inline on the wire) or a list of frames.
    frames: bytes | list
    # Workers this task was in flight on when they died (for the poison rule);
    # a tuple, so that the million tasks that never lose one share the empty one.
    lost_on: tuple = ()
    # For the metrics, a monotonic time: when it was submitted until a worker
    # first gets it, then when it was last dispatched. One float object is
    # shared by a whole batch.
    time: float = 0.0
    flags: int = 0
    # Not a slot: tasks with options other than the default are OptionedTasks.
    options = DEFAULT_OPTIONS

    @property
    def key(self) -> TaskKey:
        return (self.client_id, self.task_id)

    @property
    def started(self) -> bool:
        """Its worker said so (tasks may wait on a worker, prefetched)."""
        return bool(self.flags & _STARTED)

    @started.setter
    def started(self, value: bool) -> None:
        self.flags = self.flags | _STARTED if value else self.flags & ~_STARTED

    @property
    def suspect(self) -> bool:
        """It was on a worker that died: it runs alone on a worker until it
        finishes, so that a task that kills its workers is told apart from its
        neighbours."""
        return bool(self.flags & _SUSPECT)

    @suspect.setter
    def suspect(self, value: bool) -> None:
        self.flags = self.flags | _SUSPECT if value else self.flags & ~_SUSPECT

    def dispatch(self, now: float) -> float | None:
        """Note that it goes to a worker now; the time it was queued if this
        is the first time (it may go out again, asked back or requeued)."""
        queued = None if self.flags & _DISPATCHED else now - self.time
        self.flags |= _DISPATCHED
        self.time = now
        return queued


@dataclass(slots=True, eq=False)
class OptionedTask(Task):
    """A task with a priority or resource needs: one slot more than the
    million default tasks of a big queue pay for."""

    options: TaskOptions = DEFAULT_OPTIONS


@dataclass(slots=True, eq=False)
class Worker:
    worker_id: bytes
    credit: int
    last_seen: float
    pid: int = 0
    host: str = ""
    threads: int = 0
    in_flight: dict = field(default_factory=dict)  # TaskKey -> Task
    inits_sent: set = field(default_factory=set)  # client ids whose initializer it has
    # Client ids of another Python minor version that it has been told of.
    pythons_sent: set = field(default_factory=set)
    forget: list = field(default_factory=list)  # of those, clients gone: to tell it
    done: int = 0
    failed: int = 0  # of those done, how many raised
    draining: bool = False
    silent: bool = False  # reported silent (see BrokerState.silent) since it last spoke
    isolating: bool = False  # it holds a suspect task, and nothing else
    # Tasks of clients that have gone, which it still runs (or holds) until
    # their results come: they take its threads (and resources) as much as
    # its own tasks do. TaskKey -> the resources it takes.
    orphans: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)  # what each of its processes has
    free: dict = field(default_factory=dict)  # of that, what its tasks leave free
    holding: int = 0  # its tasks (and orphans) that take resources
    versions: dict = field(default_factory=dict)  # Python, zeropool, cloudpickle (HELLO)
    python: str = ""  # its Python minor version, e.g. "3.12" ("": not said)

    @property
    def occupied(self) -> int:
        return len(self.in_flight) + len(self.orphans)

    def fits(self, needs: tuple) -> bool:
        """Whether it has ``needs`` free now (to a rounding error of the sums)."""
        free = self.free
        for name, amount in needs:
            if free.get(name, 0) < amount * (1 - _ROUNDING):
                return False
        return True

    def could_fit(self, needs: tuple) -> bool:
        """Whether it has ``needs`` at all, once its tasks are done."""
        resources = self.resources
        for name, amount in needs:
            if resources.get(name, 0) < amount:
                return False
        return True

    def take(self, needs: tuple) -> None:
        if needs:
            self.holding += 1
        for name, amount in needs:
            self.free[name] -= amount

    def give(self, needs: tuple) -> None:
        if not needs:
            return
        self.holding -= 1
        if not self.holding:  # exact again: float sums need not come back to it
            self.free = dict(self.resources)
            return
        free, resources = self.free, self.resources
        for name, amount in needs:
            free[name] = min(free[name] + amount, resources[name])


@dataclass(slots=True, eq=False)
class Client:
    client_id: bytes
    last_seen: float
    init_frames: list = field(default_factory=list)
    # Its tasks in the broker's queue, by task id (the queue itself is shared):
    # keyed per client, so that a million queued tasks need no key tuples.
    waiting: dict = field(default_factory=dict)
    in_flight: int = 0
    done: int = 0
    pid: int = 0
    host: str = ""
    silent: bool = False  # reported silent (see BrokerState.silent) since it last spoke
    # Resource needs it was told no worker has, while none has (it is told once).
    warned: set = field(default_factory=set)
    versions: dict = field(default_factory=dict)  # Python, zeropool, cloudpickle (HELLO)
    python: str = ""  # its Python minor version, e.g. "3.12" ("": not said)

    @property
    def queued(self) -> int:
        return len(self.waiting)


@dataclass(slots=True)
class Assignment:
    """Tasks to send to one worker, with the initializers it still needs."""

    worker_id: bytes
    tasks: list
    inits: list  # [(client_id, frames)]
    # [[client_id, Python version]] of clients whose Python differs from the worker's
    pythons: list = field(default_factory=list)


@dataclass(slots=True)
class Expired:
    """What removing workers found: the workers, and tasks that must fail."""

    workers: list = field(default_factory=list)
    requeued: int = 0
    poisoned: list = field(default_factory=list)  # [Task] that took down too many workers
    # [Task] that ran past their timeouts on a worker that died meanwhile (one
    # whose task held the GIL is killed by its own watchdog).
    timed_out: list = field(default_factory=list)
    # [Task] with retries=0 that may have started on a worker that left or was
    # replaced while they ran: they must not run again.
    stopped: list = field(default_factory=list)


class BrokerState:
    """Queue and bookkeeping for one broker."""

    def __init__(self, peer_timeout: float, max_retries: int) -> None:
        self.peer_timeout = peer_timeout
        self.max_retries = max_retries
        self.in_flight: dict[TaskKey, bytes] = {}  # TaskKey -> worker id
        self.workers: dict[bytes, Worker] = {}
        self.clients: dict[bytes, Client] = {}
        self.queue = TaskQueue(self.clients)
        # Workers with credit, oldest first; a dict is an ordered set.
        self.ready: dict[bytes, None] = {}
        # Workers given more tasks than they have threads, so some may wait
        # there (prefetched), oldest first; checked when others run dry.
        self.holders: dict[bytes, None] = {}
        # Whether credit, holders or tasks on workers changed since to_steal
        # last looked: it scans the ready workers, so it looks again only then.
        self._steal_due = False
        # Whether anything that could let a queued task go out changed since
        # assign() last found nothing to give: tasks waiting for resources or
        # a free worker would make every pass walk every ready worker.
        self.dispatch_due = True
        # Priorities of the tasks on workers, but 0, by how many: whether a task
        # just queued outranks one waiting on a worker (see to_preempt).
        self._held_priorities: Counter = Counter()
        self._preempt_due = False
        # Resource needs -> whether some connected worker has them (until workers change).
        self._satisfiable: dict[tuple, bool] = {}

    @property
    def queued_count(self) -> int:
        return self.queue.count

    @property
    def queued(self) -> dict[TaskKey, Task]:
        """Every queued task by key (built on demand: for tests and tools)."""
        return {(client.client_id, task_id): task for client in self.clients.values()
                for task_id, task in client.waiting.items()}

    def queued_in_order(self) -> list[Task]:
        """The queued tasks in the order they would go out to one worker that
        can run them all (built on demand: for tests and tools)."""
        return self.queue.in_order()

    def queued_by_priority(self) -> dict[int, int]:
        return self.queue.by_priority()

    def unsatisfiable(self) -> list[tuple[tuple, int]]:
        """Resource needs of queued tasks that no connected worker has, with
        how many such tasks are queued."""
        return [(needs, count) for needs, count in self.queue.by_needs()
                if not self.satisfiable(needs)]

    def satisfiable(self, needs: tuple) -> bool:
        """Whether some connected worker (not draining) has ``needs`` at all."""
        known = self._satisfiable.get(needs)
        if known is None:
            known = self._satisfiable[needs] = any(
                worker.could_fit(needs) for worker in self.workers.values()
                if not worker.draining)
        return known

    # -- peers -------------------------------------------------------------

    def add_client(self, client_id: bytes, init_frames: list, now: float) -> Client:
        client = self.clients.get(client_id)
        if client is None:
            client = self.clients[client_id] = Client(client_id, now)
        client.init_frames = init_frames
        client.last_seen = now
        return client

    def add_worker(self, worker_id: bytes, credit: int, now: float, *, pid: int = 0,
                   host: str = "", threads: int = 0,
                   resources: dict | None = None) -> tuple[Worker, Expired]:
        """Register a worker; a worker id seen again replaces the old one."""
        expired = Expired()
        resources = resources or {}
        if worker_id in self.workers:
            self._remove_worker(worker_id, expired)
        worker = self.workers[worker_id] = Worker(worker_id, credit, now, pid, host,
                                                  threads or credit)
        worker.resources, worker.free = dict(resources), dict(resources)
        self._satisfiable.clear()
        if credit:
            self.ready[worker_id] = None
            self._steal_due = self.dispatch_due = True
        return worker, expired

    def seen(self, peer_id: bytes, now: float) -> None:
        peer = self.workers.get(peer_id) or self.clients.get(peer_id)
        if peer is not None:
            peer.last_seen = now
            peer.silent = False

    def role_of(self, peer_id: bytes) -> str | None:
        if peer_id in self.workers:
            return "worker"
        if peer_id in self.clients:
            return "client"
        return None

    def remove_worker(self, worker_id: bytes, *, lost: bool, now: float | None = None) -> Expired:
        """A worker left (``lost=False``: its in-flight tasks are requeued without
        counting against them) or died (``lost=True``: they count a try; with
        ``now``, those past their timeouts fail as timed out)."""
        expired = Expired()
        self._remove_worker(worker_id, expired, lost=lost, now=now)
        return expired

    def remove_client(self, client_id: bytes) -> int:
        """Forget a client: drop its queued tasks (returns how many); its late
        results will be discarded."""
        client = self.clients.pop(client_id, None)
        if client is None:
            return 0
        if client.waiting:
            self.queue.drop_client(client_id, client.waiting.values())
            self.dispatch_due = True
        # Its running tasks are forgotten too: their results are dropped, and a
        # client that comes back under the same id starts afresh.
        for key in [k for k in self.in_flight if k[0] == client_id]:
            worker = self.workers[self.in_flight.pop(key)]
            task = worker.in_flight.pop(key)
            self._unheld(task)
            worker.orphans[key] = task.options.resources
        for worker in self.workers.values():
            worker.pythons_sent.discard(client_id)  # a client back under this id says it again
            if client_id in worker.inits_sent:
                worker.inits_sent.discard(client_id)
                worker.forget.append(client_id)
        return client.queued

    def silent(self, now: float) -> list[bytes]:
        """Peers that have said nothing for longer than ``peer_timeout``, each
        once until it speaks again. Silence alone does not remove a peer: its
        Python threads may be held up by a call that keeps the GIL. A peer is
        gone when its connection is, which the broker learns by sending."""
        deadline = now - self.peer_timeout
        found = []
        for peers in (self.workers, self.clients):
            for peer_id, peer in peers.items():
                if peer.last_seen < deadline and not peer.silent:
                    peer.silent = True
                    found.append(peer_id)
        return found

    def _remove_worker(self, worker_id: bytes, expired: Expired, lost: bool = True,
                       now: float | None = None) -> None:
        worker = self.workers.pop(worker_id)
        self.ready.pop(worker_id, None)
        self.holders.pop(worker_id, None)
        self._satisfiable.clear()
        expired.workers.append(worker_id)
        # Requeue at the front, keeping their original order. A worker runs its
        # tasks in the order given, so only those it said it started, and the
        # first ``threads`` (it may have started them without saying so yet),
        # can have killed it; tasks that waited behind them cost no try. That
        # guess can miss (a finished task whose result was still on its way
        # counts among the first), so every task of a dead worker becomes a
        # suspect and runs alone next time, where a death is its own.
        tasks = list(worker.in_flight.values())
        for index in range(len(tasks) - 1, -1, -1):
            task = tasks[index]
            del self.in_flight[task.key]
            self._unheld(task)
            may_have_run = worker.isolating or index < worker.threads or task.started
            started, task.started = task.started, False
            client = self.clients.get(task.client_id)
            if client is None:
                continue
            client.in_flight -= 1
            options = task.options
            if (lost and started and options.timeout is not None and now is not None
                    and now - task.time >= options.timeout):  # dispatched then, started later
                expired.timed_out.append(task)
                continue
            if not lost and may_have_run and options.retries == 0:
                expired.stopped.append(task)
                continue
            if lost:
                task.suspect = True
            if lost and may_have_run:
                task.lost_on += (worker_id,)
                retries = task.options.retries
                if len(task.lost_on) > (self.max_retries - 1 if retries is None else retries):
                    expired.poisoned.append(task)
                    continue
            self._queue(task, front=True)
            expired.requeued += 1

    # -- tasks -------------------------------------------------------------

    def submit(self, client_id: bytes, task_id: int, frames: list, now: float = 0.0,
               options: TaskOptions = DEFAULT_OPTIONS) -> bool:
        """Queue a task; False if the id is already known (a replay), which is dropped."""
        client = self.clients[client_id]
        if task_id in client.waiting or (client_id, task_id) in self.in_flight:
            return False
        if options is DEFAULT_OPTIONS:
            task = Task(client_id, task_id, frames, time=now)
            if self._held_priorities:  # tasks of other priorities are on workers
                self._note_outranking(0)
            self.queue.push_default(task)
            client.waiting[task_id] = task
            self.dispatch_due = True
            return True
        task = OptionedTask(client_id, task_id, frames, time=now, options=options)
        self._queue(task)
        return True

    def _note_outranking(self, priority: int) -> None:
        """A task of ``priority`` is queued: ask back lower ones waiting on workers."""
        lowest = self._lowest_held()
        if lowest is not None and priority > lowest:
            self._preempt_due = True

    def _lowest_held(self) -> int | None:
        """The lowest priority of the tasks on workers (None: there are none)."""
        held = self._held_priorities
        if not held:
            return 0 if self.in_flight else None
        lowest = min(held)
        if lowest > 0 and len(self.in_flight) > sum(held.values()):
            return 0  # default tasks are on workers too
        return lowest

    def cancel(self, client_id: bytes, task_ids: list) -> list:
        """Drop those tasks that no worker has been given; returns their ids."""
        cancelled = []
        client = self.clients[client_id]
        for task_id in task_ids:
            task = client.waiting.pop(task_id, None)
            if task is not None:
                task.frames = []  # it stays in the deque until popped; its payload need not
                cancelled.append(task_id)
                self.queue.remove(task)
        self.dispatch_due = True  # a task some worker waited for (a suspect) may be gone
        return cancelled

    def add_credit(self, worker_id: bytes, credit: int) -> None:
        worker = self.workers[worker_id]
        if worker.draining:
            return
        worker.credit += credit
        if worker.credit > 0:
            self.ready[worker_id] = None
            self._steal_due = self.dispatch_due = True

    def drop_credit(self, worker_id: bytes) -> None:
        """The worker takes back the credit it offered and the broker has not used."""
        worker = self.workers[worker_id]
        worker.credit = 0
        self.ready.pop(worker_id, None)

    def drain(self, worker_id: bytes) -> None:
        """Send this worker nothing more; it finishes what it holds, then leaves."""
        worker = self.workers[worker_id]
        worker.draining = True
        worker.credit = 0
        self.ready.pop(worker_id, None)
        self._satisfiable.clear()

    def assign(self) -> list[Assignment]:
        """Hand queued tasks to workers with credit, spreading them evenly.

        Each round gives every ready worker an equal share of the queue (up to
        its credit), so one worker does not take a small queue whole while
        another idles; rounds repeat while tasks and credit remain.
        """
        if not self.dispatch_due:
            return []
        self.dispatch_due = False
        assignments: dict[bytes, Assignment] = {}
        while self.queued_count and self.ready:
            before = self.queued_count
            # Workers with a free thread first: a task given to a busy one
            # would wait there (and be asked back for the idle one).
            free, busy = [], []
            for worker_id in self.ready:
                worker = self.workers[worker_id]
                (free if worker.occupied < worker.threads else busy).append(worker_id)
            workers = free + busy
            self.ready.clear()
            share = math.ceil(self.queued_count / len(workers))
            for worker_id in workers:
                worker = self.workers[worker_id]
                assignment = assignments.get(worker_id)
                if assignment is None:
                    assignment = assignments[worker_id] = Assignment(worker_id, [], [])
                self._fill(worker, assignment, min(worker.credit, share))
            for worker_id in workers:
                if self.workers[worker_id].credit > 0:
                    self.ready[worker_id] = None
            if self.queued_count == before:
                break  # a suspect at the front waits for a worker with nothing to do
        return [a for a in assignments.values() if a.tasks]

    def _fill(self, worker: Worker, assignment: Assignment, count: int) -> None:
        if len(self.queue.order) == 1 and not worker.isolating:
            taken = self._fill_plain(worker, assignment, count)
        else:
            taken = self._fill_levels(worker, assignment, count)
        worker.credit -= taken
        if worker.occupied > worker.threads:
            self.holders[worker.worker_id] = None
            self._steal_due = True

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
                self._held_priorities[options.priority] += 1
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
                assignment.pythons.append([task.client_id, client.versions["python"]])
        assignment.tasks.append(task)

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
        if not self.holders or not self.ready or not self._steal_due:
            return []
        workers = self.workers
        if self.queued_count and any(self.queue.first_for(workers[worker_id]) is not None
                                     for worker_id in self.ready):
            return []  # the queue has work for them: assign() gives it
        self._steal_due = False
        free = 0
        for worker_id in self.ready:
            worker = workers[worker_id]
            if not worker.isolating:
                free += max(0, worker.threads - worker.occupied)
        found = []
        while free > 0 and self.holders:
            worker_id = next(iter(self.holders))
            del self.holders[worker_id]
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

    def started(self, worker_id: bytes, key: TaskKey) -> bool:
        """Note that a worker started a task; False if it does not hold it (the
        news is then dropped)."""
        if self.in_flight.get(key) != worker_id or key[0] not in self.clients:
            return False
        self.workers[worker_id].in_flight[key].started = True
        return True

    def unstarted(self, client_id: bytes, task_ids: list,
                  since: float | None = None) -> dict[bytes, list]:
        """Of these tasks, those on workers not known to have started them,
        by worker: a worker may hold tasks it has not started (prefetched).
        With ``since``, only those sent to their worker at or after it."""
        found: dict[bytes, list] = {}
        for task_id in task_ids:
            key = (client_id, task_id)
            worker_id = self.in_flight.get(key)
            if worker_id is None:
                continue
            task = self.workers[worker_id].in_flight[key]
            if not task.started and (since is None or task.time >= since):
                found.setdefault(worker_id, []).append(task_id)
        return found

    def withdraw(self, worker_id: bytes, keys: list, requeue: bool) -> list:
        """A worker gave back tasks it had not started: requeue them at the front
        (in their order) or, for a cancel, drop them. Returns the keys taken."""
        worker = self.workers[worker_id]
        taken = []
        for key in keys:
            key = tuple(key)
            if self.in_flight.get(key) != worker_id:
                if key in worker.orphans:  # it will not run it now
                    worker.give(worker.orphans.pop(key))
                continue
            del self.in_flight[key]
            task = worker.in_flight.pop(key)
            self._unheld(task, worker)
            worker.isolating = False
            self._steal_due = self.dispatch_due = True
            client = self.clients.get(task.client_id)
            if client is None:
                continue
            client.in_flight -= 1
            taken.append(task)
        if requeue:
            for task in reversed(taken):
                self._queue(task, front=True)
        return [task.key for task in taken]

    def finish_orphan(self, worker_id: bytes, key: TaskKey) -> bool:
        """A result for a task of a gone client: True if this worker ran one
        (its thread is free now; the result goes nowhere)."""
        worker = self.workers[worker_id]
        if key not in worker.orphans:
            return False
        worker.give(worker.orphans.pop(key))
        self._steal_due = self.dispatch_due = True
        return True

    def finish(self, worker_id: bytes, key: TaskKey) -> Task | None:
        """Take a finished task off its worker; None if that worker never held it."""
        if self.in_flight.get(key) != worker_id:
            return None
        del self.in_flight[key]
        worker = self.workers[worker_id]
        task = worker.in_flight.pop(key)
        if task.options is not DEFAULT_OPTIONS:
            self._unheld(task, worker)
        worker.isolating = False
        worker.done += 1
        self._steal_due = self.dispatch_due = True  # a thread of its may be free now
        client = self.clients.get(task.client_id)
        if client is None:
            return None
        client.in_flight -= 1
        client.done += 1
        return task

    def _queue(self, task: Task, front: bool = False) -> None:
        """Queue a task with options, or one given back (or whose worker is gone)."""
        self.dispatch_due = True
        if task.options is not DEFAULT_OPTIONS or self._held_priorities:
            self._note_outranking(task.options.priority)
        self.queue.push(task, front)
        self.clients[task.client_id].waiting[task.task_id] = task

    def _unheld(self, task: Task, worker: Worker | None = None) -> None:
        """A task is no longer on a worker (``worker``: whose resources it frees)."""
        options = task.options
        if options is DEFAULT_OPTIONS:
            return
        if worker is not None:
            worker.give(options.resources)
        if options.priority:
            held = self._held_priorities
            held[options.priority] -= 1
            if not held[options.priority]:
                del held[options.priority]

    def to_preempt(self) -> list[tuple[bytes, list]]:
        """Tasks waiting on workers (not started) that a queued task outranks:
        (worker id, keys) to ask back, so that the higher one runs first there.

        Costs nothing per task: it looks only after a task was queued above
        the lowest priority on workers. Each worker is compared with the
        first level it can run now.
        """
        if not self._preempt_due:
            return []
        self._preempt_due = False
        found = []
        for worker_id, worker in self.workers.items():
            if worker.draining or not worker.in_flight:
                continue
            top = self.queue.first_for(worker)  # what it would run next
            if top is None:
                continue
            keys = [key for key, task in worker.in_flight.items()
                    if not task.started and task.options.priority < top.priority]
            if keys:
                found.append((worker_id, keys))
        return found

