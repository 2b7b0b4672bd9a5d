"""Training checkpoints: ``<run>/ckpts/ckpt_<step>.pt``, written atomically, the last
few kept.

A checkpoint is a plain ``torch.save`` dict that ``torch.load(weights_only=True)``
reads (no pickled code):

    version         2 (1: before the model kinds were named; still read)
    step            steps done
    model           the model kind ("static")
    splats          the model's parameters by name (for a static model, gsplat's
                    splats dict, so `splat.io.load` and gsplat users read it)
    scene_scale     the model's scene scale (learning rates and thresholds depend on it)
    optimizer       the optimizer's state (Adam: one state dict per parameter)
    strategy_state  the density strategy's accumulated statistics
    train_seconds, history, config (TrainConfig as JSON), transform (data normalisation)
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import List, Optional

import torch

from ..io.common import atomic_write, torch_load_file

__all__ = ["CKPT_VERSION", "save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_checkpoint"]

CKPT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_REQUIRED = ("step", "model", "splats", "scene_scale", "optimizer", "strategy_state", "train_seconds", "history",
             "config")


def list_checkpoints(out: Path) -> List[Path]:
    """The run's checkpoints, oldest first."""
    ck = [p for p in (Path(out) / "ckpts").glob("ckpt_*.pt") if re.fullmatch(r"ckpt_\d+\.pt", p.name)]
    return sorted(ck, key=lambda p: int(p.stem.split("_")[1]))


def latest_checkpoint(out: Path) -> Optional[Path]:
    ck = list_checkpoints(out)
    return ck[-1] if ck else None


def save_checkpoint(out: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write `state` (the keys above, without ``version`` and ``step``) as checkpoint `step`
    of run `out`, atomically, and delete all but the `keep` newest."""
    ckdir = Path(out) / "ckpts"
    ckdir.mkdir(parents=True, exist_ok=True)
    path = ckdir / f"ckpt_{step}.pt"
    buf = io.BytesIO()
    torch.save({"version": CKPT_VERSION, "step": step, **state}, buf)
    atomic_write(path, buf.getvalue())
    for p in list_checkpoints(out)[:-max(1, keep)]:
        p.unlink()
    return path


def load_checkpoint(path: Path) -> dict:
    """A checkpoint dict in today's layout (a version-1 file is converted: its ``optimizers``
    become ``optimizer`` and its model is ``static``). Raises ``ValueError`` naming the file
    when it is not a readable splat training checkpoint."""
    ck = torch_load_file(path, "checkpoint")  # a FormatError (a ValueError) naming the file
    if not isinstance(ck, dict) or ck.get("version") not in READABLE_VERSIONS or "splats" not in ck:
        raise ValueError(f"{path}: not a splat training checkpoint (versions {', '.join(map(str, READABLE_VERSIONS))})")
    if ck["version"] == 1:
        ck["optimizer"] = ck.pop("optimizers", None)
        ck["model"] = "static"
    missing = [k for k in _REQUIRED if ck.get(k) is None]
    if missing:
        raise ValueError(f"{path}: a splat training checkpoint without {', '.join(missing)} (truncated or hand-made)")
    return ck
