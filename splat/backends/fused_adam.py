"""The fused Adam step of the native backends, registered as the torch op
``torch.ops.splat.adam_rows`` (so `splat.optim`, which imports no sibling package,
finds it by name once this module is imported; the training loop imports it).

One pass over a parameter and its two moments per step instead of torch.optim.Adam's
half a dozen, and optionally over a subset of rows only: sparse Adam over the
Gaussians the step's views see (Mallick et al., Taming 3DGS, 2024; gsplat's
SelectiveAdam): the other rows keep their parameters and moments. CPU tensors run
rasterizer_cuda/cpu/optim_cpu.cpp, CUDA tensors rasterizer_cuda/cuda/optim_kernels.cuh,
both from the per-element math of rasterizer_cuda/include/splat_optim.h.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._native import ptr

__all__ = ["adam_rows", "check_adam_args"]


def check_adam_args(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Optional[Tensor]) -> None:
    """ValueError unless the four tensors are float32, contiguous, of one shape and device, and
    `rows` (if given) is a bool or uint8 vector of the parameter's row count on that device."""
    for name, t in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if t.shape != param.shape:
            raise ValueError(f"splat adam_rows: {name} has shape {list(t.shape)}, the parameter {list(param.shape)}")
    for name, t in (("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if t.dtype != torch.float32:
            raise ValueError(f"splat adam_rows: {name} must be float32, got {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"splat adam_rows: {name} must be contiguous")
        if t.device != param.device:
            raise ValueError(f"splat adam_rows: {name} is on {t.device}, the parameter on {param.device}")
    if rows is not None:
        if rows.dim() != 1 or param.dim() == 0 or rows.shape[0] != param.shape[0]:
            raise ValueError(f"splat adam_rows: rows must be a vector of the parameter's {param.shape[0] if param.dim() else 0} "
                             f"rows, got shape {list(rows.shape)}")
        if rows.dtype not in (torch.bool, torch.uint8) or rows.device != param.device:
            raise ValueError(f"splat adam_rows: rows must be bool or uint8 on {param.device}, got {rows.dtype} on "
                             f"{rows.device}")


def _shape(param: Tensor):
    N = int(param.shape[0]) if param.dim() else 1
    return N, (param.numel() // N if N else 0)


@torch.library.custom_op("splat::adam_rows", mutates_args=("param", "exp_avg", "exp_avg_sq"), device_types="cpu")
def adam_rows(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Optional[Tensor], beta1: float,
              beta2: float, eps: float, step_size: float, bc2_sqrt: float) -> None:
    """One Adam step in place (torch.optim.Adam's formula, no weight decay):
    ``exp_avg`` <- lerp(exp_avg, grad, 1 - beta1), ``exp_avg_sq`` <- beta2 exp_avg_sq +
    (1 - beta2) grad^2, ``param`` -= step_size exp_avg / (sqrt(exp_avg_sq) / bc2_sqrt + eps),
    with step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t) at step t.

    param, grad, exp_avg, exp_avg_sq: float32, contiguous, one shape [N, ...] and device.
    rows: [N] bool/uint8 or None: only the rows where it is set are updated (sparse Adam:
    Taming 3DGS, gsplat's SelectiveAdam); None updates every row.
    Raises ValueError for mismatched inputs."""
    from . import cpu

    _run(cpu._call, param, grad, exp_avg, exp_avg_sq, rows, beta1, beta2, eps, step_size, bc2_sqrt)


@adam_rows.register_kernel("cuda")
def _adam_rows_cuda(param, grad, exp_avg, exp_avg_sq, rows, beta1, beta2, eps, step_size, bc2_sqrt):
    from . import cuda

    _run(cuda._call, param, grad, exp_avg, exp_avg_sq, rows, beta1, beta2, eps, step_size, bc2_sqrt)


def _run(call, param, grad, exp_avg, exp_avg_sq, rows, beta1, beta2, eps, step_size, bc2_sqrt) -> None:
    """The checks and the library's "adam_rows" entry point through `call(device, fn, *args)` (a
    backend's `_call`)."""
    check_adam_args(param, grad, exp_avg, exp_avg_sq, rows)
    N, D = _shape(param)
    r = None if rows is None else rows.to(torch.uint8).contiguous()
    if N * D:
        call(param.device, "adam_rows", N, D, ptr(param), ptr(grad), ptr(exp_avg), ptr(exp_avg_sq), ptr(r), beta1,
             beta2, eps, step_size, bc2_sqrt)
