"""Each native backend (cpu, and cuda where a GPU is present) against the torch
reference: forward, gradients, tile binning, absgrad, batched cameras and tile
subsets. The reference renders on the CPU; native results are compared there."""
import math

import pytest
import torch

import splat
from scene_utils import DEVICES, cameras, gaussians, on


def _cpu(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, list):
        return [_cpu(t) for t in x]
    return x


def _render_both(inputs, V, K, W, H, native, weights_seed=0, **kw):
    """Render with the reference and `native`, backprop the same random loss, return
    per-backend results on the CPU."""
    out = {}
    view_grad = kw.pop("_view_grad", False)
    for backend in ("torch", native):
        dev = DEVICES[backend]
        ts = [t.clone().to(dev).requires_grad_(True) for t in inputs]
        Vb = V.clone().to(dev).requires_grad_(view_grad)
        kw_dev = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        img, alpha, info = splat.rasterize(*ts, Vb, K.to(dev), W, H, backend=backend, **kw_dev)
        info["means2d"].retain_grad()
        g = torch.Generator().manual_seed(weights_seed)
        w_img, w_alpha = on(backend, torch.randn(img.shape, generator=g), torch.randn(alpha.shape, generator=g))
        loss = (img * w_img).sum() + (alpha * w_alpha).sum()
        loss.backward()
        out[backend] = dict(img=_cpu(img), alpha=_cpu(alpha), grads=[_cpu(t.grad) for t in ts],
                            info={k: _cpu(v) for k, v in info.items()}, m2d_grad=_cpu(info["means2d"].grad),
                            view_grad=_cpu(Vb.grad))
    return out["torch"], out[native]


def _close(a, b, rel=1e-4, name=""):
    scale = max(a.abs().max().item(), 1e-6)
    err = (a - b).abs().max().item()
    assert err <= rel * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


def _compare(ref, got, check_grads=True):
    _close(ref["img"], got["img"], 1e-5, "image")
    _close(ref["alpha"], got["alpha"], 1e-5, "alpha")
    ri, gi = ref["info"], got["info"]
    assert torch.equal(ri["radii"], gi["radii"])
    assert torch.equal(ri["flatten_ids"], gi["flatten_ids"])
    assert torch.equal(ri["isect_offsets"], gi["isect_offsets"])
    assert torch.equal(ri["isect_ids"] >> 32, gi["isect_ids"] >> 32)  # depth bits may differ by an ulp
    assert torch.equal(ri["tiles_per_gauss"], gi["tiles_per_gauss"])
    _close(ri["means2d"].detach(), gi["means2d"].detach(), 1e-5, "means2d")
    _close(ri["conics"].detach(), gi["conics"].detach(), 1e-4, "conics")
    if check_grads:
        for name, a, b in zip(["means", "quats", "scales", "opacities", "colors"], ref["grads"], got["grads"]):
            _close(a, b, 2e-4, f"grad {name}")
        _close(ref["m2d_grad"], got["m2d_grad"], 2e-4, "grad means2d")


@pytest.mark.parametrize("N", [1, 40, 600])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_rgb_matches_reference(native, N, C, mode):
    inputs = gaussians(N, seed=N + C)
    V, K = cameras(C, 48, 40, seed=C)
    ref, got = _render_both(inputs, V, K, 48, 40, native, rasterize_mode=mode, backgrounds=torch.rand(C, 3))
    _compare(ref, got)
    assert ref["alpha"].max() > 0.1  # something was actually drawn


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_reference(native, degree):
    inputs = gaussians(300, seed=degree, sh_degree=3)  # K = 16, using the first (degree+1)^2
    V, K = cameras(2, 40, 32, seed=degree)
    ref, got = _render_both(inputs, V, K, 40, 32, native, sh_degree=degree)
    _compare(ref, got)


def test_per_camera_colors_and_sh(native):
    m, q, s, o, _ = gaussians(200, seed=5)
    V, K = cameras(2, 32, 32, seed=5)
    sh = torch.randn(2, 200, 9, 3) * 0.3
    ref, got = _render_both([m, q, s, o, sh], V, K, 32, 32, native, sh_degree=2)
    _compare(ref, got)
    feats = torch.rand(2, 200, 3)
    ref, got = _render_both([m, q, s, o, feats], V, K, 32, 32, native)
    _compare(ref, got)


@pytest.mark.parametrize("render_mode", ["D", "ED", "RGB+D", "RGB+ED"])
def test_depth_modes(native, render_mode):
    # seed chosen with no two overlapping Gaussians at depths within an ulp (whose order may
    # legitimately differ between backends)
    inputs = gaussians(400, seed=8, scale=(0.1, 0.4))
    V, K = cameras(2, 32, 24, seed=7)
    out = {}
    for backend in ("torch", native):
        ts = [t.clone().to(DEVICES[backend]).requires_grad_(True) for t in inputs]
        img, alpha, _ = splat.rasterize(*ts, *on(backend, V, K), 32, 24, backend=backend, render_mode=render_mode)
        # expected depth divides by alpha: weight only well-covered pixels
        w = (alpha.detach() > 0.5).float()
        (img * w).sum().backward()
        out[backend] = (_cpu(img), [_cpu(t.grad) for t in ts])
    assert out["torch"][0].shape[-1] == (1 if render_mode in ("D", "ED") else 4)
    _close(out["torch"][0], out[native][0], 1e-5, render_mode)
    for a, b in zip(out["torch"][1], out[native][1]):
        assert (a is None) == (b is None)
        if a is not None:
            _close(a, b, 2e-4, render_mode + " grad")


@pytest.mark.parametrize("D,chunk", [(37, 16), (37, 64), (2, 32), (5, 32), (11, 32)])
def test_channel_counts(native, D, chunk):
    """Every channel count (the cuda kernels are built for 1, 2, 3, 4, 8, 16 and 32 and
    mask the rest), and more channels than one call takes."""
    m, q, s, o, _ = gaussians(150, seed=9)
    feats = torch.rand(150, D)
    V, K = cameras(1, 24, 24, seed=9)
    ref, got = _render_both([m, q, s, o, feats], V, K, 24, 24, native, channel_chunk=chunk,
                            backgrounds=torch.rand(1, D))
    _compare(ref, got)
    assert got["img"].shape == (1, 24, 24, D)


def test_absgrad(native):
    inputs = gaussians(300, seed=11)
    V, K = cameras(2, 40, 32, seed=11)
    res = {}
    for backend in ("torch", native):
        ts = [t.clone().to(DEVICES[backend]).requires_grad_(True) for t in inputs]
        img, alpha, info = splat.rasterize(*ts, *on(backend, V, K), 40, 32, backend=backend, absgrad=True)
        info["means2d"].retain_grad()
        w = on(backend, torch.randn(img.shape, generator=torch.Generator().manual_seed(0)))[0]
        (img * w).sum().backward()
        res[backend] = (_cpu(info["means2d"].absgrad), _cpu(info["means2d"].grad))
    _close(res["torch"][0], res[native][0], 2e-4, "absgrad")
    # |sum| <= sum |.|, strictly somewhere when pixels disagree in sign
    assert (res[native][0] + 1e-6 >= res[native][1].abs()).all()
    assert (res[native][0] > res[native][1].abs() + 1e-6).any()


def test_viewmat_gradients(native):
    inputs = gaussians(300, seed=13)
    V, K = cameras(2, 32, 32, seed=13)
    ref, got = _render_both(inputs, V, K, 32, 32, native, _view_grad=True)
    _close(ref["view_grad"], got["view_grad"], 2e-4, "viewmats grad")


def test_batched_cameras_equal_single(any_backend):
    backend = any_backend
    inputs = on(backend, *gaussians(300, seed=17))
    V, K = on(backend, *cameras(3, 36, 28, seed=17))
    img3, alpha3, _ = splat.rasterize(*inputs, V, K, 36, 28, backend=backend)
    for c in range(3):
        img1, alpha1, _ = splat.rasterize(*inputs, V[c : c + 1], K[c : c + 1], 36, 28, backend=backend)
        _close(img1[0], img3[c], 1e-6, "batched")
        _close(alpha1[0], alpha3[c], 1e-6, "batched alpha")


def test_tile_subset(any_backend):
    backend = any_backend
    W, H, ts = 40, 30, 8
    inputs = [t.requires_grad_(True) for t in on(backend, *gaussians(300, seed=19))]
    V, K = on(backend, *cameras(2, W, H, seed=19))
    bg = on(backend, torch.rand(2, 3))[0]
    full, full_a, _ = splat.rasterize(*inputs, V, K, W, H, backend=backend, tile_size=ts, backgrounds=bg)
    tw, th = math.ceil(W / ts), math.ceil(H / ts)
    tiles = torch.tensor([0, 3, tw + 1, tw * th - 1, tw * th + 2, 2 * tw * th - 1])
    part, part_a, info = splat.rasterize(*inputs, V, K, W, H, backend=backend, tile_size=ts, tiles=tiles,
                                         backgrounds=bg)
    mask = torch.zeros(2 * th * tw, dtype=torch.bool)
    mask[tiles] = True
    mask = mask.reshape(2, th, tw).repeat_interleave(ts, 1).repeat_interleave(ts, 2)[:, :H, :W]
    mask = on(backend, mask)[0]
    _close(part[mask], full[mask], 1e-6, "subset")
    _close(part_a[mask], full_a[mask], 1e-6, "subset alpha")
    assert (part[~mask] == 0).all() and (part_a[~mask] == 0).all()
    assert info["flatten_ids"].numel() < splat.rasterize(*inputs, V, K, W, H, backend=backend, tile_size=ts)[2][
        "flatten_ids"].numel()
    # gradients flow only from the rendered tiles: a loss on the other pixels gives none
    (part * (~mask)[..., None]).sum().backward()
    assert all(t.grad is None or t.grad.abs().max() == 0 for t in inputs)


def test_tile_subset_gradients_match(native):
    inputs = gaussians(200, seed=23)
    V, K = cameras(2, 32, 32, seed=23)
    tiles = torch.tensor([1, 2, 5, 16 + 3])
    ref, got = _render_both(inputs, V, K, 32, 32, native, tile_size=8, tiles=tiles, backgrounds=torch.rand(2, 3))
    _compare(ref, got)


def test_backgrounds_gradient(native):
    inputs = gaussians(100, seed=29)
    V, K = cameras(2, 24, 24, seed=29)
    grads = {}
    for backend in ("torch", native):
        bg = on(backend, torch.rand(2, 3, generator=torch.Generator().manual_seed(1)))[0].requires_grad_(True)
        img, _, _ = splat.rasterize(*on(backend, *inputs, V, K), 24, 24, backend=backend, backgrounds=bg)
        (img ** 2).sum().backward()
        grads[backend] = _cpu(bg.grad)
    _close(grads["torch"], grads[native], 1e-4, "background grad")
    assert grads[native].abs().min() > 0


def test_deterministic(native):
    """Same inputs, same results: bit for bit on the cpu backend; on cuda the
    image bit for bit and the gradients (summed with atomics, in varying order)
    to rounding."""
    inputs = on(native, *gaussians(500, seed=31))
    V, K = on(native, *cameras(2, 48, 48, seed=31))
    runs = []
    for _ in range(2):
        ts = [t.clone().requires_grad_(True) for t in inputs]
        img, _, _ = splat.rasterize(*ts, V, K, 48, 48, backend=native)
        img.square().sum().backward()
        runs.append([_cpu(img)] + [_cpu(t.grad) for t in ts])
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1:], runs[1][1:]):
        if native != "cuda":  # the emulation runs one fiber at a time: its atomics add in a fixed order
            assert torch.equal(a, b)
        else:
            _close(a, b, 1e-5, "repeat gradient")


def test_auto_picks_native_for_float32(native):
    if native == "cuda-emulated":
        pytest.skip("'auto' never picks the host emulation")
    inputs = on(native, *gaussians(10))
    V, K = on(native, *cameras(1, 16, 16))
    assert splat.rasterize(*inputs, V, K, 16, 16)[2]["backend"] == native
    inputs64 = [t.double() for t in inputs]
    assert splat.rasterize(*inputs64, V.double(), K.double(), 16, 16)[2]["backend"] == "torch"
