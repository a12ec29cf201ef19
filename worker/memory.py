"""How much memory this process holds, and sizes as people write them
(``worker --max-memory 300MB``)."""
from __future__ import annotations

import os
import re
import sys

UNITS = {"": 1, "b": 1,
         "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"300MB"``, ``"2GiB"``, ``"500000000"`` -> bytes; ValueError if not
    a size of at least one byte."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in UNITS:
        raise ValueError(f"not a size: {text!r} (give bytes, or a number with one of "
                         "KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    size = int(float(match.group(1)) * UNITS[unit])
    if size < 1:
        raise ValueError(f"must be at least 1 byte, got {text!r}")
    return size


def rss() -> int:
    """This process's resident memory in bytes: now, from /proc on Linux;
    elsewhere its peak so far (getrusage), the closest portable measure."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes there, KiB elsewhere
