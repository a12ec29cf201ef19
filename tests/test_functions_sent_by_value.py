"""Functions that travel by value (defined in ``__main__``, lambdas, closures)
are pickled once while their state stays the same, and kept by each worker
from their second call on, and never run stale code (protocol.payload,
"By-value functions").

In process: what ``dumps_call`` sends and what ``loads_call`` gives back.
Then a script run as ``__main__`` against an embedded cluster, which changes
its functions' state between calls the ways a user script would.
"""
from __future__ import annotations

import fractions
import json
import os
import pickle
import subprocess
import sys
import textwrap
import types
import weakref

import cloudpickle
import pytest

from zeropool.protocol import payload


def in_main(source: str, **names) -> dict:
    """The namespace of ``source`` run as a module named ``__main__``: its
    functions travel by value, as a script's do."""
    namespace = {"__name__": "__main__", **names}
    exec(textwrap.dedent(source), namespace)
    return namespace


def call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` as a worker runs it: pickled, unpickled, called."""
    loaded, args, kwargs = payload.loads_call(payload.dumps_call(fn, args, kwargs))
    return loaded(*args, **kwargs)


def sends_its_pickle(fn, *args) -> bool:
    """Whether the call carries the function as its cached pickle (bytes)."""
    frames = payload.dumps_call(fn, args, {})
    return type(pickle.loads(frames[0])[0]) is bytes


@pytest.fixture
def pickles(monkeypatch):
    """Counts cloudpickle.dumps calls on each function: a cache hit makes none."""
    counts: dict = {}
    real = cloudpickle.dumps

    def counting(obj, *args, **kwargs):
        if isinstance(obj, type(counting)):
            counts[obj] = counts.get(obj, 0) + 1
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(payload.cloudpickle, "dumps", counting)
    monkeypatch.setattr(payload, "_value_pickles", {})
    monkeypatch.setattr(payload, "_not_cacheable", weakref.WeakSet())
    monkeypatch.setattr(payload, "_loaded_functions", {})
    return counts


# -- the cache is used ----------------------------------------------------------

def test_a_main_function_is_pickled_once_and_kept_by_a_worker(pickles):
    main = in_main("def double(x):\n    return 2 * x\n")
    frames = [payload.dumps_call(main["double"], (0,), {})]
    first = dict(pickles)
    frames += [payload.dumps_call(main["double"], (i,), {}) for i in range(1, 20)]
    assert pickles == first and list(pickles) == [main["double"]]
    assert len({pickle.loads(f[0])[0] for f in frames}) == 1  # one pickle, as bytes
    loaded = [payload.loads_call(f)[0] for f in frames]
    # Kept from its second call on (a pickle seen once is not worth a snapshot).
    assert loaded[0] is not loaded[1] and all(fn is loaded[1] for fn in loaded[1:])
    assert loaded[-1](3) == 6


def test_a_lambda_made_anew_per_call_with_the_same_state_hits(pickles):
    main = in_main("def make():\n    return lambda x: x + 1\n")
    fns = [main["make"]() for _ in range(5)]
    assert all(sends_its_pickle(fn, 1) for fn in fns)
    assert list(pickles) == fns[:1]  # the first lambda only
    assert call(fns[-1], 1) == 2


def test_a_recursive_function_is_cached():
    main = in_main("""
        def fact(n):
            return 1 if n < 2 else n * fact(n - 1)
    """)
    assert sends_its_pickle(main["fact"], 5)
    assert call(main["fact"], 5) == 120


def test_an_importable_function_still_travels_by_reference():
    frames = payload.dumps_call(textwrap.indent, ("a", "> "), {})
    assert pickle.loads(frames[0])[0] == pickle.dumps(textwrap.indent, protocol=5)
    assert payload.loads_call(frames)[0] is textwrap.indent


# -- what the client notices ----------------------------------------------------

def test_a_global_rebound_is_sent_anew():
    main = in_main("FACTOR = 2\ndef scale(x):\n    return x * FACTOR\n")
    assert call(main["scale"], 5) == 10
    main["FACTOR"] = 3
    assert call(main["scale"], 5) == 15


def test_a_global_defined_later_or_deleted_is_noticed():
    main = in_main("def read():\n    return LATER\n")
    with pytest.raises(NameError):
        call(main["read"])
    main["LATER"] = "here"
    assert call(main["read"]) == "here"
    del main["LATER"]
    with pytest.raises(NameError):
        call(main["read"])


def test_containers_changed_in_place_are_noticed_at_any_depth():
    main = in_main("""
        CONFIG = {"weights": [1, 2], "tags": {"a"}, "pair": (1, [2])}
        def read():
            return CONFIG["weights"][-1], sorted(CONFIG["tags"]), CONFIG["pair"][1][0]
    """)
    assert call(main["read"]) == (2, ["a"], 2)
    main["CONFIG"]["weights"].append(3)
    assert call(main["read"]) == (3, ["a"], 2)
    main["CONFIG"]["tags"].add("b")
    assert call(main["read"]) == (3, ["a", "b"], 2)
    main["CONFIG"]["pair"][1][0] = 7
    assert call(main["read"]) == (3, ["a", "b"], 7)


def test_an_equal_but_new_value_is_a_change():
    main = in_main("VALUE = 1\ndef read():\n    return VALUE\n")
    assert call(main["read"]) == 1
    main["VALUE"] = True  # == 1, pickles otherwise
    assert call(main["read"]) is True


def test_a_helper_function_redefined_is_noticed():
    main = in_main("""
        def helper(x):
            return x + 1
        def work(x):
            return helper(x)
    """)
    assert call(main["work"], 1) == 2
    exec("def helper(x):\n    return x + 100\n", main)
    assert call(main["work"], 1) == 101
    main["helper"].__defaults__ = None  # its attributes are the state too
    main["helper"].__code__ = (lambda x: x - 1).__code__
    assert call(main["work"], 1) == 0


def test_a_function_redefined_under_its_name_runs_the_new_code():
    main = in_main("def work():\n    return 'old'\n")
    old = main["work"]
    assert call(old) == "old"
    exec("def work():\n    return 'new'\n", main)
    assert call(main["work"]) == "new"
    assert call(old) == "old"


def test_closure_cells_defaults_and_attributes_are_noticed():
    main = in_main("""
        def make():
            value = 1
            def read(extra=0, *, more=0):
                return value + extra + more + getattr(read, "bonus", 0)
            def set_value(new):
                nonlocal value
                value = new
            return read, set_value
    """)
    read, set_value = main["make"]()
    assert call(read) == 1
    set_value(10)
    assert call(read) == 10
    read.__defaults__ = (5,)
    assert call(read) == 15
    read.__kwdefaults__["more"] = 100
    assert call(read) == 115
    read.bonus = 1000
    assert call(read) == 1115


def test_name_doc_and_annotations_are_noticed():
    main = in_main("def work(x: int) -> int:\n    return x\n")
    fn = main["work"]
    assert call(fn, 1) == 1
    fn.__doc__ = "now documented"
    fn.__annotations__["x"] = list[int]
    fn.__qualname__ = "renamed"
    loaded, _, _ = payload.loads_call(payload.dumps_call(fn, (1,), {}))
    assert (loaded.__doc__, loaded.__annotations__["x"], loaded.__qualname__) \
        == ("now documented", list[int], "renamed")


def test_an_importable_function_replaced_in_its_module_is_noticed(monkeypatch):
    main = in_main("from textwrap import dedent\ndef work(text):\n    return dedent(text)\n")
    assert sends_its_pickle(main["work"], " a")
    before = pickle.loads(payload.dumps_call(main["work"], (" a",), {})[0])[0]
    monkeypatch.setattr(textwrap, "dedent", lambda text: "replaced")
    # cloudpickle now sends the original dedent by value: so must we.
    after = pickle.loads(payload.dumps_call(main["work"], (" a",), {})[0])[0]
    assert after != before
    assert call(main["work"], " a") == "a"


def test_a_module_sent_by_value_later_is_noticed():
    main = in_main("import textwrap\ndef work(text):\n    return textwrap.dedent(text)\n")
    assert sends_its_pickle(main["work"], " a")
    cloudpickle.register_pickle_by_value(textwrap)
    try:
        assert not sends_its_pickle(main["work"], " a")  # a module by value is not checked
        assert call(main["work"], " a") == "a"
    finally:
        cloudpickle.unregister_pickle_by_value(textwrap)
    assert sends_its_pickle(main["work"], " a")


def test_a_new_module_loaded_is_noticed_where_a_package_is_held(monkeypatch):
    main = in_main("import email\ndef work():\n    return email.zeropool_test.__name__\n")
    first = pickle.loads(payload.dumps_call(main["work"], (), {})[0])[0]
    # cloudpickle lists the package's loaded submodules that the code names.
    monkeypatch.setitem(sys.modules, "email.zeropool_test", types.ModuleType("email.zeropool_test"))
    second = pickle.loads(payload.dumps_call(main["work"], (), {})[0])[0]
    assert b"email.zeropool_test" in second and b"email.zeropool_test" not in first


# -- what is not cached, and still right ------------------------------------------

def test_an_instance_in_the_state_is_pickled_per_call():
    main = in_main("""
        class Box:
            pass
        BOX = Box()
        BOX.value = 1
        def read():
            return BOX.value
    """)
    assert not sends_its_pickle(main["read"])
    assert call(main["read"]) == 1
    main["BOX"].value = 2
    assert call(main["read"]) == 2
    main["BOX"] = 3  # checkable now, but it was not once: still pickled whole
    assert not sends_its_pickle(main["read"])


def test_a_large_state_is_pickled_per_call():
    main = in_main(f"TABLE = list(range({payload._SNAPSHOT_MAX}))\n"
                   "def read():\n    return TABLE[-1]\n")
    assert not sends_its_pickle(main["read"])
    main["TABLE"][-1] = -1
    assert call(main["read"]) == -1


def test_arguments_sharing_an_object_with_the_state_arrive_as_that_object():
    main = in_main("""
        DATA = [1]
        def same(x):
            return x is DATA
        def apply(f, x):
            return f(x)
    """)
    assert call(main["same"], main["DATA"]) is True  # as cloudpickle alone sends it
    assert call(main["same"], [1]) is False
    fn, args, _ = payload.loads_call(payload.dumps_call(main["apply"], (main["apply"], 0), {}))
    assert args[0] is fn
    # Two functions of one module share their globals once unpickled.
    fn, args, _ = payload.loads_call(payload.dumps_call(main["apply"], (main["same"], 0), {}))
    assert args[0].__globals__ is fn.__globals__


def test_arguments_sharing_nothing_still_use_the_cache(pickles):
    main = in_main("def total(values, *, start=0):\n    return start + sum(values)\n")
    assert sends_its_pickle(main["total"], [1, 2])
    assert call(main["total"], [1, 2], start=3) == 6
    assert call(main["total"], [fractions.Fraction(1, 2)]) == fractions.Fraction(1, 2)
    assert list(pickles) == [main["total"]] and pickles[main["total"]] <= 2


# -- what the worker notices -------------------------------------------------------

def test_a_worker_starts_each_call_from_the_state_sent():
    main = in_main("""
        SEEN = []
        COUNT = 0
        def remember(x):
            global COUNT
            COUNT += 1
            SEEN.append(x)
            return COUNT, list(SEEN)
    """)
    frames = payload.dumps_call(main["remember"], ("a",), {})
    loaded = []
    for _ in range(5):  # seen once; kept; found changed; then unpickled per call
        fn, args, _ = payload.loads_call(frames)
        assert fn(*args) == (1, ["a"])
        loaded.append(fn)
    assert len(set(map(id, loaded))) == len(loaded)


def test_a_worker_keeps_a_function_whose_state_did_not_change():
    main = in_main("def pure(x):\n    return x\n")
    frames = payload.dumps_call(main["pure"], (1,), {})
    payload.loads_call(frames)  # seen once: not kept
    kept = payload.loads_call(frames)[0]
    kept(1)
    assert payload.loads_call(frames)[0] is kept


def test_a_state_changed_before_every_call_stops_being_cached(pickles):
    main = in_main("CURRENT = 0\ndef read():\n    return CURRENT\n")
    for i in range(1, 30):
        main["CURRENT"] = i * 1000  # a new int object each time
        assert call(main["read"]) == i * 1000
    # Pickled alone the first time and at each miss, then with each call whole.
    assert pickles[main["read"]] == 1 + payload._VALUE_MISSES_MAX
    assert not sends_its_pickle(main["read"])


def test_the_snapshot_reads_what_cloudpickle_pickles():
    """cloudpickle's function state, key by key: one it adds must be read too."""
    main = in_main("def work(x=1):\n    return x\n")
    state, slotstate = cloudpickle.cloudpickle._function_getstate(main["work"])
    assert state == {}
    assert set(slotstate) == {"__name__", "__qualname__", "__annotations__", "__kwdefaults__",
                              "__defaults__", "__module__", "__doc__", "__closure__",
                              "_cloudpickle_submodules", "__globals__"}


# -- end to end: a script run as __main__ ---------------------------------------------

SCRIPT = '''
import fractions
import json
import sys
import zeropool

FACTOR = 2
CONFIG = {"offset": 0}
SEEN = []


def helper(x):
    return x


def scale(x):
    return helper(x) * FACTOR + CONFIG["offset"]


def remember(x):
    SEEN.append(x)
    return len(SEEN)


def run(ex, fn, *args):
    return [f.result(timeout=60) for f in [ex.submit(fn, *args) for _ in range(20)]]


if __name__ == "__main__":
    out = {}
    with zeropool.Executor(max_workers=2) as ex:
        out["before"] = run(ex, scale, 5)
        FACTOR = 3
        out["global rebound"] = run(ex, scale, 5)
        CONFIG["offset"] = 100
        out["dict changed in place"] = run(ex, scale, 5)

        def helper(x):
            return -x

        out["helper redefined"] = run(ex, scale, 5)

        def scale(x):
            return "redefined"

        out["function redefined"] = run(ex, scale, 5)
        out["worker-side state"] = run(ex, remember, 1)
        out["sent state after calls"] = SEEN
    print(json.dumps(out))
'''

EXPECTED = {
    "before": [10] * 20,
    "global rebound": [15] * 20,
    "dict changed in place": [115] * 20,
    "helper redefined": [85] * 20,
    "function redefined": ["redefined"] * 20,
    # Each call starts from the client's SEEN (empty), as cloudpickle sends it.
    "worker-side state": [1] * 20,
    "sent state after calls": [],
}


@pytest.fixture(scope="module")
def script_output(tmp_path_factory):
    directory = tmp_path_factory.mktemp("main")
    path = directory / "script.py"
    path.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(path)], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(EXPECTED))
def test_a_script_changing_its_functions_between_calls_runs_the_new_code(script_output, case):
    assert script_output[case] == EXPECTED[case]


# -- map(chunksize=n): a chunk carries its function as a call does ----------------

def run_chunk_as_a_worker(fn, chunk):
    loaded, args, kwargs = payload.loads_call(payload.dumps_call(payload.run_chunk, (fn, chunk), {}))
    assert loaded is payload.run_chunk and not kwargs
    return loaded(*args)


def test_a_chunk_of_a_main_function_is_pickled_once_across_chunks(pickles):
    main = in_main("def double(x):\n    return 2 * x\n")
    chunks = [tuple((i,) for i in range(start, start + 10)) for start in range(0, 50, 10)]
    frames = [payload.dumps_call(payload.run_chunk, (main["double"], c), {}) for c in chunks]
    assert pickles[main["double"]] == 1
    carried = {pickle.loads(f[0])[1][0] for f in frames}
    assert len(carried) == 1 and type(carried.pop()) is bytes  # its pickle, as for a call
    results = [payload.run_chunk(*payload.loads_call(f)[1]) for f in frames]
    assert sum(results, []) == [2 * i for i in range(50)]


def test_a_chunk_of_an_importable_function_carries_its_reference():
    frames = payload.dumps_call(payload.run_chunk, (textwrap.indent, (("a", "> "),)), {})
    assert pickle.loads(frames[0])[1][0] == pickle.dumps(textwrap.indent, protocol=5)
    assert run_chunk_as_a_worker(textwrap.indent, (("a", "> "), ("b", "# "))) == ["> a", "# b"]


def test_a_global_rebound_between_chunks_is_sent_anew():
    main = in_main("FACTOR = 2\ndef scale(x):\n    return x * FACTOR\n")
    assert run_chunk_as_a_worker(main["scale"], ((1,), (2,))) == [2, 4]
    main["FACTOR"] = 10
    assert run_chunk_as_a_worker(main["scale"], ((1,), (2,))) == [10, 20]


def test_a_chunk_sharing_an_object_with_the_function_arrives_as_that_object():
    main = in_main("SEEN = []\ndef note(x, seen):\n    return seen is SEEN\n")
    assert run_chunk_as_a_worker(main["note"], ((1, main["SEEN"]),)) == [True]
