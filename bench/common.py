"""Scenes shared by the benchmarks."""
from __future__ import annotations

import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scenes.garden import garden_scene  # noqa: E402,F401


def timed(fn, repeats=3, warmup=0, device=None):
    """Median wall time of `repeats` calls of fn after `warmup` untimed ones, in seconds; with a
    CUDA `device`, synchronised after the warm-up and after each call."""
    def sync():
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_scene(N: int, width=640, height=480, C=1, seed=0):
    """N random Gaussians in a cube seen by C cameras; sizes shrink with N^(1/3) so the
    cube stays similarly covered."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(N, 3, generator=g) * 2 - 1
    quats = torch.randn(N, 4, generator=g)
    spacing = 2.0 / N ** (1 / 3)
    scales = spacing * (0.2 + 0.6 * torch.rand(N, 3, generator=g))
    opacities = torch.rand(N, generator=g) * 0.6 + 0.2
    colors = torch.rand(N, 3, generator=g)
    f = 0.5 * width / math.tan(math.radians(30))
    views, Ks = [], []
    for i in range(C):
        ang = 2 * math.pi * i / C
        eye = torch.tensor([3.2 * math.sin(ang), 0.3, -3.2 * math.cos(ang)])
        z = -eye / eye.norm()
        x = torch.linalg.cross(torch.tensor([0.0, -1.0, 0.0]), z)
        x = x / x.norm()
        y = torch.linalg.cross(z, x)
        R = torch.stack([x, y, z])
        V = torch.eye(4)
        V[:3, :3] = R
        V[:3, 3] = -R @ eye
        views.append(V)
        Ks.append(torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]))
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                viewmats=torch.stack(views), Ks=torch.stack(Ks), width=width, height=height)


def object_scene_path(seed: int = 1):
    """A NeRF-synthetic object capture as the held-out checks describe it: 16 train / 4 test views
    at 200x200 and no points3d.ply (so training starts from 100k random points). Rendered once
    (Mitsuba, about 2 min) from the default scene's generator with another seed (other textures,
    other cameras) into the splat cache."""
    from pathlib import Path

    from scenes.default_scene import _cache_dir, generate

    out = _cache_dir(f"object16_s{seed}")
    if not (out / "transforms_test.json").is_file():
        generate(out, width=200, n_train=16, n_test=4, spp=64, seed=seed, n_points=100, threads=os.cpu_count() or 1,
                 verbose=False)
        (Path(out) / "points3d.ply").unlink()
    return out


def train_run(data, steps: int, log=print, label: str = "", **cfg) -> dict:
    """Train `steps` steps on `data` with `splat.train.TrainConfig` options `cfg` (a new user's
    defaults otherwise) in a temporary run directory; returns metrics.json's figures."""
    import tempfile
    from pathlib import Path

    from splat.train import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as tmp:
        c = TrainConfig(data=Path(data), out=Path(tmp) / "run", iterations=steps, progress=False, save_renders=0,
                        export=[], save_every=0, **cfg)
        m = Trainer(c, log=lambda *a: None).train()
    r = {k: m[k] for k in ("psnr", "ssim", "num_gaussians", "train_seconds", "seconds_per_iteration", "render_ms",
                           "history")}
    log(f"  {label:10s} PSNR {r['psnr']:6.2f}  SSIM {r['ssim']:.4f}  {r['num_gaussians']:8,d} Gaussians  "
        f"{r['train_seconds']:6.1f} s")
    return r


def plot_psnr_over_time(panels: dict, path, reference: dict = None) -> None:
    """One panel per scene: test PSNR over training seconds of each run (`train_run` results with
    their eval history), labelled by name; `reference` {scene: psnr} draws a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.4), squeeze=False)
    for ax, (name, runs) in zip(axes[0], panels.items()):
        for label, r in runs.items():
            h = [e for e in r["history"] if "psnr" in e]
            ax.plot([e["train_seconds"] for e in h] + [r["train_seconds"]], [e["psnr"] for e in h] + [r["psnr"]],
                    marker="o", ms=3, label=label)
        if reference and name in reference:
            ax.axhline(reference[name], color="gray", lw=0.8, ls="--")
        ax.set_title(name)
        ax.set_xlabel("training seconds")
        ax.set_ylabel("test PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"-> {path}")


def start_results(path, **settings) -> dict:
    """A benchmark's results: the machine, `settings`, and under ``scenes`` those of the earlier
    results at `path` when they were measured with the same settings (so that running one scene
    keeps the others' figures)."""
    import json
    import platform
    from pathlib import Path

    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                          f"{torch.__version__}, {torch.get_num_threads()} threads", **settings, "scenes": {}}
    if Path(path).is_file():
        old = json.loads(Path(path).read_text())
        if all(old.get(k) == v for k, v in settings.items()):
            results["scenes"] = old.get("scenes", {})
    return results
