"""Static 3D Gaussian splats: the parameter layout, initialisation, rendering, and the
`StaticModel` kind that the trainer builds for ``--model static``.

A model is a dict of tensors with gsplat's `simple_trainer` layout, so that files,
strategies and checkpoints are interchangeable with it:

    means     [N, 3]        centres
    scales    [N, 3]        log of the axis scales
    quats     [N, 4]        rotation (w, x, y, z), any norm
    opacities [N]           logit of the opacity
    sh0       [N, 1, 3]     DC spherical-harmonic coefficient
    shN       [N, K-1, 3]   higher SH bands, K = (degree + 1)^2
"""
from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Dict, Mapping, Optional

import numpy as np
import torch
from torch import Tensor
from tyro.conf import arg

from ..cameras import Cameras, points_scale
from ..io.common import SH_C0
from ..io.common import sh_degree as sh_degree_of  # SH degree of a splats dict, from the shN shape
from ..render import Gaussians, RenderSettings, rasterize
from .base import Model, learning_rate_decay
from .jacobian import RenderJacobian

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def rgb_to_sh(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: Tensor) -> Tensor:
    return sh * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def init_splats(points: np.ndarray | Tensor, rgb: np.ndarray | Tensor, sh_degree: int = 3,
                init_opacity: float = 0.1, init_scale: float = 1.0) -> Dict[str, Tensor]:
    """Gaussians at `points` ([P,3]) with colours `rgb` ([P,3] uint8 or float in [0,1]).

    As in 3DGS: isotropic scales from the mean squared distance to the 3 nearest
    neighbours, identity rotations, opacity `init_opacity`, DC colour from `rgb`.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] == 0:
        raise ValueError(f"init_splats: points must be a non-empty [P, 3] array, got shape {list(pts.shape)}")
    col = np.asarray(rgb)
    col = col.astype(np.float32) / 255.0 if col.dtype == np.uint8 else col.astype(np.float32)
    if col.shape != pts.shape:
        raise ValueError(f"init_splats: rgb shape {list(col.shape)} does not match points {list(pts.shape)}")
    P = pts.shape[0]
    k = min(4, P)
    if P > 1:
        dist, _ = cKDTree(pts).query(pts, k=k)
        d2 = (dist[:, 1:] ** 2).mean(1)
    else:
        d2 = np.ones(1)
    floor = 1e-7 * max(float(np.ptp(pts, axis=0).max()), 1e-30)  # coincident points: relative to the cloud's size
    d = np.sqrt(np.maximum(d2, floor * floor)) * init_scale
    N = P
    K = num_sh_bases(sh_degree)
    return {
        "means": torch.from_numpy(pts.astype(np.float32)),
        "scales": torch.from_numpy(np.log(d).astype(np.float32))[:, None].repeat(1, 3),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(N, 1),
        "opacities": torch.full((N,), math.log(init_opacity / (1 - init_opacity))),
        "sh0": rgb_to_sh(torch.from_numpy(col))[:, None, :].contiguous(),
        "shN": torch.zeros(N, K - 1, 3),
    }


def splats_to_gaussians(splats: Mapping[str, Tensor], sh_degree: Optional[int] = None) -> Gaussians:
    """The renderable form of a splats dict: exp of the log-scales, sigmoid of the opacity
    logits, [sh0, shN] concatenated as SH [N,K,3]; `sh_degree` defaults to the full degree."""
    if sh_degree is None:
        sh_degree = sh_degree_of(splats)
    return Gaussians(splats["means"], splats["quats"], torch.exp(splats["scales"]), torch.sigmoid(splats["opacities"]),
                     torch.cat([splats["sh0"], splats["shN"]], 1), sh_degree)


def render_jvp(splats: Mapping[str, Tensor], tangents: Mapping[str, Tensor], sh_degree: int, cameras: Cameras,
               settings: RenderSettings = RenderSettings(), backgrounds: Optional[Tensor] = None) -> Tensor:
    """J v: the derivative of the images `render_splats` gives for `cameras` along `tangents` (a
    direction in the splats' parameters by name: means, quats, scales (log), opacities
    (logit), sh0, shN; missing ones zero), as [C,H,W,3]: one product of a
    `splat.models.jacobian.RenderJacobian`. Raises ``ValueError`` when a tangent's shape
    differs from its parameter's."""
    return RenderJacobian(splats, lambda p: splats_to_gaussians(p, sh_degree), cameras, settings,
                          backgrounds).jvp(tangents)


def render_splats(splats: Dict[str, Tensor], viewmats: Tensor, Ks: Tensor, width: int, height: int,
                  sh_degree: Optional[int] = None, backgrounds: Optional[Tensor] = None, **kwargs):
    """Render a splats dict (log scales, logit opacities, SH) with `splat.rasterize`.

    `sh_degree` defaults to the model's full degree; lower values use the first bands only.
    Other keyword arguments go to `rasterize` (backend, render_mode, absgrad, tiles, ...).
    Returns `rasterize`'s (colors [C,H,W,D], alphas [C,H,W,1], info).
    """
    g = splats_to_gaussians(splats, sh_degree)
    return rasterize(g.means, g.quats, g.scales, g.opacities, g.colors, viewmats, Ks, width, height,
                     sh_degree=g.sh_degree, backgrounds=backgrounds, **kwargs)


# ----------------------------------------------------------------------------- the model kind


@dataclasses.dataclass
class StaticConfig:
    """Options of the static 3DGS model (`--static.*`; each alias is the option's name from
    before the model kinds were named)."""

    sh_degree: Annotated[int, arg(aliases=("--sh-degree",))] = 3
    """Maximum spherical-harmonic degree (0..3)."""
    sh_degree_interval: Annotated[int, arg(aliases=("--sh-degree-interval",))] = 1000
    """Raise the SH degree by one every this many steps (scaled with --scale-schedule)."""
    init_opacity: Annotated[float, arg(aliases=("--init-opacity",))] = 0.1
    """Opacity of the initial Gaussians."""
    init_scale: Annotated[float, arg(aliases=("--init-scale",))] = 1.0
    """Multiplier of the nearest-neighbour initial scale."""
    lr_means: Annotated[float, arg(aliases=("--lr-means",))] = 1.6e-4
    """Position learning rate, times the scene scale; decays exponentially to lr_means_final."""
    lr_means_final: Annotated[float, arg(aliases=("--lr-means-final",))] = 1.6e-6
    """Position learning rate at the last step, times the scene scale."""
    lr_scales: Annotated[float, arg(aliases=("--lr-scales",))] = 5e-3
    """Learning rate of the log-scales."""
    lr_quats: Annotated[float, arg(aliases=("--lr-quats",))] = 1e-3
    """Learning rate of the quaternions."""
    lr_opacities: Annotated[float, arg(aliases=("--lr-opacities",))] = 5e-2
    """Learning rate of the opacity logits."""
    lr_sh0: Annotated[float, arg(aliases=("--lr-sh0",))] = 2.5e-3
    """Learning rate of the SH DC colour."""
    lr_shN: Annotated[float, arg(aliases=("--lr-shN",))] = 2.5e-3 / 20
    """Learning rate of the higher SH bands."""

    def check(self) -> None:
        """Raise ``ValueError`` for options no model can be built with."""
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"--sh-degree must be 0..3, got {self.sh_degree}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"--init-opacity must be in (0, 1), got {self.init_opacity}")

    def scaled(self, factor: float) -> "StaticConfig":
        """The SH schedule of a run `factor` times as long as 30k steps (gsplat's steps_scaler)."""
        return dataclasses.replace(self, sh_degree_interval=int(self.sh_degree_interval * factor))


class StaticModel(Model):
    """Static 3D Gaussian splatting (Kerbl et al. 2023): the splats dict (module docstring) as
    parameters, SH colours raised one degree every ``sh_degree_interval`` steps, the
    reference learning rates (means: exponential decay over the run, times the scene
    scale). No regularisers."""

    name = "static"
    Config = StaticConfig
    per_gaussian = PARAM_NAMES

    def __init__(self, config: StaticConfig, params: Mapping[str, Tensor], scene_scale: float = 1.0):
        super().__init__(config, params, scene_scale)
        self.sh_interval = max(1, int(config.sh_degree_interval))

    @classmethod
    def create(cls, config: StaticConfig, dataset, *, seed: int = 0) -> "StaticModel":
        """Gaussians at the dataset's initial points (`init_splats`)."""
        splats = init_splats(dataset.points, dataset.points_rgb, config.sh_degree, config.init_opacity,
                             config.init_scale)
        return cls(config, splats, float(dataset.scene_scale))

    @classmethod
    def from_splats(cls, splats: Mapping[str, Tensor], config: Optional[StaticConfig] = None) -> "StaticModel":
        """A model from any splats dict (a model file), its SH degree taken from ``shN`` and its
        scene scale from the spread of its means (`splat.cameras.points_scale`)."""
        config = config or StaticConfig(sh_degree=sh_degree_of(splats))
        return cls(config, {k: splats[k].float().contiguous() for k in PARAM_NAMES},
                   points_scale(splats["means"].detach().cpu().numpy()))

    def gaussians(self, cameras: Cameras, settings: RenderSettings = RenderSettings(),
                  step: Optional[int] = None) -> Gaussians:
        degree = self.config.sh_degree if step is None else min(step // self.sh_interval, self.config.sh_degree)
        return splats_to_gaussians(self.params, degree)

    has_jacobian = True

    def jacobian(self, cameras: Cameras, settings: RenderSettings = RenderSettings(), *, step: Optional[int] = None,
                 backgrounds: Optional[Tensor] = None) -> RenderJacobian:
        degree = self.gaussians(cameras, settings, step).sh_degree
        return RenderJacobian(dict(self.params.items()), lambda p: splats_to_gaussians(p, degree), cameras, settings,
                              backgrounds)

    def learning_rates(self, step: int, iterations: int) -> Dict[str, float]:
        c = self.config
        means = self.scene_scale * learning_rate_decay(c.lr_means, c.lr_means_final, step, iterations)
        return {"means": means, "scales": c.lr_scales, "quats": c.lr_quats, "opacities": c.lr_opacities,
                "sh0": c.lr_sh0, "shN": c.lr_shN}

    def summary(self) -> str:
        return f"SH degree {self.config.sh_degree}"

    def to_splats(self) -> Dict[str, Tensor]:
        return {k: self.params[k].detach().cpu() for k in PARAM_NAMES}
