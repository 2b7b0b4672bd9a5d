"""python -m splat.train: the same program as splat-train."""
from .cli import main

main()
