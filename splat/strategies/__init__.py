"""Density control strategies: one interface (gsplat-style hooks), several policies."""
from .adc import ADCStrategy
from .base import Strategy

__all__ = ["ADCStrategy", "Strategy"]
