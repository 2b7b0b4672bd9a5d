"""Niantic ``.spz`` (https://github.com/nianticlabs/spz), written from the spec.

Containers
    * versions 1-3: one gzip stream holding a 16-byte header
      (``<u32 magic 0x5053474e, u32 version, u32 numPoints, u8 shDegree,
      u8 fractionalBits, u8 flags, u8 reserved>``) and then, attribute by
      attribute: positions, alphas, colours, scales, rotations, SH.
    * version 4: a plaintext 32-byte header (``magic, version, numPoints,
      shDegree, fractionalBits, flags, u8 numStreams, u32 tocByteOffset,
      12 reserved``), optional extension records, a table of contents of
      ``numStreams`` x ``(u64 compressed, u64 uncompressed)`` sizes, then one
      zstd stream per non-empty attribute, in the same order.

Attributes (per Gaussian)
    * position: 3 x 24-bit signed fixed point, ``fractionalBits`` fraction
      bits (v1: 3 x float16)
    * alpha: ``u8 = round(sigmoid(opacity) * 255)``
    * colour: ``u8 = round(sh0 * 0.15 * 255 + 127.5)`` (the SH DC coefficient,
      scaled by colorScale 0.15 so that out-of-gamut DC values survive)
    * scale: ``u8 = round((log scale + 10) * 16)``
    * rotation: v1/v2: ``x, y, z`` of the normalised (x,y,z,w) quaternion with
      w >= 0 as ``u8 = round(q * 127.5 + 127.5)``; v3+: "smallest three": a
      little-endian u32 with the index of the largest |component| in the top
      2 bits, then for the other three (in x,y,z,w order) a sign bit and a
      9-bit magnitude ``(|q_i| / sqrt(1/2)) * 511``
    * SH: ``u8 = round(x * 128) + 128`` snapped to buckets of 8 (degree 1,
      5 bits) or 16 (degrees 2-3, 4 bits); coefficient-major, colour inner.
    * flags: 0x1 antialiased, 0x2 has extension records (v1-3: after the
      attributes; v4: between header and TOC). Extension records are
      ``<u32 type, u32 byteLength, payload>``; ``0xADBE0003`` declares the
      stored coordinate system (honoured when it is an axis-sign change).

Coordinates: spz stores RUB (x right, y up, z back; OpenGL/three.js); the 3DGS
.ply and this project's model are RDF (OpenCV). Like the reference library
(``ply_to_spz``), saving flips y and z: positions, the quaternion's y and z,
and the sign of every SH coefficient whose basis function is odd under that
flip; loading flips them back.

Written: version 3 by default (gzip, smallest-three rotations); ``version=2``
gives the older first-three rotations; ``version=4`` needs a zstd module
(``zstandard``, or Python 3.14's ``compression.zstd``). Read: versions 1-4
(v4 needs the same zstd module, otherwise a FormatError says so). SH degree 4
files are read with the degree-4 band dropped (a warning says so); the model
here stops at degree 3.

Round-trip bounds (writer -> reader): positions within 2^-13 (0.5/4096; fewer
fraction bits, with a warning, if |x| >= 2048), log scales within 1/32 (in
[-10, 5.94]), ``sigmoid(opacity)`` within 0.5/255 (1/255 at the clamped
ends), colour ``0.5 + SH_C0*sh0`` within 0.5/(255*0.15)*SH_C0 < 0.94/255
(for |sh0| <= 3.33), SH degree 1 within 4.5/128 and degrees 2-3 within
8.5/128 (for values in [-1, 0.99], clipped outside), normalised quaternion
components within 2e-3 (v3) up to sign. Version 2 derives w from three
8-bit components and loses precision when |w| is small: up to 0.12 per
component (about 0.2 rad) in the worst case, which is why v3 is the default.

Interoperability: Niantic's reference library (``ply_to_spz``/``spz_to_ply``)
uses RUB on disk as above. PlayCanvas splat-transform (3.x) instead writes spz
with no conversion (RDF on disk) and reads it back the same way, so its
.spz files load here mirrored in y and z, and ours there; everything else
(checked against splat-transform 3.7 and the spz WebAssembly build it ships,
including v4) agrees within the bounds above.
"""
from __future__ import annotations

import gzip
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .common import FormatError, atomic_write, read_file_bytes, sh_axis_signs, to_splats, validate_splats

__all__ = ["read_spz", "write_spz", "decode_spz", "encode_spz", "read_header", "MAGIC"]

MAGIC = 0x5053474E  # b"NGSP" little endian
COLOR_SCALE = 0.15
FLAG_ANTIALIASED = 0x1
FLAG_EXTENSIONS = 0x2
EXT_COORDINATE_SYSTEM = 0xADBE0003
_LEGACY_HEADER = struct.Struct("<IIIBBBB")  # 16 bytes
_NGSP_HEADER = struct.Struct("<IIIBBBBI12x")  # 32 bytes
_DIM = {0: 0, 1: 3, 2: 8, 3: 15, 4: 24}
_COORD_NAMES = ["UNSPECIFIED", "LDB", "RDB", "LUB", "RUB", "LDF", "RDF", "LUF", "RUF",
                "LBD", "RBD", "LBU", "RBU", "LFD", "RFD", "LFU", "RFU"]
RUB, RDF = 4, 6
_SQRT1_2 = np.float32(0.707106781186547524401)


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def _round(x: np.ndarray) -> np.ndarray:
    """C's std::round (half away from zero), exact for float32 inputs."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5))


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(_round(x), 0, 255).astype(np.uint8)


def _axis_flips(src: int, dst: int) -> tuple[float, float, float]:
    """Per-axis signs taking coordinates in system ``src`` to ``dst`` (1..8)."""
    a, b = src - 1, dst - 1
    return tuple(1.0 if ((a >> i) & 1) == ((b >> i) & 1) else -1.0 for i in range(3))  # type: ignore[return-value]


def _zstd() -> tuple[Callable[[bytes, int], bytes], Callable[[bytes], bytes]] | None:
    try:
        import zstandard  # type: ignore

        def dec(b: bytes, size: int) -> bytes:
            return zstandard.ZstdDecompressor().decompress(b, max_output_size=size)

        def enc(b: bytes) -> bytes:
            return zstandard.ZstdCompressor(level=12).compress(b)

        return dec, enc
    except ImportError:
        pass
    try:  # Python >= 3.14
        from compression import zstd  # type: ignore

        return (lambda b, size: zstd.decompress(b)), (lambda b: zstd.compress(b, level=12))
    except ImportError:
        return None


def _parse_extensions(buf: bytes) -> list[tuple[int, bytes]] | None:
    """Extension records ``<u32 type, u32 len, payload>`` filling ``buf``
    exactly, or None if ``buf`` is not such a sequence."""
    out, off = [], 0
    while off < len(buf):
        if off + 8 > len(buf):
            return None
        typ, length = struct.unpack_from("<II", buf, off)
        if typ == 0 or off + 8 + length > len(buf):
            return None
        out.append((typ, buf[off + 8: off + 8 + length]))
        off += 8 + length
    return out


def _coordinate_system(exts: list[tuple[int, bytes]], where: str) -> int:
    for typ, payload in exts:
        if typ == EXT_COORDINATE_SYSTEM:
            if len(payload) < 4:
                raise FormatError(f"{where}: malformed coordinate-system extension")
            cs = struct.unpack_from("<I", payload)[0]
            if cs == 0:
                return RUB  # UNSPECIFIED: the reference falls back to RUB
            if cs > 16:
                raise FormatError(f"{where}: unknown coordinate system {cs} in extension")
            if cs > 8:
                raise FormatError(
                    f"{where}: declares coordinate system {_COORD_NAMES[cs]} (an axis permutation); "
                    "only RUB-style axis sign changes are supported"
                )
            return cs
    return RUB


def _check_header(n: int, degree: int, frac_bits: int, where: str) -> None:
    if n == 0:
        raise FormatError(f"{where}: file contains no Gaussians (numPoints = 0)")
    if degree > 4:
        raise FormatError(f"{where}: unsupported SH degree {degree} (spz allows 0-4)")
    if frac_bits > 24:
        raise FormatError(f"{where}: implausible fractionalBits {frac_bits}")


def _sizes(n: int, version: int, degree: int) -> list[int]:
    pos = 6 if version == 1 else 9
    rot = 4 if version >= 3 else 3
    return [n * pos, n, n * 3, n * 3, n * rot, n * _DIM[degree] * 3]


# ---------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------


def _pack_attributes(a: dict[str, np.ndarray], version: int, where: str) -> tuple[list[bytes], int, int]:
    n = a["means"].shape[0]
    fx, fy, fz = _axis_flips(RDF, RUB)
    # positions: 24-bit fixed point
    p = a["means"] * np.array([fx, fy, fz], np.float32)
    frac_bits = 12
    maxabs = float(np.abs(p).max())
    while frac_bits > 0 and float(_round(np.float32(maxabs) * np.float32(1 << frac_bits))) > 0x7FFFFF:
        frac_bits -= 1
    if float(_round(np.float32(maxabs) * np.float32(1 << frac_bits))) > 0x7FFFFF:
        raise FormatError(f"{where}: positions up to {maxabs:g} do not fit spz's 24-bit fixed point")
    if frac_bits < 12:
        warnings.warn(
            f"{where}: positions up to {maxabs:g} need fractionalBits={frac_bits} "
            f"(resolution {2.0 ** -frac_bits:g}) instead of 12", stacklevel=3)
    fixed = _round(p * np.float32(1 << frac_bits)).astype(np.int64) & 0xFFFFFF
    pos = fixed.astype("<u4").view(np.uint8).reshape(n * 3, 4)[:, :3]
    # alphas, colours, scales (float32 arithmetic like the reference)
    alpha = _to_u8((np.float32(1) / (np.float32(1) + np.exp(-a["opacities"]))) * np.float32(255))
    col = _to_u8(a["sh0"].reshape(n, 3) * (np.float32(COLOR_SCALE) * np.float32(255)) + np.float32(127.5))
    scl = _to_u8((a["scales"] + np.float32(10)) * np.float32(16))
    # rotations: (w,x,y,z) -> normalised (x,y,z,w), coordinate flip
    q = a["quats"][:, [1, 2, 3, 0]]
    q = q / np.sqrt((q * q).sum(axis=1, keepdims=True))
    q = q * np.array([fy * fz, fx * fz, fx * fy, 1.0], np.float32)
    if version >= 3:
        largest = np.argmax(np.abs(q), axis=1)
        negate = q[np.arange(n), largest] < 0
        comp = largest.astype(np.uint32)
        for i in range(4):
            keep = largest != i
            neg = ((q[:, i] < 0) ^ negate).astype(np.uint32)
            mag = (np.float32(511) * (np.abs(q[:, i]) / _SQRT1_2) + np.float32(0.5)).astype(np.uint32)
            mag = np.minimum(mag, 511)
            comp = np.where(keep, (comp << 10) | (neg << 9) | mag, comp)
        rot = comp.astype("<u4").view(np.uint8).reshape(n, 4)
    else:
        s = np.where(q[:, 3:4] < 0, np.float32(-127.5), np.float32(127.5))
        rot = _to_u8(q[:, :3] * s + np.float32(127.5))
    # SH: coefficient-major, colour inner (= shN's [N, K-1, 3] layout)
    shN = a["shN"]
    k = shN.shape[1]
    if k:
        x = shN * sh_axis_signs(fx, fy, fz)[:k][None, :, None]
        qv = (_round(x * np.float32(128)) + 128).astype(np.int64)
        bucket = np.where(np.arange(k) < 3, 8, 16)[None, :, None]
        qv = (qv + bucket // 2) // bucket * bucket
        sh = np.clip(qv, 0, 255).astype(np.uint8)
    else:
        sh = np.zeros((n, 0, 3), np.uint8)
    streams = [pos.tobytes(), alpha.tobytes(), col.tobytes(), scl.tobytes(), rot.tobytes(), sh.tobytes()]
    return streams, frac_bits, _DIM_TO_DEGREE[k]


_DIM_TO_DEGREE = {0: 0, 3: 1, 8: 2, 15: 3}


def encode_spz(
    splats: Mapping[str, Any], version: int = 3, antialiased: bool = False, where: str = "splats"
) -> bytes:
    """Encode to .spz bytes (version 2 or 3: gzip; 4: zstd container)."""
    if version not in (2, 3, 4):
        raise FormatError(f"{where}: can write spz versions 2, 3 and 4, not {version!r}")
    codec = None
    if version == 4:
        codec = _zstd()
        if codec is None:
            raise FormatError(f"{where}: spz version 4 needs zstd: pip install zstandard")
    a = validate_splats(splats, where)
    n = a["means"].shape[0]
    if n > 0xFFFFFFFF:
        raise FormatError(f"{where}: too many Gaussians for spz ({n})")
    streams, frac_bits, degree = _pack_attributes(a, version, where)
    flags = FLAG_ANTIALIASED if antialiased else 0
    if version < 4:
        head = _LEGACY_HEADER.pack(MAGIC, version, n, degree, frac_bits, flags, 0)
        return gzip.compress(head + b"".join(streams), compresslevel=6, mtime=0)
    enc = codec[1]
    chunks = [(enc(s), len(s)) for s in streams if len(s)]
    head = _NGSP_HEADER.pack(MAGIC, 4, n, degree, frac_bits, flags, len(chunks), _NGSP_HEADER.size)
    toc = b"".join(struct.pack("<QQ", len(c), u) for c, u in chunks)
    return head + toc + b"".join(c for c, _ in chunks)


def write_spz(
    path: str | os.PathLike, splats: Mapping[str, Any], version: int = 3, antialiased: bool = False
) -> Path:
    """Write a Niantic .spz (default version 3)."""
    return atomic_write(path, encode_spz(splats, version=version, antialiased=antialiased, where=str(path)))


# ---------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------


def _split(body: bytes, sizes: list[int]) -> list[bytes]:
    out, off = [], 0
    for s in sizes:
        out.append(body[off: off + s])
        off += s
    return out


def _gunzip(data: bytes, where: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise FormatError(f"{where}: corrupt or truncated gzip stream ({e})") from None


def _legacy_payload(raw: bytes, where: str) -> tuple[dict, list[bytes]]:
    if len(raw) < _LEGACY_HEADER.size:
        raise FormatError(f"{where}: truncated: spz header needs 16 bytes, the gzip payload has {len(raw)}")
    magic, version, n, degree, frac_bits, flags, _ = _LEGACY_HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise FormatError(
            f"{where}: bad magic 0x{magic:08x} (expected 0x{MAGIC:08x} 'NGSP'); not an .spz file"
        )
    if not 1 <= version <= 4:
        raise FormatError(f"{where}: unsupported spz version {version} (this reader supports 1-4)")
    _check_header(n, degree, frac_bits, where)
    sizes = _sizes(n, version, degree)
    need = sum(sizes)
    body = raw[_LEGACY_HEADER.size:]
    if len(body) < need:
        raise FormatError(
            f"{where}: truncated: header declares {n} Gaussians ({need} bytes of attributes), "
            f"the payload has {len(body)}"
        )
    exts: list[tuple[int, bytes]] = []
    extra = len(body) - need
    if extra:
        parsed = _parse_extensions(body[need:]) if flags & FLAG_EXTENSIONS else None
        if parsed is not None:  # current layout: extensions after the attributes
            exts = parsed
        elif flags & FLAG_EXTENSIONS and (lead := _parse_extensions(body[:extra])) is not None:
            exts, body = lead, body[extra:]  # early-2025 layout: extensions after the header
        else:
            raise FormatError(
                f"{where}: {extra} unexpected bytes after the {n} Gaussians "
                "(header and data disagree)"
            )
    info = dict(container="gzip", version=version, num_points=n, sh_degree=degree,
                fractional_bits=frac_bits, flags=flags, coordinate_system=_coordinate_system(exts, where))
    return info, _split(body, sizes)


def _ngsp_payload(data: bytes, where: str, decompress: bool = True) -> tuple[dict, list[bytes]]:
    if len(data) < _NGSP_HEADER.size:
        raise FormatError(f"{where}: truncated: spz v4 header needs 32 bytes, file has {len(data)}")
    magic, version, n, degree, frac_bits, flags, nstreams, toc = _NGSP_HEADER.unpack_from(data)
    if version < 4:
        raise FormatError(f"{where}: plaintext NGSP header with version {version}; versions 1-3 are gzip streams")
    if version > 4:
        raise FormatError(f"{where}: unsupported spz version {version} (this reader supports 1-4)")
    _check_header(n, degree, frac_bits, where)
    toc_end = toc + 16 * nstreams
    if toc < _NGSP_HEADER.size or toc_end > len(data):
        raise FormatError(f"{where}: truncated: table of contents at {toc}..{toc_end}, file has {len(data)} bytes")
    exts: list[tuple[int, bytes]] = []
    if flags & FLAG_EXTENSIONS and toc > _NGSP_HEADER.size:
        parsed = _parse_extensions(data[_NGSP_HEADER.size:toc])
        if parsed is None:
            raise FormatError(f"{where}: malformed extension records before the table of contents")
        exts = parsed
    sizes = _sizes(n, version, degree)
    want = [s for s in sizes if s]
    if nstreams != len(want):
        raise FormatError(f"{where}: {nstreams} attribute streams, expected {len(want)} for SH degree {degree}")
    entries = [struct.unpack_from("<QQ", data, toc + 16 * i) for i in range(nstreams)]
    off = toc_end
    comp = []
    for i, ((csize, usize), w) in enumerate(zip(entries, want)):
        if usize != w:
            raise FormatError(f"{where}: stream {i} holds {usize} bytes, expected {w} for {n} Gaussians")
        if off + csize > len(data):
            raise FormatError(f"{where}: truncated: stream {i} extends past the end of the file")
        comp.append(data[off: off + csize])
        off += csize
    if off != len(data):
        raise FormatError(f"{where}: {len(data) - off} unexpected bytes after the last stream")
    info = dict(container="ngsp", version=version, num_points=n, sh_degree=degree,
                fractional_bits=frac_bits, flags=flags, coordinate_system=_coordinate_system(exts, where))
    if not decompress:
        return info, []
    codec = _zstd()
    if codec is None:
        raise FormatError(
            f"{where}: spz version 4 streams are zstd-compressed; install the 'zstandard' package to read them"
        )
    raw = []
    for i, (c, w) in enumerate(zip(comp, want)):
        try:
            out = codec[0](c, w)
        except Exception as e:  # zstandard.ZstdError, ValueError, ...
            raise FormatError(f"{where}: corrupt zstd stream {i} ({e})") from None
        if len(out) != w:
            raise FormatError(f"{where}: zstd stream {i} gave {len(out)} bytes, expected {w}")
        raw.append(out)
    it = iter(raw)
    return info, [next(it) if s else b"" for s in sizes]


def _payload(data: bytes, where: str, decompress: bool = True) -> tuple[dict, list[bytes]]:
    if data[:2] == b"\x1f\x8b":
        return _legacy_payload(_gunzip(data, where), where)
    if data[:4] == b"NGSP":
        return _ngsp_payload(data, where, decompress)
    raise FormatError(
        f"{where}: not an .spz file (neither a gzip stream nor an 'NGSP' header; "
        f"starts with {data[:4].hex()})"
    )


def decode_spz(data: bytes, where: str = "<bytes>") -> dict:
    info, (pos, alpha, col, scl, rot, sh) = _payload(data, where)
    n, version, degree = info["num_points"], info["version"], info["sh_degree"]
    if version == 1:
        p = np.frombuffer(pos, "<f2").reshape(n, 3).astype(np.float32)
    else:
        b = np.frombuffer(pos, np.uint8).reshape(n * 3, 3).astype(np.int32)
        fixed = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        fixed = (fixed ^ 0x800000) - 0x800000  # sign-extend 24 bits
        p = (fixed.astype(np.float32) * np.float32(1.0 / (1 << info["fractional_bits"]))).reshape(n, 3)
    scales = np.frombuffer(scl, np.uint8).reshape(n, 3).astype(np.float32) / np.float32(16) - np.float32(10)
    if version >= 3:
        comp = np.frombuffer(rot, "<u4").astype(np.uint32)
        largest = (comp >> 30).astype(np.int64)
        q = np.zeros((n, 4), np.float32)
        sumsq = np.zeros(n, np.float32)
        for i in (3, 2, 1, 0):
            keep = largest != i
            mag = (comp & 511).astype(np.float32)
            neg = ((comp >> 9) & 1).astype(bool)
            v = _SQRT1_2 * mag / np.float32(511)
            v = np.where(neg, -v, v)
            q[:, i] = np.where(keep, v, 0)
            sumsq += np.where(keep, v * v, 0)
            comp = np.where(keep, comp >> 10, comp)
        q[np.arange(n), largest] = np.sqrt(np.maximum(np.float32(0), np.float32(1) - sumsq))
    else:
        xyz = np.frombuffer(rot, np.uint8).reshape(n, 3).astype(np.float32) / np.float32(127.5) - np.float32(1)
        w = np.sqrt(np.maximum(np.float32(0), np.float32(1) - (xyz * xyz).sum(axis=1)))
        q = np.concatenate([xyz, w[:, None]], axis=1)
    a = np.clip(np.frombuffer(alpha, np.uint8).astype(np.float32) / np.float32(255),
                np.float32(1 / 255), np.float32(254 / 255))
    opacities = np.log(a / (np.float32(1) - a))
    sh0 = ((np.frombuffer(col, np.uint8).astype(np.float32) / np.float32(255) - np.float32(0.5))
           / np.float32(COLOR_SCALE)).reshape(n, 1, 3)
    dim = _DIM[degree]
    shN = ((np.frombuffer(sh, np.uint8).astype(np.float32) - np.float32(128)) / np.float32(128)).reshape(n, dim, 3)
    if degree == 4:
        warnings.warn(f"{where}: SH degree 4 is not supported by the model; the degree-4 band is dropped",
                      stacklevel=3)
        shN = shN[:, :15]
    # stored coordinate system (RUB unless an extension says otherwise) -> RDF
    fx, fy, fz = _axis_flips(info["coordinate_system"], RDF)
    p = p * np.array([fx, fy, fz], np.float32)
    q = q * np.array([fy * fz, fx * fz, fx * fy, 1.0], np.float32)
    shN = shN * sh_axis_signs(fx, fy, fz)[: shN.shape[1]][None, :, None]
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1), np.array([0, 0, 0, 1], np.float32))
    return to_splats(
        means=p,
        scales=scales,
        quats=q[:, [3, 0, 1, 2]],
        opacities=opacities,
        sh0=sh0,
        shN=shN,
        where=where,
    )


def read_spz(path: str | os.PathLike) -> dict:
    return decode_spz(read_file_bytes(path, ".spz"), str(path))


def read_header(path: str | os.PathLike) -> dict:
    """Header fields of an .spz file: container ('gzip' or 'ngsp'), version,
    num_points, sh_degree, fractional_bits, flags, antialiased,
    coordinate_system (name). Validates the container but decodes nothing."""
    data = read_file_bytes(path, ".spz")
    info, _ = _payload(data, str(path), decompress=False)
    info["antialiased"] = bool(info["flags"] & FLAG_ANTIALIASED)
    info["coordinate_system"] = _COORD_NAMES[info["coordinate_system"]]
    return info
