"""The embedded default scene: a small still life rendered by Mitsuba 3 in the NeRF-synthetic layout.

The dataset that ``python train.py`` uses when it is given no data lives in ``scenes/data/default/``
(committed, so that nothing is downloaded); this module defines the scene and regenerates that folder.
Mitsuba is imported lazily by the generator only; reading the dataset needs nothing but the files.

Scene (world is z-up like Blender; units are metres; everything sits on a round ground disk of radius
1.25 centred at the origin, and the cameras look at ``LOOK_AT``):

* ground: a disk mesh (generated in code) with a stone-mosaic bitmap texture generated in code (random
  muted tile colours, dark grout lines, 16 x 16 tiles over the disk's bounding square), diffuse;
* a gold sphere (rough conductor, GGX alpha 0.12): blurry mirror reflections of the sky, the floor and the
  neighbours, plus a sharp highlight from the point light; both move with the view;
* a teal plastic sphere (rough plastic, GGX alpha 0.06): a diffuse body with a small white highlight;
* a cube with a checkerboard texture (cream / navy, 4 x 4 checks per face), rotated 30 degrees, diffuse;
* a striped pillar (cylinder with a checkerboard-mapped 16 x 6 pattern and a top cap), diffuse; on top of
  it a wireframe icosahedron made of thin copper-coloured rods with small balls at its vertices;
* a fence of thin dark posts and two thin rails along an arc behind the objects (2-3 pixels wide);
* three "antennas": thin rods carrying small saturated red, green and blue marker balls at the known
  positions ``MARKERS`` (used by the tests to check the camera convention: project them, find them).

Lighting: a sky-gradient environment map (generated in code: blue-white above, white at the horizon,
dim brown below) for soft light, plus one point light above the front-right for hard shadows.
The environment is hidden from the camera (``hide_emitters``), so the background is transparent:
alpha is the coverage of the geometry (the disk, the objects), as in NeRF-synthetic.

Cameras: pinhole, ``camera_angle_x`` = 40 degrees, square images, all at distance ``RADIUS`` from
``LOOK_AT`` on the upper hemisphere. Train views follow a golden-angle spiral over elevations 12..68
degrees (uniform in area); test views follow a second spiral over elevations 15..62 degrees whose
azimuth offset keeps every test view as far as possible from the train views (at least ~5 degrees from
the nearest one, about a third of the train spacing), so no test view repeats a train view.

Output (``generate``): ``transforms_train.json``, ``transforms_test.json`` (``camera_angle_x``; frames
with ``file_path`` ``./train/r_i`` and a 4x4 camera-to-world ``transform_matrix`` in the OpenGL/Blender
convention: x right, y up, z back), 8-bit sRGB RGBA PNGs ``train/r_i.png`` and ``test/r_i.png`` with
straight (un-premultiplied) alpha, and ``points3d.ply`` (float x, y, z and uchar red, green, blue):
points on the visible surfaces with their rendered colours and a little noise, like an SfM sparse cloud.

Rendering: Mitsuba's path tracer (max depth 5, hidden emitters), an ``ldsampler`` (low discrepancy;
it rounds the sample count up to a power of 4), 256 samples per pixel, a box reconstruction filter, and
the ``llvm_ad_rgb`` variant where it works (Debian needs ``apt-get install libllvm19``), otherwise
``scalar_rgb`` (about 4x slower). The committed set: 256 x 256 pixels, 72 train and 18 test views,
about 7 MB; rendering it took 8.5-9.5 minutes of one core with ``llvm_ad_rgb`` (5-7 s a view on a
shared 2-core machine). Monte-Carlo noise: a 256-spp view against a 1024-spp render of the same view
scores 44-47 dB PSNR composited on white (41-43 dB over the opaque pixels alone), far above what a
trained model reaches, so noise does not cap the test PSNR.

Run ``python -m scenes.default_scene --out scenes/data/default`` to regenerate it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------------
# scene constants (the tests read these)

WIDTH = 256
HEIGHT = 256
N_TRAIN = 72
N_TEST = 18
SPP = 256
CAMERA_ANGLE_X = math.radians(40.0)
RADIUS = 3.7  # camera distance from LOOK_AT
LOOK_AT = (0.0, 0.0, 0.35)
DISK_RADIUS = 1.25
TRAIN_ELEVATION = (12.0, 68.0)  # degrees
TEST_ELEVATION = (15.0, 62.0)

# marker balls on thin antennas: name -> (centre xyz, linear rgb reflectance); radius MARKER_RADIUS
MARKER_RADIUS = 0.04
MARKERS = {
    "red": ((-0.95, 0.25, 1.00), (0.80, 0.02, 0.02)),
    "green": ((0.30, 0.95, 1.10), (0.03, 0.65, 0.03)),
    "blue": ((0.80, -0.70, 0.95), (0.03, 0.05, 0.85)),
}
MARKER_HUES = {"red": 0.0, "green": 120.0, "blue": 240.0}  # degrees, of the rendered sRGB colour (approx.)

GOLD_SPHERE = ((0.33, -0.22, 0.32), 0.32)
TEAL_SPHERE = ((-0.52, 0.50, 0.22), 0.22)
CUBE = ((-0.40, -0.52, 0.22), 0.22, 30.0)  # centre, half size, rotation about z (degrees)
PILLAR = ((0.45, 0.52), 0.13, 0.55)  # xy, radius, height
ICOSA = (0.20, 0.012)  # circumradius (it rests on the pillar), rod radius
# fence: arc radius, from/to (degrees), posts, post radius, rail radius, post height, rail heights
FENCE = (1.05, 200.0, 330.0, 9, 0.015, 0.011, 0.48, (0.17, 0.40))
LIGHT = ((2.2, -1.6, 3.6), 32.0)  # point light position, intensity (W/sr, grey)

ROOT = Path(__file__).resolve().parent
COMMITTED = ROOT / "data" / "default"


# --------------------------------------------------------------------------------------------------
# cameras


def look_at_c2w(eye, target=LOOK_AT, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world 4x4 in the OpenGL/Blender convention (x right, y up, z back)."""
    eye = np.asarray(eye, np.float64)
    target = np.asarray(target, np.float64)
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(np.asarray(up, np.float64), back)
    right /= np.linalg.norm(right)
    upv = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, upv, back, eye
    return m


def orbit_poses(n: int, elevation_deg: tuple[float, float], azimuth_offset_deg: float) -> list[np.ndarray]:
    """n cameras on a golden-angle spiral over an elevation band (uniform in area), looking at LOOK_AT."""
    golden = math.pi * (3.0 - math.sqrt(5.0))
    s0, s1 = (math.sin(math.radians(e)) for e in elevation_deg)
    poses = []
    for i in range(n):
        el = math.asin(s0 + (s1 - s0) * (i + 0.5) / n)
        az = math.radians(azimuth_offset_deg) + i * golden
        d = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        poses.append(look_at_c2w(np.asarray(LOOK_AT) + RADIUS * d))
    return poses


def train_test_poses(n_train: int, n_test: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Train and test cameras. The test spiral's azimuth offset (relative to the train spiral's, which the
    seed draws) is the one, on a half-degree grid, that keeps the test views farthest from every train view."""
    rng = np.random.default_rng(seed)
    off = float(rng.uniform(0.0, 360.0))
    train = orbit_poses(n_train, TRAIN_ELEVATION, off)
    tr = np.array([m[:3, 2] for m in train])
    best, best_rel = -1.0, 0.0
    for rel in np.arange(0.0, 360.0, 0.5):
        te = np.array([m[:3, 2] for m in orbit_poses(n_test, TEST_ELEVATION, off + rel)])
        closest = np.arccos(np.clip(te @ tr.T, -1.0, 1.0)).min() if n_test and n_train else 0.0
        if closest > best + 1e-9:
            best, best_rel = closest, float(rel)
    return train, orbit_poses(n_test, TEST_ELEVATION, off + best_rel)


def intrinsics(width: int, height: int, camera_angle_x: float = CAMERA_ANGLE_X) -> np.ndarray:
    """The pinhole K that NeRF-synthetic loaders derive (focal from camera_angle_x, principal point at the centre)."""
    f = 0.5 * width / math.tan(0.5 * camera_angle_x)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def project(points: np.ndarray, c2w_gl: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points with an OpenGL camera-to-world: returns (pixel coords [N,2] in continuous
    image coordinates, pixel (i, j) covering [i, i+1) x [j, j+1)), and depths [N])."""
    w2c = np.linalg.inv(c2w_gl @ np.diag([1.0, -1.0, -1.0, 1.0]))  # OpenCV: flip y and z camera axes
    p = np.asarray(points, np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    uv = p @ K.T
    return uv[:, :2] / uv[:, 2:3], p[:, 2]


# --------------------------------------------------------------------------------------------------
# procedural assets (numpy only)


def mosaic_texture(seed: int = 0, tiles: int = 16, tile_px: int = 16) -> np.ndarray:
    """Stone-mosaic floor texture, linear RGB float32 [H, W, 3]: random muted tiles, dark grout lines,
    a slight per-texel grain."""
    rng = np.random.default_rng(seed + 1)
    base = np.array([[0.55, 0.45, 0.33], [0.40, 0.40, 0.38], [0.62, 0.56, 0.46], [0.35, 0.27, 0.20],
                     [0.50, 0.52, 0.50], [0.45, 0.36, 0.30]])
    cols = base[rng.integers(0, len(base), (tiles, tiles))] * rng.uniform(0.7, 1.15, (tiles, tiles, 1))
    img = np.repeat(np.repeat(cols, tile_px, 0), tile_px, 1)
    grout = np.zeros((tiles * tile_px,), bool)
    grout[::tile_px] = True
    grout[tile_px - 1::tile_px] = True
    img[grout, :, :] = 0.08
    img[:, grout, :] = 0.08
    img *= rng.uniform(0.9, 1.1, img.shape[:2])[..., None]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def sky_envmap(width: int = 128, height: int = 64) -> np.ndarray:
    """Lat-long sky in Mitsuba's envmap layout (local +y up), linear RGB float32 [H, W, 3]."""
    theta = (np.arange(height) + 0.5) / height * math.pi  # 0 at the zenith
    cos_t = np.cos(theta)[:, None]
    zen = np.array([0.45, 0.60, 0.95])
    hor = np.array([1.00, 0.98, 0.92])
    gnd = np.array([0.20, 0.16, 0.12])
    up = np.clip(cos_t, 0.0, 1.0)[..., None]
    sky = hor + (zen - hor) * up ** 0.6
    down = np.clip(-cos_t, 0.0, 1.0)[..., None] ** 0.3
    col = np.where(cos_t[..., None] >= 0, sky, hor + (gnd - hor) * down)
    col = np.broadcast_to(col, (height, width, 3)) * 0.7
    return np.ascontiguousarray(col, dtype=np.float32)


def disk_mesh(radius: float, rings: int = 24, segments: int = 96):
    """Triangulated disk in the z=0 plane, normals +z, planar uv = (x, y) mapped from the bounding square."""
    verts = [(0.0, 0.0, 0.0)]
    for r in range(1, rings + 1):
        rr = radius * r / rings
        for s in range(segments):
            a = 2 * math.pi * s / segments
            verts.append((rr * math.cos(a), rr * math.sin(a), 0.0))
    faces = []
    for s in range(segments):
        faces.append((0, 1 + s, 1 + (s + 1) % segments))
    for r in range(1, rings):
        o0, o1 = 1 + (r - 1) * segments, 1 + r * segments
        for s in range(segments):
            a, b = o0 + s, o0 + (s + 1) % segments
            c, d = o1 + s, o1 + (s + 1) % segments
            faces += [(a, c, d), (a, d, b)]
    v = np.array(verts)
    uv = (v[:, :2] / radius + 1.0) * 0.5
    return v, np.array(faces), uv


def write_ply_mesh(path: Path, v: np.ndarray, f: np.ndarray, uv: np.ndarray | None = None) -> None:
    lines = ["ply", "format ascii 1.0", f"element vertex {len(v)}", "property float x", "property float y",
             "property float z"]
    if uv is not None:
        lines += ["property float u", "property float v"]
    lines += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    data = np.hstack([v, uv]) if uv is not None else v
    body = [" ".join(f"{x:.6f}" for x in row) for row in data]
    body += [f"3 {a} {b} {c}" for a, b, c in f]
    path.write_text("\n".join(lines + body) + "\n")


def icosahedron(radius: float):
    p = (1 + math.sqrt(5)) / 2
    v = np.array([(-1, p, 0), (1, p, 0), (-1, -p, 0), (1, -p, 0), (0, -1, p), (0, 1, p), (0, -1, -p), (0, 1, -p),
                  (p, 0, -1), (p, 0, 1), (-p, 0, -1), (-p, 0, 1)], float)
    v *= radius / np.linalg.norm(v[0])
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    edge = d[d > 1e-9].min()
    edges = [(i, j) for i in range(12) for j in range(i + 1, 12) if abs(d[i, j] - edge) < 1e-6]
    return v, edges


def icosa_geometry():
    """World vertices and edges of the wireframe icosahedron resting on top of the pillar."""
    v, edges = icosahedron(ICOSA[0])
    # rotate so that a vertex points down (rests on the pillar's top)
    a = v[3] / np.linalg.norm(v[3])  # any vertex
    target = np.array([0.0, 0.0, -1.0])
    axis = np.cross(a, target)
    s, c = np.linalg.norm(axis), float(a @ target)
    axis = axis / s
    Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    R = np.eye(3) + s * Kx + (1 - c) * Kx @ Kx
    v = v @ R.T
    (px, py), _, ph = PILLAR
    v = v + np.array([px, py, ph + ICOSA[0] + ICOSA[1]])
    return v, edges


def fence_geometry():
    """Post bottoms/tops and rail segments of the fence."""
    rad, a0, a1, n, _, _, h, rails = FENCE
    angs = np.radians(np.linspace(a0, a1, n))
    xy = np.stack([rad * np.cos(angs), rad * np.sin(angs)], 1)
    posts = [((x, y, 0.0), (x, y, h)) for x, y in xy]
    segs = []
    for z in rails:
        for i in range(n - 1):
            segs.append(((xy[i, 0], xy[i, 1], z), (xy[i + 1, 0], xy[i + 1, 1], z)))
    return posts, segs


# --------------------------------------------------------------------------------------------------
# the Mitsuba scene


def _rgb(c):
    return {"type": "rgb", "value": [float(x) for x in c]}


def _diffuse(c):
    return {"type": "diffuse", "reflectance": _rgb(c)}


def scene_dict(mi, asset_dir: Path, width: int, height: int, seed: int = 0) -> dict:
    """The scene as a Mitsuba dict (one sensor; views are set by changing its to_world)."""
    T = mi.ScalarTransform4f
    d: dict = {"type": "scene"}
    d["integrator"] = {"type": "path", "max_depth": 5, "hide_emitters": True}

    # ground disk with the mosaic bitmap
    v, f, uv = disk_mesh(DISK_RADIUS)
    write_ply_mesh(asset_dir / "disk.ply", v, f, uv)
    tex = mi.Bitmap(mosaic_texture(seed))
    d["ground"] = {"type": "ply", "filename": str(asset_dir / "disk.ply"), "face_normals": True,
                   "bsdf": {"type": "diffuse", "reflectance": {"type": "bitmap", "bitmap": tex,
                                                               "filter_type": "bilinear", "raw": True}}}

    (c, r) = GOLD_SPHERE
    d["gold"] = {"type": "sphere", "center": list(c), "radius": r,
                 "bsdf": {"type": "roughconductor", "material": "Au", "distribution": "ggx", "alpha": 0.12}}
    (c, r) = TEAL_SPHERE
    d["teal"] = {"type": "sphere", "center": list(c), "radius": r,
                 "bsdf": {"type": "roughplastic", "distribution": "ggx", "alpha": 0.06,
                          "diffuse_reflectance": _rgb((0.03, 0.30, 0.30))}}

    (c, hs, rot) = CUBE
    d["cube"] = {"type": "cube", "to_world": T().translate(list(c)).rotate([0, 0, 1], rot).scale(hs),
                 "bsdf": {"type": "diffuse", "reflectance": {
                     "type": "checkerboard", "color0": _rgb((0.80, 0.74, 0.60)), "color1": _rgb((0.06, 0.09, 0.30)),
                     "to_uv": T().scale([4.0, 4.0, 1.0])}}}

    (px, py), pr, ph = PILLAR
    stripes = {"type": "diffuse", "reflectance": {
        "type": "checkerboard", "color0": _rgb((0.75, 0.30, 0.12)), "color1": _rgb((0.85, 0.82, 0.75)),
        "to_uv": T().scale([16.0, 6.0, 1.0])}}
    d["pillar"] = {"type": "cylinder", "p0": [px, py, 0.0], "p1": [px, py, ph], "radius": pr, "bsdf": stripes}
    d["pillar_cap"] = {"type": "disk", "to_world": T().translate([px, py, ph]).scale(pr),
                       "bsdf": _diffuse((0.85, 0.82, 0.75))}

    copper = {"type": "roughconductor", "material": "Cu", "distribution": "ggx", "alpha": 0.3}
    iv, edges = icosa_geometry()
    for k, (i, j) in enumerate(edges):
        d[f"icosa_edge_{k}"] = {"type": "cylinder", "p0": list(map(float, iv[i])), "p1": list(map(float, iv[j])),
                                "radius": ICOSA[1], "bsdf": copper}
    for k, p in enumerate(iv):
        d[f"icosa_vertex_{k}"] = {"type": "sphere", "center": list(map(float, p)), "radius": ICOSA[1] * 1.8,
                                  "bsdf": copper}

    dark = _diffuse((0.05, 0.04, 0.035))
    posts, rails = fence_geometry()
    pr_, rr_ = FENCE[4], FENCE[5]
    for k, (a, b) in enumerate(posts):
        d[f"fence_post_{k}"] = {"type": "cylinder", "p0": list(a), "p1": list(b), "radius": pr_, "bsdf": dark}
        d[f"fence_cap_{k}"] = {"type": "sphere", "center": list(b), "radius": pr_, "bsdf": dark}
    for k, (a, b) in enumerate(rails):
        d[f"fence_rail_{k}"] = {"type": "cylinder", "p0": [float(x) for x in a], "p1": [float(x) for x in b],
                                "radius": rr_, "bsdf": dark}

    grey = _diffuse((0.55, 0.55, 0.55))
    for name, (c, col) in MARKERS.items():
        d[f"marker_{name}"] = {"type": "sphere", "center": list(c), "radius": MARKER_RADIUS, "bsdf": _diffuse(col)}
        d[f"antenna_{name}"] = {"type": "cylinder", "p0": [c[0], c[1], 0.0], "p1": [c[0], c[1], c[2] - MARKER_RADIUS],
                                "radius": 0.010, "bsdf": grey}

    # lights: a sky-gradient environment (z-up world: rotate Mitsuba's +y up to +z) and a point light
    d["sky"] = {"type": "envmap", "bitmap": mi.Bitmap(sky_envmap()),
                "to_world": T().rotate([1, 0, 0], 90.0)}
    lp, li = LIGHT
    d["sun"] = {"type": "point", "position": list(lp), "intensity": _rgb((li, li * 0.96, li * 0.9))}

    d["sensor"] = {
        "type": "perspective", "fov": math.degrees(CAMERA_ANGLE_X), "fov_axis": "x",
        "near_clip": 0.05, "far_clip": 100.0,
        "to_world": T(_mitsuba_to_world(look_at_c2w((RADIUS, 0.0, LOOK_AT[2])))),
        "sampler": {"type": "ldsampler", "sample_count": 4},
        "film": {"type": "hdrfilm", "width": width, "height": height, "pixel_format": "rgba",
                 "rfilter": {"type": "box"}},
    }
    return d


def _mitsuba_to_world(c2w_gl: np.ndarray) -> list:
    """Mitsuba's camera looks down +z with +y up and +x to the left: flip the OpenGL x and z axes."""
    return (np.asarray(c2w_gl) @ np.diag([-1.0, 1.0, -1.0, 1.0])).tolist()


# --------------------------------------------------------------------------------------------------
# rendering


def _llvm_works() -> bool:
    """Whether the llvm_ad_rgb variant renders here (a broken LLVM aborts the process: probe in a child)."""
    code = ("import mitsuba as mi; mi.set_variant('llvm_ad_rgb'); "
            "s = mi.load_dict({'type': 'scene', 'i': {'type': 'path'}, 's': {'type': 'sphere'}}); "
            "img = mi.render(s, sensor=mi.load_dict({'type': 'perspective', 'film': {'type': 'hdrfilm', "
            "'width': 8, 'height': 8}}), spp=4); print('ok')")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=_llvm_env())
    except Exception:
        return False
    return r.returncode == 0 and "ok" in r.stdout


def _llvm_env() -> dict:
    env = dict(os.environ)
    if "DRJIT_LIBLLVM_PATH" not in env:
        for cand in ("/usr/lib/x86_64-linux-gnu/libLLVM-19.so", "/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1",
                     "/usr/lib/aarch64-linux-gnu/libLLVM-19.so"):
            if os.path.exists(cand):
                env["DRJIT_LIBLLVM_PATH"] = cand
                break
    return env


def _import_mitsuba(variant: str | None, threads: int):
    if variant is None:
        variant = "llvm_ad_rgb" if _llvm_works() else "scalar_rgb"
    if variant.startswith("llvm"):
        os.environ.update({k: v for k, v in _llvm_env().items() if k == "DRJIT_LIBLLVM_PATH"})
    try:
        import drjit as dr
        import mitsuba as mi
    except ImportError as e:  # pragma: no cover
        raise ImportError("the default scene generator needs Mitsuba 3: pip install mitsuba") from e
    mi.set_variant(variant)
    dr.set_thread_count(threads)
    return mi, dr, variant


class Renderer:
    """One loaded scene; renders any camera-to-world (OpenGL convention).

    ``scene_fn(mi, asset_dir, width, height, seed)`` builds the Mitsuba dict (default: this module's
    ``scene_dict``); ``load`` swaps in another dict later (the dynamic scene loads one per instant)."""

    def __init__(self, width=WIDTH, height=HEIGHT, seed=0, variant=None, threads=1, scene_fn=None):
        self.mi, self.dr, self.variant = _import_mitsuba(variant, threads)
        self._tmp = tempfile.TemporaryDirectory(prefix="splat_scene_")
        self.asset_dir = Path(self._tmp.name)
        self.load((scene_fn or scene_dict)(self.mi, self.asset_dir, width, height, seed))
        self.width, self.height = width, height

    def load(self, d: dict) -> None:
        """Make the Mitsuba scene dict ``d`` (with one sensor) the rendered scene."""
        self.scene = self.mi.load_dict(d)
        self.sensor = self.scene.sensors()[0]
        self.params = self.mi.traverse(self.sensor)

    def _set_pose(self, c2w_gl):
        self.params["to_world"] = self.mi.ScalarTransform4f(_mitsuba_to_world(c2w_gl))
        self.params.update()

    def render_rgba(self, c2w_gl, spp: int, seed: int = 0) -> np.ndarray:
        """Linear, premultiplied RGBA float32 [H, W, 4]."""
        self._set_pose(c2w_gl)
        img = self.mi.render(self.scene, sensor=self.sensor, spp=spp, seed=seed)
        return np.asarray(img, dtype=np.float32)

    def render_positions(self, c2w_gl, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """World positions of the first hit of one ray per pixel [H, W, 3] and their hit mask [H, W]."""
        mi = self.mi
        integ = mi.load_dict({"type": "aov", "aovs": "dd:depth,pos:position"})
        self._set_pose(c2w_gl)
        mi.render(self.scene, sensor=self.sensor, integrator=integ, spp=1, seed=seed)
        bmp = self.sensor.film().bitmap()
        names = [bmp.struct_()[i].name for i in range(bmp.channel_count())]
        arr = np.asarray(bmp, dtype=np.float32)
        depth = arr[..., [i for i, n in enumerate(names) if n.startswith("dd")][0]]
        pos = np.stack([arr[..., names.index(f"pos.{c}")] for c in "XYZ"], -1)
        return pos, depth > 0


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def to_rgba8(premul: np.ndarray) -> np.ndarray:
    """Premultiplied linear RGBA -> 8-bit sRGB RGBA with straight alpha (as PNGs store it)."""
    a = np.clip(premul[..., 3:4], 0.0, 1.0)
    rgb = np.where(a > 1e-6, premul[..., :3] / np.maximum(a, 1e-6), 0.0)
    out = np.concatenate([linear_to_srgb(rgb), a], -1)
    return np.round(out * 255.0).astype(np.uint8)


def save_png(path: Path, rgba8: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(rgba8, "RGBA").save(tmp, optimize=True)
    os.replace(tmp, path)


def write_points_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary little-endian ply: float x, y, z; uchar red, green, blue."""
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec = np.empty(len(xyz), dt)
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["red"], rec["green"], rec["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(xyz)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(rec.tobytes())
    os.replace(tmp, path)


def read_points_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads what write_points_ply writes (binary little-endian, x y z red green blue)."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").splitlines()
    n = int(next(l for l in header if l.startswith("element vertex")).split()[-1])
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec = np.frombuffer(raw, dt, count=n, offset=end)
    return (np.stack([rec["x"], rec["y"], rec["z"]], 1).astype(np.float32),
            np.stack([rec["red"], rec["green"], rec["blue"]], 1))


def _frames(poses, split):
    return [{"file_path": f"./{split}/r_{i}", "rotation": 0.0,
             "transform_matrix": [[float(x) for x in row] for row in p]} for i, p in enumerate(poses)]


@contextlib.contextmanager
def replaced_when_complete(out_dir):
    """Yields a fresh temporary folder beside out_dir; when the block completes, out_dir (if any) is
    removed and the folder renamed to it; when it raises (or is interrupted), the folder is removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out_dir.name + ".partial.", dir=out_dir.parent))
    work.chmod(0o755)
    try:
        yield work
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def generate(out_dir, width: int = WIDTH, n_train: int = N_TRAIN, n_test: int = N_TEST, spp: int = SPP,
             seed: int = 0, n_points: int = 12000, variant: str | None = None, threads: int = 1,
             verbose: bool = True) -> Path:
    """Render the default scene into out_dir (NeRF-synthetic layout). Written to a temporary folder
    beside out_dir and renamed into place when complete."""
    out_dir = Path(out_dir)
    with replaced_when_complete(out_dir) as work:
        t0 = time.time()
        r = Renderer(width, width, seed, variant, threads)
        if verbose:
            print(f"mitsuba variant {r.variant}, {threads} thread(s), {width}x{width}, {spp} spp", flush=True)
        train, test = train_test_poses(n_train, n_test, seed)
        for split, poses in (("train", train), ("test", test)):
            (work / split).mkdir()
            for i, c2w in enumerate(poses):
                ts = time.time()
                img = r.render_rgba(c2w, spp, seed=1000 * (split == "test") + i + 7919 * seed)
                save_png(work / split / f"r_{i}.png", to_rgba8(img))
                if verbose:
                    print(f"  {split} {i + 1}/{len(poses)}  {time.time() - ts:.1f}s", flush=True)
            meta = {"camera_angle_x": CAMERA_ANGLE_X, "frames": _frames(poses, split)}
            (work / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2) + "\n")
        xyz, rgb = sparse_points(r, train, work, n_points, seed)
        write_points_ply(work / "points3d.ply", xyz, rgb)
        if verbose:
            print(f"done in {time.time() - t0:.0f}s: {out_dir}", flush=True)
    return out_dir


def sparse_points(r: Renderer, poses, img_dir: Path, n_points: int, seed: int, n_views: int = 12):
    """An SfM-like sparse cloud: first hits of single rays through random pixels of some train views,
    coloured by the rendered (sRGB) pixel, with ~3 mm of position noise and a little colour noise."""
    from PIL import Image

    rng = np.random.default_rng(seed + 2)
    views = np.linspace(0, len(poses) - 1, n_views).round().astype(int)
    per = int(math.ceil(n_points / n_views))
    xyz_all, rgb_all = [], []
    for k, v in enumerate(views):
        img = np.asarray(Image.open(img_dir / "train" / f"r_{v}.png"))
        xyz, rgb = surface_samples(r, poses[v], img, per, rng, seed=5000 + k)
        xyz_all.append(xyz)
        rgb_all.append(rgb)
    return noisy_points(np.concatenate(xyz_all)[:n_points], np.concatenate(rgb_all)[:n_points], rng)


def surface_samples(r: Renderer, c2w, img: np.ndarray, count: int, rng, seed: int):
    """Up to `count` random opaque pixels of the rendered RGBA8 view `img` (camera c2w): the world
    positions of their first hits (one ray each) and their sRGB colours."""
    pos, hit = r.render_positions(c2w, seed=seed)
    ok = hit & (img[..., 3] == 255)
    idx = np.flatnonzero(ok.ravel())
    pick = rng.choice(idx, size=min(count, len(idx)), replace=False)
    return pos.reshape(-1, 3)[pick], img[..., :3].reshape(-1, 3)[pick]


def noisy_points(xyz: np.ndarray, rgb: np.ndarray, rng):
    """~3 mm of position noise and a little colour noise, like an SfM sparse cloud: (float32, uint8)."""
    rgb = rgb.astype(np.float64)
    xyz = xyz + rng.normal(0.0, 0.003, xyz.shape)
    rgb = np.clip(rgb + rng.normal(0.0, 4.0, rgb.shape), 0, 255).round().astype(np.uint8)
    return xyz.astype(np.float32), rgb


def contact_sheet(data_dir, out_png, n: int = 8, cols: int = 4, background=(255, 255, 255)) -> Path:
    """A grid of n evenly spaced training views of a rendered dataset, composited on background."""
    data_dir = Path(data_dir)
    frames = json.loads((data_dir / "transforms_train.json").read_text())["frames"]
    pick = np.linspace(0, len(frames) - 1, n).round().astype(int)
    paths = []
    for i in pick:
        fp = frames[i]["file_path"]
        fp = fp[2:] if fp.startswith("./") else fp
        paths.append(data_dir / (fp + ".png"))
    return sheet_of_images(paths, out_png, cols, background)


def sheet_of_images(paths, out_png, cols: int, background=(255, 255, 255)) -> Path:
    """A grid (row-major, `cols` wide) of the RGBA images at `paths`, composited on background."""
    from PIL import Image

    out_png = Path(out_png)
    tiles = []
    for p in paths:
        im = Image.open(p).convert("RGBA")
        bg = Image.new("RGBA", im.size, tuple(background) + (255,))
        tiles.append(Image.alpha_composite(bg, im).convert("RGB"))
    n = len(tiles)
    w, h = tiles[0].size
    rows = int(math.ceil(n / cols))
    sheet = Image.new("RGB", (cols * w, rows * h), tuple(background))
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % cols) * w, (k // cols) * h))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    sheet.save(tmp, optimize=True)
    os.replace(tmp, out_png)
    return out_png


# --------------------------------------------------------------------------------------------------
# where the dataset is


def _cache_dir(name: str = "default") -> Path:
    base = os.environ.get("SPLAT_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "splat") / "scenes" / name


def _complete(p: Path) -> bool:
    return (p / "transforms_train.json").is_file() and (p / "transforms_test.json").is_file()


def cached_or_rendered(cache: Path, what: str, cmd: str, render, generate: bool = True, complete=None) -> Path:
    """`cache` when it holds a complete scene (`complete(cache)`, default `_complete`); else, with
    `generate`, the scene rendered into it now by `render(cache)` (needs Mitsuba), or a
    FileNotFoundError naming `what` is missing and the command `cmd` that renders it."""
    if (complete or _complete)(cache):
        return cache
    if not generate:
        raise FileNotFoundError(f"{what} is missing from {cache}: render it with {cmd}")
    try:
        import mitsuba  # noqa: F401
    except ImportError:
        raise FileNotFoundError(f"{what} is missing from {cache}: pip install mitsuba && {cmd}") from None
    print(f"rendering {what} into {cache} (a few minutes) ...", flush=True)
    return render(cache)


def default_scene_path() -> Path:
    """The folder of the default scene (NeRF-synthetic layout): the committed ``scenes/data/default``,
    else a cached copy, else one rendered now into the cache (needs ``pip install mitsuba``)."""
    return committed_cached_or_rendered(COMMITTED, "default", generate, "scenes.default_scene")


def committed_cached_or_rendered(committed: Path, name: str, generate_fn, module: str) -> Path:
    """``committed`` if it holds a complete dataset, else the cache folder ``scenes/<name>`` under
    ``$SPLAT_CACHE_DIR`` (default ``~/.cache/splat``) if complete, else ``generate_fn(cache, threads=...)``
    renders it there now; without Mitsuba, a FileNotFoundError says how to restore or render it."""
    if _complete(committed):
        return committed
    cache = _cache_dir(name)
    if _complete(cache):
        return cache
    try:
        import mitsuba  # noqa: F401
    except ImportError:
        raise FileNotFoundError(
            f"the {name} scene is missing: neither {committed} nor {cache} holds transforms_train.json. "
            f"Restore it from the repository (git checkout -- scenes/data/{committed.name}), or render it: "
            f"pip install mitsuba && python -m {module} --out " + str(cache)) from None
    print(f"rendering the {name} scene into {cache} (takes several minutes) ...", flush=True)
    return generate_fn(cache, threads=max(1, os.cpu_count() or 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Render the embedded default scene (NeRF-synthetic layout) with Mitsuba 3.")
    ap.add_argument("--out", type=Path, default=COMMITTED, help="output folder (replaced when complete)")
    ap.add_argument("--width", type=int, default=WIDTH, help="image width and height in pixels")
    ap.add_argument("--n-train", type=int, default=N_TRAIN, help="number of training views")
    ap.add_argument("--n-test", type=int, default=N_TEST, help="number of test views")
    ap.add_argument("--spp", type=int, default=SPP, help="samples per pixel (rounded up to a power of 4)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the textures, camera offsets and points")
    ap.add_argument("--n-points", type=int, default=12000, help="points in points3d.ply")
    ap.add_argument("--variant", default=None,
                    help="mitsuba variant (default: llvm_ad_rgb if it works, else scalar_rgb)")
    ap.add_argument("--threads", type=int, default=1, help="render threads")
    ap.add_argument("--sheet", type=Path, default=None,
                    help="also write a contact sheet of 8 training views here (e.g. docs/default_scene_views.png)")
    ap.add_argument("--sheet-only", action="store_true", help="only write the contact sheet of the existing --out")
    a = ap.parse_args(argv)
    if a.sheet_only:
        contact_sheet(a.out, a.sheet or ROOT.parent / "docs" / "default_scene_views.png")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that an interrupted run removes its partial folder
    generate(a.out, a.width, a.n_train, a.n_test, a.spp, a.seed, a.n_points, a.variant, a.threads)
    if a.sheet:
        contact_sheet(a.out, a.sheet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
