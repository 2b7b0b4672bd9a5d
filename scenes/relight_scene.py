"""The embedded relightable default scene: a small still life lit by ONE point light per image, rendered by
Mitsuba 3 in the NeRF-synthetic layout with the light of every frame recorded.

The dataset for relightable models lives in ``scenes/data/relightable/`` (committed, so that nothing is
rendered or downloaded); this module defines the scene and regenerates that folder, and writes a second,
different scene of the same kind (``--variant heldout``, not committed) for held-out-style testing. Mitsuba
is imported lazily by the renderer only; reading the dataset needs nothing but the files. Shared machinery
(cameras, textures, the renderer, the PNG writer, the cache lookup) is imported from ``default_scene``.

Scene ``default`` (z-up like Blender, metres; everything on a round ground disk of radius 0.85 centred at the
origin, inside a 1.2 m radius; the cameras look at ``LOOK_AT`` = (0, 0, 0.2), the lights are placed around it):

* ground: a disk mesh, plain warm-grey diffuse (reflectance 0.50 / 0.47 / 0.42), to catch the shadows;
* a red glossy ball (``SPHERE``, radius 0.27): rough plastic, GGX alpha 0.15, so the point light leaves a
  visible, moving highlight a few pixels wide at 128 px;
* a textured box (``BOX``, 0.40 x 0.30 x 0.36 m, turned 25 degrees about z): default_scene's stone-mosaic
  texture (5 x 5 tiles of muted colours with dark grout on every face), diffuse;
* a cream pillar (``PILLAR``, cylinder of radius 0.12, 0.62 m high, with a top cap), diffuse;
  the three stand close enough to cast shadows on one another and on the ground.

Scene ``heldout`` (same frame, cameras, lights and format; other objects, materials, textures and seeds):
a ground disk with the stone-mosaic texture (10 x 10 tiles), a teal glossy torus (rough plastic, GGX alpha
0.12, major radius 0.24, tube radius 0.08, standing tilted 65 degrees on the ground), a gold ball (rough
conductor "Au", GGX alpha 0.2, radius 0.22; lit only by the point light and the scene, so it shows the
highlight and the reflected lit ground) and a brick-textured cylinder (dynamic_scene's brick texture, radius
0.15, 0.42 m high, with a mortar-coloured cap).

Lighting: nothing but one point light per image (Mitsuba ``point`` emitter): no environment, no ambient term,
so everything not reached by the light (directly or by interreflection: path tracer, max depth 5) is black.
Light positions are random (seeded) on a shell around ``LOOK_AT``: distance 2.5-4 m (uniform), elevation
10-75 degrees (uniform in area), any azimuth. Intensities (linear radiant intensity, W/sr, exactly Mitsuba's
point emitter ``intensity``) are 3.0 x distance^2 x (0.85-1.15) x a slight warm/cool tint (red and blue
within +-10 % of green, mean 1), so the irradiance at the scene centre is about 2.5-3.5 W/m^2 whatever the
distance: a lit surface of reflectance 0.5 facing the light reads ~0.4-0.55 in linear RGB.

Cameras: pinhole, ``camera_angle_x`` = 40 degrees, 128 x 128 pixels, at distance ``RADIUS`` = 3.6 m from
``LOOK_AT`` and looking at it, at random (seeded) places on the upper hemisphere (elevation 8-75 degrees,
uniform in area, any azimuth): the ground disk spans ~60-70 % of the frame width. The committed set: 100
train views, each with its own camera and its own light; 20 test views with NEW cameras (each at least 5
degrees from every train camera) and NEW lights (drawn with another seed; each light's direction from
``LOOK_AT`` at least 10 degrees from every train light's; the test lights are also 5 degrees apart).

Output (``generate``): ``transforms_train.json`` and ``transforms_test.json`` with ``camera_angle_x`` and
``frames``; each frame has ``file_path`` (``train/r_000``, ``test/r_000``: relative, no extension; the images
are ``.png``), ``transform_matrix`` (4x4 camera-to-world in the OpenGL/Blender convention: x right, y up,
z back, exactly as default_scene writes them), ``light_position`` ([x, y, z], world metres) and
``light_intensity`` ([r, g, b], W/sr). Images: 8-bit sRGB RGBA PNGs with straight (un-premultiplied) alpha =
coverage of the geometry (the background is transparent: alpha 0, black). No ``points3d.ply``: like a user's
NeRF-synthetic object, training starts from random points.

Rendering: default_scene's settings (path tracer, max depth 5, ``ldsampler``, box filter, ``llvm_ad_rgb``
where it works, else ``scalar_rgb``), 1024 samples per pixel; the scene is loaded once, the light and the
camera are moved per view. The committed set (120 views, 0.93 MB) rendered in 106-132 s (two runs) with
``llvm_ad_rgb`` on 2 threads of a shared 2-core machine (0.4-1.4 s a view); the held-out set (1.3 MB) in
87-170 s. Monte-Carlo noise (``--noise``: train views 0, 37 and 71 at 1024 spp against the same view and
light at 16384 spp, 8-bit PSNR): default 51.6-59.5 dB composited on black, 51.6-59.6 dB on white,
46.3-52.8 dB over the opaque pixels alone; held-out 53.1-57.0 / 53.1-56.9 / 45.1-48.5 dB. (256 spp would
give 47.1-54.4 dB on black and 41.6-47.7 dB over the opaque pixels, held-out 48.8-52.4 / 41.3-43.8: the
caustics of the glossy objects converge slowly.) Far above what a trained model reaches. Exposure of the
committed set (opaque pixels, linear): the median of a view is 0.01-0.30 (10th-90th percentile over the
views: much of a view is in shadow when the light is behind the objects), its 95th percentile 0.24-0.59
(0.92 at most); 0.13 % of the opaque pixel channels are clipped (the highlights; 3 % in the worst view).

``render_view(c2w, light_position, light_intensity, size, spp, variant)`` renders any camera under any point
light (e.g. one camera under several lights for a figure); it returns linear, premultiplied RGBA float32.

Run ``python scenes/relight_scene.py --threads 2`` to regenerate the committed set (or give another folder:
``python scenes/relight_scene.py OUT_DIR``), ``python scenes/relight_scene.py --variant heldout [OUT_DIR]``
for the held-out scene (default folder ``scenes/relight_heldout`` under ``$SPLAT_CACHE_DIR`` or
``~/.cache/splat``), ``--noise`` to measure the Monte-Carlo noise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
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
# constants (the tests read these)

WIDTH = 128
HEIGHT = 128
N_TRAIN = 100
N_TEST = 20
SPP = 1024
CAMERA_ANGLE_X = math.radians(40.0)
RADIUS = 3.6  # camera distance from LOOK_AT
LOOK_AT = (0.0, 0.0, 0.2)  # cameras look at it; lights are placed around it
CAMERA_ELEVATION = (8.0, 75.0)  # degrees, uniform in area, any azimuth
LIGHT_DISTANCE = (2.5, 4.0)  # metres from LOOK_AT
LIGHT_ELEVATION = (10.0, 75.0)  # degrees, uniform in area, any azimuth
LIGHT_IRRADIANCE = 3.0  # intensity = LIGHT_IRRADIANCE * distance^2 * LIGHT_SCALE draw * tint (W/sr)
LIGHT_SCALE = (0.85, 1.15)
LIGHT_TINT = 0.10  # red and blue within +-10 % of green (then normalised to mean 1)
MIN_TEST_LIGHT_SEP = 10.0  # degrees between a test light's direction and every train light's
MIN_TEST_LIGHT_SPREAD = 5.0  # degrees between two test lights
MIN_TEST_CAMERA_SEP = 5.0  # degrees between a test camera and every train camera
MAX_DEPTH = 5
VARIANTS = ("default", "heldout")
SEEDS = {"default": 0, "heldout": 100}  # base seeds of cameras, lights, textures and render noise

# default scene
DISK_RADIUS = 0.85
GROUND_COLOUR = (0.50, 0.47, 0.42)
SPHERE = ((0.24, -0.20, 0.27), 0.27, (0.60, 0.06, 0.05), 0.15)  # centre, radius, diffuse colour, GGX alpha
BOX = ((-0.34, -0.08, 0.18), (0.20, 0.15, 0.18), 25.0)  # centre, half extents, rotation about z (degrees)
PILLAR = ((0.02, 0.42), 0.12, 0.62, (0.78, 0.74, 0.64))  # xy, radius, height, colour

# held-out scene
TORUS = ((-0.25, 0.22), 0.24, 0.08, 65.0, 30.0, (0.04, 0.32, 0.28), 0.12)  # xy, R, r, tilt, turn, colour, alpha
GOLD = ((0.30, -0.05, 0.22), 0.22, 0.20)  # centre, radius, GGX alpha
BRICK_PILLAR = ((-0.15, -0.40), 0.15, 0.42)  # xy, radius, height
MORTAR = (0.55, 0.55, 0.55)

ROOT = Path(__file__).resolve().parent
COMMITTED = ROOT / "data" / "relightable"


# --------------------------------------------------------------------------------------------------
# cameras and lights (numpy only)


def direction(az_deg, el_deg) -> np.ndarray:
    az, el = np.radians(az_deg), np.radians(el_deg)
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)


def _draw_directions(rng, n: int, elevation: tuple[float, float]) -> np.ndarray:
    """n unit vectors uniform in area over an elevation band, any azimuth."""
    s0, s1 = (math.sin(math.radians(e)) for e in elevation)
    az = rng.uniform(-180.0, 180.0, n)
    el = np.degrees(np.arcsin(rng.uniform(s0, s1, n)))
    return direction(az, el)


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (degrees) between the rows of a [N, 3] and b [M, 3] (not necessarily unit): [N, M]."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(a @ b.T, -1.0, 1.0)))


def _draw_away(rng, n: int, elevation, avoid: np.ndarray, min_sep: float, spread: float = 0.0) -> np.ndarray:
    """n directions drawn like _draw_directions, each at least min_sep degrees from every row of avoid and
    `spread` degrees from the ones already kept (rejection sampling)."""
    kept: list[np.ndarray] = []
    for _ in range(2000):
        for d in _draw_directions(rng, 64, elevation):
            if len(kept) == n:
                return np.array(kept)
            if _angles_deg(d[None], avoid).min() < min_sep:
                continue
            if kept and spread > 0 and _angles_deg(d[None], np.array(kept)).min() < spread:
                continue
            kept.append(d)
    raise ValueError(f"cannot place {n} directions {min_sep} degrees from {len(avoid)} others")


def camera_poses(n_train: int, n_test: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Train and test cameras (OpenGL camera-to-world) at RADIUS from LOOK_AT, looking at it; test cameras at
    least MIN_TEST_CAMERA_SEP degrees from every train camera (drawn with another seed)."""
    tr = _draw_directions(np.random.default_rng(seed + 31), n_train, CAMERA_ELEVATION)
    te = _draw_away(np.random.default_rng(seed + 32), n_test, CAMERA_ELEVATION, tr, MIN_TEST_CAMERA_SEP)
    pose = lambda d: base.look_at_c2w(np.asarray(LOOK_AT) + RADIUS * d, target=LOOK_AT)
    return [pose(d) for d in tr], [pose(d) for d in te]


def _light_from_direction(rng, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist = rng.uniform(*LIGHT_DISTANCE)
    tint = np.array([1.0 + rng.uniform(-LIGHT_TINT, LIGHT_TINT), 1.0, 0.0])
    tint[2] = 2.0 - tint[0] + rng.uniform(-0.03, 0.03)  # warm or cool: red and blue move oppositely
    tint /= tint.mean()
    intensity = LIGHT_IRRADIANCE * dist ** 2 * rng.uniform(*LIGHT_SCALE) * tint
    return np.asarray(LOOK_AT) + dist * d, intensity


def lights(n_train: int, n_test: int, seed: int = 0):
    """Point lights (position [3], intensity [3] in W/sr) for the train and test views: test light directions
    (from LOOK_AT) at least MIN_TEST_LIGHT_SEP degrees from every train light's, drawn with another seed."""
    rng = np.random.default_rng(seed + 41)
    tr_dirs = _draw_directions(rng, n_train, LIGHT_ELEVATION)
    train = [_light_from_direction(rng, d) for d in tr_dirs]
    rng = np.random.default_rng(seed + 42)
    te_dirs = _draw_away(rng, n_test, LIGHT_ELEVATION, tr_dirs, MIN_TEST_LIGHT_SEP, MIN_TEST_LIGHT_SPREAD)
    test = [_light_from_direction(rng, d) for d in te_dirs]
    return train, test


# --------------------------------------------------------------------------------------------------
# procedural assets (numpy only)


def torus_mesh(major: float, minor: float, nu: int = 72, nv: int = 36):
    """Torus about the z axis (centre at the origin), triangles wound outwards, uv = (around, along the tube)."""
    u = 2 * np.pi * np.arange(nu + 1) / nu
    v = 2 * np.pi * np.arange(nv + 1) / nv
    U, V = np.meshgrid(u, v, indexing="ij")
    ring = major + minor * np.cos(V)
    verts = np.stack([ring * np.cos(U), ring * np.sin(U), minor * np.sin(V)], -1).reshape(-1, 3)
    uv = np.stack([U / (2 * np.pi), V / (2 * np.pi)], -1).reshape(-1, 2)
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return verts, faces, uv


def _brick_texture(seed: int) -> np.ndarray:
    try:
        from . import dynamic_scene as dyn
    except ImportError:
        from scenes import dynamic_scene as dyn
    return dyn.brick_texture(seed)


# --------------------------------------------------------------------------------------------------
# the Mitsuba scenes


def _bitmap(mi, img, filt="bilinear"):
    return {"type": "bitmap", "bitmap": mi.Bitmap(img), "filter_type": filt, "raw": True}


def _common(mi, width: int, height: int) -> dict:
    """Integrator, the point light (moved per view) and the sensor (moved per view)."""
    T = mi.ScalarTransform4f
    return {
        "type": "scene",
        "integrator": {"type": "path", "max_depth": MAX_DEPTH, "hide_emitters": True},
        "light": {"type": "point", "position": [0.0, -3.0, 2.0], "intensity": base._rgb((27.0, 27.0, 27.0))},
        "sensor": {
            "type": "perspective", "fov": math.degrees(CAMERA_ANGLE_X), "fov_axis": "x",
            "near_clip": 0.05, "far_clip": 100.0,
            "to_world": T(base._mitsuba_to_world(base.look_at_c2w((0.0, -RADIUS, LOOK_AT[2]), target=LOOK_AT))),
            "sampler": {"type": "ldsampler", "sample_count": 4},
            "film": {"type": "hdrfilm", "width": width, "height": height, "pixel_format": "rgba",
                     "rfilter": {"type": "box"}},
        },
    }


def _ground(mi, asset_dir: Path, bsdf: dict) -> dict:
    v, f, uv = base.disk_mesh(DISK_RADIUS)
    base.write_ply_mesh(asset_dir / "disk.ply", v, f, uv)
    return {"type": "ply", "filename": str(asset_dir / "disk.ply"), "face_normals": True, "bsdf": bsdf}


def default_dict(mi, asset_dir: Path, width: int, height: int, seed: int = 0) -> dict:
    """The default relightable scene as a Mitsuba dict."""
    T = mi.ScalarTransform4f
    d = _common(mi, width, height)
    d["ground"] = _ground(mi, asset_dir, base._diffuse(GROUND_COLOUR))
    c, r, col, alpha = SPHERE
    d["ball"] = {"type": "sphere", "center": list(c), "radius": r,
                 "bsdf": {"type": "roughplastic", "distribution": "ggx", "alpha": alpha,
                          "diffuse_reflectance": base._rgb(col)}}
    c, hs, rot = BOX
    d["box"] = {"type": "cube", "to_world": T().translate(list(c)).rotate([0, 0, 1], rot).scale(list(hs)),
                "bsdf": {"type": "diffuse", "reflectance": _bitmap(
                    mi, base.mosaic_texture(seed + 7, tiles=5, tile_px=16))}}
    (px, py), pr, ph, col = PILLAR
    d["pillar"] = {"type": "cylinder", "p0": [px, py, 0.0], "p1": [px, py, ph], "radius": pr,
                   "bsdf": base._diffuse(col)}
    d["pillar_cap"] = {"type": "disk", "to_world": T().translate([px, py, ph]).scale(pr), "bsdf": base._diffuse(col)}
    return d


def heldout_dict(mi, asset_dir: Path, width: int, height: int, seed: int = 0) -> dict:
    """The held-out relightable scene as a Mitsuba dict."""
    T = mi.ScalarTransform4f
    d = _common(mi, width, height)
    d["ground"] = _ground(mi, asset_dir, {"type": "diffuse", "reflectance": _bitmap(
        mi, base.mosaic_texture(seed + 3, tiles=10, tile_px=16))})
    (tx, ty), R, r, tilt, turn, col, alpha = TORUS
    v, f, uv = torus_mesh(R, r)
    base.write_ply_mesh(asset_dir / "torus.ply", v, f, uv)
    lift = R * math.sin(math.radians(tilt)) + r  # resting on the ground
    d["torus"] = {"type": "ply", "filename": str(asset_dir / "torus.ply"),
                  "to_world": T().translate([tx, ty, lift]).rotate([0, 0, 1], turn).rotate([1, 0, 0], tilt),
                  "bsdf": {"type": "roughplastic", "distribution": "ggx", "alpha": alpha,
                           "diffuse_reflectance": base._rgb(col)}}
    c, gr, galpha = GOLD
    d["gold"] = {"type": "sphere", "center": list(c), "radius": gr,
                 "bsdf": {"type": "roughconductor", "material": "Au", "distribution": "ggx", "alpha": galpha}}
    (px, py), pr, ph = BRICK_PILLAR
    d["pillar"] = {"type": "cylinder", "p0": [px, py, 0.0], "p1": [px, py, ph], "radius": pr,
                   "bsdf": {"type": "diffuse", "reflectance": _bitmap(mi, _brick_texture(seed + 5))}}
    d["pillar_cap"] = {"type": "disk", "to_world": T().translate([px, py, ph]).scale(pr),
                       "bsdf": base._diffuse(MORTAR)}
    return d


SCENES = {"default": default_dict, "heldout": heldout_dict}


class RelightRenderer(base.Renderer):
    """default_scene's Renderer over a relightable scene; ``render(c2w, light_position, light_intensity, spp)``
    moves the point light and the camera, then renders."""

    def __init__(self, variant: str = "default", width: int = WIDTH, height: int = HEIGHT, seed: int | None = None,
                 mitsuba_variant: str | None = None, threads: int = 1):
        if variant not in SCENES:
            raise ValueError(f"unknown relightable scene variant {variant!r} (one of {', '.join(SCENES)})")
        self.scene_variant = variant
        self.scene_seed = SEEDS[variant] if seed is None else seed
        fn = SCENES[variant]

        def scene_fn(mi, asset_dir, w, h, s):
            logger = mi.logger() if hasattr(mi, "logger") else mi.Thread.thread().logger()
            self._log = (logger, logger.log_level())
            logger.set_log_level(mi.LogLevel.Error)  # the ascii-ply performance warning
            return fn(mi, asset_dir, w, h, s)

        try:
            super().__init__(width, height, self.scene_seed, mitsuba_variant, threads, scene_fn=scene_fn)
        finally:
            if hasattr(self, "_log"):
                self._log[0].set_log_level(self._log[1])
        self.scene_params = self.mi.traverse(self.scene)

    def set_light(self, position, intensity) -> None:
        self.scene_params["light.position"] = self.mi.Point3f(*[float(x) for x in position])
        self.scene_params["light.intensity.value"] = self.mi.Color3f(*[float(x) for x in intensity])
        self.scene_params.update()

    def render(self, c2w_gl, light_position, light_intensity, spp: int = SPP, seed: int = 0) -> np.ndarray:
        """Linear, premultiplied RGBA float32 [H, W, 4] of camera c2w_gl under the given point light."""
        self.set_light(light_position, light_intensity)
        return self.render_rgba(c2w_gl, spp, seed=seed)


def to_rgba8(premul: np.ndarray) -> np.ndarray:
    """default_scene.to_rgba8 (8-bit sRGB, straight alpha), black where the alpha rounds to 0."""
    out = base.to_rgba8(premul)
    out[out[..., 3] == 0, :3] = 0
    return out


_RENDERERS: dict = {}


def render_view(c2w, light_position, light_intensity, size: int = WIDTH, spp: int = SPP,
                variant: str = "default", *, seed: int = 0, threads: int = 1,
                mitsuba_variant: str | None = None) -> np.ndarray:
    """Render one view of a relightable scene (``variant`` "default" or "heldout") from the OpenGL
    camera-to-world ``c2w`` under ONE point light (world position in metres, RGB intensity in W/sr), at
    size x size pixels and ``spp`` samples per pixel. Returns linear, premultiplied RGBA float32
    [size, size, 4] (alpha = coverage; ``to_rgba8`` makes the 8-bit PNG pixels of it). The
    loaded scene is kept for the next call with the same variant and size."""
    key = (variant, int(size), mitsuba_variant)
    r = _RENDERERS.get(key)
    if r is None:
        r = _RENDERERS[key] = RelightRenderer(variant, int(size), int(size), None, mitsuba_variant, threads)
    r.dr.set_thread_count(threads)
    return r.render(np.asarray(c2w, np.float64), light_position, light_intensity, spp, seed)


# --------------------------------------------------------------------------------------------------
# the dataset


def _frames(split: str, poses, lts) -> list[dict]:
    return [{"file_path": f"{split}/r_{i:03d}",
             "transform_matrix": [[float(x) for x in row] for row in c2w],
             "light_position": [float(x) for x in lp],
             "light_intensity": [float(x) for x in li]}
            for i, (c2w, (lp, li)) in enumerate(zip(poses, lts))]


def views(n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0) -> dict:
    """{"train": [(c2w, (light_position, light_intensity)), ...], "test": [...]} of a set."""
    cam_tr, cam_te = camera_poses(n_train, n_test, seed)
    li_tr, li_te = lights(n_train, n_test, seed)
    return {"train": list(zip(cam_tr, li_tr)), "test": list(zip(cam_te, li_te))}


def generate(out_dir=COMMITTED, variant: str = "default", width: int = WIDTH, n_train: int = N_TRAIN,
             n_test: int = N_TEST, spp: int = SPP, seed: int | None = None, mitsuba_variant: str | None = None,
             threads: int = 1, verbose: bool = True) -> Path:
    """Render a relightable scene into out_dir (NeRF-synthetic layout with a point light per frame). Written
    to a temporary folder beside out_dir and renamed into place when complete."""
    out_dir = Path(out_dir)
    seed = SEEDS[variant] if seed is None else seed
    sets = views(n_train, n_test, seed)
    with base.replaced_when_complete(out_dir) as work:
        t0 = time.time()
        r = RelightRenderer(variant, width, width, seed, mitsuba_variant, threads)
        if verbose:
            print(f"relightable scene {variant!r}: mitsuba variant {r.variant}, {threads} thread(s), "
                  f"{width}x{width}, {spp} spp, {n_train} train + {n_test} test views", flush=True)
        for split, vs in sets.items():
            (work / split).mkdir()
            for i, (c2w, (lp, li)) in enumerate(vs):
                ts = time.time()
                img = r.render(c2w, lp, li, spp, seed=7919 * seed + 1000 * (split == "test") + i)
                base.save_png(work / split / f"r_{i:03d}.png", to_rgba8(img))
                if verbose:
                    print(f"  {split} {i + 1}/{len(vs)}  {time.time() - ts:.2f}s", flush=True)
            meta = {"camera_angle_x": CAMERA_ANGLE_X,
                    "frames": _frames(split, [c for c, _ in vs], [lt for _, lt in vs])}
            (work / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2) + "\n")
        if verbose:
            print(f"done in {time.time() - t0:.0f}s: {out_dir}", flush=True)
    return out_dir


_generate = generate  # heldout_scene_path's `generate` argument hides the function


# --------------------------------------------------------------------------------------------------
# noise, where the datasets are


def _psnr(a: np.ndarray, b: np.ndarray, mask=None) -> float:
    err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(10.0 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def measure_noise(spp: int = SPP, ref_spp: int = 16 * SPP, view_ids=(0, 37, 71), variant: str = "default",
                  width: int = WIDTH, mitsuba_variant=None, threads: int = 1) -> list[dict]:
    """PSNR (8-bit) of train views at `spp` against the same view and light at `ref_spp` (another seed):
    composited on black, on white, and over the pixels opaque in both; and the render times."""
    sets = views(N_TRAIN, N_TEST, SEEDS[variant])["train"]
    r = RelightRenderer(variant, width, width, None, mitsuba_variant, threads)
    out = []
    for v in view_ids:
        c2w, (lp, li) = sets[v]
        row = {"view": v}
        imgs = []
        for s, n in ((1, spp), (2, ref_spp)):
            ts = time.time()
            imgs.append(to_rgba8(r.render(c2w, lp, li, n, seed=s)))
            row[f"seconds_{n}spp"] = round(time.time() - ts, 2)
        a = [im[..., 3:4].astype(np.float64) / 255.0 for im in imgs]
        black = [np.round(im[..., :3] * al) for im, al in zip(imgs, a)]
        white = [np.round(im[..., :3] * al + 255.0 * (1 - al)) for im, al in zip(imgs, a)]
        row["psnr_black"] = round(_psnr(*black), 2)
        row["psnr_white"] = round(_psnr(*white), 2)
        opaque = (imgs[0][..., 3] == 255) & (imgs[1][..., 3] == 255)
        row["psnr_opaque"] = round(_psnr(imgs[0][..., :3], imgs[1][..., :3], opaque), 2)
        out.append(row)
    return out


def relight_scene_path() -> Path:
    """The folder of the relightable default scene (NeRF-synthetic layout with a point light per frame): the
    committed ``scenes/data/relightable``, else a cached copy, else one rendered now into the cache (needs
    ``pip install mitsuba``)."""
    return base.committed_cached_or_rendered(COMMITTED, "relightable", generate, "scenes.relight_scene")


def heldout_scene_path(generate: bool = True) -> Path:
    """The folder of the held-out relightable scene, ``scenes/relight_heldout`` under ``$SPLAT_CACHE_DIR``
    (default ``~/.cache/splat``): rendered there now if missing and ``generate`` (needs Mitsuba; 1.5-3
    minutes on 2 cores), else a FileNotFoundError says how to render it."""
    cache = base._cache_dir("relight_heldout")
    return base.cached_or_rendered(cache, "the held-out relightable scene",
                                   f"python scenes/relight_scene.py --variant heldout {cache}",
                                   lambda c: _generate(c, "heldout", threads=max(1, os.cpu_count() or 1)), generate)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Render the relightable default scene (or the held-out one) with Mitsuba 3: NeRF-synthetic "
                    "layout, one point light per image, its position and intensity in the transforms.")
    ap.add_argument("out_dir", type=Path, nargs="?", default=None,
                    help="output folder, replaced when complete (default: scenes/data/relightable; with "
                         "--variant heldout: scenes/relight_heldout under $SPLAT_CACHE_DIR or ~/.cache/splat)")
    ap.add_argument("--out", type=Path, default=None, help="the output folder (instead of OUT_DIR)")
    ap.add_argument("--variant", choices=VARIANTS, default="default", help="which scene (default: default)")
    ap.add_argument("--width", type=int, default=WIDTH, help="image width and height in pixels")
    ap.add_argument("--n-train", type=int, default=N_TRAIN, help="number of training views")
    ap.add_argument("--n-test", type=int, default=N_TEST, help="number of test views")
    ap.add_argument("--spp", type=int, default=SPP, help="samples per pixel")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the cameras, lights, textures and noise (default: 0, heldout: 100)")
    ap.add_argument("--threads", type=int, default=1, help="render threads")
    ap.add_argument("--mitsuba-variant", default=None,
                    help="mitsuba variant (default: llvm_ad_rgb if it works, else scalar_rgb)")
    ap.add_argument("--noise", action="store_true",
                    help="only measure the Monte-Carlo noise: PSNR of 3 train views at --spp against 16x --spp")
    a = ap.parse_args(argv)
    if a.noise:
        print(json.dumps(measure_noise(a.spp, 16 * a.spp, variant=a.variant, width=a.width,
                                       mitsuba_variant=a.mitsuba_variant, threads=a.threads), indent=2))
        return 0
    out = a.out or a.out_dir or (COMMITTED if a.variant == "default" else base._cache_dir("relight_heldout"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that an interrupted run removes its partial folder
    generate(out, a.variant, a.width, a.n_train, a.n_test, a.spp, a.seed, a.mitsuba_variant, a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
