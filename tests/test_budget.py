"""Elastic budgets (`splat.compress.budget`): measured importance against a brute-force count, the
views of the fallback, which Gaussians a budget keeps, moment matching, errors, and that the
adjustment beats plain pruning on a small scene."""
import math

import pytest
import torch

from scene_utils import cameras as scene_cameras
from scene_utils import gaussians

import splat
from splat.cameras import Cameras
from splat.compress import budget as B
from splat.compress.budget import apply_budget, gaussian_importance, kept_count, merge_gaussians, sphere_cameras
from splat.models.static import render_splats


def splats_of(N, seed=0, sh_degree=1, dtype=torch.float32, extent=1.0, scale=(0.02, 0.2)):
    means, quats, scales, opac, sh = gaussians(N, seed=seed, sh_degree=sh_degree, extent=extent, scale=scale,
                                               dtype=dtype)
    return {"means": means, "scales": scales.log(), "quats": quats, "opacities": torch.logit(opac),
            "sh0": sh[:, :1].contiguous(), "shN": sh[:, 1:].contiguous()}


def cams_of(C=3, W=32, H=24, seed=0, dtype=torch.float32, radius=4.0):
    V, K = scene_cameras(C, W, H, seed=seed, dtype=dtype, radius=radius)
    return Cameras(V, K, W, H)


def render(s, cams, **kw):
    with torch.no_grad():
        c, a, _ = render_splats(s, cams.viewmats, cams.Ks, cams.width, cams.height, near_plane=0.01, **kw)
    return c, a


def covariance(s):
    from splat.backends.torch_ref import quat_scale_to_covar

    return quat_scale_to_covar(s["quats"].double(), torch.exp(s["scales"].double()))


# ----------------------------------------------------------------------------- importance


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("eps2d", [0.3, 1.2])
def test_importance_is_the_summed_blend_weight_of_each_gaussian(backend, eps2d):
    """Brute force: render with colour channel i = 1 on Gaussian i only (an identity colour
    matrix, forward only): channel i's image sum is Gaussian i's sum over pixels of alpha_i T_i."""
    dtype = torch.float64 if backend == "torch" else torch.float32
    N = 24
    s = splats_of(N, seed=3, dtype=dtype, extent=0.8, scale=(0.05, 0.4))
    cams = cams_of(C=3, dtype=dtype)
    imp = gaussian_importance(s, cams, backend=backend, eps2d=eps2d, near_plane=0.01, batch_size=2)
    assert imp.shape == (N,) and imp.dtype == torch.float32
    with torch.no_grad():
        out, _, _ = splat.rasterize(s["means"], s["quats"], torch.exp(s["scales"]), torch.sigmoid(s["opacities"]),
                                    torch.eye(N, dtype=dtype), cams.viewmats, cams.Ks, cams.width, cams.height,
                                    near_plane=0.01, eps2d=eps2d, backend=backend)
    brute = out.double().sum((0, 1, 2))
    assert (brute > 0.5).sum() > N // 2  # most are seen: the check has teeth
    assert torch.allclose(imp.double(), brute, rtol=1e-4, atol=1e-4), (imp, brute)


def test_importance_of_views_of_several_sizes_sums_and_none_means_the_sphere():
    s = splats_of(30, seed=1)
    a, b = cams_of(C=2, W=32, H=24, seed=0), cams_of(C=3, W=20, H=28, seed=1)
    ia, ib = (gaussian_importance(s, c, near_plane=0.01) for c in (a, b))
    assert torch.allclose(gaussian_importance(s, [a, b], near_plane=0.01), ia + ib, rtol=1e-5, atol=1e-5)
    sph = sphere_cameras(s["means"])
    assert torch.equal(gaussian_importance(s), gaussian_importance(s, sph))
    # a Gaussian behind every camera gets 0
    s2 = {k: v.clone() for k, v in s.items()}
    s2["means"][0] = torch.tensor([0.0, 0.0, 0.0])
    far = Cameras(torch.eye(4)[None], cams_of().Ks[:1], 32, 24)  # at the origin looking down +z
    s2["means"][1] = torch.tensor([0.0, 0.0, -3.0])  # behind it
    assert gaussian_importance(s2, far, near_plane=0.01)[1] == 0


def test_sphere_cameras_look_at_the_robust_centre_from_the_upper_hemisphere():
    s = splats_of(400, seed=2, extent=1.0)
    means = s["means"].clone()
    means[0] = torch.tensor([500.0, -800.0, 300.0])  # a far floater does not move the views
    cams = sphere_cameras(means, num_views=20, resolution=64)
    assert len(cams) == 20 and cams.width == cams.height == 64
    centre = torch.tensor([0.0, 0.0, 0.0])
    lo, hi = torch.quantile(means.double(), 0.02, 0), torch.quantile(means.double(), 0.98, 0)
    centre = (0.5 * (lo + hi)).float()
    cam_pts = torch.einsum("cij,j->ci", cams.viewmats[:, :3, :3], centre) + cams.viewmats[:, :3, 3]
    pix = torch.einsum("cij,cj->ci", cams.Ks, cam_pts)
    assert torch.allclose(pix[:, :2] / pix[:, 2:], torch.full((20, 2), 32.0), atol=1e-3)  # the image centre
    d = (cams.centers - centre).norm(dim=-1)
    assert torch.allclose(d, d[0].expand(20), rtol=1e-4) and d[0] < 20  # the floater did not push them away
    assert (cams.centers[:, 2] >= centre[2] - 1e-4).all()  # the upper hemisphere
    whole = sphere_cameras(means, num_views=20, resolution=64, min_elevation_deg=-90)
    assert (whole.centers[:, 2] < centre[2] - 0.5).sum() >= 8
    # every Gaussian of a compact model is seen by some view
    assert (gaussian_importance(splats_of(200, seed=5, extent=0.8)) > 0).all()
    for bad in (dict(num_views=0), dict(resolution=0), dict(fov_deg=180.0), dict(quantile=0.5),
                dict(min_elevation_deg=90.0)):
        with pytest.raises(ValueError, match="sphere_cameras"):
            sphere_cameras(means, **bad)
    with pytest.raises(ValueError, match="finite"):
        sphere_cameras(torch.full((3, 3), float("nan")))


# ----------------------------------------------------------------------------- what a budget keeps


def test_a_budget_of_one_returns_the_model_unchanged_without_measuring(monkeypatch):
    s = splats_of(20)
    s["extra"] = torch.arange(20)
    monkeypatch.setattr(B, "gaussian_importance", lambda *a, **k: pytest.fail("F = 1 measured importance"))
    out = apply_budget(s, 1.0)
    assert out is not s and out.keys() == s.keys() and all(out[k] is s[k] for k in s)
    out = apply_budget(s, 1, method="prune", distill_steps=10)
    assert all(out[k] is s[k] for k in s)


@pytest.mark.parametrize("N, F, k", [(10, 0.3, 3), (100, 0.07, 7), (37, 0.1, 4), (37, 0.5, 19), (37, 0.999, 37),
                                     (1000, 1e-9, 1), (1, 0.01, 1), (7, 1.0, 7), (3, 0.5, 2)])
def test_kept_count_is_the_ceiling_of_f_times_n(N, F, k):
    assert kept_count(N, F) == k
    if F < 1:
        s = splats_of(N, seed=N)
        out = apply_budget(s, F, torch.rand(N), method="prune", distill_steps=0)
        assert all(v.shape[0] == k for v in out.values())
        out = apply_budget(s, F, torch.rand(N), method="merge", distill_steps=0)
        assert all(v.shape[0] == k for v in out.values())


def test_the_most_important_are_kept_in_their_order_with_their_extra_entries():
    N = 50
    s = splats_of(N, seed=4)
    s["ids"] = torch.arange(N)
    s["note"] = "passed through"
    imp = torch.rand(N, generator=torch.Generator().manual_seed(0))
    out = apply_budget(s, 0.3, imp, method="prune", distill_steps=0)
    want = torch.topk(imp, 15).indices.sort().values
    assert torch.equal(out["ids"], want) and out["note"] == "passed through"
    for k in B.SPLAT_KEYS:
        assert torch.equal(out[k], s[k][want])
    # ties: the earlier Gaussian first
    out = apply_budget(s, 0.1, torch.ones(N), method="prune", distill_steps=0)
    assert torch.equal(out["ids"], torch.arange(5))


def test_measured_importance_drops_a_hidden_gaussian_first():
    """A big opaque Gaussian in front, a small one hidden behind it, a small one beside it: the
    views from the front see the hidden one least, so a budget of 2/3 drops it."""
    s = {"means": torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 4.0], [0.8, 0.0, 3.0]]),
         "scales": torch.log(torch.tensor([[0.6, 0.6, 0.05], [0.05, 0.05, 0.05], [0.1, 0.1, 0.1]])),
         "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(3, 1),
         "opacities": torch.logit(torch.tensor([0.99, 0.9, 0.9])),
         "sh0": torch.rand(3, 1, 3), "shN": torch.zeros(3, 0, 3)}
    cams = Cameras(torch.eye(4)[None].repeat(2, 1, 1), torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
                   .repeat(2, 1, 1), 32, 32)
    imp = gaussian_importance(s, cams, near_plane=0.01)
    assert imp[1] < 0.05 * imp[2] and imp[2] < imp[0]
    out = apply_budget(s, 2 / 3, cameras=cams, method="prune", distill_steps=0)
    assert torch.equal(out["means"], s["means"][[0, 2]])


# ----------------------------------------------------------------------------- moment matching


def test_merge_conserves_each_groups_weighted_mean_covariance_and_colour():
    torch.manual_seed(0)
    s = splats_of(6, seed=7, sh_degree=2, dtype=torch.float64, scale=(0.05, 0.3))
    keep = torch.tensor([0, 3, 5])
    targets = torch.tensor([-1, 0, 0, -1, 1, -1])  # 1, 2 -> Gaussian 0; 4 -> Gaussian 3; 5 alone
    w = torch.rand(6, dtype=torch.float64) + 0.1
    out = merge_gaussians(s, targets, w, keep)
    cov = covariance(s)
    cov_out = covariance(out)
    sh = torch.cat([s["sh0"], s["shN"]], 1)
    o = torch.sigmoid(s["opacities"])
    area = B._area(torch.exp(s["scales"]))
    for row, group in ((0, [0, 1, 2]), (1, [3, 4])):
        g = torch.tensor(group)
        W = w[g].sum()
        mu = (w[g, None] * s["means"][g]).sum(0) / W
        d = s["means"][g] - mu
        S = (w[g, None, None] * (cov[g] + d[:, :, None] * d[:, None, :])).sum(0) / W
        assert torch.allclose(out["means"][row], mu, atol=1e-12)
        assert torch.allclose(cov_out[row], S, rtol=1e-9, atol=1e-12)
        assert torch.allclose(torch.cat([out["sh0"], out["shN"]], 1)[row], (w[g, None, None] * sh[g]).sum(0) / W)
        a_new = B._area(torch.exp(out["scales"][row]))
        o_want = max(1 - torch.exp((area[g] * torch.log1p(-o[g])).sum() / a_new), o[group[0]])
        assert torch.sigmoid(out["opacities"][row]) == pytest.approx(float(o_want), rel=1e-9)
    for k in B.SPLAT_KEYS:  # a survivor nothing merged into is bit-for-bit itself
        assert torch.equal(out[k][2], s[k][5])
    # two equal Gaussians at one place: the same shape, one over the other
    two = {k: v[[0, 0]].clone() for k, v in s.items()}
    m = merge_gaussians(two, torch.tensor([-1, 0]), torch.ones(2, dtype=torch.float64), torch.tensor([0]))
    assert torch.allclose(covariance(m)[0], cov[0], rtol=1e-9) and torch.allclose(m["means"][0], s["means"][0])
    assert torch.sigmoid(m["opacities"][0]) == pytest.approx(float(1 - (1 - o[0]) ** 2), rel=1e-9)


def test_apply_budget_merges_only_into_a_survivor_near_enough():
    """A dropped Gaussian within the survivor's extent merges (the mean moves towards it); one
    beyond merge_radius standard deviations does not (the result is the pruned model)."""
    base = {"scales": torch.log(torch.tensor([[0.3, 0.2, 0.1], [0.05, 0.05, 0.05]])),
            "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(2, 1), "opacities": torch.logit(torch.tensor([0.8, 0.6])),
            "sh0": torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]]), "shN": torch.zeros(2, 3, 3)}
    imp = torch.tensor([10.0, 2.0])
    near = dict(base, means=torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]]))  # 1 sigma along x
    out = apply_budget(near, 0.5, imp, distill_steps=0)
    assert out["means"][0, 0] == pytest.approx(0.3 * 2 / 12, rel=1e-5)
    assert 0 < out["sh0"][0, 0, 2] < out["sh0"][0, 0, 0]
    far = dict(base, means=torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.35]]))  # 3.5 sigma along z
    for k, v in apply_budget(far, 0.5, imp, distill_steps=0).items():
        assert torch.equal(v, far[k][:1])
    out = apply_budget(far, 0.5, imp, distill_steps=0, merge_radius=4.0)
    assert out["means"][0, 2] > 0
    # a dropped Gaussian of importance 0 (never seen) changes nothing
    for k, v in apply_budget(near, 0.5, torch.tensor([10.0, 0.0]), distill_steps=0).items():
        assert torch.equal(v, near[k][:1])


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("F", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_bad_fractions_are_refused(F):
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
        apply_budget(splats_of(5), F, torch.ones(5))


def test_bad_models_and_arguments_are_refused():
    s = splats_of(5)
    empty = {k: v[:0] for k, v in s.items()}
    with pytest.raises(ValueError, match="empty"):
        apply_budget(empty, 0.5)
    with pytest.raises(ValueError, match="empty"):
        gaussian_importance(empty)
    with pytest.raises(ValueError, match="missing opacities"):
        apply_budget({k: v for k, v in s.items() if k != "opacities"}, 0.5)
    with pytest.raises(ValueError, match="scales must have shape"):
        apply_budget(dict(s, scales=s["scales"][:3]), 0.5)
    with pytest.raises(ValueError, match=r"importance must have shape \[5\]"):
        apply_budget(s, 0.5, torch.ones(4))
    with pytest.raises(ValueError, match="non-finite"):
        apply_budget(s, 0.5, torch.tensor([1.0, float("nan"), 1, 1, 1]))
    with pytest.raises(ValueError, match="unknown budget method"):
        apply_budget(s, 0.5, torch.ones(5), method="cluster")
    with pytest.raises(ValueError, match="distill_steps"):
        apply_budget(s, 0.5, torch.ones(5), distill_steps=-1)
    with pytest.raises(ValueError, match="no views"):
        gaussian_importance(s, [])
    with pytest.raises(ValueError, match="cameras must be"):
        gaussian_importance(s, "front")
    with pytest.raises(ValueError, match="empty"):
        kept_count(0, 0.5)


# ----------------------------------------------------------------------------- quality


def test_adjusting_the_survivors_renders_closer_to_the_full_model_than_pruning():
    """A small scene of overlapping Gaussians cut to half: merging the dropped Gaussians into the
    survivors, and a short distillation after it, render held-out views closer to the full model
    than pruning alone."""
    s = splats_of(160, seed=11, extent=0.7, scale=(0.04, 0.16))
    s["opacities"] = torch.logit(torch.sigmoid(s["opacities"]) * 0.5 + 0.45)
    train = cams_of(C=8, W=40, H=32, seed=1, radius=3.0)
    test = cams_of(C=4, W=40, H=32, seed=2, radius=3.0)
    imp = gaussian_importance(s, train)
    full = torch.cat(render(s, test), -1)

    def err(out):
        return float(((torch.cat(render(out, test), -1) - full) ** 2).mean())

    pruned = err(apply_budget(s, 0.5, imp, method="prune", distill_steps=0))
    merged = err(apply_budget(s, 0.5, imp, method="merge", distill_steps=0))
    distilled = err(apply_budget(s, 0.5, imp, train, method="merge", distill_steps=60))
    assert merged < 0.8 * pruned, (merged, pruned)
    assert distilled < merged, (distilled, merged)
    assert math.isfinite(distilled)


def test_a_budget_that_keeps_every_gaussian_returns_the_model_without_distilling(monkeypatch):
    """ceil(F N) = N (a tiny model, or F near 1): nothing dropped, no 300 distillation steps of the model
    against itself."""
    monkeypatch.setattr(B, "distill", lambda *a, **k: pytest.fail("distilled a model that lost nothing"))
    for N, F in ((1, 0.01), (5, 0.99)):
        s = splats_of(N)
        out = apply_budget(s, F, torch.rand(N))
        assert out.keys() == s.keys() and all(out[k] is s[k] for k in s)
    with pytest.raises(ValueError, match="importance must have shape"):
        apply_budget(splats_of(1), 0.5, torch.rand(2))
