"""Arenas (Go's arena experiment on linearAlloc): bump allocation in chunks
from a heap's page heap, large values on the heap, free() of everything at
once with values that stay valid while referenced, strict free, the context
manager, reuse of released chunks without new mappings (and reading zero),
clone, *_like layouts, and a stateful model mixing heap and arena values."""

from __future__ import annotations

import copy
import ctypes
import gc
import pickle

import numpy as np
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pyarena
from pyarena import Arena, ArenaStats, Block, Heap
from pyarena._testing import check_heap, in_persistent_alloc

KiB = 1024
MiB = 1024 * KiB
OUT_OF_RANGE = "allocation size out of range"


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_int16)]


class Wide(ctypes.Structure):
    _fields_ = [("c", ctypes.c_char), ("ld", ctypes.c_longdouble)]


class Empty(ctypes.Structure):
    _fields_ = []


def addr_size(v):
    """(address, size in bytes) of an arena or heap value."""
    if isinstance(v, Block):
        return v.address, len(v)
    if isinstance(v, np.ndarray):
        return v.ctypes.data, v.nbytes
    return ctypes.addressof(v), ctypes.sizeof(v)


def read(v):
    a, n = addr_size(v)
    return ctypes.string_at(a, n)


def fill(v, byte):
    a, n = addr_size(v)
    ctypes.memset(a, byte, n)


# -- bump allocation -----------------------------------------------------------

def _mixed_values(a, count):
    """A mix of value kinds and sizes, with the alignment each must have."""
    out = []
    for i in range(count):
        k = i % 8
        if k == 0:
            v, al = a.alloc(24), 16
        elif k == 1:
            v, al = a.alloc(5), 8
        elif k == 2:
            v = a.zeros(3, "f8")
            al = 16
        elif k == 3:
            v, al = a.new(ctypes.c_double), ctypes.alignment(ctypes.c_double)
        elif k == 4:
            v, al = a.new("i2"), 2
        elif k == 5:
            v, al = a.newarray(ctypes.c_int8, 5), 1
        elif k == 6:
            v, al = a.new(Point), ctypes.alignment(Point)
        else:
            v, al = a.new(Wide), ctypes.alignment(Wide)
        out.append((v, al))
    return out


def test_small_values_bump_allocated_in_one_chunk(heap):
    a = Arena(chunk_size=1 * MiB, heap=heap)
    vals = _mixed_values(a, 400)
    assert a.stats().chunks == 1
    prev_end = None
    total = 0
    for v, al in vals:
        addr, size = addr_size(v)
        total += size
        assert addr % al == 0, (v, addr, al)
        if size >= 16:
            assert addr % 16 == 0
        assert read(v) == bytes(size)
        assert a.owns(addr)
        assert a.owns(addr + size - 1)
        if prev_end is not None:
            # monotonically increasing, no overlap, only alignment padding
            assert addr >= prev_end
            assert addr - prev_end < 16
        prev_end = addr + size
    st_ = a.stats()
    assert isinstance(st_, ArenaStats)
    assert st_.bytes_allocated == total
    assert st_.large_values == 0
    assert st_.live_values == len(vals)
    assert st_.bytes_mapped >= total and st_.bytes_mapped % pyarena.PAGE_SIZE == 0
    # the chunk is one large heap allocation
    first = addr_size(vals[0][0])[0]
    assert heap.owns(first)
    assert heap.stats().heap_objects == 1


OWNED_KINDS = [
    ("block", lambda a: a.alloc(40)),
    ("array", lambda a: a.zeros((3, 4))),
    ("new-dtype", lambda a: a.new("f8")),
    ("new-struct", lambda a: a.new(Point)),
    ("new-c_double", lambda a: a.new(ctypes.c_double)),
    ("newarray-ctypes", lambda a: a.newarray(ctypes.c_int, 3)),
    ("new-array-type", lambda a: a.new(ctypes.c_int * 4)),
    ("new-longdouble-struct", lambda a: a.new(Wide)),
    ("new-c_longdouble", lambda a: a.new(ctypes.c_longdouble)),
    ("new-pointer", lambda a: a.new(ctypes.POINTER(ctypes.c_int))),
]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("make", [m for _, m in OWNED_KINDS], ids=[n for n, _ in OWNED_KINDS])
def test_owns_accepts_every_value_kind(heap, make):
    a = Arena(chunk_size=1 * MiB, heap=heap)
    a.alloc(8)
    v = make(a)
    assert a.owns(addr_size(v)[0])
    assert a.owns(v)
    assert not a.owns(make(Arena(heap=heap)))
    assert not a.owns(heap.zeros(10))
    assert not a.owns(heap.new(Point))
    assert not a.owns(np.zeros(10))


@pytest.mark.parametrize("t", ["b1", "i1", "u2", "i4", "f4", "f8", np.longdouble, "c16",
                               np.clongdouble, "M8[ns]", "m8[s]", "S5", "U3", "V8",
                               np.dtype([("a", "u1"), ("b", "f8")], align=True),
                               np.dtype([("a", "f8"), ("s", [("x", "i2"), ("y", "u1", (3,))])])],
                         ids=lambda t: str(np.dtype(t)))
def test_arena_new_and_newarray_dtypes(heap, t):
    d = np.dtype(t)
    a = Arena(chunk_size=256 * KiB, heap=heap)
    for _ in range(3):
        p = a.new(t)
        assert p.shape == () and p.dtype == d
        assert p.ctypes.data % d.alignment == 0
        assert p.tobytes() == bytes(d.itemsize) and p.flags.writeable
        assert a.owns(p)
        q = a.newarray(t, 9)
        assert q.shape == (9,) and q.dtype == d
        assert q.ctypes.data % d.alignment == 0
        assert q.tobytes() == bytes(q.nbytes)
        assert a.owns(q)
        assert a.newarray(t, 0).shape == (0,)


def test_arena_new_subarray_dtype(heap):
    a = Arena(heap=heap)
    p = a.new("(2,3)f8")
    assert p.shape == (2, 3) and p.dtype == np.dtype("f8") and a.owns(p)
    assert a.newarray("(2,3)f8", 4).shape == (4, 2, 3)


def test_arena_ctypes_values_assignable_and_zero(heap):
    a = Arena(heap=heap)
    p = a.new(Point)
    assert read(p) == bytes(ctypes.sizeof(Point))
    p.x = 1.5
    p.y = -3
    assert Point.from_address(ctypes.addressof(p)).x == 1.5
    arr = a.newarray(Point, 4)
    assert type(arr) is Point * 4
    arr[2].y = 9
    assert [q.y for q in arr] == [0, 0, 9, 0]
    e = a.new(Empty)
    assert ctypes.addressof(e) == heap.alloc(0).address
    z = a.newarray(ctypes.c_double, 0)
    assert ctypes.addressof(z) == heap.alloc(0).address
    assert a.zeros(0).ctypes.data == heap.alloc(0).address


def test_arena_typed_errors(heap):
    a = Arena(heap=heap)
    a.alloc(8)
    before = (a.stats(), heap.stats().mallocs)
    with pytest.raises(ValueError):
        a.newarray(ctypes.c_double, -1)
    with pytest.raises(ValueError):
        a.newarray("f8", -1)
    with pytest.raises(OverflowError, match=OUT_OF_RANGE):
        a.newarray(ctypes.c_double, 1 << 62)
    with pytest.raises(OverflowError, match=OUT_OF_RANGE):
        a.newarray("f8", 1 << 64)
    with pytest.raises(MemoryError, match=OUT_OF_RANGE):
        a.newarray(ctypes.c_double, 1 << 45)
    with pytest.raises(MemoryError, match=OUT_OF_RANGE):
        a.newarray("f8", 1 << 45)
    for t in [ctypes.py_object, ctypes.py_object * 2, "O", np.dtype([("a", "f8"), ("o", "O")])]:
        with pytest.raises(TypeError):
            a.new(t)
        with pytest.raises(TypeError):
            a.newarray(t, 3)
    assert (a.stats(), heap.stats().mallocs) == before


def test_default_arena_uses_default_heap_and_8_mib_chunks():
    dh = pyarena.default_heap()
    with Arena() as a:
        b = a.alloc(100)
        assert dh.owns(b.address)
        edge = a.alloc(2 * MiB)                  # exactly a quarter chunk
        assert a.owns(edge) and a.stats().large_values == 0
        big = a.alloc(2 * MiB + 1)
        assert not a.owns(big) and dh.owns(big.address)
        assert a.stats().large_values == 1
        assert a.stats().chunks == 1
        assert "8 MiB" in repr(a)
        del b, edge, big


# -- chunks and large values ---------------------------------------------------

def test_chunk_rollover_keeps_every_value_valid(heap):
    a = Arena(chunk_size=64 * KiB, heap=heap)
    vals = []
    i = 0
    while a.stats().chunks < 3:
        size = 1000 + (i * 997) % 7000          # <= a quarter chunk (16 KiB)
        v = a.alloc(size) if i % 2 else a.zeros(size, "u1")
        assert read(v) == bytes(size)
        fill(v, (i % 250) + 1)
        vals.append(v)
        i += 1
        assert i < 1000
    st_ = a.stats()
    assert st_.chunks == 3 and st_.large_values == 0 and st_.live_values == len(vals)
    assert st_.bytes_allocated == sum(addr_size(v)[1] for v in vals)
    bases = set()
    for k, v in enumerate(vals):
        addr, size = addr_size(v)
        assert read(v) == bytes([(k % 250) + 1]) * size
        assert a.owns(v)
        bases.add(addr // (64 * KiB))
    assert len(bases) >= 3           # the values really are in different chunks
    spans = sorted(addr_size(v) for v in vals)
    for (a0, s0), (a1, _) in zip(spans, spans[1:]):
        assert a0 + s0 <= a1
    assert heap.stats().heap_objects == 3


def test_value_larger_than_quarter_chunk_goes_to_heap(heap):
    a = Arena(chunk_size=64 * KiB, heap=heap)
    quarter = 16 * KiB
    edge = a.alloc(quarter)
    assert a.owns(edge) and a.stats().large_values == 0
    big = a.alloc(quarter + 1)
    assert a.stats().large_values == 1
    assert not a.owns(big)
    assert heap.owns(big.address) and heap.owns(big)
    assert bytes(big) == bytes(quarter + 1)
    arr = a.zeros(20000, "u1")
    c = a.new(ctypes.c_char * 20000)
    d = a.newarray(ctypes.c_double, 3000)
    assert a.stats().large_values == 4
    for v in (arr, c, d):
        assert not a.owns(v)
        assert heap.owns(addr_size(v)[0])
        assert read(v) == bytes(addr_size(v)[1])
    assert type(c) is ctypes.c_char * 20000
    assert type(d) is ctypes.c_double * 3000
    assert a.stats().chunks == 1
    # a large value outlives the arena's free like any heap value
    a.free()
    arr[:] = 3
    assert arr.sum() == 3 * 20000


# -- free ------------------------------------------------------------------------

def test_free_without_live_values(heap):
    a = Arena(chunk_size=64 * KiB, heap=heap)
    for _ in range(20):
        a.alloc(4000)
    assert a.stats().live_values == 0
    assert not a.freed
    a.free()
    assert a.freed
    st_ = a.stats()
    assert st_.chunks == 0 and st_.live_values == 0
    check_heap(heap)


def test_free_with_live_values_keeps_them_valid(heap):
    a = Arena(chunk_size=64 * KiB, heap=heap)
    base_objects = heap.stats().heap_objects
    # 16 values of 4000 bytes fill a 64 KiB chunk
    vals = [a.zeros(4000, "u1") for _ in range(6 * 16)] + [a.alloc(100), a.new(Point)]
    n_chunks = a.stats().chunks
    assert n_chunks == 6
    ranges = [addr_size(v) for v in vals]
    peak = heap.stats().heap_objects
    assert peak == base_objects + n_chunks
    a.free()
    assert a.freed
    # still readable and writable
    for k, v in enumerate(vals):
        fill(v, k % 200 + 1)
    # memory Python can see is not handed out again
    other = Arena(chunk_size=64 * KiB, heap=heap)
    fresh = [other.alloc(4000) for _ in range(40)] + [heap.alloc(4000) for _ in range(40)]
    assert other.stats().chunks_reused == 0
    for f in fresh:
        fa, fs = addr_size(f)
        for va, vs in ranges:
            assert fa + fs <= va or va + vs <= fa
    for k, v in enumerate(vals):
        assert read(v) == bytes([k % 200 + 1]) * addr_size(v)[1]
    del fresh, f, other
    gc.collect()
    check_heap(heap)
    del vals, v
    gc.collect()
    check_heap(heap)
    # the chunks went back: heap objects drop from the peak, and a new arena
    # reuses a released chunk with no new mapping
    assert heap.stats().heap_objects < peak
    sys_before = heap.stats().heap_sys
    again = Arena(chunk_size=64 * KiB, heap=heap)
    again.alloc(100)
    assert again.stats().chunks_reused == 1
    assert heap.stats().heap_sys == sys_before


def test_chunk_with_live_value_not_reused_until_value_dies(heap):
    a = Arena(chunk_size=64 * KiB, heap=heap)
    v = a.zeros(100)
    v[:] = 7.0
    a.free()
    b = Arena(chunk_size=64 * KiB, heap=heap)
    w = b.zeros(100)
    assert b.stats().chunks_reused == 0
    assert not np.shares_memory(v, w)
    assert (v == 7.0).all()
    del v
    gc.collect()
    c = Arena(chunk_size=64 * KiB, heap=heap)
    x = c.zeros(100)
    assert c.stats().chunks_reused == 1
    assert not x.any()


def test_strict_free_refuses_while_values_alive(heap):
    a = Arena(chunk_size=64 * KiB, heap=heap)
    x = a.zeros(10)
    b = a.alloc(64)
    c = a.new(Point)
    a.alloc(32)                              # dropped at once: not alive
    assert a.stats().live_values == 3
    with pytest.raises(BufferError, match="3 values"):
        a.free(strict=True)
    assert not a.freed
    # nothing was freed: the arena still allocates, the values are intact
    x[:] = 1.0
    d = a.alloc(16)
    assert a.owns(d) and a.owns(x)
    assert a.stats().live_values == 4
    del x, b, c
    gc.collect()
    with pytest.raises(BufferError, match="1 value"):
        a.free(strict=True)
    assert not a.freed
    del d
    gc.collect()
    assert a.stats().live_values == 0
    a.free(strict=True)
    assert a.freed
    a.free(strict=True)                      # idempotent


def test_strict_free_counts_views_through_their_base(heap):
    a = Arena(heap=heap)
    x = a.zeros(10)
    v = x[2:5]
    assert a.stats().live_values == 1
    del x
    # the view keeps the value alive
    with pytest.raises(BufferError, match="1 value"):
        a.free(strict=True)
    v[:] = 2.0
    del v
    a.free(strict=True)
    assert a.freed


def test_with_block_frees_on_exit(heap):
    with Arena(heap=heap) as a:
        x = a.zeros(100)
        x[:] = 1.0
    assert a.freed
    assert x.sum() == 100.0


def test_with_block_frees_when_raising(heap):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with Arena(heap=heap) as a:
            a.zeros(10)
            raise Boom("inside")
    assert a.freed
    with pytest.raises(ValueError):
        a.alloc(8)


ALLOCATIONS = [
    ("alloc", lambda a: a.alloc(8)),
    ("alloc-zero", lambda a: a.alloc(0)),
    ("alloc-large", lambda a: a.alloc(4 * MiB)),
    ("zeros", lambda a: a.zeros(3)),
    ("zeros-empty", lambda a: a.zeros(0)),
    ("empty", lambda a: a.empty((2, 2))),
    ("full", lambda a: a.full(3, 1.5)),
    ("zeros_like", lambda a: a.zeros_like(np.ones(3))),
    ("empty_like", lambda a: a.empty_like(np.ones(3))),
    ("full_like", lambda a: a.full_like(np.ones(3), 2.0)),
    ("new-dtype", lambda a: a.new("f8")),
    ("new-ctypes", lambda a: a.new(Point)),
    ("new-empty", lambda a: a.new(Empty)),
    ("newarray-dtype", lambda a: a.newarray("i4", 3)),
    ("newarray-ctypes", lambda a: a.newarray(ctypes.c_int, 3)),
    ("newarray-zero", lambda a: a.newarray(ctypes.c_int, 0)),
]


@pytest.mark.parametrize("make", [m for _, m in ALLOCATIONS], ids=[n for n, _ in ALLOCATIONS])
def test_allocating_after_free_raises(heap, make):
    a = Arena(heap=heap)
    make(a)
    a.free()
    before = heap.stats().mallocs
    with pytest.raises(ValueError):
        make(a)
    assert heap.stats().mallocs == before


def test_free_twice_is_fine(heap):
    a = Arena(heap=heap)
    x = a.zeros(4)
    a.free()
    a.free()
    a.free(strict=True)
    assert a.freed
    x[:] = 1
    assert x.sum() == 4


def test_arena_bad_arguments(heap):
    with pytest.raises(ValueError):
        Arena(chunk_size=1000)
    with pytest.raises(ValueError):
        Arena(chunk_size=0)
    with pytest.raises(TypeError):
        Arena(heap=object())
    a = Arena(heap=heap)
    with pytest.raises(ValueError):
        a.alloc(-1)


@pytest.mark.parametrize("make", [
    lambda a: a.alloc(8),
    lambda a: a.alloc(3 * MiB),
    lambda a: a.zeros(10),
    lambda a: a.zeros(3 * MiB, "u1"),
    lambda a: a.new(Point),
    lambda a: a.new(ctypes.c_char * (3 * MiB)),
    lambda a: a.newarray(ctypes.c_double, 1 << 19),
], ids=["small-block", "large-block", "small-array", "large-array", "small-ctypes",
        "large-new-ctypes", "large-newarray-ctypes"])
def test_arena_on_closed_heap_refuses(make):
    h = Heap()
    keep = h.alloc(64)           # keeps the closed heap mapped
    h.close()
    a = Arena(heap=h)
    before = h.stats().mallocs
    with pytest.raises(ValueError):
        make(a)
    assert h.stats().mallocs == before
    del keep


@pytest.mark.parametrize("align", [1, 2, 8, 32, 256, 4096, 8192])
def test_alloc_align_in_arena(heap, align):
    a = Arena(chunk_size=64 * KiB, heap=heap)
    for n in (1, 3, 100, 5000):
        a.alloc(3)
        b = a.alloc(n, align=align)
        assert b.address % align == 0
        assert a.owns(b) and bytes(b) == bytes(n)
    with pytest.raises(ValueError):
        a.alloc(8, align=3)
    with pytest.raises(ValueError):
        a.alloc(8, align=2 * pyarena.PAGE_SIZE)


# -- reuse -----------------------------------------------------------------------

def test_released_chunks_reused_without_new_mapping(heap):
    a1 = Arena(chunk_size=1 * MiB, heap=heap)
    for _ in range(100):
        a1.alloc(4000)
    assert a1.stats().chunks == 1 and a1.stats().chunks_reused == 0
    a1.free()
    sys_before = heap.stats().heap_sys
    a2 = Arena(chunk_size=1 * MiB, heap=heap)
    x = a2.zeros(1000)
    assert a2.stats().chunks_reused >= 1
    assert heap.stats().heap_sys == sys_before
    del x


def test_reused_memory_reads_zero_in_next_arena(heap):
    a1 = Arena(chunk_size=1 * MiB, heap=heap)
    vals = []
    for i in range(150):
        k = i % 4
        v = (a1.alloc(3000) if k == 0 else a1.zeros(500, "f8") if k == 1
             else a1.new(ctypes.c_char * 2500) if k == 2 else a1.newarray(Point, 100))
        vals.append(v)
    ranges = [addr_size(v) for v in vals]
    for v in vals:
        fill(v, 0xFF)
    lo = min(r[0] for r in ranges)
    hi = max(r[0] + r[1] for r in ranges)
    assert ctypes.string_at(lo, hi - lo).count(0xFF) >= sum(r[1] for r in ranges)
    a1.free()
    del vals, v
    gc.collect()
    a2 = Arena(chunk_size=1 * MiB, heap=heap)
    new_vals = []
    for i in range(150):
        k = i % 4
        v = (a2.new(ctypes.c_uint8 * 3000) if k == 0 else a2.alloc(4000) if k == 1
             else a2.empty(300, "f8") if k == 2 else a2.newarray("u1", 2500))
        new_vals.append(v)
        assert read(v) == bytes(addr_size(v)[1])
    assert a2.stats().chunks_reused == 1
    # the new values really lie on the old dirty memory
    assert any(lo <= addr_size(v)[0] < hi for v in new_vals)


def test_arena_over_dirty_heap_pages_reads_zero(heap):
    big = heap.empty(2 * MiB, "u1")
    big[:] = 0xAB
    lo = big.ctypes.data
    del big
    gc.collect()
    pyarena._testing.drop_large_spare(heap)     # its pages to the page heap
    a = Arena(chunk_size=1 * MiB, heap=heap)
    vals = [a.empty(4096, "u1") for _ in range(200)]
    assert any(lo <= v.ctypes.data < lo + 2 * MiB for v in vals)
    for v in vals:
        assert not v.any()


def test_pool_survives_different_chunk_sizes(heap):
    a = Arena(chunk_size=64 * KiB, heap=heap)
    a.alloc(100)
    a.free()
    b = Arena(chunk_size=128 * KiB, heap=heap)
    x = b.alloc(100)
    assert b.stats().chunks_reused == 0       # size mismatch: not reused
    c = Arena(chunk_size=64 * KiB, heap=heap)
    y = c.alloc(100)
    assert c.stats().chunks_reused == 1
    assert bytes(x) == bytes(100) and bytes(y) == bytes(100)
    check_heap(heap)


# -- clone -----------------------------------------------------------------------

def test_clone_array_on_default_heap(heap):
    a = Arena(heap=heap)
    x = a.zeros((4, 5), "i4")
    x[:] = np.arange(20).reshape(4, 5)
    y = a.clone(x)
    assert pyarena.default_heap().owns(y)
    assert not a.owns(y)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert (y == x).all()
    assert not np.shares_memory(x, y)
    x[:] = 0
    assert y.sum() == sum(range(20))
    a.free()
    assert y.sum() == sum(range(20))


def test_clone_block_on_default_heap(heap):
    a = Arena(heap=heap)
    b = a.alloc(48)
    memoryview(b)[:] = bytes(range(48))
    c = a.clone(b)
    assert isinstance(c, Block)
    assert pyarena.default_heap().owns(c)
    assert c.address != b.address and not a.owns(c)
    assert bytes(c) == bytes(range(48))
    memoryview(b)[:] = bytes(48)
    assert bytes(c) == bytes(range(48))


@pytest.mark.parametrize("t", [ctypes.c_double, Point, ctypes.c_int * 4],
                         ids=["c_double", "Point", "c_int*4"])
def test_clone_ctypes_value_on_default_heap(heap, t):
    a = Arena(heap=heap)
    x = a.new(t)
    size = ctypes.sizeof(t)
    pattern = bytes((i * 7 + 1) & 0xFF for i in range(size))
    ctypes.memmove(ctypes.addressof(x), pattern, size)
    y = a.clone(x)
    assert type(y) is t
    assert pyarena.default_heap().owns(ctypes.addressof(y))
    assert not a.owns(ctypes.addressof(y))
    assert read(y) == pattern
    ctypes.memset(ctypes.addressof(x), 0, size)
    assert read(y) == pattern


def test_arena_ctypes_value_pickles(heap):
    a = Arena(heap=heap)
    p = a.new(Point)
    p.x = 2.5
    p.y = -4
    q = pickle.loads(pickle.dumps(p))
    assert type(q) is Point and (q.x, q.y) == (2.5, -4)
    r = copy.deepcopy(p)
    assert (r.x, r.y) == (2.5, -4) and not a.owns(ctypes.addressof(r))


def test_copy_of_arena_ctypes_value_is_not_a_live_value(heap):
    a = Arena(heap=heap)
    p = a.new(Point)
    p.x = 1.25
    q = copy.copy(p)             # own memory, not the arena's
    assert not a.owns(ctypes.addressof(q))
    del p
    assert a.stats().live_values == 0
    a.free(strict=True)
    assert a.freed and q.x == 1.25


def test_clone_rejects_other_objects(heap):
    a = Arena(heap=heap)
    with pytest.raises(TypeError):
        a.clone([1, 2, 3])


# -- *_like layouts ------------------------------------------------------------

@pytest.mark.parametrize("src", [
    np.ones((3, 4, 5)).transpose(2, 0, 1),
    np.ones((6, 4), order="F"),
    np.ones((6, 8))[:, ::2],
    np.ones((4, 6, 2)).transpose(1, 2, 0)[::2],
    np.ones((3, 4, 5), dtype="i2").transpose(1, 0, 2),
], ids=["transposed", "fortran", "strided", "transposed-sliced", "i2"])
@pytest.mark.parametrize("big", [False, True], ids=["chunk", "large"])
def test_like_order_k_follows_numpy(heap, src, big):
    a = Arena(chunk_size=64 * KiB, heap=heap)
    if big:
        src = np.repeat(src, 200, axis=0)
    ref = np.zeros_like(src)
    for fn in (a.zeros_like, a.empty_like):
        r = fn(src)
        assert r.shape == src.shape and r.dtype == src.dtype
        assert r.strides == ref.strides
        assert not r.any()
        assert a.owns(r) != big
    f = a.full_like(src, 3)
    assert f.strides == ref.strides and (f == 3).all()
    c = a.zeros_like(src, order="C")
    assert c.flags.c_contiguous
    fo = a.zeros_like(src, order="F")
    assert fo.flags.f_contiguous
    for shape in [(2, 3), (2, 3, 4), 7]:
        s = a.zeros_like(src, shape=shape)
        assert s.strides == np.zeros_like(src, shape=shape).strides
        assert not s.any()


# -- metadata --------------------------------------------------------------------

def test_metadata_stats_and_persistent_alloc(heap):
    a = Arena(chunk_size=64 * KiB, heap=heap)
    vals = [a.alloc(100), a.zeros(50), a.new(Point), a.alloc(40000), heap.alloc(10),
            heap.zeros(100), heap.new(Point), heap.alloc(1 * MiB)]
    st_ = heap.stats()
    assert st_.metadata_sys > 0
    assert st_.persistent_chunks >= 1
    assert st_.metadata_sys >= st_.persistent_chunks * 256 * KiB
    for v in vals:
        addr, size = addr_size(v)
        assert not in_persistent_alloc(heap, addr)
        assert not in_persistent_alloc(heap, addr + size - 1)
    assert not in_persistent_alloc(heap, 0)


# -- a stateful model: heap and arena values together ----------------------------

CHUNK = 64 * KiB


class ArenaMachine(RuleBasedStateMachine):
    """Live values of a private heap and its arenas, against a model: each
    value's address range, its byte pattern and the arena (if any) whose
    chunk holds it."""

    def __init__(self):
        super().__init__()
        self.heap = Heap()
        self.arena = Arena(chunk_size=CHUNK, heap=self.heap)
        self.arena_id = 0
        self.values = []      # [obj, addr, size, pattern byte, arena id or None]
        self.counter = 0

    def _new_arena(self):
        self.arena = Arena(chunk_size=CHUNK, heap=self.heap)
        self.arena_id += 1

    def _add(self, v, in_chunk):
        addr, size = addr_size(v)
        assert read(v) == bytes(size), "a new value does not read zero"
        self.counter += 1
        pat = self.counter % 255 + 1
        if size:
            ctypes.memset(addr, pat, size)
        self.values.append([v, addr, size, pat, self.arena_id if in_chunk else None])

    def _live_in_arena(self):
        return sum(1 for v in self.values if v[4] == self.arena_id)

    sizes = st.one_of(st.integers(0, 64), st.integers(0, 4096), st.integers(0, 40000))

    @rule(size=sizes, kind=st.sampled_from(["block", "u1", "f8", "ctypes", "newarray"]))
    def heap_alloc(self, size, kind):
        h = self.heap
        if kind == "block":
            v = h.alloc(size)
        elif kind == "u1":
            v = h.zeros(size, "u1")
        elif kind == "f8":
            v = h.zeros(size // 8, "f8")      # (heap.empty need not read zero)
        elif kind == "ctypes":
            v = h.new(ctypes.c_uint8 * size)
        else:
            v = h.newarray(ctypes.c_int16, size // 2)
        if addr_size(v)[1]:
            assert h.owns(addr_size(v)[0])
        self._add(v, False)

    @rule(size=sizes, kind=st.sampled_from(["block", "u1", "f8", "ctypes", "newarray",
                                            "struct"]))
    def arena_alloc(self, size, kind):
        a = self.arena
        if kind == "block":
            v = a.alloc(size)
        elif kind == "u1":
            v = a.zeros(size, "u1")
        elif kind == "f8":
            v = a.empty(size // 8, "f8")
        elif kind == "ctypes":
            v = a.new(ctypes.c_uint8 * size)
        elif kind == "newarray":
            v = a.newarray(ctypes.c_int16, size // 2)
        else:
            v = a.newarray(Point, size // ctypes.sizeof(Point))
        addr, n = addr_size(v)
        in_chunk = 0 < n <= CHUNK // 4
        if in_chunk:
            assert a.owns(addr) and a.owns(addr + n - 1)
        elif n:
            assert not a.owns(addr)
            assert self.heap.owns(addr)
        self._add(v, in_chunk)

    @precondition(lambda self: self.values)
    @rule(i=st.integers(0, 10 ** 6))
    def drop(self, i):
        del self.values[i % len(self.values)]

    @rule()
    def free_arena(self):
        self.arena.free()
        assert self.arena.freed
        with pytest.raises(ValueError):
            self.arena.alloc(8)
        # its values now belong to no arena we still allocate from
        for v in self.values:
            if v[4] == self.arena_id:
                v[4] = -1
        self._new_arena()

    @rule()
    def strict_free(self):
        n = self._live_in_arena()
        if n:
            with pytest.raises(BufferError, match=f"{n} value"):
                self.arena.free(strict=True)
            assert not self.arena.freed
        else:
            self.arena.free(strict=True)
            assert self.arena.freed
            self._new_arena()

    @invariant()
    def contents_survive(self):
        for v, addr, size, pat, _ in self.values:
            assert ctypes.string_at(addr, size) == bytes([pat]) * size

    @invariant()
    def no_overlap(self):
        ranges = sorted((addr, size) for _, addr, size, _, _ in self.values if size)
        for (a0, s0), (a1, _) in zip(ranges, ranges[1:]):
            assert a0 + s0 <= a1, "two live values overlap"

    @invariant()
    def live_values_counted(self):
        assert self.arena.stats().live_values == self._live_in_arena()

    @invariant()
    def heap_consistent(self):
        check_heap(self.heap)

    def teardown(self):
        self.values.clear()
        self.arena.free()
        gc.collect()
        check_heap(self.heap)
        self.heap.close()


ArenaMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=40,
                                          deadline=None)
TestArenaMachine = ArenaMachine.TestCase


def test_two_threads_sharing_an_arena_do_not_clear_each_others_values():
    # A big value's page clearing must not run while another thread bump
    # allocates from the same chunk (it used to release the GIL mid-clear).
    import threading
    heap = pyarena.Heap()
    bad = 0
    for _ in range(15):
        with pyarena.Arena(heap=heap) as dirty:
            for _ in range(4):
                dirty.zeros(2 << 20, "u1")[:] = 0xFF      # leave dirty chunks pooled
        ar = pyarena.Arena(heap=heap)
        ar.alloc(8)
        go = threading.Event()
        smalls = []

        def big():
            go.wait()
            for _ in range(3):
                ar.alloc(1_900_000)

        def small():
            go.wait()
            for _ in range(5000):
                b = ar.alloc(64)
                memoryview(b)[:] = b"\xab" * 64
                smalls.append(b)

        ts = [threading.Thread(target=f) for f in (big, small)]
        for t in ts:
            t.start()
        go.set()
        for t in ts:
            t.join()
        bad += sum(bytes(b) != b"\xab" * 64 for b in smalls)
        ar.free()
    assert bad == 0


def test_large_arena_block_reads_zero_even_with_zero_false():
    h = pyarena.Heap()
    x = h.zeros(3 << 20, "u1")
    x[:] = 255
    del x
    b = pyarena.Arena(heap=h).alloc(3 << 20, zero=False)
    assert not any(memoryview(b))
