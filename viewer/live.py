"""The link between a running training and its viewer.

The trainer calls `step_done` after every step and `wait_if_paused` when the
viewer asked for a pause; everything else happens in the viewer's threads. The
contract that keeps training fast:

* `step_done` records four numbers and returns. Only when the viewer has asked
  for a fresh model (at most once per refresh interval, and only while someone
  is watching) does it copy the parameters: one `detach().clone()` per tensor,
  about a millisecond for 50k Gaussians. It never renders and never waits for
  a render.
* The viewer renders from that copy in its own thread, so a slow render delays
  the picture, never the step.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Optional

import torch

__all__ = ["TrainingLink"]


class TrainingLink:
    def __init__(self, iterations: int = 0, start_step: int = 0):
        self.iterations = int(iterations)
        self.step = int(start_step)
        self.loss: Optional[float] = None
        self.psnr: Optional[float] = None
        self.num_gaussians = 0
        self.finished = False
        self.history_steps: List[int] = []
        self.history_loss: List[float] = []
        self.history_psnr: List[float] = []
        self.on_snapshot: Optional[Callable[[Dict[str, torch.Tensor]], None]] = None
        self.on_status: Optional[Callable[[], None]] = None
        self._want = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self.snapshot_seconds: List[float] = []  # time the training thread spent copying (for the benchmark)
        self.t_started = time.perf_counter()
        self.steps_per_second = 0.0
        self._rate_t, self._rate_step = time.perf_counter(), self.step

    # ------------------------------------------------------------------ trainer side
    def step_done(self, step: int, loss: float, psnr: float, num_gaussians: int, params) -> None:
        self.step, self.loss, self.psnr, self.num_gaussians = step, float(loss), float(psnr), int(num_gaussians)
        self.history_steps.append(step)
        self.history_loss.append(self.loss)
        self.history_psnr.append(self.psnr)
        now = time.perf_counter()
        if now - self._rate_t >= 1.0:
            self.steps_per_second = (step - self._rate_step) / (now - self._rate_t)
            self._rate_t, self._rate_step = now, step
        if self._want.is_set():
            self._deliver(params)

    def wait_if_paused(self, params, should_stop: Callable[[], bool] = lambda: False) -> float:
        """Block while paused (still serving the viewer's snapshot requests) and `should_stop()`
        is false; returns the seconds paused."""
        if self._resume.is_set():
            return 0.0
        t0 = time.perf_counter()
        self._rate_t, self._rate_step = t0, self.step
        if self.on_status:
            self.on_status()
        while not self._resume.wait(0.05) and not should_stop():
            if self._want.is_set():
                self._deliver(params)
        now = time.perf_counter()
        self._rate_t, self._rate_step = now, self.step
        return now - t0

    def finish(self, params) -> None:
        self.finished = True
        self._resume.set()
        self._deliver(params)

    def _deliver(self, params) -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            snap = {k: v.detach().clone() for k, v in dict(params).items()}
        self._want.clear()
        self.snapshot_seconds.append(time.perf_counter() - t0)
        if self.on_snapshot is not None:
            self.on_snapshot(snap)

    # ------------------------------------------------------------------ viewer side
    def request_snapshot(self) -> None:
        self._want.set()

    @property
    def snapshot_pending(self) -> bool:
        return self._want.is_set()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def set_paused(self, paused: bool) -> None:
        if paused and not self.finished:
            self._resume.clear()
        else:
            self._resume.set()
