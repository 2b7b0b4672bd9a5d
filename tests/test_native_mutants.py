"""Tests that a mutation pass over the native math (scripts/mutate_native.py) showed missing: each
pins a constant, a comparison or a gradient term that no other test reached. Every backend is
compared with the torch reference and, where it has one, with the closed form."""
from __future__ import annotations

import pytest
import torch

import splat
from splat.backends import torch_ref


def _one_gaussian(opacity=1.0, scale=0.5, colour=(0.2, 0.6, 0.9), z=3.0):
    means = torch.tensor([[0.0, 0.0, z]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    scales = torch.full((1, 3), scale)
    opacities = torch.tensor([opacity])
    colors = torch.tensor([colour])
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]]])
    return means, quats, scales, opacities, colors, viewmats, Ks


def test_alpha_is_clamped_to_0_99_where_opacity_reaches_one(any_backend):
    """kMaxAlpha: an opaque Gaussian's centre pixel is 0.99 colour + 0.01 background (trained
    models hold many Gaussians with opacity above 0.99; no other test scene reached the clamp)."""
    args = _one_gaussian(opacity=1.0)
    bg = torch.tensor([[1.0, 0.0, 0.5]])
    c, a, _ = splat.rasterize(*args, 32, 32, backgrounds=bg, backend=any_backend)
    # the four pixels around the mean (16, 16) sit 0.5 px off it: raw alpha exp(-0.0056) = 0.994
    centre = c[0, 15:17, 15:17].reshape(-1, 3)
    want_alpha = torch_ref.MAX_ALPHA
    assert torch_ref.MAX_ALPHA == 0.99
    expected = want_alpha * torch.tensor([0.2, 0.6, 0.9]) + (1 - want_alpha) * bg[0]
    torch.testing.assert_close(centre, expected.expand(4, 3), atol=2e-6, rtol=0)
    torch.testing.assert_close(a[0, 15:17, 15:17].reshape(-1), torch.full((4,), want_alpha), atol=1e-6, rtol=0)


def _centred(opacity, scale=0.5, z=4.0, W=33, H=33):
    """One Gaussian whose mean projects exactly onto the centre of pixel (16, 16)."""
    means = torch.tensor([[0.0, 0.0, z]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    scales = torch.full((1, 3), scale)
    Ks = torch.tensor([[[32.0, 0.0, 16.5], [0.0, 32.0, 16.5], [0.0, 0.0, 1.0]]])
    return means, quats, scales, torch.tensor([opacity]), torch.tensor([[0.3, 0.5, 0.7]]), torch.eye(4)[None], Ks, W, H


def test_a_pixel_centre_on_the_mean_has_alpha_equal_to_the_opacity(any_backend):
    """sigma = 0 exactly at the mean: the pair takes part (sigma >= 0, as gsplat), alpha = opacity."""
    *args, W, H = _centred(0.5)
    _, a, _ = splat.rasterize(*args, W, H, backend=any_backend)
    assert a[0, 16, 16, 0].item() == 0.5


def test_opacity_gradient_at_exactly_the_alpha_clamp(any_backend):
    """opacity * vis == 0.99 exactly: the clamp passes the gradient at equality (torch's clamp and
    gsplat's backward both do); above it, none."""
    for opacity, want in ((torch_ref.MAX_ALPHA, 1.0), (0.995, 0.0)):
        means, quats, scales, opac, cols, V, K, W, H = _centred(opacity)
        opac.requires_grad_(True)
        _, a, _ = splat.rasterize(means, quats, scales, opac, cols, V, K, W, H, backend=any_backend)
        a[0, 16, 16, 0].backward()
        assert opac.grad.item() == pytest.approx(want, abs=1e-6), (opacity, any_backend)


@pytest.fixture(scope="module")
def math_selftest(tmp_path_factory):
    """tests/native/math_selftest.cpp built with the CPU backend's compiler flags."""
    import ctypes
    import os
    import subprocess

    from rasterizer_cuda import SOURCE_DIR
    from splat.backends.cpu import CXX_FLAGS

    out = tmp_path_factory.mktemp("math") / "libmath_selftest.so"
    src = os.path.join(os.path.dirname(__file__), "native", "math_selftest.cpp")
    flags = [f for f in CXX_FLAGS if f != "-fopenmp"]
    res = subprocess.run([os.environ.get("CXX", "g++"), *flags, "-I", str(SOURCE_DIR / "include"), src, "-o",
                          str(out)], capture_output=True, text=True)
    if res.returncode != 0 and "not found" in res.stderr:
        pytest.skip("no C++ compiler")
    assert res.returncode == 0, res.stderr
    lib = ctypes.CDLL(str(out))
    lib.fast_exp_max_rel_error.restype = ctypes.c_double
    lib.fast_exp_max_rel_error.argtypes = [ctypes.c_float, ctypes.c_float, ctypes.c_int]
    return lib


def test_the_cpu_exp_polynomial_holds_its_documented_accuracy(math_selftest):
    """fast_exp (the per-pixel exp of the CPU backend) within 2.5e-7 relative of exp on the whole
    range it serves, [-87, 0] (a 1 % change of one coefficient is 6e-6; of the range reduction,
    2e-5 near -87). The rendering tests cannot resolve this: float32 sigma alone is 7e-6."""
    assert math_selftest.fast_exp_max_rel_error(-87.0, 0.0, 2_000_001) < 2.5e-7
    assert math_selftest.fast_exp_max_rel_error(-5.6, 0.0, 200_001) < 2.5e-7  # where alpha >= 1/255


def test_degenerate_quaternion_threshold_is_strict(any_backend):
    """|q|^2 exactly 1e-24 (float32) is still normalised; only below it is the identity used."""
    x = 7.071068e-13  # float32: x*x + x*x == 1e-24f exactly
    q_edge = torch.tensor([[0.0, x, x, 0.0]])
    assert ((q_edge * q_edge).sum() == torch.tensor(1e-24, dtype=torch.float32)).item()
    means, _, _, opac, cols, V, K, W, H = _centred(0.8)
    scales = torch.tensor([[0.6, 0.1, 0.1]])
    half = torch.tensor([[0.0, 1.0, 1.0, 0.0]])  # the same rotation at unit scale: x <-> y, z -> -z
    c_edge, _, _ = splat.rasterize(means, q_edge, scales, opac, cols, V, K, W, H, backend=any_backend)
    c_half, _, _ = splat.rasterize(means, half, scales, opac, cols, V, K, W, H, backend=any_backend)
    c_id, _, _ = splat.rasterize(means, torch.tensor([[1.0, 0, 0, 0]]), scales, opac, cols, V, K, W, H,
                                 backend=any_backend)
    torch.testing.assert_close(c_edge, c_half, atol=1e-6, rtol=0)
    assert (c_edge - c_id).abs().max() > 0.1
    below = q_edge * 0.999
    c_below, _, _ = splat.rasterize(means, below, scales, opac, cols, V, K, W, H, backend=any_backend)
    torch.testing.assert_close(c_below, c_id, atol=0, rtol=0)
    # and the backward agrees: a gradient at the threshold (huge, ~1/|q|), none below it
    grads = {}
    for name, q in (("edge", q_edge), ("below", below)):
        for b in ("torch", any_backend):
            qq = q.clone().requires_grad_(True)
            c, _, _ = splat.rasterize(means, qq, scales, opac, cols, V, K, W, H, backend=b)
            (c * torch.rand(c.shape, generator=torch.Generator().manual_seed(4))).sum().backward()
            grads[name, b] = qq.grad
    assert (grads["below", any_backend] == 0).all()
    g_ref, g = grads["edge", "torch"], grads["edge", any_backend]
    assert torch.isfinite(g).all() and g.abs().max() > 1e9
    torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-4 * g_ref.abs().max().item())


def _radius(backend, means, **kw):
    *_, opac, cols, V, K, W, H = _centred(1.0)
    scales = torch.full((1, 3), 0.5)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    _, _, info = splat.rasterize(means, quats, scales, opac, cols, V, K, W, H, backend=backend, **kw)
    return info["radii"][0, 0].tolist()


@pytest.mark.parametrize("axis,side", [(0, -1), (0, 1), (1, -1), (1, 1)])
def test_a_footprint_that_ends_exactly_at_the_image_edge_is_culled(any_backend, axis, side):
    """Beyond the 1.3 x FoV guard band the 2D footprint no longer depends on the position, so its
    radius r is read once; a mean exactly r pixels outside the edge is culled, one pixel closer it
    is kept (gsplat's test: mean + r <= 0 or mean - r >= size)."""
    z = 4.0
    fx = 32.0
    pos = torch.tensor([[0.0, 0.0, z]])
    pos[0, axis] = side * 3.0  # x / z = 0.75: beyond the guard band (0.65), partly on the image
    r = _radius(any_backend, pos)[axis]
    assert r > 0
    # mean2d = fx * p / z + 16.5 -> the mean at -r (left/top) or 33 + r (right/bottom): exact in float32
    edge = -r if side < 0 else 33 + r
    p_edge = (edge - 16.5) * z / fx
    for shift, visible in ((0.0, False), (-side * 1.0, True)):
        q = pos.clone()
        q[0, axis] = p_edge + shift * z / fx
        radii = _radius(any_backend, q)
        assert (radii[axis] > 0) == visible, (radii, shift)


def test_radius_clip_culls_radii_at_most_the_clip(any_backend):
    pos = torch.tensor([[0.1, -0.2, 4.0]])
    rx, ry = _radius(any_backend, pos)
    assert _radius(any_backend, pos, radius_clip=float(max(rx, ry))) == [0, 0]
    assert _radius(any_backend, pos, radius_clip=max(rx, ry) - 0.5) == [rx, ry]


def test_depth_exactly_at_the_near_and_far_planes_is_kept(any_backend):
    pos = torch.tensor([[0.0, 0.0, 4.0]])
    assert _radius(any_backend, pos, far_plane=4.0)[0] > 0
    assert _radius(any_backend, pos, near_plane=4.0)[0] > 0
    assert _radius(any_backend, pos, far_plane=3.9999998)[0] == 0
    assert _radius(any_backend, pos, near_plane=4.0000005)[0] == 0


def _off_axis_scene():
    """Gaussians far off the optical axis: inside the guard band, beyond it yet on the image, and
    one large one beyond it (the band's 0.3 and the clamped Jacobian terms matter only there)."""
    g = torch.Generator().manual_seed(3)
    means = torch.tensor([[0.1, 2.2, 4.0], [-2.3, 0.2, 4.0], [2.1, -2.0, 4.5], [0.3, 3.2, 4.0], [-3.4, 0.1, 4.0],
                          [3.3, 3.0, 4.0]])
    quats = torch.randn(6, 4, generator=g)
    scales = torch.tensor([[0.3, 0.5, 0.4], [0.5, 0.3, 0.6], [0.4, 0.4, 0.5], [0.9, 1.0, 0.8], [1.0, 0.8, 0.9],
                           [1.2, 1.1, 1.0]])
    opac = torch.tensor([0.7, 0.6, 0.8, 0.5, 0.6, 0.5])
    cols = torch.rand(6, 3, generator=g)
    K = torch.tensor([[[32.0, 0.0, 16.0], [0.0, 32.0, 16.0], [0.0, 0.0, 1.0]]])
    return [means, quats, scales, opac, cols], torch.eye(4)[None], K


def test_off_axis_and_guard_band_gradients_match_the_reference(native):
    """Means, quats and scales gradients of Gaussians near and beyond the frustum's edges, native
    against the torch reference at 1e-4 relative (the y and x terms of the projection Jacobian,
    the guard band's clamp)."""
    tensors, V, K = _off_axis_scene()
    w = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    grads = {}
    for b in ("torch", native):
        ps = [t.clone().requires_grad_(True) for t in tensors]
        c, a, info = splat.rasterize(*ps, V, K, 32, 32, backend=b)
        ((c * w).sum() + a.sum()).backward()
        grads[b] = [p.grad for p in ps[:3]] + [c.detach(), info["radii"]]
    assert (grads["torch"][4][0, 3:] > 0).all()  # the three beyond the band are on the image
    for name, g_ref, g in zip(("means", "quats", "scales"), grads["torch"][:3], grads[native][:3]):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6 * g_ref.abs().max().item(), msg=name)
    torch.testing.assert_close(grads[native][3], grads["torch"][3], rtol=0, atol=2e-6)
    assert torch.equal(grads[native][4], grads["torch"][4])


def test_antialiased_gradients_of_a_flat_gaussian_seen_edge_on_are_finite(any_backend):
    """A zero scale seen edge-on has a zero-area 2D footprint before the eps2d blur, so the
    antialiased compensation is 0: the backward must not divide by it."""
    means = torch.tensor([[0.0, 0.0, 4.0], [0.4, 0.3, 4.0]], requires_grad=True)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2, requires_grad=True)
    scales = torch.tensor([[0.0, 0.4, 0.4], [0.3, 0.3, 0.3]], requires_grad=True)
    opac = torch.tensor([0.8, 0.6], requires_grad=True)
    cols = torch.rand(2, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    K = torch.tensor([[[32.0, 0.0, 16.0], [0.0, 32.0, 16.0], [0.0, 0.0, 1.0]]])
    c, a, info = splat.rasterize(means, quats, scales, opac, cols, torch.eye(4)[None], K, 32, 32,
                                 rasterize_mode="antialiased", backend=any_backend)
    (c.sum() + a.sum()).backward()
    for t in (means, quats, scales, opac, cols):
        assert torch.isfinite(t.grad).all(), (any_backend, t.grad)
    assert info["opacities"][0, 0].item() == 0.0  # compensated to nothing: the flat one is invisible


def test_gradients_exactly_at_the_guard_band_edge_match_the_reference(native):
    """A mean exactly on the 1.3 x FoV guard band (x / z == the limit, exact in float32): the
    clamp there passes the gradient, as torch's clamp does (the inside branch of the Jacobian)."""
    import numpy as np

    f32 = np.float32
    lim = f32(f32(32 - 16) / f32(32)) + f32(0.3) * f32(f32(0.5) * f32(32) / f32(32))  # (W - cx)/fx + 0.3 tan
    lim_neg = f32(f32(16) / f32(32)) + f32(0.3) * f32(f32(0.5) * f32(32) / f32(32))
    z = 4.0
    e_pos, e_neg = float(f32(z) * lim), float(f32(z) * lim_neg)
    means = torch.tensor([[e_pos, 0.3, z], [-0.2, -e_neg, z], [-e_neg, -0.4, z], [0.5, e_pos, z]])  # one per edge
    assert means[0, 0].item() / z == float(lim)
    quats = torch.tensor([[0.9, 0.2, -0.3, 0.1], [0.8, -0.1, 0.4, 0.2], [0.7, 0.3, 0.2, -0.4], [0.6, -0.2, 0.1, 0.5]])
    scales = torch.tensor([[0.8, 0.6, 0.7], [0.6, 0.9, 0.5], [0.7, 0.5, 0.9], [0.5, 0.7, 0.6]])
    opac = torch.tensor([0.8, 0.7, 0.75, 0.65])
    cols = torch.tensor([[0.9, 0.2, 0.4], [0.1, 0.8, 0.5], [0.3, 0.3, 0.9], [0.7, 0.6, 0.1]])
    K = torch.tensor([[[32.0, 0.0, 16.0], [0.0, 32.0, 16.0], [0.0, 0.0, 1.0]]])
    w = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    grads = {}
    for b in ("torch", native):
        ps = [t.clone().requires_grad_(True) for t in (means, quats, scales)]
        c, a, _ = splat.rasterize(*ps, opac, cols, torch.eye(4)[None], K, 32, 32, backend=b)
        ((c * w).sum() + a.sum()).backward()
        grads[b] = [p.grad for p in ps]
    for name, g_ref, g in zip(("means", "quats", "scales"), grads["torch"], grads[native]):
        assert g_ref.abs().sum() > 0
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6 * g_ref.abs().max().item(), msg=name)
