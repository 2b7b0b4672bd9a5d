"""Benchmark of splat.rasterize.

On the CPU (default): the native cpu backend against the torch reference. For
each scene: forward and forward+backward seconds of both backends (same
process, same inputs), Gaussian-pixel pairs per second, the cpu/torch speed-up,
and how close the cpu blend stage comes to the machine's arithmetic limit.

On a GPU (--device cuda): the cuda backend against gsplat's rasterization (a
peer installed on the same machine, same process, same inputs): forward and
forward+backward milliseconds, peak GPU memory of each, the speed ratio and the
largest pixel difference between the two images.

    python bench/rasterize.py                 # garden + random 10k, 100k, 1M
    python bench/rasterize.py --scenes garden --repeats 5
    python bench/rasterize.py --device cuda --scenes garden 1M 5M --size 1920x1080 \
        --json bench/results_rasterize_cuda.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import splat  # noqa: E402
from splat.backends import cpu  # noqa: E402
from common import garden_scene, random_scene, timed  # noqa: E402

# floating-point operations the blend loop spends on one (pixel, Gaussian) pair
# with RGB colour, counting an FMA as 2 (see README, "How fast is the blend stage"):
# offset 2, exponent 9, exp 27, alpha and clamp 2, threshold tests 2,
# transmittance 2, cut-off 1, weight 1, colour 6.
FLOPS_PER_PAIR = 52


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


LEAVES = ("means", "quats", "scales", "opacities", "colors")


def passes(render, scene):
    """The two timed passes of a renderer (render(**scene) -> (image, alpha, ...)): the
    forward without autograd, and forward+backward of image.sum() + alpha.sum() from
    fresh copies of the Gaussians' parameters."""
    def fwd():
        with torch.no_grad():
            return render(**scene)

    def fwd_bwd():
        inputs = {k: (v.clone().requires_grad_(True) if k in LEAVES else v) for k, v in scene.items()}
        img, alpha = render(**inputs)[:2]
        (img.sum() + alpha.sum()).backward()

    return fwd, fwd_bwd


def make_scene(name, size):
    """"garden", or N random Gaussians ("10k", "1M", ...) seen at size "WxH"."""
    if name == "garden":
        return garden_scene()
    n = int(float(name.lower().replace("k", "e3").replace("m", "e6")))
    W, H = (int(v) for v in size.lower().split("x"))
    return random_scene(n, width=W, height=H)


def bench_scene(name, scene, backends, repeats, torch_repeats):
    rows = {}
    info = None
    for backend in backends:
        reps = torch_repeats if backend == "torch" else repeats
        fwd, fwd_bwd = passes(lambda **sc: splat.rasterize(**sc, backend=backend), scene)
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
        # (pixel, Gaussian) pairs the blend loop evaluated: the pixels of the tile rows each
        # Gaussian taken before the whole tile was done could reach
        pairs = int(cpu.blend_work(*args).sum())
    return dict(scene=name, gaussians=N, cameras=C, width=scene["width"], height=scene["height"],
                isects=info["flatten_ids"].numel(), pairs=pairs, blend_seconds=blend, **{
                    f"{b}_{k}": v for b, r in rows.items() for k, v in r.items()})


def _sync():
    torch.cuda.synchronize()


def gpu_peak_bytes(fn):
    """Peak GPU memory that fn() allocates beyond what was allocated before it."""
    _sync()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    _sync()
    return torch.cuda.max_memory_allocated() - base


def gpu_renderers(peers, gsplat_packed):
    """name -> function(**scene) returning (image, alpha, info): ours, then the peers."""
    out = {"cuda": lambda **sc: splat.rasterize(**sc, backend="cuda")}
    if "gsplat" in peers:
        import gsplat

        out["gsplat"] = lambda **sc: gsplat.rasterization(**sc, packed=gsplat_packed)
    return out


def bench_gpu_scene(name, scene, renderers, repeats):
    row = dict(scene=name, gaussians=scene["means"].shape[0], cameras=scene["viewmats"].shape[0],
               width=scene["width"], height=scene["height"])
    images = {}
    for rname, render in renderers.items():
        fwd, fwd_bwd = passes(render, scene)
        images[rname] = fwd()[0].float()
        row[f"{rname}_fwd_ms"] = timed(fwd, repeats, warmup=3, device="cuda") * 1e3
        row[f"{rname}_fwd_bwd_ms"] = timed(fwd_bwd, repeats, warmup=3, device="cuda") * 1e3
        row[f"{rname}_fwd_peak_mib"] = gpu_peak_bytes(fwd) / 2 ** 20
        row[f"{rname}_fwd_bwd_peak_mib"] = gpu_peak_bytes(fwd_bwd) / 2 ** 20
    if "gsplat" in images:
        row["max_abs_diff_vs_gsplat"] = float((images["cuda"] - images["gsplat"]).abs().max())
    return row


def main_gpu(args):
    from splat.backends import cuda

    cuda.load()  # the first-use build, outside the timings
    dev = torch.cuda.get_device_name()
    peers = [] if args.no_peer else ["gsplat"]
    versions = f"torch {torch.__version__}"
    if peers:
        import gsplat

        versions += f", gsplat {gsplat.__version__} (packed={args.gsplat_packed})"
    print(f"# {dev}, {versions}")
    renderers = gpu_renderers(peers, args.gsplat_packed)
    results = []
    for name in args.scenes:
        scene = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in make_scene(name, args.size).items()}
        r = bench_gpu_scene(name, scene, renderers, args.repeats)
        results.append(r)
        line = (f"{name:>7}: N={r['gaussians']:>9,} C={r['cameras']} {r['width']}x{r['height']} | "
                f"splat fwd {r['cuda_fwd_ms']:7.2f} ms  fwd+bwd {r['cuda_fwd_bwd_ms']:7.2f} ms  "
                f"peak {r['cuda_fwd_bwd_peak_mib']:7.0f} MiB")
        if "gsplat_fwd_ms" in r:
            line += (f" | gsplat fwd {r['gsplat_fwd_ms']:7.2f} ms  fwd+bwd {r['gsplat_fwd_bwd_ms']:7.2f} ms  "
                     f"peak {r['gsplat_fwd_bwd_peak_mib']:7.0f} MiB | gsplat/splat time fwd "
                     f"{r['gsplat_fwd_ms'] / r['cuda_fwd_ms']:4.2f}x  fwd+bwd "
                     f"{r['gsplat_fwd_bwd_ms'] / r['cuda_fwd_bwd_ms']:4.2f}x | max |diff| "
                     f"{r['max_abs_diff_vs_gsplat']:.2e}")
        print(line, flush=True)
        del scene
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=dev, versions=versions, results=results), f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["garden", "10k", "100k", "1M"],
                    help="garden and/or random scene sizes such as 10k, 100k, 1M")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of the cpu backend (median)")
    ap.add_argument("--torch-repeats", type=int, default=1, help="timed runs of the torch reference")
    ap.add_argument("--skip-torch-above", type=float, default=float("inf"),
                    help="skip the torch reference for scenes with more Gaussians than this")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cpu: native cpu vs torch reference; cuda: cuda backend vs gsplat")
    ap.add_argument("--size", default="640x480", help="image size of the random scenes, WxH (e.g. 1920x1080)")
    ap.add_argument("--no-peer", action="store_true", help="--device cuda: time splat alone (no gsplat)")
    ap.add_argument("--gsplat-packed", action=argparse.BooleanOptionalAction, default=True,
                    help="--device cuda: gsplat's packed mode (its default)")
    args = ap.parse_args()
    if args.device == "cuda":
        return main_gpu(args)

    cpu.load()
    threads = torch.get_num_threads()
    peak = matmul_peak()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{threads} threads (torch and OpenMP)")
    print(f"# float32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    results = []
    for name in args.scenes:
        scene = make_scene(name, args.size)
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
