"""Self-organising 2D grids of Gaussians: Parallel Linear Assignment Sorting (PLAS) and the
neighbour-smoothness measure it improves.

Morgenstern et al., "Compact 3D Scene Representation via Self-Organizing Gaussian Grids" (ECCV
2024), section "Sorting high-dimensional Gaussians into 2D grids": the Gaussians' attributes are laid
out on a 2D grid so that neighbouring cells hold similar values; each attribute grid is then an
image that an image codec (here lossless WebP, in PlayCanvas's ``.sog``) compresses well.

PLAS, as described there (written here from the description, vectorised over the whole grid in
torch on the CPU):

1. start from an initial arrangement (random, or a given one: a Morton order, or the order of the
   last sort during training);
2. for a blur radius ``r`` shrinking from half the grid's side down to ``min_radius`` (by
   ``radius_factor`` per round):

   - the *target* is the grid box-blurred with a ``(2r+1)^2`` window (what each cell's
     neighbourhood holds on average);
   - the cells are cut into blocks of side ``~2r`` (at a random offset), shuffled inside their
     block and taken four at a time; each group of four is given the best of the 24 ways of
     placing its four elements on its four cells (the linear assignment of 4 elements to 4
     targets, solved exactly by enumeration), the distance being the squared L2 distance of an
     element's features to a cell's target;
   - repeated while the total distance to the target still falls by more than
     ``improvement_break`` (relative), at most ``max_iters`` times per radius.

Only the first ``N`` cells in raster order hold Gaussians (``N <= H * W``); the cells after them
(the end of the last row) stay empty and never move: a file that stores the Gaussians in raster
order then holds them contiguously. The blur ignores empty cells (normalised box filter).

The baseline other writers use is the Morton (Z-) order of the quantised positions laid out row
by row (`splat.io.compressed_ply.morton_order`); `neighbour_distance` is the measure both are
compared by.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["grid_shape", "plas_sort", "grid_order", "grid_features", "sog_attributes", "neighbour_distance",
           "standardise"]

# the 24 placements of 4 elements on 4 cells: _PERMS[p, i] = the cell (0..3) element i goes to
_PERMS = torch.tensor(list(itertools.permutations(range(4))), dtype=torch.long)


def grid_shape(n: int, multiple: int = 1) -> Tuple[int, int]:
    """The (H, W) of the squarest grid holding `n` cells with a width that is a multiple of
    `multiple`: ``W = ceil(sqrt(n) / multiple) * multiple``, ``H = ceil(n / W)``. Raises
    ``ValueError`` for n < 1."""
    if n < 1:
        raise ValueError(f"a grid needs at least one cell, got n={n}")
    w = max(multiple, math.ceil(math.sqrt(n) / multiple) * multiple)
    return math.ceil(n / w), w


def standardise(features: Tensor) -> Tensor:
    """Each column shifted to mean 0 and scaled to standard deviation 1 (constant columns: 0), so
    that no attribute dominates the sort by its units. [N,D] -> [N,D] float32."""
    f = features.detach().float()
    std = f.std(dim=0, unbiased=False)
    return (f - f.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))


def _box_sums(img: Tensor, r: int) -> Tensor:
    """Sums over the (2r+1)^2 window around each pixel (clipped at the borders) of img [C,H,W],
    by integral images: O(C H W) whatever r."""
    C, H, W = img.shape
    ii = torch.zeros(C, H + 1, W + 1, dtype=img.dtype)
    ii[:, 1:, 1:] = img.cumsum(1).cumsum(2)
    y0 = (torch.arange(H) - r).clamp(0, H)
    y1 = (torch.arange(H) + r + 1).clamp(0, H)
    x0 = (torch.arange(W) - r).clamp(0, W)
    x1 = (torch.arange(W) + r + 1).clamp(0, W)
    return (ii[:, y1][:, :, x1] - ii[:, y0][:, :, x1] - ii[:, y1][:, :, x0] + ii[:, y0][:, :, x0])


def _blur(grid: Tensor, mask: Tensor, r: int, H: int, W: int) -> Tensor:
    """Box blur of the occupied cells: grid [H*W, D] (zeros where empty), mask [H*W] -> [H*W, D]."""
    D = grid.shape[1]
    img = torch.cat([grid.t(), mask[None]], 0).reshape(D + 1, H, W)
    s = _box_sums(img, r)
    return (s[:D] / s[D:].clamp_min(1e-12)).reshape(D, H * W).t()


def _cross_mean(grid: Tensor, mask: Tensor, H: int, W: int) -> Tensor:
    """Mean of each cell's occupied 4-neighbours (itself excluded): grid [H*W, D] -> [H*W, D]."""
    D = grid.shape[1]
    img = torch.cat([grid.t(), mask[None]], 0).reshape(D + 1, H, W)
    s = torch.zeros_like(img)
    s[:, 1:] += img[:, :-1]
    s[:, :-1] += img[:, 1:]
    s[:, :, 1:] += img[:, :, :-1]
    s[:, :, :-1] += img[:, :, 1:]
    return (s[:D] / s[D:].clamp_min(1e-12)).reshape(D, H * W).t()


def plas_sort(features: Tensor, shape: Optional[Tuple[int, int]] = None, *, init: Optional[Tensor] = None,
              min_radius: int = 1, radius_factor: float = 0.9, max_iters: int = 8, improvement_break: float = 1e-3,
              seed: int = 0, max_radius: Optional[int] = None) -> Tensor:
    """Sort N elements into a 2D grid so that neighbours are similar (PLAS, Morgenstern et al. 2024).

    Args:
        features: [N, D] float, the attributes to make smooth (standardise them first, see
            `standardise`, or weight them as wanted: the distance is plain squared L2).
        shape: the grid (H, W) with ``H * W >= N``; default `grid_shape(N)`. The cells after
            the first N in raster order stay empty.
        init: [N] long, a permutation of 0..N-1: the arrangement to start from (cell k in raster
            order holds element init[k]); default a random one.
        min_radius, radius_factor, max_radius: the blur radii, from half the grid's larger side
            (or `max_radius`) down to `min_radius`, each ``radius_factor`` times the last (at
            least one smaller). A small `max_radius` only refines `init` locally.
        max_iters, improvement_break: per radius, at most `max_iters` rounds of group swaps, fewer
            once a round improves the distance to the target by less than `improvement_break`
            (relative).
        seed: of the random arrangement and group draws (the result is deterministic).

    Returns:
        order: [N] long, a permutation of 0..N-1: grid cell k (row-major, ``y = k // W``) holds
        element ``order[k]``; cells N..H*W-1 are empty.

    Raises:
        ValueError: empty or non-2D features, a grid too small, a bad init.
    """
    if features.ndim != 2 or features.shape[0] < 1:
        raise ValueError(f"features must be [N, D] with N >= 1, got shape {tuple(features.shape)}")
    N = features.shape[0]
    H, W = shape if shape is not None else grid_shape(N)
    if H * W < N:
        raise ValueError(f"a {H}x{W} grid cannot hold {N} elements")
    gen = torch.Generator().manual_seed(seed)
    X = features.detach().float().contiguous()
    if init is None:
        order = torch.randperm(N, generator=gen)
    else:
        order = torch.as_tensor(init, dtype=torch.long).clone()
        if order.shape != (N,) or not torch.equal(torch.sort(order).values, torch.arange(N)):
            raise ValueError(f"init must be a permutation of 0..{N - 1}")
    if N < 4:
        return order
    cells = H * W
    mask = torch.zeros(cells)
    mask[:N] = 1.0
    D = X.shape[1]
    grid = torch.zeros(cells, D)
    r = max(H, W) / 2.0 if max_radius is None else float(min(max_radius, max(H, W) / 2.0))
    final = False
    while True:
        radius = max(min_radius, int(r))
        b = max(4, 2 * radius)  # block side of the swap candidates
        last = None
        for _ in range(max_iters):
            grid[:N] = X[order]
            target = (_cross_mean(grid, mask, H, W) if final else _blur(grid, mask, radius, H, W))[:N]
            dist = ((grid[:N] - target) ** 2).sum()
            if last is not None and last - dist <= improvement_break * last:
                break
            last = dist
            # groups of four occupied cells of one block (a random offset moves the block borders)
            oy, ox = (int(v) for v in torch.randint(0, b, (2,), generator=gen))
            k = torch.arange(N)
            blocks = ((k // W + oy) // b) * (W // b + 2) + (k % W + ox) // b
            key = blocks.double() + torch.rand(N, generator=gen, dtype=torch.float64)
            g = torch.argsort(key)[: N - N % 4].reshape(-1, 4)  # [G,4] cells
            xe = X[order[g]]                                   # [G,4,D] the elements there
            te = target[g]                                     # [G,4,D] the cells' targets
            cost = (xe.pow(2).sum(-1, keepdim=True) - 2 * xe @ te.transpose(1, 2)
                    + te.pow(2).sum(-1)[:, None, :])           # [G,4(elem),4(cell)]
            total = cost[:, torch.arange(4)[None, :], _PERMS].sum(-1)  # [G,24]
            best = _PERMS[total.argmin(1)]                     # [G,4]: element i -> cell best[i]
            new_order = order.clone()
            new_order[g.gather(1, best)] = order[g]
            order = new_order
        if final:
            break
        if radius <= min_radius:
            final = True  # a last round against the 4-neighbours' mean: the smoothness measured
            continue
        r = min(r * radius_factor, radius - 1)
    return order


POSITION_WEIGHT = 3.0
"""How much more the positions count in `grid_features` than each other attribute column: the
.sog positions are two images (a 16-bit value split in bytes) whose high byte only compresses when
neighbours are near in space (measured on a trained object: weight 1 made ``means_u`` 73 % larger
than in Morton order, 3 gave the smallest file of the weights tried, 1 to 12; Morton order itself
is often smaller still on a model trained without the grid: see the README)."""


def sog_attributes(splats) -> Tensor:
    """[N, 14] the per-Gaussian attributes the ``.sog`` images store, differentiable: the positions
    as ``sign(x) log(1 + |x|)``, log scales, the unit quaternion with w >= 0, the SH DC colour and
    sigmoid(opacity). What the grid is sorted by (`grid_features`) and smoothed by
    (`splat.compress.grid_loss`)."""
    means = splats["means"]
    q = torch.nn.functional.normalize(splats["quats"], dim=1)
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0).detach()  # q and -q are one rotation
    n = means.shape[0]
    return torch.cat([means.sign().detach() * means.abs().log1p(), splats["scales"], q,
                      splats["sh0"].reshape(n, 3), torch.sigmoid(splats["opacities"]).reshape(n, 1)], 1)


def grid_features(splats, position_weight: float = POSITION_WEIGHT) -> Tensor:
    """The per-Gaussian features a self-organising grid of a splats dict is sorted by:
    `sog_attributes`, each column standardised, the positions times `position_weight`. [N, 14]."""
    f = standardise(sog_attributes({k: torch.as_tensor(splats[k]).detach().double()
                                    for k in ("means", "quats", "scales", "sh0", "opacities")}))
    f[:, :3] *= position_weight
    return f


def grid_order(splats, shape: Optional[Tuple[int, int]] = None, seed: int = 0, init: Optional[Tensor] = None,
               **plas_options) -> Tensor:
    """The self-organising grid order of a splats dict (Morgenstern et al. 2024): PLAS over
    `grid_features`, started from `init` (e.g. the order a ``--compress sog`` run trained in) or
    else the Morton order of the positions (what other writers use), on the ``.sog`` image layout
    by default (`splat.io.sog.image_shape`). Returns a permutation [N] long: grid cell k holds
    Gaussian ``order[k]``. `plas_options` go to `plas_sort`."""
    from ..io.compressed_ply import morton_order
    from ..io.sog import image_shape

    n = int(torch.as_tensor(splats["means"]).shape[0])
    start = torch.as_tensor(init, dtype=torch.long) if init is not None and len(init) == n else \
        torch.from_numpy(morton_order(torch.as_tensor(splats["means"]).detach().float().numpy()))
    return plas_sort(grid_features(splats), shape or image_shape(n), init=start, seed=seed, **plas_options)


def neighbour_distance(features: Tensor, order: Tensor, shape: Tuple[int, int]) -> float:
    """Mean L2 distance between the features of horizontally and vertically adjacent occupied cells
    of the grid `shape` = (H, W) that holds element ``order[k]`` in cell k (row-major) -- the
    smoothness PLAS improves (lower is smoother). features [N,D], order [N]."""
    H, W = shape
    N = order.shape[0]
    grid = torch.full((H * W, features.shape[1]), float("nan"), dtype=torch.float64)
    grid[:N] = features.detach().double()[order]
    grid = grid.reshape(H, W, -1)
    d = torch.cat([(grid[:, 1:] - grid[:, :-1]).norm(dim=-1).flatten(), (grid[1:] - grid[:-1]).norm(dim=-1).flatten()])
    d = d[~torch.isnan(d)]
    return float(d.mean()) if d.numel() else 0.0
