"""Codebooks that compressed formats store: scalar codebooks and vector-quantised SH palettes.

- `codebook_1d`: a 256-entry (or k-entry) scalar codebook for a set of columns pooled together (the
  ``.sog`` scales and colours): k-means in 1D over a fine histogram of the values, each bin weighted
  by ``count ** alpha`` (``alpha = 0.5``: sparse tails get codebook entries too; PlayCanvas's writer
  weighs its histogram the same way), then every value labelled with its nearest entry.
- `sh_palette`: a k-means palette of the higher-order SH vectors (one vector of ``(K-1) * 3``
  coefficients per Gaussian): the "SH vector quantisation" of Compact3D / LightGaussian and the
  ``shN`` of ``.sog``.

k-means is scikit-learn's (``KMeans`` with k-means++ seeding, Lloyd iterations; ``MiniBatchKMeans``
for large palettes): a well-kept, BLAS-backed implementation rather than our own. Model-level
transforms built on these (SH degree reduction, quantising a model's SH for any writer) are in
`splat.compress.quantize`.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import numpy as np

__all__ = ["codebook_1d", "sh_palette", "default_palette_size"]


def codebook_1d(values: np.ndarray, k: int = 256, alpha: float = 0.5, bins: int = 4096,
                seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """A scalar codebook for `values` (any shape, finite float).

    Returns ``(codebook [k] float32 ascending, labels uint8/int64 with values' shape)`` where
    ``codebook[labels]`` is each value's nearest entry. Fewer distinct values than `k`: they are
    the codebook exactly (padded with the last). Raises ``ValueError`` for non-finite values."""
    v = np.asarray(values, dtype=np.float64)
    flat = v.reshape(-1)
    if flat.size == 0:
        return np.zeros(k, np.float32), np.zeros(v.shape, np.uint8 if k <= 256 else np.int64)
    if not np.isfinite(flat).all():
        raise ValueError("codebook_1d: values must be finite")
    book = np.unique(flat.astype(np.float32))  # fewer distinct values than k: they are the codebook
    if len(book) > k:
        from sklearn.cluster import KMeans

        lo, hi = float(flat.min()), float(flat.max())
        # bins from a blend of even spacing and quantiles: a dense centre and sparse tails both resolved
        edges = np.unique(np.concatenate([np.linspace(lo, hi, bins // 2 + 1),
                                          np.quantile(flat, np.linspace(0, 1, bins // 2 + 1))]))
        counts, edges = np.histogram(flat, bins=edges)
        sums, _ = np.histogram(flat, bins=edges, weights=flat)
        keep = counts > 0
        centres = (sums[keep] / counts[keep])[:, None]
        w = counts[keep].astype(np.float64) ** alpha
        if len(centres) <= k:
            book = np.sort(centres[:, 0]).astype(np.float32)
        else:
            km = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=100)
            km.fit(centres, sample_weight=w)
            book = np.sort(km.cluster_centers_[:, 0]).astype(np.float32)
    book = np.concatenate([book, np.full(k - len(book), book[-1], np.float32)])  # padded with the last
    # nearest entry: between sorted entries the boundary is the midpoint
    mids = (book[1:].astype(np.float64) + book[:-1]) / 2
    labels = np.searchsorted(mids, flat, side="left")
    return book, labels.reshape(v.shape).astype(np.uint8 if k <= 256 else np.int64)


def default_palette_size(n: int) -> int:
    """The SH palette size for `n` Gaussians by default: ``n / 32`` rounded down to a power of two,
    between 256 and 65536 (16-bit labels) -- 32 to 64 Gaussians share a palette entry, and the
    palette (about 37 bytes an entry in a .sog) stays a small part of a small model's file.
    (PlayCanvas's writer takes ``n / 1024`` rounded down to a power of two, times 1024: about one
    entry per Gaussian up to 64k, a file 3x larger for a few hundredths of a dB; the README's
    size/quality tables have both and the sizes between.)"""
    if n <= 0:
        return 256
    return int(min(65536, max(256, 2 ** math.floor(math.log2(max(1, n / 32))))))


def sh_palette(shN: np.ndarray, k: int, iters: int = 20, seed: int = 0,
               weights: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """k-means palette of the higher-order SH vectors.

    Args:
        shN: [N, K-1, 3] float (K-1 = 3, 8 or 15).
        k: palette size (<= 65536); more than the distinct vectors: every vector is its own entry.
        iters: Lloyd iterations (scikit-learn's ``max_iter``).
        weights: [N] >= 0, how much each vector counts in the centroids (e.g. how much of the
            image the Gaussian covers); None: all alike.

    Returns:
        ``(centroids [k', K-1, 3] float32, labels [N] int64)`` with ``k' <= k`` entries.

    Raises:
        ValueError: k < 1 or > 65536, or shN not [N, K-1, 3] with K-1 > 0.
    """
    a = np.asarray(shN, dtype=np.float32)
    if a.ndim != 3 or a.shape[1] == 0 or a.shape[2] != 3:
        raise ValueError(f"sh_palette: shN must be [N, K-1, 3] with K-1 > 0, got {list(a.shape)}")
    if not 1 <= k <= 65536:
        raise ValueError(f"sh_palette: palette size must be 1..65536, got {k}")
    n = a.shape[0]
    x = a.reshape(n, -1)
    if n <= k:
        return a.copy(), np.arange(n, dtype=np.int64)
    from sklearn.cluster import KMeans, MiniBatchKMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning for duplicate points: fewer distinct vectors than k
        if k <= 8192:
            km = KMeans(n_clusters=k, n_init=1, max_iter=iters, random_state=seed, init="k-means++")
        else:  # Lloyd on n x k distances per iteration gets slow; mini-batches keep it linear
            km = MiniBatchKMeans(n_clusters=k, n_init=1, max_iter=iters, random_state=seed, batch_size=4 * k,
                                 init="random")
        labels = km.fit_predict(x, sample_weight=weights)
    centroids = km.cluster_centers_.astype(np.float32)
    # drop entries no Gaussian uses, so that the palette holds only what is used
    used, labels = np.unique(labels, return_inverse=True)
    return centroids[used].reshape(len(used), -1, 3), labels.astype(np.int64)
