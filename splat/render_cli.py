"""Render a trained model: at the test (or train) views, along an orbit, or along a
smooth path through the training cameras, as RGB, depth or alpha.

    splat-render runs/default                          # test views -> runs/default/render/test/*.png
    splat-render runs/default --cameras orbit          # runs/default/render/orbit_rgb.mp4
    splat-render model.spz --data DIR --cameras path --mode depth --video path.gif
    splat-render runs/dyn --cameras orbit              # a dynamic model: camera and time move together
    splat-render runs/dyn --time 0.5                   # test views, all at t = 0.5
    splat-render runs/dyn --cameras fixed --view 2     # training camera 2, time sweeping
    splat-render runs/relit --light 2 -1 3             # a relightable model: test views under a new light
    splat-render runs/relit --cameras fixed --view 4   # training camera 4, the light circling the scene
    splat-render runs/relit --cameras orbit --light-orbit  # camera and light both circling
    splat-render runs/default --effect dof --aperture 0.1  # secondary rays (ray tracer): depth of field
    splat-render runs/default --cameras orbit --effect mirror   # a mirror plane under the scene
    splat-render runs/default --effect shadow          # a floor that catches the scene's shadows

MODEL is a run directory (its last checkpoint, or model.ply), a checkpoint
(.pt), or a model file (.ply, .compressed.ply, .splat, .spz). Camera sets that
need the dataset take it from --data or from the run's config.json.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import List, Literal, Optional, Tuple

import numpy as np
import torch
from tyro.conf import Positional

from .cameras import Cameras, orbit_cameras, path_cameras
from .io.images import colorize, depth_range_of, write_png, write_video
from .models.relightable import check_light_options
from .render import RenderSettings
from .train.data import Views
from .train.evaluate import evaluate, render_views
from .train.run import load_model, run_data_path, run_dataset
from .cli_help import reflow_help


@dataclasses.dataclass
class RenderConfig:
    """Render a trained Gaussian model to images or a video."""

    model: Positional[Path]
    """Run directory, checkpoint (.pt) or model file (.ply, .compressed.ply, .splat, .spz)."""
    out: Optional[Path] = None
    """Output folder (default: <run>/render, or render/ beside the model file)."""
    cameras: Literal["test", "train", "orbit", "path", "fixed"] = "test"
    """test/train: the dataset's views (PNGs, with PSNR/SSIM for RGB); orbit: a circle around the scene;
    path: a smooth interpolation through the training cameras; fixed: one training camera (--view) while
    time moves (dynamic models) or the light circles the scene (relightable models). orbit, path and fixed
    write a video."""
    time: Optional[float] = None
    """Dynamic models: render every view at this time (default: test/train views at their own times;
    videos sweep the model's time range while the camera moves)."""
    time_range: Optional[Tuple[float, float]] = None
    """Dynamic models: the times a video sweeps (default: the range the model was trained on); videos only."""
    light: Optional[Tuple[float, float, float]] = None
    """Relightable models: a point light at this world position for every view (default: test/train views
    under their own lights; videos under a light at the training lights' mean distance and height)."""
    light_intensity: Optional[Tuple[float, float, float]] = None
    """Relightable models: the light's linear RGB radiant intensity, W/sr (default: the views' own, else the
    training lights' mean)."""
    light_orbit: bool = False
    """Relightable models, videos: the light circles the scene (at the training lights' mean distance and
    height) once over the video; --cameras fixed does this by default."""
    view: int = 0
    """--cameras fixed: the index of the training camera."""
    mode: Literal["rgb", "depth", "alpha"] = "rgb"
    """What to render: colour, expected depth (colour-mapped) or accumulated opacity."""
    data: Optional[Path] = None
    """Dataset folder for camera sets (default: the run's config.json; orbit works without one)."""
    video: Optional[Path] = None
    """Video file for orbit/path (.mp4 or .gif; default <out>/<cameras>_<mode>.mp4)."""
    frames: int = 120
    """Frames along an orbit or path."""
    fps: int = 30
    resolution: Optional[Tuple[int, int]] = None
    """Width and height for orbit/path frames (default: the dataset's first camera, else 512 512)."""
    elevation: float = 25.0
    """Orbit elevation in degrees above the cameras' mean horizon (orbit without data only)."""
    background: Optional[Tuple[float, float, float]] = None
    """Background colour (default: the run's, else white)."""
    backend: Literal["auto", "torch", "cpu", "cuda", "raytrace"] = "auto"
    """Renderer: auto (the native rasterizer), cpu, torch, cuda, or raytrace (3DGRT ray tracing)."""
    effect: Literal["none", "dof", "mirror", "shadow"] = "none"
    """Secondary rays (always ray traced): dof = depth of field through a thin lens (--aperture, --focus,
    --dof-samples); mirror = a mirror plane under the scene; shadow = a chequered floor under the scene
    that catches its shadows from a distant light (--light-dir)."""
    aperture: Optional[float] = None
    """dof: lens radius in world units (default: 3% of the focus distance)."""
    focus: Optional[float] = None
    """dof: distance in focus along the view axis, world units (default: the scene centre's depth in the
    first view)."""
    dof_samples: int = 16
    """dof: rays per pixel on the lens."""
    plane_offset: float = 0.0
    """mirror/shadow: how far below the scene's lowest opaque Gaussians the plane lies (world units)."""
    light_dir: Optional[Tuple[float, float, float]] = None
    """shadow: direction towards the distant light (world; default: up, tilted 35 degrees)."""
    rasterize_mode: Optional[Literal["classic", "antialiased"]] = None
    """Default: the run's setting, else classic."""


def render(cfg: RenderConfig, log=print) -> dict:
    """Render `cfg.model` as `cfg` asks; returns what was written (out, folder or video, views
    or frames, psnr/ssim for RGB test/train views, seconds). Raises ``ValueError`` /
    ``FileNotFoundError`` naming the file for a bad model, dataset or video name."""
    model, run_cfg = load_model(cfg.model)
    dynamic = "time" in model.requires
    if not dynamic and (cfg.time is not None or cfg.time_range is not None):
        raise ValueError(f"{cfg.model}: --time / --time-range are for dynamic models; this is a {model.name} model")
    if cfg.time_range is not None and (cfg.time is not None or cfg.cameras in ("test", "train")):
        raise ValueError("--time-range is the sweep of a video (orbit, path, fixed) without --time")
    relightable = "light_position" in model.requires
    if cfg.cameras == "fixed" and not (dynamic or relightable):
        raise ValueError(f"--cameras fixed sweeps time (dynamic models) or the light (relightable models); "
                         f"{cfg.model} is a {model.name} model")
    if not relightable and (cfg.light is not None or cfg.light_intensity is not None or cfg.light_orbit):
        raise ValueError(f"{cfg.model}: --light / --light-intensity / --light-orbit are for relightable models; "
                         f"this is a {model.name} model")
    if relightable and cfg.cameras == "fixed" and cfg.light is not None and not dynamic:
        raise ValueError("--cameras fixed moves the light around a fixed camera; with --light nothing would move "
                         "(render one view with --cameras train, or drop --light)")
    if cfg.light_orbit and (cfg.light is not None or cfg.cameras in ("test", "train")):
        raise ValueError("--light-orbit moves the light along a video (orbit, path, fixed) without --light")
    check_light_options(cfg.light, cfg.light_intensity)
    model_path = Path(cfg.model)
    out = cfg.out or ((model_path if model_path.is_dir() else model_path.parent) / "render")
    if model_path.parent.name == "ckpts" and cfg.out is None:
        out = model_path.parent.parent / "render"
    bg = cfg.background or (tuple(run_cfg["background"]) if run_cfg else (1.0, 1.0, 1.0))
    settings = RenderSettings(cfg.backend, cfg.rasterize_mode or (run_cfg.get("rasterize_mode", "classic")
                                                                  if run_cfg else "classic")
                              ).for_scene(model.scene_scale)
    log(f"{model.num_gaussians:,} Gaussians, {model.summary()}")

    data = None
    data_path = run_data_path(run_cfg, cfg.data)
    if cfg.cameras in ("test", "train", "path", "fixed") or (cfg.cameras == "orbit" and data_path is not None):
        if data_path is None:
            raise ValueError(f"--cameras {cfg.cameras} needs the dataset: pass --data DIR")
        data = run_dataset(data_path, run_cfg, bg)

    render_mode = {"rgb": "RGB", "depth": "ED", "alpha": "RGB"}[cfg.mode]
    bgt = torch.tensor(bg, dtype=torch.float32)
    effect = None
    if not math.isfinite(cfg.plane_offset):
        raise ValueError(f"--plane-offset must be a finite distance, got {cfg.plane_offset}")
    if cfg.effect != "none":
        if cfg.mode != "rgb":
            raise ValueError(f"--effect {cfg.effect} renders colour (--mode rgb)")
        if model.feature_channels:
            raise ValueError(f"--effect: {model.name} models render features, not colours; secondary rays "
                             f"render RGB models (static, 4dgs, spacetime)")
        effect = _effects(cfg, model, settings, bgt, data)

    result: dict = {"out": str(out)}
    t_start = time.perf_counter()
    if cfg.cameras in ("test", "train"):
        split = data.test if cfg.cameras == "test" else data.train
        if len(split) == 0:
            raise ValueError(f"the dataset has no {cfg.cameras} views")
        views = Views(split, "cpu")
        if cfg.time is not None:  # every view at one instant
            views.cameras = [at_time(c, cfg.time) for c in views.cameras]
            result["time"] = cfg.time
        relit = relightable and (cfg.light is not None or cfg.light_intensity is not None)
        if relit:  # every view under one light (or its own light at another intensity)
            views.cameras = [under_light(c, cfg.light, cfg.light_intensity) for c in views.cameras]
            result.update(light=cfg.light, light_intensity=cfg.light_intensity)
        model.check_cameras(views.camera(0), where=f"{data_path} ({cfg.cameras} views)")
        folder = out / cfg.cameras
        folder.mkdir(parents=True, exist_ok=True)

        def png(i: int) -> Path:
            return folder / f"{i:03d}_{Path(views.names[i]).stem}_{cfg.mode}.png"

        result.update(views=len(split), folder=str(folder))
        if effect is not None:  # no ground truth with a lens or a plane: images only
            for i in range(len(views)):
                c, a = effect(views.camera(i))
                write_png(png(i), colorize(c[0], None, "rgb"))
            log(f"{cfg.cameras}: {len(split)} views with {cfg.effect} -> {folder}")
        elif cfg.mode == "rgb" and relit:  # no ground truth under this light: images only
            for i, c, a, _ in render_views(model, views, settings, backgrounds=bgt[None]):
                write_png(png(i), colorize(c, a, "rgb"))
            log(f"{cfg.cameras}: {len(split)} views under the light {cfg.light} -> {folder}")
        elif cfg.mode == "rgb":
            m = evaluate(model, views, settings, bgt, save=lambda i, pred, gt: write_png(png(i), colorize(pred, None, "rgb")))
            result.update(psnr=m["psnr"], ssim=m["ssim"])
            log(f"{cfg.cameras}: {len(split)} views, PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f} -> {folder}")
        else:
            depth_range = None
            for i, c, a, _ in render_views(model, views, settings, render_mode=render_mode):
                if cfg.mode == "depth" and depth_range is None:
                    depth_range = depth_range_of(c, a)
                write_png(png(i), colorize(c, a, cfg.mode, depth_range))
            log(f"{cfg.cameras}: {len(split)} {cfg.mode} images -> {folder}")
    else:
        if data is not None:
            v = cfg.view if cfg.cameras == "fixed" else 0
            if not 0 <= v < len(data.train):
                raise ValueError(f"--view {cfg.view}: the dataset has {len(data.train)} training views")
            K0, W, H = data.train.Ks[v].copy(), data.train.widths[v], data.train.heights[v]
            train_V = np.asarray(data.train.viewmats, dtype=np.float64)
        else:
            W, H = 512, 512
            f = 0.5 * W / math.tan(math.radians(25))
            K0 = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
            train_V = None
        if cfg.resolution is not None:
            W2, H2 = cfg.resolution
            K0 = K0.copy()
            K0[0] *= W2 / W
            K0[1] *= H2 / H
            W, H = W2, H2
        if cfg.cameras == "orbit":
            Vs = orbit_cameras(cfg.frames, train_V, model.params["means"].detach().cpu().numpy(), cfg.elevation)
        elif cfg.cameras == "fixed":  # K0, W, H are that camera's (scaled by --resolution above)
            Vs = np.repeat(train_V[cfg.view][None], cfg.frames, 0)
        else:
            Vs = path_cameras(cfg.frames, train_V)
        times = None
        sweep = cfg.time_range or getattr(model, "time_range", None)  # a model kind without one: no sweep
        if dynamic and (cfg.time is not None or sweep is not None):
            times = np.full(len(Vs), cfg.time) if cfg.time is not None else np.linspace(sweep[0], sweep[1], len(Vs))
            result["times"] = [float(times[0]), float(times[-1])]
        lights = intensities = None
        if relightable:
            intensities = np.tile(np.asarray(cfg.light_intensity if cfg.light_intensity is not None
                                             else model.default_intensity.cpu().numpy(), dtype=np.float64), (len(Vs), 1))
            if cfg.light is not None:
                lights = np.tile(np.asarray(cfg.light, dtype=np.float64), (len(Vs), 1))
            elif cfg.light_orbit or cfg.cameras == "fixed":
                lights = np.stack([model.orbit_light(i / len(Vs)).cpu().numpy() for i in range(len(Vs))])
                result["light_orbit"] = True
            else:
                lights = np.tile(model.default_light.cpu().numpy(), (len(Vs), 1))
        cams = Cameras.from_numpy(Vs, np.repeat(K0[None], len(Vs), 0), W, H, time=times, light_position=lights,
                                  light_intensity=intensities)
        model.check_cameras(cams, where=f"--cameras {cfg.cameras}")
        out.mkdir(parents=True, exist_ok=True)
        frames, depth_range = [], None
        backgrounds = bgt[None] if cfg.mode == "rgb" else None
        for i in range(len(cams)):
            with torch.no_grad():
                if effect is not None:
                    c, a = effect(cams[i])
                else:
                    c, a, _, _ = model.render(cams[i], settings, backgrounds=backgrounds, render_mode=render_mode)
            c, a = c[0], a[0]
            if cfg.mode == "depth" and depth_range is None:
                depth_range = depth_range_of(c, a)
            frames.append(colorize(c, a, cfg.mode, depth_range))
        video = cfg.video or out / f"{cfg.cameras}_{cfg.mode}.mp4"
        write_video(Path(video), frames, cfg.fps)
        result.update(frames=len(frames), video=str(video))
        log(f"{cfg.cameras}: {len(frames)} frames at {W}x{H} -> {video}")
    result["seconds"] = time.perf_counter() - t_start
    return result


def _effects(cfg: RenderConfig, model, settings: RenderSettings, bgt: torch.Tensor, data):
    """The renderer of one camera with --effect: secondary rays through `splat.secondary_rays`.
    The plane and the lens are fixed for the whole render (from the scene and the first camera)."""
    from .cameras import camera_frame
    from .secondary_rays import ThinLens, default_light, default_plane, render_secondary

    state = {}

    def one(cam: Cameras):
        with torch.no_grad():
            g = model.gaussians(cam, settings)
        if "lens" not in state:
            means = g.means.detach().cpu().numpy()
            if cfg.effect == "dof":
                V = cam.viewmats[0].cpu().double().numpy()
                z = means @ V[2, :3] + V[2, 3]
                focus = cfg.focus if cfg.focus is not None else float(np.median(z[z > 0])) if (z > 0).any() else 1.0
                aperture = cfg.aperture if cfg.aperture is not None else 0.03 * focus
                state["lens"] = ThinLens(aperture, focus, cfg.dof_samples)
            else:
                state["lens"] = None
            if cfg.effect in ("mirror", "shadow"):
                views = data.train.viewmats if data is not None else cam.viewmats.cpu().numpy()
                up = camera_frame(np.asarray(views, dtype=np.float64))[1]
                light = tuple(cfg.light_dir) if cfg.light_dir is not None else default_light(up)
                state["plane"] = default_plane(means, g.opacities.detach().cpu().numpy(), up, cfg.effect,
                                               cfg.plane_offset, light=light)
            else:
                state["plane"] = None
        c, a = render_secondary(g, cam, bgt, state["lens"], state["plane"], settings)
        return c[None], a[None]

    return one


def at_time(cameras: Cameras, t: float) -> Cameras:
    """`cameras` with every camera's time set to `t`."""
    return dataclasses.replace(cameras, time=torch.full((len(cameras),), float(t), dtype=cameras.viewmats.dtype,
                                                         device=cameras.device))


def under_light(cameras: Cameras, position=None, intensity=None) -> Cameras:
    """`cameras` with every camera's point light moved to `position` [3] and/or its intensity set
    to `intensity` [3] (None: keep the cameras' own)."""
    C, dt, dev = len(cameras), cameras.viewmats.dtype, cameras.device
    changes = {}
    if position is not None:
        changes["light_position"] = torch.tensor(position, dtype=dt, device=dev).reshape(1, 3).repeat(C, 1)
    if intensity is not None:
        changes["light_intensity"] = torch.tensor(intensity, dtype=dt, device=dev).reshape(1, 3).repeat(C, 1)
    return dataclasses.replace(cameras, **changes)


def main(argv: Optional[List[str]] = None) -> None:
    import tyro

    reflow_help()
    cfg = tyro.cli(RenderConfig, args=argv, description=__doc__)
    try:
        render(cfg)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"splat-render: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
