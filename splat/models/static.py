"""Static 3D Gaussian splats: the parameter layout, initialisation and rendering.

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

import math
from typing import Dict, Optional

import numpy as np
import torch
from torch import Tensor

from ..io import SH_C0
from ..io import sh_degree as sh_degree_of  # SH degree of a splats dict, from the shN shape
from ..render import rasterize

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
    d = np.sqrt(np.maximum(d2, 1e-14)) * init_scale
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


def render_splats(splats: Dict[str, Tensor], viewmats: Tensor, Ks: Tensor, width: int, height: int,
                  sh_degree: Optional[int] = None, backgrounds: Optional[Tensor] = None, **kwargs):
    """Render a splats dict (log scales, logit opacities, SH) with `splat.rasterize`.

    `sh_degree` defaults to the model's full degree; lower values use the first bands only.
    Other keyword arguments go to `rasterize` (backend, render_mode, absgrad, tiles, ...).
    """
    if sh_degree is None:
        sh_degree = sh_degree_of(splats)
    colors = torch.cat([splats["sh0"], splats["shN"]], 1)
    return rasterize(splats["means"], splats["quats"], torch.exp(splats["scales"]),
                     torch.sigmoid(splats["opacities"]), colors, viewmats, Ks, width, height,
                     sh_degree=sh_degree, backgrounds=backgrounds, **kwargs)
