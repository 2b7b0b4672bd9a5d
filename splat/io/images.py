"""Images in and out of the toolkit: the one image reader (``read_image``), PNGs,
GIF/MP4 videos, and render channels (colour, depth, alpha) turned into 8-bit pictures.
Every writer here is atomic (a temporary name in the destination folder, renamed when
complete).

Reading (``read_image``, used by every dataset loader, ``splat-image fit`` and the masks):

* bit depth comes from the file's mode, never from its values: 8-bit modes (L, P, RGB,
  RGBA, LA, CMYK, ...) are divided by 255, 16-bit greyscale (I;16*, and PNG's I) by
  65535, 1-bit by 1; float images (F, e.g. a float TIFF) are taken as they are, in
  [0, 1] (values outside are clipped, with a warning naming the file). Pillow itself
  reduces 16-bit colour PNGs to 8 bits.
* alpha (RGBA, LA, PA, palette transparency) is returned separately, straight (not
  premultiplied); ``composite`` puts it over a background colour: the 3D loaders use the
  run's ``--background``, ``splat-image fit`` black.
* orientation: ``orientation="exif"`` applies the EXIF orientation tag, so a 2D fit is the
  picture as image viewers show it; the 3D loaders keep the stored pixels
  (``"stored"``), as COLMAP's poses assume.
* any failure is a ``FormatError`` naming the file; an image declaring more than
  ``MAX_PIXELS`` (2^27) pixels is refused before anything is allocated.

Used by the trainer (test renders), ``splat-render``, ``splat-image`` and the
viewer (snapshots, depth view), so a picture looks the same wherever it is made.
Pillow encodes PNGs; imageio (with imageio-ffmpeg's static ffmpeg) encodes
videos.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Optional, Tuple

import numpy as np
import torch

from .common import FormatError, atomic_write, read_file_bytes

__all__ = ["read_image", "DecodedImage", "composite", "write_png", "save_png", "write_video", "turbo", "colorize",
           "depth_range_of", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".gif")


@dataclass
class DecodedImage:
    """A decoded image: ``pixels`` [H,W,C] (C = 1 grey or 3 RGB) and ``alpha`` [H,W] or None,
    both in the file's own depth (uint8, uint16 or float32), with ``max_value`` the value
    of full intensity (255, 65535 or 1.0)."""

    pixels: np.ndarray
    alpha: Optional[np.ndarray]
    max_value: float
    path: Path

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height)."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    def rgb_float(self) -> np.ndarray:
        """float32 [H,W,3] in [0, 1]."""
        x = self.pixels.astype(np.float32) / np.float32(self.max_value)
        return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x

    def alpha_float(self) -> Optional[np.ndarray]:
        """float32 [H,W] in [0, 1], or None."""
        return None if self.alpha is None else self.alpha.astype(np.float32) / np.float32(self.max_value)

    def rgb_uint8(self) -> np.ndarray:
        """uint8 [H,W,3]: exact for 8-bit files, rounded to nearest otherwise."""
        if self.pixels.dtype == np.uint8:
            x = self.pixels
        else:
            x = np.clip(np.rint(self.pixels.astype(np.float64) * (255.0 / self.max_value)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x)

    def alpha_uint8(self) -> Optional[np.ndarray]:
        """uint8 [H,W] or None."""
        if self.alpha is None or self.alpha.dtype == np.uint8:
            return self.alpha
        return np.clip(np.rint(self.alpha.astype(np.float64) * (255.0 / self.max_value)), 0, 255).astype(np.uint8)


def composite(rgb: np.ndarray, alpha: Optional[np.ndarray], background) -> np.ndarray:
    """Straight colour ``rgb`` (float [H,W,3] in [0,1]) over ``background`` (3 floats in [0,1])
    with ``alpha`` [H,W] in [0,1]; ``rgb`` itself when alpha is None."""
    if alpha is None:
        return rgb
    a = alpha[..., None]
    return rgb * a + np.asarray(background, np.float32).reshape(1, 1, 3) * (1.0 - a)


MAX_PIXELS = 1 << 27  # 134 million pixels (a 100-MP camera fits); a larger declared size is refused before decoding


def read_image(path: str | os.PathLike, orientation: Literal["stored", "exif"] = "stored") -> DecodedImage:
    """Decode an image file with Pillow (PNG, JPEG, TIFF, WebP, BMP, ...).

    Returns a ``DecodedImage`` (see the module notes for bit depth, alpha and orientation).
    Raises ``FormatError`` naming the file: missing, a directory, not an image, truncated or
    corrupt, or a mode with no defined range (32-bit integer images other than PNG's)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    data = read_file_bytes(p, "image")  # from memory: a corrupt chunk length cannot make a read preallocate
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:  # before anything is allocated (a corrupt header can declare any size)
                raise FormatError(f"{p}: declares {w}x{h} pixels, more than the {MAX_PIXELS:,} this reader decodes "
                                  "(raise splat.io.images.MAX_PIXELS for larger images)")
            im.load()
            if orientation == "exif":
                im = ImageOps.exif_transpose(im)
            return _decode(im, p)
    except FormatError:
        raise
    except UnidentifiedImageError:
        raise FormatError(f"{p}: cannot read image: not an image file (no format Pillow reads recognises it)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise FormatError(f"{p}: cannot read image: {e}") from None


def _decode(im, p: Path) -> DecodedImage:
    mode = im.mode
    if mode in ("RGB", "L"):
        a = np.asarray(im, dtype=np.uint8)
        return DecodedImage(a.reshape(a.shape[0], a.shape[1], -1).copy(), None, 255.0, p)
    if mode in ("RGBA", "LA"):
        a = np.asarray(im, dtype=np.uint8)
        return DecodedImage(a[..., :-1].copy(), a[..., -1].copy(), 255.0, p)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        return _decode(im.convert("RGBA" if has_alpha else "RGB"), p)
    if mode in ("La", "RGBa"):  # premultiplied alpha -> straight
        return _decode(im.convert("RGBA"), p)
    if mode == "1":
        return DecodedImage(np.asarray(im.convert("L"), dtype=np.uint8)[..., None].copy(), None, 255.0, p)
    if mode.startswith("I;16"):
        a = np.asarray(im).astype(np.uint16)
        return DecodedImage(a[..., None].copy(), None, 65535.0, p)
    if mode == "I":
        if (im.format or "").upper() != "PNG":
            raise FormatError(f"{p}: 32-bit integer image ({im.format}, mode I) has no defined intensity range; "
                              "save it as 8- or 16-bit, or as float in [0, 1]")
        a = np.asarray(im)
        return DecodedImage(np.clip(a, 0, 65535).astype(np.uint16)[..., None], None, 65535.0, p)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        bad = ~np.isfinite(a)
        if bad.any():
            raise FormatError(f"{p}: float image has {int(bad.sum())} NaN/Inf pixels")
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if lo < 0.0 or hi > 1.0:
            warnings.warn(f"{p}: float image values span [{lo:.4g}, {hi:.4g}]; float images are read as they "
                          "are, in [0, 1], so values outside are clipped", stacklevel=3)
            a = np.clip(a, 0.0, 1.0)
        return DecodedImage(a[..., None].copy(), None, 1.0, p)
    return _decode(im.convert("RGBA" if "A" in mode else "RGB"), p)  # CMYK, YCbCr, LAB, HSV, ...


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
