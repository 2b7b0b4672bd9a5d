"""Training benchmark.

1. Seconds per training step and peak memory at fixed Gaussian counts on the
   default scene's views (density control off, so the count stays fixed), for
   the native cpu backend and the pure-torch reference in the same process
   (the reference only at the smallest count: it takes seconds per step).
   Each measurement runs in its own subprocess so that peak RSS is its own.
2. Time to reach a target test PSNR on the default scene with the default
   recipe (test PSNR every --eval-every steps; evaluation time is not counted).

    python bench/train.py                       # both parts, writes bench/results_train_cpu.json
    python bench/train.py --skip-target         # only the per-step table
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclasses.dataclass
class Args:
    counts: List[int] = dataclasses.field(default_factory=lambda: [10_000, 50_000, 200_000])
    """Gaussian counts for the per-step table."""
    reference_counts: List[int] = dataclasses.field(default_factory=lambda: [10_000])
    """Counts at which the torch reference is also timed."""
    steps: int = 20
    """Timed steps per measurement (after 3 warm-up steps)."""
    reference_steps: int = 3
    target_psnr: float = 33.0
    """Test PSNR (dB) to reach on the default scene."""
    iterations: int = 3000
    eval_every: int = 250
    skip_target: bool = False
    out: Path = ROOT / "bench" / "results_train_cpu.json"


def fixed_count_trainer(backend: str, count: int, **cfg_kw):
    """A Trainer on the default scene whose initial cloud is grown (or shrunk) to `count`
    Gaussians with density control off, so every step costs the same."""
    import numpy as np
    import torch

    from splat.models.static import StaticModel
    from splat.strategies import ADCStrategy
    from splat.train import TrainConfig, Trainer

    kw = dict(out=Path("/tmp/splat_bench_train"), iterations=30_000, progress=False, export=[], backend=backend,
              adc=ADCStrategy(refine_start_iter=10**9), scale_schedule=False)
    kw.update(cfg_kw)
    cfg = TrainConfig(**kw)
    t = Trainer(cfg, log=lambda *a: None)
    # copies of points jittered by their scale
    rng = np.random.default_rng(0)
    P = t.num_gaussians
    idx = rng.integers(0, P, count)
    with torch.no_grad():
        new = {k: v.detach()[idx].clone() for k, v in t.model.params.items()}
        s = torch.exp(new["scales"])
        new["means"] += torch.from_numpy(rng.normal(size=(count, 3)).astype(np.float32)) * s
        new["scales"] -= float(np.log(max(count / P, 1.0)) / 3)  # keep the covered volume about constant
        new["opacities"][:] = 2.0  # opacity 0.88: a converged-looking, mostly opaque model
    t.set_model(StaticModel(t.model.config, new, t.model.scene_scale))
    return t


def _child(backend: str, count: int, steps: int) -> None:
    """Time `steps` training steps at a fixed count; print one JSON line."""
    t = fixed_count_trainer(backend, count)
    step0 = 3000  # full SH degree
    for i in range(3):
        t.train_step(step0 + i)
    t0 = time.perf_counter()
    for i in range(steps):
        t.train_step(step0 + 3 + i)
    dt = (time.perf_counter() - t0) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    print(json.dumps({"backend": backend, "count": count, "sec_per_step": dt, "peak_rss_mib": peak}))


def run_child(backend: str, count: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", backend, str(count), str(steps)],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args: Args) -> None:
    import torch

    res = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__}, "per_step": [], "target": None}
    print(f"per-step time on the default scene's views (256x256, one view per step, SH degree 3), "
          f"{torch.get_num_threads()} threads")
    print(f"{'Gaussians':>10} {'cpu s/step':>11} {'cpu peak MiB':>13} {'torch s/step':>13} {'torch MiB':>10} {'ratio':>7}")
    for n in args.counts:
        c = run_child("cpu", n, args.steps)
        row = {"count": n, "cpu": c}
        line = f"{n:>10,} {c['sec_per_step']:>11.3f} {c['peak_rss_mib']:>13.0f}"
        if n in args.reference_counts:
            r = run_child("torch", n, args.reference_steps)
            row["torch"] = r
            row["speedup"] = r["sec_per_step"] / c["sec_per_step"]
            line += f" {r['sec_per_step']:>13.2f} {r['peak_rss_mib']:>10.0f} {row['speedup']:>6.1f}x"
        print(line, flush=True)
        res["per_step"].append(row)

    if not args.skip_target:
        from splat.train import TrainConfig, Trainer

        cfg = TrainConfig(out=Path("/tmp/splat_bench_target"), iterations=args.iterations,
                          eval_every=args.eval_every, progress=False, export=[], save_renders=0)
        t = Trainer(cfg, log=lambda *a: None)
        wall0 = time.perf_counter()
        m = t.train()
        wall = time.perf_counter() - wall0
        hist = m["history"] + [{"step": m["iterations"], "psnr": m["psnr"], "train_seconds": m["train_seconds"],
                                "num_gaussians": m["num_gaussians"]}]
        hit = next((h for h in hist if h["psnr"] >= args.target_psnr), None)
        res["target"] = {"target_psnr": args.target_psnr, "iterations": args.iterations,
                         "reached_at_step": hit["step"] if hit else None,
                         "reached_after_train_seconds": hit["train_seconds"] if hit else None,
                         "final_psnr": m["psnr"], "final_ssim": m["ssim"], "final_gaussians": m["num_gaussians"],
                         "train_seconds": m["train_seconds"], "wall_seconds_with_eval": wall,
                         "curve": [{k: h[k] for k in ("step", "psnr", "train_seconds", "num_gaussians")} for h in hist]}
        print(f"\ndefault scene, {args.iterations} steps: final test PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, "
              f"{m['num_gaussians']:,} Gaussians, {m['train_seconds']:.0f} s training")
        for h in hist:
            print(f"  step {h['step']:>5}: PSNR {h['psnr']:.2f} after {h['train_seconds']:.0f} s, {h['num_gaussians']:,} Gaussians")
        if hit:
            print(f"reached {args.target_psnr} dB at step {hit['step']} after {hit['train_seconds']:.0f} s of training")
        else:
            print(f"did not reach {args.target_psnr} dB in {args.iterations} steps")
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main(tyro.cli(Args, description=__doc__))
