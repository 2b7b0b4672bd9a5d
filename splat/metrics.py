"""Image metrics: PSNR, SSIM (Gaussian window 11, sigma 1.5, as 3DGS and torchmetrics)
and MS-SSIM (5 scales, the weights of Wang et al. 2003, as pytorch_msssim).

LPIPS is not here: its reference implementation needs torchvision's pretrained
networks, which have no CPU build on the package index this project installs from.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def _mask_of(mask: Tensor, like: Tensor) -> Tensor:
    """A mask [..., H, W] or [..., H, W, 1] (bool or 0/1) as bool [..., H, W, 1] broadcastable to `like`."""
    m = mask if mask.shape[-1] == 1 and mask.ndim == like.ndim else mask[..., None]
    if m.shape[-3:-1] != like.shape[-3:-1]:
        raise ValueError(f"mask of shape {list(mask.shape)} does not match images of shape {list(like.shape)}")
    return m.to(like.device) > 0


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """PSNR in dB of images in [0, data_range]; [..., H, W, C] -> [...] (per image).

    `mask` [..., H, W(, 1)]: only pixels where it is non-zero count (the mean squared error is
    over them); an all-zero mask gives the 1e-20 floor's PSNR."""
    if mask is None:
        mse = ((a - b) ** 2).flatten(-3).mean(-1)
    else:
        m = _mask_of(mask, a).to(a.dtype)
        mse = (((a - b) ** 2) * m).flatten(-3).sum(-1) / (m.flatten(-3).sum(-1) * a.shape[-1]).clamp_min(1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-20))


@functools.lru_cache(maxsize=8)
def _gauss_1d(size: int, sigma: float, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def _blur(x: Tensor, g: Tensor, padding: int) -> Tensor:
    # separable Gaussian on [B, C, H, W]; zero padding like 3DGS's ssim when padding > 0
    C = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(C, 1, 1, k), padding=(0, padding), groups=C)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(C, 1, k, 1), padding=(padding, 0), groups=C)


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5, padding: str = "valid",
         data_range: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Mean SSIM per image of [..., H, W, C] images -> [...].

    padding="valid" averages over windows fully inside the image (torchmetrics,
    gsplat's evaluation); "same" zero-pads (the 3DGS training loss).
    `mask` [..., H, W(, 1)]: pixels where it is zero are set to 0 in both images (as
    nerfstudio's splatfacto does; they carry no error, no gradient and none of their content
    reaches a kept pixel's window) and the mean is over the windows centred on kept pixels.
    """
    if mask is not None:
        m = _mask_of(mask, a)
        a, b = a * m, b * m
        mm = m[..., 0].reshape(-1, *a.shape[-3:-1]).to(a.dtype)
    lead = a.shape[:-3]
    m = _ssim_map(a, b, window, sigma, padding, data_range)
    if mask is None:
        return m.flatten(1).mean(1).reshape(lead)
    if padding != "same":  # window centres of the valid windows
        h = window // 2
        mm = mm[:, h:h + m.shape[-2], h:h + m.shape[-1]]
    w = mm[:, None].expand_as(m)
    return ((m * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1)).reshape(lead)


def _ssim_map(a: Tensor, b: Tensor, window: int, sigma: float, padding: str, data_range: float) -> Tensor:
    """SSIM of every window of [..., H, W, C] images -> [B, C, H', W'] (H' = H with "same" padding)."""
    H, W, C = a.shape[-3:]
    x = a.reshape(-1, H, W, C).permute(0, 3, 1, 2)
    y = b.reshape(-1, H, W, C).permute(0, 3, 1, 2)
    g = _gauss_1d(window, sigma, x.dtype).to(x.device)
    p = window // 2 if padding == "same" else 0
    if padding == "valid" and (H < window or W < window):
        raise ValueError(f"ssim: images of {H}x{W} are smaller than the {window}x{window} window")
    mu_x, mu_y = _blur(x, g, p), _blur(y, g, p)
    sxx = _blur(x * x, g, p) - mu_x ** 2
    syy = _blur(y * y, g, p) - mu_y ** 2
    sxy = _blur(x * y, g, p) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))


def ssim_map(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0,
             mask: Tensor | None = None) -> Tensor:
    """Per-pixel SSIM (zero padding, "same" size) of images [H, W, C], averaged over channels ->
    [H, W]: `ssim(..., padding="same")` is its mean (or, with `mask` [H, W(, 1)], its
    mask-weighted mean over kept pixels, the images zeroed where the mask is off)."""
    if mask is not None:
        m = _mask_of(mask, a)
        a, b = a * m, b * m
    return _ssim_map(a, b, window, sigma, "same", data_range)[0].mean(0)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _ssim_cs(x: Tensor, y: Tensor, g: Tensor, data_range: float):
    """Per-channel mean SSIM and contrast-structure term of [B, C, H, W] ("valid" windows)."""
    mu_x, mu_y = _blur(x, g, 0), _blur(y, g, 0)
    sxx = _blur(x * x, g, 0) - mu_x ** 2
    syy = _blur(y * y, g, 0) - mu_y ** 2
    sxy = _blur(x * y, g, 0) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    s = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1) * cs
    return s.flatten(2).mean(-1), cs.flatten(2).mean(-1)


def ms_ssim(a: Tensor, b: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Multi-scale SSIM per image of [..., H, W, C] images -> [...], averaged over channels.

    Five scales, 2x2 average pooling between them; the smaller side must be
    larger than (window - 1) * 16 pixels (161 for the default window)."""
    lead = a.shape[:-3]
    H, W, C = a.shape[-3:]
    if min(H, W) <= (window - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1):
        raise ValueError(f"ms_ssim: images of {H}x{W} are too small for 5 scales with an {window}-pixel window "
                         f"(the smaller side must exceed {(window - 1) * 16})")
    x = a.reshape(-1, H, W, C).permute(0, 3, 1, 2)
    y = b.reshape(-1, H, W, C).permute(0, 3, 1, 2)
    g = _gauss_1d(window, sigma, x.dtype).to(x.device)
    w = torch.tensor(MS_SSIM_WEIGHTS, dtype=x.dtype, device=x.device)
    mcs = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        s, cs = _ssim_cs(x, y, g, data_range)
        if level < len(MS_SSIM_WEIGHTS) - 1:
            mcs.append(torch.relu(cs))
            pad = (x.shape[2] % 2, x.shape[3] % 2)
            x = F.avg_pool2d(x, 2, padding=pad)
            y = F.avg_pool2d(y, 2, padding=pad)
    vals = torch.stack(mcs + [torch.relu(s)], 0)  # [levels, B, C]
    return (vals ** w[:, None, None]).prod(0).mean(-1).reshape(lead)
