"""Build native libraries on first use into a cache keyed by a hash of the
sources, flags, compiler and machine, and load them with ctypes.

The C ABI is torch-free, so a build never depends on torch's C++ headers or ABI.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Sequence

from rasterizer_cuda import SOURCE_DIR


class NativeBuildError(RuntimeError):
    """A native backend could not be compiled or loaded."""


def cache_dir() -> Path:
    root = os.environ.get("SPLAT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "splat"
    )
    return Path(root)


def _cpu_signature() -> str:
    """Identifies the CPU model, since -march=native code is only valid on it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _tool_version(cmd: str) -> str:
    try:
        return subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=60).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def build_library(name: str, sources: Sequence[str], compiler: str, flags: List[str]) -> Path:
    """Compile `sources` (relative to rasterizer_cuda/) into lib<name>.so, cached."""
    paths = [SOURCE_DIR / s for s in sources]
    # the shared headers and any header beside a source (such as cuda/host_emulation.h)
    headers = sorted({*(SOURCE_DIR / "include").glob("*.h"),
                      *(h for p in paths for ext in ("*.h", "*.cuh") for h in p.parent.glob(ext))})
    if shutil.which(compiler) is None:
        raise NativeBuildError(f"compiler {compiler!r} not found on PATH (set CXX to choose another)")
    h = hashlib.sha256()
    for p in paths + headers:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(" ".join([compiler] + flags).encode())
    h.update(_tool_version(compiler).encode())
    h.update(_cpu_signature().encode())
    out_dir = cache_dir() / f"{name}-{h.hexdigest()[:16]}"
    lib = out_dir / f"lib{name}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [compiler, *flags, "-I", str(SOURCE_DIR / "include"), *map(str, paths), "-o", tmp]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise NativeBuildError(
                f"building the native {name} library failed (exit {res.returncode}).\n"
                f"command: {' '.join(cmd)}\n{res.stderr.strip()}"
            )
        os.replace(tmp, lib)  # atomic: a concurrent build sees a whole library or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def load_library(path: Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeBuildError(f"loading {path} failed: {e}") from e


def bind_signatures(lib: ctypes.CDLL, signatures: dict) -> ctypes.CDLL:
    """Set argtypes and restype of each entry point, {name: ([argtypes], restype)};
    a missing entry point raises AttributeError."""
    for fn, (args, res) in signatures.items():
        f = getattr(lib, fn)
        f.argtypes = args
        f.restype = res
    return lib
