"""The README's pictures of camera models and secondary rays, from a trained run.

    python scripts/raytrace_pictures.py runs/default [--out docs]

docs/raytrace_fisheye.png: one test view as a pinhole camera (rasterizer), then the same pose as a
fisheye (Kannala-Brandt, 110 degrees across the diagonal) through the rasterizer (unscented transform)
and through the ray tracer.
docs/raytrace_effects.png: the same view ray traced plain, with depth of field, over a mirror plane and
over a floor catching the scene's shadows (`splat-render --effect ...`).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from splat.cameras import Cameras  # noqa: E402
from splat.io.images import write_png  # noqa: E402
from splat.render import RenderSettings  # noqa: E402
from splat.render_cli import RenderConfig, _effects  # noqa: E402
from splat.train.run import load_model, run_data_path, run_dataset  # noqa: E402


def _tile(images, gap=4):
    h = max(i.shape[0] for i in images)
    out = [np.pad(i, ((0, h - i.shape[0]), (0, gap), (0, 0)), constant_values=255) for i in images]
    return np.concatenate(out, 1)[:, :-gap]


def _u8(x):
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--view", type=int, default=3)
    a = ap.parse_args(argv)
    model, run_cfg = load_model(a.run)
    bg = tuple(run_cfg["background"])
    data = run_dataset(run_data_path(run_cfg, None), run_cfg, bg)
    cam = data.test.cameras([a.view])
    bgt = torch.tensor(bg, dtype=torch.float32)
    settings = RenderSettings("cpu").for_scene(model.scene_scale)
    W, H = cam.width, cam.height
    with torch.no_grad():
        pin = model.render(cam, settings, backgrounds=bgt[None]).colors[0]
        # the same pose as a fisheye seeing 55 degrees off the axis in the corners (the pinhole: 27)
        f = 0.5 * math.hypot(W, H) / math.radians(55)
        K = torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]]])
        fish = Cameras(cam.viewmats, K, W, H, camera_model="fisheye", radial_coeffs=torch.tensor([[0.02, 0, 0, 0.0]]))
        ras = model.render(fish, settings, backgrounds=bgt[None]).colors[0]
        trace = model.render(fish, RenderSettings("raytrace").for_scene(model.scene_scale),
                             backgrounds=bgt[None]).colors[0]
    a.out.mkdir(parents=True, exist_ok=True)
    write_png(a.out / "raytrace_fisheye.png", _tile([_u8(pin), _u8(ras), _u8(trace)]))
    shots = [_u8(model.render(cam, RenderSettings("raytrace").for_scene(model.scene_scale),
                              backgrounds=bgt[None]).colors[0].detach())]
    for effect in ("dof", "mirror", "shadow"):
        cfg = RenderConfig(model=a.run, effect=effect, aperture=None)
        one = _effects(cfg, model, settings, bgt, data)
        shots.append(_u8(one(cam)[0][0]))
    write_png(a.out / "raytrace_effects.png", _tile(shots))
    print(f"-> {a.out / 'raytrace_fisheye.png'}, {a.out / 'raytrace_effects.png'}")


if __name__ == "__main__":
    main()
