"""Model kinds. Every kind renders as 3D Gaussians through `splat.rasterize`; `base.Model`
is the interface the trainer, the render CLI and the viewer use."""
from .base import GaussianParams, Model, RenderOutput
from .static import (SH_C0, StaticConfig, StaticModel, init_splats, num_sh_bases, render_splats, rgb_to_sh,
                     sh_degree_of, sh_to_rgb)

__all__ = ["Model", "GaussianParams", "RenderOutput", "StaticModel", "StaticConfig", "SH_C0", "init_splats",
           "num_sh_bases", "render_splats", "rgb_to_sh", "sh_degree_of", "sh_to_rgb"]
