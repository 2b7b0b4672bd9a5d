"""The one training loop: data -> model -> render -> loss -> optimizer + density strategy,
for every model kind, with checkpoints and exact resume, evaluation, the run
directory and callbacks.

One step (``Trainer.train_step``):

    cameras, images = the step's --batch-size training views  (a fresh random order each epoch)
    optimizer.set_learning_rates(model.learning_rates(step, iterations))
    loss, outs = optimizer.step(forward)                 forward: model.render(cameras, step=step)
                                                         -> strategy.step_pre_backward
                                                         -> photometric loss (mean over views)
                                                            + model.losses + strategy.losses
    strategy.step_post_backward(...)                     may clone, split, prune Gaussians

The model, strategy and optimizer come from `splat.train.registry` by the names in
`TrainConfig`; nothing here knows which ones they are.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, List, Optional

import numpy as np
import torch

from ..backends import fused_adam  # noqa: F401 (registers torch.ops.splat.adam_rows, Adam's fused step)
from ..compress.grid_loss import GridSmoothness
from ..data import Dataset
from ..distributed.world import RankLost, World
from ..io.common import atomic_write
from ..io.images import save_png
from ..metrics import psnr as psnr_fn
from ..models.base import Model
from ..render import RenderSettings, merge_infos
from ..strategies.ops import visible_rows
from .allocator import retain_freed_memory
from .callbacks import Callback, CallbackList, load_callback
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import DEFAULT_ITERATIONS, TrainConfig, config_from_json, config_to_json
from .data import Views, load_data, step_generator, view_for_step
from .evaluate import evaluate
from .losses import photometric_loss
from .registry import MODELS, OPTIMIZERS
from .sharded import ShardedStep, check_shardable
from .threads import ThreadGovernor, set_threads

__all__ = ["Trainer", "EXPORT_SUFFIXES", "write_model_files"]

EXPORT_SUFFIXES = {"ply": ".ply", "splat": ".splat", "spz": ".spz", "compressed_ply": ".compressed.ply", "sog": ".sog",
                   "glb": ".glb"}
# options of this command, not of the run, when resuming
_SESSION_FIELDS = ("viewer", "viewer_port", "viewer_host", "viewer_wait", "dist", "threads")


def write_model_files(out: Path, splats: dict, formats: Iterable[str], rasterize_mode: str,
                      grid_order: Optional[np.ndarray] = None, log=print) -> List[Path]:
    """`splats` as OUT/model.<ext> in each of `formats` (`EXPORT_SUFFIXES`): .spz and .sog marked
    as trained with antialiasing under ``--rasterize-mode antialiased``; with `grid_order` (a
    ``--compress sog`` run's grid), the .sog laid out in it or in Morton order, whichever file is
    smaller (said in the log)."""
    from .. import io as splat_io

    paths = []
    for fmt in formats:
        opts: dict = {"antialiased": rasterize_mode == "antialiased"} if fmt in ("spz", "sog") else {}
        chosen: list = []
        if fmt == "sog" and grid_order is not None:
            opts.update(order=[grid_order, "morton"], chosen=chosen)
        paths.append(splat_io.save(Path(out) / f"model{EXPORT_SUFFIXES[fmt]}", splats, format=fmt, **opts))
        if chosen:
            log(f"model.sog: {'the trained grid' if chosen[0] == 0 else 'Morton order (smaller here)'}")
    return paths


def _ignored_on_resume(given: TrainConfig, saved: TrainConfig) -> List[str]:
    """The options set in `given` (away from their defaults) that differ from the resumed run's
    `saved` ones, as ``--name (given -> saved)``: what a resume leaves out."""
    default = TrainConfig()
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SESSION_FIELDS or f.name in ("resume", "out", "progress"):
            continue
        g, d, s = getattr(given, f.name), getattr(default, f.name), getattr(saved, f.name)
        if g != d and g != s:
            name = f.name.replace("_", "-")
            out.append(f"--{name} ({g!r} -> the run's {s!r})" if not dataclasses.is_dataclass(g) else f"--{name}.*")
    return out


def _quiet(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


class Trainer:
    """Train the model `cfg` names on its data.

    ``Trainer(cfg)`` loads the data and builds (or, with ``cfg.resume``, restores) the
    model, optimizer and strategy; ``train()`` runs the loop and returns the final
    metrics; ``close()`` releases the callbacks (a viewer waits there for Ctrl-C when
    asked to). `callbacks` attach from outside (see `splat.train.callbacks`);
    ``cfg.viewer`` adds the viewer plugin's. `dataset` trains on an already loaded
    `splat.data.Dataset` instead of loading ``cfg.data``.

    `world` (`splat.distributed.world.World`, from a torchrun launch): this process's place
    in a multi-process run; the model is then a shard and each step is `splat.train.sharded`'s
    (rank 0 evaluates, writes checkpoints and the model, logs and serves the viewer, all on the
    whole model gathered from the shards). None: one process, the plain step.

    Raises ``ValueError`` for bad options, missing checkpoints and unusable data, with
    the problem and, where there is one, the file named.
    """

    def __init__(self, cfg: TrainConfig, log=print, callbacks: Iterable[Callback] = (),
                 dataset: Optional[Dataset] = None, world: Optional[World] = None):
        self.world = world = world if world is not None else World(device=cfg.device)
        world.where = str(cfg.out)
        if not world.is_main:
            log = _quiet
        self.log = log
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = torch.device(world.device if world.distributed else cfg.device)
        self.sharded: Optional[ShardedStep] = None
        self._display = None
        ck = None
        if cfg.resume:
            # rank 0 reads the checkpoint and hands it to the others (their disks need not hold the run)
            ck, path, err = None, None, None
            if world.is_main:
                try:
                    path = latest_checkpoint(self.out)
                    if path is None:
                        raise ValueError(f"--resume: no checkpoint in {self.out / 'ckpts'}")
                    ck = load_checkpoint(path)
                except ValueError as e:
                    err = str(e)
            err, path, ck = world.broadcast_object((err, path, ck), what="the checkpoint")
            if err:
                raise ValueError(err)
            world.last_checkpoint = str(path)
            try:
                saved = config_from_json(ck["config"])
                for kind in ("model", "strategy", "optimizer"):
                    saved.options(kind)  # a piece this installation lacks fails here, naming the file
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
            saved.resume = True
            saved.out = cfg.out
            for f in _SESSION_FIELDS:
                setattr(saved, f, getattr(cfg, f))
            ignored = _ignored_on_resume(cfg, saved)
            if ignored:
                log(f"--resume continues the run as it was configured; ignored: {', '.join(ignored)}")
            self.cfg = cfg = saved
            log(f"resuming {path} at step {ck['step']}")
        self.iterations = cfg.total_iterations()
        if self.iterations <= 0:
            raise ValueError(f"--iterations must be positive, got {self.iterations}")
        if cfg.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {cfg.batch_size}")
        if cfg.threads < 0:
            raise ValueError(f"--threads must be 0 (adapt to the machine) or a positive count, got {cfg.threads}")
        self.threads: Optional[ThreadGovernor] = None  # the run's thread governor (--threads 0, CPU)
        model_cls = MODELS[cfg.model].cls
        optimizer_cls = OPTIMIZERS[cfg.optimizer].cls
        model_options, strategy = cfg.options("model"), cfg.options("strategy")
        for options in (model_options, strategy, cfg.options("optimizer")):
            if hasattr(options, "check"):
                options.check()
        if cfg.backend == "raytrace" and cfg.optimizer == "lm":
            raise ValueError("--optimizer lm takes its Jacobian-vector products from the rasterizer's tile lists; "
                             "with --backend raytrace use --optimizer adam")
        if cfg.backend == "raytrace" and getattr(strategy, "absgrad", False):
            raise ValueError("--adc.absgrad (AbsGS) needs per-pixel 2D gradients, which the ray tracer does not "
                             "form; with --backend raytrace leave it off")
        if cfg.backend == "raytrace" and cfg.strategy == "steepgs":
            raise ValueError("--strategy steepgs splits on the gradients of the rasterizer's 2D conics, which the ray "
                             "tracer does not have; with --backend raytrace use --strategy adc or mcmc")
        cfg.dist.check()
        if cfg.compress == "sog":
            cfg.sog.check()
            if world.distributed:
                raise ValueError("--compress sog sorts every Gaussian into one grid; it runs in one process "
                                 "(launch splat-train without torchrun)")
            if cfg.model != "static":
                raise ValueError(f"--compress sog trains the static 3D Gaussians .sog stores; --model {cfg.model} "
                                 "is written through splat-export instead")
        self.callbacks = CallbackList(callbacks if world.is_main else ())
        if cfg.viewer and world.is_main:  # the plugin checks its port now, before the data is loaded
            self.callbacks.append(load_callback("viewer", cfg))
        if cfg.scale_schedule:
            factor = self.iterations / DEFAULT_ITERATIONS
            strategy = strategy.scaled(factor, batch=cfg.batch_size) if cfg.batch_size > 1 else strategy.scaled(factor)
            model_options = model_options.scaled(factor) if hasattr(model_options, "scaled") else model_options
        self.strategy = strategy
        self.settings = RenderSettings(cfg.backend, cfg.rasterize_mode)

        t0 = time.perf_counter()
        self.data = dataset if dataset is not None else load_data(cfg)
        self.train_views = Views(self.data.train, self.device)
        self.test_views = Views(self.data.test, self.device)
        if len(self.train_views) == 0:
            raise ValueError("the dataset has no training views")
        for name, views in (("train", self.train_views), ("test", self.test_views)):
            if len(views):
                model_cls.check_cameras(views.camera(0), where=f"{self.data.root} ({name} views)")
        if world.distributed:
            check_shardable(cfg, model_cls, optimizer_cls)
        self.background = torch.tensor(np.asarray(self.data.background, dtype=np.float32), device=self.device)
        # on resume, the scene scale the run started with (learning rates and thresholds depend on it)
        scene_scale = float(ck["scene_scale"]) if ck is not None else float(self.data.scene_scale)
        log(f"data: {self.data.format} {self.data.root}: {len(self.train_views)} train / {len(self.test_views)} test "
            f"views, {len(self.data.points):,} initial points{' (random)' if self.data.points_random else ''}, "
            f"scene scale {scene_scale:.3f} ({time.perf_counter() - t0:.1f} s)")
        self._optimizer_cls = optimizer_cls
        self._model_options = model_options
        self.grid = None
        if cfg.compress == "sog":
            self.grid = GridSmoothness(cfg.sog, self.iterations)
            if ck is not None:
                self.grid.load_state(ck.get("grid"))
        if world.distributed:
            self.sharded = ShardedStep(self, world)
        if ck is None:
            self.start_step, self.train_seconds, self.history = 0, 0.0, []
            model = model_cls.create(model_options, self.data, seed=cfg.seed)  # every rank the same
            if self.sharded is not None:
                splats, _, _ = self.sharded.shard(model.state(), None, None, model.params.per_gaussian,
                                                  model.num_gaussians)
                model = model_cls.from_state(model_options, splats, model.scene_scale)
            self.set_model(model)
        else:
            self.start_step, self.train_seconds, self.history = int(ck["step"]), float(ck["train_seconds"]), ck["history"]
            splats, opt_state, strat_state = ck["splats"], ck["optimizer"], ck["strategy_state"]
            if self.sharded is not None:  # this rank's rows of the whole run (any process count wrote it)
                whole = model_cls.from_state(model_options, splats, scene_scale)
                splats, opt_state, strat_state = self.sharded.shard(splats, opt_state, strat_state,
                                                                    whole.params.per_gaussian, whole.num_gaussians)
                del whole
            self.set_model(model_cls.from_state(model_options, splats, scene_scale))
            self.optimizer.load_state_dict(opt_state)
            self.state.update({k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                               for k, v in strat_state.items()})
        if self.sharded is not None:
            self.sharded.refresh_sizes()
            log(f"distributed: {world.size} process(es), {'NCCL' if self.device.type == 'cuda' else 'gloo'}; "
                f"{self.sharded.total:,} Gaussians sharded {', '.join(f'{n:,}' for n in self.sharded.sizes)}")

    @property
    def num_gaussians(self) -> int:
        """The model's Gaussian count (of the whole model in a multi-process run)."""
        return self.sharded.total if self.sharded is not None else self.model.num_gaussians

    def whole_model(self) -> Optional[Model]:
        """The whole model: this process's model, or in a multi-process run the shards gathered on
        rank 0 (a collective: every rank must call it; None on the others)."""
        if self.sharded is None:
            return self.model
        state = self.sharded.gather(self.model.state())
        if state is None:
            return None
        return type(self.model).from_state(self._model_options, state[0], self.model.scene_scale).to(self.device)

    @property
    def display_model(self) -> Model:
        """The model the viewer shows: the training model, or on rank 0 of a multi-process run the
        whole model as last gathered (every ``--dist.viewer-every`` steps)."""
        return self._display if self._display is not None else self.model

    def set_model(self, model: Model) -> None:
        """Train `model` from here on, with a fresh optimizer and strategy state (the trainer's
        own start; benchmarks use it to train a fixed-size model)."""
        self.model: Model = model.to(self.device)
        self.settings = self.settings.for_scene(model.scene_scale)  # near/far planes follow the scene's size
        self.optimizer = self._optimizer_cls(model.params, model.learning_rates(self.start_step, self.iterations),
                                             self.cfg.options("optimizer"))
        self.strategy.check_sanity(model.params, self.optimizer.optimizers)
        self.state = self.strategy.initialize_state(model.scene_scale)
        self.optimizer.attach(self)

    # ------------------------------------------------------------------ one step
    def step_views(self, step: int) -> List[int]:
        """The training views of step `step`: ``--batch-size`` consecutive entries of the epoch
        order (`view_for_step`), so batch 1 is the one-view schedule and resume stays exact."""
        B = self.cfg.batch_size
        return [view_for_step(step * B + k, len(self.train_views), self.cfg.seed) for k in range(B)]

    def view_groups(self, views: List[int]) -> List[List[int]]:
        """`views` split into the groups that render in one call: views of one image size
        share a call when the model allows it (``Model.batch_views``), else one call each."""
        if not self.model.batch_views:
            return [[i] for i in views]
        groups: dict = {}
        for i in views:
            c = self.train_views.camera(i)
            groups.setdefault((c.width, c.height, c.camera_model), []).append(i)
        return list(groups.values())

    def train_step(self, step: int) -> dict:
        """One optimizer step on the step's training views (``--batch-size``, losses averaged);
        returns its loss, mean PSNR and the strategy's events (clone/split/prune counts)."""
        cfg = self.cfg
        if self.sharded is not None:
            return self.sharded.train_step(step)
        self.current_step = step  # what an optimizer with a schedule of its own (LM) reads
        views = self.step_views(step)
        B = len(views)
        groups = [(ids, *self.train_views.batch(ids)) for ids in self.view_groups(views)]
        self.optimizer.set_learning_rates(self.model.learning_rates(step, self.iterations))

        def step_info(outs):  # the step's renders as one info (merged when there are several)
            return outs[0].info if len(outs) == 1 else merge_infos([o.info for o in outs], self.num_gaussians)

        def forward():
            outs, loss = [], 0.0
            for ids, cameras, gt, masks in groups:
                out = self.model.render(cameras, self.settings, step=step, backgrounds=self.background[None].expand(
                    len(ids), -1), absgrad=self.strategy.absgrad)
                self.strategy.step_pre_backward(self.model.params, self.optimizer.optimizers, self.state, step,
                                                out.info)
                for k in range(len(ids)):
                    loss = loss + photometric_loss(out.colors[k], gt[k], cfg.ssim_lambda, masks[k]) / B
                for term in self.model.losses(step, out, cameras, gt).values():
                    loss = loss + term * (len(ids) / B)
                outs.append(out)
            info = step_info(outs)
            self.optimizer.set_visible(visible_rows(info, self.num_gaussians))  # sparse Adam's rows
            for term in self.strategy.losses(self.model.params, self.state, step, info).values():
                loss = loss + term
            if self.grid is not None:
                term = self.grid.loss(self.model.params, step)
                if term is not None:
                    loss = loss + term
            return loss, outs

        loss, outs = self.optimizer.step(forward)
        # after the backward: the gradients the strategy reads, of every render of the step
        info = step_info(outs)
        events = {}
        if self.optimizer.density_control(step):
            events = self.strategy.step_post_backward(self.model.params, self.optimizer.optimizers, self.state, step,
                                                      info, generator=step_generator(cfg.seed, step))
        events.update(self.model.update(step))
        with torch.no_grad():
            p = float(np.mean([psnr_fn(out.colors[k].detach().clamp(0, 1), gt[k], mask=masks[k]).item()
                               for out, (ids, _, gt, masks) in zip(outs, groups) for k in range(len(ids))]))
        return {"loss": loss.item(), "psnr": p, "events": events}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int, save_renders: int = 0) -> dict:
        """Test-view metrics of the current model; the first `save_renders` views (-1: all) are
        written to renders/test_<i>.png, render beside ground truth."""
        rdir = self.out / "renders"

        def save(i, pred, gt):
            if save_renders < 0 or i < save_renders:
                rdir.mkdir(parents=True, exist_ok=True)
                save_png(rdir / f"test_{i:03d}.png", torch.cat([pred, gt], 1))

        if self.sharded is not None:  # rank 0 evaluates the whole model; every rank gets the figures
            model = self.whole_model()
            m = evaluate(model, self.test_views, self.settings, self.background, save=save) if model else None
            m = self.world.broadcast_object(m, what="the evaluation")
        else:
            m = evaluate(self.model, self.test_views, self.settings, self.background, save=save)
        if not m:
            return {"step": step, "num_gaussians": self.num_gaussians}
        return {"step": step, "psnr": m["psnr"], "ssim": m["ssim"], "num_gaussians": self.num_gaussians,
                "render_ms": m["render_ms"], "per_view": m["per_view"]}

    # ------------------------------------------------------------------ checkpoints and export
    def save_checkpoint(self, step: int) -> Path:
        """Write checkpoint `step` (in a multi-process run: the shards gathered, written by rank 0
        in the one-process layout, so any number of processes resumes it)."""
        state = (self.model.state(), self.optimizer.state_dict(),
                 {k: v for k, v in self.state.items() if k != "scene_scale"})
        if self.sharded is not None:
            state = self.sharded.gather(*state)
        path = self.out / "ckpts" / f"ckpt_{step}.pt"
        if state is not None:
            splats, optimizer, strategy_state = state
            path = save_checkpoint(self.out, step, {
                "train_seconds": self.train_seconds, "scene_scale": self.model.scene_scale, "model": self.cfg.model,
                "splats": splats, "optimizer": optimizer, "strategy_state": strategy_state,
                "config": config_to_json(self.cfg), "history": self.history,
                "transform": np.asarray(self.data.transform).tolist(),
                **({"grid": self.grid.state()} if self.grid is not None else {}),
            }, keep=self.cfg.keep_checkpoints)
            self.callbacks.on_checkpoint(self, step, path)
        self.world.barrier("the checkpoint")
        self.world.last_checkpoint = str(path)
        return path

    def export(self) -> List[Path]:
        """The model in each --export format as model.<ext> (none for a model kind with no static form)."""
        model = self.whole_model()
        if model is None:  # not rank 0 of a multi-process run
            return []
        splats = model.to_splats()
        if splats is None:
            if self.cfg.export:
                hint = (f"; write one instant with splat-export {self.out} frame.ply --time T"
                        if hasattr(self.model, "splats_at") else "")
                self.log(f"export: a {self.model.name} model has no single static form; skipped "
                         f"{', '.join(self.cfg.export)}{hint}")
            return []
        grid, formats = None, list(self.cfg.export)
        if self.grid is not None:  # --compress sog: model.sog always, in the trained grid re-sorted for its final values
            formats += [] if "sog" in formats else ["sog"]
            grid = self.grid.sort(splats, self.iterations, keep=False).numpy()
        return write_model_files(self.out, splats, formats, self.cfg.rasterize_mode, grid_order=grid, log=self.log)

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Run the remaining steps, evaluate, export, write metrics.json; returns the metrics.
        Ctrl-C (SIGINT or SIGTERM) finishes the current step, writes a checkpoint and
        re-raises KeyboardInterrupt. The callbacks stay open until ``close()``."""
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / "config.json", json.dumps(config_to_json(self.cfg), indent=2).encode())
        try:
            self._refresh_display()
            self.callbacks.on_train_start(self)
            return self._loop()
        except BaseException:
            self.close(completed=False)
            raise

    def _refresh_display(self) -> None:
        """Gather the whole model for rank 0's viewer (multi-process runs with --viewer; a collective)."""
        if self.sharded is not None and self.cfg.viewer:
            self._display = self.whole_model()

    def close(self, completed: bool = True) -> None:
        """Close the callbacks (once)."""
        callbacks, self.callbacks = self.callbacks, CallbackList()
        callbacks.close(self, completed)

    def _loop(self) -> dict:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        bar = None
        if cfg.progress and self.world.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.iterations, initial=self.start_step, desc="train", dynamic_ncols=True,
                       mininterval=0.5, file=sys.stdout)
        step = self.start_step
        ema_loss = ema_psnr = None
        # Ctrl-C between steps: let the current step finish, so the checkpoint written
        # on interrupt is a consistent state that --resume continues exactly
        interrupted = []

        def stop() -> bool:  # every rank of a multi-process run stops at the same step (Ctrl-C reaches them apart)
            if self.sharded is not None:
                return self.world.any(bool(interrupted), "the interrupt flag")
            return bool(interrupted)

        old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, lambda *_: interrupted.append(1))
        governor = None
        threads_before = torch.get_num_threads()
        if cfg.threads > 0:
            set_threads(cfg.threads)
        elif self.device.type == "cpu":
            governor = self.threads = ThreadGovernor()
        restore_malloc = retain_freed_memory() if self.device.type == "cpu" else (lambda: None)
        try:
            t_last = time.perf_counter()
            while step < self.iterations:
                if stop():
                    raise KeyboardInterrupt
                if governor is not None:
                    governor.tick()
                r = self.train_step(step)
                step += 1
                if self.sharded is not None and cfg.viewer and step % cfg.dist.viewer_every == 0:
                    self._refresh_display()
                self.callbacks.on_step(self, step, r)  # inside the timed step: what a callback costs, training pays
                now = time.perf_counter()
                self.train_seconds += now - t_last
                ema_loss = r["loss"] if ema_loss is None else 0.9 * ema_loss + 0.1 * r["loss"]
                ema_psnr = r["psnr"] if ema_psnr is None else 0.9 * ema_psnr + 0.1 * r["psnr"]
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == self.iterations:
                        bar.set_postfix(loss=f"{ema_loss:.4f}", psnr=f"{ema_psnr:.2f}", gaussians=self.num_gaussians,
                                        refresh=False)
                if cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < self.iterations:
                    m = self.evaluate(step)
                    m.pop("per_view", None)
                    m["train_seconds"] = self.train_seconds
                    self.history.append(m)
                    if "psnr" in m:
                        (bar.write if bar else self.log)(
                            f"step {step}: test PSNR {m['psnr']:.2f} SSIM {m['ssim']:.4f}, {m['num_gaussians']:,} Gaussians")
                    self.callbacks.on_eval(self, step, m)
                if cfg.save_every > 0 and step % cfg.save_every == 0 and step < self.iterations:
                    self.save_checkpoint(step)
                self.callbacks.on_pause_point(self, step, lambda: bool(interrupted))  # not training time
                t_last = time.perf_counter()
            if stop():
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            try:
                path = self.save_checkpoint(step)
            except RankLost as e:  # another process is gone (torchrun stops the rest): the last checkpoint stands
                raise RankLost(f"interrupted at step {step}, and {e}") from None
            self.log(f"interrupted at step {step}: saved {path}; continue with --out {self.out} --resume")
            raise
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            if governor is not None:
                governor.close()
            elif cfg.threads > 0:
                set_threads(threads_before)
            restore_malloc()
        if bar is not None:
            bar.close()
        self.save_checkpoint(step)
        final = self.evaluate(step, save_renders=cfg.save_renders)
        exported = self.export()
        metrics = {
            "psnr": final.get("psnr"), "ssim": final.get("ssim"), "num_gaussians": self.num_gaussians,
            "train_seconds": self.train_seconds, "iterations": self.iterations,
            "seconds_per_iteration": self.train_seconds / max(1, self.iterations - self.start_step)
            if self.start_step == 0 else None,
            "render_ms": final.get("render_ms"), "test_views": len(self.test_views),
            "train_views": len(self.train_views), "data": str(self.data.root), "format": self.data.format,
            "backend": cfg.backend, "history": self.history, "per_view": final.get("per_view", []),
            "model": [p.name for p in exported],
            "model_kind": cfg.model, "strategy": cfg.strategy, "optimizer": cfg.optimizer,
        }
        if self.sharded is not None:
            metrics["distributed"] = self.distributed_stats()
        if self.world.is_main:
            atomic_write(self.out / "metrics.json", json.dumps(metrics, indent=2).encode())
        self._refresh_display()
        self.callbacks.on_train_end(self, metrics)
        return metrics

    def distributed_stats(self) -> Optional[dict]:
        """A multi-process run's figures per rank (seconds per stage, bytes sent, rows exchanged,
        pixels rendered), gathered on every rank (a collective)."""
        import resource

        mine = dict(self.sharded.stats, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    num_gaussians=self.model.num_gaussians)
        got = self.world.gather_objects(mine, "the statistics")
        got = self.world.broadcast_object(got, what="the statistics")
        return {"processes": self.world.size, "balance": self.cfg.dist.balance, "per_rank": got,
                "kappa": self.sharded.cost.kappa}
