"""zeropool installs as one name: a user's own ``worker.py``, ``client.py``,
``broker.py`` and ``protocol/`` neither shadow ours nor are shadowed by them."""
from __future__ import annotations

import os
import subprocess
import textwrap
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_FILES = {
    # The task function lives in the user's worker.py: workers must import it, not ours.
    "worker.py": "def square(x):\n    return x * x\n",
    # Importing any of these instead of ours would fail loudly.
    "client.py": "raise ImportError(\"the user's client.py was imported\")\n",
    "broker.py": "raise ImportError(\"the user's broker.py was imported\")\n",
    "protocol/__init__.py": "raise ImportError(\"the user's protocol/ was imported\")\n",
    "main.py": textwrap.dedent("""\
        from zeropool import Executor
        from worker import square

        if __name__ == "__main__":
            with Executor(2) as ex:
                print(list(ex.map(square, range(6))))
        """),
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with ``pip install .`` of this repository (not editable)."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True)
    python = str(home / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", ROOT], check=True, timeout=240,
                   stdout=subprocess.DEVNULL)
    return python


@pytest.mark.timeout(300)
def test_only_zeropool_lands_at_the_top_of_site_packages(installed):
    code = textwrap.dedent("""\
        import importlib.metadata as md
        files = md.distribution("zeropool").files
        print("\\n".join(sorted({f.parts[0] for f in files
                                 if not f.parts[0].endswith(".dist-info")
                                 and f.parts[0] != ".."})))
        """)
    out = subprocess.run([installed, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60, cwd="/").stdout
    assert out.split() == ["zeropool"]


@pytest.mark.timeout(300)
def test_a_users_modules_with_our_generic_names_run_on_zeropool(installed, tmp_path):
    for name, text in USER_FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPOOL_")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([installed, "main.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 4, 9, 16, 25]"
    for command in ("broker", "worker"):  # the commands users are told to start
        help_text = subprocess.run([os.path.join(os.path.dirname(installed), command), "--help"],
                                   cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert help_text.returncode == 0 and "usage" in help_text.stdout
        module = subprocess.run([installed, "-m", f"zeropool.{command}", "--help"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert module.returncode == 0 and "usage" in module.stdout
