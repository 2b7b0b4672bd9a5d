"""Train a Gaussian model (same as `splat-train`); see `python train.py --help`."""
from splat.train import main

if __name__ == "__main__":
    main()
