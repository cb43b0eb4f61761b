"""How much of a NumPy workload's allocation traffic NumPy's data handler sees.

A NEP 49 handler (pyarena's, or any) serves array data only. This tool runs
each workload of ``python -m pyarena bench --peers`` (pyarena/_bench_peers.py)
once to warm up and then once more counted, in a fresh process with
tools/malloc_count.c preloaded, and reports for that counted pass:

- the calls and bytes that reach pyarena's handler (its heap's mallocs and
  total_alloc; total_alloc counts slot sizes, a little above the bytes asked);
- the calls and bytes that still go to malloc, calloc, realloc and memalign,
  by the shared object that asked (OpenBLAS, NumPy's LAPACK and FFT
  wrappers, NumPy's core outside the handler, the interpreter);
- the handler's share of all calls and of all bytes;
- as a cross-check, the same pass under NumPy's default handler, whose
  array data goes to malloc from _multiarray_umath (less NumPy's cache of
  small blocks).

Run it from the top of the checkout, after building in place:

    PYTHONPATH=src python tools/traffic.py                 # every workload
    PYTHONPATH=src python tools/traffic.py linalg fft      # some
    PYTHONPATH=src python tools/traffic.py --json          # machine-readable
    PYTHONPATH=src python tools/traffic.py --scale 0.25    # shorter passes

It compiles malloc_count.c with ``cc`` into ~/.cache/pyarena-traffic/ the
first time. The counted pass unwinds the stack at every allocation, so it
runs many times slower than the workload does: the counts are exact, its
times mean nothing. OPENBLAS_NUM_THREADS=1 as in the bench (the interposer
unwinds one thread at a time).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "malloc_count.c")


def build_counter() -> str:
    """The path of malloc_count.so, compiled now if this source is new."""
    with open(SOURCE, "rb") as f:
        key = hashlib.sha1(f.read()).hexdigest()[:12]
    base = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                        "pyarena-traffic")
    os.makedirs(base, exist_ok=True)
    so = os.path.join(base, f"malloc_count-{key}.so")
    if not os.path.exists(so):
        tmp = so + f".{os.getpid()}.tmp"
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", tmp, SOURCE, "-ldl"], check=True)
        os.replace(tmp, so)
    return so


def child(workload: str, handler: str, scale: float, counter: str) -> dict:
    """In the preloaded process: warm up, count one pass, report."""
    import pyarena
    from pyarena._bench_peers import WORKLOADS
    from pyarena._numpy_allocator import current_handler_name

    mc = ctypes.CDLL(counter)          # already mapped by LD_PRELOAD: the same copy
    if handler == "pyarena":
        pyarena.install_numpy_allocator()
    work = WORKLOADS[workload][0](scale)
    work()
    heap = pyarena.default_heap()
    before = heap.stats()
    with tempfile.NamedTemporaryFile("r", suffix=".tsv") as out:
        mc.mc_reset()
        mc.mc_enable(1)
        work()
        mc.mc_enable(0)
        after = heap.stats()
        if mc.mc_report(out.name.encode()) != 0:
            raise OSError("mc_report could not write its file")
        lines = [line.rstrip("\n").split("\t") for line in out]
    malloc = [dict(kind=k, caller=c, calls=int(n), bytes=int(b)) for k, c, n, b in lines]
    return dict(workload=workload, handler=current_handler_name(),
                handler_calls=after.mallocs - before.mallocs if handler == "pyarena" else None,
                handler_bytes=(after.total_alloc - before.total_alloc
                               if handler == "pyarena" else None),
                malloc=malloc)


def spawn(workload: str, handler: str, scale: float, counter: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith("MALLOC_")}
    env.update(LD_PRELOAD=counter, OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", workload,
                        "--handler", handler, "--scale", repr(scale), "--counter", counter],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{workload}/{handler} exited {r.returncode}: {r.stderr[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def by_caller(rows: list[dict]) -> dict[str, list[int]]:
    """caller -> [calls, bytes], over every kind of call."""
    out: dict[str, list[int]] = {}
    for r in rows:
        acc = out.setdefault(r["caller"], [0, 0])
        acc[0] += r["calls"]
        acc[1] += r["bytes"]
    return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


def short(caller: str) -> str:
    """A caller's library name without its ABI tag, hash and version:
    _umath_linalg.cpython-311-x86_64-linux-gnu.so -> _umath_linalg."""
    return re.sub(r"(\.cpython-.*|-[0-9a-f]{8}\.so.*|\.so.*)$", "", caller)


def summarize(workload: str, ours: dict, default: dict) -> dict:
    rest = by_caller(ours["malloc"])
    rest_calls = sum(v[0] for v in rest.values())
    rest_bytes = sum(v[1] for v in rest.values())
    hc, hb = ours["handler_calls"], ours["handler_bytes"]
    dflt = by_caller(default["malloc"])
    return dict(workload=workload, handler_calls=hc, handler_bytes=hb,
                malloc_calls=rest_calls, malloc_bytes=rest_bytes,
                call_fraction=hc / max(1, hc + rest_calls),
                byte_fraction=hb / max(1, hb + rest_bytes),
                rest_by_caller={short(c): v for c, v in rest.items()},
                default_malloc_calls=sum(v[0] for v in dflt.values()),
                default_malloc_bytes=sum(v[1] for v in dflt.values()),
                default_by_caller={short(c): v for c, v in dflt.items()})


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


def report(rows: list[dict]) -> str:
    out = ["Allocation traffic of one steady-state pass (after a warm-up), pyarena's handler",
           "installed: what the handler serves, and what still goes to malloc and whose it is.", "",
           f"{'workload':<12} {'handler calls':>13} {'bytes':>11} | {'malloc calls':>12}"
           f" {'bytes':>11} | {'handler share: calls':>20} {'bytes':>6}"]
    for r in rows:
        out.append(f"{r['workload']:<12} {r['handler_calls']:13,d} {_mib(r['handler_bytes']):>11} |"
                   f" {r['malloc_calls']:12,d} {_mib(r['malloc_bytes']):>11} |"
                   f" {100 * r['call_fraction']:19.1f}% {100 * r['byte_fraction']:5.1f}%")
    out.append("")
    out.append("the rest, by caller (calls, bytes), largest first:")
    for r in rows:
        parts = [f"{c} {v[0]:,d} / {_mib(v[1])}" for c, v in list(r["rest_by_caller"].items())[:6]]
        out.append(f"  {r['workload']:<12} " + "; ".join(parts))
    out.append("")
    out.append("cross-check, NumPy's default handler: all malloc traffic of the same pass")
    for r in rows:
        parts = [f"{c} {v[0]:,d} / {_mib(v[1])}"
                 for c, v in list(r["default_by_caller"].items())[:4]]
        out.append(f"  {r['workload']:<12} {r['default_malloc_calls']:,d} calls, "
                   f"{_mib(r['default_malloc_bytes'])}: " + "; ".join(parts))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workloads", nargs="*", help="default: every workload of bench --peers")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--handler", default="pyarena", help=argparse.SUPPRESS)
    p.add_argument("--counter", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.handler, args.scale, args.counter)))
        return 0
    from pyarena._bench_peers import WORKLOADS
    names = args.workloads or list(WORKLOADS)
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    counter = build_counter()
    rows = []
    for w in names:
        if not args.json:
            print(f"counting {w} ...", file=sys.stderr)
        rows.append(summarize(w, spawn(w, "pyarena", args.scale, counter),
                              spawn(w, "numpy", args.scale, counter)))
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
