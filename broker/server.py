"""The broker's I/O: one ROUTER socket, one poll loop, over socket-free rooms.

    clients --SUBMIT/CANCEL-->  +------------------------+  --DISPATCH/WITHDRAW--> workers
            <--RESULTS--------  | Broker: ROUTER, serve()|  <--RESULTS/WITHDRAWN--
                                +-----------+------------+
       _read_all -> _handle -> on_<op>()    |  _dispatch, _flush, _chores
          |                                 |
          +-- Admission     HELLO, STATS, keys, complaints    (admission.py)
          +-- BrokerState   queue, in-flight, credit          (state.py, queue.py,
          |                                                    roster.py, dispatch.py,
          |                                                    askback.py)
          +-- CancelChaser  CANCEL, WITHDRAWN                 (cancels.py)
          +-- Peers         DRAIN, BYE, losses, heartbeats    (peers.py)
          +-- Outbox        results per client -> RESULTS;
                            assignments -> DISPATCH           (outbox.py)

Broker (this module) owns the socket and the loop. Each pass reads every
message already waiting (so one DISPATCH to a worker and one RESULTS to a
client can carry many tasks), hands queued tasks to workers with credit,
flushes results per client, then runs the timed chores once an interval.
Payload frames are forwarded as received; the broker decodes only msgpack
headers and never imports the pickling code. SUBMIT and RESULTS, the hot
path, are handled here, with what they need bound once; a lone call (one
task, the last message of its pass, nothing queued) goes to its worker at
once (``BrokerState.submit_lone``). ``_send`` is the
one sender: the rooms below hold no socket and send through it, and it
notes a peer whose connection is gone for ``_flush`` to remove.

Admission lets peers in: HELLO and STATS, the protocol version, under
CURVE whether a peer's key is still authorized (and, each interval, which
were revoked). Bad input is logged and answered at a bounded rate.

BrokerState is the bookkeeping, with ``now`` passed in: the queue (levels
of priority and resource needs, clients taking turns), tasks in flight per
worker, credit; its roster (liveness, resources), the dispatcher behind
``assign()``, and ``ask_back`` (tasks asked back from workers that hold
them waiting, for idle workers or higher priorities).

CancelChaser answers CANCEL: queued tasks are dropped at once; tasks that
workers hold unstarted are asked back with WITHDRAW, followed if they moved
meanwhile, and the client is answered once every worker has answered, left,
or kept it waiting too long.

Peers handles what happens to peers after HELLO: drains, departures, lost
workers (their tasks requeued, or failed back to their clients), and the
heartbeats each interval.

The Outbox gathers a pass's results per client, and cuts results and
assigned tasks into messages within the header budget a peer accepts.

Liveness: a peer is dead when its connection is. libzmq's own heartbeats
(protocol.sockets.keep_alive) run in its I/O thread, without the GIL, and
close a connection silent for the liveness window: a stopped process or a
cut link. A killed one closes its connection at once. The broker sends every
peer a HEARTBEAT each interval, and a send to a closed connection raises
(ROUTER_MANDATORY), so the dead are found within an interval of it. A peer
that is silent but still connected (a task holding the GIL stalls its
threads) keeps its tasks, as in a process pool.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import signal
import threading
import time

import msgpack
import zmq

from zeropool.broker.admission import Admission
from zeropool.broker.auth import KeyRing, ZapHandler
from zeropool.broker.cancels import CancelChaser
from zeropool.broker.outbox import Outbox, dispatch_messages, results_messages
from zeropool.broker.peers import Peers
from zeropool.broker.report import status as status_report
from zeropool.broker.state import BrokerState
from zeropool.broker.stats import Stats as Counters
from zeropool.protocol import (
    PROTOCOL_VERSION, Cancel, ClientOutputRow, ClientResultRow, Op, ProtocolError, Role,
    Status, Submit, SubmitRow, TaskRow, Welcome, Withdraw, WorkerResultRow, WorkerResults,
    decode, encode, pack_payload, unpack_payloads,
)
from zeropool.protocol import defaults
from zeropool.protocol.frames import MAX_HEADER_SIZE
from zeropool.protocol.sockets import keep_alive, readable, recv_frames, send_frames

log = logging.getLogger("zeropool.broker")

# Messages read per pass before dispatching: large enough to batch a burst,
# small enough that a flood from one client cannot starve timed chores.
MAX_READS_PER_PASS = 2000

_monotonic = time.monotonic
_unpackb = msgpack.unpackb


class Broker:
    """Binds one address for clients and workers and serves until stopped."""

    def __init__(self, bind: str, *, heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL,
                 liveness: int = defaults.HEARTBEAT_LIVENESS,
                 max_retries: int = defaults.MAX_TASK_RETRIES,
                 max_message_size: int = defaults.MAX_MESSAGE_SIZE,
                 curve_key_pair: tuple[bytes, bytes] | None = None,
                 authorized_keys: str | None = None) -> None:
        """With ``curve_key_pair`` (Z85 public, secret) and ``authorized_keys`` (a
        directory of public key files) every connection is encrypted and only
        peers whose key is in the directory get in."""
        if (curve_key_pair is None) != (authorized_keys is None):
            raise ValueError("CURVE needs both the broker's key pair and a directory of "
                             "authorized keys")
        self.heartbeat_interval = heartbeat_interval
        self.context = zmq.Context()
        self.zap: ZapHandler | None = None
        if authorized_keys is not None:
            # Before any socket listens: libzmq sends every handshake here.
            self.zap = ZapHandler(self.context, KeyRing(authorized_keys))
        self.socket = _router(self.context, curve_key_pair, heartbeat_interval, liveness,
                              max_message_size)
        try:
            self.socket.bind(bind)
        except zmq.ZMQError:
            self.close()
            raise
        self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.state = BrokerState(heartbeat_interval * liveness, max_retries)
        self._stopping = False
        self.stats = Counters()
        self.started_at = time.time()
        # Peers a send found gone; _flush removes them.
        self._unreachable: set[bytes] = set()
        self.outbox = Outbox()
        # A worker that has not answered a cancel's WITHDRAW in the time it
        # takes to find a dead one is held up (see CancelChaser.give_up).
        self.cancels = CancelChaser(self.state, self.stats, self._send,
                                    self.state.peer_timeout + 2 * heartbeat_interval)
        self.peers = Peers(self.state, self.stats, self.outbox, self.cancels, self._send)
        self.admission = Admission(
            self.state, self.peers, self._send,
            Welcome(PROTOCOL_VERSION, heartbeat_interval, liveness, max_message_size),
            self.report, self.zap.keys if self.zap is not None else None)
        peers = self.peers
        self._handlers = {
            ("client", Op.SUBMIT): self.on_submit,
            ("client", Op.CANCEL): self.on_cancel,
            ("client", Op.HEARTBEAT): peers.on_heartbeat,
            ("client", Op.BYE): peers.on_client_bye,
            ("worker", Op.RESULTS): self.on_results,
            ("worker", Op.HEARTBEAT): peers.on_heartbeat,
            ("worker", Op.DRAIN): peers.on_drain,
            ("worker", Op.BYE): peers.on_worker_bye,
            ("worker", Op.WITHDRAWN): self.cancels.on_withdrawn,
        }

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Ask the loop to finish its pass and return (safe from a signal handler)."""
        self._stopping = True

    def close(self) -> None:
        self.socket.close(linger=0)
        if self.zap is not None:
            self.zap.close()
        self.context.term()

    # -- the loop ----------------------------------------------------------

    def serve(self, watch_fd: int | None = None) -> None:
        """Run until ``stop()``; if ``watch_fd`` becomes readable (its writer,
        the parent process, has exited) stop too."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        # A signal writes to this pipe, so the poll below wakes at once.
        previous_wakeup = signal.set_wakeup_fd(wake_write) if _main_thread() else None
        # The sockets' ZMQ_FDs, not the sockets: zmq_poll would make two more
        # system calls per pass for each socket (ZMQ_EVENTS, and a first pass
        # that does not wait). ZMQ_FD only signals edges, so the loop looks at
        # ZMQ_EVENTS itself before it sleeps.
        zap_fd = self.zap.socket.getsockopt(zmq.FD) if self.zap is not None else None
        sock, sock_fd = self.socket, self.socket.getsockopt(zmq.FD)
        poller = select.poll()
        for fd in (sock_fd, wake_read, watch_fd, zap_fd):
            if fd is not None:
                poller.register(fd, select.POLLIN)
        only_sock = [(sock_fd, select.POLLIN)]  # the usual wake-up, which needs no more looks
        now = time.monotonic()
        next_chores = now + self.heartbeat_interval
        log.info("broker listening on %s (protocol %d, %s)", self.address, PROTOCOL_VERSION,
                 "CURVE: authorized keys only" if self.zap else "no authentication")
        try:
            while not self._stopping:
                timeout = next_chores - now  # the pass before ended at `now`
                # Sends may have taken the edge of a message waiting: ZMQ_EVENTS.
                if timeout < 0 or readable(sock):
                    timeout = 0
                events = poller.poll(timeout * 1000)
                if events != only_sock and _woken(events, watch_fd, wake_read, zap_fd, self.zap):
                    break
                self._dispatch(self._read_all())
                self._flush()
                now = _monotonic()
                if now >= next_chores:
                    self._chores(now)
                    next_chores = now + self.heartbeat_interval
            self.peers.goodbye()
        finally:
            if previous_wakeup is not None:
                signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_read)
            os.close(wake_write)
            self.close()
        log.info("broker stopped")

    def _chores(self, now: float) -> None:
        """Once a heartbeat interval."""
        self.peers.heartbeats()  # finds the peers whose connections are gone
        self.peers.note_silent(now, self._unreachable)
        if self.cancels.pending:
            self.cancels.give_up(now)
        self._flush()
        if self.zap is not None:
            self.zap.refusals = 0
            self.admission.reload_keys(now)
            self._flush()
        self.admission.new_interval()
        self.stats.sample(now)
        # Against a change that should have let a task go out and did not
        # say so: assign() looks again once an interval.
        self.state.dispatch_due = True

    def _read_all(self) -> float | None:
        """Handles the messages waiting (as ``recv_frames`` reads them); returns
        when the last was read, None if none was. The loop was woken, most
        often by a message, so the first receive asks ZMQ_EVENTS nothing."""
        sock, handle = self.socket, self._handle
        now = None
        for _ in range(MAX_READS_PER_PASS):
            try:
                frames = recv_frames(sock)  # the header stays a Frame: it holds the key
            except zmq.Again:
                return now
            # Asked before handling: the last message of a pass may skip steps.
            more = readable(sock)
            now = _monotonic()
            if len(frames) < 2:
                self.admission.complain(frames[0], "bad_message", "an empty message")
            else:
                try:
                    handle(frames, now, not more)
                except ProtocolError as exc:
                    self.admission.complain(frames[0], "bad_message", str(exc))
            if not more:
                return now
        return now

    def _handle(self, frames: list, now: float, last: bool) -> None:
        """A client's SUBMIT and a worker's RESULTS, parsed as ``decode`` would
        but without its generic steps; anything else, or anything amiss, goes
        the general way (``_handle_any``)."""
        peer_id, header = frames[0], frames[1]
        state = self.state
        peer, op = state.workers.get(peer_id), "results"
        if peer is None:
            peer, op = state.clients.get(peer_id), "submit"
        if peer is not None and len(header) <= MAX_HEADER_SIZE:
            try:
                header = _unpackb(header, raw=False, strict_map_key=True)
            except Exception:  # msgpack raises several unrelated types
                header = None
            if type(header) is dict and header.get("op") == op:
                message = (WorkerResults if op == "results" else Submit).parse(header)
                peer.last_seen, peer.silent = now, False  # Roster.seen
                if op == "results":
                    return self.on_results(peer_id, message, frames[2:], now)
                return self.on_submit(peer_id, message, frames[2:], now, last)
        self._handle_any(peer_id, frames[1:], now)

    def _handle_any(self, peer_id: bytes, frames: list, now: float) -> None:
        role = self.state.role_of(peer_id)
        try:
            message, payload = decode(frames, Role.WORKER if role == "worker" else None)
        except ProtocolError:
            if role is not None:
                raise
            message = None
        if message is not None and message.op in (Op.HELLO, Op.STATS):
            if self.zap is not None and not self.admission.key_still_valid(
                    peer_id, *_identity(frames[0])):
                return
            if message.op is Op.HELLO:
                return self.admission.on_hello(peer_id, message, payload, now)
            return self.admission.on_stats(peer_id, message)
        if role is None:
            # Also a peer this broker declared dead, or one from before a restart
            # (whose RESULTS do not parse as a client's): it must say HELLO again.
            self.admission.complain(peer_id, "unknown_peer", "a message before HELLO")
            return
        self.state.roster.seen(peer_id, now)
        handler = self._handlers.get((role, message.op))
        if handler is None:
            raise ProtocolError(f"a {role} may not send {message.op.value}")
        handler(peer_id, message, payload, now)

    # -- the hot path: tasks in, results out -------------------------------

    def on_submit(self, client_id: bytes, submit: Submit, payload: list, now: float,
                  last: bool = False) -> None:
        state = self.state
        if last and len(submit.tasks) == 1 and not payload:
            # A lone call, the last message of its pass: assign() would come
            # next, and with nothing else queued, it may go to its worker now.
            row = submit.tasks[0]
            if len(row) == 3 and not row[SubmitRow.nframes]:
                assignment = state.submit_lone(client_id, row[0], row[2], now)
                if assignment is not None:
                    self.stats.submitted += 1
                    for message, frames in dispatch_messages(assignment, now,
                                                             self.stats.dispatch_latency):
                        self._send(assignment.worker_id, message, frames)
                    return
        groups = unpack_payloads(submit.tasks, SubmitRow.nframes, payload)
        accepted = 0
        for row, frames in zip(submit.tasks, groups):
            # Inline payloads are kept as the bytes alone: a million queued
            # tasks then need no million one-item lists.
            if len(row) == 3:
                accepted += state.submit(client_id, row[0], row[2] or frames, now)
                continue
            options = row[3]
            accepted += state.submit(client_id, row[0], row[2] or frames, now, options)
            if options.resources and not state.roster.satisfiable(options.resources):
                self.admission.warn_unsatisfiable(client_id, options.resources)
        self.stats.submitted += accepted
        if accepted < len(submit.tasks):
            # A client resubmits what it has no result for after a reconnect.
            log.info("client %s sent %d task id(s) already queued or running; dropped them",
                     client_id.hex(), len(submit.tasks) - accepted)

    def on_results(self, worker_id: bytes, news: WorkerResults, payload: list,
                   now: float) -> None:
        state = self.state
        for_client = self.outbox.for_client
        for client_id, task_id in news.started:
            if state.started(worker_id, (client_id, task_id)):
                for_client(client_id).started.append(task_id)
        if news.output:
            worker = state.workers[worker_id]
            label = f"{worker.host}:{worker.pid}"
            for client_id, task_id, stream, text in news.output:
                if state.started(worker_id, (client_id, task_id)):
                    for_client(client_id).output.append(ClientOutputRow(task_id, stream, text, label))
        results = news.results
        if payload or len(results) != 1 or results[0][WorkerResultRow.nframes]:
            groups = unpack_payloads(results, WorkerResultRow.nframes, payload)
        else:  # one result, inline: what unpack_payloads gives
            groups = ([results[0][WorkerResultRow.inline]],)
        stats = self.stats
        for (client_id, task_id, status, _, _), frames in zip(news.results, groups):
            if state.in_flight.get((client_id, task_id)) != worker_id:
                if state.finish_orphan(worker_id, (client_id, task_id)):
                    continue  # its client has gone
                self.admission.note(worker_id, f"a result for task {task_id} of client "
                                    f"{client_id.hex()}, which it was not given; dropped")
                continue
            task = state.finish(worker_id, (client_id, task_id))
            if task is None:
                continue  # its client has gone
            if status == Status.OK:
                stats.completed += 1
            elif status == Status.UNPICKLE_FAILED:
                stats.unloadable += 1  # the client may send it again, by value
            else:
                stats.failed += 1
                state.workers[worker_id].failed += 1
            stats.task_duration.observe(now - task.time)
            out = for_client(client_id)
            nframes, inline, frames = pack_payload(frames)
            out.results.append(ClientResultRow(task_id, status, nframes, inline))
            out.payload.extend(frames)
        if news.credit:
            state.add_credit(worker_id, news.credit)

    def on_cancel(self, client_id: bytes, cancel: Cancel, payload: list, now: float) -> None:
        if cancel.queued_only:
            # What free slots can take now goes first, as a process pool runs
            # the calls already in its call queue; workers are not asked back.
            self._dispatch()
        self.cancels.cancel(client_id, cancel, time.monotonic())

    def _dispatch(self, now: float | None = None) -> None:
        """``now``: when the pass's last message was read, if any was."""
        state, send = self.state, self._send
        # The flags that assign(), to_steal() and to_preempt() look at first,
        # looked at here: most passes have nothing to give or ask back.
        if state.dispatch_due:
            if not (state.queue.count and state.ready):
                state.dispatch_due = False  # what assign() finds
            else:
                now = time.monotonic() if now is None else now
                latency = self.stats.dispatch_latency
                for assignment in state.assign():
                    for message, payload in dispatch_messages(assignment, now, latency):
                        send(assignment.worker_id, message, payload)
        # Tasks waiting on busy workers while others have nothing to do: ask
        # for them back. The reply's id matches no cancel, so they are requeued.
        if state.steal_due and state.holders and state.ready:
            for worker_id, keys in state.ask_back.to_steal():
                log.debug("asking worker %s back for up to %d waiting task(s): other workers "
                          "are idle", worker_id.hex(), len(keys))
                send(worker_id, Withdraw(self.cancels.next_id(),
                                         [TaskRow(*key) for key in keys]))
        # Tasks waiting on workers that a queued one outranks: asked back the
        # same way, so that the higher one goes first.
        if not state.preempt_due:
            return
        for worker_id, keys in state.ask_back.to_preempt():
            log.debug("asking worker %s back for %d waiting task(s) of lower priority",
                      worker_id.hex(), len(keys))
            send(worker_id, Withdraw(self.cancels.next_id(), [TaskRow(*key) for key in keys]))

    def _flush(self) -> None:
        # Until neither is left: a worker found gone may fail tasks (errors to
        # send now), and a send may find a client gone.
        outbox, clients = self.outbox, self.state.clients
        while outbox.waiting or self._unreachable:
            for client_id, out in outbox.take().items():
                if client_id in clients:
                    for message, payload in results_messages(out):
                        self._send(client_id, message, payload)
            if self._unreachable:
                now = time.monotonic()
                while self._unreachable:
                    self.peers.unreachable(self._unreachable.pop(), now)

    def _send(self, peer_id: bytes, message, payload: list = ()) -> None:
        """The one sender: a peer whose connection is gone is noted for _flush."""
        try:
            send_frames(self.socket, [peer_id, *encode(message, payload)])
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._unreachable.add(peer_id)

    def report(self) -> dict:
        """What ``broker status`` shows: plain values only."""
        return status_report(self.state, self.stats, self.admission.peer_keys, time.monotonic(),
                             address=self.address, pid=os.getpid(), curve=self.zap is not None,
                             uptime=time.time() - self.started_at)


def _woken(events: list, watch_fd: int | None, wake_read: int, zap_fd: int | None,
           zap: ZapHandler | None) -> bool:
    """Answers what woke the loop besides its socket; True if the parent
    process has exited (the loop stops)."""
    fds = {fd for fd, _ in events}
    if watch_fd is not None and watch_fd in fds:
        log.info("parent process has exited; stopping")
        return True
    if wake_read in fds:
        os.read(wake_read, 512)
    if zap_fd is not None and zap_fd in fds:
        # It ends on a receive that finds nothing, which re-arms the ZMQ_FD;
        # nothing else uses that socket.
        zap.handle()
    return False


def _router(context: zmq.Context, curve_key_pair: tuple[bytes, bytes] | None,
            heartbeat_interval: float, liveness: int, max_message_size: int) -> zmq.Socket:
    """The broker's one socket, not yet bound."""
    socket = context.socket(zmq.ROUTER)
    if curve_key_pair is not None:
        socket.curve_server = True
        socket.curve_publickey, socket.curve_secretkey = curve_key_pair
    # Unroutable sends raise instead of vanishing; a peer that reconnects
    # with its id takes over the old connection.
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
    # No high-water mark: ZeroMQ would drop or block at it. Credit bounds
    # what goes to workers; clients bound what comes back to them.
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.setsockopt(zmq.RCVHWM, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_size)
    socket.setsockopt(zmq.LINGER, 0)
    socket.copy_threshold = defaults.COPY_THRESHOLD
    # A connection that libzmq's heartbeats find dead is closed, and then a
    # send to its peer raises (ROUTER_MANDATORY): that is how the broker
    # tells a dead peer from one whose Python threads are held up.
    keep_alive(socket, heartbeat_interval, liveness)
    return socket


def _identity(frame: zmq.Frame) -> tuple[bytes, str]:
    """The CURVE key a message came with, and the address of its peer."""
    try:
        public_key = frame.get("User-Id").encode()
    except (zmq.ZMQError, AttributeError):  # no CURVE identity on this message
        public_key = b""
    try:
        address = frame.get("Peer-Address")
    except zmq.ZMQError:
        address = "an unknown address"
    return public_key, address


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
