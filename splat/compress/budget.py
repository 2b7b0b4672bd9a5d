"""Elastic budgets: show or export a model with a fraction F of its Gaussians.

FlexGS (Liu et al., "FlexGS: Train Once, Deploy Everywhere with Many-in-One Flexible 3D Gaussian
Splatting", CVPR 2025) serves any target size from one trained model: a selection step picks the
Gaussians to keep and a transformation step adjusts the survivors so that quality degrades
gracefully. FlexGS learns both steps (small networks trained with the model); this module does
both without training, from measurements of the finished model:

1. **Selection by measured importance** (`gaussian_importance`): LightGaussian's *global
   significance* (Fan et al., "LightGaussian: Unbounded 3D Gaussian Compression with 15x Reduction
   and 200+ FPS", NeurIPS 2024, eq. 3): each Gaussian's blending weight ``alpha_i * T_i`` summed
   over every pixel of a set of views. Measured by rendering a one-channel colour of ones held as
   a leaf tensor and taking the gradient of the image's sum: d(sum of pixels)/d(colour_i) is
   exactly the sum over pixels of ``alpha_i T_i`` (one backward per batch of views). The views
   are the training cameras when known, else views around the model (`sphere_cameras`).
2. **Keep the ceil(F N) most important** (`apply_budget`), then **adjust the survivors**:

   * ``method="prune"``: nothing more (LightGaussian's pruning step);
   * ``method="merge"`` (default): every dropped Gaussian that lies near a survivor (within
     ``merge_radius`` standard deviations of it, the Mahalanobis distance in the survivor's
     covariance, among its ``merge_neighbors`` nearest survivors) is merged into the nearest such
     survivor by moment matching, as in the merge step of hierarchical 3DGS (Kerbl et al., "A
     Hierarchical 3D Gaussian Representation for Real-Time Rendering of Very Large Datasets",
     SIGGRAPH 2024), all dropped Gaussians of a survivor at once (`merge_gaussians`): with
     weights ``w_i`` the measured importance (which already holds opacity, visible area and
     occlusion), the mean is the weighted mean, the covariance the weighted second moment about
     it (``sum w_i (Sigma_i + d_i d_i^T) / sum w_i``), the SH coefficients the weighted mean, and
     the opacity keeps the group's coverage: ``log(1 - o) = sum_i (A_i / A) log(1 - o_i)`` over
     the group, ``A`` a Gaussian's cross-section area (``s1 s2 + s2 s3 + s1 s3`` of its scales),
     and never below the survivor's own. Two equal Gaussians at one place give ``1 - (1 - o)^2``
     (one over the other); two side by side give one twice as wide with the same ``o``.
   * ``distill_steps > 0`` (default 300): then a short distillation (LightGaussian's step 3,
     without its SH-degree reduction; `distill`): Adam on the survivors' parameters against
     renders of the full model (premultiplied colour and alpha, so independent of the
     background) from the given cameras. Seconds to minutes: for exports, not for the viewer
     (which passes ``distill_steps=0``, the fast path).

Measured (bench/budget.py, bench/results_budget.json): a model of 36,795 Gaussians trained for
2000 steps on a 16-view NeRF-synthetic-style object, test PSNR 31.03 dB; dB from it at F = 0.1 /
0.3 / 0.5, importance from the 16 training views (from the sphere fallback in brackets):

==================  ========================  ========================  ========================
method              F = 0.1                   F = 0.3                   F = 0.5
==================  ========================  ========================  ========================
prune               -13.49 (-14.25)           -5.45 (-6.18)             -1.24 (-1.75)
merge               -7.94 (-7.84)             -2.04 (-2.49)             -0.09 (-0.57)
prune + 300 steps   -3.97 (-4.43)             +0.15 (-0.30)             +0.26 (-0.04)
merge + 300 steps   -3.00 (-3.45)             +0.25 (-0.19)             +0.25 (-0.02)
==================  ========================  ========================  ========================

Merging beats pruning everywhere, with and without distillation, so it is the default method;
only distillation brings F = 0.3 within 1.5 dB of the full model (100 steps: +0.06 / -0.42 dB,
600: +0.31 / -0.12), so the default is merge + 300 steps (11 s here on one CPU thread). Also
measured at F = 0.3 (merge, training views, importance at the renderer's blur) and left out:
LightGaussian's volume factor (`volume_power` 0.1: -2.8 dB; 0.3: -7.0 dB), merge weights opacity
x area instead of importance (-0.9 dB), the survivor's own opacity instead of the coverage rule
(-0.8 dB; the floor at the survivor's own opacity gains +0.4 dB), keeping the survivor's shape
(-0.5 dB), a merge radius of 2 or 5 (-0.3, -0.03 dB), opacities rescaled to the group's measured
importance (+0.3 dB at 0.3, -0.5 dB at 0.1). Importance measured with a 2D blur of 1.2 px^2
(``eps2d``) instead of the renderer's 0.3 (a footprint of about a pixel for sub-pixel Gaussians,
which carry the fine detail) gains 0.9 dB at F = 0.3 and 1.5 dB at F = 0.1 (merge); the sphere
fallback's views over the upper hemisphere instead of the whole sphere gain 1.5 dB (captures
are seen from above their ground).

Everything works on the splats dict of `splat.io` (means [N,3], scales [N,3] log, quats [N,4]
wxyz, opacities [N] logits, sh0 [N,1,3], shN [N,K-1,3]); per-Gaussian extra entries (first
dimension N) are kept or dropped with their Gaussians.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras, look_at, points_scale
from ..render import NEAR_PLANE, camera_arguments, rasterize

__all__ = ["METHODS", "DEFAULT_METHOD", "DEFAULT_DISTILL_STEPS", "gaussian_importance", "apply_budget",
           "sphere_cameras", "kept_count", "merge_gaussians", "distill"]

METHODS = ("prune", "merge")
DEFAULT_METHOD = "merge"
"""The default adjustment, chosen by bench/budget.py (the module docstring's table)."""
DEFAULT_DISTILL_STEPS = 300
"""`apply_budget`'s default distillation: what brings F = 0.3 within 1.5 dB (0: the fast path)."""

SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")
MAX_OPACITY = 0.999  # merged opacities stay below this (finite logits)
TARGET_CACHE_BYTES = 1 << 30  # distillation keeps the full model's renders of its views up to this size

CameraInput = Union[Cameras, Sequence[Cameras], None]


# ----------------------------------------------------------------------------- checks


def _check_splats(splats: Mapping[str, Tensor], where: str = "splats") -> int:
    """N of a valid splats dict; ValueError naming the problem otherwise."""
    if not isinstance(splats, Mapping):
        raise ValueError(f"{where}: expected a splats dict of tensors, got {type(splats).__name__}")
    missing = [k for k in SPLAT_KEYS if k not in splats]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)} (a splats dict has {', '.join(SPLAT_KEYS)})")
    means = splats["means"]
    if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"{where}: means must be a [N, 3] tensor, got "
                         f"{list(means.shape) if isinstance(means, Tensor) else type(means).__name__}")
    N = int(means.shape[0])
    if N == 0:
        raise ValueError(f"{where}: the model is empty (0 Gaussians); there is nothing to keep")
    want = {"scales": (N, 3), "quats": (N, 4), "opacities": (N,), "sh0": (N, 1, 3)}
    for k, shape in want.items():
        v = splats[k]
        if not isinstance(v, Tensor) or tuple(v.shape) != shape:
            raise ValueError(f"{where}: {k} must have shape {list(shape)} for {N} Gaussians, got "
                             f"{list(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
    shN = splats["shN"]
    if not isinstance(shN, Tensor) or shN.dim() != 3 or shN.shape[0] != N or shN.shape[2] != 3 \
            or shN.shape[1] + 1 not in (1, 4, 9, 16):
        raise ValueError(f"{where}: shN must be [N, K-1, 3] with K in 1, 4, 9, 16, got "
                         f"{list(shN.shape) if isinstance(shN, Tensor) else type(shN).__name__}")
    return N


def _check_fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not math.isfinite(float(fraction)) \
            or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"budget fraction must be a number in (0, 1] (the share of Gaussians kept), got {fraction!r}")
    return float(fraction)


def kept_count(num_gaussians: int, fraction: float) -> int:
    """How many Gaussians a budget of `fraction` keeps out of `num_gaussians`: ceil(F N), at least
    one (a product that float rounding puts a hair above an integer counts as that integer).
    Raises ``ValueError`` for F outside (0, 1] or N < 1."""
    F = _check_fraction(fraction)
    if int(num_gaussians) < 1:
        raise ValueError(f"the model is empty ({num_gaussians} Gaussians); there is nothing to keep")
    N = int(num_gaussians)
    return max(1, min(N, math.ceil(F * N - 1e-9 * N)))


# ----------------------------------------------------------------------------- views


def sphere_cameras(means: Tensor, num_views: int = 32, resolution: int = 256, fov_deg: float = 60.0,
                   quantile: float = 0.02, min_elevation_deg: float = 0.0) -> Cameras:
    """Views that see a model known only by its Gaussians' centres: the fallback when no training
    cameras are known (a bare model file).

    The model's robust bounding box is the box between the `quantile` and ``1 - quantile``
    quantiles of the means along each axis (so a few far floaters do not shrink the object to a
    dot); its circumscribed sphere (centre: the box's centre, radius: half its diagonal) fills a
    square pinhole view of `fov_deg` degrees and `resolution` pixels. `num_views` cameras sit at
    that distance from the centre in directions spread evenly (a Fibonacci lattice) over the
    part of the sphere at least `min_elevation_deg` above the horizon, +z being up: by default
    the upper hemisphere, where a capture is seen from (NeRF-synthetic scenes, and the COLMAP and
    nerfstudio scenes `splat.data` normalises, have +z up; the viewer takes +z as up for a bare
    model too); -90 spreads them over the whole sphere. Each looks at the centre, +z up in the
    image (bench/budget.py: the upper hemisphere ranks Gaussians for test views 1.5 dB better at
    F = 0.3 than the whole sphere; 256 pixels at 60 degrees is about the training views' pixel size
    there).

    Scenes seen from inside (a room, a 360-degree capture of the surroundings) are not what these
    views see well: give such scenes' training cameras instead.

    Args:
        means: [N, 3] centres (world units), N >= 1; non-finite rows are ignored.
    Returns:
        a `Cameras` batch of `num_views` views of ``resolution x resolution`` pixels, float32 on
        the device of `means`.
    Raises:
        ValueError: no finite means, num_views < 1, resolution < 1, fov_deg outside (0, 180),
        quantile outside [0, 0.5), min_elevation_deg outside [-90, 90).
    """
    if int(num_views) < 1 or int(resolution) < 1:
        raise ValueError(f"sphere_cameras: num_views and resolution must be >= 1, got {num_views}, {resolution}")
    if not 0.0 < float(fov_deg) < 180.0:
        raise ValueError(f"sphere_cameras: fov_deg must be in (0, 180), got {fov_deg}")
    if not 0.0 <= float(quantile) < 0.5:
        raise ValueError(f"sphere_cameras: quantile must be in [0, 0.5), got {quantile}")
    if not -90.0 <= float(min_elevation_deg) < 90.0:
        raise ValueError(f"sphere_cameras: min_elevation_deg must be in [-90, 90), got {min_elevation_deg}")
    m = means.detach().double().cpu().numpy().reshape(-1, 3)
    m = m[np.isfinite(m).all(1)]
    if len(m) == 0:
        raise ValueError("sphere_cameras: the model has no finite means to look at")
    lo, hi = np.quantile(m, quantile, axis=0), np.quantile(m, 1.0 - quantile, axis=0)
    centre = 0.5 * (lo + hi)
    radius = 0.5 * float(np.linalg.norm(hi - lo))
    if not radius > 0:
        radius = max(points_scale(m), 1e-6)
    half = math.radians(float(fov_deg)) / 2
    dist = 1.05 * radius / math.sin(half)
    n = int(num_views)
    i = np.arange(n) + 0.5
    zmin = math.sin(math.radians(float(min_elevation_deg)))
    z = 1.0 - (1.0 - zmin) * i / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))  # the golden angle
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)
    V = np.stack([look_at(centre + dist * d, centre, (0.0, 0.0, 1.0)) for d in dirs])
    f = 0.5 * int(resolution) / math.tan(half)
    K = np.array([[f, 0.0, 0.5 * resolution], [0.0, f, 0.5 * resolution], [0.0, 0.0, 1.0]])
    return Cameras.from_numpy(V.astype(np.float32), np.repeat(K[None], n, 0).astype(np.float32), int(resolution),
                              int(resolution), device=means.device)


def _camera_batches(cameras, batch_size: int) -> List[Cameras]:
    """Cameras batches of at most `batch_size` views from a `Cameras` batch, a sequence of them, or
    a dataset split (`splat.data.Split`: its views grouped by image size)."""
    if isinstance(cameras, Cameras):
        groups = [cameras]
    elif hasattr(cameras, "widths") and hasattr(cameras, "cameras") and callable(cameras.cameras):  # a Split
        by_size: Dict[tuple, list] = {}
        for i in range(len(cameras.widths)):
            by_size.setdefault((cameras.widths[i], cameras.heights[i]), []).append(i)
        groups = [cameras.cameras(ids) for ids in by_size.values()]
    elif isinstance(cameras, (list, tuple)) and all(isinstance(c, Cameras) for c in cameras):
        groups = list(cameras)
    else:
        raise ValueError(f"cameras must be a splat.cameras.Cameras batch, a list of them or a dataset split, "
                         f"got {type(cameras).__name__}")
    out = []
    for g in groups:
        for lo in range(0, len(g), batch_size):
            out.append(g[lo:lo + batch_size])
    if not out:
        raise ValueError("cameras: no views given (an empty camera list); pass None for the sphere fallback")
    return out


# ----------------------------------------------------------------------------- importance


def gaussian_importance(splats: Mapping[str, Tensor], cameras: CameraInput = None, *, backend: str = "auto",
                        batch_size: int = 4, volume_power: float = 0.0, near_plane: Optional[float] = None,
                        rasterize_mode: str = "classic", num_views: int = 32, resolution: int = 256,
                        eps2d: float = 1.2) -> Tensor:
    """Each Gaussian's measured importance: LightGaussian's global significance.

    ``I_i = sum over views and pixels of alpha_i(p) T_i(p)``, the share of the rendered colour that
    Gaussian i gives, in pixels (1 = one whole pixel's colour), times ``V_i^volume_power`` where
    ``V_i`` is its volume (product of the scales) divided by the 90th percentile of the volumes and
    clipped at 1 (LightGaussian's normalised volume; its paper uses 0.1; 0 leaves it out).
    Measured as the gradient of the image sum with respect to a one-channel colour of ones (one
    render and one backward per batch of `batch_size` views); the background does not enter.

    Args:
        splats: the splats dict (`splat.io`), N >= 1.
        cameras: the views to measure in: a `splat.cameras.Cameras` batch, a list of them (views of
            different sizes), or a dataset split (`splat.data.Split`). None: `sphere_cameras`
            (`num_views` views of `resolution` pixels around the model's robust bounding box), the
            fallback for a bare model file.
        backend: `splat.rasterize`'s backend ("auto", "cpu", "torch", "cuda").
        near_plane: depth below which Gaussians are culled; default ``NEAR_PLANE`` times the
            spread of the means (`splat.cameras.points_scale`), as the viewer renders a model file.
        rasterize_mode: "classic" or "antialiased", as the model was trained.
        eps2d: the measuring render's 2D low-pass filter (variance, px^2). 1.2, four times the
            renderer's 0.3, gives sub-pixel Gaussians about a pixel's footprint, so those that carry
            fine detail are not ranked below their effect (bench/budget.py: +0.9 dB at F = 0.3,
            +1.5 dB at F = 0.1); 0.3 measures the weights exactly as the model renders.
        volume_power: LightGaussian's volume exponent (0: left out; it loses 2.8 dB at F = 0.3).
        batch_size: views per render (memory: batch_size x N floats).
    Returns:
        float32 [N] on the device of the means, >= 0 (0: never seen by any view).
    Raises:
        ValueError: a malformed or empty splats dict, an empty camera list, volume_power < 0,
        batch_size < 1.
    """
    N = _check_splats(splats)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not (math.isfinite(float(volume_power)) and float(volume_power) >= 0):
        raise ValueError(f"volume_power must be a finite number >= 0, got {volume_power}")
    means = splats["means"].detach()
    quats = splats["quats"].detach().to(means.dtype)
    scales = torch.exp(splats["scales"].detach().to(means.dtype))
    opac = torch.sigmoid(splats["opacities"].detach().to(means.dtype))
    if cameras is None:
        cameras = sphere_cameras(means, num_views, resolution)
    if near_plane is None:
        near_plane = NEAR_PLANE * points_scale(means.double().cpu().numpy())
    total = torch.zeros(N, dtype=torch.float64, device=means.device)
    for cams in _camera_batches(cameras, int(batch_size)):
        cams = cams.to(means.device)
        ones = torch.ones(len(cams), N, 1, dtype=means.dtype, device=means.device, requires_grad=True)
        with torch.enable_grad():
            out, _, _ = rasterize(means, quats, scales, opac, ones, cams.viewmats.to(means.dtype),
                                  cams.Ks.to(means.dtype), cams.width, cams.height, near_plane=float(near_plane),
                                  eps2d=float(eps2d), backend=backend, rasterize_mode=rasterize_mode,
                                  **camera_arguments(cams))
            w, = torch.autograd.grad(out.sum(), ones)
        total += w[..., 0].double().sum(0)
    imp = total.clamp_min(0.0)
    if volume_power > 0:
        vol = scales.double().prod(-1)
        ref = vol.cpu().kthvalue(max(1, math.ceil(0.9 * N))).values.to(vol.device).clamp_min(1e-300)
        imp = imp * (vol / ref).clamp(max=1.0) ** float(volume_power)
    return imp.float()


# ----------------------------------------------------------------------------- merging


def _covariances(quats: Tensor, log_scales: Tensor) -> Tensor:
    from ..backends.torch_ref import quat_scale_to_covar

    return quat_scale_to_covar(quats.double(), torch.exp(log_scales.double()))


def _area(s: Tensor) -> Tensor:
    """Cross-section area proxy of Gaussians with scales s [..., 3]: s1 s2 + s2 s3 + s1 s3."""
    return s[..., 0] * s[..., 1] + s[..., 1] * s[..., 2] + s[..., 0] * s[..., 2]


def merge_gaussians(splats: Mapping[str, Tensor], targets: Tensor, weights: Tensor, keep: Tensor) -> Dict[str, Tensor]:
    """Merge groups of Gaussians by moment matching.

    Args:
        splats: the splats dict, N Gaussians.
        keep: int64 [M], the survivors (distinct rows of `splats`).
        targets: int64 [N], for each Gaussian the position in `keep` (0..M-1) of the survivor it
            merges into, or -1 for none (a survivor's own entry is ignored: it is its group's
            first member).
        weights: [N] >= 0, each Gaussian's weight in its group (rows with weight 0 leave their
            group unchanged).
    Returns:
        the survivors' splats dict (M rows, in the order of `keep`): for each group with a
        positive total weight ``W = sum w_i``: mean ``mu = sum w_i mu_i / W``, covariance
        ``sum w_i (Sigma_i + (mu_i - mu)(mu_i - mu)^T) / W`` (as scales and a rotation), SH
        coefficients the weighted mean, opacity ``1 - exp(sum_i (A_i / A) log(1 - o_i))`` (``A``
        the cross-section area ``s1 s2 + s2 s3 + s1 s3``, the group's coverage kept), at least
        the survivor's own and at most 0.999. Groups with no merged member come back bit-for-bit
        unchanged. Other per-Gaussian entries of `splats` are the survivors' own. Computed in
        float64, each group's moments about its survivor's centre.
    """
    N = _check_splats(splats)
    keep = keep.long()
    M = int(keep.numel())
    targets = targets.long()
    w = weights.detach().double().clamp_min(0.0)
    member = (targets >= 0) & (w > 0)
    member[keep] = False  # survivors are their groups' first members, not merged anywhere
    out = {k: (v[keep] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == N else v) for k, v in splats.items()}
    d_idx = member.nonzero().squeeze(1)
    if d_idx.numel() == 0:
        return out
    t = targets[d_idx]
    dev = splats["means"].device
    mu_s = splats["means"][keep].double()
    # every group's moments about its survivor's mean (no cancellation far from the origin)
    ws = w[keep]
    W = ws.clone().index_add_(0, t, w[d_idx])
    merged = torch.zeros(M, dtype=torch.bool, device=dev)
    merged[t] = True
    merged &= W > 0
    g = merged.nonzero().squeeze(1)
    Wg = W[g]
    cov_s = _covariances(splats["quats"][keep], splats["scales"][keep])
    cov_d = _covariances(splats["quats"][d_idx], splats["scales"][d_idx])
    rel_d = splats["means"][d_idx].double() - mu_s[t]  # [D, 3]
    wd = w[d_idx]
    first = torch.zeros(M, 3, dtype=torch.float64, device=dev).index_add_(0, t, wd[:, None] * rel_d)
    second = (ws[:, None, None] * cov_s).index_add_(
        0, t, wd[:, None, None] * (cov_d + rel_d[:, :, None] * rel_d[:, None, :]))
    m1 = first[g] / Wg[:, None]  # the group's mean relative to the survivor's
    S = second[g] / Wg[:, None, None] - m1[:, :, None] * m1[:, None, :]
    S = 0.5 * (S + S.transpose(1, 2))
    evals, evecs = torch.linalg.eigh(S)
    evecs = torch.where(torch.linalg.det(evecs)[:, None, None] < 0, evecs * torch.tensor([1.0, 1.0, -1.0],
                        dtype=evecs.dtype, device=dev), evecs)
    tiny = (evals[:, -1:].clamp_min(0) * 1e-12).clamp_min(1e-30)
    s_new = torch.sqrt(torch.maximum(evals, tiny))
    from ..backends.torch_ref import rotmat_to_quat

    q_new = rotmat_to_quat(evecs)
    # SH: weighted means
    def sh_of(rows):
        return torch.cat([splats["sh0"][rows], splats["shN"][rows]], 1).double()

    shsum = (ws[:, None, None] * sh_of(keep)).index_add_(0, t, wd[:, None, None] * sh_of(d_idx))
    sh_new = shsum[g] / Wg[:, None, None]
    # opacity: the group's coverage over the merged Gaussian's area
    def coverage(rows):  # (opacity, area x log transmittance)
        o = torch.sigmoid(splats["opacities"][rows].double()).clamp(max=MAX_OPACITY)
        return o, _area(torch.exp(splats["scales"][rows].double())) * torch.log1p(-o)

    o_s, acc = coverage(keep)
    acc = acc.index_add_(0, t, coverage(d_idx)[1])
    o_new = (-torch.expm1(acc[g] / _area(s_new).clamp_min(1e-300))).clamp(1e-6, MAX_OPACITY)
    o_new = torch.maximum(o_new, o_s[g])  # never below the survivor's own (bench/budget.py: +0.1..0.4 dB)

    dt = splats["means"].dtype
    means = out["means"].clone()
    means[g] = (mu_s[g] + m1).to(dt)
    scales = out["scales"].clone()
    scales[g] = torch.log(s_new).to(scales.dtype)
    quats = out["quats"].clone()
    quats[g] = q_new.to(quats.dtype)
    opac = out["opacities"].clone()
    opac[g] = torch.logit(o_new).to(opac.dtype)
    sh0, shN = out["sh0"].clone(), out["shN"].clone()
    sh0[g] = sh_new[:, :1].to(sh0.dtype)
    shN[g] = sh_new[:, 1:].to(shN.dtype)
    out.update(means=means, scales=scales, quats=quats, opacities=opac, sh0=sh0, shN=shN)
    return out


def _merge_targets(splats: Mapping[str, Tensor], keep: Tensor, drop: Tensor, weights: Tensor, radius: float,
                   neighbors: int) -> Tensor:
    """[N] int64: for each dropped Gaussian with a positive weight the position in `keep` of the
    survivor it merges into (among its `neighbors` nearest survivors by centre, the one of smallest
    Mahalanobis distance in the survivor's covariance, if that is at most `radius`), else -1."""
    from scipy.spatial import cKDTree

    N = splats["means"].shape[0]
    targets = torch.full((N,), -1, dtype=torch.long)
    drop = drop[weights[drop].cpu() > 0] if drop.numel() else drop
    if drop.numel() == 0 or keep.numel() == 0:
        return targets
    means = splats["means"].detach().double().cpu()
    k = min(int(neighbors), int(keep.numel()))
    tree = cKDTree(means[keep].numpy())
    _, nn = tree.query(means[drop].numpy(), k=k)
    nn = torch.from_numpy(np.asarray(nn).reshape(len(drop), k)).long()
    cov_k = _covariances(splats["quats"][keep].detach().cpu(), splats["scales"][keep].detach().cpu())
    s_max = cov_k.diagonal(dim1=1, dim2=2).sum(-1)
    prec = torch.linalg.inv(cov_k + (1e-12 * s_max.clamp_min(1e-30))[:, None, None] * torch.eye(3, dtype=torch.float64))
    best_d2 = torch.full((len(drop),), math.inf, dtype=torch.float64)
    best = torch.full((len(drop),), -1, dtype=torch.long)
    m_drop, m_keep = means[drop], means[keep]
    for j in range(k):  # one neighbour rank at a time: memory stays O(D)
        cand = nn[:, j]
        d = m_drop - m_keep[cand]
        d2 = torch.einsum("ni,nij,nj->n", d, prec[cand], d)
        better = d2 < best_d2
        best_d2 = torch.where(better, d2, best_d2)
        best = torch.where(better, cand, best)
    ok = best_d2 <= float(radius) ** 2
    targets[drop[ok]] = best[ok]
    return targets.to(splats["means"].device)


# ----------------------------------------------------------------------------- distillation


def distill(student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], cameras: CameraInput = None, *,
            steps: int = 300, backend: str = "auto", near_plane: Optional[float] = None,
            rasterize_mode: str = "classic", seed: int = 0, lr_scale: float = 1.0,
            progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Tensor]:
    """Fit `student` (a smaller splats dict) to renders of `teacher` by Adam, `steps` steps of one
    view each (views in a seeded random order), L1 on premultiplied colour (rendered on black)
    plus L1 on alpha, so the result does not depend on the background it is shown on. Learning
    rates: near 3DGS's (means 1.6e-5 x the spread of the means, scales 5e-3, quats 1e-3,
    opacities 2.5e-2, sh0 2.5e-3, shN 1.25e-4) times `lr_scale`. `cameras` as for
    `gaussian_importance` (None: `sphere_cameras`). `progress(step, steps)` is called after each
    step. The full model's renders are made when a view is first used and kept (up to 1 GiB; others
    are rendered again when used). Returns a new splats dict (detached, the dtype and device of the
    student; other entries of `student` passed through). Raises ``ValueError`` for a malformed or
    empty student or teacher, or an empty camera list."""
    _check_splats(student, "student")
    _check_splats(teacher, "teacher")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"distill: steps must be an integer >= 0, got {steps!r}")
    from ..models.static import splats_to_gaussians

    dev = student["means"].device
    if cameras is None:
        cameras = sphere_cameras(teacher["means"].detach(), 32, 256)
    views = [c[i:i + 1] for c in _camera_batches(cameras, 1 << 30) for i in range(len(c))]
    scale = points_scale(teacher["means"].detach().double().cpu().numpy())
    if near_plane is None:
        near_plane = NEAR_PLANE * scale
    kw = dict(near_plane=float(near_plane), backend=backend, rasterize_mode=rasterize_mode)

    def render(s, cam):
        g = splats_to_gaussians(s)
        c, a, _ = rasterize(g.means, g.quats, g.scales, g.opacities, g.colors, cam.viewmats, cam.Ks, cam.width,
                            cam.height, sh_degree=g.sh_degree, **kw, **camera_arguments(cam))
        return c[0], a[0]

    frozen = {k: teacher[k].detach() for k in SPLAT_KEYS}
    cache: Dict[int, tuple] = {}  # views' target renders, kept while they fit TARGET_CACHE_BYTES
    cached_bytes = 0

    def target(i):
        nonlocal cached_bytes
        if i in cache:
            return cache[i]
        with torch.no_grad():
            t = render(frozen, views[i].to(dev))
        size = sum(x.numel() * x.element_size() for x in t)
        if cached_bytes + size <= TARGET_CACHE_BYTES:
            cache[i] = t
            cached_bytes += size
        return t

    params = {k: student[k].detach().clone().requires_grad_(True) for k in SPLAT_KEYS}
    lrs = {"means": 1.6e-5 * scale, "scales": 5e-3, "quats": 1e-3, "opacities": 2.5e-2, "sh0": 2.5e-3,
           "shN": 1.25e-4}
    opt = torch.optim.Adam([{"params": [params[k]], "lr": lr * lr_scale} for k, lr in lrs.items()], eps=1e-15)
    order = torch.randperm(len(views), generator=torch.Generator().manual_seed(seed))
    for step in range(int(steps)):
        if step and step % len(views) == 0:
            order = torch.randperm(len(views), generator=torch.Generator().manual_seed(seed + step))
        i = int(order[step % len(views)])
        c, a = render(params, views[i].to(dev))
        tc, ta = target(i)
        loss = (c - tc).abs().mean() + (a - ta).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, int(steps))
    out = dict(student)
    out.update({k: v.detach() for k, v in params.items()})
    return out


# ----------------------------------------------------------------------------- the budget


def apply_budget(splats: Mapping[str, Tensor], fraction: float, importance: Optional[Tensor] = None,
                 cameras: CameraInput = None, *, method: str = DEFAULT_METHOD,
                 distill_steps: int = DEFAULT_DISTILL_STEPS,
                 merge_radius: float = 3.0, merge_neighbors: int = 8, backend: str = "auto",
                 rasterize_mode: str = "classic", seed: int = 0,
                 progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Tensor]:
    """The model with a fraction `fraction` of its Gaussians, chosen by importance and adjusted
    (FlexGS-style elastic budget, training-free; the module docstring has the details).

    Args:
        splats: the splats dict (`splat.io`: means [N,3], scales [N,3] log, quats [N,4] wxyz,
            opacities [N] logits, sh0 [N,1,3], shN [N,K-1,3]), N >= 1.
        fraction: F in (0, 1], the share of Gaussians kept: ``kept_count(N, F)`` = ceil(F N).
            F = 1 returns the model unchanged (a new dict holding the same tensors) without
            measuring anything; so does any F with ``ceil(F N) = N`` (after checking `importance`).
        importance: [N] per-Gaussian importance (`gaussian_importance`), larger = kept first;
            None: measured here from `cameras`. Pass it when applying several budgets to one model.
        cameras: the views importance is measured in and distillation fits (a `Cameras` batch, a
            list of them, or a dataset split); None: `sphere_cameras` around the model.
        method: "prune" (keep the most important, nothing else) or "merge" (then merge each
            dropped Gaussian into a near survivor by moment matching).
        distill_steps: then that many Adam steps on the survivors against renders of the full
            model from `cameras` (`distill`; default 300: seconds to minutes, for exports);
            0: the fast path (milliseconds after the importance; the viewer's).
        merge_radius: a dropped Gaussian merges only into a survivor within this many of the
            survivor's standard deviations (Mahalanobis distance) of its centre.
        merge_neighbors: survivors considered per dropped Gaussian (nearest centres).
        backend, rasterize_mode: how importance and distillation render (`splat.rasterize`).
        seed: the distillation's view order. progress: ``progress(step, steps)`` during it.
    Returns:
        a new splats dict with ``ceil(F N)`` Gaussians in their original order (the same dtype and
        device); per-Gaussian extra entries (first dimension N) follow their Gaussians, others
        are passed through.
    Raises:
        ValueError: F not a number in (0, 1], a malformed or empty model, an importance of the wrong
        shape or with non-finite values, an unknown method, distill_steps < 0.
    """
    N = _check_splats(splats)
    F = _check_fraction(fraction)
    if method not in METHODS:
        raise ValueError(f"unknown budget method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(distill_steps, bool) or not isinstance(distill_steps, numbers.Integral) or distill_steps < 0:
        raise ValueError(f"distill_steps must be an integer >= 0, got {distill_steps!r}")
    if not (math.isfinite(float(merge_radius)) and merge_radius >= 0):
        raise ValueError(f"merge_radius must be a finite number >= 0, got {merge_radius}")
    if int(merge_neighbors) < 1:
        raise ValueError(f"merge_neighbors must be >= 1, got {merge_neighbors}")
    if F >= 1.0:
        return dict(splats)
    if importance is None:
        importance = gaussian_importance(splats, cameras, backend=backend, rasterize_mode=rasterize_mode)
    importance = torch.as_tensor(importance)
    if tuple(importance.shape) != (N,):
        raise ValueError(f"importance must have shape [{N}] (one value per Gaussian), got {list(importance.shape)}")
    imp = importance.detach().double().cpu()
    if not torch.isfinite(imp).all():
        raise ValueError("importance has non-finite values")
    k = kept_count(N, F)
    if k >= N:  # ceil(F N) = N (a small model, F near 1): nothing is dropped, the model is its own best fit
        return dict(splats)
    order = torch.argsort(-imp, stable=True)  # ties: the earlier Gaussian first
    keep = order[:k].sort().values
    drop = order[k:].sort().values
    dev = splats["means"].device
    if method == "prune":
        out = {kk: (v[keep.to(v.device)] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == N else v)
               for kk, v in splats.items()}
    else:
        targets = _merge_targets(splats, keep, drop, imp, merge_radius, merge_neighbors)
        out = merge_gaussians(splats, targets.to(dev), imp.to(dev), keep.to(dev))
    if distill_steps > 0:
        out = distill(out, splats, cameras, steps=int(distill_steps), backend=backend, rasterize_mode=rasterize_mode,
                      seed=seed, progress=progress)
    return out
