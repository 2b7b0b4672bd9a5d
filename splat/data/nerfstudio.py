"""nerfstudio ``transforms.json`` (as written by ``ns-process-data``).

* Intrinsics ``fl_x fl_y cx cy w h camera_model k1 k2 k3 k4 p1 p2`` at the top level are shared;
  the same keys in a frame override them for that frame. ``fl_y`` defaults to ``fl_x``, ``cx``/``cy``
  to the image centre, ``w``/``h`` to the image size; ``camera_angle_x`` is accepted when ``fl_x``
  is absent (instant-ngp files).
* Camera models: PINHOLE / SIMPLE_PINHOLE / PERSPECTIVE / SIMPLE_RADIAL / RADIAL / OPENCV use
  nerfstudio's perspective distortion ``radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4`` with
  tangential ``p1 p2`` (undistorted when any coefficient is non-zero); OPENCV_FISHEYE uses
  ``k1..k4`` on theta and is undistorted to a pinhole camera too. Others (EQUIRECTANGULAR,
  FISHEYE624) are refused.
* ``transform_matrix``: camera-to-world, OpenGL convention (x right, y up, z back).
* ``applied_transform`` (3x4) is the transform ns-process-data applied to the original (COLMAP)
  world to get the frames' world; it wrote ``ply_file_path``'s points in that same transformed
  world (``create_ply_from_colmap`` applies it), so those points are used as they are, and
  nerfstudio's own dataparser likewise transforms them only by its orientation/scale
  normalisation. ``applied_transform`` is returned in ``Dataset.meta`` (as 4x4) so that a model
  can be mapped back to the original COLMAP frame: ``original = inv(applied) @ inv(transform) @ p``.
* ``file_path`` is relative to the json's folder; for ``downscale=f``, ``images_f/<file name>``
  there is used when it exists (nerfstudio's convention).
* ``mask_path`` (per frame, relative like ``file_path``): a mask image at the image's full
  resolution (or its downscaled size); 0 = the pixel is left out of the training loss and of the
  metrics, as in nerfstudio. Masks follow downscaling (a pixel is kept only if its whole area is)
  and undistortion (``Split.masks``).
* Split: ``train_filenames`` / ``test_filenames`` (``val_filenames`` when there is no test list)
  are honoured; otherwise every ``test_every``-th frame by file name.
"""
from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .common import (
    DatasetError,
    ViewSpec,
    as_float,
    as_int,
    as_matrix,
    every_nth_split,
    finish_dataset,
    load_json,
    load_points_ply,
    load_views,
    opengl_c2w_to_viewmat,
    require,
    similarity_from_cameras,
)
from .distortion import Distortion

PERSPECTIVE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "PERSPECTIVE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
FISHEYE_MODELS = ("OPENCV_FISHEYE",)
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model", "camera_angle_x", "k1", "k2", "k3", "k4", "p1", "p2")


def norm_name(p: str) -> str:
    """A frame's file path as a clean relative posix path ("./images/a.png" -> "images/a.png")."""
    parts = [x for x in PurePosixPath(str(p).replace("\\", "/")).parts if x != "."]
    return str(PurePosixPath(*parts)) if parts else str(p)


def distortion_from(obj: dict, model: str, path: Path, where: str, label: str) -> Distortion | None:
    """nerfstudio-style distortion coefficients of a camera (None when there is none)."""
    coef = {k: as_float(obj[k], k, path, where) if k in obj else 0.0 for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
    if model in FISHEYE_MODELS:
        if coef["p1"] or coef["p2"]:
            raise DatasetError(f"{path}: {label}: OPENCV_FISHEYE takes no tangential coefficients p1/p2")
        return Distortion("fisheye", radial=(coef["k1"], coef["k2"], coef["k3"], coef["k4"]))
    if model not in PERSPECTIVE_MODELS:
        raise DatasetError(
            f"{path}: {label} uses camera_model '{model}', which is not supported; supported: "
            + ", ".join(PERSPECTIVE_MODELS + FISHEYE_MODELS)
        )
    d = Distortion("radtan", radial=(coef["k1"], coef["k2"], coef["k3"], coef["k4"]), tangential=(coef["p1"], coef["p2"]))
    return None if d.is_identity else d


def frame_camera(meta: dict, frame: dict, path: Path, index: int):
    """(make_K, width, height, distortion, key, label) of one frame; frame keys override the top level."""
    where = f" (frame {index})"
    merged = {k: meta[k] for k in INTRINSIC_KEYS if k in meta}
    merged.update({k: frame[k] for k in INTRINSIC_KEYS if k in frame})
    model = merged.get("camera_model", "OPENCV")
    if not isinstance(model, str):
        raise DatasetError(f"{path}: key 'camera_model'{where} must be a string, got {model!r}")
    if "fl_x" in merged:
        fl_x = as_float(merged["fl_x"], "fl_x", path, where)
        fov_x = None
    elif "camera_angle_x" in merged:
        fl_x = None
        fov_x = as_float(merged["camera_angle_x"], "camera_angle_x", path, where)
    else:
        raise DatasetError(f"{path}: missing key 'fl_x'{where} (nor at the top level, nor a 'camera_angle_x')")
    fl_y = as_float(merged["fl_y"], "fl_y", path, where) if "fl_y" in merged else None
    cx = as_float(merged["cx"], "cx", path, where) if "cx" in merged else None
    cy = as_float(merged["cy"], "cy", path, where) if "cy" in merged else None
    w = as_int(merged["w"], "w", path, where) if "w" in merged else None
    h = as_int(merged["h"], "h", path, where) if "h" in merged else None
    label = f"the camera of frame {index} ({model})"
    dist = distortion_from(merged, model, path, where, label)

    def make_K(W: int, H: int) -> np.ndarray:
        fx = fl_x if fl_x is not None else 0.5 * W / math.tan(0.5 * fov_x)
        fy = fl_y if fl_y is not None else fx
        return np.array([[fx, 0.0, W / 2.0 if cx is None else cx], [0.0, fy, H / 2.0 if cy is None else cy], [0.0, 0.0, 1.0]])

    key = ("nerfstudio", model, fl_x, fov_x, fl_y, cx, cy, w, h, dist)
    return make_K, w, h, dist, key, label


def load_nerfstudio(
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
    json_path = root if root.is_file() else root / "transforms.json"
    data_dir = json_path.parent
    meta = load_json(json_path)
    if not isinstance(meta, dict):
        raise DatasetError(f"{json_path}: expected a JSON object at the top level, got {type(meta).__name__}")
    frames = require(meta, "frames", json_path)
    if not isinstance(frames, list):
        raise DatasetError(f"{json_path}: key 'frames' must be a list, got {type(frames).__name__}")
    if not frames:
        raise DatasetError(f"{json_path}: 'frames' is empty: the dataset has no images")

    specs: list[ViewSpec] = []
    for i, fr in enumerate(frames):
        where = f" (frame {i})"
        fp = require(fr, "file_path", json_path, where)
        if not isinstance(fp, str) or not fp:
            raise DatasetError(f"{json_path}: key 'file_path'{where} must be a non-empty string, got {fp!r}")
        c2w = as_matrix(require(fr, "transform_matrix", json_path, where), (3, 4), 4, "transform_matrix", json_path, where)
        make_K, w, h, dist, key, label = frame_camera(meta, fr, json_path, i)
        name = norm_name(fp)
        mask_path = None
        if "mask_path" in fr:
            mp = fr["mask_path"]
            if not isinstance(mp, str) or not mp:
                raise DatasetError(f"{json_path}: key 'mask_path'{where} must be a non-empty string, got {mp!r}")
            mask_path = data_dir / norm_name(mp)
            if not mask_path.is_file():
                raise DatasetError(f"{json_path}: mask file {mask_path}{where} not found")
        specs.append(
            ViewSpec(
                name=name,
                path=data_dir / name,
                viewmat=opengl_c2w_to_viewmat(c2w, f"{json_path}: key 'transform_matrix'{where}"),
                K=None,
                make_K=make_K,
                width=w,
                height=h,
                distortion=dist,
                camera_key=key,
                camera_label=label,
                downscaled_path=(data_dir / f"images_{downscale}" / PurePosixPath(name).name) if downscale > 1 else None,
                mask_path=mask_path,
            )
        )
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise DatasetError(f"{json_path}: file_path '{s.name}' appears in more than one frame")
        seen.add(s.name)
    specs.sort(key=lambda s: s.name)
    names = [s.name for s in specs]

    train_idx, test_idx = _split(meta, names, json_path, test_every)

    applied = None
    if "applied_transform" in meta:
        a = as_matrix(meta["applied_transform"], (3, 4), 4, "applied_transform", json_path)
        applied = np.eye(4)
        applied[: a.shape[0]] = a
    pts = rgb = None
    ply = None
    if "ply_file_path" in meta:
        ply_rel = meta["ply_file_path"]
        if not isinstance(ply_rel, str) or not ply_rel:
            raise DatasetError(f"{json_path}: key 'ply_file_path' must be a non-empty string, got {ply_rel!r}")
        ply = data_dir / ply_rel
        if not ply.is_file():
            raise DatasetError(f"{json_path}: 'ply_file_path' points to {ply}, which does not exist")
        pts, rgb = load_points_ply(ply)

    views = load_views(specs, downscale=downscale, background=background, undistort=undistort)
    similarity = similarity_from_cameras(np.stack([s.viewmat for s in specs]))
    extra = {"applied_transform": applied, "ply_file_path": str(ply) if ply else None, "json": str(json_path)}
    return finish_dataset(
        fmt="nerfstudio",
        root=data_dir,
        views=views,
        train_idx=train_idx,
        test_idx=test_idx,
        points=pts,
        points_rgb=rgb,
        normalize=normalize,
        similarity=similarity,
        num_random_points=num_random_points,
        max_init_points=max_init_points,
        seed=seed,
        background=background,
        meta=extra,
    )


def _name_list(meta: dict, key: str, path: Path, known: set[str]) -> list[str]:
    val = meta[key]
    if not isinstance(val, list) or not all(isinstance(x, str) for x in val):
        raise DatasetError(f"{path}: key '{key}' must be a list of file paths")
    out = [norm_name(x) for x in val]
    missing = [x for x in out if x not in known]
    if missing:
        raise DatasetError(f"{path}: key '{key}' lists files that no frame has: {missing[:5]}")
    return out


def _split(meta: dict[str, Any], names: list[str], path: Path, test_every: int) -> tuple[list[int], list[int]]:
    if test_every <= 0:
        return list(range(len(names))), []
    known = set(names)
    test_key = "test_filenames" if "test_filenames" in meta else ("val_filenames" if "val_filenames" in meta else None)
    has_train = "train_filenames" in meta
    if test_key is None and not has_train:
        return every_nth_split(names, test_every)
    test = set(_name_list(meta, test_key, path, known)) if test_key else set()
    if has_train:
        train = set(_name_list(meta, "train_filenames", path, known))
        if test_key is None:
            test = known - train
    else:
        train = known - test
    return [i for i, n in enumerate(names) if n in train], [i for i, n in enumerate(names) if n in test]
