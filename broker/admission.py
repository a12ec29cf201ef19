"""Admission: who gets in, and what peers are told about their input.

    HELLO ──> version? key still authorized? ──> WELCOME (+ HEARTBEAT)
                                  no ────────────> REFUSED
    STATS ──> the same checks ──> STATS_REPLY
    bad input ──> note() (a log line, rate-limited), complain() (+ ERROR)
    each interval ──> reload_keys(): peers whose keys were revoked are REFUSED
                      and removed; new_interval(): the limits start again

Replies nobody asked for go to a peer at most once per interval, and to a
bounded number of peers (there is no high-water mark to drop them for a
peer that never reads). No sockets: messages go out through ``send``.
"""
from __future__ import annotations

import logging
from typing import Callable

from zeropool.broker.auth import KeyRing
from zeropool.broker.peers import Peers
from zeropool.broker.report import client_heartbeat
from zeropool.broker.state import BrokerState
from zeropool.protocol import (
    PROTOCOL_VERSION, Error, Hello, ProtocolError, Refused, Role, Stats, StatsReply, Welcome,
)
from zeropool.protocol.defaults import python_minor
from zeropool.protocol.security import key_id

log = logging.getLogger("zeropool.broker")

# Bad-input log lines per heartbeat interval; the rest are counted.
MAX_COMPLAINTS_PER_INTERVAL = 10
# Peers told about their bad input (or sent a status report) per heartbeat
# interval, once each: replies to a peer that never reads them would pile up
# here without bound (there is no high-water mark).
MAX_PEERS_ANSWERED_PER_INTERVAL = 1000


class Admission:
    """HELLO and STATS, authorized keys, and complaints about bad input."""

    def __init__(self, state: BrokerState, peers: Peers, send: Callable, welcome: Welcome,
                 report: Callable[[], dict], keys: KeyRing | None = None) -> None:
        """``report``: the status report, for STATS; ``keys``: under CURVE,
        the authorized keys."""
        self.state = state
        self.peers = peers
        self.send = send
        self.welcome = welcome
        self.report = report
        self.keys = keys
        # Which key each peer said HELLO with, to refuse it when its key is revoked.
        self.peer_keys: dict[bytes, bytes] = {}
        self._complaints = 0
        self._answered: set[bytes] = set()

    def on_hello(self, peer_id: bytes, hello: Hello, payload: list, now: float) -> None:
        if hello.version != PROTOCOL_VERSION:
            self.refuse_version(peer_id, hello.version)
            return
        state = self.state
        known = state.role_of(peer_id)
        if known is not None and known != hello.role.value:
            raise ProtocolError(f"peer registered as {known} now claims to be {hello.role.value}")
        if hello.role is Role.CLIENT:
            if hello.init_frames != len(payload):
                raise ProtocolError("HELLO announces a different number of initializer frames")
            client = state.add_client(peer_id, payload, now)
            client.pid, client.host, client.versions = hello.pid, hello.host, hello.versions
            client.python = python_minor(hello.versions.get("python", ""))
            log.info("client %s joined (host %s, pid %d)", peer_id.hex(), hello.host, hello.pid)
        else:
            if payload:
                raise ProtocolError("a worker's HELLO carries no payload")
            _, expired = state.add_worker(peer_id, hello.credit, now, pid=hello.pid,
                                          host=hello.host, threads=hello.threads,
                                          resources=hello.resources)
            worker = state.workers[peer_id]
            worker.versions = hello.versions
            worker.python = python_minor(hello.versions.get("python", ""))
            self.peers.lose_workers(expired, "rejoined", now)
            for client in state.clients.values():
                client.warned.clear()  # what no worker had, this one may have
            log.info("worker %s joined (host %s, pid %d, %d slots%s)", peer_id.hex(), hello.host,
                     hello.pid, hello.credit,
                     "".join(f", {name}={amount:g}" for name, amount in hello.resources.items()))
        self.send(peer_id, self.welcome)
        # Clients learn the number of workers (and what they run) at once, not
        # at the next heartbeat: an embedded cluster's client waits for its workers.
        heartbeat = client_heartbeat(state.workers)
        for client_id in [peer_id] if hello.role is Role.CLIENT else list(state.clients):
            self.send(client_id, heartbeat)

    def on_stats(self, peer_id: bytes, request: Stats) -> None:
        if request.version != PROTOCOL_VERSION:
            self.refuse_version(peer_id, request.version)
        elif self.may_answer(peer_id):
            self.send(peer_id, StatsReply(self.report()))

    def refuse_version(self, peer_id: bytes, version: int) -> None:
        self.note(peer_id, f"refused: protocol version {version}, the broker speaks "
                  f"{PROTOCOL_VERSION}")
        if self.may_answer(peer_id):
            self.send(peer_id, Refused(
                f"this broker speaks zeropool protocol {PROTOCOL_VERSION}, the peer speaks "
                f"{version}; install the same zeropool version on every host",
                PROTOCOL_VERSION))

    def key_still_valid(self, peer_id: bytes, public_key: bytes, address: str) -> bool:
        """Whether the key this connection authenticated with (at ``address``)
        is still authorized: it may have been removed since the handshake."""
        if public_key in self.keys:
            self.peer_keys[peer_id] = public_key
            return True
        self.note(peer_id, f"refused at {address}: its key {key_id(public_key)} was removed "
                  "from the authorized keys")
        if self.may_answer(peer_id):  # a peer may repeat itself and never read
            self.send(peer_id, Refused(f"this peer's key {key_id(public_key)} is no longer "
                                       "authorized by the broker", PROTOCOL_VERSION))
        return False

    def reload_keys(self, now: float) -> None:
        """Read the authorized keys again; refuse and remove the peers whose
        keys are gone."""
        revoked = self.keys.refresh()
        for peer_id, public_key in list(self.peer_keys.items()):
            role = self.state.role_of(peer_id)
            if role is None:
                del self.peer_keys[peer_id]  # gone by other means
            elif public_key in revoked:
                del self.peer_keys[peer_id]
                log.warning("%s %s refused: its key %s was revoked", role, peer_id.hex(),
                            key_id(public_key))
                self.send(peer_id, Refused(f"this peer's key {key_id(public_key)} was "
                                           "revoked by the broker", PROTOCOL_VERSION))
                if role == "worker":
                    self.peers.lose_workers(self.state.remove_worker(peer_id, lost=False),
                                            "revoked", now)
                else:
                    self.peers.forget_client(peer_id, "was revoked")

    def warn_unsatisfiable(self, client_id: bytes, needs: tuple) -> None:
        """Tell a client, once, that no worker has what its task needs (it
        stays queued: such a worker may join)."""
        client = self.state.clients[client_id]
        if needs in client.warned:
            return
        client.warned.add(needs)
        wanted = ", ".join(f"{name}={amount:g}" for name, amount in needs)
        log.warning("client %s queued tasks that need %s, which no connected worker has",
                    client_id.hex(), wanted)
        self.send(client_id, Error(
            "unsatisfiable", f"tasks that need resources {wanted} stay queued: no worker "
            f"connected to the broker has them. Start one with worker --resources "
            f"{','.join(f'{name}={amount:g}' for name, amount in needs)}, or submit them "
            "with needs that a worker meets"))

    def note(self, peer_id: bytes, text: str) -> None:
        """Log bad input at a bounded rate (the peer is not told)."""
        self._complaints += 1
        if self._complaints <= MAX_COMPLAINTS_PER_INTERVAL:
            log.warning("peer %s: %s", peer_id.hex(), text)
        elif self._complaints == MAX_COMPLAINTS_PER_INTERVAL + 1:
            log.warning("more bad messages this interval; not logging them")

    def complain(self, peer_id: bytes, code: str, text: str) -> None:
        """Log bad input at a bounded rate and tell the peer, then carry on."""
        self.note(peer_id, f"{code}: {text}")
        if self.may_answer(peer_id):
            self.send(peer_id, Error(code, text[:1000]))

    def may_answer(self, peer_id: bytes) -> bool:
        """Whether an unasked-for reply may go to this peer now (see
        MAX_PEERS_ANSWERED_PER_INTERVAL)."""
        answered = self._answered
        if peer_id in answered or len(answered) >= MAX_PEERS_ANSWERED_PER_INTERVAL:
            return False
        answered.add(peer_id)
        return True

    def new_interval(self) -> None:
        """The rate limits start again."""
        self._complaints = 0
        self._answered.clear()
