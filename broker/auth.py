"""CURVE on the broker's side: the authorized keys and the ZAP handler.

ZeroMQ asks a ZAP handler (RFC 27) about every incoming CURVE handshake.
Ours answers on a REP socket in the broker's own poll loop, so a refusal is
logged with the peer's address and key, and the key ring it consults is the
one the loop reloads, without another thread. pyzmq's ``zmq.auth``
authenticators run a thread or an event loop of their own instead.
"""
from __future__ import annotations

import logging
import os

import zmq
import zmq.auth
from zmq.utils import z85

from zeropool.protocol.security import key_id

log = logging.getLogger("zeropool.broker")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
# Refusals logged per reload interval; a peer retrying with a bad key would flood the log.
MAX_REFUSALS_LOGGED = 10


class KeyRing:
    """The public keys found in a directory of ``.key`` files, reloaded on change."""

    def __init__(self, directory: str) -> None:
        if not os.path.isdir(directory):
            raise ValueError(f"authorized keys directory {directory} does not exist; make "
                             "keys with 'broker keygen DIR --name NAME' and copy each peer's "
                             "NAME.key there")
        self.directory = directory
        self._signature: tuple = ()
        self._names: dict[bytes, str] = {}  # z85 public key -> file name
        self.refresh()

    def __contains__(self, public_key: bytes) -> bool:
        return public_key in self._names

    def name_of(self, public_key: bytes) -> str:
        return self._names.get(public_key, "unknown")

    def refresh(self) -> set[bytes]:
        """Reload if any key file was added, removed or changed; returns revoked keys."""
        try:
            signature = tuple(sorted(
                (entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                for entry in os.scandir(self.directory) if entry.name.endswith(".key")))
        except OSError as exc:
            log.error("cannot read authorized keys in %s: %s; keeping the keys loaded",
                      self.directory, exc)
            return set()
        if signature == self._signature:
            return set()
        names = {}
        for name, _, _ in signature:
            path = os.path.join(self.directory, name)
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as exc:
                log.warning("skipped %s: not a CURVE public key (%s)", path, exc)
                continue
            if public:
                names[public] = name
        first = not self._signature
        revoked = set(self._names) - set(names)
        added = set(names) - set(self._names)
        self._names, self._signature = names, signature
        if first:
            log.info("%d authorized key(s) in %s", len(names), self.directory)
        else:
            log.info("authorized keys in %s changed: %d added, %d removed, %d in all",
                     self.directory, len(added), len(revoked), len(names))
        return revoked


class ZapHandler:
    """Answers ZeroMQ's authentication requests from the broker's loop."""

    def __init__(self, context: zmq.Context, keys: KeyRing) -> None:
        self.keys = keys
        self.socket = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)
        self.refusals = 0

    def handle(self) -> None:
        """Answer every request waiting."""
        while True:
            try:
                request = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.socket.send_multipart(self._answer(request))

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6 or request[0] != ZAP_VERSION:
            # libzmq itself sends these; anything else is a bug worth seeing.
            log.error("malformed ZAP request (%d frames)", len(request))
            request_id = request[1] if len(request) > 1 else b""
            return [ZAP_VERSION, request_id, b"500", b"malformed request", b"", b""]
        _, request_id, _domain, address, _identity, mechanism, *credentials = request
        peer = address.decode("ascii", "replace") or "unknown address"
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            self._refused(peer, f"mechanism {mechanism.decode('ascii', 'replace')}, not CURVE")
            return [ZAP_VERSION, request_id, b"400", b"CURVE required", b"", b""]
        public_key = z85.encode(credentials[0])
        if public_key not in self.keys:
            self._refused(peer, f"key {key_id(public_key)} is not in {self.keys.directory}")
            return [ZAP_VERSION, request_id, b"400", b"unknown key", b"", b""]
        # The user id travels with each message the peer sends: it is how the
        # broker knows whose key a HELLO came with.
        return [ZAP_VERSION, request_id, b"200", b"OK", public_key, b""]

    def _refused(self, peer: str, why: str) -> None:
        self.refusals += 1
        if self.refusals <= MAX_REFUSALS_LOGGED:
            log.warning("refused a connection from %s: %s", peer, why)
        elif self.refusals == MAX_REFUSALS_LOGGED + 1:
            log.warning("more connections refused; not logging them until the next reload")

    def close(self) -> None:
        self.socket.close(linger=0)
