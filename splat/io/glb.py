"""glTF 2.0 binary (``.glb``) with the ``KHR_gaussian_splatting`` extension.

Spec followed: ``extensions/2.0/Khronos/KHR_gaussian_splatting/README.md`` and
``schema/mesh.primitive.KHR_gaussian_splatting.schema.json`` of KhronosGroup/glTF
at commit 63770cc7 (2026-04-15, "KHR_gaussian_splatting: Editorial review
(#2567)", status *Release Candidate*), on top of the glTF 2.0 GLB container.

Written
    One GLB: a 12-byte header (``b"glTF"``, version 2, total length), a JSON
    chunk padded with spaces and a BIN chunk padded with zeros, both to 4 bytes.
    One buffer, one tightly packed bufferView (``target`` ARRAY_BUFFER) and one
    accessor per attribute, each 4-byte aligned; one mesh with one primitive of
    ``mode`` 0 (POINTS); one node without a transform; ``scene`` 0;
    ``asset = {"version": "2.0", "generator": "splat"}``;
    ``extensionsUsed = ["KHR_gaussian_splatting"]`` and no
    ``extensionsRequired`` (a viewer without the extension shows a coloured
    point cloud, the spec's fallback). The primitive's extension object is
    ``{"kernel": "ellipse", "colorSpace": "srgb_rec709_display",
    "projection": "perspective", "sortingMethod": "cameraDistance"}`` (kernel
    and colorSpace are required; 3DGS trains on sRGB images).

Attributes (per Gaussian; ``P = "KHR_gaussian_splatting:"``)
    ===============================  ======  ============================================
    ``POSITION``                     VEC3    float; min/max given (glTF requires them)
    ``P + "ROTATION"``               VEC4    float; unit quaternion in glTF order
                                             (x, y, z, w): ours is (w, x, y, z)
    ``P + "SCALE"``                  VEC3    float; *linear* scale = ``exp(scales)``
    ``P + "OPACITY"``                SCALAR  float; linear in [0, 1] = ``sigmoid(opacities)``
    ``P + "SH_DEGREE_0_COEF_0"``     VEC3    float; the raw DC coefficient (r, g, b) = ``sh0``
    ``P + "SH_DEGREE_l_COEF_n"``     VEC3    float; l = 1..3, n = 0..2l, n = m + l
                                             (m = -l..l): exactly gsplat's ``shN``
                                             order, coefficient ``l*l - 1 + n``
    ``COLOR_0``                      VEC4    unsigned byte normalized; the spec's optional
                                             fallback: linear RGB (sRGB-decoded
                                             ``clamp(0.5 + C0 * sh0)``) and opacity
    ===============================  ======  ============================================

Coordinates: glTF is right-handed with +Y up (+Z forward, -X right); the 3DGS
.ply and this project's model use the COLMAP/OpenCV world (y down). The spec
recommends glTF's frame ("positions, quaternions and spherical harmonics will
have to be rotated on load"), and PlayCanvas splat-transform's .glb writer
rotates a .ply's data by 180 degrees about z. So does this module: the writer
maps ``(x, y, z) -> (-x, -y, z)``, pre-multiplies each quaternion by that
rotation's, ``k = (0, 0, 0, 1)`` (``(w, x, y, z) -> (-z, -y, x, w)``, the
splat-transform result) and multiplies every SH coefficient of order m by
``(-1)^m``; the reader undoes it. A proper rotation: no mirroring, and every
step is an exact permutation or sign change.

Read
    * ``.glb`` (the BIN chunk as buffer 0; unknown chunk types skipped) and,
      since it costs nothing more, a JSON ``.gltf`` whose buffers are base64
      ``data:`` URIs or files next to it (``http:`` and other URLs are refused).
    * Every mesh primitive with the extension in the default scene, with its
      node's global transform applied as the spec says (translation, rotation
      and uniform scale exactly; a non-uniform scale through the covariance
      ``M C C^T M^T``, re-diagonalised; SH rotated by the rotation part of the
      node matrix); instances are concatenated, lower SH degrees zero-padded.
    * Component types: float, and the spec's quantised types: normalized
      signed byte/short (ROTATION), unsigned byte/short normalized or not
      (SCALE), normalized unsigned byte/short (OPACITY); any of these for any
      attribute (KHR_mesh_quantization positions too). ``byteStride``,
      ``byteOffset`` and accessors without a bufferView (zeros) are honoured.
    * Older drafts, cheaply: ``_ROTATION``/``_SCALE`` names (2024-25 drafts), a
      missing OPACITY/SH_DEGREE_0 taken from COLOR_0 (display colour
      ``0.5 + C0*sh0`` and alpha in those drafts; linear in the current spec),
      and SCALE stored in log space (the Dec 2025 - Apr 2026 text) recognised
      by its negative values, which linear scales may not have (a warning says
      so; a log-scale file whose every log scale is >= 0 would be misread).
    * ``FormatError`` naming the file for: not a glb, wrong version, truncated
      or inconsistent chunks, JSON that is not valid, no Gaussian-splatting
      primitive, a mode other than POINTS, a missing attribute (with a hint
      when the Gaussians are compressed by an extension this reader does not
      support), partial SH degrees, count mismatches, an accessor or
      bufferView out of range of its buffer, unsupported component types,
      sparse accessors, indexed primitives, opacities outside [0, 1],
      non-finite values, required extensions it cannot honour.

Round trip (writer -> reader): means, ``sh0`` and ``shN`` are bit-exact;
quaternions come back normalised (the spec stores unit quaternions), within
float32 rounding of ``q/|q|``; log scales within float32 rounding of
``log(float32(exp(s)))`` (|error| <= 1.2e-7 + 6e-8 |s|) and ``sigmoid(opacity)``
within float32 rounding (1 ulp). Opacity logits above 16.64 store as exactly
1.0 in float32 and read back as 16.64 (``logit(1 - 2^-24)``); an opacity of
exactly 0 reads as -87.34 (``logit(2^-126)``), a linear scale of 0 as a log
scale of -87.34. Log scales above 88.7 overflow float32 on writing (an error).

Interoperability: @playcanvas/splat-transform 3.7 writes the same attributes,
conventions, frame and extension object (plus a non-linearised COLOR_0), so
its .glb files load here as the .ply they came from (checked with its CLI; it
stores the quaternions unnormalised). Babylon.js's loader reads the same
semantics (linear scale and opacity, xyzw, COLOR_0 as a fallback only).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import struct
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .common import (SH_C0, FormatError, atomic_write, read_file_bytes, sh_axis_signs, sigmoid, to_splats,
                     validate_splats)

__all__ = ["read_glb", "write_glb", "decode_glb", "encode_glb", "EXTENSION", "ATTR_PREFIX", "sh_attribute",
           "EXTENSION_OBJECT"]

MAGIC = b"glTF"
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
_HEADER = struct.Struct("<4sII")
_CHUNK = struct.Struct("<II")

EXTENSION = "KHR_gaussian_splatting"
ATTR_PREFIX = EXTENSION + ":"
ROTATION = ATTR_PREFIX + "ROTATION"
SCALE = ATTR_PREFIX + "SCALE"
OPACITY = ATTR_PREFIX + "OPACITY"
EXTENSION_OBJECT = {
    "kernel": "ellipse",
    "colorSpace": "srgb_rec709_display",
    "projection": "perspective",
    "sortingMethod": "cameraDistance",
}
GENERATOR = "splat"

POINTS = 0
ARRAY_BUFFER = 34962
FLOAT = 5126
UNSIGNED_BYTE = 5121
# componentType -> (numpy dtype, size, normalisation divisor, signed)
_CTYPES = {
    5120: ("i1", 1, 127.0, True),
    5121: ("u1", 1, 255.0, False),
    5122: ("<i2", 2, 32767.0, True),
    5123: ("<u2", 2, 65535.0, False),
    5126: ("<f4", 4, 1.0, True),
}
_CTYPE_NAMES = {5120: "BYTE", 5121: "UNSIGNED_BYTE", 5122: "SHORT", 5123: "UNSIGNED_SHORT",
                5125: "UNSIGNED_INT", 5126: "FLOAT"}
_NCOMP = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_SH_COUNTS = {1: 3, 2: 5, 3: 7}
_MAX_ZERO_ACCESSOR = 1 << 25  # an accessor without a bufferView (zeros) larger than this is refused
# extensions a file may require without changing how its splat data decode
_IGNORABLE_REQUIRED = ("KHR_materials_", "KHR_texture_", "EXT_texture_", "KHR_lights_")
_HANDLED_REQUIRED = (EXTENSION, "KHR_mesh_quantization")

_P_MAX = 1.0 - 2.0 ** -24  # the largest float32 below 1
_P_MIN = 2.0 ** -126  # the smallest normal float32
_MIN_LINEAR_SCALE = 2.0 ** -126

# model (3DGS/COLMAP, y down) <-> glTF (y up): a rotation by 180 degrees about z, its own inverse
_AXIS_SIGNS = np.array([-1.0, -1.0, 1.0], np.float32)
# a turn by pi about z multiplies SH coefficient k of order m by (-1)^m: the signs of that axis change
_SH_SIGNS = sh_axis_signs(*_AXIS_SIGNS)


def sh_attribute(degree: int, coef: int) -> str:
    """The attribute semantic of SH coefficient ``coef`` (0..2*degree) of ``degree`` (0..3)."""
    return f"{ATTR_PREFIX}SH_DEGREE_{degree}_COEF_{coef}"


def _to_gltf_frame(means: np.ndarray, quats: np.ndarray, shN: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """model -> glTF frame, exactly: the turn by pi about z, quaternion k (x) q with k = (0, 0, 0, 1)."""
    w, x, y, z = quats.T
    return (means * _AXIS_SIGNS, np.stack([-z, -y, x, w], axis=1),
            shN * _SH_SIGNS[: shN.shape[1]][None, :, None])


def _from_gltf_frame(means: np.ndarray, quats: np.ndarray, shN: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """glTF -> model frame, exactly (the inverse of `_to_gltf_frame`: k^-1 (x) q)."""
    w, x, y, z = quats.T
    return (means * _AXIS_SIGNS, np.stack([z, y, -x, -w], axis=1),
            shN * _SH_SIGNS[: shN.shape[1]][None, :, None])


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


# ---------------------------------------------------------------------------
# write
# ---------------------------------------------------------------------------


def encode_glb(splats: Mapping[str, Any], where: str = "splats") -> bytes:
    """The .glb bytes of a splats dict (see the module docstring)."""
    a = validate_splats(splats, where)
    n = a["means"].shape[0]
    k = a["shN"].shape[1]
    if n * (72 + 12 * k) > 0xFFFFFFFF - (1 << 16):
        raise FormatError(f"{where}: {n} Gaussians need {n * (72 + 12 * k)} bytes, more than a .glb can hold (4 GiB)")
    means, quats, shN = _to_gltf_frame(a["means"], a["quats"], a["shN"])
    q = quats.astype(np.float64)
    q /= np.sqrt((q * q).sum(axis=1, keepdims=True))  # validate_splats left no degenerate rows
    rotation = np.ascontiguousarray(q[:, [1, 2, 3, 0]], dtype="<f4")
    with np.errstate(over="ignore", under="ignore"):
        scale = np.exp(a["scales"].astype(np.float64)).astype("<f4")
        opacity = sigmoid(a["opacities"]).astype("<f4")
    bad = ~np.isfinite(scale)
    if bad.any():
        i = int(np.nonzero(bad.any(axis=1))[0][0])
        raise FormatError(f"{where}: log scale {float(a['scales'][bad][0]):g} (Gaussian {i}) overflows the float32 "
                          "linear scale glTF stores (log scales must be below 88.7)")
    colour = _srgb_to_linear(np.clip(0.5 + SH_C0 * a["sh0"].reshape(n, 3).astype(np.float64), 0.0, 1.0))
    rgba = np.concatenate([colour, opacity[:, None].astype(np.float64)], axis=1)
    rgba = np.clip(np.floor(rgba * 255.0 + 0.5), 0, 255).astype(np.uint8)

    items: list[tuple[str, np.ndarray, str, int, dict]] = [
        ("POSITION", means.astype("<f4"), "VEC3", FLOAT,
         {"min": [float(v) for v in means.min(axis=0)], "max": [float(v) for v in means.max(axis=0)]}),
        ("COLOR_0", rgba, "VEC4", UNSIGNED_BYTE, {"normalized": True}),
        (ROTATION, rotation, "VEC4", FLOAT, {}),
        (SCALE, scale, "VEC3", FLOAT, {}),
        (OPACITY, opacity, "SCALAR", FLOAT, {}),
        (sh_attribute(0, 0), a["sh0"].reshape(n, 3).astype("<f4"), "VEC3", FLOAT, {}),
    ]
    for j in range(k):
        degree = int(np.sqrt(j + 1))
        items.append((sh_attribute(degree, j + 1 - degree * degree), shN[:, j, :].astype("<f4"), "VEC3", FLOAT, {}))

    views, accessors, attributes, blobs = [], [], {}, []
    offset = 0
    for i, (name, arr, typ, ctype, extra) in enumerate(items):
        raw = np.ascontiguousarray(arr).tobytes()
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(raw), "target": ARRAY_BUFFER})
        accessors.append({"bufferView": i, "componentType": ctype, "count": n, "type": typ, **extra})
        attributes[name] = i
        pad = -len(raw) % 4
        blobs.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    doc = {
        "asset": {"version": "2.0", "generator": GENERATOR},
        "extensionsUsed": [EXTENSION],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": attributes, "mode": POINTS,
                                    "extensions": {EXTENSION: dict(EXTENSION_OBJECT)}}]}],
        "buffers": [{"byteLength": offset}],
        "bufferViews": views,
        "accessors": accessors,
    }
    js = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
    js += b" " * (-len(js) % 4)
    total = _HEADER.size + 2 * _CHUNK.size + len(js) + offset
    if total > 0xFFFFFFFF:
        raise FormatError(f"{where}: {n} Gaussians need {total} bytes, more than a .glb can hold (4 GiB)")
    return b"".join([_HEADER.pack(MAGIC, 2, total), _CHUNK.pack(len(js), CHUNK_JSON), js,
                     _CHUNK.pack(offset, CHUNK_BIN), *blobs])


def write_glb(path: str | os.PathLike, splats: Mapping[str, Any]) -> Path:
    """Write a .glb with the KHR_gaussian_splatting extension (atomically)."""
    return atomic_write(path, encode_glb(splats, where=str(path)))


# ---------------------------------------------------------------------------
# container and JSON
# ---------------------------------------------------------------------------


def _parse_json(raw: bytes, where: str, what: str) -> dict:
    try:
        text = bytes(raw).decode("utf-8-sig").rstrip(" \t\r\n\0")
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: {what} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"{where}: {what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise FormatError(f"{where}: {what} is nested too deeply to be glTF") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: {what} is a JSON {type(doc).__name__}, not a glTF object")
    return doc


def _parse_container(data: bytes, where: str) -> tuple[dict, memoryview | None]:
    """The glTF JSON and the BIN chunk (or None) of a .glb, or of a JSON .gltf."""
    if data[:4] != MAGIC:
        if data.lstrip(b" \t\r\n\xef\xbb\xbf")[:1] == b"{":
            return _parse_json(data, where, "the glTF JSON"), None
        raise FormatError(f"{where}: not a glTF binary (.glb): starts with {bytes(data[:4])!r}, not b'glTF'")
    if len(data) < _HEADER.size:
        raise FormatError(f"{where}: truncated: the .glb header needs 12 bytes, the file has {len(data)}")
    _, version, length = _HEADER.unpack_from(data)
    if version != 2:
        raise FormatError(f"{where}: unsupported .glb container version {version} (this reader reads glTF 2.0)")
    if length > len(data):
        raise FormatError(f"{where}: truncated: the header declares {length} bytes, the file has {len(data)}")
    if length < len(data):
        raise FormatError(f"{where}: {len(data) - length} unexpected bytes after the {length} the header declares")
    view = memoryview(data)
    off, chunks = _HEADER.size, []
    while off < length:
        if off + _CHUNK.size > length:
            raise FormatError(f"{where}: truncated: chunk header at byte {off} runs past the end of the file")
        clen, ctype = _CHUNK.unpack_from(data, off)
        start = off + _CHUNK.size
        if start + clen > length:
            raise FormatError(f"{where}: truncated: chunk {len(chunks)} declares {clen} bytes at byte {start}, "
                              f"the file ends at {length}")
        chunks.append((ctype, view[start: start + clen]))
        off = start + clen
    if not chunks or chunks[0][0] != CHUNK_JSON:
        raise FormatError(f"{where}: the first .glb chunk is not the JSON chunk")
    doc = _parse_json(chunks[0][1], where, "the JSON chunk")
    bins = [c for t, c in chunks[1:] if t == CHUNK_BIN]
    return doc, (bins[0] if bins else None)


def _int(v: Any, what: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise FormatError(f"{what} is {v!r}; expected an integer >= {lo}")
    return v


class _Gltf:
    """A parsed glTF document with lazily loaded buffers and checked look-ups."""

    def __init__(self, doc: dict, bin_chunk: memoryview | None, where: str, base_dir: Path | None):
        self.doc, self.bin, self.where, self.base_dir = doc, bin_chunk, where, base_dir
        self._buffers: dict[int, Any] = {}

    def array(self, key: str) -> list:
        v = self.doc.get(key, [])
        if not isinstance(v, list):
            raise FormatError(f"{self.where}: '{key}' is a {type(v).__name__}, not a list")
        return v

    def item(self, key: str, index: Any, ctx: str) -> dict:
        arr = self.array(key)
        i = _int(index, f"{ctx}: index into '{key}'")
        if i >= len(arr):
            raise FormatError(f"{ctx}: {key}[{i}] does not exist (the file has {len(arr)})")
        if not isinstance(arr[i], dict):
            raise FormatError(f"{ctx}: {key}[{i}] is not a JSON object")
        return arr[i]

    def buffer(self, index: Any, ctx: str) -> Any:
        b = self.item("buffers", index, ctx)
        i = int(index)
        if i in self._buffers:
            return self._buffers[i]
        where = f"{self.where}: buffer {i}"
        length = _int(b.get("byteLength"), f"{where}: byteLength", 1)
        uri = b.get("uri")
        if uri is None:
            if i != 0 or self.bin is None:
                raise FormatError(f"{where} has no uri and the file has no BIN chunk for it")
            data = self.bin
        elif not isinstance(uri, str):
            raise FormatError(f"{where}: uri is not a string")
        elif uri.startswith("data:"):
            head, _, payload = uri.partition(",")
            if not head.endswith(";base64"):
                raise FormatError(f"{where}: data URI is not base64 ({head[:60]!r})")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as e:
                raise FormatError(f"{where}: data URI is not valid base64 ({e})") from None
        elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri):
            raise FormatError(f"{where}: external URL {uri[:80]!r} is not supported (only the .glb's BIN chunk, "
                              "data: URIs and files next to the .gltf)")
        else:
            if self.base_dir is None:
                raise FormatError(f"{where}: refers to the external file {uri!r}, which cannot be found from bytes")
            try:
                data = read_file_bytes(self.base_dir / urllib.parse.unquote(uri), "glTF buffer")
            except FormatError as e:
                raise FormatError(f"{where} ({uri!r}): {e}") from None
        if len(data) < length:
            raise FormatError(f"{where}: truncated: declares {length} bytes, has {len(data)}")
        self._buffers[i] = data
        return data

    def accessor(self, index: Any, ctx: str, types: tuple[str, ...]) -> np.ndarray:
        """Accessor ``index`` as float32 [count, ncomp], normalised integers mapped to [0,1] / [-1,1]."""
        acc = self.item("accessors", index, ctx)
        ctx = f"{ctx} (accessor {index})"
        typ = acc.get("type")
        if typ not in types:
            raise FormatError(f"{ctx}: type {typ!r}, expected {' or '.join(types)}")
        ncomp = _NCOMP[typ]
        ct = acc.get("componentType")
        if ct not in _CTYPES:
            name = _CTYPE_NAMES.get(ct, "unknown") if isinstance(ct, int) else "unknown"
            raise FormatError(f"{ctx}: unsupported componentType {ct!r} ({name}); vertex attributes are FLOAT, "
                              "BYTE, UNSIGNED_BYTE, SHORT or UNSIGNED_SHORT")
        dtype, size, divisor, signed = _CTYPES[ct]
        count = _int(acc.get("count"), f"{ctx}: count", 1)
        if "sparse" in acc:
            raise FormatError(f"{ctx}: sparse accessors are not supported")
        elem = ncomp * size
        if acc.get("bufferView") is None:
            if count > _MAX_ZERO_ACCESSOR:
                raise FormatError(f"{ctx}: {count} elements without a bufferView; refusing to allocate them")
            return np.zeros((count, ncomp), np.float32)
        bvi = acc["bufferView"]
        bv = self.item("bufferViews", bvi, ctx)
        buf = self.buffer(bv.get("buffer"), f"{ctx}: bufferView {bvi}")
        bv_off = _int(bv.get("byteOffset", 0), f"{ctx}: bufferView {bvi} byteOffset")
        bv_len = _int(bv.get("byteLength"), f"{ctx}: bufferView {bvi} byteLength", 1)
        if bv_off + bv_len > len(buf):
            raise FormatError(f"{ctx}: bufferView {bvi} (bytes {bv_off}..{bv_off + bv_len}) is out of range of "
                              f"buffer {bv.get('buffer')} ({len(buf)} bytes)")
        stride = bv.get("byteStride")
        stride = elem if stride is None else _int(stride, f"{ctx}: bufferView {bvi} byteStride", 1)
        if stride < elem:
            raise FormatError(f"{ctx}: byteStride {stride} is smaller than an element ({elem} bytes)")
        off = _int(acc.get("byteOffset", 0), f"{ctx}: byteOffset")
        need = off + stride * (count - 1) + elem
        if need > bv_len:
            raise FormatError(f"{ctx}: {count} elements need {need} bytes of bufferView {bvi}, which has {bv_len} "
                              "(out of range of its buffer)")
        raw = np.ndarray((count, ncomp), dtype=np.dtype(dtype), buffer=buf, offset=bv_off + off,
                         strides=(stride, size))
        out = raw.astype(np.float32)
        if ct != FLOAT and acc.get("normalized") is True:
            out /= np.float32(divisor)
            if signed:
                np.maximum(out, np.float32(-1.0), out=out)
        bad = ~np.isfinite(out)
        if bad.any():
            raise FormatError(f"{ctx}: {int(bad.sum())} non-finite values (NaN/inf), first at Gaussian "
                              f"{int(np.nonzero(bad.any(axis=1))[0][0])}")
        return out


# ---------------------------------------------------------------------------
# geometry helpers (node transforms)
# ---------------------------------------------------------------------------


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(w, x, y, z) [N,4], normalised here -> rotation matrices [N,3,3]."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """Proper rotation matrices [N,3,3] -> (w, x, y, z) [N,4] (Shepperd's method)."""
    m = r
    t = np.stack([1 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                  1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1)
    case = np.argmax(t, axis=1)
    s = 2.0 * np.sqrt(np.maximum(t[np.arange(len(m)), case], 1e-300))  # = 4 * |largest component|
    a = m[:, 2, 1] - m[:, 1, 2]
    b = m[:, 0, 2] - m[:, 2, 0]
    c = m[:, 1, 0] - m[:, 0, 1]
    xy = m[:, 0, 1] + m[:, 1, 0]
    xz = m[:, 0, 2] + m[:, 2, 0]
    yz = m[:, 1, 2] + m[:, 2, 1]
    cand = np.stack([
        np.stack([s / 4, a / s, b / s, c / s], -1),
        np.stack([a / s, s / 4, xy / s, xz / s], -1),
        np.stack([b / s, xy / s, s / 4, yz / s], -1),
        np.stack([c / s, xz / s, yz / s, s / 4], -1),
    ], 1)
    return cand[np.arange(len(m)), case]


def _sh_basis(d: np.ndarray) -> np.ndarray:
    """gsplat's real SH basis, degrees 1-3, of unit directions [P,3] -> [P,15]."""
    x, y, z = d.T
    c1 = 0.4886025119029199
    z2, fc1, fs1 = z * z, x * x - y * y, 2 * x * y
    fc2, fs2 = x * fc1 - y * fs1, x * fs1 + y * fc1
    ftc = -2.285228997322329 * z2 + 0.4570457994644658
    return np.stack([
        -c1 * y, c1 * z, -c1 * x,
        0.5462742152960395 * fs1, -1.092548430592079 * z * y, 0.9461746957575601 * z2 - 0.3153915652525201,
        -1.092548430592079 * z * x, 0.5462742152960395 * fc1,
        -0.5900435899266435 * fs2, 1.445305721320277 * z * fs1, ftc * y,
        z * (1.865881662950577 * z2 - 1.119528997770346), ftc * x, 1.445305721320277 * z * fc1,
        -0.5900435899266435 * fc2,
    ], -1)


def _rotate_sh(shN: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """SH coefficients [N,K-1,3] of f -> those of f(rot^T d), per band, for an orthogonal ``rot``
    (reflections too): each band's matrix solves basis(P) D = basis(P rot) on sample directions."""
    k = shN.shape[1]
    if k == 0:
        return shN
    pts = np.random.default_rng(0).normal(size=(64, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    a, b = _sh_basis(pts), _sh_basis(pts @ rot)
    out = np.empty(shN.shape, np.float64)
    for lo, hi in ((0, 3), (3, 8), (8, 15)):
        if lo >= k:
            break
        d = np.linalg.lstsq(a[:, lo:hi], b[:, lo:hi], rcond=None)[0]
        out[:, lo:hi] = np.einsum("ij,njc->nic", d, shN[:, lo:hi].astype(np.float64))
    return out


def _apply_node_transform(g: dict[str, np.ndarray], m: np.ndarray, ctx: str) -> dict[str, np.ndarray]:
    """Gaussians of a primitive (glTF frame) under the node's global matrix ``m`` [4,4]."""
    lin, t = m[:3, :3], m[:3, 3]
    det = float(np.linalg.det(lin))
    if not np.isfinite(m).all() or not np.isfinite(det) or abs(det) < 1e-30:
        raise FormatError(f"{ctx}: the node's transform is singular or not finite; cannot place the Gaussians")
    u, sv, vt = np.linalg.svd(lin)
    rot = u @ vt  # the rotation part (a reflection too when det < 0)
    means = g["means"].astype(np.float64) @ lin.T + t
    q = g["quats"].astype(np.float64)
    q[(q * q).sum(axis=1) < 1e-24] = (1.0, 0.0, 0.0, 0.0)
    identity = bool(np.abs(rot - np.eye(3)).max() <= 1e-12)
    if sv.max() - sv.min() <= 1e-6 * sv.max():  # rotation (+ reflection) and uniform scale
        if identity:  # translation and uniform scale only: the rotations stay as stored
            quats = g["quats"]
        else:
            w1, x1, y1, z1 = _matrix_to_quat((rot if det > 0 else -rot)[None])[0]
            w2, x2, y2, z2 = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
            quats = np.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                              w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], -1)
        scales = g["scales"].astype(np.float64) + np.log(sv.mean())
    else:  # general: covariance M R S S R^T M^T, re-diagonalised
        r = _quat_to_matrix(q)
        rs = r * np.exp(g["scales"].astype(np.float64))[:, None, :]
        c = lin @ rs
        w, v = np.linalg.eigh(c @ np.swapaxes(c, 1, 2))
        v[np.linalg.det(v) < 0, :, 0] *= -1
        quats = _matrix_to_quat(v)
        scales = 0.5 * np.log(np.maximum(w, _MIN_LINEAR_SCALE ** 2))
    return dict(means=means, quats=quats, scales=scales, opacities=g["opacities"], sh0=g["sh0"],
                shN=g["shN"] if identity else _rotate_sh(g["shN"], rot))


def _node_matrix(node: dict, ctx: str) -> np.ndarray:
    def nums(key: str, n: int, default: list[float]) -> np.ndarray:
        v = node.get(key, default)
        if not isinstance(v, list) or len(v) != n or not all(isinstance(x, (int, float)) and
                                                             not isinstance(x, bool) for x in v):
            raise FormatError(f"{ctx}: '{key}' must be a list of {n} numbers")
        try:
            a = np.array(v, np.float64)
        except OverflowError:  # an integer beyond float64
            a = np.full(n, np.inf)
        if not np.isfinite(a).all():
            raise FormatError(f"{ctx}: '{key}' is not finite")
        return a

    if "matrix" in node:
        return nums("matrix", 16, []).reshape(4, 4).T  # column-major
    t = nums("translation", 3, [0.0, 0.0, 0.0])
    x, y, z, w = nums("rotation", 4, [0.0, 0.0, 0.0, 1.0])
    s = nums("scale", 3, [1.0, 1.0, 1.0])
    m = np.eye(4)
    q = np.array([[w, x, y, z]])
    m[:3, :3] = (_quat_to_matrix(q)[0] if np.abs(q).sum() > 0 else np.eye(3)) * s[None, :]
    m[:3, 3] = t
    return m


def _instances(g: _Gltf, splat_meshes: set[int]) -> list[tuple[int, np.ndarray | None]]:
    """(mesh, global matrix) for every node of the default scene that instantiates a Gaussian mesh;
    each Gaussian mesh once with no transform when no such node exists."""
    nodes = g.array("nodes")
    scenes = g.array("scenes")
    if scenes:
        si = g.doc.get("scene", 0)
        scene = g.item("scenes", si, f"{g.where}: scene")
        roots = scene.get("nodes", [])
        if not isinstance(roots, list):
            raise FormatError(f"{g.where}: scene {si}: 'nodes' is not a list")
    else:
        children = {c for nd in nodes if isinstance(nd, dict) for c in (nd.get("children") or [])
                    if isinstance(c, int)}
        roots = [i for i in range(len(nodes)) if i not in children]
    out: list[tuple[int, np.ndarray | None]] = []
    seen: set[int] = set()
    stack = [(r, np.eye(4)) for r in reversed(roots)]
    while stack:
        ni, parent = stack.pop()
        ctx = f"{g.where}: node {ni}"
        node = g.item("nodes", ni, ctx)
        if ni in seen:
            raise FormatError(f"{ctx}: the node hierarchy is not a tree (node {ni} is reached twice)")
        seen.add(ni)
        world = parent @ _node_matrix(node, ctx)
        if isinstance(node.get("mesh"), int) and node["mesh"] in splat_meshes:
            out.append((node["mesh"], world))
        kids = node.get("children") or []
        if not isinstance(kids, list):
            raise FormatError(f"{ctx}: 'children' is not a list")
        stack.extend((c, world) for c in reversed(kids))
    return out or [(mi, None) for mi in sorted(splat_meshes)]


# ---------------------------------------------------------------------------
# read
# ---------------------------------------------------------------------------


def _decode_primitive(g: _Gltf, prim: dict, ctx: str) -> dict[str, np.ndarray]:
    """One Gaussian primitive's arrays in the glTF frame (model conventions: wxyz, log, logit)."""
    mode = prim.get("mode", POINTS)
    if mode != POINTS:
        raise FormatError(f"{ctx}: mode is {mode!r}; KHR_gaussian_splatting primitives must be POINTS (0)")
    if prim.get("indices") is not None:
        raise FormatError(f"{ctx}: indexed Gaussian-splat primitives are not supported")
    ext = prim["extensions"][EXTENSION]
    ext = ext if isinstance(ext, dict) else {}
    kernel, space = ext.get("kernel"), ext.get("colorSpace")
    if kernel is not None and kernel != "ellipse":
        warnings.warn(f"{ctx}: kernel {kernel!r} is not 'ellipse'; read as the ellipse kernel", stacklevel=4)
    if space is not None and space != "srgb_rec709_display":
        warnings.warn(f"{ctx}: colorSpace {space!r}: the SH coefficients are kept as stored (the model's colours "
                      "are sRGB display values)", stacklevel=4)
    attrs = prim.get("attributes")
    if not isinstance(attrs, dict):
        raise FormatError(f"{ctx}: the primitive has no 'attributes' object")

    def missing(name: str) -> FormatError:
        hint = ""
        nested = ext.get("extensions")
        if isinstance(nested, dict) and nested:
            hint = (f"; its Gaussians are compressed with {', '.join(map(str, nested))}, which this reader does not "
                    "support")
        return FormatError(f"{ctx}: missing attribute {name!r} (it has {', '.join(map(str, attrs)) or 'none'}){hint}")

    def read(name: str, types: tuple[str, ...]) -> np.ndarray:
        return g.accessor(attrs[name], f"{ctx}: attribute {name!r}", types)

    def pick(*names: str) -> str | None:
        return next((nm for nm in names if nm in attrs), None)

    if "POSITION" not in attrs:
        raise missing("POSITION")
    means = read("POSITION", ("VEC3",))
    n = means.shape[0]
    rot_name, scale_name = pick(ROTATION, "_ROTATION"), pick(SCALE, "_SCALE")
    if rot_name is None:
        raise missing(ROTATION)
    if scale_name is None:
        raise missing(SCALE)
    legacy = rot_name == "_ROTATION"
    arrays: dict[str, np.ndarray] = {"POSITION": means}

    def counted(name: str, arr: np.ndarray) -> np.ndarray:
        if arr.shape[0] != n:
            raise FormatError(f"{ctx}: attribute {name!r} has {arr.shape[0]} elements, POSITION has {n}")
        arrays[name] = arr
        return arr

    xyzw = counted(rot_name, read(rot_name, ("VEC4",)))
    scale = counted(scale_name, read(scale_name, ("VEC3",)))
    colour = counted("COLOR_0", read("COLOR_0", ("VEC3", "VEC4"))) if "COLOR_0" in attrs else None

    if OPACITY in attrs:
        p = counted(OPACITY, read(OPACITY, ("SCALAR",)))[:, 0]
    elif colour is not None and colour.shape[1] == 4:
        warnings.warn(f"{ctx}: no {OPACITY!r}; opacity taken from COLOR_0's alpha (older drafts)", stacklevel=4)
        p = colour[:, 3]
    else:
        raise missing(OPACITY)
    outside = (p < 0) | (p > 1)
    if outside.any():
        i = int(np.nonzero(outside)[0][0])
        raise FormatError(f"{ctx}: {int(outside.sum())} opacities outside [0, 1] (first at Gaussian {i}: "
                          f"{float(p[i]):g}); the spec stores linear opacity in [0, 1]")
    p64 = np.clip(p.astype(np.float64), _P_MIN, _P_MAX)
    logits = np.log(p64) - np.log1p(-p64)

    sh0_name = sh_attribute(0, 0)
    if sh0_name in attrs:
        sh0 = counted(sh0_name, read(sh0_name, ("VEC3",)))
    elif colour is not None:
        warnings.warn(f"{ctx}: no {sh0_name!r}; the DC colour is taken from the 8-bit COLOR_0 fallback",
                      stacklevel=4)
        c = colour[:, :3].astype(np.float64)
        sh0 = ((c if legacy else _linear_to_srgb(c)) - 0.5) / SH_C0
    else:
        raise missing(sh0_name)

    present = {(lv, c) for lv in (1, 2, 3) for c in range(_SH_COUNTS[lv]) if sh_attribute(lv, c) in attrs}
    degree = max((lv for lv, _ in present), default=0)
    absent = [sh_attribute(lv, c) for lv in range(1, degree + 1) for c in range(_SH_COUNTS[lv])
              if (lv, c) not in present]
    if absent:
        raise FormatError(f"{ctx}: SH degree {degree} is only partly defined: missing {', '.join(absent[:4])}"
                          f"{' ...' if len(absent) > 4 else ''} (each degree up to the highest needs every "
                          "coefficient)")
    rest = [counted(sh_attribute(lv, c), read(sh_attribute(lv, c), ("VEC3",)))
            for lv in range(1, degree + 1) for c in range(_SH_COUNTS[lv])]
    shN = np.stack(rest, axis=1) if rest else np.zeros((n, 0, 3), np.float32)

    if (scale < 0).any():
        warnings.warn(f"{ctx}: {scale_name!r} has negative values, so it is read as log scales (the Dec 2025 - "
                      "Apr 2026 drafts); the current spec stores linear scales", stacklevel=4)
        log_scales = scale.astype(np.float64)
    else:
        log_scales = np.log(np.maximum(scale.astype(np.float64), _MIN_LINEAR_SCALE))
    return dict(means=means, quats=xyzw[:, [3, 0, 1, 2]], scales=log_scales, opacities=logits,
                sh0=np.asarray(sh0).reshape(n, 1, 3), shN=shN)


def decode_glb(data: bytes, where: str = "<bytes>", base_dir: str | os.PathLike | None = None
               ) -> dict[str, torch.Tensor]:
    """The splats dict of .glb (or JSON .gltf) bytes; ``base_dir`` finds external buffer files."""
    doc, bin_chunk = _parse_container(data, where)
    g = _Gltf(doc, bin_chunk, where, Path(base_dir) if base_dir is not None else None)
    asset = doc.get("asset")
    if isinstance(asset, dict) and isinstance(asset.get("version"), str) and not asset["version"].startswith("2."):
        raise FormatError(f"{where}: glTF version {asset['version']!r}; this reader reads glTF 2.0")
    required = doc.get("extensionsRequired", [])
    if isinstance(required, list):
        unsupported = [e for e in required if isinstance(e, str) and e not in _HANDLED_REQUIRED
                       and not e.startswith(_IGNORABLE_REQUIRED)]
        if unsupported:
            raise FormatError(f"{where}: requires glTF extension(s) {', '.join(unsupported)}, which this reader does "
                              "not support (compressed data?); store the splats uncompressed")
    splat_prims: dict[int, list[tuple[int, dict]]] = {}
    for mi, mesh in enumerate(g.array("meshes")):
        prims = mesh.get("primitives", []) if isinstance(mesh, dict) else []
        for pi, prim in enumerate(prims if isinstance(prims, list) else []):
            exts = prim.get("extensions") if isinstance(prim, dict) else None
            if isinstance(exts, dict) and EXTENSION in exts:
                splat_prims.setdefault(mi, []).append((pi, prim))
    if not splat_prims:
        used = doc.get("extensionsUsed", [])
        raise FormatError(f"{where}: no mesh primitive uses the {EXTENSION} extension "
                          f"({len(g.array('meshes'))} meshes; extensionsUsed {used!r}): not a Gaussian-splat glTF")

    parts = []
    for mi, world in _instances(g, set(splat_prims)):
        for pi, prim in splat_prims[mi]:
            ctx = f"{where}: mesh {mi} primitive {pi}"
            part = _decode_primitive(g, prim, ctx)
            if world is not None and not np.array_equal(world, np.eye(4)):
                part = _apply_node_transform(part, world, ctx)
            parts.append(part)
    k = max(p["shN"].shape[1] for p in parts)
    for p in parts:
        if p["shN"].shape[1] < k:
            p["shN"] = np.concatenate([p["shN"], np.zeros((len(p["shN"]), k - p["shN"].shape[1], 3))], axis=1)
    cat = {key: np.concatenate([np.asarray(p[key], np.float32) for p in parts]) for key in parts[0]}
    means, quats, shN = _from_gltf_frame(cat["means"], cat["quats"], cat["shN"])
    return to_splats(means=means, scales=cat["scales"], quats=quats, opacities=cat["opacities"], sh0=cat["sh0"],
                     shN=shN, where=where)


def read_glb(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a .glb (or .gltf) with KHR_gaussian_splatting primitives into the splats dict."""
    p = Path(path)
    return decode_glb(read_file_bytes(p, "glTF"), str(p), base_dir=p.parent)
