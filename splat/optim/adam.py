"""Adam, one instance per parameter (the 3DGS / gsplat recipe)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Tuple

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


class AdamOptimizer(Optimizer):
    """``torch.optim.Adam`` per parameter (so density control can resize each one with its
    moments), learning rates from the model, one forward and backward per step."""

    name = "adam"
    Config = AdamConfig

    def __init__(self, params: Mapping[str, torch.nn.Parameter], learning_rates: Mapping[str, float],
                 config: AdamConfig = AdamConfig()):
        missing = [k for k in params if k not in learning_rates]
        if missing:
            raise ValueError(f"adam: no learning rate for {missing}")
        self.config = config
        self.optimizers = {k: torch.optim.Adam([{"params": [p], "lr": learning_rates[k], "name": k}],
                                               eps=config.eps, betas=tuple(config.betas))
                           for k, p in params.items()}

    def step(self, forward: Callable[[], Tuple[Tensor, Any]]) -> Tuple[Tensor, Any]:
        loss, extra = forward()
        loss.backward()
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss, extra
