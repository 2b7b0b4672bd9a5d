"""Inputs that broke peer tools (gsplat, 3DGS, OpenSplat, brush, nerfstudio, SuperSplat, the spz/splat
viewers), one test per kind of fault, each asserting the right value. Every input is built here."""
from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import splat
import splat.io as sio
from splat.io import FormatError
from scene_utils import cameras as make_cameras

GAUSSIAN_PROPS = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                  "rot_0", "rot_1", "rot_2", "rot_3"]


def ply_bytes(rows: np.ndarray, props=GAUSSIAN_PROPS, types=None, extra_uchar=(), extra_values=None) -> bytes:
    """A binary little-endian .ply, one vertex per row of `rows` ([N, len(props)])."""
    types = types or ["float"] * len(props)
    head = ["ply", "format binary_little_endian 1.0", f"element vertex {len(rows)}"]
    head += [f"property {t} {p}" for t, p in zip(types, props)]
    head += [f"property uchar {p}" for p in extra_uchar]
    head += ["end_header", ""]
    np_types = {"float": "<f4", "double": "<f8", "ushort": "<u2", "short": "<i2", "uchar": "u1"}
    dt = np.dtype([(p, np_types[t]) for t, p in zip(types, props)] + [(p, "u1") for p in extra_uchar])
    rec = np.zeros(len(rows), dt)
    for j, p in enumerate(props):
        rec[p] = rows[:, j]
    for j, p in enumerate(extra_uchar):
        rec[p] = extra_values[:, j] if extra_values is not None else 7
    return "\n".join(head).encode() + rec.tobytes()


def gaussian_rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, 14), np.float32)
    rows[:, 0:3] = rng.uniform(-1, 1, (n, 3))
    rows[:, 3:6] = rng.uniform(-1, 1, (n, 3))
    rows[:, 6] = rng.uniform(-2, 2, n)
    rows[:, 7:10] = rng.uniform(-4, -2, (n, 3))
    rows[:, 10:14] = rng.normal(size=(n, 4))
    return rows


# ------------------------------------------------------------------ 1. model files with degenerate content


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ply_with_one_gaussian_and_extra_uchar_properties(tmp_path, n):
    rows = gaussian_rows(n)
    p = tmp_path / "one.ply"
    p.write_bytes(ply_bytes(rows, extra_uchar=("red", "green", "blue")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable tensor" warning either
        s = sio.load(p)
    assert s["means"].shape == (n, 3)
    np.testing.assert_array_equal(s["means"].numpy(), rows[:, 0:3])
    np.testing.assert_array_equal(s["quats"].numpy(), rows[:, 10:14])
    np.testing.assert_array_equal(s["opacities"].numpy(), rows[:, 6])
    for v in s.values():
        v.add_(0.0)  # writable, own memory
    # and splat-export converts it
    from splat.io.export import main as export_main

    assert export_main([str(p), str(tmp_path / "one.splat")]) == 0
    assert sio.load(tmp_path / "one.splat")["means"].shape == (n, 3)


def test_zero_quaternions_in_a_ply_load_as_identity_with_a_warning_naming_file_and_index(tmp_path):
    rows = gaussian_rows(6)
    rows[[2, 4], 10:14] = 0.0
    p = tmp_path / "zq.ply"
    p.write_bytes(ply_bytes(rows))
    with pytest.warns(UserWarning, match=r"zq\.ply: 2 Gaussians have a zero \(degenerate\) quaternion, first at index 2"):
        s = sio.load(p)
    q = s["quats"].numpy()
    np.testing.assert_array_equal(q[[2, 4]], [[1, 0, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(q[[0, 1, 3, 5]], rows[[0, 1, 3, 5], 10:14])


@pytest.mark.parametrize("fmt", sio.FORMATS)
def test_zero_quaternions_are_written_as_identity_by_every_writer(tmp_path, fmt):
    from test_io import make_splats

    s = make_splats(n=30, degree=1)
    s["quats"][[3, 7]] = 0.0
    out = tmp_path / f"m.{ {'compressed_ply': 'compressed.ply'}.get(fmt, fmt)}"
    sio.save(out, s, format=fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing degenerate comes back
        back = sio.load(out)
    q = back["quats"] / back["quats"].norm(dim=1, keepdim=True)
    where = torch.cdist(s["means"][[3, 7]], back["means"]).argmin(1)  # compressed .ply reorders (Morton)
    torch.testing.assert_close(q[where].abs(), torch.tensor([[1.0, 0, 0, 0]] * 2), atol=3e-3, rtol=0)


def _zero_quat_scene():
    torch.manual_seed(0)
    N = 24
    means = torch.randn(N, 3) * 0.6
    quats = torch.randn(N, 4)
    quats[:6] = 0.0
    quats[6] = 1e-14  # below the 1e-12 norm threshold too
    scales = torch.rand(N, 3) * 0.3 + 0.05
    opac = torch.rand(N) * 0.9 + 0.05
    cols = torch.rand(N, 3)
    return means, quats, scales, opac, cols


def test_zero_quaternions_render_as_identity_on_every_backend(any_backend):
    means, quats, scales, opac, cols = _zero_quat_scene()
    viewmats, Ks = make_cameras(2, width=40, height=32)
    ident = quats.clone()
    ident[:7] = torch.tensor([1.0, 0, 0, 0])
    ps = [t.clone().requires_grad_() for t in (means, quats, scales, opac, cols)]
    c, a, info = splat.rasterize(*ps, viewmats, Ks, 40, 32, backend=any_backend)
    ref, ref_a, ref_info = splat.rasterize(means, ident, scales, opac, cols, viewmats, Ks, 40, 32,
                                           backend="torch")
    torch.testing.assert_close(c, ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(a, ref_a, atol=2e-5, rtol=0)
    assert (info["radii"] >= 0).all()
    torch.testing.assert_close(info["radii"].long(), ref_info["radii"].long())
    (c.square().sum() + a.sum()).backward()
    for p in ps:
        assert torch.isfinite(p.grad).all()
    assert (ps[1].grad[:7] == 0).all()  # the identity does not depend on a degenerate quaternion
    assert (ps[1].grad[7:].abs().sum(1) > 0).any()


def test_viewer_covariances_of_zero_quaternions_are_finite():
    from splat.backends.torch_ref import quat_scale_to_covar

    q = torch.zeros(3, 4, dtype=torch.float64)
    s = torch.tensor([[1.0, 2.0, 3.0]] * 3, dtype=torch.float64)
    torch.testing.assert_close(quat_scale_to_covar(q, s), torch.diag_embed(s * s))


def test_integer_typed_gaussian_properties_are_refused_with_the_reason(tmp_path):
    rows = gaussian_rows(4)
    half = rows.astype(np.float16).view(np.uint16).astype(np.float64)  # half-float bit patterns
    types = ["ushort"] * 3 + ["float"] * 11
    p = tmp_path / "half.ply"
    mixed = rows.astype(np.float64).copy()
    mixed[:, :3] = half[:, :3]
    p.write_bytes(ply_bytes(mixed, types=types))
    with pytest.raises(FormatError, match=r"half\.ply: Gaussian properties \['x', 'y', 'z'\] are stored as integers "
                                          r"\(ushort\).*half-float"):
        sio.load(p)
    # extra integer properties are still fine
    p2 = tmp_path / "extra.ply"
    p2.write_bytes(ply_bytes(rows, extra_uchar=("red",)))
    np.testing.assert_array_equal(sio.load(p2)["means"].numpy(), rows[:, :3])
    # and double-typed Gaussian properties are read exactly
    p3 = tmp_path / "double.ply"
    p3.write_bytes(ply_bytes(rows.astype(np.float64), types=["double"] * 14))
    np.testing.assert_array_equal(sio.load(p3)["scales"].numpy(), rows[:, 7:10])


# ------------------------------------------------------------------ 2. dataset content

pycolmap = pytest.importorskip("pycolmap")


def _colmap_with_nan_points(root: Path, binary: bool):
    from test_data import make_colmap

    rec, truth, pts, cols, _ = make_colmap(root, n_images=6, binary=True, n_points=20)
    bad = [2, 5, 11]
    for j, pid in enumerate(sorted(rec.points3D.keys())):
        if j in bad:
            rec.points3D[pid].xyz = np.array([np.nan, 0.0, np.inf][j % 3:] + [np.nan, 0.0, np.inf][:j % 3])
    d = root / "sparse/0"
    for f in d.iterdir():
        f.unlink()
    if binary:
        rec.write_binary(str(d))
    else:
        rec.write_text(str(d))
        text = (d / "points3D.txt").read_text()
        assert "nan" in text
    return pts, cols, bad


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_nan_points_are_dropped_with_a_warning_naming_the_file(tmp_path, binary):
    from splat.data import load_dataset

    pts, cols, bad = _colmap_with_nan_points(tmp_path, binary)
    name = "points3D.bin" if binary else "points3D.txt"
    with pytest.warns(UserWarning, match=rf"sparse/0/{name}: dropped 3 of 20 points with NaN/Inf"):
        ds = load_dataset(tmp_path, normalize=False)
    keep = [i for i in range(20) if i not in bad]
    np.testing.assert_allclose(ds.points, pts[keep], atol=1e-6)
    np.testing.assert_array_equal(ds.points_rgb, cols[keep])
    assert np.isfinite(ds.points).all()


def test_ply_point_clouds_with_nan_points_are_dropped_too(tmp_path):
    from test_data import write_ply

    from splat.data.common import read_ply_points

    xyz = np.random.default_rng(0).normal(size=(10, 3))
    xyz[[1, 7], 2] = np.nan
    write_ply(tmp_path / "p.ply", xyz, np.full((10, 3), 9, np.uint8))
    with pytest.warns(UserWarning, match=r"p\.ply: dropped 2 of 10 points with NaN/Inf"):
        got, rgb = read_ply_points(tmp_path / "p.ply")
    np.testing.assert_allclose(got, np.delete(xyz, [1, 7], 0), atol=1e-6)
    assert len(rgb) == 8


def test_colmap_text_image_names_with_spaces(tmp_path):
    from test_data import make_colmap, pattern, save_png

    from splat.data import load_dataset

    make_colmap(tmp_path, n_images=5, binary=False)
    d = tmp_path / "sparse/0"
    text = (d / "images.txt").read_text()
    for i in range(5):
        old = f"img_{i:03d}.png"
        new = f"my photo {i:03d}.png"
        text = text.replace(f" {old}\n", f" {new}\n")
        (tmp_path / "images" / old).rename(tmp_path / "images" / new)
    (d / "images.txt").write_text(text)
    ds = load_dataset(tmp_path, test_every=0)
    assert sorted(ds.train.names) == [f"my photo {i:03d}.png" for i in range(5)]
    # the binary model of the same scene gives the same cameras
    rec = pycolmap.Reconstruction(str(d))
    assert {im.name for im in rec.images.values()} == {"my"}  # pycolmap alone cuts the name
    del save_png, pattern


def test_colmap_binary_counts_checked_against_the_size(tmp_path):
    from test_data import make_colmap

    from splat.data import DatasetError, load_dataset

    make_colmap(tmp_path, n_images=4)
    p = tmp_path / "sparse/0/images.bin"
    good = p.read_bytes()
    p.write_bytes(struct.pack("<Q", 1 << 62) + good[8:])
    with pytest.raises(DatasetError, match=r"images\.bin: claims 4611686018427387904 images"):
        load_dataset(tmp_path)
    p.write_bytes(good[:-5])
    with pytest.raises(DatasetError, match=r"images\.bin: truncated"):
        load_dataset(tmp_path)
    p.write_bytes(good + b"\0\0")
    with pytest.raises(DatasetError, match=r"images\.bin: 2 unexpected bytes after the last record"):
        load_dataset(tmp_path)
    p.write_bytes(good)
    q = tmp_path / "sparse/0/points3D.bin"
    pts = bytearray(q.read_bytes())
    struct.pack_into("<Q", pts, 8 + 43, 1 << 40)  # the first point's track length
    q.write_bytes(bytes(pts))
    with pytest.raises(DatasetError, match=r"points3D\.bin: 3D point 0 claims a track of 1099511627776"):
        load_dataset(tmp_path)
