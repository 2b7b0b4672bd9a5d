"""4D Gaussian splatting (``--model 4dgs``): anisotropic XYZT Gaussians sliced in time.

After Duan et al. 2024, "4D Gaussian Splatting: Towards Efficient Novel View
Synthesis for Dynamic Scenes" (summary in the project's papers notes). Each Gaussian
is a 4D Gaussian over (x, y, z, t) with mean (mu_x, mu_t) and covariance

    Sigma = (R4 S)(R4 S)^T,   S = diag(s_x, s_y, s_z, s_t),

R4 a rotation of 4D space. Duan et al. write R4 as a 4D rotor; a rotor of Cl(4)
is the same thing as a pair of unit quaternions (l, r) acting as v -> l v r on
quaternions v = t + x i + y j + z k (Spin(4) = SU(2) x SU(2)), which is how it is
stored here (``quats`` = l, ``quats_r`` = r, any norm; l = r = identity is no
rotation, and r = conj(l) is the ordinary 3D rotation of ``quats`` that leaves
time alone). At time t a Gaussian is sliced: with Sigma = [[U, V], [V^T, W]]
(U 3x3 spatial, V 3x1, W the temporal variance),

    mean(t)      = mu_x + V / W (t - mu_t)          (a constant velocity V / W)
    cov(t)       = U - V V^T / W                     (the Schur complement)
    opacity(t)   = sigmoid(o) exp(-(t - mu_t)^2 / (2 W))   (the marginal in time)

so that opacity(t) N(x; mean(t), cov(t)) is the 4D Gaussian evaluated at (x, t).
cov(t) is computed as G G^T with G = M_x - (M_x b) b^T / |b|^2 (M = R4 S, M_x its
spatial rows, b its time row): positive semi-definite by construction, no
cancellation. The slice is a general covariance, rendered through `rasterize`'s
``covars``. Colour is view-dependent SH of degree 0..3 (raised during training as
for static models).

Regularisers (Duan et al.): an entropy loss on the opacities, mean(-o log o), that
pushes them towards 0 or 1 (so density control prunes the transparent ones), and
the 4D consistency loss: the velocity V / W of each Gaussian against the mean
velocity of its K nearest neighbours in (x, y, z, t) (neighbours recomputed every
``knn_every`` steps), so that nearby Gaussians move together.

Parameters (per Gaussian unless said): means [N,3], times [N,1], scales [N,3]
(log), scales_t [N,1] (log), quats [N,4], quats_r [N,4], opacities [N] (logit),
sh0 [N,1,3], shN [N,K-1,3]; time_range [2] shared; nodes [N] with the temporal
hierarchy (`splat.models.dynamic`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras
from ..render import Gaussians
from .base import RenderOutput
from .dynamic import (DynamicModel, DynamicOptions, check_dynamic_options, dataset_time_range, init_times,
                      learning_rate_decay, resolve, temporal_marginal, time_params, with_nodes)
from .static import init_splats, num_sh_bases

__all__ = ["FourDGSConfig", "FourDGSModel", "quat_left", "quat_right", "rotation_4d", "slice_4d",
           "covariance_4d", "covariance_to_quat_scale"]

PER_GAUSSIAN = ("means", "times", "scales", "scales_t", "quats", "quats_r", "opacities", "sh0", "shN")


def _unit(q: Tensor) -> Tensor:
    return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def quat_left(q: Tensor) -> Tensor:
    """[...,4] (w,x,y,z) -> [...,4,4]: the matrix of v -> q v on quaternions (w,x,y,z)."""
    a, b, c, d = q.unbind(-1)
    return torch.stack([a, -b, -c, -d, b, a, -d, c, c, d, a, -b, d, -c, b, a], -1).reshape(q.shape[:-1] + (4, 4))


def quat_right(q: Tensor) -> Tensor:
    """[...,4] (w,x,y,z) -> [...,4,4]: the matrix of v -> v q on quaternions (w,x,y,z)."""
    a, b, c, d = q.unbind(-1)
    return torch.stack([a, -b, -c, -d, b, a, d, -c, c, -d, a, b, d, c, -b, a], -1).reshape(q.shape[:-1] + (4, 4))


_TXYZ_TO_XYZT = [1, 2, 3, 0]


def rotation_4d(quats_l: Tensor, quats_r: Tensor) -> Tensor:
    """The 4D rotation v -> l v r of two quaternions [N,4] (normalised here) as [N,4,4]
    matrices in (x, y, z, t) coordinates (the quaternion's real part is t)."""
    R = quat_left(_unit(quats_l)) @ quat_right(_unit(quats_r))  # in (t, x, y, z)
    idx = torch.tensor(_TXYZ_TO_XYZT, device=R.device)
    return R.index_select(-2, idx).index_select(-1, idx)


def covariance_4d(quats_l: Tensor, quats_r: Tensor, scales: Tensor, scales_t: Tensor) -> Tensor:
    """The 4D covariance [N,4,4] (x,y,z,t order) of linear `scales` [N,3] and `scales_t` [N] or [N,1]."""
    M = rotation_4d(quats_l, quats_r) * torch.cat([scales, scales_t.reshape(-1, 1)], -1)[:, None, :]
    return M @ M.transpose(-1, -2)


def slice_4d(means: Tensor, times: Tensor, quats_l: Tensor, quats_r: Tensor, scales: Tensor, scales_t: Tensor,
             t: float | Tensor, min_var_t: float = 0.0):
    """Condition 4D Gaussians on time `t`.

    Args: means [N,3], times [N] or [N,1] (mu_t), quats_l / quats_r [N,4], scales [N,3]
    and scales_t [N] or [N,1] (linear); `min_var_t` adds that variance along the time axis
    (Sigma + min_var_t e_t e_t^T: a floor on how short-lived a Gaussian can be).
    Returns (means_t [N,3], covars_t [N,3,3], marginal [N] = exp(-(t-mu_t)^2 / (2 W)),
    velocity [N,3] = V / W): the Gaussian of x given t, its weight in time and the
    speed of its mean."""
    M = rotation_4d(quats_l, quats_r) * torch.cat([scales, scales_t.reshape(-1, 1)], -1)[:, None, :]
    Mx, b = M[:, :3, :], M[:, 3, :]  # spatial rows [N,3,4], time row [N,4]
    W = (b * b).sum(-1) + min_var_t  # [N] temporal variance
    V = (Mx * b[:, None, :]).sum(-1)  # [N,3] space-time covariance
    vel = V / W[:, None]
    dt = t - times.reshape(-1)
    G = Mx - vel[:, :, None] * b[:, None, :]  # (I - ...) projection of the spatial rows
    covars = G @ G.transpose(-1, -2)
    if min_var_t > 0:  # the floor's own column of the factor: [Mx, 0] - vel [b, sqrt(min_var_t)]
        covars = covars + min_var_t * vel[:, :, None] * vel[:, None, :]
    return means + vel * dt[:, None], covars, temporal_marginal(dt, W), vel


@torch.no_grad()
def covariance_to_quat_scale(covars: Tensor):
    """[N,3,3] symmetric PSD -> (quats [N,4] (w,x,y,z), scales [N,3] linear) with
    R diag(s^2) R^T = covars (float64 eigendecomposition; for export, not differentiable)."""
    from ..backends.torch_ref import rotmat_to_quat

    evals, evecs = torch.linalg.eigh(covars.double())
    evecs[:, :, 2] *= torch.sign(torch.linalg.det(evecs))[:, None]  # a rotation, not a reflection
    return rotmat_to_quat(evecs).float(), evals.clamp_min(1e-30).sqrt().float()


@dataclasses.dataclass
class FourDGSConfig(DynamicOptions):
    """Options of the 4D Gaussian model (`--4dgs.*`)."""

    sh_degree: int = 3
    """Maximum spherical-harmonic degree of the view-dependent colour (0..3)."""
    sh_degree_interval: int = 1000
    """Raise the SH degree by one every this many steps (scaled with --scale-schedule)."""
    init_opacity: float = 0.1
    """Opacity of the initial Gaussians."""
    init_scale_t: Optional[float] = None
    """Initial temporal standard deviation, as a fraction of the sequence's duration. Default: 1 for
    monocular video (every Gaussian starts present through the whole sequence; those that move or
    appear shrink), 0.25 for multi-view video."""
    lr_means: float = 1.6e-4
    """Position learning rate, times the scene scale; decays exponentially to lr_means_final."""
    lr_means_final: float = 1.6e-6
    lr_times: float = 1.6e-3
    """Learning rate of the temporal centres (time units: the data's, 0..1 for D-NeRF); decays x0.01."""
    lr_scales: float = 5e-3
    lr_scales_t: float = 5e-3
    lr_quats: float = 1e-3
    lr_quats_r: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lambda_entropy: float = 0.0
    """Weight of the opacity entropy loss mean(-o log o) (0: off)."""
    entropy_from: float = 0.5
    """Start the entropy loss at this fraction of the run (after densification has done most of its work)."""
    lambda_consistency: float = 0.01
    """Weight of the 4D consistency loss (velocity against its K nearest neighbours' mean; 0: off)."""
    knn: int = 8
    """Neighbours of the consistency loss."""
    knn_every: int = 100
    """Recompute the neighbours every this many steps (and whenever the count changes)."""
    knn_sample: int = 16384
    """Gaussians per step in the consistency loss (a random subset; 0: all)."""

    def check(self) -> None:
        check_dynamic_options(self, "4dgs")
        if self.init_scale_t is not None and not self.init_scale_t > 0:
            raise ValueError(f"--4dgs.init-scale-t must be > 0, got {self.init_scale_t}")
        if self.knn < 1:
            raise ValueError(f"--4dgs.knn must be >= 1, got {self.knn}")

    def scaled(self, factor: float) -> "FourDGSConfig":
        return dataclasses.replace(self, sh_degree_interval=int(self.sh_degree_interval * factor))


class FourDGSModel(DynamicModel):
    """4D Gaussian splatting (module docstring)."""

    shardable = False
    shardable_reason = "its entropy and neighbour-consistency losses span the whole model"

    name = "4dgs"
    Config = FourDGSConfig
    per_gaussian = PER_GAUSSIAN

    def __init__(self, config: FourDGSConfig, params: Mapping[str, Tensor], scene_scale: float = 1.0):
        params, assign = with_nodes(params, config.hierarchy_levels)
        if "knn" not in params:  # the consistency loss's neighbours, computed on first use (saved with the model)
            params = dict(params)
            params["knn"] = torch.zeros(0, config.knn)
            params["knn_block"] = torch.tensor([-1.0])
        self.per_gaussian = PER_GAUSSIAN + (("nodes",) if "nodes" in params else ())
        super().__init__(config, params, scene_scale)
        if assign:
            self.assign_nodes()
        self._knn_means = None  # the means parameter the stored neighbours were computed for (None: loaded)

    @classmethod
    def create(cls, config: FourDGSConfig, dataset, *, seed: int = 0) -> "FourDGSModel":
        """Gaussians at the dataset's initial points (as static models: nearest-neighbour scales,
        DC colour), temporal centres uniform over the data's times, temporal scale
        ``init_scale_t`` x duration, no 4D rotation."""
        time_range = dataset_time_range(dataset)
        s = init_splats(dataset.points, dataset.points_rgb, config.sh_degree, config.init_opacity)
        N = s["means"].shape[0]
        times, scales_t = init_times(N, time_range, np.random.default_rng(seed + 17),
                                     resolve(config.init_scale_t, dataset, 1.0, 0.25))
        params = {**s, "times": torch.from_numpy(times), "scales_t": torch.from_numpy(scales_t),
                  "quats_r": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(N, 1),
                  **time_params(dataset, config)}
        return cls(config, params, float(dataset.scene_scale))

    # ------------------------------------------------------------------ slicing
    def _slice(self, rows: Optional[Tensor], t: float, frozen: bool = False):
        r = lambda k: self._rows(k, rows)  # noqa: E731
        times = r("times")
        if frozen:  # each Gaussian at its own centre: dt = 0, and no gradient reaches mu_t
            times = times.detach()
            t = times.reshape(-1)
        return slice_4d(r("means"), times, r("quats"), r("quats_r"), torch.exp(r("scales")),
                        torch.exp(r("scales_t")), t, self.min_var_t)

    def _var_t(self, rows: Optional[Tensor]) -> Tensor:
        """W + the floor: each Gaussian's temporal variance after rotation [N] (no gradient)."""
        with torch.no_grad():
            r = lambda k: self._rows(k, rows)  # noqa: E731
            M_t = rotation_4d(r("quats"), r("quats_r"))[:, 3, :] * torch.exp(torch.cat([r("scales"), r("scales_t")], -1))
            return (M_t * M_t).sum(-1) + self.min_var_t

    def sigma_t(self) -> Tensor:
        """sqrt(W): the temporal standard deviation after rotation (what the marginal uses)."""
        return self._var_t(None).sqrt()

    def _opacity_at(self, rows: Optional[Tensor], t: float) -> Tensor:
        with torch.no_grad():
            return torch.sigmoid(self._rows("opacities", rows)) * temporal_marginal(
                t - self._rows("times", rows)[:, 0], self._var_t(rows))

    def _gaussians_at(self, rows: Optional[Tensor], t: float, degree: int, frozen: bool = False) -> Gaussians:
        means, covars, marginal, _ = self._slice(rows, t, frozen)
        opac = torch.sigmoid(self._rows("opacities", rows)) * marginal
        sh = torch.cat([self._rows("sh0", rows), self._rows("shN", rows)], 1)
        return Gaussians(means, None, None, opac, sh, degree, covars=covars, ids=rows)

    def splats_at(self, t: float) -> Dict[str, Tensor]:
        with torch.no_grad():
            rows = self.alive_rows(t)
            means, covars, marginal, _ = self._slice(rows, t)
            quats, scales = covariance_to_quat_scale(covars)
            opac = (torch.sigmoid(self._rows("opacities", rows)) * marginal).clamp(1e-7, 1 - 1e-7)
            return {"means": means.detach().cpu(), "scales": torch.log(scales.clamp_min(1e-30)).cpu(),
                    "quats": quats.cpu(), "opacities": torch.logit(opac).cpu(),
                    "sh0": self._rows("sh0", rows).detach().cpu(), "shN": self._rows("shN", rows).detach().cpu()}

    # ------------------------------------------------------------------ training
    def _learning_rates(self, step: int, iterations: int) -> Dict[str, float]:
        c = self.config
        decay = lambda lr0, ratio: learning_rate_decay(lr0, lr0 * ratio, step, iterations)  # noqa: E731
        lrs = {"means": self.scene_scale * learning_rate_decay(c.lr_means, c.lr_means_final, step, iterations),
               "times": decay(c.lr_times, 0.01), "scales": c.lr_scales, "scales_t": c.lr_scales_t,
               "quats": c.lr_quats, "quats_r": c.lr_quats_r, "opacities": c.lr_opacities, "sh0": c.lr_sh0,
               "shN": c.lr_shN, "time_range": 0.0}
        lrs.update({k: 0.0 for k in ("time_prior", "nodes", "knn", "knn_block") if k in self.params})
        return lrs

    def losses(self, step: int, out: RenderOutput, cameras: Cameras, images: Tensor) -> Dict[str, Tensor]:
        c = self.config
        terms: Dict[str, Tensor] = {}
        iterations = getattr(self, "_iterations", None)
        if c.lambda_entropy > 0 and (iterations is None or step >= c.entropy_from * iterations):
            o = out.gaussians.opacities.clamp(1e-6, 1 - 1e-6)
            terms["entropy"] = c.lambda_entropy * (-(o * torch.log(o))).mean()
        if c.lambda_consistency > 0 and self.num_gaussians > c.knn:
            terms["consistency"] = c.lambda_consistency * self._consistency(step)
        return terms

    def _consistency(self, step: int) -> Tensor:
        """mean |v_i - mean_{j in kNN(i)} v_j| over a sample of Gaussians (velocities V / W), the
        neighbours' mean held fixed (each Gaussian is pulled towards its neighbours' motion).

        The neighbours are recomputed every ``knn_every`` steps and whenever density control
        replaced the parameters; they are kept in the shared parameter ``knn`` (with the step
        block they belong to in ``knn_block``), so a resumed run uses the neighbours the
        uninterrupted one used."""
        c = self.config
        N = self.num_gaussians
        dev = self.params["means"].device
        block = step // max(c.knn_every, 1)
        stored = self.params["knn"] if "knn" in self.params else None
        fresh = (stored is not None and stored.shape[0] == N and int(self.params["knn_block"][0]) == block
                 and (getattr(self, "_knn_means", None) is None or self._knn_means is self.params["means"]))
        if not fresh:
            from scipy.spatial import cKDTree

            with torch.no_grad():
                pts = torch.cat([self.params["means"], self.params["times"] * self.scene_scale], -1)
                pts = pts.detach().cpu().numpy()
            k = min(c.knn + 1, N)
            _, idx = cKDTree(pts).query(pts, k=k)
            knn = torch.from_numpy(np.asarray(idx[:, 1:], dtype=np.float32)).to(dev)  # exact as floats (< 2^24)
            # new objects in place of the placeholders (no gradient and no optimizer state: the
            # optimizer's reference to the old ones is never stepped)
            self.params["knn"] = torch.nn.Parameter(knn, requires_grad=False)
            self.params["knn_block"] = torch.nn.Parameter(torch.tensor([float(block)], device=dev),
                                                          requires_grad=False)
        self._knn_means = self.params["means"]
        nbrs = self.params["knn"].long()
        g = torch.Generator().manual_seed(1_000_003 * step + 7)
        n = N if c.knn_sample <= 0 or c.knn_sample >= N else c.knn_sample
        sample = torch.randperm(N, generator=g)[:n].to(dev)
        nb = nbrs[sample]  # [n, K]
        rows = torch.unique(torch.cat([sample, nb.reshape(-1)]))
        pos = torch.full((N,), -1, dtype=torch.int64, device=rows.device)
        pos[rows] = torch.arange(len(rows), device=rows.device)
        _, _, _, vel = self._slice(rows, 0.0)
        v_i = vel[pos[sample]]
        # the neighbours' mean is a fixed target (no gradient): its backward would scatter-add into
        # repeated rows, whose summation order torch's CPU kernels do not fix, and resume is exact
        v_nb = vel[pos[nb]].mean(1).detach()
        return (v_i - v_nb).abs().sum(-1).mean() / max(self.scene_scale, 1e-12)
