"""PlayCanvas SOG (``.sog``), version 2: a zip of ``meta.json`` and lossless WebP images.

Written from PlayCanvas's description of the format and checked against its reference tools
(splat-transform 3.7 reads what we write and we read what it writes; see the README). SuperSplat and
the PlayCanvas engine open the same files.

Container: a zip (we store the images, already compressed, and deflate meta.json). Layout (every
image W x H RGBA, ``W = ceil(sqrt(N) / 4) * 4``, ``H = ceil(N / W / 4) * 4``; Gaussian
i is pixel i in raster order, the pixels after N are padding)::

    meta.json           {"version": 2, "asset": {"generator": ...}, "count": N,
                         ["model": "antialiased"],
                         "means":  {"mins": [3], "maxs": [3], "files": ["means_l.webp", "means_u.webp"]},
                         "scales": {"codebook": [256], "files": ["scales.webp"]},
                         "quats":  {"files": ["quats.webp"]},
                         "sh0":    {"codebook": [256], "files": ["sh0.webp"]},
                         ["shN":   {"count": P, "bands": 1..3, "codebook": [256],
                                    "files": ["shN_centroids.webp", "shN_labels.webp"]}]}
    means_l, means_u    RGB = low / high byte of a 16-bit quantisation, per axis, of
                        ``v = sign(x) * ln(|x| + 1)`` over [mins, maxs] (mins/maxs are of v)
    quats               "smallest three" of the unit (w,x,y,z) quaternion, the largest component
                        made positive: RGB = the other three (in w,x,y,z order) times sqrt(2), mapped
                        from [-1, 1] to 0..255; A = 252 + index of the largest (0 = w)
    scales              RGB = indices into the 256-entry codebook of log scales (one for all axes)
    sh0                 RGB = indices into the 256-entry codebook of SH DC coefficients;
                        A = sigmoid(opacity) * 255
    shN_labels          R + 256 G = the Gaussian's entry in the SH palette (P <= 65536 entries)
    shN_centroids       64 palette entries per row, each ``(d+1)^2 - 1`` pixels wide (one pixel per
                        coefficient, RGB = the three colour channels' indices into shN's codebook);
                        width ``64 * ((d+1)^2 - 1)``, height ``ceil(P / 64)``

Version 1 (no ``version`` in meta.json; per-file, with other encodings) is refused with a message.

What this writer chooses (readers do not care):

* the order of the Gaussians in the images: ``order="morton"`` (default here) is the Z-order of the
  positions that PlayCanvas's writer uses; ``"none"`` keeps the model's order; or a permutation:
  ``splat-export`` passes `splat.compress.plas.grid_order`'s self-organising grid (Morgenstern et
  al. 2024), in which each attribute image is smoother and WebP compresses it better (this module
  is the file format and stays below the compression algorithms in the layering);
* the SH palette size (``sh_palette``; default `splat.compress.quantize.default_palette_size`,
  about one entry per 8 Gaussians) and the codebooks (`splat.compress.quantize.codebook_1d`);
* bytes are rounded to nearest (PlayCanvas's writer truncates; readers decode both the same way).

Round-trip bounds (writer -> reader): positions within half a 16-bit step of the log-space range
per axis (relative ~1e-5 of the extent near the origin, coarser far away: the log transform spends
precision near the origin); quaternion components within ~0.003 (up to sign); log scales and
DC colours within half the gap between their codebook entries; sigmoid(opacity) within 0.5/255;
higher-order SH: their palette entry, within half the gap of shN's codebook.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from .common import (FormatError, atomic_write, degree_for_rest, read_file_bytes, round_u8, sigmoid, to_splats,
                     validate_splats)

__all__ = ["write_sog", "read_sog", "encode_sog", "decode_sog", "sog_order", "image_shape"]

# the images in the order the zip holds them (the SH two only with higher-order SH)
_FILES = ("means_l.webp", "means_u.webp", "quats.webp", "scales.webp", "sh0.webp", "shN_centroids.webp",
          "shN_labels.webp")
_MAX_BYTES = 1 << 31  # a sanity cap on one decoded image (a zip bomb or a corrupt size)


def image_shape(n: int) -> tuple[int, int]:
    """(H, W) of the attribute images for `n` Gaussians: ``W = ceil(sqrt(n) / 4) * 4``,
    ``H = ceil(n / W / 4) * 4`` (PlayCanvas's layout; the pixels after n are padding)."""
    w = max(4, int(np.ceil(np.sqrt(n) / 4)) * 4)
    return int(np.ceil(n / w / 4)) * 4, w


def _log_transform(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _inv_log_transform(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.expm1(np.abs(v))


def _short(values) -> list:
    """float32 values as the shortest decimals that read back to the same float32 (a 256-entry
    codebook in meta.json then takes ~2.5 KB instead of ~5)."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32).ravel()]


def sog_order(means: np.ndarray, order: Union[str, np.ndarray, torch.Tensor] = "morton",
              where: str = "splats") -> np.ndarray:
    """The permutation the writer lays the Gaussians out in (pixel k holds Gaussian ``order[k]``):
    ``"morton"``: the Z-order of the positions (PlayCanvas's writer); ``"none"``: as given; or an
    explicit permutation [N] of integers (`splat.compress.plas.grid_order` gives the self-organising
    one). Raises FormatError naming `where` for a bad name or permutation."""
    from .compressed_ply import morton_order

    n = means.shape[0]
    if not isinstance(order, str):
        try:
            raw = np.asarray(order.detach().cpu() if isinstance(order, torch.Tensor) else order)
            with np.errstate(invalid="ignore"):  # NaN/inf: refused below
                o = raw.astype(np.int64)
        except (TypeError, ValueError, OverflowError):
            raw = o = None
        # integers (or floats holding integers): 0.5 must not be truncated into a valid index
        integral = raw is not None and raw.dtype.kind in "iuf" and np.array_equal(o, raw)
        if not integral or o.shape != (n,) or not np.array_equal(np.sort(o), np.arange(n)):
            raise FormatError(f"{where}: the SOG order must be a permutation of the integers 0..{n - 1}")
        return o
    if order == "none":
        return np.arange(n)
    if order != "morton":
        raise FormatError(f"{where}: unknown SOG order {order!r}; expected 'morton', 'none' or a permutation")
    return morton_order(means)


def _encode_webp(rgba: np.ndarray, effort: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # exact: keep the RGB of fully transparent pixels (opacity 0 still has a colour)
    Image.fromarray(rgba, "RGBA").save(buf, format="WEBP", lossless=True, quality=effort, method=4, exact=True)
    return buf.getvalue()


def encode_sog(splats: Mapping[str, Any], *, order: Union[str, np.ndarray, torch.Tensor, list] = "morton",
               sh_palette: Optional[int] = None, antialiased: bool = False, webp_effort: int = 100,
               seed: int = 0, where: str = "splats", chosen: Optional[list] = None) -> bytes:
    """Encode a splats dict to the bytes of a ``.sog`` (zip) file.

    Args:
        splats: the model (see `splat.io`); validated first.
        order: the Gaussians' layout in the images (`sog_order`): "morton" (default), "none",
            a permutation [N] (`splat.compress.plas.grid_order`: the self-organising grid), or a
            list of these: each is encoded (the quantisation is shared, only the images differ)
            and the smallest file is returned (``splat-export`` passes ``[grid, "morton"]``).
        sh_palette: SH palette entries (1..65536; default `default_palette_size(N)`).
        antialiased: mark the model as trained with antialiasing (meta.json ``"model"``).
        webp_effort: libwebp's lossless effort 0..100 (Pillow's ``quality`` in lossless mode).
        seed: of k-means (the file is deterministic).
        chosen: a list that gets the index of the order used appended (for a report).

    Raises:
        FormatError: an invalid model, a bad order or palette size, a model too large for WebP.
    """
    from .codebooks import codebook_1d, default_palette_size, sh_palette as fit_palette

    a = validate_splats(splats, where)
    n = a["means"].shape[0]
    H, W = image_shape(n)
    if W > 16383 or H > 16383:
        raise FormatError(f"{where}: {n} Gaussians do not fit WebP's 16383-pixel images")
    if sh_palette is not None and not 1 <= int(sh_palette) <= 65536:
        raise FormatError(f"{where}: SH palette size must be 1..65536, got {sh_palette}")
    if isinstance(webp_effort, bool) or not isinstance(webp_effort, (int, np.integer)) or not 0 <= webp_effort <= 100:
        raise FormatError(f"{where}: webp_effort must be an integer 0..100 (libwebp's lossless effort), got {webp_effort!r}")
    # a list of candidate orders; a list of integers is one permutation (as every version read it)
    one = not isinstance(order, list) or (len(order) > 0 and all(
        isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in order))
    orders = [order] if one else list(order)
    if not orders:
        raise FormatError(f"{where}: no order given")
    perms = [sog_order(a["means"], o, where) for o in orders]

    # per-Gaussian pixel channels (in the model's order): the quantisation does not depend on the layout
    channels: dict[str, list] = {}
    v = _log_transform(a["means"].astype(np.float64))  # means: 16 bits per axis, log-transformed
    mins, maxs = v.min(0), v.max(0)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    q16 = np.clip(np.floor((v - mins) / span * 65535 + 0.5), 0, 65535).astype(np.uint32)
    channels["means_l.webp"] = [q16[:, i] & 0xFF for i in range(3)]
    channels["means_u.webp"] = [q16[:, i] >> 8 for i in range(3)]
    quat = a["quats"].astype(np.float64)  # quats: smallest three, the largest made positive
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    big = np.abs(quat).argmax(1)
    quat *= np.where(quat[np.arange(n), big] < 0, -1.0, 1.0)[:, None] * np.sqrt(2.0)
    rest = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[big]
    three = np.take_along_axis(quat, rest, 1)
    channels["quats.webp"] = [round_u8(255 * (three[:, i] * 0.5 + 0.5)) for i in range(3)] + [252 + big]
    scale_book, scale_idx = codebook_1d(a["scales"], 256, seed=seed)  # 256-entry codebooks
    channels["scales.webp"] = [scale_idx[:, i] for i in range(3)]
    dc_book, dc_idx = codebook_1d(a["sh0"].reshape(n, 3), 256, seed=seed)  # opacity in sh0's alpha
    channels["sh0.webp"] = [dc_idx[:, i] for i in range(3)] + [round_u8(sigmoid(a["opacities"]) * 255)]
    meta: dict = {"version": 2, "asset": {"generator": "splat"}, "count": int(n)}
    if antialiased:
        meta["model"] = "antialiased"
    meta.update({
        "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": ["means_l.webp", "means_u.webp"]},
        "scales": {"codebook": _short(scale_book), "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": _short(dc_book), "files": ["sh0.webp"]},
    })
    fixed: dict[str, bytes] = {}
    shN = a["shN"]
    if shN.shape[1] > 0:
        coeffs = shN.shape[1]
        k = default_palette_size(n) if sh_palette is None else int(sh_palette)
        centroids, labels = fit_palette(shN, k, seed=seed)
        P = len(centroids)
        sh_book, sh_idx = codebook_1d(centroids, 256, seed=seed)  # [P, coeffs, 3] indices
        rows = -(-P // 64)
        cen = np.zeros((rows * 64, coeffs, 4), np.uint8)
        cen[:, :, 3] = 255
        cen[:P, :, :3] = sh_idx
        fixed["shN_centroids.webp"] = _encode_webp(cen.reshape(rows, 64 * coeffs, 4), webp_effort)
        channels["shN_labels.webp"] = [labels & 0xFF, labels >> 8]
        meta["shN"] = {"count": int(P), "bands": degree_for_rest(coeffs, where), "codebook": _short(sh_book),
                       "files": ["shN_centroids.webp", "shN_labels.webp"]}

    def image(chans: list, perm: np.ndarray) -> bytes:
        img = np.zeros((H * W, 4), np.uint8)
        img[:, 3] = 255
        for c, val in enumerate(chans):
            img[:n, c] = np.asarray(val)[perm]
        return _encode_webp(img.reshape(H, W, 4), webp_effort)

    best = None
    for i, perm in enumerate(perms):
        files = {name: image(chans, perm) for name, chans in channels.items()}
        files.update(fixed)
        size = sum(len(b) for b in files.values())
        if best is None or size < best[0]:
            best = (size, i, files)
    _, index, files = best
    if chosen is not None:
        chosen.append(index)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        # meta.json deflated (its codebooks' decimals halve; the engine and splat-transform inflate it),
        # the WebP images stored (already compressed)
        # (a fixed timestamp: the same model gives the same bytes, whenever it is written)
        def entry(name: str, compress_type: int) -> zipfile.ZipInfo:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compress_type
            return info

        z.writestr(entry("meta.json", zipfile.ZIP_DEFLATED), json.dumps(meta, separators=(",", ":")))
        for name in _FILES:
            if name in files:
                z.writestr(entry(name, zipfile.ZIP_STORED), files[name])
    return buf.getvalue()


def write_sog(path: str | os.PathLike, splats: Mapping[str, Any], **options: Any) -> Path:
    """Write a PlayCanvas ``.sog`` (version 2, bundled zip) atomically; `options` as `encode_sog`."""
    return atomic_write(path, encode_sog(splats, where=str(path), **options))


# ---------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------

def _decode_webp(data: bytes, name: str, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "WEBP":
                raise FormatError(f"{where}: {name} is not a WebP image ({im.format})")
            if im.width * im.height * 4 > _MAX_BYTES:
                raise FormatError(f"{where}: {name} is too large ({im.width}x{im.height})")
            return np.asarray(im.convert("RGBA"))
    except FormatError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for corrupt data
        raise FormatError(f"{where}: {name} is not a readable WebP image ({type(e).__name__}: {e})") from None


def _field(meta: Mapping, key: str, where: str, kind=dict):
    v = meta.get(key)
    if not isinstance(v, kind):
        raise FormatError(f"{where}: meta.json has no valid '{key}' ({kind.__name__} expected)")
    return v


def _codebook(entry: Mapping, key: str, where: str) -> np.ndarray:
    """The 256-entry codebook. ``null`` entries (older writers put ``-Infinity`` there, which JSON
    cannot hold, e.g. the log scale of a flat Gaussian) become 20 below the smallest entry, as
    PlayCanvas's writer now stores them."""
    book = entry.get("codebook")
    arr = None
    if isinstance(book, list) and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                                      for v in book):
        try:
            arr = np.array([np.nan if v is None else v for v in book], dtype=np.float64)
        except OverflowError:  # an integer beyond float64
            arr = None
    if arr is None or arr.shape != (256,) or np.isinf(arr).any() or np.isnan(arr).all():
        raise FormatError(f"{where}: meta.json '{key}.codebook' must be 256 finite numbers")
    nulls = np.isnan(arr)
    if nulls.any():
        arr[nulls] = np.nanmin(arr) - 20.0
    return arr


def decode_sog(meta: Mapping, load, where: str = "<sog>") -> dict:
    """Decode a version-2 SOG from its parsed meta.json and ``load(name) -> bytes`` (the images).
    Returns the splats dict. Raises FormatError naming `where` and the problem."""
    if not isinstance(meta, Mapping):
        raise FormatError(f"{where}: meta.json is not a JSON object")
    version = meta.get("version")
    if version is None:
        raise FormatError(f"{where}: a SOG version 1 file (meta.json without 'version'); only version 2 is "
                          "read here (splat-transform converts version 1 files)")
    if version != 2:
        raise FormatError(f"{where}: unsupported SOG version {version!r} (version 2 is read)")
    n = meta.get("count")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise FormatError(f"{where}: meta.json 'count' must be a positive integer, got {n!r}")

    def img(entry: Mapping, key: str, i: int) -> np.ndarray:
        files = entry.get("files")
        if not isinstance(files, list) or len(files) <= i or not isinstance(files[i], str):
            raise FormatError(f"{where}: meta.json '{key}.files' must list {i + 1} image name(s)")
        im = _decode_webp(load(files[i]), files[i], where)
        if im.shape[0] * im.shape[1] < n:
            raise FormatError(f"{where}: {files[i]} is {im.shape[1]}x{im.shape[0]}, too small for {n} Gaussians")
        # the engine indexes every per-Gaussian image with the first one's size: they must agree
        first = sizes.setdefault("first", (files[i], im.shape[:2]))
        if im.shape[:2] != first[1]:
            raise FormatError(f"{where}: {files[i]} is {im.shape[1]}x{im.shape[0]} but {first[0]} is "
                              f"{first[1][1]}x{first[1][0]}; the per-Gaussian images must have one size")
        return im.reshape(-1, 4)[:n].astype(np.int64)

    sizes: dict = {}

    means_e = _field(meta, "means", where)
    try:
        mins = np.asarray(means_e.get("mins"), dtype=np.float64)
        maxs = np.asarray(means_e.get("maxs"), dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        mins = maxs = np.zeros(0)
    if mins.shape != (3,) or maxs.shape != (3,) or not (np.isfinite(mins).all() and np.isfinite(maxs).all()):
        raise FormatError(f"{where}: meta.json 'means.mins'/'means.maxs' must be 3 finite numbers each")
    lo, hi = img(means_e, "means", 0), img(means_e, "means", 1)
    q16 = (lo[:, :3] | (hi[:, :3] << 8)).astype(np.float64) / 65535.0
    means = _inv_log_transform(mins + (maxs - mins) * q16)

    qi = img(_field(meta, "quats", where), "quats", 0)
    tag = qi[:, 3] - 252
    bad = (tag < 0) | (tag > 3)
    if bad.any():
        raise FormatError(f"{where}: quats.webp alpha must be 252..255 (the largest component), got "
                          f"{int(qi[bad][0, 3])} at Gaussian {int(np.nonzero(bad)[0][0])}")
    three = (qi[:, :3] / 255.0 * 2 - 1) / np.sqrt(2.0)
    quats = np.zeros((n, 4))
    rest = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[tag]
    np.put_along_axis(quats, rest, three, 1)
    quats[np.arange(n), tag] = np.sqrt(np.clip(1 - (three ** 2).sum(1), 0, None))

    scales_e = _field(meta, "scales", where)
    scales = _codebook(scales_e, "scales", where)[img(scales_e, "scales", 0)[:, :3]]
    sh0_e = _field(meta, "sh0", where)
    c0 = img(sh0_e, "sh0", 0)
    sh0 = _codebook(sh0_e, "sh0", where)[c0[:, :3]].reshape(n, 1, 3)
    alpha = np.clip(c0[:, 3] / 255.0, 1e-6, 1 - 1e-6)
    opacities = np.log(alpha / (1 - alpha))

    shN = np.zeros((n, 0, 3))
    if meta.get("shN") is not None:
        e = _field(meta, "shN", where)
        bands = e.get("bands")
        if bands not in (1, 2, 3):
            raise FormatError(f"{where}: meta.json 'shN.bands' must be 1, 2 or 3, got {bands!r}")
        coeffs = (int(bands) + 1) ** 2 - 1
        count = e.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 65536:
            raise FormatError(f"{where}: meta.json 'shN.count' must be 1..65536, got {count!r}")
        book = _codebook(e, "shN", where)
        files = e.get("files")
        if not isinstance(files, list) or len(files) < 2:
            raise FormatError(f"{where}: meta.json 'shN.files' must list the centroids and labels images")
        cen = _decode_webp(load(files[0]), files[0], where)
        if cen.shape[1] != 64 * coeffs or cen.shape[0] * 64 < count:
            raise FormatError(f"{where}: {files[0]} is {cen.shape[1]}x{cen.shape[0]}; {count} entries of "
                              f"{coeffs} coefficients need {64 * coeffs}x{-(-count // 64)}")
        palette = book[cen[..., :3].astype(np.int64).reshape(-1, coeffs, 3)[:count]]  # [P, coeffs, 3]
        li = img(e, "shN", 1)
        labels = li[:, 0] | (li[:, 1] << 8)
        if (labels >= count).any():
            i = int(np.nonzero(labels >= count)[0][0])
            raise FormatError(f"{where}: {files[1]} labels Gaussian {i} with palette entry {int(labels[i])}, "
                              f"but the palette has {count}")
        shN = palette[labels]
    return to_splats(means, scales, quats, opacities, sh0, shN, where)


def read_sog(path: str | os.PathLike) -> dict:
    """Read a PlayCanvas SOG (version 2): a bundled ``.sog`` zip, or an unbundled ``meta.json``
    with its images beside it. Returns the splats dict; raises FormatError naming the file."""
    p = Path(path)
    data = read_file_bytes(p, "SOG")
    where = str(p)
    if data.startswith(b"PK"):
        try:
            z = zipfile.ZipFile(io.BytesIO(data))
            names = set(z.namelist())
        except zipfile.BadZipFile as e:
            raise FormatError(f"{where}: not a readable zip archive ({e})") from None
        except Exception as e:  # noqa: BLE001 - NotImplementedError (a newer zip version), ValueError, ...
            raise FormatError(f"{where}: not a readable zip archive ({type(e).__name__}: {e})") from None
        if "meta.json" not in names:
            raise FormatError(f"{where}: the zip has no meta.json (not a .sog bundle)")

        def load(name: str) -> bytes:
            if name not in names:
                raise FormatError(f"{where}: the zip has no {name} (named in meta.json)")
            info = z.getinfo(name)
            if info.file_size > _MAX_BYTES:
                raise FormatError(f"{where}: {name} is too large ({info.file_size} bytes)")
            try:
                return z.read(name)
            except RuntimeError as e:  # an encrypted entry: zipfile asks for a password
                raise FormatError(f"{where}: {name} in the zip is encrypted ({e})") from None
            except NotImplementedError as e:  # a compression method or encryption zipfile lacks
                raise FormatError(f"{where}: {name} in the zip is stored in a way this reader does not "
                                  f"support ({e}); .sog entries are stored or deflated") from None
            except Exception as e:  # noqa: BLE001 - zlib.error, LZMAError, BadZipFile, EOFError, ... of corrupt data
                raise FormatError(f"{where}: {name} in the zip is corrupt ({type(e).__name__}: {e})") from None
        raw = load("meta.json")
    else:
        raw = data

        def load(name: str) -> bytes:
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                raise FormatError(f"{where}: image name {name!r} in meta.json is not a plain file name")
            return read_file_bytes(p.parent / name, "WebP")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{where}: meta.json is not valid JSON ({e})") from None
    except RecursionError:
        raise FormatError(f"{where}: meta.json is nested too deeply to be a SOG meta.json") from None
    return decode_sog(meta, load, where)
