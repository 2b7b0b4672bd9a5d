"""What every model-file reader and writer shares: the splats-dict layout and its
checks, the error type, whole-file reading and atomic writing.

Kept apart from ``splat.io``'s ``__init__`` so that the format modules import it
and ``__init__`` imports them, with no cycle.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["SH_C0", "SPLAT_KEYS", "FormatError", "read_file_bytes", "torch_load_bytes", "torch_load_file",
           "atomic_write", "degree_for_rest", "sh_degree", "num_gaussians", "validate_splats", "to_splats", "degenerate_quats",
           "identity_for_degenerate_quats", "MIN_QUAT_NORM2", "sigmoid", "round_u8", "sh_axis_signs"]

SH_C0 = 0.28209479177387814
SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")
# number of higher-order SH coefficients (K - 1) for degrees 0..3
_REST_TO_DEGREE = {0: 0, 3: 1, 8: 2, 15: 3}


class FormatError(ValueError):
    """A file (or a model about to be written) is not valid for its format."""


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The opacity an opacity logit stands for, in float64 (what every 8-bit and float writer stores)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def sh_axis_signs(x: float, y: float, z: float) -> np.ndarray:
    """[15] the sign each higher-order SH basis function (degrees 1-3, gsplat order) takes under the
    axis sign change (x, y, z) of the coordinates (each +-1): what changing a file's axes does to
    the SH coefficients (spz's RUB, glTF's y-up)."""
    return np.array([y, z, x, x * y, y * z, 1, x * z, 1, y, x * y * z, y, z, x, z, x], np.float32)


def round_u8(x: np.ndarray) -> np.ndarray:
    """Bytes rounded to nearest (``floor(x + 0.5)``), clamped to 0..255."""
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def read_file_bytes(path: str | os.PathLike, what: str) -> bytes:
    """Read a whole input file, with a FormatError for the usual mistakes."""
    p = Path(path)
    if not p.exists():
        raise FormatError(f"{p}: no such file")
    if p.is_dir():
        raise FormatError(f"{p}: is a directory, not a {what} file")
    if not p.is_file():
        raise FormatError(f"{p}: not a regular file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise FormatError(f"{p}: cannot read: {e.strerror or e}") from e
    if not data:
        raise FormatError(f"{p}: file is empty (0 bytes)")
    return data


def torch_load_bytes(data: bytes, where: str, what: str = "checkpoint") -> Any:
    """``torch.load`` of the bytes of a file written by ``torch.save`` (a zip archive, the only
    format torch has written since 1.6), with ``weights_only=True`` (no arbitrary code is
    unpickled) and from memory: a corrupt length inside the file then cannot make a file read
    preallocate gigabytes. Raises FormatError naming `where` for anything torch cannot read."""
    import io

    if not data.startswith(b"PK\x03\x04"):
        raise FormatError(f"{where}: not a torch {what} (torch.save writes a zip archive; this file does not "
                          "start with one)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and unsupported-global errors of every kind
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"{where}: not a readable torch {what} ({type(e).__name__}: {msg})") from None


def torch_load_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """`torch_load_bytes` of a file (FormatError for a missing, empty or unreadable file too)."""
    return torch_load_bytes(read_file_bytes(path, what), str(Path(path)), what)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory and
    ``os.replace``; on any failure the temporary file is removed and an existing
    ``path`` is left untouched."""
    p = Path(path)
    parent = p.parent
    if not parent.is_dir():
        raise FormatError(f"{p}: output directory {parent} does not exist")
    if p.is_dir():
        raise FormatError(f"{p}: is a directory")
    mode = (p.stat().st_mode & 0o7777) if p.exists() else _default_mode()
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as e:  # e.g. a read-only directory: name the output, not the temporary name
        raise type(e)(e.errno, f"cannot create a file in {parent} ({e.strerror or e})", str(p)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p


def degree_for_rest(n_rest: int, where: str) -> int:
    """SH degree for a number of higher-order coefficients per channel (K - 1)."""
    if n_rest not in _REST_TO_DEGREE:
        raise FormatError(
            f"{where}: {n_rest} higher-order SH coefficients per channel; "
            "expected 0, 3, 8 or 15 (SH degree 0-3)"
        )
    return _REST_TO_DEGREE[n_rest]


def sh_degree(splats: Mapping[str, Any]) -> int:
    """SH degree of a splats dict (0 when ``shN`` is absent or empty)."""
    shN = splats.get("shN")
    if shN is None:
        return 0
    return degree_for_rest(int(shN.shape[1]), "shN")


def num_gaussians(splats: Mapping[str, Any]) -> int:
    return int(splats["means"].shape[0])


def validate_splats(splats: Mapping[str, Any], where: str = "splats") -> dict[str, np.ndarray]:
    """Check a splats dict and return float32 C-contiguous numpy copies of its
    arrays (``sh0`` [N,1,3], ``shN`` [N,K-1,3]). Raises FormatError naming the
    problem. ``shN`` may be missing (degree 0); other keys are ignored."""
    if not isinstance(splats, Mapping):
        raise FormatError(f"{where}: expected a dict of tensors, got {type(splats).__name__}")
    missing = [k for k in SPLAT_KEYS[:5] if k not in splats]
    if missing:
        raise FormatError(f"{where}: missing keys {missing} (need {list(SPLAT_KEYS)})")
    out: dict[str, np.ndarray] = {}
    for k in SPLAT_KEYS:
        v = splats.get(k)
        if v is None:
            continue
        if isinstance(v, torch.Tensor):
            if not (v.is_floating_point()):
                raise FormatError(f"{where}: '{k}' must be a floating-point tensor, got {v.dtype}")
            a = v.detach().to("cpu", torch.float32).contiguous().numpy()
        else:
            a = np.asarray(v)
            if a.dtype.kind != "f":
                raise FormatError(f"{where}: '{k}' must be floating point, got {a.dtype}")
            a = np.ascontiguousarray(a, dtype=np.float32)
        out[k] = a
    n = out["means"].shape[0] if out["means"].ndim >= 1 else -1
    if "shN" not in out:
        out["shN"] = np.zeros((max(n, 0), 0, 3), np.float32)
    want = {
        "means": (n, 3),
        "scales": (n, 3),
        "quats": (n, 4),
        "opacities": (n,),
        "sh0": (n, 1, 3),
    }
    for k, shape in want.items():
        if tuple(out[k].shape) != shape:
            raise FormatError(
                f"{where}: '{k}' has shape {list(out[k].shape)}, expected {list(shape)}"
                + (" (means must be [N,3])" if k == "means" else "")
            )
    shN = out["shN"]
    if shN.ndim != 3 or shN.shape[0] != n or shN.shape[2] != 3:
        raise FormatError(f"{where}: 'shN' has shape {list(shN.shape)}, expected [{n}, K-1, 3]")
    degree_for_rest(shN.shape[1], f"{where}: 'shN'")
    if n == 0:
        raise FormatError(f"{where}: empty model (0 Gaussians); nothing to write")
    for k in SPLAT_KEYS:
        bad = ~np.isfinite(out[k])
        if bad.any():
            rows = np.unique(np.nonzero(bad.reshape(n, -1))[0])
            raise FormatError(
                f"{where}: '{k}' has {int(bad.sum())} non-finite values (NaN/inf) in "
                f"{len(rows)} Gaussians, first at index {int(rows[0])}"
            )
    out["quats"] = identity_for_degenerate_quats(out["quats"])
    return out


MIN_QUAT_NORM2 = 1e-24  # the rasterizer's threshold too (torch_ref imports it; splat_math.h kMinQuatNorm2)


def degenerate_quats(quats: np.ndarray) -> np.ndarray:
    """Boolean [N]: quaternions the rasterizer renders as the identity rotation
    (``|q|^2 < 1e-24``: all zeros, or below torch's normalisation epsilon)."""
    q = np.asarray(quats, dtype=np.float32)
    return (q * q).sum(-1) < np.float32(MIN_QUAT_NORM2)


def identity_for_degenerate_quats(quats: np.ndarray, where: str | None = None) -> np.ndarray:
    """The one policy for degenerate (e.g. all-zero) quaternions, shared by every reader,
    writer and backend: such a Gaussian has the identity rotation, which is what gsplat
    renders (``F.normalize`` leaves zeros, whose rotation matrix is the identity). Returns
    ``quats`` with those rows set to (1, 0, 0, 0); with ``where`` (a file), warns naming it,
    the count and the first index."""
    bad = degenerate_quats(quats)
    if not bad.any():
        return quats
    idx = np.nonzero(bad)[0]
    if where is not None:
        warnings.warn(f"{where}: {len(idx)} Gaussians have a zero (degenerate) quaternion, first at index "
                      f"{int(idx[0])}; they get the identity rotation, as gsplat renders them", stacklevel=3)
    out = np.array(quats, dtype=np.float32, copy=True)
    out[idx] = (1.0, 0.0, 0.0, 0.0)
    return out


def to_splats(
    means: np.ndarray,
    scales: np.ndarray,
    quats: np.ndarray,
    opacities: np.ndarray,
    sh0: np.ndarray,
    shN: np.ndarray,
    where: str,
) -> dict[str, torch.Tensor]:
    """Build the splats dict (float32 CPU tensors) from decoded arrays, after
    checking that every value is finite."""
    arrs = dict(means=means, scales=scales, quats=quats, opacities=opacities, sh0=sh0, shN=shN)
    out: dict[str, torch.Tensor] = {}
    for k, a in arrs.items():
        # a fresh, writable, C-ordered copy: a field of a structured array read from the file's bytes
        # is read-only, and for one Gaussian numpy keeps its odd strides, which torch refuses
        a = np.array(a, dtype=np.float32, order="C", copy=True)
        bad = ~np.isfinite(a)
        if bad.any():
            rows = np.nonzero(bad.reshape(len(a), -1).any(1))[0] if a.ndim else np.zeros(1, int)
            raise FormatError(f"{where}: '{k}' decodes to {int(bad.sum())} non-finite values (NaN/inf), "
                              f"first at Gaussian {int(rows[0])}")
        if k == "quats":
            a = identity_for_degenerate_quats(a, where)
        out[k] = torch.from_numpy(np.ascontiguousarray(a))
    if out["means"].shape[0] == 0:
        raise FormatError(f"{where}: file contains no Gaussians")
    return out
