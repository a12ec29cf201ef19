"""Runs the five seed examples on zeropool's embedded local cluster.

Each example is the stdlib original with one line changed (the executor);
see examples/seed_*.py. Examples 3 and 5 sleep on purpose (about 18 s each).
Then a longer run shows its progress with tqdm, when installed and in a terminal.
With $ZEROPOOL_ADDRESS set, everything runs on that broker's workers instead.
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
    return show_progress()


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def show_progress() -> int:
    """Our futures are concurrent.futures futures, so tqdm's usual pattern
    shows a long run's progress (pip install 'zeropool[progress]')."""
    import concurrent.futures

    import zeropool
    print("\n=== Progress of a longer run: 200 tasks of 50 ms ===", flush=True)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    with zeropool.Executor() as executor:
        futures = [executor.submit(_nap, 0.05) for _ in range(200)]
        done = concurrent.futures.as_completed(futures)
        if tqdm is not None and sys.stderr.isatty():
            done = tqdm(done, total=len(futures), unit="task")
            for _ in done:
                pass
        else:  # not a terminal (or no tqdm): a line per quarter
            for count, _ in enumerate(done, 1):
                if count % 50 == 0:
                    print(f"{count}/{len(futures)} tasks done", flush=True)
    print("=== all 200 done ===", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
