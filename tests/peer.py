"""A raw protocol peer for tests: one side of a conversation, spoken by hand.

A real broker meets a ``Peer`` that joins as a worker or a client, or a real
worker meets a ``Peer`` bound as its broker, so that the test alone decides
what that side says and when. It speaks the wire through ``protocol``'s own
``encode``/``decode``; tests that mean to send garbage use ``send_frames``.
Every wait has a timeout, and sockets close with linger 0.
"""
from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

import zmq

from zeropool.protocol import (
    PROTOCOL_VERSION, Hello, Op, Role, decode, encode, pack_payload,
)


class Received(NamedTuple):
    message: object
    payload: list
    sender: bytes | None  # the peer's routing id, for a ROUTER


class Peer:
    """A DEALER (or ROUTER) speaking the protocol. It sends no heartbeats of
    its own: a broker keeps it for as long as its connection lives (see
    broker.server, "Liveness")."""

    def __init__(self, kind: int = zmq.DEALER, identity: bytes | None = None,
                 context: zmq.Context | None = None) -> None:
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(kind)
        self.socket.setsockopt(zmq.LINGER, 0)
        if identity:
            self.socket.setsockopt(zmq.ROUTING_ID, identity)
        self.identity = identity

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def connect(self, address: str) -> Peer:
        self.socket.connect(address)
        return self

    def bind(self, host: str = "tcp://127.0.0.1") -> str:
        """Bind to a free port on ``host``; returns the address."""
        return f"{host}:{self.socket.bind_to_random_port(host)}"

    def send_frames(self, frames: list, to: bytes | None = None) -> None:
        self.socket.send_multipart(([to] if to else []) + list(frames))

    def send(self, message, payload=(), to: bytes | None = None) -> None:
        self.send_frames(encode(message, payload), to)

    def receive(self, timeout: float, sender: Role | None = None) -> Received | None:
        """The next message, or None after ``timeout`` seconds. ``sender``
        tells RESULTS headers apart (see protocol.decode)."""
        if not self.socket.poll(timeout * 1000):
            return None
        frames = self.socket.recv_multipart()
        peer = frames.pop(0) if self.socket.type == zmq.ROUTER else None
        message, payload = decode(frames, sender)
        return Received(message, payload, peer)

    def expect(self, wanted: Op | Callable[[object], bool], sender: Role | None = None,
               timeout: float = 30.0) -> Received:
        """The next message of kind ``wanted`` (or for which ``wanted(message)``
        is true); others are skipped."""
        matches = (lambda m: m.op is wanted) if isinstance(wanted, Op) else wanted
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.receive(left, sender)
            if got is not None and matches(got.message):
                return got
        what = wanted.value if isinstance(wanted, Op) else "awaited message"
        raise AssertionError(f"peer {self.identity!r}: no {what} within {timeout}s")

    def receive_until(self, op: Op, timeout: float = 30.0) -> list:
        """Every message up to and including the first of kind ``op``."""
        seen: list = []
        self.expect(lambda m: seen.append(m) or m.op is op, timeout=timeout)
        return seen

    def join_as_worker(self, address: str | None = None, credit: int = 1,
                       threads: int = 1, **fields):
        """HELLO as a worker offering ``credit`` slots; returns the WELCOME."""
        return self._join(address, Hello(Role.WORKER, PROTOCOL_VERSION, credit=credit,
                                         pid=os.getpid(), host="raw", threads=threads,
                                         **fields))

    def join_as_client(self, address: str | None = None, **fields):
        """HELLO as a client; returns the WELCOME."""
        fields = {"pid": os.getpid(), "host": "raw", **fields}
        return self._join(address, Hello(Role.CLIENT, PROTOCOL_VERSION, **fields))

    def _join(self, address: str | None, hello: Hello):
        if address is not None:
            self.connect(address)
        self.send(hello)
        answer, _, _ = self.expect(lambda m: m.op in (Op.WELCOME, Op.REFUSED, Op.ERROR))
        assert answer.op is Op.WELCOME, f"the broker did not welcome this peer: {answer}"
        return answer

    def dispatched(self, count: int, timeout: float = 30.0) -> list:
        """As a worker: the keys [client id, task id] of the next ``count`` tasks sent here."""
        rows: list = []
        deadline = time.monotonic() + timeout
        while len(rows) < count:
            dispatch, _, _ = self.expect(Op.DISPATCH, timeout=max(deadline - time.monotonic(), 0))
            rows += dispatch.tasks
        return [row[:2] for row in rows]

    def close(self, linger: float = 0) -> None:
        """Close, sending what is queued for up to ``linger`` seconds."""
        self.socket.close(linger=int(linger * 1000))
        if self._own_context:
            self.context.destroy(linger=0)


def packed_rows(keys: list, payloads: list) -> tuple[list, list]:
    """Rows ``[*key, nframes, inline]``, one per key and its payload frames
    (a call or a result), and the frames to send after the header."""
    rows, frames = [], []
    for key, payload in zip(keys, payloads, strict=True):
        nframes, inline, payload = pack_payload(payload)
        rows.append([*key, nframes, inline])
        frames += payload
    return rows, frames
