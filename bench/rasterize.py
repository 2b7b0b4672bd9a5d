"""Benchmark of splat.rasterize: the native cpu backend against the torch reference.

For each scene: forward and forward+backward seconds of both backends (same
process, same inputs), Gaussian-pixel pairs per second, the cpu/torch speed-up,
and how close the cpu blend stage comes to the machine's arithmetic limit.

    python bench/rasterize.py                 # garden + random 10k, 100k, 1M
    python bench/rasterize.py --scenes garden --repeats 5
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import splat  # noqa: E402
from splat.backends import cpu  # noqa: E402
from common import garden_scene, random_scene  # noqa: E402

# floating-point operations the blend loop spends on one (pixel, Gaussian) pair
# with RGB colour, counting an FMA as 2 (see README, "How fast is the blend stage"):
# offset 2, exponent 9, exp 27, alpha and clamp 2, threshold tests 2,
# transmittance 2, cut-off 1, weight 1, colour 6.
FLOPS_PER_PAIR = 52


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(n=2048, repeats=10):
    """Float32 matmul FLOP/s on all threads (best of `repeats`): a practical
    arithmetic ceiling of this machine, measured rather than taken from a data sheet."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def bench_scene(name, scene, backends, repeats, torch_repeats):
    leaves = ["means", "quats", "scales", "opacities", "colors"]
    rows = {}
    info = None
    for backend in backends:
        reps = torch_repeats if backend == "torch" else repeats

        def fwd():
            with torch.no_grad():
                return splat.rasterize(**scene, backend=backend)

        def fwd_bwd():
            inputs = {k: (v.clone().requires_grad_(True) if k in leaves else v) for k, v in scene.items()}
            img, alpha, _ = splat.rasterize(**inputs, backend=backend)
            (img.sum() + alpha.sum()).backward()

        _, _, info = fwd()  # warm-up (and the native build)
        if backend != "torch":
            fwd_bwd()
        rows[backend] = dict(fwd=timed(fwd, reps), fwd_bwd=timed(fwd_bwd, reps))
    # the blend stage alone (cpu), for the arithmetic-limit estimate
    with torch.no_grad():
        C, N = scene["viewmats"].shape[0], scene["means"].shape[0]
        opac = scene["opacities"][None].expand(C, N).contiguous()
        cols = scene["colors"][None].expand(C, N, -1).contiguous()
        args = (info["means2d"], info["conics"], cols, opac, scene["width"], scene["height"], info["tile_size"],
                info["isect_offsets"], info["flatten_ids"])
        blend = timed(lambda: cpu.rasterize_to_pixels(*args), repeats)
        # (pixel, Gaussian) pairs the blend loop evaluated: every pixel of a tile for each
        # Gaussian taken before the whole tile was done
        pairs = int(cpu.blend_work(*args).sum()) * info["tile_size"] ** 2
    return dict(scene=name, gaussians=N, cameras=C, width=scene["width"], height=scene["height"],
                isects=info["flatten_ids"].numel(), pairs=pairs, blend_seconds=blend, **{
                    f"{b}_{k}": v for b, r in rows.items() for k, v in r.items()})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["garden", "10k", "100k", "1M"],
                    help="garden and/or random scene sizes such as 10k, 100k, 1M")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of the cpu backend (median)")
    ap.add_argument("--torch-repeats", type=int, default=1, help="timed runs of the torch reference")
    ap.add_argument("--skip-torch-above", type=float, default=float("inf"),
                    help="skip the torch reference for scenes with more Gaussians than this")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    cpu.load()
    threads = torch.get_num_threads()
    peak = matmul_peak()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{threads} threads (torch and OpenMP)")
    print(f"# float32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    results = []
    for name in args.scenes:
        if name == "garden":
            scene = garden_scene()
        else:
            n = int(float(name.lower().replace("k", "e3").replace("m", "e6")))
            scene = random_scene(n)
        backends = ["cpu"] + (["torch"] if scene["means"].shape[0] <= args.skip_torch_above else [])
        r = bench_scene(name, scene, backends, args.repeats, args.torch_repeats)
        results.append(r)
        pps = r["pairs"] / r["blend_seconds"]
        line = (f"{name:>7}: N={r['gaussians']:>8,} C={r['cameras']} {r['width']}x{r['height']} "
                f"isects={r['isects']:>9,} | cpu fwd {r['cpu_fwd'] * 1e3:8.1f} ms  fwd+bwd {r['cpu_fwd_bwd'] * 1e3:8.1f} ms")
        if "torch_fwd" in r:
            line += (f" | torch fwd {r['torch_fwd']:7.2f} s  fwd+bwd {r['torch_fwd_bwd']:7.2f} s | "
                     f"speed-up fwd {r['torch_fwd'] / r['cpu_fwd']:5.1f}x  fwd+bwd "
                     f"{r['torch_fwd_bwd'] / r['cpu_fwd_bwd']:5.1f}x")
        line += (f" | blend {r['blend_seconds'] * 1e3:.1f} ms, {pps / 1e9:.2f} G pairs/s = "
                 f"{pps * FLOPS_PER_PAIR / 1e9:.0f} GFLOP/s ({100 * pps * FLOPS_PER_PAIR / peak:.0f}% of matmul peak)")
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(peak_flops=peak, threads=threads, results=results), f, indent=1)


if __name__ == "__main__":
    main()
