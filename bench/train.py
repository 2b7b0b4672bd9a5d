"""Training benchmark.

1. Seconds per training step and peak memory at fixed Gaussian counts on the
   default scene's views (density control off, so the count stays fixed), for
   the native cpu backend and the pure-torch reference in the same process
   (the reference only at the smallest count: it takes seconds per step).
   Each measurement runs in its own subprocess so that peak RSS is its own.
2. Where a step's time goes (bench/step_profile.py), before and after the
   CPU training work of issue 21, on the default scene and on a NeRF-synthetic
   object like the held-out checks' (16 views at 200x200, 100k random initial
   points), each with the default recipe, averaged over a window of steps
   (density control included). Columns, each one change more than the last:
     before    the code at --profile-before (a git worktree of that commit)
     +rows     today's rasterizer (a Gaussian's loops over the tile rows it
               reaches), with the torch loss and torch.optim.Adam on every row
     +loss     and the fused L1 + D-SSIM loss
     today     and the fused sparse Adam (the default)
3. Beside other work: the same 500-step default-scene training alone and
   beside one `while True: pass` process, with --threads 0 (the default: the
   thread governor) and --threads 2 (every core, spinning OpenMP workers: the
   policy before). The share of the solo step rate it keeps is printed; fair
   share on 2 cores is 0.5.
4. Time to reach a target test PSNR on the default scene with the default
   recipe (test PSNR every --eval-every steps; evaluation time is not counted).

    python bench/train.py                       # all parts, writes bench/results_train_cpu.json
    python bench/train.py --skip-target         # the parts that ran replace theirs in the JSON

Every training runs in its own subprocess, one at a time.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Literal

import tyro

ROOT = Path(__file__).resolve().parents[1]
# the splat to measure: this tree, or another commit's worktree (the "before" profile column)
SRC = Path(os.environ.get("SPLAT_BENCH_SRC", ROOT))
sys.path.insert(0, str(ROOT))
if SRC != ROOT:
    sys.path.insert(0, str(SRC))


@dataclasses.dataclass
class Args:
    counts: List[int] = dataclasses.field(default_factory=lambda: [10_000, 50_000, 200_000])
    """Gaussian counts for the per-step table."""
    reference_counts: List[int] = dataclasses.field(default_factory=lambda: [10_000])
    """Counts at which the torch reference is also timed."""
    steps: int = 20
    """Timed steps per measurement (after 3 warm-up steps)."""
    reference_steps: int = 3
    profile_before: str = "ae21798"
    """Git commit whose code the "before" profile column runs (the last one before issue 21's work)."""
    profile_scenes: List[Literal["default", "object"]] = dataclasses.field(default_factory=lambda: ["default", "object"])
    """Scenes profiled: default (the embedded scene, 3000-step recipe, steps 500-1000 profiled) and
    object (a NeRF-synthetic object, 2000-step recipe, steps 1000-1500 profiled)."""
    busy_steps: int = 500
    """Steps of the beside-other-work training."""
    skip_per_step: bool = False
    skip_profile: bool = False
    skip_busy: bool = False
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


def _retain_freed_memory() -> None:
    """What the training loop does on a CPU (splat.train.allocator), for children that call
    train_step themselves; code from before that module has no such setting."""
    try:
        from splat.train.allocator import retain_freed_memory
    except ImportError:
        return
    retain_freed_memory()


def _child(backend: str, count: int, steps: int) -> None:
    """Time `steps` training steps at a fixed count; print one JSON line."""
    _retain_freed_memory()
    t = fixed_count_trainer(backend, count)
    step0 = 3000  # full SH degree
    for i in range(3):
        t.train_step(step0 + i)
    t0 = time.perf_counter()
    for i in range(steps):
        t.train_step(step0 + 3 + i)
    dt = (time.perf_counter() - t0) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    import splat

    print(json.dumps({"backend": backend, "count": count, "sec_per_step": dt, "peak_rss_mib": peak,
                      "splat": str(Path(splat.__file__).parent)}))


def _child_json(argv: List[str], src: Path = ROOT) -> dict:
    """Run this file with `argv` in a process of its own, measuring the splat under `src` (this tree
    or another commit's worktree); its last line of output, a JSON object. RuntimeError when the child
    fails, or when it reports (key "splat") that it imported splat from elsewhere."""
    env = dict(os.environ)
    if src != ROOT:
        env["SPLAT_BENCH_SRC"] = str(src)
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, cwd=src, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if "splat" in r:
        where = r.pop("splat")
        if Path(where).resolve() != (src / "splat").resolve():
            raise RuntimeError(f"a benchmark child imported splat from {where}, not {src}")
    return r


def run_child(backend: str, count: int, steps: int, src: Path = ROOT) -> dict:
    return _child_json(["--child", backend, str(count), str(steps)], src)


# ----------------------------------------------------------------------------- stage profile

# scene: (training iterations, first profiled step, steps profiled)
PROFILE_WINDOWS = {"default": (3000, 500, 500), "object": (2000, 1000, 500)}
PROFILE_VARIANTS = ("before", "+rows", "+loss", "today")


def _load_step_profile():
    """bench/step_profile.py of this tree (also when `splat` comes from another commit's worktree)."""
    spec = importlib.util.spec_from_file_location("splat_bench_step_profile", ROOT / "bench" / "step_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _child_profile(scene: str, data: str, variant: str) -> None:
    """Train `scene` with the default recipe up to the end of its profile window, timing the window's
    stages; print one JSON line."""
    import functools

    import splat
    import splat.train.loop as loop
    from splat.train import TrainConfig, Trainer

    iterations, start, n = PROFILE_WINDOWS[scene]
    kw = dict(out=Path(f"/tmp/splat_bench_profile_{scene}"), iterations=iterations, progress=False, export=[],
              save_renders=0)
    if data:
        kw["data"] = Path(data)
    if variant in ("+rows", "+loss"):  # today's code with the earlier loss / optimizer
        from splat.optim.adam import AdamConfig

        kw["adam"] = AdamConfig(sparse=False, fused=False)
        if variant == "+rows":
            loop.photometric_loss = functools.partial(loop.photometric_loss, impl="torch")
    _retain_freed_memory()
    t = Trainer(TrainConfig(**kw), log=lambda *a: None)
    prof_mod = _load_step_profile()
    for step in range(start):
        t.train_step(step)
    with prof_mod.StepProfiler(t) as prof:
        for step in range(start, start + n):
            t.train_step(step)
    print(json.dumps({"scene": scene, "variant": variant, "splat": str(Path(splat.__file__).parent),
                      "steps": [start, start + n], "num_gaussians": t.num_gaussians, "per_step": prof.per_step()}))


def before_worktree(ref: str) -> Path:
    """A detached git worktree of `ref` under /tmp (`main` removes it after the run)."""
    commit = subprocess.run(["git", "rev-parse", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    wt = Path(f"/tmp/splat_bench_before_{commit[:12]}")
    if not (wt / "splat").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(wt), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return wt


def run_profile(scene: str, data: str, variant: str, before_src: Path) -> dict:
    return _child_json(["--child-profile", scene, data, variant], before_src if variant == "before" else ROOT)


# ----------------------------------------------------------------------------- beside other work


def _child_busy(threads: int, steps: int) -> None:
    """The default scene's training for `steps` steps with --threads `threads`; print one JSON line."""
    from splat.train import TrainConfig, Trainer

    cfg = TrainConfig(out=Path(f"/tmp/splat_bench_busy_{os.getpid()}"), iterations=steps, threads=threads,
                      progress=False, export=[], save_renders=0, eval_every=0, save_every=0)
    m = Trainer(cfg, log=lambda *a: None).train()
    print(json.dumps({"threads": threads, "steps": steps, "train_seconds": m["train_seconds"], "psnr": m["psnr"]}))


def run_busy(threads: int, steps: int, beside_busy: bool) -> dict:
    hog = None
    if beside_busy:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
    try:
        return _child_json(["--child-busy", str(threads), str(steps)])
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def main(args: Args) -> None:
    before = before_worktree(args.profile_before) if not (args.skip_per_step and args.skip_profile) else None
    try:
        run(args, before)
    finally:
        if before is not None:  # the worktree goes (its native library stays in the build cache)
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)


def run(args: Args, before) -> None:
    import torch

    from bench.common import object_scene_path

    res = {}
    if args.out.is_file():  # parts skipped keep their last figures
        res = json.loads(args.out.read_text())
    res["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}
    if not args.skip_per_step:
        res["per_step"] = []
        res["per_step_before_commit"] = args.profile_before
        print(f"per-step time on the default scene's views (256x256, one view per step, SH degree 3), "
              f"{torch.get_num_threads()} threads; before = the code at {args.profile_before}")
        print(f"{'Gaussians':>10} {'cpu s/step':>11} {'cpu peak MiB':>13} {'before s/step':>14} {'speedup':>8} "
              f"{'torch s/step':>13} {'torch MiB':>10} {'ratio':>7}")
        for n in args.counts:
            c = run_child("cpu", n, args.steps)
            b = run_child("cpu", n, args.steps, before)
            row = {"count": n, "cpu": c, "cpu_before": b, "speedup_vs_before": b["sec_per_step"] / c["sec_per_step"]}
            line = (f"{n:>10,} {c['sec_per_step']:>11.3f} {c['peak_rss_mib']:>13.0f} {b['sec_per_step']:>14.3f} "
                    f"{row['speedup_vs_before']:>7.2f}x")
            if n in args.reference_counts:
                r = run_child("torch", n, args.reference_steps)
                row["torch"] = r
                row["speedup"] = r["sec_per_step"] / c["sec_per_step"]
                line += f" {r['sec_per_step']:>13.2f} {r['peak_rss_mib']:>10.0f} {row['speedup']:>6.1f}x"
            print(line, flush=True)
            res["per_step"].append(row)
        save(res, args.out)

    if not args.skip_profile:
        sp = _load_step_profile()
        res["profile"] = {"before_commit": args.profile_before, "scenes": {}}
        for scene in args.profile_scenes:
            data = str(object_scene_path(1)) if scene == "object" else ""
            rows = {v: run_profile(scene, data, v, before) for v in PROFILE_VARIANTS}
            it, a, n = PROFILE_WINDOWS[scene]
            print(f"\n{scene} scene ({it}-step recipe), seconds per step over steps {a}-{a + n} by stage "
                  f"(Gaussians at the end: " + ", ".join(f"{v} {r['num_gaussians']:,}" for v, r in rows.items()) + ")")
            print(sp.format_breakdown({v: r["per_step"] for v, r in rows.items()}))
            speed = rows["before"]["per_step"]["step"] / rows["today"]["per_step"]["step"]
            print(f"step: {speed:.2f}x faster than before")
            res["profile"]["scenes"][scene] = {"window": [a, a + n], "iterations": it, "variants": rows,
                                               "speedup": speed}
            save(res, args.out)

    if not args.skip_busy:
        print(f"\nbeside other work: the default scene's {args.busy_steps}-step training alone and beside one "
              f"`while True: pass` process")
        print(f"{'policy':<28} {'alone s':>8} {'beside s':>9} {'share of solo rate':>19}")
        res["busy"] = []
        for threads, label in ((0, "--threads 0 (governor)"), (2, "--threads 2 (spinning, before)")):
            solo = run_busy(threads, args.busy_steps, False)
            busy = run_busy(threads, args.busy_steps, True)
            share = solo["train_seconds"] / busy["train_seconds"]
            print(f"{label:<28} {solo['train_seconds']:>8.1f} {busy['train_seconds']:>9.1f} {share:>19.2f}", flush=True)
            res["busy"].append({"threads": threads, "policy": label, "solo": solo, "beside_busy": busy,
                                "share_of_solo_rate": share})
        save(res, args.out)

    if not args.skip_target:
        from splat.train import TrainConfig, Trainer

        res.pop("target_note", None)
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
    save(res, args.out)
    print(f"wrote {args.out}")


def save(res: dict, out: Path) -> None:
    """Write the results (atomically; after each part, so a part that fails keeps the others')."""
    from splat.io.common import atomic_write

    atomic_write(out, json.dumps(res, indent=2).encode())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-profile":
        _child_profile(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-busy":
        _child_busy(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main(tyro.cli(Args, description=__doc__))
