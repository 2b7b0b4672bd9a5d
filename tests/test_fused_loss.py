"""The fused L1 + D-SSIM loss (splat.backends.fused_loss; rasterizer_cuda/include/splat_loss.h,
cpu/loss_cpu.cpp, cuda/loss_kernels.cuh) against the torch loss it replaces
(splat.train.losses.photometric_loss(impl="torch")) in float32 and float64: values and
gradients over image sizes below, at and above the 11-pixel window and the 16-pixel CUDA tile,
one and three channels, lambda 0 / 0.2 / 1, with and without masks; finite differences;
determinism (repeats and thread counts); the CUDA kernels through the host emulation; input
errors; photometric_loss's impl switch."""
import contextlib
import subprocess

import pytest
import torch

from rasterizer_cuda import SOURCE_DIR
from scene_utils import DEVICES
from splat.backends import cuda, fused_loss
from splat.backends.fused_loss import fused_photometric_loss
from splat.train.losses import photometric_loss

SIZES = [(5, 7, 3), (11, 11, 1), (16, 16, 3), (17, 33, 1), (40, 29, 3)]
LAMBDAS = [0.0, 0.2, 1.0]


def _images(H, W, C, seed=0, mask="none"):
    """A ground truth in [0, 1], a prediction near it (never tied with it, so the L1 term is
    smooth), and a mask [H, W, 1] bool: "none", "random" (about 70% kept) or "empty"."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(H, W, C, generator=g)
    noise = 0.02 + 0.1 * torch.rand(H, W, C, generator=g)
    sign = torch.where(torch.rand(H, W, C, generator=g) < 0.5, -1.0, 1.0)
    pred = gt + sign * noise
    m = {"none": None, "random": torch.rand(H, W, 1, generator=g) > 0.3,
         "empty": torch.zeros(H, W, 1, dtype=torch.bool)}[mask]
    return pred, gt, m


def _loss_fn(native):
    """The fused loss of a backend: the public function, or for "cuda-emulated" the CUDA
    library's op on CPU tensors (the conftest fixture has swapped in the emulated library)."""
    return fused_loss._OPS["cuda"].loss if native == "cuda-emulated" else fused_photometric_loss


def _value_and_grad(fn, pred, gt, lam, mask):
    p = pred.clone().requires_grad_()
    loss = fn(p, gt, lam, mask)
    loss.backward()
    return loss.detach(), p.grad


def _torch_loss(p, gt, lam, mask):
    return photometric_loss(p, gt, lam, mask, impl="torch")


def _assert_grad_close(got, want, rel, what):
    scale = want.abs().max().item()
    err = (got.double() - want.double()).abs().max().item()
    assert err <= rel * scale + 1e-12, f"{what}: max gradient error {err:.3g} vs scale {scale:.3g}"


@pytest.fixture(scope="module", autouse=True)
def _built(cpu_backend):
    return cpu_backend


@contextlib.contextmanager
def _native_threads(n):
    """The CPU library's OpenMP thread count set to n, restored afterwards."""
    from splat.backends import cpu

    lib = cpu.load()
    saved = lib.splat_num_threads()
    lib.splat_set_num_threads(n)
    try:
        yield
    finally:
        lib.splat_set_num_threads(saved)


# ------------------------------------------------------------------ against the torch loss
@pytest.mark.parametrize("mask", ["none", "random", "empty"])
@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("H,W,C", SIZES)
def test_cpu_matches_the_torch_loss(H, W, C, lam, mask):
    """Value and gradient of the fused CPU loss against the torch loss in float32 and float64."""
    pred, gt, m = _images(H, W, C, seed=H * W + C, mask=mask)
    v, g = _value_and_grad(fused_photometric_loss, pred, gt, lam, m)
    v32, g32 = _value_and_grad(_torch_loss, pred, gt, lam, m)
    v64, g64 = _value_and_grad(_torch_loss, pred.double(), gt.double(), lam, m)
    assert v.dtype == torch.float32 and v.shape == ()
    assert abs(v.item() - v64.item()) <= 2e-6 * max(1.0, abs(v64.item()))
    assert abs(v.item() - v32.item()) <= 4e-6 * max(1.0, abs(v64.item()))
    _assert_grad_close(g, g64, 2e-5, "fused vs float64 torch")
    _assert_grad_close(g, g32, 5e-5, "fused vs float32 torch")
    if m is not None:
        assert (g[~m[..., 0]] == 0).all()  # left-out pixels: exactly no gradient
    if mask == "empty":  # nothing kept: L1 = SSIM = 0 (the torch loss's clamped means)
        assert v.item() == pytest.approx(lam, abs=1e-7) and (g == 0).all()


def test_the_loss_and_its_gradient_see_every_term():
    """The agreement above is not vacuous: the fused loss separates images the torch loss
    separates, and its gradient changes with each part of the loss."""
    pred, gt, _ = _images(20, 24, 3, seed=3)
    base = fused_photometric_loss(pred, gt, 0.2)
    shifted = pred.clone()
    shifted[10, 12, 1] += 0.3
    assert fused_photometric_loss(shifted, gt, 0.2) > base
    # SSIM sees structure the L1 term does not: flipping the residual's sign keeps L1
    flipped = 2 * gt - pred
    l1_a = fused_photometric_loss(pred, gt, 0.0).item()
    l1_b = fused_photometric_loss(flipped, gt, 0.0).item()
    assert l1_a == pytest.approx(l1_b, rel=1e-5)
    s_a = fused_photometric_loss(pred, gt, 1.0).item()
    s_b = fused_photometric_loss(flipped, gt, 1.0).item()
    assert s_a != pytest.approx(s_b, rel=1e-3)
    assert s_b == pytest.approx(_torch_loss(flipped, gt, 1.0, None).item(), abs=2e-6)
    # each lambda's gradient is its mixture of the two terms' gradients, which differ
    _, g0 = _value_and_grad(fused_photometric_loss, pred, gt, 0.0, None)
    _, g1 = _value_and_grad(fused_photometric_loss, pred, gt, 1.0, None)
    _, gm = _value_and_grad(fused_photometric_loss, pred, gt, 0.2, None)
    _assert_grad_close(gm, 0.8 * g0 + 0.2 * g1, 1e-5, "mixture")
    assert torch.nn.functional.cosine_similarity(g0.flatten(), g1.flatten(), dim=0) < 0.9


def test_gradient_matches_finite_differences():
    """Central differences of the fused float32 loss itself on a tiny image, element by element."""
    pred, gt, m = _images(4, 6, 2, seed=7, mask="random")
    for mask in (None, m):
        _, g = _value_and_grad(fused_photometric_loss, pred, gt, 0.2, mask)
        eps = 1e-3  # below the 0.02 gap between pred and gt: the L1 term stays smooth
        fd = torch.empty_like(pred)
        for i in range(pred.numel()):
            d = torch.zeros(pred.numel())
            d[i] = eps
            d = d.reshape(pred.shape)
            up = fused_photometric_loss(pred + d, gt, 0.2, mask).double()
            down = fused_photometric_loss(pred - d, gt, 0.2, mask).double()
            fd.view(-1)[i] = float((up - down) / (2 * eps))
        _assert_grad_close(g, fd, 2e-3, "finite differences")
        assert g.abs().max() > 1e-3


def test_noise_in_left_out_pixels_changes_nothing():
    pred, gt, m = _images(23, 19, 3, seed=5, mask="random")
    v, g = _value_and_grad(fused_photometric_loss, pred, gt, 0.2, m)
    noise = torch.rand(23, 19, 3)
    for a, b in ((torch.where(m, pred, noise), gt), (pred, torch.where(m, gt, noise))):
        va, ga = _value_and_grad(fused_photometric_loss, a, b, 0.2, m)
        assert torch.equal(va, v) and torch.equal(ga, g)
    # an all-kept mask is no mask, and [H, W] masks are [H, W, 1] masks
    ones = torch.ones(23, 19, 1, dtype=torch.bool)
    assert torch.equal(fused_photometric_loss(pred, gt, 0.2, ones), fused_photometric_loss(pred, gt, 0.2))
    assert torch.equal(fused_photometric_loss(pred, gt, 0.2, m[..., 0]), v)
    assert torch.equal(fused_photometric_loss(pred, gt, 0.2, m.to(torch.uint8)), v)


def test_upstream_gradient_scales_and_non_contiguous_inputs():
    pred, gt, _ = _images(18, 22, 3, seed=9)
    p = pred.clone().requires_grad_()
    (3.5 * fused_photometric_loss(p, gt, 0.2)).backward()
    _, g = _value_and_grad(fused_photometric_loss, pred, gt, 0.2, None)
    _assert_grad_close(p.grad, 3.5 * g, 1e-6, "scaled")
    # a transposed view (not contiguous) is the same image as its contiguous copy
    pt, gtt = pred.transpose(0, 1), gt.transpose(0, 1)
    assert not pt.is_contiguous()
    assert torch.equal(fused_photometric_loss(pt, gtt, 0.2), fused_photometric_loss(pt.contiguous(),
                                                                                      gtt.contiguous(), 0.2))


# ------------------------------------------------------------------ determinism
def test_repeats_and_thread_counts_give_identical_bits():
    """Resume needs bit-for-bit repeats: two calls, 1, 2 and 3 native threads, and a forward
    with or without saved partial maps give the same bits (the image is above the size the
    library runs on one thread)."""
    pred, gt, m = _images(131, 97, 3, seed=11, mask="random")
    results = []
    for n in (1, 2, 3, 2):
        with _native_threads(n):
            for mask in (None, m):
                results.append((n, mask is None, *_value_and_grad(fused_photometric_loss, pred, gt, 0.2, mask)))
    ref = {True: results[0], False: results[1]}
    for n, unmasked, v, g in results:
        assert torch.equal(v, ref[unmasked][2]), f"{n} threads: loss differs"
        assert torch.equal(g, ref[unmasked][3]), f"{n} threads: gradient differs"
    with torch.no_grad():
        assert torch.equal(fused_photometric_loss(pred, gt, 0.2, m), ref[False][2])


# ------------------------------------------------------------------ the native backends
@pytest.mark.parametrize("H,W,C", [(5, 7, 3), (16, 16, 1), (33, 18, 3), (40, 29, 2)])
@pytest.mark.parametrize("mask", ["none", "random", "empty"])
def test_native_backends_match_the_cpu_library(native, H, W, C, mask):
    """The CUDA kernels (on a GPU, or run on the CPU by the host emulation: 16x16 tiles in
    shared memory, per-block sums and a final block) against the CPU library."""
    pred, gt, m = _images(H, W, C, seed=13 + H, mask=mask)
    fn = _loss_fn(native)
    dev = DEVICES[native]
    for lam in LAMBDAS:
        on = [None if t is None else t.to(dev) for t in (pred, gt, m)]
        v, g = _value_and_grad(fn, *on[:2], lam, on[2])
        assert v.device.type == torch.device(dev).type and g.device == v.device
        vc, gc = _value_and_grad(fused_photometric_loss, pred, gt, lam, m)
        assert abs(v.item() - vc.item()) <= 1e-6 * max(1.0, abs(vc.item()))
        _assert_grad_close(g.cpu(), gc, 1e-5, f"{native} vs cpu, lambda {lam}")
        v2, g2 = _value_and_grad(fn, *on[:2], lam, on[2])
        assert torch.equal(v, v2) and torch.equal(g, g2)  # no atomics: repeats are exact
        if m is not None:
            assert (g.cpu()[~m[..., 0]] == 0).all()


def test_emulated_cuda_agrees_with_the_torch_loss(monkeypatch):
    """The CUDA source, run by the host emulation, against the float64 torch loss on an
    image of several tiles with a mask."""
    from conftest import _prepare

    _prepare("cuda-emulated", monkeypatch)
    pred, gt, m = _images(37, 21, 3, seed=17, mask="random")
    v, g = _value_and_grad(_loss_fn("cuda-emulated"), pred, gt, 0.2, m)
    v64, g64 = _value_and_grad(_torch_loss, pred.double(), gt.double(), 0.2, m)
    assert abs(v.item() - v64.item()) <= 2e-6
    _assert_grad_close(g, g64, 2e-5, "emulated cuda vs float64 torch")


# ------------------------------------------------------------------ inputs
def _bad_inputs():
    p = torch.rand(8, 9, 3)
    g = torch.rand(8, 9, 3)
    return [
        ((p[0], g[0], 0.2, None), "must be an image"),
        ((p, g[:, :5], 0.2, None), "does not match pred"),
        ((p.double(), g.double(), 0.2, None), "float32"),
        ((p, g.half(), 0.2, None), "gt is torch.float16"),
        ((torch.rand(0, 9, 3), torch.rand(0, 9, 3), 0.2, None), "no pixels"),
        ((p, g.to("meta"), 0.2, None), "must share a device"),
        ((p.to("meta"), g.to("meta"), 0.2, None), "cpu and cuda only"),
        ((p, g.clone().requires_grad_(), 0.2, None), "gt requires grad"),
        ((p, g, 0.2, torch.ones(8, 8, 1, dtype=torch.bool)), "mask of shape"),
        ((p, g, 0.2, torch.full((8, 9, 1), 0.5)), "only 0 and 1"),
        ((p, g, float("nan"), None), "finite"),
        ((p, g, "a lot", None), "must be a number"),
        ((p.numpy(), g, 0.2, None), "pred must be a torch.Tensor"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_inputs_are_refused_with_a_clear_message(case):
    args, message = _bad_inputs()[case]
    with pytest.raises(ValueError, match=message):
        fused_photometric_loss(*args)


def test_photometric_loss_picks_its_implementation(monkeypatch):
    pred, gt, m = _images(21, 26, 3, seed=19, mask="random")
    calls = []
    real = fused_loss.fused_photometric_loss

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(fused_loss, "fused_photometric_loss", spy)
    for mask in (None, m):
        native = real(pred, gt, 0.2, mask)
        calls.clear()
        assert torch.equal(photometric_loss(pred, gt, 0.2, mask), native)  # auto: float32 on cpu -> native
        assert torch.equal(photometric_loss(pred, gt, 0.2, mask, impl="native"), native)
        assert len(calls) == 2
        ref = photometric_loss(pred, gt, 0.2, mask, impl="torch")
        assert len(calls) == 2 and abs(ref.item() - native.item()) < 1e-5
    # auto takes torch where the native loss does not apply
    calls.clear()
    ref64 = photometric_loss(pred.double(), gt.double(), 0.2, impl="torch")
    assert torch.equal(photometric_loss(pred.double(), gt.double(), 0.2), ref64)
    g = gt.clone().requires_grad_()
    photometric_loss(pred, g, 0.2).backward()  # torch: gt gets its gradient
    assert g.grad is not None and g.grad.abs().max() > 0
    photometric_loss(torch.stack([pred, pred]), torch.stack([gt, gt]), 0.2)  # a batch [B, H, W, C]
    photometric_loss(pred, gt, 0.2, m.float())  # a float mask (weights, for the torch loss)
    assert calls == []
    with pytest.raises(ValueError, match="float32"):
        photometric_loss(pred.double(), gt.double(), 0.2, impl="native")
    with pytest.raises(ValueError, match="impl must be one of"):
        photometric_loss(pred, gt, 0.2, impl="fused")


def test_backward_needs_the_saved_partials():
    """A forward run without grad saves no partial maps (less memory); the op refuses a
    backward through such a forward instead of reading missing buffers."""
    pred, gt, _ = _images(9, 10, 3)
    p = pred.clone().requires_grad_()
    loss, terms, *partials = fused_loss._OPS["cpu"].op(p, gt, None, 0.2, False)
    assert [t.numel() for t in partials] == [0, 0, 0]
    assert terms[2].float() == loss
    assert terms[0].item() == pytest.approx((pred - gt).abs().mean().item(), rel=1e-6)
    with pytest.raises(RuntimeError, match="saved no partial maps"):
        loss.backward()


def test_loss_header_compiles_with_nvcc(tmp_path):
    """splat_loss.h's math in a device function, nvcc with warnings as errors (the CUDA
    library's own build is tests/test_cuda_build.py)."""
    nvcc = cuda.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not installed")
    src = tmp_path / "loss_check.cu"
    src.write_text(r"""
#include "splat_loss.h"
__global__ void use_loss_math(const float* m, float* out) {
    using namespace splat;
    const SsimWindow win = ssim_window();
    SsimGrad g;
    const float s = ssim_pixel_grad(m[0], m[1], m[2], m[3], m[4], g);
    out[threadIdx.x] = s + ssim_pixel(m[0], m[1], m[2], m[3], m[4]) + g.mu_x + g.mu_y + g.exx + g.eyy + g.exy +
                       win.w[threadIdx.x % kSsimWindow] + l1_sign(m[0] - m[1]);
}
""")
    res = subprocess.run([nvcc, "-std=c++17", "-arch=sm_80", "-Werror", "all-warnings", "-I",
                          str(SOURCE_DIR / "include"), "-c", str(src), "-o", str(tmp_path / "loss_check.o")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
