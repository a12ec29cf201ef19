"""Runs the five seed examples on zeropool's embedded local cluster.

Each example is the stdlib original with one line changed (the executor);
see examples/seed_*.py. Examples 3 and 5 sleep on purpose (about 18 s each).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    for number in range(1, 6):
        path = os.path.join(HERE, f"seed_{number}.py")
        with open(path) as f:
            title = f.readline().lstrip("# ").strip()
        print(f"\n=== {title} ===", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, path], cwd=HERE)
        print(f"=== example {number} finished in {time.monotonic() - start:.1f}s "
              f"(exit code {code}) ===", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
