"""The broker's bookkeeping: queue, in-flight tables, credit and liveness.

Plain objects with no sockets; every method that depends on time takes
``now`` (a ``time.monotonic()`` value), so this module is tested directly.

The queue (levels of priority and resource needs, clients taking turns) is
broker.queue's; here each client's queued tasks are indexed by id beside it,
for cancellation and replays, and in-flight tasks by key, globally and per
worker. Per-task work is O(1).

BrokerState owns the tables and a task's way from SUBMIT to its result.
Three parts work over the same tables, each in its own module:

    state.roster    who is connected, silent, and what workers can run  (roster.py)
    state.assign()  queued tasks to workers with credit: Dispatcher    (dispatch.py)
    state.ask_back  tasks asked back from workers, and taken back      (askback.py)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from zeropool.broker.askback import AskBack, release
from zeropool.broker.dispatch import Assignment, Dispatcher
from zeropool.broker.queue import DEFAULT_OPTIONS, TaskQueue
from zeropool.broker.roster import Roster
from zeropool.protocol import TaskOptions

__all__ = ["Assignment", "BrokerState", "Client", "Expired", "OptionedTask", "Task", "TaskKey",
           "Worker"]

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
    silent: bool = False  # reported silent (see Roster.silent) since it last spoke
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
    silent: bool = False  # reported silent (see Roster.silent) since it last spoke
    # Resource needs it was told no worker has, while none has (it is told once).
    warned: set = field(default_factory=set)
    versions: dict = field(default_factory=dict)  # Python, zeropool, cloudpickle (HELLO)
    python: str = ""  # its Python minor version, e.g. "3.12" ("": not said)

    @property
    def queued(self) -> int:
        return len(self.waiting)


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
    """Queue and bookkeeping for one broker: the tables, and what happens to
    a task from SUBMIT to its result. Its parts work over the same tables:
    ``roster`` (liveness, resources), ``ask_back`` (tasks asked back from
    workers) and the dispatcher behind ``assign()``."""

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
        self.steal_due = False
        # Whether anything that could let a queued task go out changed since
        # assign() last found nothing to give: tasks waiting for resources or
        # a free worker would make every pass walk every ready worker.
        self.dispatch_due = True
        # Priorities of the tasks on workers, but 0, by how many: whether a task
        # just queued outranks one waiting on a worker (see AskBack.to_preempt).
        self.held_priorities: Counter = Counter()
        self.preempt_due = False
        self.roster = Roster(self.workers, self.clients, self.queue, peer_timeout)
        self.ask_back = AskBack(self)
        self._dispatcher = Dispatcher(self)

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
        """Register a worker; a worker id seen again replaces the old one (as
        one that died)."""
        resources = resources or {}
        if worker_id in self.workers:
            expired = self.remove_worker(worker_id, lost=True)
        else:
            expired = Expired()
        worker = self.workers[worker_id] = Worker(worker_id, credit, now, pid, host,
                                                  threads or credit)
        worker.resources, worker.free = dict(resources), dict(resources)
        self.roster.workers_changed()
        if credit:
            self.ready[worker_id] = None
            self.steal_due = self.dispatch_due = True
        return worker, expired

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
        worker = self.workers.pop(worker_id)
        self.ready.pop(worker_id, None)
        self.holders.pop(worker_id, None)
        self.roster.workers_changed()
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
            release(task, self.held_priorities)
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
            self.requeue(task, front=True)
            expired.requeued += 1
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
            release(task, self.held_priorities)
            worker.orphans[key] = task.options.resources
            # A suspect waits for a worker with nothing in flight: this one may be.
            self.dispatch_due = True
        for worker in self.workers.values():
            worker.pythons_sent.discard(client_id)  # a client back under this id says it again
            if client_id in worker.inits_sent:
                worker.inits_sent.discard(client_id)
                worker.forget.append(client_id)
        return client.queued

    # -- credit ------------------------------------------------------------

    def add_credit(self, worker_id: bytes, credit: int) -> None:
        worker = self.workers[worker_id]
        if worker.draining:
            return
        worker.credit += credit
        if worker.credit > 0:
            self.ready[worker_id] = None
            self.steal_due = self.dispatch_due = True

    def drain(self, worker_id: bytes) -> None:
        """Send this worker nothing more; it finishes what it holds, then leaves."""
        worker = self.workers[worker_id]
        worker.draining = True
        worker.credit = 0
        self.ready.pop(worker_id, None)
        self.roster.workers_changed()

    def assign(self) -> list[Assignment]:
        """Hand queued tasks to workers with credit (see Dispatcher.assign)."""
        return self._dispatcher.assign()

    # -- tasks -------------------------------------------------------------

    def submit(self, client_id: bytes, task_id: int, frames: list, now: float = 0.0,
               options: TaskOptions = DEFAULT_OPTIONS) -> bool:
        """Queue a task; False if the id is already known (a replay), which is dropped."""
        client = self.clients[client_id]
        if task_id in client.waiting or (client_id, task_id) in self.in_flight:
            return False
        if options is DEFAULT_OPTIONS:
            task = Task(client_id, task_id, frames, time=now)
            if self.held_priorities:  # tasks of other priorities are on workers
                self.ask_back.note_outranking(0)
            self.queue.push_default(task)
            client.waiting[task_id] = task
            self.dispatch_due = True
            return True
        task = OptionedTask(client_id, task_id, frames, time=now, options=options)
        self.requeue(task)
        return True

    def submit_lone(self, client_id: bytes, task_id: int, frames: bytes,
                    now: float) -> Assignment | None:
        """``submit()`` and ``assign()`` at once, for a default task that comes
        when nothing is queued, with nothing read after it: it goes to the
        worker assign() would give it, never queued. None, with nothing done,
        if it is a replay or no worker takes it now: ``submit()`` then does
        what is due."""
        queue, client = self.queue, self.clients[client_id]
        if queue.count or not self.ready or len(queue.order) != 1:
            return None
        if task_id in client.waiting or (client_id, task_id) in self.in_flight:
            return None
        if self.held_priorities:  # as submit() does, before the task is on a worker
            self.ask_back.note_outranking(0)
        return self._dispatcher.assign_lone(Task(client_id, task_id, frames, time=now))

    def requeue(self, task: Task, front: bool = False) -> None:
        """Queue a task with options, or one given back (or whose worker is gone)."""
        self.dispatch_due = True
        if task.options is not DEFAULT_OPTIONS or self.held_priorities:
            self.ask_back.note_outranking(task.options.priority)
        self.queue.push(task, front)
        self.clients[task.client_id].waiting[task.task_id] = task

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

    def started(self, worker_id: bytes, key: TaskKey) -> bool:
        """Note that a worker started a task; False if it does not hold it (the
        news is then dropped)."""
        if self.in_flight.get(key) != worker_id or key[0] not in self.clients:
            return False
        self.workers[worker_id].in_flight[key].started = True
        return True

    def finish(self, worker_id: bytes, key: TaskKey) -> Task | None:
        """Take a finished task off its worker; None if that worker never held it."""
        if self.in_flight.get(key) != worker_id:
            return None
        del self.in_flight[key]
        worker = self.workers[worker_id]
        task = worker.in_flight.pop(key)
        if task.options is not DEFAULT_OPTIONS:
            release(task, self.held_priorities, worker)
        worker.isolating = False
        worker.done += 1
        self.steal_due = self.dispatch_due = True  # a thread of its may be free now
        client = self.clients.get(task.client_id)
        if client is None:
            return None
        client.in_flight -= 1
        client.done += 1
        return task

    def finish_orphan(self, worker_id: bytes, key: TaskKey) -> bool:
        """A result for a task of a gone client: True if this worker ran one
        (its thread is free now; the result goes nowhere)."""
        worker = self.workers[worker_id]
        if key not in worker.orphans:
            return False
        worker.give(worker.orphans.pop(key))
        self.steal_due = self.dispatch_due = True
        return True
