"""Adaptive density control (3DGS; defaults of gsplat's DefaultStrategy).

Every `refine_every` steps between `refine_start_iter` and `refine_stop_iter`:
- the view-space positional gradient of each Gaussian (its 2D-mean gradient in
  NDC-like units: pixels * 2 / image size) is averaged over the views that saw it;
- where it exceeds `grow_grad2d`, small Gaussians (max scale <= grow_scale3d *
  scene_scale) are cloned and large ones split in two (scales / 1.6);
- Gaussians with opacity below `prune_opa` are removed, and after the first
  opacity reset also those larger than `prune_scale3d * scene_scale`.
Every `reset_every` steps opacities are clamped to 2 * prune_opa.
`absgrad=True` accumulates |gradient| per pixel instead (AbsGS; use a higher
threshold, e.g. 0.0008).
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Dict

import torch
from tyro.conf import arg

from .ops import duplicate, remove, rendered_pairs, reset_opacity, split
from .base import Strategy


@torch.no_grad()
def accumulate_grad2d(params, state, info, absgrad: bool = False) -> None:
    """Add each rendered Gaussian's view-space positional gradient norm (its 2D-mean gradient
    in units of half the image size, times the batch size C to undo the loss's mean over
    views; AbsGS's |gradient| sum with `absgrad`) to ``state["grad2d"]`` and count the view in
    ``state["count"]`` (both [N], made or re-made at the parameters' size). Rows follow
    ``info["param_ids"]`` when the render had a subset. Raises ``ValueError`` when the
    gradient is missing."""
    m2d = info["means2d"]
    g = getattr(m2d, "absgrad", None) if absgrad else m2d.grad
    if g is None:
        raise ValueError("ADCStrategy: no gradient on info['means2d']"
                         + (" (absgrad=True needs rasterize(..., absgrad=True))" if absgrad else ""))
    g = g.clone()
    C = g.shape[0]
    g[..., 0] *= info["width"] / 2.0 * C
    g[..., 1] *= info["height"] / 2.0 * C
    n = params["means"].shape[0]
    if state["grad2d"] is None or state["grad2d"].shape[0] != n:
        state["grad2d"] = torch.zeros(n, device=g.device)
        state["count"] = torch.zeros(n, device=g.device)
    cam, rid, gid = rendered_pairs(info)
    state["grad2d"].index_add_(0, gid, g[cam, rid].norm(dim=-1).float())
    state["count"].index_add_(0, gid, torch.ones_like(gid, dtype=torch.float32))


@torch.no_grad()
def prune_step(params, optimizers, state, step: int, prune_opa: float, prune_scale3d: float,
               reset_every: int) -> Dict[str, int]:
    """3DGS's pruning: remove Gaussians with opacity below `prune_opa` and, once the first opacity
    reset (every `reset_every` steps) is behind, those whose largest scale exceeds
    `prune_scale3d` * the scene scale. Returns ``{"prune": count}``."""
    prune = torch.sigmoid(params["opacities"].flatten()) < prune_opa
    if reset_every > 0 and step > reset_every:
        prune |= torch.exp(params["scales"]).max(-1).values > prune_scale3d * state["scene_scale"]
    n = int(prune.sum())
    if n:
        remove(params, optimizers, state, prune)
    return {"prune": n}


def scaled_schedule(strategy, factor: float, batch: int = 1):
    """A refinement schedule (``refine_start_iter``, ``refine_stop_iter``, ``refine_every``,
    ``reset_every``: ADC's, SteepGS's) for a run `factor` times as long as 30k steps: start,
    stop and reset steps are multiplied by `factor`. `refine_every` shrinks no lower than
    100 views (100 / `batch` steps of `batch` views), so each decision still averages gradients
    over many views (scaling it down with short runs makes the count grow geometrically)."""
    floor = max(1, min(strategy.refine_every, 100) // max(1, int(batch)))
    return dataclasses.replace(
        strategy, refine_start_iter=int(strategy.refine_start_iter * factor),
        refine_stop_iter=int(strategy.refine_stop_iter * factor),
        refine_every=max(floor, int(strategy.refine_every * factor)),
        reset_every=int(strategy.reset_every * factor))


@dataclasses.dataclass
class ADCStrategy(Strategy):
    """Adaptive density control (module docstring); each alias is the option's name from
    before the strategies were named (`--strategy.X`)."""

    prune_opa: Annotated[float, arg(aliases=("--strategy.prune-opa",))] = 0.005
    """Remove Gaussians whose opacity falls below this."""
    grow_grad2d: Annotated[float, arg(aliases=("--strategy.grow-grad2d",))] = 0.0002
    """Average 2D-mean gradient above which a Gaussian is cloned or split."""
    grow_scale3d: Annotated[float, arg(aliases=("--strategy.grow-scale3d",))] = 0.01
    """Gaussians with max scale up to this fraction of the scene scale are cloned, larger ones split."""
    prune_scale3d: Annotated[float, arg(aliases=("--strategy.prune-scale3d",))] = 0.1
    """After the first opacity reset, remove Gaussians larger than this fraction of the scene scale."""
    refine_start_iter: Annotated[int, arg(aliases=("--strategy.refine-start-iter",))] = 500
    """First step of density control (clone, split, prune)."""
    refine_stop_iter: Annotated[int, arg(aliases=("--strategy.refine-stop-iter",))] = 15_000
    """Density control stops at this step."""
    refine_every: Annotated[int, arg(aliases=("--strategy.refine-every",))] = 100
    """Steps between two density-control rounds."""
    reset_every: Annotated[int, arg(aliases=("--strategy.reset-every",))] = 3000
    """Clamp opacities to 2 * prune_opa every this many steps (0: never)."""
    absgrad: Annotated[bool, arg(aliases=("--strategy.absgrad",))] = False
    """Use AbsGS's absolute 2D-mean gradient (the renderer must be called with absgrad=True)."""
    revised_opacity: Annotated[bool, arg(aliases=("--strategy.revised-opacity",))] = False
    """Split with the opacity correction of 'Revising Densification in Gaussian Splatting'."""
    max_gaussians: Annotated[int, arg(aliases=("--strategy.max-gaussians",))] = 0
    """Stop growing beyond this many Gaussians (0: no limit)."""

    def check(self) -> None:
        """Raise ``ValueError`` for options ADC cannot run with."""
        if self.refine_every < 1 or self.reset_every < 0:
            raise ValueError(f"--adc: refine-every must be >= 1 and reset-every >= 0, got {self.refine_every}, "
                             f"{self.reset_every}")

    def initialize_state(self, scene_scale: float = 1.0) -> Dict[str, Any]:
        return {"scene_scale": float(scene_scale), "grad2d": None, "count": None}

    def step_pre_backward(self, params, optimizers, state, step, info) -> None:
        if not info["means2d"].requires_grad:
            raise ValueError("ADCStrategy: info['means2d'] does not require grad; render with gradients enabled")
        info["means2d"].retain_grad()

    def step_post_backward(self, params, optimizers, state, step, info, generator=None) -> Dict[str, int]:
        events: Dict[str, int] = {}
        if step >= self.refine_stop_iter:
            return events
        self._update_state(params, state, info)
        if step > self.refine_start_iter and step % self.refine_every == 0:
            events.update(self._grow(params, optimizers, state, step, generator))
            events.update(self._prune(params, optimizers, state, step))
            state["grad2d"].zero_()
            state["count"].zero_()
        if self.reset_every > 0 and step % self.reset_every == 0 and step > 0:
            reset_opacity(params, optimizers, state, 2.0 * self.prune_opa)
            events["reset"] = 1
        return events

    def _update_state(self, params, state, info) -> None:
        accumulate_grad2d(params, state, info, self.absgrad)

    @torch.no_grad()
    def _grow(self, params, optimizers, state, step, generator) -> Dict[str, int]:
        grads = state["grad2d"] / state["count"].clamp_min(1)
        high = grads > self.grow_grad2d
        small = torch.exp(params["scales"]).max(-1).values <= self.grow_scale3d * state["scene_scale"]
        dup = high & small
        spl = high & ~small
        if self.max_gaussians > 0:
            room = self.max_gaussians - params["means"].shape[0]
            if room <= 0:
                return {"clone": 0, "split": 0}
            # keep the strongest candidates that fit
            cand = (dup | spl).nonzero().squeeze(1)
            if len(cand) > room:
                keep = cand[grads[cand].argsort(descending=True)[:room]]
                mask = torch.zeros_like(dup)
                mask[keep] = True
                dup &= mask
                spl &= mask
        n_dup, n_split = int(dup.sum()), int(spl.sum())
        if n_dup:
            duplicate(params, optimizers, state, dup)
        spl = torch.cat([spl, torch.zeros(n_dup, dtype=torch.bool, device=spl.device)])
        if n_split:
            split(params, optimizers, state, spl, generator=generator, revised_opacity=self.revised_opacity)
        return {"clone": n_dup, "split": n_split}

    def _prune(self, params, optimizers, state, step) -> Dict[str, int]:
        return prune_step(params, optimizers, state, step, self.prune_opa, self.prune_scale3d, self.reset_every)

    def scaled(self, factor: float, batch: int = 1) -> "ADCStrategy":
        return scaled_schedule(self, factor, batch)
