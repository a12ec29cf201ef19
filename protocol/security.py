"""CURVE keys on the peer side: how a client or worker proves who it is.

A broker started with ``--curve-secret-key`` and ``--authorized-keys``
encrypts every connection and admits only peers whose public key is in its
directory. Peers then need the broker's public key and a key pair of their
own, given as the files ``broker keygen`` writes (ZeroMQ's certificate
format: ``NAME.key`` holds the public key, ``NAME.key_secret`` both).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Mapping

import zmq
import zmq.auth
from zmq.utils.monitor import parse_monitor_message

ENV_SERVER_KEY = "ZEROPOOL_CURVE_SERVER_KEY"
ENV_KEY = "ZEROPOOL_CURVE_KEY"


def load_public_key(path: str) -> bytes:
    """The Z85 public key in a ``.key`` or ``.key_secret`` file."""
    return _load(path)[0]


def load_key_pair(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file."""
    public, secret = _load(path)
    if secret is None:
        raise ValueError(f"{path} holds only a public key; give the matching .key_secret file "
                         "(broker keygen writes both)")
    return public, secret


def _load(path: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read a CURVE key from {path}: {exc}; make keys with "
                         "'broker keygen DIR --name NAME'") from None
    if public is None:
        raise ValueError(f"{path} holds no CURVE public key; make keys with "
                         "'broker keygen DIR --name NAME'")
    return public, secret


def key_id(public_key: bytes) -> str:
    """A short, loggable name for a Z85 public key."""
    return public_key[:8].decode("ascii", "replace")


def keygen(directory: str, name: str) -> tuple[str, str]:
    """Write NAME.key and NAME.key_secret into ``directory``; refuses to overwrite."""
    os.makedirs(directory, exist_ok=True)
    public = os.path.join(directory, f"{name}.key")
    secret = os.path.join(directory, f"{name}.key_secret")
    for path in (public, secret):
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; remove it first to make a new key")
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return public, secret


@dataclass(frozen=True, slots=True)
class Security:
    """What a client or worker needs to talk to a broker that has CURVE on.

    ``server_key`` is the broker's public key; ``public_key`` and
    ``secret_key`` are this peer's pair. All three are Z85 (40 characters).
    """

    server_key: bytes
    public_key: bytes
    secret_key: bytes

    def __post_init__(self) -> None:
        for field in ("server_key", "public_key", "secret_key"):
            value = getattr(self, field)
            if not isinstance(value, bytes) or len(value) != 40:
                raise ValueError(f"Security.{field} must be a 40-byte Z85 CURVE key; "
                                 "use Security.from_files() to load the files broker keygen "
                                 "writes")

    @classmethod
    def from_files(cls, server_key: str, key: str) -> Security:
        """``server_key``: the broker's ``.key`` file; ``key``: this peer's ``.key_secret``."""
        public, secret = load_key_pair(key)
        return cls(load_public_key(server_key), public, secret)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Security | None:
        """From $ZEROPOOL_CURVE_SERVER_KEY and $ZEROPOOL_CURVE_KEY; None if neither is set."""
        server_key, key = environ.get(ENV_SERVER_KEY), environ.get(ENV_KEY)
        if not server_key and not key:
            return None
        if not (server_key and key):
            missing = ENV_KEY if server_key else ENV_SERVER_KEY
            raise ValueError(f"{missing} is not set; CURVE needs both {ENV_SERVER_KEY} (the "
                             f"broker's .key file) and {ENV_KEY} (this peer's .key_secret file)")
        return cls.from_files(server_key, key)

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` (before it connects) a CURVE client of the broker."""
        socket.curve_serverkey = self.server_key
        socket.curve_publickey = self.public_key
        socket.curve_secretkey = self.secret_key


_UNAUTHORIZED = (
    "the broker refused this peer's CURVE key {key}: it is not (or no longer) among the "
    "broker's authorized keys (broker --authorized-keys DIR); copy this peer's .key file there")
_NEEDS_KEYS = (
    "the broker requires CURVE keys and this peer has none; give it the broker's public key "
    f"and a key pair of its own (${ENV_SERVER_KEY} and ${ENV_KEY}, or the matching options)")
_BROKER_HAS_NO_KEYS = (
    "this peer uses CURVE keys and the broker does not; start the broker with "
    "--curve-secret-key and --authorized-keys, or connect without keys")
_WRONG_SERVER_KEY = (
    "the CURVE handshake with the broker failed: the broker's public key given to this peer "
    "does not match the broker's secret key")
# A handshake cut short without a reason is also what a broker dying mid-handshake
# looks like; only several in a row, none succeeding, point at a wrong key.
_UNEXPLAINED_FAILURES = 3


class HandshakeWatch:
    """Reports, through a monitor socket, why a connection's handshake failed."""

    def __init__(self, socket: zmq.Socket, security: Security | None) -> None:
        self._security = security
        self._socket = socket
        self._unexplained = 0
        # Successful handshakes seen so far: more than one means ZeroMQ
        # connected again by itself, and what was on its way may be lost.
        self.handshakes = 0
        self.monitor = socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        # For a poll loop. ZMQ_FD signals an event only after a look that
        # found none, so look once now, before the connection starts; failure()
        # then reads to the end, unless it reports one (and the connection goes).
        self.fd = self.monitor.getsockopt(zmq.FD)
        self.monitor.getsockopt(zmq.EVENTS)

    def failure(self, events: dict | None = None) -> str | None:
        """Why handshakes are failing, from the events waiting; None if nothing
        says. With ``events`` (of a poll over ``fd``), only if there may be news."""
        if events is not None and self.fd not in events:
            return None
        while self.monitor.poll(0):
            message = parse_monitor_message(self.monitor.recv_multipart())
            event, value = message["event"], message["value"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._unexplained = 0
                self.handshakes += 1
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                return _UNAUTHORIZED.format(key=key_id(self._security.public_key)
                                            if self._security else "(none)")
            elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                    return _BROKER_HAS_NO_KEYS if self._security else _NEEDS_KEYS
                if self._security is not None:
                    return _WRONG_SERVER_KEY
                return (f"the handshake with the broker failed (ZMTP protocol error "
                        f"{value:#x}); check that the address is a zeropool broker's")
            elif self._security is not None:  # no detail
                self._unexplained += 1
                if self._unexplained >= _UNEXPLAINED_FAILURES:
                    return _WRONG_SERVER_KEY
        return None

    def close(self) -> None:
        # Before the socket closes: its monitor's inproc name is reused with its fd.
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)


def add_key_options(parser: argparse.ArgumentParser, who: str) -> None:
    """--curve-server-key and --curve-key, for a program that connects to a broker."""
    parser.add_argument("--curve-server-key", metavar="FILE",
                        default=os.environ.get(ENV_SERVER_KEY),
                        help="the broker's public .key file, for a broker with CURVE on "
                        f"(default: ${ENV_SERVER_KEY})")
    parser.add_argument("--curve-key", metavar="FILE", default=os.environ.get(ENV_KEY),
                        help=f"{who}'s .key_secret file (from 'broker keygen'); its .key must "
                        f"be in the broker's --authorized-keys (default: ${ENV_KEY})")


def security_from_options(parser: argparse.ArgumentParser,
                          args: argparse.Namespace) -> Security | None:
    """The Security those options describe; a usage error if they are incomplete or bad."""
    if not (args.curve_server_key or args.curve_key):
        return None
    if not (args.curve_server_key and args.curve_key):
        parser.error("CURVE needs both --curve-server-key and --curve-key")
    try:
        return Security.from_files(args.curve_server_key, args.curve_key)
    except ValueError as exc:
        parser.error(str(exc))


def close_watched(socket: zmq.Socket | None, watch: HandshakeWatch | None) -> None:
    """Close a socket and its handshake monitor, the monitor first."""
    if watch is not None:
        watch.close()
    if socket is not None:
        socket.close(linger=0)
