"""Optimizer benchmark: Adam against Levenberg-Marquardt (3DGS-LM), time to PSNR.

Both train the same scene side by side (one after the other, alone on the machine) with an
evaluation of the test views every ``--eval-every`` steps (``--eval-every`` history in
metrics.json; evaluation time is not training time), as a user runs them:

    splat-train --iterations 2000                                        # Adam
    splat-train --iterations 1208 --optimizer lm --lm.lm-steps 8         # 1200 Adam steps, then 8 LM steps

(the LM run's density control and learning rates follow its own, shorter, schedule).

Prints each run's final PSNR / SSIM / Gaussians / training seconds, and the time LM took to
first reach Adam's final test PSNR (from its eval history) as a fraction of Adam's training
time: the issue's check is at most 80%. Results: ``bench/results_optimizers.json``;
``--plot`` draws test PSNR over training seconds (``bench/optimizers.png``).

    python bench/optimizers.py                       # default scene, real-style capture, NeRF-synthetic object
    python bench/optimizers.py --scenes object --warmup 1200 --lm-steps 8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import plot_psnr_over_time, start_results, train_run  # noqa: E402
from bench.strategies import scene  # noqa: E402

OUT = Path(__file__).resolve().parent / "results_optimizers.json"
PLOT = Path(__file__).resolve().parent / "optimizers.png"


def time_to(history, final: dict, target: float):
    """Training seconds at the first evaluation (or the end) with PSNR >= target, or None."""
    for e in list(history) + [final]:
        if e.get("psnr") is not None and e["psnr"] >= target:
            return e["train_seconds"]
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", nargs="+", choices=("default", "capture", "capture-heldout", "object"),
                    default=["default", "capture", "object"])
    ap.add_argument("--steps", type=int, default=2000, help="Adam's steps")
    ap.add_argument("--warmup", type=int, default=1200, help="LM run: Adam steps before the LM steps")
    ap.add_argument("--lm-steps", type=int, default=8)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--plot-only", action="store_true", help="only draw the plot from the results file")
    args = ap.parse_args(argv)
    if args.plot_only:
        plot(json.loads(args.out.read_text()), PLOT)
        return 0
    from splat.optim.lm import LMConfig

    results = start_results(args.out, steps=args.steps, warmup=args.warmup, lm_steps=args.lm_steps)
    for name in args.scenes:
        data, opts = scene(name)
        print(f"{name} ({data}):")
        adam = train_run(data, args.steps, label="adam", eval_every=args.eval_every, **opts)
        lm = train_run(data, args.warmup + args.lm_steps, label="lm", optimizer="lm", eval_every=args.eval_every,
                       lm=LMConfig(lm_steps=args.lm_steps), **opts)
        t = time_to(lm["history"], lm, adam["psnr"])
        row = {"adam": adam, "lm": lm, "lm_time_to_adam_psnr": t,
               "ratio": None if t is None else t / adam["train_seconds"]}
        results["scenes"][name] = row
        args.out.write_text(json.dumps(results, indent=1))
        if t is None:
            print(f"  lm did not reach adam's {adam['psnr']:.2f} dB (best {max_psnr(lm):.2f}); check NOT met")
        else:
            print(f"  lm reached adam's final {adam['psnr']:.2f} dB after {t:.0f} s = {t / adam['train_seconds']:.0%} "
                  f"of adam's {adam['train_seconds']:.0f} s; check (<= 80%) "
                  f"{'met' if t <= 0.8 * adam['train_seconds'] else 'NOT met'}")
    print(f"-> {args.out}")
    if args.plot:
        plot(results, PLOT)
    return 0


def max_psnr(r: dict) -> float:
    return max([e["psnr"] for e in r["history"] if "psnr" in e] + [r["psnr"]])


def plot(results: dict, path: Path) -> None:
    scenes = results["scenes"]
    plot_psnr_over_time({name: {"adam": row["adam"], "lm": row["lm"]} for name, row in scenes.items()}, path,
                        reference={name: row["adam"]["psnr"] for name, row in scenes.items()})


if __name__ == "__main__":
    sys.exit(main())
