"""``splat-export``: write a model in another format: model files, training runs, and one
instant of a dynamic model.

    splat-export model.ply model.spz                  # any of .ply .compressed.ply .splat .spz (.pt in)
    splat-export runs/x model.splat                   # a run directory: its last checkpoint (or model.ply)
    splat-export runs/dyn frame.ply --time 0.5        # a 4dgs / spacetime run: the 3D Gaussians at t = 0.5
    splat-export runs/relit lit.ply --light 2 -1 3    # a relightable run: shaded under a point light
    splat-export model.ply model.sog                  # PlayCanvas SOG, self-organised (PLAS) grid
    splat-export runs/x small.sog --budget 0.3        # 30 % of the Gaussians (FlexGS-style elastic budget)
    splat-export model.ply model.spz --sh-degree 1 --prune-below 0.5   # fewer SH bands, unseen Gaussians out

INPUT is a model file (.ply, .compressed.ply, .splat, .spz, a .pt/.pth/.ckpt
checkpoint holding ``{"splats": {...}}``), a run directory, or a checkpoint inside
one. A dynamic model (``--model 4dgs`` / ``spacetime``) changes with time, so it is
written at ``--time T`` (in the data's time units; the run's range is printed when
it is missing): the Gaussians alive at T, sliced to 3D, which every static viewer
shows. A relightable model (``--model relightable``) is written shaded under one
point light (``--light``, ``--light-intensity``; default: a light at the training
lights' mean distance and height, in front of the scene), each Gaussian's colour
over all viewing directions fitted with SH of ``--light-sh-degree`` (shadows included).
The output format comes from OUTPUT's name unless ``--format`` is given.

Compression options, for every output format (applied in this order): ``--prune-below T`` drops
the Gaussians that contribute less than T pixels in all (their blending weight summed over the
views), ``--budget F`` keeps the most important fraction F and adjusts the survivors (merge and
a short distillation against the full model), ``--sh-degree D`` drops the higher SH bands,
``--sh-palette K`` vector-quantises the higher-order SH into K entries (a .sog always stores a
palette: K is its size). The views are the run's training cameras (a run directory, a model
file beside its run's config.json, or ``--data DIR``), otherwise views around the model.
Bad input exits with status 1 and a one-line message, and leaves no output.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Tuple

import tyro

from .io.export import ExportArgs, convert
from .cli_help import reflow_help

__all__ = ["main", "export", "ExportCommand"]


@dataclass
class ExportCommand(ExportArgs):
    """Convert a Gaussian model (a file, a training run or checkpoint) to another format."""

    time: Optional[float] = None
    """Dynamic models: the instant to write (the data's time units, e.g. 0..1 for D-NeRF)."""
    light: Optional[Tuple[float, float, float]] = None
    """Relightable models: the point light's world position (default: in front of the scene, at the
    training lights' mean distance and height)."""
    light_intensity: Optional[Tuple[float, float, float]] = None
    """Relightable models: its linear RGB radiant intensity, W/sr (default: the training lights' mean)."""
    light_sh_degree: Optional[int] = None
    """Relightable models: the SH degree the shaded colours are fitted with (0..3; default 3)."""
    budget: float = 1.0
    """Keep this fraction (0..1] of the Gaussians, the most important (summed blending weight in the
    views), merging the others into near survivors and distilling the survivors against the full
    model (FlexGS-style elastic budget; splat.compress.budget)."""
    budget_distill: int = 300
    """--budget: Adam steps of the survivors against renders of the full model (0: merge only)."""
    prune_below: float = 0.0
    """Drop the Gaussians whose blending weight summed over the views is below this many pixels (0: off)."""
    sh_degree: Optional[int] = None
    """Write at most this SH degree (0..3): the higher bands are dropped."""
    sh_palette: Optional[int] = None
    """Vector-quantise the higher-order SH into this many k-means entries (1..65536). .sog: the size of
    its palette (default: Gaussians / 32 as a power of two, >= 256); other formats: off by default."""
    sog_order: Literal["plas", "morton"] = "plas"
    """.sog: the Gaussians' layout in its images: plas (a self-organising grid; the file is also encoded in
    Morton order and the smaller one written) or morton (the Z-order of the positions PlayCanvas's writer uses)."""
    data: Optional[Path] = None
    """The dataset whose training cameras measure importance for --budget / --prune-below (default: the
    run's, for a run directory or a model file beside its config.json; else views around the model)."""


def _is_run_model(path: Path) -> bool:
    """A run directory, or a checkpoint splat-train wrote (wherever it was copied: it holds its
    run's config, so a dynamic model's is never mistaken for static splats)."""
    if path.is_dir():
        return True
    if path.suffix.lower() not in (".pt", ".pth", ".ckpt") or not path.is_file():
        return False
    from .train.checkpoint import load_checkpoint

    try:
        return "config" in load_checkpoint(path)
    except (ValueError, KeyError, OSError):
        return False  # another trainer's checkpoint: splat.io reads it, with its own errors


def export(args: ExportCommand, out=print) -> dict:
    """Run one export; returns `splat.io.export.convert`'s summary. Raises
    `splat.io.FormatError` / ``ValueError`` / ``FileNotFoundError`` naming the file."""
    from .models.dynamic import DynamicModel
    from .models.relightable import check_light_options
    from .train.run import load_model

    src = Path(args.input)
    _check_compress_options(args)
    if not _is_run_model(src):
        if args.time is not None:
            raise ValueError(f"{src}: --time is for dynamic models (a run directory or its checkpoint); "
                             "a model file holds one static instant")
        if args.light is not None or args.light_intensity is not None:
            raise ValueError(f"{src}: --light is for relightable models (a run directory or its checkpoint); "
                             "a model file holds fixed colours")
        if not _compressing(args):
            return convert(args, out)
        from .io import load
        from .train.run import resolve_model_path

        splats = load(src, format=args.input_format)
        try:  # a model file beside its run's config.json: that run's training views measure importance
            run_cfg = resolve_model_path(src)[1]
        except (OSError, ValueError):
            run_cfg = None
        return _convert_compressed(args, out, splats, None, run_cfg, os.path.getsize(src))
    model, run_cfg = load_model(src)
    relightable = "light_position" in model.requires
    lit_args = (args.light, args.light_intensity, args.light_sh_degree)
    if not relightable and any(a is not None for a in lit_args):
        raise ValueError(f"{src}: --light / --light-intensity / --light-sh-degree are for relightable models; "
                         f"this is a {model.name} model")
    if relightable:
        if args.time is not None:
            raise ValueError(f"{src}: --time is for dynamic models; this is a {model.name} model (pass --light)")
        if args.light_sh_degree is not None and not 0 <= args.light_sh_degree <= 3:
            raise ValueError(f"--light-sh-degree must be 0..3, got {args.light_sh_degree}")
        check_light_options(args.light, args.light_intensity)
        light = args.light if args.light is not None else tuple(model.default_light.tolist())
        splats = model.splats_under(light, args.light_intensity,
                                    sh_degree=3 if args.light_sh_degree is None else args.light_sh_degree)
        source = (f"{model.name} model under a point light at ({', '.join(f'{v:.3g}' for v in light)})"
                  + (f", intensity {tuple(args.light_intensity)}" if args.light_intensity is not None else ""))
    elif isinstance(model, DynamicModel):
        t0, t1 = model.time_range
        if args.time is None:
            raise ValueError(f"{src}: a {model.name} model changes with time: pass --time T "
                             f"(it was trained on times {t0:g}..{t1:g})")
        splats = model.splats_at(float(args.time))
        if splats["means"].shape[0] == 0:
            raise ValueError(f"{src}: no Gaussian is visible at time {args.time:g} (trained on {t0:g}..{t1:g})")
        source = f"{model.name} model at t = {args.time:g}"
    else:
        if args.time is not None:
            raise ValueError(f"{src}: --time is for dynamic models; this is a {model.name} model")
        splats = model.to_splats()
        if splats is None:
            raise ValueError(f"{src}: a {model.name} model has no static splats form")
        source = f"{model.name} model"
    splats = {k: v.detach().float().contiguous().cpu() for k, v in splats.items()}
    return _convert_compressed(args, out, splats, source, run_cfg, None)


def _check_compress_options(args: ExportCommand) -> None:
    import math

    if not (isinstance(args.budget, (int, float)) and math.isfinite(args.budget) and 0 < args.budget <= 1):
        raise ValueError(f"--budget must be a fraction in (0, 1], got {args.budget}")
    if args.budget_distill < 0:
        raise ValueError(f"--budget-distill must be >= 0, got {args.budget_distill}")
    if not (math.isfinite(args.prune_below) and args.prune_below >= 0):
        raise ValueError(f"--prune-below must be a number of pixels >= 0, got {args.prune_below}")
    if args.sh_degree is not None and not 0 <= args.sh_degree <= 3:
        raise ValueError(f"--sh-degree must be 0..3, got {args.sh_degree}")
    if args.sh_palette is not None and not 1 <= args.sh_palette <= 65536:
        raise ValueError(f"--sh-palette must be 1..65536, got {args.sh_palette}")


def _output_format(args: ExportCommand) -> str:
    from .io import detect_format

    return args.format or detect_format(args.output)


def _compressing(args: ExportCommand) -> bool:
    return (args.budget < 1 or args.prune_below > 0 or args.sh_degree is not None or args.sh_palette is not None
            or _output_format(args) == "sog")


def _trained_grid(src: Path, n: int):
    """The grid order a ``--compress sog`` run's checkpoint holds (None for anything else)."""
    from .train.checkpoint import load_checkpoint
    from .train.run import resolve_model_path

    try:
        file, _ = resolve_model_path(Path(src))
        if file.suffix.lower() not in (".pt", ".pth", ".ckpt"):
            return None
        order = (load_checkpoint(file).get("grid") or {}).get("order")
    except (OSError, ValueError, KeyError):
        return None
    return order if order is not None and len(order) == n else None


def _views(args: ExportCommand, run_cfg: Optional[dict], out):
    """The training cameras importance is measured in (None: views around the model)."""
    import numpy as np

    from .train.run import run_data_path, run_dataset

    path = run_data_path(run_cfg, args.data)
    if path is None:
        out("views:        none known (a bare model file without --data): 32 views around the model")
        return None
    data = run_dataset(path, run_cfg, np.zeros(3, np.float32))
    out(f"views:        the {len(data.train)} training views of {path}")
    return data.train


def _convert_compressed(args: ExportCommand, out, splats: dict, source: Optional[str], run_cfg: Optional[dict],
                        in_size: Optional[int]) -> dict:
    """Apply the compression options to `splats`, then write it (`convert`)."""
    import time

    from .io import sh_degree

    notes, extra = [], {}
    n0 = int(splats["means"].shape[0])
    if args.prune_below > 0 or args.budget < 1:
        from .compress.budget import apply_budget, gaussian_importance

        t0 = time.perf_counter()
        cameras = _views(args, run_cfg, out)
        importance = gaussian_importance(splats, cameras)
        if args.prune_below > 0:
            keep = importance >= args.prune_below
            if not bool(keep.any()):
                raise ValueError(f"--prune-below {args.prune_below:g}: no Gaussian contributes that many pixels "
                                 f"(the largest contributes {float(importance.max()):.3g})")
            splats = {k: (v[keep] if v.ndim and v.shape[0] == n0 else v) for k, v in splats.items()}
            importance = importance[keep]
            notes.append(f"pruned {n0 - int(keep.sum()):,} Gaussians contributing < {args.prune_below:g} px")
        if args.budget < 1:
            n1 = int(splats["means"].shape[0])
            splats = apply_budget(splats, args.budget, importance, cameras, distill_steps=args.budget_distill)
            n2 = int(splats["means"].shape[0])
            notes.append(f"budget {args.budget:g}: kept {n2:,} of {n1:,} " + (
                f"(merged, {args.budget_distill} distillation steps)" if n2 < n1 else "(nothing to drop)"))
        notes[-1] += f" ({time.perf_counter() - t0:.1f} s)"
    if args.sh_degree is not None and sh_degree(splats) > args.sh_degree:
        from .compress.quantize import reduce_sh_degree

        notes.append(f"SH degree {sh_degree(splats)} -> {args.sh_degree}")
        splats = reduce_sh_degree(splats, args.sh_degree)
    fmt = _output_format(args)
    if fmt == "sog":
        if args.sh_palette is not None:
            extra["sh_palette"] = args.sh_palette
        if args.sog_order == "plas":
            from .compress.plas import grid_order

            t0 = time.perf_counter()
            init = _trained_grid(args.input, int(splats["means"].shape[0]))
            if init is not None:
                notes.append("the run's trained grid (--compress sog) as PLAS's start")
            extra["order"] = [grid_order(splats, init=init).numpy(), "morton"]  # the smaller file is written
            extra["chosen"] = []
            notes.append(f"self-organising grid (PLAS) in {time.perf_counter() - t0:.1f} s")
    elif args.sh_palette is not None and sh_degree(splats) > 0:
        from .compress.quantize import quantize_sh

        splats = quantize_sh(splats, args.sh_palette)
        notes.append(f"SH vector-quantised to {args.sh_palette} entries")
    for note in notes:
        out(f"compress:     {note}")
    summary = convert(args, out, splats=splats, source=source, in_size=in_size, extra_options=extra)
    if "chosen" in extra:
        summary["sog_layout"] = ["plas", "morton"][extra["chosen"][0]]
        out(f"layout:       {summary['sog_layout']} (the smaller of the PLAS grid and the Morton order)")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (``splat-export``); returns the exit status."""
    from .io import FormatError

    reflow_help()
    args = tyro.cli(ExportCommand, args=list(argv) if argv is not None else None, prog="splat-export",
                    description=__doc__, config=(tyro.conf.PositionalRequiredArgs,))
    try:
        export(args)
    except (FormatError, ValueError, FileNotFoundError) as e:
        print(f"splat-export: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a full disk or a read-only output directory
        print(f"splat-export: error: {e.filename or args.output}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
