"""Run directories and the models in them, for everything that opens a trained model
(`splat-render`, the viewer, `bench/`).

A run directory (``splat-train --out DIR``) holds ``config.json``, ``metrics.json``,
``ckpts/ckpt_<step>.pt``, ``renders/`` and ``model.<ext>``. `load_model` opens a run,
a checkpoint or any model file as a `splat.models.base.Model`; `run_dataset` loads
the data a run trained on, the way it loaded it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .. import io as splat_io
from ..data import Dataset, load_dataset
from ..models.base import Model
from ..models.static import StaticModel
from .checkpoint import latest_checkpoint, load_checkpoint
from .config import config_from_json
from .registry import MODELS

__all__ = ["default_scene_path", "resolve_model_path", "load_model", "load_splats", "run_data_path", "run_dataset"]


def default_scene_path(kind: str = "static") -> Path:
    """The embedded default scene of a model kind's `default_scene` ("static":
    ``scenes/data/default``; "dynamic": ``scenes/data/dynamic``; "relightable":
    ``scenes/data/relightable``), generated on first use if missing. Raises ``ValueError`` for
    another kind."""
    if kind not in ("static", "dynamic", "relightable"):
        raise ValueError(f"no embedded default scene of kind {kind!r}; choose static, dynamic or relightable")
    if str(Path(__file__).resolve().parents[2]) not in sys.path:  # outside the checkout without scenes/ on the path
        try:
            import scenes  # noqa: F401
        except ImportError:
            sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if kind == "dynamic":
        from scenes.dynamic_scene import dynamic_scene_path

        return dynamic_scene_path()
    if kind == "relightable":
        from scenes.relight_scene import relight_scene_path

        return relight_scene_path()
    from scenes.default_scene import default_scene_path as static_scene_path

    return static_scene_path()


def model_default_scene(model: Optional[str]) -> str:
    """The default-scene kind of the model kind named `model` ("static" when unknown)."""
    return MODELS[model].cls.default_scene if model in MODELS else "static"


def resolve_model_path(path: Path) -> Tuple[Path, Optional[dict]]:
    """(the model file, the run's config.json as a dict or None) for a run directory (its
    last checkpoint, else model.ply; a directory of an unbundled SOG: its meta.json), a checkpoint inside ``ckpts/``, or a model file
    beside a config.json. Raises ``FileNotFoundError`` / ``ValueError`` naming the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file or run directory")
    run = None
    if path.is_dir():
        run = path
        ck = latest_checkpoint(run)
        if ck is not None:
            path = ck
        elif (run / "model.ply").exists():
            path = run / "model.ply"
        elif (run / "meta.json").is_file():  # not a run: an unbundled SOG (meta.json and its images)
            path = run / "meta.json"
        else:
            raise ValueError(f"{run}: no checkpoint in ckpts/ and no model.ply")
    elif path.parent.name == "ckpts" and (path.parent.parent / "config.json").exists():
        run = path.parent.parent
    elif (path.parent / "config.json").exists():
        run = path.parent
    cfg = json.loads((run / "config.json").read_text()) if run is not None and (run / "config.json").exists() else None
    return path, cfg


def load_model(path: Path, device: str = "cpu") -> Tuple[Model, Optional[dict]]:
    """(the model, the run's config dict or None) from a run directory, a training checkpoint
    (the model kind it was trained as, with the run's options) or a model file (.ply,
    .compressed.ply, .splat, .spz, another trainer's checkpoint: a static model).

    Raises ``FileNotFoundError``, ``ValueError`` or `splat.io.FormatError`, naming the file."""
    file, run_cfg = resolve_model_path(path)
    ck = None
    if file.suffix.lower() in splat_io.CHECKPOINT_SUFFIXES:
        try:
            ck = load_checkpoint(file)
        except ValueError:
            ck = None  # not a splat training checkpoint: splat.io reads gsplat-style ones, with its own errors
    if ck is not None:
        try:
            cfg = config_from_json(ck["config"])
            model = MODELS[cfg.model].cls.from_state(cfg.options("model"), ck["splats"], float(ck["scene_scale"]))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{file}: {e}") from None
        run_cfg = run_cfg or ck["config"]
    else:
        model = StaticModel.from_splats(splat_io.load(file))
    return model.to(device), run_cfg


def load_splats(path: Path) -> Tuple[Dict[str, torch.Tensor], Optional[dict]]:
    """(a static splats dict, the run's config dict or None) for any model `load_model`
    opens; raises ``ValueError`` for a model kind with no static form."""
    model, run_cfg = load_model(path)
    splats = model.to_splats()
    if splats is None:
        raise ValueError(f"{path}: a {model.name} model has no static splats form")
    return {k: v.float().contiguous() for k, v in splats.items()}, run_cfg


def run_data_path(run_cfg: Optional[dict], data: Optional[Path] = None) -> Optional[Path]:
    """The dataset a model was trained on: `data` if given, else the run's config
    (a run on the embedded default scene stores data = null); None without either."""
    if data is not None:
        return Path(data)
    if run_cfg is None:
        return None
    if run_cfg.get("data"):
        return Path(run_cfg["data"])
    return default_scene_path(model_default_scene(run_cfg.get("model")))


def run_dataset(data_path: Path, run_cfg: Optional[dict], background) -> Dataset:
    """Load `data_path` the way the run loaded it (downscale, split, normalisation), with
    RGBA images composited on `background`."""
    kw = {}
    if run_cfg:
        kw = dict(downscale=run_cfg.get("downscale", 1), test_every=run_cfg.get("test_every", 8),
                  normalize=run_cfg.get("normalize", True), format=run_cfg.get("data_format", "auto"),
                  frame_step=run_cfg.get("frame_step", 1), max_frames=run_cfg.get("max_frames"),
                  undistort=run_cfg.get("undistort", True))  # runs from before the option undistorted
    return load_dataset(data_path, background=background, **kw)
