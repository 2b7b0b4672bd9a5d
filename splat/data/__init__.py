"""Dataset loaders for training 3D Gaussian splats (static scenes, and dynamic ones with a time per view).

    from splat.data import load_dataset
    ds = load_dataset("data/garden", downscale=4)
    view = ds.train
    colors, alphas, info = splat.rasterize(means, quats, scales, opacities, colors,
                                           torch.from_numpy(view.viewmats[i])[None],
                                           torch.from_numpy(view.Ks[i])[None],
                                           view.widths[i], view.heights[i],
                                           backgrounds=torch.from_numpy(ds.background)[None])

Formats: COLMAP sparse models (``colmap.py``), NeRF-synthetic ``transforms_{train,test}.json``
(``blender.py``; D-NeRF's per-frame ``time`` included), nerfstudio ``transforms.json``
(``nerfstudio.py``) and Neural 3D Video multi-view videos (``n3v.py``). Dynamic scenes fill
``Split.times`` (float32 [M] in [0, 1]) and ``Dataset.time_range``. Conventions shared by all
(pixel centres, downscaling, normalisation, undistortion) are documented in ``common.py`` and
``distortion.py``.
"""
from __future__ import annotations

import numbers
from pathlib import Path

from .common import Dataset, DatasetError, Split, check_background

__all__ = ["load_dataset", "detect_format", "Dataset", "Split", "DatasetError", "FORMATS"]

FORMATS = ("colmap", "blender", "nerfstudio", "n3v")


def detect_format(path) -> str:
    """``"blender"`` (transforms_train.json), ``"nerfstudio"`` (transforms.json), ``"n3v"``
    (poses_bounds.npy and cam*.mp4 videos; before colmap, as N3V folders may hold a COLMAP model
    too) or ``"colmap"`` (sparse/0/ or sparse/ with cameras and images files), checked in that
    order. A path to a ``transforms.json`` / ``transforms_train.json`` file is accepted too."""
    from .colmap import find_model_dir
    from .n3v import is_n3v

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
    if is_n3v(p):
        return "n3v"
    if find_model_dir(p) is not None:
        return "colmap"
    raise DatasetError(
        f"{p}: cannot detect the dataset format; looked for transforms_train.json (blender / NeRF-synthetic), "
        f"transforms.json (nerfstudio), poses_bounds.npy with cam*.mp4 videos (n3v) and a COLMAP model in "
        f"sparse/0/ or sparse/ (cameras.bin|txt and images.bin|txt)"
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
    frame_step: int = 1,
    max_frames: int | None = None,
) -> Dataset:
    """Load a scene for training.

    Args:
        path: the dataset folder (or a nerfstudio transforms.json file).
        downscale: integer image downscale factor; K is scaled with the images (uses ``images_<f>/``
            copies when the dataset has them).
        test_every: every n-th image (sorted by name) goes to the test split when the dataset has no
            split of its own (n3v holds out its first camera, cam00, whatever the value); 0 puts every
            image in train.
        background: RGB in [0, 1] that RGBA images are composited on (and the trainer renders with).
        normalize: COLMAP / nerfstudio / n3v: rotate the mean camera up to +z, centre on the point the cameras
            look at (or the median camera centre for forward-facing captures) and scale the median camera
            distance to 1 (``Dataset.transform``); blender scenes are never normalised.
        max_init_points: keep at most this many initial points (random subset, ``seed``).
        num_random_points: number of random initial points when the scene has none.
        seed: seed of the random initial points and of the subsampling.
        undistort: undistort images of distorted cameras to pinhole ones; False keeps each view's lens
            model (``Split.distortions``; `Split.cameras` hands it to the renderer) and refuses only
            models the renderer cannot represent.
        format: "auto", "colmap", "blender", "nerfstudio" or "n3v".
        frame_step: multi-view video (n3v) only: keep every n-th frame of each video (>= 1).
        max_frames: multi-view video (n3v) only: keep at most this many frames per video (None: all).
            N3V scenes are large; use ``downscale``, ``frame_step`` and ``max_frames`` to fit memory.
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
    if isinstance(frame_step, bool) or not isinstance(frame_step, numbers.Integral) or frame_step < 1:
        raise DatasetError(f"frame_step must be an integer >= 1, got {frame_step!r}")
    if max_frames is not None:
        if isinstance(max_frames, bool) or not isinstance(max_frames, numbers.Integral) or max_frames < 1:
            raise DatasetError(f"max_frames must be None or an integer >= 1, got {max_frames!r}")
        max_frames = int(max_frames)
    downscale, test_every, frame_step = int(downscale), int(test_every), int(frame_step)
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
    if fmt == "n3v":
        from .n3v import load_n3v

        return load_n3v(root, frame_step=frame_step, max_frames=max_frames, **kwargs)
    from .nerfstudio import load_nerfstudio

    return load_nerfstudio(root, **kwargs)
