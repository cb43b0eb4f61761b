"""Side-by-side timing of pyarena against the allocation it replaces.

Each cell times a loop of "allocate and drop" for pyarena and for its peer,
interleaving the two in rounds (A, B, A, B, ...) so that the machine's
phases hit both alike, and reports per-operation medians and their ratio.
"""

from __future__ import annotations

import statistics
import sys
import time

import pyarena

SIZES = (64, 1024, 16 << 10, 1 << 20)


def _label(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def _time_loop(fn, n: int, reps: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(reps):
        fn(n)
    return (time.perf_counter_ns() - t0) / reps


def run(quick: bool = False, progress: bool = True) -> dict:
    heap = pyarena.Heap()
    alloc = heap.alloc
    rounds = 5 if quick else 15
    cells = []
    for k, n in enumerate(SIZES):
        reps = max(20, (200_000 if quick else 1_000_000) // max(1, n // 64))
        reps = min(reps, 100_000 if quick else 400_000)
        a_times, b_times = [], []
        _time_loop(alloc, n, reps // 10 + 1)
        _time_loop(bytearray, n, reps // 10 + 1)
        for r in range(rounds):
            a_times.append(_time_loop(alloc, n, reps))
            b_times.append(_time_loop(bytearray, n, reps))
            if progress:
                done = (k * rounds + r + 1) / (len(SIZES) * rounds)
                sys.stderr.write(f"\rbench {done:6.1%}  {_label(n):>8}")
                sys.stderr.flush()
        a, b = statistics.median(a_times), statistics.median(b_times)
        cells.append(dict(size=n, label=_label(n), pyarena_ns=a, peer="bytearray",
                          peer_ns=b, ratio=a / b))
    if progress:
        sys.stderr.write("\r" + " " * 40 + "\r")
    heap.close()
    return dict(rounds=rounds, cells=cells)


def format_table(results: dict) -> str:
    lines = [f"allocate + drop, zeroed; medians of {results['rounds']} interleaved rounds",
             f"{'size':>8} {'Heap.alloc ns':>14} {'peer':>10} {'peer ns':>10} {'ratio':>7}"]
    for c in results["cells"]:
        lines.append(f"{c['label']:>8} {c['pyarena_ns']:14.1f} {c['peer']:>10} "
                     f"{c['peer_ns']:10.1f} {c['ratio']:7.2f}")
    lines.append("ratio = pyarena / peer (below 1: pyarena is faster)")
    return "\n".join(lines)
