"""protocol.sockets: the hot-path socket calls and a socket shared between threads."""
from __future__ import annotations

import queue
import select
import threading

import pytest
import zmq

from zeropool.protocol.sockets import SocketTurn, readable, recv_frames, send_frames
from zeropool.protocol.waker import Waker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair():
    """A DEALER connected to an echoing ROUTER on loopback (its own thread)."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = context.socket(zmq.PAIR)
    stop.bind("inproc://stop-echo")

    def echo() -> None:
        stopped = context.socket(zmq.PAIR)
        stopped.connect("inproc://stop-echo")
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(stopped, zmq.POLLIN)
        while stopped not in dict(poller.poll()):
            router.send_multipart(router.recv_multipart())
        stopped.close(linger=0)
        router.close(linger=0)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield dealer
    stop.send(b"")
    thread.join(10)
    stop.close(linger=0)
    dealer.close(linger=0)
    context.term()


def test_frames_round_trip_with_payloads_not_copied(pair):
    send_frames(pair, [b"header", b"x" * 100_000, memoryview(b"tail")])
    poller = zmq.Poller()
    poller.register(pair, zmq.POLLIN)
    assert poller.poll(10_000)
    assert readable(pair)
    frames = recv_frames(pair)
    assert frames[0] == b"header" and type(frames[0]) is bytes
    assert [f.bytes for f in frames[1:]] == [b"x" * 100_000, b"tail"]
    assert all(isinstance(f, zmq.Frame) for f in frames[1:])
    assert not readable(pair)


def test_giving_the_turn_back_wakes_the_owner_for_a_message_whose_edge_it_consumed(pair):
    """A sender's use of the socket can consume the ZMQ_FD edge of a message
    that has just arrived; the owner, asleep on that descriptor, would sleep
    through it. So giving the turn back looks, and raises the waker."""
    waker = Waker()
    turn = SocketTurn(waker)
    assert turn.try_take()
    send_frames(pair, [b"ping"])
    while not readable(pair):  # each look also takes the descriptor's edge
        pass
    assert not select.select([pair.getsockopt(zmq.FD)], [], [], 0)[0]
    turn.give_back(pair)
    assert select.select([waker.fd], [], [], 0)[0]
    assert recv_frames(pair) == [b"ping"]
    assert turn.try_take()  # given back
    turn.give_back(pair)
    waker.clear()
    assert not select.select([waker.fd], [], [], 0)[0]  # nothing waiting: no wake


def test_replies_reach_the_owner_while_other_threads_send(pair):
    """The owner sleeps in poll with the turn released and wakes for every
    reply, while another thread keeps taking the turn to send."""
    waker = Waker()
    turn = SocketTurn(waker)
    received: queue.SimpleQueue = queue.SimpleQueue()
    done = threading.Event()
    owner_ready = threading.Event()

    def owner() -> None:
        poller = zmq.Poller()
        poller.register(pair.getsockopt(zmq.FD), zmq.POLLIN)
        poller.register(waker.fd, zmq.POLLIN)
        with turn:
            owner_ready.set()
            while not done.is_set():
                events = turn.poll(poller, pair, 60_000)
                waker.clear(waker.fd in events)
                while readable(pair):
                    received.put(recv_frames(pair)[0])

    thread = threading.Thread(target=owner, daemon=True)
    thread.start()
    assert owner_ready.wait(10)
    sent = 0
    for burst in range(100):
        for _ in range(5):  # later sends process the earlier replies' arrival
            while not turn.try_take():
                pass
            try:
                send_frames(pair, [b"%d" % sent])
                sent += 1
            finally:
                turn.give_back(pair)
        for _ in range(5):
            received.get(timeout=10)  # queue.Empty here: the owner slept through a reply
    done.set()
    waker.wake()
    thread.join(10)
    assert not thread.is_alive()


def test_a_submit_interrupted_mid_send_still_runs_its_task(shared_cluster, monkeypatch):
    """Ctrl-C while a caller sends its lone task itself, after half the
    message went: the task is neither lost nor sent twice, and the executor
    goes on (the connection with the half message is replaced)."""
    from zeropool.client import Executor
    from zeropool.protocol import connection as connection_module
    from tests.helpers import square

    real = connection_module.send_frames
    interrupts = []

    def interrupted(sock, frames, flags=0):
        if threading.current_thread() is threading.main_thread() and not interrupts:
            interrupts.append(len(frames))
            sock.send(frames[0], zmq.SNDMORE | flags)  # the header, then nothing
            raise KeyboardInterrupt
        return real(sock, frames, flags)

    with Executor(shared_cluster) as ex:
        assert ex.submit(square, 2).result(timeout=30) == 4  # connected; nothing in flight
        monkeypatch.setattr(connection_module, "send_frames", interrupted)
        with pytest.raises(KeyboardInterrupt):
            ex.submit(square, 3)
        assert interrupts  # it was sent from this thread, and interrupted
        (lost,) = ex._session.pending_futures()
        assert lost.result(timeout=30) == 9
        assert ex.submit(square, 4).result(timeout=30) == 16
