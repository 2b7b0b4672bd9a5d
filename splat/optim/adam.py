"""Adam, one instance per parameter (the 3DGS / gsplat recipe)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, Mapping, Tuple

import torch
from torch import Tensor

from .base import Optimizer

__all__ = ["AdamConfig", "AdamOptimizer"]


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


class AdamOptimizer(Optimizer):
    """``torch.optim.Adam`` per parameter (so density control can resize each one with its
    moments), learning rates from the model, one forward and backward per step."""

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
        step of `splat.train.sharded`, which adds up gradients from other processes)."""
        for opt in self.optimizers.values():
            p = opt.param_groups[0]["params"][0]
            if p.grad is not None and p.grad.is_sparse:
                lazy_adam_step(opt, p)
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)


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
