"""Bad input costs only its own task: each case gives its documented error,
and the next task on the same executor succeeds."""
from __future__ import annotations

import os
import pickle

import pytest

import zeropool
from zeropool.protocol import PROTOCOL_VERSION, Hello, Op, Role
from tests import helpers
from tests.peer import Peer


@pytest.fixture(scope="module")
def executor(shared_cluster):
    with zeropool.Executor(shared_cluster) as ex:
        yield ex


def next_task_succeeds(ex) -> None:
    assert ex.submit(helpers.square, 12).result(timeout=30) == 144


def test_unpicklable_argument_raises_at_submit_and_sends_nothing(executor):
    with pytest.raises(pickle.PicklingError,
                       match=r"cannot send argument 1 \(tests.helpers.Unpicklable\) to the "
                             r"workers: TypeError: .*refuse to be pickled.*Nothing was sent"):
        executor.submit(helpers.identity, helpers.Unpicklable())
    next_task_succeeds(executor)


def test_unpicklable_result_fails_its_future_and_the_worker_lives_on(executor):
    future = executor.submit(helpers.make_unpicklable)
    with pytest.raises(pickle.PicklingError,
                       match="result of type Unpicklable could not be pickled: TypeError"):
        future.result(timeout=30)
    next_task_succeeds(executor)


def test_module_the_worker_cannot_import_fails_with_its_error_and_traceback(executor):
    with pytest.raises(ModuleNotFoundError) as info:
        executor.submit(helpers.identity, helpers.NeedsMissingModule()).result(timeout=30)
    assert info.value.name == "zeropool_test_no_such_module"
    assert "Traceback" in str(info.value.__cause__)
    next_task_succeeds(executor)


def test_wrong_protocol_version_is_refused_with_the_brokers_version(executor, shared_cluster):
    with Peer() as old:
        old.connect(shared_cluster)
        old.send(Hello(Role.CLIENT, PROTOCOL_VERSION + 41, pid=os.getpid(), host="old"))
        answer = old.receive(30)
        assert answer is not None, "no answer to a HELLO of another version"
        reply = answer.message
        assert reply.op is Op.REFUSED and reply.version == PROTOCOL_VERSION
        assert f"speaks zeropool protocol {PROTOCOL_VERSION}" in reply.reason
    next_task_succeeds(executor)


@pytest.mark.timeout(120)
def test_a_task_printing_megabytes_delivers_all_of_it_and_its_result(shared_cluster, capsys):
    with zeropool.Executor(shared_cluster) as ex:
        assert ex.submit(helpers.print_lots, 20).result(timeout=90) == 200_000
        out, _ = capsys.readouterr()
    assert out.count("x" * 99 + "\n") == 200_000


@pytest.mark.timeout(120)
def test_many_mid_sized_calls_fit_under_a_small_message_limit(programs):
    # 1,000 calls of 3 KB would make a 3 MB header at once; the limit is 1 MB.
    _, address = programs.broker("--max-message-size", "1000000")
    programs.worker(address, "--processes", "2")
    with zeropool.Executor(address) as ex:
        blobs = [bytes([i % 256]) * 3000 for i in range(1000)]
        assert list(ex.map(helpers.identity, blobs)) == blobs
