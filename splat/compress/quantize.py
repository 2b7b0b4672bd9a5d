"""Model-to-model quantisation any compressed writer can be given (the export CLI's ``--sh-degree``
and ``--sh-palette``): SH degree reduction and SH vector quantisation (a k-means palette of the
higher-order SH vectors, as in Compact3D / LightGaussian; `splat.io.codebooks.sh_palette`).
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from ..io.codebooks import default_palette_size, sh_palette
from ..models.static import num_sh_bases

__all__ = ["reduce_sh_degree", "quantize_sh"]


def reduce_sh_degree(splats: Mapping[str, torch.Tensor], degree: int) -> dict:
    """The model with its SH cut to `degree` (0..3): the higher bands dropped (the lower ones are
    unchanged, SH bands being orthogonal). A model already at or below `degree` is returned as it is.
    Raises ``ValueError`` for a degree outside 0..3."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    out = dict(splats)
    rest = num_sh_bases(degree) - 1
    shN = splats.get("shN")
    if shN is not None and shN.shape[1] > rest:
        out["shN"] = shN[:, :rest].contiguous()
    return out


def quantize_sh(splats: Mapping[str, torch.Tensor], palette: Optional[int] = None, iters: int = 20,
                seed: int = 0) -> dict:
    """The model with every Gaussian's higher-order SH replaced by its k-means palette entry
    (`sh_palette`; `palette` entries, default `default_palette_size`). Any writer then stores fewer
    distinct SH vectors (smaller after entropy coding). Degree-0 models are returned as they are."""
    shN = splats.get("shN")
    if shN is None or shN.shape[1] == 0:
        return dict(splats)
    k = default_palette_size(shN.shape[0]) if palette is None else int(palette)
    centroids, labels = sh_palette(shN.detach().cpu().numpy(), k, iters=iters, seed=seed)
    out = dict(splats)
    out["shN"] = torch.from_numpy(centroids[labels]).to(shN.dtype)
    return out
