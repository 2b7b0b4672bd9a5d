"""Rendering backends. Each module exposes NAME and the four pipeline stages
project, spherical_harmonics, isect_tiles and rasterize_to_pixels with the
signatures of `splat.backends.torch_ref`."""
from __future__ import annotations

import warnings

import torch

from . import torch_ref

torch_ref.NAME = "torch"

_BACKENDS = ("auto", "torch", "cpu", "cuda", "raytrace")
_warned_fallback = False


def get(name: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """The backend module for `name` ("auto", "torch", "cpu", "cuda" or "raytrace") on `device`.

    "auto" takes the native backend of the device when it builds and the dtype
    is float32, and the torch reference otherwise (with one warning when a
    native build fails)."""
    global _warned_fallback
    if name not in _BACKENDS:
        raise ValueError(f"splat.rasterize: backend must be one of {_BACKENDS}, got {name!r}")
    if name == "torch":
        return torch_ref
    if name == "raytrace":
        from . import cpu, raytrace

        cpu.load()  # the tracer's native code (raises NativeBuildError with the compiler output)
        return raytrace
    if name == "cuda":
        if device.type != "cuda":
            raise ValueError(f"splat.rasterize: backend='cuda' needs CUDA tensors, got tensors on {device}")
        from . import cuda

        cuda.load()  # raises NativeBuildError with the compiler output
        return cuda
    if name == "cpu":
        if device.type != "cpu":
            raise ValueError(f"splat.rasterize: backend='cpu' needs CPU tensors, got tensors on {device}")
        from . import cpu

        cpu.load()  # raises NativeBuildError with the compiler output
        return cpu
    # auto
    if device.type == "cuda" and dtype == torch.float32:
        try:
            from . import cuda

            cuda.load()
            return cuda
        except Exception as e:  # noqa: BLE001 - any build/load failure falls back
            if not _warned_fallback:
                warnings.warn(f"splat: CUDA backend unavailable, using the torch reference ({e})", stacklevel=3)
                _warned_fallback = True
            return torch_ref
    if device.type == "cpu" and dtype == torch.float32:
        try:
            from . import cpu

            cpu.load()
            return cpu
        except Exception as e:  # noqa: BLE001
            if not _warned_fallback:
                warnings.warn(f"splat: native CPU backend unavailable, using the torch reference ({e})", stacklevel=3)
                _warned_fallback = True
            return torch_ref
    return torch_ref
