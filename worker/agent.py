"""A worker's I/O loop, the owner of its socket.

         Connection (DEALER)     Agent (this loop)                       Runner
    broker --DISPATCH--> read() ---> on_message ----(key, frames)---->  threads run
           <--RESULTS--- send() <--- send_results <---events + waker---  the calls
                                          |          |
                                       Credit     results.take_batch
                                (how many to ask)  (one RESULTS)

    Handover: while the loop sleeps in Connection.poll, the task thread
    that has just finished may take the socket's turn, to send its own
    result, or to watch the socket and run a lone task itself.

Agent (this module): the loop. It polls the socket, the runner's waker and
a signal pipe, reads every waiting message, then sends one RESULTS with
everything the threads finished (and started) since the last pass, with
credit for the tasks it can take next, and runs its timed chores as named
steps (_chores). A task that runs for minutes never stalls it, so heartbeats
and other results keep flowing.

Connection (protocol/connection.py, shared with the client): the DEALER
socket and all that knows it: sending, heartbeat numbers, the back-off
between attempts, the handshake watch, and the sleep in poll, during which
the socket's turn is free. The agent says what a connection starts with (a
new routing id each time, a HELLO with its free slots, a DRAIN if it
drains) and when to start over, and logs why. If the broker falls silent
for ``liveness`` heartbeats the worker reconnects and offers the slots it
has free; it reads what waits first, since this loop may itself have been
held up (a task keeping the GIL) while the broker's heartbeats queued. It
also starts over when ZeroMQ has connected its socket again by itself,
since messages on the old connection may be lost; and, unlike a client,
keeps retrying after a failed handshake (keys may be fixed meanwhile).
The connection has ZMTP
heartbeats, which libzmq's I/O thread answers without the GIL
(protocol.sockets.keep_alive): a task holding the GIL does not make the
broker take this worker for dead. A worker whose parent has gone
(``watch_fds``) stops quietly, even when it hears first from the broker
that it goes away too.

Handover (worker/handover.py): the one way another thread uses the socket.
A thread that finishes a task sends its result itself while the loop
sleeps, unless short tasks are queued behind it (the loop batches their
results); with one thread and nothing else to do, it stays on as the
socket's watcher and runs a lone task it reads itself, until the loop takes
the socket back.

Credit (worker/credit.py): how many tasks to ask for. While tasks are short
the worker prefetches a couple of milliseconds of work per thread; while
they are longer it holds one task waiting, and once they are long for sure
gives back the spare credit and tasks it took on while they were short.
Tasks waiting here never hold up the pool: short ones stuck behind a long
one are given back unasked, and the broker asks for waiting tasks back
(WITHDRAW) when its queue is empty and another worker has a thread with
nothing to do; a cancel reaches them the same way. So prefetching changes
no semantics.

Results (worker/results.py): the parts of one RESULTS message, taken from
the runner's events (results, starts, printed output) up to a size, and
the answers of tasks that ran past their timeouts.

Recycling (``max_tasks``, ``max_memory``): a process that has been given
its last task (its credit never offers more than it has left to run), or
whose memory has grown past the limit after a task, drains as on SIGTERM:
it gives back what it holds unstarted, finishes what runs, says goodbye,
and exits with Exit.RECYCLE or Exit.RECYCLE_MEMORY, for its supervisor to
start a fresh one. Nothing is requeued as lost, nothing runs twice.

Timeouts (task options): the loop wakes at the earliest deadline of the
tasks running; one past it is answered with TaskTimeoutError, the broker is
told goodbye (it requeues the rest without counting a try), and the process
exits with Exit.TIMEOUT to be replaced, which stops the task's thread. A task
that keeps the GIL keeps this loop from running: the runner's faulthandler
watchdog ends the process then. Nested tasks: a task waiting on its own
futures gives its slot back (Runner), offered to the broker as credit.
"""
from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import math
import os
import select
import signal
import socket as socketlib
import threading
import time

from zeropool.protocol import (
    PROTOCOL_VERSION, Bye, Dispatch, DispatchRow, Drain, Hello, Op, ProtocolError, Role, TaskRow,
    Withdraw, Withdrawn, WorkerResults, header_budget, split_frames, unpack_payloads,
)
from zeropool.protocol import defaults
from zeropool.protocol.connection import Connection
from zeropool.protocol.security import Security
from zeropool.worker.credit import GIVE_BACK_AFTER, Credit
from zeropool.worker.deadlines import BACKSTOP_GRACE
from zeropool.worker.handover import Handover
from zeropool.worker.memory import rss
from zeropool.worker.results import take_batch, timed_out
from zeropool.worker.runner import Runner

log = logging.getLogger("zeropool.worker")

# While tasks handed to the runner have not been reported started or done, the
# loop wakes at least this often and reports the starts it finds (a quicker
# task's start goes with its result): a wake and a report per task would cost
# a message through the broker to the client, competing with the result.
START_REPORT_AFTER = 0.001
# A process leaving because a task timed out waits up to this long for its
# last messages (the TaskTimeoutError, BYE) to leave; other exits drop what
# is queued at once. Longer only delays the replacement when the broker is
# unreachable.
TIMEOUT_LINGER = 1.0


class Exit(enum.IntEnum):
    OK = 0  # drained and left, or told to stop
    REFUSED = 4  # the broker refused this worker (for example a protocol mismatch)
    PARENT_GONE = 5  # the process that started it (embedded cluster) has exited
    RECYCLE = 6  # ran its max_tasks tasks: its supervisor starts a fresh process
    RECYCLE_MEMORY = 7  # grew past max_memory: its supervisor starts a fresh process
    # A task ran past its timeout: the process is replaced (its supervisor starts
    # a fresh one; a worker without one starts itself again), which stops it.
    TIMEOUT = 8


class Agent:
    """Connects to a broker, offers ``threads`` slots and runs what it is sent."""

    def __init__(self, address: str, threads: int = 1, *,
                 heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL,
                 liveness: int = defaults.HEARTBEAT_LIVENESS,
                 max_message_size: int = defaults.MAX_MESSAGE_SIZE,
                 watch_fds: tuple[int, ...] = (),
                 security: Security | None = None,
                 max_tasks: int | None = None,
                 max_memory: int | None = None,
                 resources: dict | None = None) -> None:
        host = socketlib.gethostname()[:64]
        # What every HELLO says, but the credit (see _connect).
        self._hello = Hello(Role.WORKER, PROTOCOL_VERSION, pid=os.getpid(), host=host,
                            threads=threads, resources=dict(resources or {}),
                            versions=defaults.versions())
        # A new routing id per connection: messages still in flight on a dropped
        # one (a cut link coming back) must not pass for the new one's.
        name = f"w-{host}-{os.getpid()}-{os.urandom(3).hex()}"
        self._worker_ids = (f"{name}-{n}".encode() for n in itertools.count(1))
        # Recycling: the RSS in bytes past which it leaves after a task (None: no
        # limit); max_tasks is the credit's.
        self.max_memory = max_memory
        # Pipes whose writers (the process that started us) hold the other end:
        # readable means that process is gone, and so should we be.
        self.watch_fds = tuple(watch_fds)
        self._connection = Connection(address, log, security=security,
                                      heartbeat_interval=heartbeat_interval, liveness=liveness,
                                      max_message_size=max_message_size)
        self._handover = Handover(self, self._connection)
        self._runner = Runner(threads, self._connection.waker.wake, self._handover.task_finished,
                              address=address, security=security)
        self._credit = Credit(threads, max_tasks, self._runner.started_times,
                              self._runner.running)
        # What inline results and output may take of a RESULTS header (set
        # with the runner's max_message_size: not worked out per message).
        self._header_budget = header_budget(self._runner.max_message_size)
        self._handover.bind(self._runner, self._credit)
        self.running: set[tuple] = set()  # keys given to the runner, not yet reported done
        self._unreported: set[tuple] = set()  # of those, not yet reported started either
        # Leaving: drain() (a signal, or recycling) sets draining; the broker
        # is told (announced) and confirms; stop_now() sets stopping.
        self.draining = False
        self._drain_announced = False
        self._drain_confirmed = False
        self._recycle: Exit | None = None  # why it drains, if to be replaced
        self.stopping = False

    # -- control (signal-safe: they only set flags) -------------------------

    def drain(self) -> None:
        """Take no new tasks, finish the running ones, then leave."""
        self.draining = True

    def stop_now(self) -> None:
        self.stopping = True

    # -- the loop ----------------------------------------------------------

    def run(self) -> Exit:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.set_wakeup_fd(wake_write) if on_main else None
        try:
            with self._connection.turn:  # released only in poll
                try:
                    return self._serve(wake_read)
                finally:
                    self._runner.stop()
                    self._handover.take_back("its connection closes")
                    self._connection.close()  # with TIMEOUT_LINGER, if _time_out set it
        finally:
            if previous is not None:
                signal.set_wakeup_fd(previous)
            os.close(wake_read)
            os.close(wake_write)
            self._connection.end()

    def _serve(self, wake_read: int) -> Exit:
        connection, handover = self._connection, self._handover
        waker, on_message = connection.waker, self.on_message
        connection.fds = (wake_read, *self.watch_fds)
        self._connect()
        while True:
            events = connection.poll(self._timeout(), with_socket=not handover.lent)
            if any(fd in events for fd in self.watch_fds):
                log.info("parent process has exited; stopping")
                return Exit.PARENT_GONE
            if wake_read in events:
                os.read(wake_read, 512)
            if self.stopping:
                log.info("stopping at once; %d running task(s) will be requeued by the broker",
                         len(self.running))
                return Exit.OK
            _retry_failed_handshake(connection, events)
            # Read what waits before judging the broker by its silence: this
            # loop may have been held up (a task holding the GIL) while the
            # broker's heartbeats queued here.
            outcome = connection.read(on_message)
            if outcome is None:
                outcome, handover.exit = handover.exit, None
            if outcome is not None:
                return outcome
            if handover.lent:
                handover.check(time.monotonic())
            waker.clear(waker.fd in events)  # before taking the events
            self.send_results()
            outcome = self._chores()
            if outcome is not None:
                return outcome

    def _timeout(self) -> float:
        """Seconds until the loop has something to do unasked, besides the
        connection's heartbeat chores (which Connection.poll adds)."""
        timeout = START_REPORT_AFTER if self._unreported else math.inf
        runner = self._runner
        if self._handover.lent or (runner.waiting and self._credit.short_tasks()):
            timeout = min(timeout, GIVE_BACK_AFTER)  # to see whether they are stuck
        if runner.deadlines:  # a task's timeout
            timeout = min(timeout, max(0.0, min(runner.deadlines.values()) - time.monotonic()))
        return timeout

    def _chores(self) -> Exit | None:
        """After each pass: timeouts, stuck tasks, recycling, draining, the
        broker's silence and our heartbeat. Returns how to leave, if so."""
        runner, connection = self._runner, self._connection
        if runner.deadlines and (overdue := runner.timers.overdue(time.monotonic(),
                                                                    runner.running)):
            return self._time_out(overdue)
        if runner.waiting and self._credit.stuck(len(runner.waiting), time.monotonic()):
            # Short tasks stuck behind long ones: let other workers run them.
            log.debug("giving back %d task(s) waiting behind long ones", len(runner.waiting))
            self._give_back(0, list(runner.waiting))
        self._drain_if_due(finished=False)
        # Leave once the broker has confirmed it sends nothing more (so no
        # task is on its way here) and every task has been answered.
        if self._drain_confirmed and not self.running:
            if self._recycle:
                connection.send(Bye("worker recycled"))
                log.debug("drained; leaving to be replaced")
                return self._recycle
            connection.send(Bye("worker drained"))
            log.info("drained; leaving")
            return Exit.OK
        if connection.handshake.handshakes > 1:
            # ZeroMQ connected this socket again by itself: messages on their
            # way over the old connection are lost, tasks among them. Start
            # over as a new worker (heartbeat says so), so the broker requeues
            # what it sent this one.
            log.info("the connection to broker %s was made again; registering anew",
                     connection.address)
        if connection.heartbeat(time.monotonic()):
            return None
        # A parent that has exited took its broker with it: no reconnecting, no warning.
        if _parent_gone(self.watch_fds):
            log.info("parent process has exited; stopping")
            return Exit.PARENT_GONE
        if self.draining and not self.running:
            log.warning("broker %s is gone while draining; leaving", connection.address)
            return self._recycle or Exit.OK
        if connection.broker_seen:  # 0: starting over was asked for, not a silence
            log.warning("broker %s silent for %.1fs; reconnecting in %.1fs", connection.address,
                        connection.heartbeat_interval * connection.liveness,
                        connection.reconnect_delay)
        self._handover.take_back("its connection closes")
        connection.close()
        connection.back_off()
        self._connect()
        return None

    def _connect(self) -> None:
        """A new connection, as a new worker: its HELLO offers the slots that
        are free now (running tasks return theirs as they finish), and a
        DRAIN follows if it drains."""
        self._credit.outstanding = 0
        credit = self._credit.grant(len(self.running), len(self._runner.seceded),
                                    self.draining)
        connection = self._connection
        connection.connect(next(self._worker_ids), dataclasses.replace(self._hello, credit=credit))
        if self.draining:  # a new broker must hear it too
            self._drain_confirmed = False
            connection.send(Drain())

    # -- reading (the loop's, or the lent thread's: whoever holds the turn) --

    def _on_control(self, message) -> Exit | None:
        """Any message but DISPATCH."""
        op = message.op
        if op is Op.WELCOME:
            connection = self._connection
            connection.welcome(message)
            self._runner.max_message_size = message.max_message_size
            self._header_budget = header_budget(message.max_message_size)
            log.info("connected to broker %s as %s", connection.address,
                     connection.socket.routing_id.decode())
        elif op is Op.REFUSED:
            log.error("the broker refused this worker: %s", message.reason)
            return Exit.REFUSED
        elif op is Op.WITHDRAW:
            self.on_withdraw(message)
        elif op is Op.HEARTBEAT and message.forget:
            self._runner.initializers.clients_gone(message.forget, self.running)
        elif op is Op.DRAIN:
            self._drain_confirmed = True
        elif op is Op.ERROR:
            if message.code == "unknown_peer":
                # The broker declared us dead (we were stopped or cut off): join again.
                log.warning("the broker no longer knows this worker; registering again")
                self._connection.broker_seen = 0.0
            else:
                log.error("the broker reports: %s: %s", message.code, message.message)
        elif op is Op.BYE:
            if _parent_gone(self.watch_fds):
                # An embedded cluster stopping: its broker saw the watched
                # pipe close first. A normal stop, not worth a warning.
                log.info("parent process has exited; stopping")
                return Exit.PARENT_GONE
            log.warning("the broker is going away (%s); will reconnect", message.reason)
            self._connection.broker_seen = 0.0  # reconnect on the next pass
        return None

    def on_message(self, message, payload: list) -> Exit | None:
        """Connection.read's handler: one message from the broker; returns
        how to leave, if so. A DISPATCH is handled here, without another call
        per task."""
        if message.op is not Op.DISPATCH:
            return self._on_control(message)
        # Also while draining: these were sent before the broker saw DRAIN.
        runner, handover = self._runner, self._handover
        try:
            groups = (_task_frames(message, payload, runner.initializers)
                      if message.inits or message.pythons
                      else unpack_payloads(message.tasks, DispatchRow.nframes, payload))
        except ProtocolError as exc:
            # Its tasks cannot run here: start over as a new worker, whose
            # HELLO makes the broker requeue what it gave this one.
            log.error("a DISPATCH from broker %s does not add up (%s); registering anew",
                      self._connection.address, exc)
            self._connection.broker_seen = 0.0
            return None
        if handover.lone is not None:  # not alone after all: queued first, in order
            runner.submit(*handover.lone)
            handover.lone = None
        # (A task with options goes through the runner, which keeps its priority and timeout.)
        tasks = message.tasks
        count = len(tasks)
        lone = handover.reading and count == 1 and len(tasks[0]) == 4 and not self.running
        running, unreported, submit = self.running, self._unreported, runner.submit
        for row, frames in zip(tasks, groups):
            key = (row[0], row[1])
            running.add(key)
            unreported.add(key)
            if lone:
                handover.lone = (key, frames)
            elif len(row) == 4:
                submit(key, frames)
            else:
                submit(key, frames, row[4].priority, row[4].timeout)
        self._credit.dispatched(count)

    def on_withdraw(self, request: Withdraw) -> None:
        keys = [key for key in map(tuple, request.tasks) if key in self.running]
        self._give_back(request.request_id, keys)

    # -- sending -------------------------------------------------------------

    def _give_back(self, request_id: int, keys: list) -> None:
        """Of ``keys``, send back to the broker those not started (request_id
        0: unasked)."""
        taken = self._runner.withdraw(keys)
        lone = self._handover.drop_lone(keys)  # read, not started yet
        if lone is not None:
            taken.append(lone[0])
        self.running.difference_update(taken)
        self._unreported.difference_update(taken)
        if self._runner.initializers.forgetting and taken:
            self._runner.initializers.forget_idle(self.running)
        self._credit.given_back(len(taken), asked=bool(request_id))
        credit = self._credit.grant(len(self.running), len(self._runner.seceded),
                                    self.draining)
        self._connection.send(Withdrawn(request_id, [TaskRow(*k) for k in taken], credit))

    def send_results(self) -> None:
        """What the runner's threads did since the last call, in RESULTS
        messages with credit (the loop's, or the thread holding the turn)."""
        runner, credit = self._runner, self._credit
        events = runner.events
        while events:
            seconds: list[float] = []
            results, started, payload, printed = take_batch(
                events, self._header_budget, self.running, self._unreported, seconds)
            if results:  # before the credit: a process to replace asks for none
                credit.observe(seconds)
                if runner.initializers.forgetting:
                    runner.initializers.forget_idle(self.running)
                # Told before the results: once a client has one, it may
                # submit more, which the broker must not send here. (Not
                # called where it has nothing to do: no limits, no drain.)
                if self.draining or credit.max_tasks is not None or self.max_memory is not None:
                    self._drain_if_due(finished=True)
            grant = credit.grant(len(self.running), len(runner.seceded), self.draining)
            self._connection.send(WorkerResults(results, started, grant, printed), payload)
        # Tasks may have turned long just now (surplus() says None unless each
        # of the last few was long).
        surplus = (credit.surplus(len(self.running), runner.waiting, self.draining)
                   if credit.long_for_sure else None)
        if surplus is not None:
            log.debug("tasks take longer now: giving back %d unused credit and %d waiting "
                      "task(s)", credit.outstanding, len(surplus))
            self._give_back(0, surplus)

    def _time_out(self, overdue: list) -> Exit:
        """Tasks ran past their timeouts: fail them, and leave to be replaced,
        which stops them (a thread cannot be stopped). The broker requeues
        what else this process holds, as it does for a worker that leaves."""
        self._runner.events.extend(timed_out(overdue, f"{self._hello.host}:{os.getpid()}"))
        for key, timeout, _ in overdue:
            log.warning("task %d of client %s ran past its timeout of %gs; replacing this "
                        "worker process (the broker requeues the %d other task(s) it holds)",
                        key[1], key[0].decode(errors="replace"), timeout,
                        len(self.running) - len(overdue))
        self.send_results()
        self._connection.send(Bye("a task ran past its timeout; this process is replaced"))
        # They leave as the socket closes. The backstop, set for this exit
        # now, ends it even if a task takes the GIL meanwhile.
        self._connection.socket.linger = int(TIMEOUT_LINGER * 1000)  # kept by close()
        self._runner.timers.leave_within(TIMEOUT_LINGER + BACKSTOP_GRACE)
        return Exit.TIMEOUT

    def _drain_if_due(self, finished: bool) -> None:
        """Drain, to be replaced, once every task this process may run has
        started, or (``finished``: a task has just ended) once it holds more
        memory than ``max_memory``. Once draining, tell the broker to send
        nothing more, and give back what waits here."""
        if not self.draining:
            if (self._credit.all_taken() and not self._runner.waiting
                    and self._handover.lone is None):
                log.debug("started its %d tasks; leaving to be replaced", self._credit.max_tasks)
                self._recycle, self.draining = Exit.RECYCLE, True
            elif finished and self.max_memory is not None:
                used = rss()
                if used > self.max_memory:
                    log.debug("uses %d bytes of memory, more than %d; leaving to be replaced",
                              used, self.max_memory)
                    self._recycle, self.draining = Exit.RECYCLE_MEMORY, True
        if not self.draining or self._drain_announced:
            return
        self._drain_announced = True
        if self._runner.waiting:  # other workers may run them now
            self._give_back(0, list(self._runner.waiting))
        # A recycling is told in one line, by the supervisor.
        log.log(logging.DEBUG if self._recycle else logging.INFO,
                "draining: finishing %d running task(s), taking no new ones", len(self.running))
        self._connection.send(Drain())


def _task_frames(message: Dispatch, payload: list, initializers) -> list:
    """Each task's frames; the initializers' frames, which come first, go to
    ``initializers``. ProtocolError if the frames do not add up."""
    first = 0
    if message.inits:  # (a generator and a list less per message without)
        first = sum(n for _, n in message.inits)
        for (client_id, _), frames in zip(message.inits,
                                          split_frames([n for _, n in message.inits],
                                                       payload[:first])):
            initializers.add(client_id, frames)
    for client_id, version in message.pythons:
        initializers.client_pythons[client_id] = version
    return unpack_payloads(message.tasks, DispatchRow.nframes, payload[first:])

def _retry_failed_handshake(connection: Connection, events: dict) -> None:
    """If handshakes failed, start over on the next pass. Keys may be fixed
    while we wait (a key added to the broker's directory), so the worker
    keeps trying, at the reconnect back-off."""
    failure = connection.handshake.failure(events)
    if failure:
        log.error("%s; retrying in %.1fs", failure, connection.reconnect_delay)
        connection.broker_seen = 0.0


def _parent_gone(watch_fds: tuple) -> bool:
    """Whether a watched pipe reads as closed now (without waiting)."""
    if not watch_fds:
        return False
    poller = select.poll()
    for fd in watch_fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
