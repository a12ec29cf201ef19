"""Command line: ``broker --bind tcp://127.0.0.1:5555`` (also ``python -m zeropool.broker``),
``broker keygen DIR --name NAME`` to make CURVE keys, and ``broker status
ADDRESS`` to see what a running broker is doing."""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sys
from urllib.parse import urlsplit

import zmq

from zeropool.protocol import defaults
from zeropool.protocol.security import add_key_options, keygen, load_key_pair, security_from_options

log = logging.getLogger("zeropool.broker")

RET_OK = 0  # stopped by a signal or because its parent exited
RET_USAGE = 2  # bad command line (argparse's own code)
RET_BIND = 3  # the address could not be bound

DEFAULT_BIND = "tcp://127.0.0.1:5555"


def _env(name: str, default, kind=str):
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        sys.exit(f"broker: ${name}={value!r} is not a valid {kind.__name__}")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="broker", description="The zeropool broker: queues submitted calls and hands "
        "them to the workers attached to it. Clients and workers connect to the same address.",
        epilog="Other commands: 'broker status ADDRESS' shows a running broker's workers, "
        "clients and queue; 'broker keygen DIR --name NAME' writes CURVE key pairs (see "
        "'broker status --help', 'broker keygen --help').")
    p.add_argument("--bind", default=os.environ.get("ZEROPOOL_BIND", DEFAULT_BIND),
                   help="ZeroMQ address to listen on; a port of * picks a free one "
                   f"(default: $ZEROPOOL_BIND or {DEFAULT_BIND})")
    p.add_argument("--heartbeat-interval", type=float, metavar="SECONDS",
                   default=_env("ZEROPOOL_HEARTBEAT_INTERVAL", defaults.HEARTBEAT_INTERVAL,
                                float),
                   help="seconds between heartbeats; workers and clients adopt it "
                   f"(default: $ZEROPOOL_HEARTBEAT_INTERVAL or {defaults.HEARTBEAT_INTERVAL})")
    p.add_argument("--liveness", type=int,
                   default=_env("ZEROPOOL_LIVENESS", defaults.HEARTBEAT_LIVENESS, int),
                   help="heartbeat intervals a peer's connection may stay silent before it "
                   "is closed and the peer is dead; a live process keeps its connection, "
                   "even while a task holds its GIL "
                   f"(default: $ZEROPOOL_LIVENESS or {defaults.HEARTBEAT_LIVENESS})")
    p.add_argument("--max-retries", type=int,
                   default=_env("ZEROPOOL_MAX_RETRIES", defaults.MAX_TASK_RETRIES, int),
                   help="dead workers a task may take down before it fails as a poison task "
                   f"(default: $ZEROPOOL_MAX_RETRIES or {defaults.MAX_TASK_RETRIES})")
    p.add_argument("--max-message-size", type=int, metavar="BYTES",
                   default=_env("ZEROPOOL_MAX_MESSAGE_SIZE", defaults.MAX_MESSAGE_SIZE, int),
                   help="largest message accepted "
                   f"(default: $ZEROPOOL_MAX_MESSAGE_SIZE or {defaults.MAX_MESSAGE_SIZE})")
    p.add_argument("--curve-secret-key", metavar="FILE",
                   default=os.environ.get("ZEROPOOL_CURVE_SECRET_KEY"),
                   help="the broker's .key_secret file (from 'broker keygen'): encrypt every "
                   "connection and admit only peers whose key is in --authorized-keys "
                   "(default: $ZEROPOOL_CURVE_SECRET_KEY; none: no authentication)")
    p.add_argument("--authorized-keys", metavar="DIR",
                   default=os.environ.get("ZEROPOOL_AUTHORIZED_KEYS"),
                   help="directory of the public .key files of the workers and clients "
                   "allowed in; files added or removed take effect within one heartbeat "
                   "interval, and a peer whose key is removed is refused and forgotten, even "
                   "on a connection it already has "
                   "(default: $ZEROPOOL_AUTHORIZED_KEYS)")
    p.add_argument("--insecure", action="store_true", default=_env_flag("ZEROPOOL_INSECURE"),
                   help="allow binding a non-loopback address without CURVE keys: anyone "
                   "who can reach it can run code on the workers (default: $ZEROPOOL_INSECURE "
                   "or off)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   default=_env("ZEROPOOL_METRICS_PORT", None, int),
                   help="serve Prometheus metrics over HTTP on this port "
                   "(needs pip install 'zeropool[metrics]') (default: $ZEROPOOL_METRICS_PORT "
                   "or none)")
    p.add_argument("--metrics-host", metavar="HOST",
                   default=os.environ.get("ZEROPOOL_METRICS_HOST", "127.0.0.1"),
                   help="address the metrics endpoint listens on "
                   "(default: $ZEROPOOL_METRICS_HOST or 127.0.0.1)")
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


def keygen_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="broker keygen", description="Write CURVE key pairs for a broker, its workers "
        "and its clients: NAME.key (the public key, to copy into the broker's "
        "--authorized-keys directory or, for the broker's own, to give to peers) and "
        "NAME.key_secret (the pair; keep it private, readable only by its owner).")
    p.add_argument("directory", metavar="DIR", help="directory to write into (created)")
    p.add_argument("--name", action="append", required=True,
                   help="name of a key pair, e.g. broker, worker, client; repeatable")
    return p


def keygen_main(argv: list[str]) -> int:
    args = keygen_parser().parse_args(argv)
    for name in args.name:
        try:
            public, secret = keygen(args.directory, name)
        except (OSError, ValueError) as exc:
            print(f"broker keygen: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {public} and {secret}")
    return 0


def status_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="broker status", description="Show what a running broker is doing: its "
        "workers, its clients, its queue and its throughput. Exits 0 if the broker answered, "
        "1 if not (so it serves as a health check).")
    p.add_argument("address", nargs="?", default=os.environ.get("ZEROPOOL_ADDRESS"),
                   help="the broker's address (default: $ZEROPOOL_ADDRESS)")
    p.add_argument("--json", action="store_true", help="print the report as JSON, for scripts")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="how long to wait for the broker's answer (default: 5)")
    add_key_options(p, "the asking client")
    return p


def status_main(argv: list[str]) -> int:
    p = status_parser()
    args = p.parse_args(argv)
    if not args.address:
        p.error("give the broker's address, e.g. broker status tcp://127.0.0.1:5555")
    security = security_from_options(p, args)
    from zeropool.broker.status import query, render
    try:
        report = query(args.address, security, args.timeout)
    except (RuntimeError, zmq.ZMQError) as exc:
        print(f"broker status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ bind address can only be reached from this host."""
    parts = urlsplit(address)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface name or a host name
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "keygen":
        return keygen_main(argv[1:])
    if argv and argv[0] == "status":
        return status_main(argv[1:])
    p = parser()
    args = p.parse_args(argv)
    if (args.curve_secret_key is None) != (args.authorized_keys is None):
        p.error("CURVE needs both --curve-secret-key and --authorized-keys")
    curve = None
    if args.curve_secret_key:
        try:
            curve = load_key_pair(args.curve_secret_key)
        except ValueError as exc:
            p.error(str(exc))
        if not os.path.isdir(args.authorized_keys):
            p.error(f"--authorized-keys {args.authorized_keys} is not a directory")
    elif not is_loopback(args.bind) and not args.insecure:
        p.error(f"refusing to bind {args.bind} without keys: anyone who can reach it could "
                "run code on the workers. Make keys with 'broker keygen keys --name broker "
                "--name worker --name client', copy the peers' .key files into a directory "
                "and pass --curve-secret-key keys/broker.key_secret --authorized-keys DIR; "
                "or bind 127.0.0.1; or pass --insecure on a network you trust")
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if curve is None and not is_loopback(args.bind):
        log.warning("listening on %s WITHOUT authentication (--insecure): anyone who can "
                    "reach it can run code on the workers", args.bind)
    from zeropool.broker.server import Broker  # after logging is set up

    try:
        broker = Broker(args.bind, heartbeat_interval=args.heartbeat_interval,
                        liveness=args.liveness, max_retries=args.max_retries,
                        max_message_size=args.max_message_size, curve_key_pair=curve,
                        authorized_keys=args.authorized_keys)
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s", args.bind, exc)
        return RET_BIND
    if args.metrics_port is not None:
        try:
            from zeropool.broker.metrics import serve_metrics
            serve_metrics(broker, args.metrics_port, args.metrics_host)
        except ImportError:
            broker.close()
            p.error("--metrics-port needs prometheus_client: pip install 'zeropool[metrics]'")
        except OSError as exc:
            broker.close()
            log.error("cannot serve metrics on %s:%d: %s", args.metrics_host, args.metrics_port,
                      exc)
            return RET_BIND
        log.info("Prometheus metrics on http://%s:%d/metrics", args.metrics_host,
                 args.metrics_port)

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
