"""Fixtures that start real brokers and workers through their command lines.

Everything binds to 127.0.0.1 on free ports. Teardown kills what a test
started by PID and checks that nothing it started is left running.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

BIN = os.path.dirname(sys.executable)


def command(name: str) -> list[str]:
    script = os.path.join(BIN, name)
    return [script] if os.path.exists(script) else [sys.executable, "-m", f"zeropool.{name}"]


def descendants(pid: int) -> set[int]:
    """All live descendants of ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Programs:
    """Starts ``broker`` and ``worker`` processes and ends them by PID."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen] = []

    def broker(self, *args: str, bind: str = "tcp://127.0.0.1:*",
               **popen) -> tuple[subprocess.Popen, str]:
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(
                [*command("broker"), "--bind", bind, "--ready-fd", str(write_fd), *args],
                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, **popen)
        finally:
            os.close(write_fd)
        self.processes.append(process)
        with os.fdopen(read_fd) as ready:
            address = ready.readline().strip()
        assert address, "broker did not start"
        return process, address

    def worker(self, address: str, *args: str, **popen) -> subprocess.Popen:
        process = subprocess.Popen([*command("worker"), address, *args],
                                   stdin=subprocess.DEVNULL, **popen)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                for pid in descendants(process.pid):
                    _kill(pid)
                process.kill()
            process.wait(10)
        self.processes.clear()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def programs(tmp_path):
    programs = Programs(tmp_path)
    yield programs
    programs.stop_all()


@pytest.fixture
def gate(tmp_path):
    """A file path that blocked tasks wait for; created at teardown at the latest."""
    path = str(tmp_path / "release")
    yield path
    with open(path, "a"):
        pass


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Every test ends with no process it started still running (processes of
    module-scoped fixtures, started before it, are theirs to end)."""
    before = descendants(os.getpid())
    yield
    deadline = time.monotonic() + 10
    while (left := descendants(os.getpid()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        _kill(pid)
    assert not left, f"processes left running after the test: {sorted(left)}"


@pytest.fixture(autouse=True)
def tests_travel_by_reference():
    """Workers started by command line cannot import this package, so a client
    sends it by value from then on, for the rest of its process; each test
    starts with it by reference again (tracebacks, module state)."""
    yield
    if "cloudpickle" not in sys.modules:
        return
    import cloudpickle

    from zeropool.protocol import payload
    try:
        cloudpickle.unregister_pickle_by_value(sys.modules["tests"])
    except ValueError:
        return  # it was not registered
    payload._forget_function_pickles()


@pytest.fixture(scope="module")
def shared_cluster():
    """A broker and two one-thread workers shared by a module's tests."""
    programs = Programs(None)
    _, address = programs.broker("--log-level", "WARNING")
    supervisor = programs.worker(address, "--processes", "2", "--log-level", "WARNING")
    deadline = time.monotonic() + 30
    while len(descendants(supervisor.pid)) < 2:  # so that tests count them as already there
        assert time.monotonic() < deadline, "worker processes did not start"
        time.sleep(0.01)
    yield address
    programs.stop_all()
