"""The garden point cloud as a Gaussian scene (for benchmarks and the render demo)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

# ../shared/data beside the checkout, unless SPLAT_SHARED_DATA says otherwise
DATA = Path(os.environ.get("SPLAT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def garden_scene(path: str | os.PathLike | None = None) -> dict:
    """The Mip-NeRF 360 garden point cloud (138,766 points, 3 cameras, 648x420) as Gaussians.

    Scales are the mean distance to the 3 nearest neighbours (isotropic), quaternions
    and opacities are drawn with a fixed seed, colours are the points' RGB.
    """
    from scipy.spatial import cKDTree

    path = Path(path) if path else DATA / "garden_points.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (set SPLAT_SHARED_DATA to the folder holding it)")
    d = np.load(path)
    pts = d["means3d"].astype(np.float32)
    dist, _ = cKDTree(pts).query(pts, k=4)
    s = torch.from_numpy(dist[:, 1:].mean(1).astype(np.float32)).clamp_min(1e-4)
    g = torch.Generator().manual_seed(0)
    N = pts.shape[0]
    means = torch.from_numpy(pts)
    quats = torch.randn(N, 4, generator=g)
    scales = s[:, None].repeat(1, 3)
    opacities = torch.rand(N, generator=g) * 0.5 + 0.5
    colors = torch.from_numpy(d["colors"].astype(np.float32) / 255.0)
    viewmats = torch.from_numpy(d["viewmats"].astype(np.float32))
    Ks = torch.from_numpy(d["Ks"].astype(np.float32))
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats,
                Ks=Ks, width=int(d["width"]), height=int(d["height"]))


