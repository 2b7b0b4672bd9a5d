"""Spacetime Gaussians (``--model spacetime``): 3D Gaussians with parametric motion and a
temporal radial-basis opacity.

After Li et al., "Spacetime Gaussian Feature Splatting for Real-Time Dynamic View
Synthesis" (CVPR 2024). Every Gaussian has a temporal centre mu_t and, at time t
with dt = t - mu_t:

    mean(t)     = mu + sum_{k=1..K} m_k dt^k           (polynomial motion, K = motion_degree, 3 in the paper)
    quat(t)     = q + omega dt                           (linear rotation, normalised by the renderer)
    opacity(t)  = sigmoid(o) exp(-dt^2 / (2 sigma_t^2))  (temporal radial basis)
    scales      constant

Colour, two models as in the paper:

* lite (default): per-Gaussian view-dependent SH of degree 0..3 (the paper's lite model
  keeps a colour per Gaussian);
* ``features=True`` (the full model's feature splatting): per Gaussian 9 features
  f = (f_base, f_dir, f_time); the rasterizer splats (f_base, f_dir, f_time dt) into a
  9-channel feature image F and a small MLP decodes each pixel,
  rgb = F_base + alpha MLP(F_dir, F_time, ray direction), premultiplied by alpha. The
  decoder's weights are shared parameters, trained with the Gaussians.

Parameters (per Gaussian unless said): means [N,3], motion [N,3K], times [N,1],
scales_t [N,1] (log sigma_t), scales [N,3] (log), quats [N,4], omega [N,4],
opacities [N] (logit), and sh0 [N,1,3] + shN [N,K'-1,3] (lite) or features [N,9]
with mlp_w1 [9+3,H], mlp_b1 [H], mlp_w2 [H,3], mlp_b2 [3] shared (features);
time_range [2] shared; nodes [N] with the temporal hierarchy.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras
from ..render import Gaussians
from .dynamic import (DynamicModel, DynamicOptions, check_dynamic_options, dataset_time_range, init_times,
                      learning_rate_decay, temporal_marginal, time_params, with_nodes)
from .nets import mlp_apply, mlp_names, mlp_params
from .static import init_splats

__all__ = ["SpacetimeConfig", "SpacetimeModel", "motion_at", "FEATURES"]

FEATURES = 9  # f_base, f_dir, f_time (3 each)


def motion_at(means: Tensor, motion: Tensor, dt: Tensor) -> Tensor:
    """mu + sum_k m_k dt^k: means [N,3], motion [N,3K] (m_1..m_K), dt [N] -> [N,3]."""
    K = motion.shape[1] // 3
    out = means
    p = torch.ones_like(dt)
    for k in range(K):
        p = p * dt
        out = out + motion[:, 3 * k:3 * k + 3] * p[:, None]
    return out


@dataclasses.dataclass
class SpacetimeConfig(DynamicOptions):
    """Options of the Spacetime Gaussian model (`--spacetime.*`)."""

    motion_degree: int = 3
    """Degree of the polynomial motion of the means (the paper: 3)."""
    features: bool = False
    """Feature splatting with an MLP decoder (the full model) instead of per-Gaussian SH (lite)."""
    mlp_hidden: int = 16
    """Hidden width of the feature decoder."""
    sh_degree: int = 3
    """Maximum SH degree of the lite colour (0..3)."""
    sh_degree_interval: int = 1000
    init_opacity: float = 0.1
    init_scale_t: float = 0.25
    """Initial temporal width sigma_t, as a fraction of the sequence's duration."""
    lr_means: float = 1.6e-4
    """Position learning rate, times the scene scale; decays exponentially to lr_means_final."""
    lr_means_final: float = 1.6e-6
    lr_motion: float = 1.6e-3
    """Learning rate of the motion coefficients, times the scene scale; decays x0.01."""
    lr_times: float = 1.6e-3
    """Learning rate of the temporal centres; decays x0.01."""
    lr_scales_t: float = 5e-3
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_omega: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lr_features: float = 2.5e-3
    lr_mlp: float = 1e-3

    def check(self) -> None:
        check_dynamic_options(self, "spacetime")
        if not 0 <= self.motion_degree <= 6:
            raise ValueError(f"--spacetime.motion-degree must be 0..6, got {self.motion_degree}")
        if self.mlp_hidden < 1:
            raise ValueError(f"--spacetime.mlp-hidden must be >= 1, got {self.mlp_hidden}")

    def scaled(self, factor: float) -> "SpacetimeConfig":
        return dataclasses.replace(self, sh_degree_interval=int(self.sh_degree_interval * factor))


_COMMON = ("means", "motion", "times", "scales_t", "scales", "quats", "omega", "opacities")


class SpacetimeModel(DynamicModel):
    """Spacetime Gaussians (module docstring)."""

    name = "spacetime"
    Config = SpacetimeConfig

    def __init__(self, config: SpacetimeConfig, params: Mapping[str, Tensor], scene_scale: float = 1.0):
        params, assign = with_nodes(params, config.hierarchy_levels)
        colour = ("features",) if config.features else ("sh0", "shN")
        missing = [k for k in colour if k not in params]
        if missing:
            raise ValueError(f"spacetime: parameters lack {missing} (features={config.features}: the model was "
                             f"trained with{'out' if config.features else ''} --spacetime.features)")
        self.per_gaussian = _COMMON + colour + (("nodes",) if "nodes" in params else ())
        self.feature_channels = FEATURES if config.features else 0
        super().__init__(config, params, scene_scale)
        if assign:
            self.assign_nodes()

    @classmethod
    def create(cls, config: SpacetimeConfig, dataset, *, seed: int = 0) -> "SpacetimeModel":
        """Gaussians at the dataset's initial points (nearest-neighbour scales, DC colour), temporal
        centres uniform over the data's times, no motion, a small random feature decoder."""
        time_range = dataset_time_range(dataset)
        s = init_splats(dataset.points, dataset.points_rgb, config.sh_degree, config.init_opacity)
        N = s["means"].shape[0]
        rng = np.random.default_rng(seed + 23)
        times, scales_t = init_times(N, time_range, rng, config.init_scale_t)
        params = {"means": s["means"], "motion": torch.zeros(N, 3 * config.motion_degree),
                  "times": torch.from_numpy(times), "scales_t": torch.from_numpy(scales_t), "scales": s["scales"],
                  "quats": s["quats"], "omega": torch.zeros(N, 4), "opacities": s["opacities"],
                  **time_params(dataset, config)}
        if config.features:
            from .static import sh_to_rgb

            f = torch.zeros(N, FEATURES)
            f[:, :3] = sh_to_rgb(s["sh0"][:, 0, :])
            g = torch.Generator().manual_seed(seed + 29)
            H = config.mlp_hidden
            params.update(features=f, **mlp_params("mlp", 6 + 3, H, 3, g, out_scale=0.01))
        else:
            params.update(sh0=s["sh0"], shN=s["shN"])
        return cls(config, params, float(dataset.scene_scale))

    # ------------------------------------------------------------------ time
    def _opacity_at(self, rows: Optional[Tensor], t: float) -> Tensor:
        with torch.no_grad():
            dt = t - self._rows("times", rows)[:, 0]
            var = torch.exp(2 * self._rows("scales_t", rows)[:, 0]) + self.min_var_t
            return torch.sigmoid(self._rows("opacities", rows)) * temporal_marginal(dt, var)

    def _gaussians_at(self, rows: Optional[Tensor], t: float, degree: int, frozen: bool = False) -> Gaussians:
        r = lambda k: self._rows(k, rows)  # noqa: E731
        dt = torch.zeros_like(r("opacities")) if frozen else t - r("times")[:, 0]
        means = motion_at(r("means"), r("motion"), dt)
        quats = r("quats") + r("omega") * dt[:, None]
        opac = torch.sigmoid(r("opacities")) * temporal_marginal(dt, torch.exp(2 * r("scales_t")[:, 0]) + self.min_var_t)
        if self.config.features:
            f = r("features")
            colors = torch.cat([f[:, :6], f[:, 6:] * dt[:, None]], -1)
            return Gaussians(means, quats, torch.exp(r("scales")), opac, colors, None, ids=rows)
        sh = torch.cat([r("sh0"), r("shN")], 1)
        return Gaussians(means, quats, torch.exp(r("scales")), opac, sh, degree, ids=rows)

    def decode(self, features: Tensor, alphas: Tensor, cameras: Cameras, step: Optional[int] = None) -> Tensor:
        """rgb = F_base + alpha MLP(F_dir, F_time, ray direction) for features [C,H,W,9]."""
        C, H, W, _ = features.shape
        dirs = pixel_directions(cameras)  # [C,H,W,3] world-space unit rays
        x = torch.cat([features[..., 3:9], dirs], -1)
        return features[..., :3] + alphas * mlp_apply(self.params, "mlp", x)

    def splats_at(self, t: float) -> Dict[str, Tensor]:
        if self.config.features:
            raise ValueError("a spacetime model with --spacetime.features decodes colours with an MLP per pixel; "
                             "it has no static per-Gaussian colour to export (train the lite model for export)")
        with torch.no_grad():
            rows = self.alive_rows(t)
            g = self._gaussians_at(rows, t, int(self.config.sh_degree))
            op = g.opacities.clamp(1e-7, 1 - 1e-7)
            return {"means": g.means.cpu(), "scales": self._rows("scales", rows).detach().cpu(),
                    "quats": (g.quats / g.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu(),
                    "opacities": torch.logit(op).cpu(), "sh0": self._rows("sh0", rows).detach().cpu(),
                    "shN": self._rows("shN", rows).detach().cpu()}

    # ------------------------------------------------------------------ training
    def _learning_rates(self, step: int, iterations: int) -> Dict[str, float]:
        c = self.config
        decay = lambda lr0, ratio: learning_rate_decay(lr0, lr0 * ratio, step, iterations)  # noqa: E731
        lrs = {"means": self.scene_scale * learning_rate_decay(c.lr_means, c.lr_means_final, step, iterations),
               "motion": self.scene_scale * decay(c.lr_motion, 0.01), "times": decay(c.lr_times, 0.01),
               "scales_t": c.lr_scales_t, "scales": c.lr_scales, "quats": c.lr_quats, "omega": c.lr_omega,
               "opacities": c.lr_opacities, "time_range": 0.0}
        lrs.update({k: 0.0 for k in ("time_prior", "nodes") if k in self.params})
        if c.features:
            lrs.update(features=c.lr_features, **{k: c.lr_mlp for k in mlp_names("mlp")})
        else:
            lrs.update(sh0=c.lr_sh0, shN=c.lr_shN)
        return lrs


def pixel_directions(cameras: Cameras) -> Tensor:
    """World-space unit ray directions through every pixel centre, [C,H,W,3] (pinhole)."""
    C, H, W = len(cameras), cameras.height, cameras.width
    dev, dt = cameras.viewmats.device, cameras.viewmats.dtype
    ys, xs = torch.meshgrid(torch.arange(H, device=dev, dtype=dt) + 0.5, torch.arange(W, device=dev, dtype=dt) + 0.5,
                            indexing="ij")
    K = cameras.Ks
    x = (xs[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (ys[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    d_cam = torch.stack([x, y, torch.ones_like(x)], -1)  # [C,H,W,3]
    R = cameras.viewmats[:, :3, :3]  # world->camera; camera->world is R^T
    d = torch.einsum("cji,chwj->chwi", R, d_cam)
    return d / d.norm(dim=-1, keepdim=True)
