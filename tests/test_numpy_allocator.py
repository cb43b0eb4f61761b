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


def test_install_and_uninstall_nest_and_restore():
    h1, h2 = pyarena.Heap(), pyarena.Heap()
    pyarena.install_numpy_allocator(h1)
    try:
        x = np.ones(100)
        pyarena.install_numpy_allocator(h2)
        y = np.ones(100)
        pyarena.uninstall_numpy_allocator()
        z = np.ones(100)
    finally:
        pyarena.uninstall_numpy_allocator()
    assert h1.owns(x) and h2.owns(y) and h1.owns(z)
    assert current_handler_name() == "default_allocator"
    pyarena.uninstall_numpy_allocator()          # nothing installed: no-op
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
