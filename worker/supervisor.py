"""``worker --processes N``: start N worker processes, watch them, restart
one that dies, and forward SIGTERM/SIGINT to them. A child that leaves to
be recycled (``worker --max-tasks-per-child``, ``--max-memory``) is replaced
at once, with one INFO line.

Children are forked after the imports, so they start in milliseconds, and are
put in their own process group: a Ctrl-C in the terminal reaches only the
supervisor, which forwards it once.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from typing import Callable, Mapping

log = logging.getLogger("zeropool.worker")

# A child that dies sooner than this after starting is restarted only after
# a delay that doubles up to the cap, so a crash loop does not spin the CPU.
QUICK_DEATH = 1.0
RESTART_DELAY_MAX = 10.0
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
REFUSED = 4  # a child's exit code when the broker refused it (worker.agent.Exit.REFUSED)


def _child(target: Callable[[int, int], int], slot: int, watch_read: int,
           watch_write: int) -> None:
    os.setpgid(0, 0)
    os.close(watch_write)  # only the supervisor holds it: EOF here means it is gone
    os._exit(target(watch_read, slot))


def supervise(processes: int, target: Callable[[int, int], int], watch_fd: int | None = None,
              recycled: Mapping[int, str] = {}) -> int:
    """Run ``target(fd, slot)`` in ``processes`` children until signalled; returns an
    exit code. ``slot`` (0 to ``processes`` - 1) is the child's place: its
    replacement gets the same one (and so the same devices, with --gpus).

    ``fd`` becomes readable when the supervisor dies, even by SIGKILL, so the
    children (in process groups of their own) never outlive it. A child that
    exits with a code in ``recycled`` left on purpose, to be replaced (its
    value says why, e.g. "ran 5 tasks"): a new one starts at once.
    """
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signals: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: signals.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: signals.append(signum))
    children = _Children(target, recycled)
    try:
        for slot in range(processes):
            children.start(slot)
        log.info("started %d worker processes: %s", processes,
                 ", ".join(str(p.pid) for p, _ in children.running.values()))
        while children.running:
            waitables = [p.sentinel for p, _ in children.running.values()] + [wake_read]
            if watch_fd is not None:
                waitables.append(watch_fd)
            ready = multiprocessing.connection.wait(waitables)
            if watch_fd is not None and watch_fd in ready:
                log.info("parent process has exited; stopping worker processes")
                children.kill()
                return 0
            if wake_read in ready:
                os.read(wake_read, 512)
            while signals:
                children.forward(signals.pop(0))
            children.reap()
    finally:
        signal.set_wakeup_fd(-1)
        children.close()
        for fd in (wake_read, wake_write):
            os.close(fd)
    return children.exit_code


class _Children:
    """The supervisor's worker processes, by slot, and what to do when one exits."""

    def __init__(self, target: Callable[[int, int], int], recycled: Mapping[int, str]) -> None:
        self._context = multiprocessing.get_context("fork")
        self._target = target
        self._recycled = recycled
        self._watch_read, self._watch_write = os.pipe()
        self.running: dict[int, tuple[multiprocessing.Process, float]] = {}
        self._delay = 0.0
        self._stopping = False
        self.exit_code = 0

    def start(self, slot: int) -> None:
        process = self._context.Process(
            target=_child, args=(self._target, slot, self._watch_read, self._watch_write),
            name=f"zeropool-worker-{slot}")
        # The child starts with these blocked and unblocks them once its own
        # handlers are in place, so a signal forwarded early is not lost.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self.running[slot] = (process, time.monotonic())

    def forward(self, signum: int) -> None:
        self._stopping = True
        for process, _ in self.running.values():
            if process.is_alive():
                os.kill(process.pid, signum)

    def kill(self) -> None:
        for process, _ in self.running.values():
            process.kill()
        for process, _ in self.running.values():
            process.join()

    def reap(self) -> None:
        """Join the children that have exited; replace or restart them."""
        for slot, (process, started) in list(self.running.items()):
            if process.is_alive():
                continue
            process.join()
            del self.running[slot]
            if not self._stopping:
                self._replace(slot, process, started)

    def _replace(self, slot: int, process: multiprocessing.Process, started: float) -> None:
        if process.exitcode == REFUSED:
            log.error("the broker refused worker process %d; stopping them all", process.pid)
            self._stopping, self.exit_code = True, REFUSED
            for other, _ in self.running.values():
                other.terminate()
            return
        if process.exitcode in self._recycled:
            log.info("worker process %d %s; replacing it", process.pid,
                     self._recycled[process.exitcode])
            self.start(slot)
            return
        lived = time.monotonic() - started
        log.error("worker process %d exited with code %s after %.1fs; restarting it",
                  process.pid, process.exitcode, lived)
        if lived < QUICK_DEATH:
            self._delay = min(max(self._delay * 2, 0.1), RESTART_DELAY_MAX)
            time.sleep(self._delay)  # back-off against a crash loop
        else:
            self._delay = 0.0
        self.start(slot)

    def close(self) -> None:
        for fd in (self._watch_read, self._watch_write):
            os.close(fd)
