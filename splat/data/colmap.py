"""COLMAP sparse models (``sparse/0/`` or ``sparse/``, binary or text) read with pycolmap.

Layout::

    root/images/<name>            full-resolution images, <name> as stored in the model
    root/images_<f>/<name>        optional pre-downscaled copies, used for downscale=f when present
    root/sparse/0/{cameras,images,points3D}.{bin,txt}   (or root/sparse/...)
    root/sparse/0/test.txt        optional: test image names, one per line (3DGS's convention)

Camera models: SIMPLE_PINHOLE and PINHOLE are used directly; SIMPLE_RADIAL, RADIAL, OPENCV,
FULL_OPENCV and the fisheye models SIMPLE_FISHEYE, FISHEYE, SIMPLE_RADIAL_FISHEYE,
RADIAL_FISHEYE, OPENCV_FISHEYE are undistorted to a pinhole camera (see ``distortion.py``);
other models are refused. The initial points are the model's points3D with their colours; points
with NaN/Inf coordinates are dropped with a warning naming the file. Binary files are checked
record by record before pycolmap reads them, and text image names may contain spaces
(``colmap_files``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .colmap_files import check_binary_model, read_text_model
from .common import (
    DatasetError,
    ViewSpec,
    drop_nonfinite_points,
    every_nth_split,
    finish_dataset,
    load_views,
    similarity_from_cameras,
)
from .distortion import Distortion

MODEL_FILES = ("cameras", "images", "points3D")

# model name -> (parameter names, kind); kind is None (pinhole), "radtan" or "fisheye"
CAMERA_MODELS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "SIMPLE_PINHOLE": (("f", "cx", "cy"), None),
    "PINHOLE": (("fx", "fy", "cx", "cy"), None),
    "SIMPLE_RADIAL": (("f", "cx", "cy", "k"), "radtan"),
    "RADIAL": (("f", "cx", "cy", "k1", "k2"), "radtan"),
    "OPENCV": (("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"), "radtan"),
    "FULL_OPENCV": (("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"), "radtan"),
    "SIMPLE_FISHEYE": (("f", "cx", "cy"), "fisheye"),
    "FISHEYE": (("fx", "fy", "cx", "cy"), "fisheye"),
    "SIMPLE_RADIAL_FISHEYE": (("f", "cx", "cy", "k"), "fisheye"),
    "RADIAL_FISHEYE": (("f", "cx", "cy", "k1", "k2"), "fisheye"),
    "OPENCV_FISHEYE": (("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"), "fisheye"),
}


def find_model_dir(root: Path) -> Path | None:
    """``root/sparse/0`` or ``root/sparse`` when it holds a cameras and an images file (bin or txt)."""
    for d in (root / "sparse" / "0", root / "sparse"):
        if all((d / f"{n}.bin").is_file() or (d / f"{n}.txt").is_file() for n in ("cameras", "images")):
            return d
    return None


def camera_intrinsics(model: str, params, camera_id: int) -> tuple[np.ndarray, Distortion | None]:
    """Pinhole K and distortion (None for pinhole models) of a COLMAP camera."""
    if model not in CAMERA_MODELS:
        raise DatasetError(
            f"camera {camera_id} uses the COLMAP camera model {model}, which is not supported; supported models: "
            + ", ".join(CAMERA_MODELS)
        )
    names, kind = CAMERA_MODELS[model]
    if len(params) != len(names):
        raise DatasetError(f"camera {camera_id} ({model}) has {len(params)} parameters, expected {len(names)}")
    p = dict(zip(names, (float(v) for v in params)))
    fx = p.get("fx", p.get("f"))
    fy = p.get("fy", p.get("f"))
    K = np.array([[fx, 0.0, p["cx"]], [0.0, fy, p["cy"]], [0.0, 0.0, 1.0]])
    if kind is None:
        return K, None
    if kind == "radtan":
        if model == "SIMPLE_RADIAL":
            radial = (p["k"],)
        elif model == "FULL_OPENCV":
            radial = (p["k1"], p["k2"], p["k3"])
        else:
            radial = (p["k1"], p.get("k2", 0.0))
        den = (p["k4"], p["k5"], p["k6"]) if model == "FULL_OPENCV" else ()
        tang = (p.get("p1", 0.0), p.get("p2", 0.0))
        return K, Distortion("radtan", radial=radial, radial_den=den, tangential=tang)
    if "k" in p:
        radial = (p["k"],)
    else:
        radial = tuple(p[k] for k in ("k1", "k2", "k3", "k4") if k in p)
    return K, Distortion("fisheye", radial=radial)


def _has_pose(img) -> bool:
    if hasattr(img, "has_pose"):  # pycolmap >= 3.12
        return bool(img.has_pose)
    return bool(getattr(img, "registered", True))


def _cam_from_world(img) -> np.ndarray:
    cfw = img.cam_from_world
    if callable(cfw):  # a method since pycolmap 3.12 (the pose comes from the image's frame)
        cfw = cfw()
    return np.asarray(cfw.matrix(), dtype=np.float64)


def _model_name(cam) -> str:
    m = cam.model
    return m.name if hasattr(m, "name") else str(getattr(cam, "model_name", m))


def _read_name_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the test split file: {e}") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def load_colmap(
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
    try:
        import pycolmap
    except ImportError as e:
        raise ImportError(f"reading COLMAP models needs pycolmap (pip install pycolmap): {e}") from e

    model_dir = find_model_dir(root)
    if model_dir is None:
        raise DatasetError(
            f"{root}: no COLMAP model found (looked for sparse/0/ and sparse/ holding cameras.bin or cameras.txt "
            f"and images.bin or images.txt)"
        )
    for n in MODEL_FILES:
        if not ((model_dir / f"{n}.bin").is_file() or (model_dir / f"{n}.txt").is_file()):
            raise DatasetError(f"{model_dir}: the COLMAP model has no {n}.bin or {n}.txt")
    binary = all((model_dir / f"{n}.bin").is_file() for n in MODEL_FILES)
    if not binary and not all((model_dir / f"{n}.txt").is_file() for n in MODEL_FILES):
        raise DatasetError(f"{model_dir}: the COLMAP model mixes .bin and .txt files; keep one kind "
                           "(`colmap model_converter` converts between them)")
    names_by_id: dict[int, str] | None = None
    with tempfile.TemporaryDirectory(prefix="splat-colmap-") as tmp:
        if binary:
            check_binary_model(model_dir)
            read_dir = model_dir
        else:
            names_by_id, text_pts, text_rgb, read_dir = read_text_model(model_dir, Path(tmp))
        try:
            rec = pycolmap.Reconstruction(str(read_dir))
        except Exception as e:  # pycolmap raises ValueError/RuntimeError with the C++ message
            raise DatasetError(f"{model_dir}: cannot read the COLMAP model: {e}") from None
    points_file = model_dir / ("points3D.bin" if binary else "points3D.txt")
    image_name = (lambda img: img.name) if names_by_id is None else (lambda img: names_by_id[img.image_id])

    cameras = rec.cameras
    images = rec.images
    if len(images) == 0:
        raise DatasetError(f"{model_dir}: the COLMAP model contains no images")
    registered = [img for img in images.values() if _has_pose(img)]
    if not registered:
        raise DatasetError(f"{model_dir}: none of the {len(images)} images of the COLMAP model is registered (has a pose)")

    image_dir = root / "images"
    down_dir = root / f"images_{downscale}" if downscale > 1 else None

    intrinsics: dict[int, tuple[np.ndarray, Distortion | None, str, int, int]] = {}
    specs: list[ViewSpec] = []
    for img in sorted(registered, key=image_name):
        name = image_name(img)
        cid = img.camera_id
        if cid not in intrinsics:
            if cid not in cameras:
                raise DatasetError(f"{model_dir}: image {name} refers to camera {cid}, which the model does not define")
            cam = cameras[cid]
            model_name = _model_name(cam)
            K, dist = camera_intrinsics(model_name, list(cam.params), cid)
            intrinsics[cid] = (K, dist, model_name, int(cam.width), int(cam.height))
        K, dist, model, W, H = intrinsics[cid]
        viewmat = np.eye(4)
        viewmat[:3, :4] = _cam_from_world(img)
        specs.append(
            ViewSpec(
                name=name,
                path=image_dir / name,
                viewmat=viewmat,
                K=K,
                width=W,
                height=H,
                distortion=dist,
                camera_key=("colmap", cid),
                camera_label=f"camera {cid} ({model})",
                downscaled_path=(down_dir / name) if down_dir is not None else None,
            )
        )

    if not image_dir.is_dir():
        raise DatasetError(f"{root}: image folder {image_dir} not found (the COLMAP model names its images relative to it)")

    names = [s.name for s in specs]
    split_file = next((p for p in (model_dir / "test.txt", root / "test.txt") if p.is_file()), None)
    if test_every <= 0:
        train_idx, test_idx = list(range(len(specs))), []
    elif split_file is not None:
        test_names = _read_name_list(split_file)
        known = set(names)
        missing = [n for n in test_names if n not in known]
        if missing:
            raise DatasetError(f"{split_file}: test images not among the model's registered images: {missing[:5]}")
        tset = set(test_names)
        train_idx = [i for i, n in enumerate(names) if n not in tset]
        test_idx = [i for i, n in enumerate(names) if n in tset]
    else:
        train_idx, test_idx = every_nth_split(names, test_every)

    # points
    if binary:
        pids = sorted(rec.points3D.keys())
        pts = np.array([rec.points3D[i].xyz for i in pids], dtype=np.float64).reshape(-1, 3)
        rgb = np.array([rec.points3D[i].color for i in pids], dtype=np.uint8).reshape(-1, 3)
    else:
        pts, rgb = text_pts, text_rgb
    pts, rgb = drop_nonfinite_points(pts, rgb, points_file)
    if not len(pts):
        pts = rgb = None

    views = load_views(specs, downscale=downscale, background=background, undistort=undistort)
    similarity = similarity_from_cameras(np.stack([s.viewmat for s in specs]))
    meta = {
        "model_dir": str(model_dir),
        "camera_models": {cid: v[2] for cid, v in intrinsics.items()},
        "num_unregistered_images": len(images) - len(registered),
        "split_file": str(split_file) if split_file is not None and test_every > 0 else None,
    }
    return finish_dataset(
        fmt="colmap",
        root=root,
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
        meta=meta,
    )
