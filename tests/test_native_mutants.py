"""Tests that a mutation pass over the native math (scripts/mutate_native.py) showed missing: each
pins a constant, a comparison or a gradient term that no other test reached. Every backend is
compared with the torch reference and, where it has one, with the closed form."""
from __future__ import annotations

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
