"""Read and write Gaussian-splat files.

Formats (``FORMATS``), chosen from the file name or given explicitly:

==================  ==============================  =========================================
name                file names                      what it is
==================  ==============================  =========================================
``ply``             ``*.ply``                       graphdeco/INRIA 3DGS .ply (float32, exact)
``compressed_ply``  ``*.compressed.ply``            PlayCanvas/SuperSplat compressed .ply
``splat``           ``*.splat``                     antimatter15 .splat (32 bytes, SH degree 0)
``spz``             ``*.spz``                       Niantic .spz (v3 written; v1-v4 read)
``sog``             ``*.sog``, ``meta.json``        PlayCanvas SOG v2 (zip of WebP images; read:
                                                    also unbundled meta.json + images, or
                                                    the directory holding them)
``glb``             ``*.glb`` (``*.gltf`` read)     glTF 2.0 with KHR_gaussian_splatting
==================  ==============================  =========================================

``load`` also reads training checkpoints (``*.pt``, ``*.pth``, ``*.ckpt``: a
``torch.save``'d dict whose ``"splats"`` entry is the splats dict, or the
splats dict itself). A ``.ply`` is always sniffed: a PlayCanvas compressed
layout (elements ``chunk`` + ``vertex`` with ``packed_*``) is recognised
whatever the file is called.

The model is the dict gsplat's simple_trainer uses, float32 CPU tensors::

    means [N,3]  scales [N,3] (log)  quats [N,4] (w,x,y,z)  opacities [N] (logits)
    sh0 [N,1,3]  shN [N,K-1,3] with K = (d+1)^2, d in 0..3 (shN may be [N,0,3])

Policies shared by every format:

* ``N = 0`` is not allowed: saving an empty model and loading a file with no
  Gaussians both raise ``FormatError`` (no viewer can use an empty file, and
  an empty file almost always means an upstream bug).
* Degenerate quaternions (all zeros, or ``|q| < 1e-12``) mean the identity
  rotation everywhere: every backend renders them so (as gsplat does), readers
  replace them by (1, 0, 0, 0) with a warning naming the file, the count and the
  first index, and writers store the identity.
* Saving validates the dict first (keys, shapes, dtypes, finite values) and
  writes to a temporary file in the destination directory that is renamed over
  the target only when complete: a failed save
  leaves no output, no temporary file, and any existing file untouched.
* Readers raise ``FormatError`` (a ``ValueError``) naming the file and the
  problem: missing file, wrong magic, truncated data, corrupt gzip, bad
  property counts, non-finite values. They never return partial data.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from . import compressed_ply as _compressed_ply
from . import glb as _glb
from . import ply as _ply
from . import sog as _sog
from . import splat_format as _splat
from . import spz as _spz
from .common import (SH_C0, SPLAT_KEYS, FormatError, atomic_write, identity_for_degenerate_quats, num_gaussians,
                     read_file_bytes, sh_degree, torch_load_file, validate_splats)

__all__ = [
    "FORMATS",
    "LOAD_FORMATS",
    "CHECKPOINT_SUFFIXES",
    "SH_C0",
    "SPLAT_KEYS",
    "FormatError",
    "atomic_write",
    "read_file_bytes",
    "detect_format",
    "load",
    "save",
    "sh_degree",
    "num_gaussians",
    "validate_splats",
]

FORMATS = ("ply", "compressed_ply", "splat", "spz", "sog", "glb")
LOAD_FORMATS = FORMATS + ("checkpoint",)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def detect_format(path: str | os.PathLike) -> str:
    """Format name from a file name: ``*.compressed.ply`` -> ``compressed_ply``,
    ``*.ply`` -> ``ply``, ``*.splat`` -> ``splat``, ``*.spz`` -> ``spz``, ``*.sog`` and
    ``meta.json`` -> ``sog``, ``*.glb``/``*.gltf`` -> ``glb``,
    ``*.pt``/``*.pth``/``*.ckpt`` -> ``checkpoint`` (read only)."""
    name = Path(path).name.lower()
    if name.endswith(".compressed.ply"):
        return "compressed_ply"
    if name.endswith(".ply"):
        return "ply"
    if name.endswith(".splat"):
        return "splat"
    if name.endswith(".spz"):
        return "spz"
    if name.endswith(".sog") or name == "meta.json":
        return "sog"
    if name.endswith((".glb", ".gltf")):
        return "glb"
    if name.endswith(CHECKPOINT_SUFFIXES):
        return "checkpoint"
    raise FormatError(
        f"{path}: cannot tell the format from the name; use a .ply, .compressed.ply, "
        ".splat, .spz, .sog, .glb (or .pt checkpoint) name or pass format= one of " + ", ".join(FORMATS)
    )


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"ply\n") or data.startswith(b"ply\r\n"):
        return "ply"
    if data[:2] == b"\x1f\x8b" or data[:4] == b"NGSP":
        return "spz"
    if data[:4] == b"glTF":
        return "glb"
    if data[:4] == b"PK\x03\x04":
        return "sog"
    return None


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Splats from a torch checkpoint: a dict with a ``"splats"`` entry (gsplat's
    simple_trainer layout) or the splats dict itself. Loaded with
    ``weights_only=True``: no arbitrary code is unpickled."""
    p = Path(path)
    ckpt = torch_load_file(p, "checkpoint")
    splats = ckpt.get("splats", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(splats, Mapping) or "means" not in splats:
        keys = list(ckpt.keys())[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise FormatError(f"{p}: checkpoint has no 'splats' dict with 'means' (top level: {keys})")
    q = splats.get("quats")
    if isinstance(q, torch.Tensor) and q.ndim == 2 and q.shape[-1] == 4 and q.is_floating_point():
        identity_for_degenerate_quats(q.detach().float().cpu().numpy(), f"{p}")  # the warning naming the file
    arrs = validate_splats(splats, where=f"{p}: splats")
    return {k: torch.from_numpy(v) for k, v in arrs.items()}


def _read_any_ply(path: Path) -> dict[str, torch.Tensor]:
    """A .ply in either layout, told apart by its header (whatever the file is called)."""
    data = read_file_bytes(path, "PLY")
    header = _ply.parse_header(data, str(path))
    if _ply.is_compressed_layout(header):
        return _compressed_ply.decode_compressed_ply(data, str(path), header=header)
    return _ply.decode_ply(data, str(path), header=header)


def load(path: str | os.PathLike, format: str | None = None) -> dict[str, torch.Tensor]:
    """Read a splat file into the splats dict (float32 CPU tensors)."""
    if format is not None and format not in LOAD_FORMATS:
        raise FormatError(f"unknown format {format!r}; expected one of {', '.join(LOAD_FORMATS)}")
    p = Path(path)
    if p.is_dir() and (p / "meta.json").is_file() and format in (None, "sog"):
        p, format = p / "meta.json", "sog"  # a directory holding an unbundled SOG
    if format is None:
        try:
            format = detect_format(p)
        except FormatError:
            data = read_file_bytes(p, "splat")
            format = _sniff(data)
            if format is None:
                raise
    if format == "checkpoint":
        return load_checkpoint(p)
    if format in ("ply", "compressed_ply"):
        return _read_any_ply(p)
    if format == "splat":
        return _splat.read_splat(p)
    if format == "sog":
        return _sog.read_sog(p)
    if format == "glb":
        return _glb.read_glb(p)
    return _spz.read_spz(p)


def save(
    path: str | os.PathLike,
    splats: Mapping[str, Any],
    format: str | None = None,
    **options: Any,
) -> Path:
    """Write ``splats`` to ``path`` atomically and return the path.

    ``format`` defaults to ``detect_format(path)``. ``options`` go to the
    format's writer: ``ply``: ``normals=True``; ``spz``: ``version=3``,
    ``antialiased=False``; ``sog``: ``order="morton"`` (or a permutation, e.g.
    `splat.compress.plas.grid_order`), ``sh_palette=None``, ``antialiased=False``; the others
    take none."""
    if format is None:
        format = detect_format(path)
    if format == "checkpoint":
        raise FormatError(f"{path}: checkpoints are read-only here; save with torch.save instead")
    if format not in FORMATS:
        raise FormatError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    writer = {
        "ply": _ply.write_ply,
        "compressed_ply": _compressed_ply.write_compressed_ply,
        "splat": _splat.write_splat,
        "spz": _spz.write_spz,
        "sog": _sog.write_sog,
        "glb": _glb.write_glb,
    }[format]
    return writer(path, splats, **options)
