"""Ray-tracing backend (3DGRT: Moenne-Loccoz et al., "3D Gaussian Ray Tracing: Fast Tracing of
Particle Scenes", SIGGRAPH Asia 2024), ``rasterize(..., backend="raytrace")``.

Every pixel's ray (from any camera model, `splat.camera_models.camera_rays`) walks a BVH over the
Gaussians' bounding boxes and composites the Gaussians it meets in the order of their peak response
along the ray, with the rasterizer's constants (alpha clamp 0.99, 1/255 threshold, stop before the
transmittance reaches 1e-4). The native code (BVH build, k-buffer traversal, forward and the
hand-written backward that re-traces and un-composites) is `rasterizer_cuda/include/splat_raytrace.h`,
run by the CPU library (and by the CUDA kernels of `rasterizer_cuda/cuda/raytrace_kernels.cuh`).

How it differs from the rasterizer, by design:
- each Gaussian is evaluated exactly in 3D along the ray (its peak response), not as the EWA / UT
  2D approximation of its projection, and is ordered per ray rather than by its centre's depth;
- the rasterizer's ``eps2d`` low-pass (0.3 px^2 added to every 2D covariance) is applied as the
  equivalent 3D dilation: eps2d times the squared size of a pixel at the Gaussian's distance
  (``dilate=True``, the default; ``raytrace_options={"dilate": False}`` turns it off), so a model
  trained with either backend renders alike with the other;
- per-Gaussian statistics for density control come from the projection (radii, depths, visibility),
  and ``info["means2d"].grad`` is the gradient of the loss with respect to each Gaussian's position
  moved in its camera's image plane, in pixels (what 3DGRT uses for densification);
- SH colours are evaluated along camera -> Gaussian as the rasterizer does, for every Gaussian (no
  projection culling: a ray meets what it meets).

The dense torch reference `trace_reference` (every ray against every Gaussian) is the oracle of
the tests, in float64 and differentiable by autograd. The native path is float32.
"""
from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..camera_models import camera_rays
from ._native import ptr
from .torch_ref import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_EPS, quat_to_rotmat

NAME = "raytrace"
MAX_CHANNELS = 64  # feature channels per trace (splat_raytrace.h kMaxChannels)
RAY_BLOCK = 8  # rays are traced in 8x8 pixel blocks (neighbouring rays walk the same BVH nodes)


def _raster_stages(device, dtype):
    """(project, spherical_harmonics) of the rasterizer whose projection and SH the tracer reuses: the
    device's native one for float32 (loaded by `backends.get("raytrace")`), else the torch reference."""
    if dtype == torch.float32 and device.type == "cuda":
        try:
            from .cuda import load, project, spherical_harmonics

            load()
            return project, spherical_harmonics
        except Exception:  # noqa: BLE001 - no CUDA build: the reference
            pass
    elif dtype == torch.float32:
        from .cpu import project, spherical_harmonics

        return project, spherical_harmonics
    from .torch_ref import project, spherical_harmonics

    return project, spherical_harmonics


def project(means, quats, scales, opacities, viewmats, Ks, *args):
    """The projection of the device's rasterizer (`torch_ref.project`): radii, means2d, depths,
    conics and compensations for the info dict and density control."""
    return _raster_stages(means.device, means.dtype)[0](means, quats, scales, opacities, viewmats, Ks, *args)


def spherical_harmonics(degree, dirs, coeffs, masks=None):
    """`torch_ref.spherical_harmonics` on the device's rasterizer; every Gaussian is evaluated
    (masks are ignored: rays are not culled by the projection)."""
    return _raster_stages(dirs.device, dirs.dtype)[1](degree, dirs, coeffs, None)


# ------------------------------------------------------------------ Gaussians as the tracer sees them
def pack_sym(M: Tensor) -> Tensor:
    """[..., 3, 3] symmetric -> [..., 6] (xx, xy, xz, yy, yz, zz)."""
    return torch.stack([M[..., 0, 0], M[..., 0, 1], M[..., 0, 2], M[..., 1, 1], M[..., 1, 2], M[..., 2, 2]], -1)


def precisions(quats: Optional[Tensor], scales: Optional[Tensor], covars: Optional[Tensor],
               dilation2: Tensor) -> Tensor:
    """Inverse covariances [C, N, 6] of the Gaussians dilated by an isotropic variance dilation2
    [C, N] (world units squared): R diag(1 / (s^2 + d)) R^T for quats/scales (the dilation commutes
    with the rotation), (Sigma + d I)^-1 for covars. Differentiable."""
    if covars is None:
        R = quat_to_rotmat(quats)  # [N, 3, 3]
        inv = 1.0 / (scales * scales)[None] if dilation2 is None else 1.0 / ((scales * scales)[None]
                                                                               + dilation2[..., None])
        inv = torch.clamp(inv, max=1e30)
        P = (R[None] * inv[..., None, :]) @ R.transpose(-1, -2)[None]
    else:
        eye = torch.eye(3, dtype=covars.dtype, device=covars.device)
        P = torch.linalg.inv(covars[None] + dilation2[..., None, None] * eye)
    return pack_sym(P)


def pixel_footprint(means: Tensor, viewmats: Tensor, Ks: Tensor, camera_model: str) -> Tuple[Tensor, Tensor]:
    """World size of one pixel along x and y at each Gaussian's centre, [C, N] each (detached):
    depth / f for pinhole, distance / f for fisheye, 1 / f for ortho."""
    with torch.no_grad():
        p = (viewmats[:, None, :3, :3] @ means[None, :, :, None])[..., 0] + viewmats[:, None, :3, 3]
        if camera_model == "ortho":
            dist = torch.ones_like(p[..., 2])
        elif camera_model == "fisheye":
            dist = p.norm(dim=-1)
        else:
            dist = p[..., 2].clamp_min(0.0)
        return dist / Ks[:, 0, 0, None], dist / Ks[:, 1, 1, None]


def dilated_precisions(means: Tensor, quats: Optional[Tensor], scales: Optional[Tensor], covars: Optional[Tensor],
                       viewmats: Tensor, Ks: Tensor, camera_model: str, eps2d: float):
    """The tracer's Gaussians for C cameras: `precisions` [C, N, 6] dilated by eps2d pixels^2 at each
    Gaussian's distance (the rasterizer's low-pass, see the module docstring; none for eps2d = 0), and
    the `pixel_footprint` (fpx, fpy) [C, N] it used."""
    fpx, fpy = pixel_footprint(means, viewmats, Ks, camera_model)
    dil = eps2d * fpx * fpy if eps2d > 0 else torch.zeros_like(fpx)
    return precisions(quats, scales, covars, dil), fpx, fpy


def _lift_means2d(means: Tensor, means2d: Tensor, viewmats: Tensor, fpx: Tensor, fpy: Tensor):
    """Per-camera means [C, N, 3] equal to `means`, plus a zero-valued displacement in each
    camera's image plane driven by a leaf copy of means2d, whose gradient is then d loss /
    d (image-plane position) in pixels. Returns (means_c, the leaf)."""
    m2 = means2d.detach().clone().requires_grad_(True)
    delta = m2 - m2.detach()  # zero, but carries the gradient
    shift_cam = torch.stack([delta[..., 0] * fpx, delta[..., 1] * fpy, torch.zeros_like(fpx)], -1)  # [C, N, 3]
    shift = (viewmats[:, None, :3, :3].transpose(-1, -2) @ shift_cam[..., None])[..., 0]
    return means[None] + shift, m2


# ------------------------------------------------------------------ the native trace
def _lib():
    from .cpu import load

    return load()


def build_bvh(means: Tensor, precs: Tensor, opacities: Tensor) -> Tuple[Tensor, Tensor, Tensor, int]:
    """BVH over N Gaussians (float32 CPU tensors): (nodes [2N, 8] float32 view of the C nodes, the
    Gaussians' records in leaf order [N, 12] float32, each record's Gaussian id [N] int32, node count;
    0 when no Gaussian can be hit)."""
    lib = _lib()
    N = means.shape[0]
    nodes = torch.empty(max(2 * N, 1), lib.splat_rt_node_floats(), dtype=torch.float32)
    prims = torch.empty(max(N, 1), lib.splat_rt_prim_floats(), dtype=torch.float32)
    ids = torch.empty(max(N, 1), dtype=torch.int32)
    n = lib.splat_rt_build(N, ptr(means), ptr(precs), ptr(opacities), ptr(nodes), ptr(prims), ptr(ids)) if N else 0
    return nodes, prims, ids, n


def _cuda_call(lib, device, fn, *args):
    """Run a ray-tracing entry point of the CUDA library (or of its host emulation, for CPU tensors)."""
    import ctypes

    from .cuda import _device_guard, check

    with _device_guard(device):
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
        check(lib, getattr(lib, "splatcu_" + fn)(*args, ctypes.c_void_p(stream)), fn)


class _Trace(torch.autograd.Function):
    """The native tracer as one autograd node. engine: None (the CPU library for CPU tensors, the
    CUDA library for CUDA ones) or a loaded CUDA library (the tests' host emulation)."""

    @staticmethod
    def forward(ctx, engine, means, precs, opacities, feats, origins, dirs, tmin, tmax, bg):
        dev = means.device
        cuda_lib = engine
        if cuda_lib is None and dev.type == "cuda":
            from .cuda import load

            cuda_lib = load()
        N, D = feats.shape
        R = origins.shape[0]
        # the BVH is built on the host (the shared header's build_bvh, in the CPU library)
        host = [t.detach().to("cpu", torch.float32).contiguous() for t in (means, precs, opacities)]
        nodes, prims, ids, n_nodes = build_bvh(*host)
        ctx.N, ctx.has_bg, ctx.device, ctx.n_nodes, ctx.cuda_lib = N, bg is not None, dev, n_nodes, cuda_lib
        ctx.dtypes = [t.dtype for t in (means, precs, opacities, feats)] + [None if bg is None else bg.dtype]
        if cuda_lib is not None:
            f32 = [t.detach().to(torch.float32).contiguous() for t in (feats, origins, dirs, tmin, tmax)]
            bgc = None if bg is None else bg.detach().to(torch.float32).contiguous()
            nodes, prims, ids = nodes.to(dev), prims.to(dev), ids.to(dev)
            colors = torch.zeros(R, D, dtype=torch.float32, device=dev)
            if bgc is not None:
                colors += bgc
            trans = torch.ones(R, dtype=torch.float32, device=dev)
            hits = torch.zeros(R, dtype=torch.int32, device=dev)
            _cuda_call(cuda_lib, dev, "rt_fwd", R, *map(ptr, f32[1:]), D, ptr(f32[0]), ptr(bgc), ptr(nodes), n_nodes,
                       ptr(prims), ptr(ids), ptr(colors), ptr(trans), ptr(hits))
            ctx.save_for_backward(*f32, nodes, prims, ids, colors, trans)
            ctx.mark_non_differentiable(hits)
            return colors, trans, hits
        lib = _lib()
        featc = feats.detach().to("cpu", torch.float32).contiguous()
        rays = [t.detach().to("cpu", torch.float32).contiguous() for t in (origins, dirs, tmin, tmax)]
        bgc = None if bg is None else bg.detach().to("cpu", torch.float32).contiguous()
        colors = torch.empty(R, D, dtype=torch.float32)
        trans = torch.ones(R, dtype=torch.float32)
        hits = torch.zeros(R, dtype=torch.int32)
        keep = any(ctx.needs_input_grad)
        handle = None
        if R:
            handle = lib.splat_rt_fwd(R, *map(ptr, rays), D, ptr(featc), ptr(bgc), ptr(nodes), n_nodes, ptr(prims),
                                      ptr(ids), ptr(colors), ptr(trans), ptr(hits), int(keep))
        offsets = torch.zeros(R, dtype=torch.int64)
        if R > 1:
            torch.cumsum(hits[:-1].long(), 0, out=offsets[1:])
        lists = torch.empty(int(hits.sum()) if R else 0, dtype=torch.int32)
        if handle:
            lib.splat_rt_take_lists(handle, R, ptr(hits), ptr(lists))
        ctx.save_for_backward(featc, *rays, prims, ids, lists, offsets, hits, colors, trans)
        out_hits = hits.to(dev)
        ctx.mark_non_differentiable(out_hits)
        return colors.to(dev), trans.to(dev), out_hits

    @staticmethod
    def backward(ctx, g_colors, g_trans, _g_hits):
        dev, N = ctx.device, ctx.N
        if ctx.cuda_lib is not None:
            feats, origins, dirs, tmin, tmax, nodes, prims, ids, colors, trans = ctx.saved_tensors
            D, R = feats.shape[1], origins.shape[0]
            g_colors = torch.zeros(R, D, device=dev) if g_colors is None else g_colors.float().contiguous()
            g_alpha = torch.zeros(R, device=dev) if g_trans is None else (-g_trans).float().contiguous()
            out = [torch.zeros(N, 3, device=dev), torch.zeros(N, 6, device=dev), torch.zeros(N, device=dev),
                   torch.zeros(N, D, device=dev)]
            _cuda_call(ctx.cuda_lib, dev, "rt_bwd", R, ptr(origins), ptr(dirs), ptr(tmin), ptr(tmax), D, ptr(feats),
                       ptr(nodes), ctx.n_nodes, ptr(prims), ptr(ids), ptr(colors), ptr(trans), ptr(g_colors),
                       ptr(g_alpha), *map(ptr, out))
            g_bg = (g_colors * trans[:, None]).sum(0).to(ctx.dtypes[4]) if ctx.has_bg else None
            return (None, *(t.to(dt) for t, dt in zip(out, ctx.dtypes)), None, None, None, None, g_bg)
        lib = _lib()
        feats, origins, dirs, tmin, tmax, prims, ids, lists, offsets, hits, colors, trans = ctx.saved_tensors
        D, R = feats.shape[1], origins.shape[0]
        g_colors = torch.zeros(R, D) if g_colors is None else g_colors.to("cpu", torch.float32).contiguous()
        g_alpha = torch.zeros(R) if g_trans is None else (-g_trans).to("cpu", torch.float32).contiguous()
        out = [torch.empty(N, 3), torch.empty(N, 6), torch.empty(N), torch.empty(N, D)]
        lib.splat_rt_bwd(R, ptr(origins), ptr(dirs), ptr(tmin), ptr(tmax), N, D, ptr(feats), ptr(prims), ptr(ids),
                         ptr(lists), ptr(offsets), ptr(hits), ptr(colors), ptr(trans), ptr(g_colors), ptr(g_alpha),
                         *map(ptr, out))
        g_bg = (g_colors * trans[:, None]).sum(0).to(dev, ctx.dtypes[4]) if ctx.has_bg else None
        return (None, *(t.to(dev, dt) for t, dt in zip(out, ctx.dtypes)), None, None, None, None, g_bg)


def trace_rays(means: Tensor, precs: Tensor, opacities: Tensor, feats: Tensor, origins: Tensor, dirs: Tensor,
               tmin: Tensor, tmax: Tensor, backgrounds: Optional[Tensor] = None, engine=None
               ) -> Tuple[Tensor, Tensor, Tensor]:
    """Trace R rays through N Gaussians (the native tracer; differentiable in means [N,3], precs
    [N,6] (inverse covariances, `pack_sym` layout), opacities [N], feats [N,D] and backgrounds [D]).

    origins, dirs [R,3] (dirs unit length: t is a distance), tmin, tmax [R]: the span of each ray.
    Returns colors [R,D] (plus T * background), transmittance [R] and the number of Gaussians each
    ray composited [R] (int32). float32 (other dtypes are converted). CUDA tensors run the CUDA
    kernels (the BVH is built on the host); `engine` (tests) is a loaded CUDA library to use instead.
    Raises ValueError for more than 64 feature channels."""
    if feats.shape[-1] > MAX_CHANNELS:
        raise ValueError(f"splat.raytrace: at most {MAX_CHANNELS} feature channels per trace, got {feats.shape[-1]}")
    return _Trace.apply(engine, means, precs, opacities, feats, origins, dirs, tmin, tmax, backgrounds)


def trace_reference(means: Tensor, precs: Tensor, opacities: Tensor, feats: Tensor, origins: Tensor, dirs: Tensor,
                    tmin: Tensor, tmax: Tensor, backgrounds: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """`trace_rays` by brute force in torch (every ray against every Gaussian, any dtype,
    differentiable by autograd): the oracle of the native tracer. Returns (colors [R,D], T [R])."""
    P = torch.stack([precs[:, [0, 1, 2]], precs[:, [1, 3, 4]], precs[:, [2, 4, 5]]], 1)  # [N, 3, 3]
    x = means[None] - origins[:, None]  # [R, N, 3]
    Pd = (P[None] @ dirs[:, None, :, None])[..., 0]  # [R, N, 3]
    a = (dirs[:, None] * Pd).sum(-1)
    t = (x * Pd).sum(-1) / a
    y = origins[:, None] + t[..., None] * dirs[:, None] - means[None]
    q = (y * (P[None] @ y[..., None])[..., 0]).sum(-1).clamp_min(0.0)
    raw = opacities[None] * torch.exp(-0.5 * q)
    hit = (raw >= ALPHA_THRESHOLD) & (a > 0) & (t >= tmin[:, None]) & (t <= tmax[:, None])
    key = torch.where(hit, t, torch.full_like(t, float("inf"))).detach()
    order = torch.sort(key, dim=1, stable=True).indices
    alpha = torch.where(hit, torch.clamp(raw, max=MAX_ALPHA), torch.zeros_like(raw)).gather(1, order)
    one_minus = 1.0 - alpha
    T_after = torch.cumprod(one_minus, 1)
    keep = (T_after > TRANSMITTANCE_EPS).detach()
    T_before = torch.cat([torch.ones_like(T_after[:, :1]), T_after[:, :-1]], 1)
    w = alpha * T_before * keep
    colors = (w[..., None] * feats[order]).sum(1)
    T = torch.where(keep, one_minus, torch.ones_like(one_minus)).prod(1)
    if backgrounds is not None:
        colors = colors + T[:, None] * backgrounds
    return colors, T


# ------------------------------------------------------------------ the backend stage
def render(means: Tensor, quats: Optional[Tensor], scales: Optional[Tensor], covars: Optional[Tensor],
           opacities: Tensor, feats: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int, eps2d: float,
           near_plane: float, far_plane: float, means2d: Tensor, backgrounds: Optional[Tensor],
           camera: Dict, tile_size: int, tile_mask: Optional[Tensor], dilate: bool = True,
           reference: bool = False):
    """`rasterize`'s compositing stage for backend="raytrace": colours [C,H,W,D], alphas [C,H,W,1]
    and the means2d for info (a leaf whose gradient is the image-plane gradient, see the module
    docstring). opacities [C,N], feats [C,N,D], backgrounds [C,D] as the rasterizer gets them;
    `camera` holds `rasterize`'s camera-model arguments. ``reference=True`` traces with the dense
    torch reference instead of the native code (tests)."""
    C, N, D = feats.shape
    dev, dt = means.device, means.dtype
    precs, fpx, fpy = dilated_precisions(means, quats, scales, covars, viewmats, Ks, camera["camera_model"],
                                         eps2d if dilate else 0.0)  # [C, N, 6]
    means_c = means[None].expand(C, N, 3)
    m2_out = means2d
    if torch.is_grad_enabled() and means.requires_grad:
        means_c, m2_out = _lift_means2d(means, means2d, viewmats, fpx, fpy)
    origins, dirs, ok = camera_rays(viewmats, Ks, width, height, **camera)  # [C, H*W, ...]
    pix_sel = None
    if tile_mask is not None:
        th, tw = (height + tile_size - 1) // tile_size, (width + tile_size - 1) // tile_size
        ii, jj = torch.meshgrid(torch.arange(height, device=dev), torch.arange(width, device=dev), indexing="ij")
        tile_of = ((ii // tile_size) * tw + jj // tile_size).reshape(-1)
        pix_sel = tile_mask.reshape(C, th * tw)[:, tile_of]  # [C, H*W]
    colors, alphas = [], []
    trace = trace_reference if reference else trace_rays
    order = _block_order(width, height, dev)
    for c in range(C):
        sel = ok[c] if pix_sel is None else ok[c] & pix_sel[c]
        idx = order[sel[order]]
        o, d = origins[c, idx], dirs[c, idx]
        tmin = torch.full((idx.numel(),), near_plane, dtype=dt, device=dev)
        tmax = torch.full((idx.numel(),), far_plane, dtype=dt, device=dev)
        cols, T = [], None
        for lo in range(0, D, MAX_CHANNELS):  # wider features: one trace per 64 channels
            bg = None if backgrounds is None else backgrounds[c, lo:lo + MAX_CHANNELS]
            out = trace(means_c[c], precs[c], opacities[c], feats[c, :, lo:lo + MAX_CHANNELS], o, d, tmin, tmax, bg)
            cols.append(out[0])
            T = out[1] if T is None else T
        col = torch.cat(cols, -1) if D else torch.zeros(idx.numel(), 0, dtype=dt, device=dev)
        img = torch.zeros(height * width, D, dtype=dt, device=dev)
        img = img.index_put((idx,), col.to(dt))
        a = torch.zeros(height * width, dtype=dt, device=dev).index_put((idx,), (1.0 - T).to(dt))
        if backgrounds is not None:  # pixels that are no ray's image (outside a fisheye circle): background
            hole = ~ok[c] if pix_sel is None else ~ok[c] & pix_sel[c]
            img = torch.where(hole[:, None], backgrounds[c][None].to(dt), img)
        colors.append(img.reshape(height, width, D))
        alphas.append(a.reshape(height, width, 1))
    return torch.stack(colors), torch.stack(alphas), m2_out


@functools.lru_cache(maxsize=8)
def _block_order(width: int, height: int, device) -> Tensor:
    """Flat pixel indices in RAY_BLOCK x RAY_BLOCK blocks (row-major inside and across blocks)."""
    ii, jj = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    bw = (width + RAY_BLOCK - 1) // RAY_BLOCK
    key = ((ii // RAY_BLOCK) * bw + jj // RAY_BLOCK) * (RAY_BLOCK * RAY_BLOCK) + (ii % RAY_BLOCK) * RAY_BLOCK \
        + jj % RAY_BLOCK
    return torch.argsort(key.reshape(-1))


def isect_tiles(*args, **kwargs):  # the tracer needs no tile lists
    raise NotImplementedError("backend='raytrace' does not bin tiles")
