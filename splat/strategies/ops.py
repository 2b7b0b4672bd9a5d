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


def rendered_pairs(info):
    """The (camera, Gaussian) pairs a render drew, from its `info`: (cam [P], rid [P] index into
    the render's Gaussians, gid [P] the parameter rows they are: ``info["param_ids"][rid]`` for
    a model that rendered a subset, else rid)."""
    cam, rid = (info["radii"] > 0).all(-1).nonzero(as_tuple=True)
    ids = info.get("param_ids")
    return cam, rid, (rid if ids is None else ids[rid])


@torch.no_grad()
def visible_rows(info, n: int) -> Tensor:
    """[n] bool: the parameter rows (of a model with `n` Gaussians) that a render drew in at least
    one of its cameras (radii > 0), from its `info` (`rendered_pairs`): what a sparse optimizer
    updates."""
    ids = info.get("param_ids")
    seen = (info["radii"] > 0).all(-1).any(0)
    if ids is None and seen.shape[0] == n:
        return seen
    rows = torch.zeros(n, dtype=torch.bool, device=seen.device)
    rows[seen.nonzero().squeeze(1) if ids is None else ids[seen]] = True
    return rows


@torch.no_grad()
def blend_weights(info) -> Tensor:
    """Each rendered Gaussian's total blend weight in each camera of a render, sum over pixels of
    alpha * T (in pixels: 1 = one pixel's worth of colour), from `render_gaussians`' `info`
    (its ``gaussians``, cameras and settings) -> [C, M] for its M Gaussians.

    One more render of the same Gaussians with a one-channel colour of ones, whose colour
    gradient is exactly that sum (LightGaussian's "global significance" without the volume
    term). Raises ``ValueError`` when the info has no ``gaussians`` (a render not made
    through `render_gaussians`)."""
    from ..render import rasterize

    g = info.get("gaussians")
    if g is None:
        raise ValueError("blend_weights: the render info has no 'gaussians' (render through render_gaussians)")
    V, K = info["viewmats"].detach(), info["Ks"].detach()
    C, M = V.shape[0], len(g)
    ones = torch.ones(C, M, 1, dtype=g.means.dtype, device=g.means.device, requires_grad=True)
    det = lambda t: None if t is None else t.detach()  # noqa: E731
    with torch.enable_grad():
        out, _, _ = rasterize(g.means.detach(), det(g.quats), det(g.scales), g.opacities.detach(), ones, V, K,
                              info["width"], info["height"], near_plane=info["near_plane"],
                              far_plane=info["far_plane"], eps2d=info["eps2d"], backend=info["backend"],
                              rasterize_mode=info["rasterize_mode"], covars=det(g.covars))
        w, = torch.autograd.grad(out.sum(), ones)
    return w[..., 0]


def weight_window_open(step: int, refine_every: int, reset_every: int, window: int) -> bool:
    """Whether step `step` lies in the `window` steps that end at a refinement round (every
    `refine_every` steps) whose blend weights are worth measuring: the window must not start
    within `refine_every` steps after an opacity reset (every `reset_every` steps), while the
    reset opacities are still recovering."""
    if window <= 0 or refine_every <= 0:
        return False
    to_round = (-step) % refine_every  # steps until the next round (0: this step is one)
    if to_round >= window:
        return False
    start = step + to_round - window
    return reset_every <= 0 or start < reset_every or start % reset_every >= refine_every


@torch.no_grad()
def track_blend_weights(params, state: Dict, info) -> None:
    """Raise ``state["max_weight"]`` [N] to each rendered Gaussian's `blend_weights` in this
    step's cameras and count the views that rendered it in ``state["weight_views"]`` [N]
    (both made at the parameters' size when missing or stale). A merged info (views rendered
    one per call, `splat.render.merge_infos`) is measured render by render."""
    if info.get("parts"):
        for part in info["parts"]:
            track_blend_weights(params, state, part)
        return
    n = params["means"].shape[0]
    dev = params["means"].device
    if state.get("max_weight") is None or state["max_weight"].shape[0] != n:
        state["max_weight"] = torch.zeros(n, device=dev)
        state["weight_views"] = torch.zeros(n, device=dev)
    w = blend_weights(info)  # [C, M]
    cam, rid, gid = rendered_pairs(info)
    state["max_weight"].scatter_reduce_(0, gid, w[cam, rid].float(), reduce="amax")
    state["weight_views"].index_add_(0, gid, torch.ones_like(gid, dtype=torch.float32))


@torch.no_grad()
def prune_by_weight(params, optimizers, state: Dict, threshold: float) -> Dict[str, int]:
    """Remove the Gaussians that `track_blend_weights` saw in at least one view and whose blend
    weight stayed below `threshold` pixels in every one (hidden behind others, or too faint
    to matter); Gaussians it never saw are kept. Resets the tracking. Returns
    ``{"prune_weight": count}``."""
    if state.get("max_weight") is None or state["max_weight"].shape[0] != params["means"].shape[0]:
        return {"prune_weight": 0}
    mask = (state["weight_views"] > 0) & (state["max_weight"] < threshold)
    n = int(mask.sum())
    if n:
        remove(params, optimizers, state, mask)
    state["max_weight"].zero_()
    state["weight_views"].zero_()
    return {"prune_weight": n}
