"""A wide synthetic "city block" capture for block-partitioned training (`splat-train --blocks K`): a large
textured ground with a grid of distinct objects, photographed by cameras spread over it that each see only
a part of the scene, written as a COLMAP text model.

    python -m scenes.blocks_scene [--out DIR] [--width 160]

Why: the embedded scenes are objects seen from all around, where every camera sees everything; a block
partition (BlockGaussian, CityGaussian) pays off where cameras see local parts of a wide scene, as in
aerial and street captures. This one is small enough to train on a CPU in minutes and wide enough that
each camera sees about a ninth of it.

Layout written (``generate``), a COLMAP dataset as ``splat.data.load_dataset`` reads it::

    images/v_000.png ... v_143.png   RGB PNG, WIDTH x HEIGHT (160 x 120), opaque
    sparse/0/cameras.txt             one PINHOLE camera, 60 degrees across
    sparse/0/images.txt              world-to-camera poses (OpenCV axes) and 2D observations
    sparse/0/points3D.txt            an SfM-like cloud: surface points seen by the training views, a few mm
                                     of noise, coloured by their pixels (one observation per track)

The loader's ``test_every=8`` holds out v_000, v_008, ... (18 test, 126 train views).

The scene (Mitsuba 3; z up, metres): a 28 x 28 m ground of coloured tiles with value noise (each region of
the ground looks different, so a misplaced Gaussian shows), and a 3 x 3 grid (3 m apart, centred at the
origin) of distinct textured objects: checkered boxes, striped spheres, banded cylinders, a stack, a vase
(a lathe mesh), a pillar with a ball, an arch. Light: a sun (directional) and a constant sky, path traced
(max depth 3, ``SPP`` samples per pixel, box pixel filter), linear radiance to sRGB.

Cameras (``camera_poses``): a jittered 12 x 12 grid over [-4.5, 4.5]^2 at 2.8-3.8 m height, each looking
1.5-2.3 m ahead along a random azimuth at a point 0-0.5 m above the ground (50-68 degrees down).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

from scenes import capture_scene as cap
from scenes.default_scene import (Renderer, _cache_dir, linear_to_srgb, look_at_c2w, replaced_when_complete,
                                  write_ply_mesh)

WIDTH, HEIGHT = 160, 120
FOV_X = 60.0  # degrees
N_VIEWS = 144
SPP = 64
GROUND_HALF = 14.0
GRID = 3.0  # object spacing
POINTS_PER_VIEW = 250
SEED = 11


def _rgb(c):
    return {"type": "rgb", "value": [float(x) for x in c]}


def _bitmap(mi, img):
    return {"type": "bitmap", "bitmap": mi.Bitmap(np.ascontiguousarray(img, np.float32)), "raw": True,
            "filter_type": "bilinear"}


def _diffuse_tex(mi, img):
    return {"type": "diffuse", "reflectance": _bitmap(mi, img)}


def scene_dict(mi, asset_dir: Path, width: int, height: int, seed: int = SEED) -> dict:
    """The scene as a Mitsuba dict (one sensor; views set by changing its to_world)."""
    T = mi.ScalarTransform4f
    rng = np.random.default_rng(seed)
    d: dict = {"type": "scene", "integrator": {"type": "path", "max_depth": 3}}
    palette = [(0.55, 0.50, 0.42), (0.35, 0.42, 0.30), (0.60, 0.35, 0.25), (0.30, 0.35, 0.50),
               (0.62, 0.58, 0.30), (0.45, 0.45, 0.45)]
    ground = cap.tile_floor_texture(rng, (56, 56), 16, palette)
    noise = cap.value_noise(rng, ground.shape[0], ground.shape[1], (12, 12), octaves=4)
    ground = np.clip(ground * (0.7 + 0.6 * noise[..., None]), 0, 1).astype(np.float32)
    d["ground"] = {"type": "rectangle", "to_world": T().scale([GROUND_HALF, GROUND_HALF, 1.0]),
                   "bsdf": _diffuse_tex(mi, ground)}
    cols = [(0.8, 0.1, 0.1), (0.1, 0.6, 0.15), (0.1, 0.2, 0.8), (0.85, 0.75, 0.1), (0.7, 0.2, 0.7),
            (0.1, 0.7, 0.7), (0.9, 0.5, 0.1), (0.9, 0.9, 0.85), (0.15, 0.12, 0.1)]
    k = 0
    for iy in range(3):
        for ix in range(3):
            cx, cy = (ix - 1) * GRID, (iy - 1) * GRID
            a, b = cols[k], cols[(k + 4) % len(cols)]
            kind = k
            k += 1
            name = f"obj{kind}"
            if kind == 0:  # checkered box
                tex = cap.checker_texture(rng, 64, 64, a, b, (6, 6))
                d[name] = {"type": "cube", "to_world": T().translate([cx, cy, 0.45]).rotate([0, 0, 1], 25)
                           .scale([0.45, 0.45, 0.45]), "bsdf": _diffuse_tex(mi, tex)}
            elif kind == 1:  # striped sphere
                tex = cap.stripe_texture(rng, 64, 128, a, b, 12)
                d[name] = {"type": "sphere", "center": [cx, cy, 0.55], "radius": 0.55, "bsdf": _diffuse_tex(mi, tex)}
            elif kind == 2:  # banded cylinder with a cap
                tex = cap.stripe_texture(rng, 128, 64, a, b, 10).transpose(1, 0, 2).copy()
                d[name] = {"type": "cylinder", "p0": [cx, cy, 0.0], "p1": [cx, cy, 1.1], "radius": 0.4,
                           "bsdf": _diffuse_tex(mi, tex)}
                d[name + "_cap"] = {"type": "disk", "to_world": T().translate([cx, cy, 1.1]).scale(0.4),
                                    "bsdf": {"type": "diffuse", "reflectance": _rgb(b)}}
            elif kind == 3:  # stack of three boxes
                for j, (h, s) in enumerate(((0.3, 0.6), (0.25, 0.42), (0.2, 0.28))):
                    z = sum(2 * hh for hh, _ in ((0.3, 0), (0.25, 0), (0.2, 0))[:j]) + h
                    tex = cap.checker_texture(rng, 32, 32, cols[(k + j) % 9], cols[(k + j + 3) % 9], (3 + j, 3 + j))
                    d[f"{name}_{j}"] = {"type": "cube", "to_world": T().translate([cx, cy, z]).rotate([0, 0, 1], 15 * j)
                                        .scale([s, s, h]), "bsdf": _diffuse_tex(mi, tex)}
            elif kind == 4:  # vase
                v, f, uv = cap.lathe_mesh(*cap.vase_profile(1.0, 0.35))
                write_ply_mesh(asset_dir / "vase.ply", v, f, uv)
                tex = cap.band_texture(rng, 128, 128, [a, b, (0.9, 0.85, 0.7)])
                d[name] = {"type": "ply", "filename": str(asset_dir / "vase.ply"), "to_world": T().translate([cx, cy, 0.0]),
                           "bsdf": _diffuse_tex(mi, tex)}
            elif kind == 5:  # pillar with a ball
                d[name] = {"type": "cylinder", "p0": [cx, cy, 0.0], "p1": [cx, cy, 0.9], "radius": 0.15,
                           "bsdf": _diffuse_tex(mi, cap.stripe_texture(rng, 32, 64, a, b, 8))}
                d[name + "_ball"] = {"type": "sphere", "center": [cx, cy, 1.15], "radius": 0.3,
                                     "bsdf": _diffuse_tex(mi, cap.speckle_texture(rng, 64, 128, b))}
            elif kind == 6:  # arch: two posts and a lintel
                tex = cap.checker_texture(rng, 32, 32, a, b, (2, 6))
                for j, dx in enumerate((-0.55, 0.55)):
                    d[f"{name}_post{j}"] = {"type": "cube", "to_world": T().translate([cx + dx, cy, 0.5])
                                            .scale([0.12, 0.12, 0.5]), "bsdf": _diffuse_tex(mi, tex)}
                d[name + "_lintel"] = {"type": "cube", "to_world": T().translate([cx, cy, 1.1])
                                       .scale([0.75, 0.15, 0.1]), "bsdf": {"type": "diffuse", "reflectance": _rgb(b)}}
            elif kind == 7:  # flat slab with spheres on it
                d[name] = {"type": "cube", "to_world": T().translate([cx, cy, 0.1]).scale([0.7, 0.5, 0.1]),
                           "bsdf": _diffuse_tex(mi, cap.checker_texture(rng, 64, 64, a, b, (8, 8)))}
                for j in range(3):
                    d[f"{name}_s{j}"] = {"type": "sphere", "center": [cx - 0.4 + 0.4 * j, cy, 0.38], "radius": 0.18,
                                         "bsdf": {"type": "diffuse", "reflectance": _rgb(cols[(j * 3 + 1) % 9])}}
            else:  # tall box with a striped texture
                tex = cap.stripe_texture(rng, 64, 64, a, b, 9)
                d[name] = {"type": "cube", "to_world": T().translate([cx, cy, 0.7]).rotate([0, 0, 1], -20)
                           .scale([0.3, 0.5, 0.7]), "bsdf": _diffuse_tex(mi, tex)}
    d["sky"] = {"type": "constant", "radiance": _rgb((0.55, 0.62, 0.75))}
    d["sun"] = {"type": "directional", "direction": [-0.4, -0.3, -0.85], "irradiance": _rgb((2.6, 2.5, 2.3))}
    d["sensor"] = {
        "type": "perspective", "fov": FOV_X, "fov_axis": "x", "near_clip": 0.05, "far_clip": 100.0,
        "sampler": {"type": "independent", "sample_count": 4},
        "film": {"type": "hdrfilm", "width": width, "height": height, "pixel_format": "rgba",
                 "rfilter": {"type": "box"}},
    }
    return d


def camera_poses(n: int = N_VIEWS, seed: int = SEED) -> list[np.ndarray]:
    """OpenGL camera-to-world matrices: a jittered sqrt(n) x sqrt(n) grid over [-4.5, 4.5]^2 at 2.8-3.8 m,
    each looking 1.5-2.3 m ahead (random azimuth) at a point 0-0.5 m above the ground."""
    rng = np.random.default_rng(seed + 1)
    g = int(round(math.sqrt(n)))
    xs = np.linspace(-4.5, 4.5, g)
    poses = []
    for i in range(n):
        x, y = xs[i % g] + rng.uniform(-0.4, 0.4), xs[(i // g) % g] + rng.uniform(-0.4, 0.4)
        h = rng.uniform(2.8, 3.8)
        az = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(1.5, 2.3)
        target = (x + dist * math.cos(az), y + dist * math.sin(az), rng.uniform(0.0, 0.5))
        poses.append(look_at_c2w((x, y, h), target))
    return poses


def intrinsics(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    f = 0.5 * width / math.tan(math.radians(FOV_X) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])


def generate(out_dir, width: int = WIDTH, n_views: int = N_VIEWS, spp: int = SPP, seed: int = SEED,
             threads: int = 1, verbose: bool = True) -> Path:
    """Render the scene into out_dir (images/ and sparse/0/ as COLMAP text). Written to a temporary folder
    beside out_dir and renamed into place when complete."""
    from PIL import Image

    out_dir = Path(out_dir)
    height = int(round(width * HEIGHT / WIDTH))
    poses = camera_poses(n_views, seed)
    K = intrinsics(width, height)
    names = [f"v_{i:03d}.png" for i in range(n_views)]
    rng = np.random.default_rng(seed + 2)
    with replaced_when_complete(out_dir) as work:
        t0 = time.time()
        r = Renderer(width, height, seed, None, threads, scene_fn=scene_dict)
        if verbose:
            print(f"blocks scene: mitsuba {r.variant}, {threads} thread(s), {width}x{height}, {spp} spp, "
                  f"{n_views} views", flush=True)
        (work / "images").mkdir()
        xyz, rgb, tracks = [], [], []
        for i, (c2w, name) in enumerate(zip(poses, names)):
            ts = time.time()
            img = r.render_rgba(c2w, spp, seed=7919 * seed + i)[..., :3]
            rgb8 = (linear_to_srgb(img) * 255 + 0.5).astype(np.uint8)
            Image.fromarray(rgb8).save(work / "images" / name)
            if i % 8 != 0:  # SfM points from the training views only
                pos, hit = r.render_positions(c2w, seed=i)
                ys, xs = np.nonzero(hit)
                pick = rng.choice(len(ys), size=min(POINTS_PER_VIEW, len(ys)), replace=False)
                for y, x in zip(ys[pick], xs[pick]):
                    xyz.append(pos[y, x] + rng.normal(0, 0.004, 3))
                    rgb.append(rgb8[y, x])
                    tracks.append((np.array([i]), np.array([[x + 0.5, y + 0.5]])))
            if verbose:
                print(f"  {name} {time.time() - ts:.1f}s", flush=True)
        xyz, rgb = np.asarray(xyz), np.asarray(rgb, np.uint8)
        cap.write_colmap(work / "sparse" / "0", names, poses, K, width, height, xyz, rgb, tracks,
                         np.full(len(xyz), 0.5))
        if verbose:
            print(f"  {len(xyz)} points; done in {time.time() - t0:.0f}s: {out_dir}", flush=True)
    return out_dir


def _complete(p: Path) -> bool:
    return (p / "sparse" / "0" / "points3D.txt").is_file() and (p / "images").is_dir()


def blocks_scene_path(width: int = WIDTH, generate_missing: bool = True) -> Path:
    """The scene's folder ``scenes/blocks_<width>`` under ``$SPLAT_CACHE_DIR`` (default ``~/.cache/splat``),
    rendered there now (a few minutes, needs Mitsuba) when missing and `generate_missing`; else
    ``FileNotFoundError`` naming the command that renders it."""
    out = _cache_dir(f"blocks_{width}")
    if _complete(out):
        return out
    if not generate_missing:
        raise FileNotFoundError(f"the blocks scene is missing from {out}: python -m scenes.blocks_scene --out {out}")
    return generate(out, width=width, threads=max(1, os.cpu_count() or 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Render the wide block-training scene (COLMAP text model).")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the splat cache)")
    ap.add_argument("--width", type=int, default=WIDTH)
    ap.add_argument("--spp", type=int, default=SPP)
    a = ap.parse_args(argv)
    out = a.out or _cache_dir(f"blocks_{a.width}")
    generate(out, width=a.width, spp=a.spp, threads=max(1, os.cpu_count() or 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
