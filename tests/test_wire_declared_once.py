"""The wire is declared once (protocol.wire): each kind's header and parser,
and each row's builder and checker, follow from one declaration."""
from __future__ import annotations

import dataclasses

import pytest

from zeropool import protocol
from zeropool.protocol import messages, wire
from zeropool.protocol.messages import Message

KIND_CLASSES = [getattr(messages, name) for name in messages.__all__
                if isinstance(getattr(messages, name), type)
                and issubclass(getattr(messages, name), Message)
                and getattr(messages, name) is not Message]
ROWS = [getattr(messages, name) for name in messages.__all__ if name.endswith("Row")]


def test_every_kind_is_declared_and_decodable_by_its_op():
    assert len(KIND_CLASSES) == len(protocol.Op) + 1  # RESULTS: a worker's and a client's
    for cls in KIND_CLASSES:
        assert cls in wire.KINDS.values(), cls
        assert "header" in cls.__dict__ and "_parse" in cls.__dict__, cls


def test_a_declaration_that_does_not_name_the_dataclass_fields_is_refused():
    with pytest.raises(TypeError, match="wire fields"):
        @wire.kind(protocol.Op.BYE, reason=messages.TEXT, extra=messages.TEXT)
        @dataclasses.dataclass(frozen=True)
        class Wrong(Message):
            reason: str = ""


@pytest.mark.parametrize("layout", ROWS, ids=lambda r: r.__name__)
def test_each_row_is_built_by_name_with_its_columns_at_their_indices(layout):
    values = {"task_id": 7, "client_id": b"c1", "nframes": 0, "inline": b"x", "status": 0,
              "stream": 1, "text": "t", "worker": "w", "code": "c", "message": "m",
              "version": "3.12"}
    columns = [c for c in layout.columns if c != "options"]
    built = layout(**{c: values[c] for c in columns})
    assert built == [values[c] for c in columns]
    for index, column in enumerate(columns):
        assert getattr(layout, column) == index
    assert layout.check([built], "rows") == [built]


def test_an_optional_column_is_left_off_while_none_and_parsed_when_there():
    options = protocol.TaskOptions.make(priority=3)
    assert protocol.SubmitRow(1, 0, b"x") == [1, 0, b"x"]
    row = protocol.SubmitRow(1, 0, b"x", options)
    assert row == [1, 0, b"x", options]
    message, _ = protocol.decode(protocol.encode(protocol.Submit([row])))
    assert message.tasks == [[1, 0, b"x", options]]


@pytest.mark.parametrize("bad, words", [
    ([[1, 0, b""]], "inline or as frames"),
    ([[1, 1, b"x"]], "inline or as frames"),
    ([[-1, 0, b"x"]], "task id in a SubmitRow"),
    ([[1, 0, "x"]], "inline payload"),
    ([[1, 0, b"x", 5]], "task options"),
    ([[1, 0]], "lists of 3 to 4"),
])
def test_a_row_checker_says_which_column_of_which_row_is_wrong(bad, words):
    with pytest.raises(protocol.ProtocolError, match=words):
        protocol.SubmitRow.check(bad, "tasks")


def test_optional_header_keys_are_sent_only_when_set():
    assert "output" not in protocol.WorkerResults([]).header()
    assert protocol.WorkerResults([], output=[[b"c", 1, 1, "x"]]).header()["output"]
    assert protocol.Cancel(1, [2]).header() == {"op": "cancel", "request_id": 1, "task_ids": [2]}


@pytest.mark.parametrize("header, words", [
    ({"op": "hello", "role": "worker", "version": protocol.PROTOCOL_VERSION, "credit": 1 << 21,
      "init_frames": 0, "pid": 1, "host": "h", "threads": 1},
     "bad 'credit' (an int from 0 to 1048576): 2097152"),
    ({"op": "hello", "role": "nobody", "version": protocol.PROTOCOL_VERSION},
     "bad 'role' ('client' or 'worker'): 'nobody'"),
    ({"op": "submit", "tasks": [[1, 0, "x"]]}, "bad inline payload in a SubmitRow (bytes): 'x'"),
    ({"op": "results", "results": [[1, 9, 0, b"x"]], "started": [], "errors": []},
     "bad status in a ClientResultRow (one of 0, 1, 2, 3): 9"),
    ({"op": "bye"}, "missing key 'reason'"),
])
def test_a_refused_value_is_named_with_what_it_should_have_been(header, words):
    import msgpack
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.decode([msgpack.packb(header)])
    assert str(refused.value) == words
