"""Fitting, codec and CLI of 2D image Gaussians (the model is splat.models.image2d)."""
from splat.models.image2d import Image2D, load_image2d, render_image2d  # noqa: F401
