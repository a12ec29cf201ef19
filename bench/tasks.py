"""Task functions for the benchmarks (importable, so every pool pickles them by reference)."""
from __future__ import annotations


def noop(x=None):
    return x


def burn(n: int) -> int:
    """Pure-Python CPU work: about 50 ms for n=1_000_000 on a typical core."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def echo(payload):
    return payload


def size_of(payload) -> int:
    return len(payload)


def make_bytes(n: int) -> bytes:
    return b"x" * n
