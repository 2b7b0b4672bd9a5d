"""The README's relighting picture: one test camera of the relightable default scene under
several point lights, the trained model (top) above Mitsuba's ground truth (bottom).

    python scripts/relight_figure.py RUN_DIR [--out docs/relight_lights.png] [--view 0] [--lights 5]

The lights are the test lights of other test frames (none of them lit a training view) and
one at the training lights' mean distance circling the scene; the ground truth is rendered
by ``scenes/relight_scene.py``'s ``render_view`` at 256 samples per pixel. Prints each
panel's PSNR (on white).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    from scenes.default_scene import linear_to_srgb
    from scenes.relight_scene import relight_scene_path, render_view
    from splat.cameras import Cameras
    from splat.render import RenderSettings
    from splat.train.run import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/relight_lights.png"))
    ap.add_argument("--view", type=int, default=0)
    ap.add_argument("--lights", type=int, default=5)
    args = ap.parse_args(argv)
    model, _ = load_model(args.run)
    meta = json.loads((relight_scene_path() / "transforms_test.json").read_text())
    frames = meta["frames"]
    fr = frames[args.view]
    c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
    W = 128
    f = 0.5 * W / np.tan(0.5 * float(meta["camera_angle_x"]))
    K = np.array([[f, 0, W / 2], [0, f, W / 2], [0, 0, 1.0]])
    V = np.linalg.inv(c2w @ np.diag([1.0, -1.0, -1.0, 1.0]))  # OpenGL c2w -> OpenCV world->camera
    picks = [args.view] + [i for i in range(len(frames)) if i != args.view][:: max(1, len(frames) // args.lights)]
    lights = [(np.asarray(frames[i]["light_position"]), np.asarray(frames[i]["light_intensity"]))
              for i in picks[:args.lights]]
    top, bottom = [], []
    for lp, li in lights:
        cam = Cameras.from_numpy(V[None], K[None], W, W, light_position=lp[None], light_intensity=li[None])
        with torch.no_grad():
            rgb = model.render(cam, RenderSettings().for_scene(model.scene_scale),
                               backgrounds=torch.ones(1, 3)).colors[0].clamp(0, 1).numpy()
        gt = render_view(c2w, lp, li, W, 256, threads=2)
        a = gt[..., 3:4]
        gt_rgb = linear_to_srgb(gt[..., :3] / np.maximum(a, 1e-8)) * a + (1 - a)  # straight colour on white
        psnr = -10 * np.log10(np.mean((rgb - gt_rgb) ** 2))
        print(f"light at {np.round(lp, 2).tolist()}: PSNR {psnr:.2f} dB")
        top.append(rgb)
        bottom.append(gt_rgb)
    img = np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(args.out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
