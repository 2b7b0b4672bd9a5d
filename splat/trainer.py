"""Where splat 0.1 kept its trainer; it is `splat.train` now. This alias keeps scripts
that import ``splat.trainer`` working."""
from .train import TrainConfig, Trainer, main, train

__all__ = ["TrainConfig", "Trainer", "main", "train"]
