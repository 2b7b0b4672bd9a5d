"""Adam, one instance per parameter (the 3DGS / gsplat recipe)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .base import Optimizer

__all__ = ["AdamConfig", "AdamOptimizer", "adam_step"]


@dataclasses.dataclass
class AdamConfig:
    """Options of Adam (`--adam.*`)."""

    eps: float = 1e-15
    """Adam's epsilon (3DGS uses 1e-15: the updates of tiny gradients are not damped)."""
    betas: Tuple[float, float] = (0.9, 0.999)
    """Decay rates of the first and second moment estimates."""
    batch_scaling: Literal["sqrt", "linear", "none"] = "sqrt"
    """With --batch-size B > 1: sqrt scales the learning rates by sqrt(B) and raises the betas to the
    B-th power (Grendel, Zhao et al. 2024: for independent per-view gradients a batch step then moves
    about as far as B single steps, and the moments forget at the same rate per view); linear scales
    them by B (betas as sqrt: for short runs, whose early gradients agree across views, see the README);
    none keeps both."""
    sparse: bool = True
    """Update only the Gaussians the step's views see (radii > 0 in one of them), leaving the others'
    parameters and moments as they are: sparse Adam (Mallick et al., Taming 3DGS, 2024; gsplat's
    SelectiveAdam). --adam.no-sparse updates every row each step (torch.optim.Adam's dense step:
    unseen Gaussians keep moving on their momentum)."""
    fused: bool = True
    """One native pass per parameter (`torch.ops.splat.adam_rows`, rasterizer_cuda/cpu/optim_cpu.cpp
    and its CUDA twin) instead of torch.optim.Adam's half a dozen; the same formula. Falls back to
    torch ops where the op is not registered (splat.backends.fused_adam not imported) or a tensor is
    not float32."""


class AdamOptimizer(Optimizer):
    """Adam per parameter, its state kept in one ``torch.optim.Adam`` per parameter (so density
    control can resize each one with its moments, and checkpoints hold torch's format), learning
    rates from the model, one forward and backward per step. The update is `adam_step` (fused,
    sparse over the visible Gaussians by default: `AdamConfig`)."""

    name = "adam"
    Config = AdamConfig
    shardable = True  # ``update`` applies gradients formed elsewhere (the sharded step)

    def __init__(self, params: Mapping[str, torch.nn.Parameter], learning_rates: Mapping[str, float],
                 config: AdamConfig = AdamConfig()):
        missing = [k for k in params if k not in learning_rates]
        if missing:
            raise ValueError(f"adam: no learning rate for {missing}")
        self.config = config
        self.optimizers = {k: torch.optim.Adam([{"params": [p], "lr": learning_rates[k], "name": k}],
                                               eps=config.eps, betas=tuple(config.betas))
                           for k, p in params.items()}
        self.lr_scale = 1.0
        # the per-Gaussian entries (sparse Adam's rows apply to them): a GaussianParams names them;
        # a plain dict is gsplat's splats layout, all per-Gaussian
        self.per_gaussian = frozenset(getattr(params, "per_gaussian", None) or params.keys())

    def attach(self, trainer) -> None:
        B = int(getattr(trainer.cfg, "batch_size", 1))
        if B > 1 and self.config.batch_scaling in ("sqrt", "linear"):
            self.lr_scale = math.sqrt(B) if self.config.batch_scaling == "sqrt" else float(B)
            betas = tuple(b ** B for b in self.config.betas)
            for opt in self.optimizers.values():
                for group in opt.param_groups:
                    group["betas"] = betas

    def set_learning_rates(self, learning_rates: Mapping[str, float]) -> None:
        super().set_learning_rates({k: lr * self.lr_scale for k, lr in learning_rates.items()})

    def step(self, forward: Callable[[], Tuple[Tensor, Any]]) -> Tuple[Tensor, Any]:
        loss, extra = forward()
        loss.backward()
        self.update()
        return loss, extra

    def update(self) -> None:
        """One Adam update from the gradients already in the parameters' ``.grad`` (then cleared):
        the second half of ``step``, for a caller that forms the gradients itself (the sharded
        step of `splat.train.sharded`, which adds up gradients from other processes). With
        ``config.sparse`` and ``self.visible`` set (by the training loop), the per-Gaussian
        parameters are updated on the visible rows only; ``visible`` is cleared."""
        visible, self.visible = self.visible, None
        for name, opt in self.optimizers.items():
            p = opt.param_groups[0]["params"][0]
            if p.grad is not None:
                if p.grad.is_sparse:
                    lazy_adam_step(opt, p)
                else:
                    rows = None
                    if (self.config.sparse and visible is not None and name in self.per_gaussian
                            and p.dim() > 0 and p.shape[0] == visible.shape[0]):
                        rows = visible
                    if rows is None and not self.config.fused:
                        opt.step()
                    else:
                        adam_step(opt, p, rows, fused=self.config.fused)
            opt.zero_grad(set_to_none=True)


def _adam_state(opt: torch.optim.Adam, p: Tensor) -> dict:
    """`opt`'s state of `p` in torch.optim.Adam's layout, created (zeros, step 0) if empty."""
    st = opt.state[p]
    if not st:
        st["step"] = torch.tensor(0.0)
        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return st


@torch.no_grad()
def adam_step(opt: torch.optim.Adam, p: Tensor, rows: Optional[Tensor] = None, fused: bool = True) -> None:
    """One Adam step of `p` from ``p.grad`` in `opt`'s own state (torch.optim.Adam's formula and
    state: ``step``, ``exp_avg``, ``exp_avg_sq``; no weight decay or amsgrad, which splat does not
    use). `rows` [N] bool: only those rows of `p` (and of its moments) change, the others keep
    their parameters and moments (sparse Adam: Mallick et al., Taming 3DGS, 2024; gsplat's
    SelectiveAdam); the step count, which sets the bias corrections, advances for the whole
    parameter. `fused`: the native one-pass op ``torch.ops.splat.adam_rows`` when registered and
    the tensors are float32, else the same formula in torch ops."""
    group = opt.param_groups[0]
    beta1, beta2 = group["betas"]
    lr, eps = group["lr"], group["eps"]
    st = _adam_state(opt, p)
    st["step"] += 1
    step = float(st["step"])
    step_size = lr / (1 - beta1 ** step)
    bc2_sqrt = math.sqrt(1 - beta2 ** step)
    m, v, g = st["exp_avg"], st["exp_avg_sq"], p.grad
    op = getattr(torch.ops.splat, "adam_rows", None) if fused else None
    if (op is not None and p.dtype == torch.float32 and g.dtype == torch.float32 and p.is_contiguous()
            and g.is_contiguous() and m.is_contiguous() and v.is_contiguous()):
        op(p.detach(), g, m, v, rows, beta1, beta2, eps, step_size, bc2_sqrt)
        return
    if rows is None:
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.addcdiv_(m, v.sqrt().div_(bc2_sqrt).add_(eps), value=-step_size)
        return
    idx = rows.nonzero().squeeze(1)
    gi = g.index_select(0, idx)
    mi = m.index_select(0, idx).lerp_(gi, 1 - beta1)
    vi = v.index_select(0, idx).mul_(beta2).addcmul_(gi, gi, value=1 - beta2)
    m.index_copy_(0, idx, mi)
    v.index_copy_(0, idx, vi)
    p.index_add_(0, idx, mi.div_(vi.sqrt_().div_(bc2_sqrt).add_(eps)).mul_(-step_size))


@torch.no_grad()
def lazy_adam_step(opt: torch.optim.Adam, p: Tensor) -> None:
    """Adam on the rows of a row-sparse gradient only (torch's SparseAdam semantics: the moments
    of rows without a gradient are left as they are, not decayed), in `opt`'s own state
    (``step``, ``exp_avg``, ``exp_avg_sq``), so that density control and checkpoints see the
    same state as for a dense step. A dynamic model with a temporal hierarchy gives such
    gradients: a step then costs the rows its frame touched."""
    g = p.grad.coalesce()
    rows, vals = g.indices()[0], g.values()
    group = opt.param_groups[0]
    beta1, beta2 = group["betas"]
    st = opt.state[p]
    if not st:
        st["step"] = torch.tensor(0.0)
        st["exp_avg"] = torch.zeros_like(p)
        st["exp_avg_sq"] = torch.zeros_like(p)
    st["step"] += 1
    step = float(st["step"])
    m = st["exp_avg"].index_select(0, rows).mul_(beta1).add_(vals, alpha=1 - beta1)
    v = st["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(vals, vals, value=1 - beta2)
    st["exp_avg"].index_copy_(0, rows, m)
    st["exp_avg_sq"].index_copy_(0, rows, v)
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    denom = (v / bc2).sqrt_().add_(group["eps"])
    p.index_add_(0, rows, -(group["lr"] / bc1) * m / denom)
