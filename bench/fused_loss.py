"""Benchmark of the fused photometric loss (splat.backends.fused_loss) against the torch loss
it replaces (splat.train.losses.photometric_loss(impl="torch"): L1 + D-SSIM as ~15 torch ops).

For each image size (3 channels, ssim_lambda 0.2): forward and forward+backward milliseconds
of both (same process, same inputs, median of the repeats after a warm-up call), the
torch/fused ratio, and the largest difference between their values and gradients. With
--device cuda, fused-ssim (github.com/rahul-goel/fused-ssim, the peer) is timed too when it is
installed. Writes bench/results_fused_loss_{cpu,cuda}.json.

    python bench/fused_loss.py                       # CPU: 200x200 ... 1920x1080
    python bench/fused_loss.py --device cuda --repeats 50
    python bench/fused_loss.py --sizes 256x256 800x800 --mask
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import timed  # noqa: E402
from splat.backends import fused_loss  # noqa: E402
from splat.io.common import atomic_write  # noqa: E402
from splat.train.losses import photometric_loss  # noqa: E402

SIZES = ("200x200", "256x256", "800x800", "1920x1080")
LAMBDA = 0.2


def _images(H, W, device, mask):
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(H, W, 3, generator=g)
    pred = (gt + 0.05 * torch.randn(H, W, 3, generator=g)).clamp(0, 1)
    m = (torch.rand(H, W, 1, generator=g) > 0.1) if mask else None
    return pred.to(device), gt.to(device), None if m is None else m.to(device)


def _peer_loss():
    """fused-ssim's loss, (1 - lambda) L1 + lambda (1 - fused_ssim), or None where it is not installed."""
    try:
        from fused_ssim import fused_ssim
    except ImportError:
        return None

    def loss(pred, gt, lam, mask):
        x, y = pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None]
        return (1 - lam) * (pred - gt).abs().mean() + lam * (1 - fused_ssim(x, y, padding="same"))

    return loss


def run_size(H, W, device, repeats, mask):
    pred, gt, m = _images(H, W, device, mask)
    impls = {"torch": lambda p, g, lam, mk: photometric_loss(p, g, lam, mk, impl="torch"),
             "fused": fused_loss.fused_photometric_loss}
    peer = _peer_loss() if device.type == "cuda" and not mask else None
    if peer is not None:
        impls["fused-ssim"] = peer
    row = dict(size=f"{W}x{H}", pixels=H * W)
    out = {}
    for name, fn in impls.items():
        p = pred.clone().requires_grad_()

        def forward():
            with torch.no_grad():
                fn(p, gt, LAMBDA, m)

        def forward_backward():
            p.grad = None
            fn(p, gt, LAMBDA, m).backward()

        row[f"{name}_fwd_ms"] = 1e3 * timed(forward, repeats, warmup=1, device=device)
        row[f"{name}_fwd_bwd_ms"] = 1e3 * timed(forward_backward, repeats, warmup=1, device=device)
        p.grad = None
        loss = fn(p, gt, LAMBDA, m)
        loss.backward()
        out[name] = (loss.detach().double().cpu(), p.grad.double().cpu())
    row["ratio_fwd"] = row["torch_fwd_ms"] / row["fused_fwd_ms"]
    row["ratio_fwd_bwd"] = row["torch_fwd_bwd_ms"] / row["fused_fwd_bwd_ms"]
    row["max_loss_diff"] = float((out["torch"][0] - out["fused"][0]).abs())
    row["max_grad_diff_rel"] = float((out["torch"][1] - out["fused"][1]).abs().max()
                                     / out["torch"][1].abs().max().clamp_min(1e-30))
    if "fused-ssim" in out:
        row["fused_ssim_ratio_fwd_bwd"] = row["fused-ssim_fwd_bwd_ms"] / row["fused_fwd_bwd_ms"]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the images live (default cpu)")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), help="image sizes WxH (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed calls per measurement (default: 5 on the CPU, 3 above 1 Mpixel; 30 on a GPU)")
    ap.add_argument("--mask", action="store_true", help="with a random mask (90%% of pixels kept)")
    ap.add_argument("--json", default=None, help="results file (default bench/results_fused_loss_{device}.json)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/fused_loss.py: --device cuda needs a CUDA device")
    sizes = []
    for s in args.sizes:
        try:
            W, H = (int(v) for v in s.lower().split("x"))
        except ValueError:
            sys.exit(f"bench/fused_loss.py: bad size {s!r} (expected WxH, e.g. 800x600)")
        sizes.append((H, W))
    threads = torch.get_num_threads()
    if device.type == "cpu":
        from splat.backends import cpu

        threads = cpu.load().splat_num_threads()
        hw = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads"
    else:
        hw = torch.cuda.get_device_name(device)
    print(f"# {hw}, torch {torch.__version__}, lambda {LAMBDA}{', masked' if args.mask else ''}")
    print(f"{'size':>10} {'torch fwd':>10} {'fused fwd':>10} {'ratio':>6} {'torch f+b':>10} {'fused f+b':>10} "
          f"{'ratio':>6} {'loss diff':>10} {'grad diff':>10}")
    results = []
    for H, W in sizes:
        repeats = args.repeats or (30 if device.type == "cuda" else (3 if H * W > 1_000_000 else 5))
        r = run_size(H, W, device, repeats, args.mask)
        results.append(r)
        line = (f"{r['size']:>10} {r['torch_fwd_ms']:>8.2f}ms {r['fused_fwd_ms']:>8.2f}ms {r['ratio_fwd']:>5.1f}x "
                f"{r['torch_fwd_bwd_ms']:>8.2f}ms {r['fused_fwd_bwd_ms']:>8.2f}ms {r['ratio_fwd_bwd']:>5.1f}x "
                f"{r['max_loss_diff']:>10.2e} {r['max_grad_diff_rel']:>10.2e}")
        if "fused-ssim_fwd_bwd_ms" in r:
            line += f"  fused-ssim f+b {r['fused-ssim_fwd_bwd_ms']:.2f}ms"
        print(line, flush=True)
    path = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                     f"results_fused_loss_{device.type}.json")
    atomic_write(path, json.dumps(dict(device=hw, torch=torch.__version__, threads=threads, ssim_lambda=LAMBDA,
                                       masked=args.mask, results=results), indent=1).encode())
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
