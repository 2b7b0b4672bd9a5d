"""3D Gaussian Splatting as Markov Chain Monte Carlo (Kheradmand et al., NeurIPS 2024), with the
defaults of gsplat's MCMCStrategy.

Training is read as sampling: the Gaussians are samples of a distribution that the loss
defines, Adam's step is a Langevin step without its noise, so noise is added back.

* Every step, each mean moves by Gaussian noise shaped by its own covariance and scaled by
  the means' learning rate, ``noise_lr``, and a gate ``sigmoid(100 (1 - opacity - 0.995))``
  that leaves opaque Gaussians alone (``means += lr * noise_lr * gate * Sigma eps``).
* Every ``refine_every`` steps between ``refine_start_iter`` and ``refine_stop_iter``:
  - relocation: every "dead" Gaussian (opacity <= ``min_opacity``) is moved onto a live
    one sampled with probability proportional to opacity; the sampled Gaussian and its
    N - 1 new copies share ``relocation`` 's opacity and scale, which keep the rendered
    image unchanged to first order (N co-located copies of opacity o' composite to
    1 - (1 - o')^N = o at the centre; the scale keeps the integral of the opacity profile);
  - growth: 5% more Gaussians, added the same way, until ``cap_max``.
  Optimizer moments of the moved and sampled Gaussians restart at zero.
* Regularisers (added to the loss): ``opacity_reg`` |opacity| and ``scale_reg`` |scale|,
  both means over the Gaussians, which push unused Gaussians towards death and so to
  relocation.

Nothing is pruned: the count only grows, from the initial points to ``cap_max``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..backends.torch_ref import quat_scale_to_covar
from ..models.base import per_gaussian_names
from .base import Strategy
from .ops import _mask_state, update_params

__all__ = ["MCMCStrategy", "relocation"]


def relocation(opacities: Tensor, scales: Tensor, ratios: Tensor, n_max: int = 51) -> tuple:
    """The opacity and scale each of `ratios` [M] (>= 1) co-located copies of a Gaussian with
    opacity `opacities` [M] in (0,1) and linear `scales` [M,3] takes (Kheradmand et al., eq. 9):

        o' = 1 - (1 - o)^(1/N)
        s' = o / (sum_{i=1..N} sum_{k=0..i-1} C(i-1, k) (-1)^k o'^(k+1) / sqrt(k+1)) * s

    Returns (new opacities [M], new scales [M,3]). Ratios are clamped to [1, n_max]."""
    N = ratios.clamp(1, n_max).to(opacities.dtype)
    new_o = 1.0 - (1.0 - opacities) ** (1.0 / N)
    denom = torch.zeros_like(opacities)
    n_int = ratios.clamp(1, n_max).long()
    for i in range(1, int(n_int.max()) + 1 if n_int.numel() else 1):
        active = n_int >= i
        term = torch.zeros_like(opacities)
        for k in range(i):
            term = term + math.comb(i - 1, k) * (-1.0) ** k * new_o ** (k + 1) / math.sqrt(k + 1)
        denom = denom + torch.where(active, term, torch.zeros_like(term))
    new_s = (opacities / denom.clamp_min(1e-12))[:, None] * scales
    return new_o, new_s


@torch.no_grad()
def _zero_moments(params, optimizers, rows: Tensor) -> None:
    """Restart the optimizer state (Adam's moments) of the per-Gaussian `rows`."""
    for name in per_gaussian_names(params):
        p = params[name]
        for v in optimizers[name].state.get(p, {}).values():
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == p.shape[0]:
                v[rows] = 0


@dataclasses.dataclass
class MCMCStrategy(Strategy):
    """3DGS as MCMC (module docstring); defaults as gsplat's MCMCStrategy."""

    cap_max: int = 500_000
    """The largest number of Gaussians in a 30k-step run (scaled with the run's length: 33k for 2000
    steps); growth adds 5% per round until it. gsplat's default is 1M, for GPUs; half here, where
    training often runs on CPUs."""
    noise_lr: float = 5e5
    """Scale of the noise on the means, times the means' learning rate."""
    refine_start_iter: int = 500
    refine_stop_iter: int = 25_000
    refine_every: int = 100
    min_opacity: float = 0.005
    """Gaussians at or below this opacity are dead and get relocated."""
    opacity_reg: float = 0.01
    """Weight of the mean opacity in the loss."""
    scale_reg: float = 0.01
    """Weight of the mean (linear) scale in the loss."""
    grow_rate: float = 0.05
    """Fraction of Gaussians added per round until cap_max."""

    def scaled(self, factor: float, batch: int = 1) -> "MCMCStrategy":
        """The schedule of a run `factor` times as long as 30k steps, as gsplat's ``steps_scaler``
        scales MCMC's: start, stop and the interval (so a short run grows and relocates as
        often, per step, as a long one; at least every step), and the cap with them: the
        budget of Gaussians follows the training time a run is given (500k for 30k steps, 33k
        for 2000). Growth compounds at 5% a round, so without the scaled cap a 2000-step run
        would reach the full cap; without the scaled interval it would end with 2.2x its
        initial points (a capture with 1,443 SfM points: 3,139 Gaussians, 1.8 dB below ADC)."""
        return dataclasses.replace(self, refine_start_iter=int(self.refine_start_iter * factor),
                                   refine_stop_iter=int(self.refine_stop_iter * factor),
                                   refine_every=max(1, int(self.refine_every * factor)),
                                   cap_max=max(1, int(self.cap_max * factor)))

    def check(self) -> None:
        """Raise ``ValueError`` for options MCMC cannot run with."""
        if self.refine_every < 1 or self.cap_max < 1 or self.grow_rate < 0 or self.noise_lr < 0:
            raise ValueError(f"--mcmc: refine-every and cap-max must be >= 1, grow-rate and noise-lr >= 0, got "
                             f"{self.refine_every}, {self.cap_max}, {self.grow_rate}, {self.noise_lr}")

    def initialize_state(self, scene_scale: float = 1.0) -> Dict[str, Any]:
        return {"scene_scale": float(scene_scale)}

    def losses(self, params, state, step: int, info: Dict[str, Any]) -> Dict[str, Tensor]:
        out = {}
        if self.opacity_reg > 0:
            out["opacity_reg"] = self.opacity_reg * torch.sigmoid(params["opacities"]).abs().mean()
        if self.scale_reg > 0:
            out["scale_reg"] = self.scale_reg * torch.exp(params["scales"]).abs().mean()
        return out

    def step_post_backward(self, params, optimizers, state, step: int, info: Dict[str, Any],
                           generator: Optional[torch.Generator] = None) -> Dict[str, int]:
        events: Dict[str, int] = {}
        if self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0:
            events["relocated"] = self.relocate(params, optimizers, state, generator)
            events["added"] = self.grow(params, optimizers, state, generator)
        self.inject_noise(params, optimizers["means"].param_groups[0]["lr"], generator)
        return events

    # ------------------------------------------------------------------ the moves
    @torch.no_grad()
    def _sample(self, params, n: int, candidates: Tensor, generator) -> Tensor:
        """`n` indices among `candidates` drawn with replacement, probability ~ opacity."""
        w = torch.sigmoid(params["opacities"].data[candidates]).reshape(-1).double()
        idx = torch.multinomial(w.cpu(), n, replacement=True, generator=generator)
        return candidates[idx.to(candidates.device)]

    @torch.no_grad()
    def _share(self, params, optimizers, sampled: Tensor) -> None:
        """Give each sampled index the opacity and scale it shares with its copies (one per time it
        was sampled; `relocation`) and restart its optimizer moments."""
        counts = torch.bincount(sampled, minlength=params["means"].shape[0])
        uniq = sampled.unique()
        ratios = counts[uniq] + 1  # itself plus its copies
        o = torch.sigmoid(params["opacities"].data[uniq])
        new_o, new_s = relocation(o.clamp(1e-6, 1 - 1e-6), torch.exp(params["scales"].data[uniq]), ratios)
        new_o = new_o.clamp(self.min_opacity, 1 - 1e-6)
        params["opacities"].data[uniq] = torch.logit(new_o)
        params["scales"].data[uniq] = torch.log(new_s.clamp_min(1e-12))
        _zero_moments(params, optimizers, uniq)

    @torch.no_grad()
    def relocate(self, params, optimizers, state, generator=None) -> int:
        """Move every dead Gaussian onto a live one sampled by opacity; returns how many moved."""
        opac = torch.sigmoid(params["opacities"].data).reshape(-1)
        dead = (opac <= self.min_opacity).nonzero().squeeze(1)
        alive = (opac > self.min_opacity).nonzero().squeeze(1)
        if dead.numel() == 0 or alive.numel() == 0:
            return 0
        sampled = self._sample(params, dead.numel(), alive, generator)
        self._share(params, optimizers, sampled)
        for name in per_gaussian_names(params):
            params[name].data[dead] = params[name].data[sampled]
        _zero_moments(params, optimizers, dead)
        return int(dead.numel())

    @torch.no_grad()
    def grow(self, params, optimizers, state, generator=None) -> int:
        """Add min(cap_max, (1 + grow_rate) N) - N Gaussians, copies of live ones sampled by opacity
        (sharing their relocated opacity and scale); returns how many were added."""
        N = params["means"].shape[0]
        n_new = max(0, min(self.cap_max, int((1 + self.grow_rate) * N)) - N)
        if n_new == 0:
            return 0
        opac = torch.sigmoid(params["opacities"].data).reshape(-1)
        alive = (opac > self.min_opacity).nonzero().squeeze(1)
        if alive.numel() == 0:
            return 0
        sampled = self._sample(params, n_new, alive, generator)
        self._share(params, optimizers, sampled)
        update_params(params, optimizers, lambda _, p: torch.cat([p, p[sampled]]),
                      lambda _, v: torch.cat([v, torch.zeros((n_new,) + v.shape[1:], dtype=v.dtype, device=v.device)]))
        _mask_state(state, lambda v: torch.cat([v, v[sampled]]), N)
        return n_new

    @torch.no_grad()
    def inject_noise(self, params, lr: float, generator=None) -> None:
        """means += lr * noise_lr * sigmoid(100 (1 - o - 0.995)) * Sigma eps (eps ~ N(0, I))."""
        means = params["means"]
        o = torch.sigmoid(params["opacities"].data).reshape(-1)
        gate = torch.sigmoid(100.0 * ((1.0 - o) - 0.995))
        cov = quat_scale_to_covar(params["quats"].data, torch.exp(params["scales"].data))
        eps = torch.randn(means.shape, generator=generator, dtype=means.dtype,
                          device="cpu" if generator is None else generator.device).to(means.device)
        noise = torch.einsum("nij,nj->ni", cov, eps) * (gate * lr * self.noise_lr)[:, None]
        means.data += noise
