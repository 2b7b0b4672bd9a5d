"""The image loss of the 3DGS recipe."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..metrics import ssim as ssim_fn

__all__ = ["photometric_loss"]


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
