"""Checks and small readers for COLMAP model files, run before pycolmap sees them.

pycolmap (a well-kept library) decodes the model; it trusts the counts inside a ``.bin`` file
(an absurd count makes it allocate without bound or read past the end) and its text reader cuts
image names at the first space and cannot read ``nan`` coordinates. So, before pycolmap:

* every ``.bin`` file is walked record by record (``check_binary_model``): each count is checked
  against the bytes that remain before anything is allocated, names must be NUL-terminated UTF-8,
  and the file must end where its last record does. A bad file raises ``DatasetError`` naming it.
* a text model is read here for the parts pycolmap gets wrong (``read_text_model``): the whole
  image name (the rest of the line after the camera id, spaces included) and the points
  (``nan``/``inf`` read as numbers, then dropped by the loaders' one policy). pycolmap then reads a
  copy of the model with placeholder names and no points, for the cameras and poses.

Format reference: COLMAP's ``src/colmap/scene/reconstruction_io_{binary,text}.cc``.
"""
from __future__ import annotations

import functools
import struct
from pathlib import Path

import numpy as np

from .common import DatasetError

__all__ = ["check_binary_model", "read_text_model"]



@functools.cache
def _num_params() -> dict[int, int]:
    """COLMAP camera model id -> number of parameters, from the installed pycolmap (its models change
    between releases, so the table is not repeated here)."""
    import pycolmap

    out = {}
    for m in pycolmap.CameraModelId.__members__.values():
        if int(m) >= 0:
            out[int(m)] = len(pycolmap.Camera.create_from_model_id(1, m, 1.0, 1, 1).params)
    return out


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as e:
            raise DatasetError(f"{path}: cannot read: {e.strerror or e}") from None
        self.pos = 0

    def fail(self, msg: str):
        raise DatasetError(f"{self.path}: {msg} (at byte {self.pos} of {len(self.data)}); "
                           "the file is truncated or not a COLMAP binary model")

    def take(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        if self.pos + n > len(self.data):
            self.fail(f"truncated in {what}")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += n
        return out

    def count(self, what: str, min_record: int) -> int:
        (n,) = self.take("<Q", f"the number of {what}")
        if n * min_record > len(self.data) - self.pos:
            self.fail(f"claims {n} {what}, which need at least {n * min_record} bytes, but only "
                      f"{len(self.data) - self.pos} remain")
        return n

    def skip(self, nbytes: int, what: str):
        if self.pos + nbytes > len(self.data):
            self.fail(f"truncated in {what} (needs {nbytes} bytes)")
        self.pos += nbytes

    def end(self):
        if self.pos != len(self.data):
            raise DatasetError(f"{self.path}: {len(self.data) - self.pos} unexpected bytes after the last record "
                               "(the counts and the data disagree)")


def _check_cameras(path: Path) -> None:
    num_params = _num_params()
    r = _Reader(path)
    n = r.count("cameras", 24)
    for i in range(n):
        cid, model, w, h = r.take("<iiQQ", f"camera {i}")
        if model not in num_params:
            r.fail(f"camera {cid} has unknown camera model id {model}")
        if not (0 < w < 1 << 20 and 0 < h < 1 << 20):
            r.fail(f"camera {cid} has an implausible size {w}x{h}")
        r.skip(8 * num_params[model], f"the parameters of camera {cid}")
    r.end()


def _check_images(path: Path) -> None:
    r = _Reader(path)
    n = r.count("images", 64 + 1 + 8)
    for i in range(n):
        (iid,) = r.take("<I", f"image {i}")
        r.skip(56, f"the pose of image {iid}")
        r.take("<I", f"the camera id of image {iid}")
        end = r.data.find(b"\0", r.pos)
        if end < 0:
            r.fail(f"the name of image {iid} has no terminating NUL")
        try:
            r.data[r.pos:end].decode("utf-8")
        except UnicodeDecodeError:
            r.fail(f"the name of image {iid} is not UTF-8")
        r.pos = end + 1
        m = r.count(f"2D points of image {iid}", 24)
        r.skip(24 * m, f"the 2D points of image {iid}")
    r.end()


def _check_points(path: Path) -> None:
    r = _Reader(path)
    n = r.count("3D points", 43 + 8)
    data, pos, size = r.data, r.pos, len(r.data)
    for i in range(n):  # the hot loop: plain integer arithmetic, ~1 s per million points
        if pos + 51 > size:
            r.pos = pos
            r.fail(f"truncated in 3D point {i}")
        (track,) = struct.unpack_from("<Q", data, pos + 43)
        pos += 51 + 8 * track
        if pos > size:
            r.pos = size
            r.fail(f"3D point {i} claims a track of {track} observations past the end of the file")
    r.pos = pos
    r.end()


def check_binary_model(model_dir: Path) -> None:
    """Walk ``cameras.bin``, ``images.bin`` and ``points3D.bin`` (those present) and raise
    ``DatasetError`` naming the file on a count that does not fit its size, a truncated record,
    an unknown camera model, a name without its NUL or trailing bytes."""
    for name, check in (("cameras", _check_cameras), ("images", _check_images), ("points3D", _check_points)):
        p = model_dir / f"{name}.bin"
        if p.is_file():
            check(p)


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e.strerror or e}") from None
    return text.splitlines()


def read_text_model(model_dir: Path, tmp_dir: Path) -> tuple[dict[int, str], np.ndarray, np.ndarray, Path]:
    """For a text model: ``(names by image id, points [P,3] float64, colours [P,3] uint8, dir)``,
    where ``dir`` (inside ``tmp_dir``) holds the copy pycolmap should read: ``cameras.txt`` as it
    is, ``images.txt`` with placeholder names and no 2D points, an empty ``points3D.txt``."""
    img_path = model_dir / "images.txt"
    names: dict[int, str] = {}
    out_lines: list[str] = []
    lines = [ln for ln in _lines(img_path)]
    k = 0  # COLMAP writes two lines per image (the second, the 2D points, may be empty)
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if line.startswith("#") or (not line and k % 2 == 0):
            continue
        if k % 2 == 0:
            parts = line.split(None, 9)
            if len(parts) < 10:
                raise DatasetError(f"{img_path}: line {i}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, "
                                   f"got {len(parts)} fields")
            try:
                iid = int(parts[0])
            except ValueError:
                raise DatasetError(f"{img_path}: line {i}: the image id {parts[0]!r} is not an integer") from None
            if iid in names:
                raise DatasetError(f"{img_path}: line {i}: image id {iid} appears twice")
            names[iid] = parts[9].strip()
            out_lines.append(" ".join(parts[:9] + [f"image_{iid}"]))
            out_lines.append("")
        k += 1
    pts_path = model_dir / "points3D.txt"
    xyz: list[list[float]] = []
    rgb: list[list[int]] = []
    if pts_path.is_file():
        for j, line in enumerate(_lines(pts_path), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            try:
                xyz.append([float(v) for v in parts[1:4]])
                rgb.append([int(v) for v in parts[4:7]])
            except ValueError:
                raise DatasetError(f"{pts_path}: line {j}: expected POINT3D_ID X Y Z R G B ...") from None
            if len(xyz[-1]) != 3 or len(rgb[-1]) != 3 or not all(0 <= c <= 255 for c in rgb[-1]):
                raise DatasetError(f"{pts_path}: line {j}: expected POINT3D_ID X Y Z R G B (colours 0-255) ...")
    copy = tmp_dir / "model"
    copy.mkdir()
    cams = model_dir / "cameras.txt"
    (copy / "cameras.txt").write_text("\n".join(_lines(cams)) + "\n", encoding="utf-8")
    (copy / "images.txt").write_text("\n".join(out_lines) + "\n", encoding="utf-8")
    (copy / "points3D.txt").write_text("", encoding="utf-8")
    return (names, np.array(xyz, np.float64).reshape(-1, 3), np.array(rgb, np.uint8).reshape(-1, 3), copy)
