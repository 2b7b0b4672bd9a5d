"""One forward and backward pass of the CUDA backend over every feature
(SH degree 3, antialiasing, backgrounds, absgrad, camera gradients, a tile
subset, 1-32 px tiles), checked against the CPU backend. Small enough to run
under compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \\
        python scripts/cuda_smoke.py

(without torch's caching allocator every tensor is its own allocation, so an
out-of-bounds access cannot hide inside a pooled block). Exits 1 on a mismatch.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import splat  # noqa: E402
from scene_utils import cameras, gaussians  # noqa: E402


def run(backend, inputs, V, K, W, H, **kw):
    dev = "cuda" if backend == "cuda" else "cpu"
    ts = [t.clone().to(dev).requires_grad_(True) for t in inputs]
    Vd = V.clone().to(dev).requires_grad_(True)
    kw = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    img, alpha, info = splat.rasterize(*ts, Vd, K.to(dev), W, H, backend=backend, absgrad=True, **kw)
    info["means2d"].retain_grad()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(img.shape, generator=g).to(dev)
    ((img * w).sum() + alpha.sum()).backward()
    grads = [t.grad for t in ts] + [Vd.grad, info["means2d"].grad, info["means2d"].absgrad]
    return [img.detach().cpu(), alpha.detach().cpu()] + [x.cpu() for x in grads]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="Gaussians")
    args = ap.parse_args()
    names = ["image", "alpha", "means", "quats", "scales", "opacities", "colors", "viewmats", "means2d", "absgrad"]
    worst = 0.0
    # D: plain colour channels instead of SH degree 3 (1 and 32 are the smallest and largest kernels)
    cases = [dict(tile_size=16, W=96, H=72), dict(tile_size=32, W=70, H=50), dict(tile_size=5, W=33, H=21),
             dict(tile_size=1, W=9, H=7), dict(tile_size=8, W=64, H=48, tiles=torch.tensor([0, 3, 9, 50, 63])),
             dict(tile_size=17, W=40, H=36, D=1), dict(tile_size=16, W=48, H=32, D=32),
             dict(tile_size=32, W=48, H=40, D=32)]
    for case in cases:
        W, H, ts, D = case.pop("W"), case.pop("H"), case.pop("tile_size"), case.pop("D", None)
        inputs = gaussians(args.n, seed=ts, sh_degree=None if D else 3, D=D or 3, scale=(0.01, 0.3))
        V, K = cameras(2, W, H, seed=ts)
        kw = dict(rasterize_mode="antialiased", backgrounds=torch.rand(2, D or 3), tile_size=ts, **case)
        if D is None:
            kw["sh_degree"] = 3
        ref = run("cpu", inputs, V, K, W, H, **kw)
        got = run("cuda", inputs, V, K, W, H, **kw)
        for name, a, b in zip(names, ref, got):
            err = float((a - b).abs().max()) / max(float(a.abs().max()), 1e-6)
            worst = max(worst, err)
            flag = "" if err < 1e-3 else "   <-- MISMATCH"
            what = f"tile {ts:2d} {W}x{H} {'D=%d' % D if D else 'SH3'}{' subset' if 'tiles' in case else ''}"
            print(f"{what}: {name:9s} rel. error {err:.2e}{flag}")
    print(f"worst relative error {worst:.2e}")
    sys.exit(0 if worst < 1e-3 else 1)


if __name__ == "__main__":
    main()
