"""Operations that change the set of Gaussians while keeping optimizer state aligned.

They work on any model kind's `GaussianParams` (or a plain splats ParameterDict):
only the per-Gaussian entries change; `split` samples the children from the
Gaussian that ``means``, ``quats`` and ``scales`` (log) describe."""
from __future__ import annotations

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
          revised_opacity: bool = False) -> None:
    """Replace each Gaussian in `mask` by two, sampled from it, with scales / 1.6 (3DGS)."""
    sel = mask.nonzero().squeeze(1)
    rest = (~mask).nonzero().squeeze(1)
    n = params["means"].shape[0]
    scales = torch.exp(params["scales"][sel])
    R = quat_to_rotmat(params["quats"][sel])
    # drawn on the generator's device (the CPU for the trainer's), so runs are reproducible anywhere
    noise = torch.randn((2, len(sel), 3), generator=generator).to(scales.device)
    samples = torch.einsum("nij,bnj->bni", R, scales * noise)

    def param_fn(name: str, p: Tensor) -> Tensor:
        if name == "means":
            new = (p[sel] + samples).reshape(-1, 3)
        elif name == "scales":
            new = torch.log(scales / 1.6).repeat(2, 1)
        elif name == "opacities" and revised_opacity:
            new = torch.logit(1.0 - torch.sqrt(1.0 - torch.sigmoid(p[sel]))).repeat(2)
        else:
            new = p[sel].repeat((2,) + (1,) * (p.dim() - 1))
        return torch.cat([p[rest], new])

    update_params(params, optimizers, param_fn,
                  lambda _, v: torch.cat([v[rest], torch.zeros((2 * len(sel),) + v.shape[1:], dtype=v.dtype, device=v.device)]))
    _mask_state(state, lambda v: torch.cat([v[rest], v[sel].repeat((2,) + (1,) * (v.dim() - 1))]), n)


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
