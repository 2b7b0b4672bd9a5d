"""Block partition of a large scene and the merge of the blocks' models: the pure geometry of
``splat-train --blocks K`` (the training itself is `splat.train.blocks`).

The scene is cut in its ground plane, the plane orthogonal to the up direction of the training
cameras (`ground_frame`), into K core cells: boxes in the two ground coordinates, unbounded
along up, half-open (``lo <= g < hi``) and with unbounded outer sides, so every point of space
lies in exactly one core cell. The cut is content-aware (BlockGaussian): each
sample point (a Gaussian's mean or an initial point) carries a load, its density times the
number of training cameras that see it (`point_loads`), and `partition_points` cuts the plane
recursively at load-weighted quantiles of the points, along the side where they spread most,
so that each of the K cells (any K, not only powers of two) holds an equal share of the load. Each block trains the Gaussians of its expanded
region, the core cell grown by a margin on its bounded sides (CityGaussian),
with the cameras that see it (`block_cameras`: BlockGaussian's visibility ratio, cameras inside
the region, a floor on the count); `merge_blocks` keeps of each block the Gaussians whose means
lie in its core cell, so the merged model has no duplicates and no gaps at block borders.

Nothing here imports `splat.train`; arrays are numpy (float64 for geometry), splats dicts are
torch tensors in gsplat's layout (means [N,3], quats [N,4], scales [N,3] log, opacities [N]
logit, sh0 [N,1,3], shN [N,K-1,3]).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..cameras import _horizon_axes, camera_frame

__all__ = ["BlockPartition", "ground_frame", "camera_visibility", "point_loads", "partition_points",
           "block_cameras", "merge_blocks", "DEFAULT_MARGIN"]

DEFAULT_MARGIN = 0.3
"""Margin of a block's training region, as a fraction of its core cell's size (each bounded side)."""


def ground_frame(viewmats: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The scene's up direction and ground axes from the training cameras.

    viewmats [C,4,4] world->camera (OpenCV). Returns (up [3] unit, axes [2,3]: two unit vectors
    orthogonal to up and to each other). Up starts as the cameras' mean up vector (minus their mean
    y axis; `splat.cameras.camera_frame`, +z where those cancel), which cameras tilted down at
    uneven azimuths bias; where the camera centres lie near a plane or a line (aerial, street and
    orbit captures), the normal of that plane closest to the mean up replaces it."""
    V = np.asarray(viewmats, dtype=np.float64)
    centres, up, _ = camera_frame(V)
    if len(centres) >= 3:
        lam, vec = np.linalg.eigh(np.cov((centres - centres.mean(0)).T))  # ascending
        if lam[2] > 0:
            flat = [i for i in (0, 1) if lam[i] < 0.25 * lam[2]]
            if flat:
                n = max((vec[:, i] for i in flat), key=lambda v: abs(float(v @ up)))
                if abs(float(n @ up)) > 0.5:
                    up = n * np.sign(float(n @ up))
    a, b = _horizon_axes(up)
    return up, np.stack([a, b])


def camera_visibility(points: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray, widths: Sequence[int],
                      heights: Sequence[int], near: float = 1e-3) -> np.ndarray:
    """Which cameras see which points (pinhole projection, no occlusion test).

    points [N,3] world; viewmats [C,4,4] world->camera (OpenCV); Ks [C,3,3] pixels; widths,
    heights: C image sizes in pixels; near: smallest depth (world units) that counts.
    Returns bool [C,N]: the point is in front of camera c and projects inside its image."""
    P = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    V = np.asarray(viewmats, dtype=np.float64)
    K = np.asarray(Ks, dtype=np.float64)
    out = np.zeros((len(V), len(P)), dtype=bool)
    for c in range(len(V)):
        x = P @ V[c, :3, :3].T + V[c, :3, 3]
        z = x[:, 2]
        front = z > near
        zs = np.where(front, z, 1.0)
        u = K[c, 0, 0] * x[:, 0] / zs + K[c, 0, 2]
        v = K[c, 1, 1] * x[:, 1] / zs + K[c, 1, 2]
        out[c] = front & (u >= 0) & (u < widths[c]) & (v >= 0) & (v < heights[c])
    return out


def point_loads(points: np.ndarray, visibility: np.ndarray, floor: float = 0.05) -> np.ndarray:
    """The training load each sample point stands for: its density times the training cameras that
    see it (BlockGaussian's complexity and visibility). Each point is one sample of the density, so
    its load is the number of cameras that see it (`camera_visibility`'s column sums), at least
    `floor` (points no camera sees are still optimised). points [N,3], visibility bool [C,N] ->
    float64 [N]."""
    n = np.asarray(visibility).sum(0).astype(np.float64)
    if n.shape[0] != len(points):
        raise ValueError(f"point_loads: visibility covers {n.shape[0]} points, got {len(points)}")
    return np.maximum(n, floor)


@dataclasses.dataclass
class BlockPartition:
    """K core cells in the ground plane, each with its training region.

    up [3], axes [2,3]: the ground frame (`ground_frame`); ground coordinates of a point x are
    ``axes @ x``. lo, hi [K,2]: each core cell's bounds in ground coordinates (world units),
    -inf / +inf on outer sides; a point belongs to cell k when ``lo <= g < hi`` (cells are disjoint
    and cover the plane). margin [K]: world units by which the training region extends the core
    on each bounded side. loads [K]: the load (`point_loads`) of the samples in each core cell."""

    up: np.ndarray
    axes: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    margin: np.ndarray
    loads: np.ndarray

    @property
    def num_blocks(self) -> int:
        return int(len(self.lo))

    def ground(self, xyz) -> np.ndarray:
        """Ground coordinates [N,2] of points [N,3] (numpy or torch)."""
        x = xyz.detach().cpu().numpy() if isinstance(xyz, torch.Tensor) else np.asarray(xyz)
        return np.asarray(x, dtype=np.float64).reshape(-1, 3) @ self.axes.T

    def block_of(self, xyz) -> np.ndarray:
        """The core cell of each point [N,3] -> int64 [N] in 0..K-1 (-1 for non-finite points)."""
        g = self.ground(xyz)
        out = np.full(len(g), -1, dtype=np.int64)
        for k in range(self.num_blocks):
            inside = np.all((g >= self.lo[k]) & (g < self.hi[k]), axis=1)
            out[inside & (out < 0)] = k
        return out

    def in_core(self, xyz, k: int) -> np.ndarray:
        """bool [N]: the points [N,3] in core cell k."""
        return self.block_of(xyz) == k

    def region_bounds(self, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(lo [2], hi [2]) of block k's training region: the core grown by its margin."""
        return self.lo[k] - self.margin[k], self.hi[k] + self.margin[k]

    def in_region(self, xyz, k: int) -> np.ndarray:
        """bool [N]: the points [N,3] in block k's training region (core plus margin)."""
        g = self.ground(xyz)
        lo, hi = self.region_bounds(k)
        return np.all((g >= lo) & (g < hi), axis=1)

    def to_json(self) -> dict:
        f = (lambda a: [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a)])
        return {"num_blocks": self.num_blocks, "up": self.up.tolist(), "axes": self.axes.tolist(), "lo": f(self.lo),
                "hi": f(self.hi), "margin": self.margin.tolist(), "loads": self.loads.tolist()}

    @classmethod
    def from_json(cls, d: Mapping) -> "BlockPartition":
        """The partition `to_json` wrote (None bounds are -inf / +inf). Raises ``ValueError`` for a
        malformed one."""
        try:
            lo = np.array([[-np.inf if v is None else v for v in row] for row in d["lo"]], dtype=np.float64)
            hi = np.array([[np.inf if v is None else v for v in row] for row in d["hi"]], dtype=np.float64)
            p = cls(np.asarray(d["up"], np.float64), np.asarray(d["axes"], np.float64), lo.reshape(-1, 2),
                    hi.reshape(-1, 2), np.asarray(d["margin"], np.float64), np.asarray(d["loads"], np.float64))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a block partition: {e}") from None
        if p.axes.shape != (2, 3) or len(p.margin) != p.num_blocks or len(p.hi) != p.num_blocks:
            raise ValueError("not a block partition: inconsistent shapes")
        return p

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(x, kind="stable")
    xs, cw = x[order], np.cumsum(w[order])
    i = int(np.searchsorted(cw, q * cw[-1]))
    return float(xs[min(i, len(xs) - 1)])


def partition_points(points: np.ndarray, loads: np.ndarray, num_blocks: int, up: np.ndarray, axes: np.ndarray,
                     margin: float = DEFAULT_MARGIN) -> BlockPartition:
    """Content-aware partition (BlockGaussian's load-balanced recursive split) of the ground plane
    into `num_blocks` core cells.

    points [N,3] world samples of the scene (Gaussian means or initial points); loads [N] >= 0
    (`point_loads`); up [3], axes [2,3] the ground frame (`ground_frame`); margin: each block's
    training region extends its core by this fraction of the core's size (measured on its points'
    2-98th percentile range where the side is unbounded). Starting from one cell (the whole plane)
    that must hold k = `num_blocks` blocks, a cell is cut along the ground axis where its points
    spread most, at the load-weighted quantile floor(k/2)/k of its points, into cells that hold
    floor(k/2) and k - floor(k/2) blocks, recursively: every block gets an equal share of the load
    for any K (halving the heaviest cell instead leaves K = 3 at 1/2, 1/4, 1/4).

    Raises ``ValueError`` when num_blocks < 1, when there are fewer finite points than blocks, or
    when shapes disagree."""
    P = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    w = np.asarray(loads, dtype=np.float64).reshape(-1)
    if num_blocks < 1:
        raise ValueError(f"the number of blocks must be at least 1, got {num_blocks}")
    if len(w) != len(P):
        raise ValueError(f"partition_points: {len(P)} points but {len(w)} loads")
    ok = np.isfinite(P).all(1) & np.isfinite(w)
    P, w = P[ok], np.maximum(w[ok], 0.0)
    if len(P) < num_blocks:
        raise ValueError(f"cannot cut {len(P)} points into {num_blocks} blocks")
    if w.sum() <= 0:
        w = np.ones_like(w)
    axes = np.asarray(axes, dtype=np.float64)
    g = P @ axes.T
    cells: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (lo, hi, indices of its points)

    def cut(lo, hi, idx, k):
        if k == 1:
            cells.append((lo, hi, idx))
            return
        if len(idx) < k:
            raise ValueError(f"cannot cut the points into {num_blocks} blocks: too many coincide")
        k_left = k // 2
        gi = g[idx]
        spread = np.percentile(gi, 98, axis=0) - np.percentile(gi, 2, axis=0)
        for axis in np.argsort(-spread, kind="stable"):
            m = _weighted_quantile(gi[:, axis], w[idx], k_left / k)
            left = gi[:, axis] < m
            if left.sum() < k_left or (~left).sum() < k - k_left:  # ties at the quantile: cut by count
                xs = np.sort(gi[:, axis])
                m = xs[max(k_left, min(len(xs) - (k - k_left), int(round(len(xs) * k_left / k))))]
                left = gi[:, axis] < m
            if left.sum() >= k_left and (~left).sum() >= k - k_left:
                hi_l, lo_r = hi.copy(), lo.copy()
                hi_l[axis] = lo_r[axis] = m
                cut(lo, hi_l, idx[left], k_left)
                cut(lo_r, hi, idx[~left], k - k_left)
                return
        raise ValueError(f"cannot cut the points into {num_blocks} blocks: too many coincide")

    cut(np.full(2, -np.inf), np.full(2, np.inf), np.arange(len(g)), int(num_blocks))
    lo = np.stack([c[0] for c in cells])
    hi = np.stack([c[1] for c in cells])
    margins, cell_loads = [], []
    for c_lo, c_hi, idx in cells:
        gi = g[idx]
        ext = np.percentile(gi, 98, axis=0) - np.percentile(gi, 2, axis=0)
        size = np.where(np.isfinite(c_hi - c_lo), c_hi - c_lo, ext)
        margins.append(margin * float(np.max(size)))
        cell_loads.append(float(w[idx].sum()))
    return BlockPartition(np.asarray(up, np.float64), axes, lo, hi, np.asarray(margins), np.asarray(cell_loads))


def block_cameras(partition: BlockPartition, k: int, points: np.ndarray, visibility: np.ndarray,
                  centres: Optional[np.ndarray] = None, *, min_ratio: float = 0.5, min_image_ratio: float = 0.3,
                  min_views: int = 8) -> np.ndarray:
    """The cameras that train block k (BlockGaussian's visibility-aware camera assignment).

    points [N,3] the scene's sample points; visibility bool [C,N] (`camera_visibility`);
    centres [C,3] the cameras' centres (optional). Camera c is chosen when its visibility ratio,
    the share of the block region's points it sees, is at least `min_ratio`; or when the block's
    points are at least `min_image_ratio` of all the points it sees (the block fills a good part
    of its image); or when it stands inside the region. When fewer than `min_views` are chosen,
    the cameras with the highest of the two ratios are added up to that floor (all cameras if
    there are fewer). Returns sorted int64 camera indices."""
    vis = np.asarray(visibility, dtype=bool)
    C = vis.shape[0]
    region = partition.in_region(points, k)
    seen = vis[:, region].sum(1).astype(np.float64)
    ratio = seen / max(int(region.sum()), 1)
    image_ratio = seen / np.maximum(vis.sum(1), 1)
    chosen = (ratio >= min_ratio) | (image_ratio >= min_image_ratio)
    if centres is not None and len(centres):
        chosen |= partition.in_region(centres, k)
    floor = min(int(min_views), C)
    if chosen.sum() < floor:
        score = np.maximum(ratio, image_ratio)
        for c in np.argsort(-score, kind="stable"):
            if chosen.sum() >= floor:
                break
            chosen[c] = True
    return np.nonzero(chosen)[0].astype(np.int64)


def merge_blocks(partition: BlockPartition, blocks: Sequence[Mapping[str, torch.Tensor]]
                 ) -> Tuple[Dict[str, torch.Tensor], List[int]]:
    """The merged model of the blocks' trained Gaussians (CityGaussian's merge): of block k's splats
    keep the Gaussians whose means lie in core cell k, and concatenate. Every point of space lies in
    exactly one core cell, so no Gaussian is kept twice and no region is left to no block.

    blocks: K splats dicts (gsplat layout, the same keys and SH degree), block k trained for
    region k. Returns (merged splats dict, the count kept of each block). Raises ``ValueError``
    when the number of blocks or their keys / SH shapes disagree."""
    if len(blocks) != partition.num_blocks:
        raise ValueError(f"merge_blocks: {len(blocks)} block models for a partition into {partition.num_blocks}")
    keys = sorted(blocks[0].keys())
    kept, parts = [], {k: [] for k in keys}
    for k, s in enumerate(blocks):
        if sorted(s.keys()) != keys:
            raise ValueError(f"merge_blocks: block {k} has parameters {sorted(s.keys())}, block 0 {keys}")
        if s["shN"].shape[1:] != blocks[0]["shN"].shape[1:]:
            raise ValueError(f"merge_blocks: block {k} has SH shape {list(s['shN'].shape[1:])}, block 0 "
                             f"{list(blocks[0]['shN'].shape[1:])}")
        keep = torch.from_numpy(partition.block_of(s["means"]) == k)
        kept.append(int(keep.sum()))
        for name in keys:
            parts[name].append(s[name].detach().cpu()[keep])
    return {name: torch.cat(parts[name]).contiguous() for name in keys}, kept
