"""Dynamic models: seconds per training step and render time per model kind, and the
temporal hierarchy's memory and time as the video grows.

    python bench/dynamic.py                       # both parts, JSON to bench/results_dynamic.json
    python bench/dynamic.py --part models --steps 30
    python bench/dynamic.py --part hierarchy --lengths 1 4 16

Part 1 (models), on the embedded dynamic scene (6 cameras x 24 instants, 128x128):
every model kind with the same Gaussians (the scene's initial points, and the same
points replicated with jitter to 50k), no density control, timed over --steps steps
at step 5000 of a 10k-step run (past the static warm-up and the SH schedule):
seconds per step, and the median render time of the 16 test views.
The ratio column is against the static model with the same Gaussians in the same
run (what slicing in time costs on top of rendering).

Part 2 (hierarchy), a long video made longer: a synthetic 4D scene of `--static`
long-lived Gaussians plus `--per-unit` short-lived ones (temporal std 1/96 of a
unit, centres spread uniformly) for every unit of time, for a video of L units (one
unit = 24 frames), L in --lengths. The same parameters are measured as a flat model
and with a temporal hierarchy whose finest segments stay 1/8 unit long (levels =
4 + log2 L). For one frame in the middle: the render time, a training step's time
(forward, backward, Adam), and the peak working memory of each: the process's
resident-memory high-water mark (VmHWM, reset through /proc/self/clear_refs) above
its resident size before the call, each configuration in a fresh process. The stored
model (parameters + Adam moments) grows with the video in both cases and is reported
apart: on a GPU it is what stays in host memory while the working set runs on the device.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "results_dynamic.json"


# ----------------------------------------------------------------------------- part 1: model kinds


def _replicate(ds, n: int, seed: int = 0):
    """The dataset with its initial points replicated (with jitter) to `n` points."""
    import dataclasses

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ds.points), n)
    spread = np.ptp(ds.points, axis=0) * 0.005
    pts = ds.points[idx] + rng.normal(size=(n, 3)) * spread
    return dataclasses.replace(ds, points=pts.astype(np.float32), points_rgb=ds.points_rgb[idx])


def bench_models(steps: int, sizes, log=print) -> list:
    from splat.data import load_dataset
    from splat.strategies.adc import ADCStrategy
    from splat.train import TrainConfig, Trainer
    from splat.train.evaluate import render_views
    from splat.train.registry import MODELS
    from splat.train.run import default_scene_path
    from splat.models.spacetime import SpacetimeConfig

    ds0 = load_dataset(default_scene_path("dynamic"))
    kinds = [("static", {}), ("4dgs", {}), ("spacetime", {}),
             ("spacetime", {"spacetime": SpacetimeConfig(features=True)})]
    rows = []
    for n in sizes:
        ds = ds0 if n is None else _replicate(ds0, n)
        static_step = static_render = None
        for kind, extra in kinds:
            label = kind + ("+features" if extra else "")
            cfg = TrainConfig(model=kind, iterations=10_000, progress=False, eval_every=0, save_every=0,
                              adc=ADCStrategy(refine_start_iter=10**9), out=Path("/tmp/splat_bench_dynamic"),
                              **extra)
            tr = Trainer(cfg, dataset=ds, log=lambda *a: None)
            first = 5000  # past the static warm-up and the SH schedule: the steady state of a run
            for s in range(first, first + 3):
                tr.train_step(s)
            t0 = time.perf_counter()
            for s in range(first + 3, first + 3 + steps):
                tr.train_step(s)
            sps = (time.perf_counter() - t0) / steps
            secs = [sec for _, _, _, sec in render_views(tr.model, tr.test_views, tr.settings,
                                                         backgrounds=tr.background[None])]
            rms = 1000 * float(np.median(secs))
            if kind == "static":
                static_step, static_render = sps, rms
            row = {"model": label, "gaussians": tr.num_gaussians, "seconds_per_step": sps, "render_ms": rms,
                   "step_vs_static": sps / static_step, "render_vs_static": rms / static_render}
            rows.append(row)
            log(f"{label:20s} {tr.num_gaussians:>8,} Gaussians  {sps:.4f} s/step ({row['step_vs_static']:.2f}x static)"
                f"  render {rms:6.1f} ms ({row['render_vs_static']:.2f}x static)")
    return rows


# ----------------------------------------------------------------------------- part 2: the hierarchy


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_above(fn):
    """(result, seconds, peak resident KB above the resident size before fn)."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kb("VmRSS")
    t0 = time.perf_counter()
    r = fn()
    secs = time.perf_counter() - t0
    return r, secs, _rss_kb("VmHWM") - before


def synthetic_long_video(length: int, n_static: int, per_unit: int, levels: int, seed: int = 0):
    """A 4DGS model of a video `length` units long (module docstring)."""
    from splat.models.fourdgs import FourDGSConfig, FourDGSModel

    g = torch.Generator().manual_seed(seed)
    n_dyn = per_unit * length
    N = n_static + n_dyn
    times = torch.cat([torch.full((n_static, 1), length / 2), torch.rand(n_dyn, 1, generator=g) * length])
    sig_t = torch.cat([torch.full((n_static, 1), 4.0 * length), torch.full((n_dyn, 1), 1.0 / 96)])
    means = torch.randn(N, 3, generator=g) * 0.6
    params = {
        "means": means, "times": times, "scales": torch.log(torch.rand(N, 3, generator=g) * 0.02 + 0.01),
        "scales_t": torch.log(sig_t), "quats": torch.randn(N, 4, generator=g),
        "quats_r": torch.tensor([1.0, 0, 0, 0]).repeat(N, 1), "opacities": torch.full((N,), 1.0),
        "sh0": torch.rand(N, 1, 3, generator=g), "shN": torch.zeros(N, 0, 3),
        "time_range": torch.tensor([0.0, float(length)]),
    }
    with torch.no_grad():  # no space-time mixing in the right rotation: r = conj(l)
        params["quats_r"] = params["quats"] * torch.tensor([1.0, -1, -1, -1])
    cfg = FourDGSConfig(sh_degree=0, hierarchy_levels=levels, lambda_consistency=0.0)
    return FourDGSModel(cfg, params, 3.0)


def hierarchy_one(length: int, hierarchy: bool, n_static: int, per_unit: int, width: int) -> dict:
    """Measure one configuration (run in a fresh process by `bench_hierarchy`)."""
    from splat.cameras import Cameras, look_at
    from splat.optim.adam import AdamOptimizer
    from splat.render import RenderSettings

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    levels = 4 + int(round(math.log2(length))) if hierarchy else 0
    model = synthetic_long_video(length, n_static, per_unit, levels)
    t = length / 2 + 0.37 / 24  # a frame in the middle
    V = look_at(np.array([3.0, 0.5, 1.0]), np.zeros(3), np.array([0, 0, 1.0]))
    f = width * 1.1
    K = np.array([[f, 0, width / 2], [0, f, width / 2], [0, 0, 1.0]])
    cam = Cameras.from_numpy(V[None], K[None], width, width, time=np.array([t]))
    settings = RenderSettings("cpu").for_scene(3.0)
    bg = torch.ones(1, 3)
    gt = torch.rand(1, width, width, 3, generator=torch.Generator().manual_seed(1))
    stored = sum(p.numel() * p.element_size() for p in model.params.values())

    def render():
        with torch.no_grad():
            return model.render(cam, settings, backgrounds=bg).colors

    opt = AdamOptimizer(model.params, model.learning_rates(0, 1000))

    def step():
        def forward():
            out = model.render(cam, settings, backgrounds=bg)
            return ((out.colors - gt) ** 2).mean(), out

        return opt.step(forward)[0]

    render()
    step()  # warm-up: the native library, Adam's moments (stored state)
    stored_with_adam = stored + sum(v.numel() * v.element_size() for o in opt.optimizers.values()
                                    for st in o.state.values() for v in st.values()
                                    if isinstance(v, torch.Tensor) and v.dim() > 0)
    rend = [_peak_above(render) for _ in range(3)]
    steps = [_peak_above(step) for _ in range(3)]
    alive = model.alive_rows(t)
    return {"length": length, "hierarchy": hierarchy, "levels": levels, "gaussians": model.num_gaussians,
            "rendered": int(model.num_gaussians if alive is None else len(alive)),
            "render_ms": 1000 * float(np.median([s for _, s, _ in rend])),
            "render_peak_mb": max(m for _, _, m in rend) / 1024,
            "step_ms": 1000 * float(np.median([s for _, s, _ in steps])),
            "step_peak_mb": max(m for _, _, m in steps) / 1024,
            "stored_mb": stored_with_adam / 2 ** 20}


def bench_hierarchy(lengths, n_static: int, per_unit: int, width: int, log=print) -> list:
    rows = []
    for hierarchy in (False, True):
        for L in lengths:
            code = (f"import json,sys; sys.path.insert(0, {str(ROOT)!r}); from bench.dynamic import hierarchy_one; "
                    f"print(json.dumps(hierarchy_one({L}, {hierarchy}, {n_static}, {per_unit}, {width})))")
            # a fixed mmap threshold: every large tensor is its own mapping, returned to the system when
            # freed, so the high-water mark sees each call's own peak (glibc's adaptive threshold would
            # serve later calls from memory an earlier one left in the heap)
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
            if r.returncode:
                raise RuntimeError(r.stderr[-2000:])
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            log(f"{'hierarchy' if hierarchy else 'flat':9s} {L:>3d}x: {row['gaussians']:>9,} stored, "
                f"{row['rendered']:>7,} drawn | render {row['render_ms']:7.1f} ms peak {row['render_peak_mb']:7.1f} MB"
                f" | step {row['step_ms']:7.1f} ms peak {row['step_peak_mb']:7.1f} MB | stored {row['stored_mb']:7.1f} MB")
    for hierarchy in (False, True):
        sel = [r for r in rows if r["hierarchy"] == hierarchy]
        a, b = sel[0], sel[-1]
        log(f"{'hierarchy' if hierarchy else 'flat':9s} {b['length']}x vs {a['length']}x: render peak "
            f"{b['render_peak_mb'] / max(a['render_peak_mb'], 1e-9):.2f}x, step peak "
            f"{b['step_peak_mb'] / max(a['step_peak_mb'], 1e-9):.2f}x, render time "
            f"{b['render_ms'] / a['render_ms']:.2f}x, step time {b['step_ms'] / a['step_ms']:.2f}x")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("models", "hierarchy", "all"), default="all")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per model (part 1)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1, 4, 16], help="video lengths in units (part 2)")
    ap.add_argument("--static", type=int, default=20_000, help="long-lived Gaussians (part 2)")
    ap.add_argument("--per-unit", type=int, default=40_000, help="short-lived Gaussians per unit of time (part 2)")
    ap.add_argument("--width", type=int, default=256, help="frame size (part 2)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__}}
    if a.out.exists():
        try:
            res.update({k: v for k, v in json.loads(a.out.read_text()).items() if k in ("models", "hierarchy")})
        except ValueError:
            pass
    if a.part in ("models", "all"):
        res["models"] = bench_models(a.steps, [None, 50_000])
    if a.part in ("hierarchy", "all"):
        res["hierarchy"] = {"static": a.static, "per_unit": a.per_unit, "width": a.width,
                            "rows": bench_hierarchy(a.lengths, a.static, a.per_unit, a.width)}
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(a.out)
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
