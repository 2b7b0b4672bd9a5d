#!/usr/bin/env bash
# Set up a fresh machine and run the tests (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0          # CPU build first, so nothing pulls a CUDA torch
python3 -m pip install -q -e ".[test]"
python3 -m pytest -q "$@"
