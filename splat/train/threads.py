"""How many CPU threads a training uses, beside other work on the machine.

The CPU kernels (torch's and splat's native ones) run on one OpenMP thread pool, whose
workers spin while they wait for the next parallel region (libgomp's active wait).
That is the fastest choice on an otherwise idle machine, but beside another busy
process the spinning workers take the cores from the threads doing the work: on the
2-core machine the README names, a training beside one ``while True: pass`` process
kept 0.11-0.39 of its solo step rate with 2 threads (its fair share is 0.5).
Passive waiting (OMP_WAIT_POLICY=PASSIVE) fixes that but costs ~40 % alone, since a
step runs hundreds of small parallel regions.

`ThreadGovernor` keeps the spinning pool and adapts its size instead: every
`interval` seconds it reads how much CPU time the other processes took on this
process's cores (the per-core busy times, from psutil, less this process's own) and
sets the thread count to the cores they leave free, at least 1 and at most the
count it started with. One thread never waits on another, so beside a busy process
a run keeps the one core the scheduler gives it; once the machine is idle again it
returns to all of its threads. Where the per-core times cannot be read it keeps the
count it started with.
"""
from __future__ import annotations

import math
import os
import time
from typing import List, Optional, Tuple

import psutil
import torch

__all__ = ["ThreadGovernor", "set_threads"]


def set_threads(n: int) -> None:
    """Use `n` threads for torch's CPU ops and splat's native CPU kernels (one OpenMP runtime,
    so both follow; the native library is told as well when it is loaded)."""
    torch.set_num_threads(n)
    try:
        from ..backends import cpu

        if cpu._lib is not None:
            cpu._lib.splat_set_num_threads(n)
    except ImportError:  # pragma: no cover - the cpu backend always imports
        pass


def _cores() -> List[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


_IDLE_FIELDS = ("idle", "iowait", "guest", "guest_nice")  # not busy, or already counted in user/nice (Linux)


def _busy_seconds(cores: List[int]) -> Optional[float]:
    """CPU seconds the given cores have spent busy since boot (psutil's per-CPU times: every field but
    idle and iowait, and guest time, which Linux counts in user time too), or None where that
    cannot be read."""
    want = set(cores)
    try:
        per_cpu = psutil.cpu_times(percpu=True)
        return float(sum(sum(v for k, v in t._asdict().items() if k not in _IDLE_FIELDS)
                         for i, t in enumerate(per_cpu) if i in want))
    except (OSError, RuntimeError, AttributeError, NotImplementedError):
        return None


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class ThreadGovernor:
    """Sets the thread count to the cores other processes leave free (module docstring).

    `max_threads`: the most it uses (default: torch's count now); `interval`: seconds between
    looks at the machine. Call ``tick()`` often (each training step: it costs a clock read
    until `interval` has passed); ``close()`` restores the count it started with. ``changes``
    lists (seconds since start, threads, other processes' cores) at each change."""

    def __init__(self, max_threads: Optional[int] = None, interval: float = 1.0):
        self.start_threads = torch.get_num_threads()
        self.max_threads = max(1, int(max_threads or self.start_threads))
        self.interval = float(interval)
        self.cores = _cores()
        self.current = self.start_threads
        self.changes: List[Tuple[float, int, float]] = []
        self._t0 = time.monotonic()
        self._sample = self._read()

    def _read(self):
        busy = _busy_seconds(self.cores)
        return None if busy is None else (time.monotonic(), busy, _own_seconds())

    def choose(self, others: float) -> int:
        """The thread count for `others` cores' worth of other processes' work: the free cores,
        rounded down unless within a quarter core of the next, at least 1, at most max_threads."""
        free = len(self.cores) - max(0.0, others)
        return max(1, min(self.max_threads, int(math.floor(free + 0.25))))

    def tick(self) -> int:
        """Look at the machine if `interval` has passed and adapt; returns the thread count."""
        if self._sample is None or self.max_threads <= 1:
            return self.current
        now = time.monotonic()
        if now - self._sample[0] < self.interval:
            return self.current
        sample = self._read()
        if sample is None:
            self._sample = None
            return self.current
        wall = sample[0] - self._sample[0]
        others = ((sample[1] - self._sample[1]) - (sample[2] - self._sample[2])) / wall
        self._sample = sample
        n = self.choose(others)
        if n != self.current:
            set_threads(n)
            self.current = n
            self.changes.append((now - self._t0, n, round(others, 2)))
        return self.current

    def close(self) -> None:
        """Restore the thread count found at the start."""
        if self.current != self.start_threads:
            set_threads(self.start_threads)
            self.current = self.start_threads
