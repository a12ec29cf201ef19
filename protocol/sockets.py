"""Socket calls on the hot path, and sharing a socket between threads.

pyzmq's ``send_multipart``/``recv_multipart`` check every frame and combine
flags as ``enum.Flag`` values in Python: a few µs a message, on every one of
the four hops a task makes. These call the Cython socket methods directly
with int flags. Read loops ask ``readable`` before each receive, as the
owner of a shared socket must before it sleeps anyway, rather than ending on
a ``zmq.Again`` exception.
"""
from __future__ import annotations

import select
import threading
from typing import Sequence

import zmq
from zmq.backend import Socket as _Socket

from zeropool.protocol.waker import Waker

_send = _Socket.send
_recv = _Socket.recv
_get = _Socket.get
_SNDMORE = int(zmq.SNDMORE)
NOBLOCK = _NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def keep_alive(sock: zmq.Socket, heartbeat_interval: float, liveness: int) -> None:
    """ZMTP heartbeats on ``sock``, before it binds or connects: libzmq pings
    the peer every ``heartbeat_interval`` and closes a connection that stays
    silent for ``liveness`` intervals (and asks the peer to do the same).

    libzmq's I/O thread answers pings without the GIL, so a peer whose Python
    threads are held up (a C call that keeps the GIL) keeps its connection,
    while a stopped process or a cut link loses it: whether a connection
    lives is how the broker tells a busy peer from a dead one.
    """
    interval_ms = max(1, round(heartbeat_interval * 1000))
    window_ms = max(interval_ms, round(heartbeat_interval * liveness * 1000))
    sock.setsockopt(zmq.HEARTBEAT_IVL, interval_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, window_ms)
    # Sent in deciseconds, 16 bits: 0.1 s to 6553.5 s (0 would switch it off).
    sock.setsockopt(zmq.HEARTBEAT_TTL, min(max(window_ms, 100), 6_553_500))


def readable(sock: zmq.Socket) -> bool:
    """Whether a message waits (also what re-arms the socket's ZMQ_FD)."""
    return bool(_get(sock, _EVENTS) & _POLLIN)


def send_frames(sock: zmq.Socket, frames: Sequence, flags: int = 0) -> None:
    """``send_multipart(frames, flags, copy=False)``; frames must be bytes,
    ``zmq.Frame`` or buffers (ours always are)."""
    last = len(frames) - 1
    more = flags | _SNDMORE
    for i in range(last):
        _send(sock, frames[i], more, False)
    _send(sock, frames[last], flags, False)


def recv_frames(sock: zmq.Socket, copied: int = 1) -> list:
    """``recv_multipart(NOBLOCK)`` of a waiting message: its first ``copied``
    frames (ids, the header: small, and read as bytes anyway) as ``bytes``,
    the rest as ``zmq.Frame`` (payloads: not copied).

    Frames are received uncopied and asked ``more``: asking the socket for
    RCVMORE instead goes through pyzmq's ``SocketOption`` enum lookup, which
    made a three-frame receive take twice as long."""
    frame = _recv(sock, _NOBLOCK, False)
    frames = [frame.bytes if copied else frame]
    while frame.more:
        frame = _recv(sock, _NOBLOCK, False)
        frames.append(frame.bytes if len(frames) < copied else frame)
    return frames


class SocketTurn:
    """Lets threads other than a socket's owner send on it while the owner sleeps.

    A lone message should not wait for a thread hand-off (tens of µs each way),
    so a thread with one to send takes the socket itself when the owner is idle.
    The owner holds the lock except while it sleeps in ``poll``, where it waits
    on the socket's ZMQ_FD, an OS descriptor, not on the socket: polling the
    socket would run ZeroMQ's socket code in two threads at once. ZMQ_FD only
    signals edges and any use of the socket can consume one, so whoever used
    the socket last looks at ZMQ_EVENTS before the owner sleeps: the owner
    itself before polling, and a sender before it lets go (raising the waker
    if a message is waiting).
    """

    def __init__(self, waker: Waker) -> None:
        self._lock = threading.Lock()
        self._waker = waker

    def __enter__(self) -> SocketTurn:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def try_take(self) -> bool:
        """For a sender: True if the socket is free now (then ``give_back`` it)."""
        return self._lock.acquire(timeout=0.0005)

    def take(self, timeout: float | None = None) -> bool:
        """For a thread that watches the socket while the owner sleeps
        (client/lending.py): wait up to ``timeout`` for the turn (None: no limit)."""
        return self._lock.acquire(timeout=-1 if timeout is None else timeout)

    def give_back(self, sock: zmq.Socket | None) -> None:
        try:
            if sock is not None and not sock.closed and readable(sock):
                self._waker.wake()
        finally:
            self._lock.release()

    def poll(self, poller: select.poll, sock: zmq.Socket, timeout_ms: float) -> dict:
        """For the owner, who holds the turn: sleep until ``poller`` has events
        (it must poll ``sock``'s ZMQ_FD, never ``sock``). A ``select.poll`` over
        descriptors only: ``zmq.Poller`` makes a first pass that does not
        wait, one more system call per sleep."""
        if readable(sock):
            timeout_ms = 0
        self._lock.release()
        try:
            return dict(poller.poll(timeout_ms))
        finally:
            _reacquire(self._lock)


def _reacquire(lock: threading.Lock) -> None:
    """Take ``lock`` back even if a signal's exception (a second Ctrl-C)
    interrupts the wait: the caller releases it later, so it must hold it."""
    interrupted = None
    while True:
        try:
            lock.acquire()
            break
        except BaseException as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted
