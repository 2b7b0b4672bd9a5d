"""Optimizers the trainer plugs in by name (``--optimizer adam``): see `base.Optimizer`."""
from .adam import AdamConfig, AdamOptimizer
from .base import Optimizer

__all__ = ["Optimizer", "AdamConfig", "AdamOptimizer"]
