"""``splat-export``: write a model in another format: model files, training runs, and one
instant of a dynamic model.

    splat-export model.ply model.spz                  # any of .ply .compressed.ply .splat .spz (.pt in)
    splat-export runs/x model.splat                   # a run directory: its last checkpoint (or model.ply)
    splat-export runs/dyn frame.ply --time 0.5        # a 4dgs / spacetime run: the 3D Gaussians at t = 0.5
    splat-export runs/relit lit.ply --light 2 -1 3    # a relightable run: shaded under a point light

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
Bad input exits with status 1 and a one-line message, and leaves no output.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

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
    if not _is_run_model(src):
        if args.time is not None:
            raise ValueError(f"{src}: --time is for dynamic models (a run directory or its checkpoint); "
                             "a model file holds one static instant")
        if args.light is not None or args.light_intensity is not None:
            raise ValueError(f"{src}: --light is for relightable models (a run directory or its checkpoint); "
                             "a model file holds fixed colours")
        return convert(args, out)
    model, _ = load_model(src)
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
    return convert(args, out, splats=splats, source=source)


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
