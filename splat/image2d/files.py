"""Reading a 2D image model from either file the toolkit writes: the lossless ``.pt``
of ``Image2D.save`` or the ``.sgi`` codec file (told apart by the codec's magic)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from splat.io.common import FormatError, torch_load_bytes
from splat.models.image2d import Image2D

from .codec import MAGIC, decode_bytes

__all__ = ["load_image2d"]


def load_image2d(path: Union[str, Path]) -> Image2D:
    """Load a model written by `Image2D.save` (.pt) or a codec file (.sgi).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for
    anything else (not a model, a truncated or corrupt codec file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    if data[:len(MAGIC)] == MAGIC:
        return decode_bytes(data, where=str(path))
    try:
        sd = torch_load_bytes(data, str(path), "2D image model")
    except FormatError as e:
        raise ValueError(f"{path}: not a splat 2D image model (.pt from `splat-image fit`) or codec file (.sgi): "
                         f"{str(e).removeprefix(f'{path}: ')}") from None
    try:
        return Image2D.from_state_dict(sd, where=str(path))
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a readable pickle of the wrong shape
        raise ValueError(f"{path}: not a splat 2D image model ({type(e).__name__}: {e})") from None
