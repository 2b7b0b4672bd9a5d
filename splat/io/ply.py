"""The graphdeco/INRIA 3D Gaussian Splatting .ply.

Written (binary_little_endian, float32), in graphdeco's order::

    x y z nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2 rot_0..3

``f_rest`` is channel-major like graphdeco: ``f_rest_{c*(K-1)+k}`` holds SH
coefficient ``k+1`` of channel ``c``. The normals are zeros (graphdeco writes
them too); ``normals=False`` drops them, which gives exactly gsplat's
``export_splats(format="ply")`` bytes. Values round-trip bit for bit.

Read: the header is parsed here (no plyfile needed); properties are found by
name in any order, extra properties and elements are ignored, extra properties may have any numeric type; the Gaussian properties must be
float or double (integer-typed ones, often half floats stored as ``ushort``, are
refused with a message), and ``binary_little_endian``, ``binary_big_endian``
and ``ascii`` are all read. The SH degree comes from the number of
``f_rest_*`` properties (0, 9, 24 or 45). A PlayCanvas compressed layout is
detected from the element names (``is_compressed_layout``); ``splat.io.load`` then
decodes it with ``compressed_ply``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .common import FormatError, atomic_write, read_file_bytes, to_splats, validate_splats

__all__ = ["read_ply", "write_ply", "decode_ply", "encode_ply", "parse_header", "read_elements"]

PLY_TYPES = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}
_TYPE_NAMES = {code: name for name, code in reversed(PLY_TYPES.items())}  # numpy code -> PLY's short name
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "="}
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_REST_RE = re.compile(r"f_rest_(\d+)")
_MAX_HEADER = 1 << 20


@dataclass
class PlyElement:
    name: str
    count: int
    properties: list[tuple[str, str]] = field(default_factory=list)  # (name, numpy type code)
    has_list: bool = False

    def dtype(self, byteorder: str) -> np.dtype:
        return np.dtype([(n, byteorder + t) for n, t in self.properties])


@dataclass
class PlyHeader:
    format: str
    elements: list[PlyElement]
    data_offset: int
    comments: list[str]

    def element(self, name: str) -> PlyElement | None:
        for e in self.elements:
            if e.name == name:
                return e
        return None


def parse_header(data: bytes, where: str) -> PlyHeader:
    """Parse a PLY header; FormatError on anything malformed."""
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise FormatError(f"{where}: not a PLY file (does not start with 'ply')")
    head = data[:_MAX_HEADER]
    m = re.search(rb"(^|\n)end_header\r?\n", head)
    if m is None:
        raise FormatError(f"{where}: truncated PLY header (no 'end_header' line)")
    data_offset = m.end()
    try:
        text = data[:data_offset].decode("ascii")
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: PLY header is not ASCII text") from e
    lines = text.replace("\r\n", "\n").split("\n")
    fmt = None
    elements: list[PlyElement] = []
    comments: list[str] = []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        kw = parts[0]
        if kw == "end_header":
            break
        if kw in ("comment", "obj_info"):
            comments.append(line[len(kw):].strip())
        elif kw == "format":
            if len(parts) != 3 or parts[1] not in _FORMATS:
                raise FormatError(f"{where}: unsupported PLY format line {line.strip()!r}")
            fmt = parts[1]
        elif kw == "element":
            if len(parts) != 3:
                raise FormatError(f"{where}: malformed element line {lineno}: {line.strip()!r}")
            try:
                count = int(parts[2])
            except ValueError:
                raise FormatError(f"{where}: bad element count in line {lineno}: {line.strip()!r}") from None
            if count < 0:
                raise FormatError(f"{where}: negative element count in line {lineno}")
            if any(e.name == parts[1] for e in elements):
                raise FormatError(f"{where}: element '{parts[1]}' declared twice")
            elements.append(PlyElement(parts[1], count))
        elif kw == "property":
            if not elements:
                raise FormatError(f"{where}: property before any element (line {lineno})")
            el = elements[-1]
            if len(parts) >= 2 and parts[1] == "list":
                if len(parts) != 5 or parts[2] not in PLY_TYPES or parts[3] not in PLY_TYPES:
                    raise FormatError(f"{where}: malformed list property line {lineno}: {line.strip()!r}")
                el.has_list = True
                el.properties.append((parts[4], "list"))
                continue
            if len(parts) != 3:
                raise FormatError(f"{where}: malformed property line {lineno}: {line.strip()!r}")
            if parts[1] not in PLY_TYPES:
                raise FormatError(f"{where}: unknown property type {parts[1]!r} (line {lineno})")
            if any(n == parts[2] for n, _ in el.properties):
                raise FormatError(f"{where}: property '{parts[2]}' declared twice in element '{el.name}'")
            el.properties.append((parts[2], PLY_TYPES[parts[1]]))
        else:
            raise FormatError(f"{where}: unexpected header line {lineno}: {line.strip()!r}")
    if fmt is None:
        raise FormatError(f"{where}: PLY header has no 'format' line")
    return PlyHeader(fmt, elements, data_offset, comments)


def read_elements(data: bytes, header: PlyHeader, where: str) -> dict[str, np.ndarray]:
    """Decode every element's data into a structured array (native byte order).

    Elements with list properties can only be skipped when they are empty or
    come after every element with fixed-size records; data after such an
    element is not available."""
    out: dict[str, np.ndarray] = {}
    if header.format == "ascii":
        return _read_ascii(data, header, where)
    bo = _FORMATS[header.format]
    offset = header.data_offset
    complete = True
    for el in header.elements:
        if el.has_list:
            if el.count == 0:
                continue
            complete = False  # record size unknown: stop here
            break
        dt = el.dtype(bo)
        nbytes = el.count * dt.itemsize
        if offset + nbytes > len(data):
            have = max(0, len(data) - offset)
            raise FormatError(
                f"{where}: truncated: element '{el.name}' needs {nbytes} bytes "
                f"({el.count} x {dt.itemsize}) but only {have} remain"
            )
        if dt.itemsize == 0:
            arr = np.zeros(el.count, dtype=np.dtype([]))
        else:
            arr = np.frombuffer(data, dtype=dt, count=el.count, offset=offset)
            if not dt.isnative:
                arr = arr.astype(el.dtype("="))
        out[el.name] = arr
        offset += nbytes
    if complete and offset != len(data):
        raise FormatError(
            f"{where}: {len(data) - offset} unexpected bytes after the last element "
            "(header and data disagree)"
        )
    return out


def _read_ascii(data: bytes, header: PlyHeader, where: str) -> dict[str, np.ndarray]:
    try:
        tokens = data[header.data_offset:].decode("ascii").split()
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: ascii PLY body is not ASCII text") from e
    out: dict[str, np.ndarray] = {}
    pos = 0
    for el in header.elements:
        if el.has_list:
            if el.count == 0:
                continue
            break
        nprop = len(el.properties)
        n = el.count * nprop
        if pos + n > len(tokens):
            raise FormatError(
                f"{where}: truncated: element '{el.name}' needs {n} values, {len(tokens) - pos} remain"
            )
        try:
            vals = np.array(tokens[pos:pos + n], dtype=np.float64).reshape(el.count, nprop)
        except ValueError as e:
            raise FormatError(f"{where}: non-numeric value in element '{el.name}'") from e
        arr = np.zeros(el.count, dtype=el.dtype("="))
        for j, (name, _) in enumerate(el.properties):
            arr[name] = vals[:, j]
        out[el.name] = arr
        pos += n
    return out


def is_compressed_layout(header: PlyHeader) -> bool:
    chunk = header.element("chunk")
    vertex = header.element("vertex")
    if chunk is None or vertex is None:
        return False
    return any(n == "packed_position" for n, _ in vertex.properties)


def decode_ply(data: bytes, where: str = "<bytes>", header: PlyHeader | None = None) -> dict:
    """Decode .ply bytes in the standard 3DGS layout (``splat.io.load`` sends the PlayCanvas
    compressed layout to ``compressed_ply`` instead). ``header``: already parsed from ``data``."""
    if header is None:
        header = parse_header(data, where)
    if is_compressed_layout(header):
        raise FormatError(f"{where}: a PlayCanvas compressed .ply; read it with splat.io.load "
                          "or compressed_ply.decode_compressed_ply")
    vertex_el = header.element("vertex")
    if vertex_el is None:
        names = [e.name for e in header.elements]
        raise FormatError(f"{where}: no 'vertex' element (elements: {names})")
    if vertex_el.has_list:
        raise FormatError(f"{where}: the 'vertex' element has list properties; not a 3DGS .ply")
    elements = read_elements(data, header, where)
    if "vertex" not in elements:
        raise FormatError(f"{where}: 'vertex' element follows an element with list properties; cannot read")
    v = elements["vertex"]
    props = v.dtype.names or ()
    missing = [p for p in _REQUIRED if p not in props]
    if missing:
        raise FormatError(
            f"{where}: vertex element lacks {missing}; not a 3D Gaussian splat .ply "
            f"(properties: {list(props)[:20]})"
        )
    rest = sorted(int(m.group(1)) for p in props if (m := _REST_RE.fullmatch(p)))
    if len(rest) not in (0, 9, 24, 45):
        raise FormatError(
            f"{where}: {len(rest)} f_rest_* properties; a 3DGS .ply has 0, 9, 24 or 45 "
            "(SH degree 0, 1, 2 or 3)"
        )
    if rest != list(range(len(rest))):
        raise FormatError(f"{where}: f_rest_* indices are not 0..{len(rest) - 1}")
    n = v.shape[0]
    if n == 0:
        raise FormatError(f"{where}: file contains no Gaussians (element vertex 0)")
    kinds = dict(vertex_el.properties)
    ints = [p for p in (*_REQUIRED, *(f"f_rest_{i}" for i in rest)) if np.dtype(kinds[p]).kind in "iu"]
    if ints:
        # graphdeco, gsplat, SuperSplat and every peer write these as float; an integer type is most often a
        # writer that stored half floats as ushort (1.0 -> 15360), which cannot be told from real integers
        types = sorted({_TYPE_NAMES[kinds[p]] for p in ints})
        raise FormatError(
            f"{where}: Gaussian properties {ints[:4]}{' ...' if len(ints) > 4 else ''} are stored as integers "
            f"({', '.join(types)}); the 3DGS .ply stores them as float or double. If they hold half-float bit "
            "patterns, convert the file to float32 (e.g. numpy: arr.view(np.float16).astype(np.float32))"
        )

    def cols(*names: str) -> np.ndarray:
        return np.stack([np.asarray(v[c], dtype=np.float32) for c in names], axis=1)

    nrest = len(rest) // 3
    shN = cols(*[f"f_rest_{i}" for i in range(len(rest))]) if rest else np.zeros((n, 0), np.float32)
    shN = shN.reshape(n, 3, nrest).transpose(0, 2, 1)
    return to_splats(
        means=cols("x", "y", "z"),
        scales=cols("scale_0", "scale_1", "scale_2"),
        quats=cols("rot_0", "rot_1", "rot_2", "rot_3"),
        opacities=np.asarray(v["opacity"], dtype=np.float32),
        sh0=cols("f_dc_0", "f_dc_1", "f_dc_2").reshape(n, 1, 3),
        shN=shN,
        where=where,
    )


def read_ply(path: str | os.PathLike) -> dict:
    return decode_ply(read_file_bytes(path, "PLY"), str(path))


def property_names(n_rest: int, normals: bool = True) -> list[str]:
    names = ["x", "y", "z"]
    if normals:
        names += ["nx", "ny", "nz"]
    names += ["f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * n_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def encode_ply(splats: Mapping[str, Any], normals: bool = True, where: str = "splats") -> bytes:
    a = validate_splats(splats, where)
    n, n_rest = a["means"].shape[0], a["shN"].shape[1]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {p}" for p in property_names(n_rest, normals)]
    header += ["end_header", ""]
    cols = [a["means"]]
    if normals:
        cols.append(np.zeros((n, 3), np.float32))
    cols += [
        a["sh0"].reshape(n, 3),
        a["shN"].transpose(0, 2, 1).reshape(n, 3 * n_rest),  # channel-major
        a["opacities"].reshape(n, 1),
        a["scales"],
        a["quats"],
    ]
    body = np.concatenate(cols, axis=1).astype("<f4", copy=False)
    return "\n".join(header).encode("ascii") + body.tobytes()


def write_ply(path: str | os.PathLike, splats: Mapping[str, Any], normals: bool = True) -> Path:
    """Write a graphdeco 3DGS .ply (``normals=False``: gsplat's layout)."""
    return atomic_write(path, encode_ply(splats, normals=normals, where=str(path)))
