"""Codec of 2D image Gaussians (GaussianImage-style), file extension .sgi.

Attributes are quantised as GaussianImage does:
- positions: half precision, in image-normalised coordinates [-1, 1];
- Cholesky factors: learned scalar quantisation, one step and offset per
  factor (LSQ+, learned with straight-through rounding), `chol_bits` bits;
- colours: residual vector quantisation, `rvq_stages` k-means codebooks of
  2^codebook_bits entries each (stored in half precision).
Quantisation-aware fine-tuning (`qat`) trains the model through the
quantisers, then the symbols are entropy-coded with zstd (positions sorted by
row so their half-float keys delta-code well, byte planes split).

File layout (little-endian):
    magic "SGIC", version u8, mode u8 (0 sum, 1 top-K), topk u8, channels u8,
    width u32, height u32, N u32, chol_bits u8, rvq_stages u8, codebook_bits u8, reserved u8,
    chol step f32[3], chol offset f32[3],
    codebooks f16[stages, 2^codebook_bits, channels],
    payload length u32, zstd payload (y-key deltas, x keys, Cholesky symbols, RVQ indices),
    CRC-32 of all preceding bytes u32.
`decode_bytes` rebuilds exactly the model `QuantizedImage2D.to_model()` gave the
encoder, so a decoded file renders bit-for-bit what the encoder measured.
"""
from __future__ import annotations

import math
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from splat.models.image2d import MODES, Image2D

MAGIC = b"SGIC"
VERSION = 1
_HEAD = struct.Struct("<4sBBBBIIIBBBB")


class CodecError(ValueError):
    """A .sgi file is not valid (truncated, corrupt or of another kind)."""


@dataclass
class CodecConfig:
    chol_bits: int = 6
    """Bits per Cholesky factor."""
    rvq_stages: int = 2
    """Residual VQ stages for the colours."""
    codebook_bits: int = 0
    """log2 of each codebook's size; 0 picks it from the Gaussian count (N/16, between 16 and 256 entries)."""
    qat_iterations: int = 200
    """Quantisation-aware fine-tuning iterations (0 = quantise only)."""
    lr_means: float = 0.01
    """Fine-tuning learning rates: positions (pixels, through half-precision rounding) ..."""
    lr_chol: float = 0.0
    """... the Cholesky factors themselves (through the rounding: 0 keeps them, which measured best) ..."""
    lr_quant: float = 1e-4
    """... the learned step and offset of the Cholesky quantiser ..."""
    lr_colors: float = 0.001
    """... the colours that choose the RVQ codewords ..."""
    lr_codebooks: float = 3e-4
    """... and the RVQ codebooks."""
    zstd_level: int = 19
    """zstd compression level (1-22)."""
    seed: int = 0
    """Seed of the k-means initialisation."""
    backend: str = "auto"
    """Renderer backend of the fine-tuning."""

    def resolved_codebook_bits(self, n: int) -> int:
        if self.codebook_bits:
            return self.codebook_bits
        return int(min(8, max(4, math.floor(math.log2(max(n, 1) / 16)))))


@dataclass
class QuantizedImage2D:
    pos: Tensor            # [N,2] float16, normalised coordinates
    chol_q: Tensor         # [N,3] int64 symbols in [0, 2^bits)
    chol_step: Tensor      # [3] float32
    chol_zero: Tensor      # [3] float32
    codebooks: Tensor      # [S, 2^b, D] float16
    indices: Tensor        # [S, N] int64
    width: int
    height: int
    mode: str
    topk: int
    chol_bits: int

    def to_model(self) -> Image2D:
        """The float32 model this quantised one stands for (what the decoder rebuilds)."""
        wh = torch.tensor([self.width, self.height], dtype=torch.float32)
        means = (self.pos.float() + 1.0) * (wh * 0.5)
        chol = self.chol_q.float() * self.chol_step + self.chol_zero
        colors = _rvq_decode(self.codebooks.float(), self.indices)
        return Image2D(means.contiguous(), chol.contiguous(), colors.contiguous(), self.width, self.height,
                       self.mode, self.topk)


# ---------------------------------------------------------------- quantisers
def _ste_round(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()


def _pos_normalise(means: Tensor, W: int, H: int) -> Tensor:
    return means / means.new_tensor([W * 0.5, H * 0.5]) - 1.0


def _quant_pos(means: Tensor, W: int, H: int) -> Tensor:
    """Half-precision positions (straight-through), back in pixels, as to_model computes them."""
    n = _pos_normalise(means, W, H)
    nq = n + (n.detach().half().float() - n.detach())
    return (nq + 1.0) * means.new_tensor([W * 0.5, H * 0.5])


def _quant_chol(chol: Tensor, step: Tensor, zero: Tensor, bits: int) -> Tensor:
    """LSQ+ scalar quantiser: learned step and offset per factor, straight-through rounding."""
    levels = 2 ** bits - 1
    q = torch.clamp(_ste_round((chol - zero) / step), 0, levels)
    return q * step + zero


def _init_chol_quant(chol: Tensor, bits: int):
    lo = torch.quantile(chol, 0.001, dim=0)
    hi = torch.quantile(chol, 0.999, dim=0)
    step = ((hi - lo) / (2 ** bits - 1)).clamp_min(1e-4)
    return step, lo


def kmeans(x: Tensor, k: int, iters: int = 20, init: Optional[Tensor] = None, gen=None) -> Tensor:
    """Lloyd's k-means of x [N,D]; returns the centres [k,D] (empty clusters re-seeded on far points)."""
    n = x.shape[0]
    if init is not None:
        c = init.clone()
    else:
        idx = torch.randperm(n, generator=gen)[:k]
        c = x[idx].clone()
        if c.shape[0] < k:
            c = torch.cat([c, c[:1].expand(k - c.shape[0], -1) if c.shape[0] else x.new_zeros(k - c.shape[0],
                                                                                              x.shape[1])])
    for _ in range(iters):
        a = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, a, x)
        cnt = torch.bincount(a, minlength=k).to(x.dtype)
        empty = cnt == 0
        c = torch.where(empty[:, None], c, sums / cnt.clamp_min(1)[:, None])
        n_empty = min(int(empty.sum()), n)  # more codewords than points: some stay unused
        if n_empty:
            far = torch.cdist(x, c).min(1).values.topk(n_empty).indices
            c[torch.nonzero(empty)[:n_empty, 0]] = x[far]
    return c


def _rvq_fit(colors: Tensor, stages: int, k: int, init: Optional[Tensor] = None, gen=None, iters: int = 20):
    cbs, idxs = [], []
    r = colors
    for s in range(stages):
        cb = kmeans(r, k, iters, None if init is None else init[s], gen)
        cb = cb.half().float()  # stored in half precision
        a = torch.cdist(r, cb).argmin(1)
        cbs.append(cb)
        idxs.append(a)
        r = r - cb[a]
    return torch.stack(cbs), torch.stack(idxs)


def _rvq_assign(colors: Tensor, cbs: Tensor) -> Tensor:
    """RVQ indices [S,N] of colours [N,D] with codebooks [S,K,D]: each stage codes the residual."""
    idx, r = [], colors
    for s in range(cbs.shape[0]):
        a = torch.cdist(r, cbs[s]).argmin(1)
        idx.append(a)
        r = r - cbs[s][a]
    return torch.stack(idx)


def _rvq_decode(cbs: Tensor, idx: Tensor) -> Tensor:
    """The colours [N,D] that RVQ indices [S,N] stand for: the sum of their codewords."""
    out = torch.zeros(idx.shape[1], cbs.shape[2], dtype=cbs.dtype)
    for s in range(cbs.shape[0]):
        out = out + cbs[s][idx[s]]
    return out


def _rvq_apply(colors: Tensor, cbs: Tensor) -> Tensor:
    """RVQ of colours: the codewords (differentiable in the codebooks) plus a
    straight-through path to the latent colours, which choose the codewords."""
    q = _rvq_decode(cbs, _rvq_assign(colors.detach(), cbs.detach()))
    return q + (colors - colors.detach())


# ---------------------------------------------------------------- encoder
@torch.no_grad()
def quantize(model: Image2D, cfg: CodecConfig, chol_step: Optional[Tensor] = None,
             chol_zero: Optional[Tensor] = None, codebooks: Optional[Tensor] = None) -> QuantizedImage2D:
    """Quantise a float model (no fine-tuning), in the codec's storage order (by row).
    The Cholesky quantiser and the codebooks are fitted to the model unless given
    (as fine-tuning learned them)."""
    _check_cfg(cfg)
    m = model.detach()
    N, D = m.colors.shape
    if N == 0:
        raise ValueError("splat.image2d.codec: the model has no Gaussians")
    if D > 255:
        raise ValueError(f"splat.image2d.codec: at most 255 channels, got {D}")
    gen = torch.Generator().manual_seed(cfg.seed)
    pos = _pos_normalise(m.means, m.width, m.height).clamp(-65504, 65504).half()
    if chol_step is None:
        chol_step, chol_zero = _init_chol_quant(m.chol, cfg.chol_bits)
    chol_step, chol_zero = chol_step.float().detach().clone(), chol_zero.float().detach().clone()
    chol_q = torch.clamp(torch.round((m.chol - chol_zero) / chol_step), 0, 2 ** cfg.chol_bits - 1).long()
    if codebooks is not None:
        cbs = codebooks.half().float()
        idx = _rvq_assign(m.colors, cbs)
    else:
        cbs, idx = _rvq_fit(m.colors, cfg.rvq_stages, 2 ** cfg.resolved_codebook_bits(N), None, gen)
    # storage order: by row key, then column key (stable)
    yk = _ordered_key(pos[:, 1]).long()
    xk = _ordered_key(pos[:, 0]).long()
    order = torch.argsort(yk * 65536 + xk, stable=True)
    return QuantizedImage2D(pos[order], chol_q[order], chol_step, chol_zero, cbs.half(), idx[:, order],
                            m.width, m.height, m.mode, m.topk, cfg.chol_bits)


def qat(model: Image2D, target: Tensor, cfg: CodecConfig, progress: bool = False) -> QuantizedImage2D:
    """Quantisation-aware fine-tuning: train through the quantisers (half positions,
    the learned scalar Cholesky quantiser, RVQ colours with k-means-initialised
    codebooks that are then learned too), then quantise with what was learned."""
    _check_cfg(cfg)
    from tqdm.auto import tqdm

    from splat.models.image2d import render_image2d

    m = model.detach()
    if cfg.qat_iterations == 0:
        return quantize(m, cfg)
    N = m.num_gaussians
    gen = torch.Generator().manual_seed(cfg.seed)
    k = 2 ** cfg.resolved_codebook_bits(N)
    means = m.means.clone().requires_grad_(True)
    chol = m.chol.clone().requires_grad_(True)
    colors = m.colors.clone().requires_grad_(True)
    step, zero = _init_chol_quant(m.chol, cfg.chol_bits)
    step.requires_grad_(True)
    zero.requires_grad_(True)
    cbs, _ = _rvq_fit(m.colors, cfg.rvq_stages, k, None, gen)
    cbs.requires_grad_(True)
    groups = [(cbs, cfg.lr_codebooks), (means, cfg.lr_means), (chol, cfg.lr_chol), (colors, cfg.lr_colors),
              (step, cfg.lr_quant), (zero, cfg.lr_quant)]
    opt = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in groups if lr > 0], eps=1e-15)
    for it in tqdm(range(cfg.qat_iterations), disable=not progress, desc="qat", dynamic_ncols=True):
        q = Image2D(_quant_pos(means, m.width, m.height), _quant_chol(chol, step.abs() + 1e-6, zero, cfg.chol_bits),
                    _rvq_apply(colors, cbs), m.width, m.height, m.mode, m.topk)
        loss = F.mse_loss(render_image2d(q, backend=cfg.backend), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    fitted = Image2D(means.detach(), chol.detach(), colors.detach(), m.width, m.height, m.mode, m.topk)
    return quantize(fitted, cfg, step.detach().abs() + 1e-6, zero.detach(), cbs.detach())


def _check_cfg(cfg: CodecConfig) -> None:
    if not 1 <= cfg.chol_bits <= 16:
        raise ValueError(f"--chol-bits must be in [1, 16], got {cfg.chol_bits}")
    if not 1 <= cfg.rvq_stages <= 8:
        raise ValueError(f"--rvq-stages must be in [1, 8], got {cfg.rvq_stages}")
    if not 0 <= cfg.codebook_bits <= 12:
        raise ValueError(f"--codebook-bits must be in [0, 12] (0 = automatic), got {cfg.codebook_bits}")
    if cfg.qat_iterations < 0:
        raise ValueError(f"--qat-iterations must be >= 0, got {cfg.qat_iterations}")


def _ordered_key(h: Tensor) -> Tensor:
    """uint16 keys of float16 values with the same order as the values (as int64)."""
    b = h.view(torch.int16).long() & 0xFFFF
    return torch.where(b >= 0x8000, 0xFFFF - b, b | 0x8000)


def _from_ordered_key(k: np.ndarray) -> np.ndarray:
    k = k.astype(np.int64)
    b = np.where(k >= 0x8000, k & 0x7FFF, 0xFFFF - k)
    return b.astype(np.uint16).view(np.float16)


def _planes(a: np.ndarray) -> bytes:
    """Little-endian array -> its bytes grouped by significance (all low bytes, then ...)."""
    b = np.ascontiguousarray(a).view(np.uint8).reshape(a.size, a.dtype.itemsize)
    return b.T.tobytes()


def _unplanes(buf: bytes, n: int, dtype) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    return np.frombuffer(buf, np.uint8).reshape(size, n).T.copy().view(dtype).reshape(n)


def encode_bytes(q: QuantizedImage2D, zstd_level: int = 19) -> bytes:
    import zstandard

    N, D = q.pos.shape[0], q.codebooks.shape[2]
    S, Kc = q.codebooks.shape[0], q.codebooks.shape[1]
    cb_bits = int(round(math.log2(Kc)))
    if 2 ** cb_bits != Kc:
        raise ValueError(f"splat.image2d.codec: codebook size {Kc} is not a power of two")
    yk = _ordered_key(q.pos[:, 1]).numpy()
    xk = _ordered_key(q.pos[:, 0]).numpy()
    if np.any(np.diff(yk) < 0):
        raise ValueError("splat.image2d.codec: positions are not in storage order (use quantize())")
    dy = np.diff(yk, prepend=0).astype(np.uint16)
    sym_dtype = np.uint8 if q.chol_bits <= 8 else np.uint16
    idx_dtype = np.uint8 if cb_bits <= 8 else np.uint16
    payload = b"".join([
        _planes(dy), _planes(xk.astype(np.uint16)),
        _planes(q.chol_q.numpy().T.reshape(-1).astype(sym_dtype)),   # factor-major: one stream per factor
        _planes(q.indices.numpy().reshape(-1).astype(idx_dtype)),
    ])
    comp = zstandard.ZstdCompressor(level=zstd_level).compress(payload)
    head = _HEAD.pack(MAGIC, VERSION, MODES.index(q.mode), q.topk if q.mode == "topk" else 0, D, q.width, q.height,
                      N, q.chol_bits, S, cb_bits, 0)
    body = b"".join([head, struct.pack("<6f", *q.chol_step.tolist(), *q.chol_zero.tolist()),
                     q.codebooks.numpy().astype("<f2").tobytes(), struct.pack("<I", len(comp)), comp])
    return body + struct.pack("<I", zlib.crc32(body))


def decode_bytes(data: bytes, where: str = "data") -> Image2D:
    """Decode a .sgi file's bytes into the float model; CodecError names what is wrong."""
    q = parse(data, where)
    try:
        return q.to_model()
    except CodecError:
        raise
    except ValueError as e:  # a header value the model refuses (e.g. top-K 0), behind a valid checksum
        raise CodecError(f"{where}: {e}") from None


def parse(data: bytes, where: str = "data") -> QuantizedImage2D:
    import zstandard

    if len(data) < 4 or data[:4] != MAGIC:
        raise CodecError(f"{where}: not a splat image codec file (bad magic {bytes(data[:4])!r}, expected {MAGIC!r})")
    if len(data) < _HEAD.size + 24 + 8:
        raise CodecError(f"{where}: truncated ({len(data)} bytes, the header alone takes {_HEAD.size + 24})")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    (magic, version, mode, topk, D, W, H, N, chol_bits, S, cb_bits, _) = _HEAD.unpack_from(data, 0)
    if version != VERSION:
        raise CodecError(f"{where}: codec version {version} is not supported (this splat reads {VERSION})")
    off = _HEAD.size
    cb_bytes = S * (2 ** cb_bits) * D * 2 if cb_bits <= 16 else 0
    need = off + 24 + cb_bytes + 4
    if len(data) < need + 4:
        raise CodecError(f"{where}: truncated ({len(data)} bytes, header and codebooks need {need + 4})")
    (plen,) = struct.unpack_from("<I", data, need - 4)
    if len(data) != need + plen + 4:
        raise CodecError(f"{where}: truncated or padded: {len(data)} bytes, the header announces {need + plen + 4}")
    if zlib.crc32(data[:-4]) != crc:
        raise CodecError(f"{where}: checksum mismatch, the file is corrupt")
    if mode >= len(MODES) or D == 0 or W == 0 or H == 0 or not 1 <= chol_bits <= 16 or S == 0 or cb_bits > 12:
        raise CodecError(f"{where}: invalid header (mode {mode}, {D} channels, {W}x{H}, chol bits {chol_bits}, "
                         f"{S} stages, codebook bits {cb_bits})")
    step_zero = struct.unpack_from("<6f", data, off)
    off += 24
    cbs = np.frombuffer(data, "<f2", count=S * (2 ** cb_bits) * D, offset=off).reshape(S, 2 ** cb_bits, D)
    off += cb_bytes + 4
    sym_size = 1 if chol_bits <= 8 else 2
    idx_size = 1 if cb_bits <= 8 else 2
    expect = N * (2 + 2 + 3 * sym_size + S * idx_size)
    try:
        payload = zstandard.ZstdDecompressor().decompress(data[off:off + plen], max_output_size=expect)
    except zstandard.ZstdError as e:
        raise CodecError(f"{where}: corrupt payload ({e})") from None
    if len(payload) != expect:
        raise CodecError(f"{where}: payload holds {len(payload)} bytes, {N} Gaussians need {expect}")
    p = 0

    def take(n, dtype):
        nonlocal p
        size = n * np.dtype(dtype).itemsize
        out = _unplanes(payload[p:p + size], n, dtype)
        p += size
        return out

    yk = np.cumsum(take(N, np.uint16).astype(np.int64)) & 0xFFFF
    xk = take(N, np.uint16)
    chol_q = take(3 * N, np.uint8 if sym_size == 1 else np.uint16).reshape(3, N).T
    idx = take(S * N, np.uint8 if idx_size == 1 else np.uint16).reshape(S, N)
    if int(chol_q.max(initial=0)) >= 2 ** chol_bits or int(idx.max(initial=0)) >= 2 ** cb_bits:
        raise CodecError(f"{where}: symbols out of range, the file is corrupt")
    pos = np.stack([_from_ordered_key(xk), _from_ordered_key(yk)], -1)
    return QuantizedImage2D(
        torch.from_numpy(pos.copy()), torch.from_numpy(chol_q.astype(np.int64)),
        torch.tensor(step_zero[:3], dtype=torch.float32), torch.tensor(step_zero[3:], dtype=torch.float32),
        torch.from_numpy(cbs.astype(np.float16)), torch.from_numpy(idx.astype(np.int64)),
        W, H, MODES[mode], topk if MODES[mode] == "topk" else 10, chol_bits)


def encode(model: Image2D, target: Optional[Tensor], cfg: CodecConfig, progress: bool = False):
    """Quantise (with fine-tuning when a target image is given) and encode.
    Returns (file bytes, the decoded model, seconds)."""
    t0 = time.perf_counter()
    q = qat(model, target, cfg, progress) if target is not None and cfg.qat_iterations else quantize(model, cfg)
    data = encode_bytes(q, cfg.zstd_level)
    return data, q.to_model(), time.perf_counter() - t0


def bits_per_pixel(num_bytes: int, width: int, height: int) -> float:
    return 8.0 * num_bytes / (width * height)
