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


def test_unreadable_proc_stat_keeps_the_count(monkeypatch):
    monkeypatch.setattr(T, "_busy_seconds", lambda cores: None)
    g = T.ThreadGovernor(max_threads=2)
    n = g.current
    assert g.tick() == n


def test_bad_threads_option_is_refused(tmp_path):
    import pytest

    from splat.train import TrainConfig, Trainer

    with pytest.raises(ValueError, match="--threads"):
        Trainer(TrainConfig(out=tmp_path, threads=-1, progress=False), log=lambda *a: None)
