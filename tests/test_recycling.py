"""Worker recycling: ``worker --max-tasks-per-child N``, ``--max-memory SIZE``
and ``Executor(max_tasks_per_child=N)``.

A worker process that has started its last task, or holds more memory than
allowed after a task, drains and leaves; its supervisor starts a fresh one.
Every task still runs exactly once, and its result is delivered.
"""
from __future__ import annotations

import collections
import os
import subprocess

import pytest

import zeropool
from zeropool.broker.status import query
from zeropool.worker.memory import parse_size
from tests import helpers
from tests.conftest import command
from tests.helpers import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(120)
def test_executor_max_tasks_per_child_replaces_worker_processes(tmp_path):
    """The issue's measured goal: 2 workers, 5 tasks each, 40 tasks: at least
    8 processes ran them, each task once, every result right."""
    runs = tmp_path / "runs"
    runs.mkdir()
    with zeropool.Executor(2, max_tasks_per_child=5) as ex:
        results = list(ex.map(helpers.record_run, [str(runs)] * 40, range(40), timeout=60))
    assert results == list(range(40))
    assert helpers.runs_per_value(str(runs)) == {i: 1 for i in range(40)}
    per_pid = collections.Counter(helpers.pids_of_runs(str(runs)))
    assert len(per_pid) >= 8, per_pid
    assert max(per_pid.values()) <= 5, per_pid
    assert os.getpid() not in per_pid


def test_executor_max_tasks_per_child_with_an_address_says_where_it_belongs():
    with pytest.raises(ValueError, match="worker --max-tasks-per-child 3"):
        zeropool.Executor("tcp://127.0.0.1:9", max_tasks_per_child=3)


def start_broker(programs, tmp_path):
    with open(tmp_path / "broker.log", "w") as log:
        _, address = programs.broker("--log-level", "INFO", stderr=log)
    return address, (tmp_path / "broker.log").read_text


@pytest.mark.timeout(120)
def test_cli_worker_recycles_after_max_tasks_per_child(programs, tmp_path):
    """Without --processes: a supervisor all the same, which replaces each
    process after its 3 tasks with one INFO line, and no error."""
    address, broker_log = start_broker(programs, tmp_path)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        programs.worker(address, "--max-tasks-per-child", "3", "--path", REPO,
                        "--log-level", "INFO", stderr=log)
    runs = tmp_path / "runs"
    runs.mkdir()
    with zeropool.Executor(address) as ex:
        results = list(ex.map(helpers.record_run, [str(runs)] * 9, range(9), timeout=60))
    assert results == list(range(9))
    assert helpers.runs_per_value(str(runs)) == {i: 1 for i in range(9)}
    per_pid = collections.Counter(helpers.pids_of_runs(str(runs)))
    assert sorted(per_pid.values()) == [3, 3, 3], per_pid
    # The third process leaves after its last task too.
    wait_until(lambda: log_path.read_text().count("ran 3 tasks; replacing it") == 3, 30,
               what="three recyclings logged")
    text = log_path.read_text()
    for pid in per_pid:
        assert f"INFO worker process {pid} ran 3 tasks; replacing it" in text, text
    assert "ERROR" not in text and "WARNING" not in text, text
    # The three left the broker, losing nothing, and a fresh process serves.
    def fresh_one_alone() -> bool:
        pids = [w["pid"] for w in query(address, None, 5)["workers"]]
        return len(pids) == 1 and pids[0] not in per_pid

    wait_until(fresh_one_alone, 30, what="the broker to know only the fresh worker process")
    assert query(address, None, 5)["requeued"] == 0
    # Its BYE's reason: the one sign that each left in order rather than
    # vanished (the broker's report shows both alike once it notices).
    assert "worker recycled" in broker_log()


@pytest.mark.timeout(120)
def test_cli_worker_recycles_after_max_memory(programs, tmp_path):
    """A task that keeps ~400 MB on a --max-memory 300MB worker: its result
    comes back, and the next task runs in a fresh process."""
    address, broker_log = start_broker(programs, tmp_path)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        programs.worker(address, "--max-memory", "300MB", "--path", REPO,
                        "--log-level", "INFO", stderr=log)
    with zeropool.Executor(address) as ex:
        first = ex.submit(helpers.getpid).result(timeout=30)
        assert ex.submit(helpers.getpid).result(timeout=30) == first  # small: no recycling
        holder = ex.submit(helpers.hold_memory, 400).result(timeout=60)
        assert holder == first
        after = ex.submit(helpers.getpid).result(timeout=60)
        assert after != holder
    wait_until(lambda: "replacing it" in log_path.read_text(), 30, what="the recycling logged")
    text = log_path.read_text()
    assert (f"INFO worker process {holder} went over --max-memory 300,000,000 bytes; "
            "replacing it") in text, text
    assert text.count("replacing it") == 1, text
    assert "ERROR" not in text and "WARNING" not in text, text
    assert query(address, None, 5)["requeued"] == 0


@pytest.mark.parametrize("args, env", [
    (["--max-tasks-per-child", "0"], {}),
    (["--max-tasks-per-child", "-2"], {}),
    (["--max-tasks-per-child", "three"], {}),
    (["--max-memory", "0"], {}),
    (["--max-memory", "-300MB"], {}),
    (["--max-memory", "lots"], {}),
    (["--max-memory", "300XB"], {}),
    ([], {"ZEROPOOL_MAX_TASKS_PER_CHILD": "0"}),
    ([], {"ZEROPOOL_MAX_MEMORY": "1PB"}),
])
def test_cli_bad_recycling_values_are_usage_errors(args, env):
    result = subprocess.run([*command("worker"), "tcp://127.0.0.1:9", *args],
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, **env})
    assert result.returncode == 2, result.stderr
    option = args[0] if args else ("--max-tasks-per-child" if "ZEROPOOL_MAX_TASKS_PER_CHILD"
                                   in env else "--max-memory")
    assert f"argument {option}:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("text, size", [
    ("500000000", 500_000_000), ("300MB", 300_000_000), ("300mb", 300_000_000),
    ("2GiB", 2 << 30), ("2gib", 2 << 30), ("1.5 GB", 1_500_000_000), ("64KiB", 65536),
    ("10B", 10),
])
def test_parse_size(text, size):
    assert parse_size(text) == size
