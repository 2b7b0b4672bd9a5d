"""2D image Gaussians (splat.backends.image2d, splat.models.image2d, splat.image2d):
the native CPU kernels against the dense torch reference (images and gradients,
both blending modes, several channel counts and tile sizes), finite differences,
any-scale / crop / level-of-detail rendering, bad inputs, MS-SSIM against
pytorch_msssim, fitting and model storage."""
import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from splat.backends.image2d import (ALPHA_THRESHOLD, bounding_radii, rasterize_image2d,
                                    rasterize_image2d_torch)
from splat.metrics import ms_ssim, psnr
from splat.image2d import load_image2d
from splat.models.image2d import MIN_VARIANCE, Image2D, cholesky_to_cov, cov_to_conic

W61, H47 = 61, 47  # not multiples of any tile size used below


# ---------------------------------------------------------------- helpers
def _cov_from_axes(std: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    c, s = theta.cos(), theta.sin()
    v0, v1 = std[:, 0] ** 2, std[:, 1] ** 2
    return torch.stack([c * c * v0 + s * s * v1, c * s * (v0 - v1), s * s * v0 + c * c * v1], -1)


def _raw_scene(N, W, H, D, seed):
    """Pixel-space Gaussians: log-uniform sizes 0.6..20 px (anisotropic, rotated), centres up to
    8 px outside the image, plus a few large ones (one centred far off the image)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(N, 2, generator=g) * torch.tensor([W + 16.0, H + 16.0]) - 8.0
    std = torch.exp(torch.rand(N, 2, generator=g) * math.log(20 / 0.6)) * 0.6
    theta = torch.rand(N, generator=g) * math.pi
    # large ones: one covering most of the image, one centred well off the left edge
    means[:2] = torch.tensor([[W * 0.5, H * 0.4], [-25.0, H * 0.6]])
    std[:2] = torch.tensor([[35.0, 28.0], [14.0, 20.0]])
    cov = _cov_from_axes(std, theta)
    colors = torch.rand(N, D, generator=g) * 2 - 1
    return means, cov, colors


def _sigma64(means2d, conics, W, H):
    """sigma [P,N] at every pixel centre in float64 from the float32 inputs."""
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    px, py = xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5
    m, q = means2d.double(), conics.double()
    dx, dy = m[None, :, 0] - px[:, None], m[None, :, 1] - py[:, None]
    return 0.5 * (q[None, :, 0] * dx * dx + q[None, :, 2] * dy * dy) + q[None, :, 1] * dx * dy


def _well_separated(means2d, conics, W, H, topk, margin=2e-5):
    """True when no pixel sits within `margin` (relative) of the 1/255 support edge of any
    Gaussian and, for top-K, no pixel's K-th and (K+1)-th weights are that close: there the
    native polynomial exp (2e-7 relative error) and torch.exp could legitimately disagree."""
    w = torch.exp(-_sigma64(means2d, conics, W, H))
    if ((w * 255 - 1).abs() < margin).any():
        return False
    if topk and topk < w.shape[1]:
        w = torch.where(w >= ALPHA_THRESHOLD, w, torch.zeros_like(w))
        top = torch.topk(w, topk + 1, dim=1).values
        kth, nxt = top[:, topk - 1], top[:, topk]
        close = (nxt > 0) & ((kth - nxt) <= margin * kth)
        if close.any():
            return False
    return True


def _scene(N, W, H, D, seed, topk=0):
    """The first scene from seed, seed + 1000, ... that is well separated (see above)."""
    for k in range(40):
        means, cov, colors = _raw_scene(N, W, H, D, seed + 1000 * k)
        if _well_separated(means, cov_to_conic(cov), W, H, topk):
            return means, cov, colors
    raise AssertionError("no well-separated scene found")  # pragma: no cover


def _close(ref, got, rel, name):
    scale = max(ref.abs().max().item(), 1e-6)
    err = (ref - got).abs().max().item()
    assert err <= rel * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


def _loss_weights(shape, seed=123):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _direct(means, cov, colors, W, H, topk, backend, tile_size):
    m = means.clone().requires_grad_(True)
    q = cov_to_conic(cov).detach().clone().requires_grad_(True)
    c = colors.clone().requires_grad_(True)
    img, wsum = rasterize_image2d(m, q, c, W, H, radii=bounding_radii(cov), topk=topk, backend=backend,
                                  tile_size=tile_size)
    (img * _loss_weights(img.shape)).sum().backward()
    return img.detach(), wsum.detach(), m.grad, q.grad, c.grad


def _smooth_model(N=6, W=12, H=10, D=3, mode="sum", topk=10, seed=0, dtype=torch.float32, std=(6.0, 8.0)):
    """Large Gaussians with centres inside a tiny image: every weight is far above 1/255."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(N, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H], dtype=torch.float64)
    lo, hi = std
    diag = lo + (hi - lo) * torch.rand(N, 2, generator=g, dtype=torch.float64)
    off = (torch.rand(N, generator=g, dtype=torch.float64) - 0.5) * 2.0
    chol = torch.stack([diag[:, 0], off, diag[:, 1]], -1)
    colors = torch.rand(N, D, generator=g, dtype=torch.float64)
    return Image2D(means.to(dtype), chol.to(dtype), colors.to(dtype), W, H, mode, topk)


def _min_weight(model: Image2D) -> float:
    conics = cov_to_conic(cholesky_to_cov(model.chol.double()))
    return torch.exp(-_sigma64(model.means, conics, model.width, model.height)).min().item()


def _random_model(N, W, H, D, seed, mode="sum", topk=4):
    """A well-separated model with Gaussians partly off the image and some large ones."""
    for k in range(40):
        g = torch.Generator().manual_seed(seed + 1000 * k)
        means = torch.rand(N, 2, generator=g) * torch.tensor([W + 12.0, H + 12.0]) - 6.0
        diag = torch.exp(torch.rand(N, 2, generator=g) * math.log(15 / 0.5)) * 0.5
        diag[:3] = torch.tensor([[20.0, 16.0], [12.0, 25.0], [30.0, 30.0]])
        off = (torch.rand(N, generator=g) - 0.5) * diag.mean(1)
        chol = torch.stack([diag[:, 0], off, diag[:, 1]], -1)
        colors = torch.rand(N, D, generator=g) * 2 - 1
        model = Image2D(means, chol, colors, W, H, mode, topk)
        conics = cov_to_conic(cholesky_to_cov(chol))
        if _well_separated(means, conics, W, H, topk if mode == "topk" else 0):
            return model
    raise AssertionError("no well-separated model found")  # pragma: no cover


def _render_grads(model: Image2D, backend, **kw):
    m = Image2D(model.means.clone().requires_grad_(True), model.chol.clone().requires_grad_(True),
                model.colors.clone().requires_grad_(True), model.width, model.height, model.mode, model.topk)
    img = m.render(backend=backend, **kw)
    (img * _loss_weights(img.shape, 7)).sum().backward()
    return img.detach(), m.means.grad, m.chol.grad, m.colors.grad


@contextlib.contextmanager
def _threads(n):
    """torch's and the native library's OpenMP thread counts set to n, restored afterwards."""
    from splat.backends import cpu

    lib = cpu.load()
    saved = torch.get_num_threads(), lib.splat_num_threads()
    torch.set_num_threads(n)
    lib.splat_set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        lib.splat_set_num_threads(saved[1])


@pytest.fixture(scope="module", autouse=True)
def _single_threaded(cpu_backend):
    """The workloads here are tiny, and on a loaded machine OpenMP's spinning barriers make
    thousands of tiny parallel regions ~100x slower: run single-threaded, except
    test_native_thread_count_invariant, which checks the multi-threaded kernels."""
    with _threads(1):
        yield


# ---------------------------------------------------------------- 1. native vs reference
@pytest.mark.parametrize("topk", [0, 4], ids=["sum", "topk"])
@pytest.mark.parametrize("D", [1, 3, 4])
@pytest.mark.parametrize("tile_size", [16, 8, 5])
def test_native_matches_reference_direct(topk, D, tile_size):
    means, cov, colors = _scene(70, W61, H47, D, seed=10 * D + tile_size, topk=topk)
    ref = _direct(means, cov, colors, W61, H47, topk, "torch", tile_size)
    got = _direct(means, cov, colors, W61, H47, topk, "cpu", tile_size)
    assert got[0].shape == (H47, W61, D) and got[1].shape == (H47, W61)
    assert ref[0].abs().max() > 0.5  # something was drawn
    assert (ref[0] - got[0]).abs().max() <= 1e-5 * max(1.0, ref[0].abs().max().item())
    _close(ref[1], got[1], 1e-5, "weight sum")
    for name, a, b in zip(("means2d", "conics", "colors"), ref[2:], got[2:]):
        assert a.abs().max() > 0, name
        _close(a, b, 1e-4, f"grad {name}")


@pytest.mark.parametrize("mode", ["sum", "topk"])
@pytest.mark.parametrize("D", [1, 3, 4])
def test_native_matches_reference_model(mode, D):
    model = _random_model(60, W61, H47, D, seed=D, mode=mode, topk=4)
    ref = _render_grads(model, "torch")
    got = _render_grads(model, "cpu")
    _close(ref[0], got[0], 2e-5, "image")
    for name, a, b in zip(("means", "chol", "colors"), ref[1:], got[1:]):
        assert a.abs().max() > 0, name
        _close(a, b, 1e-4, f"grad {name}")


def test_native_tile_sizes_agree_with_each_other():
    """The compile-time 16-px path and the run-time tile paths: same image, same gradients."""
    means, cov, colors = _scene(70, W61, H47, 3, seed=5)
    outs = [_direct(means, cov, colors, W61, H47, 0, "cpu", ts) for ts in (16, 1, 7, 32, 64)]
    for o in outs[1:]:
        for a, b, name in zip(outs[0], o, ("image", "wsum", "means2d", "conics", "colors")):
            _close(a, b, 1e-5, name)


def test_native_weight_sum_matches_weights():
    """Top-K with K >= N is the normalised sum: image = sum-image / (weight sum + 1e-6)."""
    means, cov, colors = _scene(30, W61, H47, 3, seed=3)
    q = cov_to_conic(cov)
    r = bounding_radii(cov)
    s_img, s_w = rasterize_image2d(means, q, colors, W61, H47, radii=r, backend="cpu")
    k_img, k_w = rasterize_image2d(means, q, colors, W61, H47, radii=r, topk=30, backend="cpu")
    torch.testing.assert_close(k_w, s_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_img, s_img / (s_w[..., None] + 1e-6), atol=1e-4, rtol=1e-4)


def test_native_off_image_and_empty():
    # every Gaussian entirely off the image: zeros, zero gradients
    means = torch.tensor([[-40.0, 5.0], [100.0, 100.0], [5.0, -50.0]], requires_grad=True)
    cov = torch.tensor([[4.0, 0.0, 4.0]]).repeat(3, 1)
    q = cov_to_conic(cov).requires_grad_(True)
    c = torch.rand(3, 3, requires_grad=True)
    for topk in (0, 2):
        img, w = rasterize_image2d(means, q, c, 20, 13, radii=bounding_radii(cov), topk=topk, backend="cpu",
                                   tile_size=8)
        assert (img == 0).all() and (w == 0).all()
        img.sum().backward()
        assert (means.grad == 0).all() and (q.grad == 0).all() and (c.grad == 0).all()
        means.grad = q.grad = c.grad = None
    # no Gaussians at all
    for backend in ("cpu", "torch"):
        img, w = rasterize_image2d(torch.zeros(0, 2), torch.zeros(0, 3), torch.zeros(0, 4), 9, 7,
                                   radii=torch.zeros(0, 2, dtype=torch.int32), backend=backend)
        assert img.shape == (7, 9, 4) and (img == 0).all() and (w == 0).all()


@pytest.mark.parametrize("topk,D,tile_size", [(0, 3, 16), (0, 3, 8), (0, 4, 5), (3, 3, 16), (3, 1, 7)])
def test_native_thread_count_invariant(topk, D, tile_size):
    """Tiles are independent and gradients are summed per Gaussian in a fixed order (no
    atomics): 1 and 2 threads give bit-identical images and gradients, and the
    multi-threaded run matches the reference."""
    means, cov, colors = _scene(70, W61, H47, D, seed=2, topk=topk)
    one = _direct(means, cov, colors, W61, H47, topk, "cpu", tile_size)
    with _threads(2):
        two = _direct(means, cov, colors, W61, H47, topk, "cpu", tile_size)
        again = _direct(means, cov, colors, W61, H47, topk, "cpu", tile_size)
    for x, y, z in zip(one, two, again):
        assert torch.equal(x, y) and torch.equal(y, z)
    ref = _direct(means, cov, colors, W61, H47, topk, "torch", tile_size)
    for name, a, b in zip(("image", "wsum", "means2d", "conics", "colors"), ref, two):
        _close(a, b, 1e-4, name)


# ---------------------------------------------------------------- 2. finite differences
@pytest.mark.parametrize("mode,topk", [("sum", 10), ("topk", 6), ("topk", 9)])
def test_reference_gradcheck(mode, topk):
    model = _smooth_model(N=6, W=12, H=10, D=3, mode=mode, topk=topk, seed=1, dtype=torch.float64)
    assert _min_weight(model) > 5 * ALPHA_THRESHOLD  # no pixel near the support edge

    def f(means, chol, colors):
        return Image2D(means, chol, colors, 12, 10, mode, topk).render(backend="torch")

    inputs = tuple(t.clone().requires_grad_(True) for t in (model.means, model.chol, model.colors))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_reference_gradcheck_direct():
    """Direct inputs (means2d, conics, colours) of the reference, 2 channels, sum and top-K."""
    model = _smooth_model(N=5, W=11, H=9, D=2, seed=4, dtype=torch.float64)
    conics = cov_to_conic(cholesky_to_cov(model.chol))
    assert _min_weight(model) > 5 * ALPHA_THRESHOLD
    for topk in (0, 5):
        inputs = tuple(t.detach().clone().requires_grad_(True) for t in (model.means, conics, model.colors))
        assert torch.autograd.gradcheck(lambda m, q, c: rasterize_image2d_torch(m, q, c, 11, 9, topk)[0],
                                        inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def _fd_check(loss, params, picks, eps, rel):
    """Central differences of loss() (float64 accumulation of a float32 render) at a few entries."""
    for p in params:
        p.grad = None
    loss().backward()
    grads = [p.grad.clone() for p in params]
    scale = max(g.abs().max().item() for g in grads)
    for pi, idx in picks:
        p = params[pi]
        with torch.no_grad():
            old = p[idx].item()
            h = eps[pi]
            p[idx] = old + h
            lp = loss().item()
            p[idx] = old - h
            lm = loss().item()
            p[idx] = old
        fd = (lp - lm) / (2 * h)
        an = grads[pi][idx].item()
        assert abs(fd - an) <= rel * scale, f"param {pi}{idx}: analytic {an:.6g} vs finite difference {fd:.6g}"


@pytest.mark.parametrize("mode", ["sum", "topk"])
@pytest.mark.parametrize("D", [3, 4])
def test_native_backward_vs_finite_differences_model(mode, D):
    model = _smooth_model(N=6, W=12, H=10, D=D, mode=mode, topk=6, seed=2)
    assert _min_weight(model) > 5 * ALPHA_THRESHOLD
    params = [model.means.clone().requires_grad_(True), model.chol.clone().requires_grad_(True),
              model.colors.clone().requires_grad_(True)]
    wts = _loss_weights((10, 12, D), 3).double()

    def loss():
        img = Image2D(*params, 12, 10, mode, 6).render(backend="cpu")
        return (img.double() * wts).sum()

    picks = [(0, (0, 0)), (0, (3, 1)), (1, (1, 0)), (1, (2, 1)), (1, (4, 2)), (2, (5, D - 1)), (2, (0, 0))]
    _fd_check(loss, params, picks, eps=(1e-2, 1e-2, 1e-2), rel=2e-3)


@pytest.mark.parametrize("topk", [0, 5])
@pytest.mark.parametrize("tile_size", [16, 5])
def test_native_backward_vs_finite_differences_direct(topk, tile_size):
    model = _smooth_model(N=5, W=13, H=11, D=3, seed=6)
    assert _min_weight(model) > 5 * ALPHA_THRESHOLD
    cov = cholesky_to_cov(model.chol)
    radii = bounding_radii(cov)
    params = [model.means.clone().requires_grad_(True), cov_to_conic(cov).clone().requires_grad_(True),
              model.colors.clone().requires_grad_(True)]
    wts = _loss_weights((11, 13, 3), 4).double()

    def loss():
        img, _ = rasterize_image2d(*params, 13, 11, radii=radii, topk=topk, backend="cpu", tile_size=tile_size)
        return (img.double() * wts).sum()

    picks = [(0, (1, 0)), (0, (4, 1)), (1, (0, 0)), (1, (2, 1)), (1, (3, 2)), (2, (1, 2))]
    _fd_check(loss, params, picks, eps=(1e-2, 2e-5, 1e-2), rel=2e-3)


# ---------------------------------------------------------------- 3. any-scale rendering
@pytest.fixture(scope="module")
def scale_model():
    return _random_model(40, 30, 22, 3, seed=11)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_render_scale_shapes(scale_model, backend):
    m = scale_model
    assert m.render(backend=backend).shape == (22, 30, 3)
    assert m.render(2, backend=backend).shape == (44, 60, 3)
    assert m.render(0.5, backend=backend).shape == (11, 15, 3)
    assert m.render(1.5, backend=backend).shape == (33, 45, 3)
    assert m.render(size=(17, 9), backend=backend).shape == (9, 17, 3)
    assert m.render(0.001, backend=backend).shape == (1, 1, 3)  # never below one pixel


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("mode", ["sum", "topk"])
def test_render_crop_is_window_of_full(backend, mode):
    m = _random_model(40, 30, 22, 3, seed=12, mode=mode)
    full = m.render(2, backend=backend)
    for crop in [(0, 0, 60, 44), (7, 5, 23, 17), (40, 30, 20, 14), (59, 43, 1, 1), (0, 13, 60, 3)]:
        x, y, w, h = crop
        part = m.render(2, crop=crop, backend=backend)
        assert part.shape == (h, w, 3)
        torch.testing.assert_close(part, full[y:y + h, x:x + w], atol=1e-5, rtol=1e-5)
    # crops of an explicit size grid too
    full = m.render(size=(41, 29), backend=backend)
    torch.testing.assert_close(m.render(size=(41, 29), crop=(3, 4, 30, 20), backend=backend),
                               full[4:24, 3:33], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_render_size_equals_scale_one(scale_model, backend):
    m = scale_model
    assert torch.equal(m.render(size=(m.width, m.height), backend=backend), m.render(1.0, backend=backend))
    assert torch.equal(m.render(size=(60, 44), backend=backend), m.render(2.0, backend=backend))


@pytest.mark.parametrize("mode", ["sum", "topk"])
def test_render_first_k(mode):
    m = _random_model(40, 30, 22, 3, seed=13, mode=mode)
    full = m.render()
    zero = m.render(first_k=0)
    assert zero.shape == full.shape and (zero == 0).all()
    assert torch.equal(m.render(first_k=m.num_gaussians), full)
    assert torch.equal(m.render(first_k=m.num_gaussians + 5), full)
    for k in (1, 7, 25):
        assert torch.equal(m.render(first_k=k), m.subset(slice(0, k)).render())
    assert not torch.equal(m.render(first_k=7), full)
    # first_k composes with scale and crop
    assert torch.equal(m.render(2, crop=(3, 4, 10, 8), first_k=9),
                       m.subset(slice(0, 9)).render(2, crop=(3, 4, 10, 8)))


@pytest.mark.parametrize("mode", ["sum", "topk"])
def test_render_upsample_then_pool_matches(mode):
    """A smooth model (every Gaussian covers the whole image): rendering at scale 2 and 2x2
    average pooling is the scale-1 render up to the curvature inside a pixel."""
    W, H = 24, 20
    g = torch.Generator().manual_seed(0)
    N = 8
    means = torch.rand(N, 2, generator=g) * torch.tensor([W, H])
    chol = torch.stack([15 + 5 * torch.rand(N, generator=g), 4 * (torch.rand(N, generator=g) - 0.5),
                        15 + 5 * torch.rand(N, generator=g)], -1)
    m = Image2D(means, chol, torch.rand(N, 3, generator=g), W, H, mode, topk=N)
    assert _min_weight(m) > 5 * ALPHA_THRESHOLD
    one = m.render()
    two = m.render(2)
    pooled = F.avg_pool2d(two.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)
    assert pooled.shape == one.shape
    err = (pooled - one).abs().max().item()
    assert err < 2e-3 * one.abs().max().item(), err
    # and the image does vary (the check is not vacuous)
    assert (one.amax((0, 1)) - one.amin((0, 1))).max() > 0.05


def test_render_scale_samples_continuous_function():
    """Scale 3: the centre sample of each 3x3 block is the scale-1 pixel centre."""
    m = _random_model(30, 20, 14, 3, seed=14)
    one = m.render(backend="torch")
    three = m.render(3, backend="torch")
    torch.testing.assert_close(three[1::3, 1::3], one, atol=1e-5, rtol=1e-5)


def test_render_clamp():
    m = _random_model(30, 20, 14, 3, seed=15)
    raw = m.render()
    assert raw.min() < 0 or raw.max() > 1
    assert torch.equal(m.render(clamp=True), raw.clamp(0, 1))


def test_cholesky_to_cov_and_conic():
    chol = torch.tensor([[2.0, 0.5, 1.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    cov = cholesky_to_cov(chol)
    L = torch.tensor([[2.0, 0.0], [0.5, 1.5]], dtype=torch.float64)
    S = L @ L.T + MIN_VARIANCE * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(cov[0], torch.stack([S[0, 0], S[0, 1], S[1, 1]]))
    torch.testing.assert_close(cov[1], torch.tensor([MIN_VARIANCE, 0, MIN_VARIANCE], dtype=torch.float64))
    q = cov_to_conic(cov)
    inv = torch.linalg.inv(S)
    torch.testing.assert_close(q[0], torch.stack([inv[0, 0], inv[0, 1], inv[1, 1]]))
    r = bounding_radii(torch.tensor([[4.0, 0.0, 0.25], [0.0, 0.0, 0.0]]))
    assert r.dtype == torch.int32 and r.tolist() == [[7, 2], [0, 0]]


# ---------------------------------------------------------------- 4. bad inputs
def _tiny():
    return Image2D(torch.rand(4, 2) * 8, torch.rand(4, 3) + 0.5, torch.rand(4, 3), 8, 6)


def test_bad_model_construction():
    with pytest.raises(ValueError, match="mode must be one of"):
        Image2D(torch.zeros(2, 2), torch.ones(2, 3), torch.zeros(2, 3), 8, 6, mode="max")
    with pytest.raises(ValueError, match=r"expected means \[N,2\]"):
        Image2D(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3), 8, 6)
    with pytest.raises(ValueError, match=r"expected means \[N,2\]"):
        Image2D(torch.zeros(2, 2), torch.ones(3, 3), torch.zeros(2, 3), 8, 6)
    with pytest.raises(ValueError, match=r"expected means \[N,2\]"):
        Image2D(torch.zeros(2, 2), torch.ones(2, 3), torch.zeros(2), 8, 6)
    with pytest.raises(ValueError, match="image size must be positive"):
        Image2D(torch.zeros(2, 2), torch.ones(2, 3), torch.zeros(2, 3), 0, 6)
    with pytest.raises(ValueError, match="topk must be >= 1"):
        Image2D(torch.zeros(2, 2), torch.ones(2, 3), torch.zeros(2, 3), 8, 6, mode="topk", topk=0)


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf")])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale must be a positive number"):
        _tiny().render(scale)


def test_bad_render_arguments():
    m = _tiny()
    with pytest.raises(ValueError, match="output size must be positive"):
        m.render(size=(0, 5))
    for crop in [(0, 0, 9, 6), (0, 0, 8, 7), (-1, 0, 4, 4), (0, -1, 4, 4), (5, 0, 4, 4), (0, 0, 0, 3),
                 (0, 0, 3, 0)]:
        with pytest.raises(ValueError, match="must lie inside the 8x6 output"):
            m.render(crop=crop)
    with pytest.raises(ValueError, match="must lie inside the 16x12 output"):
        m.render(2, crop=(10, 0, 7, 4))
    m.render(2, crop=(10, 0, 6, 4))  # just inside
    with pytest.raises(ValueError, match="first_k must be >= 0"):
        m.render(first_k=-1)
    with pytest.raises(ValueError, match="backend must be one of"):
        m.render(backend="cuda")
    with pytest.raises(ValueError, match="float32 only"):
        Image2D(m.means.double(), m.chol.double(), m.colors.double(), 8, 6).render(backend="cpu")


def test_bad_rasterize_arguments():
    means, q, c = torch.rand(3, 2), torch.tensor([[1.0, 0.0, 1.0]]).repeat(3, 1), torch.rand(3, 3)
    r = torch.full((3, 2), 4, dtype=torch.int32)
    for ts in (0, 65, -3):
        with pytest.raises(ValueError, match=r"tile_size must be in \[1, 64\]"):
            rasterize_image2d(means, q, c, 8, 8, radii=r, tile_size=ts)
    with pytest.raises(ValueError, match="backend must be one of"):
        rasterize_image2d(means, q, c, 8, 8, radii=r, backend="gpu")
    with pytest.raises(ValueError, match="topk must be >= 0"):
        rasterize_image2d(means, q, c, 8, 8, radii=r, topk=-1)
    with pytest.raises(ValueError, match="image size must be positive"):
        rasterize_image2d(means, q, c, 8, 0, radii=r)
    with pytest.raises(ValueError, match=r"expected means2d \[N,2\]"):
        rasterize_image2d(means, q[:2], c, 8, 8, radii=r)
    with pytest.raises(ValueError, match=r"expected means2d \[N,2\]"):
        rasterize_image2d(means[:, :1], q, c, 8, 8, radii=r)
    with pytest.raises(ValueError, match=r"expected means2d \[N,2\]"):
        rasterize_image2d(means, q, c[0], 8, 8, radii=r)
    with pytest.raises(ValueError, match="means2d is torch.float64"):
        rasterize_image2d(means.double(), q, c, 8, 8, radii=r, backend="cpu")
    with pytest.raises(ValueError, match="colors is torch.float64"):
        rasterize_image2d(means, q, c.double(), 8, 8, radii=r, backend="cpu")
    # "auto" falls back to the reference for float64 (no error)
    img, _ = rasterize_image2d(means.double(), q.double(), c.double(), 8, 8, radii=r)
    assert img.dtype == torch.float64


@pytest.mark.parametrize("radii", [torch.full((4,), 4, dtype=torch.int32), torch.full((2, 2), 4, dtype=torch.int32),
                                   torch.full((4, 2), 4.7)])
def test_rasterize_rejects_bad_radii(radii):
    # the native kernels read 2N integers from radii: anything else must be refused
    means, q, c = torch.rand(4, 2) * 8, torch.tensor([[0.5, 0.0, 0.5]]).repeat(4, 1), torch.rand(4, 3)
    with pytest.raises(ValueError, match="radii must be integer"):
        rasterize_image2d(means, q, c, 8, 8, radii=radii, backend="cpu")


def test_weight_sum_is_not_differentiable_natively():
    means, q, c = torch.rand(3, 2) * 8, torch.tensor([[0.5, 0.0, 0.5]]).repeat(3, 1), torch.rand(3, 3)
    means.requires_grad_(True)
    _, w = rasterize_image2d(means, q, c, 8, 8, radii=torch.full((3, 2), 5, dtype=torch.int32), backend="cpu")
    with pytest.raises(NotImplementedError, match="weight sum"):
        w.sum().backward()


def test_load_image_errors(tmp_path):
    from PIL import Image

    from splat.image2d.fit import load_image

    txt = tmp_path / "notes.png"
    txt.write_text("this is not an image\n")
    with pytest.raises(ValueError, match=r"notes\.png: cannot read image"):
        load_image(txt)
    with pytest.raises(FileNotFoundError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path)  # a directory
    good = tmp_path / "good.png"
    arr = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(good)
    img = load_image(good)
    assert img.shape == (20, 30, 3) and img.dtype == torch.float32
    assert torch.equal(img, torch.as_tensor(arr).float() / 255)
    data = good.read_bytes()
    for n in (30, len(data) // 2):
        bad = tmp_path / f"trunc{n}.png"
        bad.write_bytes(data[:n])
        with pytest.raises(ValueError, match=r"trunc\d+\.png: cannot read image"):
            load_image(bad)
    # greyscale and 16-bit files come back as 3 channels in [0, 1]
    Image.fromarray(arr[..., 0]).save(tmp_path / "grey.png")
    g = load_image(tmp_path / "grey.png")
    assert g.shape == (20, 30, 3) and torch.equal(g[..., 0], g[..., 2])
    a16 = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    Image.fromarray(a16).save(tmp_path / "deep.png")
    d = load_image(tmp_path / "deep.png")
    assert d.shape == (20, 30, 3) and 0 <= d.min() and d.max() <= 1 and d.max() > 0.9


def test_load_image2d_garbage(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"definitely not a torch file" * 10)
    with pytest.raises(ValueError, match="not a splat 2D image model"):
        load_image2d(bad)
    with pytest.raises(FileNotFoundError):
        load_image2d(tmp_path / "missing.pt")
    sgi = tmp_path / "model.sgi"
    sgi.write_bytes(b"SGIC" + bytes(range(60)))  # the codec's magic, then garbage
    with pytest.raises(ValueError):
        load_image2d(sgi)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "means": torch.zeros(1, 2)}, other)
    with pytest.raises(ValueError, match="no 'splat-image2d' format tag"):
        load_image2d(other)
    partial = tmp_path / "partial.pt"
    sd = _tiny().state_dict()
    del sd["chol"]
    torch.save(sd, partial)
    with pytest.raises(ValueError, match="missing 'chol'"):
        load_image2d(partial)


# ---------------------------------------------------------------- 5. MS-SSIM
@pytest.mark.parametrize("H,W", [(200, 260), (201, 259), (161, 175)])
def test_ms_ssim_matches_pytorch_msssim(H, W):
    pm = pytest.importorskip("pytorch_msssim")
    g = torch.Generator().manual_seed(H)
    a = torch.rand(2, H, W, 3, generator=g)
    a = F.avg_pool2d(a.permute(0, 3, 1, 2), 5, 1, 2).permute(0, 2, 3, 1).contiguous()
    b = (a + 0.08 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    ours = ms_ssim(a, b)
    ref = pm.ms_ssim(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2), data_range=1, size_average=False)
    assert ours.shape == (2,)
    assert (ours - ref).abs().max() < 1e-5, (ours, ref)
    assert 0.3 < ours.min() and ours.max() < 0.99
    torch.testing.assert_close(ms_ssim(a, a), torch.ones(2), atol=1e-5, rtol=0)
    assert ms_ssim(a[0], b[0]).shape == ()


@pytest.mark.parametrize("shape", [(160, 300, 3), (300, 160, 3), (100, 100, 1)])
def test_ms_ssim_too_small(shape):
    a = torch.rand(shape)
    with pytest.raises(ValueError, match="too small"):
        ms_ssim(a, a)


# ---------------------------------------------------------------- 6. fitting
def _target(W=48, H=40):
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    img = torch.stack([xs / W, ys / H, 0.5 + 0.3 * torch.sin(xs / 7)], -1)
    for cx, cy, r, col in ((12, 10, 6, (1, 0.2, 0.1)), (33, 25, 8, (0.1, 0.3, 0.9)), (20, 30, 4, (0.9, 0.9, 0.2))):
        img[((xs - cx) ** 2 + (ys - cy) ** 2) < r * r] = torch.tensor(col)
    return img.clamp(0, 1)


def _energy(model: Image2D) -> torch.Tensor:
    cov = cholesky_to_cov(model.chol)
    return model.colors.norm(dim=1) * (cov[:, 0] * cov[:, 2] - cov[:, 1] ** 2).sqrt()


@pytest.mark.parametrize("kw", [dict(init_fraction=0.5), dict(init_fraction=1.0), dict(mode="topk", topk=8),
                                dict(optimizer="adan"), dict(loss="l1-ssim", iterations=80)],
                         ids=["sum-progressive", "sum-all-at-once", "topk", "adan", "l1-ssim"])
def test_fit_improves_psnr(kw):
    from splat.image2d.fit import FitConfig, evaluate, fit

    target = _target()
    cfg = dict(num_gaussians=150, iterations=150, seed=0)
    cfg.update(kw)
    init = fit(target, FitConfig(**{**cfg, "iterations": 0}), progress=False).model
    res = fit(target, FitConfig(**cfg), progress=False, log_every=50)
    for model in (init, res.model):
        assert model.num_gaussians == 150
        assert model.mode == cfg.get("mode", "sum") and (model.width, model.height) == (48, 40)
        assert not model.means.requires_grad
    p0, p1 = evaluate(init, target)["psnr"], evaluate(res.model, target)["psnr"]
    assert p1 > p0 + 5, (p0, p1)
    assert p1 > 24, p1
    assert res.seconds > 0 and res.history and res.history[-1]["num_gaussians"] == 150
    # LOD order: contributions non-increasing, for the returned model
    e = _energy(res.model)
    assert (e[1:] <= e[:-1]).all()
    # the returned model renders to what evaluate() measured
    assert psnr(res.model.render(clamp=True), target).item() == pytest.approx(p1, abs=1e-4)


def test_fit_progressive_addition_happens():
    from splat.image2d.fit import FitConfig, fit

    counts = []
    fit(_target(), FitConfig(num_gaussians=100, iterations=40, init_fraction=0.25, add_rounds=3, seed=1),
        progress=False, callback=lambda it, m: counts.append(m.num_gaussians))
    assert counts[0] == 25 and counts[-1] == 100
    assert all(b >= a for a, b in zip(counts, counts[1:]))
    assert len(set(counts)) == 4  # 25 and three rounds of addition


def test_fit_is_reproducible():
    from splat.image2d.fit import FitConfig, fit

    cfg = FitConfig(num_gaussians=60, iterations=20, seed=3)
    a, b = fit(_target(), cfg, progress=False).model, fit(_target(), cfg, progress=False).model
    assert torch.equal(a.means, b.means) and torch.equal(a.chol, b.chol) and torch.equal(a.colors, b.colors)


def test_lod_order():
    from splat.image2d.fit import lod_order

    m = _random_model(30, 20, 14, 3, seed=16)
    s = lod_order(m)
    e = _energy(s)
    assert (e[1:] <= e[:-1]).all()
    assert s.num_gaussians == m.num_gaussians
    # a permutation of the same Gaussians: the sum-mode render is unchanged up to rounding
    torch.testing.assert_close(s.render(), m.render(), atol=1e-5, rtol=1e-5)
    order = torch.argsort(_energy(m), descending=True, stable=True)
    assert torch.equal(s.means, m.means[order])
    # stable for ties
    tie = Image2D(torch.rand(4, 2), torch.ones(4, 3), torch.ones(4, 3), 4, 4)
    assert torch.equal(lod_order(tie).means, tie.means)


@pytest.mark.parametrize("field,value,flag", [("num_gaussians", 0, "--num-gaussians"),
                                              ("iterations", -1, "--iterations"),
                                              ("mode", "max", "--mode"),
                                              ("loss", "l3", "--loss"),
                                              ("optimizer", "sgd", "--optimizer"),
                                              ("init_fraction", 0.0, "--init-fraction"),
                                              ("init_fraction", 1.5, "--init-fraction")])
def test_validate_rejects(field, value, flag):
    from splat.image2d.fit import FitConfig, fit, validate

    cfg = FitConfig(**{field: value})
    with pytest.raises(ValueError, match=flag):
        validate(cfg)
    with pytest.raises(ValueError, match=flag):
        fit(_target(8, 8), cfg, progress=False)


def test_validate_topk_and_defaults():
    from splat.image2d.fit import FitConfig, validate

    with pytest.raises(ValueError, match="--topk"):
        validate(FitConfig(mode="topk", topk=0))
    validate(FitConfig())
    validate(FitConfig(mode="sum", topk=0))  # K only matters in top-K mode


def test_adan_first_step_and_convergence():
    from splat.image2d.optim import Adan

    with pytest.raises(ValueError, match="lr must be positive"):
        Adan([torch.zeros(1, requires_grad=True)], lr=0)
    # step 1: no gradient difference yet and bias-corrected moments, so each entry moves by lr
    x = torch.tensor([3.0, -2.0, 0.5], requires_grad=True)
    opt = Adan([x], lr=0.1)
    ((x - 1) ** 2 * torch.tensor([1.0, 10.0, 0.1])).sum().backward()
    opt.step()
    torch.testing.assert_close(x.detach(), torch.tensor([2.9, -1.9, 0.6]), atol=1e-6, rtol=0)
    for _ in range(500):
        opt.zero_grad()
        ((x - 1) ** 2 * torch.tensor([1.0, 10.0, 0.1])).sum().backward()
        opt.step()
    assert (x - 1).abs().max() < 0.01, x
    # decoupled weight decay shrinks towards 0 when the gradient is 0
    y = torch.ones(2, requires_grad=True)
    opt = Adan([y], lr=0.1, weight_decay=0.5)
    y.grad = torch.zeros(2)
    opt.step()
    torch.testing.assert_close(y.detach(), torch.full((2,), 1 / 1.05))


# ---------------------------------------------------------------- 7. storage
@pytest.mark.parametrize("mode", ["sum", "topk"])
def test_save_load_round_trip(tmp_path, mode):
    m = _random_model(25, 20, 14, 4, seed=17, mode=mode, topk=3)
    path = tmp_path / "m.pt"
    m.save(path)
    back = load_image2d(path)
    for name in ("means", "chol", "colors"):
        assert torch.equal(getattr(back, name), getattr(m, name)), name
        assert getattr(back, name).dtype == torch.float32
    assert (back.width, back.height, back.mode, back.topk) == (20, 14, mode, 3)
    assert torch.equal(back.render(), m.render())
    assert torch.equal(back.render(1.7, crop=(2, 3, 20, 10)), m.render(1.7, crop=(2, 3, 20, 10)))


def test_state_dict_round_trip_without_files():
    m = _random_model(25, 20, 14, 3, seed=18, mode="topk", topk=5)
    back = Image2D.from_state_dict(m.state_dict())
    assert torch.equal(back.means, m.means) and torch.equal(back.chol, m.chol)
    assert torch.equal(back.colors, m.colors) and (back.mode, back.topk) == ("topk", 5)
    with pytest.raises(ValueError, match="format tag"):
        Image2D.from_state_dict({"means": m.means})
