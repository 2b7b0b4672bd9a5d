"""float64 finite-difference gradchecks of the torch reference, for every input."""
import pytest
import torch

import splat
from scene_utils import cameras, gaussians

W, H = 20, 14


def _scene(sh_degree=None, N=10, C=2, seed=3):
    m, q, s, o, c = gaussians(N, seed=seed, sh_degree=sh_degree, scale=(0.15, 0.5), dtype=torch.float64)
    V, K = cameras(C, width=W, height=H, radius=3.0, seed=seed, dtype=torch.float64)
    return [m, q, s, o, c], V, K


def _check(inputs, V, K, wrt, **kw):
    idx = "mqsoc".index(wrt)
    x0 = inputs[idx].clone().requires_grad_(True)

    def f(x):
        args = list(inputs)
        args[idx] = x
        img, alpha, _ = splat.rasterize(*args, V, K, W, H, backend="torch", tile_size=8, **kw)
        return img, alpha

    assert torch.autograd.gradcheck(f, (x0,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("wrt", ["m", "q", "s", "o", "c"])
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_gradcheck_rgb(wrt, mode):
    inputs, V, K = _scene()
    _check(inputs, V, K, wrt, rasterize_mode=mode, backgrounds=torch.rand(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("wrt", ["m", "c"])
@pytest.mark.parametrize("degree", [1, 3])
def test_gradcheck_sh(wrt, degree):
    inputs, V, K = _scene(sh_degree=degree)
    _check(inputs, V, K, wrt, sh_degree=degree)


@pytest.mark.parametrize("wrt", ["m", "q", "s"])
def test_gradcheck_depth(wrt):
    inputs, V, K = _scene()
    _check(inputs, V, K, wrt, render_mode="RGB+D")


def test_gradcheck_viewmats():
    inputs, V, K = _scene(C=1)
    V0 = V.clone().requires_grad_(True)

    def f(v):
        img, alpha, _ = splat.rasterize(*inputs, v, K, W, H, backend="torch", tile_size=8)
        return img, alpha

    assert torch.autograd.gradcheck(f, (V0,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gradients_are_not_trivially_zero():
    """The checks above would pass on a renderer that ignores its inputs; this one would not."""
    inputs, V, K = _scene()
    ts = [t.clone().requires_grad_(True) for t in inputs]
    img, alpha, _ = splat.rasterize(*ts, V, K, W, H, backend="torch", tile_size=8)
    (img.sum() + alpha.sum()).backward()
    for name, t in zip("mqsoc", ts):
        assert t.grad.abs().sum() > 0, name
    assert alpha.max() > 0.3
