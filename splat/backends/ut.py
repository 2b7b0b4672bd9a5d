"""The unscented projection of 3DGUT (Wu et al., "3DGUT: Enabling Distorted Cameras and Secondary
Rays in Gaussian Splatting", CVPR 2025): each 3D Gaussian's 2D footprint in a camera of any model
(`splat.camera_models`: pinhole with OpenCV distortion, Kannala-Brandt fisheye, orthographic) and
under a rolling shutter, without the model's Jacobian.

The 2D + 1 sigma points x_0 = mu, x_{+-i} = mu +- sqrt(D + lambda) (R S)[:, i] (D = 3) go through the
exact camera; the 2D mean and covariance are re-fitted from their images with the unscented
weights (alpha = 1, beta = 2, kappa = 0 as in 3DGUT: lambda = 0, w_0^m = 0, w_0^c = 2, w_i = 1/6).
A Gaussian is culled when any sigma point has no valid image (behind a pinhole camera, outside the
distortion's monotonic range), as 3DGUT does. With a rolling shutter each sigma point is projected
with the pose at its own read-out time, found by fixed-point iteration (the time of the pixel it
lands on, 4 rounds, the last one differentiable with the time held).

Then the blur, conic, compensation and radius follow the EWA path exactly (`torch_ref.footprint_2d`),
so compositing is unchanged on every backend. Pure torch, differentiable by autograd, any dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..camera_models import interpolate_viewmats, monotonic_limit, project_points, rolling_shutter_time
from .torch_ref import footprint_2d, quat_scale_to_factor

UT_ALPHA, UT_BETA, UT_KAPPA = 1.0, 2.0, 0.0
RS_ITERATIONS = 4


def sigma_points(means: Tensor, factors: Tensor) -> Tensor:
    """[N,3] means and [N,3,3] factors L (L L^T = covariance) -> [N, 7, 3] sigma points."""
    D = 3
    lam = UT_ALPHA ** 2 * (D + UT_KAPPA) - D
    cols = (D + lam) ** 0.5 * factors.transpose(-1, -2)  # [N, 3, 3]: row i = scaled column i
    return torch.cat([means[:, None], means[:, None] + cols, means[:, None] - cols], 1)


def ut_weights(dtype, device):
    """(mean weights [7], covariance weights [7]) of the unscented transform."""
    D = 3
    lam = UT_ALPHA ** 2 * (D + UT_KAPPA) - D
    wi = 1.0 / (2 * (D + lam))
    wm = torch.full((2 * D + 1,), wi, dtype=dtype, device=device)
    wc = wm.clone()
    wm[0] = lam / (D + lam)
    wc[0] = lam / (D + lam) + (1 - UT_ALPHA ** 2 + UT_BETA)
    return wm, wc


def covariance_factors(quats: Optional[Tensor], scales: Optional[Tensor], covars: Optional[Tensor]) -> Tensor:
    """L with L L^T = Sigma: R diag(scales) for quats/scales, a (jittered) Cholesky factor for covars."""
    if covars is None:
        return quat_scale_to_factor(quats, scales)
    eye = torch.eye(3, dtype=covars.dtype, device=covars.device)
    jitter = 1e-12 + 1e-9 * covars.diagonal(dim1=-2, dim2=-1).abs().amax(-1)[..., None, None]
    L, _ = torch.linalg.cholesky_ex(0.5 * (covars + covars.transpose(-1, -2)) + jitter * eye)
    return L


def project_ut(means: Tensor, quats: Optional[Tensor], scales: Optional[Tensor], opacities: Optional[Tensor],
               viewmats: Tensor, Ks: Tensor, width: int, height: int, eps2d: float = 0.3, near_plane: float = 0.01,
               far_plane: float = 1e10, radius_clip: float = 0.0, antialiased: bool = False,
               camera_model: str = "pinhole", radial_coeffs: Optional[Tensor] = None,
               tangential_coeffs: Optional[Tensor] = None, thin_prism_coeffs: Optional[Tensor] = None,
               rolling_shutter: str = "global", viewmats_rs: Optional[Tensor] = None,
               covars: Optional[Tensor] = None):
    """`torch_ref.project`'s outputs (radii [C,N,2] int32, means2d [C,N,2], depths [C,N], conics [C,N,3],
    compensations [C,N]) by the unscented transform through any camera model. Depth is the mean's Z in
    the camera at read-out time 0 (the pose ``viewmats``), for a fisheye its distance from the camera
    centre (a fisheye sees Gaussians beside and behind its image plane)."""
    L = covariance_factors(quats, scales, covars)
    pts = sigma_points(means, L)  # [N, 7, 3]
    wm, wc = ut_weights(means.dtype, means.device)
    limits = monotonic_limit(camera_model, radial_coeffs, tangential_coeffs, thin_prism_coeffs).to(means.device)

    def to_camera(V):  # V [C, 4, 4] or [C, N, 7, 4, 4] -> the sigma points in the camera, [C, N, 7, 3]
        if V.dim() == 3:
            return torch.einsum("cij,nkj->cnki", V[:, :3, :3], pts) + V[:, None, None, :3, 3]
        return (V[..., :3, :3] @ pts[None, ..., None])[..., 0] + V[..., :3, 3]

    def project(p):
        return project_points(p, Ks, camera_model, radial_coeffs, tangential_coeffs, thin_prism_coeffs, near_plane,
                              limits)

    p0 = to_camera(viewmats)
    uv, valid = project(p0)
    if rolling_shutter != "global":
        with torch.no_grad():
            for _ in range(RS_ITERATIONS - 1):
                t = rolling_shutter_time(uv, width, height, rolling_shutter)
                uv, valid = project(to_camera(interpolate_viewmats(viewmats, viewmats_rs, t)))
            t = rolling_shutter_time(uv, width, height, rolling_shutter)
        uv, valid = project(to_camera(interpolate_viewmats(viewmats, viewmats_rs, t)))
    ok = valid.all(-1)
    uv = torch.where(ok[..., None, None], uv, torch.zeros_like(uv))
    mean2d = (wm[:, None] * uv).sum(-2)  # [C, N, 2]
    d = uv - mean2d[..., None, :]
    cov2d = (wc[:, None, None] * d[..., :, None] * d[..., None, :]).sum(-3)  # [C, N, 2, 2]
    # depth: the mean's Z; a fisheye sees past its image plane, so there it is the distance from the camera
    z = p0[..., 0, :].norm(dim=-1) if camera_model == "fisheye" else p0[..., 0, 2]
    ok = ok & (z >= near_plane) & (z <= far_plane)
    return footprint_2d(mean2d, cov2d, z, ok, opacities, width, height, eps2d, radius_clip, antialiased)
