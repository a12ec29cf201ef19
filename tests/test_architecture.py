"""Pins the design: each program imports only protocol, and the broker never
loads the pickling code (a broker that unpickled would run anyone's code)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROGRAMS = {
    "broker": ["broker.__main__", "broker.server", "broker.state"],
    "worker": ["worker.__main__", "worker.agent", "worker.runner", "worker.supervisor"],
    "client": ["client"],
}


def loaded_after_importing(modules: list[str]) -> set[str]:
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_programs_do_not_import_each_other(program):
    loaded = loaded_after_importing(PROGRAMS[program])
    others = {name.partition(".")[0] for name in loaded} & (set(PROGRAMS) - {program})
    assert not others, f"{program} loads {others}"
    assert "protocol" in loaded


def test_broker_never_loads_the_unpickling_code():
    loaded = loaded_after_importing(PROGRAMS["broker"])
    assert "cloudpickle" not in loaded
    assert "protocol.payload" not in loaded


def test_protocol_package_itself_does_not_load_payload():
    loaded = loaded_after_importing(["protocol"])
    assert "protocol.payload" not in loaded and "cloudpickle" not in loaded
    assert "zmq" not in loaded  # the wire format needs no sockets
