"""The process group of a distributed training: who this process is, and the few
collectives the trainer needs, over ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

``splat-train`` launched by torchrun (``torchrun --nproc-per-node=N $(which splat-train)
...``, also across nodes with ``--nnodes``/``--rdzv-endpoint``) finds torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) and joins the group
(`World.from_env`); a plain ``splat-train`` is a `World` of one process with no group.

A rank that dies makes the others' next collective fail (gloo: the connection closes;
otherwise after ``--dist.timeout`` seconds); `World.collective` turns that into a
`RankLost` error that names the run and its last checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
import time
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistConfig", "World", "RankLost", "launched_by_torchrun"]


@dataclasses.dataclass
class DistConfig:
    """Options of multi-process training (``--dist.*``; used when launched with torchrun)."""

    backend: str = "auto"
    """torch.distributed backend: auto (nccl for --device cuda, else gloo), gloo or nccl."""
    timeout: float = 1800.0
    """Seconds a collective waits for the other processes before the run stops with an error (a process
    that dies is noticed at once; this bounds one that hangs, and rank 0's work alone: its evaluation,
    checkpoint writes, a viewer pause)."""
    balance: bool = True
    """Split each step's pixels over the processes by their measured cost (Gaussian-tile intersections and
    pixels, weighted by the render times measured so far); off: equal numbers of tile rows."""
    rebalance_every: int = 100
    """Re-balance the Gaussians over the processes (equal counts) every N steps and after density control."""
    viewer_every: int = 10
    """With --viewer: gather the whole model for rank 0's viewer every N steps."""

    def check(self) -> None:
        """Raise ``ValueError`` for unusable options."""
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"--dist.backend must be auto, gloo or nccl, got {self.backend!r}")
        if self.timeout <= 0 or self.rebalance_every < 1 or self.viewer_every < 1:
            raise ValueError(f"--dist.timeout, --dist.rebalance-every and --dist.viewer-every must be positive, got "
                             f"{self.timeout}, {self.rebalance_every}, {self.viewer_every}")


_LOST = re.compile(r"connection|closed|reset|timed? ?out|broken pipe|peer|NCCL", re.IGNORECASE)


class RankLost(RuntimeError):
    """Another process of the run ended (or stopped answering) during a collective."""


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (its ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` are set)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


class World:
    """This process's place in the run: ``rank``, ``size``, and whether a process group is up
    (``distributed``: also True for a torchrun launch of one process, which runs the sharded
    step). Collectives are no-ops for a plain one-process run."""

    def __init__(self, rank: int = 0, size: int = 1, distributed: bool = False, device: str = "cpu",
                 where: str = ""):
        self.rank, self.size, self.distributed = int(rank), int(size), bool(distributed)
        self.device = torch.device(device)
        self.where = where  # the run directory, for error messages
        self.last_checkpoint: Optional[str] = None
        self.timeout = DistConfig.timeout
        self.bytes_sent = 0  # by this rank's all-to-all exchanges (statistics)

    @classmethod
    def from_env(cls, config: DistConfig = DistConfig(), device: str = "cpu", where: str = "") -> "World":
        """Join torchrun's process group when launched by torchrun (gloo, or NCCL for CUDA
        devices; each process takes the GPU of its ``LOCAL_RANK``), else a one-process World.
        Raises ``ValueError`` for NCCL without CUDA."""
        config.check()  # before joining: a bad option is an error of this command, not of the group
        if not launched_by_torchrun():
            return cls(device=device, where=where)
        backend = config.backend
        if backend == "auto":
            backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise ValueError("--dist.backend nccl needs CUDA; on CPUs use gloo")
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=config.timeout))
        world = cls(dist.get_rank(), dist.get_world_size(), True, device, where)
        world.timeout = config.timeout
        return world

    def close(self, clean: bool = True) -> None:
        """Leave the group: after a barrier when `clean` (so that no rank closes its connections
        while another still reads from them); without one after an error (the others may never
        reach it: torchrun stops them when this process exits)."""
        if self.distributed and dist.is_initialized():
            try:
                if clean and self.size > 1:  # after an error the others may never reach a barrier
                    dist.barrier()
            except (RuntimeError, OSError):
                pass  # a peer is gone already: nothing left to wait for
            # gloo's worker threads drop their finished work (and the Python tensors it holds) just after
            # the barrier returns; they need the GIL for it, and aborting the process when it is gone.
            # Give it to them before the interpreter can start shutting down.
            time.sleep(0.2)
            dist.destroy_process_group()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ error handling
    @contextlib.contextmanager
    def collective(self, what: str):
        """Run collectives; a failure (a peer that died or timed out) becomes `RankLost`,
        naming `what` was exchanged and the last checkpoint."""
        try:
            yield
        except RankLost:
            raise
        except (RuntimeError, OSError) as e:  # gloo: "Connection closed by peer", timeouts
            if not self.distributed or not _LOST.search(str(e)):
                raise
            ck = self.last_checkpoint or "none written yet"
            why = re.sub(r"\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0] if str(e).strip() else repr(e))
            timed_out = re.search(r"timed? ?out", why, re.IGNORECASE)
            cause = (f"another process did not answer within --dist.timeout {self.timeout:g} s during {what} (it "
                     f"stopped, hangs, or rank 0 was busy or paused in the viewer for longer)" if timed_out else
                     f"another process of the run stopped during {what}")
            raise RankLost(f"rank {self.rank} of {self.size}: {cause} ({why[:120]}); the run stops. Last "
                           f"checkpoint: {ck}"
                           + (f"; continue with --out {self.where} --resume (any number of processes)"
                              if self.last_checkpoint else "")) from None

    # ------------------------------------------------------------------ collectives
    def all_reduce_(self, t: Tensor, what: str = "a sum") -> Tensor:
        """Sum `t` over the ranks in place (returns it)."""
        if self.distributed and self.size > 1:
            with self.collective(what):
                dist.all_reduce(t)
        return t

    def all_gather_sizes(self, n: int, what: str = "sizes") -> List[int]:
        """Every rank's `n`, in rank order."""
        if not (self.distributed and self.size > 1):
            return [int(n)]
        t = torch.tensor([int(n)], dtype=torch.int64, device=self.device)
        out = [torch.zeros_like(t) for _ in range(self.size)]
        with self.collective(what):
            dist.all_gather(out, t)
        return [int(x) for x in out]

    def all_gather_rows(self, t: Tensor, what: str = "rows") -> Tensor:
        """Concatenate every rank's rows of `t` [n_r, ...] in rank order (rows may differ per rank)."""
        if not (self.distributed and self.size > 1):
            return t
        sizes = self.all_gather_sizes(t.shape[0], what)
        m = max(sizes)
        pad = t.new_zeros((m,) + tuple(t.shape[1:]))
        pad[: t.shape[0]] = t
        out = [torch.empty_like(pad) for _ in range(self.size)]
        with self.collective(what):
            dist.all_gather(out, pad.contiguous())
        return torch.cat([o[:n] for o, n in zip(out, sizes)])

    def all_to_all_rows(self, send: Tensor, send_counts: Sequence[int], what: str = "an exchange",
                        recv_counts: Optional[Sequence[int]] = None):
        """Sparse all-to-all: rows ``send[sum(send_counts[:d]):...]`` go to rank d; returns
        (the rows received [sum(recv), ...] in source-rank order, recv_counts). The counts are
        exchanged first unless given. Counts the bytes this rank sends to other ranks."""
        send_counts = [int(c) for c in send_counts]
        if not (self.distributed and self.size > 1):
            return send, send_counts
        if recv_counts is None:
            sc = torch.tensor(send_counts, dtype=torch.int64, device=self.device)
            rc = torch.empty_like(sc)
            with self.collective(what):
                dist.all_to_all_single(rc, sc)
            recv_counts = rc.tolist()
        recv = send.new_empty((int(sum(recv_counts)),) + tuple(send.shape[1:]))
        row_bytes = send[0].numel() * send.element_size() if send.shape[0] else 0
        self.bytes_sent += row_bytes * (sum(send_counts) - send_counts[self.rank])
        with self.collective(what):
            dist.all_to_all_single(recv, send.contiguous(), list(recv_counts), send_counts)
        return recv, list(recv_counts)

    def broadcast_object(self, obj=None, src: int = 0, what: str = "a broadcast"):
        """`obj` of rank `src` on every rank (pickled; for small things and checkpoints)."""
        if not (self.distributed and self.size > 1):
            return obj
        box = [obj]
        with self.collective(what):
            dist.broadcast_object_list(box, src=src, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather_objects(self, obj, what: str = "a gather") -> Optional[list]:
        """Every rank's `obj` on rank 0 (in rank order; None on the others)."""
        if not (self.distributed and self.size > 1):
            return [obj]
        out = [None] * self.size if self.rank == 0 else None
        with self.collective(what):
            dist.gather_object(obj, out, dst=0)
        return out

    def any(self, flag: bool, what: str = "a flag") -> bool:
        """Whether `flag` is set on any rank (every rank gets the same answer)."""
        if not (self.distributed and self.size > 1):
            return bool(flag)
        return bool(self.all_reduce_(torch.tensor([float(bool(flag))], device=self.device), what) > 0)

    def barrier(self, what: str = "a barrier") -> None:
        if self.distributed and self.size > 1:
            with self.collective(what):
                dist.barrier()
