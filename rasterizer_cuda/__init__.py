"""Native kernels of splat: header-only shared math (include/), the C++/OpenMP
CPU backend (cpu/) and the CUDA backend (cuda/). Built on first use by
`splat.backends._build`; this package only locates the sources."""
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
