"""splat-image: fit 2D Gaussians to an image, render them at any scale, and
encode/decode them as compressed .sgi files.

    splat-image fit photo.png --num-gaussians 20000 --iterations 2000 --out photo.pt
    splat-image render photo.pt --scale 4                # 4x super-resolution
    splat-image encode photo.pt --image photo.png --out photo.sgi
    splat-image decode photo.sgi --out decoded.png
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional, Sequence, Tuple

import tyro

from splat.io import atomic_write
from splat.io.images import save_png

from . import codec
from .fit import FitConfig, evaluate, fit, load_image
from ..cli_help import reflow_help

PROG = "splat-image"


@dataclass
class Fit:
    """Fit Gaussians to an image; writes the model and a JSON report beside it
    (psnr, ms_ssim, ssim, seconds, num_gaussians, ...)."""
    image: tyro.conf.Positional[Path]
    """The image to fit (any format Pillow reads)."""
    out: Optional[Path] = None
    """The model file (.pt, lossless float32). Default: IMAGE with .pt."""
    config: Annotated[FitConfig, tyro.conf.arg(name="")] = field(default_factory=FitConfig)
    render: bool = True
    """Also write the fitted render as OUT with _render.png."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class Render:
    """Render a model (.pt or .sgi) to PNG at any scale, size or crop."""
    model: tyro.conf.Positional[Path]
    scale: float = 1.0
    """Output size relative to the fitted image (ignored with --size)."""
    size: Optional[Tuple[int, int]] = None
    """Output WIDTH HEIGHT."""
    crop: Optional[Tuple[int, int, int, int]] = None
    """X Y W H: render only this window of the output."""
    first_k: Optional[int] = None
    """Level of detail: only the first K Gaussians."""
    out: Optional[Path] = None
    """PNG to write. Default: MODEL with _x{scale}.png."""
    backend: str = "auto"
    """'auto', 'cpu' or 'torch'."""


@dataclass
class Encode:
    """Compress a model to .sgi, with quantisation-aware fine-tuning when --image is given."""
    model: tyro.conf.Positional[Path]
    image: Optional[Path] = None
    """The fitted image: enables fine-tuning and reports PSNR."""
    out: Optional[Path] = None
    """Output .sgi. Default: MODEL with .sgi."""
    config: Annotated[codec.CodecConfig, tyro.conf.arg(name="")] = field(default_factory=codec.CodecConfig)


@dataclass
class Decode:
    """Decode a .sgi file to a PNG (and optionally a lossless .pt model)."""
    file: tyro.conf.Positional[Path]
    out: Optional[Path] = None
    """PNG to write. Default: FILE with .png."""
    model_out: Optional[Path] = None
    """Also write the decoded model here (.pt)."""
    scale: float = 1.0
    """Output size relative to the encoded image."""


def run_fit(a: Fit) -> dict:
    target = load_image(a.image)
    out = a.out or a.image.with_suffix(".pt")
    if out.suffix == ".sgi":
        raise ValueError(f"{out}: fit writes a lossless .pt model; use `{PROG} encode` for .sgi")
    r = fit(target, a.config, progress=a.progress)
    ev = evaluate(r.model, target, a.config.backend)
    r.model.save(out)
    H, W, _ = target.shape
    report = {"image": str(a.image), "model": str(out), "width": W, "height": H,
              "num_gaussians": r.model.num_gaussians, "iterations": a.config.iterations, "mode": a.config.mode,
              "seconds": r.seconds, **{k: (None if v != v else v) for k, v in ev.items()},  # NaN -> null
              "config": dataclasses.asdict(a.config)}
    atomic_write(out.with_suffix(".json"), json.dumps(report, indent=1).encode())
    if a.render:
        save_png(out.with_name(out.stem + "_render.png"), r.model.render(clamp=True))
    print(f"{out}: {r.model.num_gaussians} Gaussians, PSNR {ev['psnr']:.2f} dB, MS-SSIM {ev['ms_ssim']:.4f} "
          f"(NaN below 161 px), {r.seconds:.1f} s")
    return report


def run_render(a: Render) -> Path:
    from .files import load_image2d

    m = load_image2d(a.model)
    img = m.render(a.scale, size=a.size, crop=a.crop, first_k=a.first_k, backend=a.backend, clamp=True)
    out = a.out or a.model.with_name(f"{a.model.stem}_x{a.scale:g}.png")
    save_png(out, img)
    print(f"{out}: {img.shape[1]}x{img.shape[0]}")
    return out


def run_encode(a: Encode) -> dict:
    from splat.metrics import psnr
    from .files import load_image2d

    m = load_image2d(a.model)
    target = None
    if a.image is not None:
        target = load_image(a.image)
        if target.shape[:2] != (m.height, m.width):
            raise ValueError(f"{a.image}: image is {target.shape[1]}x{target.shape[0]}, the model was fitted to "
                             f"{m.width}x{m.height}")
    data, decoded, seconds = codec.encode(m, target, a.config)
    out = a.out or a.model.with_suffix(".sgi")
    atomic_write(out, data)
    info = {"file": str(out), "bytes": len(data), "bpp": codec.bits_per_pixel(len(data), m.width, m.height),
            "seconds": seconds}
    if target is not None:
        info["psnr"] = float(psnr(decoded.render(clamp=True), target))
    print(f"{out}: {len(data)} bytes, {info['bpp']:.4f} bpp" + (f", PSNR {info['psnr']:.2f} dB" if "psnr" in info
                                                                 else ""))
    return info


def run_decode(a: Decode) -> Path:
    data = a.file.read_bytes() if a.file.is_file() else None
    if data is None:
        raise FileNotFoundError(f"{a.file}: no such file")
    m = codec.decode_bytes(data, where=str(a.file))
    out = a.out or a.file.with_suffix(".png")
    save_png(out, m.render(a.scale, clamp=True))
    if a.model_out is not None:
        m.save(a.model_out)
    print(f"{out}: {round(m.width * a.scale)}x{round(m.height * a.scale)} from {m.num_gaussians} Gaussians")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    reflow_help()
    cmd = tyro.extras.subcommand_cli_from_dict(
        {"fit": Fit, "render": Render, "encode": Encode, "decode": Decode},
        args=list(argv) if argv is not None else None, prog=PROG, description=__doc__)
    run = {Fit: run_fit, Render: run_render, Encode: run_encode, Decode: run_decode}[type(cmd)]
    try:
        run(cmd)
    except (ValueError, FileNotFoundError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{PROG}: error: {getattr(e, 'filename', None) or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
