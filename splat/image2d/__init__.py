"""2D image Gaussians (GaussianImage, Image-GS): fitting, the .sgi codec and the splat-image CLI."""
from splat.models.image2d import Image2D, render_image2d  # noqa: F401

from .files import load_image2d  # noqa: F401
