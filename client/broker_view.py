"""What the broker has told this client, apart from tasks: socket-free, ``now`` passed in."""
from __future__ import annotations

import threading
from typing import Any

from zeropool.protocol import defaults
from zeropool.protocol.defaults import python_minor


class BrokerView:
    """The broker as the client last heard it: connected or refused, its
    message size limit, its workers (how many, since when none, and whether
    their Python and cloudpickle versions match ``versions``, this client's)."""

    def __init__(self, address: str, versions: dict) -> None:
        self.address = address
        self.connected = False  # WELCOMEd on the current socket
        self.refused: str | None = None  # why the broker (or the handshake) refused us
        self.max_message_size = defaults.MAX_MESSAGE_SIZE
        self.workers = 0  # attached to the broker, as it last said
        # Since when the broker has said it has no worker at all (None: it has some).
        self.no_workers_since: float | None = None
        # Since when it has been silent past its liveness (None: it answers).
        self.silent_since: float | None = None
        self._versions = versions
        self._versions_seen: set[tuple] = set()  # the workers' versions, compared already
        self._workers_changed = threading.Condition()

    def welcome(self, welcome: Any) -> None:
        """A WELCOME: connected, under the broker's size limit."""
        self.max_message_size = welcome.max_message_size
        self.connected = True

    def heard(self, heartbeat: Any, now: float) -> list[str]:
        """A HEARTBEAT at ``now``; returns a warning for each new set of
        worker versions that differs from this client's."""
        with self._workers_changed:
            self.workers = heartbeat.workers
            self._workers_changed.notify_all()
        if heartbeat.workers:
            self.no_workers_since = None
        elif self.no_workers_since is None:
            self.no_workers_since = now
        return self.version_mismatches(heartbeat.versions) if heartbeat.versions else []

    def version_mismatches(self, workers: list[dict]) -> list[str]:
        """A text for each set of versions, not seen before, that workers run
        whose Python minor version or cloudpickle differs from this client's."""
        mine, texts = self._versions, []
        for theirs in workers:
            key = tuple(sorted(theirs.items()))
            if key in self._versions_seen:
                continue
            self._versions_seen.add(key)
            python, cloudpickle = theirs.get("python", ""), theirs.get("cloudpickle", "")
            if (python_minor(python) == python_minor(mine["python"])
                    and cloudpickle == mine["cloudpickle"]):
                continue
            texts.append(
                f"workers of the broker at {self.address} run Python {python} with "
                f"cloudpickle {cloudpickle}, this client Python {mine['python']} with "
                f"cloudpickle {mine['cloudpickle']}: functions sent by value (defined in "
                "__main__, lambdas, closures) may not load there. Install the same "
                "versions on both sides")
        return texts

    def without_workers(self, now: float) -> float:
        """For how long, at ``now``, the broker has said it has no worker (0: it has some)."""
        return 0.0 if self.no_workers_since is None else now - self.no_workers_since

    def wait_for_workers(self, count: int, timeout: float) -> bool:
        """Wait until the broker reports at least ``count`` workers attached."""
        with self._workers_changed:
            return self._workers_changed.wait_for(lambda: self.workers >= count, timeout)
