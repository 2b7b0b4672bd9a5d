"""The committed dynamic scene (scenes/data/dynamic, D-NeRF layout): frames, times, cameras, images, motion.

Fast: reads the committed files only (no rendering, no Mitsuba)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scene_utils import assert_orbit_c2w

# loaded by path, like test_default_scene (the module finds default_scene itself)
_spec = importlib.util.spec_from_file_location(
    "splat_dynamic_scene", Path(__file__).resolve().parents[1] / "scenes" / "dynamic_scene.py")
dyn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dyn)
base = dyn.base

ROOT = dyn.COMMITTED
N_CAMS = len(dyn.TRAIN_CAMERAS)
STEP = 1.0 / (dyn.N_TIMES - 1)


def _meta(split):
    return json.loads((ROOT / f"transforms_{split}.json").read_text())


def _image(file_path: str) -> np.ndarray:
    return np.asarray(Image.open(ROOT / (file_path.removeprefix("./") + ".png")))


def _on_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4].astype(np.float64) / 255.0
    return rgba[..., :3].astype(np.float64) * a + 255.0 * (1.0 - a)


def _frames():
    for split in ("train", "test"):
        yield from ((split, fr) for fr in _meta(split)["frames"])


def test_layout_times_and_order():
    assert ROOT.is_dir(), f"{ROOT} is missing: run python -m scenes.dynamic_scene"
    assert dyn.dynamic_scene_path() == ROOT
    train, test = _meta("train"), _meta("test")
    for meta in (train, test):
        assert meta["camera_angle_x"] == pytest.approx(dyn.CAMERA_ANGLE_X)
        times = [fr["time"] for fr in meta["frames"]]
        assert all(isinstance(t, float) and 0.0 <= t <= 1.0 for t in times)
        assert all(a <= b for a, b in zip(times, times[1:])), "frames must be listed time-major"
        for fr in meta["frames"]:
            assert (ROOT / (fr["file_path"][2:] + ".png")).is_file(), fr["file_path"]

    # train: 6 cameras x 24 instants i / 23, all cameras at t_0, then all at t_1, ...
    fr = train["frames"]
    assert len(fr) == N_CAMS * dyn.N_TIMES == 6 * 24
    for k, f in enumerate(fr):
        i, c = divmod(k, N_CAMS)
        assert f["file_path"] == f"./train/c{c}_t{i:03d}"
        assert f["time"] == pytest.approx(i / 23)
        # synchronised: camera c has one pose at every instant
        np.testing.assert_array_equal(f["transform_matrix"], fr[c]["transform_matrix"])
    assert len({tuple(np.ravel(f["transform_matrix"])) for f in fr}) == N_CAMS

    # test: 2 cameras x 8 instants half-way between training instants (interpolation in time)
    ft = test["frames"]
    assert len(ft) == len(dyn.TEST_CAMERAS) * len(dyn.TEST_STEPS) == 2 * 8
    tt = np.array([f["time"] for f in ft])
    assert len(set(tt.tolist())) == 8
    dist = np.abs(tt[:, None] - np.arange(24)[None] * STEP).min(1)
    np.testing.assert_allclose(dist, STEP / 2, rtol=1e-6)  # never a training instant
    assert tt.min() < 0.1 and tt.max() > 0.9  # spread over the sequence
    for k, f in enumerate(ft):
        i, c = divmod(k, len(dyn.TEST_CAMERAS))
        assert f["file_path"] == f"./test/c{c}_t{i:03d}"


def test_cameras_look_at_the_scene_centre():
    azimuths, elevations = [], []
    for split, fr in _frames():
        view_dir = assert_orbit_c2w(fr["transform_matrix"], dyn.LOOK_AT, dyn.RADIUS)
        if split == "train":
            d = -view_dir
            azimuths.append(math.degrees(math.atan2(d[1], d[0])))
            elevations.append(math.degrees(math.asin(d[2])))
    assert 14.0 <= min(elevations) and max(elevations) <= 46.0
    az = np.sort(np.unique(np.round(azimuths, 6)))
    gaps = np.diff(np.concatenate([az, az[:1] + 360.0]))
    assert 180.0 <= 360.0 - gaps.max() <= 220.0  # the smallest arc holding every train camera's azimuth
    # the test cameras are not train cameras
    tr = np.array([np.array(f["transform_matrix"])[:3, 2] for f in _meta("train")["frames"][:N_CAMS]])
    te = np.array([np.array(f["transform_matrix"])[:3, 2] for f in _meta("test")["frames"][:2]])
    assert np.degrees(np.arccos(np.clip(te @ tr.T, -1, 1))).min() > 10.0


def test_images_rgba_with_coverage_alpha():
    for split, fr in _frames():
        img = _image(fr["file_path"])
        assert img.shape == (dyn.HEIGHT, dyn.WIDTH, 4) and img.dtype == np.uint8, fr["file_path"]
        a = img[..., 3]
        assert 0.2 < (a == 255).mean() < 0.8, fr["file_path"]  # the scene, on a transparent background
        assert a[0, 0] == 0 and a[0, -1] == 0, fr["file_path"]  # corners: the hidden environment
        assert ((a > 0) & (a < 255)).sum() > 150, fr["file_path"]  # partial coverage at the silhouettes
        assert np.ptp(img[..., :3][a == 255].astype(int) @ [1, 1, 1]) > 300, fr["file_path"]  # contrast


def test_something_moves():
    """For every train camera the first and last instants differ well beyond the rendering noise: mean
    absolute difference (0-255, on white) measured 4.1-6.8 with 4.4-7.5 % of the pixels changed by more
    than 40 levels; the same view rendered twice with two seeds gives 0.3-0.46 and none."""
    for c in range(N_CAMS):
        a = _on_white(_image(f"./train/c{c}_t000"))
        b = _on_white(_image(f"./train/c{c}_t023"))
        diff = np.abs(a - b)
        assert diff.mean() > 2.5, (c, diff.mean())
        assert (diff.max(-1) > 40).mean() > 0.025, (c, (diff.max(-1) > 40).mean())


# -- the moving objects are where the scene's motion says, in every camera at every instant --------


def _hsv(rgb8: np.ndarray):
    x = rgb8.astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    d = np.maximum(mx - mn, 1e-9)
    s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    return h, s, mx


def _blob(img, uv, radius_px, hue):
    """Centroid and count of the pixels of the ball's colour within a window around uv."""
    H, W = img.shape[:2]
    win = radius_px + 3.0
    x0, x1 = max(0, int(uv[0] - win)), min(W, int(uv[0] + win) + 1)
    y0, y1 = max(0, int(uv[1] - win)), min(H, int(uv[1] + win) + 1)
    patch = img[y0:y1, x0:x1]
    h, s, v = _hsv(patch[..., :3])
    m = (np.abs((h - hue + 180.0) % 360.0 - 180.0) < 12.0) & (s > 0.55) & (v > 0.15) & (patch[..., 3] > 128)
    if not m.any():
        return None, 0
    ys, xs = np.nonzero(m)
    return np.array([xs.mean() + x0 + 0.5, ys.mean() + y0 + 0.5]), int(m.sum())


def _hits_box(o, p, centre, half):
    """Whether the segment o -> p crosses the axis-aligned box."""
    d = p - o
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (centre - half - o) / d, (centre + half - o) / d
    tmin = np.nanmax(np.minimum(t1, t2))
    tmax = np.nanmin(np.maximum(t1, t2))
    return bool(tmax >= max(tmin, 0.0) and tmin <= 1.0)


def _hits_sphere(o, p, centre, radius):
    d = p - o
    t = np.clip((centre - o) @ d / (d @ d), 0.0, 1.0)
    return bool(np.linalg.norm(o + t * d - centre) < radius)


def _visibility(c2w, centre, radius, t, which):
    """'visible' when rays to the centre and 8 points of the ball's silhouette all miss every other
    object, 'hidden' when they all hit the wall, else None (partly hidden: not judged)."""
    eye, right, up = c2w[:3, 3], c2w[:3, 0], c2w[:3, 1]
    wall = (np.asarray(dyn.WALL[0]), np.asarray(dyn.WALL[1]))
    (cx, cy), ch = dyn.CUBE[0], dyn.CUBE[1]
    others = [(np.array([cx, cy, ch]), ch * math.sqrt(3.0))]
    others.append((dyn.bouncer_center(t), dyn.BOUNCER[1]) if which == "ball" else (dyn.ball_center(t), dyn.BALL))
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    targets = [centre] + [centre + radius * (math.cos(a) * right + math.sin(a) * up) for a in angles]
    wall_hits = [_hits_box(eye, q, *wall) for q in targets]
    if all(wall_hits):
        return "hidden"
    if not any(wall_hits) and not any(_hits_sphere(eye, q, c, r) for q in targets for c, r in others):
        return "visible"
    return None


def _ball_agreement(time_of=lambda t: t):
    """Over every frame: (fraction of 'visible' cases where the ball's colour blob is centred within 1.5 px
    of the projection of its 3D centre at time_of(frame time), fraction of 'hidden' cases with no more
    than 2 pixels of its colour there, number of visible cases, number of hidden cases), for both balls."""
    K = base.intrinsics(dyn.WIDTH, dyn.HEIGHT, _meta("train")["camera_angle_x"])
    ok_v = n_v = ok_h = n_h = 0
    for _, fr in _frames():
        img = _image(fr["file_path"])
        c2w = np.array(fr["transform_matrix"], dtype=np.float64)
        t = fr["time"]
        for which, centre_fn, radius, hue in (("ball", dyn.ball_center, dyn.BALL, dyn.BALL_HUE),
                                              ("bouncer", dyn.bouncer_center, dyn.BOUNCER[1], dyn.BOUNCER_HUE)):
            centre = centre_fn(time_of(t))
            uv, z = base.project(centre[None], c2w, K)
            uv, z = uv[0], z[0]
            if not (8 <= uv[0] <= dyn.WIDTH - 8 and 8 <= uv[1] <= dyn.HEIGHT - 8):
                continue
            rad = K[0, 0] * radius / z
            vis = _visibility(c2w, centre_fn(t), radius, t, which)  # what the image really shows
            c, count = _blob(img, uv, rad, hue)
            if vis == "visible":
                n_v += 1
                ok_v += c is not None and count >= 0.3 * math.pi * rad * rad and np.linalg.norm(c - uv) < 1.5
            elif vis == "hidden":
                n_h += 1
                ok_h += count <= 2
    return ok_v / max(n_v, 1), ok_h / max(n_h, 1), n_v, n_h


def test_moving_balls_agree_with_the_motion_in_every_view():
    """Project the red ball's and the bouncing ball's 3D centres at each frame's time into its camera: where
    the geometry says a ball is in full view its coloured blob is centred there (every camera at every
    instant agrees with one 3D motion), where it is behind the wall (occlusion in time) none of it shows."""
    vis_rate, hid_rate, n_vis, n_hid = _ball_agreement()
    assert n_vis >= 200 and n_hid >= 15, (n_vis, n_hid)
    assert vis_rate >= 0.97, vis_rate
    assert hid_rate >= 0.97, hid_rate


def test_ball_check_detects_wrong_times():
    """The check above fails on a time error: with the times of the sequence reversed, few blobs match."""
    vis_rate, _, n_vis, _ = _ball_agreement(time_of=lambda t: 1.0 - t)
    assert n_vis >= 100 and vis_rate < 0.3, (vis_rate, n_vis)


def test_points_sample_several_instants():
    """points3d.ply: surface points coloured by the renders, on the disk and the objects; its red points
    sit on the red ball at the instants it was sampled at (dyn.POINT_STEPS), at more than one place."""
    xyz, rgb = base.read_points_ply(ROOT / "points3d.ply")
    assert len(xyz) == 8000 and rgb.dtype == np.uint8
    assert np.linalg.norm(xyz[:, :2], axis=1).max() < dyn.DISK_RADIUS + 0.02
    assert xyz[:, 2].min() > -0.02 and xyz[:, 2].max() < 0.9
    h, s, v = _hsv(rgb)
    red = (np.abs((h - dyn.BALL_HUE + 180) % 360 - 180) < 12) & (s > 0.6) & (v > 0.15)
    assert red.sum() > 50
    centres = dyn.ball_center(np.array(dyn.POINT_STEPS) / (dyn.N_TIMES - 1))
    d = np.linalg.norm(xyz[red][:, None] - centres[None], axis=-1)
    assert (d.min(1) < dyn.BALL + 0.02).mean() > 0.9
    assert len(set(d.argmin(1)[d.min(1) < dyn.BALL + 0.02].tolist())) >= 3


def test_blender_loader_reads_times():
    from splat.data import load_dataset

    ds = load_dataset(ROOT)
    assert len(ds.train) == 144 and len(ds.test) == 16
    for split, name in ((ds.train, "train"), (ds.test, "test")):
        want = np.array([f["time"] for f in _meta(name)["frames"]], np.float32)
        assert split.times is not None
        np.testing.assert_allclose(split.times, want, atol=1e-7)
        assert split.images[0].shape == (dyn.HEIGHT, dyn.WIDTH, 3)
    # the loader's cameras are the json's (OpenGL c2w -> OpenCV w2c)
    c2w = np.array(_meta("train")["frames"][3]["transform_matrix"])
    np.testing.assert_allclose(ds.train.viewmats[3], np.linalg.inv(c2w @ np.diag([1.0, -1.0, -1.0, 1.0])), atol=1e-5)


def test_missing_scene_without_mitsuba_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dyn, "COMMITTED", tmp_path / "absent")
    monkeypatch.setitem(sys.modules, "mitsuba", None)  # import mitsuba raises ImportError
    with pytest.raises(FileNotFoundError, match="pip install mitsuba") as e:
        dyn.dynamic_scene_path()
    assert "scenes.dynamic_scene" in str(e.value) and str(tmp_path / "scenes" / "dynamic") in str(e.value)


@pytest.mark.slow
def test_monocular_and_n3v_variants_render_and_load(tmp_path):
    """Small renders of the two other layouts (needs Mitsuba; about 10 s), read back by splat.data."""
    pytest.importorskip("mitsuba")
    from splat.data import load_dataset

    mono = dyn.generate(tmp_path / "mono", width=32, spp=4, monocular=True, n_train=12, n_test=3, n_points=500,
                        threads=2, verbose=False)
    ds = load_dataset(mono)
    assert len(ds.train) == 12 and len(ds.test) == 3
    np.testing.assert_allclose(ds.train.times, np.arange(12) / 11, atol=1e-6)
    assert set(np.round(ds.test.times * 22).astype(int).tolist()) <= set(range(1, 22, 2))  # half-way instants
    eyes = [np.linalg.inv(v)[:3, 3] for v in ds.train.viewmats]
    assert min(np.linalg.norm(a - b) for a, b in zip(eyes, eyes[1:])) > 0.2  # the camera jumps around

    n3v = dyn.generate_n3v(tmp_path / "n3v", width=32, spp=4, n_frames=5, threads=2, verbose=False)
    pb = np.load(n3v / "poses_bounds.npy")
    assert pb.shape == (len(dyn.N3V_OFFSETS), 17) and pb.dtype == np.float64
    assert np.all(pb[:, 15] > 0) and np.all(pb[:, 16] > pb[:, 15])
    ds = load_dataset(n3v, normalize=False)
    assert ds.format == "n3v" and len(ds.test) == 5 and len(ds.train) == 5 * (len(dyn.N3V_OFFSETS) - 1)
    c2w = dyn.n3v_cameras()[0]  # cam00, the middle of the arc, is DyNeRF's held-out test camera
    np.testing.assert_allclose(ds.test.viewmats[0], np.linalg.inv(c2w @ np.diag([1.0, -1.0, -1.0, 1.0])), atol=1e-5)
    np.testing.assert_allclose(ds.test.times, np.arange(5) / 4, atol=1e-6)
    img = ds.test.images[0]
    assert img.shape == (dyn.n3v_height(32), 32, 3) and img[0, 0].min() > 240  # composited on white
