"""A worker's I/O loop, the owner of its socket.

    broker --DISPATCH--> DEALER --(key, frames)--> Runner threads
           <--RESULTS--  (this loop)  <--events + Waker--   run the calls

The loop polls the socket, the runner's waker and a signal pipe. Each pass
reads every waiting message, then sends one RESULTS with everything the
threads finished (and started) since the last pass, with credit for the
tasks it can take next. A thread that finishes a task sends its result
itself while the loop sleeps (protocol.sockets.SocketTurn), unless short
tasks are queued behind it: the loop batches their results. A task that
runs for minutes never stalls this loop, so heartbeats and other results
keep flowing.

Prefetch: while tasks are short (a few milliseconds), a broker round trip
between two tasks would leave the threads idle most of the time, so the
worker asks for more tasks than it has threads, enough for a couple of
milliseconds of work each. Longer tasks still lose a round trip each (about
1 ms on a loaded machine: 10% of a 10 ms task), so the worker then holds one
task waiting, as ProcessPoolExecutor keeps one call queued, and once tasks are
long for sure gives back the spare credit and tasks it took on while they were
short. Tasks waiting here never hold up the pool: short ones stuck behind a
long one are given back unasked, and the broker asks for waiting tasks back
(WITHDRAW) when its queue is empty and another worker has a thread with
nothing to do; a cancel reaches them the same way. So prefetching changes no
semantics.

Lending the socket: with one thread, the loop's hand-off of a lone task to
the task thread costs about 45 us of a 500 us round trip here (a wake, and the
GIL). So once that thread has sent a result with nothing else to do, it stays
on as the socket's watcher and runs a lone task it reads itself, while the
loop sleeps on everything else and wakes every GIVE_BACK_AFTER. The loop takes
the socket back as soon as there is more to do than one task at a time: a
task still running when it wakes, tasks queued, draining, a reconnect, or
LEND_IDLE without a task.

If the broker falls silent for ``liveness`` heartbeats the worker reconnects
with a delay that doubles up to a cap, and offers the slots it has free; it
reads what waits first, since this loop may itself have been held up (a task
keeping the GIL) while the broker's heartbeats queued. It also starts over
when ZeroMQ has connected its socket again by itself, since messages on the
old connection may be lost. The connection has ZMTP heartbeats, which
libzmq's I/O thread answers without the GIL (protocol.sockets.keep_alive): a
task holding the GIL does not make the broker take this worker for dead. A
worker whose parent has gone (``watch_fds``) stops quietly, even when it
hears first from the broker that it goes away too.

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

import collections
import enum
import logging
import math
import os
import select
import signal
import socket as socketlib
import threading
import time

import zmq

from zeropool.protocol import (
    PROTOCOL_VERSION, Bye, Dispatch, Drain, Heartbeat, Hello, Op, ProtocolError, Role,
    Withdraw, Withdrawn, WorkerResults, decode, encode, header_budget, pack_payload,
    split_frames, text_size, unpack_payloads,
)
from zeropool.protocol import defaults
from zeropool.protocol.errors import TaskTimeoutError
from zeropool.protocol.payload import dumps_exception
from zeropool.protocol.security import HandshakeWatch, Security, close_watched
from zeropool.protocol.sockets import NOBLOCK, SocketTurn, keep_alive, readable, recv_frames, send_frames
from zeropool.protocol.waker import Waker
from zeropool.worker.memory import rss
from zeropool.worker.runner import BACKSTOP_GRACE, Runner

log = logging.getLogger("zeropool.worker")

# Results sent per message at most; more wait for the next pass, so that one
# huge message cannot hold the loop.
MAX_RESULTS_PER_MESSAGE = 1000
# Prefetch while the average task takes less than this...
PREFETCH_BELOW = 0.005
# ...about this much work per thread, in tasks at most PREFETCH_MAX per thread.
PREFETCH_SPAN = 0.002
PREFETCH_MAX = 32
# Tasks held waiting on the worker (not per thread) while tasks are longer.
PREFETCH_LONG = 1
# Spare credit goes back only once each of this many tasks in a row was long:
# one task preempted for 30 ms among 50 us ones must not make the worker shed
# its prefetch, nor tasks alternating short and long make it churn.
TASK_TIME_SAMPLES = 5
# Tasks waiting behind threads that have all been busy this long go back to the broker.
GIVE_BACK_AFTER = 0.02
# While tasks handed to the runner have not been reported started or done, the
# loop wakes at least this often and reports the starts it finds (a quicker
# task's start goes with its result): a wake and a report per task would cost
# a message through the broker to the client, competing with the result.
START_REPORT_AFTER = 0.001
# The loop takes a lent socket back after this long without a task, so that
# an idle worker's loop stops waking every GIVE_BACK_AFTER.
LEND_IDLE = 1.0
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
        self.address = address
        self.resources = dict(resources or {})
        self.security = security
        self.threads = threads
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.max_message_size = max_message_size
        # Recycling: tasks this process may be given in all, and the RSS in
        # bytes past which it leaves after a task (None: no limit).
        self.max_tasks = max_tasks
        self.max_memory = max_memory
        self._taken = 0  # tasks given to this process and not given back
        self._recycle: Exit | None = None  # why it drains, if to be replaced
        # Pipes whose writers (the process that started us) hold the other end:
        # readable means that process is gone, and so should we be.
        self.watch_fds = tuple(watch_fds)
        host = socketlib.gethostname()[:64]
        self._name = f"w-{host}-{os.getpid()}-{os.urandom(3).hex()}"
        self._connections = 0
        self.worker_id = b""  # per connection, see _connect
        self._host = host
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._handshake: HandshakeWatch | None = None
        self._waker = Waker()
        # The loop's, except while it sleeps: then a thread that finished the
        # last task here sends its result itself, saving a thread hand-off.
        self._turn = SocketTurn(self._waker)
        self._runner = Runner(threads, self._waker.wake, self._task_finished, address=address,
                              security=security)
        # Whether the task thread watches the socket (see "Lending" above);
        # its own waker tells it to stop.
        self._lent = False
        self._lend_waker = Waker()
        self._lent_active_at = 0.0
        self._lone: tuple | None = None  # a task the lent thread read, to run itself
        self._reading_lent = False  # the lent thread is reading: on_dispatch keeps a lone task
        self._exit: Exit | None = None  # what the lent thread read that ends the loop
        self._running: set[tuple] = set()  # keys given to the runner, not yet reported done
        # Clients gone whose initializers go once their tasks here are done.
        self._forgetting: set[bytes] = set()
        self._unreported: set[tuple] = set()  # of those, not yet reported started either
        self._outstanding = 0  # credit the broker has not used yet
        self._task_time: float | None = None  # moving average of task run times
        self._task_times: collections.deque = collections.deque(maxlen=TASK_TIME_SAMPLES)
        self._draining = False
        self._drain_announced = False
        self._drain_confirmed = False
        self._stop_now = False
        self._broker_seen = 0.0
        self._last_send = 0.0
        self._reconnect_delay = defaults.RECONNECT_DELAY

    # -- control (signal-safe: they only set flags) -------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Take no new tasks, finish the running ones, then leave."""
        self._draining = True

    def stop_now(self) -> None:
        self._stop_now = True

    # -- the loop ----------------------------------------------------------

    def run(self) -> Exit:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.set_wakeup_fd(wake_write) if on_main else None
        try:
            with self._turn:  # released only in poll
                try:
                    return self._serve(wake_read)
                finally:
                    self._runner.stop()
                    self._close_socket()
        finally:
            if previous is not None:
                signal.set_wakeup_fd(previous)
            os.close(wake_read)
            os.close(wake_write)
            self._context.destroy(linger=0)  # also closes a socket left half-made

    def _serve(self, wake_read: int) -> Exit:
        self._connect()
        poller, lent_poller, polled = None, None, None
        while True:
            if polled is not self._socket:  # a new connection: new pollers
                polled = self._socket
                # Descriptors only (see SocketTurn); without the socket's while it is lent.
                poller, lent_poller = select.poll(), select.poll()
                for fd in (self._waker.fd, wake_read, self._handshake.fd, *self.watch_fds):
                    poller.register(fd, select.POLLIN)
                    lent_poller.register(fd, select.POLLIN)
                poller.register(self._socket.getsockopt(zmq.FD), select.POLLIN)
            next_chore = min(self._last_send + self.heartbeat_interval,
                             self._broker_seen + self.heartbeat_interval * self.liveness)
            timeout = max(0.0, next_chore - time.monotonic())
            if self._unreported:
                timeout = min(timeout, START_REPORT_AFTER)
            if self._lent or (self._runner.waiting and self._short_tasks()):
                timeout = min(timeout, GIVE_BACK_AFTER)  # to see whether they are stuck
            if self._runner.deadlines:  # a task's timeout
                timeout = min(timeout, max(0.0, min(self._runner.deadlines.values())
                                           - time.monotonic()))
            events = self._turn.poll(lent_poller if self._lent else poller, self._socket,
                                     timeout * 1000)
            if any(fd in events for fd in self.watch_fds):
                log.info("parent process has exited; stopping")
                return Exit.PARENT_GONE
            if wake_read in events:
                os.read(wake_read, 512)
            if self._stop_now:
                log.info("stopping at once; %d running task(s) will be requeued by the broker",
                         len(self._running))
                return Exit.OK
            failure = self._handshake.failure(events)
            if failure:
                # Keys may be fixed while we wait (a key added to the broker's
                # directory), so keep trying, at the reconnect back-off.
                log.error("%s; retrying in %.1fs", failure, self._reconnect_delay)
                self._broker_seen = 0.0
            # Read what waits before judging the broker by its silence: this
            # loop may have been held up (a task holding the GIL) while the
            # broker's heartbeats queued here.
            outcome = self._read_all()
            if outcome is None:
                outcome, self._exit = self._exit, None
            if outcome is not None:
                return outcome
            if self._lent:
                # Even while it is lent, the loop's passes read the socket and
                # send what is due; taking it back makes that prompt again.
                if self._runner.running:
                    self._take_back("a task is running there")
                elif self._runner.waiting:
                    self._take_back("tasks are queued")
                elif self._draining:
                    self._take_back("draining")
                elif time.monotonic() - self._lent_active_at > LEND_IDLE:
                    self._take_back("idle")
            self._waker.clear(self._waker.fd in events)  # before taking the events
            self._send_results()
            if self._runner.deadlines and (overdue := self._runner.overdue(time.monotonic())):
                return self._time_out(overdue)
            if self._runner.waiting:
                self._give_back_waiting()
            self._check_recycle(finished=False)
            if self._draining and not self._drain_announced:
                self._announce_drain()
            # Leave once the broker has confirmed it sends nothing more (so no
            # task is on its way here) and every task has been answered.
            if self._drain_confirmed and not self._running:
                if self._recycle:
                    self._send(Bye("worker recycled"))
                    log.debug("drained; leaving to be replaced")
                    return self._recycle
                self._send(Bye("worker drained"))
                log.info("drained; leaving")
                return Exit.OK
            if self._handshake.handshakes > 1:
                # ZeroMQ connected this socket again by itself: messages on their
                # way over the old connection are lost, tasks among them. Start
                # over as a new worker, so the broker requeues what it sent this one.
                log.info("the connection to broker %s was made again; registering anew",
                         self.address)
                self._broker_seen = 0.0
            now = time.monotonic()
            if now - self._broker_seen > self.heartbeat_interval * self.liveness:
                if self._parent_gone():  # the broker went with it: no reconnecting, no warning
                    log.info("parent process has exited; stopping")
                    return Exit.PARENT_GONE
                if self._draining and not self._running:
                    log.warning("broker %s is gone while draining; leaving", self.address)
                    return self._recycle or Exit.OK
                self._reconnect()
            elif now - self._last_send >= self.heartbeat_interval:
                self._send(Heartbeat())

    def _connect(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        # A new id per connection: messages still in flight on a dropped one
        # (a cut link coming back) must not pass for the new one's.
        self._connections += 1
        self.worker_id = f"{self._name}-{self._connections}".encode()
        sock.setsockopt(zmq.ROUTING_ID, self.worker_id)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        sock.setsockopt(zmq.LINGER, 0)
        sock.copy_threshold = defaults.COPY_THRESHOLD
        # The connection outlives a task that holds the GIL (see broker.server, "Liveness").
        keep_alive(sock, self.heartbeat_interval, self.liveness)
        if self.security is not None:
            self.security.apply(sock)
        self._socket = sock
        self._handshake = HandshakeWatch(sock, self.security)
        sock.connect(self.address)
        self._broker_seen = time.monotonic()
        # Offer the slots that are free now; running tasks return theirs as they finish.
        self._outstanding = 0
        self._send(Hello(Role.WORKER, PROTOCOL_VERSION, credit=self._grant(), pid=os.getpid(),
                         host=self._host, threads=self.threads, resources=self.resources,
                         versions=defaults.versions()))
        if self._draining:  # a new broker must hear it too
            self._drain_confirmed = False
            self._send(Drain())

    def _reconnect(self) -> None:
        if self._broker_seen:
            log.warning("broker %s silent for %.1fs; reconnecting in %.1fs", self.address,
                        self.heartbeat_interval * self.liveness, self._reconnect_delay)
        self._close_socket()
        time.sleep(self._reconnect_delay)  # bounded back-off between attempts, not a poll
        self._reconnect_delay = min(self._reconnect_delay * 2, defaults.RECONNECT_DELAY_MAX)
        self._connect()

    def _close_socket(self) -> None:
        self._take_back("its connection closes")
        close_watched(None, self._handshake)
        if self._socket is not None:
            self._socket.close()  # with its own LINGER: 0, or TIMEOUT_LINGER on the way out
        self._socket = self._handshake = None

    def _read_all(self) -> Exit | None:
        while readable(self._socket):
            frames = recv_frames(self._socket)
            self._broker_seen = time.monotonic()
            try:
                message, payload = decode(frames)
            except ProtocolError as exc:
                log.error("bad message from the broker: %s", exc)
                continue
            if message.op is Op.DISPATCH:
                self.on_dispatch(message, payload)
            elif message.op is Op.WELCOME:
                # The broker's heartbeat settings rule: both sides judge liveness alike.
                self.heartbeat_interval = message.heartbeat_interval
                self.liveness = message.liveness
                self._runner.max_message_size = message.max_message_size
                self._reconnect_delay = defaults.RECONNECT_DELAY
                log.info("connected to broker %s as %s", self.address, self.worker_id.decode())
            elif message.op is Op.REFUSED:
                log.error("the broker refused this worker: %s", message.reason)
                return Exit.REFUSED
            elif message.op is Op.WITHDRAW:
                self.on_withdraw(message)
            elif message.op is Op.HEARTBEAT and message.forget:
                self._forgetting.update(message.forget)
                self._forget_idle_clients(message.forget)
            elif message.op is Op.DRAIN:
                self._drain_confirmed = True
            elif message.op is Op.ERROR:
                if message.code == "unknown_peer":
                    # The broker declared us dead (we were stopped or cut off): join again.
                    log.warning("the broker no longer knows this worker; registering again")
                    self._broker_seen = 0.0
                else:
                    log.error("the broker reports: %s: %s", message.code, message.message)
            elif message.op is Op.BYE:
                if self._parent_gone():
                    # An embedded cluster stopping: its broker saw the watched
                    # pipe close first. A normal stop, not worth a warning.
                    log.info("parent process has exited; stopping")
                    return Exit.PARENT_GONE
                log.warning("the broker is going away (%s); will reconnect", message.reason)
                self._broker_seen = 0.0  # reconnect on the next pass
        return None

    def _parent_gone(self) -> bool:
        """Whether a watched pipe reads as closed now (without waiting)."""
        if not self.watch_fds:
            return False
        poller = select.poll()
        for fd in self.watch_fds:
            poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    def on_dispatch(self, dispatch: Dispatch, payload: list) -> None:
        # Also while draining: these were sent before the broker saw DRAIN.
        first = sum(n for _, n in dispatch.inits)  # initializers' frames come first
        for (client_id, _), frames in zip(dispatch.inits,
                                          split_frames([n for _, n in dispatch.inits],
                                                       payload[:first])):
            self._runner.add_initializer(client_id, frames)
            self._forgetting.discard(client_id)  # back under the same id: keep this one
        for client_id, version in dispatch.pythons:
            self._runner.client_pythons[client_id] = version
        groups = unpack_payloads(dispatch.tasks, 2, payload[first:])
        if self._lone is not None:  # not alone after all: queued first, in order
            self._runner.submit(*self._lone)
            self._lone = None
        # (A task with options goes through the runner, which keeps its priority and timeout.)
        lone = (self._reading_lent and len(dispatch.tasks) == 1 and len(dispatch.tasks[0]) == 4
                and not self._running)
        for row, frames in zip(dispatch.tasks, groups):
            key = (row[0], row[1])
            self._running.add(key)
            self._unreported.add(key)
            self._taken += 1
            if lone:
                self._lone = (key, frames)
            elif len(row) == 4:
                self._runner.submit(key, frames)
            else:
                self._runner.submit(key, frames, row[4].priority, row[4].timeout)
        self._outstanding = max(0, self._outstanding - len(dispatch.tasks))

    def on_withdraw(self, request: Withdraw) -> None:
        keys = [key for key in map(tuple, request.tasks) if key in self._running]
        self._give_back(request.request_id, keys)

    def _give_back(self, request_id: int, keys: list) -> None:
        taken = self._runner.withdraw(keys)
        if self._lone is not None and self._lone[0] in keys:  # read, not started yet
            taken.append(self._lone[0])
            self._lone = None
        self._running.difference_update(taken)
        self._unreported.difference_update(taken)
        self._taken -= len(taken)
        if self._forgetting and taken:
            self._forget_idle_clients()
        if not request_id:
            # Unasked, it also takes back all unused credit, or the broker would
            # send the same tasks straight back here.
            self._outstanding = 0
        self._send(Withdrawn(request_id, [list(k) for k in taken], self._grant()))

    def _grant(self) -> int:
        """Credit to offer now: room up to the target, counting what we hold
        and what the broker may still send."""
        if self._draining:
            return 0
        # Tasks waiting on their own futures gave their slots back (see Runner).
        slots = self.threads + len(self._runner.seceded)
        grant = max(0, slots + self._prefetch() - len(self._running) - self._outstanding)
        if self.max_tasks is not None:  # never more than this process has left to run
            grant = min(grant, max(0, self.max_tasks - self._taken - self._outstanding))
        self._outstanding += grant
        return grant

    def _short_tasks(self) -> bool:
        return self._task_time is not None and self._task_time <= PREFETCH_BELOW

    def _prefetch(self) -> int:
        if self._task_time is None:
            return 0
        if not self._short_tasks():
            return PREFETCH_LONG
        if self._all_busy_since() is not None:
            return 0  # long tasks occupy every thread now: short ones would be stuck here
        per_thread = min(PREFETCH_MAX, math.ceil(PREFETCH_SPAN / max(self._task_time, 1e-6)))
        return self.threads * per_thread

    def _all_busy_since(self) -> float | None:
        """If every thread has been running its task for GIVE_BACK_AFTER, the
        start time of the youngest; else None."""
        starts = self._runner.started_times()
        if len(starts) < self.threads:
            return None
        youngest = max(starts)
        return youngest if time.monotonic() - youngest >= GIVE_BACK_AFTER else None

    def _give_back_waiting(self) -> None:
        """Short tasks stuck here behind long ones: let other workers run them.
        (The one held while tasks are long waits to be asked: it would only
        come straight back, and the broker asks when another worker idles.)"""
        if self._runner.waiting and self._short_tasks() and self._all_busy_since() is not None:
            log.debug("giving back %d task(s) waiting behind long ones",
                      len(self._runner.waiting))
            self._give_back(0, list(self._runner.waiting))

    def _shed_credit(self) -> None:
        """Once tasks are long for sure (each of the last few), the credit and
        the tasks that a short tasks' prefetch took on (up to PREFETCH_MAX a
        thread) are more than long tasks want: give back the unused credit and
        the tasks waiting here, or they wait for other workers to idle."""
        times = self._task_times
        if self._draining or len(times) < TASK_TIME_SAMPLES or min(times) <= PREFETCH_BELOW:
            return
        # Held beyond a thread each and PREFETCH_LONG: of those not started.
        # (Tasks just read for free threads are waiting too, for a moment.)
        excess = len(self._running) - self.threads - PREFETCH_LONG
        surplus = list(self._runner.waiting)[:excess] if excess > 0 else []
        if self._outstanding > max(0, -excess) or surplus:
            log.debug("tasks take longer now: giving back %d unused credit and %d waiting "
                      "task(s)", self._outstanding, len(surplus))
            self._give_back(0, surplus)

    def _task_finished(self) -> None:
        """From a runner thread, after a result: send it now if the loop is
        asleep, unless short tasks are queued behind it (the loop batches
        those results). Then, with one thread and nothing else to do, watch
        the socket for the loop."""
        if (not self._runner.waiting or not self._short_tasks()) and self._turn.try_take():
            try:
                if self._socket is not None:
                    self._send_results()
                    if self._draining or not self._broker_seen:
                        self._waker.wake()  # the loop may leave, or must reconnect
                    elif (self.threads == 1 and not self._running and not self._runner.events
                          and not self._stop_now):
                        self._serve_lent()
                    return
            except Exception:
                # Sent nothing, or half a message: start over on a new connection
                # (the broker then runs again what was sent here).
                log.exception("using the socket from a task thread failed; reconnecting")
                self._broker_seen = 0.0
            finally:
                self._turn.give_back(self._socket)
        self._waker.wake()

    def _serve_lent(self) -> None:
        """The task thread, holding the turn: watch the socket and run lone
        tasks here until the loop takes the socket back (or there is more to
        do than that). Returns holding the turn."""
        sock = self._socket
        poller = select.poll()
        poller.register(sock.getsockopt(zmq.FD), select.POLLIN)
        poller.register(self._lend_waker.fd, select.POLLIN)
        self._lend_waker.clear()
        self._lent, self._lent_active_at = True, time.monotonic()
        self._waker.wake()  # the loop polls again, without the socket
        log.debug("lent the socket to the task thread")
        try:
            while True:
                events = self._turn.poll(poller, sock, -1)
                if not self._lent or self._socket is not sock:
                    return
                self._lend_waker.clear(self._lend_waker.fd in events)
                self._reading_lent = True
                try:
                    self._exit = self._read_all()
                except BaseException:
                    if self._lone is not None:  # read, so it must run
                        self._runner.submit(*self._lone)
                        self._lone = None
                    raise
                finally:
                    self._reading_lent = False
                lone, self._lone = self._lone, None
                if (self._exit is not None or self._runner.waiting or self._draining
                        or not self._broker_seen or self._stop_now):
                    if lone is not None:
                        self._runner.submit(*lone)
                    return  # the loop has more to do: it takes the socket back
                if lone is None:
                    continue
                self._turn.__exit__()
                try:
                    self._runner.run_here(*lone)
                finally:
                    self._turn.__enter__()
                if self._socket is not sock:
                    return
                self._send_results()
                if self._draining or not self._broker_seen:  # recycling, or a reconnect
                    return
                self._lent_active_at = time.monotonic()
        finally:
            if self._lent:
                self._lent = False
                log.debug("the task thread gave the socket back")
            self._waker.wake()  # for what made it stop, or a result it could not send

    def _take_back(self, why: str) -> None:
        """The loop's: the socket is watched by the loop again."""
        if self._lent:
            self._lent = False
            self._lend_waker.wake()
            log.debug("took the socket back from the task thread: %s", why)

    def _send_results(self) -> None:
        events = self._runner.events
        while events:
            started, results, payload, printed = {}, [], [], []
            # Inline results and output travel in the header, which the
            # broker's limit (and the header's own) bounds.
            budget, size = header_budget(self._runner.max_message_size), 0
            while events and len(results) < MAX_RESULTS_PER_MESSAGE and size < budget:
                event = events.popleft()
                if event[0] == "started":
                    started[event[1]] = None
                elif event[0] == "seceded":
                    pass  # its slot is offered with the credit below
                elif event[0] == "output":
                    _, key, stream, text = event
                    size += text_size(text)
                    last = printed[-1] if printed else None
                    if last and last[0] == key[0] and last[1] == key[1] and last[2] == stream:
                        last[3].append(text)  # print() writes the text and its newline apart
                    else:
                        printed.append([key[0], key[1], stream, [text]])
                else:
                    _, key, status, frames, seconds = event
                    self._task_times.append(seconds)
                    average = self._task_time
                    self._task_time = seconds if average is None else average * 0.8 + seconds * 0.2
                    started.pop(key, None)  # its result says it started
                    self._running.discard(key)
                    self._unreported.discard(key)
                    nframes, inline, frames = pack_payload(frames)
                    results.append([key[0], key[1], int(status), nframes, inline])
                    payload.extend(frames)
                    size += len(inline) + 16
            self._unreported.difference_update(started)
            if self._forgetting and results:
                self._forget_idle_clients()
            if results:  # before the credit: a process to replace asks for none
                self._check_recycle(finished=True)
                if self._draining and not self._drain_announced:
                    # Before the results: once a client has one, it may submit
                    # more, which the broker must not send here.
                    self._announce_drain()
            credit = self._grant()
            for row in printed:
                row[3] = "".join(row[3])
            self._send(WorkerResults(results, [list(k) for k in started], credit, printed),
                       payload)
        self._shed_credit()  # tasks may have turned long just now

    def _time_out(self, overdue: list) -> Exit:
        """Tasks ran past their timeouts: fail them, and leave to be replaced,
        which stops them (a thread cannot be stopped). The broker requeues
        what else this process holds, as it does for a worker that leaves."""
        where = f"{self._host}:{os.getpid()}"
        for key, timeout, stack in overdue:
            text = (f"the task ran longer than its timeout of {timeout:g}s, so it was stopped: "
                    f"its worker process ({where}) was replaced, since a running thread cannot "
                    "be stopped otherwise")
            if stack:
                text += f". It was here:\n{stack.rstrip()}"
            status, frames = dumps_exception(TaskTimeoutError(text))
            self._runner.events.append(("done", key, status, frames, timeout))
            log.warning("task %d of client %s ran past its timeout of %gs; replacing this "
                        "worker process (the broker requeues the %d other task(s) it holds)",
                        key[1], key[0].decode(errors="replace"), timeout,
                        len(self._running) - len(overdue))
        self._send_results()
        self._send(Bye("a task ran past its timeout; this process is replaced"))
        # They leave as the socket closes (see _close_socket). The backstop,
        # set for this exit now, ends it even if a task takes the GIL meanwhile.
        self._socket.setsockopt(zmq.LINGER, int(TIMEOUT_LINGER * 1000))
        self._runner.leave_within(TIMEOUT_LINGER + BACKSTOP_GRACE)
        return Exit.TIMEOUT

    def _announce_drain(self) -> None:
        """Tell the broker to send nothing more; give back what waits here."""
        self._drain_announced = True
        if self._runner.waiting:  # other workers may run them now
            self._give_back(0, list(self._runner.waiting))
        # A recycling is told in one line, by the supervisor.
        log.log(logging.DEBUG if self._recycle else logging.INFO,
                "draining: finishing %d running task(s), taking no new ones", len(self._running))
        self._send(Drain())

    def _check_recycle(self, finished: bool) -> None:
        """Drain, to be replaced, once every task this process may run has
        started, or (``finished``: a task has just ended) once it holds more
        memory than ``max_memory``."""
        if self._draining:
            return
        if (self.max_tasks is not None and self._taken >= self.max_tasks
                and not self._runner.waiting and self._lone is None):
            log.debug("started its %d tasks; leaving to be replaced", self.max_tasks)
            self._recycle, self._draining = Exit.RECYCLE, True
        elif finished and self.max_memory is not None:
            used = rss()
            if used > self.max_memory:
                log.debug("uses %d bytes of memory, more than %d; leaving to be replaced",
                          used, self.max_memory)
                self._recycle, self._draining = Exit.RECYCLE_MEMORY, True

    def _forget_idle_clients(self, news: list = ()) -> None:
        """Drop the initializers of gone clients that have no task here any more
        (``news``: clients just reported gone)."""
        busy = {client_id for client_id, _ in self._running}
        for client_id in news:
            if client_id in busy:
                log.debug("client %s has gone; its initializer goes when its tasks here end",
                          client_id.decode(errors="replace"))
        for client_id in self._forgetting - busy:
            self._forgetting.discard(client_id)
            self._runner.forget_initializer(client_id)
            log.debug("dropped the initializer of client %s, which has gone",
                      client_id.decode(errors="replace"))

    def _send(self, message, payload: list = ()) -> None:
        try:
            send_frames(self._socket, encode(message, payload), NOBLOCK)
        except zmq.Again:
            # No high-water mark, so only a connection ZeroMQ gave up on (a
            # refused handshake) lands here: start over on a new one. The broker
            # requeues whatever this worker held.
            self._broker_seen = 0.0
        self._last_send = time.monotonic()

