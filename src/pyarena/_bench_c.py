"""The C-level and NumPy-handler tables of ``python -m pyarena bench``.

- C level: the C API's malloc+free pair, and batches of 100,000 mallocs
  then frees, beside libc malloc/free and PyMem_Malloc/PyMem_Free, each
  timed in a C loop (_cbench.pyx, which reaches the heap through the public
  C-level API, as another package would). cymem, when installed, is timed
  from Python over its own API in the raw-buffer table (_bench.py): the
  library compiles nothing at run time.
- NumPy handler: NumPy arithmetic on temporaries of 1 KiB to 64 MiB with
  NumPy's default data allocator and with pyarena's (numpy_allocator), each
  run in a fresh process, alternating, with its peak RSS. Each process runs
  the workload once to warm up and reports the median of three more runs:
  the steady state of code that makes temporaries in a loop.
- Heap profiling: zeros, alloc and the C-level pair on a heap sampling at
  the default 512 KiB beside one with profiling off, interleaved, and the
  NumPy handler workload likewise in alternating processes.
- Clearing ahead of time: large zeros on a heap with prezero on and on one
  with it off, beside numpy.zeros, interleaved three ways: dropped
  untouched, touched once per 4 KiB page, and in a loop where each
  temporary is followed by a reduction over another array (there only the
  zeros() call is timed: the clear should have happened in the background).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import numpy as np

import pyarena
from pyarena import _cbench
from pyarena._bench import Progress, _fmt_ns, _label

C_SIZES = (16, 64, 256, 1 << 10, 8 << 10)
C_KINDS = ("pyarena", "libc", "pymem")
WORKLOAD_SIZES = (1 << 10, 16 << 10, 256 << 10, 4 << 20, 64 << 20)
BATCH = 100_000

def run_c_level(quick: bool = False, progress: bool = True) -> dict:
    """ns per malloc+free pair and per allocation in a batch, each
    allocator in turn within every round (interleaved), medians."""
    rounds = 3 if quick else 11
    pair_reps = 100_000 if quick else 400_000
    kinds = list(C_KINDS)
    heap = pyarena.Heap()
    prog = Progress(len(C_SIZES), progress)

    def pair(kind, size, reps):
        return _cbench.pair_ns(kind, size, reps, heap)

    def batch(kind, size):
        return _cbench.batch_ns(kind, size, BATCH, heap)

    rows = []
    for size in C_SIZES:
        prog.step(f"C level {_label(size)}")
        pairs = {k: [] for k in kinds}
        batches = {k: [] for k in kinds}
        for k in kinds:                       # warm up: first-touch faults
            pair(k, size, 1000)
            batch(k, size)
        for _ in range(rounds):
            for k in kinds:
                pairs[k].append(pair(k, size, pair_reps))
                batches[k].append(batch(k, size))
        rows.append(dict(size=size, label=_label(size),
                         pair={k: statistics.median(v) for k, v in pairs.items()},
                         batch={k: statistics.median(v) for k, v in batches.items()}))
    prog.close()
    heap.close()
    return dict(rounds=rounds, kinds=kinds, rows=rows, note=None)


WORKLOAD = """
import json, resource, sys, time
import numpy as np
import pyarena
sizes, reps = {sizes!r}, {reps}
def work():
    s = 0.0
    for nbytes in sizes:
        n = nbytes // 8
        a = np.ones(n)
        b = np.full(n, 0.5)
        for _ in range(max(1, reps * (1 << 20) // max(nbytes, 1 << 16) // 4)):
            c = a * 2.0 + b
            d = np.sqrt(c)
            e = (d - a) * b
            s += float(e[-1])
    return s
def timed():
    # One run to warm up (first touch of every page, for both allocators),
    # then the median of three: the steady state of a loop of temporaries.
    work()
    ts = []
    for _ in range(3):
        t0 = time.perf_counter(); work(); ts.append(time.perf_counter() - t0)
    return sorted(ts)[1]
if sys.argv[1].startswith("pyarena"):
    rate = 0 if sys.argv[1] == "pyarena-noprofile" else pyarena.MEM_PROFILE_RATE
    with pyarena.numpy_allocator(pyarena.Heap(profile_rate=rate)):
        t = timed()
else:
    t = timed()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across
# fork and exec, VmHWM belongs to this process's own address space.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps(dict(seconds=t, maxrss_kib=hwm)))
"""


def _workload_once(kind: str, reps: int) -> dict:
    r = subprocess.run([sys.executable, "-c", WORKLOAD.format(sizes=WORKLOAD_SIZES, reps=reps),
                        kind], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def run_numpy_handler(quick: bool = False, progress: bool = True) -> dict:
    rounds = 3 if quick else 7
    reps = 4 if quick else 16
    prog = Progress(rounds, progress)
    default, ours = [], []
    for _ in range(rounds):
        prog.step("NumPy handler workload")
        default.append(_workload_once("numpy", reps))
        ours.append(_workload_once("pyarena", reps))
    prog.close()

    def med(rs, key):
        return statistics.median(r[key] for r in rs)

    return dict(rounds=rounds, sizes=[_label(s) for s in WORKLOAD_SIZES],
                numpy_s=med(default, "seconds"), pyarena_s=med(ours, "seconds"),
                numpy_rss_kib=med(default, "maxrss_kib"),
                pyarena_rss_kib=med(ours, "maxrss_kib"))


def run_profiling(quick: bool = False, progress: bool = True) -> dict:
    """Heap profiling's cost: the same operations on a heap sampling at
    Go's default rate (512 KiB) and on one with profiling off, interleaved
    in one process; and the NumPy handler workload in fresh processes,
    alternating."""
    from pyarena._bench import _cell, _drop_loop

    rounds = 5 if quick else 11
    budget = 3e6 if quick else 20e6
    on, off = pyarena.Heap(), pyarena.Heap(profile_rate=0)
    u8 = np.dtype(np.uint8)
    cells = []
    ops = [(f"zeros {_label(n)}", _drop_loop(lambda n, z=on.zeros: z(n, u8), n),
            _drop_loop(lambda n, z=off.zeros: z(n, u8), n))
           for n in (64, 1 << 10, 16 << 10, 256 << 10, 4 << 20)]
    ops.append(("alloc 64 B", _drop_loop(on.alloc, 64), _drop_loop(off.alloc, 64)))
    for n in (64, 1 << 10):
        ops.append((f"C-level pair {_label(n)}",
                    lambda reps, n=n: _cbench.pair_ns("pyarena", n, reps, on) * reps,
                    lambda reps, n=n: _cbench.pair_ns("pyarena", n, reps, off) * reps))
    prog = Progress(len(ops) + (3 if quick else 7), progress)
    for name, run_on, run_off in ops:
        prog.step(f"profiling {name}")
        a, b = _cell(run_on, run_off, rounds, budget)
        cells.append(dict(op=name, on_ns=a, off_ns=b, ratio=a / b))
    reps = 4 if quick else 16
    t_on, t_off = [], []
    for _ in range(3 if quick else 7):
        prog.step("profiling NumPy handler workload")
        t_on.append(_workload_once("pyarena", reps)["seconds"])
        t_off.append(_workload_once("pyarena-noprofile", reps)["seconds"])
    prog.close()
    on.close()
    off.close()
    return dict(rounds=rounds, rate=pyarena.MEM_PROFILE_RATE, cells=cells,
                handler_on_s=statistics.median(t_on), handler_off_s=statistics.median(t_off))


def format_profiling(pr: dict) -> list[str]:
    out = ["", f"heap profiling at {pr['rate'] // 1024} KiB (the default) vs off, "
           f"medians of {pr['rounds']} interleaved rounds:",
           f"{'operation':>20} | {'on':>9} {'off':>9} {'on/off':>6}"]
    for c in pr["cells"]:
        out.append(f"{c['op']:>20} | {_fmt_ns(c['on_ns']):>9} {_fmt_ns(c['off_ns']):>9}"
                   f" {c['ratio']:6.3f}")
    out.append(f"{'NumPy handler work':>20} | {pr['handler_on_s']:8.3f}s {pr['handler_off_s']:8.3f}s"
               f" {pr['handler_on_s'] / pr['handler_off_s']:6.3f}")
    return out


def format_tables(results: dict) -> list[str]:
    out = []
    cl = results.get("c_level")
    if cl:
        kinds = cl["kinds"]
        head = " ".join(f"{k:>8}" for k in kinds)
        out += ["", "C level, ns: malloc+free pair | per allocation, batch of 100,000 mallocs "
                "then frees",
                f"{'size':>8} | {head} {'pa/libc':>7} | {head} {'pa/libc':>7}"]
        for r in cl["rows"]:
            p = " ".join(f"{r['pair'][k]:8.1f}" for k in kinds)
            b = " ".join(f"{r['batch'][k]:8.1f}" for k in kinds)
            out.append(f"{r['label']:>8} | {p} {r['pair']['pyarena'] / r['pair']['libc']:7.2f}"
                       f" | {b} {r['batch']['pyarena'] / r['batch']['libc']:7.2f}")
        if cl.get("note"):
            out.append(f"({cl['note']})")
    nh = results.get("numpy_handler")
    if nh:
        out += ["", f"NumPy arithmetic on temporaries of {', '.join(nh['sizes'])}; "
                f"a fresh process each, median of {nh['rounds']}:",
                f"  time: NumPy's allocator {nh['numpy_s']:.3f} s, pyarena's {nh['pyarena_s']:.3f} s"
                f" ({nh['numpy_s'] / nh['pyarena_s']:.2f}x faster)",
                f"  peak RSS: {nh['numpy_rss_kib'] / 1024:.0f} MiB vs "
                f"{nh['pyarena_rss_kib'] / 1024:.0f} MiB (ratio "
                f"{nh['pyarena_rss_kib'] / nh['numpy_rss_kib']:.2f})"]
    if results.get("arena"):
        out += format_arena(results["arena"])
    if results.get("profiling"):
        out += format_profiling(results["profiling"])
    if results.get("prezero"):
        out += format_prezero(results["prezero"])
    return out


def _compute_loop(make, n: int, other: np.ndarray, passes: int):
    """Each iteration: a temporary of n bytes, written once per 4 KiB page
    and dropped, then a reduction over other, passes times; the time is the
    make() call alone."""
    import time

    def run(reps: int) -> int:
        spent = 0
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            a = make(n)
            spent += time.perf_counter_ns() - t0
            a[::4096] = 1
            del a
            for _ in range(passes):
                other.sum()
        return spent
    return run


def run_prezero(quick: bool = False, progress: bool = True) -> dict:
    """zeros on a heap with prezero on, one with it off, and numpy.zeros,
    interleaved (on, off, numpy in every round), medians per operation."""
    from pyarena._bench import _calibrate, _drop_loop, _touch_loop

    rounds = 5 if quick else 11
    budget = 3e6 if quick else 20e6
    u8 = np.dtype(np.uint8)
    on, off = pyarena.Heap(prezero=True), pyarena.Heap(prezero=False)
    zon, zoff, znp = on.zeros, off.zeros, np.zeros
    makers = (lambda n: zon(n, u8), lambda n: zoff(n, u8), lambda n: znp(n, u8))
    cases = [("alloc+drop", 64 << 20, _drop_loop), ("alloc+touch+drop", 64 << 20, _touch_loop)]
    cases += [("alloc+touch+drop", n, _touch_loop) for n in (256 << 10, 1 << 20, 4 << 20)]
    cases += [("zeros() between reductions", n, None) for n in (4 << 20, 64 << 20)]
    prog = Progress(len(cases), progress)
    rows = []
    for loop, n, kind in cases:
        prog.step(f"prezero {loop} {_label(n)}")
        if kind is None:
            other = np.ones(n // 8)        # a reduction over n bytes of float64
            runs = [_compute_loop(m, n, other, 2) for m in makers]
        else:
            runs = [kind(m, n) for m in makers]
        # At least 8 in a row: a tight loop's own steady state, not one
        # iteration after the other sides' rounds gave the worker time.
        reps = max(8, min(_calibrate(r, budget) for r in runs))
        if kind is None:
            reps = min(reps, 50)
        ts = [[], [], []]
        for _ in range(rounds):
            for i, r in enumerate(runs):
                ts[i].append(r(reps) / reps)
        on_ns, off_ns, np_ns = (statistics.median(x) for x in ts)
        rows.append(dict(loop=loop, size=n, label=_label(n), on_ns=on_ns, off_ns=off_ns,
                         numpy_ns=np_ns, on_ratio=on_ns / np_ns, off_ratio=off_ns / np_ns))
    prog.close()
    st = on.stats()
    on.close()
    off.close()
    return dict(rounds=rounds, rows=rows, cleared_ahead=st.cleared_ahead, cleared_by_caller=st.cleared_by_caller,
                clear_skipped=st.clear_skipped)


def format_prezero(pz: dict) -> list[str]:
    out = ["", "large zeros: Heap(prezero=True) and Heap(prezero=False) vs numpy.zeros, "
           f"interleaved, medians of {pz['rounds']} (ratio below 1: pyarena faster)",
           f"{'loop':>28} {'size':>7} | {'on':>9} {'off':>9} {'numpy':>9} | "
           f"{'on/np':>6} {'off/np':>6}"]
    for r in pz["rows"]:
        out.append(f"{r['loop']:>28} {r['label']:>7} | {_fmt_ns(r['on_ns']):>9}"
                   f" {_fmt_ns(r['off_ns']):>9} {_fmt_ns(r['numpy_ns']):>9} |"
                   f" {r['on_ratio']:6.3f} {r['off_ratio']:6.3f}")
    out.append(f"(the prezero heap's large zeroed bytes: cleared ahead "
               f"{pz['cleared_ahead'] >> 20} MiB, by callers {pz['cleared_by_caller'] >> 20} MiB,"
               f" known zero {pz['clear_skipped'] >> 20} MiB; the worker runs only while a core"
               " is idle)")
    return out


def run_arena(quick: bool = False, progress: bool = True) -> dict:
    """Arena values beside heap values and NumPy: ns per zeros(8) and per
    new(struct) (allocate and keep, in batches of 10,000, the arena freed
    after each batch), and the time to drop 100,000 values: an arena's
    (the values, then free()) against a heap's."""
    import ctypes
    import time

    import numpy as np

    class Point(ctypes.Structure):
        _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double), ("id", ctypes.c_int64)]

    rounds = 5 if quick else 11
    batch = 10_000
    u8 = np.dtype(np.uint8)
    heap = pyarena.Heap()
    prog = Progress(rounds, progress)

    def timed(make):
        t0 = time.perf_counter_ns()
        keep = [make() for _ in range(batch)]
        t = time.perf_counter_ns() - t0
        del keep
        return t / batch

    res = {k: [] for k in ("arena_zeros", "heap_zeros", "numpy_zeros", "arena_new",
                           "heap_new", "drop_arena", "drop_heap")}
    for _ in range(rounds):
        prog.step("arena")
        a = pyarena.Arena(heap=heap)
        # Every callable bound beforehand, alike.
        az, hz, nz, an, hn = a.zeros, heap.zeros, np.zeros, a.new, heap.new
        res["arena_zeros"].append(timed(lambda: az(8, u8)))
        res["heap_zeros"].append(timed(lambda: hz(8, u8)))
        res["numpy_zeros"].append(timed(lambda: nz(8, u8)))
        res["arena_new"].append(timed(lambda: an(Point)))
        res["heap_new"].append(timed(lambda: hn(Point)))
        a.free()
        a = pyarena.Arena(heap=heap)
        vals = [a.zeros(8, u8) for _ in range(100_000)]
        t0 = time.perf_counter_ns()
        del vals
        a.free()
        res["drop_arena"].append(time.perf_counter_ns() - t0)
        vals = [heap.zeros(8, u8) for _ in range(100_000)]
        t0 = time.perf_counter_ns()
        del vals
        res["drop_heap"].append(time.perf_counter_ns() - t0)
    prog.close()
    heap.close()
    return dict(rounds=rounds, **{k: statistics.median(v) for k, v in res.items()})


def format_arena(ar: dict) -> list[str]:
    return ["", f"arenas, median of {ar['rounds']} (ns per value, kept):",
            f"  zeros(8): Arena {ar['arena_zeros']:.0f}, Heap {ar['heap_zeros']:.0f}, "
            f"numpy {ar['numpy_zeros']:.0f}  (Arena/numpy {ar['arena_zeros'] / ar['numpy_zeros']:.2f})",
            f"  new(struct of 24 B): Arena {ar['arena_new']:.0f}, Heap {ar['heap_new']:.0f}",
            f"  dropping 100,000 values: arena (values + free()) {ar['drop_arena'] / 1e6:.2f} ms, "
            f"heap {ar['drop_heap'] / 1e6:.2f} ms ({ar['drop_arena'] / ar['drop_heap']:.2f}x)"]
