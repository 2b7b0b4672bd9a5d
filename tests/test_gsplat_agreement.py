"""Agreement with gsplat's independent pure-torch functions (gsplat.cuda._torch_impl,
which runs on the CPU): projection, SH and tile binning."""
import math

import pytest
import torch

from splat.backends import torch_ref
from scene_utils import cameras, gaussians

gs = pytest.importorskip("gsplat.cuda._torch_impl")


def _project_both(backend, N=300, C=3, W=64, H=48, seed=0, antialiased=True):
    m, q, s, o, _ = gaussians(N, seed=seed, extent=2.0)
    V, K = cameras(C, W, H, seed=seed, radius=3.0)
    covars, _ = gs._quat_scale_to_covar_preci(q, s, compute_covar=True, compute_preci=False)
    ref = gs._fully_fused_projection(m, covars, V, K, W, H, eps2d=0.3, near_plane=0.01, far_plane=1e10,
                                     calc_compensations=antialiased)
    ours = backend.project(m, q, s, None, V, K, W, H, 0.3, 0.01, 1e10, 0.0, antialiased)
    return ref, ours


@pytest.mark.parametrize("which", ["torch", "cpu"])
def test_projection_matches_gsplat(which, cpu_backend):
    backend = torch_ref if which == "torch" else cpu_backend
    (g_radii, g_m2d, g_depths, g_conics, g_comp), (radii, m2d, depths, conics, comp) = _project_both(backend)
    valid = (g_radii > 0).all(-1)
    assert valid.sum() > 100
    assert torch.equal(valid, (radii > 0).all(-1))
    assert torch.equal(g_radii[valid], radii[valid])
    torch.testing.assert_close(m2d[valid], g_m2d[valid], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(depths[valid], g_depths[valid], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(conics[valid], g_conics[valid], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(comp[valid], g_comp[valid], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree, cpu_backend):
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(2, 500, 3, generator=g) * 3
    coeffs = torch.randn(500, 16, 3, generator=g)
    ref = gs._spherical_harmonics(degree, dirs, coeffs[None].expand(2, -1, -1, -1))
    torch.testing.assert_close(torch_ref.spherical_harmonics(degree, dirs, coeffs[None].expand(2, -1, -1, -1)),
                               ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cpu_backend.spherical_harmonics(degree, dirs, coeffs), ref, rtol=1e-5, atol=1e-5)


def test_sh_gradients_match_gsplat(cpu_backend):
    """The hand-written SH backward against autograd through gsplat's torch SH."""
    g = torch.Generator().manual_seed(7)
    dirs = torch.randn(1, 200, 3, generator=g)
    coeffs = torch.randn(200, 16, 3, generator=g)
    w = torch.randn(1, 200, 3, generator=g)
    d1, c1 = dirs.clone().requires_grad_(True), coeffs.clone().requires_grad_(True)
    (gs._spherical_harmonics(3, d1, c1[None]) * w).sum().backward()
    d2, c2 = dirs.clone().requires_grad_(True), coeffs.clone().requires_grad_(True)
    (cpu_backend.spherical_harmonics(3, d2, c2) * w).sum().backward()
    torch.testing.assert_close(d2.grad, d1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c2.grad, c1.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["torch", "cpu"])
def test_tile_binning_matches_gsplat(which, cpu_backend):
    backend = torch_ref if which == "torch" else cpu_backend
    W, H, ts = 64, 48, 16
    (g_radii, g_m2d, g_depths, _, _), _ = _project_both(torch_ref, N=120, C=2, W=W, H=H, seed=3)
    tw, th = math.ceil(W / ts), math.ceil(H / ts)
    g_tpg, g_ids, g_flat = gs._isect_tiles(g_m2d, g_radii, g_depths, ts, tw, th)
    g_off = gs._isect_offset_encode(g_ids, 2, tw, th)
    tpg, ids, flat, off = backend.isect_tiles(g_m2d, g_radii, g_depths, ts, tw, th)
    assert g_ids.numel() > 100
    assert torch.equal(tpg, g_tpg)
    assert torch.equal(ids, g_ids)
    assert torch.equal(flat, g_flat)
    assert torch.equal(off, g_off.reshape(2, th, tw))
