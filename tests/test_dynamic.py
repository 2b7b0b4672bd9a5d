"""Dynamic models (4DGS, Spacetime Gaussians), the temporal hierarchy, rasterize's covars
and the dynamic model kinds in the training loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splat import rasterize
from splat.backends.torch_ref import quat_scale_to_covar, quat_to_rotmat, rotmat_to_quat
from splat.cameras import Cameras, look_at
from splat.data.common import Dataset, Split
from splat.models.dynamic import TemporalHierarchy, time_of
from splat.models.fourdgs import (FourDGSConfig, FourDGSModel, covariance_4d, covariance_to_quat_scale,
                                  rotation_4d, slice_4d)
from splat.models.spacetime import SpacetimeConfig, SpacetimeModel, motion_at
from splat.models.static import render_splats
from splat.render import RenderSettings
from splat.strategies.ops import shift_polynomial, split

D = torch.float64


# ----------------------------------------------------------------------------- helpers


def camera(W=24, H=20, t=0.4, dtype=torch.float32, eye=(2.5, 0.4, 0.8)):
    V = look_at(np.array(eye), np.zeros(3), np.array([0, 0, 1.0]))
    f = 0.9 * W
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    return Cameras(torch.tensor(V, dtype=dtype)[None], torch.tensor(K, dtype=dtype)[None], W, H,
                   time=torch.tensor([t], dtype=dtype))


def random_4dgs(N=40, seed=0, dtype=torch.float32, levels=0, sh_degree=1):
    g = torch.Generator().manual_seed(seed)
    K = (sh_degree + 1) ** 2
    params = {
        "means": torch.randn(N, 3, generator=g) * 0.4, "times": torch.rand(N, 1, generator=g),
        "scales": torch.log(torch.rand(N, 3, generator=g) * 0.15 + 0.05),
        "scales_t": torch.log(torch.rand(N, 1, generator=g) * 0.3 + 0.1),
        "quats": torch.randn(N, 4, generator=g), "quats_r": torch.randn(N, 4, generator=g),
        "opacities": torch.randn(N, generator=g) + 1.0, "sh0": torch.randn(N, 1, 3, generator=g) * 0.5,
        "shN": torch.randn(N, K - 1, 3, generator=g) * 0.1, "time_range": torch.tensor([0.0, 1.0]),
    }
    params = {k: v.to(dtype) for k, v in params.items()}
    return FourDGSModel(FourDGSConfig(sh_degree=sh_degree, hierarchy_levels=levels), params, 1.0)


def random_spacetime(N=40, seed=0, dtype=torch.float32, features=False, levels=0, degree=3):
    g = torch.Generator().manual_seed(seed)
    params = {
        "means": torch.randn(N, 3, generator=g) * 0.4, "motion": torch.randn(N, 3 * degree, generator=g) * 0.2,
        "times": torch.rand(N, 1, generator=g), "scales_t": torch.log(torch.rand(N, 1, generator=g) * 0.3 + 0.1),
        "scales": torch.log(torch.rand(N, 3, generator=g) * 0.15 + 0.05), "quats": torch.randn(N, 4, generator=g),
        "omega": torch.randn(N, 4, generator=g) * 0.3, "opacities": torch.randn(N, generator=g) + 1.0,
        "time_range": torch.tensor([0.0, 1.0]),
    }
    if features:
        params.update(features=torch.rand(N, 9, generator=g), mlp_w1=torch.randn(9, 5, generator=g) * 0.3,
                      mlp_b1=torch.randn(5, generator=g) * 0.1, mlp_w2=torch.randn(5, 3, generator=g) * 0.3,
                      mlp_b2=torch.randn(3, generator=g) * 0.1)
    else:
        params.update(sh0=torch.randn(N, 1, 3, generator=g) * 0.5, shN=torch.randn(N, 3, 3, generator=g) * 0.1)
    params = {k: v.to(dtype) for k, v in params.items()}
    cfg = SpacetimeConfig(motion_degree=degree, features=features, sh_degree=1, mlp_hidden=5, hierarchy_levels=levels)
    return SpacetimeModel(cfg, params, 1.0)


def synthetic_dataset(n_cams=6, n_times=6, W=32, seed=0) -> Dataset:
    """A multi-view dynamic scene rendered with the static rasterizer: blobs, a fifth of them moving."""
    g = torch.Generator().manual_seed(seed)
    N = 120
    means = torch.randn(N, 3, generator=g) * 0.5
    base = {"scales": torch.full((N, 3), -2.0), "quats": torch.tensor([1.0, 0, 0, 0]).repeat(N, 1),
            "opacities": torch.full((N,), 2.0), "sh0": torch.randn(N, 1, 3, generator=g), "shN": torch.zeros(N, 0, 3)}
    moving = (torch.arange(N) < N // 5).float()[:, None]
    f = W * 1.1
    K = np.array([[f, 0, W / 2], [0, f, W / 2], [0, 0, 1]], np.float32)
    imgs, Vs, ts = [], [], []
    for ti in range(n_times):
        t = ti / (n_times - 1)
        s = dict(base, means=means + moving * torch.tensor([1.0 * t - 0.5, 0.0, 0.2 * math.sin(5 * t)]))
        for c in range(n_cams):
            a = 2 * math.pi * c / n_cams
            V = look_at(np.array([3 * math.cos(a), 3 * math.sin(a), 1.0]), np.zeros(3), np.array([0, 0, 1.0]))
            col, _, _ = render_splats(s, torch.tensor(V, dtype=torch.float32)[None], torch.tensor(K)[None], W, W,
                                      backgrounds=torch.ones(1, 3), backend="torch")
            imgs.append((col[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
            Vs.append(V)
            ts.append(t)
    Vs = np.stack(Vs).astype(np.float32)
    idx = np.arange(len(imgs))
    test, train = idx[idx % n_cams == 1], idx[idx % n_cams != 1]

    def split_of(ii):
        return Split(names=[f"v{i:03d}" for i in ii], images=[imgs[i] for i in ii], viewmats=Vs[ii],
                     Ks=np.repeat(K[None], len(ii), 0), widths=[W] * len(ii), heights=[W] * len(ii),
                     times=np.array(ts, np.float32)[ii])

    rng = np.random.default_rng(seed)
    pts = rng.uniform(-1.0, 1.0, (500, 3)).astype(np.float32)
    return Dataset(train=split_of(train), test=split_of(test), points=pts,
                   points_rgb=rng.integers(0, 255, (500, 3), dtype=np.uint8), points_random=True, scene_scale=3.3,
                   transform=np.eye(4), background=np.ones(3, np.float32), format="synthetic", root="synthetic")


# ----------------------------------------------------------------------------- 4D math


def test_rotation_4d_is_a_rotation_and_embeds_3d_rotations():
    g = torch.Generator().manual_seed(1)
    ql, qr = torch.randn(50, 4, generator=g, dtype=D), torch.randn(50, 4, generator=g, dtype=D)
    R = rotation_4d(ql, qr)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(4, dtype=D).expand(50, 4, 4), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(50, dtype=D), atol=1e-12)
    # r = conj(l): the 3D rotation of l, time untouched
    R3 = rotation_4d(ql, ql * torch.tensor([1.0, -1, -1, -1], dtype=D))
    assert torch.allclose(R3[:, :3, :3], quat_to_rotmat(ql), atol=1e-12)
    assert torch.allclose(R3[:, 3, 3], torch.ones(50, dtype=D), atol=1e-12)
    assert R3[:, 3, :3].abs().max() < 1e-12
    # identity quaternions: no rotation
    eye = torch.tensor([[1.0, 0, 0, 0]], dtype=D)
    assert torch.allclose(rotation_4d(eye, eye)[0], torch.eye(4, dtype=D))


def test_slice_matches_the_4d_gaussian_evaluated_directly():
    """opacity(t) N(x; mean(t), cov(t)) is the 4D Gaussian at (x, t), against a dense float64 inverse."""
    g = torch.Generator().manual_seed(2)
    N = 200
    means, times = torch.randn(N, 3, generator=g, dtype=D), torch.rand(N, 1, generator=g, dtype=D)
    ql, qr = torch.randn(N, 4, generator=g, dtype=D), torch.randn(N, 4, generator=g, dtype=D)
    s, st = torch.rand(N, 3, generator=g, dtype=D) + 0.05, torch.rand(N, 1, generator=g, dtype=D) + 0.05
    for t in (0.0, 0.37, 1.3):
        m, cov, marginal, vel = slice_4d(means, times, ql, qr, s, st, t)
        S4 = covariance_4d(ql, qr, s, st)
        x = m + torch.randn(N, 3, generator=g, dtype=D) * 0.3
        d = torch.cat([x - means, t - times], -1)
        dense = torch.exp(-0.5 * (d[:, None, :] @ torch.linalg.inv(S4) @ d[:, :, None]).reshape(-1))
        dx = x - m
        sliced = marginal * torch.exp(-0.5 * (dx[:, None, :] @ torch.linalg.inv(cov) @ dx[:, :, None]).reshape(-1))
        assert torch.allclose(sliced, dense, rtol=1e-9, atol=1e-12)
        # the conditional covariance is the Schur complement, and symmetric PSD
        schur = S4[:, :3, :3] - S4[:, :3, 3:] @ S4[:, 3:, :3] / S4[:, 3:, 3:]
        assert torch.allclose(cov, schur, atol=1e-12)
        assert torch.linalg.eigvalsh(cov).min() > 0
        assert torch.allclose(vel, S4[:, :3, 3] / S4[:, 3, 3, None], atol=1e-12)
        assert torch.allclose(marginal, torch.exp(-0.5 * (t - times[:, 0]) ** 2 / S4[:, 3, 3]), atol=1e-14)


def test_covariance_to_quat_scale_roundtrip():
    g = torch.Generator().manual_seed(3)
    q, s = torch.randn(100, 4, generator=g, dtype=D), torch.rand(100, 3, generator=g, dtype=D) + 0.01
    cov = quat_scale_to_covar(q, s)
    q2, s2 = covariance_to_quat_scale(cov)
    assert torch.allclose(quat_scale_to_covar(q2.double(), s2.double()), cov, atol=1e-6)
    R = quat_to_rotmat(q)
    assert torch.allclose(quat_to_rotmat(rotmat_to_quat(R)), R, atol=1e-12)


# ----------------------------------------------------------------------------- rasterize(covars=)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_rasterize_covars_equals_quats_and_scales(backend):
    g = torch.Generator().manual_seed(4)
    N = 60
    means = torch.randn(N, 3, generator=g) * 0.5
    quats, scales = torch.randn(N, 4, generator=g), torch.rand(N, 3, generator=g) * 0.2 + 0.02
    opac, colors = torch.rand(N, generator=g), torch.rand(N, 3, generator=g)
    cam = camera(W=40, H=32)
    a, aa, _ = rasterize(means, quats, scales, opac, colors, cam.viewmats, cam.Ks, 40, 32, backend=backend)
    b, bb, info = rasterize(means, None, None, opac, colors, cam.viewmats, cam.Ks, 40, 32, backend=backend,
                            covars=quat_scale_to_covar(quats, scales))
    assert torch.allclose(a, b, atol=2e-5) and torch.allclose(aa, bb, atol=2e-5)
    assert info["means2d"].shape == (1, N, 2)
    with pytest.raises(ValueError, match="covars must be"):
        rasterize(means, None, None, opac, colors, cam.viewmats, cam.Ks, 40, 32, covars=torch.zeros(N, 3))


# ----------------------------------------------------------------------------- gradients


def _loss_of(model, cam, name, backend="torch"):
    target = torch.rand(cam.height, cam.width, 3, generator=torch.Generator().manual_seed(9), dtype=D)

    class Params(dict):  # the model's parameters with `name` replaced by the function's input
        per_gaussian = model.params.per_gaussian

    def f(p):
        real = model._modules["params"]
        model._modules["params"] = Params({k: (p if k == name else v.detach()) for k, v in real.items()})
        try:
            out = model.render(cam, RenderSettings(backend), backgrounds=torch.ones(1, 3, dtype=D))
        finally:
            model._modules["params"] = real
        return ((out.colors[0] - target) ** 2).sum()

    return f


@pytest.mark.parametrize("name", ["means", "times", "scales", "scales_t", "quats", "quats_r", "opacities", "sh0", "shN"])
def test_4dgs_gradients_match_finite_differences(name):
    model = random_4dgs(N=12, seed=5, dtype=D)
    cam = camera(W=16, H=12, t=0.45, dtype=D)
    f = _loss_of(model, cam, name)
    p = model.params[name].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (p,), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("features", [False, True])
def test_spacetime_gradients_match_finite_differences(features):
    model = random_spacetime(N=12, seed=6, dtype=D, features=features)
    cam = camera(W=16, H=12, t=0.55, dtype=D)
    names = ["means", "motion", "times", "scales_t", "scales", "quats", "omega", "opacities"]
    names += ["features", "mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2"] if features else ["sh0", "shN"]
    for name in names:
        f = _loss_of(model, cam, name)
        p = model.params[name].detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(f, (p,), eps=1e-6, atol=1e-5, rtol=1e-4), name


def test_dynamic_models_render_the_same_on_every_backend():
    for model in (random_4dgs(N=80, seed=7), random_spacetime(N=80, seed=7)):
        cam = camera(W=48, H=40, t=0.3)
        ref = model.render(cam, RenderSettings("torch"), backgrounds=torch.ones(1, 3)).colors
        cpu = model.render(cam, RenderSettings("cpu"), backgrounds=torch.ones(1, 3)).colors
        assert torch.allclose(ref, cpu, atol=1e-4)
        assert (ref < 0.99).any()  # something is drawn


def test_temporal_cut_changes_nothing():
    """Dropping Gaussians below 1/255 opacity at t before projecting gives the same image and gradients."""
    model = random_4dgs(N=200, seed=8)
    with torch.no_grad():
        model.params["scales_t"].fill_(math.log(0.05))  # short-lived Gaussians: most are cut at any t
    cam = camera(W=40, H=32, t=0.5)
    rows = model.alive_rows(0.5)
    assert rows is not None and 0 < len(rows) < 200
    out = model.render(cam, RenderSettings("torch"), backgrounds=torch.ones(1, 3))
    out.colors.sum().backward()
    g_cut = model.params["means"].grad.clone()
    model.params["means"].grad = None
    full = model._gaussians_at(None, 0.5, 1)
    from splat.render import render_gaussians

    colors, _, _ = render_gaussians(full, cam, RenderSettings("torch"), backgrounds=torch.ones(1, 3))
    assert torch.allclose(colors, out.colors, atol=1e-6)
    colors.sum().backward()
    assert torch.allclose(model.params["means"].grad, g_cut, atol=1e-5)


def test_one_instant_per_batch_and_time_required():
    model = random_4dgs(N=10)
    cam = camera()
    two = Cameras(cam.viewmats.repeat(2, 1, 1), cam.Ks.repeat(2, 1, 1), cam.width, cam.height,
                  time=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="one instant"):
        model.render(two)
    no_time = Cameras(cam.viewmats, cam.Ks, cam.width, cam.height)
    with pytest.raises(ValueError, match="time"):
        model.render(no_time)
    with pytest.raises(ValueError, match="needs per-camera time"):
        FourDGSModel.check_cameras(no_time, "data/x")
    assert time_of(two[:1], "4dgs") == pytest.approx(0.1)


# ----------------------------------------------------------------------------- spacetime


def test_spacetime_motion_rotation_and_temporal_opacity():
    model = random_spacetime(N=30, seed=10)
    t = 0.7
    g = model._gaussians_at(None, t, 1)
    p = model.params
    dt = t - p["times"][:, 0]
    expect = p["means"] + sum(p["motion"][:, 3 * k:3 * k + 3] * dt[:, None] ** (k + 1) for k in range(3))
    assert torch.allclose(g.means, expect, atol=1e-5)
    assert torch.allclose(g.quats, p["quats"] + p["omega"] * dt[:, None])
    sigma = torch.exp(p["scales_t"][:, 0])
    assert torch.allclose(g.opacities, torch.sigmoid(p["opacities"]) * torch.exp(-0.5 * (dt / sigma) ** 2))


def test_shift_polynomial_keeps_the_path():
    g = torch.Generator().manual_seed(11)
    m, mu, d = torch.randn(7, 9, generator=g, dtype=D), torch.randn(7, 3, generator=g, dtype=D), \
        torch.randn(2, 7, 1, generator=g, dtype=D)
    new, c0 = shift_polynomial(m, d)
    tau = torch.randn(7, generator=g, dtype=D)
    for b in range(2):
        assert torch.allclose(motion_at(mu, m, tau), motion_at(mu + c0[b], new[b], tau - d[b, :, 0]), atol=1e-10)


# ----------------------------------------------------------------------------- density control in space and time


def _adam(params):
    return {k: torch.optim.Adam([{"params": [p], "lr": 0.0}]) for k, p in params.items()}


def test_4dgs_split_samples_the_4d_gaussian():
    model = random_4dgs(N=1, seed=12)
    p = model.params
    n = 20000
    # one parent repeated: the children are samples of its XYZT Gaussian
    for k in list(p.per_gaussian):
        p[k] = torch.nn.Parameter(p[k].detach().repeat((n,) + (1,) * (p[k].dim() - 1)))
    mean4 = torch.cat([p["means"][0], p["times"][0]]).detach()
    cov4 = covariance_4d(p["quats"][:1], p["quats_r"][:1], torch.exp(p["scales"][:1]), torch.exp(p["scales_t"][:1]))[0]
    opt = _adam(p)
    parent_scale_t = float(p["scales_t"].detach()[0, 0])
    split(p, opt, {}, torch.ones(n, dtype=torch.bool), generator=torch.Generator().manual_seed(0))
    x = torch.cat([p["means"], p["times"]], -1).detach().double()
    assert x.shape == (2 * n, 4)
    emp = torch.cov(x.T)
    assert torch.allclose(x.mean(0), mean4.double(), atol=4 * cov4.diagonal().sqrt().max().item() / math.sqrt(n))
    assert torch.allclose(emp, cov4.double(), atol=0.05 * cov4.diagonal().max().item())
    assert float(p["scales_t"].detach()[0, 0]) == pytest.approx(parent_scale_t - math.log(1.6), abs=1e-6)


def test_spacetime_split_children_follow_the_parent_path():
    model = random_spacetime(N=5, seed=13)
    p = model.params
    before = {t: model._gaussians_at(None, t, 1).means.detach().clone() for t in (0.2, 0.8)}
    with torch.no_grad():
        p["scales"].fill_(math.log(1e-6))  # no spatial spread: children lie on the parent's path
    split(p, _adam(p), {}, torch.tensor([True, False, True, False, False]), generator=torch.Generator().manual_seed(1))
    assert model.num_gaussians == 7
    for t, parent in before.items():
        after = model._gaussians_at(None, t, 1).means
        # rows: the 3 unsplit parents, then the first child of parents 0 and 2, then their second children
        assert torch.allclose(after[:3], parent[[1, 3, 4]], atol=1e-5)
        assert torch.allclose(after[3:7], parent[[0, 2, 0, 2]], atol=1e-4)


# ----------------------------------------------------------------------------- temporal hierarchy


def test_hierarchy_assignment_and_rows():
    h = TemporalHierarchy(3, 0.0, 1.0)
    assert h.num_nodes == 7
    assert h.active_nodes(0.1) == [0, 1, 3] and h.active_nodes(0.9) == [0, 2, 6] and h.active_nodes(0.3) == [0, 1, 4]
    times = torch.tensor([0.5, 0.1, 0.12, 0.6, 0.9, 0.26])
    sigma = torch.tensor([0.5, 0.01, 0.05, 0.02, 0.01, 0.01])
    nodes = h.assign(times, sigma)
    # support +-3 sigma: whole range -> root; [0.07,0.13] -> level-2 segment 0 (node 3); [-0.03,0.27] -> root;
    # [0.54,0.66] -> level-2 segment 2 (node 5); [0.87,0.93] -> node 6; [0.23,0.29] -> crosses 0.25: node 1
    assert nodes.tolist() == [0, 3, 0, 5, 6, 1]
    assert h.rows(nodes, 0.1).tolist() == [0, 1, 2, 5]
    assert h.rows(nodes, 0.6).tolist() == [0, 2, 3]
    assert h.rows(nodes, 0.95).tolist() == [0, 2, 4]
    for t in np.linspace(0, 1, 9):
        for node, (a, b) in ((n, h.node_bounds(n)) for n in range(7)):
            if node in h.active_nodes(float(t)):
                assert a - 1e-9 <= t <= b + 1e-9


def test_hierarchy_renders_what_the_flat_model_renders():
    """A Gaussian is only cut outside its node's segment, where it is below 1.2% of its peak: renders agree."""
    flat = random_4dgs(N=150, seed=14)
    with torch.no_grad():
        flat.params["scales_t"].copy_(torch.log(torch.rand(150, 1, generator=torch.Generator().manual_seed(3)) * 0.05
                                                + 0.01))
        flat.params["quats_r"].copy_(flat.params["quats"] * torch.tensor([1.0, -1, -1, -1]))  # no space-time mixing
    params = {k: v.detach().clone() for k, v in flat.params.items()}
    tree = FourDGSModel(FourDGSConfig(sh_degree=1, hierarchy_levels=4), params, 1.0)
    assert len(set(tree.params["nodes"].tolist())) > 4
    for t in (0.05, 0.33, 0.5, 0.91):
        cam = camera(W=40, H=32, t=t)
        a = flat.render(cam, RenderSettings("torch"), backgrounds=torch.ones(1, 3)).colors
        rows = tree.alive_rows(t)
        b = tree.render(cam, RenderSettings("torch"), backgrounds=torch.ones(1, 3)).colors
        assert rows is not None and len(rows) < len(flat.alive_rows(t) if flat.alive_rows(t) is not None else 150) + 1
        assert (a - b).abs().max() < 0.02


def test_hierarchy_rows_follow_node_changes():
    model = random_spacetime(N=50, seed=15, levels=3)
    with torch.no_grad():
        model.params["scales_t"].fill_(math.log(0.01))  # short-lived: down to the finest nodes at the next update
    assert model.update(99) == {}  # not an update step
    assert model.update(100)["moved"] > 0
    assert len(set(model.params["nodes"].tolist())) > 3 and len(model.candidate_rows(0.1)) < 50
    with torch.no_grad():
        model.params["scales_t"].fill_(math.log(2.0))  # long-lived: all back to the root
    assert model.update(200)["moved"] > 0
    assert set(model.params["nodes"].tolist()) == {0.0} and len(model.candidate_rows(0.1)) == 50


# ----------------------------------------------------------------------------- export of one instant


def test_splats_at_renders_like_the_model():
    for model in (random_4dgs(N=60, seed=16, sh_degree=1), random_spacetime(N=60, seed=16)):
        t = 0.42
        cam = camera(W=40, H=32, t=t)
        out = model.render(cam, RenderSettings("torch"), backgrounds=torch.ones(1, 3)).colors
        s = model.splats_at(t)
        col, _, _ = render_splats(s, cam.viewmats, cam.Ks, 40, 32, backgrounds=torch.ones(1, 3), backend="torch")
        assert torch.allclose(col, out, atol=2e-4), model.name
        assert s["means"].shape[0] == len(model.alive_rows(t) if model.alive_rows(t) is not None else s["means"])
    with pytest.raises(ValueError, match="no static per-Gaussian colour"):
        random_spacetime(N=5, features=True).splats_at(0.5)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset()


def _cfg(tmp_path, model, **kw):
    from splat.train import TrainConfig

    return TrainConfig(out=tmp_path / model, model=model, iterations=kw.pop("iterations", 60), progress=False,
                       eval_every=0, save_renders=0, export=[], scale_schedule=False, **kw)


@pytest.mark.parametrize("model", ["4dgs", "spacetime"])
def test_dynamic_models_train_and_densify(tmp_path, dataset, model):
    from splat.strategies.adc import ADCStrategy
    from splat.train import Trainer

    adc = ADCStrategy(refine_start_iter=20, refine_every=20, refine_stop_iter=1000, grow_grad2d=1e-5)
    tr = Trainer(_cfg(tmp_path, model, iterations=80, adc=adc), dataset=dataset, log=lambda *a: None)
    n0 = tr.num_gaussians
    m = tr.train()
    assert tr.num_gaussians > n0  # clone/split in space and time happened
    assert m["psnr"] > 12
    p = tr.model.params
    assert all(p[k].shape[0] == tr.num_gaussians for k in p.per_gaussian)


def test_checkpoint_resume_is_exact(tmp_path, dataset):
    """A run resumed from its step-20 checkpoint ends bit-for-bit where the uninterrupted run ends."""
    import shutil

    from splat.strategies.adc import ADCStrategy
    from splat.train import Trainer

    adc = ADCStrategy(refine_start_iter=10, refine_every=10, refine_stop_iter=1000, grow_grad2d=2e-5)
    for model in ("4dgs", "spacetime"):
        cfg = _cfg(tmp_path / "full", model, iterations=40, adc=adc, save_every=20, keep_checkpoints=5,
                   spacetime=SpacetimeConfig(hierarchy_levels=2, hierarchy_every=10))
        full = Trainer(cfg, dataset=dataset, log=lambda *a: None)
        full.train()
        half = tmp_path / "half" / model
        shutil.copytree(cfg.out, half)
        (half / "ckpts" / "ckpt_40.pt").unlink()
        resumed = Trainer(_cfg(tmp_path / "half", model, resume=True), dataset=dataset, log=lambda *a: None)
        assert resumed.start_step == 20
        resumed.train()
        differ = [k for k, v in full.model.params.items() if not torch.equal(v, resumed.model.params[k])]
        assert not differ, (model, differ)


def test_dynamic_model_on_static_data_is_refused(tmp_path, dataset):
    from splat.train import Trainer

    static = Dataset(**{**dataset.__dict__, "train": Split(**{**dataset.train.__dict__, "times": None}),
                        "test": Split(**{**dataset.test.__dict__, "times": None})})
    for model in ("4dgs", "spacetime"):
        with pytest.raises(ValueError, match=f"--model {model} needs per-camera time"):
            Trainer(_cfg(tmp_path, model), dataset=static, log=lambda *a: None)
    # and a static model on dynamic data trains as before, time ignored
    m = Trainer(_cfg(tmp_path, "static", iterations=10), dataset=dataset, log=lambda *a: None).train()
    assert m["psnr"] > 5


# ----------------------------------------------------------------------------- command lines


def write_dnerf(ds: Dataset, root) -> None:
    """`ds` in the D-NeRF layout (transforms_{train,test}.json with per-frame time, RGB PNGs)."""
    import json
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    for name, sp in (("train", ds.train), ("test", ds.test)):
        (root / name).mkdir(parents=True, exist_ok=True)
        frames = []
        order = np.argsort(sp.times, kind="stable")
        for i in order:
            c2w = np.linalg.inv(sp.viewmats[i].astype(np.float64))
            c2w[:3, 1:3] *= -1  # OpenCV -> OpenGL camera axes
            Image.fromarray(sp.images[i]).save(root / name / f"{sp.names[i]}.png")
            frames.append({"file_path": f"./{name}/{sp.names[i]}", "time": float(sp.times[i]),
                           "transform_matrix": c2w.tolist()})
        W, fx = sp.widths[0], float(sp.Ks[0][0, 0])
        (root / f"transforms_{name}.json").write_text(json.dumps(
            {"camera_angle_x": 2 * math.atan(0.5 * W / fx), "frames": frames}))


@pytest.fixture(scope="module")
def dynamic_run(tmp_path_factory, dataset):
    from splat.train import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("dyn")
    write_dnerf(dataset, root / "data")
    cfg = TrainConfig(data=root / "data", out=root / "run", model="spacetime", iterations=60, progress=False,
                      eval_every=0, save_renders=0, export=["ply"], num_random_points=400)
    Trainer(cfg, log=lambda *a: None).train()
    return root


def test_dnerf_folder_trains_and_renders_at_a_time(dynamic_run):
    from splat.render_cli import RenderConfig, render

    run = dynamic_run / "run"
    r = render(RenderConfig(model=run, out=dynamic_run / "r1"), log=lambda *a: None)
    assert r["views"] == 6 and r["psnr"] > 10
    r = render(RenderConfig(model=run, out=dynamic_run / "r2", time=0.5), log=lambda *a: None)
    assert r["time"] == 0.5 and r["psnr"] < 60
    r = render(RenderConfig(model=run, out=dynamic_run / "r3", cameras="orbit", frames=6, resolution=(32, 24)),
               log=lambda *a: None)
    assert r["frames"] == 6 and r["times"] == [0.0, 1.0]
    r = render(RenderConfig(model=run, out=dynamic_run / "r4", cameras="fixed", view=3, frames=5,
                            time_range=(0.2, 0.4), video=dynamic_run / "r4" / "v.gif"), log=lambda *a: None)
    assert r["times"] == [0.2, 0.4]
    import imageio.v3 as iio

    frames = iio.imread(dynamic_run / "r4" / "v.gif")
    assert len(frames) == 5 and np.abs(frames[0].astype(float) - frames[-1].astype(float)).mean() > 0.2
    with pytest.raises(ValueError, match="--view 99"):
        render(RenderConfig(model=run, cameras="fixed", view=99, out=dynamic_run / "r5"), log=lambda *a: None)


def test_export_one_instant(dynamic_run, tmp_path):
    from splat import io as splat_io
    from splat.export_cli import main
    from splat.train.run import load_model

    run = dynamic_run / "run"
    assert main([str(run), str(tmp_path / "f.ply"), "--time", "0.3"]) == 0
    s = splat_io.load(tmp_path / "f.ply")
    model, _ = load_model(run)
    ref = model.splats_at(0.3)
    assert torch.allclose(s["means"], ref["means"], atol=1e-6)
    # the file renders what the model renders at t = 0.3
    cam = camera(W=32, H=32, t=0.3, eye=(3.0, 0.0, 1.0))
    a = model.render(cam, RenderSettings("cpu"), backgrounds=torch.ones(1, 3)).colors
    b, _, _ = render_splats(s, cam.viewmats, cam.Ks, 32, 32, backgrounds=torch.ones(1, 3), backend="cpu")
    assert torch.allclose(a, b, atol=1e-3)
    assert main([str(run), str(tmp_path / "g.splat"), "--time", "0.9"]) == 0
    assert main([str(run), str(tmp_path / "h.ply")]) == 1  # a dynamic model needs --time
    assert not (tmp_path / "h.ply").exists()
    assert main([str(tmp_path / "f.ply"), str(tmp_path / "i.ply"), "--time", "0.1"]) == 1


def test_export_and_render_errors_name_the_problem(dynamic_run, capsys):
    from splat.export_cli import main
    from splat.render_cli import RenderConfig, render

    run = dynamic_run / "run"
    assert main([str(run), str(dynamic_run / "x.ply")]) == 1
    err = capsys.readouterr().err
    assert "pass --time T" in err and "0..1" in err
    static_file = dynamic_run / "s.ply"
    assert main([str(run), str(static_file), "--time", "0.5"]) == 0
    with pytest.raises(ValueError, match="for dynamic models"):
        render(RenderConfig(model=static_file, time=0.5, cameras="orbit", frames=2), log=lambda *a: None)


def test_viewer_scene_of_a_dynamic_run(dynamic_run):
    from viewer.scene import DynamicScene, ViewCamera, load_scene

    scene = load_scene(dynamic_run / "run", log=lambda *a: None)
    assert isinstance(scene, DynamicScene) and scene.time_range == (0.0, 1.0)
    cam = ViewCamera.from_pose(*scene.home_pose()[:2], math.radians(50), 40, 30)
    a, b = scene.render(cam, t=0.0), scene.render(cam, t=1.0)
    assert a.shape == (30, 40, 3) and np.abs(a.astype(float) - b.astype(float)).mean() > 0.1
    v = scene.version
    assert scene.t == 0.0  # a render at its own time moves nothing shared
    scene.set_time(1.0)  # the slider
    assert scene.version == v + 1
    centers, covs, rgbs, opa = scene.client_splats()
    assert len(centers) == len(scene.model.splats_at(1.0)["means"]) and scene.version == v + 1
    scene.update(scene.model.state())
    assert scene.version == v + 2 and scene.num_gaussians == scene.model.num_gaussians


def test_defaults_follow_the_kind_of_video(dataset):
    """Monocular video gets the static warm-up, the temporal floor and (4DGS) long-lived initial
    Gaussians; multi-view video none of them; explicit options win; the resolved values live in
    the model (so a loaded or resumed model behaves as the trained one)."""
    from splat.models.dynamic import frame_interval, is_monocular

    assert not is_monocular(dataset)  # 5 train cameras per instant
    keep = [i for i in range(len(dataset.train)) if i % 5 == round(float(dataset.train.times[i]) * 5) % 5]
    mono = Dataset(**{**dataset.__dict__, "train": Split(**{
        **dataset.train.__dict__, "names": [dataset.train.names[i] for i in keep],
        "images": [dataset.train.images[i] for i in keep], "viewmats": dataset.train.viewmats[keep],
        "Ks": dataset.train.Ks[keep], "widths": [dataset.train.widths[i] for i in keep],
        "heights": [dataset.train.heights[i] for i in keep], "times": dataset.train.times[keep]})})
    assert is_monocular(mono) and len(mono.train) == 6
    dt = frame_interval(mono)
    assert dt == pytest.approx(0.2)
    m = FourDGSModel.create(FourDGSConfig(), mono)
    assert m.params["time_prior"].tolist() == pytest.approx([dt, 0.15])
    assert torch.exp(m.params["scales_t"]).max().item() == pytest.approx(1.0)
    assert m.min_var_t == pytest.approx(dt * dt)
    m._iterations = 100
    assert m.in_warmup(14) and not m.in_warmup(15) and not m.in_warmup(None)
    m = FourDGSModel.create(FourDGSConfig(), dataset)
    assert m.params["time_prior"].tolist() == [0.0, 0.0] and torch.exp(m.params["scales_t"]).max().item() == \
        pytest.approx(0.25)
    s = SpacetimeModel.create(SpacetimeConfig(static_warmup=0.3, min_scale_t=2.0), dataset)
    assert s.params["time_prior"].tolist() == pytest.approx([2.0 * 0.2, 0.3])
    again = SpacetimeModel.from_state(s.config, s.state(), s.scene_scale)
    assert again.min_var_t == pytest.approx(s.min_var_t)
    with pytest.raises(ValueError, match="static-warmup"):
        SpacetimeConfig(static_warmup=1.5).check()


def test_warmup_freezes_time():
    """During the static warm-up a Gaussian renders at its temporal centre with full opacity in time."""
    model = random_spacetime(N=20, seed=21)
    model.params["time_prior"] = torch.nn.Parameter(torch.tensor([0.0, 0.5]), requires_grad=False)
    model._iterations = 100
    cam = camera(t=0.9)
    frozen = model.gaussians(cam, step=10)
    assert torch.allclose(frozen.means, model.params["means"]) and torch.allclose(
        frozen.opacities, torch.sigmoid(model.params["opacities"]))
    live = model.gaussians(cam, step=60)
    assert not torch.allclose(live.opacities, torch.sigmoid(model.params["opacities"][live.ids]
                                                            if live.ids is not None else model.params["opacities"]))
