"""The web viewer (viewer/): pose maths, what a scene renders, model files,
the splat-view CLI and `splat-train --viewer` errors, a live training watched by a
headless websocket client (bit-for-bit the same training), pause, the time/light
hooks, jumping to a training camera and snapshots.

Every server listens on 127.0.0.1 with port 0 and is stopped before its test ends."""
import math
import socket
import threading
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic_data import make_views, small_train_config, write_blender

from splat.models.image2d import Image2D
from splat.models.static import render_splats
from splat.train import Trainer
from viewer import cli as viewer_cli
from viewer import app as viewer_app
from viewer.app import Viewer, ViewerError, check_port
from viewer.headless import HeadlessClient
from viewer.live import TrainingLink
from viewer.training import ViewerCallback
from viewer.scene import (IMAGE2D_BACKGROUND, Image2DScene, SceneError, SplatScene, ViewCamera, _mat_to_quat,
                          load_scene, pose_from_viewmat, viewmat_from_pose)

Rotation = pytest.importorskip("scipy.spatial.transform").Rotation

SH_C0 = 0.28209479177387814  # the degree-0 spherical harmonic, 1 / (2 sqrt(pi))
QUIET = lambda *a, **k: None  # noqa: E731


# ----------------------------------------------------------------------------- helpers and fixtures


def wait_until(pred, timeout=10.0, period=0.01):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if pred():
            return True
        time.sleep(period)
    return bool(pred())


def to_u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def same_rotation(q1, q2, atol=1e-9):
    q1, q2 = np.asarray(q1, dtype=np.float64), np.asarray(q2, dtype=np.float64)
    return np.allclose(q1, q2, atol=atol) or np.allclose(q1, -q2, atol=atol)


def random_splats(N=150, sh_degree=1, seed=0, extent=0.8):
    g = torch.Generator().manual_seed(seed)
    K = (sh_degree + 1) ** 2
    return {
        "means": (torch.rand(N, 3, generator=g) * 2 - 1) * extent,
        "scales": torch.log(torch.rand(N, 3, generator=g) * 0.12 + 0.03),
        "quats": torch.randn(N, 4, generator=g),
        "opacities": torch.randn(N, generator=g) * 1.5,
        "sh0": torch.randn(N, 1, 3, generator=g) * 1.5,  # wide enough that some colours clamp
        "shN": torch.randn(N, K - 1, 3, generator=g) * 0.2,
    }


def front_camera(W=48, H=40, dist=3.0, fov=0.9):
    """A camera at (0, 0, -dist) looking down +z at the origin (identity rotation, OpenCV axes)."""
    return ViewCamera.from_pose((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, -dist), fov, W, H)


def image2d_model(N=60, W=40, H=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(N, 2, generator=g) * torch.tensor([W, H], dtype=torch.float32)
    chol = torch.rand(N, 3, generator=g) * torch.tensor([3.0, 1.0, 3.0]) + torch.tensor([0.5, -0.5, 0.5])
    colors = torch.rand(N, 3, generator=g) * 0.6
    return Image2D(means, chol, colors, W, H, "sum", 7)


@pytest.fixture(scope="module")
def blender_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return write_blender(root, make_views(n_views=32, width=48, height=40, n_gauss=300), test_ids=(0, 8, 16, 24))


@pytest.fixture(scope="module")
def trained_run(blender_dir, tmp_path_factory):
    """A finished run without a viewer: (run dir, final parameters, number of training views)."""
    out = tmp_path_factory.mktemp("run") / "run"
    t = Trainer(small_train_config(blender_dir, out, export=["ply", "splat", "spz"]), log=QUIET)
    t.train()
    params = {k: v.detach().clone() for k, v in t.model.params.items()}
    return out, params, len(t.train_views)


@pytest.fixture
def busy_port():
    """A port something listens on (127.0.0.1)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


class Servers:
    """Viewers and headless clients made in a test; closed (clients first) at its end."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.viewers, self.clients = [], []

    def viewer(self, scene, **kw):
        kw.setdefault("snapshot_dir", self.tmp_path / "snapshots")
        v = Viewer(scene, host="127.0.0.1", port=0, log=QUIET, **kw)
        self.viewers.append(v)
        return v

    def adopt(self, v):
        self.viewers.append(v)
        return v

    def client(self, viewer, **kw):
        c = HeadlessClient(viewer.url, **kw)
        self.clients.append(c)
        return c

    def close(self):
        for c in self.clients:
            c.close()
        errors = []
        for v in self.viewers:
            try:
                v.stop()
            except Exception as e:  # noqa: BLE001 (stop the others all the same)
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def servers(tmp_path):
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(autouse=True)
def no_thread_leaks():
    yield
    # the render thread is joined by Viewer.stop, the client's reader by close; the status
    # thread wakes every STATUS_PERIOD_S and then sees the stop
    ours = ("splat-viewer", "headless-viser-client")
    leaked = lambda: [t.name for t in threading.enumerate() if t.is_alive() and t.name.startswith(ours)]  # noqa: E731
    wait_until(lambda: not leaked(), timeout=3.0, period=0.05)
    assert not leaked(), f"threads left running: {leaked()}"


def server_client(viewer, timeout=10.0):
    """The server-side ClientHandle of the one connected client, once it has reported its camera."""
    def ready():
        clients = list(viewer.server.get_clients().values())
        if not clients:
            return None
        try:
            clients[0].camera.update_timestamp  # asserts on a client with no camera message yet
        except AssertionError:
            return None
        return clients[0]

    assert wait_until(lambda: ready() is not None, timeout), "the headless client never reached the server"
    return ready()


# ----------------------------------------------------------------------------- 1. pose maths


def _near_half_turns():
    rng = np.random.default_rng(1)
    mats = [np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]  # exact 180s
    for k in range(9):  # 180 degrees (and a hair less) about random axes, some near x, y or z
        axis = rng.normal(size=3)
        axis[k % 3] += 6.0
        axis /= np.linalg.norm(axis)
        angle = math.pi - (0.0 if k < 6 else 1e-4)
        mats.append(Rotation.from_rotvec(axis * angle).as_matrix())
    return mats


def test_pose_viewmat_round_trip_random_and_half_turn_rotations():
    rng = np.random.default_rng(0)
    mats = list(Rotation.random(40, random_state=0).as_matrix()) + _near_half_turns()
    branches = set()
    for R in mats:
        q_xyzw = Rotation.from_matrix(R).as_quat()
        wxyz = np.array([q_xyzw[3], *q_xyzw[:3]])
        if rng.random() < 0.5:
            wxyz = -wxyz  # both signs are the same rotation
        pos = rng.normal(size=3) * 3
        V = viewmat_from_pose(wxyz, pos)
        # independent meaning of the matrix: rotation R^T, and the camera centre maps to the origin
        assert np.allclose(V[:3, :3], R.T, atol=1e-12)
        assert np.allclose(V @ np.append(pos, 1.0), [0, 0, 0, 1], atol=1e-12)
        assert np.allclose(V[3], [0, 0, 0, 1])
        wxyz2, pos2 = pose_from_viewmat(V)
        assert wxyz2[0] >= 0 and abs(np.linalg.norm(wxyz2) - 1) < 1e-12
        assert same_rotation(wxyz2, wxyz, atol=1e-9), (R, wxyz, wxyz2)
        assert np.allclose(pos2, pos, atol=1e-9)
        assert np.allclose(viewmat_from_pose(wxyz2, pos2), V, atol=1e-9)
        # which of Shepperd's four cases this rotation takes
        t = np.trace(R)
        branches.add(0 if t > 0 else 1 + int(np.argmax(np.diag(R))))
    assert branches == {0, 1, 2, 3}
    # the exact half turns give the expected axes
    assert same_rotation(_mat_to_quat(np.diag([1.0, -1.0, -1.0])), [0, 1, 0, 0])
    assert same_rotation(_mat_to_quat(np.diag([-1.0, 1.0, -1.0])), [0, 0, 1, 0])
    assert same_rotation(_mat_to_quat(np.diag([-1.0, -1.0, 1.0])), [0, 0, 0, 1])


def test_view_camera_uses_the_vertical_field_of_view():
    W, H, fov = 80, 50, math.radians(55.0)
    rng = np.random.default_rng(3)
    for wxyz in ([1.0, 0, 0, 0], rng.normal(size=4)):
        wxyz = np.asarray(wxyz) / np.linalg.norm(wxyz)
        pos = rng.normal(size=3)
        cam = ViewCamera.from_pose(wxyz, pos, fov, W, H)
        assert (cam.width, cam.height) == (W, H)
        R = Rotation.from_quat([wxyz[1], wxyz[2], wxyz[3], wxyz[0]]).as_matrix()  # camera axes in the world

        def project(p_cam, depth=2.5):
            p_world = pos + R @ (np.asarray(p_cam) * depth)
            x = cam.K @ (cam.viewmat @ np.append(p_world, 1.0))[:3]
            return x[:2] / x[2]

        tan = math.tan(fov / 2)
        assert np.allclose(project([0, -tan, 1]), [W / 2, 0], atol=1e-9)      # top edge (y down)
        assert np.allclose(project([0, tan, 1]), [W / 2, H], atol=1e-9)       # bottom edge
        assert np.allclose(project([tan * W / H, 0, 1]), [W, H / 2], atol=1e-9)  # square pixels
        assert np.allclose(project([0, 0, 1]), [W / 2, H / 2], atol=1e-9)


def test_training_frustums_show_the_true_field_of_view_of_distorted_cameras():
    from splat.data.distortion import Distortion
    from viewer.scene import TrainingCamera

    K = np.array([[100.0, 0, 100], [0, 100.0, 80], [0, 0, 1]])
    pin = TrainingCamera("p", np.eye(4), K, 200, 160)
    assert pin.fov_y == pytest.approx(2 * math.atan(80 / 100))
    # an equidistant fisheye: theta = r / f, so the edge is 0.8 rad off the axis (not atan(0.8))
    fish = TrainingCamera("f", np.eye(4), K, 200, 160, distortion=Distortion("fisheye", radial=(0.0, 0.0, 0.0, 0.0)))
    assert fish.fov_y == pytest.approx(1.6, abs=1e-6)
    wide = TrainingCamera("w", np.eye(4), np.array([[30.0, 0, 100], [0, 30.0, 80], [0, 0, 1]]), 200, 160,
                          distortion=Distortion("fisheye", radial=(0.0,)))
    assert wide.fov_y == pytest.approx(math.radians(170))  # 2 * 80/30 rad > 180 degrees: shown at the cap
    barrel = TrainingCamera("b", np.eye(4), K, 200, 160, distortion=Distortion("radtan", radial=(-0.2,)))
    assert barrel.fov_y > pin.fov_y  # barrel distortion packs a wider view into the same pixels


# ----------------------------------------------------------------------------- 2-3. SplatScene


def test_splat_scene_render_modes_match_the_renderer():
    s = random_splats()
    bg = (0.2, 0.4, 0.7)
    scene = SplatScene(s, background=bg)
    cam = front_camera()
    V = torch.tensor(cam.viewmat, dtype=torch.float32)[None]
    K = torch.tensor(cam.K, dtype=torch.float32)[None]
    with torch.no_grad():
        c, a, _ = render_splats(s, V, K, cam.width, cam.height, sh_degree=1, backgrounds=torch.tensor([bg]))
    rgb = scene.render(cam, "rgb")
    assert rgb.dtype == np.uint8 and rgb.shape == (cam.height, cam.width, 3)
    assert np.array_equal(rgb, to_u8(c[0]))
    # the scene is visible, and the background shows where it is not
    a0 = a[0, ..., 0].numpy()
    assert (a0 > 0.5).sum() > 50 and (a0 < 1e-3).sum() > 20
    empty = a0 < 1e-4
    assert np.abs(rgb[empty].astype(int) - np.round(np.array(bg) * 255)).max() <= 1

    alpha = scene.render(cam, "alpha")
    assert np.array_equal(alpha, np.repeat(to_u8(a[0]), 3, -1))

    depth = scene.render(cam, "depth")
    assert depth.shape == rgb.shape and depth.dtype == np.uint8
    assert not np.array_equal(depth, rgb) and not np.array_equal(depth, alpha)
    assert depth[empty].max() <= 1  # no Gaussian there: black
    assert depth[a0 > 0.5].max() > 50

    with pytest.raises(ValueError, match="normals"):
        scene.render(cam, "normals")


def test_splat_scene_update_bumps_version_and_shows_the_new_model():
    s = random_splats(seed=1)
    scene = SplatScene(s)
    cam = front_camera()
    before = scene.render(cam)
    assert scene.version == 0
    s2 = dict(s)
    s2["sh0"] = -s["sh0"]
    s2["means"] = s["means"] + torch.tensor([0.2, 0.0, 0.0])
    scene.update(s2)
    assert scene.version == 1
    after = scene.render(cam)
    assert not np.array_equal(after, before)
    assert np.array_equal(after, SplatScene(s2).render(cam))
    with pytest.raises(SceneError, match="missing sh0"):
        scene.update({k: v for k, v in s.items() if k != "sh0"})
    assert scene.version == 1


def test_client_splats_covariances_colours_and_opacities():
    s = random_splats(N=64, seed=2)
    centers, covs, rgbs, opac = SplatScene(s).client_splats()
    N = s["means"].shape[0]
    assert centers.shape == (N, 3) and covs.shape == (N, 3, 3) and rgbs.shape == (N, 3) and opac.shape == (N, 1)
    for a in (centers, covs, rgbs, opac):
        assert a.dtype == np.float32
    q = s["quats"].double().numpy()
    R = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy: x, y, z, w (normalises itself)
    S2 = np.exp(2 * s["scales"].double().numpy())
    ref = np.einsum("nij,nj,nkj->nik", R, S2, R)
    assert np.allclose(covs, ref, rtol=1e-5, atol=1e-9)
    assert np.allclose(covs, covs.transpose(0, 2, 1))
    assert np.all(np.linalg.eigvalsh(covs.astype(np.float64)) > 0)
    sh0 = s["sh0"][:, 0].numpy()
    assert np.allclose(rgbs, np.clip(0.5 + SH_C0 * sh0, 0, 1), atol=1e-6)
    assert (rgbs == 0).any() and (rgbs == 1).any()  # clamping happened
    assert np.allclose(opac[:, 0], 1 / (1 + np.exp(-s["opacities"].numpy())), atol=1e-6)
    assert np.array_equal(centers, s["means"].numpy())


# ----------------------------------------------------------------------------- 4. Image2DScene


def _image_camera(scene, cx, cy, zoom, W, H, fov=0.8):
    """A fronto-parallel camera over image pixel (cx, cy) at `zoom` output pixels per image pixel."""
    f = 0.5 * H / math.tan(0.5 * fov)
    dist = f * scene.unit / zoom
    return ViewCamera.from_pose((1.0, 0.0, 0.0, 0.0), (cx * scene.unit, cy * scene.unit, -dist), fov, W, H)


def test_image2d_scene_pans_and_zooms_over_the_model():
    m = image2d_model()
    scene = Image2DScene(m, name="img")
    assert scene.unit == pytest.approx(1 / 40)
    # zoom 1, centred: the image in the middle of a 64x48 view, background around it
    W, H = 64, 48
    cam = _image_camera(scene, 20, 15, 1.0, W, H)
    cx, cy, zoom = scene.view_window(cam)
    assert (cx, cy, zoom) == pytest.approx((20, 15, 1.0))
    out = scene.render(cam)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    expect = np.empty((H, W, 3), np.uint8)
    expect[:] = IMAGE2D_BACKGROUND
    with torch.no_grad():
        full = m.render(scale=1, clamp=True)
    expect[9:39, 12:52] = to_u8(full)
    assert np.array_equal(out, expect)

    # zoom 2 over image pixel (12, 10) in a 32x24 view: a window of the 2x render
    cam2 = _image_camera(scene, 12, 10, 2.0, 32, 24)
    out2 = scene.render(cam2)
    with torch.no_grad():
        big = to_u8(m.render(scale=2, clamp=True))
    assert big.shape == (60, 80, 3)
    crop = big[10 * 2 - 12:10 * 2 + 12, 12 * 2 - 16:12 * 2 + 16]
    assert np.abs(out2.astype(int) - crop.astype(int)).max() <= 1
    assert not np.array_equal(out2, to_u8(full)[:24, :32])

    # level of detail: first_k Gaussians
    scene.first_k = 10
    lod = scene.render(cam)
    with torch.no_grad():
        part = to_u8(m.render(scale=1, first_k=10, clamp=True))
    assert np.array_equal(lod[9:39, 12:52], part)
    assert not np.array_equal(lod, out)
    scene.first_k = None
    assert np.array_equal(scene.render(cam), out)

    with pytest.raises(ValueError, match="depth") as e:
        scene.render(cam, "depth")
    assert "2D" in str(e.value)


# ----------------------------------------------------------------------------- 5. load_scene


def test_load_scene_run_directory_checkpoint_and_model_files(trained_run):
    run, params, n_train = trained_run
    scene = load_scene(run, log=QUIET)
    assert isinstance(scene, SplatScene) and scene.kind == "3d"
    assert len(scene.cameras) == n_train
    for c in scene.cameras:
        assert c.thumbnail is not None and c.thumbnail.dtype == np.uint8 and c.thumbnail.ndim == 3
        th = c.thumbnail
        assert th.shape[2] == 3 and max(th.shape[:2]) >= 16
        assert th.shape[1] / th.shape[0] == pytest.approx(c.width / c.height, rel=0.05)
        assert th.std() > 0  # a picture, not a blank
        assert (c.width, c.height) == (48, 40) and c.viewmat.shape == (4, 4)
    for k, v in params.items():  # the run directory opens its last checkpoint
        assert torch.equal(scene.splats[k], v.float()), k
    N = params["means"].shape[0]
    for name in ("model.ply", "model.splat", "model.spz"):
        sc = load_scene(run / name, log=QUIET)
        assert isinstance(sc, SplatScene) and sc.num_gaussians == N, name
        assert sc.name == name
        assert len(sc.cameras) == n_train  # a file beside config.json brings the run's cameras
        # .splat and .spz quantise; positions stay close to the trained ones (order kept or not)
        a = np.sort(sc.splats["means"].numpy(), 0)
        b = np.sort(params["means"].numpy(), 0)
        assert np.abs(a - b).max() < 0.02, name
    ply = load_scene(run / "model.ply", log=QUIET)
    assert torch.equal(ply.splats["means"], params["means"])
    ck = max((run / "ckpts").glob("ckpt_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    sc = load_scene(ck, log=QUIET)
    assert isinstance(sc, SplatScene) and len(sc.cameras) == n_train
    assert torch.equal(sc.splats["opacities"], params["opacities"])


def test_a_run_whose_dataset_moved_still_opens(trained_run, tmp_path):
    import json
    import shutil

    run = shutil.copytree(trained_run[0], tmp_path / "moved")
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(cfg))
    logged = []
    sc = load_scene(run, log=logged.append)
    assert isinstance(sc, SplatScene) and sc.cameras == [] and sc.num_gaussians == trained_run[1]["means"].shape[0]
    assert len(logged) == 1 and "no training cameras" in logged[0] and "gone" in logged[0]
    with pytest.raises(SceneError, match="--data .*elsewhere"):  # asked for explicitly: an error
        load_scene(run, data=tmp_path / "elsewhere", log=QUIET)


def test_load_scene_image2d_pt_and_sgi(tmp_path):
    from splat.image2d import codec

    m = image2d_model(N=300, W=64, H=48)
    m.save(tmp_path / "fit.pt")
    sc = load_scene(tmp_path / "fit.pt")
    assert isinstance(sc, Image2DScene) and sc.name == "fit.pt" and sc.num_gaussians == 300
    for k in ("means", "chol", "colors"):
        assert torch.equal(getattr(sc.model, k), getattr(m, k))
    data, _, _ = codec.encode(m, None, codec.CodecConfig(qat_iterations=0))
    (tmp_path / "fit.sgi").write_bytes(data)
    sg = load_scene(tmp_path / "fit.sgi")
    assert isinstance(sg, Image2DScene) and sg.num_gaussians == 300 and sg.kind == "image2d"
    dec = codec.decode_bytes(data)
    assert torch.equal(sg.model.means, dec.means) and torch.equal(sg.model.colors, dec.colors)


def test_load_scene_bad_inputs_name_the_file(trained_run, tmp_path):
    run = trained_run[0]
    rng = np.random.default_rng(0)
    bad = {}
    bad["missing"] = tmp_path / "nothere.ply"
    bad["suffix"] = tmp_path / "notes.txt"
    bad["suffix"].write_text("hello")
    bad["random_ply"] = tmp_path / "noise.ply"
    bad["random_ply"].write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    spz = (run / "model.spz").read_bytes()
    bad["truncated_spz"] = tmp_path / "cut.spz"
    bad["truncated_spz"].write_bytes(spz[:len(spz) // 2])
    bad["garbage_pt"] = tmp_path / "garbage.pt"
    bad["garbage_pt"].write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    bad["empty_dir"] = tmp_path / "emptyrun"
    bad["empty_dir"].mkdir()
    failures = []
    for what, p in bad.items():
        try:
            load_scene(p, log=QUIET)
        except SceneError as e:
            if p.name not in str(e):
                failures.append(f"{what}: message does not name {p.name}: {e}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"{what}: {type(e).__name__} instead of SceneError: {e}")
        else:
            failures.append(f"{what}: no error")
    assert not failures, "\n".join(failures)
    with pytest.raises(SceneError, match="notes.txt.*expected"):
        load_scene(bad["suffix"])


# ----------------------------------------------------------------------------- 6. CLI errors, busy ports


@pytest.fixture
def cli_guard(monkeypatch):
    """If splat-view ever got past its errors it would serve until a signal: make it
    return at once instead of hanging the test run, and leave pytest's signal handlers alone."""
    done = threading.Event()
    done.set()
    monkeypatch.setattr(viewer_cli, "threading", types.SimpleNamespace(Event=lambda: done))
    monkeypatch.setattr(viewer_cli, "signal", types.SimpleNamespace(signal=lambda *a: None, SIGINT=2, SIGTERM=15))


def _cli_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        viewer_cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "splat-view: error:" in err
    return err


def test_splat_view_cli_errors(trained_run, tmp_path, capsys, cli_guard, busy_port):
    missing = tmp_path / "gone.spz"
    err = _cli_error([str(missing), "--port", "0"], capsys)
    assert "gone.spz" in err
    corrupt = tmp_path / "broken.ply"
    corrupt.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 5\nend_header\n\x00\x01")
    err = _cli_error([str(corrupt), "--port", "0"], capsys)
    assert "broken.ply" in err
    err = _cli_error([str(trained_run[0] / "model.ply"), "--host", "127.0.0.1", "--port", str(busy_port)], capsys)
    assert f"port {busy_port}" in err and "busy" in err


def test_splat_view_accepts_every_resolution_it_documents(trained_run, tmp_path):
    for res in (16, 32, 4096):
        v = viewer_cli.serve(viewer_cli.ViewConfig(model=trained_run[0] / "model.ply", port=0, host="127.0.0.1",
                                                   resolution=res, snapshot_dir=tmp_path), log=QUIET)
        try:
            assert v.resolution.value == res
        finally:
            v.stop()
    for res in (15, 4097):
        with pytest.raises(ValueError, match=f"--resolution must be 16..4096 pixels, got {res}"):
            viewer_cli.serve(viewer_cli.ViewConfig(model=trained_run[0] / "model.ply", port=0, resolution=res,
                                                   snapshot_dir=tmp_path), log=QUIET)


def test_check_port(busy_port):
    with pytest.raises(ViewerError, match=f"port {busy_port} on 127.0.0.1 is busy"):
        check_port("127.0.0.1", busy_port)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    free = s.getsockname()[1]
    s.close()
    check_port("127.0.0.1", free)
    check_port("127.0.0.1", 0)
    with pytest.raises(ViewerError, match="out of range"):
        check_port("127.0.0.1", 70000)


def test_train_cli_refuses_a_busy_viewer_port_before_training(blender_dir, tmp_path, capsys, busy_port):
    from splat.train import main as train_main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train_main(["--data", str(blender_dir), "--out", str(out), "--iterations", "20", "--no-progress",
                    "--viewer", "--viewer-port", str(busy_port), "--viewer-host", "127.0.0.1"])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "splat-train: error:" in err and f"port {busy_port}" in err and "busy" in err
    assert not (out / "ckpts").exists() and not (out / "metrics.json").exists()
    assert not (out / "config.json").exists()  # refused before the run directory (and the data) was touched


def test_viewer_stop_frees_its_port(servers):
    v = servers.viewer(SplatScene(random_splats(N=20)))
    port = v.port
    assert port > 0
    with pytest.raises(ViewerError):
        check_port("127.0.0.1", port)
    servers.viewers.remove(v)
    v.stop()
    check_port("127.0.0.1", port)


# ----------------------------------------------------------------------------- 7. live training



def test_live_training_with_a_watching_client_is_bit_for_bit_the_same(blender_dir, trained_run, tmp_path):
    ref = trained_run[1]
    cfg = small_train_config(blender_dir, tmp_path / "live", export=["ply", "splat", "spz"], viewer=True, viewer_port=0,
                    viewer_host="127.0.0.1", viewer_wait=False)
    t = Trainer(cfg, log=QUIET)
    viewer, link = ViewerCallback.attached_to(t).start(t)
    c = None
    try:
        viewer.refresh.value = 0.2  # ask for fresh models often
        c = HeadlessClient(viewer.url, width=320, height=240)
        c.set_camera((0, -4, 1), (0, 0, 0))
        assert wait_until(lambda: viewer.render_count >= 1 and c.bytes_received > 0, 20), viewer.last_error
        bytes0 = c.bytes_received
        seen = []
        step_done = link.step_done

        def watched_step_done(step, *a):
            step_done(step, *a)
            seen.append((step, viewer.render_count, viewer.scene.version))
            time.sleep(0.004)  # idle time for the viewer's threads; changes nothing in the training

        link.step_done = watched_step_done
        t.train()
        assert [s[0] for s in seen] == list(range(1, cfg.iterations + 1))
        assert seen[-1][1] > seen[0][1], "no render completed while training ran"
        assert seen[-1][2] >= 1, "no snapshot delivered during training"
        assert link.finished and viewer.scene.version > seen[-1][2]  # finish delivers the final model
        for k in ref:
            assert torch.equal(viewer.scene.splats[k], t.model.params[k].detach()), k
        # the client is shown the final model, and the status says the training finished
        assert wait_until(lambda: c.bytes_received > bytes0, 10)
        final = f"step **{cfg.iterations:,}** / {cfg.iterations:,} (finished)"
        assert wait_until(lambda: final in viewer.status.content, 10), viewer.status.content
        assert viewer.pause.disabled
        x, _ = viewer.plot.data
        assert x[-1] == cfg.iterations
        # the frame the client was last sent is the final model, from the client's camera
        handle = server_client(viewer)
        final = SplatScene({k: v.detach() for k, v in t.model.params.items()}, background=cfg.background)

        def final_frame_shown():
            f = viewer.last_frames.get(handle.client_id)
            if f is None or not f[1]:
                return False
            cam = viewer.camera_of(handle, full=True)
            return f[0].shape == (240, 320, 3) and np.array_equal(f[0], final.render(cam))

        assert wait_until(final_frame_shown, 10, period=0.1)
        assert viewer.last_error is None
    finally:
        if c is not None:
            c.close()
        t.close()  # --no-viewer-wait: stops the viewer
    check_port("127.0.0.1", viewer.port)  # Trainer.close() stopped the viewer: its port is free again
    # the key property: watching changes nothing in the training
    assert set(t.model.params.keys()) == set(ref.keys())
    for k, v in ref.items():
        assert torch.equal(t.model.params[k].detach(), v), k


# ----------------------------------------------------------------------------- 8. pause


def test_pause_stops_steps_but_serves_snapshots(blender_dir, tmp_path):
    cfg = small_train_config(blender_dir, tmp_path / "paused", iterations=40, save_every=0, viewer=True, viewer_port=0,
                    viewer_host="127.0.0.1", viewer_wait=False, eval_every=0, save_renders=0)
    t = Trainer(cfg, log=QUIET)
    viewer, link = ViewerCallback.attached_to(t).start(t)
    reached, go, entered = threading.Event(), threading.Event(), threading.Event()
    step_done, on_status = link.step_done, link.on_status

    def hold_at_10(step, *a):
        step_done(step, *a)
        if step == 10:
            reached.set()
            go.wait(10)

    def status():
        entered.set()
        on_status()

    link.step_done, link.on_status = hold_at_10, status
    errors = []

    def run():
        try:
            t.train()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    th = threading.Thread(target=run, name="test-training")
    th.start()
    try:
        assert reached.wait(20), errors
        link.set_paused(True)  # from another thread than the training's
        go.set()
        assert entered.wait(5), "the training did not go into wait_if_paused"
        s0, v0 = link.step, viewer.scene.version
        assert s0 == 10 and link.paused
        time.sleep(0.7)
        assert link.step == s0, "training stepped while paused"
        link.request_snapshot()
        assert wait_until(lambda: viewer.scene.version > v0, 3), "no snapshot delivered while paused"
        assert link.step == s0
        for k, v in t.model.params.items():  # the paused model, as it is
            assert torch.equal(viewer.scene.splats[k], v.detach()), k
        assert th.is_alive()
        link.set_paused(False)
        th.join(20)
        assert not th.is_alive() and not errors, errors
        assert link.step == cfg.iterations and link.finished and not link.paused
    finally:
        go.set()
        link.set_paused(False)
        th.join(20)
        t.close()


def test_wait_if_paused_returns_when_told_to_stop():
    link = TrainingLink(100)
    params = {"a": torch.zeros(3)}
    assert link.wait_if_paused(params) == 0.0  # not paused: no wait
    delivered = []
    link.on_snapshot = delivered.append
    link.set_paused(True)
    stop = threading.Event()
    link.request_snapshot()  # served while paused
    result = []
    th = threading.Thread(target=lambda: result.append(link.wait_if_paused(params, should_stop=stop.is_set)))
    t0 = time.perf_counter()
    th.start()
    try:
        time.sleep(0.3)
        assert th.is_alive(), "wait_if_paused returned while paused and not told to stop"
        stop.set()
        th.join(2.0)
        elapsed = time.perf_counter() - t0
        assert not th.is_alive(), "wait_if_paused did not return after should_stop() became true"
    finally:
        link.set_paused(False)  # never leave the thread waiting
        th.join(2.0)
    assert 0.3 <= elapsed < 0.8 and result[0] == pytest.approx(elapsed, abs=0.1)
    assert len(delivered) == 1 and torch.equal(delivered[0]["a"], params["a"])
    assert delivered[0]["a"] is not params["a"]  # a copy
    # finishing resumes, and a finished training cannot be paused again
    link.finish(params)
    assert not link.paused
    link.set_paused(True)
    assert not link.paused


# ----------------------------------------------------------------------------- 9. time and light hooks


class RecordingScene(SplatScene):
    time_range = (0.0, 2.0)
    has_light = True

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = []
        self.light, self.light_intensity = np.array([0.0, -1.0, -1.0]), np.array([5.0, 5.0, 5.0])

    def set_light(self, position, intensity=None):
        if not np.isfinite(position).all():
            raise ValueError("light position must be finite")
        self.light = np.asarray(position, dtype=np.float64)
        if intensity is not None:
            self.light_intensity = np.maximum(np.asarray(intensity, dtype=np.float64), 0.0)

    def current_light(self):
        return self.light, self.light_intensity

    def render(self, cam, mode="rgb", backend="auto", **kw):
        self.calls.append((mode, backend, (cam.width, cam.height), kw))
        return np.full((cam.height, cam.width, 3), 128, np.uint8)


def test_time_and_light_controls_reach_render(servers):
    plain = servers.viewer(SplatScene(random_splats(N=20)))
    assert plain.time is None and plain.light is None
    scene = RecordingScene(random_splats(N=20))
    v = servers.viewer(scene, resolution=128)
    assert v.time is not None and v.light is not None
    assert v.time.min == 0.0 and v.time.max == 2.0 and v.time.value == 0.0
    c = servers.client(v, width=160, height=120)
    c.set_camera((0, -4, 1), (0, 0, 0))
    assert wait_until(lambda: len(scene.calls) >= 1, 10), v.last_error
    mode, backend, size, kw = scene.calls[-1]
    assert mode == "rgb" and backend == "auto" and max(size) <= 128
    assert set(kw) == {"t", "light", "light_intensity"}
    assert kw["t"] == 0.0 and np.allclose(kw["light"], (0.0, -1.0, -1.0)) and np.allclose(kw["light_intensity"], 5.0)

    def called_with(pred, start):
        return wait_until(lambda: any(pred(k) for _, _, _, k in list(scene.calls)[start:]), 5)

    # let the viewer go idle (the full-resolution frame after the first, moving one), so that
    # the next render can only come from the control change
    def idle():
        n = v.render_count
        time.sleep(3 * viewer_app.MOVE_SETTLE_S)
        return v.render_count == n

    assert wait_until(idle, 10)
    n = len(scene.calls)
    # a server-side assignment fires on_update in viser 1.1.1 (no _invalidate() needed)
    v.time.value = 1.5
    assert called_with(lambda k: k["t"] == 1.5, n), scene.calls[-3:]
    assert all(k["t"] == 0.0 for _, _, _, k in scene.calls[:n])
    assert wait_until(idle, 10)
    n = len(scene.calls)
    v.light.value = (1.0, 0.0, 0.0)
    assert called_with(lambda k: np.allclose(k["light"], (1.0, 0.0, 0.0)) and k["t"] == 1.5, n), scene.calls[-3:]
    assert all(np.allclose(k["light"], (0.0, -1.0, -1.0)) for _, _, _, k in scene.calls[:n])
    assert wait_until(idle, 10)
    n = len(scene.calls)
    v.light_intensity.value = (-2.0, 1.0, 3.0)  # the intensity control: clamped to >= 0 by the scene
    assert called_with(lambda k: np.allclose(k["light_intensity"], (0.0, 1.0, 3.0)), n), scene.calls[-3:]
    assert v.render_count >= 4 and c.wait_for_bytes(1, 5)


# ----------------------------------------------------------------------------- frames sent, display, level of detail


def _frame_matches(v, handle, render, timeout=10.0):
    """Wait until the last full-resolution frame sent to `handle` equals `render(camera)`."""
    def ok():
        f = v.last_frames.get(handle.client_id)
        return f is not None and f[1] and np.array_equal(f[0], render(v.camera_of(handle, full=True)))

    return wait_until(ok, timeout, period=0.05)


def test_viewer_sends_the_scenes_render_modes_display_and_level_of_detail(servers):
    s = random_splats(N=120, seed=4)
    scene = SplatScene(s)
    v = servers.viewer(scene, resolution=96)
    c = servers.client(v, width=160, height=120)
    c.set_camera((0, 0, -3), (0, 0, 0), up=(0, -1, 0))
    h = server_client(v)
    assert _frame_matches(v, h, lambda cam: scene.render(cam, "rgb"))
    assert v.last_frames[h.client_id][0].shape == (72, 96, 3)  # long side = the Resolution slider
    v.mode.value = "depth"
    assert _frame_matches(v, h, lambda cam: scene.render(cam, "depth"))
    # viser's client-side splats: the scene's Gaussians, and no server frames while shown
    v.display.value = "client splats"
    assert v._splats_node is not None and v._splats_node.buffer.shape[0] == 120
    n = v.render_count
    time.sleep(0.3)
    assert v.render_count == n
    v.display.value = "server render"
    assert v._splats_node.visible is False
    assert wait_until(lambda: v.render_count > n, 5)

    # a 2D image model: the frame is the 2D render at the view's zoom; the level-of-detail slider
    m = image2d_model()
    img = Image2DScene(m)
    v2 = servers.viewer(img, resolution=128)
    assert tuple(v2.mode.options) == ("rgb",) and v2.display.visible is False
    c2 = servers.client(v2, width=160, height=120)
    c2.set_camera((0.5, 0.375, -1.0), (0.5, 0.375, 0.0), up=(0, -1, 0))
    h2 = server_client(v2)
    assert _frame_matches(v2, h2, lambda cam: img.render(cam))
    full = v2.last_frames[h2.client_id][0]
    v2.first_k.value = 10
    assert img.first_k == 10
    with torch.no_grad():
        assert _frame_matches(v2, h2, lambda cam: Image2DScene(m.subset(slice(0, 10))).render(cam))
    assert not np.array_equal(v2.last_frames[h2.client_id][0], full)
    v2.first_k.value = m.num_gaussians
    assert img.first_k is None


def test_budget_slider_changes_the_gaussians_sent(servers):
    """The Budget slider shows apply_budget's fast path of the model (importance measured once, off
    the GUI callbacks): fewer Gaussians sent to viser's client splats, and the server frames are
    renders of that smaller model; back at 1 the whole model."""
    from splat.compress.budget import apply_budget, gaussian_importance
    from viewer.scene import TrainingCamera

    s = random_splats(N=120, seed=6)
    scene = SplatScene(s)
    v = servers.viewer(scene, resolution=96)
    assert v.budget is not None and (v.budget.min, v.budget.max, v.budget.value) == (0.01, 1.0, 1.0)
    c = servers.client(v, width=160, height=120)
    c.set_camera((0, 0, -3), (0, 0, 0), up=(0, -1, 0))
    h = server_client(v)
    v.display.value = "client splats"
    assert v._splats_node.buffer.shape[0] == 120
    v.budget.value = 0.25
    assert wait_until(lambda: v._splats_node.buffer.shape[0] == 30, 30), v.last_error
    assert scene.num_shown == 30 and scene.num_gaussians == 120 and "30 of 120" in v.info.content
    imp = scene._importance
    assert imp is not None and imp.shape == (120,)
    v.budget.value = 0.5
    assert wait_until(lambda: v._splats_node.buffer.shape[0] == 60, 30), v.last_error
    assert scene._importance is imp  # measured once
    v.display.value = "server render"
    shown = SplatScene(apply_budget(s, 0.5, imp, distill_steps=0), scene_scale=scene.scene_scale)
    assert _frame_matches(v, h, lambda cam: shown.render(cam, "rgb")), v.last_error
    v.budget.value = 1.0
    assert _frame_matches(v, h, lambda cam: SplatScene(s).render(cam, "rgb"))
    assert scene.num_shown == 120 and "of" not in v.info.content
    with pytest.raises(ValueError, match="fraction"):
        scene.set_budget(0.0)

    # a model with its training cameras measures importance in them (a bare file: views around it)
    cams = [TrainingCamera(f"c{i}", viewmat_from_pose(*pose_from_viewmat(front_camera().viewmat)), front_camera().K,
                           48, 40) for i in range(2)]
    with_cams = SplatScene(s, cameras=cams)
    from splat.cameras import Cameras
    from splat.render import NEAR_PLANE

    want = gaussian_importance(s, Cameras(torch.as_tensor(np.stack([c.viewmat for c in cams]), dtype=torch.float32),
                                          torch.as_tensor(np.stack([c.K for c in cams]), dtype=torch.float32), 48, 40),
                               near_plane=NEAR_PLANE * with_cams.scene_scale)
    assert torch.equal(with_cams.budget_importance(), want)
    assert torch.equal(scene.budget_importance(), gaussian_importance(s, near_plane=NEAR_PLANE * scene.scene_scale))


# ----------------------------------------------------------------------------- 10. jump to a training camera


def test_jump_to_moves_the_client_onto_a_training_camera(trained_run, servers, tmp_path):
    v = servers.adopt(viewer_cli.serve(viewer_cli.ViewConfig(model=trained_run[0], port=0, host="127.0.0.1",
                                                             resolution=64, snapshot_dir=tmp_path / "s"),
                                       log=QUIET))
    cams = v.scene.cameras
    assert len(cams) == trained_run[2] and len(v._frusta) == len(cams)
    c = servers.client(v, width=96, height=80)
    c.set_camera((0, -4, 1), (0, 0, 0), fov_y=0.5)
    handle = server_client(v)
    for cam in (cams[3], cams[11]):
        v.jump_to(handle, cam)
        wxyz, pos = pose_from_viewmat(cam.viewmat)
        assert same_rotation(handle.camera.wxyz, wxyz, atol=1e-6), (handle.camera.wxyz, wxyz)
        assert np.allclose(handle.camera.position, pos, atol=1e-9)
        assert handle.camera.fov == pytest.approx(cam.fov_y)
        # the server now renders exactly that training view (at the client's aspect)
        vc = v.camera_of(handle)
        assert np.allclose(vc.viewmat, cam.viewmat, atol=1e-6)
        assert cam.fov_y == pytest.approx(2 * math.atan(0.5 * vc.height / vc.K[1, 1]), rel=1e-9)


# ----------------------------------------------------------------------------- 11. snapshots


def test_save_snapshot_writes_unique_pngs(servers, tmp_path):
    v = servers.viewer(SplatScene(random_splats(N=20)), snapshot_dir=tmp_path / "snaps" / "deep")
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    paths = [v.save_snapshot(img) for _ in range(3)]
    assert len(set(paths)) == 3
    for p in paths:
        assert p.parent == tmp_path / "snaps" / "deep" and p.suffix == ".png" and "rgb" in p.name
        with Image.open(p) as im:
            assert im.format == "PNG" and np.array_equal(np.asarray(im.convert("RGB")), img)
    # an existing file is never overwritten
    v._snap_count = 0
    p4 = v.save_snapshot(img[:5])
    assert p4 not in paths
    with Image.open(paths[0]) as im:
        assert np.asarray(im).shape == img.shape
