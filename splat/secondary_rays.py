"""Secondary rays through a Gaussian scene: what only a ray tracer can render (3DGRT, 3DGUT).

- Depth of field with a thin lens: each pixel averages rays from points on the lens aperture through
  the pixel's point on the focal plane (the pinhole ray at the focus distance).
- A plane inserted into the scene: rays stop at the plane (their transmittance so far is what is left
  for it), and the plane is either a *mirror* (the reflected ray is traced on through the scene; its
  Gaussians take their SH colours as seen from the camera mirrored in the plane, which is exact for a
  planar mirror) or a *shadow catcher* (a chequered floor lit by a distant light; a shadow ray towards
  the light is traced and its transmittance is the light that reaches the floor).

Every trace goes through the native tracer (`splat.backends.raytrace.trace_rays`); the Gaussians are
dilated by the primary camera's eps2d as in a `backend="raytrace"` render, so without effects this
renders what `rasterize(..., backend="raytrace")` renders.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .camera_models import camera_rays
from .backends import raytrace as rt
from .cameras import Cameras, _horizon_axes
from .render import Gaussians, RenderSettings, camera_arguments, sh_colors

__all__ = ["ThinLens", "Plane", "render_secondary", "default_plane", "default_light"]


@dataclasses.dataclass(frozen=True)
class ThinLens:
    """A thin lens: `aperture` is the lens radius and `focus` the distance of the plane in focus along
    the optical axis, both in world units; `samples` rays per pixel (stratified on the disc)."""

    aperture: float
    focus: float
    samples: int = 16

    def __post_init__(self):
        if not (self.aperture >= 0 and math.isfinite(self.aperture)):
            raise ValueError(f"ThinLens: aperture must be a finite number >= 0, got {self.aperture}")
        if not (self.focus > 0 and math.isfinite(self.focus)):
            raise ValueError(f"ThinLens: focus must be a positive distance, got {self.focus}")
        if self.samples < 1:
            raise ValueError(f"ThinLens: samples must be >= 1, got {self.samples}")


@dataclasses.dataclass(frozen=True)
class Plane:
    """An infinite plane through `point` with unit `normal` (world), the side the normal points to
    facing the scene. kind "mirror": `reflectance` of the light is the reflected image, the rest the
    chequered albedo; "shadow": a chequered floor lit from direction `light` (towards the light) plus
    `ambient`. `checker` is the chequer's square size in world units."""

    point: Tuple[float, float, float]
    normal: Tuple[float, float, float]
    kind: str = "mirror"
    reflectance: float = 0.8
    light: Tuple[float, float, float] = (0.3, 0.2, 1.0)
    ambient: float = 0.35
    checker: float = 0.5
    albedo: Tuple[float, float] = (0.85, 0.55)

    def __post_init__(self):
        if self.kind not in ("mirror", "shadow"):
            raise ValueError(f"Plane: kind must be 'mirror' or 'shadow', got {self.kind!r}")
        n = np.asarray(self.normal, dtype=np.float64)
        if n.shape != (3,) or not np.isfinite(n).all() or np.linalg.norm(n) < 1e-12:
            raise ValueError(f"Plane: normal must be a non-zero 3-vector, got {self.normal}")
        if not 0 <= self.reflectance <= 1:
            raise ValueError(f"Plane: reflectance must lie in [0, 1], got {self.reflectance}")
        light = np.asarray(self.light, dtype=np.float64)
        if light.shape != (3,) or not np.isfinite(light).all() or np.linalg.norm(light) < 1e-12:
            raise ValueError(f"Plane: light must be a non-zero direction (towards the light), got {self.light}")
        if not np.isfinite(np.asarray(self.point, dtype=np.float64)).all():
            raise ValueError(f"Plane: point must be finite, got {self.point}")


def default_light(up: np.ndarray, elevation_deg: float = 55.0) -> Tuple[float, float, float]:
    """A distant light's direction: `up` tilted towards the horizon to `elevation_deg` above it."""
    side = _horizon_axes(np.asarray(up, dtype=np.float64))[0]
    e = math.radians(elevation_deg)
    return tuple(math.sin(e) * np.asarray(up) + math.cos(e) * side)


def default_plane(means: np.ndarray, opacities: np.ndarray, up: np.ndarray, kind: str = "mirror",
                  offset: float = 0.0, **kw) -> Plane:
    """A plane under the scene: normal `up`, through the 1st percentile of the opaque Gaussians' heights
    (minus `offset`, world units)."""
    keep = opacities > 0.5
    pts = means[keep] if keep.sum() >= 10 else means
    h = pts @ up
    base = float(np.percentile(h, 1.0)) - offset
    centre = pts.mean(0)
    point = centre + (base - float(centre @ up)) * up
    size = float(np.percentile(h, 99.0) - np.percentile(h, 1.0)) or 1.0
    kw.setdefault("checker", size / 2)
    return Plane(tuple(point), tuple(up), kind, **kw)


def _colors(g: Gaussians, eye: Tensor) -> Tensor:
    """The Gaussians' colours seen from `eye` [3] (`sh_colors` along eye -> Gaussian, as `rasterize`
    evaluates them), [N, 3]."""
    if g.sh_degree is None:
        if g.colors.dim() != 2 or g.colors.shape[-1] != 3:
            raise ValueError("secondary rays render RGB models (colours [N,3] or SH [N,K,3])")
        return g.colors
    if g.colors.dim() != 3:
        raise ValueError("secondary rays need per-Gaussian SH [N,K,3] (not per-camera colours)")
    return sh_colors(g.sh_degree, g.means - eye, g.colors)


def _checker(x: Tensor, plane: Plane) -> Tensor:
    """Chequer albedo [R] at points x [R,3] on the plane."""
    n = torch.tensor(plane.normal, dtype=x.dtype)
    n = n / n.norm()
    a = torch.tensor([1.0, 0.0, 0.0], dtype=x.dtype) if abs(float(n[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0],
                                                                                                     dtype=x.dtype)
    u = torch.linalg.cross(n, a)
    u = u / u.norm()
    v = torch.linalg.cross(n, u)
    p = x - torch.tensor(plane.point, dtype=x.dtype)
    i = torch.floor(p @ u / plane.checker) + torch.floor(p @ v / plane.checker)
    lo, hi = plane.albedo
    return torch.where(torch.remainder(i, 2) == 0, torch.full_like(i, hi), torch.full_like(i, lo))


def _disc_samples(n: int) -> np.ndarray:
    """n stratified points on the unit disc (concentric rings, golden-angle offsets), [n, 2]."""
    if n == 1:
        return np.zeros((1, 2))
    k = np.arange(n) + 0.5
    r = np.sqrt(k / n)
    ang = k * math.pi * (3 - math.sqrt(5))
    return np.stack([r * np.cos(ang), r * np.sin(ang)], -1)


@torch.no_grad()
def render_secondary(g: Gaussians, camera: Cameras, background: Tensor, lens: Optional[ThinLens] = None,
                     plane: Optional[Plane] = None, settings: RenderSettings = RenderSettings(),
                     eps2d: float = 0.3) -> Tuple[Tensor, Tensor]:
    """Render one camera (a batch of 1, any camera model) with a thin lens and/or a plane.

    Returns colours [H, W, 3] and alphas [H, W, 1] (the scene's coverage in front of the plane).
    `background` [3]. Raises ``ValueError`` for a batch of more than one camera or a model whose
    Gaussians carry features instead of RGB."""
    if len(camera) != 1:
        raise ValueError(f"render_secondary renders one camera at a time, got {len(camera)}")
    dev = g.means.device
    dt = torch.float32
    W, H = camera.width, camera.height
    o, d, ok = camera_rays(camera.viewmats, camera.Ks, W, H, **camera_arguments(camera))
    o, d, ok = o[0].to(dt), d[0].to(dt), ok[0]
    precs = rt.dilated_precisions(g.means, g.quats, g.scales, g.covars, camera.viewmats, camera.Ks,
                                  camera.camera_model, eps2d)[0][0].to(dt)
    means, opac = g.means.to(dt), g.opacities.to(dt)
    eye = camera.centers[0].to(dt)
    cols = _colors(g, eye).to(dt)
    bg = background.to(dt).reshape(3)
    R = o.shape[0]
    near, far = settings.near_plane, settings.far_plane

    if lens is None or lens.aperture == 0:
        samples = [(o, d)]
    else:
        Rw = camera.viewmats[0, :3, :3].to(dt)
        fwd = Rw[2]
        focus_pts = o + d * (lens.focus / (d @ fwd).clamp_min(1e-6))[:, None]
        samples = []
        for sx, sy in _disc_samples(lens.samples):
            lo = o + lens.aperture * (float(sx) * Rw[0] + float(sy) * Rw[1])
            dd = focus_pts - lo
            samples.append((lo, dd / dd.norm(dim=-1, keepdim=True)))

    if plane is not None:  # the plane's frame, and what its secondary rays see, fixed over the lens samples
        n = torch.tensor(plane.normal, dtype=dt, device=dev)
        n = n / n.norm()
        p0 = torch.tensor(plane.point, dtype=dt, device=dev)
        if plane.kind == "mirror":
            eye_m = eye - 2 * ((eye - p0) @ n) * n  # the camera mirrored in the plane
            cols_m = _colors(g, eye_m).to(dt)
        else:
            L = torch.tensor(plane.light, dtype=dt, device=dev)
            L = L / L.norm()
            lit = float(torch.clamp(L @ n, min=0.0))
    acc = torch.zeros(R, 3, dtype=dt, device=dev)
    acc_a = torch.zeros(R, dtype=dt, device=dev)
    for so, sd in samples:
        tmin = torch.full((R,), near, dtype=dt, device=dev)
        tmax = torch.full((R,), far, dtype=dt, device=dev)
        hit_plane = torch.zeros(R, dtype=torch.bool, device=dev)
        if plane is not None:
            denom = sd @ n
            tp = ((p0 - so) @ n) / torch.where(denom.abs() < 1e-9, torch.full_like(denom, 1e-9), denom)
            hit_plane = (denom < 0) & (tp > near) & ok  # rays coming down onto the plane's front side
            tmax = torch.where(hit_plane, tp, tmax)
        c1, T1, _ = rt.trace_rays(means, precs, opac, cols, so, sd, tmin, tmax)
        col = c1 + T1[:, None] * bg
        if plane is not None and bool(hit_plane.any()):
            idx = hit_plane.nonzero()[:, 0]
            x = so[idx] + tp[idx, None] * sd[idx]
            albedo = _checker(x, plane)[:, None].expand(-1, 3)
            eps = 1e-4 * max(1.0, float(x.abs().max()))
            if plane.kind == "mirror":
                rd = sd[idx] - 2 * (sd[idx] @ n)[:, None] * n
                c2, T2, _ = rt.trace_rays(means, precs, opac, cols_m, x + eps * n, rd,
                                          torch.full((idx.numel(),), eps, dtype=dt, device=dev),
                                          torch.full((idx.numel(),), far, dtype=dt, device=dev))
                seen = c2 + T2[:, None] * bg
                surf = plane.reflectance * seen + (1 - plane.reflectance) * albedo
            else:
                ones = torch.ones(idx.numel(), 3, dtype=dt, device=dev)
                _, Ts, _ = rt.trace_rays(means, precs, opac, ones, x + eps * n, L.expand(idx.numel(), 3),
                                         torch.full((idx.numel(),), eps, dtype=dt, device=dev),
                                         torch.full((idx.numel(),), far, dtype=dt, device=dev))
                surf = albedo * (plane.ambient + (1 - plane.ambient) * lit * Ts[:, None])
            col[idx] = c1[idx] + T1[idx, None] * surf
        col = torch.where(ok[:, None], col, bg)
        acc += col
        acc_a += torch.where(ok, 1.0 - T1, torch.zeros_like(T1))
    n_s = len(samples)
    return (acc / n_s).reshape(H, W, 3), (acc_a / n_s).reshape(H, W, 1)
