"""pyarena as NumPy's data allocator (NEP 49): numpy_allocator,
install_numpy_allocator / uninstall_numpy_allocator, and the handler's
malloc/calloc/realloc/free as NumPy calls them."""

import gc
import threading
import tracemalloc

import numpy as np
import pytest
from numpy._core.multiarray import get_handler_name

import pyarena
from pyarena import _testing
from pyarena._numpy_allocator import current_handler_name


def test_arrays_numpy_makes_come_from_the_heap():
    h = pyarena.Heap()
    before = h.stats().mallocs
    with pyarena.numpy_allocator(h) as used:
        assert used is h
        assert current_handler_name() == "pyarena"
        a = np.ones(1000)
        b = a * 2 + 1              # temporaries and the result
        c = np.arange(10**6, dtype=np.float32)
        d = b.copy()
    assert current_handler_name() == "default_allocator"
    for x in (a, b, c, d):
        assert get_handler_name(x) == "pyarena"
        assert h.owns(x)
    assert h.stats().mallocs - before >= 4
    assert (b == 3).all() and c[-1] == 10**6 - 1 and (d == b).all()
    e = np.ones(10)
    assert get_handler_name(e) == "default_allocator" and not h.owns(e)


def test_calloc_reads_zero_on_reused_memory():
    h = pyarena.Heap()
    with pyarena.numpy_allocator(h):
        for n in (10, 1000, 5000, 300_000, 2_000_000):
            for _ in range(3):
                a = np.empty(n)
                a[:] = 7.0
                del a
                z = np.zeros(n)      # NumPy's calloc path
                assert not z.any()
                del z
    _testing.check_heap(h)


def test_realloc_through_resize_keeps_contents():
    h = pyarena.Heap()
    with pyarena.numpy_allocator(h):
        a = np.arange(100, dtype=np.int64)
        a.resize(100_000, refcheck=False)
        assert (a[:100] == np.arange(100)).all() and not a[100:].any()
        a.resize(10, refcheck=False)
        assert (a == np.arange(10)).all()
    assert h.owns(a)
    del a
    assert h.stats().heap_objects == 0
    _testing.check_heap(h)


def test_arrays_outlive_the_block_the_close_and_the_heap():
    h = pyarena.Heap()
    with pyarena.numpy_allocator(h):
        a = np.full(50_000, 3.0)
    h.close()
    with pytest.raises(ValueError):
        h.alloc(10)
    assert a.sum() == 150_000.0
    a[:] = 1.0
    del h
    gc.collect()
    assert a.sum() == 50_000.0
    b = a[::2]
    del a
    gc.collect()
    assert b.sum() == 25_000.0
    del b


@pytest.mark.parametrize("scope", ["process", "context"])
def test_install_and_uninstall_nest_and_restore(scope):
    h1, h2 = pyarena.Heap(), pyarena.Heap()
    pyarena.install_numpy_allocator(h1, scope=scope)
    try:
        x = np.ones(100)
        pyarena.install_numpy_allocator(h2, scope=scope)
        y = np.ones(100)
        pyarena.uninstall_numpy_allocator(scope=scope)
        z = np.ones(100)
    finally:
        pyarena.uninstall_numpy_allocator(scope=scope)
    assert h1.owns(x) and h2.owns(y) and h1.owns(z)
    assert not h1.owns(np.ones(100)) and not h2.owns(np.ones(100))
    assert current_handler_name() == "default_allocator"
    pyarena.uninstall_numpy_allocator(scope=scope)    # nothing installed: no-op
    assert current_handler_name() == "default_allocator"


def test_the_handler_is_per_thread_context():
    h = pyarena.Heap()
    seen = {}

    def other():
        seen["name"] = get_handler_name(np.ones(100))

    with pyarena.numpy_allocator(h):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        mine = get_handler_name(np.ones(100))
    assert mine == "pyarena" and seen["name"] == "default_allocator"


def test_tracemalloc_sees_each_allocation_once():
    # NumPy reports handler allocations itself (domain 389047); pyarena
    # must not report them again.
    h = pyarena.Heap()
    tracemalloc.start()
    try:
        with pyarena.numpy_allocator(h):
            a = np.ones(123_457, dtype=np.uint8)
        snap = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    traces = [t for t in snap.traces if t.domain == np.lib.tracemalloc_domain
              and t.size == 123_457]
    assert len(traces) == 1
    del a


def test_threads_allocating_under_the_handler():
    h = pyarena.Heap()
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        with pyarena.numpy_allocator(h):
            for _ in range(300):
                n = int(rng.integers(1, 50_000))
                a = np.full(n, seed, dtype=np.int32)
                b = a + 1
                if not (b == seed + 1).all():
                    errors.append(seed)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    gc.collect()
    assert h.stats().heap_objects == 0
    _testing.check_heap(h)



# ---------------------------------------------------------------------------
# The process-wide install: every thread, and frees to whoever allocated.

@pytest.fixture
def process_heap():
    """A heap installed process-wide for one test, uninstalled after it."""
    h = pyarena.Heap()
    pyarena.install_numpy_allocator(h)
    try:
        yield h
    finally:
        pyarena.uninstall_numpy_allocator()


def test_process_install_covers_thread_pools(process_heap):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as ex:
        arrs = list(ex.map(lambda n: np.arange(n, dtype=np.float64) * 2, range(1, 400, 7)))
    assert all(process_heap.owns(a) for a in arrs)
    assert all((a == np.arange(len(a)) * 2).all() for a in arrs)
    assert get_handler_name(arrs[0]) == "pyarena"
    live = process_heap.stats().heap_objects
    del arrs
    assert process_heap.stats().heap_objects < live


def test_process_install_covers_threads_started_before_it():
    started, go, out = threading.Event(), threading.Event(), {}

    def early():
        started.set()
        go.wait()
        out["a"] = np.ones(5000)
        out["b"] = out["a"] + 1

    t = threading.Thread(target=early)
    t.start()
    started.wait()
    h = pyarena.Heap()
    pyarena.install_numpy_allocator(h)
    try:
        go.set()
        t.join()
        assert h.owns(out["a"]) and h.owns(out["b"]) and out["b"].sum() == 10000
    finally:
        pyarena.uninstall_numpy_allocator()


def test_arrays_made_before_the_install_are_freed_by_numpy():
    before = [np.ones(n) for n in (1, 10, 1000, 100_000, 2_000_000)]
    h = pyarena.Heap()
    pyarena.install_numpy_allocator(h)
    try:
        assert not any(h.owns(a) for a in before)
        during = [np.ones(n) for n in (1, 10, 1000, 100_000, 2_000_000)]
        assert all(h.owns(a) for a in during)
        before[0].resize(50, refcheck=False)     # NumPy's realloc of NumPy's memory
        during[0].resize(50, refcheck=False)     # and of pyarena's
        assert h.owns(during[0]) and not h.owns(before[0])
        objects = h.stats().heap_objects
        del before                               # freed by NumPy's own free
        assert h.stats().heap_objects == objects and h.stats().invalid_frees == 0
    finally:
        pyarena.uninstall_numpy_allocator()
    # After the uninstall NumPy allocates for itself, and the heap's arrays
    # still go back to the heap, realloc included.
    after = np.ones(1000)
    assert not h.owns(after)
    during[1].resize(5000, refcheck=False)
    assert h.owns(during[1])
    del during
    assert h.stats().heap_objects == 0 and h.stats().invalid_frees == 0
    assert h.check() == 0


def test_a_closed_process_heap_hands_allocation_back_to_numpy():
    h = pyarena.Heap()
    pyarena.install_numpy_allocator(h)
    try:
        a = np.ones(1000)
        h.close()
        b = np.ones(1000)            # NumPy's own memory, not a MemoryError
        assert h.owns(a) and not h.owns(b)
        a.resize(100_000, refcheck=False)    # moved out of the closed heap
        assert not h.owns(a) and a[:1000].sum() == 1000
        del a, b
        assert h.stats().heap_objects == 0
    finally:
        pyarena.uninstall_numpy_allocator()


def test_a_block_beats_the_process_install_in_its_context(process_heap):
    other = pyarena.Heap()
    with pyarena.numpy_allocator(other):
        a = np.ones(100)
    assert other.owns(a) and not process_heap.owns(a)
    assert process_heap.owns(np.ones(100))


def test_bad_scope_is_a_value_error():
    with pytest.raises(ValueError):
        pyarena.install_numpy_allocator(scope="everywhere")
    with pytest.raises(ValueError):
        pyarena.uninstall_numpy_allocator(scope="everywhere")
    with pytest.raises(TypeError):
        pyarena.install_numpy_allocator(object())


def test_tune_malloc_keeps_big_blocks_on_the_heap():
    # In a fresh process (mallopt is process-wide): before, an 8 MiB
    # malloc is a mapping of its own; after, it comes from the heap.
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import ctypes, pyarena
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        def heap_range():
            for line in open("/proc/self/maps"):
                if line.rstrip().endswith("[heap]"):
                    a, b = (int(x, 16) for x in line.split()[0].split("-"))
                    return a, b
            return 0, 0
        def on_heap(p):
            a, b = heap_range()
            return a <= p < b
        p = libc.malloc(8 << 20)
        print(on_heap(p))
        print(pyarena.tune_malloc())
        q = libc.malloc(8 << 20)
        print(on_heap(q))
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from support import glibc_malloc
    if glibc_malloc():
        assert r.stdout.split() == ["False", "True", "True"]
    else:
        # Another malloc (a sanitizer's): tune_malloc says it changed nothing.
        assert r.stdout.split()[1] == "False"
    with pytest.raises(ValueError):
        pyarena.tune_malloc(mmap_threshold=-1)
