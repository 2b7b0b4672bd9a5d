"""Optimizers the trainer plugs in by name (``--optimizer adam``): see `base.Optimizer`."""
from .adam import AdamConfig, AdamOptimizer
from .base import Optimizer
from .lm import LMConfig, LMOptimizer, pcg

__all__ = ["Optimizer", "AdamConfig", "AdamOptimizer", "LMConfig", "LMOptimizer", "pcg"]
