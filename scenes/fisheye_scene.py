"""A COLMAP fisheye capture (OPENCV_FISHEYE, Kannala-Brandt) of the default scene's kind of object, for
training through the lens model without undistortion.

    python -m scenes.fisheye_scene OUT_DIR [--seed 3] [--width 200]

Layout (what COLMAP writes for a fisheye rig, text model)::

    images/f_000.png ...              fisheye photos (RGB on white), width x width
    sparse/0/cameras.txt              one OPENCV_FISHEYE camera: fx fy cx cy k1 k2 k3 k4
    sparse/0/images.txt               world-to-camera poses (OpenCV axes) and 2D observations
    sparse/0/points3D.txt             an SfM-like sparse cloud (surface points, a few mm of noise) with tracks

How the photos are made: Mitsuba renders a wide pinhole view (114 degrees across, 1.5x the pixels) from
each pose; every fisheye pixel's ray (the Kannala-Brandt model inverted, `splat.camera_models.pixel_rays`,
whose formula the tests check against the model's definition) is looked up in that view (bilinear). The
lens sees 65 degrees off the axis in the corners, where a pinhole with the same focal length would need
1.8x the image size. Test views are every 5th photo (the loader's --test-every 5).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

from scenes.capture_scene import write_colmap
from scenes.default_scene import (LOOK_AT, Renderer, _cache_dir, replaced_when_complete, scene_dict,
                                  surface_samples, noisy_points, to_rgba8, train_test_poses)

FISHEYE_K = (0.05, -0.01, 0.002, 0.0)  # k1..k4
CORNER_THETA = math.radians(65.0)  # angle off the axis at the image corners
PINHOLE_FOV = 2 * math.atan(math.tan(CORNER_THETA) / math.sqrt(2))  # the wide pinhole's horizontal FOV
DOLLY = 0.62  # cameras moved this much closer to the object than the default scene's (the lens is wider)


def fisheye_K(width: int) -> np.ndarray:
    """Intrinsics of a width x width fisheye whose corners see CORNER_THETA off the axis."""
    t = CORNER_THETA
    td = t * (1 + sum(k * t ** (2 * i + 2) for i, k in enumerate(FISHEYE_K)))
    f = (width / 2 * math.sqrt(2)) / td
    return np.array([[f, 0, width / 2], [0, f, width / 2], [0, 0, 1.0]])


def _wide(mi, asset_dir, width, height, seed):
    d = scene_dict(mi, asset_dir, width, height, seed)
    d["sensor"]["fov"] = math.degrees(PINHOLE_FOV)
    return d


def _resample(rgb: np.ndarray, K_fish: np.ndarray, width: int) -> np.ndarray:
    """The fisheye image [width, width, 3] of a wide pinhole image rgb [Hp, Wp, 3] (same pose)."""
    import torch

    from splat import camera_models as cm

    Hp, Wp = rgb.shape[:2]
    fp = 0.5 * Wp / math.tan(PINHOLE_FOV / 2)
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(width) + 0.5)
    pix = torch.from_numpy(np.stack([jj, ii], -1).reshape(1, -1, 2))
    _, d, ok = cm.pixel_rays(pix, torch.from_numpy(K_fish)[None], "fisheye",
                             torch.tensor([FISHEYE_K], dtype=torch.float64))
    d = d[0].numpy()
    u = fp * d[:, 0] / d[:, 2] + Wp / 2
    v = fp * d[:, 1] / d[:, 2] + Hp / 2
    grid = torch.from_numpy(np.stack([u / Wp * 2 - 1, v / Hp * 2 - 1], -1).reshape(1, width, width, 2)).float()
    img = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    out = torch.nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def generate(out_dir, width: int = 200, n_views: int = 20, spp: int = 48, seed: int = 3, n_points: int = 4000,
             threads: int = 1, verbose: bool = True) -> Path:
    """Render the fisheye capture into out_dir (written beside it and renamed when complete)."""
    from PIL import Image

    from splat import camera_models as cm
    import torch

    out_dir = Path(out_dir)
    with replaced_when_complete(out_dir) as work:
        t0 = time.time()
        Wp = int(round(1.5 * width))
        r = Renderer(Wp, Wp, seed, None, threads, scene_fn=_wide)
        train, test = train_test_poses(n_views, 0, seed)
        poses = []
        for c2w in train:
            c2w = np.array(c2w, dtype=np.float64)
            c2w[:3, 3] = np.asarray(LOOK_AT) + DOLLY * (c2w[:3, 3] - np.asarray(LOOK_AT))
            poses.append(c2w)
        K = fisheye_K(width)
        (work / "images").mkdir()
        names, rng = [], np.random.default_rng(seed + 11)
        xyz_all, rgb_all = [], []
        for i, c2w in enumerate(poses):
            ts = time.time()
            rgba8 = to_rgba8(r.render_rgba(c2w, spp, seed=i + 7919 * seed))
            a = rgba8[..., 3:4].astype(np.float32) / 255.0
            rgb = rgba8[..., :3].astype(np.float32) * a + 255.0 * (1 - a)  # on white
            fish = _resample(rgb, K, width)
            name = f"f_{i:03d}.png"
            Image.fromarray(np.clip(np.round(fish), 0, 255).astype(np.uint8)).save(work / "images" / name)
            names.append(name)
            if i % 4 == 0:  # SfM-like points from the wide view's first hits
                xyz, col = surface_samples(r, c2w, rgba8, n_points // max(1, n_views // 4), rng, seed=5000 + i)
                xyz_all.append(xyz)
                rgb_all.append(col)
            if verbose:
                print(f"  view {i + 1}/{len(poses)}  {time.time() - ts:.1f}s", flush=True)
        xyz, col = noisy_points(np.concatenate(xyz_all)[:n_points], np.concatenate(rgb_all)[:n_points], rng)
        # tracks: the views that see each point inside the image (projected through the fisheye)
        from scenes.capture_scene import w2c_opencv

        w2c = np.stack([w2c_opencv(c) for c in poses])
        p = np.einsum("cij,nj->cni", w2c[:, :3, :3], xyz.astype(np.float64)) + w2c[:, None, :3, 3]
        uv, valid = cm.project_points(torch.from_numpy(p), torch.from_numpy(K)[None].expand(len(poses), 3, 3),
                                      "fisheye", torch.tensor([FISHEYE_K] * len(poses), dtype=torch.float64))
        uv, valid = uv.numpy(), valid.numpy() & (uv[..., 0] >= 0).numpy() & (uv[..., 0] < width).numpy() \
            & (uv[..., 1] >= 0).numpy() & (uv[..., 1] < width).numpy()
        tracks, keep = [], []
        for n in range(len(xyz)):
            cams = np.flatnonzero(valid[:, n])[:8]
            if len(cams) >= 2:
                tracks.append((cams, uv[cams, n]))
                keep.append(n)
        write_colmap(work / "sparse" / "0", names, poses, K, width, width, xyz[keep], col[keep], tracks,
                     np.full(len(keep), 0.6), camera_model="OPENCV_FISHEYE", extra_params=FISHEYE_K)
        if verbose:
            print(f"done in {time.time() - t0:.0f}s: {out_dir} ({len(keep)} points)", flush=True)
    return out_dir


def fisheye_capture_path(seed: int = 3, width: int = 200) -> Path:
    """The fisheye capture in the splat cache (rendered on first use, ~2 min)."""
    out = _cache_dir(f"fisheye_s{seed}_{width}")
    if not (out / "sparse" / "0" / "points3D.txt").is_file():
        generate(out, width=width, seed=seed, threads=os.cpu_count() or 1, verbose=False)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--width", type=int, default=200)
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--spp", type=int, default=48)
    a = ap.parse_args(argv)
    generate(a.out, a.width, a.views, a.spp, a.seed, threads=os.cpu_count() or 1)


if __name__ == "__main__":
    main()
