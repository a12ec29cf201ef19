"""Faults caused for real: SIGKILL, SIGSTOP, os._exit, broker restarts, drains.

Brokers here run with a 0.2 s heartbeat and liveness 5, so the connection of a
stopped or cut-off peer is closed, and the peer declared dead, within about a
second (a killed one at once); clients and workers take those settings from
the broker's WELCOME.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import zeropool
from zeropool.broker.status import query
from tests import helpers
from tests.helpers import wait_until

FAST = ("--heartbeat-interval", "0.2", "--liveness", "5", "--log-level", "WARNING")


def count_completions(futures):
    """Count, per future, how often it completes (must end at exactly once)."""
    counts = {f: 0 for f in futures}
    lock = threading.Lock()

    def done(future):
        with lock:
            counts[future] += 1

    for future in futures:
        future.add_done_callback(done)
    return counts


@pytest.mark.timeout(240)
def test_random_worker_kills_lose_nothing(programs):
    _, address = programs.broker(*FAST)
    workers = [programs.worker(address, "--log-level", "WARNING") for _ in range(3)]
    stop = threading.Event()
    kills = []

    def killer():
        rng = random.Random(1234)
        while not stop.wait(0.5):  # the fault schedule: a kill every half second
            victim = workers.pop(rng.randrange(len(workers)))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kills.append(victim.pid)
            workers.append(programs.worker(address, "--log-level", "WARNING"))

    with zeropool.Executor(address) as ex:
        futures = [ex.submit(helpers.sleep_and_return, 0.002, i) for i in range(5000)]
        completions = count_completions(futures)
        thread = threading.Thread(target=killer)
        thread.start()
        try:
            results = [f.result(timeout=200) for f in futures]
        finally:
            stop.set()
            thread.join()
    assert results == list(range(5000))
    assert set(completions.values()) == {1}
    assert len(kills) >= 3


@pytest.mark.timeout(120)
def test_stopped_worker_tasks_finish_elsewhere_and_are_delivered_once(programs, tmp_path):
    _, address = programs.broker(*FAST)
    frozen = programs.worker(address)
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    with zeropool.Executor(address) as ex:
        future = ex.submit(helpers.touch_then_wait, started, gate)
        completions = count_completions([future])
        wait_until(lambda: os.path.exists(started), 30, what="the task to start")
        frozen.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            helpers.touch(gate)
            rescuer = programs.worker(address)
            assert future.result(timeout=30) == rescuer.pid  # requeued and run again
            # Within the liveness window (1 s here), plus a new worker's start-up
            # and slack for a loaded machine.
            assert time.monotonic() - stopped_at < 10
        finally:
            frozen.send_signal(signal.SIGCONT)
        # The frozen worker wakes, finishes its copy and sends a stale result
        # (dropped), then registers again and takes new work.
        pids = set()
        deadline = time.monotonic() + 60
        while frozen.pid not in pids:
            assert time.monotonic() < deadline, "the frozen worker never served again"
            pids.update(ex.map(helpers.getpid, range(4)))
    assert completions[future] == 1
    assert future.result() == rescuer.pid


@pytest.mark.timeout(120)
def test_poison_task_fails_after_max_retries_and_the_rest_goes_on(programs):
    _, address = programs.broker(*FAST)
    programs.worker(address, "--processes", "3", "--log-level", "ERROR")
    with zeropool.Executor(address) as ex:
        poison = ex.submit(helpers.exit_process)
        others = [ex.submit(helpers.square, i) for i in range(200)]
        with pytest.raises(zeropool.WorkerLostError, match=r"task \d+ was running on 3 workers"):
            poison.result(timeout=60)
        assert [f.result(timeout=60) for f in others] == [i * i for i in range(200)]


@pytest.mark.timeout(180)
def test_broker_killed_and_restarted_twice_loses_nothing(programs):
    broker, address = programs.broker(*FAST)
    for _ in range(2):
        programs.worker(address, "--log-level", "ERROR")
    with zeropool.Executor(address) as ex:
        futures = [ex.submit(helpers.sleep_and_return, 0.003, i) for i in range(2000)]
        completions = count_completions(futures)
        for threshold in (400, 1200):
            wait_until(lambda: sum(f.done() for f in futures) >= threshold, 120,
                       what=f"{threshold} results")
            broker.send_signal(signal.SIGKILL)
            broker.wait()
            broker, again = programs.broker(*FAST, bind=address)
            assert again == address
        results = [f.result(timeout=120) for f in futures]
    assert results == list(range(2000))
    assert set(completions.values()) == {1}


@pytest.mark.timeout(120)
def test_draining_worker_finishes_its_tasks_and_nothing_runs_twice(programs, tmp_path):
    _, address = programs.broker(*FAST)
    leaving = programs.worker(address, "--threads", "2", "--log-level", "WARNING")
    programs.worker(address, "--threads", "2", "--log-level", "WARNING")
    runs = tmp_path / "runs"
    runs.mkdir()
    with zeropool.Executor(address) as ex:
        futures = [ex.submit(helpers.record_run, str(runs), i, 0.005) for i in range(600)]
        wait_until(lambda: sum(f.done() for f in futures) >= 100, 60, what="100 results")
        leaving.send_signal(signal.SIGTERM)
        assert leaving.wait(60) == 0
        assert [f.result(timeout=60) for f in futures] == list(range(600))
    counts = helpers.runs_per_value(str(runs))
    assert sorted(counts) == list(range(600))
    assert set(counts.values()) == {1}, "a task ran twice"


@pytest.mark.timeout(120)
def test_dead_clients_queue_is_dropped(programs, tmp_path):
    log_path = tmp_path / "broker.log"
    with open(log_path, "w") as log:
        broker, address = programs.broker(*FAST, stderr=log)
    idle = helpers.rss_kib(broker.pid)
    runs = tmp_path / "runs"
    runs.mkdir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = textwrap.dedent(f"""
        import zeropool, time
        from tests import helpers
        ex = zeropool.Executor({address!r})
        fs = [ex.submit(helpers.record_run_padded, {str(runs)!r}, i, b"x" * 2000)
              for i in range(20000)]
        # cancel() is answered by the broker after it has taken every task before it.
        assert fs[-1].cancel()
        print("queued", flush=True)
        time.sleep(600)
    """)
    doomed = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=root))
    try:
        assert doomed.stdout.readline().strip() == "queued"
        peak = helpers.rss_kib(broker.pid)
        assert peak - idle > 20_000  # 20,000 queued tasks of 2 kB each
        report = query(address, None, 30)
        assert (report["queued"], len(report["clients"])) == (19999, 1), report
        doomed.kill()
        doomed.wait()

        def dropped() -> bool:
            report = query(address, None, 30)
            return (report["queued"], report["clients"]) == (0, [])

        wait_until(dropped, 30, interval=0.1, what="the broker to drop the dead client")
        # Its memory goes back to (nearly) the idle level.
        wait_until(lambda: helpers.rss_kib(broker.pid) - idle < (peak - idle) / 4, 10,
                   what="the broker's memory to return to its idle level")
        programs.worker(address, "--log-level", "WARNING")
        with zeropool.Executor(address) as ex:
            assert ex.submit(helpers.square, 3).result(timeout=30) == 9
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()
    assert os.listdir(runs) == [], "tasks of a dead client ran"


def free_address() -> str:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.timeout(60)
def test_constructor_fails_fast_when_no_broker_answers():
    started = time.monotonic()
    with pytest.raises(zeropool.BrokerUnreachable, match="no broker answered"):
        zeropool.Executor(free_address(), connect_timeout=0.5)
    assert time.monotonic() - started < 10


@pytest.mark.timeout(120)
def test_submit_while_the_broker_is_down_runs_once_it_is_back(programs):
    broker, address = programs.broker(*FAST)
    programs.worker(address, "--log-level", "ERROR")
    with zeropool.Executor(address) as ex:
        assert ex.submit(helpers.square, 2).result(timeout=30) == 4
        broker.send_signal(signal.SIGKILL)
        broker.wait()
        futures = [ex.submit(helpers.square, i) for i in range(50)]
        assert not any(f.done() for f in futures)
        # Timeouts keep their meaning while no broker is there.
        with pytest.raises(cf.TimeoutError):
            futures[0].result(timeout=0.3)
        done, not_done = cf.wait(futures, timeout=0.3)
        assert not done and len(not_done) == 50
        programs.broker(*FAST, bind=address)
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(50)]


@pytest.mark.timeout(120)
def test_broker_sigterm_is_like_a_restart_for_clients(programs):
    broker, address = programs.broker(*FAST)
    programs.worker(address, "--log-level", "ERROR")
    with zeropool.Executor(address) as ex:
        futures = [ex.submit(helpers.sleep_and_return, 0.003, i) for i in range(600)]
        completions = count_completions(futures)
        wait_until(lambda: sum(f.done() for f in futures) >= 100, 60, what="100 results")
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(30) == 0
        programs.broker(*FAST, bind=address)
        assert [f.result(timeout=60) for f in futures] == list(range(600))
    assert set(completions.values()) == {1}


@pytest.mark.timeout(120)
def test_shutdown_does_not_hang_when_the_broker_is_gone(programs, tmp_path):
    broker, address = programs.broker(*FAST)
    programs.worker(address, "--log-level", "ERROR")
    ex = zeropool.Executor(address, connect_timeout=1)
    busy = ex.submit(helpers.wait_for_file, str(tmp_path / "never"), 600)
    wait_until(busy.running, 30, what="the worker to be busy")
    future = ex.submit(helpers.square, 2)  # waits in the queue behind it
    broker.send_signal(signal.SIGKILL)
    broker.wait()
    started = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - started < 30
    with pytest.raises(zeropool.BrokerUnreachable, match="has not answered"):
        future.result(timeout=0)


@pytest.mark.timeout(120)
def test_shutdown_does_not_hang_when_no_worker_is_left(programs):
    _, address = programs.broker(*FAST)
    worker = programs.worker(address, "--log-level", "ERROR")
    ex = zeropool.Executor(address, connect_timeout=1)
    assert ex.submit(helpers.square, 2).result(timeout=30) == 4
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    future = ex.submit(helpers.square, 3)
    ex.shutdown(wait=True)
    with pytest.raises(zeropool.WorkerLostError, match="no worker has been attached"):
        future.result(timeout=0)


@pytest.mark.timeout(120)
def test_second_signal_stops_a_worker_at_once_and_its_task_runs_elsewhere(programs, tmp_path):
    _, address = programs.broker(*FAST)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        leaving = programs.worker(address, stderr=log)
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    with zeropool.Executor(address) as ex:
        future = ex.submit(helpers.touch_then_wait, started, gate)
        wait_until(lambda: os.path.exists(started), 30, what="the task to start")
        leaving.send_signal(signal.SIGTERM)
        # Two signals sent at once may reach the process as one.
        wait_until(lambda: [w["draining"] for w in query(address, None, 5)["workers"]] == [True],
                   30, what="the drain to begin")
        leaving.send_signal(signal.SIGTERM)
        assert leaving.wait(30) == 0
        os.remove(started)
        other = programs.worker(address)
        wait_until(lambda: os.path.exists(started), 30, what="the task to run again")
        helpers.touch(gate)
        assert future.result(timeout=30) == other.pid


@pytest.mark.timeout(60)
def test_oversized_argument_and_result_fail_clearly_and_the_executor_goes_on(programs):
    _, address = programs.broker("--max-message-size", "100000")
    programs.worker(address)
    with zeropool.Executor(address) as ex:
        with pytest.raises(ValueError, match="more than the broker accepts"):
            ex.submit(helpers.identity, b"x" * 200_000)
        with pytest.raises(ValueError, match="result pickles to a frame of"):
            ex.submit(helpers.make_bytes, 200_000).result(timeout=30)
        assert ex.submit(helpers.identity, b"y" * 50_000).result(timeout=30) == b"y" * 50_000


def test_result_that_cannot_be_unpickled_at_the_client_is_a_clear_error(shared_cluster):
    import pickle
    with zeropool.Executor(shared_cluster) as ex:
        with pytest.raises(pickle.UnpicklingError, match="could not be unpickled here") as info:
            ex.submit(helpers.make_unloadable).result(timeout=30)
        assert isinstance(info.value.__cause__, LookupError)
        assert ex.submit(helpers.square, 4).result(timeout=30) == 16


@pytest.mark.timeout(120)
def test_workers_drop_the_initializers_of_clients_that_have_gone(programs, tmp_path):
    """A worker serving client after client keeps no initializer of one that
    has gone; of one killed while its task runs there, once that task ends."""
    _, address = programs.broker(*FAST)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        programs.worker(address, "--log-level", "DEBUG", stderr=log)

    def logged(text):
        return text in log_path.read_text()

    with zeropool.Executor(address, initializer=len, initargs=("x",)) as ex:
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9
        left = ex._session.client_id.decode()
    wait_until(lambda: logged(f"dropped the initializer of client {left}"), 30,
               what="the initializer of a client that left to be dropped")

    started, gate = tmp_path / "started", tmp_path / "gate"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = textwrap.dedent(f"""
        import zeropool, time
        from tests import helpers
        ex = zeropool.Executor({address!r}, initializer=len, initargs=('x',))
        print(ex._session.client_id.decode(), flush=True)
        ex.submit(helpers.touch_then_wait, {str(started)!r}, {str(gate)!r})
        time.sleep(600)
    """)
    doomed = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=root))
    killed = doomed.stdout.readline().strip()
    wait_until(started.exists, 30, what="the task to start")
    doomed.kill()
    doomed.wait()
    doomed.stdout.close()
    wait_until(lambda: logged(f"client {killed} has gone; its initializer goes when"), 30,
               what="the worker to hear that the killed client has gone")
    assert not logged(f"dropped the initializer of client {killed}")  # its task still runs
    gate.touch()
    wait_until(lambda: logged(f"dropped the initializer of client {killed}"), 30,
               what="the initializer to be dropped once the task ended")
    # The worker serves on, initializers and all.
    with zeropool.Executor(address, initializer=len, initargs=("y",)) as ex:
        assert ex.submit(helpers.square, 4).result(timeout=30) == 16


def test_an_initializer_the_workers_cannot_import_says_how_to_fix_it(
        programs, tmp_path, monkeypatch):
    # A module only this process can import (and never sent by value before).
    (tmp_path / "zp_only_here.py").write_text("def setup(value):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import zp_only_here
    _, address = programs.broker(*FAST)
    programs.worker(address)
    with zeropool.Executor(address, initializer=zp_only_here.setup, initargs=("x",)) as ex:
        future = ex.submit(helpers.square, 3)
        with pytest.raises(zeropool.InitializerError) as raised:
            future.result(timeout=30)
    message = str(raised.value)
    assert "cannot import module 'zp_only_here'" in message and "--path" in message, message
