"""2D image Gaussians: GaussianImage (8 parameters, accumulated sum) and the
Image-GS variant (top-K normalised blending), rendered at any scale and crop.

Each Gaussian has a position (2), a Cholesky factor L = [[l11, 0], [l21, l22]]
of its covariance (3) and a colour (3): 8 parameters. Positions and factors are
in pixels of the image the model was fitted to; the covariance is
Sigma = L L^T + MIN_VARIANCE * I, so it is never singular (every Gaussian keeps
a footprint of at least ~0.3 px and so a gradient) and the factors can be
quantised freely.

The model is a continuous function of the image plane: rendering at scale s
samples it on an s-times finer (or coarser) pixel grid, and a crop samples a
window of that grid. Gaussians are kept in level-of-detail order (coarse ones
first), so `first_k` renders a smooth lower-detail version.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from splat.backends.image2d import bounding_radii, rasterize_image2d

MIN_VARIANCE = 0.1
MODES = ("sum", "topk")
MODEL_FORMAT = "splat-image2d"


def cholesky_to_cov(chol: Tensor) -> Tensor:
    """[N,3] (l11, l21, l22) -> upper triangle [N,3] (xx, xy, yy) of L L^T + MIN_VARIANCE I."""
    l11, l21, l22 = chol.unbind(-1)
    return torch.stack([l11 * l11 + MIN_VARIANCE, l11 * l21, l21 * l21 + l22 * l22 + MIN_VARIANCE], -1)


def cov_to_conic(cov: Tensor) -> Tensor:
    xx, xy, yy = cov.unbind(-1)
    det = xx * yy - xy * xy
    return torch.stack([yy / det, -xy / det, xx / det], -1)


@dataclass
class Image2D:
    """A fitted image. means [N,2], chol [N,3], colors [N,D]; width x height is the
    fitted image's size; mode "sum" (GaussianImage) or "topk" (Image-GS) with k."""
    means: Tensor
    chol: Tensor
    colors: Tensor
    width: int
    height: int
    mode: str = "sum"
    topk: int = 10

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"splat.image2d: mode must be one of {MODES}, got {self.mode!r}")
        N = self.means.shape[0]
        if self.means.shape != (N, 2) or self.chol.shape != (N, 3) or self.colors.ndim != 2 \
                or self.colors.shape[0] != N:
            raise ValueError("splat.image2d: expected means [N,2], chol [N,3], colors [N,D], got "
                             f"{tuple(self.means.shape)}, {tuple(self.chol.shape)}, {tuple(self.colors.shape)}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"splat.image2d: image size must be positive, got {self.width}x{self.height}")
        if self.mode == "topk" and self.topk < 1:
            raise ValueError(f"splat.image2d: topk must be >= 1, got {self.topk}")

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def channels(self) -> int:
        return self.colors.shape[1]

    def params(self):
        return {"means": self.means, "chol": self.chol, "colors": self.colors}

    def subset(self, idx) -> "Image2D":
        return Image2D(self.means[idx], self.chol[idx], self.colors[idx], self.width, self.height, self.mode,
                       self.topk)

    def detach(self) -> "Image2D":
        return Image2D(self.means.detach().clone(), self.chol.detach().clone(), self.colors.detach().clone(),
                       self.width, self.height, self.mode, self.topk)

    # ------------------------------------------------------------ rendering
    def render(self, scale: float = 1.0, *, size: Optional[Tuple[int, int]] = None,
               crop: Optional[Tuple[int, int, int, int]] = None, first_k: Optional[int] = None,
               backend: str = "auto", clamp: bool = False) -> Tensor:
        """Render [H,W,D]. `scale` (or an explicit output `size` (width, height))
        sets the pixel grid; `crop` = (x, y, w, h) in that grid's pixels renders a
        window of it; `first_k` keeps the first k Gaussians (level of detail)."""
        return render_image2d(self, scale, size=size, crop=crop, first_k=first_k, backend=backend, clamp=clamp)

    # ------------------------------------------------------------ storage (float32, lossless)
    def state_dict(self) -> dict:
        return {"format": MODEL_FORMAT, "version": 1, "width": self.width, "height": self.height,
                "mode": self.mode, "topk": self.topk, "means": self.means.detach().cpu(),
                "chol": self.chol.detach().cpu(), "colors": self.colors.detach().cpu()}

    def save(self, path: Union[str, Path]) -> None:
        from splat.io import atomic_write
        import io

        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        atomic_write(Path(path), buf.getvalue())

    @classmethod
    def from_state_dict(cls, sd: dict, where: str = "model") -> "Image2D":
        if not isinstance(sd, dict) or sd.get("format") != MODEL_FORMAT:
            raise ValueError(f"{where}: not a splat 2D image model (no '{MODEL_FORMAT}' format tag)")
        try:
            return cls(sd["means"].float(), sd["chol"].float(), sd["colors"].float(), int(sd["width"]),
                       int(sd["height"]), sd["mode"], int(sd["topk"]))
        except KeyError as e:
            raise ValueError(f"{where}: 2D image model is missing {e}") from None


def render_image2d(model: Image2D, scale: float = 1.0, *, size: Optional[Tuple[int, int]] = None,
                   crop: Optional[Tuple[int, int, int, int]] = None, first_k: Optional[int] = None,
                   backend: str = "auto", clamp: bool = False, return_weights: bool = False):
    if size is None:
        if not (scale > 0) or scale == float("inf"):
            raise ValueError(f"splat.image2d: scale must be a positive number, got {scale}")
        size = (max(1, round(model.width * scale)), max(1, round(model.height * scale)))
    W, H = int(size[0]), int(size[1])
    if W < 1 or H < 1:
        raise ValueError(f"splat.image2d: output size must be positive, got {W}x{H}")
    sx, sy = W / model.width, H / model.height
    ox, oy, cw, ch = 0, 0, W, H
    if crop is not None:
        ox, oy, cw, ch = (int(v) for v in crop)
        if cw < 1 or ch < 1 or ox < 0 or oy < 0 or ox + cw > W or oy + ch > H:
            raise ValueError(f"splat.image2d: crop (x={ox}, y={oy}, w={cw}, h={ch}) must lie inside the "
                             f"{W}x{H} output")
    m = model
    if first_k is not None:
        if first_k < 0:
            raise ValueError(f"splat.image2d: first_k must be >= 0, got {first_k}")
        m = model.subset(slice(0, first_k))
    s = m.means.new_tensor([sx, sy])
    means2d = m.means * s - m.means.new_tensor([ox, oy])
    cov = cholesky_to_cov(m.chol)
    cov = torch.stack([cov[:, 0] * sx * sx, cov[:, 1] * sx * sy, cov[:, 2] * sy * sy], -1)
    conics = cov_to_conic(cov)
    radii = bounding_radii(cov.detach())
    topk = m.topk if m.mode == "topk" else 0
    img, wsum = rasterize_image2d(means2d, conics, m.colors, cw, ch, radii=radii, topk=topk, backend=backend)
    if clamp:
        img = img.clamp(0, 1)
    return (img, wsum) if return_weights else img
