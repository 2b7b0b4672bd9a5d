"""File conversion for ``splat-export`` (the command itself is `splat.export_cli`, which also
opens training runs): `ExportArgs` and `convert`, one model file in another format.

INPUT is a .ply (standard or PlayCanvas compressed), .splat, .spz, or a
training checkpoint (.pt/.pth/.ckpt holding ``{"splats": {...}}``). The output
format comes from OUTPUT's name unless ``--format`` is given. Prints the
number of Gaussians, the SH degree, both sizes and the compression ratio;
a bad input raises, naming the file, and leaves no output.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

__all__ = ["convert", "ExportArgs"]


@dataclass
class ExportArgs:
    """Convert a Gaussian-splat file (or a training checkpoint) to another format."""

    input: Annotated[Path, tyro.conf.arg(metavar="INPUT")]
    """Input file: .ply, .compressed.ply, .splat, .spz, or a .pt/.pth/.ckpt checkpoint."""
    output: Annotated[Path, tyro.conf.arg(metavar="OUTPUT")]
    """Output file; its name picks the format unless --format is given."""
    format: Optional[Literal["ply", "compressed_ply", "splat", "spz", "sog", "glb"]] = None
    """Output format (default: from the output name: *.compressed.ply, *.ply, *.splat, *.spz, *.sog, *.glb)."""
    input_format: Optional[Literal["ply", "compressed_ply", "splat", "spz", "sog", "glb", "checkpoint"]] = None
    """Input format (default: from the input name, sniffing .ply and unknown names)."""
    spz_version: Literal[2, 3, 4] = 3
    """spz version to write: 3 (gzip, smallest-three rotations), 2 (older readers) or 4 (zstd; needs zstandard)."""
    antialiased: bool = False
    """spz, sog: set the 'trained with antialiasing' flag."""
    ply_normals: bool = True
    """ply: write the zero nx/ny/nz properties graphdeco writes (off: gsplat's exact layout)."""


def _size(n: int) -> str:
    return f"{n:,} bytes ({n / 1e6:.2f} MB)"


def convert(args: ExportArgs, out=print, splats: Optional[dict] = None, source: Optional[str] = None,
            in_size: Optional[int] = None, extra_options: Optional[dict] = None) -> dict:
    """Run one conversion; returns a summary dict. Raises FormatError. `splats` (a splats
    dict already in memory, e.g. one instant of a dynamic model) replaces reading
    ``args.input``; `source` then describes where it came from and `in_size` (bytes of the file
    it was read from, if any) gives the compression ratio. `extra_options` go to the writer too."""
    from . import detect_format, load, save, sh_degree

    fmt = args.format or detect_format(args.output)
    options: dict = {}
    if fmt == "spz":
        options = dict(version=args.spz_version, antialiased=args.antialiased)
    elif fmt == "ply":
        options = dict(normals=args.ply_normals)
    elif fmt == "sog":
        options = dict(antialiased=args.antialiased)
    options.update(extra_options or {})
    if splats is None:
        splats = load(args.input, format=args.input_format)
        in_size = os.path.getsize(args.input)
    n = int(splats["means"].shape[0])
    deg_in = sh_degree(splats)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = save(args.output, splats, format=fmt, **options)
    out_size = os.path.getsize(path)
    deg_out = 0 if fmt == "splat" else deg_in
    label = f"spz v{args.spz_version}" if fmt == "spz" else fmt
    out(f"input:        {args.input} " + (f"({_size(in_size)}{', ' + source if source else ''})"
                                             if in_size is not None else f"({source})"))
    out(f"gaussians:    {n:,}")
    note = "" if deg_out == deg_in else f" (output keeps degree {deg_out}: .splat stores DC colour only)"
    out(f"sh degree:    {deg_in}{note}")
    out(f"output:       {path} [{label}] ({_size(out_size)}, {8 * out_size / n:.1f} bits per Gaussian)")
    if in_size is not None:
        out(f"compression:  {in_size / out_size:.2f}x (input size / output size)")
    for w in caught:
        out(f"warning:      {w.message}")
    return dict(num_gaussians=n, sh_degree=deg_in, input_bytes=in_size, output_bytes=out_size,
                bits_per_gaussian=8 * out_size / n,
                ratio=None if in_size is None else in_size / out_size, format=fmt)
