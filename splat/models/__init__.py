"""Model containers. Every kind renders as 3D Gaussians through `splat.rasterize`."""
from .static import SH_C0, init_splats, num_sh_bases, render_splats, rgb_to_sh, sh_degree_of, sh_to_rgb

__all__ = ["SH_C0", "init_splats", "num_sh_bases", "render_splats", "rgb_to_sh", "sh_degree_of", "sh_to_rgb"]
