"""Multi-process training benchmark (Grendel on torch.distributed, gloo on this machine's CPUs).

Parts (each a real `splat-train` launch, one after another, never two at once):

* ``equal``: the embedded default scene, the same steps and batch on 1 process (plain
  ``splat-train``) and on 2 (``torchrun --nproc-per-node=2``): test PSNR, Gaussian count, wall
  time; the check is 0.05 dB and 1% of the Gaussians;
* ``batch``: ``--batch-size 4`` on 2 processes for S/4 steps against batch 1 on one process for S
  steps (the same images seen; S = 300): within 1 dB; with Adam's sqrt(B) (Grendel) and linear
  learning-rate scaling; ``batch_long``: the same at the equal run's length (its batch-1 run);
* ``split``: per-step seconds of each stage on 2 processes (projection, the Gaussians' exchange,
  render, backward, the gradients' return, optimizer, density control, re-balancing), from the
  ``equal`` run's ``metrics.json``;
* ``volume``: a few steps from the trained ``equal`` model on 1, 2, 4 and 8 processes, with and
  without the balancer: bytes each rank sends per step against replicating every Gaussian (a ring
  all-gather of the parameters and all-reduce of the gradients), rows received, pixels rendered
  (halo included), load balance (slowest rank's render+backward time over the mean). 4 and 8
  processes share 2 cores here: their times are not speeds, their volumes and balance are.

Prints the figures and writes ``bench/results_distributed.json``.

    python bench/distributed.py               # all parts (~20 min here)
    python bench/distributed.py --quick       # 300 steps, fewer process counts
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import start_results  # noqa: E402

OUT = Path(__file__).resolve().parent / "results_distributed.json"
TORCHRUN = shutil.which("torchrun")
STAGES = ("project_s", "exchange_s", "render_s", "backward_s", "return_s", "optimizer_s", "density_s", "rebalance_s")


def _env(threads: int):
    return dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def run(out: Path, procs: int, args, threads=None, resume=False) -> dict:
    """One training (plain for procs == 0, else torchrun with `procs` processes); its metrics
    plus the wall seconds of the whole command."""
    cores = os.cpu_count() or 1
    threads = threads or max(1, cores // max(procs, 1))
    base = ["--out", str(out), "--no-progress", "--save-renders", "0"] + ([] if resume else list(args))
    if resume:
        base += ["--resume"] + list(args)
    cmd = ([sys.executable, "-m", "splat.train"] if procs == 0 else
           [TORCHRUN, "--standalone", f"--nproc-per-node={procs}", "-m", "splat.train"]) + base
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    m = json.loads((out / "metrics.json").read_text())
    m["wall_seconds"] = wall
    return m


def per_step(dist: dict) -> dict:
    """Mean over ranks of each stage's seconds per step, the bytes and rows per step per rank,
    the render balance."""
    ranks = dist["per_rank"]
    steps = max(1.0, ranks[0]["steps"])
    out = {k[:-2]: sum(r[k] for r in ranks) / len(ranks) / steps for k in STAGES}
    out["bytes_sent_per_rank"] = sum(r["bytes_sent"] for r in ranks) / len(ranks) / steps
    out["bytes_naive_per_rank"] = sum(r["bytes_naive"] for r in ranks) / len(ranks) / steps
    out["rows_received_per_rank"] = sum(r["rows_received"] for r in ranks) / len(ranks) / steps
    out["rendered_over_owned_pixels"] = sum(r["rendered_pixels"] for r in ranks) / max(
        1.0, sum(r["owned_pixels"] for r in ranks))
    out["render_balance"] = ranks[0]["render_time_max"] / max(1e-12, ranks[0]["render_time_mean"])
    out["gaussians_per_rank"] = [r["num_gaussians"] for r in ranks]
    out["peak_rss_mb_per_rank"] = [round(r["peak_rss_mb"]) for r in ranks]
    return out


def more_steps(src_run: Path, dst: Path, steps: int) -> None:
    """A run directory whose checkpoint is `src_run`'s last one, configured to go `steps` steps
    further without density control (resuming it measures a trained model)."""
    from splat.train.checkpoint import latest_checkpoint

    ck_path = latest_checkpoint(src_run)
    ck = torch.load(ck_path, weights_only=True)
    cfg = ck["config"]
    cfg["iterations"] = int(ck["step"]) + steps
    cfg["save_every"] = 0
    cfg["export"] = []
    cfg[cfg["strategy"]]["refine_stop_iter"] = 0
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "ckpts").mkdir(parents=True)
    torch.save(ck, dst / "ckpts" / ck_path.name)
    (dst / "config.json").write_text(json.dumps(cfg))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="steps of the equal run (default 3000; 300 with --quick)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", nargs="+", default=["equal", "batch", "batch_long", "volume"])
    ap.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    a = ap.parse_args()
    if TORCHRUN is None:
        sys.exit("torchrun not found")
    steps = a.steps or (300 if a.quick else 3000)
    results = start_results(OUT, steps=steps)
    work = Path(a.keep or tempfile.mkdtemp(prefix="splat_dist_"))
    work.mkdir(parents=True, exist_ok=True)
    common = ["--iterations", str(steps)]

    if "equal" in a.parts:
        one = run(work / "one", 0, common)
        two = run(work / "two", 2, common)
        r = {"one": {k: one[k] for k in ("psnr", "ssim", "num_gaussians", "train_seconds", "wall_seconds")},
             "two": {k: two[k] for k in ("psnr", "ssim", "num_gaussians", "train_seconds", "wall_seconds")},
             "split": per_step(two["distributed"])}
        r["psnr_difference"] = two["psnr"] - one["psnr"]
        r["gaussian_ratio"] = two["num_gaussians"] / one["num_gaussians"]
        results["scenes"]["equal"] = r
        print(f"equal ({steps} steps, batch 1): 1 process {one['psnr']:.2f} dB {one['num_gaussians']:,} Gaussians "
              f"{one['wall_seconds']:.0f} s; 2 processes {two['psnr']:.2f} dB {two['num_gaussians']:,} Gaussians "
              f"{two['wall_seconds']:.0f} s; difference {r['psnr_difference']:+.3f} dB (check: within 0.05), "
              f"Gaussians x{r['gaussian_ratio']:.4f} (check: within 1%)")
        s = r["split"]
        total = sum(s[k[:-2]] for k in STAGES)
        print("  per step on 2 processes: " + ", ".join(f"{k[:-2]} {1000 * s[k[:-2]]:.1f} ms" for k in STAGES)
              + f" (total {1000 * total:.0f} ms); sent {s['bytes_sent_per_rank'] / 1e6:.2f} MB/rank vs "
              f"{s['bytes_naive_per_rank'] / 1e6:.2f} MB replicated (x{s['bytes_naive_per_rank'] / max(1, s['bytes_sent_per_rank']):.1f} less); "
              f"render balance {s['render_balance']:.3f}")
        OUT.write_text(json.dumps(results, indent=2))

    for part, S in (("batch", 300), ("batch_long", steps)):
        if part not in a.parts:
            continue
        if part == "batch_long" and "equal" in results["scenes"] and results["scenes"]["equal"]["one"]:
            b1 = dict(results["scenes"]["equal"]["one"])  # the equal run: batch 1, `steps` steps
        else:
            b1 = run(work / f"{part}1", 0, ["--iterations", str(S)])
        r = {"batch1_steps": S, "batch1_psnr": b1["psnr"], "batch1_wall": b1["wall_seconds"], "batch4_steps": S // 4}
        for rule in ("sqrt", "linear"):
            b4 = run(work / f"{part}4{rule}", 2, ["--iterations", str(S // 4), "--batch-size", "4",
                                                  "--adam.batch-scaling", rule])
            r[rule] = {"psnr": b4["psnr"], "wall": b4["wall_seconds"], "num_gaussians": b4["num_gaussians"],
                       "difference": b4["psnr"] - b1["psnr"]}
            print(f"{part}: batch 4 on 2 processes, {S // 4} steps, {rule} learning-rate scaling: {b4['psnr']:.2f} dB "
                  f"({b4['wall_seconds']:.0f} s) vs batch 1 on 1 process, {S} steps: {b1['psnr']:.2f} dB: "
                  f"{r[rule]['difference']:+.2f} dB (check at 300 images: within 1 dB)")
        results["scenes"][part] = r
        OUT.write_text(json.dumps(results, indent=2))

    if "volume" in a.parts:
        src = work / "two"
        if not (src / "ckpts").exists():
            sys.exit("--parts volume needs the equal run (in --keep DIR)")
        counts = [1, 2, 4] if a.quick else [1, 2, 4, 8]
        vol = {}
        for n in counts:
            for balance in ([True, False] if n > 1 else [True]):
                d = work / f"vol{n}{'b' if balance else 'e'}"
                more_steps(src, d, 10 if n > 2 else 20)
                m = run(d, n, [] if balance else ["--dist.no-balance"], resume=True,
                        threads=max(1, (os.cpu_count() or 1) // n))
                s = per_step(m["distributed"])
                vol[f"{n}{'' if balance else '_even'}"] = s
                print(f"  {n} process(es){'' if balance else ', no balancer'}: sent {s['bytes_sent_per_rank'] / 1e6:.2f} MB/"
                      f"rank/step vs {s['bytes_naive_per_rank'] / 1e6:.2f} MB replicated, received "
                      f"{s['rows_received_per_rank']:,.0f} Gaussians/rank/step of {m['num_gaussians']:,}, rendered "
                      f"pixels x{s['rendered_over_owned_pixels']:.2f} (halo), render balance {s['render_balance']:.3f}")
        results["scenes"]["volume"] = vol
        OUT.write_text(json.dumps(results, indent=2))
    print(f"-> {OUT}")


if __name__ == "__main__":
    main()
