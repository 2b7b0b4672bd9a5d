"""The 3DGS photometric loss fused into native kernels, with a hand-written backward.

    L = (1 - ssim_lambda) * L1 + ssim_lambda * (1 - SSIM)

the training loss of 3D Gaussian Splatting (Kerbl et al., SIGGRAPH 2023), computed the way
fused-ssim does it for CUDA (Mallick et al., "Taming 3DGS", SIGGRAPH Asia 2024;
github.com/rahul-goel/fused-ssim): one pass blurs the five moments (mu_x, mu_y, E[x^2],
E[y^2], E[xy]) with the separable 11-tap Gaussian window, evaluates SSIM and its partial
derivatives per pixel and saves the partials; the backward blurs the partials once more.
About 15 torch ops (five depthwise convolutions and their gradients) become two native
calls each way. The value is `splat.train.losses.photometric_loss(impl="torch")`'s, to
float32 rounding (SSIM as `splat.metrics.ssim(padding="same")`).

The per-pixel math is rasterizer_cuda/include/splat_loss.h, shared by the CPU library
(cpu/loss_cpu.cpp, OpenMP) and the CUDA library (cuda/loss_kernels.cuh). Both are
deterministic: the loss sums are fixed-order reductions in double, so a run repeats bit for
bit (on the CPU for any thread count).
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from . import cpu as _cpu_backend
from . import cuda as _cuda_backend
from ._native import ptr

__all__ = ["fused_photometric_loss", "check_loss_inputs"]


def check_loss_inputs(pred: Tensor, gt: Tensor, ssim_lambda: float, mask: Optional[Tensor]) -> None:
    """Raise a ValueError naming the problem unless the inputs suit the native loss:
    `pred`, `gt` float32 [H, W, C] of one shape with at least one element, on one cpu or
    cuda device; `mask` None or [H, W] / [H, W, 1] (bool or 0/1) on that device; `gt`
    without gradient; `ssim_lambda` a finite number."""
    where = "splat fused_photometric_loss"
    for name, t in (("pred", pred), ("gt", gt)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if pred.ndim != 3:
        raise ValueError(f"{where}: pred must be an image [H, W, C], got shape {list(pred.shape)}")
    if gt.shape != pred.shape:
        raise ValueError(f"{where}: gt of shape {list(gt.shape)} does not match pred of shape {list(pred.shape)}")
    if pred.numel() == 0:
        raise ValueError(f"{where}: images of shape {list(pred.shape)} have no pixels")
    for name, t in (("pred", pred), ("gt", gt)):
        if t.dtype != torch.float32:
            raise ValueError(f"{where}: the native loss takes float32 images, {name} is {t.dtype} "
                             "(use photometric_loss(impl='torch') for other dtypes)")
    if pred.device != gt.device:
        raise ValueError(f"{where}: pred is on {pred.device} and gt on {gt.device}; they must share a device")
    if pred.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{where}: no native loss for device {pred.device} (cpu and cuda only)")
    if gt.requires_grad:
        raise ValueError(f"{where}: gt requires grad, but the native loss differentiates pred only "
                         "(use photometric_loss(impl='torch'))")
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise ValueError(f"{where}: mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if tuple(mask.shape) not in (tuple(pred.shape[:2]), (*pred.shape[:2], 1)):
            raise ValueError(f"{where}: mask of shape {list(mask.shape)} does not match images of shape "
                             f"{list(pred.shape)} (expected [H, W] or [H, W, 1])")
        if mask.device != pred.device:
            raise ValueError(f"{where}: mask is on {mask.device} and the images on {pred.device}")
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{where}: a {mask.dtype} mask must hold only 0 and 1 (or be a bool mask)")
    try:
        lam = float(ssim_lambda)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: ssim_lambda must be a number, got {ssim_lambda!r}") from None
    if not math.isfinite(lam):
        raise ValueError(f"{where}: ssim_lambda must be finite, got {lam}")


def _make_ops(name: str, call: Callable, scratch: Optional[Callable] = None) -> SimpleNamespace:
    """The custom op `splat::{name}_fused_photometric_loss` over one native library.

    `call(device, fn, *args)` runs the library's entry point `fn` (the name without its
    prefix) and raises on failure; `scratch(H, W, C)`: doubles of reduction scratch the
    forward takes (the CUDA library), or None."""

    @torch.library.custom_op(f"splat::{name}_fused_photometric_loss", mutates_args=())
    def loss_op(pred: Tensor, gt: Tensor, mask: Optional[Tensor], ssim_lambda: float,
                save_for_backward: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        H, W, C = pred.shape
        dev = pred.device
        terms = torch.empty(4, dtype=torch.float64, device=dev)
        # three tensors rather than one [3, H, W, C]: on the CPU, glibc keeps freed blocks under
        # 32 MB in its heap for reuse, so a training loop does not page-fault fresh maps every step
        partials = [torch.empty((H, W, C) if save_for_backward else (0,), dtype=torch.float32, device=dev)
                    for _ in range(3)]
        extra = ()
        if scratch is not None:
            block_sums = torch.empty(max(int(scratch(H, W, C)), 1), dtype=torch.float64, device=dev)
            extra = (ptr(block_sums),)
        maps = [ptr(t) if save_for_backward else None for t in partials]
        call(dev, "fused_loss_fwd", H, W, C, ptr(pred), ptr(gt), ptr(mask), ssim_lambda, ptr(terms), *maps, *extra)
        return (terms[2].to(torch.float32), terms, *partials)

    @loss_op.register_fake
    def _(pred, gt, mask, ssim_lambda, save_for_backward):
        H, W, C = pred.shape
        return (pred.new_empty(()), pred.new_empty(4, dtype=torch.float64),
                *[pred.new_empty((H, W, C) if save_for_backward else (0,)) for _ in range(3)])

    def setup(ctx, inputs, output):
        pred, gt, mask, ssim_lambda, _ = inputs
        _, terms, *partials = output
        ctx.ssim_lambda = ssim_lambda
        ctx.save_for_backward(pred, gt, mask, terms, *partials)
        ctx.mark_non_differentiable(terms, *partials)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the partial maps

    def backward(ctx, g_loss, *_):
        pred, gt, mask, terms, *partials = ctx.saved_tensors
        if partials[0].numel() == 0:
            raise RuntimeError("splat fused_photometric_loss: backward through a forward that saved no partial "
                               "maps (save_for_backward=False)")
        H, W, C = pred.shape
        g = torch.ones((), dtype=torch.float32, device=pred.device) if g_loss is None else \
            g_loss.to(torch.float32).contiguous()  # a local: it must outlive the call
        grad_pred = torch.empty_like(pred)
        call(pred.device, "fused_loss_bwd", H, W, C, ptr(pred), ptr(gt), ptr(mask), ctx.ssim_lambda, ptr(terms),
             *[ptr(t) for t in partials], ptr(g), ptr(grad_pred))
        return grad_pred, None, None, None, None

    torch.library.register_autograd(f"splat::{name}_fused_photometric_loss", backward, setup_context=setup)

    def run(pred: Tensor, gt: Tensor, ssim_lambda: float, mask: Optional[Tensor] = None) -> Tensor:
        """The loss of inputs that passed `check_loss_inputs`."""
        m = None if mask is None else mask.reshape(pred.shape[:2]).bool().to(torch.uint8).contiguous()
        need_grad = torch.is_grad_enabled() and pred.requires_grad
        out, *_ = loss_op(pred.contiguous(), gt.detach().contiguous(), m, float(ssim_lambda), need_grad)
        return out

    def loss(pred: Tensor, gt: Tensor, ssim_lambda: float, mask: Optional[Tensor] = None) -> Tensor:
        check_loss_inputs(pred, gt, ssim_lambda, mask)
        return run(pred, gt, ssim_lambda, mask)

    return SimpleNamespace(loss=loss, run=run, op=loss_op)


def _cuda_scratch(H: int, W: int, C: int) -> int:
    return _cuda_backend.load().splatcu_fused_loss_scratch(H, W, C)


# one op per native library; tests reach "cuda" with CPU tensors through the host emulation
_OPS = {
    "cpu": _make_ops("cpu", _cpu_backend._call),
    "cuda": _make_ops("cuda", _cuda_backend._call, _cuda_scratch),
}


def fused_photometric_loss(pred: Tensor, gt: Tensor, ssim_lambda: float, mask: Optional[Tensor] = None) -> Tensor:
    """(1 - ssim_lambda) * L1 + ssim_lambda * (1 - SSIM) of images [H, W, C] -> a float32 scalar.

    The 3DGS training loss (Kerbl et al. 2023) as fused native kernels with a hand-written
    backward (the approach of fused-ssim, Mallick et al., Taming 3DGS 2024), on the CPU
    library for CPU tensors and the CUDA library for CUDA tensors; differentiable w.r.t.
    `pred` only. Equal, to float32 rounding, to
    `splat.train.losses.photometric_loss(pred, gt, ssim_lambda, mask, impl="torch")`:

    - L1: mean |pred - gt| over pixels x channels; SSIM: `splat.metrics.ssim(pred, gt,
      padding="same")`, the mean per-pixel SSIM (11x11 Gaussian window, sigma 1.5 pixels,
      zero padding, C1 = 0.01^2, C2 = 0.03^2, i.e. images in [0, 1]).
    - `mask` [H, W] or [H, W, 1], bool or 0/1: pixels where it is off are zeroed in both
      images before the blur and left out of both means (L1 and SSIM are over kept pixels x
      channels); they get exactly zero gradient. An all-off mask gives
      L1 = 0 and SSIM = 0, so the loss is `ssim_lambda`.

    `pred`, `gt` float32 [H, W, C] of the same shape on one cpu or cuda device; `gt` must
    not require grad. Deterministic: repeated calls give bit-identical values and gradients.
    Raises ValueError for other inputs, NativeBuildError when the native library cannot be
    built."""
    check_loss_inputs(pred, gt, ssim_lambda, mask)
    return _OPS[pred.device.type].run(pred, gt, ssim_lambda, mask)
