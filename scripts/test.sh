#!/usr/bin/env bash
# Set up a fresh machine and run the tests (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0          # CPU build first, so nothing pulls a CUDA torch
python3 -m pip install -q -e ".[test]"
# the viewer's browser test drives Debian's chromium + chromium-driver (about 500 MB, once)
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }
fi
# PlayCanvas splat-transform (npm, pinned by tools/splat-transform/package-lock.json): the .sog
# interoperability test runs it on our files; skipped where node/npm are missing
if command -v npm >/dev/null; then
    bash scripts/install_splat_transform.sh >/dev/null || echo "warning: splat-transform not installed" >&2
fi
python3 -m pytest -q "$@"
