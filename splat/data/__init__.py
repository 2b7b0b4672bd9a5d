"""Dataset loaders for training static 3D Gaussian splats.

    from splat.data import load_dataset
    ds = load_dataset("data/garden", downscale=4)
    view = ds.train
    colors, alphas, info = splat.rasterize(means, quats, scales, opacities, colors,
                                           torch.from_numpy(view.viewmats[i])[None],
                                           torch.from_numpy(view.Ks[i])[None],
                                           view.widths[i], view.heights[i],
                                           backgrounds=torch.from_numpy(ds.background)[None])

Formats: COLMAP sparse models (``colmap.py``), NeRF-synthetic ``transforms_{train,test}.json``
(``blender.py``) and nerfstudio ``transforms.json`` (``nerfstudio.py``). Conventions shared by all
(pixel centres, downscaling, normalisation, undistortion) are documented in ``common.py`` and
``distortion.py``.
"""
from __future__ import annotations

import numbers
from pathlib import Path

from .common import Dataset, DatasetError, Split, check_background

__all__ = ["load_dataset", "detect_format", "Dataset", "Split", "DatasetError", "FORMATS"]

FORMATS = ("colmap", "blender", "nerfstudio")


def detect_format(path) -> str:
    """``"blender"`` (transforms_train.json), ``"nerfstudio"`` (transforms.json) or ``"colmap"``
    (sparse/0/ or sparse/ with cameras and images files), checked in that order. A path to a
    ``transforms.json`` / ``transforms_train.json`` file is accepted too."""
    from .colmap import find_model_dir

    p = Path(path)
    if not p.exists():
        raise DatasetError(f"dataset path {p} does not exist")
    if p.is_file():
        if p.name == "transforms_train.json":
            return "blender"
        if p.suffix == ".json":
            return "nerfstudio"
        raise DatasetError(f"{p}: cannot tell the dataset format of a file; pass the dataset folder or its transforms.json")
    if (p / "transforms_train.json").is_file():
        return "blender"
    if (p / "transforms.json").is_file():
        return "nerfstudio"
    if find_model_dir(p) is not None:
        return "colmap"
    raise DatasetError(
        f"{p}: cannot detect the dataset format; looked for transforms_train.json (blender / NeRF-synthetic), "
        f"transforms.json (nerfstudio) and a COLMAP model in sparse/0/ or sparse/ "
        f"(cameras.bin|txt and images.bin|txt)"
    )


def load_dataset(
    path,
    *,
    downscale: int = 1,
    test_every: int = 8,
    background=(1.0, 1.0, 1.0),
    normalize: bool = True,
    max_init_points: int | None = None,
    num_random_points: int = 100_000,
    seed: int = 0,
    undistort: bool = True,
    format: str = "auto",
) -> Dataset:
    """Load a scene for training.

    Args:
        path: the dataset folder (or a nerfstudio transforms.json file).
        downscale: integer image downscale factor; K is scaled with the images (uses ``images_<f>/``
            copies when the dataset has them).
        test_every: every n-th image (sorted by name) goes to the test split when the dataset has no
            split of its own; 0 puts every image in train.
        background: RGB in [0, 1] that RGBA images are composited on (and the trainer renders with).
        normalize: COLMAP / nerfstudio: rotate the mean camera up to +z, centre on the point the cameras
            look at (or the median camera centre for forward-facing captures) and scale the median camera
            distance to 1 (``Dataset.transform``); blender scenes are never normalised.
        max_init_points: keep at most this many initial points (random subset, ``seed``).
        num_random_points: number of random initial points when the scene has none.
        seed: seed of the random initial points and of the subsampling.
        undistort: undistort images of distorted cameras to pinhole ones; False refuses such cameras.
        format: "auto", "colmap", "blender" or "nerfstudio".
    """
    root = Path(path)
    if isinstance(downscale, bool) or not isinstance(downscale, numbers.Integral) or downscale < 1:
        raise DatasetError(f"downscale must be an integer >= 1, got {downscale!r}")
    if isinstance(test_every, bool) or not isinstance(test_every, numbers.Integral) or test_every < 0:
        raise DatasetError(f"test_every must be an integer >= 0, got {test_every!r}")
    if max_init_points is not None:
        if isinstance(max_init_points, bool) or not isinstance(max_init_points, numbers.Integral) or max_init_points < 0:
            raise DatasetError(f"max_init_points must be None or an integer >= 0, got {max_init_points!r}")
        max_init_points = int(max_init_points)
    downscale, test_every = int(downscale), int(test_every)
    bg = check_background(background)
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}")
    if not root.exists():
        raise DatasetError(f"dataset path {root} does not exist")
    kwargs = dict(
        downscale=downscale,
        test_every=test_every,
        background=bg,
        normalize=normalize,
        max_init_points=max_init_points,
        num_random_points=num_random_points,
        seed=seed,
        undistort=undistort,
    )
    if fmt == "colmap":
        from .colmap import load_colmap

        return load_colmap(root, **kwargs)
    if fmt == "blender":
        from .blender import load_blender

        return load_blender(root.parent if root.is_file() else root, **kwargs)
    from .nerfstudio import load_nerfstudio

    return load_nerfstudio(root, **kwargs)
