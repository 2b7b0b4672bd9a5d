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
            )
        )
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
    train_json = root / "transforms_train.json"
    if not train_json.is_file():
        raise DatasetError(f"{root}: transforms_train.json not found")
    train = _read_split(root, train_json)
    test_json = root / "transforms_test.json"
    test = _read_split(root, test_json) if test_json.is_file() else []
    if not train:
        raise DatasetError(f"{train_json}: 'frames' is empty: the dataset has no training images")
    if test_every <= 0:
        train, test = train + test, []
    specs = train + test
    pts = rgb = None
    ply = root / "points3d.ply"
    if ply.is_file():
        pts, rgb = load_points_ply(ply)
    views = load_views(specs, downscale=downscale, background=background, undistort=undistort)
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
        meta={"ply": str(ply) if ply.is_file() else None},
    )
