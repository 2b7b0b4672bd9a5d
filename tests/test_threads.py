"""The thread governor (splat.train.threads): fewer threads while other processes are busy."""
from __future__ import annotations

import torch

from splat.train import threads as T


def test_choose_takes_the_free_cores():
    g = T.ThreadGovernor(max_threads=2)
    g.cores = [0, 1]
    assert g.choose(0.0) == 2          # idle machine: every thread
    assert g.choose(1.0) == 1          # one busy process on 2 cores: one thread
    assert g.choose(0.1) == 2 and g.choose(0.8) == 1
    assert g.choose(5.0) == 1          # never below one
    g.cores = list(range(8))
    assert g.choose(3.0) == 2          # never above max_threads


def test_tick_follows_other_processes_and_restores(monkeypatch):
    """Other processes' busy time (the cores' time less this process's own) lowers the count; an idle
    machine brings it back; close() restores the starting count."""
    clock, busy, own = [0.0], [0.0], [0.0]
    monkeypatch.setattr(T.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(T, "_busy_seconds", lambda cores: busy[0])
    monkeypatch.setattr(T, "_own_seconds", lambda: own[0])
    set_to = []
    monkeypatch.setattr(T, "set_threads", lambda n: set_to.append(n))
    start = torch.get_num_threads()
    g = T.ThreadGovernor(max_threads=2)
    g.cores, g.current = [0, 1], 2
    clock[0], busy[0], own[0] = 0.5, 1.0, 0.5   # before the interval: no look
    assert g.tick() == 2 and set_to == []
    clock[0], busy[0], own[0] = 1.0, 2.0, 1.0   # over 1 s: 2 core-s busy, 1 of them ours -> 1 other
    assert g.tick() == 1 and set_to == [1]
    clock[0], busy[0], own[0] = 2.0, 3.0, 2.0   # now only our own second: idle otherwise
    assert g.tick() == 2 and set_to == [1, 2]
    assert [c[1] for c in g.changes] == [1, 2]
    g.current = 1
    g.close()
    assert set_to[-1] == start


def test_busy_seconds_count_this_process_and_not_idle_time(monkeypatch):
    """The cores' busy time grows by about the CPU time this process spins on them; idle, iowait
    and guest time (Linux counts guest time in user time too) are not counted; only the given
    cores are."""
    import collections
    import time

    cores = T._cores()
    b0, o0 = T._busy_seconds(cores), T._own_seconds()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        pass
    b1, o1 = T._busy_seconds(cores), T._own_seconds()
    assert o1 - o0 >= 0.3
    assert b1 - b0 >= 0.8 * (o1 - o0) - 0.05  # our own spinning (the counters tick in 10 ms)

    Times = collections.namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")
    fake = [Times(1, 2, 4, 1000, 500, 8, 16, 32, 1, 2), Times(64, 0, 128, 1000, 0, 0, 0, 0, 0, 0)]
    monkeypatch.setattr(T.psutil, "cpu_times", lambda percpu=False: fake)
    assert T._busy_seconds([0]) == 63 and T._busy_seconds([1]) == 192 and T._busy_seconds([0, 1]) == 255


def test_unreadable_cpu_times_keep_the_count(monkeypatch):
    def fail(percpu=False):
        raise OSError("no /proc")

    monkeypatch.setattr(T.psutil, "cpu_times", fail)
    assert T._busy_seconds([0]) is None
    g = T.ThreadGovernor(max_threads=2)
    n = g.current
    T.time.sleep(0.01)
    g.interval = 0.0
    assert g.tick() == n and g.changes == []


def test_bad_threads_option_is_refused(tmp_path):
    import pytest

    from splat.train import TrainConfig, Trainer

    with pytest.raises(ValueError, match="--threads"):
        Trainer(TrainConfig(out=tmp_path, threads=-1, progress=False), log=lambda *a: None)
