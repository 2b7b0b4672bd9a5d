"""What the training loop reads: a dataset split as cameras and images on the
training device, and the order views are visited in."""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from ..cameras import Cameras
from ..data import Dataset, Split, load_dataset
from .config import TrainConfig
from .registry import MODELS
from .run import default_scene_path

__all__ = ["Views", "load_data", "view_for_step", "step_generator"]


def load_data(cfg: TrainConfig) -> Dataset:
    """The dataset `cfg` names (without --data, the embedded default scene of the model's kind:
    the dynamic scene for dynamic models), loaded with its options."""
    path = cfg.data if cfg.data is not None else default_scene_path(MODELS[cfg.model].cls.default_scene)
    return load_dataset(path, downscale=cfg.downscale, test_every=cfg.test_every, background=cfg.background,
                        normalize=cfg.normalize, max_init_points=cfg.max_init_points,
                        num_random_points=cfg.num_random_points, seed=cfg.seed, format=cfg.data_format,
                        frame_step=cfg.frame_step, max_frames=cfg.max_frames, undistort=cfg.undistort)


class Views:
    """A split's views: ``camera(i)`` a one-camera `Cameras` batch on the device (made
    once), ``image(i)`` the float image [H,W,3] in [0,1] (kept as uint8 on the CPU until
    asked for), ``mask(i)`` its mask or None."""

    def __init__(self, split: Split, device):
        self.names = list(split.names)
        self.images = [torch.from_numpy(np.ascontiguousarray(im)) for im in split.images]
        self.cameras: List[Cameras] = [split.cameras(i, device=device) for i in range(len(split))]
        self.masks: List[Optional[torch.Tensor]] = [
            None if m is None else torch.from_numpy(np.ascontiguousarray(m))[..., None].to(device)
            for m in (split.masks or [None] * len(split))]
        self.device = device

    def __len__(self) -> int:
        return len(self.names)

    def camera(self, i: int) -> Cameras:
        return self.cameras[i]

    def image(self, i: int) -> torch.Tensor:
        return self.images[i].to(self.device, torch.float32) / 255.0

    def mask(self, i: int) -> Optional[torch.Tensor]:
        """bool [H,W,1] (True = pixel used by the loss and the metrics), or None."""
        return self.masks[i]

    def batch(self, ids: List[int]):
        """Views `ids` (of one image size) as one batch: (Cameras, images [B,H,W,3], masks: B
        entries of `mask`)."""
        cams = Cameras.cat([self.cameras[i] for i in ids]) if len(ids) > 1 else self.cameras[ids[0]]
        return cams, torch.stack([self.image(i) for i in ids]), [self.masks[i] for i in ids]


def view_for_step(step: int, n_views: int, seed: int) -> int:
    """Each epoch visits every training view once in a fresh random order (a function of the
    seed and the step, not of a running RNG, so resume is exact)."""
    epoch, k = divmod(step, n_views)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return int(torch.randperm(n_views, generator=g)[k])


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random generator of one step's density control (split noise, relocation)."""
    return torch.Generator().manual_seed(seed * 7919 + step + 1)
