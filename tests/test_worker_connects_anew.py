"""What a worker says on each new connection, against a broker spoken by
hand: a new routing id each time (w-<host>-<pid>-<random>-<n>), a HELLO
offering its free slots, and a DRAIN right after it once it drains; and the
lines it logs on connecting and on being told to go."""
from __future__ import annotations

import os
import re
import signal

import pytest
import zmq

from zeropool.protocol import PROTOCOL_VERSION, Bye, Dispatch, Drain, Op, Role, Welcome
from zeropool.protocol.payload import dumps_call
from tests import helpers
from tests.helpers import wait_until
from tests.peer import Peer, packed_rows

pytestmark = pytest.mark.timeout(90)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_each_connection_has_a_new_id_and_a_draining_worker_says_so_again(programs, tmp_path,
                                                                          gate):
    broker = Peer(zmq.ROUTER)
    address = broker.bind()
    log_path, mark = tmp_path / "worker.log", str(tmp_path / "started")
    try:
        with open(log_path, "w") as log:
            worker = programs.worker(address, "--threads", "2", "--log-level", "INFO",
                                     "--path", REPO, stderr=log)
        first = broker.expect(Op.HELLO, Role.WORKER)
        hello = first.message
        assert hello.role is Role.WORKER and hello.credit == 2 and hello.threads == 2
        assert hello.pid == worker.pid
        match = re.fullmatch(rb"w-(.+)-(\d+)-([0-9a-f]{6})-1", first.sender)
        assert match and match[1].decode() == hello.host and int(match[2]) == worker.pid
        name = first.sender[:-2]
        broker.send(Welcome(PROTOCOL_VERSION, 1.0, 120, 1 << 30), to=first.sender)

        broker.send(Bye("broker stopping"), to=first.sender)  # told to go: a new connection
        second = broker.expect(Op.HELLO, Role.WORKER)
        assert second.sender == name + b"-2" and second.message.credit == 2
        broker.send(Welcome(PROTOCOL_VERSION, 1.0, 120, 1 << 30), to=second.sender)

        rows, payload = packed_rows([[b"c-test", 1]],
                                    [dumps_call(helpers.touch_then_wait, (mark, gate), {})])
        broker.send(Dispatch(rows), payload, to=second.sender)  # runs until the gate opens
        wait_until(lambda: os.path.exists(mark), 30, what="the task to start")
        worker.send_signal(signal.SIGTERM)  # drains: tells this broker...
        assert broker.expect(Op.DRAIN, Role.WORKER).sender == second.sender
        broker.send(Bye("broker stopping"), to=second.sender)
        third = broker.expect(Op.HELLO, Role.WORKER)  # ...and the next, right after its HELLO
        assert third.sender == name + b"-3" and third.message.credit == 0
        drain = broker.receive(30, Role.WORKER)
        assert drain is not None and drain.message.op is Op.DRAIN
        assert drain.sender == third.sender
        broker.send(Welcome(PROTOCOL_VERSION, 1.0, 120, 1 << 30), to=third.sender)
        broker.send(Drain(), to=third.sender)  # confirmed: it leaves once the task ends
        open(gate, "w").close()
        assert broker.expect(Op.BYE, Role.WORKER).sender == third.sender
        assert worker.wait(30) == 0
    finally:
        broker.close()
    log = log_path.read_text()
    for n in (1, 2, 3):
        assert f"connected to broker {address} as {name.decode()}-{n}" in log, log
    assert log.count("is going away (broker stopping); will reconnect") == 2, log
    assert "ERROR" not in log, log


def test_a_dispatch_whose_frames_do_not_add_up_makes_the_worker_register_anew(programs,
                                                                             tmp_path):
    """Its tasks cannot run: the worker must not keep them (their futures
    would wait for ever), but start over, so that the broker requeues them."""
    broker = Peer(zmq.ROUTER)
    address = broker.bind()
    log_path = tmp_path / "worker.log"
    try:
        with open(log_path, "w") as log:
            worker = programs.worker(address, "--log-level", "INFO", "--path", REPO, stderr=log)
        first = broker.expect(Op.HELLO, Role.WORKER)
        broker.send(Welcome(PROTOCOL_VERSION, 1.0, 120, 1 << 30), to=first.sender)
        broker.send(Dispatch([[b"c-test", 1, 2, b""]]), [b"only one frame"], to=first.sender)
        second = broker.expect(Op.HELLO, Role.WORKER)
        assert second.sender == first.sender[:-2] + b"-2" and second.message.credit == 1
        broker.send(Welcome(PROTOCOL_VERSION, 1.0, 120, 1 << 30), to=second.sender)
        worker.send_signal(signal.SIGTERM)  # drains: nothing runs, so it leaves once told
        assert broker.expect(Op.DRAIN, Role.WORKER).sender == second.sender
        broker.send(Drain(), to=second.sender)
        assert broker.expect(Op.BYE, Role.WORKER).sender == second.sender
        assert worker.wait(30) == 0
    finally:
        broker.close()
    assert "does not add up" in log_path.read_text()
