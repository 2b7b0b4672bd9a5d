"""Density control strategies: one interface (gsplat-style hooks), several policies."""
from .adc import ADCStrategy
from .base import Strategy
from .mcmc import MCMCStrategy
from .steepgs import SteepGSStrategy

__all__ = ["ADCStrategy", "MCMCStrategy", "SteepGSStrategy", "Strategy"]
