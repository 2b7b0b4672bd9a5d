"""splat.data for point-lit (relightable) NeRF-synthetic scenes: per-frame ``light_position`` and
``light_intensity`` in the blender loader, carried to Split and Cameras, checked for bad input, and
moved with the world by the normalising similarity. Every test writes its own small dataset into
tmp_path."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splat.data import DatasetError, load_dataset
from splat.data.common import (LoadedView, finish_dataset, make_split, opengl_c2w_to_viewmat, transform_lights,
                               transform_viewmats)
from scene_utils import blender_c2w

# ----------------------------------------------------------------------------------------------
# helpers




# distinct, non-round values so that a swap, a cast or a dropped frame shows
TRAIN_POS = [[3.25, -1.5, 2.0], [-2.75, 0.5, 4.125], [0.3, 3.7, -1.1]]
TRAIN_INT = [[10.0, 20.0, 30.0], [5.5, 0.0, 7.25], [100.0, 100.0, 100.0]]
TEST_POS = [[1.0, 2.0, 3.0], [-4.0, -5.0, 6.5]]
TEST_INT = [[1.5, 2.5, 3.5], [0.0, 0.0, 12.0]]


def make_lit(root: Path, train_pos=TRAIN_POS, train_int=TRAIN_INT, test_pos=TEST_POS, test_int=TEST_INT,
             times=None, W=8, H=8) -> None:
    """A point-lit NeRF-synthetic folder of 8x8 RGBA PNGs, cameras on a circle looking at the origin.
    A ``None`` position / intensity leaves that key out of the frame; ``times`` (train, test) adds
    ``time`` keys."""
    root.mkdir(parents=True, exist_ok=True)
    for split, pos, inten in (("train", train_pos, train_int), ("test", test_pos, test_int)):
        frames = []
        for i, (p, q) in enumerate(zip(pos, inten)):
            ang = 2 * math.pi * (i + (0.5 if split == "test" else 0.0)) / len(pos)
            c2w = blender_c2w([4 * math.sin(ang), -4 * math.cos(ang), 0.5])
            rng = np.random.default_rng(100 * (split == "test") + i)
            img = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
            (root / split).mkdir(exist_ok=True)
            Image.fromarray(img, "RGBA").save(root / split / f"r_{i:03d}.png")
            fr = {"file_path": f"./{split}/r_{i:03d}", "transform_matrix": c2w.tolist()}
            if p is not None:
                fr["light_position"] = p
            if q is not None:
                fr["light_intensity"] = q
            if times is not None:
                fr["time"] = times[split == "test"][i]
            frames.append(fr)
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.9, "frames": frames}))


def f32(a):
    return np.asarray(a, dtype=np.float32).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------
# loading


@pytest.mark.parametrize("normalize", [True, False])
def test_lights_reach_split_and_cameras(tmp_path, normalize):
    make_lit(tmp_path)
    ds = load_dataset(tmp_path, num_random_points=100, normalize=normalize)
    assert ds.format == "blender" and ds.meta["relightable"] is True
    np.testing.assert_array_equal(ds.transform, np.eye(4))  # blender is never normalised
    assert ds.train.names == [f"train/r_{i:03d}" for i in range(3)]
    assert ds.test.names == [f"test/r_{i:03d}" for i in range(2)]
    for split, pos, inten in ((ds.train, TRAIN_POS, TRAIN_INT), (ds.test, TEST_POS, TEST_INT)):
        assert split.light_positions.dtype == np.float32 and split.light_positions.shape == (len(pos), 3)
        assert split.light_intensities.dtype == np.float32 and split.light_intensities.shape == (len(pos), 3)
        np.testing.assert_array_equal(split.light_positions, f32(pos))
        np.testing.assert_array_equal(split.light_intensities, f32(inten))
        cams = split.cameras()
        assert cams.light_position.dtype == torch.float32
        np.testing.assert_array_equal(cams.light_position.numpy(), f32(pos))
        np.testing.assert_array_equal(cams.light_intensity.numpy(), f32(inten))
        assert cams.time is None and split.times is None
        assert split.alphas is not None and all(a is not None for a in split.alphas)  # RGBA kept
    # a subset, out of order
    cams = ds.train.cameras([2, 0])
    assert cams.names == ["train/r_002", "train/r_000"]
    np.testing.assert_array_equal(cams.light_position.numpy(), f32([TRAIN_POS[2], TRAIN_POS[0]]))
    np.testing.assert_array_equal(cams.light_intensity.numpy(), f32([TRAIN_INT[2], TRAIN_INT[0]]))
    one = ds.test.cameras(1)
    np.testing.assert_array_equal(one.light_position.numpy(), f32(TEST_POS[1]))
    np.testing.assert_array_equal(one.light_intensity.numpy(), f32(TEST_INT[1]))


def test_lights_survive_downscale(tmp_path):
    make_lit(tmp_path)
    ds = load_dataset(tmp_path, num_random_points=100, downscale=2)
    assert ds.train.widths == [4, 4, 4]
    np.testing.assert_array_equal(ds.train.light_positions, f32(TRAIN_POS))
    np.testing.assert_array_equal(ds.test.light_intensities, f32(TEST_INT))


def test_merged_split_keeps_order_and_empty_test_gets_empty_arrays(tmp_path):
    make_lit(tmp_path)
    ds = load_dataset(tmp_path, num_random_points=100, test_every=0)
    np.testing.assert_array_equal(ds.train.light_positions, f32(TRAIN_POS + TEST_POS))
    np.testing.assert_array_equal(ds.train.light_intensities, f32(TRAIN_INT + TEST_INT))
    assert len(ds.test) == 0
    assert ds.test.light_positions is not None and ds.test.light_positions.shape == (0, 3)
    assert ds.test.light_intensities is not None and ds.test.light_intensities.shape == (0, 3)


def test_lights_and_times_coexist(tmp_path):
    times = ([0.0, 0.5, 1.0], [0.25, 0.75])
    make_lit(tmp_path, times=times)
    ds = load_dataset(tmp_path, num_random_points=100)
    assert ds.meta["relightable"] is True and ds.meta["dynamic"] is True
    np.testing.assert_array_equal(ds.train.times, np.float32(times[0]))
    cams = ds.test.cameras()
    np.testing.assert_array_equal(cams.time.numpy(), np.float32(times[1]))
    np.testing.assert_array_equal(cams.light_position.numpy(), f32(TEST_POS))
    np.testing.assert_array_equal(cams.light_intensity.numpy(), f32(TEST_INT))


def test_integer_components_are_accepted(tmp_path):
    make_lit(tmp_path, train_pos=[[1, 2, 3]] * 3, train_int=[[4, 0, 0]] * 3)
    ds = load_dataset(tmp_path, num_random_points=100)
    np.testing.assert_array_equal(ds.train.light_positions, f32([[1, 2, 3]] * 3))
    np.testing.assert_array_equal(ds.train.light_intensities, f32([[4, 0, 0]] * 3))


def test_unlit_dataset_has_no_lights(tmp_path):
    make_lit(tmp_path, train_pos=[None] * 3, train_int=[None] * 3, test_pos=[None] * 2, test_int=[None] * 2)
    ds = load_dataset(tmp_path, num_random_points=100)
    assert "relightable" not in ds.meta
    for split in (ds.train, ds.test):
        assert split.light_positions is None and split.light_intensities is None
        cams = split.cameras()
        assert cams.light_position is None and cams.light_intensity is None


# ----------------------------------------------------------------------------------------------
# bad input: a DatasetError naming the file, the frame, the key and the problem

P, I = TRAIN_POS, TRAIN_INT


def _with(lst, i, value):
    out = list(lst)
    out[i] = value
    return out


BAD = [
    # one key without the other
    (dict(train_int=_with(I, 1, None)), "transforms_train.json", "missing key 'light_intensity' (frame 1)",
     "has 'light_position'"),
    (dict(test_pos=_with(TEST_POS, 0, None)), "transforms_test.json", "missing key 'light_position' (frame 0)",
     "has 'light_intensity'"),
    # not a list
    (dict(train_pos=_with(P, 2, "1, 2, 3")), "transforms_train.json", "key 'light_position' (frame 2)",
     "must be a list of 3 finite numbers, got '1, 2, 3' (a str, not a list)"),
    (dict(train_int=_with(I, 0, {"r": 1, "g": 1, "b": 1})), "transforms_train.json", "key 'light_intensity' (frame 0)",
     "got {'r': 1, 'g': 1, 'b': 1} (a dict, not a list)"),
    (dict(test_int=_with(TEST_INT, 1, 5.0)), "transforms_test.json", "key 'light_intensity' (frame 1)",
     "got 5.0 (a float, not a list)"),
    # wrong length
    (dict(train_pos=_with(P, 1, [1.0, 2.0])), "transforms_train.json", "key 'light_position' (frame 1)",
     "got [1.0, 2.0] (a list of 2)"),
    (dict(train_int=_with(I, 2, [1, 2, 3, 4])), "transforms_train.json", "key 'light_intensity' (frame 2)",
     "got [1, 2, 3, 4] (a list of 4)"),
    # non-numeric
    (dict(train_pos=_with(P, 0, [1.0, "2", 3.0])), "transforms_train.json", "key 'light_position' (frame 0)",
     "got [1.0, '2', 3.0] (component 1 is not a number)"),
    (dict(test_pos=_with(TEST_POS, 1, [True, 0, 0])), "transforms_test.json", "key 'light_position' (frame 1)",
     "got [True, 0, 0] (component 0 is not a number)"),
    (dict(train_int=_with(I, 1, [1.0, 1.0, None])), "transforms_train.json", "key 'light_intensity' (frame 1)",
     "got [1.0, 1.0, None] (component 2 is not a number)"),
    # NaN / inf (json writes them as NaN / Infinity, Python's reader takes them back)
    (dict(train_pos=_with(P, 2, [0.0, float("nan"), 1.0])), "transforms_train.json", "key 'light_position' (frame 2)",
     "got [0.0, nan, 1.0] (component 1 is not finite)"),
    (dict(test_int=_with(TEST_INT, 0, [float("inf"), 1.0, 1.0])), "transforms_test.json",
     "key 'light_intensity' (frame 0)", "got [inf, 1.0, 1.0] (component 0 is not finite)"),
    # intensity values
    (dict(train_int=_with(I, 1, [1.0, -0.5, 1.0])), "transforms_train.json", "key 'light_intensity' (frame 1)",
     "must be >= 0 in every component (a radiant intensity), got [1.0, -0.5, 1.0]"),
    (dict(test_int=_with(TEST_INT, 1, [0, 0.0, 0])), "transforms_test.json", "key 'light_intensity' (frame 1)",
     "is all zero, got [0, 0.0, 0]"),
    # some frames lit, others not
    (dict(train_pos=_with(P, 2, None), train_int=_with(I, 2, None)), "transforms_train.json",
     "missing lights: frame 2 has no 'light_position'",
     "(transforms_train.json frame 0 has light_position [3.25, -1.5, 2.0])"),
    (dict(test_pos=[None] * 2, test_int=[None] * 2), "transforms_test.json",
     "missing lights: frame 0 has no 'light_position'", "(transforms_train.json frame 0 has light_position"),
    (dict(train_pos=[None] * 3, train_int=[None] * 3), "transforms_train.json",
     "missing lights: frame 0 has no 'light_position'",
     "(transforms_test.json frame 0 has light_position [1.0, 2.0, 3.0])"),
]


@pytest.mark.parametrize("changes, file, where, problem", BAD)
def test_bad_lights_are_refused(tmp_path, changes, file, where, problem):
    make_lit(tmp_path, **changes)
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path, num_random_points=100)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / file) + ": "), msg
    assert where in msg, msg
    assert problem in msg, msg


def test_make_split_refuses_a_mix_of_lit_and_unlit_views():
    def view(name, lit):
        return LoadedView(name, np.zeros((2, 2, 3), np.uint8), None, np.eye(3), 2, 2, np.eye(4),
                          light_position=np.ones(3) if lit else None, light_intensity=np.ones(3) if lit else None)

    views = [view("a", True), view("b", False), view("c", True)]
    with pytest.raises(DatasetError, match=r"missing lights: view 'b' has no light but other views have one"):
        make_split(views, [0, 2], np.tile(np.eye(4), (3, 1, 1)))
    half = [view("a", True), LoadedView("d", np.zeros((2, 2, 3), np.uint8), None, np.eye(3), 2, 2, np.eye(4),
                                        light_position=np.ones(3))]
    with pytest.raises(DatasetError, match=r"view 'd' has a light position but no light intensity"):
        make_split(half, [0, 1], np.tile(np.eye(4), (2, 1, 1)))


# ----------------------------------------------------------------------------------------------
# normalisation: lights move with the world, intensities scale by s^2


def _similarity(s, axis, angle, b):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    R = np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K
    T = np.eye(4)
    T[:3, :3] = s * R
    T[:3, 3] = b
    return T


def test_transform_lights_keeps_irradiance():
    T = _similarity(0.37, [1.0, -2.0, 0.5], 1.1, [0.4, -3.0, 2.5])
    pos = np.array([[3.0, 1.0, -2.0], [0.5, 0.5, 4.0]])
    inten = np.array([[10.0, 5.0, 2.0], [1.0, 0.0, 3.0]])
    P, I = transform_lights(T, pos, inten)
    np.testing.assert_allclose(P, pos @ T[:3, :3].T + T[:3, 3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(I, inten * 0.37 ** 2, rtol=1e-12)
    x = np.array([[0.2, -0.1, 0.3], [-1.0, 2.0, 0.0]])  # surface points
    xt = x @ T[:3, :3].T + T[:3, 3]
    for k in range(2):
        before = inten[k] / np.sum((pos[k] - x[k]) ** 2)
        after = I[k] / np.sum((P[k] - xt[k]) ** 2)
        np.testing.assert_allclose(after, before, rtol=1e-12)


def test_finish_dataset_transforms_lights_with_the_similarity():
    s = 2.5
    T = _similarity(s, [0.3, 1.0, -0.7], -0.8, [1.0, 2.0, -0.5])
    rng = np.random.default_rng(0)
    cams = [blender_c2w([4 * math.sin(a), -4 * math.cos(a), 0.5]) for a in (0.0, 1.5, 3.0, 4.5)]
    vms = [opengl_c2w_to_viewmat(c) for c in cams]
    pos = rng.normal(size=(4, 3)) * 3
    inten = rng.uniform(0.5, 20.0, size=(4, 3))
    views = [LoadedView(f"v{i}", np.zeros((4, 4, 3), np.uint8), None, np.diag([4.0, 4.0, 1.0]), 4, 4, vms[i],
                        light_position=pos[i].copy(), light_intensity=inten[i].copy()) for i in range(4)]
    kw = dict(fmt="test", root=Path("."), views=views, train_idx=[0, 1, 3], test_idx=[2],
              points=rng.normal(size=(10, 3)), points_rgb=np.zeros((10, 3), np.uint8), similarity=T,
              num_random_points=0, max_init_points=None, seed=0, background=np.ones(3))
    ds = finish_dataset(normalize=True, **kw)
    np.testing.assert_allclose(ds.transform, T)
    want_P = pos @ T[:3, :3].T + T[:3, 3]
    want_I = inten * s * s
    np.testing.assert_allclose(ds.train.light_positions, want_P[[0, 1, 3]].astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(ds.test.light_positions, want_P[[2]].astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(ds.train.light_intensities, want_I[[0, 1, 3]].astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(ds.test.light_intensities, want_I[[2]].astype(np.float32), rtol=1e-6)
    # consistent with the cameras: the light in camera coordinates scales by s like every point
    vm_new = transform_viewmats(T, np.stack(vms))
    for i in range(4):
        cam_old = vms[i][:3, :3] @ pos[i] + vms[i][:3, 3]
        cam_new = vm_new[i][:3, :3] @ want_P[i] + vm_new[i][:3, 3]
        np.testing.assert_allclose(cam_new, s * cam_old, atol=1e-9)
    # the views handed in are untouched (no transform applied twice on a reload)
    np.testing.assert_array_equal(views[0].light_position, pos[0])
    np.testing.assert_array_equal(views[0].light_intensity, inten[0])
    # without normalisation the lights are as given
    ds = finish_dataset(normalize=False, **kw)
    np.testing.assert_array_equal(ds.train.light_positions, pos[[0, 1, 3]].astype(np.float32))
    np.testing.assert_array_equal(ds.train.light_intensities, inten[[0, 1, 3]].astype(np.float32))
