"""Lens distortion models and image undistortion to a pinhole camera (numpy arrays; the formulas of
the models and their inversion are those of `splat.camera_models`, the renderer's).

Coordinates: ``x, y`` are normalised camera coordinates (``X/Z, Y/Z`` in the OpenCV camera frame);
pixels use the corner convention (the centre of pixel ``(i, j)`` is at ``(j + 0.5, i + 0.5)``, as in
COLMAP, gsplat and PIL), so ``u = fx * x + cx``.

Two families cover the COLMAP and nerfstudio models that the loaders accept:

``radtan`` (perspective, OpenCV/Brown-Conrady)::

    r2 = x^2 + y^2
    radial = (1 + a1 r2 + a2 r2^2 + a3 r2^3 + a4 r2^4) / (1 + b1 r2 + b2 r2^2 + b3 r2^3)
    xd = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
    yd = y radial + 2 p2 x y + p1 (r2 + 2 y^2)

COLMAP's SIMPLE_RADIAL (k), RADIAL (k1, k2), OPENCV (k1, k2, p1, p2) and FULL_OPENCV
(k1..k6, p1, p2: numerator k1 k2 k3, denominator k4 k5 k6) and nerfstudio's perspective model
(numerator k1 k2 k3 k4, no denominator) are all special cases.

``fisheye`` (equidistant with a polynomial in theta, OpenCV's fisheye / COLMAP OPENCV_FISHEYE)::

    r = sqrt(x^2 + y^2); theta = atan(r)
    theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)
    xd = x theta_d / r,  yd = y theta_d / r

covering COLMAP's SIMPLE_FISHEYE, FISHEYE (no coefficients), SIMPLE_RADIAL_FISHEYE (k),
RADIAL_FISHEYE (k1, k2), OPENCV_FISHEYE (k1..k4) and nerfstudio's OPENCV_FISHEYE.

Undistortion is an inverse mapping: for each pixel of the output pinhole camera we distort its
normalised coordinate with the forward model and sample the input image bilinearly there.
The output camera keeps the input's width, height and pixel aspect ratio (fy / fx) and gets a new
``K`` chosen so that every output pixel maps inside the input image (inside the largest
axis-aligned rectangle of valid pixels, in the spirit of OpenCV's
``getOptimalNewCameraMatrix(alpha=0)`` that gsplat uses, but with one zoom for both axes so square
pixels stay square): no blank borders to train on, at the price of a little field of view along
one axis. For zero distortion the new ``K`` equals the old one exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DistortionError(ValueError):
    """The distortion cannot be inverted over the image (too strong, or non-monotonic there)."""


@dataclass(frozen=True)
class Distortion:
    kind: str  # "radtan" | "fisheye"
    radial: tuple[float, ...] = ()  # radtan: numerator coefficients of r2, r2^2, ...; fisheye: of theta^2, theta^4, ...
    radial_den: tuple[float, ...] = ()  # radtan only: denominator coefficients of r2, r2^2, r2^3
    tangential: tuple[float, float] = (0.0, 0.0)  # radtan only: p1, p2

    def __post_init__(self):
        if self.kind not in ("radtan", "fisheye"):
            raise ValueError(f"unknown distortion kind {self.kind!r}")

    @property
    def is_identity(self) -> bool:
        """True when the model is an undistorted pinhole (an equidistant fisheye never is)."""
        if self.kind == "fisheye":
            return False
        return not any(self.radial) and not any(self.radial_den) and not any(self.tangential)

    def describe(self) -> str:
        if self.kind == "fisheye":
            return "fisheye k=" + ", ".join(f"{k:g}" for k in self.radial)
        parts = [f"k={', '.join(f'{k:g}' for k in self.radial)}"]
        if any(self.radial_den):
            parts.append(f"k_den={', '.join(f'{k:g}' for k in self.radial_den)}")
        parts.append(f"p={self.tangential[0]:g}, {self.tangential[1]:g}")
        return "radial-tangential " + "; ".join(parts)

    def _model(self) -> tuple:
        """(kind, radial, radial_den, tangential) as float64 tensors (None where absent): the arguments of
        `splat.camera_models.distort_normalized` / `undistort_normalized`, which hold the formulas."""
        co = (lambda c: _tensor(c) if len(c) else None)
        tangential = _tensor(self.tangential) if self.kind == "radtan" else None
        return self.kind, co(self.radial), co(self.radial_den), tangential

    def distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward model: undistorted normalised coordinates -> distorted normalised coordinates
        (float64; the formula is `splat.camera_models.distort_normalized`, the renderer's)."""
        from ..camera_models import distort_normalized

        xd, yd = distort_normalized(_tensor(x), _tensor(y), *self._model())
        return xd.numpy(), yd.numpy()

    def camera_args(self) -> tuple[str, np.ndarray | None, np.ndarray | None]:
        """This model as the renderer's camera arguments (gsplat's): ``(camera_model, radial_coeffs,
        tangential_coeffs)`` with radial_coeffs of 6 (pinhole: OpenCV k1..k3 over k4..k6) or 4
        (fisheye: Kannala-Brandt k1..k4) entries, None where all zero. Raises ``DistortionError``
        for a model the renderer cannot represent (a numerator beyond r^6, as nerfstudio's k4)."""
        if self.kind == "fisheye":
            if len(self.radial) > 4 and any(self.radial[4:]):
                raise DistortionError(f"the {self.describe()} model has more than 4 fisheye coefficients")
            k = np.zeros(4)
            k[:min(4, len(self.radial))] = self.radial[:4]
            return "fisheye", (k if k.any() else None), None
        if len(self.radial) > 3 and any(self.radial[3:]):
            raise DistortionError(f"the {self.describe()} model has a radial term beyond r^6 in its numerator, which "
                                  f"the renderer's OpenCV model (k1..k3 over k4..k6) cannot represent")
        k = np.zeros(6)
        k[:min(3, len(self.radial))] = self.radial[:3]
        k[3:3 + min(3, len(self.radial_den))] = self.radial_den[:3]
        p = np.asarray(self.tangential, dtype=np.float64)
        return "pinhole", (k if k.any() else None), (p if p.any() else None)

    def undistort_points(self, xd: np.ndarray, yd: np.ndarray, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """Inverse model (`splat.camera_models.undistort_normalized`: damped Newton steps). Raises
        DistortionError when some point does not converge."""
        from ..camera_models import undistort_normalized

        xu, yu = undistort_normalized(_tensor(xd), _tensor(yd), *self._model(), iters=iters)
        x, y = xu.numpy(), yu.numpy()
        fx, fy = self.distort(x, y)
        err = np.abs(fx - xd) + np.abs(fy - yd)
        if not np.all(np.isfinite(err)) or np.max(err, initial=0.0) > 1e-6:
            raise DistortionError(
                f"the {self.describe()} distortion could not be inverted over the image "
                f"(residual {np.nanmax(err):.2g}); the coefficients are too strong or not monotonic there"
            )
        return x, y


def _tensor(v):
    import torch

    return torch.as_tensor(np.ascontiguousarray(v, dtype=np.float64))


def valid_pinhole_K(K: np.ndarray, dist: Distortion, width: int, height: int, samples: int = 256) -> np.ndarray:
    """A pinhole K for the undistorted image of the same size, with the input's pixel aspect ratio
    ``fy / fx``, whose pixel centres all map inside the input image's pixel-centre extent
    ``[0.5, w - 0.5] x [0.5, h - 0.5]``.

    The border of the input image is undistorted; the largest axis-aligned rectangle inside it is
    ``[max(left edge), min(right edge)] x [max(top edge), min(bottom edge)]`` (OpenCV's inner
    rectangle). The new focal length is the smallest one (least zoom) that fits the output pixel
    centres inside that rectangle in both axes, and the principal point centres the output on it.
    For zero distortion this returns K unchanged.
    """
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    us = np.linspace(0.5, width - 0.5, samples)
    vs = np.linspace(0.5, height - 0.5, samples)
    left = np.stack([np.full_like(vs, 0.5), vs], -1)
    right = np.stack([np.full_like(vs, width - 0.5), vs], -1)
    top = np.stack([us, np.full_like(us, 0.5)], -1)
    bottom = np.stack([us, np.full_like(us, height - 0.5)], -1)
    pts = np.concatenate([left, right, top, bottom], 0)
    x, y = dist.undistort_points((pts[:, 0] - cx) / fx, (pts[:, 1] - cy) / fy)
    n = samples
    x0, x1 = np.max(x[:n]), np.min(x[n : 2 * n])
    y0, y1 = np.max(y[2 * n : 3 * n]), np.min(y[3 * n :])
    if not (x1 > x0 and y1 > y0):
        raise DistortionError(f"the {dist.describe()} distortion leaves no valid undistorted region")
    ratio = fy / fx
    need_x = (width - 1) / (x1 - x0) if width > 1 else 0.0
    need_y = (height - 1) / (y1 - y0) / ratio if height > 1 else 0.0
    fxn = max(need_x, need_y) if max(need_x, need_y) > 0 else fx
    fyn = ratio * fxn
    cxn = width / 2.0 - fxn * 0.5 * (x0 + x1)
    cyn = height / 2.0 - fyn * 0.5 * (y0 + y1)
    return np.array([[fxn, 0.0, cxn], [0.0, fyn, cyn], [0.0, 0.0, 1.0]])


@dataclass
class UndistortMap:
    """Precomputed bilinear remap from a distorted camera to a pinhole one (same size): for each output
    pixel the flat indices of its four source neighbours and their weights."""

    K_new: np.ndarray
    width: int
    height: int
    idx: np.ndarray  # [4, H*W] intp flat source indices (i0j0, i0j1, i1j0, i1j1)
    w: np.ndarray  # [4, H*W] float32 bilinear weights

    def apply(self, img: np.ndarray) -> np.ndarray:
        """Undistort an [H, W] or [H, W, C] uint8 image."""
        squeeze = img.ndim == 2
        a = img[..., None] if squeeze else img
        chans = []
        for c in range(a.shape[2]):
            flat = np.ascontiguousarray(a[..., c]).reshape(-1).astype(np.float32)
            acc = flat.take(self.idx[0]) * self.w[0]
            for k in range(1, 4):
                acc += flat.take(self.idx[k]) * self.w[k]
            chans.append(np.clip(np.rint(acc), 0, 255).astype(np.uint8))
        out = np.stack(chans, -1).reshape(self.height, self.width, a.shape[2])
        return out[..., 0] if squeeze else out


def build_undistort_map(K: np.ndarray, dist: Distortion, width: int, height: int) -> UndistortMap:
    """Inverse map for undistorting a ``width x height`` image taken with ``K`` and ``dist``."""
    K_new = valid_pinhole_K(K, dist, width, height)
    jj, ii = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    x = (jj + 0.5 - K_new[0, 2]) / K_new[0, 0]
    y = (ii + 0.5 - K_new[1, 2]) / K_new[1, 1]
    xd, yd = dist.distort(x, y)
    # source position in array coordinates (pixel centres at integers), clamped to the image
    su = np.clip(K[0, 0] * xd + K[0, 2] - 0.5, 0.0, width - 1.0).ravel()
    sv = np.clip(K[1, 1] * yd + K[1, 2] - 0.5, 0.0, height - 1.0).ravel()
    j0 = np.minimum(np.floor(su).astype(np.intp), width - 1)
    i0 = np.minimum(np.floor(sv).astype(np.intp), height - 1)
    j1 = np.minimum(j0 + 1, width - 1)
    i1 = np.minimum(i0 + 1, height - 1)
    wj = (su - j0).astype(np.float32)
    wi = (sv - i0).astype(np.float32)
    idx = np.stack([i0 * width + j0, i0 * width + j1, i1 * width + j0, i1 * width + j1])
    w = np.stack([(1 - wi) * (1 - wj), (1 - wi) * wj, wi * (1 - wj), wi * wj]).astype(np.float32)
    return UndistortMap(K_new=K_new, width=width, height=height, idx=idx, w=w)
