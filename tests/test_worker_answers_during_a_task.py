"""A one-thread worker keeps answering around its tasks: it reports a long
task's start and streams its output while it runs, and drains on SIGTERM or
reconnects to a restarted broker between tasks.

What makes this hard: a one-thread worker lends its socket to its task thread
between lone tasks (worker.agent, "Lending the socket"), and its loop must
take the socket back whenever there is more to do, so nothing a worker owes
the broker or the client waits for a task to end. The tests drive the worker
into that state first."""
from __future__ import annotations

import signal

import zeropool
from zeropool.broker.status import query
from tests import helpers
from tests.helpers import wait_until

# The broker declares a worker dead after a second of silence.
FAST = ("--heartbeat-interval", "0.2", "--liveness", "5", "--log-level", "WARNING")
LENT = "lent the socket to the task thread"
RUNNING_THERE = "took the socket back from the task thread: a task is running there"
QUEUED = "took the socket back from the task thread: tasks are queued"


def _lending_worker(programs, tmp_path, broker_args=FAST):
    """A broker, and one one-thread worker logging at DEBUG (it takes the
    broker's heartbeat settings); returns the broker, its address, the worker
    and a function that reads the worker's log."""
    broker, address = programs.broker(*broker_args)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        worker = programs.worker(address, "--threads", "1", "--log-level", "DEBUG", stderr=log)
    return broker, address, worker, log_path.read_text


def _lend(ex, read_log):
    """Run tasks until the worker has lent its socket (it does after a task
    unless its loop was busy just then). Only the worker's DEBUG log can tell:
    lending is invisible from outside, by design."""
    def lent():
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9
        return LENT in read_log()
    wait_until(lent, 30, interval=0.05, what="the worker to lend its socket")


def test_a_long_task_on_the_lent_socket_is_reported_started(programs, tmp_path, gate):
    _, address, _, read_log = _lending_worker(programs, tmp_path)
    started = str(tmp_path / "started")
    with zeropool.Executor(address) as ex:
        _lend(ex, read_log)
        (worker,) = query(address, None, 5)["workers"]
        future = ex.submit(helpers.touch_then_wait, started, gate)
        helpers.wait_for_file(started)
        wait_until(future.running, 10, what="the start to be reported")
        # (Or, rarely, the loop was awake when the task came and queued it.)
        wait_until(lambda: RUNNING_THERE in read_log() or QUEUED in read_log(), 10,
                   what="the loop to take the socket back while the task runs")
        queued = ex.submit(helpers.square, 4)  # waits here, or at the broker
        assert not future.done()
        helpers.touch(gate)
        assert future.result(timeout=30) > 0
        assert queued.result(timeout=30) == 16
    # The same registration throughout: a worker that found the broker silent,
    # or was forgotten by it, joins again under a new id.
    report = query(address, None, 5)
    assert [w["id"] for w in report["workers"]] == [worker["id"]], report["workers"]
    assert report["requeued"] == 0


def test_output_of_a_task_on_the_lent_socket_arrives_while_it_runs(programs, tmp_path, gate,
                                                                  capsys):
    _, address, _, read_log = _lending_worker(programs, tmp_path)
    with zeropool.Executor(address) as ex:
        _lend(ex, read_log)
        capsys.readouterr()
        future = ex.submit(helpers.print_then_wait, "hello from the lent socket", gate)
        wait_until(lambda: "hello from the lent socket" in capsys.readouterr().out, 30,
                   what="the task's output while it runs")
        assert not future.done()
        helpers.touch(gate)
        assert future.result(timeout=30) > 0


def test_a_worker_that_lent_its_socket_drains_on_sigterm(programs, tmp_path):
    _, address, worker, read_log = _lending_worker(programs, tmp_path)
    with zeropool.Executor(address) as ex:
        _lend(ex, read_log)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert "drained; leaving" in read_log()


def test_a_worker_that_lent_its_socket_reconnects_to_a_restarted_broker(programs, tmp_path):
    # Silent for 0.3 s is gone: the loop reconnects while the socket is still lent.
    broker_args = ("--heartbeat-interval", "0.1", "--liveness", "3", "--log-level", "WARNING")
    broker, address, _, read_log = _lending_worker(programs, tmp_path, broker_args)
    with zeropool.Executor(address) as ex:
        _lend(ex, read_log)
    broker.kill()
    broker.wait(timeout=30)
    wait_until(lambda: "reconnecting in" in read_log(), 30,
               what="the worker to give up on the killed broker")
    programs.broker(*broker_args, bind=address)
    with zeropool.Executor(address) as ex:
        assert ex.submit(helpers.square, 5).result(timeout=30) == 25
