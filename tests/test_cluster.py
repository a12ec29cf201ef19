"""The embedded local cluster: started by Executor(), gone afterwards, always."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap


import zeropool
from tests import helpers
from tests.conftest import alive, descendants
from tests.helpers import wait_until


def test_shutdown_leaves_no_process_behind():
    before = descendants(os.getpid())
    ex = zeropool.Executor(3)
    assert ex.submit(helpers.square, 2).result(timeout=30) == 4
    wait_until(lambda: len(descendants(os.getpid()) - before) == 5, 30,
               what="broker, supervisor and 3 workers")
    started = descendants(os.getpid()) - before
    ex.shutdown(wait=True)
    assert not [pid for pid in started if alive(pid)]


def test_first_result_arrives_quickly_after_construction():
    with zeropool.Executor(2) as ex:
        assert ex.submit(helpers.getpid).result(timeout=30) != os.getpid()


SCRIPT = textwrap.dedent("""
    import os, sys, time
    import zeropool
    from tests import helpers
    ex = zeropool.Executor(2)
    assert ex.submit(helpers.square, 3).result(timeout=30) == 9
    print("ready", flush=True)
    {rest}
""")


def run_script(rest: str, tmp_path) -> subprocess.Popen:
    path = tmp_path / "script.py"
    path.write_text(SCRIPT.format(rest=rest))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)


def test_killing_the_client_leaves_no_process_behind(tmp_path):
    script = run_script("sys.stdin = None; time.sleep(600)", tmp_path)
    try:
        assert script.stdout.readline().strip() == "ready"
        wait_until(lambda: len(descendants(script.pid)) == 4, 30,
                   what="broker, supervisor and 2 workers")
        cluster = descendants(script.pid)
        script.send_signal(signal.SIGKILL)
        script.wait(30)
        wait_until(lambda: not [pid for pid in cluster if alive(pid)], 30,
                   what="the cluster to notice its parent died")
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()


def test_interpreter_exit_without_shutdown_finishes_work_and_cleans_up(tmp_path):
    script = run_script(
        "f = ex.submit(helpers.sleep_and_return, 0.5, 'finished at exit')\n"
        "f.add_done_callback(lambda f: print(f.result(), flush=True))", tmp_path)
    assert script.stdout.readline().strip() == "ready"
    out, _ = script.communicate(timeout=60)
    assert script.returncode == 0
    assert "finished at exit" in out
