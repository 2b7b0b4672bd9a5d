"""Compositing of 2D image Gaussians (GaussianImage, Image-GS): a torch
reference and the native CPU kernels (rasterizer_cuda/cpu/image2d_cpu.cpp).

Inputs are already in output pixels: means2d [N,2] (pixel centres at x + 0.5),
conics [N,3] (upper triangle of the inverse covariance) and colours [N,D]. The
weight of Gaussian i at a pixel is w = exp(-sigma) where it reaches 1/255 and 0
elsewhere (the 3D rasterizer's rule, so its tile binning is reused). Two modes:

- topk = 0, accumulated sum (GaussianImage): C(p) = sum_i w_i c_i, order-free;
- topk = K, normalised top-K blending (Image-GS): the K largest weights of each
  pixel, C(p) = sum w_i c_i / (sum w_i + 1e-6).

`rasterize_image2d` returns the image [H,W,D] and the per-pixel sum of the
weights used [H,W]; it is differentiable in means2d, conics and colours.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ._native import check_isect_count, check_same_device, ptr

ALPHA_THRESHOLD = 1.0 / 255.0
TOPK_EPS = 1e-6
MAX_EXTEND = 3.33  # bounding-box half size in standard deviations (w >= 1/255 lies inside 3.329)
BACKENDS = ("auto", "torch", "cpu")


def bounding_radii(cov: Tensor) -> Tensor:
    """Half sizes in whole pixels [N,2] (int32) of the boxes holding each Gaussian's support."""
    var = torch.stack([cov[:, 0], cov[:, 2]], -1).clamp_min(0)
    return torch.ceil(MAX_EXTEND * var.sqrt()).clamp_max(2 ** 30).to(torch.int32)


# ---------------------------------------------------------------- torch reference
def _weights(means2d: Tensor, conics: Tensor, px: Tensor, py: Tensor) -> Tensor:
    dx = means2d[None, :, 0] - px[:, None]
    dy = means2d[None, :, 1] - py[:, None]
    a, b, c = conics[None, :, 0], conics[None, :, 1], conics[None, :, 2]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    w = torch.exp(-sigma)
    keep = (sigma >= 0) & (w >= ALPHA_THRESHOLD)
    return torch.where(keep, w, torch.zeros_like(w))


def rasterize_image2d_torch(means2d: Tensor, conics: Tensor, colors: Tensor, width: int, height: int,
                            topk: int = 0, pixel_chunk: int = 4096) -> Tuple[Tensor, Tensor]:
    """The dense reference: every Gaussian at every pixel (O(N*H*W)), in chunks of pixels."""
    D = colors.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=means2d.dtype, device=means2d.device),
                            torch.arange(width, dtype=means2d.dtype, device=means2d.device), indexing="ij")
    px, py = xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5
    outs, sums = [], []
    for s in range(0, px.numel(), pixel_chunk):
        w = _weights(means2d, conics, px[s:s + pixel_chunk], py[s:s + pixel_chunk])  # [P,N]
        if topk:
            k = min(topk, w.shape[1])
            vals, idx = torch.topk(w, k, dim=1) if k else (w[:, :0], w[:, :0].long())
            W = vals.sum(1)
            out = (vals[..., None] * colors[idx]).sum(1) / (W[:, None] + TOPK_EPS)
        else:
            W = w.sum(1)
            out = w @ colors
        outs.append(out)
        sums.append(W)
    if not outs:
        return colors.new_zeros(height, width, D), colors.new_zeros(height, width)
    return torch.cat(outs).reshape(height, width, D), torch.cat(sums).reshape(height, width)


# ---------------------------------------------------------------- native (CPU)
def _lib():
    from . import cpu

    return cpu.load()


@torch.library.custom_op("splat::image2d_cpu", mutates_args=())
def _image2d_cpu(means2d: Tensor, conics: Tensor, colors: Tensor, radii: Tensor, tile_offsets: Tensor,
                 flatten_ids: Tensor, width: int, height: int, tile_size: int, topk: int
                 ) -> Tuple[Tensor, Tensor, Tensor]:
    N, D = colors.shape
    tw, th = -(-width // tile_size), -(-height // tile_size)
    out = torch.empty(height, width, D, dtype=torch.float32)
    wsum = torch.empty(height, width, dtype=torch.float32)
    ids = torch.empty(height, width, topk, dtype=torch.int32)
    _lib().splat_img_fwd(N, D, width, height, tile_size, tw, th, topk, ptr(means2d), ptr(conics), ptr(colors),
                         ptr(radii), ptr(tile_offsets), ptr(flatten_ids), ptr(out), ptr(wsum), ptr(ids))
    return out, wsum, ids


@_image2d_cpu.register_fake
def _(means2d, conics, colors, radii, tile_offsets, flatten_ids, width, height, tile_size, topk):
    D = colors.shape[1]
    return (colors.new_empty(height, width, D), colors.new_empty(height, width),
            colors.new_empty(height, width, topk, dtype=torch.int32))


def _setup(ctx, inputs, output):
    means2d, conics, colors, radii, tile_offsets, flatten_ids, width, height, tile_size, topk = inputs
    ctx.save_for_backward(means2d, conics, colors, radii, tile_offsets, flatten_ids, output[2])
    ctx.cfg = (width, height, tile_size, topk)


def _backward(ctx, v_out, v_wsum, v_ids):
    means2d, conics, colors, radii, tile_offsets, flatten_ids, ids = ctx.saved_tensors
    width, height, tile_size, topk = ctx.cfg
    N, D = colors.shape
    tw, th = -(-width // tile_size), -(-height // tile_size)
    v_out = torch.zeros(height, width, D) if v_out is None else v_out.contiguous()
    v_means = torch.empty(N, 2)
    v_conics = torch.empty(N, 3)
    v_colors = torch.empty(N, D)
    if v_wsum is not None and bool((v_wsum != 0).any()):
        raise NotImplementedError("splat.image2d: the weight sum output is not differentiable")
    _lib().splat_img_bwd(N, D, width, height, tile_size, tw, th, topk, ptr(means2d), ptr(conics), ptr(colors),
                         ptr(radii), ptr(tile_offsets), ptr(flatten_ids), ptr(ids), ptr(v_out), ptr(v_means),
                         ptr(v_conics), ptr(v_colors))
    return v_means, v_conics, v_colors, None, None, None, None, None, None, None


torch.library.register_autograd("splat::image2d_cpu", _backward, setup_context=_setup)


@torch.no_grad()
def bin_tiles(means2d: Tensor, radii: Tensor, width: int, height: int, tile_size: int) -> Tuple[Tensor, Tensor]:
    """Tile lists of the native kernels: offsets [tiles + 1] (int64) and Gaussian ids [M] (int32),
    each tile's Gaussians in index order (the 3D binning with equal depths)."""
    from . import cpu

    N = means2d.shape[0]
    tw, th = -(-width // tile_size), -(-height // tile_size)
    depths = torch.zeros(1, N, dtype=torch.float32)
    _, isect_ids, flatten_ids, offsets = cpu.isect_tiles(means2d[None].detach(), radii[None], depths, tile_size,
                                                         tw, th)
    M = flatten_ids.numel()
    check_isect_count(M)
    tile_offsets = torch.cat([offsets.reshape(-1).long(), torch.tensor([M], dtype=torch.int64)])
    return tile_offsets, flatten_ids


def rasterize_image2d(means2d: Tensor, conics: Tensor, colors: Tensor, width: int, height: int, *,
                      radii: Tensor, topk: int = 0, backend: str = "auto", tile_size: int = 16
                      ) -> Tuple[Tensor, Tensor]:
    """Composite N 2D Gaussians into an image [H,W,D]; returns (image, weight sum [H,W])."""
    if backend not in BACKENDS:
        raise ValueError(f"splat.image2d: backend must be one of {BACKENDS}, got {backend!r}")
    if width < 1 or height < 1:
        raise ValueError(f"splat.image2d: image size must be positive, got {width}x{height}")
    if topk < 0:
        raise ValueError(f"splat.image2d: topk must be >= 0 (0 = accumulated sum), got {topk}")
    if not 1 <= tile_size <= 64:
        raise ValueError(f"splat.image2d: tile_size must be in [1, 64], got {tile_size}")
    if means2d.ndim != 2 or means2d.shape[1] != 2 or conics.shape != (means2d.shape[0], 3) \
            or colors.ndim != 2 or colors.shape[0] != means2d.shape[0]:
        raise ValueError("splat.image2d: expected means2d [N,2], conics [N,3], colors [N,D], got "
                         f"{tuple(means2d.shape)}, {tuple(conics.shape)}, {tuple(colors.shape)}")
    check_same_device(means2d=means2d, conics=conics, colors=colors)
    if backend == "auto":
        backend = "cpu" if means2d.device.type == "cpu" and colors.dtype == torch.float32 else "torch"
    if backend == "torch":
        return rasterize_image2d_torch(means2d, conics, colors, width, height, topk)
    if means2d.device.type != "cpu":
        raise ValueError(f"splat.image2d: backend='cpu' needs CPU tensors, got {means2d.device}")
    for name, t in (("means2d", means2d), ("conics", conics), ("colors", colors)):
        if t.dtype != torch.float32:
            raise ValueError(f"splat.image2d: backend='cpu' supports float32 only, {name} is {t.dtype}")
    means2d, conics, colors = means2d.contiguous(), conics.contiguous(), colors.contiguous()
    if radii.shape != (means2d.shape[0], 2) or radii.dtype.is_floating_point or radii.device != means2d.device:
        raise ValueError(f"splat.image2d: radii must be integer [N,2] = [{means2d.shape[0]},2] on {means2d.device}, "
                         f"got {radii.dtype} {tuple(radii.shape)} on {radii.device}")
    radii = radii.to(torch.int32).contiguous()
    tile_offsets, flatten_ids = bin_tiles(means2d, radii, width, height, tile_size)
    out, wsum, _ = _image2d_cpu(means2d, conics, colors, radii, tile_offsets, flatten_ids, width, height,
                                tile_size, topk)
    return out, wsum
