"""client.output: what remote tasks print shows in whole lines, never two
tasks' mixed, and never for a task already answered; no processes."""
from __future__ import annotations

import io

import pytest

from zeropool.client.output import TaskOutput

pytestmark = pytest.mark.timeout(30)


def _streams(monkeypatch) -> tuple[io.StringIO, io.StringIO]:
    """stdout and stderr, replaced (in the test: pytest's capture replaces them per phase)."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    return out, err


def test_a_line_split_over_messages_waits_for_its_end(monkeypatch):
    out, _ = _streams(monkeypatch)
    output = TaskOutput("plain")
    output.show([[1, 1, "half", "w"]], {1})
    assert out.getvalue() == ""
    output.show([[1, 1, " and the rest\nnext", "w"]], {1})
    assert out.getvalue() == "half and the rest\n"
    output.flush(1)  # the task ended: its open line shows as it is
    assert out.getvalue() == "half and the rest\nnext"


def test_streams_are_held_apart_and_carriage_returns_end_lines(monkeypatch):
    out, err = _streams(monkeypatch)
    output = TaskOutput("plain")
    output.show([[1, 2, "error ", "w"], [1, 1, "10%\r20%\r", "w"]], {1})
    assert out.getvalue() == "10%\r20%\r" and err.getvalue() == ""
    output.show([[1, 2, "line\n", "w"]], {1})
    assert err.getvalue() == "error line\n"


def test_output_of_a_task_no_longer_pending_is_dropped(monkeypatch):
    out, _ = _streams(monkeypatch)
    output = TaskOutput("plain")
    output.show([[7, 1, "a copy from an earlier run\n", "w"]], {1})
    output.flush(7)
    assert out.getvalue() == ""


def test_prefix_names_the_worker_on_every_line(monkeypatch):
    out, _ = _streams(monkeypatch)
    output = TaskOutput("prefix")
    output.show([[1, 1, "one\ntwo\n", "w1"], [2, 1, "three", "w2"]], {1, 2})
    output.flush(2)
    assert out.getvalue() == "[w1] one\n[w1] two\n[w2] three"
