"""Pieces shared by the dataset loaders: containers, image reading, downscaling, undistortion,
scene normalisation, initial points and clear errors.

Conventions
-----------
* Cameras are OpenCV (x right, y down, z forward); ``viewmats`` are world->camera ``[4, 4]``;
  ``Ks`` are pinhole intrinsics in pixels of the (downscaled, undistorted) image.
* Pixel coordinates use the corner convention: the image spans ``[0, W] x [0, H]`` and the centre
  of pixel ``(row i, col j)`` is at ``(j + 0.5, i + 0.5)``. COLMAP, nerfstudio, gsplat's rasterizer
  and PIL's resize all use it, so downscaling an image by ``W -> W'`` scales ``fx`` and ``cx`` by
  exactly ``W' / W`` (and ``fy``, ``cy`` by ``H' / H``) with no half-pixel correction. For an
  integer factor ``f`` and divisible sizes this is ``fx / f``, ``cx / f``.
* The downscaled size is ``round(W / f)`` (halves round up) unless a pre-downscaled copy
  (``images_f/``) exists whose size is within one pixel of ``W / f``; then its own size is used
  and K is scaled by its real ratio. Shrinking uses PIL's BOX filter (area averaging, exact
  block means for divisible sizes).
* Images are decoded by ``splat.io.images.read_image`` (the one reader: bit depth from the file's
  mode, float images as they are) and stored as 8-bit RGB; RGBA images are composited on
  ``background`` (in float, rounded to uint8) and their alpha is kept in ``Split.alphas``. EXIF
  orientation is ignored (the stored pixels), as COLMAP's poses assume.
* Masks (nerfstudio ``mask_path``): non-zero = kept; they follow downscaling (a pixel is kept
  only if its whole area is) and undistortion, and are kept in ``Split.masks``.
* Point lights (relightable sets): a view may carry one point light, a world position and a
  linear RGB radiant intensity (W/sr, irradiance ``I / d^2``). They reach
  ``Split.light_positions`` / ``Split.light_intensities`` and ``Cameras``; the normalising
  similarity moves the position with the world and multiplies the intensity by ``s^2`` (the
  similarity's scale), so the irradiance at every (moved) surface point is unchanged.
"""
from __future__ import annotations

import json
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..cameras import Cameras
from ..io.common import FormatError
from ..io.images import read_image as _read
from .distortion import Distortion, DistortionError, build_undistort_map


class DatasetError(ValueError):
    """A dataset that cannot be loaded: the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------
# containers


@dataclass
class Split:
    """One split of a dataset (train or test), views in a fixed order."""

    names: list[str]
    images: list[np.ndarray]  # uint8 [H, W, 3]
    viewmats: np.ndarray  # float32 [M, 4, 4] world->camera (OpenCV)
    Ks: np.ndarray  # float32 [M, 3, 3]
    widths: list[int]
    heights: list[int]
    alphas: list[np.ndarray | None] | None = None  # uint8 [H, W] for RGBA sources, else None entries
    times: np.ndarray | None = None  # float32 [M]: time of each view (dynamic scenes), if the data has it
    light_positions: np.ndarray | None = None  # float32 [M, 3]: a point light per view (relightable sets)
    light_intensities: np.ndarray | None = None  # float32 [M, 3]: its linear RGB intensity
    masks: list[np.ndarray | None] | None = None  # bool [H, W] (True = pixel used), None where a view has none
    distortions: list[Distortion | None] | None = None  # lens models kept (loaded with undistort=False), or None

    def __len__(self) -> int:
        return len(self.names)

    def cameras(self, indices: int | Sequence[int] | None = None, device: Any = "cpu") -> Cameras:
        """Views `indices` (one index, a list, or None for all) as a `splat.cameras.Cameras`
        batch on `device`, with their time and light where the data has them. Raises
        ``DatasetError`` when the views differ in size (a batch has one size)."""
        idx = list(range(len(self))) if indices is None else [indices] if isinstance(indices, (int, np.integer)) \
            else list(indices)
        sizes = {(self.widths[i], self.heights[i]) for i in idx}
        if len(sizes) != 1:
            raise DatasetError(f"views {idx[:8]} have {len(sizes)} different image sizes; a camera batch has one")
        (W, H), = sizes
        pick = (lambda a: None if a is None else np.asarray(a)[idx])
        lens = {}
        if self.distortions is not None and any(self.distortions[i] is not None for i in idx):
            lens = _camera_arrays([self.distortions[i] for i in idx], [self.names[i] for i in idx])
        return Cameras.from_numpy(self.viewmats[idx], self.Ks[idx], W, H, device=device,
                                  names=[self.names[i] for i in idx], time=pick(self.times),
                                  light_position=pick(self.light_positions),
                                  light_intensity=pick(self.light_intensities), **lens)


def _camera_arrays(dists, names) -> dict:
    """`Cameras` keyword arguments (camera_model and per-camera coefficient arrays) for views with
    these lens models (None = undistorted pinhole). Raises ``DatasetError`` for a batch that mixes
    camera models (pinhole and fisheye views cannot share one batch)."""
    args = [("pinhole", None, None) if d is None else d.camera_args() for d in dists]
    models = {a[0] for a in args}
    if len(models) > 1:
        raise DatasetError(f"views {names[:8]} mix camera models ({', '.join(sorted(models))}); a camera batch has one")
    model = models.pop()
    n_radial = 4 if model == "fisheye" else 6
    radial = np.stack([a[1] if a[1] is not None else np.zeros(n_radial) for a in args])
    tang = np.stack([a[2] if a[2] is not None else np.zeros(2) for a in args])
    return {"camera_model": model, "radial_coeffs": radial if radial.any() or model == "fisheye" else None,
            "tangential_coeffs": tang if tang.any() else None}


@dataclass
class Dataset:
    """A loaded scene: splits, initial points and the coordinate normalisation that was applied."""

    train: Split
    test: Split
    points: np.ndarray  # float32 [P, 3], in the normalised world
    points_rgb: np.ndarray  # uint8 [P, 3]
    points_random: bool
    scene_scale: float  # 1.1 * max distance of train camera centres from their mean (3DGS cameras_extent)
    transform: np.ndarray  # float64 [4, 4]: normalised = transform @ original world (a similarity)
    background: np.ndarray  # float32 [3] in [0, 1]: what RGBA images were composited on
    format: str
    root: Path
    meta: dict = field(default_factory=dict)  # loader-specific extras (camera models, applied_transform, ...)

    @property
    def time_range(self) -> tuple[float, float] | None:
        """``(min, max)`` of the view times over train and test (dynamic scenes, times in [0, 1]),
        or None when the dataset has no times."""
        ts = [np.asarray(s.times, dtype=np.float64).reshape(-1) for s in (self.train, self.test) if s.times is not None]
        ts = [t for t in ts if t.size]
        if not ts:
            return None
        t = np.concatenate(ts)
        return float(t.min()), float(t.max())


# ----------------------------------------------------------------------------------------------
# JSON helpers


def load_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text: {e}") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def require(obj: Any, key: str, path: Path, where: str = "") -> Any:
    """``obj[key]`` or a DatasetError naming the file, the key and where it was expected."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a JSON object{where} holding key '{key}', got {type(obj).__name__}")
    if key not in obj:
        raise DatasetError(f"{path}: missing key '{key}'{where}")
    return obj[key]


def as_float(value: Any, key: str, path: Path, where: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetError(f"{path}: key '{key}'{where} must be a finite number, got {value!r}")
    return float(value)


def as_int(value: Any, key: str, path: Path, where: str = "") -> int:
    v = as_float(value, key, path, where)
    if v != int(v) or v <= 0:
        raise DatasetError(f"{path}: key '{key}'{where} must be a positive integer, got {value!r}")
    return int(v)


def as_matrix(value: Any, rows: Sequence[int], cols: int, key: str, path: Path, where: str = "") -> np.ndarray:
    """A numeric matrix with one of ``rows`` rows and ``cols`` columns (e.g. 3x4 or 4x4)."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        m = None
    if m is None or m.ndim != 2 or m.shape[0] not in rows or m.shape[1] != cols or not np.all(np.isfinite(m)):
        shapes = " or ".join(f"{r}x{cols}" for r in rows)
        raise DatasetError(f"{path}: key '{key}'{where} must be a {shapes} matrix of finite numbers, got {value!r:.80}")
    return m


# ----------------------------------------------------------------------------------------------
# images


def read_image(path: Path, background: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an image as uint8 RGB ``[H, W, 3]`` with ``splat.io.images.read_image`` (bit depth from
    the file's mode, stored orientation); RGBA sources are composited on ``background`` (float RGB
    in [0, 1]) and their alpha is returned too (else None)."""
    try:
        img = _read(path, orientation="stored")
    except FormatError as e:
        raise DatasetError(f"cannot read image {e}") from None
    alpha = img.alpha_uint8()
    if alpha is None:
        return img.rgb_uint8(), None
    a = alpha.astype(np.float32)[..., None] / 255.0
    rgb = img.rgb_uint8().astype(np.float32) * a + (255.0 * background.astype(np.float32)) * (1.0 - a)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), alpha


def read_mask(path: Path) -> np.ndarray:
    """A mask image as bool ``[H, W]``: True (kept) where the first channel is non-zero, as
    nerfstudio reads ``mask_path`` (0 = the pixel is left out of the loss and the metrics)."""
    try:
        img = _read(path, orientation="stored")
    except FormatError as e:
        raise DatasetError(f"cannot read mask {e}") from None
    return img.pixels[..., 0] > 0


def downscale_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask shrunk to ``size = (w, h)`` the way images shrink (BOX: each pixel averages an
    area): a pixel is kept only when its whole area is (any masked-out part would bring
    masked-out colour into the pixel)."""
    m = np.where(mask, 255, 0).astype(np.uint8)
    return _resize(m, size) == 255


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 [H, W] or [H, W, 3] array to ``size = (w, h)`` (area when shrinking)."""
    w, h = size
    shrink = w <= arr.shape[1] and h <= arr.shape[0]
    resample = Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(arr).resize((w, h), resample=resample), dtype=np.uint8).copy()


def downscaled_size(width: int, height: int, factor: int) -> tuple[int, int]:
    return max(1, int(math.floor(width / factor + 0.5))), max(1, int(math.floor(height / factor + 0.5)))


def integer_scale(full: tuple[int, int], img: tuple[int, int]) -> int | None:
    """The integer k >= 1 with ``img`` within one pixel of ``full / k`` in both axes (exact for k = 1),
    or None."""
    (W, H), (w, h) = full, img
    if w <= 0 or h <= 0:
        return None
    for k in sorted({max(1, round(W / w)), max(1, round(H / h))}):
        if k == 1:
            if (w, h) == (W, H):
                return 1
        elif abs(w - W / k) < 1.0 and abs(h - H / k) < 1.0:
            return k
    return None


def image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


# ----------------------------------------------------------------------------------------------
# views


@dataclass
class ViewSpec:
    """One image to load and its camera at full resolution, as the loaders describe it."""

    name: str
    path: Path  # the full-resolution image
    viewmat: np.ndarray  # [4, 4] world->camera (OpenCV)
    K: np.ndarray | None = None  # [3, 3] at full resolution; None -> make_K(width, height)
    width: int | None = None  # the camera's full-resolution size; None -> the full-resolution image's size
    height: int | None = None
    distortion: Distortion | None = None
    camera_key: Any = None  # views sharing a key share K, size and distortion (one undistortion map)
    camera_label: str = "the camera"  # for messages, e.g. "camera 3 (OPENCV)"
    downscaled_path: Path | None = None  # a pre-downscaled copy to use when downscaling, if it exists
    make_K: Callable[[int, int], np.ndarray] | None = None
    mask_path: Path | None = None  # a full-resolution mask (non-zero = pixel used), nerfstudio's mask_path
    time: float | None = None  # the view's time (dynamic scenes, in [0, 1]); None for static data
    light_position: np.ndarray | None = None  # float64 [3]: the view's point light (world), relightable sets
    light_intensity: np.ndarray | None = None  # float64 [3]: its linear RGB radiant intensity (W/sr)


@dataclass
class LoadedView:
    name: str
    image: np.ndarray
    alpha: np.ndarray | None
    K: np.ndarray  # float64 [3, 3]
    width: int
    height: int
    viewmat: np.ndarray  # float64 [4, 4]
    mask: np.ndarray | None = None  # bool [H, W]
    time: float | None = None  # the view's time (dynamic scenes, in [0, 1]); None for static data
    light_position: np.ndarray | None = None  # float64 [3]: the view's point light (world), relightable sets
    light_intensity: np.ndarray | None = None  # float64 [3]: its linear RGB radiant intensity (W/sr)
    distortion: Distortion | None = None  # the lens model, kept when loading with undistort=False


def check_distortion(specs: Sequence[ViewSpec], undistort: bool) -> None:
    """With ``undistort=False``, refuse views whose lens model the renderer cannot represent
    (`Distortion.camera_args`); they are rendered through their model as they are."""
    if undistort:
        return
    for s in specs:
        if s.distortion is None or s.distortion.is_identity:
            continue
        try:
            s.distortion.camera_args()
        except DistortionError as e:
            raise DatasetError(
                f"{s.camera_label} (image {s.name}): {e}; load with undistort=True to undistort the images to a "
                f"pinhole camera, or undistort them beforehand (e.g. `colmap image_undistorter`)"
            )


def load_views(specs: Sequence[ViewSpec], *, downscale: int, background: np.ndarray, undistort: bool) -> list[LoadedView]:
    """Decode, downscale and (with `undistort`) undistort every view (a thread pool; PIL decodes without the
    GIL). Without it, distorted views keep their lens model (`LoadedView.distortion`) for the renderer."""
    check_distortion(specs, undistort)
    maps: dict[Any, list] = {}  # camera key -> [lock, UndistortMap | None]
    lock = threading.Lock()

    def one(spec: ViewSpec) -> LoadedView:
        return _load_one(spec, downscale, background, maps, lock, undistort)

    workers = max(1, min(8, os.cpu_count() or 1, len(specs)))
    if workers == 1 or len(specs) < 4:
        return [one(s) for s in specs]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(one, specs))


def _load_one(spec: ViewSpec, downscale: int, background: np.ndarray, maps: dict, lock: threading.Lock,
              undistort: bool = True) -> LoadedView:
    src = spec.path
    from_downscaled = False
    if downscale > 1 and spec.downscaled_path is not None and spec.downscaled_path.is_file():
        src, from_downscaled = spec.downscaled_path, True
    elif not spec.path.is_file():
        extra = ""
        if downscale > 1 and spec.downscaled_path is not None:
            extra = f" (nor its downscaled copy {spec.downscaled_path})"
        if spec.path.exists():
            raise DatasetError(f"image path is not a file: {spec.path}")
        raise DatasetError(f"image file not found: {spec.path}{extra}, needed for view '{spec.name}'")
    rgb, alpha = read_image(src, background)
    h, w = rgb.shape[:2]

    if spec.width is not None and spec.height is not None:
        W, H = spec.width, spec.height
    elif from_downscaled:
        W, H = image_size(spec.path) if spec.path.is_file() else (w * downscale, h * downscale)
    else:
        W, H = w, h
    k = integer_scale((W, H), (w, h))
    if k is None:
        raise DatasetError(
            f"image {src} has size {w}x{h}, but {spec.camera_label} is {W}x{H} "
            f"(and {w}x{h} is not an integer downscale of it)"
        )
    if k == downscale:
        tw, th = w, h
    else:
        tw, th = downscaled_size(W, H, downscale)
        if k > downscale:  # the image is smaller than asked for: use it as it is (no upsampling)
            warnings.warn(
                "some images are smaller than the requested downscale asks for; they are used at their own "
                "resolution, with K scaled to match",
                stacklevel=2,
            )
            tw, th = w, h
        else:
            rgb = _resize(rgb, (tw, th))
            if alpha is not None:
                alpha = _resize(alpha, (tw, th))

    mask = None
    if spec.mask_path is not None:
        mask = read_mask(spec.mask_path)
        if (mask.shape[1], mask.shape[0]) not in ((W, H), (w, h)):
            raise DatasetError(f"mask {spec.mask_path} has size {mask.shape[1]}x{mask.shape[0]}, but its image "
                               f"{src} is {w}x{h} (full resolution {W}x{H})")
        if (mask.shape[1], mask.shape[0]) != (tw, th):
            mask = downscale_mask(mask, (tw, th))
        if not mask.any():
            warnings.warn(f"mask {spec.mask_path} leaves out every pixel of view '{spec.name}'", stacklevel=2)

    K = spec.K if spec.K is not None else spec.make_K(W, H)
    K = np.array(K, dtype=np.float64)
    K[0, :] *= tw / W
    K[1, :] *= th / H
    K[2, :] = (0.0, 0.0, 1.0)

    dist = spec.distortion
    kept = None
    if dist is not None and not dist.is_identity and not undistort:
        kept = dist  # rendered through the lens model (`splat.camera_models`), the image as it is
    elif dist is not None and not dist.is_identity:
        key = (spec.camera_key if spec.camera_key is not None else spec.name, tw, th, tuple(K.ravel()))
        with lock:  # one lock per camera, so that different cameras build their maps in parallel
            entry = maps.setdefault(key, [threading.Lock(), None])
        with entry[0]:
            if entry[1] is None:
                try:
                    entry[1] = build_undistort_map(K, dist, tw, th)
                except DistortionError as e:
                    raise DatasetError(f"{spec.camera_label}: cannot undistort image {src}: {e} (a fisheye "
                                       f"that sees near or past 90 degrees off its axis fits no pinhole: train "
                                       f"through its lens instead, without --undistort / with undistort=False)"
                                       ) from None
            umap = entry[1]
        rgb = umap.apply(rgb)
        if alpha is not None:
            alpha = umap.apply(alpha)
        if mask is not None:
            mask = umap.apply(np.where(mask, 255, 0).astype(np.uint8)) == 255
        K = umap.K_new.copy()
    return LoadedView(spec.name, rgb, alpha, K, tw, th, np.asarray(spec.viewmat, dtype=np.float64), mask, spec.time,
                      _light_vector(spec.light_position), _light_vector(spec.light_intensity), kept)


def _light_vector(v) -> np.ndarray | None:
    return None if v is None else np.asarray(v, dtype=np.float64).reshape(3).copy()


def make_split(views: Sequence[LoadedView], indices: Sequence[int], viewmats: np.ndarray) -> Split:
    """A Split of ``views[indices]`` with the (normalised) ``viewmats`` of all views.

    ``Split.times`` (float32 [M]) is set when every view of ``views`` has a time (so an empty split
    of a dynamic dataset gets an empty array), None when none has; a mix raises ``DatasetError``
    naming the first view without one (the loaders check their files before this).
    ``Split.light_positions`` / ``Split.light_intensities`` (float32 [M, 3]) follow the same rule
    for the views' point lights (a view's light is its position and its intensity together)."""
    idx = list(indices)
    alphas = [views[i].alpha for i in idx]
    masks = [views[i].mask for i in idx]
    timed = [v.time is not None for v in views]
    times = None
    if views and all(timed):
        times = np.array([views[i].time for i in idx], dtype=np.float32).reshape(len(idx))
    elif any(timed):
        first = views[timed.index(False)].name
        raise DatasetError(f"missing times: view '{first}' has no time but other views have one; a dynamic scene "
                           "needs a time on every view")
    for v in views:
        if (v.light_position is None) != (v.light_intensity is None):
            has, lacks = ("position", "intensity") if v.light_intensity is None else ("intensity", "position")
            raise DatasetError(f"view '{v.name}' has a light {has} but no light {lacks}; a point light needs both")
    lit = [v.light_position is not None for v in views]
    light_positions = light_intensities = None
    if views and all(lit):
        light_positions = np.array([views[i].light_position for i in idx], dtype=np.float32).reshape(len(idx), 3)
        light_intensities = np.array([views[i].light_intensity for i in idx], dtype=np.float32).reshape(len(idx), 3)
    elif any(lit):
        first = views[lit.index(False)].name
        raise DatasetError(f"missing lights: view '{first}' has no light but other views have one; a point-lit "
                           "(relightable) scene needs a light on every view")
    return Split(
        names=[views[i].name for i in idx],
        images=[views[i].image for i in idx],
        viewmats=viewmats[idx].astype(np.float32).reshape(len(idx), 4, 4),
        Ks=np.stack([views[i].K for i in idx]).astype(np.float32) if idx else np.zeros((0, 3, 3), np.float32),
        widths=[views[i].width for i in idx],
        heights=[views[i].height for i in idx],
        alphas=alphas if any(a is not None for a in alphas) else None,
        masks=masks if any(m is not None for m in masks) else None,
        times=times,
        light_positions=light_positions,
        light_intensities=light_intensities,
        distortions=[views[i].distortion for i in idx] if any(views[i].distortion is not None for i in idx) else None,
    )


def every_nth_split(names: Sequence[str], test_every: int) -> tuple[list[int], list[int]]:
    """gsplat / 3DGS ``--eval``: sort by name, index % test_every == 0 -> test; 0 -> no test split.
    Returns indices into ``names`` (each list in name order)."""
    order = sorted(range(len(names)), key=lambda i: names[i])
    if test_every <= 0:
        return order, []
    train = [i for r, i in enumerate(order) if r % test_every != 0]
    test = [i for r, i in enumerate(order) if r % test_every == 0]
    return train, test


# ----------------------------------------------------------------------------------------------
# geometry


def opengl_c2w_to_viewmat(c2w: np.ndarray, where: str = "a camera") -> np.ndarray:
    """Camera-to-world in the OpenGL/Blender convention (x right, y up, z back) -> OpenCV world->camera."""
    m = np.eye(4)
    m[: c2w.shape[0], :4] = c2w[:, :4]
    m[:3, 1:3] *= -1.0  # flip the camera's y and z axes
    return invert_rigid(m, where)


def invert_rigid(m: np.ndarray, where: str = "a camera") -> np.ndarray:
    """Inverse of a [4, 4] rotation+translation (re-orthonormalising the rotation first)."""
    u, sv, vt = np.linalg.svd(m[:3, :3])
    if sv.min() <= 1e-8 or sv.max() / sv.min() > 1.05:
        raise DatasetError(f"{where}: the rotation part is not a rotation (singular values {np.round(sv, 4).tolist()})")
    R = u @ vt
    if np.linalg.det(R) < 0:
        raise DatasetError(f"{where}: the rotation part has negative determinant (a reflection)")
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ m[:3, 3]
    return out


def camera_centres(viewmats: np.ndarray) -> np.ndarray:
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    return -np.einsum("nji,nj->ni", R, t)


def similarity_from_cameras(viewmats: np.ndarray) -> np.ndarray:
    """The normalising similarity ``T`` (``p_new = T @ p``) used for COLMAP and nerfstudio scenes.

    1. rotate the world so that the mean camera "up" (the cameras' -y axis, averaged) becomes +z;
    2. centre on the point the cameras look at: the least-squares closest point to all optical
       axes, when the axes converge (their directions spread enough for a well-conditioned
       solution and the point lies in front of at least half of the cameras), else the median of
       the camera centres (forward-facing captures; gsplat's ``center_method="poses"``);
    3. scale so that the median distance of the camera centres from that centre is 1
       (gsplat's non-strict scaling).
    """
    R_wc = viewmats[:, :3, :3]  # world->camera rotations; camera axes in world = rows
    ups = -R_wc[:, 1, :]  # camera -y axis in world coordinates
    up = ups.mean(0)
    n = np.linalg.norm(up)
    A = rotation_between(up / n, np.array([0.0, 0.0, 1.0])) if n > 1e-8 else np.eye(3)
    C = camera_centres(viewmats)
    centre = focus_point(C, R_wc[:, 2, :])
    if centre is None:
        centre = np.median(C, axis=0)
    d = np.linalg.norm(C - centre, axis=1)
    med = float(np.median(d)) if len(d) else 0.0
    s = 1.0 / med if med > 1e-12 else 1.0
    T = np.eye(4)
    T[:3, :3] = s * A
    T[:3, 3] = -s * A @ centre
    return T


def focus_point(centres: np.ndarray, dirs: np.ndarray, min_spread: float = 0.02) -> np.ndarray | None:
    """The least-squares closest point to the rays ``centres + t dirs``, or None when the rays are
    close to parallel (smallest eigenvalue of ``mean(I - d d^T)`` below ``min_spread``) or the point
    is behind more than half of the cameras."""
    if len(centres) < 2:
        return None
    d = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]
    M = P.mean(0)
    if np.linalg.eigvalsh(M)[0] < min_spread:
        return None
    p = np.linalg.solve(M, np.einsum("nij,nj->i", P, centres) / len(centres))
    in_front = np.einsum("ni,ni->n", p - centres, d) > 0
    return p if in_front.mean() >= 0.5 else None


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation taking unit vector a onto unit vector b (Rodrigues)."""
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1.0 + 1e-10:  # opposite: rotate 180 degrees about any axis orthogonal to a
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ T[:3, :3].T + T[:3, 3]


def transform_viewmats(T: np.ndarray, viewmats: np.ndarray) -> np.ndarray:
    """World->camera matrices for the world ``p' = T p`` (T a similarity ``s A | b``): the camera
    coordinates are scaled by ``s`` too, so every image projection is unchanged."""
    M = T[:3, :3]
    s = similarity_scale(T)
    A = M / s
    b = T[:3, 3]
    out = np.tile(np.eye(4), (len(viewmats), 1, 1))
    Rv = viewmats[:, :3, :3]
    out[:, :3, :3] = Rv @ A.T
    out[:, :3, 3] = s * viewmats[:, :3, 3] - np.einsum("nij,j->ni", Rv @ A.T, b)
    return out


def similarity_scale(T: np.ndarray) -> float:
    """The scale ``s`` of a similarity ``T = [s A | b]`` (A a rotation)."""
    return float(np.cbrt(np.linalg.det(T[:3, :3])))


def transform_lights(T: np.ndarray, positions: np.ndarray, intensities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Point lights (``positions`` [N, 3], radiant ``intensities`` [N, 3]) in the world ``p' = T p``
    (T a similarity of scale ``s``): positions move with the world and intensities are multiplied
    by ``s^2``, so the irradiance ``I / d^2`` at every moved point is unchanged (distances scale by s)."""
    s = similarity_scale(T)
    P = transform_points(T, np.asarray(positions, dtype=np.float64).reshape(-1, 3))
    return P, np.asarray(intensities, dtype=np.float64).reshape(-1, 3) * (s * s)


def scene_scale_from(viewmats: np.ndarray, points: np.ndarray | None = None) -> float:
    """3DGS's cameras_extent: 1.1 * the largest distance of a camera centre from their mean.
    With a single camera (extent 0): 1.1 * the median camera-to-point distance, else 1.0."""
    C = camera_centres(viewmats)
    if len(C) == 0:
        return 1.0
    r = float(np.max(np.linalg.norm(C - C.mean(0), axis=1)))
    if r > 1e-9:
        return 1.1 * r
    if points is not None and len(points):
        return 1.1 * float(np.median(np.linalg.norm(points - C[0], axis=1)))
    return 1.0


RANDOM_INIT_EXTENT = 1.3  # 3DGS: the cube [-1.3, 1.3]^3 (NeRF-synthetic cameras at radius 4.03)
NERF_SYNTHETIC_RADIUS = 4.0311289  # sqrt(16.25): the camera distance of every NeRF-synthetic scene


def random_points(n: int, rng: np.random.Generator, half_extent: float = RANDOM_INIT_EXTENT
                  ) -> tuple[np.ndarray, np.ndarray]:
    """3DGS's random initialisation: ``n`` points uniform in ``[-half_extent, half_extent]^3`` with
    random colours."""
    pts = rng.uniform(-half_extent, half_extent, size=(n, 3))
    rgb = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    return pts, rgb


def random_init_extent(viewmats: np.ndarray) -> float:
    """Half-size of the random-init cube of object-centred data with no normalisation: 3DGS's 1.3
    at NeRF-synthetic's camera distance of 4.03, scaled with the median distance of the cameras
    from the origin (the object), so a scene in millimetres gets a cube in millimetres."""
    C = camera_centres(viewmats)
    d = float(np.median(np.linalg.norm(C, axis=1))) if len(C) else 0.0
    if not (d > 0 and math.isfinite(d)):
        return RANDOM_INIT_EXTENT
    return RANDOM_INIT_EXTENT * d / NERF_SYNTHETIC_RADIUS


def check_float32_precision(viewmats: np.ndarray, scene_scale: float, root: Path) -> None:
    """Warn when the scene lies so far from the origin, for its size, that float32 positions lose
    detail (every model and the rasterizer compute in float32): the spacing of float32 values at
    the cameras' distance above 1e-5 of the scene's size (about 80 scene sizes away)."""
    C = camera_centres(viewmats)
    if not len(C) or not scene_scale > 0:
        return
    d = float(np.abs(C).max())
    step = float(np.spacing(np.float32(d)))
    if step > 1e-5 * scene_scale:
        warnings.warn(
            f"{root}: the cameras are up to {d:.4g} world units from the origin, {d / scene_scale:.0f}x the scene's "
            f"size ({scene_scale:.4g}); float32 resolves only {step:.3g} units there ({step / scene_scale:.1e} of the "
            "scene), so fine detail is lost. Train with normalisation (drop --no-normalize) or move the scene "
            "near the origin", stacklevel=3)


def subsample_points(points: np.ndarray, rgb: np.ndarray, max_points: int | None, rng: np.random.Generator):
    if max_points is None or len(points) <= max_points:
        return points, rgb
    if max_points < 0:
        raise DatasetError(f"max_init_points must be >= 0, got {max_points}")
    keep = np.sort(rng.choice(len(points), size=max_points, replace=False))
    return points[keep], rgb[keep]


def finish_dataset(
    *,
    fmt: str,
    root: Path,
    views: Sequence[LoadedView],
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    points: np.ndarray | None,
    points_rgb: np.ndarray | None,
    normalize: bool,
    similarity: np.ndarray | None,
    num_random_points: int,
    max_init_points: int | None,
    seed: int,
    background: np.ndarray,
    meta: dict | None = None,
) -> Dataset:
    """Apply the normalisation (``similarity`` when ``normalize``, else identity) to cameras, points
    and the views' point lights (`transform_lights`), fill in random points when there are none
    (uniform in the cube [-1.3, 1.3]^3 of the frame ``similarity`` defines, or of the world when it
    is None), subsample and build the Dataset."""
    rng = np.random.default_rng(seed)
    if len(views) and not len(train_idx):
        warnings.warn(
            f"{root}: the test split would hold every image ({len(views)}); using them all for training instead",
            stacklevel=2,
        )
        train_idx, test_idx = sorted(set(train_idx) | set(test_idx)), []
    viewmats = np.stack([v.viewmat for v in views]) if views else np.zeros((0, 4, 4))
    T = similarity if (normalize and similarity is not None) else np.eye(4)
    points_random = points is None or len(points) == 0
    if points_random:
        if num_random_points <= 0:
            raise DatasetError(f"{root}: the scene has no initial points and num_random_points is {num_random_points}")
        if similarity is not None:  # the cube lives in the normalised frame; express it in the world
            pts, rgb = random_points(int(num_random_points), rng)
            pts = transform_points(np.linalg.inv(similarity), pts)
        else:  # object-centred data (NeRF-synthetic): the cube around the origin, sized by the cameras' distance
            pts, rgb = random_points(int(num_random_points), rng, random_init_extent(viewmats[list(train_idx)]))
        points, points_rgb = pts, rgb
    points, points_rgb = subsample_points(np.asarray(points, np.float64), np.asarray(points_rgb, np.uint8), max_init_points, rng)
    vm = transform_viewmats(T, viewmats) if len(viewmats) else viewmats
    pts = transform_points(T, points)
    if not np.array_equal(T, np.eye(4)):
        views = [_transform_view_light(T, v) for v in views]
    train_vm = vm[list(train_idx)]
    scene_scale = scene_scale_from(train_vm, None if points_random else pts)
    check_float32_precision(vm, scene_scale, root)
    return Dataset(
        train=make_split(views, train_idx, vm),
        test=make_split(views, test_idx, vm),
        points=pts.astype(np.float32),
        points_rgb=points_rgb.astype(np.uint8),
        points_random=bool(points_random),
        scene_scale=scene_scale,
        transform=T,
        background=background.astype(np.float32),
        format=fmt,
        root=root,
        meta=meta or {},
    )


def _transform_view_light(T: np.ndarray, view: LoadedView) -> LoadedView:
    """``view`` with its point light (if it has one) in the world ``p' = T p``."""
    if view.light_position is None or view.light_intensity is None:
        return view
    P, I = transform_lights(T, view.light_position, view.light_intensity)
    return replace(view, light_position=P[0], light_intensity=I[0])


# ----------------------------------------------------------------------------------------------
# PLY points (x, y, z and red, green, blue), parsed by splat.io.ply's header and element reader


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Vertex positions (float64 [P, 3]) and colours (uint8 [P, 3], or None when the file has none),
    with `splat.io.ply`'s parser (ascii and binary, any property order, extra elements). Positions
    stored as integers are refused (most often half floats written as ``ushort``); points with
    NaN/Inf coordinates are dropped with a warning (`drop_nonfinite_points`)."""
    from ..io.common import read_file_bytes
    from ..io.ply import parse_header, read_elements

    try:
        data = read_file_bytes(path, "PLY point cloud")
        header = parse_header(data, str(path))
        vertex = header.element("vertex")
        if vertex is None:
            raise DatasetError(f"{path}: PLY file has no 'vertex' element")
        if vertex.has_list:
            raise DatasetError(f"{path}: list properties in the PLY 'vertex' element are not supported")
        elements = read_elements(data, header, str(path))
    except FormatError as e:
        raise DatasetError(str(e)) from None
    if "vertex" not in elements:
        raise DatasetError(f"{path}: PLY element with list properties before 'vertex' is not supported")
    rec = elements["vertex"]
    kinds = dict(vertex.properties)
    for c in ("x", "y", "z"):
        if c not in kinds:
            raise DatasetError(f"{path}: PLY 'vertex' element has no '{c}' property")
    ints = [c for c in ("x", "y", "z") if np.dtype(kinds[c]).kind in "iu"]
    if ints:
        raise DatasetError(f"{path}: point positions {ints} are stored as integers; a point cloud stores them as "
                           "float or double (if they hold half-float bit patterns, convert the file to float32)")
    xyz = np.stack([rec[c].astype(np.float64) for c in ("x", "y", "z")], 1)
    rgb = None
    for trio in (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
        if all(c in kinds for c in trio):
            c = np.stack([rec[t].astype(np.float64) for t in trio], 1)
            dt = np.dtype(kinds[trio[0]])
            # the range comes from the type, never from the values: float in [0, 1], integers by their width
            if dt.kind == "f":
                if np.nanmax(c, initial=0.0) > 1.0:
                    warnings.warn(f"{path}: float colours above 1 (max {np.nanmax(c):.4g}); float colours are read "
                                  "in [0, 1], so they are clipped", stacklevel=2)
                c = c * 255.0
            elif dt.itemsize > 1:
                c = c * (255.0 / float(np.iinfo(dt).max))
            rgb = np.clip(np.rint(np.nan_to_num(c)), 0, 255).astype(np.uint8)
            break
    return drop_nonfinite_points(xyz, rgb, path)


def drop_nonfinite_points(xyz: np.ndarray, rgb: np.ndarray | None, source: Path | str):
    """The one policy for initial points with NaN/Inf coordinates, in every loader: they are dropped
    with a warning naming ``source`` (the file) and the count. Returns ``(xyz, rgb)`` without them."""
    ok = np.isfinite(xyz).all(axis=1)
    if ok.all():
        return xyz, rgb
    warnings.warn(f"{source}: dropped {int((~ok).sum())} of {len(xyz)} points with NaN/Inf coordinates",
                  stacklevel=2)
    return xyz[ok], (None if rgb is None else rgb[ok])


def load_points_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """PLY points with colours (mid-grey 128 where the file has none)."""
    xyz, rgb = read_ply_points(path)
    if rgb is None:
        warnings.warn(f"{path}: no red/green/blue vertex properties; initial colours set to grey", stacklevel=2)
        rgb = np.full((len(xyz), 3), 128, np.uint8)
    return xyz, rgb


def check_background(background) -> np.ndarray:
    bg = np.asarray(background, dtype=np.float64).reshape(-1)
    if bg.shape != (3,) or not np.all(np.isfinite(bg)) or np.any(bg < 0) or np.any(bg > 1):
        raise DatasetError(f"background must be 3 numbers in [0, 1], got {background!r}")
    return bg.astype(np.float32)
