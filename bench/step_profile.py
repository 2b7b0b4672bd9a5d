"""Where a training step's time goes: wall time per stage, measured by wrapping the
trainer's pieces from outside (so the same code profiles any version of the trainer).

Stages (seconds per step, summed over the steps profiled):
    data            the step's views and images (Views.batch)
    render          the forward render (Model.render: projection, SH, tiles, compositing)
    loss            the photometric loss forward (L1 + D-SSIM)
    loss_backward   the backward from the loss to the rendered images
    render_backward the rest of the backward (compositing, SH, projection, to the parameters)
    optimizer       the parameter update (Adam)
    density         density control (the strategy's step after the backward)
    other           the rest of the step (regularisers, metrics, Python)

    from bench.step_profile import StepProfiler
    with StepProfiler(trainer) as prof:
        for s in range(a, b):
            trainer.train_step(s)
    prof.per_step()   # {stage: seconds per step}
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch

STAGES = ("data", "render", "loss", "loss_backward", "render_backward", "optimizer", "density", "other")


class StepProfiler:
    """Context manager that times the stages of `trainer.train_step` (a plain, one-process
    trainer) until it exits; ``per_step()`` gives the mean seconds per step of each stage."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.totals = defaultdict(float)
        self.steps = 0
        self._undo = []
        self._hooked_at = None

    # -- wrapping helpers
    def _wrap_attr(self, obj, name, stage, on_result=None):
        orig = getattr(obj, name)

        def wrapped(*a, **k):
            t0 = time.perf_counter()
            r = orig(*a, **k)
            self.totals[stage] += time.perf_counter() - t0
            if on_result is not None:
                on_result(r)
            return r

        had = name in vars(obj)
        setattr(obj, name, wrapped)
        self._undo.append(lambda: setattr(obj, name, orig) if had else delattr(obj, name))

    def __enter__(self):
        import splat.train.loop as loop

        t = self.trainer

        def hook_colors(out):  # the loss backward ends when the images' gradient is formed
            colors = getattr(out, "colors", None)
            if isinstance(colors, torch.Tensor) and colors.requires_grad:
                def mark(g):
                    if self._hooked_at is None:
                        self._hooked_at = time.perf_counter()
                    return g
                colors.register_hook(mark)

        self._wrap_attr(t.train_views, "batch", "data")
        self._wrap_attr(t.model, "render", "render", hook_colors)
        self._wrap_attr(loop, "photometric_loss", "loss")
        self._wrap_attr(t.optimizer, "update", "optimizer")
        self._wrap_attr(t.strategy, "step_post_backward", "density")
        orig_backward = torch.Tensor.backward

        def backward(tensor, *a, **k):
            self._hooked_at = None
            t0 = time.perf_counter()
            r = orig_backward(tensor, *a, **k)
            t1 = time.perf_counter()
            split = self._hooked_at if self._hooked_at is not None else t0
            self.totals["loss_backward"] += split - t0
            self.totals["render_backward"] += t1 - split
            return r

        torch.Tensor.backward = backward
        self._undo.append(lambda: setattr(torch.Tensor, "backward", orig_backward))
        orig_step = t.train_step

        def train_step(step):
            t0 = time.perf_counter()
            r = orig_step(step)
            self.totals["step"] += time.perf_counter() - t0
            self.steps += 1
            return r

        t.train_step = train_step
        self._undo.append(lambda: delattr(t, "train_step"))
        return self

    def __exit__(self, *exc):
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def per_step(self) -> dict:
        """Mean seconds per step of each stage, plus "step" (the whole step)."""
        n = max(self.steps, 1)
        out = {s: self.totals.get(s, 0.0) / n for s in STAGES if s != "other"}
        out["other"] = max(0.0, self.totals.get("step", 0.0) / n - sum(out.values()))
        out["step"] = self.totals.get("step", 0.0) / n
        return out


def format_breakdown(rows: dict) -> str:
    """A table of per-step stage times in ms, one column per labelled breakdown {label: per_step()}."""
    labels = list(rows)
    head = f"{'stage':<16}" + "".join(f"{lab:>16}" for lab in labels)
    lines = [head]
    for s in STAGES + ("step",):
        lines.append(f"{s:<16}" + "".join(f"{rows[lab].get(s, 0.0) * 1e3:>13.1f} ms" for lab in labels))
    return "\n".join(lines)
