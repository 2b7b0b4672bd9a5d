"""The ray tracer (backend="raytrace", 3DGRT) against the rasterizer, measured in the same run.

    python bench/raytrace.py                       # garden point cloud and random scenes
    python bench/raytrace.py --train               # + both backends trained 2000 steps on the held-out-style
                                                   #   object (16/4 views at 200x200, random init), cross-rendered
    python bench/raytrace.py --scenes garden       # one scene (the others' earlier figures are kept)

For each scene and one camera: forward and forward+backward milliseconds of the rasterizer (native CPU)
and of the tracer, the tracer's rays per second and Gaussians composited per ray, the rasterizer's
Gaussian-tile pairs per second, and the PSNR between the two images. Where open3d-cpu is installed
(`pip install --no-deps open3d-cpu`, a benchmark-only peer), Embree through open3d's RaycastingScene is
timed on the same rays against 3DGRT's proxy (each Gaussian's stretched icosahedron, 20 triangles): BVH
build and a query of every proxy hit per ray (`list_intersections`, no ordering or compositing), beside
our BVH build and complete forward. Results: bench/results_raytrace.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import garden_scene, object_scene_path, random_scene, start_results, timed  # noqa: E402
from splat.backends import raytrace as rt  # noqa: E402
from splat.io.common import atomic_write  # noqa: E402
from splat.render import rasterize  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results_raytrace.json"


def psnr(a, b) -> float:
    return -10 * math.log10(max(float(((a - b) ** 2).mean()), 1e-20))


def _embree():
    """open3d's RaycastingScene class (Embree), or None. open3d's package __init__ imports plotly/dash
    for its notebook helpers; the extension module itself needs neither, so it is loaded directly."""
    try:
        import glob
        import importlib.util
        import site

        for d in site.getsitepackages():
            for p in glob.glob(os.path.join(d, "open3d", "cpu", "pybind*.so")):
                spec = importlib.util.spec_from_file_location("pybind", p)
                m = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(m)
                return m.t.geometry.RaycastingScene, m.core
    except Exception as e:  # noqa: BLE001
        print(f"open3d-cpu found but not loadable ({e}): Embree not measured", flush=True)
        return None
    return None


def icosahedron():
    """Unit icosahedron vertices [12, 3] and faces [20, 3], scaled so its inscribed sphere has radius 1
    (a proxy that contains the unit sphere, as 3DGRT's)."""
    p = (1 + 5 ** 0.5) / 2
    v = torch.tensor([[-1, p, 0], [1, p, 0], [-1, -p, 0], [1, -p, 0], [0, -1, p], [0, 1, p], [0, -1, -p], [0, 1, -p],
                      [p, 0, -1], [p, 0, 1], [-p, 0, -1], [-p, 0, 1]], dtype=torch.float64)
    f = torch.tensor([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                      [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
                      [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    v = v / v.norm(dim=1, keepdim=True)
    inradius = float((v[f[0]].mean(0)).norm())
    return v / inradius, f


def embree_query(s: dict, origins, dirs, repeats: int):
    """(build seconds, query seconds, hits per ray) of Embree on 3DGRT's icosahedron proxies."""
    found = _embree()
    if found is None:
        return None
    Scene, core = found
    from splat.backends.torch_ref import quat_to_rotmat

    N = s["means"].shape[0]
    k = torch.sqrt(2 * torch.log(torch.clamp(s["opacities"].double() * 255.0, min=1.0 + 1e-6)))  # 1/255 extent
    M = quat_to_rotmat(s["quats"].double()) * (s["scales"].double() * k[:, None])[:, None, :]
    v, f = icosahedron()
    verts = (M[:, None] @ v[None, :, :, None])[..., 0] + s["means"].double()[:, None]  # [N, 12, 3]
    faces = (f[None] + 12 * torch.arange(N)[:, None, None]).reshape(-1, 3)
    V = core.Tensor(verts.reshape(-1, 3).float().numpy())
    F = core.Tensor(faces.numpy().astype("uint32"))
    rays = core.Tensor(torch.cat([origins, dirs], -1).float().numpy())

    one = core.Tensor(torch.cat([origins[:1], dirs[:1]], -1).float().numpy())

    def build():  # Embree builds its BVH lazily, at the first query: one ray's query is part of the build
        scene = Scene()
        scene.add_triangles(V, F)
        scene.count_intersections(one)
        return scene

    t_build = timed(build, repeats)
    scene = build()

    out = {}

    def query():
        out["r"] = scene.list_intersections(rays)

    t_query = timed(query, repeats)
    hits = out["r"]["ray_splits"].numpy()
    return t_build, t_query, float((hits[1:] - hits[:-1]).mean()) / 2  # entry and exit per proxy


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench_scene(name: str, s: dict, repeats: int, device: str = "cpu") -> dict:
    W, H = s["width"], s["height"]
    V, K = s["viewmats"][:1].to(device), s["Ks"][:1].to(device)
    args = [s[k].to(device) for k in ("means", "quats", "scales", "opacities", "colors")]
    r = {"gaussians": int(args[0].shape[0]), "width": W, "height": H, "device": device}
    imgs = {}
    raster = "cuda" if device == "cuda" else "cpu"
    for be in (raster, "raytrace"):
        with torch.no_grad():
            def fwd():
                imgs[be], _, info = rasterize(*args, V, K, W, H, backend=be)
                imgs[be + "_info"] = info
                _sync(device)
            fwd()
            t = timed(fwd, repeats)
        xs = [a.clone().requires_grad_() for a in args]

        def fwd_bwd():
            img, alpha, _ = rasterize(*xs, V, K, W, H, backend=be)
            (img.sum() + alpha.sum()).backward()
            _sync(device)

        fwd_bwd()
        tb = timed(fwd_bwd, repeats)
        r["cpu" if be == raster else be] = {"forward_ms": 1000 * t, "forward_backward_ms": 1000 * tb}
    imgs["cpu"], imgs["cpu_info"] = imgs[raster], imgs[raster + "_info"]
    pairs = int(imgs["cpu_info"]["isect_ids"].numel())
    r["cpu"]["tile_pairs"] = pairs
    r["cpu"]["pairs_per_second"] = pairs / (r["cpu"]["forward_ms"] / 1000)
    r["cpu"]["pixels_per_second"] = W * H / (r["cpu"]["forward_ms"] / 1000)
    # the tracer's rays, hits and BVH build on their own
    from splat import camera_models as cm

    o, d, _ = cm.camera_rays(V, K, W, H)
    o, d = o[0], d[0]
    precs = rt.dilated_precisions(args[0], args[1], args[2], None, V, K, "pinhole", 0.3)[0][0].contiguous()
    with torch.no_grad():
        _, _, hits = rt.trace_rays(args[0], precs, args[3], args[4], o, d, torch.full((W * H,), 0.01, device=device),
                                   torch.full((W * H,), 1e10, device=device))
    host = [x.detach().cpu().contiguous() for x in (args[0], precs, args[3])]
    t_build = timed(lambda: rt.build_bvh(*host), repeats)
    o, d = o.cpu(), d.cpu()
    r["raytrace"].update(rays_per_second=W * H / (r["raytrace"]["forward_ms"] / 1000),
                         hits_per_ray=float(hits.float().mean()), bvh_build_ms=1000 * t_build,
                         kbuffer=rt._lib().splat_rt_kbuffer())
    r["psnr_raytrace_vs_raster"] = psnr(imgs["cpu"], imgs["raytrace"])
    r["forward_ratio_raytrace_over_raster"] = r["raytrace"]["forward_ms"] / r["cpu"]["forward_ms"]
    emb = embree_query(s, o, d, repeats) if device == "cpu" else None
    if emb is not None:
        r["embree"] = {"proxy": "3DGRT icosahedron, 20 triangles per Gaussian", "build_ms": 1000 * emb[0],
                       "all_hits_query_ms": 1000 * emb[1], "proxy_hits_per_ray": emb[2]}
    print(f"{name}: {r['gaussians']:,} Gaussians {W}x{H}; raster fwd {r['cpu']['forward_ms']:.0f} ms "
          f"fwd+bwd {r['cpu']['forward_backward_ms']:.0f} ms ({r['cpu']['pairs_per_second'] / 1e6:.1f} M pairs/s); "
          f"raytrace fwd {r['raytrace']['forward_ms']:.0f} ms fwd+bwd {r['raytrace']['forward_backward_ms']:.0f} ms "
          f"({r['raytrace']['rays_per_second'] / 1e6:.2f} M rays/s, {r['raytrace']['hits_per_ray']:.0f} hits/ray, "
          f"BVH {t_build * 1000:.0f} ms); images {r['psnr_raytrace_vs_raster']:.1f} dB apart"
          + (f"; Embree build {r['embree']['build_ms']:.0f} ms + all-hits query {r['embree']['all_hits_query_ms']:.0f}"
             f" ms" if "embree" in r else ""), flush=True)
    return r


def bench_agreement(seeds=range(5)) -> dict:
    """The tests' comparison on random scenes of 300 Gaussians (64x48): images and gradients of the tracer
    against the rasterizer, with and without the eps2d dilation, and what the rasterizer's blur alone is."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from scene_utils import cameras, gaussians

    rows = []
    for seed in seeds:
        means, quats, scales, opac, cols = gaussians(300, seed=seed, scale=(0.03, 0.2))
        V, K = cameras(1, 64, 48, seed=seed)
        w = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(seed))
        out = {}
        for key, be, kw in (("raster", "cpu", {}), ("raster_sharp", "cpu", {"eps2d": 0.0}),
                            ("trace", "raytrace", {}), ("trace_undilated", "raytrace",
                                                        {"raytrace_options": {"dilate": False}})):
            xs = [t.clone().requires_grad_() for t in (means, quats, scales, opac, cols)]
            img, _, _ = rasterize(*xs, V, K, 64, 48, backend=be, **kw)
            (img * w).sum().backward()
            out[key] = (img.detach(), xs[0].grad, xs[4].grad)

        def cos(a, b):
            return float((a * b).sum() / (a.norm() * b.norm()))

        rows.append({"seed": seed, "psnr_trace_vs_raster": psnr(out["trace"][0], out["raster"][0]),
                     "psnr_undilated_trace_vs_raster": psnr(out["trace_undilated"][0], out["raster"][0]),
                     "psnr_undilated_trace_vs_sharp_raster": psnr(out["trace_undilated"][0], out["raster_sharp"][0]),
                     "psnr_raster_blur_alone": psnr(out["raster"][0], out["raster_sharp"][0]),
                     "cos_means": cos(out["trace"][1], out["raster"][1]),
                     "cos_colors": cos(out["trace"][2], out["raster"][2])})
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "seed"}
    print("agreement on random 300-Gaussian scenes (mean of 5): " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()),
          flush=True)
    return {"per_seed": rows, "mean": mean}


def bench_training(steps: int) -> dict:
    """Both backends trained `steps` steps on the held-out-style object; each model rendered at the test
    views by both backends."""
    from splat.train import TrainConfig, Trainer
    from splat.train.data import Views
    from splat.train.evaluate import evaluate
    from splat.render import RenderSettings
    import tempfile

    data = object_scene_path(1)
    out = {"data": "NeRF-synthetic-style object, 16 train / 4 test views at 200x200, 100k random initial points",
           "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for be in ("cpu", "raytrace"):
            cfg = TrainConfig(data=data, out=Path(tmp) / be, iterations=steps, progress=False, save_renders=0,
                              export=[], save_every=0, backend=be)
            t0 = time.perf_counter()
            tr = Trainer(cfg, log=lambda *a: None)
            m = tr.train()
            out[f"trained_{be}"] = {"psnr": m["psnr"], "ssim": m["ssim"], "num_gaussians": m["num_gaussians"],
                                    "train_seconds": m["train_seconds"], "wall_seconds": time.perf_counter() - t0}
            models[be] = tr
            print(f"trained with {be}: {m['psnr']:.2f} dB, {m['num_gaussians']:,} Gaussians, "
                  f"{m['train_seconds']:.0f} s training", flush=True)
        for be, tr in models.items():
            views = Views(tr.data.test, "cpu")
            bg = torch.tensor(tr.cfg.background, dtype=torch.float32)
            for render_be in ("cpu", "raytrace"):
                settings = RenderSettings(render_be, tr.cfg.rasterize_mode).for_scene(tr.model.scene_scale)
                m = evaluate(tr.model, views, settings, bg)
                out[f"trained_{be}"][f"psnr_rendered_{render_be}"] = m["psnr"]
            print(f"model trained with {be}: test PSNR rendered by the rasterizer "
                  f"{out[f'trained_{be}']['psnr_rendered_cpu']:.2f} dB, by the tracer "
                  f"{out[f'trained_{be}']['psnr_rendered_raytrace']:.2f} dB", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="*", default=["garden", "random_10k", "random_100k"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train", action="store_true", help="also train both backends on the object (about 25 min)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", type=Path, default=None, help=f"results file (default {RESULTS.name} for the CPU)")
    a = ap.parse_args(argv)
    out_path = a.json or (RESULTS if a.device == "cpu" else HERE / "results_raytrace_cuda.json")
    settings = {"threads": torch.get_num_threads(), **({"device": a.device} if a.device != "cpu" else {})}
    results = start_results(out_path, **settings)
    if a.device == "cpu":
        results["agreement"] = bench_agreement()
    for name in a.scenes:
        if name == "garden":
            s = garden_scene()
        elif name.startswith("random_"):
            n = int(name.split("_")[1].replace("k", "000"))
            s = random_scene(n, 640, 480, seed=0)
        else:
            raise SystemExit(f"unknown scene {name!r}")
        results["scenes"][name] = bench_scene(name, s, a.repeats, a.device)
    if a.train:
        results["training"] = bench_training(a.steps)
    elif out_path.is_file():
        old = json.loads(out_path.read_text())
        if "training" in old:
            results["training"] = old["training"]
    atomic_write(out_path, (json.dumps(results, indent=2) + "\n").encode())
    print(f"-> {out_path}")


if __name__ == "__main__":
    main()
