"""The training step of a multi-process run (Grendel: On Scaling Up 3D Gaussian Splatting
Training, Zhao et al. 2024), used by `splat.train.loop.Trainer` when launched by torchrun.

Each process (rank) holds a shard of the Gaussians with their optimizer moments and
density-control statistics (`splat.distributed.shards`). One step:

1. every rank projects its own Gaussians into the step's B views (no rasterization) and
   counts their Gaussian-tile intersections per tile row; the counts are summed over ranks;
2. the B views' tile rows are split into one run of strips per rank with about equal cost
   (`splat.distributed.partition`; cost = intersections + kappa * pixels, kappa fitted to the
   measured render times);
3. sparse all-to-all: each rank sends every other rank only its Gaussians whose tile
   rectangles meet that rank's strips (with their one-tile halo);
4. each rank renders its strips (tile subsets of the whole image, so every pixel gets
   exactly the Gaussians and order of the whole render) and takes its share of the loss
   (`splat.train.losses.photometric_loss_rows`: L1 and SSIM of its own rows, normalised by
   the whole image), then runs the backward;
5. the received Gaussians' gradients (and their 2D-mean gradients per view, for density
   control) go back to their owners by the reverse all-to-all and are added up there; shared
   parameters (a decoder) are summed over ranks;
6. each rank's optimizer steps its shard; density control acts on the shard from the summed
   2D-mean gradients and the rank's own projection's radii; every ``--dist.rebalance-every``
   steps and after density control, rows move between neighbouring ranks so every shard
   holds the same count again (keeping the global order).

The gradients are the same sums as one process's, in another order; a batch of B views
(``--batch-size``) is split over the ranks, with Adam's sqrt(B) learning-rate scaling
(`splat.optim.adam`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Dict, List

import numpy as np
import torch
from torch import Tensor

from ..backends.torch_ref import tile_bounds
from ..distributed.partition import CostModel, balance, even_split, row_costs, strip_tiles, strips_of, units_of
from ..distributed.shards import (concat_rows, pack_rows, rebalance_plan, shard_bounds, slice_rows, state_rows,
                                  unpack_rows)
from ..distributed.world import World
from ..models.base import GaussianParams
from .losses import photometric_loss_rows

__all__ = ["ShardedStep", "TILE", "check_shardable"]

TILE = 16
_EVENT_KEYS = ("clone", "split", "prune", "relocated", "added", "reset", "prune_weight")
_EVENT_FLAGS = ("reset",)  # every rank reports it; the others are counts, summed


def check_shardable(cfg, model_cls, optimizer_cls) -> None:
    """Raise ``ValueError`` for what the sharded step cannot train: a model whose render needs
    every Gaussian (shadows toward a light) or whose losses span the whole model, an optimizer
    without a plain gradient update (Levenberg-Marquardt), SteepGS (2D conic gradients),
    absgrad, a temporal hierarchy (row-sparse gradients)."""
    if not getattr(model_cls, "shardable", True):
        raise ValueError(f"--model {cfg.model} cannot train on several processes yet: "
                         f"{getattr(model_cls, 'shardable_reason', 'its render needs every Gaussian')}")
    if not getattr(optimizer_cls, "shardable", False):
        raise ValueError(f"--optimizer {cfg.optimizer} cannot train on several processes (its step is not a "
                         f"gradient update); use --optimizer adam")
    if cfg.strategy == "steepgs":
        raise ValueError("--strategy steepgs cannot train on several processes yet (its splitting matrices need "
                         "each view's 2D conic gradients in one place); use --strategy adc or mcmc")
    if getattr(cfg.options("model"), "hierarchy_levels", 0):
        raise ValueError(f"--{cfg.model}.hierarchy-levels cannot train on several processes yet (its row-sparse "
                         f"gradients and node assignments are not exchanged); leave it at 0")
    if getattr(cfg.options("strategy"), "absgrad", False):
        raise ValueError("--adc.absgrad cannot train on several processes yet (per-pixel |gradient| sums do not "
                         "add up over image strips); leave it off")


def rank_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Density control's generator of rank `rank` (rank 0: the one-process run's `step_generator`)."""
    return torch.Generator().manual_seed(seed * 7919 + step + 1 + rank * 1_000_003_001)


class ShardedStep:
    """The sharded state and step of one rank (module docstring). Built by the trainer with the
    whole model's state (every rank the same); keeps rows ``shard_bounds(N, R)[rank]``."""

    def __init__(self, trainer, world: World):
        self.t = trainer
        self.world = world
        self.cost = CostModel()
        self.stats: Dict[str, float] = {k: 0.0 for k in (
            "steps", "project_s", "exchange_s", "render_s", "backward_s", "return_s", "optimizer_s",
            "density_s", "rebalance_s", "bytes_sent", "bytes_naive", "rows_sent", "rows_received",
            "rendered_pixels", "owned_pixels", "render_time_max", "render_time_mean")}
        self.sizes: List[int] = []
        self.total = 0

    # ------------------------------------------------------------------ shards of the whole state
    def own(self, n_total: int):
        """This rank's rows [start, end) of a whole model of `n_total` Gaussians."""
        return shard_bounds(n_total, self.world.size)[self.world.rank]

    def shard(self, splats, optimizer, strategy_state, names, n_total: int):
        """This rank's rows of a whole run's state: the per-Gaussian parameters `names` of
        `splats`, their optimizer state, the strategy's per-Gaussian statistics (tensors of first
        dimension `n_total`); shared parameters (a decoder's weights) and their state whole."""
        a, b = self.own(n_total)
        splats = {k: v[a:b].clone() if k in names else v for k, v in splats.items()}
        if optimizer is not None:
            optimizer = {k: slice_rows(v, n_total, a, b) if k in names else v for k, v in optimizer.items()}
        if strategy_state is not None:
            strategy_state = slice_rows(strategy_state, n_total, a, b)
        return splats, optimizer, strategy_state

    def refresh_sizes(self) -> None:
        self.sizes = self.world.all_gather_sizes(self.t.model.num_gaussians, "the shard sizes")
        self.total = sum(self.sizes)

    def gather(self, splats, optimizer=None, strategy_state=None):
        """The inverse of `shard` on rank 0 (None elsewhere; a collective): the shards' per-Gaussian
        parameters, their optimizer state and the strategy's statistics concatenated in rank order,
        shared entries from rank 0."""
        names = set(self.t.model.params.per_gaussian)
        n = self.t.model.num_gaussians
        got = self.world.gather_objects((n, splats, optimizer, strategy_state), "a gather of the model")
        if got is None:
            return None
        ns = [g[0] for g in got]
        out_splats = {k: torch.cat([g[1][k] for g in got]) if k in names else v for k, v in got[0][1].items()}
        out_opt = None if optimizer is None else {
            k: concat_rows([g[2][k] for g in got], ns) if k in names else v for k, v in got[0][2].items()}
        out_strategy = None if strategy_state is None else concat_rows([g[3] for g in got], ns)
        return out_splats, out_opt, out_strategy

    # ------------------------------------------------------------------ the step
    def train_step(self, step: int) -> dict:
        t, world = self.t, self.world
        cfg, model = t.cfg, t.model
        R, rank = world.size, world.rank
        st = self.stats
        views = t.step_views(step)
        B = len(views)
        t.current_step = step
        t.optimizer.set_learning_rates(model.learning_rates(step, t.iterations))
        cams = [t.train_views.camera(i) for i in views]
        names = model.params.per_gaussian
        n_own = model.num_gaussians
        dev = model.params[names[0]].device

        # 1. project the own shard into every view: tile rectangles, radii (for density control)
        t0 = time.perf_counter()
        rows_min, rows_max, vis, radii_own = [], [], [], []
        costs = []
        tile_rows = [math.ceil(c.height / TILE) for c in cams]
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        with torch.no_grad():
            for v, cam in enumerate(cams):
                info = model.render(cam, t.settings, step=step, tiles=empty).info
                tw, th = math.ceil(cam.width / TILE), tile_rows[v]
                tmin, tmax = tile_bounds(info["means2d"][0], info["radii"][0], TILE, tw, th)
                ids = info.get("param_ids")
                full_min = torch.zeros(n_own, 2, dtype=torch.int32, device=dev)
                full_max = torch.zeros(n_own, 2, dtype=torch.int32, device=dev)
                radii = torch.zeros(n_own, 2, dtype=info["radii"].dtype, device=dev)
                sel = slice(None) if ids is None else ids
                full_min[sel], full_max[sel], radii[sel] = tmin, tmax, info["radii"][0]
                live = (full_max > full_min).all(-1)
                rows_min.append(full_min[:, 1])
                rows_max.append(full_max[:, 1])
                vis.append(live)
                radii_own.append(radii)
                costs.append(row_costs(full_min, full_max, th))
        cost = torch.cat(costs)
        world.all_reduce_(cost, "the tile costs")
        st["project_s"] += time.perf_counter() - t0

        # 2. the pixel partition
        units = units_of(tile_rows)
        pix = np.concatenate([[c.width * min(TILE, c.height - j * TILE) for j in range(n)]
                              for c, n in zip(cams, tile_rows)]).astype(np.float64)
        isect = cost.double().cpu().numpy()
        if cfg.dist.balance:
            bounds = balance(isect + self.cost.kappa * pix, R)
        else:
            bounds = even_split(len(units), R)
        parts = strips_of(units, bounds, tile_rows)

        # 3. who needs which of my Gaussians
        t0 = time.perf_counter()
        send_rows = []
        for d in range(R):
            need = torch.zeros(n_own, dtype=torch.bool, device=dev)
            for s in parts[d]:
                h0, h1 = s.halo_rows
                need |= vis[s.view] & (rows_min[s.view] < h1) & (rows_max[s.view] > h0)
            send_rows.append(need.nonzero().squeeze(1))
        send_idx = torch.cat(send_rows)
        own_tensors = [model.params[k] for k in names]
        packed, layout = pack_rows(own_tensors, dtype=_common_dtype(own_tensors))
        recv, recv_counts = world.all_to_all_rows(packed[send_idx], [len(r) for r in send_rows],
                                                  "the Gaussians exchange")
        st["exchange_s"] += time.perf_counter() - t0
        st["rows_sent"] += sum(len(r) for d, r in enumerate(send_rows) if d != rank)
        st["rows_received"] += sum(c for s, c in enumerate(recv_counts) if s != rank)
        # what replicating every Gaussian would send instead: a ring all-gather of the parameters
        # ((R-1)/R of them) and a ring all-reduce of their gradients (2 (R-1)/R)
        st["bytes_naive"] += 3 * (R - 1) / R * self.total * packed.shape[1] * packed.element_size()

        # 4. render the own strips from the received Gaussians; the own share of the loss
        t0 = time.perf_counter()
        local = [torch.nn.Parameter(x, requires_grad=p.requires_grad and x.is_floating_point())
                 for x, p in zip(unpack_rows(recv, layout), own_tensors)]
        shared = {k: p for k, p in model.params.items() if k not in names}
        local_params = GaussianParams({**dict(zip(names, local)), **shared}, names)
        m = recv.shape[0]
        g2d = torch.zeros(B, m, 2, dtype=torch.float32, device=dev)
        sq_err = torch.zeros(2 * B, dtype=torch.float64, device=dev)  # per view: squared error sum, pixel count
        loss = torch.zeros((), device=dev)
        infos = []
        pixels_rendered = owned = isect_mine = 0.0
        old = model.params
        model.params = local_params
        try:
            for s in parts[rank]:
                i = views[s.view]
                cam = cams[s.view]
                H, W = cam.height, cam.width
                h0, h1 = s.halo_rows
                y0, y1 = h0 * TILE, min(H, h1 * TILE)
                r0, r1 = s.row0 * TILE - y0, min(H, s.row1 * TILE) - y0
                out = model.render(cam, t.settings, step=step, backgrounds=t.background[None],
                                   tiles=strip_tiles(s, math.ceil(W / TILE), dev))
                if out.info["means2d"].requires_grad:
                    out.info["means2d"].retain_grad()
                gt = t.train_views.image(i)[y0:y1]
                mask = t.train_views.mask(i)
                mcount = None if mask is None else float(mask.sum())
                mcrop = None if mask is None else mask[y0:y1]
                pred = out.colors[0, y0:y1]
                loss = loss + photometric_loss_rows(pred, gt, cfg.ssim_lambda, slice(r0, r1), mcrop, mcount,
                                                    H * W) / B
                with torch.no_grad():
                    err = (pred[r0:r1].detach().clamp(0, 1) - gt[r0:r1]) ** 2
                    if mcrop is None:
                        sq_err[2 * s.view] += float(err.sum())
                        sq_err[2 * s.view + 1] += err.numel()
                    else:
                        sq_err[2 * s.view] += float((err * mcrop[r0:r1]).sum())
                        sq_err[2 * s.view + 1] += float(mcrop[r0:r1].sum()) * 3
                infos.append((s, out.info))
                pixels_rendered += (y1 - y0) * W
                owned += (r1 - r0) * W
                isect_mine += float(cost[sum(tile_rows[:s.view]) + s.row0: sum(tile_rows[:s.view]) + s.row1].sum())
            # density strategies' regularisers (means over all Gaussians): each rank its shard's share
            model.params = old
            terms = t.strategy.losses(model.params, t.state, step, None) if n_own else {}
            for term in terms.values():
                loss = loss + term * (n_own / max(self.total, 1))
            t1 = time.perf_counter()
            if loss.requires_grad:
                loss.backward()
            t2 = time.perf_counter()
        finally:
            model.params = old
        render_time = t2 - t0
        st["render_s"] += t1 - t0
        st["backward_s"] += t2 - t1
        st["rendered_pixels"] += pixels_rendered
        st["owned_pixels"] += owned

        # 5. gradients back to their owners
        t0 = time.perf_counter()
        for s, info in infos:
            gm = info["means2d"].grad
            if gm is None:
                continue
            ids = info.get("param_ids")
            scale = gm.new_tensor([cams[s.view].width / cams[0].width, cams[s.view].height / cams[0].height])
            if ids is None:
                g2d[s.view] += gm[0].float() * scale
            else:
                g2d[s.view].index_add_(0, ids, gm[0].float() * scale)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in local]
        payload = torch.cat([pack_rows(grads, dtype=packed.dtype)[0],
                             g2d.permute(1, 0, 2).reshape(m, 2 * B).to(packed.dtype)], 1)
        back, _ = world.all_to_all_rows(payload, recv_counts, "the gradients exchange",
                                        recv_counts=[len(r) for r in send_rows])
        D = packed.shape[1]
        gsum = torch.zeros(n_own, D, dtype=packed.dtype, device=dev)
        gsum.index_add_(0, send_idx, back[:, :D])
        g2d_own = torch.zeros(n_own, 2 * B, dtype=torch.float32, device=dev)
        g2d_own.index_add_(0, send_idx, back[:, D:].float())
        for p, g in zip(own_tensors, unpack_rows(gsum, layout)):
            if p.requires_grad:
                p.grad = g if p.grad is None else p.grad + g
        for k, p in shared.items():  # a decoder's weights: the sum over ranks, where any rank has a gradient
            if p.requires_grad:
                has = world.all_reduce_(torch.tensor([float(p.grad is not None)], device=dev), "the shared gradients")
                if float(has) > 0:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    world.all_reduce_(p.grad, "the shared gradients")
        per_rank = torch.zeros(R, 4, dtype=torch.float64, device=dev)
        per_rank[rank] = torch.tensor([loss.item(), render_time, isect_mine, pixels_rendered], dtype=torch.float64)
        world.all_reduce_(per_rank, "the step's figures")
        world.all_reduce_(sq_err, "the step's figures")
        st["return_s"] += time.perf_counter() - t0
        per_rank, sq_err = per_rank.cpu(), sq_err.cpu()
        for sec, ic, px in per_rank[:, 1:].tolist():
            self.cost.add(sec, ic, px)
        st["render_time_max"] += float(per_rank[:, 1].max())
        st["render_time_mean"] += float(per_rank[:, 1].mean())

        # 6. the update, density control, re-balancing
        t0 = time.perf_counter()
        t.optimizer.set_visible(torch.stack(radii_own).gt(0).all(-1).any(0))  # sparse Adam: the own rows seen
        t.optimizer.update()
        st["optimizer_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        events: Dict[str, int] = {}
        if t.optimizer.density_control(step):
            info = self._density_info(cams, radii_own, g2d_own, B)
            strategy = self._shard_strategy()
            events = strategy.step_post_backward(model.params, t.optimizer.optimizers, t.state, step, info,
                                                 generator=rank_generator(cfg.seed, step, rank))
        events.update(model.update(step))
        ev = torch.tensor([float(events.get(k, 0)) for k in _EVENT_KEYS], dtype=torch.float64, device=dev)
        world.all_reduce_(ev, "the density-control events")
        events = {k: (min(int(v), 1) if k in _EVENT_FLAGS else int(v)) for k, v in zip(_EVENT_KEYS, ev.tolist()) if v}
        st["density_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        self.refresh_sizes()
        grew = any(events.get(k) for k in ("clone", "split", "prune", "added"))
        if grew or (step + 1) % cfg.dist.rebalance_every == 0:
            self.rebalance()
        st["rebalance_s"] += time.perf_counter() - t0
        st["steps"] += 1
        st["bytes_sent"] = float(world.bytes_sent)
        psnrs = [float(-10 * torch.log10(sq_err[2 * v] / sq_err[2 * v + 1].clamp_min(1)).clamp_max(1e3))
                 for v in range(B)]
        return {"loss": float(per_rank[:, 0].sum()), "psnr": float(np.mean(psnrs)), "events": events}

    def _density_info(self, cams, radii_own: List[Tensor], g2d_own: Tensor, B: int) -> dict:
        """The info a density strategy reads, for the own shard: radii from the own projection,
        2D-mean gradients summed over the ranks that rendered each Gaussian (at the first
        view's image size, as `splat.render.merge_infos` gives them)."""
        n = g2d_own.shape[0]
        means2d = torch.zeros(B, n, 2, device=g2d_own.device)
        means2d.grad = g2d_own.reshape(n, B, 2).permute(1, 0, 2).contiguous()
        c0 = cams[0]
        return {"means2d": means2d, "radii": torch.stack(radii_own), "width": c0.width, "height": c0.height,
                "n_cameras": B, "param_ids": None, "camera_ids": None, "gaussian_ids": None, "gaussians": None,
                "parts": None, "viewmats": torch.cat([c.viewmats for c in cams]),
                "Ks": torch.cat([c.Ks for c in cams]), "near_plane": self.t.settings.near_plane,
                "far_plane": self.t.settings.far_plane, "eps2d": None, "rasterize_mode": self.t.settings.rasterize_mode,
                "backend": self.t.settings.backend}

    def _shard_strategy(self):
        """The strategy with its Gaussian budgets (MCMC's cap, ADC's limit) cut to this rank's share."""
        s = self.t.strategy
        changes = {}
        for f in ("cap_max", "max_gaussians"):
            v = getattr(s, f, 0)
            if v and v > 0:
                a, b = shard_bounds(int(v), self.world.size)[self.world.rank]
                changes[f] = max(1, b - a)
        return dataclasses.replace(s, **changes) if changes else s

    # ------------------------------------------------------------------ re-balancing
    @torch.no_grad()
    def rebalance(self) -> bool:
        """Move rows so every shard holds the same count (global order kept). Returns whether
        anything moved."""
        world, t = self.world, self.t
        sizes = self.sizes
        target = shard_bounds(self.total, world.size)
        if all(s == b - a for s, (a, b) in zip(sizes, target)):
            return False
        model = t.model
        names = model.params.per_gaussian
        n = model.num_gaussians
        entries = state_rows(model.params, t.optimizer.optimizers, t.state, names, n)
        packed, layout = pack_rows([v for _, v in entries], dtype=torch.float64)
        send, recv = rebalance_plan(sizes, world.rank)
        got, _ = world.all_to_all_rows(packed, send, "the re-balancing", recv_counts=recv)
        new = dict(zip([k for k, _ in entries], unpack_rows(got, layout)))
        for k in names:
            old = model.params[k]
            p = torch.nn.Parameter(new[f"param/{k}"], requires_grad=old.requires_grad)
            opt = t.optimizer.optimizers[k]
            stt = opt.state.pop(old, None)
            if stt is not None:
                for key in list(stt):
                    if f"opt/{k}/{key}" in new:
                        stt[key] = new[f"opt/{k}/{key}"]
                opt.state[p] = stt
            opt.param_groups[0]["params"] = [p]
            model.params[k] = p
        for key in list(t.state):
            if f"state/{key}" in new:
                t.state[key] = new[f"state/{key}"]
        self.refresh_sizes()
        return True


def _common_dtype(tensors) -> torch.dtype:
    floats = [x.dtype for x in tensors if x.is_floating_point()]
    return torch.float64 if any(d == torch.float64 for d in floats) or len(floats) < len(tensors) else floats[0]
