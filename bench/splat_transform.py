"""Run the pinned PlayCanvas ``splat-transform`` CLI (install: scripts/install_splat_transform.sh).

It is the reference implementation for the .sog (and .compressed.ply / .splat / .spz /
.glb) formats, so benchmarks and interop checks convert through it::

    from bench import splat_transform as st
    if st.cli_path():
        seconds = st.convert("scene.ply", "scene.sog")             # -g cpu is added for you
        st.convert("scene.sog", "back.ply")
        st.convert("scene.ply", "small.sog", ["-H", "1", "-i", "3"])  # drop SH bands > 1, 3 k-means iterations

``extra_args`` go between the input and the output on the command line. Actions
(``-H``, ``-r``, ``-s``, ``-B``, ...) only take effect there (before the input they are
silently ignored), and global options (``-g``, ``-i``, ``--webp-effort``, ...) are accepted
anywhere. See docs/sog_format_notes.md for the commands and timings.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
TOOL_DIR = REPO / "tools" / "splat-transform"
_BIN = TOOL_DIR / "node_modules" / ".bin" / "splat-transform"

# Set SPLAT_TRANSFORM_CLI to use another splat-transform binary.
ENV_VAR = "SPLAT_TRANSFORM_CLI"


def cli_path() -> Optional[str]:
    """Absolute path of the splat-transform CLI, or None when it is not installed
    (or node, which runs it, is not on PATH)."""
    override = os.environ.get(ENV_VAR)
    candidate = Path(override) if override else _BIN
    if not (candidate.is_file() and os.access(candidate, os.X_OK)):
        return None
    if shutil.which("node") is None:
        return None
    return str(candidate)


def _has_gpu_option(args: Sequence[str]) -> bool:
    return any(a in ("-g", "--gpu") or a.startswith("--gpu=") for a in args)


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    extra_args: Sequence[str] = (),
    *,
    gpu: Optional[str] = "cpu",
    timeout: Optional[float] = 600.0,
) -> float:
    """Convert ``src`` to ``dst`` (formats from the file names) and return the wall-clock
    seconds the CLI took.

    The output is written into a fresh temporary directory next to ``dst`` and moved
    into place only when the CLI succeeds (for ``meta.json`` output the .webp files are
    moved first and meta.json last), so a failed run leaves no partial output and any
    existing ``dst`` untouched. ``gpu`` becomes ``-g <gpu>`` unless ``extra_args`` already
    choose a device; the default ``"cpu"`` is what a machine without a WebGPU/Vulkan
    adapter needs for .sog output with SH bands (pass ``gpu=None`` to omit it).

    Raises RuntimeError (with the tool's stderr) when the CLI is missing, fails, or runs
    longer than ``timeout`` seconds; FileNotFoundError when ``src`` does not exist.
    """
    cli = cli_path()
    if cli is None:
        raise RuntimeError(
            "splat-transform is not installed; run scripts/install_splat_transform.sh "
            f"(or set {ENV_VAR})")
    src_p = Path(src)
    if not src_p.exists():
        raise FileNotFoundError(src_p)
    dst_p = Path(dst).absolute()
    dst_p.parent.mkdir(parents=True, exist_ok=True)

    args = [str(a) for a in extra_args]
    if gpu is not None and not _has_gpu_option(args):
        args = ["-g", gpu] + args

    tmp_dir = Path(tempfile.mkdtemp(prefix=".splat-transform-", dir=dst_p.parent))
    try:
        tmp_out = tmp_dir / dst_p.name  # same name: the CLI picks the format from it
        cmd = [cli, "-q", str(src_p.absolute()), *args, str(tmp_out)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            raise RuntimeError(f"splat-transform timed out after {timeout} s: {' '.join(cmd)}\n{err}") from None
        seconds = time.perf_counter() - t0
        if proc.returncode != 0 or not tmp_out.exists():
            detail = (proc.stderr or "").strip() or (proc.stdout or "").strip()
            raise RuntimeError(
                f"splat-transform failed (exit {proc.returncode}): {' '.join(cmd)}\n{detail}")
        # Move everything it wrote (several files for meta.json / unbundled .html), main file last.
        produced = sorted(p for p in tmp_dir.iterdir() if p != tmp_out)
        for p in produced + [tmp_out]:
            os.replace(p, dst_p.parent / p.name)
        return seconds
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
