"""Render a trained model (same as `splat-render`); see `python render.py --help`."""
from splat.render_cli import main

if __name__ == "__main__":
    main()
