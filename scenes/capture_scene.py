"""A synthetic stand-in for a real handheld COLMAP capture of an object on a table.

What it imitates, and why: a held-out check of the density-control strategies runs on "a real COLMAP
capture: 23 photos of an object on a table, about 1000x658, 1,443 SfM points that cover the object but
hardly the background", trained at ``--downscale 4`` with every 8th image held out. None of the embedded
scenes is like that (they are NeRF-synthetic objects on transparent backgrounds, started from thousands of
evenly spread or random points), so a strategy tuned on them can fail there: the background (table, walls,
floor) has texture and parallax but almost no initial points, so all of it must come from densification.
This module renders a scene of that kind and writes it as COLMAP would, so such failures show before the
real check. Two variants with different objects, materials, textures, rooms, camera paths and seeds
(``default`` and ``heldout``), so that nobody tunes to one scene.

Layout written (``generate``), a COLMAP dataset as ``splat.data.load_dataset`` reads it::

    images/IMG_0001.jpg ... IMG_0023.jpg   RGB JPEG (quality 92), 1000x658, opaque everywhere
    sparse/0/cameras.txt                   one PINHOLE camera (fx fy cx cy), shared by all photos
    sparse/0/images.txt                    IMAGE_ID qw qx qy qz tx ty tz (world-to-camera, OpenCV axes)
                                           CAMERA_ID NAME; then the 2D observations "x y POINT3D_ID"
    sparse/0/points3D.txt                  POINT3D_ID x y z r g b ERROR, track (IMAGE_ID POINT2D_IDX ...)

The model is complete and consistent (pycolmap reads it as it is: 23 registered images, 1443 points, mean
track ~14-15). No ``test.txt``: the loader's ``test_every=8`` holds out IMG_0001, IMG_0009 and IMG_0017
(20 train, 3 test views; 250x165 at ``downscale=4``).

How it is built (Mitsuba 3; z up, metres; the table top is the plane z = 0, the object stands at the origin):

* the object, a few primitives with procedural numpy textures (stripes, checkers, zig-zags, speckle noise),
  about 0.4 m across: ``default``: a turned vase 0.30 m high (a lathe mesh, glossy, painted bands with a
  checker belt, a dark mouth), a checkered box, a striped torus lying on the table and a glossy speckled
  ball; ``heldout``: a teapot-like group (a glossy banded ellipsoid body, a striped lid, a knob, a tilted
  cylinder spout, a torus handle), a checkered mug with a handle and a stack of two textured boxes;
* a wooden table (noise-warped grain stripes and plank seams; other wood per variant), 1.5 x 0.9 m
  (``heldout``: 1.4 x 1.0 m), on four legs;
* a room 2-3 m around it: a floor 0.76 m below the table top (grey tiles / wooden boards), four walls 2.6 m
  high (wallpaper and plaster / brick and wallpaper), two framed "pictures" (noise images) per wall, a
  cabinet, a shelf of books and a potted plant, so that the background has content and parallax; no
  ceiling;
* light: a rectangular ceiling panel 1.8 m above the table, a weaker "window" panel on one wall, and a
  constant environment as ambient (it enters through the open top), so nothing is black;
* path tracer (max depth 3), ``SPP`` = 25 samples per pixel (orthogonal-array sampler: ~38 dB 8-bit PSNR
  against 256 spp), Gaussian pixel filter; linear radiance x a fixed exposure, a mild vignetting (x 0.85 in
  the corners), sRGB, JPEG.

Cameras: 23 photos along a handheld-like partial arc around the object (``default``: 250 degrees, 0.65-1.15 m
from the object, 18-48 degrees above the table; ``heldout``: 215 degrees the other way round, 0.60-1.10 m,
14-40 degrees), with uneven steps, wobbling height and distance, a look-at point jittered by ~3 cm and
~1.5 degrees of roll; a pinhole with a phone-like 60 (``heldout``: 58) degree horizontal field of view.

SfM points (``n_points``, default ``N_POINTS`` = 1443): candidates are the first hits of rays through pixels
of every photo that see the object, drawn with weight ~ image gradient (features sit on texture and edges);
kept only where visible (depth test against every photo's first-hit map) in at least ``MIN_TRACK`` = 3
photos; 97 % on the object, 3 % on the table within 0.4 m of it, none on the walls or floor. Each point is
moved by Gaussian noise of 0.2 % of the object's size (~0.8 mm, like triangulation error), coloured by the
mean of its JPEG pixels over its track, and listed with its track and 2D observations (the true point's
projections plus 0.5 px of noise; ERROR is their mean distance to the noisy point's projections, ~1.3 px).

``_selfcheck(path)`` re-reads the written text model and checks it against the scene: for every photo the
first hits of one ray per pixel (Mitsuba) project, with the written K and world-to-camera, into the pixel
they were cast through (max error 0.50 px: the ray's jitter within the pixel); landmarks (the table's
corners, the vase's mouth / the mug's top) project onto a pixel whose ray hits them (< 1 px) or something
in front of them, never something behind; every SfM point is in the frame of >= 3 photos and its colour
matches its pixels (median error ~2/255).

Limits: synthetic (clean geometry, exact poses apart from the point noise, Monte-Carlo noise instead of
sensor noise, simple materials); no lens distortion (PINHOLE); no exposure, white-balance or focus changes
between photos, no motion blur; the point cloud imitates the spread of a real one, not its outliers.

    python -m scenes.capture_scene [--variant default|heldout] [--out DIR] [--selfcheck]

renders (~3.5 minutes a variant with ``llvm_ad_rgb`` on one thread of a shared 2-core machine; the SfM
points take a few seconds) and prints the folder; without ``--out`` it is ``scenes/capture_<variant>`` under
``$SPLAT_CACHE_DIR`` (default ``~/.cache/splat``), the folder ``capture_scene_path`` returns.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

try:
    from . import default_scene as base
    from . import relight_scene as relight
except ImportError:  # run as a script or loaded by file path: the checkout's scenes package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scenes import default_scene as base
    from scenes import relight_scene as relight

# --------------------------------------------------------------------------------------------------
# constants

WIDTH = 1000
HEIGHT = 658
N_VIEWS = 23
N_POINTS = 1443
SPP = 25  # orthogonal-array sampler (prime-squared counts): ~38 dB (8-bit PSNR) against 256 spp
MAX_DEPTH = 3
JPEG_QUALITY = 92
MIN_TRACK = 3  # an SfM point is seen by at least this many photos
TABLE_POINT_FRACTION = 0.03  # of the SfM points on the table near the object (the rest on the object)
POINT_NOISE = 0.002  # position noise of the SfM points, as a fraction of the object's size
FEATURE_NOISE = 0.5  # pixels: noise of the 2D observations (features) in images.txt
VARIANTS = ("default", "heldout")
SEEDS = {"default": 0, "heldout": 100}
TABLE_HEIGHT = 0.76  # the floor is at z = -TABLE_HEIGHT
WALL_HEIGHT = 2.6  # above the floor

# per-variant settings: horizontal fov (degrees); camera arc (start azimuth, signed span, degrees), distance
# (m) and elevation (degrees) ranges; look-at point; object size (m, scales the point noise); exposure; table
# size (m); room walls (x0, x1, y0, y1); ceiling panel and window (centre, size, radiance); ambient radiance
SETTINGS = {
    "default": {
        "fov_x": 60.0, "arc": (-150.0, 250.0), "distance": (0.65, 1.15), "elevation": (18.0, 48.0),
        "target": (0.0, 0.0, 0.13), "object_size": 0.42, "exposure": 1.0,
        "table": (1.5, 0.9), "room": (-2.3, 2.9, -2.2, 2.6),  # x0 x1 y0 y1 of the walls
        "light": ((0.3, -0.2, 1.8), (0.9, 0.6), 14.0), "window": ((2.85, 0.4, 1.0), (1.0, 0.7), 4.0),
        "ambient": 0.35,
    },
    "heldout": {
        "fov_x": 58.0, "arc": (40.0, -215.0), "distance": (0.60, 1.10), "elevation": (14.0, 40.0),
        "target": (0.0, 0.0, 0.12), "object_size": 0.40, "exposure": 1.0,
        "table": (1.4, 1.0), "room": (-2.8, 2.2, -2.6, 2.0),
        "light": ((-0.2, 0.3, 1.8), (0.8, 0.8), 13.0), "window": ((-0.5, -2.55, 1.0), (1.2, 0.8), 4.0),
        "ambient": 0.30,
    },
}


# --------------------------------------------------------------------------------------------------
# procedural textures (numpy only; linear RGB reflectance float32 [H, W, 3])


def value_noise(rng, h: int, w: int, cells: tuple[int, int], octaves: int = 4) -> np.ndarray:
    """Smooth multi-octave noise in [0, 1] of shape [h, w] (bilinear upsampling of random grids)."""
    from PIL import Image

    out = np.zeros((h, w), np.float64)
    amp, total = 1.0, 0.0
    cy, cx = cells
    for _ in range(octaves):
        g = rng.random((max(2, cy), max(2, cx))).astype(np.float32)
        out += amp * np.asarray(Image.fromarray(g).resize((w, h), Image.BICUBIC), np.float64)
        total += amp
        amp *= 0.5
        cy, cx = cy * 2, cx * 2
    out /= total
    lo, hi = np.percentile(out, [1, 99])
    return np.clip((out - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _mix(a, b, t):
    t = np.asarray(t, np.float64)[..., None]
    return (1 - t) * np.asarray(a, np.float64) + t * np.asarray(b, np.float64)


def wood_texture(rng, h: int, w: int, light, dark, rings: float = 40.0) -> np.ndarray:
    """Wood planks along the width: noise-warped stripes (grain), plank seams, fine per-texel grain."""
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w], np.float64)[:, None, None]
    warp = value_noise(rng, h, w, (4, 3))
    planks = 5
    plank = np.floor(y * planks)
    offset = rng.random(planks + 1)[plank.astype(int)]
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (rings * (y + 0.025 * warp + 0.004 * np.sin(9 * x + offset * 6))
                                             + offset * 3))
    grain = grain ** 3
    fine = value_noise(rng, h, w, (h // 4, 6), octaves=2)
    t = np.clip(0.65 * grain + 0.35 * fine, 0, 1)
    img = _mix(light, dark, t) * (0.85 + 0.3 * offset[..., None])
    seam = (np.abs(y * planks - np.round(y * planks)) * h / planks) < 1.5
    img[seam] *= 0.35
    return np.clip(img, 0, 1).astype(np.float32)


def wallpaper_texture(rng, h: int, w: int, base_col, ink, period: int = 48) -> np.ndarray:
    """Wallpaper: vertical stripes and a repeating diamond motif over a faint plaster noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    stripes = (np.floor(x / (period / 2)) % 2) * 0.08
    u, v = (x % period) / period - 0.5, (y % period) / period - 0.5
    diamond = (np.abs(u) + np.abs(v) < 0.22) & (np.abs(u) + np.abs(v) > 0.15)
    dots = (u ** 2 + v ** 2) < 0.004
    noise = value_noise(rng, h, w, (8, 12))
    img = np.asarray(base_col, np.float64) * (0.9 + 0.2 * noise[..., None] - stripes[..., None])
    img[diamond | dots] = np.asarray(ink) * (0.9 + 0.2 * noise[diamond | dots][:, None])
    return np.clip(img, 0, 1).astype(np.float32)


def plaster_texture(rng, h: int, w: int, col) -> np.ndarray:
    n = value_noise(rng, h, w, (6, 10), octaves=6)
    blot = value_noise(rng, h, w, (3, 4), octaves=2)
    trowel = value_noise(rng, h, w, (h // 8, w // 8), octaves=2)
    img = (np.asarray(col, np.float64) * (0.7 + 0.35 * n[..., None]) * (0.9 + 0.15 * blot[..., None])
           * (0.8 + 0.3 * trowel[..., None]))
    return np.clip(img, 0, 1).astype(np.float32)


def tile_floor_texture(rng, tiles: tuple[int, int], px: int, palette) -> np.ndarray:
    ty, tx = tiles
    pal = np.asarray(palette, np.float64)
    cols = pal[rng.integers(0, len(pal), (ty, tx))] * rng.uniform(0.8, 1.15, (ty, tx, 1))
    img = np.repeat(np.repeat(cols, px, 0), px, 1)
    h, w = img.shape[:2]
    img *= (0.8 + 0.4 * value_noise(rng, h, w, (ty * 3, tx * 3), octaves=3))[..., None]
    g = np.zeros(h, bool)
    g[::px] = g[1::px] = True
    gw = np.zeros(w, bool)
    gw[::px] = gw[1::px] = True
    img[g] = 0.12
    img[:, gw] = 0.12
    return np.clip(img, 0, 1).astype(np.float32)


def picture_texture(rng, h: int, w: int) -> np.ndarray:
    """A framed "painting": coloured noise blobs with a few hard-edged shapes, a dark frame."""
    a, b, c = (value_noise(rng, h, w, (3, 4), octaves=5) for _ in range(3))
    img = np.stack([a, b, c], -1) * rng.uniform(0.4, 0.9, 3)
    for _ in range(6):
        y0, x0 = rng.integers(0, h - h // 4), rng.integers(0, w - w // 4)
        img[y0:y0 + rng.integers(h // 10, h // 4), x0:x0 + rng.integers(w // 10, w // 4)] = rng.uniform(0.05, 0.8, 3)
    f = max(2, h // 14)
    img[:f], img[-f:], img[:, :f], img[:, -f:] = 0.06, 0.06, 0.06, 0.06
    return np.clip(img, 0, 1).astype(np.float32)


def band_texture(rng, h: int, w: int, colours, bands: int = 9) -> np.ndarray:
    """Painted horizontal bands (v) with a checker belt, zig-zags and speckle: the vase / mug paint."""
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w], np.float64)[:, None, None]
    pal = np.asarray(colours, np.float64)
    k = np.floor(y * bands).astype(int)
    img = pal[k % len(pal)].copy()
    belt = (k == bands // 2)
    checker = ((np.floor(x * 48) + np.floor(y * bands * 4)) % 2) == 0
    img[belt & checker] = 0.9
    img[belt & ~checker] = 0.05
    zig = np.abs(((x * 32) % 1.0) - 0.5) * 2.0
    zz = (k == bands // 2 - 2) & (np.abs((y * bands) % 1.0 - 0.2 - 0.6 * zig) < 0.12)
    img[zz] = pal[(bands // 2 + 1) % len(pal)] * 0.3
    speck = value_noise(rng, h, w, (h // 6, w // 6), octaves=1)
    img *= (0.8 + 0.35 * speck)[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def stripe_texture(rng, h: int, w: int, a, b, n: int = 24) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w], np.float64)[:, None, None]
    s = (np.floor(x * n + 0.5 * np.sin(2 * np.pi * y * 3)) % 2)
    img = _mix(a, b, s) * (0.85 + 0.3 * value_noise(rng, h, w, (16, 64), octaves=2))[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def checker_texture(rng, h: int, w: int, a, b, n: tuple[int, int] = (8, 8)) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w], np.float64)[:, None, None]
    s = (np.floor(x * n[1]) + np.floor(y * n[0])) % 2
    img = _mix(a, b, s) * (0.85 + 0.3 * value_noise(rng, h, w, (32, 32), octaves=2))[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def speckle_texture(rng, h: int, w: int, col) -> np.ndarray:
    n = value_noise(rng, h, w, (24, 48), octaves=3)
    dots = rng.random((h, w)) < 0.02
    img = np.asarray(col, np.float64) * (0.6 + 0.6 * n[..., None])
    img[dots] = 0.9
    return np.clip(img, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# meshes (numpy only)


def lathe_mesh(profile_r, profile_z, nu: int = 96):
    """Surface of revolution about z of the profile (r_i, z_i), i bottom to top; triangles wound outwards;
    uv = (around, along the profile by arc length)."""
    r, z = np.asarray(profile_r, np.float64), np.asarray(profile_z, np.float64)
    seg = np.hypot(np.diff(r), np.diff(z))
    s = np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()
    a = 2 * np.pi * np.arange(nu + 1) / nu
    A, I = np.meshgrid(a, np.arange(len(r)), indexing="ij")
    verts = np.stack([r[I] * np.cos(A), r[I] * np.sin(A), z[I]], -1).reshape(-1, 3)
    uv = np.stack([A / (2 * np.pi), s[I]], -1).reshape(-1, 2)
    idx = np.arange((nu + 1) * len(r)).reshape(nu + 1, len(r))
    p, q, rr, t = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([p, q, rr], -1).reshape(-1, 3), np.stack([p, rr, t], -1).reshape(-1, 3)])
    return verts, faces, uv


def vase_profile(height: float, radius: float, n: int = 64):
    t = np.linspace(0.0, 1.0, n)
    r = radius * (0.62 + 0.45 * np.sin(np.pi * np.clip(t * 1.25, 0, 1)) ** 1.5 - 0.25 * t
                  + 0.18 * np.clip((t - 0.82) / 0.18, 0, 1) ** 2)
    r[0] = 1e-4  # closed bottom
    z = height * t
    return np.concatenate([[1e-4], r[1:]]), z


# --------------------------------------------------------------------------------------------------
# the Mitsuba scene


def _bitmap(mi, img):
    return {"type": "bitmap", "bitmap": mi.Bitmap(np.ascontiguousarray(img, np.float32)), "raw": True,
            "filter_type": "bilinear"}


def _tex_diffuse(mi, img):
    return {"type": "diffuse", "reflectance": _bitmap(mi, img)}


def _glossy(mi, img, alpha=0.18):
    return {"type": "roughplastic", "distribution": "ggx", "alpha": alpha,
            "diffuse_reflectance": _bitmap(mi, img) if isinstance(img, np.ndarray) else base._rgb(img)}


def _rect(mi, centre, normal, size, bsdf):
    """An axis-aligned rectangle (size = full width along its first in-plane axis, full height along z or y),
    its front facing `normal` (one of +-x, +-y, +-z)."""
    T = mi.ScalarTransform4f
    n = np.asarray(normal, np.float64)
    # frame: local x -> u axis, local y -> v axis, local z -> normal
    if abs(n[2]) > 0.5:
        u, v = np.array([1.0, 0, 0]), np.array([0, np.sign(n[2]), 0.0])
    else:
        v = np.array([0, 0, 1.0])
        u = np.cross(v, n)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = u * size[0] / 2, v * size[1] / 2, n, centre
    return {"type": "rectangle", "to_world": T(m.tolist()), "bsdf": bsdf}


def _box(mi, centre, half, bsdf, rot_z=0.0):
    T = mi.ScalarTransform4f
    return {"type": "cube", "to_world": T().translate(list(centre)).rotate([0, 0, 1], rot_z).scale(list(half)),
            "bsdf": bsdf}


def _ply(mi, asset_dir: Path, name: str, mesh, bsdf, to_world=None):
    v, f, uv = mesh
    base.write_ply_mesh(asset_dir / f"{name}.ply", v, f, uv)
    d = {"type": "ply", "filename": str(asset_dir / f"{name}.ply"), "bsdf": bsdf}
    if to_world is not None:
        d["to_world"] = to_world
    return d


def _room(mi, d: dict, rng, s: dict, variant: str) -> None:
    """Table (top at z = 0), floor, walls, pictures, furniture, lights."""
    fz = -TABLE_HEIGHT
    x0, x1, y0, y1 = s["room"]
    tw, td = s["table"]
    if variant == "default":
        wood = wood_texture(rng, 1024, 2048, (0.62, 0.42, 0.24), (0.30, 0.16, 0.07), rings=34)
        walls = [wallpaper_texture(rng, 1024, 2048, (0.72, 0.68, 0.58), (0.25, 0.32, 0.45)),
                 plaster_texture(rng, 512, 1024, (0.70, 0.62, 0.52))]
        floor = tile_floor_texture(rng, (14, 16), 64, [(0.55, 0.52, 0.48), (0.30, 0.28, 0.26), (0.62, 0.58, 0.50)])
        leg_col = (0.18, 0.10, 0.05)
    else:
        wood = wood_texture(rng, 1024, 2048, (0.78, 0.64, 0.45), (0.45, 0.30, 0.16), rings=52)
        walls = [np.tile(relight._brick_texture(SEEDS[variant] + 9), (4, 5, 1)),
                 wallpaper_texture(rng, 1024, 2048, (0.58, 0.66, 0.62), (0.62, 0.40, 0.22), period=64)]
        floor = wood_texture(rng, 2048, 2048, (0.45, 0.30, 0.18), (0.22, 0.12, 0.06), rings=90)
        leg_col = (0.40, 0.38, 0.36)
    # table: a slab (top face at z = 0) and four legs
    d["table_top"] = _rect(mi, (0, 0, 0), (0, 0, 1), (tw, td), _tex_diffuse(mi, wood))
    d["table_edge"] = _box(mi, (0, 0, -0.0205), (tw / 2, td / 2, 0.02),
                           base._diffuse(np.asarray(wood.mean((0, 1))) * 0.7))
    for i, (sx, sy) in enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1))):
        px, py = sx * (tw / 2 - 0.06), sy * (td / 2 - 0.06)
        d[f"leg{i}"] = {"type": "cylinder", "p0": [px, py, fz], "p1": [px, py, -0.04], "radius": 0.03,
                        "bsdf": base._diffuse(leg_col)}
    # floor and walls (rectangles facing inwards)
    cx, cy, w, dpt = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    d["floor"] = _rect(mi, (cx, cy, fz), (0, 0, 1), (w, dpt), _tex_diffuse(mi, floor))
    zc = fz + WALL_HEIGHT / 2
    wall_specs = [((x0, cy, zc), (1, 0, 0), dpt), ((x1, cy, zc), (-1, 0, 0), dpt),
                  ((cx, y0, zc), (0, 1, 0), w), ((cx, y1, zc), (0, -1, 0), w)]
    for i, (c, n, length) in enumerate(wall_specs):
        d[f"wall{i}"] = _rect(mi, c, n, (length, WALL_HEIGHT), _tex_diffuse(mi, walls[i % 2]))
        d[f"skirting{i}"] = _rect(mi, np.asarray(c) + 0.01 * np.asarray(n) + [0, 0, -WALL_HEIGHT / 2 + 0.05],
                                  n, (length, 0.1), base._diffuse((0.75, 0.74, 0.70)))
        # two pictures per wall at random places
        for k in range(2):
            pw, ph = rng.uniform(0.5, 1.0), rng.uniform(0.4, 0.8)
            off = rng.uniform(-length / 2 + 0.6, length / 2 - 0.6)
            along = np.cross((0, 0, 1.0), n)
            pc = np.asarray(c) + 0.02 * np.asarray(n) + off * along + [0, 0, rng.uniform(-0.35, 0.1)]
            d[f"picture{i}_{k}"] = _rect(mi, pc, n, (pw, ph), _tex_diffuse(
                mi, picture_texture(rng, 256, int(256 * pw / ph))))
    # furniture: a cabinet and a shelf of "books" against two walls
    cab_tex = checker_texture(rng, 256, 256, (0.55, 0.50, 0.45), (0.35, 0.30, 0.26), (6, 4))
    d["cabinet"] = _box(mi, (x0 + 0.35, y1 - 1.2, fz + 0.45), (0.3, 0.6, 0.45), _tex_diffuse(mi, cab_tex))
    shelf_y = y0 + 0.2
    bx = rng.uniform(x0 + 0.6, x1 - 0.6)
    for k in range(9):
        if k:
            bx += rng.uniform(0.05, 0.09)
        hh = rng.uniform(0.10, 0.16)
        d[f"book{k}"] = _box(mi, (bx, shelf_y, fz + 1.3 + hh), (0.025, 0.1, hh),
                             base._diffuse(rng.uniform(0.1, 0.7, 3)))
    d["shelf"] = _box(mi, (bx - 0.25, shelf_y, fz + 1.29), (0.45, 0.12, 0.01), base._diffuse((0.4, 0.3, 0.2)))
    d["plant_pot"] = {"type": "cylinder", "p0": [x1 - 0.5, y0 + 0.6, fz], "p1": [x1 - 0.5, y0 + 0.6, fz + 0.4],
                      "radius": 0.16, "bsdf": _tex_diffuse(mi, stripe_texture(rng, 128, 256, (0.6, 0.3, 0.2),
                                                                                 (0.3, 0.15, 0.1), 16))}
    d["plant"] = {"type": "sphere", "center": [x1 - 0.5, y0 + 0.6, fz + 0.7], "radius": 0.33,
                  "bsdf": _tex_diffuse(mi, speckle_texture(rng, 256, 512, (0.12, 0.30, 0.08)))}
    # lights: a ceiling panel facing down, a "window" panel on a wall, constant ambient through the open top
    (lc, lsize, lpow), (wc, wsize, wpow) = s["light"], s["window"]
    d["panel"] = _rect(mi, lc, (0, 0, -1), lsize, base._diffuse((0, 0, 0)))
    d["panel"]["emitter"] = {"type": "area", "radiance": base._rgb((lpow, lpow * 0.96, lpow * 0.9))}
    wn = np.zeros(3)
    axis = int(np.argmax(np.abs([wc[0] - cx, wc[1] - cy])))
    wn[axis] = -np.sign(wc[axis] - (cx, cy)[axis])
    d["window"] = _rect(mi, np.asarray(wc) + 0.03 * wn, wn, wsize, base._diffuse((0, 0, 0)))
    d["window"]["emitter"] = {"type": "area", "radiance": base._rgb((wpow * 0.9, wpow * 0.95, wpow))}
    a = s["ambient"]
    d["ambient"] = {"type": "constant", "radiance": base._rgb((a, a, a * 1.05))}


def _object_default(mi, d: dict, rng, asset_dir: Path) -> None:
    T = mi.ScalarTransform4f
    r, z = vase_profile(0.30, 0.085)
    d["vase"] = _ply(mi, asset_dir, "vase", lathe_mesh(r, z), _glossy(mi, band_texture(
        rng, 512, 1024, [(0.70, 0.55, 0.30), (0.15, 0.25, 0.55), (0.80, 0.78, 0.70), (0.55, 0.12, 0.10)]), 0.25),
        T().translate([-0.04, 0.03, 0.0]))
    d["vase_mouth"] = {"type": "disk", "to_world": T().translate([-0.04, 0.03, 0.2995]).scale(float(r[-1]) * 0.98),
                       "bsdf": base._diffuse((0.03, 0.03, 0.03))}
    d["box"] = _box(mi, (0.15, -0.10, 0.05), (0.07, 0.055, 0.05), _tex_diffuse(
        mi, checker_texture(rng, 512, 512, (0.85, 0.80, 0.70), (0.10, 0.30, 0.20), (10, 10))), rot_z=-28.0)
    tor = relight.torus_mesh(0.065, 0.022)
    d["torus"] = _ply(mi, asset_dir, "torus", tor, _tex_diffuse(mi, stripe_texture(
        rng, 256, 1024, (0.85, 0.70, 0.15), (0.25, 0.10, 0.35), 36)), T().translate([0.10, 0.15, 0.022]))
    d["ball"] = {"type": "sphere", "center": [-0.17, -0.12, 0.055], "radius": 0.055,
                 "bsdf": _glossy(mi, speckle_texture(rng, 256, 512, (0.55, 0.10, 0.08)), 0.12)}


def _object_heldout(mi, d: dict, rng, asset_dir: Path) -> None:
    T = mi.ScalarTransform4f
    body_tex = band_texture(rng, 512, 1024, [(0.20, 0.45, 0.40), (0.85, 0.82, 0.75), (0.45, 0.20, 0.35)], 11)
    cx, cy, bz = 0.02, 0.0, 0.10
    d["pot_body"] = {"type": "sphere", "to_world": T().translate([cx, cy, bz]).scale([0.12, 0.12, 0.10]),
                     "bsdf": _glossy(mi, body_tex, 0.2)}
    d["pot_lid"] = {"type": "sphere", "to_world": T().translate([cx, cy, bz + 0.085]).scale([0.06, 0.06, 0.03]),
                    "bsdf": _tex_diffuse(mi, checker_texture(rng, 256, 512, (0.8, 0.8, 0.75), (0.1, 0.1, 0.12),
                                                             (6, 16)))}
    d["pot_knob"] = {"type": "sphere", "center": [cx, cy, bz + 0.125], "radius": 0.016,
                     "bsdf": base._diffuse((0.55, 0.12, 0.08))}
    d["pot_spout"] = {"type": "cylinder", "p0": [cx + 0.09, cy, bz - 0.02], "p1": [cx + 0.20, cy, bz + 0.07],
                      "radius": 0.018, "bsdf": _tex_diffuse(mi, stripe_texture(
                          rng, 128, 256, (0.20, 0.45, 0.40), (0.85, 0.82, 0.75), 12))}
    d["pot_handle"] = _ply(mi, asset_dir, "handle", relight.torus_mesh(0.055, 0.013),
                           _tex_diffuse(mi, speckle_texture(rng, 128, 512, (0.20, 0.45, 0.40))),
                           T().translate([cx - 0.12, cy, bz + 0.01]).rotate([1, 0, 0], 90.0))
    # a mug with a handle
    mx, my = -0.10, 0.16
    mug = checker_texture(rng, 256, 1024, (0.92, 0.88, 0.80), (0.08, 0.12, 0.40), (6, 28))
    d["mug"] = {"type": "cylinder", "p0": [mx, my, 0.0], "p1": [mx, my, 0.10], "radius": 0.042,
                "bsdf": _tex_diffuse(mi, mug)}
    d["mug_top"] = {"type": "disk", "to_world": T().translate([mx, my, 0.10]).scale(0.042),
                    "bsdf": base._diffuse((0.25, 0.12, 0.05))}
    d["mug_handle"] = _ply(mi, asset_dir, "mug_handle", relight.torus_mesh(0.028, 0.008),
                           base._diffuse((0.08, 0.12, 0.40)),
                           T().translate([mx - 0.045, my, 0.05]).rotate([1, 0, 0], 90.0))
    # a stack of two boxes
    d["box_low"] = _box(mi, (0.05, -0.19, 0.035), (0.09, 0.06, 0.035), _tex_diffuse(
        mi, stripe_texture(rng, 256, 512, (0.75, 0.25, 0.15), (0.95, 0.85, 0.55), 20)), rot_z=15.0)
    d["box_high"] = _box(mi, (0.06, -0.19, 0.095), (0.05, 0.04, 0.025), _tex_diffuse(
        mi, base.mosaic_texture(SEEDS["heldout"] + 4, tiles=8, tile_px=16)), rot_z=-20.0)


def scene_dict(mi, asset_dir: Path, variant: str, width: int = WIDTH, height: int = HEIGHT) -> dict:
    s = SETTINGS[variant]
    rng = np.random.default_rng(SEEDS[variant] + 5)
    d: dict = {"type": "scene", "integrator": {"type": "path", "max_depth": MAX_DEPTH}}
    _room(mi, d, rng, s, variant)
    (_object_default if variant == "default" else _object_heldout)(mi, d, rng, asset_dir)
    d["sensor"] = {
        "type": "perspective", "fov": s["fov_x"], "fov_axis": "x", "near_clip": 0.02, "far_clip": 50.0,
        "sampler": {"type": "orthogonal", "sample_count": 25},
        "film": {"type": "hdrfilm", "width": width, "height": height, "pixel_format": "rgb",
                 "rfilter": {"type": "gaussian"}},
    }
    return d


# --------------------------------------------------------------------------------------------------
# cameras (numpy only; OpenGL camera-to-world like default_scene, converted for Mitsuba and COLMAP)


def camera_poses(variant: str, n: int = N_VIEWS) -> list[np.ndarray]:
    """n handheld-like camera-to-world matrices (OpenGL: x right, y up, z back) along a partial arc."""
    s = SETTINGS[variant]
    rng = np.random.default_rng(SEEDS[variant] + 11)
    a0, span = s["arc"]
    steps = rng.uniform(0.6, 1.4, n - 1)
    az = a0 + span * np.concatenate([[0.0], np.cumsum(steps) / steps.sum()])
    t = np.linspace(0, 1, n)
    ph = rng.uniform(0, 2 * np.pi, 2)
    e0, e1 = s["elevation"]
    el = e0 + (e1 - e0) * (0.5 + 0.4 * np.sin(2 * np.pi * 1.3 * t + ph[0])) + rng.normal(0, 2.0, n)
    d0, d1 = s["distance"]
    dist = d0 + (d1 - d0) * (0.5 + 0.4 * np.sin(2 * np.pi * 0.9 * t + ph[1])) + rng.normal(0, 0.03, n)
    el, dist = np.clip(el, e0, e1), np.clip(dist, d0, d1)
    target = np.asarray(s["target"])
    poses = []
    for a, e, r in zip(np.radians(az), np.radians(el), dist):
        eye = target + r * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        look = target + rng.normal(0, 0.03, 3) * [1, 1, 0.6]
        c2w = base.look_at_c2w(eye, target=look)
        roll = math.radians(rng.normal(0, 1.5))
        cr, sr = math.cos(roll), math.sin(roll)
        c2w[:3, :3] = c2w[:3, :3] @ np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        poses.append(c2w)
    return poses


def intrinsics(variant: str, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Pinhole K of Mitsuba's perspective sensor (fov along x, square pixels, principal point at the
    centre; pixel (i, j) covers [i, i+1) x [j, j+1), as in COLMAP)."""
    f = 0.5 * width / math.tan(0.5 * math.radians(SETTINGS[variant]["fov_x"]))
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def w2c_opencv(c2w_gl: np.ndarray) -> np.ndarray:
    """COLMAP's world-to-camera (OpenCV axes: x right, y down, z forward) of an OpenGL camera-to-world."""
    return np.linalg.inv(np.asarray(c2w_gl, np.float64) @ np.diag([1.0, -1.0, -1.0, 1.0]))


def project(points: np.ndarray, w2c: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixel coordinates [N, 2], depths [N]) of world points."""
    p = np.asarray(points, np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    uv = p @ K.T
    return uv[:, :2] / uv[:, 2:3], p[:, 2]


# --------------------------------------------------------------------------------------------------
# rendering


class CaptureRenderer(base.Renderer):
    """default_scene's Renderer over a capture scene (RGB film); renders OpenGL camera-to-world poses."""

    def __init__(self, variant: str = "default", width: int = WIDTH, height: int = HEIGHT,
                 mitsuba_variant: str | None = None, threads: int = 1):
        if variant not in SETTINGS:
            raise ValueError(f"unknown capture scene variant {variant!r} (one of {', '.join(VARIANTS)})")
        self.scene_variant = variant

        def scene_fn(mi, asset_dir, w, h, _seed):
            logger = mi.logger() if hasattr(mi, "logger") else mi.Thread.thread().logger()
            level = logger.log_level()
            logger.set_log_level(mi.LogLevel.Error)  # the ascii-ply performance warning
            try:
                return scene_dict(mi, asset_dir, variant, w, h)
            finally:
                self._restore = (logger, level)

        try:
            super().__init__(width, height, SEEDS[variant], mitsuba_variant, threads, scene_fn=scene_fn)
        finally:
            if hasattr(self, "_restore"):
                self._restore[0].set_log_level(self._restore[1])

    def render_positions(self, c2w_gl, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """World positions of the first hit of one ray per pixel [H, W, 3] (the ray through a uniformly
        jittered point of the pixel: a box-filter film, so nothing is blended across silhouettes) and the
        hit mask [H, W]."""
        mi = self.mi
        if not hasattr(self, "_box_sensor"):
            self._box_sensor = mi.load_dict({
                "type": "perspective", "fov": SETTINGS[self.scene_variant]["fov_x"], "fov_axis": "x",
                "near_clip": 0.02, "far_clip": 50.0, "sampler": {"type": "independent", "sample_count": 1},
                "film": {"type": "hdrfilm", "width": self.width, "height": self.height, "pixel_format": "rgb",
                         "rfilter": {"type": "box"}}})
            self._box_params = mi.traverse(self._box_sensor)
            self._aov = mi.load_dict({"type": "aov", "aovs": "dd:depth,pos:position"})
        self._box_params["to_world"] = mi.ScalarTransform4f(base._mitsuba_to_world(c2w_gl))
        self._box_params.update()
        mi.render(self.scene, sensor=self._box_sensor, integrator=self._aov, spp=1, seed=seed)
        bmp = self._box_sensor.film().bitmap()
        names = [bmp.struct_()[i].name for i in range(bmp.channel_count())]
        arr = np.asarray(bmp, dtype=np.float32)
        depth = arr[..., next(i for i, n in enumerate(names) if n.startswith("dd"))]
        pos = np.stack([arr[..., names.index(f"pos.{c}")] for c in "XYZ"], -1)
        return pos, depth > 0

    def render_linear(self, c2w_gl, spp: int = SPP, seed: int = 0) -> np.ndarray:
        """Linear RGB float32 [H, W, 3]."""
        self._set_pose(c2w_gl)
        img = self.mi.render(self.scene, sensor=self.sensor, spp=spp, seed=seed)
        return np.asarray(img, dtype=np.float32)[..., :3]


def develop(linear: np.ndarray, exposure: float = 1.0, vignetting: float = 0.15) -> np.ndarray:
    """Linear radiance -> 8-bit sRGB: exposure, mild radial vignetting (x (1 - vignetting) in the corners),
    sRGB curve."""
    h, w = linear.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((x + 0.5 - w / 2) ** 2 + (y + 0.5 - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    img = linear * exposure * (1.0 - vignetting * r2)[..., None]
    return np.round(base.linear_to_srgb(img) * 255.0).astype(np.uint8)


def save_jpeg(path: Path, rgb8: np.ndarray, quality: int = JPEG_QUALITY) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp.jpg")
    Image.fromarray(rgb8, "RGB").save(tmp, quality=quality)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# SfM-like points


def _hit_maps(r: CaptureRenderer, poses, seed: int = 0):
    """Per photo: first-hit world positions [H, W, 3] (one ray per pixel) and the hit mask."""
    return [r.render_positions(c2w, seed=seed + i) for i, c2w in enumerate(poses)]


def _object_mask(pos: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Hits on the object: above the table top, within 0.35 m of the table centre's vertical axis."""
    return hit & (pos[..., 2] > 1.5e-3) & (np.hypot(pos[..., 0], pos[..., 1]) < 0.35)


def _table_mask(pos: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Hits on the table top within 0.4 m of its centre."""
    return hit & (np.abs(pos[..., 2]) < 1e-3) & (np.hypot(pos[..., 0], pos[..., 1]) < 0.4)


def _visible(xyz: np.ndarray, hits, w2cs, K, width: int, height: int, rel_tol: float = 0.004):
    """[N, C] bool: point n seen by camera c (in the frame, its depth matches the first hit's there) and the
    pixel coordinates [N, C, 2] of its projections."""
    N, C = len(xyz), len(w2cs)
    vis = np.zeros((N, C), bool)
    uvs = np.zeros((N, C, 2))
    for c, ((pos, hit), w2c) in enumerate(zip(hits, w2cs)):
        uv, z = project(xyz, w2c, K)
        uvs[:, c] = uv
        inside = (z > 0.05) & (uv[:, 0] >= 1) & (uv[:, 0] < width - 1) & (uv[:, 1] >= 1) & (uv[:, 1] < height - 1)
        i = np.clip(np.floor(uv[:, 0]).astype(int), 0, width - 1)
        j = np.clip(np.floor(uv[:, 1]).astype(int), 0, height - 1)
        ok = inside.copy()
        # the depth of the hit at that pixel and its 4 neighbours: the best match (the one-ray hit maps are
        # jittered within each pixel, and a point lies between pixel centres)
        best = np.full(N, np.inf)
        for di, dj in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
            ii, jj = np.clip(i + di, 0, width - 1), np.clip(j + dj, 0, height - 1)
            p = pos[jj, ii]
            zc = p @ w2c[2, :3] + w2c[2, 3]
            err = np.where(hit[jj, ii], np.abs(zc - z), np.inf)
            best = np.minimum(best, err)
        ok &= best < rel_tol * np.maximum(z, 1e-3) + 1e-3
        vis[:, c] = ok
    return vis, uvs


def sfm_points(r: CaptureRenderer, poses, images: list[np.ndarray], variant: str, n_points: int = N_POINTS,
               seed: int = 0):
    """An SfM-like sparse cloud: (xyz [N, 3] float64, rgb [N, 3] uint8, tracks: list of (camera indices,
    uv [k, 2]), reprojection errors [N])."""
    rng = np.random.default_rng(seed + 77)
    K = intrinsics(variant, r.width, r.height)
    w2cs = [w2c_opencv(c) for c in poses]
    hits = _hit_maps(r, poses, seed=9000 + seed)
    n_table = round(TABLE_POINT_FRACTION * n_points)
    n_obj = n_points - n_table
    # candidates: from each photo, object (table) pixels drawn with weight ~ image gradient (+ a floor)
    cand = {"object": [], "table": []}
    for (pos, hit), img in zip(hits, images):
        g = img.astype(np.float32).mean(-1)
        grad = np.zeros_like(g)
        grad[1:-1, 1:-1] = np.hypot(g[1:-1, 2:] - g[1:-1, :-2], g[2:, 1:-1] - g[:-2, 1:-1])
        for kind, mask, per in (("object", _object_mask(pos, hit), 4 * n_obj // len(poses) + 1),
                                ("table", _table_mask(pos, hit), 6 * n_table // len(poses) + 2)):
            idx = np.flatnonzero(mask.ravel())
            if not len(idx):
                continue
            w = grad.ravel()[idx] + 4.0
            pick = rng.choice(idx, size=min(per, len(idx)), replace=False, p=w / w.sum())
            cand[kind].append(pos.reshape(-1, 3)[pick])
    out_xyz = []
    for kind, want in (("object", n_obj), ("table", n_table)):
        xyz = np.concatenate(cand[kind]) if cand[kind] else np.zeros((0, 3))
        vis, _ = _visible(xyz, hits, w2cs, K, r.width, r.height)
        keep = xyz[vis.sum(1) >= MIN_TRACK]
        if len(keep) < want:
            raise RuntimeError(f"only {len(keep)} {kind} points seen by {MIN_TRACK} photos (want {want})")
        out_xyz.append(keep[rng.choice(len(keep), want, replace=False)])
    true_xyz = np.concatenate(out_xyz)
    vis, uvs = _visible(true_xyz, hits, w2cs, K, r.width, r.height)
    sigma = POINT_NOISE * SETTINGS[variant]["object_size"]
    xyz = true_xyz + rng.normal(0.0, sigma, true_xyz.shape)
    rgb = np.zeros((len(xyz), 3), np.uint8)
    tracks, errors = [], np.zeros(len(xyz))
    for n in range(len(xyz)):
        cams = np.flatnonzero(vis[n])
        cols = []
        obs = []
        for c in cams:
            u, v = uvs[n, c]
            cols.append(images[c][int(v), int(u)].astype(np.float64))
            obs.append(uvs[n, c] + rng.normal(0, FEATURE_NOISE, 2))  # a feature on the true surface point
        obs = np.array(obs)
        rgb[n] = np.clip(np.round(np.mean(cols, 0)), 0, 255).astype(np.uint8)
        reproj = np.array([project(xyz[n:n + 1], w2cs[c], K)[0][0] for c in cams])
        errors[n] = float(np.mean(np.linalg.norm(obs - reproj, axis=1)))  # COLMAP's ERROR: against the point
        tracks.append((cams, obs))
    return xyz, rgb, tracks, errors


# --------------------------------------------------------------------------------------------------
# COLMAP text model


def _quat_wxyz(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    q = np.array([w, x, y, z])
    return q if q[0] >= 0 else -q


def write_colmap(model: Path, names: list[str], poses, K: np.ndarray, width: int, height: int,
                 xyz, rgb, tracks, errors, camera_model: str = "PINHOLE", extra_params=()) -> None:
    """cameras.txt (one camera: PINHOLE, or `camera_model` with fx fy cx cy and `extra_params`, e.g.
    OPENCV_FISHEYE's k1..k4), images.txt (world-to-camera, OpenCV axes, 2D observations) and
    points3D.txt (with tracks) in COLMAP's text format."""
    model.mkdir(parents=True, exist_ok=True)
    params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2], *extra_params]
    (model / "cameras.txt").write_text(
        "# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
        f"# Number of cameras: 1\n1 {camera_model} {width} {height} " + " ".join(f"{v:.17g}" for v in params)
        + "\n")
    obs_per_image: list[list[tuple[float, float, int]]] = [[] for _ in names]
    point_tracks = []
    for pid, (cams, uv) in enumerate(tracks, start=1):
        tr = []
        for c, (u, v) in zip(cams, uv):
            tr.append((int(c) + 1, len(obs_per_image[c])))
            obs_per_image[c].append((float(u), float(v), pid))
        point_tracks.append(tr)
    n_obs = sum(len(o) for o in obs_per_image)
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {len(names)}, mean observations per image: {n_obs / max(1, len(names)):.1f}"]
    for i, (name, c2w) in enumerate(zip(names, poses)):
        w2c = w2c_opencv(c2w)
        q, t = _quat_wxyz(w2c[:3, :3]), w2c[:3, 3]
        lines.append(f"{i + 1} " + " ".join(f"{x:.17g}" for x in (*q, *t)) + f" 1 {name}")
        lines.append(" ".join(f"{u:.2f} {v:.2f} {pid}" for u, v, pid in obs_per_image[i]))
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    mean_track = np.mean([len(t) for t in point_tracks]) if point_tracks else 0.0
    plines = ["# 3D point list with one line of data per point:",
              "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
              f"# Number of points: {len(xyz)}, mean track length: {mean_track:.4f}"]
    for pid, (p, c, e, tr) in enumerate(zip(xyz, rgb, errors, point_tracks), start=1):
        plines.append(f"{pid} {p[0]:.17g} {p[1]:.17g} {p[2]:.17g} {c[0]} {c[1]} {c[2]} {e:.6f} "
                      + " ".join(f"{a} {b}" for a, b in tr))
    (model / "points3D.txt").write_text("\n".join(plines) + "\n")


def read_colmap_text(model: Path):
    """(K [3, 3], width, height, {name: w2c [4, 4]}, xyz [N, 3], rgb [N, 3]) of a text model as written
    here (one PINHOLE camera): an independent re-read for the self-check."""
    from scipy.spatial.transform import Rotation

    cam = next(l.split() for l in (model / "cameras.txt").read_text().splitlines() if l and not l.startswith("#"))
    width, height = int(cam[2]), int(cam[3])
    fx, fy, cx, cy = map(float, cam[4:8])
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    rows = [l for l in (model / "images.txt").read_text().splitlines() if not l.startswith("#")]
    w2c = {}
    for l in rows[0::2]:
        p = l.split()
        qw, qx, qy, qz, tx, ty, tz = map(float, p[1:8])
        m = np.eye(4)
        m[:3, :3] = Rotation.from_quat([qx, qy, qz, qw]).as_matrix()
        m[:3, 3] = (tx, ty, tz)
        w2c[p[9]] = m
    pts = [l.split() for l in (model / "points3D.txt").read_text().splitlines() if l and not l.startswith("#")]
    xyz = np.array([[float(v) for v in p[1:4]] for p in pts])
    rgb = np.array([[int(v) for v in p[4:7]] for p in pts], np.uint8)
    return K, width, height, w2c, xyz, rgb


# --------------------------------------------------------------------------------------------------
# the dataset


def image_names(n: int = N_VIEWS) -> list[str]:
    return [f"IMG_{i + 1:04d}.jpg" for i in range(n)]


def generate(out_dir, variant: str = "default", width: int = WIDTH, height: int = HEIGHT, n_views: int = N_VIEWS,
             n_points: int = N_POINTS, spp: int = SPP, mitsuba_variant: str | None = None, threads: int = 1,
             verbose: bool = True) -> Path:
    """Render the capture scene `variant` into out_dir (images/ and sparse/0/ as COLMAP text). Written to a
    temporary folder beside out_dir and renamed into place when complete."""
    out_dir = Path(out_dir)
    if variant not in SETTINGS:
        raise ValueError(f"unknown capture scene variant {variant!r} (one of {', '.join(VARIANTS)})")
    from PIL import Image

    poses = camera_poses(variant, n_views)
    names = image_names(n_views)
    exposure = SETTINGS[variant]["exposure"]
    with base.replaced_when_complete(out_dir) as work:
        t0 = time.time()
        r = CaptureRenderer(variant, width, height, mitsuba_variant, threads)
        if verbose:
            print(f"capture scene {variant!r}: mitsuba variant {r.variant}, {threads} thread(s), {width}x{height}, "
                  f"{spp} spp, {n_views} photos", flush=True)
        (work / "images").mkdir()
        images = []
        for i, (c2w, name) in enumerate(zip(poses, names)):
            ts = time.time()
            img = develop(r.render_linear(c2w, spp, seed=7919 * SEEDS[variant] + i), exposure)
            save_jpeg(work / "images" / name, img)
            images.append(np.asarray(Image.open(work / "images" / name).convert("RGB")))
            if verbose:
                print(f"  {name} {time.time() - ts:.1f}s", flush=True)
        ts = time.time()
        xyz, rgb, tracks, errors = sfm_points(r, poses, images, variant, n_points, seed=SEEDS[variant])
        K = intrinsics(variant, width, height)
        write_colmap(work / "sparse" / "0", names, poses, K, width, height, xyz, rgb, tracks, errors)
        if verbose:
            print(f"  {len(xyz)} points (mean track {np.mean([len(t[0]) for t in tracks]):.1f}) "
                  f"{time.time() - ts:.1f}s; done in {time.time() - t0:.0f}s: {out_dir}", flush=True)
    return out_dir


def _complete(p: Path) -> bool:
    return (p / "sparse" / "0" / "points3D.txt").is_file() and (p / "images").is_dir()


def capture_scene_path(variant: str = "default", generate: bool = True) -> Path:
    """The folder of the capture scene `variant` (``default`` or ``heldout``): ``scenes/capture_<variant>``
    under ``$SPLAT_CACHE_DIR`` (default ``~/.cache/splat``), rendered there now if missing and ``generate``
    (needs Mitsuba; a few minutes), else a FileNotFoundError says how to render it."""
    if variant not in SETTINGS:
        raise ValueError(f"unknown capture scene variant {variant!r} (one of {', '.join(VARIANTS)})")
    return base.cached_or_rendered(
        base._cache_dir(f"capture_{variant}"), f"the {variant} capture scene",
        f"python -m scenes.capture_scene --variant {variant}",
        lambda cache: _generate(cache, variant, threads=max(1, min(2, os.cpu_count() or 1))), generate, _complete)


_generate = generate  # capture_scene_path's `generate` argument hides the function


# --------------------------------------------------------------------------------------------------
# self-check


def landmarks(variant: str) -> tuple[list[str], np.ndarray]:
    """Named 3D points on horizontal, visible surfaces: the table's corners (2 cm in) and a point on top of
    the object."""
    tw, td = SETTINGS[variant]["table"]
    names = ["table +x+y", "table +x-y", "table -x+y", "table -x-y"]
    pts = [(sx * (tw / 2 - 0.02), sy * (td / 2 - 0.02), 0.0) for sx in (1, -1) for sy in (1, -1)]
    if variant == "default":
        names.append("vase mouth centre")
        pts.append((-0.04, 0.03, 0.2995))
    else:
        names.append("mug top centre")
        pts.append((-0.10, 0.16, 0.0995))
    return names, np.array(pts)


def _selfcheck(path, variant: str | None = None, views=None, mitsuba_variant: str | None = None,
               threads: int = 1, verbose: bool = True) -> dict:
    """Check a generated folder's COLMAP model against the scene: re-read the text files; for each photo
    (``views``: indices in name order, default all), cast one ray per pixel with Mitsuba and project the hit
    points with the written K and world-to-camera: each must land in the pixel it was cast through (error
    < 1 px; the ray is jittered within the pixel, so ~0.5). The ``landmarks`` must project onto a pixel whose
    ray hits them (< 1.5 px on the surface) or something in front of them, never something behind, and each
    must be hit in some photo. The SfM points must project into the frame of >= MIN_TRACK photos, and their
    colours must be near their pixels'. Raises AssertionError on failure; returns the measurements."""
    from PIL import Image

    path = Path(path)
    if variant is None:
        variant = "heldout" if "heldout" in path.name else "default"
    K, W, H, w2c, xyz, rgb = read_colmap_text(path / "sparse" / "0")
    names = sorted(w2c)
    r = CaptureRenderer(variant, W, H, mitsuba_variant, threads)
    poses = camera_poses(variant, len(names))
    views = range(len(names)) if views is None else views
    res: dict = {"variant": variant, "views": len(views)}
    errs = []
    lm_names, lms = landmarks(variant)
    lm_seen = np.zeros(len(lms), int)
    lm_err, lm_occluded, lm_wrong = [], 0, []
    for v in views:
        name = names[v]
        pos, hit = r.render_positions(poses[v], seed=123 + v)
        # every hit point must project into the pixel its ray went through (jittered within the pixel)
        jj, ii = np.nonzero(hit)
        sel = np.random.default_rng(v).choice(len(ii), min(20000, len(ii)), replace=False)
        uv, z = project(pos[jj[sel], ii[sel]], w2c[name], K)
        errs.append(float(np.abs(uv - np.stack([ii[sel] + 0.5, jj[sel] + 0.5], -1)).max()))
        # the landmarks: the ray through the pixel they project to hits them (within the pixel's footprint),
        # or something in front of them (occluded); never something behind them
        uv, z = project(lms, w2c[name], K)
        for k, ((u, vv), d) in enumerate(zip(uv, z)):
            if not (d > 0 and 0 <= u < W and 0 <= vv < H) or not hit[int(vv), int(u)]:
                continue
            p = pos[int(vv), int(u)]
            dp = float(p @ w2c[name][2, :3] + w2c[name][2, 3])
            # distance in pixels, on the (horizontal) surface: a jittered ray moves by 1/cos(incidence) px
            ray = lms[k] - np.linalg.inv(w2c[name])[:3, 3]
            cos_i = abs(ray[2]) / np.linalg.norm(ray)
            dist_px = float(np.linalg.norm(p - lms[k]) / d * K[0, 0] * cos_i)
            if dist_px < 1.5:
                lm_seen[k] += 1
                lm_err.append(dist_px)
            elif dp < d - 0.005:
                lm_occluded += 1
            else:
                lm_wrong.append((name, lm_names[k], round(dist_px, 1)))
    res["ray_reprojection_max_px"] = max(errs)
    res["landmark_hits"] = dict(zip(lm_names, lm_seen.tolist()))
    res["landmark_max_px"] = max(lm_err) if lm_err else None
    res["landmark_occluded"] = lm_occluded
    res["landmark_wrong"] = lm_wrong
    # SfM points: in the frame of >= MIN_TRACK photos; colours near their pixels in one of them
    in_frame = np.zeros(len(xyz), int)
    col_err = np.full(len(xyz), np.inf)
    for name in names:
        uv, z = project(xyz, w2c[name], K)
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        in_frame += ok
        img = np.asarray(Image.open(path / "images" / name).convert("RGB")).astype(np.float64)
        u = np.clip(uv[:, 0].astype(int), 0, W - 1)
        vv = np.clip(uv[:, 1].astype(int), 0, H - 1)
        e = np.abs(img[vv, u] - rgb).mean(1)
        col_err = np.where(ok, np.minimum(col_err, e), col_err)
    res["points"] = len(xyz)
    res["points_in_frame_min"] = int(in_frame.min())
    res["point_colour_err_median"] = float(np.median(col_err))
    if verbose:
        print(res, flush=True)
    assert res["ray_reprojection_max_px"] < 1.0, res
    assert not lm_wrong and (lm_seen > 0).all(), res
    assert res["points_in_frame_min"] >= MIN_TRACK, res
    assert res["point_colour_err_median"] < 20.0, res
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Render a synthetic handheld COLMAP capture (an object on a table in "
                                             "a room, 23 JPEG photos, a sparse SfM-like model) with Mitsuba 3.")
    ap.add_argument("--variant", choices=VARIANTS, default="default", help="which scene (default: default)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder, replaced when complete (default: scenes/capture_<variant> under "
                         "$SPLAT_CACHE_DIR or ~/.cache/splat)")
    ap.add_argument("--spp", type=int, default=SPP, help="samples per pixel")
    ap.add_argument("--points", type=int, default=N_POINTS, help="number of SfM points")
    ap.add_argument("--threads", type=int, default=1, help="render threads")
    ap.add_argument("--mitsuba-variant", default=None,
                    help="mitsuba variant (default: llvm_ad_rgb if it works, else scalar_rgb)")
    ap.add_argument("--selfcheck", action="store_true", help="then check the written model against the scene")
    a = ap.parse_args(argv)
    out = a.out or base._cache_dir(f"capture_{a.variant}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that an interrupted run removes its partial folder
    generate(out, a.variant, n_points=a.points, spp=a.spp, mitsuba_variant=a.mitsuba_variant, threads=a.threads)
    if a.selfcheck:
        _selfcheck(out, a.variant, mitsuba_variant=a.mitsuba_variant, threads=a.threads)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
