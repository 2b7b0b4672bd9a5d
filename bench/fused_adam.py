"""Benchmark of the fused, sparse Adam step (torch.ops.splat.adam_rows through
splat.optim.adam.adam_step) against torch.optim.Adam, the step it replaces.

A static model's parameters at several Gaussian counts (means 3, scales 3, quats 4,
opacity 1, SH DC 3 and SH rest 45 floats per Gaussian: 59, one torch.optim.Adam per
parameter as the trainer keeps them), fresh gradients each step. Per count: milliseconds
per optimizer step of torch.optim.Adam (its default implementation on that device), of the
fused step over every row, and of the fused step over the rows a view sees (--visible, a
fraction; the rest keep parameters and moments: sparse Adam), same process, same inputs,
median of the repeats; the torch/fused ratios; and the largest difference between the
fused and torch parameters after the timed steps (float32 rounding). Writes
bench/results_fused_adam_{cpu,cuda}.json.

    python bench/fused_adam.py                     # CPU: 100k, 500k, 2M Gaussians
    python bench/fused_adam.py --device cuda --counts 1000000 5000000
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
import splat.backends.fused_adam  # noqa: E402,F401  (registers torch.ops.splat.adam_rows)
from splat.optim.adam import adam_step  # noqa: E402
from splat.io.common import atomic_write  # noqa: E402

WIDTHS = {"means": (3,), "scales": (3,), "quats": (4,), "opacities": (), "sh0": (1, 3), "shN": (15, 3)}
LRS = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 1.25e-4}


def make(count, device, seed=0):
    """Parameters (with a gradient each) and one torch.optim.Adam per parameter."""
    g = torch.Generator().manual_seed(seed)
    params, opts = {}, {}
    for k, w in WIDTHS.items():
        p = torch.nn.Parameter(torch.randn((count, *w), generator=g).to(device))
        p.grad = (torch.randn((count, *w), generator=g) * 1e-3).to(device)
        params[k] = p
        opts[k] = torch.optim.Adam([p], lr=LRS[k], eps=1e-15)
    return params, opts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[100_000, 500_000, 2_000_000])
    ap.add_argument("--visible", type=float, default=0.3, help="fraction of rows a sparse step updates")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json", default=None, help="results file (default bench/results_fused_adam_<device>.json)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fused_adam: --device cuda needs a CUDA device")
    rows = []
    print(f"Adam step of a static model's parameters (59 floats per Gaussian), {args.device}, "
          f"{torch.get_num_threads()} threads, sparse over {args.visible:.0%} of the rows")
    print(f"{'Gaussians':>10} {'torch ms':>9} {'fused ms':>9} {'ratio':>6} {'sparse ms':>10} {'ratio':>6} {'max diff':>9}")
    for n in args.counts:
        pt, ot = make(n, device)
        pf, of = make(n, device)
        ps, os_ = make(n, device)
        vis = (torch.rand(n, generator=torch.Generator().manual_seed(1)) < args.visible).to(device)
        t_torch = timed(lambda: [o.step() for o in ot.values()], args.repeats, warmup=1, device=device)
        t_fused = timed(lambda: [adam_step(of[k], pf[k], None) for k in pf], args.repeats, warmup=1, device=device)
        t_sparse = timed(lambda: [adam_step(os_[k], ps[k], vis) for k in ps], args.repeats, warmup=1,
                         device=device)
        diff = max(float((pf[k].detach() - pt[k].detach()).abs().max()) for k in pt)
        row = {"count": n, "torch_ms": t_torch * 1e3, "fused_ms": t_fused * 1e3, "sparse_ms": t_sparse * 1e3,
               "fused_speedup": t_torch / t_fused, "sparse_speedup": t_torch / t_sparse,
               "max_param_diff_after_steps": diff, "steps": args.repeats + 1}
        rows.append(row)
        print(f"{n:>10,} {row['torch_ms']:>9.2f} {row['fused_ms']:>9.2f} {row['fused_speedup']:>5.1f}x "
              f"{row['sparse_ms']:>10.2f} {row['sparse_speedup']:>5.1f}x {diff:>9.1e}", flush=True)
        del pt, ot, pf, of, ps, os_
    out = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), f"results_fused_adam_{args.device}.json")
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
           "visible_fraction": args.visible, "rows": rows}
    atomic_write(out, json.dumps(res, indent=2).encode())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
