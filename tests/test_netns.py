"""Broker, workers and client on hosts of their own (Linux network namespaces).

The broker listens on its host's own address, not loopback; every byte
between the programs crosses veth pairs and a bridge. Cutting a worker's link
makes it fall silent without a FIN or RST, as a pulled cable does, so only
heartbeats can tell the broker it is gone.
"""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys

import pytest

from tests import netns
from tests.conftest import command
from tests.helpers import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 5555
FAST = ("--heartbeat-interval", "0.2", "--liveness", "5")
GATED = 4  # two workers with two threads each: every slot holds one gated task
TOTAL = 24


@pytest.fixture
def network():
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        network = netns.Network(["broker", "worker1", "worker2", "client"])
    except netns.Unavailable as e:
        pytest.skip(str(e))
    try:
        yield network
    finally:
        network.close()


def start_broker(network, log_path) -> str:
    read_fd, write_fd = os.pipe()
    try:
        with open(log_path, "w") as log:
            network.start("broker", [
                *command("broker"), "--bind", f"tcp://{network.addresses['broker']}:{PORT}",
                "--insecure", "--ready-fd", str(write_fd), *FAST, "--log-level", "INFO",
            ], pass_fds=(write_fd,), stderr=log)
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd) as ready:
        readable, _, _ = select.select([ready], [], [], 30)
        assert readable, "the broker did not start within 30 s"
        address = ready.readline().strip()
    assert address, f"the broker exited before listening: {log_path.read_text()}"
    return address


def joined_workers(log_path) -> dict[int, str]:
    """Worker pid -> worker id, from the broker's 'worker ... joined' lines."""
    text = log_path.read_text()
    return {int(pid): worker_id
            for worker_id, pid in re.findall(r"worker (\w+) joined \(host .*?, pid (\d+)", text)}


def runs_by_value(directory) -> dict[int, list[int]]:
    """Value -> pids of the workers that started it, one per execution."""
    runs: dict[int, list[int]] = {}
    for name in os.listdir(directory):
        value, pid, _ = name.split("-")
        runs.setdefault(int(value), []).append(int(pid))
    return runs


@pytest.mark.timeout(90)
def test_cut_workers_tasks_finish_on_the_other_host_once_each(network, tmp_path):
    broker_log = tmp_path / "broker.log"
    address = start_broker(network, broker_log)
    assert address == f"tcp://{network.addresses['broker']}:{PORT}"
    workers = {}
    for host in ("worker1", "worker2"):
        with open(tmp_path / f"{host}.log", "w") as log:
            workers[host] = network.start(
                host, [*command("worker"), address, "--threads", "2"], stderr=log).pid
    wait_until(lambda: set(joined_workers(broker_log)) == set(workers.values()), 30,
               what="both workers to join the broker")
    cut, other = workers["worker1"], workers["worker2"]

    work = tmp_path / "work"
    runs, gate, results = work / "runs", work / "gate", work / "results"
    runs.mkdir(parents=True)
    (work / "met").mkdir()
    client = network.start(
        "client", [sys.executable, "-m", "tests.netns", address, str(work), str(GATED),
                   str(TOTAL)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(os.listdir(runs)) >= GATED or client.poll() is not None, 30,
               what="the gated tasks to start")
    started = runs_by_value(runs)
    assert sorted(started) == list(range(GATED)), f"not just the gated tasks: {started}"
    held = sorted(value for value, pids in started.items() if pids == [cut])
    assert len(held) == 2, f"the worker to cut should hold two tasks: {started}"

    network.cut("worker1")
    gate.touch()  # the cut worker finishes its copies too, but cannot tell anyone
    wait_until(lambda: results.exists() or client.poll() is not None, 30,
               what="the results")
    assert results.exists(), f"the client failed: {client.communicate()[1]}"
    # The broker gave up on the cut worker through heartbeats alone.
    cut_id = joined_workers(broker_log)[cut]
    assert re.search(rf"worker\(s\) {cut_id} silent for [\d.]+s; 2 task\(s\) requeued",
                     broker_log.read_text()), broker_log.read_text()
    assert json.loads(results.read_text()) == [[value, other] for value in range(TOTAL)]

    # Back on the network, the cut worker's stale results for its two
    # tasks must go nowhere, and it serves again (see tests.netns.client_main).
    network.restore("worker1")
    (work / "restored").touch()
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert "Traceback" not in err, err
    report = json.loads(out)
    assert {pid for pids in report["rounds"] for pid in pids} == {cut, other}, report
    assert report["completions"] == [1] * (TOTAL + 4 * len(report["rounds"]))
    # The cut worker's two tasks ran on both workers; every other task once.
    after = runs_by_value(runs)
    assert sorted(after) == list(range(TOTAL))
    for value, pids in after.items():
        assert sorted(pids) == sorted([cut, other] if value in held else [other]), \
            f"task {value} ran on {pids}"
