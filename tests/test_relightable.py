"""The relightable model (GS^3): shading against a float64 reference, the shadow pass against a
ray-marched reference, gradients by finite differences, backends against each other, export
under a light, and the trainer on point-lit data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splat.cameras import Cameras, look_at
from splat.models.relightable import (RelightableConfig, RelightableModel, shade,
                                      shadow_transmittance, srgb_encode)
from splat.render import RenderSettings


def _normalize(v):
    return v / np.linalg.norm(v)


def _reference_shade(x, n, albedo, axes, sharp, rho, lpos, lint, cam):
    """Independent float64 GS^3 shading of one Gaussian (numpy)."""
    wi = _normalize(lpos - x)
    wo = _normalize(cam - x)
    if n @ wo < 0:
        n = -n
    h = _normalize(wi + wo)
    f = albedo / math.pi
    for k in range(len(sharp)):
        f = f + rho[k] * math.exp(sharp[k] * (h @ axes[k] - 1))
    d2 = np.sum((lpos - x) ** 2)
    return f * max(n @ wi, 0.0) * lint / d2


def test_shading_matches_float64_reference():
    rng = np.random.default_rng(0)
    for trial in range(6):
        x = rng.normal(size=3) * 0.3
        n = _normalize(rng.normal(size=3))
        albedo = rng.uniform(0.1, 0.9, 3)
        axes = np.stack([_normalize(rng.normal(size=3) + [0, 0, 2]) for _ in range(2)])
        sharp = rng.uniform(5, 80, 2)
        rho = rng.uniform(0, 0.5, (2, 3))
        lpos = rng.normal(size=3) * 3
        lint = rng.uniform(5, 30, 3)
        cam = rng.normal(size=3) * 4
        ref = _reference_shade(x, n, albedo, axes, sharp, rho, lpos, lint, cam)
        t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
        out = shade(t(x)[None], t(n)[None], t(albedo)[None], t(axes)[None], t(sharp)[None], t(rho)[None],
                    t(lpos)[None], t(lint)[None], t(cam)[None])
        np.testing.assert_allclose(out.direct[0, 0].numpy(), ref, rtol=1e-10, atol=1e-12)
    # lit from behind the camera-facing side: no direct light; the normal's sign does not matter
    x, n = np.zeros(3), np.array([0.0, 0.0, 1.0])
    args = [torch.tensor(v, dtype=torch.float64)[None] for v in
            (x, n, [0.5] * 3, [[0, 0, 1.0]], [10.0], [[0.1] * 3])]
    below = shade(*args, torch.tensor([[0, 0, -2.0]], dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64),
                  torch.tensor([[0, 0, 3.0]], dtype=torch.float64))
    assert float(below.direct.abs().max()) == 0.0 and float(below.cos_i[0, 0]) == pytest.approx(-1.0)
    flipped = [a.clone() for a in args]
    flipped[1] = -flipped[1]
    above = [torch.tensor([[0, 0, 2.0]], dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64),
             torch.tensor([[0, 1.0, 3.0]], dtype=torch.float64)]
    torch.testing.assert_close(shade(*args, *above).direct, shade(*flipped, *above).direct)


def test_srgb_encode_reference_and_straight_through_clamp():
    x = torch.tensor([-0.5, 0.0, 0.002, 0.0031308, 0.2, 0.5, 1.0, 1.7], requires_grad=True)
    y = srgb_encode(x)
    xc = np.clip(x.detach().numpy(), 0, 1)
    ref = np.where(xc <= 0.0031308, 12.92 * xc, 1.055 * xc ** (1 / 2.4) - 0.055)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-6, atol=1e-7)
    y.sum().backward()
    assert float(x.grad[-1]) > 0 and float(x.grad[0]) == pytest.approx(12.92)  # gradients pass the clamp


def test_shading_gradients_match_finite_differences():
    torch.manual_seed(1)
    d = torch.float64
    N, K = 3, 2
    inputs = [torch.randn(N, 3, dtype=d) * 0.3, torch.nn.functional.normalize(torch.randn(N, 3, dtype=d), dim=-1),
              torch.rand(N, 3, dtype=d), torch.nn.functional.normalize(torch.randn(N, K, 3, dtype=d) + 2, dim=-1),
              torch.rand(N, K, dtype=d) * 20 + 2, torch.rand(N, K, 3, dtype=d) * 0.3]
    lights = (torch.tensor([[2.0, 1.0, 3.0], [-2.0, 0.5, 2.5]], dtype=d), torch.rand(2, 3, dtype=d) * 10 + 5,
              torch.tensor([[0.5, -3.0, 1.0], [3.0, 0.2, 2.0]], dtype=d))
    for x in inputs:
        x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: shade(*a, *lights).direct, inputs, eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- shadow pass


def _max_response(x, mean, cov_inv):
    dx = x - mean
    return np.exp(-0.5 * np.einsum("...i,ij,...j->...", dx, cov_inv, dx))


def _ray_marched_transmittance(light, target, occluders, steps=4000):
    """1 - alpha of each occluder along the segment light -> target, alpha = opacity x the
    Gaussian's maximum response on the segment (ray-marched), composited front to back."""
    T = 1.0
    ts = np.linspace(0.0, 1.0, steps)[:, None]
    pts = light + ts * (target - light)
    for mean, cov, opac in occluders:
        T *= 1.0 - opac * _max_response(pts, mean, np.linalg.inv(cov)).max()
    return T


def test_shadow_pass_matches_ray_marched_occlusion():
    """Two Gaussians: A between the light and B. B's transmittance follows 1 - alpha_A along the
    light ray as A slides off the ray, A itself is unshadowed, and nothing shadows without A."""
    d = torch.float64
    light = np.array([0.0, 0.0, 4.0])
    sA, sB = 0.15, 0.05
    for offset, opac in ((0.0, 0.8), (0.1, 0.8), (0.2, 0.6), (0.35, 0.9), (0.7, 0.9)):
        A = np.array([offset, 0.0, 1.0])
        B = np.array([0.0, 0.0, 0.0])
        means = torch.tensor(np.stack([A, B]), dtype=d)
        quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=d)
        scales = torch.tensor([[sA, sA, sA], [sB, sB, sB]], dtype=d)
        opacities = torch.tensor([opac, 0.9], dtype=d)
        for backend, dt in (("torch", d), ("cpu", torch.float32)):
            T = shadow_transmittance(means.to(dt), quats.to(dt), scales.to(dt), opacities.to(dt),
                                     torch.tensor(light[None], dtype=dt), RenderSettings(backend=backend),
                                     resolution=256, layers=16)
            ref = _ray_marched_transmittance(light, B, [(A, np.eye(3) * sA ** 2, opac)])
            assert float(T[0, 1]) == pytest.approx(ref, abs=0.03), (offset, backend)
            assert float(T[0, 0]) == pytest.approx(1.0, abs=1e-3)


def test_shadow_pass_light_inside_uses_a_cube_map():
    """A light among the Gaussians: each is shadowed only by what lies between it and the light, in
    every direction (the six cube faces)."""
    d = torch.float64
    dirs = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1.0]])
    occ = 0.5 * dirs
    far = 1.5 * dirs
    lone = np.array([[0.9, 0.9, 0.2]])
    means = torch.tensor(np.concatenate([occ, far, lone]), dtype=d)
    N = len(means)
    scales = torch.full((N, 3), 0.08, dtype=d)
    T = shadow_transmittance(means, torch.tensor([[1.0, 0, 0, 0]] * N, dtype=d), scales,
                             torch.full((N,), 0.7, dtype=d), torch.zeros(1, 3, dtype=d),
                             RenderSettings(backend="torch"), resolution=64, layers=16)[0]
    assert torch.allclose(T[:6], torch.ones(6, dtype=d), atol=1e-3)  # the occluders are lit
    assert torch.allclose(T[6:12], torch.full((6,), 0.3, dtype=d), atol=0.03)  # behind them: 1 - 0.7
    assert float(T[12]) == pytest.approx(1.0, abs=1e-3)


def test_shadow_pass_gradients_match_finite_differences():
    """Through the rasterizer and the ramps: the occluder's and receiver's positions across the
    light ray, opacities and widths across it (depth moves the layers, which are not
    differentiated)."""
    d = torch.float64
    xy = torch.tensor([[0.08, 0.02], [0.0, 0.01]], dtype=d, requires_grad=True)
    opac = torch.tensor([0.7, 0.9], dtype=d, requires_grad=True)
    sxy = torch.tensor([[0.15, 0.12], [0.05, 0.05]], dtype=d, requires_grad=True)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=d)
    light = torch.tensor([[0.0, 0.0, 4.0]], dtype=d)

    def f(xy, o, sxy):
        means = torch.cat([xy, torch.tensor([[1.0], [0.0]], dtype=d)], 1)
        scales = torch.cat([sxy, torch.tensor([[0.15], [0.05]], dtype=d)], 1)
        return shadow_transmittance(means, quats, scales, o, light, RenderSettings(backend="torch"), resolution=64,
                                    layers=8, center=torch.zeros(3, dtype=d), radius=1.2)[0, 1]

    assert torch.autograd.gradcheck(f, (xy, opac, sxy), eps=1e-6, atol=1e-5)
    g = torch.autograd.grad(f(xy, opac, sxy), (xy, opac))
    assert float(g[1][0]) < 0  # a more opaque occluder darkens B
    assert float(g[0][0, 0]) > 0  # moving A off the ray (it sits at +x) lights B


# ----------------------------------------------------------------------------- the model


def _model(N=400, seed=0, **cfg) -> RelightableModel:
    """A small random relightable model (a blob of Gaussians around the origin)."""
    g = torch.Generator().manual_seed(seed)
    from splat.models.nets import mlp_params
    c = RelightableConfig(**cfg)
    Kl, Fd = c.num_lobes, c.feature_dim
    means = torch.randn(N, 3, generator=g) * 0.35
    params = {"means": means, "scales": torch.full((N, 3), math.log(0.06)), "quats": torch.randn(N, 4, generator=g),
              "opacities": torch.full((N,), 1.0), "albedo": torch.randn(N, 3, generator=g),
              "normals": means.clone(), "lobe_axes": torch.tensor([0, 0, 1.0]).repeat(N, Kl, 1),
              "lobe_sharpness": torch.full((N, Kl), math.log(30.0)), "lobe_rgb": torch.full((N, Kl, 3), -2.0),
              "features": torch.randn(N, Fd, generator=g) * 0.1,
              "light_prior": torch.tensor([0, 0, 0, 20.0, 20.0, 20.0, 3.5, 1.5])}
    if c.shadow_mlp:
        params.update(mlp_params("shadow", 5 + Fd, c.mlp_hidden, 1, g, out_scale=0.1))
    if c.residual:
        params.update(mlp_params("residual", Fd + 6, c.mlp_hidden, 3, g, out_scale=0.1, out_bias=-3.0))
    return RelightableModel(c, params, 1.0)


def _cameras(lights, size=48):
    V = np.stack([look_at((3.0 * math.cos(a), 3.0 * math.sin(a), 1.2), (0, 0, 0), (0, 0, 1))
                  for a in np.linspace(0, 2, len(lights))])
    f = 0.5 * size / math.tan(math.radians(22))
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    return Cameras.from_numpy(V, np.repeat(K[None], len(lights), 0), size, size,
                              light_position=np.asarray(lights, dtype=np.float32),
                              light_intensity=np.full((len(lights), 3), 20.0, dtype=np.float32))


def test_model_renders_alike_on_every_backend_and_follows_the_light():
    m = _model()
    cams = _cameras([(2.5, 0.0, 2.0), (-2.5, 1.0, 1.0)])
    with torch.no_grad():
        ref = m.render(cams, RenderSettings(backend="torch")).colors
        cpu = m.render(cams, RenderSettings(backend="cpu")).colors
        torch.testing.assert_close(cpu, ref, atol=2e-4, rtol=0)
        moved = m.render(_cameras([(-2.5, 0.0, 2.0), (-2.5, 1.0, 1.0)]), RenderSettings(backend="cpu")).colors
    assert float((moved[0] - cpu[0]).abs().mean()) > 0.02  # the light moved: the picture changes
    torch.testing.assert_close(moved[1], cpu[1])  # the other camera's light did not


def test_ablations_change_what_they_should():
    cams = _cameras([(2.5, 0.0, 2.0)])
    s = RenderSettings(backend="cpu")
    with torch.no_grad():
        full = _model().shading(cams, s)
        assert float(full["transmittance"].min()) < 0.2  # the blob shadows itself
        assert float(full["residual"].min()) > 0
        off = _model(shadows=False, residual=False).shading(cams, s)
    assert torch.equal(off["shadow"], torch.ones_like(off["shadow"])) and float(off["residual"].abs().max()) == 0
    torch.testing.assert_close(off["radiance"], full["direct"])


def test_model_gradients_reach_every_parameter_and_match_finite_differences():
    m = _model(N=60).double()
    cams = _cameras([(2.5, 0.0, 2.0)], size=24)
    cams = Cameras(cams.viewmats.double(), cams.Ks.double(), 24, 24, light_position=cams.light_position.double(),
                   light_intensity=cams.light_intensity.double())
    s = RenderSettings(backend="torch")
    out = m.render(cams, s)
    out.colors.square().mean().backward()
    for k, p in m.params.items():
        if k != "light_prior":
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), k
    # finite differences of the loss along the albedo, the normals and the residual weights
    for k in ("albedo", "normals", "residual_w2", "shadow_w2", "lobe_rgb"):
        p = m.params[k]
        direction = torch.randn_like(p)
        with torch.no_grad():
            eps = 1e-5
            p += eps * direction
            up = m.render(cams, s).colors.square().mean()
            p -= 2 * eps * direction
            down = m.render(cams, s).colors.square().mean()
            p += eps * direction
        fd = float((up - down) / (2 * eps))
        an = float((p.grad * direction).sum())
        assert fd == pytest.approx(an, rel=1e-3, abs=1e-8), k


def test_splats_under_a_light_render_like_the_model():
    from splat.models.static import render_splats

    m = _model(N=300, residual=False)
    light = (2.0, -2.0, 2.5)
    splats = m.splats_under(light, sh_degree=3, settings=RenderSettings(backend="cpu"))
    cams = _cameras([light] * 3)
    with torch.no_grad():
        want = m.render(cams, RenderSettings(backend="cpu")).colors
        got, _, _ = render_splats(splats, cams.viewmats, cams.Ks, 48, 48, backend="cpu")
    mse = float(((got - want) ** 2).mean())
    assert -10 * math.log10(mse) > 30
    with pytest.raises(ValueError, match="finite"):
        m.splats_under((float("nan"), 0, 0))


def test_relightable_model_refuses_cameras_without_lights():
    m = _model(N=20)
    cams = _cameras([(1.0, 1.0, 1.0)])
    bare = Cameras(cams.viewmats, cams.Ks, cams.width, cams.height)
    with pytest.raises(ValueError, match="needs per-camera light_position"):
        m.render(bare)


# ----------------------------------------------------------------------------- training and tools


def _train_cfg(out, model="relightable", **kw):
    from splat.train import TrainConfig

    return TrainConfig(out=out, model=model, iterations=kw.pop("iterations", 30), progress=False, eval_every=0,
                       save_renders=0, export=[], scale_schedule=False, downscale=4, num_random_points=3000, **kw)


@pytest.fixture(scope="module")
def relit_run(tmp_path_factory):
    """A short relightable run on the embedded relightable scene (at 32 x 32)."""
    from splat.strategies.adc import ADCStrategy
    from splat.train import Trainer
    from splat.train.run import default_scene_path

    root = tmp_path_factory.mktemp("relit")
    adc = ADCStrategy(refine_start_iter=10, refine_every=10, refine_stop_iter=1000, grow_grad2d=1e-5)
    cfg = _train_cfg(root / "run", iterations=40, adc=adc, data=default_scene_path("relightable"), save_every=20,
                     keep_checkpoints=5)
    tr = Trainer(cfg, log=lambda *a: None)
    n0 = tr.num_gaussians
    before = tr.evaluate(0)["psnr"]
    metrics = tr.train()
    return root, tr, n0, {**metrics, "psnr_before": before}


def test_relightable_trains_densifies_and_resumes_exactly(relit_run, tmp_path):
    import shutil

    from splat.train import Trainer

    root, tr, n0, metrics = relit_run
    assert tr.num_gaussians != n0 and metrics["psnr"] > metrics["psnr_before"] + 1
    p = tr.model.params
    assert all(p[k].shape[0] == tr.num_gaussians for k in p.per_gaussian)
    half = tmp_path / "half"
    shutil.copytree(root / "run", half)
    (half / "ckpts" / "ckpt_40.pt").unlink()
    resumed = Trainer(dataclasses_replace(tr.cfg, out=half, resume=True), log=lambda *a: None)
    assert resumed.start_step == 20
    resumed.train()
    differ = [k for k, v in tr.model.params.items() if not torch.equal(v, resumed.model.params[k])]
    assert not differ


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_relightable_on_data_without_lights_is_refused(tmp_path):
    from splat.train import Trainer
    from splat.train.run import default_scene_path

    with pytest.raises(ValueError, match="--model relightable needs per-camera light_position"):
        Trainer(_train_cfg(tmp_path / "x", data=default_scene_path("static")), log=lambda *a: None)


def test_render_cli_moves_the_light(relit_run, tmp_path):
    from PIL import Image

    from splat.render_cli import RenderConfig, render

    root, tr, _, _ = relit_run
    run = root / "run"
    own = render(RenderConfig(model=run, out=tmp_path / "own"), log=lambda *a: None)
    assert "psnr" in own  # the test views under their own lights: scored
    moved = render(RenderConfig(model=run, out=tmp_path / "moved", light=(0.0, -3.0, 2.0)), log=lambda *a: None)
    assert "psnr" not in moved and moved["light"] == (0.0, -3.0, 2.0)  # no ground truth under this light
    a = np.asarray(Image.open(sorted((tmp_path / "own" / "test").glob("*.png"))[0]), dtype=float)
    b = np.asarray(Image.open(sorted((tmp_path / "moved" / "test").glob("*.png"))[0]), dtype=float)
    assert np.abs(a - b).mean() > 1.0
    fixed = render(RenderConfig(model=run, out=tmp_path / "v", cameras="fixed", view=1, frames=3,
                                video=tmp_path / "v.gif"), log=lambda *a: None)
    assert fixed["frames"] == 3 and fixed["light_orbit"] and (tmp_path / "v.gif").is_file()
    for bad, msg in ((dict(light=(float("nan"), 0.0, 1.0)), "finite"),
                     (dict(light_intensity=(-1.0, 1.0, 1.0)), ">= 0"),
                     (dict(light_orbit=True), "--light-orbit moves the light along a video"),
                     (dict(cameras="fixed", light=(1.0, 1.0, 1.0)), "with --light nothing would move")):
        with pytest.raises(ValueError, match=msg):
            render(RenderConfig(model=run, out=tmp_path / "bad", **bad), log=lambda *a: None)


def test_export_under_a_light(relit_run, tmp_path, capsys):
    from splat import io as splat_io
    from splat.export_cli import main

    root, tr, _, _ = relit_run
    run = root / "run"
    assert main([str(run), str(tmp_path / "a.ply"), "--light", "2", "-1", "3"]) == 0
    assert main([str(run), str(tmp_path / "b.ply"), "--light", "-2", "1", "1"]) == 0
    a, b = splat_io.load(tmp_path / "a.ply"), splat_io.load(tmp_path / "b.ply")
    assert a["means"].shape[0] == tr.num_gaussians and a["shN"].shape[1] == 15
    assert float((a["sh0"] - b["sh0"]).abs().mean()) > 0.01  # another light, other colours
    assert main([str(tmp_path / "a.ply"), str(tmp_path / "c.ply"), "--light", "0", "0", "1"]) == 1
    assert "--light is for relightable models" in capsys.readouterr().err
    for bad, msg in ((["--time", "0.5"], "--time is for dynamic models"),
                     (["--light-intensity", "-1", "1", "1"], "--light-intensity must be >= 0"),
                     (["--light", "nan", "0", "1"], "--light must be finite"),
                     (["--light-sh-degree", "5"], "--light-sh-degree must be 0..3")):
        assert main([str(run), str(tmp_path / "d.ply"), *bad]) == 1
        assert msg in capsys.readouterr().err, bad
        assert not (tmp_path / "d.ply").exists()


def test_viewer_scene_of_a_relightable_run(relit_run):
    from viewer.scene import ModelScene, ViewCamera, load_scene

    root, tr, _, _ = relit_run
    scene = load_scene(root / "run", log=lambda *a: None)
    assert isinstance(scene, ModelScene) and scene.has_light and scene.time_range is None
    cam = ViewCamera.from_pose(*scene.home_pose()[:2], math.radians(50), 40, 30)
    a = scene.render(cam)
    b = scene.render(cam, light=np.array([-2.0, 2.0, 0.5]))
    assert a.shape == (30, 40, 3) and np.abs(a.astype(float) - b.astype(float)).mean() > 0.5
    v = scene.version
    scene.set_light((-2.0, 2.0, 0.5), (5.0, 5.0, 5.0))  # the light control
    assert scene.version == v + 1
    dim = scene.render(cam)
    assert dim.astype(float).mean() != pytest.approx(b.astype(float).mean(), abs=0.5)
    centers, covs, rgbs, opa = scene.client_splats()
    assert len(centers) == scene.num_gaussians
    with pytest.raises(ValueError, match="finite"):
        scene.set_light((float("inf"), 0, 0))


def test_a_scaled_scene_gives_the_same_model_up_to_scale():
    """The same data in other units (positions x 10, intensities x 100, so the images are the same)
    gives the same initial model up to that scale and the same renders: nothing in the model
    (normals, reflectance bounds, shadow layers and bias) depends on the units."""
    import dataclasses

    from splat.data import load_dataset
    from splat.train.run import default_scene_path

    ds = load_dataset(default_scene_path("relightable"), downscale=8, num_random_points=2000)
    k = 10.0

    def scaled(split):
        V = split.viewmats.copy()
        V[:, :3, 3] *= k
        return dataclasses.replace(split, viewmats=V, light_positions=split.light_positions * k,
                                   light_intensities=split.light_intensities * k * k)

    big = dataclasses.replace(ds, train=scaled(ds.train), test=scaled(ds.test), points=ds.points * k,
                              scene_scale=ds.scene_scale * k)
    a = RelightableModel.create(RelightableConfig(), ds, seed=3)
    b = RelightableModel.create(RelightableConfig(), big, seed=3)
    torch.testing.assert_close(b.params["means"], a.params["means"] * k)
    torch.testing.assert_close(b.params["scales"], a.params["scales"] + math.log(k))
    for name in ("normals", "lobe_axes", "albedo", "lobe_rgb", "lobe_sharpness", "features"):
        torch.testing.assert_close(b.params[name], a.params[name], msg=name)
    assert b.rho_max == pytest.approx(a.rho_max, rel=1e-5)
    cams_a, cams_b = ds.test.cameras([0, 1]), big.test.cameras([0, 1])
    with torch.no_grad():
        for cam_a, cam_b in zip((cams_a[0:1], cams_a[1:2]), (cams_b[0:1], cams_b[1:2])):
            ra = a.render(cam_a, RenderSettings(backend="cpu").for_scene(a.scene_scale)).colors
            rb = b.render(cam_b, RenderSettings(backend="cpu").for_scene(b.scene_scale)).colors
            torch.testing.assert_close(rb, ra, atol=2e-3, rtol=0)
