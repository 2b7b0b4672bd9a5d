"""antimatter15 ``.splat``: no header, 32 bytes per Gaussian (little endian)::

    position  3 x float32
    scale     3 x float32   linear: exp(log scale)
    colour    4 x uint8     r,g,b = (0.5 + SH_C0 * sh0) * 255, a = sigmoid(opacity) * 255
    rotation  4 x uint8     normalised (w,x,y,z) * 128 + 128

Gaussians are written sorted by descending ``exp(sum of log scales) *
sigmoid(opacity)`` (stable), like antimatter15's ``convert.py``; gsplat's
exporter uses Morton order instead, and readers do not care.

Bytes are rounded to nearest (``floor(x + 0.5)``, clamped to 0..255) where
``convert.py`` and gsplat truncate: that halves the error and makes
load -> save reproduce each record's position, scale and colour bytes. Decoding
is the usual one (``c / 255``, ``(b - 128) / 128``), so files stay
interchangeable.

Bounds after a round trip (our writer): positions exact; scales stored as
``exp(log scale)`` correctly rounded to float32, read back as its log (exp of
it within 1e-6 relative of the original); colour ``0.5 + SH_C0*sh0`` within 0.5/255 (inside [0, 1]),
``sigmoid(opacity)`` within 0.5/255 (within 1e-6 of 0 or 1 at the ends),
normalised quaternion components within 2/128 (up to sign). Files written by
truncating writers (gsplat, convert.py) decode within 1/255 and 4/128.

The format has no higher-order SH: ``shN`` is dropped on save and comes back
as ``[N, 0, 3]``. A reader has no magic number to check, so it checks the
size (a non-zero multiple of 32) and that positions are finite and scales
finite and non-negative, which rejects most non-.splat data.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .common import SH_C0, FormatError, atomic_write, read_file_bytes, round_u8, sigmoid, to_splats, validate_splats

__all__ = ["read_splat", "write_splat", "decode_splat", "encode_splat", "sort_order", "RECORD"]

RECORD = np.dtype([("pos", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))])
assert RECORD.itemsize == 32
_OPACITY_EPS = 1e-6


def sort_order(a: Mapping[str, np.ndarray]) -> np.ndarray:
    """The writer's order: descending exp(s0+s1+s2) * sigmoid(opacity), stable."""
    s = a["scales"].astype(np.float64).sum(axis=1)
    o = a["opacities"].astype(np.float64)
    with np.errstate(over="ignore"):
        key = np.exp(s) / (1.0 + np.exp(-o))
    return np.argsort(-key, kind="stable")


def encode_splat(splats: Mapping[str, Any], where: str = "splats") -> bytes:
    a = validate_splats(splats, where)
    n = a["means"].shape[0]
    with np.errstate(over="ignore", under="ignore"):
        lin = np.exp(a["scales"].astype(np.float64)).astype(np.float32)  # correctly rounded
    if not np.isfinite(lin).all():
        i = int(np.nonzero(~np.isfinite(lin).all(axis=1))[0][0])
        raise FormatError(f"{where}: log scale too large for .splat (exp overflows float32) at index {i}")
    rec = np.zeros(n, RECORD)
    rec["pos"] = a["means"]
    rec["scale"] = lin
    rgb = 0.5 + SH_C0 * a["sh0"].reshape(n, 3).astype(np.float64)
    alpha = sigmoid(a["opacities"])
    rec["rgba"][:, :3] = round_u8(rgb * 255.0)
    rec["rgba"][:, 3] = round_u8(alpha * 255.0)
    q = a["quats"].astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    rec["rot"] = round_u8(q * 128.0 + 128.0)
    return rec[sort_order(a)].tobytes()


def decode_splat(data: bytes, where: str = "<bytes>") -> dict:
    if len(data) == 0:
        raise FormatError(f"{where}: file is empty (0 bytes)")
    if len(data) % RECORD.itemsize:
        raise FormatError(
            f"{where}: size {len(data)} is not a multiple of 32 bytes "
            "(truncated, or not a .splat file)"
        )
    rec = np.frombuffer(data, RECORD)
    n = rec.shape[0]
    pos = rec["pos"].astype(np.float32)
    lin = rec["scale"].astype(np.float32)
    bad = ~np.isfinite(pos).all(axis=1) | ~np.isfinite(lin).all(axis=1) | (lin < 0).any(axis=1)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise FormatError(
            f"{where}: record {i} has a non-finite position or a negative/non-finite scale "
            f"({int(bad.sum())} bad records of {n}); not a .splat file?"
        )
    tiny = np.finfo(np.float32).tiny
    scales = np.log(np.maximum(lin, tiny).astype(np.float64))
    rgba = rec["rgba"].astype(np.float64) / 255.0
    sh0 = ((rgba[:, :3] - 0.5) / SH_C0).reshape(n, 1, 3)
    alpha = np.clip(rgba[:, 3], _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    opacities = np.log(alpha / (1.0 - alpha))
    q = (rec["rot"].astype(np.float64) - 128.0) / 128.0
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    zero = norm[:, 0] == 0
    q[zero] = (1.0, 0.0, 0.0, 0.0)
    norm[zero] = 1.0
    quats = q / norm
    return to_splats(
        means=pos,
        scales=scales,
        quats=quats,
        opacities=opacities,
        sh0=sh0,
        shN=np.zeros((n, 0, 3), np.float32),
        where=where,
    )


def read_splat(path: str | os.PathLike) -> dict:
    return decode_splat(read_file_bytes(path, ".splat"), str(path))


def write_splat(path: str | os.PathLike, splats: Mapping[str, Any]) -> Path:
    """Write an antimatter15 .splat (SH degree 0: shN is dropped)."""
    return atomic_write(path, encode_splat(splats, where=str(path)))
