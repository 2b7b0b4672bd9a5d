"""Train a static 3D Gaussian model (same as `splat-train`); see `python train.py --help`."""
from splat.trainer import main

if __name__ == "__main__":
    main()
