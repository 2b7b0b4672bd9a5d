"""Small per-Gaussian or per-pixel networks stored as a model's shared parameters.

A two-layer perceptron ``relu(x W1 + b1) W2 + b2`` whose weights live in the model's
`GaussianParams` under ``{prefix}_w1``, ``{prefix}_b1``, ``{prefix}_w2``, ``{prefix}_b2``
(shared, not per-Gaussian: density control leaves them alone, Adam trains them,
checkpoints store them as plain tensors). Spacetime Gaussians' colour decoder and the
relightable model's shadow refinement and residual networks are such networks.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import Tensor

__all__ = ["mlp_params", "mlp_apply", "mlp_names"]


def mlp_names(prefix: str) -> tuple:
    """The four parameter names of the network `prefix`."""
    return tuple(f"{prefix}_{k}" for k in ("w1", "b1", "w2", "b2"))


def mlp_params(prefix: str, n_in: int, n_hidden: int, n_out: int, generator: torch.Generator,
               out_scale: float = 0.01, out_bias: float = 0.0) -> Dict[str, Tensor]:
    """Initial weights of a ``n_in -> n_hidden -> n_out`` network: W1 ~ N(0, 1/n_in) (He-like for
    ReLU up to a factor), W2 ~ N(0, out_scale^2) (out_scale = 0: the network starts at its bias),
    b1 = 0, b2 = out_bias. Raises ``ValueError`` for non-positive sizes."""
    if min(n_in, n_hidden, n_out) < 1:
        raise ValueError(f"network {prefix}: sizes must be positive, got {n_in} -> {n_hidden} -> {n_out}")
    w1, b1, w2, b2 = mlp_names(prefix)
    return {w1: torch.randn(n_in, n_hidden, generator=generator) * (1.0 / n_in) ** 0.5,
            b1: torch.zeros(n_hidden),
            w2: torch.randn(n_hidden, n_out, generator=generator) * out_scale,
            b2: torch.full((n_out,), float(out_bias))}


def mlp_apply(params: Mapping[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    """``relu(x W1 + b1) W2 + b2`` for inputs x [..., n_in] -> [..., n_out]."""
    w1, b1, w2, b2 = mlp_names(prefix)
    return torch.relu(x @ params[w1] + params[b1]) @ params[w2] + params[b2]
