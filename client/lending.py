"""The caller that waits alone reads the socket itself.

A lone round trip (``submit(...).result()``, one task at a time) used to end
with a hand-off: the I/O thread woke for the RESULTS, completed the future,
and the caller woke on the future's condition, then waited for the GIL until
that thread slept again. Lent, the socket is watched by the caller instead:

    result() on the one pending task --> wanted; the loop's next pass lends:
        the loop polls without the socket (waker, handshake, timers)
    result() while lent --> Lending.wait: this thread polls the socket's
        ZMQ_FD, reads with the loop's own reading (Session._on_message),
        and returns once its future is done; the I/O thread sleeps through

Who touches the socket still goes by its turn (protocol.sockets.SocketTurn):
the reader holds it except while it sleeps in ``turn.poll``, as the loop
does. The loop still reads on each of its own passes, so nothing read is
ever lost, only perhaps later; what keeps it prompt:

- one reader at a time; it wakes (``_waker``) when the loop has read, when
  the socket is taken back, and its future then completes by the usual way;
- a reader that leaves while other tasks are pending gives the socket back;
- any other way of waiting on a future takes the socket back first: the
  stdlib's ``wait`` and ``as_completed`` (their waiters), done-callbacks,
  a cancel, closing; ``done()`` and ``running()`` read what waits, if the
  socket is free;
- the loop, waking with no reader for LEND_IDLE, takes it back, and reads
  before its heartbeat chores so that a lent socket never looks silent.

Not for a session inside a task (nested): its futures give the task's slot
back while waited on, which this path would bypass.
"""
from __future__ import annotations

import select
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import zmq
from concurrent.futures._base import PENDING, RUNNING

from zeropool.protocol.waker import Waker

if TYPE_CHECKING:
    from zeropool.protocol.connection import Connection

_POLLIN = select.POLLIN
_WAITING = (PENDING, RUNNING)  # a future's states before done (read without its lock: a hint)

# A lent socket that no caller has read from for this long goes back to the loop.
LEND_IDLE = 1.0

# The sessions whose socket is lent: a waiter added to any future takes them back.
# A plain set (asked per waiter that as_completed adds): a session's loop
# removes its own before it ends.
lent_sessions: set[Lending] = set()


class Lending:
    """Whether the socket is lent to the caller waiting alone, and that caller's reading."""

    def __init__(self, connection: Connection, table: Any, read: Callable) -> None:
        self._connection = connection
        self._table = table  # the TaskTable: pending tasks
        self._read = read  # Session._on_message, as the loop reads
        self.lent = False  # the loop polls without the socket (the loop sets it)
        self.wanted = False  # a caller waited alone: lend at the loop's next pass
        self.reader: int | None = None  # the thread reading now
        self.loop_ident: int | None = None  # the I/O thread never waits here
        self._waker = Waker()  # wakes the reader
        self._poller: tuple[Any, select.poll] | None = None  # per socket
        self.active_at = 0.0  # the last reading

    # -- for callers: Future.result() and exception() on a pending future ---

    def wait(self, future: Any, timeout: float | None) -> float | None:
        """Read the socket here until ``future`` is done, if it is lent, or
        ask for it if ``future`` is the only task pending; returns the part
        of ``timeout`` left for the usual wait."""
        ident = threading.get_ident()
        if timeout is not None and timeout <= 0:
            return timeout  # the usual wait says TimeoutError at once
        if not self.lent:
            if ident != self.loop_ident and len(self._table.pending) == 1:
                self.wanted = True  # this round trip goes the usual way; later ones not
            return timeout
        if ident == self.loop_ident or self.reader is not None:
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        connection = self._connection
        turn = connection.turn
        if not turn.take(timeout):
            return 0.0
        if self.reader is not None or not self.lent:
            turn.give_back(connection.socket)  # another thread reads: the usual wait
            return _left(deadline)
        self.reader = ident
        try:
            self._read_until(future, deadline)
        finally:
            self.reader = None
            self.active_at = connection.broker_seen
            if self.lent and (self._table.pending or future._state in _WAITING):
                self.take_back()  # timed out, or others pending: the loop reads for them
            # Still lent, nothing is pending: what waits can wait for the
            # loop's next pass (skipping the look saves a system call).
            turn.give_back(None if self.lent and self.wanted else connection.socket)
        return None if deadline is None else _left(deadline)

    def _read_until(self, future: Any, deadline: float | None) -> None:
        """Holding the turn: poll, read, until ``future`` is done, the socket
        is taken back, or ``deadline``."""
        connection = self._connection
        sock = connection.socket
        poller = self._poller_for(sock)
        waker = self._waker
        while self.lent and connection.socket is sock and future._state in _WAITING:
            if deadline is None:
                wait_ms = -1.0
            else:
                wait_ms = (deadline - time.monotonic()) * 1000
                if wait_ms <= 0:
                    return
            events = connection.turn.poll(poller, sock, wait_ms)
            waker.clear(waker.fd in events)
            if connection.socket is not sock:
                return
            if not self._read_here():
                return

    def _read_here(self) -> bool:
        """Holding the turn: read what waits, as the loop would. False: the
        socket is taken back (refused, or the broker wants a new connection)."""
        connection = self._connection
        try:
            outcome = connection.read(self._read)
        except BaseException:
            # Ctrl-C lands in a caller's thread, perhaps between the frames of
            # a message: start over on a new connection, which submits what is
            # unanswered again (in the loop's thread it cannot land).
            connection.broker_seen = 0.0
            self.take_back()
            raise
        if outcome is not None or not connection.broker_seen:
            self.take_back()
            return False
        return True

    def _poller_for(self, sock: zmq.Socket) -> select.poll:
        if self._poller is None or self._poller[0] is not sock:
            poller = select.poll()
            poller.register(sock.getsockopt(zmq.FD), _POLLIN)
            poller.register(self._waker.fd, _POLLIN)
            self._poller = (sock, poller)
        return self._poller[1]

    def peek(self) -> None:
        """``done()``/``running()`` on a pending future while lent and nobody
        reads: read what waits, if the socket is free at once."""
        if self.reader is not None or threading.get_ident() == self.loop_ident:
            return
        connection = self._connection
        if not connection.turn.take(0):
            return
        if self.reader is not None:  # one started meanwhile: its reading
            connection.turn.give_back(connection.socket)
            return
        self.reader = threading.get_ident()
        try:
            if self.lent and connection.socket is not None:
                self._read_here()
        finally:
            self.reader = None
            connection.turn.give_back(connection.socket)

    def take_back(self) -> None:
        """The loop watches the socket again (from any thread; it wakes it)."""
        self.wanted = False
        if self.lent:
            self._connection.waker.wake()
            self._waker.wake()

    # -- for the loop (holding the turn) ------------------------------------

    def settle(self, may_lend: bool, now: float) -> None:
        """At the end of each of the loop's passes: lend the socket for its
        next sleep, or take it back."""
        if self.lent and self.reader is not None:
            self._waker.wake()  # the loop may have read what the reader waits for
        if self.lent and self.reader is None and now - self.active_at > LEND_IDLE:
            self.wanted = False
        # Not while a task is pending that no caller reads for: its waiter
        # waits on the future (the loop's to complete), not on the socket.
        lend = self.wanted and may_lend and (self.reader is not None or not self._table.pending)
        if lend and not self.lent:
            self.active_at = now
            lent_sessions.add(self)
        elif self.lent and not lend:
            lent_sessions.discard(self)
            self._waker.wake()
        self.lent = lend


def take_back_all() -> None:
    """A waiter or callback added to a future: the loop must read for it."""
    for lending in list(lent_sessions):
        lending.take_back()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
