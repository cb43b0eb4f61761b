"""Clearing ahead of time and knowing what is still zero (_mzero): the page
tables' answer, zeroed memory through every kind of write, the statistics,
the zeroing worker's queue, take-over, close, exit and fork."""

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyarena
from pyarena import Heap, _testing

from support import pyarena_env

MiB = 1 << 20
PAGE = 8192
# The kernel can answer PAGEMAP_SCAN (Linux 6.7): the tests of skipping by
# page tables need it; without it everything counts as written, which the
# fallback test checks instead.
_probe = np.zeros(1)
SCAN = _testing.dirty_regions(0, PAGE) is not None


@pytest.fixture(autouse=True)
def worker_looks_at_machine():
    yield
    _testing.set_zero_idle(None)


def addr(a):
    return a.__array_interface__["data"][0]


def wait_for(cond, timeout=10.0):
    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > timeout:
            return False
        time.sleep(0.002)
    return True


def queue_clean(h):
    q, _ = _testing.zero_queue(h)
    return bool(q) and all(z == n * PAGE for _, n, z in q)


# -- what the page tables say ------------------------------------------------

@pytest.mark.skipif(not SCAN, reason="the kernel has no PAGEMAP_SCAN (tested by the fallback)")
def test_page_tables_show_written_pages_only():
    with Heap(prezero=False) as h:
        a = h.zeros(16 * MiB, np.uint8)
        lo = addr(a)
        assert _testing.dirty_regions(lo, lo + 16 * MiB) == []
        a[5 * MiB] = 7                    # one byte, through NumPy
        ctypes.memset(lo + 12 * MiB + 3, 1, 1)   # one through a C pointer
        runs = _testing.dirty_regions(lo, lo + 16 * MiB)
        assert runs
        def covered(p):
            return any(x <= p < y for x, y in runs)
        assert covered(lo + 5 * MiB) and covered(lo + 12 * MiB + 3)
        # A huge page at most around each write is reported, never the rest.
        assert sum(y - x for x, y in runs) <= 2 * 2 * MiB
        assert not covered(lo) and not covered(lo + 9 * MiB)
        # A read maps the zero page: still zero, not reported.
        assert a[:MiB].sum() == 0
        assert not covered(lo)
        runs = _testing.dirty_regions(lo, lo + MiB)
        assert runs == []
        del a


@pytest.mark.skipif(not SCAN, reason="the kernel has no PAGEMAP_SCAN")
def test_untouched_large_zeros_are_not_cleared_again():
    with Heap(prezero=False) as h:
        n = 64 * MiB
        for _ in range(3):
            a = h.zeros(n, np.uint8)
            del a
        st = h.stats()
        assert st.cleared_by_caller == 0
        assert st.clear_skipped == 3 * n
        # Written pages are cleared, and only about those.
        a = h.zeros(n, np.uint8)
        a[::MiB] = 1
        del a
        before = h.stats()
        b = h.zeros(n, np.uint8)
        assert not b.any()
        after = h.stats()
        cleared = after.cleared_by_caller - before.cleared_by_caller
        assert 0 < cleared <= n
        assert after.clear_skipped - before.clear_skipped == n - cleared


def test_statistics_add_up_to_every_zeroed_large_allocation():
    for prezero in (False, True):
        with Heap(prezero=prezero) as h:
            total = 0
            rng = np.random.default_rng(1)
            for _ in range(30):
                n = int(rng.integers(33 * 1024, 12 * MiB))
                a = h.zeros(n, np.uint8)
                assert not a.any()
                a[:: int(rng.integers(1, 64)) * 4096] = 3
                total += -(-n // PAGE) * PAGE
                del a
                e = h.empty(n, np.uint8)   # empty() is not counted
                e[:] = 9
                del e
            st = h.stats()
            assert st.cleared_by_caller + st.clear_skipped == total


# -- never non-zero memory -----------------------------------------------------

def writers(h):
    """Every kind of write into a live value: NumPy views, memoryviews and
    buffers, ctypes pointers, another dtype."""
    def numpy_slice(a, off, n):
        a[off:off + n] = 0xA5
    def numpy_view(a, off, n):
        v = a.view(np.uint16)
        v[off // 2:(off + n) // 2] = 0xBEEF
        a[off:off + n] |= 1
    def memoryview_write(a, off, n):
        memoryview(a)[off:off + n] = b"\x5a" * n
    def ctypes_pointer(a, off, n):
        ctypes.memset(addr(a) + off, 0x3C, n)
    def buffer_copy(a, off, n):
        np.frombuffer(memoryview(a), np.uint8)[off:off + n] = 0x11
    return [numpy_slice, numpy_view, memoryview_write, ctypes_pointer, buffer_copy]


def block_writers():
    def block_memoryview(b, off, n):
        memoryview(b)[off:off + n] = b"\xee" * n
    def block_ctypes(b, off, n):
        ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(b)) + off, 0x77, n)
    return [block_memoryview, block_ctypes]


SIZES = st.sampled_from([64 * 1024, 300 * 1024, 2 * MiB, 3 * MiB + 4096, 8 * MiB, 24 * MiB])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(prezero=st.booleans(), idle=st.booleans(),
       steps=st.lists(st.tuples(SIZES, st.integers(0, 6), st.floats(0, 1),
                                st.floats(0, 1), st.sampled_from(["zeros", "alloc", "calloc"]),
                                st.sampled_from([0.0, 0.0005, 0.003])),
                      min_size=1, max_size=10))
def test_zeroed_allocations_read_zero_after_any_write(prezero, idle, steps):
    # Write through every kind of view at random offsets, drop, and take the
    # memory back as zeros, alloc() or the C-level calloc, with the worker
    # idle or kept away, taking spans before, during or after its clear.
    _testing.set_zero_idle(idle)
    with Heap(prezero=prezero) as h:
        ws = writers(h)
        bws = block_writers()
        for n, wi, f1, f2, kind, pause in steps:
            a = h.empty(n, np.uint8)
            off = int(f1 * (n - 1))
            k = max(1, int(f2 * (n - off)))
            ws[wi % len(ws)](a, off, k)
            a[-1] = 0xFF
            del a
            b = h.alloc(n, zero=False)
            bws[wi % len(bws)](b, int(f2 * (n - 1)), 1)
            del b
            if pause:
                time.sleep(pause)
            if kind == "zeros":
                z = h.zeros(n, np.uint8)
                assert not z.any()
            elif kind == "alloc":
                z = h.alloc(n)
                assert not any(memoryview(z).cast("B")[::4093]) and \
                    not np.frombuffer(z, np.uint8).any()
            else:
                p = _testing.capi_calloc(h, n)
                try:
                    assert not np.ctypeslib.as_array(
                        (ctypes.c_uint8 * n).from_address(p)).any()
                finally:
                    _testing.capi_free(h, [p])
                z = None
            del z
        h.check()


def test_arena_chunks_from_queued_memory_read_zero():
    with Heap() as h:
        for _ in range(3):
            x = h.empty(8 * MiB, np.uint8)
            x[:] = 1
            del x
            with pyarena.Arena(heap=h) as ar:
                v = ar.zeros(2 * MiB, np.uint8)
                assert not v.any()
                v[:] = 5
                del v


# -- the worker ----------------------------------------------------------------

def test_worker_clears_freed_large_objects_ahead_of_time():
    _testing.set_zero_idle(True)
    with Heap(prezero=True) as h:
        assert h.prezero
        a = h.empty(32 * MiB, np.uint8)
        a[:] = 0xAB
        start = addr(a)
        del a
        q, on = _testing.zero_queue(h)
        assert on and [s for s, _, _ in q] == [start]
        assert wait_for(lambda: queue_clean(h)), _testing.zero_queue(h)
        assert h.stats().cleared_ahead >= 32 * MiB
        before = h.stats()
        b = h.zeros(32 * MiB, np.uint8)
        assert addr(b) == start and not b.any()
        after = h.stats()
        assert after.cleared_by_caller == before.cleared_by_caller
        assert after.clear_skipped - before.clear_skipped == 32 * MiB
        assert _testing.zero_queue(h)[0] == []


def test_no_idle_core_means_the_caller_clears():
    _testing.set_zero_idle(False)
    with Heap(prezero=True) as h:
        a = h.empty(16 * MiB, np.uint8)
        a[:] = 1
        del a
        time.sleep(0.05)
        q, _ = _testing.zero_queue(h)
        assert [z for _, _, z in q] == [0]
        before = h.stats()
        b = h.zeros(16 * MiB, np.uint8)
        assert not b.any()
        assert h.stats().cleared_ahead == before.cleared_ahead
        assert h.stats().cleared_by_caller - before.cleared_by_caller == 16 * MiB


def test_take_during_the_clear_finishes_it_without_waiting_for_all():
    # A span taken while the worker clears it: the taker waits for one
    # chunk at most and clears the rest; the result is zero either way.
    _testing.set_zero_idle(True)
    with Heap(prezero=True) as h:
        n = 256 * MiB
        partial = 0
        for _ in range(6):
            a = h.empty(n, np.uint8)
            a[:] = 0x5A
            del a
            assert wait_for(lambda: _testing.zero_queue(h)[0] and
                            _testing.zero_queue(h)[0][0][2] > 0, 5)
            s0 = h.stats()
            b = h.zeros(n, np.uint8)
            s1 = h.stats()
            assert not b[::4096].any() and not b[-4096:].any() and not b.any()
            caller = s1.cleared_by_caller - s0.cleared_by_caller
            if 0 < caller < n:
                partial += 1
            del b
        assert partial >= 1, "no take ever caught the worker part way"


def test_queue_is_bounded_and_release_returns_it():
    _testing.set_zero_idle(False)
    with Heap(prezero=True) as h:
        live = [h.empty((3 + i) * MiB, np.uint8) for i in range(8)]
        for a in live:
            a[:] = 1
        del a
        live.clear()
        q, _ = _testing.zero_queue(h)
        assert 1 <= len(q) <= 4
        assert sum(n for _, n, _ in q) * PAGE <= 256 * MiB
        idle = h.stats().heap_idle
        h.check()
        assert h.release() > 0
        assert _testing.zero_queue(h)[0] == []
        assert h.stats().heap_released == h.stats().heap_idle == idle


def test_close_stops_prezero_promptly():
    _testing.set_zero_idle(True)
    h = Heap(prezero=True)
    for i in range(4):
        a = h.empty(64 * MiB, np.uint8)
        a[:] = 1
        b = h.empty(64 * MiB + (i + 1) * PAGE, np.uint8)
        b[:] = 1
        del a, b
    t = time.perf_counter()
    h.close()
    took = time.perf_counter() - t
    assert not h.prezero
    assert took < 0.5, took
    assert h.stats().heap_sys == 0        # unmapped: the worker let go


def test_prezero_option_and_environment():
    assert Heap(prezero=False).prezero is False
    assert Heap(prezero=True).prezero is True
    with pytest.raises(TypeError):
        Heap(prezero=1)
    assert Heap().prezero == _testing.prezero_default()
    code = "import pyarena; print(pyarena.Heap().prezero, pyarena.default_heap().prezero)"
    for value, expect in (("0", "False False"), ("1", "True True")):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=pyarena_env(PYARENA_PREZERO=value), timeout=60)
        assert r.stdout.strip() == expect, r.stderr
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=pyarena_env(PYARENA_PREZERO="yes"), timeout=60)
    assert r.returncode != 0 and "PYARENA_PREZERO" in r.stderr


def run(code, timeout=60, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=pyarena_env(**env), timeout=timeout)


def test_interpreter_exits_while_the_worker_clears():
    r = run("""
        import time, numpy as np, pyarena
        from pyarena import _testing
        _testing.set_zero_idle(True)
        h = pyarena.default_heap()
        assert h.prezero
        def clearing():
            return _testing.zero_worker()["running"] and \\
                any(0 < z < n * 8192 for _, n, z in _testing.zero_queue(h)[0])
        # Keep the queue fed until the worker is seen inside an object (on a
        # loaded machine it may clear a whole batch between two looks).
        t = time.monotonic()
        found = False
        while not found:
            for i in range(4):
                a = h.empty((64 + i) * 2**20, np.uint8); a[:] = 1; del a
            for _ in range(2000):
                if clearing():
                    found = True
                    break
            assert time.monotonic() - t < 30
        print("clearing", flush=True)
    """, PYARENA_PREZERO="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "clearing"
    t = time.monotonic()
    r = run("""
        import numpy as np, pyarena
        from pyarena import _testing
        _testing.set_zero_idle(True)
        h = pyarena.Heap(prezero=True)
        keep = h
        for i in range(4):
            a = h.empty((64 + i) * 2**20, np.uint8); a[:] = 1; del a
    """, PYARENA_PREZERO="1")
    took = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    assert took < 10, took


def test_fork_child_clears_its_own_pages():
    # The child's page tables are its own: a page it wrote must be cleared
    # although the parent never touched it (a pagemap file opened in the
    # parent would say otherwise); and the child gets a worker of its own.
    r = run("""
        import os, numpy as np, pyarena
        from pyarena import _testing
        _testing.set_zero_idle(True)
        for prezero in (False, True):
            h = pyarena.Heap(prezero=prezero)
            a = h.zeros(8 * 2**20, np.uint8)
            busy = h.empty(16 * 2**20, np.uint8); busy[:] = 3; del busy
            pid = os.fork()
            if pid == 0:
                try:
                    a[:] = 0x42
                    del a
                    for _ in range(3):
                        z = h.zeros(8 * 2**20, np.uint8)
                        assert not z.any()
                        z[::4096] = 1
                        del z
                    y = h.zeros(16 * 2**20, np.uint8)
                    assert not y.any()
                    y[:] = 9; del y
                    if prezero:
                        import time
                        t = time.monotonic()
                        while not all(z == n * 8192 for _, n, z in _testing.zero_queue(h)[0]):
                            assert time.monotonic() - t < 10, _testing.zero_queue(h)
                            time.sleep(0.01)
                        assert _testing.zero_worker()["running"]
                    h.check()
                except BaseException as e:
                    import traceback; traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert status == 0, status
            assert not a.any()
            del a
            z = h.zeros(8 * 2**20, np.uint8)
            assert not z.any()
            h.close()
        print("OK")
    """)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_check_reports_a_damaged_zeroing_queue():
    r = run("""
        import numpy as np, pyarena
        from pyarena import _testing
        _testing.set_zero_idle(False)
        h = pyarena.Heap(prezero=True)
        a = h.empty(4 * 2**20, np.uint8); start = a.ctypes.data; del a
        assert [s for s, _, _ in _testing.zero_queue(h)[0]] == [start]
        h.check()
        _testing.corrupt(h, start, "zero_queue")
        try:
            h.check()
        except pyarena.HeapCorruptionError as e:
            print([p.kind for p in e.problems])
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['span-list']"
