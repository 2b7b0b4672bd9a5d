"""Elastic budgets (`splat.compress.budget`): test PSNR of a trained model cut to a fraction F of its
Gaussians, by each way of choosing and adjusting the survivors, against the full model.

    python bench/budget.py --model /tmp/c20/obj/model.ply --data ~/.cache/splat/scenes/object16_s1
    python bench/budget.py --model M --data D --sources sphere --fractions 0.3   # a part (others kept)

Importance is measured from the dataset's training cameras ("train") and from the fallback for a
bare model file, views on a sphere around the model ("sphere", no cameras). Methods: "prune" (keep
the most important), "merge" (then moment-match each dropped Gaussian into a near survivor: the
fast path, the viewer's), and both followed by a short distillation ("+distill": Adam steps on the
survivors against renders of the full model from the same cameras, the training ones or the
sphere's). Test PSNR is the trainer's evaluation (`splat.train.evaluate.evaluate`: the run's
background, rasterize mode and near plane, from the config.json beside the model when there is
one), so the full model's figure is the run's metrics.json figure. Prints the table with each
figure's difference from the full model, and writes bench/results_budget.json (rows of other
sources / fractions already there are kept).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results_budget.json"
REQUIREMENT = (0.3, 1.5)  # --budget 0.3 within 1.5 dB of the full model's test PSNR


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="trained model file (.ply, checkpoint, ...)")
    ap.add_argument("--data", type=Path, required=True, help="its dataset (train cameras and test views)")
    ap.add_argument("--config", type=Path, default=None,
                    help="the run's config.json (default: beside the model); background, rasterize mode, split")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    ap.add_argument("--sources", nargs="+", default=["train", "sphere"], choices=["train", "sphere"])
    ap.add_argument("--methods", nargs="+", default=["prune", "merge", "prune+distill", "merge+distill"],
                    help="prune, merge, each optionally +distill (--distill-steps steps) or +distillK (K steps)")
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from splat import io as splat_io
    from splat.compress.budget import apply_budget, gaussian_importance
    from splat.data import load_dataset
    from splat.models.static import StaticModel
    from splat.render import RenderSettings
    from splat.train.data import Views
    from splat.train.evaluate import evaluate

    cfg_path = args.config or args.model.parent / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    background = cfg.get("background", [1.0, 1.0, 1.0])
    rmode = cfg.get("rasterize_mode", "classic")
    ds = load_dataset(args.data, background=background, test_every=cfg.get("test_every", 8),
                      downscale=cfg.get("downscale", 1), normalize=cfg.get("normalize", True))
    splats = splat_io.load(args.model)
    N = int(splats["means"].shape[0])
    test = Views(ds.test, "cpu")
    settings = RenderSettings(args.backend, rmode).for_scene(ds.scene_scale)
    bg = torch.tensor(background, dtype=torch.float32)

    def score(s):
        m = evaluate(StaticModel.from_splats(s), test, settings, bg)
        return m["psnr"], m["ssim"]

    full_psnr, full_ssim = score(splats)
    print(f"{args.model}: {N:,} Gaussians, test PSNR {full_psnr:.3f} dB, SSIM {full_ssim:.4f} "
          f"({len(ds.test)} test / {len(ds.train)} train views, background {background})", flush=True)
    rows = []
    for source in args.sources:
        cams = ds.train if source == "train" else None
        t0 = time.perf_counter()
        imp = gaussian_importance(splats, cams, backend=args.backend, rasterize_mode=rmode)
        imp_s = time.perf_counter() - t0
        print(f"importance from {source}: {imp_s:.1f} s, {int((imp > 0).sum()):,} of {N:,} seen", flush=True)
        for F in args.fractions:
            for method in args.methods:
                base, _, distill = method.partition("+")
                steps = (int(distill[len("distill"):]) if distill[len("distill"):] else args.distill_steps) \
                    if distill else 0
                t0 = time.perf_counter()
                out = apply_budget(splats, F, imp, cams, method=base, distill_steps=steps, backend=args.backend,
                                   rasterize_mode=rmode)
                secs = time.perf_counter() - t0
                p, s = score(out)
                row = {"source": source, "fraction": F, "method": method, "kept": int(out["means"].shape[0]),
                       "psnr": p, "ssim": s, "delta_db": p - full_psnr, "seconds": secs,
                       "importance_seconds": imp_s,
                       "distill_steps": steps}
                rows.append(row)
                print(f"  {source:6s} F={F:<4} {method:14s} {row['kept']:7,d}  PSNR {p:7.3f}  "
                      f"({p - full_psnr:+.2f} dB, {p / full_psnr:.3f}x)  SSIM {s:.4f}  {secs:5.1f} s", flush=True)

    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    same_model = old.get("model") == str(args.model) and old.get("full", {}).get("num_gaussians") == N
    done = {(r["source"], r["fraction"], r["method"]) for r in rows}
    kept_rows = [r for r in old.get("rows", []) if same_model and (r["source"], r["fraction"], r["method"]) not in done]
    all_rows = sorted(kept_rows + rows, key=lambda r: (r["source"], r["fraction"], r["method"]))
    result = {
        "model": str(args.model), "data": str(args.data),
        "full": {"num_gaussians": N, "psnr": full_psnr, "ssim": full_ssim},
        "background": background, "rasterize_mode": rmode, "backend": args.backend,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "rows": all_rows,
    }
    F_req, tol = REQUIREMENT
    req = [r for r in all_rows if r["fraction"] == F_req]
    if req:
        best = max(req, key=lambda r: r["psnr"])
        result["requirement"] = {"fraction": F_req, "within_db": tol, "best": best,
                                 "met_by": sorted(f"{r['source']}:{r['method']}" for r in req if r["delta_db"] >= -tol)}
    print_table(result)
    from splat.io.common import atomic_write

    atomic_write(args.out, json.dumps(result, indent=1).encode())
    print(f"wrote {args.out}")
    return result


def print_table(result: dict) -> None:
    full = result["full"]
    rows = result["rows"]
    fractions = sorted({r["fraction"] for r in rows})
    print(f"\nfull model: {full['num_gaussians']:,} Gaussians, {full['psnr']:.2f} dB")
    print("test PSNR, dB (difference from the full model)")
    print(f"{'importance':10s} {'method':14s} " + " ".join(f"{'F=' + str(F):>16s}" for F in fractions))
    for source in ("train", "sphere"):
        methods = ["prune", "merge", "prune+distill", "merge+distill"]
        methods += sorted({r["method"] for r in rows} - set(methods))
        for method in methods:
            cells = []
            for F in fractions:
                r = next((r for r in rows if r["source"] == source and r["method"] == method and r["fraction"] == F), None)
                cells.append(f"{r['psnr']:7.2f} ({r['delta_db']:+5.2f})" if r else f"{'-':>16s}")
            if any(c.strip() != "-" for c in cells):
                print(f"{source:10s} {method:14s} " + " ".join(f"{c:>16s}" for c in cells))
    if "requirement" in result:
        q = result["requirement"]
        print(f"requirement: F={q['fraction']} within {q['within_db']} dB: met by {', '.join(q['met_by']) or 'none'}")


if __name__ == "__main__":
    main()
