"""Pixel partitioning of a training step over processes (Grendel's image distribution).

A step's B views are cut into *units*, one row of 16-pixel tiles of one view each, in
view order. Each unit has a cost: the Gaussian-tile intersections in that row (summed
over every process's Gaussians) plus ``kappa`` per pixel. The units are split into
``R`` contiguous runs of about equal cost (`balance`), so each process renders a few
horizontal strips of whole tile rows; without the balancer each takes an equal number
of rows (`even_split`). ``kappa`` comes from the render times measured so far
(`CostModel`: a least-squares fit of time = a * intersections + b * pixels).

A strip is rendered with one tile row of halo above and below (`Strip.halo_rows`) as a
tile subset of the whole image (`strip_tiles`, `splat.rasterize`'s ``tiles``): the
projection is the whole image's (a crop's camera would not do: the EWA Jacobian's
frustum clamp depends on the image bounds), each pixel gets exactly the Gaussians and
order of the whole render, and the 11x11 SSIM window of every owned pixel lies inside
the rendered rows.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from typing import List, Sequence

import numpy as np
import torch
from torch import Tensor


__all__ = ["Strip", "units_of", "balance", "even_split", "strips_of", "strip_tiles", "row_costs", "CostModel",
           "HALO_TILES"]

HALO_TILES = 1
"""Tile rows rendered beyond a strip on each side: 16 pixels, more than the SSIM window's half-width (5)."""


@dataclasses.dataclass(frozen=True)
class Strip:
    """Tile rows [row0, row1) of view `view` (its index in the step's batch) owned by one
    process; `tile_rows` is the view's number of tile rows."""

    view: int
    row0: int
    row1: int
    tile_rows: int

    @property
    def halo_rows(self):
        """(first, end) tile rows rendered: the strip plus `HALO_TILES` each side, within the image."""
        return max(0, self.row0 - HALO_TILES), min(self.tile_rows, self.row1 + HALO_TILES)


def units_of(tile_rows: Sequence[int]) -> List[tuple]:
    """The step's units ``(view, row)`` in order, for views of `tile_rows` tile rows each."""
    return [(v, j) for v, n in enumerate(tile_rows) for j in range(n)]


def balance(costs: np.ndarray, parts: int) -> np.ndarray:
    """Cut a sequence of unit `costs` [U] (non-negative) into `parts` contiguous runs of about
    equal total cost: returns the run boundaries [parts + 1] (0 = first unit, U = end; a run
    may be empty). Each cut is placed where the cumulative cost crosses k/parts of the total."""
    costs = np.maximum(np.asarray(costs, dtype=np.float64), 0)
    U = len(costs)
    cum = np.concatenate([[0.0], np.cumsum(costs)])
    total = cum[-1]
    if total <= 0:
        return even_split(U, parts)
    bounds = [0]
    for k in range(1, parts):
        target = total * k / parts
        i = int(np.searchsorted(cum, target))  # first prefix reaching the target
        # cut before or after the unit that crosses, whichever is closer to the target
        if i > 0 and abs(cum[i - 1] - target) <= abs(cum[min(i, U)] - target):
            i -= 1
        bounds.append(min(max(i, bounds[-1]), U))
    bounds.append(U)
    return np.asarray(bounds)


def even_split(units: int, parts: int) -> np.ndarray:
    """Boundaries [parts + 1] giving each part an equal number of units (the first ones one more)."""
    return np.asarray([(units * k) // parts for k in range(parts + 1)])


def strips_of(units: List[tuple], bounds: np.ndarray, tile_rows: Sequence[int]) -> List[List[Strip]]:
    """Each part's strips (contiguous rows of one view) from run `bounds` over `units`."""
    out = []
    for k in range(len(bounds) - 1):
        strips: List[Strip] = []
        for v, j in units[bounds[k]:bounds[k + 1]]:
            if strips and strips[-1].view == v and strips[-1].row1 == j:
                strips[-1] = dataclasses.replace(strips[-1], row1=j + 1)
            else:
                strips.append(Strip(v, j, j + 1, tile_rows[v]))
        out.append(strips)
    return out


def strip_tiles(strip: Strip, tile_width: int, device=None) -> Tensor:
    """Flat tile indices (`splat.rasterize`'s ``tiles``) of `strip`'s rows with their halo, in a
    view of `tile_width` tile columns -> int64 [rows * tile_width]."""
    h0, h1 = strip.halo_rows
    return torch.arange(h0 * tile_width, h1 * tile_width, dtype=torch.int64, device=device)


def row_costs(tmin: Tensor, tmax: Tensor, tile_rows: int) -> Tensor:
    """Gaussian-tile intersections per tile row of one view: `tmin`, `tmax` [M, 2] int tile
    rectangles [min, max) (`splat.backends.torch_ref.tile_bounds`; empty when culled) -> [tile_rows]
    float64 (each Gaussian adds its width in tiles to every row it covers)."""
    w = (tmax[:, 0] - tmin[:, 0]).clamp_min(0).double()
    live = (tmax[:, 1] > tmin[:, 1]) & (w > 0)
    diff = torch.zeros(tile_rows + 1, dtype=torch.float64, device=tmin.device)
    diff.index_add_(0, tmin[live, 1].long(), w[live])
    diff.index_add_(0, tmax[live, 1].long(), -w[live])
    return diff.cumsum(0)[:tile_rows]


class CostModel:
    """Render time ~ a * intersections + b * pixels per process, fitted by least squares over the
    last `history` steps' measurements of every process; ``kappa`` = b / a is the cost of a pixel
    in intersections (the prior `kappa0` until there are enough measurements)."""

    def __init__(self, kappa0: float = 0.02, history: int = 64):
        self.kappa = float(kappa0)
        self.samples: deque = deque(maxlen=history)

    def add(self, seconds: float, intersections: float, pixels: float) -> None:
        if seconds > 0 and (intersections > 0 or pixels > 0):
            self.samples.append((seconds, intersections, pixels))
        if len(self.samples) >= 8:
            s = np.asarray(self.samples)
            A = s[:, 1:] / np.maximum(s[:, 1:].max(0), 1.0)  # column scaling for conditioning
            coef, *_ = np.linalg.lstsq(A, s[:, 0], rcond=None)
            a, b = coef / np.maximum(s[:, 1:].max(0), 1.0)
            if a > 0 and b >= 0:
                self.kappa = float(b / a)
