"""Where splat 0.1 kept its trainer; it is `splat.train` now. This alias keeps scripts
that import ``splat.trainer`` (or run ``python -m splat.trainer``) working."""
from .train import TrainConfig, Trainer, main, train
from .train.checkpoint import CKPT_VERSION, latest_checkpoint, load_checkpoint
from .train.config import config_from_json, config_to_json
from .train.run import default_scene_path

__all__ = ["TrainConfig", "Trainer", "main", "train", "CKPT_VERSION", "latest_checkpoint", "load_checkpoint",
           "config_from_json", "config_to_json", "default_scene_path"]

if __name__ == "__main__":
    main()
