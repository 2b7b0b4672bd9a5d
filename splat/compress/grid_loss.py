"""Training with a self-organising grid (``splat-train --compress sog``): the smoothness loss of
Morgenstern et al., "Compact 3D Scene Representation via Self-Organizing Gaussian Grids" (ECCV 2024).

During training the Gaussians are kept sorted into the 2D grid of the ``.sog`` images (PLAS,
`splat.compress.plas.grid_order`; re-sorted every ``sort_every`` steps, started from the last order,
and whenever density control changes their number), and a loss pulls each cell's attributes toward
the blurred grid around it::

    L_grid = lambda * mean over occupied cells and attribute channels of
             huber(f(cell) - blur_sigma(f)(cell))

with ``f`` the attributes the images store (log scales, the unit quaternion with w >= 0, SH DC
colour, sigmoid(opacity); with ``positions``, also the positions as ``sign(x) log(1 + |x|)``), each
channel divided by its (detached) standard deviation, and ``blur_sigma`` a Gaussian blur over the occupied cells (empty cells are left
out of the average). Neighbouring cells then hold closer values and the attribute images compress
better; the photometric loss keeps the quality. The loss starts at ``start`` x the run's steps (after
densification has done most of its work: every change of the number of Gaussians forces a new sort)
and the final model is written as ``model.sog`` in its trained grid (or in Morton order, when
that file is smaller: `splat.train.loop.write_model_files`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .plas import grid_order, sog_attributes

__all__ = ["GridConfig", "GridSmoothness"]


@dataclasses.dataclass
class GridConfig:
    """--compress sog: the self-organising grid's smoothness loss (Morgenstern et al. 2024)."""

    smoothness: float = 0.05
    """Weight of the grid smoothness loss (lambda). Measured (bench/compress.py, README): 0.2 made the
    object's .sog 9 % smaller at no loss but cost the default scene 0.7 dB; 0.05 is the default."""
    sort_every: int = 500
    """Re-sort the grid (PLAS, from the last order) every this many steps."""
    start: float = 0.5
    """The loss starts at this fraction of the run's steps (densification changes the Gaussians before)."""
    blur_sigma: float = 1.0
    """Standard deviation of the Gaussian blur the cells are pulled toward, in grid cells."""
    huber_delta: float = 0.5
    """The Huber loss's quadratic zone, in standard deviations of each attribute."""
    positions: bool = False
    """Also pull the positions toward their grid neighbours' (moves geometry; off: the other attributes only)."""

    def check(self) -> None:
        """Raise ``ValueError`` for options out of range."""
        if not (self.smoothness >= 0 and math.isfinite(self.smoothness)):
            raise ValueError(f"--sog.smoothness must be >= 0, got {self.smoothness}")
        if self.sort_every < 1:
            raise ValueError(f"--sog.sort-every must be >= 1, got {self.sort_every}")
        if not 0 <= self.start < 1:
            raise ValueError(f"--sog.start must be in [0, 1), got {self.start}")
        if not (self.blur_sigma > 0 and math.isfinite(self.blur_sigma)):
            raise ValueError(f"--sog.blur-sigma must be a finite number > 0, got {self.blur_sigma}")
        if not (self.huber_delta > 0 and math.isfinite(self.huber_delta)):
            raise ValueError(f"--sog.huber-delta must be a finite number > 0, got {self.huber_delta}")


def _gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of img [C, H, W] (zero padding)."""
    # taps beyond the image only meet the zero padding: at most max(H, W) a side (a huge sigma stays cheap)
    r = max(1, min(int(math.ceil(2.5 * sigma)), max(img.shape[1:])))
    x = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    C = img.shape[0]
    out = F.conv2d(img[None], k.view(1, 1, 1, -1).expand(C, 1, 1, -1), padding=(0, r), groups=C)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), padding=(r, 0), groups=C)[0]


class GridSmoothness:
    """The grid order and the smoothness loss of a training run (`GridConfig`)."""

    def __init__(self, cfg: GridConfig, iterations: int):
        cfg.check()
        self.cfg = cfg
        self.start_step = int(cfg.start * iterations)
        self.order: Optional[Tensor] = None
        self.sorted_at = -1
        self.sorts = 0

    def state(self) -> dict:
        """What a checkpoint keeps (the grid order, when it was sorted, how many sorts), so that a
        resumed run continues exactly."""
        return {"order": None if self.order is None else self.order.clone(), "sorted_at": self.sorted_at,
                "sorts": self.sorts}

    def load_state(self, state: Optional[dict]) -> None:
        """Continue from `state` (`state`'s dict; None: nothing sorted yet)."""
        state = state or {}
        order = state.get("order")
        self.order = None if order is None else torch.as_tensor(order, dtype=torch.long).clone()
        self.sorted_at = int(state.get("sorted_at", -1))
        self.sorts = int(state.get("sorts", 0))

    def sort(self, splats: Dict[str, Tensor], step: int, keep: bool = True) -> Tensor:
        """Re-sort the grid for `splats` (from the last order when the number of Gaussians is the
        same) and return the order; `keep` False leaves the training state as it was (the export's
        final sort)."""
        with torch.no_grad():  # from the last order, or the Morton order when the count changed
            order = grid_order({k: v.detach().float().cpu() for k, v in splats.items()}, seed=self.sorts,
                               init=self.order)
        if keep:
            self.order, self.sorted_at = order, step
            self.sorts += 1
        return order

    def loss(self, params: Dict[str, Tensor], step: int) -> Optional[Tensor]:
        """The weighted smoothness loss at `step` (None before ``start``, with weight 0, or with fewer
        than two Gaussians: one has no neighbour, and its standard deviation would be NaN)."""
        if step < self.start_step or self.cfg.smoothness == 0:
            return None
        n = params["means"].shape[0]
        if n < 2:
            return None
        if self.order is None or len(self.order) != n or step - self.sorted_at >= self.cfg.sort_every:
            self.sort(params, step)
        from ..io.sog import image_shape

        H, W = image_shape(n)
        f = sog_attributes(params)
        if not self.cfg.positions:
            f = f[:, 3:]
        f = f / f.detach().std(dim=0).clamp_min(1e-8)
        order = self.order.to(f.device)
        grid = torch.zeros(H * W, f.shape[1], dtype=f.dtype, device=f.device)
        grid = grid.index_copy(0, torch.arange(n, device=f.device), f[order])
        mask = torch.zeros(1, H, W, dtype=f.dtype, device=f.device)
        mask.view(-1)[:n] = 1
        img = grid.t().reshape(-1, H, W)
        blurred = _gaussian_blur(img * mask, self.cfg.blur_sigma) / _gaussian_blur(mask, self.cfg.blur_sigma).clamp_min(1e-6)
        diff = (img - blurred).reshape(img.shape[0], -1)[:, :n]
        return self.cfg.smoothness * F.huber_loss(diff, torch.zeros_like(diff), delta=self.cfg.huber_delta)
