"""The committed relightable scene (scenes/data/relightable: NeRF-synthetic layout, one point light per frame):
layout, light keys, cameras, light placement, images; and a tiny render (needs Mitsuba, skipped without it).

The committed-file tests read the files only (no rendering, no Mitsuba)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scene_utils import assert_orbit_c2w

# loaded by path, like test_default_scene (in the tests, `scenes` may be another module; relight_scene finds
# default_scene itself)
_spec = importlib.util.spec_from_file_location(
    "splat_relight_scene", Path(__file__).resolve().parents[1] / "scenes" / "relight_scene.py")
rs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rs)

ROOT = rs.COMMITTED
KEYS = {"file_path", "transform_matrix", "light_position", "light_intensity"}


def _meta(split, root=None):
    return json.loads((Path(root or ROOT) / f"transforms_{split}.json").read_text())


def _frames(root=None):
    for split in ("train", "test"):
        yield from ((split, fr) for fr in _meta(split, root)["frames"])


def _image(fr, root=None) -> np.ndarray:
    return np.asarray(Image.open(Path(root or ROOT) / (fr["file_path"] + ".png")))


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _angles(a, b) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(_unit(a) @ _unit(b).T, -1.0, 1.0)))


def _light_dirs(split):
    return np.array([fr["light_position"] for fr in _meta(split)["frames"]]) - np.asarray(rs.LOOK_AT)


def _camera_dirs(split):
    return np.array([np.array(fr["transform_matrix"])[:3, 3] for fr in _meta(split)["frames"]]) - rs.LOOK_AT


def test_layout():
    assert ROOT.is_dir(), f"{ROOT} is missing: run python scenes/relight_scene.py"
    assert rs.relight_scene_path() == ROOT
    for split, n in (("train", rs.N_TRAIN), ("test", rs.N_TEST)):
        meta = _meta(split)
        assert set(meta) == {"camera_angle_x", "frames"}
        assert meta["camera_angle_x"] == pytest.approx(math.radians(40.0))
        assert len(meta["frames"]) == n == (100 if split == "train" else 20)
        for i, fr in enumerate(meta["frames"]):
            assert set(fr) == KEYS, fr.keys()
            assert fr["file_path"] == f"{split}/r_{i:03d}"  # relative, no extension
            assert (ROOT / (fr["file_path"] + ".png")).is_file(), fr["file_path"]
    assert not (ROOT / "points3d.ply").exists()  # training starts from random points
    pngs = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.png"))
    assert pngs == sorted(fr["file_path"] + ".png" for _, fr in _frames())  # nothing else
    assert sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file()) < 5e6


def test_light_keys_finite_and_on_the_shell():
    for split, fr in _frames():
        lp, li = fr["light_position"], fr["light_intensity"]
        assert isinstance(lp, list) and isinstance(li, list) and len(lp) == 3 and len(li) == 3, fr["file_path"]
        assert all(isinstance(x, float) and math.isfinite(x) for x in lp + li), fr["file_path"]
        d = np.asarray(lp) - rs.LOOK_AT
        r = np.linalg.norm(d)
        assert rs.LIGHT_DISTANCE[0] - 1e-6 <= r <= rs.LIGHT_DISTANCE[1] + 1e-6, fr["file_path"]
        el = math.degrees(math.asin(d[2] / r))
        assert rs.LIGHT_ELEVATION[0] - 1e-6 <= el <= rs.LIGHT_ELEVATION[1] + 1e-6, fr["file_path"]
        li = np.asarray(li)
        assert li.min() > 0 and li.max() / li.min() < 1.3, fr["file_path"]  # grey or slightly tinted
        # W/sr scaled with the distance squared: 2-4.5 W/m^2 at the centre, whatever the distance
        assert 2.0 < li.mean() / r ** 2 < 4.5, fr["file_path"]
    # every frame has its own light; they cover all azimuths
    lights = np.array([fr["light_position"] for _, fr in _frames()])
    assert len(np.unique(lights.round(6), axis=0)) == rs.N_TRAIN + rs.N_TEST
    az = np.sort(np.degrees(np.arctan2(_light_dirs("train")[:, 1], _light_dirs("train")[:, 0])))
    assert np.diff(np.concatenate([az, az[:1] + 360.0])).max() < 45.0


def test_test_lights_are_new():
    sep = _angles(_light_dirs("test"), _light_dirs("train")).min(1)
    assert sep.min() >= rs.MIN_TEST_LIGHT_SEP - 1e-6 >= 10.0 - 1e-6, sep
    # a check of the check: the train lights themselves are much closer to each other
    tr = _angles(_light_dirs("train"), _light_dirs("train")) + 1e9 * np.eye(rs.N_TRAIN)
    assert tr.min(1).mean() < 10.0


def test_cameras_look_at_the_scene_and_test_cameras_are_new():
    for split, fr in _frames():
        assert_orbit_c2w(fr["transform_matrix"], rs.LOOK_AT, rs.RADIUS)
        assert fr["transform_matrix"][2][3] > rs.LOOK_AT[2]  # on the upper hemisphere
    sep = _angles(_camera_dirs("test"), _camera_dirs("train")).min(1)
    assert sep.min() >= rs.MIN_TEST_CAMERA_SEP - 1e-6 >= 5.0 - 1e-6, sep


def test_images_rgba_coverage_and_exposure():
    p95 = []
    clipped = []
    for split, fr in _frames():
        img = _image(fr)
        assert img.shape == (rs.HEIGHT, rs.WIDTH, 4) == (128, 128, 4) and img.dtype == np.uint8, fr["file_path"]
        a = img[..., 3]
        assert (a == 0).any() and (a == 255).any(), fr["file_path"]
        assert a[0, 0] == 0 and a[-1, -1] == 0, fr["file_path"]  # corners: background
        assert np.all(img[..., :3][a == 0] == 0), fr["file_path"]  # black where nothing is
        assert 0.08 < (a > 0).mean() < 0.45, fr["file_path"]
        cols = np.flatnonzero(a.max(0) > 0)
        assert 0.55 <= (cols[-1] - cols[0] + 1) / rs.WIDTH <= 0.75, fr["file_path"]  # the scene fills ~2/3
        rgb = img[..., :3][a == 255]
        assert rgb.max() > 120, fr["file_path"]  # not all black: something is lit
        lin = (rgb / 255.0 + 0.055) / 1.055
        lin = np.where(rgb / 255.0 <= 0.04045, rgb / 255.0 / 12.92, lin ** 2.4)
        p95.append(np.percentile(lin, 95))
        clipped.append((rgb == 255).mean())
    # well exposed: lit surfaces read ~0.3-0.7 in linear, little clipping
    assert 0.3 < np.median(p95) < 0.7, np.median(p95)
    assert np.mean(clipped) < 0.005 and max(clipped) < 0.05


def test_images_are_lit_by_their_own_light():
    """A view whose light is on the camera's side is bright, one lit from behind the objects is dark: the
    brightness of the opaque pixels follows the cosine between the camera's and the light's directions
    (from LOOK_AT). Pairing frames with another frame's light loses that."""
    dots, bright = [], []
    for split, fr in _frames():
        img = _image(fr).astype(np.float64)
        c = _unit(np.array(fr["transform_matrix"])[:3, 3] - rs.LOOK_AT)
        ell = _unit(np.asarray(fr["light_position"]) - rs.LOOK_AT)
        dots.append(float(c @ ell))
        bright.append(img[..., :3][img[..., 3] == 255].mean())
    dots, bright = np.array(dots), np.array(bright)
    assert np.corrcoef(dots, bright)[0, 1] > 0.8
    assert bright[dots > 0.5].mean() > 2.0 * bright[dots < -0.3].mean()
    shuffled = np.roll(bright, 7)
    assert abs(np.corrcoef(dots, shuffled)[0, 1]) < 0.5


def test_views_are_seeded_and_reproducible():
    """The committed cameras and lights are the ones views() draws (so regenerating gives the same set)."""
    v = rs.views(rs.N_TRAIN, rs.N_TEST, rs.SEEDS["default"])
    for split in ("train", "test"):
        for (c2w, (lp, li)), fr in zip(v[split], _meta(split)["frames"]):
            np.testing.assert_allclose(fr["transform_matrix"], c2w, atol=1e-12)
            np.testing.assert_allclose(fr["light_position"], lp, atol=1e-12)
            np.testing.assert_allclose(fr["light_intensity"], li, atol=1e-12)
    h = rs.views(rs.N_TRAIN, rs.N_TEST, rs.SEEDS["heldout"])
    assert not np.allclose(h["train"][0][0], v["train"][0][0])  # the held-out set has its own cameras


def test_missing_heldout_without_generating_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLAT_CACHE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--variant heldout") as e:
        rs.heldout_scene_path(generate=False)
    assert str(tmp_path / "scenes" / "relight_heldout") in str(e.value)


def test_tiny_render_follows_the_light(tmp_path):
    """A tiny generation (needs Mitsuba; a few seconds): the format, and images that follow the light."""
    pytest.importorskip("mitsuba")
    out = rs.generate(tmp_path / "tiny", "default", width=16, n_train=2, n_test=1, spp=16, threads=2, verbose=False)
    frames = {s: _meta(s, out)["frames"] for s in ("train", "test")}
    assert [len(frames["train"]), len(frames["test"])] == [2, 1]
    for split, fr in _frames(out):
        assert set(fr) == KEYS
        img = _image(fr, out)
        assert img.shape == (16, 16, 4) and (img[..., 3] == 255).any() and (img[..., 3] == 0).any()

    # the PNG of frame 0 is its camera under its own light, not under frame 1's
    fr0, fr1 = frames["train"]
    c2w = np.array(fr0["transform_matrix"])
    png = _image(fr0, out).astype(np.float64)

    def err(light):
        img = rs.to_rgba8(rs.render_view(c2w, light["light_position"], light["light_intensity"], 16, 64,
                                              threads=2)).astype(np.float64)
        return np.abs(img - png).mean()

    assert err(fr0) < 0.5 * err(fr1), (err(fr0), err(fr1))

    # one camera, a light beside it (front) vs one opposite it behind the objects: front is much brighter
    eye = c2w[:3, 3] - rs.LOOK_AT
    az = math.degrees(math.atan2(eye[1], eye[0]))
    front = np.asarray(rs.LOOK_AT) + 3.0 * rs.direction(az + 20.0, 45.0)
    behind = np.asarray(rs.LOOK_AT) + 3.0 * rs.direction(az + 180.0, 15.0)
    intensity = [27.0, 27.0, 27.0]
    img_f = rs.render_view(c2w, front, intensity, 16, 64, threads=2)
    img_b = rs.render_view(c2w, behind, intensity, 16, 64, threads=2)
    np.testing.assert_allclose(img_f[..., 3], img_b[..., 3], atol=1e-6)  # coverage does not depend on the light
    opaque = img_f[..., 3] > 0.99
    assert img_f[..., :3][opaque].mean() > 3.0 * img_b[..., :3][opaque].mean()
    # twice the intensity, twice the radiance (linear, no other light)
    img_2 = rs.render_view(c2w, front, [54.0, 54.0, 54.0], 16, 64, threads=2)
    np.testing.assert_allclose(img_2[..., :3], 2.0 * img_f[..., :3], rtol=1e-3, atol=1e-4)
    # the held-out scene is another scene
    img_h = rs.render_view(c2w, front, intensity, 16, 64, "heldout", threads=2)
    assert np.abs(img_h - img_f).mean() > 0.02
