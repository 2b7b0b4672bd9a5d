"""Block-partitioned training of large scenes: ``splat-train --blocks K`` (BlockGaussian's
partition and camera assignment, CityGaussian's coarse global prior and merge).

    splat-train --data D --out O --blocks 4                 # everything, in one process
    splat-train --data D --out O --blocks 4 --block 2       # only block 2 (on another machine, say)
    torchrun --nproc-per-node=2 $(which splat-train) --data D --out O --blocks 4   # blocks shared out

Stages, each written under ``O/blocks/`` and skipped when already done:

1. ``coarse/``: a coarse global model, the whole scene trained for ``--blocks-coarse`` (a
   fraction) of --iterations with all training views (CityGaussian's global prior).
2. ``partition.json``: the scene cut in the ground plane into K core cells, from the coarse
   Gaussians' density times the training cameras that see them (`splat.distributed.blocks`).
3. ``<i>/``: each block, a plain one-process `Trainer` run of --iterations steps on the cameras
   that see it (`block_cameras`), starting from the coarse Gaussians of its expanded region (core
   plus margin), which it densifies and optimises; the coarse Gaussians outside the region that
   those cameras see come along as auxiliary Gaussians (`BlockModel`, BlockGaussian's auxiliary
   points): optimised with the block's, never densified, dropped at the merge. So the photometric
   loss of a full image never asks the block's Gaussians to stand in for what lies outside it, and
   the coarse model's floaters outside the block are cleaned instead of compensated for.
4. the merge: each block's Gaussians whose means lie in its core cell, evaluated on the test views
   and written as ``O/model.ply``, a checkpoint ``O/ckpts/``, ``O/metrics.json``, ``O/renders/``.

Under torchrun rank r trains the blocks i with i % size == r after rank 0 has made stages 1-2;
rank 0 merges once every block's metrics.json is there (the ranks meet through the shared --out).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from ..data import Dataset, Split
from ..distributed.blocks import (BlockPartition, block_cameras, camera_visibility, ground_frame,
                                  merge_blocks, partition_points, point_loads)
from ..io.common import atomic_write
from ..io.images import save_png
from ..models.static import PARAM_NAMES, StaticModel, splats_to_gaussians
from ..render import Gaussians, RenderSettings
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, config_to_json
from .data import Views, load_data
from .evaluate import evaluate

__all__ = ["train_blocks", "check_block_options", "BlockModel", "split_subset", "train_coarse", "make_partition",
           "MASK_LOSS"]

MASK_LOSS = False
"""Supervise a block only where it shows (BlockGaussian's visibility-aware optimisation): each of its
training views gets a mask of the pixels where the coarse model's Gaussians of the block's region
carry at least half the rendered opacity, or where the coarse model is transparent (background),
grown by one pixel; the loss (and the block's own test figures) leave the other pixels out, so the
block's Gaussians never learn to make up for what other blocks show there. Off by default: on the
held-out-style object (2000 steps) the merged model came out 0.14 dB lower with it (30.29 vs 30.43 dB)
and 23 % larger; the auxiliary Gaussians already keep the block's own from compensating."""
MIN_VIEWS = 8
"""The fewest training views a block gets (BlockGaussian's floor on the camera assignment)."""


# ----------------------------------------------------------------------------- the block model


class BlockModel(StaticModel):
    """A block of a static 3DGS model (Kerbl et al. 2023) with auxiliary Gaussians (BlockGaussian)
    or frozen context (CityGaussian) around it.

    ``params``: the splats dict of `splat.models.static` plus ``aux`` [N] (1.0 for an auxiliary
    Gaussian, 0.0 for one of the block's own; zeros when absent). All N are rendered and
    optimised; auxiliary ones are never cloned or split (their rows of the render's
    ``info["radii"]`` are zeroed, and density control counts only rendered rows,
    `splat.strategies.ops.rendered_pairs`), may be pruned, and are left out of ``to_splats``
    and of the merge. ``context`` (a splats dict of M Gaussians, or None) is rendered after the
    N but never trained (its radii zeroed too)."""

    per_gaussian = PARAM_NAMES + ("aux",)

    def __init__(self, config, params, scene_scale: float = 1.0,
                 context: Optional[Dict[str, torch.Tensor]] = None):
        params = dict(params)
        if "aux" not in params:
            params["aux"] = torch.zeros(int(params["means"].shape[0]))
        super().__init__(config, params, scene_scale)
        self.context = None
        if context is not None and int(context["means"].shape[0]) > 0:
            self.context = {k: context[k].detach().float().contiguous() for k in PARAM_NAMES}

    def own(self) -> torch.Tensor:
        """bool [N]: the block's own Gaussians (not auxiliary)."""
        return self.params["aux"].detach() < 0.5

    def learning_rates(self, step: int, iterations: int) -> Dict[str, float]:
        return {**super().learning_rates(step, iterations), "aux": 0.0}

    def gaussians(self, cameras, settings: RenderSettings = RenderSettings(), step: Optional[int] = None) -> Gaussians:
        g = super().gaussians(cameras, settings, step)
        if self.context is None:
            return g
        dev = g.means.device
        c = splats_to_gaussians({k: v.to(dev) for k, v in self.context.items()}, g.sh_degree)
        return Gaussians(torch.cat([g.means, c.means]), torch.cat([g.quats, c.quats]), torch.cat([g.scales, c.scales]),
                         torch.cat([g.opacities, c.opacities]), torch.cat([g.colors, c.colors]), g.sh_degree)

    def render(self, cameras, settings: RenderSettings = RenderSettings(), **kwargs):
        out = super().render(cameras, settings, **kwargs)
        own = self.own()
        if (self.context is not None or not bool(own.all())) and "radii" in out.info:
            radii = out.info["radii"].clone()  # a new tensor: the rasterizer's own may be saved for backward
            radii[:, self.num_gaussians:] = 0
            radii[:, :self.num_gaussians][:, ~own.to(radii.device)] = 0
            out.info["radii"] = radii
        return out

    def to_splats(self) -> Dict[str, torch.Tensor]:
        own = self.own().cpu()
        return {k: self.params[k].detach().cpu()[own] for k in PARAM_NAMES}


# ----------------------------------------------------------------------------- helpers


def split_subset(split: Split, indices) -> Split:
    """The views `indices` (in that order) of a dataset split, as a new `splat.data.Split`."""
    idx = [int(i) for i in indices]
    pick = (lambda a: None if a is None else np.asarray(a)[idx])
    pick_list = (lambda a: None if a is None else [a[i] for i in idx])
    return Split(names=[split.names[i] for i in idx], images=[split.images[i] for i in idx],
                 viewmats=np.asarray(split.viewmats)[idx], Ks=np.asarray(split.Ks)[idx],
                 widths=[split.widths[i] for i in idx], heights=[split.heights[i] for i in idx],
                 alphas=pick_list(split.alphas), times=pick(split.times), light_positions=pick(split.light_positions),
                 light_intensities=pick(split.light_intensities), masks=pick_list(split.masks),
                 distortions=pick_list(split.distortions))


@torch.no_grad()
def region_masks(splats: Dict[str, torch.Tensor], region: torch.Tensor, split: Split, backend: str = "auto"):
    """Per view of `split`, bool [H,W]: the pixels where the Gaussians `region` (bool [N]) of `splats`
    carry at least half of the rendered opacity, or where the rendered opacity is below 0.5
    (background), dilated by one pixel (a 3x3 max), AND the view's own mask where it has one."""
    from ..render import rasterize

    g = splats_to_gaussians(splats, 0)
    own = region.float()
    colors = torch.stack([own, torch.ones_like(own), torch.zeros_like(own)], -1)
    out = []
    for i in range(len(split)):
        cams = split.cameras(i)
        img, _, _ = rasterize(g.means, g.quats, g.scales, g.opacities, colors, cams.viewmats, cams.Ks, cams.width,
                              cams.height, backend=backend)
        ch = img[0]
        m = (ch[..., 0] >= 0.5 * ch[..., 1]) | (ch[..., 1] < 0.5)
        m = torch.nn.functional.max_pool2d(m[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        m = m.numpy()
        if split.masks is not None and split.masks[i] is not None:
            m = m & split.masks[i]
        out.append(m)
    return out


def check_block_options(cfg: TrainConfig, world=None) -> None:
    """Raise ``ValueError`` naming the option for a --blocks / --block setting that cannot run."""
    K = int(cfg.blocks)
    if K < 2:
        raise ValueError(f"--blocks must be at least 2 (0 trains one model), got {K}")
    if cfg.model != "static":
        raise ValueError(f"--blocks trains static models only (the merge cuts 3D Gaussians by their means); "
                         f"got --model {cfg.model}")
    if cfg.block is not None and not 0 <= int(cfg.block) < K:
        raise ValueError(f"--block must be in 0..{K - 1} for --blocks {K}, got {cfg.block}")
    if cfg.block is not None and world is not None and world.size > 1:
        raise ValueError("--block trains one block in one process; launch it without torchrun")
    if cfg.resume:
        raise ValueError("--resume does not apply to --blocks: a --blocks run skips the stages and blocks already "
                         "finished under --out and restarts an unfinished one")
    if cfg.total_iterations() <= 0:
        raise ValueError(f"--iterations must be positive, got {cfg.total_iterations()}")
    if not (0 <= cfg.blocks_margin <= 2) or not (0 < cfg.blocks_coarse <= 1):
        raise ValueError(f"--blocks-margin must be in [0, 2] and --blocks-coarse in (0, 1], got {cfg.blocks_margin}, "
                         f"{cfg.blocks_coarse}")


def _finished(run: Path) -> bool:
    return (run / "metrics.json").is_file() and latest_checkpoint(run) is not None


def _stage_cfg(cfg: TrainConfig, out: Path, iterations: int, **kw) -> TrainConfig:
    return dataclasses.replace(cfg, out=out, iterations=iterations, blocks=0, block=None, resume=False, viewer=False,
                               **kw)


def _prefixed(log, prefix: str):
    return lambda *a, **k: log(prefix + " ".join(str(x) for x in a))


def _final_splats(run: Path) -> Dict[str, torch.Tensor]:
    """The final checkpoint's splats, without a block's auxiliary Gaussians."""
    ck = load_checkpoint(latest_checkpoint(run))
    s = ck["splats"]
    keep = s["aux"] < 0.5 if "aux" in s else torch.ones(int(s["means"].shape[0]), dtype=torch.bool)
    return {k: s[k].float()[keep] for k in PARAM_NAMES}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


# ----------------------------------------------------------------------------- stages


def train_coarse(cfg: TrainConfig, dataset: Optional[Dataset] = None, log=print) -> dict:
    """Stage 1: the coarse global model in ``OUT/blocks/coarse`` (``--blocks-coarse`` of
    --iterations on every training view; CityGaussian's global prior), unless already there.
    Returns its metrics.json."""
    from .loop import Trainer

    run = Path(cfg.out) / "blocks" / "coarse"
    if not _finished(run):
        steps = max(1, int(round(cfg.blocks_coarse * cfg.total_iterations())))
        t = Trainer(_stage_cfg(cfg, run, steps, export=[], save_renders=0), log=_prefixed(log, "[coarse] "),
                    dataset=dataset if dataset is not None else load_data(cfg))
        t.train()
        t.close(completed=True)
    return _metrics(run)


def make_partition(cfg: TrainConfig, dataset: Dataset) -> BlockPartition:
    """Stage 2: the partition of the coarse model into ``cfg.blocks`` blocks (`partition_points` on
    its means, loads from `point_loads` over the training cameras), written to
    ``OUT/blocks/partition.json``; read from there when it exists. Raises ``ValueError`` when the
    saved partition has another number of blocks."""
    path = Path(cfg.out) / "blocks" / "partition.json"
    if path.is_file():
        try:
            p = BlockPartition.from_json(json.loads(path.read_text()))
        except (ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: {e}") from None
        if p.num_blocks != cfg.blocks:
            raise ValueError(f"{path} cuts the scene into {p.num_blocks} blocks, not --blocks {cfg.blocks}: use "
                             f"--blocks {p.num_blocks} or another --out")
        return p
    means = _final_splats(Path(cfg.out) / "blocks" / "coarse")["means"].numpy().astype(np.float64)
    tr = dataset.train
    vis = camera_visibility(means, tr.viewmats, tr.Ks, tr.widths, tr.heights)
    up, axes = ground_frame(tr.viewmats)
    p = partition_points(means, point_loads(means, vis), cfg.blocks, up, axes, cfg.blocks_margin)
    atomic_write(path, p.dumps().encode())
    return p


def _block_views(p: BlockPartition, k: int, points: np.ndarray, split: Split, min_views: int) -> np.ndarray:
    if len(split) == 0:
        return np.zeros(0, np.int64)
    vis = camera_visibility(points, split.viewmats, split.Ks, split.widths, split.heights)
    R = np.asarray(split.viewmats, np.float64)[:, :3, :3]
    centres = -np.einsum("nji,nj->ni", R, np.asarray(split.viewmats, np.float64)[:, :3, 3])
    return block_cameras(p, k, points, vis, centres, min_views=min_views)


def train_block(cfg: TrainConfig, dataset: Dataset, partition: BlockPartition, k: int, log=print) -> dict:
    """Stage 3: block k in ``OUT/blocks/<k>``, unless already finished: --iterations steps on the
    cameras that see it (`block_cameras`), from the coarse Gaussians of its region, with the coarse
    Gaussians around it that those cameras see as auxiliary Gaussians or frozen context (``--blocks-context``;
    `BlockModel`). Returns its metrics.json with ``block`` figures added. Raises ``ValueError`` when
    the region holds no coarse Gaussian."""
    from .loop import Trainer

    run = Path(cfg.out) / "blocks" / str(k)
    if _finished(run):
        return _metrics(run)
    coarse = _final_splats(Path(cfg.out) / "blocks" / "coarse")
    means = coarse["means"].numpy().astype(np.float64)
    region = partition.in_region(means, k)
    if not region.any():
        raise ValueError(f"block {k} holds none of the coarse model's Gaussians; use fewer --blocks")
    train_ids = _block_views(partition, k, means, dataset.train, MIN_VIEWS)
    test_ids = _block_views(partition, k, means, dataset.test, 0)
    # what lies outside the region and the block's cameras see: auxiliary Gaussians or frozen context
    tr = split_subset(dataset.train, train_ids)
    outside = np.nonzero(~region)[0]
    seen = camera_visibility(means[outside], tr.viewmats, tr.Ks, tr.widths, tr.heights).any(0)
    outside = torch.from_numpy(outside[seen])
    mask = torch.from_numpy(region)
    own = {n: v[mask].contiguous() for n, v in coarse.items()}
    around = {n: v[outside].contiguous() for n, v in coarse.items()}
    context_kind = cfg.blocks_context
    context = around if context_kind == "coarse" else None
    n_around = int(len(outside)) if context_kind in ("coarse", "aux") else 0
    params = dict(own)
    params["aux"] = torch.zeros(len(own["means"]))
    if context_kind == "aux":
        params = {n: torch.cat([params[n], around[n]]) for n in PARAM_NAMES}
        params["aux"] = torch.cat([torch.zeros(len(own["means"])), torch.ones(n_around)])
    te = split_subset(dataset.test, test_ids)
    if MASK_LOSS:
        backend = "cpu" if cfg.backend in ("auto", "cuda", "raytrace") else cfg.backend
        tr = dataclasses.replace(tr, masks=region_masks(coarse, mask, tr, backend))
        te = dataclasses.replace(te, masks=region_masks(coarse, mask, te, backend))
    rgb = np.clip(own["sh0"][:, 0].numpy() * 0.28209479177387814 + 0.5, 0, 1)
    block_data = dataclasses.replace(dataset, train=tr, test=te, points=own["means"].numpy(),
                                     points_rgb=(rgb * 255 + 0.5).astype(np.uint8), points_random=False)
    blog = _prefixed(log, f"[block {k}] ")
    blog(f"{len(train_ids)}/{len(dataset.train)} train views, {len(test_ids)}/{len(dataset.test)} test views, "
         f"{int(region.sum()):,} coarse Gaussians in its region, {n_around:,} around it ({context_kind})")
    bcfg = _stage_cfg(cfg, run, cfg.total_iterations(), export=[], save_renders=0)
    t = Trainer(bcfg, log=blog, dataset=block_data)
    t.set_model(BlockModel(bcfg.options("model"), params, float(dataset.scene_scale), context=context))
    m = t.train()
    t.close(completed=True)
    n_own = int(t.model.own().sum())
    m["block"] = {"index": k, "train_views": [str(n) for n in block_data.train.names],
                  "test_views": [str(n) for n in block_data.test.names], "initial_gaussians": int(region.sum()),
                  "context_gaussians": n_around, "own_gaussians": n_own, "context": context_kind,
                  "masked_loss": MASK_LOSS, "supervised_pixels": float(np.mean([m.mean() for m in tr.masks]))
                  if MASK_LOSS and len(tr) else 1.0}
    atomic_write(run / "metrics.json", json.dumps(m, indent=2).encode())
    return m


def merge(cfg: TrainConfig, dataset: Dataset, partition: BlockPartition, log=print) -> dict:
    """Stage 4: merge the finished blocks (`merge_blocks`), evaluate the merged model on the test
    views, write OUT/model.<ext>, OUT/ckpts/ckpt_<steps>.pt (a static model checkpoint that
    `splat-render OUT` and `load_model` open), OUT/renders/, OUT/config.json and OUT/metrics.json.
    Returns the metrics."""
    from .loop import write_model_files

    out = Path(cfg.out)
    K = partition.num_blocks
    runs = [out / "blocks" / str(k) for k in range(K)]
    missing = [str(r) for r in runs if not _finished(r)]
    if missing:
        raise ValueError(f"cannot merge: blocks not finished: {', '.join(missing)}")
    merged, kept = merge_blocks(partition, [_final_splats(r) for r in runs])
    model = StaticModel.from_state(cfg.options("model"), merged, float(dataset.scene_scale))
    device = torch.device(cfg.device)
    model = model.to(device)
    settings = RenderSettings(cfg.backend, cfg.rasterize_mode).for_scene(model.scene_scale)
    background = torch.tensor(np.asarray(dataset.background, dtype=np.float32), device=device)
    rdir = out / "renders"

    def save(i, pred, gt):
        if cfg.save_renders < 0 or i < cfg.save_renders:
            rdir.mkdir(parents=True, exist_ok=True)
            save_png(rdir / f"test_{i:03d}.png", torch.cat([pred, gt], 1))

    final = evaluate(model, Views(dataset.test, device), settings, background, save=save)
    coarse_m = _metrics(out / "blocks" / "coarse")
    block_m = [_metrics(r) for r in runs]
    train_seconds = coarse_m["train_seconds"] + sum(m["train_seconds"] for m in block_m)
    steps = coarse_m["iterations"] + sum(m["iterations"] for m in block_m)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.json", json.dumps(config_to_json(cfg), indent=2).encode())
    save_checkpoint(out, steps, {
        "train_seconds": train_seconds, "scene_scale": model.scene_scale, "model": "static",
        "splats": model.state(), "optimizer": {}, "strategy_state": {}, "config": config_to_json(cfg),
        "history": [], "transform": np.asarray(dataset.transform).tolist()}, keep=cfg.keep_checkpoints)
    exported = write_model_files(out, model.to_splats(), cfg.export, cfg.rasterize_mode, log=log)
    per_block = []
    for k, (m, n_kept) in enumerate(zip(block_m, kept)):
        b = m.get("block", {})
        per_block.append({"block": k, "psnr": m.get("psnr"), "ssim": m.get("ssim"), "train_views": m["train_views"],
                          "test_views": m["test_views"], "iterations": m["iterations"],
                          "train_seconds": m["train_seconds"], "num_gaussians": m["num_gaussians"],
                          "own_gaussians": b.get("own_gaussians"), "kept_gaussians": n_kept, "initial_gaussians": b.get("initial_gaussians"),
                          "context_gaussians": b.get("context_gaussians"), "load": float(partition.loads[k])})
    metrics = {
        "psnr": final.get("psnr"), "ssim": final.get("ssim"), "num_gaussians": model.num_gaussians,
        "train_seconds": train_seconds, "iterations": steps, "seconds_per_iteration": train_seconds / max(1, steps),
        "render_ms": final.get("render_ms"), "test_views": len(dataset.test), "train_views": len(dataset.train),
        "data": str(dataset.root), "format": dataset.format, "backend": cfg.backend, "history": [],
        "per_view": final.get("per_view", []), "model": [p.name for p in exported], "model_kind": cfg.model,
        "strategy": cfg.strategy, "optimizer": cfg.optimizer, "blocks": K,
        "coarse": {"iterations": coarse_m["iterations"], "psnr": coarse_m.get("psnr"),
                   "num_gaussians": coarse_m["num_gaussians"], "train_seconds": coarse_m["train_seconds"]},
        "per_block": per_block, "partition": partition.to_json(), "context": cfg.blocks_context, "margin": cfg.blocks_margin,
    }
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    if metrics["psnr"] is not None:
        log(f"merged {K} blocks: test PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, "
            f"{metrics['num_gaussians']:,} Gaussians (kept per block {kept}), {train_seconds:.0f} s training -> {out}")
    else:
        log(f"merged {K} blocks: {metrics['num_gaussians']:,} Gaussians (kept per block {kept}), no test views -> {out}")
    return metrics


# ----------------------------------------------------------------------------- the command


def train_blocks(cfg: TrainConfig, log=print, world=None) -> dict:
    """``splat-train --blocks K``: train a static model as K blocks and merge them (BlockGaussian's
    content-aware partition and visibility-based camera assignment, CityGaussian's coarse prior,
    core-cell merge, BlockGaussian's auxiliary Gaussians; see the module docstring for the stages).

    cfg: the run's options (``cfg.blocks`` = K >= 2; ``cfg.block`` = i trains only block i, plus the
    coarse model and the partition if missing, and returns that block's metrics). world: a
    `splat.distributed.world.World` (None or size 1: one process); rank r trains blocks i with
    i % size == r, rank 0 makes the coarse model and the partition first and merges last (the
    ranks meet through the files on the shared --out, not collectives: stages outlast any timeout).
    Finished stages under ``OUT/blocks`` are skipped. Returns the merged model's metrics (as
    `Trainer.train`'s: psnr, ssim, num_gaussians, train_seconds (the sum over the coarse model and
    all blocks), ...) with ``coarse``, ``per_block`` and ``partition`` figures (on rank 0; the
    other ranks get their blocks' PSNRs). Raises ``ValueError`` naming the option for bad --blocks / --block / --model values."""
    check_block_options(cfg, world)
    if cfg.viewer:
        log("--viewer is not served during --blocks training (each block is its own run); open the merged "
            "model O afterwards (splat-render O, or the viewer on it)")
    rank, size = (world.rank, world.size) if world is not None and world.size > 1 else (0, 1)
    t0 = time.perf_counter()
    dataset = load_data(cfg)
    out = Path(cfg.out)
    if rank == 0:
        train_coarse(cfg, dataset, log)
        make_partition(cfg, dataset)
    else:  # on the shared --out; stages take longer than any collective's timeout should
        _wait_for([out / "blocks" / "partition.json"], "rank 0's coarse model and partition")
    partition = make_partition(cfg, dataset)
    mine = [int(cfg.block)] if cfg.block is not None else [k for k in range(cfg.blocks) if k % size == rank]
    results = {k: train_block(cfg, dataset, partition, k, log) for k in mine}
    if cfg.block is not None:
        m = results[int(cfg.block)]
        log(f"block {cfg.block} of {cfg.blocks} done ({m['num_gaussians']:,} Gaussians); run --blocks {cfg.blocks} "
            f"without --block to train the rest and merge")
        return m
    if rank != 0:  # rank 0 merges once every block is written
        return {"blocks_trained": sorted(results), "per_block": {k: m.get("psnr") for k, m in results.items()}}
    _wait_for([out / "blocks" / str(k) / "metrics.json" for k in range(cfg.blocks)], "the other ranks' blocks")
    metrics = merge(cfg, dataset, partition, log)
    metrics["wall_seconds"] = time.perf_counter() - t0
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    return metrics


def _wait_for(paths, what: str, poll: float = 1.0) -> None:
    """Wait until every file of `paths` exists (another rank of a torchrun launch writes them on the
    shared --out; torchrun stops this process if that rank dies)."""
    while not all(Path(p).exists() for p in paths):
        time.sleep(poll)
