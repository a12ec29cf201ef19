"""The transport's own floor: pyzmq alone, with nothing of zeropool.

A DEALER in this process sends each message to a ROUTER in a middle process,
which passes it to a DEALER in an end process and the reply back: the four
hops and three processes that a zeropool task crosses (client, broker,
worker), Python at every end, no pickling and no threads of our own. Its
round trip and its bandwidth are what zeropool's would be if zeropool itself
cost nothing, so the bench prints zeropool beside it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import zmq

from zeropool.client.cluster import local_address

_TIMEOUT_MS = 60_000  # a stuck relay fails the bench instead of hanging it


def _middle(directory: str) -> None:
    context = zmq.Context()
    front, back = context.socket(zmq.ROUTER), context.socket(zmq.ROUTER)
    # The transport the embedded cluster uses.
    front.bind(local_address(directory, "front"))
    back.bind(local_address(directory, "back"))
    print(front.getsockopt_string(zmq.LAST_ENDPOINT), back.getsockopt_string(zmq.LAST_ENDPOINT),
          flush=True)
    end_id, _ = back.recv_multipart()  # the end says hello first
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    client_id = b""
    while True:
        for sock, _ in poller.poll():
            if sock is front:
                frames = front.recv_multipart(copy=False)
                client_id = frames[0].bytes
                back.send_multipart([end_id, *frames[1:]], copy=False)
                if len(frames[1]) == 4 and frames[1].bytes == b"stop":
                    return
            else:
                frames = back.recv_multipart(copy=False)
                front.send_multipart([client_id, *frames[1:]], copy=False)


def _end(address: str) -> None:
    """Answers a message with its size, ``give N`` with N bytes, ``stop`` by leaving."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(address)
    sock.send(b"hello")
    blobs: dict[int, bytes] = {}
    while True:
        frame = sock.recv(copy=False)
        text = frame.bytes if len(frame) < 64 else b""
        if text == b"stop":
            return
        if text.startswith(b"give "):
            n = int(text[5:])
            sock.send(blobs.setdefault(n, b"x" * n), copy=False)
        else:
            sock.send(str(len(frame)).encode())


def measure(latency_calls: int, size: int, repeat: int) -> dict:
    """p50 and p99 round trip (µs) of a small message, and GB/s of ``size``
    bytes each way (to the end, with a short reply; and a short request
    answered by ``size`` bytes)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))

    def launch(*argv: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "bench.relay", *argv], cwd=root, env=env,
                                stdout=subprocess.PIPE, text=True)

    processes: list[subprocess.Popen] = []
    directory = tempfile.mkdtemp(prefix="zeropool-relay-")
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, _TIMEOUT_MS)
    try:
        processes.append(launch("middle", directory))
        front, back = processes[0].stdout.readline().split()
        processes.append(launch("end", back))
        sock.connect(front)
        samples = []
        for _ in range(latency_calls // 10):  # warm up
            sock.send(b"x")
            sock.recv()
        for _ in range(latency_calls):
            start = time.perf_counter()
            sock.send(b"x")
            sock.recv()
            samples.append(time.perf_counter() - start)
        samples.sort()
        data = b"x" * size
        request = f"give {size}".encode()
        for _ in range(4):  # warm up both ways, as the pools are (bench.run.bandwidth)
            sock.send(data, copy=False)
            assert int(sock.recv()) == size
            sock.send(request)
            assert len(sock.recv(copy=False)) == size
        start = time.perf_counter()
        for _ in range(repeat):
            sock.send(data, copy=False)
            assert int(sock.recv()) == size
        up = size * repeat / (time.perf_counter() - start) / 1e9
        start = time.perf_counter()
        for _ in range(repeat):
            sock.send(request)
            assert len(sock.recv(copy=False)) == size
        down = size * repeat / (time.perf_counter() - start) / 1e9
        sock.send(b"stop")  # the middle passes it on to the end
        return {"p50_us": samples[len(samples) // 2] * 1e6,
                "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
                "payload_up_GBps": up, "payload_down_GBps": down}
    finally:
        sock.close(linger=0)
        context.term()
        for process in processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1] == "middle":
        _middle(sys.argv[2])
    else:
        _end(sys.argv[2])
