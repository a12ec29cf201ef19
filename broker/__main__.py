"""Command line: ``broker --bind tcp://127.0.0.1:5555`` (also ``python -m broker``)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import zmq

from protocol import defaults

log = logging.getLogger("zeropool.broker")

RET_OK = 0  # stopped by a signal or because its parent exited
RET_USAGE = 2  # bad command line (argparse's own code)
RET_BIND = 3  # the address could not be bound

DEFAULT_BIND = "tcp://127.0.0.1:5555"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="broker", description="The zeropool broker: queues submitted calls and hands "
        "them to the workers attached to it. Clients and workers connect to the same address.")
    p.add_argument("--bind", default=os.environ.get("ZEROPOOL_BIND", DEFAULT_BIND),
                   help="ZeroMQ address to listen on; a port of * picks a free one "
                   f"(default: $ZEROPOOL_BIND or {DEFAULT_BIND})")
    p.add_argument("--heartbeat-interval", type=float, default=defaults.HEARTBEAT_INTERVAL,
                   metavar="SECONDS",
                   help=f"seconds between heartbeats (default: {defaults.HEARTBEAT_INTERVAL})")
    p.add_argument("--liveness", type=int, default=defaults.HEARTBEAT_LIVENESS,
                   help="heartbeats a peer may miss before it is declared dead "
                   f"(default: {defaults.HEARTBEAT_LIVENESS})")
    p.add_argument("--max-retries", type=int, default=defaults.MAX_TASK_RETRIES,
                   help="dead workers a task may take down before it fails as a poison task "
                   f"(default: {defaults.MAX_TASK_RETRIES})")
    p.add_argument("--max-message-size", type=int, default=defaults.MAX_MESSAGE_SIZE,
                   metavar="BYTES",
                   help=f"largest message accepted (default: {defaults.MAX_MESSAGE_SIZE})")
    p.add_argument("--log-level", default=os.environ.get("ZEROPOOL_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="logging level (default: $ZEROPOOL_LOG_LEVEL or INFO)")
    p.add_argument("--ready-fd", type=int, metavar="FD",
                   help="for programs that start a broker: write the bound address and a "
                   "newline to this file descriptor once listening (default: none)")
    p.add_argument("--watch-fd", type=int, metavar="FD",
                   help="for programs that start a broker: stop when this file descriptor "
                   "becomes readable, i.e. when the parent holding its other end exits "
                   "(default: none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from broker.server import Broker  # after logging is set up

    try:
        broker = Broker(args.bind, heartbeat_interval=args.heartbeat_interval,
                        liveness=args.liveness, max_retries=args.max_retries,
                        max_message_size=args.max_message_size)
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s", args.bind, exc)
        return RET_BIND

    def on_signal(signum: int, frame: object) -> None:
        if broker.stopping:  # a second signal: stop at once
            os._exit(RET_OK)
        log.info("received %s; stopping", signal.Signals(signum).name)
        broker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.ready_fd is not None:
        with os.fdopen(args.ready_fd, "w") as ready:
            ready.write(broker.address + "\n")
    broker.serve(watch_fd=args.watch_fd)
    return RET_OK


if __name__ == "__main__":
    sys.exit(main())
