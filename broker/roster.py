"""Who is connected: when each peer was last heard, and what the workers
can run. Part of BrokerState (``state.roster``), over the same tables.

Plain objects, no sockets; ``now`` is passed in.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zeropool.broker.queue import TaskQueue
    from zeropool.broker.state import Client, Task, Worker


class Roster:
    """Liveness and resources of the connected peers."""

    def __init__(self, workers: dict[bytes, Worker], clients: dict[bytes, Client],
                 queue: TaskQueue, peer_timeout: float) -> None:
        self.workers = workers
        self.clients = clients
        self.queue = queue
        self.peer_timeout = peer_timeout
        # Resource needs -> whether some connected worker has them (until workers change).
        self._satisfiable: dict[tuple, bool] = {}

    def seen(self, peer_id: bytes, now: float) -> None:
        peer = self.workers.get(peer_id) or self.clients.get(peer_id)
        if peer is not None:
            peer.last_seen = now
            peer.silent = False

    def silent(self, now: float) -> list[bytes]:
        """Peers that have said nothing for longer than ``peer_timeout``, each
        once until it speaks again. Silence alone does not remove a peer: its
        Python threads may be held up by a call that keeps the GIL. A peer is
        gone when its connection is, which the broker learns by sending."""
        deadline = now - self.peer_timeout
        found = []
        for peers in (self.workers, self.clients):
            for peer_id, peer in peers.items():
                if peer.last_seen < deadline and not peer.silent:
                    peer.silent = True
                    found.append(peer_id)
        return found

    def satisfiable(self, needs: tuple) -> bool:
        """Whether some connected worker (not draining) has ``needs`` at all."""
        known = self._satisfiable.get(needs)
        if known is None:
            known = self._satisfiable[needs] = any(
                worker.could_fit(needs) for worker in self.workers.values()
                if not worker.draining)
        return known

    def workers_changed(self) -> None:
        """A worker came, went or drains: what is satisfiable may differ."""
        self._satisfiable.clear()

    def unsatisfiable(self) -> list[tuple[tuple, int]]:
        """Resource needs of queued tasks that no connected worker has, with
        how many such tasks are queued."""
        return [(needs, count) for needs, count in self.queue.by_needs()
                if not self.satisfiable(needs)]

    def queued(self) -> dict[tuple, Task]:
        """Every queued task by key (built on demand: for tests and tools)."""
        return {(client.client_id, task_id): task for client in self.clients.values()
                for task_id, task in client.waiting.items()}
