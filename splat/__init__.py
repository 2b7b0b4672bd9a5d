"""splat: a differentiable Gaussian-splatting toolkit."""
from .cameras import Cameras
from .render import Gaussians, RenderSettings, rasterize, render_gaussians

__version__ = "0.1.0"
__all__ = ["rasterize", "render_gaussians", "Cameras", "Gaussians", "RenderSettings", "__version__"]
