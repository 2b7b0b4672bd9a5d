"""The density-control interface.

A strategy sees the parameters (the model's `GaussianParams`, a ``ParameterDict`` whose
per-Gaussian entries include ``means``, ``scales`` (log), ``quats`` and ``opacities``
(logits); a plain splats ``ParameterDict`` works too),
one optimizer per parameter (`dict[str, torch.optim.Optimizer]`, as gsplat does),
its own state dict and the renderer's `info`, at two points of each step:

    state = strategy.initialize_state(scene_scale)
    ...render -> info
    strategy.step_pre_backward(params, optimizers, state, step, info)
    loss = image loss + model losses + sum(strategy.losses(params, state, step, info).values())
    loss.backward()
    for opt in optimizers.values(): opt.step(); opt.zero_grad()
    strategy.step_post_backward(params, optimizers, state, step, info, generator)  # may add/remove Gaussians

(`optimizer.step` first, as gsplat does.) `generator` is a torch.Generator the
trainer derives from the seed and the step, so that random choices (split
positions, MCMC relocation) are reproducible across --resume. The trainer picks a
strategy by name (``--strategy adc``; `splat.train.registry.STRATEGIES`) and the
strategy dataclass's fields are its options (``--adc.grow-grad2d``).

Strategies that change the number of Gaussians must keep the optimizer state aligned
with the parameters (see `ops.py`). The state dict holds tensors and plain numbers
only, so checkpoints can save it with `torch.save`.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch


class Strategy:
    absgrad = False
    """Whether the renderer must accumulate |d loss / d means2d| (AbsGS) for this strategy."""

    def scaled(self, factor: float, batch: int = 1) -> "Strategy":
        """The strategy for a run `factor` times as long as 30k steps (its step counts scaled) of
        `batch` views per step (a schedule counts views: Grendel's rule; a floor of N views between
        two rounds is N / batch steps); a strategy without a schedule returns itself."""
        return self

    def check_sanity(self, params: torch.nn.ParameterDict, optimizers: Dict[str, torch.optim.Optimizer]) -> None:
        missing = [k for k in ("means", "scales", "quats", "opacities") if k not in params]
        if missing:
            raise ValueError(f"{type(self).__name__}: params lack {missing}")
        if set(params.keys()) != set(optimizers.keys()):
            raise ValueError(f"{type(self).__name__}: params {sorted(params.keys())} and optimizers "
                             f"{sorted(optimizers.keys())} must have the same keys")
        for k, opt in optimizers.items():
            if len(opt.param_groups) != 1 or len(opt.param_groups[0]["params"]) != 1:
                raise ValueError(f"{type(self).__name__}: optimizer for {k!r} must hold exactly that one parameter")

    def initialize_state(self, scene_scale: float = 1.0) -> Dict[str, Any]:
        return {"scene_scale": float(scene_scale)}

    def step_pre_backward(self, params, optimizers, state, step: int, info: Dict[str, Any]) -> None:
        pass

    def losses(self, params, state, step: int, info: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Loss terms the strategy adds to the step's loss (weighted; e.g. MCMC's opacity and
        scale regularisers), computed after the render and before the backward."""
        return {}

    def step_post_backward(self, params, optimizers, state, step: int, info: Dict[str, Any],
                           generator: Optional[torch.Generator] = None) -> Dict[str, int]:
        return {}
