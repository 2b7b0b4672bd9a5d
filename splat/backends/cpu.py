"""Native CPU backend: C++/OpenMP kernels in rasterizer_cuda/cpu, loaded with
ctypes, differentiable through torch.library custom ops with hand-written
backward passes (splat.backends._native). float32 only."""
from __future__ import annotations

import ctypes
import os
import threading

import torch

from ._build import NativeBuildError, bind_signatures, build_library, load_library  # noqa: F401 (NativeBuildError re-exported)
from ._native import check_isect_count, check_same_device, make_ops, ptr as _ptr

NAME = "cpu"

_lib = None
_lock = threading.Lock()

_P = ctypes.c_void_p
_I = ctypes.c_int
_F = ctypes.c_float
_D = ctypes.c_double
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
    "splat_rasterize_jvp": ([_I] * 8 + [_P] * 14, None),
    "splat_rasterize_bwd": ([_I] * 8 + [_P] * 17, None),
    # 2D image Gaussians (cpu/image2d_cpu.cpp)
    "splat_img_fwd": ([_I] * 8 + [_P] * 9, None),
    "splat_img_bwd": ([_I] * 8 + [_P] * 10, None),
    # ray tracing (cpu/raytrace_cpu.cpp)
    "splat_rt_node_floats": ([], _I),
    "splat_rt_prim_floats": ([], _I),
    "splat_rt_kbuffer": ([], _I),
    "splat_rt_build": ([_I, _P, _P, _P, _P, _P, _P], _I),
    "splat_rt_fwd": ([_I, _P, _P, _P, _P, _I, _P, _P, _P, _I, _P, _P, _P, _P, _P, _I], _P),
    "splat_rt_take_lists": ([_P, _I, _P, _P], None),
    "splat_rt_free_lists": ([_P], None),
    "splat_rt_bwd": ([_I, _P, _P, _P, _P, _I, _I] + [_P] * 14, None),
    # fused L1 + D-SSIM loss (cpu/loss_cpu.cpp; splat.backends.fused_loss)
    "splat_fused_loss_fwd": ([_I, _I, _I, _P, _P, _P, _F, _P, _P, _P, _P], None),
    "splat_fused_loss_bwd": ([_I, _I, _I, _P, _P, _P, _F, _P, _P, _P, _P, _P, _P], None),
    # fused Adam (cpu/optim_cpu.cpp; splat.backends.fused_adam)
    "splat_adam_rows": ([_I64, _I64, _P, _P, _P, _P, _P, _D, _D, _F, _F, _F], None),
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
            path = build_library("splat_cpu", ["cpu/splat_cpu.cpp", "cpu/image2d_cpu.cpp", "cpu/raytrace_cpu.cpp",
                                               "cpu/loss_cpu.cpp", "cpu/optim_cpu.cpp"],
                                 os.environ.get("CXX", "g++"), CXX_FLAGS)
            lib = bind_signatures(load_library(path), _SIGNATURES)
            lib.splat_set_num_threads(torch.get_num_threads())
            _lib = lib
    return _lib


def _call(device, fn, *args):
    getattr(load(), "splat_" + fn)(*args)


_ops = make_ops("cpu", _call)
project = _ops.project
spherical_harmonics = _ops.spherical_harmonics
rasterize_to_pixels = _ops.rasterize_to_pixels
rasterize_to_pixels_jvp = _ops.rasterize_to_pixels_jvp
blend_work = _ops.blend_work


# ------------------------------------------------------------------ tiles
@torch.no_grad()
def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, tile_mask=None):
    lib = load()
    C, N = depths.shape
    means2d, radii, depths = means2d.detach().contiguous(), radii.contiguous(), depths.detach().contiguous()
    mask = None if tile_mask is None else tile_mask.to(torch.uint8).contiguous()
    check_same_device(means2d=means2d, radii=radii, depths=depths, tile_mask=mask)
    n_tiles = C * tile_width * tile_height
    tiles_per_gauss = torch.zeros(C, N, dtype=torch.int32)
    counts = torch.zeros(n_tiles, dtype=torch.int64)
    M = lib.splat_isect_count(C, N, _ptr(means2d), _ptr(radii), tile_size, tile_width, tile_height, _ptr(mask),
                              _ptr(tiles_per_gauss), _ptr(counts)) if C * N else 0
    check_isect_count(M)
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    isect_ids = torch.empty(M, dtype=torch.int64)
    flatten_ids = torch.empty(M, dtype=torch.int32)
    if M:
        lib.splat_isect_fill(C, N, _ptr(means2d), _ptr(radii), _ptr(depths), tile_size, tile_width, tile_height,
                             _ptr(mask), _ptr(offsets), _ptr(isect_ids), _ptr(flatten_ids))
    isect_offsets = offsets[:-1].to(torch.int32).reshape(C, tile_height, tile_width)
    return tiles_per_gauss, isect_ids, flatten_ids, isect_offsets
