"""Operations that change the set of Gaussians while keeping optimizer state aligned.

They work on any model kind's `GaussianParams` (or a plain splats ParameterDict):
only the per-Gaussian entries change; `split` samples the children from the
Gaussian that ``means``, ``quats`` and ``scales`` (log) describe, in space and
time for dynamic models: with ``times`` and ``scales_t`` (log) the children's
temporal centres are drawn from the parent's temporal Gaussian too, and with a
4D rotation (``quats_r``, `splat.models.fourdgs`) from the full XYZT Gaussian."""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from ..backends.torch_ref import quat_to_rotmat
from ..models.base import per_gaussian_names


@torch.no_grad()
def update_params(params: torch.nn.ParameterDict, optimizers: Dict[str, torch.optim.Optimizer],
                  param_fn: Callable[[str, Tensor], Tensor], state_fn: Callable[[str, Tensor], Tensor],
                  names: Optional[list] = None) -> None:
    """Replace each per-Gaussian parameter (`names`, default all of them: see
    `splat.models.base.per_gaussian_names`) by `param_fn(name, p)` and each per-Gaussian
    optimizer state tensor (Adam's moments) by `state_fn(key, v)`, re-registering the new
    parameter with its optimizer. Shared parameters (a decoder's weights) are left alone."""
    for name in names or per_gaussian_names(params):
        old = params[name]
        new = torch.nn.Parameter(param_fn(name, old.data), requires_grad=old.requires_grad)
        opt = optimizers[name]
        st = opt.state.pop(old, None)
        if st is not None:
            for k, v in list(st.items()):
                if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == old.shape[0]:
                    st[k] = state_fn(k, v)
            opt.state[new] = st
        opt.param_groups[0]["params"] = [new]
        params[name] = new


def _mask_state(state: Dict, fn: Callable[[Tensor], Tensor], n: int) -> None:
    for k, v in state.items():
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n:
            state[k] = fn(v)


@torch.no_grad()
def duplicate(params, optimizers, state: Dict, mask: Tensor) -> None:
    """Append a copy of the Gaussians in `mask` (their optimizer moments start at zero)."""
    idx = mask.nonzero().squeeze(1)
    n = params["means"].shape[0]
    update_params(params, optimizers, lambda _, p: torch.cat([p, p[idx]]),
                  lambda _, v: torch.cat([v, torch.zeros((len(idx),) + v.shape[1:], dtype=v.dtype, device=v.device)]))
    _mask_state(state, lambda v: torch.cat([v, v[idx]]), n)


@torch.no_grad()
def split(params, optimizers, state: Dict, mask: Tensor, generator: Optional[torch.Generator] = None,
          revised_opacity: bool = False, offsets: Optional[Tensor] = None, scale_factor: float = 1.6) -> None:
    """Replace each Gaussian in `mask` by two, sampled from it, with scales / `scale_factor`
    (3DGS: 1.6). `offsets` [2, n, 3] (n = mask.sum()), when given, are the two children's
    displacements from the parent instead of samples (SteepGS's steepest-descent pair); the
    children then keep the parent's time. `revised_opacity` gives each child
    1 - sqrt(1 - o), so the pair composites to the parent's opacity where they overlap."""
    sel = mask.nonzero().squeeze(1)
    rest = (~mask).nonzero().squeeze(1)
    n = params["means"].shape[0]
    scales = torch.exp(params["scales"][sel])
    dynamic = "times" in params and "scales_t" in params
    # drawn on the generator's device (the CPU for the trainer's), so runs are reproducible anywhere
    noise = torch.randn((2, len(sel), 4 if dynamic else 3), generator=generator).to(scales.device)
    dt = None
    if offsets is not None:
        if tuple(offsets.shape) != (2, len(sel), 3):
            raise ValueError(f"split: offsets must be [2, {len(sel)}, 3], got {list(offsets.shape)}")
        samples = offsets.to(scales)
    elif dynamic and "quats_r" in params:  # an XYZT Gaussian: sample in 4D
        from ..models.fourdgs import rotation_4d

        s4 = torch.cat([scales, torch.exp(params["scales_t"][sel])], -1)
        R4 = rotation_4d(params["quats"][sel], params["quats_r"][sel])
        samples4 = torch.einsum("nij,bnj->bni", R4, s4 * noise)
        samples, dt = samples4[..., :3], samples4[..., 3:]
    else:
        R = quat_to_rotmat(params["quats"][sel])
        samples = torch.einsum("nij,bnj->bni", R, scales * noise[..., :3])
        if dynamic:  # a temporal radial basis: its own 1D Gaussian
            dt = torch.exp(params["scales_t"][sel]) * noise[..., 3:]

    motion = None
    if dt is not None and "motion" in params:  # polynomial motion about the temporal centre: re-centre it
        motion = shift_polynomial(params["motion"][sel], dt)  # [2, n, 3K]: the same paths about the new centres

    def param_fn(name: str, p: Tensor) -> Tensor:
        if name == "means" and motion is not None:
            # the parent's position at the child's centre (the polynomial's constant term) plus the spatial sample
            new = (p[sel] + motion[1] + samples).reshape(-1, 3)
        elif name == "motion" and motion is not None:
            new = motion[0].reshape(-1, p.shape[1])
        elif name == "quats" and dt is not None and "omega" in params:
            new = (p[sel] + params["omega"][sel] * dt).reshape(-1, 4)
        elif name == "means":
            new = (p[sel] + samples).reshape(-1, 3)
        elif name == "scales":
            new = torch.log(scales / scale_factor).repeat(2, 1)
        elif name == "times" and dt is not None:
            new = (p[sel] + dt).reshape(-1, 1)
        elif name == "scales_t" and dt is not None:
            new = (p[sel] - math.log(scale_factor)).repeat(2, 1)
        elif name == "opacities" and revised_opacity:
            new = torch.logit(1.0 - torch.sqrt(1.0 - torch.sigmoid(p[sel]))).repeat(2)
        else:
            new = p[sel].repeat((2,) + (1,) * (p.dim() - 1))
        return torch.cat([p[rest], new])

    update_params(params, optimizers, param_fn,
                  lambda _, v: torch.cat([v[rest], torch.zeros((2 * len(sel),) + v.shape[1:], dtype=v.dtype, device=v.device)]))
    _mask_state(state, lambda v: torch.cat([v[rest], v[sel].repeat((2,) + (1,) * (v.dim() - 1))]), n)


def shift_polynomial(motion: Tensor, d: Tensor):
    """Re-expand sum_k m_k tau^k (m_1..m_K in `motion` [n,3K]) about tau = d ([B,n,1]):
    returns (the coefficients m'_1..m'_K [B,n,3K] in tau' = tau - d, the value at tau = d
    [B,n,3], which is the new constant term)."""
    K = motion.shape[1] // 3
    m = [motion[:, 3 * k:3 * k + 3] for k in range(K)]  # m[k-1] = coefficient of tau^k
    coef = [torch.zeros_like(d.expand(-1, -1, 3)) for _ in range(K + 1)]
    for k in range(1, K + 1):
        for j in range(0, k + 1):
            coef[j] = coef[j] + math.comb(k, j) * m[k - 1] * d ** (k - j)
    return torch.cat(coef[1:], -1) if K else motion.new_zeros(d.shape[:2] + (0,)), coef[0]


@torch.no_grad()
def remove(params, optimizers, state: Dict, mask: Tensor) -> None:
    """Delete the Gaussians in `mask`."""
    keep = (~mask).nonzero().squeeze(1)
    n = params["means"].shape[0]
    update_params(params, optimizers, lambda _, p: p[keep], lambda _, v: v[keep])
    _mask_state(state, lambda v: v[keep], n)


@torch.no_grad()
def reset_opacity(params, optimizers, state: Dict, value: float) -> None:
    """Clamp every opacity to at most `value` and zero its optimizer moments."""
    cap = torch.logit(torch.tensor(value)).item()
    update_params(params, optimizers, lambda _, p: p.clamp_max(cap), lambda _, v: torch.zeros_like(v),
                  names=["opacities"])
