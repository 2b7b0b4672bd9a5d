"""The image loss of the 3DGS recipe."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..metrics import ssim as ssim_fn, ssim_map

__all__ = ["photometric_loss", "photometric_loss_rows"]


def photometric_loss(pred: Tensor, gt: Tensor, ssim_lambda: float, mask: Optional[Tensor] = None) -> Tensor:
    """(1 - ssim_lambda) * L1 + ssim_lambda * (1 - SSIM) of images [H,W,3] in [0,1]
    (SSIM with zero padding, as 3DGS trains; `splat.metrics.ssim`).

    `mask` [H,W,1] bool (a dataset's mask, nerfstudio's ``mask_path``): pixels where it is
    False are left out: L1 is the mean over kept pixels and SSIM is `splat.metrics.ssim`'s
    masked mean, so a left-out pixel contributes neither error nor gradient."""
    if mask is None:
        l1 = (pred - gt).abs().mean()
    else:
        l1 = ((pred - gt).abs() * mask).sum() / (mask.sum() * pred.shape[-1]).clamp_min(1)
    ssim = ssim_fn(pred, gt, padding="same", mask=mask)
    return (1 - ssim_lambda) * l1 + ssim_lambda * (1 - ssim)


def photometric_loss_rows(pred: Tensor, gt: Tensor, ssim_lambda: float, rows: slice, mask: Optional[Tensor] = None,
                          full_mask_count: Optional[float] = None, full_pixels: Optional[int] = None) -> Tensor:
    """The share of pixel rows `rows` of a crop in `photometric_loss` of the whole image: summed
    over the pieces that own all the image's rows once, these give `photometric_loss` (and its
    gradient) of the whole image (Grendel's distributed loss).

    `pred`, `gt` [h, W, 3] a crop of whole tile rows that reaches at least 5 pixels (the SSIM
    window's half-width) beyond `rows` wherever the image does; `mask` [h, W, 1] its rows of
    the image's mask; `full_mask_count` the mask's count of kept pixels over the whole image;
    `full_pixels` the whole image's pixel count (H * W; used without a mask)."""
    C = pred.shape[-1]
    if mask is None:
        n = float(full_pixels)
        l1 = (pred[rows] - gt[rows]).abs().sum() / (n * C)
        s = ssim_map(pred, gt)[rows]
        ssim_part, frac = s.sum() / n, (s.numel() / n)
    else:
        n = max(float(full_mask_count), 1.0)
        m = mask[rows]
        l1 = ((pred[rows] - gt[rows]).abs() * m).sum() / (n * C)
        w = mask[..., 0].to(pred.dtype)
        s = ssim_map(pred, gt, mask=mask) * w
        ssim_part, frac = s[rows].sum() / n, float(w[rows].sum()) / n
    return (1 - ssim_lambda) * l1 + ssim_lambda * (frac - ssim_part)
