"""Images and videos out of the toolkit: PNGs, GIF/MP4 videos, and render channels
(colour, depth, alpha) turned into 8-bit pictures. Every writer here is atomic
(a temporary name in the destination folder, renamed when complete).

Used by the trainer (test renders), ``splat-render``, ``splat-image`` and the
viewer (snapshots, depth view), so a picture looks the same wherever it is made.
Pillow encodes PNGs; imageio (with imageio-ffmpeg's static ffmpeg) encodes
videos.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from .common import atomic_write

__all__ = ["write_png", "save_png", "write_video", "turbo", "colorize", "depth_range_of", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".gif")


def write_png(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """Write a uint8 image ([H,W], [H,W,3] or [H,W,4]) as a PNG, atomically.

    Raises ``FormatError`` (from ``atomic_write``) when the folder does not exist."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return atomic_write(Path(path), buf.getvalue())


def save_png(path: str | os.PathLike, img: torch.Tensor) -> Path:
    """A float image [H,W,C] (C = 1 or 3), clamped to [0, 1], as an 8-bit PNG
    (round to nearest), written atomically."""
    arr = (img.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    return write_png(path, arr[..., 0] if arr.shape[-1] == 1 else arr)


def write_video(path: str | os.PathLike, frames: List[np.ndarray], fps: int) -> Path:
    """Write uint8 frames [H,W,3] as an H.264 .mp4 (odd sizes cropped to even for
    yuv420p) or a looping .gif, through a temporary file renamed into place.

    Raises ``ValueError`` for any other suffix."""
    import imageio.v2 as imageio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"--video {path}: use a .mp4 or .gif file name")
    tmp = path.with_name(path.stem + ".tmp" + suffix)
    try:
        if suffix == ".gif":
            imageio.mimsave(tmp, frames, duration=1000.0 / fps, loop=0)
        else:
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
    return path


def turbo(x: np.ndarray) -> np.ndarray:
    """Google's polynomial approximation of the turbo colour map: x in [0,1] (clipped) -> RGB in [0,1], [..., 3]."""
    x = np.clip(x, 0.0, 1.0)
    r = 0.13572138 + x * (4.61539260 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943))))
    g = 0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604))))
    b = 0.10667330 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973))))
    return np.clip(np.stack([r, g, b], -1), 0.0, 1.0)


def colorize(colors: torch.Tensor, alphas: torch.Tensor, mode: str,
             depth_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """One render -> uint8 RGB [H,W,3].

    ``colors`` [H,W,D] and ``alphas`` [H,W,1] as `splat.rasterize` returns them for one
    camera (CPU tensors). ``mode``: ``"rgb"`` (the first three channels, clamped),
    ``"alpha"`` (grey), or ``"depth"`` (channel 0 is depth; turbo colours over
    ``depth_range`` = (near, far), near = red, far = blue, empty pixels black)."""
    if mode == "rgb":
        rgb = colors[..., :3].clamp(0, 1).numpy()
    elif mode == "alpha":
        rgb = np.repeat(alphas.clamp(0, 1).numpy(), 3, -1)
    elif mode == "depth":
        if depth_range is None:
            raise ValueError("colorize: depth mode needs depth_range (see depth_range_of)")
        d = colors[..., 0].numpy()
        a = alphas[..., 0].numpy()
        lo, hi = depth_range
        x = (d - lo) / max(hi - lo, 1e-8)
        rgb = turbo(1.0 - x) * a[..., None]
    else:
        raise ValueError(f"colorize: mode {mode!r}; expected 'rgb', 'depth' or 'alpha'")
    return (rgb * 255 + 0.5).astype(np.uint8)


def depth_range_of(colors: torch.Tensor, alphas: torch.Tensor) -> Tuple[float, float]:
    """(near, far) for colour-mapping a depth render: the 2nd and 98th percentiles of the
    depth (channel 0) where alpha > 0.5; (0, 1) for an empty render."""
    d = colors[..., 0][alphas[..., 0] > 0.5]
    if d.numel() == 0:
        return 0.0, 1.0
    lo, hi = np.quantile(d.float().numpy(), [0.02, 0.98]).tolist()
    return lo, hi if hi > lo else lo + 1.0
