"""Seeing what a cluster does: broker status, Prometheus metrics, task output."""
from __future__ import annotations

import io
import json
import os
import sys
import subprocess
import urllib.request

import pytest

import zeropool
from tests import helpers
from tests.conftest import command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command("broker"), "status", address, *args],
                          capture_output=True, text=True, timeout=30)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("zeropool_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


@pytest.fixture
def cluster(programs):
    """A broker with metrics on and two worker processes; (address, metrics port, pid)."""
    port = free_port()
    broker, address = programs.broker("--metrics-port", str(port))
    # Workers that import the tests' functions, as production workers import installed code.
    programs.worker(address, "--processes", "2", "--path", REPO)
    return address, port, broker.pid


def test_status_lists_workers_clients_and_counts(cluster):
    address, _, broker_pid = cluster
    with zeropool.Executor(address) as ex:
        assert list(ex.map(helpers.square, range(40))) == [x * x for x in range(40)]
        helpers.wait_until(lambda: len(json.loads(status(address, "--json").stdout)["workers"])
                           == 2, 30, what="both workers to show")
        report = json.loads(status(address, "--json").stdout)
        table = status(address)
    assert report["pid"] == broker_pid and report["curve"] is False
    assert report["submitted"] == report["completed"] == 40
    assert report["failed"] == report["requeued"] == report["queued"] == 0
    assert report["demand_slots"] == 0 and report["capacity_slots"] == 2
    assert sum(w["done"] for w in report["workers"]) == 40
    assert all(w["threads"] == 1 and w["host"] and w["pid"] for w in report["workers"])
    [me] = report["clients"]
    assert me["done"] == 40 and me["queued"] == me["in_flight"] == 0
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"BROKER {address}")
    assert "SLOTS DEMANDED 0  CONNECTED 2" in lines[2]
    assert any(line.split()[:2] == ["WORKER", "HOST"] for line in lines)
    assert sum(line.startswith("w-") for line in lines) == 2
    assert any(line.startswith("c-") for line in lines)


def test_status_of_no_broker_fails_as_a_health_check_would():
    result = status(f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert result.returncode == 1
    assert "no broker answered" in result.stderr


def test_metrics_counters_match_the_tasks_run(cluster):
    address, port, _ = cluster
    helpers.wait_until(lambda: scrape(port)["zeropool_workers"] == 2, 30,
                       what="both workers to join")
    with zeropool.Executor(address) as ex:
        futures = [ex.submit(helpers.fail_if_negative, x) for x in range(-5, 25)]
        for future in futures:
            future.exception(timeout=30)
    metrics = scrape(port)
    assert metrics["zeropool_tasks_submitted_total"] == 30
    assert metrics["zeropool_tasks_completed_total"] == 25
    assert metrics["zeropool_tasks_failed_total"] == 5
    assert metrics["zeropool_tasks_requeued_total"] == 0
    assert metrics["zeropool_tasks_unloadable_total"] == 0
    assert metrics["zeropool_queue_depth"] == metrics["zeropool_in_flight"] == 0
    assert metrics["zeropool_workers"] == 2
    assert metrics['zeropool_task_duration_seconds_bucket{le="+Inf"}'] == 30
    assert metrics["zeropool_task_duration_seconds_count"] == 30
    assert metrics["zeropool_dispatch_latency_seconds_count"] == 30


def test_metrics_port_without_prometheus_is_a_clear_error(tmp_path):
    # A tiny interpreter environment where prometheus_client cannot be imported.
    blocker = tmp_path / "prometheus_client.py"
    blocker.write_text("raise ImportError('not installed')\n")
    result = subprocess.run(
        [*command("broker"), "--metrics-port", str(free_port()), "--bind", "tcp://127.0.0.1:*"],
        capture_output=True, text=True, timeout=30, env={"PYTHONPATH": str(tmp_path),
                                                         "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "zeropool[metrics]" in result.stderr


def test_task_output_arrives_before_the_result(shared_cluster, capsys):
    out = err = ""
    with zeropool.Executor(shared_cluster) as ex:
        futures = [ex.submit(helpers.chatty, n) for n in range(4)]
        for n, future in enumerate(futures):
            assert future.result(timeout=30) == n
            more_out, more_err = capsys.readouterr()  # printed already, as the future completed
            out, err = out + more_out, err + more_err
            # In order per task, whole lines; tasks on other workers print meanwhile.
            assert [line for line in out.splitlines() if line.startswith(f"task {n} ")] == [
                f"task {n} line 0", f"task {n} line 1", f"task {n} line 2", f"task {n} joined"]
            assert f"task {n} warning\n" in err


def test_task_output_keeps_order_per_task_and_can_be_prefixed(shared_cluster, capsys):
    with zeropool.Executor(shared_cluster, task_output="prefix") as ex:
        assert list(ex.map(helpers.chatty, range(6))) == list(range(6))
    out, err = capsys.readouterr()
    for n in range(6):
        mine = [line for line in out.splitlines() if f"task {n} " in line]
        assert [line.split("] ", 1)[1] for line in mine] == [
            f"task {n} line 0", f"task {n} line 1", f"task {n} line 2", f"task {n} joined"]
        assert all(line.startswith("[") and ":" in line.split("]")[0] for line in mine)
    assert err.count("] task") == 6


class _CountingStream(io.TextIOWrapper):
    writes = 0

    def write(self, text):
        type(self).writes += 1
        return super().write(text)


def test_task_output_goes_to_the_descriptor_of_the_processs_own_stream(
        shared_cluster, capfd, monkeypatch):
    # As a process pool's children write: whole, never between a line this
    # process prints and its newline, so not through the stream's write().
    own = _CountingStream(open(os.dup(1), "wb"), write_through=True)
    monkeypatch.setattr("sys.stdout", own)
    monkeypatch.setattr("sys.__stdout__", own)
    try:
        with zeropool.Executor(shared_cluster) as ex:
            assert ex.submit(helpers.chatty, 7).result(timeout=30) == 7
        out, _ = capfd.readouterr()  # capfd captures descriptor 1, where the dup points
        assert "task 7 line 0\ntask 7 line 1\ntask 7 line 2\ntask 7 joined\n" in out
        assert _CountingStream.writes == 0
    finally:
        own.close()


def test_task_output_to_a_replaced_stream_goes_through_its_write(monkeypatch):
    from zeropool.client.output import write_output
    replaced = io.StringIO()
    monkeypatch.setattr("sys.stdout", replaced)
    write_output(1, "line\n")
    assert replaced.getvalue() == "line\n"


@pytest.mark.parametrize("mode", ["plain", "prefix"])
def test_lines_of_tasks_printing_at_once_never_mix(monkeypatch, mode):
    # print() writes a line and its newline apart: they can arrive in two
    # messages, with another task's output between them.
    from zeropool.client.output import TaskOutput
    output, pending = TaskOutput(mode), {1, 2}
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    output.show([[1, 1, "one a", "w1"]], pending)
    output.show([[2, 1, "two a\n", "w2"], [1, 1, "\none b\n", "w1"]], pending)
    output.show([[1, 1, "one c", "w1"]], pending)
    assert out.getvalue().replace("[w1] ", "").replace("[w2] ", "") == "two a\none a\none b\n"
    output.flush(1)  # the task ended with its last line open
    expected = "two a\none a\none b\none c"
    if mode == "prefix":
        expected = "[w2] two a\n[w1] one a\n[w1] one b\n[w1] one c"
    assert out.getvalue() == expected


def test_task_output_can_be_switched_off(shared_cluster, capsys):
    with zeropool.Executor(shared_cluster, task_output=None) as ex:
        assert ex.submit(helpers.chatty, 1).result(timeout=30) == 1
    out, err = capsys.readouterr()
    assert "task 1" not in out and "task 1" not in err
    with pytest.raises(ValueError, match="task_output"):
        zeropool.Executor(shared_cluster, task_output="loud")


def test_tqdm_shows_progress_over_as_completed(shared_cluster):
    import concurrent.futures
    import io

    from tqdm import tqdm
    bar = io.StringIO()
    with zeropool.Executor(shared_cluster) as ex:
        futures = [ex.submit(helpers.square, i) for i in range(50)]
        results = [f.result() for f in tqdm(concurrent.futures.as_completed(futures),
                                            total=len(futures), file=bar)]
    assert sorted(results) == [i * i for i in range(50)]
    assert "50/50" in bar.getvalue() and "100%" in bar.getvalue()


def test_metrics_show_queued_tasks_per_priority_and_per_client(cluster, tmp_path, gate):
    address, port, _ = cluster
    helpers.wait_until(lambda: scrape(port)["zeropool_workers"] == 2, 30,
                       what="both workers to join")
    marks = [str(tmp_path / f"started-{i}") for i in range(2)]
    with zeropool.Executor(address) as ex:
        blockers = [ex.submit(helpers.touch_then_wait, mark, gate) for mark in marks]
        helpers.wait_until(lambda: all(os.path.exists(m) for m in marks), 30,
                           what="both workers to be busy")
        waiting = [ex.options(priority=4).submit(helpers.square, i) for i in range(3)]
        waiting += [ex.submit(helpers.square, i) for i in range(2)]
        helpers.wait_until(lambda: scrape(port)["zeropool_queue_depth"] == 5, 30,
                           what="five queued")
        metrics = scrape(port)
        assert metrics['zeropool_queued_tasks{priority="4"}'] == 3
        assert metrics['zeropool_queued_tasks{priority="0"}'] == 2
        [client] = [name for name in metrics if name.startswith("zeropool_client_queued_tasks{")]
        assert metrics[client] == 5
        open(gate, "w").close()
        for future in blockers + waiting:
            future.result(timeout=30)
