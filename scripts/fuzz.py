#!/usr/bin/env python3
"""Run the reader fuzz suite (tests/test_fuzz.py) with many examples and print, per reader, how
many inputs were tried, accepted (a valid file came out of the mutation) and refused with the
documented error, and how many failed (any other outcome). Writes the table as JSON with --json.

    python scripts/fuzz.py --examples 2000 --json bench/results/fuzz.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=500, help="hypothesis examples per reader test")
    ap.add_argument("--json", type=Path, default=None, help="write the counts here")
    args = ap.parse_args()
    os.environ["SPLAT_FUZZ_EXAMPLES"] = str(args.examples)
    sys.path.insert(0, str(ROOT / "tests"))
    import pytest

    t0 = time.perf_counter()
    rc = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not slow", str(ROOT / "tests" / "test_fuzz.py")])
    seconds = time.perf_counter() - t0
    from fuzz_harness import COUNTS

    rows = sorted(COUNTS.items())
    print(f"\n{'reader':34s} {'tried':>8s} {'accepted':>9s} {'refused':>8s} {'failed':>7s}")
    for name, c in rows:
        print(f"{name:34s} {c['tried']:8d} {c['accepted']:9d} {c['refused']:8d} {c['failed']:7d}")
    total = {k: sum(c[k] for _, c in rows) for k in ("tried", "accepted", "refused", "failed")}
    print(f"{'total':34s} {total['tried']:8d} {total['accepted']:9d} {total['refused']:8d} {total['failed']:7d}"
          f"   ({seconds:.0f} s, pytest exit {int(rc)})")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"examples_per_test": args.examples, "seconds": round(seconds, 1),
                                         "total": total, "readers": {n: dict(c) for n, c in rows}}, indent=1))
    return int(rc != 0 or total["failed"] != 0)


if __name__ == "__main__":
    sys.exit(main())
