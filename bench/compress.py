"""Compressed formats: size, bits per Gaussian and quality, ours beside PlayCanvas splat-transform.

    python bench/compress.py                       # the default scene, the held-out-style object, the capture
    python bench/compress.py --scenes object --reuse   # reuse trained models in the cache

Per scene it trains (the CLI, as a user would; cached under ~/.cache/splat/bench/compress/):
a plain model (the scene's defaults) and one with ``--compress sog`` (the self-organising grid's
smoothness loss). Then it writes the plain model in every format -- ours through ``splat-export``'s
code, and ``.sog`` also through splat-transform 3.7 (``-g cpu``: k-means on the CPU) -- and reports
for each file: bytes, bits per Gaussian, the size ratio to the ``.ply``, the test PSNR against the
ground truth and the PSNR of its renders against the uncompressed model's (both on the test views).

Interoperability (the issue's checks): splat-transform converts our ``.sog`` back to a ``.ply`` and
we read its ``.sog``; each decoded model's renders must reach 35 dB against the original's.
Results: bench/results_compress.json; the README's table comes from it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import splat_transform  # noqa: E402
from bench.common import object_scene_path  # noqa: E402

CACHE = Path.home() / ".cache" / "splat" / "bench" / "compress"


def train(scene: str, data, out: Path, steps: int, extra=(), reuse=True, log=print) -> Path:
    if reuse and (out / "model.ply").is_file():
        return out
    cmd = [sys.executable, "-m", "splat.train", "--out", str(out), "--no-progress", "--iterations", str(steps), *extra]
    if data is not None:
        cmd += ["--data", str(data)]
    log(f"[{scene}] training: {' '.join(cmd[2:])}")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


class Scorer:
    """Test-view PSNR of a splats dict against the ground truth and against the reference model."""

    def __init__(self, run: Path):
        from splat.models.static import StaticModel
        from splat.render import RenderSettings
        from splat.train.data import Views
        from splat.train.run import run_data_path, run_dataset

        self.cfg = json.loads((run / "config.json").read_text())
        bg = np.asarray(self.cfg.get("background", [1, 1, 1]), np.float32)
        data = run_dataset(run_data_path(self.cfg), self.cfg, bg)
        self.views = Views(data.test, "cpu")
        self.train_split = data.train
        self.bg = torch.from_numpy(bg)
        # as the trainer evaluates (its near plane follows the scene's scale)
        self.settings = RenderSettings("cpu", self.cfg.get("rasterize_mode", "classic")).for_scene(data.scene_scale)
        self.StaticModel = StaticModel
        self.reference = None

    def renders(self, splats):
        from splat.train.evaluate import render_views

        m = self.StaticModel.from_splats({k: v.clone() for k, v in splats.items()})
        return [c.clamp(0, 1) for _, c, _, _ in render_views(m, self.views, self.settings, backgrounds=self.bg[None])]

    def score(self, splats) -> dict:
        from splat.metrics import psnr

        r = self.renders(splats)
        if self.reference is None:
            self.reference = r
        gt = [self.views.image(i) for i in range(len(self.views))]
        return {"psnr": float(np.mean([psnr(a, b).item() for a, b in zip(r, gt)])),
                "psnr_vs_model": float(np.mean([min(99.0, psnr(a, b).item()) for a, b in zip(r, self.reference)]))}


def bench_scene(scene: str, steps: int, reuse: bool, log=print) -> dict:
    import splat.io as sio
    from splat.export_cli import ExportCommand, export

    extra = []
    if scene == "default":
        data = None
    elif scene == "object":
        data = object_scene_path(1)
    else:  # the real-style COLMAP capture (scenes/capture_scene.py): 23 photos of an object on a table
        from scenes.capture_scene import capture_scene_path

        data, extra = capture_scene_path("default"), ["--downscale", "4", "--test-every", "8"]
    plain = train(scene, data, CACHE / scene / "plain", steps, extra, reuse=reuse, log=log)
    sogrun = train(scene, data, CACHE / scene / "sog", steps, extra + ["--compress", "sog"], reuse=reuse, log=log)
    scorer = Scorer(plain)
    ply = plain / "model.ply"
    model = sio.load(ply)
    n = int(model["means"].shape[0])
    ply_bytes = os.path.getsize(ply)
    rows = []
    base = scorer.score(model)

    def row(label, path, seconds=None, splats=None, note=""):
        size = os.path.getsize(path)
        s = scorer.score(sio.load(path) if splats is None else splats)
        gauss = int((sio.load(path) if splats is None else splats)["means"].shape[0])
        r = dict(label=label, file=Path(path).name, bytes=size, gaussians=gauss, bits_per_gaussian=8 * size / gauss,
                 ratio=ply_bytes / size, psnr=s["psnr"], psnr_vs_model=s["psnr_vs_model"], seconds=seconds, note=note)
        rows.append(r)
        log(f"[{scene}] {label:38s} {size / 1e6:7.3f} MB {r['bits_per_gaussian']:7.1f} b/G {r['ratio']:6.2f}x  "
            f"PSNR {r['psnr']:.2f} dB ({r['psnr'] - base['psnr']:+.2f})  vs model {r['psnr_vs_model']:.2f} dB"
            + (f"  {seconds:.1f} s" if seconds is not None else ""))
        return r

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        row(".ply (3DGS, float32)", ply)

        def ours(label, name, **opts):
            out = tmp / name
            t0 = time.perf_counter()
            summary = export(ExportCommand(input=ply, output=out, **opts), out=lambda *_: None)  # beside config.json
            layout = summary.get("sog_layout")
            return row(label, out, time.perf_counter() - t0, note=f"layout: {layout}" if layout else "")

        ours(".compressed.ply (ours)", "m.compressed.ply")
        ours(".splat (ours; no SH)", "m.splat")
        ours(".spz v3 (ours)", "m.spz")
        ours(".glb KHR_gaussian_splatting (ours)", "m.glb")
        ours_sog = ours(".sog (ours, default)", "m.sog")
        ours("  .sog, Morton order only", "morton.sog", sog_order="morton")
        ours("  .sog, SH palette 4096", "p4k.sog", sh_palette=4096)
        ours("  .sog, SH palette 16384", "p16k.sog", sh_palette=16384)
        ours("  .sog, SH degree 1", "d1.sog", sh_degree=1)
        ours("  .sog, SH degree 0", "d0.sog", sh_degree=0)
        ours("  .spz, SH palette 1024", "pal.spz", sh_palette=1024)
        budget = ours("  .sog, --budget 0.3", "b03.sog", budget=0.3)
        ours("  .sog, --budget 0.3 --budget-distill 0", "b03m.sog", budget=0.3, budget_distill=0)
        ours("  .sog, --budget 0.3 --budget-distill 1500", "b03l.sog", budget=0.3, budget_distill=1500)
        t0 = time.perf_counter()  # splat-export of the run: PLAS from its trained grid, or Morton if smaller
        summary = export(ExportCommand(input=sogrun, output=tmp / "trained.sog"), out=lambda *_: None)
        trained = row(".sog of a --compress sog run", tmp / "trained.sog", time.perf_counter() - t0,
                      note=f"its own .ply: {Scorer(sogrun).score(sio.load(sogrun / 'model.ply'))['psnr']:.2f} dB; "
                           f"layout: {summary.get('sog_layout')}")
        interop = {}
        cli = splat_transform.cli_path()
        if cli is None:
            log("splat-transform not installed (scripts/install_splat_transform.sh): its rows are skipped")
        else:
            st_dir = CACHE / scene / "splat_transform"  # its k-means takes minutes: kept with --reuse
            st_dir.mkdir(parents=True, exist_ok=True)
            times = json.loads((st_dir / "seconds.json").read_text()) if (st_dir / "seconds.json").is_file() else {}

            def st(name, args=()):
                dst = st_dir / name
                if not (reuse and dst.is_file() and dst.stat().st_mtime > ply.stat().st_mtime and name in times):
                    times[name] = splat_transform.convert(ply, dst, list(args))
                    (st_dir / "seconds.json").write_text(json.dumps(times))
                return dst, times[name]

            theirs = row(".sog (splat-transform 3.7, -g cpu)", *st("st.sog"))
            row(".compressed.ply (splat-transform)", *st("st.compressed.ply"))
            row(".spz (splat-transform; v4)", *st("st.spz"),
                note="it writes the .ply axes where spz has RUB: read here mirrored in y and z, hence the PSNR")
            row("  .sog (splat-transform -H 0: no SH)", *st("st_h0.sog", ["-H", "0"]))
            # interoperability: they read ours, we read theirs
            splat_transform.convert(tmp / "m.sog", tmp / "ours_by_st.ply")
            by_them = scorer.score(sio.load(tmp / "ours_by_st.ply"))
            interop = {"ours_read_by_splat_transform_psnr_vs_model": by_them["psnr_vs_model"],
                       "theirs_read_by_us_psnr_vs_model": theirs["psnr_vs_model"],
                       "ours_vs_theirs_bytes": ours_sog["bytes"] / theirs["bytes"],
                       "ours_minus_theirs_psnr": ours_sog["psnr"] - theirs["psnr"],
                       "ours_write_seconds": ours_sog["seconds"], "theirs_write_seconds": theirs["seconds"]}
            log(f"[{scene}] interop: splat-transform reads our .sog: {by_them['psnr_vs_model']:.2f} dB vs the model; "
                f"we read its .sog: {theirs['psnr_vs_model']:.2f} dB (check: >= 35)")
            log(f"[{scene}] ours/theirs .sog: {interop['ours_vs_theirs_bytes']:.3f}x the bytes, "
                f"{interop['ours_minus_theirs_psnr']:+.2f} dB, written in {ours_sog['seconds']:.1f} s vs "
                f"{theirs['seconds']:.1f} s ({theirs['seconds'] / ours_sog['seconds']:.1f}x faster)")
    checks = {"sog_ratio_to_ply": ply_bytes / ours_sog["bytes"],
              "budget_0.3_minus_full_psnr": budget["psnr"] - base["psnr"],
              "trained_grid_vs_plain_bytes": trained["bytes"] / ours_sog["bytes"]}
    log(f"[{scene}] .ply / our .sog = {checks['sog_ratio_to_ply']:.2f}x (check >= 15); --budget 0.3: "
        f"{checks['budget_0.3_minus_full_psnr']:+.2f} dB (check >= -1.5)")
    return {"scene": scene, "steps": steps, "gaussians": n, "ply_bytes": ply_bytes, "psnr_model": base["psnr"],
            "rows": rows, "interop": interop, "checks": checks}


def markdown(results: dict) -> str:
    """The README's tables from the results."""
    out = []
    for sc in results["scenes"]:
        title = {"default": "The default scene", "object": "A held-out-style object",
                 "capture": "A real-style capture (COLMAP, 23 photos, object on a table, --downscale 4)"}.get(
            sc["scene"], sc["scene"])
        out.append(f"**{title}** ({sc['gaussians']:,} Gaussians, SH degree 3, {sc['steps']} steps; the model's "
                   f"test PSNR {sc['psnr_model']:.2f} dB):\n")
        out.append("| file | bytes | bits / Gaussian | vs .ply | test PSNR (dB) | vs model (dB) | write (s) |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for r in sc["rows"]:
            label = r["label"].strip()
            indent = "&nbsp;&nbsp;" if r["label"].startswith("  ") else ""
            vs = "exact" if r["psnr_vs_model"] >= 99 else f"{r['psnr_vs_model']:.1f}"
            secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
            gauss = "" if r["gaussians"] == sc["gaussians"] else f" ({r['gaussians']:,} Gaussians)"
            note = f" ({r['note']})" if r.get("note") else ""
            out.append(f"| {indent}{label}{gauss}{note} | {r['bytes']:,} | {r['bits_per_gaussian']:.1f} | "
                       f"{r['ratio']:.1f}x | {r['psnr']:.2f} | {vs} | {secs} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default="default,object,capture", help="comma-separated: default, object, capture")
    ap.add_argument("--reuse", action="store_true", help="reuse trained models from the cache")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results_compress.json"))
    ap.add_argument("--table", action="store_true", help="print the README's tables from --out and stop")
    a = ap.parse_args(argv)
    if a.table:
        print(markdown(json.loads(Path(a.out).read_text())))
        return 0
    steps = {"default": 3000, "object": 2000, "capture": 3000}
    results = {"machine": f"{os.cpu_count()} CPU cores", "torch": torch.__version__, "scenes": []}
    if Path(a.out).is_file():  # scenes not run this time keep their last results
        results["scenes"] = [sc for sc in json.loads(Path(a.out).read_text())["scenes"]
                             if sc["scene"] not in a.scenes.split(",")]
    for scene in a.scenes.split(","):
        results["scenes"].append(bench_scene(scene, steps[scene], a.reuse))
    order = ["default", "object", "capture"]
    results["scenes"].sort(key=lambda sc: order.index(sc["scene"]) if sc["scene"] in order else 99)
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(markdown(results))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
