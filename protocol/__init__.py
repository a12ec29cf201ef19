"""The zeropool wire: message kinds, frame layout and shared defaults.

This package deliberately does not import ``protocol.payload`` (the pickling
code), so that the broker, which imports only this, never loads an unpickler.
"""
from __future__ import annotations

from zeropool.protocol.defaults import PROTOCOL_VERSION
from zeropool.protocol.frames import (
    decode, encode, header_budget, pack_payload, split_frames, text_size, unpack_payloads,
)
from zeropool.protocol.messages import (
    Bye,
    Cancel,
    CancelReply,
    ClientResults,
    Dispatch,
    Drain,
    Error,
    Heartbeat,
    Hello,
    Op,
    ProtocolError,
    Refused,
    Role,
    Stats,
    StatsReply,
    Status,
    Submit,
    TaskOptions,
    Welcome,
    Withdraw,
    Withdrawn,
    WorkerResults,
    check_resources,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Bye",
    "Cancel",
    "CancelReply",
    "ClientResults",
    "Dispatch",
    "Drain",
    "Error",
    "Heartbeat",
    "Hello",
    "Op",
    "ProtocolError",
    "Refused",
    "Role",
    "Stats",
    "StatsReply",
    "Status",
    "Submit",
    "TaskOptions",
    "Welcome",
    "Withdraw",
    "Withdrawn",
    "WorkerResults",
    "check_resources",
    "decode",
    "encode",
    "header_budget",
    "pack_payload",
    "split_frames",
    "text_size",
    "unpack_payloads",
]
