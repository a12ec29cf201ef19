"""``broker status``: ask a running broker for its report and print it."""
from __future__ import annotations

import os
import time

import zmq

from zeropool.protocol import PROTOCOL_VERSION, Op, ProtocolError, Stats, decode, encode
from zeropool.protocol.security import HandshakeWatch, Security


def query(address: str, security: Security | None, timeout: float) -> dict:
    """The broker's report; RuntimeError saying why if there is none."""
    context = zmq.Context()
    watch = None
    try:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, f"status-{os.getpid()}-{os.urandom(3).hex()}".encode())
        if security is not None:
            security.apply(sock)
        watch = HandshakeWatch(sock, security)
        sock.connect(address)
        sock.send_multipart(encode(Stats(PROTOCOL_VERSION)))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(watch.monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            events = dict(poller.poll(left * 1000))
            if watch.monitor in events and (failure := watch.failure()):
                raise RuntimeError(f"cannot connect to {address}: {failure}")
            if sock in events:
                try:
                    message, _ = decode(sock.recv_multipart(copy=False))
                except ProtocolError as exc:
                    raise RuntimeError(f"bad answer from {address}: {exc}") from None
                if message.op is Op.STATS_REPLY:
                    return message.report
                if message.op is Op.REFUSED:
                    raise RuntimeError(f"the broker at {address} refused: {message.reason}")
        raise RuntimeError(f"no broker answered at {address} within {timeout:g}s")
    finally:
        if watch is not None:
            watch.close()
        context.destroy(linger=0)


def render(report: dict) -> str:
    """The report as tables, in the manner of ``kubectl get``."""
    lines = [
        f"BROKER {report['address']}  pid {report['pid']}  protocol {report['protocol']}  "
        f"up {_duration(report['uptime'])}  "
        f"{'CURVE on' if report['curve'] else 'no authentication'}",
        f"QUEUED {report['queued']}  IN FLIGHT {report['in_flight']}  "
        f"TASKS/S (1 MIN) {report['tasks_per_second']:g}  SUBMITTED {report['submitted']}  "
        f"COMPLETED {report['completed']}  FAILED {report['failed']}  "
        f"REQUEUED {report['requeued']}  CANCELLED {report['cancelled']}",
        f"SLOTS DEMANDED {report['demand_slots']}  CONNECTED {report['capacity_slots']}",
        "",
    ]
    workers = [[w["id"], w["host"], w["pid"], w["threads"], w["busy"], w["held"], w["done"],
                w["failed"], _resources(w.get("free", {}), w.get("resources", {})),
                _versions(w.get("versions", {})),
                f"{w['last_heartbeat']:.1f}s ago" + (" (draining)" if w["draining"] else "")]
               for w in report["workers"]]
    # BUSY: tasks it has started; HELD: those plus tasks waiting on it (prefetched),
    # and tasks of gone clients that it still runs. RESOURCES: free/offered.
    lines += _table(["WORKER", "HOST", "PID", "THREADS", "BUSY", "HELD", "DONE", "FAILED",
                     "RESOURCES", "PYTHON/ZEROPOOL/CLOUDPICKLE", "LAST HEARTBEAT"], workers,
                    "no workers")
    lines.append("")
    clients = [[c["id"], c["host"], c["pid"], c["queued"], c["in_flight"], c["done"]]
               for c in report["clients"]]
    lines += _table(["CLIENT", "HOST", "PID", "QUEUED", "IN FLIGHT", "DONE"], clients,
                    "no clients")
    by_priority = report.get("queued_by_priority", {})
    if by_priority:
        lines.append("")
        lines += _table(["PRIORITY", "QUEUED"], [[p, n] for p, n in by_priority.items()], "")
    for row in report.get("unsatisfiable", []):
        needs = ",".join(f"{name}={amount:g}" for name, amount in row["resources"].items())
        lines.append(f"WAITING FOR A WORKER WITH {needs}: {row['queued']} task(s) "
                     "(no connected worker has it)")
    return "\n".join(lines)


def _resources(free: dict, offered: dict) -> str:
    return ",".join(f"{name}={free.get(name, 0):g}/{amount:g}"
                    for name, amount in offered.items()) or "-"


def _versions(versions: dict) -> str:
    return "/".join(versions.get(name, "?") for name in ("python", "zeropool", "cloudpickle"))


def _table(headers: list[str], rows: list[list], empty: str) -> list[str]:
    if not rows:
        return [f"({empty})"]
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
