"""splat.data for dynamic (4D) scenes: D-NeRF times in the blender loader and the Neural 3D Video
(multi-view video) loader. Every test writes its own small dataset into tmp_path."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splat.data import DatasetError, detect_format, load_dataset
from scene_utils import blender_c2w

# ----------------------------------------------------------------------------------------------
# helpers


def project(viewmat, K, pts):
    """Pixel coordinates (corner convention) and depths of world points ``pts`` [P, 3]."""
    pc = np.asarray(pts, float) @ viewmat[:3, :3].T + viewmat[:3, 3]
    uv = pc @ K.T
    return uv[:, :2] / uv[:, 2:3], pc[:, 2]


def transform_points(T, pts):
    return np.asarray(pts, float) @ T[:3, :3].T + T[:3, 3]


def look_at_viewmat(centre, target, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """OpenCV world->camera matrix (x right, y down, z forward) of a camera at ``centre`` looking
    at ``target``, its image-up direction close to ``up``."""
    c = np.asarray(centre, float)
    z = np.asarray(target, float) - c
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))  # right = forward x up (y down = -up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    V = np.eye(4)
    V[:3, :3] = R
    V[:3, 3] = -R @ c
    return V


# ----------------------------------------------------------------------------------------------
# D-NeRF (blender layout with per-frame times)




TRAIN_TIMES = [0.125, 0.125, 0.5, 0.75]  # two cameras at the first instant (multi-view)
TEST_TIMES = [0.0625, 0.9375]


def make_dnerf(root: Path, train_times=TRAIN_TIMES, test_times=TEST_TIMES, W=20, H=16, angle=0.9):
    """A D-NeRF folder; a ``None`` time leaves the key out of that frame. Returns {name: c2w}."""
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, times in (("train", train_times), ("test", test_times)):
        frames = []
        for i, t in enumerate(times):
            ang = 2 * math.pi * (i + (0.5 if split == "test" else 0.0)) / len(times)
            c2w = blender_c2w([4 * math.sin(ang), -4 * math.cos(ang), 0.5])
            img = np.random.default_rng(100 * (split == "test") + i).integers(0, 256, (H, W, 3), dtype=np.uint8)
            (root / split).mkdir(exist_ok=True)
            Image.fromarray(img).save(root / split / f"r_{i:03d}.png")
            fr = {"file_path": f"./{split}/r_{i:03d}", "transform_matrix": c2w.tolist()}
            if t is not None:
                fr["time"] = t
            frames.append(fr)
            truth[f"{split}/r_{i:03d}"] = c2w
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    return truth


def test_dnerf_times_reach_split_and_cameras(tmp_path):
    truth = make_dnerf(tmp_path / "dyn")
    assert detect_format(tmp_path / "dyn") == "blender"
    ds = load_dataset(tmp_path / "dyn")
    assert ds.format == "blender"
    assert ds.train.times.dtype == np.float32 and ds.test.times.dtype == np.float32
    np.testing.assert_array_equal(ds.train.times, TRAIN_TIMES)
    np.testing.assert_array_equal(ds.test.times, TEST_TIMES)
    assert ds.train.cameras().time.tolist() == TRAIN_TIMES
    assert ds.test.cameras(1).time.tolist() == [TEST_TIMES[1]]
    assert ds.time_range == (0.0625, 0.9375)  # min from test, max from test: both splits count
    assert ds.meta["dynamic"] is True and ds.meta["num_frames"] == 5  # 0.125 twice

    # the same frames without times: a static scene with identical cameras and images
    make_dnerf(tmp_path / "static", train_times=[None] * 4, test_times=[None] * 2)
    st = load_dataset(tmp_path / "static")
    assert st.train.times is None and st.test.times is None and st.time_range is None
    assert "dynamic" not in st.meta and "num_frames" not in st.meta
    for a, b in ((ds.train, st.train), (ds.test, st.test)):
        assert a.names == b.names
        np.testing.assert_array_equal(a.viewmats, b.viewmats)
        np.testing.assert_array_equal(a.Ks, b.Ks)
        for x, y in zip(a.images, b.images):
            np.testing.assert_array_equal(x, y)
    # and the blender convention itself: the origin (looked at) is at the image centre, world +z up
    fx = 0.5 * 20 / math.tan(0.45)
    for i, name in enumerate(ds.train.names):
        V, K = ds.train.viewmats[i].astype(np.float64), ds.train.Ks[i].astype(np.float64)
        np.testing.assert_allclose(K, [[fx, 0, 10], [0, fx, 8], [0, 0, 1]], rtol=1e-6)
        np.testing.assert_allclose(np.linalg.inv(V)[:3, 3], truth[name][:3, 3], atol=1e-5)
        uv, z = project(V, K, [[0, 0, 0], [0, 0, 0.3]])
        assert np.all(z > 0)
        np.testing.assert_allclose(uv[0], [10, 8], atol=1e-4)
        assert uv[1, 1] < uv[0, 1] - 1


def test_dnerf_test_every_zero_merges_times(tmp_path):
    make_dnerf(tmp_path)
    ds = load_dataset(tmp_path, test_every=0)
    np.testing.assert_array_equal(ds.train.times, TRAIN_TIMES + TEST_TIMES)
    assert len(ds.test) == 0 and ds.test.times is not None and ds.test.times.shape == (0,)
    assert ds.time_range == (0.0625, 0.9375)


@pytest.mark.parametrize("train_times, test_times, error", [
    ([0.125, 0.25, None, 0.5], TEST_TIMES,
     (r"transforms_train\.json: missing times: frame 2 has no 'time', but other frames have one "
      r"\(transforms_train\.json frame 0 has time 0\.125\)")),
    (TRAIN_TIMES, [0.0625, None],
     r"transforms_test\.json: missing times: frame 1 has no 'time'.*transforms_train\.json frame 0"),
    ([None] * 4, TEST_TIMES,
     r"transforms_train\.json: missing times: frame 0 has no 'time'.*transforms_test\.json frame 0 has time 0\.0625"),
    ([0.0, 0.25, 1.5, 1.5], TEST_TIMES, r"transforms_train\.json: key 'time' \(frame 2\) must be in \[0, 1\], got 1\.5"),
    (TRAIN_TIMES, [-0.25, 0.5], r"transforms_test\.json: key 'time' \(frame 0\) must be in \[0, 1\], got -0\.25"),
    ([0.0, "0.5", 0.75, 1.0], TEST_TIMES,
     r"transforms_train\.json: key 'time' \(frame 1\) must be a finite number, got '0\.5'"),
    ([0.0, 0.25, float("nan"), 1.0], TEST_TIMES,
     r"transforms_train\.json: key 'time' \(frame 2\) must be a finite number, got nan"),
    ([0.0, True, 0.75, 1.0], TEST_TIMES,
     r"transforms_train\.json: key 'time' \(frame 1\) must be a finite number, got True"),
    ([0.125, 0.5, 0.25, 0.75], TEST_TIMES,
     r"transforms_train\.json: frames out of time order: frame 2 has time 0\.25 after frame 1 with time 0\.5"),
    (TRAIN_TIMES, [0.9375, 0.0625],
     r"transforms_test\.json: frames out of time order: frame 1 has time 0\.0625 after frame 0 with time 0\.9375"),
])
def test_dnerf_bad_times(tmp_path, train_times, test_times, error):
    make_dnerf(tmp_path, train_times=train_times, test_times=test_times)
    with pytest.raises(DatasetError, match=error):
        load_dataset(tmp_path)


# ----------------------------------------------------------------------------------------------
# Neural 3D Video


W, H, FOCAL, NF = 32, 24, 30.0, 6
CENTRES = [(0.0, 0.0, 0.0), (0.6, 0.1, 0.05), (-0.5, -0.2, 0.1)]  # a forward-facing rig
TARGET = (0.1, 0.0, 5.0)
PROBE = np.array([[0.3, -0.4, 4.0], [0.1, 0.0, 5.0], [-0.5, 0.3, 6.5]])  # world points seen by every camera


def llff_row(V: np.ndarray, H: float, W: float, focal: float, near=0.5, far=20.0) -> np.ndarray:
    """A poses_bounds row from an OpenCV world->camera matrix: camera-to-world columns in LLFF's
    [down, right, back] order (OpenCV's [y, x, -z]), the centre, [H, W, focal]; then near, far."""
    c2w = np.linalg.inv(V)
    x, y, z, c = c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3]
    m = np.stack([y, x, -z, c, [H, W, focal]], axis=1)  # [3, 5]
    return np.concatenate([m.ravel(), [near, far]])


def frame_content(cam: int, f: int, w: int = W, h: int = H) -> np.ndarray:
    """Smooth frames (lossless-ish through x264) that differ per camera and per frame."""
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    img = np.empty((h, w, 3))
    img[..., 0] = 20 + 35 * f + 2 * jj
    img[..., 1] = 30 + 50 * cam + 2 * ii
    img[..., 2] = 128 + 40 * np.sin(jj / 5.0 + cam)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_video(path: Path, frames) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, np.stack(frames), plugin="FFMPEG", fps=10, codec="libx264", macro_block_size=1,
                pixelformat="yuv444p", output_params=["-crf", "0"])


def make_n3v(root: Path, n_frames=(NF, NF, NF), size=(W, H), pose_size=(W, H), focal=FOCAL) -> list[np.ndarray]:
    """An N3V folder with one camera per CENTRES entry; returns the true OpenCV viewmats."""
    root.mkdir(parents=True, exist_ok=True)
    Vs = [look_at_viewmat(c, TARGET) for c in CENTRES]
    rows = [llff_row(V, pose_size[1], pose_size[0], focal, near=0.5 + 0.1 * i, far=20.0 + i) for i, V in enumerate(Vs)]
    np.save(root / "poses_bounds.npy", np.stack(rows))
    for c, n in enumerate(n_frames):
        write_video(root / f"cam{c:02d}.mp4", [frame_content(c, f, *size) for f in range(n)])
    return Vs


def assert_frame(img, cam, f, w=W, h=H, tol=3.0):
    want = frame_content(cam, f, w, h).astype(np.float64)
    assert img.shape == want.shape and img.dtype == np.uint8
    assert np.abs(img.astype(np.float64) - want).mean() < tol


@pytest.mark.parametrize("normalize", [False, True])
def test_n3v_cameras_split_times_and_frames(tmp_path, normalize):
    Vs = make_n3v(tmp_path)
    assert detect_format(tmp_path) == "n3v"
    ds = load_dataset(tmp_path, normalize=normalize, num_random_points=500)
    assert ds.format == "n3v"
    # DyNeRF's split: cam00 is the test camera, every frame of it
    assert ds.test.names == [f"cam00/{f:04d}" for f in range(NF)]
    assert ds.train.names == [f"cam{c:02d}/{f:04d}" for c in (1, 2) for f in range(NF)]
    times = np.arange(NF) / (NF - 1)
    np.testing.assert_allclose(ds.test.times, times, atol=1e-7)
    np.testing.assert_allclose(ds.train.times, np.tile(times, 2), atol=1e-7)
    np.testing.assert_allclose(ds.test.cameras().time.numpy(), times, atol=1e-7)
    assert ds.time_range == (0.0, 1.0)
    for split in (ds.train, ds.test):
        for name, img in zip(split.names, split.images):
            cam, f = int(name[3:5]), int(name[6:])
            assert_frame(img, cam, f)
    # cameras: project known world points with the loaded viewmat / K and with the true camera
    K_true = np.array([[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1]])
    if not normalize:
        np.testing.assert_allclose(ds.transform, np.eye(4))
    pts = transform_points(ds.transform, PROBE)
    for split in (ds.train, ds.test):
        for i, name in enumerate(split.names):
            V, K = split.viewmats[i].astype(np.float64), split.Ks[i].astype(np.float64)
            np.testing.assert_allclose(K, K_true, atol=1e-5)
            uv, z = project(V, K, pts)
            uv_true, z_true = project(Vs[int(name[3:5])], K_true, PROBE)
            assert np.all(z > 0) and np.all(z_true > 0)
            np.testing.assert_allclose(uv, uv_true, atol=2e-3)
    # the target is on every optical axis: the image centre
    uv, _ = project(ds.test.viewmats[0].astype(np.float64), ds.test.Ks[0].astype(np.float64),
                    transform_points(ds.transform, [TARGET]))
    np.testing.assert_allclose(uv[0], [W / 2, H / 2], atol=2e-3)
    # random points in the normalised frame's cube; bounds in meta
    assert ds.points_random and ds.points.shape == (500, 3)
    if normalize:
        assert np.abs(ds.points).max() <= 1.3 + 1e-5
    s = float(np.cbrt(np.linalg.det(ds.transform[:3, :3])))
    np.testing.assert_allclose(ds.meta["bounds"], [[0.5, 20.0], [0.6, 21.0], [0.7, 22.0]])
    assert ds.meta["near"] == pytest.approx(0.5 * s) and ds.meta["far"] == pytest.approx(22.0 * s)
    assert ds.meta["dynamic"] is True and ds.meta["num_frames"] == NF and ds.meta["total_frames"] == NF
    assert ds.meta["test_camera"] == "cam00" and ds.meta["videos"] == ["cam00.mp4", "cam01.mp4", "cam02.mp4"]


def test_n3v_frame_step_max_frames_downscale(tmp_path):
    make_n3v(tmp_path)
    ds = load_dataset(tmp_path, frame_step=2, test_every=0)
    assert len(ds.test) == 0 and ds.test.times.shape == (0,)
    assert ds.train.names == [f"cam{c:02d}/{f:04d}" for c in range(3) for f in (0, 2, 4)]
    np.testing.assert_allclose(ds.train.times, np.tile([0.0, 0.4, 0.8], 3), atol=1e-7)  # f / (F - 1), F = 6
    assert ds.meta["num_frames"] == 3 and ds.meta["frame_indices"] == [0, 2, 4] and ds.time_range[1] == pytest.approx(0.8)
    for name, img in zip(ds.train.names, ds.train.images):
        assert_frame(img, int(name[3:5]), int(name[6:]))

    ds = load_dataset(tmp_path, frame_step=2, max_frames=2, downscale=2)
    assert ds.test.names == ["cam00/0000", "cam00/0002"]
    np.testing.assert_allclose(ds.test.times, [0.0, 0.4], atol=1e-7)
    K = np.array([[FOCAL / 2, 0, W / 4], [0, FOCAL / 2, H / 4], [0, 0, 1]])
    for split in (ds.train, ds.test):
        assert split.widths == [W // 2] * len(split) and split.heights == [H // 2] * len(split)
        np.testing.assert_allclose(split.Ks, np.broadcast_to(K, split.Ks.shape), atol=1e-5)
        for name, img in zip(split.names, split.images):  # 2x2 block means of the frame
            full = frame_content(int(name[3:5]), int(name[6:])).astype(np.float64)
            want = full.reshape(H // 2, 2, W // 2, 2, 3).mean(axis=(1, 3))
            assert img.shape == want.shape and np.abs(img - want).mean() < 3.0

    ds = load_dataset(tmp_path, max_frames=1)
    assert ds.test.names == ["cam00/0000"] and ds.time_range == (0.0, 0.0)
    for bad in ({"frame_step": 0}, {"max_frames": 0}, {"frame_step": 1.5}):
        with pytest.raises(DatasetError, match=r"(frame_step|max_frames) must be"):
            load_dataset(tmp_path, **bad)


def test_n3v_video_an_integer_downscale_of_the_poses(tmp_path):
    # poses for 64x48 images (focal 60), videos at 32x24: K scaled to the videos (N3V's downsampled releases)
    Vs = make_n3v(tmp_path, pose_size=(2 * W, 2 * H), focal=2 * FOCAL)
    ds = load_dataset(tmp_path, normalize=False)
    K_true = np.array([[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1]])
    np.testing.assert_allclose(ds.train.Ks[0], K_true, atol=1e-5)
    uv, _ = project(ds.train.viewmats[0].astype(np.float64), ds.train.Ks[0].astype(np.float64), PROBE)
    np.testing.assert_allclose(uv, project(Vs[1], K_true, PROBE)[0], atol=2e-3)


def test_n3v_detected_before_colmap(tmp_path):
    make_n3v(tmp_path, n_frames=(2, 2, 2))
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    for n in ("cameras", "images"):
        (tmp_path / "sparse" / "0" / f"{n}.txt").write_text("# empty\n")
    assert detect_format(tmp_path) == "n3v"
    (tmp_path / "poses_bounds.npy").unlink()
    assert detect_format(tmp_path) == "colmap"


def test_n3v_bad_inputs(tmp_path):
    def fresh(name, **kw):
        root = tmp_path / name
        make_n3v(root, **kw)
        return root

    root = fresh("lengths", n_frames=(NF, NF - 1, NF))
    with pytest.raises(DatasetError, match=r"videos of different lengths: \S*cam00\.mp4 has 6 frames, "
                                           r"\S*cam01\.mp4 has 5"):
        load_dataset(root)

    root = fresh("missing", n_frames=(2, 2, 2))
    (root / "cam02.mp4").unlink()
    with pytest.raises(DatasetError, match=r"poses_bounds\.npy: 3 camera poses but 2 videos \(cam\*\.mp4\) in "
                                           r"\S+: cam00\.mp4, cam01\.mp4"):
        load_dataset(root)

    root = fresh("shape", n_frames=(2, 2, 2))
    np.save(root / "poses_bounds.npy", np.load(root / "poses_bounds.npy")[:, :15])
    with pytest.raises(DatasetError, match=r"poses_bounds\.npy: expected a numeric array of shape \[N, 17\].* "
                                           r"got a float64 array of shape \(3, 15\)"):
        load_dataset(root)
    (root / "poses_bounds.npy").write_bytes(b"not a numpy file")
    with pytest.raises(DatasetError, match=r"poses_bounds\.npy: cannot read as a \.npy array"):
        load_dataset(root)
    (root / "poses_bounds.npy").unlink()
    with pytest.raises(DatasetError, match=r"poses_bounds\.npy: file not found"):
        load_dataset(root, format="n3v")

    root = fresh("undecodable", n_frames=(2, 2, 2))
    (root / "cam01.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(DatasetError, match=r"cam01\.mp4: cannot decode the video: "):
        load_dataset(root)

    root = tmp_path / "sizes"
    make_n3v(root, n_frames=(2, 2, 2))
    write_video(root / "cam02.mp4", [frame_content(2, f, 16, 12) for f in range(2)])
    with pytest.raises(DatasetError, match=r"videos of different frame sizes: \S*cam00\.mp4 is 32x24, "
                                           r"\S*cam02\.mp4 is 16x12"):
        load_dataset(root)

    root = fresh("posesize", n_frames=(2, 2, 2), pose_size=(W + 8, H))
    with pytest.raises(DatasetError, match=r"cam00\.mp4: frames are 32x24, but \S*poses_bounds\.npy row 0 gives "
                                           r"W=40, H=24 \(and neither size is an integer scale of the other\)"):
        load_dataset(root)

    root = fresh("nan", n_frames=(2, 2, 2))
    rows = np.load(root / "poses_bounds.npy")
    rows[1, 3] = np.nan
    np.save(root / "poses_bounds.npy", rows)
    with pytest.raises(DatasetError, match=r"poses_bounds\.npy: row 1 has NaN or infinite values"):
        load_dataset(root)


def test_train_config_passes_frame_options(tmp_path):
    import tyro

    from splat.train.config import TrainConfig
    from splat.train.data import load_data
    from splat.train.run import run_dataset

    cfg = tyro.cli(TrainConfig, args=["--data-format", "n3v", "--frame-step", "2", "--max-frames", "3"])
    assert (cfg.data_format, cfg.frame_step, cfg.max_frames) == ("n3v", 2, 3)
    cfg = tyro.cli(TrainConfig, args=[])
    assert (cfg.frame_step, cfg.max_frames) == (1, None)

    make_n3v(tmp_path, n_frames=(4, 4, 4))
    cfg = TrainConfig(data=tmp_path, frame_step=2, max_frames=1, num_random_points=100)
    ds = load_data(cfg)
    assert ds.format == "n3v" and ds.train.names == ["cam01/0000", "cam02/0000"]
    ds = run_dataset(tmp_path, {"data_format": "n3v", "frame_step": 3, "max_frames": None}, (1.0, 1.0, 1.0))
    assert ds.test.names == ["cam00/0000", "cam00/0003"]
    np.testing.assert_allclose(ds.test.times, [0.0, 1.0])
