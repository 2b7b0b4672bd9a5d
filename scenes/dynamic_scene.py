"""The embedded dynamic default scene: a small moving still life rendered by Mitsuba 3 in the D-NeRF layout.

The dataset for dynamic (4D) models lives in ``scenes/data/dynamic/`` (committed, so that nothing is rendered
or downloaded); this module defines the scene and regenerates that folder, and writes two other layouts of the
same scene for testing on other data of the kind. Mitsuba is imported lazily by the generator only; reading the
dataset needs nothing but the files. Shared machinery (cameras, textures, the renderer, PNG/PLY writers, the
cache lookup) is imported from ``default_scene``.

Scene (z-up like Blender, metres; everything on a round ground disk of radius 1.05 at the origin; the cameras
look at ``LOOK_AT``; the motion functions ``ball_center``, ``cube_angle`` and ``bouncer_center`` of t in [0, 1]
define it and the tests use them):

* ground: a disk with default_scene's stone-mosaic texture (12 x 12 tiles), diffuse;
* static: a brick wall, a box 0.96 x 0.16 x 0.55 m (``WALL``) with a generated brick texture, diffuse;
* a red plastic ball (radius 0.12) rolling at constant speed along an ellipse around the wall (semi-axes 0.8
  and 0.5 m, 0.85 of a turn, 3.4 m in all, 0.15 m per training instant): it starts in front of the wall
  and passes behind it, so every camera loses it for 3-7 consecutive instants (t ~ 0.2-0.95 depending on
  the camera; the frontal ones around t ~ 0.45-0.75): occlusion in time;
* a checker cube (half size 0.16, 4 x 4 checks per face, each side face with its own dark colour: navy,
  green, purple, teal, on cream) turning 270 degrees about its vertical axis (11.7 degrees an instant);
* a yellow plastic ball (radius 0.1) bouncing 2.5 times on ballistic parabolas 0.65 m high (6.5 radii),
  at the top at t = 0 and on the ground at t = 1.

Nothing returns to its start: t = 0 and t = 1 differ everywhere something moves. Lighting: default_scene's
sky-gradient environment (soft light) plus a point light above the front-right whose hard shadows move with
the objects. The environment is hidden from the camera, so alpha is the coverage of the geometry.

Cameras and times (the committed set): pinhole, ``camera_angle_x`` = 40 degrees, 128 x 128 pixels, all at
distance ``RADIUS`` = 3.1 from ``LOOK_AT`` and looking at it. Azimuth is measured from +x towards +y and the
front of the scene is the -y side (azimuth -90). Six synchronised train cameras ``TRAIN_CAMERAS`` at
azimuths -190 .. 10 (every 40 degrees: a 200-degree arc over the front) and elevations 16-44 degrees; two
test cameras ``TEST_CAMERAS`` at (-130, 29) and (-50, 22), between train cameras (at least 10 degrees from
every one). Train: every train camera at each of the 24 instants t_i = i / 23, time-major (all cameras at
t_0, then all at t_1, ...), files ``train/c{camera}_t{i:03d}.png``: 144 frames. Test: both test cameras at
8 instants half-way between training instants, t = (i + 0.5) / 23 for i in ``TEST_STEPS`` = 0, 3, 6, 9,
13, 16, 19, 22, time-major, files ``test/c{camera}_t{k:03d}.png`` (k = 0..7): 16 frames that interpolate in
view and in time.

Output (``generate``): the D-NeRF layout, i.e. NeRF-synthetic ``transforms_train.json`` and
``transforms_test.json`` (``camera_angle_x``; frames with ``file_path``, ``rotation``, ``time`` in [0, 1] and a
4x4 camera-to-world ``transform_matrix`` in the OpenGL/Blender convention, exactly as default_scene writes
them), 8-bit sRGB RGBA PNGs with straight alpha, and ``points3d.ply`` (float x, y, z and uchar red, green,
blue): 8000 points on the visible surfaces with their rendered colours and a little noise, sampled from every
train camera at the instants ``POINT_STEPS`` = 0, 8, 15, 23 (so the moving objects leave points at four
places, as an SfM run over a few instants would).

Rendering: default_scene's settings (path tracer, max depth 5, hidden emitters, ``ldsampler``, box filter,
``llvm_ad_rgb`` where it works, else ``scalar_rgb``), 256 samples per pixel; the scene is reloaded for each
instant. The committed set (160 views, 3.1 MB) rendered in 88 s with ``llvm_ad_rgb`` on 2 threads of a
shared 2-core machine (about 0.55 s a view). Monte-Carlo noise (``--noise``): a 256-spp view against a
1024-spp render of the same view scores 48.8-51.3 dB PSNR composited on white and 45.3-47.1 dB over the
opaque pixels alone (4 views; 64 spp would give 44.8-46.5 and 41.5-42.4 dB), far above what a trained
dynamic model reaches. Rendering the same view twice with two seeds changes it by 0.32-0.46 (mean absolute
difference, 0-255, on white); the first and last instants of a train camera differ by 4.1-6.8.

Other layouts of the same scene (not committed; default folders under ``$SPLAT_CACHE_DIR`` or
``~/.cache/splat``):

* ``--monocular`` (``scenes/dynamic_monocular``): a D-NeRF-style monocular sequence, 100 x 100 pixels:
  48 train instants t_i = i / 47, one camera each at a random place on the upper hemisphere (any azimuth,
  elevations 10-65 degrees uniform in area), so the camera jumps around as in D-NeRF's synthetic scenes;
  8 test instants half-way between evenly spread pairs of train instants, each from a camera drawn the same
  way at least 8 degrees from every other camera. Files ``train/r_{i:03d}.png``, ``test/r_{k:03d}.png``.
  22 s to render.
* ``--n3v`` (``scenes/dynamic_n3v``): the Neural 3D Video layout: ``poses_bounds.npy`` (float64 [7, 17]:
  per camera the LLFF 3x5 matrix, row-major, columns [down, right, back] rotation, centre, [H, W, focal],
  then near and far bounds: 0.9 x the 0.1th and 1.1 x the 99.9th percentile of the depths of first hits at
  t = 0, 0.5 and 1) and ``cam00.mp4`` .. ``cam06.mp4`` (24 frames at t = i / 23, 30 frames a second,
  160 x 120 pixels, composited on white, libx264 crf 6 in yuv444p: 46.8 dB against the rendered frame;
  yuv420p reached only 36-37.5 dB at crf 4-12 at this size). Seven forward-facing cameras on an arc at elevation 18
  degrees, azimuth offsets 0, -10, +10, -20, +20, -30, +30 degrees about the front, all looking at
  ``LOOK_AT``, 45 degrees wide; cam00 is the middle one, the camera DyNeRF holds out for testing.
  102 s to render.

Run ``python -m scenes.dynamic_scene --threads 2 --sheet docs/dynamic_scene_views.png`` to regenerate the
committed set and its contact sheet (rows: train cameras 0, 2, 4; columns: instants 0, 5, 9, 14, 18, 23),
``python -m scenes.dynamic_scene --monocular`` or ``--n3v`` (``--out DIR`` to choose the folder) for the
others.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np

try:
    from . import default_scene as base
except ImportError:  # loaded by file path (the tests do) or run as a script: the checkout's scenes package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scenes import default_scene as base

# --------------------------------------------------------------------------------------------------
# scene constants (the tests read these)

WIDTH = 128
HEIGHT = 128
SPP = 256
N_TIMES = 24  # training instants t_i = i / (N_TIMES - 1)
TEST_STEPS = (0, 3, 6, 9, 13, 16, 19, 22)  # test instants t = (i + 0.5) / (N_TIMES - 1)
POINT_STEPS = (0, 8, 15, 23)  # points3d.ply samples the train views of these instants
CAMERA_ANGLE_X = math.radians(40.0)
RADIUS = 3.1  # camera distance from LOOK_AT
LOOK_AT = (0.0, 0.0, 0.25)
DISK_RADIUS = 1.05
# (azimuth, elevation) in degrees; azimuth from +x towards +y, so -90 is the front (the -y side)
TRAIN_CAMERAS = ((-190.0, 24.0), (-150.0, 38.0), (-110.0, 16.0), (-70.0, 30.0), (-30.0, 44.0), (10.0, 20.0))
TEST_CAMERAS = ((-130.0, 29.0), (-50.0, 22.0))

WALL = ((0.0, 0.20, 0.275), (0.48, 0.08, 0.275))  # static box: centre, half extents (x, y, z)
BALL = 0.12  # red ball radius; it rolls on the ground along an ellipse around the wall:
BALL_PATH = ((0.0, 0.20), 0.80, 0.50, -90.0, 0.85)  # centre xy, semi-axes x and y, start angle (deg), turns
BALL_COLOUR = (0.72, 0.012, 0.008)
CUBE = ((-0.58, -0.50), 0.16, 10.0, 0.75)  # checker cube on the ground: xy, half size, start angle (deg), turns
BOUNCER = ((0.58, -0.48), 0.10, 0.65, 2.5)  # yellow ball: xy, radius, bounce height (m), bounces
BOUNCER_COLOUR = (0.80, 0.52, 0.02)
LIGHT = ((1.6, -1.9, 3.2), 26.0)  # point light position, intensity (W/sr, grey)
# hue (degrees) of the rendered sRGB colour of the two balls, for the tests
BALL_HUE = 2.0
BOUNCER_HUE = 46.0

# monocular (D-NeRF style) and Neural 3D Video variants
MONO_WIDTH = 100
MONO_TRAIN = 48
MONO_TEST = 8
MONO_ELEVATION = (10.0, 65.0)
N3V_WIDTH = 160  # height = 3/4 of it
N3V_FRAMES = 24
N3V_ANGLE_X = math.radians(45.0)
N3V_ELEVATION = 18.0
N3V_OFFSETS = (0.0, -10.0, 10.0, -20.0, 20.0, -30.0, 30.0)  # azimuths about the front; cam00 in the middle
N3V_FPS = 30
N3V_CRF = 6  # libx264 constant rate factor (0 = lossless)
N3V_PIXEL_FORMAT = "yuv444p"  # no chroma subsampling: yuv420p reached only 36-37.5 dB at this size

ROOT = Path(__file__).resolve().parent
COMMITTED = ROOT / "data" / "dynamic"


# --------------------------------------------------------------------------------------------------
# motion (numpy; t in [0, 1])


def ball_center(t) -> np.ndarray:
    """Centre of the red ball at time(s) t: [..., 3]. It rolls at constant speed along an ellipse around
    the wall, starting in front of it, passing behind it (seen from the front) around t ~ 0.45-0.72."""
    (cx, cy), a, b, start, turns = BALL_PATH
    th = np.radians(start) + 2.0 * np.pi * turns * np.asarray(t, np.float64)
    return np.stack([cx + a * np.cos(th), cy + b * np.sin(th), np.full_like(th, BALL)], -1)


def cube_angle(t) -> np.ndarray:
    """Rotation of the checker cube about its vertical axis (degrees) at time(s) t."""
    return CUBE[2] + 360.0 * CUBE[3] * np.asarray(t, np.float64)


def bouncer_center(t) -> np.ndarray:
    """Centre of the yellow ball at time(s) t: ballistic parabolas, at the top at t = 0."""
    (x, y), r, h, n = BOUNCER
    s = 2.0 * np.mod(n * np.asarray(t, np.float64) + 0.5, 1.0) - 1.0
    z = r + h * (1.0 - s * s)
    return np.stack([np.full_like(z, x), np.full_like(z, y), z], -1)


def train_times(n: int = N_TIMES) -> np.ndarray:
    return np.arange(n) / (n - 1)


def between_times(n: int, steps) -> np.ndarray:
    """Instants half-way between training instants i / (n - 1) and (i + 1) / (n - 1)."""
    return (np.asarray(steps, np.float64) + 0.5) / (n - 1)


# --------------------------------------------------------------------------------------------------
# cameras


def camera(az_deg: float, el_deg: float, radius: float = RADIUS) -> np.ndarray:
    """OpenGL camera-to-world at (azimuth, elevation) on the sphere of `radius` around LOOK_AT, looking at it."""
    az, el = math.radians(az_deg), math.radians(el_deg)
    d = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return base.look_at_c2w(np.asarray(LOOK_AT) + radius * d, target=LOOK_AT)


def monocular_cameras(n_train: int, n_test: int, seed: int = 0, min_sep_deg: float = 8.0):
    """D-NeRF-style: one camera per instant at a random place on the upper hemisphere (uniform in area over
    the elevation band, any azimuth). Test cameras are drawn the same way, at least min_sep_deg from every
    train camera and from each other. Returns (train (az, el) list, test (az, el) list)."""
    rng = np.random.default_rng(seed + 11)
    s0, s1 = (math.sin(math.radians(e)) for e in MONO_ELEVATION)

    def draw():
        return float(rng.uniform(-180.0, 180.0)), math.degrees(math.asin(rng.uniform(s0, s1)))

    def unit(ae):
        az, el = np.radians(ae[0]), np.radians(ae[1])
        return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])

    train = [draw() for _ in range(n_train)]
    taken = [unit(p) for p in train]
    test = []
    for _ in range(100000):
        if len(test) == n_test:
            break
        p = draw()
        u = unit(p)
        if min(math.degrees(math.acos(min(1.0, float(u @ v)))) for v in taken) >= min_sep_deg:
            test.append(p)
            taken.append(u)
    if len(test) < n_test:
        raise ValueError(f"cannot place {n_test} test cameras {min_sep_deg} degrees from {n_train} train cameras")
    return train, test


def n3v_height(width: int) -> int:
    return 2 * round(width * 3 / 8)


def llff_pose(c2w_gl: np.ndarray, height: int, width: int, focal: float) -> np.ndarray:
    """The LLFF 3x5 pose of an OpenGL camera-to-world: columns [down, right, back, centre, (H, W, focal)]."""
    m = np.asarray(c2w_gl, np.float64)
    return np.stack([-m[:3, 1], m[:3, 0], m[:3, 2], m[:3, 3], np.array([height, width, focal], np.float64)], 1)


# --------------------------------------------------------------------------------------------------
# procedural assets (numpy only)


def brick_texture(seed: int = 0, rows: int = 8, bricks: int = 6, px: int = 16) -> np.ndarray:
    """Brick wall texture, linear RGB float32 [rows * px, bricks * 2 * px, 3]: staggered rows of warm
    bricks of varying tone, light mortar lines."""
    rng = np.random.default_rng(seed + 21)
    h, w = rows * px, bricks * 2 * px
    img = np.zeros((h, w, 3), np.float32)
    palette = np.array([[0.45, 0.16, 0.10], [0.52, 0.22, 0.13], [0.38, 0.13, 0.09], [0.55, 0.30, 0.20]])
    for r in range(rows):
        shift = (px if r % 2 else 0)
        for b in range(-1, bricks + 1):
            x0, x1 = b * 2 * px + shift, (b + 1) * 2 * px + shift
            col = palette[rng.integers(len(palette))] * rng.uniform(0.8, 1.15)
            img[r * px:(r + 1) * px, max(0, x0):max(0, min(w, x1))] = col
            if 0 <= x0 < w:
                img[r * px:(r + 1) * px, x0:x0 + 2] = 0.55  # vertical mortar
        img[r * px:r * px + 2] = 0.55  # horizontal mortar
    img *= rng.uniform(0.9, 1.1, (h, w, 1)).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


CUBE_FACE_COLOURS = (  # dark check colour of each face, in the order +x, -x, +y, -y, +z, -z (light: cream)
    (0.05, 0.08, 0.32), (0.03, 0.22, 0.06), (0.22, 0.05, 0.28), (0.02, 0.20, 0.24), (0.12, 0.12, 0.12),
    (0.12, 0.12, 0.12))
CUBE_CREAM = (0.80, 0.74, 0.60)


def cube_atlas(checks: int = 4, tile: int = 64) -> np.ndarray:
    """Texture atlas of the cube, linear RGB float32 [2 tile, 3 tile, 3]: face k's checkerboard (checks x
    checks, its own dark colour and cream) in tile (row k // 3, column k % 3)."""
    img = np.zeros((2 * tile, 3 * tile, 3), np.float32)
    ij = np.arange(tile) * checks // tile
    board = (ij[:, None] + ij[None, :]) % 2 == 0
    for k, dark in enumerate(CUBE_FACE_COLOURS):
        r, c = divmod(k, 3)
        img[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = np.where(board[..., None], dark, CUBE_CREAM)
    return img


def cube_mesh(tile: int = 64):
    """Unit cube [-1, 1]^3 as 12 outward-wound triangles, 4 vertices per face, uv into cube_atlas's tiles
    (inset by a texel so that no face samples its neighbour's tile)."""
    normals = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    verts, uvs, faces = [], [], []
    inset = 1.0 / tile
    for k, n in enumerate(normals):
        n = np.array(n, np.float64)
        u = np.array((0.0, 0.0, 1.0)) if abs(n[2]) < 0.5 else np.array((1.0, 0.0, 0.0))
        u = np.cross(u, n) if abs(n[2]) < 0.5 else u  # horizontal u on the sides
        v = np.cross(n, u)  # u x v = n: counter-clockwise seen from outside
        r, c = divmod(k, 3)
        o = len(verts)
        for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            verts.append(n + su * u + sv * v)
            fu, fv = (su + 1) / 2, (sv + 1) / 2
            uvs.append(((c + inset + fu * (1 - 2 * inset)) / 3.0, (r + inset + fv * (1 - 2 * inset)) / 2.0))
        faces += [(o, o + 1, o + 2), (o, o + 2, o + 3)]
    return np.array(verts), np.array(faces), np.array(uvs)


# --------------------------------------------------------------------------------------------------
# the Mitsuba scene


class DynamicRenderer(base.Renderer):
    """default_scene's Renderer over the dynamic scene; ``set_time(t)`` loads the scene at instant t."""

    def __init__(self, width=WIDTH, height=HEIGHT, seed=0, variant=None, threads=1,
                 camera_angle_x: float = CAMERA_ANGLE_X):
        self.camera_angle_x = camera_angle_x
        self.time = 0.0
        super().__init__(width, height, seed, variant, threads, scene_fn=self._first_dict)

    def _first_dict(self, mi, asset_dir: Path, width: int, height: int, seed: int) -> dict:
        v, f, uv = base.disk_mesh(DISK_RADIUS)
        base.write_ply_mesh(asset_dir / "disk.ply", v, f, uv)
        v, f, uv = cube_mesh()
        base.write_ply_mesh(asset_dir / "cube.ply", v, f, uv)
        self._assets = {"dir": asset_dir, "size": (width, height),
                        "ground": mi.Bitmap(base.mosaic_texture(seed + 5, tiles=12)),
                        "bricks": mi.Bitmap(brick_texture(seed)), "cube": mi.Bitmap(cube_atlas()),
                        "sky": mi.Bitmap(base.sky_envmap())}
        return self.scene_dict(0.0)

    def set_time(self, t: float) -> None:
        if t != self.time:
            logger = self.mi.logger() if hasattr(self.mi, "logger") else self.mi.Thread.thread().logger()
            level = logger.log_level()
            logger.set_log_level(self.mi.LogLevel.Error)  # the ascii-ply performance warning, once is enough
            try:
                self.load(self.scene_dict(t))
            finally:
                logger.set_log_level(level)
            self.time = t

    def scene_dict(self, t: float) -> dict:
        """The scene at instant t as a Mitsuba dict (one sensor; views are set by changing its to_world)."""
        mi, a = self.mi, self._assets
        T = mi.ScalarTransform4f
        width, height = a["size"]
        bitmap = (lambda bmp, filt: {"type": "bitmap", "bitmap": bmp, "filter_type": filt, "raw": True})
        d: dict = {"type": "scene", "integrator": {"type": "path", "max_depth": 5, "hide_emitters": True}}
        d["ground"] = {"type": "ply", "filename": str(a["dir"] / "disk.ply"), "face_normals": True,
                       "bsdf": {"type": "diffuse", "reflectance": bitmap(a["ground"], "bilinear")}}
        (c, hs) = WALL
        d["wall"] = {"type": "cube", "to_world": T().translate(list(c)).scale(list(hs)),
                     "bsdf": {"type": "diffuse", "reflectance": bitmap(a["bricks"], "bilinear")}}
        (cx, cy), ch = CUBE[0], CUBE[1]
        d["cube"] = {"type": "ply", "filename": str(a["dir"] / "cube.ply"), "face_normals": True,
                     "to_world": T().translate([cx, cy, ch]).rotate([0, 0, 1], float(cube_angle(t))).scale(ch),
                     "bsdf": {"type": "diffuse", "reflectance": bitmap(a["cube"], "nearest")}}
        d["ball"] = {"type": "sphere", "center": [float(x) for x in ball_center(t)], "radius": BALL,
                     "bsdf": {"type": "roughplastic", "distribution": "ggx", "alpha": 0.15,
                              "diffuse_reflectance": base._rgb(BALL_COLOUR)}}
        d["bouncer"] = {"type": "sphere", "center": [float(x) for x in bouncer_center(t)], "radius": BOUNCER[1],
                        "bsdf": {"type": "roughplastic", "distribution": "ggx", "alpha": 0.15,
                                 "diffuse_reflectance": base._rgb(BOUNCER_COLOUR)}}
        d["sky"] = {"type": "envmap", "bitmap": a["sky"], "to_world": T().rotate([1, 0, 0], 90.0)}
        lp, li = LIGHT
        d["sun"] = {"type": "point", "position": list(lp), "intensity": base._rgb((li, li * 0.96, li * 0.9))}
        d["sensor"] = {
            "type": "perspective", "fov": math.degrees(self.camera_angle_x), "fov_axis": "x",
            "near_clip": 0.05, "far_clip": 100.0,
            "to_world": T(base._mitsuba_to_world(camera(-90.0, 30.0))),
            "sampler": {"type": "ldsampler", "sample_count": 4},
            "film": {"type": "hdrfilm", "width": width, "height": height, "pixel_format": "rgba",
                     "rfilter": {"type": "box"}},
        }
        return d


# --------------------------------------------------------------------------------------------------
# rendering the layouts


def _render_shots(r: DynamicRenderer, shots, work: Path, spp: int, seed: int, verbose: bool) -> None:
    """Render shots (split, name, c2w, t), grouped by instant, into work/<name>.png."""
    order = sorted(range(len(shots)), key=lambda k: (shots[k][3], k))
    for done, k in enumerate(order):
        split, name, c2w, t = shots[k]
        ts = time.time()
        r.set_time(t)
        img = r.render_rgba(c2w, spp, seed=7919 * seed + k)
        path = work / (name + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        base.save_png(path, base.to_rgba8(img))
        if verbose:
            print(f"  {done + 1}/{len(shots)} {name} t={t:.3f}  {time.time() - ts:.1f}s", flush=True)


def _write_transforms(work: Path, shots, camera_angle_x: float) -> None:
    for split in ("train", "test"):
        frames = [{"file_path": f"./{name}", "rotation": 0.0, "time": float(t),
                   "transform_matrix": [[float(x) for x in row] for row in c2w]}
                  for s, name, c2w, t in shots if s == split]
        meta = {"camera_angle_x": camera_angle_x, "frames": frames}
        (work / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2) + "\n")


def _points(r: DynamicRenderer, views, work: Path, n_points: int, seed: int):
    """points3d.ply: base.surface_samples of the rendered train shots `views` (taken at a few instants, so
    the moving objects leave points at several places), with base.noisy_points' noise."""
    from PIL import Image

    rng = np.random.default_rng(seed + 2)
    per = math.ceil(n_points / len(views))
    xyz, rgb = [], []
    for k, (_, name, c2w, t) in enumerate(views):
        r.set_time(t)
        img = np.asarray(Image.open(work / (name + ".png")))
        p, c = base.surface_samples(r, c2w, img, per, rng, seed=5000 + k)
        xyz.append(p)
        rgb.append(c)
    xyz, rgb = base.noisy_points(np.concatenate(xyz)[:n_points], np.concatenate(rgb)[:n_points], rng)
    base.write_points_ply(work / "points3d.ply", xyz, rgb)


def multiview_shots():
    """(split, name, c2w, t) of the committed set, time-major within each split."""
    shots = []
    for i, t in enumerate(train_times()):
        for c, (az, el) in enumerate(TRAIN_CAMERAS):
            shots.append(("train", f"train/c{c}_t{i:03d}", camera(az, el), float(t)))
    for k, t in enumerate(between_times(N_TIMES, TEST_STEPS)):
        for c, (az, el) in enumerate(TEST_CAMERAS):
            shots.append(("test", f"test/c{c}_t{k:03d}", camera(az, el), float(t)))
    return shots


def monocular_shots(n_train: int = MONO_TRAIN, n_test: int = MONO_TEST, seed: int = 0):
    """(split, name, c2w, t) of the monocular sequence: camera i at instant i / (n_train - 1); test instants
    half-way between n_test evenly spread pairs of training instants."""
    train_cams, test_cams = monocular_cameras(n_train, n_test, seed)
    steps = np.linspace(0, n_train - 2, n_test).round().astype(int)
    shots = [("train", f"train/r_{i:03d}", camera(*train_cams[i]), float(t))
             for i, t in enumerate(train_times(n_train))]
    shots += [("test", f"test/r_{k:03d}", camera(*test_cams[k]), float(t))
              for k, t in enumerate(between_times(n_train, steps))]
    return shots


def generate(out_dir=COMMITTED, width: int = WIDTH, spp: int = SPP, seed: int = 0, n_points: int = 8000,
             variant: str | None = None, threads: int = 1, verbose: bool = True, monocular: bool = False,
             n_train: int = MONO_TRAIN, n_test: int = MONO_TEST) -> Path:
    """Render the dynamic scene into out_dir in the D-NeRF layout: the 6-camera x 24-instant set, or with
    monocular=True the one-camera-per-instant sequence (n_train and n_test instants). Written to a
    temporary folder beside out_dir and renamed into place when complete."""
    out_dir = Path(out_dir)
    shots = monocular_shots(n_train, n_test, seed) if monocular else multiview_shots()
    with base.replaced_when_complete(out_dir) as work:
        t0 = time.time()
        r = DynamicRenderer(width, width, seed, variant, threads)
        if verbose:
            print(f"mitsuba variant {r.variant}, {threads} thread(s), {width}x{width}, {spp} spp, "
                  f"{len(shots)} views", flush=True)
        _render_shots(r, shots, work, spp, seed, verbose)
        t1 = time.time()
        _write_transforms(work, shots, CAMERA_ANGLE_X)
        train = [s for s in shots if s[0] == "train"]
        if monocular:  # 8 frames spread over the sequence
            views = [train[i] for i in np.linspace(0, len(train) - 1, 8).round().astype(int)]
        else:  # every camera at POINT_STEPS
            views = [s for s in train if round(s[3] * (N_TIMES - 1)) in POINT_STEPS]
        _points(r, views, work, n_points, seed)
        if verbose:
            print(f"done in {time.time() - t0:.0f}s (images {t1 - t0:.0f}s): {out_dir}", flush=True)
    return out_dir


def n3v_cameras():
    return [camera(-90.0 + off, N3V_ELEVATION) for off in N3V_OFFSETS]


def generate_n3v(out_dir, width: int = N3V_WIDTH, spp: int = SPP, seed: int = 0, n_frames: int = N3V_FRAMES,
                 variant: str | None = None, threads: int = 1, verbose: bool = True) -> Path:
    """Render the dynamic scene in the Neural 3D Video layout: poses_bounds.npy and cam00.mp4 .. camNN.mp4
    (frames composited on white; libx264 at crf N3V_CRF in N3V_PIXEL_FORMAT, N3V_FPS frames a second)."""
    import imageio.v2 as imageio

    out_dir = Path(out_dir)
    height = n3v_height(width)
    focal = 0.5 * width / math.tan(0.5 * N3V_ANGLE_X)
    cams = n3v_cameras()
    times = train_times(n_frames)
    with base.replaced_when_complete(out_dir) as work:
        t0 = time.time()
        r = DynamicRenderer(width, height, seed, variant, threads, camera_angle_x=N3V_ANGLE_X)
        if verbose:
            print(f"mitsuba variant {r.variant}, {threads} thread(s), {width}x{height}, {spp} spp, "
                  f"{len(cams)} cameras x {n_frames} frames", flush=True)
        frames = np.zeros((len(cams), n_frames, height, width, 3), np.uint8)
        depths = [[] for _ in cams]
        for i, t in enumerate(times):
            ts = time.time()
            r.set_time(float(t))
            for c, c2w in enumerate(cams):
                rgba = base.to_rgba8(r.render_rgba(c2w, spp, seed=7919 * seed + i * len(cams) + c))
                a = rgba[..., 3:4].astype(np.float64) / 255.0
                frames[c, i] = np.round(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)
                if i in (0, n_frames // 2, n_frames - 1):
                    pos, hit = r.render_positions(c2w, seed=5000 + c)
                    depths[c].append((pos[hit] - c2w[:3, 3]) @ -c2w[:3, 2])
            if verbose:
                print(f"  frame {i + 1}/{n_frames} t={t:.3f}  {time.time() - ts:.1f}s", flush=True)
        rows = []
        for c, c2w in enumerate(cams):
            dep = np.concatenate(depths[c])
            near, far = 0.9 * float(np.percentile(dep, 0.1)), 1.1 * float(np.percentile(dep, 99.9))
            rows.append(np.concatenate([llff_pose(c2w, height, width, focal).reshape(-1), [near, far]]))
        np.save(work / "poses_bounds.npy", np.array(rows, np.float64))
        for c in range(len(cams)):
            w = imageio.get_writer(work / f"cam{c:02d}.mp4", fps=N3V_FPS, codec="libx264", quality=None,
                                   ffmpeg_params=["-crf", str(N3V_CRF)], pixelformat=N3V_PIXEL_FORMAT,
                                   macro_block_size=8)
            for fr in frames[c]:
                w.append_data(fr)
            w.close()
        if verbose:
            print(f"done in {time.time() - t0:.0f}s: {out_dir}", flush=True)
    return out_dir


# --------------------------------------------------------------------------------------------------
# contact sheet, noise, where the dataset is

SHEET_CAMERAS = (0, 2, 4)
SHEET_STEPS = (0, 5, 9, 14, 18, 23)


def contact_sheet(data_dir, out_png) -> Path:
    """Rows: train cameras SHEET_CAMERAS; columns: instants SHEET_STEPS (composited on white)."""
    data_dir = Path(data_dir)
    paths = [data_dir / "train" / f"c{c}_t{i:03d}.png" for c in SHEET_CAMERAS for i in SHEET_STEPS]
    return base.sheet_of_images(paths, out_png, cols=len(SHEET_STEPS))


def psnr(a: np.ndarray, b: np.ndarray, mask=None) -> float:
    err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(10.0 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def measure_noise(spp: int = SPP, width: int = WIDTH, variant=None, threads: int = 1, cam: int = 3,
                  step: int = 12) -> dict:
    """PSNR of one train view at `spp` against the same view at 4 x spp (composited on white; and over the
    pixels opaque in both)."""
    r = DynamicRenderer(width, width, 0, variant, threads)
    c2w = camera(*TRAIN_CAMERAS[cam])
    r.set_time(float(train_times()[step]))
    out = {}
    imgs = []
    for s, n in ((1, spp), (2, 4 * spp)):
        ts = time.time()
        imgs.append(base.to_rgba8(r.render_rgba(c2w, n, seed=s)))
        out[f"seconds_{n}spp"] = time.time() - ts
    (lo, hi) = imgs
    white = [np.round(im[..., :3] * (im[..., 3:4] / 255.0) + 255.0 * (1 - im[..., 3:4] / 255.0)) for im in imgs]
    out["psnr_white"] = psnr(white[0], white[1])
    out["psnr_opaque"] = psnr(lo[..., :3], hi[..., :3], (lo[..., 3] == 255) & (hi[..., 3] == 255))
    return out


def dynamic_scene_path() -> Path:
    """The folder of the dynamic scene (D-NeRF layout): the committed ``scenes/data/dynamic``, else a cached
    copy, else one rendered now into the cache (needs ``pip install mitsuba``)."""
    return base.committed_cached_or_rendered(COMMITTED, "dynamic", generate, "scenes.dynamic_scene")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Render the embedded dynamic scene (D-NeRF layout; or a monocular D-NeRF-style sequence, "
                    "or the Neural 3D Video layout) with Mitsuba 3.")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder, replaced when complete (default: scenes/data/dynamic; with --monocular "
                         "or --n3v: scenes/dynamic_monocular or scenes/dynamic_n3v under $SPLAT_CACHE_DIR or "
                         "~/.cache/splat)")
    ap.add_argument("--width", type=int, default=None,
                    help=f"image width (and height) in pixels (default {WIDTH}; --monocular {MONO_WIDTH}; "
                         f"--n3v {N3V_WIDTH}, height 3/4 of it)")
    ap.add_argument("--spp", type=int, default=SPP, help="samples per pixel (rounded up to a power of 4)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the textures, monocular cameras, noise and points")
    ap.add_argument("--threads", type=int, default=1, help="render threads")
    ap.add_argument("--variant", default=None,
                    help="mitsuba variant (default: llvm_ad_rgb if it works, else scalar_rgb)")
    ap.add_argument("--sheet", type=Path, default=None,
                    help="also write a contact sheet (train cameras x instants) here, "
                         "e.g. docs/dynamic_scene_views.png")
    ap.add_argument("--sheet-only", action="store_true", help="only write the contact sheet of the existing --out")
    layout = ap.add_mutually_exclusive_group()
    layout.add_argument("--monocular", action="store_true",
                        help=f"D-NeRF-style monocular sequence: {MONO_TRAIN} train instants, one camera each at a "
                             f"random place on the hemisphere, and {MONO_TEST} test instants between them")
    layout.add_argument("--n3v", action="store_true",
                        help=f"Neural 3D Video layout: poses_bounds.npy and cam00.mp4 .. cam{len(N3V_OFFSETS) - 1:02d}"
                             f".mp4 ({len(N3V_OFFSETS)} cameras on an arc, cam00 in the middle, {N3V_FRAMES} frames)")
    ap.add_argument("--train-frames", type=int, default=MONO_TRAIN,
                    help=f"--monocular: training instants (default {MONO_TRAIN})")
    ap.add_argument("--test-frames", type=int, default=MONO_TEST,
                    help=f"--monocular: test instants held out between them (default {MONO_TEST})")
    ap.add_argument("--noise", action="store_true",
                    help="only measure the Monte-Carlo noise: PSNR of one view at --spp against 4x --spp")
    a = ap.parse_args(argv)
    kind = "n3v" if a.n3v else "monocular" if a.monocular else None
    out = a.out or (base._cache_dir(f"dynamic_{kind}") if kind else COMMITTED)
    if a.noise:
        print(json.dumps(measure_noise(a.spp, a.width or WIDTH, a.variant, a.threads), indent=2))
        return 0
    if a.sheet_only:
        contact_sheet(out, a.sheet or ROOT.parent / "docs" / "dynamic_scene_views.png")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that an interrupted run removes its partial folder
    if a.n3v:
        generate_n3v(out, a.width or N3V_WIDTH, a.spp, a.seed, variant=a.variant, threads=a.threads)
    else:
        generate(out, a.width or (MONO_WIDTH if a.monocular else WIDTH), a.spp, a.seed, variant=a.variant,
                 threads=a.threads, monocular=a.monocular, n_train=a.train_frames, n_test=a.test_frames)
        if a.sheet and not a.monocular:
            contact_sheet(out, a.sheet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
