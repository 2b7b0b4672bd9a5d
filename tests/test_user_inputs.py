"""Inputs that broke peer tools (gsplat, 3DGS, OpenSplat, brush, nerfstudio, SuperSplat, the spz/splat
viewers), one test per kind of fault, each asserting the right value. Every input is built here."""
from __future__ import annotations

import math
import re
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
    from splat.export_cli import main as export_main

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


def _nerfstudio_with_masks(root: Path):
    import json

    from test_data import make_nerfstudio

    meta, truth, _, _ = make_nerfstudio(root, n=6, W=48, H=36)
    masks = {}
    for k, fr in enumerate(meta["frames"]):
        m = np.full((36, 48), 255, np.uint8)
        m[5:17, 7:30] = 0  # not aligned to the 2x2 blocks of --downscale 2
        name = f"masks/mask_{k}.png"
        (root / "masks").mkdir(exist_ok=True)
        from PIL import Image

        Image.fromarray(m).save(root / name)
        fr["mask_path"] = name
        masks[fr["file_path"]] = m > 0
    (root / "transforms.json").write_text(json.dumps(meta))
    return meta, truth, masks


def test_nerfstudio_masks_loaded_and_downscaled(tmp_path):
    from splat.data import load_dataset

    _, truth, masks = _nerfstudio_with_masks(tmp_path)
    ds = load_dataset(tmp_path, test_every=3)
    assert ds.train.masks is not None and ds.test.masks is not None
    for split in (ds.train, ds.test):
        for name, m in zip(split.names, split.masks):
            np.testing.assert_array_equal(m, masks[name])
    ds2 = load_dataset(tmp_path, test_every=3, downscale=2)
    m2 = ds2.train.masks[0]
    assert m2.shape == (18, 24)
    full = masks[ds2.train.names[0]]
    # a pixel is kept only when its whole 2x2 area is
    want = full.reshape(18, 2, 24, 2).all(axis=(1, 3))
    np.testing.assert_array_equal(m2, want)


def test_masked_pixels_are_left_out_of_the_loss_and_the_metrics():
    from splat.metrics import psnr, ssim
    from splat.train.losses import photometric_loss

    g = torch.Generator().manual_seed(0)
    gt = torch.rand(30, 40, 3, generator=g)
    pred = (gt + 0.05 * torch.randn(30, 40, 3, generator=g)).clamp(0, 1).requires_grad_()
    mask = torch.ones(30, 40, 1, dtype=torch.bool)
    mask[4:15, 6:25] = False
    loss = photometric_loss(pred, gt, 0.2, mask)
    loss.backward()
    assert (pred.grad[~mask[..., 0]] == 0).all() and (pred.grad[mask[..., 0]] != 0).any()
    # whatever the masked pixels hold, in the prediction or the ground truth, nothing changes
    noise_gt = torch.where(mask, gt, torch.rand(30, 40, 3, generator=g))
    noise_pred = torch.where(mask, pred.detach(), torch.rand(30, 40, 3, generator=g))
    for a, b in ((noise_pred, gt), (pred.detach(), noise_gt), (noise_pred, noise_gt)):
        torch.testing.assert_close(photometric_loss(a, b, 0.2, mask), loss.detach())
        torch.testing.assert_close(psnr(a, b, mask=mask), psnr(pred.detach(), gt, mask=mask))
        torch.testing.assert_close(ssim(a, b, mask=mask), ssim(pred.detach(), gt, mask=mask))
    # masked PSNR is the PSNR of the kept pixels
    keep = mask[..., 0]
    mse = ((pred.detach() - gt)[keep] ** 2).mean()
    torch.testing.assert_close(psnr(pred.detach(), gt, mask=mask), 10 * torch.log10(1 / mse))
    # an all-ones mask is no mask
    torch.testing.assert_close(ssim(pred.detach(), gt, mask=torch.ones(30, 40)), ssim(pred.detach(), gt))
    torch.testing.assert_close(photometric_loss(pred.detach(), gt, 0.2, torch.ones(30, 40, 1, dtype=torch.bool)),
                               photometric_loss(pred.detach(), gt, 0.2))


def test_training_ignores_what_masked_pixels_hold(tmp_path):
    """Noise painted into the masked-out pixels of every image changes neither the trained model
    nor its metrics (the same run with the clean images gives the same numbers)."""
    from PIL import Image
    from synthetic_data import small_train_config

    from splat.train import Trainer

    results = []
    for variant in ("clean", "noisy"):
        root = tmp_path / variant
        _, truth, masks = _nerfstudio_with_masks(root)
        if variant == "noisy":
            rng = np.random.default_rng(5)
            for name, m in masks.items():
                arr = np.asarray(Image.open(root / name)).copy()
                arr[~m] = rng.integers(0, 256, size=(int((~m).sum()), 3))
                Image.fromarray(arr).save(root / name)
        cfg = small_train_config(root, tmp_path / f"run_{variant}", iterations=60, test_every=3, export=[],
                                 save_every=0)
        tr = Trainer(cfg, log=lambda *a, **k: None)
        try:
            tr.train()
            results.append((tr.evaluate(60), {k: v.detach().clone() for k, v in tr.model.params.items()}))
        finally:
            tr.close()
    (m_clean, p_clean), (m_noisy, p_noisy) = results
    assert m_clean["psnr"] == pytest.approx(m_noisy["psnr"], abs=1e-4)
    for k in p_clean:
        torch.testing.assert_close(p_clean[k], p_noisy[k], atol=1e-5, rtol=0)


# ------------------------------------------------------------------ 4. image reading


def _write_exif_png(path: Path, arr: np.ndarray, orientation: int):
    from PIL import Image

    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes())


def test_one_image_reader_bit_depth_from_the_mode(tmp_path):
    from PIL import Image
    from test_data import write_png16

    from splat.data.common import read_image as read_for_3d
    from splat.image2d.fit import load_image

    dark16 = (np.arange(12).reshape(3, 4) * 90).astype(np.uint16)  # max 990 of 65535: a dark image
    write_png16(tmp_path / "dark16.png", dark16)
    img2d = load_image(tmp_path / "dark16.png").numpy()
    np.testing.assert_allclose(img2d[..., 0], dark16 / 65535.0, atol=1e-7)  # not 257x too bright
    rgb3d, _ = read_for_3d(tmp_path / "dark16.png", np.zeros(3, np.float32))
    np.testing.assert_array_equal(rgb3d[..., 0], np.rint(dark16 / 257.0))

    f = (np.arange(12).reshape(3, 4) / 40.0).astype(np.float32)  # in [0, 0.275]: a float TIFF in [0, 1]
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(load_image(tmp_path / "f.tif").numpy()[..., 1], f, atol=1e-7)  # not 255x too dark
    rgb3d, _ = read_for_3d(tmp_path / "f.tif", np.zeros(3, np.float32))
    np.testing.assert_array_equal(rgb3d[..., 2], np.rint(f * 255.0))

    hot = (f * 10).astype(np.float32)  # a float image beyond [0, 1]: clipped, with a word
    Image.fromarray(hot, "F").save(tmp_path / "hot.tif")
    with pytest.warns(UserWarning, match=r"hot\.tif: float image values span .* clipped"):
        np.testing.assert_allclose(load_image(tmp_path / "hot.tif").numpy()[..., 0], np.clip(hot, 0, 1))


def test_alpha_policy_and_orientation(tmp_path):
    from PIL import Image

    from splat.data.common import read_image as read_for_3d
    from splat.image2d.fit import load_image

    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[255, 0, 51], [255, 255, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img2d = load_image(tmp_path / "a.png").numpy()  # composited on black
    np.testing.assert_allclose(img2d[0, :, 0], [200 / 255, 0.0, 200 / 255 * 0.2], atol=1e-6)
    rgb3d, alpha = read_for_3d(tmp_path / "a.png", np.array([0.0, 0.0, 1.0], np.float32))  # on --background
    np.testing.assert_array_equal(rgb3d[0, 1], [0, 0, 255])
    np.testing.assert_array_equal(alpha, rgba[..., 3])

    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    _write_exif_png(tmp_path / "rot.png", arr, orientation=6)  # "rotate 90 CW to display"
    shown = load_image(tmp_path / "rot.png").numpy()
    assert shown.shape == (3, 2, 3)  # the 2D fit sees the picture as viewers show it
    np.testing.assert_allclose(shown * 255, np.rot90(arr, k=-1), atol=1e-4)
    stored, _ = read_for_3d(tmp_path / "rot.png", np.zeros(3, np.float32))
    np.testing.assert_array_equal(stored, arr)  # the 3D loaders keep the stored pixels


# ------------------------------------------------------------------ 3. scene scale


def _scaled_views(views: dict, s: float) -> dict:
    out = dict(views)
    vm = views["viewmats"].clone()
    vm[:, :3, 3] *= s
    out["viewmats"] = vm
    out["points"] = views["points"] * s
    return out


@pytest.mark.parametrize("with_points", [False, True], ids=["random-init", "points"])
def test_a_scene_in_millimetres_or_kilometres_trains_like_the_same_scene_at_unit_scale(tmp_path, with_points):
    """Every absolute length (near/far planes, random-init cube, initial scales, density-control
    thresholds, learning rates) follows the scene scale: the same NeRF-synthetic-style scene with
    its cameras and points scaled by 1e-3 and 1e3 reaches the unit-scale PSNR within 1.5 dB
    (before, the fixed 0.01 near plane culled the millimetre scene: 14 dB against 28 dB)."""
    from synthetic_data import make_views, small_train_config, write_blender

    from splat.train import Trainer

    views = make_views(n_views=10, width=40, height=32, n_gauss=200)
    psnr = {}
    for s in (1.0, 1e-3, 1e3):
        root = write_blender(tmp_path / f"scale_{s:g}", _scaled_views(views, s), with_points=False)
        if with_points:  # the same noisy points at every scale
            from test_data import write_ply

            noisy = views["points"] + np.random.default_rng(0).normal(0, 0.02, views["points"].shape)
            write_ply(root / "points3d.ply", noisy * s, views["rgb"])
        cfg = small_train_config(root, tmp_path / f"run_{s:g}", iterations=150, export=[], save_every=0,
                                 num_random_points=4000)
        tr = Trainer(cfg, log=lambda *a, **k: None)
        try:
            tr.train()
            psnr[s] = tr.evaluate(150)["psnr"]
        finally:
            tr.close()
    assert psnr[1.0] > 18, psnr
    assert abs(psnr[1e-3] - psnr[1.0]) < 1.5, psnr
    assert abs(psnr[1e3] - psnr[1.0]) < 1.5, psnr


def test_scene_scaled_near_plane_and_model_file_scale():
    from splat.models.static import StaticModel, init_splats
    from splat.render import NEAR_PLANE, RenderSettings

    st = RenderSettings("torch").for_scene(2e-3)
    assert st.near_plane == pytest.approx(NEAR_PLANE * 2e-3) and st.backend == "torch"
    with pytest.raises(ValueError, match="scene_scale must be a positive finite number"):
        RenderSettings().for_scene(0.0)
    pts = np.random.default_rng(0).normal(size=(500, 3)) * 1e-3
    a = StaticModel.from_splats(init_splats(pts, np.zeros((500, 3), np.uint8), 0))
    b = StaticModel.from_splats(init_splats(pts * 1e6, np.zeros((500, 3), np.uint8), 0))
    assert b.scene_scale == pytest.approx(a.scene_scale * 1e6, rel=1e-6)
    torch.testing.assert_close(b.params["scales"], a.params["scales"] + math.log(1e6), atol=1e-4, rtol=0)


def test_a_scene_far_from_the_origin_warns_about_float32(tmp_path):
    from synthetic_data import make_views, write_blender

    from splat.data import load_dataset

    views = make_views(n_views=6, width=16, height=16, n_gauss=20)
    far = dict(views)
    vm = views["viewmats"].double().clone()
    shift = np.array([3e5, -2e5, 1e3])
    # camera centre c -> c + shift: t' = t - R shift
    vm[:, :3, 3] -= torch.einsum("nij,j->ni", vm[:, :3, :3], torch.tensor(shift))
    far["viewmats"] = vm
    far["points"] = views["points"] + shift
    root = write_blender(tmp_path / "far", far)
    with pytest.warns(UserWarning, match=r"far: the cameras are up to .* from the origin, .*float32 resolves only"):
        load_dataset(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(write_blender(tmp_path / "near", views))


# ------------------------------------------------------------------ COLMAP files, record by record
# (the cases a mutation pass over splat/data/colmap_files.py showed untested)


def _check_colmap_file(tmp_path, name, check, data, msg):
    """Write `data` as `name`, run the colmap_files `check`: it passes (msg None) or raises the
    DatasetError `msg` after the file's name."""
    from splat.data import DatasetError

    p = tmp_path / name
    p.write_bytes(data)
    if msg is None:
        check(p)
    else:
        with pytest.raises(DatasetError, match=rf"{re.escape(name)}: {msg}"):
            check(p)


def _cameras_bin(*cams) -> bytes:
    out = struct.pack("<Q", len(cams))
    for cid, model, w, h, nparams in cams:
        out += struct.pack("<iiQQ", cid, model, w, h) + struct.pack(f"<{nparams}d", *([1.0] * nparams))
    return out


def _images_bin(*imgs) -> bytes:
    out = struct.pack("<Q", len(imgs))
    for iid, name, npts in imgs:
        out += struct.pack("<I4d3dI", iid, 1, 0, 0, 0, 0, 0, 0, 1) + name + struct.pack("<Q", npts) + b"\0" * 24 * npts
    return out


def _points_bin(*tracks) -> bytes:
    out = struct.pack("<Q", len(tracks))
    for i, t in enumerate(tracks):
        out += struct.pack("<Q3d3Bd", i + 1, 0, 0, 0, 1, 2, 3, 0.5) + struct.pack("<Q", t) + b"\0" * 8 * t
    return out


@pytest.mark.parametrize("data,msg", [
    (_cameras_bin((1, 1, 64, 48, 4)), None),
    (_cameras_bin((1, 1, (1 << 20) - 1, 1, 4)), None),
    (_cameras_bin((1, 1, 1, (1 << 20) - 1, 4)), None),
    (_cameras_bin((1, 1, 0, 48, 4)), r"camera 1 has an implausible size 0x48"),
    (_cameras_bin((1, 1, 64, 0, 4)), r"camera 1 has an implausible size 64x0"),
    (_cameras_bin((2, 1, 1 << 20, 48, 4)), r"camera 2 has an implausible size 1048576x48"),
    (_cameras_bin((2, 1, 48, 1 << 20, 4)), r"camera 2 has an implausible size 48x1048576"),
    (_cameras_bin((3, 99, 64, 48, 4)), r"camera 3 has unknown camera model id 99"),
    (_cameras_bin((1, 1, 64, 48, 4))[:-1], r"truncated in the parameters of camera 1 \(needs 32 bytes\)"),
    (struct.pack("<Q", 2) + _cameras_bin((1, 1, 64, 48, 4))[8:] + b"\0" * 10,
     r"truncated in camera 1 \(at byte 64 of 74\)"),
    (_cameras_bin((1, 1, 64, 48, 4)) + b"\0", r"1 unexpected bytes after the last record"),
    (struct.pack("<Q", 2) + _cameras_bin((1, 1, 64, 48, 4))[8:], r"claims 2 cameras, which need at least 48 bytes, "
                                                                   r"but only 56 remain|truncated in camera 1"),
    (struct.pack("<Q", 3) + _cameras_bin((1, 1, 64, 48, 4))[8:], r"claims 3 cameras, which need at least 72 bytes, "
                                                                   r"but only 56 remain"),
])
def test_colmap_cameras_bin_checks(tmp_path, data, msg):
    from splat.data.colmap_files import _check_cameras

    _check_colmap_file(tmp_path, "cameras.bin", _check_cameras, data, msg)


@pytest.mark.parametrize("data,msg", [
    (_images_bin((1, b"a b.png\0", 2), (7, b"c.png\0", 0)), None),
    (_images_bin((5, b"abcdefghij", 0))[:-8], r"the name of image 5 has no terminating NUL"),
    (_images_bin((5, b"\xff\xfe.png\0", 0)), r"the name of image 5 is not UTF-8"),
    (_images_bin((5, b"a.png\0", 3))[:-48], r"claims 3 2D points of image 5, which need at least 72 bytes, but only "
                                              r"24 remain"),
    (_images_bin((5, b"a.png\0", 3), (6, b"b.png\0", 0))[:170], r"truncated in the pose of image 6 \(needs 56"),
    (_images_bin((5, b"a.png\0", 3), (6, b"b.png\0", 0))[:220], r"truncated in the camera id of image 6"),
    (struct.pack("<Q", 2) + _images_bin((5, b"a.png\0", 0))[8:], r"claims 2 images, which need at least 146 bytes"),
])
def test_colmap_images_bin_checks(tmp_path, data, msg):
    from splat.data.colmap_files import _check_images

    _check_colmap_file(tmp_path, "images.bin", _check_images, data, msg)


def test_colmap_binary_messages_in_full(tmp_path):
    from splat.data import DatasetError
    from splat.data.colmap_files import _check_cameras, _check_points

    p = tmp_path / "cameras.bin"
    p.write_bytes(_cameras_bin((1, 1, 64, 48, 4))[:-1])
    with pytest.raises(DatasetError) as e:
        _check_cameras(p)
    assert str(e.value) == (f"{p}: truncated in the parameters of camera 1 (needs 32 bytes) (at byte 32 of 63); "
                            "the file is truncated or not a COLMAP binary model")
    p = tmp_path / "points3D.bin"
    p.write_bytes(_points_bin(1) + b"\0")
    with pytest.raises(DatasetError) as e:
        _check_points(p)
    assert str(e.value) == f"{p}: 1 unexpected bytes after the last record (the counts and the data disagree)"
    d = tmp_path / "dir.bin"
    d.mkdir()
    with pytest.raises(DatasetError, match=r"dir\.bin: cannot read: Is a directory"):
        _check_points(d)


@pytest.mark.parametrize("data,msg", [
    (_points_bin(0, 3, 1), None),
    (_points_bin(0, 3)[:-1], r"3D point 1 claims a track of 3 observations past the end of the file"),
    (_points_bin(5, 0)[:-31], r"truncated in 3D point 1 \(at byte 99 of 119\)"),
    (_points_bin(2) + b"\0\0", r"2 unexpected bytes after the last record"),
    (struct.pack("<Q", 2) + _points_bin(0)[8:], r"claims 2 3D points, which need at least 102 bytes, but only 51"),
])
def test_colmap_points3d_bin_checks(tmp_path, data, msg):
    from splat.data.colmap_files import _check_points

    _check_colmap_file(tmp_path, "points3D.bin", _check_points, data, msg)


TEXT_CAMERAS = "# Camera list\n1 PINHOLE 64 48 50 50 32 24\n"
TEXT_IMAGES = ("# Image list\n# two lines per image\n1 1 0 0 0 0 0 3 1 my image 01.png\n10 20 -1 30 40 -1\n"
               "2 1 0 0 0 0.1 0 3 1  other.png \n\n")
TEXT_POINTS = "# 3D point list\n1 0.5 -1 2 255 0 7 0.5 1 0\n2 nan 0 inf 1 2 3 0.1\n"


def test_colmap_text_model_reader(tmp_path):
    from splat.data.colmap_files import read_text_model

    (tmp_path / "m").mkdir()
    for n, t in (("cameras", TEXT_CAMERAS), ("images", TEXT_IMAGES), ("points3D", TEXT_POINTS)):
        (tmp_path / "m" / f"{n}.txt").write_text(t)
    (tmp_path / "t").mkdir()
    names, xyz, rgb, copy = read_text_model(tmp_path / "m", tmp_path / "t")
    assert names == {1: "my image 01.png", 2: "other.png"}
    np.testing.assert_array_equal(xyz[0], [0.5, -1, 2])
    assert np.isnan(xyz[1, 0]) and np.isinf(xyz[1, 2])
    np.testing.assert_array_equal(rgb, [[255, 0, 7], [1, 2, 3]])
    assert xyz.dtype == np.float64 and rgb.dtype == np.uint8
    assert (copy / "cameras.txt").read_text() == TEXT_CAMERAS.rstrip("\n") + "\n"
    lines = (copy / "images.txt").read_text().split("\n")
    assert lines[0] == "1 1 0 0 0 0 0 3 1 image_1" and lines[1] == ""
    assert lines[2] == "2 1 0 0 0 0.1 0 3 1 image_2" and lines[3] == ""
    assert (copy / "points3D.txt").read_text() == ""
    rec = pycolmap.Reconstruction(str(copy))  # what pycolmap reads: poses, no 2D points
    assert {im.name for im in rec.images.values()} == {"image_1", "image_2"}


@pytest.mark.parametrize("which,text,msg", [
    ("images", "1 1 0 0 0 0 0 3 1\n\n", r"images\.txt: line 1: expected IMAGE_ID .* got 9 fields"),
    ("images", "x 1 0 0 0 0 0 3 1 a.png\n\n", r"images\.txt: line 1: the image id 'x' is not an integer"),
    ("images", "1 1 0 0 0 0 0 3 1 a.png\n\n1 1 0 0 0 0 0 3 1 b.png\n\n", r"images\.txt: line 3: image id 1 appears twice"),
    ("points3D", "1 0 0 0 255 0\n", r"points3D\.txt: line 1: expected POINT3D_ID X Y Z R G B \(colours 0-255\)"),
    ("points3D", "1 0 0 0 256 0 0 0.5\n", r"points3D\.txt: line 1: expected POINT3D_ID X Y Z R G B \(colours"),
    ("points3D", "1 0 0 0 -1 0 0 0.5\n", r"points3D\.txt: line 1: expected POINT3D_ID X Y Z R G B \(colours"),
    ("points3D", "# c\n1 0 zero 0 1 0 0 0.5\n", r"points3D\.txt: line 2: expected POINT3D_ID X Y Z R G B \.\.\."),
])
def test_colmap_text_model_errors(tmp_path, which, text, msg):
    from splat.data import DatasetError
    from splat.data.colmap_files import read_text_model

    (tmp_path / "m").mkdir()
    files = {"cameras": TEXT_CAMERAS, "images": TEXT_IMAGES, "points3D": TEXT_POINTS, which: text}
    for n, t in files.items():
        (tmp_path / "m" / f"{n}.txt").write_text(t)
    with pytest.raises(DatasetError, match=msg):
        read_text_model(tmp_path / "m", tmp_path)


def test_colmap_text_model_unreadable(tmp_path):
    from splat.data import DatasetError
    from splat.data.colmap_files import read_text_model

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "cameras.txt").write_text(TEXT_CAMERAS)
    (tmp_path / "m" / "images.txt").mkdir()
    with pytest.raises(DatasetError, match=r"images\.txt: cannot read: Is a directory"):
        read_text_model(tmp_path / "m", tmp_path)


def test_colmap_text_model_not_utf8(tmp_path):
    from splat.data import DatasetError
    from splat.data.colmap_files import read_text_model

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "cameras.txt").write_text(TEXT_CAMERAS)
    (tmp_path / "m" / "images.txt").write_bytes(b"1 1 0 0 0 0 0 3 1 \xff.png\n\n")
    with pytest.raises(DatasetError, match=r"images\.txt: not UTF-8 text \(invalid start byte at byte 18\)"):
        read_text_model(tmp_path / "m", tmp_path)
