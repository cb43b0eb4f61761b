"""Instructions per operation on pyarena's fast paths, by callgrind.

Each operation runs in a loop of N1 and then N2 iterations, each in a
fresh `valgrind --tool=callgrind` process; (I(N2) - I(N1)) / (N2 - N1) is
its cost with the interpreter's start-up and the loop's setup subtracted.
Instruction counts are repeatable on a noisy machine where times are not.
OPENBLAS_NUM_THREADS=1 keeps BLAS threads out of the count.

    python tools/fastpath_instructions.py            # every operation
    python tools/fastpath_instructions.py zeros clevel16
    python tools/fastpath_instructions.py --json

Python-level loops (`for _ in range(n): f(1)`) include the loop's own
bytecode and the call; compare them only with each other (pyarena.zeros
against numpy.zeros in the same run). The C-level pair is timed in C
(pyarena._cbench), so it is the malloc+free pair alone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

N1, N2 = 20000, 120000

SETUP = "import numpy as np, pyarena, ctypes\n"
OPS = {
    # name: (setup, loop body as a Python statement over `n`)
    "numpy.zeros": ("z = np.zeros; f8 = np.float64", "for _ in range(n): z(1, f8)"),
    "numpy.empty": ("z = np.empty; f8 = np.float64", "for _ in range(n): z(1, f8)"),
    "pyarena.zeros": ("z = pyarena.zeros; f8 = np.float64", "for _ in range(n): z(1, f8)"),
    "pyarena.empty": ("z = pyarena.empty; f8 = np.float64", "for _ in range(n): z(1, f8)"),
    "Heap.zeros": ("z = pyarena.Heap().zeros; f8 = np.float64", "for _ in range(n): z(1, f8)"),
    "Heap.zeros8u8": ("z = pyarena.Heap().zeros; u8 = np.dtype(np.uint8)", "for _ in range(n): z(8, u8)"),
    "numpy.zeros8u8": ("z = np.zeros; u8 = np.dtype(np.uint8)", "for _ in range(n): z(8, u8)"),
    "Heap.alloc64": ("a = pyarena.Heap().alloc", "for _ in range(n): a(64)"),
    "Heap.alloc64-debug": ("a = pyarena.Heap(debug=True, profile_rate=0).alloc",
                           "for _ in range(n): a(64)"),
    "Heap.zeros-debug": ("z = pyarena.Heap(debug=True, profile_rate=0).zeros; f8 = np.float64",
                         "for _ in range(n): z(1, f8)"),
    "bytearray64": ("a = bytearray", "for _ in range(n): a(64)"),
    "loop": ("f8 = np.float64", "for _ in range(n): pass"),
    "call": ("f = id; f8 = np.float64", "for _ in range(n): f(f8)"),
}
for size in (16, 64, 1024, 8192):
    for kind in ("pyarena", "libc", "pymem"):
        OPS[f"clevel{size}.{kind}"] = (
            "from pyarena import _cbench; h = pyarena.Heap()",
            f"_cbench.pair_ns({kind!r}, {size}, n, h)")
    OPS[f"clevel{size}.pyarena-debug"] = (
        "from pyarena import _cbench; h = pyarena.Heap(debug=True, profile_rate=0)",
        f"_cbench.pair_ns('pyarena', {size}, n, h)")
    OPS[f"clevel{size}.pyarena-noprofile"] = (
        "from pyarena import _cbench; h = pyarena.Heap(profile_rate=0)",
        f"_cbench.pair_ns('pyarena', {size}, n, h)")


def count(setup: str, body: str, n: int) -> int:
    # The loop runs in a function, so that its names are fast locals: a
    # module-level loop would look each name up in a dict every iteration.
    lines = "\n".join("    " + l for l in (setup + "\n" + body).splitlines())
    code = SETUP + f"def run(n):\n{lines}\nrun({n})\n"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
    r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                        sys.executable, "-c", code], capture_output=True, text=True, env=env)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"callgrind failed for {body!r}:\n{r.stderr[-2000:]}")
    return int(m.group(1))


def per_op(name: str) -> float:
    setup, body = OPS[name]
    return (count(setup, body, N2) - count(setup, body, N1)) / (N2 - N1)


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    names = [a for a in argv if not a.startswith("--")] or list(OPS)
    wanted = [n for n in OPS if any(n == w or n.startswith(w) for w in names)]
    out = {}
    for name in wanted:
        out[name] = per_op(name)
        if not as_json:
            print(f"{name:24s} {out[name]:8.1f}", flush=True)
    if as_json:
        json.dump(out, sys.stdout, indent=2)
        print()
    elif "loop" in out:
        print("\n(Python loops include the loop itself: 'loop' above.)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
