"""The broker and worker command lines, started as real processes."""
from __future__ import annotations

import concurrent.futures as cf
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import zeropool
from tests import helpers
from tests.conftest import command
from tests.helpers import wait_until


@pytest.mark.parametrize("program", ["broker", "worker"])
def test_help_states_every_default(program):
    out = subprocess.run([*command(program), "--help"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    options = re.findall(r"^  (--[\w-]+)", out, re.M)
    assert len(options) >= 4
    # argparse wraps text; every option's paragraph mentions its default.
    paragraphs = re.split(r"\n  (?=-)", out.split("options:")[1])
    for paragraph in paragraphs:
        if not paragraph.strip() or paragraph.startswith("-h"):
            continue
        assert "default" in paragraph, paragraph


@pytest.mark.parametrize("program", ["broker", "worker"])
def test_python_dash_m_is_the_same_program(program):
    out = subprocess.run([sys.executable, "-m", f"zeropool.{program}", "--help"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert out.startswith(f"usage: {program}")


def test_worker_without_address_is_a_usage_error():
    env = {k: v for k, v in os.environ.items() if k != "ZEROPOOL_ADDRESS"}
    result = subprocess.run(command("worker"), capture_output=True, text=True, timeout=30,
                            env=env)
    assert result.returncode == 2
    assert "broker's address" in result.stderr


def test_broker_reports_an_address_in_use(programs):
    _, address = programs.broker()
    result = subprocess.run([*command("broker"), "--bind", address], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 3
    assert "cannot bind" in result.stderr


def test_tasks_run_on_cli_started_programs(programs):
    _, address = programs.broker()
    programs.worker(address, "--threads", "4")
    with zeropool.Executor(address=address) as ex:
        assert list(ex.map(helpers.square, range(50))) == [i * i for i in range(50)]
        assert ex.submit(lambda: "by value").result(timeout=30) == "by value"


def test_processes_option_runs_that_many_worker_processes(programs, tmp_path):
    _, address = programs.broker()
    supervisor = programs.worker(address, "--processes", "3")
    with zeropool.Executor(address) as ex:
        futures = [ex.submit(helpers.pid_when_all_present, str(tmp_path), 3) for _ in range(3)]
        pids = {f.result(timeout=60) for f in futures}
    assert len(pids) == 3
    assert supervisor.pid not in pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_an_idle_broker_and_worker_cleanly(programs, sig):
    broker, address = programs.broker()
    worker = programs.worker(address, "--processes", "2")
    with zeropool.Executor(address) as ex:  # both are up and serving
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9
    worker.send_signal(sig)
    assert worker.wait(30) == 0
    broker.send_signal(sig)
    assert broker.wait(30) == 0


def test_worker_finishes_its_running_task_on_ctrl_c(programs, tmp_path):
    _, address = programs.broker()
    worker = programs.worker(address)
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    with zeropool.Executor(address) as ex:
        future = ex.submit(helpers.touch_then_wait, started, gate)
        wait_until(lambda: os.path.exists(started), 30, what="the task to start")
        worker.send_signal(signal.SIGINT)
        helpers.touch(gate)
        assert future.result(timeout=30) == worker.pid
    assert worker.wait(30) == 0


def test_many_clients_share_one_broker_without_cross_talk(shared_cluster):
    def run(index):
        with zeropool.Executor(address=shared_cluster) as ex:
            futures = [ex.submit(helpers.identity, (index, i)) for i in range(500)]
            return [f.result(timeout=120) for f in futures]

    with cf.ThreadPoolExecutor(3) as threads:
        results = list(threads.map(run, range(3)))
    for index, values in enumerate(results):
        assert values == [(index, i) for i in range(500)]


def test_worker_processes_do_not_outlive_a_killed_supervisor(programs):
    from tests.conftest import alive, descendants
    _, address = programs.broker()
    supervisor = programs.worker(address, "--processes", "2")
    wait_until(lambda: len(descendants(supervisor.pid)) == 2, 30, what="two worker processes")
    children = descendants(supervisor.pid)
    supervisor.kill()
    supervisor.wait()
    wait_until(lambda: not [pid for pid in children if alive(pid)], 30,
               what="the orphaned workers to exit")


def test_supervisor_stops_when_the_broker_refuses_its_workers(programs):
    import zmq
    from zeropool.protocol import Refused
    from tests.peer import Peer
    with Peer(zmq.ROUTER) as broker:  # a broker by hand that refuses everyone
        supervisor = programs.worker(broker.bind(), "--processes", "2", "--log-level", "ERROR")
        refused = 0
        while supervisor.poll() is None and refused < 50:
            if hello := broker.receive(0.2):
                broker.send(Refused("wrong version", 99), to=hello.sender)
                refused += 1
        assert supervisor.wait(30) == 4
        assert refused <= 4  # it stopped instead of restarting refused workers


def test_a_bad_address_fails_at_once_with_the_reason():
    started = time.monotonic()
    with pytest.raises(zeropool.BrokerUnreachable, match="Invalid argument|I/O thread failed"):
        zeropool.Executor("tcp://localhost:notaport")
    assert time.monotonic() - started < 5


def test_max_workers_caps_concurrency_at_a_shared_broker(programs, tmp_path):
    _, address = programs.broker()
    programs.worker(address, "--processes", "3")
    with zeropool.Executor(1, address=address) as ex:
        spans = list(ex.map(helpers.timed_sleep, [0.05] * 6))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, "two tasks of a max_workers=1 executor overlapped"


def test_calls_of_a_module_workers_cannot_import_travel_by_value(shared_cluster):
    import importlib.util
    with zeropool.Executor(shared_cluster) as ex:
        # The CLI workers have no path to this test package...
        assert ex.submit(importlib.util.find_spec, "tests").result(timeout=30) is None
        # ...yet its functions run there: the client resends them by value.
        assert ex.submit(helpers.add, 2, 3).result(timeout=30) == 5


def test_workers_and_clients_reach_the_broker_by_host_name(programs):
    """As in compose (tcp://broker:5555): peers connect out to a name."""
    _, address = programs.broker()
    by_name = address.replace("127.0.0.1", "localhost")
    programs.worker(by_name)
    with zeropool.Executor(by_name) as ex:
        assert ex.submit(helpers.square, 6).result(timeout=30) == 36
