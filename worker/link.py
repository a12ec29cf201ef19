"""A worker's connection to its broker: the DEALER socket and its plumbing.

Everything that knows the socket is here: connecting (a new routing id each
time) and greeting, sending, the heartbeat and silence numbers, reconnecting
with a delay that doubles up to a cap, the handshake watch, and the sleep in
``poll``, where the socket's turn (protocol.sockets.SocketTurn) lets a task
thread use it (see worker/handover.py). The agent's loop decides what to say
and when to start over; this class only carries it out. It is meant to give
way to a DEALER connection class shared with the client: what the agent and
the handover use of it is its public names (``socket``, ``turn``, ``waker``,
``broker_seen``, ``last_send``, the heartbeat numbers, and the methods).
"""
from __future__ import annotations

import logging
import os
import select
import socket as socketlib
import time
from typing import Callable

import zmq

from zeropool.protocol import Welcome, defaults, encode
from zeropool.protocol.security import HandshakeWatch, Security, close_watched
from zeropool.protocol.sockets import NOBLOCK, SocketTurn, keep_alive, send_frames
from zeropool.protocol.waker import Waker

log = logging.getLogger("zeropool.worker")


class Link:
    """The worker's socket, and who may use it when (``turn``)."""

    def __init__(self, address: str, greeting: Callable[[], list], *,
                 heartbeat_interval: float, liveness: int, max_message_size: int,
                 security: Security | None) -> None:
        self.address = address
        self._greeting = greeting  # the messages a new connection starts with
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self._max_message_size = max_message_size
        self._security = security
        self.host = socketlib.gethostname()[:64]
        self._name = f"w-{self.host}-{os.getpid()}-{os.urandom(3).hex()}"
        self._connections = 0
        self.worker_id = b""  # per connection, see connect
        self._context = zmq.Context()
        self.socket: zmq.Socket | None = None
        self._handshake: HandshakeWatch | None = None
        self._pollers: tuple | None = None  # for this socket: (all, without it while lent)
        self.waker = Waker()
        # The loop's, except while it sleeps: then a thread that finished the
        # last task here sends its result itself, saving a thread hand-off.
        self.turn = SocketTurn(self.waker)
        self.broker_seen = 0.0  # 0: start over on the next pass
        self.last_send = 0.0
        self._reconnect_delay = defaults.RECONNECT_DELAY

    def connect(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        # A new id per connection: messages still in flight on a dropped one
        # (a cut link coming back) must not pass for the new one's.
        self._connections += 1
        self.worker_id = f"{self._name}-{self._connections}".encode()
        sock.setsockopt(zmq.ROUTING_ID, self.worker_id)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_size)
        sock.setsockopt(zmq.LINGER, 0)
        sock.copy_threshold = defaults.COPY_THRESHOLD
        # The connection outlives a task that holds the GIL (see broker.server, "Liveness").
        keep_alive(sock, self.heartbeat_interval, self.liveness)
        if self._security is not None:
            self._security.apply(sock)
        self.socket = sock
        self._handshake = HandshakeWatch(sock, self._security)
        sock.connect(self.address)
        self.broker_seen = time.monotonic()
        for message in self._greeting():
            self.send(message)

    def reconnect(self) -> None:
        if self.broker_seen:
            log.warning("broker %s silent for %.1fs; reconnecting in %.1fs", self.address,
                        self.heartbeat_interval * self.liveness, self._reconnect_delay)
        self.close()
        time.sleep(self._reconnect_delay)  # bounded back-off between attempts, not a poll
        self._reconnect_delay = min(self._reconnect_delay * 2, defaults.RECONNECT_DELAY_MAX)
        self.connect()

    def welcome(self, message: Welcome) -> None:
        """The broker's heartbeat settings rule: both sides judge liveness alike."""
        self.heartbeat_interval = message.heartbeat_interval
        self.liveness = message.liveness
        self._reconnect_delay = defaults.RECONNECT_DELAY
        log.info("connected to broker %s as %s", self.address, self.worker_id.decode())

    def linger(self, seconds: float) -> None:
        """Let what is queued leave for up to ``seconds`` when the socket closes."""
        self.socket.setsockopt(zmq.LINGER, int(seconds * 1000))

    def close(self) -> None:
        close_watched(None, self._handshake)
        if self.socket is not None:
            self.socket.close()  # with its own LINGER: 0, or what linger() set
        self.socket = self._handshake = None

    def destroy(self) -> None:
        self._context.destroy(linger=0)  # also closes a socket left half-made

    def send(self, message, payload: list = ()) -> None:
        try:
            send_frames(self.socket, encode(message, payload), NOBLOCK)
        except zmq.Again:
            # No high-water mark, so only a connection ZeroMQ gave up on (a
            # refused handshake) lands here: start over on a new one. The broker
            # requeues whatever this worker held.
            self.broker_seen = 0.0
        self.last_send = time.monotonic()

    def next_chore(self) -> float:
        """When a heartbeat is due, or the broker's silence must be judged."""
        return min(self.last_send + self.heartbeat_interval,
                   self.broker_seen + self.heartbeat_interval * self.liveness)

    def poll(self, fds: tuple, timeout: float, lent: bool) -> dict:
        """Sleep (holding the turn, giving it up meanwhile) until the socket,
        the waker, the handshake watch or one of ``fds`` has news, or for
        ``timeout`` seconds. ``lent``: a task thread watches the socket."""
        if self._pollers is None or self._pollers[2] is not self.socket:
            # Descriptors only (see SocketTurn); without the socket's while it is lent.
            poller, lent_poller = select.poll(), select.poll()
            for fd in (self.waker.fd, *fds, self._handshake.fd):
                poller.register(fd, select.POLLIN)
                lent_poller.register(fd, select.POLLIN)
            poller.register(self.socket.getsockopt(zmq.FD), select.POLLIN)
            self._pollers = (poller, lent_poller, self.socket)
        return self.turn.poll(self._pollers[1] if lent else self._pollers[0], self.socket,
                              timeout * 1000)

    def check_handshake(self, events: dict) -> None:
        """Start over on the next pass if handshakes fail (after a poll)."""
        failure = self._handshake.failure(events)
        if failure:
            # Keys may be fixed while we wait (a key added to the broker's
            # directory), so keep trying, at the reconnect back-off.
            log.error("%s; retrying in %.1fs", failure, self._reconnect_delay)
            self.broker_seen = 0.0

    def check_remade(self) -> None:
        """Start over now if ZeroMQ connected again by itself."""
        if self._handshake.handshakes > 1:
            # ZeroMQ connected this socket again by itself: messages on their
            # way over the old connection are lost, tasks among them. Start
            # over as a new worker, so the broker requeues what it sent this one.
            log.info("the connection to broker %s was made again; registering anew",
                     self.address)
            self.broker_seen = 0.0
