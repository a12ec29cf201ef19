"""Numbers that the broker, workers and clients must agree on."""
from __future__ import annotations

import functools
import importlib.metadata
import platform

# Bumped on any incompatible change to messages.py, frames.py or payload.py
# (3: a call may carry its function's pickle as bytes, which older workers
# would try to call; 4: tasks carry options, priority and resources, that an
# older broker would refuse, and workers offer resources; 5: a map chunk
# carries its function's pickle as bytes, which older workers would call).
PROTOCOL_VERSION = 5

# A connection silent for HEARTBEAT_LIVENESS * HEARTBEAT_INTERVAL seconds is
# closed by libzmq, and its peer is dead (see broker.server, "Liveness"); a peer
# whose connection lives is not, however long its Python threads are silent.
# One second keeps idle traffic negligible; five misses tolerate a loaded
# machine or network while still detecting a dead peer within a few seconds.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_LIVENESS = 5

# Reconnect delay after losing the broker doubles from the first value to the cap.
RECONNECT_DELAY = 0.1
RECONNECT_DELAY_MAX = 5.0

# Large enough for any sane argument, finite so one message cannot exhaust
# the broker's memory. Enforced by ZeroMQ (MAXMSGSIZE applies per frame) and
# checked again per message.
MAX_MESSAGE_SIZE = 1 << 30

# A call or result that pickles to one frame this small travels inside the
# msgpack header instead of as a frame of its own: per-frame costs (a
# syscall-free but still microseconds-long send and receive on every hop)
# dominate tasks this size. Bigger payloads keep their zero-copy frames.
INLINE_MAX = 4096

# How many workers a task may be in flight on when they die before it is
# declared a poison task and failed instead of requeued.
MAX_TASK_RETRIES = 3

# How long a client waits for a broker to answer its HELLO.
CONNECT_TIMEOUT = 10.0
# pyzmq sends a frame at least this large without copying it, and then needs
# its garbage-collector thread to learn when ZeroMQ is done with the buffer: a
# wake-up and the GIL per frame. Up to here a copy is cheaper (pyzmq's own
# default is 64 KiB, which a header batching a thousand small tasks passes).
COPY_THRESHOLD = 1 << 20


@functools.lru_cache(maxsize=None)
def versions() -> dict[str, str]:
    """What this process runs, as peers announce it in HELLO: a function sent
    by value loads only under the same Python minor version, and best with
    the same cloudpickle. Read from the installed metadata, so that the
    broker, which never imports cloudpickle, can say it too."""
    found = {"python": platform.python_version()}
    for package in ("zeropool", "cloudpickle"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "unknown"
    return found


def python_minor(version: str) -> str:
    """'3.12.1' -> '3.12'."""
    return ".".join(version.split(".")[:2])
