"""The image loss of the 3DGS recipe."""
from __future__ import annotations

from torch import Tensor

from ..metrics import ssim as ssim_fn

__all__ = ["photometric_loss"]


def photometric_loss(pred: Tensor, gt: Tensor, ssim_lambda: float) -> Tensor:
    """(1 - ssim_lambda) * L1 + ssim_lambda * (1 - SSIM) of images [H,W,3] in [0,1]
    (SSIM with zero padding, as 3DGS trains; `splat.metrics.ssim`)."""
    l1 = (pred - gt).abs().mean()
    ssim = ssim_fn(pred, gt, padding="same")
    return (1 - ssim_lambda) * l1 + ssim_lambda * (1 - ssim)
