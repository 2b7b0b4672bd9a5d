"""What the dynamic (4D) model kinds share: time from the cameras, the temporal
opacity cut, the temporal hierarchy for long videos, initialisation and export
of one instant.

A dynamic model turns each camera's time t into ordinary 3D Gaussians
(`splat.render.Gaussians`) and the one rasterizer renders them, on every backend.
Two kinds build on `DynamicModel`:

* ``--model 4dgs`` (`splat.models.fourdgs`): XYZT Gaussians sliced at t (Duan et al. 2024);
* ``--model spacetime`` (`splat.models.spacetime`): polynomial motion, temporal radial-basis
  opacity (Li et al., CVPR 2024).

Time is the cameras' ``time`` (the data's, 0..1 over the sequence for D-NeRF and
multi-view video). A batch renders at one instant (``Cameras.time`` equal across
the batch); the trainer and evaluation render one view per call.

**Temporal cut.** A Gaussian whose opacity at t is below the rasterizer's 1/255
threshold cannot touch a pixel (the rasterizer culls it after projecting it);
dynamic models drop such Gaussians before projecting, which gives the same image
and gradients and makes a frame cost what is alive at that instant.

**Temporal hierarchy** (Xu et al. 2024, "Representing Long Volumetric Video with
Temporal Gaussian Hierarchy"; `TemporalHierarchy`): with ``hierarchy_levels`` L > 0
the sequence [t0, t1] is split into 2^l segments at level l = 0..L-1, and every
Gaussian lives in one node (level, segment): the finest level whose one segment
holds its temporal support (centre +- `SUPPORT` = 3.33 temporal standard deviations,
where even an opaque Gaussian falls below the rasterizer's 1/255). A
frame renders only the L nodes that cover its time, found through an index sorted
by node, so the work per frame (and its working memory) follows what one instant
needs instead of the whole video. Training streams the same way: a step's
gradients are row-sparse (only the rows its frame rendered) and Adam updates
those rows lazily (their moments only), as torch's SparseAdam does, so a step
costs what its instant needs: slow or static content sits in coarse nodes
shared by every frame, fast content in short fine nodes. Nodes are re-assigned
every ``hierarchy_every`` steps as the temporal scales train (a Gaussian that
grew longer moves up, one that became short moves down), and density control's
new Gaussians start in their parent's node. Gradients, optimizer moments and
density statistics only touch the rows a frame rendered (`Gaussians.ids`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras
from ..render import RenderSettings
from .base import Model, learning_rate_decay  # noqa: F401  (re-exported: the dynamic kinds import it here)

__all__ = ["DynamicModel", "TemporalHierarchy", "SUPPORT", "time_of", "temporal_marginal", "learning_rate_decay",
           "gather_rows"]

SUPPORT = math.sqrt(2.0 * math.log(255.0))
"""Temporal support of a Gaussian in standard deviations (3.33): outside it even an opaque Gaussian is
below the rasterizer's 1/255, so cutting it at its hierarchy segment's ends changes no pixel."""

ALPHA_THRESHOLD = 1.0 / 255.0  # the rasterizer's: a Gaussian below it at t draws nothing


def time_of(cameras: Cameras, model: str) -> float:
    """The one time of a camera batch. Raises ``ValueError`` when the batch has no
    time or its cameras disagree (a dynamic model renders one instant per call)."""
    if cameras.time is None:
        raise ValueError(f"--model {model} renders cameras with a time (Cameras.time); these have none")
    t = cameras.time
    if t.numel() > 1 and bool((t != t[0]).any()):
        raise ValueError(f"--model {model}: a camera batch renders one instant; got times "
                         f"{t.tolist()[:4]}{'...' if t.numel() > 4 else ''} (render them one per call)")
    return float(t[0])


def temporal_marginal(dt: Tensor, var_t: Tensor) -> Tensor:
    """exp(-dt^2 / (2 var_t)): the unnormalised Gaussian in time at offset `dt` (both [N])."""
    return torch.exp(-0.5 * dt * dt / var_t)


class _GatherRows(torch.autograd.Function):
    """p[rows] whose gradient is a row-sparse COO tensor of p's shape (only the gathered rows),
    so that a step's gradient and optimizer update cost what the frame touched, not the whole
    video (`splat.optim.adam` applies such gradients lazily, as torch's SparseAdam does)."""

    @staticmethod
    def forward(ctx, p: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.shape = p.shape
        return p.index_select(0, rows)

    @staticmethod
    def backward(ctx, g: Tensor):
        (rows,) = ctx.saved_tensors
        # uncoalesced: `lazy_adam_step` coalesces (sums repeated rows), whatever order the rows came in
        return torch.sparse_coo_tensor(rows[None], g, ctx.shape, check_invariants=False), None


def gather_rows(p: Tensor, rows: Optional[Tensor], sparse: bool = False) -> Tensor:
    """Rows `rows` of a per-Gaussian parameter (all of it for None); with `sparse` and a
    parameter that needs a gradient, its gradient is row-sparse (`_GatherRows`)."""
    if rows is None:
        return p
    if sparse and p.requires_grad and torch.is_grad_enabled():
        return _GatherRows.apply(p, rows)
    return p.index_select(0, rows)


class TemporalHierarchy:
    """Nodes of a binary hierarchy of time segments over [t0, t1] (module docstring).

    Node ids are heap-ordered: level l, segment s -> ``2^l - 1 + s``; there are
    ``2^L - 1`` nodes for L levels. ``levels=0`` is no hierarchy (every Gaussian in
    one node that covers all time)."""

    def __init__(self, levels: int, t0: float, t1: float):
        if levels < 0 or levels > 16:
            raise ValueError(f"hierarchy levels must be in 0..16, got {levels}")
        self.levels = int(levels)
        self.t0, self.t1 = float(t0), float(t1)
        self.span = max(self.t1 - self.t0, 1e-9)
        self._index_key = None
        self._index_nodes: Optional[Tensor] = None
        self._order: Optional[Tensor] = None
        self._offsets: Optional[Tensor] = None

    @property
    def num_nodes(self) -> int:
        return max(1, 2 ** self.levels - 1)

    def segment(self, level: int, t: float) -> int:
        """The segment of `level` that holds time `t` (times outside [t0, t1] clamp to the ends)."""
        n = 2 ** level
        return min(max(int(math.floor((t - self.t0) / self.span * n)), 0), n - 1)

    def active_nodes(self, t: float) -> list:
        """The L nodes (one per level) whose segments cover time `t`."""
        if self.levels == 0:
            return [0]
        return [2 ** l - 1 + self.segment(l, t) for l in range(self.levels)]

    def node_bounds(self, node: int) -> Tuple[float, float]:
        """[start, end] time of a node's segment."""
        level = int(math.floor(math.log2(node + 1)))
        s = node + 1 - 2 ** level
        d = self.span / 2 ** level
        return self.t0 + s * d, self.t0 + (s + 1) * d

    @torch.no_grad()
    def assign(self, times: Tensor, sigma_t: Tensor) -> Tensor:
        """The node of each Gaussian [N] (float, for storage beside the parameters): the
        finest level whose single segment holds [time - SUPPORT sigma, time + SUPPORT sigma]."""
        if self.levels == 0:
            return torch.zeros_like(times)
        lo = (times - SUPPORT * sigma_t - self.t0) / self.span
        hi = (times + SUPPORT * sigma_t - self.t0) / self.span
        node = torch.zeros_like(times)
        for l in range(1, self.levels):
            n = 2 ** l
            a = torch.floor(lo.clamp(0, 1 - 1e-7) * n)
            b = torch.floor(hi.clamp(0, 1 - 1e-7) * n)
            inside = (a == b) & (lo >= 0) & (hi <= 1)
            node = torch.where(inside, (n - 1) + a, node)
        return node

    def rows(self, nodes: Tensor, t: float) -> Tensor:
        """Indices (int64, ascending) of the Gaussians in the nodes that cover `t`; the index
        (an argsort by node and per-node offsets) is rebuilt only when `nodes` changed."""
        key = (nodes._version, nodes.shape[0], nodes.device)
        if nodes is not self._index_nodes or key != self._index_key:  # a strong reference: no id() reuse
            ids = nodes.detach().long().clamp(0, self.num_nodes - 1)
            counts = torch.bincount(ids, minlength=self.num_nodes)
            self._order = torch.sort(ids, stable=True).indices
            self._offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).tolist()
            self._index_key, self._index_nodes = key, nodes
        parts = [self._order[self._offsets[n]:self._offsets[n + 1]] for n in self.active_nodes(t)]
        parts = [p for p in parts if p.numel()]
        if not parts:
            return torch.zeros(0, dtype=torch.int64, device=nodes.device)
        return torch.sort(torch.cat(parts)).values


class DynamicModel(Model):
    """Base of the dynamic model kinds (module docstring). Subclasses hold per-Gaussian
    ``times`` [N,1] (temporal centre) and ``scales_t`` [N,1] (log temporal standard
    deviation, or the equivalent width of the model's temporal opacity), a shared
    ``time_range`` [2] (the data's first and last time), ``time_prior`` [2] (`time_params`)
    and, with a hierarchy,
    ``nodes`` [N] (no gradient); they implement ``_opacity_at(rows, t)``,
    ``_gaussians_at(rows, t, degree)`` and ``splats_at(t)``."""

    requires = ("time",)
    default_scene = "dynamic"
    batch_views = False  # each time has its own geometry

    def __init__(self, config, params, scene_scale: float = 1.0):
        super().__init__(config, params, scene_scale)
        if "time_range" not in self.params:
            raise ValueError(f"{self.name}: the parameters lack 'time_range'")
        for k in ("time_range", "time_prior", "nodes", "knn", "knn_block"):
            if k in self.params:
                self.params[k].requires_grad_(False)
        t0, t1 = self.time_range
        levels = int(getattr(config, "hierarchy_levels", 0))
        if levels and "nodes" not in self.params:
            raise ValueError(f"{self.name}: hierarchy_levels={levels} but the parameters have no 'nodes' "
                             "(a model trained without the hierarchy keeps hierarchy_levels=0)")
        self.hierarchy = TemporalHierarchy(levels, t0, t1) if levels else None
        self._nodes_seen = self.params["nodes"] if "nodes" in self.params else None
        self.sh_interval = max(1, int(getattr(config, "sh_degree_interval", 1000)))

    # ------------------------------------------------------------------ time
    @property
    def time_range(self) -> Tuple[float, float]:
        """(first, last) time of the data the model was trained on."""
        a, b = self.params["time_range"].detach().cpu().tolist()
        return float(a), float(b)

    def summary(self) -> str:
        t0, t1 = self.time_range
        h = f", temporal hierarchy of {self.hierarchy.levels} levels" if self.hierarchy else ""
        return f"{self.name}, time {t0:g}..{t1:g}{h}"

    def sh_degree_at(self, step: Optional[int]) -> int:
        d = int(getattr(self.config, "sh_degree", 0))
        return d if step is None else min(step // self.sh_interval, d)

    def _rows(self, name: str, rows: Optional[Tensor]) -> Tensor:
        """Parameter `name` at `rows` (None: all). With the temporal hierarchy the gradient is
        row-sparse: a training step touches only the segments that cover its frame."""
        return gather_rows(self.params[name], rows, sparse=self.hierarchy is not None)

    def candidate_rows(self, t: float) -> Optional[Tensor]:
        """The rows the hierarchy offers at `t` (None: all rows)."""
        if self.hierarchy is None:
            return None
        return self.hierarchy.rows(self.params["nodes"], t)

    def alive_rows(self, t: float) -> Optional[Tensor]:
        """Rows that can draw something at `t`: the hierarchy's candidates whose opacity at t
        reaches the rasterizer's threshold (None: every row)."""
        rows = self.candidate_rows(t)
        with torch.no_grad():
            op = self._opacity_at(rows, t)
            keep = op >= ALPHA_THRESHOLD
            if rows is None:
                if bool(keep.all()):
                    return None
                return keep.nonzero().squeeze(1)
            return rows[keep]

    def gaussians(self, cameras: Cameras, settings: RenderSettings = RenderSettings(), step: Optional[int] = None):
        t = time_of(cameras, self.name)
        if self.in_warmup(step):  # time frozen: every Gaussian at its temporal centre, fully present
            return self._gaussians_at(self.candidate_rows(t), t, self.sh_degree_at(step), frozen=True)
        rows = self.alive_rows(t)
        return self._gaussians_at(rows, t, self.sh_degree_at(step))

    def in_warmup(self, step: Optional[int]) -> bool:
        """Whether training step `step` is in the static warm-up (``static_warmup`` x the run: the
        model trains as a static one, time frozen, so that geometry every view agrees on comes
        first, as deformable-Gaussian methods warm up; it keeps monocular video from fitting
        each frame with its own short-lived Gaussians). Never outside training (step None)."""
        its = getattr(self, "_iterations", None)
        if step is None or its is None or "time_prior" not in self.params:
            return False
        return step < round(float(self.params["time_prior"][1]) * its)

    def learning_rates(self, step: int, iterations: int) -> Dict[str, float]:
        self._iterations = iterations  # the warm-up and loss schedules are fractions of the run
        return self._learning_rates(step, iterations)

    def _learning_rates(self, step: int, iterations: int) -> Dict[str, float]:
        raise NotImplementedError

    def _opacity_at(self, rows: Optional[Tensor], t: float) -> Tensor:
        raise NotImplementedError

    def _gaussians_at(self, rows: Optional[Tensor], t: float, degree: int, frozen: bool = False):
        """The Gaussians `rows` at time `t`; `frozen`: each at its own temporal centre (dt = 0,
        temporal opacity 1), the static warm-up."""
        raise NotImplementedError

    def splats_at(self, t: float) -> Dict[str, Tensor]:
        """The 3D Gaussians of instant `t` as a static splats dict (`splat.io.save`'s layout),
        Gaussians invisible at t left out: what ``splat-export RUN frame.ply --time T`` writes.
        Raises ``ValueError`` for a model with no static form (a feature decoder)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def update(self, step: int) -> Dict[str, int]:
        """Re-assign hierarchy nodes every ``hierarchy_every`` steps (after density control)."""
        every = int(getattr(self.config, "hierarchy_every", 100))
        if self.hierarchy is None:
            return {}
        # density control replaced the parameters (new children sit in their parent's node, their
        # temporal centres moved): re-assign now; else every `every` steps
        changed = self.params["nodes"] is not getattr(self, "_nodes_seen", None)
        self._nodes_seen = self.params["nodes"]
        if not changed and (every <= 0 or step == 0 or step % every):
            return {}
        with torch.no_grad():
            nodes = self.params["nodes"]
            new = self.hierarchy.assign(self.params["times"][:, 0], self.sigma_t())
            moved = int((new != nodes).sum())
            if moved:
                nodes.copy_(new)  # in place: no gradient, no optimizer state; bumps the index's version
        return {"moved": moved}

    def assign_nodes(self) -> None:
        """Put every Gaussian in its hierarchy node (a new model; training re-assigns in `update`)."""
        with torch.no_grad():
            self.params["nodes"].copy_(self.hierarchy.assign(self.params["times"][:, 0], self.sigma_t()))

    def sigma_t(self) -> Tensor:
        """Temporal standard deviation of every Gaussian [N] (what the hierarchy assigns by)."""
        return (torch.exp(2 * self.params["scales_t"][:, 0]) + self.min_var_t).sqrt()

    @property
    def min_var_t(self) -> float:
        """The floor on every Gaussian's temporal variance: (``min_scale_t`` x the data's frame
        interval)^2, resolved when the model was made (`time_prior`). Without it a Gaussian can
        shrink to one instant, where a monocular video has a single view to fit: floaters that
        each explain one training frame."""
        if "time_prior" not in self.params:
            return 0.0
        s = float(self.params["time_prior"][0])
        return s * s


@dataclasses.dataclass
class DynamicOptions:
    """The options every dynamic kind has (its ``Config`` derives from this): the monocular priors
    and the temporal hierarchy."""

    static_warmup: Optional[float] = None
    """Fraction of the run trained as a static model first (time frozen: each Gaussian at its temporal
    centre, fully present), so geometry all views agree on comes before motion. Default: 0.15 for
    monocular video (fewer than 2 training views per instant), 0 for multi-view video."""
    min_scale_t: Optional[float] = None
    """Floor on the temporal standard deviation, in frame intervals of the training data, so that a
    Gaussian lives over a few frames and several views see it. Default: 1 for monocular video, 0
    (no floor) for multi-view video."""
    hierarchy_levels: int = 0
    """Temporal hierarchy levels (0: off). Level l splits the sequence into 2^l segments; a frame
    renders only the nodes covering it (long videos)."""
    hierarchy_every: int = 100
    """Re-assign the Gaussians to hierarchy nodes every this many steps."""


def check_dynamic_options(config, flag: str) -> None:
    """Raise ``ValueError`` for the options every dynamic kind has (SH degree, initial opacity,
    static warm-up, temporal floor, hierarchy levels), naming them as ``--<flag>.*``."""
    if not 0 <= config.sh_degree <= 3:
        raise ValueError(f"--{flag}.sh-degree must be 0..3, got {config.sh_degree}")
    if not 0 < config.init_opacity < 1:
        raise ValueError(f"--{flag}.init-opacity must be in (0, 1), got {config.init_opacity}")
    for name in ("static_warmup", "min_scale_t"):
        v = getattr(config, name)
        if v is not None and not (v >= 0 and (name != "static_warmup" or v < 1)):
            raise ValueError(f"--{flag}.{name.replace('_', '-')} must be in [0, 1) / >= 0, got {v}")
    if not 0 <= config.hierarchy_levels <= 16:
        raise ValueError(f"--{flag}.hierarchy-levels must be 0..16, got {config.hierarchy_levels}")


# ----------------------------------------------------------------------------- shared initialisation


def with_nodes(params: Mapping[str, Tensor], levels: int):
    """(params with a ``nodes`` entry when a hierarchy is asked for, whether the nodes are new
    and must be assigned). A checkpoint's saved nodes are kept as they are (exact resume)."""
    if not levels or "nodes" in params:
        return params, False
    params = dict(params)
    params["nodes"] = torch.zeros(params["means"].shape[0], dtype=params["means"].dtype)
    return params, True


def init_times(n: int, time_range: Tuple[float, float], rng: np.random.Generator,
               init_scale_t: float) -> Tuple[np.ndarray, np.ndarray]:
    """Temporal centres uniform over `time_range` and log temporal scales `init_scale_t` x span, [N,1] each."""
    t0, t1 = time_range
    span = max(t1 - t0, 1e-6)
    times = rng.uniform(t0, t1, size=(n, 1)) if t1 > t0 else np.full((n, 1), t0)
    scales_t = np.full((n, 1), math.log(max(init_scale_t * span, 1e-6)))
    return times.astype(np.float32), scales_t.astype(np.float32)


def frame_interval(dataset) -> float:
    """The median interval between consecutive distinct training times (0 for one instant)."""
    times = np.unique(np.asarray(dataset.train.times, dtype=np.float64))
    return float(np.median(np.diff(times))) if len(times) > 1 else 0.0


MONOCULAR_VIEWS = 2.0
"""Data with fewer training views per instant than this is treated as monocular video."""


def is_monocular(dataset) -> bool:
    """Whether the training views average fewer than `MONOCULAR_VIEWS` per distinct time (a
    D-NeRF-style monocular video, one moving camera) rather than multi-view video."""
    times = np.asarray(dataset.train.times)
    return len(times) / max(len(np.unique(times)), 1) < MONOCULAR_VIEWS


def resolve(value: Optional[float], dataset, monocular: float, multiview: float) -> float:
    """An option that defaults by the kind of video: `value` when given, else `monocular` or
    `multiview` (`is_monocular`)."""
    if value is not None:
        return float(value)
    return monocular if is_monocular(dataset) else multiview


def time_params(dataset, config) -> Dict[str, Tensor]:
    """The shared time parameters of a new dynamic model: ``time_range`` [2] (first and last
    time) and ``time_prior`` [2]: the floor on the temporal standard deviation (``min_scale_t``
    frame intervals) and the static warm-up fraction, both resolved for the data now (monocular
    video: 1 frame interval and 0.15 of the run; multi-view: neither) and kept with the model,
    so a resumed run and a loaded model behave as the one that was trained."""
    floor = resolve(getattr(config, "min_scale_t", None), dataset, 1.0, 0.0) * frame_interval(dataset)
    warm = resolve(getattr(config, "static_warmup", None), dataset, 0.15, 0.0)
    return {"time_range": torch.tensor(dataset_time_range(dataset), dtype=torch.float32),
            "time_prior": torch.tensor([floor, warm], dtype=torch.float32)}


def dataset_time_range(dataset) -> Tuple[float, float]:
    """(first, last) time of a dataset's views; raises ``ValueError`` for data without time."""
    times = [s.times for s in (dataset.train, dataset.test) if s.times is not None and len(s.times)]
    if not times:
        raise ValueError(f"{getattr(dataset, 'root', 'the data')}: the views have no time; a dynamic model needs "
                         "D-NeRF (per-frame 'time') or multi-view video data")
    allt = np.concatenate(times)
    return float(allt.min()), float(allt.max())
