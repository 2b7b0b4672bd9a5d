"""Levenberg-Marquardt after an Adam warm-up (3DGS-LM: "Faster Gaussian-Splatting Optimization
with Levenberg-Marquardt", Hoellein et al. 2024).

The loss of an LM step is a sum of squares, 1/2 |r|^2 with r = render - image over every value
of the training views' images (pixels outside a view's mask left out): the squared error,
so PSNR is what it raises.
Each LM step solves the damped normal equations

    (J^T J + lambda diag(J^T J)) delta = -J^T r

by preconditioned conjugate gradients (`pcg`, Jacobi preconditioner), never forming J:

* J v (Jacobian-vector product) runs forward mode through the renderer: the per-Gaussian
  stage (activation, projection, spherical harmonics; O(N)) in torch's forward-mode AD over
  the reference projection, the per-pixel stage in the native kernels
  (``rasterize_to_pixels_jvp``: splat_math.h's ``gaussian_alpha_jvp`` and
  ``composite_jvp_pair``, compiled into the CPU backend and the CUDA one);
* J^T w is the renderer's backward (the same native kernels as training's), over a graph
  kept for the whole solve;
* diag(J^T J) is estimated by Hutchinson's method, E[(J^T z)^2] over ``probes`` Rademacher
  vectors z (3DGS-LM computes it exactly in a kernel of its own; the estimate costs one
  backward per probe and serves both as the preconditioner and as the damping's scale).

As in the paper, the training views are split into image subsets (``subset_size`` views
each); each subset's system is solved on its own and the updates are combined in a
weighted mean, each parameter weighted by its diag(J_k^T J_k) (how strongly subset k
constrains it). The step is accepted when the loss over the subsets' images falls
(lambda /= ``damping_down``); otherwise it is halved up to ``max_backtracks`` times and,
failing that, rejected (lambda *= ``damping_up``).

The trainer's schedule: steps before ``iterations - lm_steps`` are Adam's (with the run's
``--adam.*``; density control runs there, as in the paper's warm start); the last
``lm_steps`` are LM steps, without density control.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .adam import AdamConfig, AdamOptimizer
from .base import Optimizer

__all__ = ["LMConfig", "LMOptimizer", "pcg"]


# ----------------------------------------------------------------------------- PCG


def pcg(apply_A: Callable[[Tensor], Tensor], b: Tensor, inv_diag: Optional[Tensor] = None, iterations: int = 8,
        tol: float = 1e-6) -> Tuple[Tensor, int]:
    """Preconditioned conjugate gradients for A x = b, A symmetric positive definite, from x = 0.

    `apply_A` maps a vector like `b` to A times it; `inv_diag` (like `b`) is the Jacobi
    preconditioner M^-1 = diag(A)^-1 (None: none). Stops after `iterations` or when
    |r| <= tol |b|. Returns (x, iterations done)."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = r * inv_diag if inv_diag is not None else r.clone()
    p = z.clone()
    rz = torch.dot(r, z)
    b_norm = float(b.norm())
    if b_norm == 0:
        return x, 0
    for k in range(iterations):
        Ap = apply_A(p)
        pAp = torch.dot(p, Ap)
        if not float(pAp) > 0:  # not positive definite along p (or NaN): stop with what we have
            return x, k
        alpha = rz / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        if float(r.norm()) <= tol * b_norm:
            return x, k + 1
        z = r * inv_diag if inv_diag is not None else r
        rz_new = torch.dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, iterations


# ----------------------------------------------------------------------------- the optimizer


@dataclasses.dataclass
class LMConfig:
    """Options of Levenberg-Marquardt (`--lm.*`)."""

    lm_steps: int = 8
    """The last this many of --iterations are LM steps; the ones before are Adam's (the warm start)."""
    pcg_iterations: int = 8
    """Conjugate-gradient iterations per solve."""
    subset_size: int = 8
    """Training views per image subset (one normal-equation solve each; their updates are averaged)."""
    max_subsets: int = 0
    """At most this many subsets per LM step, drawn afresh each step (0: all the training views)."""
    damping: float = 1e-2
    """Initial lambda (times diag(J^T J))."""
    damping_up: float = 4.0
    """lambda is multiplied by this after a rejected step."""
    damping_down: float = 2.0
    """lambda is divided by this after an accepted step."""
    min_damping: float = 1e-6
    """lambda stays above this."""
    probes: int = 4
    """Rademacher probes of the Hutchinson estimate of diag(J^T J)."""
    max_backtracks: int = 2
    """Halvings of a step that raised the loss before it is rejected (0: none)."""
    diag_floor: float = 1e-2
    """diag(J^T J) is raised to at least this times its mean over each parameter (a parameter that
    barely touches a pixel would otherwise take a huge Gauss-Newton step)."""

    def check(self) -> None:
        """Raise ``ValueError`` for options LM cannot run with."""
        bad = []
        if self.lm_steps < 0:
            bad.append(f"lm-steps must be >= 0, got {self.lm_steps}")
        for name in ("pcg_iterations", "subset_size", "probes"):
            if getattr(self, name) < 1:
                bad.append(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_subsets < 0:
            bad.append(f"max-subsets must be >= 0, got {self.max_subsets}")
        if self.max_backtracks < 0:
            bad.append(f"max-backtracks must be >= 0, got {self.max_backtracks}")
        if not self.damping > 0 or not self.min_damping > 0:
            bad.append(f"damping and min-damping must be > 0, got {self.damping}, {self.min_damping}")
        if not self.damping_up > 1 or not self.damping_down >= 1:
            bad.append(f"damping-up must be > 1 and damping-down >= 1, got {self.damping_up}, {self.damping_down}")
        if self.diag_floor < 0:
            bad.append(f"diag-floor must be >= 0, got {self.diag_floor}")
        if bad:
            raise ValueError("--lm: " + "; ".join(bad))


class LMOptimizer(Optimizer):
    """Adam for the warm start, then Levenberg-Marquardt steps (module docstring). Works on the
    static model (its renderer is the one the Jacobian products differentiate); the
    optimizers dict is Adam's, so density control and checkpoints see the usual state."""

    name = "lm"
    Config = LMConfig

    def __init__(self, params: Mapping[str, torch.nn.Parameter], learning_rates: Mapping[str, float],
                 config: LMConfig = LMConfig()):
        self.config = config
        self.adam = AdamOptimizer(params, learning_rates, AdamConfig())  # --adam.* arrive in attach
        self.optimizers = self.adam.optimizers
        self.params = params
        self.damping = float(config.damping)
        self.trainer = None
        self.step_count = 0
        self.log: List[dict] = []

    def attach(self, trainer) -> None:
        if not trainer.model.has_jacobian:
            raise ValueError(f"--optimizer lm: Levenberg-Marquardt needs the renderer's Jacobian products, which "
                             f"--model {trainer.model.name} does not provide (--model static does)")
        self.config.check()
        self.trainer = trainer
        adam = getattr(trainer.cfg, "adam", None)  # the warm-up is the run's Adam: --adam.* apply
        if adam is not None:
            self.adam.config = adam
            for opt in self.adam.optimizers.values():
                for group in opt.param_groups:
                    group["eps"], group["betas"] = adam.eps, tuple(adam.betas)
        self.adam.attach(trainer)
        self.params = trainer.model.params

    def set_learning_rates(self, learning_rates: Mapping[str, float]) -> None:
        self.adam.set_learning_rates(learning_rates)

    def set_visible(self, rows) -> None:
        self.adam.set_visible(rows)

    def state_dict(self) -> Dict[str, Any]:
        return {"adam": self.adam.state_dict(), "damping": self.damping, "step_count": self.step_count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "adam" not in state:  # a checkpoint of a plain Adam run
            self.adam.load_state_dict(state)
            return
        self.adam.load_state_dict(state["adam"])
        self.damping = float(state["damping"])
        self.step_count = int(state["step_count"])

    def is_lm_step(self, step: int) -> bool:
        return self.trainer is not None and step >= self.trainer.iterations - self.config.lm_steps

    def density_control(self, step: int) -> bool:
        """No density control on LM steps: the strategy would act on gradients taken before the LM
        update moved the parameters (and MCMC's noise would undo it)."""
        return not self.is_lm_step(step)

    def step(self, forward: Callable[[], Tuple[Tensor, Any]]) -> Tuple[Tensor, Any]:
        tr = self.trainer
        step = tr.current_step if tr is not None else 0
        if not self.is_lm_step(step):
            self.step_count += 1
            return self.adam.step(forward)
        # the step's own view: what the loop reports and hands to the density strategy
        loss, extra = forward()
        loss.backward()
        for p in self.params.values():
            p.grad = None
        self.lm_step(step)
        self.step_count += 1
        return loss.detach(), extra

    # ------------------------------------------------------------------ one LM step
    def _subsets(self, step: int) -> List[List[int]]:
        tr = self.trainer
        n = len(tr.train_views)
        g = torch.Generator().manual_seed(tr.cfg.seed * 92821 + step)
        order = torch.randperm(n, generator=g).tolist()
        k = self.config.subset_size
        subsets = [order[i:i + k] for i in range(0, n, k)]
        if self.config.max_subsets > 0:
            subsets = subsets[:self.config.max_subsets]
        # one render call per group: the trainer's grouping (one image size per call)
        return [group for ids in subsets for group in tr.view_groups(ids)]

    def _batch(self, ids):
        cams, gt, masks = self.trainer.train_views.batch(ids)
        weight = None
        if any(m is not None for m in masks):
            weight = torch.stack([torch.ones_like(gt[k, ..., :1]) if m is None else m.to(gt.dtype)
                                  for k, m in enumerate(masks)])
        return cams, gt, weight

    def _render(self, cams, step: int):
        tr = self.trainer
        backgrounds = tr.background[None].expand(len(cams), -1)
        return tr.model.render(cams, tr.settings, step=step, backgrounds=backgrounds).colors

    @torch.no_grad()
    def _sse(self, subsets_data, step: int) -> float:
        total = 0.0
        for cams, gt, weight in subsets_data:
            r = self._render(cams, step) - gt
            if weight is not None:
                r = r * weight
            total += float((r.double() ** 2).sum())
        return total

    def lm_step(self, step: int) -> dict:
        tr = self.trainer
        c = self.config
        names = list(self.params.keys())
        params = [self.params[k] for k in names]
        subsets = [self._batch(ids) for ids in self._subsets(step)]
        n_values = sum(gt.numel() for _, gt, _ in subsets)
        gen = torch.Generator().manual_seed(tr.cfg.seed * 6151 + step)
        deltas, weights = [], []
        for cams, gt, weight in subsets:
            with torch.enable_grad():
                imgs = self._render(cams, step)
                r = (imgs - gt).detach()  # the residuals (masked pixels: J and r are both zero there)

                def jt(w):  # J^T w, w like the images
                    if weight is not None:
                        w = w * weight
                    gs = torch.autograd.grad(imgs, params, w, retain_graph=True, allow_unused=True)
                    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                      for p, g in zip(params, gs)])

                b = -jt(r)
                diag = torch.zeros_like(b)
                for _ in range(c.probes):
                    z = (torch.randint(0, 2, imgs.shape, generator=gen).to(imgs) * 2 - 1)
                    diag += jt(z) ** 2
                diag = _floor_per_parameter(diag / c.probes, params, c.diag_floor)
                lam = self.damping
                jac = tr.model.jacobian(cams, tr.settings, step=step,
                                        backgrounds=tr.background[None].expand(len(cams), -1))

                def apply_A(v):
                    tangents = {k: t.reshape(p.shape) for k, p, t in zip(names, params, _split(v, params))}
                    return jt(jac.jvp(tangents)) + lam * diag * v

                delta, _ = pcg(apply_A, b, 1.0 / ((1.0 + lam) * diag), c.pcg_iterations)
            deltas.append(delta)
            weights.append(diag)
        wsum = torch.stack(weights).sum(0).clamp_min(1e-30)
        delta = sum(w * d for w, d in zip(weights, deltas)) / wsum

        before = self._sse(subsets, step)
        start = [p.detach().clone() for p in params]
        steps = _split(delta, params)
        accepted, factor, after = False, 1.0, before
        for _ in range(c.max_backtracks + 1):
            trial = [p0 + factor * d.reshape(p0.shape) for p0, d in zip(start, steps)]
            if all(bool(torch.isfinite(t).all()) for t in trial):
                with torch.no_grad():
                    for p, t in zip(params, trial):
                        p.copy_(t)
                after = self._sse(subsets, step)
                if after < before:
                    accepted = True
                    break
            factor *= 0.5
        if accepted:
            self.damping = max(self.damping / c.damping_down, c.min_damping)
        else:
            with torch.no_grad():
                for p, p0 in zip(params, start):
                    p.copy_(p0)
            self.damping *= c.damping_up
        entry = {"step": step, "accepted": accepted, "factor": factor, "mse_before": before / n_values,
                 "mse_after": (after if accepted else before) / n_values, "damping": self.damping}
        self.log.append(entry)
        return entry


def _floor_per_parameter(diag: Tensor, params: Sequence[Tensor], floor: float) -> Tensor:
    """`diag` with each parameter's entries raised to `floor` times their mean (and above 0)."""
    parts = []
    for d in _split(diag, params):
        m = float(d.mean()) if d.numel() else 0.0
        parts.append(d.clamp_min(max(floor * m, 1e-30)))
    return torch.cat(parts)


def _split(v: Tensor, params: Sequence[Tensor]) -> List[Tensor]:
    out, i = [], 0
    for p in params:
        n = p.numel()
        out.append(v[i:i + n])
        i += n
    return out
