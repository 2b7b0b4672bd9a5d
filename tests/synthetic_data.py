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
    return render_views((means, quats, scales, opac, sh), torch.stack(viewmats), torch.stack(Ks), width, height)


def render_views(gaussians, viewmats, Ks, width, height, backend="torch"):
    """Views of Gaussians (means, quats, scales, opacities, SH of degree 1) as `write_blender` takes
    them: RGBA uint8 renders on white, cameras, and the means as points with their base colour."""
    means, quats, scales, opac, sh = gaussians
    with torch.no_grad():
        img, alpha, _ = splat.rasterize(means, quats, scales, opac, sh, viewmats, Ks, width, height, sh_degree=1,
                                        backgrounds=torch.ones(len(viewmats), 3), backend=backend)
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


def write_colmap_distorted(root: Path, camera: str = "OPENCV_FISHEYE", n_views=10, width=64, height=56,
                           seed=0) -> Path:
    """A COLMAP text model (one `camera`: OPENCV_FISHEYE k1..k4 or OPENCV k1 k2 p1 p2) with photos of
    random Gaussians rendered through that lens by the ray tracer (exact rays, no undistortion) on
    white, and the Gaussians' centres as the sparse points (tracks of two views each). Returns (root,
    the Gaussians (means, quats, scales, opacities, SH of degree 1))."""
    from PIL import Image

    means, quats, scales, opac, sh = gaussians(300, seed=seed, sh_degree=1, extent=0.8, scale=(0.03, 0.15))
    opac = opac * 0.5 + 0.45
    if camera == "OPENCV_FISHEYE":
        extra, model = [0.04, -0.01, 0.0, 0.0], "fisheye"
        radial = torch.tensor([extra] * n_views)
        tang = None
        f = 0.5 * width / 1.3  # 150 degrees across the width
    elif camera == "OPENCV":
        extra, model = [-0.3, 0.08, 0.002, -0.003], "pinhole"
        radial = torch.tensor([[extra[0], extra[1], 0, 0, 0, 0]] * n_views)
        tang = torch.tensor([extra[2:]] * n_views)
        f = 0.5 * width / math.tan(math.radians(80) / 2)
    else:
        raise ValueError(camera)
    viewmats = []
    for i in range(n_views):
        a = 2 * math.pi * i / n_views
        el = 0.5 * math.sin(3 * a)
        eye = (2.2 * math.cos(a) * math.cos(el), -2.2 * math.sin(el), 2.2 * math.sin(a) * math.cos(el))
        viewmats.append(look_at(eye).float())
    viewmats = torch.stack(viewmats)
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    Ks = K.expand(n_views, 3, 3).contiguous()
    with torch.no_grad():
        img, _, _ = splat.rasterize(means, quats, scales, opac, sh, viewmats, Ks, width, height, sh_degree=1,
                                    backgrounds=torch.ones(n_views, 3), backend="raytrace", camera_model=model,
                                    radial_coeffs=radial, tangential_coeffs=tang)
    (root / "images").mkdir(parents=True, exist_ok=True)
    sp = root / "sparse" / "0"
    sp.mkdir(parents=True, exist_ok=True)
    (sp / "cameras.txt").write_text(f"1 {camera} {width} {height} {f} {f} {width / 2} {height / 2} "
                                    + " ".join(str(v) for v in extra) + "\n")
    lines = []
    from scipy.spatial.transform import Rotation

    for i in range(n_views):
        name = f"v{i:02d}.png"
        Image.fromarray((img[i].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()).save(root / "images" / name)
        V = viewmats[i].double().numpy()
        x, y, z, w = Rotation.from_matrix(V[:3, :3]).as_quat()
        lines.append(f"{i + 1} {w} {x} {y} {z} {V[0, 3]} {V[1, 3]} {V[2, 3]} 1 {name}")
        lines.append(" ".join(f"1.0 1.0 {p + 1}" for p in range(len(means)) if p % n_views in (i, (i + 1) % n_views)))
    (sp / "images.txt").write_text("\n".join(lines) + "\n")
    rgb = ((sh[:, 0] * 0.28209479177387814 + 0.5).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    obs_index = {}
    for i in range(n_views):
        for k, p in enumerate(q for q in range(len(means)) if q % n_views in (i, (i + 1) % n_views)):
            obs_index.setdefault(p, []).append((i + 1, k))
    pts = []
    for p in range(len(means)):
        m = means[p].tolist()
        track = " ".join(f"{a} {b}" for a, b in obs_index.get(p, []))
        pts.append(f"{p + 1} {m[0]} {m[1]} {m[2]} {rgb[p, 0]} {rgb[p, 1]} {rgb[p, 2]} 0.5 {track}")
    (sp / "points3D.txt").write_text("\n".join(pts) + "\n")
    return root, (means, quats, scales, opac, sh)


def interrupt_at(monkeypatch, step: int, run) -> None:
    """Call `run()` with ``Trainer.train_step`` raising KeyboardInterrupt (a Ctrl-C) at `step` (the
    trainer writes a checkpoint there and re-raises); the real step is restored afterwards."""
    import pytest

    from splat.train import Trainer

    orig = Trainer.train_step

    def interrupting(self, s):
        if s == step:
            raise KeyboardInterrupt
        return orig(self, s)

    monkeypatch.setattr(Trainer, "train_step", interrupting)
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        monkeypatch.setattr(Trainer, "train_step", orig)
