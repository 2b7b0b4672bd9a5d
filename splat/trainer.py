"""Train a static 3D Gaussian-splatting model (the 3DGS recipe).

    splat-train --data DIR --out runs/x --iterations 30000
    splat-train --out runs/x --resume          # continue from the last checkpoint

The data format (COLMAP, NeRF-synthetic, nerfstudio) is detected from the folder;
without --data the embedded default scene is trained. The run directory gets
config.json, metrics.json, checkpoints (ckpts/), test renders (renders/) and the
model as a standard 3DGS .ply (model.ply).
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np
import torch

from .metrics import psnr as psnr_fn
from .metrics import ssim as ssim_fn
from .models.static import PARAM_NAMES, init_splats, render_splats
from .render_cli import save_png
from .strategies.adc import ADCStrategy

CKPT_VERSION = 1
DEFAULT_SCENE_ITERATIONS = 3000


@dataclasses.dataclass
class TrainConfig:
    """Train 3D Gaussians on a COLMAP, NeRF-synthetic or nerfstudio folder (or the embedded default scene)."""

    data: Optional[Path] = None
    """Dataset folder (format detected); omit to train the embedded default scene."""
    out: Path = Path("runs/default")
    """Run directory: config.json, metrics.json, ckpts/, renders/, model.ply."""
    iterations: Optional[int] = None
    """Training steps (one view per step). Default: 30000, or 3000 for the embedded default scene."""
    resume: bool = False
    """Continue from the last checkpoint in --out (its saved config is used)."""
    data_format: Literal["auto", "colmap", "blender", "nerfstudio"] = "auto"
    """Dataset layout; auto detects it from the folder."""
    downscale: int = 1
    """Integer image downscale factor (uses images_N/ folders where they exist)."""
    test_every: int = 8
    """Every N-th image (by name) is held out for testing where the data has no split; 0 = no test set."""
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour: RGBA images are composited on it and renders use it."""
    normalize: bool = True
    """Recentre and rescale COLMAP/nerfstudio scenes (the transform is saved with the model)."""
    max_init_points: Optional[int] = None
    """Subsample the initial point cloud to at most this many points."""
    num_random_points: int = 100_000
    """Random initial points when the data has none (NeRF-synthetic without points3d.ply)."""
    sh_degree: int = 3
    """Maximum spherical-harmonic degree (0..3)."""
    sh_degree_interval: int = 1000
    """Raise the SH degree by one every this many steps (scaled with --scale-schedule)."""
    init_opacity: float = 0.1
    init_scale: float = 1.0
    """Multiplier of the nearest-neighbour initial scale."""
    ssim_lambda: float = 0.2
    """Loss = (1 - lambda) * L1 + lambda * (1 - SSIM)."""
    lr_means: float = 1.6e-4
    """Position learning rate, times the scene scale; decays exponentially to lr_means_final."""
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    strategy: ADCStrategy = dataclasses.field(default_factory=ADCStrategy)
    """Adaptive density control; its step counts are for 30000 iterations (see --scale-schedule)."""
    scale_schedule: bool = True
    """Multiply the density-control and SH step counts by iterations/30000 (gsplat's steps_scaler)."""
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    backend: Literal["auto", "torch", "cpu", "cuda"] = "auto"
    device: str = "cpu"
    eval_every: int = 0
    """Evaluate on the test views every N steps (0: only at the end)."""
    save_every: int = 1000
    """Write a checkpoint every N steps (and at the end, and on Ctrl-C)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    export: List[Literal["ply", "splat", "spz", "compressed_ply"]] = dataclasses.field(default_factory=lambda: ["ply"])
    """Formats to write the final model in (model.<ext>)."""
    save_renders: int = -1
    """How many test views to save as PNG (prediction beside ground truth); -1: all."""
    seed: int = 0
    progress: bool = True
    """Show a progress bar."""
    viewer: bool = False
    """Serve a live web viewer of the training (viser): the current model from any camera, status, loss plot, pause."""
    viewer_port: int = 8080
    """Port of the live viewer (0: any free port)."""
    viewer_host: str = "127.0.0.1"
    """Address the live viewer listens on; 0.0.0.0 makes it reachable from other machines."""
    viewer_wait: bool = True
    """After training, keep the viewer open on the final model until Ctrl-C."""


# ----------------------------------------------------------------------------- data


def default_scene_path() -> Path:
    try:
        from scenes.default_scene import default_scene_path as f
    except ImportError:  # running from outside the checkout without scenes/ on the path
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from scenes.default_scene import default_scene_path as f
    return f()


def load_data(cfg: TrainConfig):
    from .data import load_dataset

    path = cfg.data if cfg.data is not None else default_scene_path()
    return load_dataset(path, downscale=cfg.downscale, test_every=cfg.test_every, background=cfg.background,
                        normalize=cfg.normalize, max_init_points=cfg.max_init_points,
                        num_random_points=cfg.num_random_points, seed=cfg.seed, format=cfg.data_format)


class Views:
    """A split's images as float tensors and cameras, indexed by view."""

    def __init__(self, split, device):
        self.names = list(split.names)
        self.images = [torch.from_numpy(np.ascontiguousarray(im)) for im in split.images]
        self.viewmats = torch.as_tensor(np.asarray(split.viewmats), dtype=torch.float32, device=device)
        self.Ks = torch.as_tensor(np.asarray(split.Ks), dtype=torch.float32, device=device)
        self.sizes = [(int(w), int(h)) for w, h in zip(split.widths, split.heights)]
        self.device = device

    def __len__(self):
        return len(self.names)

    def image(self, i: int) -> torch.Tensor:
        return (self.images[i].to(self.device, torch.float32) / 255.0)


# ----------------------------------------------------------------------------- model and optimizers


def make_optimizers(params: torch.nn.ParameterDict, cfg: TrainConfig, scene_scale: float) -> Dict[str, torch.optim.Adam]:
    lrs = {"means": cfg.lr_means * scene_scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
           "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN}
    return {k: torch.optim.Adam([{"params": [params[k]], "lr": lrs[k], "name": k}], eps=1e-15) for k in PARAM_NAMES}


def means_lr(cfg: TrainConfig, scene_scale: float, step: int, iterations: int) -> float:
    """Exponential decay from lr_means to lr_means_final (times the scene scale) over the run."""
    t = min(max(step / max(iterations, 1), 0.0), 1.0)
    return scene_scale * math.exp((1 - t) * math.log(cfg.lr_means) + t * math.log(cfg.lr_means_final))


def view_for_step(step: int, n_views: int, seed: int) -> int:
    """Each epoch visits every training view once in a fresh random order (stateless, so resume is exact)."""
    epoch, k = divmod(step, n_views)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return int(torch.randperm(n_views, generator=g)[k])


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 7919 + step + 1)


# ----------------------------------------------------------------------------- checkpoints


def _atomic_torch_save(obj, path: Path) -> None:
    from .io import atomic_write  # temporary file, fsync, rename

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def _atomic_write_text(path: Path, text: str) -> None:
    from .io import atomic_write

    atomic_write(path, text.encode("utf-8"))


def config_to_json(cfg: TrainConfig) -> dict:
    def conv(v):
        if isinstance(v, Path):
            return str(v)
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def config_from_json(d: dict) -> TrainConfig:
    d = dict(d)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"checkpoint config has unknown fields {sorted(unknown)}")
    d["strategy"] = ADCStrategy(**d.get("strategy", {}))
    for k in ("data", "out"):
        if d.get(k) is not None:
            d[k] = Path(d[k])
    if "background" in d:
        d["background"] = tuple(d["background"])
    return TrainConfig(**d)


def _checkpoints(out: Path) -> List[Path]:
    ck = [p for p in (out / "ckpts").glob("ckpt_*.pt") if re.fullmatch(r"ckpt_\d+\.pt", p.name)]
    return sorted(ck, key=lambda p: int(p.stem.split("_")[1]))


def latest_checkpoint(out: Path) -> Optional[Path]:
    ck = _checkpoints(out)
    return ck[-1] if ck else None


def load_checkpoint(path: Path) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable splat checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("version") != CKPT_VERSION or "splats" not in ck:
        raise ValueError(f"{path}: not a splat training checkpoint (version {CKPT_VERSION})")
    return ck


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, cfg: TrainConfig, log=print):
        self.log = log
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = torch.device(cfg.device)
        ck = None
        if cfg.resume:
            path = latest_checkpoint(self.out)
            if path is None:
                raise ValueError(f"--resume: no checkpoint in {self.out / 'ckpts'}")
            ck = load_checkpoint(path)
            saved = config_from_json(ck["config"])
            saved.resume = True
            saved.out = cfg.out
            for f in ("viewer", "viewer_port", "viewer_host", "viewer_wait"):  # this command's, not the run's
                setattr(saved, f, getattr(cfg, f))
            self.cfg = cfg = saved
            log(f"resuming {path} at step {ck['step']}")
        self.iterations = cfg.iterations or (DEFAULT_SCENE_ITERATIONS if cfg.data is None else 30_000)
        if self.iterations <= 0:
            raise ValueError(f"--iterations must be positive, got {self.iterations}")
        if not 0 <= cfg.sh_degree <= 3:
            raise ValueError(f"--sh-degree must be 0..3, got {cfg.sh_degree}")
        if cfg.viewer:  # a busy port fails now, not after loading the data
            _import_viewer().check_port(cfg.viewer_host, cfg.viewer_port)
        factor = self.iterations / 30_000 if cfg.scale_schedule else 1.0
        self.strategy = cfg.strategy.scaled(factor) if cfg.scale_schedule else cfg.strategy
        self.sh_interval = max(1, int(cfg.sh_degree_interval * factor))

        t0 = time.perf_counter()
        self.data = load_data(cfg)
        self.train_views = Views(self.data.train, self.device)
        self.test_views = Views(self.data.test, self.device)
        if len(self.train_views) == 0:
            raise ValueError("the dataset has no training views")
        # on resume, keep the scene scale the run started with (learning rate and thresholds depend on it)
        self.scene_scale = float(ck["scene_scale"]) if ck is not None else float(self.data.scene_scale)
        self.background = torch.tensor(np.asarray(self.data.background, dtype=np.float32), device=self.device)
        log(f"data: {self.data.format} {self.data.root}: {len(self.train_views)} train / {len(self.test_views)} test "
            f"views, {len(self.data.points):,} initial points{' (random)' if self.data.points_random else ''}, "
            f"scene scale {self.scene_scale:.3f} ({time.perf_counter() - t0:.1f} s)")

        if ck is None:
            splats = init_splats(self.data.points, self.data.points_rgb, cfg.sh_degree, cfg.init_opacity, cfg.init_scale)
            self.start_step = 0
            self.train_seconds = 0.0
        else:
            splats = ck["splats"]
            self.start_step = int(ck["step"])
            self.train_seconds = float(ck["train_seconds"])
        self.params = torch.nn.ParameterDict({k: torch.nn.Parameter(splats[k].to(self.device).contiguous())
                                              for k in PARAM_NAMES})
        self.optimizers = make_optimizers(self.params, cfg, self.scene_scale)
        self.strategy.check_sanity(self.params, self.optimizers)
        self.state = self.strategy.initialize_state(self.scene_scale)
        if ck is not None:
            for k, opt in self.optimizers.items():
                opt.load_state_dict(ck["optimizers"][k])
            self.state.update({k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                               for k, v in ck["strategy_state"].items()})
        self.history: List[dict] = ck["history"] if ck is not None else []

    # ------------------------------------------------------------------ one step
    def render(self, views: Views, i: int, sh_degree: int, **kw):
        W, H = views.sizes[i]
        return render_splats(dict(self.params), views.viewmats[i:i + 1], views.Ks[i:i + 1], W, H,
                             sh_degree=sh_degree, backgrounds=self.background[None],
                             rasterize_mode=self.cfg.rasterize_mode, backend=self.cfg.backend, **kw)

    def train_step(self, step: int) -> dict:
        cfg = self.cfg
        i = view_for_step(step, len(self.train_views), cfg.seed)
        gt = self.train_views.image(i)
        sh_degree = min(step // self.sh_interval, cfg.sh_degree)
        for g in self.optimizers["means"].param_groups:
            g["lr"] = means_lr(cfg, self.scene_scale, step, self.iterations)
        colors, _, info = self.render(self.train_views, i, sh_degree, absgrad=self.strategy.absgrad)
        self.strategy.step_pre_backward(self.params, self.optimizers, self.state, step, info)
        pred = colors[0]
        l1 = (pred - gt).abs().mean()
        ssim = ssim_fn(pred, gt, padding="same")
        loss = (1 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * (1 - ssim)
        loss.backward()
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        events = self.strategy.step_post_backward(self.params, self.optimizers, self.state, step, info,
                                                  generator=step_generator(cfg.seed, step))
        with torch.no_grad():
            p = psnr_fn(pred.detach().clamp(0, 1), gt).item()
        return {"loss": loss.item(), "psnr": p, "events": events}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, step: int, save_renders: int = 0) -> dict:
        views = self.test_views
        if len(views) == 0:
            return {"step": step, "num_gaussians": self.num_gaussians}
        ps, ss, secs = [], [], []
        rdir = self.out / "renders"
        for i in range(len(views)):
            t0 = time.perf_counter()
            colors, _, _ = self.render(views, i, self.cfg.sh_degree)
            secs.append(time.perf_counter() - t0)
            pred = colors[0].clamp(0, 1)
            gt = views.image(i)
            ps.append(psnr_fn(pred, gt).item())
            ss.append(ssim_fn(pred, gt).item())
            if save_renders < 0 or i < save_renders:
                rdir.mkdir(parents=True, exist_ok=True)
                save_png(rdir / f"test_{i:03d}.png", torch.cat([pred, gt], 1))
        return {"step": step, "psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)),
                "num_gaussians": self.num_gaussians, "render_ms": 1000 * float(np.median(secs)),
                "per_view": [{"name": n, "psnr": a, "ssim": b} for n, a, b in zip(views.names, ps, ss)]}

    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int) -> Path:
        ckdir = self.out / "ckpts"
        ckdir.mkdir(parents=True, exist_ok=True)
        path = ckdir / f"ckpt_{step}.pt"
        _atomic_torch_save({
            "version": CKPT_VERSION, "step": step, "train_seconds": self.train_seconds,
            "scene_scale": self.scene_scale,
            "splats": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "strategy_state": {k: v for k, v in self.state.items() if k != "scene_scale"},
            "config": config_to_json(self.cfg), "history": self.history,
            "transform": np.asarray(self.data.transform).tolist(),
        }, path)
        for p in _checkpoints(self.out)[:-max(1, self.cfg.keep_checkpoints)]:
            p.unlink()
        return path

    def export(self) -> List[Path]:
        from . import io as splat_io

        splats = {k: v.detach().cpu() for k, v in self.params.items()}
        paths = []
        for fmt in self.cfg.export:
            ext = {"ply": ".ply", "splat": ".splat", "spz": ".spz", "compressed_ply": ".compressed.ply"}[fmt]
            opts = {"antialiased": self.cfg.rasterize_mode == "antialiased"} if fmt == "spz" else {}
            paths.append(splat_io.save(self.out / f"model{ext}", splats, format=fmt, **opts))
        return paths

    # ------------------------------------------------------------------ live viewer
    def start_viewer(self):
        """Serve the live viewer (viser) on the training: (Viewer, TrainingLink)."""
        v = _import_viewer()
        link = v.TrainingLink(self.iterations, self.start_step)
        from viewer.scene import cameras_of_split

        scene = v.SplatScene({k: p.detach().clone() for k, p in self.params.items()},
                             cameras=cameras_of_split(self.data.train), background=tuple(self.cfg.background),
                             rasterize_mode=self.cfg.rasterize_mode, name=self.out.resolve().name)
        viewer = v.Viewer(scene, host=self.cfg.viewer_host, port=self.cfg.viewer_port, link=link,
                          snapshot_dir=self.out / "snapshots", log=self.log)
        self.log(f"viewer: {viewer.url}")
        return viewer, link

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.out / "config.json", json.dumps(config_to_json(cfg), indent=2))
        viewer, link = self.start_viewer() if cfg.viewer else (None, None)
        self.viewer = None
        done = False
        try:
            metrics = self._train(link)
            done = True
        finally:
            if viewer is not None:
                if done and cfg.viewer_wait:
                    self.viewer = viewer  # left open on the final model: see train()
                else:
                    viewer.stop()
        return metrics

    def _train(self, link=None) -> dict:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.iterations, initial=self.start_step, desc="train", dynamic_ncols=True,
                       mininterval=0.5, file=sys.stdout)
        step = self.start_step
        ema_loss = ema_psnr = None
        # Ctrl-C between steps: let the current step finish, so the checkpoint written
        # on interrupt is a consistent state that --resume continues exactly
        interrupted = []
        old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, lambda *_: interrupted.append(1))
        try:
            t_last = time.perf_counter()
            while step < self.iterations:
                if interrupted:
                    raise KeyboardInterrupt
                r = self.train_step(step)
                step += 1
                if link is not None:  # inside the timed step: what the viewer costs, training pays
                    link.step_done(step, r["loss"], r["psnr"], self.num_gaussians, self.params)
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
                    m.pop("per_view")
                    m["train_seconds"] = self.train_seconds
                    self.history.append(m)
                    (bar.write if bar else self.log)(
                        f"step {step}: test PSNR {m['psnr']:.2f} SSIM {m['ssim']:.4f}, {m['num_gaussians']:,} Gaussians")
                if cfg.save_every > 0 and step % cfg.save_every == 0 and step < self.iterations:
                    self.save_checkpoint(step)
                if link is not None and link.paused:  # not training time
                    link.wait_if_paused(self.params, should_stop=lambda: bool(interrupted))
                t_last = time.perf_counter()
            if interrupted:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            path = self.save_checkpoint(step)
            self.log(f"interrupted at step {step}: saved {path}; continue with --out {self.out} --resume")
            raise
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        if bar is not None:
            bar.close()
        if link is not None:
            link.finish(self.params)
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
        }
        _atomic_write_text(self.out / "metrics.json", json.dumps(metrics, indent=2))
        return metrics


def _import_viewer():
    try:
        import viewer
    except ImportError:  # running from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import viewer
    return viewer


def train(cfg: TrainConfig, log=print) -> dict:
    t = Trainer(cfg, log=log)
    m = t.train()
    if m["psnr"] is not None:
        log(f"test PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, {m['num_gaussians']:,} Gaussians, "
            f"{m['train_seconds']:.0f} s training ({m['test_views']} test views) -> {t.out}")
    else:
        log(f"no test views; {m['num_gaussians']:,} Gaussians, {m['train_seconds']:.0f} s training -> {t.out}")
    if t.viewer is not None:  # --viewer-wait: keep showing the final model
        log(f"the viewer stays open at {t.viewer.url} (Ctrl-C to close)")
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            t.viewer.stop()
    return m


def main(argv: Optional[List[str]] = None) -> None:
    import tyro

    cfg = tyro.cli(TrainConfig, args=argv, description=__doc__)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        train(cfg)
    except KeyboardInterrupt:
        sys.exit(130)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"splat-train: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
