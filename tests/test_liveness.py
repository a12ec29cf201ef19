"""Who is alive: a peer is dead when its connection is, not when its Python
threads are silent (broker.server, "Liveness").

A C call that keeps the GIL stalls every other thread of its process, the
I/O loop too, for as long as it runs; libzmq's I/O thread needs no GIL and
keeps the connection. Brokers here declare a peer silent after 0.6 s (a 0.2 s
heartbeat, liveness 3); the stalls last 3 s.
"""
from __future__ import annotations

import os
import re

import pytest
import zmq

import zeropool
from zeropool.broker.status import query
from zeropool.protocol import PROTOCOL_VERSION, Bye, Dispatch, Op, Welcome
from zeropool.protocol.payload import dumps_call
from tests import crash_tasks as tasks
from tests import helpers
from tests.helpers import wait_until
from tests.peer import Peer, packed_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ("--heartbeat-interval", "0.2", "--liveness", "3", "--log-level", "INFO")
WINDOW = 0.6  # seconds: the liveness window SHORT sets
STALL = 3.0  # five liveness windows


def start_broker(programs, tmp_path):
    """A broker with a 0.6 s liveness window, logging to tmp_path/broker.log."""
    log_path = tmp_path / "broker.log"
    with open(log_path, "w") as log:
        _, address = programs.broker(*SHORT, stderr=log)
    return address, log_path.read_text


def worker_ids(address: str) -> set:
    return {w["id"] for w in query(address, None, 5)["workers"]}


@pytest.mark.timeout(60)
def test_a_task_holding_the_gil_runs_once_and_its_worker_stays(programs, tmp_path):
    address, broker_log = start_broker(programs, tmp_path)
    for _ in range(2):
        programs.worker(address, "--path", REPO, "--log-level", "WARNING")
    wait_until(lambda: len(worker_ids(address)) == 2, 30, what="two workers")
    before = worker_ids(address)
    runs = tmp_path / "runs"
    longest = 0.0  # the longest silence of a worker the broker reported

    def done(future) -> bool:
        nonlocal longest
        report = query(address, None, 5)
        longest = max([longest] + [w["last_heartbeat"] for w in report["workers"]])
        return future.done()

    with zeropool.Executor(address) as ex:
        future = ex.submit(tasks.hold_gil_and_record, str(runs), STALL, "held")
        wait_until(lambda: done(future), 30, interval=0.05, what="the task to finish")
        assert future.result(timeout=30) == "held"
    assert len(runs.read_text().splitlines()) == 1, "the task ran more than once"
    # Its worker did fall silent for longer than the window, and was kept.
    assert longest > WINDOW, f"no worker fell silent for a liveness window ({longest}s)"
    assert worker_ids(address) == before, "a worker was dropped or joined again"
    assert query(address, None, 5)["requeued"] == 0
    # The README promises this line.
    assert re.search(r"worker \w+ silent for [\d.]+s but still connected", broker_log()), \
        broker_log()


@pytest.mark.timeout(60)
def test_a_client_whose_threads_wait_for_the_gil_keeps_its_tasks(programs, tmp_path, gate):
    address, broker_log = start_broker(programs, tmp_path)
    programs.worker(address, "--path", REPO, "--log-level", "WARNING")
    runs = tmp_path / "runs"
    runs.mkdir()
    with zeropool.Executor(address) as ex:
        futures = [ex.submit(tasks.record_then_wait, str(runs), i, gate) for i in range(4)]
        # One runs, the others wait in the broker's queue.
        wait_until(lambda: os.listdir(runs), 30, what="the first task to start")
        wait_until(lambda: query(address, None, 5)["queued"] == 3, 30, what="three queued")
        clients = [c["id"] for c in query(address, None, 5)["clients"]]
        tasks.hold_gil(STALL)  # this process's threads, its client I/O thread among them, stall
        helpers.touch(gate)
        assert [f.result(timeout=30) for f in futures] == [0, 1, 2, 3]
        # Kept, with its queued tasks: a dropped client would have sent them again.
        report = query(address, None, 5)
        assert [c["id"] for c in report["clients"]] == clients
        assert report["submitted"] == 4, report
    assert sorted(helpers.runs_per_value(str(runs)).items()) == [(i, 1) for i in range(4)]
    # The README promises this line; it is also the only sign that the broker
    # saw the client silent (its report gives no client's last heartbeat).
    assert re.search(r"client \w+ silent for [\d.]+s but still connected", broker_log()), \
        broker_log()


def tcp_unread(port: int) -> list:
    """Connections (on this host) to 127.0.0.1:``port`` as (state, bytes received and not
    read yet): /proc/net/tcp, whose states and queues are in hex."""
    found = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[2] == f"0100007F:{port:04X}":
                found.append((fields[3], int(fields[4].split(":")[1], 16)))
    return found


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.uname().machine not in tasks.FUTEX_SYSCALLS,
                    reason="syscall numbers known for x86_64 and aarch64 only")
def test_a_worker_told_bye_once_its_parent_is_gone_stops_quietly(programs, tmp_path):
    """An embedded cluster stopping: its broker sees the watched pipe close,
    says BYE, and exits. A worker that reads the BYE before it sees the pipe
    close must still stop as quietly as one that sees the pipe first.

    The order is built, not waited for: a task holds the worker's GIL once
    its loop sleeps in poll, so that the loop's poll returns (with nothing)
    and waits; the pipe closes and the BYE arrives meanwhile; then the task
    lets go, and the loop reads the BYE before it polls again."""
    broker = Peer(zmq.ROUTER)  # a broker by hand, to send the BYE when it must
    address = broker.bind()
    port = int(address.rsplit(":", 1)[1])
    watch_read, watch_write = os.pipe()
    fifo, mark = str(tmp_path / "stall"), str(tmp_path / "stalled")
    os.mkfifo(fifo)
    release = os.open(fifo, os.O_RDWR)  # open for writing before the task reads it
    log_path = tmp_path / "worker.log"
    try:
        with open(log_path, "w") as log:
            worker = programs.worker(address, "--watch-fd", str(watch_read),
                                     "--path", REPO, "--log-level", "INFO",
                                     pass_fds=(watch_read,), stderr=log)
        os.close(watch_read)
        hello = broker.receive(30)
        assert hello is not None, "no HELLO from the worker"
        assert hello.message.op is Op.HELLO
        worker_id = hello.sender
        broker.send(Welcome(PROTOCOL_VERSION, 1.0, 120, 1 << 30), to=worker_id)
        rows, payload = packed_rows(
            [[b"c-test", 1]], [dumps_call(tasks.stall_main_loop_until_told, (fifo, mark), {})])
        broker.send(Dispatch(rows), payload, to=worker_id)
        wait_until(lambda: os.path.exists(mark), 30, what="the task to start")
        futex = tasks.FUTEX_SYSCALLS[os.uname().machine]
        wait_until(lambda: tasks.main_thread_syscall(worker.pid) in futex, 30,
                   what="the worker's loop to leave poll and wait for the GIL")
        os.close(watch_write)  # the embedding process is gone...
        watch_write = None
        broker.send(Bye("broker stopping"), to=worker_id)  # ...then its broker
        broker.close(linger=10)  # returns once the BYE is sent
        wait_until(lambda: all(state != "01" and unread == 0  # not ESTABLISHED, all read
                               for state, unread in tcp_unread(port)), 30,
                   what="the worker's ZeroMQ to have read the BYE")
        os.write(release, b"x")
        assert worker.wait(30) == 5  # worker.agent.Exit.PARENT_GONE
    finally:
        os.close(release)
        if watch_write is not None:
            os.close(watch_write)
        broker.close()
    log = log_path.read_text()
    assert "parent process has exited; stopping" in log, log
    assert "WARNING" not in log and "ERROR" not in log, log
