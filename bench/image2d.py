"""2D image Gaussians on Kodak: quality against the number of Gaussians, fitting
and decoding time, and rate-distortion beside JPEG and WebP (Pillow) at matched bpp.

    python bench/image2d.py                          # ../shared/data/kodak, 5k/20k/70k, RD at 1k/2k/5k
    python bench/image2d.py --images DIR_OR_FILES... --counts 5000 20000 70000 --iterations 2000

Prints a table per image and the means, writes bench/results_image2d_cpu.json
and the plots bench/image2d_quality.png and bench/image2d_rd.png (matplotlib).
Ratios in the same process: the native kernel against the torch reference
(render time on a window), and our PSNR against JPEG's and WebP's at the same bpp.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from splat.image2d import codec  # noqa: E402
from splat.image2d.fit import FitConfig, evaluate, fit, load_image  # noqa: E402
from splat.metrics import ms_ssim, psnr  # noqa: E402
from common import timed  # noqa: E402  (bench/common.py)

HERE = os.path.dirname(os.path.abspath(__file__))


def pillow_curve(target: torch.Tensor, fmt: str):
    """(bpp, psnr, ms_ssim) for qualities 1..100 of a Pillow codec."""
    from PIL import Image

    H, W, _ = target.shape
    im = Image.fromarray((target.numpy() * 255 + 0.5).astype(np.uint8))
    pts = []
    for q in list(range(1, 20)) + list(range(20, 101, 5)):
        buf = io.BytesIO()
        kw = {"quality": q}
        if fmt == "WEBP":
            kw["method"] = 6
        im.save(buf, fmt, **kw)
        dec = torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(np.float32)
                               / 255)
        pts.append((8 * len(buf.getvalue()) / (W * H), float(psnr(dec, target)), float(ms_ssim(dec, target))))
    return sorted(pts)


def at_bpp(curve, bpp):
    """PSNR (and MS-SSIM) of a codec at exactly `bpp`, linear between its neighbouring qualities;
    None below its lowest rate."""
    xs = [p[0] for p in curve]
    if bpp < xs[0]:
        return None
    return float(np.interp(bpp, xs, [p[1] for p in curve])), float(np.interp(bpp, xs, [p[2] for p in curve]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", nargs="+", default=[os.path.join(HERE, "..", "..", "shared", "data", "kodak")],
                    help="image files or folders (all .png/.jpg in them)")
    ap.add_argument("--counts", type=int, nargs="+", default=[5000, 20000, 70000])
    ap.add_argument("--rd-counts", type=int, nargs="+", default=[1000, 2000, 5000])
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--qat", type=int, default=200)
    ap.add_argument("--mode", default="sum", choices=["sum", "topk"])
    ap.add_argument("--adan", action="store_true", help="also fit the first image's smallest count with Adan")
    ap.add_argument("--out", default=os.path.join(HERE, "results_image2d_cpu.json"))
    ap.add_argument("--plots", default=HERE)
    args = ap.parse_args(argv)

    files = []
    for p in args.images:
        files += sorted(glob.glob(os.path.join(p, "*.png")) + glob.glob(os.path.join(p, "*.jpg"))) \
            if os.path.isdir(p) else [p]
    if not files:
        sys.exit(f"no images found in {args.images}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(files)} images, "
          f"{args.iterations} iterations, mode {args.mode}", flush=True)
    results = {"config": vars(args) | {"images": [os.path.basename(f) for f in files]}, "images": []}
    for f in files:
        name = os.path.basename(f)
        target = load_image(f)
        H, W, _ = target.shape
        rec = {"image": name, "width": W, "height": H, "fits": [], "rd": []}
        jpeg, webp = pillow_curve(target, "JPEG"), pillow_curve(target, "WEBP")
        for n in sorted(set(args.counts) | set(args.rd_counts)):
            cfg = FitConfig(num_gaussians=n, iterations=args.iterations, mode=args.mode)
            r = fit(target, cfg, progress=False)
            ev = evaluate(r.model, target)
            render_s = timed(lambda: r.model.render())
            row = {"num_gaussians": n, "psnr": ev["psnr"], "ms_ssim": ev["ms_ssim"], "fit_seconds": r.seconds,
                   "render_ms": 1e3 * render_s}
            if n == min(args.counts):  # the native kernel against the dense torch reference, on a 64x64 window
                crop = (W // 2 - 32, H // 2 - 32, 64, 64)
                t_ref = timed(lambda: r.model.render(crop=crop, backend="torch"), 1)
                t_nat = timed(lambda: r.model.render(crop=crop, backend="cpu"))
                row["window_render_ms"] = {"cpu": 1e3 * t_nat, "torch": 1e3 * t_ref, "ratio": t_ref / t_nat}
            if n in args.counts:
                rec["fits"].append(row)
                print(f"{name} N={n:6d}  PSNR {ev['psnr']:6.2f}  MS-SSIM {ev['ms_ssim']:.4f}  fit {r.seconds:6.1f} s"
                      f"  render {1e3 * render_s:6.1f} ms", flush=True)
            if n in args.rd_counts:
                data, dm, enc_s = codec.encode(r.model, target, codec.CodecConfig(qat_iterations=args.qat))
                dec_s = timed(lambda: codec.decode_bytes(data).render(clamp=True))
                out = codec.decode_bytes(data).render(clamp=True)
                bpp = codec.bits_per_pixel(len(data), W, H)
                p, ms = float(psnr(out, target)), float(ms_ssim(out, target))
                j, wb = at_bpp(jpeg, bpp), at_bpp(webp, bpp)
                rec["rd"].append({"num_gaussians": n, "bytes": len(data), "bpp": bpp, "psnr": p, "ms_ssim": ms,
                                  "psnr_float": ev["psnr"], "encode_seconds": enc_s, "decode_ms": 1e3 * dec_s,
                                  "jpeg_psnr": j and j[0], "jpeg_ms_ssim": j and j[1],
                                  "webp_psnr": wb and wb[0], "webp_ms_ssim": wb and wb[1]})
                fmt = lambda v: "   n/a" if v is None else f"{v[0]:6.2f}"  # noqa: E731
                print(f"{name} N={n:6d}  {bpp:.3f} bpp  PSNR {p:6.2f} (float {ev['psnr']:.2f})  JPEG {fmt(j)}"
                      f"  WebP {fmt(wb)}  decode {1e3 * dec_s:.1f} ms", flush=True)
        if args.adan and f == files[0]:
            n = min(args.counts)
            for opt, lrs in (("adam", {}), ("adan", dict(lr_means=1.0, lr_chol=0.2, lr_colors=0.03))):
                cfg = FitConfig(num_gaussians=n, iterations=args.iterations, mode=args.mode, optimizer=opt, **lrs)
                r = fit(target, cfg, progress=False)
                ev = evaluate(r.model, target)
                rec.setdefault("optimizers", []).append({"optimizer": opt, "num_gaussians": n, **ev,
                                                         "fit_seconds": r.seconds})
                print(f"{name} N={n} {opt}: PSNR {ev['psnr']:.2f}  fit {r.seconds:.1f} s", flush=True)
        results["images"].append(rec)

    # means over images
    summary = {"fits": [], "rd": []}
    for n in args.counts:
        rows = [r for im in results["images"] for r in im["fits"] if r["num_gaussians"] == n]
        summary["fits"].append({k: statistics.mean(r[k] for r in rows) for k in
                                ("psnr", "ms_ssim", "fit_seconds", "render_ms")} | {"num_gaussians": n})
    for n in args.rd_counts:
        rows = [r for im in results["images"] for r in im["rd"] if r["num_gaussians"] == n]
        s = {k: statistics.mean(r[k] for r in rows) for k in ("bpp", "psnr", "ms_ssim", "decode_ms", "psnr_float")}
        for k in ("jpeg_psnr", "webp_psnr", "jpeg_ms_ssim", "webp_ms_ssim"):
            vals = [r[k] for r in rows]
            s[k] = None if any(v is None for v in vals) else statistics.mean(vals)
        summary["rd"].append(s | {"num_gaussians": n})
    ratios = [r["window_render_ms"]["ratio"] for im in results["images"] for r in im["fits"]
              if "window_render_ms" in r]
    summary["native_vs_torch_render_ratio"] = statistics.mean(ratios) if ratios else None
    results["summary"] = summary
    print("\nmean over", len(files), "images")
    print("  Gaussians   PSNR   MS-SSIM   fit s   render ms")
    for s in summary["fits"]:
        print(f"  {s['num_gaussians']:9d}  {s['psnr']:6.2f}  {s['ms_ssim']:.4f}  {s['fit_seconds']:6.1f}  "
              f"{s['render_ms']:8.1f}")
    print("  Gaussians   bpp    PSNR  (JPEG, WebP at that bpp)  MS-SSIM  decode ms")
    for s in summary["rd"]:
        f = lambda v: "  n/a" if v is None else f"{v:5.2f}"  # noqa: E731
        print(f"  {s['num_gaussians']:9d}  {s['bpp']:.3f}  {s['psnr']:5.2f}  ({f(s['jpeg_psnr'])}, {f(s['webp_psnr'])})"
              f"        {s['ms_ssim']:.4f}  {s['decode_ms']:6.1f}")
    if ratios:
        print(f"  native kernel vs torch reference (64x64 window render): {summary['native_vs_torch_render_ratio']:.0f}x")
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    plot(results, args.plots)


def plot(results, folder):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install matplotlib)")
        return
    s = results["summary"]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ns = [r["num_gaussians"] for r in s["fits"]]
    ax[0].plot(ns, [r["psnr"] for r in s["fits"]], "o-")
    ax[0].set_xscale("log")
    ax[0].set_xlabel("Gaussians")
    ax[0].set_ylabel("PSNR (dB)")
    ax[1].plot(ns, [r["ms_ssim"] for r in s["fits"]], "o-")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("Gaussians")
    ax[1].set_ylabel("MS-SSIM")
    fig.suptitle(f"Kodak ({len(results['images'])} images), {results['config']['iterations']} iterations, CPU")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "image2d_quality.png"), dpi=110)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    pts = sorted((r["bpp"], r["psnr"]) for im in results["images"] for r in im["rd"])
    ax.plot([r["bpp"] for r in s["rd"]], [r["psnr"] for r in s["rd"]], "o-", label="splat .sgi (mean)")
    for key, lab in (("jpeg_psnr", "JPEG (Pillow)"), ("webp_psnr", "WebP (Pillow)")):
        xy = [(r["bpp"], r[key]) for r in s["rd"] if r[key] is not None]
        if xy:
            ax.plot(*zip(*xy), "s--", label=lab + " at the same bpp")
    ax.scatter(*zip(*pts), s=8, alpha=0.4, label="splat, per image")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "image2d_rd.png"), dpi=110)


if __name__ == "__main__":
    main()
