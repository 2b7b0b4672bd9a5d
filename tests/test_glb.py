"""splat.io.glb: glTF 2.0 binary with KHR_gaussian_splatting.

The round trip is exact where the spec stores our values as they are (means, SH)
and within float32 rounding where it stores them activated (linear scale,
linear opacity, unit quaternion). The written file is read back with pygltflib
and decoded here independently, with the spec's conventions applied in the test
(xyzw quaternions, exp(scale), sigmoid(opacity), the spec's own SH basis, the
y-up glTF frame); hand-built files cover the quantised component types,
interleaved buffer views, node transforms and older drafts; bad files raise a
FormatError naming the file."""
from __future__ import annotations

import base64
import json
import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from splat.backends.torch_ref import sh_basis
from splat.io import ply as ply_mod
from splat.io.common import FormatError
from splat.io.glb import read_glb, write_glb

pygltflib = pytest.importorskip("pygltflib")

C0 = 0.28209479177387814
KHR = "KHR_gaussian_splatting"
P = "KHR_gaussian_splatting:"
F = np.diag([-1.0, -1.0, 1.0])  # the model (y down) -> glTF (y up) turn, 180 degrees about z
DATA = Path(__file__).resolve().parent / "data" / "glb"


def make_splats(n=300, degree=3, seed=0):
    g = torch.Generator().manual_seed(seed)

    def u(*shape, lo, hi):
        return torch.rand(*shape, generator=g) * (hi - lo) + lo

    k = (degree + 1) ** 2
    return dict(
        means=u(n, 3, lo=-5.0, hi=5.0),
        scales=u(n, 3, lo=-7.0, hi=1.0),
        quats=torch.randn(n, 4, generator=g),
        opacities=u(n, lo=-6.0, hi=6.0),
        sh0=u(n, 1, 3, lo=-2.0, hi=2.0),
        shN=u(n, k - 1, 3, lo=-1.0, hi=1.0),
    )


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def rotmat_wxyz(q):
    q = np.asarray(q, np.float64)
    return Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()


def covariances(s):
    r = rotmat_wxyz(s["quats"].numpy())
    rs = r * np.exp(s["scales"].double().numpy())[:, None, :]
    return rs @ np.swapaxes(rs, 1, 2)


def spec_sh_basis(d):
    """The spec's real SH basis (its 'Color_SH' formulas), degrees 1-3, in COEF_n order (m = n - l)."""
    x, y, z = np.asarray(d, np.float64).T
    return np.stack([
        -0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x,
        1.092548430592079 * x * y, -1.092548430592079 * y * z, 0.3153915652525200 * (2 * z * z - x * x - y * y),
        -1.092548430592079 * x * z, 0.5462742152960395 * (x * x - y * y),
        -0.5900435899266435 * y * (3 * x * x - y * y), 2.890611442640554 * x * y * z,
        -0.4570457994644657 * y * (4 * z * z - x * x - y * y), 0.3731763325901154 * z * (2 * z * z - 3 * x * x - 3 * y * y),
        -0.4570457994644657 * x * (4 * z * z - x * x - y * y), 1.445305721320277 * z * (x * x - y * y),
        -0.5900435899266435 * x * (x * x - 3 * y * y),
    ], -1)


def unit_dirs(m=40, seed=3):
    d = np.random.default_rng(seed).normal(size=(m, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def model_view_colour(shN, dirs):
    """sum_k shN[:, k] * Y_k(d) with the renderer's basis (no DC): [N, M, 3]."""
    k = shN.shape[1]
    b = sh_basis(3, torch.from_numpy(dirs)).numpy()[:, 1: 1 + k]  # [M, k]
    return np.einsum("mk,nkc->nmc", b, np.asarray(shN, np.float64))


# ---------------------------------------------------------------------------
# an independent minimal GLB codec for building and editing test files
# ---------------------------------------------------------------------------


def split_glb(data: bytes):
    magic, version, length = struct.unpack_from("<4sII", data)
    assert magic == b"glTF" and version == 2 and length == len(data)
    jlen, jtype = struct.unpack_from("<II", data, 12)
    assert jtype == 0x4E4F534A
    doc = json.loads(data[20: 20 + jlen])
    off = 20 + jlen
    blen, btype = struct.unpack_from("<II", data, off)
    assert btype == 0x004E4942
    return doc, bytearray(data[off + 8: off + 8 + blen])


def join_glb(doc, bin_data=b"") -> bytes:
    js = json.dumps(doc).encode()
    js += b" " * (-len(js) % 4)
    b = bytes(bin_data) + b"\0" * (-len(bin_data) % 4)
    parts = [struct.pack("<II", len(js), 0x4E4F534A), js]
    if b:
        parts += [struct.pack("<II", len(b), 0x004E4942), b]
    body = b"".join(parts)
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


def edit_glb(path: Path, out: Path, fn) -> Path:
    doc, binary = split_glb(path.read_bytes())
    fn(doc, binary)
    out.write_bytes(join_glb(doc, binary))
    return out


def accessor_array(doc, binary, index):
    acc = doc["accessors"][index]
    bv = doc["bufferViews"][acc["bufferView"]]
    dtype = {5126: "<f4", 5121: "u1", 5123: "<u2", 5122: "<i2", 5120: "i1"}[acc["componentType"]]
    ncomp = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc["type"]]
    itemsize = np.dtype(dtype).itemsize
    stride = bv.get("byteStride", ncomp * itemsize)
    start = bv.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.ndarray((acc["count"], ncomp), dtype, buffer=bytes(binary), offset=start, strides=(stride, itemsize))


def attr_offset(doc, name):
    acc = doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"][name]]
    return doc["bufferViews"][acc["bufferView"]].get("byteOffset", 0) + acc.get("byteOffset", 0)


class Builder:
    """Accumulates bufferViews/accessors for a hand-made glb."""

    def __init__(self):
        self.bin = bytearray()
        self.views, self.accessors = [], []

    def view(self, raw: bytes, stride=None) -> int:
        self.bin += b"\0" * (-len(self.bin) % 4)
        v = {"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(raw)}
        if stride:
            v["byteStride"] = stride
        self.bin += raw
        self.views.append(v)
        return len(self.views) - 1

    def accessor(self, view, ctype, typ, count, offset=0, normalized=False) -> int:
        a = {"bufferView": view, "byteOffset": offset, "componentType": ctype, "type": typ, "count": count}
        if normalized:
            a["normalized"] = True
        self.accessors.append(a)
        return len(self.accessors) - 1

    def glb(self, attributes, nodes=None, **prim) -> bytes:
        doc = {
            "asset": {"version": "2.0"}, "extensionsUsed": [KHR], "scene": 0,
            "scenes": [{"nodes": list(range(len(nodes))) if nodes else [0]}],
            "nodes": nodes or [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": attributes, "mode": 0,
                                        "extensions": {KHR: {"kernel": "ellipse",
                                                             "colorSpace": "srgb_rec709_display"}}, **prim}]}],
            "buffers": [{"byteLength": len(self.bin)}], "bufferViews": self.views, "accessors": self.accessors,
        }
        return join_glb(doc, self.bin)


# ---------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [1, 300])
def test_roundtrip(tmp_path, degree, n):
    s = make_splats(n, degree, seed=degree + n)
    path = write_glb(tmp_path / "m.glb", s)
    assert path == tmp_path / "m.glb"
    r = read_glb(path)
    assert set(r) == {"means", "scales", "quats", "opacities", "sh0", "shN"}
    for k, v in r.items():
        assert v.dtype == torch.float32 and v.device.type == "cpu" and v.shape == s[k].shape, k
    # stored as they are: bit-exact
    assert torch.equal(r["means"], s["means"])
    assert torch.equal(r["sh0"], s["sh0"])
    assert torch.equal(r["shN"], s["shN"])
    # stored activated (unit quaternion, exp(scale), sigmoid(opacity)): float32 rounding
    q = s["quats"].double()
    q = (q / q.norm(dim=1, keepdim=True)).float()
    assert float((r["quats"] - q).abs().max()) <= 1.5e-7
    ds = (r["scales"].double() - s["scales"].double()).abs()
    assert bool((ds <= 1e-7 + 1e-7 * s["scales"].double().abs()).all()), float(ds.max())
    assert np.abs(sigmoid(r["opacities"]) - sigmoid(s["opacities"])).max() <= 2e-7


def test_extreme_values_are_clamped_not_infinite(tmp_path):
    s = make_splats(4, 0)
    s["opacities"] = torch.tensor([40.0, -120.0, 16.0, -30.0])
    s["scales"][0] = torch.tensor([-110.0, 88.0, -3.0])
    r = read_glb(write_glb(tmp_path / "x.glb", s))
    assert bool(torch.isfinite(r["opacities"]).all()) and bool(torch.isfinite(r["scales"]).all())
    lo, hi = math.log(2.0 ** -126) - math.log1p(-(2.0 ** -126)), math.log((1 - 2.0 ** -24) / 2.0 ** -24)
    assert r["opacities"][0].item() == pytest.approx(hi, abs=1e-5)  # sigmoid(40) is 1.0 in float32
    assert r["opacities"][1].item() == pytest.approx(lo, abs=1e-4)  # sigmoid(-120) is 0.0 in float32
    assert r["opacities"][3].item() == pytest.approx(-30.0, abs=1e-5)  # small opacities keep their precision
    assert r["scales"][0, 0].item() == pytest.approx(math.log(2.0 ** -126), abs=1e-4)  # exp(-110) is 0 in float32
    assert r["scales"][0, 1].item() == pytest.approx(88.0, abs=1e-5)


def test_degenerate_quaternion_is_written_as_identity(tmp_path):
    s = make_splats(3, 1)
    s["quats"][1] = 0.0
    r = read_glb(write_glb(tmp_path / "q.glb", s))
    assert r["quats"][1].tolist() == [1.0, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------
# the file, read by pygltflib and decoded here with the spec's conventions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [0, 3])
def test_file_follows_the_extension(tmp_path, degree):
    n = 64
    s = make_splats(n, degree, seed=11)
    path = write_glb(tmp_path / "s.glb", s)
    raw = path.read_bytes()
    assert raw[:4] == b"glTF" and struct.unpack_from("<II", raw, 4) == (2, len(raw)) and len(raw) % 4 == 0
    jlen = struct.unpack_from("<I", raw, 12)[0]
    assert raw[20 + jlen - 1: 20 + jlen] in (b"}", b" ")  # JSON chunk padded with spaces

    g = pygltflib.GLTF2().load(str(path))
    assert g.asset.version == "2.0" and g.asset.generator == "splat"
    assert g.extensionsUsed == [KHR] and not g.extensionsRequired
    assert g.scene == 0 and g.scenes[0].nodes == [0]
    node = g.nodes[0]
    assert node.mesh == 0 and node.matrix is None and node.rotation is None and node.scale is None
    assert len(g.meshes) == 1 and len(g.meshes[0].primitives) == 1
    prim = g.meshes[0].primitives[0]
    assert prim.mode == pygltflib.POINTS == 0 and prim.indices is None
    assert prim.extensions == {KHR: {"kernel": "ellipse", "colorSpace": "srgb_rec709_display",
                                     "projection": "perspective", "sortingMethod": "cameraDistance"}}
    attrs = {k: v for k, v in vars(prim.attributes).items() if v is not None}
    sh_names = [f"{P}SH_DEGREE_{l}_COEF_{c}" for l in range(1, degree + 1) for c in range(2 * l + 1)]
    assert set(attrs) == {"POSITION", "COLOR_0", P + "ROTATION", P + "SCALE", P + "OPACITY",
                          P + "SH_DEGREE_0_COEF_0", *sh_names}
    want = {"POSITION": ("VEC3", 5126), "COLOR_0": ("VEC4", 5121), P + "ROTATION": ("VEC4", 5126),
            P + "SCALE": ("VEC3", 5126), P + "OPACITY": ("SCALAR", 5126)}
    blob = g.binary_blob()
    assert len(g.buffers) == 1 and g.buffers[0].uri is None and g.buffers[0].byteLength <= len(blob)
    doc, _ = split_glb(raw)  # the raw JSON, for the byte offsets of the arrays decoded here
    arr = {}
    for name, idx in attrs.items():
        acc = g.accessors[idx]
        assert (acc.type, acc.componentType) == want.get(name, ("VEC3", 5126)), name
        assert acc.count == n and acc.sparse is None
        assert acc.normalized == (name == "COLOR_0")
        bv = g.bufferViews[acc.bufferView]
        assert bv.buffer == 0 and bv.byteOffset % 4 == 0 and bv.byteStride is None and bv.target == 34962
        assert bv.byteOffset + bv.byteLength <= g.buffers[0].byteLength
        arr[name] = accessor_array(doc, blob, idx).astype(np.float64)

    # POSITION: the model's means turned into glTF's y-up frame; min/max as glTF requires
    pos = arr["POSITION"]
    np.testing.assert_array_equal(pos, s["means"].double().numpy() @ F)
    acc = g.accessors[attrs["POSITION"]]
    assert acc.min == pos.min(axis=0).tolist() and acc.max == pos.max(axis=0).tolist()
    # ROTATION: unit quaternions in (x, y, z, w); the same turn applied to each Gaussian's frame
    xyzw = arr[P + "ROTATION"]
    np.testing.assert_allclose(np.linalg.norm(xyzw, axis=1), 1.0, atol=2e-7)
    r_file = Rotation.from_quat(xyzw).as_matrix()
    np.testing.assert_allclose(r_file, F @ rotmat_wxyz(s["quats"].numpy()), atol=1e-6)
    # SCALE linear, OPACITY linear in [0, 1], SH_DEGREE_0 the raw DC coefficient
    np.testing.assert_allclose(arr[P + "SCALE"], np.exp(s["scales"].double().numpy()), rtol=1.2e-7)
    np.testing.assert_allclose(arr[P + "OPACITY"][:, 0], sigmoid(s["opacities"]), atol=6e-8)
    np.testing.assert_array_equal(arr[P + "SH_DEGREE_0_COEF_0"], s["sh0"].double().numpy()[:, 0])
    # higher SH: the spec's basis in the glTF frame gives the model's view-dependent colour
    if degree:
        coef = np.stack([arr[nm] for nm in sh_names], axis=1)  # [n, 15, 3]
        d = unit_dirs()
        got = np.einsum("mk,nkc->nmc", spec_sh_basis(d @ F), coef)
        np.testing.assert_allclose(got, model_view_colour(s["shN"].numpy(), d), atol=2e-6)
    # COLOR_0: the fallback colour, linear (sRGB-decoded 0.5 + C0*sh0), and the opacity as alpha
    c = np.clip(0.5 + C0 * s["sh0"].double().numpy()[:, 0], 0, 1)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    rgba = arr["COLOR_0"] / 255.0
    assert np.abs(rgba[:, :3] - lin).max() <= 0.5 / 255 + 1e-9
    assert np.abs(rgba[:, 3] - sigmoid(s["opacities"])).max() <= 0.5 / 255 + 1e-9


def test_splat_transform_file_reads_as_its_source_ply():
    """tests/data/glb: `splat-transform -w splat_transform_source.ply splat_transform_3.7.0.glb`
    (@playcanvas/splat-transform 3.7.0, which writes the glTF y-up frame too)."""
    src = ply_mod.read_ply(DATA / "splat_transform_source.ply")
    r = read_glb(DATA / "splat_transform_3.7.0.glb")
    for k in ("means", "quats", "sh0", "shN"):  # splat-transform stores these as they are (quats unnormalised)
        assert torch.equal(r[k], src[k]), k
    assert src["shN"].shape[1] == 15
    assert float((r["scales"] - src["scales"]).abs().max()) <= 2e-7
    assert np.abs(sigmoid(r["opacities"]) - sigmoid(src["opacities"])).max() <= 1.2e-7


# ---------------------------------------------------------------------------
# files written by others: quantised types, interleaving, nodes, older drafts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["short", "byte"])
def test_quantised_and_interleaved_attributes(tmp_path, variant):
    rng = np.random.default_rng(5)
    n = 7
    pos = rng.normal(size=(n, 3)).astype("<f4")
    b = Builder()
    if variant == "short":
        # POSITION and SCALE (float) and OPACITY (normalized u16) interleaved, 28-byte stride
        lin_scale = rng.uniform(0.01, 2.0, size=(n, 3)).astype("<f4")
        op_raw = rng.integers(1, 65535, size=n).astype("<u2")
        rec = np.zeros(n, dtype=[("p", "<f4", 3), ("s", "<f4", 3), ("o", "<u2"), ("pad", "u1", 2)])
        rec["p"], rec["s"], rec["o"] = pos, lin_scale, op_raw
        v = b.view(rec.tobytes(), stride=28)
        a_pos, a_scale = b.accessor(v, 5126, "VEC3", n), b.accessor(v, 5126, "VEC3", n, offset=12)
        a_op = b.accessor(v, 5123, "SCALAR", n, offset=24, normalized=True)
        rot_raw = rng.integers(-32767, 32768, size=(n, 4)).astype("<i2")
        rot_raw[0] = (0, 0, 0, -32768)  # -32768 normalises to -1 (clamped)
        a_rot = b.accessor(b.view(b"\0" * 8 + rot_raw.tobytes()), 5122, "VEC4", n, offset=8, normalized=True)
        rot = np.maximum(rot_raw / 32767.0, -1.0)
        opacity = op_raw / 65535.0
        scale = lin_scale.astype(np.float64)
    else:
        a_pos = b.accessor(b.view(pos.tobytes()), 5126, "VEC3", n)
        scale_raw = rng.integers(1, 256, size=(n, 3)).astype("u1")  # unnormalized unsigned byte
        a_scale = b.accessor(b.view(scale_raw.tobytes()), 5121, "VEC3", n)
        op_raw = rng.integers(0, 256, size=n).astype("u1")
        a_op = b.accessor(b.view(op_raw.tobytes()), 5121, "SCALAR", n, normalized=True)
        rot_raw = rng.integers(-127, 128, size=(n, 4)).astype("i1")
        a_rot = b.accessor(b.view(rot_raw.tobytes()), 5120, "VEC4", n, normalized=True)
        rot = rot_raw / 127.0
        opacity = op_raw / 255.0
        scale = scale_raw.astype(np.float64)
    sh0 = rng.normal(size=(n, 3)).astype("<f4")
    a_sh0 = b.accessor(b.view(b"\0" * 12 + sh0.tobytes()), 5126, "VEC3", n, offset=12)
    path = tmp_path / f"{variant}.glb"
    path.write_bytes(b.glb({"POSITION": a_pos, P + "ROTATION": a_rot, P + "SCALE": a_scale,
                            P + "OPACITY": a_op, P + "SH_DEGREE_0_COEF_0": a_sh0}))
    r = read_glb(path)
    np.testing.assert_array_equal(r["means"].numpy(), pos @ F.astype("<f4"))
    np.testing.assert_allclose(r["scales"].double().numpy(), np.log(scale), atol=2e-7)
    p = np.clip(opacity, 2.0 ** -126, 1 - 2.0 ** -24)
    np.testing.assert_allclose(sigmoid(r["opacities"]), p, atol=1e-7)
    np.testing.assert_array_equal(r["sh0"].numpy()[:, 0], sh0)
    assert r["shN"].shape == (n, 0, 3)
    # the file's (x, y, z, w) rotation, turned into the model frame
    got = rotmat_wxyz(r["quats"].numpy())
    np.testing.assert_allclose(got, F @ Rotation.from_quat(rot).as_matrix(), atol=1e-6)
    if variant == "short":  # (0, 0, 0, -32768) is (0, 0, 0, -1) in the file, (0, 0, 0, 1) = k^-1 (x) that here
        assert r["quats"][0].tolist() == [0.0, 0.0, 0.0, 1.0]


def with_nodes(nodes):
    def fn(doc, binary):
        doc["nodes"] = nodes
        doc["scenes"] = [{"nodes": [0]}]
    return fn


def test_node_transforms_are_applied(tmp_path):
    s = make_splats(20, 3, seed=4)
    src = write_glb(tmp_path / "src.glb", s)
    rq = Rotation.from_euler("xyz", [30, -50, 120], degrees=True)
    t = np.array([1.5, -2.0, 0.25])
    rot = rq.as_matrix()
    d = unit_dirs()

    def expected_means(lin):
        return ((s["means"].double().numpy() @ F) @ lin.T + t) @ F

    base = read_glb(src)

    def check(r, lin, polar=rot):
        np.testing.assert_allclose(r["means"].double().numpy(), expected_means(lin), atol=2e-5)
        want_cov = F @ lin @ F @ covariances(s) @ F @ lin.T @ F
        err = np.abs(covariances(r) - want_cov).max(axis=(1, 2)) / np.abs(want_cov).max(axis=(1, 2))
        assert err.max() <= 2e-5, err.max()
        assert torch.equal(r["sh0"], base["sh0"]) and torch.equal(r["opacities"], base["opacities"])
        # view-dependent colour: the node's rotation turns the colour field with the Gaussians
        back = d @ (F @ polar @ F)  # rows: (F R^T F) d, R the rotation (or reflection) part of the node
        np.testing.assert_allclose(model_view_colour(r["shN"].numpy(), d),
                                   model_view_colour(s["shN"].numpy(), back), atol=2e-5)

    # translation, rotation and uniform scale (TRS), under a parent node with a matrix
    lin = rot * 1.7
    parent = np.eye(4)
    parent[:3, 3] = t
    nodes = [{"matrix": parent.T.reshape(-1).tolist(), "children": [1]},
             {"mesh": 0, "rotation": rq.as_quat().tolist(), "scale": [1.7, 1.7, 1.7]}]
    check(read_glb(edit_glb(src, tmp_path / "trs.glb", with_nodes(nodes))), lin)

    # non-uniform scale: the covariance is re-diagonalised
    nodes = [{"mesh": 0, "translation": t.tolist(), "rotation": rq.as_quat().tolist(), "scale": [0.5, 2.0, 1.25]}]
    check(read_glb(edit_glb(src, tmp_path / "aniso.glb", with_nodes(nodes))), rot @ np.diag([0.5, 2.0, 1.25]))

    # a mirroring matrix (undefined for renderers, read consistently here): the SH reflect with it
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = -0.8 * rot, t
    nodes = [{"mesh": 0, "matrix": m.T.reshape(-1).tolist()}]
    check(read_glb(edit_glb(src, tmp_path / "mirror.glb", with_nodes(nodes))), -0.8 * rot, -rot)

    # two instances of the mesh: both are read
    def two(doc, binary):
        doc["nodes"] = [{"mesh": 0}, {"mesh": 0, "translation": [0.0, 10.0, 0.0]}]
        doc["scenes"] = [{"nodes": [0, 1]}]
    r = read_glb(edit_glb(src, tmp_path / "two.glb", two))
    assert r["means"].shape == (40, 3)
    assert torch.equal(r["means"][:20], s["means"])
    for k in ("quats", "scales", "opacities", "sh0", "shN"):  # a translation leaves them bit-exact
        assert torch.equal(r[k][20:], base[k]) and torch.equal(r[k][:20], base[k]), k
    np.testing.assert_allclose(r["means"][20:].numpy(), (s["means"] + torch.tensor([0.0, -10.0, 0.0])).numpy(),
                               atol=1e-5)


def test_older_drafts_are_read(tmp_path):
    s = make_splats(30, 1, seed=9)
    src = write_glb(tmp_path / "src.glb", s)

    # 2024-25 drafts: _ROTATION/_SCALE, colour and opacity only in COLOR_0 (display values)
    def legacy(doc, binary):
        attrs = doc["meshes"][0]["primitives"][0]["attributes"]
        attrs["_ROTATION"] = attrs.pop(P + "ROTATION")
        attrs["_SCALE"] = attrs.pop(P + "SCALE")
        del attrs[P + "OPACITY"], attrs[P + "SH_DEGREE_0_COEF_0"]
        rgb = np.clip(np.floor((0.5 + C0 * s["sh0"].double().numpy()[:, 0]) * 255 + 0.5), 0, 255)
        a = np.floor(sigmoid(s["opacities"]) * 255 + 0.5)
        off = attr_offset(doc, "COLOR_0")
        binary[off: off + 4 * 30] = np.concatenate([rgb, a[:, None]], 1).astype("u1").tobytes()

    with pytest.warns(UserWarning, match="COLOR_0"):
        r = read_glb(edit_glb(src, tmp_path / "legacy.glb", legacy))
    assert torch.equal(r["means"], s["means"]) and torch.equal(r["shN"], s["shN"])
    assert np.abs(sigmoid(r["opacities"]) - sigmoid(s["opacities"])).max() <= 0.5 / 255 + 1e-6
    colour = 0.5 + C0 * r["sh0"].double()
    want = (0.5 + C0 * s["sh0"].double()).clamp(0, 1)
    assert float((colour - want).abs().max()) <= 0.5 / 255 + 1e-6

    # Dec 2025 - Apr 2026 text: SCALE in log space (recognised by its negative values)
    def log_scale(doc, binary):
        off = attr_offset(doc, P + "SCALE")
        binary[off: off + 12 * 30] = (s["scales"].numpy().astype("<f4")).tobytes()

    with pytest.warns(UserWarning, match="log scales"):
        r = read_glb(edit_glb(src, tmp_path / "log.glb", log_scale))
    assert torch.equal(r["scales"], s["scales"])


def test_gltf_json_with_data_uri_and_external_buffer(tmp_path):
    s = make_splats(10, 2, seed=2)
    doc, binary = split_glb(write_glb(tmp_path / "a.glb", s).read_bytes())
    want = read_glb(tmp_path / "a.glb")
    doc["buffers"][0]["uri"] = "data:application/octet-stream;base64," + base64.b64encode(bytes(binary)).decode()
    (tmp_path / "embedded.gltf").write_text(json.dumps(doc))
    (tmp_path / "my data.bin").write_bytes(bytes(binary))
    doc["buffers"][0]["uri"] = "my%20data.bin"
    (tmp_path / "external.gltf").write_text(json.dumps(doc))
    for name in ("embedded.gltf", "external.gltf"):
        r = read_glb(tmp_path / name)
        assert all(torch.equal(r[k], want[k]) for k in want), name
    (tmp_path / "my data.bin").unlink()
    with pytest.raises(FormatError, match="my data.bin.*no such file") as e:
        read_glb(tmp_path / "external.gltf")
    assert "external.gltf" in str(e.value)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def _attrs(doc):
    return doc["meshes"][0]["primitives"][0]["attributes"]


def _acc(doc, name):
    return doc["accessors"][_attrs(doc)[name]]


def _set_float(name, value):
    def fn(doc, binary):
        off = attr_offset(doc, name)
        binary[off: off + 4] = struct.pack("<f", value)
    return fn


BAD_EDITS = {
    "missing_attribute": (lambda d, b: _attrs(d).pop(P + "SCALE"), "missing attribute 'KHR_gaussian_splatting:SCALE'"),
    "accessor_out_of_range": (lambda d, b: _acc(d, P + "OPACITY").update(count=10_000), "out of range"),
    "view_out_of_range": (lambda d, b: d["bufferViews"][_attrs(d)[P + "ROTATION"]].update(byteLength=10 ** 6),
                          "out of range of buffer"),
    "count_mismatch": (lambda d, b: _acc(d, P + "OPACITY").update(count=5), "has 5 elements, POSITION has 6"),
    "no_splat_primitive": (lambda d, b: d["meshes"][0]["primitives"][0].pop("extensions"),
                           "no mesh primitive uses the KHR_gaussian_splatting"),
    "triangles": (lambda d, b: d["meshes"][0]["primitives"][0].update(mode=4), "must be POINTS"),
    "component_type": (lambda d, b: _acc(d, P + "SCALE").update(componentType=5125), "unsupported componentType"),
    "accessor_type": (lambda d, b: _acc(d, P + "SCALE").update(type="VEC4"), "type 'VEC4', expected VEC3"),
    "partial_sh": (lambda d, b: _attrs(d).pop(P + "SH_DEGREE_1_COEF_1"), "only partly defined"),
    "non_finite": (_set_float("POSITION", float("nan")), "non-finite"),
    "opacity_range": (_set_float(P + "OPACITY", 1.5), r"outside \[0, 1\]"),
    "compressed": (lambda d, b: d.update(extensionsRequired=["KHR_gaussian_splatting_compression_spz_2"]),
                   "requires glTF extension"),
    "bad_index": (lambda d, b: _attrs(d).update({P + "ROTATION": 99}), r"accessors\[99\] does not exist"),
    "sparse": (lambda d, b: _acc(d, "POSITION").update(sparse={"count": 1}), "sparse accessors"),
    "url_buffer": (lambda d, b: d["buffers"][0].update(uri="https://example.com/x.bin"), "external URL"),
    "compressed_primitive": (lambda d, b: (_attrs(d).pop(P + "ROTATION"), d["meshes"][0]["primitives"][0][
        "extensions"][KHR].update(extensions={"KHR_gaussian_splatting_compression_spz_2": {"bufferView": 0}})),
        "compressed with KHR_gaussian_splatting_compression_spz_2"),
}


@pytest.mark.parametrize("case", sorted(BAD_EDITS))
def test_bad_json_content(tmp_path, case):
    fn, msg = BAD_EDITS[case]
    src = write_glb(tmp_path / "ok.glb", make_splats(6, 1, seed=1))
    bad = edit_glb(src, tmp_path / f"{case}.glb", fn)
    with pytest.raises(FormatError, match=msg) as e:
        read_glb(bad)
    assert str(bad) in str(e.value)


def _container_cases(data: bytes):
    jlen = struct.unpack_from("<I", data, 12)[0]
    garbage = b"{not json".ljust(jlen, b" ")
    return {
        "truncated": (data[: len(data) // 2], "truncated"),
        "header_only": (data[:12], "truncated"),
        "short": (data[:7], "truncated"),
        "wrong_magic": (b"glTX" + data[4:], "not a glTF binary"),
        "version_1": (data[:4] + struct.pack("<I", 1) + data[8:], "container version 1"),
        "json_garbage": (data[:20] + garbage + data[20 + jlen:], "not valid JSON"),
        "json_not_utf8": (data[:20] + b"\xff" * jlen + data[20 + jlen:], "not UTF-8"),
        "json_array": (data[:20] + b"[]".ljust(jlen, b" ") + data[20 + jlen:], "not a glTF object"),
        "trailing": (data + b"\0" * 8, "unexpected bytes"),
        "chunk_past_end": (data[:12] + struct.pack("<I", 10 ** 6) + data[16:], "truncated"),
        "no_bin_chunk": (struct.pack("<4sII", b"glTF", 2, 20 + jlen) + data[12: 20 + jlen], "no BIN chunk"),
        "text": (b"hello world, not a model", "not a glTF binary"),
    }


@pytest.mark.parametrize("case", sorted(_container_cases(b"glTF" + b"\0" * 16)))
def test_bad_containers(tmp_path, case):
    data = write_glb(tmp_path / "ok.glb", make_splats(6, 0, seed=1)).read_bytes()
    raw, msg = _container_cases(data)[case]
    bad = tmp_path / f"{case}.glb"
    bad.write_bytes(raw)
    with pytest.raises(FormatError, match=msg) as e:
        read_glb(bad)
    assert str(bad) in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        read_glb(tmp_path / "nope.glb")
    (tmp_path / "empty.glb").write_bytes(b"")
    with pytest.raises(FormatError, match="empty") as e:
        read_glb(tmp_path / "empty.glb")
    assert "empty.glb" in str(e.value)


def no_temp_files(d: Path):
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("bad", ["nan_mean", "huge_scale", "empty", "missing_key"])
def test_failed_write_leaves_nothing(tmp_path, bad):
    s = make_splats(5, 1)
    if bad == "nan_mean":
        s["means"][2, 1] = float("nan")
    elif bad == "huge_scale":
        s["scales"][3, 0] = 100.0
    elif bad == "empty":
        s = {k: v[:0] for k, v in s.items()}
    else:
        del s["opacities"]
    out = tmp_path / "out.glb"
    with pytest.raises(FormatError) as e:
        write_glb(out, s)
    assert str(out) in str(e.value)
    assert not out.exists() and no_temp_files(tmp_path)
    # an existing file is left untouched
    write_glb(out, make_splats(3, 0))
    before = out.read_bytes()
    with pytest.raises(FormatError):
        write_glb(out, s)
    assert out.read_bytes() == before and no_temp_files(tmp_path)


def test_failure_during_rename_keeps_old_file(tmp_path, monkeypatch):
    out = write_glb(tmp_path / "m.glb", make_splats(3, 0))
    before = out.read_bytes()

    def boom(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_glb(out, make_splats(4, 2))
    assert out.read_bytes() == before and no_temp_files(tmp_path)


def test_no_warnings_for_a_clean_file(tmp_path):
    path = write_glb(tmp_path / "c.glb", make_splats(8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_glb(path)


def test_node_numbers_beyond_float64_are_format_errors(tmp_path):
    """An integer too large for a float in a node transform: FormatError naming the file, not OverflowError."""
    src = write_glb(tmp_path / "src.glb", make_splats(5, 0))
    for key, value in (("translation", [10 ** 400, 0, 0]), ("scale", [1, 1, -10 ** 400])):
        p = edit_glb(src, tmp_path / f"{key}.glb", with_nodes([{"mesh": 0, key: value}]))
        with pytest.raises(FormatError, match="not finite") as e:
            read_glb(p)
        assert str(p) in str(e.value)
