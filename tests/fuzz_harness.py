"""The fuzz harness: mutations of valid seed files (hypothesis strategies) and the one check every
reader must pass on any input.

The check (`run_reader`): the reader returns normally or raises one of its documented error types
with the file named in the message; never another exception, never a hang (an alarm after
`TIME_LIMIT_S`), never an allocation beyond `MEMORY_LIMIT` bytes as tracemalloc sees it (numpy's
and Python's allocations), never a file left behind in the folder it was given.

Counts of inputs tried, accepted and refused per reader are kept in `COUNTS`; `scripts/fuzz.py`
runs the suite with many examples and prints them.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import re
import signal
import tracemalloc
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Tuple, Type

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

TIME_LIMIT_S = 20
MEMORY_LIMIT = 1 << 30  # an image of splat.io.images.MAX_PIXELS at 4 bytes a pixel (512 MiB) plus the decoder's buffers
COUNTS: dict = defaultdict(Counter)

# a few examples per reader in the default test run; `scripts/fuzz.py` (and `-m slow` with
# SPLAT_FUZZ_EXAMPLES) runs many more
EXAMPLES = int(os.environ.get("SPLAT_FUZZ_EXAMPLES", "25"))
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 25,
                         suppress_health_check=list(HealthCheck), database=None)

ABSURD_TEXT = ("0", "-1", "1", "7", "4294967295", "4294967296", "18446744073709551615", "99999999999999999999",
               "2147483647", "nan", "1e30", "x")
ABSURD_BYTES = (b"\xff" * 8, b"\x7f\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00" * 8, b"\x80\x00\x00\x00",
                b"\x00\x00\x00\x80", b"\xff\xff\xff\xff", b"\x01\x00\x00\x00\x00\x00\x00\x01")


class Failure(AssertionError):
    pass


@contextlib.contextmanager
def _alarm(seconds: int):
    def boom(signum, frame):
        raise Failure(f"the reader ran past {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_reader(name: str, read: Callable[[], object], errors: Tuple[Type[BaseException], ...],
               must_name: Iterable[str], folder: Optional[Path] = None) -> Optional[object]:
    """Call `read()`; see the module notes. `must_name`: strings of which one must appear in an
    error's message (the file's path, or the dataset folder's)."""
    before = set(os.listdir(folder)) if folder is not None else None
    COUNTS[name]["tried"] += 1
    tracemalloc.start()
    try:
        with _alarm(TIME_LIMIT_S):
            out = read()
        COUNTS[name]["accepted"] += 1
        return out
    except errors as e:
        msg = str(e)
        if not any(s in msg for s in must_name):
            COUNTS[name]["failed"] += 1
            raise Failure(f"{name}: {type(e).__name__} does not name the file: {msg!r}") from e
        COUNTS[name]["refused"] += 1
        return None
    except Failure:
        COUNTS[name]["failed"] += 1
        raise
    except Exception as e:  # noqa: BLE001 - the point of the harness
        COUNTS[name]["failed"] += 1
        raise Failure(f"{name}: undocumented {type(e).__name__}: {e}") from e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if peak > MEMORY_LIMIT:
            COUNTS[name]["failed"] += 1
            raise Failure(f"{name}: allocated {peak / 2**20:.0f} MiB (limit {MEMORY_LIMIT / 2**20:.0f})")
        if before is not None:
            left = set(os.listdir(folder)) - before
            if left:
                COUNTS[name]["failed"] += 1
                raise Failure(f"{name}: left {sorted(left)} behind")


def run_reader_on_file(name: str, filename: str, data: bytes, read: Callable[[Path], object],
                       errors: Tuple[Type[BaseException], ...]) -> Optional[object]:
    """`run_reader` of `read(path)` on `data` written as `filename` in a fresh folder (which must
    hold nothing else afterwards); the error must name the file."""
    import tempfile

    with tempfile.TemporaryDirectory() as t:
        p = Path(t) / filename
        p.write_bytes(data)
        return run_reader(name, lambda: read(p), errors, [str(p)], Path(t))


# ------------------------------------------------------------------ mutations


def _header_end(seed: bytes) -> int:
    m = re.search(rb"end_header\r?\n", seed[:1 << 16])
    return m.end() if m else min(len(seed), 64)


@st.composite
def mutated(draw, seed: bytes, wrap: Optional[Callable[[bytes], bytes]] = None, text_header: bool = False,
            fix: Optional[Callable[[bytes], bytes]] = None) -> bytes:
    """One mutation of `seed`: truncation (at a boundary class or anywhere), bit flips, a run of
    random or absurd bytes written over it (counts, sizes), random bytes after a valid prefix,
    or (for text headers) a number in the header replaced by an absurd one. `wrap` (e.g. gzip)
    is applied after mutating the inner bytes, when given, half of the time; `fix` repairs a
    checksum so that the parser behind it is reached."""
    inner = wrap is not None and draw(st.booleans())
    data = bytearray(seed)
    h = _header_end(seed)
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "absurd", "tail", "number"
                                 if text_header else "absurd"]))
    if kind == "truncate":
        cuts = sorted({0, 1, 4, 8, 16, h - 1, h, h + 1, len(seed) // 2, len(seed) - 1} & set(range(len(seed))))
        cut = draw(st.one_of(st.sampled_from(cuts), st.integers(0, max(0, len(seed) - 1))))
        data = data[:cut]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind in ("overwrite", "absurd"):
        i = draw(st.one_of(st.integers(0, min(len(data) - 1, 96)), st.integers(0, len(data) - 1)))
        blob = draw(st.sampled_from(ABSURD_BYTES)) if kind == "absurd" else draw(st.binary(min_size=1, max_size=16))
        data[i:i + len(blob)] = blob
    elif kind == "tail":
        keep = draw(st.integers(0, min(len(seed), h + 16)))
        data = data[:keep] + bytearray(draw(st.binary(max_size=512)))
    else:  # number
        head = bytes(data[:h]).decode("latin-1")
        nums = list(re.finditer(r"(?<![\w_])\d+(?![\w_])", head))
        if nums:
            m = draw(st.sampled_from(nums))
            head = head[:m.start()] + draw(st.sampled_from(ABSURD_TEXT)) + head[m.end():]
            data = bytearray(head.encode("latin-1")) + data[h:]
    out = bytes(data)
    if fix is not None and draw(st.booleans()):
        out = fix(out)
    if inner:
        out = wrap(out)
    return out


def any_bytes(seeds: Sequence[bytes], **kw):
    """Mutations of any of `seeds`, plus plain random bytes."""
    return st.one_of(st.sampled_from(list(seeds)).flatmap(lambda s: mutated(s, **kw)), st.binary(max_size=2048))


def gzip_wrap(b: bytes) -> bytes:
    return gzip.compress(b, mtime=0)


def crc_fix(b: bytes) -> bytes:
    """Re-compute a trailing CRC-32 (the .sgi layout)."""
    if len(b) < 8:
        return b
    return b[:-4] + zlib.crc32(b[:-4]).to_bytes(4, "little")
