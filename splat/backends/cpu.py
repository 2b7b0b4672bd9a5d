"""Native CPU backend: C++/OpenMP kernels in rasterizer_cuda/cpu, loaded with
ctypes, differentiable through torch.library custom ops with hand-written
backward passes. float32 only."""
from __future__ import annotations

import ctypes
import os
import threading
import weakref
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._build import NativeBuildError, build_library, load_library

NAME = "cpu"

_lib = None
_lock = threading.Lock()

_P = ctypes.c_void_p
_I = ctypes.c_int
_F = ctypes.c_float
_I64 = ctypes.c_int64

_SIGNATURES = {
    "splat_num_threads": ([], _I),
    "splat_set_num_threads": ([_I], None),
    "splat_project_fwd": ([_I, _I, _P, _P, _P, _P, _P, _P, _I, _I, _F, _F, _F, _F, _I, _P, _P, _P, _P, _P], None),
    "splat_project_bwd": ([_I, _I, _P, _P, _P, _P, _P, _I, _I, _F, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P], None),
    "splat_sh_fwd": ([_I, _I, _I, _I, _P, _P, _I, _P, _P], None),
    "splat_sh_bwd": ([_I, _I, _I, _I, _P, _P, _I, _P, _P, _P, _P], None),
    "splat_isect_count": ([_I, _I, _P, _P, _I, _I, _I, _P, _P, _P], _I64),
    "splat_isect_fill": ([_I, _I, _P, _P, _P, _I, _I, _I, _P, _P, _P, _P], None),
    "splat_rasterize_fwd": ([_I] * 8 + [_P] * 12, None),
    "splat_rasterize_bwd": ([_I] * 8 + [_P] * 17, None),
}

CXX_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++17", "-fno-math-errno",
             "-fno-trapping-math"]


def load():
    """Build (first use only) and load the native library; raises NativeBuildError."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            path = build_library("splat_cpu", ["cpu/splat_cpu.cpp"], os.environ.get("CXX", "g++"), CXX_FLAGS)
            lib = load_library(path)
            for fn, (args, res) in _SIGNATURES.items():
                f = getattr(lib, fn)
                f.argtypes = args
                f.restype = res
            lib.splat_set_num_threads(torch.get_num_threads())
            _lib = lib
    return _lib


def _ptr(t: Optional[Tensor]):
    """Raw pointer of a tensor for ctypes. The caller must hold a reference to
    the tensor until the C call returns: never pass a temporary."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _f32(t: Tensor, name: str) -> Tensor:
    if t.dtype != torch.float32:
        raise ValueError(f"splat.rasterize: backend='cpu' supports float32 only, {name} is {t.dtype}")
    return t.contiguous()


def _zeros_if_none(g: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g.contiguous()


# ------------------------------------------------------------------ projection
@torch.library.custom_op("splat::cpu_project", mutates_args=())
def _project_op(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Optional[Tensor], viewmats: Tensor, Ks: Tensor,
    width: int, height: int, eps2d: float, near_plane: float, far_plane: float, radius_clip: float,
    antialiased: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    lib = load()
    C, N = viewmats.shape[0], means.shape[0]
    radii = torch.empty(C, N, 2, dtype=torch.int32)
    means2d = torch.empty(C, N, 2)
    depths = torch.empty(C, N)
    conics = torch.empty(C, N, 3)
    comps = torch.empty(C, N)
    if C * N:
        lib.splat_project_fwd(C, N, _ptr(means), _ptr(quats), _ptr(scales), _ptr(opacities), _ptr(viewmats),
                              _ptr(Ks), width, height, eps2d, near_plane, far_plane, radius_clip, int(antialiased),
                              _ptr(radii), _ptr(means2d), _ptr(depths), _ptr(conics), _ptr(comps))
    return radii, means2d, depths, conics, comps


def _project_setup(ctx, inputs, output):
    means, quats, scales, _, viewmats, Ks, width, height, eps2d, _, _, _, antialiased = inputs
    ctx.save_for_backward(means, quats, scales, viewmats, Ks, output[0])
    ctx.args = (width, height, eps2d, antialiased)


def _project_backward(ctx, g_radii, g_means2d, g_depths, g_conics, g_comps):
    means, quats, scales, viewmats, Ks, radii = ctx.saved_tensors
    width, height, eps2d, antialiased = ctx.args
    C, N = radii.shape[:2]
    v_means, v_quats, v_scales = torch.zeros_like(means), torch.zeros_like(quats), torch.zeros_like(scales)
    want_view = ctx.needs_input_grad[4]
    v_view = torch.zeros_like(viewmats) if want_view else None
    if C * N:
        # keep every buffer in a local: a temporary would be freed before the C call reads it
        g_means2d = _zeros_if_none(g_means2d, torch.empty(C, N, 2))
        g_depths = _zeros_if_none(g_depths, torch.empty(C, N))
        g_conics = _zeros_if_none(g_conics, torch.empty(C, N, 3))
        g_comps = None if g_comps is None else g_comps.contiguous()
        load().splat_project_bwd(
            C, N, _ptr(means), _ptr(quats), _ptr(scales), _ptr(viewmats), _ptr(Ks), width, height, eps2d,
            int(antialiased), _ptr(radii), _ptr(g_means2d), _ptr(g_depths), _ptr(g_conics), _ptr(g_comps),
            _ptr(v_means), _ptr(v_quats), _ptr(v_scales), _ptr(v_view),
        )
    return v_means, v_quats, v_scales, None, v_view, None, None, None, None, None, None, None, None


torch.library.register_autograd("splat::cpu_project", _project_backward, setup_context=_project_setup)


def project(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d=0.3, near_plane=0.01,
            far_plane=1e10, radius_clip=0.0, antialiased=False):
    if Ks.requires_grad:
        raise ValueError("splat.rasterize: backend='cpu' has no gradient for Ks; use backend='torch'")
    return _project_op(
        _f32(means, "means"), _f32(quats, "quats"), _f32(scales, "scales"),
        None if opacities is None else _f32(opacities.detach(), "opacities"),
        _f32(viewmats, "viewmats"), _f32(Ks, "Ks"), width, height, float(eps2d), float(near_plane),
        float(far_plane), float(radius_clip), bool(antialiased),
    )


# ------------------------------------------------------------------ SH
@torch.library.custom_op("splat::cpu_sh", mutates_args=())
def _sh_op(degree: int, dirs: Tensor, coeffs: Tensor, masks: Optional[Tensor]) -> Tensor:
    C, N = dirs.shape[:2]
    out = torch.empty(C, N, 3)
    if C * N:
        load().splat_sh_fwd(C, N, coeffs.shape[-2], degree, _ptr(dirs), _ptr(coeffs), int(coeffs.dim() == 4),
                            _ptr(masks), _ptr(out))
    return out


def _sh_setup(ctx, inputs, output):
    degree, dirs, coeffs, masks = inputs
    ctx.degree = degree
    ctx.save_for_backward(dirs, coeffs, masks)


def _sh_backward(ctx, g_out):
    dirs, coeffs, masks = ctx.saved_tensors
    C, N = dirs.shape[:2]
    v_coeffs = torch.zeros_like(coeffs)
    v_dirs = torch.zeros_like(dirs) if ctx.needs_input_grad[1] else None
    if C * N:
        g_out = g_out.contiguous()  # a local, so that it outlives the call
        load().splat_sh_bwd(C, N, coeffs.shape[-2], ctx.degree, _ptr(dirs), _ptr(coeffs), int(coeffs.dim() == 4),
                            _ptr(masks), _ptr(g_out), _ptr(v_coeffs), _ptr(v_dirs))
    return None, v_dirs, v_coeffs, None


torch.library.register_autograd("splat::cpu_sh", _sh_backward, setup_context=_sh_setup)


def spherical_harmonics(degree, dirs, coeffs, masks=None):
    m = None if masks is None else masks.to(torch.uint8).contiguous()
    return _sh_op(degree, _f32(dirs, "dirs"), _f32(coeffs, "colors"), m)


# ------------------------------------------------------------------ tiles
@torch.no_grad()
def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, tile_mask=None):
    lib = load()
    C, N = depths.shape
    means2d, radii, depths = means2d.detach().contiguous(), radii.contiguous(), depths.detach().contiguous()
    mask = None if tile_mask is None else tile_mask.to(torch.uint8).contiguous()
    n_tiles = C * tile_width * tile_height
    tiles_per_gauss = torch.zeros(C, N, dtype=torch.int32)
    counts = torch.zeros(n_tiles, dtype=torch.int64)
    M = lib.splat_isect_count(C, N, _ptr(means2d), _ptr(radii), tile_size, tile_width, tile_height, _ptr(mask),
                              _ptr(tiles_per_gauss), _ptr(counts)) if C * N else 0
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    isect_ids = torch.empty(M, dtype=torch.int64)
    flatten_ids = torch.empty(M, dtype=torch.int32)
    if M:
        lib.splat_isect_fill(C, N, _ptr(means2d), _ptr(radii), _ptr(depths), tile_size, tile_width, tile_height,
                             _ptr(mask), _ptr(offsets), _ptr(isect_ids), _ptr(flatten_ids))
    isect_offsets = offsets[:-1].to(torch.int32).reshape(C, tile_height, tile_width)
    return tiles_per_gauss, isect_ids, flatten_ids, isect_offsets


# ------------------------------------------------------------------ compositing
def _tile_offsets(isect_offsets: Tensor, M: int) -> Tensor:
    return torch.cat([isect_offsets.reshape(-1).long(), torch.tensor([M], dtype=torch.int64)])


@torch.library.custom_op("splat::cpu_rasterize", mutates_args=())
def _rasterize_op(
    means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, backgrounds: Optional[Tensor],
    isect_offsets: Tensor, flatten_ids: Tensor, tile_mask: Optional[Tensor], width: int, height: int,
    tile_size: int, absgrad: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    return _blend_forward(means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, tile_mask,
                          width, height, tile_size)


def _blend_forward(means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, tile_mask, width,
                   height, tile_size, tile_work=None):
    """The native forward blend (inputs already float32 and contiguous); fills `tile_work` if given."""
    C, N, D = colors.shape
    th, tw = isect_offsets.shape[1:]
    out_colors = torch.zeros(C, height, width, D)
    out_alphas = torch.zeros(C, height, width, 1)
    last_ids = torch.full((C, height, width), -1, dtype=torch.int32)
    offsets = _tile_offsets(isect_offsets, flatten_ids.numel())
    load().splat_rasterize_fwd(C, N, D, width, height, tile_size, tw, th, _ptr(means2d), _ptr(conics), _ptr(colors),
                               _ptr(opacities), _ptr(backgrounds), _ptr(offsets), _ptr(flatten_ids), _ptr(tile_mask),
                               _ptr(out_colors), _ptr(out_alphas), _ptr(last_ids), _ptr(tile_work))
    return out_colors, out_alphas, last_ids


def _rasterize_setup(ctx, inputs, output):
    (means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, tile_mask, width, height,
     tile_size, absgrad) = inputs
    ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, tile_mask,
                          output[1], output[2])
    ctx.args = (width, height, tile_size, absgrad)
    target = _absgrad_target.get(id(means2d)) if absgrad else None
    ctx.absgrad_target = None if target is None else weakref.ref(target)


def _rasterize_backward(ctx, g_colors, g_alphas, g_last):
    (means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, tile_mask, out_alphas,
     last_ids) = ctx.saved_tensors
    width, height, tile_size, absgrad = ctx.args
    C, N, D = colors.shape
    th, tw = isect_offsets.shape[1:]
    g_colors = _zeros_if_none(g_colors, torch.empty(C, height, width, D))
    g_alphas = None if g_alphas is None else g_alphas.contiguous()
    v_means2d, v_conics = torch.empty_like(means2d), torch.empty_like(conics)
    v_colors, v_opacities = torch.empty_like(colors), torch.empty_like(opacities)
    v_abs = torch.empty_like(means2d) if absgrad else None
    offsets = _tile_offsets(isect_offsets, flatten_ids.numel())
    load().splat_rasterize_bwd(
        C, N, D, width, height, tile_size, tw, th, _ptr(means2d), _ptr(conics), _ptr(colors), _ptr(opacities),
        _ptr(backgrounds), _ptr(offsets), _ptr(flatten_ids), _ptr(tile_mask), _ptr(out_alphas), _ptr(last_ids),
        _ptr(g_colors), _ptr(g_alphas), _ptr(v_means2d), _ptr(v_conics), _ptr(v_colors), _ptr(v_opacities),
        _ptr(v_abs),
    )
    target = ctx.absgrad_target() if ctx.absgrad_target is not None else None
    if target is not None:
        target.absgrad = v_abs
    v_bg = None
    if backgrounds is not None and ctx.needs_input_grad[4]:
        T = 1.0 - out_alphas  # [C, H, W, 1]
        if tile_mask is not None:  # pixels of tiles not rendered do not see the background
            m = tile_mask.reshape(C, th, tw).bool()
            m = m.repeat_interleave(tile_size, 1).repeat_interleave(tile_size, 2)[:, :height, :width]
            T = T * m[..., None]
        v_bg = (T * g_colors).sum(dim=(1, 2))
    return v_means2d, v_conics, v_colors, v_opacities, v_bg, None, None, None, None, None, None, None


torch.library.register_autograd("splat::cpu_rasterize", _rasterize_backward, setup_context=_rasterize_setup)

@torch.no_grad()
def blend_work(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets, flatten_ids) -> Tensor:
    """Forward blend only, returning how many Gaussians each tile evaluated before
    all its pixels were done ([C * th * tw] int32): the pair count for benchmarks."""
    th, tw = isect_offsets.shape[1:]
    work = torch.zeros(colors.shape[0] * th * tw, dtype=torch.int32)
    _blend_forward(_f32(means2d, "means2d"), _f32(conics, "conics"), _f32(colors, "colors"),
                   _f32(opacities, "opacities"), None, isect_offsets.contiguous(), flatten_ids.contiguous(), None,
                   width, height, tile_size, work)
    return work


# means2d tensors that asked for absgrad, by id, while their op is being recorded
_absgrad_target: dict = {}


def rasterize_to_pixels(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets, flatten_ids,
                        backgrounds=None, tile_mask=None, absgrad=False):
    args = (
        _f32(means2d, "means2d"), _f32(conics, "conics"), _f32(colors, "colors"), _f32(opacities, "opacities"),
        None if backgrounds is None else _f32(backgrounds, "backgrounds"),
        isect_offsets.contiguous(), flatten_ids.contiguous(),
        None if tile_mask is None else tile_mask.to(torch.uint8).contiguous(),
        width, height, tile_size, bool(absgrad),
    )
    if absgrad:
        _absgrad_target[id(args[0])] = means2d
    try:
        out_colors, out_alphas, _ = _rasterize_op(*args)
    finally:
        _absgrad_target.pop(id(args[0]), None)
    return out_colors, out_alphas
