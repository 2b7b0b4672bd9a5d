"""The committed default scene (scenes/data/default): layout, images, cameras and the camera convention.

Fast: reads the committed files only (no rendering, no Mitsuba)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scene_utils import assert_orbit_c2w

# loaded by path: in the tests, `scenes` is tests/scenes.py (conftest puts tests/ first on sys.path)
_spec = importlib.util.spec_from_file_location(
    "splat_default_scene", Path(__file__).resolve().parents[1] / "scenes" / "default_scene.py")
ds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ds)

ROOT = ds.COMMITTED


def _meta(split):
    return json.loads((ROOT / f"transforms_{split}.json").read_text())


def _image(split, i) -> np.ndarray:
    return np.asarray(Image.open(ROOT / split / f"r_{i}.png"))


def _views():
    for split in ("train", "test"):
        for i, fr in enumerate(_meta(split)["frames"]):
            yield split, i, np.array(fr["transform_matrix"], dtype=np.float64)


def _hsv(rgb8: np.ndarray):
    x = rgb8.astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    d = mx - mn
    s = np.where(mx > 0, d / np.maximum(mx, 1e-9), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    dd = np.maximum(d, 1e-9)
    h = np.where(mx == r, ((g - b) / dd) % 6, np.where(mx == g, (b - r) / dd + 2, (r - g) / dd + 4)) * 60.0
    return h, s, mx


def _find_marker(img: np.ndarray, uv, radius_px: float, hue: float):
    """Centroid and pixel count of the marker-coloured pixels within a window around uv (pixel centres at i+0.5)."""
    H, W = img.shape[:2]
    win = radius_px + 3.0
    x0, x1 = max(0, int(uv[0] - win)), min(W, int(uv[0] + win) + 1)
    y0, y1 = max(0, int(uv[1] - win)), min(H, int(uv[1] + win) + 1)
    patch = img[y0:y1, x0:x1]
    h, s, v = _hsv(patch[..., :3])
    dh = np.abs((h - hue + 180.0) % 360.0 - 180.0)
    m = (dh < 20.0) & (s > 0.6) & (v > 0.12) & (patch[..., 3] > 128)
    if m.sum() == 0:
        return None, 0
    ys, xs = np.nonzero(m)
    return np.array([xs.mean() + x0 + 0.5, ys.mean() + y0 + 0.5]), int(m.sum())


def _marker_pass_rate(flip_x: bool = False, max_views: int | None = None):
    """Fraction of (view, marker) pairs, with the marker well inside the image, whose projection lands on
    the marker ball in the rendered image (centroid of its pixels within 1 px)."""
    K = ds.intrinsics(ds.WIDTH, ds.HEIGHT, _meta("train")["camera_angle_x"])
    names = list(ds.MARKERS)
    centres = np.array([ds.MARKERS[n][0] for n in names])
    ok = tried = 0
    errors = []
    for k, (split, i, c2w) in enumerate(_views()):
        if max_views is not None and k >= max_views:
            break
        img = _image(split, i)
        uv, depth = ds.project(centres, c2w, K)
        if flip_x:
            uv[:, 0] = ds.WIDTH - uv[:, 0]
        for n, p, z in zip(names, uv, depth):
            if z <= 0 or not (10 <= p[0] <= ds.WIDTH - 10 and 10 <= p[1] <= ds.HEIGHT - 10):
                continue
            rad = K[0, 0] * ds.MARKER_RADIUS / z
            tried += 1
            c, count = _find_marker(img, p, rad, ds.MARKER_HUES[n])
            if c is not None and count >= 0.3 * math.pi * rad * rad and np.linalg.norm(c - p) < 1.0:
                ok += 1
                errors.append(np.linalg.norm(c - p))
    return ok / max(tried, 1), tried, errors


def test_dataset_layout():
    assert ROOT.is_dir(), f"{ROOT} is missing: run python -m scenes.default_scene --out {ROOT}"
    assert ds.default_scene_path() == ROOT
    for split, n in (("train", ds.N_TRAIN), ("test", ds.N_TEST)):
        meta = _meta(split)
        assert meta["camera_angle_x"] == pytest.approx(ds.CAMERA_ANGLE_X)
        assert len(meta["frames"]) == n
        for i, fr in enumerate(meta["frames"]):
            assert fr["file_path"] == f"./{split}/r_{i}"
            assert (ROOT / split / f"r_{i}.png").is_file()
            # the camera sits on the orbit, looks at LOOK_AT, upright in the z-up world
            assert_orbit_c2w(fr["transform_matrix"], ds.LOOK_AT, ds.RADIUS)
            assert fr["transform_matrix"][2][3] > ds.LOOK_AT[2]  # upper hemisphere


def test_images_rgba_and_not_blank():
    for split, i, _ in _views():
        img = _image(split, i)
        assert img.shape == (ds.HEIGHT, ds.WIDTH, 4) and img.dtype == np.uint8, (split, i)
        a = img[..., 3]
        fg = a == 255
        assert 0.15 < fg.mean() < 0.9, (split, i, fg.mean())  # a scene, with a transparent background
        assert (a == 0).mean() > 0.05, (split, i)
        assert ((a > 0) & (a < 255)).sum() > 200, (split, i)  # anti-aliased coverage at the silhouettes
        # corners are background (the environment is not visible)
        assert a[0, 0] == 0 and a[0, -1] == 0, (split, i)
        lum = img[..., :3].astype(np.float64) @ [0.2126, 0.7152, 0.0722]
        assert lum[fg].std() > 25, (split, i)  # contrast
        # texture: high-frequency energy in the opaque area (a blurred render fails this)
        inner = fg[1:-1, 1:-1] & fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:]
        lap = 4 * lum[1:-1, 1:-1] - lum[:-2, 1:-1] - lum[2:, 1:-1] - lum[1:-1, :-2] - lum[1:-1, 2:]
        assert np.abs(lap[inner]).mean() > 8, (split, i, np.abs(lap[inner]).mean())


def test_train_and_test_views_distinct():
    def dirs(split):
        ms = [np.array(f["transform_matrix"]) for f in _meta(split)["frames"]]
        return np.array([m[:3, 2] for m in ms])  # +z (back) = direction from LOOK_AT to the camera

    tr, te = dirs("train"), dirs("test")
    min_angle = np.degrees(np.arccos(np.clip(te @ tr.T, -1, 1))).min()
    assert min_angle > 3.0, min_angle
    hashes = {hashlib.sha1((ROOT / s / f"r_{i}.png").read_bytes()).hexdigest() for s, i, _ in _views()}
    assert len(hashes) == ds.N_TRAIN + ds.N_TEST


def test_camera_convention_projects_markers_onto_their_pixels():
    """Project the known marker-ball centres with the pinhole model from camera_angle_x and the
    transform (OpenGL c2w -> OpenCV w2c by flipping the camera's y and z axes): they land on the balls."""
    rate, tried, errors = _marker_pass_rate()
    assert tried >= 2 * (ds.N_TRAIN + ds.N_TEST), tried  # most markers are in frame in most views
    assert rate > 0.9, rate  # allowing a few occluded markers
    assert np.median(errors) < 0.5, np.median(errors)
    # and the check discriminates: a mirrored image convention does not pass
    bad, _, _ = _marker_pass_rate(flip_x=True, max_views=20)
    assert bad < 0.2, bad


def test_points3d_sparse_cloud():
    xyz, rgb = ds.read_points_ply(ROOT / "points3d.ply")
    head = (ROOT / "points3d.ply").read_bytes()[:400].decode("ascii", "replace")
    for prop in ("float x", "float y", "float z", "uchar red", "uchar green", "uchar blue"):
        assert f"property {prop}" in head
    assert 5000 <= len(xyz) <= 20000
    assert np.all(np.linalg.norm(xyz[:, :2], axis=1) < ds.DISK_RADIUS + 0.05)
    assert xyz[:, 2].min() > -0.05 and xyz[:, 2].max() < 1.3
    assert rgb.std(0).min() > 10  # coloured, not constant
    # every point projects onto the rendered coverage of the views (it lies on a surface)
    K = ds.intrinsics(ds.WIDTH, ds.HEIGHT, ds.CAMERA_ANGLE_X)
    for split, i, c2w in list(_views())[::15]:
        a = _image(split, i)[..., 3]
        uv, z = ds.project(xyz, c2w, K)
        ij = np.floor(uv).astype(int)
        inside = (z > 0) & (ij[:, 0] >= 0) & (ij[:, 0] < ds.WIDTH) & (ij[:, 1] >= 0) & (ij[:, 1] < ds.HEIGHT)
        hit = a[ij[inside, 1], ij[inside, 0]] > 0
        assert hit.mean() > 0.97, (split, i, hit.mean())
