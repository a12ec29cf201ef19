"""Hosts of their own for tests: Linux network namespaces on one private switch.

    broker ns      worker-1 ns    worker-2 ns    client ns       (eth0, 10.77.0.x/24)
        |              |              |              |
    +---+--------------+--------------+--------------+---+
    |  switch ns: br0, one veth port per host              |
    +------------------------------------------------------+

Nothing touches the root namespace's interfaces: every veth is created inside
the switch namespace with its other end moved straight into its host's. A
program runs on a host through ``ip netns exec``, which execs it, so the PID
we hold is the program's own. Run as ``python -m tests.netns`` this module is
also the client program the test starts on the client host.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

SUBNET = "10.77.0"
_serial = itertools.count()


class Unavailable(Exception):
    """Raised when this machine cannot create network namespaces for us."""


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None if they can be tried."""
    if not sys.platform.startswith("linux"):
        return "network namespaces exist only on Linux"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    return None


def ip(*args: str) -> None:
    try:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(str(e)) from e
    if result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class Network:
    """A switch namespace and one namespace per host, each with one address.

    ``close()`` ends every program started here and deletes every veth and
    namespace; it is safe to call after a partial set-up.
    """

    def __init__(self, hosts: list[str]) -> None:
        self.prefix = f"zp{os.getpid()}-{next(_serial)}"
        self.switch = f"{self.prefix}-switch"
        self.addresses = {host: f"{SUBNET}.{i}" for i, host in enumerate(hosts, 1)}
        self.namespaces: list[str] = []
        self.ports: list[str] = []
        self.processes: list[subprocess.Popen] = []
        remove_orphans()
        try:
            self._add_namespace(self.switch)
        except RuntimeError as e:
            if "Permission denied" in str(e) or "Operation not permitted" in str(e):
                raise Unavailable(f"cannot create a network namespace: {e}") from e
            raise
        try:
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for host in hosts:
                self._add_host(host)
        except BaseException:
            self.close()
            raise

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _add_host(self, host: str) -> None:
        namespace = self.namespace(host)
        self._add_namespace(namespace)
        # Interface names are per namespace: the host's own name is the port's.
        ip("-n", self.switch, "link", "add", "name", host, "type", "veth",
           "peer", "name", "eth0", "netns", namespace)
        self.ports.append(host)
        ip("-n", self.switch, "link", "set", host, "master", "br0", "up")
        ip("-n", namespace, "addr", "add", f"{self.addresses[host]}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")

    def cut(self, host: str) -> None:
        """Unplug ``host``'s cable at the switch: no packet in or out, no RST, no FIN."""
        ip("-n", self.switch, "link", "set", host, "down")

    def restore(self, host: str) -> None:
        ip("-n", self.switch, "link", "set", host, "up")

    def start(self, host: str, argv: list[str], **popen) -> subprocess.Popen:
        """Start ``argv`` on ``host`` in a new session (so its group can be ended)."""
        process = subprocess.Popen(["ip", "netns", "exec", self.namespace(host), *argv],
                                   stdin=subprocess.DEVNULL, start_new_session=True, **popen)
        self.processes.append(process)
        return process

    def close(self) -> None:
        errors = []
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired as e:
                errors.append(str(e))
        self.processes.clear()
        # Namespaces are freed asynchronously by the kernel; deleting the
        # veths ourselves removes both ends at once.
        for port in self.ports:
            try:
                ip("-n", self.switch, "link", "del", port)
            except RuntimeError as e:
                errors.append(str(e))
        self.ports.clear()
        for namespace in reversed(self.namespaces):
            try:
                ip("netns", "del", namespace)
            except RuntimeError as e:
                errors.append(str(e))
        self.namespaces.clear()
        if errors:
            raise RuntimeError("network teardown: " + "; ".join(errors))


def remove_orphans() -> None:
    """Delete namespaces left by test runs that were killed before their teardown."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             timeout=30).stdout
    for match in re.finditer(r"^(zp(\d+)-\d+-\S+)", listing, re.MULTILINE):
        if not os.path.exists(f"/proc/{match[2]}"):
            subprocess.run(["ip", "netns", "del", match[1]], capture_output=True, timeout=30)


def wait(predicate, what: str, timeout: float = 60.0) -> None:
    """wait_until of tests.helpers, here so that tasks need nothing but the stdlib."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def run_task(runs: str, gate: str | None, value: int) -> tuple[int, int]:
    """Leave a file per execution (value and worker pid), wait for ``gate``."""
    with open(os.path.join(runs, f"{value}-{os.getpid()}-{time.monotonic_ns()}"), "w"):
        pass
    if gate is not None:
        wait(lambda: os.path.exists(gate), gate)
    return value, os.getpid()


def meet(directory: str, count: int) -> int:
    """Drop a file named by this worker's pid; return it once ``count`` workers did."""
    with open(os.path.join(directory, str(os.getpid())), "w"):
        pass
    wait(lambda: len(os.listdir(directory)) >= count, f"{count} workers to meet")
    return os.getpid()


def client_main(address: str, work: str, gated: int, total: int) -> None:
    """The client host's program; ``work`` holds its runs/, gate, restored and met/.

    Two phases: ``total`` tasks, the first ``gated`` held until the gate
    opens, their results written to ``results``; then, once the test says the
    cut link is back, rounds of one task per thread of two workers, each
    waiting until both workers run one, until both workers have delivered a
    result. Prints the pids that delivered those and how often each future
    completed, as JSON.
    """
    import zeropool

    def path(*names):
        return os.path.join(work, *names)

    completions: list[int] = []  # per future, in submission order

    def counted(future):
        i = len(completions)
        completions.append(0)
        future.add_done_callback(lambda _: completions.__setitem__(i, completions[i] + 1))
        return future

    with zeropool.Executor(address, connect_timeout=10) as ex:
        gates = [path("gate")] * gated + [None] * (total - gated)
        futures = [counted(ex.submit(run_task, path("runs"), gate, i))
                   for i, gate in enumerate(gates)]
        results = [future.result(timeout=60) for future in futures]
        with open(path("results.tmp"), "w") as f:
            json.dump(results, f)
        os.replace(path("results.tmp"), path("results"))  # appears whole
        wait(lambda: os.path.exists(path("restored")), "the link to be restored")
        # A round can end without the returning worker's results: tasks it
        # ran may have been requeued as it rejoined (a fault, so allowed).
        rounds: list[list[int]] = []
        deadline = time.monotonic() + 30
        while len(set(itertools.chain(*rounds))) < 2 and time.monotonic() < deadline:
            os.mkdir(path("met", str(len(rounds))))
            met = [counted(ex.submit(meet, path("met", str(len(rounds))), 2)) for _ in range(4)]
            rounds.append([future.result(timeout=60) for future in met])
    print(json.dumps({"rounds": rounds, "completions": completions}), flush=True)


if __name__ == "__main__":
    # Tasks defined here travel by value (this is __main__): workers need no test code.
    address, work, gated, total = sys.argv[1:]
    client_main(address, work, int(gated), int(total))
