"""client.broker_view: what the broker says of its workers, with ``now``
passed in: a version mismatch is told once per set of versions, and how
long the broker has had no worker; no sockets."""
from __future__ import annotations

import threading

import pytest

from zeropool.client.broker_view import BrokerView
from zeropool.protocol import Heartbeat, Welcome

pytestmark = pytest.mark.timeout(30)

MINE = {"python": "3.11.7", "cloudpickle": "3.0.0"}


def test_a_set_of_worker_versions_unlike_the_clients_is_told_once():
    view = BrokerView("tcp://b:5555", MINE)
    other = {"python": "3.12.1", "cloudpickle": "3.0.0"}
    same_minor = {"python": "3.11.2", "cloudpickle": "3.0.0"}
    (text,) = view.heard(Heartbeat(workers=2, versions=[other, same_minor]), 1.0)
    assert "Python 3.12.1" in text and "tcp://b:5555" in text
    assert view.heard(Heartbeat(workers=2, versions=[other]), 2.0) == []
    (text,) = view.heard(Heartbeat(workers=2, versions=[{**MINE, "cloudpickle": "2.2"}]), 3.0)
    assert "cloudpickle 2.2" in text


def test_how_long_the_broker_has_had_no_worker():
    view = BrokerView("tcp://b:5555", MINE)
    assert view.without_workers(5.0) == 0.0
    view.heard(Heartbeat(workers=0), 10.0)
    view.heard(Heartbeat(workers=0), 12.0)  # since the first that said none
    assert view.without_workers(15.0) == 5.0
    view.heard(Heartbeat(workers=1), 16.0)
    assert view.without_workers(20.0) == 0.0


def test_waiting_for_workers_ends_when_the_broker_reports_them():
    view = BrokerView("tcp://b:5555", MINE)
    assert not view.wait_for_workers(1, 0.01)
    reporter = threading.Thread(target=view.heard, args=(Heartbeat(workers=3), 1.0))
    reporter.start()
    assert view.wait_for_workers(3, 10)
    reporter.join(10)


def test_a_welcome_connects_and_sets_the_size_limit():
    view = BrokerView("tcp://b:5555", MINE)
    view.welcome(Welcome(1, 0.5, 3, max_message_size=1000))
    assert view.connected and view.max_message_size == 1000
