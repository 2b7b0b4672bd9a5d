"""Steepest-descent density control (SteepGS: "Steepest Descent Density Control for Compact
3D Gaussian Splatting", Wang et al., CVPR 2025).

Splitting is how optimisation escapes saddle points. Write the loss as a function of each
Gaussian's contribution sigma_i(x) = o_i G_i(x) to pixel x. Splitting Gaussian i into m
offspring at mu_i + delta_j with weights w_j (sum 1) changes the loss, to second order, by
sum_j w_j delta_j^T S_i delta_j / 2 with the *splitting matrix*

    S_i = sum_views sum_pixels  dL/dsigma_i(x)  Hess_mu sigma_i(x)          [3 x 3]

so a split lowers the loss only where S_i has a negative eigenvalue, two offspring suffice,
and the best pair sits at mu_i +- eps v_min (v_min: the eigenvector of the least eigenvalue),
each with half the weight.

How it is computed here (no extra render pass, on every backend): for a 2D Gaussian
alpha = o exp(-d^T A d / 2), d = x - mu (pixels), A the conic,

    Hess_mu alpha = alpha (A d d^T A - A),

and the renderer's own gradients hold exactly the two per-pixel sums that needs:
dL/dA = -1/2 sum g alpha d d^T and o dL/do = sum g alpha (g = dL/dalpha per pixel). So per
view S2 = A M A - (o dL/do) A with M = -2 dL/dA (conic gradient, off-diagonal counted once:
M_01 = -dL/db), and the 3D matrix is J^T S2 J with J the 2x3 Jacobian of the pixel
position with respect to the mean (the projection's own curvature is left out, as a
splitting step moves the mean by a fraction of the Gaussian's size).

Every ``refine_every`` steps in the refinement window, the per-view matrices averaged over
the views that saw each Gaussian are diagonalised. As in the authors' implementation, the
candidates are ADC's (average view-space gradient above ``grow_grad2d``: the Gaussians the
data pulls on), and of those only the ones at a saddle split: lambda_min * sigma_v^2 <
-``split_threshold`` (sigma_v^2 = v^T Sigma v: the loss change of a one-sigma move, so the
test does not depend on the scene's units). Each becomes two offspring at
mu +- ``split_distance`` sigma_v v_min, each with the opacity 1 - sqrt(1 - o) (opacity
normalisation: the pair composites to the parent's opacity, and to o/2 each for faint
Gaussians, the paper's equal weights); large ones (max scale above ``grow_scale3d`` x the
scene scale) also shrink their scales by 1.6, as 3DGS's split does. Pruning and the opacity
reset are 3DGS's (`prune_step`), plus, with ``prune_weight``, the removal of Gaussians whose
blend weight (sum over pixels of alpha T, measured by one more render in the
``weight_window`` steps before a round, from the first opacity reset on) stays below a
fraction of a pixel in every view: random initial points hidden inside objects, and faint
ones (LightGaussian's global significance). It is what makes the model compact from random
initialisation, where ADC's densification adds little and the survivors of the initial
points are most of the count.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

import torch
from torch import Tensor

from ..backends.torch_ref import quat_scale_to_covar
from .adc import accumulate_grad2d, prune_step, scaled_schedule
from .base import Strategy
from .ops import prune_by_weight, rendered_pairs, reset_opacity, split, track_blend_weights, weight_window_open

__all__ = ["SteepGSStrategy", "splitting_matrices_2d", "projection_jacobians", "unpack_symmetric"]


def splitting_matrices_2d(conics: Tensor, conic_grads: Tensor, opacities: Tensor, opacity_grads: Tensor) -> Tensor:
    """Per-view 2D splitting matrices sum_pixels dL/dalpha * Hess_{mean2d} alpha from the
    renderer's gradients (module docstring).

    conics [..., 3] (a, b, c: sigma = a dx^2/2 + b dx dy + c dy^2/2, pixels^-2); conic_grads
    [..., 3] = dL/d(a, b, c); opacities [...] (the opacity the rasterizer composited, after
    any antialiasing compensation); opacity_grads [...] = dL/d opacities. Returns [..., 2, 2]
    (loss units per pixel^2)."""
    a, b, c = conics.unbind(-1)
    A = torch.stack([torch.stack([a, b], -1), torch.stack([b, c], -1)], -2)
    ga, gb, gc = conic_grads.unbind(-1)
    M = -torch.stack([torch.stack([2 * ga, gb], -1), torch.stack([gb, 2 * gc], -1)], -2)
    w = (opacities * opacity_grads)[..., None, None]
    return A @ M @ A - w * A


def projection_jacobians(means2d: Tensor, depths: Tensor, viewmats: Tensor, Ks: Tensor) -> Tensor:
    """d(pixel position)/d(world mean) of pinhole cameras for P Gaussian-camera pairs: projected
    means [P,2] (pixels), depths [P] (camera z), each pair's viewmat [P,4,4] and K [P,3,3]
    -> [P,2,3] (pixels per world unit)."""
    fx, fy, cx, cy = Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2]
    z = depths.clamp_min(1e-12)
    zero = torch.zeros_like(z)
    Jc = torch.stack([torch.stack([fx / z, zero, -(means2d[:, 0] - cx) / z], -1),
                      torch.stack([zero, fy / z, -(means2d[:, 1] - cy) / z], -1)], -2)
    return Jc @ viewmats[:, :3, :3]


@dataclasses.dataclass
class SteepGSStrategy(Strategy):
    """SteepGS density control (module docstring): of ADC's candidates, split only those where
    the splitting matrix has a negative eigenvalue, two offspring along its eigenvector;
    3DGS's pruning and reset."""

    split_threshold: float = 0.0
    """Split where lambda_min * sigma_v^2 (the loss change per view of a one-sigma move) is below -this."""
    split_distance: float = 0.5
    """The offspring sit at +- this many standard deviations of the parent along the eigenvector."""
    grow_grad2d: float = 0.0002
    """Candidates: average 2D-mean gradient at or above this (ADC's threshold; 0: every Gaussian seen)."""
    grow_scale3d: float = 0.01
    """Offspring of Gaussians larger than this fraction of the scene scale shrink by 1.6."""
    prune_opa: float = 0.005
    """Remove Gaussians whose opacity falls below this."""
    prune_scale3d: float = 0.1
    """After the first opacity reset, remove Gaussians larger than this fraction of the scene scale."""
    refine_start_iter: int = 500
    """First step of density control."""
    refine_stop_iter: int = 15_000
    """Density control stops at this step."""
    refine_every: int = 100
    """Steps between two density-control rounds."""
    reset_every: int = 3000
    """Clamp opacities to 2 * prune_opa every this many steps (0: never)."""
    max_gaussians: int = 0
    """Split no further beyond this many Gaussians (0: no limit); the most negative splits go first."""
    prune_weight: float = 0.1
    """Also remove, at a round after the first opacity reset, the Gaussians whose blend weight (sum over pixels
    of alpha T) stayed below this many pixels in every view rendered in the --steepgs.weight-window steps
    before it (hidden or negligible ones; 0: off)."""
    weight_window: int = 20
    """Steps before a round whose views measure blend weights (one more render each; skipped while opacities
    recover from a reset)."""

    def check(self) -> None:
        """Raise ``ValueError`` for options SteepGS cannot run with."""
        if self.refine_every < 1 or self.weight_window < 0 or self.reset_every < 0 or self.prune_weight < 0 \
                or self.split_distance < 0:
            raise ValueError(f"--steepgs: refine-every must be >= 1 and weight-window, reset-every, prune-weight, "
                             f"split-distance >= 0, got {self.refine_every}, {self.weight_window}, "
                             f"{self.reset_every}, {self.prune_weight}, {self.split_distance}")

    def initialize_state(self, scene_scale: float = 1.0) -> Dict[str, Any]:
        return {"scene_scale": float(scene_scale), "grad2d": None, "count": None, "split_matrix": None,
                "max_weight": None, "weight_views": None}

    def step_pre_backward(self, params, optimizers, state, step, info) -> None:
        for key in ("means2d", "conics", "opacities"):
            if not info[key].requires_grad:
                raise ValueError(f"SteepGSStrategy: info[{key!r}] does not require grad; render with gradients "
                                 "enabled")
            info[key].retain_grad()

    def step_post_backward(self, params, optimizers, state, step, info, generator=None) -> Dict[str, int]:
        events: Dict[str, int] = {}
        if step >= self.refine_stop_iter:
            return events
        self._update_state(params, state, info)
        # after the first opacity reset, as ADC's size pruning: the initial points have settled by then
        first = self.reset_every if self.reset_every > 0 else self.refine_start_iter
        after_reset = step - self.weight_window >= first
        weigh = self.prune_weight > 0 and after_reset and weight_window_open(step, self.refine_every, self.reset_every,
                                                                             self.weight_window)
        if weigh:
            track_blend_weights(params, state, info)
        if step > self.refine_start_iter and step % self.refine_every == 0:
            events.update(self._split(params, optimizers, state))
            if weigh:
                events.update(prune_by_weight(params, optimizers, state, self.prune_weight))
            events.update(prune_step(params, optimizers, state, step, self.prune_opa, self.prune_scale3d,
                                     self.reset_every))
            for k in ("grad2d", "count", "split_matrix"):
                state[k].zero_()
        if self.reset_every > 0 and step % self.reset_every == 0 and step > 0:
            reset_opacity(params, optimizers, state, 2.0 * self.prune_opa)
            events["reset"] = 1
        return events

    @torch.no_grad()
    def _update_state(self, params, state, info) -> None:
        accumulate_grad2d(params, state, info)
        gc, go = info["conics"].grad, info["opacities"].grad
        if gc is None or go is None:
            raise ValueError("SteepGSStrategy: no gradient on info['conics'] / info['opacities']")
        n = params["means"].shape[0]
        if state["split_matrix"] is None or state["split_matrix"].shape[0] != n:
            state["split_matrix"] = torch.zeros(n, 6, device=params["means"].device)
        cam, rid, gid = rendered_pairs(info)
        if cam.numel() == 0:
            return
        C = info["radii"].shape[0]
        S2 = splitting_matrices_2d(info["conics"].detach()[cam, rid], gc[cam, rid],
                                   info["opacities"].detach()[cam, rid], go[cam, rid]) * C  # undo the batch mean
        J = projection_jacobians(info["means2d"].detach()[cam, rid], info["depths"].detach()[cam, rid],
                                 info["viewmats"][cam], info["Ks"][cam])
        S3 = J.transpose(-1, -2) @ S2 @ J  # [P,3,3]
        packed = torch.stack([S3[:, 0, 0], S3[:, 1, 1], S3[:, 2, 2], S3[:, 0, 1], S3[:, 0, 2], S3[:, 1, 2]], -1)
        state["split_matrix"].index_add_(0, gid, packed.float())

    @torch.no_grad()
    def _split(self, params, optimizers, state) -> Dict[str, int]:
        rows, v, sigma_v = self.split_candidates(params, state)
        if self.max_gaussians > 0:
            room = max(self.max_gaussians - params["means"].shape[0], 0)
            rows, v, sigma_v = rows[:room], v[:room], sigma_v[:room]
        if rows.numel() == 0:
            return {"split": 0}
        order = torch.argsort(rows)  # split() takes the masked rows in index order
        rows, v, sigma_v = rows[order], v[order], sigma_v[order]
        large = torch.exp(params["scales"].data[rows]).max(-1).values > self.grow_scale3d * state["scene_scale"]
        N = params["means"].shape[0]
        n_large = int(large.sum())
        for group, factor in ((large, 1.6), (~large, 1.0)):
            if not bool(group.any()):
                continue
            mask = torch.zeros(params["means"].shape[0], dtype=torch.bool, device=rows.device)
            mask[rows[group]] = True
            step = (self.split_distance * sigma_v[group])[:, None] * v[group]
            split(params, optimizers, state, mask, offsets=torch.stack([step, -step]), scale_factor=factor,
                  revised_opacity=True)
            if factor != 1.0:  # the rows after the first split: survivors keep their order, children go last
                keep = torch.ones(N, dtype=torch.bool, device=rows.device)
                keep[rows[group]] = False
                new_index = torch.cumsum(keep.long(), 0) - 1
                rows = torch.where(group, rows, new_index[rows])
        return {"split": int(rows.numel()), "split_large": n_large}

    @torch.no_grad()
    def split_candidates(self, params, state):
        """The Gaussians to split now, most negative score first: (rows [K], unit eigenvectors
        [K,3] of the least eigenvalue, the parent's standard deviation along them [K])."""
        S = state.get("split_matrix")
        empty = params["means"].new_zeros(0, dtype=torch.long)
        if S is None:
            return empty, params["means"].new_zeros(0, 3), params["means"].new_zeros(0)
        count = state["count"].clamp_min(1)
        high = (state["grad2d"] / count >= self.grow_grad2d) & (state["count"] > 0)
        rows = high.nonzero().squeeze(1)
        M = unpack_symmetric(S[rows] / count[rows, None])
        evals, evecs = torch.linalg.eigh(M)
        lam, v = evals[:, 0], evecs[:, :, 0]
        cov = quat_scale_to_covar(params["quats"].detach()[rows], torch.exp(params["scales"].detach()[rows]))
        var_v = torch.einsum("ni,nij,nj->n", v, cov, v).clamp_min(0)
        score = lam * var_v
        keep = score < -self.split_threshold
        rows, v, var_v, score = rows[keep], v[keep], var_v[keep], score[keep]
        order = torch.argsort(score)
        return rows[order], v[order], var_v[order].sqrt()

    def scaled(self, factor: float, batch: int = 1) -> "SteepGSStrategy":
        """The schedule for a run `factor` times as long as 30k steps, as ADC scales its own."""
        return scaled_schedule(self, factor, batch)


def unpack_symmetric(packed: Tensor) -> Tensor:
    """[..., 6] (xx, yy, zz, xy, xz, yz) -> symmetric [..., 3, 3]."""
    xx, yy, zz, xy, xz, yz = packed.unbind(-1)
    return torch.stack([torch.stack([xx, xy, xz], -1), torch.stack([xy, yy, yz], -1),
                        torch.stack([xz, yz, zz], -1)], -2)
