"""How torch's OpenMP threads should wait, chosen from how busy the CPU is when a command starts.

Idle OpenMP threads spin by default, which is fastest on an idle machine and disastrous on a shared one:
a spinning thread burns the core the other process needs, and a descheduled one stalls every barrier
(`synthaug demo --quick` took 4.7x as long beside one torch process; benchmarks/bench_contention.py).
With ``OMP_WAIT_POLICY=PASSIVE`` idle threads sleep: 1.6x beside that process, but 34% slower alone. So
the command measures the CPU's load for a moment at start and chooses: PASSIVE when other processes keep
at least half a core busy, the OpenMP default otherwise. Only the `synthaug` entry point (and the test
suite) calls this, before torch is imported; library code never changes the environment.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping

BUSY_CORES = 0.5  # other processes using at least this many cores: wait passively


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where there is no such file."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(interval: float = 0.1) -> float | None:
    """How many cores other processes keep busy, measured over ``interval`` seconds (None: unknown)."""
    first = _cpu_times()
    time.sleep(interval)  # this process sleeps meanwhile: what is busy is someone else
    second = _cpu_times()
    if first is None or second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or 1)


def choose_wait_policy(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` when the CPU is shared; returns what was set (or None).

    An explicit ``OMP_WAIT_POLICY`` (or libgomp's ``GOMP_SPINCOUNT``) is the user's choice and is kept.
    Where the load cannot be measured, PASSIVE: the safe choice on a machine we know nothing about.
    """
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return None
    busy = busy_cores()
    if busy is None or busy >= BUSY_CORES:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return "PASSIVE"
    return None
