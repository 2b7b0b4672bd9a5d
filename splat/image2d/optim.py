"""Adan (Xie et al. 2022), the optimiser GaussianImage trains with, for the
comparison with Adam in bench/image2d.py."""
from __future__ import annotations


import torch


class Adan(torch.optim.Optimizer):
    """Adaptive Nesterov momentum: m, v (gradient difference) and n (squared
    Nesterov gradient) moving averages with bias correction, decoupled weight decay."""

    def __init__(self, params, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0):
        if lr <= 0:
            raise ValueError(f"Adan: lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            b1, b2, b3 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                    st["n"] = torch.zeros_like(p)
                    st["prev"] = g.clone()
                st["step"] += 1
                k = st["step"]
                diff = g - st["prev"]
                st["m"].mul_(b1).add_(g, alpha=1 - b1)
                st["v"].mul_(b2).add_(diff, alpha=1 - b2)
                nest = g + b2 * diff
                st["n"].mul_(b3).addcmul_(nest, nest, value=1 - b3)
                st["prev"].copy_(g)
                c1, c2, c3 = 1 - b1 ** k, 1 - b2 ** k, 1 - b3 ** k
                denom = (st["n"] / c3).sqrt_().add_(group["eps"])
                upd = (st["m"] / c1 + b2 * st["v"] / c2) / denom
                p.add_(upd, alpha=-group["lr"])
                if group["weight_decay"]:
                    p.div_(1 + group["lr"] * group["weight_decay"])
        return loss
