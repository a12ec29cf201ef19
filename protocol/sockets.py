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

from protocol.waker import Waker

_send = _Socket.send
_recv = _Socket.recv
_get = _Socket.get
_SNDMORE = int(zmq.SNDMORE)
NOBLOCK = _NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


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
            self._lock.acquire()
