"""The optimizer interface of the training loop.

An optimizer owns how one training step turns the loss into a parameter update.
The loop hands it a ``forward`` closure (render, loss; the density strategy's
pre-backward hook runs inside it) and gets back what ``forward`` returned:

    loss, out = optimizer.step(forward)        # Adam: forward, backward, one update

so a first-order method runs ``forward`` once and calls ``backward``, while a
second-order one (Levenberg-Marquardt) may evaluate its own Jacobian products
around it, and a distributed wrapper may exchange gradients before the update.

``optimizers`` is one ``torch.optim.Optimizer`` per parameter, keyed by name, as
gsplat's strategies expect: density control edits parameters and their state
there (`splat.strategies.ops`). ``set_learning_rates`` takes the model's rates
for the step (`splat.models.base.Model.learning_rates`). ``state_dict`` /
``load_state_dict`` give an exact resume.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["Optimizer"]


class Optimizer:
    """Base class: subclasses set ``name`` (the ``--optimizer`` choice) and ``Config``
    (its options dataclass, ``--<name>.*``), build ``optimizers`` in ``__init__(params,
    learning_rates, config)`` and implement ``step``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    optimizers: Dict[str, torch.optim.Optimizer]
    visible: Optional[Tensor] = None
    """[N] bool, the Gaussians (per-Gaussian parameter rows) the step's views see, set by the
    training loop before the update; a sparse optimizer updates only those rows (Adam with
    ``--adam.sparse``). None: every row."""

    def __init__(self, params: Mapping[str, torch.nn.Parameter], learning_rates: Mapping[str, float], config):
        raise NotImplementedError

    def attach(self, trainer) -> None:
        """Called once the trainer has its model, data and render settings: an optimizer that
        needs more than the step's forward (Levenberg-Marquardt's Jacobian products over
        image subsets, a distributed wrapper's process group) takes them from `trainer`
        here. No-op by default."""

    def set_visible(self, rows: Optional[Tensor]) -> None:
        """Tell the next update which Gaussians the step's views see (`visible`)."""
        self.visible = rows

    def step(self, forward: Callable[[], Tuple[Tensor, Any]]) -> Tuple[Tensor, Any]:
        """Run ``forward() -> (loss, out)`` and update the parameters; returns the ``(loss, out)``
        the update was made from (the loop hands ``out.info`` to the density strategy)."""
        raise NotImplementedError

    def density_control(self, step: int) -> bool:
        """Whether the density strategy acts after step `step` (an optimizer whose step is not a
        gradient step, such as Levenberg-Marquardt's, says no). True by default."""
        return True

    def set_learning_rates(self, learning_rates: Mapping[str, float]) -> None:
        """Set each named parameter's learning rate (names without an optimizer are an error)."""
        for name, lr in learning_rates.items():
            for group in self.optimizers[name].param_groups:
                group["lr"] = lr

    def state_dict(self) -> Dict[str, Any]:
        return {k: o.state_dict() for k, o in self.optimizers.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, the model has {sorted(self.optimizers)}")
        for k, o in self.optimizers.items():
            o.load_state_dict(state[k])
