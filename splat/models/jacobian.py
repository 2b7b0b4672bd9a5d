"""Jacobian-vector products of a model's renderer (forward mode), for second-order optimisers
(`splat.optim.lm`); `splat.models.static.render_jvp` for a splats dict.

J v of the rendered images along a direction v in the model's parameters runs in two
stages, as the render does: the per-Gaussian stage (activation, projection, spherical
harmonics; O(N)) in torch's forward-mode AD over the reference projection, linearised once
per parameter point (`torch.func.linearize`), and compositing in the backend's
``rasterize_to_pixels_jvp``: native on cpu and cuda, from splat_math.h's
``gaussian_alpha_jvp`` and ``composite_jvp_pair`` (the torch reference by double backward).
J^T w is the renderer's ordinary backward.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

from .. import render as _render
from ..backends import torch_ref
from ..cameras import Cameras
from ..render import RenderSettings

__all__ = ["RenderJacobian"]


def _pixel_stage_inputs(g, cameras: Cameras, settings: RenderSettings, eps2d: float = 0.3):
    """The per-Gaussian stage of `rasterize` for `Gaussians` g (SH colours), in plain torch (so
    that forward-mode AD runs through it): returns ((means2d, conics, colors, opacities),
    (radii, depths)) for the cameras, as `rasterize` hands them to compositing."""
    C = len(cameras)
    antialiased = settings.rasterize_mode == "antialiased"
    radii, means2d, depths, conics, comp = torch_ref.project(
        g.means, g.quats, g.scales, g.opacities.detach(), cameras.viewmats, cameras.Ks, cameras.width, cameras.height,
        eps2d, settings.near_plane, settings.far_plane, 0.0, antialiased)
    visible = (radii > 0).all(-1)
    opac = g.opacities[None].expand(C, -1)
    if antialiased:
        opac = opac * comp
    vm = cameras.viewmats
    campos = -torch.einsum("cji,cj->ci", vm[:, :3, :3], vm[:, :3, 3])
    dirs = g.means[None] - campos[:, None]
    feats = _render.sh_colors(g.sh_degree, dirs, g.colors, visible)
    return (means2d, conics, feats, opac), (radii, depths)


class RenderJacobian:
    """The Jacobian of a model's rendered images with respect to its parameters, at fixed
    parameters, applied as J v (`jvp`) any number of times: the primal render's per-Gaussian
    stage (activation, projection, spherical harmonics; O(N), the torch reference's) is
    linearised once (`torch.func.linearize`, forward-mode AD) and its tile intersections
    found once; each product replays the linear map and runs compositing's forward mode in
    the backend's ``rasterize_to_pixels_jvp`` (native on cpu and cuda, from splat_math.h).

    params: the model's parameters by name; to_gaussians: params -> the `Gaussians` to render
    (SH colours; plain torch, so forward mode runs through it); cameras: one image size;
    backgrounds [C,3] or None."""

    def __init__(self, params: Mapping[str, Tensor], to_gaussians: Callable, cameras: Cameras,
                 settings: RenderSettings = RenderSettings(), backgrounds: Optional[Tensor] = None,
                 tile_size: int = 16):
        self.names = list(params)
        self.primals = tuple(params[k].detach() for k in self.names)
        self.to_gaussians, self.cameras, self.settings = to_gaussians, cameras, settings
        self.backgrounds, self.tile_size = backgrounds, tile_size
        with torch.no_grad(), warnings.catch_warnings():
            # torch's forward-AD decompositions still register through torch.jit.script
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
            (means2d, conics, feats, opac), (radii, depths) = self._stage(*self.primals)
            # the per-Gaussian stage linearised once: each product replays its tangent part only
            # (torch's constant folding in linearize warns about its own graph)
            warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node", category=UserWarning)
            _, self._linear = torch.func.linearize(lambda *xs: self._stage(*xs)[0], *self.primals)
        self._inputs = tuple(x.contiguous() for x in (means2d, conics, feats, opac))
        self.impl = _render.get_backend(settings.backend, means2d.device, means2d.dtype)
        tw, th = math.ceil(cameras.width / tile_size), math.ceil(cameras.height / tile_size)
        _, _, self.flatten_ids, self.isect_offsets = self.impl.isect_tiles(means2d, radii, depths, tile_size, tw, th,
                                                                           None)

    def _stage(self, *xs):
        return _pixel_stage_inputs(self.to_gaussians(dict(zip(self.names, xs))), self.cameras, self.settings)

    def jvp(self, tangents: Mapping[str, Tensor]) -> Tensor:
        """J v for `tangents` (by parameter name, missing ones zero): the images' tangent
        [C,H,W,3]. Raises ``ValueError`` when a tangent's shape differs from its parameter's."""
        for k, p in zip(self.names, self.primals):
            if k in tangents and tangents[k].shape != p.shape:
                raise ValueError(f"render_jvp: tangent {k!r} is {list(tangents[k].shape)}, the parameter "
                                 f"{list(p.shape)}")
        tans = tuple(tangents[k] if k in tangents else torch.zeros_like(p) for k, p in zip(self.names, self.primals))
        with torch.no_grad():
            tan = self._linear(*tans)
        means2d, conics, feats, opac = self._inputs
        W, H = self.cameras.width, self.cameras.height
        t_images, _ = self.impl.rasterize_to_pixels_jvp(means2d, conics, feats, opac, *(t.contiguous() for t in tan),
                                                        W, H, self.tile_size, self.isect_offsets, self.flatten_ids,
                                                        self.backgrounds)
        return t_images
