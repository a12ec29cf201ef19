"""Stopping work that must stop: per-task timeouts and retries, with real
workers (a timed-out task's process is replaced for real)."""
from __future__ import annotations

import os
import time

import pytest

import zeropool
from tests import helpers
from tests.conftest import alive, descendants
from tests.helpers import wait_until
from zeropool.broker.status import query, render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(programs, *args: str) -> tuple[str, object]:
    """A broker and one worker (command line ``args``); (address, worker process)."""
    _, address = programs.broker("--log-level", "WARNING")
    worker = programs.worker(address, "--path", REPO, "--log-level", "WARNING", *args)
    wait_until(lambda: len(query(address, None, 5)["workers"]) >= 1, 30, what="a worker")
    return address, worker


def test_a_task_past_its_timeout_fails_and_the_pool_goes_on(programs):
    address, supervisor = start(programs, "--processes", "2")
    wait_until(lambda: len(query(address, None, 5)["workers"]) == 2, 30, what="two workers")
    with zeropool.Executor(address) as ex:
        started = time.monotonic()
        future = ex.options(timeout=1).submit(helpers.spin)
        with pytest.raises(zeropool.TaskTimeoutError, match="timeout of 1s") as info:
            future.result(timeout=60)
        # The goal: within 3 s of its timeout (it is enforced on a deadline, not polled).
        assert time.monotonic() - started < 1 + 3
        assert not isinstance(info.value, TimeoutError)  # that one means "not done yet"
        assert "spin" in str(info.value)  # where it was when stopped
        assert [ex.submit(helpers.square, i).result(timeout=30) for i in range(10)] == [
            i * i for i in range(10)]
        # Replaced, not lost: two processes serve again.
        wait_until(lambda: len(query(address, None, 5)["workers"]) == 2, 30, what="two workers")
    assert len(descendants(supervisor.pid)) == 2


def test_the_other_tasks_of_a_stopped_process_run_again_without_counting_a_try(programs, tmp_path, gate):
    address, _ = start(programs, "--processes", "1", "--threads", "3")
    runs = tmp_path / "runs"
    runs.mkdir()
    once = str(tmp_path / "once")
    with zeropool.Executor(address) as ex:
        # It waits until it has run twice: in this process, then in the fresh one.
        neighbour = ex.submit(helpers.pid_when_all_present, str(runs), 2)
        # retries=0: it must never run twice, so it fails instead.
        never_twice = ex.options(retries=0).submit(helpers.touch_then_wait, once, gate)
        wait_until(lambda: len(os.listdir(runs)) == 1 and os.path.exists(once), 30,
                   what="the neighbours to start")
        first_pid = int(os.listdir(runs)[0])
        spinner = ex.options(timeout=0.5).submit(helpers.spin)
        with pytest.raises(zeropool.TaskTimeoutError):
            spinner.result(timeout=60)
        wait_until(lambda: not alive(first_pid), 30, what="the process to be replaced")
        assert neighbour.result(timeout=60) != first_pid
        with pytest.raises(zeropool.WorkerLostError, match="retries=0"):
            never_twice.result(timeout=60)
    assert query(address, None, 5)["requeued"] == 1


def test_shutdown_with_a_task_past_its_timeout_does_not_hang(programs):
    address, _ = start(programs, "--processes", "1")
    with zeropool.Executor(address) as ex:
        future = ex.options(timeout=0.5).submit(helpers.spin)
    assert isinstance(future.exception(timeout=0), zeropool.TaskTimeoutError)


def test_a_worker_without_a_supervisor_starts_itself_again(programs):
    address, worker = start(programs)
    with zeropool.Executor(address) as ex:
        before = ex.submit(helpers.getpid).result(timeout=30)
        with pytest.raises(zeropool.TaskTimeoutError):
            ex.options(timeout=0.5).submit(helpers.spin).result(timeout=60)
        # The same process (the same pid: it ran its own command line again), fresh.
        assert ex.submit(helpers.getpid).result(timeout=30) == before == worker.pid
    assert worker.poll() is None


@pytest.mark.parametrize("retries, runs_expected", [(0, 1), (1, 2), (None, 3)])
def test_retries_is_how_often_a_task_runs_again_after_its_worker_died(programs, tmp_path,
                                                                      retries, runs_expected):
    address, _ = start(programs, "--processes", "1")
    runs = tmp_path / "runs"
    runs.mkdir()
    with zeropool.Executor(address) as ex:
        killer = ex.options(retries=retries).submit(helpers.record_then_exit, str(runs))
        with pytest.raises(zeropool.WorkerLostError) as info:
            killer.result(timeout=90)
        if retries is not None:
            assert f"retried {retries} time" in str(info.value)
        assert len(os.listdir(runs)) == runs_expected
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9


def test_a_timeout_holds_for_map_and_for_views_taken_from_views(programs):
    address, _ = start(programs, "--processes", "2")
    with zeropool.Executor(address) as ex:
        bounded = ex.options(timeout=0.5).options(priority=2)  # the timeout stays
        results = bounded.map(helpers.spin_if, [False, True, False])
        assert next(results) is False
        with pytest.raises(zeropool.TaskTimeoutError):
            next(results)
        assert list(bounded.map(helpers.square, range(5))) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("kwargs, error", [
    (dict(timeout=-1), ValueError),
    (dict(timeout=0), ValueError),
    (dict(timeout=float("nan")), ValueError),
    (dict(timeout="1"), TypeError),
    (dict(timeout=True), TypeError),
    (dict(retries=-1), ValueError),
    (dict(retries=1.5), TypeError),
    (dict(retries="3"), TypeError),
])
def test_bad_timeouts_and_retries_fail_at_the_call(shared_cluster, kwargs, error):
    with zeropool.Executor(shared_cluster) as ex:
        with pytest.raises(error, match="timeout|retries"):
            ex.options(**kwargs)


# -- versions ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def other_python(tmp_path_factory):
    """A venv with zeropool installed (editable, from this repository) for a
    CPython of another minor version than this one: the contract's own venv
    (make contract) if it is there, else one made here."""
    import subprocess
    import sys
    mine = "%d.%d" % sys.version_info[:2]
    for version in ("3.12", "3.13", "3.10", "3.11"):
        if version == mine:
            continue
        interpreter = subprocess.run(["sh", os.path.join(REPO, "tests", "find-python.sh"),
                                      version], capture_output=True, text=True).stdout.strip()
        if not interpreter:
            continue
        made = os.path.join(REPO, f".venv-{version}")
        if (os.path.exists(os.path.join(made, ".installed"))
                and os.path.getmtime(os.path.join(made, ".installed"))
                >= os.path.getmtime(os.path.join(REPO, "pyproject.toml"))):
            return os.path.join(made, "bin", "python"), version
        venv = str(tmp_path_factory.mktemp("venv") / version)
        subprocess.run([interpreter, "-m", "venv", venv], check=True, timeout=120)
        subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet",
                        "-e", REPO], check=True, timeout=600)
        return os.path.join(venv, "bin", "python"), version
    pytest.skip(f"no CPython here but {mine}: versions cannot differ")


@pytest.mark.timeout(900)
def test_a_worker_of_another_python_is_announced_and_refuses_code_it_cannot_load(
        programs, other_python):
    import subprocess
    python, version = other_python
    _, address = programs.broker("--log-level", "WARNING")
    worker = subprocess.Popen([python, "-m", "zeropool.worker", address, "--path", REPO,
                               "--log-level", "WARNING"], stdin=subprocess.DEVNULL)
    programs.processes.append(worker)
    wait_until(lambda: len(query(address, None, 5)["workers"]) == 1, 60, what="the worker")
    [reported] = query(address, None, 5)["workers"]
    assert reported["versions"]["python"].startswith(version + ".")
    assert set(reported["versions"]) == {"python", "zeropool", "cloudpickle"}
    assert reported["versions"]["python"] + "/" in render(query(address, None, 5))
    with pytest.warns(zeropool.VersionMismatchWarning, match=f"Python {version}") as warned:
        with zeropool.Executor(address) as ex:
            wait_until(lambda: len(warned) > 0, 30, what="the warning")
            # By reference (importable there): the same on any Python.
            assert ex.submit(helpers.square, 7).result(timeout=60) == 49
            # By value: code for this Python only, refused with a clear error.
            with pytest.raises(zeropool.VersionMismatchError, match=f"runs Python {version}"):
                ex.submit(lambda x: x + 1, 1).result(timeout=60)
            assert ex.submit(helpers.square, 8).result(timeout=60) == 64
    assert len(warned) == 1  # once, not per heartbeat
