"""Camera models (splat.camera_models), the unscented projection (3DGUT) and rendering distorted,
fisheye, orthographic and rolling-shutter cameras on the rasterizer and the ray tracer."""
import math

import numpy as np
import pytest
import torch

from scene_utils import gaussians as make_gaussians
from splat import camera_models as cm
from splat.backends import torch_ref, ut
from splat.cameras import Cameras
from splat.data.distortion import Distortion
from splat.render import rasterize


def psnr(a, b):
    return -10 * math.log10(max(float(((a - b) ** 2).mean()), 1e-20))


def _front_scene(N=200, seed=0, spread=1.2, depth=4.0, scale=(0.03, 0.15)):
    means, quats, scales, opac, cols = make_gaussians(N, seed=seed, scale=scale)
    means = means * spread + torch.tensor([0.0, 0.0, depth])
    return means, quats, scales, opac, cols


def _opencv_distort(x, y, k, p, s):
    """OpenCV's documented model (calib3d: rational radial, tangential, thin prism), written out."""
    r2 = x * x + y * y
    radial = (1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3) / (1 + k[3] * r2 + k[4] * r2 ** 2 + k[5] * r2 ** 3)
    xd = x * radial + 2 * p[0] * x * y + p[1] * (r2 + 2 * x * x) + s[0] * r2 + s[1] * r2 ** 2
    yd = y * radial + p[0] * (r2 + 2 * y * y) + 2 * p[1] * x * y + s[2] * r2 + s[3] * r2 ** 2
    return xd, yd


K1 = torch.tensor([[[100.0, 0, 64.3], [0, 104.0, 47.6], [0, 0, 1]]], dtype=torch.float64)


def test_pinhole_projection_follows_the_opencv_formula():
    k = torch.tensor([[-0.21, 0.05, -0.004, 0.01, -0.002, 0.0005]], dtype=torch.float64)
    p = torch.tensor([[0.0012, -0.0021]], dtype=torch.float64)
    s = torch.tensor([[0.001, -0.0005, 0.0007, 0.0002]], dtype=torch.float64)
    pts = torch.randn(1, 500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.4
    pts[..., 2] = pts[..., 2].abs() + 1.0
    uv, valid = cm.project_points(pts, K1, "pinhole", k, p, s)
    x, y = pts[..., 0] / pts[..., 2], pts[..., 1] / pts[..., 2]
    xd, yd = _opencv_distort(x, y, k[0].tolist(), p[0].tolist(), s[0].tolist())
    assert valid.all()
    assert torch.allclose(uv[..., 0], 100.0 * xd + 64.3, atol=1e-9)
    assert torch.allclose(uv[..., 1], 104.0 * yd + 47.6, atol=1e-9)
    # the loaders' numpy model is the same formula (one place): OPENCV k1 k2 p1 p2 as a Distortion
    d = Distortion("radtan", radial=(-0.21, 0.05, -0.004), radial_den=(0.01, -0.002, 0.0005),
                   tangential=(0.0012, -0.0021))
    nx, ny = d.distort(x[0].numpy(), y[0].numpy())
    xd2, yd2 = _opencv_distort(x, y, k[0].tolist(), p[0].tolist(), [0, 0, 0, 0])
    assert np.allclose(nx, xd2[0].numpy(), atol=1e-12) and np.allclose(ny, yd2[0].numpy(), atol=1e-12)


def test_fisheye_projection_is_kannala_brandt_and_sees_behind_the_image_plane():
    k = torch.tensor([[0.08, -0.01, 0.002, -0.0003]], dtype=torch.float64)
    # directions up to 100 degrees off the axis (a fisheye sees them; a pinhole cannot)
    theta = torch.linspace(0.01, math.radians(100), 50, dtype=torch.float64)
    phi = torch.linspace(0, 2 * math.pi, 50, dtype=torch.float64)
    d = torch.stack([torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)], -1)
    uv, valid = cm.project_points(3.0 * d[None], K1, "fisheye", k)
    assert valid.all()
    td = theta * (1 + k[0, 0] * theta ** 2 + k[0, 1] * theta ** 4 + k[0, 2] * theta ** 6 + k[0, 3] * theta ** 8)
    assert torch.allclose(uv[0, :, 0], 100.0 * td * torch.cos(phi) + 64.3, atol=1e-9)
    assert torch.allclose(uv[0, :, 1], 104.0 * td * torch.sin(phi) + 47.6, atol=1e-9)


@pytest.mark.parametrize("model,coeffs", [
    ("pinhole", dict(radial_coeffs=torch.tensor([[-0.25, 0.06, 0.0, 0.0, 0.0, 0.0]]),
                     tangential_coeffs=torch.tensor([[0.001, -0.002]]))),
    ("pinhole", dict()),
    ("fisheye", dict(radial_coeffs=torch.tensor([[0.05, -0.01, 0.0, 0.0]]))),
    ("fisheye", dict()),
    ("ortho", dict()),
])
def test_pixel_rays_invert_the_projection(model, coeffs):
    coeffs = {k: v.double() for k, v in coeffs.items()}
    g = torch.Generator().manual_seed(1)
    pix = torch.rand(1, 400, 2, dtype=torch.float64, generator=g) * torch.tensor([128.0, 96.0], dtype=torch.float64)
    o, d, ok = cm.pixel_rays(pix, K1, model, **coeffs)
    assert ok.all()
    assert torch.allclose(d.norm(dim=-1), torch.ones(1, 400, dtype=torch.float64))
    back, valid = cm.project_points(o + 2.5 * d, K1, model, **coeffs)
    assert valid.all()
    assert (back - pix).abs().max() < 1e-6


def test_tangential_terms_that_fold_the_image_are_invalid_there():
    # p2 = -0.3: a point 46 degrees off the axis would land at the image centre
    pts = torch.tensor([[[math.tan(math.radians(46)), 0.0, 1.0], [0.1, 0.05, 1.0]]], dtype=torch.float64)
    p2 = torch.tensor([[0.0, -0.3]], dtype=torch.float64)
    _, valid = cm.project_points(pts, K1, "pinhole", tangential_coeffs=p2)
    assert valid.tolist() == [[False, True]]


def test_rolling_shutter_interpolation_takes_a_half_turn_too():
    V0 = torch.eye(4, dtype=torch.float64)
    V1 = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))  # a half turn about z
    out = cm.interpolate_viewmats(V0[None], V1[None], torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64))
    assert torch.allclose(out[0, 2], V1, atol=1e-9) and torch.allclose(out[0, 0], V0)
    R = out[0, 1, :3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-9) and abs(float(R[2, 2]) - 1) < 1e-9


def test_projection_past_the_distortion_fold_is_invalid():
    # k1 = -0.5: r (1 - 0.5 r^2) peaks at r = sqrt(2/3); points beyond it would fold back into the image
    k = torch.tensor([[-0.5, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    lim = float(cm.monotonic_limit("pinhole", k)[0])
    assert lim == pytest.approx(math.sqrt(2 / 3), abs=2e-3)
    pts = torch.tensor([[[0.5, 0.0, 1.0], [1.2, 0.0, 1.0], [0.0, 0.0, -1.0]]], dtype=torch.float64)
    _, valid = cm.project_points(pts, K1, "pinhole", k)
    assert valid.tolist() == [[True, False, False]]


def test_unscented_projection_of_an_undistorted_pinhole_matches_ewa():
    means, quats, scales, opac, _ = _front_scene(300, seed=3)
    V = torch.eye(4)[None]
    K = K1.float()
    a = torch_ref.project(means, quats, scales, opac, V, K, 128, 96)
    b = ut.project_ut(means, quats, scales, opac, V, K, 128, 96)
    both = (a[0] > 0).all(-1) & (b[0] > 0).all(-1)
    assert both.sum() > 200
    # the unscented mean carries perspective's bias (the EWA mean is the projected centre): small, not zero
    shift = (a[1] - b[1])[both].norm(dim=-1)
    assert shift.median() < 0.02 and shift.max() < 0.25  # px
    rel = ((a[3] - b[3]).norm(dim=-1) / a[3].norm(dim=-1))[both]
    assert rel.median() < 0.01


def _gsplat_fisheye_render(means, quats, scales, opac, cols, V, K, W, H):
    """Render with gsplat's pure-torch EWA fisheye projection (gsplat.cuda._torch_impl._fisheye_proj)
    feeding our compositing: an independent fisheye projection to compare with."""
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    cov = torch_ref.quat_scale_to_covar(quats, scales)
    R, t = V[:, :3, :3], V[:, :3, 3]
    p = (R[:, None] @ means[None, :, :, None])[..., 0] + t[:, None]
    cov_c = R[:, None] @ cov[None] @ R[:, None].transpose(-1, -2)
    m2, cov2d = impl._fisheye_proj(p, cov_c, K, W, H)
    radii, m2, depths, conics, _ = torch_ref.footprint_2d(m2, cov2d, p[..., 2], p[..., 2] > 0.01, opac, W, H, 0.3,
                                                          0.0, False)
    C, N = radii.shape[:2]
    ti = torch_ref.isect_tiles(m2, radii, depths, 16, math.ceil(W / 16), math.ceil(H / 16))
    img, _ = torch_ref.rasterize_to_pixels(m2, conics, cols[None].expand(C, N, -1), opac[None].expand(C, N), W, H,
                                           16, ti[3], ti[2])
    return img


def test_fisheye_rasterizer_agrees_with_gsplat_ewa_fisheye_and_the_ray_tracer(cpu_backend):
    means, quats, scales, opac, cols = _front_scene(300, seed=5, spread=2.5, depth=3.0, scale=(0.02, 0.1))
    V = torch.eye(4)[None]
    W, H = 128, 96
    K = torch.tensor([[[40.0, 0, 64], [0, 40.0, 48], [0, 0, 1]]])  # ~ 180 degrees across the width
    ours, _, info = rasterize(means, quats, scales, opac, cols, V, K, W, H, camera_model="fisheye")
    assert info["with_ut"]
    theirs = _gsplat_fisheye_render(means, quats, scales, opac, cols, V, K, W, H)
    assert ours.sum() > 50 and psnr(ours, theirs) >= 25.0
    traced, _, _ = rasterize(means, quats, scales, opac, cols, V, K, W, H, camera_model="fisheye", backend="raytrace")
    assert psnr(ours, traced) >= 25.0


@pytest.mark.parametrize("camera", [
    dict(camera_model="pinhole", radial_coeffs=torch.tensor([[-0.3, 0.08, 0.0, 0.0, 0.0, 0.0]]),
         tangential_coeffs=torch.tensor([[0.002, -0.001]]), thin_prism_coeffs=torch.tensor([[0.001, 0, -0.001, 0]])),
    dict(camera_model="fisheye", radial_coeffs=torch.tensor([[0.06, -0.02, 0.003, 0.0]])),
    dict(camera_model="ortho"),
])
def test_both_backends_render_distorted_cameras_alike(camera, cpu_backend):
    means, quats, scales, opac, cols = _front_scene(300, seed=7, spread=1.0)
    V = torch.eye(4)[None]
    K = torch.tensor([[[90.0, 0, 64], [0, 90.0, 48], [0, 0, 1]]])
    if camera["camera_model"] == "ortho":
        K = torch.tensor([[[45.0, 0, 64], [0, 45.0, 48], [0, 0, 1]]])
    bg = torch.tensor([[0.1, 0.2, 0.3]])
    a, aa, _ = rasterize(means, quats, scales, opac, cols, V, K, 128, 96, backgrounds=bg, **camera)
    b, ba, _ = rasterize(means, quats, scales, opac, cols, V, K, 128, 96, backgrounds=bg, backend="raytrace", **camera)
    assert aa.mean() > 0.1
    assert psnr(a, b) >= 25.0 and psnr(aa, ba) >= 25.0


def test_fisheye_differs_from_pinhole_exactly_where_the_models_differ(cpu_backend):
    """Same K: near the axis theta ~ tan(theta), so the two cameras see the same pixels there; away
    from it the fisheye compresses the view. The difference of the renders follows the models'
    pixel displacement."""
    means, quats, scales, opac, cols = _front_scene(600, seed=9, spread=2.0, depth=4.0, scale=(0.02, 0.08))
    V = torch.eye(4)[None]
    W, H = 160, 160
    K = torch.tensor([[[80.0, 0, 80], [0, 80.0, 80], [0, 0, 1]]])
    pin, _, _ = rasterize(means, quats, scales, opac, cols, V, K, W, H)
    fis, _, _ = rasterize(means, quats, scales, opac, cols, V, K, W, H, camera_model="fisheye")
    # per pixel, how far (in pixels) the fisheye moves the point the pinhole shows there
    jj, ii = torch.meshgrid(torch.arange(W) + 0.5, torch.arange(H) + 0.5, indexing="xy")
    pix = torch.stack([jj, ii], -1).reshape(1, -1, 2).double()
    o, d, _ = cm.pixel_rays(pix, K.double(), "pinhole")
    uv, _ = cm.project_points(d, K.double(), "fisheye")
    shift = (uv - pix).norm(dim=-1).reshape(H, W)
    diff = (pin - fis)[0].abs().amax(-1)
    assert diff[shift < 0.05].max() < 0.02  # the models agree (to 1/20 px): the images agree
    assert diff[shift > 5.0].mean() > 10 * diff[shift < 0.05].mean()  # and they differ where the models do


def test_rolling_shutter_rows_follow_their_own_pose(cpu_backend):
    means, quats, scales, opac, cols = _front_scene(400, seed=11, spread=1.5)
    W, H = 96, 96
    K = torch.tensor([[[80.0, 0, 48], [0, 80.0, 48], [0, 0, 1]]])
    V0 = torch.eye(4)[None]
    V1 = V0.clone()
    V1[0, 0, 3] = 0.3  # the camera moves sideways during the read-out
    for backend in ("cpu", "raytrace"):
        start, _, _ = rasterize(means, quats, scales, opac, cols, V0, K, W, H, backend=backend)
        end, _, _ = rasterize(means, quats, scales, opac, cols, V1, K, W, H, backend=backend)
        rs, _, _ = rasterize(means, quats, scales, opac, cols, V0, K, W, H, backend=backend,
                             rolling_shutter="top_to_bottom", viewmats_rs=V1)
        same, _, _ = rasterize(means, quats, scales, opac, cols, V0, K, W, H, backend=backend,
                               rolling_shutter="top_to_bottom", viewmats_rs=V0)
        assert psnr(same, start) > 40
        assert psnr(rs[:, :6], start[:, :6]) > psnr(rs[:, :6], end[:, :6]) + 5  # first rows: the start pose
        assert psnr(rs[:, -6:], end[:, -6:]) > psnr(rs[:, -6:], start[:, -6:]) + 5  # last rows: the end pose


def test_rolling_shutter_interpolation_is_exact_at_the_ends_and_a_rigid_motion_between():
    V0 = torch.from_numpy(np.linalg.inv(np.array([[1, 0, 0, 0.1], [0, 1, 0, 0], [0, 0, 1, -3], [0, 0, 0, 1.0]])))
    a = math.radians(30)
    Rz = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=torch.float64)
    V1 = V0.clone()
    V1[:3, :3] = Rz @ V0[:3, :3]
    V1[:3, 3] = torch.tensor([0.4, -0.2, 3.1], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    out = cm.interpolate_viewmats(V0[None], V1[None], t)
    assert torch.allclose(out[0, 0], V0) and torch.allclose(out[0, 2], V1)
    R = out[0, 1, :3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    half = torch.tensor([[math.cos(a / 2), -math.sin(a / 2), 0], [math.sin(a / 2), math.cos(a / 2), 0], [0, 0, 1]],
                        dtype=torch.float64)
    assert torch.allclose(R, half @ V0[:3, :3], atol=1e-12)


def test_camera_model_arguments_are_checked():
    means, quats, scales, opac, cols = _front_scene(10)
    V, K = torch.eye(4)[None], K1.float()
    with pytest.raises(ValueError, match="radial_coeffs must be \\[1, 4\\] for 1 fisheye"):
        rasterize(means, quats, scales, opac, cols, V, K, 8, 8, camera_model="fisheye",
                  radial_coeffs=torch.zeros(1, 6))
    with pytest.raises(ValueError, match="needs viewmats_rs"):
        rasterize(means, quats, scales, opac, cols, V, K, 8, 8, rolling_shutter="top_to_bottom")
    with pytest.raises(ValueError, match="rolling_shutter must be one of"):
        rasterize(means, quats, scales, opac, cols, V, K, 8, 8, rolling_shutter="diagonal", viewmats_rs=V)
    with pytest.raises(ValueError, match="with_ut=False: EWA projects undistorted global-shutter pinhole"):
        rasterize(means, quats, scales, opac, cols, V, K, 8, 8, camera_model="fisheye", with_ut=False)
    with pytest.raises(ValueError, match="camera_model must be one of"):
        rasterize(means, quats, scales, opac, cols, V, K, 8, 8, camera_model="equirect")
    with pytest.raises(ValueError, match="tangential_coeffs applies to pinhole cameras only"):
        rasterize(means, quats, scales, opac, cols, V, K, 8, 8, camera_model="fisheye",
                  tangential_coeffs=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="needs viewmats_rs"):
        Cameras(V, K, 8, 8, rolling_shutter="top_to_bottom")
    with pytest.raises(ValueError, match="rolling_shutter must be one of"):
        Cameras(V, K, 8, 8, rolling_shutter="sideways", viewmats_rs=V)
    cams = Cameras(V, K, 8, 8, rolling_shutter=3, viewmats_rs=V)  # gsplat's RIGHT_TO_LEFT value
    assert cams.rolling_shutter == "right_to_left" and len(cams[[0, 0]]) == 2


def test_unscented_projection_is_differentiable_and_matches_finite_differences():
    means, quats, scales, opac, _ = [t.double() for t in _front_scene(6, seed=13)]
    V = torch.eye(4, dtype=torch.float64)[None]
    k = torch.tensor([[0.05, -0.01, 0.0, 0.0]], dtype=torch.float64)

    def f(m, s):
        _, m2, _, conics, _ = ut.project_ut(m, quats, s, opac, V, K1, 128, 96, camera_model="fisheye",
                                            radial_coeffs=k)
        return m2, conics

    assert torch.autograd.gradcheck(f, (means.requires_grad_(), scales.requires_grad_()), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("camera", ["OPENCV_FISHEYE", "OPENCV"])
def test_distorted_colmap_captures_train_through_their_lens(camera, tmp_path, cpu_backend):
    """A COLMAP capture with a distorted camera loads with its lens model (the images used as they are):
    the scene rendered at the loaded cameras reproduces the photos only through the lens; it trains on
    both backends; undistortion stays available (and refuses a 150-degree fisheye no pinhole can hold)."""
    from PIL import Image

    from splat.data import DatasetError, load_dataset
    from splat.train import Trainer
    from synthetic_data import small_train_config, write_colmap_distorted

    root, (means, quats, scales, opac, sh) = write_colmap_distorted(tmp_path / "cap", camera)
    ds = load_dataset(root, undistort=False, test_every=5, normalize=False)
    cams = ds.train.cameras()
    assert cams.camera_model == ("fisheye" if camera == "OPENCV_FISHEYE" else "pinhole")
    assert cams.radial_coeffs is not None
    first = sorted((root / "images").iterdir())[1]
    assert np.array_equal(ds.train.images[0], np.asarray(Image.open(first).convert("RGB")))  # untouched pixels
    photos = torch.from_numpy(np.stack(ds.train.images)).float() / 255
    bg = torch.ones(len(cams), 3)

    def render(c):
        img, _, _ = rasterize(means, quats, scales, opac, sh, c.viewmats, c.Ks, c.width, c.height, sh_degree=1,
                              backgrounds=bg, camera_model=c.camera_model, radial_coeffs=c.radial_coeffs,
                              tangential_coeffs=c.tangential_coeffs)
        return img

    through_lens = psnr(render(cams), photos)
    without = psnr(render(Cameras(cams.viewmats, cams.Ks, cams.width, cams.height)), photos)
    assert through_lens >= 28.0 and through_lens > without + 6.0, (through_lens, without)
    for backend in ("cpu", "raytrace"):
        cfg = small_train_config(root, tmp_path / f"run_{backend}", iterations=60, backend=backend, test_every=5,
                                 export=[], save_every=0, save_renders=0)
        m = Trainer(cfg, log=lambda *a: None).train()
        assert m["psnr"] > 20.0, (backend, m["psnr"])
    if camera == "OPENCV":
        und = load_dataset(root, undistort=True, test_every=5)
        assert und.train.cameras().camera_model == "pinhole" and und.train.cameras().radial_coeffs is None
    else:
        with pytest.raises(DatasetError, match="cannot undistort"):
            load_dataset(root, undistort=True, test_every=5)
