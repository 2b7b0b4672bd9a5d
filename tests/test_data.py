"""splat.data: COLMAP, Blender (NeRF-synthetic) and nerfstudio loaders. Every test writes its own
small dataset into tmp_path."""
from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splat.data import DatasetError, detect_format, load_dataset
from splat.data.common import read_image, read_ply_points
from splat.data.distortion import Distortion
from scene_utils import blender_c2w

try:
    import pycolmap
except ImportError:  # the COLMAP loader needs it; the other loaders do not
    pycolmap = None
needs_pycolmap = pytest.mark.skipif(pycolmap is None, reason="pycolmap is not installed")


# ----------------------------------------------------------------------------------------------
# helpers


def look_at_viewmat(centre, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV world->camera matrix of a camera at ``centre`` looking at ``target``."""
    c = np.asarray(centre, float)
    f = np.asarray(target, float) - c
    f /= np.linalg.norm(f)
    x = np.cross(f, up)
    x /= np.linalg.norm(x)
    y = np.cross(f, x)
    R = np.stack([x, y, f])
    V = np.eye(4)
    V[:3, :3] = R
    V[:3, 3] = -R @ c
    return V


def project(viewmat, K, pts):
    pc = pts @ viewmat[:3, :3].T + viewmat[:3, 3]
    uv = pc @ K.T
    return uv[:, :2] / uv[:, 2:3], pc[:, 2]


def pattern(h, w, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def save_png(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def render_blobs(w, h, uv, sigma=1.3):
    """Gaussian blobs (peak 250) at pixel positions ``uv`` (corner convention)."""
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    img = np.zeros((h, w))
    for u, v in uv:
        img += 250.0 * np.exp(-((jj - u) ** 2 + (ii - v) ** 2) / (2 * sigma**2))
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2)


def blob_centroid(img, u, v, r=5):
    g = img[..., 0].astype(np.float64)
    i0, j0 = int(v), int(u)
    ii, jj = np.mgrid[i0 - r : i0 + r + 1, j0 - r : j0 + r + 1]
    wgt = g[ii, jj]
    return (np.sum(wgt * (jj + 0.5)) / wgt.sum(), np.sum(wgt * (ii + 0.5)) / wgt.sum())


def blob_points(n_side=5, z=3.0, spread=0.9):
    """A grid of 3D points in front of an identity camera."""
    s = np.linspace(-spread, spread, n_side)
    X, Y = np.meshgrid(s * z * 0.8, s * z * 0.6)
    return np.stack([X.ravel(), Y.ravel(), np.full(X.size, z)], 1)


def check_blobs_at_pinhole(img, K, pts, margin=7, tol=0.25, min_count=9):
    uv, _ = project(np.eye(4), K, pts)
    h, w = img.shape[:2]
    inside = (uv[:, 0] > margin) & (uv[:, 0] < w - margin) & (uv[:, 1] > margin) & (uv[:, 1] < h - margin)
    assert inside.sum() >= min_count, inside.sum()
    errs = [np.hypot(*(np.array(blob_centroid(img, u, v)) - (u, v))) for u, v in uv[inside]]
    assert max(errs) < tol, (max(errs), errs)


def write_png16(path: Path, arr: np.ndarray):
    """A 16-bit PNG (PIL cannot write 16-bit colour PNGs)."""
    h, w = arr.shape[:2]
    ch = 1 if arr.ndim == 2 else arr.shape[2]
    ct = {1: 0, 2: 4, 3: 2, 4: 6}[ch]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ct, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def write_ply(path: Path, xyz, rgb, binary=True):
    n = len(xyz)
    header = (
        "ply\nformat {} 1.0\ncomment test\nelement vertex {}\nproperty float x\nproperty float y\nproperty float z\n"
        "property float nx\nproperty float ny\nproperty float nz\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    ).format("binary_little_endian" if binary else "ascii", n)
    if binary:
        dt = np.dtype([(c, "<f4") for c in ("x", "y", "z", "nx", "ny", "nz")] + [(c, "u1") for c in ("red", "green", "blue")])
        rec = np.zeros(n, dt)
        for i, c in enumerate("xyz"):
            rec[c] = xyz[:, i]
        for i, c in enumerate(("red", "green", "blue")):
            rec[c] = rgb[:, i]
        path.write_bytes(header.encode() + rec.tobytes())
    else:
        lines = [f"{x:.7g} {y:.7g} {z:.7g} 0 0 0 {r} {g} {b}" for (x, y, z), (r, g, b) in zip(xyz, rgb)]
        path.write_text(header + "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# COLMAP

COLMAP_PARAMS = {
    "SIMPLE_PINHOLE": [60.0, 32.0, 24.0],
    "PINHOLE": [62.0, 58.0, 31.0, 25.0],
    "SIMPLE_RADIAL": [110.0, 80.0, 60.0, -0.15],
    "RADIAL": [110.0, 80.0, 60.0, -0.12, 0.03],
    "OPENCV": [112.0, 108.0, 79.0, 61.0, -0.14, 0.02, 0.002, -0.003],
    "FULL_OPENCV": [112.0, 108.0, 79.0, 61.0, -0.1, 0.02, 0.001, -0.002, 0.001, 0.05, 0.01, 0.002],
    "OPENCV_FISHEYE": [100.0, 98.0, 80.0, 60.0, 0.05, -0.01, 0.002, 0.0],
    "SIMPLE_RADIAL_FISHEYE": [100.0, 80.0, 60.0, 0.04],
    "RADIAL_FISHEYE": [100.0, 80.0, 60.0, 0.04, -0.01],
    "FISHEYE": [100.0, 98.0, 80.0, 60.0],
    "SIMPLE_FISHEYE": [100.0, 80.0, 60.0],
}


def make_colmap(
    root: Path,
    cameras=(("PINHOLE", 64, 48),),
    n_images=10,
    binary=True,
    sparse="sparse/0",
    images=True,
    n_points=20,
    seed=0,
):
    """A reconstruction with cameras of the given models (cycled over images), images on a circle looking
    at the origin, random points; returns (reconstruction, {name: (viewmat, camera)}, points, colours, pixels)."""
    rng = np.random.default_rng(seed)
    rec = pycolmap.Reconstruction()
    cams = []
    for cid, (model, w, h) in enumerate(cameras, start=1):
        params = COLMAP_PARAMS[model] if model in COLMAP_PARAMS else None
        if params is None:
            cam = pycolmap.Camera.create_from_model_id(cid, getattr(pycolmap.CameraModelId, model), 50.0, w, h)
        else:
            cam = pycolmap.Camera(camera_id=cid, model=model, width=w, height=h, params=params)
        rec.add_camera_with_trivial_rig(cam)
        cams.append(cam)
    truth = {}
    pixels = {}
    for i in range(n_images):
        ang = 2 * math.pi * i / n_images
        centre = np.array([4 * math.cos(ang), 4 * math.sin(ang), 1.0 + 0.2 * math.sin(3 * ang)])
        V = look_at_viewmat(centre, target=rng.normal(0, 0.1, 3))
        name = f"img_{(i * 7) % n_images:03d}.png"  # registration order differs from name order
        cam = cams[i % len(cams)]
        im = pycolmap.Image(name=name, camera_id=cam.camera_id, image_id=i + 1)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(V[:3, :3]), V[:3, 3])
        rec.add_image_with_trivial_frame(im, pose)
        truth[name] = (V, cam)
        if images:
            arr = pattern(cam.height, cam.width, seed=i)
            save_png(root / "images" / name, arr)
            pixels[name] = arr
    pts = rng.uniform(-1, 1, size=(n_points, 3))
    cols = rng.integers(0, 256, size=(n_points, 3), dtype=np.uint8)
    for p, c in zip(pts, cols):
        rec.add_point3D(p, pycolmap.Track(), c)
    d = root / sparse
    d.mkdir(parents=True, exist_ok=True)
    (rec.write_binary if binary else rec.write_text)(str(d))
    return rec, truth, pts, cols, pixels


@needs_pycolmap
@pytest.mark.parametrize("binary", [True, False])
def test_colmap_pinhole_cameras_points_split(tmp_path, binary):
    _, truth, pts, cols, pixels = make_colmap(
        tmp_path, cameras=(("SIMPLE_PINHOLE", 64, 48), ("PINHOLE", 64, 48)), n_images=17, binary=binary
    )
    assert detect_format(tmp_path) == "colmap"
    ds = load_dataset(tmp_path, normalize=False)
    assert ds.format == "colmap" and ds.points_random is False
    names = sorted(truth)
    assert ds.test.names == [names[i] for i in (0, 8, 16)]
    assert ds.train.names == [n for i, n in enumerate(names) if i % 8 != 0]
    for split in (ds.train, ds.test):
        assert split.viewmats.dtype == np.float32 and split.Ks.dtype == np.float32
        for i, name in enumerate(split.names):
            V, cam = truth[name]
            np.testing.assert_allclose(split.viewmats[i], V, atol=1e-5)
            np.testing.assert_allclose(split.Ks[i], cam.calibration_matrix(), atol=1e-5)
            assert (split.widths[i], split.heights[i]) == (64, 48)
            np.testing.assert_array_equal(split.images[i], pixels[name])
    np.testing.assert_allclose(ds.points, pts, atol=1e-6)
    np.testing.assert_array_equal(ds.points_rgb, cols)
    np.testing.assert_allclose(ds.transform, np.eye(4))
    C = -np.einsum("nji,nj->ni", ds.train.viewmats[:, :3, :3].astype(np.float64), ds.train.viewmats[:, :3, 3])
    assert ds.scene_scale == pytest.approx(1.1 * np.max(np.linalg.norm(C - C.mean(0), axis=1)), rel=1e-5)
    assert np.all(ds.background == 1.0)


@needs_pycolmap
def test_colmap_normalize_keeps_projections(tmp_path):
    _, truth, pts, _, _ = make_colmap(tmp_path, n_images=12)
    ds = load_dataset(tmp_path)  # normalize=True
    T = ds.transform
    np.testing.assert_allclose(ds.points, pts @ T[:3, :3].T + T[:3, 3], atol=1e-5)
    s = np.cbrt(np.linalg.det(T[:3, :3]))
    np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, s**2 * np.eye(3), atol=1e-9)
    for split in (ds.train, ds.test):
        for i, name in enumerate(split.names):
            V, cam = truth[name]
            uv0, z0 = project(V, cam.calibration_matrix(), pts)
            uv1, z1 = project(split.viewmats[i].astype(np.float64), split.Ks[i].astype(np.float64), ds.points.astype(np.float64))
            np.testing.assert_allclose(uv1, uv0, atol=2e-3)
            np.testing.assert_allclose(z1, z0 * s, rtol=1e-4)
            R = split.viewmats[i, :3, :3].astype(np.float64)
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)
    allv = np.concatenate([ds.train.viewmats, ds.test.viewmats]).astype(np.float64)
    C = -np.einsum("nji,nj->ni", allv[:, :3, :3], allv[:, :3, 3])
    assert np.median(np.linalg.norm(C, axis=1)) == pytest.approx(1.0, rel=1e-4)  # centred on the focus, median distance 1
    up = -allv[:, 1, :3].mean(0)  # the cameras' mean up direction is +z after normalisation
    np.testing.assert_allclose(up / np.linalg.norm(up), [0, 0, 1], atol=1e-6)
    Ct = -np.einsum("nji,nj->ni", ds.train.viewmats[:, :3, :3].astype(np.float64), ds.train.viewmats[:, :3, 3])
    assert ds.scene_scale == pytest.approx(1.1 * np.max(np.linalg.norm(Ct - Ct.mean(0), axis=1)), rel=1e-4)


@needs_pycolmap
def test_colmap_downscale_and_images_folder(tmp_path):
    _, truth, _, _, pixels = make_colmap(tmp_path, cameras=(("PINHOLE", 64, 48),), n_images=4)
    ds = load_dataset(tmp_path, downscale=2, test_every=0)
    assert len(ds.test) == 0 and len(ds.train) == 4
    for i, name in enumerate(ds.train.names):
        K = truth[name][1].calibration_matrix()
        np.testing.assert_allclose(ds.train.Ks[i], np.diag([0.5, 0.5, 1.0]) @ K, atol=1e-5)
        assert (ds.train.widths[i], ds.train.heights[i]) == (32, 24)
        box = pixels[name].astype(np.float64).reshape(24, 2, 32, 2, 3).mean((1, 3))
        assert np.max(np.abs(ds.train.images[i].astype(np.float64) - box)) <= 1.0
    # a pre-downscaled images_2/ folder is used when it exists
    for name in truth:
        save_png(tmp_path / "images_2" / name, np.full((24, 32, 3), 7, np.uint8))
    ds = load_dataset(tmp_path, downscale=2)
    assert all(np.all(im == 7) for im in ds.train.images)
    ds4 = load_dataset(tmp_path, downscale=4)
    assert ds4.train.widths[0] == 16 and ds4.train.Ks[0][0, 0] == pytest.approx(truth[ds4.train.names[0]][1].params[0] / 4)
    # images that are an integer downscale of their camera are accepted at their own size (K follows them)
    for name in truth:
        save_png(tmp_path / "images" / name, np.full((24, 32, 3), 5, np.uint8))
    with pytest.warns(UserWarning, match="smaller than the requested downscale"):
        ds = load_dataset(tmp_path, test_every=0)
    assert ds.train.widths == [32] * 4 and ds.train.heights == [24] * 4
    K = truth[ds.train.names[0]][1].calibration_matrix()
    np.testing.assert_allclose(ds.train.Ks[0], np.diag([0.5, 0.5, 1.0]) @ K, atol=1e-5)


def test_normalization_centre():
    from splat.data.common import similarity_from_cameras, transform_points

    target = np.array([3.0, -2.0, 0.5])
    # a quarter-circle orbit around `target`: the centre is the point the cameras look at
    V = np.stack([look_at_viewmat(target + [6 * math.cos(a), 6 * math.sin(a), 1.0], target) for a in np.linspace(0, 1.5, 6)])
    T = similarity_from_cameras(V)
    np.testing.assert_allclose(transform_points(T, target[None]), 0.0, atol=1e-9)
    # forward-facing: parallel optical axes -> the median camera centre
    C = np.array([[x, 0.0, z] for x in (-0.2, 0.0, 0.2) for z in (-0.1, 0.1)]) + [1.0, 2.0, 3.0]
    V = np.stack([look_at_viewmat(c, c + [0.0, 10.0, 0.0]) for c in C])
    T = similarity_from_cameras(V)
    np.testing.assert_allclose(transform_points(T, np.median(C, 0)[None]), 0.0, atol=1e-9)


@needs_pycolmap
@pytest.mark.parametrize("model", ["SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE", "RADIAL_FISHEYE", "FISHEYE"])
def test_colmap_undistortion_maps_points_to_pinhole(tmp_path, model):
    """Blobs drawn at COLMAP's own distorted projections (pycolmap img_from_cam) land, after undistortion,
    at the pinhole projections with the returned K."""
    W, H = 160, 120
    cam = pycolmap.Camera(camera_id=1, model=model, width=W, height=H, params=COLMAP_PARAMS[model])
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(cam)
    im = pycolmap.Image(name="a.png", camera_id=1, image_id=1)
    rec.add_image_with_trivial_frame(im, pycolmap.Rigid3d())
    rec.add_point3D(np.array([0.0, 0.0, 3.0]), pycolmap.Track(), np.array([1, 2, 3], np.uint8))
    (tmp_path / "sparse/0").mkdir(parents=True)
    rec.write_binary(str(tmp_path / "sparse/0"))
    pts = blob_points(n_side=7)
    uv_dist = np.asarray(cam.img_from_cam(pts))
    save_png(tmp_path / "images/a.png", render_blobs(W, H, uv_dist))
    ds = load_dataset(tmp_path, test_every=0, normalize=False)
    K = ds.train.Ks[0].astype(np.float64)
    assert (ds.train.widths[0], ds.train.heights[0]) == (W, H)
    assert K[0, 1] == 0 and K[2, 2] == 1
    check_blobs_at_pinhole(ds.train.images[0], K, pts)
    check_lens_kept(load_dataset(tmp_path, undistort=False, test_every=0, normalize=False), pts, uv_dist)


def check_lens_kept(ds, pts, uv_dist):
    """Loaded with undistort=False: the image untouched and the camera's lens model (through the renderer's
    `splat.camera_models.project_points`) projecting the points where the writer's own model put them."""
    import torch

    from splat.camera_models import project_points

    cams = ds.train.cameras([0])
    assert cams.camera_model in ("pinhole", "fisheye")
    t = (lambda x: None if x is None else x.double())
    uv, valid = project_points(torch.from_numpy(np.asarray(pts, np.float64))[None], cams.Ks.double(),
                               cams.camera_model, t(cams.radial_coeffs), t(cams.tangential_coeffs))
    assert bool(valid.all())
    np.testing.assert_allclose(uv[0].numpy(), uv_dist, atol=1e-3)


@needs_pycolmap
@pytest.mark.parametrize("model", sorted(COLMAP_PARAMS))
def test_distortion_models_match_pycolmap(model):
    from splat.data.colmap import camera_intrinsics

    cam = pycolmap.Camera(camera_id=1, model=model, width=160, height=120, params=COLMAP_PARAMS[model])
    K, dist = camera_intrinsics(model, list(cam.params), 1)
    pts = blob_points(n_side=6, spread=1.0)
    x, y = pts[:, 0] / pts[:, 2], pts[:, 1] / pts[:, 2]
    if dist is not None:
        x, y = dist.distort(x, y)
        xu, yu = dist.undistort_points(x, y)
        np.testing.assert_allclose(np.stack([xu, yu], 1), pts[:, :2] / pts[:, 2:], atol=1e-9)
    uv = np.stack([K[0, 0] * x + K[0, 2], K[1, 1] * y + K[1, 2]], 1)
    np.testing.assert_allclose(uv, np.asarray(cam.img_from_cam(pts)), atol=1e-6)


@needs_pycolmap
def test_colmap_zero_distortion_is_pinhole(tmp_path):
    make_colmap(tmp_path, cameras=(("OPENCV", 160, 120),), n_images=2)
    rec = pycolmap.Reconstruction(str(tmp_path / "sparse/0"))
    cam = rec.cameras[1]
    cam.params = [112.0, 108.0, 79.0, 61.0, 0, 0, 0, 0]
    rec.write_binary(str(tmp_path / "sparse/0"))
    ds = load_dataset(tmp_path, undistort=False, test_every=0, normalize=False)
    np.testing.assert_allclose(ds.train.Ks[0], cam.calibration_matrix(), atol=1e-5)


@needs_pycolmap
def test_colmap_unsupported_model(tmp_path):
    make_colmap(tmp_path, cameras=(("PINHOLE", 64, 48), ("THIN_PRISM_FISHEYE", 64, 48)), n_images=4, images=False)
    with pytest.raises(DatasetError, match=r"camera 2 uses the COLMAP camera model THIN_PRISM_FISHEYE, which is not supported"):
        load_dataset(tmp_path)


@needs_pycolmap
def test_colmap_split_file_and_test_every(tmp_path):
    make_colmap(tmp_path, n_images=10)
    ds = load_dataset(tmp_path, test_every=3)
    assert ds.test.names == ["img_000.png", "img_003.png", "img_006.png", "img_009.png"]
    (tmp_path / "sparse/0/test.txt").write_text("img_004.png\nimg_001.png\n\n")
    ds = load_dataset(tmp_path)
    assert ds.test.names == ["img_001.png", "img_004.png"] and len(ds.train) == 8
    assert load_dataset(tmp_path, test_every=0).test.names == []
    (tmp_path / "sparse/0/test.txt").write_text("nope.png\n")
    with pytest.raises(DatasetError, match=r"test\.txt.*nope\.png"):
        load_dataset(tmp_path)


@needs_pycolmap
def test_colmap_sparse_without_subfolder_and_text(tmp_path):
    make_colmap(tmp_path, sparse="sparse", binary=False, n_images=3)
    assert detect_format(tmp_path) == "colmap"
    assert len(load_dataset(tmp_path, test_every=0).train) == 3


@needs_pycolmap
def test_colmap_initial_points_subsample_and_random(tmp_path):
    make_colmap(tmp_path, n_images=3, n_points=50)
    ds = load_dataset(tmp_path, max_init_points=10, seed=1)
    assert ds.points.shape == (10, 3) and ds.points_rgb.shape == (10, 3)
    ds2 = load_dataset(tmp_path, max_init_points=10, seed=1)
    np.testing.assert_array_equal(ds.points, ds2.points)
    # a model without points falls back to random points in the normalised cube
    root2 = tmp_path / "nopts"
    make_colmap(root2, n_images=3, n_points=0)
    ds = load_dataset(root2, num_random_points=500)
    assert ds.points_random and ds.points.shape == (500, 3) and np.all(np.abs(ds.points) <= 1.3 + 1e-5)


@needs_pycolmap
def test_colmap_bad_inputs(tmp_path):
    # empty model
    empty = tmp_path / "empty"
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model="PINHOLE", width=8, height=8, params=[8, 8, 4, 4]))
    (empty / "sparse/0").mkdir(parents=True)
    rec.write_binary(str(empty / "sparse/0"))
    (empty / "images").mkdir()
    with pytest.raises(DatasetError, match="contains no images"):
        load_dataset(empty)
    # corrupt model
    bad = tmp_path / "badmodel"
    (bad / "sparse/0").mkdir(parents=True)
    for n in ("cameras", "images", "points3D"):
        (bad / "sparse/0" / f"{n}.bin").write_bytes(b"\x07garbage")
    with pytest.raises(DatasetError, match=r"sparse/0/cameras\.bin: claims \d+ cameras, which need at least"):
        load_dataset(bad)

    root = tmp_path / "scene"
    make_colmap(root, n_images=4)
    pts_file = (root / "sparse/0/points3D.bin").read_bytes()
    (root / "sparse/0/points3D.bin").unlink()
    with pytest.raises(DatasetError, match=r"sparse/0: the COLMAP model has no points3D\.bin or points3D\.txt"):
        load_dataset(root)
    (root / "sparse/0/points3D.bin").write_bytes(pts_file)
    # missing image
    (root / "images/img_002.png").unlink()
    with pytest.raises(DatasetError, match=r"image file not found: .*images/img_002\.png"):
        load_dataset(root)
    # mismatched size
    save_png(root / "images/img_002.png", pattern(40, 50, 0))
    with pytest.raises(DatasetError, match=r"img_002\.png has size 50x40, but camera 1 \(PINHOLE\) is 64x48"):
        load_dataset(root)
    # corrupt image bytes
    (root / "images/img_002.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*img_002\.png"):
        load_dataset(root)
    # truncated image
    save_png(root / "images/img_002.png", pattern(48, 64, 0))
    data = (root / "images/img_002.png").read_bytes()
    (root / "images/img_002.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cannot read image .*img_002\.png"):
        load_dataset(root)
    # no images folder
    import shutil

    shutil.rmtree(root / "images")
    with pytest.raises(DatasetError, match=r"image folder .*images not found"):
        load_dataset(root)


# ----------------------------------------------------------------------------------------------
# Blender / NeRF-synthetic




def make_blender(root: Path, n_train=3, n_test=2, W=40, H=30, angle=0.9, rgba=True, ext_in_path=False):
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, n in (("train", n_train), ("test", n_test)):
        frames = []
        for i in range(n):
            ang = 2 * math.pi * (i + (0.5 if split == "test" else 0)) / n
            c2w = blender_c2w([4 * math.sin(ang), -4 * math.cos(ang), 0.5])
            arr = pattern(H, W, seed=hash((split, i)) % 1000)
            if rgba:
                alpha = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
                arr = np.concatenate([arr, alpha[..., None]], 2)
            save_png(root / split / f"r_{i}.png", arr)
            fp = f"./{split}/r_{i}" + (".png" if ext_in_path else "")
            frames.append({"file_path": fp, "rotation": 0.0, "transform_matrix": c2w.tolist()})
            truth[f"{split}/r_{i}" + (".png" if ext_in_path else "")] = (c2w, arr)
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    (root / "transforms_val.json").write_text(json.dumps({"camera_angle_x": angle, "frames": [{"file_path": "./val/missing"}]}))
    return truth


def test_blender_opengl_to_opencv_projection(tmp_path):
    truth = make_blender(tmp_path, rgba=False)
    assert detect_format(tmp_path) == "blender"
    ds = load_dataset(tmp_path)
    assert ds.format == "blender" and len(ds.train) == 3 and len(ds.test) == 2
    np.testing.assert_allclose(ds.transform, np.eye(4))
    fx = 0.5 * 40 / math.tan(0.45)
    for split in (ds.train, ds.test):
        for i, name in enumerate(split.names):
            V, K = split.viewmats[i].astype(np.float64), split.Ks[i].astype(np.float64)
            np.testing.assert_allclose(K, [[fx, 0, 20], [0, fx, 15], [0, 0, 1]], rtol=1e-6)
            c2w = truth[name][0]
            np.testing.assert_allclose(np.linalg.inv(V)[:3, 3], c2w[:3, 3], atol=1e-5)
            right, up = c2w[:3, 0], c2w[:3, 1]
            uv, z = project(V, K, np.array([[0, 0, 0], right * 0.3, up * 0.3, [0, 0, 0.3]]))
            assert np.all(z > 0)
            np.testing.assert_allclose(uv[0], [20, 15], atol=1e-4)  # the origin is at the image centre
            assert uv[1, 0] > uv[0, 0] + 1 and abs(uv[1, 1] - uv[0, 1]) < 1e-3  # camera right -> larger u
            assert uv[2, 1] < uv[0, 1] - 1 and abs(uv[2, 0] - uv[0, 0]) < 1e-3  # camera up -> smaller v
            assert uv[3, 1] < uv[0, 1] - 1  # world up (Blender +z) -> smaller v
            np.testing.assert_array_equal(split.images[i], truth[name][1])  # RGB used as is
    assert ds.train.alphas is None
    # scene scale from the train cameras, random points in 3DGS's cube
    C = np.stack([np.linalg.inv(v.astype(np.float64))[:3, 3] for v in ds.train.viewmats])
    half = 1.3 * np.median(np.linalg.norm(C, axis=1)) / 4.0311289  # 1.3 at NeRF-synthetic's camera distance
    assert ds.points_random and ds.points.shape == (100_000, 3)
    assert half * 0.999 < np.abs(ds.points).max() <= half
    assert ds.scene_scale == pytest.approx(1.1 * np.linalg.norm(C - C.mean(0), axis=1).max(), rel=1e-5)


def test_blender_rgba_composited_on_background(tmp_path):
    truth = make_blender(tmp_path, ext_in_path=True)
    bg = (0.0, 0.25, 1.0)
    ds = load_dataset(tmp_path, background=bg, test_every=0)
    assert len(ds.train) == 5 and len(ds.test) == 0
    np.testing.assert_allclose(ds.background, bg)
    for i, name in enumerate(ds.train.names):
        rgba = truth[name][1].astype(np.float64)
        a = rgba[..., 3:] / 255.0
        want = np.rint(rgba[..., :3] * a + 255.0 * np.array(bg) * (1 - a))
        np.testing.assert_allclose(ds.train.images[i], want, atol=1.0)
        np.testing.assert_array_equal(ds.train.alphas[i], truth[name][1][..., 3])
        assert np.all(ds.train.images[i][:, 0] == np.rint(255 * np.array(bg)))  # alpha 0 -> background


def test_blender_downscale_intrinsics_and_ply(tmp_path):
    make_blender(tmp_path, W=40, H=30)
    xyz = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    rgb = np.random.default_rng(1).integers(0, 256, (30, 3), dtype=np.uint8)
    write_ply(tmp_path / "points3d.ply", xyz, rgb, binary=True)
    ds = load_dataset(tmp_path, downscale=2, normalize=True)
    assert not ds.points_random
    np.testing.assert_allclose(ds.points, xyz, atol=1e-6)  # blender: never normalised
    np.testing.assert_array_equal(ds.points_rgb, rgb)
    fx = 0.5 * 40 / math.tan(0.45)
    np.testing.assert_allclose(ds.train.Ks[0], [[fx / 2, 0, 10], [0, fx / 2, 7.5], [0, 0, 1]], rtol=1e-6)
    assert ds.train.images[0].shape == (15, 20, 3) and ds.train.alphas[0].shape == (15, 20)
    # explicit intrinsics in the file override camera_angle_x
    meta = json.loads((tmp_path / "transforms_train.json").read_text())
    meta.update(fl_x=50.0, fl_y=52.0, cx=19.0, cy=14.0)
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    ds = load_dataset(tmp_path)
    np.testing.assert_allclose(ds.train.Ks[0], [[50, 0, 19], [0, 52, 14], [0, 0, 1]])
    np.testing.assert_allclose(ds.test.Ks[0][0, 0], fx, rtol=1e-6)


def test_blender_bad_json(tmp_path):
    make_blender(tmp_path)
    p = tmp_path / "transforms_train.json"
    good = p.read_text()
    p.write_text(good[:-5])
    with pytest.raises(DatasetError, match=r"transforms_train\.json: malformed JSON: .* line 1 column"):
        load_dataset(tmp_path)
    meta = json.loads(good)
    del meta["frames"][1]["transform_matrix"]
    p.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"transforms_train\.json: missing key 'transform_matrix' \(frame 1\)"):
        load_dataset(tmp_path)
    meta = json.loads(good)
    meta["frames"][0]["transform_matrix"] = [[1, 0], [0, 1]]
    p.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"key 'transform_matrix' \(frame 0\) must be a 3x4 or 4x4 matrix"):
        load_dataset(tmp_path)
    meta = json.loads(good)
    meta["frames"][2]["transform_matrix"][0][:3] = [0, 0, 0]
    p.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"transforms_train\.json: key 'transform_matrix' \(frame 2\): the rotation part is not a rotation"):
        load_dataset(tmp_path)
    meta = json.loads(good)
    del meta["camera_angle_x"]
    p.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"transforms_train\.json: missing key 'camera_angle_x'"):
        load_dataset(tmp_path)
    p.write_text(good)
    (tmp_path / "test/r_1.png").unlink()
    with pytest.raises(DatasetError, match=r"image file not found: .*test/r_1\.png"):
        load_dataset(tmp_path)


# ----------------------------------------------------------------------------------------------
# nerfstudio

NS_APPLIED = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]])  # what ns-process-data (colmap_to_json) writes


def ns_frame_from_colmap(V: np.ndarray) -> np.ndarray:
    """ns-process-data's conversion of a COLMAP world->camera matrix to a transforms.json frame."""
    c2w = np.linalg.inv(V)
    c2w[0:3, 1:3] *= -1
    c2w = c2w[np.array([0, 2, 1, 3]), :]
    c2w[2, :] *= -1
    return c2w


def make_nerfstudio(root: Path, n=9, W=48, H=36, per_frame=False, model="OPENCV", dist=None, with_ply=True):
    """Cameras and points in an original (COLMAP) world, written as ns-process-data would."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    pts0 = rng.uniform(-1, 1, (40, 3))
    cols = rng.integers(0, 256, (40, 3), dtype=np.uint8)
    meta = {"camera_model": model, "w": W, "h": H}
    if not per_frame:
        meta.update(fl_x=40.0, fl_y=42.0, cx=23.5, cy=18.0)
    if dist:
        meta.update(dist)
    frames, truth = [], {}
    for i in range(n):
        ang = 2 * math.pi * i / n
        V = look_at_viewmat([5 * math.cos(ang), 5 * math.sin(ang), -1.0], up=(0, 0, 1.0))
        name = f"images/frame_{i + 1:05d}.png"
        fr = {"file_path": name, "transform_matrix": ns_frame_from_colmap(V).tolist(), "colmap_im_id": i + 1}
        K = np.array([[40.0, 0, 23.5], [0, 42.0, 18.0], [0, 0, 1]])
        if per_frame:
            K = np.array([[38.0 + i, 0, 24.0], [0, 39.0 + i, 17.5], [0, 0, 1]])
            fr.update(fl_x=K[0, 0], fl_y=K[1, 1], cx=K[0, 2], cy=K[1, 2])
        frames.append(fr)
        arr = pattern(H, W, seed=i)
        save_png(root / name, arr)
        truth[name] = (V, K, arr)
    meta["frames"] = frames[::-1]
    meta["applied_transform"] = NS_APPLIED.tolist()
    if with_ply:
        write_ply(root / "sparse_pc.ply", pts0 @ NS_APPLIED[:, :3].T + NS_APPLIED[:, 3], cols, binary=False)
        meta["ply_file_path"] = "sparse_pc.ply"
    (root / "transforms.json").write_text(json.dumps(meta, indent=1))
    return meta, truth, pts0, cols


def test_nerfstudio_applied_transform_and_ply_points(tmp_path):
    meta, truth, pts0, cols = make_nerfstudio(tmp_path)
    assert detect_format(tmp_path) == "nerfstudio"
    assert detect_format(tmp_path / "transforms.json") == "nerfstudio"
    ds = load_dataset(tmp_path)
    assert ds.format == "nerfstudio" and not ds.points_random
    assert ds.test.names == ["images/frame_00001.png", "images/frame_00009.png"]
    np.testing.assert_array_equal(ds.points_rgb, cols)
    A = ds.meta["applied_transform"]
    np.testing.assert_allclose(A[:3], NS_APPLIED)
    # mapping back to the original COLMAP world: inv(applied) @ inv(transform)
    back = np.linalg.inv(A) @ np.linalg.inv(ds.transform)
    np.testing.assert_allclose(ds.points.astype(np.float64) @ back[:3, :3].T + back[:3, 3], pts0, atol=1e-5)
    for split in (ds.train, ds.test):
        for i, name in enumerate(split.names):
            V, K, arr = truth[name]
            np.testing.assert_allclose(split.Ks[i], K, atol=1e-5)
            np.testing.assert_array_equal(split.images[i], arr)
            uv0, z0 = project(V, K, pts0)  # where the points are in the original images
            uv1, z1 = project(split.viewmats[i].astype(np.float64), split.Ks[i].astype(np.float64), ds.points.astype(np.float64))
            np.testing.assert_allclose(uv1, uv0, atol=2e-3)
            assert np.all((z0 > 0) == (z1 > 0))


def test_nerfstudio_per_frame_intrinsics_splits_and_downscale(tmp_path):
    meta, truth, _, _ = make_nerfstudio(tmp_path, per_frame=True, with_ply=False, W=48, H=36)
    meta["test_filenames"] = ["./images/frame_00003.png", "images/frame_00004.png"]
    meta["train_filenames"] = [f"images/frame_{i:05d}.png" for i in (1, 2, 5, 6)]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    ds = load_dataset(tmp_path, normalize=False, num_random_points=1000)
    assert ds.test.names == ["images/frame_00003.png", "images/frame_00004.png"]
    assert ds.train.names == [f"images/frame_{i:05d}.png" for i in (1, 2, 5, 6)]
    assert ds.points_random and ds.points.shape == (1000, 3)
    for split in (ds.train, ds.test):
        for i, name in enumerate(split.names):
            V, K, _ = truth[name]
            np.testing.assert_allclose(split.Ks[i], K, atol=1e-5)
            A = np.vstack([NS_APPLIED, [0, 0, 0, 1]])
            np.testing.assert_allclose(split.viewmats[i], V @ np.linalg.inv(A), atol=1e-5)  # the frames' world
    # images_2/: nerfstudio's downscaled folder
    for name in truth:
        save_png(tmp_path / "images_2" / Path(name).name, np.full((18, 24, 3), 9, np.uint8))
    ds = load_dataset(tmp_path, downscale=2)
    assert all(np.all(im == 9) for im in ds.train.images)
    V, K, _ = truth[ds.train.names[0]]
    np.testing.assert_allclose(ds.train.Ks[0], np.diag([0.5, 0.5, 1]) @ K, atol=1e-5)
    meta["test_filenames"] = ["images/nope.png"]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"transforms\.json: key 'test_filenames' lists files that no frame has.*nope"):
        load_dataset(tmp_path)


def ns_distort(x, y, k1=0.0, k2=0.0, k3=0.0, k4=0.0, p1=0.0, p2=0.0):
    """nerfstudio's perspective distortion, written out independently of splat.data."""
    r = x * x + y * y
    d = 1.0 + r * (k1 + r * (k2 + r * (k3 + r * k4)))
    return d * x + 2 * p1 * x * y + p2 * (r + 2 * x * x), d * y + 2 * p2 * x * y + p1 * (r + 2 * y * y)


def ns_fisheye(x, y, k1=0.0, k2=0.0, k3=0.0, k4=0.0):
    r = np.hypot(x, y)
    th = np.arctan(r)
    thd = th * (1 + k1 * th**2 + k2 * th**4 + k3 * th**6 + k4 * th**8)
    return x * thd / r, y * thd / r


@pytest.mark.parametrize(
    "model,dist",
    [
        ("OPENCV", {"k1": -0.12, "k2": 0.02, "k3": 0.001, "p1": 0.002, "p2": -0.001}),
        ("OPENCV_FISHEYE", {"k1": 0.03, "k2": -0.01, "k3": 0.001, "k4": 0.0}),
    ],
)
def test_nerfstudio_distortion_undistorted(tmp_path, model, dist):
    W, H, f = 160, 120, 110.0
    pts = blob_points(n_side=7)
    x, y = pts[:, 0] / pts[:, 2], pts[:, 1] / pts[:, 2]
    xd, yd = ns_distort(x, y, **dist) if model == "OPENCV" else ns_fisheye(x, y, **dist)
    uv = np.stack([f * xd + 80.0, f * yd + 60.0], 1)
    save_png(tmp_path / "images/a.png", render_blobs(W, H, uv))
    save_png(tmp_path / "images/b.png", render_blobs(W, H, uv))
    c2w = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL camera at the origin = identity OpenCV camera
    meta = {"camera_model": model, "fl_x": f, "fl_y": f, "cx": 80.0, "cy": 60.0, "w": W, "h": H, **dist}
    meta["frames"] = [{"file_path": "images/a.png", "transform_matrix": c2w.tolist()}]
    meta["frames"].append({"file_path": "images/b.png", "transform_matrix": (c2w @ np.diag([1, 1, 1, 1.0])).tolist()})
    meta["frames"][1]["transform_matrix"][0][3] = 0.5
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    ds = load_dataset(tmp_path, normalize=False, test_every=0)
    i = ds.train.names.index("images/a.png")
    np.testing.assert_allclose(ds.train.viewmats[i], np.eye(4), atol=1e-6)
    check_blobs_at_pinhole(ds.train.images[i], ds.train.Ks[i].astype(np.float64), pts)
    kept = load_dataset(tmp_path, undistort=False, test_every=0, normalize=False)
    assert kept.train.names.index("images/a.png") == 0
    check_lens_kept(kept, pts, uv)


def test_nerfstudio_bad_inputs(tmp_path):
    meta, truth, _, _ = make_nerfstudio(tmp_path)
    p = tmp_path / "transforms.json"
    good = json.dumps(meta)
    bad = dict(meta, camera_model="EQUIRECTANGULAR")
    p.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"camera_model 'EQUIRECTANGULAR', which is not supported"):
        load_dataset(tmp_path)
    bad = json.loads(good)
    del bad["fl_x"]
    p.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"transforms\.json: missing key 'fl_x' \(frame 0\)"):
        load_dataset(tmp_path)
    bad = json.loads(good)
    bad["frames"][2].pop("file_path")
    p.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"transforms\.json: missing key 'file_path' \(frame 2\)"):
        load_dataset(tmp_path)
    p.write_text(good.replace('"frames"', '"frames" :: '))
    with pytest.raises(DatasetError, match=r"transforms\.json: malformed JSON"):
        load_dataset(tmp_path)
    p.write_text(json.dumps(dict(meta, frames=[])))
    with pytest.raises(DatasetError, match=r"'frames' is empty"):
        load_dataset(tmp_path)
    p.write_text(json.dumps(dict(meta, ply_file_path="missing.ply")))
    with pytest.raises(DatasetError, match=r"'ply_file_path' points to .*missing\.ply, which does not exist"):
        load_dataset(tmp_path)
    p.write_text(good)
    save_png(tmp_path / "images/frame_00002.png", pattern(36, 47, 0))
    with pytest.raises(DatasetError, match=r"frame_00002\.png has size 47x36, but the camera of frame \d+ \(OPENCV\) is 48x36"):
        load_dataset(tmp_path)


# ----------------------------------------------------------------------------------------------
# detection, images, ply


def test_detect_format_layouts(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b/transforms_train.json").write_text("{}")
    (tmp_path / "n").mkdir()
    (tmp_path / "n/transforms.json").write_text("{}")
    (tmp_path / "c/sparse/0").mkdir(parents=True)
    (tmp_path / "c/sparse/0/cameras.txt").write_text("")
    (tmp_path / "c/sparse/0/images.txt").write_text("")
    (tmp_path / "e").mkdir()
    assert detect_format(tmp_path / "b") == "blender"
    assert detect_format(tmp_path / "n") == "nerfstudio"
    assert detect_format(tmp_path / "c") == "colmap"
    with pytest.raises(DatasetError, match=r"cannot detect the dataset format; looked for transforms_train\.json.*transforms\.json.*sparse/0/"):
        detect_format(tmp_path / "e")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        load_dataset(tmp_path / "b", format="llff")
    with pytest.raises(DatasetError, match="downscale"):
        load_dataset(tmp_path / "b", downscale=0)


def test_read_image_modes(tmp_path):
    bg = np.array([1.0, 0.0, 0.0], np.float32)
    g16 = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)
    write_png16(tmp_path / "g16.png", g16)
    rgb, a = read_image(tmp_path / "g16.png", bg)
    assert a is None and rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 1], np.rint(g16 / 257.0))
    c16 = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(np.uint16)
    write_png16(tmp_path / "c16.png", c16)
    rgb, _ = read_image(tmp_path / "c16.png", bg)
    assert np.max(np.abs(rgb.astype(float) - c16 / 257.0)) <= 1.0
    Image.fromarray(np.full((3, 4), 77, np.uint8), "L").save(tmp_path / "l.png")
    rgb, _ = read_image(tmp_path / "l.png", bg)
    assert rgb.shape == (3, 4, 3) and np.all(rgb == 77)
    pal = Image.new("P", (4, 3))
    pal.putpalette([10, 20, 30] * 256)
    pal.save(tmp_path / "p.png")
    rgb, _ = read_image(tmp_path / "p.png", bg)
    assert np.all(rgb == [10, 20, 30])
    la = np.zeros((3, 4, 2), np.uint8)
    la[..., 0] = 200
    la[:, 2:, 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    rgb, a = read_image(tmp_path / "la.png", bg)
    assert np.all(rgb[:, :2] == [255, 0, 0]) and np.all(rgb[:, 2:] == 200) and a.shape == (3, 4)


@pytest.mark.parametrize("binary", [True, False])
def test_read_ply(tmp_path, binary):
    xyz = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    rgb = np.random.default_rng(1).integers(0, 256, (7, 3), dtype=np.uint8)
    write_ply(tmp_path / "p.ply", xyz, rgb, binary=binary)
    x2, c2 = read_ply_points(tmp_path / "p.ply")
    np.testing.assert_allclose(x2, xyz, atol=1e-6)
    np.testing.assert_array_equal(c2, rgb)
    (tmp_path / "bad.ply").write_bytes(b"nope")
    with pytest.raises(DatasetError, match=r"bad\.ply: not a PLY file"):
        read_ply_points(tmp_path / "bad.ply")


def test_distortion_roundtrip_and_identity_K():
    from splat.data.distortion import valid_pinhole_K

    K = np.array([[100.0, 0, 50], [0, 90.0, 40], [0, 0, 1]])
    d0 = Distortion("radtan", radial=(0.0, 0.0))
    assert d0.is_identity
    np.testing.assert_allclose(valid_pinhole_K(K, Distortion("radtan", radial=(1e-12,)), 100, 80), K, atol=1e-6)
    for d in (Distortion("radtan", radial=(-0.2, 0.05), tangential=(0.001, 0.002)), Distortion("fisheye", radial=(0.05, -0.01))):
        x = np.linspace(-0.5, 0.5, 11)
        xd, yd = d.distort(x, x[::-1])
        xu, yu = d.undistort_points(xd, yd)
        np.testing.assert_allclose(xu, x, atol=1e-10)
        np.testing.assert_allclose(yu, x[::-1], atol=1e-10)


@pytest.mark.parametrize(
    "dist",
    [
        Distortion("radtan", radial=(-0.2, 0.05), tangential=(0.002, -0.001)),
        Distortion("radtan", radial=(0.15,)),
        Distortion("fisheye", radial=(0.05, -0.01)),
    ],
)
def test_undistorted_K_keeps_every_pixel_valid_and_is_tight(dist):
    from splat.data.distortion import valid_pinhole_K

    W, H = 90, 70
    K = np.array([[80.0, 0, 44.0], [0, 84.0, 36.0], [0, 0, 1]])
    Kn = valid_pinhole_K(K, dist, W, H)
    assert Kn[1, 1] / Kn[0, 0] == pytest.approx(84.0 / 80.0)  # pixel aspect ratio kept
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    xd, yd = dist.distort((jj - Kn[0, 2]) / Kn[0, 0], (ii - Kn[1, 2]) / Kn[1, 1])
    u, v = K[0, 0] * xd + K[0, 2], K[1, 1] * yd + K[1, 2]
    eps = 1e-3
    assert u.min() >= 0.5 - eps and u.max() <= W - 0.5 + eps and v.min() >= 0.5 - eps and v.max() <= H - 0.5 + eps
    # tight: some border pixel reaches the edge of the input along the limiting axis
    gap = min(u.min() - 0.5, W - 0.5 - u.max(), v.min() - 0.5, H - 0.5 - v.max())
    assert gap < 0.05
