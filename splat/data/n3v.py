"""Neural 3D Video (DyNeRF) multi-view video scenes.

Layout::

    root/poses_bounds.npy        float [N, 17]: one row per camera (LLFF's format)
    root/cam00.mp4, cam01.mp4 ...  one video per camera; sorted by file name, the i-th video is row i

Each row of ``poses_bounds.npy`` is a 3x5 matrix flattened row-major, then two bounds:

* columns 0..2 of the matrix: the camera-to-world rotation in LLFF axes, i.e. the camera's
  [down, right, back] directions in world coordinates;
* column 3: the camera centre (world units);
* column 4: ``[H, W, focal]``: the image height and width (pixels) the pose describes and the
  focal length in pixels at that size;
* ``row[15]``, ``row[16]``: near and far depth bounds of what that camera sees (world units).

Cameras. The LLFF axes become OpenGL ones [right, up, back] = ``[R[:,1], -R[:,0], R[:,2]]`` (as
LLFF's own loader does), then an OpenCV world->camera matrix (``opengl_c2w_to_viewmat``). The
intrinsics are pinhole ``fx = fy = focal``, ``cx = W / 2``, ``cy = H / 2`` at ``W x H``, with no
distortion. The videos may be an integer downscale (or upscale) of ``W x H`` (N3V's downsampled
releases; each side within one pixel of ``W / k``): K is scaled to the video's frame size
``w x h`` by ``w / W`` and ``h / H``. ``downscale`` then shrinks every decoded frame to
``round(w / f) x round(h / f)`` with the loaders' resizing (BOX filter) and K is scaled with it
(conventions in ``common.py``).

Frames and times. Videos are decoded with imageio (its ``pyav`` plugin when PyAV is installed,
else ``FFMPEG`` from imageio-ffmpeg, a dependency). Every frame is decoded (to count them); frames
``f = 0, frame_step, 2 frame_step, ...`` are kept, at most ``max_frames`` of them, and shrunk as
they are decoded. All videos must have the same number of frames ``F`` and the same frame size.
The time of frame ``f`` (its index in the video) is ``f / (F - 1)`` (0 when ``F == 1``), so times
span [0, 1] over the whole recording whatever is kept. Views are named ``<video stem>/<f:04d>``,
e.g. ``cam03/0012``.

Split: DyNeRF's; the first video in name order (``cam00``, the centre camera of N3V) is held out:
every kept frame of it is test, every kept frame of the other cameras is train. ``test_every=0``
puts everything in train; other values of ``test_every`` are not used.

Normalisation: as for COLMAP and nerfstudio (``similarity_from_cameras`` of the N cameras: up to
+z, centred on the median camera centre for a forward-facing rig, median camera distance 1).
N3V has no points: ``num_random_points`` random points uniform in the cube [-1.3, 1.3]^3 of that
normalised frame (``finish_dataset``).

``Dataset.format`` is ``"n3v"``; ``Dataset.meta`` holds ``dynamic`` (True), ``num_frames`` (kept
frames per video = distinct times), ``total_frames`` (``F``), ``frame_indices`` (the kept ``f``),
``frame_step``, ``max_frames``, ``videos`` (file names, in row order), ``test_camera`` (the
held-out video's stem), ``bounds`` (float [N, 2] near/far per camera as in the file, world units),
``near`` and ``far`` (smallest near and largest far in the loaded world's units, i.e. scaled by
the normalisation's scale when ``normalize``).

Memory: N3V is big (a scene of 20 cameras x 300 frames at 2704x2028 is about 100 GB as uint8
RGB); load it with ``--downscale`` (e.g. 4), ``--frame-step`` and/or ``--max-frames``
(``load_dataset(downscale=, frame_step=, max_frames=)``).
"""
from __future__ import annotations

import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .common import (
    DatasetError,
    LoadedView,
    _resize,
    downscaled_size,
    finish_dataset,
    integer_scale,
    opengl_c2w_to_viewmat,
    similarity_from_cameras,
)

POSES_FILE = "poses_bounds.npy"
VIDEO_PATTERN = "cam*.mp4"


def find_videos(root: Path) -> list[Path]:
    """The ``cam*.mp4`` files of ``root``, sorted by file name (the i-th is poses_bounds row i)."""
    return sorted((p for p in Path(root).glob(VIDEO_PATTERN) if p.is_file()), key=lambda p: p.name)


def is_n3v(root: Path) -> bool:
    """True for a folder holding ``poses_bounds.npy`` and at least one ``cam*.mp4``."""
    root = Path(root)
    return root.is_dir() and (root / POSES_FILE).is_file() and bool(find_videos(root))


def read_poses_bounds(path: Path) -> np.ndarray:
    """``poses_bounds.npy`` as float64 ``[N, 17]`` (N >= 1, all finite). Raises ``DatasetError``
    naming the file when it is missing, unreadable, or not a numeric ``[N, 17]`` array."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (an N3V scene needs the camera poses in {POSES_FILE})")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read as a .npy array: {e}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.ndim != 2 or arr.shape[1] != 17 \
            or arr.shape[0] == 0:
        shape = getattr(arr, "shape", None)
        dtype = getattr(arr, "dtype", type(arr).__name__)
        raise DatasetError(f"{path}: expected a numeric array of shape [N, 17] (per camera a 3x5 pose flattened "
                           f"row-major, then near and far), got a {dtype} array of shape {shape}")
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if len(bad):
        raise DatasetError(f"{path}: row {int(bad[0])} has NaN or infinite values")
    return arr


def llff_row_to_camera(row: np.ndarray, where: str) -> tuple[np.ndarray, tuple[int, int, float], tuple[float, float]]:
    """One ``poses_bounds`` row -> (OpenCV world->camera float64 ``[4, 4]``, ``(W, H, focal)`` in
    pixels, ``(near, far)`` in world units). ``where`` names the row in errors (``DatasetError``:
    a non-positive or non-integer size, a non-positive focal length, a rotation that is not one)."""
    pose = np.asarray(row[:15], dtype=np.float64).reshape(3, 5)
    R, centre = pose[:, :3], pose[:, 3]
    H, W, focal = (float(v) for v in pose[:, 4])
    for name, v in (("H", H), ("W", W)):
        if not (v >= 1 and v == int(v)):
            raise DatasetError(f"{where}: image {name} (pose column 4) must be a positive integer, got {v!r}")
    if not focal > 0:
        raise DatasetError(f"{where}: the focal length (pose column 4) must be positive, got {focal!r}")
    c2w_gl = np.zeros((3, 4))
    c2w_gl[:, 0], c2w_gl[:, 1], c2w_gl[:, 2], c2w_gl[:, 3] = R[:, 1], -R[:, 0], R[:, 2], centre
    viewmat = opengl_c2w_to_viewmat(c2w_gl, where)
    return viewmat, (int(W), int(H), focal), (float(row[15]), float(row[16]))


def video_plugin() -> str:
    """The imageio plugin that decodes the videos: ``"pyav"`` when PyAV is installed, else
    ``"FFMPEG"`` (imageio-ffmpeg). Raises ImportError when neither is."""
    try:
        import av  # noqa: F401

        return "pyav"
    except ImportError:
        pass
    try:
        import imageio_ffmpeg  # noqa: F401

        return "FFMPEG"
    except ImportError as e:
        raise ImportError("decoding N3V videos needs imageio-ffmpeg (pip install imageio-ffmpeg) or PyAV "
                          f"(pip install av): {e}") from e


def _short(e: BaseException) -> str:
    """An exception's message in one line: its first line and, for ffmpeg's long reports, the last."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    msg = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return msg[:400]


def read_video(path: Path, *, frame_step: int = 1, max_frames: int | None = None, downscale: int = 1,
               plugin: str | None = None) -> tuple[list[int], list[np.ndarray], int, tuple[int, int]]:
    """Decode every frame of a video and keep frames ``0, frame_step, 2 frame_step, ...`` (at most
    ``max_frames``), each shrunk by ``downscale`` as it is decoded.

    Returns ``(kept frame indices, kept frames uint8 [h', w', 3], total number of frames,
    (w, h) the video's own frame size)``. Raises ``DatasetError`` naming the file when it is
    missing, cannot be decoded, has no frames, or changes frame size."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"video file not found: {path}")
    plugin = plugin or video_plugin()
    kept_idx: list[int] = []
    kept: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    target: tuple[int, int] | None = None
    n = 0
    try:
        for f, frame in enumerate(iio.imiter(path, plugin=plugin)):
            arr = np.asarray(frame)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
                raise DatasetError(f"{path}: frame {f} decodes to a {arr.dtype} array of shape {arr.shape}, "
                                   "expected 8-bit RGB")
            wh = (arr.shape[1], arr.shape[0])
            if size is None:
                size, target = wh, downscaled_size(wh[0], wh[1], downscale)
            elif wh != size:
                raise DatasetError(f"{path}: frame {f} is {wh[0]}x{wh[1]} but frame 0 is {size[0]}x{size[1]}")
            if f % frame_step == 0 and (max_frames is None or len(kept) < max_frames):
                rgb = np.ascontiguousarray(arr[..., :3])
                kept.append(_resize(rgb, target) if target != size else rgb.copy())
                kept_idx.append(f)
            n = f + 1
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 (imageio / ffmpeg / av report bad files with many exception types)
        raise DatasetError(f"{path}: cannot decode the video: {_short(e)}") from None
    if n == 0 or size is None:
        raise DatasetError(f"{path}: the video has no frames")
    return kept_idx, kept, n, size


def load_n3v(
    root: Path,
    *,
    downscale: int,
    test_every: int,
    background: np.ndarray,
    normalize: bool,
    max_init_points: int | None,
    num_random_points: int,
    seed: int,
    undistort: bool,
    frame_step: int = 1,
    max_frames: int | None = None,
):
    """Load a Neural 3D Video folder (layout, cameras, times, split and meta in the module
    docstring) as a `Dataset` of format ``"n3v"``: one view per (camera, kept frame), images uint8
    ``[h, w, 3]``, ``Split.times`` float32 in [0, 1].

    Keyword arguments are `splat.data.load_dataset`'s; ``frame_step`` (>= 1) keeps every n-th
    frame and ``max_frames`` (>= 1 or None) at most that many per video. ``background`` and
    ``undistort`` have no effect (videos are RGB, N3V's cameras are pinhole). Memory grows with
    cameras x kept frames x pixels: use ``downscale``, ``frame_step`` and ``max_frames``.

    Raises ``DatasetError`` naming the file: ``poses_bounds.npy`` missing, unreadable or not
    ``[N, 17]``; a number of ``cam*.mp4`` videos different from N; a video that cannot be decoded;
    videos of different lengths or frame sizes; a frame size that is not an integer scale of the
    ``W x H`` in ``poses_bounds.npy``."""
    root = Path(root)
    if isinstance(frame_step, bool) or not isinstance(frame_step, numbers.Integral) or frame_step < 1:
        raise DatasetError(f"frame_step must be an integer >= 1, got {frame_step!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, numbers.Integral)
                                   or max_frames < 1):
        raise DatasetError(f"max_frames must be None or an integer >= 1, got {max_frames!r}")
    frame_step, max_frames = int(frame_step), (None if max_frames is None else int(max_frames))
    poses_path = root / POSES_FILE
    poses = read_poses_bounds(poses_path)
    videos = find_videos(root)
    if len(videos) != len(poses):
        listed = ", ".join(v.name for v in videos[:6]) + (", ..." if len(videos) > 6 else "")
        raise DatasetError(f"{poses_path}: {len(poses)} camera poses but {len(videos)} videos ({VIDEO_PATTERN}) in "
                           f"{root}{': ' + listed if videos else ''}; each row needs its video")
    cams = [llff_row_to_camera(row, f"{poses_path}: row {i}") for i, row in enumerate(poses)]

    plugin = video_plugin()

    def decode(v: Path):
        return read_video(v, frame_step=frame_step, max_frames=max_frames, downscale=downscale, plugin=plugin)

    workers = max(1, min(4, os.cpu_count() or 1, len(videos)))
    if workers == 1:
        decoded = [decode(v) for v in videos]
    else:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            decoded = list(ex.map(decode, videos))

    kept_idx0, _, total0, size0 = decoded[0]
    for v, (_, _, total, size) in zip(videos[1:], decoded[1:]):
        if total != total0:
            raise DatasetError(f"videos of different lengths: {videos[0]} has {total0} frames, {v} has {total}")
        if size != size0:
            raise DatasetError(f"videos of different frame sizes: {videos[0]} is {size0[0]}x{size0[1]}, "
                               f"{v} is {size[0]}x{size[1]}")

    views: list[LoadedView] = []
    cam_of_view: list[int] = []
    for c, (video, (viewmat, (W, H, focal), _), (idx, frames, total, (w, h))) in enumerate(zip(videos, cams, decoded)):
        if integer_scale((W, H), (w, h)) is None and integer_scale((w, h), (W, H)) is None:
            raise DatasetError(f"{video}: frames are {w}x{h}, but {poses_path} row {c} gives W={W}, H={H} "
                               f"(and neither size is an integer scale of the other)")
        K = np.array([[focal * w / W, 0.0, w / 2.0], [0.0, focal * h / H, h / 2.0], [0.0, 0.0, 1.0]])
        th, tw = frames[0].shape[:2]
        K[0, :] *= tw / w
        K[1, :] *= th / h
        stem = video.stem
        for f, img in zip(idx, frames):
            t = f / (total - 1) if total > 1 else 0.0
            views.append(LoadedView(f"{stem}/{f:04d}", img, None, K.copy(), tw, th, viewmat.copy(), None, float(t)))
            cam_of_view.append(c)

    if test_every <= 0:
        train_idx, test_idx = list(range(len(views))), []
    else:
        train_idx = [i for i, c in enumerate(cam_of_view) if c != 0]
        test_idx = [i for i, c in enumerate(cam_of_view) if c == 0]

    similarity = similarity_from_cameras(np.stack([c[0] for c in cams]))
    T = similarity if normalize else np.eye(4)
    s = float(np.cbrt(np.linalg.det(T[:3, :3])))
    bounds = poses[:, 15:17].copy()
    meta = {
        "dynamic": True,
        "num_frames": len(kept_idx0),
        "total_frames": total0,
        "frame_indices": list(kept_idx0),
        "frame_step": frame_step,
        "max_frames": max_frames,
        "videos": [v.name for v in videos],
        "test_camera": videos[0].stem,
        "bounds": bounds,
        "near": float(bounds[:, 0].min()) * s,
        "far": float(bounds[:, 1].max()) * s,
        "video_plugin": plugin,
    }
    return finish_dataset(
        fmt="n3v",
        root=root,
        views=views,
        train_idx=train_idx,
        test_idx=test_idx,
        points=None,
        points_rgb=None,
        normalize=normalize,
        similarity=similarity,
        num_random_points=num_random_points,
        max_init_points=max_init_points,
        seed=seed,
        background=background,
        meta=meta,
    )
