"""Training speed with and without the live viewer attached, in one process.

The workload is bench/train.py's: the default scene's views with a fixed
number of Gaussians (density control off, full SH degree), so every step costs
the same. Each configuration trains the same steps from the same parameters
through the trainer's own loop (`Trainer.train`, as `splat-train --viewer`
runs it), in interleaved rounds:

  none      no viewer (the reference)
  server    viewer attached, no browser connected
  idle      viewer attached, one browser connected, camera still: the viewer
            follows the training model every "Live refresh" seconds (default 2 s)
  active    the browser's camera moves continuously (20 updates/s): the viewer
            renders all the time, in its own thread, on the same 2 cores

The browser is `viewer.headless.HeadlessClient` (viser's websocket protocol,
no rendering of its own): a real Chromium would take the same cores the
training runs on, which a user's browser on another machine does not.

"Viewer never blocks the step": the only viewer code on the training thread
is `TrainingLink.step_done` (and the parameter copy it makes on request); its
longest call is reported next to the render times it would otherwise include.

    python bench/viewer.py                 # writes bench/results_viewer_cpu.json
"""
from __future__ import annotations

import dataclasses
import json
import math
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import List

import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


@dataclasses.dataclass
class Args:
    count: int = 50_000
    """Gaussians (the default scene ends its training with about 47k)."""
    steps: int = 60
    """Training steps per configuration and round."""
    rounds: int = 4
    configs: List[str] = dataclasses.field(default_factory=lambda: ["none", "server", "idle", "active"])
    refresh_s: float = 2.0
    """The viewer's live refresh interval (its default)."""
    training_nice: int = 10
    """Nice value of the viewer's render thread beside a training (the Viewer's default)."""
    out: Path = ROOT / "bench" / "results_viewer_cpu.json"


def run_config(t, init, name: str, steps: int, refresh_s: float, nice: int) -> dict:
    from splat.models.static import StaticModel
    from splat.train import CallbackList
    from viewer import SplatScene, TrainingLink, Viewer
    from viewer.headless import HeadlessClient
    from viewer.training import LinkCallback

    t.set_model(StaticModel(t.model.config, {k: v.clone() for k, v in init.items()}, t.model.scene_scale))
    t.start_step, t.iterations = 3000, 3000 + steps  # full SH degree from the first step
    t.out.mkdir(parents=True, exist_ok=True)

    ends: List[float] = []
    orig_step = type(t).train_step

    def timed_step(step):
        r = orig_step(t, step)
        ends.append(time.perf_counter())
        return r

    t.train_step = timed_step
    t.evaluate = lambda step, save_renders=0: {"step": step}  # not timed, not needed here
    t.save_checkpoint = lambda step: None
    viewer = link = client = mover = None
    in_link: List[float] = []
    stop = threading.Event()
    if name != "none":
        link = TrainingLink(t.iterations, t.start_step)
        orig_done = link.step_done

        def step_done(*a):
            t0 = time.perf_counter()
            orig_done(*a)
            in_link.append(time.perf_counter() - t0)

        link.step_done = step_done
        scene = SplatScene({k: p.detach().clone() for k, p in t.model.params.items()}, name="bench")
        viewer = Viewer(scene, port=0, link=link, refresh_s=refresh_s, training_nice=nice, log=lambda *a: None)
        if name in ("idle", "active"):
            client = HeadlessClient(viewer.url, 640, 480)
            client.set_camera((0.0, -3.0, 1.0), (0.0, 0.0, 0.0))
            t0 = time.perf_counter()
            while viewer.render_count == 0 and time.perf_counter() - t0 < 30:
                time.sleep(0.02)
            if name == "active":
                def move():
                    a = 0.0
                    while not stop.wait(0.05):
                        a += 0.05
                        client.set_camera((3 * math.sin(a), -3 * math.cos(a), 1.0), (0.0, 0.0, 0.0))

                mover = threading.Thread(target=move, daemon=True)
        r0 = viewer.render_count
    if mover is not None:
        mover.start()
    t.callbacks = CallbackList([LinkCallback(link)] if link is not None else [])
    t0 = time.perf_counter()
    t.train()  # the trainer's own loop, as splat-train --viewer runs it
    wall = time.perf_counter() - t0
    stop.set()
    res = {"config": name}
    if viewer is not None:
        renders = viewer.render_count - r0
        res.update(renders=renders, render_ms=1000 * viewer.render_seconds / max(1, viewer.render_count),
                   link_max_ms=1000 * max(in_link), link_mean_us=1e6 * statistics.mean(in_link),
                   snapshots=len(link.snapshot_seconds),
                   snapshot_max_ms=1000 * max(link.snapshot_seconds) if link.snapshot_seconds else 0.0)
        if client is not None:
            res["bytes_to_browser"] = client.bytes_received
            client.close()
        viewer.stop()
    iv = [b - a for a, b in zip(ends, ends[1:])]
    res.update(sec_per_step=statistics.mean(iv), p99_step=sorted(iv)[int(0.99 * (len(iv) - 1))], wall=wall)
    del t.train_step, t.evaluate, t.save_checkpoint
    return res


def main(args: Args) -> None:
    import torch

    from train import fixed_count_trainer

    t = fixed_count_trainer("auto", args.count)
    init = {k: p.detach().clone() for k, p in t.model.params.items()}
    for _ in range(3):  # warm-up: build, caches
        t.train_step(3000)
    print(f"training with and without the live viewer: default scene views (256x256), {args.count:,} Gaussians, "
          f"{args.steps} steps x {args.rounds} rounds, {torch.get_num_threads()} threads")
    runs = {c: [] for c in args.configs}
    for r in range(args.rounds):
        for c in args.configs:
            runs[c].append(run_config(t, init, c, args.steps, args.refresh_s, args.training_nice))
            x = runs[c][-1]
            print(f"  round {r + 1} {c:>7}: {x['sec_per_step'] * 1000:7.1f} ms/step"
                  + (f", {x['renders']} renders" if "renders" in x else ""), flush=True)
    base = statistics.median(x["sec_per_step"] for x in runs["none"]) if "none" in runs else None
    rows = []
    print(f"\n{'config':>8} {'ms/step':>8} {'vs none':>8} {'p99 ms':>7} {'renders':>8} {'render ms':>10} "
          f"{'step_done max ms':>17} {'copies':>7}")
    for c, xs in runs.items():
        med = statistics.median(x["sec_per_step"] for x in xs)
        row = {"config": c, "sec_per_step": med, "ratio": med / base if base else None,
               "p99_step": statistics.median(x["p99_step"] for x in xs), "rounds": xs}
        if "renders" in xs[0]:
            row.update(renders=sum(x["renders"] for x in xs) / len(xs),
                       render_ms=statistics.median(x["render_ms"] for x in xs),
                       link_max_ms=max(x["link_max_ms"] for x in xs),
                       snapshots=sum(x["snapshots"] for x in xs) / len(xs))
        rows.append(row)
        print(f"{c:>8} {1000 * med:>8.1f} {row['ratio'] if base else float('nan'):>8.3f} "
              f"{1000 * row['p99_step']:>7.1f} "
              + (f"{row['renders']:>8.0f} {row['render_ms']:>10.1f} {row['link_max_ms']:>17.2f} "
                 f"{row['snapshots']:>7.0f}" if "renders" in row else ""))
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__},
           "count": args.count, "steps": args.steps, "rounds": args.rounds, "refresh_s": args.refresh_s,
           "training_nice": args.training_nice,
           "rows": rows}
    args.out.write_text(json.dumps(out, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
