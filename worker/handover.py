"""The one way a thread other than the agent's loop uses the worker's socket.

The loop owns the socket and holds its turn (protocol.sockets.SocketTurn)
except while it sleeps in Connection.poll. Two speed tricks take the turn then,
both from the task thread that has just finished a task, and both here:

- Sending its own result (``task_finished``): a lone result should not wait
  for a wake of the loop (tens of microseconds each way). Not while short
  tasks are queued behind it: the loop batches their results.
- Lending the socket (``_serve_lent``): with one thread, the loop's hand-off
  of a lone task to the task thread costs about 45 us of a 500 us round trip
  here (a wake, and the GIL). So once that thread has sent a result with
  nothing else to do, it stays on as the socket's watcher, reads what comes
  (the loop's own reading, Agent.read) and runs a lone task itself, while
  the loop sleeps on everything else and wakes every GIVE_BACK_AFTER. The
  loop takes the socket back (``take_back``) as soon as there is more to do
  than one task at a time: a task still running when it wakes, tasks queued,
  draining, a reconnect, or LEND_IDLE without a task.

Whoever holds the turn acts for the loop: it reads and sends with the
loop's own methods, so no message is built twice.
"""
from __future__ import annotations

import logging
import select
import time
from typing import TYPE_CHECKING

import zmq

from zeropool.protocol.waker import Waker

if TYPE_CHECKING:
    from zeropool.protocol.connection import Connection
    from zeropool.worker.agent import Agent
    from zeropool.worker.credit import Credit
    from zeropool.worker.runner import Runner

log = logging.getLogger("zeropool.worker")

# The loop takes a lent socket back after this long without a task, so that
# an idle worker's loop stops waking every GIVE_BACK_AFTER.
LEND_IDLE = 1.0


class Handover:
    """Passes the socket's turn to a task thread, and takes it back.

    The thread holding the turn reads the agent's ``running``, ``draining``
    and ``stopping`` and calls its ``read`` and ``send_results``, as the
    loop would: holding the turn is what makes that safe.
    """

    def __init__(self, agent: Agent, connection: Connection) -> None:
        self._agent = agent
        self._connection = connection
        self._runner: Runner | None = None  # see bind
        self._credit: Credit | None = None
        self.lent = False  # whether the task thread watches the socket
        self._waker = Waker()  # tells the lent thread to stop
        self._active_at = 0.0
        self.lone: tuple | None = None  # a task the lent thread read, to run itself
        self.reading = False  # the lent thread is reading: Agent.on_message keeps a lone task
        self.exit: int | None = None  # what the lent thread read that ends the loop (an Exit)

    def bind(self, runner: Runner, credit: Credit) -> None:
        """The runner (made with ``task_finished`` as its callback) and the credit."""
        self._runner, self._credit = runner, credit

    def task_finished(self) -> None:
        """From a runner thread, after a result: send it now if the loop is
        asleep, unless short tasks are queued behind it (the loop batches
        those results). Then, with one thread and nothing else to do, watch
        the socket for the loop."""
        connection, runner = self._connection, self._runner
        if (not runner.waiting or not self._credit.short_tasks()) and connection.turn.try_take():
            agent = self._agent
            try:
                if connection.socket is not None:
                    agent.send_results()
                    if agent.draining or not connection.broker_seen:
                        connection.waker.wake()  # the loop may leave, or must reconnect
                    elif (self._credit.threads == 1 and not agent.running and not runner.events
                          and not agent.stopping):
                        self._serve_lent()
                    return
            except Exception:
                # Sent nothing, or half a message: start over on a new connection
                # (the broker then runs again what was sent here).
                log.exception("using the socket from a task thread failed; reconnecting")
                connection.broker_seen = 0.0
            finally:
                connection.turn.give_back(connection.socket)
        connection.waker.wake()

    def _serve_lent(self) -> None:
        """The task thread, holding the turn: watch the socket and run lone
        tasks here until the loop takes the socket back (or there is more to
        do than that). Returns holding the turn."""
        agent, connection, runner = self._agent, self._connection, self._runner
        turn = connection.turn
        sock = connection.socket
        poller = select.poll()
        poller.register(sock.getsockopt(zmq.FD), select.POLLIN)
        poller.register(self._waker.fd, select.POLLIN)
        self._waker.clear()
        self.lent, self._active_at = True, time.monotonic()
        connection.waker.wake()  # the loop polls again, without the socket
        log.debug("lent the socket to the task thread")
        try:
            while True:
                turn.poll(poller, sock, -1)
                # (No waker.clear per task: take_back clears ``lent`` before it
                # wakes, so a wake seen here has already made this return.)
                if not self.lent or connection.socket is not sock:
                    return
                self.reading = True
                self.exit = connection.read(agent.on_message)
                self.reading = False
                lone, self.lone = self.lone, None
                if (self.exit is not None or runner.waiting or agent.draining
                        or not connection.broker_seen or agent.stopping):
                    if lone is not None:
                        runner.submit(*lone)
                    return  # the loop has more to do: it takes the socket back
                if lone is None:
                    continue
                turn.__exit__()
                try:
                    runner.run_here(*lone)
                finally:
                    turn.__enter__()
                if connection.socket is not sock:
                    return
                agent.send_results()
                if agent.draining or not connection.broker_seen:  # recycling, or a reconnect
                    return
                self._active_at = connection.last_send  # the results' send time: no clock read
        finally:
            self.reading = False
            if self.lone is not None:  # read when reading failed, so it must run
                runner.submit(*self.lone)
                self.lone = None
            if self.lent:
                self.lent = False
                log.debug("the task thread gave the socket back")
            connection.waker.wake()  # for what made it stop, or a result it could not send

    def check(self, now: float) -> None:
        """The loop's, on each pass while the socket is lent: even then its
        passes read the socket and send what is due, but taking it back makes
        that prompt again."""
        agent, runner = self._agent, self._runner
        if runner.running:
            self.take_back("a task is running there")
        elif runner.waiting:
            self.take_back("tasks are queued")
        elif agent.draining:
            self.take_back("draining")
        elif now - self._active_at > LEND_IDLE:
            self.take_back("idle")

    def take_back(self, why: str) -> None:
        """The loop's: the socket is watched by the loop again."""
        if self.lent:
            self.lent = False
            self._waker.wake()
            log.debug("took the socket back from the task thread: %s", why)

    def drop_lone(self, keys: list) -> tuple | None:
        """Of ``keys`` given back, the lone task read and not started, if there."""
        if self.lone is not None and self.lone[0] in keys:
            lone, self.lone = self.lone, None
            return lone
        return None
