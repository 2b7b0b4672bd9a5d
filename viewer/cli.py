"""View a model in the browser.

    splat-view runs/default                 # a run: its last checkpoint, with the training cameras
    splat-view model.spz --port 8081        # any .ply / .compressed.ply / .splat / .spz / .sog / .glb / checkpoint
    splat-view kodim01.sgi                  # a 2D image model (.pt from `splat-image fit`, or .sgi)

Open the printed address in a browser. To watch a training as it runs, use
`splat-train --viewer` instead.
"""
from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

from tyro.conf import Positional
from splat.cli_help import reflow_help


@dataclasses.dataclass
class ViewConfig:
    """Serve a trained model in a web viewer (viser)."""

    model: Positional[Path]
    """Run directory, checkpoint (.pt), model file (.ply, .compressed.ply, .splat, .spz, .sog, .glb) or 2D image model (.pt, .sgi)."""
    port: int = 8080
    """Port to serve on (0: any free port)."""
    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 makes the viewer reachable from other machines."""
    data: Optional[Path] = None
    """Dataset whose training cameras to show (default: the run's config.json, if any)."""
    resolution: int = 512
    """Long side of the server render in pixels, 16..4096 (a slider in the viewer)."""
    snapshot_dir: Path = Path("snapshots")
    """Where the Snapshot button writes PNGs."""


def serve(cfg: ViewConfig, log=print):
    """Open the model and start the viewer; returns the running `Viewer`."""
    from .app import MAX_RESOLUTION, MIN_RESOLUTION, Viewer, check_port
    from .scene import load_scene

    if not MIN_RESOLUTION <= cfg.resolution <= MAX_RESOLUTION:
        raise ValueError(f"--resolution must be {MIN_RESOLUTION}..{MAX_RESOLUTION} pixels, got {cfg.resolution}")
    check_port(cfg.host, cfg.port)  # before the (possibly slow) model and dataset loading
    scene = load_scene(cfg.model, data=cfg.data, log=log)
    v = Viewer(scene, host=cfg.host, port=cfg.port, snapshot_dir=cfg.snapshot_dir, resolution=cfg.resolution,
               log=log)
    log(f"viewing {scene.name} ({scene.num_gaussians:,} Gaussians) at {v.url}  (Ctrl-C to stop)")
    return v


def main(argv: Optional[List[str]] = None) -> None:
    import tyro

    from .app import ViewerError

    reflow_help()
    cfg = tyro.cli(ViewConfig, args=argv, description=__doc__)
    try:
        v = serve(cfg)
    except (ValueError, FileNotFoundError, OSError, ViewerError) as e:
        print(f"splat-view: error: {e}", file=sys.stderr)
        sys.exit(2)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    finally:
        v.stop()


if __name__ == "__main__":
    main()
