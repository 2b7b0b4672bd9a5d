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
the views that saw each Gaussian are diagonalised; a Gaussian splits where
lambda_min * sigma_v^2 < -``split_threshold`` (sigma_v^2 = v^T Sigma v: the loss change of a
one-sigma move, so the test does not depend on the scene's units). Its two offspring sit at
mu +- ``split_distance`` sigma_v v_min with the parent's shape and each the opacity
1 - sqrt(1 - o) (opacity normalisation: the pair composites to the parent's opacity, and
to o/2 each for faint Gaussians, the paper's equal weights). Nothing is cloned; pruning and
the opacity reset are 3DGS's (`prune_step`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..backends.torch_ref import quat_scale_to_covar
from .adc import prune_step
from .base import Strategy
from .ops import reset_opacity, split

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
    """SteepGS density control (module docstring): split only where the splitting matrix has a
    negative eigenvalue, two offspring along its eigenvector; 3DGS's pruning and reset."""

    split_threshold: float = 2e-7
    """Split where lambda_min * sigma_v^2 (the loss change per view of a one-sigma move) is below -this."""
    split_distance: float = 0.5
    """The offspring sit at +- this many standard deviations of the parent along the eigenvector."""
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

    def initialize_state(self, scene_scale: float = 1.0) -> Dict[str, Any]:
        return {"scene_scale": float(scene_scale), "split_matrix": None, "count": None}

    def step_pre_backward(self, params, optimizers, state, step, info) -> None:
        for key in ("conics", "opacities"):
            if not info[key].requires_grad:
                raise ValueError(f"SteepGSStrategy: info[{key!r}] does not require grad; render with gradients "
                                 "enabled")
            info[key].retain_grad()

    def step_post_backward(self, params, optimizers, state, step, info, generator=None) -> Dict[str, int]:
        events: Dict[str, int] = {}
        if step >= self.refine_stop_iter:
            return events
        self._update_state(params, state, info)
        if step > self.refine_start_iter and step % self.refine_every == 0:
            events.update(self._split(params, optimizers, state))
            events.update(prune_step(params, optimizers, state, step, self.prune_opa, self.prune_scale3d,
                                     self.reset_every))
            state["split_matrix"].zero_()
            state["count"].zero_()
        if self.reset_every > 0 and step % self.reset_every == 0 and step > 0:
            reset_opacity(params, optimizers, state, 2.0 * self.prune_opa)
            events["reset"] = 1
        return events

    @torch.no_grad()
    def _update_state(self, params, state, info) -> None:
        gc, go = info["conics"].grad, info["opacities"].grad
        if gc is None or go is None:
            raise ValueError("SteepGSStrategy: no gradient on info['conics'] / info['opacities']")
        n = params["means"].shape[0]
        if state["split_matrix"] is None or state["split_matrix"].shape[0] != n:
            dev = params["means"].device
            state["split_matrix"] = torch.zeros(n, 6, device=dev)
            state["count"] = torch.zeros(n, device=dev)
        sel = (info["radii"] > 0).all(-1)  # [C, M]
        cam, rid = sel.nonzero(as_tuple=True)
        if cam.numel() == 0:
            return
        C = info["radii"].shape[0]
        S2 = splitting_matrices_2d(info["conics"].detach()[cam, rid], gc[cam, rid],
                                   info["opacities"].detach()[cam, rid], go[cam, rid]) * C  # undo the batch mean
        J = projection_jacobians(info["means2d"].detach()[cam, rid], info["depths"].detach()[cam, rid],
                                 info["viewmats"][cam], info["Ks"][cam])
        S3 = J.transpose(-1, -2) @ S2 @ J  # [P,3,3]
        packed = torch.stack([S3[:, 0, 0], S3[:, 1, 1], S3[:, 2, 2], S3[:, 0, 1], S3[:, 0, 2], S3[:, 1, 2]], -1)
        ids = info.get("param_ids")
        gid = rid if ids is None else ids[rid]
        state["split_matrix"].index_add_(0, gid, packed.float())
        state["count"].index_add_(0, gid, torch.ones_like(gid, dtype=torch.float32))

    @torch.no_grad()
    def _split(self, params, optimizers, state) -> Dict[str, int]:
        cand, v, sigma_v = self.split_candidates(params, state)
        if self.max_gaussians > 0:
            room = max(self.max_gaussians - params["means"].shape[0], 0)
            cand, v, sigma_v = cand[:room], v[:room], sigma_v[:room]
        if cand.numel() == 0:
            return {"split": 0}
        mask = torch.zeros(params["means"].shape[0], dtype=torch.bool, device=cand.device)
        mask[cand] = True
        order = torch.argsort(cand)  # split() takes the masked rows in index order
        step = (self.split_distance * sigma_v[order])[:, None] * v[order]
        split(params, optimizers, state, mask, offsets=torch.stack([step, -step]), scale_factor=1.0,
              revised_opacity=True)
        return {"split": int(cand.numel())}

    @torch.no_grad()
    def split_candidates(self, params, state):
        """The Gaussians to split now, most negative score first: (rows [K], unit eigenvectors
        [K,3] of the least eigenvalue, the parent's standard deviation along them [K])."""
        S = state["split_matrix"]
        if S is None:
            empty = params["means"].new_zeros(0, dtype=torch.long)
            return empty, params["means"].new_zeros(0, 3), params["means"].new_zeros(0)
        mean = S / state["count"].clamp_min(1)[:, None]
        M = unpack_symmetric(mean)
        evals, evecs = torch.linalg.eigh(M)
        lam, v = evals[:, 0], evecs[:, :, 0]
        cov = quat_scale_to_covar(params["quats"].detach(), torch.exp(params["scales"].detach()))
        var_v = torch.einsum("ni,nij,nj->n", v, cov, v).clamp_min(0)
        score = lam * var_v
        rows = ((score < -self.split_threshold) & (state["count"] > 0)).nonzero().squeeze(1)
        rows = rows[torch.argsort(score[rows])]
        return rows, v[rows], var_v[rows].sqrt()

    def scaled(self, factor: float) -> "SteepGSStrategy":
        """The schedule for a run `factor` times as long as 30k steps, as ADC scales its own."""
        return dataclasses.replace(
            self, refine_start_iter=int(self.refine_start_iter * factor),
            refine_stop_iter=int(self.refine_stop_iter * factor),
            refine_every=max(min(self.refine_every, 100), int(self.refine_every * factor)),
            reset_every=int(self.reset_every * factor))


def unpack_symmetric(packed: Tensor) -> Tensor:
    """[..., 6] (xx, yy, zz, xy, xz, yz) -> symmetric [..., 3, 3]."""
    xx, yy, zz, xy, xz, yz = packed.unbind(-1)
    return torch.stack([torch.stack([xx, xy, xz], -1), torch.stack([xy, yy, yz], -1),
                        torch.stack([xz, yz, zz], -1)], -2)
