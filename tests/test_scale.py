"""Volume and long tasks through real brokers and workers."""
from __future__ import annotations

import concurrent.futures as cf
import os

import pytest

import zeropool
from tests import helpers


@pytest.mark.timeout(180)
def test_ten_thousand_tasks_through_two_workers(shared_cluster):
    with zeropool.Executor(address=shared_cluster) as ex:
        futures = {ex.submit(helpers.square, i): i for i in range(10_000)}
        seen = 0
        for future in cf.as_completed(futures, timeout=150):
            assert future.result() == futures[future] ** 2
            seen += 1
    assert seen == 10_000


@pytest.mark.timeout(120)
def test_long_task_does_not_stall_heartbeats_or_other_results(programs, tmp_path):
    # A task far longer than the liveness window (0.6 s) runs once, and other
    # results keep flowing meanwhile: the worker's I/O loop keeps talking.
    _, address = programs.broker("--heartbeat-interval", "0.2", "--liveness", "3")
    programs.worker(address, "--threads", "2")
    runs = tmp_path / "runs"
    runs.mkdir()
    with zeropool.Executor(address) as ex:
        long = ex.submit(helpers.count_run_then_sleep, str(runs), 4, "long")
        short = [ex.submit(helpers.square, i) for i in range(500)]
        for future in cf.as_completed(short, timeout=60):
            assert future.result() is not None
        assert not long.done()  # every short result arrived while the long task ran
        assert long.result(timeout=60) == "long"
    assert len(os.listdir(runs)) == 1  # it ran once: never declared lost and requeued


@pytest.mark.timeout(120)
def test_a_future_kept_after_its_result_does_not_keep_its_arguments(shared_cluster):
    # The client keeps each call's pickle for a resubmission until it is answered.
    with zeropool.Executor(address=shared_cluster) as ex:
        done = ex.submit(len, b"x" * (1 << 20))
        failed = ex.submit(helpers.raise_value_error, "x" * (1 << 20))
        assert done.result(timeout=60) == 1 << 20
        with pytest.raises(ValueError):
            failed.result(timeout=60)
        cancelled = ex.submit(len, b"x" * (1 << 20))
        cancelled.cancel()  # may or may not have started: either way it is finished
        cf.wait([cancelled], timeout=60)
        assert done.frames is None and failed.frames is None and cancelled.frames is None
