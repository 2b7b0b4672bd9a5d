"""SteepGS: splitting matrices against finite differences, the split itself, training and resume."""
from __future__ import annotations

import shutil

import pytest
import torch

from synthetic_data import make_views, small_train_config, write_blender

from splat.backends.torch_ref import ALPHA_THRESHOLD, MAX_ALPHA
from splat.render import rasterize
from splat.strategies.steepgs import (SteepGSStrategy, projection_jacobians, splitting_matrices_2d,
                                      unpack_symmetric)
from splat.train import Trainer

QUIET = lambda *a: None  # noqa: E731
W, H = 20, 16


def _scene(dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    means = torch.tensor([[0.0, 0.0, 3.0], [0.25, 0.1, 3.4], [-0.3, -0.1, 2.8]], dtype=dtype)
    quats = torch.randn(3, 4, generator=g, dtype=dtype)
    scales = torch.tensor([[0.25, 0.15, 0.2], [0.3, 0.2, 0.1], [0.15, 0.2, 0.2]], dtype=dtype)
    opac = torch.tensor([0.6, 0.8, 0.5], dtype=dtype)
    colors = torch.rand(3, 3, generator=g, dtype=dtype)
    K = torch.tensor([[[25.0, 0, W / 2], [0, 25.0, H / 2], [0, 0, 1]]], dtype=dtype)
    target = torch.rand(H, W, 3, generator=g, dtype=dtype)
    return means, quats, scales, opac, colors, torch.eye(4, dtype=dtype)[None], K, target


def _loss(img, target):
    return ((img - target) ** 2).sum() + (img ** 3).sum() * 0.1  # not just quadratic


def _dense_alphas(means2d, conics, opac, keep=None):
    """alpha_i(x) at every pixel centre [N,H,W], as the rasterizer evaluates it; with `keep`
    [N,H,W] (bool), the pixels where alpha is neither cut (< 1/255) nor clamped (0.99) are
    fixed to those, so that finite differences see the smooth part only."""
    ys, xs = torch.meshgrid(torch.arange(H, dtype=means2d.dtype) + 0.5, torch.arange(W, dtype=means2d.dtype) + 0.5,
                            indexing="ij")
    dx = means2d[:, 0, None, None] - xs
    dy = means2d[:, 1, None, None] - ys
    a, b, c = (conics[:, k, None, None] for k in range(3))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    raw = opac[:, None, None] * torch.exp(-sigma)
    if keep is not None:
        return torch.where(keep, raw, torch.zeros_like(raw))
    alpha = torch.clamp(raw, max=MAX_ALPHA)
    return torch.where(alpha >= ALPHA_THRESHOLD, alpha, torch.zeros_like(alpha))


def _composite(alphas, colors, order):
    img = torch.zeros(H, W, 3, dtype=alphas.dtype)
    T = torch.ones(H, W, dtype=alphas.dtype)
    for i in order:
        img = img + (T * alphas[i])[..., None] * colors[i]
        T = T * (1 - alphas[i])
    return img + T[..., None]  # white background


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_2d_splitting_matrix_matches_finite_differences(backend):
    """S2_i = sum_p dL/dalpha_ip Hess_{mean2d} alpha_ip, from the renderer's conic and opacity
    gradients, against central differences of sum_p g_ip alpha_i(x_p; mean2d + d) with the
    per-pixel g = dL/dalpha of a dense float64 compositor."""
    means, quats, scales, opac, colors, V, K, target = _scene(torch.float64 if backend == "torch" else torch.float32)
    means.requires_grad_(True)
    opac.requires_grad_(True)
    img, _, info = rasterize(means, quats, scales, opac, colors, V, K, W, H, backend=backend,
                             backgrounds=torch.ones(1, 3, dtype=means.dtype))
    for k in ("conics", "opacities"):
        info[k].retain_grad()
    _loss(img[0], target).backward()
    S2 = splitting_matrices_2d(info["conics"][0].detach(), info["conics"].grad[0], info["opacities"][0].detach(),
                               info["opacities"].grad[0]).double()

    m2d = info["means2d"][0].detach().double()
    con = info["conics"][0].detach().double()
    o = info["opacities"][0].detach().double()
    order = torch.argsort(info["depths"][0].detach()).tolist()
    alphas = _dense_alphas(m2d, con, o).requires_grad_(True)
    img_ref = _composite(alphas, colors.double(), order)
    assert torch.allclose(img_ref, img[0].double(), atol=1e-5)
    g, = torch.autograd.grad(_loss(img_ref, target.double()), alphas)
    keep = (alphas.detach() >= ALPHA_THRESHOLD) & (alphas.detach() < MAX_ALPHA)

    h = 1e-3
    for i in range(3):
        def phi(d):
            m = m2d.clone()
            m[i] += d
            return (g[i] * _dense_alphas(m, con, o, keep)[i]).sum()

        fd = torch.zeros(2, 2, dtype=torch.float64)
        for a in range(2):
            for b in range(2):
                ea = torch.zeros(2, dtype=torch.float64)
                eb = torch.zeros(2, dtype=torch.float64)
                ea[a], eb[b] = h, h
                fd[a, b] = (phi(ea + eb) - phi(ea - eb) - phi(-ea + eb) + phi(-ea - eb)) / (4 * h * h)
        tol = (2e-4 if backend == "torch" else 2e-3) * fd.abs().max()
        assert torch.allclose(S2[i], fd, atol=tol), (i, S2[i], fd)


def test_projection_jacobian_matches_autograd():
    from splat.backends.torch_ref import project

    means, quats, scales, opac, _, _, K, _ = _scene()
    V = torch.eye(4, dtype=torch.float64)
    R = torch.linalg.matrix_exp(torch.tensor([[0, -0.2, 0.1], [0.2, 0, -0.3], [-0.1, 0.3, 0]], dtype=torch.float64))
    V[:3, :3] = R
    V[:3, 3] = torch.tensor([0.1, -0.2, 0.4])
    V = V[None]

    def m2d(m):
        return project(m, quats, scales, opac, V, K, W, H, 0.3, 0.01, 1e10, 0.0, False)[1][0]

    radii, means2d, depths, _, _ = project(means, quats, scales, opac, V, K, W, H, 0.3, 0.01, 1e10, 0.0, False)
    J = projection_jacobians(means2d[0], depths[0], V.expand(3, 4, 4), K.expand(3, 3, 3))
    full = torch.autograd.functional.jacobian(m2d, means)  # [3,2,3,3]
    for i in range(3):
        assert torch.allclose(J[i], full[i, :, i, :], atol=1e-9)


def _step_info(means, target, scales=None, opac=0.5):
    """Render one Gaussian, L2 loss against `target`; the info after backward."""
    N = means.shape[0]
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(N, 1)
    scales = torch.full((N, 3), 0.12) if scales is None else scales
    K = torch.tensor([[[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]])
    img, _, info = rasterize(means.requires_grad_(True), quats, scales, torch.full((N,), opac, requires_grad=True), torch.ones(N, 3), torch.eye(4)[None], K,
                             32, 32, backend="torch", backgrounds=torch.zeros(1, 3))
    for k in ("means2d", "conics", "opacities"):
        info[k].retain_grad()
    ((img[0] - target) ** 2).sum().backward()
    return info, quats, scales


def _two_blobs():
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    blob = lambda cx: torch.exp(-((xs - cx) ** 2 + (ys - 16) ** 2) / (2 * 1.5 ** 2))  # noqa: E731
    return (0.9 * (blob(11) + blob(21)))[..., None].expand(32, 32, 3)


@pytest.mark.parametrize("large", [False, True])
def test_a_gaussian_between_two_blobs_splits_along_them(large):
    """One Gaussian fitted between two bright blobs (a saddle of the loss): the splitting matrix
    has a negative eigenvalue along the blobs' axis; the split puts one child on each side,
    with the parent's shape and opacity 1 - sqrt(1 - o) each; optimizer state stays aligned."""
    means = torch.tensor([[0.0, 0.0, 3.0]])
    info, quats, scales = _step_info(means, _two_blobs())
    st = SteepGSStrategy(split_threshold=0.0, grow_grad2d=0.0, refine_start_iter=0, refine_every=1, reset_every=0,
                         grow_scale3d=0.01 if large else 1.0)
    params = torch.nn.ParameterDict({"means": torch.nn.Parameter(means.clone()),
                                     "quats": torch.nn.Parameter(quats.clone()),
                                     "scales": torch.nn.Parameter(torch.log(scales)),
                                     "opacities": torch.nn.Parameter(torch.logit(torch.tensor([0.5]))),
                                     "colors": torch.nn.Parameter(torch.ones(1, 3))})
    opts = {k: torch.optim.Adam([p]) for k, p in params.items()}
    state = st.initialize_state(1.0)
    st._update_state(params, state, info)
    S = unpack_symmetric(state["split_matrix"] / state["count"][:, None])[0]
    evals, evecs = torch.linalg.eigh(S)
    assert evals[0] < 0 and abs(evecs[0, 0]) > 0.99  # the least eigenvector is the world (and image) x axis
    ev = st.step_post_backward(params, opts, state, 1, info)
    assert ev["split"] == 1 and params["means"].shape[0] == 2
    xs = params["means"][:, 0].detach()
    assert xs.min() < -0.01 and xs.max() > 0.01 and torch.allclose(params["means"][:, 1:], means[:, 1:].expand(2, 2))
    sigma = 0.12  # small Gaussians (max scale below grow_scale3d x the scene scale) keep their shape
    assert torch.allclose(xs.abs(), torch.full((2,), 0.5 * sigma), rtol=1e-4)
    assert torch.allclose(torch.exp(params["scales"]), scales.expand(2, 3) / (1.6 if large else 1.0))
    assert ev["split_large"] == int(large)
    o = torch.sigmoid(params["opacities"]).detach()
    assert torch.allclose(o, torch.full((2,), 1 - 0.5 ** 0.5), atol=1e-6)
    assert all(p.shape[0] == 2 for p in params.values())


def test_a_gaussian_dimmer_than_its_blob_does_not_split_and_a_brighter_one_does():
    """One Gaussian on a blob of its own shape: where it is too faint the loss is convex in its
    mean (no split); where it is too bright, spreading its mass lowers the loss (S = -A/2 times
    a positive factor in the limit of a small error)."""
    m = torch.tensor([[0.0, 0.0, 3.0]])
    with torch.no_grad():
        target = rasterize(m, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.12), torch.tensor([0.6]),
                           torch.ones(1, 3), torch.eye(4)[None],
                           torch.tensor([[[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]]), 32, 32, backend="torch",
                           backgrounds=torch.zeros(1, 3))[0][0]
    st = SteepGSStrategy(split_threshold=0.0, grow_grad2d=0.0)
    found = {}
    for opac in (0.5, 0.7):
        info, quats, scales = _step_info(m.clone(), target, opac=opac)
        params = {"means": m, "quats": quats, "scales": torch.log(scales)}
        state = st.initialize_state(1.0)
        st._update_state(params, state, info)
        found[opac] = st.split_candidates(params, state)[0].numel()
    assert found == {0.5: 0, 0.7: 1}


@pytest.fixture(scope="module")
def blender_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("steep")
    return write_blender(root, make_views(n_views=12, width=40, height=32, n_gauss=200), test_ids=(0, 6))


def _cfg(d, out, **kw):
    st = SteepGSStrategy(refine_start_iter=10, refine_stop_iter=100, refine_every=10, reset_every=0,
                         grow_grad2d=1e-5)
    return small_train_config(d, out, strategy="steepgs", steepgs=st, iterations=60, save_every=30,
                              keep_checkpoints=5, save_renders=0, **kw)


def test_steepgs_trains_splits_and_resumes_bit_for_bit(blender_dir, tmp_path):
    full = Trainer(_cfg(blender_dir, tmp_path / "full"), log=QUIET)
    splits = []
    full.callbacks.append(type("C", (), {"on_step": lambda self, tr, s, r: splits.append(r["events"].get("split", 0)),
                                         "__getattr__": lambda self, name: (lambda *a, **k: None)})())
    m = full.train()
    assert sum(splits) > 0 and m["psnr"] > 15
    half = tmp_path / "half"
    shutil.copytree(full.out, half)
    (half / "ckpts" / "ckpt_60.pt").unlink()
    resumed = Trainer(_cfg(blender_dir, half, resume=True), log=QUIET)
    assert resumed.start_step == 30
    resumed.train()
    differ = [k for k, v in full.model.params.items() if not torch.equal(v, resumed.model.params[k])]
    assert not differ


def test_steepgs_with_batches_and_on_a_dynamic_model(tmp_path):
    from test_dynamic import _cfg as dyn_cfg, synthetic_dataset

    st = SteepGSStrategy(refine_start_iter=5, refine_stop_iter=100, refine_every=5, reset_every=0,
                         grow_grad2d=1e-6)
    tr = Trainer(dyn_cfg(tmp_path, "4dgs", strategy="steepgs", steepgs=st, batch_size=2, iterations=20),
                 dataset=synthetic_dataset(n_cams=4, n_times=4, W=24), log=QUIET)
    n0 = tr.num_gaussians
    tr.train()
    assert tr.num_gaussians != n0
    p = tr.model.params
    assert all(p[k].shape[0] == tr.num_gaussians for k in p.per_gaussian)


def test_blend_weights_are_the_sum_of_alpha_times_transmittance():
    """blend_weights against a dense float64 compositor: sum over pixels of alpha_i T_i."""
    from splat.render import Gaussians, RenderSettings, render_gaussians
    from splat.cameras import Cameras
    from splat.strategies.ops import blend_weights

    for backend in ("torch", "cpu"):
        means, quats, scales, opac, colors, V, K, _ = _scene(torch.float64 if backend == "torch" else torch.float32)
        g = Gaussians(means, quats, scales, opac, colors)
        cams = Cameras(V, K, W, H)
        _, _, info = render_gaussians(g, cams, RenderSettings(backend))
        w = blend_weights(info)[0]
        alphas = _dense_alphas(info["means2d"][0].double(), info["conics"][0].double(), info["opacities"][0].double())
        T = torch.ones(H, W, dtype=torch.float64)
        ref = torch.zeros(3, dtype=torch.float64)
        for i in torch.argsort(info["depths"][0]).tolist():
            ref[i] = (alphas[i] * T).sum()
            T = T * (1 - alphas[i])
        assert torch.allclose(w.double(), ref, rtol=1e-4, atol=1e-4), (backend, w, ref)


def test_weight_pruning_removes_hidden_gaussians_only():
    """A Gaussian hidden behind an opaque one has zero blend weight and is pruned; one outside
    every view of the window is kept; the window skips the steps just after an opacity reset."""
    from splat.render import Gaussians, RenderSettings, render_gaussians
    from splat.cameras import Cameras
    from splat.strategies.ops import prune_by_weight, track_blend_weights, weight_window_open

    K = torch.tensor([[[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]])
    means = torch.tensor([[0.0, 0, 3], [0.0, 0, 4], [0.5, 0, 3.5], [50.0, 0, 3]])  # front, hidden, beside, outside
    scales = torch.tensor([[0.5, 0.5, 0.05], [0.05, 0.05, 0.05], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1]])
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(4, 1)
    opac = torch.tensor([0.99, 0.9, 0.9, 0.9])
    params = torch.nn.ParameterDict({"means": torch.nn.Parameter(means), "quats": torch.nn.Parameter(quats),
                                     "scales": torch.nn.Parameter(torch.log(scales)),
                                     "opacities": torch.nn.Parameter(torch.logit(opac))})
    opts = {k: torch.optim.Adam([p]) for k, p in params.items()}
    _, _, info = render_gaussians(Gaussians(means, quats, scales, opac, torch.ones(4, 3)),
                                  Cameras(torch.eye(4)[None], K, 32, 32), RenderSettings("cpu"))
    state = {}
    track_blend_weights(params, state, info)
    assert state["weight_views"].tolist() == [1, 1, 1, 0]
    assert state["max_weight"][1] < 0.1 < state["max_weight"][2]  # 1% of light passes the front one
    ev = prune_by_weight(params, opts, state, 0.1)
    assert ev == {"prune_weight": 1} and params["means"].shape[0] == 3
    assert torch.equal(params["means"].data, means[[0, 2, 3]])
    # windows: the 20 steps ending at a round, not within 100 steps after a reset (every 200)
    open_steps = [s for s in range(0, 1001) if weight_window_open(s, 100, 200, 20)]
    assert open_steps[:21] == list(range(0, 1)) + list(range(81, 101))
    assert 300 not in open_steps and 400 in open_steps and 381 in open_steps and 380 not in open_steps


@pytest.mark.parametrize("strategy, options, message", [
    ("steepgs", dict(refine_every=0), "--steepgs: refine-every must be >= 1"),
    ("mcmc", dict(cap_max=0), "--mcmc: refine-every and cap-max must be >= 1"),
    ("mcmc", dict(grow_rate=-1.0), "grow-rate and noise-lr >= 0"),
    ("adc", dict(refine_every=0), "--adc: refine-every must be >= 1"),
])
def test_strategies_refuse_bad_options_before_loading_data(tmp_path, strategy, options, message):
    from splat.strategies import ADCStrategy, MCMCStrategy
    from splat.train import TrainConfig

    cls = {"steepgs": SteepGSStrategy, "mcmc": MCMCStrategy, "adc": ADCStrategy}[strategy]
    with pytest.raises(ValueError, match=message):
        Trainer(TrainConfig(data=tmp_path / "missing", out=tmp_path / "o", strategy=strategy,
                            **{strategy: cls(**options)}), log=QUIET)


def test_blend_weights_of_views_rendered_one_per_call_are_tracked():
    """A merged info (a batch rendered one view per call) is measured render by render."""
    from splat.cameras import Cameras
    from splat.render import Gaussians, RenderSettings, merge_infos, render_gaussians
    from splat.strategies.ops import track_blend_weights

    means, quats, scales, opac, colors, V, K, _ = _scene(torch.float32)
    infos = []
    for ids in (torch.tensor([0, 1]), torch.tensor([1, 2])):
        g = Gaussians(means[ids], quats[ids], scales[ids], opac[ids], colors[ids], ids=ids)
        infos.append(render_gaussians(g, Cameras(V, K, W, H), RenderSettings("cpu"))[2])
    params = {"means": means}
    merged, single = {}, {}
    track_blend_weights(params, merged, merge_infos(infos, 3))
    for info in infos:
        track_blend_weights(params, single, info)
    assert merged["weight_views"].tolist() == [1, 2, 1]
    assert torch.equal(merged["max_weight"], single["max_weight"]) and merged["max_weight"].min() > 0
