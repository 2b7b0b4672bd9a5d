"""The image loss of the 3DGS recipe: (1 - lambda) L1 + lambda D-SSIM (Kerbl et al., 3D Gaussian
Splatting, SIGGRAPH 2023), in torch or fused into the native kernels
(`splat.backends.fused_loss`, after fused-ssim: Mallick et al., Taming 3DGS, 2024)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..metrics import ssim as ssim_fn, ssim_map

__all__ = ["photometric_loss", "photometric_loss_rows", "IMPLS"]

IMPLS = ("auto", "torch", "native")


def _native_fits(pred: Tensor, gt: Tensor, mask: Optional[Tensor]) -> bool:
    """Whether impl="auto" takes the native loss for these inputs."""
    return (isinstance(pred, Tensor) and isinstance(gt, Tensor) and pred.ndim == 3 and gt.shape == pred.shape
            and pred.numel() > 0 and pred.dtype == torch.float32 and gt.dtype == torch.float32
            and pred.device == gt.device and pred.device.type in ("cpu", "cuda") and not gt.requires_grad
            and (mask is None or (mask.device == pred.device and mask.dtype == torch.bool
                                  and tuple(mask.shape) == (*pred.shape[:2], 1)))
            and _native_backend_loads(pred.device))


def _native_backend_loads(device: torch.device) -> bool:
    """Whether the device's native library builds and loads: what rasterize's backend="auto" picks
    (`splat.backends.get`, which warns once where it falls back to the torch reference)."""
    from ..backends import get

    return get("auto", device).NAME != "torch"


def photometric_loss(pred: Tensor, gt: Tensor, ssim_lambda: float, mask: Optional[Tensor] = None,
                     impl: str = "auto") -> Tensor:
    """(1 - ssim_lambda) * L1 + ssim_lambda * (1 - SSIM) of images [H,W,3] in [0,1] -> a scalar
    (SSIM with zero padding, as 3DGS trains; `splat.metrics.ssim`).

    `mask` [H,W,1] bool (a dataset's mask, nerfstudio's ``mask_path``): pixels where it is
    False are left out: L1 is the mean over kept pixels and SSIM is `splat.metrics.ssim`'s
    masked mean, so a left-out pixel contributes neither error nor gradient.

    `impl`: "torch" the torch ops below (any dtype and device, gradients for both images);
    "native" `splat.backends.fused_loss.fused_photometric_loss`, the same loss as one fused
    native call each way on the CPU or CUDA library (float32 [H,W,C], gradient for `pred`
    only; ValueError for other inputs); "auto" native for float32 [H,W,C] images on cpu or
    cuda whose native library loads, with `gt` not requiring grad and `mask` None or bool
    [H,W,1], else torch. The two agree to float32 rounding."""
    if impl not in IMPLS:
        raise ValueError(f"photometric_loss: impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    if impl == "native" or (impl == "auto" and _native_fits(pred, gt, mask)):
        from ..backends.fused_loss import fused_photometric_loss

        return fused_photometric_loss(pred, gt, ssim_lambda, mask)
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
