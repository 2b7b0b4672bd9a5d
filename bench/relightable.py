"""Relightable model (GS^3) benchmark: novel view and novel light, with the ablations.

For each scene (the embedded relightable default scene, and the held-out-style scene that
``scenes/relight_scene.py --variant heldout`` renders: other objects, materials and lights),
trains for ``--steps`` steps and evaluates at the test views, whose cameras and point lights
never appear in training:

* ``static``: the static 3DGS model on the same data (the peer that cannot follow the light);
* ``relightable``: the full model (reflectance + shadow pass + shadow network + residual);
* ``no-shadows``: without the shadow pass (and so without its network);
* ``no-residual``: without the residual network;
* ``no-shadow-mlp``: the raw shadow pass, not refined.

Prints PSNR / SSIM, the Gaussian count, seconds per step (training wall time / steps) and
the median test-view render time, and the relightable model's ratio of seconds per step to
the static model's, measured in the same run. Results: ``bench/results_relightable.json``.

    python bench/relightable.py                       # both scenes, all variants, 2000 steps (~40 min here)
    python bench/relightable.py --scenes default --variants static relightable --steps 500
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import start_results  # noqa: E402

OUT = Path(__file__).resolve().parent / "results_relightable.json"

VARIANTS = {
    "static": dict(model="static"),
    "relightable": dict(model="relightable"),
    "no-shadows": dict(model="relightable", shadows=False),
    "no-residual": dict(model="relightable", residual=False),
    "no-shadow-mlp": dict(model="relightable", shadow_mlp=False),
}


def scene_path(name: str) -> Path:
    from scenes.relight_scene import heldout_scene_path, relight_scene_path

    return relight_scene_path() if name == "default" else heldout_scene_path(generate=True)


def run_one(data: Path, variant: str, steps: int, log=print) -> dict:
    """Train one variant on `data` for `steps` steps (a new user's defaults otherwise)."""
    from splat.models.relightable import RelightableConfig
    from splat.train import TrainConfig, Trainer

    spec = dict(VARIANTS[variant])
    model = spec.pop("model")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data=data, out=Path(tmp) / variant, model=model, iterations=steps, progress=False,
                          save_renders=0, export=[], save_every=0, relightable=RelightableConfig(**spec))
        tr = Trainer(cfg, log=lambda *a: None)
        m = tr.train()
    r = {k: m[k] for k in ("psnr", "ssim", "num_gaussians", "train_seconds", "seconds_per_iteration", "render_ms")}
    log(f"  {variant:14s} PSNR {r['psnr']:6.2f}  SSIM {r['ssim']:.4f}  {r['num_gaussians']:7,d} Gaussians  "
        f"{r['seconds_per_iteration']:.3f} s/step  {r['train_seconds']:6.0f} s  render {r['render_ms']:.1f} ms")
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", nargs="+", choices=("default", "heldout"), default=["default", "heldout"])
    ap.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    results = start_results(args.out, steps=args.steps)
    for scene in args.scenes:
        data = scene_path(scene)
        print(f"{scene} ({data}), {args.steps} steps, test views at new cameras and new lights:")
        rows = results["scenes"].setdefault(scene, {})
        for v in args.variants:
            rows[v] = run_one(data, v, args.steps)
            args.out.write_text(json.dumps(results, indent=1))
        if "static" in rows and "relightable" in rows:
            s, r = rows["static"], rows["relightable"]
            print(f"  relightable - static: {r['psnr'] - s['psnr']:+.2f} dB; seconds per step "
                  f"{r['seconds_per_iteration'] / s['seconds_per_iteration']:.2f}x static's")
    args.out.write_text(json.dumps(results, indent=1))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
