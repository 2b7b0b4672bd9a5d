"""Fit 2D Gaussians to an image.

- Content-adaptive initialisation: positions sampled from the image-gradient
  magnitude mixed with a uniform share (Image-GS), sizes from the distance to
  the nearest neighbours, colours from the image (for the accumulated sum,
  divided by the initial coverage so the first render already matches it).
- Error-guided progressive addition (Image-GS): start with part of the budget
  and add the rest in rounds at pixels sampled by the current error.
- Losses L2 or L1 + D-SSIM; Adam (default) or Adan; a tqdm progress bar.
- At the end the Gaussians are put in level-of-detail order: largest
  contribution (|colour| x footprint) first, so any prefix is a coarser image.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from splat.metrics import ms_ssim, psnr, ssim
from splat.models.image2d import MIN_VARIANCE, MODES, Image2D, cholesky_to_cov, render_image2d

from .optim import Adan

LOSSES = ("l2", "l1-ssim")
OPTIMIZERS = ("adam", "adan")


@dataclass
class FitConfig:
    num_gaussians: int = 20000
    """Gaussians at the end of fitting."""
    iterations: int = 2000
    """Optimisation steps."""
    mode: str = "sum"
    """'sum' (GaussianImage: accumulated sum) or 'topk' (Image-GS: normalised top-K blending)."""
    topk: int = 10
    """K of the top-K mode."""
    loss: str = "l2"
    """'l2' or 'l1-ssim' (0.8 L1 + 0.2 (1 - SSIM))."""
    optimizer: str = "adam"
    """'adam' or 'adan'."""
    lr_means: float = 0.3
    """Learning rate of the positions, in pixels."""
    lr_chol: float = 0.1
    """Learning rate of the Cholesky factors, in pixels."""
    lr_colors: float = 0.01
    """Learning rate of the colours."""
    lr_final: float = 0.1
    """Every learning rate decays exponentially to this fraction by the last iteration."""
    init_fraction: float = 0.3
    """Share of the Gaussians placed at the start; the rest is added where the error is (1 = all at once)."""
    add_rounds: int = 4
    """Rounds of error-guided addition, spread over the first half of the iterations."""
    uniform_share: float = 0.3
    """Share of the initial positions sampled uniformly rather than from the image gradient."""
    seed: int = 0
    """Seed of the initial and added positions."""
    backend: str = "auto"
    """'auto' (the native CPU kernels for float32 CPU tensors), 'cpu' or 'torch' (the dense
    reference, small images only)."""


def image_to_tensor(img) -> Tensor:
    """A PIL image or uint8/float array -> float32 [H,W,3] in [0,1]."""
    from PIL import Image

    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    t = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32)
    if t.ndim == 2:
        t = t[..., None]
    return t


def load_image(path) -> Tensor:
    """Read an image file as float32 [H,W,3] in [0,1] with `splat.io.images.read_image`: the
    picture as image viewers show it (EXIF orientation applied), bit depth from the file's mode
    (a dark 16-bit PNG stays dark, a float TIFF is taken as it is), alpha composited on black.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (``FormatError``)
    naming the file for anything unreadable."""
    from pathlib import Path

    from ..io.images import composite, read_image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    img = read_image(path, orientation="exif")
    rgb = composite(img.rgb_float(), img.alpha_float(), (0.0, 0.0, 0.0))
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))


def _gradient_magnitude(img: Tensor) -> Tensor:
    gray = img.mean(-1)[None, None]
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
    gx = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kx[None, None])
    gy = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kx.t()[None, None])
    return (gx * gx + gy * gy).sqrt()[0, 0]


def _sample_pixels(weights: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """n positions (pixel coords, jittered inside the pixel) drawn with probability ~ weights [H,W]."""
    H, W = weights.shape
    idx = torch.multinomial(weights.reshape(-1).double(), n, replacement=True, generator=gen)
    xy = torch.stack([idx % W, idx // W], -1).float()
    return xy + torch.rand(n, 2, generator=gen)


def _knn_sigma(points: Tensor, query: Tensor, k: int = 3) -> Tensor:
    from scipy.spatial import cKDTree

    tree = cKDTree(points.numpy())
    d, _ = tree.query(query.numpy(), k=k + 1)
    d = torch.as_tensor(d[:, 1:], dtype=torch.float32).mean(1)  # the first neighbour is the point itself
    return d.clamp(0.5, 50.0) * 0.6


def _chol_for_sigma(sigma: Tensor) -> Tensor:
    s = (sigma * sigma - MIN_VARIANCE).clamp_min(0.01).sqrt()
    return torch.stack([s, torch.zeros_like(s), s], -1)


def _sample_at(img: Tensor, xy: Tensor) -> Tensor:
    H, W, _ = img.shape
    x = xy[:, 0].long().clamp(0, W - 1)
    y = xy[:, 1].long().clamp(0, H - 1)
    return img[y, x]


def initialise(img: Tensor, n: int, cfg: FitConfig, gen: torch.Generator) -> Image2D:
    """Gradient-guided initial Gaussians (see the module docstring)."""
    H, W, D = img.shape
    g = _gradient_magnitude(img)
    p = (1 - cfg.uniform_share) * g / g.sum().clamp_min(1e-12) + cfg.uniform_share / (H * W)
    means = _sample_pixels(p, n, gen)
    sigma = _knn_sigma(means, means) if n > 3 else torch.full((n,), math.sqrt(H * W / max(n, 1) / math.pi))
    model = Image2D(means, _chol_for_sigma(sigma), _sample_at(img, means).clone(), W, H, cfg.mode, cfg.topk)
    if cfg.mode == "sum":
        _rescale_to_coverage(model, cfg.backend, slice(0, n))
    return model


@torch.no_grad()
def _rescale_to_coverage(model: Image2D, backend: str, idx) -> None:
    """Sum mode: divide the colours of Gaussians idx by the weight sum at their centres."""
    _, wsum = render_image2d(model, backend=backend, return_weights=True)
    cover = _sample_at(wsum[..., None], model.means[idx])[:, 0]
    model.colors[idx] /= cover.clamp_min(1.0)[:, None]


class _Trainer:
    def __init__(self, model: Image2D, cfg: FitConfig, total_iters: int):
        self.cfg = cfg
        self.model = model
        self.total = max(total_iters, 1)
        self._make_optimizer(None)

    def _groups(self):
        cfg = self.cfg
        return [("means", cfg.lr_means), ("chol", cfg.lr_chol), ("colors", cfg.lr_colors)]

    def _make_optimizer(self, old_state: Optional[Dict[str, dict]]):
        m = self.model
        params = {}
        for name, _ in self._groups():
            t = getattr(m, name).detach().clone().requires_grad_(True)
            setattr(m, name, t)
            params[name] = t
        groups = [{"params": [params[name]], "lr": lr, "name": name, "base_lr": lr} for name, lr in self._groups()]
        cls = torch.optim.Adam if self.cfg.optimizer == "adam" else Adan
        kw = {"eps": 1e-15} if self.cfg.optimizer == "adam" else {}
        self.opt = cls(groups, **kw)
        if old_state:  # carry the moments over, zeros for new Gaussians
            for name, t in params.items():
                st = old_state.get(name)
                if not st:
                    continue
                new = {}
                for k, v in st.items():
                    if torch.is_tensor(v) and v.ndim == t.ndim and v.shape[1:] == t.shape[1:]:
                        pad = torch.zeros((t.shape[0] - v.shape[0],) + tuple(v.shape[1:]), dtype=v.dtype)
                        new[k] = torch.cat([v, pad])
                    else:
                        new[k] = v
                self.opt.state[t] = new

    def add(self, means: Tensor, chol: Tensor, colors: Tensor):
        old = {name: self.opt.state.get(getattr(self.model, name), {}) for name, _ in self._groups()}
        m = self.model
        m.means = torch.cat([m.means.detach(), means])
        m.chol = torch.cat([m.chol.detach(), chol])
        m.colors = torch.cat([m.colors.detach(), colors])
        self._make_optimizer(old)

    def set_lr(self, it: int):
        f = self.cfg.lr_final ** (it / self.total)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * f


def loss_fn(render: Tensor, target: Tensor, kind: str) -> Tensor:
    if kind == "l2":
        return F.mse_loss(render, target)
    return 0.8 * (render - target).abs().mean() + 0.2 * (1 - ssim(render, target, padding="same"))


@torch.no_grad()
def evaluate(model: Image2D, target: Tensor, backend: str = "auto") -> Dict[str, float]:
    out = model.render(backend=backend, clamp=True)
    res = {"psnr": float(psnr(out, target)), "ssim": float(ssim(out, target))}
    try:
        res["ms_ssim"] = float(ms_ssim(out, target))
    except ValueError:  # smaller than MS-SSIM's 161 pixels
        res["ms_ssim"] = float("nan")
    return res


@torch.no_grad()
def lod_order(model: Image2D) -> Image2D:
    """Sort Gaussians by their contribution, |colour| x sqrt(det Sigma), largest first
    (stable, so equal ones keep their order)."""
    cov = cholesky_to_cov(model.chol)
    area = (cov[:, 0] * cov[:, 2] - cov[:, 1] ** 2).clamp_min(0).sqrt()
    energy = model.colors.norm(dim=1) * area
    order = torch.sort(energy, descending=True, stable=True).indices
    return model.subset(order)


@dataclass
class FitResult:
    model: Image2D
    seconds: float
    history: List[dict] = field(default_factory=list)


def validate(cfg: FitConfig) -> None:
    if cfg.num_gaussians < 1:
        raise ValueError(f"--num-gaussians must be >= 1, got {cfg.num_gaussians}")
    if cfg.iterations < 0:
        raise ValueError(f"--iterations must be >= 0, got {cfg.iterations}")
    if cfg.mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.loss not in LOSSES:
        raise ValueError(f"--loss must be one of {LOSSES}, got {cfg.loss!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    if not 0 < cfg.init_fraction <= 1:
        raise ValueError(f"--init-fraction must be in (0, 1], got {cfg.init_fraction}")
    if cfg.mode == "topk" and cfg.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {cfg.topk}")


def fit(target: Tensor, cfg: FitConfig, progress: bool = True, log_every: int = 0,
        callback: Optional[Callable[[int, Image2D], None]] = None, model: Optional[Image2D] = None) -> FitResult:
    """Fit cfg.num_gaussians Gaussians to target [H,W,D] in [0,1] (or continue `model`)."""
    validate(cfg)
    from tqdm.auto import tqdm

    H, W, D = target.shape
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    if model is None:
        n0 = max(1, min(cfg.num_gaussians, round(cfg.num_gaussians * cfg.init_fraction)))
        model = initialise(target, n0, cfg, gen)
    else:
        model = model.detach()
    tr = _Trainer(model, cfg, cfg.iterations)
    to_add = cfg.num_gaussians - model.num_gaussians
    rounds = cfg.add_rounds if to_add > 0 else 0
    add_at = {max(1, round((r + 1) * cfg.iterations / (2 * (rounds + 1)))): r for r in range(rounds)}
    history = []
    bar = tqdm(range(cfg.iterations), disable=not progress, desc="fit", dynamic_ncols=True, mininterval=0.5)
    for it in bar:
        if it in add_at:
            r = add_at[it]
            n_new = to_add * (r + 1) // rounds - to_add * r // rounds
            _add_by_error(tr, target, n_new, cfg, gen)
        tr.set_lr(it)
        out = tr.model.render(backend=cfg.backend)
        loss = loss_fn(out, target, cfg.loss)
        tr.opt.zero_grad(set_to_none=True)
        loss.backward()
        tr.opt.step()
        if progress and (it % 20 == 0 or it == cfg.iterations - 1):
            with torch.no_grad():
                p = float(psnr(out.detach().clamp(0, 1), target))
            bar.set_postfix(loss=f"{loss.item():.5f}", psnr=f"{p:.2f}", n=tr.model.num_gaussians)
        if log_every and (it % log_every == 0 or it == cfg.iterations - 1):
            with torch.no_grad():
                history.append({"iteration": it, "seconds": time.perf_counter() - t0,
                                "psnr": float(psnr(out.detach().clamp(0, 1), target)),
                                "num_gaussians": tr.model.num_gaussians})
        if callback is not None:
            callback(it, tr.model)
    if tr.model.num_gaussians < cfg.num_gaussians:  # iterations too few for the addition rounds
        _add_by_error(tr, target, cfg.num_gaussians - tr.model.num_gaussians, cfg, gen)
    model = lod_order(tr.model.detach())
    return FitResult(model, time.perf_counter() - t0, history)


@torch.no_grad()
def _add_by_error(tr: _Trainer, target: Tensor, n: int, cfg: FitConfig, gen: torch.Generator) -> None:
    """Image-GS's error-guided addition: n new Gaussians at pixels drawn ~ |error|."""
    if n <= 0:
        return
    m = tr.model
    out = m.render(backend=cfg.backend)
    err = (out - target).abs().sum(-1)
    means = _sample_pixels(err + 1e-8, n, gen)
    sigma = _knn_sigma(torch.cat([m.means.detach(), means]), means)
    if cfg.mode == "sum":
        colors = _sample_at(target - out, means)
    else:
        colors = _sample_at(target, means)
    tr.add(means, _chol_for_sigma(sigma), colors)
    if cfg.mode == "sum":  # the residual was measured at full weight; share it with what already covers the pixel
        k = tr.model.num_gaussians
        _rescale_to_coverage(tr.model, cfg.backend, slice(k - n, k))
