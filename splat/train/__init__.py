"""The one training loop for every model kind (see `loop`), its configuration
(`config`), the pieces it picks by name (`registry`), checkpoints, evaluation, run
directories and callbacks.

    from splat.train import TrainConfig, Trainer, train
    metrics = train(TrainConfig(data="data/garden", iterations=7000))
"""
from .callbacks import Callback, CallbackList, load_callback
from .cli import main, train
from .config import TrainConfig, config_from_json, config_to_json
from .loop import Trainer
from .registry import MODELS, OPTIMIZERS, STRATEGIES

__all__ = ["TrainConfig", "Trainer", "train", "main", "Callback", "CallbackList", "load_callback", "MODELS",
           "STRATEGIES", "OPTIMIZERS", "config_from_json", "config_to_json"]
