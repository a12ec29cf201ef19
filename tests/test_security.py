"""CURVE authentication: only peers whose key the broker holds get anything run.

Every refusal test offers the broker a task that would create a file, and
checks the file never appears, after an authorized round trip has gone
through the same broker and worker.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

import zeropool
from zeropool.broker.__main__ import is_loopback
from zeropool.client import BrokerUnreachable, Executor, Security
from zeropool.protocol import PROTOCOL_VERSION, Hello, Op, Role, Submit
from zeropool.protocol.payload import dumps_call
from zeropool.protocol.security import HandshakeWatch
from tests import helpers
from tests.conftest import command
from tests.helpers import wait_until
from tests.peer import Peer, packed_rows

FAST = ("--heartbeat-interval", "0.2", "--liveness", "5")


@pytest.fixture
def keys(tmp_path):
    """Key pairs made by the CLI, and an authorized directory holding the
    worker's and the client's public keys (not the intruder's)."""
    directory = tmp_path / "keys"
    result = subprocess.run(
        [*command("broker"), "keygen", str(directory), "--name", "broker", "--name", "worker",
         "--name", "client", "--name", "intruder"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    for name in ("worker", "client"):
        shutil.copy(directory / f"{name}.key", authorized)
    return directory, authorized


@pytest.fixture
def secure(programs, keys, tmp_path):
    """A broker with CURVE on and one authorized worker; returns (address, log path)."""
    directory, authorized = keys
    log_path = tmp_path / "broker.log"
    with open(log_path, "w") as log:
        _, address = programs.broker(
            *FAST, "--curve-secret-key", str(directory / "broker.key_secret"),
            "--authorized-keys", str(authorized), stderr=log)
    programs.worker(address, "--curve-server-key", str(directory / "broker.key"),
                    "--curve-key", str(directory / "worker.key_secret"))
    return address, log_path


def security(keys, name: str, server: str = "broker") -> Security:
    directory, _ = keys
    return Security.from_files(str(directory / f"{server}.key"),
                               str(directory / f"{name}.key_secret"))


def read(path) -> str:
    with open(path) as f:
        return f.read()


def intrude(address: str, sec: Security | None, marker: str) -> str:
    """Say HELLO and submit a call that creates ``marker``, from a raw socket;
    return why the handshake failed (it must fail)."""
    with Peer() as intruder:
        if sec is not None:
            sec.apply(intruder.socket)
        watch = HandshakeWatch(intruder.socket, sec)
        intruder.connect(address)
        intruder.send(Hello(Role.CLIENT, PROTOCOL_VERSION, pid=os.getpid(), host="intruder"))
        rows, payload = touch_row(marker)
        intruder.send(Submit(rows), payload)
        reasons = []

        def failed() -> bool:
            reasons.append(watch.failure())
            return reasons[-1] is not None

        wait_until(failed, 15, what="the handshake to fail")
        assert not intruder.socket.poll(0), "the broker answered a peer it should refuse"
        watch.close()
        return reasons[-1]


def touch_row(marker: str) -> tuple[list, list]:
    """A SUBMIT row (task 1) for a call that creates ``marker``, and its payload."""
    return packed_rows([[1]], [dumps_call(helpers.touch, (marker,), {})])


def test_keygen_writes_key_pairs_and_never_overwrites(keys):
    directory, _ = keys
    for name in ("broker", "worker", "client", "intruder"):
        public = Security.from_files(str(directory / f"{name}.key"),
                                     str(directory / f"{name}.key_secret"))
        assert len(public.public_key) == 40
        assert stat.S_IMODE(os.stat(directory / f"{name}.key_secret").st_mode) == 0o600
    before = read(directory / "client.key_secret")
    again = subprocess.run([*command("broker"), "keygen", str(directory), "--name", "client"],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "exists" in again.stderr
    assert read(directory / "client.key_secret") == before


def test_authorized_client_runs_tasks_over_curve(secure, keys):
    address, log_path = secure
    with Executor(address=address, security=security(keys, "client")) as ex:
        assert list(ex.map(helpers.square, range(20))) == [x * x for x in range(20)]
    assert "CURVE: authorized keys only" in read(log_path)


def test_security_is_read_from_the_environment(secure, keys, monkeypatch):
    address, _ = secure
    directory, _ = keys
    monkeypatch.setenv("ZEROPOOL_ADDRESS", address)
    monkeypatch.setenv("ZEROPOOL_CURVE_SERVER_KEY", str(directory / "broker.key"))
    monkeypatch.setenv("ZEROPOOL_CURVE_KEY", str(directory / "client.key_secret"))
    with Executor(max_workers=2) as ex:  # the seed examples' line, unchanged
        assert ex.address == address
        assert ex.submit(helpers.square, 7).result(timeout=30) == 49


@pytest.mark.parametrize("who, expected", [
    ("intruder", "not (or no longer) among the broker's authorized keys"),
    (None, "the broker requires CURVE keys and this peer has none"),
])
def test_unauthorized_peers_get_nothing_run(secure, keys, tmp_path, who, expected):
    address, log_path = secure
    marker = str(tmp_path / "intruder-ran")
    sec = security(keys, who) if who else None
    assert expected in intrude(address, sec, marker)
    with pytest.raises(BrokerUnreachable, match="refused this client"):
        Executor(address=address, security=sec, connect_timeout=30)
    # An authorized round trip through the same broker and worker, then the proof.
    with Executor(address=address, security=security(keys, "client")) as ex:
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9
    assert not os.path.exists(marker)
    if who:
        intruder_id = security(keys, who).public_key[:8].decode()
        wait_until(lambda: f"key {intruder_id} is not in" in read(log_path), 10,
                   what="the refusal in the broker's log")
        assert "refused a connection from 127.0.0.1" in read(log_path)


def test_wrong_broker_key_fails_with_a_clear_error(secure, keys):
    address, _ = secure
    with pytest.raises(BrokerUnreachable, match="does not match the broker's secret key"):
        Executor(address=address, security=security(keys, "client", server="intruder"),
                 connect_timeout=30)


def test_revoked_client_is_cut_off_and_refused_on_reconnect(secure, keys, tmp_path, gate):
    address, log_path = secure
    _, authorized = keys
    marker = str(tmp_path / "after-revocation")
    ex = Executor(address=address, security=security(keys, "client"))
    try:
        assert ex.submit(helpers.square, 4).result(timeout=30) == 16
        waiting = ex.submit(helpers.wait_for_file, gate)  # still queued or running
        os.remove(authorized / "client.key")
        with pytest.raises(BrokerUnreachable, match="revoked"):
            waiting.result(timeout=30)
        with pytest.raises(BrokerUnreachable, match="revoked"):
            ex.submit(helpers.touch, marker)
    finally:
        helpers.touch(gate)
        ex.shutdown(wait=False)
    assert "was revoked" in read(log_path)
    with pytest.raises(BrokerUnreachable, match="authorized keys"):
        Executor(address=address, security=security(keys, "client"), connect_timeout=30)
    assert not os.path.exists(marker)


def test_revoked_worker_leaves_and_its_task_runs_on_another(programs, keys, tmp_path, gate):
    directory, authorized = keys
    shutil.copy(directory / "intruder.key", authorized)  # a second worker's key
    _, address = programs.broker(*FAST, "--curve-secret-key",
                                 str(directory / "broker.key_secret"),
                                 "--authorized-keys", str(authorized))
    worker_args = ("--curve-server-key", str(directory / "broker.key"), "--curve-key")
    first = programs.worker(address, *worker_args, str(directory / "worker.key_secret"))
    started = str(tmp_path / "started")
    with Executor(address=address, security=security(keys, "client")) as ex:
        future = ex.submit(helpers.touch_then_wait, started, gate)
        wait_until(lambda: os.path.exists(started), 30, what="the task to start")
        os.remove(authorized / "worker.key")
        assert first.wait(timeout=30) == 4  # refused: worker.agent.Exit.REFUSED
        os.remove(started)
        second = programs.worker(address, *worker_args, str(directory / "intruder.key_secret"))
        wait_until(lambda: os.path.exists(started), 30, what="the task to start again")
        helpers.touch(gate)
        assert future.result(timeout=30) == second.pid


def test_worker_with_a_key_added_later_joins(programs, keys, tmp_path):
    directory, authorized = keys
    os.remove(authorized / "worker.key")
    log_path = tmp_path / "worker.log"
    _, address = programs.broker(*FAST, "--curve-secret-key",
                                 str(directory / "broker.key_secret"),
                                 "--authorized-keys", str(authorized))
    with open(log_path, "w") as log:
        programs.worker(address, "--curve-server-key", str(directory / "broker.key"),
                        "--curve-key", str(directory / "worker.key_secret"), stderr=log)
    wait_until(lambda: "authorized keys" in read(log_path), 30,
               what="the worker to report its refused key")
    with Executor(address=address, security=security(keys, "client")) as ex:
        future = ex.submit(helpers.square, 5)
        shutil.copy(directory / "worker.key", authorized)
        assert future.result(timeout=60) == 25


def test_non_loopback_bind_needs_keys_or_insecure(programs, tmp_path):
    refused = subprocess.run([*command("broker"), "--bind", "tcp://0.0.0.0:0"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "broker keygen" in refused.stderr and "--insecure" in refused.stderr
    # An interface name is not provably loopback; 'lo' keeps the traffic on this host.
    log_path = tmp_path / "broker.log"
    with open(log_path, "w") as log:
        _, address = programs.broker("--insecure", bind="tcp://lo:*", stderr=log)
    assert address.startswith("tcp://127.0.0.1:")
    with Executor(address=address, connect_timeout=30):
        pass  # welcomed
    assert "WITHOUT authentication" in read(log_path)


@pytest.mark.parametrize("address, loopback", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.2.1:*", True), ("tcp://localhost:1", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/zp.sock", True), ("inproc://x", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://10.0.0.1:5555", False),
    ("tcp://eth0:5555", False), ("tcp://example.com:5555", False),
])
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_security_settings_are_checked(keys, tmp_path, monkeypatch):
    directory, _ = keys
    with pytest.raises(ValueError, match="40-byte"):
        Security(b"short", b"x" * 40, b"y" * 40)
    with pytest.raises(ValueError, match="only a public key"):
        Security.from_files(str(directory / "broker.key"), str(directory / "client.key"))
    with pytest.raises(ValueError, match="cannot read a CURVE key"):
        Security.from_files(str(tmp_path / "missing.key"), str(directory / "client.key_secret"))
    monkeypatch.setenv("ZEROPOOL_CURVE_KEY", str(directory / "client.key_secret"))
    with pytest.raises(ValueError, match="ZEROPOOL_CURVE_SERVER_KEY is not set"):
        Security.from_environment()
    with pytest.raises(ValueError, match="embedded cluster"):
        Executor(security=security(keys, "client"))
    with pytest.raises(TypeError, match="zeropool.Security"):
        Executor(address="tcp://127.0.0.1:1", security="keys/client.key_secret")
    assert zeropool.Security is Security


def test_status_works_against_a_curve_broker(secure, keys):
    import json
    address, _ = secure
    directory, _ = keys
    run = [*command("broker"), "status", address, "--json", "--timeout", "10"]
    with_key = subprocess.run([*run, "--curve-server-key", str(directory / "broker.key"),
                               "--curve-key", str(directory / "client.key_secret")],
                              capture_output=True, text=True, timeout=30)
    assert with_key.returncode == 0, with_key.stderr
    assert json.loads(with_key.stdout)["curve"] is True
    without = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert without.returncode == 1
    assert "requires CURVE keys" in without.stderr


def test_a_revoked_key_gets_nothing_run_even_on_its_open_connection(secure, keys, tmp_path):
    address, _ = secure
    _, authorized = keys
    marker = str(tmp_path / "ran-after-revocation")
    with Peer() as revoked:
        security(keys, "client").apply(revoked.socket)
        revoked.join_as_client(address, host="revoked")
        os.remove(authorized / "client.key")
        revoked.expect(Op.REFUSED)  # the broker refuses the revoked connection
        # The same connection says HELLO again and submits: refused, and nothing runs.
        revoked.send(Hello(Role.CLIENT, PROTOCOL_VERSION, pid=os.getpid(), host="revoked"))
        rows, payload = touch_row(marker)
        revoked.send(Submit(rows), payload)
        revoked.expect(Op.REFUSED)  # the second refusal
    # A round trip with another authorized key through the same broker and worker.
    with Executor(address=address, security=security(keys, "worker")) as ex:
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9
    assert not os.path.exists(marker)
