"""Unit tests for broker.report: what ``broker status`` shows, and the worker
count and versions clients hear, built from a BrokerState directly."""
from __future__ import annotations

from zeropool.broker.report import client_heartbeat, status
from zeropool.broker.state import BrokerState
from zeropool.broker.stats import Stats
from zeropool.protocol import PROTOCOL_VERSION, TaskOptions

C1 = b"client-1"
W1 = b"worker-1"
W2 = b"worker-2"


def test_the_report_counts_tasks_peers_and_demand():
    state, stats = BrokerState(peer_timeout=10.0, max_retries=3), Stats()
    state.add_client(C1, [], now=0.0)
    for task_id in range(5):
        state.submit(C1, task_id, [b"call"])
    state.submit(C1, 9, [b"call"], options=TaskOptions.make(priority=2))
    state.submit(C1, 10, [b"call"], options=TaskOptions.make(resources={"gpu": 1}))
    state.add_worker(W1, 3, now=0.0, threads=2, host="h", pid=5)
    state.assign()
    state.started(W1, (C1, 9))
    stats.submitted = 7
    report = status(state, stats, {W1: b"k" * 40}, 2.5, address="tcp://x:1", pid=42,
                    curve=True, uptime=12.34)
    assert (report["address"], report["pid"], report["protocol"], report["curve"],
            report["uptime"]) == ("tcp://x:1", 42, PROTOCOL_VERSION, True, 12.3)
    assert (report["queued"], report["in_flight"], report["submitted"]) == (4, 3, 7)
    assert (report["demand_slots"], report["capacity_slots"]) == (7, 2)
    [worker] = report["workers"]
    assert worker["id"] == "worker-1" and (worker["busy"], worker["held"]) == (1, 3)
    assert worker["last_heartbeat"] == 2.5 and worker["key"] is not None
    assert report["clients"] == [{"id": "client-1", "host": "", "pid": 0, "queued": 4,
                                  "in_flight": 3, "done": 0}]
    assert report["queued_by_priority"] == {"0": 4}
    assert report["unsatisfiable"] == [{"resources": {"gpu": 1.0}, "queued": 1}]


def test_clients_hear_the_distinct_versions_the_workers_run():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    for worker_id in (W1, W2):
        state.add_worker(worker_id, 1, now=0.0)
        state.workers[worker_id].versions = {"python": "3.12.1", "zeropool": "1.0",
                                             "numpy": "2.0"}
    heartbeat = client_heartbeat(state.workers)
    assert heartbeat.workers == 2
    assert heartbeat.versions == [{"python": "3.12.1", "zeropool": "1.0"}]
