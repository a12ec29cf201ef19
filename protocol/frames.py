"""Multipart layout: ``[header, *payload]``, the header a msgpack map.

Routing frames are added and removed by the sockets' owners (ROUTER/DEALER);
everything between them is built and read here and nowhere else.
"""
from __future__ import annotations

from typing import Sequence

import msgpack

from zeropool.protocol.defaults import INLINE_MAX
from zeropool.protocol.messages import Message, Op, Role, TaskOptions
from zeropool.protocol.wire import KINDS, ProtocolError, short_repr

# Headers are ids and counts; 16 MiB holds batches of ~500k entries.
MAX_HEADER_SIZE = 16 << 20

_OPS = {op.value: op for op in Op}
# RESULTS means a different header in each direction.
_RESULTS = {Role.WORKER: KINDS[Op.RESULTS, Role.WORKER], None: KINDS[Op.RESULTS, Role.CLIENT],
            Role.CLIENT: KINDS[Op.RESULTS, Role.CLIENT]}


def _wire(value: object) -> object:
    """What msgpack cannot pack itself: TaskOptions travel as their map."""
    if isinstance(value, TaskOptions):
        return value.wire()
    raise TypeError(f"cannot send {type(value).__name__} in a header")


_packer = msgpack.Packer(use_bin_type=True, default=_wire)


def encode(message: Message, payload: Sequence = ()) -> list:
    """Frames for ``message`` followed by its payload frames (sent as they are)."""
    return [_packer.pack(message.header()), *payload]


def decode(frames: Sequence, sender: Role | None = None) -> tuple[Message, list]:
    """Parse ``[header, *payload]``; ``sender`` tells RESULTS headers apart.

    ``frames`` may hold ``bytes`` or ``zmq.Frame``-like objects (anything with
    the buffer protocol or a ``.bytes`` attribute). Raises ProtocolError.
    """
    if not frames:
        raise ProtocolError("empty message")
    raw = frames[0]
    raw = getattr(raw, "bytes", raw)
    if len(raw) > MAX_HEADER_SIZE:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_SIZE}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not msgpack: {exc}") from exc
    if type(header) is not dict:
        raise ProtocolError("header is not a map")
    # Not Op(value): its error message holds the builtin repr of the value,
    # which raises RecursionError for a list nested a thousand deep.
    value = header.get("op")
    op = _OPS.get(value) if type(value) is str else None
    if op is None:
        raise ProtocolError(f"unknown op {short_repr(value)}")
    kind = _RESULTS[sender] if op is Op.RESULTS else KINDS[op]
    return kind.parse(header), list(frames[1:])


def header_budget(max_message_size: int) -> int:
    """Bytes of inline payload and text a sender may put in one header: half of
    what the receiver accepts, leaving room for everything else in it."""
    return min(max_message_size, MAX_HEADER_SIZE) // 2


def text_size(text: str) -> int:
    """An upper bound of ``text``'s size in the header (UTF-8), without encoding it."""
    return 4 * len(text)


def pack_payload(frames: bytes | list) -> tuple[int, bytes, list]:
    """How one task's payload travels: ``(nframes, inline, frames)``. A single
    small ``bytes`` frame goes inline in the header (nframes 0); anything else
    as frames. ``frames`` may also be one ``bytes`` object alone."""
    if type(frames) is bytes:
        frames = [frames]
    if len(frames) == 1:
        frame = frames[0]
        if type(frame) is bytes and len(frame) <= INLINE_MAX:
            return 0, frame, []
    return len(frames), b"", frames


def unpack_payloads(rows: Sequence, count_at: int, payload: Sequence) -> list[list]:
    """Each row's payload: its inline bytes (the item after the count) if its
    frame count (at ``count_at``) is 0, else its next frames from ``payload``."""
    groups, start = [], 0
    for row in rows:
        count = row[count_at]
        if count:
            groups.append(payload[start:start + count])
            start += count
        else:
            groups.append([row[count_at + 1]])
    if start != len(payload):
        raise ProtocolError(f"header announces {start} payload frames, got {len(payload)}")
    return groups


def split_frames(counts: Sequence[int], payload: Sequence) -> list[list]:
    """Cut ``payload`` into consecutive groups of ``counts[i]`` frames."""
    if sum(counts) != len(payload):
        raise ProtocolError(f"header announces {sum(counts)} payload frames, got {len(payload)}")
    groups, start = [], 0
    for count in counts:
        groups.append(payload[start:start + count])
        start += count
    return groups
