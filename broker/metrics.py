"""The Prometheus endpoint (``broker --metrics-port N``).

A collector renders the broker's own counters at scrape time, so the loop
keeps plain numbers and pays nothing per task for the endpoint. It runs on
prometheus_client's HTTP thread and only reads.
"""
from __future__ import annotations

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
)

from zeropool.broker.stats import Histogram, slots


class _Collector:
    def __init__(self, broker) -> None:
        self._broker = broker

    def collect(self):
        state, stats = self._broker.state, self._broker.stats
        yield GaugeMetricFamily("zeropool_queue_depth", "Tasks queued, not yet given to a worker",
                                value=state.queue.count)
        yield GaugeMetricFamily("zeropool_in_flight", "Tasks given to workers, not yet finished",
                                value=len(state.in_flight))
        by_priority = GaugeMetricFamily("zeropool_queued_tasks", "Tasks queued, by priority",
                                        labels=["priority"])
        for priority, count in state.queue.by_priority().items():
            by_priority.add_metric([str(priority)], count)
        yield by_priority
        by_client = GaugeMetricFamily("zeropool_client_queued_tasks",
                                      "Tasks queued, by client", labels=["client"])
        for client in list(state.clients.values()):
            by_client.add_metric([client.client_id.decode("utf-8", "backslashreplace")],
                                 client.queued)
        yield by_client
        yield GaugeMetricFamily("zeropool_workers", "Workers connected", value=len(state.workers))
        yield GaugeMetricFamily("zeropool_clients", "Clients connected", value=len(state.clients))
        # What autoscaling needs (deploy/kubernetes/scaledobject.yaml): demand
        # divided by the slots of one worker is the number of workers the work asks for.
        counts = slots(state)
        yield GaugeMetricFamily(
            "zeropool_demand_slots", "Worker slots the work asks for: tasks queued, held on "
            "workers and running", value=counts.demand)
        yield GaugeMetricFamily(
            "zeropool_capacity_slots", "Worker slots connected: threads of the workers that "
            "take tasks (draining ones excluded)", value=counts.capacity)
        for name, value, text in (
                ("submitted", stats.submitted, "Tasks accepted from clients"),
                ("completed", stats.completed, "Tasks that returned a value"),
                ("failed", stats.failed, "Tasks that raised, or failed as poison tasks"),
                ("requeued", stats.requeued, "Tasks requeued after their worker died"),
                ("cancelled", stats.cancelled, "Tasks cancelled before a worker got them"),
                ("unloadable", stats.unloadable,
                 "Calls a worker could not unpickle (clients resend them by value)")):
            yield CounterMetricFamily(f"zeropool_tasks_{name}", text, value=value)
        yield _histogram("zeropool_task_duration_seconds",
                         "From dispatch to result, as the broker sees it", stats.task_duration)
        yield _histogram("zeropool_dispatch_latency_seconds",
                         "From submit to dispatch: time spent queued", stats.dispatch_latency)
        yield GaugeMetricFamily("zeropool_broker_start_time_seconds",
                                "Unix time the broker started", value=self._broker.started_at)


def _histogram(name: str, text: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets = [("+Inf" if bound == float("inf") else repr(bound), count)
               for bound, count in histogram.cumulative()]
    return HistogramMetricFamily(name, text, buckets=buckets, sum_value=histogram.sum)


def serve_metrics(broker, port: int, host: str = "127.0.0.1"):
    """Start the endpoint on its own thread; returns (server, thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(broker))
    return start_http_server(port, addr=host, registry=registry)

