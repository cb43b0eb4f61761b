"""Memory under pressure: the GOGC pacer, the memory limit, the hard cap,
the background scavenger and metadata huge pages (_mgcpacer.pyx, issue 13).

Anything that maps hundreds of MiB runs in a subprocess, so that the test
process keeps its address space and its collector settings."""

import gc
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import pyarena
from pyarena import Heap, Arena, numpy_allocator, _testing
from pyarena import _mgcpacer

from support import pyarena_env

MiB = 1 << 20


def run(code, timeout=120, **env):
    """Run code in a fresh interpreter; its last stdout line, parsed as JSON."""
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=pyarena_env(**env),
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def identities(st):
    assert st.heap_sys == st.heap_inuse + st.heap_idle
    assert st.heap_released <= st.heap_idle
    assert st.heap_objects == st.mallocs - st.frees
    assert sum(c.mallocs for c in st.by_size) == st.mallocs
    assert sum(c.frees for c in st.by_size) == st.frees


# -- options -------------------------------------------------------------------

def test_options_are_checked():
    for bad in (1.5, "100", True):
        with pytest.raises(TypeError):
            Heap(gogc=bad)
        with pytest.raises(TypeError):
            Heap(memory_limit=bad)
        with pytest.raises(TypeError):
            Heap(max_bytes=bad)
    with pytest.raises(ValueError):
        Heap(gogc=-1)
    with pytest.raises(ValueError):
        Heap(memory_limit=-1)
    with pytest.raises(ValueError):
        Heap(max_bytes=4096)           # less than a page
    with pytest.raises(TypeError):
        Heap(scavenge=1)
    h = Heap()
    assert (h.gogc, h.memory_limit, h.max_bytes) == (None, None, None)
    st = h.stats()
    assert (st.gc_triggered, st.next_gc, st.cap_refused) == (0, 0, 0)
    with pytest.raises(TypeError):
        h.set_memory_limit("1")
    with pytest.raises(ValueError):
        h.set_memory_limit(-5)
    assert h.set_memory_limit(64 * MiB) is None
    assert h.set_memory_limit(None) == 64 * MiB
    assert h.set_memory_limit(32 * MiB) is None
    assert h.memory_limit == 32 * MiB
    h.close()
    with pytest.raises(ValueError):
        h.set_memory_limit(1)


def test_gogc_is_fixed_once_the_heap_allocates():
    h = Heap(gogc=50)
    assert h.gogc == 50
    assert h.stats().next_gc == 2 * MiB            # Go's heapMinimum, 4 MiB * 50 / 100
    h.alloc(64)
    with pytest.raises(ValueError):
        h.__init__(gogc=100)
    h.__init__(gogc=50)                             # unchanged: fine
    h.close()


def test_environment_sets_the_default_heap():
    got = run("""
        import json, pyarena
        h = pyarena.default_heap()
        print(json.dumps([h.gogc, h.memory_limit]))
    """, PYARENA_GOGC="50", PYARENA_MEMLIMIT="256MiB")
    assert got == [50, 256 * MiB]
    got = run("""
        import json, pyarena
        h = pyarena.default_heap()
        print(json.dumps([h.gogc, h.memory_limit]))
    """, PYARENA_GOGC="off", PYARENA_MEMLIMIT="12345")
    assert got == [None, 12345]
    p = subprocess.run([sys.executable, "-c", "import pyarena; pyarena.default_heap()"],
                       env=pyarena_env(PYARENA_GOGC="lots"), capture_output=True, text=True)
    assert p.returncode != 0 and "PYARENA_GOGC" in p.stderr


# -- the pacer -----------------------------------------------------------------

CYCLE_LOOP = """
    import gc, json, numpy as np, pyarena
    gc.disable()                       # only the pacer collects
    class Node:
        pass
    h = pyarena.Heap({opts})
    step = 64 << 20
    peak = 0
    with pyarena.numpy_allocator(h):
        for i in range({steps}):
            n = Node()
            n.self = n                 # a reference cycle around the array
            n.a = np.empty(step // 8)
            del n
            peak = max(peak, h.stats().heap_sys)
    st = h.stats()
    print(json.dumps(dict(peak=peak, triggered=st.gc_triggered, next_gc=st.next_gc,
                          alloc=st.heap_alloc)))
"""


def test_pacer_bounds_the_cycle_loop():
    got = run(CYCLE_LOOP.format(opts="gogc=100", steps=200))
    live = 64 * MiB
    assert got["triggered"] > 0                     # the pacer's collections ran
    assert got["peak"] <= 3 * live + 4 * MiB, got
    assert got["next_gc"] >= 4 * MiB


def test_without_pacer_the_cycle_loop_grows():
    # The same loop without gogc holds every array: what the pacer prevents.
    got = run(CYCLE_LOOP.format(opts="", steps=12))
    assert got["triggered"] == 0
    assert got["peak"] >= 12 * 64 * MiB


def test_pacer_collects_from_a_thread_allocating_without_gil():
    # A thread allocating through the C-level API requests the collection;
    # the main thread runs it.
    import weakref

    class Box:
        pass
    h = Heap(gogc=100)
    gcwas = gc.isenabled()
    gc.disable()
    try:
        box = Box()
        box.self = box
        ref = weakref.ref(box)
        del box
        t = threading.Thread(target=lambda: _testing.capi_free(
            h, _testing.capi_malloc(h, 8 * MiB, 2, nogil=True)))
        t.start()
        t.join()
        for _ in range(1000):          # the pending call runs at a safe point
            if h.stats().gc_triggered:
                break
            time.sleep(0.001)
        assert h.stats().gc_triggered >= 1
        assert ref() is None           # the collection ran
    finally:
        if gcwas:
            gc.enable()
    h.close()


def test_pending_collection_of_a_closed_heap_does_nothing():
    before = _mgcpacer._pacer_skipped()
    h = Heap(gogc=100)
    serial = _testing.request_gc_and_close(h)       # closed with nothing alive: unmapped
    for _ in range(100):
        if _mgcpacer._pacer_skipped() > before:
            break
        time.sleep(0.001)
    assert _mgcpacer._pacer_skipped() == before + 1
    assert _mgcpacer._pacer_state(serial) is None
    assert h.stats().gc_triggered == 0
    # Closed but still mapped (a block alive): found, closed, left alone.
    h = Heap(gogc=100)
    b = h.alloc(100)
    serial = _testing.request_gc_and_close(h)
    for _ in range(100):
        if _mgcpacer._pacer_skipped() > before + 1:
            break
        time.sleep(0.001)
    assert _mgcpacer._pacer_skipped() == before + 2
    assert _mgcpacer._pacer_state(serial)[0] == 0   # not pending any more
    assert h.stats().gc_triggered == 0
    del b


# -- the memory limit ----------------------------------------------------------

LIMIT_LOOP = """
    import json, threading, pyarena
    h = pyarena.Heap({opts})
    MiB = 1 << 20
    worst = [0]
    def retained():
        st = h.stats()
        return st.heap_sys - st.heap_released
    def work(seed, total):
        # A window of live blocks of sizes 64..124 MiB in turn: a freed run
        # is too small for the sizes that follow it, so without a limit the
        # heap keeps growing its idle part.
        live = []
        done = 0
        i = seed
        while done < total:
            size = (64 + i % 16 * 4) * MiB
            live.append(h.alloc(size, zero=False))
            done += size
            worst[0] = max(worst[0], retained())
            if len(live) > 2:
                live.pop(0)
            i += 1
    threads = [threading.Thread(target=work, args=(k, (4 << 30) // {nthreads}))
               for k in range({nthreads})]
    for t in threads: t.start()
    for t in threads: t.join()
    st = h.stats()
    identities = (st.heap_sys == st.heap_inuse + st.heap_idle and
                  st.heap_released <= st.heap_idle and
                  st.heap_objects == st.mallocs - st.frees)
    h.check()
    print(json.dumps(dict(worst=worst[0], released=st.limit_released, identities=identities,
                          objects=st.heap_objects)))
"""


@pytest.mark.parametrize("nthreads", [1, 2])
def test_memory_limit_keeps_the_heap_under_it(nthreads):
    limit = 512 * MiB
    got = run(LIMIT_LOOP.format(opts=f"memory_limit={limit}, scavenge=False",
                                nthreads=nthreads))
    assert got["identities"]
    assert got["objects"] == 0
    assert got["released"] > 0                       # the limit did release pages
    assert got["worst"] <= limit + nthreads * 124 * MiB, got


def test_without_limit_the_same_loop_passes_it():
    got = run(LIMIT_LOOP.format(opts="", nthreads=1))
    assert got["released"] == 0
    assert got["worst"] > 512 * MiB + 124 * MiB


def test_memory_limit_requests_a_collection_with_gogc():
    # Live arrays held by cycles keep the heap over its limit: the limit
    # asks the pacer for a collection (gogc large, so the goal alone would
    # not).
    got = run("""
        import gc, json, numpy as np, pyarena
        gc.disable()
        class Node: pass
        h = pyarena.Heap(gogc=10000, memory_limit=256 << 20, scavenge=False)
        peak = 0
        with pyarena.numpy_allocator(h):
            for i in range(40):
                n = Node(); n.self = n; n.a = np.empty(4 << 20)
                del n
                st = h.stats()
                peak = max(peak, st.heap_sys - st.heap_released)
        print(json.dumps(dict(peak=peak, triggered=h.stats().gc_triggered)))
    """)
    assert got["triggered"] > 0
    assert got["peak"] <= 256 * MiB + 64 * MiB, got


# -- the hard cap ----------------------------------------------------------------

def test_limits_turn_prezero_off():
    assert Heap(memory_limit=64 * MiB).prezero is False
    assert Heap(max_bytes=64 * MiB).prezero is False
    with pytest.raises(ValueError):
        Heap(memory_limit=64 * MiB, prezero=True)
    h = Heap(prezero=True)
    assert h.prezero is True
    h.set_memory_limit(64 * MiB)
    assert h.prezero is False
    h.close()


def test_hard_cap_every_path():
    h = Heap(max_bytes=64 * MiB, scavenge=False)
    a = h.alloc(32 * MiB)
    with pytest.raises(MemoryError, match="max_bytes"):
        h.alloc(48 * MiB)
    with pytest.raises(MemoryError):
        h.zeros(48 * MiB // 8)
    assert _testing.capi_malloc(h, 48 * MiB, 1) == [0]
    with numpy_allocator(h):
        with pytest.raises(MemoryError):
            np.empty(48 * MiB // 8)
    with pytest.raises(MemoryError):
        Arena(48 << 20, heap=h).alloc(100)
    st = h.stats()
    assert st.cap_refused >= 5
    identities(st)
    h.check()
    # Usable: freed memory is released to make room under the cap.
    del a
    b = h.alloc(48 * MiB)
    with numpy_allocator(h):
        c = np.ones(1000)
    assert c.sum() == 1000
    st = h.stats()
    assert st.heap_sys - st.heap_released <= 64 * MiB
    assert st.limit_released >= 16 * MiB
    h.check()
    del b, c
    h.close()


def test_hard_cap_gives_back_pooled_memory_before_refusing():
    # A freed arena's chunk waits in the heap's pool, idle but counted: the
    # cap must give it (and spares) back before it refuses (found in review:
    # refused with nothing live).
    h = Heap(max_bytes=96 * MiB, scavenge=False, prezero=False)
    a = Arena(48 * MiB, heap=h)
    x = a.alloc(100)
    del x, a
    gc.collect()
    st = h.stats()
    assert st.heap_objects == 1                     # the pooled chunk
    b = h.alloc(64 * MiB)
    st = h.stats()
    assert st.heap_objects == 1 and st.heap_sys - st.heap_released <= 96 * MiB
    identities(st)
    h.check()
    del b
    h.close()


def test_hard_cap_small_objects():
    h = Heap(max_bytes=1 * MiB, scavenge=False)
    blocks = []
    with pytest.raises(MemoryError):
        for _ in range(10000):
            blocks.append(h.alloc(1024))
    assert 512 <= len(blocks) <= 1024
    n = len(blocks)
    st = h.stats()
    assert st.heap_sys - st.heap_released <= 1 * MiB
    identities(st)
    assert h.check() == n
    del blocks
    # Everything is usable again.
    again = [h.alloc(1024) for _ in range(n // 2)]
    assert h.check() == len(again)
    del again
    h.close()


# -- the background scavenger ----------------------------------------------------

def test_scavenger_returns_idle_pages():
    # Without clearing ahead: its queue keeps freed large objects for reuse,
    # out of the scavenger's reach (they are not free page runs).
    h = Heap(scavenge=True, prezero=False)
    running, _, nheaps = _mgcpacer._scavenger_state()
    assert running and nheaps >= 1
    a = np.frombuffer(h.alloc(32 * MiB), dtype=np.uint8)
    a[::4096] = 1                                    # touch: dirty pages
    del a
    gc.collect()
    st = h.stats()
    assert st.heap_idle >= 32 * MiB and st.heap_released < 16 * MiB
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = h.stats()
        if st.heap_released >= 32 * MiB:
            break
        time.sleep(0.05)
    assert st.scavenger_released >= 32 * MiB
    assert st.heap_released >= 32 * MiB
    identities(st)
    h.check()
    h.close()
    assert _mgcpacer._scavenger_state()[2] == nheaps - 1


def test_scavenger_releases_an_idle_zeroing_queue():
    # Clearing ahead queues a freed large object for reuse; left alone for
    # a second, the queue counts as idle memory and goes back too.
    h = Heap(scavenge=True, prezero=True)
    a = np.frombuffer(h.alloc(32 * MiB), dtype=np.uint8)
    a[::4096] = 1
    del a
    gc.collect()
    queued, on = _testing.zero_queue(h)
    assert on and len(queued) == 1                  # queued, not a free run
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = h.stats()
        if st.heap_released >= 32 * MiB:
            break
        time.sleep(0.05)
    assert _testing.zero_queue(h)[0] == []
    assert st.scavenger_released >= 32 * MiB
    identities(st)
    h.check()
    h.close()


def test_scavenger_never_keeps_the_interpreter_alive():
    code = ("import pyarena; h = pyarena.Heap(scavenge=True); b = h.alloc(1 << 20); "
            "print('done')")
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], env=pyarena_env(), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.strip() == "done", p.stderr
    assert time.monotonic() - t < 20


# -- metadata huge pages -----------------------------------------------------------

def _hpage_size():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            n = int(f.read())
    except (OSError, ValueError):
        return 0
    return n if n > 0 and n & (n - 1) == 0 else 0


def test_metadata_huge_pages_switch_after_one_gib():
    got = run("""
        import json, re, pyarena
        from pyarena import _testing
        def flags(addr):
            with open("/proc/self/smaps") as f:
                text = f.read()
            for block in re.split(r"\\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
                lo, hi = (int(x, 16) for x in block.split()[0].split("-"))
                if lo <= addr < hi:
                    return re.search(r"VmFlags:(.*)", block).group(1).split()
            return None
        h = pyarena.Heap()
        small = h.alloc(600 << 20, zero=False)      # mapped, never touched
        before = h.stats().metadata_huge_pages
        before_flags = flags(_testing.persistent_chunk(h))
        big = h.alloc(600 << 20, zero=False)
        st = h.stats()
        after_flags = flags(_testing.persistent_chunk(h))
        # Span records for 2000 more spans fill new metadata chunks: cut
        # from a huge-page group (one 2 MiB mapping) after the switch.
        chunks = st.persistent_chunks
        keep = [h.alloc(40 << 10) for _ in range(2000)]
        newest = _testing.persistent_chunk(h)
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo <= newest < hi:
                    group = hi - lo
        print(json.dumps(dict(before=before, after=st.metadata_huge_pages,
                              sys=st.heap_sys, before_flags=before_flags,
                              after_flags=after_flags, group=group,
                              new_chunks=h.stats().persistent_chunks - chunks,
                              newest_flags=flags(newest))))
    """)
    assert got["sys"] > 1 << 30
    assert got["before"] is False
    if _hpage_size():
        assert got["after"] is True
        assert "hg" not in got["before_flags"]
        assert "hg" in got["after_flags"]
        assert got["new_chunks"] >= 2
        assert "hg" in got["newest_flags"]
        assert got["group"] % _hpage_size() == 0
    else:
        assert got["after"] is False
