"""A small synthetic multi-view dataset: random SH Gaussians rendered by the reference.

`make_views` returns cameras and images; `write_blender` stores them in the
NeRF-synthetic layout so that tests go through the real loader.
"""
import json
import math
from pathlib import Path

import numpy as np
import torch

from scene_utils import gaussians, look_at

import splat


def make_views(n_views=12, width=48, height=40, n_gauss=300, seed=0, radius=3.0):
    means, quats, scales, opac, sh = gaussians(n_gauss, seed=seed, sh_degree=1, extent=0.8, scale=(0.03, 0.15))
    opac = opac * 0.5 + 0.45
    viewmats, Ks = [], []
    f = 0.5 * width / math.tan(math.radians(50) / 2)
    for i in range(n_views):
        a = 2 * math.pi * i / n_views
        el = 0.5 * math.sin(3 * a)
        eye = (radius * math.cos(a) * math.cos(el), -radius * math.sin(el), radius * math.sin(a) * math.cos(el))
        viewmats.append(look_at(eye).float())
        Ks.append(torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]))
    viewmats, Ks = torch.stack(viewmats), torch.stack(Ks)
    with torch.no_grad():
        img, alpha, _ = splat.rasterize(means, quats, scales, opac, sh, viewmats, Ks, width, height, sh_degree=1,
                                        backgrounds=torch.ones(n_views, 3), backend="torch")
    rgba = torch.cat([img, alpha], -1).clamp(0, 1)
    rgb = (sh[:, 0] * 0.28209479177387814 + 0.5).clamp(0, 1)
    return {"viewmats": viewmats, "Ks": Ks, "rgba": (rgba * 255 + 0.5).to(torch.uint8).numpy(),
            "points": means.numpy(), "rgb": (rgb * 255 + 0.5).to(torch.uint8).numpy(), "width": width, "height": height}


def write_blender(root: Path, views: dict, test_ids=(0, 6), with_points=True) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    W = views["width"]
    fx = float(views["Ks"][0, 0, 0])
    angle_x = 2 * math.atan(0.5 * W / fx)
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    for split in ("train", "test"):
        (root / split).mkdir(exist_ok=True)
        frames = []
        ids = [i for i in range(len(views["viewmats"])) if (i in test_ids) == (split == "test")]
        for j, i in enumerate(ids):
            c2w = np.linalg.inv(views["viewmats"][i].double().numpy()) @ flip  # OpenCV -> OpenGL camera axes
            Image.fromarray(views["rgba"][i], "RGBA").save(root / split / f"r_{j}.png")
            frames.append({"file_path": f"./{split}/r_{j}", "transform_matrix": c2w.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames}))
    if with_points:
        rng = np.random.default_rng(0)
        pts = views["points"] + rng.normal(0, 0.02, views["points"].shape)
        lines = ["ply", "format ascii 1.0", f"element vertex {len(pts)}", "property float x", "property float y",
                 "property float z", "property uchar red", "property uchar green", "property uchar blue", "end_header"]
        lines += [f"{p[0]:.6f} {p[1]:.6f} {p[2]:.6f} {c[0]} {c[1]} {c[2]}" for p, c in zip(pts, views["rgb"])]
        (root / "points3d.ply").write_text("\n".join(lines) + "\n")
    return root


def small_train_config(data, out, **kw):
    """A quick training configuration for the tests: 120 steps, SH degree 1, density control
    every 20 steps from step 20 to 150 (capped at 3000 Gaussians), a checkpoint every 30."""
    from splat.models.static import StaticConfig
    from splat.strategies import ADCStrategy
    from splat.train import TrainConfig

    strat = ADCStrategy(refine_start_iter=20, refine_stop_iter=150, refine_every=20, reset_every=100,
                        max_gaussians=3000)
    base = dict(data=data, out=out, iterations=120, scale_schedule=False, adc=strat,
                static=StaticConfig(sh_degree=1, sh_degree_interval=40), progress=False, save_every=30,
                export=["ply"], save_renders=1)
    base.update(kw)
    return TrainConfig(**base)
