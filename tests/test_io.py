"""splat.io: every format round-trips within its stated bounds, interoperates
with gsplat's exporter and plyfile, matches the spz spec when decoded by hand,
and bad input gets a clear FormatError with nothing half-written."""
from __future__ import annotations

import gzip
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from splat import io as sio
from splat.io import FormatError
from splat.io import compressed_ply as cply
from splat.io import ply as ply_mod
from splat.io import splat_format
from splat.io import spz as spz_mod
from splat.export_cli import main as export_main

gexp = pytest.importorskip("gsplat.exporter")
try:  # test-only dependency; only the tests that cross-check with it need it
    import plyfile
except ImportError:  # pragma: no cover
    plyfile = None
needs_plyfile = pytest.mark.skipif(plyfile is None, reason="plyfile is not installed")

C0 = 0.28209479177387814
REPO = Path(__file__).resolve().parents[1]


def make_splats(n=600, degree=3, seed=0, pos_range=5.0):
    """Random splats inside every format's representable range."""
    g = torch.Generator().manual_seed(seed)

    def u(*shape, lo, hi):
        return torch.rand(*shape, generator=g) * (hi - lo) + lo

    k = (degree + 1) ** 2
    return dict(
        means=u(n, 3, lo=-pos_range, hi=pos_range),
        scales=u(n, 3, lo=-6.0, hi=1.0),
        quats=torch.randn(n, 4, generator=g),
        opacities=u(n, lo=-4.5, hi=4.5),  # sigmoid > 1/255: gsplat's compressed writer keeps all
        sh0=u(n, 1, 3, lo=-1.7, hi=1.7),  # 0.5 + C0*sh0 inside [0, 1]
        shN=u(n, k - 1, 3, lo=-0.9, hi=0.9),  # spz's SH range is [-1, 0.99]
    )


def qnorm(q):
    q = q.double()
    return q / q.norm(dim=1, keepdim=True)


def quat_err(a, b):
    """Largest component difference of normalised quaternions, up to sign."""
    a, b = qnorm(a), qnorm(b)
    sign = torch.sign((a * b).sum(dim=1, keepdim=True))
    sign[sign == 0] = 1
    return float((a - sign * b).abs().max())


def rgb(sh0):
    return 0.5 + C0 * sh0.double().reshape(-1, 3)


def maxdiff(a, b):
    return float((a.double() - b.double()).abs().max())


def no_temp_files(d: Path):
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")] == []


def gsplat_bytes(s, fmt):
    return gexp.export_splats(s["means"], s["scales"], s["quats"], s["opacities"], s["sh0"], s["shN"], format=fmt)


# ---------------------------------------------------------------------------
# API basics
# ---------------------------------------------------------------------------


def test_detect_format_and_api():
    assert sio.FORMATS == ("ply", "compressed_ply", "splat", "spz", "sog", "glb")
    assert sio.detect_format("a/b.compressed.ply") == "compressed_ply"
    assert sio.detect_format("x.sog") == "sog" and sio.detect_format("dir/meta.json") == "sog"
    assert sio.detect_format("x.glb") == "glb" and sio.detect_format("x.gltf") == "glb"
    assert sio.detect_format("x.PLY") == "ply"
    assert sio.detect_format("x.splat") == "splat"
    assert sio.detect_format("x.spz") == "spz"
    assert sio.detect_format("ckpt_29999.pt") == "checkpoint"
    with pytest.raises(FormatError, match="cannot tell the format"):
        sio.detect_format("model.obj")
    assert issubclass(FormatError, ValueError)


# ---------------------------------------------------------------------------
# standard .ply
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_roundtrip_is_bit_exact(tmp_path, degree):
    s = make_splats(degree=degree, seed=degree)
    p = sio.save(tmp_path / "m.ply", s)
    r = sio.load(p)
    assert set(r) == set(sio.SPLAT_KEYS)
    for k in s:
        assert r[k].dtype == torch.float32 and r[k].shape == s[k].shape
        assert torch.equal(r[k], s[k]), k
    assert sio.sh_degree(r) == degree
    assert no_temp_files(tmp_path)


@needs_plyfile
def test_ply_property_order_and_plyfile_reads_it(tmp_path):
    s = make_splats(n=50, degree=2)
    p = sio.save(tmp_path / "m.ply", s)
    d = plyfile.PlyData.read(str(p))
    v = d["vertex"]
    names = [prop.name for prop in v.properties]
    expect = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expect += [f"f_rest_{i}" for i in range(24)] + ["opacity", "scale_0", "scale_1", "scale_2"]
    expect += ["rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expect
    assert d.text is False and d.byte_order == "<"
    assert all(prop.val_dtype in ("f4", "<f4", "float32") or np.dtype(prop.val_dtype) == np.float32
               for prop in v.properties)
    data = v.data
    assert np.array_equal(np.stack([data["x"], data["y"], data["z"]], 1), s["means"].numpy())
    assert np.array_equal(data["nx"], np.zeros(50, np.float32))
    # channel-major f_rest: f_rest_{c*(K-1)+k} = shN[:, k, c]
    K1 = 8
    for c in range(3):
        for k in range(K1):
            assert np.array_equal(data[f"f_rest_{c * K1 + k}"], s["shN"][:, k, c].numpy())
    assert np.array_equal(data["opacity"], s["opacities"].numpy())
    assert np.array_equal(np.stack([data[f"rot_{i}"] for i in range(4)], 1), s["quats"].numpy())


@needs_plyfile
def test_ply_bytes_match_gsplat_exporter(tmp_path):
    s = make_splats(degree=3)
    g = gsplat_bytes(s, "ply")
    # gsplat omits graphdeco's (zero) normals: with normals=False the bytes are identical
    assert ply_mod.encode_ply(s, normals=False) == g
    # the default writes graphdeco's layout: the same values plus nx ny nz = 0
    ours = ply_mod.encode_ply(s)
    assert ours != g
    (tmp_path / "g.ply").write_bytes(g)
    a = plyfile.PlyData.read(str(tmp_path / "g.ply"))["vertex"].data
    (tmp_path / "o.ply").write_bytes(ours)
    b = plyfile.PlyData.read(str(tmp_path / "o.ply"))["vertex"].data
    assert set(b.dtype.names) - set(a.dtype.names) == {"nx", "ny", "nz"}
    for name in a.dtype.names:
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("degree", [0, 3])
def test_gsplat_ply_loads_exactly(tmp_path, degree):
    s = make_splats(degree=degree)
    (tmp_path / "g.ply").write_bytes(gsplat_bytes(s, "ply"))
    r = sio.load(tmp_path / "g.ply")
    for k in s:
        assert torch.equal(r[k], s[k]), k


@needs_plyfile
def test_ply_properties_found_by_name(tmp_path):
    """Shuffled order, extra properties and elements, mixed types: read by name."""
    s = make_splats(n=40, degree=1, seed=3)
    n = 40
    cols = {
        "x": s["means"][:, 0], "y": s["means"][:, 1], "z": s["means"][:, 2],
        "opacity": s["opacities"],
        **{f"scale_{i}": s["scales"][:, i] for i in range(3)},
        **{f"rot_{i}": s["quats"][:, i] for i in range(4)},
        **{f"f_dc_{i}": s["sh0"][:, 0, i] for i in range(3)},
        **{f"f_rest_{c * 3 + k}": s["shN"][:, k, c] for c in range(3) for k in range(3)},
    }
    names = list(cols)
    rng = np.random.default_rng(1)
    rng.shuffle(names)
    fields = []
    for i, name in enumerate(names):
        fields.append((name, "f8" if i % 3 == 0 else "f4"))  # some as double
    fields.insert(5, ("red", "u1"))
    fields.insert(9, ("filter_3D", "f8"))
    arr = np.zeros(n, fields)
    for name in names:
        arr[name] = cols[name].numpy()
    arr["red"] = 7
    cam = np.zeros(2, [("fx", "f4"), ("fy", "f4")])
    for text, order in [(False, "<"), (False, ">"), (True, "=")]:
        els = [plyfile.PlyElement.describe(cam, "camera"), plyfile.PlyElement.describe(arr, "vertex")]
        p = tmp_path / f"shuffled_{text}_{order == '>'}.ply"
        plyfile.PlyData(els, text=text, byte_order=order).write(str(p))
        r = sio.load(p)
        for k in s:
            if text:  # ascii stores decimal text: within float32 printing precision
                assert torch.allclose(r[k], s[k], rtol=1e-6, atol=1e-6), k
            else:
                assert torch.equal(r[k], s[k]), k


@needs_plyfile
def test_ply_bad_rest_count_and_missing_property(tmp_path):
    arr = np.zeros(3, [(n, "f4") for n in ply_mod._REQUIRED] + [(f"f_rest_{i}", "f4") for i in range(5)])
    p = tmp_path / "bad.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(p))
    with pytest.raises(FormatError, match=r"5 f_rest_\* properties.*0, 9, 24 or 45"):
        sio.load(p)
    arr = np.zeros(3, [(n, "f4") for n in ply_mod._REQUIRED if n != "opacity"])
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(p))
    with pytest.raises(FormatError, match=r"bad\.ply.*lacks \['opacity'\]"):
        sio.load(p)
    pts = np.zeros(3, [("x", "f4"), ("y", "f4"), ("z", "f4")])
    plyfile.PlyData([plyfile.PlyElement.describe(pts, "point")]).write(str(p))
    with pytest.raises(FormatError, match="no 'vertex' element"):
        sio.load(p)


def test_ply_trailing_and_truncated(tmp_path):
    s = make_splats(n=30, degree=0)
    data = ply_mod.encode_ply(s)
    p = tmp_path / "t.ply"
    p.write_bytes(data[:-10])
    with pytest.raises(FormatError, match=r"t\.ply: truncated: element 'vertex' needs"):
        sio.load(p)
    p.write_bytes(data + b"\0\0\0\0")
    with pytest.raises(FormatError, match="4 unexpected bytes"):
        sio.load(p)
    p.write_bytes(data[:40])
    with pytest.raises(FormatError, match="no 'end_header'"):
        sio.load(p)
    p.write_bytes(b"plx\n" + data[4:])
    with pytest.raises(FormatError, match="not a PLY file"):
        sio.load(p)
    p.write_bytes(ply_mod.encode_ply(s)[:ply_mod.encode_ply(s).index(b"end_header")].replace(
        b"element vertex 30", b"element vertex 0") + b"end_header\n")
    with pytest.raises(FormatError, match="no Gaussians"):
        sio.load(p)


# ---------------------------------------------------------------------------
# .splat
# ---------------------------------------------------------------------------


def check_splat_bounds(r, s, order, tol_rgb, tol_alpha, tol_q):
    o = torch.as_tensor(order)
    assert torch.equal(r["means"], s["means"][o])
    # exp(scales) is stored as float32; the log read back is within float32 rounding
    assert torch.allclose(r["scales"].double().exp(), s["scales"][o].double().exp(), rtol=1e-6, atol=0)
    assert maxdiff(rgb(r["sh0"]), rgb(s["sh0"][o])) <= tol_rgb
    assert maxdiff(torch.sigmoid(r["opacities"]), torch.sigmoid(s["opacities"][o])) <= tol_alpha
    assert quat_err(r["quats"], s["quats"][o]) <= tol_q
    assert r["shN"].shape == (s["means"].shape[0], 0, 3)


def test_splat_roundtrip_within_bounds(tmp_path):
    s = make_splats(degree=2)
    p = sio.save(tmp_path / "m.splat", s)
    assert p.stat().st_size == 32 * 600
    r = sio.load(p)
    order = splat_format.sort_order({k: v.numpy() for k, v in s.items()})
    check_splat_bounds(r, s, order, 0.5 / 255 + 1e-7, 0.5 / 255 + 1e-6, 2 / 128)
    # sorted by descending size * opacity, like antimatter15's convert.py
    o = torch.as_tensor(order)
    key = s["scales"][o].double().sum(1).exp() * torch.sigmoid(s["opacities"][o].double())
    assert bool((key[:-1] >= key[1:]).all())
    # load -> save reproduces the position, scale and colour bytes of every record
    # (rounding, not truncation); the order may change as quantised opacities tie
    a1 = np.frombuffer(p.read_bytes(), splat_format.RECORD)
    a2 = np.frombuffer(sio.save(tmp_path / "again.splat", r).read_bytes(), splat_format.RECORD)
    a1, a2 = a1[np.lexsort(a1["pos"].T)], a2[np.lexsort(a2["pos"].T)]
    for field in ("pos", "scale", "rgba"):
        assert np.array_equal(a1[field], a2[field]), field


def test_splat_record_layout_by_hand(tmp_path):
    s = make_splats(n=5, degree=0)
    p = sio.save(tmp_path / "m.splat", s)
    raw = p.read_bytes()
    i0 = int(splat_format.sort_order({k: v.numpy() for k, v in s.items()})[0])
    pos = struct.unpack_from("<3f", raw, 0)
    scl = struct.unpack_from("<3f", raw, 12)
    r, g, b, a = raw[24:28]
    rot = raw[28:32]
    assert pos == tuple(float(v) for v in s["means"][i0])
    assert scl == tuple(float(np.float32(math.exp(float(v)))) for v in s["scales"][i0])
    exp_rgb = [min(255, max(0, math.floor((0.5 + C0 * float(c)) * 255 + 0.5))) for c in s["sh0"][i0, 0]]
    assert [r, g, b] == exp_rgb
    assert a == math.floor(torch.sigmoid(s["opacities"][i0].double()).item() * 255 + 0.5)
    q = qnorm(s["quats"][i0:i0 + 1])[0]
    assert list(rot) == [min(255, math.floor(float(c) * 128 + 128 + 0.5)) for c in q]


def test_gsplat_splat_loads_within_truncation_error(tmp_path):
    s = make_splats(degree=1, seed=5)
    (tmp_path / "g.splat").write_bytes(gsplat_bytes(s, "splat"))
    r = sio.load(tmp_path / "g.splat")
    order = gexp.sort_centers(s["means"], torch.arange(600)).numpy()  # gsplat: Morton order
    # gsplat truncates instead of rounding: one level (1/255, 1/128) of error
    check_splat_bounds(r, s, order, 1 / 255 + 1e-7, 1 / 255 + 1e-6, 4 / 128)


# ---------------------------------------------------------------------------
# compressed .ply
# ---------------------------------------------------------------------------


def chunk_ranges(path):
    data = Path(path).read_bytes()
    ch = ply_mod.read_elements(data, ply_mod.parse_header(data, str(path)), str(path))["chunk"]
    get = lambda *n: np.stack([ch[c] for c in n], 1).astype(np.float64)  # noqa: E731
    return dict(
        pos=get("max_x", "max_y", "max_z") - get("min_x", "min_y", "min_z"),
        scale=get("max_scale_x", "max_scale_y", "max_scale_z") - get("min_scale_x", "min_scale_y", "min_scale_z"),
        rgb=get("max_r", "max_g", "max_b") - get("min_r", "min_g", "min_b"),
    )


def check_compressed_bounds(r, s, order, path):
    o = torch.as_tensor(order)
    n = len(order)
    rng = chunk_ranges(path)
    ci = np.arange(n) // 256
    levels = np.array([2047, 1023, 2047], np.float64)
    pos_err = (r["means"].double() - s["means"][o].double()).abs().numpy()
    assert (pos_err <= rng["pos"][ci] / (2 * levels) + 1e-5).all()
    sc_err = (r["scales"].double() - s["scales"][o].double()).abs().numpy()
    assert (sc_err <= rng["scale"][ci] / (2 * levels) + 1e-5).all()
    col_err = (rgb(r["sh0"]) - rgb(s["sh0"][o])).abs().numpy()
    assert (col_err <= rng["rgb"][ci] / (2 * 255) + 1e-6).all()
    assert maxdiff(torch.sigmoid(r["opacities"]), torch.sigmoid(s["opacities"][o])) <= 0.5 / 255 + 1e-6
    assert quat_err(r["quats"], s["quats"][o]) <= 2e-3
    assert r["shN"].shape == s["shN"].shape
    if s["shN"].numel():
        assert maxdiff(r["shN"], s["shN"][o]) <= 1 / 64 + 1e-6


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_compressed_ply_roundtrip_within_bounds(tmp_path, degree):
    s = make_splats(n=700, degree=degree, seed=10 + degree)  # 3 chunks, the last partial
    p = sio.save(tmp_path / "m.compressed.ply", s)
    if plyfile is not None:  # a standard PLY reader sees the expected elements
        d = plyfile.PlyData.read(str(p))
        assert [e.name for e in d.elements] == (["chunk", "vertex", "sh"] if degree else ["chunk", "vertex"])
        assert d["chunk"].count == 3 and d["vertex"].count == 700
        assert d["vertex"].properties[0].name == "packed_position"
    r = sio.load(p)
    check_compressed_bounds(r, s, cply.morton_order(s["means"]), p)


def test_compressed_ply_bytes_match_gsplat(tmp_path):
    s = make_splats(n=700, degree=3, seed=4)
    g = gsplat_bytes(s, "ply_compressed")
    assert cply.encode_compressed_ply(s) == g
    # degree 0: gsplat writes an empty 'element sh N' (splat-transform's reader rejects it);
    # we omit it; the rest of the file is the same and both load to the same values
    s0 = make_splats(n=300, degree=0, seed=4)
    g0 = gsplat_bytes(s0, "ply_compressed")
    ours0 = cply.encode_compressed_ply(s0)
    assert g0.replace(b"element sh 300\nend_header", b"end_header") == ours0
    (tmp_path / "g0.compressed.ply").write_bytes(g0)
    r0 = sio.load(tmp_path / "g0.compressed.ply")
    r1 = cply.decode_compressed_ply(ours0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k


def test_gsplat_compressed_ply_loads_within_bounds(tmp_path):
    s = make_splats(n=520, degree=2, seed=8)
    p = tmp_path / "from_gsplat.ply"  # plain .ply name: the layout is sniffed
    p.write_bytes(gsplat_bytes(s, "ply_compressed"))
    r = sio.load(p)
    check_compressed_bounds(r, s, gexp.sort_centers(s["means"], torch.arange(520)).numpy(), p)


def test_compressed_ply_old_layout_without_colour_bounds(tmp_path):
    """Early SuperSplat files have 12 chunk properties: colour stored absolutely."""
    s = make_splats(n=10, degree=0)
    data = cply.encode_compressed_ply(s)
    header = ply_mod.parse_header(data, "x")
    nch = header.element("chunk").count
    body = data[header.data_offset:]
    chunk = np.frombuffer(body[: nch * 72], "<f4").reshape(nch, 18)[:, :12]
    vert = np.frombuffer(body[nch * 72: nch * 72 + 160], "<u4").reshape(10, 4).copy()
    # re-pack the colour bytes as absolute values (0..1)
    c = np.clip(np.floor((0.5 + C0 * s["sh0"][cply.morton_order(s["means"])].reshape(10, 3).double().numpy())
                         * 255 + 0.5), 0, 255).astype(np.uint32)
    vert[:, 3] = (c[:, 0] << 24) | (c[:, 1] << 16) | (c[:, 2] << 8) | (vert[:, 3] & 0xFF)
    text = data[: header.data_offset].decode()
    for prop in ["min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]:
        text = text.replace(f"property float {prop}\n", "")
    p = tmp_path / "old.compressed.ply"
    p.write_bytes(text.encode() + chunk.astype("<f4").tobytes() + vert.astype("<u4").tobytes())
    r = sio.load(p)
    o = torch.as_tensor(cply.morton_order(s["means"]))
    assert maxdiff(rgb(r["sh0"]), rgb(s["sh0"][o])) <= 0.5 / 255 + 1e-6


# ---------------------------------------------------------------------------
# .spz
# ---------------------------------------------------------------------------


def check_spz_bounds(r, s, version):
    assert maxdiff(r["means"], s["means"]) <= 0.5 / 4096 + 1e-6
    assert maxdiff(r["scales"], s["scales"]) <= 1 / 32 + 1e-5
    assert maxdiff(torch.sigmoid(r["opacities"]), torch.sigmoid(s["opacities"])) <= 0.5 / 255 + 1e-6
    assert maxdiff(rgb(r["sh0"]), rgb(s["sh0"])) <= 0.5 / (255 * 0.15) * C0 + 1e-6
    # v3: 9-bit smallest three; v2: w is derived from 8-bit x, y, z and loses
    # precision when |w| is small (the reason v3 exists)
    assert quat_err(r["quats"], s["quats"]) <= (2e-3 if version >= 3 else 0.12)
    assert r["shN"].shape == s["shN"].shape
    if s["shN"].shape[1]:
        assert maxdiff(r["shN"][:, :3], s["shN"][:, :3]) <= 4.5 / 128 + 1e-6
        assert maxdiff(r["shN"], s["shN"]) <= 8.5 / 128 + 1e-6


@pytest.mark.parametrize("version,degree", [(3, 3), (3, 0), (2, 2), (2, 1)])
def test_spz_roundtrip_within_bounds(tmp_path, version, degree):
    s = make_splats(degree=degree, seed=20 + degree)
    p = sio.save(tmp_path / "m.spz", s, version=version)
    r = sio.load(p)
    check_spz_bounds(r, s, version)
    h = spz_mod.read_header(p)
    assert (h["version"], h["num_points"], h["sh_degree"], h["fractional_bits"]) == (version, 600, degree, 12)


def test_spz_header_and_values_by_hand(tmp_path):
    """Decode our file with only the spec (not our reader)."""
    s = make_splats(n=20, degree=1, seed=2)
    p = sio.save(tmp_path / "m.spz", s, antialiased=True)
    raw = gzip.decompress(p.read_bytes())
    magic, version, n, deg, fb, flags, reserved = struct.unpack_from("<IIIBBBB", raw)
    assert (magic, version, n, deg, fb, flags, reserved) == (0x5053474E, 3, 20, 1, 12, 1, 0)
    assert raw[:4] == b"NGSP"
    assert len(raw) == 16 + 20 * (9 + 1 + 3 + 3 + 4 + 9)
    off = 16
    positions, off = raw[off: off + 180], off + 180
    alphas, off = raw[off: off + 20], off + 20
    colors, off = raw[off: off + 60], off + 60
    scales, off = raw[off: off + 60], off + 60
    rots, off = raw[off: off + 80], off + 80
    sh = raw[off:]
    i = 7
    # position: 24-bit two's complement, 12 fraction bits, RUB (y, z flipped from RDF)
    for axis, sign in enumerate((1, -1, -1)):
        b = positions[(i * 3 + axis) * 3:(i * 3 + axis) * 3 + 3]
        v = int.from_bytes(b, "little", signed=True) / 4096
        assert abs(sign * v - float(s["means"][i, axis])) <= 0.5 / 4096 + 1e-7
    assert alphas[i] == round(float(torch.sigmoid(s["opacities"][i])) * 255)
    for c in range(3):
        assert colors[i * 3 + c] == round(float(s["sh0"][i, 0, c]) * 0.15 * 255 + 127.5)
        assert scales[i * 3 + c] == round((float(s["scales"][i, c]) + 10) * 16)
    # rotation: smallest three of (x, y, z, w), x/y/z sign-flipped per the RDF->RUB change
    w, x, y, z = qnorm(s["quats"][i:i + 1])[0].tolist()
    q = [x, -y, -z, w]
    comp = int.from_bytes(rots[i * 4:i * 4 + 4], "little")
    largest = comp >> 30
    assert largest == max(range(4), key=lambda j: abs(q[j]))
    if q[largest] < 0:
        q = [-v for v in q]
    dec = [0.0] * 4
    for j in (3, 2, 1, 0):
        if j == largest:
            continue
        mag, neg = comp & 511, (comp >> 9) & 1
        comp >>= 10
        dec[j] = (-1 if neg else 1) * math.sqrt(0.5) * mag / 511
    dec[largest] = math.sqrt(max(0.0, 1 - sum(v * v for v in dec)))
    assert max(abs(a - b) for a, b in zip(dec, q)) < 1.5e-3
    # SH (degree 1: 3 coefficients x rgb, coefficient-major); the y-basis (first) and
    # z-basis (second) coefficients change sign between RDF and RUB, the x-basis does not
    for k, sign in enumerate((-1, -1, 1)):
        for c in range(3):
            v = (sh[i * 9 + k * 3 + c] - 128) / 128
            assert abs(v - sign * float(s["shN"][i, k, c])) <= 4.5 / 128 + 1e-6


def _spz_v4(v3_bytes: bytes, extensions: bytes = b"", zstd_compress=None) -> bytes:
    """An spz v4 container built by hand from a v3 file's payload (independent of
    the writer): NGSP header, extensions, TOC, one zstd stream per attribute."""
    raw = gzip.decompress(v3_bytes)
    _, _, n, deg, fb, flags, _ = struct.unpack_from("<IIIBBBB", raw)
    dim = {0: 0, 1: 3, 2: 8, 3: 15}[deg]
    sizes = [9 * n, n, 3 * n, 3 * n, 4 * n, 3 * dim * n]
    streams, off = [], 16
    for sz in sizes:
        if sz:
            streams.append(raw[off: off + sz])
        off += sz
    comp = [zstd_compress(x) for x in streams]
    flags |= 2 if extensions else 0
    head = struct.pack("<4sIIBBBBI12x", b"NGSP", 4, n, deg, fb, flags, len(comp), 32 + len(extensions))
    toc = b"".join(struct.pack("<QQ", len(c), len(u)) for c, u in zip(comp, streams))
    return head + extensions + toc + b"".join(comp)


def test_spz_v4_container(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    zc = zstandard.ZstdCompressor(level=3).compress
    s = make_splats(n=300, degree=3, seed=9)
    v3 = spz_mod.encode_spz(s)
    ref = spz_mod.decode_spz(v3)
    p = tmp_path / "v4.spz"
    p.write_bytes(_spz_v4(v3, zstd_compress=zc))
    r = sio.load(p)
    for k in ref:
        assert torch.equal(r[k], ref[k]), k
    assert spz_mod.read_header(p)["container"] == "ngsp"
    # a coordinate-system extension declaring RDF: no y/z flip on load
    ext = struct.pack("<III", 0xADBE0003, 4, 6)
    p.write_bytes(_spz_v4(v3, ext, zc))
    r = sio.load(p)
    flip = torch.tensor([1.0, -1.0, -1.0])
    assert torch.equal(r["means"], ref["means"] * flip)
    assert spz_mod.read_header(p)["coordinate_system"] == "RDF"
    # our own v4 writer
    p4 = sio.save(tmp_path / "w4.spz", s, version=4)
    assert p4.read_bytes()[:4] == b"NGSP"
    r4 = sio.load(p4)
    for k in ref:
        assert torch.equal(r4[k], ref[k]), k
    # truncated v4
    p.write_bytes(p4.read_bytes()[:-7])
    with pytest.raises(FormatError, match="truncated: stream 5"):
        sio.load(p)
    # an axis-permuting coordinate system is refused clearly
    p.write_bytes(_spz_v4(v3, struct.pack("<III", 0xADBE0003, 4, 12), zc))
    with pytest.raises(FormatError, match="RBU.*axis permutation"):
        sio.load(p)


def test_spz_v4_without_zstd_is_a_clear_error(tmp_path, monkeypatch):
    s = make_splats(n=10, degree=0)
    head = struct.pack("<4sIIBBBBI12x", b"NGSP", 4, 10, 0, 12, 0, 5, 32)
    toc = b"".join(struct.pack("<QQ", 1, sz) for sz in (90, 10, 30, 30, 40))
    p = tmp_path / "v4.spz"
    p.write_bytes(head + toc + b"\0" * 5)
    monkeypatch.setattr(spz_mod, "_zstd", lambda: None)
    with pytest.raises(FormatError, match="v4.spz: spz version 4 .*install the 'zstandard' package"):
        sio.load(p)
    with pytest.raises(FormatError, match="needs zstd"):
        sio.save(tmp_path / "x.spz", s, version=4)
    assert not (tmp_path / "x.spz").exists()


def test_spz_large_positions_use_fewer_fraction_bits(tmp_path):
    s = make_splats(n=50, degree=0, pos_range=3000.0)
    with pytest.warns(UserWarning, match="fractionalBits=11"):
        p = sio.save(tmp_path / "big.spz", s)
    assert spz_mod.read_header(p)["fractional_bits"] == 11
    assert maxdiff(sio.load(p)["means"], s["means"]) <= 0.5 / 2048 + 1e-4


def test_spz_degree4_band_dropped(tmp_path):
    """A degree-4 file (24 coefficients) loads as degree 3 with a warning."""
    n = 4
    raw = struct.pack("<IIIBBBB", 0x5053474E, 3, n, 4, 12, 0, 0)
    raw += bytes(9 * n) + bytes([200] * n) + bytes([128] * 3 * n) + bytes([100] * 3 * n)
    raw += struct.pack("<I", 0) * n  # largest = 0 (x) with zero others -> q = (1, 0, 0, 0) xyzw
    raw += bytes([136] * 72 * n)
    p = tmp_path / "d4.spz"
    p.write_bytes(gzip.compress(raw))
    with pytest.warns(UserWarning, match="degree-4 band is dropped"):
        r = sio.load(p)
    assert r["shN"].shape == (n, 15, 3)
    assert torch.allclose(r["scales"], torch.full((n, 3), 100 / 16 - 10))
    # x-axis rotation by pi in RUB stays a pi rotation about x in RDF
    assert quat_err(r["quats"], torch.tensor([[0.0, 1.0, 0.0, 0.0]]).expand(n, 4)) < 1e-6


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.ply", "a.compressed.ply", "a.splat", "a.spz", "a.pt"])
def test_missing_file_and_directory(tmp_path, name):
    with pytest.raises(FormatError, match=rf"{name}: no such file"):
        sio.load(tmp_path / name)
    (tmp_path / "d" / name).mkdir(parents=True)
    with pytest.raises(FormatError, match="is a directory"):
        sio.load(tmp_path / "d" / name)
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        sio.load(tmp_path / name)


@pytest.mark.parametrize("name", ["g.ply", "g.compressed.ply", "g.splat", "g.spz", "g.pt"])
def test_garbage_is_rejected(tmp_path, name):
    rng = np.random.default_rng(0)
    p = tmp_path / name
    p.write_bytes(rng.integers(0, 256, 32 * 64, dtype=np.uint8).tobytes())
    with pytest.raises(FormatError, match=name):
        sio.load(p)


def test_truncated_files_of_each_format(tmp_path):
    s = make_splats(n=300, degree=1)
    for name in ["t.ply", "t.compressed.ply", "t.splat", "t.spz"]:
        full = sio.save(tmp_path / ("full_" + name), s).read_bytes()
        p = tmp_path / name
        p.write_bytes(full[: len(full) - 20])
        with pytest.raises(FormatError, match=r"truncated|multiple of 32") as e:
            sio.load(p)
        assert name in str(e.value)
    # gzip intact but the payload is shorter than the header says
    raw = gzip.decompress((tmp_path / "full_t.spz").read_bytes())
    p = tmp_path / "short.spz"
    p.write_bytes(gzip.compress(raw[:-50]))
    with pytest.raises(FormatError, match=r"short\.spz: truncated: header declares 300 Gaussians"):
        sio.load(p)
    p.write_bytes(gzip.compress(raw + b"xyz"))
    with pytest.raises(FormatError, match="3 unexpected bytes"):
        sio.load(p)


def test_spz_corrupt_gzip_and_bad_magic(tmp_path):
    s = make_splats(n=200, degree=0)
    data = bytearray(spz_mod.encode_spz(s))
    data[30:60] = bytes(30)
    p = tmp_path / "c.spz"
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"c\.spz: corrupt or truncated gzip stream"):
        sio.load(p)
    raw = bytearray(gzip.decompress(spz_mod.encode_spz(s)))
    raw[:4] = b"XXXX"
    p.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(FormatError, match="bad magic 0x58585858"):
        sio.load(p)
    raw[:4] = b"NGSP"
    raw[4:8] = struct.pack("<I", 9)
    p.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(FormatError, match="unsupported spz version 9"):
        sio.load(p)
    p.write_bytes(gzip.compress(struct.pack("<IIIBBBB", 0x5053474E, 3, 0, 0, 12, 0, 0)))
    with pytest.raises(FormatError, match="no Gaussians"):
        sio.load(p)
    p.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(FormatError, match="not an .spz file"):
        sio.load(p)


@pytest.mark.parametrize("fmt", sio.FORMATS)
def test_bad_models_are_refused_and_nothing_is_written(tmp_path, fmt):
    out = tmp_path / "out.bin"
    good = make_splats(n=20, degree=1)
    bad_cases = {
        "empty model": {k: v[:0] for k, v in good.items()},
        "non-finite": {**good, "means": good["means"].clone().index_fill_(0, torch.tensor([3]), float("nan"))},
        "missing keys": {k: v for k, v in good.items() if k != "quats"},
        "has shape": {**good, "opacities": good["opacities"][:, None]},
        "higher-order SH": {**good, "shN": good["shN"][:, :2]},
    }
    for msg, bad in bad_cases.items():
        with pytest.raises(FormatError, match=msg):
            sio.save(out, bad, format=fmt)
        assert not out.exists()
        assert no_temp_files(tmp_path)
    # an existing file survives a failed save untouched
    out.write_bytes(b"precious")
    with pytest.raises(FormatError, match=r"'means' has 3 non-finite values .* first at index 3"):
        sio.save(out, bad_cases["non-finite"], format=fmt)
    assert out.read_bytes() == b"precious"
    assert no_temp_files(tmp_path)


def test_failure_during_rename_leaves_no_temp_and_keeps_old_file(tmp_path, monkeypatch):
    out = tmp_path / "m.ply"
    out.write_bytes(b"old")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        sio.save(out, make_splats(n=5))
    assert out.read_bytes() == b"old"
    assert no_temp_files(tmp_path)


def test_save_to_missing_directory(tmp_path):
    with pytest.raises(FormatError, match="output directory .* does not exist"):
        sio.save(tmp_path / "nope" / "m.ply", make_splats(n=5))


# ---------------------------------------------------------------------------
# splat-export CLI
# ---------------------------------------------------------------------------


def test_cli_ply_to_spz_to_ply(tmp_path, capsys):
    s = make_splats(n=1000, degree=3)
    sio.save(tmp_path / "in.ply", s)
    assert export_main([str(tmp_path / "in.ply"), str(tmp_path / "mid.spz")]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(":", 1) for line in out.strip().splitlines())
    assert lines["gaussians"].strip() == "1,000"
    assert lines["sh degree"].strip() == "3"
    in_size, mid_size = (tmp_path / "in.ply").stat().st_size, (tmp_path / "mid.spz").stat().st_size
    assert f"{in_size:,} bytes ({in_size / 1e6:.2f} MB)" in lines["input"]
    assert f"{mid_size:,} bytes" in lines["output"] and "[spz v3]" in lines["output"]
    assert lines["compression"].strip().startswith(f"{in_size / mid_size:.2f}x")
    assert export_main([str(tmp_path / "mid.spz"), str(tmp_path / "back.ply")]) == 0
    check_spz_bounds(sio.load(tmp_path / "back.ply"), s, 3)
    # explicit --format, and .splat drops higher-order SH (reported)
    assert export_main([str(tmp_path / "in.ply"), str(tmp_path / "o.bin"), "--format", "splat"]) == 0
    assert "output keeps degree 0" in capsys.readouterr().out
    assert (tmp_path / "o.bin").stat().st_size == 32 * 1000


def test_cli_reads_checkpoints(tmp_path, capsys):
    s = make_splats(n=64, degree=1)
    torch.save({"step": 10, "splats": s}, tmp_path / "ckpt.pt")
    assert export_main([str(tmp_path / "ckpt.pt"), str(tmp_path / "m.compressed.ply")]) == 0
    assert "gaussians:    64" in capsys.readouterr().out
    torch.save({"step": 10}, tmp_path / "bad.pt")
    assert export_main([str(tmp_path / "bad.pt"), str(tmp_path / "x.ply")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("splat-export: error:") and "no 'splats' dict" in err and "\n" not in err


def test_cli_bad_input_exit_codes(tmp_path, capsys):
    assert export_main([str(tmp_path / "missing.ply"), str(tmp_path / "o.spz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.ply: no such file" in err
    assert not (tmp_path / "o.spz").exists()
    sio.save(tmp_path / "in.ply", make_splats(n=8))
    assert export_main([str(tmp_path / "in.ply"), str(tmp_path / "o.xyz")]) == 1
    assert "cannot tell the format" in capsys.readouterr().err


def test_cli_subprocess_exit_code(tmp_path):
    (tmp_path / "junk.spz").write_bytes(b"not an spz at all")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "splat.export_cli", str(tmp_path / "junk.spz"), str(tmp_path / "o.ply")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("splat-export: error:") and "not an .spz file" in r.stderr
    assert not (tmp_path / "o.ply").exists()


def test_unwritable_directory_names_the_output(tmp_path, monkeypatch, capsys):
    """A read-only directory (simulated: root ignores permissions): the error names the output file,
    not the temporary name, and nothing is left behind."""
    import tempfile

    from splat.export_cli import main as export_main

    src = sio.save(tmp_path / "in.ply", make_splats(n=5))

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".out.glb.abc123.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    out = tmp_path / "out.glb"
    with pytest.raises(PermissionError) as e:
        sio.save(out, make_splats(n=5))
    assert e.value.filename == str(out) and "Permission denied" in str(e.value)
    assert export_main([str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out}: cannot create a file in {tmp_path} (Permission denied)" in err and ".tmp" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ply"]
