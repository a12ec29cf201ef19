"""An embedded local cluster: a broker and worker processes started for one Executor.

They are started through their installed commands from a neutral working
directory (a user's module of the same name as one of ours is not found first) and each watches a
pipe whose write end only this process holds: when this process exits, even
by SIGKILL, the pipe reads as closed and they stop. No orphans.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import zmq

log = logging.getLogger("zeropool.client")

# How long processes get to exit after the watch pipe closes before SIGKILL.
STOP_TIMEOUT = 5.0


def _command(name: str) -> list[str]:
    """The installed console script beside this interpreter, else ``python -m zeropool.NAME``."""
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(script, os.X_OK):
        return [script]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", f"zeropool.{name}"]


def local_address(directory: str, name: str = "broker") -> str:
    """A Unix socket in ``directory`` on Linux (less round-trip time than TCP
    on loopback, and more bandwidth), else a free loopback port. Not on macOS:
    its periodic clean-up of the temporary directory may delete the socket
    file of a long-lived executor, and then workers could not reconnect."""
    path = os.path.join(directory, name)
    if (sys.platform.startswith("linux") and zmq.has("ipc")
            and len(path.encode()) < 100):  # sun_path holds 108 bytes
        return f"ipc://{path}"
    return "tcp://127.0.0.1:*"


class LocalCluster:
    """A broker on a local socket and one supervisor of ``workers`` processes
    (each replaced by a fresh one after ``max_tasks_per_child`` tasks, if given)."""

    def __init__(self, workers: int, threads: int = 1, log_level: str = "WARNING",
                 max_tasks_per_child: int | None = None) -> None:
        self.workers = workers
        self._watch_read, self._watch_write = os.pipe()
        self._cwd = tempfile.mkdtemp(prefix="zeropool-")
        self._processes: list[subprocess.Popen] = []
        # The embedded programs are configured by their command lines alone: a
        # user's settings for a remote broker (address, keys...) must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPOOL_")}
        # Modules importable here are importable in the workers, after their own paths.
        env["ZEROPOOL_PATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self._env = env
        try:
            ready_read, ready_write = os.pipe()
            try:
                self._start([*_command("broker"), "--bind", local_address(self._cwd),
                             "--ready-fd", str(ready_write), "--log-level", log_level],
                            extra_fds=(ready_write,))
            finally:
                os.close(ready_write)
            with os.fdopen(ready_read) as ready:
                self.address = ready.readline().strip()
            if not self.address:
                raise RuntimeError(
                    "the embedded broker exited before listening; its error is printed above. "
                    "Check that zeropool is installed (pip install zeropool) in "
                    f"{sys.executable}")
            recycling = ([] if max_tasks_per_child is None
                         else ["--max-tasks-per-child", str(max_tasks_per_child)])
            self._start([*_command("worker"), self.address, "--processes", str(workers),
                         "--threads", str(threads), "--log-level", log_level, *recycling])
        except BaseException:
            self.close()
            raise

    def _start(self, argv: list[str], extra_fds: tuple[int, ...] = ()) -> None:
        argv = [*argv, "--watch-fd", str(self._watch_read)]
        self._processes.append(subprocess.Popen(
            argv, cwd=self._cwd, env=self._env, stdin=subprocess.DEVNULL,
            pass_fds=(self._watch_read, *extra_fds)))

    def signal_workers(self, signum: int) -> None:
        """Send ``signum`` to every worker process now, not waiting for them to end
        (``close()`` does that)."""
        if len(self._processes) < 2 or self._watch_write is None:
            return  # the workers were never started, or are stopped already
        supervisor = self._processes[1]
        # Its children first: the supervisor forwards SIGTERM, but SIGKILL ends it alone.
        for pid in [*_children(supervisor.pid), supervisor.pid]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Stop every process of the cluster and wait for them."""
        if self._watch_write is not None:
            os.close(self._watch_write)  # every process sees EOF and exits
            os.close(self._watch_read)
            self._watch_write = None
        for process in self._processes:
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("embedded %s (pid %d) did not stop; killing it",
                            os.path.basename(process.args[0]), process.pid)
                process.send_signal(signal.SIGKILL)
                process.wait()
        shutil.rmtree(self._cwd, ignore_errors=True)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux; elsewhere none are found, and the
    watch pipe still ends them when the cluster closes)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except (OSError, ValueError):
        return []
