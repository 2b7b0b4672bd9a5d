"""splat.train.allocator: freed memory kept in the process during CPU training (glibc)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from splat.train import allocator

# in a fresh process, so that the heap's state is glibc's own and not what earlier tests left
_PROBE = r"""
import json, resource, torch
from splat.train import allocator

def faults(mib=64, times=8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        x = torch.zeros(mib * 1024 * 1024 // 4)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"default": faults()}
restore = allocator.retain_freed_memory()
faults()  # the heap grows to hold the block (glibc may take a few rounds)
out["retained"] = faults()
restore()
print(json.dumps(out))
"""


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_freed_blocks_are_reused_while_retained():
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
                       env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    pages = 64 * 1024 * 1024 // 4096
    assert got["default"] >= 7 * pages * 0.9, got  # glibc's defaults: a fresh mapping each time
    assert got["retained"] <= pages, got  # kept: the freed pages are reused


def test_restore_sets_glibcs_defaults_back(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(allocator, "_glibc", lambda: FakeLibc())
    restore = allocator.retain_freed_memory()
    assert calls == [(allocator._M_MMAP_THRESHOLD, 1 << 30), (allocator._M_TRIM_THRESHOLD, 1 << 30)]
    restore()
    assert calls[2:] == [(allocator._M_MMAP_THRESHOLD, 128 * 1024), (allocator._M_TRIM_THRESHOLD, 128 * 1024)]


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    restore = allocator.retain_freed_memory()
    restore()  # nothing to undo
