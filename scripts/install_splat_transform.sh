#!/usr/bin/env bash
# Install the pinned PlayCanvas splat-transform CLI (a reference / interop tool for
# the .sog, .compressed.ply, .splat, .spz and .glb formats) into tools/splat-transform,
# exactly as recorded in tools/splat-transform/package-lock.json.
#
# Idempotent: when the locked version is already installed it does nothing.
# Prints the absolute path of the CLI binary on stdout (diagnostics go to stderr).
# Needs node + npm and access to the npm registry (first run only).
#
# Usage: scripts/install_splat_transform.sh [--force]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/tools/splat-transform"
BIN="$DIR/node_modules/.bin/splat-transform"
PKG="@playcanvas/splat-transform"

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install_splat_transform: '$tool' not found on PATH" >&2
        exit 1
    fi
done
if [ ! -f "$DIR/package-lock.json" ]; then
    echo "install_splat_transform: missing $DIR/package-lock.json" >&2
    exit 1
fi

# Version the lock file pins, and the one installed now (empty if none).
want="$(node -e 'const l=require(process.argv[1]);process.stdout.write(l.packages["node_modules/"+process.argv[2]].version)' \
    "$DIR/package-lock.json" "$PKG")"
have="$(node -e 'try{process.stdout.write(require(process.argv[1]).version)}catch(e){}' \
    "$DIR/node_modules/$PKG/package.json")"

if [ "${1:-}" = "--force" ] || [ "$have" != "$want" ] || [ ! -x "$BIN" ]; then
    echo "install_splat_transform: installing $PKG@$want into $DIR" >&2
    # --ignore-scripts: the only install script in the tree (webgpu's postinstall) just
    # clears a macOS quarantine flag; skipping it keeps the install reproducible.
    # Node >= 22 is what the package declares; it runs on Node 20 (EBADENGINE is a warning).
    (cd "$DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
fi

if [ ! -x "$BIN" ]; then
    echo "install_splat_transform: $BIN missing after install" >&2
    exit 1
fi
echo "$BIN"
