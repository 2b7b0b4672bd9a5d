"""Block-partitioned training (``splat-train --blocks 4``) against one model trained normally, on a
held-out-style object and on the wide synthetic scene (`scenes.blocks_scene`).

    python bench/blocks.py                                   # 2000 steps per run (one model; each block)
    python bench/blocks.py --scenes wide --steps 1000        # one scene, another budget (others kept)
    python bench/blocks.py --quick                           # 300 steps
    python bench/blocks.py --scenes object --context coarse   # a variant: frozen coarse context

Every run is its own process (so each peak RSS is that run's alone, read from ``os.wait4``'s
rusage): the one model (``splat-train --iterations N``); the blocks' coarse global model and
partition; each block (``--blocks 4 --block i``, N steps on its cameras); the merge (``--blocks
4``, which finds every block done). Step budgets: the one model N steps; the blocks run
--blocks-coarse * N coarse steps on all views, then N steps per block. Prints PSNR, Gaussian
counts, wall times and peak RSS, the ratios against the one model measured in the same run, and
writes bench/results_blocks.json (the other scenes' figures are kept when the settings match).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results_blocks.json"
K = 4


def run_measured(args, env=None) -> dict:
    """Run a command; returns its wall seconds and peak RSS (MiB, from os.wait4's rusage). Raises
    RuntimeError with the output's tail when it fails."""
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    out = p.stdout.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({p.returncode}):\n{out[-3000:]}")
    return {"wall_s": wall, "peak_rss_mib": ru.ru_maxrss / 1024.0, "log": out}


def _runner(opts: list) -> list:
    """`splat-train` in a fresh interpreter with the block options `opts`."""
    return [sys.executable, "-m", "splat.train", *opts]


_COARSE = ("import sys, splat.train.blocks as b; from splat.train.cli import TrainConfig; from pathlib import Path; "
           "from splat.train.data import load_data; "
           "cfg = TrainConfig(data=Path(sys.argv[1]), out=Path(sys.argv[2]), iterations=int(sys.argv[3]), "
           "blocks=int(sys.argv[4]), blocks_margin=float(sys.argv[5]), blocks_coarse=float(sys.argv[6]), "
           "progress=False, seed=0); d = load_data(cfg); "
           "b.train_coarse(cfg, d, log=print); b.make_partition(cfg, d)")
_BASELINE = ("import sys, splat.train.blocks, splat.train.loop; from splat.train.cli import TrainConfig; "
             "from pathlib import Path; from splat.train.data import load_data; "
             "load_data(TrainConfig(data=Path(sys.argv[1])))")


def scene_path(name: str) -> Path:
    if name == "object":
        from bench.common import object_scene_path

        return Path(object_scene_path(1))
    if name == "wide":
        from scenes.blocks_scene import blocks_scene_path

        return blocks_scene_path()
    raise ValueError(f"unknown scene {name!r} (object, wide)")


def bench_scene(name: str, steps: int, context: str, tmp: Path, margin: float = 0.3, coarse: float = 0.5,
                single: dict = None) -> dict:
    data = scene_path(name)
    common = ["--data", str(data), "--iterations", str(steps), "--no-progress", "--save-every", "0",
              "--save-renders", "0", "--seed", "0"]
    print(f"\n== {name}: {data} ({steps} steps per run, context {context})", flush=True)
    base = run_measured([sys.executable, "-c", _BASELINE, str(data)])
    print(f"  baseline (python + torch + splat + the dataset): {base['peak_rss_mib']:.0f} MiB", flush=True)

    if single is None:
        single_out = tmp / f"{name}_single"
        s = run_measured([sys.executable, "-m", "splat.train", *common, "--out", str(single_out)])
        sm = json.loads((single_out / "metrics.json").read_text())
        single = {"psnr": sm["psnr"], "ssim": sm["ssim"], "num_gaussians": sm["num_gaussians"], "iterations": steps,
                  "train_seconds": sm["train_seconds"], "wall_s": s["wall_s"], "peak_rss_mib": s["peak_rss_mib"],
                  "train_views": sm["train_views"], "test_views": sm["test_views"]}
    else:
        single = dict(single, reused=True)
    print(f"  one model{' (reused)' if single.get('reused') else ''} : PSNR {single['psnr']:.2f}  {single['num_gaussians']:8,d} Gaussians  "
          f"{single['wall_s']:6.1f} s  peak {single['peak_rss_mib']:.0f} MiB", flush=True)

    out = tmp / f"{name}_blocks"
    c = run_measured([sys.executable, "-c", _COARSE, str(data), str(out), str(steps), str(K), str(margin), str(coarse)])
    opts = ["--blocks-context", context, "--blocks-margin", str(margin), "--blocks-coarse", str(coarse)]
    cm = json.loads((out / "blocks" / "coarse" / "metrics.json").read_text())
    coarse = {"iterations": cm["iterations"], "psnr": cm["psnr"], "num_gaussians": cm["num_gaussians"],
              "train_seconds": cm["train_seconds"], "wall_s": c["wall_s"], "peak_rss_mib": c["peak_rss_mib"]}
    print(f"  coarse    : PSNR {coarse['psnr']:.2f}  {coarse['num_gaussians']:8,d} Gaussians  "
          f"{coarse['wall_s']:6.1f} s  peak {coarse['peak_rss_mib']:.0f} MiB  ({coarse['iterations']} steps)",
          flush=True)
    blocks = []
    for i in range(K):
        r = run_measured(_runner(opts) + [*common, "--out", str(out), "--blocks", str(K), "--block", str(i)])
        bm = json.loads((out / "blocks" / str(i) / "metrics.json").read_text())
        b = {"block": i, "psnr": bm["psnr"], "num_gaussians": bm["num_gaussians"], "train_views": bm["train_views"],
             "test_views": bm["test_views"], "train_seconds": bm["train_seconds"], "wall_s": r["wall_s"],
             "peak_rss_mib": r["peak_rss_mib"], "initial_gaussians": bm["block"]["initial_gaussians"],
             "own_gaussians": bm["block"].get("own_gaussians", bm["num_gaussians"]),
             "context_gaussians": bm["block"]["context_gaussians"]}
        blocks.append(b)
        ps = "  n/a" if b["psnr"] is None else f"{b['psnr']:5.2f}"
        print(f"  block {i}   : PSNR {ps}  {b['own_gaussians']:8,d} Gaussians  {b['wall_s']:6.1f} s  "
              f"peak {b['peak_rss_mib']:.0f} MiB  ({b['train_views']} train views; from the coarse model "
              f"{b['initial_gaussians']:,} in its region + {b['context_gaussians']:,} around it, {context})", flush=True)
    mr = run_measured(_runner(opts) + [*common, "--out", str(out), "--blocks", str(K)])
    mm = json.loads((out / "metrics.json").read_text())
    for b, pb in zip(blocks, mm["per_block"]):
        b["kept_gaussians"] = pb["kept_gaussians"]
    merged = {"psnr": mm["psnr"], "ssim": mm["ssim"], "num_gaussians": mm["num_gaussians"],
              "train_seconds": mm["train_seconds"], "wall_s_merge": mr["wall_s"], "peak_rss_mib_merge": mr["peak_rss_mib"],
              "wall_s_total": c["wall_s"] + sum(b["wall_s"] for b in blocks) + mr["wall_s"],
              "wall_s_slowest_block": max(b["wall_s"] for b in blocks)}
    peak_block = max(b["peak_rss_mib"] for b in blocks)
    ratios = {"psnr_delta_db": merged["psnr"] - single["psnr"],
              "peak_rss_block_over_single": peak_block / single["peak_rss_mib"],
              "peak_rss_coarse_over_single": coarse["peak_rss_mib"] / single["peak_rss_mib"],
              "peak_rss_above_baseline_block_over_single":
                  (peak_block - base["peak_rss_mib"]) / max(1e-9, single["peak_rss_mib"] - base["peak_rss_mib"]),
              "max_block_gaussians_over_single":  # every Gaussian a block renders (own, auxiliary, frozen context)
                  max(b["num_gaussians"] + (b["context_gaussians"] if context == "coarse" else 0) for b in blocks)
                  / single["num_gaussians"],
              "wall_total_over_single": merged["wall_s_total"] / single["wall_s"],
              "wall_parallel_over_single": (c["wall_s"] + merged["wall_s_slowest_block"] + mr["wall_s"])
                  / single["wall_s"]}
    print(f"  merged    : PSNR {merged['psnr']:.2f}  {merged['num_gaussians']:8,d} Gaussians  "
          f"(kept per block {[b['kept_gaussians'] for b in blocks]})", flush=True)
    print(f"  -> blocks - one model: {ratios['psnr_delta_db']:+.2f} dB; peak RSS of the largest block "
          f"{peak_block:.0f} MiB = {ratios['peak_rss_block_over_single']:.2f}x the one model's "
          f"({ratios['peak_rss_above_baseline_block_over_single']:.2f}x above the {base['peak_rss_mib']:.0f} MiB "
          f"baseline); coarse {ratios['peak_rss_coarse_over_single']:.2f}x; wall {ratios['wall_total_over_single']:.2f}x "
          f"one after another, {ratios['wall_parallel_over_single']:.2f}x with the blocks at once", flush=True)
    return {"data": str(data), "steps": steps, "baseline_peak_rss_mib": base["peak_rss_mib"], "single": single,
            "coarse": coarse, "blocks": blocks, "merged": merged, "ratios": ratios}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 steps per run")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 2000; 300 with --quick)")
    ap.add_argument("--scenes", default="object,wide", help="comma-separated: object, wide")
    ap.add_argument("--context", default="aux", choices=["aux", "coarse", "none"],
                    help="what a block renders beside its Gaussians (--blocks-context)")
    ap.add_argument("--margin", type=float, default=0.3, help="--blocks-margin")
    ap.add_argument("--coarse", type=float, default=0.5, help="--blocks-coarse")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results_blocks.json")
    ap.add_argument("--reuse-single", action="store_true",
                    help="take the one-model run of each scene from bench/results_blocks.json (same steps) instead of "
                         "training it again (its code does not depend on the block options)")
    a = ap.parse_args(argv)
    steps = a.steps or (300 if a.quick else 2000)
    from splat.train import blocks as tb

    settings = {"blocks": K, "context": a.context, "coarse_fraction": a.coarse, "margin": a.margin,
                "masked_loss": tb.MASK_LOSS}  # the steps are per scene (each scene's "steps")
    results = {"machine": {"cpu": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__},
               "settings": settings, "scenes": {}}
    singles = {}
    if RESULTS.is_file():
        old = json.loads(RESULTS.read_text())
        if old.get("settings") == settings:
            results["scenes"].update(old.get("scenes", {}))
        singles = {k: v["single"] for k, v in old.get("scenes", {}).items() if v.get("steps") == steps}
    with tempfile.TemporaryDirectory(prefix="bench_blocks_") as tmp:
        for name in a.scenes.split(","):
            results["scenes"][name] = bench_scene(name.strip(), steps, a.context, Path(tmp), a.margin, a.coarse,
                                                  singles.get(name.strip()) if a.reuse_single else None)
            if not a.no_save:
                RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if not a.no_save:
        print(f"-> {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
