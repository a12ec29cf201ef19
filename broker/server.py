"""The broker's I/O: one ROUTER socket, one poll loop.

    clients --SUBMIT/CANCEL-->  +-------------------------+  --DISPATCH--> workers
            <--RESULTS-------   | ROUTER  (one address)   |  <--RESULTS---
                                |   decode -> on_<op>()   |
                                |   state.assign()        |  BrokerState: queue,
                                |   flush results         |  in-flight, credit,
                                |   heartbeats, liveness  |  liveness (no I/O)
                                +-------------------------+

Each pass of the loop reads every message already waiting (so one DISPATCH
to a worker and one RESULTS to a client can carry many tasks), hands queued
tasks to workers with credit, flushes results per client, then runs the timed
chores. Payload frames are forwarded as received; the broker decodes only
msgpack headers and never imports the pickling code.

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

import ctypes
import errno
import itertools
import logging
import os
import select
import signal
import threading
import time
from dataclasses import dataclass, field

import zmq

from zeropool.broker.auth import KeyRing, ZapHandler
from zeropool.broker.state import BrokerState, Expired
from zeropool.broker.stats import Stats as Counters
from zeropool.broker.stats import slots
from zeropool.protocol import (
    PROTOCOL_VERSION, Bye, Cancel, CancelReply, ClientResults, Dispatch, Drain, Error, Heartbeat,
    Hello, Op, ProtocolError, Refused, Role, Stats, StatsReply, Status, Submit, Welcome,
    Withdraw, Withdrawn, WorkerResults, decode, encode, header_budget, pack_payload, text_size,
    unpack_payloads,
)
from zeropool.protocol import defaults
from zeropool.protocol.defaults import python_minor
from zeropool.protocol.messages import MAX_VERSION_SETS
from zeropool.protocol.security import key_id
from zeropool.protocol.sockets import keep_alive, readable, recv_frames, send_frames

log = logging.getLogger("zeropool.broker")

# Messages read per pass before dispatching: large enough to batch a burst,
# small enough that a flood from one client cannot starve timed chores.
MAX_READS_PER_PASS = 2000
# Result rows per RESULTS message to a client (rows may carry 4 KiB inline).
MAX_RESULTS_PER_MESSAGE = 1000
# Bad-input log lines per heartbeat interval; the rest are counted.
MAX_COMPLAINTS_PER_INTERVAL = 10
# Peers told about their bad input (or sent a status report) per heartbeat
# interval, once each: replies to a peer that never reads them would pile up
# here without bound (there is no high-water mark).
MAX_PEERS_ANSWERED_PER_INTERVAL = 1000
# A task a cancel asked for may have moved meanwhile (asked back for an idle
# worker, then sent there): the cancel follows it this many times at most.
MAX_CANCEL_CHASES = 3


@dataclass(slots=True)
class _PendingCancel:
    """A client's cancel waiting on workers to give back tasks they hold unstarted."""

    client_id: bytes
    request_id: int
    cancelled: list  # task ids
    # (WITHDRAW id, worker id) -> (when it was asked, task ids asked of it)
    waiting: dict = field(default_factory=dict)
    chases: int = 0


@dataclass(slots=True)
class _Outgoing:
    """Results gathered for one client during a pass."""

    results: list = field(default_factory=list)
    started: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    payload: list = field(default_factory=list)
    output: list = field(default_factory=list)


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
        self.liveness = liveness
        self.max_message_size = max_message_size
        self.context = zmq.Context()
        self.zap: ZapHandler | None = None
        # Which key each peer said HELLO with, to refuse it when its key is revoked.
        self._peer_keys: dict[bytes, bytes] = {}
        if authorized_keys is not None:
            # Before any socket listens: libzmq sends every handshake here.
            self.zap = ZapHandler(self.context, KeyRing(authorized_keys))
        self.socket = self.context.socket(zmq.ROUTER)
        if curve_key_pair is not None:
            self.socket.curve_server = True
            self.socket.curve_publickey, self.socket.curve_secretkey = curve_key_pair
        # Unroutable sends raise instead of vanishing; a peer that reconnects
        # with its id takes over the old connection.
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # No high-water mark: ZeroMQ would drop or block at it. Credit bounds
        # what goes to workers; clients bound what comes back to them.
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.copy_threshold = defaults.COPY_THRESHOLD
        # A connection that libzmq's heartbeats find dead is closed, and then a
        # send to its peer raises (ROUTER_MANDATORY): that is how the broker
        # tells a dead peer from one whose Python threads are held up.
        keep_alive(self.socket, heartbeat_interval, liveness)
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
        self._outgoing: dict[bytes, _Outgoing] = {}
        self._cancels: dict[int, _PendingCancel] = {}
        self._withdraw_ids = itertools.count(1)
        self._unreachable: set[bytes] = set()
        self._complaints = 0
        self._answered: set[bytes] = set()

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
        poller = select.poll()
        for fd in (self.socket.getsockopt(zmq.FD), wake_read, watch_fd, zap_fd):
            if fd is not None:
                poller.register(fd, select.POLLIN)
        next_chores = time.monotonic() + self.heartbeat_interval
        log.info("broker listening on %s (protocol %d, %s)", self.address, PROTOCOL_VERSION,
                 "CURVE: authorized keys only" if self.zap else "no authentication")
        try:
            while not self._stopping:
                timeout = max(0.0, next_chores - time.monotonic())
                if readable(self.socket):  # sends may have taken the edge of one waiting
                    timeout = 0.0
                events = dict(poller.poll(timeout * 1000))
                if watch_fd is not None and watch_fd in events:
                    log.info("parent process has exited; stopping")
                    break
                if wake_read in events:
                    os.read(wake_read, 512)
                if zap_fd is not None and zap_fd in events:
                    # It ends on a receive that finds nothing, which re-arms
                    # the ZMQ_FD; nothing else uses that socket.
                    self.zap.handle()
                self._read_all()
                self._dispatch()
                self._flush()
                now = time.monotonic()
                if now >= next_chores:
                    self._send_heartbeats()  # finds the peers whose connections are gone
                    self._note_silent(now)
                    if self._cancels:
                        self._give_up_on_withdraws(now)
                    self._flush()
                    if self.zap is not None:
                        self._reload_keys()
                    self._complaints = 0
                    self._answered.clear()
                    self.stats.sample(now)
                    # Against a change that should have let a task go out and
                    # did not say so: assign() looks again once an interval.
                    self.state.dispatch_due = True
                    next_chores = now + self.heartbeat_interval
            self._say_goodbye()
        finally:
            if previous_wakeup is not None:
                signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_read)
            os.close(wake_write)
            self.close()
        log.info("broker stopped")

    def _read_all(self) -> None:
        for _ in range(MAX_READS_PER_PASS):
            if not readable(self.socket):
                return
            frames = recv_frames(self.socket)  # the header stays a Frame: it holds the key
            peer_id = frames[0]
            if len(frames) < 2:
                self._complain(peer_id, "bad_message", "an empty message")
                continue
            try:
                self._handle(peer_id, frames[1:])
            except ProtocolError as exc:
                self._complain(peer_id, "bad_message", str(exc))

    def _handle(self, peer_id: bytes, frames: list) -> None:
        now = time.monotonic()
        role = self.state.role_of(peer_id)
        try:
            message, payload = decode(frames, Role.WORKER if role == "worker" else None)
        except ProtocolError:
            if role is not None:
                raise
            message = None
        if message is not None and message.op is Op.HELLO:
            if self.zap is not None and not self._key_still_valid(peer_id, frames[0]):
                return
            return self.on_hello(peer_id, message, payload, now)
        if message is not None and message.op is Op.STATS:
            if self.zap is not None and not self._key_still_valid(peer_id, frames[0]):
                return
            return self.on_stats(peer_id, message)
        if role is None:
            # Also a peer this broker declared dead, or one from before a restart
            # (whose RESULTS do not parse as a client's): it must say HELLO again.
            self._complain(peer_id, "unknown_peer", "a message before HELLO")
            return
        self.state.seen(peer_id, now)
        handler = _HANDLERS.get((role, message.op))
        if handler is None:
            raise ProtocolError(f"a {role} may not send {message.op.value}")
        handler(self, peer_id, message, payload)

    def _key_still_valid(self, peer_id: bytes, frame: zmq.Frame) -> bool:
        """Whether the key this connection authenticated with is still authorized
        (it may have been removed since the handshake)."""
        try:
            public_key = frame.get("User-Id").encode()
        except (zmq.ZMQError, AttributeError):  # no CURVE identity on this message
            public_key = b""
        if public_key in self.zap.keys:
            self._peer_keys[peer_id] = public_key
            return True
        try:
            address = frame.get("Peer-Address")
        except zmq.ZMQError:
            address = "an unknown address"
        self._note(peer_id, f"refused at {address}: its key {key_id(public_key)} was removed "
                   "from the authorized keys")
        if self._may_answer(peer_id):  # a peer may repeat itself and never read
            self._send(peer_id, Refused(f"this peer's key {key_id(public_key)} is no longer "
                                        "authorized by the broker", PROTOCOL_VERSION))
        return False

    def _reload_keys(self) -> None:
        self.zap.refusals = 0
        revoked = self.zap.keys.refresh()
        for peer_id, public_key in list(self._peer_keys.items()):
            role = self.state.role_of(peer_id)
            if role is None:
                del self._peer_keys[peer_id]  # gone by other means
            elif public_key in revoked:
                del self._peer_keys[peer_id]
                log.warning("%s %s refused: its key %s was revoked", role, peer_id.hex(),
                            key_id(public_key))
                self._send(peer_id, Refused(f"this peer's key {key_id(public_key)} was "
                                            "revoked by the broker", PROTOCOL_VERSION))
                if role == "worker":
                    self._report(self.state.remove_worker(peer_id, lost=False), "revoked")
                else:
                    self._forget_client(peer_id, "was revoked")
        self._flush()

    # -- handlers ----------------------------------------------------------

    def on_hello(self, peer_id: bytes, hello: Hello, payload: list, now: float) -> None:
        if hello.version != PROTOCOL_VERSION:
            self._refuse_version(peer_id, hello.version)
            return
        known = self.state.role_of(peer_id)
        if known is not None and known != hello.role.value:
            raise ProtocolError(f"peer registered as {known} now claims to be {hello.role.value}")
        if hello.role is Role.CLIENT:
            if hello.init_frames != len(payload):
                raise ProtocolError("HELLO announces a different number of initializer frames")
            client = self.state.add_client(peer_id, payload, now)
            client.pid, client.host, client.versions = hello.pid, hello.host, hello.versions
            client.python = python_minor(hello.versions.get("python", ""))
            log.info("client %s joined (host %s, pid %d)", peer_id.hex(), hello.host, hello.pid)
        else:
            if payload:
                raise ProtocolError("a worker's HELLO carries no payload")
            _, expired = self.state.add_worker(peer_id, hello.credit, now, pid=hello.pid,
                                               host=hello.host, threads=hello.threads,
                                               resources=hello.resources)
            worker = self.state.workers[peer_id]
            worker.versions = hello.versions
            worker.python = python_minor(hello.versions.get("python", ""))
            self._report(expired, "rejoined")
            for client in self.state.clients.values():
                client.warned.clear()  # what no worker had, this one may have
            log.info("worker %s joined (host %s, pid %d, %d slots%s)", peer_id.hex(), hello.host,
                     hello.pid, hello.credit,
                     "".join(f", {name}={amount:g}" for name, amount in hello.resources.items()))
        self._send(peer_id, Welcome(PROTOCOL_VERSION, self.heartbeat_interval, self.liveness,
                                    self.max_message_size))
        # Clients learn the number of workers (and what they run) at once, not
        # at the next heartbeat: an embedded cluster's client waits for its workers.
        heartbeat = self._client_heartbeat()
        for client_id in [peer_id] if hello.role is Role.CLIENT else list(self.state.clients):
            self._send(client_id, heartbeat)

    def on_stats(self, peer_id: bytes, request: Stats) -> None:
        if request.version != PROTOCOL_VERSION:
            self._refuse_version(peer_id, request.version)
        elif self._may_answer(peer_id):
            self._send(peer_id, StatsReply(self.report()))

    def _refuse_version(self, peer_id: bytes, version: int) -> None:
        self._note(peer_id, f"refused: protocol version {version}, the broker speaks "
                   f"{PROTOCOL_VERSION}")
        if self._may_answer(peer_id):
            self._send(peer_id, Refused(
                f"this broker speaks zeropool protocol {PROTOCOL_VERSION}, the peer speaks "
                f"{version}; install the same zeropool version on every host",
                PROTOCOL_VERSION))

    def report(self) -> dict:
        """What ``broker status`` shows: plain values only."""
        now, state, stats = time.monotonic(), self.state, self.stats
        demand = slots(state)
        workers = [{
            "id": _text(w.worker_id), "host": w.host, "pid": w.pid, "threads": w.threads,
            "busy": sum(t.started for t in w.in_flight.values()), "held": w.occupied,
            "done": w.done, "failed": w.failed, "resources": w.resources, "free": w.free,
            "versions": w.versions,
            "draining": w.draining, "last_heartbeat": round(now - w.last_seen, 3),
            "key": key_id(self._peer_keys[w.worker_id]) if w.worker_id in self._peer_keys
            else None,
        } for w in state.workers.values()]
        clients = [{
            "id": _text(c.client_id), "host": c.host, "pid": c.pid, "queued": c.queued,
            "in_flight": c.in_flight, "done": c.done,
        } for c in state.clients.values()]
        return {
            "address": self.address, "pid": os.getpid(), "protocol": PROTOCOL_VERSION,
            "curve": self.zap is not None, "uptime": round(time.time() - self.started_at, 1),
            "queued": state.queued_count, "in_flight": len(state.in_flight),
            "tasks_per_second": round(stats.rate(now), 2), "submitted": stats.submitted,
            "completed": stats.completed, "failed": stats.failed, "requeued": stats.requeued,
            "cancelled": stats.cancelled, "unloadable": stats.unloadable,
            # What autoscaling reads (zeropool_demand_slots, zeropool_capacity_slots).
            "demand_slots": demand.demand, "capacity_slots": demand.capacity,
            "workers": workers, "clients": clients,
            # msgpack maps need text keys here: the report is decoded strictly.
            "queued_by_priority": {str(p): n for p, n in
                                   sorted(state.queued_by_priority().items(), reverse=True)},
            "unsatisfiable": [{"resources": dict(needs), "queued": count}
                              for needs, count in state.unsatisfiable()],
        }

    def on_submit(self, client_id: bytes, submit: Submit, payload: list) -> None:
        groups = unpack_payloads(submit.tasks, 1, payload)
        now = time.monotonic()
        accepted = 0
        state = self.state
        for row, frames in zip(submit.tasks, groups):
            # Inline payloads are kept as the bytes alone: a million queued
            # tasks then need no million one-item lists.
            if len(row) == 3:
                accepted += state.submit(client_id, row[0], row[2] or frames, now)
                continue
            options = row[3]
            accepted += state.submit(client_id, row[0], row[2] or frames, now, options)
            if options.resources and not state.satisfiable(options.resources):
                self._warn_unsatisfiable(client_id, options.resources)
        self.stats.submitted += accepted
        if accepted < len(submit.tasks):
            # A client resubmits what it has no result for after a reconnect.
            log.info("client %s sent %d task id(s) already queued or running; dropped them",
                     client_id.hex(), len(submit.tasks) - accepted)

    def _warn_unsatisfiable(self, client_id: bytes, needs: tuple) -> None:
        """Tell a client, once, that no worker has what its task needs (it
        stays queued: such a worker may join)."""
        client = self.state.clients[client_id]
        if needs in client.warned:
            return
        client.warned.add(needs)
        wanted = ", ".join(f"{name}={amount:g}" for name, amount in needs)
        log.warning("client %s queued tasks that need %s, which no connected worker has",
                    client_id.hex(), wanted)
        self._send(client_id, Error(
            "unsatisfiable", f"tasks that need resources {wanted} stay queued: no worker "
            f"connected to the broker has them. Start one with worker --resources "
            f"{','.join(f'{name}={amount:g}' for name, amount in needs)}, or submit them "
            "with needs that a worker meets"))

    def on_cancel(self, client_id: bytes, cancel: Cancel, payload: list) -> None:
        if cancel.queued_only:
            # What free slots can take now goes first, as a process pool runs
            # the calls already in its call queue; workers are not asked back.
            self._dispatch()
        cancelled = self.state.cancel(client_id, cancel.task_ids)
        self.stats.cancelled += len(cancelled)
        held = {} if cancel.queued_only else self.state.unstarted(client_id, cancel.task_ids)
        if not held:
            self._send(client_id, CancelReply(cancel.request_id, cancelled))
            return
        # Workers may hold some of them unstarted (prefetched): ask for them back.
        self._ask_back(_PendingCancel(client_id, cancel.request_id, cancelled), held)

    def _ask_back(self, pending: _PendingCancel, held: dict) -> None:
        """Ask workers for the tasks of a cancel they hold unstarted (worker id -> task ids)."""
        request_id = next(self._withdraw_ids)
        self._cancels[request_id] = pending
        now = time.monotonic()
        for worker_id, task_ids in held.items():
            pending.waiting[request_id, worker_id] = (now, task_ids)
            self._send(worker_id, Withdraw(request_id, [[pending.client_id, t] for t in task_ids]))

    def on_withdrawn(self, worker_id: bytes, news: Withdrawn, payload: list) -> None:
        if not news.request_id:
            # Unasked: it is busy with long tasks and takes back its unused credit.
            self.state.drop_credit(worker_id)
            taken = self.state.withdraw(worker_id, news.tasks, requeue=True)
            log.debug("worker %s took back its unused credit and gave back %d task(s) "
                      "waiting behind long ones", worker_id.hex(), len(taken))
        else:
            pending = self._cancels.get(news.request_id)
            asked = (pending.waiting.pop((news.request_id, worker_id), None)
                     if pending is not None else None)
            if asked is None:  # for idle workers; or its client has gone meanwhile
                taken = self.state.withdraw(worker_id, news.tasks, requeue=True)
                log.debug("worker %s gave back %d task(s) for idle workers", worker_id.hex(),
                          len(taken))
            else:
                asked_at, asked = asked
                mine = {(pending.client_id, task_id) for task_id in asked}
                taken = self.state.withdraw(
                    worker_id, [row for row in news.tasks if tuple(row) in mine], requeue=False)
                log.debug("worker %s gave back %d task(s) to cancel", worker_id.hex(),
                          len(taken))
                self.stats.cancelled += len(taken)
                pending.cancelled.extend(task_id for _, task_id in taken)
                self._seek(pending, asked_at, set(asked) - {task_id for _, task_id in taken})
                self._answer_cancel(news.request_id)
        if news.credit:
            self.state.add_credit(worker_id, news.credit)

    def _seek(self, pending: _PendingCancel, asked_at: float, task_ids: set) -> None:
        """Tasks of a cancel that a worker asked at ``asked_at`` did not give back
        (or could not: it died). They may have come back meanwhile, unasked or
        asked for an idle worker: into the queue, where the cancel still
        applies, or out again to another worker, which the worker's answer does
        not cover, so that one is asked too."""
        if pending.client_id not in self.state.clients:
            return
        cancelled = self.state.cancel(pending.client_id, list(task_ids))
        self.stats.cancelled += len(cancelled)
        pending.cancelled.extend(cancelled)
        task_ids.difference_update(cancelled)
        if task_ids and pending.chases < MAX_CANCEL_CHASES:
            moved = self.state.unstarted(pending.client_id, list(task_ids), since=asked_at)
            if moved:
                pending.chases += 1
                self._ask_back(pending, moved)

    def _answer_cancel(self, request_id: int) -> None:
        """Once no worker owes an answer to WITHDRAW ``request_id``, forget it;
        once none owes one for its cancel at all, answer the client."""
        pending = self._cancels[request_id]
        if any(asked == request_id for asked, _ in pending.waiting):
            return
        del self._cancels[request_id]
        if not pending.waiting and pending.client_id in self.state.clients:
            self._send(pending.client_id, CancelReply(pending.request_id, pending.cancelled))

    def _give_up_on_withdraws(self, now: float) -> None:
        """A worker that has not answered a cancel's WITHDRAW in the time it
        takes to find a dead one lives but is held up (a task holding its
        GIL): its part of the cancel is answered as if it gave nothing back
        (those tasks may run), so that cancel() does not wait as long as that
        task runs. Its late answer requeues what it gives back."""
        deadline = now - self.state.peer_timeout - 2 * self.heartbeat_interval
        for request_id, pending in list(self._cancels.items()):
            if request_id not in self._cancels:
                continue  # answered meanwhile, under another of its WITHDRAW ids
            late = [key for key, (asked_at, _) in pending.waiting.items()
                    if key[0] == request_id and asked_at < deadline]
            for key in late:
                asked_at, _ = pending.waiting.pop(key)
                log.info("worker %s has not answered for %.1fs; cancelling without the "
                         "tasks it holds", key[1].hex(), now - asked_at)
            if late:
                self._answer_cancel(request_id)

    def _workers_gone(self, worker_ids: list) -> None:
        """Cancels waiting on workers that are gone: their tasks are back in the
        queue (or failed), so the broker answers for them."""
        gone = set(worker_ids)
        for request_id, pending in list(self._cancels.items()):
            for key in [key for key in pending.waiting if key[0] == request_id and key[1] in gone]:
                asked_at, task_ids = pending.waiting.pop(key)
                self._seek(pending, asked_at, set(task_ids))
            self._answer_cancel(request_id)

    def on_results(self, worker_id: bytes, news: WorkerResults, payload: list) -> None:
        for client_id, task_id in news.started:
            if self.state.started(worker_id, (client_id, task_id)):
                self._outgoing_for(client_id).started.append(task_id)
        if news.output:
            worker = self.state.workers[worker_id]
            label = f"{worker.host}:{worker.pid}"
            for client_id, task_id, stream, text in news.output:
                if self.state.started(worker_id, (client_id, task_id)):
                    self._outgoing_for(client_id).output.append([task_id, stream, text, label])
        groups = unpack_payloads(news.results, 3, payload)
        now = time.monotonic()
        stats = self.stats
        for (client_id, task_id, status, _, _), frames in zip(news.results, groups):
            if self.state.in_flight.get((client_id, task_id)) != worker_id:
                if self.state.finish_orphan(worker_id, (client_id, task_id)):
                    continue  # its client has gone
                self._note(worker_id, f"a result for task {task_id} of client "
                           f"{client_id.hex()}, which it was not given; dropped")
                continue
            task = self.state.finish(worker_id, (client_id, task_id))
            if task is None:
                continue  # its client has gone
            if status == Status.OK:
                stats.completed += 1
            elif status == Status.UNPICKLE_FAILED:
                stats.unloadable += 1  # the client may send it again, by value
            else:
                stats.failed += 1
                self.state.workers[worker_id].failed += 1
            stats.task_duration.observe(now - task.time)
            out = self._outgoing_for(client_id)
            nframes, inline, frames = pack_payload(frames)
            out.results.append([task_id, status, nframes, inline])
            out.payload.extend(frames)
        if news.credit:
            self.state.add_credit(worker_id, news.credit)

    def on_heartbeat(self, peer_id: bytes, heartbeat: Heartbeat, payload: list) -> None:
        pass  # being heard from is all a heartbeat says

    def on_drain(self, worker_id: bytes, drain: Drain, payload: list) -> None:
        self.state.drain(worker_id)
        log.info("worker %s is draining: %d task(s) left on it", worker_id.hex(),
                 len(self.state.workers[worker_id].in_flight))
        self._send(worker_id, Drain())

    def on_worker_bye(self, worker_id: bytes, bye: Bye, payload: list) -> None:
        expired = self.state.remove_worker(worker_id, lost=False)
        log.info("worker %s left (%s)", worker_id.hex(), bye.reason or "no reason given")
        self._report(expired, "left")

    def on_client_bye(self, client_id: bytes, bye: Bye, payload: list) -> None:
        self._forget_client(client_id, "left")

    def _forget_client(self, client_id: bytes, why: str) -> None:
        dropped = self.state.remove_client(client_id)
        self._drop_cancels(client_id)
        if dropped:
            log.warning("client %s %s; dropped its %d queued task(s)", client_id.hex(), why,
                        dropped)
            _return_memory_to_the_system()
        else:
            log.info("client %s %s", client_id.hex(), why)

    def _drop_cancels(self, client_id: bytes) -> None:
        """A gone client's cancels: nobody waits for their answers (its tasks'
        answers from workers are requeued or dropped as any other's)."""
        for request_id in [r for r, p in self._cancels.items() if p.client_id == client_id]:
            del self._cancels[request_id]

    # -- sending -----------------------------------------------------------

    def _outgoing_for(self, client_id: bytes) -> _Outgoing:
        out = self._outgoing.get(client_id)
        if out is None:
            out = self._outgoing[client_id] = _Outgoing()
        return out

    def _send(self, peer_id: bytes, message, payload: list = ()) -> None:
        try:
            send_frames(self.socket, [peer_id, *encode(message, payload)])
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._unreachable.add(peer_id)

    def _dispatch(self) -> None:
        now = time.monotonic()
        latency = self.stats.dispatch_latency
        budget = header_budget(defaults.MAX_MESSAGE_SIZE)  # what a worker accepts
        for assignment in self.state.assign():
            rows, payload, size = [], [], 0
            for client_id, frames in assignment.inits:
                payload.extend(frames)
            inits = [[client_id, len(frames)] for client_id, frames in assignment.inits]
            pythons = assignment.pythons
            for task in assignment.tasks:
                if size >= budget:
                    self._send(assignment.worker_id, Dispatch(rows, inits, pythons), payload)
                    rows, payload, size, inits, pythons = [], [], 0, [], []
                nframes, inline, frames = pack_payload(task.frames)
                options = task.options
                if options.priority or options.timeout:  # what the worker needs to know
                    rows.append([task.client_id, task.task_id, nframes, inline, options])
                else:
                    rows.append([task.client_id, task.task_id, nframes, inline])
                payload.extend(frames)
                size += len(inline) + 16
                queued = task.dispatch(now)
                if queued is not None:
                    latency.observe(queued)
            self._send(assignment.worker_id, Dispatch(rows, inits, pythons), payload)
        # Tasks waiting on busy workers while others have nothing to do: ask
        # for them back. The reply's id matches no cancel, so they are requeued.
        for worker_id, keys in self.state.to_steal():
            log.debug("asking worker %s back for up to %d waiting task(s): other workers "
                      "are idle", worker_id.hex(), len(keys))
            self._send(worker_id, Withdraw(next(self._withdraw_ids), [list(key) for key in keys]))
        # Tasks waiting on workers that a queued one outranks: asked back the
        # same way, so that the higher one goes first.
        for worker_id, keys in self.state.to_preempt():
            log.debug("asking worker %s back for %d waiting task(s) of lower priority",
                      worker_id.hex(), len(keys))
            self._send(worker_id, Withdraw(next(self._withdraw_ids), [list(key) for key in keys]))

    def _flush(self) -> None:
        # Until neither is left: a worker found gone may fail tasks (errors to
        # send now), and a send may find a client gone.
        while self._outgoing or self._unreachable:
            outgoing, self._outgoing = self._outgoing, {}
            for client_id, out in outgoing.items():
                if client_id in self.state.clients:
                    self._send_results(client_id, out)
            while self._unreachable:
                peer_id = self._unreachable.pop()
                role = self.state.role_of(peer_id)
                if role is None:
                    continue
                silence = self._silence(peer_id)
                if role == "worker":
                    self._report(self.state.remove_worker(peer_id, lost=True,
                                                          now=time.monotonic()),
                                 silence or "unreachable")
                else:
                    self._forget_client(peer_id, silence or "is unreachable")

    def _send_results(self, client_id: bytes, out: _Outgoing) -> None:
        """As many RESULTS as it takes to keep each header within its budget
        (inline results and output travel in it): output first, since it
        precedes the results of its tasks; news and errors with the first."""
        budget = header_budget(defaults.MAX_MESSAGE_SIZE)  # what a client accepts
        message = ClientResults([], out.started, out.errors)
        payload, size, frame = [], 0, 0
        for row in out.output:
            if size >= budget:
                self._send(client_id, message, payload)
                message, payload, size = ClientResults([]), [], 0
            message.output.append(row)
            size += text_size(row[2])
        for row in out.results:
            if size >= budget or len(message.results) >= MAX_RESULTS_PER_MESSAGE:
                self._send(client_id, message, payload)
                message, payload, size = ClientResults([]), [], 0
            message.results.append(row)
            payload.extend(out.payload[frame:frame + row[2]])
            frame += row[2]
            size += len(row[3]) + 16
        self._send(client_id, message, payload)

    def _send_heartbeats(self) -> None:
        heartbeat = Heartbeat(len(self.state.workers))
        for worker in list(self.state.workers.values()):
            if worker.forget:
                self._send(worker.worker_id, Heartbeat(heartbeat.workers, worker.forget))
                worker.forget = []
            else:
                self._send(worker.worker_id, heartbeat)
        if self.state.clients:
            heartbeat = self._client_heartbeat()
        for client_id in list(self.state.clients):
            self._send(client_id, heartbeat)

    def _client_heartbeat(self) -> Heartbeat:
        """The worker count, and the distinct versions the workers run."""
        distinct = {tuple((name, w.versions[name]) for name in _VERSION_NAMES
                          if name in w.versions)
                    for w in self.state.workers.values() if w.versions}
        return Heartbeat(len(self.state.workers),
                         versions=[dict(v) for v in sorted(distinct)[:MAX_VERSION_SETS]])

    def _note_silent(self, now: float) -> None:
        """Peers silent for a liveness window whose connections live on: they
        are kept (their tasks with them), as a process pool waits for a call
        that holds the GIL; the log says so once."""
        for peer_id in self.state.silent(now):
            if peer_id not in self._unreachable:
                log.info("%s %s silent for %.1fs but still connected (a call holding the GIL, "
                         "or a loaded host?); keeping it", self.state.role_of(peer_id),
                         peer_id.hex(), self.state.peer_timeout)

    def _silence(self, peer_id: bytes) -> str | None:
        """For a peer found unreachable: how long it had been silent, if long
        enough that libzmq's heartbeats closed its connection (a stopped
        process or a cut link), not its process (a closed connection is seen
        within two heartbeat intervals)."""
        peer = self.state.workers.get(peer_id) or self.state.clients.get(peer_id)
        silence = time.monotonic() - peer.last_seen
        return f"silent for {silence:.1f}s" if silence >= self.state.peer_timeout / 2 else None

    def _report(self, expired: Expired, why: str) -> None:
        """Log lost workers and fail poison tasks back to their clients."""
        self.stats.requeued += expired.requeued
        self.stats.failed += len(expired.poisoned) + len(expired.timed_out) + len(expired.stopped)
        for task in expired.timed_out:
            self._outgoing_for(task.client_id).errors.append([task.task_id, "timeout", (
                f"the task ran longer than its timeout of {task.options.timeout:g}s and its "
                "worker process died meanwhile (a task that holds the GIL is stopped by the "
                "worker's watchdog, which ends the process); it is not run again")])
        for task in expired.stopped:
            self._outgoing_for(task.client_id).errors.append([task.task_id, "worker_lost", (
                f"task {task.task_id} may have been running when its worker process left "
                f"or was replaced ({why}; another task there may have run past its timeout), "
                "and options(retries=0) forbids running it again")])
        if expired.workers and self._cancels:
            self._workers_gone(expired.workers)
        if expired.workers and why != "left":
            log.warning("worker(s) %s %s; %d task(s) requeued",
                        ", ".join(w.hex() for w in expired.workers), why, expired.requeued)
        for task in expired.poisoned:
            workers = ", ".join(w.hex() for w in task.lost_on)
            lost = (f"task {task.task_id} was running on {len(task.lost_on)} worker"
                    f"{'s' if len(task.lost_on) > 1 else ''} that died ({workers})")
            retries = task.options.retries
            if retries is None:
                why = ("; it probably crashes them (os._exit, a segfault, running out of "
                       "memory), so it is not retried again")
            else:
                why = (f", and may be retried {retries} time{'s' if retries != 1 else ''} "
                       "(options(retries=...)), so it is not retried again")
            self._outgoing_for(task.client_id).errors.append([task.task_id, "worker_lost",
                                                              lost + why])
            log.warning("task %d of client %s failed: lost %d workers", task.task_id,
                        task.client_id.hex(), len(task.lost_on))

    def _say_goodbye(self) -> None:
        for peer_id in [*self.state.workers, *self.state.clients]:
            self._send(peer_id, Bye("broker stopping"))

    def _may_answer(self, peer_id: bytes) -> bool:
        """Whether an unasked-for reply may go to this peer now (see
        MAX_PEERS_ANSWERED_PER_INTERVAL)."""
        if peer_id in self._answered or len(self._answered) >= MAX_PEERS_ANSWERED_PER_INTERVAL:
            return False
        self._answered.add(peer_id)
        return True

    def _note(self, peer_id: bytes, text: str) -> None:
        """Log bad input at a bounded rate (the peer is not told)."""
        self._complaints += 1
        if self._complaints <= MAX_COMPLAINTS_PER_INTERVAL:
            log.warning("peer %s: %s", peer_id.hex(), text)
        elif self._complaints == MAX_COMPLAINTS_PER_INTERVAL + 1:
            log.warning("more bad messages this interval; not logging them")

    def _complain(self, peer_id: bytes, code: str, text: str) -> None:
        """Log bad input at a bounded rate and tell the peer, then carry on."""
        self._note(peer_id, f"{code}: {text}")
        if self._may_answer(peer_id):
            self._send(peer_id, Error(code, text[:1000]))


def _return_memory_to_the_system() -> None:
    """After dropping a big queue: glibc keeps freed small blocks in its heap
    otherwise, and a long-lived broker should shrink back to its idle size."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _text(peer_id: bytes) -> str:
    return peer_id.decode("utf-8", "backslashreplace")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# What clients compare (see Hello.versions); a worker may say more.
_VERSION_NAMES = ("python", "zeropool", "cloudpickle")

_HANDLERS = {
    ("client", Op.SUBMIT): Broker.on_submit,
    ("client", Op.CANCEL): Broker.on_cancel,
    ("client", Op.HEARTBEAT): Broker.on_heartbeat,
    ("client", Op.BYE): Broker.on_client_bye,
    ("worker", Op.RESULTS): Broker.on_results,
    ("worker", Op.HEARTBEAT): Broker.on_heartbeat,
    ("worker", Op.DRAIN): Broker.on_drain,
    ("worker", Op.BYE): Broker.on_worker_bye,
    ("worker", Op.WITHDRAWN): Broker.on_withdrawn,
}
