#!/usr/bin/env python3
"""Mutation testing of the native math (rasterizer_cuda/include/splat_math.h): each mutant changes
one constant, one comparison or one sign of a gradient term, rebuilds the CPU backend (a private
build cache) and runs the tests that exercise it; a mutant no test fails "survives" and shows a
missing test. The header is restored after every mutant (and on interrupt).

    python scripts/mutate_native.py --json bench/results/mutation_native.json

Operators:
  const  a float literal v -> v * 1.01 (0.99f -> 0.9999f, 1e-4f -> 1.01e-4f, ...)
  cmp    < <-> <=, > <-> >= (a boundary moved; not in loop headers, where it indexes out of bounds)
  sign   + <-> - between two operands inside a gradient (*_vjp, *_backward*) function
Lines that only declare, comment or preprocess are skipped; `--every K` keeps every K-th mutant
(in file order) to fit a time budget.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "rasterizer_cuda" / "include" / "splat_math.h"
TESTS = ["tests/test_backends.py", "tests/test_edge_cases.py", "tests/test_reference_gradcheck.py",
         "tests/test_user_inputs.py::test_zero_quaternions_render_as_identity_on_every_backend",
         "tests/test_native_mutants.py", "tests/test_gsplat_agreement.py"]
FLOAT = re.compile(r"(?<![\w.])(\d+\.\d*(?:e-?\d+)?|\d*\.\d+(?:e-?\d+)?|\d+e-?\d+)f\b")
CMP = re.compile(r"(?<![<>=!])(<=|>=|<|>)(?![<>=])")
SIGN = re.compile(r"(?<=[\w\)\]]) ([+-]) (?=[\w\(])")


def _code(line: str) -> str:
    return line.split("//", 1)[0]


def mutants(text: str):
    """(line number, operator, description, mutated text) for every mutant of `text`."""
    lines = text.split("\n")
    out = []
    grad_fn = False
    for i, line in enumerate(lines):
        code = _code(line)
        if re.match(r"\s*SPLAT_HD\b", code):
            grad_fn = bool(re.search(r"_vjp\b|backward", code))
        if not code.strip() or code.lstrip().startswith("#") or "template" in code or "#include" in code:
            continue

        def emit(op, desc, new_line):
            mutated = lines[:i] + [new_line + line[len(code):]] + lines[i + 1:]
            out.append((i + 1, op, desc, "\n".join(mutated)))

        for m in FLOAT.finditer(code):
            v = float(m.group(1))
            if v == 0.0:
                continue
            new = f"{v * 1.01:.9g}"
            if "." not in new and "e" not in new:
                new += ".0"
            emit("const", f"{m.group(0)} -> {new}f", code[:m.start()] + new + "f" + code[m.end():])
        for m in CMP.finditer(code if "for (" not in code else ""):  # loop bounds: out-of-bounds UB, not a test gap
            if "<<" in code[max(0, m.start() - 1):m.end() + 1] or "->" in code[m.start() - 1:m.end()]:
                continue
            flip = {"<": "<=", "<=": "<", ">": ">=", ">=": ">"}[m.group(1)]
            emit("cmp", f"{m.group(1)} -> {flip}", code[:m.start()] + flip + code[m.end():])
        if grad_fn:
            for m in SIGN.finditer(code):
                flip = "-" if m.group(1) == "+" else "+"
                emit("sign", f"{m.group(1)} -> {flip}", code[:m.start()] + f" {flip} " + code[m.end():])
    return out


def run_tests(env) -> tuple[bool, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not cuda",
                        *TESTS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    return r.returncode == 0, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every", type=int, default=1, help="keep every K-th mutant")
    ap.add_argument("--only", choices=["const", "cmp", "sign"], default=None)
    ap.add_argument("--lines", default=None, help="only mutants on these lines, e.g. 30-40,620-690")
    ap.add_argument("--survivors-of", type=Path, default=None,
                    help="re-run only the mutants that survived in this earlier --json report (after adding tests)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    original = HEADER.read_text()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))  # so that `finally` restores the header
    allm = mutants(original)
    if args.only:
        allm = [m for m in allm if m[1] == args.only]
    if args.lines:
        keep = set()
        for part in args.lines.split(","):
            a, _, b = part.partition("-")
            keep |= set(range(int(a), int(b or a) + 1))
        allm = [m for m in allm if m[0] in keep]
    allm = allm[::args.every]
    earlier = None
    if args.survivors_of is not None:
        earlier = json.loads(args.survivors_of.read_text())
        want = {(r["source"], r["change"]) for r in earlier["mutants"] if r["status"] == "SURVIVED"}
        allm = [m for m in allm if (_code(original.split("\n")[m[0] - 1]).strip(), m[2]) in want]
    env = dict(os.environ, SPLAT_CACHE_DIR=tempfile.mkdtemp(prefix="splat-mutants-"), OMP_NUM_THREADS="2")
    ok, secs = run_tests(env)
    if not ok:
        print("the tests fail on the unmutated source; fix that first", file=sys.stderr)
        return 2
    print(f"{len(allm)} mutants; unmutated run {secs:.0f} s", flush=True)
    results = []
    try:
        for k, (line, op, desc, text) in enumerate(allm):
            HEADER.write_text(text)
            passed, secs = run_tests(env)
            status = "SURVIVED" if passed else "killed"
            src = _code(original.split("\n")[line - 1]).strip()
            results.append(dict(line=line, op=op, change=desc, source=src, status=status, seconds=round(secs, 1)))
            print(f"[{k + 1}/{len(allm)}] line {line:4d} {op:5s} {desc:28s} {status:8s} ({secs:.0f} s)  {src[:70]}",
                  flush=True)
    finally:
        HEADER.write_text(original)
    if earlier is not None:  # the earlier report with these mutants' new outcomes
        new = {(r["source"], r["change"]): r for r in results}
        current = {_code(ln).strip() for ln in original.split("\n")}
        results = [new.get((r["source"], r["change"]),
                           r if r["source"] in current else {**r, "status": "source changed"})
                   for r in earlier["mutants"]]
    survived = [r for r in results if r["status"] == "SURVIVED"]
    by_op = {op: (sum(r["op"] == op for r in results), sum(r["op"] == op for r in survived))
             for op in ("const", "cmp", "sign")}
    print(f"\n{len(results)} mutants, {len(survived)} survived: " +
          ", ".join(f"{op} {n - s}/{n} killed" for op, (n, s) in by_op.items()))
    for r in survived:
        print(f"  line {r['line']}: {r['change']}: {r['source']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"file": str(HEADER.relative_to(ROOT)), "tests": TESTS, "mutants": results,
                                         "survived": len(survived), "total": len(results)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
