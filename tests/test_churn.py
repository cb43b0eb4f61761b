"""Long-running churn and interpreter shutdown, each in a subprocess.

test_churn_heap_sys_bounded runs 1,000,000 allocations of mixed sizes
against a bounded random working set and checks that the heap's mapped
memory (heap_sys) stays bounded and shows no growth trend. It prints its
figures as one JSON line (run pytest with -s to see them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyarena

MiB = 1 << 20


from support import pyarena_env as _env


def _run(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                          env=_env(), capture_output=True, text=True, timeout=timeout)


CHURN = r"""
import json, random, resource, sys, time
import pyarena

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
RING = 2000
SAMPLE = 1000            # steps between heap_sys samples

heap = pyarena.Heap()
rnd = random.Random(12345)
getrandbits = rnd.getrandbits
randint = rnd.randint

def size():
    k = getrandbits(16)
    if k < 19661:        # 30%: tiny
        return 1 + k % 15
    if k < 55705:        # 55%: small, 16..1024
        return randint(16, 1024)
    if k < 65470:        # ~15%: 1 KiB..64 KiB
        return randint(1025, 65536)
    return 1 << 20       # ~0.1%: 1 MiB

ring = [None] * RING
stamps = [0] * RING
live_bytes = 0           # requested bytes
live_slots = 0           # bytes occupied (slot / pages)
peak_bytes = peak_slots = 0
samples = []
t0 = time.perf_counter()
alloc = heap.alloc
corrupt = 0
for step in range(STEPS):
    i = getrandbits(11) % RING if step >= RING else step
    old = ring[i]
    if old is not None:
        mv = memoryview(old)
        if old.nbytes and (mv[0] != stamps[i] or mv[-1] != stamps[i]):
            corrupt += 1
        live_bytes -= old.nbytes
        live_slots -= old.slot_size
        mv = old = ring[i] = None
    n = size()
    b = alloc(n, zero=(step & 1) == 0)
    s = step & 255
    mv = memoryview(b)
    mv[0] = s
    mv[-1] = s
    mv = None
    ring[i] = b
    stamps[i] = s
    b = None
    live_bytes += n
    live_slots += ring[i].slot_size      # a tiny value counts 16
    if live_slots > peak_slots:
        peak_slots = live_slots
    if live_bytes > peak_bytes:
        peak_bytes = live_bytes
    if step % SAMPLE == 0:
        samples.append(heap.stats().heap_sys)
elapsed = time.perf_counter() - t0
st = heap.stats()
samples.append(st.heap_sys)
tenth = samples[len(samples) // 10]
print(json.dumps(dict(
    steps=STEPS,
    elapsed_s=round(elapsed, 2),
    allocs_per_s=round(STEPS / elapsed),
    heap_sys_max=max(samples),
    heap_sys_at_10pct=tenth,
    heap_sys_final=st.heap_sys,
    heap_inuse_final=st.heap_inuse,
    heap_released_final=st.heap_released,
    heap_alloc_final=st.heap_alloc,
    peak_live_bytes=peak_bytes,
    peak_live_slot_bytes=peak_slots,
    heap_objects_final=st.heap_objects,
    live_in_ring=sum(1 for x in ring if x is not None and x.nbytes),
    mallocs=st.mallocs,
    frees=st.frees,
    sweeps=st.sweeps,
    metadata_sys=st.metadata_sys,
    max_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    corrupt=corrupt,
)))
"""


@pytest.fixture(scope="module")
def churn_figures():
    proc = _run(CHURN, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\nchurn figures:", json.dumps(figures, indent=1))
    return figures


def test_churn_heap_sys_bounded(churn_figures):
    f = churn_figures
    assert f["steps"] == 1_000_000
    assert f["corrupt"] == 0, "stamped bytes of live blocks changed"
    assert f["heap_objects_final"] == f["live_in_ring"]
    assert f["mallocs"] - f["frees"] == f["heap_objects_final"]
    bound = 4 * f["peak_live_slot_bytes"] + 64 * MiB
    assert f["heap_sys_max"] <= bound, (
        f"heap_sys reached {f['heap_sys_max'] / MiB:.1f} MiB, bound "
        f"{bound / MiB:.1f} MiB (peak live slots "
        f"{f['peak_live_slot_bytes'] / MiB:.1f} MiB)")


def test_churn_no_growth_trend(churn_figures):
    f = churn_figures
    assert f["heap_sys_final"] <= 2 * f["heap_sys_at_10pct"], (
        f"heap_sys grew from {f['heap_sys_at_10pct'] / MiB:.1f} MiB at 10% of "
        f"the run to {f['heap_sys_final'] / MiB:.1f} MiB")


SHUTDOWN_CASES = {
    "default_heap_block_at_exit": """
        import pyarena
        keep = pyarena.alloc(100)
        tiny = pyarena.alloc(3)
        big = pyarena.alloc(5 << 20)
        memoryview(keep)[:] = b"x" * 100
        mv = memoryview(big)
    """,
    "closed_heap_with_live_blocks": """
        import pyarena
        h = pyarena.Heap()
        blocks = [h.alloc(n) for n in (1, 7, 15, 16, 64, 1000, 40000, 1 << 20)]
        for b in blocks:
            memoryview(b)[:] = b"\\x5a" * b.nbytes
        h.close()
        assert h.closed
        try:
            h.alloc(8)
        except ValueError:
            pass
        else:
            raise SystemExit("alloc from a closed heap did not raise")
        for b in blocks:
            assert bytes(b) == b"\\x5a" * b.nbytes
        views = [memoryview(b) for b in blocks]
        del h                      # only the blocks keep the heap now
    """,
    "closed_heap_with_block_in_cycle": """
        import pyarena
        with pyarena.Heap() as h:
            b = h.alloc(4096)
        cycle = [b]
        cycle.append(cycle)
        del b, h
    """,
    "closed_heap_dies_before_exit": """
        import gc, pyarena
        h = pyarena.Heap()
        b = h.alloc(300)
        h.close()
        del h
        memoryview(b)[:] = b"y" * 300
        del b                       # last block: the heap is unmapped now
        gc.collect()
        h2 = pyarena.Heap()
        keep = h2.alloc(12)
    """,
    "numpy_view_at_exit": """
        import pyarena
        try:
            import numpy as np
        except ImportError:
            raise SystemExit(0)
        h = pyarena.Heap()
        a = np.frombuffer(h.alloc(8 * 1000), dtype=np.float64)
        a[:] = 1.5
        h.close()
        del h
    """,
    "thread_ended_and_daemon_alive": """
        import threading, time, pyarena
        h = pyarena.Heap()
        held = []
        def work():
            for i in range(1000):
                held.append(h.alloc(i % 200 + 1))
        t = threading.Thread(target=work)
        t.start(); t.join()
        def forever():
            local = []
            while True:
                try:
                    local.append(h.alloc(64))
                except ValueError:         # closed: keep the blocks, spin
                    time.sleep(0.001)
                if len(local) > 100:
                    local.clear()
        threading.Thread(target=forever, daemon=True).start()
        time.sleep(0.2)
        h.close()
    """,
    "blocks_on_late_finalized_objects": """
        import atexit, builtins, sys, pyarena
        h = pyarena.Heap()
        sys.keep_block = h.alloc(40)            # sys is torn down late
        builtins.keep_block = pyarena.alloc(2000)
        pyarena.keep_block = h.alloc(5)
        h.close()
        def at_exit():
            b = pyarena.alloc(123)
            memoryview(b)[:] = b"z" * 123
            sys.keep_block2 = b
        atexit.register(at_exit)
    """,
    "thread_local_block_of_ended_thread": """
        import threading, pyarena
        h = pyarena.Heap()
        tl = threading.local()
        out = []
        def work():
            tl.b = h.alloc(48)                  # dies with the thread
            out.append(h.alloc(9))
        t = threading.Thread(target=work)
        t.start(); t.join()
        tl.b = h.alloc(48)
        h.close()
        del h
    """,
}


@pytest.mark.parametrize("case", sorted(SHUTDOWN_CASES))
def test_shutdown_with_live_blocks(case):
    proc = _run(textwrap.dedent(SHUTDOWN_CASES[case]) + "\nprint('done')\n", timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert proc.stdout.strip().endswith("done")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
