"""Render a trained model: at the test (or train) views, along an orbit, or along a
smooth path through the training cameras, as RGB, depth or alpha.

    splat-render runs/default                          # test views -> runs/default/render/test/*.png
    splat-render runs/default --cameras orbit          # runs/default/render/orbit_rgb.mp4
    splat-render model.spz --data DIR --cameras path --mode depth --video path.gif

MODEL is a run directory (its last checkpoint, or model.ply), a checkpoint
(.pt), or a model file (.ply, .compressed.ply, .splat, .spz). Camera sets that
need the dataset take it from --data or from the run's config.json.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np
import torch
from tyro.conf import Positional

from .models.static import render_splats, sh_degree_of


@dataclasses.dataclass
class RenderConfig:
    """Render a trained Gaussian model to images or a video."""

    model: Positional[Path]
    """Run directory, checkpoint (.pt) or model file (.ply, .compressed.ply, .splat, .spz)."""
    out: Optional[Path] = None
    """Output folder (default: <run>/render, or render/ beside the model file)."""
    cameras: Literal["test", "train", "orbit", "path"] = "test"
    """test/train: the dataset's views (PNGs, with PSNR/SSIM for RGB); orbit: a circle around the scene;
    path: a smooth interpolation through the training cameras. orbit and path write a video."""
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
    backend: Literal["auto", "torch", "cpu", "cuda"] = "auto"
    rasterize_mode: Optional[Literal["classic", "antialiased"]] = None
    """Default: the run's setting, else classic."""


# ----------------------------------------------------------------------------- loading


def load_model(path: Path) -> Tuple[Dict[str, torch.Tensor], Optional[dict]]:
    """The splats dict and, where the model comes from a run, its training config."""
    from . import io as splat_io
    from .trainer import latest_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file or run directory")
    cfg = None
    if path.is_dir():
        run = path
        ck = latest_checkpoint(run)
        if ck is not None:
            path = ck
        elif (run / "model.ply").exists():
            path = run / "model.ply"
        else:
            raise ValueError(f"{run}: no checkpoint in ckpts/ and no model.ply")
        if (run / "config.json").exists():
            cfg = json.loads((run / "config.json").read_text())
    elif path.parent.name == "ckpts" and (path.parent.parent / "config.json").exists():
        cfg = json.loads((path.parent.parent / "config.json").read_text())
    elif (path.parent / "config.json").exists():
        cfg = json.loads((path.parent / "config.json").read_text())
    splats = splat_io.load(path)
    return {k: v.float().contiguous() for k, v in splats.items()}, cfg


def run_data_path(run_cfg: Optional[dict], data: Optional[Path] = None) -> Optional[Path]:
    """The dataset a model was trained on: `data` if given, else the run's config
    (a run on the embedded default scene stores data = null)."""
    if data is not None:
        return Path(data)
    if run_cfg is None:
        return None
    if run_cfg.get("data"):
        return Path(run_cfg["data"])
    from .trainer import default_scene_path

    return default_scene_path()


def load_run_dataset(data_path: Path, run_cfg: Optional[dict], background):
    """Load `data_path` the way the run loaded it (downscale, split, normalisation)."""
    from .data import load_dataset

    kw = {}
    if run_cfg:
        kw = dict(downscale=run_cfg.get("downscale", 1), test_every=run_cfg.get("test_every", 8),
                  normalize=run_cfg.get("normalize", True), format=run_cfg.get("data_format", "auto"))
    return load_dataset(data_path, background=background, **kw)


# ----------------------------------------------------------------------------- cameras


def _look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)  # OpenCV: y = -up (down), x = y x z = z x up (right)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, np.array([1.0, 0.0, 0.0]))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    V = np.eye(4)
    V[:3, :3] = np.stack([x, y, z])
    V[:3, 3] = -V[:3, :3] @ eye
    return V


def _camera_frame(viewmats: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres, mean up vector and the point the cameras look at (least squares)."""
    R = viewmats[:, :3, :3]
    centres = -np.einsum("nji,nj->ni", R, viewmats[:, :3, 3])
    up = -R[:, 1, :].mean(0)
    up /= np.linalg.norm(up)
    dirs = R[:, 2, :]
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centres, dirs):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    # nearly parallel viewing axes (forward-facing captures) leave the meeting point
    # undetermined: look at a point one median camera spread ahead instead
    if np.linalg.cond(A) > 1e4:
        spread = float(np.median(np.linalg.norm(centres - np.median(centres, 0), axis=1))) or 1.0
        target = np.median(centres, 0) + dirs.mean(0) / np.linalg.norm(dirs.mean(0)) * 3 * spread
    else:
        target = np.linalg.solve(A, b)
    return centres, up, target


def orbit_cameras(n: int, viewmats: Optional[np.ndarray], splats: Dict[str, torch.Tensor],
                  elevation_deg: float) -> np.ndarray:
    """n world->camera matrices on a circle around the scene."""
    if viewmats is not None and len(viewmats) > 0:
        centres, up, target = _camera_frame(viewmats)
        rel = centres - target
        h = rel @ up
        height = float(np.median(h))
        radius = float(np.median(np.linalg.norm(rel - np.outer(h, up), axis=1)))
    else:
        m = splats["means"].numpy().astype(np.float64)
        target = np.median(m, 0)
        spread = np.percentile(np.linalg.norm(m - target, axis=1), 90)
        up = np.array([0.0, 0.0, 1.0])
        dist = 2.5 * spread
        radius = dist * math.cos(math.radians(elevation_deg))
        height = dist * math.sin(math.radians(elevation_deg))
    a = np.cross(up, [1.0, 0.0, 0.0])
    if np.linalg.norm(a) < 1e-6:
        a = np.cross(up, [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    out = []
    for t in np.linspace(0, 2 * math.pi, n, endpoint=False):
        eye = target + height * up + radius * (math.cos(t) * a + math.sin(t) * b)
        out.append(_look_at(eye, target, up))
    return np.stack(out)


def path_cameras(n: int, viewmats: np.ndarray) -> np.ndarray:
    """n cameras on a smooth closed path through the training cameras (ordered by angle
    around the scene), positions by Catmull-Rom spline and rotations by slerp."""
    from scipy.spatial.transform import Rotation, Slerp

    if len(viewmats) < 2:
        raise ValueError("a camera path needs at least 2 training cameras")
    centres, up, target = _camera_frame(viewmats)
    a = np.cross(up, [1.0, 0.0, 0.0])
    if np.linalg.norm(a) < 1e-6:
        a = np.cross(up, [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    rel = centres - target
    order = np.argsort(np.arctan2(rel @ b, rel @ a))
    keys = order[:: max(1, len(order) // 12)]  # at most ~12 keyframes keeps the path smooth
    K = len(keys)
    c2w_R = np.stack([viewmats[k, :3, :3].T for k in keys])
    P = centres[keys]
    rots = Rotation.from_matrix(np.concatenate([c2w_R, c2w_R[:1]]))
    slerp = Slerp(np.arange(K + 1), rots)
    out = []
    for t in np.linspace(0, K, n, endpoint=False):
        i = int(t)
        u = t - i
        p0, p1, p2, p3 = (P[(i + j) % K] for j in (-1, 0, 1, 2))
        pos = 0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                     + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3)
        R = slerp([t]).as_matrix()[0].T  # world->camera rotation
        V = np.eye(4)
        V[:3, :3] = R
        V[:3, 3] = -R @ pos
        out.append(V)
    return np.stack(out)


# ----------------------------------------------------------------------------- colour maps


def turbo(x: np.ndarray) -> np.ndarray:
    """Google's polynomial approximation of the turbo colour map; x in [0,1] -> RGB in [0,1]."""
    x = np.clip(x, 0.0, 1.0)
    r = 0.13572138 + x * (4.61539260 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943))))
    g = 0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604))))
    b = 0.10667330 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973))))
    return np.clip(np.stack([r, g, b], -1), 0.0, 1.0)


def to_image(colors: torch.Tensor, alphas: torch.Tensor, mode: str, depth_range: Optional[Tuple[float, float]]) -> np.ndarray:
    """One render [H,W,D] -> uint8 RGB."""
    if mode == "rgb":
        rgb = colors[..., :3].clamp(0, 1).numpy()
    elif mode == "alpha":
        rgb = np.repeat(alphas.clamp(0, 1).numpy(), 3, -1)
    else:
        d = colors[..., 0].numpy()
        a = alphas[..., 0].numpy()
        lo, hi = depth_range
        x = (d - lo) / max(hi - lo, 1e-8)
        rgb = turbo(1.0 - x) * a[..., None]  # near = red, far = blue, empty = black
    return (rgb * 255 + 0.5).astype(np.uint8)


def depth_range_of(colors: torch.Tensor, alphas: torch.Tensor) -> Tuple[float, float]:
    d = colors[..., 0][alphas[..., 0] > 0.5]
    if d.numel() == 0:
        return 0.0, 1.0
    lo, hi = np.quantile(d.float().numpy(), [0.02, 0.98]).tolist()
    return lo, hi if hi > lo else lo + 1.0


# ----------------------------------------------------------------------------- main


def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    from .io import atomic_write

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def save_png(path: Path, img: torch.Tensor) -> None:
    """A float image [H,W,C] (C = 1 or 3), clamped to [0, 1], as an 8-bit PNG, written atomically."""
    arr = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    _write_png(path, arr[..., 0] if arr.shape[-1] == 1 else arr)


def write_video(path: Path, frames: List[np.ndarray], fps: int) -> None:
    import imageio.v2 as imageio

    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"--video {path}: use a .mp4 or .gif file name")
    tmp = path.with_name(path.stem + ".tmp" + suffix)
    try:
        if suffix == ".gif":
            imageio.mimsave(tmp, frames, duration=1000.0 / fps, loop=0)
        else:
            # even sizes for yuv420p
            H, W = frames[0].shape[:2]
            frames = [f[: H - H % 2, : W - W % 2] for f in frames]
            with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                    ffmpeg_log_level="error") as w:
                for f in frames:
                    w.append_data(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def render(cfg: RenderConfig, log=print) -> dict:
    from .metrics import psnr, ssim

    splats, run_cfg = load_model(cfg.model)
    model_path = Path(cfg.model)
    out = cfg.out or ((model_path if model_path.is_dir() else model_path.parent) / "render")
    if model_path.parent.name == "ckpts" and cfg.out is None:
        out = model_path.parent.parent / "render"
    bg = cfg.background or (tuple(run_cfg["background"]) if run_cfg else (1.0, 1.0, 1.0))
    rmode = cfg.rasterize_mode or (run_cfg.get("rasterize_mode", "classic") if run_cfg else "classic")
    sh_degree = sh_degree_of(splats)
    log(f"{splats['means'].shape[0]:,} Gaussians, SH degree {sh_degree}")

    data = None
    data_path = run_data_path(run_cfg, cfg.data)
    if cfg.cameras in ("test", "train", "path") or (cfg.cameras == "orbit" and data_path is not None):
        if data_path is None:
            raise ValueError(f"--cameras {cfg.cameras} needs the dataset: pass --data DIR")
        data = load_run_dataset(data_path, run_cfg, bg)

    render_mode = {"rgb": "RGB", "depth": "ED", "alpha": "RGB"}[cfg.mode]
    bgt = torch.tensor(bg, dtype=torch.float32)[None] if cfg.mode == "rgb" else None

    def draw(V: np.ndarray, K: np.ndarray, W: int, H: int):
        with torch.no_grad():
            c, a, _ = render_splats(splats, torch.as_tensor(V, dtype=torch.float32)[None],
                                    torch.as_tensor(K, dtype=torch.float32)[None], W, H, sh_degree=sh_degree,
                                    backgrounds=bgt, render_mode=render_mode, rasterize_mode=rmode,
                                    backend=cfg.backend)
        return c[0], a[0]

    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"out": str(out)}
    t0 = time.perf_counter()
    if cfg.cameras in ("test", "train"):
        split = data.test if cfg.cameras == "test" else data.train
        if len(split) == 0:
            raise ValueError(f"the dataset has no {cfg.cameras} views")
        folder = out / cfg.cameras
        folder.mkdir(parents=True, exist_ok=True)
        ps, ss = [], []
        depth_range = None
        for i, name in enumerate(split.names):
            c, a = draw(split.viewmats[i], split.Ks[i], split.widths[i], split.heights[i])
            if cfg.mode == "depth" and depth_range is None:
                depth_range = depth_range_of(c, a)
            img = to_image(c, a, cfg.mode, depth_range)
            stem = Path(name).stem
            _write_png(folder / f"{i:03d}_{stem}_{cfg.mode}.png", img)
            if cfg.mode == "rgb":
                gt = torch.from_numpy(split.images[i]).float() / 255
                pred = c.clamp(0, 1)
                ps.append(psnr(pred, gt).item())
                ss.append(ssim(pred, gt).item())
        result.update(views=len(split), folder=str(folder))
        if ps:
            result.update(psnr=float(np.mean(ps)), ssim=float(np.mean(ss)))
            log(f"{cfg.cameras}: {len(split)} views, PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f} -> {folder}")
        else:
            log(f"{cfg.cameras}: {len(split)} {cfg.mode} images -> {folder}")
    else:
        if data is not None:
            K0, W, H = data.train.Ks[0].copy(), data.train.widths[0], data.train.heights[0]
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
            Vs = orbit_cameras(cfg.frames, train_V, splats, cfg.elevation)
        else:
            Vs = path_cameras(cfg.frames, train_V)
        frames, depth_range = [], None
        for V in Vs:
            c, a = draw(V, K0, W, H)
            if cfg.mode == "depth" and depth_range is None:
                depth_range = depth_range_of(c, a)
            frames.append(to_image(c, a, cfg.mode, depth_range))
        video = cfg.video or out / f"{cfg.cameras}_{cfg.mode}.mp4"
        write_video(Path(video), frames, cfg.fps)
        result.update(frames=len(frames), video=str(video))
        log(f"{cfg.cameras}: {len(frames)} frames at {W}x{H} -> {video}")
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv: Optional[List[str]] = None) -> None:
    import tyro

    cfg = tyro.cli(RenderConfig, args=argv, description=__doc__)
    try:
        render(cfg)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"splat-render: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
