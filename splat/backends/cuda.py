"""CUDA backend: the kernels of rasterizer_cuda/cuda/splat_cuda.cu, compiled with
plain nvcc on first use (no torch C++ headers) into the build cache, loaded with
ctypes and run on torch's current stream; autograd as for the cpu backend
(splat.backends._native). float32 only.

Environment:
    SPLAT_NVCC        the nvcc to use (default: $CUDA_HOME/bin/nvcc, nvcc on PATH,
                      /usr/local/cuda/bin/nvcc)
    SPLAT_CUDA_ARCH   compute capabilities to build for, e.g. "90" or "80;90"
                      (default: the current device's)
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import threading
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from ._build import NativeBuildError, bind_signatures, build_library, load_library
from ._native import check_isect_count, check_same_device, make_ops, ptr

NAME = "cuda"

_lib = None
_lock = threading.Lock()

_P = ctypes.c_void_p
_I = ctypes.c_int
_F = ctypes.c_float
_D = ctypes.c_double
_I64 = ctypes.c_int64
_SZ = ctypes.c_size_t

# every entry point returns 0 or a cudaError_t; the last argument is the stream
_SIGNATURES = {
    "splatcu_error_string": ([_I], ctypes.c_char_p),
    "splatcu_max_channels": ([], _I),
    "splatcu_project_fwd": ([_I, _I, _P, _P, _P, _P, _P, _P, _I, _I, _F, _F, _F, _F, _I, _P, _P, _P, _P, _P, _P], _I),
    "splatcu_project_bwd": ([_I, _I, _P, _P, _P, _P, _P, _I, _I, _F, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P],
                            _I),
    "splatcu_sh_fwd": ([_I, _I, _I, _I, _P, _P, _I, _P, _P, _P], _I),
    "splatcu_sh_bwd": ([_I, _I, _I, _I, _P, _P, _I, _P, _P, _P, _P, _P], _I),
    "splatcu_isect_count_temp_bytes": ([_I64, ctypes.POINTER(_SZ)], _I),
    "splatcu_isect_count": ([_I, _I, _P, _P, _I, _I, _I, _P, _P, _P, _P, _SZ, _P], _I),
    "splatcu_isect_key_bits": ([_I, _I, _I], _I),
    "splatcu_isect_sort_temp_bytes": ([_I64, _I, _I, _I, ctypes.POINTER(_SZ)], _I),
    "splatcu_isect_fill": ([_I, _I, _P, _P, _P, _I, _I, _I, _P, _P, _I64, _P, _P, _P, _P, _P, _SZ, _P,
                            ctypes.POINTER(_I), _P], _I),
    "splatcu_rasterize_fwd": ([_I] * 8 + [_P] * 13, _I),
    "splatcu_rasterize_jvp": ([_I] * 8 + [_P] * 15, _I),
    "splatcu_rasterize_bwd": ([_I] * 8 + [_P] * 18, _I),
    "splatcu_rt_max_channels": ([], _I),
    "splatcu_rt_fwd": ([_I, _P, _P, _P, _P, _I, _P, _P, _P, _I, _P, _P, _P, _P, _P, _P], _I),
    "splatcu_rt_bwd": ([_I, _P, _P, _P, _P, _I, _P, _P, _I] + [_P] * 11, _I),
    # fused L1 + D-SSIM loss (cuda/loss_kernels.cuh; splat.backends.fused_loss)
    "splatcu_fused_loss_scratch": ([_I, _I, _I], _I64),
    "splatcu_fused_loss_fwd": ([_I, _I, _I, _P, _P, _P, _F, _P, _P, _P, _P, _P, _P], _I),
    "splatcu_fused_loss_bwd": ([_I, _I, _I, _P, _P, _P, _F, _P, _P, _P, _P, _P, _P, _P], _I),
    "splatcu_adam_rows": ([_I64, _I64, _P, _P, _P, _P, _P, _D, _D, _F, _F, _F], _I),
}

SOURCES = ["cuda/splat_cuda.cu"]
NVCC_FLAGS = ["-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
              "-lineinfo", "--cudart=static"]


def find_nvcc() -> Optional[str]:
    """The nvcc to build with, or None."""
    if os.environ.get("SPLAT_NVCC"):
        return os.environ["SPLAT_NVCC"]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def _arch_flags(archs: Iterable[str]) -> list:
    """Machine code for each architecture, plus PTX for the newest so that newer
    GPUs can still JIT-compile the library."""
    archs = [a.strip().replace("sm_", "").replace(".", "") for a in archs if a.strip()]
    for a in archs:
        if not a.isdigit():
            raise NativeBuildError(f"bad CUDA architecture {a!r} (expected e.g. '80' or '90')")
    if not archs:
        raise NativeBuildError("no CUDA architecture given (e.g. SPLAT_CUDA_ARCH=90)")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    newest = max(archs, key=int)
    return flags + [f"-gencode=arch=compute_{newest},code=compute_{newest}"]


def build(archs: Sequence[str], extra_flags: Sequence[str] = ()) -> Path:
    """Compile the CUDA library for the given compute capabilities (no GPU
    needed) into the build cache and return its path; raises NativeBuildError."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise NativeBuildError("the CUDA backend needs nvcc: none found (set SPLAT_NVCC or CUDA_HOME)")
    return build_library("splat_cuda", SOURCES, nvcc, NVCC_FLAGS + _arch_flags(archs) + list(extra_flags))


def build_host_emulation() -> Path:
    """The same source compiled by g++ against rasterizer_cuda/cuda/host_emulation.h:
    the kernels run on the CPU (each CUDA thread a fiber), for tests without a GPU.
    Same entry points; pass CPU tensors. Not for use: slow, and not the GPU build."""
    return build_library("splat_cuda_emulated", SOURCES, os.environ.get("CXX", "g++"),
                         ["-O2", "-std=c++17", "-shared", "-fPIC", "-DSPLAT_CUDA_HOST_EMULATION", "-x", "c++"])


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Set the ctypes signatures of the library's entry points."""
    return bind_signatures(lib, _SIGNATURES)


def load():
    """Build (first use only) and load the CUDA library for the current device;
    raises NativeBuildError."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            if not torch.cuda.is_available():
                raise NativeBuildError("the CUDA backend needs a CUDA device, and torch.cuda.is_available() is False")
            env = os.environ.get("SPLAT_CUDA_ARCH")
            if env:
                archs = env.replace(",", ";").split(";")
            else:
                major, minor = torch.cuda.get_device_capability()
                archs = [f"{major}{minor}"]
            _lib = bind(load_library(build(archs)))
    return _lib


def check(lib, rc: int, fn: str) -> None:
    """Raise a RuntimeError naming the entry point and the CUDA error for a non-zero return code."""
    if rc:
        msg = lib.splatcu_error_string(rc)
        raise RuntimeError(f"splat CUDA backend: {fn} failed with CUDA error {rc}: "
                           f"{msg.decode() if msg else 'unknown error'}")


def _device_guard(device):
    """Make `device` current for the CUDA calls (CPU tensors: the tests' host
    emulation of the kernels, which has no devices)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _call(device, fn, *args):
    lib = load()
    with _device_guard(device):
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
        check(lib, getattr(lib, "splatcu_" + fn)(*args, ctypes.c_void_p(stream)), fn)


MAX_CHANNELS = 32  # splatcu_max_channels(): render.py chunks colours to this many
_ops = make_ops("cuda", _call, max_channels=MAX_CHANNELS)
project = _ops.project
spherical_harmonics = _ops.spherical_harmonics
rasterize_to_pixels = _ops.rasterize_to_pixels
rasterize_to_pixels_jvp = _ops.rasterize_to_pixels_jvp
blend_work = _ops.blend_work


def _temp(lib, device, fn: str, *args) -> torch.Tensor:
    """A scratch buffer for CUB of the size `fn` asks for, from torch's allocator."""
    size = _SZ(0)
    check(lib, getattr(lib, fn)(*args, ctypes.byref(size)), fn)
    return torch.empty(max(int(size.value), 1), dtype=torch.uint8, device=device)


# ------------------------------------------------------------------ tiles
@torch.no_grad()
def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, tile_mask=None):
    lib = load()
    C, N = depths.shape
    dev = depths.device
    means2d, radii, depths = means2d.detach().contiguous(), radii.contiguous(), depths.detach().contiguous()
    mask = None if tile_mask is None else tile_mask.to(torch.uint8).contiguous()
    check_same_device(means2d=means2d, radii=radii, depths=depths, tile_mask=mask)
    n_tiles = C * tile_width * tile_height
    key_bits = lib.splatcu_isect_key_bits(C, tile_width, tile_height)
    if key_bits > 63:
        raise ValueError(f"splat.rasterize: {C} cameras of {tile_width}x{tile_height} tiles need {key_bits}-bit "
                         "intersection keys (at most 63); render fewer cameras per call")
    tiles_per_gauss = torch.zeros(C, N, dtype=torch.int32, device=dev)
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64, device=dev)
    M = 0
    if C * N:
        with _device_guard(dev):
            cum = torch.empty(C * N, dtype=torch.int64, device=dev)
            temp = _temp(lib, dev, "splatcu_isect_count_temp_bytes", C * N)
            _call(dev, "isect_count", C, N, ptr(means2d), ptr(radii), tile_size, tile_width, tile_height, ptr(mask),
                  ptr(tiles_per_gauss), ptr(cum), ptr(temp), temp.numel())
            M = int(cum[-1])  # waits for the GPU: the sizes below depend on it
    check_isect_count(M)
    keys = [torch.empty(M, dtype=torch.int64, device=dev) for _ in range(2)]
    ids = [torch.empty(M, dtype=torch.int32, device=dev) for _ in range(2)]
    if M:
        with _device_guard(dev):
            temp = _temp(lib, dev, "splatcu_isect_sort_temp_bytes", M, C, tile_width, tile_height)
            which = _I(0)
            _call(dev, "isect_fill", C, N, ptr(means2d), ptr(radii), ptr(depths), tile_size, tile_width,
                  tile_height, ptr(mask), ptr(cum), M, ptr(keys[0]), ptr(ids[0]), ptr(keys[1]), ptr(ids[1]),
                  ptr(temp), temp.numel(), ptr(offsets), ctypes.byref(which))
        isect_ids, flatten_ids = keys[which.value], ids[which.value]
    else:
        isect_ids, flatten_ids = keys[0], ids[0]
    isect_offsets = offsets[:-1].to(torch.int32).reshape(C, tile_height, tile_width)
    return tiles_per_gauss, isect_ids, flatten_ids, isect_offsets
