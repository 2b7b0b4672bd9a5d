"""PlayCanvas / SuperSplat compressed .ply (``*.compressed.ply``).

Layout (binary_little_endian)::

    element chunk ceil(N/256)     18 x float: min_x min_y min_z max_x max_y max_z
                                  min_scale_{x,y,z} max_scale_{x,y,z}
                                  min_r min_g min_b max_r max_g max_b
    element vertex N              4 x uint: packed_position packed_rotation
                                  packed_scale packed_color
    element sh N (degree > 0)     3(K-1) x uchar: f_rest_0 .. (channel-major)

Gaussians are sorted in Morton order (10 bits per axis over the model's
bounding box, exactly as gsplat's exporter does) and cut into chunks of 256;
each quantity is stored relative to its chunk's min/max:

* position and log scale: 11-10-11 bit unorm (x in the top bits); the scale
  bounds are clamped to [-20, 20];
* colour ``0.5 + SH_C0*sh0`` per channel as 8 bits relative to the chunk's
  colour bounds, with ``sigmoid(opacity)`` as 8 absolute bits (r in the top
  byte, alpha in the low byte);
* rotation "smallest three": the normalised (w,x,y,z) quaternion is negated
  when its largest |component| is negative, that component's index goes in
  the top 2 bits and the other three (in w,x,y,z order) as 10-bit
  ``q * sqrt(2)/2 + 0.5``;
* SH: ``trunc((x / 8 + 0.5) * 256)`` clamped to 0..255, decoded as
  ``(n - 0.5) * 8`` with ``n = 0 | 1 | (v + 0.5) / 256`` for v = 0 | 255 | else.

The encoder does the same float32 arithmetic as ``gsplat.exporter`` so the
bytes are identical to gsplat's ``export_splats(format="ply_compressed")``
for the same input, with three documented differences: gsplat drops
Gaussians with ``sigmoid(opacity) <= 1/255`` (we keep every Gaussian; prune
first if you want that), gsplat writes an empty ``element sh N`` for degree 0
(we omit it, as splat-transform does, whose reader rejects the empty
element), and a chunk whose values are all equal is stored as 0 here where
gsplat divides 0 by 0. The reader accepts both, and old SuperSplat files
whose chunks have no colour bounds (12 chunk properties).

Round-trip error bounds, for a chunk whose values span R: positions and log
scales within R/(2*2047) in x and z and R/(2*1023) in y; colour
``0.5 + SH_C0*sh0`` within R/510; ``sigmoid(opacity)`` within 0.5/255; SH
within 1/64 for |x| <= 4 - 1/32 (1/32 up to 4, clipped beyond); normalised
quaternion components within 2e-3, up to sign.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .common import SH_C0, FormatError, atomic_write, read_file_bytes, to_splats, validate_splats
from .ply import PlyHeader, is_compressed_layout, parse_header, read_elements

__all__ = [
    "read_compressed_ply",
    "write_compressed_ply",
    "decode_compressed_ply",
    "encode_compressed_ply",
    "morton_order",
    "CHUNK_SIZE",
]

CHUNK_SIZE = 256
CHUNK_PROPS = [
    "min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
    "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z",
    "min_r", "min_g", "min_b", "max_r", "max_g", "max_b",
]
VERTEX_PROPS = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
_OPACITY_EPS = 1e-6


# ---------------------------------------------------------------------------
# encode (torch float32, mirroring gsplat.exporter's arithmetic)
# ---------------------------------------------------------------------------


def _part1by2(x: torch.Tensor) -> torch.Tensor:
    x = x & 0x000003FF
    x = (x ^ (x << 16)) & 0xFF0000FF
    x = (x ^ (x << 8)) & 0x0300F00F
    x = (x ^ (x << 4)) & 0x030C30C3
    x = (x ^ (x << 2)) & 0x09249249
    return x


def morton_order(means: torch.Tensor | np.ndarray) -> np.ndarray:
    """Indices sorting the Gaussians by a 30-bit Morton code of their centre
    (gsplat's ``sort_centers``; stable, so ties keep their input order)."""
    c = torch.as_tensor(np.asarray(means, dtype=np.float32))
    lo = c.min(dim=0).values
    hi = c.max(dim=0).values
    length = hi - lo
    length[length == 0] = 1
    s = ((c - lo) / length * 1024).floor().to(torch.int32).to(torch.int64)
    code = (_part1by2(s[:, 2]) << 2) + (_part1by2(s[:, 1]) << 1) + _part1by2(s[:, 0])
    return torch.argsort(code, stable=True).numpy()


def _unit(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(x - lo) / (hi - lo) per chunk; 0 where the chunk's range is empty."""
    r = (hi - lo).unsqueeze(1)
    t = (x - lo.unsqueeze(1)) / torch.where(r == 0, torch.ones_like(r), r)
    return torch.where(r == 0, torch.zeros_like(t), t)


def _pack_unorm(v: torch.Tensor, bits: int) -> torch.Tensor:
    t = (1 << bits) - 1
    return torch.clamp((v * t + 0.5).floor(), min=0, max=t).to(torch.int64)


def _pack_111011(v: torch.Tensor) -> torch.Tensor:
    return (_pack_unorm(v[..., 0], 11) << 21) | (_pack_unorm(v[..., 1], 10) << 11) | _pack_unorm(v[..., 2], 11)


def _pack_rotation(q: torch.Tensor) -> torch.Tensor:
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    largest = torch.argmax(torch.abs(q), dim=-1)
    rows = torch.arange(q.shape[0])
    q = torch.where((q[rows, largest] < 0).unsqueeze(-1), -q, q)
    others = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    packed = _pack_unorm(q[rows.unsqueeze(1), others] * (math.sqrt(2) * 0.5) + 0.5, 10)
    return (largest.to(torch.int64) << 30) | (packed[:, 0] << 20) | (packed[:, 1] << 10) | packed[:, 2]


def encode_compressed_ply(splats: Mapping[str, Any], where: str = "splats") -> bytes:
    a = {k: torch.from_numpy(v) for k, v in validate_splats(splats, where).items()}
    n = a["means"].shape[0]
    n_rest = a["shN"].shape[1]
    shN = a["shN"].permute(0, 2, 1).reshape(n, 3 * n_rest)  # channel-major, like f_rest
    order = torch.from_numpy(morton_order(a["means"].numpy()))
    n_chunks = (n + CHUNK_SIZE - 1) // CHUNK_SIZE
    pad = n_chunks * CHUNK_SIZE - n
    idx = torch.cat([order, order[-1:].expand(pad)]).reshape(n_chunks, CHUNK_SIZE)

    def bounds(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.min(dim=1).values, x.max(dim=1).values

    means = a["means"][idx]  # [C, 256, 3]
    scales = a["scales"][idx]
    colors = (a["sh0"].reshape(n, 3) * SH_C0 + 0.5)[idx]
    alpha = 1 / (1 + torch.exp(-a["opacities"]))[idx]
    p_lo, p_hi = bounds(means)
    s_lo, s_hi = bounds(scales)
    s_lo, s_hi = s_lo.clamp(-20, 20), s_hi.clamp(-20, 20)
    c_lo, c_hi = bounds(colors)
    pos = _pack_111011(_unit(means, p_lo, p_hi))
    scl = _pack_111011(_unit(scales, s_lo, s_hi))
    cn = _unit(colors, c_lo, c_hi)
    col = (
        (_pack_unorm(cn[..., 0], 8) << 24) | (_pack_unorm(cn[..., 1], 8) << 16)
        | (_pack_unorm(cn[..., 2], 8) << 8) | _pack_unorm(alpha, 8)
    )
    rot = _pack_rotation(a["quats"][idx.reshape(-1)]).reshape(n_chunks, CHUNK_SIZE)
    vertex = torch.stack([pos, rot, scl, col], dim=-1).reshape(-1, 4)[:n]
    chunk = torch.cat([p_lo, p_hi, s_lo, s_hi, c_lo, c_hi], dim=1)  # [C, 18]
    sh = torch.clamp(torch.trunc((shN[order] / 8 + 0.5) * 256), 0, 255).to(torch.uint8)

    header = ["ply", "format binary_little_endian 1.0", f"element chunk {n_chunks}"]
    header += [f"property float {p}" for p in CHUNK_PROPS]
    header += [f"element vertex {n}"] + [f"property uint {p}" for p in VERTEX_PROPS]
    if n_rest:
        header += [f"element sh {n}"] + [f"property uchar f_rest_{j}" for j in range(3 * n_rest)]
    header += ["end_header", ""]
    return b"".join([
        "\n".join(header).encode("ascii"),
        chunk.numpy().astype("<f4").tobytes(),
        vertex.numpy().astype("<u4").tobytes(),
        sh.numpy().tobytes(),
    ])


def write_compressed_ply(path: str | os.PathLike, splats: Mapping[str, Any]) -> Path:
    """Write a PlayCanvas compressed .ply (Morton-sorted, 256 per chunk)."""
    return atomic_write(path, encode_compressed_ply(splats, where=str(path)))


# ---------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------


def _unorm(v: np.ndarray, shift: int, bits: int) -> np.ndarray:
    t = (1 << bits) - 1
    return ((v >> shift) & t).astype(np.float64) / t


def _lerp(lo: np.ndarray, hi: np.ndarray, t: np.ndarray) -> np.ndarray:
    return lo * (1 - t) + hi * t


def decode_compressed_ply(data: bytes, where: str = "<bytes>", header: PlyHeader | None = None) -> dict:
    if header is None:
        header = parse_header(data, where)
    if not is_compressed_layout(header):
        raise FormatError(f"{where}: not a compressed .ply (needs elements 'chunk' and 'vertex' with packed_*)")
    if header.format != "binary_little_endian":
        raise FormatError(f"{where}: compressed .ply must be binary_little_endian, not {header.format}")
    chunk_el, vertex_el = header.element("chunk"), header.element("vertex")
    vtypes = dict(vertex_el.properties)
    ctypes = dict(chunk_el.properties)
    bad = [p for p in VERTEX_PROPS if vtypes.get(p) != "u4"]
    if bad:
        raise FormatError(f"{where}: compressed .ply vertex element lacks uint properties {bad}")
    need = CHUNK_PROPS[:12]
    bad = [p for p in need if ctypes.get(p) != "f4"]
    if bad:
        raise FormatError(f"{where}: compressed .ply chunk element lacks float properties {bad}")
    has_color = all(ctypes.get(p) == "f4" for p in CHUNK_PROPS[12:])
    elements = read_elements(data, header, where)
    v, ch = elements["vertex"], elements["chunk"]
    n = v.shape[0]
    if n == 0:
        raise FormatError(f"{where}: file contains no Gaussians (element vertex 0)")
    if ch.shape[0] != (n + CHUNK_SIZE - 1) // CHUNK_SIZE:
        raise FormatError(
            f"{where}: {ch.shape[0]} chunks for {n} Gaussians; expected {(n + CHUNK_SIZE - 1) // CHUNK_SIZE}"
        )
    ci = np.arange(n) // CHUNK_SIZE

    def cget(*names: str) -> np.ndarray:
        return np.stack([ch[c].astype(np.float64)[ci] for c in names], axis=1)

    pp = v["packed_position"].astype(np.uint32)
    t = np.stack([_unorm(pp, 21, 11), _unorm(pp, 11, 10), _unorm(pp, 0, 11)], axis=1)
    means = _lerp(cget("min_x", "min_y", "min_z"), cget("max_x", "max_y", "max_z"), t)
    ps = v["packed_scale"].astype(np.uint32)
    t = np.stack([_unorm(ps, 21, 11), _unorm(ps, 11, 10), _unorm(ps, 0, 11)], axis=1)
    scales = _lerp(cget("min_scale_x", "min_scale_y", "min_scale_z"),
                   cget("max_scale_x", "max_scale_y", "max_scale_z"), t)
    pc = v["packed_color"].astype(np.uint32)
    t = np.stack([_unorm(pc, 24, 8), _unorm(pc, 16, 8), _unorm(pc, 8, 8)], axis=1)
    rgb = _lerp(cget("min_r", "min_g", "min_b"), cget("max_r", "max_g", "max_b"), t) if has_color else t
    sh0 = ((rgb - 0.5) / SH_C0).reshape(n, 1, 3)
    alpha = np.clip(_unorm(pc, 0, 8), _OPACITY_EPS, 1 - _OPACITY_EPS)
    opacities = np.log(alpha / (1 - alpha))
    pr = v["packed_rotation"].astype(np.uint32)
    norm = 1.0 / (math.sqrt(2) * 0.5)
    abc = np.stack([(_unorm(pr, s, 10) - 0.5) * norm for s in (20, 10, 0)], axis=1)
    m = np.sqrt(np.maximum(0.0, 1.0 - (abc * abc).sum(axis=1)))
    which = (pr >> 30).astype(np.int64)
    quats = np.empty((n, 4))
    slot = np.arange(4)[None, :]
    # component j of the quaternion: m if j == which, else abc[j - (j > which)]
    src = slot - (slot > which[:, None])
    quats[:] = np.take_along_axis(abc, np.clip(src, 0, 2), axis=1)
    quats[np.arange(n), which] = m

    n_rest = 0
    shN = np.zeros((n, 0, 3), np.float32)
    sh_el = header.element("sh")
    if sh_el is not None and sh_el.properties:
        names = [p for p, _ in sh_el.properties]
        if len(names) not in (9, 24, 45) or names != [f"f_rest_{i}" for i in range(len(names))]:
            raise FormatError(
                f"{where}: 'sh' element has {len(names)} properties; expected f_rest_0.. with 9, 24 or 45"
            )
        if any(t != "u1" for _, t in sh_el.properties):
            raise FormatError(f"{where}: 'sh' element properties must be uchar")
        if sh_el.count != n:
            raise FormatError(f"{where}: 'sh' element has {sh_el.count} rows for {n} Gaussians")
        s = elements["sh"]
        raw = np.stack([s[c] for c in names], axis=1).astype(np.float64)
        nv = np.where(raw == 0, 0.0, np.where(raw == 255, 1.0, (raw + 0.5) / 256))
        n_rest = len(names) // 3
        shN = ((nv - 0.5) * 8).reshape(n, 3, n_rest).transpose(0, 2, 1)
    return to_splats(means=means, scales=scales, quats=quats, opacities=opacities, sh0=sh0, shN=shN, where=where)


def read_compressed_ply(path: str | os.PathLike) -> dict:
    return decode_compressed_ply(read_file_bytes(path, "compressed .ply"), str(path))
