"""Keep freed memory in the process while a CPU training runs (glibc's malloc).

torch's CPU tensors come from malloc, and a training step allocates and frees the same
large buffers every step (SH coefficients, their gradients, per-intersection slots). glibc
serves a block above its mmap threshold (128 KiB, raised by itself up to 32 MiB) with a fresh
``mmap`` and unmaps it on free, and trims the heap top above 128 KiB, so each step pays a page
fault for every 4 KiB of those buffers: zeroing a 38 MB tensor took 10 ms instead of 0.5 ms,
and a step at 200k Gaussians spent a quarter of its time in page faults.

`retain_freed_memory` raises both thresholds (``mallopt``) so that freed blocks stay in the
heap and the next step reuses their pages; the process keeps its peak memory instead of
handing it back between steps (measured: +4% peak RSS at 200k Gaussians, 27% faster steps).
Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_RETAIN = 1 << 30  # 1 GiB: larger blocks still get their own mapping
_DEFAULT = 128 * 1024  # glibc's defaults of both


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl, macOS and Windows have no such function)
        return libc
    except (OSError, AttributeError):
        return None


def retain_freed_memory() -> Callable[[], None]:
    """Raise glibc's mmap and trim thresholds to 1 GiB (module docstring); returns a function
    that sets them back to glibc's defaults (its self-raising mmap threshold stays off: the
    default value without the raising). A no-op pair where the C library is not glibc or
    refuses the values."""
    libc = _glibc()
    if libc is None:
        return lambda: None
    if not (libc.mallopt(_M_MMAP_THRESHOLD, _RETAIN) and libc.mallopt(_M_TRIM_THRESHOLD, _RETAIN)):
        libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT)
        return lambda: None

    def restore() -> None:
        libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT)

    return restore
