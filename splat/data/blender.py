"""NeRF-synthetic / Blender scenes: ``transforms_train.json`` and ``transforms_test.json``
(``transforms_val.json`` is ignored, as 3DGS does).

* ``camera_angle_x`` gives ``fx = fy = 0.5 W / tan(0.5 camera_angle_x)``, ``cx = W / 2``,
  ``cy = H / 2``; ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h`` (and nerfstudio-style
  ``k1..k4 p1 p2``) at the top level of a file or in a frame override that.
* ``file_path`` is relative to the folder, usually without extension: ``.png`` is tried then.
* ``transform_matrix`` is camera-to-world in the OpenGL/Blender convention (x right, y up,
  z back); it becomes an OpenCV world->camera matrix.
* RGBA images are composited on ``background``; RGB images are used as they are.
* Initial points: ``points3d.ply`` in the folder when present (3DGS), else ``num_random_points``
  uniform random points in the cube ``[-1.3, 1.3]^3`` with random colours.
* No normalisation: like 3DGS, the world coordinates are kept (``transform`` is the identity,
  whatever ``normalize`` says); ``scene_scale`` comes from the train cameras as usual.
* Split: train from ``transforms_train.json``, test from ``transforms_test.json``;
  ``test_every=0`` merges the test frames into train (3DGS without ``--eval``).

Dynamic scenes (D-NeRF) use the same layout with a per-frame ``"time"``: a finite number in
``[0, 1]`` (the instant of the frame, 0 = first, 1 = last). Either every frame of the train and
test files has one or none has ("missing times" otherwise, naming the first frame without one).
Within one file the times must not decrease in the order the frames are listed: D-NeRF lists its
frames in time order, and a multi-view file lists every camera at one instant, then the next
instant. The times reach ``Split.times`` (float32 [M]) and from there ``Cameras.time``;
``Dataset.format`` stays ``"blender"``, with ``meta["dynamic"] = True`` and
``meta["num_frames"]`` (the number of distinct times over the loaded frames) added, and
``Dataset.time_range`` gives their span.

Point-lit (relightable) scenes use the same layout; each frame also has
``"light_position": [x, y, z]``, the world position (in the frame's world coordinates, like
``transform_matrix``) of the one point light that lit its image, and ``"light_intensity":
[r, g, b]``, that light's linear RGB radiant intensity in W/sr: a Lambertian surface of albedo
``rho`` at distance ``d``, lit at normal incidence, has radiance ``rho / pi * I / d^2``. The
images are 8-bit sRGB RGBA PNGs (alpha = coverage, composited on ``background`` as usual), each
lit by its frame's light only. A scene is point-lit when its frames carry the keys (no other
switch); then the lights reach ``Split.light_positions`` / ``Split.light_intensities`` (float32
[M, 3], in frame order) and from there ``Cameras.light_position`` / ``Cameras.light_intensity``,
and ``meta["relightable"] = True``; ``Dataset.format`` stays ``"blender"``. A frame has both
keys or neither; each is a list of exactly 3 finite numbers; the intensity's components are
``>= 0`` and not all zero. Either every frame of the train and test files has a light or none
has ("missing lights" otherwise, naming the first frame without one). Lights and times may
coexist (a dynamic point-lit scene).

Every error is a ``DatasetError`` naming the json file and the frame index (``frame i`` counts
from 0 in the file's ``frames`` list), and for a bad value the key and the value.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .common import (
    DatasetError,
    ViewSpec,
    as_float,
    as_int,
    as_matrix,
    finish_dataset,
    load_json,
    load_points_ply,
    load_views,
    opengl_c2w_to_viewmat,
    require,
)
from .nerfstudio import distortion_from, norm_name

OVERRIDE_KEYS = ("camera_angle_x", "fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2")


def _resolve_image(root: Path, file_path: str) -> Path:
    p = root / file_path
    if p.suffix and p.is_file():
        return p
    with_png = p.with_name(p.name + ".png")
    if with_png.is_file():
        return with_png
    if p.is_file():
        return p
    return p if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".exr", ".webp", ".bmp", ".tif", ".tiff") else with_png


def _read_time(fr: dict, json_path: Path, where: str) -> float | None:
    """The frame's optional ``time``: None when absent, else a finite number in [0, 1]."""
    if "time" not in fr:
        return None
    t = as_float(fr["time"], "time", json_path, where)
    if not 0.0 <= t <= 1.0:
        raise DatasetError(f"{json_path}: key 'time'{where} must be in [0, 1], got {t!r}")
    return t


LIGHT_KEYS = ("light_position", "light_intensity")


def _read_light_vector(value, key: str, json_path: Path, where: str) -> np.ndarray:
    """A list of exactly 3 finite numbers, or a DatasetError naming the file, frame, key and value."""
    bad = f"{json_path}: key '{key}'{where} must be a list of 3 finite numbers, got {value!r:.120}"
    if not isinstance(value, list):
        raise DatasetError(f"{bad} (a {type(value).__name__}, not a list)")
    if len(value) != 3:
        raise DatasetError(f"{bad} (a list of {len(value)})")
    for j, c in enumerate(value):
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            raise DatasetError(f"{bad} (component {j} is not a number)")
        if not math.isfinite(c):
            raise DatasetError(f"{bad} (component {j} is not finite)")
    return np.array([float(c) for c in value], dtype=np.float64)


def _read_light(fr: dict, json_path: Path, where: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The frame's optional point light ``(position, intensity)``: ``(None, None)`` when the frame
    has neither key; both keys or neither, 3 finite numbers each, the intensity >= 0 and not all 0."""
    present = [k for k in LIGHT_KEYS if k in fr]
    if not present:
        return None, None
    if len(present) == 1:
        (has,), missing = present, [k for k in LIGHT_KEYS if k not in fr][0]
        raise DatasetError(f"{json_path}: missing key '{missing}'{where}: the frame has '{has}', and a point light "
                           f"needs both 'light_position' and 'light_intensity'")
    pos = _read_light_vector(fr["light_position"], "light_position", json_path, where)
    intensity = _read_light_vector(fr["light_intensity"], "light_intensity", json_path, where)
    if np.any(intensity < 0):
        raise DatasetError(f"{json_path}: key 'light_intensity'{where} must be >= 0 in every component (a radiant "
                           f"intensity), got {fr['light_intensity']!r}")
    if not np.any(intensity > 0):
        raise DatasetError(f"{json_path}: key 'light_intensity'{where} is all zero, got {fr['light_intensity']!r}: "
                           "the frame's only light would be off (a black image)")
    return pos, intensity


def _check_time_order(specs: list[ViewSpec], json_path: Path) -> None:
    """Within one file, the frames' times must not decrease in the order they are listed."""
    prev: tuple[int, float] | None = None
    for i, s in enumerate(specs):
        if s.time is None:
            continue
        if prev is not None and s.time < prev[1]:
            raise DatasetError(
                f"{json_path}: frames out of time order: frame {i} has time {s.time!r} after frame {prev[0]} with "
                f"time {prev[1]!r} (times must not decrease in the order the frames are listed)")
        prev = (i, s.time)


def _check_complete(files: list[tuple[Path, list[ViewSpec]]], value, what: str, key: str, need: str) -> bool:
    """True when ``value(spec)`` is set on every frame, False when on none; a "missing {what}"
    error for a mix, naming the first frame (train file first) without one and a frame that has one."""
    having = [(p, i, value(s)) for p, specs in files for i, s in enumerate(specs) if value(s) is not None]
    if not having:
        return False
    for p, specs in files:
        for i, s in enumerate(specs):
            if value(s) is None:
                q, j, v = having[0]
                raise DatasetError(
                    f"{p}: missing {what}: frame {i} has no '{key}', but other frames have one ({q.name} frame {j} "
                    f"has {key} {v!r}); {need} on every frame of the train and test files")
    return True


def _check_times_complete(files: list[tuple[Path, list[ViewSpec]]]) -> bool:
    """True when every frame has a time, False when none has; "missing times" error for a mix."""
    return _check_complete(files, lambda s: s.time, "times", "time", "a dynamic scene needs a time")


def _check_lights_complete(files: list[tuple[Path, list[ViewSpec]]]) -> bool:
    """True when every frame has a point light, False when none has; "missing lights" error for a mix."""
    return _check_complete(files, lambda s: None if s.light_position is None else s.light_position.tolist(),
                           "lights", "light_position",
                           "a point-lit (relightable) scene needs a light")


def _read_split(root: Path, json_path: Path) -> list[ViewSpec]:
    meta = load_json(json_path)
    if not isinstance(meta, dict):
        raise DatasetError(f"{json_path}: expected a JSON object at the top level, got {type(meta).__name__}")
    frames = require(meta, "frames", json_path)
    if not isinstance(frames, list):
        raise DatasetError(f"{json_path}: key 'frames' must be a list, got {type(frames).__name__}")
    specs = []
    for i, fr in enumerate(frames):
        where = f" (frame {i})"
        fp = require(fr, "file_path", json_path, where)
        if not isinstance(fp, str) or not fp:
            raise DatasetError(f"{json_path}: key 'file_path'{where} must be a non-empty string, got {fp!r}")
        c2w = as_matrix(require(fr, "transform_matrix", json_path, where), (3, 4), 4, "transform_matrix", json_path, where)
        cam = {k: meta[k] for k in OVERRIDE_KEYS if k in meta}
        cam.update({k: fr[k] for k in OVERRIDE_KEYS if k in fr})
        if "fl_x" in cam:
            fl_x, angle = as_float(cam["fl_x"], "fl_x", json_path, where), None
        else:
            if "camera_angle_x" not in cam:
                raise DatasetError(f"{json_path}: missing key 'camera_angle_x' (nor 'fl_x'){where}")
            fl_x, angle = None, as_float(cam["camera_angle_x"], "camera_angle_x", json_path, where)
            if not 0.0 < angle < math.pi:
                raise DatasetError(f"{json_path}: key 'camera_angle_x'{where} must be in (0, pi), got {angle}")
        fl_y = as_float(cam["fl_y"], "fl_y", json_path, where) if "fl_y" in cam else None
        cx = as_float(cam["cx"], "cx", json_path, where) if "cx" in cam else None
        cy = as_float(cam["cy"], "cy", json_path, where) if "cy" in cam else None
        w = as_int(cam["w"], "w", json_path, where) if "w" in cam else None
        h = as_int(cam["h"], "h", json_path, where) if "h" in cam else None
        time = _read_time(fr, json_path, where)
        light_position, light_intensity = _read_light(fr, json_path, where)
        label = f"the camera of {json_path.name} frame {i}"
        dist = distortion_from(cam, "OPENCV", json_path, where, label)

        def make_K(W, H, fl_x=fl_x, angle=angle, fl_y=fl_y, cx=cx, cy=cy):
            fx = fl_x if fl_x is not None else 0.5 * W / math.tan(0.5 * angle)
            fy = fl_y if fl_y is not None else fx
            return np.array([[fx, 0.0, W / 2.0 if cx is None else cx], [0.0, fy, H / 2.0 if cy is None else cy], [0.0, 0.0, 1.0]])

        specs.append(
            ViewSpec(
                name=norm_name(fp),
                path=_resolve_image(root, fp),
                viewmat=opengl_c2w_to_viewmat(c2w, f"{json_path}: key 'transform_matrix'{where}"),
                make_K=make_K,
                width=w,
                height=h,
                distortion=dist,
                camera_key=("blender", json_path.name, fl_x, angle, fl_y, cx, cy, w, h, dist),
                camera_label=label,
                time=time,
                light_position=light_position,
                light_intensity=light_intensity,
            )
        )
    _check_time_order(specs, json_path)
    return specs


def load_blender(
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
):
    """Load a NeRF-synthetic / D-NeRF folder (layout and rules in the module docstring); the
    keyword arguments are `splat.data.load_dataset`'s. Raises ``DatasetError`` naming the file
    (and frame) for a missing or malformed json file, a bad camera, a bad or missing image, and
    for D-NeRF times that are missing on some frames, not finite, outside [0, 1] or out of order, and
    for point lights that are missing on some frames, half given or malformed."""
    train_json = root / "transforms_train.json"
    if not train_json.is_file():
        raise DatasetError(f"{root}: transforms_train.json not found")
    train = _read_split(root, train_json)
    test_json = root / "transforms_test.json"
    test = _read_split(root, test_json) if test_json.is_file() else []
    if not train:
        raise DatasetError(f"{train_json}: 'frames' is empty: the dataset has no training images")
    dynamic = _check_times_complete([(train_json, train), (test_json, test)])
    relightable = _check_lights_complete([(train_json, train), (test_json, test)])
    if test_every <= 0:
        train, test = train + test, []
    specs = train + test
    pts = rgb = None
    ply = root / "points3d.ply"
    if ply.is_file():
        pts, rgb = load_points_ply(ply)
    views = load_views(specs, downscale=downscale, background=background, undistort=undistort)
    meta: dict = {"ply": str(ply) if ply.is_file() else None}
    if dynamic:
        meta.update(dynamic=True, num_frames=len({s.time for s in specs}))
    if relightable:
        meta["relightable"] = True
    n = len(train)
    return finish_dataset(
        fmt="blender",
        root=root,
        views=views,
        train_idx=list(range(n)),
        test_idx=list(range(n, len(specs))),
        points=pts,
        points_rgb=rgb,
        normalize=False,
        similarity=None,
        num_random_points=num_random_points,
        max_init_points=max_init_points,
        seed=seed,
        background=background,
        meta=meta,
    )
