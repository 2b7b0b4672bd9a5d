"""Render Gaussians with splat.rasterize and write the images.

For now it renders the garden point cloud (../shared/data/garden_points.npz) as
Gaussians from its 3 cameras, on the chosen backend, and reports the time of
each backend asked for:

    python bench/render_garden.py --backend cpu --out runs/render
    python bench/render_garden.py --backend cpu torch --mode RGB+ED
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import List, Literal

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import splat  # noqa: E402
from scenes.garden import garden_scene  # noqa: E402


@dataclasses.dataclass
class Args:
    """Render the garden point cloud as Gaussians."""

    points: Path | None = None
    """npz with means3d, colors, viewmats, Ks, width, height (default: ../shared/data/garden_points.npz)."""
    out: Path = Path("runs/render")
    """Folder for the PNGs (written to a temporary name, then renamed)."""
    backend: List[Literal["auto", "torch", "cpu", "cuda"]] = dataclasses.field(default_factory=lambda: ["auto"])
    """Backends to render with; each one's images and time are reported."""
    mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB"
    """What to render: colour, accumulated or expected depth, or both."""
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    """Classic 3DGS or antialiased (Mip-Splatting opacity compensation)."""
    background: float = 1.0
    """Grey level behind the Gaussians."""


def to_png_array(img: torch.Tensor, mode: str) -> np.ndarray:
    """[H, W, D] render -> uint8 image; depth channels are normalised for display."""
    if mode in ("D", "ED"):
        d = img[..., 0]
        rgb = (d / d.max().clamp_min(1e-8))[..., None].expand(*d.shape, 3)
    else:
        rgb = img[..., :3]
    return (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)


def main(args: Args) -> None:
    scene = garden_scene(args.points)
    C = scene["viewmats"].shape[0]
    D = 1 if args.mode in ("D", "ED") else 3
    bg = torch.full((C, D), args.background)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{scene['means'].shape[0]:,} Gaussians, {C} cameras at {scene['width']}x{scene['height']}")
    for backend in args.backend:
        times = []
        for _ in range(2):  # the first call also pays one-time set-up (native build, torch imports)
            with torch.no_grad():
                t0 = time.perf_counter()
                img, alpha, info = splat.rasterize(**scene, backend=backend, render_mode=args.mode,
                                                   rasterize_mode=args.rasterize_mode,
                                                   backgrounds=None if args.mode in ("D", "ED") else bg)
                times.append(time.perf_counter() - t0)
        for c in range(C):
            write_png(args.out / f"{info['backend']}_{c}.png", to_png_array(img[c], args.mode))
        print(f"backend {info['backend']:>5}: {times[1] * 1e3:8.1f} ms for {C} views (first call "
              f"{times[0] * 1e3:.0f} ms), "
              f"{info['flatten_ids'].numel():,} tile intersections -> {args.out}/{info['backend']}_*.png")


if __name__ == "__main__":
    main(tyro.cli(Args))
