"""splat: a differentiable Gaussian-splatting toolkit."""
from .render import rasterize

__version__ = "0.1.0"
__all__ = ["rasterize", "__version__"]
