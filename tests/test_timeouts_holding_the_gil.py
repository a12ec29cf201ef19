"""A task that holds the GIL past its timeout (a catastrophic regex: one C
call) keeps the worker's I/O loop from stopping it, so faulthandler's
watchdog, which needs no GIL, ends its process (worker.runner.BACKSTOP_GRACE
after the deadline). Real processes: the process really goes."""
from __future__ import annotations

import os
import time

import zeropool
from tests import helpers
from tests.conftest import alive, descendants
from tests.helpers import wait_until
from zeropool.broker.status import query

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The broker reports the task once the process is gone: timeout, grace, then
# the broker's own detection; far more than that means it hung.
WITHIN = 60


def start(programs, stderr, *args: str) -> tuple[str, object]:
    """A broker and one worker (command line ``args``, its stderr to the file
    ``stderr``); (address, worker process)."""
    _, address = programs.broker("--log-level", "WARNING")
    with open(stderr, "w") as err:
        worker = programs.worker(address, "--path", REPO, "--log-level", "WARNING", *args,
                                 stderr=err)
    wait_until(lambda: len(query(address, None, 5)["workers"]) >= 1, 30, what="a worker")
    return address, worker


def stopped_by_the_backstop(stderr) -> bool:
    """Whether faulthandler's watchdog printed the stacks, the task's among them."""
    with open(stderr) as f:
        text = f.read()
    return "Timeout (" in text and "hold_the_gil" in text


def test_a_task_holding_the_gil_is_stopped_and_its_process_replaced(programs, tmp_path):
    stderr = tmp_path / "worker.err"
    address, supervisor = start(programs, stderr, "--processes", "1")
    with zeropool.Executor(address) as ex:
        first = ex.submit(helpers.getpid).result(timeout=30)
        started = time.monotonic()
        future = ex.options(timeout=1, retries=0).submit(helpers.hold_the_gil)
        error = future.exception(timeout=WITHIN)
        assert isinstance(error, (zeropool.TaskTimeoutError, zeropool.WorkerLostError)), error
        assert time.monotonic() - started >= 1
        wait_until(lambda: not alive(first), 30, what="the process to be replaced")
        assert stopped_by_the_backstop(stderr)
        # A fresh process serves, and the pool goes on.
        second = ex.submit(helpers.getpid).result(timeout=30)
        assert second != first and second in descendants(supervisor.pid)
        assert [ex.submit(helpers.square, i).result(timeout=30) for i in range(5)] == [
            0, 1, 4, 9, 16]
    assert supervisor.poll() is None


def test_a_worker_alone_exits_and_what_it_held_runs_elsewhere(programs, tmp_path):
    # Alone, it cannot start itself again (faulthandler's exit is no exec):
    # it exits with code 1, for whoever started it to restart, as after a crash.
    stderr = tmp_path / "worker.err"
    address, worker = start(programs, stderr, "--threads", "2")
    runs = tmp_path / "runs"
    runs.mkdir()
    with zeropool.Executor(address) as ex:
        # It waits until it has run twice: here, then on the next worker.
        neighbour = ex.submit(helpers.pid_when_all_present, str(runs), 2, WITHIN)
        wait_until(lambda: len(os.listdir(runs)) == 1, 30, what="the neighbour to start")
        future = ex.options(timeout=1, retries=0).submit(helpers.hold_the_gil)
        assert worker.wait(WITHIN) == 1
        assert stopped_by_the_backstop(stderr)
        error = future.exception(timeout=WITHIN)
        assert isinstance(error, (zeropool.TaskTimeoutError, zeropool.WorkerLostError)), error
        other = programs.worker(address, "--path", REPO, "--log-level", "WARNING")
        assert neighbour.result(timeout=WITHIN) == other.pid
