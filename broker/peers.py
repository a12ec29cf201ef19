"""Peers after HELLO: heartbeats, drain, departures and losses.

    DRAIN, BYE ───────────────> on_drain / on_worker_bye / on_client_bye
    a send finds a peer gone ─> unreachable() ─┐
    a worker rejoins, a key is revoked ────────┴> lose_workers / forget_client
                                                  (errors for failed tasks
                                                   into the Outbox; cancels
                                                   waiting on them answered)
    each interval ────────────> heartbeats(), note_silent()

No sockets: messages go out through the ``send`` it is given.
"""
from __future__ import annotations

import ctypes
import logging
from typing import Callable

from zeropool.broker.cancels import CancelChaser
from zeropool.broker.outbox import Outbox
from zeropool.broker.report import client_heartbeat
from zeropool.broker.state import BrokerState, Expired
from zeropool.broker.stats import Stats
from zeropool.protocol import Bye, Drain, Heartbeat

log = logging.getLogger("zeropool.broker")


class Peers:
    """What the broker does as workers and clients come, stay and go."""

    def __init__(self, state: BrokerState, stats: Stats, outbox: Outbox,
                 cancels: CancelChaser, send: Callable) -> None:
        self.state = state
        self.stats = stats
        self.outbox = outbox
        self.cancels = cancels
        self.send = send

    def on_heartbeat(self, peer_id: bytes, heartbeat: Heartbeat, payload: list,
                     now: float) -> None:
        pass  # being heard from is all a heartbeat says

    def on_drain(self, worker_id: bytes, drain: Drain, payload: list, now: float) -> None:
        self.state.drain(worker_id)
        log.info("worker %s is draining: %d task(s) left on it", worker_id.hex(),
                 len(self.state.workers[worker_id].in_flight))
        self.send(worker_id, Drain())

    def on_worker_bye(self, worker_id: bytes, bye: Bye, payload: list, now: float) -> None:
        expired = self.state.remove_worker(worker_id, lost=False)
        log.info("worker %s left (%s)", worker_id.hex(), bye.reason or "no reason given")
        self.lose_workers(expired, "left", now)

    def on_client_bye(self, client_id: bytes, bye: Bye, payload: list, now: float) -> None:
        self.forget_client(client_id, "left")

    def unreachable(self, peer_id: bytes, now: float) -> None:
        """A send found this peer's connection closed: it is gone."""
        role = self.state.role_of(peer_id)
        if role is None:
            return
        silence = self._silence(peer_id, now)
        if role == "worker":
            self.lose_workers(self.state.remove_worker(peer_id, lost=True, now=now),
                              silence or "unreachable", now)
        else:
            self.forget_client(peer_id, silence or "is unreachable")

    def lose_workers(self, expired: Expired, why: str, now: float) -> None:
        """Log lost workers and fail poison tasks back to their clients."""
        self.stats.requeued += expired.requeued
        self.stats.failed += len(expired.poisoned) + len(expired.timed_out) + len(expired.stopped)
        self.outbox.fail(expired, why)
        if expired.workers and self.cancels.pending:
            self.cancels.workers_gone(expired.workers, now)
        if expired.workers and why != "left":
            log.warning("worker(s) %s %s; %d task(s) requeued",
                        ", ".join(w.hex() for w in expired.workers), why, expired.requeued)
        for task in expired.poisoned:
            log.warning("task %d of client %s failed: lost %d workers", task.task_id,
                        task.client_id.hex(), len(task.lost_on))

    def forget_client(self, client_id: bytes, why: str) -> None:
        dropped = self.state.remove_client(client_id)
        self.cancels.drop_client(client_id)
        if dropped:
            log.warning("client %s %s; dropped its %d queued task(s)", client_id.hex(), why,
                        dropped)
            _return_memory_to_the_system()
        else:
            log.info("client %s %s", client_id.hex(), why)

    def heartbeats(self) -> None:
        """A HEARTBEAT to every peer: workers hear of gone clients, clients of
        the workers' count and versions."""
        state = self.state
        heartbeat = Heartbeat(len(state.workers))
        for worker in list(state.workers.values()):
            if worker.forget:
                self.send(worker.worker_id, Heartbeat(heartbeat.workers, worker.forget))
                worker.forget = []
            else:
                self.send(worker.worker_id, heartbeat)
        if state.clients:
            heartbeat = client_heartbeat(state.workers)
        for client_id in list(state.clients):
            self.send(client_id, heartbeat)

    def note_silent(self, now: float, unreachable: set) -> None:
        """Peers silent for a liveness window whose connections live on: they
        are kept (their tasks with them), as a process pool waits for a call
        that holds the GIL; the log says so once."""
        for peer_id in self.state.roster.silent(now):
            if peer_id not in unreachable:
                log.info("%s %s silent for %.1fs but still connected (a call holding the GIL, "
                         "or a loaded host?); keeping it", self.state.role_of(peer_id),
                         peer_id.hex(), self.state.peer_timeout)

    def goodbye(self) -> None:
        for peer_id in [*self.state.workers, *self.state.clients]:
            self.send(peer_id, Bye("broker stopping"))

    def _silence(self, peer_id: bytes, now: float) -> str | None:
        """For a peer found unreachable: how long it had been silent, if long
        enough that libzmq's heartbeats closed its connection (a stopped
        process or a cut link), not its process (a closed connection is seen
        within two heartbeat intervals)."""
        peer = self.state.workers.get(peer_id) or self.state.clients.get(peer_id)
        silence = now - peer.last_seen
        return f"silent for {silence:.1f}s" if silence >= self.state.peer_timeout / 2 else None


def _return_memory_to_the_system() -> None:
    """After dropping a big queue: glibc keeps freed small blocks in its heap
    otherwise, and a long-lived broker should shrink back to its idle size."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
