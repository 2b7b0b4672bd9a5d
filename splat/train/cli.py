"""splat-train: train a Gaussian model (the 3DGS recipe by default).

    splat-train --data DIR --out runs/x --iterations 30000
    splat-train --out runs/x --resume          # continue from the last checkpoint
    splat-train --model static --strategy adc --optimizer adam --backend auto   # the defaults
    torchrun --nproc-per-node=2 $(which splat-train) --data DIR --batch-size 4   # Grendel: 2 processes
    splat-train --data DIR --blocks 4          # a large scene as 4 blocks, merged into one model

The data format (COLMAP, NeRF-synthetic, nerfstudio) is detected from the folder;
without --data the embedded default scene is trained. The run directory gets
config.json, metrics.json, checkpoints (ckpts/), test renders (renders/) and the
model as a standard 3DGS .ply (model.ply). Each piece's options are under its
name: --static.*, --adc.*, --mcmc.*, --steepgs.*, --adam.*, --lm.*.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

import torch

from ..distributed.world import RankLost, World, launched_by_torchrun
from .config import TrainConfig
from .loop import Trainer, _quiet
from ..cli_help import reflow_help

__all__ = ["train", "main"]


def train(cfg: TrainConfig, log=print, world=None) -> dict:
    """Train, print the final figures, then close the callbacks (with --viewer and
    --viewer-wait the viewer keeps showing the final model until Ctrl-C). Returns the metrics.
    `world` (`splat.distributed.world.World`): this process's place in a torchrun launch
    (None: one process). ``cfg.blocks > 0`` trains the scene block by block
    (`splat.train.blocks.train_blocks`)."""
    if world is not None and not world.is_main:
        log = _quiet
    if cfg.blocks:
        from .blocks import train_blocks

        return train_blocks(cfg, log=log, world=world)
    t = Trainer(cfg, log=log, world=world)
    m = t.train()
    if m["psnr"] is not None:
        log(f"test PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, {m['num_gaussians']:,} Gaussians, "
            f"{m['train_seconds']:.0f} s training ({m['test_views']} test views) -> {t.out}")
    else:
        log(f"no test views; {m['num_gaussians']:,} Gaussians, {m['train_seconds']:.0f} s training -> {t.out}")
    t.close(completed=True)
    return m


def _one_node() -> bool:
    """Whether every process of a torchrun launch is on this machine."""
    return os.environ.get("LOCAL_WORLD_SIZE", "1") == os.environ.get("WORLD_SIZE", "1")


def main(argv: Optional[List[str]] = None) -> None:
    import tyro

    reflow_help()
    cfg = tyro.cli(TrainConfig, args=argv, description=__doc__)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    world, clean = None, False
    try:
        world = World.from_env(cfg.dist, cfg.device, str(cfg.out))
        if world.distributed and world.rank != 0:
            cfg.progress = False
        train(cfg, world=world)
        clean = True
    except KeyboardInterrupt:
        sys.exit(130)
    except RankLost as e:
        print(f"splat-train: error: {e}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileNotFoundError, OSError) as e:
        # on one machine every rank meets the same bad option or data: rank 0 says it once
        rank = int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0
        if rank == 0 or not _one_node():
            where = f" (rank {rank})" if not _one_node() else ""
            print(f"splat-train{where}: error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if world is not None:
            world.close(clean)


if __name__ == "__main__":
    main()
