"""One DEALER connection to the broker: what a client and a worker share.

    program's loop --poll()--------> sleeps on ZMQ_FD, handshake monitor, waker, fds
                   --read(handle)--> recv, decode --> handle(message, payload)
                   --send(message)-> DEALER --> broker
                   --heartbeat(now)> HEARTBEAT when due; False: close() and connect() again

Sockets. ``connect`` makes the DEALER (no high-water mark, so nothing is
ever dropped; libzmq's ZMTP heartbeats, see protocol.sockets.keep_alive;
CURVE keys if given), watches its handshakes (protocol.security) and sends
the program's HELLO, which must come first. ``close`` ends the socket and its
monitor; ``end`` also the context, once the program is done.

The loop. The program's one loop holds ``turn`` (``with connection.turn:``)
and calls ``poll`` with its own earliest deadline; ``poll`` also wakes for
the heartbeat chores and sleeps without the turn, on descriptors only. Then
``handshake.failure(events)`` says why a handshake failed (wrong or missing
keys), ``read(handle)`` hands every waiting message to the program, and
``heartbeat(now)`` sends a HEARTBEAT when one is due, or says that the
broker is gone (silent for ``liveness`` intervals, or ZeroMQ connected again
by itself, which may have lost what was on its way): the program then calls
``close()``, ``back_off()`` if it waits between attempts, and ``connect()``.
A WELCOME is given to ``welcome``: the broker's heartbeat settings rule.

Other senders. Another thread may send while the loop sleeps in ``poll``:
``borrow()`` (True if the socket is free now), send, ``give_back()``; or it
is lent the socket (the worker's, below). Both go by protocol.sockets.SocketTurn.

The worker (worker/agent.py, worker/handover.py). It connects with a new
routing id each time and sends a DRAIN after its HELLO when draining; it
puts its signal pipe and watched parent pipes in ``fds``; it keeps trying
after a handshake failure, logs the reconnect and "made again" lines
itself (on ``handshake.handshakes > 1``, before ``heartbeat(now)``), and
raises the socket's LINGER before ``close`` when a last message must leave.
While a task thread watches the lent socket the loop polls
``with_socket=False``, and that thread sleeps in ``turn.poll`` over a
poller of its own, on ``socket``'s ZMQ_FD, calling ``read`` itself.
``read`` also logs and skips a ProtocolError that a handler raises.
"""
from __future__ import annotations

import logging
import select
import time
from typing import Any, Callable, Sequence

import zmq

from zeropool.protocol import Heartbeat, ProtocolError, decode, encode
from zeropool.protocol import defaults
from zeropool.protocol.security import HandshakeWatch, Security, close_watched
from zeropool.protocol.sockets import NOBLOCK, SocketTurn, keep_alive, readable, recv_frames, send_frames
from zeropool.protocol.waker import Waker

_POLLIN = select.POLLIN


class Connection:
    """A DEALER connected to one broker, its handshake watch, its heartbeat
    chores and the turn that lets other threads send on it."""

    def __init__(self, address: str, log: logging.Logger, *,
                 security: Security | None = None,
                 heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL,
                 liveness: int = defaults.HEARTBEAT_LIVENESS,
                 max_message_size: int | None = None) -> None:
        self.address = address
        self.security = security
        self.log = log
        # The broker's, once it has WELCOMEd us: both sides judge liveness alike.
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.max_message_size = max_message_size  # refuse larger messages (None: no limit)
        self.reconnect_delay = defaults.RECONNECT_DELAY  # back_off's next wait
        # More descriptors the loop wakes for (a worker's signal and parent pipes).
        self.fds: Sequence[int] = ()
        self.waker = Waker()  # raised by other threads that put work on the loop's queue
        self.turn = SocketTurn(self.waker)
        self.context = zmq.Context()
        self.socket: zmq.Socket | None = None
        self.handshake: HandshakeWatch | None = None
        self.broker_seen = 0.0  # monotonic time of the broker's last message; 0: start over
        self.last_send = 0.0
        # Per socket: (with its ZMQ_FD, without it, for a socket lent to another thread).
        self._pollers: tuple[select.poll, select.poll] | None = None

    def connect(self, routing_id: bytes, hello: Any, payload: Sequence = ()) -> None:
        """A new socket to the broker, and the program's HELLO on it."""
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        if self.max_message_size is not None:
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        sock.setsockopt(zmq.LINGER, 0)
        sock.copy_threshold = defaults.COPY_THRESHOLD
        # The broker tells a peer that is busy (its threads held up by the GIL)
        # from a gone one by whether libzmq's heartbeats keep it connected.
        keep_alive(sock, self.heartbeat_interval, self.liveness)
        if self.security is not None:
            self.security.apply(sock)
        self.socket = sock
        self.handshake = HandshakeWatch(sock, self.security)
        pollers = select.poll(), select.poll()  # descriptors only: see SocketTurn
        for poller in pollers:
            for fd in (self.waker.fd, self.handshake.fd, *self.fds):
                poller.register(fd, _POLLIN)
        pollers[0].register(sock.getsockopt(zmq.FD), _POLLIN)
        self._pollers = pollers
        sock.connect(self.address)
        self.broker_seen = time.monotonic()
        self.send(hello, payload)

    def close(self) -> None:
        """Close the socket (with its own LINGER, 0 unless the program raised
        it) and its handshake monitor."""
        close_watched(None, self.handshake)
        if self.socket is not None:
            self.socket.close()
        self.socket = self.handshake = self._pollers = None

    def end(self) -> None:
        """Close, and end the context (also a socket left half-made)."""
        self.close()
        self.context.destroy(linger=0)

    def back_off(self) -> None:
        """Wait before connecting again, twice as long each time up to a cap,
        until a WELCOME: a broker that is down is not hammered."""
        time.sleep(self.reconnect_delay)  # bounded back-off between attempts, not a poll
        self.reconnect_delay = min(self.reconnect_delay * 2, defaults.RECONNECT_DELAY_MAX)

    def welcome(self, welcome: Any) -> None:
        """The broker accepted us: take its heartbeat settings."""
        self.heartbeat_interval = welcome.heartbeat_interval
        self.liveness = welcome.liveness
        self.reconnect_delay = defaults.RECONNECT_DELAY

    def send(self, message: Any, payload: Sequence = ()) -> bool:
        """Send without blocking; False (and the connection is to be made
        again) if ZeroMQ gave up on it."""
        try:
            send_frames(self.socket, encode(message, payload), NOBLOCK)
        except zmq.Again:
            # No high-water mark, so only a connection ZeroMQ gave up on (a
            # refused handshake) lands here; blocking would hang the loop and
            # any thread that borrowed the socket. Start over on a new one.
            self.broker_seen = 0.0
            return False
        self.last_send = time.monotonic()
        return True

    def poll(self, timeout: float | None = None, *, with_socket: bool = True) -> dict:
        """For the loop, holding ``turn``: sleep until a message, a wake, a
        handshake event or one of ``fds``, or until ``timeout`` seconds or the
        next heartbeat chore. ``with_socket=False``: not for messages (another
        thread watches the socket)."""
        wait = min(self.last_send + self.heartbeat_interval,
                   self.broker_seen + self.heartbeat_interval * self.liveness) - time.monotonic()
        if timeout is not None and timeout < wait:
            wait = timeout
        return self.turn.poll(self._pollers[0 if with_socket else 1], self.socket,
                              max(0.0, wait) * 1000)

    def read(self, handle: Callable[[Any, list], Any]) -> Any:
        """Give every waiting message to ``handle(message, payload)``, until
        one returns something other than None, which this returns. A bad
        message (or a handler finding one) is logged and skipped."""
        sock = self.socket
        while readable(sock):
            frames = recv_frames(sock)
            self.broker_seen = time.monotonic()
            try:
                message, payload = decode(frames)
                outcome = handle(message, payload)
            except ProtocolError as exc:
                self.log.error("bad message from the broker: %s", exc)
                continue
            if outcome is not None:
                return outcome
        return None

    def heartbeat(self, now: float) -> bool:
        """The timed chore: a HEARTBEAT if one is due. False if the connection
        is to be made again: the broker has been silent for ``liveness``
        intervals, or ZeroMQ connected the socket again by itself (what was on
        its way over the old connection may be lost, so start over)."""
        if self.handshake.handshakes > 1:
            self.broker_seen = 0.0
        if now - self.broker_seen > self.heartbeat_interval * self.liveness:
            return False
        if now - self.last_send >= self.heartbeat_interval:
            self.send(Heartbeat())
        return True

    def borrow(self) -> bool:
        """For a thread other than the loop's: take the socket if the loop
        sleeps now (then send, and ``give_back()`` whatever happens); False:
        leave the message to the loop."""
        return self.turn.try_take()

    def give_back(self, watched: bool = True) -> None:
        """End a ``borrow()``; wakes the loop for a message that arrived
        meanwhile. ``watched=False``: the loop does not watch the socket now
        (it is lent), so that look (a ZMQ_EVENTS call, a system call) is skipped."""
        self.turn.give_back(self.socket if watched else None)
