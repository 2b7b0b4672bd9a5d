"""Rendering a split's views and scoring them: the trainer's evaluation and
`splat-render`'s test views are the same code."""
from __future__ import annotations

import time
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..metrics import psnr as psnr_fn
from ..metrics import ssim as ssim_fn
from ..models.base import Model
from ..render import RenderSettings
from .data import Views

__all__ = ["render_views", "evaluate"]


@torch.no_grad()
def render_views(model: Model, views: Views, settings: RenderSettings, *, backgrounds: Optional[Tensor] = None,
                 render_mode: str = "RGB") -> Iterator[Tuple[int, Tensor, Tensor, float]]:
    """Yield (index, colors [H,W,D], alphas [H,W,1], seconds) for every view, rendered one at a
    time by the finished model (``step=None``). `backgrounds` is [1,3] or None."""
    for i in range(len(views)):
        t0 = time.perf_counter()
        colors, alphas, _, _ = model.render(views.camera(i), settings, backgrounds=backgrounds,
                                            render_mode=render_mode)
        yield i, colors[0], alphas[0], time.perf_counter() - t0


def evaluate(model: Model, views: Views, settings: RenderSettings, background: Tensor,
             save: Optional[Callable[[int, Tensor, Tensor], None]] = None) -> dict:
    """PSNR and SSIM (`splat.metrics`, averaged over views; over each view's kept pixels
    where the data has masks) of the views rendered on `background` [3] against their
    images, the median render time, and per-view figures.
    `save(i, pred, gt)` gets each clamped render and its image. An empty split gives {}."""
    if len(views) == 0:
        return {}
    ps, ss, secs = [], [], []
    for i, colors, _, seconds in render_views(model, views, settings, backgrounds=background[None]):
        secs.append(seconds)
        pred = colors.clamp(0, 1)
        gt, mask = views.image(i), views.mask(i)
        ps.append(psnr_fn(pred, gt, mask=mask).item())
        ss.append(ssim_fn(pred, gt, mask=mask).item())
        if save is not None:
            save(i, pred, gt)
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "render_ms": 1000 * float(np.median(secs)),
            "per_view": [{"name": n, "psnr": a, "ssim": b} for n, a, b in zip(views.names, ps, ss)]}
