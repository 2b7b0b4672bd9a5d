"""Camera models in torch: projection of camera-space points to pixels, pixels to rays, lens
distortion and rolling shutter. The one place for this math: the rasterizer's unscented
projection (`splat.ut`), the ray tracer's ray generation (`splat.backends.raytrace`) and the
image undistortion of the loaders (`splat.data.distortion`, through `distort_normalized`) all
call it.

Models and coefficients follow gsplat's ``rasterization`` (and so 3DGUT's):

``pinhole`` with OpenCV distortion (``radial_coeffs`` [C,6] = k1..k6, ``tangential_coeffs`` [C,2]
= p1, p2, ``thin_prism_coeffs`` [C,4] = s1..s4), on normalised coordinates x = X/Z, y = Y/Z::

    r2 = x^2 + y^2
    radial = (1 + k1 r2 + k2 r2^2 + k3 r2^3) / (1 + k4 r2 + k5 r2^2 + k6 r2^3)
    xd = x radial + 2 p1 x y + p2 (r2 + 2 x^2) + s1 r2 + s2 r2^2
    yd = y radial + 2 p2 x y + p1 (r2 + 2 y^2) + s3 r2 + s4 r2^2
    u = fx xd + cx,  v = fy yd + cy

``fisheye``: Kannala-Brandt (OpenCV fisheye, COLMAP OPENCV_FISHEYE; ``radial_coeffs`` [C,4])::

    theta = atan2(sqrt(X^2 + Y^2), Z)
    theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)
    u = fx theta_d X / sqrt(X^2 + Y^2) + cx   (equidistant when every k is 0)

so a fisheye sees points behind the image plane (theta up to the model's monotonic limit).

``ortho``: u = fx X + cx, v = fy Y + cy (fx in pixels per world unit), rays all along +Z.

Pixels use the corner convention: the centre of pixel (i, j) is (j + 0.5, i + 0.5).

A projection is *valid* where the model is one-to-one: in front of the camera (pinhole Z > 0),
inside the radius where the radial distortion stays monotonic (d r_d / d r > 0, found per camera
numerically) and, with tangential or thin-prism terms, where the distortion's Jacobian keeps its
orientation, so strong coefficients cannot fold far-away points back into the image.

Rolling shutter (gsplat's ``RollingShutterType``): the camera moves from ``viewmats`` (the first
row or column exposed) to ``viewmats_rs`` (the last) while the sensor is read; a pixel's pose is the
interpolation (centres linearly, rotations by slerp) at its read-out time in [0, 1].
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["CAMERA_MODELS", "ROLLING_SHUTTER", "distort_normalized", "project_points", "camera_rays",
           "undistort_normalized", "pixel_rays", "rolling_shutter_time", "interpolate_viewmats",
           "check_camera_args"]

from .cameras import CAMERA_MODELS, ROLLING_SHUTTER, check_camera_args, rolling_shutter_name  # noqa: F401


def is_distorted(radial_coeffs, tangential_coeffs, thin_prism_coeffs) -> bool:
    """True when any distortion coefficient is given and non-zero."""
    return any(t is not None and bool((t != 0).any()) for t in (radial_coeffs, tangential_coeffs, thin_prism_coeffs))


# ------------------------------------------------------------------ distortion on normalised coordinates
def _poly(coeffs: Optional[Tensor], t: Tensor) -> Tensor:
    """1 + c1 t + c2 t^2 + ... for coeffs [..., n] (broadcast against t [...]); 1 for None."""
    out = torch.zeros_like(t)
    if coeffs is None or coeffs.shape[-1] == 0:
        return out + 1.0
    for i in range(coeffs.shape[-1] - 1, -1, -1):
        out = (out + coeffs[..., i]) * t
    return out + 1.0


def distort_normalized(x: Tensor, y: Tensor, kind: str, radial: Optional[Tensor] = None,
                       radial_den: Optional[Tensor] = None, tangential: Optional[Tensor] = None,
                       thin_prism: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Distort normalised coordinates (x = X/Z, y = Y/Z, in front of the camera).

    kind ``"radtan"``: OpenCV radial-tangential-thin-prism (module docstring) with a numerator
    polynomial in r2 of any length ``radial`` [..., n] and a denominator ``radial_den`` [..., m];
    ``"fisheye"``: Kannala-Brandt with ``radial`` [..., n] in theta^2 (theta = atan(r)).
    Coefficient tensors broadcast against x, y over their leading axes. Differentiable."""
    if kind == "fisheye":
        r2 = x * x + y * y
        small = r2 < 1e-20
        r = torch.sqrt(torch.where(small, torch.ones_like(r2), r2))
        theta = torch.atan(r)
        scale = torch.where(small, torch.ones_like(r), theta * _poly(radial, theta * theta) / r)
        return x * scale, y * scale
    if kind != "radtan":
        raise ValueError(f"unknown distortion kind {kind!r}")
    r2 = x * x + y * y
    radial_f = _poly(radial, r2)
    if radial_den is not None:
        radial_f = radial_f / _poly(radial_den, r2)
    xd, yd = x * radial_f, y * radial_f
    if tangential is not None:
        p1, p2 = tangential[..., 0], tangential[..., 1]
        xd = xd + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
        yd = yd + 2.0 * p2 * x * y + p1 * (r2 + 2.0 * y * y)
    if thin_prism is not None:
        xd = xd + thin_prism[..., 0] * r2 + thin_prism[..., 1] * r2 * r2
        yd = yd + thin_prism[..., 2] * r2 + thin_prism[..., 3] * r2 * r2
    return xd, yd


def _split_radial(radial_coeffs: Optional[Tensor]):
    """gsplat's pinhole radial_coeffs [..., 6] -> (numerator k1..k3, denominator k4..k6)."""
    if radial_coeffs is None:
        return None, None
    return radial_coeffs[..., :3], radial_coeffs[..., 3:]


@torch.no_grad()
def monotonic_limit(camera_model: str, radial_coeffs: Optional[Tensor], tangential_coeffs: Optional[Tensor] = None,
                    thin_prism_coeffs: Optional[Tensor] = None) -> Tensor:
    """Per camera [C], the largest undistorted radius (pinhole: r = |(x, y)|, searched up to 10;
    fisheye: the angle theta from the axis) up to which the model's radial mapping r -> r_d keeps
    increasing. Infinity where nothing limits it (no radial coefficients; fisheye: pi). Tangential
    and thin-prism terms are checked per point by `project_points` instead."""
    if radial_coeffs is None:
        C = 1 if tangential_coeffs is None else tangential_coeffs.shape[0]
        dev = (tangential_coeffs if tangential_coeffs is not None else torch.zeros(1)).device
        return torch.full((C,), math.pi if camera_model == "fisheye" else math.inf, dtype=torch.float64, device=dev)
    k = radial_coeffs.double()
    hi = math.pi if camera_model == "fisheye" else 10.0
    r = torch.linspace(0.0, hi, 4097, dtype=torch.float64, device=k.device)[None, :]  # [1, S]
    if camera_model == "fisheye":
        rd = r * _poly(k[:, None, :], r * r)
    else:
        num, den = _split_radial(k[:, None, :])
        rd = r * _poly(num, r * r) / _poly(den, r * r)
        rd = torch.where(_poly(den, r * r) > 0, rd, torch.full_like(rd, -math.inf))
    bad = (rd[:, 1:] - rd[:, :-1]) <= 0  # [C, S-1]
    first = torch.where(bad.any(1), bad.float().argmax(1), torch.full_like(bad[:, 0], bad.shape[1], dtype=torch.long))
    lim = r[0, first.clamp(max=r.shape[1] - 1)]
    return torch.where(bad.any(1), lim, torch.full_like(lim, math.pi if camera_model == "fisheye" else math.inf))


# ------------------------------------------------------------------ projection
def project_points(p: Tensor, Ks: Tensor, camera_model: str = "pinhole", radial_coeffs: Optional[Tensor] = None,
                   tangential_coeffs: Optional[Tensor] = None, thin_prism_coeffs: Optional[Tensor] = None,
                   near_plane: float = 0.0, limits: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Camera-space points p [C, ..., 3] -> pixels [C, ..., 2] and validity [C, ...] (bool).

    Ks [C,3,3]; coefficients [C, k] (see the module docstring). ``near_plane``: pinhole and ortho
    points need Z >= near_plane, fisheye points a distance >= near_plane. ``limits``: the models'
    `monotonic_limit` [C] (computed when None). Invalid points get finite stand-in pixels.
    Differentiable (autograd) in p, Ks and the coefficients."""
    C = p.shape[0]
    view = (C,) + (1,) * (p.dim() - 2)

    def per_cam(t):  # [C, k] -> [C, 1.., k]
        return None if t is None else t.reshape(view + t.shape[-1:])

    fx, fy = Ks[:, 0, 0].reshape(view), Ks[:, 1, 1].reshape(view)
    cx, cy = Ks[:, 0, 2].reshape(view), Ks[:, 1, 2].reshape(view)
    X, Y, Z = p.unbind(-1)
    if camera_model == "ortho":
        return torch.stack([fx * X + cx, fy * Y + cy], -1), Z >= near_plane
    if limits is None:
        limits = monotonic_limit(camera_model, radial_coeffs, tangential_coeffs, thin_prism_coeffs)
    lim = limits.to(p.dtype).reshape(view) if limits.numel() == C else limits.to(p.dtype).reshape(-1)[0]
    if camera_model == "fisheye":
        r2 = X * X + Y * Y
        small = r2 < 1e-20
        r = torch.sqrt(torch.where(small, torch.ones_like(r2), r2))
        theta = torch.atan2(r, Z)
        td = theta * _poly(per_cam(radial_coeffs), theta * theta)
        dist = torch.sqrt(r2 + Z * Z)
        zs = torch.where(Z.abs() > 1e-20, Z, torch.full_like(Z, 1e-20))
        scale = torch.where(small, _poly(per_cam(radial_coeffs), theta * theta) / zs, td / r)
        valid = (dist >= near_plane) & (theta < lim) & ~(small & (Z <= 0))
        return torch.stack([fx * X * scale + cx, fy * Y * scale + cy], -1), valid
    if camera_model != "pinhole":
        raise ValueError(f"unknown camera_model {camera_model!r}")
    front = Z >= max(near_plane, 1e-12)
    zs = torch.where(front, Z, torch.ones_like(Z))
    x, y = X / zs, Y / zs
    valid = front & (torch.sqrt(x * x + y * y) < lim)
    num, den = _split_radial(per_cam(radial_coeffs))
    tang, prism = per_cam(tangential_coeffs), per_cam(thin_prism_coeffs)
    xd, yd = distort_normalized(x, y, "radtan", num, den, tang, prism)
    if tang is not None or prism is not None:  # these terms fold the plane where the map's Jacobian turns
        with torch.no_grad():
            h = 1e-4
            ax, ay = distort_normalized(x + h, y, "radtan", num, den, tang, prism)
            bx, by = distort_normalized(x, y + h, "radtan", num, den, tang, prism)
            valid = valid & ((ax - xd) * (by - yd) - (bx - xd) * (ay - yd) > 0)
    return torch.stack([fx * xd + cx, fy * yd + cy], -1), valid


# ------------------------------------------------------------------ rays
def undistort_normalized(xd: Tensor, yd: Tensor, kind: str, radial: Optional[Tensor] = None,
                         radial_den: Optional[Tensor] = None, tangential: Optional[Tensor] = None,
                         thin_prism: Optional[Tensor] = None, iters: int = 20) -> Tuple[Tensor, Tensor]:
    """Invert `distort_normalized` (same arguments) by damped Newton steps with a finite-difference
    Jacobian (float64 inputs advised), stopping early once every point maps back to within 1e-12.
    Returns the undistorted x, y; the caller checks the residual (points outside the model's
    monotonic range may not converge)."""
    x, y = xd.clone(), yd.clone()
    h = 1e-7
    for _ in range(iters):
        fx_, fy_ = distort_normalized(x, y, kind, radial, radial_den, tangential, thin_prism)
        ex, ey = fx_ - xd, fy_ - yd
        if bool((ex.abs() + ey.abs() < 1e-12).all()):
            break
        ax, ay = distort_normalized(x + h, y, kind, radial, radial_den, tangential, thin_prism)
        bx, by = distort_normalized(x, y + h, kind, radial, radial_den, tangential, thin_prism)
        j11, j21, j12, j22 = (ax - fx_) / h, (ay - fy_) / h, (bx - fx_) / h, (by - fy_) / h
        det = j11 * j22 - j12 * j21
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        dx, dy = (j22 * ex - j12 * ey) / det, (-j21 * ex + j11 * ey) / det
        # damp very large steps (they happen far outside the model's monotonic range)
        step = torch.sqrt(dx * dx + dy * dy)
        lim = 0.5 * (1.0 + torch.sqrt(x * x + y * y))
        damp = torch.where(step > lim, lim / step.clamp_min(1e-300), torch.ones_like(step))
        x, y = x - dx * damp, y - dy * damp
    return x, y


def _undistort_pinhole(xd: Tensor, yd: Tensor, radial, tangential, thin_prism, limit):
    """The OpenCV model inverted (`undistort_normalized`); returns x, y and the points that converged
    inside the monotonic radius."""
    num, den = _split_radial(radial)
    x, y = undistort_normalized(xd, yd, "radtan", num, den, tangential, thin_prism)
    fx_, fy_ = distort_normalized(x, y, "radtan", num, den, tangential, thin_prism)
    ok = ((fx_ - xd).abs() + (fy_ - yd).abs() < 1e-7) & (torch.sqrt(x * x + y * y) < limit)
    return x, y, ok


def _fisheye_theta(rd: Tensor, radial: Optional[Tensor], limit: Tensor, iters: int = 20):
    """Solve theta_d(theta) = rd for theta (Newton, float64); returns theta and convergence."""
    theta = rd.clone()
    if radial is not None:
        k = radial
        for _ in range(iters):
            t2 = theta * theta
            f = theta * _poly(k, t2) - rd
            df = 1 + 3 * k[..., 0] * t2 + 5 * k[..., 1] * t2 ** 2 + 7 * k[..., 2] * t2 ** 3 + 9 * k[..., 3] * t2 ** 4
            theta = (theta - f / torch.where(df.abs() < 1e-12, torch.full_like(df, 1e-12), df)).clamp(0.0, math.pi)
        ok = (theta * _poly(k, theta * theta) - rd).abs() < 1e-7
    else:
        ok = torch.ones_like(rd, dtype=torch.bool)
    return theta, ok & (theta < limit)


def pixel_rays(pixels: Tensor, Ks: Tensor, camera_model: str = "pinhole", radial_coeffs: Optional[Tensor] = None,
               tangential_coeffs: Optional[Tensor] = None, thin_prism_coeffs: Optional[Tensor] = None
               ) -> Tuple[Tensor, Tensor, Tensor]:
    """Camera-space rays through pixels [C, P, 2] (pixel coordinates, centres at +0.5).

    Returns origins [C, P, 3] (zero but for ortho), unit directions [C, P, 3] and validity
    [C, P] (the pixel is the image of some point: the distortion inverts there). Computed in
    float64, returned in the dtype of `pixels`. Not differentiable (rays are data)."""
    dt = pixels.dtype
    pix = pixels.double()
    K = Ks.double()
    fx, fy, cx, cy = (K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 2, None], K[:, 1, 2, None])
    xd = (pix[..., 0] - cx) / fx
    yd = (pix[..., 1] - cy) / fy
    ones = torch.ones_like(xd)
    if camera_model == "ortho":
        o = torch.stack([xd, yd, torch.zeros_like(xd)], -1)
        d = torch.stack([torch.zeros_like(xd), torch.zeros_like(xd), ones], -1)
        return o.to(dt), d.to(dt), torch.ones_like(xd, dtype=torch.bool)

    def per_cam(t):
        return None if t is None else t.double()[:, None, :]

    limits = monotonic_limit(camera_model, radial_coeffs, tangential_coeffs, thin_prism_coeffs)
    limits = limits.to(pix.device)[:, None] if limits.numel() == pix.shape[0] else limits.to(pix.device).reshape(1, 1)
    if camera_model == "fisheye":
        rd = torch.sqrt(xd * xd + yd * yd)
        theta, ok = _fisheye_theta(rd, per_cam(radial_coeffs), limits)
        s = torch.where(rd > 1e-15, torch.sin(theta) / rd.clamp_min(1e-15), ones)
        d = torch.stack([xd * s, yd * s, torch.cos(theta)], -1)
    elif camera_model == "pinhole":
        if is_distorted(radial_coeffs, tangential_coeffs, thin_prism_coeffs):
            x, y, ok = _undistort_pinhole(xd, yd, per_cam(radial_coeffs), per_cam(tangential_coeffs),
                                          per_cam(thin_prism_coeffs), limits)
        else:
            x, y, ok = xd, yd, torch.ones_like(xd, dtype=torch.bool)
        d = torch.stack([x, y, ones], -1)
    else:
        raise ValueError(f"unknown camera_model {camera_model!r}")
    d = d / d.norm(dim=-1, keepdim=True)
    return torch.zeros_like(d).to(dt), d.to(dt), ok


def rolling_shutter_time(pixels: Tensor, width: int, height: int, rolling_shutter: str) -> Tensor:
    """Read-out time in [0, 1] of pixel positions [..., 2] under a rolling shutter (row or column
    index over the last one; 0 everywhere for ``"global"``)."""
    u, v = pixels[..., 0] - 0.5, pixels[..., 1] - 0.5
    if rolling_shutter == "global":
        return torch.zeros_like(u)
    if rolling_shutter in ("top_to_bottom", "bottom_to_top"):
        t = v / max(height - 1, 1)
    else:
        t = u / max(width - 1, 1)
    t = t.clamp(0.0, 1.0)
    return 1.0 - t if rolling_shutter in ("bottom_to_top", "right_to_left") else t


def _so3_log(R: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> rotation vectors [..., 3] (axis times angle, angle <= pi; at a
    half turn, one of the two equal arcs)."""
    cos = ((R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1) / 2).clamp(-1.0, 1.0)
    angle = torch.acos(cos)
    w = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    s = torch.sin(angle)
    small = s.abs() < 1e-6
    scale = angle / (2 * torch.where(small, torch.ones_like(s), s))
    out = torch.where(small[..., None], 0.5 * w, w * scale[..., None])
    # near a half turn sin -> 0 and w loses the axis: take it from (R + I) / 2 = a a^T
    B = 0.5 * (R + torch.eye(3, dtype=R.dtype, device=R.device))
    col = B.diagonal(dim1=-2, dim2=-1).argmax(-1)
    a = torch.gather(B, -1, col[..., None, None].expand(B.shape[:-1] + (1,)))[..., 0]
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    half = small & (cos < 0)
    return torch.where(half[..., None], a * angle[..., None], out)


def _so3_exp(v: Tensor) -> Tensor:
    """Rotation vectors [..., 3] -> rotation matrices [..., 3, 3] (Rodrigues)."""
    angle = v.norm(dim=-1)
    small = angle < 1e-12
    k = v / torch.where(small, torch.ones_like(angle), angle)[..., None]
    K = torch.zeros(v.shape[:-1] + (3, 3), dtype=v.dtype, device=v.device)
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K[..., 1, 0], K[..., 2, 0], K[..., 2, 1] = k[..., 2], -k[..., 1], k[..., 0]
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    return torch.where(small[..., None, None], eye, eye + s * K + (1 - c) * (K @ K))


def interpolate_viewmats(viewmats: Tensor, viewmats_rs: Tensor, t: Tensor) -> Tensor:
    """World-to-camera poses at times t [C, ...] between viewmats [C,4,4] (t = 0) and viewmats_rs
    (t = 1): camera centres linearly, rotations along the shortest arc (slerp, as exp(t log(R1 R0^T)) R0).
    Returns [C, ..., 4, 4]."""
    C = viewmats.shape[0]
    view = (C,) + (1,) * (t.dim() - 1)
    R0, R1 = viewmats[:, :3, :3], viewmats_rs[:, :3, :3]
    c0 = -(R0.transpose(1, 2) @ viewmats[:, :3, 3:])[..., 0]
    c1 = -(R1.transpose(1, 2) @ viewmats_rs[:, :3, 3:])[..., 0]
    w = _so3_log(R1 @ R0.transpose(1, 2))  # [C, 3]
    R = _so3_exp(t[..., None] * w.reshape(view + (3,))) @ R0.reshape(view + (3, 3))
    tt = t[..., None]
    c = (1 - tt) * c0.reshape(view + (3,)) + tt * c1.reshape(view + (3,))
    out = torch.zeros(R.shape[:-2] + (4, 4), dtype=viewmats.dtype, device=viewmats.device)
    out[..., :3, :3] = R
    out[..., :3, 3] = -(R @ c[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


_RAY_CACHE: "dict" = {}
_RAY_CACHE_SIZE = 4  # entries, each of at most _RAY_CACHE_PIXELS rays (56 MB)
_RAY_CACHE_PIXELS = 1 << 20


def _pixel_centres(C: int, width: int, height: int, device) -> Tensor:
    """Every pixel centre in row-major order, [C, H*W, 2] float64."""
    jj, ii = torch.meshgrid(torch.arange(width, device=device, dtype=torch.float64),
                            torch.arange(height, device=device, dtype=torch.float64), indexing="xy")
    return torch.stack([jj + 0.5, ii + 0.5], -1).reshape(1, -1, 2).expand(C, -1, -1)


def _image_rays(Ks, width, height, camera_model, radial_coeffs, tangential_coeffs, thin_prism_coeffs):
    """`pixel_rays` of every pixel centre, kept for the last few intrinsics (they depend on no pose;
    training renders the same cameras again and again, and inverting a distortion takes Newton steps)."""
    key = (camera_model, width, height, str(Ks.device), Ks.detach().cpu().double().numpy().tobytes()) + tuple(
        None if t is None else t.detach().cpu().double().numpy().tobytes()
        for t in (radial_coeffs, tangential_coeffs, thin_prism_coeffs))
    hit = _RAY_CACHE.get(key)
    if hit is None:
        pixels = _pixel_centres(Ks.shape[0], width, height, Ks.device)
        hit = pixel_rays(pixels, Ks, camera_model, radial_coeffs, tangential_coeffs, thin_prism_coeffs)
        if pixels.shape[0] * pixels.shape[1] > _RAY_CACHE_PIXELS:
            return hit
        if len(_RAY_CACHE) >= _RAY_CACHE_SIZE:
            _RAY_CACHE.pop(next(iter(_RAY_CACHE)))
        _RAY_CACHE[key] = hit
    return hit


def camera_rays(viewmats: Tensor, Ks: Tensor, width: int, height: int, camera_model: str = "pinhole",
                radial_coeffs: Optional[Tensor] = None, tangential_coeffs: Optional[Tensor] = None,
                thin_prism_coeffs: Optional[Tensor] = None, rolling_shutter="global",
                viewmats_rs: Optional[Tensor] = None, pixels: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor, Tensor]:
    """World-space rays of C cameras: origins [C, P, 3], unit directions [C, P, 3], validity [C, P].

    ``pixels`` [C, P, 2] (pixel coordinates) or None for every pixel centre in row-major order
    (P = height * width). With a rolling shutter each pixel's ray leaves from its own
    interpolated pose (`interpolate_viewmats` at `rolling_shutter_time`)."""
    C = viewmats.shape[0]
    dt = viewmats.dtype
    if pixels is None:
        o_c, d_c, ok = _image_rays(Ks, width, height, camera_model, radial_coeffs, tangential_coeffs,
                                   thin_prism_coeffs)
    else:
        o_c, d_c, ok = pixel_rays(pixels.double(), Ks, camera_model, radial_coeffs, tangential_coeffs,
                                  thin_prism_coeffs)
    rs = rolling_shutter_name(rolling_shutter)
    if rs == "global":
        V = viewmats.double()[:, None]  # [C, 1, 4, 4]
    else:
        if pixels is None:
            pixels = _pixel_centres(C, width, height, viewmats.device)
        V = interpolate_viewmats(viewmats.double(), viewmats_rs.double(),
                                 rolling_shutter_time(pixels.double(), width, height, rs))  # [C, P, 4, 4]
    R, t = V[..., :3, :3], V[..., :3, 3]
    Rt = R.transpose(-1, -2)
    origins = (Rt @ (o_c - t)[..., None])[..., 0]
    dirs = (Rt @ d_c[..., None])[..., 0]
    return origins.to(dt), dirs.to(dt), ok
