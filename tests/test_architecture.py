"""Pins the design: each program imports only protocol, the broker never
loads the pickling code (a broker that unpickled would run anyone's code),
and the classes and loops stay small enough to read."""
from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

PROGRAMS = {
    "broker": ["zeropool.broker.__main__", "zeropool.broker.server", "zeropool.broker.state"],
    "worker": ["zeropool.worker.__main__", "zeropool.worker.agent", "zeropool.worker.runner",
               "zeropool.worker.supervisor"],
    "client": ["zeropool.client"],
}


def loaded_after_importing(modules: list[str]) -> set[str]:
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return set(json.loads(out))


def ours(loaded: set[str]) -> set[str]:
    """The zeropool parts among ``loaded``: broker, worker, client, protocol."""
    return {name.split(".")[1] for name in loaded if name.startswith("zeropool.")}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_programs_do_not_import_each_other(program):
    loaded = ours(loaded_after_importing(PROGRAMS[program]))
    others = loaded & (set(PROGRAMS) - {program})
    assert not others, f"{program} loads {others}"
    assert "protocol" in loaded


def test_broker_never_loads_the_unpickling_code():
    loaded = loaded_after_importing(PROGRAMS["broker"])
    assert "cloudpickle" not in loaded
    assert "zeropool.protocol.payload" not in loaded


def test_protocol_package_itself_does_not_load_payload():
    loaded = loaded_after_importing(["zeropool.protocol"])
    assert "zeropool.protocol.payload" not in loaded and "cloudpickle" not in loaded
    assert "zmq" not in loaded  # the wire format needs no sockets


def test_the_package_loads_the_client_only_when_asked():
    loaded = loaded_after_importing(["zeropool"])
    assert not ours(loaded) and "cloudpickle" not in loaded
    import zeropool
    assert zeropool.Executor is zeropool.client.Executor
    assert set(zeropool.__all__) == set(zeropool.client.__all__)
    with pytest.raises(AttributeError, match="no_such_name"):
        zeropool.no_such_name


def test_nothing_of_ours_is_importable_by_the_generic_names():
    # From a neutral directory, as a user's program runs: only `zeropool` is ours.
    code = ("import importlib.util, json\n"
            "print(json.dumps({n: importlib.util.find_spec(n) is not None\n"
            "                  for n in ('client', 'broker', 'worker', 'protocol')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, cwd="/").stdout
    assert not any(json.loads(out).values())


# The rooms (issue 15): classes narrow enough to read in one go, loops short
# enough to see whole. "About 15": a class may go one over; none goes further.
MOST_METHODS = MOST_ATTRIBUTES = 16
LONGEST_LOOP = 30
SOURCE = pathlib.Path(__file__).resolve().parent.parent


def _classes_and_loops():
    for folder in ("broker", "worker", "client", "protocol"):
        for path in sorted((SOURCE / folder).glob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                yield path.relative_to(SOURCE), node


def test_each_class_holds_about_15_methods_and_15_attributes_at_most():
    wide = []
    for path, node in _classes_and_loops():
        if not isinstance(node, ast.ClassDef):
            continue
        methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        attributes = {n.attr for n in ast.walk(node)
                      if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                      and isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")}
        if len(methods) > MOST_METHODS or len(attributes) > MOST_ATTRIBUTES:
            wide.append(f"{path}: {node.name} has {len(methods)} methods, "
                        f"{len(attributes)} attributes")
    assert not wide, "\n".join(wide)


def test_no_loop_runs_over_about_30_lines():
    long = [f"{path}:{node.lineno}: {node.end_lineno - node.lineno + 1} lines"
            for path, node in _classes_and_loops()
            if isinstance(node, (ast.For, ast.While))
            and node.end_lineno - node.lineno + 1 > LONGEST_LOOP]
    assert not long, "\n".join(long)
