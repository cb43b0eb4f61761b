"""``python -m pyarena bench``: pyarena beside the allocation it replaces.

Every cell times one loop for pyarena and for its peer in the same run:
rounds alternate A, B, A, B, ... so that the shared machine's fast and slow
phases hit both alike, each round times a batch of operations, and the cell
reports the median per-operation time of each side and their ratio.

Tables:

- zeros: ``pyarena.zeros(n bytes, uint8)`` against ``numpy.zeros``, for
  "allocate and drop" and for "allocate, write one byte per 4 KiB page,
  drop" (the second pays for page faults where memory is fresh).
- blocks: ``Heap.alloc`` against the raw-buffer peers: ``bytearray``, and
  cymem's ``Address`` when cymem is installed.
- C level, NumPy handler, arenas, heap profiling on against off,
  clearing ahead of time on against off: see _bench_c.py.
- pressure: the reference-cycle loop of issue 13 (each step makes a cycle
  around a fresh array of ones and drops it, Python's collector at its
  default thresholds), once under ``numpy_allocator(Heap(gogc=100))`` and
  once under NumPy's own allocator, each in a fresh interpreter: the peak
  memory each holds (pyarena's peak heap_sys and peak RSS; NumPy's peak
  RSS) and their ratio. Not a timing: memory is what the pacer changes.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

import pyarena

ZERO_SIZES = (8, 64, 1 << 10, 16 << 10, 256 << 10, 4 << 20, 64 << 20)
BLOCK_SIZES = (64, 1 << 10, 1 << 20)
PAGE = 4096


def _label(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def _drop_loop(make, n: int):
    def run(reps: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(reps):
            make(n)
        return time.perf_counter_ns() - t0
    return run


def _touch_loop(make, n: int):
    def run(reps: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(reps):
            a = make(n)
            a[::PAGE] = 1
            del a
        return time.perf_counter_ns() - t0
    return run


def _calibrate(run, budget_ns: float) -> int:
    """Repetitions of run that take about budget_ns."""
    reps = 1
    while True:
        t = run(reps)
        if t >= budget_ns / 4 or reps >= 1 << 20:
            return max(1, int(reps * budget_ns / max(t, 1)))
        reps *= 4


def _cell(run_a, run_b, rounds: int, budget_ns: float) -> tuple[float, float]:
    reps = min(_calibrate(run_a, budget_ns), _calibrate(run_b, budget_ns))
    a, b = [], []
    for _ in range(rounds):
        a.append(run_a(reps) / reps)
        b.append(run_b(reps) / reps)
    return statistics.median(a), statistics.median(b)


class Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled

    def step(self, what: str) -> None:
        self.done += 1
        if self.enabled:
            sys.stderr.write(f"\rbench {self.done:3d}/{self.total}  {what:<32}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


def run(quick: bool = False, progress: bool = True) -> dict:
    """Run every cell; return the results as plain data (see --json)."""
    rounds = 5 if quick else 11
    budget = 3e6 if quick else 20e6
    heap = pyarena.Heap()
    zeros = heap.zeros
    np_zeros = np.zeros           # bound alike: no attribute lookup on either side
    u8 = np.dtype(np.uint8)

    def pa(n):
        return zeros(n, u8)

    def npz(n):
        return np_zeros(n, u8)

    cells = []
    prog = Progress(2 * len(ZERO_SIZES) + len(BLOCK_SIZES), progress)
    for loop_name, loop in (("alloc+drop", _drop_loop), ("alloc+touch+drop", _touch_loop)):
        for n in ZERO_SIZES:
            prog.step(f"zeros {loop_name} {_label(n)}")
            a, b = _cell(loop(pa, n), loop(npz, n), rounds, budget)
            cells.append(dict(table="zeros", loop=loop_name, size=n, label=_label(n),
                              pyarena_ns=a, peer="numpy.zeros", peer_ns=b, ratio=a / b))
    alloc = heap.alloc
    peers = [("bytearray", bytearray)]
    try:
        from cymem.cymem import Address    # cymem's zeroed buffer, from Python
        peers.append(("cymem.Address", lambda n: Address(1, n)))
    except ImportError:
        pass
    for n in BLOCK_SIZES:
        prog.step(f"blocks {_label(n)}")
        for name, peer in peers:
            a, b = _cell(_drop_loop(alloc, n), _drop_loop(peer, n), rounds, budget)
            cells.append(dict(table="blocks", loop="alloc+drop", size=n, label=_label(n),
                              pyarena_ns=a, peer=name, peer_ns=b, ratio=a / b))
    prog.close()
    st = heap.stats()
    heap.close()
    from pyarena import _bench_c
    return dict(quick=quick, rounds=rounds, numpy=np.__version__, pyarena=pyarena.__version__,
                heap_sys=st.heap_sys, cells=cells,
                c_level=_bench_c.run_c_level(quick, progress),
                numpy_handler=_bench_c.run_numpy_handler(quick, progress),
                arena=_bench_c.run_arena(quick, progress),
                profiling=_bench_c.run_profiling(quick, progress),
                prezero=_bench_c.run_prezero(quick, progress),
                pressure=run_pressure(quick, progress))


def _fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} us"
    return f"{ns:.0f} ns"


def format_table(results: dict) -> str:
    out = [f"pyarena {results['pyarena']} beside numpy {results['numpy']}: medians of "
           f"{results['rounds']} interleaved rounds; ratio = pyarena / peer "
           "(below 1: pyarena faster)", ""]
    zero = [c for c in results["cells"] if c["table"] == "zeros"]
    out.append("zeroed arrays, uint8: pyarena.zeros vs numpy.zeros")
    out.append(f"{'size':>8} | {'alloc+drop':^27} | {'alloc+touch+drop':^27}")
    out.append(f"{'':>8} | {'pyarena':>9} {'numpy':>9} {'ratio':>5} |"
               f" {'pyarena':>9} {'numpy':>9} {'ratio':>5}")
    for n in ZERO_SIZES:
        row = [c for c in zero if c["size"] == n]
        d = next(c for c in row if c["loop"] == "alloc+drop")
        t = next(c for c in row if c["loop"] == "alloc+touch+drop")
        out.append(f"{_label(n):>8} | {_fmt_ns(d['pyarena_ns']):>9} {_fmt_ns(d['peer_ns']):>9}"
                   f" {d['ratio']:5.2f} | {_fmt_ns(t['pyarena_ns']):>9}"
                   f" {_fmt_ns(t['peer_ns']):>9} {t['ratio']:5.2f}")
    out.append("")
    out.append("raw buffers: Heap.alloc vs bytearray and (when installed) cymem.Address, "
               "all zeroed, alloc+drop")
    out.append(f"{'size':>8} | {'peer':>14} | {'pyarena':>9} {'peer':>9} {'ratio':>5}")
    for c in results["cells"]:
        if c["table"] == "blocks":
            out.append(f"{c['label']:>8} | {c['peer']:>14} | {_fmt_ns(c['pyarena_ns']):>9}"
                       f" {_fmt_ns(c['peer_ns']):>9} {c['ratio']:5.2f}")
    from pyarena import _bench_c
    out.extend(_bench_c.format_tables(results))
    if "pressure" in results:
        out.extend(format_pressure(results["pressure"]))
    return "\n".join(out)


# ---------------------------------------------------------------------------
# pressure: the reference-cycle loop, pyarena's pacer against NumPy's own
# allocator. The full run makes 48 steps of 64 MiB (at most 3 GiB resident
# under NumPy's allocator, which is the point); --quick 48 of 16 MiB.

PRESSURE_STEPS = 48

_CYCLE_CHILD = """
import gc, json, resource, sys, time
import numpy as np
step, steps, which = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
class Node:
    pass
def loop(sample):
    for i in range(steps):
        n = Node()
        n.self = n
        n.a = np.ones(step // 8)       # written: resident memory
        del n
        sample()
peak = [0]
t0 = time.perf_counter()
if which == "pyarena":
    import pyarena
    h = pyarena.Heap(gogc=100)
    def sample():
        peak[0] = max(peak[0], h.stats().heap_sys)
    with pyarena.numpy_allocator(h):
        loop(sample)
    triggered = h.stats().gc_triggered
else:
    loop(lambda: None)
    triggered = 0
print(json.dumps(dict(heap_sys=peak[0], maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10,
                      gc_triggered=triggered, seconds=time.perf_counter() - t0)))
"""


def _cycle_child(step: int, steps: int, which: str) -> dict:
    import json
    import os
    import subprocess
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyarena.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.pop("PYARENA_GOGC", None)
    env.pop("PYARENA_MEMLIMIT", None)
    p = subprocess.run([sys.executable, "-c", _CYCLE_CHILD, str(step), str(steps), which],
                       env=env, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_pressure(quick: bool = False, progress: bool = True) -> dict:
    """The cycle loop under both allocators; plain data (see --json)."""
    step = (16 if quick else 64) << 20
    prog = Progress(2, progress)
    prog.step("pressure: pyarena gogc=100")
    pa = _cycle_child(step, PRESSURE_STEPS, "pyarena")
    prog.step("pressure: numpy's allocator")
    npy = _cycle_child(step, PRESSURE_STEPS, "numpy")
    prog.close()
    return dict(step=step, steps=PRESSURE_STEPS, pyarena_heap_sys=pa["heap_sys"],
                pyarena_maxrss=pa["maxrss"], gc_triggered=pa["gc_triggered"],
                numpy_maxrss=npy["maxrss"], ratio=npy["maxrss"] / max(pa["heap_sys"], 1))


def format_pressure(r: dict) -> list[str]:
    mib = 1 << 20
    return ["", f"reference cycles: {r['steps']} steps, each a cycle around {_label(r['step'])} "
            "of ones, gc at its default thresholds",
            f"  pyarena Heap(gogc=100): peak heap_sys {r['pyarena_heap_sys'] / mib:.0f} MiB, "
            f"peak RSS {r['pyarena_maxrss'] / mib:.0f} MiB, {r['gc_triggered']} paced collections",
            f"  numpy's allocator:      peak RSS {r['numpy_maxrss'] / mib:.0f} MiB",
            f"  ratio (numpy peak RSS / pyarena peak heap_sys): {r['ratio']:.1f}"]
