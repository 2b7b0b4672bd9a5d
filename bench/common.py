"""Scenes shared by the benchmarks."""
from __future__ import annotations

import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scenes.garden import garden_scene  # noqa: E402,F401


def timed(fn, repeats=3):
    """Median wall time of `repeats` calls of fn, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_scene(N: int, width=640, height=480, C=1, seed=0):
    """N random Gaussians in a cube seen by C cameras; sizes shrink with N^(1/3) so the
    cube stays similarly covered."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(N, 3, generator=g) * 2 - 1
    quats = torch.randn(N, 4, generator=g)
    spacing = 2.0 / N ** (1 / 3)
    scales = spacing * (0.2 + 0.6 * torch.rand(N, 3, generator=g))
    opacities = torch.rand(N, generator=g) * 0.6 + 0.2
    colors = torch.rand(N, 3, generator=g)
    f = 0.5 * width / math.tan(math.radians(30))
    views, Ks = [], []
    for i in range(C):
        ang = 2 * math.pi * i / C
        eye = torch.tensor([3.2 * math.sin(ang), 0.3, -3.2 * math.cos(ang)])
        z = -eye / eye.norm()
        x = torch.linalg.cross(torch.tensor([0.0, -1.0, 0.0]), z)
        x = x / x.norm()
        y = torch.linalg.cross(z, x)
        R = torch.stack([x, y, z])
        V = torch.eye(4)
        V[:3, :3] = R
        V[:3, 3] = -R @ eye
        views.append(V)
        Ks.append(torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]))
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                viewmats=torch.stack(views), Ks=torch.stack(Ks), width=width, height=height)
