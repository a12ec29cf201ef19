"""What the broker tells about itself: the status report, and the worker
count and versions that clients get in each HEARTBEAT.

Plain functions over BrokerState and the counters; no sockets.
"""
from __future__ import annotations

from zeropool.broker.state import BrokerState
from zeropool.broker.stats import Stats, slots
from zeropool.protocol import PROTOCOL_VERSION, Heartbeat
from zeropool.protocol.messages import MAX_VERSION_SETS
from zeropool.protocol.security import key_id

# What clients compare (see Hello.versions); a worker may say more.
VERSION_NAMES = ("python", "zeropool", "cloudpickle")


def client_heartbeat(workers: dict) -> Heartbeat:
    """The worker count, and the distinct versions the workers run."""
    distinct = {tuple((name, w.versions[name]) for name in VERSION_NAMES
                      if name in w.versions)
                for w in workers.values() if w.versions}
    return Heartbeat(len(workers), versions=[dict(v) for v in sorted(distinct)[:MAX_VERSION_SETS]])


def status(state: BrokerState, stats: Stats, peer_keys: dict, now: float, *, address: str,
           pid: int, curve: bool, uptime: float) -> dict:
    """What ``broker status`` shows: plain values only. ``peer_keys``: the
    key each peer said HELLO with, under CURVE."""
    demand = slots(state)
    workers = [{
        "id": _text(w.worker_id), "host": w.host, "pid": w.pid, "threads": w.threads,
        "busy": sum(t.started for t in w.in_flight.values()), "held": w.occupied,
        "done": w.done, "failed": w.failed, "resources": w.resources, "free": w.free,
        "versions": w.versions,
        "draining": w.draining, "last_heartbeat": round(now - w.last_seen, 3),
        "key": key_id(peer_keys[w.worker_id]) if w.worker_id in peer_keys else None,
    } for w in state.workers.values()]
    clients = [{
        "id": _text(c.client_id), "host": c.host, "pid": c.pid, "queued": c.queued,
        "in_flight": c.in_flight, "done": c.done,
    } for c in state.clients.values()]
    return {
        "address": address, "pid": pid, "protocol": PROTOCOL_VERSION,
        "curve": curve, "uptime": round(uptime, 1),
        "queued": state.queue.count, "in_flight": len(state.in_flight),
        "tasks_per_second": round(stats.rate(now), 2), "submitted": stats.submitted,
        "completed": stats.completed, "failed": stats.failed, "requeued": stats.requeued,
        "cancelled": stats.cancelled, "unloadable": stats.unloadable,
        # What autoscaling reads (zeropool_demand_slots, zeropool_capacity_slots).
        "demand_slots": demand.demand, "capacity_slots": demand.capacity,
        "workers": workers, "clients": clients,
        # msgpack maps need text keys here: the report is decoded strictly.
        "queued_by_priority": {str(p): n for p, n in
                               sorted(state.queue.by_priority().items(), reverse=True)},
        "unsatisfiable": [{"resources": dict(needs), "queued": count}
                          for needs, count in state.roster.unsatisfiable()],
    }


def _text(peer_id: bytes) -> str:
    return peer_id.decode("utf-8", "backslashreplace")
