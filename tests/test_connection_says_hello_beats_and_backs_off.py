"""protocol.connection: the DEALER connection a client (and a worker) keeps
to its broker, against a bare ROUTER on loopback: HELLO first, messages to
the handler, bad ones skipped, heartbeats when due, a silent broker noticed,
back-off doubling to a cap, and the turn that lets another thread send."""
from __future__ import annotations

import logging
import threading
import time

import pytest
import zmq

from zeropool.protocol import (
    PROTOCOL_VERSION, Heartbeat, Hello, Op, Role, Welcome, decode, defaults, encode,
)
from zeropool.protocol import connection as connection_module
from zeropool.protocol.connection import Connection

pytestmark = pytest.mark.timeout(60)
log = logging.getLogger("zeropool.test")


@pytest.fixture
def broker():
    """A bare ROUTER on loopback, and a Connection to it (ended after)."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    connection = Connection(f"tcp://127.0.0.1:{port}", log)
    yield router, connection
    connection.end()
    router.close(linger=0)
    context.term()


def _receive(router: zmq.Socket) -> tuple[bytes, object, list]:
    assert router.poll(10_000), "nothing reached the broker"
    peer, *frames = router.recv_multipart()
    message, payload = decode(frames)
    return peer, message, payload


def _hello() -> Hello:
    return Hello(Role.CLIENT, PROTOCOL_VERSION)


def test_hello_goes_first_and_every_good_message_reaches_the_handler(broker, caplog):
    router, connection = broker
    connection.connect(b"peer-1", _hello(), [b"initializer"])
    peer, hello, payload = _receive(router)
    assert peer == b"peer-1" and hello.op is Op.HELLO and payload == [b"initializer"]
    router.send_multipart([peer, *encode(Welcome(PROTOCOL_VERSION, 0.25, 4))])
    router.send_multipart([peer, b"\xc1 not msgpack"])
    router.send_multipart([peer, *encode(Heartbeat(workers=2))])
    seen = []
    deadline = time.monotonic() + 10
    with connection.turn:
        while len(seen) < 2 and time.monotonic() < deadline:
            connection.poll(1.0)
            connection.read(lambda message, payload: seen.append(message.op))
    assert seen == [Op.WELCOME, Op.HEARTBEAT]
    assert "bad message from the broker" in caplog.text


def test_a_handler_returning_something_stops_the_reading(broker):
    router, connection = broker
    connection.connect(b"peer-1", _hello())
    peer, _, _ = _receive(router)
    for workers in (1, 2):
        router.send_multipart([peer, *encode(Heartbeat(workers=workers))])
    outcome = None
    deadline = time.monotonic() + 10
    with connection.turn:
        while outcome is None and time.monotonic() < deadline:
            connection.poll(1.0)
            outcome = connection.read(lambda message, payload: message.workers)
        assert outcome == 1
        connection.poll(1.0)
        assert connection.read(lambda message, payload: message.workers) == 2


def test_a_heartbeat_goes_when_due_and_a_silent_broker_asks_for_a_new_connection(broker):
    router, connection = broker
    connection.connect(b"peer-1", _hello())
    _receive(router)
    interval = connection.heartbeat_interval
    assert connection.heartbeat(connection.last_send + interval / 2)  # not due: nothing sent
    assert connection.heartbeat(connection.last_send + interval)
    _, beat, _ = _receive(router)
    assert beat.op is Op.HEARTBEAT
    silent = connection.broker_seen + interval * connection.liveness + 0.001
    assert not connection.heartbeat(silent)
    connection.close()
    connection.connect(b"peer-2", _hello())
    peer, hello, _ = _receive(router)
    assert peer == b"peer-2" and hello.op is Op.HELLO


def test_the_reconnect_delay_doubles_to_a_cap_until_a_welcome(broker, monkeypatch):
    _, connection = broker
    waits = []
    monkeypatch.setattr(connection_module.time, "sleep", waits.append)
    for _ in range(12):
        connection.back_off()
    assert waits[:3] == [defaults.RECONNECT_DELAY, 2 * defaults.RECONNECT_DELAY,
                         4 * defaults.RECONNECT_DELAY]
    assert waits[-1] == defaults.RECONNECT_DELAY_MAX == max(waits)
    connection.welcome(Welcome(PROTOCOL_VERSION, 0.5, 6))
    assert (connection.heartbeat_interval, connection.liveness) == (0.5, 6)
    connection.back_off()
    assert waits[-1] == defaults.RECONNECT_DELAY


def test_another_thread_sends_only_while_the_loop_sleeps_in_poll(broker):
    router, connection = broker
    connection.connect(b"peer-1", _hello())
    _receive(router)
    outcomes = []

    def sender(tries: int) -> None:
        for _ in range(tries):  # each try waits half a millisecond for the turn
            if connection.borrow():
                try:
                    outcomes.append(connection.send(Heartbeat()))
                finally:
                    connection.give_back()
                break
        else:
            outcomes.append("busy")
        connection.waker.wake()

    with connection.turn:  # the loop, awake
        thread = threading.Thread(target=sender, args=(10,))
        thread.start()
        thread.join(10)
        assert outcomes == ["busy"]
        thread = threading.Thread(target=sender, args=(20_000,))
        thread.start()
        deadline = time.monotonic() + 10
        while len(outcomes) < 2 and time.monotonic() < deadline:
            connection.poll(1.0)  # asleep: the sender may take the socket
        thread.join(10)
    assert outcomes == ["busy", True]
    _, beat, _ = _receive(router)
    assert beat.op is Op.HEARTBEAT
